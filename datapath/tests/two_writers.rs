//! Two agents of one replica in one store (two `replicate` runs of a disk against one
//! endpoint, or two hosts configured with one disk name): the later to start takes the replica
//! over (`DiskReplica::take_over`) and the earlier commits nothing more, so no two writers
//! interleave a cycle, share a nonce epoch, or sweep each other's commit in progress; every
//! point listed restores to the disk of the writer that committed it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use datapath::agent::{AgentError, AgentTarget, DiskAgent};
use datapath::keys::Identity;
use datapath::policy::Policy;
use datapath::replica::block_record::BlockCodec;
use datapath::replica::disk_replica::{DiskReplica, Layout};
use datapath::replica::error::ReplicaError;
use datapath::replica::manifest::Consistency;
use datapath::replicator::{CycleKind, CyclePlan};
use datapath::source::AtRestDisk;
use pageblob::clock::ManualClock;
use pageblob::data_log::Durability;
use pageblob::{Emulator, PageBlobStore, Profile};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

const BLOCK: usize = 65536;
const SIZE: usize = 32 * BLOCK;
const T0: u64 = 1_800_000_000_000_000_000;

/// A store in `dir` and a registration's identity.
fn store_and_identity(dir: &std::path::Path) -> (Emulator, Identity) {
    let clock = Arc::new(ManualClock::new(T0));
    let store = Emulator::open(
        &dir.join("store"),
        Profile::Standard,
        Durability::Process,
        clock.clone(),
    )
    .unwrap();
    let (_, pfx) = datapath::registration::register("vault", "host", "pw", &*clock).unwrap();
    (store, Identity::from_pfx(&pfx, "pw").unwrap())
}

fn policy() -> Policy {
    Policy::from_toml(
        "copy_frequency_secs = 300\nretention_hours = 24",
        Profile::Standard,
    )
    .unwrap()
}

fn target(store: &dyn PageBlobStore) -> AgentTarget<'_, '_> {
    AgentTarget {
        snapshot_limit: None,
        store,
        container: "replicas",
        name: "shared-disk",
        log_store: None,
    }
}

fn open<'a>(
    store: &'a dyn PageBlobStore,
    id: &'a Identity,
    seed: u64,
) -> Result<DiskAgent<'a>, AgentError> {
    DiskAgent::open(
        target(store),
        id,
        policy(),
        SIZE as u64,
        None,
        true,
        Box::new(ChaCha8Rng::seed_from_u64(seed)),
    )
    .map(|(agent, _)| agent)
}

fn plan(kind: CycleKind, now: u64) -> CyclePlan {
    CyclePlan {
        kind,
        consistency: Consistency::Crash,
        throttle_bytes_per_sec: None,
        due_nanos: now,
    }
}

/// One cycle of `agent` over `disk` (compared block by block with the replica).
fn cycle(agent: &mut DiskAgent<'_>, disk: &[u8], now: u64) -> Result<u64, AgentError> {
    let mut source = AtRestDisk(disk.to_vec());
    agent
        .run(&plan(CycleKind::Resync, now), &mut source, now, &|_| {})
        .map(|report| report.point.sequence)
}

/// Random runs over `disk`, seeded.
fn scribble(disk: &mut [u8], rng: &mut ChaCha8Rng) {
    for _ in 0..6 {
        let at = (rng.next_u64() as usize % (SIZE / 4096)) * 4096;
        rng.fill_bytes(&mut disk[at..at + 4096]);
    }
}

fn taken_over(e: &AgentError) -> bool {
    e.is_taken_over()
}

/// Every listed point restores (its Merkle root proven) to `images[sequence]`.
fn assert_points_restore(
    store: &dyn PageBlobStore,
    id: &Identity,
    images: &BTreeMap<u64, Vec<u8>>,
) {
    let reader = open(store, id, 99).unwrap();
    let keys = id.disk_keys("shared-disk");
    let codec = BlockCodec::new(&keys, 1, true);
    let points = reader.points().unwrap();
    assert!(!points.is_empty());
    for point in &points {
        let mut restored = Vec::new();
        reader
            .replica
            .restore(&codec, point, keys.digest.expose(), |_, b| {
                restored.extend_from_slice(b);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("point {} does not restore: {e}", point.sequence));
        let want = images
            .get(&point.sequence)
            .unwrap_or_else(|| panic!("point {} was committed by nobody", point.sequence));
        assert!(
            restored == *want,
            "point {} restores to another disk than its writer's",
            point.sequence
        );
    }
}

#[test]
fn a_writer_taken_over_commits_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let (store, id) = store_and_identity(dir.path());
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut disk_a = vec![0u8; SIZE];
    let mut disk_b = vec![0u8; SIZE];
    scribble(&mut disk_a, &mut rng);
    scribble(&mut disk_b, &mut rng);
    let mut images = BTreeMap::new();

    let mut a = open(&store, &id, 1).unwrap();
    images.insert(cycle(&mut a, &disk_a, T0).unwrap(), disk_a.clone());
    let mut b = open(&store, &id, 2).unwrap();
    assert!(b.nonce_epoch() > a.nonce_epoch(), "epochs increase");
    // A still runs: each of its writes is refused now, so it commits nothing.
    scribble(&mut disk_a, &mut rng);
    let refused = cycle(&mut a, &disk_a, T0 + 1).unwrap_err();
    assert!(taken_over(&refused), "{refused}");
    assert!(
        refused
            .to_string()
            .contains("another writer took this replica over"),
        "{refused}"
    );
    images.insert(cycle(&mut b, &disk_b, T0 + 2).unwrap(), disk_b.clone());
    // A with nothing to write reaches the commit itself, and its manifest is refused.
    let refused = cycle(&mut a, &disk_b, T0 + 2).unwrap_err();
    assert!(taken_over(&refused), "{refused}");
    // Retention and orphan sweeps of the writer taken over are refused too.
    assert!(taken_over(&AgentError::from(
        a.replica.sweep_orphans(&[]).unwrap_err()
    )));
    // A writer started again takes the replica back; B is refused from then on.
    let mut a = open(&store, &id, 3).unwrap();
    images.insert(cycle(&mut a, &disk_a, T0 + 3).unwrap(), disk_a.clone());
    scribble(&mut disk_b, &mut rng);
    assert!(taken_over(&cycle(&mut b, &disk_b, T0 + 4).unwrap_err()));
    let sequences: Vec<u64> = images.keys().copied().collect();
    assert_eq!(sequences, [0, 1, 2], "the refused cycles committed nothing");
    assert_points_restore(&store, &id, &images);
}

#[test]
fn a_take_over_that_lands_late_leaves_the_later_writer_holding_the_replica() {
    // Two writers take the replica over at once, blob after blob: the earlier epoch's fences
    // may land after the later one's. Set with a plain update they left each writer holding
    // some blobs — both refused, neither committing (two `replicate` runs at once in CI).
    // Raised with `max`, the later epoch keeps every blob.
    let dir = tempfile::tempdir().unwrap();
    let (store, id) = store_and_identity(dir.path());
    let layout = Layout {
        disk_size: SIZE as u64,
        block_size: BLOCK as u32,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut disk = vec![0u8; SIZE];
    scribble(&mut disk, &mut rng);
    let mut images = BTreeMap::new();
    let mut first = open(&store, &id, 1).unwrap();
    images.insert(cycle(&mut first, &disk, T0).unwrap(), disk.clone());
    // The earlier writer claims its epoch, then the later one claims and takes over whole.
    let mut earlier = DiskReplica::open(&store, "replicas", "shared-disk", layout).unwrap();
    let earlier_epoch = earlier.claim_epoch(&mut rng).unwrap();
    let mut later = open(&store, &id, 2).unwrap();
    assert!(later.nonce_epoch() > earlier_epoch);
    // The earlier writer's take-over lands last.
    earlier.take_over(earlier_epoch).unwrap();
    scribble(&mut disk, &mut rng);
    images.insert(cycle(&mut later, &disk, T0 + 1).unwrap(), disk.clone());
    assert_points_restore(&store, &id, &images);
}

#[test]
fn a_writer_with_another_certificate_claims_nothing_and_names_both() {
    // A run given the .pfx of another registration cannot write a point of this replica (its
    // manifests would not authenticate): it must stop before it claims an epoch or takes the
    // replica over, or it ends the replica's own writer for nothing.
    let dir = tempfile::tempdir().unwrap();
    let (store, id) = store_and_identity(dir.path());
    let clock = ManualClock::new(T0);
    let (_, other_pfx) = datapath::registration::register("vault2", "host", "pw", &clock).unwrap();
    let other = Identity::from_pfx(&other_pfx, "pw").unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut disk = vec![0u8; SIZE];
    scribble(&mut disk, &mut rng);
    let mut images = BTreeMap::new();
    let mut own = open(&store, &id, 1).unwrap();
    images.insert(cycle(&mut own, &disk, T0).unwrap(), disk.clone());
    let refused = match open(&store, &other, 2) {
        Ok(_) => panic!("a writer with another certificate opened the replica"),
        Err(e) => e,
    };
    assert!(
        matches!(
            &refused,
            AgentError::Replica(ReplicaError::OtherCertificate { found, given })
                if *found == id.key_id.to_string() && *given == other.key_id.to_string()
        ),
        "{refused}"
    );
    assert!(
        refused
            .to_string()
            .contains("this replica was written with certificate"),
        "{refused}"
    );
    // The replica's own writer goes on: not taken over.
    scribble(&mut disk, &mut rng);
    images.insert(cycle(&mut own, &disk, T0 + 1).unwrap(), disk.clone());
    assert_points_restore(&store, &id, &images);
}

#[test]
fn writers_racing_on_one_replica_never_share_an_epoch_or_spoil_a_point() {
    // Two threads each start agents of one replica over and over and run cycles of their own
    // disks side by side: whichever started last writes, the other is refused (or its start
    // meets the other's claim). Every point listed at the end restores to the disk of the
    // writer that committed it, and no epoch was claimed twice.
    let dir = tempfile::tempdir().unwrap();
    let (store, id) = store_and_identity(dir.path());
    let images = Mutex::new(BTreeMap::new());
    let epochs = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for writer in 0..2u64 {
            let (store, id, images, epochs) = (&store, &id, &images, &epochs);
            scope.spawn(move || {
                let mut rng = ChaCha8Rng::seed_from_u64(100 + writer);
                let mut disk = vec![0u8; SIZE];
                for start in 0..12u64 {
                    let mut agent = match open(store, id, writer * 1000 + start) {
                        Ok(agent) => agent,
                        Err(AgentError::Replica(ReplicaError::EpochClaimRaced { .. })) => continue,
                        Err(e) if taken_over(&e) => continue,
                        Err(e) => panic!("writer {writer}: start failed: {e}"),
                    };
                    epochs.lock().unwrap().push(agent.nonce_epoch());
                    for _ in 0..3 {
                        scribble(&mut disk, &mut rng);
                        match cycle(&mut agent, &disk, T0) {
                            Ok(sequence) => {
                                let previous =
                                    images.lock().unwrap().insert(sequence, disk.clone());
                                assert!(previous.is_none(), "point {sequence} committed twice");
                            }
                            Err(e) if taken_over(&e) => break,
                            Err(e) => panic!("writer {writer}: cycle failed: {e}"),
                        }
                    }
                }
            });
        }
    });
    let mut epochs = epochs.into_inner().unwrap();
    let claimed = epochs.len();
    epochs.sort_unstable();
    epochs.dedup();
    assert_eq!(epochs.len(), claimed, "an epoch was claimed twice");
    assert_points_restore(&store, &id, &images.into_inner().unwrap());
}

#[test]
fn a_watch_taken_over_ends_instead_of_failing_every_cycle() {
    // `replicate --watch` runs cycle after cycle; once another writer has the replica each of
    // them would be refused, so the watch ends with the error at the first refusal.
    use datapath::cycle::{CycleReport, Progress};
    use datapath::driver::{watch, Finished, Pause, ReplicationDriver, WatchEnd, WatchEvents};
    let dir = tempfile::tempdir().unwrap();
    let (store, id) = store_and_identity(dir.path());
    let clock = ManualClock::new(T0);
    let mut driver = ReplicationDriver::open(
        target(&store),
        &id,
        policy(),
        SIZE as u64,
        None,
        true,
        Box::new(ChaCha8Rng::seed_from_u64(1)),
        T0,
    )
    .unwrap();
    struct TakeOverOnSecondWait<'a> {
        clock: &'a ManualClock,
        store: &'a Emulator,
        id: &'a Identity,
        waits: u32,
    }
    impl Pause for TakeOverOnSecondWait<'_> {
        fn until(&mut self, deadline_nanos: u64) -> bool {
            self.waits += 1;
            if self.waits == 2 {
                open(self.store, self.id, 2).unwrap();
            }
            self.clock.set(deadline_nanos);
            self.waits < 10
        }
    }
    struct Count(Vec<bool>);
    impl WatchEvents for Count {
        fn starting(&mut self, _: &CyclePlan) {}
        fn finished(&mut self, _: &CyclePlan, r: &Result<CycleReport, AgentError>, _: &Finished) {
            self.0.push(r.is_ok());
        }
        fn progress(&self, _: &Progress) {}
    }
    let mut pause = TakeOverOnSecondWait {
        clock: &clock,
        store: &store,
        id: &id,
        waits: 0,
    };
    let mut events = Count(Vec::new());
    let mut source = AtRestDisk(vec![7u8; SIZE]);
    let end = watch(
        &mut driver,
        &mut source,
        Consistency::Crash,
        &clock,
        &[&store],
        &mut pause,
        &mut events,
        None,
    );
    assert!(
        matches!(&end, WatchEnd::TakenOver(why) if why.contains("another writer took this replica over")),
        "{end:?}"
    );
    assert_eq!(
        events.0,
        [true, true, false],
        "two cycles, then the refused one ends the watch"
    );
}
