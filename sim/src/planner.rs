//! The capacity planner (`drplane plan`): from VMs, disks, data, daily churn, the replication
//! policy, the storage profile and the WAN, predict how long initial replication takes, the
//! bandwidth delta replication needs to hold the RPO, the RPO at the given bandwidth, replica
//! and snapshot storage, snapshots per blob against the profile's limit and each VM's churn
//! against the published limits — with a verdict per VM. [`verify`] then runs the simulator on
//! that very workload (scaled down when large) and sets predicted against simulated figures.
//!
//! The model, stated so it can be checked: a host reads and encodes at `host_mb_per_s`; one
//! WAN link at `bandwidth_mbps` (or the policy's throttle in that hour) carries everything, one
//! transfer after another; a write dirties whole replication blocks, so with writes of
//! 4–256 KiB (the simulator's workload) the bytes a cycle sends are the written bytes times a
//! block amplification; data shrinks by `compression_ratio` (1 = incompressible, the safe
//! assumption: ASR itself does not compress).

use datapath::pageblob::Profile;
use datapath::policy::Policy;
use serde::{Deserialize, Serialize};

/// A workload to plan for (TOML, or built from `drplane plan` flags).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanInput {
    pub vms: u32,
    pub disks_per_vm: u32,
    /// Size of each disk.
    pub disk_gib: f64,
    /// Data on each disk when replication is enabled (default: the whole disk).
    pub used_gib: Option<f64>,
    /// Data written per VM per day.
    pub churn_gib_per_day: f64,
    /// Busy hours "H1-H2" (UTC) taking `peak_share` of the daily churn.
    pub peak_hours: Option<String>,
    pub peak_share: Option<f64>,
    /// "standard" or "premium".
    pub profile: String,
    pub bandwidth_mbps: f64,
    /// Typical write size (premium's churn limit depends on it).
    pub io_size_kib: Option<u32>,
    pub compression_ratio: Option<f64>,
    /// What the host reads and encodes per second.
    pub host_mb_per_s: Option<f64>,
    /// A replication policy (the keys of `--policy` files).
    pub policy: Option<toml::Table>,
}

/// Why a plan cannot be made.
#[derive(Debug, thiserror::Error)]
#[error("plan: {field}: {why}")]
pub struct PlanError {
    pub field: String,
    pub why: String,
}

fn bad(field: &str, why: impl Into<String>) -> PlanError {
    PlanError {
        field: field.into(),
        why: why.into(),
    }
}

/// One VM's verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VmVerdict {
    pub vm: String,
    pub fits: bool,
    /// Each limit exceeded, said plainly.
    pub exceeds: Vec<String>,
}

/// The planner's answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Plan {
    pub initial_bytes: u64,
    /// From enabling replication (waiting for the policy's start hour included) to the last
    /// disk's first point.
    pub initial_replication_hours: f64,
    /// After initial replication, how long sending what was written meanwhile takes, until
    /// cycles keep pace (`None`: they never do).
    pub catch_up_hours: Option<f64>,
    pub peak_churn_mb_per_s_per_vm: f64,
    pub churn_limit_mb_per_s: f64,
    /// Bytes a copy interval sends at peak (all VMs).
    pub peak_cycle_bytes: u64,
    pub delta_bandwidth_needed_mbps: f64,
    /// Largest RPO at peak with the given bandwidth; `None`: it grows without bound.
    pub expected_max_rpo_secs: Option<f64>,
    /// Replica storage when replication is enabled, and a day later.
    pub replica_storage_bytes: u64,
    pub replica_storage_after_day_bytes: u64,
    pub snapshot_storage_bytes: u64,
    pub snapshots_per_blob: usize,
    pub snapshot_limit: Option<usize>,
    pub verdicts: Vec<VmVerdict>,
}

/// Bytes a cycle sends per byte written, for writes of 4–256 KiB (4 KiB steps, 4 KiB aligned,
/// uniformly placed) into blocks of `block` bytes: the mean of whole blocks touched times the
/// block size, over the mean write length.
pub fn block_amplification(block: u64) -> f64 {
    let (mut sent, mut written) = (0f64, 0f64);
    for pages in 1..=64u64 {
        let len = pages * 4096;
        // Over the 4 KiB-aligned offsets within a block, the blocks a write touches.
        let starts = block / 4096;
        let blocks: u64 = (0..starts).map(|s| (s * 4096 + len).div_ceil(block)).sum();
        sent += blocks as f64 * block as f64 / starts as f64;
        written += len as f64;
    }
    sent / written
}

/// The validated inputs the model works from.
struct Model {
    vms: u32,
    disks: u32,
    disk_bytes: u64,
    used_bytes: u64,
    churn_per_vm_day: f64,
    peak: Option<(u8, u8, f64)>,
    profile: Profile,
    link_bytes_per_sec: f64,
    io_size_kib: u32,
    ratio: f64,
    host_bytes_per_sec: f64,
    policy: Policy,
}

const GIB: f64 = (1u64 << 30) as f64;

fn model(input: &PlanInput) -> Result<Model, PlanError> {
    let profile = Profile::parse(&input.profile)
        .ok_or_else(|| bad("profile", "standard, premium or premium-spaced"))?;
    let in_range = |field: &str, v: f64, lo: f64, hi: f64| {
        if v.is_finite() && (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(bad(field, format!("{v}: from {lo} to {hi}")))
        }
    };
    if !(1..=10_000).contains(&input.vms) {
        return Err(bad("vms", "1 to 10000"));
    }
    if !(1..=64).contains(&input.disks_per_vm) {
        return Err(bad("disks_per_vm", "1 to 64"));
    }
    let disk_gib = in_range("disk_gib", input.disk_gib, 1.0 / 1024.0, 4096.0)?;
    let used_gib = in_range(
        "used_gib",
        input.used_gib.unwrap_or(disk_gib),
        0.0,
        disk_gib,
    )?;
    let churn = in_range("churn_gib_per_day", input.churn_gib_per_day, 0.0, 1.0e5)?;
    let peak = match (&input.peak_hours, input.peak_share) {
        (None, None) => None,
        (Some(h), share) => {
            let (a, b) = h
                .split_once('-')
                .and_then(|(a, b)| {
                    Some((a.trim().parse::<u8>().ok()?, b.trim().parse::<u8>().ok()?))
                })
                .filter(|(a, b)| a < b && *b <= 24)
                .ok_or_else(|| bad("peak_hours", format!("{h:?}: \"H1-H2\" with H1 < H2 <= 24")))?;
            let share = in_range("peak_share", share.unwrap_or(0.7), 0.0, 1.0)?;
            Some((a, b, share))
        }
        (None, Some(_)) => return Err(bad("peak_share", "needs peak_hours")),
    };
    let bandwidth = in_range("bandwidth_mbps", input.bandwidth_mbps, 0.001, 1.0e6)?;
    let ratio = in_range(
        "compression_ratio",
        input.compression_ratio.unwrap_or(1.0),
        1.0,
        100.0,
    )?;
    let host = in_range(
        "host_mb_per_s",
        input.host_mb_per_s.unwrap_or(400.0),
        1.0,
        1.0e5,
    )?;
    let policy_text = toml::to_string(&input.policy.clone().unwrap_or_default())
        .map_err(|e| bad("policy", e.to_string()))?;
    let policy =
        Policy::from_toml(&policy_text, profile).map_err(|e| bad("policy", e.to_string()))?;
    Ok(Model {
        vms: input.vms,
        disks: input.disks_per_vm,
        disk_bytes: (disk_gib * GIB) as u64,
        used_bytes: (used_gib * GIB) as u64,
        churn_per_vm_day: churn * GIB,
        peak,
        profile,
        link_bytes_per_sec: bandwidth * 1e6 / 8.0,
        io_size_kib: input.io_size_kib.unwrap_or(64).clamp(1, 4096),
        ratio,
        host_bytes_per_sec: host * 1e6,
        policy,
    })
}

impl Model {
    /// The link's rate in hour-of-day `hour` (the policy's throttle, if lower).
    fn rate_at(&self, hour: u64) -> f64 {
        let throttle = self.policy.throttle.and_then(|t| {
            let h = (hour % 24) as u8;
            if (t.work_start_hour..t.work_end_hour).contains(&h) {
                t.work_hours_kbps
            } else {
                t.non_work_hours_kbps
            }
        });
        throttle.map_or(self.link_bytes_per_sec, |kbps| {
            (f64::from(kbps) * 1000.0 / 8.0).min(self.link_bytes_per_sec)
        })
    }

    /// Seconds to send `bytes` starting at hour-of-day `from_hour` (0 = midnight UTC).
    fn transfer_secs(&self, bytes: f64, from_secs: f64) -> f64 {
        let mut left = bytes;
        let mut t = from_secs;
        // Hour by hour: throttles change on the hour. Bounded: a year at most.
        while left > 0.0 && t - from_secs < 365.0 * 86400.0 {
            let hour = (t / 3600.0) as u64;
            let hour_end = (hour + 1) as f64 * 3600.0;
            let rate = self.rate_at(hour);
            let can = rate * (hour_end - t);
            if can >= left {
                return t + left / rate - from_secs;
            }
            left -= can;
            t = hour_end;
        }
        t - from_secs
    }

    /// Replica storage `hours` after enabling: the used data, plus the blocks beyond it that
    /// writes spread over the whole disk have reached by then (each write lands anywhere:
    /// the share of fresh blocks reached after writing W is 1 − e^(−W/disk)).
    fn replica_bytes_at(&self, hours: f64) -> u64 {
        let block = u64::from(self.policy.block_size);
        let disk = self.disk_bytes as f64;
        let written =
            self.churn_per_vm_day / f64::from(self.disks) * block_amplification(block) * hours
                / 24.0;
        let reached = (disk - self.used_bytes as f64).max(0.0) * (1.0 - (-written / disk).exp());
        let per_disk =
            (self.used_bytes as f64 + reached) * (1.0 / self.ratio + 512.0 / block as f64);
        (per_disk * f64::from(self.vms) * f64::from(self.disks)) as u64
    }

    /// Churn per VM per second at peak.
    fn peak_rate(&self) -> f64 {
        match self.peak {
            None => self.churn_per_vm_day / 86400.0,
            Some((a, b, share)) => {
                let peak_secs = f64::from(b - a) * 3600.0;
                let rest_secs = 86400.0 - peak_secs;
                let peak = self.churn_per_vm_day * share / peak_secs;
                let off = if rest_secs > 0.0 {
                    self.churn_per_vm_day * (1.0 - share) / rest_secs
                } else {
                    0.0
                };
                peak.max(off)
            }
        }
    }
}

/// Plan `input`; `start_secs_of_day`: when replication is enabled (UTC seconds after midnight).
pub fn plan(input: &PlanInput, start_secs_of_day: u64) -> Result<Plan, PlanError> {
    let m = model(input)?;
    let block = u64::from(m.policy.block_size);
    let amp = block_amplification(block);
    let disks_total = u64::from(m.vms) * u64::from(m.disks);
    // Initial replication: each disk is read and encoded, then its data waits for the link.
    let start = start_secs_of_day as f64;
    let wait = match m.policy.initial_replication_hour {
        None => 0.0,
        Some(h) => (f64::from(h) * 3600.0 - start).rem_euclid(86400.0),
    };
    let initial_bytes = (m.used_bytes as f64 * disks_total as f64 / m.ratio) as u64;
    // The host encodes one disk after another; the link starts with the first disk's data.
    let encode = m.used_bytes as f64 / m.host_bytes_per_sec;
    let transfer = m.transfer_secs(initial_bytes as f64, start + wait + encode);
    let initial_secs = wait + (encode + transfer).max(encode * disks_total as f64);
    // Delta replication at peak.
    let freq = f64::from(m.policy.copy_frequency_secs);
    let peak_rate = m.peak_rate();
    let peak_send_rate = peak_rate * f64::from(m.vms) * amp / m.ratio;
    let peak_cycle_bytes = (peak_send_rate * freq) as u64;
    let link = m.link_bytes_per_sec;
    let cycle_secs = peak_cycle_bytes as f64 / link
        + peak_rate * freq * amp / f64::from(m.disks.max(1)) / m.host_bytes_per_sec;
    let expected_max_rpo_secs = (peak_send_rate < link).then_some(freq + cycle_secs);
    // What was written during initial replication goes next, while writing goes on.
    let mean_send_rate = m.churn_per_vm_day / 86400.0 * f64::from(m.vms) * amp / m.ratio;
    let backlog = mean_send_rate * (initial_secs - wait);
    let catch_up_hours =
        (mean_send_rate < link).then(|| backlog / (link - mean_send_rate) / 3600.0);
    // Storage: the replica holds the used data; retained points hold what changed since.
    let replica_storage_bytes = m.replica_bytes_at(0.0);
    let replica_storage_after_day_bytes = m.replica_bytes_at(24.0);
    let retained_changes = (m.churn_per_vm_day * amp * f64::from(m.policy.retention_hours) / 24.0)
        .min(m.disk_bytes as f64 * f64::from(m.disks));
    let snapshot_storage_bytes = (retained_changes * f64::from(m.vms) / m.ratio) as u64;
    let snapshots_per_blob = m.policy.snapshots_needed();
    let snapshot_limit = m.profile.max_snapshots_per_blob();
    // Published Hyper-V churn limits per VM: standard 2 MB/s; premium 5 MB/s with small I/O
    // (8 KB) up to 20 MB/s with I/O of 16 KB or more.
    let churn_limit = match m.profile {
        Profile::Standard => 2.0,
        Profile::Premium { .. } if m.io_size_kib < 16 => 5.0,
        Profile::Premium { .. } => 20.0,
    };
    let peak_mb = peak_rate / 1e6;
    let mut exceeds = Vec::new();
    if peak_mb > churn_limit {
        exceeds.push(format!(
            "churn {peak_mb:.2} MB/s at peak is over the {churn_limit} MB/s per-VM limit of {} storage",
            input.profile
        ));
    }
    if let Some(limit) = snapshot_limit.filter(|l| snapshots_per_blob > *l) {
        exceeds.push(format!(
            "the policy keeps {snapshots_per_blob} snapshots per blob, over the limit of {limit}"
        ));
    }
    if expected_max_rpo_secs.is_none() {
        exceeds.push(format!(
            "the WAN ({:.1} Mbit/s) is below the {:.1} Mbit/s delta replication needs at peak: RPO grows",
            link * 8.0 / 1e6,
            peak_send_rate * 8.0 / 1e6
        ));
    }
    let verdicts = (0..m.vms)
        .map(|v| VmVerdict {
            vm: format!("vm{}", v + 1),
            fits: exceeds.is_empty(),
            exceeds: exceeds.clone(),
        })
        .collect();
    Ok(Plan {
        initial_bytes,
        initial_replication_hours: initial_secs / 3600.0,
        catch_up_hours,
        peak_churn_mb_per_s_per_vm: peak_mb,
        churn_limit_mb_per_s: churn_limit,
        peak_cycle_bytes,
        delta_bandwidth_needed_mbps: peak_send_rate * 8.0 / 1e6,
        expected_max_rpo_secs,
        replica_storage_bytes,
        replica_storage_after_day_bytes,
        snapshot_storage_bytes,
        snapshots_per_blob,
        snapshot_limit,
        verdicts,
    })
}

/// Predicted against simulated.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Comparison {
    pub figure: String,
    pub predicted: f64,
    pub simulated: f64,
    /// |simulated − predicted| / predicted.
    pub relative_error: f64,
}

/// What `--verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// How the workload was scaled to simulate it (1 = as given): sizes, churn and bandwidth
    /// by `scale`; at most 16 VMs, with their share of the bandwidth.
    pub scale: f64,
    pub simulated_vms: u32,
    pub simulated_hours: u64,
    /// The plan for the scaled workload (what the simulation is compared with).
    pub scaled_plan: Plan,
    pub comparisons: Vec<Comparison>,
    /// RPO samples of the simulation's steady state: 50th, 95th percentile and largest.
    pub rpo_p50_secs: f64,
    pub rpo_p95_secs: f64,
    pub rpo_max_secs: f64,
    /// The simulation's invariants that failed (its RPO bound aside).
    pub failed_checks: Vec<String>,
    pub trace_hash: String,
}

/// Largest total of used data the simulation takes as is; larger workloads are scaled down.
pub const MAX_SIMULATED_BYTES: u64 = 512 << 20;

/// Run the simulator on `input` (scaled down so its data fits [`MAX_SIMULATED_BYTES`]: disk
/// sizes, data, churn and bandwidth shrink alike, so times stay comparable) for the initial
/// replication and `delta_hours` after it, in `workdir`; compare with the plan of the scaled
/// workload.
pub fn verify(
    input: &PlanInput,
    delta_hours: u64,
    workdir: &std::path::Path,
) -> Result<Verification, PlanError> {
    let m = model(input)?;
    if m.disks > 16 {
        return Err(bad(
            "disks_per_vm",
            "the simulator takes at most 16 disks per VM",
        ));
    }
    // Many VMs: simulate 16 of them with their share of the link.
    let vms = m.vms.min(16);
    let vm_share = f64::from(vms) / f64::from(m.vms);
    let disks_total = u64::from(vms) * u64::from(m.disks);
    let total = m.disk_bytes.max(m.used_bytes) * disks_total;
    let scale = (MAX_SIMULATED_BYTES as f64 / total as f64).min(1.0);
    // The scenario takes whole MiB and Mbit/s: round first, then plan exactly what runs.
    let used_mib = ((m.used_bytes as f64 * scale) / (1u64 << 20) as f64)
        .round()
        .max(1.0) as u64;
    let disk_mib = ((m.disk_bytes as f64 * scale) / (1u64 << 20) as f64)
        .round()
        .max(used_mib as f64) as u64;
    let churn_kib_hour =
        (m.churn_per_vm_day * scale / 24.0 / f64::from(m.disks) / 1024.0).round() as u64;
    let kbps = (input.bandwidth_mbps * 1000.0 * vm_share * scale)
        .round()
        .max(1.0) as u64;
    let mut scaled = input.clone();
    scaled.vms = vms;
    scaled.disk_gib = disk_mib as f64 / 1024.0;
    scaled.used_gib = Some(used_mib as f64 / 1024.0);
    scaled.churn_gib_per_day = (churn_kib_hour * 24 * u64::from(m.disks)) as f64 / GIB * 1024.0;
    scaled.bandwidth_mbps = kbps as f64 / 1000.0;
    scaled.host_mb_per_s = Some(400.0); // the simulator's host
                                        // The simulation writes at an even rate: no peak hours, no throttle (the scaled link is
                                        // the bottleneck).
    scaled.peak_hours = None;
    scaled.peak_share = None;
    if let Some(p) = scaled.policy.as_mut() {
        p.remove("throttle");
    }
    let start_unix: u64 = 1_795_651_200; // midnight UTC
    let scaled_plan = plan(&scaled, 0)?;
    let settled = scaled_plan.initial_replication_hours + scaled_plan.catch_up_hours.unwrap_or(0.0);
    let hours = ((settled.ceil() as u64) + delta_hours).clamp(1, 72);
    let sm = model(&scaled)?;
    let mut text = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        text,
        "name = \"plan-verify\"\nseed = 1\nduration_hours = {hours}\nstart_unix = {start_unix}"
    );
    let _ = writeln!(text, "[storage]\nprofile = \"{}\"", input.profile);
    let _ = writeln!(text, "[network]\nbandwidth_kbps = {kbps}");
    let _ = writeln!(text, "[workload]\nincompressible = true");
    let policy = scaled.policy.clone().unwrap_or_default();
    let _ = writeln!(
        text,
        "[policy]\n{}",
        toml::to_string(&policy).map_err(|e| bad("policy", e.to_string()))?
    );
    for v in 0..sm.vms {
        let _ = writeln!(text, "[[vm]]\nname = \"vm{}\"", v + 1);
        for d in 0..sm.disks {
            let _ = writeln!(
                text,
                "[[vm.disk]]\nname = \"d{d}\"\nsize_mib = {disk_mib}\nused_mib = {used_mib}\nchurn_kib_per_hour = {churn_kib_hour}\nhot_spot = 0.0"
            );
        }
    }
    let scenario =
        crate::Scenario::parse(&text).map_err(|e| bad("scaled scenario", e.to_string()))?;
    let report = crate::run(&scenario, 1, workdir).map_err(|e| bad("simulation", e.to_string()))?;
    // Compare what the model was given with what the simulation really ran (whole MiB).
    let simulated_initial_hours = report
        .disks
        .iter()
        .filter_map(|d| d.first_point_minute)
        .fold(0.0, f64::max)
        / 60.0;
    // Steady state: initial replication and its catch-up done, two intervals more.
    let steady_from_minute = (simulated_initial_hours + scaled_plan.catch_up_hours.unwrap_or(0.0))
        * 60.0
        + 2.0 * f64::from(sm.policy.copy_frequency_secs) / 60.0;
    let mut steady: Vec<f64> = report
        .disks
        .iter()
        .flat_map(|d| d.rpo_samples.iter())
        .filter(|(minute, _)| *minute > steady_from_minute)
        .map(|(_, rpo)| *rpo)
        .collect();
    steady.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        steady
            .get(((steady.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let compare = |figure: &str, predicted: f64, simulated: f64| Comparison {
        figure: figure.into(),
        predicted,
        simulated,
        relative_error: if predicted == 0.0 {
            if simulated == 0.0 {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            (simulated - predicted).abs() / predicted
        },
    };
    let bytes_sent: u64 = report.disks.iter().map(|d| d.bytes_sent).sum();
    let mut comparisons = vec![
        compare(
            "initial replication (hours)",
            scaled_plan.initial_replication_hours,
            simulated_initial_hours,
        ),
        compare(
            "bytes sent (GiB)",
            (scaled_plan.initial_bytes as f64
                + scaled_plan.peak_cycle_bytes as f64 / f64::from(sm.policy.copy_frequency_secs)
                    * hours as f64
                    * 3600.0)
                / GIB,
            bytes_sent as f64 / GIB,
        ),
    ];
    let replica_bytes: u64 = report.disks.iter().map(|d| d.replica_bytes).sum();
    comparisons.push(compare(
        "replica storage (GiB)",
        sm.replica_bytes_at(hours as f64) as f64 / GIB,
        replica_bytes as f64 / GIB,
    ));
    // Compared only when the run reached its steady state (a very long initial replication
    // can outlast the simulated hours).
    if let (Some(rpo), false) = (scaled_plan.expected_max_rpo_secs, steady.is_empty()) {
        comparisons.push(compare("largest steady RPO (s)", rpo, pick(1.0)));
    }
    Ok(Verification {
        scale,
        simulated_vms: vms,
        simulated_hours: hours,
        scaled_plan,
        comparisons,
        rpo_p50_secs: pick(0.5),
        rpo_p95_secs: pick(0.95),
        rpo_max_secs: pick(1.0),
        // The simulation's own invariants (every point restores, no nonce reused, limits),
        // not its RPO bound: RPO is what this compares, catch-up after initial included.
        failed_checks: report
            .checks
            .iter()
            .filter(|c| !c.ok && !c.name.starts_with("RPO within"))
            .map(|c| format!("{} ({})", c.name, c.detail))
            .collect(),
        trace_hash: report.trace_hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amplification_is_whole_blocks_over_written_bytes() {
        // 4 KiB blocks: every write is whole blocks already.
        assert!((block_amplification(4096) - 1.0).abs() < 1e-9);
        let a = block_amplification(64 << 10);
        assert!(a > 1.3 && a < 1.7, "{a}");
        assert!(block_amplification(1 << 20) > a);
    }
}
