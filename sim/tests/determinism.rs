//! A small drill runs twice with one seed and gives the same report and trace hash; another
//! seed gives another trace; every invariant holds, including across a WAN outage (cycles fail
//! and are retried), a host crash (the agents come back untrusted and resync), a test failover
//! and its cleanup, an unplanned failover, commit and failback.

const DRILL: &str = r#"
name = "ci-drill"
seed = 7
duration_hours = 3
[storage]
profile = "premium"
[policy]
copy_frequency_secs = 300
retention_hours = 2
app_consistent_hours = 1
[[vm]]
name = "vm1"
[[vm.disk]]
name = "os"
size_mib = 12
churn_mib_per_hour = 20
hot_spot = 0.8
[[vm.disk]]
name = "data"
size_mib = 16
churn_mib_per_hour = 40
[[fault]]
kind = "wan_down"
at_minutes = 40
minutes = 25
[[fault]]
kind = "host_crash"
at_minutes = 110
[[fault]]
kind = "storage_storm"
at_minutes = 160
minutes = 15
busy = 0.1
timeouts = 0.05
[[step]]
action = "test_failover"
at_minutes = 90
vm = "vm1"
point = "latest-app"
[[step]]
action = "cleanup_test_failover"
at_minutes = 100
vm = "vm1"
[[step]]
action = "unplanned_failover"
at_minutes = 130
vm = "vm1"
point = "latest"
[[step]]
action = "commit"
at_minutes = 131
vm = "vm1"
[[step]]
action = "failback"
at_minutes = 150
vm = "vm1"
"#;

fn run(seed: u64) -> sim::Report {
    let scenario = sim::Scenario::parse(DRILL).unwrap();
    let dir = tempfile::tempdir().unwrap();
    sim::run(&scenario, seed, dir.path()).unwrap()
}

#[test]
fn same_seed_same_trace_and_every_invariant_holds() {
    let a = run(7);
    let b = run(7);
    assert_eq!(a, b, "two runs of one seed differ");
    assert!(a.passed(), "{:#?}", a.checks);
    for d in &a.disks {
        assert!(d.failed_cycles > 0, "the WAN outage failed no cycle: {d:?}");
        assert_eq!(d.resyncs, 1, "the host crash forces one resync: {d:?}");
        assert!(d.points_verified >= 5, "{d:?}");
        assert_eq!(d.points_verified, d.points_live, "{d:?}");
        assert!(d.app_consistent_points >= 1, "{d:?}");
    }
    let jobs: Vec<(&str, bool)> = a
        .jobs
        .iter()
        .map(|j| (j.name.as_str(), j.succeeded))
        .collect();
    assert_eq!(
        jobs,
        [
            ("test failover", true),
            ("cleanup test failover", true),
            ("unplanned failover", true),
            ("commit", true),
            ("failback", true)
        ]
    );
    assert!(a
        .checks
        .iter()
        .any(|c| c.name.contains("cleanup leaves nothing")));
    let c = run(8);
    assert_ne!(a.trace_hash, c.trace_hash, "the seed changes nothing");
    assert!(c.passed(), "{:#?}", c.checks);
}

#[test]
fn the_timeline_draws_every_disk_fault_and_job() {
    let report = run(7);
    let svg = sim::timeline::svg(&report);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), report.disks.len());
    assert_eq!(svg.matches("<circle").count(), report.jobs.len());
    // Outages and storms are bands; crashes are instants.
    assert_eq!(svg.matches("<rect").count(), 2);
    assert!(svg.contains("<title>host crash</title>"));
}
