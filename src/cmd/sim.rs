//! `drplane sim run`: run a scenario on the deterministic simulator and report.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Run a scenario (default: the embedded quickstart) and check its invariants.
    Run {
        /// Scenario file (TOML); see scenarios/.
        scenario: Option<PathBuf>,
        /// Seed (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Keep the stores and trackers here (a new or empty directory) instead of in memory.
        #[arg(long)]
        workdir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Also write an SVG timeline (RPO over time, faults, jobs) here.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Write a report here: summary.txt, report.json and timeline.svg.
        #[arg(long)]
        report: Option<PathBuf>,
    },
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
        /// Directory failing scenarios are written to (created only when a seed fails).
        #[arg(long, default_value = "swarm-failures")]
        failures: PathBuf,
    },
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

pub fn run(command: SimCommand) -> Result<ExitCode> {
    let (scenario, seed, workdir, json, svg, report_dir) = match command {
        SimCommand::Run {
            scenario,
            seed,
            workdir,
            json,
            svg,
            report,
        } => (scenario, seed, workdir, json, svg, report),
        SimCommand::Swarm {
            seeds,
            start,
            jobs,
            check_determinism,
            shard,
            failures,
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
            )
        }
    };
    let text = match &scenario {
        Some(p) => std::fs::read_to_string(p).with_context(|| p.display().to_string())?,
        None => sim::QUICKSTART.to_string(),
    };
    let label = scenario
        .as_ref()
        .map_or("quickstart (embedded)".to_string(), |p| {
            p.display().to_string()
        });
    let parsed = sim::Scenario::parse(&text).with_context(|| label.clone())?;
    let seed = seed.unwrap_or(parsed.seed);
    let storage = match &workdir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
            let used = std::fs::read_dir(d)
                .with_context(|| d.display().to_string())?
                .next()
                .is_some();
            if used {
                bail!(
                    "work directory {} is not empty: a run starts from empty stores",
                    d.display()
                );
            }
            sim::Storage::Directory(d.clone())
        }
        None => sim::Storage::Memory,
    };
    let started = std::time::Instant::now();
    let report = sim::run_in(&parsed, seed, &storage)?;
    let wall = started.elapsed().as_secs_f64();
    let text = summary(&report, wall);
    if let Some(path) = &svg {
        std::fs::write(path, sim::timeline::svg(&report))
            .with_context(|| path.display().to_string())?;
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
            serde_json::to_string_pretty(&report)?.as_bytes(),
        )?;
        write("timeline.svg", sim::timeline::svg(&report).as_bytes())?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{text}");
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
    let simulated = report.simulated_hours as f64 * 3600.0;
    let churn: u64 = report
        .disks
        .iter()
        .map(|d| d.bytes_written_by_workload)
        .sum();
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

fn swarm(options: &sim::swarm::SwarmOptions, failures: &std::path::Path) -> Result<ExitCode> {
    let mut failed = 0usize;
    let mut total = 0usize;
    let mut write_error = None;
    sim::swarm::run(options, |outcome| {
        total += 1;
        let seed = outcome.seed;
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
        let path = failures.join(format!("swarm-{seed}.toml"));
        let written = std::fs::create_dir_all(failures)
            .and_then(|()| std::fs::write(&path, &outcome.scenario))
            .with_context(|| path.display().to_string());
        if let Err(e) = written {
            write_error.get_or_insert(e);
        }
        println!(
            "seed {seed}: FAILED: {}; reproduce: drplane sim run {} --seed {seed}",
            outcome.failures.join("; "),
            path.display()
        );
    });
    if let Some(e) = write_error {
        return Err(e);
    }
    println!(
        "{total} seeds{}, {failed} failed{}",
        options
            .shard
            .map_or(String::new(), |(k, n)| format!(" (shard {k}/{n})")),
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
