//! The cycle engine end to end on the embedded store: scans and tracked cycles find exactly the
//! changed blocks, every point restores byte-exact, cycles interrupted by store failures leave
//! earlier points intact and the next cycle repairs the replica, retention deletes points and
//! their snapshots, and a resync sends only the blocks that differ.

use std::sync::Arc;

use datapath::cycle::{run_cycle, BlockSource, CycleError, CycleOptions, Selection};
use datapath::keys::Identity;
use datapath::replica::block_record::BlockCodec;
use datapath::replica::disk_replica::{DiskReplica, Layout};
use datapath::replica::manifest::Manifest;
use datapath::replica::nonce::NonceSource;
use pageblob::clock::ManualClock;
use pageblob::data_log::Durability;
use pageblob::faults::{FaultConfig, FaultyStore};
use pageblob::{Emulator, PageBlobStore, Profile};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

const BLOCK: u32 = 16384;
const SIZE: u64 = 40 * 16384 + 4096; // 40 full blocks and a short one

/// An in-memory disk whose first `unallocated` blocks report as unallocated (never read).
struct MemDisk {
    bytes: Vec<u8>,
    reads: std::sync::atomic::AtomicU64,
}

impl BlockSource for MemDisk {
    fn disk_size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn is_unallocated(&self, offset: u64, len: u64) -> bool {
        self.bytes[offset as usize..(offset + len) as usize]
            .iter()
            .all(|&b| b == 0)
            && offset < 8 * u64::from(BLOCK)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        buf.copy_from_slice(&self.bytes[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
}

fn identity() -> Identity {
    let clock = ManualClock::new(1_700_000_000_000_000_000);
    let (_, pfx) = datapath::registration::register("vault", "host", "pw", &clock).unwrap();
    Identity::from_pfx(&pfx, "pw").expect("test identity")
}

fn store(dir: &std::path::Path) -> Arc<Emulator> {
    Arc::new(
        Emulator::open(
            dir,
            Profile::Standard,
            Durability::Process,
            Arc::new(ManualClock::new(1_700_000_000_000_000_000)),
        )
        .unwrap(),
    )
}

fn layout() -> Layout {
    Layout {
        disk_size: SIZE,
        block_size: BLOCK,
    }
}

/// Overwrite `count` random blocks (some with zeros) and return which changed.
fn churn(disk: &mut MemDisk, rng: &mut ChaCha8Rng, count: usize) -> Vec<u64> {
    let blocks = SIZE.div_ceil(u64::from(BLOCK));
    let mut changed = std::collections::BTreeSet::new();
    for _ in 0..count {
        let b = 8 + rng.next_u64() % (blocks - 8);
        let start = (b * u64::from(BLOCK)) as usize;
        let end = (start + BLOCK as usize).min(disk.bytes.len());
        if rng.next_u32() % 4 == 0 {
            disk.bytes[start..end].fill(0);
        } else {
            for (i, v) in disk.bytes[start..end].iter_mut().enumerate() {
                *v = if i % 5 == 0 {
                    rng.next_u32() as u8
                } else {
                    b'x'
                };
            }
        }
        changed.insert(b);
    }
    changed.into_iter().collect()
}

fn restore(replica: &DiskReplica<'_>, identity: &Identity, point: &Manifest) -> Vec<u8> {
    let keys = identity.disk_keys("disk");
    let codec = BlockCodec::new(&keys, 1, true);
    let mut out = Vec::new();
    replica
        .restore(&codec, point, keys.digest.expose(), |_, b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
    out
}

/// One cycle of `disk` into `replica` with the test options.
fn cycle_on(
    replica: &DiskReplica<'_>,
    disk: &MemDisk,
    id: &Identity,
    nonces: &mut NonceSource,
    selection: Selection,
    t: u64,
) -> Result<datapath::cycle::CycleReport, CycleError> {
    let keys = id.disk_keys("disk");
    run_cycle(
        replica,
        disk,
        id,
        &keys,
        &options(selection, t),
        nonces,
        &|_| {},
    )
}

fn options(selection: Selection, t: u64) -> CycleOptions {
    CycleOptions {
        selection,
        upload_threads: 3,
        ..CycleOptions::scan(1_700_000_000_000_000_000 + t)
    }
}

#[test]
fn scans_and_tracked_cycles_restore_every_point_and_find_exactly_the_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let replica = DiskReplica::open(&*store, "replicas", "disk", layout()).unwrap();
    let id = identity();
    let keys = id.disk_keys("disk");
    let mut nonces = NonceSource::new_epoch(&mut ChaCha8Rng::seed_from_u64(1));
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut disk = MemDisk {
        bytes: vec![0; SIZE as usize],
        reads: Default::default(),
    };
    churn(&mut disk, &mut rng, 30);
    let mut images = Vec::new();
    let first = cycle_on(&replica, &disk, &id, &mut nonces, Selection::Scan, 0).unwrap();
    assert!(!first.table_rebuilt, "a new replica has nothing to rebuild");
    images.push(disk.bytes.clone());
    for cycle in 1..6u64 {
        let changed = churn(&mut disk, &mut rng, 5);
        let before = disk.reads.load(std::sync::atomic::Ordering::Relaxed);
        let selection = if cycle % 2 == 0 {
            Selection::Blocks(changed.clone())
        } else {
            Selection::Scan
        };
        let tracked = matches!(selection, Selection::Blocks(_));
        let report = cycle_on(&replica, &disk, &id, &mut nonces, selection, cycle).unwrap();
        images.push(disk.bytes.clone());
        assert_eq!(report.point.sequence, cycle);
        assert!(!report.table_rebuilt);
        // A block rewritten with zeros that were already zeros is no change.
        assert!(report.blocks_changed <= changed.len() as u64);
        assert!(report.blocks_changed + 2 >= changed.len() as u64);
        let reads = disk.reads.load(std::sync::atomic::Ordering::Relaxed) - before;
        if tracked {
            assert!(
                reads <= changed.len() as u64,
                "a tracked cycle read {reads}"
            );
        } else {
            // Unallocated blocks (the first 8 here) are never read.
            assert!(reads <= 33, "a scan read {reads} blocks");
        }
    }
    let points = replica.points(keys.digest.expose()).unwrap();
    assert_eq!(points.len(), 6);
    for (p, image) in points.iter().zip(&images) {
        assert!(
            restore(&replica, &id, p) == image[..],
            "point {}",
            p.sequence
        );
    }
}

/// A store in a fresh folder, a nonce epoch from `seed`, and a disk with 25 random writes
/// (more to come from the returned generator).
fn churned(
    seed: u64,
    workload_seed: u64,
) -> (
    tempfile::TempDir,
    Arc<Emulator>,
    NonceSource,
    ChaCha8Rng,
    MemDisk,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let nonces = NonceSource::new_epoch(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut rng = ChaCha8Rng::seed_from_u64(workload_seed);
    let mut disk = MemDisk {
        bytes: vec![0; SIZE as usize],
        reads: Default::default(),
    };
    churn(&mut disk, &mut rng, 25);
    (dir, store, nonces, rng, disk)
}

#[test]
fn interrupted_cycles_keep_earlier_points_and_the_next_cycle_repairs_the_replica() {
    let id = identity();
    let keys = id.disk_keys("disk");
    for seed in 0..6u64 {
        let (_dir, store, mut nonces, mut rng, mut disk) = churned(seed, 100 + seed);
        let replica = DiskReplica::open(&*store, "replicas", "disk", layout()).unwrap();
        cycle_on(&replica, &disk, &id, &mut nonces, Selection::Scan, 0).unwrap();
        let image0 = disk.bytes.clone();
        churn(&mut disk, &mut rng, 12);
        // Writes applied but answered 500: the cycle fails part-way.
        let faulty = FaultyStore::new(
            store.clone(),
            FaultConfig {
                seed,
                timeout_after_write: 0.15,
                ..FaultConfig::default()
            },
        );
        let broken = DiskReplica::open(&faulty, "replicas", "disk", layout()).unwrap();
        let failed = cycle_on(&broken, &disk, &id, &mut nonces, Selection::Scan, 1);
        assert!(matches!(failed, Err(CycleError::Replica(_))), "seed {seed}");
        let points = replica.points(keys.digest.expose()).unwrap();
        assert_eq!(
            points.len(),
            1,
            "seed {seed}: the failed cycle left no point"
        );
        assert!(restore(&replica, &id, &points[0]) == image0[..]);
        // The source changes again; a tracked cycle would miss nothing because the
        // replicator resends a failed cycle's blocks, but here a scan repairs everything.
        churn(&mut disk, &mut rng, 3);
        let report = cycle_on(&replica, &disk, &id, &mut nonces, Selection::Scan, 2).unwrap();
        assert_eq!(report.point.sequence, 1);
        let points = replica.points(keys.digest.expose()).unwrap();
        assert!(restore(&replica, &id, &points[0]) == image0[..]);
        assert!(restore(&replica, &id, &points[1]) == disk.bytes[..]);
        // The table written by this cycle is trusted again.
        let report = cycle_on(&replica, &disk, &id, &mut nonces, Selection::Scan, 3).unwrap();
        assert!(!report.table_rebuilt);
        assert_eq!(report.blocks_changed, 0);
    }
}

#[test]
fn a_torn_record_left_by_a_cut_write_is_found_and_sent_again() {
    // A Put Page cut short leaves a new slot header over partial payload. The next cycle
    // rebuilds the digest table; were the torn header's digest trusted, the block would never
    // be sent again and the next point would not restore.
    let id = identity();
    let keys = id.disk_keys("disk");
    let mut torn_seen = 0;
    for seed in 0..8u64 {
        let (_dir, store, mut nonces, mut rng, mut disk) = churned(seed, 200 + seed);
        let replica = DiskReplica::open(&*store, "replicas", "disk", layout()).unwrap();
        cycle_on(&replica, &disk, &id, &mut nonces, Selection::Scan, 0).unwrap();
        churn(&mut disk, &mut rng, 12);
        let faulty = FaultyStore::new(
            store.clone(),
            FaultConfig {
                seed,
                torn_write: 0.3,
                ..FaultConfig::default()
            },
        );
        let broken = DiskReplica::open(&faulty, "replicas", "disk", layout()).unwrap();
        if cycle_on(&broken, &disk, &id, &mut nonces, Selection::Scan, 1).is_err() {
            torn_seen += 1;
        }
        let report = cycle_on(&replica, &disk, &id, &mut nonces, Selection::Scan, 2).unwrap();
        let points = replica.points(keys.digest.expose()).unwrap();
        assert!(
            restore(&replica, &id, &points[points.len() - 1]) == disk.bytes[..],
            "seed {seed}: point {} restores the disk",
            report.point.sequence
        );
    }
    assert!(torn_seen >= 4, "torn writes broke {torn_seen} of 8 cycles");
}

#[test]
fn deleted_points_leave_the_journal_and_their_snapshots_go() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let replica = DiskReplica::open(&*store, "replicas", "disk", layout()).unwrap();
    let id = identity();
    let keys = id.disk_keys("disk");
    let mut nonces = NonceSource::new_epoch(&mut ChaCha8Rng::seed_from_u64(3));
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut disk = MemDisk {
        bytes: vec![0; SIZE as usize],
        reads: Default::default(),
    };
    let mut images = Vec::new();
    for t in 0..5 {
        churn(&mut disk, &mut rng, 6);
        cycle_on(&replica, &disk, &id, &mut nonces, Selection::Scan, t).unwrap();
        images.push(disk.bytes.clone());
    }
    let points = replica.points(keys.digest.expose()).unwrap();
    for p in [&points[0], &points[2]] {
        replica.delete_point(p).unwrap();
    }
    let live = replica.points(keys.digest.expose()).unwrap();
    let seqs: Vec<u64> = live.iter().map(|p| p.sequence).collect();
    assert_eq!(seqs, [1, 3, 4]);
    let snapshots = store
        .list_blobs("replicas", "", true)
        .unwrap()
        .into_iter()
        .filter(|b| b.name == "disk.replica" && b.properties.snapshot.is_some())
        .count();
    assert_eq!(snapshots, 3);
    for p in &live {
        assert!(restore(&replica, &id, p) == images[p.sequence as usize][..]);
    }
    // An orphan snapshot (a crash between snapshot and manifest) is swept.
    store.snapshot(&replica.data, &Default::default()).unwrap();
    assert_eq!(replica.sweep_orphans(&live).unwrap().swept, 1);
    // The next point continues the sequence.
    churn(&mut disk, &mut rng, 2);
    let r = cycle_on(&replica, &disk, &id, &mut nonces, Selection::Scan, 9).unwrap();
    assert_eq!(r.point.sequence, 5);
}

fn staged<'a>(store: &'a dyn PageBlobStore, log: &'a dyn PageBlobStore) -> DiskReplica<'a> {
    DiskReplica::open(store, "replicas", "disk", layout())
        .unwrap()
        .with_staging(log, "replication-log", "disk")
        .unwrap()
}

#[test]
fn premium_cycles_go_through_the_staging_log_and_a_committed_log_survives_a_crash() {
    let id = identity();
    let keys = id.disk_keys("disk");
    let premium = Profile::Premium {
        snapshot_spacing: false,
    };
    let (mut completed, mut discarded) = (0, 0);
    for seed in 0..16u64 {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
        let fast = Emulator::open(
            &dir.path().join("p"),
            premium,
            Durability::Process,
            clock.clone(),
        )
        .unwrap();
        let fast = Arc::new(fast);
        let log_store = store(&dir.path().join("s"));
        let mut nonces = NonceSource::new_epoch(&mut ChaCha8Rng::seed_from_u64(seed));
        let mut rng = ChaCha8Rng::seed_from_u64(500 + seed);
        let mut disk = MemDisk {
            bytes: vec![0; SIZE as usize],
            reads: Default::default(),
        };
        let replica = staged(&*fast, &*log_store);
        let mut images = Vec::new();
        for t in 0..2 {
            churn(&mut disk, &mut rng, 10);
            cycle_on(&replica, &disk, &id, &mut nonces, Selection::Scan, t).unwrap();
            images.push(disk.bytes.clone());
            let log = replica.staging.as_ref().unwrap();
            assert_eq!(log.used_end().unwrap(), 0, "an applied log is cleared");
        }
        // The premium store fails part-way through the next cycle.
        churn(&mut disk, &mut rng, 10);
        let at_crash = disk.bytes.clone();
        let faulty = FaultyStore::new(
            fast.clone(),
            FaultConfig {
                seed,
                timeout_after_write: 0.12,
                ..FaultConfig::default()
            },
        );
        let broken = staged(&faulty, &*log_store);
        let failed = cycle_on(&broken, &disk, &id, &mut nonces, Selection::Scan, 2);
        if failed.is_ok() {
            continue;
        }
        let committed_log = replica.staging.as_ref().unwrap().committed().unwrap();
        // The next cycle completes a committed log as point 2 (the disk at the crash), then
        // makes its own point from the disk as it is now.
        churn(&mut disk, &mut rng, 4);
        let report = cycle_on(&replica, &disk, &id, &mut nonces, Selection::Scan, 3).unwrap();
        let points = replica.points(keys.digest.expose()).unwrap();
        if committed_log.is_some() {
            completed += 1;
            assert_eq!(report.point.sequence, 3);
            assert!(
                restore(&replica, &id, &points[2]) == at_crash[..],
                "seed {seed}"
            );
        } else {
            discarded += 1;
            assert_eq!(report.point.sequence, 2);
        }
        assert!(restore(&replica, &id, points.last().unwrap()) == disk.bytes[..]);
        for (p, image) in points.iter().zip(&images) {
            assert!(restore(&replica, &id, p) == image[..], "seed {seed}");
        }
    }
    assert!(
        completed > 0 && discarded > 0,
        "{completed} completed, {discarded} discarded"
    );
}

/// `MemDisk` that records what the cycle releases (as a mapped file drops those pages).
struct ReleasingDisk {
    disk: MemDisk,
    released: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl BlockSource for ReleasingDisk {
    fn disk_size(&self) -> u64 {
        self.disk.disk_size()
    }
    fn is_unallocated(&self, offset: u64, len: u64) -> bool {
        self.disk.is_unallocated(offset, len)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.disk.read_at(offset, buf)
    }
    fn release(&self, offset: u64, len: u64) {
        self.released.lock().unwrap().push((offset, len));
    }
}

/// Every file under `dir` (relative name, bytes), sorted by name.
fn tree(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().to_path_buf();
                out.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_releasing_source_stores_the_same_bytes_and_gets_every_block_it_read_released() {
    let id = identity();
    let mut bytes = MemDisk {
        bytes: vec![0; SIZE as usize],
        reads: Default::default(),
    };
    churn(&mut bytes, &mut ChaCha8Rng::seed_from_u64(3), 30);
    let blocks = SIZE.div_ceil(u64::from(BLOCK));
    let tail = (blocks - 1) * u64::from(BLOCK);
    bytes.bytes[tail as usize..].fill(b't');
    let releasing = ReleasingDisk {
        disk: MemDisk {
            bytes: bytes.bytes.clone(),
            reads: Default::default(),
        },
        released: Default::default(),
    };
    let mut stores = Vec::new();
    for source in [&bytes as &dyn BlockSource, &releasing] {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let replica = DiskReplica::open(&*store, "replicas", "disk", layout()).unwrap();
        let mut nonces = NonceSource::new_epoch(&mut ChaCha8Rng::seed_from_u64(1));
        let keys = id.disk_keys("disk");
        run_cycle(
            &replica,
            source,
            &id,
            &keys,
            // Stored from this thread in block order, so the store's files are comparable.
            &CycleOptions {
                upload_threads: 0,
                ..options(Selection::Scan, 0)
            },
            &mut nonces,
            &|_| {},
        )
        .unwrap();
        drop(replica);
        drop(store);
        stores.push((tree(dir.path()), dir));
    }
    assert!(!stores[0].0.is_empty());
    assert!(
        stores[0].0 == stores[1].0,
        "the same disk stored differently"
    );
    // Every allocated block was read once (one copy each); every block was released after
    // its group.
    assert_eq!(
        releasing
            .disk
            .reads
            .load(std::sync::atomic::Ordering::Relaxed),
        blocks - 8
    );
    let released = releasing.released.into_inner().unwrap();
    let mut covered = vec![false; blocks as usize];
    for (offset, len) in released {
        let first = offset / u64::from(BLOCK);
        let last = (offset + len).div_ceil(u64::from(BLOCK));
        covered[first as usize..last as usize].fill(true);
    }
    assert!(
        covered.iter().all(|&c| c),
        "blocks never released: {covered:?}"
    );
}

#[cfg(target_os = "linux")]
#[test]
fn a_raw_disk_truncated_during_a_cycle_fails_it_and_keeps_the_points() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir.path().join("store"));
    let replica = DiskReplica::open(&*store, "replicas", "disk", layout()).unwrap();
    let id = identity();
    let keys = id.disk_keys("disk");
    let mut nonces = NonceSource::new_epoch(&mut ChaCha8Rng::seed_from_u64(1));
    let mut disk = MemDisk {
        bytes: vec![0; SIZE as usize],
        reads: Default::default(),
    };
    churn(&mut disk, &mut ChaCha8Rng::seed_from_u64(5), 30);
    disk.bytes[..(8 * BLOCK) as usize].fill(b'h');
    let path = dir.path().join("disk.raw");
    std::fs::write(&path, &disk.bytes).unwrap();
    let source = datapath::cycle::RawSource::open(&path).unwrap();
    let options = options(Selection::Scan, 0);
    let mut cycle = || {
        run_cycle(
            &replica,
            &source,
            &id,
            &keys,
            &options,
            &mut nonces,
            &|_| {},
        )
    };
    cycle().unwrap();
    // Another process cuts the file while it is mapped: the next cycle reads pages that are
    // gone. It must fail with an error naming the cause, store nothing, and not end the
    // process (SIGBUS).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(SIZE / 3)
        .unwrap();
    let err = cycle().expect_err("the cycle read a shrunk file");
    assert!(matches!(err, CycleError::Source { .. }), "{err:?}");
    assert!(err.to_string().contains("shrank"), "{err}");
    let points = replica.points(keys.digest.expose()).unwrap();
    assert_eq!(points.len(), 1, "no point from the failed cycle");
    assert!(restore(&replica, &id, &points[0]) == disk.bytes[..]);
}

/// A raw file written by another thread while cycles read it: each block is copied once and
/// digested, compressed and encrypted from that copy, so every committed point restores and
/// proves its Merkle root (the blocks of a point read during writes are each some version of
/// that block, not a crash-consistent whole: documented in docs/replicator.md).
#[cfg(target_os = "linux")]
#[test]
fn a_disk_written_during_cycles_still_gets_points_that_all_restore() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir.path().join("store"));
    let replica = DiskReplica::open(&*store, "replicas", "disk", layout()).unwrap();
    let id = identity();
    let keys = id.disk_keys("disk");
    let mut nonces = NonceSource::new_epoch(&mut ChaCha8Rng::seed_from_u64(1));
    let mut disk = MemDisk {
        bytes: vec![0; SIZE as usize],
        reads: Default::default(),
    };
    churn(&mut disk, &mut ChaCha8Rng::seed_from_u64(9), 40);
    let path = dir.path().join("disk.raw");
    std::fs::write(&path, &disk.bytes).unwrap();
    let source = datapath::cycle::RawSource::open(&path).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let writes = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            // A hot spot: 4 KiB writes anywhere in blocks 10-11, as fast as they go.
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(77);
            let mut page = vec![0u8; 4096];
            let mut writes = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                rng.fill_bytes(&mut page[..64]);
                let fill = page[0];
                page[64..].fill(fill);
                let at = 10 * u64::from(BLOCK) + (rng.next_u64() % 8) * 4096;
                file.write_all_at(&page, at).unwrap();
                writes += 1;
            }
            writes
        });
        for cycle in 0..15 {
            run_cycle(
                &replica,
                &source,
                &id,
                &keys,
                &options(Selection::Scan, cycle),
                &mut nonces,
                &|_| {},
            )
            .unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap()
    });
    assert!(writes > 0);
    let points = replica.points(keys.digest.expose()).unwrap();
    assert_eq!(points.len(), 15);
    let codec = BlockCodec::new(&keys, 1, true);
    for p in &points {
        replica
            .restore(&codec, p, keys.digest.expose(), |_, _| Ok(()))
            .unwrap_or_else(|e| panic!("point {} does not restore: {e}", p.sequence));
    }
}

/// At the premium limit (100 snapshots), a cycle a crash left committed in the staging log
/// must still become a point, and the next cycle must commit its own: room is made (oldest
/// points first, as retention's limit rule does) before each snapshot. Without it every later
/// cycle failed with 409 SnapshotCountExceeded, forever.
#[test]
fn a_cycle_staged_at_the_snapshot_limit_commits_and_the_next_cycle_too() {
    let id = identity();
    let keys = id.disk_keys("disk");
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
    let premium = Profile::Premium {
        snapshot_spacing: false,
    };
    let fast = Arc::new(
        Emulator::open(&dir.path().join("p"), premium, Durability::Process, clock).unwrap(),
    );
    let log_store = store(&dir.path().join("s"));
    let replica = staged(&*fast, &*log_store);
    let mut nonces = NonceSource::new_epoch(&mut ChaCha8Rng::seed_from_u64(4));
    let mut rng = ChaCha8Rng::seed_from_u64(44);
    let mut disk = MemDisk {
        bytes: vec![0; SIZE as usize],
        reads: Default::default(),
    };
    let limited = |t| CycleOptions {
        snapshot_limit: Some(100),
        ..options(Selection::Scan, t)
    };
    let run = |replica: &DiskReplica<'_>, disk: &MemDisk, nonces: &mut NonceSource, t| {
        run_cycle(replica, disk, &id, &keys, &limited(t), nonces, &|_| {})
    };
    for t in 0..99 {
        churn(&mut disk, &mut rng, 1);
        run(&replica, &disk, &mut nonces, t).unwrap();
    }
    assert_eq!(replica.points(keys.digest.expose()).unwrap().len(), 99);
    // The next cycle is staged and committed in the log, then every write to the premium
    // blob fails: the point is owed.
    churn(&mut disk, &mut rng, 3);
    let staged_image = disk.bytes.clone();
    // Premium writes fail at random until one attempt fails after its log was committed.
    let mut seed = 0;
    while replica
        .staging
        .as_ref()
        .unwrap()
        .committed()
        .unwrap()
        .is_none()
    {
        seed += 1;
        assert!(seed < 200, "no attempt left a committed log");
        let faulty = FaultyStore::new(
            fast.clone(),
            FaultConfig {
                seed,
                timeout_after_write: 0.3,
                ..FaultConfig::default()
            },
        );
        let broken = staged(&faulty, &*log_store);
        if run(&broken, &disk, &mut nonces, 99).is_ok() {
            panic!("seed {seed}: the cycle met no fault");
        }
    }
    // A reader holds the oldest point meanwhile.
    let hold = replica
        .hold_point(0, &mut ChaCha8Rng::seed_from_u64(45))
        .unwrap();
    // The next run completes the staged point and commits its own, within the limit.
    churn(&mut disk, &mut rng, 3);
    let report = run(&replica, &disk, &mut nonces, 100).unwrap();
    let points = replica.points(keys.digest.expose()).unwrap();
    assert_eq!(report.point.sequence, 100);
    // Point 1, the oldest not held, made room; 0, 2-99 and the new point 100 fill the limit
    // exactly.
    let sequences: Vec<u64> = points.iter().map(|p| p.sequence).collect();
    assert_eq!(points.len(), 100, "{sequences:?}");
    assert!(
        sequences.contains(&0) && !sequences.contains(&1),
        "{sequences:?}"
    );
    replica.release_hold(hold).unwrap();
    let snapshots = fast
        .list_blobs("replicas", "", true)
        .unwrap()
        .into_iter()
        .filter(|b| b.name == "disk.replica" && b.properties.snapshot.is_some())
        .count();
    assert!(snapshots <= 100, "{snapshots} snapshots");
    let staged_point = points.iter().find(|p| p.sequence == 99).unwrap();
    assert!(restore(&replica, &id, staged_point) == staged_image[..]);
    assert!(restore(&replica, &id, points.last().unwrap()) == disk.bytes[..]);
}

/// The same at every write of that cycle: a premium replica at its limit, a crash (a torn
/// write, then nothing) at write k of the next cycle, for every k; after the restart the next
/// cycle always commits, the snapshots stay within the limit, a staged point restores to the
/// disk it staged, and the new point to the disk now.
#[test]
fn a_crash_at_every_write_of_a_cycle_at_the_snapshot_limit_never_wedges_the_replica() {
    use pageblob::fs::StoreFs;
    use pageblob::memory_fs::CrashFs;
    let id = identity();
    let keys = id.disk_keys("disk");
    let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
    let premium = Profile::Premium {
        snapshot_spacing: false,
    };
    let open_pair = |fs: &Arc<CrashFs>| {
        let open = |dir: &str, profile| {
            Emulator::open_with_fs(
                Arc::new(Arc::clone(fs)) as Arc<dyn StoreFs>,
                std::path::Path::new(dir),
                profile,
                Durability::Process,
                clock.clone(),
            )
        };
        Ok::<_, pageblob::StoreError>((
            open("/premium", premium)?,
            open("/log", Profile::Standard)?,
        ))
    };
    let limited = |t| CycleOptions {
        snapshot_limit: Some(100),
        upload_threads: 0,
        ..options(Selection::Scan, t)
    };
    let cycle = |replica: &DiskReplica<'_>, disk: &MemDisk, seed: u64, t: u64| {
        let mut nonces = NonceSource::new_epoch(&mut ChaCha8Rng::seed_from_u64(seed));
        run_cycle(replica, disk, &id, &keys, &limited(t), &mut nonces, &|_| {})
    };
    let disk_of = |bytes: &Vec<u8>| MemDisk {
        bytes: bytes.clone(),
        reads: Default::default(),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut disk = disk_of(&vec![0; SIZE as usize]);
    let base = CrashFs::new();
    {
        let (p, s) = open_pair(&base).unwrap();
        let replica = staged(&p, &s);
        for t in 0..99 {
            churn(&mut disk, &mut rng, 1);
            cycle(&replica, &disk, t, t).unwrap();
        }
        assert_eq!(replica.points(keys.digest.expose()).unwrap().len(), 99);
    }
    churn(&mut disk, &mut rng, 3);
    let at_cut = disk.bytes.clone();
    churn(&mut disk, &mut rng, 2);
    let after = disk.bytes.clone();
    let mut k = 0;
    loop {
        let fs = base.fork();
        fs.crash_after(k, 7);
        let outcome = open_pair(&fs)
            .map_err(|e| e.to_string())
            .and_then(|(p, s)| {
                cycle(&staged(&p, &s), &disk_of(&at_cut), 500 + k, 99).map_err(|e| e.to_string())
            });
        if !fs.has_crashed() {
            outcome.unwrap();
            break;
        }
        fs.restart();
        let (p, s) = open_pair(&fs).unwrap();
        let replica = staged(&p, &s);
        let report = cycle(&replica, &disk_of(&after), 900 + k, 100)
            .unwrap_or_else(|e| panic!("crash at write {k}: the next cycle failed: {e}"));
        let points = replica.points(keys.digest.expose()).unwrap();
        let snapshots = p
            .list_blobs("replicas", "", true)
            .unwrap()
            .into_iter()
            .filter(|b| b.name == "disk.replica" && b.properties.snapshot.is_some())
            .count();
        assert!(
            snapshots <= 100,
            "crash at write {k}: {snapshots} snapshots"
        );
        assert!(
            restore(&replica, &id, &report.point) == after[..],
            "crash at write {k}"
        );
        if let Some(staged_point) = points.iter().find(|p| p.sequence == 99) {
            if report.point.sequence == 100 {
                assert!(
                    restore(&replica, &id, staged_point) == at_cut[..],
                    "crash at write {k}: the staged point"
                );
            }
        }
        k += 1;
    }
    assert!(k > 10, "the cycle made only {k} writes");
}

/// A cycle killed at each of its writes, that write torn at several lengths, then the same
/// disk replicated again: the rerun's digests equal the headers the
/// interrupted cycle left, so a torn slot the store's diff does not list must still be found
/// (its payload checksum), or the next point would hold it. Every point restores.
#[test]
fn a_rerun_after_a_cycle_torn_at_every_write_never_commits_a_torn_slot() {
    use pageblob::fs::StoreFs;
    use pageblob::memory_fs::CrashFs;
    let id = identity();
    let keys = id.disk_keys("disk");
    let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
    let cycle = |replica: &DiskReplica<'_>, disk: &MemDisk, seed: u64, t: u64| {
        let mut nonces = NonceSource::new_epoch(&mut ChaCha8Rng::seed_from_u64(seed));
        run_cycle(
            replica,
            disk,
            &id,
            &keys,
            &options(Selection::Scan, t),
            &mut nonces,
            &|_| {},
        )
    };
    let disk_of = |bytes: &Vec<u8>| MemDisk {
        bytes: bytes.clone(),
        reads: Default::default(),
    };
    // A killed process (the files as the writes left them) and, at `Power` durability, a power
    // cut (only what was synced, and the torn prefix of the write the cut hit).
    for durability in [Durability::Process, Durability::Power] {
        let open = |fs: &Arc<CrashFs>| {
            Emulator::open_with_fs(
                Arc::new(Arc::clone(fs)) as Arc<dyn StoreFs>,
                std::path::Path::new("/store"),
                Profile::Standard,
                durability,
                clock.clone(),
            )
        };
        let mut rng = ChaCha8Rng::seed_from_u64(31);
        let mut disk = disk_of(&vec![0; SIZE as usize]);
        churn(&mut disk, &mut rng, 12);
        let first = disk.bytes.clone();
        let base = CrashFs::new();
        {
            let store = open(&base).unwrap();
            let replica = DiskReplica::open(&store, "replicas", "disk", layout()).unwrap();
            cycle(&replica, &disk, 1, 1).unwrap();
        }
        churn(&mut disk, &mut rng, 6);
        let second = disk.bytes.clone();
        let mut k = 0;
        loop {
            let mut finished = false;
            for torn in [7, 600, 4096 + 512 + 100] {
                let fs = base.fork();
                fs.crash_after(k, torn);
                let outcome = open(&fs).map_err(|e| e.to_string()).and_then(|store| {
                    let replica = DiskReplica::open(&store, "replicas", "disk", layout())
                        .map_err(|e| e.to_string())?;
                    cycle(&replica, &disk_of(&second), 100 + k, 2).map_err(|e| e.to_string())
                });
                if !fs.has_crashed() {
                    outcome.unwrap();
                    finished = true;
                    break;
                }
                match durability {
                    Durability::Process => fs.restart(),
                    Durability::Power => fs.restart_after_power_loss(),
                }
                let store = open(&fs).unwrap_or_else(|e| {
                    panic!("{durability:?}, crash at write {k} (torn {torn}): reopen: {e}")
                });
                let replica = DiskReplica::open(&store, "replicas", "disk", layout()).unwrap();
                let report = cycle(&replica, &disk_of(&second), 900 + k, 3).unwrap_or_else(|e| {
                    panic!("{durability:?}, crash at write {k} (torn {torn}): rerun failed: {e}")
                });
                for point in replica.points(keys.digest.expose()).unwrap() {
                    let want = if point.sequence == 0 { &first } else { &second };
                    assert!(
                        restore(&replica, &id, &point) == want[..],
                        "{durability:?}, crash at write {k} (torn {torn}): point {} (rerun made {})",
                        point.sequence,
                        report.point.sequence
                    );
                }
            }
            if finished {
                break;
            }
            k += 1;
        }
        assert!(k > 10, "the cycle made only {k} writes");
    }
}
