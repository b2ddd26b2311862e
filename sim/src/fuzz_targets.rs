//! Bodies of the cargo-fuzz targets for the simulator's hostile inputs — scenario files and
//! planner workloads — shared with the stable corpus replay test. Any text must give a
//! scenario or plan, or a named error: never a panic, hang or unbounded allocation.

use crate::planner::{plan, PlanInput};
use crate::scenario::Scenario;

/// Target names, as in `fuzz/Cargo.toml`.
pub const TARGETS: [&str; 2] = ["scenario", "plan_input"];

pub fn run(name: &str, data: &[u8]) {
    match name {
        "scenario" => scenario(data),
        "plan_input" => plan_input(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

/// Parse and validate arbitrary text as a scenario file.
pub fn scenario(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Scenario::parse(text) {
        // Errors say what is wrong in one line.
        assert!(!e.to_string().is_empty());
    }
}

/// Read arbitrary text as a planner workload and plan it, enabled at midnight and at noon.
pub fn plan_input(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(input) = toml::from_str::<PlanInput>(text) else {
        return;
    };
    for start in [0, 12 * 3600] {
        if let Ok(p) = plan(&input, start) {
            assert!(p.initial_replication_hours >= 0.0 && p.snapshots_per_blob > 0);
        }
    }
}

/// Valid inputs to start from: the drills in `scenarios/` and planner workloads.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let scenarios: [(&str, &str); 9] = [
        (
            "quickstart",
            include_str!("../../scenarios/quickstart.toml"),
        ),
        ("premium", include_str!("../../scenarios/premium.toml")),
        (
            "host-crash-resync",
            include_str!("../../scenarios/host-crash-resync.toml"),
        ),
        (
            "wan-outage-failover",
            include_str!("../../scenarios/wan-outage-failover.toml"),
        ),
        (
            "failback-round-trip",
            include_str!("../../scenarios/failback-round-trip.toml"),
        ),
        (
            "recovery-plan",
            include_str!("../../scenarios/recovery-plan.toml"),
        ),
        (
            "snapshot-pressure",
            include_str!("../../scenarios/snapshot-pressure.toml"),
        ),
        ("reference", include_str!("../../scenarios/reference.toml")),
        (
            "office-hours",
            include_str!("../../scenarios/office-hours.toml"),
        ),
    ];
    let mut out: Vec<(&'static str, String, Vec<u8>)> = scenarios
        .iter()
        .map(|(name, text)| ("scenario", (*name).to_string(), text.as_bytes().to_vec()))
        .collect();
    let alike = "vms = 4\ndisks_per_vm = 2\ndisk_gib = 100\nused_gib = 40\nchurn_gib_per_day = 20\n\
                 peak_hours = \"9-18\"\nprofile = \"premium\"\nbandwidth_mbps = 100\nconnection_mbps = 20\nio_size_kib = 8\n\
                 [policy]\ncopy_frequency_secs = 300\nretention_hours = 24\ninitial_replication_start = \"22:00\"\n\
                 [policy.throttle]\nwork_hours_kbps = 20000\nwork_start_hour = 8\nwork_end_hour = 18\n";
    let groups = "profile = \"standard\"\nbandwidth_mbps = 50\ndisk_gib = 50\nchurn_gib_per_day = 10\n\
                  [[group]]\nname = \"web\"\nvms = 3\nused_gib = 20\npeak_hours = \"8-12\"\n\
                  [[group]]\nname = \"db\"\ndisks_per_vm = 3\ndisk_gib = 200\nchurn_gib_per_day = 300\n";
    out.push(("plan_input", "alike".into(), alike.as_bytes().to_vec()));
    out.push(("plan_input", "groups".into(), groups.as_bytes().to_vec()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_is_valid_input() {
        let seeds = seeds();
        for target in TARGETS {
            assert!(
                seeds.iter().any(|(t, _, _)| *t == target),
                "no seed for {target}"
            );
        }
        for (target, name, bytes) in &seeds {
            let text = std::str::from_utf8(bytes).unwrap();
            match *target {
                "scenario" => {
                    Scenario::parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                _ => {
                    let input: PlanInput = toml::from_str(text).unwrap();
                    plan(&input, 0).unwrap_or_else(|e| panic!("{name}: {e}"));
                }
            }
            run(target, bytes);
        }
    }
}
