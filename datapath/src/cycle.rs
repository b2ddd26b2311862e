//! One replication cycle: read the blocks a cycle must look at, find those that differ from
//! the replica, push them through the block pipeline into their slots, and commit a recovery
//! point. It is the I/O step the replicator state machine asks its driver to run.
//!
//! - Which blocks: every block (`Selection::Scan`: initial replication, resync, or a disk we do
//!   not track) or the blocks a change tracker reported (`Selection::Blocks`). Blocks the source
//!   reports unallocated are never read.
//! - What differs: each block's keyed digest against the replica's digest table (rebuilt from
//!   the slot headers when an interrupted cycle left it untrusted, see `disk_replica`).
//! - Parallelism: groups of blocks are read, hashed and encoded on all cores (rayon) with nonces
//!   assigned before the work starts; while the pool works on the next groups, this thread
//!   settles the oldest (table entries, then its records to the `upload_threads` writers) and
//!   then helps the pool. Bytes written never depend on thread scheduling; memory is bounded by
//!   the groups in flight and the writers' queue (backpressure).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Instant;

use rayon::prelude::*;

use crate::cpu_clock::thread_cpu_seconds;
use crate::keys::{DiskKeys, Identity, KeyId};
use crate::replica::block_record::{block_digest, BlockCodec, Encoded};
use crate::replica::disk_replica::{DiskReplica, Layout};
use crate::replica::error::ReplicaError;
use crate::replica::manifest::{Consistency, Manifest, ManifestError};
use crate::replica::merkle::MerkleTree;
use crate::replica::nonce::NonceSource;
use crate::replica::staging_log::StagingLog;
use crate::replica::staging_log_format::{LogHeader, StagingLogError};
use crate::throttle::RateLimit;
use pageblob::is_zero;

/// Bytes of source data in flight per group (read, hashed and encoded together).
pub const GROUP_BYTES: u64 = 8 << 20;

/// Where a cycle reads the disk from.
pub trait BlockSource: Sync {
    fn disk_size(&self) -> u64;
    /// True when `[offset, offset+len)` is known to read as zeros without reading it.
    fn is_unallocated(&self, offset: u64, len: u64) -> bool;
    /// Copy `[offset, offset+buf.len())` into `buf`. The cycle reads each block once and
    /// digests, compresses and encrypts that copy: a block written meanwhile is stored as one
    /// of its versions, never as a record whose digest belongs to another.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
    /// The byte ranges `[start, end)` that may hold data, ascending: the rest of the disk is
    /// known to read as zeros, and a scan examines only these blocks and the ones the replica
    /// holds as non-zero. `None`: unknown (a scan examines every block).
    fn data_ranges(&self) -> Option<Vec<(u64, u64)>> {
        None
    }
    /// The cycle is done with `[offset, offset+len)`: a mapped source drops those pages from
    /// the process, so the resident set stays bounded however big the disk is.
    fn release(&self, _offset: u64, _len: u64) {}
    /// Whether the bytes read so far were really the disk's: an error once its file shrank
    /// under a map (the lost pages read as zeros instead of ending the process). The cycle
    /// checks after each group, before any of the group's records are stored.
    fn check_reads(&self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<T: BlockSource + ?Sized> BlockSource for &T {
    fn disk_size(&self) -> u64 {
        (**self).disk_size()
    }
    fn is_unallocated(&self, offset: u64, len: u64) -> bool {
        (**self).is_unallocated(offset, len)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        (**self).read_at(offset, buf)
    }
    fn data_ranges(&self) -> Option<Vec<(u64, u64)>> {
        (**self).data_ranges()
    }
    fn release(&self, offset: u64, len: u64) {
        (**self).release(offset, len)
    }
    fn check_reads(&self) -> std::io::Result<()> {
        (**self).check_reads()
    }
}

/// Which blocks a cycle examines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every block (initial replication, resync, untracked disks).
    Scan,
    /// Only these blocks (ascending), from a trusted change tracker.
    Blocks(Vec<u64>),
}

/// How to run a cycle.
#[derive(Debug, Clone)]
pub struct CycleOptions {
    pub selection: Selection,
    pub consistency: Consistency,
    pub zstd_level: i32,
    pub encrypt: bool,
    /// Writer threads; 0 stores every record from the calling thread, in block order (the
    /// simulator's choice: store calls in a fixed order keep fault draws deterministic).
    pub upload_threads: usize,
    /// Upload limit in bytes per second (`None`: unthrottled).
    pub throttle_bytes_per_sec: Option<u64>,
    /// The point's time.
    pub now_nanos: u64,
    /// Snapshots the store allows per blob: before a point is committed (also one a crash
    /// left staged), the oldest points go until there is room, as retention would.
    pub snapshot_limit: Option<usize>,
    /// Set (by a signal handler) to abandon the cycle: it stops between block groups and
    /// fails with [`CycleError::Abandoned`], committing nothing.
    pub stop: Option<std::sync::Arc<AtomicBool>>,
    /// Count the CPU the cycle's own thread spends on its serial part
    /// ([`CycleReport::serial_cpu_seconds`]): two reads of the thread's CPU clock per block
    /// group, each a system call. The simulator, whose cycles are a group or two and whose
    /// reports have no use for it, turns it off.
    pub count_serial_cpu: bool,
}

impl CycleOptions {
    /// A crash-consistent scan with the policy defaults.
    pub fn scan(now_nanos: u64) -> CycleOptions {
        CycleOptions {
            selection: Selection::Scan,
            consistency: Consistency::Crash,
            zstd_level: 1,
            encrypt: true,
            upload_threads: 4,
            throttle_bytes_per_sec: None,
            now_nanos,
            snapshot_limit: None,
            stop: None,
            count_serial_cpu: true,
        }
    }
}

/// Running totals, reported to the progress callback after each group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the disk examined so far (read or known zero).
    pub bytes_done: u64,
    /// Bytes the cycle will examine.
    pub bytes_total: u64,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Bytes handed to the store.
    pub bytes_sent: u64,
}

/// What a cycle did.
#[derive(Debug, Clone, PartialEq)]
pub struct CycleReport {
    pub point: Manifest,
    pub blocks: u64,
    pub blocks_examined: u64,
    pub blocks_changed: u64,
    pub bytes_read: u64,
    /// Bytes of changed blocks (their plain size).
    pub bytes_changed: u64,
    /// Bytes written to the store (records padded to pages; cleared slots count 0).
    pub bytes_sent: u64,
    /// The digest table did not match the last point (an interrupted cycle) and was rebuilt.
    pub table_rebuilt: bool,
    pub seconds: f64,
    /// CPU time the cycle's own thread spent preparing and settling its groups, one after
    /// another (nonces and table entries in; the source's reads checked, the digest table's
    /// pages written, the records handed to the writers out): the per-block work of a cycle
    /// that more pipeline threads do not share. Where the OS tells and
    /// [`CycleOptions::count_serial_cpu`] asks.
    pub serial_cpu_seconds: Option<f64>,
    /// Wall time before the first group and after the last (the replica's state read, the
    /// point committed): what more threads do not shorten either.
    pub outside_groups_seconds: f64,
    /// The source had lost its change tracking (why): every block was compared (a resync).
    pub tracking_lost: Option<String>,
}

/// Failures of a cycle.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error("stopped on request: the cycle was abandoned before its point was committed")]
    Abandoned,
    #[error("reading the source disk at {offset:#x}: {source}")]
    Source { offset: u64, source: std::io::Error },
    #[error(
        "the disk is {disk} bytes but the replica was made for {replica}: a replica keeps one \
         disk size, so a resized disk goes into a new replica (replicate it under another \
         --name); this replica's points stay restorable at {replica} bytes"
    )]
    DiskSize { disk: u64, replica: u64 },
    #[error("tracked block {block} is past the end of the disk ({blocks} blocks)")]
    BlockOutOfRange { block: u64, blocks: u64 },
    #[error("the nonce epoch is used up")]
    Nonces,
}

/// Blocks per digest-table page.
const ENTRIES_PER_PAGE: u64 = 512 / crate::replica::disk_replica::DIGEST_ENTRY;

/// The live points and the trusted digest table of a replica, as a cycle starts.
struct ReplicaState {
    points: Vec<Manifest>,
    /// The digest table (the tree's leaves) and its Merkle tree.
    table: MerkleTree,
    /// The stored table was not trusted and was rebuilt from the slot headers.
    rebuilt: bool,
}

/// A block after the parallel pass: its record when it differs from the replica.
struct Examined {
    block: u64,
    digest: [u8; 32],
    read_len: u64,
    encoded: Option<Encoded>,
}

/// A group's blocks after the parallel pass, in the group's order.
type ExaminedGroup = Vec<Result<Examined, CycleError>>;

/// Takes an examined group on the cycle's thread: the table, the group's blocks, their results.
type SettleGroup<'s> =
    dyn FnMut(&mut MerkleTree, &[u64], ExaminedGroup) -> Result<(), CycleError> + 's;

/// Groups the pool examines ahead of the one being settled.
const GROUPS_IN_FLIGHT: usize = 3;

/// The value a pool task sends on `rx`; meanwhile a thread of the pool runs the pool's other
/// work (the groups after), one not of the pool just waits. `None` when the task ended without
/// sending (it panicked).
fn wait_helping_the_pool<T>(rx: &mpsc::Receiver<T>) -> Option<T> {
    loop {
        match rx.try_recv() {
            Ok(value) => return Some(value),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => {}
            None => return rx.recv().ok(),
            // Nothing else to run: the group's last blocks are on other threads.
            Some(rayon::Yield::Idle) => {
                match rx.recv_timeout(std::time::Duration::from_micros(50)) {
                    Ok(value) => return Some(value),
                    Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
            }
        }
    }
}

thread_local! {
    /// Per-thread buffer every block is read into: reused, so reading a block costs
    /// neither an allocation nor a memset.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What a cycle does with each block: read it (not at all when the source says it is
/// unallocated; into one per-thread copy otherwise), hash it, and encode it when its digest
/// differs from the replica's.
struct BlockPass<'a, Z> {
    source: &'a dyn BlockSource,
    layout: &'a crate::replica::disk_replica::Layout,
    zero: &'a Z,
    codec: &'a BlockCodec,
    sequence: u64,
}

impl<Z: Fn(u64) -> [u8; 32] + Sync> BlockPass<'_, Z> {
    /// Examine `block`, whose digest in the replica is `known`; `nonce` encrypts its record.
    fn examine(
        &self,
        block: u64,
        known: &[u8; 32],
        nonce: [u8; 12],
    ) -> Result<Examined, CycleError> {
        let offset = block * u64::from(self.layout.block_size);
        let len = self.layout.block_len(block);
        let zero_block = |read_len| {
            let digest = (self.zero)(block);
            Examined {
                block,
                digest,
                read_len,
                encoded: (*known != digest).then_some(Encoded::Zero { digest }),
            }
        };
        if self.source.is_unallocated(offset, len) {
            return Ok(zero_block(0));
        }
        let data_block = |data: &[u8]| {
            if is_zero(data) {
                return zero_block(len);
            }
            let digest = self.codec.digest(data);
            Examined {
                block,
                digest,
                read_len: len,
                encoded: (*known != digest).then(|| {
                    self.codec
                        .encode_digested(block, self.sequence, data, digest, nonce)
                }),
            }
        };
        // One copy: a mapped file may change under us, so never hash the map and then
        // encode it again.
        READ_BUFFER.with_borrow_mut(|buf| {
            buf.resize(buf.len().max(len as usize), 0);
            let data = &mut buf[..len as usize];
            self.source
                .read_at(offset, data)
                .map_err(|e| CycleError::Source { offset, source: e })?;
            Ok(data_block(data))
        })
    }
}

/// The live points and the trusted digest table of a replica, as a cycle starts.
fn replica_state(
    replica: &DiskReplica<'_>,
    identity: &Identity,
    zeros: &ZeroDigests,
    digest_key: &[u8; 32],
    cached: Option<MerkleTree>,
) -> Result<ReplicaState, CycleError> {
    let layout = replica.layout;
    // A replica written with another certificate fails here: its manifests do not
    // authenticate under this key. When none does and they all name one other thumbprint,
    // the error says which certificate the replica needs.
    let points = match replica.points(digest_key) {
        Ok(points) => points,
        Err(
            e @ ReplicaError::Manifest {
                source: ManifestError::Authentication,
                ..
            },
        ) => {
            replica.check_certificate(digest_key, &identity.key_id.0)?;
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(last) = points.last() {
        if last.key_id != identity.key_id.0 {
            return Err(ReplicaError::OtherCertificate {
                found: KeyId(last.key_id).to_string(),
                given: identity.key_id.to_string(),
            }
            .into());
        }
        if last.disk_size != layout.disk_size {
            return Err(CycleError::DiskSize {
                disk: layout.disk_size,
                replica: last.disk_size,
            });
        }
    }
    // The table this process committed with the last point is that point's table: no need to
    // read it back.
    if let (Some(mut tree), Some(last)) = (cached, points.last()) {
        if tree.len() == layout.blocks() && tree.root() == last.merkle_root {
            return Ok(ReplicaState {
                points,
                table: tree,
                rebuilt: false,
            });
        }
    }
    let mut stored = zeros.tree(replica.load_digest_table()?);
    let trusted = points
        .last()
        .is_some_and(|last| stored.root() == last.merkle_root);
    if trusted {
        return Ok(ReplicaState {
            points,
            table: stored,
            rebuilt: false,
        });
    }
    let rebuilt = replica.rebuild_digest_table()?;
    // Without points, a rebuild only matters when an interrupted first cycle wrote slots.
    let repaired = !points.is_empty() || !rebuilt.is_empty();
    let table = zeros.tree(rebuilt);
    if repaired {
        // Store the whole rebuilt table, so the next point's table matches it again.
        store_whole_table(replica, &table, &|b| zeros.of(b))?;
    }
    Ok(ReplicaState {
        points,
        table,
        rebuilt: repaired,
    })
}

/// The digests of a zero block under one digest key and layout (only the last block may be
/// short).
#[derive(Clone)]
struct ZeroDigests {
    digest_key: [u8; 32],
    block_size: u32,
    disk_size: u64,
    full: [u8; 32],
    tail: [u8; 32],
}

/// The digest key stays out of debug output.
impl std::fmt::Debug for ZeroDigests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZeroDigests")
            .field("block_size", &self.block_size)
            .field("disk_size", &self.disk_size)
            .finish_non_exhaustive()
    }
}

impl ZeroDigests {
    fn new(digest_key: &[u8; 32], layout: &Layout) -> ZeroDigests {
        let digest = |len: u64| block_digest(digest_key, &vec![0u8; len as usize]);
        let full = digest(u64::from(layout.block_size));
        let tail_len = layout.block_len(layout.blocks().saturating_sub(1));
        ZeroDigests {
            digest_key: *digest_key,
            block_size: layout.block_size,
            disk_size: layout.disk_size,
            full,
            tail: if tail_len == u64::from(layout.block_size) {
                full
            } else {
                digest(tail_len)
            },
        }
    }

    fn fits(&self, digest_key: &[u8; 32], layout: &Layout) -> bool {
        self.digest_key == *digest_key
            && self.block_size == layout.block_size
            && self.disk_size == layout.disk_size
    }

    /// Digest of block `block` when it is all zero.
    fn of(&self, block: u64) -> [u8; 32] {
        if block + 1 == self.blocks() {
            self.tail
        } else {
            self.full
        }
    }

    fn blocks(&self) -> u64 {
        self.disk_size.div_ceil(u64::from(self.block_size))
    }

    /// The table's tree from its non-zero entries (the rest are zero blocks).
    fn tree(&self, entries: Vec<(u64, [u8; 32])>) -> MerkleTree {
        MerkleTree::sparse(
            &self.digest_key,
            self.blocks(),
            self.full,
            self.tail,
            entries,
        )
    }
}

/// A record on its way to the writers.
struct Job {
    block: u64,
    encoded: Encoded,
    /// Offset in the staging log (premium targets).
    log_offset: u64,
}

/// Replicate `source` into `replica` as the next recovery point.
#[allow(clippy::too_many_arguments)]
pub fn run_cycle(
    replica: &DiskReplica<'_>,
    source: &dyn BlockSource,
    identity: &Identity,
    keys: &DiskKeys,
    options: &CycleOptions,
    nonces: &mut NonceSource,
    progress: &(dyn Fn(&Progress) + Sync),
) -> Result<CycleReport, CycleError> {
    run_cycle_cached(
        replica,
        source,
        identity,
        keys,
        options,
        nonces,
        progress,
        &mut CycleCache::default(),
    )
}

/// What a process that runs cycle after cycle on one replica keeps between them
/// ([`run_cycle_cached`]).
#[derive(Debug, Default)]
pub struct CycleCache {
    /// The digest table and its Merkle tree as the last committed cycle left them.
    table: Option<MerkleTree>,
    /// The digests of an all-zero block and of an all-zero last block under the digest key
    /// (hashing 64 KiB of zeros twice each cycle cost the simulator's drill 1% of its CPU).
    zero: Option<ZeroDigests>,
}

impl CycleCache {
    /// Pages of [`crate::replica::merkle::PAGE`] nodes the kept table's tree holds (`None`:
    /// none kept): what the cache costs in memory, which follows the replica's non-zero blocks,
    /// not the disk's size.
    pub fn table_pages_held(&self) -> Option<usize> {
        self.table.as_ref().map(MerkleTree::pages_held)
    }
}

/// [`run_cycle`] for a process that runs cycle after cycle on one replica (the agent): `cache`
/// keeps the digest table and its Merkle tree from the last committed cycle, so a delta cycle
/// neither reads the table back nor rehashes the whole tree — its cost follows the blocks it
/// examines, not the disk's size. The table is used only when its root is the last point's,
/// and is dropped by a cycle that fails; the zero-block digests only under the same key and
/// geometry.
#[allow(clippy::too_many_arguments)]
pub fn run_cycle_cached(
    replica: &DiskReplica<'_>,
    source: &dyn BlockSource,
    identity: &Identity,
    keys: &DiskKeys,
    options: &CycleOptions,
    nonces: &mut NonceSource,
    progress: &(dyn Fn(&Progress) + Sync),
    cache: &mut CycleCache,
) -> Result<CycleReport, CycleError> {
    let layout = replica.layout;
    let digest_key = keys.digest.expose();
    let zero = match cache.zero.take() {
        Some(zero) if zero.fits(digest_key, &layout) => zero,
        _ => ZeroDigests::new(digest_key, &layout),
    };
    let cached = cache.table.take();
    let (report, table) = cycle_inner(
        replica, source, identity, keys, options, nonces, progress, cached, &zero,
    )?;
    *cache = CycleCache {
        table: Some(table),
        zero: Some(zero),
    };
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn cycle_inner(
    replica: &DiskReplica<'_>,
    source: &dyn BlockSource,
    identity: &Identity,
    keys: &DiskKeys,
    options: &CycleOptions,
    nonces: &mut NonceSource,
    progress: &(dyn Fn(&Progress) + Sync),
    cached: Option<MerkleTree>,
    zeros: &ZeroDigests,
) -> Result<(CycleReport, MerkleTree), CycleError> {
    let started = Instant::now();
    let layout = replica.layout;
    if source.disk_size() != layout.disk_size {
        return Err(CycleError::DiskSize {
            disk: source.disk_size(),
            replica: layout.disk_size,
        });
    }
    let digest_key = keys.digest.expose();
    let codec = BlockCodec::new(keys, options.zstd_level, options.encrypt);
    recover_and_make_room(replica, identity, digest_key, options.snapshot_limit)?;
    let ReplicaState {
        points,
        mut table,
        rebuilt: table_rebuilt,
    } = replica_state(replica, identity, zeros, digest_key, cached)?;
    let sequence = points.last().map_or(0, |p| p.sequence + 1);
    let blocks = layout.blocks();
    let zero = |b| zeros.of(b);

    let scan = options.selection == Selection::Scan;
    let (selected, totals) = blocks_to_examine(&options.selection, source, &layout, &table, &zero)?;
    let mut nonces = NonceCursor {
        nonces,
        by_block: scan,
        next: 0,
    };
    let mut tally = Tally::starting_at(totals);
    let writer = RecordWriter::new(replica, options);
    let pass = BlockPass {
        source,
        layout: &layout,
        zero: &zero,
        codec: &codec,
        sequence,
    };
    let mut serial = SerialClock::new(options.count_serial_cpu);
    let groups_started = Instant::now();
    let outcome = run_groups(
        &pass,
        &selected,
        options.upload_threads,
        &writer,
        progress,
        &mut nonces,
        &mut table,
        &mut tally,
        &mut serial,
    );
    let groups_ended = Instant::now();
    outcome?;
    if scan {
        // The blocks after the last one examined pass their nonces over, as before.
        nonces.skip_to(blocks)?;
    }
    if let Some(e) = writer.first_error.lock().expect("error slot").take() {
        return Err(e.into());
    }
    // Writers drop what is queued once a stop is asked for: past this check nothing was
    // dropped, and the point may be committed.
    if writer.stopping() {
        return Err(CycleError::Abandoned);
    }
    let point = commit_cycle(
        replica,
        identity,
        options,
        digest_key,
        sequence,
        &tally,
        table.root(),
    )?;
    let report = CycleReport {
        point,
        blocks,
        blocks_examined: if scan { blocks } else { selected.len() as u64 },
        blocks_changed: tally.changed,
        bytes_read: tally.done.bytes_read,
        bytes_changed: tally.bytes_changed,
        bytes_sent: writer.sent.into_inner(),
        table_rebuilt,
        seconds: started.elapsed().as_secs_f64(),
        serial_cpu_seconds: serial.cpu_seconds,
        outside_groups_seconds: (groups_started - started + groups_ended.elapsed()).as_secs_f64(),
        tracking_lost: None,
    };
    Ok((report, table))
}

/// The selected blocks through the pipeline: examined a group at a time on the pool and
/// settled on this thread in order while the pool examines the groups after it, the changed
/// blocks' records stored by `upload_threads` writer threads; with none (the simulator), one
/// group at a time, every store call made by this thread in block order.
#[allow(clippy::too_many_arguments)]
fn run_groups<Z: Fn(u64) -> [u8; 32] + Sync>(
    pass: &BlockPass<'_, Z>,
    selected: &[u64],
    upload_threads: usize,
    writer: &RecordWriter<'_, '_>,
    progress: &(dyn Fn(&Progress) + Sync),
    nonces: &mut NonceCursor<'_>,
    table: &mut MerkleTree,
    tally: &mut Tally,
    serial: &mut SerialClock,
) -> Result<(), CycleError> {
    let group_len = (GROUP_BYTES / u64::from(pass.layout.block_size)).clamp(2, 128) as usize;
    let inline = upload_threads == 0;
    let (tx, rx) = mpsc::sync_channel::<Job>(group_len * (GROUPS_IN_FLIGHT + 1));
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| {
        for _ in 0..upload_threads {
            scope.spawn(|| writer.serve(&rx));
        }
        let settler = Settler {
            source: pass.source,
            replica: writer.replica,
            zero: pass.zero,
            sent: &writer.sent,
            progress,
        };
        let mut hand_off = |job: Job| {
            if inline {
                writer.store(job);
                true
            } else {
                tx.send(job).is_ok()
            }
        };
        let produced = examine_ahead(
            pass,
            selected,
            group_len,
            if inline { 1 } else { GROUPS_IN_FLIGHT },
            nonces,
            table,
            serial,
            &|| writer.keep_going(),
            &mut |table, group, examined| {
                settler.settle(tally, table, group, examined, &mut hand_off)
            },
        );
        drop(tx);
        produced
    })
}

/// The staged cycle a crash left committed (premium targets) becomes a point, and there is
/// room under the profile's snapshot limit for this cycle's point.
fn recover_and_make_room(
    replica: &DiskReplica<'_>,
    identity: &Identity,
    digest_key: &[u8; 32],
    snapshot_limit: Option<usize>,
) -> Result<(), CycleError> {
    if let Some(log) = &replica.staging {
        // It needs a snapshot, and so does this cycle's point: room before each.
        make_room(replica, digest_key, snapshot_limit)?;
        recover_staged_cycle(replica, log, identity, digest_key)?;
    }
    make_room(replica, digest_key, snapshot_limit)
}

impl Selection {
    /// The blocks to examine of a disk of `blocks` blocks.
    fn blocks(&self, blocks: u64) -> Result<Vec<u64>, CycleError> {
        match self {
            Selection::Scan => Ok((0..blocks).collect()),
            Selection::Blocks(list) => match list.iter().find(|&&b| b >= blocks) {
                Some(&bad) => Err(CycleError::BlockOutOfRange { block: bad, blocks }),
                None => Ok(list.clone()),
            },
        }
    }
}

/// Stores records (on writer threads, or inline when there are none) and remembers the first
/// failure: after one, or once a stop is asked for, nothing more is stored.
struct RecordWriter<'c, 'r> {
    replica: &'c DiskReplica<'r>,
    limiter: Option<RateLimit>,
    stop: Option<&'c AtomicBool>,
    sent: AtomicU64,
    failed: AtomicBool,
    first_error: Mutex<Option<ReplicaError>>,
}

impl<'c, 'r> RecordWriter<'c, 'r> {
    /// Stores `replica`'s records as `options` say (throttle, stop flag); nothing sent yet.
    fn new(replica: &'c DiskReplica<'r>, options: &'c CycleOptions) -> RecordWriter<'c, 'r> {
        RecordWriter {
            replica,
            limiter: options.throttle_bytes_per_sec.map(RateLimit::new),
            stop: options.stop.as_deref(),
            sent: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            first_error: Mutex::new(None),
        }
    }

    fn stopping(&self) -> bool {
        self.stop.is_some_and(|s| s.load(Ordering::Relaxed))
    }

    /// Whether the cycle goes on with its next group: `Ok(false)` once a store call failed
    /// (the failure is reported), an error once a stop is asked for.
    fn keep_going(&self) -> Result<bool, CycleError> {
        if self.failed.load(Ordering::Relaxed) {
            Ok(false)
        } else if self.stopping() {
            Err(CycleError::Abandoned)
        } else {
            Ok(true)
        }
    }

    /// A writer thread: store the records `queue` hands out until it is closed, taking the
    /// ones queued up behind the first (up to [`pageblob::PIPELINE_DEPTH`]) as one batch: a store may send a
    /// batch together (the HTTP client pipelines it on one connection). One at a time under a
    /// bandwidth limit (a batch's share of it would be one long sleep, deaf to a stop) and
    /// into a staging log.
    fn serve(&self, queue: &Mutex<mpsc::Receiver<Job>>) {
        let batching = self.limiter.is_none() && self.replica.staging.is_none();
        let most = if batching {
            pageblob::PIPELINE_DEPTH
        } else {
            1
        };
        let mut batch = Vec::with_capacity(most);
        loop {
            {
                let queue = queue.lock().expect("writer queue");
                match queue.recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => return,
                }
                while batch.len() < most {
                    match queue.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
            }
            if batch.len() == 1 {
                batch.drain(..).for_each(|job| self.store(job));
            } else {
                self.store_batch(&mut batch);
            }
        }
    }

    fn store(&self, job: Job) {
        // A failed or abandoned cycle stores nothing more (queued records are dropped).
        if self.failed.load(Ordering::Relaxed) || self.stopping() {
            return;
        }
        let bytes = job.encoded.stored_bytes();
        if let Some(limit) = &self.limiter {
            limit.acquire(bytes);
        }
        let written = match &self.replica.staging {
            Some(log) => log.write_entry(job.log_offset, job.block, job.encoded),
            None => self.replica.write_block(job.block, job.encoded),
        };
        self.settle(bytes, written);
    }

    /// Store `batch` (emptied) into the replica's slots (no staging log, no bandwidth limit).
    fn store_batch(&self, batch: &mut Vec<Job>) {
        if self.failed.load(Ordering::Relaxed) || self.stopping() {
            batch.clear();
            return;
        }
        let bytes = batch.iter().map(|job| job.encoded.stored_bytes()).sum();
        let written = self
            .replica
            .write_blocks(batch.drain(..).map(|job| (job.block, job.encoded)));
        self.settle(bytes, written);
    }

    /// Count `bytes` as sent, or remember the first failure.
    fn settle(&self, bytes: u64, written: Result<(), ReplicaError>) {
        match written {
            Ok(()) => {
                self.sent.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed.store(true, Ordering::Relaxed);
                self.first_error
                    .lock()
                    .expect("error slot")
                    .get_or_insert(e);
            }
        }
    }
}

/// Commit the cycle's point: through the staging log first (premium targets: committed there,
/// applied to the blob, cleared after), then the snapshot and manifest.
fn commit_cycle(
    replica: &DiskReplica<'_>,
    identity: &Identity,
    options: &CycleOptions,
    digest_key: &[u8; 32],
    sequence: u64,
    tally: &Tally,
    root: [u8; 32],
) -> Result<Manifest, CycleError> {
    let staging = replica.staging.as_ref();
    if let Some(log) = staging {
        let header = LogHeader {
            sequence,
            time_nanos: options.now_nanos,
            consistency: options.consistency,
            entries: tally.log_entries,
            end: tally.log_end,
        };
        log.commit(&header)?;
        log.for_each_entry(&header, |block, record| apply_entry(replica, block, record))?;
    }
    let point = replica.commit_point(
        sequence,
        sequence,
        options.now_nanos,
        options.consistency,
        identity.key_id.0,
        root,
        digest_key,
    )?;
    if let Some(log) = staging {
        log.clear(tally.log_end)?;
    }
    Ok(point)
}

/// What a cycle has settled so far.
struct Tally {
    done: Progress,
    changed: u64,
    bytes_changed: u64,
    /// Where the next staged entry goes, and how many there are (premium targets).
    log_end: u64,
    log_entries: u64,
}

impl Tally {
    /// Nothing changed yet; `done` is the progress before the first group (the blocks not
    /// examined counted as done).
    fn starting_at(done: Progress) -> Tally {
        Tally {
            done,
            changed: 0,
            bytes_changed: 0,
            log_end: StagingLog::first_entry(),
            log_entries: 0,
        }
    }
}

/// Settles examined groups on the cycle's thread.
struct Settler<'c, 'r, Z> {
    source: &'c dyn BlockSource,
    replica: &'c DiskReplica<'r>,
    zero: &'c Z,
    sent: &'c AtomicU64,
    progress: &'c (dyn Fn(&Progress) + Sync),
}

impl<Z: Fn(u64) -> [u8; 32]> Settler<'_, '_, Z> {
    /// Settle `group` (blocks examined as `examined`, in order): check the source's reads,
    /// update `table` and write its dirty pages, then give the changed blocks' records to
    /// `hand_off` (false: the writers are gone).
    fn settle(
        &self,
        tally: &mut Tally,
        table: &mut MerkleTree,
        group: &[u64],
        examined: ExaminedGroup,
        hand_off: &mut dyn FnMut(Job) -> bool,
    ) -> Result<(), CycleError> {
        let layout = self.replica.layout;
        let (Some(&first), Some(&last)) = (group.iter().min(), group.iter().max()) else {
            return Ok(());
        };
        self.source.check_reads().map_err(|e| CycleError::Source {
            offset: group[0] * u64::from(layout.block_size),
            source: e,
        })?;
        let start = first * u64::from(layout.block_size);
        let end = last * u64::from(layout.block_size) + layout.block_len(last);
        self.source.release(start, end - start);
        let mut jobs = Vec::new();
        let mut dirty_pages = BTreeSet::new();
        for result in examined {
            let e = result?;
            tally.done.bytes_done += layout.block_len(e.block);
            tally.done.bytes_read += e.read_len;
            if let Some(encoded) = e.encoded {
                table.set(e.block, e.digest);
                dirty_pages.insert(e.block / ENTRIES_PER_PAGE);
                tally.changed += 1;
                tally.bytes_changed += layout.block_len(e.block);
                jobs.push((e.block, encoded));
            }
        }
        // Table entries first, then the slots (see `disk_replica`).
        write_table_pages(self.replica, table, &dirty_pages, self.zero)?;
        for (block, encoded) in jobs {
            let log_offset = tally.log_end;
            tally.log_end += StagingLog::entry_len(&encoded);
            tally.log_entries += 1;
            let job = Job {
                block,
                encoded,
                log_offset,
            };
            if !hand_off(job) {
                break;
            }
        }
        tally.done.bytes_sent = self.sent.load(Ordering::Relaxed);
        (self.progress)(&tally.done);
        Ok(())
    }
}

/// Examine `selected` a group of `group_len` blocks at a time on the pool, up to `depth` groups
/// ahead of the oldest, which `settle` takes on this thread in order. Before each group starts,
/// `keep_going` says whether to (`Ok(false)`: stop quietly, the cycle already failed).
#[allow(clippy::too_many_arguments)]
fn examine_ahead<Z: Fn(u64) -> [u8; 32] + Sync>(
    pass: &BlockPass<'_, Z>,
    selected: &[u64],
    group_len: usize,
    depth: usize,
    nonces: &mut NonceCursor<'_>,
    table: &mut MerkleTree,
    serial: &mut SerialClock,
    keep_going: &dyn Fn() -> Result<bool, CycleError>,
    settle: &mut SettleGroup<'_>,
) -> Result<(), CycleError> {
    let mut groups = selected.chunks(group_len);
    if depth <= 1 || selected.len() <= group_len {
        // Nothing to overlap (one group at a time, or a delta of one group): each group is
        // examined from this thread, so a small one costs no hand-off to the pool at all.
        for group in groups {
            if !keep_going()? {
                return Ok(());
            }
            let (group_nonces, known) = serial.time(|| prepare_group(group, nonces, table))?;
            let examined = examine_group(pass, group, &group_nonces, &known);
            serial.time(|| settle(table, group, examined))?;
        }
        return Ok(());
    }
    let mut in_flight = std::collections::VecDeque::new();
    rayon::in_place_scope_fifo(|pool| -> Result<(), CycleError> {
        loop {
            while in_flight.len() < depth {
                let Some(group) = groups.next() else {
                    break;
                };
                if !keep_going()? {
                    return Ok(());
                }
                // Read (unallocated blocks never), hash, compare with the table, encode what
                // changed.
                let (group_nonces, known) = serial.time(|| prepare_group(group, nonces, table))?;
                let (examined_tx, examined_rx) = mpsc::sync_channel::<ExaminedGroup>(1);
                pool.spawn_fifo(move |_| {
                    let examined = examine_group(pass, group, &group_nonces, &known);
                    // The receiver is gone only when the cycle already failed.
                    let _ = examined_tx.send(examined);
                });
                in_flight.push_back((group, examined_rx));
            }
            let Some((group, examined_rx)) = in_flight.pop_front() else {
                return Ok(());
            };
            // A task that panicked: the scope passes its panic on when it ends.
            let Some(examined) = wait_helping_the_pool(&examined_rx) else {
                return Ok(());
            };
            serial.time(|| settle(table, group, examined))?;
        }
    })
}

/// CPU time the cycle's own thread spends on its serial part (see
/// [`CycleReport::serial_cpu_seconds`]); `None` where the OS has no thread clock.
struct SerialClock {
    cpu_seconds: Option<f64>,
}

impl SerialClock {
    /// `counting`: false leaves the count `None`, as where the OS has no thread clock.
    fn new(counting: bool) -> SerialClock {
        SerialClock {
            cpu_seconds: thread_cpu_seconds().filter(|_| counting).map(|_| 0.0),
        }
    }

    /// Run `work` on this thread, adding its CPU time.
    fn time<T>(&mut self, work: impl FnOnce() -> T) -> T {
        if self.cpu_seconds.is_none() {
            return work();
        }
        let start = thread_cpu_seconds();
        let out = work();
        if let (Some(total), Some(start), Some(end)) =
            (&mut self.cpu_seconds, start, thread_cpu_seconds())
        {
            *total += end - start;
        }
        out
    }
}

/// Hands out the cycle's nonces: one per examined block in order, or (a scan) block *b* the
/// scan's *b*-th, the nonces of the blocks not examined passed over.
struct NonceCursor<'n> {
    nonces: &'n mut NonceSource,
    by_block: bool,
    /// With `by_block`: the block the next nonce belongs to.
    next: u64,
}

impl NonceCursor<'_> {
    fn for_block(&mut self, block: u64) -> Result<[u8; 12], CycleError> {
        if self.by_block {
            self.skip_to(block)?;
            self.next = block + 1;
        }
        self.nonces.next_nonce().ok_or(CycleError::Nonces)
    }

    /// Pass over the nonces of the blocks before `block` not yet handed out.
    fn skip_to(&mut self, block: u64) -> Result<(), CycleError> {
        self.nonces
            .skip(block.saturating_sub(self.next))
            .ok_or(CycleError::Nonces)?;
        self.next = self.next.max(block);
        Ok(())
    }
}

/// The blocks a cycle examines, ascending, and the progress it starts from. A scan examines the
/// blocks that may hold data and those the replica holds as non-zero ([`scan_candidates`]):
/// every other block is a zero block on both sides, counted as done. Each keeps the nonce it
/// had when every block was examined (its number from the scan's first nonce, `NonceCursor`).
fn blocks_to_examine(
    selection: &Selection,
    source: &dyn BlockSource,
    layout: &Layout,
    table: &MerkleTree,
    zero: &impl Fn(u64) -> [u8; 32],
) -> Result<(Vec<u64>, Progress), CycleError> {
    let scan = *selection == Selection::Scan;
    let selected = if scan {
        scan_candidates(source, layout, table, zero)
    } else {
        selection.blocks(layout.blocks())?
    };
    let examined_bytes: u64 = selected.iter().map(|&b| layout.block_len(b)).sum();
    let known_zero_bytes = if scan {
        layout.disk_size - examined_bytes
    } else {
        0
    };
    let totals = Progress {
        bytes_total: examined_bytes + known_zero_bytes,
        bytes_done: known_zero_bytes,
        ..Progress::default()
    };
    Ok((selected, totals))
}

/// The blocks a scan examines, ascending: those `source` may hold data in (all, when it cannot
/// tell) and those `table` holds as non-zero.
fn scan_candidates(
    source: &dyn BlockSource,
    layout: &Layout,
    table: &MerkleTree,
    zero: &impl Fn(u64) -> [u8; 32],
) -> Vec<u64> {
    let blocks = layout.blocks();
    let Some(ranges) = source.data_ranges() else {
        return (0..blocks).collect();
    };
    let block_size = u64::from(layout.block_size);
    let mut from_source: Vec<u64> = Vec::new();
    for (start, end) in ranges {
        let end = end.min(layout.disk_size);
        if start >= end {
            continue;
        }
        let first = (start / block_size).max(from_source.last().map_or(0, |&b| b + 1));
        from_source.extend(first..=(end - 1) / block_size);
    }
    let mut held = table
        .held_leaves()
        .filter(|&(b, d)| d != zero(b))
        .map(|(b, _)| b)
        .peekable();
    // Merge the two ascending lists.
    let mut out = Vec::with_capacity(from_source.len());
    let mut from_source = from_source.into_iter().peekable();
    loop {
        let next = match (from_source.peek(), held.peek()) {
            (Some(&a), Some(&b)) if a < b => from_source.next(),
            (Some(&a), Some(&b)) if b < a => held.next(),
            (Some(_), Some(_)) => {
                held.next();
                from_source.next()
            }
            (Some(_), None) => from_source.next(),
            (None, Some(_)) => held.next(),
            (None, None) => break,
        };
        out.extend(next);
    }
    out
}

/// A group's nonces and the table entries its blocks are compared with, by position.
type GroupInputs = (Vec<[u8; 12]>, Vec<[u8; 32]>);

/// The nonces and the table entries `group` needs, taken before it is examined. Nonces are
/// handed out per position, so the bytes do not depend on scheduling (unused ones are
/// skipped); the table entries are copied out, as the groups before may still be updating the
/// table.
fn prepare_group(
    group: &[u64],
    nonces: &mut NonceCursor<'_>,
    table: &MerkleTree,
) -> Result<GroupInputs, CycleError> {
    let group_nonces = group
        .iter()
        .map(|&block| nonces.for_block(block))
        .collect::<Result<_, _>>()?;
    let known = group.iter().map(|&b| table.get(b)).collect();
    Ok((group_nonces, known))
}

/// Examine one group's blocks (`nonces` and `known` table entries by position): one block on
/// this thread; two to seven split between this thread and one task of the pool; more across
/// the pool.
fn examine_group<Z: Fn(u64) -> [u8; 32] + Sync>(
    pass: &BlockPass<'_, Z>,
    group: &[u64],
    nonces: &[[u8; 12]],
    known: &[[u8; 32]],
) -> ExaminedGroup {
    let examine = |((&block, nonce), known): ((&u64, &[u8; 12]), &[u8; 32])| {
        pass.examine(block, known, *nonce)
    };
    let one_by_one = |range: std::ops::Range<usize>| -> ExaminedGroup {
        group[range.clone()]
            .iter()
            .zip(&nonces[range.clone()])
            .zip(&known[range])
            .map(examine)
            .collect()
    };
    match group.len() {
        0..=1 => one_by_one(0..group.len()),
        // A delta of a few blocks: its second half on the pool, its first on this thread.
        2..=7 => {
            let half = group.len() / 2;
            let mut second = Vec::new();
            let mut first = rayon::in_place_scope(|scope| {
                scope.spawn(|_| second = one_by_one(half..group.len()));
                one_by_one(0..half)
            });
            first.append(&mut second);
            first
        }
        _ => group
            .par_iter()
            .zip(nonces.par_iter())
            .zip(known.par_iter())
            .map(examine)
            .collect(),
    }
}

/// Write one staged entry into its slot.
fn apply_entry(
    replica: &DiskReplica<'_>,
    block: u64,
    record: Option<Encoded>,
) -> Result<(), ReplicaError> {
    if block >= replica.layout.blocks() {
        return Err(ReplicaError::StagingLog {
            path: "staging log".into(),
            offset: 0,
            why: StagingLogError::BlockPastDiskEnd(block),
        });
    }
    replica.write_block(block, record.unwrap_or(Encoded::Zero { digest: [0; 32] }))
}

/// A premium replica's start: a cycle committed to the staging log but not yet to the replica
/// is applied and its point committed; anything else in the log is discarded.
fn recover_staged_cycle(
    replica: &DiskReplica<'_>,
    log: &StagingLog<'_>,
    identity: &Identity,
    digest_key: &[u8; 32],
) -> Result<(), CycleError> {
    let Some(header) = log.committed()? else {
        let end = log.used_end()?;
        if end > 0 {
            log.clear(end)?;
        }
        return Ok(());
    };
    let points = replica.points(digest_key)?;
    let next = points.last().map_or(0, |p| p.sequence + 1);
    if header.sequence == next {
        log.for_each_entry(&header, |block, record| apply_entry(replica, block, record))?;
        let zeros = ZeroDigests::new(digest_key, &replica.layout);
        let root = zeros.tree(replica.rebuild_digest_table()?).root();
        replica.commit_point(
            header.sequence,
            header.sequence,
            header.time_nanos,
            header.consistency,
            identity.key_id.0,
            root,
            digest_key,
        )?;
    }
    log.clear(header.end)?;
    Ok(())
}

/// Delete the oldest points (never the newest, nor one a reader holds) until one more snapshot
/// fits under `limit`, as retention's own limit rule does; snapshots no point refers to go
/// first. Without this, a cycle that a crash left staged at the limit could never commit (409
/// SnapshotCountExceeded on every retry, and retention runs only after a commit).
fn make_room(
    replica: &DiskReplica<'_>,
    digest_key: &[u8; 32],
    limit: Option<usize>,
) -> Result<(), CycleError> {
    let Some(limit) = limit else {
        return Ok(());
    };
    let points = replica.points(digest_key)?;
    if points.len() + 1 < limit {
        return Ok(());
    }
    replica.sweep_orphans(&points)?;
    if points.len() + 1 == limit {
        // One more snapshot fits exactly: no point need go, and no holds need listing.
        return Ok(());
    }
    let held = replica.held_now()?;
    let infos: Vec<crate::retention::PointInfo> =
        points.iter().map(crate::retention::PointInfo::of).collect();
    let doomed = crate::retention::sparing_held(&infos, &[], &held, Some(limit));
    let doomed: Vec<&Manifest> = points
        .iter()
        .filter(|p| doomed.contains(&p.sequence))
        .collect();
    replica.delete_points(&doomed)?;
    Ok(())
}

/// Table pages written by one Put Page at most (4 MiB).
const TABLE_PAGES_PER_WRITE: u64 = pageblob::MAX_PUT_PAGES_BYTES / 512;

/// Write the digest-table pages in `pages` from `table` (zero blocks as all-zero entries).
fn write_table_pages(
    replica: &DiskReplica<'_>,
    table: &MerkleTree,
    pages: &BTreeSet<u64>,
    zero: &impl Fn(u64) -> [u8; 32],
) -> Result<(), CycleError> {
    let mut pages = pages.iter().copied().peekable();
    while let Some(first) = pages.next() {
        let mut last = first;
        while last - first + 1 < TABLE_PAGES_PER_WRITE && pages.peek() == Some(&(last + 1)) {
            last = pages.next().expect("peeked");
        }
        let start = first * ENTRIES_PER_PAGE;
        let end = ((last + 1) * ENTRIES_PER_PAGE).min(table.len());
        let entries: Vec<Option<[u8; 32]>> = (start..end)
            .map(|b| {
                let d = table.get(b);
                (d != zero(b)).then_some(d)
            })
            .collect();
        replica.store_digest_entries(start, &entries)?;
    }
    Ok(())
}

/// Store `table` whole (after a rebuild): the pages holding its non-zero entries are written,
/// every other page the table blob holds is cleared. What this costs follows the replica's
/// written blocks, not the disk's size.
fn store_whole_table(
    replica: &DiskReplica<'_>,
    table: &MerkleTree,
    zero: &impl Fn(u64) -> [u8; 32],
) -> Result<(), CycleError> {
    let pages: BTreeSet<u64> = table
        .held_leaves()
        .filter(|&(b, d)| d != zero(b))
        .map(|(b, _)| b / ENTRIES_PER_PAGE)
        .collect();
    let page_bytes = ENTRIES_PER_PAGE * crate::replica::disk_replica::DIGEST_ENTRY;
    for (start, end) in replica.written_digest_ranges()? {
        // Runs of pages in `start..end` that `pages` leaves out.
        let mut page = start / page_bytes;
        let last = end.div_ceil(page_bytes);
        while page < last {
            let kept_from = pages.range(page..last).next().copied().unwrap_or(last);
            if kept_from > page {
                replica.clear_digest_pages(page * page_bytes, (kept_from - page) * page_bytes)?;
            }
            page = kept_from + 1;
        }
    }
    write_table_pages(replica, table, &pages, zero)
}

/// A VHDX disk (or chain) as a source: unallocated and zero extents are never read.
/// A disk held in memory: its bytes, none of them unallocated.
impl BlockSource for [u8] {
    fn disk_size(&self) -> u64 {
        self.len() as u64
    }
    fn is_unallocated(&self, _offset: u64, _len: u64) -> bool {
        false
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(offset).ok().filter(|&s| s <= self.len());
        match start.and_then(|s| self.get(s..s.checked_add(buf.len())?)) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("read of {} bytes at {offset} past the end", buf.len()),
            )),
        }
    }
}

impl BlockSource for Vec<u8> {
    fn disk_size(&self) -> u64 {
        self.as_slice().disk_size()
    }
    fn is_unallocated(&self, offset: u64, len: u64) -> bool {
        self.as_slice().is_unallocated(offset, len)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.as_slice().read_at(offset, buf)
    }
}

impl BlockSource for vhdx::Disk {
    fn disk_size(&self) -> u64 {
        self.virtual_size()
    }
    fn is_unallocated(&self, offset: u64, len: u64) -> bool {
        self.map(offset, len)
            .is_ok_and(|segs| segs.iter().all(|s| s.kind != vhdx::ExtentKind::Data))
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        vhdx::Disk::read_at(self, offset, buf).map_err(std::io::Error::other)
    }
    /// From the block allocation table (and each child's sector bitmaps), a GiB at a time.
    fn data_ranges(&self) -> Option<Vec<(u64, u64)>> {
        const PIECE: u64 = 1 << 30;
        let size = self.virtual_size();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut at = 0;
        while at < size {
            let len = (size - at).min(PIECE);
            for seg in self.map(at, len).ok()? {
                if seg.kind != vhdx::ExtentKind::Data {
                    continue;
                }
                match ranges.last_mut() {
                    Some(last) if last.1 == seg.offset => last.1 = seg.offset + seg.len,
                    _ => ranges.push((seg.offset, seg.offset + seg.len)),
                }
            }
            at += len;
        }
        Some(ranges)
    }
    fn release(&self, offset: u64, len: u64) {
        vhdx::Disk::release(self, offset, len)
    }
    fn check_reads(&self) -> std::io::Result<()> {
        self.check_mapped().map_err(std::io::Error::other)
    }
}

/// A raw image file (or block device) as a source, memory-mapped: each block is copied out of
/// the map once, and each group's pages are released once it is done, so a big disk does not
/// fill the resident set. Holes of a sparse file are found with `SEEK_DATA`/`SEEK_HOLE`
/// when it is opened and are never read. A file that another process truncates while a cycle
/// runs does not end the process: the lost pages read as zeros and `check_reads` fails the
/// cycle before anything read from them is stored (see `vhdx::map_guard`).
#[derive(Debug)]
pub struct RawSource {
    file: vhdx::MappedFile,
    size: u64,
    /// Data extents `[start, end)`, ascending.
    data: Vec<(u64, u64)>,
}

/// Data extents listed per raw file before falling back to "all data".
const MAX_RAW_EXTENTS: usize = 1 << 20;

impl RawSource {
    /// Open a raw image or a block device (read at its real size). Anything else, and an
    /// empty disk, is an error: there is nothing to replicate.
    pub fn open(path: &std::path::Path) -> std::io::Result<RawSource> {
        let file = vhdx::MappedFile::open(path)?;
        let size = vhdx::ReadAt::len(&file);
        if size == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the disk is empty (0 bytes): nothing to replicate",
            ));
        }
        let data = data_extents(path, size)?;
        Ok(RawSource { file, size, data })
    }
}

impl RawSource {
    /// The replica name a raw file or block device gets when none is given: its name and a
    /// digest of its full path (`disk-1a2b3c4d5e6f7a8b`). A raw file carries no identity of
    /// its own (a VHDX has its Virtual Disk ID), and the name alone would make two `disk.raw`
    /// in different folders share one replica, its ids and its keys.
    pub fn default_name(path: &std::path::Path) -> std::io::Result<String> {
        let full = std::fs::canonicalize(path)?;
        let digest = blake3::hash(full.as_os_str().as_encoded_bytes());
        let stem = full
            .file_stem()
            .map_or_else(|| "disk".into(), |s| s.to_string_lossy().into_owned());
        let id = hex::encode(&digest.as_bytes()[..8]);
        Ok(format!("{stem}-{id}"))
    }
}

/// The data extents of a file; the whole file when the file system cannot tell.
fn data_extents(path: &std::path::Path, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use rustix::fs::SeekFrom;
    let whole = vec![(0, size)];
    let fd = std::fs::File::open(path)?;
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < size {
        let start = match rustix::fs::seek(&fd, SeekFrom::Data(at)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return Ok(whole),
        };
        let end = match rustix::fs::seek(&fd, SeekFrom::Hole(start)) {
            Ok(e) => e.min(size),
            Err(_) => return Ok(whole),
        };
        if end <= start || out.len() >= MAX_RAW_EXTENTS {
            return Ok(whole);
        }
        out.push((start, end));
        at = end;
    }
    Ok(out)
}

impl BlockSource for RawSource {
    fn disk_size(&self) -> u64 {
        self.size
    }
    fn is_unallocated(&self, offset: u64, len: u64) -> bool {
        // The first extent ending after `offset` must start at or past the range's end.
        let i = self.data.partition_point(|&(_, end)| end <= offset);
        self.data
            .get(i)
            .is_none_or(|&(start, _)| start >= offset + len)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        // Past the end reads as zeros (a caller may round the size up).
        let inside = self.size.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (head, tail) = buf.split_at_mut(inside);
        tail.fill(0);
        if head.is_empty() {
            return Ok(());
        }
        vhdx::ReadAt::read_at(&self.file, offset, head)
    }
    fn data_ranges(&self) -> Option<Vec<(u64, u64)>> {
        Some(self.data.clone())
    }
    fn release(&self, offset: u64, len: u64) {
        let len = len.min(self.size.saturating_sub(offset));
        vhdx::ReadAt::release(&self.file, offset, len)
    }
    fn check_reads(&self) -> std::io::Result<()> {
        vhdx::ReadAt::check_mapped(&self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_in_memory_are_a_source_and_a_read_past_their_end_is_an_error() {
        let disk = vec![7u8; 10_000];
        assert_eq!(disk.disk_size(), 10_000);
        assert!(!disk.is_unallocated(0, 4096));
        let mut buf = [0u8; 4096];
        disk.read_at(5_904, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        let err = disk.read_at(5_905, &mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(disk.read_at(u64::MAX, &mut buf).is_err());
    }
}
