//! The pipeline and the restore on pools of 1 to 16 threads, on an in-memory disk that costs
//! nothing to read (so the threads meet as often as they can): a pool of N threads has N
//! blocks under way at once (nothing in the pipeline lets one through at a time), the
//! replica's bytes do not depend on the thread count, every restore gives the disk back with
//! its blocks in order whichever way the store is read, and a damaged record stops a restore at
//! the first damaged block, after exactly the blocks before it. A chain of points verified by
//! their changes (`point_chain`) passes and fails exactly where full restores do.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use datapath::cycle::{run_cycle, BlockSource, CycleOptions, CycleReport, Selection};
use datapath::keys::Identity;
use datapath::replica::block_record::BlockCodec;
use datapath::replica::disk_replica::{DiskReplica, Layout};
use datapath::replica::error::ReplicaError;
use datapath::replica::manifest::Manifest;
use datapath::replica::nonce::NonceSource;
use datapath::replica::point_chain::PointChain;
use datapath::replica::restore::Fetch;
use datapath::replica::slot_header::HEADER_SIZE;
use pageblob::clock::ManualClock;
use pageblob::data_log::Durability;
use pageblob::faults::{FaultConfig, FaultyStore};
use pageblob::{Conditions, Emulator, PageBlobStore, Profile};

const BLOCK: u32 = 16384;
/// 300 blocks and a short one: three groups of 128 blocks for the cycle and the restore.
const SIZE: u64 = 300 * 16384 + 1024;
const T0: u64 = 1_700_000_000_000_000_000;

/// Text-like blocks, some zero, some incompressible, a few repeated.
fn disk() -> Vec<u8> {
    let mut bytes = vec![0u8; SIZE as usize];
    let mut state = 7u64;
    for (i, block) in bytes.chunks_mut(BLOCK as usize).enumerate() {
        match i % 7 {
            0 => {}
            1 | 4 => {
                for v in block.iter_mut() {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    *v = (state >> 56) as u8;
                }
            }
            _ => {
                for (j, v) in block.iter_mut().enumerate() {
                    *v = b"the quick brown fox "[(i + j) % 20] ^ (j / 997) as u8;
                }
            }
        }
    }
    bytes
}

fn store(dir: &std::path::Path) -> Emulator {
    Emulator::open(
        dir,
        Profile::Standard,
        Durability::Process,
        Arc::new(ManualClock::new(T0)),
    )
    .unwrap()
}

/// `store` as a store across a network looks to a restore: it does not answer promptly (a
/// microsecond of latency per call), so records are read in batches (`read_batch`).
fn across_a_network(store: &Arc<Emulator>) -> FaultyStore<Arc<Emulator>> {
    let remote = FaultyStore::new(
        Arc::clone(store),
        FaultConfig {
            latency: Duration::from_micros(1),
            ..FaultConfig::default()
        },
    );
    assert!(!remote.answers_promptly() && store.answers_promptly());
    remote
}

fn layout() -> Layout {
    Layout {
        disk_size: SIZE,
        block_size: BLOCK,
    }
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// One scan cycle (nonce epoch 9) on `threads` threads; the point and the data blob's bytes.
fn replicate(
    store: &dyn PageBlobStore,
    id: &Identity,
    disk: &[u8],
    threads: usize,
) -> (Manifest, Vec<u8>) {
    let options = CycleOptions {
        upload_threads: 3,
        ..CycleOptions::scan(T0)
    };
    cycle_with(store, id, disk, threads, &options, 9)
}

/// One cycle as `options` say (nonces of `epoch`) on `threads` threads; the point and the
/// data blob's bytes.
fn cycle_with(
    store: &dyn PageBlobStore,
    id: &Identity,
    disk: &[u8],
    threads: usize,
    options: &CycleOptions,
    epoch: u64,
) -> (Manifest, Vec<u8>) {
    let replica = DiskReplica::open(store, "replicas", "disk", layout()).unwrap();
    let report = cycle_of(&replica, &disk, id, threads, options, epoch);
    let mut blob = vec![0u8; (layout().blocks() * layout().slot_size()) as usize];
    store.read(&replica.data, None, 0, &mut blob).unwrap();
    (report.point, blob)
}

/// One cycle of `replica` (disk keys of "disk") from `source` on `threads` threads, as
/// `options` say, with nonces of `epoch`.
fn cycle_of(
    replica: &DiskReplica<'_>,
    source: &dyn BlockSource,
    id: &Identity,
    threads: usize,
    options: &CycleOptions,
    epoch: u64,
) -> CycleReport {
    let keys = id.disk_keys("disk");
    pool(threads)
        .install(|| {
            run_cycle(
                replica,
                source,
                id,
                &keys,
                options,
                &mut NonceSource::for_epoch(epoch),
                &|_| {},
            )
        })
        .unwrap()
}

/// A restored block: its index and bytes.
type Block = (u64, Vec<u8>);

/// Restore `point` on `threads` threads; the blocks as the sink saw them, in its order.
fn restore(
    store: &dyn PageBlobStore,
    id: &Identity,
    point: &Manifest,
    threads: usize,
    fetch: Fetch,
) -> (Vec<Block>, Result<(), ReplicaError>) {
    let replica = DiskReplica::open(store, "replicas", "disk", layout()).unwrap();
    let keys = id.disk_keys("disk");
    let codec = BlockCodec::new(&keys, 1, true);
    let mut seen = Vec::new();
    let outcome = pool(threads).install(|| {
        replica.restore_with(
            &codec,
            point,
            keys.digest.expose(),
            fetch,
            |block, data, digest| {
                let len = layout().block_len(block) as usize;
                let bytes = data.map_or_else(|| vec![0; len], <[u8]>::to_vec);
                // Each block comes with the digest its bytes were checked against.
                assert_eq!(*digest, codec.digest(&bytes), "block {block}'s digest");
                seen.push((block, bytes));
                Ok(())
            },
        )
    });
    (seen, outcome)
}

fn identity() -> Identity {
    let (_, pfx) =
        datapath::registration::register("vault", "host", "pw", &ManualClock::new(T0)).unwrap();
    Identity::from_pfx(&pfx, "pw").unwrap()
}

/// A disk in memory whose reads wait for one another: each waits until `want` reads are under
/// way at once (then none waits again), or, the first time that takes longer than a generous
/// limit, gives up for good. `peak` is the most reads that were ever under way together.
struct Rendezvous<'a> {
    bytes: &'a [u8],
    want: usize,
    state: Mutex<Meeting>,
    met: Condvar,
}

#[derive(Default)]
struct Meeting {
    under_way: usize,
    peak: usize,
    given_up: bool,
}

impl<'a> Rendezvous<'a> {
    /// Far longer than `want` idle threads need to pick up a block each, on any machine.
    const PATIENCE: Duration = Duration::from_secs(30);

    fn new(bytes: &'a [u8], want: usize) -> Rendezvous<'a> {
        Rendezvous {
            bytes,
            want,
            state: Mutex::new(Meeting::default()),
            met: Condvar::new(),
        }
    }

    fn peak(&self) -> usize {
        self.state.lock().unwrap().peak
    }
}

impl BlockSource for Rendezvous<'_> {
    fn disk_size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn is_unallocated(&self, _offset: u64, _len: u64) -> bool {
        false
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let mut m = self.state.lock().unwrap();
        m.under_way += 1;
        m.peak = m.peak.max(m.under_way);
        if m.peak >= self.want {
            self.met.notify_all();
        }
        let deadline = Instant::now() + Self::PATIENCE;
        while m.peak < self.want && !m.given_up {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                m.given_up = true;
                self.met.notify_all();
                break;
            }
            m = self.met.wait_timeout(m, left).unwrap().0;
        }
        m.under_way -= 1;
        drop(m);
        self.bytes.read_at(offset, buf)
    }
}

/// What a pipeline with a serial part cannot do, shown on any number of cores: on a pool of N
/// threads (up to 16, on a 2-core machine too) the initial replication has N blocks read and
/// examined side by side. A lock around the examination, a source read one block at a time,
/// or groups handed to the pool one by one and awaited would keep the peak below N (checked
/// with the examination under a lock: the peak stays 1). The cycle's own counters of its
/// serial part come with the report, and the replica restores.
#[test]
fn a_pool_of_n_threads_has_n_blocks_under_way_at_once() {
    let id = identity();
    let disk = disk();
    for threads in [2, 4, 8, 16] {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let source = Rendezvous::new(&disk, threads);
        let replica = DiskReplica::open(&store, "replicas", "disk", layout()).unwrap();
        let options = CycleOptions {
            upload_threads: 3,
            ..CycleOptions::scan(T0)
        };
        let report = cycle_of(&replica, &source, &id, threads, &options, threads as u64);
        assert_eq!(
            source.peak(),
            threads,
            "blocks under way at once, {threads} threads"
        );
        let stored = disk
            .chunks(BLOCK as usize)
            .filter(|b| b.iter().any(|&x| x != 0))
            .count() as u64;
        assert_eq!(report.blocks_changed, stored, "{threads} threads");
        let serial = report.serial_cpu_seconds.expect("a thread CPU clock");
        assert!(serial > 0.0 && serial < report.seconds * 2.0, "{serial}");
        let (seen, outcome) = restore(&store, &id, &report.point, threads, Fetch::Parallel);
        outcome.unwrap();
        let restored: Vec<u8> = seen.into_iter().flat_map(|(_, d)| d).collect();
        assert!(restored == disk, "restore, {threads} threads");
    }
}

#[test]
fn the_replica_and_its_restores_do_not_depend_on_the_number_of_threads() {
    let id = identity();
    let disk = disk();
    let mut first: Option<(Manifest, Vec<u8>)> = None;
    for threads in [1, 2, 3, 8] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(store(dir.path()));
        let (point, blob) = replicate(&*store, &id, &disk, threads);
        match &first {
            None => first = Some((point.clone(), blob)),
            Some((p, b)) => {
                assert_eq!(point.merkle_root, p.merkle_root, "{threads} threads");
                assert!(blob == *b, "the data blob differs on {threads} threads");
            }
        }
        let remote = across_a_network(&store);
        let stores: [(&dyn PageBlobStore, &str); 2] = [(&*store, "local"), (&remote, "remote")];
        for restore_threads in [1, 2, 5] {
            for fetch in [Fetch::Parallel, Fetch::InOrder] {
                for (from, name) in stores {
                    let (seen, outcome) = restore(from, &id, &point, restore_threads, fetch);
                    outcome.unwrap();
                    let order: Vec<u64> = seen.iter().map(|(b, _)| *b).collect();
                    assert_eq!(order, (0..layout().blocks()).collect::<Vec<_>>());
                    let bytes: Vec<u8> = seen.into_iter().flat_map(|(_, d)| d).collect();
                    assert!(
                        bytes == disk,
                        "{restore_threads} threads, {fetch:?}, {name}"
                    );
                }
            }
        }
        assert!(remote.reads() > 0, "the remote store was read");
    }
}

/// Deltas of 1 to 9 blocks (examined one by one, split between this thread and the pool, or
/// on the pool) with and without writer threads, on 1, 2 and 8 threads: the same bytes, and
/// every point restores the disk as it was.
#[test]
fn small_deltas_do_not_depend_on_the_number_of_threads_either() {
    let id = identity();
    let base = disk();
    for changed in 1..=9u64 {
        let mut disk = base.clone();
        let blocks: Vec<u64> = (0..changed).map(|i| 3 + i * 31).collect();
        for &b in &blocks {
            let at = (b * u64::from(BLOCK)) as usize;
            disk[at..at + 100].fill(changed as u8 + 1);
        }
        let mut first: Option<Vec<u8>> = None;
        for (threads, upload_threads) in [(1, 0), (2, 0), (8, 0), (1, 3), (2, 3), (8, 3)] {
            let dir = tempfile::tempdir().unwrap();
            let store = store(dir.path());
            replicate(&store, &id, &base, 1);
            let options = CycleOptions {
                selection: Selection::Blocks(blocks.clone()),
                upload_threads,
                ..CycleOptions::scan(T0 + 1_000_000_000)
            };
            let (point, blob) = cycle_with(&store, &id, &disk, threads, &options, 10);
            let what = format!("{changed} blocks, {threads} threads, {upload_threads} writers");
            match &first {
                None => first = Some(blob),
                Some(b) => assert!(blob == *b, "the data blob differs: {what}"),
            }
            let (seen, outcome) = restore(&store, &id, &point, 2, Fetch::Parallel);
            outcome.unwrap();
            let bytes: Vec<u8> = seen.into_iter().flat_map(|(_, d)| d).collect();
            assert!(bytes == disk, "restore: {what}");
        }
    }
}

/// Flip a bit of the stored payload of `block`'s record in the live blob (its slot's first
/// pages written again): the next point holds a damaged record.
fn damage_payload(store: &dyn PageBlobStore, replica: &DiskReplica<'_>, block: u64) {
    let at = layout().slot_offset(block);
    let mut page = vec![0u8; 1024];
    store.read(&replica.data, None, at, &mut page).unwrap();
    page[HEADER_SIZE + 100] ^= 0x40;
    store
        .put_pages(&replica.data, at, &page, &Conditions::default())
        .unwrap();
}

#[test]
fn a_damaged_record_stops_the_restore_at_the_first_damaged_block() {
    let id = identity();
    let disk = disk();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(store(dir.path()));
    replicate(&*store, &id, &disk, 2);
    // Damage the payloads of blocks 200 and 250 (both stored: 200 % 7 and 250 % 7 are not
    // 0), then commit a point that holds them (a cycle that changes nothing).
    let replica = DiskReplica::open(&*store, "replicas", "disk", layout()).unwrap();
    for block in [250u64, 200] {
        damage_payload(&*store, &replica, block);
    }
    let keys = id.disk_keys("disk");
    let damaged = run_cycle(
        &replica,
        &disk,
        &id,
        &keys,
        &CycleOptions {
            selection: Selection::Blocks(Vec::new()),
            ..CycleOptions::scan(T0 + 1)
        },
        &mut NonceSource::for_epoch(10),
        &|_| {},
    )
    .unwrap()
    .point;
    let remote = across_a_network(&store);
    let stores: [(&dyn PageBlobStore, &str); 2] = [(&*store, "local"), (&remote, "remote")];
    for threads in [1, 4] {
        for fetch in [Fetch::Parallel, Fetch::InOrder] {
            for (from, name) in stores {
                let (seen, outcome) = restore(from, &id, &damaged, threads, fetch);
                match outcome {
                    Err(ReplicaError::Block { block: 200, .. }) => {}
                    other => panic!("{threads} threads, {fetch:?}, {name}: {other:?}"),
                }
                let order: Vec<u64> = seen.iter().map(|(b, _)| *b).collect();
                assert_eq!(order, (0..200).collect::<Vec<_>>(), "{fetch:?}, {name}");
            }
        }
    }
}

/// The outcome of verifying one point both ways: restored in full, and by its changes.
type BothWays = (Result<(), String>, Result<(u64, bool), String>);

/// The disk replicated, then one cycle per entry of `cycles` (blocks written with a fill
/// byte; a fill that is a multiple of 4 writes a zero block), with the payload of
/// `damage.1`'s record damaged in the store before cycle `damage.0` commits (when its slot
/// holds one). Every point then verified in full and by its changes, oldest first.
fn chain_both_ways(cycles: &[Vec<(u64, u8)>], damage: Option<(usize, u64)>) -> Vec<BothWays> {
    let id = identity();
    let keys = id.disk_keys("disk");
    let codec = BlockCodec::new(&keys, 1, true);
    let mut disk = disk();
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    replicate(&store, &id, &disk, 2);
    let replica = DiskReplica::open(&store, "replicas", "disk", layout()).unwrap();
    for (i, writes) in cycles.iter().enumerate() {
        for &(block, fill) in writes {
            let at = (block * u64::from(BLOCK)) as usize;
            let len = layout().block_len(block) as usize;
            disk[at..at + len].fill(if fill % 4 == 0 { 0 } else { fill });
        }
        if let Some((_, block)) = damage.filter(|(c, _)| *c == i) {
            let written = store
                .page_ranges(&replica.data, None, None, None, None, None)
                .unwrap()
                .ranges
                .iter()
                .any(|r| (r.start..=r.end).contains(&layout().slot_offset(block)));
            if written {
                damage_payload(&store, &replica, block);
            }
        }
        let blocks: std::collections::BTreeSet<u64> = writes.iter().map(|&(b, _)| b).collect();
        let options = CycleOptions {
            selection: Selection::Blocks(blocks.into_iter().collect()),
            upload_threads: 2,
            ..CycleOptions::scan(T0 + 1 + i as u64)
        };
        cycle_of(&replica, &disk, &id, 2, &options, 20 + i as u64);
    }
    let points = replica.points(keys.digest.expose()).unwrap();
    assert_eq!(points.len(), cycles.len() + 1);
    let mut chain = PointChain::default();
    pool(2).install(|| {
        points
            .iter()
            .map(|point| {
                let key = keys.digest.expose();
                let full = replica.restore_blocks(&codec, point, key, |_, _| Ok(()));
                let step = replica.verify_in_chain(&codec, point, key, &mut chain);
                (
                    full.map_err(|e| e.to_string()),
                    step.map(|s| (s.records_decoded, s.in_full))
                        .map_err(|e| e.to_string()),
                )
            })
            .collect()
    })
}

/// Four points: the initial one; one with blocks changed, one zeroed and a new one written;
/// one that holds a record damaged in the store after point 1 (the slot's pages were
/// rewritten, so the diff names it); one more change after it. Verified by their changes, each
/// point passes or fails as its full restore does, decoding only the changed slots after the
/// first — and the point after the failed one is verified in full, so the damaged record it
/// inherits is read again.
#[test]
fn a_chain_of_points_verified_by_their_changes_passes_and_fails_as_full_restores_do() {
    // Block 2 zeroed (its slot cleared), 3 and 40 rewritten, 7 (a zero block) written; then
    // block 250's payload damaged and a point that holds it; then block 5 rewritten.
    let cycles = [
        vec![(2, 0), (3, 0x33), (7, 0x77), (40, 0x41)],
        vec![],
        vec![(5, 0x55)],
    ];
    let outcomes = chain_both_ways(&cycles, Some((1, 250)));
    for (i, (full, by_changes)) in outcomes.iter().enumerate() {
        match (full, by_changes) {
            (Ok(()), Ok(_)) => assert!(i < 2, "point {i}"),
            (Err(a), Err(b)) => assert!(
                i >= 2 && a == b && a.contains("block 250"),
                "point {i}: {a} / {b}"
            ),
            other => panic!("point {i}: {other:?}"),
        }
    }
    // Point 0 in full (every stored block: the ones not a multiple of 7); point 1 decodes the
    // records of 3, 7 and 40 (2's slot was cleared).
    let stored = (0..layout().blocks()).filter(|b| b % 7 != 0).count() as u64;
    assert_eq!(outcomes[0].1, Ok((stored, true)));
    assert_eq!(outcomes[1].1, Ok((3, false)));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]

    /// Random chains: cycles that rewrite, zero or write blocks (the last one short), and
    /// maybe a damaged record committed by one of them. Every point passes or fails its
    /// verification by changes exactly as its full restore does.
    #[test]
    fn random_chains_verified_by_their_changes_agree_with_full_restores(
        cycles in proptest::collection::vec(
            proptest::collection::vec((0u64..301, proptest::prelude::any::<u8>()), 0..12),
            1..5,
        ),
        damage in proptest::option::of((0usize..4, 0u64..301)),
    ) {
        for (i, (full, by_changes)) in chain_both_ways(&cycles, damage).into_iter().enumerate() {
            proptest::prop_assert_eq!(full, by_changes.map(|_| ()), "point {}", i);
        }
    }
}
