//! Validation: a [`ScenarioFile`] becomes a [`Scenario`] section by section, each section's
//! validator checking its fields against the limits and naming the first one that breaks a rule
//! (`vm[2].disk[0].size_mib = 999999: 1 to 4096`). [`Scenario::parse`] reads TOML text first.

use std::collections::{BTreeMap, BTreeSet};

use datapath::policy::{Policy, PolicySpec, Throttle};
use pageblob::Profile;

use super::file::{
    CloudFile, DiskFile, ExpectFile, FaultFile, HostFile, LogicalNetworkFile, MappingFile,
    NetworkFile, NicFile, ScenarioFile, StepFile, StorageFile, VmFile, VmNetworkFile,
};
use super::model::{
    Action, DiskSpec, Expectation, Fault, FaultKind, Nic, PointChoice, Scenario, ScenarioError,
    Step, VmSpec, Vnet, JOB_NAMES, MAX_DISKS_PER_VM, MAX_DISK_MIB, MAX_DURATION_HOURS, MAX_FAULTS,
    MAX_TOTAL_DISK_MIB, MAX_VMS, VM_SIZES,
};
use crate::peak_hours::PeakHours;

/// When a scenario starts unless it says (midnight UTC).
const DEFAULT_START_UNIX: u64 = 1_795_651_200;
/// Earliest `start_unix` (2000-01-01).
const MIN_START_UNIX: u64 = 946_684_800;
/// Latest `start_unix` (2100-01-01).
const MAX_START_UNIX: u64 = 4_102_444_800;

impl Scenario {
    /// Read a scenario file's TOML text and validate it; its hash is the text's.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let file: ScenarioFile =
            toml::from_str(text).map_err(|e| ScenarioError::Syntax(e.to_string()))?;
        let mut scenario = Scenario::from_file(file)?;
        scenario.hash = blake3::hash(text.as_bytes()).to_hex().to_string();
        Ok(scenario)
    }

    /// Validate a scenario built as a value; its hash is that of the value (as JSON).
    pub fn from_file(f: ScenarioFile) -> Result<Scenario, ScenarioError> {
        let hash = blake3::hash(&serde_json::to_vec(&f).expect("serializes"))
            .to_hex()
            .to_string();
        if !fits_name(&f.name, 128) {
            return Err(invalid("name", f.name.escape_debug(), NAME_128));
        }
        if !(1..=MAX_DURATION_HOURS).contains(&f.duration_hours) {
            return Err(invalid(
                "duration_hours",
                f.duration_hours,
                format!("1 to {MAX_DURATION_HOURS}"),
            ));
        }
        let (profile, sse_encrypted_ever) = storage(f.storage.as_ref())?;
        let network = network(f.network.as_ref())?;
        let policy = Policy::from_spec(&f.policy.unwrap_or_default(), profile)?;
        let policies = named_policies(f.replication_policy, profile)?;
        let clouds = clouds(&f.logical_network, &f.cloud, &f.vm_network, &policies)?;
        let (vnets, network_mapping) = networks(&f.vm_network, f.vnet, f.network_mapping)?;
        let hosts = hosts(&f.host)?;
        let workload_peak = match &f.workload {
            Some(w) => peak_hours("workload", w.peak_hours.as_deref(), w.peak_share)?,
            None => None,
        };
        let vms = vms(
            f.vm,
            &VmContext {
                vm_networks: &f.vm_network,
                clouds: &clouds,
                policies: &policies,
                default_policy: &policy,
                hosts: &hosts,
                workload_peak,
            },
        )?;
        let names: BTreeSet<String> = vms.iter().map(|v| v.name.clone()).collect();
        let faults = faults(f.fault, f.duration_hours, &hosts, network.kbps)?;
        let steps = steps(f.step, f.duration_hours, &names)?;
        let start_unix = f.start_unix.unwrap_or(DEFAULT_START_UNIX);
        if !(MIN_START_UNIX..=MAX_START_UNIX).contains(&start_unix) {
            // Simulated time is nanoseconds in a u64: far enough from its end that the run,
            // skewed host clocks and retention arithmetic never wrap.
            return Err(invalid(
                "start_unix",
                start_unix,
                "from 946684800 (2000-01-01) to 4102444800 (2100-01-01)",
            ));
        }
        let start_nanos = start_unix * 1_000_000_000;
        let expectations = expectations(f.expect, &names)?;
        Ok(Scenario {
            name: f.name,
            seed: f.seed.unwrap_or(1),
            duration_hours: f.duration_hours,
            start_nanos,
            profile,
            bandwidth_bytes_per_sec: (network.kbps * 1000 / 8).max(1),
            connection_bytes_per_sec: network.connection_kbps.map(|c| (c * 1000 / 8).max(1)),
            host_throttle: network.host_throttle,
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
            hash,
        })
    }
}

/// Whether `name` is 1 to `max` bytes with no control character: names end up in terminals,
/// JUnit and SVG reports, and file names.
fn fits_name(name: &str, max: usize) -> bool {
    !name.is_empty() && name.len() <= max && !name.chars().any(char::is_control)
}

const NAME_64: &str = "1 to 64 characters, none of them a control character";
const NAME_128: &str = "1 to 128 characters, none of them a control character";

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

/// Busy hours from a table's `peak_hours` and `peak_share` (`at`: the table's place).
fn peak_hours(
    at: &str,
    hours: Option<&str>,
    share: Option<f64>,
) -> Result<Option<PeakHours>, ScenarioError> {
    PeakHours::from_keys(hours, share)
        .map_err(|e| invalid(format!("{at}.{}", e.field), e.value, e.rule))
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

/// `[storage]`: the profile, and whether the account was ever SSE-encrypted.
fn storage(s: Option<&StorageFile>) -> Result<(Profile, bool), ScenarioError> {
    let name = s
        .and_then(|s| s.profile.clone())
        .unwrap_or_else(|| "standard".into());
    let profile = Profile::parse(&name).ok_or_else(|| {
        invalid(
            "storage.profile",
            &name,
            "standard, premium or premium-spaced",
        )
    })?;
    Ok((
        profile,
        s.and_then(|s| s.sse_encrypted_ever).unwrap_or(false),
    ))
}

/// `[network]` validated.
struct Network {
    kbps: u64,
    connection_kbps: Option<u64>,
    host_throttle: Option<Throttle>,
}

/// `[network]` and `[network.throttle]`.
fn network(n: Option<&NetworkFile>) -> Result<Network, ScenarioError> {
    let kbps = match n.map(|n| (n.bandwidth_mbps, n.bandwidth_kbps)) {
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
    let connection_kbps = n.and_then(|n| n.connection_kbps);
    if let Some(c) = connection_kbps.filter(|c| !(1..=100_000_000).contains(c)) {
        return Err(invalid("network.connection_kbps", c, "1 to 100000000"));
    }
    let host_throttle = match n.and_then(|n| n.throttle.as_ref()) {
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
            Some(Throttle {
                work_hours_kbps: t.work_hours_kbps,
                non_work_hours_kbps: t.non_work_hours_kbps,
                work_start_hour: t.work_start_hour,
                work_end_hour: t.work_end_hour,
            })
        }
    };
    Ok(Network {
        kbps,
        connection_kbps,
        host_throttle,
    })
}

/// `[[replication_policy]]`: named policies, each validated against the target's profile (30 s
/// on premium is refused here, with the policy's name).
fn named_policies(
    tables: Vec<toml::Table>,
    profile: Profile,
) -> Result<BTreeMap<String, Policy>, ScenarioError> {
    at_most("replication_policy", tables.len(), 64)?;
    let mut policies = BTreeMap::new();
    for (i, mut table) in tables.into_iter().enumerate() {
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
    Ok(policies)
}

/// A VMM cloud: its policy's name (none: its VMs cannot be protected) and the VM networks it
/// offers (those of its logical networks).
type Cloud = (Option<String>, Vec<String>);

/// `[[logical_network]]` and `[[cloud]]`: logical networks carry VM networks; clouds offer
/// logical networks and have a policy associated.
fn clouds(
    logical_networks: &[LogicalNetworkFile],
    cloud_files: &[CloudFile],
    vm_networks: &[VmNetworkFile],
    policies: &BTreeMap<String, Policy>,
) -> Result<BTreeMap<String, Cloud>, ScenarioError> {
    let mut logical = BTreeMap::new();
    at_most("logical_network", logical_networks.len(), 64)?;
    for (i, ln) in logical_networks.iter().enumerate() {
        for v in &ln.vm_networks {
            if !vm_networks.iter().any(|n| &n.name == v) {
                return Err(invalid(
                    format!("logical_network[{i}].vm_networks"),
                    v,
                    "a vm_network of the scenario",
                ));
            }
        }
        logical.insert(ln.name.clone(), ln.vm_networks.clone());
    }
    let mut clouds = BTreeMap::new();
    at_most("cloud", cloud_files.len(), 64)?;
    for (i, c) in cloud_files.iter().enumerate() {
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
        clouds.insert(c.name.clone(), (c.policy.clone(), offered));
    }
    Ok(clouds)
}

/// `[[vm_network]]`, `[[vnet]]` and `[[network_mapping]]`: the VNets, and which VNet each VM
/// network maps to.
fn networks(
    vm_networks: &[VmNetworkFile],
    vnet_files: Vec<VmNetworkFile>,
    mappings: Vec<MappingFile>,
) -> Result<(Vec<Vnet>, BTreeMap<String, String>), ScenarioError> {
    for (i, n) in vm_networks.iter().chain(&vnet_files).enumerate() {
        if n.name.is_empty() || n.subnets.is_empty() || n.subnets.len() > 64 {
            return Err(invalid(
                format!("network[{i}]"),
                &n.name,
                "a name and 1 to 64 subnets",
            ));
        }
    }
    let vnets: Vec<Vnet> = vnet_files
        .into_iter()
        .map(|v| Vnet {
            name: v.name,
            subnets: v.subnets,
        })
        .collect();
    let mut mapping = BTreeMap::new();
    for (i, m) in mappings.into_iter().enumerate() {
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
        mapping.insert(m.vm_network, m.vnet);
    }
    Ok((vnets, mapping))
}

/// `[[host]]`: unique names (default: one host, `hyperv-host`).
fn hosts(files: &[HostFile]) -> Result<Vec<String>, ScenarioError> {
    at_most("host", files.len(), 64)?;
    let mut hosts: Vec<String> = Vec::new();
    for (i, h) in files.iter().enumerate() {
        if !fits_name(&h.name, 64) || hosts.contains(&h.name) {
            return Err(invalid(
                format!("host[{i}].name"),
                h.name.escape_debug(),
                format!("unique, {NAME_64}"),
            ));
        }
        hosts.push(h.name.clone());
    }
    if hosts.is_empty() {
        hosts.push("hyperv-host".into());
    }
    Ok(hosts)
}

/// What a VM is checked against: the sections validated before it.
struct VmContext<'a> {
    vm_networks: &'a [VmNetworkFile],
    clouds: &'a BTreeMap<String, Cloud>,
    policies: &'a BTreeMap<String, Policy>,
    default_policy: &'a Policy,
    hosts: &'a [String],
    workload_peak: Option<PeakHours>,
}

/// `[[vm]]`: 1 to `MAX_VMS` VMs with unique names, and no more disk than `MAX_TOTAL_DISK_MIB`.
fn vms(files: Vec<VmFile>, cx: &VmContext<'_>) -> Result<Vec<VmSpec>, ScenarioError> {
    if files.is_empty() || files.len() > MAX_VMS {
        return Err(invalid("vm", files.len(), format!("1 to {MAX_VMS} VMs")));
    }
    let mut names = BTreeSet::new();
    let mut vms = Vec::new();
    for (i, vm) in files.into_iter().enumerate() {
        let at = format!("vm[{i}]");
        if !names.insert(vm.name.clone()) || !fits_name(&vm.name, 64) {
            return Err(invalid(
                format!("{at}.name"),
                vm.name.escape_debug(),
                format!("unique, {NAME_64}"),
            ));
        }
        vms.push(self::vm(&at, vm, cx)?);
    }
    let total: u64 = vms
        .iter()
        .flat_map(|v| &v.disks)
        .map(|d| d.size_bytes >> 20)
        .sum();
    if total > MAX_TOTAL_DISK_MIB {
        return Err(invalid(
            "vm[*].disk[*].size_mib",
            total,
            format!("at most {MAX_TOTAL_DISK_MIB} MiB in all"),
        ));
    }
    Ok(vms)
}

/// One `[[vm]]` at `at`: its size, NICs, disks, availability set, cloud and host.
fn vm(at: &str, vm: VmFile, cx: &VmContext<'_>) -> Result<VmSpec, ScenarioError> {
    if vm.disk.is_empty() || vm.disk.len() > MAX_DISKS_PER_VM {
        return Err(invalid(
            format!("{at}.disk"),
            vm.disk.len(),
            format!("1 to {MAX_DISKS_PER_VM} disks"),
        ));
    }
    let size = vm.size.clone().unwrap_or_else(|| "Standard_D2s_v3".into());
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
    let nics = nics(at, vm.nic, cx.vm_networks)?;
    let mut disks = Vec::new();
    let mut excluded = Vec::new();
    let mut disk_names = BTreeSet::new();
    for (j, d) in vm.disk.into_iter().enumerate() {
        let at = format!("{at}.disk[{j}]");
        let unique = disk_names.insert(d.name.clone());
        if d.exclude {
            if j == 0 {
                return Err(invalid(
                    format!("{at}.exclude"),
                    true,
                    "the OS disk (the VM's first disk) can never be excluded",
                ));
            }
            if !unique || !fits_name(&d.name, 64) {
                return Err(invalid(
                    format!("{at}.name"),
                    d.name.escape_debug(),
                    format!("unique in the VM, {NAME_64}"),
                ));
            }
            excluded.push(d.name);
            continue;
        }
        if !unique || !fits_name(&d.name, 64) {
            return Err(invalid(
                format!("{at}.name"),
                d.name.escape_debug(),
                format!("unique in the VM, {NAME_64}"),
            ));
        }
        disks.push(disk(&at, d, cx.workload_peak)?);
    }
    if let Some(set) = &vm.availability_set {
        availability_set(at, set, vm.managed_disks)?;
    }
    let (cloud, policy_name, policy) = match &vm.cloud {
        None => (None, "default".to_string(), cx.default_policy.clone()),
        Some(c) => {
            let (name, policy) = cloud_policy(at, c, &nics, cx)?;
            (Some(c.clone()), name, policy)
        }
    };
    let host = match &vm.host {
        None => cx.hosts[0].clone(),
        Some(h) if cx.hosts.contains(h) => h.clone(),
        Some(h) => return Err(invalid(format!("{at}.host"), h, "a host of the scenario")),
    };
    Ok(VmSpec {
        name: vm.name,
        host,
        cloud,
        policy_name,
        policy,
        managed_disks: vm.managed_disks,
        size,
        max_nics,
        nics,
        disks,
        excluded,
    })
}

/// A VM's `[[vm.nic]]`s: at most 8, each on a subnet of a VM network of the scenario.
fn nics(
    at: &str,
    files: Vec<NicFile>,
    vm_networks: &[VmNetworkFile],
) -> Result<Vec<Nic>, ScenarioError> {
    if files.len() > 8 {
        return Err(invalid(format!("{at}.nic"), files.len(), "at most 8 NICs"));
    }
    let mut nics = Vec::new();
    for (k, n) in files.into_iter().enumerate() {
        let known = vm_networks
            .iter()
            .find(|v| v.name == n.network)
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
    Ok(nics)
}

/// A replicated `[[vm.disk]]` at `at`: its size, churn, hot spot, data and busy hours.
fn disk(
    at: &str,
    d: DiskFile,
    workload_peak: Option<PeakHours>,
) -> Result<DiskSpec, ScenarioError> {
    if !(1..=MAX_DISK_MIB).contains(&d.size_mib) {
        return Err(invalid(
            format!("{at}.size_mib"),
            d.size_mib,
            format!("1 to {MAX_DISK_MIB}"),
        ));
    }
    let churn_bytes_per_hour =
        (d.churn_mib_per_hour << 20).saturating_add(d.churn_kib_per_hour.saturating_mul(1024));
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
        peak_hours(at, d.peak_hours.as_deref(), d.peak_share)?
    } else {
        workload_peak
    };
    Ok(DiskSpec {
        name: d.name,
        size_bytes: d.size_mib << 20,
        used_bytes: used_mib << 20,
        churn_bytes_per_hour,
        hot_spot: hot,
        peak,
    })
}

/// A VM's `availability_set` ("managed" or "unmanaged") must match its "use managed disks".
fn availability_set(at: &str, set: &str, managed_disks: bool) -> Result<(), ScenarioError> {
    let managed_set = match set {
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
    if managed_set != managed_disks {
        return Err(invalid(
            format!("{at}.availability_set"),
            set,
            format!(
                "must match \"use managed disks\" ({})",
                if managed_disks {
                    "yes: a managed availability set"
                } else {
                    "no: an unmanaged availability set"
                }
            ),
        ));
    }
    Ok(())
}

/// The policy (name and policy) of a VM in cloud `cloud`, whose NICs must be on VM networks
/// the cloud offers.
fn cloud_policy(
    at: &str,
    cloud: &str,
    nics: &[Nic],
    cx: &VmContext<'_>,
) -> Result<(String, Policy), ScenarioError> {
    let (assoc, offered) = cx
        .clouds
        .get(cloud)
        .ok_or_else(|| invalid(format!("{at}.cloud"), cloud, "a cloud of the scenario"))?;
    let name = assoc.clone().ok_or_else(|| {
        invalid(
            format!("{at}.cloud"),
            cloud,
            "a cloud with a replication policy associated (it has no replication policy: its VMs cannot be protected)",
        )
    })?;
    for nic in nics {
        if !offered.contains(&nic.network) {
            return Err(invalid(
                format!("{at}.nic"),
                &nic.network,
                format!("a VM network on one of cloud {cloud}'s logical networks"),
            ));
        }
    }
    let policy = cx
        .policies
        .get(&name)
        .expect("checked with the clouds")
        .clone();
    Ok((name, policy))
}

/// `[[fault]]`s, in time order.
fn faults(
    files: Vec<FaultFile>,
    duration_hours: u64,
    hosts: &[String],
    network_kbps: u64,
) -> Result<Vec<Fault>, ScenarioError> {
    at_most("fault", files.len(), MAX_FAULTS)?;
    let mut faults = files
        .iter()
        .enumerate()
        .map(|(i, fault)| {
            let at = format!("fault[{i}]");
            inside_duration(&at, fault.at_minutes, duration_hours)?;
            Ok(Fault {
                at_minutes: fault.at_minutes,
                kind: fault_kind(&at, fault, hosts, network_kbps)?,
            })
        })
        .collect::<Result<Vec<Fault>, ScenarioError>>()?;
    faults.sort_by_key(|f| f.at_minutes);
    Ok(faults)
}

/// What one `[[fault]]` at `at` does, with the fields its kind needs.
fn fault_kind(
    at: &str,
    fault: &FaultFile,
    hosts: &[String],
    network_kbps: u64,
) -> Result<FaultKind, ScenarioError> {
    // Faults that last take their length in minutes.
    let minutes = || {
        given_in(
            format!("{at}.minutes"),
            fault.minutes,
            1..=MAX_DURATION_HOURS * 60,
            "1 minute to the scenario's maximum",
        )
    };
    let host = || match &fault.host {
        Some(h) if !hosts.contains(h) => {
            Err(invalid(format!("{at}.host"), h, "a host of the scenario"))
        }
        other => Ok(other.clone()),
    };
    Ok(match fault.kind.as_str() {
        "wan_down" => FaultKind::WanDown {
            minutes: minutes()?,
        },
        "churn_burst" => FaultKind::ChurnBurst {
            minutes: minutes()?,
            factor: given_in(
                format!("{at}.factor"),
                fault.factor,
                2..=100,
                "2 to 100 (times the usual churn)",
            )?,
        },
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
            // A "degradation" at or above the link's speed degrades nothing, and its end
            // would count as the end of another disturbance.
            if mbps * 1000 >= network_kbps {
                return Err(invalid(
                    format!("{at}.bandwidth_mbps"),
                    mbps,
                    format!("below the network's {} kbit/s", network_kbps),
                ));
            }
            FaultKind::WanDegraded { minutes, mbps }
        }
        "host_crash" => FaultKind::HostCrash {
            host: host()?,
            mid_cycle: fault.mid_cycle.unwrap_or(false),
        },
        "wrong_certificate" => FaultKind::WrongCertificate,
        "agent_restart" => FaultKind::AgentRestart { host: host()? },
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
            let (busy, timeouts, torn) = (
                rate("busy", fault.busy, 0.05)?,
                rate("timeouts", fault.timeouts, 0.02)?,
                rate("torn", fault.torn, 0.0)?,
            );
            // A storm of nothing would be no disturbance, and its end would count as the end
            // of another one.
            if busy == 0.0 && timeouts == 0.0 && torn == 0.0 {
                return Err(invalid(
                    at,
                    "busy = timeouts = torn = 0",
                    "a storage storm needs busy, timeouts or torn above 0",
                ));
            }
            FaultKind::StorageStorm {
                minutes,
                busy,
                timeouts,
                torn,
            }
        }
        other => {
            return Err(invalid(
                format!("{at}.kind"),
                other,
                "wan_down, wan_degraded, host_crash, agent_restart, storage_storm, snapshot_pressure, churn_burst, wrong_certificate or clock_skew",
            ))
        }
    })
}

/// `[[step]]`s, in time order; a recovery plan becomes one step per VM, in its order.
fn steps(
    files: Vec<StepFile>,
    duration_hours: u64,
    vm_names: &BTreeSet<String>,
) -> Result<Vec<Step>, ScenarioError> {
    at_most("step", files.len(), MAX_FAULTS)?;
    let mut steps = Vec::new();
    for (i, st) in files.into_iter().enumerate() {
        let at = format!("step[{i}]");
        inside_duration(&at, st.at_minutes, duration_hours)?;
        let point = point_choice(&at, st.point.as_deref())?;
        let (vms_of_step, action) = match st.action.as_str() {
            "recovery_plan_failover" => (
                st.vms.clone().unwrap_or_default(),
                Action::UnplannedFailover(point),
            ),
            other => (
                st.vm.clone().into_iter().collect(),
                action(&at, other, point)?,
            ),
        };
        if vms_of_step.is_empty() {
            return Err(invalid(
                format!("{at}.vm"),
                "missing",
                "a VM (or `vms` for a recovery plan)",
            ));
        }
        for vm in vms_of_step {
            if !vm_names.contains(&vm) {
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
    Ok(steps)
}

/// A step's `point`. ASR's "latest" processes data the service has received first; "latest
/// processed" takes the newest point already processed. The emulated service processes a
/// cycle's data as it arrives, so both are the newest point.
fn point_choice(at: &str, point: Option<&str>) -> Result<PointChoice, ScenarioError> {
    Ok(match point {
        None | Some("latest") | Some("latest-processed") => PointChoice::Latest,
        Some("latest-app") => PointChoice::LatestAppConsistent,
        Some(n) => PointChoice::Sequence(n.parse().map_err(|_| {
            invalid(
                format!("{at}.point"),
                n,
                "latest, latest-processed, latest-app or a point number",
            )
        })?),
    })
}

/// A step's `action` on one VM.
fn action(at: &str, name: &str, point: PointChoice) -> Result<Action, ScenarioError> {
    Ok(match name {
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
    })
}

/// `[[expect]]`: assertions on the vault's jobs.
fn expectations(
    files: Vec<ExpectFile>,
    vm_names: &BTreeSet<String>,
) -> Result<Vec<Expectation>, ScenarioError> {
    at_most("expect", files.len(), MAX_FAULTS)?;
    let mut expectations = Vec::new();
    for (i, e) in files.into_iter().enumerate() {
        let at = format!("expect[{i}]");
        if !JOB_NAMES.contains(&e.job.as_str()) {
            return Err(invalid(format!("{at}.job"), &e.job, JOB_NAMES.join(", ")));
        }
        if e.job != "register" && !vm_names.contains(&e.vm) {
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
    Ok(expectations)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::QUICKSTART;

    #[test]
    fn a_scenario_built_as_a_value_is_validated_like_its_file() {
        let file: ScenarioFile = toml::from_str(QUICKSTART).unwrap();
        let from_text = Scenario::parse(QUICKSTART).unwrap();
        let from_value = Scenario::from_file(file.clone()).unwrap();
        let without_hash = |s: &Scenario| {
            format!(
                "{:?}",
                Scenario {
                    hash: String::new(),
                    ..s.clone()
                }
            )
        };
        assert_eq!(without_hash(&from_text), without_hash(&from_value));
        // Written back as TOML, the value reads as the same scenario.
        let again = Scenario::parse(&toml::to_string(&file).unwrap()).unwrap();
        assert_eq!(without_hash(&again), without_hash(&from_value));

        let mut hostile = file;
        hostile.vm[1].disk[0].size_mib = 0;
        let err = Scenario::from_file(hostile).unwrap_err().to_string();
        assert!(err.contains("vm[1].disk[0].size_mib"), "{err}");
    }

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
            // Control characters in names (they reach terminals, JUnit, SVG, file names):
            // refused, and shown escaped.
            ("name = \"x\\u001b[2J\"\nduration_hours = 1", "name = x\\u{1b}[2J"),
            (
                "name = \"x\"\nduration_hours = 1\n[[vm]]\nname = \"a\\nb\"\n[[vm.disk]]\nname = \"d\"\nsize_mib = 8",
                "vm[0].name = a\\nb",
            ),
            (
                "name = \"x\"\nduration_hours = 1\n[[vm]]\nname = \"a\"\n[[vm.disk]]\nname = \"d\"\nsize_mib = 8\n[[vm.disk]]\nname = \"t\\u0000\"\nsize_mib = 8\nexclude = true",
                "vm[0].disk[1].name",
            ),
            (
                "name = \"x\"\nduration_hours = 1\n[[host]]\nname = \"h\\t\"\n[[vm]]\nname = \"a\"\n[[vm.disk]]\nname = \"d\"\nsize_mib = 8",
                "host[0].name",
            ),
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
