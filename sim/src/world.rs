//! The simulated world (`World`) and its event loop. A Hyper-V host runs the scenario's VMs;
//! each VM disk is a real VHDX (the `vhdx` writer over an in-memory file) written by a workload
//! generator, whose write hook feeds the disk's real change tracker. Each disk has the real
//! replication agent and replicator state machine, replicating into the real page-blob
//! emulator (see `env` for the parts built once per run). Time is a virtual clock that jumps from
//! event to event (`event_queue`: ordered by time, then by the order they were scheduled);
//! randomness comes from per-component ChaCha8 streams of the seed. The loop hands each event
//! to one handler (`on_*` below). Cycles run the real pipeline the moment they start; how long
//! they take is charged from a cost model (CPU bytes/s and the network's or throttle's
//! bandwidth), and the state machine hears of the result that much later. When the run ends,
//! `final_checks` proves what it left.
//!
//! Limitation: a host crash never interrupts a cycle's storage writes (the cycle has committed
//! when it starts); interrupted cycles are covered by the data path's own crash tests.

use std::collections::BTreeMap;

use datapath::replica::manifest::Consistency;
use datapath::replicator::{Action, CycleOutcome, CyclePlan, Resume};
use datapath::source::TrackedDisk;
use pageblob::faults::FaultConfig;
use pageblob::PageBlobStore;
use rand_core::RngCore;

use crate::env::{Env, Storage, CONTAINER};
use crate::event_queue::{fault_events, Event, Queue};
use crate::flows::{UsedIps, VmSettings};
use crate::host_clock::HostClock;
use crate::invariants::LoopInvariants;
use crate::report::{Check, DiskReport, HealthEvent, Job, Report, Severity, SimError};
use crate::scenario::{Action as StepAction, Scenario};
use crate::sim_disk::{
    price_cycle, run_cycle, run_data_path, workload_minute, CycleRun, Link, SimDisk,
};
use crate::time::{MIN, SEC};

/// A cycle that cannot reach storage fails after this long.
const UPLOAD_TIMEOUT: u64 = 30 * SEC;

/// What a disk's agent decided when polled, and when (host time).
struct Polled {
    action: Action,
    host_now: u64,
    /// The last point that has arrived, when it was taken.
    last_point: Option<u64>,
}

/// Run `scenario` with `seed`, entirely in memory.
pub fn run(scenario: &Scenario, seed: u64) -> Result<Report, SimError> {
    run_in(scenario, seed, &Storage::Memory)
}

/// Run `scenario` with `seed`, its files kept where `storage` says.
pub fn run_in(scenario: &Scenario, seed: u64, storage: &Storage) -> Result<Report, SimError> {
    run_then(scenario, seed, storage, Teardown::Free)
}

/// What becomes of a finished run's world once its report is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Teardown {
    /// Free it (a process that goes on: tests, the swarm).
    Free,
    /// Where the world is all in memory, leave its memory to the process's exit, which is
    /// about to come (`drplane sim run`): freeing the reference drill's ~1.3 GB allocation by
    /// allocation cost ~0.1 s of one core after the work was done. A world with files is
    /// freed, so they are flushed and unlocked as usual.
    LeaveToExit,
}

/// [`run_in`], its world then torn down as `teardown` says.
pub fn run_then(
    scenario: &Scenario,
    seed: u64,
    storage: &Storage,
    teardown: Teardown,
) -> Result<Report, SimError> {
    let leave = teardown == Teardown::LeaveToExit && matches!(storage, Storage::Memory);
    fits_in_memory(scenario, available_memory_bytes())?;
    let env = Env::build(scenario, seed, storage)?;
    let mut world = World::new(&env, scenario)?;
    // The loop runs on a thread of a pool of its own (one thread per core, the loop's
    // included): a cycle's parallel work (its few blocks, the checker's hashes, the final
    // proofs) goes to that pool, and while the loop waits for it, it takes the tasks nobody
    // has started yet instead of sleeping until a thread wakes for them. Its own pool, not the
    // global one, so runs side by side (the swarm, tests) never run one another's loops.
    // A thread waiting for a task runs others meanwhile, which may be whole cycles of other
    // disks: room for many of them on its stack (address space; only what is used is held).
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .stack_size(64 << 20)
        .thread_name(|i| format!("sim-{i}"))
        .build()
        .map_err(|e| SimError::Setup(format!("the simulator's threads: {e}")))?;
    // Each disk's points are proven in the task that ran its cycle, right after the cycle (a
    // task of the pool like the cycle itself, so proofs of different disks run side by side
    // and nothing waits for a thread of its own to wake).
    let report = pool.install(|| {
        while let Some((now, event)) = world.queue.pop() {
            if now >= world.end {
                break;
            }
            match event {
                Event::Workload { disk } => world.on_workload_minutes(now, disk),
                Event::Poll { disk, epoch } => world.on_polls(now, disk, epoch),
                event => world.handle(now, event),
            }?;
        }
        world.finish(leave)
    });
    if leave {
        std::mem::forget(env);
    }
    report
}

/// Refuse a scenario that needs more memory than `available` (when known): a run that
/// cannot fit is refused up front instead of aborting part-way.
pub fn fits_in_memory(scenario: &Scenario, available: Option<u64>) -> Result<(), SimError> {
    let needed = scenario.memory_needed_bytes();
    match available {
        Some(available) if needed > available => Err(SimError::TooBig {
            needed_mib: needed >> 20,
            available_mib: available >> 20,
        }),
        _ => Ok(()),
    }
}

/// The memory this machine has available (Linux's MemAvailable), if it says.
fn available_memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib.saturating_mul(1024))
}

/// When RPO counts as steady: not while an outage, storm or other disturbance lasts, and only
/// two copy intervals after one heals (faults and failbacks push it out per disk).
struct Steadiness {
    /// Per disk, steady from this time on.
    from: Vec<u64>,
    /// Disturbances in progress.
    disturbances: u32,
    /// Each disk's copy interval (its VM's policy).
    intervals: Vec<u64>,
}

impl Steadiness {
    fn is_steady(&self, disk: usize, now: u64) -> bool {
        now > self.from[disk] && self.disturbances == 0
    }

    /// Every disk is steady again two of its intervals after `at`.
    fn calm_after(&mut self, at: u64) {
        for (s, f) in self.from.iter_mut().zip(&self.intervals) {
            *s = (*s).max(at + 2 * f);
        }
    }

    /// A disturbance heals at `at`: each disk is steady two of its intervals after it — or
    /// after its next attempt, when a long fault left its replicator backing off past it.
    fn healed(&mut self, at: u64, disks: &[SimDisk<'_>], host_clocks: &[HostClock]) {
        self.disturbances = self.disturbances.saturating_sub(1);
        for ((s, d), f) in self.from.iter_mut().zip(disks).zip(&self.intervals) {
            let next = host_clocks[d.host_index].true_time(d.driver.machine().next_attempt_nanos());
            *s = (*s).max(at.max(next) + 2 * f);
        }
    }
}

/// The world while it runs: the disks, the queue of what happens next, the shared link, and
/// what the run has recorded so far.
struct World<'e> {
    env: &'e Env,
    scenario: &'e Scenario,
    disks: Vec<SimDisk<'e>>,
    queue: Queue,
    link: Link,
    start: u64,
    end: u64,
    wan_up: bool,
    /// The next restoring job runs with another host's certificate.
    wrong_certificate_next: bool,
    used_ips: UsedIps,
    vm_settings: VmSettings,
    steadiness: Steadiness,
    /// Every event and outcome, hashed: the same scenario and seed give the same hash.
    trace: blake3::Hasher,
    events: u64,
    jobs: Vec<Job>,
    flow_checks: Vec<Check>,
    health_events: Vec<HealthEvent>,
    snapshot_limit_ok: bool,
    invariants: LoopInvariants,
}

impl<'e> World<'e> {
    /// The world at the scenario's start: its disks built, the providers registered, and the
    /// first workload and poll of every disk, the faults and the DR steps queued.
    fn new(env: &'e Env, scenario: &'e Scenario) -> Result<World<'e>, SimError> {
        let mut disks = Vec::new();
        for vm in &scenario.vms {
            for spec in &vm.disks {
                disks.push(env.new_disk(scenario, vm, spec)?);
            }
        }
        let start = scenario.start_nanos;
        let end = start + scenario.duration_hours * 3600 * SEC;
        // The provider registers with the vault: its credentials must not have expired.
        let credentials = datapath::registration::VaultCredentials {
            format_version: 1,
            vault: "sim-vault".into(),
            server_name: "hyperv-host".into(),
            issued_at: scenario.credentials_issued_nanos,
            expires_at: scenario.credentials_issued_nanos + 5 * 24 * 3600 * SEC,
            certificate_thumbprint: env.identity.key_id.to_string(),
            proxy: None,
        };
        let registration = credentials.check_can_register(start);
        let registered = registration.is_ok();
        let mut queue = Queue::default();
        for disk in (0..disks.len()).filter(|_| registered) {
            queue.push(start, Event::Workload { disk });
            queue.push(start, Event::Poll { disk, epoch: 0 });
        }
        for (at, event) in fault_events(scenario, start) {
            queue.push(at, event);
        }
        for (index, step) in scenario.steps.iter().enumerate() {
            queue.push(start + step.at_minutes * MIN, Event::Step { index });
        }
        // Each host's agent registers with the vault.
        let jobs = scenario
            .hosts
            .iter()
            .map(|host| Job {
                name: "register".into(),
                vm: host.clone(),
                started_minute: 0,
                seconds: 1,
                succeeded: registered,
                detail: match &registration {
                    Ok(()) => "provider registered with the vault".into(),
                    Err(e) => e.to_string(),
                },
            })
            .collect();
        let steadiness = Steadiness {
            from: vec![start; disks.len()],
            disturbances: 0,
            intervals: disks
                .iter()
                .map(|d| u64::from(d.policy.copy_frequency_secs) * SEC)
                .collect(),
        };
        Ok(World {
            env,
            scenario,
            link: Link {
                bytes_per_sec: scenario.bandwidth_bytes_per_sec,
                connection_bytes_per_sec: scenario.connection_bytes_per_sec,
                host_throttle: scenario.host_throttle,
                free_at: start,
                host_clocks: vec![HostClock::default(); scenario.hosts.len()],
                cpu_free_at: vec![start; scenario.hosts.len()],
            },
            invariants: LoopInvariants::new(disks.len()),
            disks,
            queue,
            start,
            end,
            wan_up: true,
            wrong_certificate_next: false,
            used_ips: UsedIps::new(),
            vm_settings: VmSettings::default(),
            steadiness,
            trace: blake3::Hasher::new(),
            events: 0,
            jobs,
            flow_checks: Vec::new(),
            health_events: Vec::new(),
            snapshot_limit_ok: true,
        })
    }

    /// The loop's books of one event at `now`: the invariants, the clock, the count, the trace.
    fn note_event(&mut self, now: u64, event: &Event) {
        self.invariants.event_at(now, event);
        self.env.clock.set(now);
        self.events += 1;
        self.trace.update(format!("{now} {event:?}\n").as_bytes());
    }

    /// Advance the clock to `now` and hand `event` to its handler.
    fn handle(&mut self, now: u64, event: Event) -> Result<(), SimError> {
        self.note_event(now, &event);
        match event {
            Event::Workload { disk } => return self.write_minutes(now, &[disk]),
            Event::Poll { disk, epoch } => self.on_poll(now, disk, epoch),
            Event::CycleDone {
                disk,
                epoch,
                outcome,
            } => return self.on_cycle_done(now, disk, epoch, outcome),
            Event::WanDown { minutes } => {
                self.wan_up = false;
                self.steadiness.disturbances += 1;
                self.queue.push(now + minutes * MIN, Event::WanUp);
            }
            Event::WanUp => {
                self.wan_up = true;
                self.healed(now);
            }
            Event::Burst { factor } => self.on_burst(now, factor),
            Event::DeletesRefused { refused } => self.on_deletes_refused(now, refused),
            Event::Bandwidth { bytes_per_sec } => self.on_bandwidth(now, bytes_per_sec),
            Event::Storm {
                busy,
                timeouts,
                torn,
            } => self.on_storm(now, busy, timeouts, torn),
            Event::WrongCertificate => self.wrong_certificate_next = true,
            Event::ClockSkew { seconds } => {
                for clock in &mut self.link.host_clocks {
                    clock.set_skew_secs(seconds);
                }
                self.steadiness
                    .calm_after(now + seconds.unsigned_abs() * SEC);
            }
            Event::Step { index } => self.on_step(now, index),
            Event::AgentRestart { host } => self.on_agent_restart(now, host),
            Event::HostCrash { host, mid_cycle } => self.on_host_crash(now, host, mid_cycle),
            Event::AgentStart { disk, epoch } => self.on_agent_start(now, disk, epoch),
        }
        Ok(())
    }

    /// A disturbance heals at `now`.
    fn healed(&mut self, now: u64) {
        self.steadiness
            .healed(now, &self.disks, &self.link.host_clocks);
    }

    /// `first`'s workload minute at `now`, and those of the other disks queued right after it
    /// at the same instant (every disk's minute falls on the same instants): their books in
    /// the queue's order, their writes side by side ([`World::write_minutes`]). Nothing else
    /// comes between them in the queue, so the run is the one the events make one by one.
    fn on_workload_minutes(&mut self, now: u64, first: usize) -> Result<(), SimError> {
        let mut disks = vec![first];
        let mut taken = vec![false; self.disks.len()];
        taken[first] = true;
        while let Some(Event::Workload { disk }) = self.queue.pop_if(
            now,
            |e| matches!(e, Event::Workload { disk } if !taken[*disk]),
        ) {
            taken[disk] = true;
            disks.push(disk);
        }
        for &disk in &disks {
            self.note_event(now, &Event::Workload { disk });
        }
        self.write_minutes(now, &disks)
    }

    /// The workload of each of `disks` (distinct) writes its minute, each disk on a thread of
    /// the pool (a minute writes its own disk's VHDX, workload stream and tracker marks, and
    /// nothing else); then, in `disks`' order, the tracker hears of every write the VHDX writer
    /// made (they wait for the next agent while the service is down) and the next minute is
    /// queued.
    fn write_minutes(&mut self, now: u64, disks: &[usize]) -> Result<(), SimError> {
        use rayon::prelude::*;
        let hour_of_day = (now / (3600 * SEC) % 24) as u8;
        let mut writing = vec![false; self.disks.len()];
        for &disk in disks {
            writing[disk] = true;
        }
        let mut minutes: Vec<(usize, &mut SimDisk<'_>)> = self
            .disks
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| writing[*i])
            .collect();
        let written: BTreeMap<usize, vhdx::Result<u64>> = minutes
            .par_iter_mut()
            .map(|(i, d)| (*i, workload_minute(d, hour_of_day)))
            .collect();
        for &disk in disks {
            self.after_workload_minute(now, disk, &written[&disk])?;
        }
        Ok(())
    }

    /// What follows a disk's workload minute that wrote `written` bytes.
    fn after_workload_minute(
        &mut self,
        now: u64,
        disk: usize,
        written: &vhdx::Result<u64>,
    ) -> Result<(), SimError> {
        let d = &mut self.disks[disk];
        let written = *written
            .as_ref()
            .map_err(|e| SimError::Setup(format!("workload: {e}")))?;
        if d.azure.is_some() {
            // The VM runs in Azure: nothing to track on the host.
            d.marks.lock().expect("marks").clear();
        }
        d.report.bytes_written_by_workload += written;
        if !d.agent_down {
            for (o, l) in d.marks.lock().expect("marks").drain(..) {
                d.tracker.mark(o, l);
            }
        }
        self.queue.push(now + MIN, Event::Workload { disk });
        Ok(())
    }

    /// The agent asks its state machine what to do: wait, or run a cycle (which a pending
    /// mid-cycle host crash interrupts).
    fn on_poll(&mut self, now: u64, disk: usize, epoch: u64) {
        if let Some(polled) = self.poll_agent(now, disk, epoch) {
            self.act_on_poll(now, disk, epoch, polled, None);
        }
    }

    /// A poll's first part: the RPO sample, the health report and the agent's decision
    /// (`None`: the poll is stale).
    fn poll_agent(&mut self, now: u64, disk: usize, epoch: u64) -> Option<Polled> {
        let d = &mut self.disks[disk];
        if epoch != d.epoch || d.azure.is_some() {
            return None;
        }
        let last_point = d
            .observer
            .points(&d.digest_key)
            .ok()
            .and_then(|p| d.arrived(p).last().map(|p| p.time_nanos));
        let host_clock = self.link.host_clocks[d.host_index];
        if let Some(t) = last_point {
            let steady = self.steadiness.is_steady(disk, now);
            sample_rpo(&mut d.report, now, self.start, host_clock, t, steady);
        }
        let host_now = host_clock.host_time(now);
        self.report_health(now, disk, host_now);
        let action = self.disks[disk].driver.poll(host_now);
        Some(Polled {
            action,
            host_now,
            last_point,
        })
    }

    /// A poll's second part: wait, or run the cycle (its data path already `ran`, when the
    /// polls of one instant ran theirs side by side).
    fn act_on_poll(
        &mut self,
        now: u64,
        disk: usize,
        epoch: u64,
        polled: Polled,
        ran: Option<CycleRun>,
    ) {
        let Polled {
            action,
            host_now,
            last_point,
        } = polled;
        match action {
            Action::Wait { until_nanos } => {
                // Host time back to true time; never in the past.
                let host_clock = self.link.host_clocks[self.disks[disk].host_index];
                let at = host_clock.true_time(until_nanos).max(now + 1);
                if at < self.end {
                    self.queue.push(at, Event::Poll { disk, epoch });
                }
            }
            Action::RunCycle(plan) if self.disks[disk].crash_in_next_cycle && self.wan_up => {
                self.crash_mid_cycle(now, disk, &plan, host_now)
            }
            Action::RunCycle(plan) => {
                self.start_cycle(now, disk, epoch, &plan, host_now, last_point, ran)
            }
        }
    }

    /// Whether the cycles of one instant may run their data paths side by side: the WAN is
    /// up and the store draws no faults (a draw's outcome would depend on which cycle asked
    /// first) and kills no writer.
    fn cycles_may_run_side_by_side(&self) -> bool {
        let c = self.env.store.config();
        self.wan_up
            && c.server_busy <= 0.0
            && c.timeout_after_write <= 0.0
            && c.torn_write <= 0.0
            && c.kill_after_writes.is_none()
    }

    /// `first`'s poll at `now`, and those of the other disks queued right after it at the
    /// same instant (every disk's schedule starts on the same instants), when their cycles may
    /// run side by side: each poll's books and its agent's decision in the queue's order, then
    /// the data paths of the cycles they start, each disk on a thread of the pool (a data path
    /// touches its own disk, agent, replica and audit only), then, in the queue's order again,
    /// the trace, the cost model (the shared link) and the events they queue. Nothing else
    /// comes between them in the queue, so the run is the one the events make one by one.
    fn on_polls(&mut self, now: u64, disk: usize, epoch: u64) -> Result<(), SimError> {
        use rayon::prelude::*;
        let mut polls = vec![(disk, epoch)];
        let may_batch = |d: &SimDisk<'_>| !d.crash_in_next_cycle;
        if self.cycles_may_run_side_by_side() && may_batch(&self.disks[disk]) {
            // A disk joins once, and not when its host is to crash mid-cycle.
            let mut batchable: Vec<bool> = self.disks.iter().map(may_batch).collect();
            batchable[disk] = false;
            while let Some(Event::Poll { disk, epoch }) = self.queue.pop_if(
                now,
                |e| matches!(e, Event::Poll { disk, .. } if batchable[*disk]),
            ) {
                batchable[disk] = false;
                polls.push((disk, epoch));
            }
        }
        if polls.len() == 1 {
            return self.handle(now, Event::Poll { disk, epoch });
        }
        // Each poll lists its disk's points (its RPO sample): the listings, the costly part of
        // the decisions, side by side first; each disk's listing is then kept by its checker's
        // handle (the journal's ETag says it is current), which the decisions below ask again.
        let observers: Vec<_> = polls
            .iter()
            .map(|&(disk, _)| (&self.disks[disk].observer, &self.disks[disk].digest_key))
            .collect();
        observers.into_par_iter().for_each(|(observer, key)| {
            // A failure here is the decision's to meet (and report) again.
            let _ = observer.points(key);
        });
        let mut decided = Vec::with_capacity(polls.len());
        for &(disk, epoch) in &polls {
            // As `handle` does for a poll.
            let event = Event::Poll { disk, epoch };
            self.invariants.event_at(now, &event);
            self.env.clock.set(now);
            self.events += 1;
            decided.push((
                format!("{now} {event:?}\n"),
                self.poll_agent(now, disk, epoch),
            ));
        }
        let plans: BTreeMap<usize, (&CyclePlan, u64)> = polls
            .iter()
            .zip(&decided)
            .filter_map(|(&(disk, _), (_, polled))| match polled {
                Some(Polled {
                    action: Action::RunCycle(plan),
                    host_now,
                    ..
                }) => Some((disk, (plan, *host_now))),
                _ => None,
            })
            .collect();
        let mut ran: BTreeMap<usize, CycleRun> = self
            .disks
            .iter_mut()
            .enumerate()
            .filter_map(|(i, d)| {
                plans
                    .get(&i)
                    .map(|&(plan, host_now)| (i, d, plan, host_now))
            })
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|(i, d, plan, host_now)| (i, run_data_path(d, plan, host_now)))
            .collect();
        for (&(disk, epoch), (line, polled)) in polls.iter().zip(decided) {
            self.trace.update(line.as_bytes());
            if let Some(polled) = polled {
                let ran = ran.remove(&disk);
                self.act_on_poll(now, disk, epoch, polled, ran);
            }
        }
        Ok(())
    }

    /// The vault hears of the disk's health changes as its agent reports them.
    fn report_health(&mut self, now: u64, disk: usize, host_now: u64) {
        let d = &mut self.disks[disk];
        let warnings = d.driver.machine().health(host_now).warnings;
        let conditions_changed = warnings.len() != d.warnings.len()
            || warnings
                .iter()
                .zip(&d.warnings)
                .any(|(a, b)| !a.same_condition(b));
        if conditions_changed {
            let item = format!("{}/{}", d.vm, d.spec.name);
            let minute = (now - self.start) / MIN;
            if warnings.is_empty() {
                self.health_events.push(HealthEvent {
                    minute,
                    item,
                    severity: Severity::Healthy,
                    message: "replication health is normal again".into(),
                });
            } else {
                for w in warnings
                    .iter()
                    .filter(|w| !d.warnings.iter().any(|b| b.same_condition(w)))
                {
                    self.health_events.push(HealthEvent {
                        minute,
                        item: item.clone(),
                        severity: Severity::Warning,
                        message: w.to_string(),
                    });
                }
            }
        }
        d.warnings = warnings;
    }

    /// The host dies part-way through this cycle's storage writes: after a seeded number of
    /// them nothing more reaches the account, and the agent is gone without a clean stop.
    fn crash_mid_cycle(&mut self, now: u64, disk: usize, plan: &CyclePlan, host_now: u64) {
        let d = &mut self.disks[disk];
        d.crash_in_next_cycle = false;
        let writes = d.crash_stream.next_u64() % 48;
        let store = &self.env.store;
        let before = store.config();
        store.set_config(FaultConfig {
            kill_after_writes: Some(writes),
            ..before
        });
        let (_, outcome, detail) = run_cycle(d, plan, host_now, &mut self.link, self.start);
        store.set_config(before);
        self.trace
            .update(format!("{now} crash after {writes} writes: {detail}").as_bytes());
        if let CycleOutcome::Failed { .. } = outcome {
            d.report.crashed_cycles += 1;
        }
        self.steadiness.calm_after(now + MIN);
        self.agent_gone(now, disk);
    }

    /// Run the cycle now; its end (by the cost model) is queued.
    /// Start the planned cycle: its data path (unless it already `ran`), then the cost model.
    #[allow(clippy::too_many_arguments)]
    fn start_cycle(
        &mut self,
        now: u64,
        disk: usize,
        epoch: u64,
        plan: &CyclePlan,
        host_now: u64,
        last_point: Option<u64>,
        ran: Option<CycleRun>,
    ) {
        let d = &mut self.disks[disk];
        self.invariants
            .cycle_started(disk, &d.replica_name, epoch, now);
        // A cycle's point is recoverable only when the cycle completes: until then the RPO
        // keeps growing from the point before it.
        d.rpo_base = last_point;
        d.cycle_started = now;
        let (done_at, outcome) = if self.wan_up {
            let ran = ran.unwrap_or_else(|| run_data_path(d, plan, host_now));
            let (done_at, outcome, detail) =
                price_cycle(d, ran, plan, host_now, &mut self.link, self.start);
            // The cost model runs in host time; the queue in true time.
            let done_at = now + done_at.saturating_sub(host_now);
            self.trace.update(detail.as_bytes());
            if std::env::var_os("DRPLANE_SIM_DEBUG").is_some() {
                eprint!("{detail}");
            }
            (done_at, outcome)
        } else {
            d.report.failed_cycles += 1;
            let reason = "WAN down: storage unreachable".into();
            (now + UPLOAD_TIMEOUT, CycleOutcome::Failed { reason })
        };
        if let CycleOutcome::Committed { .. } = outcome {
            // The point is in the store already; it arrives when the cycle completes.
            if let Some(p) = d
                .observer
                .points(&d.digest_key)
                .ok()
                .and_then(|p| p.last().cloned())
            {
                d.arriving.insert(p.sequence, epoch);
            }
        }
        self.invariants.cycle_due(disk, epoch, done_at);
        self.queue.push(
            done_at,
            Event::CycleDone {
                disk,
                epoch,
                outcome,
            },
        );
    }

    /// The cycle ends: finished or failed (or cut short by its agent's end, when its epoch is
    /// stale). The state machine hears of it, retention runs, the next poll is queued.
    fn on_cycle_done(
        &mut self,
        now: u64,
        disk: usize,
        epoch: u64,
        outcome: CycleOutcome,
    ) -> Result<(), SimError> {
        self.invariants.cycle_ended(disk, epoch);
        let d = &mut self.disks[disk];
        // Its point has arrived (a crash of the agent does not stop bytes already sent).
        d.arriving.retain(|_, e| *e != epoch);
        if epoch != d.epoch {
            return Ok(());
        }
        let host_clock = self.link.host_clocks[d.host_index];
        let host_now = host_clock.host_time(now);
        if let (CycleOutcome::Committed { .. }, Some(base)) = (&outcome, d.rpo_base) {
            let steady = self.steadiness.is_steady(disk, now);
            sample_rpo(&mut d.report, now, self.start, host_clock, base, steady);
            if steady {
                let secs = now.saturating_sub(d.cycle_started) as f64 / 1e9;
                d.report.max_steady_cycle_secs = d.report.max_steady_cycle_secs.max(secs);
            }
        }
        // Retention runs after every cycle, failed ones too (the driver's sequence); in a
        // storm it may fail itself and runs again after the next cycle.
        match d.driver.finish(host_now, &outcome).retention {
            Ok(deleted) => {
                for s in deleted {
                    d.forget_image(s);
                }
            }
            Err(e) => {
                self.trace
                    .update(format!("{now} retention failed: {e}\n").as_bytes());
            }
        }
        if let (CycleOutcome::Committed { .. }, Some(limit)) = (&outcome, self.env.snapshot_limit) {
            // Counted on the account itself (orphans included), not through faults.
            let blob = format!("{}.replica", d.replica_name);
            let snapshots = self
                .env
                .emulator
                .list_blobs(CONTAINER, "", true)
                .map_err(|e| SimError::Setup(e.to_string()))?
                .into_iter()
                .filter(|b| b.properties.snapshot.is_some() && b.name == blob)
                .count();
            self.snapshot_limit_ok &= snapshots <= limit;
        }
        self.queue.push(now, Event::Poll { disk, epoch });
        Ok(())
    }

    /// Bigger cycles for a while: a disturbance for the RPO bound until it ends.
    fn on_burst(&mut self, now: u64, factor: u32) {
        if factor > 1 {
            self.steadiness.disturbances += 1;
        } else {
            self.healed(now);
        }
        for d in self.disks.iter_mut() {
            d.burst = factor;
        }
    }

    /// Cycles fail once the snapshot limit is reached: a disturbance while it lasts.
    fn on_deletes_refused(&mut self, now: u64, refused: bool) {
        if refused {
            self.steadiness.disturbances += 1;
        } else {
            self.healed(now);
        }
        let store = &self.env.store;
        store.set_config(FaultConfig {
            refuse_deletes: refused,
            ..store.config()
        });
    }

    /// A slow WAN is a disturbance: cycles take longer and RPO grows meanwhile.
    fn on_bandwidth(&mut self, now: u64, bytes_per_sec: u64) {
        if bytes_per_sec < self.scenario.bandwidth_bytes_per_sec {
            self.steadiness.disturbances += 1;
        } else {
            self.healed(now);
        }
        self.link.bytes_per_sec = bytes_per_sec;
    }

    /// A storage storm starts (any rate above zero) or ends.
    fn on_storm(&mut self, now: u64, busy: f64, timeouts: f64, torn: f64) {
        if busy > 0.0 || timeouts > 0.0 || torn > 0.0 {
            self.steadiness.disturbances += 1;
        } else {
            self.healed(now);
        }
        let store = &self.env.store;
        store.set_config(FaultConfig {
            server_busy: busy,
            timeout_after_write: timeouts,
            torn_write: torn,
            ..store.config()
        });
    }

    /// The scenario's DR step `index` runs as a vault job on its VM's host's clock.
    fn on_step(&mut self, now: u64, index: usize) {
        let scenario = self.scenario;
        let step = &scenario.steps[index];
        let members: Vec<usize> = (0..self.disks.len())
            .filter(|&i| self.disks[i].vm == step.vm)
            .collect();
        let restores = matches!(
            step.action,
            StepAction::TestFailover(_)
                | StepAction::UnplannedFailover(_)
                | StepAction::PlannedFailover
        );
        let wrong = self.wrong_certificate_next && restores;
        let vm_host = scenario
            .vms
            .iter()
            .find(|v| v.name == step.vm)
            .and_then(|v| scenario.hosts.iter().position(|h| *h == v.host))
            .unwrap_or(0);
        let host_now = self.link.host_clocks[vm_host].host_time(now);
        let env = self.env;
        let arriving: Vec<BTreeMap<u64, u64>> = members
            .iter()
            .map(|&i| self.disks[i].arriving.clone())
            .collect();
        let (job, mut checks) = crate::flows::perform(
            step,
            scenario,
            &mut self.used_ips,
            &mut self.vm_settings,
            &mut self.disks,
            &members,
            if wrong {
                &env.wrong_identity
            } else {
                &env.identity
            },
            host_now,
            &mut self.link,
            self.wan_up,
        );
        if wrong {
            self.wrong_certificate_next = false;
            // Refused, and nothing was brought up from undecryptable data.
            let nothing_up = members
                .iter()
                .all(|&i| self.disks[i].test_copy.is_none() && self.disks[i].azure.is_none());
            checks = vec![Check {
                name: format!("{} with the wrong certificate is refused", job.name),
                ok: !job.succeeded && nothing_up,
                detail: job.detail.clone(),
            }];
        }
        for (&i, arriving) in members.iter().zip(&arriving) {
            let d = &self.disks[i];
            for copy in [&d.azure, &d.test_copy].into_iter().flatten() {
                self.invariants
                    .point_seen(&d.replica_name, copy.point, arriving, now);
            }
        }
        self.trace.update(format!("{now} job {job:?}\n").as_bytes());
        let resumed = job.succeeded && matches!(step.action, StepAction::Failback);
        self.jobs.push(Job {
            started_minute: (now - self.start) / MIN,
            ..job
        });
        self.flow_checks.extend(checks);
        if resumed {
            self.reprotect(now, &members);
        }
    }

    /// Re-protection after a failback: a fresh schedule whose first cycle compares every block
    /// with the replica (sending only what differs); the points are kept.
    fn reprotect(&mut self, now: u64, members: &[usize]) {
        for &i in members {
            let d = &mut self.disks[i];
            if d.agent_down {
                // The host is down (a crash): the agent that starts again brings a fresh
                // schedule whose first cycle is a resync anyway.
                continue;
            }
            // The host's schedule runs on the host's clock.
            let host_now = self.link.host_clocks[d.host_index].host_time(now);
            let points = d.observer.points(&d.digest_key).unwrap_or_default();
            let resume = Resume {
                last_point_nanos: points.last().map(|p| p.time_nanos),
                last_app_point_nanos: points
                    .iter()
                    .rev()
                    .find(|p| p.consistency == Consistency::Application)
                    .map(|p| p.time_nanos),
                tracking_untrusted: Some(
                    "re-protection after failback: every block is compared".into(),
                ),
                // Failed over, the host was not meant to replicate.
                paused_until_nanos: Some(host_now),
            };
            d.driver.restart_schedule(host_now, resume);
            d.epoch += 1;
            let steady_from = &mut self.steadiness.from[i];
            *steady_from = (*steady_from).max(now + 2 * self.steadiness.intervals[i]);
            self.queue.push(
                now,
                Event::Poll {
                    disk: i,
                    epoch: d.epoch,
                },
            );
        }
    }

    /// The replication service restarts on `host` (or every host): it stops cleanly, and the
    /// tracking driver keeps recording writes until it is back a minute later.
    fn on_agent_restart(&mut self, now: u64, host: Option<String>) {
        self.steadiness.calm_after(now + MIN);
        for i in 0..self.disks.len() {
            let d = &mut self.disks[i];
            if d.agent_down || host.as_ref().is_some_and(|h| *h != d.host) {
                continue;
            }
            let mut host = TrackedDisk {
                tracker: &mut d.tracker,
                view: None,
            };
            if let Err(e) = d.driver.agent_mut().stop_cleanly(&mut host) {
                self.trace
                    .update(format!("{now} clean stop failed: {e}\n").as_bytes());
            }
            self.agent_gone(now, i);
        }
    }

    /// `host` (or every host) crashes; its agents are back a minute later. With `mid_cycle`,
    /// the crash strikes inside each disk's next cycle instead (see `World::on_poll`).
    fn on_host_crash(&mut self, now: u64, host: Option<String>, mid_cycle: bool) {
        self.steadiness.calm_after(now + MIN);
        for i in 0..self.disks.len() {
            let d = &mut self.disks[i];
            if host.as_ref().is_some_and(|h| *h != d.host) {
                continue;
            }
            if mid_cycle && !d.agent_down {
                d.crash_in_next_cycle = true;
                continue;
            }
            // The agent dies without a clean stop (its tracker is left untrusted).
            self.agent_gone(now, i);
        }
    }

    /// Disk `disk`'s agent is gone (its events of the old epoch are stale); it starts again a
    /// minute later.
    fn agent_gone(&mut self, now: u64, disk: usize) {
        let d = &mut self.disks[disk];
        d.epoch += 1;
        d.agent_down = true;
        self.queue.push(
            now + MIN,
            Event::AgentStart {
                disk,
                epoch: d.epoch,
            },
        );
    }

    /// The agent comes back with an untrusted tracker and a fresh nonce epoch; opening the
    /// replica needs the storage account, so a storm may make it try again a minute later.
    fn on_agent_start(&mut self, now: u64, disk: usize, epoch: u64) {
        let env = self.env;
        let d = &mut self.disks[disk];
        if epoch != d.epoch {
            return;
        }
        match env.open_agent(&d.replica_name, d.spec.size_bytes, d.epoch, &d.policy) {
            Ok((driver, tracker)) => {
                // Replace: the old agent and its tracker are dropped without a clean stop.
                d.driver = driver;
                d.tracker = tracker;
                d.agent_down = false;
                // Writes recorded while the service was down reach the new tracker.
                for (o, l) in d.marks.lock().expect("marks").drain(..) {
                    d.tracker.mark(o, l);
                }
                self.queue.push(now, Event::Poll { disk, epoch });
            }
            Err(e) => {
                self.trace
                    .update(format!("{now} agent start failed: {e}\n").as_bytes());
                self.queue
                    .push(now + MIN, Event::AgentStart { disk, epoch });
            }
        }
    }

    /// The run is over: prove what it left and report. `leave`: the disks' memory is left to
    /// the process's exit ([`Teardown::LeaveToExit`]).
    fn finish(mut self, leave: bool) -> Result<Report, SimError> {
        use rayon::prelude::*;
        let (env, scenario, end) = (self.env, self.scenario, self.end);
        env.clock.set(end);
        env.store.set_config(env.calm);
        let restores = crate::final_checks::prove_points(&mut self.disks, end)?;
        let names: Vec<&str> = self.disks.iter().map(|d| d.replica_name.as_str()).collect();
        let mut checks = vec![
            crate::final_checks::nonces_unique(&self.disks),
            self.invariants.check(end, self.events, &names),
        ];
        checks.extend(self.flow_checks);
        if scenario
            .steps
            .iter()
            .any(|s| s.action == StepAction::CleanupTestFailover)
        {
            let leftovers = self.disks.iter().filter(|d| d.test_copy.is_some()).count();
            checks.push(Check {
                name: "test failover cleanup leaves nothing behind".into(),
                ok: leftovers == 0,
                detail: format!("{leftovers} test disks left"),
            });
        }
        checks.push(restores);
        checks.extend(crate::final_checks::expectations(scenario, &self.jobs));
        checks.push(Check {
            name: "live snapshots within the profile limit".into(),
            ok: self.snapshot_limit_ok,
            detail: match env.snapshot_limit {
                Some(n) => format!("at most {n} snapshots per blob"),
                None => "no snapshot limit (standard storage)".into(),
            },
        });
        checks.push(crate::final_checks::rpo_bound(&self.disks));
        // The vault keeps the last 24 hours of health events.
        let from = scenario.duration_hours.saturating_sub(24) * 60;
        self.health_events.retain(|e| e.minute >= from);
        Ok(Report {
            scenario: scenario.name.clone(),
            scenario_hash: scenario.hash.clone(),
            seed: env.seed,
            simulated_hours: scenario.duration_hours,
            events: self.events,
            trace_hash: self.trace.finalize().to_hex().to_string(),
            health_events: self.health_events,
            replicated_items: crate::flows::replicated_items(
                scenario,
                &self.disks,
                &self.vm_settings,
                &self.jobs,
            ),
            // Each disk's memory (its VHDX, models, agent) is let go on the pool, side by side.
            disks: self
                .disks
                .into_par_iter()
                .map(|mut d| {
                    let report = std::mem::take(&mut d.report);
                    if leave {
                        std::mem::forget(d);
                    }
                    report
                })
                .collect(),
            jobs: self.jobs,
            excluded_disks: scenario
                .vms
                .iter()
                .flat_map(|v| v.excluded.iter().map(move |d| format!("{}/{d}", v.name)))
                .collect(),
            faults: crate::final_checks::fault_spans(scenario),
            checks,
        })
    }
}

/// Record an RPO sample at `now`: the age of the point made at host time `point_nanos`, as the
/// host sees it (its points carry its clock's times).
fn sample_rpo(
    report: &mut DiskReport,
    now: u64,
    start: u64,
    host_clock: HostClock,
    point_nanos: u64,
    steady: bool,
) {
    let rpo = host_clock.host_time(now).saturating_sub(point_nanos) as f64 / 1e9;
    report.max_rpo_secs = report.max_rpo_secs.max(rpo);
    report
        .rpo_samples
        .push(((now - start) as f64 / MIN as f64, rpo));
    if steady {
        report.max_steady_rpo_secs = report.max_steady_rpo_secs.max(rpo);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
name = "checker-power"
seed = 5
duration_hours = 2
[policy]
copy_frequency_secs = 300
[[vm]]
name = "vm"
[[vm.disk]]
name = "os"
size_mib = 8
churn_mib_per_hour = 30
"#;

    /// Run `scenario` with a change tracker that goes deaf to the writes of one minute of
    /// workload (at minute 45) when `deaf` is set.
    fn run_with_deaf_tracker(deaf: bool) -> Report {
        let scenario = Scenario::parse(SMALL).unwrap();
        let env = Env::build(&scenario, 1, &Storage::Memory).unwrap();
        let mut world = World::new(&env, &scenario).unwrap();
        let deaf_at = world.start + 45 * MIN;
        let mut done = false;
        while let Some((now, event)) = world.queue.pop() {
            if now >= world.end {
                break;
            }
            if deaf && !done && now >= deaf_at {
                done = true;
                let d = &mut world.disks[0];
                d.writer.set_write_hook(|_, _| {});
                crate::sim_disk::workload_minute(d, 0).unwrap();
                let marks = std::sync::Arc::clone(&d.marks);
                d.writer
                    .set_write_hook(move |o, l| marks.lock().expect("marks").push((o, l)));
            }
            world.handle(now, event).unwrap();
        }
        world.finish(false).unwrap()
    }

    /// The checker's model comes from the workload's writes, not from the hook that feeds
    /// the change tracker: a write the tracker never hears of is caught (it was invisible to
    /// both when the model was fed by the same hook).
    #[test]
    fn a_write_the_change_tracker_misses_is_caught_by_the_checker() {
        let clean = run_with_deaf_tracker(false);
        assert!(clean.checks.iter().all(|c| c.ok), "{:?}", clean.checks);
        let deaf = run_with_deaf_tracker(true);
        let failed: Vec<&str> = deaf
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect();
        assert!(!failed.is_empty(), "a missed write went unnoticed");
    }

    /// Failback is reverse replication through the data path: the Azure copy becomes a
    /// replica of its own with a committed point in the storage account, and the host's disk
    /// ends as the Azure copy by the model (it used to be a direct copy between disks).
    #[test]
    fn failback_goes_through_a_replica_and_a_point() {
        let text = format!(
            "{SMALL}[[step]]\naction = \"planned_failover\"\nat_minutes = 30\nvm = \"vm\"\n\
             [[step]]\naction = \"failback\"\nat_minutes = 60\nvm = \"vm\"\n"
        );
        let scenario = Scenario::parse(&text).unwrap();
        let env = Env::build(&scenario, 1, &Storage::Memory).unwrap();
        let mut world = World::new(&env, &scenario).unwrap();
        while let Some((now, event)) = world.queue.pop() {
            if now >= world.end {
                break;
            }
            world.handle(now, event).unwrap();
        }
        let report = world.finish(false).unwrap();
        let failback = report
            .checks
            .iter()
            .find(|c| {
                c.name
                    .starts_with("failback of vm-os goes through the data path")
            })
            .expect("a failback check");
        assert!(failback.ok, "{failback:?}");
        assert!(report.checks.iter().all(|c| c.ok), "{:?}", report.checks);
        let snapshots = env
            .emulator
            .list_blobs(crate::env::CONTAINER, "", true)
            .unwrap()
            .into_iter()
            .filter(|b| b.name == "vm-os.failback.replica" && b.properties.snapshot.is_some())
            .count();
        assert_eq!(snapshots, 1, "the reverse replication committed one point");
    }
}
