//! `drplane bench`: the data path measured on one disk (a generated realistic disk by default,
//! or any raw/VHDX file, never written), and `drplane bench make-disk` to keep such a disk.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use datapath::bench::synthetic::{write_realistic_disk, ContentKind, ContentMix};
use datapath::bench::{run_bench, BenchConfig, BenchReport, BenchTarget, CycleFigures};
use datapath::cycle::{BlockSource, RawSource};
use datapath::keys::Identity;
use pageblob::clock::SystemClock;
use pageblob::data_log::Durability;
use pageblob::{Emulator, PageBlobStore, Profile};
use rand_core::{OsRng, TryRngCore};

use super::bench_compare::{figures, median, median_figures, SCHEMA};
use super::blob::Target;
use super::replicate::{load_policy, open_source, PolicyArgs};
use super::vhdx::parse_size;
use indicatif::HumanBytes;

/// Container the bench's replicas go in (apart from real replicas).
const BENCH_CONTAINER: &str = "bench";

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Write the generated realistic disk as a raw file (30% zeros, 30% text, 20% code,
    /// 20% media in 1 MiB extents; the same seed gives the same bytes).
    MakeDisk {
        /// The raw file to write.
        output: PathBuf,
        /// Size (K, M, G, T).
        #[arg(long, default_value = "1G", value_parser = parse_size)]
        size: u64,
        /// The same seed always gives the same bytes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Compare two saved `bench --json` reports: each figure's change, better or worse.
    Compare {
        /// The earlier report.
        old: PathBuf,
        /// The later report.
        new: PathBuf,
        /// Fail (exit 1) when a figure got worse by more than this many percent.
        #[arg(long)]
        max_regression: Option<f64>,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The disk to measure: a .vhdx (chains followed) or a raw image; it is only read.
    /// Default: a generated realistic disk of --size in a temporary folder.
    #[arg(long)]
    disk: Option<PathBuf>,
    /// Size of the generated disk (K, M, G, T).
    #[arg(long, default_value = "1G", value_parser = parse_size, conflicts_with = "disk")]
    size: u64,
    /// Seeds the generated disk, the blocks each delta cycle changes and their new content.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// One tracked delta cycle per value, in order: the share of the disk's blocks it
    /// changes, in percent (comma-separated; `none` for no delta cycle).
    #[arg(long, default_value = "1,5", value_parser = parse_churn)]
    churn: Churn,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Where to replicate (a store directory or an endpoint URL); the replica is named
    /// `bench-<random>` in container "bench" and left there. Default: a temporary store
    /// directory, removed afterwards.
    #[arg(long)]
    store: Option<String>,
    /// Pipeline threads (hashing, compressing, encrypting); default: one per core.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pipeline_threads: Option<u16>,
    /// MiB of non-zero blocks, spread over the disk, to time each stage on.
    #[arg(long, default_value_t = 64)]
    sample_mib: u64,
    /// Repeat the whole measurement this many times, each run into a new replica, and report
    /// the median of each figure too (this VM's run-to-run noise is ±10%).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
    runs: u16,
    /// Skip restoring the last point and comparing it with the disk.
    #[arg(long)]
    no_verify: bool,
    /// Print the report as JSON (rates in bytes per second, times in seconds).
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    match args.command {
        Some(BenchCommand::MakeDisk {
            output,
            size,
            seed,
            force,
        }) => {
            if size == 0 {
                bail!("--size 0: an empty disk is refused by bench and replicate alike");
            }
            let folder = super::output_file::folder_of(&output);
            check_room(
                folder,
                size,
                &format!("a {} disk", HumanBytes(size)),
                "choose a smaller --size or another folder",
            )?;
            // Written beside the name and put in place when complete: an existing disk is
            // replaced only with --force (it was truncated), never by half a disk.
            let out = super::output_file::OutputFile::prepare(&output, force, "make-disk")?;
            let mix = write_realistic_disk(&mut std::io::BufWriter::new(out.file()), size, seed)
                .with_context(|| output.display().to_string())?;
            out.publish(&output, false)?;
            println!(
                "{}: {} realistic disk (seed {seed}): {}",
                output.display(),
                HumanBytes(size),
                mix_text(&mix)
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(BenchCommand::Compare {
            old,
            new,
            max_regression,
        }) => super::bench_compare::compare(&old, &new, max_regression),
        None => bench(args.run),
    }
}

/// Churn levels in percent, in order.
#[derive(Debug, Clone)]
struct Churn(Vec<f64>);

fn parse_churn(text: &str) -> std::result::Result<Churn, String> {
    let t = text.trim();
    if t.is_empty() || t == "none" {
        return Ok(Churn(Vec::new()));
    }
    t.split(',')
        .map(|p| {
            p.trim()
                .parse::<f64>()
                .map_err(|_| format!("{p:?}: a percentage (e.g. 1,5,10) or none"))
        })
        .collect::<std::result::Result<_, _>>()
        .map(Churn)
}

fn make_disk(path: &std::path::Path, size: u64, seed: u64) -> Result<ContentMix> {
    let file = std::fs::File::create(path).with_context(|| path.display().to_string())?;
    write_realistic_disk(&mut std::io::BufWriter::new(file), size, seed)
        .with_context(|| path.display().to_string())
}

fn mix_text(mix: &ContentMix) -> String {
    ContentKind::ALL
        .iter()
        .map(|k| format!("{} {}", HumanBytes(mix[*k as usize]), k.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Write back everything dirty on the file system holding `dir` (best effort: a measurement
/// only gets fairer with it).
fn write_back(dir: &std::path::Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = rustix::fs::syncfs(&d);
    }
}

/// `needed` bytes (`what`) must fit in the file system holding `dir`.
fn check_room(dir: &std::path::Path, needed: u64, what: &str, hint: &str) -> Result<()> {
    let Ok(fs) = rustix::fs::statvfs(dir) else {
        return Ok(());
    };
    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
    if needed > free {
        anyhow::bail!(
            "not enough room for {what}: up to {} in {}, which has {} free ({hint})",
            HumanBytes(needed),
            dir.display(),
            HumanBytes(free)
        );
    }
    Ok(())
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut raw = vec![0u8; bytes];
    OsRng
        .try_fill_bytes(&mut raw)
        .context("the OS random number generator")?;
    Ok(hex::encode(raw))
}

fn bench(args: RunArgs) -> Result<ExitCode> {
    let policy = load_policy(&args.policy, Profile::Standard)?;
    let scratch = tempfile::Builder::new()
        .prefix("drplane-bench-")
        .tempdir()
        .context("a temporary folder")?;
    let say = |what: &str| {
        if !args.json && std::io::stderr().is_terminal() {
            eprintln!("bench: {what}…");
        }
    };
    let config = BenchConfig {
        block_size: policy.block_size,
        zstd_level: policy.zstd_level,
        encrypt: policy.encrypt_at_rest,
        upload_threads: policy.upload_threads as usize,
        churn_percents: args.churn.0.clone(),
        seed: args.seed,
        stage_sample_bytes: args.sample_mib.saturating_mul(1 << 20),
        verify: !args.no_verify,
    };
    if args.disk.is_none() {
        // Refuse bad settings, and a disk that does not fit, before writing it.
        config.validate(args.size)?;
        check_room(
            scratch.path(),
            args.size.saturating_mul(2),
            &format!("a generated {} disk and its replica", HumanBytes(args.size)),
            "give --disk, a smaller --size, or set TMPDIR",
        )?;
    }
    let (source, disk_text): (Box<dyn BlockSource>, String) = match &args.disk {
        Some(path) => (
            open_source(path)?.0,
            format!("{} (only read)", path.display()),
        ),
        None => {
            say("writing the realistic disk");
            let path = scratch.path().join("realistic.raw");
            let mix = make_disk(&path, args.size, args.seed)?;
            write_back(scratch.path());
            let raw = RawSource::open(&path).with_context(|| path.display().to_string())?;
            (
                Box::new(raw),
                format!(
                    "generated realistic disk (seed {}): {}",
                    args.seed,
                    mix_text(&mix)
                ),
            )
        }
    };
    if args.disk.is_some() && args.store.is_none() {
        // The replica can be as big as the disk (plus a 512-byte header per block).
        let size = source.disk_size();
        check_room(
            scratch.path(),
            size.saturating_add(size / 64),
            &format!("the replica of a {} disk", HumanBytes(size)),
            "give --store elsewhere, or set TMPDIR",
        )?;
    }
    // A given store is shared by the runs; otherwise each run gets a fresh temporary store,
    // removed and written back (`syncfs`) before the next, so no run pays for another's
    // writeback (as scripts/bench-replicate.sh does between tools).
    let shared_store: Option<Box<dyn PageBlobStore>> = match &args.store {
        Some(s) => Some(
            Target::url(
                s,
                std::env::var("DRPLANE_ACCOUNT_KEY").ok(),
                Default::default(),
            )
            .open_writer(None)?
            .0,
        ),
        None => None,
    };
    // A throwaway certificate, as `register` makes one: the keys are real, nothing is kept.
    let password = random_hex(16)?;
    let (_, pfx) =
        datapath::registration::register("drplane-bench", "bench", &password, &SystemClock)?;
    let identity = Identity::from_pfx(&pfx, &password)?;
    let base_name = format!("bench-{}", random_hex(6)?);
    let pool = args
        .pipeline_threads
        .map(|threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(usize::from(threads))
                .build()
                .context("the pipeline's thread pool")
        })
        .transpose()?;
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let name = match args.runs {
            1 => base_name.clone(),
            _ => format!("{base_name}-{run}"),
        };
        if args.runs > 1 {
            say(&format!("run {run} of {}", args.runs));
        }
        let own_dir = scratch.path().join(format!("store-{run}"));
        let mut own_store = None;
        let store: &dyn PageBlobStore = match &shared_store {
            Some(shared) => &**shared,
            None => own_store.insert(
                Emulator::open(
                    &own_dir,
                    Profile::Standard,
                    Durability::Process,
                    Arc::new(SystemClock),
                )
                .context("the temporary store")?,
            ),
        };
        let target = BenchTarget {
            store,
            container: BENCH_CONTAINER,
            name: &name,
            identity: &identity,
            clock: &SystemClock,
        };
        let once = || run_bench(&*source, &target, &config, &|stage| say(stage));
        let report = match &pool {
            None => once()?,
            Some(pool) => pool.install(once)?,
        };
        runs.push((name, report));
        if let Some(own) = own_store {
            drop(own);
            std::fs::remove_dir_all(&own_dir)
                .with_context(|| format!("removing {}", own_dir.display()))?;
            write_back(scratch.path());
        }
    }
    let replica = |name: &str| {
        args.store
            .as_ref()
            .map(|s| format!("{s} {BENCH_CONTAINER}/{name}"))
    };
    if args.json {
        let mut values: Vec<serde_json::Value> = runs
            .iter()
            .map(|(name, report)| report_json(report, &disk_text, replica(name)))
            .collect::<Result<_>>()?;
        let value = match values.len() {
            1 => values.remove(0),
            _ => {
                let reports: Vec<&BenchReport> = runs.iter().map(|(_, r)| r).collect();
                let each: Vec<_> = reports.iter().map(|r| figures(r)).collect();
                serde_json::json!({
                    "schema": SCHEMA,
                    "runs": values,
                    "median": Medians::of(&reports),
                    "figures": median_figures(&each),
                })
            }
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        for (i, (name, report)) in runs.iter().enumerate() {
            if runs.len() > 1 {
                println!("run {} of {}:", i + 1, runs.len());
            }
            print_report(report, &disk_text);
            if let Some(r) = replica(name) {
                println!("replica left in {r}");
            }
        }
        if runs.len() > 1 {
            let reports: Vec<&BenchReport> = runs.iter().map(|(_, r)| r).collect();
            print_medians(&Medians::of(&reports), &reports[0].deltas);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One run's report as JSON, with the derived rates.
fn report_json(
    report: &BenchReport,
    disk_text: &str,
    replica: Option<String>,
) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(report)?;
    value["schema"] = SCHEMA.into();
    value["disk"] = disk_text.into();
    value["replica"] = replica.into();
    value["initial_bytes_per_sec"] = report.initial_rate().into();
    value["pipeline_bound_bytes_per_sec"] = report.pipeline_bound().into();
    value["pipeline_efficiency"] = report.pipeline_efficiency().into();
    value["measured_efficiency"] = report.measured_efficiency().into();
    value["replication_bound_bytes_per_sec"] = report.replication_bound().into();
    value["replication_efficiency"] = report.replication_efficiency().into();
    value["restore_bytes_per_sec"] = report.restore_rate().into();
    value["restore_bound_bytes_per_sec"] = report.restore_bound().into();
    value["restore_efficiency"] = report.restore_efficiency().into();
    value["figures"] = serde_json::to_value(figures(report))?;
    Ok(value)
}

/// The median of each timed figure over several runs.
#[derive(Debug, serde::Serialize)]
struct Medians {
    runs: usize,
    initial_seconds: f64,
    initial_cpu_seconds: Option<f64>,
    initial_bytes_per_sec: f64,
    pipeline_bound_bytes_per_sec: Option<f64>,
    pipeline_efficiency: Option<f64>,
    replication_efficiency: Option<f64>,
    measured_efficiency: Option<f64>,
    /// One per churn level, in order.
    delta_seconds: Vec<f64>,
    restore_seconds: Option<f64>,
    restore_efficiency: Option<f64>,
    verify_seconds: Option<f64>,
}

/// The median of `f` over the runs that have it; `None` when none has.
fn median_of(reports: &[&BenchReport], f: impl Fn(&BenchReport) -> Option<f64>) -> Option<f64> {
    let values: Vec<f64> = reports.iter().filter_map(|r| f(r)).collect();
    (!values.is_empty()).then(|| median(values))
}

impl Medians {
    fn of(reports: &[&BenchReport]) -> Medians {
        let deltas = reports.first().map_or(0, |r| r.deltas.len());
        Medians {
            runs: reports.len(),
            initial_seconds: median(reports.iter().map(|r| r.initial.seconds).collect()),
            initial_cpu_seconds: median_of(reports, |r| r.initial.cpu_seconds),
            initial_bytes_per_sec: median(reports.iter().map(|r| r.initial_rate()).collect()),
            pipeline_bound_bytes_per_sec: median_of(reports, BenchReport::pipeline_bound),
            pipeline_efficiency: median_of(reports, BenchReport::pipeline_efficiency),
            replication_efficiency: median_of(reports, BenchReport::replication_efficiency),
            measured_efficiency: median_of(reports, BenchReport::measured_efficiency),
            delta_seconds: (0..deltas)
                .map(|i| median(reports.iter().map(|r| r.deltas[i].seconds).collect()))
                .collect(),
            restore_seconds: median_of(reports, |r| r.restore.as_ref().map(|x| x.seconds)),
            restore_efficiency: median_of(reports, BenchReport::restore_efficiency),
            verify_seconds: median_of(reports, |r| r.verify_seconds),
        }
    }
}

/// ", N% of the measured bound" where the transforms were measured on the pipeline's threads.
fn measured_text(efficiency: Option<f64>) -> String {
    efficiency
        .map(|e| {
            format!(
                ", {:.0}% of the bound measured on the threads at once",
                100.0 * e
            )
        })
        .unwrap_or_default()
}

fn print_medians(m: &Medians, deltas: &[CycleFigures]) {
    let cpu = cpu_text(m.initial_cpu_seconds);
    let bound = m
        .pipeline_bound_bytes_per_sec
        .map(|b| format!("; pipeline bound {}", rate(b)))
        .unwrap_or_default();
    let efficiency = efficiency_text(m.pipeline_efficiency);
    let with_io = m
        .replication_efficiency
        .map(|e| format!(", {:.0}% of the bound with I/O", 100.0 * e))
        .unwrap_or_default();
    let with_io = with_io + &measured_text(m.measured_efficiency);
    println!(
        "median of {} runs: initial replication {:.2} s{cpu}, {} of disk{efficiency}{with_io}{bound}",
        m.runs,
        m.initial_seconds,
        rate(m.initial_bytes_per_sec)
    );
    if let Some(seconds) = m.restore_seconds {
        println!(
            "  restore {seconds:.2} s{}",
            efficiency_text(m.restore_efficiency)
        );
    }
    for (d, seconds) in deltas.iter().zip(&m.delta_seconds) {
        println!(
            "  delta, churn {}%: {seconds:.3} s ({:.1}% of the initial)",
            d.churn_percent.unwrap_or(0.0),
            100.0 * seconds / m.initial_seconds.max(1e-9)
        );
    }
}

fn rate(bytes_per_sec: f64) -> String {
    format!("{}/s", HumanBytes(bytes_per_sec as u64))
}

fn cpu_text(cpu_seconds: Option<f64>) -> String {
    cpu_seconds
        .map(|c| format!(", {c:.2} s CPU"))
        .unwrap_or_default()
}

/// Where a cycle's CPU went: the pipeline's pool (and how busy it kept its threads), the
/// other threads (the store's writers), and what the cores left unused.
fn cpu_split_text(c: &CycleFigures, threads: usize, cores: usize) -> Option<String> {
    let pool = c.pool_cpu_seconds?;
    let busy = pool / (threads as f64 * c.seconds).max(1e-9);
    let unused = c.unused_core_seconds(cores)?;
    Some(format!(
        "CPU: the pipeline's {threads} thread(s) {pool:.2} s ({:.0}% of their time), the store's writers and other threads {:.2} s; {unused:.2} core-s of {cores} core(s) unused ({:.0}%)",
        100.0 * busy,
        c.other_cpu_seconds()?,
        100.0 * unused / (cores as f64 * c.seconds).max(1e-9)
    ))
}

/// The initial replication's serial parts, from the pipeline's own counters, and what they
/// would allow on more cores.
fn serial_text(r: &BenchReport) -> Option<String> {
    let c = &r.initial;
    let projected = BenchReport::PROJECTED_THREADS
        .map(|n| {
            r.projected_efficiency(n)
                .map(|e| format!("{n} threads {:.0}%", 100.0 * e))
        })
        .into_iter()
        .collect::<Option<Vec<_>>>()?
        .join(", ");
    Some(format!(
        "serial parts: the cycle's thread settling groups {:.3} CPU-s, the store's {} writer(s) {:.2} CPU-s, {:.3} s before and after the groups; they keep {:.0} threads' transforms fed. Projected share of the bound with a core per thread: {projected}",
        c.serial_cpu_seconds?,
        r.upload_threads,
        c.other_cpu_seconds()?,
        c.outside_groups_seconds,
        r.serial_ceiling_threads()?,
    ))
}

fn efficiency_text(efficiency: Option<f64>) -> String {
    efficiency
        .map(|e| format!(" ({:.0}% of the bound)", 100.0 * e))
        .unwrap_or_default()
}

fn print_report(r: &BenchReport, disk: &str) {
    println!("disk: {disk}");
    println!(
        "  {} in {} blocks of {}; zstd level {}, {}, {} upload thread(s), {} pipeline thread(s)",
        HumanBytes(r.disk_size),
        r.blocks,
        HumanBytes(u64::from(r.block_size)),
        r.zstd_level,
        if r.encrypt {
            "encrypted"
        } else {
            "not encrypted"
        },
        r.upload_threads,
        r.pipeline_threads
    );
    match &r.stages {
        Some(s) => {
            println!(
                "stages, one thread, on {} of non-zero blocks: BLAKE3 {}, zstd {} (stores {:.1}%), AES-256-GCM {}, CRC-32C {}",
                HumanBytes(s.sample_bytes),
                rate(s.blake3_keyed),
                rate(s.zstd),
                100.0 * s.stored_ratio,
                rate(s.aes_256_gcm),
                rate(s.crc32c)
            );
            println!(
                "  restore's: AES-256-GCM open {}, zstd decompress {}",
                rate(s.aes_256_gcm_open),
                rate(s.zstd_decompress)
            );
            if let Some(io) = &r.io {
                println!(
                    "  I/O: source read {}, store write {}, store read {} (records are {:.1}% of the plain bytes)",
                    rate(io.source_read),
                    rate(io.store_write),
                    rate(io.store_read),
                    100.0 * io.record_ratio
                );
            }
            println!(
                "  pipeline bound on {} thread(s): {} of non-zero data (transforms only)",
                r.pipeline_threads,
                rate(s.pipeline_bound(r.pipeline_threads))
            );
            if let Some(measured) = r.transforms_on_threads {
                println!(
                    "  the same transforms measured on {} thread(s) at once: {} ({:.0}% of {} x one thread)",
                    r.pipeline_threads,
                    rate(measured),
                    100.0 * measured / s.pipeline_bound(r.pipeline_threads),
                    r.pipeline_threads
                );
            }
            if let Some(b) = r.replication_bound() {
                println!(
                    "  with the source reads and store writes on {} core(s): {}",
                    r.cores,
                    rate(b)
                );
            }
        }
        None => println!("stages: not timed (the disk holds no non-zero block)"),
    }
    let i = &r.initial;
    let efficiency = match (r.pipeline_efficiency(), r.replication_efficiency()) {
        (Some(p), Some(w)) => format!(
            " ({:.0}% of the bound, {:.0}% of the bound with I/O{})",
            100.0 * p,
            100.0 * w,
            measured_text(r.measured_efficiency())
        ),
        (p, _) => efficiency_text(p),
    };
    println!(
        "initial replication: {:.2} s{}, {} of disk; {} non-zero at {}{efficiency}; stored {} ({:.1}%)",
        i.seconds,
        cpu_text(i.cpu_seconds),
        rate(r.initial_rate()),
        HumanBytes(i.bytes_changed),
        rate(i.bytes_changed as f64 / i.seconds.max(1e-9)),
        HumanBytes(i.bytes_sent),
        100.0 * i.bytes_sent as f64 / i.bytes_changed.max(1) as f64
    );
    if let Some(split) = cpu_split_text(i, r.pipeline_threads, r.cores) {
        println!("  {split}");
    }
    if let Some(serial) = serial_text(r) {
        println!("  {serial}");
    }
    for d in &r.deltas {
        println!(
            "delta, churn {}%: {:.3} s{} ({:.1}% of the initial), {} blocks changed, sent {}",
            d.churn_percent.unwrap_or(0.0),
            d.seconds,
            cpu_text(d.cpu_seconds),
            100.0 * d.seconds / i.seconds.max(1e-9),
            d.blocks_changed,
            HumanBytes(d.bytes_sent)
        );
    }
    if let Some(x) = &r.restore {
        println!(
            "restore of the last point: {:.2} s{}, {} of records decoded at {}{}",
            x.seconds,
            cpu_text(x.cpu_seconds),
            HumanBytes(x.bytes_restored),
            rate(r.restore_rate().unwrap_or(0.0)),
            match r.restore_bound() {
                Some(b) => format!(
                    " ({:.0}% of the restore bound, {})",
                    100.0 * r.restore_efficiency().unwrap_or(0.0),
                    rate(b)
                ),
                None => String::new(),
            }
        );
    }
    if let Some(v) = r.verify_seconds {
        println!(
            "verified: the last point restores byte-exact ({v:.2} s, {} of disk restored and compared)",
            rate(r.disk_size as f64 / v.max(1e-9))
        );
    }
}
