//! The simulator's events ([`Event`]), the queue that orders them by time and then by the order
//! they were scheduled ([`Queue`]), and the scenario's faults turned into the events that start
//! and end them ([`fault_events`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use datapath::replicator::CycleOutcome;

use crate::scenario::{FaultKind, Scenario};
use crate::time::MIN;

/// Something that happens at one instant of true time. Disk events carry the agent epoch they
/// were scheduled in: a crash or restart bumps the epoch, and older events are stale.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// The disk's workload writes its minute of churn.
    Workload {
        disk: usize,
    },
    /// The disk's agent asks its state machine what to do.
    Poll {
        disk: usize,
        epoch: u64,
    },
    /// A cycle's time (by the cost model) is up: the state machine hears its outcome.
    CycleDone {
        disk: usize,
        epoch: u64,
        outcome: CycleOutcome,
    },
    WanDown {
        minutes: u64,
    },
    WanUp,
    /// Every disk writes this many times its churn from now on (1: back to normal).
    Burst {
        factor: u32,
    },
    /// Deletes refused by the storage account (snapshot pressure) from now on, or not.
    DeletesRefused {
        refused: bool,
    },
    /// The WAN's bandwidth (bytes per second) from now on.
    Bandwidth {
        bytes_per_sec: u64,
    },
    /// One host (`Some`) or all of them.
    HostCrash {
        host: Option<String>,
        mid_cycle: bool,
    },
    AgentRestart {
        host: Option<String>,
    },
    AgentStart {
        disk: usize,
        epoch: u64,
    },
    Storm {
        busy: f64,
        timeouts: f64,
        torn: f64,
    },
    WrongCertificate,
    ClockSkew {
        seconds: i64,
    },
    /// The scenario's DR step with this index.
    Step {
        index: usize,
    },
}

/// Events ordered by (time, sequence).
#[derive(Default)]
pub(crate) struct Queue {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    next: u64,
}

impl Queue {
    pub(crate) fn push(&mut self, at: u64, event: Event) {
        self.heap.push(Reverse((at, self.next)));
        self.events.insert(self.next, event);
        self.next += 1;
    }

    pub(crate) fn pop(&mut self) -> Option<(u64, Event)> {
        let Reverse((at, seq)) = self.heap.pop()?;
        Some((at, self.events.remove(&seq).expect("queued event")))
    }

    /// The next event, popped, if it is due at `at` and `take` accepts it.
    pub(crate) fn pop_if(&mut self, at: u64, take: impl FnOnce(&Event) -> bool) -> Option<Event> {
        let &Reverse((next_at, seq)) = self.heap.peek()?;
        if next_at != at || !take(&self.events[&seq]) {
            return None;
        }
        self.pop().map(|(_, event)| event)
    }
}

/// The events that start (and, for faults that last, end) each of the scenario's faults, in
/// the scenario's order; `start`: the run's first instant.
pub(crate) fn fault_events(scenario: &Scenario, start: u64) -> Vec<(u64, Event)> {
    let mut events = Vec::new();
    for f in &scenario.faults {
        let at = start + f.at_minutes * MIN;
        // The event that starts the fault, and for one that lasts, how long and what ends it.
        let (begin, end): (Event, Option<(u64, Event)>) = match f.kind.clone() {
            FaultKind::WanDown { minutes } => (Event::WanDown { minutes }, None),
            FaultKind::ChurnBurst { minutes, factor } => (
                Event::Burst { factor },
                Some((minutes, Event::Burst { factor: 1 })),
            ),
            FaultKind::SnapshotPressure { minutes } => (
                Event::DeletesRefused { refused: true },
                Some((minutes, Event::DeletesRefused { refused: false })),
            ),
            FaultKind::WanDegraded { minutes, mbps } => (
                Event::Bandwidth {
                    bytes_per_sec: (mbps * 1_000_000 / 8).max(1),
                },
                Some((
                    minutes,
                    Event::Bandwidth {
                        bytes_per_sec: scenario.bandwidth_bytes_per_sec,
                    },
                )),
            ),
            FaultKind::HostCrash { host, mid_cycle } => {
                (Event::HostCrash { host, mid_cycle }, None)
            }
            FaultKind::StorageStorm {
                minutes,
                busy,
                timeouts,
                torn,
            } => (
                Event::Storm {
                    busy,
                    timeouts,
                    torn,
                },
                Some((
                    minutes,
                    Event::Storm {
                        busy: 0.0,
                        timeouts: 0.0,
                        torn: 0.0,
                    },
                )),
            ),
            FaultKind::WrongCertificate => (Event::WrongCertificate, None),
            FaultKind::ClockSkew { seconds } => (Event::ClockSkew { seconds }, None),
            FaultKind::AgentRestart { host } => (Event::AgentRestart { host }, None),
        };
        events.push((at, begin));
        if let Some((minutes, end)) = end {
            events.push((at + minutes * MIN, end));
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pop_if_takes_the_next_event_only_when_it_is_due_then_and_wanted() {
        let mut q = Queue::default();
        q.push(5, Event::Workload { disk: 0 });
        q.push(5, Event::Workload { disk: 1 });
        q.push(5, Event::WanUp);
        q.push(7, Event::Workload { disk: 2 });
        assert!(matches!(q.pop(), Some((5, Event::Workload { disk: 0 }))));
        // Another instant, or an event the caller does not want: left in the queue.
        assert!(q.pop_if(6, |_| true).is_none());
        assert!(q.pop_if(5, |e| matches!(e, Event::WanUp)).is_none());
        assert!(matches!(
            q.pop_if(5, |e| matches!(e, Event::Workload { .. })),
            Some(Event::Workload { disk: 1 })
        ));
        assert!(q
            .pop_if(5, |e| matches!(e, Event::Workload { .. }))
            .is_none());
        assert!(matches!(q.pop(), Some((5, Event::WanUp))));
        assert!(matches!(
            q.pop_if(7, |_| true),
            Some(Event::Workload { disk: 2 })
        ));
        assert!(q.pop_if(7, |_| true).is_none());
    }
}
