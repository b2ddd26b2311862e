//! What a simulator run returns: the [`Report`] with a [`DiskReport`] per disk, the vault's
//! [`Job`]s, [`HealthEvent`]s and [`ReplicatedItem`]s, and the [`Check`]s that decide whether
//! the run passed.

use serde::Serialize;

/// Why a run failed to start or broke an invariant it cannot report.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulator storage: {0}")]
    Storage(std::io::Error),
    #[error("{0}")]
    Setup(String),
    #[error("the scenario needs about {needed_mib} MiB of memory (its disks, replicas and retained points are held in memory); this machine has {available_mib} MiB available: use smaller or fewer disks, less churn or a shorter run")]
    TooBig { needed_mib: u64, available_mib: u64 },
}

/// One checked invariant.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What happened to one disk.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct DiskReport {
    pub vm: String,
    pub disk: String,
    pub cycles: u64,
    pub failed_cycles: u64,
    pub resyncs: u64,
    pub points_live: usize,
    pub points_verified: usize,
    pub app_consistent_points: usize,
    pub bytes_written_by_workload: u64,
    pub bytes_sent: u64,
    pub max_rpo_secs: f64,
    /// Largest RPO at least two copy intervals after any fault.
    pub max_steady_rpo_secs: f64,
    /// Longest committed cycle (start to done) outside disturbances: what the RPO may add to
    /// the copy interval when the link is busy.
    pub max_steady_cycle_secs: f64,
    pub health_warnings: Vec<String>,
    /// When the first point (initial replication) finished, in simulated minutes.
    pub first_point_minute: Option<f64>,
    /// Bytes the replica's data blob holds at the end.
    pub replica_bytes: u64,
    /// Cycles a host crash cut short part-way through their storage writes.
    pub crashed_cycles: u64,
    /// (simulated minute, RPO in seconds) at each poll, for the timeline.
    pub rpo_samples: Vec<(f64, f64)>,
    /// The RPO the disk is held to while the network is up: two copy intervals of its policy
    /// (the check adds the disk's longest steady cycle).
    pub rpo_target_secs: f64,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub scenario: String,
    pub scenario_hash: String,
    pub seed: u64,
    pub simulated_hours: u64,
    pub events: u64,
    pub trace_hash: String,
    pub disks: Vec<DiskReport>,
    /// The vault's jobs, in order.
    pub jobs: Vec<Job>,
    /// Disks excluded from replication ("vm/disk").
    pub excluded_disks: Vec<String>,
    /// Faults as they happened, in scenario order.
    pub faults: Vec<FaultSpan>,
    /// The vault's health events of the run's last 24 hours, in order.
    pub health_events: Vec<HealthEvent>,
    /// The vault's replicated items as the run ends.
    pub replicated_items: Vec<ReplicatedItem>,
    pub checks: Vec<Check>,
}

/// One fault of the run, for the timeline: a band (`to_minute > from_minute`) or an instant.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FaultSpan {
    /// The scenario's fault kind (`wan_down`, `storage_storm`, `host_crash`, ...).
    pub kind: String,
    /// What the report calls it ("WAN at 20 Mbit/s", "host crash hv2").
    pub label: String,
    pub from_minute: f64,
    pub to_minute: f64,
}

/// A health event of a replicated disk: it turned to a warning (and why) or back to healthy.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HealthEvent {
    pub minute: u64,
    /// "vm/disk".
    pub item: String,
    pub severity: Severity,
    pub message: String,
}

/// Whether a health event is a warning or the return to health.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Healthy,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Healthy => "healthy",
        })
    }
}

/// A vault job (ASR: enable protection, test failover, failover, commit, ...).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Job {
    pub name: String,
    pub vm: String,
    pub started_minute: u64,
    pub seconds: u64,
    pub succeeded: bool,
    pub detail: String,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// Simulated seconds the run covered.
    pub fn simulated_secs(&self) -> f64 {
        self.simulated_hours as f64 * 3600.0
    }

    /// Bytes the VMs' workloads wrote to all disks (what went through the pipeline).
    pub fn workload_bytes(&self) -> u64 {
        self.disks.iter().map(|d| d.bytes_written_by_workload).sum()
    }
}

/// A replicated item as the vault shows it: state, health, and the properties of its replica
/// (compute, network, disks).
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct ReplicatedItem {
    pub vm: String,
    /// The Hyper-V host it runs on.
    pub host: String,
    /// The VMM cloud, and the replication policy associated with it (or the scenario's).
    pub cloud: Option<String>,
    pub policy: String,
    /// "Protected", "Test failover in progress", "Failed over", "Failover committed".
    pub state: String,
    /// "Normal", or the disks' warnings.
    pub health: String,
    /// The Azure VM size and the NICs it allows.
    pub compute: String,
    /// Per source NIC: where it lands at failover, or why it does not.
    pub network: Vec<String>,
    pub use_managed_disks: bool,
    pub disks: Vec<ItemDisk>,
}

/// A disk of a replicated item.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct ItemDisk {
    pub name: String,
    /// `None` for an excluded disk (the vault does not track it).
    pub size_mib: Option<u64>,
    /// False for a disk excluded from replication.
    pub replicated: bool,
    pub points_live: usize,
}
