//! The replicator as a sans-IO state machine: it is told the time and what happened, and answers
//! what to do next. It owns the schedule (initial replication at its start time, then a cycle
//! every copy-frequency interval), the kind of each cycle (initial, delta, resync after tracking
//! was lost), app-consistent points, the upload throttle of the hour, retention decisions,
//! retries, and health (RPO, missed cycles). The tokio driver of the CLI and the simulator run
//! the same machine; neither reads a clock behind its back.

use std::collections::{BTreeSet, VecDeque};

use crate::policy::Policy;
use crate::replica::manifest::Consistency;
use crate::retention::{points_to_delete_among, PointInfo};

const SEC: u64 = 1_000_000_000;
const HOUR: u64 = 3600 * SEC;
const DAY: u64 = 24 * HOUR;
/// A failed cycle is retried after this long (doubling, capped at the copy frequency).
const FIRST_RETRY: u64 = 10 * SEC;

/// Kind of a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CycleKind {
    /// The first full copy.
    Initial,
    /// Changed blocks since the last point.
    Delta,
    /// Tracking could not be trusted: every block's digest is compared with the replica.
    Resync,
}

/// A cycle the driver must run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CyclePlan {
    pub kind: CycleKind,
    pub consistency: Consistency,
    /// Upload limit for this hour (`None`: unthrottled).
    pub throttle_bytes_per_sec: Option<u64>,
    /// When the cycle was due.
    pub due_nanos: u64,
}

/// What the driver should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until this time (or until something is reported).
    Wait {
        until_nanos: u64,
    },
    RunCycle(CyclePlan),
}

/// How a cycle ended, as the driver reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CycleOutcome {
    Committed { point_time_nanos: u64 },
    Failed { reason: String },
}

/// What the machine knows when it starts: from the replica's points and the tracker.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resume {
    pub last_point_nanos: Option<u64>,
    pub last_app_point_nanos: Option<u64>,
    /// `Some(reason)`: the change tracker cannot be trusted (the first cycle is a resync).
    pub tracking_untrusted: Option<String>,
    /// Replication was off on purpose until this time (the VM ran in Azure after a failover):
    /// cycles that fell due before it are not counted as missed.
    pub paused_until_nanos: Option<u64>,
}

/// Replication health, as ASR reports it for a replicated item.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// Age of the newest recovery point (`None` before the first one).
    pub rpo_nanos: Option<u64>,
    /// Cycles due in the last 24 hours, and how many of them were missed or failed.
    pub cycles_due: u64,
    pub cycles_missed: u64,
    /// Empty when healthy; otherwise why it is a warning.
    pub warnings: Vec<HealthWarning>,
}

/// Why replication of an item is not healthy (ASR's replication-health warnings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthWarning {
    /// More than 20% of the last day's cycles were missed or failed.
    CyclesMissed { missed: u64, due: u64 },
    /// The newest recovery point is more than an hour old.
    StalePoint { age_minutes: u64 },
    /// Change tracking cannot be trusted: the next cycle compares every block.
    ResyncRequired { reason: String },
}

impl HealthWarning {
    /// The same warning, perhaps with other figures: one condition, one event.
    pub fn same_condition(&self, other: &HealthWarning) -> bool {
        match (self, other) {
            (HealthWarning::CyclesMissed { .. }, HealthWarning::CyclesMissed { .. })
            | (HealthWarning::StalePoint { .. }, HealthWarning::StalePoint { .. }) => true,
            (
                HealthWarning::ResyncRequired { reason: a },
                HealthWarning::ResyncRequired { reason: b },
            ) => a == b,
            _ => false,
        }
    }
}

impl std::fmt::Display for HealthWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HealthWarning::CyclesMissed { missed, due } => write!(
                f,
                "{missed} of the last {due} cycles were missed (more than 20%)"
            ),
            HealthWarning::StalePoint { age_minutes } => write!(
                f,
                "the newest recovery point is {age_minutes} minutes old (more than an hour)"
            ),
            HealthWarning::ResyncRequired { reason } => {
                write!(f, "resynchronization required: {reason}")
            }
        }
    }
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.warnings.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Done,
    Missed,
}

/// The state machine.
#[derive(Debug, Clone)]
pub struct Replicator {
    policy: Policy,
    snapshot_limit: Option<usize>,
    phase: CycleKind,
    /// `None` while the initial replication has not started.
    has_point: bool,
    next_due: u64,
    /// A failed cycle is retried at this time (the interval it serves stays `next_due`).
    retry_at: u64,
    /// Intervals due before this time are already counted in `history`.
    counted_to: u64,
    running: Option<CyclePlan>,
    last_point: Option<u64>,
    last_app: Option<u64>,
    failures_in_row: u32,
    /// Due cycles of the last 24 hours and what became of them.
    history: VecDeque<(u64, Slot)>,
    resync_reason: Option<String>,
}

impl Replicator {
    /// Start at `now` for a replica in state `resume`.
    pub fn new(
        policy: Policy,
        snapshot_limit: Option<usize>,
        now_nanos: u64,
        resume: Resume,
    ) -> Replicator {
        let freq = u64::from(policy.copy_frequency_secs) * SEC;
        let (phase, next_due) = match resume.last_point_nanos {
            None => (CycleKind::Initial, initial_start(&policy, now_nanos)),
            Some(last) => {
                let kind = if resume.tracking_untrusted.is_some() {
                    CycleKind::Resync
                } else {
                    CycleKind::Delta
                };
                (kind, last.saturating_add(freq))
            }
        };
        Replicator {
            policy,
            snapshot_limit,
            phase,
            has_point: resume.last_point_nanos.is_some(),
            next_due,
            retry_at: 0,
            counted_to: resume.paused_until_nanos.unwrap_or(0),
            running: None,
            last_point: resume.last_point_nanos,
            last_app: resume.last_app_point_nanos,
            failures_in_row: 0,
            history: VecDeque::new(),
            resync_reason: resume.tracking_untrusted,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The store profile's snapshots per blob, if it caps them.
    pub fn snapshot_limit(&self) -> Option<usize> {
        self.snapshot_limit
    }

    /// When the next cycle may start: the schedule's due time, or later while a failed one
    /// backs off (1, 2, 4, 8, 10 minutes, then every 30).
    pub fn next_attempt_nanos(&self) -> u64 {
        self.next_due.max(self.retry_at)
    }

    /// The kind the next cycle will be.
    pub fn phase(&self) -> CycleKind {
        self.phase
    }

    /// Why the machine is resyncing, when it is.
    pub fn resync_reason(&self) -> Option<&str> {
        self.resync_reason.as_deref()
    }

    fn frequency(&self) -> u64 {
        u64::from(self.policy.copy_frequency_secs) * SEC
    }

    /// What to do at `now`.
    pub fn poll(&mut self, now_nanos: u64) -> Action {
        if self.running.is_some() {
            return Action::Wait {
                until_nanos: u64::MAX,
            };
        }
        // A clock that went back (an NTP correction, a skewed host) must not stall replication
        // until it catches up: the schedule is never more than one interval ahead of the clock.
        let freq = self.frequency();
        if self.has_point && self.next_due > now_nanos.saturating_add(freq) {
            self.next_due = now_nanos.saturating_add(freq);
            self.retry_at = self.retry_at.min(self.next_due);
        }
        let start_at = self.next_due.max(self.retry_at);
        if now_nanos < start_at {
            return Action::Wait {
                until_nanos: start_at,
            };
        }
        // Whole intervals that went by since the cycle was due were missed; the cycle
        // starting now serves the latest one.
        if self.has_point {
            let skipped = (now_nanos - self.next_due) / freq;
            let first = self.next_due.max(self.counted_to);
            let newest_missed = self.next_due + skipped * freq;
            let mut due = first.max(newest_missed.saturating_sub(DAY));
            while due < newest_missed {
                self.record(due, Slot::Missed);
                due += freq;
            }
            self.counted_to = self.counted_to.max(newest_missed);
        }
        let consistency = match self.policy.app_consistent_hours {
            Some(h) if self.phase != CycleKind::Initial => {
                let due = self
                    .last_app
                    .is_none_or(|t| now_nanos.saturating_sub(t) >= u64::from(h) * HOUR);
                if due {
                    Consistency::Application
                } else {
                    Consistency::Crash
                }
            }
            _ => Consistency::Crash,
        };
        let plan = CyclePlan {
            kind: self.phase,
            consistency,
            throttle_bytes_per_sec: self.throttle_at(now_nanos),
            due_nanos: self.next_due + (now_nanos - self.next_due) / freq * freq,
        };
        self.running = Some(plan);
        Action::RunCycle(plan)
    }

    /// Start `plan` now, whatever the schedule says: a disk replicated with the other disks of
    /// its machine runs when the group's schedule does (the first disk's). Its kind is this
    /// machine's phase. Nothing when a cycle is running.
    pub fn begin(&mut self, plan: CyclePlan) -> CyclePlan {
        let plan = CyclePlan {
            kind: self.phase,
            ..plan
        };
        self.running.get_or_insert(plan);
        plan
    }

    /// The running cycle ended at `now`.
    pub fn cycle_finished(&mut self, now_nanos: u64, outcome: &CycleOutcome) {
        let plan = self
            .running
            .take()
            .expect("cycle_finished without a running cycle");
        let freq = self.frequency();
        match outcome {
            CycleOutcome::Committed { point_time_nanos } => {
                self.failures_in_row = 0;
                self.has_point = true;
                self.last_point = Some(*point_time_nanos);
                if plan.consistency == Consistency::Application {
                    self.last_app = Some(*point_time_nanos);
                }
                if plan.kind != CycleKind::Initial {
                    self.record(plan.due_nanos, Slot::Done);
                }
                self.retry_at = 0;
                self.counted_to = self.counted_to.max(plan.due_nanos + freq);
                self.phase = CycleKind::Delta;
                self.resync_reason = None;
                // The next cycle is due one interval after this one was; if that passed while
                // it ran, poll counts the intervals missed.
                self.next_due = plan.due_nanos.max(now_nanos.saturating_sub(freq)) + freq;
            }
            CycleOutcome::Failed { .. } => {
                self.failures_in_row = self.failures_in_row.saturating_add(1);
                let backoff = FIRST_RETRY
                    .saturating_mul(1 << self.failures_in_row.min(20).saturating_sub(1))
                    .min(freq);
                // The interval stays due; the retry is the same cycle (kind unchanged).
                self.retry_at = now_nanos + backoff;
            }
        }
    }

    /// The change tracker lost trust (unclean stop, damaged bitmap, other disk): the next
    /// cycle compares every block's digest with the replica.
    pub fn tracking_lost(&mut self, reason: &str) {
        if self.has_point {
            self.phase = CycleKind::Resync;
        }
        self.resync_reason = Some(reason.to_string());
    }

    /// Points to delete after a commit at `now`; `machine_times`: this disk is replicated with
    /// the other disks of its machine, which have points at those times
    /// ([`points_to_delete_among`]).
    pub fn retention(
        &self,
        now_nanos: u64,
        points: &[PointInfo],
        machine_times: Option<&BTreeSet<u64>>,
    ) -> Vec<u64> {
        points_to_delete_among(
            points,
            now_nanos,
            self.policy.retention_hours,
            self.snapshot_limit,
            machine_times,
        )
    }

    /// Health at `now`: a warning when more than 20% of the last day's cycles were missed, or
    /// the newest point is more than an hour old.
    pub fn health(&self, now_nanos: u64) -> Health {
        let recent = self
            .history
            .iter()
            .filter(|(t, _)| now_nanos.saturating_sub(*t) <= DAY);
        let (mut due, mut missed) = (0u64, 0u64);
        for (_, slot) in recent {
            due += 1;
            missed += u64::from(*slot == Slot::Missed);
        }
        let rpo = self.last_point.map(|t| now_nanos.saturating_sub(t));
        let mut warnings = Vec::new();
        if due > 0 && missed * 5 > due {
            warnings.push(HealthWarning::CyclesMissed { missed, due });
        }
        if let Some(rpo) = rpo.filter(|r| *r > HOUR) {
            warnings.push(HealthWarning::StalePoint {
                age_minutes: rpo / (60 * SEC),
            });
        }
        if let Some(reason) = &self.resync_reason {
            warnings.push(HealthWarning::ResyncRequired {
                reason: reason.clone(),
            });
        }
        Health {
            rpo_nanos: rpo,
            cycles_due: due,
            cycles_missed: missed,
            warnings,
        }
    }

    /// The throttle limit at `now` (UTC hour of day), in bytes per second.
    pub fn throttle_at(&self, now_nanos: u64) -> Option<u64> {
        let hour = ((now_nanos / HOUR) % 24) as u8;
        self.policy.throttle?.bytes_per_sec_in_hour(hour)
    }

    fn record(&mut self, due: u64, slot: Slot) {
        self.history.push_back((due, slot));
        while self
            .history
            .front()
            .is_some_and(|(t, _)| due.saturating_sub(*t) > DAY)
        {
            self.history.pop_front();
        }
    }
}

/// When the initial replication starts: now, or at the policy's next `HH:00` (UTC).
fn initial_start(policy: &Policy, now_nanos: u64) -> u64 {
    match policy.initial_replication_hour {
        None => now_nanos,
        Some(h) => {
            let day_start = now_nanos - now_nanos % DAY;
            let today = day_start + u64::from(h) * HOUR;
            if today >= now_nanos {
                today
            } else {
                today + DAY
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pageblob::Profile;

    const MIN: u64 = 60 * SEC;

    fn policy(text: &str) -> Policy {
        Policy::from_toml(text, Profile::Standard).unwrap()
    }

    /// A machine for a replica whose newest point is at `last` (and `untrusted` tracking).
    fn resumed(text: &str, now: u64, last: u64, untrusted: Option<&str>) -> Replicator {
        Replicator::new(
            policy(text),
            None,
            now,
            Resume {
                last_point_nanos: Some(last),
                tracking_untrusted: untrusted.map(str::to_string),
                ..Resume::default()
            },
        )
    }

    fn run(machine: &mut Replicator, now: u64) -> CyclePlan {
        match machine.poll(now) {
            Action::RunCycle(plan) => plan,
            other => panic!("expected a cycle at {now}, got {other:?}"),
        }
    }

    #[test]
    fn a_pause_on_purpose_is_not_counted_as_missed_cycles() {
        let now = 10 * DAY;
        let last = now - 2 * HOUR;
        for (paused, warned) in [(None, true), (Some(now), false)] {
            let mut m = Replicator::new(
                policy("copy_frequency_secs = 300"),
                None,
                now,
                Resume {
                    last_point_nanos: Some(last),
                    paused_until_nanos: paused,
                    ..Resume::default()
                },
            );
            run(&mut m, now);
            m.cycle_finished(
                now + MIN,
                &CycleOutcome::Committed {
                    point_time_nanos: now,
                },
            );
            let health = m.health(now + MIN);
            let missed = health
                .warnings
                .iter()
                .any(|w| matches!(w, HealthWarning::CyclesMissed { .. }));
            assert_eq!(missed, warned, "{paused:?}: {health:?}");
        }
    }

    #[test]
    fn initial_waits_for_its_start_hour_then_deltas_follow_the_frequency() {
        let p = policy("copy_frequency_secs = 300\ninitial_replication_start = \"22:00\"");
        let now = 10 * DAY + 13 * HOUR; // 13:00 UTC
        let mut m = Replicator::new(p, None, now, Resume::default());
        assert_eq!(
            m.poll(now),
            Action::Wait {
                until_nanos: 10 * DAY + 22 * HOUR
            }
        );
        let start = 10 * DAY + 22 * HOUR;
        let plan = run(&mut m, start);
        assert_eq!(plan.kind, CycleKind::Initial);
        // Polling while it runs asks to wait.
        assert!(matches!(m.poll(start + MIN), Action::Wait { .. }));
        m.cycle_finished(
            start + 40 * MIN,
            &CycleOutcome::Committed {
                point_time_nanos: start,
            },
        );
        // A long initial replication does not count as missed deltas.
        let plan = run(&mut m, start + 40 * MIN);
        assert_eq!(plan.kind, CycleKind::Delta);
        m.cycle_finished(
            start + 41 * MIN,
            &CycleOutcome::Committed {
                point_time_nanos: start + 40 * MIN,
            },
        );
        assert_eq!(
            m.poll(start + 41 * MIN),
            Action::Wait {
                until_nanos: start + 45 * MIN
            }
        );
        assert!(m.health(start + 41 * MIN).is_healthy());
    }

    #[test]
    fn missed_cycles_and_old_points_raise_warnings() {
        let t0 = 100 * DAY;
        let mut m = resumed("copy_frequency_secs = 300", t0, t0, None);
        // The host was off for 2 hours: 23 intervals missed, RPO over an hour.
        let late = t0 + 2 * HOUR;
        let plan = run(&mut m, late);
        assert_eq!(plan.kind, CycleKind::Delta);
        let h = m.health(late);
        assert_eq!(h.cycles_missed, 23);
        assert_eq!(h.warnings.len(), 2, "{:?}", h.warnings);
        m.cycle_finished(
            late + MIN,
            &CycleOutcome::Committed {
                point_time_nanos: late,
            },
        );
        assert!(matches!(
            m.health(late + MIN).warnings[0],
            HealthWarning::CyclesMissed { .. }
        ));
    }

    #[test]
    fn failures_retry_with_backoff_and_tracking_loss_means_resync() {
        let t0 = 5 * DAY;
        let mut m = resumed(
            "copy_frequency_secs = 900",
            t0,
            t0 - 20 * MIN,
            Some("unclean stop"),
        );
        let plan = run(&mut m, t0);
        assert_eq!(plan.kind, CycleKind::Resync);
        m.cycle_finished(
            t0 + SEC,
            &CycleOutcome::Failed {
                reason: "503".into(),
            },
        );
        assert_eq!(
            m.poll(t0 + SEC),
            Action::Wait {
                until_nanos: t0 + 11 * SEC
            }
        );
        let plan = run(&mut m, t0 + 11 * SEC);
        assert_eq!(plan.kind, CycleKind::Resync, "a retry is the same kind");
        m.cycle_finished(
            t0 + 12 * SEC,
            &CycleOutcome::Failed {
                reason: "503".into(),
            },
        );
        assert_eq!(
            m.poll(t0 + 12 * SEC),
            Action::Wait {
                until_nanos: t0 + 32 * SEC
            }
        );
        run(&mut m, t0 + 32 * SEC);
        m.cycle_finished(
            t0 + 40 * SEC,
            &CycleOutcome::Committed {
                point_time_nanos: t0 + 32 * SEC,
            },
        );
        assert_eq!(m.phase(), CycleKind::Delta);
        m.tracking_lost("bitmap damaged");
        assert_eq!(m.phase(), CycleKind::Resync);
        let health = m.health(t0 + 41 * SEC);
        assert!(health.warnings.iter().any(
            |w| matches!(w, HealthWarning::ResyncRequired { reason } if reason.contains("bitmap damaged"))
        ));
        assert_eq!(
            health.cycles_missed, 0,
            "retries of one interval are not misses"
        );
    }

    #[test]
    fn a_clock_that_jumps_back_does_not_stall_the_schedule() {
        let t0 = 20 * DAY;
        let mut m = resumed("copy_frequency_secs = 300", t0, t0, None);
        // Due at t0 + 5 min; the clock is set back an hour.
        let back = t0 - HOUR;
        assert_eq!(
            m.poll(back),
            Action::Wait {
                until_nanos: back + 5 * MIN
            }
        );
        let plan = run(&mut m, back + 5 * MIN);
        assert_eq!(plan.kind, CycleKind::Delta);
    }

    #[test]
    fn app_consistent_points_at_their_frequency_and_throttle_by_work_hours() {
        let t0 = 3 * DAY + 8 * HOUR;
        let mut m = resumed(
            "copy_frequency_secs = 900\nretention_hours = 4\napp_consistent_hours = 1\n\
             [throttle]\nwork_hours_kbps = 8000\nwork_start_hour = 9\nwork_end_hour = 18",
            t0,
            t0,
            None,
        );
        let mut apps = 0;
        let mut t = t0;
        for _ in 0..8 {
            t += 15 * MIN;
            let plan = run(&mut m, t);
            let hour = (t / HOUR) % 24;
            let expected = (9..18).contains(&hour).then_some(1_000_000);
            assert_eq!(plan.throttle_bytes_per_sec, expected, "at hour {hour}");
            apps += usize::from(plan.consistency == Consistency::Application);
            m.cycle_finished(
                t,
                &CycleOutcome::Committed {
                    point_time_nanos: t,
                },
            );
        }
        assert_eq!(apps, 2, "one app-consistent point per hour over two hours");
    }
}
