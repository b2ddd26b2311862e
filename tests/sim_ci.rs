//! DR drills in CI: `sim run` and `sim swarm` JUnit reports read back by a real JUnit consumer
//! (Python's junitparser, installed into a venv under target/ on first use), their Markdown
//! summaries, a failing seed's scenario and one-line reproduction (which reproduces it), shard
//! names in the output, and the example workflows in docs/ci/ run command by command.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// What junitparser read from a JUnit file (see tests/python/junit_read.py).
fn junit(path: &Path) -> serde_json::Value {
    let py = python_venv("pyenv-junit", "junitparser", "junitparser");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/junit_read.py");
    let out = run_ok(Command::new(py).arg(script).arg(path));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A folder on PATH whose `drplane` is the binary under test: reproduction lines and workflow
/// commands run as written.
fn path_with_drplane(dir: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let link = bin.join("drplane");
    if !link.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_drplane"), &link).unwrap();
    }
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn shell(line: &str, dir: &Path) -> std::process::Output {
    Command::new("bash")
        .args(["-euo", "pipefail", "-c", line])
        .current_dir(dir)
        .env("PATH", path_with_drplane(dir))
        .output()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `trace hash HEX` line of a run's summary.
fn trace_of(summary: &str) -> String {
    summary
        .lines()
        .find_map(|l| l.strip_prefix("trace hash "))
        .unwrap_or_else(|| panic!("no trace hash in:\n{summary}"))
        .to_string()
}

/// `drplane sim run FILE --junit XML --markdown MD`, whatever its exit status.
fn run_with_reports(file: &Path, xml: &Path, md: &Path) -> std::process::Output {
    drplane()
        .args(["sim", "run", path_str(file), "--junit", path_str(xml)])
        .args(["--markdown", path_str(md)])
        .output()
        .unwrap()
}

#[test]
fn a_run_reports_each_check_to_junit_and_markdown_and_a_failure_names_its_reproduction() {
    let dir = temp_dir();
    let file = dir.path().join("ci small.toml");
    std::fs::write(&file, SMALL_SCENARIO).unwrap();
    let reports = dir.path().join("reports");
    let (xml, md) = (reports.join("run.xml"), reports.join("run.md"));
    let out = run_ok(
        drplane()
            .args(["sim", "run", path_str(&file), "--json", "--junit"])
            .args([path_str(&xml), "--markdown", path_str(&md)]),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = report["checks"].as_array().unwrap();
    let read = junit(&xml);
    assert_eq!(read["tests"], checks.len());
    assert_eq!(
        (read["failures"].as_u64(), read["errors"].as_u64()),
        (Some(0), Some(0))
    );
    let suite = &read["suites"][0];
    assert_eq!(suite["cases"].as_array().unwrap().len(), checks.len());
    for (case, check) in suite["cases"].as_array().unwrap().iter().zip(checks) {
        assert_eq!(case["name"], check["name"]);
        assert_eq!(case["classname"], "drplane.sim.cli-small");
        assert_eq!(case["result"], "passed");
    }
    let props = &suite["properties"];
    assert_eq!(props["seed"], "3");
    assert_eq!(props["scenario_hash"], report["scenario_hash"]);
    assert_eq!(props["trace_hash"], report["trace_hash"]);
    let quoted = format!("'{}'", file.display());
    assert_eq!(
        props["reproduce"],
        format!("drplane sim run {quoted} --seed 3")
    );
    let summary = std::fs::read_to_string(&md).unwrap();
    assert!(
        summary.starts_with("### drplane sim: cli-small — ✅ passed"),
        "{summary}"
    );
    for needle in [
        "| vm/os | ",
        "| RPO target |",
        "| 30 | test failover | vm |",
        "Reproduce: `drplane sim run",
    ] {
        assert!(summary.contains(needle), "{needle:?} not in:\n{summary}");
    }

    // A job that was expected to fail succeeds: that check fails, in both reports.
    let failing = SMALL_SCENARIO.to_string()
        + "[[expect]]\njob = \"test failover\"\nvm = \"vm\"\nsucceeded = false\n";
    std::fs::write(&file, failing).unwrap();
    let out = run_with_reports(&file, &xml, &md);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let printed = text(&out);
    let reproduce = format!("drplane sim run {quoted} --seed 3");
    assert!(
        printed.contains(&format!("reproduce: {reproduce}")),
        "{printed}"
    );
    let read = junit(&xml);
    assert_eq!(
        (read["failures"].as_u64(), read["errors"].as_u64()),
        (Some(1), Some(0))
    );
    let failed: Vec<&serde_json::Value> = read["suites"][0]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["result"] == "failure")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["name"], "expected: test failover of vm fails");
    let message = failed[0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("expected: test failover of vm fails: "),
        "{message}"
    );
    let body = failed[0]["text"].as_str().unwrap();
    let hash = read["suites"][0]["properties"]["scenario_hash"]
        .as_str()
        .unwrap();
    for needle in [
        "seed: 3".to_string(),
        format!("scenario: cli-small (sha256 {hash})"),
        format!("reproduce: {reproduce}"),
    ] {
        assert!(body.contains(&needle), "{needle:?} not in {body}");
    }
    let summary = std::fs::read_to_string(&md).unwrap();
    assert!(
        summary.starts_with("### drplane sim: cli-small — ❌ FAILED"),
        "{summary}"
    );
    // Failed checks are listed first.
    let first_check = summary
        .lines()
        .skip_while(|l| !l.starts_with("| | check |"))
        .nth(2)
        .unwrap();
    assert!(
        first_check.starts_with("| ❌ | expected: test failover of vm fails |"),
        "{summary}"
    );
    // The reproduction, pasted into a shell, gives the same failing run.
    let again = shell(&reproduce, dir.path());
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert_eq!(trace_of(&text(&again)), trace_of(&printed));

    // A scenario that cannot be read is an error case, and the command still fails.
    std::fs::write(
        &file,
        SMALL_SCENARIO.replace("size_mib = 4", "size_mib = \"four\""),
    )
    .unwrap();
    let out = run_with_reports(&file, &xml, &md);
    assert!(!out.status.success());
    let read = junit(&xml);
    assert_eq!(
        (read["tests"].as_u64(), read["errors"].as_u64()),
        (Some(1), Some(1))
    );
    let case = &read["suites"][0]["cases"][0];
    assert_eq!(
        (case["name"].as_str(), case["result"].as_str()),
        (Some("run"), Some("error"))
    );
    assert!(
        case["message"].as_str().unwrap().contains("size_mib"),
        "{case}"
    );
    assert!(std::fs::read_to_string(&md).unwrap().contains("❌ ERROR"));
}

#[test]
fn a_swarm_shard_names_itself_and_reports_each_seed_as_a_suite() {
    let dir = temp_dir();
    let (xml, md) = (dir.path().join("swarm.xml"), dir.path().join("swarm.md"));
    let failures = dir.path().join("failures");
    let out = run_ok(drplane().args([
        "sim",
        "swarm",
        "--seeds",
        "4",
        "--start",
        "10",
        "--shard",
        "2/2",
        "--jobs",
        "2",
        "--check-determinism",
        "--failures",
        path_str(&failures),
        "--junit",
        path_str(&xml),
        "--markdown",
        path_str(&md),
    ]));
    let printed = text(&out);
    let lines: Vec<&str> = printed.lines().collect();
    assert!(
        lines[0].starts_with("swarm (shard 2/2): 2 of seeds 10..14"),
        "{printed}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("2 seeds (shard 2/2), 0 failed"),
        "{printed}"
    );
    assert!(!failures.exists(), "no seed failed, so no failures folder");
    let read = junit(&xml);
    assert_eq!(read["name"], "drplane sim swarm (shard 2/2)");
    let suites = read["suites"].as_array().unwrap();
    let seeds: Vec<&str> = suites
        .iter()
        .map(|s| s["properties"]["seed"].as_str().unwrap())
        .collect();
    assert_eq!(seeds, ["11", "13"]);
    let mut cases = 0;
    for (s, seed) in suites.iter().zip([11, 13]) {
        assert_eq!(s["name"], format!("drplane sim swarm seed {seed}"));
        let names: Vec<&str> = s["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"every retained recovery point restores byte-exact"),
            "{names:?}"
        );
        assert_eq!(
            names.last(),
            Some(&"the same report and trace hash when run twice")
        );
        assert!(s["cases"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["result"] == "passed"));
        assert_eq!(
            s["properties"]["reproduce"],
            format!("drplane sim swarm --start {seed} --seeds 1 --check-determinism")
        );
        cases += names.len();
    }
    assert_eq!(read["tests"], cases);
    let summary = std::fs::read_to_string(&md).unwrap();
    assert!(
        summary.starts_with("### drplane sim swarm, shard 2/2 — ✅ passed"),
        "{summary}"
    );
    assert!(
        summary.contains("2 seeds (11–13), 0 failed (each run twice"),
        "{summary}"
    );
    assert!(summary.contains("| 13 | ✅ |"), "{summary}");
}

#[test]
fn a_failing_seed_leaves_its_scenario_and_a_line_that_reproduces_it() {
    let dir = temp_dir();
    let failures = dir.path().join("failures");
    // A seed's run, with one check broken as a failing run reports it.
    let mut outcome = sim::swarm::run_seed(5, false);
    let report = outcome.report.as_mut().unwrap();
    let trace = report.trace_hash.clone();
    report.checks[0].ok = false;
    outcome
        .failures
        .push(format!("{} (broken)", report.checks[0].name));
    let (scenario, repro) = outcome.write_failure(&failures).unwrap();
    assert_eq!(scenario, failures.join("swarm-5.toml"));
    assert_eq!(
        std::fs::read_to_string(&scenario).unwrap(),
        outcome.scenario
    );
    let line = std::fs::read_to_string(&repro).unwrap();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert_eq!(
        line.trim_end(),
        format!("drplane sim run {} --seed 5", scenario.display())
    );
    // Pasted into a shell, the line runs that very scenario and seed.
    let again = shell(line.trim_end(), dir.path());
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(trace_of(&text(&again)), trace);
    // The seed's JUnit suite carries the failure with the same line.
    let xml = dir.path().join("seed.xml");
    let suite = sim::junit::seed_suite(&outcome, line.trim_end());
    std::fs::write(&xml, sim::junit::document("drplane sim swarm", &[suite])).unwrap();
    let read = junit(&xml);
    assert_eq!(read["failures"], 1);
    let failed = read["suites"][0]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["result"] == "failure")
        .unwrap()
        .clone();
    assert!(
        failed["text"].as_str().unwrap().contains(line.trim_end()),
        "{failed}"
    );

    // Runs that only disagree with each other are reproduced by running the seed twice again.
    let mut twice = sim::swarm::run_seed(5, true);
    assert!(twice.passed(), "{:?}", twice.failures);
    twice
        .failures
        .push("not deterministic: trace a then b".into());
    let line = twice.reproduce(&failures);
    assert_eq!(
        line,
        "drplane sim swarm --start 5 --seeds 1 --check-determinism"
    );
    let again = shell(&line, dir.path());
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("1 seeds, 0 failed"),
        "{}",
        text(&again)
    );
}

/// Every shell line of a workflow's step that calls drplane, with `\` continuations joined.
fn drplane_lines(script: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in script.lines() {
        let line = line.trim();
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                if current.starts_with("drplane ") {
                    lines.push(std::mem::take(&mut current));
                }
                current.clear();
            }
        }
    }
    lines
}

/// One CI job's drplane commands with the environment its first matrix entry gives.
struct JobCommands {
    job: String,
    env: Vec<(String, String)>,
    commands: Vec<String>,
}

fn yaml(file: &str) -> yaml_rust2::Yaml {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut docs = yaml_rust2::YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{file} is not YAML: {e}"));
    assert_eq!(docs.len(), 1, "{file}");
    docs.remove(0)
}

/// Each matrix value must name a scenario file when the key is a drill.
fn first_of_matrix(file: &str, key: &str, values: &yaml_rust2::Yaml) -> String {
    let values = values
        .as_vec()
        .unwrap_or_else(|| panic!("{file}: matrix {key}"));
    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let as_text = |v: &yaml_rust2::Yaml| match v {
        yaml_rust2::Yaml::Integer(i) => i.to_string(),
        yaml_rust2::Yaml::String(s) => s.clone(),
        other => panic!("{file}: matrix {key} value {other:?}"),
    };
    if key.eq_ignore_ascii_case("drill") {
        for v in values {
            let scenario = scenarios.join(format!("{}.toml", as_text(v)));
            assert!(
                scenario.is_file(),
                "{file}: {} is not a scenario",
                scenario.display()
            );
        }
    }
    as_text(&values[0])
}

fn github_jobs() -> Vec<JobCommands> {
    let file = "docs/ci/github-actions.yml";
    let doc = yaml(file);
    let mut out = Vec::new();
    for (name, job) in doc["jobs"].as_hash().unwrap() {
        let mut env = Vec::new();
        if let Some(matrix) = job["strategy"]["matrix"].as_hash() {
            for (key, values) in matrix {
                let key = key.as_str().unwrap();
                env.push((format!("matrix.{key}"), first_of_matrix(file, key, values)));
            }
        }
        let mut commands = Vec::new();
        for step in job["steps"].as_vec().into_iter().flatten() {
            if let Some(script) = step["run"].as_str() {
                for mut line in drplane_lines(script) {
                    for (key, value) in &env {
                        line = line.replace(&format!("${{{{ {key} }}}}"), value);
                    }
                    assert!(
                        !line.contains("${{"),
                        "{file}: unresolved expression in {line}"
                    );
                    commands.push(line);
                }
            }
        }
        out.push(JobCommands {
            job: name.as_str().unwrap().to_string(),
            env: Vec::new(),
            commands,
        });
    }
    out
}

fn gitlab_jobs() -> Vec<JobCommands> {
    let file = "docs/ci/gitlab-ci.yml";
    let doc = yaml(file);
    let mut out = Vec::new();
    for (name, job) in doc.as_hash().unwrap() {
        let Some(script) = job["script"].as_vec() else {
            continue;
        };
        let mut env = Vec::new();
        match &job["parallel"] {
            yaml_rust2::Yaml::Integer(n) => {
                env.push(("CI_NODE_INDEX".into(), "1".into()));
                env.push(("CI_NODE_TOTAL".into(), n.to_string()));
            }
            parallel => {
                for entry in parallel["matrix"].as_vec().into_iter().flatten() {
                    for (key, values) in entry.as_hash().unwrap() {
                        let key = key.as_str().unwrap();
                        env.push((key.to_string(), first_of_matrix(file, key, values)));
                    }
                }
            }
        }
        let commands = script
            .iter()
            .flat_map(|line| drplane_lines(line.as_str().unwrap()))
            .collect();
        out.push(JobCommands {
            job: name.as_str().unwrap().to_string(),
            env,
            commands,
        });
    }
    out
}

#[test]
fn the_example_workflows_run_their_drplane_commands_as_written() {
    for (file, jobs) in [
        ("docs/ci/github-actions.yml", github_jobs()),
        ("docs/ci/gitlab-ci.yml", gitlab_jobs()),
    ] {
        let called: Vec<&String> = jobs.iter().flat_map(|j| &j.commands).collect();
        assert!(
            called.iter().any(|c| c.starts_with("drplane sim run "))
                && called.iter().any(|c| c.starts_with("drplane sim swarm ")),
            "{file} runs drills and a swarm: {called:?}"
        );
        for job in &jobs {
            if job.commands.is_empty() {
                continue;
            }
            // A fresh checkout: the scenarios, nothing else; four swarm seeds instead of hundreds.
            let dir = temp_dir();
            std::os::unix::fs::symlink(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios"),
                dir.path().join("scenarios"),
            )
            .unwrap();
            let summary = dir.path().join("step-summary.md");
            for command in &job.commands {
                let mut cmd = Command::new("bash");
                cmd.args(["-euo", "pipefail", "-c", command])
                    .current_dir(dir.path())
                    .env("PATH", path_with_drplane(dir.path()))
                    .env("GITHUB_STEP_SUMMARY", &summary)
                    .env("SWARM_SEEDS", "4")
                    .env("CI_PROJECT_DIR", dir.path());
                for (key, value) in &job.env {
                    cmd.env(key, value);
                }
                let out = cmd.output().unwrap();
                assert!(
                    out.status.success(),
                    "{file} job {}: {command}\n{}",
                    job.job,
                    text(&out)
                );
            }
            // Each command wrote the JUnit report it was asked for, with nothing failed.
            let reports: Vec<PathBuf> = std::fs::read_dir(dir.path().join("reports"))
                .unwrap_or_else(|e| panic!("{file} job {}: no reports/: {e}", job.job))
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "xml"))
                .collect();
            assert_eq!(reports.len(), job.commands.len(), "{file} job {}", job.job);
            for report in reports {
                let read = junit(&report);
                assert!(read["tests"].as_u64().unwrap() > 0, "{}", report.display());
                assert_eq!(read["failures"], 0, "{}", report.display());
            }
            let markdown: usize = std::fs::read_dir(dir.path().join("reports"))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "md")
                })
                .count();
            assert!(
                markdown > 0 || std::fs::metadata(&summary).is_ok_and(|m| m.len() > 0),
                "{file} job {}: no Markdown summary",
                job.job
            );
        }
    }
}

#[test]
fn a_report_that_cannot_be_written_is_an_error_that_keeps_the_run_s_own() {
    let dir = temp_dir();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "name = \"x\"\nduration_hours = \"one\"\n").unwrap();
    // The report's folder is a file: neither report can be written.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "").unwrap();
    let out = drplane()
        .args(["sim", "run", path_str(&file), "--junit"])
        .arg(blocker.join("run.xml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("duration_hours"), "{err}");
    assert!(err.contains("the CI reports were not written"), "{err}");
    assert!(err.contains("blocker"), "{err}");

    // A run that passes but whose report cannot be written fails, naming the path.
    std::fs::write(&file, SMALL_SCENARIO).unwrap();
    let out = drplane()
        .args(["sim", "run", path_str(&file), "--markdown"])
        .arg(blocker.join("run.md"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("blocker"));
}
