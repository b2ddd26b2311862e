//! `drplane replicate`: cycles of one disk — a file at rest, or a live disk in QEMU — into a
//! store, once or on the policy's schedule; the pieces every replicating command shares (keys,
//! registration, targets and policy, the console). Several disks of one QEMU replicated
//! together: `super::machine`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use datapath::agent::{AgentError, AgentTarget};
use datapath::cycle::{BlockSource, CycleReport, Progress, RawSource};
use datapath::driver::{watch, Finished, Pause, ReplicationDriver, WatchEnd, WatchEvents};
use datapath::keys::Identity;
use datapath::live::{QemuOptions, QemuSource};
use datapath::policy::{Policy, PolicyOverrides};
use datapath::registration::VaultCredentials;
use datapath::replica::disk_replica::Layout;
use datapath::replica::manifest::Consistency;
use datapath::replica::replica_name::replica_name_error;
use datapath::replicator::{CycleKind, CyclePlan};
use datapath::source::{ChangeSource, ReopenedDisk};
use pageblob::clock::{Clock, SystemClock};
use pageblob::{PageBlobStore, Profile};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde_json::json;

use super::blob::Target;
use super::register::pfx_password;
use crate::progress::bytes_bar;

pub use super::REPLICA_CONTAINER;

#[derive(Debug, Args)]
pub struct Keys {
    /// The .pfx from `drplane register`.
    #[arg(long)]
    pfx: PathBuf,
    /// File holding the .pfx password (else DRPLANE_PFX_PASSWORD, else a prompt).
    #[arg(long)]
    password_file: Option<PathBuf>,
}

impl Keys {
    pub fn load(&self) -> Result<Identity> {
        let bytes = super::read_input_file(&self.pfx, super::MAX_INPUT_FILE_BYTES)?;
        let password = pfx_password(self.password_file.as_deref(), false)?;
        Identity::from_pfx(&bytes, &password).with_context(|| self.pfx.display().to_string())
    }
}

#[derive(Debug, Args)]
pub struct ReplicateArgs {
    /// The disk: a .vhdx (chains followed) or a raw image, at rest (nobody writes it while a
    /// cycle reads it).
    #[arg(long, required_unless_present = "qemu")]
    disk: Option<PathBuf>,
    #[command(flatten)]
    pub live: LiveArgs,
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    keys: Keys,
    /// Vault credentials from `drplane register` (default: VAULT.VaultCredentials next to
    /// the .pfx): this server's registration, required. Their five-day validity bounds
    /// registering, not replicating.
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// Replica name (default: the VHDX Virtual Disk ID, or the file name); with --qemu, one
    /// per --node.
    #[arg(long)]
    pub name: Vec<String>,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Standard store (directory or URL) for the replication log; required for premium
    /// targets, whose cycles are staged there and applied from it.
    #[arg(long)]
    log_store: Option<String>,
    /// Store profile: standard, premium, premium-spaced. A new store directory is created with
    /// it; for a URL it is what the policy is checked against (default standard).
    #[arg(long)]
    profile: Option<String>,
    /// The disk is quiescent (VM stopped or file system frozen): points are app-consistent.
    #[arg(long)]
    pub app_consistent: bool,
    /// Keep replicating on the policy's schedule until interrupted (default: one cycle now).
    #[arg(long, conflicts_with = "once")]
    pub watch: bool,
    /// One cycle now, then retention, then exit (the default).
    #[arg(long)]
    once: bool,
    /// With --watch: stop after this many cycles.
    #[arg(long, requires = "watch")]
    pub cycles: Option<u64>,
    /// Print each cycle's report as a line of JSON instead of text.
    #[arg(long)]
    pub json: bool,
}
/// A live disk in a running QEMU (see docs/live-replication.md).
#[derive(Debug, Args)]
pub struct LiveArgs {
    /// QMP socket of a running QEMU or qemu-storage-daemon: replicate the live disk of
    /// --node, reading only what its dirty bitmaps mark, from a point-in-time fleecing view.
    #[arg(long, conflicts_with = "disk", requires_all = ["node", "name"])]
    qemu: Option<PathBuf>,
    /// With --qemu: the disk's block node (its format node, e.g. `disk0`). Give it again for
    /// each other disk of the same VM, with a --name each (in the same order): all are frozen
    /// in one transaction every cycle, so their points are one instant of the whole VM.
    #[arg(long, requires = "qemu")]
    pub node: Vec<String>,
    /// With --qemu: the unix socket of the NBD server QEMU already runs (`--nbd-server`);
    /// default: one is started beside the QMP socket for each cycle and stopped after it.
    #[arg(long, requires = "qemu")]
    pub nbd_socket: Option<PathBuf>,
    /// With --qemu: where QEMU writes the fleecing file (old data the guest overwrites during
    /// a cycle): the disk's size is reserved there for each cycle, so a full file system
    /// refuses the cycle instead of failing the guest's writes; default: beside the QMP socket.
    #[arg(long, requires = "qemu")]
    scratch_dir: Option<PathBuf>,
    /// With --qemu: do not reserve the disk's size in the scratch directory (for a file system
    /// that cannot): a scratch directory that fills during a cycle then fails the guest's
    /// writes, as QEMU must save the old data they overwrite first.
    #[arg(long, requires = "qemu")]
    no_scratch_reservation: bool,
    /// With --qemu: keep the dirty bitmaps in the image (qcow2 only), so a clean QEMU restart
    /// needs no resync.
    #[arg(long, requires = "qemu")]
    persistent_bitmap: bool,
}

/// The options of QEMU disk `node` replicated as `name` (`nbd_socket`, `scratch_dir`: as
/// given, else the defaults).
pub fn qemu_options(
    qmp: &Path,
    node: &str,
    name: &str,
    nbd_socket: Option<&Path>,
    scratch_dir: Option<&Path>,
) -> QemuOptions {
    let mut options = QemuOptions::new(qmp.to_path_buf(), node.into(), name.into());
    options.nbd_socket = nbd_socket.map(Path::to_path_buf);
    if let Some(dir) = scratch_dir {
        options.scratch_dir = dir.to_path_buf();
    }
    options
}

impl LiveArgs {
    /// A live disk (`--qemu`) is replicated.
    pub fn is_live(&self) -> bool {
        self.qemu.is_some()
    }

    /// The QEMU disk `node` as the source of replica `name`, with its size.
    pub fn attach(&self, node: &str, name: &str) -> Result<(QemuSource, u64)> {
        let qmp = self.qemu.as_ref().context("--node needs --qemu")?;
        let mut options = qemu_options(
            qmp,
            node,
            name,
            self.nbd_socket.as_deref(),
            self.scratch_dir.as_deref(),
        );
        options.persistent_bitmaps = self.persistent_bitmap;
        options.reserve_scratch = !self.no_scratch_reservation;
        QemuSource::attach(options)
            .with_context(|| format!("QEMU at {} (node {node})", qmp.display()))
    }
}

/// A disk file as a cycle source, and its default replica name: a VHDX's Virtual Disk ID; for
/// a raw file or block device, its name and a digest of its full path (`disk-1a2b3c4d5e6f7a8b`),
/// so two `disk.raw` in different folders never share a replica, its ids or its keys.
pub fn open_source(path: &Path) -> Result<(Box<dyn BlockSource>, String)> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("vhdx"))
    {
        vhdx::io::check_file_or_device(path).with_context(|| path.display().to_string())?;
        // Read with pread, not a map: a large disk must not inflate the resident set.
        let file = vhdx::PositionalFile::open(path).with_context(|| path.display().to_string())?;
        let disk = vhdx::Disk::open_with(
            Box::new(file),
            &path.display().to_string(),
            &vhdx::FileSystemResolver,
        )
        .with_context(|| path.display().to_string())?;
        let id = disk.top().metadata.disk_id.to_string();
        Ok((Box::new(disk), id))
    } else {
        let raw = RawSource::open(path).with_context(|| path.display().to_string())?;
        let name = RawSource::default_name(path).with_context(|| path.display().to_string())?;
        Ok((Box::new(raw), name))
    }
}

/// [`open_source`] again, for a cycle after the first: the same disk (`identity`, the default
/// name it had), or an error. A VHDX replaced under the path by another disk (another Virtual
/// Disk ID) would otherwise go on into this disk's replica, its points half one disk and half
/// the other.
fn reopen_source(path: &Path, identity: &str) -> Result<Box<dyn BlockSource>> {
    let (disk, now) = open_source(path)?;
    if now != identity {
        bail!(
            "{} is now another disk (Virtual Disk ID {now}, was {identity}): a replica keeps one \
             disk; replicate the new one under its own --name",
            path.display()
        );
    }
    Ok(disk)
}

/// This server's registration: the vault credentials `drplane register` wrote next to the
/// .pfx (or `--credentials`), which must be the .pfx's. Returns the proxy they were
/// registered with. Without them the server is not registered and nothing replicates.
fn check_registration(
    args: &ReplicateArgs,
    identity: &Identity,
) -> Result<Option<pageblob::http::proxy::ProxyRecord>> {
    let path = match &args.credentials {
        Some(p) => p.clone(),
        None => args.keys.pfx.with_extension("VaultCredentials"),
    };
    let text = match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{}: no vault credentials, so this server is not registered (run `drplane register`, \
             or give --credentials with the file it wrote beside this .pfx)",
            path.display()
        ),
        _ => super::read_input_file(&path, super::MAX_INPUT_FILE_BYTES)?,
    };
    let creds: VaultCredentials = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not vault credentials", path.display()))?;
    creds
        .check_registered_with(identity)
        .with_context(|| path.display().to_string())?;
    Ok(creds.proxy)
}

/// A replication policy file and the flags that override it.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Replication policy (TOML); default: ASR's defaults.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Replication block size in KiB (overrides the policy); fixed for a replica.
    #[arg(long)]
    pub block_size_kib: Option<u32>,
    /// zstd level (overrides the policy).
    #[arg(long, allow_negative_numbers = true)]
    zstd_level: Option<i32>,
    /// Upload threads (overrides the policy).
    #[arg(long)]
    upload_threads: Option<u32>,
}

/// The policy file (or the defaults) with the flags applied, checked against `profile`.
pub fn load_policy(args: &PolicyArgs, profile: Profile) -> Result<Policy> {
    let text = match &args.policy {
        Some(p) => super::read_input_text(p, super::MAX_INPUT_FILE_BYTES)?,
        None => String::new(),
    };
    let policy = Policy::from_toml(&text, profile).with_context(|| match &args.policy {
        Some(p) => p.display().to_string(),
        None => "default policy".into(),
    })?;
    // Flags override the file; validated by the same rules.
    let overrides = PolicyOverrides {
        block_size_kib: args.block_size_kib,
        zstd_level: args.zstd_level,
        upload_threads: args.upload_threads,
    };
    Ok(policy.with_overrides(&overrides)?)
}

/// How the CLI shows cycles: a progress bar while one runs, a line (or JSON) when it ends.
pub struct CycleConsole {
    name: String,
    json: bool,
    disk_size: u64,
    bar: indicatif::ProgressBar,
    what: &'static str,
    /// Show a progress bar while a cycle runs.
    bars: bool,
}

impl CycleConsole {
    fn new(name: &str, json: bool, disk_size: u64) -> CycleConsole {
        CycleConsole {
            name: name.into(),
            json,
            disk_size,
            bar: indicatif::ProgressBar::hidden(),
            what: "",
            bars: true,
        }
    }

    /// A console for one of several disks replicated at once: lines only, no progress bar
    /// (several bars would draw over each other).
    pub fn without_bar(name: &str, json: bool, disk_size: u64) -> CycleConsole {
        CycleConsole {
            bars: false,
            ..CycleConsole::new(name, json, disk_size)
        }
    }

    fn show_progress(&self, p: &Progress) {
        self.bar.set_length(p.bytes_total);
        self.bar.set_position(p.bytes_done);
        if p.bytes_sent > 0 {
            self.bar.set_message(format!(
                "{} (sent {})",
                self.what,
                indicatif::HumanBytes(p.bytes_sent)
            ));
        }
    }

    fn start(&mut self, kind: CycleKind) {
        self.what = match kind {
            CycleKind::Initial => "initial replication",
            CycleKind::Delta => "delta cycle",
            CycleKind::Resync => "resync",
        };
        if self.bars {
            self.bar = bytes_bar(self.disk_size, self.what);
        }
    }

    pub fn print(&self, kind: CycleKind, report: &CycleReport, deleted: &[u64]) -> Result<()> {
        self.bar.finish_and_clear();
        let name = &self.name;
        let ratio = if report.bytes_sent > 0 {
            report.bytes_changed as f64 / report.bytes_sent as f64
        } else {
            0.0
        };
        let rpo = SystemClock
            .now_nanos()
            .saturating_sub(report.point.time_nanos) as f64
            / 1e9;
        let kind = match &report.tracking_lost {
            Some(why) => {
                eprintln!("{name}: change tracking was lost, every block compared: {why}");
                "resync".to_string()
            }
            None => format!("{kind:?}").to_lowercase(),
        };
        if self.json {
            println!(
                "{}",
                serde_json::to_string(&json!({
                    "name": name, "kind": kind, "point": report.point.sequence,
                    "snapshot": report.point.snapshot,
                    "consistency": consistency_name(report.point.consistency),
                    "blocks": report.blocks, "blocks_examined": report.blocks_examined,
                    "blocks_changed": report.blocks_changed, "bytes_read": report.bytes_read,
                    "bytes_changed": report.bytes_changed, "bytes_sent": report.bytes_sent,
                    "compression_ratio": ratio, "seconds": report.seconds,
                    "rpo_seconds": rpo, "table_rebuilt": report.table_rebuilt,
                    "points_deleted": deleted,
                }))?
            );
        } else {
            println!(
                "{name}: {kind} point {} committed ({}, {}): {} of {} blocks changed; read {}, changed {}, sent {} (ratio {ratio:.2}); {:.2} s; RPO {rpo:.1} s{}",
                report.point.sequence,
                report.point.snapshot,
                consistency_name(report.point.consistency),
                report.blocks_changed,
                report.blocks,
                indicatif::HumanBytes(report.bytes_read),
                indicatif::HumanBytes(report.bytes_changed),
                indicatif::HumanBytes(report.bytes_sent),
                report.seconds,
                if deleted.is_empty() {
                    String::new()
                } else {
                    format!("; retention deleted point(s) {deleted:?}")
                }
            );
        }
        Ok(())
    }
}

impl WatchEvents for CycleConsole {
    fn starting(&mut self, plan: &CyclePlan) {
        self.start(plan.kind);
    }

    fn progress(&self, progress: &Progress) {
        self.show_progress(progress);
    }

    fn finished(
        &mut self,
        plan: &CyclePlan,
        result: &std::result::Result<CycleReport, AgentError>,
        finished: &Finished,
    ) {
        self.bar.finish_and_clear();
        let name = &self.name;
        // A retention failure (storage busy) is retried after the next cycle.
        let deleted = match &finished.retention {
            Ok(d) => d.clone(),
            Err(e) => {
                eprintln!("{name}: retention failed, will retry: {e}");
                Vec::new()
            }
        };
        match result {
            Ok(report) => {
                if let Err(e) = self.print(plan.kind, report, &deleted) {
                    eprintln!("{name}: {e:#}");
                }
                for w in &finished.health.warnings {
                    eprintln!("{name}: health warning: {w}");
                }
            }
            Err(datapath::agent::AgentError::Cycle(datapath::cycle::CycleError::Abandoned)) => {
                eprintln!("{name}: cycle abandoned on request, nothing committed")
            }
            Err(e) => eprintln!("{name}: cycle failed, will retry: {e:#}"),
        }
    }
}

/// Waits on the system clock until the deadline or a stop (Ctrl-C, SIGTERM).
pub struct SleepUntilStopped {
    pub stop: Arc<AtomicBool>,
}

impl SleepUntilStopped {
    /// How often a wait looks at the stop flag.
    const TICK: std::time::Duration = std::time::Duration::from_millis(100);
}

impl Pause for SleepUntilStopped {
    fn until(&mut self, deadline_nanos: u64) -> bool {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            let left = deadline_nanos.saturating_sub(SystemClock.now_nanos());
            if left == 0 {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_nanos(left).min(Self::TICK));
        }
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A flag that Ctrl-C or SIGTERM sets: the running cycle is abandoned cleanly (nothing
/// committed, tracking kept) and the command stops. A second signal exits at once.
fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop))?;
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    Ok(stop)
}

fn consistency_name(c: Consistency) -> &'static str {
    match c {
        Consistency::Crash => "crash-consistent",
        Consistency::Application => "app-consistent",
    }
}

/// What every `replicate` does first: Ctrl-C and SIGTERM handled from here on (before it
/// attaches anywhere: a stop asked for once its lock names it is a clean stop); the keys, the
/// registration (and the proxy it names), the replica names checked. Returns the identity,
/// the time the run starts and the stop flag.
pub fn prepare(args: &mut ReplicateArgs) -> Result<(Identity, u64, Arc<AtomicBool>)> {
    let stop = stop_on_signals()?;
    let identity = args.keys.load()?;
    let now = SystemClock.now_nanos();
    // The agent reaches the account through the proxy it was registered with (unless told).
    args.target.recorded_proxy = check_registration(args, &identity)?;
    // A replica name is checked before anything is made (a store, a QEMU bitmap).
    for name in &args.name {
        check_name(name)?;
    }
    match (&args.disk, args.live.node.len(), args.name.len()) {
        (Some(_), _, names) if names > 1 => bail!("--disk replicates one disk: give one --name"),
        (None, nodes, names) if nodes > 0 && nodes != names => bail!(
            "--qemu: give one --name per --node, in the same order ({nodes} nodes, {names} names)"
        ),
        _ => Ok((identity, now, stop)),
    }
}

fn check_name(name: &str) -> Result<()> {
    match replica_name_error(name) {
        Some(why) => Err(anyhow::anyhow!("--name {name:?}: {why}")),
        None => Ok(()),
    }
}

/// Where a run's replicas go: the store, the replication log (premium), and the policy checked
/// against the store's profile.
pub struct Targets {
    pub store: Box<dyn PageBlobStore>,
    pub log_store: Option<Box<dyn PageBlobStore>>,
    pub profile: Profile,
    pub policy: Policy,
}

/// Open the store (and log store) `args` name, and load the policy for its profile. A store
/// directory that is not there yet is made only once the disks (of `disk_sizes` bytes) are
/// known to fit its new replicas: a refused disk leaves nothing behind.
pub fn open_targets(args: &ReplicateArgs, disk_sizes: &[u64]) -> Result<Targets> {
    let asked = match &args.profile {
        Some(p) => Some(
            Profile::parse(p)
                .with_context(|| format!("--profile {p}: standard, premium or premium-spaced"))?,
        ),
        None => None,
    };
    if let Some(log) = args
        .log_store
        .as_deref()
        .filter(|l| args.target.is_store(l))
    {
        bail!(
            "--log-store {log} is the target store itself: the replication log goes to another, \
             standard store"
        );
    }
    if args.target.would_create_store() {
        let policy = load_policy(&args.policy, asked.unwrap_or(Profile::Standard))?;
        for &disk_size in disk_sizes {
            Layout {
                disk_size,
                block_size: policy.block_size,
            }
            .check_fits()?;
        }
    }
    let (store, store_profile) = args.target.open_writer(asked)?;
    let profile = asked.or(store_profile).unwrap_or(Profile::Standard);
    let policy = load_policy(&args.policy, profile)?;
    let log_store = match (&args.log_store, profile) {
        (Some(s), _) => {
            let (log, log_profile) = args
                .target
                .with_store(s)
                .open_writer(Some(Profile::Standard))?;
            if log_profile.is_some_and(|p| p != Profile::Standard) {
                bail!("--log-store {s}: the replication log belongs on a standard store");
            }
            Some(log)
        }
        (None, Profile::Standard) => None,
        (None, _) => {
            bail!("a premium target needs --log-store: a standard store for the replication log")
        }
    };
    Ok(Targets {
        store,
        log_store,
        profile,
        policy,
    })
}

/// Size the pool a replication's cycles read and encode blocks in, before anything uses it:
/// rayon's default (a thread per core) for a disk file; for a live disk (`--qemu`) twice as many
/// threads as cores, as each block read over NBD waits a round trip to QEMU while the other
/// threads compute (1 GiB initial replication from qemu-storage-daemon on the 2-core VM: raw
/// 3.05–3.90 → 2.61–2.96 s, VHDX 3.28–4.24 → 2.43–2.92 s; docs/live-replication.md). The
/// global pool, so the cycles of a machine's disks (each on a thread of its own) use it too.
pub fn size_replication_pool(live: bool) -> Result<()> {
    if !live {
        return Ok(());
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    rayon::ThreadPoolBuilder::new()
        .num_threads(2 * cores)
        .build_global()
        .context("the replication's thread pool")
}

/// `replicate` of one disk (a file, or one QEMU node).
pub fn replicate(mut args: ReplicateArgs) -> Result<ExitCode> {
    let (identity, now, stop) = prepare(&mut args)?;
    let (mut source, disk_size, name): (Box<dyn ChangeSource + '_>, u64, String) =
        match (&args.disk, args.name.first(), args.live.node.first()) {
            (Some(path), name, _) => {
                let (file, default_name) = open_source(path)?;
                let name = name.cloned().unwrap_or_else(|| default_name.clone());
                let size = file.disk_size();
                // Opened again for every cycle: a --watch sees what was written meanwhile.
                let reopen = move || {
                    reopen_source(path, &default_name)
                        .map_err(|e| std::io::Error::other(format!("{e:#}")))
                };
                (Box::new(ReopenedDisk::new(reopen, file)), size, name)
            }
            (None, Some(name), Some(node)) => {
                let (qemu, size) = args.live.attach(node, name)?;
                (Box::new(qemu), size, name.clone())
            }
            _ => bail!("give --disk, or --qemu with --node and --name"),
        };
    check_name(&name).context(
        "the default name (the VHDX's disk ID or the file name) cannot name a replica: give --name",
    )?;
    let Targets {
        store,
        log_store,
        profile,
        policy,
    } = open_targets(&args, &[disk_size])?;
    let mut driver = ReplicationDriver::open(
        AgentTarget {
            snapshot_limit: profile.max_snapshots_per_blob(),
            store: &*store,
            container: REPLICA_CONTAINER,
            name: &name,
            log_store: log_store.as_deref(),
        },
        &identity,
        policy.clone(),
        disk_size,
        source.untrusted(),
        args.policy.block_size_kib.is_some(),
        Box::new(ChaCha8Rng::from_os_rng()),
        now,
    )?;
    // Without a freeze of the disk there is no app consistency, whatever the schedule says.
    let consistency = if args.app_consistent {
        Consistency::Application
    } else {
        Consistency::Crash
    };
    driver.agent_mut().set_stop_flag(Arc::clone(&stop));
    let mut console = CycleConsole::new(&name, args.json, disk_size);
    if !args.watch {
        // One cycle now, whatever the schedule says.
        console.start(driver.machine().phase());
        let kind = driver.machine().phase();
        let (report, retention) =
            driver.run_now(&mut *source, consistency, &SystemClock, &|p| {
                console.show_progress(p)
            })?;
        console.print(kind, &report, &retention?)?;
        source.stop(true)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut stores = vec![&*store];
    stores.extend(log_store.as_deref());
    let mut pause = SleepUntilStopped { stop };
    let end = watch(
        &mut driver,
        &mut *source,
        consistency,
        &SystemClock,
        &stores,
        &mut pause,
        &mut console,
        args.cycles,
    );
    match end {
        WatchEnd::Stopped => eprintln!("{name}: stopped"),
        WatchEnd::CyclesDone => {}
        WatchEnd::TakenOver(why) => {
            source.stop(true)?;
            bail!("{why}");
        }
    }
    source.stop(true)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_opened_again_must_be_the_same_disk() {
        let dir = tempfile::tempdir().unwrap();
        let vhdx = dir.path().join("d.vhdx");
        let mut image = vhdx::testing::ImageBuilder::new(8 << 20);
        std::fs::write(&vhdx, image.build()).unwrap();
        let (_, id) = open_source(&vhdx).unwrap();
        assert!(reopen_source(&vhdx, &id).is_ok());
        // Another disk under the same path: refused, naming both ids.
        image.disk_id = vhdx::Guid([0xD2; 16]);
        std::fs::write(&vhdx, image.build()).unwrap();
        let err = format!("{:#}", reopen_source(&vhdx, &id).err().unwrap());
        let (_, other) = open_source(&vhdx).unwrap();
        assert!(
            err.contains("is now another disk")
                && err.contains(&format!("Virtual Disk ID {other}, was {id}")),
            "{err}"
        );
        // A raw file is known by its path: rewritten, it is still the disk at that path.
        let raw = dir.path().join("d.raw");
        std::fs::write(&raw, vec![1u8; 1 << 20]).unwrap();
        let (_, name) = open_source(&raw).unwrap();
        std::fs::write(&raw, vec![2u8; 1 << 20]).unwrap();
        assert!(reopen_source(&raw, &name).is_ok());
    }
}
