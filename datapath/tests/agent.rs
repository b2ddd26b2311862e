//! The replicator state machine driving the agent over simulated hours on a manual clock:
//! tracked deltas read only the written blocks, an unclean stop makes the next cycle a resync
//! that sends only what differs, retention keeps the points the policy wants (and within the
//! premium limit), and every retained point restores to the disk as it was at that point.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use datapath::agent::{AgentTarget, DiskAgent};
use datapath::cycle::BlockSource;
use datapath::keys::Identity;
use datapath::policy::Policy;
use datapath::replica::block_record::BlockCodec;
use datapath::replicator::{Action, CycleKind, CycleOutcome, Replicator};
use datapath::source::{AtRestDisk, TrackedDisk};
use datapath::tracking::{ChangeTracker, Untrusted};
use pageblob::clock::{Clock, ManualClock};
use pageblob::data_log::Durability;
use pageblob::{Emulator, Profile};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

const BLOCK: u64 = 65536;
const SIZE: u64 = 64 * BLOCK;
const T0: u64 = 1_800_000_000_000_000_000;
const MIN: u64 = 60_000_000_000;

struct Disk {
    bytes: Vec<u8>,
    reads: AtomicU64,
}

impl BlockSource for Disk {
    fn disk_size(&self) -> u64 {
        SIZE
    }
    fn is_unallocated(&self, _: u64, _: u64) -> bool {
        false
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        buf.copy_from_slice(&self.bytes[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
}

/// Write a few random 4 KiB runs; returns the (offset, len) written.
fn workload(disk: &mut Disk, rng: &mut ChaCha8Rng, writes: usize) -> Vec<(u64, u64)> {
    (0..writes)
        .map(|_| {
            let off = (rng.next_u64() % (SIZE / 4096)) * 4096;
            let byte = rng.next_u32() as u8;
            disk.bytes[off as usize..off as usize + 4096].fill(byte);
            (off, 4096)
        })
        .collect()
}

/// A store in `dir/store` with `profile` on `clock`.
fn store_in(dir: &std::path::Path, profile: Profile, clock: &Arc<ManualClock>) -> Emulator {
    Emulator::open(
        &dir.join("store"),
        profile,
        Durability::Process,
        clock.clone(),
    )
    .unwrap()
}

/// The agent of replica "vm-disk" in `store` (staged in `log` when given), its disk untracked
/// (an agent seeded 1), with what it resumes from.
fn untracked_agent<'a>(
    store: &'a dyn pageblob::PageBlobStore,
    log: Option<&'a dyn pageblob::PageBlobStore>,
    id: &'a Identity,
    policy: &Policy,
) -> (DiskAgent<'a>, datapath::replicator::Resume) {
    DiskAgent::open(
        AgentTarget {
            snapshot_limit: None,
            store,
            container: "replicas",
            name: "vm-disk",
            log_store: log,
        },
        id,
        policy.clone(),
        SIZE,
        None,
        true,
        Box::new(ChaCha8Rng::seed_from_u64(1)),
    )
    .unwrap()
}

/// A disk of zeros.
fn zero_disk() -> Disk {
    Disk {
        bytes: vec![0; SIZE as usize],
        reads: AtomicU64::new(0),
    }
}

fn identity(clock: &ManualClock) -> Identity {
    let (_, pfx) = datapath::registration::register("vault", "host", "pw", clock).unwrap();
    Identity::from_pfx(&pfx, "pw").unwrap()
}

fn restore_point(agent: &DiskAgent<'_>, id: &Identity, seq: u64) -> Vec<u8> {
    let points = agent.points().unwrap();
    let point = points.iter().find(|p| p.sequence == seq).unwrap();
    restore_manifest(agent, id, point).unwrap()
}

/// The image of the point `manifest` describes, listed or not.
fn restore_manifest(
    agent: &DiskAgent<'_>,
    id: &Identity,
    manifest: &datapath::replica::manifest::Manifest,
) -> Result<Vec<u8>, datapath::replica::error::ReplicaError> {
    let keys = id.disk_keys("vm-disk");
    let codec = BlockCodec::new(&keys, 1, true);
    let mut out = Vec::new();
    agent
        .replica
        .restore(&codec, manifest, keys.digest.expose(), |_, b| {
            out.extend_from_slice(b);
            Ok(())
        })?;
    Ok(out)
}

#[test]
fn hours_of_tracked_replication_with_an_unclean_stop_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let profile = Profile::Premium {
        snapshot_spacing: false,
    };
    let store = store_in(dir.path(), profile, &clock);
    let id = identity(&clock);
    let policy = Policy::from_toml(
        "copy_frequency_secs = 300\nretention_hours = 3\napp_consistent_hours = 1",
        profile,
    )
    .unwrap();
    let bitmap = dir.path().join("vm-disk.ctb");
    let log_store = Emulator::open(
        &dir.path().join("log"),
        Profile::Standard,
        Durability::Process,
        clock.clone(),
    )
    .unwrap();
    let target = AgentTarget {
        snapshot_limit: None,
        store: &store,
        container: "replicas",
        name: "vm-disk",
        log_store: Some(&log_store),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut disk = zero_disk();
    workload(&mut disk, &mut rng, 40);
    // Images of the disk by point sequence, to check restores.
    let mut images: BTreeMap<u64, Vec<u8>> = BTreeMap::new();

    let open = |clock: &ManualClock| {
        let (tracker, untrusted) =
            ChangeTracker::open(&bitmap, "vm-disk", SIZE, BLOCK as u32).unwrap();
        let (agent, resume) = DiskAgent::open(
            target,
            &id,
            policy.clone(),
            SIZE,
            untrusted.map(|u| u.to_string()),
            true,
            Box::new(ChaCha8Rng::seed_from_u64(clock.now_nanos())),
        )
        .unwrap();
        let machine = Replicator::new(
            policy.clone(),
            profile.max_snapshots_per_blob(),
            clock.now_nanos(),
            resume,
        );
        (agent, machine, tracker)
    };

    let (mut agent, mut machine, mut tracker) = open(&clock);
    let mut kinds = Vec::new();
    // Simulate 4 hours: writes every minute, cycles when the machine says so.
    for minute in 0..240u64 {
        let now = T0 + minute * MIN;
        clock.set(now);
        if minute == 100 {
            // The host crashes: no clean close; the tracker reopens untrusted.
            drop(agent);
            drop(tracker);
            let reopened = ChangeTracker::open(&bitmap, "vm-disk", SIZE, BLOCK as u32).unwrap();
            assert_eq!(reopened.1, Some(Untrusted::UncleanStop));
            drop(reopened);
            (agent, machine, tracker) = open(&clock);
            assert_eq!(machine.phase(), CycleKind::Resync);
            // Writes the dead tracker never saw: the resync must find them by digest.
            workload(&mut disk, &mut rng, 3);
        }
        for (off, len) in workload(&mut disk, &mut rng, 2) {
            tracker.mark(off, len);
        }
        if let Action::RunCycle(plan) = machine.poll(now) {
            let reads_before = disk.reads.load(Ordering::Relaxed);
            let mut host = TrackedDisk {
                tracker: &mut tracker,
                view: Some(&disk),
            };
            let report = agent.run(&plan, &mut host, now, &|_| {}).unwrap();
            let reads = disk.reads.load(Ordering::Relaxed) - reads_before;
            match plan.kind {
                CycleKind::Delta => assert!(
                    reads <= 12,
                    "a tracked delta read {reads} blocks (about 10 written)"
                ),
                CycleKind::Initial | CycleKind::Resync => assert_eq!(reads, 64),
            }
            if plan.kind == CycleKind::Resync {
                // Written since the last point (minute 95): 2 per minute for minutes 96..=100,
                // and the 3 writes nobody tracked. Everything else matches and is not sent.
                assert!(
                    report.blocks_changed <= 2 * 5 + 3,
                    "resync sent {} blocks",
                    report.blocks_changed
                );
            }
            kinds.push(plan.kind);
            images.insert(report.point.sequence, disk.bytes.clone());
            machine.cycle_finished(
                now,
                &CycleOutcome::Committed {
                    point_time_nanos: report.point.time_nanos,
                },
            );
            agent.apply_retention(&machine, now).unwrap();
        }
    }
    assert_eq!(kinds[0], CycleKind::Initial);
    assert_eq!(kinds.iter().filter(|k| **k == CycleKind::Resync).count(), 1);
    assert!(kinds.len() >= 47, "{} cycles in 4 hours", kinds.len());
    let now = clock.now_nanos();
    assert!(
        machine.health(now).is_healthy(),
        "{:?}",
        machine.health(now)
    );
    let points = agent.points().unwrap();
    // Retention: the last hour whole (12-13 points) plus one per older hour within 3 hours.
    assert!(
        (13..=17).contains(&points.len()),
        "{} points live",
        points.len()
    );
    assert!(points.iter().all(|p| now - p.time_nanos <= 3 * 60 * MIN));
    assert!(points
        .iter()
        .any(|p| p.consistency == datapath::replica::manifest::Consistency::Application));
    for p in &points {
        assert!(
            restore_point(&agent, &id, p.sequence) == images[&p.sequence],
            "point {} does not restore to the disk at that time",
            p.sequence
        );
    }
    agent
        .stop_cleanly(&mut TrackedDisk {
            tracker: &mut tracker,
            view: None,
        })
        .unwrap();
    let (_, why) = ChangeTracker::open(&bitmap, "vm-disk", SIZE, BLOCK as u32).unwrap();
    assert_eq!(why, None, "a clean close leaves a trusted bitmap");
}

/// The host's view of `disk` (none for a stop) with its tracker.
fn host<'t, 'v>(tracker: &'t mut ChangeTracker, view: Option<&'v Disk>) -> TrackedDisk<'t, 'v> {
    TrackedDisk {
        tracker,
        view: view.map(|d| d as &dyn BlockSource),
    }
}

#[test]
fn a_clean_stop_before_the_owed_resync_keeps_it_owed() {
    // A host crash loses the tracker's unsaved bits; the agent that starts next owes a resync.
    // If its service is stopped cleanly before that resync ran, the stop must not mark the
    // tracker trusted: the writes it never saw would never be sent.
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = store_in(dir.path(), Profile::Standard, &clock);
    let id = identity(&clock);
    let policy = Policy::from_toml("copy_frequency_secs = 300", Profile::Standard).unwrap();
    let bitmap = dir.path().join("vm-disk.ctb");
    let target = AgentTarget {
        snapshot_limit: None,
        store: &store,
        container: "replicas",
        name: "vm-disk",
        log_store: None,
    };
    let open = || {
        let (tracker, untrusted) =
            ChangeTracker::open(&bitmap, "vm-disk", SIZE, BLOCK as u32).unwrap();
        let (agent, resume) = DiskAgent::open(
            target,
            &id,
            policy.clone(),
            SIZE,
            untrusted.map(|u| u.to_string()),
            true,
            Box::new(ChaCha8Rng::seed_from_u64(clock.now_nanos())),
        )
        .unwrap();
        (agent, resume, tracker)
    };
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut disk = zero_disk();
    workload(&mut disk, &mut rng, 10);
    let (mut first, resume, mut tracker) = open();
    let mut machine = Replicator::new(policy.clone(), None, T0, resume);
    let Action::RunCycle(plan) = machine.poll(T0) else {
        panic!("initial replication is due")
    };
    first
        .run(&plan, &mut host(&mut tracker, Some(&disk)), T0, &|_| {})
        .unwrap();
    // Writes the tracker hears of, then a crash before they are persisted.
    for (o, l) in workload(&mut disk, &mut rng, 5) {
        tracker.mark(o, l);
    }
    drop(first);
    drop(tracker);
    let (mut second, resume, mut tracker) = open();
    assert_eq!(
        resume.tracking_untrusted.as_deref(),
        Some("tracking stopped uncleanly")
    );
    second.stop_cleanly(&mut host(&mut tracker, None)).unwrap();
    drop(second);
    drop(tracker);
    let (third, resume, mut tracker) = open();
    assert!(
        resume.tracking_untrusted.is_some(),
        "the resync is still owed after a clean stop"
    );
    let mut third = third;
    let mut machine = Replicator::new(policy.clone(), None, T0 + 10 * MIN, resume);
    let Action::RunCycle(plan) = machine.poll(T0 + 10 * MIN) else {
        panic!("a cycle is due")
    };
    assert_eq!(plan.kind, CycleKind::Resync);
    let report = third
        .run(
            &plan,
            &mut host(&mut tracker, Some(&disk)),
            T0 + 10 * MIN,
            &|_| {},
        )
        .unwrap();
    assert!(restore_point(&third, &id, report.point.sequence) == disk.bytes);
    // With the resync done, a clean stop is trusted again.
    third.stop_cleanly(&mut host(&mut tracker, None)).unwrap();
    drop(third);
    drop(tracker);
    let (_, resume, _) = open();
    assert_eq!(resume.tracking_untrusted, None);
}

#[test]
fn snapshots_orphaned_while_deletes_fail_are_swept_and_replication_resumes() {
    use pageblob::faults::{FaultConfig, FaultyStore};
    use pageblob::PageBlobStore;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let profile = Profile::Premium {
        snapshot_spacing: false,
    };
    let emulator = Arc::new(store_in(dir.path(), profile, &clock));
    let store = FaultyStore::new(emulator.clone(), FaultConfig::default());
    let log = Emulator::open(
        &dir.path().join("log"),
        Profile::Standard,
        Durability::Process,
        clock.clone(),
    )
    .unwrap();
    let id = identity(&clock);
    let policy =
        Policy::from_toml("copy_frequency_secs = 300\nretention_hours = 1", profile).unwrap();
    let (mut agent, resume) = untracked_agent(&store, Some(&log), &id, &policy);
    let mut machine = Replicator::new(policy, profile.max_snapshots_per_blob(), T0, resume);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut disk = zero_disk();
    let snapshots = || {
        emulator
            .list_blobs("replicas", "", true)
            .unwrap()
            .iter()
            .filter(|b| b.name == "vm-disk.replica" && b.properties.snapshot.is_some())
            .count()
    };
    // Deletes refused for 10 simulated hours: 120 cycles against a limit of 100.
    store.set_config(FaultConfig {
        refuse_deletes: true,
        ..FaultConfig::default()
    });
    let (mut refused_at_limit, mut committed_after) = (false, 0);
    for minute in (0..14 * 60).step_by(5) {
        if minute == 10 * 60 {
            store.set_config(FaultConfig::default());
        }
        let now = T0 + minute * MIN;
        clock.set(now);
        workload(&mut disk, &mut rng, 3);
        if let Action::RunCycle(plan) = machine.poll(now) {
            let outcome = match agent.run(&plan, &mut AtRestDisk(&disk), now, &|_| {}) {
                Ok(r) => CycleOutcome::Committed {
                    point_time_nanos: r.point.time_nanos,
                },
                Err(e) => {
                    refused_at_limit |= e.to_string().contains("SnapshotCountExceeded");
                    CycleOutcome::Failed {
                        reason: e.to_string(),
                    }
                }
            };
            if minute > 10 * 60 && matches!(outcome, CycleOutcome::Committed { .. }) {
                committed_after += 1;
            }
            machine.cycle_finished(now, &outcome);
            let _ = agent.apply_retention(&machine, now);
        }
        assert!(snapshots() <= 100, "minute {minute}: {}", snapshots());
    }
    assert!(refused_at_limit, "the blob reached its snapshot limit");
    assert!(
        committed_after >= 40,
        "replication resumed: {committed_after}"
    );
    // No orphan is left: every snapshot is a live point's.
    assert_eq!(snapshots(), agent.points().unwrap().len());
}

/// A point a reader holds (`replica::point_hold`) outlives retention for as long as the hold's
/// lease is renewed, restores byte-exact meanwhile, and goes at the first retention after the
/// hold is released. A hold whose holder stopped renewing holds nothing once its lease lapses,
/// and its blob is swept once stale.
#[test]
fn a_held_point_outlives_retention_until_it_is_released() {
    use pageblob::PageBlobStore;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = store_in(dir.path(), Profile::Standard, &clock);
    let id = identity(&clock);
    let policy = Policy::from_toml(
        "copy_frequency_secs = 300\nretention_hours = 1",
        Profile::Standard,
    )
    .unwrap();
    let (mut agent, resume) = untracked_agent(&store, None, &id, &policy);
    let mut machine = Replicator::new(policy, None, T0, resume);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut disk = zero_disk();
    let listed =
        |agent: &DiskAgent<'_>, seq: u64| agent.points().unwrap().iter().any(|p| p.sequence == seq);
    let (mut held, mut dead) = (None, None);
    let mut image_of_0 = None;
    // Half-minute steps for 2.5 hours: the hold on point 0 renewed every step until minute 120.
    for step in 0..300u64 {
        let now = T0 + step * MIN / 2;
        clock.set(now);
        if let Some(hold) = &held {
            if step < 240 {
                agent.replica.hold_renew(hold).unwrap();
            }
        }
        if step == 240 {
            agent
                .replica
                .release_hold(held.take().expect("held"))
                .unwrap();
        }
        if step % 2 == 0 {
            workload(&mut disk, &mut rng, 2);
        }
        if let Action::RunCycle(plan) = machine.poll(now) {
            let report = agent
                .run(&plan, &mut AtRestDisk(&disk), now, &|_| {})
                .unwrap();
            if report.point.sequence == 0 {
                image_of_0 = Some(disk.bytes.clone());
                held = Some(agent.replica.hold_point(0, &mut rng).unwrap());
            }
            if report.point.sequence == 3 {
                // Taken, never renewed: its holder died.
                dead = Some(agent.replica.hold_point(3, &mut rng).unwrap());
            }
            machine.cycle_finished(
                now,
                &CycleOutcome::Committed {
                    point_time_nanos: report.point.time_nanos,
                },
            );
            agent.apply_retention(&machine, now).unwrap();
        }
        if step == 239 {
            // Two hours on: every point older than an hour is gone but the held one.
            assert!(listed(&agent, 0), "the held point was deleted");
            assert!(
                !listed(&agent, 1) && !listed(&agent, 3),
                "older points stay"
            );
            assert!(
                restore_point(&agent, &id, 0) == *image_of_0.as_ref().unwrap(),
                "the held point restores as the disk was"
            );
        }
    }
    assert!(!listed(&agent, 0), "released, the point went");
    let dead = dead.expect("taken");
    assert!(
        store.properties(&dead.path, None).is_err(),
        "a dead hold's blob is swept"
    );
    let holds = store
        .list_blobs("replicas", "", false)
        .unwrap()
        .into_iter()
        .filter(|b| b.name.contains(".hold-"))
        .count();
    assert_eq!(holds, 0);
}

/// A store that can put a reader's requests among the agent's (`before_write_to`), in a
/// temporary folder on a manual clock; a certificate, the disk's digest key, and 5-minute
/// copies kept for an hour.
struct HeldFixture {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    store: Arc<pageblob::faults::FaultyStore<Emulator>>,
    id: Identity,
    digest_key: [u8; 32],
    policy: Policy,
}

impl HeldFixture {
    fn new() -> HeldFixture {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let store = Arc::new(pageblob::faults::FaultyStore::new(
            store_in(dir.path(), Profile::Standard, &clock),
            pageblob::faults::FaultConfig::default(),
        ));
        let id = identity(&clock);
        let digest_key = *id.disk_keys("vm-disk").digest.expose();
        let policy = Policy::from_toml(
            "copy_frequency_secs = 300\nretention_hours = 1",
            Profile::Standard,
        )
        .unwrap();
        HeldFixture {
            _dir: dir,
            clock,
            store,
            id,
            digest_key,
            policy,
        }
    }

    /// The replica's agent (its disk untracked) and its state machine.
    fn agent(&self) -> (DiskAgent<'_>, Replicator) {
        let (agent, resume) = untracked_agent(&*self.store, None, &self.id, &self.policy);
        (
            agent,
            Replicator::new(self.policy.clone(), None, T0, resume),
        )
    }

    /// The data blob's snapshots, sorted.
    fn snapshots(&self) -> Vec<String> {
        use pageblob::PageBlobStore;
        let mut all: Vec<String> = self
            .store
            .list_blobs("replicas", "vm-disk.replica", true)
            .unwrap()
            .into_iter()
            .filter_map(|b| b.properties.snapshot)
            .collect();
        all.sort();
        all
    }

    /// Every snapshot of the data blob is one of `agent`'s listed points'.
    fn assert_no_snapshot_left_over(&self, agent: &DiskAgent<'_>, context: &str) {
        let mut listed: Vec<String> = agent
            .points()
            .unwrap()
            .into_iter()
            .map(|p| p.snapshot)
            .collect();
        listed.sort();
        assert_eq!(
            self.snapshots(),
            listed,
            "{context}: every snapshot left is a listed point's"
        );
    }
}

/// A reader that takes its hold in the instant between retention's listing of holds and its
/// deletion (a hold taken, its point still listed: the reader goes on) keeps its point: the
/// point is unlisted but its snapshot stays, restores byte-exact, outlives an agent started
/// meanwhile and later retentions, and is swept once the reader lets go.
#[test]
fn a_hold_confirmed_while_retention_deletes_its_point_keeps_the_point_readable() {
    use datapath::retention::PointInfo;
    use std::sync::Mutex;
    let fixture = HeldFixture::new();
    let (store, id, digest_key) = (&fixture.store, &fixture.id, fixture.digest_key);
    let (mut agent, mut machine) = fixture.agent();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut disk = zero_disk();
    // The reader: holds point 0 and checks it is still listed, as `restore` does.
    type Reader = (datapath::replica::point_hold::PointHold, bool);
    let reader: Arc<Mutex<Option<Reader>>> = Arc::default();
    let (mut point_0, mut image_0) = (None, None);
    let mut armed = false;
    for step in 0..40u64 {
        let now = T0 + step * 5 * MIN;
        fixture.clock.set(now);
        workload(&mut disk, &mut rng, 2);
        let Action::RunCycle(plan) = machine.poll(now) else {
            continue;
        };
        let report = agent
            .run(&plan, &mut AtRestDisk(&disk), now, &|_| {})
            .unwrap();
        if report.point.sequence == 0 {
            point_0 = Some(report.point.clone());
            image_0 = Some(disk.bytes.clone());
        }
        machine.cycle_finished(
            now,
            &CycleOutcome::Committed {
                point_time_nanos: report.point.time_nanos,
            },
        );
        let infos: Vec<PointInfo> = agent.points().unwrap().iter().map(PointInfo::of).collect();
        if !armed && machine.retention(now, &infos, None).first() == Some(&0) {
            // This retention deletes point 0: the reader comes just before its journal slot
            // is cleared, after retention listed the holds (there were none).
            armed = true;
            let (store2, reader2) = (Arc::clone(store), Arc::clone(&reader));
            let layout = agent.replica.layout;
            store.before_write_to("vm-disk.journal", move || {
                let mut rng = ChaCha8Rng::seed_from_u64(4);
                let hold = datapath::replica::point_hold::PointHold::take(
                    &*store2, "replicas", "vm-disk", 0, &mut rng,
                )
                .unwrap();
                let view = datapath::replica::disk_replica::DiskReplica::open_existing(
                    &*store2, "replicas", "vm-disk", layout,
                )
                .unwrap();
                let listed = view
                    .points(&digest_key)
                    .unwrap()
                    .iter()
                    .any(|p| p.sequence == 0);
                *reader2.lock().unwrap() = Some((hold, listed));
            });
        }
        let before = fixture.snapshots();
        let deleted = agent.apply_retention(&machine, now).unwrap();
        if armed && deleted.contains(&0) {
            let point_0 = point_0.as_ref().unwrap();
            let (hold, listed) = reader.lock().unwrap().take().expect("the reader came");
            assert!(listed, "the reader found point 0 listed once it held it");
            assert!(
                !agent.points().unwrap().iter().any(|p| p.sequence == 0),
                "point 0 is no longer listed"
            );
            assert!(
                fixture.snapshots().contains(&point_0.snapshot)
                    && before.contains(&point_0.snapshot),
                "the held point's snapshot stays"
            );
            assert!(
                restore_manifest(&agent, id, point_0).unwrap() == *image_0.as_ref().unwrap(),
                "the reader restores its point as the disk was"
            );
            // Another hour of cycles, and an agent started meanwhile: the reader still holds.
            for later in 1..=12u64 {
                let now = now + later * 5 * MIN;
                fixture.clock.set(now);
                agent.replica.hold_renew(&hold).unwrap();
                workload(&mut disk, &mut rng, 2);
                if let Action::RunCycle(plan) = machine.poll(now) {
                    let report = agent
                        .run(&plan, &mut AtRestDisk(&disk), now, &|_| {})
                        .unwrap();
                    machine.cycle_finished(
                        now,
                        &CycleOutcome::Committed {
                            point_time_nanos: report.point.time_nanos,
                        },
                    );
                    agent.apply_retention(&machine, now).unwrap();
                }
            }
            drop(agent);
            let (restarted, _) = fixture.agent();
            assert!(
                fixture.snapshots().contains(&point_0.snapshot),
                "no sweep takes a snapshot a reader holds"
            );
            assert!(
                restore_manifest(&restarted, id, point_0).unwrap() == *image_0.as_ref().unwrap()
            );
            // Let go: the next retention sweeps the snapshot.
            restarted.replica.release_hold(hold).unwrap();
            drop(restarted);
            let (restarted, _) = fixture.agent();
            assert!(
                !fixture.snapshots().contains(&point_0.snapshot),
                "released, the snapshot is swept"
            );
            fixture.assert_no_snapshot_left_over(&restarted, "released");
            return;
        }
    }
    panic!("retention never deleted point 0");
}

/// Readers arrive at seeded moments — just before a write to the journal or the data blob,
/// which puts some between retention's listing of holds and its deletion — each holds a point
/// (the oldest, half the time), checks it is listed, and reads it one to six cycles later.
/// Every reader that found its point listed reads it byte-exact, whatever retention did
/// meanwhile; once all have let go, a restarted agent's sweep leaves no snapshot that is not a
/// listed point's.
#[test]
fn readers_arriving_at_any_moment_read_the_points_they_confirmed() {
    use datapath::replica::disk_replica::DiskReplica;
    use datapath::replica::manifest::Manifest;
    use datapath::replica::point_hold::PointHold;
    use pageblob::PageBlobStore;
    use std::sync::Mutex;
    /// A reader: its hold, the point, whether it found the point listed once it held it, and
    /// the step it reads at.
    type Reader = (PointHold, Manifest, bool, u64);
    let mut kept_for_a_reader = 0;
    for seed in 0..3u64 {
        let fixture = HeldFixture::new();
        let (store, id, digest_key) = (&fixture.store, &fixture.id, fixture.digest_key);
        let (mut agent, mut machine) = fixture.agent();
        let layout = agent.replica.layout;
        let mut rng = ChaCha8Rng::seed_from_u64(100 + seed);
        let mut disk = zero_disk();
        let mut images = BTreeMap::new();
        let readers: Arc<Mutex<Vec<Reader>>> = Arc::default();
        let listed_now = move |store: &dyn PageBlobStore| -> Vec<Manifest> {
            DiskReplica::open_existing(store, "replicas", "vm-disk", layout)
                .unwrap()
                .points(&digest_key)
                .unwrap()
        };
        let read_and_release = |agent: &DiskAgent<'_>,
                                images: &BTreeMap<u64, Vec<u8>>,
                                (hold, point, confirmed, _): Reader,
                                kept: &mut usize| {
            if confirmed {
                let image = restore_manifest(agent, id, &point).unwrap_or_else(|e| {
                    panic!(
                        "seed {seed}: point {} confirmed, then lost: {e}",
                        point.sequence
                    )
                });
                assert!(
                    image == images[&point.sequence],
                    "seed {seed}: point {}",
                    point.sequence
                );
                let still_listed = agent
                    .points()
                    .unwrap()
                    .iter()
                    .any(|p| p.sequence == point.sequence);
                *kept += usize::from(!still_listed);
            }
            agent.replica.release_hold(hold).unwrap();
        };
        for step in 0..60u64 {
            let now = T0 + step * 5 * MIN;
            fixture.clock.set(now);
            let due: Vec<Reader> = {
                let mut all = readers.lock().unwrap();
                for (hold, ..) in all.iter() {
                    agent.replica.hold_renew(hold).unwrap();
                }
                let (due, rest) = all.drain(..).partition(|r| r.3 <= step);
                *all = rest;
                due
            };
            for reader in due {
                read_and_release(&agent, &images, reader, &mut kept_for_a_reader);
            }
            workload(&mut disk, &mut rng, 2);
            if let Action::RunCycle(plan) = machine.poll(now) {
                let report = agent
                    .run(&plan, &mut AtRestDisk(&disk), now, &|_| {})
                    .unwrap();
                images.insert(report.point.sequence, disk.bytes.clone());
                machine.cycle_finished(
                    now,
                    &CycleOutcome::Committed {
                        point_time_nanos: report.point.time_nanos,
                    },
                );
            }
            if rng.next_u32() % 2 == 0 {
                let blob = ["vm-disk.journal", "vm-disk.replica"][rng.next_u32() as usize % 2];
                let (store2, readers2) = (Arc::clone(store), Arc::clone(&readers));
                let (pick, hold_seed, read_at) = (
                    rng.next_u64(),
                    rng.next_u64(),
                    step + 1 + rng.next_u64() % 6,
                );
                store.before_write_to(blob, move || {
                    let points = listed_now(&*store2);
                    let Some(oldest) = points.first() else {
                        return;
                    };
                    let point = match pick % 4 {
                        0 | 1 => oldest.clone(),
                        _ => points[(pick as usize / 4) % points.len()].clone(),
                    };
                    let hold = PointHold::take(
                        &*store2,
                        "replicas",
                        "vm-disk",
                        point.sequence,
                        &mut ChaCha8Rng::seed_from_u64(hold_seed),
                    )
                    .unwrap();
                    let confirmed = listed_now(&*store2)
                        .iter()
                        .any(|p| p.sequence == point.sequence && p.snapshot == point.snapshot);
                    readers2
                        .lock()
                        .unwrap()
                        .push((hold, point, confirmed, read_at));
                });
            }
            agent.apply_retention(&machine, now).unwrap();
        }
        let left: Vec<Reader> = readers.lock().unwrap().drain(..).collect();
        for reader in left {
            read_and_release(&agent, &images, reader, &mut kept_for_a_reader);
        }
        drop(agent);
        let (restarted, _) = fixture.agent();
        fixture.assert_no_snapshot_left_over(&restarted, &format!("seed {seed}"));
    }
    assert!(
        kept_for_a_reader > 0,
        "no reader held a point retention unlisted meanwhile"
    );
}
