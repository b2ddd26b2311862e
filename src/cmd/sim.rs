//! `drplane sim run`: run a scenario on the deterministic simulator and report.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
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
        /// Keep the stores here instead of a temporary directory.
        #[arg(long)]
        workdir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Also write an SVG timeline (RPO over time, faults, jobs) here.
        #[arg(long)]
        svg: Option<PathBuf>,
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
        /// Where failing scenarios are written.
        #[arg(long, default_value = ".")]
        failures: PathBuf,
    },
}

pub fn run(command: SimCommand) -> Result<ExitCode> {
    let (scenario, seed, workdir, json, svg) = match command {
        SimCommand::Run {
            scenario,
            seed,
            workdir,
            json,
            svg,
        } => (scenario, seed, workdir, json, svg),
        SimCommand::Swarm {
            seeds,
            start,
            failures,
        } => return swarm(start, seeds, &failures),
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
    let temp;
    let dir = match &workdir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir().context("temporary work directory")?;
            temp.path().to_path_buf()
        }
    };
    let started = std::time::Instant::now();
    let report = sim::run(&parsed, seed, &dir)?;
    let wall = started.elapsed().as_secs_f64();
    if let Some(path) = &svg {
        std::fs::write(path, sim::timeline::svg(&report))
            .with_context(|| path.display().to_string())?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "scenario {} (sha {}), seed {seed}: {} simulated hours, {} events in {wall:.1} s",
            report.scenario,
            &report.scenario_hash[..16],
            report.simulated_hours,
            report.events
        );
        for d in &report.disks {
            println!(
                "  {}/{}: {} cycles ({} failed, {} resync), {} points live ({} app-consistent, {} verified), sent {}, max RPO {:.0} s (steady {:.0} s){}",
                d.vm,
                d.disk,
                d.cycles,
                d.failed_cycles,
                d.resyncs,
                d.points_live,
                d.app_consistent_points,
                d.points_verified,
                indicatif::HumanBytes(d.bytes_sent),
                d.max_rpo_secs,
                d.max_steady_rpo_secs,
                if d.health_warnings.is_empty() {
                    String::new()
                } else {
                    format!("; health: {}", d.health_warnings.join("; "))
                }
            );
        }
        for j in &report.jobs {
            println!(
                "  job {} {} at minute {} ({} s): {} — {}",
                j.name,
                j.vm,
                j.started_minute,
                j.seconds,
                if j.succeeded { "succeeded" } else { "failed" },
                j.detail
            );
        }
        for c in &report.checks {
            println!(
                "  [{}] {} ({})",
                if c.ok { "ok" } else { "FAILED" },
                c.name,
                c.detail
            );
        }
        println!("trace hash {}", report.trace_hash);
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn swarm(start: u64, seeds: u64, failures: &std::path::Path) -> Result<ExitCode> {
    let mut failed = 0;
    for seed in start..start.saturating_add(seeds) {
        let text = sim::swarm::scenario_for(seed);
        let scenario = sim::Scenario::parse(&text).with_context(|| format!("swarm seed {seed}"))?;
        let dir = tempfile::tempdir().context("temporary work directory")?;
        let report = sim::run(&scenario, seed, dir.path());
        match report {
            Ok(r) if r.passed() => println!(
                "seed {seed}: ok ({} disks, {} jobs, {} checks) trace {}",
                r.disks.len(),
                r.jobs.len(),
                r.checks.len(),
                &r.trace_hash[..16]
            ),
            other => {
                failed += 1;
                let why = match other {
                    Ok(r) => r
                        .checks
                        .iter()
                        .filter(|c| !c.ok)
                        .map(|c| format!("{} ({})", c.name, c.detail))
                        .collect::<Vec<_>>()
                        .join("; "),
                    Err(e) => e.to_string(),
                };
                let path = failures.join(format!("swarm-{seed}.toml"));
                std::fs::write(&path, &text).with_context(|| path.display().to_string())?;
                println!(
                    "seed {seed}: FAILED: {why}; reproduce: drplane sim run {}",
                    path.display()
                );
            }
        }
    }
    println!("{seeds} seeds, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
