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
    },
}

pub fn run(command: SimCommand) -> Result<ExitCode> {
    let SimCommand::Run {
        scenario,
        seed,
        workdir,
        json,
    } = command;
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
