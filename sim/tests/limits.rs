//! Scenario limits: what the documented limits allow must run or be refused up front with a
//! reason, never abort, wrap the clock or miscount.

use sim::report::SimError;
use sim::swarm::determinism_failure;
use sim::world::fits_in_memory;
use sim::Scenario;

fn scenario(extra_top: &str, vm: &str, faults: &str) -> String {
    format!(
        "name = \"limits\"\nduration_hours = 2\n{extra_top}\n[policy]\ncopy_frequency_secs = 300\n{vm}\n{faults}"
    )
}

const SMALL_VM: &str =
    "[[vm]]\nname = \"vm\"\n[[vm.disk]]\nname = \"os\"\nsize_mib = 8\nchurn_mib_per_hour = 10\n";

/// Sixteen fully used 4 GiB disks with high churn for a week is inside every documented
/// limit: it needs far more memory than the machine has and is refused with that reason
/// (it used to exhaust memory and abort).
#[test]
fn a_scenario_at_the_documented_limits_is_refused_for_memory_up_front() {
    let mut vm = String::from("[[vm]]\nname = \"big\"\n");
    for i in 0..16 {
        vm.push_str(&format!(
            "[[vm.disk]]\nname = \"d{i}\"\nsize_mib = 4096\nused_mib = 4096\nchurn_mib_per_hour = 4096\n"
        ));
    }
    let text = format!(
        "name = \"limits\"\nduration_hours = 168\n[policy]\ncopy_frequency_secs = 300\n{vm}"
    );
    let s = Scenario::parse(&text).unwrap();
    assert!(s.memory_needed_bytes() > 64 << 30);
    let e = fits_in_memory(&s, Some(24 << 30)).unwrap_err();
    assert!(matches!(e, SimError::TooBig { .. }), "{e}");
    assert!(e.to_string().contains("MiB of memory"), "{e}");
    // On this machine too (it has nowhere near 200 GiB free), before building anything.
    let e = sim::run(&s, 1).unwrap_err();
    assert!(matches!(e, SimError::TooBig { .. }), "{e}");
    // A small scenario fits.
    let small = Scenario::parse(&scenario("", SMALL_VM, "")).unwrap();
    fits_in_memory(&small, Some(1 << 30)).unwrap();
}

/// `start_unix` is bounded so simulated nanoseconds never wrap (near u64::MAX it used to
/// wrap and still report every check ok).
#[test]
fn start_times_that_would_wrap_the_clock_are_refused() {
    for bad in [
        u64::MAX / 1_000_000_000,
        u64::MAX,
        4_102_444_801,
        0,
        946_684_799,
    ] {
        let text = scenario(&format!("start_unix = {bad}"), SMALL_VM, "");
        let e = Scenario::parse(&text).unwrap_err().to_string();
        assert!(e.contains("start_unix"), "{bad}: {e}");
    }
    for ok in [946_684_800u64, 4_102_444_800] {
        Scenario::parse(&scenario(&format!("start_unix = {ok}"), SMALL_VM, "")).unwrap();
    }
}

/// A storm of nothing and a "degradation" to a faster link are refused: each would end
/// another fault's disturbance early (the steadiness counter went below zero).
#[test]
fn faults_that_disturb_nothing_are_refused() {
    let storm = "[[fault]]\nkind = \"storage_storm\"\nat_minutes = 10\nminutes = 5\nbusy = 0.0\ntimeouts = 0.0\ntorn = 0.0\n";
    let e = Scenario::parse(&scenario("", SMALL_VM, storm))
        .unwrap_err()
        .to_string();
    assert!(e.contains("fault[0]") && e.contains("above 0"), "{e}");
    let network = "[network]\nbandwidth_mbps = 10\n";
    let degraded =
        "[[fault]]\nkind = \"wan_degraded\"\nat_minutes = 10\nminutes = 5\nbandwidth_mbps = 10\n";
    let e = Scenario::parse(&scenario(network, SMALL_VM, degraded))
        .unwrap_err()
        .to_string();
    assert!(e.contains("fault[0].bandwidth_mbps"), "{e}");
    let slower = degraded.replace("bandwidth_mbps = 10", "bandwidth_mbps = 2");
    Scenario::parse(&scenario(network, SMALL_VM, &slower)).unwrap();
}

/// A seed whose second run fails is a failure of the swarm (it used to be skipped).
#[test]
fn a_seed_whose_second_run_errors_fails_the_swarm() {
    let s = Scenario::parse(&scenario("", SMALL_VM, "")).unwrap();
    let report = sim::run(&s, 1).unwrap();
    let ok: Result<sim::Report, String> = Ok(report);
    let err: Result<sim::Report, String> = Err("boom".into());
    assert!(determinism_failure(&ok, &ok.clone()).is_none());
    assert!(determinism_failure(&ok, &err)
        .unwrap()
        .contains("the second failed"));
    assert!(determinism_failure(&err, &ok).is_some());
    assert!(determinism_failure(&err, &Err("other".into())).is_some());
    assert!(determinism_failure(&err, &err.clone()).is_none());
}
