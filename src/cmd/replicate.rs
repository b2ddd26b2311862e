//! `drplane replicate | points | restore`: one cycle of a disk file into a store, the recovery
//! points of a replica, and restoring one byte-exact.

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
use datapath::replica::block_record::BlockCodec;
use datapath::replica::disk_replica::{DiskReplica, Layout};
use datapath::replica::manifest::Consistency;
use datapath::replica::replica_name::replica_name_error;
use datapath::replicator::{CycleKind, CyclePlan};
use datapath::source::{AtRestDisk, ChangeSource};
use pageblob::clock::{Clock, SystemClock};
use pageblob::timestamp::http_date;
use pageblob::{PageBlobStore, Profile};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde_json::json;

use super::blob::Target;
use super::register::pfx_password;
use crate::progress::bytes_bar;

/// Container that holds replicas.
const REPLICA_CONTAINER: &str = "replicas";

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
    fn load(&self) -> Result<Identity> {
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
    live: LiveArgs,
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    keys: Keys,
    /// Vault credentials from `drplane register` (default: VAULT.VaultCredentials next to
    /// the .pfx): this server's registration, required. Their five-day validity bounds
    /// registering, not replicating.
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// Replica name (default: the VHDX Virtual Disk ID, or the file name).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    policy: PolicyArgs,
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
    app_consistent: bool,
    /// Keep replicating on the policy's schedule until interrupted (default: one cycle now).
    #[arg(long, conflicts_with = "once")]
    watch: bool,
    /// One cycle now, then retention, then exit (the default).
    #[arg(long)]
    once: bool,
    /// With --watch: stop after this many cycles.
    #[arg(long, requires = "watch")]
    cycles: Option<u64>,
    /// Print each cycle's report as a line of JSON instead of text.
    #[arg(long)]
    json: bool,
}
/// A live disk in a running QEMU (see docs/live-replication.md).
#[derive(Debug, Args)]
pub struct LiveArgs {
    /// QMP socket of a running QEMU or qemu-storage-daemon: replicate the live disk of
    /// --node, reading only what its dirty bitmaps mark, from a point-in-time fleecing view.
    #[arg(long, conflicts_with = "disk", requires_all = ["node", "name"])]
    qemu: Option<PathBuf>,
    /// With --qemu: the disk's block node (its format node, e.g. `disk0`).
    #[arg(long, requires = "qemu")]
    node: Option<String>,
    /// With --qemu: the unix socket of the NBD server QEMU already runs (`--nbd-server`);
    /// default: one is started beside the QMP socket for each cycle and stopped after it.
    #[arg(long, requires = "qemu")]
    nbd_socket: Option<PathBuf>,
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

impl LiveArgs {
    /// The QEMU source these flags name, with its disk size.
    fn attach(&self, name: &str) -> Result<Option<(QemuSource, u64)>> {
        let (Some(qmp), Some(node)) = (&self.qemu, &self.node) else {
            return Ok(None);
        };
        let mut options = QemuOptions::new(qmp.clone(), node.clone(), name.into());
        options.nbd_socket = self.nbd_socket.clone();
        if let Some(dir) = &self.scratch_dir {
            options.scratch_dir = dir.clone();
        }
        options.persistent_bitmaps = self.persistent_bitmap;
        options.reserve_scratch = !self.no_scratch_reservation;
        let (source, size) = QemuSource::attach(options)
            .with_context(|| format!("QEMU at {} (node {node})", qmp.display()))?;
        Ok(Some((source, size)))
    }
}

#[derive(Debug, Args)]
pub struct PointsArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    keys: Keys,
    /// Replica name (as given to `replicate`).
    #[arg(long)]
    name: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    keys: Keys,
    /// Replica name (as given to `replicate`).
    #[arg(long)]
    name: String,
    /// Point sequence number, `latest`, or `latest-app` (newest app-consistent point).
    #[arg(long, default_value = "latest")]
    point: String,
    /// Output file: sparse raw, or a dynamic VHDX when the name ends in `.vhdx`. Written
    /// beside it and renamed into place only once the point is proven byte-exact. A block
    /// device (with --force) gets the point written whole once it is proven.
    #[arg(short, long)]
    output: PathBuf,
    /// Replace an existing output file, or overwrite a block device.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    threads: super::Threads,
}

/// The suffix of a restore's output while it is written.
const PARTIAL: &str = ".partial";

/// Remove what restores of the same target that were killed left (`PREFIX*.partial` beside
/// it, other than `ours`): a file no live restore holds locked. One a live restore holds (two
/// restores to one target at once) stays; so does anything that cannot be opened.
fn remove_killed_restores(dir: &Path, prefix: &str, ours: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if !name.starts_with(prefix) || !name.ends_with(PARTIAL) || path == ours {
            continue;
        }
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        let unlocked =
            rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok();
        if unlocked && std::fs::remove_file(&path).is_ok() {
            eprintln!(
                "removed {}: a restore that was stopped left it",
                path.display()
            );
        }
    }
}

/// A restore's output while it is written: a temporary file beside the target, published by
/// a rename once the point is proven, and removed if anything fails first.
struct RestoreOutput {
    temp: tempfile::NamedTempFile,
    force: bool,
}

impl RestoreOutput {
    fn prepare(target: &Path, force: bool) -> Result<RestoreOutput> {
        use std::os::unix::fs::PermissionsExt;
        // A new file gets the permissions any new file gets (0666 less the umask), a replaced
        // one keeps its own: a disk restored for a VM that runs as another user stays readable
        // as the user expects (a temporary file's 0600 was kept until session 26).
        let replaced = match std::fs::symlink_metadata(target) {
            Ok(m) if !m.file_type().is_file() => bail!(
                "{}: exists and is not a regular file; restore writes a new file",
                target.display()
            ),
            Ok(_) if !force => bail!("{} exists: give --force to replace it", target.display()),
            Ok(m) => Some(m.permissions()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(anyhow::Error::new(e).context(target.display().to_string())),
        };
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = target
            .file_name()
            .with_context(|| format!("{}: not a file name", target.display()))?;
        let prefix = format!(".{}.", name.to_string_lossy());
        let temp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(PARTIAL)
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(dir)
            .with_context(|| format!("creating a file in {}", dir.display()))?;
        if let Some(permissions) = replaced {
            temp.as_file()
                .set_permissions(permissions)
                .with_context(|| temp.path().display().to_string())?;
        }
        // Locked while this restore lives, so a later one tells its file from a killed one's.
        rustix::fs::flock(
            temp.as_file(),
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .map_err(std::io::Error::from)
        .with_context(|| temp.path().display().to_string())?;
        remove_killed_restores(dir, &prefix, temp.path());
        Ok(RestoreOutput { temp, force })
    }

    /// Make the proven output durable and put it in place.
    fn publish(self, target: &Path) -> Result<()> {
        self.temp
            .as_file()
            .sync_all()
            .with_context(|| self.temp.path().display().to_string())?;
        let persisted = if self.force {
            self.temp.persist(target)
        } else {
            self.temp.persist_noclobber(target)
        };
        persisted
            .map_err(|e| anyhow::Error::new(e.error).context(format!("{}", target.display())))?;
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| dir.display().to_string())?;
        Ok(())
    }
}

/// Whether `path` is (or links to) a block device.
fn is_block_device(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// Restore onto a block device (a replacement disk, a LUN): it is overwritten, so `--force`
/// is required; it is opened exclusively, so a device that is mounted or held open
/// exclusively is refused; it must hold the point's disk. The point is proven first (every
/// block and the Merkle root, nothing written), so a damaged point never replaces what the
/// device holds; then it is written whole — zero blocks as zeros, a device is not sparse —
/// and synced. Bytes past the disk's size are left as they are.
fn restore_to_device(
    args: &RestoreArgs,
    replica: &DiskReplica<'_>,
    codec: &BlockCodec,
    manifest: &datapath::replica::manifest::Manifest,
    digest_key: &[u8; 32],
) -> Result<ExitCode> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let device = args.output.display();
    if !args.force {
        bail!(
            "{device} is a block device: give --force to overwrite it with point {}",
            manifest.sequence
        );
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(&args.output)
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == rustix::io::Errno::BUSY.raw_os_error() => anyhow::anyhow!(
                "{device}: in use (mounted, or held open exclusively): not overwritten"
            ),
            _ => anyhow::Error::new(e).context(format!("opening {device} to write")),
        })?;
    let size = file
        .seek(SeekFrom::End(0))
        .with_context(|| format!("{device}: its size"))?;
    if size < manifest.disk_size {
        bail!(
            "{device} holds {size} bytes, the point's disk {} bytes: not overwritten",
            manifest.disk_size
        );
    }
    let block_size = u64::from(manifest.block_size);
    args.threads.run(|| -> Result<()> {
        replica
            .restore_blocks(codec, manifest, digest_key, |_, _| Ok(()))
            .with_context(|| {
                format!(
                    "proving point {} before writing {device} (nothing was written)",
                    manifest.sequence
                )
            })?;
        replica
            .restore(codec, manifest, digest_key, |block, data| {
                file.write_all_at(data, block * block_size)
            })
            .with_context(|| {
                format!(
                    "writing point {} to {device}: it holds part of the point now; restore again",
                    manifest.sequence
                )
            })?;
        file.sync_all().with_context(|| format!("syncing {device}"))
    })??;
    eprintln!(
        "restored point {} ({}) onto block device {device} ({} of its {size} bytes)",
        manifest.sequence, manifest.snapshot, manifest.disk_size
    );
    Ok(ExitCode::SUCCESS)
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
struct CycleConsole {
    name: String,
    json: bool,
    disk_size: u64,
    bar: indicatif::ProgressBar,
    what: &'static str,
}

impl CycleConsole {
    fn new(name: &str, json: bool, disk_size: u64) -> CycleConsole {
        CycleConsole {
            name: name.into(),
            json,
            disk_size,
            bar: indicatif::ProgressBar::hidden(),
            what: "",
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
        self.bar = bytes_bar(self.disk_size, self.what);
    }

    fn print(&self, kind: CycleKind, report: &CycleReport, deleted: &[u64]) -> Result<()> {
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
struct SleepUntilStopped {
    stop: Arc<AtomicBool>,
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

pub fn replicate(mut args: ReplicateArgs) -> Result<ExitCode> {
    let identity = args.keys.load()?;
    let now = SystemClock.now_nanos();
    // The agent reaches the account through the proxy it was registered with (unless told).
    args.target.recorded_proxy = check_registration(&args, &identity)?;
    // A replica name is checked before anything is made (a store, a QEMU bitmap).
    let check_name = |name: &str| match replica_name_error(name) {
        Some(why) => Err(anyhow::anyhow!("--name {name:?}: {why}")),
        None => Ok(()),
    };
    if let Some(name) = &args.name {
        check_name(name)?;
    }
    let file = match &args.disk {
        Some(disk) => Some(open_source(disk)?),
        None => None,
    };
    let (mut source, disk_size, name): (Box<dyn ChangeSource + '_>, u64, String) =
        match (&file, &args.name) {
            (Some((file, default_name)), _) => {
                let name = args.name.clone().unwrap_or_else(|| default_name.clone());
                (Box::new(AtRestDisk(&**file)), file.disk_size(), name)
            }
            (None, Some(name)) => {
                let (qemu, size) = args.live.attach(name)?.context("--qemu needs --node")?;
                (Box::new(qemu), size, name.clone())
            }
            (None, None) => bail!("give --disk, or --qemu with --node and --name"),
        };
    check_name(&name).context(
        "the default name (the VHDX's disk ID or the file name) cannot name a replica: give --name",
    )?;
    let asked = match &args.profile {
        Some(p) => Some(
            Profile::parse(p)
                .with_context(|| format!("--profile {p}: standard, premium or premium-spaced"))?,
        ),
        None => None,
    };
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
    let stop = stop_on_signals()?;
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

/// The replicas a store holds, for an error that names one it does not: `: it holds a, b`
/// (at most 20 named), `: it holds none`, or nothing when they cannot be listed.
fn replicas_here(store: &dyn PageBlobStore) -> String {
    let Ok(blobs) = store.list_blobs(REPLICA_CONTAINER, false) else {
        return String::new();
    };
    let names: Vec<&str> = blobs
        .iter()
        .filter_map(|b| b.name.strip_suffix(".replica"))
        .collect();
    match names.len() {
        0 => ": it holds none".to_string(),
        n if n <= 20 => format!(": it holds {}", names.join(", ")),
        n => format!(": it holds {n}, among them {}", names[..20].join(", ")),
    }
}

/// A replica's points as a reader sees them: the intact ones, and the journal slots that are
/// damaged (each named on stderr).
struct ReadPoints<'a> {
    store: &'a dyn PageBlobStore,
    name: String,
    keys: datapath::keys::DiskKeys,
    points: Vec<datapath::replica::manifest::Manifest>,
    damaged: usize,
}

impl<'a> ReadPoints<'a> {
    fn open(store: &'a dyn PageBlobStore, identity: &Identity, name: &str) -> Result<Self> {
        let path = pageblob::BlobPath::new(REPLICA_CONTAINER, &format!("{name}.replica"));
        let size = match store.properties(&path, None) {
            Ok(p) => p.size,
            Err(e) if e.code().is_some_and(|c| c.status() == 404) => {
                bail!(
                    "no replica named {name} in this store{}",
                    replicas_here(store)
                )
            }
            Err(e) => return Err(e.into()),
        };
        // The block size is in every manifest; open with a provisional layout to read them.
        let provisional = DiskReplica::open_existing(
            store,
            REPLICA_CONTAINER,
            name,
            Layout {
                disk_size: size,
                block_size: 4096,
            },
        )?;
        let keys = identity.disk_keys(name);
        let (points, damaged) = provisional.points_and_damage(keys.digest.expose())?;
        let other = datapath::replica::disk_replica::written_with_other_certificate(
            &points,
            &damaged,
            &identity.key_id.0,
        );
        if let Some(found) = other {
            bail!(
                "replica {name} was written with certificate {}; the .pfx given is {}",
                datapath::keys::KeyId(found),
                identity.key_id
            );
        }
        if points.is_empty() && !damaged.is_empty() {
            // Nothing authenticates: most likely the wrong certificate, not damage everywhere.
            bail!(
                "replica {name}: none of its {} point(s) can be read with this .pfx: {}",
                damaged.len(),
                damaged[0].error
            );
        }
        for d in &damaged {
            eprintln!(
                "replica {name}: journal slot {} is damaged, its point cannot be used: {}",
                d.slot, d.error
            );
        }
        Ok(ReadPoints {
            store,
            name: name.to_string(),
            keys,
            points,
            damaged: damaged.len(),
        })
    }

    /// The replica laid out as `manifest` says.
    fn replica(&self, manifest: &datapath::replica::manifest::Manifest) -> Result<DiskReplica<'a>> {
        let layout = Layout {
            disk_size: manifest.disk_size,
            block_size: manifest.block_size,
        };
        Ok(DiskReplica::open_existing(
            self.store,
            REPLICA_CONTAINER,
            &self.name,
            layout,
        )?)
    }
}

pub fn points(args: PointsArgs) -> Result<ExitCode> {
    let identity = args.keys.load()?;
    let store = args.target.open_reader()?;
    let read = ReadPoints::open(&*store, &identity, &args.name)?;
    let points = &read.points;
    if args.json {
        let v: Vec<_> = points
            .iter()
            .map(|p| json!({"point": p.sequence, "time": http_date(p.time_nanos), "snapshot": p.snapshot, "consistency": format!("{:?}", p.consistency).to_lowercase(), "disk_size": p.disk_size}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for p in points {
            println!(
                "{:>4}  {}  {}  {:?}",
                p.sequence,
                http_date(p.time_nanos),
                p.snapshot,
                p.consistency
            );
        }
    }
    Ok(if read.damaged == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    keys: Keys,
    /// Replica name (as given to `replicate`).
    #[arg(long)]
    name: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    threads: super::Threads,
}

/// Check that every point decrypts, decompresses and matches its Merkle root. Success only
/// when there is at least one point and nothing at all is damaged.
pub fn verify(args: VerifyArgs) -> Result<ExitCode> {
    let identity = args.keys.load()?;
    let store = args.target.open_reader()?;
    let read = ReadPoints::open(&*store, &identity, &args.name)?;
    if read.points.is_empty() {
        bail!("replica {}: no recovery point to verify", args.name);
    }
    let codec = BlockCodec::new(&read.keys, 1, true);
    let mut results = Vec::new();
    let mut bad = read.damaged;
    // One pool for all the points.
    args.threads.run(|| -> Result<()> {
        for manifest in &read.points {
            let replica = read.replica(manifest)?;
            let outcome =
                replica.restore_blocks(&codec, manifest, read.keys.digest.expose(), |_, _| Ok(()));
            if outcome.is_err() {
                bad += 1;
            }
            results.push((manifest.sequence, outcome.err().map(|e| e.to_string())));
        }
        Ok(())
    })??;
    if args.json {
        let v: Vec<_> = results
            .iter()
            .map(|(p, e)| json!({"point": p, "ok": e.is_none(), "error": e}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (p, e) in &results {
            match e {
                None => println!("point {p}: ok"),
                Some(e) => println!("point {p}: {e}"),
            }
        }
        println!(
            "{} point(s) verified, {bad} failed",
            results.len() + read.damaged
        );
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn restore(args: RestoreArgs) -> Result<ExitCode> {
    let identity = args.keys.load()?;
    let store = args.target.open_reader()?;
    let read = ReadPoints::open(&*store, &identity, &args.name)?;
    let points = &read.points;
    let keys = &read.keys;
    let manifest = match args.point.as_str() {
        "latest" => points
            .last()
            .context("the replica has no recovery point")?
            .clone(),
        "latest-app" => points
            .iter()
            .rev()
            .find(|p| p.consistency == Consistency::Application)
            .context("the replica has no app-consistent recovery point")?
            .clone(),
        n => {
            let seq: u64 = n
                .parse()
                .with_context(|| format!("--point {n}: a number, latest or latest-app"))?;
            points
                .iter()
                .find(|p| p.sequence == seq)
                .with_context(|| {
                    let held: Vec<String> = points.iter().map(|p| p.sequence.to_string()).collect();
                    let held = match held.as_slice() {
                        [] => "none".to_string(),
                        [first, .., last] if held.len() > 12 => {
                            format!("{} points, {first} to {last}", held.len())
                        }
                        all => all.join(", "),
                    };
                    format!(
                        "no point {seq}: the replica holds {held} (`drplane points` lists them)"
                    )
                })?
                .clone()
        }
    };
    let replica = read.replica(&manifest)?;
    let codec = BlockCodec::new(keys, 1, true);
    if is_block_device(&args.output) {
        return restore_to_device(&args, &replica, &codec, &manifest, keys.digest.expose());
    }
    let output = RestoreOutput::prepare(&args.output, args.force)?;
    let as_vhdx = args
        .output
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("vhdx"));
    let write_error = |e| -> anyhow::Error {
        anyhow::Error::new(e).context(format!(
            "restoring to {} (nothing was written there)",
            args.output.display()
        ))
    };
    // Only non-zero blocks are written: zeros stay holes (raw) or unallocated blocks (VHDX).
    let block_size = u64::from(manifest.block_size);
    let restore_into = |write: &mut dyn FnMut(u64, &[u8]) -> std::io::Result<()>| {
        replica
            .restore_blocks(
                &codec,
                &manifest,
                keys.digest.expose(),
                |block, data| match data {
                    Some(data) if !pageblob::is_zero(data) => write(block * block_size, data),
                    _ => Ok(()),
                },
            )
            .map_err(write_error)
    };
    // Blocks are decoded by the pool; the output is written in block order.
    args.threads.run(|| -> Result<()> {
        if as_vhdx {
            let options = vhdx::CreateOptions::dynamic(manifest.disk_size.next_multiple_of(512));
            let file = vhdx::ReadWriteFile::open(output.temp.path())
                .with_context(|| output.temp.path().display().to_string())?;
            let mut writer =
                vhdx::VhdxWriter::create(file, &options, Box::new(ChaCha8Rng::from_os_rng()))
                    .with_context(|| args.output.display().to_string())?;
            writer.set_bulk(true);
            restore_into(&mut |at, data| writer.write_at(at, data).map_err(std::io::Error::other))?;
            writer
                .flush()
                .and_then(|()| writer.close())
                .with_context(|| args.output.display().to_string())?;
        } else {
            let file = output.temp.as_file();
            restore_into(&mut |at, data| std::os::unix::fs::FileExt::write_all_at(file, data, at))?;
            file.set_len(manifest.disk_size)
                .with_context(|| output.temp.path().display().to_string())?;
        }
        Ok(())
    })??;
    // Every block and the Merkle root are proven: only now does the output appear.
    output.publish(&args.output)?;
    eprintln!(
        "restored point {} ({}) to {}",
        manifest.sequence,
        manifest.snapshot,
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
