//! The event loop's own invariants ([`LoopInvariants`]), checked as the run goes and reported
//! as one check: time never goes back; every cycle that starts ends (finished or failed, or
//! cut short by its agent's crash or restart) by the time the cost model said it would; and no
//! job sees a point before its cycle completes.

use crate::report::Check;

#[derive(Debug)]
pub(crate) struct LoopInvariants {
    broken: Vec<String>,
    last_event_at: u64,
    /// Per disk, the cycle in flight: (agent epoch, when its end is due).
    in_flight: Vec<Option<(u64, u64)>>,
}

impl LoopInvariants {
    pub(crate) fn new(disks: usize) -> LoopInvariants {
        LoopInvariants {
            broken: Vec::new(),
            last_event_at: 0,
            in_flight: vec![None; disks],
        }
    }

    /// The loop handles `event` at `now`.
    pub(crate) fn event_at(&mut self, now: u64, event: &impl std::fmt::Debug) {
        if now < self.last_event_at {
            self.broken.push(format!(
                "time went back from {} to {now} ({event:?})",
                self.last_event_at
            ));
        }
        self.last_event_at = now;
    }

    /// Disk `disk` (`name`) starts a cycle of agent epoch `epoch` at `now`, due to end at `due`.
    pub(crate) fn cycle_started(&mut self, disk: usize, name: &str, epoch: u64, now: u64) {
        if let Some((e, due)) = self.in_flight[disk].filter(|(e, _)| *e == epoch) {
            self.broken.push(format!(
                "{name} started a cycle at {now} while its cycle of epoch {e} runs until {due}"
            ));
        }
    }

    /// The cycle just started is due to end at `due`.
    pub(crate) fn cycle_due(&mut self, disk: usize, epoch: u64, due: u64) {
        self.in_flight[disk] = Some((epoch, due));
    }

    /// The cycle of `epoch` on `disk` ends.
    pub(crate) fn cycle_ended(&mut self, disk: usize, epoch: u64) {
        if self.in_flight[disk].is_some_and(|(e, _)| e == epoch) {
            self.in_flight[disk] = None;
        }
    }

    /// A job at `now` brought up a copy of `name` from point `sequence`; `arriving`: the
    /// points (sequence → epoch) whose cycles were still running when the job started.
    pub(crate) fn point_seen(
        &mut self,
        name: &str,
        sequence: u64,
        arriving: &std::collections::BTreeMap<u64, u64>,
        now: u64,
    ) {
        if arriving.contains_key(&sequence) {
            self.broken.push(format!(
                "{name}: a job at {now} used point {sequence} before its cycle completed"
            ));
        }
    }

    /// The run ended at `end` after `events` events; `names`: each disk's replica name.
    pub(crate) fn check(mut self, end: u64, events: u64, names: &[&str]) -> Check {
        for (name, flight) in names.iter().zip(&self.in_flight) {
            if let Some((epoch, due)) = flight.filter(|(_, due)| *due < end) {
                self.broken.push(format!(
                    "{name}'s cycle of epoch {epoch} was due to end at {due} and never did"
                ));
            }
        }
        Check {
            name: "the event loop's invariants hold".into(),
            ok: self.broken.is_empty(),
            detail: if self.broken.is_empty() {
                format!(
                    "{events} events, in time order; every cycle started ended; no point used before it arrived"
                )
            } else {
                self.broken.join("; ")
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_invariant_is_reported() {
        let mut ok = LoopInvariants::new(1);
        ok.event_at(5, &"a");
        ok.cycle_started(0, "d", 0, 5);
        ok.cycle_due(0, 0, 9);
        ok.cycle_ended(0, 0);
        assert!(ok.check(100, 1, &["d"]).ok);

        let mut back = LoopInvariants::new(1);
        back.event_at(5, &"a");
        back.event_at(4, &"b");
        assert!(back.check(100, 2, &["d"]).detail.contains("time went back"));

        let mut twice = LoopInvariants::new(1);
        twice.cycle_started(0, "d", 0, 5);
        twice.cycle_due(0, 0, 9);
        twice.cycle_started(0, "d", 0, 6);
        assert!(!twice.check(5, 1, &["d"]).ok);

        let mut never = LoopInvariants::new(1);
        never.cycle_started(0, "d", 0, 5);
        never.cycle_due(0, 0, 9);
        let c = never.check(100, 1, &["d"]);
        assert!(!c.ok && c.detail.contains("never did"), "{}", c.detail);
        let mut early = LoopInvariants::new(1);
        early.point_seen("d", 3, &[(3, 0)].into(), 7);
        assert!(early
            .check(100, 1, &["d"])
            .detail
            .contains("before its cycle completed"));
        // A cycle due after the run's end is not owed.
        let mut late = LoopInvariants::new(1);
        late.cycle_due(0, 0, 200);
        assert!(late.check(100, 1, &["d"]).ok);
    }
}
