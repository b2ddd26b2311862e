//! `drplane plan`: the capacity planner, from a TOML file or flags, with `--verify` running the
//! simulator on the same workload and printing predicted against simulated figures.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use sim::planner::{plan, verify, Plan, PlanInput, Verification};

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// A workload file (TOML: the keys of the flags below, a `[policy]` table, and `[[group]]`
    /// tables for VMs that differ); flags given as well override it (with groups, the VM flags
    /// are the groups' defaults).
    file: Option<PathBuf>,
    /// Number of VMs alike.
    #[arg(long)]
    vms: Option<u32>,
    /// Disks per VM.
    #[arg(long)]
    disks_per_vm: Option<u32>,
    /// Size of each disk (GiB).
    #[arg(long)]
    disk_gib: Option<f64>,
    /// Data on each disk when replication starts (GiB; default the whole disk).
    #[arg(long)]
    used_gib: Option<f64>,
    /// Data written per VM per day (GiB).
    #[arg(long)]
    churn_gib_per_day: Option<f64>,
    /// Busy hours "H1-H2" (UTC) that take --peak-share of the day's churn.
    #[arg(long)]
    peak_hours: Option<String>,
    /// Share of the day's churn written in --peak-hours (0–1).
    #[arg(long)]
    peak_share: Option<f64>,
    /// standard or premium.
    #[arg(long)]
    profile: Option<String>,
    /// WAN bandwidth to Azure (Mbit/s), shared by all VMs.
    #[arg(long)]
    bandwidth_mbps: Option<f64>,
    /// What one upload connection carries across the WAN (Mbit/s; e.g. `iperf3 -P 1`): a
    /// cycle uses the policy's upload threads.
    #[arg(long)]
    connection_mbps: Option<f64>,
    /// Typical write size in KiB (premium's churn limit depends on it).
    #[arg(long)]
    io_size_kib: Option<u32>,
    /// How much the data compresses (1 = not at all, the safe assumption).
    #[arg(long)]
    compression_ratio: Option<f64>,
    /// Copy frequency in seconds (30, 300 or 900).
    #[arg(long)]
    copy_frequency: Option<u32>,
    /// Recovery point retention (hours, at most 24).
    #[arg(long)]
    retention_hours: Option<u32>,
    /// App-consistent snapshot frequency (hours, 1–12, below the retention).
    #[arg(long)]
    app_consistent_hours: Option<u32>,
    /// Upload threads per disk (the policy's; 1–32).
    #[arg(long)]
    upload_threads: Option<u32>,
    /// When replication is enabled: hour of day (UTC).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..24))]
    start_hour: u8,
    /// Run the simulator on this workload and compare.
    #[arg(long)]
    verify: bool,
    /// Hours of delta replication simulated after the initial replication.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=24))]
    verify_hours: u64,
    /// Print the plan as JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn input(args: &PlanArgs) -> Result<PlanInput> {
    let mut input = match &args.file {
        Some(f) => {
            let text = super::read_input_text(f, super::MAX_INPUT_FILE_BYTES)?;
            toml::from_str::<PlanInput>(&text).with_context(|| f.display().to_string())?
        }
        None => PlanInput {
            disk_gib: Some(128.0),
            churn_gib_per_day: Some(10.0),
            profile: "standard".into(),
            bandwidth_mbps: 100.0,
            ..PlanInput::default()
        },
    };
    if let Some(v) = &args.profile {
        input.profile = v.clone();
    }
    if let Some(v) = args.bandwidth_mbps {
        input.bandwidth_mbps = v;
    }
    // Optional keys given as flags replace the file's. VM keys: with [[group]]s in the file
    // they are the groups' defaults.
    macro_rules! flags_override {
        ($($field:ident),*) => {$(
            if args.$field.is_some() {
                input.$field = args.$field.clone();
            }
        )*};
    }
    flags_override!(
        connection_mbps,
        vms,
        disks_per_vm,
        disk_gib,
        used_gib,
        churn_gib_per_day,
        peak_hours,
        peak_share,
        io_size_kib,
        compression_ratio
    );
    let policy = input.policy.get_or_insert_with(Default::default);
    for (field, value) in [
        (&mut policy.copy_frequency_secs, args.copy_frequency),
        (&mut policy.retention_hours, args.retention_hours),
        (&mut policy.app_consistent_hours, args.app_consistent_hours),
        (&mut policy.upload_threads, args.upload_threads),
    ] {
        if value.is_some() {
            *field = value;
        }
    }
    Ok(input)
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn print_plan(p: &Plan) {
    println!(
        "initial replication: {} to send, done {:.1} h after enabling",
        gib(p.initial_bytes),
        p.initial_replication_hours
    );
    match p.catch_up_hours {
        Some(h) => println!("then {h:.1} h to send what was written meanwhile"),
        None => println!("delta replication never catches up after it (it sends slower than the disks are written)"),
    }
    println!(
        "delta replication: {:.2} Mbit/s needed at peak ({} per copy interval)",
        p.delta_bandwidth_needed_mbps,
        gib(p.peak_cycle_bytes)
    );
    match p.expected_max_rpo_secs {
        Some(rpo) => println!("expected largest RPO over a day: {rpo:.0} s"),
        None => println!("expected largest RPO over a day: grows without bound (delta replication cannot keep up: see the verdicts)"),
    }
    println!(
        "storage: replica {} (growing to {} after a day), retained snapshots {}",
        gib(p.replica_storage_bytes),
        gib(p.replica_storage_after_day_bytes),
        gib(p.snapshot_storage_bytes)
    );
    println!(
        "snapshots per blob: {}{}",
        p.snapshots_per_blob,
        p.snapshot_limit
            .map_or(" (no limit)".to_string(), |l| format!(" of at most {l}"))
    );
    let mut groups: Vec<&str> = p.verdicts.iter().map(|v| v.group.as_str()).collect();
    groups.dedup();
    for g in groups {
        let first = p.verdicts.iter().find(|v| v.group == g).expect("listed");
        let label = if g == "vm" {
            String::new()
        } else {
            format!(" in {g}")
        };
        println!(
            "churn per VM{label} at peak: {:.2} MB/s (limit {} MB/s)",
            first.peak_churn_mb_per_s, first.churn_limit_mb_per_s
        );
    }
    for v in &p.verdicts {
        if v.fits {
            println!("  {}: fits", v.vm);
        } else {
            println!("  {}: exceeds: {}", v.vm, v.exceeds.join("; "));
        }
    }
}

fn print_verification(v: &Verification) {
    println!(
        "verified by simulation: {} VMs, sizes, churn and bandwidth scaled by {:.4}, {} simulated hours (trace {})",
        v.simulated_vms,
        v.scale,
        v.simulated_hours,
        &v.trace_hash[..16]
    );
    println!(
        "  {:<30} {:>12} {:>12} {:>8}",
        "figure", "predicted", "simulated", "error"
    );
    for c in &v.comparisons {
        println!(
            "  {:<30} {:>12.3} {:>12.3} {:>7.1}%",
            c.figure,
            c.predicted,
            c.simulated,
            c.relative_error * 100.0
        );
    }
    println!(
        "  steady RPO in the simulation: p50 {:.0} s, p95 {:.0} s, max {:.0} s",
        v.rpo_p50_secs, v.rpo_p95_secs, v.rpo_max_secs
    );
    if v.failed_checks.is_empty() {
        println!("  the simulation's invariants held (every point restores byte-exact, ...)");
    }
    for c in &v.failed_checks {
        println!("  [FAILED] {c}");
    }
}

pub fn run(args: PlanArgs) -> Result<ExitCode> {
    let input = input(&args)?;
    let answer = plan(&input, u64::from(args.start_hour) * 3600)?;
    let verification = if args.verify {
        Some(verify(&input, args.verify_hours)?)
    } else {
        None
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "input": input,
                "plan": answer,
                "verification": verification,
            }))?
        );
    } else {
        print_plan(&answer);
        if let Some(v) = &verification {
            print_verification(v);
        }
    }
    Ok(
        if verification
            .as_ref()
            .is_some_and(|v| !v.failed_checks.is_empty())
        {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        },
    )
}
