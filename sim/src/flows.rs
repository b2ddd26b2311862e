//! DR operations on a VM, as vault jobs: test failover (a copy from a point, replication goes
//! on) and its cleanup, planned failover (the last changes replicated first: no data loss),
//! unplanned failover to a chosen point, commit, and failback (reverse replication through
//! the data path, only differing blocks written home, then protection resumes). Each restores through the real replica code and is checked
//! against what the disk held.

use std::sync::Arc;

use datapath::keys::Identity;
use datapath::replica::block_record::BlockCodec;
use datapath::replica::manifest::{Consistency, Manifest};
use datapath::replica::restore::Fetch;
use datapath::replicator::{CycleKind, CycleOutcome, CyclePlan};
use vhdx::{CreateOptions, MemoryFile, NoParents, VhdxWriter};

use crate::content::ContentModel;
use crate::env::CONTAINER;
use crate::report::{Check, ItemDisk, Job, ReplicatedItem};
use crate::scenario::{Action, PointChoice, Scenario, Step, VmSpec};
use crate::sim_disk::{run_cycle, AzureDisk, Link, SimDisk};
use crate::time::SEC;

/// Target IPs in use in Azure: (VNet, subnet, address) → VM.
pub(crate) type UsedIps = std::collections::BTreeMap<(String, String, String), String>;

/// Per-VM settings and state the vault keeps beyond the scenario: "use managed disks" (it can
/// be changed), and whether the VM's replica runs on managed disks.
#[derive(Debug, Clone, Default)]
pub(crate) struct VmSettings {
    pub managed_disks: std::collections::BTreeMap<String, bool>,
    pub on_managed_disks: std::collections::BTreeSet<String>,
}

/// Where a failed-over VM's NICs land (ASR's network mapping rules): the VNet its VM network
/// maps to; per NIC the subnet of the same name, else the first; as many NICs as the size
/// allows; a target IP must be free (in a test failover's isolated network it need not be).
fn place(
    vm: &VmSpec,
    scenario: &Scenario,
    used: &UsedIps,
    isolated: bool,
) -> Result<Vec<(String, String, Option<String>)>, String> {
    let Some(first) = vm.nics.first() else {
        return Ok(Vec::new());
    };
    let vnet_name = scenario
        .network_mapping
        .get(&first.network)
        .ok_or_else(|| {
            format!(
                "VM network {} is not mapped to an Azure network",
                first.network
            )
        })?;
    let vnet = scenario
        .vnets
        .iter()
        .find(|v| &v.name == vnet_name)
        .ok_or("mapped VNet missing")?;
    let mut out = Vec::new();
    for nic in vm.nics.iter().take(vm.max_nics) {
        let subnet = if vnet.subnets.contains(&nic.subnet) {
            nic.subnet.clone()
        } else {
            vnet.subnets[0].clone()
        };
        if let (Some(ip), false) = (&nic.target_ip, isolated) {
            let key = (vnet.name.clone(), subnet.clone(), ip.clone());
            if let Some(other) = used.get(&key).filter(|o| **o != vm.name) {
                return Err(format!(
                    "target IP {ip} in {}/{subnet} is not available (VM {other} has it)",
                    vnet.name
                ));
            }
        }
        out.push((vnet.name.clone(), subnet, nic.target_ip.clone()));
    }
    Ok(out)
}

fn describe(nics: &[(String, String, Option<String>)], source_nics: usize) -> String {
    if nics.is_empty() {
        return "no NICs".into();
    }
    let list: Vec<String> = nics
        .iter()
        .map(|(v, s, ip)| {
            format!(
                "{v}/{s}{}",
                ip.as_ref().map_or(String::new(), |i| format!(" {i}"))
            )
        })
        .collect();
    format!(
        "{} of {source_nics} NICs on {}",
        nics.len(),
        list.join(", ")
    )
}

/// Restore throughput charged to a job (bytes per second).
const RESTORE_BYTES_PER_SEC: u64 = 200_000_000;
/// Fixed parts of a job's duration: creating and starting the replica VM in Azure, shutting a
/// VM down, a commit, removing a test VM.
const CREATE_VM_SECS: u64 = 120;
const SHUTDOWN_SECS: u64 = 60;
const COMMIT_SECS: u64 = 30;
const CLEANUP_SECS: u64 = 60;

/// The recovery point of each of a VM's disks (`points[i]` are disk *i*'s) for `choice`. A
/// VM's point is one instant for all its disks: "latest" is the newest time at which every disk
/// has a point; only when they share none, each disk's newest point up to the oldest of the
/// disks' latest points; likewise for app-consistent points. `Sequence(n)` names point *n* of
/// every disk.
fn choose(points: &[Vec<Manifest>], choice: PointChoice) -> Option<Vec<&Manifest>> {
    fn app(p: &&Manifest) -> bool {
        p.consistency == Consistency::Application
    }
    fn at_or_before(disk: &[Manifest], t: u64, app_only: bool) -> Option<&Manifest> {
        disk.iter()
            .rev()
            .find(|p| p.time_nanos <= t && (!app_only || app(p)))
    }
    match choice {
        PointChoice::Sequence(n) => points
            .iter()
            .map(|disk| disk.iter().find(|p| p.sequence == n))
            .collect(),
        PointChoice::Latest | PointChoice::LatestAppConsistent => {
            let app_only = choice == PointChoice::LatestAppConsistent;
            // One instant every disk has a point at, when there is one.
            if let Some((first, rest)) = points.split_first() {
                let common = first
                    .iter()
                    .rev()
                    .filter(|p| !app_only || app(p))
                    .find_map(|p| {
                        let mut all = vec![p];
                        for disk in rest {
                            all.push(disk.iter().find(|q| q.time_nanos == p.time_nanos)?);
                        }
                        Some(all)
                    });
                if common.is_some() {
                    return common;
                }
            }
            let newest = |disk: &[Manifest]| {
                disk.iter()
                    .rev()
                    .find(|p| !app_only || app(p))
                    .map(|p| p.time_nanos)
            };
            let t = points
                .iter()
                .map(|d| newest(d))
                .collect::<Option<Vec<u64>>>()?
                .into_iter()
                .min()?;
            points
                .iter()
                .map(|disk| at_or_before(disk, t, app_only))
                .collect()
        }
    }
}

/// Restore `point` of `d` into a new in-memory VHDX; returns it and its content hash.
fn restore(
    d: &SimDisk<'_>,
    identity: &Identity,
    point: &Manifest,
) -> Result<(AzureDisk, [u8; 32]), String> {
    let keys = identity.disk_keys(&d.replica_name);
    let codec = BlockCodec::new(&keys, 1, true);
    let file = Arc::new(MemoryFile::new());
    let mut writer = VhdxWriter::create(
        Arc::clone(&file),
        &CreateOptions {
            block_size: 1 << 20,
            ..CreateOptions::dynamic(d.spec.size_bytes)
        },
        Box::new(rand_chacha::ChaCha8Rng::from_seed_label(
            &d.replica_name,
            point.sequence,
        )),
    )
    .map_err(|e| e.to_string())?;
    writer.set_bulk(true);
    let mut model = d.model.zeroed_like();
    let block_size = u64::from(point.block_size);
    d.azure_view
        .restore_with(
            &codec,
            point,
            keys.digest.expose(),
            Fetch::InOrder,
            |block, data, digest| {
                // The block's bytes were checked against its digest (the disk's own keys).
                model.set_hash(block, *digest);
                let Some(data) = data else {
                    // A zero block: nothing to write into the new disk.
                    return Ok(());
                };
                writer
                    .write_at(block * block_size, data)
                    .map_err(std::io::Error::other)
            },
        )
        .map_err(|e| e.to_string())?;
    let root = model.root();
    Ok((
        AzureDisk {
            file,
            writer,
            point: point.sequence,
            model,
            touched: Vec::new(),
        },
        root,
    ))
}

/// Seeded GUIDs for restored disks, from the disk's name and the point.
trait FromSeedLabel {
    fn from_seed_label(label: &str, n: u64) -> Self;
}

impl FromSeedLabel for rand_chacha::ChaCha8Rng {
    fn from_seed_label(label: &str, n: u64) -> Self {
        let mut material = n.to_le_bytes().to_vec();
        material.extend_from_slice(label.as_bytes());
        rand_core::SeedableRng::from_seed(blake3::derive_key("drplane sim restore v1", &material))
    }
}

/// The content hash (a [`ContentModel`] root, digests keyed with `key`) of a VHDX in memory.
fn content_hash(
    file: &Arc<MemoryFile>,
    name: &str,
    block_size: u32,
    key: [u8; 32],
) -> Result<[u8; 32], String> {
    let disk = vhdx::Disk::open_with(Box::new(Arc::clone(file)), name, &NoParents)
        .map_err(|e| e.to_string())?;
    ContentModel::of_disk(&disk, block_size, key)
        .map(|m| m.root())
        .map_err(|e| e.to_string())
}

/// Carry out `step` on the VM whose disks are `members`; returns its job and the checks it made.
#[allow(clippy::too_many_arguments)]
pub(crate) fn perform(
    step: &Step,
    scenario: &Scenario,
    used_ips: &mut UsedIps,
    settings: &mut VmSettings,
    disks: &mut [SimDisk<'_>],
    members: &[usize],
    identity: &Identity,
    now: u64,
    link: &mut Link,
    wan_up: bool,
) -> (Job, Vec<Check>) {
    let vm = scenario
        .vms
        .iter()
        .find(|v| v.name == step.vm)
        .expect("steps name VMs of the scenario");
    let mut checks = Vec::new();
    let mut bytes = 0u64;
    // Seconds beyond the restore: VM creation, shutdowns, the WAN (final cycle, failback).
    let mut fixed_secs = 0u64;
    let name = match step.action {
        Action::TestFailover(_) => "test failover",
        Action::CleanupTestFailover => "cleanup test failover",
        Action::PlannedFailover => "planned failover",
        Action::UnplannedFailover(_) => "unplanned failover",
        Action::Commit => "commit",
        Action::Failback => "failback",
        Action::AddDisk => "add disk",
        Action::UseManagedDisks(_) => "update replicated item",
    };
    let outcome: Result<String, String> = (|| {
        let failed_over = members.iter().any(|&i| disks[i].azure.is_some());
        match step.action {
            Action::TestFailover(choice) | Action::UnplannedFailover(choice) => {
                let test = matches!(step.action, Action::TestFailover(_));
                if failed_over {
                    return Err("the VM is failed over".into());
                }
                let nics = place(vm, scenario, used_ips, test)?;
                if !test {
                    managed_disks_allowed(vm, scenario, settings)?;
                }
                let mut used = Vec::new();
                let mut taken_at = 0u64;
                let all_points = members
                    .iter()
                    .map(|&i| {
                        // Only points that have arrived: a cycle still running has not.
                        disks[i]
                            .azure_view
                            .points(&disks[i].digest_key)
                            .map(|p| disks[i].arrived(p))
                            .map_err(|e| e.to_string())
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                let chosen: Vec<Manifest> = choose(&all_points, choice)
                    .ok_or_else(|| format!("{}: no such recovery point on every disk", vm.name))?
                    .into_iter()
                    .cloned()
                    .collect();
                for (&i, point) in members.iter().zip(chosen) {
                    let (copy, hash) = restore(&disks[i], identity, &point)?;
                    bytes += disks[i].spec.size_bytes;
                    checks.push(Check {
                        name: format!(
                            "{name} of {} to point {} restores the disk as it was",
                            disks[i].replica_name, point.sequence
                        ),
                        ok: disks[i].images.get(&point.sequence).map(ContentModel::root)
                            == Some(hash),
                        detail: match point.consistency {
                            Consistency::Crash => "crash-consistent".into(),
                            Consistency::Application => "app-consistent".into(),
                        },
                    });
                    used.push(point.sequence);
                    taken_at = taken_at.max(point.time_nanos);
                    if test {
                        disks[i].test_copy = Some(copy);
                    } else {
                        disks[i].azure = Some(copy);
                    }
                }
                if !test {
                    reserve(used_ips, vm, &nics);
                    mark_managed(vm, settings);
                }
                Ok(format!(
                    "points {used:?} (taken by minute {:.1}); {}",
                    taken_at.saturating_sub(scenario.start_nanos) as f64 / 60e9,
                    describe(&nics, vm.nics.len())
                ))
            }
            Action::CleanupTestFailover => {
                let removed = members
                    .iter()
                    .filter(|&&i| disks[i].test_copy.take().is_some())
                    .count();
                Ok(format!("{removed} test disks removed"))
            }
            Action::PlannedFailover => {
                if failed_over {
                    return Err("the VM is failed over".into());
                }
                if members.iter().any(|&i| disks[i].agent_down) {
                    return Err(
                        "the host's agent is not running: a planned failover needs it".into(),
                    );
                }
                let nics = place(vm, scenario, used_ips, false)?;
                managed_disks_allowed(vm, scenario, settings)?;
                if !wan_up {
                    return Err("storage unreachable: a planned failover needs the network".into());
                }
                // The VM is shut down: the last changes replicate, then the failover uses them.
                for &i in members {
                    // The last cycle is whatever the schedule owes: a resync when the
                    // tracker cannot be trusted (a crash just before), else a delta.
                    let kind = match disks[i].driver.machine().phase() {
                        CycleKind::Delta => CycleKind::Delta,
                        _ => CycleKind::Resync,
                    };
                    let plan = CyclePlan {
                        kind,
                        consistency: Consistency::Application,
                        throttle_bytes_per_sec: None,
                        due_nanos: now,
                    };
                    let (done, outcome, _) =
                        run_cycle(&mut disks[i], &plan, now, link, scenario.start_nanos);
                    fixed_secs += done.saturating_sub(now) / SEC;
                    if let CycleOutcome::Failed { reason } = outcome {
                        return Err(format!("final cycle: {reason}"));
                    }
                    let source = content_hash(
                        &disks[i].file,
                        &disks[i].replica_name,
                        disks[i].policy.block_size,
                        disks[i].digest_key,
                    )?;
                    let points = disks[i]
                        .azure_view
                        .points(&disks[i].digest_key)
                        .map_err(|e| e.to_string())?;
                    let point = points.last().ok_or("no recovery point")?.clone();
                    let (copy, hash) = restore(&disks[i], identity, &point)?;
                    bytes += disks[i].spec.size_bytes;
                    checks.push(Check {
                        name: format!(
                            "planned failover of {} loses no data",
                            disks[i].replica_name
                        ),
                        ok: hash == source,
                        detail: format!("point {}", point.sequence),
                    });
                    disks[i].azure = Some(copy);
                }
                reserve(used_ips, vm, &nics);
                mark_managed(vm, settings);
                Ok(format!(
                    "failed over with no data loss; {}",
                    describe(&nics, vm.nics.len())
                ))
            }
            Action::UseManagedDisks(on) => {
                settings.managed_disks.insert(vm.name.clone(), on);
                Ok(format!(
                    "use managed disks: {}",
                    if on { "yes" } else { "no" }
                ))
            }
            Action::AddDisk => Err(
                "disks cannot be added after replication is enabled: disable replication, add \
                 the disk, and enable it again"
                    .into(),
            ),
            Action::Commit => {
                if !failed_over {
                    return Err("nothing to commit: the VM is not failed over".into());
                }
                Ok("committed".into())
            }
            Action::Failback => {
                if !failed_over {
                    return Err("the VM is not failed over".into());
                }
                if settings.on_managed_disks.contains(&vm.name) {
                    return Err(
                        "failback is not supported for a VM failed over to managed disks".into(),
                    );
                }
                let mut copied = 0u64;
                for &i in members {
                    let d = &mut disks[i];
                    let mut azure = d.azure.take().ok_or("a disk is not failed over")?;
                    let (sent, ok) = failback_disk(d, &mut azure, identity, now)?;
                    copied += sent;
                    // The differing blocks come home over the WAN.
                    fixed_secs += sent / link.bytes_per_sec.max(1);
                    checks.push(Check {
                        name: format!(
                            "failback of {} goes through the data path, copies only differing blocks and ends as the Azure copy",
                            d.replica_name
                        ),
                        ok,
                        detail: format!("{sent} bytes copied home"),
                    });
                    // The host's tracker hears of the failback writes: the next cycle
                    // replicates them (reverse replication back to protection). While the
                    // agent is down (restarting) they wait for the next agent, as every other
                    // write does: handed to the stopped agent, they were lost, and the next
                    // tracked delta left them out of its point (swarm seed 1270).
                    if !d.agent_down {
                        for (o, l) in d.marks.lock().expect("marks").drain(..) {
                            d.tracker.mark(o, l);
                        }
                    }
                }
                used_ips.retain(|_, owner| *owner != vm.name);
                Ok(format!("{copied} bytes of differing blocks copied home"))
            }
        }
    })();
    let (succeeded, detail) = match outcome {
        Ok(d) => (true, d),
        Err(e) => (false, e),
    };
    // What the job's kind costs when it gets that far (a refused job fails in seconds).
    let steps_secs = match step.action {
        _ if !succeeded => 0,
        Action::TestFailover(_) | Action::UnplannedFailover(_) => CREATE_VM_SECS,
        Action::PlannedFailover => SHUTDOWN_SECS + CREATE_VM_SECS,
        Action::Failback => 2 * SHUTDOWN_SECS,
        Action::Commit => COMMIT_SECS,
        Action::CleanupTestFailover => CLEANUP_SECS,
        Action::AddDisk | Action::UseManagedDisks(_) => 0,
    };
    let seconds = (bytes / RESTORE_BYTES_PER_SEC + fixed_secs + steps_secs).max(1);
    (
        Job {
            name: name.into(),
            vm: step.vm.clone(),
            started_minute: 0,
            seconds,
            succeeded,
            detail,
        },
        checks,
    )
}

/// Managed disks are created at failover; not from a storage account that was ever
/// SSE-encrypted (the user sets "use managed disks" to no and retries).
fn managed_disks_allowed(
    vm: &VmSpec,
    scenario: &Scenario,
    settings: &VmSettings,
) -> Result<(), String> {
    let managed = settings
        .managed_disks
        .get(&vm.name)
        .copied()
        .unwrap_or(vm.managed_disks);
    if managed && scenario.sse_encrypted_ever {
        return Err(
            "managed disks cannot be created: the storage account was encrypted with \
                    SSE; set \"use managed disks\" to no and retry"
                .into(),
        );
    }
    Ok(())
}

fn mark_managed(vm: &VmSpec, settings: &mut VmSettings) {
    if settings
        .managed_disks
        .get(&vm.name)
        .copied()
        .unwrap_or(vm.managed_disks)
    {
        settings.on_managed_disks.insert(vm.name.clone());
    } else {
        settings.on_managed_disks.remove(&vm.name);
    }
}

fn reserve(used: &mut UsedIps, vm: &VmSpec, nics: &[(String, String, Option<String>)]) {
    for (vnet, subnet, ip) in nics {
        if let Some(ip) = ip {
            used.insert((vnet.clone(), subnet.clone(), ip.clone()), vm.name.clone());
        }
    }
}

/// Fail back one disk as ASR's reverse replication does: the Azure copy goes through the
/// data path (read, hash, compress, encrypt, into a replica of its own in the storage account,
/// committed as a point), and that point is restored onto the host's disk, writing only the
/// blocks that differ. Checked against the model of what the Azure copy holds (the point it
/// was restored from plus the writes the VM made there). Returns the bytes written home and
/// whether the check held.
fn failback_disk(
    d: &mut SimDisk<'_>,
    azure: &mut AzureDisk,
    identity: &Identity,
    now: u64,
) -> Result<(u64, bool), String> {
    use datapath::cycle::{run_cycle, CycleOptions};
    use datapath::replica::disk_replica::DiskReplica;
    use datapath::replica::nonce::NonceSource;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    azure.writer.flush().map_err(|e| err(&e))?;
    let open = |file: &Arc<MemoryFile>| {
        vhdx::Disk::open_with(Box::new(Arc::clone(file)), &d.replica_name, &NoParents)
            .map_err(|e| err(&e))
    };
    let there = open(&azure.file)?;
    let mut expected = azure.model.clone();
    let written: std::collections::BTreeSet<u64> = azure
        .touched
        .drain(..)
        .flat_map(|(o, l)| expected.blocks_of(o, l))
        .collect();
    expected.refresh(&there, written).map_err(|e| err(&e))?;
    // Reverse replication into `NAME.failback` (a replica of its own, its own keys).
    let name = format!("{}.failback", d.replica_name);
    let layout = d.observer.layout;
    let replica =
        DiskReplica::open(d.observer.store(), CONTAINER, &name, layout).map_err(|e| err(&e))?;
    let keys = identity.disk_keys(&name);
    let mut rng = rand_chacha::ChaCha8Rng::from_seed_label(&name, azure.point);
    let epoch = replica.claim_epoch(&mut rng).map_err(|e| err(&e))?;
    let options = CycleOptions {
        // Every store call from this thread, in block order: deterministic.
        upload_threads: 0,
        ..CycleOptions::scan(now)
    };
    let report = run_cycle(
        &replica,
        &there,
        identity,
        &keys,
        &options,
        &mut NonceSource::for_epoch(epoch),
        &|_| {},
    )
    .map_err(|e| err(&e))?;
    // The point onto the host's disk: only the blocks that differ are written.
    d.writer.flush().map_err(|e| err(&e))?;
    let here = ContentModel::of_disk(&open(&d.file)?, layout.block_size, d.digest_key)
        .map_err(|e| err(&e))?;
    let differing = here.differing_blocks(&expected);
    let codec = BlockCodec::new(&keys, 1, true);
    let block_size = u64::from(layout.block_size);
    let mut zero = Vec::new();
    let mut copied = Vec::new();
    let writer = &mut d.writer;
    replica
        .restore_with(
            &codec,
            &report.point,
            keys.digest.expose(),
            Fetch::InOrder,
            |block, data, _| {
                let data = match data {
                    Some(data) => data,
                    None => {
                        zero.resize(layout.block_len(block) as usize, 0);
                        &zero[..]
                    }
                };
                // The failback replica has keys of its own: its digests are not the model's.
                if here.hasher().hash(block, data) == here.get(block) {
                    return Ok(());
                }
                copied.push(block);
                writer
                    .write_at(block * block_size, data)
                    .map_err(std::io::Error::other)
            },
        )
        .map_err(|e| err(&e))?;
    d.writer.flush().map_err(|e| err(&e))?;
    let mut sent = 0u64;
    for &block in &copied {
        let len = layout.block_len(block);
        d.touched
            .lock()
            .expect("touched")
            .push((block * block_size, len));
        sent += len;
    }
    let after = ContentModel::of_disk(&open(&d.file)?, layout.block_size, d.digest_key)
        .map_err(|e| err(&e))?;
    let ok = after.root() == expected.root() && copied == differing;
    Ok((sent, ok))
}

/// The vault's replicated items at the end of a run.
pub(crate) fn replicated_items(
    scenario: &Scenario,
    disks: &[SimDisk<'_>],
    settings: &VmSettings,
    jobs: &[Job],
) -> Vec<ReplicatedItem> {
    scenario
        .vms
        .iter()
        .map(|vm| {
            let own: Vec<&SimDisk<'_>> = disks.iter().filter(|d| d.vm == vm.name).collect();
            let last_job = jobs.iter().rev().find(|j| {
                j.vm == vm.name
                    && j.succeeded
                    && matches!(
                        j.name.as_str(),
                        "planned failover"
                            | "unplanned failover"
                            | "commit"
                            | "failback"
                            | "test failover"
                            | "cleanup test failover"
                    )
            });
            let state = match last_job.map(|j| j.name.as_str()) {
                Some("planned failover" | "unplanned failover") => "Failed over",
                Some("commit") => "Failover committed",
                Some("test failover") => "Test failover in progress",
                _ => "Protected",
            };
            let warnings: Vec<String> = own
                .iter()
                .flat_map(|d| {
                    d.report
                        .health_warnings
                        .iter()
                        .map(move |w| format!("{}: {w}", d.spec.name))
                })
                .collect();
            let network = match place(vm, scenario, &UsedIps::new(), true) {
                Err(why) => vec![why],
                Ok(placed) => vm
                    .nics
                    .iter()
                    .enumerate()
                    .map(|(i, nic)| match placed.get(i) {
                        Some((vnet, subnet, ip)) => format!(
                            "{}/{} -> {vnet}/{subnet}{}",
                            nic.network,
                            nic.subnet,
                            ip.as_ref().map_or(String::new(), |ip| format!(" {ip}"))
                        ),
                        None => format!(
                            "{}/{}: not brought up ({} allows {} NICs)",
                            nic.network, nic.subnet, vm.size, vm.max_nics
                        ),
                    })
                    .collect(),
            };
            let mut item_disks: Vec<ItemDisk> = own
                .iter()
                .map(|d| ItemDisk {
                    name: d.spec.name.clone(),
                    size_mib: Some(d.spec.size_bytes >> 20),
                    replicated: true,
                    points_live: d.report.points_live,
                })
                .collect();
            item_disks.extend(vm.excluded.iter().map(|name| ItemDisk {
                name: name.clone(),
                size_mib: None,
                replicated: false,
                points_live: 0,
            }));
            ReplicatedItem {
                vm: vm.name.clone(),
                host: vm.host.clone(),
                cloud: vm.cloud.clone(),
                policy: format!(
                    "{} ({} s copy frequency, {} h retention)",
                    vm.policy_name, vm.policy.copy_frequency_secs, vm.policy.retention_hours
                ),
                state: state.into(),
                health: if matches!(state, "Failed over" | "Failover committed") {
                    "Not replicating (the VM runs in Azure)".into()
                } else if warnings.is_empty() {
                    "Normal".into()
                } else {
                    format!("Warning: {}", warnings.join("; "))
                },
                compute: format!("{} ({} NICs at most)", vm.size, vm.max_nics),
                network,
                use_managed_disks: settings
                    .managed_disks
                    .get(&vm.name)
                    .copied()
                    .unwrap_or(vm.managed_disks),
                disks: item_disks,
            }
        })
        .collect()
}

#[cfg(test)]
mod choose_tests {
    use super::choose;
    use crate::scenario::PointChoice;
    use datapath::replica::manifest::{Consistency, Manifest};

    fn point(sequence: u64, time_nanos: u64) -> Manifest {
        Manifest {
            sequence,
            time_nanos,
            consistency: Consistency::Crash,
            generation: 0,
            disk_size: 1 << 20,
            block_size: 65536,
            key_id: [0; 20],
            merkle_root: [0; 32],
            snapshot: String::new(),
        }
    }

    #[test]
    fn a_vms_point_is_one_instant_of_all_its_disks_when_there_is_one() {
        // Disk 0 failed the cycle of t = 20 and disk 1 the one of t = 30: their newest points
        // are 30 and 20. The newest instant both have is 10 (it once was disk 0's 10 with disk
        // 1's 20: two instants).
        let disks = vec![
            vec![point(0, 10), point(1, 30)],
            vec![point(0, 10), point(1, 20)],
        ];
        let chosen = choose(&disks, PointChoice::Latest).unwrap();
        let times: Vec<u64> = chosen.iter().map(|p| p.time_nanos).collect();
        assert_eq!(times, [10, 10]);
        // With no instant in common, the newest of each up to the oldest newest, as before.
        let apart = vec![vec![point(0, 9), point(1, 31)], vec![point(0, 10)]];
        let chosen = choose(&apart, PointChoice::Latest).unwrap();
        let times: Vec<u64> = chosen.iter().map(|p| p.time_nanos).collect();
        assert_eq!(times, [9, 10]);
    }
}
