//! The simulated world and its event loop. A Hyper-V host runs the scenario's VMs; each VM disk
//! is a real VHDX (the `vhdx` writer over an in-memory file) written by a workload generator,
//! whose write hook feeds the disk's real change tracker. Each disk has the real replication
//! agent and replicator state machine, replicating into the real page-blob emulator. Time is a
//! virtual clock that jumps from event to event (events ordered by time, then by the order they
//! were scheduled); randomness comes from per-component ChaCha8 streams of the seed. Cycles run
//! the real pipeline the moment they start; how long they take is charged from a cost model
//! (CPU bytes/s and the network's or throttle's bandwidth), and the state machine hears of the
//! result that much later.
//!
//! Limitation: a host crash never interrupts a cycle's storage writes (the cycle has committed
//! when it starts); interrupted cycles are covered by the data path's own crash tests.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::{Arc, Mutex};

use datapath::agent::AgentTarget;
use datapath::driver::ReplicationDriver;
use datapath::keys::{Identity, KeyId};
use datapath::replica::block_record::BlockCodec;
use datapath::replicator::{Action, CycleOutcome};
use datapath::tracking::ChangeTracker;
use pageblob::clock::{Clock, ManualClock};
use pageblob::data_log::Durability;
use pageblob::faults::{FaultConfig, FaultyStore};
use pageblob::read_retry::ReadRetry;
use pageblob::{Emulator, PageBlobStore, Profile};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use vhdx::{CreateOptions, MemoryFile, VhdxWriter};

use crate::audit::PointAudit;
use crate::content::ContentModel;
use crate::host_clock::HostClock;
use crate::report::{Check, DiskReport, HealthEvent, Job, Report, Severity, SimError};
use crate::scenario::{FaultKind, Scenario};
use crate::sim_disk::{run_cycle, workload_bytes, workload_minute, Link, SimDisk};
use crate::time::{MIN, SEC};

/// A cycle that cannot reach storage fails after this long.
const UPLOAD_TIMEOUT: u64 = 30 * SEC;
const CONTAINER: &str = "replicas";

#[derive(Debug, Clone)]
enum Event {
    Workload {
        disk: usize,
    },
    Poll {
        disk: usize,
        epoch: u64,
    },
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
    Step {
        index: usize,
    },
}

/// Events ordered by (time, sequence).
#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    next: u64,
}

impl Queue {
    fn push(&mut self, at: u64, event: Event) {
        self.heap.push(Reverse((at, self.next)));
        self.events.insert(self.next, event);
        self.next += 1;
    }
    fn pop(&mut self) -> Option<(u64, Event)> {
        let Reverse((at, seq)) = self.heap.pop()?;
        Some((at, self.events.remove(&seq).expect("queued event")))
    }
}

/// Per-component random streams: each is ChaCha8 keyed by BLAKE3 of the seed and its label.
fn stream(seed: u64, label: &str) -> ChaCha8Rng {
    let mut material = seed.to_le_bytes().to_vec();
    material.extend_from_slice(label.as_bytes());
    ChaCha8Rng::from_seed(blake3::derive_key("drplane sim stream v1", &material))
}

/// Run `scenario` with `seed` in `workdir` (the stores and tracker files live there).
pub fn run(scenario: &Scenario, seed: u64, workdir: &std::path::Path) -> Result<Report, SimError> {
    let clock = Arc::new(ManualClock::new(scenario.start_nanos));
    let emulator = Emulator::open(
        &workdir.join("store"),
        scenario.profile,
        Durability::Process,
        clock.clone(),
    )
    .map_err(|e| SimError::Setup(format!("store: {e}")))?;
    // The storage account, with storms injected when the scenario says so.
    let calm = FaultConfig {
        seed: stream(seed, "storage faults").next_u64(),
        ..FaultConfig::default()
    };
    let emulator = Arc::new(emulator);
    let store = Arc::new(FaultyStore::new(Arc::clone(&emulator), calm));
    // Failover jobs read the account from inside Azure: transient errors are retried.
    let azure_side = ReadRetry::new(Arc::clone(&store), 16);
    let premium = scenario.profile != Profile::Standard;
    let log_store = if premium {
        Some(
            Emulator::open(
                &workdir.join("log-store"),
                Profile::Standard,
                Durability::Process,
                clock.clone(),
            )
            .map_err(|e| SimError::Setup(format!("log store: {e}")))?,
        )
    } else {
        None
    };
    let trackers = workdir.join("trackers");
    std::fs::create_dir_all(&trackers).map_err(SimError::WorkDir)?;
    // The registration certificate: seeded key material (the real .pfx path is tested apart).
    let mut cert = stream(seed, "certificate");
    let mut key_der = [0u8; 64];
    cert.fill_bytes(&mut key_der);
    let mut key_id = [0u8; 20];
    cert.fill_bytes(&mut key_id);
    let identity = Identity::from_key_material(KeyId(key_id), "CN=simulated host".into(), &key_der);
    let limit = scenario.profile.max_snapshots_per_blob();

    let open_agent = |name: &str, size: u64, epoch: u64, policy: &datapath::policy::Policy| {
        let tracker_path = trackers.join(format!("{name}.ctb"));
        let mut tracker = ChangeTracker::open(&tracker_path, name, size, policy.block_size)
            .map_err(|e| SimError::Setup(format!("tracker {name}: {e}")))?;
        // A simulated host crash kills the agent, not the OS: no fsync needed (or charged).
        tracker.0.set_power_safe(false);
        let mut driver = ReplicationDriver::open(
            AgentTarget {
                snapshot_limit: limit,
                store: &*store,
                container: CONTAINER,
                name,
                log_store: log_store.as_ref().map(|s| s as &dyn PageBlobStore),
            },
            &identity,
            policy.clone(),
            size,
            Some(tracker),
            true,
            Box::new(stream(seed, &format!("nonces/{name}/{epoch}"))),
            clock.now_nanos(),
        )
        .map_err(|e| SimError::Setup(format!("agent {name}: {e}")))?;
        // Store calls in a fixed order: fault draws do not depend on thread scheduling.
        driver.agent_mut().set_simulated(true);
        Ok::<_, SimError>(driver)
    };

    let mut disks = Vec::new();
    for vm in &scenario.vms {
        for spec in &vm.disks {
            let name = format!("{}-{}", vm.name, spec.name);
            let file = Arc::new(MemoryFile::new());
            let options = CreateOptions {
                block_size: 1 << 20,
                ..CreateOptions::dynamic(spec.size_bytes)
            };
            let mut writer = VhdxWriter::create(
                Arc::clone(&file),
                &options,
                Box::new(stream(seed, &format!("guids/{name}"))),
            )
            .map_err(|e| SimError::Setup(format!("disk {name}: {e}")))?;
            let marks = Arc::new(Mutex::new(Vec::new()));
            let touched = Arc::new(Mutex::new(Vec::new()));
            let (hook_marks, hook_touched) = (Arc::clone(&marks), Arc::clone(&touched));
            writer.set_write_hook(move |o, l| {
                hook_marks.lock().expect("marks").push((o, l));
                hook_touched.lock().expect("touched").push((o, l));
            });
            // The data already on the disk when replication is enabled.
            let mut fill = stream(seed, &format!("fill/{name}"));
            let mut at = 0u64;
            while at < spec.used_bytes {
                let len = (spec.used_bytes - at).min(1 << 20) as usize;
                let data = workload_bytes(&mut fill, len, scenario.incompressible);
                writer
                    .write_at(at, &data)
                    .map_err(|e| SimError::Setup(format!("disk {name}: {e}")))?;
                at += len as u64;
            }
            writer
                .flush()
                .map_err(|e| SimError::Setup(format!("disk {name}: {e}")))?;
            let driver = open_agent(&name, spec.size_bytes, 0, &vm.policy)?;
            let codec = BlockCodec::new(&identity.disk_keys(&name), 1, true);
            let crash_stream = stream(seed, &format!("mid-cycle crash/{name}"));
            let observer = datapath::replica::disk_replica::DiskReplica::open(
                &*emulator,
                CONTAINER,
                &name,
                driver.agent().replica.layout,
            )
            .map_err(|e| SimError::Setup(format!("replica {name}: {e}")))?;
            let digest_key = *identity.disk_keys(&name).digest.expose();
            let azure_view = datapath::replica::disk_replica::DiskReplica::open(
                &azure_side,
                CONTAINER,
                &name,
                driver.agent().replica.layout,
            )
            .map_err(|e| SimError::Setup(format!("replica {name}: {e}")))?;
            disks.push(SimDisk {
                vm: vm.name.clone(),
                azure: None,
                test_copy: None,
                spec: spec.clone(),
                replica_name: name,
                file,
                writer,
                marks,
                driver,
                workload: stream(seed, &format!("workload/{}/{}", vm.name, spec.name)),
                churn_carry: 0,
                incompressible: scenario.incompressible,
                burst: 1,
                crash_in_next_cycle: false,
                crash_stream,
                warnings: Vec::new(),
                rpo_base: None,
                cycle_started: 0,
                epoch: 0,
                images: BTreeMap::new(),
                model: ContentModel::zeroed(spec.size_bytes, vm.policy.block_size),
                policy: vm.policy.clone(),
                host: vm.host.clone(),
                host_index: scenario
                    .hosts
                    .iter()
                    .position(|h| *h == vm.host)
                    .unwrap_or(0),
                touched,
                audit: PointAudit::default(),
                codec,
                observer,
                digest_key,
                azure_view,
                agent_down: false,
                report: DiskReport {
                    vm: vm.name.clone(),
                    disk: spec.name.clone(),
                    ..DiskReport::default()
                },
            });
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
        certificate_thumbprint: identity.key_id.to_string(),
        proxy: None,
    };
    let registration = credentials.check("sim-vault", start);
    let mut queue = Queue::default();
    let registered = registration.is_ok();
    for i in (0..disks.len()).filter(|_| registered) {
        queue.push(start, Event::Workload { disk: i });
        queue.push(start, Event::Poll { disk: i, epoch: 0 });
    }
    for f in &scenario.faults {
        let at = start + f.at_minutes * MIN;
        match f.kind.clone() {
            FaultKind::WanDown { minutes } => queue.push(at, Event::WanDown { minutes }),
            FaultKind::ChurnBurst { minutes, factor } => {
                queue.push(at, Event::Burst { factor });
                queue.push(at + minutes * MIN, Event::Burst { factor: 1 });
            }
            FaultKind::SnapshotPressure { minutes } => {
                queue.push(at, Event::DeletesRefused { refused: true });
                queue.push(at + minutes * MIN, Event::DeletesRefused { refused: false });
            }
            FaultKind::WanDegraded { minutes, mbps } => {
                queue.push(
                    at,
                    Event::Bandwidth {
                        bytes_per_sec: (mbps * 1_000_000 / 8).max(1),
                    },
                );
                queue.push(
                    at + minutes * MIN,
                    Event::Bandwidth {
                        bytes_per_sec: scenario.bandwidth_bytes_per_sec,
                    },
                );
            }
            FaultKind::HostCrash { host, mid_cycle } => {
                queue.push(at, Event::HostCrash { host, mid_cycle })
            }
            FaultKind::StorageStorm {
                minutes,
                busy,
                timeouts,
                torn,
            } => {
                queue.push(
                    at,
                    Event::Storm {
                        busy,
                        timeouts,
                        torn,
                    },
                );
                queue.push(
                    at + minutes * MIN,
                    Event::Storm {
                        busy: 0.0,
                        timeouts: 0.0,
                        torn: 0.0,
                    },
                );
            }
            FaultKind::WrongCertificate => queue.push(at, Event::WrongCertificate),
            FaultKind::ClockSkew { seconds } => queue.push(at, Event::ClockSkew { seconds }),
            FaultKind::AgentRestart { host } => queue.push(at, Event::AgentRestart { host }),
        }
    }
    for (index, st) in scenario.steps.iter().enumerate() {
        queue.push(start + st.at_minutes * MIN, Event::Step { index });
    }
    // Each host's agent registers with the vault.
    let mut jobs: Vec<Job> = scenario
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
    let mut wrong_certificate_next = false;
    let mut used_ips = crate::flows::UsedIps::new();
    let mut vm_settings = crate::flows::VmSettings::default();
    let wrong_identity = {
        let mut other = stream(seed, "another certificate");
        let mut der = [0u8; 64];
        other.fill_bytes(&mut der);
        Identity::from_key_material(KeyId([0xEE; 20]), "CN=another host".into(), &der)
    };
    let mut flow_checks: Vec<Check> = Vec::new();
    let mut wan_up = true;
    let mut health_events: Vec<HealthEvent> = Vec::new();
    let mut link = Link {
        bytes_per_sec: scenario.bandwidth_bytes_per_sec,
        connection_bytes_per_sec: scenario.connection_bytes_per_sec,
        host_throttle: scenario.host_throttle,
        free_at: start,
        host_clocks: vec![HostClock::default(); scenario.hosts.len()],
        cpu_free_at: vec![start; scenario.hosts.len()],
    };
    // RPO counts as steady for a disk from this time on (faults and failbacks push it out).
    let mut steady_from = vec![start; disks.len()];
    // Outages and storms in progress; RPO is "steady" only with none, two intervals after.
    let mut disturbances = 0u32;
    // Each disk's copy interval (its VM's policy).
    let freqs: Vec<u64> = disks
        .iter()
        .map(|d| u64::from(d.policy.copy_frequency_secs) * SEC)
        .collect();
    // Steady again two of each disk's intervals after `at`.
    let calm_after = |steady_from: &mut Vec<u64>, at: u64| {
        for (s, f) in steady_from.iter_mut().zip(&freqs) {
            *s = (*s).max(at + 2 * f);
        }
    };
    let mut trace = blake3::Hasher::new();
    let mut events = 0u64;
    let mut snapshot_limit_ok = true;
    // The loop's own invariants: time never goes back, and every cycle that starts finishes
    // or fails (its end arrives, or a crash or restart of its agent cuts it short).
    let mut loop_broken: Vec<String> = Vec::new();
    let mut last_event_at = 0u64;
    // Per disk, the cycle in flight: (agent epoch, when its end is due).
    let mut in_flight: Vec<Option<(u64, u64)>> = vec![None; disks.len()];

    while let Some((now, event)) = queue.pop() {
        if now >= end {
            break;
        }
        if now < last_event_at {
            loop_broken.push(format!(
                "time went back from {last_event_at} to {now} ({event:?})"
            ));
        }
        last_event_at = now;
        clock.set(now);
        events += 1;
        let line = format!("{now} {event:?}\n");
        trace.update(line.as_bytes());
        match event {
            Event::Workload { disk } => {
                let d = &mut disks[disk];
                let hour_of_day = (now / (3600 * SEC) % 24) as u8;
                let written = workload_minute(d, hour_of_day)
                    .map_err(|e| SimError::Setup(format!("workload: {e}")))?;
                if d.azure.is_some() {
                    // The VM runs in Azure: nothing to track on the host.
                    d.marks.lock().expect("marks").clear();
                }
                d.report.bytes_written_by_workload += written;
                // The tracker hears of every write the VHDX writer made (kept for the next
                // agent while the service is down).
                if !d.agent_down {
                    for (o, l) in d.marks.lock().expect("marks").drain(..) {
                        d.driver.agent_mut().track_write(o, l);
                    }
                }
                queue.push(now + MIN, Event::Workload { disk });
            }
            Event::Poll { disk, epoch } => {
                let d = &mut disks[disk];
                if epoch != d.epoch || d.azure.is_some() {
                    continue;
                }
                let last_point = d
                    .observer
                    .points(&d.digest_key)
                    .ok()
                    .and_then(|p| p.last().map(|p| p.time_nanos));
                let host_clock = link.host_clocks[d.host_index];
                if let Some(t) = last_point {
                    let steady = now > steady_from[disk] && disturbances == 0;
                    sample_rpo(&mut d.report, now, start, host_clock, t, steady);
                }
                let host_now = host_clock.host_time(now);
                // The vault hears of health changes as the agent reports them.
                let warnings = d.driver.machine().health(host_now).warnings;
                let conditions_changed = warnings.len() != d.warnings.len()
                    || warnings
                        .iter()
                        .zip(&d.warnings)
                        .any(|(a, b)| !a.same_condition(b));
                if conditions_changed {
                    let item = format!("{}/{}", d.vm, d.spec.name);
                    let minute = (now - start) / MIN;
                    if warnings.is_empty() {
                        health_events.push(HealthEvent {
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
                            health_events.push(HealthEvent {
                                minute,
                                item: item.clone(),
                                severity: Severity::Warning,
                                message: w.to_string(),
                            });
                        }
                    }
                }
                d.warnings = warnings;
                match d.driver.poll(host_now) {
                    Action::Wait { until_nanos } => {
                        // Host time back to true time; never in the past.
                        let at = host_clock.true_time(until_nanos).max(now + 1);
                        if at < end {
                            queue.push(at, Event::Poll { disk, epoch });
                        }
                    }
                    Action::RunCycle(plan) if d.crash_in_next_cycle && wan_up => {
                        // The host dies part-way through this cycle's storage writes: after a
                        // seeded number of them nothing more reaches the account, and the
                        // agent is gone without a clean stop.
                        d.crash_in_next_cycle = false;
                        let writes = d.crash_stream.next_u64() % 48;
                        let before = store.config();
                        store.set_config(FaultConfig {
                            kill_after_writes: Some(writes),
                            ..before
                        });
                        let (_, outcome, detail) = run_cycle(d, &plan, host_now, &mut link, start);
                        store.set_config(before);
                        trace.update(
                            format!("{now} crash after {writes} writes: {detail}").as_bytes(),
                        );
                        if let CycleOutcome::Failed { .. } = outcome {
                            d.report.crashed_cycles += 1;
                        }
                        calm_after(&mut steady_from, now + MIN);
                        d.epoch += 1;
                        d.agent_down = true;
                        queue.push(
                            now + MIN,
                            Event::AgentStart {
                                disk,
                                epoch: d.epoch,
                            },
                        );
                    }
                    Action::RunCycle(plan) => {
                        if let Some((e, due)) = in_flight[disk].filter(|(e, _)| *e == epoch) {
                            loop_broken.push(format!(
                                "{} started a cycle at {now} while its cycle of epoch {e} runs until {due}",
                                d.replica_name
                            ));
                        }
                        // A cycle's point is recoverable only when the cycle completes: until
                        // then the RPO keeps growing from the point before it.
                        d.rpo_base = last_point;
                        d.cycle_started = now;
                        let (done_at, outcome) = if wan_up {
                            let (done_at, outcome, detail) =
                                run_cycle(d, &plan, host_now, &mut link, start);
                            // The cost model runs in true time.
                            let done_at = now + done_at.saturating_sub(host_now);
                            trace.update(detail.as_bytes());
                            if std::env::var_os("DRPLANE_SIM_DEBUG").is_some() {
                                eprint!("{detail}");
                            }
                            (done_at, outcome)
                        } else {
                            d.report.failed_cycles += 1;
                            (
                                now + UPLOAD_TIMEOUT,
                                CycleOutcome::Failed {
                                    reason: "WAN down: storage unreachable".into(),
                                },
                            )
                        };
                        in_flight[disk] = Some((epoch, done_at));
                        queue.push(
                            done_at,
                            Event::CycleDone {
                                disk,
                                epoch,
                                outcome,
                            },
                        );
                    }
                }
            }
            Event::CycleDone {
                disk,
                epoch,
                outcome,
            } => {
                // The cycle ends here, finished or failed, or cut short by its agent's end.
                if in_flight[disk].is_some_and(|(e, _)| e == epoch) {
                    in_flight[disk] = None;
                }
                let d = &mut disks[disk];
                if epoch != d.epoch {
                    continue;
                }
                let host_clock = link.host_clocks[d.host_index];
                let host_now = host_clock.host_time(now);
                if let (CycleOutcome::Committed { .. }, Some(base)) = (&outcome, d.rpo_base) {
                    let steady = now > steady_from[disk] && disturbances == 0;
                    sample_rpo(&mut d.report, now, start, host_clock, base, steady);
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
                            d.images.remove(&s);
                        }
                    }
                    Err(e) => {
                        trace.update(format!("{now} retention failed: {e}\n").as_bytes());
                    }
                }
                if let CycleOutcome::Committed { .. } = outcome {
                    if let Some(limit) = limit {
                        // Counted on the account itself (orphans included), not through faults.
                        let snapshots = emulator
                            .list_blobs(CONTAINER, true)
                            .map_err(|e| SimError::Setup(e.to_string()))?
                            .into_iter()
                            .filter(|b| {
                                b.properties.snapshot.is_some()
                                    && b.name == format!("{}.replica", d.replica_name)
                            })
                            .count();
                        snapshot_limit_ok &= snapshots <= limit;
                    }
                }
                queue.push(now, Event::Poll { disk, epoch });
            }
            Event::WanDown { minutes } => {
                wan_up = false;
                disturbances += 1;
                queue.push(now + minutes * MIN, Event::WanUp);
            }
            Event::Burst { factor } => {
                // Bigger cycles for a while: a disturbance for the RPO bound until it ends.
                if factor > 1 {
                    disturbances += 1;
                } else {
                    disturbances = disturbances.saturating_sub(1);
                    calm_after_heal(&mut steady_from, &disks, &freqs, now, &link.host_clocks);
                }
                for d in disks.iter_mut() {
                    d.burst = factor;
                }
            }
            Event::DeletesRefused { refused } => {
                // Cycles fail once the limit is reached: a disturbance while it lasts.
                if refused {
                    disturbances += 1;
                } else {
                    disturbances = disturbances.saturating_sub(1);
                    calm_after_heal(&mut steady_from, &disks, &freqs, now, &link.host_clocks);
                }
                store.set_config(FaultConfig {
                    refuse_deletes: refused,
                    ..store.config()
                });
            }
            Event::Bandwidth { bytes_per_sec } => {
                // A slow WAN is a disturbance: cycles take longer and RPO grows meanwhile.
                if bytes_per_sec < scenario.bandwidth_bytes_per_sec {
                    disturbances += 1;
                } else {
                    disturbances = disturbances.saturating_sub(1);
                    calm_after_heal(&mut steady_from, &disks, &freqs, now, &link.host_clocks);
                }
                link.bytes_per_sec = bytes_per_sec;
            }
            Event::WanUp => {
                wan_up = true;
                disturbances -= 1;
                calm_after_heal(&mut steady_from, &disks, &freqs, now, &link.host_clocks);
            }
            Event::Storm {
                busy,
                timeouts,
                torn,
            } => {
                if busy > 0.0 || timeouts > 0.0 || torn > 0.0 {
                    disturbances += 1;
                } else {
                    disturbances -= 1;
                    calm_after_heal(&mut steady_from, &disks, &freqs, now, &link.host_clocks);
                }
                store.set_config(FaultConfig {
                    server_busy: busy,
                    timeout_after_write: timeouts,
                    torn_write: torn,
                    ..store.config()
                });
            }
            Event::WrongCertificate => wrong_certificate_next = true,
            Event::ClockSkew { seconds } => {
                for clock in &mut link.host_clocks {
                    clock.set_skew_secs(seconds);
                }
                calm_after(&mut steady_from, now + seconds.unsigned_abs() * SEC);
            }
            Event::Step { index } => {
                let st = &scenario.steps[index];
                let members: Vec<usize> =
                    (0..disks.len()).filter(|&i| disks[i].vm == st.vm).collect();
                let restores = matches!(
                    st.action,
                    crate::scenario::Action::TestFailover(_)
                        | crate::scenario::Action::UnplannedFailover(_)
                        | crate::scenario::Action::PlannedFailover
                );
                let wrong = wrong_certificate_next && restores;
                // The job runs on the VM's host's clock.
                let vm_host = scenario
                    .vms
                    .iter()
                    .find(|v| v.name == st.vm)
                    .and_then(|v| scenario.hosts.iter().position(|h| *h == v.host))
                    .unwrap_or(0);
                let host_now = link.host_clocks[vm_host].host_time(now);
                let (job, mut checks) = crate::flows::perform(
                    st,
                    scenario,
                    &mut used_ips,
                    &mut vm_settings,
                    &mut disks,
                    &members,
                    if wrong { &wrong_identity } else { &identity },
                    host_now,
                    &mut link,
                    wan_up,
                );
                if wrong {
                    wrong_certificate_next = false;
                    // Refused, and nothing was brought up from undecryptable data.
                    let nothing_up = members
                        .iter()
                        .all(|&i| disks[i].test_copy.is_none() && disks[i].azure.is_none());
                    checks = vec![Check {
                        name: format!("{} with the wrong certificate is refused", job.name),
                        ok: !job.succeeded && nothing_up,
                        detail: job.detail.clone(),
                    }];
                }
                trace.update(format!("{now} job {job:?}\n").as_bytes());
                let resumed =
                    job.succeeded && matches!(st.action, crate::scenario::Action::Failback);
                jobs.push(Job {
                    started_minute: (now - start) / MIN,
                    ..job
                });
                flow_checks.extend(checks);
                if resumed {
                    // Re-protection: a fresh schedule whose first cycle compares every block
                    // with the replica (sending only what differs); the points are kept.
                    for &i in &members {
                        let d = &mut disks[i];
                        if d.agent_down {
                            // The host is down (a crash): the agent that starts again brings
                            // a fresh schedule whose first cycle is a resync anyway.
                            continue;
                        }
                        // The host's schedule runs on the host's clock; the first cycle is a
                        // resync against the points already there.
                        let host_now = link.host_clocks[d.host_index].host_time(now);
                        let points = d.observer.points(&d.digest_key).unwrap_or_default();
                        let resume = datapath::replicator::Resume {
                            last_point_nanos: points.last().map(|p| p.time_nanos),
                            last_app_point_nanos: points
                                .iter()
                                .rev()
                                .find(|p| {
                                    p.consistency
                                        == datapath::replica::manifest::Consistency::Application
                                })
                                .map(|p| p.time_nanos),
                            tracking_untrusted: Some(
                                "re-protection after failback: every block is compared".into(),
                            ),
                            // Failed over, the host was not meant to replicate.
                            paused_until_nanos: Some(host_now),
                        };
                        d.driver.restart_schedule(host_now, resume);
                        d.epoch += 1;
                        steady_from[i] = steady_from[i].max(now + 2 * freqs[i]);
                        queue.push(
                            now,
                            Event::Poll {
                                disk: i,
                                epoch: d.epoch,
                            },
                        );
                    }
                }
            }
            Event::AgentRestart { host } => {
                // The agent is back a minute later; steady two intervals after that.
                calm_after(&mut steady_from, now + MIN);
                for (i, d) in disks.iter_mut().enumerate() {
                    if d.agent_down || host.as_ref().is_some_and(|h| *h != d.host) {
                        continue;
                    }
                    // The service stops cleanly; the tracking driver keeps recording writes.
                    if let Err(e) = d.driver.agent_mut().stop_cleanly() {
                        trace.update(format!("{now} clean stop failed: {e}\n").as_bytes());
                    }
                    d.epoch += 1;
                    d.agent_down = true;
                    queue.push(
                        now + MIN,
                        Event::AgentStart {
                            disk: i,
                            epoch: d.epoch,
                        },
                    );
                }
            }
            Event::HostCrash { host, mid_cycle } => {
                // The agent is back a minute later; steady two intervals after that.
                calm_after(&mut steady_from, now + MIN);
                for (i, d) in disks.iter_mut().enumerate() {
                    if host.as_ref().is_some_and(|h| *h != d.host) {
                        continue;
                    }
                    if mid_cycle && !d.agent_down {
                        // It strikes inside the disk's next cycle (see the Poll event).
                        d.crash_in_next_cycle = true;
                        continue;
                    }
                    // The agent dies without a clean stop (its tracker is left untrusted).
                    d.epoch += 1;
                    d.agent_down = true;
                    queue.push(
                        now + MIN,
                        Event::AgentStart {
                            disk: i,
                            epoch: d.epoch,
                        },
                    );
                }
            }
            Event::AgentStart { disk, epoch } => {
                let d = &mut disks[disk];
                if epoch != d.epoch {
                    continue;
                }
                // It comes back with an untrusted tracker and a fresh nonce epoch; opening the
                // replica needs the storage account, so a storm may make it try again.
                match open_agent(&d.replica_name, d.spec.size_bytes, d.epoch, &d.policy) {
                    Ok(driver) => {
                        // Replace: the old agent is dropped without `close`.
                        d.driver = driver;
                        d.agent_down = false;
                        // Writes recorded while the service was down reach the new tracker.
                        for (o, l) in d.marks.lock().expect("marks").drain(..) {
                            d.driver.agent_mut().track_write(o, l);
                        }
                        queue.push(now, Event::Poll { disk, epoch });
                    }
                    Err(e) => {
                        trace.update(format!("{now} agent start failed: {e}\n").as_bytes());
                        queue.push(now + MIN, Event::AgentStart { disk, epoch });
                    }
                }
            }
        }
    }
    clock.set(end);
    store.set_config(calm);

    // Checkers.
    let mut checks = Vec::new();
    let mut all_restored = true;
    let mut detail = String::new();
    let mut restored_in_full = 0usize;
    for d in &mut disks {
        d.report.health_warnings = d
            .driver
            .machine()
            .health(end)
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect();
        let points = d
            .observer
            .points(&d.digest_key)
            .map_err(|e| SimError::Setup(e.to_string()))?;
        // Every point was proven as it appeared (points a failed attempt left are proven here).
        d.audit.catch_up(&d.observer, &d.codec, &points, &d.images);
        if let Err(e) = d.audit.audit_live_blob(&d.observer) {
            d.audit.failures.push(format!("live blob: {e}"));
        }
        d.report.points_live = points.len();
        d.report.replica_bytes = d
            .observer
            .stored_bytes()
            .map_err(|e| SimError::Setup(e.to_string()))?;
        d.report.app_consistent_points = points
            .iter()
            .filter(|p| p.consistency == datapath::replica::manifest::Consistency::Application)
            .count();
        // The oldest and the newest point are also restored in full through the replica's own
        // restore (every record, and the manifest's Merkle root).
        let ends: BTreeMap<u64, &datapath::replica::manifest::Manifest> =
            [points.first(), points.last()]
                .into_iter()
                .flatten()
                .map(|p| (p.sequence, p))
                .collect();
        let mut full_failures = Vec::new();
        for p in ends.values() {
            let mut restored = d.model.zeroed_like();
            let outcome = d
                .observer
                .restore_blocks(&d.codec, p, &d.digest_key, |block, b| {
                    match b {
                        Some(b) => restored.set(block, b),
                        None => restored.set_hash(block, restored.zero_hash(block)),
                    }
                    Ok(())
                });
            restored_in_full += 1;
            let why = match outcome {
                Err(e) => Some(e.to_string()),
                Ok(())
                    if d.images.get(&p.sequence).map(ContentModel::root)
                        != Some(restored.root()) =>
                {
                    Some("content differs from the disk at that point".to_string())
                }
                Ok(()) => None,
            };
            if let Some(why) = why {
                full_failures.push(format!("point {} (full restore): {why}", p.sequence));
            }
        }
        d.report.points_verified = points
            .iter()
            .filter(|p| d.audit.verified.contains(&p.sequence))
            .count();
        let failures: Vec<&String> = d.audit.failures.iter().chain(&full_failures).collect();
        for why in failures.iter().take(5) {
            detail.push_str(&format!("{} {why}; ", d.replica_name));
        }
        if failures.len() > 5 {
            detail.push_str(&format!(
                "{}: {} more; ",
                d.replica_name,
                failures.len() - 5
            ));
        }
        all_restored &= failures.is_empty();
        if d.report.points_verified != points.len() {
            all_restored = false;
            detail.push_str(&format!(
                "{}: {} of {} points verified; ",
                d.replica_name,
                d.report.points_verified,
                points.len()
            ));
        }
    }
    // No GCM nonce is used for two different records under one disk's key: every record of
    // every retained snapshot and of the blob itself was audited where it first appeared.
    let reuse: Vec<String> = disks
        .iter()
        .flat_map(|d| {
            d.audit
                .reuse
                .iter()
                .map(move |r| format!("{}: {r}", d.replica_name))
        })
        .collect();
    let audited: usize = disks.iter().map(|d| d.audit.records).sum();
    checks.push(Check {
        name: "no AES-GCM nonce is used twice under one key".into(),
        ok: reuse.is_empty(),
        detail: if reuse.is_empty() {
            format!("{audited} record headers audited")
        } else {
            reuse.join("; ")
        },
    });
    for (d, flight) in disks.iter().zip(&in_flight) {
        if let Some((epoch, due)) = flight.filter(|(_, due)| *due < end) {
            loop_broken.push(format!(
                "{}'s cycle of epoch {epoch} was due to end at {due} and never did",
                d.replica_name
            ));
        }
    }
    checks.push(Check {
        name: "the event loop's invariants hold".into(),
        ok: loop_broken.is_empty(),
        detail: if loop_broken.is_empty() {
            format!("{events} events, in time order; every cycle started ended")
        } else {
            loop_broken.join("; ")
        },
    });
    checks.extend(flow_checks);
    let leftovers = disks.iter().filter(|d| d.test_copy.is_some()).count();
    let cleaned = scenario
        .steps
        .iter()
        .any(|s| s.action == crate::scenario::Action::CleanupTestFailover);
    if cleaned {
        checks.push(Check {
            name: "test failover cleanup leaves nothing behind".into(),
            ok: leftovers == 0,
            detail: format!("{leftovers} test disks left"),
        });
    }
    checks.push(Check {
        name: "every retained recovery point restores byte-exact".into(),
        ok: all_restored,
        detail: if detail.is_empty() {
            format!(
                "{} points, each verified against the disk as it appeared; {restored_in_full} also restored in full",
                disks
                    .iter()
                    .map(|d| d.report.points_verified)
                    .sum::<usize>()
            )
        } else {
            detail
        },
    });
    for e in &scenario.expectations {
        let matching: Vec<&Job> = jobs
            .iter()
            .filter(|j| {
                j.name == e.job
                    && (e.job == "register" || j.vm == e.vm)
                    && e.at_minutes.is_none_or(|m| j.started_minute == m)
            })
            .collect();
        let fits = |j: &&Job| {
            j.succeeded == e.succeeded
                && e.detail_contains
                    .as_ref()
                    .is_none_or(|d| j.detail.contains(d.as_str()))
        };
        checks.push(Check {
            name: format!(
                "expected: {} of {}{} {}",
                e.job,
                e.vm,
                e.at_minutes
                    .map_or(String::new(), |m| format!(" at minute {m}")),
                if e.succeeded { "succeeds" } else { "fails" }
            ),
            ok: matching.iter().any(fits),
            detail: match matching.first() {
                None => "no such job ran".into(),
                Some(j) => j.detail.clone(),
            },
        });
    }
    checks.push(Check {
        name: "live snapshots within the profile limit".into(),
        ok: snapshot_limit_ok,
        detail: format!("limit {limit:?}"),
    });
    // A point becomes recoverable when its cycle completes: the RPO bound is two copy
    // intervals plus the disk's longest cycle (a busy shared link makes cycles longer).
    let over: Vec<String> = disks
        .iter()
        .filter(|d| {
            let freq_secs = f64::from(d.policy.copy_frequency_secs);
            d.report.max_steady_rpo_secs > 2.0 * freq_secs + d.report.max_steady_cycle_secs
        })
        .map(|d| {
            format!(
                "{}/{}: {:.0} s with cycles of up to {:.0} s",
                d.vm, d.spec.name, d.report.max_steady_rpo_secs, d.report.max_steady_cycle_secs
            )
        })
        .collect();
    let steady = disks
        .iter()
        .map(|d| d.report.max_steady_rpo_secs)
        .fold(0.0, f64::max);
    checks.push(Check {
        name: "RPO within two copy intervals (plus the cycle's own time) while the network is up"
            .into(),
        ok: over.is_empty(),
        detail: if over.is_empty() {
            format!("largest steady RPO {steady:.0} s")
        } else {
            over.join("; ")
        },
    });
    Ok(Report {
        scenario: scenario.name.clone(),
        scenario_hash: scenario.hash.clone(),
        seed,
        simulated_hours: scenario.duration_hours,
        events,
        trace_hash: trace.finalize().to_hex().to_string(),
        health_events: {
            // The vault keeps the last 24 hours.
            let from = scenario.duration_hours.saturating_sub(24) * 60;
            health_events.retain(|e| e.minute >= from);
            health_events
        },
        replicated_items: crate::flows::replicated_items(scenario, &disks, &vm_settings, &jobs),
        disks: disks.into_iter().map(|d| d.report).collect(),
        jobs,
        excluded_disks: scenario
            .vms
            .iter()
            .flat_map(|v| v.excluded.iter().map(move |d| format!("{}/{d}", v.name)))
            .collect(),
        faults: scenario
            .faults
            .iter()
            .map(|f| {
                let at = f.at_minutes as f64;
                match f.kind.clone() {
                    FaultKind::WanDown { minutes } => ("WAN down".into(), at, at + minutes as f64),
                    FaultKind::WanDegraded { minutes, mbps } => {
                        (format!("WAN at {mbps} Mbit/s"), at, at + minutes as f64)
                    }
                    FaultKind::SnapshotPressure { minutes } => {
                        ("deletes refused".into(), at, at + minutes as f64)
                    }
                    FaultKind::ChurnBurst { minutes, factor } => {
                        (format!("churn x{factor}"), at, at + minutes as f64)
                    }
                    FaultKind::HostCrash { host, .. } => (
                        host.as_ref()
                            .map_or("host crash".into(), |h| format!("host crash {h}")),
                        at,
                        at,
                    ),
                    FaultKind::StorageStorm { minutes, .. } => {
                        ("storage storm".into(), at, at + minutes as f64)
                    }
                    FaultKind::WrongCertificate => ("wrong certificate".into(), at, at),
                    FaultKind::ClockSkew { seconds } => (format!("clock skew {seconds} s"), at, at),
                    FaultKind::AgentRestart { host } => (
                        host.as_ref()
                            .map_or("agent restart".into(), |h| format!("agent restart {h}")),
                        at,
                        at,
                    ),
                }
            })
            .collect(),
        checks,
    })
}

/// After a fault heals, each disk is steady two of its intervals after `at` — or after its
/// next attempt, when a long fault left its replicator backing off (every 30 minutes) past it.
fn calm_after_heal(
    steady_from: &mut [u64],
    disks: &[SimDisk<'_>],
    freqs: &[u64],
    at: u64,
    host_clocks: &[HostClock],
) {
    for ((s, d), f) in steady_from.iter_mut().zip(disks).zip(freqs) {
        let next = host_clocks[d.host_index].true_time(d.driver.machine().next_attempt_nanos());
        *s = (*s).max(at.max(next) + 2 * f);
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
