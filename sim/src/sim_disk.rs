//! A simulated disk ([`SimDisk`]): the VM's VHDX on its Hyper-V host, its workload, its
//! replication agent and replicator, the checker's model and view of its replica, and its copy
//! in Azure once failed over; the host's shared CPU and WAN [`Link`]; and [`run_cycle`], one
//! replication cycle through the real data path, costed by the model.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use datapath::cycle::CycleReport;
use datapath::driver::ReplicationDriver;
use datapath::replica::block_record::BlockCodec;
use datapath::replica::manifest::Manifest;
use datapath::replicator::{CycleOutcome, CyclePlan, HealthWarning};
use datapath::source::TrackedDisk;
use datapath::tracking::ChangeTracker;
use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;
use vhdx::{MemoryFile, NoParents, VhdxWriter};

use crate::audit::PointAudit;
use crate::content::ContentModel;
use crate::host_clock::HostClock;
use crate::report::DiskReport;
use crate::scenario::DiskSpec;
use crate::time::SEC;

/// Cost model: bytes the host examines (reads, hashes, compresses) per second.
const CPU_BYTES_PER_SEC: u64 = 400_000_000;

/// A disk's copy in Azure: a VHDX restored from a point, written by the VM once failed over.
pub(crate) struct AzureDisk {
    pub(crate) file: Arc<MemoryFile>,
    pub(crate) writer: VhdxWriter<Arc<MemoryFile>>,
    /// The sequence of the point it was restored from.
    pub(crate) point: u64,
    /// The checker's model of the copy: the point's content as restored; `touched` lists the
    /// writes the VM has made to it since (as the workload meant them).
    pub(crate) model: ContentModel,
    pub(crate) touched: Vec<(u64, u64)>,
}

pub(crate) struct SimDisk<'a> {
    pub(crate) vm: String,
    pub(crate) spec: DiskSpec,
    /// Failed over: the VM runs on this copy; replication from the host is stopped.
    pub(crate) azure: Option<AzureDisk>,
    /// A test failover's copy (isolated network), until cleaned up.
    pub(crate) test_copy: Option<AzureDisk>,
    pub(crate) replica_name: String,
    pub(crate) file: Arc<MemoryFile>,
    pub(crate) writer: VhdxWriter<Arc<MemoryFile>>,
    /// Writes the hook saw, waiting to be fed to the agent's tracker.
    pub(crate) marks: Arc<Mutex<Vec<(u64, u64)>>>,
    /// The disk's replication agent and its state machine.
    pub(crate) driver: ReplicationDriver<'a>,
    /// The host's change tracking of the disk (its writes' persistent bitmap).
    pub(crate) tracker: ChangeTracker,
    pub(crate) workload: ChaCha8Rng,
    /// Churn bytes the workload owes (positive) or wrote ahead (negative).
    pub(crate) churn_carry: i64,
    /// The scenario's written data is incompressible.
    pub(crate) incompressible: bool,
    /// Churn multiplier of a burst in progress (1: none).
    pub(crate) burst: u32,
    /// A mid-cycle host crash is due: it strikes during the next cycle.
    pub(crate) crash_in_next_cycle: bool,
    /// How far into a cycle's writes such a crash strikes.
    pub(crate) crash_stream: ChaCha8Rng,
    /// Bumped by a host crash: events of an older epoch are stale.
    pub(crate) epoch: u64,
    /// The agent crashed and has not started again (its object must not be used).
    pub(crate) agent_down: bool,
    /// The disk's content at each point, by sequence.
    pub(crate) images: BTreeMap<u64, ContentModel>,
    /// The host disk's content as of the last cycle; `touched` lists the writes made since, as
    /// the writers (workload, initial fill, failback) meant them: never from the VHDX hook
    /// that feeds the change tracker, so a write it misses cannot hide from the checker.
    pub(crate) model: ContentModel,
    pub(crate) touched: Arc<Mutex<Vec<(u64, u64)>>>,
    /// Proves each point as it appears (see `audit`).
    pub(crate) audit: PointAudit,
    /// The Hyper-V host the disk's VM runs on, and its index in the scenario's hosts.
    pub(crate) host: String,
    pub(crate) host_index: usize,
    /// The replication policy of the disk's VM (its cloud's, or the scenario's).
    pub(crate) policy: datapath::policy::Policy,
    /// The newest point's time when the running cycle started (the RPO until it completes).
    pub(crate) rpo_base: Option<u64>,
    /// When the running cycle started (true time).
    pub(crate) cycle_started: u64,
    /// Points whose cycle is still running in simulated time (sequence → the agent epoch of
    /// that cycle): written to the store when the cycle started, they have not arrived yet and
    /// nothing may see them until it completes.
    pub(crate) arriving: BTreeMap<u64, u64>,
    /// The health warnings last reported to the vault.
    pub(crate) warnings: Vec<HealthWarning>,
    /// Decodes the replica's records (the registration certificate's keys).
    pub(crate) codec: BlockCodec,
    /// The checker's view of the replica: straight on the storage account, so its reads are
    /// never faulted and never draw from the fault stream the agents see.
    pub(crate) observer: datapath::replica::disk_replica::DiskReplica<'a>,
    pub(crate) digest_key: [u8; 32],
    /// The replica as failover jobs read it: through the storage account's faults, retrying
    /// transient errors.
    pub(crate) azure_view: datapath::replica::disk_replica::DiskReplica<'a>,
    pub(crate) report: DiskReport,
}

impl SimDisk<'_> {
    /// `points` without those that have not arrived (their cycle is still running).
    pub(crate) fn arrived(&self, mut points: Vec<Manifest>) -> Vec<Manifest> {
        points.retain(|p| !self.arriving.contains_key(&p.sequence));
        points
    }

    /// Remember the disk's content at point `sequence`, for the checker.
    pub(crate) fn record_image(&mut self, sequence: u64, model: ContentModel) {
        self.images.insert(sequence, model);
    }

    /// Point `sequence` is gone: its content is not needed any more.
    pub(crate) fn forget_image(&mut self, sequence: u64) {
        self.images.remove(&sequence);
    }

    /// Prove the points in `points` not proven yet.
    pub(crate) fn audit_points(&mut self, points: Vec<Manifest>) {
        self.audit
            .catch_up(&self.observer, &self.codec, &points, &self.images);
    }

    /// A failure of the disk's points found outside the audit.
    pub(crate) fn audit_failure(&mut self, why: String) {
        self.audit.failures.push(why);
    }
}

/// `len` bytes of written data: random (incompressible), or a fill byte with a random byte
/// every 64 (compressible, like most real data).
pub(crate) fn workload_bytes(rng: &mut ChaCha8Rng, len: usize, incompressible: bool) -> Vec<u8> {
    if incompressible {
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        return data;
    }
    let fill = rng.next_u32() as u8;
    let mut data = vec![fill; len];
    for byte in data.iter_mut().step_by(64) {
        *byte = rng.next_u32() as u8;
    }
    data
}

/// When `bytes` that start crossing the WAN at `start` (ns) are through, at `rate_in_hour` bytes
/// per second in each hour of the day (it changes on the hour).
pub(crate) fn transfer_end(start: u64, bytes: u64, rate_in_hour: impl Fn(u8) -> u64) -> u64 {
    const HOUR: u64 = 3600 * SEC;
    let rate = |t: u64| u128::from(rate_in_hour((t / HOUR % 24) as u8).max(1));
    let day_bytes: u128 = (0..24u64).map(|h| rate(h * HOUR) * 3600).sum();
    // Whole days first: any 24 hours hold every hour of the day once.
    let days = u128::from(bytes) / day_bytes;
    let mut t = start.saturating_add((days as u64).saturating_mul(24 * HOUR));
    let mut left = u128::from(bytes) - days * day_bytes;
    loop {
        let hour_end = (t / HOUR + 1).saturating_mul(HOUR);
        let can = rate(t) * u128::from(hour_end - t) / u128::from(SEC);
        if can >= left || hour_end == u64::MAX {
            let secs_ns = left * u128::from(SEC) / rate(t);
            return t.saturating_add(secs_ns.min(u128::from(u64::MAX)) as u64);
        }
        left -= can;
        t = hour_end;
    }
}

/// A minute of the disk's workload in hour-of-day `hour` (UTC): writes of 4–256 KiB, a share
/// of them in the hot tenth, to the host's disk or, once failed over, to the Azure copy.
pub(crate) fn workload_minute(d: &mut SimDisk<'_>, hour: u8) -> vhdx::Result<u64> {
    // The minute's share of the hourly churn (by the busy hours, if any), plus what earlier
    // minutes under- or overshot (writes come in whole pieces), so the churn over hours is
    // what the scenario says.
    let hourly = match d.spec.peak {
        Some(p) => (d.spec.churn_bytes_per_hour as f64 * p.factor(hour)) as u64,
        None => d.spec.churn_bytes_per_hour,
    };
    let budget = (hourly / 60 * u64::from(d.burst)) as i64 + d.churn_carry;
    let size = d.spec.size_bytes;
    let mut written = 0u64;
    while (written as i64) < budget {
        let len = ((1 + d.workload.next_u64() % 64) * 4096).min(size);
        let hot = (d.workload.next_u32() as f64 / u32::MAX as f64) < d.spec.hot_spot;
        let span = if hot { (size / 10).max(len) } else { size };
        let offset = (d.workload.next_u64() % (span - len + 1)) / 4096 * 4096;
        let data = workload_bytes(&mut d.workload, len as usize, d.incompressible);
        match &mut d.azure {
            Some(azure) => {
                azure.writer.write_at(offset, &data)?;
                azure.touched.push((offset, len));
            }
            None => {
                d.writer.write_at(offset, &data)?;
                // The model learns of the write from the workload, not the writer's hook.
                d.touched.lock().expect("touched").push((offset, len));
            }
        }
        written += len;
    }
    d.churn_carry = budget - written as i64;
    Ok(written)
}

/// The host's shared resources in the cost model: its CPU (reading and encoding, one cycle's
/// work after another) and its WAN link (one transfer after another, at its bandwidth): disks
/// replicating at once share both.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub bytes_per_sec: u64,
    /// What one upload connection carries, if that is less than the link: a disk's records go
    /// over its policy's `upload_threads` connections.
    pub connection_bytes_per_sec: Option<u64>,
    /// The hosts' own upload throttle by work hours.
    pub host_throttle: Option<datapath::policy::Throttle>,
    /// When the link finishes what it was given (true time).
    pub free_at: u64,
    /// Each host's clock, by host index (cycles run on their host's time).
    pub host_clocks: Vec<HostClock>,
    /// When each host's CPU finishes the reading and encoding it was given (true time): disks
    /// of one host cycling at once share it too.
    pub cpu_free_at: Vec<u64>,
}

/// The blocks the writes since the last cycle touched (the checker's model catches up on them).
fn take_touched(d: &mut SimDisk<'_>) -> std::collections::BTreeSet<u64> {
    d.touched
        .lock()
        .expect("touched")
        .drain(..)
        .flat_map(|(o, l)| d.model.blocks_of(o, l))
        .collect()
}

/// When a committed cycle's records are through by the cost model (host time): the host reads
/// and encodes, then the records wait for the link. Takes the host's CPU and the link for it,
/// and notes the first point's minute.
fn send_by_cost_model(
    d: &mut SimDisk<'_>,
    link: &mut Link,
    report: &datapath::cycle::CycleReport,
    now: u64,
    start_nanos: u64,
) -> u64 {
    let connections = link.connection_bytes_per_sec.map_or(u64::MAX, |c| {
        c.saturating_mul(u64::from(d.driver.agent().policy().upload_threads))
    });
    // The link, the upload connections, and the policy's and the host's throttles of
    // each hour (the host's clock decides the hour; a long transfer crosses windows).
    let throttles = [d.driver.agent().policy().throttle, link.host_throttle];
    let rate_in_hour = |hour: u8| {
        throttles
            .iter()
            .flatten()
            .filter_map(|t| t.bytes_per_sec_in_hour(hour))
            .fold(link.bytes_per_sec, u64::min)
            .min(connections)
    };
    // The host reads and encodes, then the records wait for the link.
    let cpu = &mut link.cpu_free_at[d.host_index];
    let host_clock = link.host_clocks[d.host_index];
    let cpu_free = host_clock.host_time(*cpu);
    let encoded = now.max(cpu_free) + report.bytes_read * SEC / CPU_BYTES_PER_SEC;
    *cpu = host_clock.true_time(encoded);
    let free_at = host_clock.host_time(link.free_at);
    let sent = transfer_end(encoded.max(free_at), report.bytes_sent, rate_in_hour);
    let sent_true = host_clock.true_time(sent);
    link.free_at = sent_true;
    if d.report.first_point_minute.is_none() {
        d.report.first_point_minute = Some(sent_true.saturating_sub(start_nanos) as f64 / 60e9);
    }
    sent
}

/// The sequence of the point an attempt makes if it commits, as the checker sees the replica:
/// recorded before it runs, because two storage outcomes make points an attempt does not
/// report — a 500 that hides an applied manifest (the cycle "failed", the point exists), and a
/// premium cycle whose staging log committed before the failure (the next run applies it
/// first, as the point before its own). A later attempt sees such a point (or the committed
/// log) and takes the next sequence; one that sees nothing takes the same sequence and
/// overwrites the record.
fn expected_sequence(d: &SimDisk<'_>) -> Result<u64, datapath::replica::error::ReplicaError> {
    let next_sequence = d
        .observer
        .points(&d.digest_key)?
        .last()
        .map_or(0, |p| p.sequence + 1);
    let staged = d
        .driver
        .agent()
        .replica
        .staging
        .as_ref()
        .and_then(|log| log.committed().ok().flatten())
        .map(|h| h.sequence);
    Ok(if staged == Some(next_sequence) {
        next_sequence + 1
    } else {
        next_sequence
    })
}

/// Run the planned cycle now (VSS: the writer flushes first), remember the disk's content for
/// the checker, and say when it is done by the cost model.
pub(crate) fn run_cycle(
    d: &mut SimDisk<'_>,
    plan: &CyclePlan,
    now: u64,
    link: &mut Link,
    start_nanos: u64,
) -> (u64, CycleOutcome, String) {
    let ran = run_data_path(d, plan, now);
    price_cycle(d, ran, plan, now, link, start_nanos)
}

/// What a cycle's data path did, before the cost model says when it is done.
pub(crate) enum CycleRun {
    /// It could not start (the VHDX did not flush or open, the replica did not list).
    NotStarted(String),
    /// It ran: the agent's report or why it failed, and the root of the disk's content the
    /// checker recorded for its point.
    Ran(Result<Box<CycleReport>, String>, [u8; 32]),
}

/// The planned cycle's part that touches this disk only (its VHDX, agent, replica, model and
/// audit): the disks of one instant may run theirs side by side ([`price_cycle`] follows, in
/// the events' order).
pub(crate) fn run_data_path(d: &mut SimDisk<'_>, plan: &CyclePlan, now: u64) -> CycleRun {
    if let Err(e) = d.writer.flush() {
        return CycleRun::NotStarted(e.to_string());
    }
    let source =
        match vhdx::Disk::open_with(Box::new(Arc::clone(&d.file)), &d.replica_name, &NoParents) {
            Ok(s) => s,
            Err(e) => return CycleRun::NotStarted(e.to_string()),
        };
    let own_sequence = match expected_sequence(d) {
        Ok(sequence) => sequence,
        Err(e) => return CycleRun::NotStarted(e.to_string()),
    };
    let touched = take_touched(d);
    if plan.kind == datapath::replicator::CycleKind::Resync {
        d.report.resyncs += 1;
    }
    // The model's blocks are read from the cycle's view and hashed on the pool while the cycle
    // runs on this thread (its small deltas are examined here, so the pool is free): nothing
    // writes the disk until the cycle is over, so they are the blocks as at its start. A
    // scope, not a channel: on a thread of the pool the wait runs the task itself.
    let hasher = d.model.hasher();
    let mut hashes = Ok(Vec::new());
    let cycle = rayon::in_place_scope(|scope| {
        scope.spawn(|_| hashes = hasher.read_and_hash(&source, touched));
        let mut host = TrackedDisk {
            tracker: &mut d.tracker,
            view: Some(&source),
        };
        d.driver.run_cycle(plan, &mut host, now, &|_| {})
    });
    match hashes {
        Ok(hashes) => d.model.set_hashes(hashes),
        // The cycle read the same view; a block the checker cannot read leaves its model
        // behind the disk, so the drill fails here rather than in a later comparison.
        Err(e) => d.audit_failure(format!("the checker's model could not read the disk: {e}")),
    }
    let content = d.model.clone();
    let content_root = content.root();
    d.record_image(own_sequence, content);
    let cycle = match cycle {
        Ok(report) => {
            if report.point.sequence != own_sequence {
                d.audit_failure(format!(
                    "the cycle committed point {} where the checker expected {own_sequence}",
                    report.point.sequence
                ));
            }
            // Prove the new point (and any a failed attempt left) restores as the disk was.
            match d.observer.points(&d.digest_key) {
                Ok(points) => d.audit_points(points),
                Err(e) => d.audit_failure(format!("listing points: {e}")),
            }
            d.report.cycles += 1;
            d.report.bytes_sent += report.bytes_sent;
            Ok(Box::new(report))
        }
        Err(e) => {
            d.report.failed_cycles += 1;
            Err(e.to_string())
        }
    };
    CycleRun::Ran(cycle, content_root)
}

/// When the cycle that `ran` is done by the cost model (which takes the host's CPU and the
/// shared link for it), its outcome, and its line of the trace.
pub(crate) fn price_cycle(
    d: &mut SimDisk<'_>,
    ran: CycleRun,
    plan: &CyclePlan,
    now: u64,
    link: &mut Link,
    start_nanos: u64,
) -> (u64, CycleOutcome, String) {
    let failed = |now: u64, reason: String| {
        let detail = format!("{now} cycle failed: {reason}\n");
        (now, CycleOutcome::Failed { reason }, detail)
    };
    match ran {
        CycleRun::NotStarted(reason) => failed(now, reason),
        CycleRun::Ran(Err(reason), _) => failed(now + SEC, reason),
        CycleRun::Ran(Ok(report), content_root) => {
            let sent = send_by_cost_model(d, link, &report, now, start_nanos);
            let detail = format!(
                "{now} {} point {} {:?} examined {} changed {} sent {} content {}\n",
                d.replica_name,
                report.point.sequence,
                plan.kind,
                report.blocks_examined,
                report.blocks_changed,
                report.bytes_sent,
                blake3::Hash::from(content_root).to_hex()
            );
            (
                sent.max(now + SEC),
                CycleOutcome::Committed {
                    point_time_nanos: report.point.time_nanos,
                },
                detail,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::MIN;

    const HOUR: u64 = 3600 * SEC;

    #[test]
    fn a_transfer_crosses_throttle_windows_at_each_hour_s_rate() {
        let even = |_| 1_000;
        assert_eq!(transfer_end(5 * SEC, 10_000, even), 15 * SEC);
        // 1000 B/s until 09:00, 100 B/s from 09:00 to 17:00.
        let office = |h: u8| if (9..17).contains(&h) { 100 } else { 1_000 };
        let start = 8 * HOUR + 30 * MIN;
        // 1.8 MB go by 09:00; the other 200 kB take 2000 s more.
        assert_eq!(
            transfer_end(start, 2_000_000, office),
            9 * HOUR + 2_000 * SEC
        );
        // Whole days are skipped, not walked: a day carries 16 h x 3.6 MB + 8 h x 0.36 MB.
        let day = 16 * 3_600_000 + 8 * 360_000;
        assert_eq!(
            transfer_end(start, 1_000 * day + 1_800_000, office),
            start + 1_000 * 24 * HOUR + 1_800 * SEC
        );
        // A zero rate still ends (one byte a second).
        assert_eq!(transfer_end(0, 60, |_| 0), MIN);
    }
}
