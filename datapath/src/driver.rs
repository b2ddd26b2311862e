//! The replication driver of one disk: its [`Replicator`] decides when and what (schedule,
//! retries, resync, health), its [`DiskAgent`] does it (the cycle, retention). Whoever owns
//! time steps it — the simulator on its virtual clock ([`ReplicationDriver::poll`],
//! [`ReplicationDriver::run_cycle`], [`ReplicationDriver::finish`]), `replicate --watch` on the
//! system clock through [`watch`] — so both run one sequence: a cycle ends, the machine hears
//! how, retention runs (after failed cycles too: a blob at its snapshot limit needs room before
//! any cycle can commit), health is read.

use std::collections::BTreeSet;

use rand_core::RngCore;

use crate::agent::{AgentError, AgentTarget, DiskAgent};
use crate::cycle::{CycleReport, Progress};
use crate::keys::Identity;
use crate::policy::Policy;
use crate::replica::error::ReplicaError;
use crate::replica::manifest::Consistency;
use crate::replicator::{Action, CycleOutcome, CyclePlan, Health, Replicator, Resume};
use crate::source::{ChangeSource, FreezeGroup, PointRef, SourceError};
use pageblob::clock::Clock;

/// One disk's replication: the agent and its state machine.
#[derive(Debug)]
pub struct ReplicationDriver<'a> {
    agent: DiskAgent<'a>,
    machine: Replicator,
}

/// What the end of a cycle led to.
#[derive(Debug)]
pub struct Finished {
    /// The points retention deleted, or why it failed (it runs again after the next cycle).
    pub retention: Result<Vec<u64>, ReplicaError>,
    /// Health as the cycle ends.
    pub health: Health,
}

impl<'a> ReplicationDriver<'a> {
    /// Open the agent of a disk of `disk_size` bytes (see [`DiskAgent::open`]) and start its
    /// machine at `now_nanos` from what the replica and the source's tracking say.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        target: AgentTarget<'a, '_>,
        identity: &'a Identity,
        policy: Policy,
        disk_size: u64,
        tracking_untrusted: Option<String>,
        strict_block_size: bool,
        rng: Box<dyn RngCore + Send + 'a>,
        now_nanos: u64,
    ) -> Result<ReplicationDriver<'a>, AgentError> {
        let (agent, resume) = DiskAgent::open(
            target,
            identity,
            policy,
            disk_size,
            tracking_untrusted,
            strict_block_size,
            rng,
        )?;
        let machine = Replicator::new(
            agent.policy().clone(),
            target.snapshot_limit,
            now_nanos,
            resume,
        );
        Ok(ReplicationDriver { agent, machine })
    }

    pub fn agent(&self) -> &DiskAgent<'a> {
        &self.agent
    }

    pub fn agent_mut(&mut self) -> &mut DiskAgent<'a> {
        &mut self.agent
    }

    pub fn machine(&self) -> &Replicator {
        &self.machine
    }

    /// Start the schedule over from `resume` (protection re-enabled after a failback), with
    /// the same agent.
    pub fn restart_schedule(&mut self, now_nanos: u64, resume: Resume) {
        self.machine = Replicator::new(
            self.machine.policy().clone(),
            self.agent.snapshot_limit(),
            now_nanos,
            resume,
        );
    }

    /// What to do at `now_nanos`: wait, or run a cycle (which must then be [`finish`]ed).
    ///
    /// [`finish`]: ReplicationDriver::finish
    pub fn poll(&mut self, now_nanos: u64) -> Action {
        self.machine.poll(now_nanos)
    }

    /// Run `plan` against `source` (the agent's cycle).
    pub fn run_cycle(
        &mut self,
        plan: &CyclePlan,
        source: &mut dyn ChangeSource,
        now_nanos: u64,
        progress: &(dyn Fn(&Progress) + Sync),
    ) -> Result<CycleReport, AgentError> {
        self.agent.run(plan, source, now_nanos, progress)
    }

    /// The cycle [`poll`](ReplicationDriver::poll) asked for ended at `now_nanos` with
    /// `outcome`: the machine hears of it, then retention runs.
    pub fn finish(&mut self, now_nanos: u64, outcome: &CycleOutcome) -> Finished {
        self.finish_among(now_nanos, outcome, None)
    }

    /// [`finish`](Self::finish) for a disk replicated with the other disks of its machine,
    /// which have points at `machine_times` (retention keeps the machine's points).
    pub fn finish_among(
        &mut self,
        now_nanos: u64,
        outcome: &CycleOutcome,
        machine_times: Option<&BTreeSet<u64>>,
    ) -> Finished {
        self.machine.cycle_finished(now_nanos, outcome);
        Finished {
            retention: self
                .agent
                .apply_retention_among(&self.machine, now_nanos, machine_times),
            health: self.machine.health(now_nanos),
        }
    }

    /// One cycle now, whatever the schedule says (`replicate` without `--watch`), then
    /// retention.
    pub fn run_now(
        &mut self,
        source: &mut dyn ChangeSource,
        consistency: Consistency,
        clock: &dyn Clock,
        progress: &(dyn Fn(&Progress) + Sync),
    ) -> Result<(CycleReport, Result<Vec<u64>, ReplicaError>), AgentError> {
        let now = clock.now_nanos();
        let plan = CyclePlan {
            kind: self.machine.phase(),
            consistency,
            throttle_bytes_per_sec: self.machine.throttle_at(now),
            due_nanos: now,
        };
        let report = self.run_cycle(&plan, source, now, progress)?;
        let retention = self.agent.apply_retention(&self.machine, clock.now_nanos());
        Ok((report, retention))
    }
}

/// One cycle of every disk of `group` from one freeze: the disks' points are one instant and
/// carry one time (see [`FreezeGroup`]). `plans[i]` is disk *i*'s; `progress` hears each disk's
/// progress with its index. A freeze that fails fails every disk's cycle (their changes stay).
pub fn run_group_cycle(
    drivers: &mut [ReplicationDriver<'_>],
    group: &mut dyn FreezeGroup,
    plans: &[CyclePlan],
    clock: &dyn Clock,
    progress: &(dyn Fn(usize, &Progress) + Sync),
) -> Vec<Result<CycleReport, AgentError>> {
    assert!(drivers.len() == group.disks() && plans.len() == group.disks());
    let last_points: Vec<Option<PointRef>> =
        drivers.iter().map(|d| d.agent().last_point()).collect();
    let now = clock.now_nanos();
    if let Err(e) = group.freeze_all(&last_points) {
        let why = e.to_string();
        return drivers
            .iter()
            .map(|_| {
                Err(AgentError::Source(SourceError::live(
                    "freezing the machine's disks together",
                    std::io::Error::other(why.clone()),
                )))
            })
            .collect();
    }
    let results = match group.members() {
        // Side by side: each disk's cycle on its own thread (their blocks' transforms share
        // the pool), so no disk waits frozen for the others to be read.
        Some(members) if members.len() > 1 => std::thread::scope(|scope| {
            let cycles: Vec<_> = drivers
                .iter_mut()
                .zip(members)
                .enumerate()
                .map(|(i, (d, member))| {
                    let plan = &plans[i];
                    scope.spawn(move || d.run_cycle(plan, member, now, &|p| progress(i, p)))
                })
                .collect();
            cycles
                .into_iter()
                .map(|cycle| match cycle.join() {
                    Ok(result) => result,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        }),
        _ => drivers
            .iter_mut()
            .enumerate()
            .map(|(i, d)| d.run_cycle(&plans[i], group.member(i), now, &|p| progress(i, p)))
            .collect(),
    };
    group.cycle_ended();
    results
}

/// The times every disk of a group has a point at: the machine's points. `None` when a
/// disk's points cannot be listed (retention then keeps each disk's own, as for a lone disk).
fn machine_times(drivers: &[ReplicationDriver<'_>]) -> Option<BTreeSet<u64>> {
    let mut common: Option<BTreeSet<u64>> = None;
    for d in drivers {
        let times: BTreeSet<u64> = d
            .agent
            .points()
            .ok()?
            .iter()
            .map(|p| p.time_nanos)
            .collect();
        common = Some(match common {
            None => times,
            Some(c) => c.intersection(&times).copied().collect(),
        });
    }
    common
}

/// [`ReplicationDriver::run_now`] for the disks of `group`: one cycle of all of them now, from
/// one freeze ([`run_group_cycle`]), then each one's retention.
#[allow(clippy::type_complexity)]
pub fn run_group_now(
    drivers: &mut [ReplicationDriver<'_>],
    group: &mut dyn FreezeGroup,
    consistency: Consistency,
    clock: &dyn Clock,
    progress: &(dyn Fn(usize, &Progress) + Sync),
) -> Vec<Result<(CycleReport, Result<Vec<u64>, ReplicaError>), AgentError>> {
    let now = clock.now_nanos();
    let plans: Vec<CyclePlan> = drivers
        .iter()
        .map(|d| CyclePlan {
            kind: d.machine.phase(),
            consistency,
            throttle_bytes_per_sec: d.machine.throttle_at(now),
            due_nanos: now,
        })
        .collect();
    let results = run_group_cycle(drivers, group, &plans, clock, progress);
    let times = machine_times(drivers);
    drivers
        .iter_mut()
        .zip(results)
        .map(|(d, result)| {
            let report = result?;
            let retention =
                d.agent
                    .apply_retention_among(&d.machine, clock.now_nanos(), times.as_ref());
            Ok((report, retention))
        })
        .collect()
}

/// [`watch`] for the disks of `group`: the first disk's schedule decides when (a cycle in which
/// any disk failed is retried as the schedule retries a failed cycle); every cycle freezes all
/// of them at once ([`run_group_cycle`]), then each disk's machine hears its own outcome and
/// its retention runs. `events[i]` hears disk *i*. `cycles` counts group cycles
/// in which every disk committed.
#[allow(clippy::too_many_arguments)]
pub fn watch_group(
    drivers: &mut [ReplicationDriver<'_>],
    group: &mut dyn FreezeGroup,
    consistency: Consistency,
    clock: &dyn Clock,
    stores: &[&dyn pageblob::PageBlobStore],
    pause: &mut dyn Pause,
    events: &mut [&mut dyn WatchEvents],
    cycles: Option<u64>,
) -> WatchEnd {
    assert!(!drivers.is_empty() && drivers.len() == events.len());
    // The machine's schedule: the first disk's, told of the group's outcome (a cycle in which
    // any disk failed made no point of the machine, so it is retried with the backoff). Each
    // disk's own machine hears its own outcome (its phase, its health).
    let mut schedule = drivers[0].machine.clone();
    let mut committed = 0u64;
    loop {
        if cycles.is_some_and(|n| committed >= n) {
            return WatchEnd::CyclesDone;
        }
        if pause.stop_requested() {
            return WatchEnd::Stopped;
        }
        let first = match schedule.poll(clock.now_nanos()) {
            Action::Wait { until_nanos } => {
                for store in stores {
                    store.quiesce();
                }
                if !pause.until(until_nanos) {
                    return WatchEnd::Stopped;
                }
                continue;
            }
            Action::RunCycle(plan) => CyclePlan {
                consistency,
                ..plan
            },
        };
        // A disk that is due itself counts what it missed; the others start with the group.
        let now = clock.now_nanos();
        let plans: Vec<CyclePlan> = drivers
            .iter_mut()
            .map(|d| match d.poll(now) {
                Action::RunCycle(plan) => CyclePlan {
                    consistency,
                    ..plan
                },
                Action::Wait { .. } => d.machine.begin(first),
            })
            .collect();
        for (e, plan) in events.iter_mut().zip(&plans) {
            e.starting(plan);
        }
        let results = {
            let shared: Vec<&dyn WatchEvents> = events.iter().map(|e| &**e).collect();
            run_group_cycle(drivers, group, &plans, clock, &|i, p| shared[i].progress(p))
        };
        let mut all_committed = true;
        let mut taken_over = None;
        // One disk alone keeps its own points.
        let times = if drivers.len() > 1 {
            machine_times(drivers)
        } else {
            None
        };
        for (i, result) in results.iter().enumerate() {
            let outcome = match result {
                Ok(report) => CycleOutcome::Committed {
                    point_time_nanos: report.point.time_nanos,
                },
                Err(e) => {
                    all_committed = false;
                    if e.is_taken_over() {
                        taken_over.get_or_insert_with(|| e.to_string());
                    }
                    CycleOutcome::Failed {
                        reason: e.to_string(),
                    }
                }
            };
            let finished = drivers[i].finish_among(clock.now_nanos(), &outcome, times.as_ref());
            events[i].finished(&plans[i], result, &finished);
        }
        let group_outcome = match (all_committed, results.first()) {
            (true, Some(Ok(report))) => CycleOutcome::Committed {
                point_time_nanos: report.point.time_nanos,
            },
            _ => CycleOutcome::Failed {
                reason: "a disk of the machine did not commit".into(),
            },
        };
        schedule.cycle_finished(clock.now_nanos(), &group_outcome);
        committed += u64::from(all_committed);
        if let Some(why) = taken_over {
            return WatchEnd::TakenOver(why);
        }
    }
}

/// How [`watch`] waits for the next cycle.
pub trait Pause {
    /// Wait until `deadline_nanos` on the driver's clock; `false` stops the watch (Ctrl-C).
    fn until(&mut self, deadline_nanos: u64) -> bool;
    /// A stop was asked for (checked before each cycle, and after one, so a stop during a
    /// cycle ends the watch once that cycle commits or is abandoned).
    fn stop_requested(&self) -> bool {
        false
    }
}

/// What [`watch`] tells its owner (`Sync`: a cycle's progress is reported from its workers).
pub trait WatchEvents: Sync {
    /// A cycle is about to run (the plan as the schedule made it).
    fn starting(&mut self, plan: &CyclePlan);
    /// The cycle's result and what finishing it led to.
    fn finished(
        &mut self,
        plan: &CyclePlan,
        result: &Result<CycleReport, AgentError>,
        finished: &Finished,
    );
    /// Progress of the running cycle.
    fn progress(&self, progress: &Progress);
}

/// Why [`watch`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEnd {
    /// The cycles asked for committed.
    CyclesDone,
    /// [`Pause::until`] said stop.
    Stopped,
    /// Another writer took the replica over ([`ReplicaError::TakenOver`]): every later cycle
    /// would be refused, so the watch ends with the error it met.
    TakenOver(String),
}

#[allow(clippy::too_many_arguments)]
/// Replicate on a schedule: sleep until the machine wants a cycle, run it, finish it, repeat,
/// until `cycles` have committed (`None`: until stopped). Every cycle's points have
/// `consistency`: only the owner knows whether it can freeze the disk, whatever the schedule
/// asks. While it waits, the `stores` let their readers in.
pub fn watch(
    driver: &mut ReplicationDriver<'_>,
    source: &mut dyn ChangeSource,
    consistency: Consistency,
    clock: &dyn Clock,
    stores: &[&dyn pageblob::PageBlobStore],
    pause: &mut dyn Pause,
    events: &mut dyn WatchEvents,
    cycles: Option<u64>,
) -> WatchEnd {
    watch_group(
        std::slice::from_mut(driver),
        &mut Alone(source),
        consistency,
        clock,
        stores,
        pause,
        &mut [events],
        cycles,
    )
}

/// One disk as a group of one ([`watch`]): its freeze is its agent's own, in the cycle.
struct Alone<'s>(&'s mut dyn ChangeSource);

impl FreezeGroup for Alone<'_> {
    fn disks(&self) -> usize {
        1
    }

    fn freeze_all(&mut self, _last_points: &[Option<PointRef>]) -> Result<(), SourceError> {
        Ok(())
    }

    fn member(&mut self, _i: usize) -> &mut dyn ChangeSource {
        self.0
    }
}
