//! A scenario file's structure as values ([`ScenarioFile`] and its tables), before any check:
//! what `toml` reads from a file, and what a program (the capacity planner) builds directly.
//! `Scenario::from_file` validates one; every field is named in the error when it breaks a rule.

use datapath::policy::PolicySpec;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub name: String,
    pub seed: Option<u64>,
    pub duration_hours: u64,
    pub start_unix: Option<u64>,
    pub storage: Option<StorageFile>,
    pub network: Option<NetworkFile>,
    pub policy: Option<PolicySpec>,
    #[serde(default)]
    pub vm: Vec<VmFile>,
    #[serde(default)]
    pub fault: Vec<FaultFile>,
    #[serde(default)]
    pub step: Vec<StepFile>,
    #[serde(default)]
    pub vm_network: Vec<VmNetworkFile>,
    #[serde(default)]
    pub vnet: Vec<VmNetworkFile>,
    #[serde(default)]
    pub network_mapping: Vec<MappingFile>,
    pub registration: Option<RegistrationFile>,
    #[serde(default)]
    pub expect: Vec<ExpectFile>,
    pub workload: Option<WorkloadFile>,
    /// Named replication policies, associated with clouds.
    #[serde(default)]
    pub replication_policy: Vec<toml::Table>,
    #[serde(default)]
    pub logical_network: Vec<LogicalNetworkFile>,
    #[serde(default)]
    pub cloud: Vec<CloudFile>,
    /// Hyper-V hosts (default: one, "hyperv-host").
    #[serde(default)]
    pub host: Vec<HostFile>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFile {
    pub name: String,
}

/// A VMM logical network and the VM networks defined on it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogicalNetworkFile {
    pub name: String,
    pub vm_networks: Vec<String>,
}

/// A VMM cloud: the logical networks its VMs may use, and the replication policy associated
/// with it (none: its VMs cannot be protected).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudFile {
    pub name: String,
    pub policy: Option<String>,
    #[serde(default)]
    pub logical_networks: Vec<String>,
}

/// An assertion about the run: a job's outcome.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectFile {
    pub job: String,
    pub vm: String,
    pub at_minutes: Option<u64>,
    pub succeeded: bool,
    pub detail_contains: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmNetworkFile {
    pub name: String,
    pub subnets: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingFile {
    pub vm_network: String,
    pub vnet: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicFile {
    pub network: String,
    pub subnet: String,
    pub target_ip: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepFile {
    pub action: String,
    pub at_minutes: u64,
    /// The VM (or, for a recovery plan, `vms` in order).
    pub vm: Option<String>,
    pub vms: Option<Vec<String>>,
    pub point: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationFile {
    /// How long before the scenario starts the vault credentials were downloaded.
    pub issued_hours_before_start: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageFile {
    pub profile: Option<String>,
    /// The target storage account was ever encrypted with SSE (managed disks cannot be made).
    pub sse_encrypted_ever: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkFile {
    pub bandwidth_mbps: Option<u64>,
    /// Finer than Mbit/s (the capacity planner's scaled runs); not with `bandwidth_mbps`.
    pub bandwidth_kbps: Option<u64>,
    /// What one upload connection gets across the WAN (its TCP window over the round trip):
    /// a disk's cycle sends at most `upload_threads` times this. None: no limit.
    pub connection_kbps: Option<u64>,
    /// The hosts' own upload throttle (the Recovery Services agent's work-hours setting), on
    /// top of the policy's; from 1 Kbps (the policy's floor of 512 does not apply), which is
    /// what the capacity planner's scaled-down runs need.
    pub throttle: Option<HostThrottleFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostThrottleFile {
    pub work_hours_kbps: Option<u32>,
    pub non_work_hours_kbps: Option<u32>,
    #[serde(default = "default_work_start")]
    pub work_start_hour: u8,
    #[serde(default = "default_work_end")]
    pub work_end_hour: u8,
}

fn default_work_start() -> u8 {
    8
}

fn default_work_end() -> u8 {
    18
}

impl Default for HostThrottleFile {
    fn default() -> HostThrottleFile {
        HostThrottleFile {
            work_hours_kbps: None,
            non_work_hours_kbps: None,
            work_start_hour: default_work_start(),
            work_end_hour: default_work_end(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmFile {
    pub name: String,
    pub size: Option<String>,
    /// "Use managed disks" for the replica.
    #[serde(default)]
    pub managed_disks: bool,
    /// The target availability set's kind: "managed" or "unmanaged" (must match).
    pub availability_set: Option<String>,
    /// The VMM cloud the VM belongs to: its replication policy is the cloud's.
    pub cloud: Option<String>,
    /// The Hyper-V host it runs on (default: the first).
    pub host: Option<String>,
    #[serde(default)]
    pub nic: Vec<NicFile>,
    #[serde(default)]
    pub disk: Vec<DiskFile>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskFile {
    pub name: String,
    pub size_mib: u64,
    #[serde(default)]
    pub churn_mib_per_hour: u64,
    /// Finer than MiB per hour, added to it.
    #[serde(default)]
    pub churn_kib_per_hour: u64,
    pub hot_spot: Option<f64>,
    #[serde(default)]
    pub exclude: bool,
    /// Data on the disk before replication starts (what initial replication sends).
    pub used_mib: Option<u64>,
    /// Busy hours of this disk's writes, "H1-H2" UTC (default: the workload's).
    pub peak_hours: Option<String>,
    /// Share of the day's writes in the busy hours (0 to 1, default 0.7).
    pub peak_share: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadFile {
    /// Written data is random (incompressible) rather than a compressible pattern.
    #[serde(default)]
    pub incompressible: bool,
    /// Busy hours of every disk's writes, "H1-H2" UTC (none: writes spread evenly).
    pub peak_hours: Option<String>,
    /// Share of the day's writes in the busy hours (0 to 1, default 0.7).
    pub peak_share: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultFile {
    pub kind: String,
    pub at_minutes: u64,
    pub minutes: Option<u64>,
    /// clock_skew: the host clock's offset from true time.
    pub seconds: Option<i64>,
    /// storage_storm: chance per call of 503 ServerBusy, and of 500 after a write applied.
    pub busy: Option<f64>,
    pub timeouts: Option<f64>,
    pub torn: Option<f64>,
    /// wan_degraded: the bandwidth meanwhile.
    pub bandwidth_mbps: Option<u64>,
    /// churn_burst: how many times the usual churn.
    pub factor: Option<u32>,
    /// host_crash, agent_restart: which host (default: every host).
    pub host: Option<String>,
    /// host_crash: strike during each of the host's disks' next cycle, part-way through its
    /// storage writes, rather than between cycles.
    pub mid_cycle: Option<bool>,
}
