//! The capacity planner: verdicts name the limits a workload breaks, and its predictions stay
//! within the documented bounds of what the simulator measures on the same workload
//! (docs/planner.md): initial replication time within 10%, bytes sent and replica storage within
//! 20%, the largest steady RPO within 35%.

use sim::planner::{plan, verify, PlanInput};

fn input(vms: u32, disks: u32, disk_gib: f64, used: f64, churn: f64, mbps: f64) -> PlanInput {
    PlanInput {
        vms,
        disks_per_vm: disks,
        disk_gib,
        used_gib: Some(used),
        churn_gib_per_day: churn,
        peak_hours: None,
        peak_share: None,
        profile: "standard".into(),
        bandwidth_mbps: mbps,
        io_size_kib: None,
        compression_ratio: None,
        host_mb_per_s: None,
        policy: Some(toml::from_str("copy_frequency_secs = 300\nretention_hours = 12").unwrap()),
    }
}

#[test]
fn predictions_match_the_simulation_within_bounds() {
    for (i, workload) in [
        input(8, 2, 100.0, 60.0, 20.0, 100.0),
        input(3, 1, 50.0, 20.0, 40.0, 20.0),
        input(40, 3, 200.0, 40.0, 30.0, 1000.0),
    ]
    .iter()
    .enumerate()
    {
        let dir = sim::swarm::scratch_dir().unwrap();
        let v = verify(workload, 3, dir.path()).unwrap();
        assert!(
            v.failed_checks.is_empty(),
            "workload {i}: {:?}",
            v.failed_checks
        );
        let bound = |figure: &str| match figure {
            "initial replication (hours)" => 0.10,
            "bytes sent (GiB)" | "replica storage (GiB)" => 0.20,
            _ => 0.35,
        };
        assert_eq!(v.comparisons.len(), 4, "workload {i}: the RPO is bounded");
        for c in &v.comparisons {
            assert!(
                c.relative_error <= bound(&c.figure),
                "workload {i}: {} predicted {} simulated {} ({:.1}%)",
                c.figure,
                c.predicted,
                c.simulated,
                c.relative_error * 100.0
            );
        }
        assert!(v.scale <= 1.0 && v.simulated_vms <= 16);
    }
}

#[test]
fn verdicts_name_each_limit_a_workload_breaks() {
    let fits = plan(&input(4, 2, 100.0, 50.0, 10.0, 100.0), 0).unwrap();
    assert!(fits.verdicts.iter().all(|v| v.fits));
    assert!(fits.expected_max_rpo_secs.is_some());
    // 300 GiB a day is 3.5 MB/s: over standard storage's 2 MB/s per VM, and over a 10 Mbit/s
    // WAN.
    let heavy = plan(&input(2, 1, 500.0, 100.0, 300.0, 10.0), 0).unwrap();
    let reasons = &heavy.verdicts[0].exceeds;
    assert!(!heavy.verdicts[0].fits);
    assert!(
        reasons.iter().any(|r| r.contains("2 MB/s per-VM limit")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("RPO grows")),
        "{reasons:?}"
    );
    assert_eq!(heavy.expected_max_rpo_secs, None);
    // On premium the same churn fits (20 MB/s with large writes), not with small writes.
    let mut premium = input(2, 1, 500.0, 100.0, 300.0, 1000.0);
    premium.profile = "premium".into();
    assert!(plan(&premium, 0).unwrap().verdicts[0].fits);
    premium.io_size_kib = Some(8);
    premium.churn_gib_per_day = 500.0;
    let small_io = plan(&premium, 0).unwrap();
    assert!(small_io.verdicts[0].exceeds[0].contains("5 MB/s"));
    // A 30-second policy on premium is refused (more than 100 snapshots per blob).
    premium.policy = Some(toml::from_str("copy_frequency_secs = 30").unwrap());
    let err = plan(&premium, 0).unwrap_err().to_string();
    assert!(err.contains("100"), "{err}");
    // Bad input is named.
    let mut bad = input(1, 1, 10.0, 20.0, 1.0, 10.0);
    assert!(plan(&bad, 0).unwrap_err().to_string().contains("used_gib"));
    bad.used_gib = None;
    bad.peak_hours = Some("18-9".into());
    assert!(plan(&bad, 0)
        .unwrap_err()
        .to_string()
        .contains("peak_hours"));
}

#[test]
fn an_off_peak_start_and_a_throttle_stretch_initial_replication() {
    let base = input(1, 1, 100.0, 100.0, 1.0, 100.0);
    let plain = plan(&base, 0).unwrap().initial_replication_hours;
    let mut later = base.clone();
    later.policy = Some(
        toml::from_str("copy_frequency_secs = 300\ninitial_replication_start = \"22:00\"").unwrap(),
    );
    let waited = plan(&later, 12 * 3600).unwrap().initial_replication_hours;
    assert!((waited - plain - 10.0).abs() < 0.01, "{plain} {waited}");
    let mut throttled = base.clone();
    throttled.policy = Some(
        toml::from_str(
            "copy_frequency_secs = 300\n[throttle]\nwork_hours_kbps = 10000\nwork_start_hour = 0\nwork_end_hour = 24",
        )
        .unwrap(),
    );
    let slow = plan(&throttled, 0).unwrap().initial_replication_hours;
    assert!(slow > plain * 9.0, "{plain} {slow}");
}
