//! DR operations on a VM, as vault jobs: test failover (a copy from a point, replication goes
//! on) and its cleanup, planned failover (the last changes replicated first: no data loss),
//! unplanned failover to a chosen point, commit, and failback (only differing blocks copied
//! home, then protection resumes). Each restores through the real replica code and is checked
//! against what the disk held.

use std::sync::Arc;

use datapath::keys::Identity;
use datapath::replica::block_record::BlockCodec;
use datapath::replica::manifest::{Consistency, Manifest};
use datapath::replicator::{CycleKind, CycleOutcome, CyclePlan};
use vhdx::{CreateOptions, MemoryFile, NoParents, VhdxWriter};

use crate::scenario::{Action, PointChoice, Step};
use crate::world::{run_cycle, AzureDisk, Check, Job, SimDisk, SEC};

/// Restore throughput charged to a job (bytes per second).
const RESTORE_BYTES_PER_SEC: u64 = 200_000_000;

fn choose(points: &[Manifest], choice: PointChoice) -> Option<&Manifest> {
    match choice {
        PointChoice::Latest => points.last(),
        PointChoice::LatestAppConsistent => points
            .iter()
            .rev()
            .find(|p| p.consistency == Consistency::Application),
        PointChoice::Sequence(n) => points.iter().find(|p| p.sequence == n),
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
    let mut hasher = blake3::Hasher::new();
    let block_size = u64::from(point.block_size);
    d.agent
        .replica
        .restore(&codec, point, keys.digest.expose(), |block, data| {
            hasher.update(data);
            if data.iter().all(|&b| b == 0) {
                return Ok(());
            }
            writer
                .write_at(block * block_size, data)
                .map_err(std::io::Error::other)
        })
        .map_err(|e| e.to_string())?;
    Ok((AzureDisk { file, writer }, *hasher.finalize().as_bytes()))
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

/// The content hash of a VHDX in memory.
fn content_hash(file: &Arc<MemoryFile>, name: &str) -> Result<[u8; 32], String> {
    let disk = vhdx::Disk::open_with(Box::new(Arc::clone(file)), name, &NoParents)
        .map_err(|e| e.to_string())?;
    let mut bytes = vec![0u8; disk.virtual_size() as usize];
    disk.read_at(0, &mut bytes).map_err(|e| e.to_string())?;
    Ok(*blake3::hash(&bytes).as_bytes())
}

/// Carry out `step` on the VM whose disks are `members`; returns its job and the checks it made.
pub(crate) fn perform(
    step: &Step,
    disks: &mut [SimDisk<'_>],
    members: &[usize],
    identity: &Identity,
    now: u64,
    bandwidth: u64,
    wan_up: bool,
) -> (Job, Vec<Check>) {
    let mut checks = Vec::new();
    let mut bytes = 0u64;
    let name = match step.action {
        Action::TestFailover(_) => "test failover",
        Action::CleanupTestFailover => "cleanup test failover",
        Action::PlannedFailover => "planned failover",
        Action::UnplannedFailover(_) => "unplanned failover",
        Action::Commit => "commit",
        Action::Failback => "failback",
    };
    let outcome: Result<String, String> = (|| {
        let failed_over = members.iter().any(|&i| disks[i].azure.is_some());
        match step.action {
            Action::TestFailover(choice) | Action::UnplannedFailover(choice) => {
                let test = matches!(step.action, Action::TestFailover(_));
                if failed_over {
                    return Err("the VM is failed over".into());
                }
                let mut used = Vec::new();
                for &i in members {
                    let points = disks[i].agent.points().map_err(|e| e.to_string())?;
                    let point = choose(&points, choice)
                        .ok_or_else(|| {
                            format!("{}: no such recovery point", disks[i].replica_name)
                        })?
                        .clone();
                    let (copy, hash) = restore(&disks[i], identity, &point)?;
                    bytes += disks[i].spec.size_bytes;
                    checks.push(Check {
                        name: format!(
                            "{name} of {} to point {} restores the disk as it was",
                            disks[i].replica_name, point.sequence
                        ),
                        ok: disks[i].images.get(&point.sequence) == Some(&hash),
                        detail: format!("{:?}", point.consistency),
                    });
                    used.push(point.sequence);
                    if test {
                        disks[i].test_copy = Some(copy);
                    } else {
                        disks[i].azure = Some(copy);
                    }
                }
                Ok(format!("points {used:?}"))
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
                if !wan_up {
                    return Err("storage unreachable: a planned failover needs the network".into());
                }
                // The VM is shut down: the last changes replicate, then the failover uses them.
                for &i in members {
                    let plan = CyclePlan {
                        kind: CycleKind::Delta,
                        consistency: Consistency::Application,
                        throttle_bytes_per_sec: None,
                        due_nanos: now,
                    };
                    let (_, outcome, _) = run_cycle(&mut disks[i], &plan, now, bandwidth);
                    if let CycleOutcome::Failed { reason } = outcome {
                        return Err(format!("final cycle: {reason}"));
                    }
                    let source = content_hash(&disks[i].file, &disks[i].replica_name)?;
                    let points = disks[i].agent.points().map_err(|e| e.to_string())?;
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
                Ok("failed over with no data loss".into())
            }
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
                let mut copied = 0u64;
                for &i in members {
                    let d = &mut disks[i];
                    let azure = d.azure.take().ok_or("a disk is not failed over")?;
                    let (sent, ok) = failback_disk(d, &azure)?;
                    copied += sent;
                    bytes += sent;
                    checks.push(Check {
                        name: format!(
                            "failback of {} copies only differing blocks and ends identical",
                            d.replica_name
                        ),
                        ok,
                        detail: format!("{sent} bytes copied home"),
                    });
                    // The host's tracker hears of the failback writes: the next cycle
                    // replicates them (reverse replication back to protection).
                    for (o, l) in d.marks.lock().expect("marks").drain(..) {
                        d.agent.track_write(o, l);
                    }
                }
                Ok(format!("{copied} bytes of differing blocks copied home"))
            }
        }
    })();
    let seconds = (bytes * SEC / RESTORE_BYTES_PER_SEC / SEC).max(1);
    let (succeeded, detail) = match outcome {
        Ok(d) => (true, d),
        Err(e) => (false, e),
    };
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

/// Copy the blocks of `azure` that differ from the host's disk back home (64 KiB grains).
/// Returns the bytes copied and whether the disks are identical afterwards.
fn failback_disk(d: &mut SimDisk<'_>, azure: &AzureDisk) -> Result<(u64, bool), String> {
    const GRAIN: usize = 64 << 10;
    let read = |file: &Arc<MemoryFile>| -> Result<Vec<u8>, String> {
        let disk = vhdx::Disk::open_with(Box::new(Arc::clone(file)), &d.replica_name, &NoParents)
            .map_err(|e| e.to_string())?;
        let mut bytes = vec![0u8; disk.virtual_size() as usize];
        disk.read_at(0, &mut bytes).map_err(|e| e.to_string())?;
        Ok(bytes)
    };
    let there = read(&azure.file)?;
    let here = read(&d.file)?;
    let mut sent = 0u64;
    for (i, (a, h)) in there.chunks(GRAIN).zip(here.chunks(GRAIN)).enumerate() {
        // Digests tell which blocks differ (a real failback compares them over the WAN).
        if blake3::hash(a) != blake3::hash(h) {
            d.writer
                .write_at((i * GRAIN) as u64, a)
                .map_err(|e| e.to_string())?;
            sent += a.len() as u64;
        }
    }
    d.writer.flush().map_err(|e| e.to_string())?;
    let ok = read(&d.file)? == there;
    Ok((sent, ok))
}
