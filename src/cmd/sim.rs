//! `drplane sim run`: run a scenario on the deterministic simulator and report.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Run a scenario (default: the embedded quickstart) and check its invariants.
    Run(RunArgs),
    /// Swarm: every seed draws its own scenario (profile, policy, VMs, faults, DR operations);
    /// a failing seed's scenario is written out to reproduce with `sim run`.
    Swarm {
        /// How many seeds.
        #[arg(long, default_value_t = 20)]
        seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Seeds run at once (each run is itself deterministic).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
        jobs: u64,
        /// Run every seed twice and fail on any trace-hash difference.
        #[arg(long)]
        check_determinism: bool,
        /// Run only shard K of N (seeds whose index mod N is K-1), e.g. `--shard 2/4` in a CI
        /// matrix.
        #[arg(long, value_parser = parse_shard)]
        shard: Option<(u64, u64)>,
        /// Directory a failing seed's scenario (`swarm-N.toml`) and one-line reproduction
        /// (`swarm-N.repro`) are written to (created only when a seed fails).
        #[arg(long, default_value = "swarm-failures")]
        failures: PathBuf,
        #[command(flatten)]
        ci: CiReports,
    },
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Scenario file (TOML); see scenarios/.
    scenario: Option<PathBuf>,
    /// Seed (default: the scenario's).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the stores and trackers here (a new or empty directory) instead of in memory.
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also write an SVG timeline (RPO over time, faults, jobs) here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Write a report here: summary.txt, report.json and timeline.svg.
    #[arg(long)]
    report: Option<PathBuf>,
    #[command(flatten)]
    ci: CiReports,
}

/// Where `sim run` and `sim swarm` write their reports for CI (docs/ci.md).
#[derive(Debug, clap::Args)]
pub struct CiReports {
    /// Also write a JUnit XML report here: a test case per check (a test suite per swarm seed)
    /// with the seed, the scenario hash and the command that reproduces a failure; written
    /// when the run fails too.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Also write a Markdown summary here (verdict, disks, jobs, checks, RPO, speed; failing
    /// seeds of a swarm with their reproductions), e.g. "$GITHUB_STEP_SUMMARY".
    #[arg(long)]
    markdown: Option<PathBuf>,
}

/// `K/N` with 1 ≤ K ≤ N.
fn parse_shard(text: &str) -> std::result::Result<(u64, u64), String> {
    let (k, n) = text
        .split_once('/')
        .ok_or_else(|| format!("shard {text:?}: expected K/N, e.g. 1/4"))?;
    let k: u64 = k
        .trim()
        .parse()
        .map_err(|_| format!("shard {text:?}: K is not a number"))?;
    let n: u64 = n
        .trim()
        .parse()
        .map_err(|_| format!("shard {text:?}: N is not a number"))?;
    if n == 0 || k == 0 || k > n {
        return Err(format!("shard {text:?}: need 1 <= K <= N"));
    }
    Ok((k, n))
}

impl CiReports {
    /// Write the JUnit and Markdown reports asked for (their folders are created).
    fn write(
        &self,
        junit: impl FnOnce() -> String,
        markdown: impl FnOnce() -> String,
    ) -> Result<()> {
        let put = |path: &PathBuf, text: String| -> Result<()> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
            }
            std::fs::write(path, text).with_context(|| path.display().to_string())
        };
        if let Some(path) = &self.junit {
            put(path, junit())?;
        }
        if let Some(path) = &self.markdown {
            put(path, markdown())?;
        }
        Ok(())
    }
}

pub fn run(command: SimCommand) -> Result<ExitCode> {
    let RunArgs {
        scenario,
        seed,
        workdir,
        json,
        svg,
        report: report_dir,
        ci,
    } = match command {
        SimCommand::Run(args) => args,
        SimCommand::Swarm {
            seeds,
            start,
            jobs,
            check_determinism,
            shard,
            failures,
            ci,
        } => {
            return swarm(
                &sim::swarm::SwarmOptions {
                    start,
                    seeds,
                    jobs,
                    check_determinism,
                    shard,
                },
                &failures,
                &ci,
            )
        }
    };
    let label = scenario
        .as_ref()
        .map_or("quickstart (embedded)".to_string(), |p| {
            p.display().to_string()
        });
    match run_scenario(scenario.as_deref(), seed, workdir.as_deref(), &label) {
        Ok((report, wall)) => finish_run(
            &report,
            wall,
            json,
            svg,
            report_dir,
            &ci,
            scenario.as_deref(),
        ),
        Err((error, known_seed)) => {
            // The CI reports say why there is no run, then the command fails as before.
            let reproduce = sim::reproduce::sim_run_command(scenario.as_deref(), known_seed);
            let message = format!("{error:#}");
            ci.write(
                || {
                    sim::junit::document(
                        "drplane sim run",
                        &[sim::junit::error_suite(
                            &label, known_seed, &message, &reproduce,
                        )],
                    )
                },
                || sim::markdown::error_summary(&label, known_seed, &message, &reproduce),
            )
            .map_err(|w| {
                anyhow::anyhow!("{message} (and the CI reports were not written: {w:#})")
            })?;
            Err(error)
        }
    }
}

/// Read, parse and run the scenario; on failure the error and the seed, if it was known.
fn run_scenario(
    scenario: Option<&std::path::Path>,
    seed: Option<u64>,
    workdir: Option<&std::path::Path>,
    label: &str,
) -> std::result::Result<(sim::Report, f64), (anyhow::Error, Option<u64>)> {
    let text = match scenario {
        Some(p) => super::read_input_text(p, super::MAX_INPUT_FILE_BYTES).map_err(|e| (e, seed))?,
        None => sim::QUICKSTART.to_string(),
    };
    let parsed = sim::Scenario::parse(&text)
        .with_context(|| label.to_string())
        .map_err(|e| (e, seed))?;
    let seed = seed.unwrap_or(parsed.seed);
    let storage = match workdir {
        Some(d) => {
            let used = std::fs::create_dir_all(d)
                .and_then(|()| std::fs::read_dir(d))
                .with_context(|| d.display().to_string())
                .map_err(|e| (e, Some(seed)))?
                .next()
                .is_some();
            if used {
                return Err((
                    anyhow::anyhow!(
                        "work directory {} is not empty: a run starts from empty stores",
                        d.display()
                    ),
                    Some(seed),
                ));
            }
            sim::Storage::Directory(d.to_path_buf())
        }
        None => sim::Storage::Memory,
    };
    let started = std::time::Instant::now();
    // The process ends after the report: its exit returns the world's memory.
    let report = sim::run_then(&parsed, seed, &storage, sim::Teardown::LeaveToExit)
        .map_err(|e| (e.into(), Some(seed)))?;
    Ok((report, started.elapsed().as_secs_f64()))
}

/// Print and write what a finished run gives; the exit code says whether every check held.
fn finish_run(
    report: &sim::Report,
    wall: f64,
    json: bool,
    svg: Option<PathBuf>,
    report_dir: Option<PathBuf>,
    ci: &CiReports,
    scenario: Option<&std::path::Path>,
) -> Result<ExitCode> {
    let text = summary(report, wall);
    let reproduce = sim::reproduce::sim_run_command(scenario, Some(report.seed));
    ci.write(
        || {
            sim::junit::document(
                "drplane sim run",
                &[sim::junit::run_suite(report, &reproduce, wall, Some(&text))],
            )
        },
        || sim::markdown::run_summary(report, &reproduce, wall),
    )?;
    // Drawn once for both places that may want it.
    let timeline = (svg.is_some() || report_dir.is_some()).then(|| sim::timeline::svg(report));
    let timeline = timeline.as_deref().unwrap_or_default();
    if let Some(path) = &svg {
        std::fs::write(path, timeline).with_context(|| path.display().to_string())?;
    }
    if let Some(dir) = &report_dir {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).with_context(|| path.display().to_string())
        };
        write("summary.txt", text.as_bytes())?;
        write(
            "report.json",
            serde_json::to_string_pretty(report)?.as_bytes(),
        )?;
        write("timeline.svg", timeline.as_bytes())?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{text}");
        if !report.passed() {
            println!("reproduce: {reproduce}");
        }
        if let Some(dir) = &report_dir {
            println!(
                "report: {0}/summary.txt, {0}/report.json, {0}/timeline.svg",
                dir.display()
            );
        }
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The readable report: the run, a table of disks, the jobs, the checks, the trace hash.
fn summary(report: &sim::Report, wall: f64) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let simulated = report.simulated_secs();
    let churn = report.workload_bytes();
    let _ = writeln!(
        out,
        "scenario {} (sha {}), seed {}: {} simulated hours, {} events in {wall:.1} s",
        report.scenario,
        &report.scenario_hash[..16],
        report.seed,
        report.simulated_hours,
        report.events
    );
    let _ = writeln!(
        out,
        "speed: {:.0}x real time ({:.0} simulated s per wall s), churn {}/s through the pipeline",
        simulated / wall.max(1e-9),
        simulated / wall.max(1e-9),
        indicatif::HumanBytes((churn as f64 / wall.max(1e-9)) as u64)
    );
    let _ = writeln!(
        out,
        "  {:<20} {:>7} {:>7} {:>7} {:>6} {:>9} {:>10} {:>9} {:>9}",
        "disk", "cycles", "failed", "resyncs", "points", "verified", "sent", "max RPO", "steady"
    );
    for d in &report.disks {
        let _ = writeln!(
            out,
            "  {:<20} {:>7} {:>7} {:>7} {:>6} {:>9} {:>10} {:>8.0}s {:>8.0}s",
            format!("{}/{}", d.vm, d.disk),
            d.cycles,
            d.failed_cycles,
            d.resyncs,
            d.points_live,
            d.points_verified,
            indicatif::HumanBytes(d.bytes_sent).to_string(),
            d.max_rpo_secs,
            d.max_steady_rpo_secs,
        );
        if !d.health_warnings.is_empty() {
            let _ = writeln!(out, "    health: {}", d.health_warnings.join("; "));
        }
    }
    for j in &report.jobs {
        let _ = writeln!(
            out,
            "  job {} {} at minute {} ({} s): {} — {}",
            j.name,
            j.vm,
            j.started_minute,
            j.seconds,
            if j.succeeded { "succeeded" } else { "failed" },
            j.detail
        );
    }
    for item in &report.replicated_items {
        let _ = writeln!(
            out,
            "  item {} on {}{}: {}, policy {}, health {}; {}; use managed disks: {}",
            item.vm,
            item.host,
            item.cloud
                .as_ref()
                .map_or(String::new(), |c| format!(" (cloud {c})")),
            item.state,
            item.policy,
            item.health,
            item.compute,
            if item.use_managed_disks { "yes" } else { "no" }
        );
        for n in &item.network {
            let _ = writeln!(out, "    nic {n}");
        }
        for d in &item.disks {
            let _ = writeln!(
                out,
                "    disk {}: {}",
                d.name,
                match (d.replicated, d.size_mib) {
                    (true, Some(mib)) => format!("{mib} MiB, {} points", d.points_live),
                    _ => "excluded from replication".into(),
                }
            );
        }
    }
    const SHOWN_EVENTS: usize = 12;
    let _ = writeln!(
        out,
        "  health events (last 24 h): {}",
        report.health_events.len()
    );
    let skipped = report.health_events.len().saturating_sub(SHOWN_EVENTS);
    if skipped > 0 {
        let _ = writeln!(out, "    ... {skipped} earlier (all in the JSON report)");
    }
    for e in report.health_events.iter().skip(skipped) {
        let _ = writeln!(
            out,
            "    minute {} {} {}: {}",
            e.minute, e.item, e.severity, e.message
        );
    }
    for c in &report.checks {
        let _ = writeln!(
            out,
            "  [{}] {} ({})",
            if c.ok { "ok" } else { "FAILED" },
            c.name,
            c.detail
        );
    }
    let _ = writeln!(out, "trace hash {}", report.trace_hash);
    out
}

fn swarm(
    options: &sim::swarm::SwarmOptions,
    failures: &std::path::Path,
    ci: &CiReports,
) -> Result<ExitCode> {
    let shard = options
        .shard
        .map_or(String::new(), |(k, n)| format!(" (shard {k}/{n})"));
    let seeds = sim::swarm::seeds(options);
    println!(
        "swarm{shard}: {} of seeds {}..{}{}",
        seeds.len(),
        options.start,
        options.start.saturating_add(options.seeds),
        if options.check_determinism {
            ", each run twice"
        } else {
            ""
        }
    );
    let mut suites = Vec::new();
    let mut rows = Vec::new();
    let mut failed = 0usize;
    let mut write_error = None;
    sim::swarm::run(options, |outcome| {
        let seed = outcome.seed;
        let reproduce = outcome.reproduce(failures);
        if ci.junit.is_some() {
            suites.push(sim::junit::seed_suite(&outcome, &reproduce));
        }
        rows.push(sim::markdown::SeedRow::of(&outcome, reproduce.clone()));
        if outcome.passed() {
            if let Ok(r) = &outcome.report {
                println!(
                    "seed {seed}: ok ({} disks, {} jobs, {} checks) trace {}",
                    r.disks.len(),
                    r.jobs.len(),
                    r.checks.len(),
                    &r.trace_hash[..16]
                );
            }
            return;
        }
        failed += 1;
        match outcome.write_failure(failures) {
            Ok((scenario, repro)) => println!(
                "seed {seed}{shard}: FAILED: {}; scenario {}, reproduce ({}): {reproduce}",
                outcome.failures.join("; "),
                scenario.display(),
                repro.display()
            ),
            Err(e) => {
                println!(
                    "seed {seed}{shard}: FAILED: {}; reproduce: {reproduce}",
                    outcome.failures.join("; ")
                );
                write_error.get_or_insert(
                    anyhow::Error::new(e)
                        .context(format!("failures folder {}", failures.display())),
                );
            }
        }
    });
    let name = format!("drplane sim swarm{shard}");
    ci.write(
        || sim::junit::document(&name, &suites),
        || sim::markdown::swarm_summary(&rows, options.shard, options.check_determinism),
    )?;
    if let Some(e) = write_error {
        return Err(e);
    }
    println!(
        "{} seeds{shard}, {failed} failed{}",
        rows.len(),
        if options.check_determinism {
            " (each run twice: reports and trace hashes compared)"
        } else {
            ""
        }
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
