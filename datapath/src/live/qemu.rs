//! [`QemuSource`]: a disk a running QEMU (or `qemu-storage-daemon`) hosts, as a
//! [`ChangeSource`]. QEMU tracks the guest's writes in dirty bitmaps; each cycle freezes the
//! disk in one QMP `transaction` — a new bitmap starts recording, the old one stops, and a
//! `blockdev-backup sync=none` job puts a copy-before-write filter over the disk — then exports
//! a `snapshot-access` view of the frozen disk read-only over NBD with the old bitmap. The cycle
//! reads only what that bitmap marks dirty. Thawing drops the view and the old bitmap when the
//! point committed, or merges the old bitmap back when it did not, so no write is ever lost.
//!
//! Bitmaps are named `drplane.TAG.SEQ-tTIME`: the writes since the freeze of committed point SEQ
//! (its time TIME) of the replica TAG names; `drplane.TAG.SEQ` while its cycle is in flight. A
//! bitmap is a cycle's base only when it belongs to the replica's newest point, sequence and
//! time (another store's replica of the same disk and name has points of the same numbers);
//! anything else (QEMU restarted, a persistent bitmap left inconsistent, a killed resync,
//! another replica's bitmaps) means the history is gone, and the cycle compares every block (a
//! resync that keeps the points).
//! A run killed mid-cycle leaves the old bitmap disabled and the new one recording: the next
//! freeze merges them, so it reads a superset of the changes and never resyncs.
//!
//! QEMU serves one QMP client at a time, so the monitor is held only while a cycle freezes,
//! reads and thaws; between cycles (a `--watch` waiting) it is free for libvirt or an operator.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;

use super::nbd::{NbdClient, NbdError, BASE_ALLOCATION, STATE_DIRTY, STATE_ZERO};
use super::qmp::{
    Action, BitmapAdd, BitmapMerge, BitmapRef, BlockdevBackup, DirtyBitmap, Qmp, QmpError,
};
use super::scratch::{create_fleecing_file, lock_replica};
use crate::cycle::BlockSource;
use crate::source::{ChangeSource, Changes, PointRef, SourceError};

/// The QEMU names of one replica's cycle: its fleecing target, copy-before-write filter,
/// frozen view, job and export. Each replica has its own (`dp` and a digest of its tag: node
/// names are at most 31 characters), so cycles of different disks of one QEMU never touch
/// each other's, and a run clears only its own replica's leftovers.
#[derive(Debug, Clone)]
struct CycleNames {
    temp: String,
    filter: String,
    view: String,
    job: String,
    export: String,
}

impl CycleNames {
    /// The names every replica's cycle used until session 25 (one set per QEMU). A run of such
    /// a version that was killed mid-cycle left them in QEMU: its copy-before-write filter
    /// still copies every guest write into its fleecing file, which grows until the scratch
    /// directory is full and the guest's writes fail.
    fn legacy() -> CycleNames {
        CycleNames {
            temp: "drplane-fleece-temp".into(),
            filter: "drplane-fleece-cbw".into(),
            view: "drplane-fleece-view".into(),
            job: "drplane-fleece-job".into(),
            export: "drplane-fleece".into(),
        }
    }

    fn of(tag: &str) -> CycleNames {
        let digest = blake3::hash(tag.as_bytes()).to_hex();
        let id = format!("dp{}", &digest[..12]);
        CycleNames {
            temp: format!("{id}-temp"),
            filter: format!("{id}-cbw"),
            view: format!("{id}-view"),
            job: format!("{id}-job"),
            export: id,
        }
    }
}

/// How to reach the disk.
#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// QEMU's QMP monitor socket.
    pub qmp_socket: PathBuf,
    /// The disk's block node (its format node: `vhdx`, `qcow2`, `raw`).
    pub node: String,
    /// The unix socket of an NBD server QEMU already runs (`--nbd-server`); `None`: a server
    /// is started on `scratch_dir/drplane-TAG.nbd` for each cycle and stopped after it.
    pub nbd_socket: Option<PathBuf>,
    /// Where the fleecing file (old data the guest overwrites during a cycle) goes; QEMU must
    /// be able to create and write files there.
    pub scratch_dir: PathBuf,
    /// Names this replica's bitmaps (the replica name).
    pub tag: String,
    /// Reserve the disk's size for each cycle's fleecing file before freezing (the default):
    /// a full scratch directory then refuses the cycle instead of failing the guest's writes
    /// (the scratch directory's files: `live/scratch.rs`).
    pub reserve_scratch: bool,
    /// Ask QEMU to keep the bitmaps in the image (qcow2 only): they survive a QEMU restart.
    pub persistent_bitmaps: bool,
    /// Bytes per dirty bit.
    pub granularity: u32,
    /// How long a QMP or NBD reply may take.
    pub timeout: Duration,
}

impl QemuOptions {
    /// Options with the defaults: 64 KiB granularity, a 2-minute timeout, the scratch files
    /// beside the QMP socket, the fleecing file's space reserved.
    pub fn new(qmp_socket: PathBuf, node: String, tag: String) -> QemuOptions {
        let scratch_dir = qmp_socket
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        QemuOptions {
            qmp_socket,
            node,
            nbd_socket: None,
            scratch_dir,
            tag,
            reserve_scratch: true,
            persistent_bitmaps: false,
            granularity: 64 << 10,
            timeout: Duration::from_secs(120),
        }
    }

    /// The bitmap recording since the freeze of the cycle that is to make point `sequence`
    /// (until that point commits).
    fn bitmap(&self, sequence: u64) -> String {
        format!("{}{sequence}", self.bitmap_prefix())
    }

    /// The bitmap recording since the freeze of committed `point`: named by its time as well,
    /// so another replica of the same disk and name (another store) never takes it for its
    /// own point of the same sequence.
    fn committed_bitmap(&self, point: PointRef) -> String {
        format!(
            "{}{}-t{}",
            self.bitmap_prefix(),
            point.sequence,
            point.time_nanos
        )
    }

    fn bitmap_prefix(&self) -> String {
        format!("drplane.{}.", self.tag)
    }

    fn temp_file(&self) -> PathBuf {
        self.scratch_dir
            .join(format!("drplane-{}.fleece", self.tag))
    }

    fn own_nbd_socket(&self) -> PathBuf {
        self.scratch_dir.join(format!("drplane-{}.nbd", self.tag))
    }

    /// Locked by the run attached to this replica's disk (it holds the run's PID): beside the
    /// QMP socket, where every run and `disable` of this QEMU and replica look whatever
    /// scratch directory each was given (in the scratch directory two runs given two could
    /// both attach, each clearing the other's view as a killed run's leftovers); in the
    /// scratch directory only when the socket's folder cannot be written.
    fn lock_file(&self) -> PathBuf {
        let name = format!("drplane-{}.lock", self.tag);
        let beside_socket = self
            .qmp_socket
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if rustix::fs::access(beside_socket, rustix::fs::Access::WRITE_OK).is_ok() {
            beside_socket.join(name)
        } else {
            self.scratch_dir.join(name)
        }
    }
}

/// One of this replica's bitmaps on the node.
#[derive(Debug)]
struct OurBitmap {
    /// The point it belongs to: the cycle that makes it (in flight), or the committed one.
    sequence: u64,
    /// The committed point's time; `None` while its cycle is in flight.
    committed: Option<u64>,
    bitmap: DirtyBitmap,
}

/// `SEQ` (in flight) or `SEQ-tTIME` (committed), after `drplane.TAG.`; anything else is not
/// this replica's (another tag that starts with this one has a `.` after it).
fn parse_our_bitmap(rest: &str) -> Option<(u64, Option<u64>)> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match rest.split_once("-t") {
        None if digits(rest) => Some((rest.parse().ok()?, None)),
        Some((seq, time)) if digits(seq) && digits(time) => {
            Some((seq.parse().ok()?, Some(time.parse().ok()?)))
        }
        _ => None,
    }
}

/// The frozen view: the fleecing export, read over a pool of NBD connections (the cycle reads
/// from all cores).
pub struct NbdView {
    socket: PathBuf,
    /// The export's name.
    export: String,
    size: u64,
    timeout: Duration,
    idle: Mutex<Vec<NbdClient<UnixStream>>>,
}

impl std::fmt::Debug for NbdView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NbdView({}, {} bytes)", self.socket.display(), self.size)
    }
}

impl BlockSource for NbdView {
    fn disk_size(&self) -> u64 {
        self.size
    }

    fn is_unallocated(&self, _offset: u64, _len: u64) -> bool {
        false
    }

    /// The ranges the export's `base:allocation` context does not report as reading zeros
    /// (a scan then reads only those; the NBD spec makes the zero flag the server's promise).
    /// `None` — every block read — when the server cannot say.
    fn data_ranges(&self) -> Option<Vec<(u64, u64)>> {
        let mut client =
            NbdClient::connect_unix(&self.socket, &self.export, &[BASE_ALLOCATION], self.timeout)
                .ok()?;
        let ranges = client
            .ranges_where(BASE_ALLOCATION, 0, self.size, |f| f & STATE_ZERO == 0)
            .ok()?;
        let _ = client.disconnect();
        Some(ranges.into_iter().map(|(at, len)| (at, at + len)).collect())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let pooled = self.idle.lock().expect("pool").pop();
        let mut client = match pooled {
            Some(c) => c,
            None => NbdClient::connect_unix(&self.socket, &self.export, &[], self.timeout)
                .map_err(std::io::Error::other)?,
        };
        // A connection that failed is dropped: the next read opens a fresh one.
        client.read(offset, buf).map_err(std::io::Error::other)?;
        self.idle.lock().expect("pool").push(client);
        Ok(())
    }
}

/// A cycle in progress.
#[derive(Debug)]
struct Frozen {
    /// The bitmap the cycle's changes came from (disabled since the freeze).
    base: Option<String>,
    /// The bitmap recording since the freeze.
    fresh: String,
    view: NbdView,
    /// The NBD server was started for this cycle.
    own_server: bool,
}

/// A live disk in QEMU as a change source.
#[derive(Debug)]
pub struct QemuSource {
    qmp: Option<Qmp>,
    options: QemuOptions,
    /// This replica's QEMU names (from `options.tag`).
    names: CycleNames,
    /// Held while attached ([`QemuOptions::lock_file`]): one run per replica and QEMU.
    _lock: std::fs::File,
    /// Where that lock file is.
    lock_path: PathBuf,
    frozen: Option<Frozen>,
    /// A group's freeze of this disk, waiting for the agent's [`ChangeSource::freeze`]: the
    /// last point it was made for, and the changes.
    joint: Option<(Option<PointRef>, Changes)>,
}

/// A freeze prepared for one disk ([`QemuSource::prepare_freeze`]).
#[derive(Debug)]
pub(super) struct PreparedFreeze {
    last_point: Option<PointRef>,
    base: Option<String>,
    fresh: String,
    size: u64,
    /// This disk's part of the freeze transaction.
    pub(super) actions: Vec<Action>,
}

impl PreparedFreeze {
    /// The replica's last point the freeze was made for.
    pub(super) fn last_point(&self) -> Option<PointRef> {
        self.last_point
    }
}

impl QemuSource {
    /// Attach to QEMU: connect to its monitor, check the node, and clear what a killed run
    /// left (its fleecing view, job and export). Returns the source and the disk's size.
    pub fn attach(options: QemuOptions) -> Result<(QemuSource, u64), SourceError> {
        let lock_path = options.lock_file();
        let lock = lock_replica(&lock_path, &options.tag)?;
        let mut source = QemuSource {
            qmp: None,
            names: CycleNames::of(&options.tag),
            _lock: lock,
            lock_path,
            options,
            frozen: None,
            joint: None,
        };
        let attached = (|| {
            let size = source.node_size()?;
            source.clear_nodes(&CycleNames::legacy())?;
            source.clear_leftovers()?;
            Ok(size)
        })();
        // QEMU serves one monitor client at a time: others may use it between freezes and
        // thaws (a run holds it only for those, never while a cycle reads).
        source.qmp = None;
        match attached {
            Ok(size) => Ok((source, size)),
            Err(e) => {
                // Nothing of this run stays behind (a mistyped QMP socket in `/` left its
                // lock file there); removed while still held (see `lock_replica`).
                let _ = std::fs::remove_file(&source.lock_path);
                Err(e)
            }
        }
    }

    /// Stop tracking this disk for good (ASR's "disable replication"): remove every bitmap of
    /// this replica from the node (persistent ones leave the image too), after
    /// [`QemuSource::attach`] cleared what a killed run left; then the lock file goes. The
    /// replica's points are not touched; replicating again starts with a resync. Returns the
    /// names of the bitmaps removed.
    pub fn disable(mut self) -> Result<Vec<String>, SourceError> {
        let names: Vec<String> = self
            .our_bitmaps()?
            .into_iter()
            .map(|o| o.bitmap.name)
            .collect();
        for name in &names {
            self.remove_bitmap(name)?;
        }
        self.qmp = None;
        // Removed while still held, so no run finds it half-gone.
        let _ = std::fs::remove_file(&self.lock_path);
        Ok(names)
    }

    fn qmp(&mut self) -> Result<&mut Qmp, SourceError> {
        if self.qmp.is_none() {
            let socket = &self.options.qmp_socket;
            let qmp = Qmp::connect(socket, self.options.timeout)
                .map_err(|e| SourceError::live(format!("QMP monitor {}", socket.display()), e))?;
            self.qmp = Some(qmp);
        }
        Ok(self.qmp.as_mut().expect("connected"))
    }

    /// Run a QMP step; a broken monitor connection is dropped, so the next step reconnects
    /// (QEMU restarted).
    fn step<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut Qmp) -> Result<T, QmpError>,
    ) -> Result<T, SourceError> {
        let result = f(self.qmp()?);
        if let Err(QmpError::Io(_) | QmpError::Protocol(_)) = &result {
            self.qmp = None;
        }
        result.map_err(|e| SourceError::live(what, e))
    }

    /// The node's bitmaps and size.
    fn node_state(&mut self) -> Result<(Vec<DirtyBitmap>, u64), SourceError> {
        let node = self.options.node.clone();
        let nodes = self.step("query-named-block-nodes", Qmp::named_nodes)?;
        let found =
            nodes
                .iter()
                .find(|n| n.node_name == node)
                .ok_or_else(|| SourceError::Live {
                    what: format!("block node {node}"),
                    source: "QEMU has no node of that name (query-named-block-nodes)".into(),
                })?;
        if let Some(why) = found.not_the_guests_disk(&nodes) {
            return Err(SourceError::Live {
                what: format!("block node {node}"),
                source: why.into(),
            });
        }
        Ok((found.dirty_bitmaps.clone(), found.image.virtual_size))
    }

    fn node_size(&mut self) -> Result<u64, SourceError> {
        Ok(self.node_state()?.1)
    }

    /// Our bitmaps on the node: (point sequence, bitmap).
    fn our_bitmaps(&mut self) -> Result<Vec<OurBitmap>, SourceError> {
        let prefix = self.options.bitmap_prefix();
        let mut ours: Vec<OurBitmap> = self
            .node_state()?
            .0
            .into_iter()
            .filter_map(|b| {
                let (sequence, committed) = parse_our_bitmap(b.name.strip_prefix(&prefix)?)?;
                Some(OurBitmap {
                    sequence,
                    committed,
                    bitmap: b,
                })
            })
            .collect();
        ours.sort_by_key(|o| o.sequence);
        Ok(ours)
    }

    fn remove_bitmap(&mut self, name: &str) -> Result<(), SourceError> {
        let node = self.options.node.clone();
        self.step(&format!("removing dirty bitmap {name}"), |q| {
            q.execute(
                "block-dirty-bitmap-remove",
                BitmapRef {
                    node,
                    name: name.into(),
                },
            )
            .map(drop)
        })
    }

    /// `others` merged into `target`, which records from now on; then they are removed.
    fn merge_into(&mut self, target: &str, others: &[String]) -> Result<(), SourceError> {
        if others.is_empty() {
            return Ok(());
        }
        let node = self.options.node.clone();
        let actions = [
            Action::BlockDirtyBitmapEnable(BitmapRef {
                node: node.clone(),
                name: target.into(),
            }),
            Action::BlockDirtyBitmapMerge(BitmapMerge {
                node,
                target: target.into(),
                bitmaps: others.to_vec(),
            }),
        ];
        self.step(&format!("merging {others:?} into {target}"), |q| {
            q.transaction(&actions)
        })?;
        for other in others {
            self.remove_bitmap(other)?;
        }
        Ok(())
    }

    /// Remove what a killed run left of a cycle: export, view, job, temp node and file, and
    /// the NBD server it started. Things that are not there are fine.
    fn clear_leftovers(&mut self) -> Result<(), SourceError> {
        let n = self.names.clone();
        self.clear_nodes(&n)?;
        if self.options.nbd_socket.is_none() && self.options.own_nbd_socket().exists() {
            // Our own server, left running by a killed run.
            let _ = self.qmp()?.execute("nbd-server-stop", json!({}));
            let _ = std::fs::remove_file(self.options.own_nbd_socket());
        }
        let _ = std::fs::remove_file(self.options.temp_file());
        if let Some(q) = &mut self.qmp {
            q.clear_events();
        }
        Ok(())
    }

    /// Remove a cycle's export, view, job and temp node named `n` from QEMU, where they are.
    fn clear_nodes(&mut self, n: &CycleNames) -> Result<(), SourceError> {
        let qmp = self.qmp()?;
        let deleted = qmp.execute("block-export-del", json!({"id": n.export, "mode": "hard"}));
        if deleted.is_ok() {
            let _ = qmp.wait_event("BLOCK_EXPORT_DELETED", |d| d["id"] == n.export.as_str());
        }
        let _ = qmp.execute("blockdev-del", json!({"node-name": n.view}));
        if qmp
            .execute("block-job-cancel", json!({"device": n.job, "force": true}))
            .is_ok()
        {
            let _ = qmp.wait_event("BLOCK_JOB_CANCELLED", |d| d["device"] == n.job.as_str());
        }
        let _ = qmp.execute("blockdev-del", json!({"node-name": n.temp}));
        Ok(())
    }

    /// Settle the bitmaps before a freeze: the base is the bitmap of `last_point` (its
    /// sequence and time), with every later one merged into it (freezes whose cycle never
    /// committed: a killed run); the rest are removed. No base (QEMU restarted, a bitmap lost or
    /// inconsistent, or the bitmaps are another replica's): all are removed and the cycle
    /// compares every block.
    fn settle_bitmaps(
        &mut self,
        last_point: Option<PointRef>,
    ) -> Result<Option<String>, SourceError> {
        let ours = self.our_bitmaps()?;
        // A base that stopped recording is sound only while a later bitmap holds what it
        // missed (a killed cycle); alone, writes went unrecorded.
        let usable = |o: &OurBitmap| {
            let b = &o.bitmap;
            !b.inconsistent
                && !b.busy
                && (b.recording || ours.iter().any(|k| k.sequence > o.sequence))
        };
        let base = last_point.and_then(|last| {
            ours.iter()
                .find(|o| {
                    o.sequence == last.sequence && o.committed == Some(last.time_nanos) && usable(o)
                })
                .map(|o| o.bitmap.name.clone())
        });
        let Some(base) = base else {
            for o in &ours {
                self.remove_bitmap(&o.bitmap.name)?;
            }
            return Ok(None);
        };
        let last = last_point.expect("a base has a point").sequence;
        // Later ones only add changes (a superset is sound); the others are older bases, or
        // another replica's.
        let later: Vec<String> = ours
            .iter()
            .filter(|o| o.sequence > last)
            .map(|o| o.bitmap.name.clone())
            .collect();
        self.merge_into(&base, &later)?;
        for o in ours
            .iter()
            .filter(|o| o.sequence <= last && o.bitmap.name != base)
        {
            self.remove_bitmap(&o.bitmap.name)?;
        }
        Ok(Some(base))
    }

    /// Prepare a freeze for the cycle after `last_point`: a killed cycle's view is dropped, the
    /// bitmaps settled, the fleecing file made and added as a node. Returns the transaction's
    /// actions for this disk (rotate the bitmaps, start the fleecing job), which
    /// [`QemuSource::freeze`] runs alone and a [`super::group::QemuGroup`] runs with its other
    /// disks' in one transaction.
    pub(super) fn prepare_freeze(
        &mut self,
        last_point: Option<PointRef>,
    ) -> Result<PreparedFreeze, SourceError> {
        if self.frozen.is_some() {
            self.thaw(None)?;
        }
        self.joint = None;
        self.clear_leftovers()?;
        let base = self.settle_bitmaps(last_point)?;
        let fresh = self
            .options
            .bitmap(last_point.map_or(0, |l| l.sequence + 1));
        let size = self.node_size()?;
        let o = self.options.clone();
        let n = self.names.clone();
        let temp = o.temp_file();
        create_fleecing_file(&temp, size, o.reserve_scratch)?;
        self.step("adding the fleecing target", |q| {
            q.execute(
                "blockdev-add",
                json!({"driver": "file", "node-name": n.temp, "filename": temp}),
            )
        })
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&temp);
        })?;
        let mut actions = vec![Action::BlockDirtyBitmapAdd(BitmapAdd {
            node: o.node.clone(),
            name: fresh.clone(),
            granularity: o.granularity,
            persistent: o.persistent_bitmaps,
        })];
        if let Some(base) = &base {
            actions.push(Action::BlockDirtyBitmapDisable(BitmapRef {
                node: o.node.clone(),
                name: base.clone(),
            }));
        }
        actions.push(Action::BlockdevBackup(BlockdevBackup {
            job_id: n.job.clone(),
            device: o.node.clone(),
            target: n.temp.clone(),
            sync: "none".into(),
            filter_node_name: n.filter.clone(),
        }));
        Ok(PreparedFreeze {
            last_point,
            base,
            fresh,
            size,
            actions,
        })
    }

    /// Run `actions` (one or several disks' freezes) in one QMP transaction: all or nothing.
    pub(super) fn freeze_transaction(&mut self, actions: &[Action]) -> Result<(), SourceError> {
        self.step("freezing the disk (transaction)", |q| {
            q.transaction(actions)
        })
    }

    /// After the transaction: the frozen view on NBD, and the changes its base bitmap lists.
    /// On failure this disk's freeze is undone (its changes stay for the next cycle).
    pub(super) fn complete_freeze(
        &mut self,
        prepared: &PreparedFreeze,
    ) -> Result<Changes, SourceError> {
        let (view, own_server) = match self.export_view(prepared.base.as_deref(), prepared.size) {
            Ok(v) => v,
            Err(e) => {
                self.undo_freeze(prepared);
                return Err(e);
            }
        };
        let frozen = Frozen {
            base: prepared.base.clone(),
            fresh: prepared.fresh.clone(),
            view,
            own_server,
        };
        let changes = match (&prepared.base, prepared.last_point) {
            (Some(b), _) => match self.dirty_ranges(&frozen.view, b) {
                Ok(ranges) => Changes::Ranges(ranges),
                Err(e) => {
                    self.frozen = Some(frozen);
                    let _ = self.thaw(None);
                    return Err(SourceError::live(format!("reading dirty bitmap {b}"), e));
                }
            },
            (None, None) => Changes::Unknown,
            (None, Some(last)) => Changes::Lost(format!(
                "QEMU has no dirty bitmap {} for point {} (QEMU restarted, the bitmap was lost \
                 or left inconsistent, replication was disabled (`drplane disable`), or another \
                 replica of this disk under the same name replaced it)",
                self.options.committed_bitmap(last),
                last.sequence
            )),
        };
        self.frozen = Some(frozen);
        Ok(changes)
    }

    /// Undo whatever part of a prepared freeze happened; the changes stay in the base bitmap
    /// (the fresh one, if the transaction ran, is merged back).
    pub(super) fn undo_freeze(&mut self, prepared: &PreparedFreeze) {
        let _ = self.clear_leftovers();
        let fresh = &prepared.fresh;
        let names: Vec<String> = self
            .our_bitmaps()
            .map(|v| v.into_iter().map(|o| o.bitmap.name).collect())
            .unwrap_or_default();
        if names.contains(fresh) {
            match &prepared.base {
                Some(b) => {
                    let _ = self.merge_into(b, std::slice::from_ref(fresh));
                }
                None => {
                    let _ = self.remove_bitmap(fresh);
                }
            }
        }
        self.release_monitor();
    }

    /// Let go of the QMP monitor: QEMU serves one client at a time, and others (another disk's
    /// run, libvirt, an operator) may use it while a cycle reads.
    pub(super) fn release_monitor(&mut self) {
        self.qmp = None;
    }

    /// The NBD server's socket this disk's views are exported on, when QEMU runs one already
    /// (`--nbd-socket`); `None`: a server is started for each cycle.
    pub(super) fn nbd_socket(&self) -> Option<&Path> {
        self.options.nbd_socket.as_deref()
    }

    /// Export this disk's views on the server at `socket` (a group's, started for its cycles).
    pub(super) fn share_nbd_server(&mut self, socket: PathBuf) {
        self.options.nbd_socket = Some(socket);
    }

    /// Where this disk's own NBD server would listen.
    pub(super) fn own_nbd_socket(&self) -> PathBuf {
        self.options.own_nbd_socket()
    }

    /// Start QEMU's NBD server on `socket` (`Some`), or stop the one running (`None`, and its
    /// socket file `stale` removed).
    pub(super) fn nbd_server(
        &mut self,
        socket: Option<&Path>,
        stale: &Path,
    ) -> Result<(), SourceError> {
        match socket {
            Some(s) => self.step(
                "starting an NBD server for the machine's disks (if QEMU already runs one, give \
                 its socket with --nbd-socket)",
                |q| {
                    q.execute(
                        "nbd-server-start",
                        json!({"addr": {"type": "unix", "data": {"path": s}}}),
                    )
                    .map(drop)
                },
            ),
            None => {
                let stopped = self.step("stopping the NBD server", |q| {
                    q.execute("nbd-server-stop", json!({})).map(drop)
                });
                let _ = std::fs::remove_file(stale);
                stopped
            }
        }
    }

    /// A freeze a group made for this disk: the agent's [`ChangeSource::freeze`] takes it.
    pub(super) fn set_joint(&mut self, last_point: Option<PointRef>, changes: Changes) {
        self.joint = Some((last_point, changes));
    }

    /// The frozen view (made by the freeze transaction's job) on NBD, read-only, with the base
    /// bitmap.
    fn export_view(
        &mut self,
        base: Option<&str>,
        size: u64,
    ) -> Result<(NbdView, bool), SourceError> {
        let o = self.options.clone();
        let n = self.names.clone();
        self.step("adding the frozen view", |q| {
            q.execute(
                "blockdev-add",
                json!({"driver": "snapshot-access", "node-name": n.view, "file": n.filter}),
            )
        })?;
        let (socket, own_server) = match &o.nbd_socket {
            Some(s) => (s.clone(), false),
            None => {
                let s = o.own_nbd_socket();
                self.step(
                    "starting an NBD server (if QEMU already runs one, give its socket with \
                     --nbd-socket)",
                    |q| {
                        q.execute(
                            "nbd-server-start",
                            json!({"addr": {"type": "unix", "data": {"path": s}}}),
                        )
                    },
                )?;
                (s, true)
            }
        };
        let mut export = json!({"type": "nbd", "id": n.export, "node-name": n.view,
            "name": n.export, "writable": false});
        if let Some(base) = base {
            export["bitmaps"] = json!([{"node": o.node, "name": base}]);
        }
        self.step("exporting the frozen view", |q| {
            q.execute("block-export-add", export)
        })?;
        let view = NbdView {
            socket,
            export: n.export.clone(),
            size,
            timeout: o.timeout,
            idle: Mutex::new(Vec::new()),
        };
        Ok((view, own_server))
    }

    /// The dirty ranges of the frozen `base` bitmap, as the export reports them.
    fn dirty_ranges(&self, view: &NbdView, base: &str) -> Result<Vec<(u64, u64)>, NbdError> {
        let context = format!("qemu:dirty-bitmap:{base}");
        let mut client = NbdClient::connect_unix(
            &view.socket,
            &view.export,
            &[&context],
            self.options.timeout,
        )?;
        if client.size() != view.size {
            return Err(NbdError::Protocol(format!(
                "the frozen view is {} bytes, the disk {}",
                client.size(),
                view.size
            )));
        }
        let ranges = client.ranges_with(&context, 0, view.size, STATE_DIRTY)?;
        client.disconnect()?;
        Ok(ranges)
    }

    /// Drop the view: export (its clients cut), view node, job (the filter goes), temp node
    /// and file, our NBD server. Every step is tried; the first failure is returned.
    fn drop_view(&mut self, frozen: &Frozen) -> Result<(), SourceError> {
        frozen.view.idle.lock().expect("pool").clear();
        let n = self.names.clone();
        let mut first: Option<SourceError> = None;
        let mut keep = |r: Result<(), SourceError>| {
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        };
        keep(self.step("deleting the view's export", |q| {
            q.execute("block-export-del", json!({"id": n.export, "mode": "hard"}))?;
            q.wait_event("BLOCK_EXPORT_DELETED", |d| d["id"] == n.export.as_str())
                .map(drop)
        }));
        keep(self.step("deleting the view", |q| {
            q.execute("blockdev-del", json!({"node-name": n.view}))
                .map(drop)
        }));
        keep(self.step("cancelling the fleecing job", |q| {
            q.execute("block-job-cancel", json!({"device": n.job, "force": true}))?;
            q.wait_event("BLOCK_JOB_CANCELLED", |d| d["device"] == n.job.as_str())
                .map(drop)
        }));
        keep(self.step("deleting the fleecing target", |q| {
            q.execute("blockdev-del", json!({"node-name": n.temp}))
                .map(drop)
        }));
        if frozen.own_server {
            keep(self.step("stopping the NBD server", |q| {
                q.execute("nbd-server-stop", json!({})).map(drop)
            }));
            let _ = std::fs::remove_file(self.options.own_nbd_socket());
        }
        let temp = self.options.temp_file();
        if let Err(e) = std::fs::remove_file(&temp) {
            if e.kind() != std::io::ErrorKind::NotFound {
                keep(Err(SourceError::live(
                    format!("removing {}", temp.display()),
                    e,
                )));
            }
        }
        if let Some(q) = &mut self.qmp {
            q.clear_events();
        }
        first.map_or(Ok(()), Err)
    }

    /// Settle the bitmaps as the cycle ends (see the module docs).
    fn settle_after(
        &mut self,
        frozen: &Frozen,
        committed: Option<PointRef>,
    ) -> Result<(), SourceError> {
        match (committed, &frozen.base) {
            (Some(point), base) => {
                // The fresh bitmap becomes the committed point's (named by its time too), then
                // the old base and the fresh one go: a run killed in between leaves bitmaps the
                // next freeze settles, never a base without its changes.
                let named = self.options.committed_bitmap(point);
                let node = self.options.node.clone();
                let actions = [
                    Action::BlockDirtyBitmapAdd(BitmapAdd {
                        node: node.clone(),
                        name: named.clone(),
                        granularity: self.options.granularity,
                        persistent: self.options.persistent_bitmaps,
                    }),
                    Action::BlockDirtyBitmapMerge(BitmapMerge {
                        node,
                        target: named,
                        bitmaps: vec![frozen.fresh.clone()],
                    }),
                ];
                self.step("naming the point's bitmap", |q| q.transaction(&actions))?;
                if let Some(base) = base {
                    self.remove_bitmap(base)?;
                }
                self.remove_bitmap(&frozen.fresh)
            }
            (None, Some(base)) => self.merge_into(base, std::slice::from_ref(&frozen.fresh)),
            // A failed full cycle leaves no base: the next one compares every block again.
            (None, None) => self.remove_bitmap(&frozen.fresh),
        }
    }
}

impl ChangeSource for QemuSource {
    fn freeze(&mut self, last_point: Option<PointRef>) -> Result<Changes, SourceError> {
        if let Some((joint_last, changes)) = self.joint.take() {
            // Frozen with the group's other disks: the same instant for all of them.
            if joint_last == last_point && self.frozen.is_some() {
                return Ok(changes);
            }
            if self.frozen.is_some() {
                self.thaw(None)?;
            }
            return Err(SourceError::live(
                format!("block node {}", self.options.node),
                std::io::Error::other(format!(
                    "the group froze this disk for the cycle after point {:?}, but the \
                     replica's last point is {:?}; the cycle is retried",
                    joint_last.map(|p| p.sequence),
                    last_point.map(|p| p.sequence)
                )),
            ));
        }
        let prepared = self.prepare_freeze(last_point)?;
        let changes = self
            .freeze_transaction(&prepared.actions)
            .inspect_err(|_| self.undo_freeze(&prepared))
            .and_then(|()| self.complete_freeze(&prepared));
        // The cycle reads the view over NBD: the monitor is free meanwhile for another run
        // (another disk of this QEMU), which QEMU serves one client at a time.
        self.release_monitor();
        changes
    }

    fn view(&self) -> Result<&dyn BlockSource, SourceError> {
        match &self.frozen {
            Some(f) => Ok(&f.view),
            None => Err(SourceError::NotFrozen),
        }
    }

    fn thaw(&mut self, committed: Option<PointRef>) -> Result<(), SourceError> {
        self.joint = None;
        let frozen = self.frozen.take().ok_or(SourceError::NotFrozen)?;
        let dropped = self.drop_view(&frozen);
        let settled = self.settle_after(&frozen, committed);
        self.qmp = None;
        dropped.and(settled)
    }

    fn stop(&mut self, _clean: bool) -> Result<(), SourceError> {
        if self.frozen.is_some() {
            self.thaw(None)?;
        }
        Ok(())
    }
}

impl Drop for QemuSource {
    fn drop(&mut self) {
        if self.frozen.is_some() {
            let _ = self.thaw(None);
        }
    }
}

#[cfg(test)]
mod bitmap_name_tests {
    use super::parse_our_bitmap;

    #[test]
    fn only_this_replicas_bitmap_names_are_read_as_its_own() {
        assert_eq!(parse_our_bitmap("5"), Some((5, None)));
        assert_eq!(
            parse_our_bitmap("5-t1796612577480358085"),
            Some((5, Some(1796612577480358085)))
        );
        // Another replica whose name starts with this one's and a `.` (vm0.5, vm0.5-t3),
        // and what is no bitmap of ours.
        for other in [
            "5.7",
            "5-t3.7",
            "5-t",
            "-t5",
            "x",
            "",
            "5-t1x",
            "99999999999999999999999",
        ] {
            assert_eq!(parse_our_bitmap(other), None, "{other}");
        }
    }
}

#[cfg(test)]
mod cycle_names_tests {
    use super::CycleNames;

    #[test]
    fn each_replica_has_its_own_well_formed_qemu_names() {
        // QEMU ids: a letter first, then letters, digits, '-', '.', '_'; node names at most
        // 31 characters. Two replicas never share one (they once all shared fixed names).
        let names = |tag: &str| {
            let n = CycleNames::of(tag);
            [n.temp, n.filter, n.view, n.job, n.export]
        };
        let long = "disk-1a2b3c4d5e6f7a8b-with-a-long-replica-name.v2";
        for tag in ["vm0", "vm1", long] {
            for name in names(tag) {
                assert!(name.len() <= 31, "{name}");
                assert!(
                    name.starts_with(|c: char| c.is_ascii_alphabetic()),
                    "{name}"
                );
                assert!(
                    name.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)),
                    "{name}"
                );
            }
        }
        let (a, b) = (names("vm0"), names("vm1"));
        assert!(a.iter().all(|n| !b.contains(n)), "{a:?} / {b:?}");
        assert_eq!(
            names(long),
            names(long),
            "stable: a run finds a killed run's leftovers"
        );
    }
}
