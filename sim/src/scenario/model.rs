//! A validated scenario ([`Scenario`]) and its parts, with the limits every scenario is held
//! to (a hostile file must not exhaust the machine) and [`ScenarioError`], which names the
//! field that broke a rule.

use crate::peak_hours::PeakHours;
use datapath::policy::Policy;
use pageblob::Profile;

/// Limits on what a scenario may ask for (a hostile file must not exhaust the machine).
pub const MAX_VMS: usize = 64;
pub const MAX_DISKS_PER_VM: usize = 16;
pub const MAX_DISK_MIB: u64 = 4096;
/// Disks are sparse in memory (a VHDX holds what was written), so this bounds metadata, not RAM.
pub const MAX_TOTAL_DISK_MIB: u64 = 64 * 1024;
pub const MAX_DURATION_HOURS: u64 = 7 * 24;
pub const MAX_FAULTS: usize = 1000;

/// Why a scenario was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("scenario TOML: {0}")]
    Syntax(String),
    #[error("scenario: {field} = {value}: {rule}")]
    Invalid {
        field: String,
        value: String,
        rule: String,
    },
    #[error("scenario policy: {0}")]
    Policy(#[from] datapath::policy::PolicyError),
}

/// A disk of a VM and its workload.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskSpec {
    pub name: String,
    pub size_bytes: u64,
    /// Bytes written before replication starts (from offset 0).
    pub used_bytes: u64,
    pub churn_bytes_per_hour: u64,
    /// Share of writes that land in the hottest 10% of the disk.
    pub hot_spot: f64,
    /// Busy hours: the churn of each hour follows them (none: even).
    pub peak: Option<PeakHours>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VmSpec {
    pub name: String,
    /// Azure VM size of the replica, and how many NICs it may have.
    pub size: String,
    pub max_nics: usize,
    pub nics: Vec<Nic>,
    /// Replicated disks; the first is the OS disk.
    pub disks: Vec<DiskSpec>,
    /// Disks excluded from replication (never the OS disk).
    pub excluded: Vec<String>,
    /// "Use managed disks": created only at failover.
    pub managed_disks: bool,
    /// The VMM cloud (none: a host outside any cloud, on the scenario's `[policy]`).
    pub cloud: Option<String>,
    /// The policy replicating this VM: its cloud's, or the scenario's.
    pub policy_name: String,
    /// The Hyper-V host the VM runs on.
    pub host: String,
    pub policy: Policy,
}

/// A NIC of a VM on a VMM VM network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub network: String,
    pub subnet: String,
    pub target_ip: Option<String>,
}

/// An Azure VNet and its subnets, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vnet {
    pub name: String,
    pub subnets: Vec<String>,
}

/// Azure VM sizes the simulator knows, with their NIC limits.
pub const VM_SIZES: [(&str, usize); 6] = [
    ("Standard_A1_v2", 2),
    ("Standard_D2s_v3", 2),
    ("Standard_D4s_v3", 2),
    ("Standard_D8s_v3", 4),
    ("Standard_D16s_v3", 8),
    ("Standard_F2s_v2", 2),
];

/// A fault and when it strikes.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// The WAN to Azure is down for a while: uploads fail.
    WanDown { minutes: u64 },
    /// Every disk writes `factor` times its churn for `minutes` (a batch job, a backup).
    ChurnBurst { minutes: u64, factor: u32 },
    /// The storage account refuses every delete for `minutes`: retention cannot free
    /// snapshots, which pile up against the profile's limit.
    SnapshotPressure { minutes: u64 },
    /// The WAN runs at `mbps` (instead of the scenario's bandwidth) for `minutes`.
    WanDegraded { minutes: u64, mbps: u64 },
    /// The Hyper-V host crashes and restarts: agents stop without a clean shutdown.
    /// `host`: one host; `None`: every host. `mid_cycle`: during each disk's next cycle.
    HostCrash {
        host: Option<String>,
        mid_cycle: bool,
    },
    /// The storage account answers 503 ServerBusy and 500 OperationTimedOut (after applying a
    /// write) at these rates for a while.
    StorageStorm {
        minutes: u64,
        busy: f64,
        timeouts: f64,
        /// Chance per multi-page Put Page of a torn write (a prefix applied, then 500).
        torn: f64,
    },
    /// The next failover is attempted with another certificate: it must be refused.
    WrongCertificate,
    /// The host's clock jumps to this offset from true time (seconds, either way).
    ClockSkew { seconds: i64 },
    /// The agent service restarts cleanly (tracking goes on: no resync).
    AgentRestart { host: Option<String> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub at_minutes: u64,
    pub kind: FaultKind,
}

/// Which recovery point a failover uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointChoice {
    Latest,
    LatestAppConsistent,
    Sequence(u64),
}

/// A DR operation on a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Bring up a copy from a point in an isolated network; replication goes on.
    TestFailover(PointChoice),
    /// Remove the test failover's copy.
    CleanupTestFailover,
    /// Shut the VM down, replicate the last changes, fail over to them (no data loss).
    PlannedFailover,
    /// The site is lost: fail over to a chosen point.
    UnplannedFailover(PointChoice),
    /// Make the failover final.
    Commit,
    /// Add a disk to a protected VM: refused (disable and re-enable replication instead).
    AddDisk,
    /// Change the VM's "use managed disks" setting.
    UseManagedDisks(bool),
    /// Bring the VM home: only blocks that differ are copied back; protection resumes.
    Failback,
}

/// A scenario's assertion: the vault job `job` of `vm` (at `at_minutes`, or any) ends as
/// `succeeded`, with `detail_contains` in its detail when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    pub job: String,
    pub vm: String,
    pub at_minutes: Option<u64>,
    pub succeeded: bool,
    pub detail_contains: Option<String>,
}

/// Job names a scenario may expect.
pub const JOB_NAMES: &[&str] = &[
    "register",
    "test failover",
    "cleanup test failover",
    "planned failover",
    "unplanned failover",
    "commit",
    "failback",
    "add disk",
    "update replicated item",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub at_minutes: u64,
    pub vm: String,
    pub action: Action,
}

/// A validated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    pub duration_hours: u64,
    pub start_nanos: u64,
    pub profile: Profile,
    pub bandwidth_bytes_per_sec: u64,
    /// What one upload connection carries (`[network] connection_kbps`); a cycle's records
    /// go over the policy's `upload_threads` connections.
    pub connection_bytes_per_sec: Option<u64>,
    /// The hosts' own upload throttle (`[network.throttle]`), on top of the policy's.
    pub host_throttle: Option<datapath::policy::Throttle>,
    pub policy: Policy,
    pub vms: Vec<VmSpec>,
    pub faults: Vec<Fault>,
    pub steps: Vec<Step>,
    pub vnets: Vec<Vnet>,
    /// The storage account was ever SSE-encrypted: managed disks cannot be created from it.
    pub sse_encrypted_ever: bool,
    /// When the provider's vault credentials were issued (they expire five days later).
    pub credentials_issued_nanos: u64,
    /// VMM VM network → Azure VNet.
    pub network_mapping: std::collections::BTreeMap<String, String>,
    /// Assertions checked after the run.
    pub expectations: Vec<Expectation>,
    /// The Hyper-V hosts, in order.
    pub hosts: Vec<String>,
    /// Written data is random (incompressible).
    pub incompressible: bool,
    /// BLAKE3 of the file's bytes.
    pub hash: String,
}

impl Scenario {
    /// A bound on the memory a run of this scenario holds (everything is in memory): per disk,
    /// the VM's VHDX, its replica and a failed-over copy (each up to what the workload can
    /// touch), plus the blocks the retained points keep; and a fixed allowance for the rest.
    pub fn memory_needed_bytes(&self) -> u64 {
        const FIXED: u64 = 256 << 20;
        let disks: u64 = self
            .vms
            .iter()
            .flat_map(|vm| vm.disks.iter().map(move |d| (vm, d)))
            .map(|(vm, d)| {
                let written = d.churn_bytes_per_hour.saturating_mul(self.duration_hours);
                let touched = d.used_bytes.saturating_add(written).min(d.size_bytes);
                let retained_hours = u64::from(vm.policy.retention_hours).min(self.duration_hours);
                let retained = d
                    .churn_bytes_per_hour
                    .saturating_mul(retained_hours)
                    .min(d.size_bytes.saturating_mul(4));
                touched.saturating_mul(3).saturating_add(retained)
            })
            .fold(0u64, u64::saturating_add);
        disks.saturating_add(FIXED)
    }
}
