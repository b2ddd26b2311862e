//! What a run proves once it is over, from the world it left: every retained point restores
//! byte-exact ([`prove_points`]), no AES-GCM nonce was used twice ([`nonces_unique`]), the
//! scenario's expected job outcomes ([`expectations`]), the RPO bound ([`rpo_bound`]); and the
//! report's list of faults ([`fault_spans`]).

use std::collections::BTreeMap;

use datapath::replica::block_record::BlockCodec;
use datapath::replica::disk_replica::DiskReplica;
use datapath::replica::manifest::{Consistency, Manifest};
use datapath::replica::restore::Fetch;
use rayon::prelude::*;

use crate::audit::PointAudit;

use crate::content::ContentModel;
use crate::report::{Check, FaultSpan, Job, SimError};
use crate::scenario::{FaultKind, Scenario};
use crate::sim_disk::SimDisk;

/// Prove every disk's points at `end`: each point still unproven is checked against the disk
/// as it was, the live blob is audited, and the oldest and newest point are also restored in
/// full through the replica's own restore (every record, and the manifest's Merkle root). Fills
/// in the disks' reports on the way.
pub(crate) fn prove_points(disks: &mut [SimDisk<'_>], end: u64) -> Result<Check, SimError> {
    let mut all_restored = true;
    let mut detail = String::new();
    let mut restored_in_full = 0usize;
    let mut points_of = Vec::with_capacity(disks.len());
    for d in disks.iter_mut() {
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
        d.report.points_live = points.len();
        d.report.replica_bytes = d
            .observer
            .stored_bytes()
            .map_err(|e| SimError::Setup(e.to_string()))?;
        d.report.app_consistent_points = points
            .iter()
            .filter(|p| p.consistency == Consistency::Application)
            .count();
        points_of.push(points);
    }
    // The proofs of different disks read different blobs: they run side by side.
    let full_failures: Vec<Vec<String>> = disks
        .iter_mut()
        .zip(&points_of)
        .map(|(d, points)| DiskProof {
            observer: &d.observer,
            codec: &d.codec,
            digest_key: &d.digest_key,
            images: &d.images,
            model: &d.model,
            audit: &mut d.audit,
            points,
        })
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(DiskProof::run)
        .collect();
    for ((d, points), full_failures) in disks.iter_mut().zip(&points_of).zip(full_failures) {
        restored_in_full += [points.first(), points.last()]
            .into_iter()
            .flatten()
            .map(|p| p.sequence)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
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
    let verified: usize = disks.iter().map(|d| d.report.points_verified).sum();
    Ok(Check {
        name: "every retained recovery point restores byte-exact".into(),
        ok: all_restored,
        detail: if detail.is_empty() {
            format!(
                "{verified} points, each verified against the disk as it appeared; {restored_in_full} also restored in full"
            )
        } else {
            detail
        },
    })
}

/// What proving one disk's points at the end needs (apart from the rest of the disk, so
/// disks can be proven on the pool side by side).
struct DiskProof<'d, 'a> {
    observer: &'d DiskReplica<'a>,
    codec: &'d BlockCodec,
    digest_key: &'d [u8; 32],
    images: &'d BTreeMap<u64, ContentModel>,
    /// The disk as it is (for the geometry of a model).
    model: &'d ContentModel,
    audit: &'d mut PointAudit,
    points: &'d [Manifest],
}

impl DiskProof<'_, '_> {
    /// Prove the points still unproven (those a failed attempt left), audit the live blob, and
    /// restore the oldest and newest point in full; the full restores' failures.
    fn run(self) -> Vec<String> {
        self.audit
            .catch_up(self.observer, self.codec, self.points, self.images);
        if let Err(e) = self.audit.audit_live_blob(self.observer) {
            self.audit.failures.push(format!("live blob: {e}"));
        }
        let ends: BTreeMap<u64, &Manifest> = [self.points.first(), self.points.last()]
            .into_iter()
            .flatten()
            .map(|p| (p.sequence, p))
            .collect();
        ends.values()
            .filter_map(|p| {
                self.restore_in_full(p)
                    .map(|why| format!("point {} (full restore): {why}", p.sequence))
            })
            .collect()
    }

    /// Restore point `p` in full; `Some(why)` when it fails or differs from the disk then.
    fn restore_in_full(&self, p: &Manifest) -> Option<String> {
        let mut restored = self.model.zeroed_like();
        let outcome = self.observer.restore_with(
            self.codec,
            p,
            self.digest_key,
            Fetch::InOrder,
            // Each block's bytes were checked against its digest (and the digests against the
            // manifest's Merkle root): the digest stands for them in the model.
            |block, _, digest| {
                restored.set_hash(block, *digest);
                Ok(())
            },
        );
        match outcome {
            Err(e) => Some(e.to_string()),
            Ok(())
                if self.images.get(&p.sequence).map(ContentModel::root)
                    != Some(restored.root()) =>
            {
                Some("content differs from the disk at that point".to_string())
            }
            Ok(()) => None,
        }
    }
}

/// No GCM nonce is used for two different records under one disk's key: every record of every
/// retained snapshot and of the blob itself was audited where it first appeared.
pub(crate) fn nonces_unique(disks: &[SimDisk<'_>]) -> Check {
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
    Check {
        name: "no AES-GCM nonce is used twice under one key".into(),
        ok: reuse.is_empty(),
        detail: if reuse.is_empty() {
            format!("{audited} record headers audited")
        } else {
            reuse.join("; ")
        },
    }
}

/// The scenario's expected job outcomes, each against the jobs that ran.
pub(crate) fn expectations(scenario: &Scenario, jobs: &[Job]) -> Vec<Check> {
    scenario
        .expectations
        .iter()
        .map(|e| {
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
            Check {
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
            }
        })
        .collect()
}

/// A point becomes recoverable when its cycle completes: the RPO bound is two copy intervals
/// plus the disk's longest cycle (a busy shared link makes cycles longer).
pub(crate) fn rpo_bound(disks: &[SimDisk<'_>]) -> Check {
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
    Check {
        name: "RPO within two copy intervals (plus the cycle's own time) while the network is up"
            .into(),
        ok: over.is_empty(),
        detail: if over.is_empty() {
            format!("largest steady RPO {steady:.0} s")
        } else {
            over.join("; ")
        },
    }
}

/// The scenario's faults as spans, for the report's timeline.
pub(crate) fn fault_spans(scenario: &Scenario) -> Vec<FaultSpan> {
    scenario
        .faults
        .iter()
        .map(|f| {
            let at = f.at_minutes as f64;
            let span = |kind: &str, label: String, minutes: u64| FaultSpan {
                kind: kind.into(),
                label,
                from_minute: at,
                to_minute: at + minutes as f64,
            };
            let on_host = |what: &str, host: &Option<String>| {
                host.as_ref()
                    .map_or(what.to_string(), |h| format!("{what} {h}"))
            };
            match f.kind.clone() {
                FaultKind::WanDown { minutes } => span("wan_down", "WAN down".into(), minutes),
                FaultKind::WanDegraded { minutes, mbps } => {
                    span("wan_degraded", format!("WAN at {mbps} Mbit/s"), minutes)
                }
                FaultKind::SnapshotPressure { minutes } => {
                    span("snapshot_pressure", "deletes refused".into(), minutes)
                }
                FaultKind::ChurnBurst { minutes, factor } => {
                    span("churn_burst", format!("churn x{factor}"), minutes)
                }
                FaultKind::HostCrash { host, .. } => {
                    span("host_crash", on_host("host crash", &host), 0)
                }
                FaultKind::StorageStorm { minutes, .. } => {
                    span("storage_storm", "storage storm".into(), minutes)
                }
                FaultKind::WrongCertificate => {
                    span("wrong_certificate", "wrong certificate".into(), 0)
                }
                FaultKind::ClockSkew { seconds } => {
                    span("clock_skew", format!("clock skew {seconds} s"), 0)
                }
                FaultKind::AgentRestart { host } => {
                    span("agent_restart", on_host("agent restart", &host), 0)
                }
            }
        })
        .collect()
}
