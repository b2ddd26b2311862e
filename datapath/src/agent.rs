//! The replication agent of one disk: it carries out the replicator's plans. It opens the
//! replica (an existing one keeps its block size; orphan snapshots are swept), tells the state
//! machine where replication stands, turns a plan into a cycle (a tracked delta reads only the
//! tracker's blocks; initial replication and resync scan every block), settles the tracker when
//! the point commits or the cycle fails, renews the nonce epoch when one runs out, and deletes
//! the points retention lets go. The CLI's driver and the simulator both use it.

use rand_core::RngCore;

use crate::cycle::{
    run_cycle_cached, BlockSource, CycleError, CycleOptions, CycleReport, Progress, Selection,
};
use crate::keys::{DiskKeys, Identity};
use crate::policy::Policy;
use crate::replica::disk_replica::{DiskReplica, Layout};
use crate::replica::error::ReplicaError;
use crate::replica::manifest::{Consistency, Manifest};
use crate::replica::nonce::NonceSource;
use crate::replicator::{CycleKind, CyclePlan, Replicator, Resume};
use crate::retention::PointInfo;
use crate::source::{blocks_touched, ChangeSource, Changes, PointRef, SourceError};
use pageblob::PageBlobStore;

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Cycle(#[from] CycleError),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("replica {name} uses {existing} KiB blocks; the policy asks for {asked} KiB")]
    BlockSize {
        name: String,
        existing: u32,
        asked: u32,
    },
}

impl AgentError {
    /// Whether another writer took the replica over: this agent's writes are refused for
    /// good, and only a new agent (which takes it back) can replicate.
    pub fn is_taken_over(&self) -> bool {
        matches!(
            self,
            AgentError::Cycle(CycleError::Replica(ReplicaError::TakenOver { .. }))
                | AgentError::Replica(ReplicaError::TakenOver { .. })
        )
    }
}

/// The agent of one disk.
pub struct DiskAgent<'a> {
    pub name: String,
    pub replica: DiskReplica<'a>,
    identity: &'a Identity,
    keys: DiskKeys,
    policy: Policy,
    /// The newest point this agent knows committed (what its source's tracking is relative to).
    last_point: Option<PointRef>,
    nonces: NonceSource,
    rng: Box<dyn RngCore + Send + 'a>,
    /// Driven by a simulator (see [`set_simulated`](Self::set_simulated)).
    simulated: bool,
    /// The digest table and Merkle tree of the last cycle this agent committed.
    table: crate::cycle::CycleCache,
    /// The tracker was untrusted when the agent started and no full comparison (initial
    /// replication or resync) has committed since: until one does, a clean stop must not mark
    /// the tracker trusted, or the writes it never saw would never be sent.
    resync_owed: bool,
    /// A point deletion failed half-way (journal slot cleared, snapshot left), a deleted
    /// point's snapshot was kept for a reader holding it, or the blob hit its snapshot limit:
    /// unreferenced snapshots may be using up the limit, and the next retention sweeps them
    /// (a running agent would otherwise never free them).
    orphans_possible: std::sync::atomic::AtomicBool,
    /// Snapshots the store allows per blob.
    snapshot_limit: Option<usize>,
    /// Set to abandon the running cycle (see [`set_stop_flag`](Self::set_stop_flag)).
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl std::fmt::Debug for DiskAgent<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskAgent")
            .field("name", &self.name)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

/// Where to open an agent.
#[derive(Clone, Copy)]
pub struct AgentTarget<'a, 'n> {
    pub store: &'a dyn PageBlobStore,
    pub container: &'n str,
    pub name: &'n str,
    /// Premium targets: the standard store holding the replication (staging) log.
    pub log_store: Option<&'a dyn PageBlobStore>,
    /// Snapshots the store allows per blob (premium: 100), `None`: no limit.
    pub snapshot_limit: Option<usize>,
}

/// Container of staging logs on the log store.
pub const LOG_CONTAINER: &str = "replication-log";

impl std::fmt::Debug for AgentTarget<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.container, self.name)
    }
}

impl<'a> DiskAgent<'a> {
    /// Open the replica of a disk of `disk_size` bytes. `tracking_untrusted` says why the
    /// source's change tracking cannot be trusted, if it cannot; `strict_block_size` refuses a policy block
    /// size that differs from an existing replica's (otherwise the replica's wins). `rng` draws
    /// nonce epochs (the OS RNG in production, a seeded stream in the simulator).
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        target: AgentTarget<'a, '_>,
        identity: &'a Identity,
        mut policy: Policy,
        disk_size: u64,
        tracking_untrusted: Option<String>,
        strict_block_size: bool,
        mut rng: Box<dyn RngCore + Send + 'a>,
    ) -> Result<(DiskAgent<'a>, Resume), AgentError> {
        let keys = identity.disk_keys(target.name);
        let layout = |block_size| Layout {
            disk_size,
            block_size,
        };
        let mut probe = DiskReplica::open(
            target.store,
            target.container,
            target.name,
            layout(policy.block_size),
        )?;
        // A .pfx of another certificate stops here, before anything is claimed: its claim
        // would fence off the replica's own writer (its next write refused, its watch ended)
        // for a run that cannot commit a point anyway.
        probe.check_certificate(keys.digest.expose(), &identity.key_id.0)?;
        // The epoch first, and the replica taken over with it, before anything is listed or
        // swept: from here on no earlier writer commits, so the points listed are all there is
        // (an unreferenced snapshot is an orphan, not another writer's commit in progress).
        let epoch = probe.claim_epoch(&mut rng)?;
        probe.take_over(epoch)?;
        let existing = probe.points(keys.digest.expose())?;
        if let Some(last) = existing.last() {
            if strict_block_size && last.block_size != policy.block_size {
                return Err(AgentError::BlockSize {
                    name: target.name.into(),
                    existing: last.block_size / 1024,
                    asked: policy.block_size / 1024,
                });
            }
            policy.block_size = last.block_size;
        }
        let replica = probe.with_layout(layout(policy.block_size));
        let replica = match target.log_store {
            Some(log) => replica.with_staging(log, LOG_CONTAINER, target.name)?,
            None => replica,
        };
        let sweep = replica.sweep_orphans(&existing)?;
        let resync_owed = tracking_untrusted.is_some();
        let resume = Resume {
            last_point_nanos: existing.last().map(|p| p.time_nanos),
            last_app_point_nanos: existing
                .iter()
                .rev()
                .find(|p| p.consistency == Consistency::Application)
                .map(|p| p.time_nanos),
            tracking_untrusted,
            paused_until_nanos: None,
        };
        let nonces = NonceSource::for_epoch(epoch);
        Ok((
            DiskAgent {
                snapshot_limit: target.snapshot_limit,
                stop: None,
                name: target.name.into(),
                replica,
                identity,
                keys,
                policy,
                last_point: existing.last().map(PointRef::of),
                nonces,
                rng,
                simulated: false,
                table: Default::default(),
                resync_owed,
                orphans_possible: (sweep.spared_for_readers > 0).into(),
            },
            resume,
        ))
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Driven by a simulator: every store call is made from the cycle's thread in block order
    /// (deterministic runs), and uploads are not paced in real time — the simulator charges
    /// the throttle in its own cost model.
    pub fn set_simulated(&mut self, simulated: bool) {
        self.simulated = simulated;
    }

    /// Abandon a running cycle when `stop` is set (a signal handler sets it): the cycle stops
    /// between block groups, commits nothing and fails with `CycleError::Abandoned`.
    pub fn set_stop_flag(&mut self, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        self.stop = Some(stop);
    }

    /// The live points, oldest first.
    pub fn points(&self) -> Result<Vec<Manifest>, ReplicaError> {
        self.replica.points(self.keys.digest.expose())
    }

    /// Run `plan` against `source` at `now_nanos`: freeze it, replicate what the plan and
    /// the source's changes select from its view, thaw it with the outcome.
    pub fn run(
        &mut self,
        plan: &CyclePlan,
        source: &mut dyn ChangeSource,
        now_nanos: u64,
        progress: &(dyn Fn(&Progress) + Sync),
    ) -> Result<CycleReport, AgentError> {
        let changes = source.freeze(self.last_point)?;
        let layout = self.replica.layout;
        let (selection, tracking_lost) = match (changes, plan.kind) {
            (Changes::Ranges(ranges), CycleKind::Delta) => (
                Selection::Blocks(blocks_touched(&ranges, layout.block_size, layout.disk_size)),
                None,
            ),
            // Everything is compared; what was tracked so far is covered by the scan.
            (Changes::Lost(why), _) => (Selection::Scan, Some(why)),
            _ => (Selection::Scan, None),
        };
        let (upload_threads, throttle_bytes_per_sec) =
            upload_options(&self.policy, plan, self.simulated);
        let options = CycleOptions {
            selection,
            consistency: plan.consistency,
            zstd_level: self.policy.zstd_level,
            encrypt: self.policy.encrypt_at_rest,
            upload_threads,
            throttle_bytes_per_sec,
            now_nanos,
            snapshot_limit: self.snapshot_limit,
            stop: self.stop.clone(),
            count_serial_cpu: !self.simulated,
        };
        let mut outcome = match source.view() {
            Ok(view) => self.cycle(view, &options, progress),
            Err(e) => {
                source.thaw(None)?;
                return Err(e.into());
            }
        };
        if matches!(outcome, Err(CycleError::Nonces)) {
            // The epoch's 2^32 nonces are used: a fresh epoch, and the cycle again.
            let renewed = self.replica.claim_epoch(&mut self.rng);
            outcome = match renewed {
                Ok(epoch) => {
                    self.nonces = NonceSource::for_epoch(epoch);
                    self.cycle(source.view()?, &options, progress)
                }
                Err(e) => Err(e.into()),
            };
        }
        if let Err(CycleError::Replica(ReplicaError::Store(e))) = &outcome {
            if e.code() == Some(pageblob::ErrorCode::SnapshotCountExceeded) {
                self.orphans_possible
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if outcome.is_ok() && (plan.kind != CycleKind::Delta || tracking_lost.is_some()) {
            // Every block was compared with the replica: nothing the tracker missed is owed.
            self.resync_owed = false;
        }
        let committed = outcome.as_ref().ok().map(|r| PointRef::of(&r.point));
        if committed.is_some() {
            self.last_point = committed;
        }
        source.thaw(committed)?;
        let mut report = outcome?;
        report.tracking_lost = tracking_lost;
        Ok(report)
    }

    fn cycle(
        &mut self,
        source: &dyn BlockSource,
        options: &CycleOptions,
        progress: &(dyn Fn(&Progress) + Sync),
    ) -> Result<CycleReport, CycleError> {
        run_cycle_cached(
            &self.replica,
            source,
            self.identity,
            &self.keys,
            options,
            &mut self.nonces,
            progress,
            &mut self.table,
        )
    }

    /// Snapshots the store allows per blob (`None`: no limit).
    /// The newest point this agent knows committed: what its source's next freeze is relative
    /// to.
    pub fn last_point(&self) -> Option<PointRef> {
        self.last_point
    }

    pub fn snapshot_limit(&self) -> Option<usize> {
        self.snapshot_limit
    }

    /// The nonce epoch this agent claimed from the replica (the current one).
    pub fn nonce_epoch(&self) -> u64 {
        self.nonces.epoch()
    }

    /// Delete the points retention lets go at `now`; returns their sequences.
    pub fn apply_retention(
        &self,
        machine: &Replicator,
        now_nanos: u64,
    ) -> Result<Vec<u64>, ReplicaError> {
        self.apply_retention_among(machine, now_nanos, None)
    }

    /// [`apply_retention`](Self::apply_retention) for a disk replicated with the other disks
    /// of its machine, which have points at `machine_times` (see [`crate::retention`]).
    pub fn apply_retention_among(
        &self,
        machine: &Replicator,
        now_nanos: u64,
        machine_times: Option<&std::collections::BTreeSet<u64>>,
    ) -> Result<Vec<u64>, ReplicaError> {
        let points = self.points()?;
        let infos: Vec<PointInfo> = points.iter().map(PointInfo::of).collect();
        use std::sync::atomic::Ordering;
        let mut doomed = machine.retention(now_nanos, &infos, machine_times);
        if !doomed.is_empty() {
            // Points a reader holds stay (a restore or a verify through an endpoint).
            let held = self.replica.held_points(now_nanos)?;
            if !held.is_empty() {
                doomed = crate::retention::sparing_held(
                    &infos,
                    &doomed,
                    &held,
                    machine.snapshot_limit(),
                );
            }
        }
        let doomed_points: Vec<&Manifest> = points
            .iter()
            .filter(|p| doomed.contains(&p.sequence))
            .collect();
        match self.replica.delete_points(&doomed_points) {
            // A held point's snapshot stays until its reader lets go: a sweep takes it then.
            Ok(kept_for_readers) if !kept_for_readers.is_empty() => {
                self.orphans_possible.store(true, Ordering::Relaxed)
            }
            Ok(_) => {}
            Err(e) => {
                self.orphans_possible.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        if self.orphans_possible.load(Ordering::Relaxed) {
            let live: Vec<Manifest> = points
                .into_iter()
                .filter(|p| !doomed.contains(&p.sequence))
                .collect();
            let sweep = self.replica.sweep_orphans(&live)?;
            self.orphans_possible
                .store(sweep.spared_for_readers > 0, Ordering::Relaxed);
        }
        Ok(doomed)
    }

    /// A clean stop of the service without giving the agent up: `source` puts a running
    /// cycle's changes back and persists its tracking with a clean-shutdown mark, so the agent
    /// that starts next trusts it (no resync) — unless a resync is still owed (the tracking was
    /// untrusted at start and no full comparison has committed since): then the mark stays
    /// unclean and the next agent resyncs.
    pub fn stop_cleanly(&mut self, source: &mut dyn ChangeSource) -> Result<(), AgentError> {
        Ok(source.stop(!self.resync_owed)?)
    }
}

/// How a cycle's records go to the store: its writer threads and its real-time upload limit.
/// A simulated run stores from the cycle's thread (0 threads) and is never paced: the
/// simulator charges the throttle in its cost model.
fn upload_options(policy: &Policy, plan: &CyclePlan, simulated: bool) -> (usize, Option<u64>) {
    if simulated {
        (0, None)
    } else {
        (policy.upload_threads as usize, plan.throttle_bytes_per_sec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simulated_run_stores_inline_and_is_never_paced_in_real_time() {
        let policy = Policy::from_toml(
            "upload_threads = 6\n[throttle]\nwork_hours_kbps = 512\nwork_start_hour = 0\nwork_end_hour = 24",
            pageblob::Profile::Standard,
        )
        .unwrap();
        let plan = CyclePlan {
            kind: CycleKind::Delta,
            consistency: Consistency::Crash,
            throttle_bytes_per_sec: Some(64_000),
            due_nanos: 0,
        };
        assert_eq!(upload_options(&policy, &plan, false), (6, Some(64_000)));
        assert_eq!(upload_options(&policy, &plan, true), (0, None));
    }
}
