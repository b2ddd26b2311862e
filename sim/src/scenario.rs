//! Scenario files (TOML): the world to build (VMs, disks, workload), the replication policy,
//! the storage profile and network, and the faults to inject. Everything read from the file is
//! checked against limits, and a bad field is named with the rule it breaks.

use serde::Deserialize;

use crate::peak_hours::PeakHours;
use datapath::policy::{Policy, PolicySpec};
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

/// Busy hours from a table's `peak_hours` and `peak_share` (`at`: the table's place).
fn peak_hours(
    at: &str,
    hours: Option<&str>,
    share: Option<f64>,
) -> Result<Option<PeakHours>, ScenarioError> {
    PeakHours::from_keys(hours, share)
        .map_err(|e| invalid(format!("{at}.{}", e.field), e.value, e.rule))
}

fn invalid(
    field: impl Into<String>,
    value: impl ToString,
    rule: impl Into<String>,
) -> ScenarioError {
    ScenarioError::Invalid {
        field: field.into(),
        value: value.to_string(),
        rule: rule.into(),
    }
}

/// A number the scenario must give, inside `range`: the value, or the error naming `field`
/// ("missing" when absent).
fn given_in<T: PartialOrd + ToString + Copy>(
    field: String,
    value: Option<T>,
    range: std::ops::RangeInclusive<T>,
    rule: &str,
) -> Result<T, ScenarioError> {
    value.filter(|v| range.contains(v)).ok_or_else(|| {
        invalid(
            field,
            value.map_or("missing".into(), |v| v.to_string()),
            rule,
        )
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    seed: Option<u64>,
    duration_hours: u64,
    start_unix: Option<u64>,
    storage: Option<StorageFile>,
    network: Option<NetworkFile>,
    policy: Option<PolicySpec>,
    #[serde(default)]
    vm: Vec<VmFile>,
    #[serde(default)]
    fault: Vec<FaultFile>,
    #[serde(default)]
    step: Vec<StepFile>,
    #[serde(default)]
    vm_network: Vec<NetworkFile2>,
    #[serde(default)]
    vnet: Vec<NetworkFile2>,
    #[serde(default)]
    network_mapping: Vec<MappingFile>,
    registration: Option<RegistrationFile>,
    #[serde(default)]
    expect: Vec<ExpectFile>,
    workload: Option<WorkloadFile>,
    /// Named replication policies, associated with clouds.
    #[serde(default)]
    replication_policy: Vec<toml::Table>,
    #[serde(default)]
    logical_network: Vec<LogicalNetworkFile>,
    #[serde(default)]
    cloud: Vec<CloudFile>,
    /// Hyper-V hosts (default: one, "hyperv-host").
    #[serde(default)]
    host: Vec<HostFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostFile {
    name: String,
}

/// A VMM logical network and the VM networks defined on it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogicalNetworkFile {
    name: String,
    vm_networks: Vec<String>,
}

/// A VMM cloud: the logical networks its VMs may use, and the replication policy associated
/// with it (none: its VMs cannot be protected).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CloudFile {
    name: String,
    policy: Option<String>,
    #[serde(default)]
    logical_networks: Vec<String>,
}

/// An assertion about the run: a job's outcome.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectFile {
    job: String,
    vm: String,
    at_minutes: Option<u64>,
    succeeded: bool,
    detail_contains: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile2 {
    name: String,
    subnets: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    vm_network: String,
    vnet: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NicFile {
    network: String,
    subnet: String,
    target_ip: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    action: String,
    at_minutes: u64,
    /// The VM (or, for a recovery plan, `vms` in order).
    vm: Option<String>,
    vms: Option<Vec<String>>,
    point: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistrationFile {
    /// How long before the scenario starts the vault credentials were downloaded.
    issued_hours_before_start: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StorageFile {
    profile: Option<String>,
    /// The target storage account was ever encrypted with SSE (managed disks cannot be made).
    sse_encrypted_ever: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    bandwidth_mbps: Option<u64>,
    /// Finer than Mbit/s (the capacity planner's scaled runs); not with `bandwidth_mbps`.
    bandwidth_kbps: Option<u64>,
    /// What one upload connection gets across the WAN (its TCP window over the round trip):
    /// a disk's cycle sends at most `upload_threads` times this. None: no limit.
    connection_kbps: Option<u64>,
    /// The hosts' own upload throttle (the Recovery Services agent's work-hours setting), on
    /// top of the policy's; from 1 Kbps (the policy's floor of 512 does not apply), which is
    /// what the capacity planner's scaled-down runs need.
    throttle: Option<HostThrottleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostThrottleFile {
    work_hours_kbps: Option<u32>,
    non_work_hours_kbps: Option<u32>,
    #[serde(default = "default_work_start")]
    work_start_hour: u8,
    #[serde(default = "default_work_end")]
    work_end_hour: u8,
}

fn default_work_start() -> u8 {
    8
}

fn default_work_end() -> u8 {
    18
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmFile {
    name: String,
    size: Option<String>,
    /// "Use managed disks" for the replica.
    #[serde(default)]
    managed_disks: bool,
    /// The target availability set's kind: "managed" or "unmanaged" (must match).
    availability_set: Option<String>,
    /// The VMM cloud the VM belongs to: its replication policy is the cloud's.
    cloud: Option<String>,
    /// The Hyper-V host it runs on (default: the first).
    host: Option<String>,
    #[serde(default)]
    nic: Vec<NicFile>,
    #[serde(default)]
    disk: Vec<DiskFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskFile {
    name: String,
    size_mib: u64,
    #[serde(default)]
    churn_mib_per_hour: u64,
    /// Finer than MiB per hour, added to it.
    #[serde(default)]
    churn_kib_per_hour: u64,
    hot_spot: Option<f64>,
    #[serde(default)]
    exclude: bool,
    /// Data on the disk before replication starts (what initial replication sends).
    used_mib: Option<u64>,
    /// Busy hours of this disk's writes, "H1-H2" UTC (default: the workload's).
    peak_hours: Option<String>,
    /// Share of the day's writes in the busy hours (0 to 1, default 0.7).
    peak_share: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadFile {
    /// Written data is random (incompressible) rather than a compressible pattern.
    #[serde(default)]
    incompressible: bool,
    /// Busy hours of every disk's writes, "H1-H2" UTC (none: writes spread evenly).
    peak_hours: Option<String>,
    /// Share of the day's writes in the busy hours (0 to 1, default 0.7).
    peak_share: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultFile {
    kind: String,
    at_minutes: u64,
    minutes: Option<u64>,
    /// clock_skew: the host clock's offset from true time.
    seconds: Option<i64>,
    /// storage_storm: chance per call of 503 ServerBusy, and of 500 after a write applied.
    busy: Option<f64>,
    timeouts: Option<f64>,
    torn: Option<f64>,
    /// wan_degraded: the bandwidth meanwhile.
    bandwidth_mbps: Option<u64>,
    /// churn_burst: how many times the usual churn.
    factor: Option<u32>,
    /// host_crash, agent_restart: which host (default: every host).
    host: Option<String>,
    /// host_crash: strike during each of the host's disks' next cycle, part-way through its
    /// storage writes, rather than between cycles.
    mid_cycle: Option<bool>,
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

/// A fault's host: one of the scenario's, or none (every host).
fn fault_host(
    at: &str,
    host: Option<String>,
    hosts: &[String],
) -> Result<Option<String>, ScenarioError> {
    match host {
        Some(h) if !hosts.contains(&h) => {
            Err(invalid(format!("{at}.host"), &h, "a host of the scenario"))
        }
        other => Ok(other),
    }
}

/// A list no longer than `max`.
fn at_most(field: &str, len: usize, max: usize) -> Result<(), ScenarioError> {
    if len > max {
        return Err(invalid(field, len, format!("at most {max}")));
    }
    Ok(())
}

/// An event minute inside the scenario's duration.
fn inside_duration(at: &str, minute: u64, hours: u64) -> Result<(), ScenarioError> {
    if minute >= hours * 60 {
        return Err(invalid(
            format!("{at}.at_minutes"),
            minute,
            "inside the scenario's duration",
        ));
    }
    Ok(())
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let f: File = toml::from_str(text).map_err(|e| ScenarioError::Syntax(e.to_string()))?;
        if f.name.is_empty() || f.name.len() > 128 {
            return Err(invalid("name", &f.name, "1 to 128 characters"));
        }
        if !(1..=MAX_DURATION_HOURS).contains(&f.duration_hours) {
            return Err(invalid(
                "duration_hours",
                f.duration_hours,
                format!("1 to {MAX_DURATION_HOURS}"),
            ));
        }
        let sse_encrypted_ever = f
            .storage
            .as_ref()
            .and_then(|s| s.sse_encrypted_ever)
            .unwrap_or(false);
        let profile_name = f
            .storage
            .and_then(|s| s.profile)
            .unwrap_or_else(|| "standard".into());
        let profile = Profile::parse(&profile_name).ok_or_else(|| {
            invalid(
                "storage.profile",
                &profile_name,
                "standard, premium or premium-spaced",
            )
        })?;
        let kbps = match f
            .network
            .as_ref()
            .map(|n| (n.bandwidth_mbps, n.bandwidth_kbps))
        {
            Some((Some(_), Some(_))) => {
                return Err(invalid(
                    "network",
                    "bandwidth_mbps and bandwidth_kbps",
                    "one of them",
                ))
            }
            Some((Some(mbps), None)) => {
                if !(1..=100_000).contains(&mbps) {
                    return Err(invalid("network.bandwidth_mbps", mbps, "1 to 100000"));
                }
                mbps * 1000
            }
            Some((None, Some(kbps))) => {
                if !(1..=100_000_000).contains(&kbps) {
                    return Err(invalid("network.bandwidth_kbps", kbps, "1 to 100000000"));
                }
                kbps
            }
            _ => 100_000,
        };
        let connection_kbps = f.network.as_ref().and_then(|n| n.connection_kbps);
        if let Some(c) = connection_kbps.filter(|c| !(1..=100_000_000).contains(c)) {
            return Err(invalid("network.connection_kbps", c, "1 to 100000000"));
        }
        let host_throttle = match f.network.as_ref().and_then(|n| n.throttle.as_ref()) {
            None => None,
            Some(t) => {
                for (field, kbps) in [
                    ("work_hours_kbps", t.work_hours_kbps),
                    ("non_work_hours_kbps", t.non_work_hours_kbps),
                ] {
                    if let Some(k) = kbps.filter(|k| !(1..=100_000_000).contains(k)) {
                        return Err(invalid(
                            format!("network.throttle.{field}"),
                            k,
                            "1 to 100000000",
                        ));
                    }
                }
                if t.work_start_hour >= t.work_end_hour || t.work_end_hour > 24 {
                    return Err(invalid(
                        "network.throttle.work_start_hour",
                        format!("{}-{}", t.work_start_hour, t.work_end_hour),
                        "work_start_hour < work_end_hour <= 24",
                    ));
                }
                Some(datapath::policy::Throttle {
                    work_hours_kbps: t.work_hours_kbps,
                    non_work_hours_kbps: t.non_work_hours_kbps,
                    work_start_hour: t.work_start_hour,
                    work_end_hour: t.work_end_hour,
                })
            }
        };
        let policy = Policy::from_spec(&f.policy.unwrap_or_default(), profile)?;
        // Named policies, each validated against the target's profile (30 s on premium is
        // refused here, with the policy's name).
        let mut policies = std::collections::BTreeMap::new();
        at_most("replication_policy", f.replication_policy.len(), 64)?;
        for (i, mut table) in f.replication_policy.into_iter().enumerate() {
            let at = format!("replication_policy[{i}]");
            let name = match table.remove("name") {
                Some(toml::Value::String(n)) if !n.is_empty() && n.len() <= 64 => n,
                other => {
                    return Err(invalid(
                        format!("{at}.name"),
                        format!("{other:?}"),
                        "a name of 1 to 64 characters",
                    ))
                }
            };
            let spec: PolicySpec = toml::Value::Table(table)
                .try_into()
                .map_err(|e| ScenarioError::Syntax(format!("replication_policy {name}: {e}")))?;
            let p = Policy::from_spec(&spec, profile).map_err(|e| {
                invalid(
                    format!("replication_policy {name}"),
                    "(policy)",
                    e.to_string(),
                )
            })?;
            if policies.insert(name.clone(), p).is_some() {
                return Err(invalid(format!("{at}.name"), &name, "unique"));
            }
        }
        let vm_networks = f.vm_network;
        // VMM: logical networks carry VM networks; clouds offer logical networks and have a
        // policy associated.
        let mut logical = std::collections::BTreeMap::new();
        at_most("logical_network", f.logical_network.len(), 64)?;
        for (i, ln) in f.logical_network.into_iter().enumerate() {
            for v in &ln.vm_networks {
                if !vm_networks.iter().any(|n| &n.name == v) {
                    return Err(invalid(
                        format!("logical_network[{i}].vm_networks"),
                        v,
                        "a vm_network of the scenario",
                    ));
                }
            }
            logical.insert(ln.name, ln.vm_networks);
        }
        let mut clouds = std::collections::BTreeMap::new();
        at_most("cloud", f.cloud.len(), 64)?;
        for (i, c) in f.cloud.into_iter().enumerate() {
            if let Some(p) = c.policy.as_ref().filter(|p| !policies.contains_key(*p)) {
                return Err(invalid(
                    format!("cloud[{i}].policy"),
                    p,
                    "a replication_policy of the scenario",
                ));
            }
            let mut offered: Vec<String> = Vec::new();
            for ln in &c.logical_networks {
                let nets = logical.get(ln).ok_or_else(|| {
                    invalid(
                        format!("cloud[{i}].logical_networks"),
                        ln,
                        "a logical_network of the scenario",
                    )
                })?;
                offered.extend(nets.iter().cloned());
            }
            clouds.insert(c.name, (c.policy, offered));
        }
        for (i, n) in vm_networks.iter().chain(&f.vnet).enumerate() {
            if n.name.is_empty() || n.subnets.is_empty() || n.subnets.len() > 64 {
                return Err(invalid(
                    format!("network[{i}]"),
                    &n.name,
                    "a name and 1 to 64 subnets",
                ));
            }
        }
        let vnets: Vec<Vnet> = f
            .vnet
            .into_iter()
            .map(|v| Vnet {
                name: v.name,
                subnets: v.subnets,
            })
            .collect();
        let mut network_mapping = std::collections::BTreeMap::new();
        for (i, m) in f.network_mapping.into_iter().enumerate() {
            if !vm_networks.iter().any(|n| n.name == m.vm_network) {
                return Err(invalid(
                    format!("network_mapping[{i}].vm_network"),
                    &m.vm_network,
                    "a vm_network of the scenario",
                ));
            }
            if !vnets.iter().any(|n| n.name == m.vnet) {
                return Err(invalid(
                    format!("network_mapping[{i}].vnet"),
                    &m.vnet,
                    "a vnet of the scenario",
                ));
            }
            network_mapping.insert(m.vm_network, m.vnet);
        }
        at_most("host", f.host.len(), 64)?;
        let mut hosts: Vec<String> = Vec::new();
        for (i, h) in f.host.iter().enumerate() {
            if h.name.is_empty() || h.name.len() > 64 || hosts.contains(&h.name) {
                return Err(invalid(
                    format!("host[{i}].name"),
                    &h.name,
                    "unique, 1 to 64 characters",
                ));
            }
            hosts.push(h.name.clone());
        }
        if hosts.is_empty() {
            hosts.push("hyperv-host".into());
        }
        if f.vm.is_empty() || f.vm.len() > MAX_VMS {
            return Err(invalid("vm", f.vm.len(), format!("1 to {MAX_VMS} VMs")));
        }
        let workload_peak = match &f.workload {
            Some(w) => peak_hours("workload", w.peak_hours.as_deref(), w.peak_share)?,
            None => None,
        };
        let mut total = 0u64;
        let mut names = std::collections::BTreeSet::new();
        let mut vms = Vec::new();
        for (i, vm) in f.vm.into_iter().enumerate() {
            let at = format!("vm[{i}]");
            if !names.insert(vm.name.clone()) || vm.name.is_empty() || vm.name.len() > 64 {
                return Err(invalid(
                    format!("{at}.name"),
                    &vm.name,
                    "unique, 1 to 64 characters",
                ));
            }
            if vm.disk.is_empty() || vm.disk.len() > MAX_DISKS_PER_VM {
                return Err(invalid(
                    format!("{at}.disk"),
                    vm.disk.len(),
                    format!("1 to {MAX_DISKS_PER_VM} disks"),
                ));
            }
            let size = vm.size.unwrap_or_else(|| "Standard_D2s_v3".into());
            let max_nics = VM_SIZES
                .iter()
                .find(|(n, _)| *n == size)
                .map(|(_, nics)| *nics)
                .ok_or_else(|| {
                    let known: Vec<&str> = VM_SIZES.iter().map(|(n, _)| *n).collect();
                    invalid(
                        format!("{at}.size"),
                        &size,
                        format!("one of {}", known.join(", ")),
                    )
                })?;
            if vm.nic.len() > 8 {
                return Err(invalid(format!("{at}.nic"), vm.nic.len(), "at most 8 NICs"));
            }
            let mut nics = Vec::new();
            for (k, n) in vm.nic.into_iter().enumerate() {
                let known = vm_networks
                    .iter()
                    .find(|v: &&NetworkFile2| v.name == n.network)
                    .ok_or_else(|| {
                        invalid(
                            format!("{at}.nic[{k}].network"),
                            &n.network,
                            "a vm_network of the scenario",
                        )
                    })?;
                if !known.subnets.contains(&n.subnet) {
                    return Err(invalid(
                        format!("{at}.nic[{k}].subnet"),
                        &n.subnet,
                        format!("a subnet of VM network {}", n.network),
                    ));
                }
                if let Some(ip) = &n.target_ip {
                    if ip.parse::<std::net::Ipv4Addr>().is_err() {
                        return Err(invalid(
                            format!("{at}.nic[{k}].target_ip"),
                            ip,
                            "an IPv4 address",
                        ));
                    }
                }
                nics.push(Nic {
                    network: n.network,
                    subnet: n.subnet,
                    target_ip: n.target_ip,
                });
            }
            let mut disks = Vec::new();
            let mut excluded = Vec::new();
            let mut disk_names = std::collections::BTreeSet::new();
            for (j, d) in vm.disk.into_iter().enumerate() {
                let at = format!("{at}.disk[{j}]");
                if d.exclude {
                    if j == 0 {
                        return Err(invalid(
                            format!("{at}.exclude"),
                            true,
                            "the OS disk (the VM's first disk) can never be excluded",
                        ));
                    }
                    if !disk_names.insert(d.name.clone()) {
                        return Err(invalid(format!("{at}.name"), &d.name, "unique in the VM"));
                    }
                    excluded.push(d.name);
                    continue;
                }
                if !disk_names.insert(d.name.clone()) || d.name.is_empty() || d.name.len() > 64 {
                    return Err(invalid(
                        format!("{at}.name"),
                        &d.name,
                        "unique in the VM, 1 to 64 characters",
                    ));
                }
                if !(1..=MAX_DISK_MIB).contains(&d.size_mib) {
                    return Err(invalid(
                        format!("{at}.size_mib"),
                        d.size_mib,
                        format!("1 to {MAX_DISK_MIB}"),
                    ));
                }
                total += d.size_mib;
                let churn_bytes_per_hour = (d.churn_mib_per_hour << 20)
                    .saturating_add(d.churn_kib_per_hour.saturating_mul(1024));
                if churn_bytes_per_hour > 100 * (d.size_mib << 20) {
                    return Err(invalid(
                        format!("{at}.churn_mib_per_hour"),
                        d.churn_mib_per_hour,
                        "at most 100 times the disk size per hour",
                    ));
                }
                let hot = d.hot_spot.unwrap_or(0.0);
                if !(0.0..=1.0).contains(&hot) {
                    return Err(invalid(format!("{at}.hot_spot"), hot, "0 to 1"));
                }
                let used_mib = d.used_mib.unwrap_or(0);
                if used_mib > d.size_mib {
                    return Err(invalid(
                        format!("{at}.used_mib"),
                        used_mib,
                        format!("at most the disk's {} MiB", d.size_mib),
                    ));
                }
                let peak = if d.peak_hours.is_some() || d.peak_share.is_some() {
                    peak_hours(&at, d.peak_hours.as_deref(), d.peak_share)?
                } else {
                    workload_peak
                };
                disks.push(DiskSpec {
                    name: d.name,
                    size_bytes: d.size_mib << 20,
                    used_bytes: used_mib << 20,
                    churn_bytes_per_hour,
                    hot_spot: hot,
                    peak,
                });
            }
            if let Some(set) = &vm.availability_set {
                let managed_set = match set.as_str() {
                    "managed" => true,
                    "unmanaged" => false,
                    other => {
                        return Err(invalid(
                            format!("{at}.availability_set"),
                            other,
                            "managed or unmanaged",
                        ))
                    }
                };
                if managed_set != vm.managed_disks {
                    return Err(invalid(
                        format!("{at}.availability_set"),
                        set,
                        format!(
                            "must match \"use managed disks\" ({})",
                            if vm.managed_disks {
                                "yes: a managed availability set"
                            } else {
                                "no: an unmanaged availability set"
                            }
                        ),
                    ));
                }
            }
            let (cloud, policy_name, vm_policy) = match &vm.cloud {
                None => (None, "default".to_string(), policy.clone()),
                Some(c) => {
                    let (assoc, offered) = clouds.get(c).ok_or_else(|| {
                        invalid(format!("{at}.cloud"), c, "a cloud of the scenario")
                    })?;
                    let name = assoc.clone().ok_or_else(|| {
                        invalid(
                            format!("{at}.cloud"),
                            c,
                            "a cloud with a replication policy associated (it has no replication policy: its VMs cannot be protected)",
                        )
                    })?;
                    for nic in &nics {
                        if !offered.contains(&nic.network) {
                            return Err(invalid(
                                format!("{at}.nic"),
                                &nic.network,
                                format!("a VM network on one of cloud {c}'s logical networks"),
                            ));
                        }
                    }
                    let p = policies.get(&name).expect("checked above").clone();
                    (Some(c.clone()), name, p)
                }
            };
            let host = match &vm.host {
                None => hosts[0].clone(),
                Some(h) if hosts.contains(h) => h.clone(),
                Some(h) => return Err(invalid(format!("{at}.host"), h, "a host of the scenario")),
            };
            vms.push(VmSpec {
                name: vm.name,
                host,
                cloud,
                policy_name,
                policy: vm_policy,
                managed_disks: vm.managed_disks,
                size,
                max_nics,
                nics,
                disks,
                excluded,
            });
        }
        if total > MAX_TOTAL_DISK_MIB {
            return Err(invalid(
                "vm[*].disk[*].size_mib",
                total,
                format!("at most {MAX_TOTAL_DISK_MIB} MiB in all"),
            ));
        }
        at_most("fault", f.fault.len(), MAX_FAULTS)?;
        let mut faults = Vec::new();
        for (i, fault) in f.fault.into_iter().enumerate() {
            let at = format!("fault[{i}]");
            inside_duration(&at, fault.at_minutes, f.duration_hours)?;
            // Faults that last take their length in minutes.
            let minutes = || {
                given_in(
                    format!("{at}.minutes"),
                    fault.minutes,
                    1..=MAX_DURATION_HOURS * 60,
                    "1 minute to the scenario's maximum",
                )
            };
            let kind = match fault.kind.as_str() {
                "wan_down" => FaultKind::WanDown {
                    minutes: minutes()?,
                },
                "churn_burst" => {
                    let minutes = minutes()?;
                    let factor = given_in(
                        format!("{at}.factor"),
                        fault.factor,
                        2..=100,
                        "2 to 100 (times the usual churn)",
                    )?;
                    FaultKind::ChurnBurst { minutes, factor }
                }
                "snapshot_pressure" => FaultKind::SnapshotPressure {
                    minutes: minutes()?,
                },
                "wan_degraded" => {
                    let minutes = minutes()?;
                    let mbps = given_in(
                        format!("{at}.bandwidth_mbps"),
                        fault.bandwidth_mbps,
                        1..=100_000,
                        "1 to 100000 (Mbit/s)",
                    )?;
                    FaultKind::WanDegraded { minutes, mbps }
                }
                "host_crash" => FaultKind::HostCrash {
                    host: fault_host(&at, fault.host.clone(), &hosts)?,
                    mid_cycle: fault.mid_cycle.unwrap_or(false),
                },
                "wrong_certificate" => FaultKind::WrongCertificate,
                "agent_restart" => FaultKind::AgentRestart {
                    host: fault_host(&at, fault.host.clone(), &hosts)?,
                },
                "clock_skew" => {
                    let seconds = fault.seconds.ok_or_else(|| {
                        invalid(
                            format!("{at}.seconds"),
                            "missing",
                            "clock_skew needs seconds",
                        )
                    })?;
                    if seconds.unsigned_abs() > 7 * 24 * 3600 {
                        return Err(invalid(
                            format!("{at}.seconds"),
                            seconds,
                            "at most a week either way",
                        ));
                    }
                    FaultKind::ClockSkew { seconds }
                }
                "storage_storm" => {
                    let minutes = minutes()?;
                    let rate = |field: &str, v: Option<f64>, default: f64| {
                        let v = v.unwrap_or(default);
                        if (0.0..=0.5).contains(&v) {
                            Ok(v)
                        } else {
                            Err(invalid(format!("{at}.{field}"), v, "0 to 0.5"))
                        }
                    };
                    FaultKind::StorageStorm {
                        minutes,
                        busy: rate("busy", fault.busy, 0.05)?,
                        timeouts: rate("timeouts", fault.timeouts, 0.02)?,
                        torn: rate("torn", fault.torn, 0.0)?,
                    }
                }
                other => {
                    return Err(invalid(
                        format!("{at}.kind"),
                        other,
                        "wan_down, wan_degraded, host_crash, agent_restart, storage_storm, snapshot_pressure, churn_burst, wrong_certificate or clock_skew",
                    ))
                }
            };
            faults.push(Fault {
                at_minutes: fault.at_minutes,
                kind,
            });
        }
        faults.sort_by_key(|f| f.at_minutes);
        at_most("step", f.step.len(), MAX_FAULTS)?;
        let mut steps = Vec::new();
        for (i, st) in f.step.into_iter().enumerate() {
            let at = format!("step[{i}]");
            inside_duration(&at, st.at_minutes, f.duration_hours)?;
            let point = match st.point.as_deref() {
                // ASR's "latest" processes data the service has received first; "latest
                // processed" takes the newest point already processed. The emulated service
                // processes a cycle's data as it commits, so both are the newest point.
                None | Some("latest") | Some("latest-processed") => PointChoice::Latest,
                Some("latest-app") => PointChoice::LatestAppConsistent,
                Some(n) => PointChoice::Sequence(n.parse().map_err(|_| {
                    invalid(
                        format!("{at}.point"),
                        n,
                        "latest, latest-processed, latest-app or a point number",
                    )
                })?),
            };
            // A recovery plan fails its VMs over in order, one step each at the same minute.
            let (vms_of_step, action) = match st.action.as_str() {
                "recovery_plan_failover" => (
                    st.vms.clone().unwrap_or_default(),
                    Action::UnplannedFailover(point),
                ),
                other => {
                    let action = match other {
                        "test_failover" => Action::TestFailover(point),
                        "cleanup_test_failover" => Action::CleanupTestFailover,
                        "planned_failover" => Action::PlannedFailover,
                        "unplanned_failover" => Action::UnplannedFailover(point),
                        "commit" => Action::Commit,
                        "failback" => Action::Failback,
                        "add_disk" => Action::AddDisk,
                        "use_managed_disks_no" => Action::UseManagedDisks(false),
                        "use_managed_disks_yes" => Action::UseManagedDisks(true),
                        other => {
                            return Err(invalid(
                                format!("{at}.action"),
                                other,
                                "test_failover, cleanup_test_failover, planned_failover, unplanned_failover, recovery_plan_failover, commit, failback, add_disk, use_managed_disks_no or use_managed_disks_yes",
                            ))
                        }
                    };
                    (st.vm.clone().into_iter().collect(), action)
                }
            };
            if vms_of_step.is_empty() {
                return Err(invalid(
                    format!("{at}.vm"),
                    "missing",
                    "a VM (or `vms` for a recovery plan)",
                ));
            }
            for vm in vms_of_step {
                if !names.contains(&vm) {
                    return Err(invalid(format!("{at}.vm"), &vm, "a VM of the scenario"));
                }
                steps.push(Step {
                    at_minutes: st.at_minutes,
                    vm,
                    action,
                });
            }
        }
        steps.sort_by_key(|s| s.at_minutes);
        let start_nanos = f
            .start_unix
            .unwrap_or(1_795_651_200)
            .saturating_mul(1_000_000_000);
        at_most("expect", f.expect.len(), MAX_FAULTS)?;
        let mut expectations = Vec::new();
        for (i, e) in f.expect.into_iter().enumerate() {
            let at = format!("expect[{i}]");
            if !JOB_NAMES.contains(&e.job.as_str()) {
                return Err(invalid(format!("{at}.job"), &e.job, JOB_NAMES.join(", ")));
            }
            if e.job != "register" && !names.contains(&e.vm) {
                return Err(invalid(format!("{at}.vm"), &e.vm, "a VM of the scenario"));
            }
            if e.detail_contains.as_ref().is_some_and(|d| d.len() > 256) {
                return Err(invalid(
                    format!("{at}.detail_contains"),
                    "(long)",
                    "at most 256 characters",
                ));
            }
            expectations.push(Expectation {
                job: e.job,
                vm: e.vm,
                at_minutes: e.at_minutes,
                succeeded: e.succeeded,
                detail_contains: e.detail_contains,
            });
        }
        Ok(Scenario {
            name: f.name,
            seed: f.seed.unwrap_or(1),
            duration_hours: f.duration_hours,
            start_nanos: f
                .start_unix
                .unwrap_or(1_795_651_200)
                .saturating_mul(1_000_000_000),
            profile,
            bandwidth_bytes_per_sec: (kbps * 1000 / 8).max(1),
            connection_bytes_per_sec: connection_kbps.map(|c| (c * 1000 / 8).max(1)),
            host_throttle,
            policy,
            vms,
            faults,
            steps,
            vnets,
            sse_encrypted_ever,
            credentials_issued_nanos: start_nanos.saturating_sub(
                f.registration
                    .map_or(0, |r| r.issued_hours_before_start.min(10_000))
                    .saturating_mul(3_600_000_000_000),
            ),
            network_mapping,
            expectations,
            hosts,
            incompressible: f.workload.is_some_and(|w| w.incompressible),
            hash: blake3::hash(text.as_bytes()).to_hex().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICKSTART: &str = include_str!("../../scenarios/quickstart.toml");

    #[test]
    fn the_quickstart_parses() {
        let s = Scenario::parse(QUICKSTART).unwrap();
        assert_eq!(s.vms.len(), 2);
        assert_eq!(s.faults.len(), 4);
        assert_eq!(s.steps.len(), 8);
        assert_eq!(s.policy.copy_frequency_secs, 300);
    }

    #[test]
    fn hostile_or_wrong_scenarios_are_refused_naming_the_field() {
        for (text, needle) in [
            ("name = \"x\"\nduration_hours = 0", "duration_hours"),
            ("name = \"x\"\nduration_hours = 1", "vm"),
            (
                "name = \"x\"\nduration_hours = 1\n[[vm]]\nname = \"a\"\n[[vm.disk]]\nname = \"d\"\nsize_mib = 999999\nchurn_mib_per_hour = 1",
                "vm[0].disk[0].size_mib",
            ),
            (
                "name = \"x\"\nduration_hours = 1\n[storage]\nprofile = \"premium\"\n[policy]\ncopy_frequency_secs = 30\n[[vm]]\nname = \"a\"\n[[vm.disk]]\nname = \"d\"\nsize_mib = 8\nchurn_mib_per_hour = 1",
                "premium allows 100",
            ),
            (
                "name = \"x\"\nduration_hours = 1\n[[vm]]\nname = \"a\"\n[[vm.disk]]\nname = \"d\"\nsize_mib = 8\nchurn_mib_per_hour = 1\n[[fault]]\nkind = \"meteor\"\nat_minutes = 1",
                "fault[0].kind",
            ),
            (
                "name = \"x\"\nduration_hours = 1\n[network]\nconnection_kbps = 0\n[[vm]]\nname = \"a\"\n[[vm.disk]]\nname = \"d\"\nsize_mib = 8\nchurn_mib_per_hour = 1",
                "network.connection_kbps",
            ),
            (
                "name = \"x\"\nduration_hours = 1\n[workload]\npeak_hours = \"17-9\"\n[[vm]]\nname = \"a\"\n[[vm.disk]]\nname = \"d\"\nsize_mib = 8",
                "workload.peak_hours",
            ),
            (
                "name = \"x\"\nduration_hours = 1\n[[vm]]\nname = \"a\"\n[[vm.disk]]\nname = \"d\"\nsize_mib = 8\npeak_hours = \"9-17\"\npeak_share = 2.0",
                "vm[0].disk[0].peak_share",
            ),
            (
                "name = \"x\"\nduration_hours = 1\n[[vm]]\nname = \"a\"\n[[vm.disk]]\nname = \"d\"\nsize_mib = 8\npeak_share = 0.5",
                "needs peak_hours",
            ),
            (
                "name = \"x\"\nduration_hours = 1\n[network.throttle]\nwork_hours_kbps = 0\n[[vm]]\nname = \"a\"\n[[vm.disk]]\nname = \"d\"\nsize_mib = 8",
                "network.throttle.work_hours_kbps",
            ),
            (
                "name = \"x\"\nduration_hours = 1\n[network.throttle]\nwork_hours_kbps = 5\nwork_start_hour = 18\nwork_end_hour = 8\n[[vm]]\nname = \"a\"\n[[vm.disk]]\nname = \"d\"\nsize_mib = 8",
                "network.throttle.work_start_hour",
            ),
            ("name = \"x\"\nbogus = 1", "unknown field"),
        ] {
            let err = Scenario::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn a_disk_takes_its_own_busy_hours_or_else_the_workload_s() {
        let text = "name = \"x\"\nduration_hours = 1\n[workload]\npeak_hours = \"9-17\"\n[[vm]]\nname = \"a\"\n[[vm.disk]]\nname = \"os\"\nsize_mib = 8\n[[vm.disk]]\nname = \"db\"\nsize_mib = 8\npeak_hours = \"20-24\"\npeak_share = 0.5";
        let s = Scenario::parse(text).unwrap();
        let peaks: Vec<_> = s.vms[0].disks.iter().map(|d| d.peak).collect();
        assert_eq!(
            peaks,
            [
                Some(PeakHours {
                    start: 9,
                    end: 17,
                    share: crate::peak_hours::DEFAULT_SHARE
                }),
                Some(PeakHours {
                    start: 20,
                    end: 24,
                    share: 0.5
                }),
            ]
        );
    }
}
