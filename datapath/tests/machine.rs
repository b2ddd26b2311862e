//! A machine's disks replicated together (`driver::watch_group` over a `source::FreezeGroup`):
//! every group cycle freezes all the disks, their points carry one time, and a cycle in which
//! any disk failed is retried on the schedule's backoff, not at the next interval, since it
//! made no point of the machine; the disks' cycles run side by side.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datapath::agent::{AgentError, AgentTarget};
use datapath::cycle::{BlockSource, CycleReport, Progress};
use datapath::driver::{watch_group, Finished, Pause, ReplicationDriver, WatchEnd, WatchEvents};
use datapath::keys::Identity;
use datapath::policy::Policy;
use datapath::replica::manifest::Consistency;
use datapath::replicator::CyclePlan;
use datapath::source::{AtRestDisk, ChangeSource, Changes, FreezeGroup, PointRef, SourceError};
use pageblob::clock::{Clock, ManualClock};
use pageblob::data_log::Durability;
use pageblob::{Emulator, Profile};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

const SIZE: usize = 16 * 65536;
const T0: u64 = 1_800_000_000_000_000_000;
const SEC: u64 = 1_000_000_000;

/// Where the disks' cycles meet: each disk's first freeze waits (up to 20 s) for the other's,
/// so the most cycles under way at once is 2 only if they run side by side.
#[derive(Default)]
struct Meeting {
    arrived: AtomicUsize,
    present: AtomicUsize,
    most_at_once: AtomicUsize,
}

impl Meeting {
    fn arrive(&self) {
        self.present.fetch_add(1, Ordering::SeqCst);
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.arrived.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.most_at_once
            .fetch_max(self.present.load(Ordering::SeqCst), Ordering::SeqCst);
        // Both record before either leaves.
        std::thread::sleep(Duration::from_millis(20));
        self.present.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A disk at rest whose next `fail` freezes fail.
struct Flaky {
    disk: AtRestDisk<Vec<u8>>,
    fail: u32,
    meeting: Option<Arc<Meeting>>,
}

impl ChangeSource for Flaky {
    fn freeze(&mut self, last: Option<PointRef>) -> Result<Changes, SourceError> {
        if let Some(meeting) = self.meeting.take() {
            meeting.arrive();
        }
        if self.fail > 0 {
            self.fail -= 1;
            return Err(SourceError::live(
                "freezing",
                std::io::Error::other("the disk is busy"),
            ));
        }
        self.disk.freeze(last)
    }

    fn view(&self) -> Result<&dyn BlockSource, SourceError> {
        self.disk.view()
    }

    fn thaw(&mut self, committed: Option<PointRef>) -> Result<(), SourceError> {
        self.disk.thaw(committed)
    }
}

struct Machine {
    disks: Vec<Flaky>,
    freezes: usize,
}

impl FreezeGroup for Machine {
    fn disks(&self) -> usize {
        self.disks.len()
    }

    fn freeze_all(&mut self, _last_points: &[Option<PointRef>]) -> Result<(), SourceError> {
        self.freezes += 1;
        Ok(())
    }

    fn member(&mut self, i: usize) -> &mut dyn ChangeSource {
        &mut self.disks[i]
    }

    fn members(&mut self) -> Option<Vec<&mut (dyn ChangeSource + Send)>> {
        Some(
            self.disks
                .iter_mut()
                .map(|d| d as &mut (dyn ChangeSource + Send))
                .collect(),
        )
    }
}

/// Sleeps on the manual clock; notes each deadline.
struct Sleep<'c> {
    clock: &'c ManualClock,
    deadlines: Vec<u64>,
}

impl Pause for Sleep<'_> {
    fn until(&mut self, deadline_nanos: u64) -> bool {
        self.deadlines.push(deadline_nanos);
        self.clock.set(deadline_nanos);
        self.deadlines.len() < 10
    }
}

/// Each cycle of one disk: the point's time when it committed.
#[derive(Default)]
struct Outcomes(Vec<Option<u64>>);

impl WatchEvents for Outcomes {
    fn starting(&mut self, _: &CyclePlan) {}
    fn finished(&mut self, _: &CyclePlan, r: &Result<CycleReport, AgentError>, _: &Finished) {
        self.0.push(r.as_ref().ok().map(|r| r.point.time_nanos));
    }
    fn progress(&self, _: &Progress) {}
}

#[test]
fn a_machine_cycle_a_disk_failed_is_retried_at_once_and_its_points_share_one_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = Emulator::open(
        &dir.path().join("store"),
        Profile::Standard,
        Durability::Process,
        clock.clone(),
    )
    .unwrap();
    let (_, pfx) = datapath::registration::register("vault", "host", "pw", &*clock).unwrap();
    let id = Identity::from_pfx(&pfx, "pw").unwrap();
    let policy = Policy::from_toml(
        "copy_frequency_secs = 300\nretention_hours = 24",
        Profile::Standard,
    )
    .unwrap();
    let names = ["vm-os", "vm-data"];
    let mut drivers: Vec<ReplicationDriver<'_>> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            ReplicationDriver::open(
                AgentTarget {
                    snapshot_limit: None,
                    store: &store,
                    container: "replicas",
                    name,
                    log_store: None,
                },
                &id,
                policy.clone(),
                SIZE as u64,
                None,
                true,
                Box::new(ChaCha8Rng::seed_from_u64(i as u64)),
                T0,
            )
            .unwrap()
        })
        .collect();
    // The data disk cannot be frozen for the first cycle.
    let meeting = Arc::new(Meeting::default());
    let mut machine = Machine {
        disks: vec![
            Flaky {
                disk: AtRestDisk(vec![1u8; SIZE]),
                fail: 0,
                meeting: Some(meeting.clone()),
            },
            Flaky {
                disk: AtRestDisk(vec![2u8; SIZE]),
                fail: 1,
                meeting: Some(meeting.clone()),
            },
        ],
        freezes: 0,
    };
    let mut sleep = Sleep {
        clock: &clock,
        deadlines: Vec::new(),
    };
    let (mut os, mut data) = (Outcomes::default(), Outcomes::default());
    let end = watch_group(
        &mut drivers,
        &mut machine,
        Consistency::Crash,
        &*clock,
        &[&store],
        &mut sleep,
        &mut [&mut os, &mut data],
        Some(2),
    );
    assert_eq!(end, WatchEnd::CyclesDone);
    // The disks' cycles ran side by side (one after another, the first waits alone).
    assert_eq!(meeting.most_at_once.load(Ordering::SeqCst), 2);
    // Cycle 1 at T0: the system disk committed, the data disk failed: no point of the machine,
    // so the group retries 10 s later (the backoff), not at the next 5-minute interval.
    assert_eq!(sleep.deadlines[0], T0 + 10 * SEC, "{:?}", sleep.deadlines);
    assert_eq!(os.0[0], Some(T0));
    assert_eq!(data.0[0], None);
    // Every later cycle: both committed, with one time.
    assert_eq!(os.0.len(), 3);
    for (a, b) in os.0[1..].iter().zip(&data.0[1..]) {
        assert!(a.is_some() && a == b, "{:?} / {:?}", os.0, data.0);
    }
    assert_eq!(os.0[1], Some(T0 + 10 * SEC));
    // The next cycle after a committed one is at the interval.
    assert_eq!(sleep.deadlines[1], T0 + 300 * SEC, "{:?}", sleep.deadlines);
    assert_eq!(machine.freezes, 3);
    assert_eq!(clock.now_nanos(), T0 + 300 * SEC);
}
