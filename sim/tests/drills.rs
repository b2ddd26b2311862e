//! Every scenario in `scenarios/` passes with the trace hash pinned in
//! `scenarios/trace-hashes.txt`, and a swarm of 200 seeds passes with each seed run
//! twice and its two reports (trace hashes included) identical — what CI promises.

use std::path::PathBuf;

fn scenarios() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// `scenarios/trace-hashes.txt`: `NAME HASH` per line, `#` comments.
fn pinned_trace_hashes() -> Vec<(String, String)> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/trace-hashes.txt");
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, hash) = l.split_once(' ').expect("NAME HASH");
            (name.to_string(), hash.trim().to_string())
        })
        .collect()
}

#[test]
fn every_scenario_passes() {
    let files = scenarios();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for required in [
        "quickstart",
        "premium",
        "host-crash-resync",
        "wan-outage-failover",
        "failback-round-trip",
        "recovery-plan",
        "snapshot-pressure",
        "reference",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "scenarios/{required}.toml"
        );
    }
    let pinned = pinned_trace_hashes();
    let mut failed = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let scenario =
            sim::Scenario::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let report = sim::run(&scenario, scenario.seed)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            report.checks.len() >= 4,
            "{}: the standing checks ran",
            file.display()
        );
        for c in report.checks.iter().filter(|c| !c.ok) {
            failed.push(format!("{}: {} ({})", file.display(), c.name, c.detail));
        }
        // Scenario assertions became checks.
        let expected = report
            .checks
            .iter()
            .filter(|c| c.name.starts_with("expected: "))
            .count();
        assert_eq!(expected, scenario.expectations.len(), "{}", file.display());
        let name = file.file_stem().unwrap().to_string_lossy();
        match pinned.iter().find(|(n, _)| *n == name) {
            Some((_, hash)) if *hash == report.trace_hash => {}
            Some((_, hash)) => failed.push(format!(
                "{}: trace hash {} differs from the pinned {hash} (scenarios/trace-hashes.txt)",
                file.display(),
                report.trace_hash
            )),
            None => failed.push(format!(
                "{}: no pinned trace hash in scenarios/trace-hashes.txt",
                file.display()
            )),
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn a_swarm_of_200_seeds_passes_and_every_seed_runs_the_same_twice() {
    let options = sim::swarm::SwarmOptions {
        start: 0,
        seeds: 200,
        jobs: 2,
        check_determinism: true,
        shard: None,
    };
    let mut ran = 0;
    let mut failed = Vec::new();
    sim::swarm::run(&options, |outcome| {
        ran += 1;
        if !outcome.passed() {
            failed.push(format!(
                "seed {}: {}\n{}",
                outcome.seed,
                outcome.failures.join("; "),
                outcome.scenario
            ));
        }
    });
    assert_eq!(ran, 200);
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

#[test]
fn shards_split_the_seeds_between_them() {
    let shard = |k| sim::swarm::SwarmOptions {
        start: 10,
        seeds: 11,
        jobs: 1,
        check_determinism: false,
        shard: Some((k, 3)),
    };
    let mut all: Vec<u64> = (1..=3).flat_map(|k| sim::swarm::seeds(&shard(k))).collect();
    assert_eq!(sim::swarm::seeds(&shard(2)), vec![11, 14, 17, 20]);
    all.sort_unstable();
    assert_eq!(all, (10..21).collect::<Vec<_>>());
}
