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

/// Run scenario `text` with `seed` (in memory).
fn run_text(text: &str, seed: u64) -> sim::Report {
    let scenario = sim::Scenario::parse(text).unwrap();
    sim::run(&scenario, seed).unwrap()
}

/// The world's files in memory or in a directory: the same run, event for event; the
/// directory holds the stores and trackers afterwards, and memory leaves nothing behind.
#[test]
fn a_run_in_a_directory_matches_a_run_in_memory() {
    let scenario = sim::Scenario::parse(DRILL).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let on_disk = sim::run_in(
        &scenario,
        7,
        &sim::Storage::Directory(dir.path().to_path_buf()),
    )
    .unwrap();
    let in_memory = sim::run(&scenario, 7).unwrap();
    assert_same_run(&on_disk, &in_memory);
    for kept in ["store/store.json", "trackers"] {
        assert!(dir.path().join(kept).exists(), "{kept} kept");
    }
    assert!(!std::path::Path::new("/drplane-sim").exists());
}

/// A run made from a thread of a rayon pool — one thread, so nothing the run hands the pool
/// can be taken by another — finishes, and is the same run as one made from outside.
#[test]
fn a_run_inside_a_one_thread_pool_is_the_same_run() {
    let scenario = sim::Scenario::parse(DRILL).unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    let in_pool = scenario.clone();
    std::thread::spawn(move || {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let _ = done.send(pool.install(|| sim::run(&in_pool, 7)));
    });
    // A wait for work queued behind the waiting thread itself would never end.
    let inside = finished
        .recv_timeout(std::time::Duration::from_secs(300))
        .expect("the run inside a one-thread pool finished")
        .unwrap();
    let outside = sim::run(&scenario, 7).unwrap();
    assert_same_run(&inside, &outside);
}

/// Two runs that must be one: the same trace, and the same report to the byte.
fn assert_same_run(a: &sim::Report, b: &sim::Report) {
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(
        serde_json::to_string(a).unwrap(),
        serde_json::to_string(b).unwrap()
    );
}

/// The jobs as (name, succeeded).
fn outcomes(report: &sim::Report) -> Vec<(&str, bool)> {
    report
        .jobs
        .iter()
        .map(|j| (j.name.as_str(), j.succeeded))
        .collect()
}

fn run(seed: u64) -> sim::Report {
    run_text(DRILL, seed)
}

#[test]
fn same_seed_same_trace_and_every_invariant_holds() {
    let a = run(7);
    let b = run(7);
    assert_eq!(a, b, "two runs of one seed differ");
    assert!(a.passed(), "{:#?}", a.checks);
    for d in &a.disks {
        assert!(d.failed_cycles > 0, "the WAN outage failed no cycle: {d:?}");
        // The host crash forces one resync; re-protection after a failback another.
        let failed_back = a
            .jobs
            .iter()
            .any(|j| j.name == "failback" && j.vm == d.vm && j.succeeded);
        assert_eq!(d.resyncs, 1 + u64::from(failed_back), "{d:?}");
        assert!(d.points_verified >= 5, "{d:?}");
        assert_eq!(d.points_verified, d.points_live, "{d:?}");
        assert!(d.app_consistent_points >= 1, "{d:?}");
    }
    let jobs = outcomes(&a);
    assert_eq!(
        jobs,
        [
            ("register", true),
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
    // Job durations: a failover creates the VM in Azure (two minutes) after its restore.
    for j in a.jobs.iter().filter(|j| j.succeeded) {
        let least = match j.name.as_str() {
            "test failover" | "unplanned failover" => 120,
            "planned failover" => 180,
            "failback" => 120,
            "commit" => 30,
            _ => 1,
        };
        assert!(j.seconds >= least, "{j:?}");
    }
    // The vault's health events: the crash's resync warning, and health back to normal.
    assert!(a
        .health_events
        .iter()
        .any(|e| e.severity == sim::report::Severity::Warning
            && e.message
                .contains("resynchronization required: tracking stopped uncleanly")));
    assert!(a
        .health_events
        .iter()
        .any(|e| e.severity == sim::report::Severity::Healthy));
    assert!(a
        .health_events
        .windows(2)
        .all(|w| w[0].minute <= w[1].minute));
    // Replicated items: one per VM; the failed-back VM is protected again.
    let vms: std::collections::BTreeSet<&str> = a.disks.iter().map(|d| d.vm.as_str()).collect();
    assert_eq!(a.replicated_items.len(), vms.len());
    for item in &a.replicated_items {
        assert_eq!(item.state, "Protected", "{item:?}");
        assert!(item
            .disks
            .iter()
            .all(|d| d.replicated && d.points_live >= 5));
    }
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
    // A circle per job that succeeded, a cross per job that failed, one of each in the legend.
    let succeeded = report.jobs.iter().filter(|j| j.succeeded).count();
    assert_eq!(svg.matches("<circle").count(), succeeded + 1);
    assert_eq!(
        svg.matches(r##"stroke="#d62728" stroke-width="2.5""##)
            .count(),
        report.jobs.len() - succeeded + 1
    );
    // Outages and storms are bands; crashes are instants.
    assert_eq!(svg.matches(r#"fill-opacity="0.75""#).count(), 2);
    assert!(svg.contains("<title>host crash: minute "), "{svg}");
}

#[test]
fn an_unavailable_target_ip_fails_the_failover_and_nics_follow_the_size() {
    let text = r#"
name = "ip-conflict"
duration_hours = 1
[[vm_network]]
name = "corp"
subnets = ["app"]
[[vnet]]
name = "dr"
subnets = ["default"]
[[network_mapping]]
vm_network = "corp"
vnet = "dr"
[[vm]]
name = "a"
size = "Standard_D2s_v3"
[[vm.nic]]
network = "corp"
subnet = "app"
target_ip = "10.0.0.5"
[[vm.nic]]
network = "corp"
subnet = "app"
[[vm.nic]]
network = "corp"
subnet = "app"
[[vm.disk]]
name = "os"
size_mib = 4
churn_mib_per_hour = 2
[[vm.disk]]
name = "swap"
size_mib = 4
churn_mib_per_hour = 50
exclude = true
[[vm]]
name = "b"
[[vm.nic]]
network = "corp"
subnet = "app"
target_ip = "10.0.0.5"
[[vm.disk]]
name = "os"
size_mib = 4
churn_mib_per_hour = 2
[[step]]
action = "unplanned_failover"
at_minutes = 30
vm = "a"
[[step]]
action = "test_failover"
at_minutes = 31
vm = "b"
[[step]]
action = "unplanned_failover"
at_minutes = 32
vm = "b"
"#;
    let report = run_text(text, 1);
    let jobs: Vec<(&str, bool, &str)> = report
        .jobs
        .iter()
        .map(|j| (j.name.as_str(), j.succeeded, j.detail.as_str()))
        .collect();
    assert!(
        jobs[1].1 && jobs[1].2.contains("2 of 3 NICs on dr/default 10.0.0.5"),
        "{jobs:?}"
    );
    assert!(
        jobs[2].1,
        "a test failover may reuse the IP in its isolated network: {jobs:?}"
    );
    assert!(
        !jobs[3].1 && jobs[3].2.contains("10.0.0.5") && jobs[3].2.contains("not available"),
        "{jobs:?}"
    );
    assert_eq!(report.excluded_disks, ["a/swap"]);
    assert_eq!(report.disks.len(), 2, "the excluded disk is not replicated");
    // The OS disk can never be excluded.
    let os_excluded = text.replacen(
        "churn_mib_per_hour = 2\n",
        "churn_mib_per_hour = 2\nexclude = true\n",
        1,
    );
    let err = sim::Scenario::parse(&os_excluded).unwrap_err().to_string();
    assert!(err.contains("OS disk"), "{err}");
}

#[test]
fn recovery_plans_run_in_order_disks_cannot_be_added_and_expired_credentials_stop_registration() {
    let base = r#"
name = "plans"
duration_hours = 1
[[vm]]
name = "db"
[[vm.disk]]
name = "os"
size_mib = 4
churn_mib_per_hour = 2
[[vm]]
name = "app"
[[vm.disk]]
name = "os"
size_mib = 4
churn_mib_per_hour = 2
[[step]]
action = "add_disk"
at_minutes = 20
vm = "app"
[[step]]
action = "recovery_plan_failover"
at_minutes = 40
vms = ["db", "app"]
"#;
    let report = run_text(base, 1);
    let jobs: Vec<(&str, &str, bool)> = report
        .jobs
        .iter()
        .map(|j| (j.name.as_str(), j.vm.as_str(), j.succeeded))
        .collect();
    assert_eq!(
        jobs,
        [
            ("register", "hyperv-host", true),
            ("add disk", "app", false),
            ("unplanned failover", "db", true),
            ("unplanned failover", "app", true)
        ]
    );
    assert!(report.jobs[1].detail.contains("disable replication"));
    assert!(report.passed(), "{:#?}", report.checks);

    // Credentials downloaded six days before: the provider cannot register.
    let expired = format!("{base}\n[registration]\nissued_hours_before_start = 144\n");
    let report = run_text(&expired, 1);
    assert!(!report.jobs[0].succeeded);
    assert!(
        report.jobs[0].detail.contains("expired"),
        "{}",
        report.jobs[0].detail
    );
    assert!(report.disks.iter().all(|d| d.cycles == 0));
}

#[test]
fn managed_disks_follow_asrs_rules() {
    let base = r#"
name = "managed"
duration_hours = 1
[storage]
sse_encrypted_ever = true
[[vm]]
name = "vm"
managed_disks = true
availability_set = "managed"
[[vm.disk]]
name = "os"
size_mib = 4
churn_mib_per_hour = 2
[[step]]
action = "unplanned_failover"
at_minutes = 30
vm = "vm"
[[step]]
action = "use_managed_disks_no"
at_minutes = 31
vm = "vm"
[[step]]
action = "unplanned_failover"
at_minutes = 32
vm = "vm"
[[step]]
action = "failback"
at_minutes = 50
vm = "vm"
"#;
    let report = run_text(base, 1);
    let jobs = outcomes(&report);
    assert_eq!(
        jobs,
        [
            ("register", true),
            ("unplanned failover", false),
            ("update replicated item", true),
            ("unplanned failover", true),
            ("failback", true)
        ],
        "{:#?}",
        report.jobs
    );
    assert!(report.jobs[1].detail.contains("SSE"));
    // Without SSE, managed disks are made at failover, and such a VM cannot fail back.
    let clean = base
        .replace("sse_encrypted_ever = true", "sse_encrypted_ever = false")
        .replace(
            "action = \"use_managed_disks_no\"",
            "action = \"use_managed_disks_yes\"",
        );
    let report = run_text(&clean, 1);
    let last = report.jobs.last().unwrap();
    assert!(
        !last.succeeded && last.detail.contains("managed disks"),
        "{last:?}"
    );
    // The availability set must match the setting.
    let mismatch = base.replace(
        "availability_set = \"managed\"",
        "availability_set = \"unmanaged\"",
    );
    let err = sim::Scenario::parse(&mismatch).unwrap_err().to_string();
    assert!(
        err.contains("availability_set") && err.contains("must match"),
        "{err}"
    );
}

#[test]
fn a_host_clock_skewed_either_way_breaks_nothing() {
    let text = r#"
name = "skew"
duration_hours = 3
[policy]
copy_frequency_secs = 300
retention_hours = 2
[[vm]]
name = "vm"
[[vm.disk]]
name = "os"
size_mib = 4
churn_mib_per_hour = 6
[[fault]]
kind = "clock_skew"
at_minutes = 40
seconds = 1800
[[fault]]
kind = "clock_skew"
at_minutes = 90
seconds = -2400
[[fault]]
kind = "clock_skew"
at_minutes = 140
seconds = 0
[[step]]
action = "unplanned_failover"
at_minutes = 170
vm = "vm"
point = "latest"
"#;
    let report = run_text(text, 5);
    assert!(report.passed(), "{:#?}", report.checks);
    assert!(
        report.jobs.iter().all(|j| j.succeeded),
        "{:#?}",
        report.jobs
    );
    assert!(report.disks[0].cycles >= 25, "{:?}", report.disks[0]);
}

#[test]
fn a_clean_agent_restart_keeps_tracking_without_a_resync() {
    let text = r#"
name = "restart"
duration_hours = 2
[[vm]]
name = "vm"
[[vm.disk]]
name = "os"
size_mib = 4
churn_mib_per_hour = 30
[[fault]]
kind = "agent_restart"
at_minutes = 50
"#;
    let report = run_text(text, 2);
    assert!(report.passed(), "{:#?}", report.checks);
    let d = &report.disks[0];
    assert_eq!(
        d.resyncs, 0,
        "a clean restart must not force a resync: {d:?}"
    );
    assert!(d.points_verified >= 12, "{d:?}");
    // A crash at the same moment does force one.
    let crash = text.replace("agent_restart", "host_crash");
    assert_eq!(run_text(&crash, 2).disks[0].resyncs, 1);
}

#[test]
fn clouds_give_their_vms_the_associated_policy_and_networks() {
    let base = r#"
name = "clouds"
duration_hours = 3
[storage]
profile = "PROFILE"
[policy]
copy_frequency_secs = 300
[[vm_network]]
name = "corp"
subnets = ["a"]
[[vm_network]]
name = "lab"
subnets = ["a"]
[[logical_network]]
name = "dc"
vm_networks = ["corp"]
[[replication_policy]]
name = "slow"
copy_frequency_secs = FREQ
retention_hours = 2
[[cloud]]
name = "gold"
policy = "slow"
logical_networks = ["dc"]
[[cloud]]
name = "bare"
logical_networks = ["dc"]
[[vm]]
name = "in-cloud"
cloud = "CLOUD"
[[vm.nic]]
network = "NET"
subnet = "a"
[[vm.disk]]
name = "os"
size_mib = 4
churn_mib_per_hour = 6
[[vm]]
name = "outside"
[[vm.disk]]
name = "os"
size_mib = 4
churn_mib_per_hour = 6
"#;
    let text = |profile: &str, freq: &str, cloud: &str, net: &str| {
        base.replace("PROFILE", profile)
            .replace("FREQ", freq)
            .replace("CLOUD", cloud)
            .replace("NET", net)
    };
    let report = run_text(&text("standard", "900", "gold", "corp"), 4);
    assert!(report.passed(), "{:#?}", report.checks);
    let cycles = |vm: &str| report.disks.iter().find(|d| d.vm == vm).unwrap().cycles;
    // Three hours: the cloud's 15-minute policy against the scenario's 5-minute one.
    assert!(cycles("in-cloud") <= 13, "{}", cycles("in-cloud"));
    assert!(cycles("outside") >= 35, "{}", cycles("outside"));
    let item = &report.replicated_items[0];
    assert_eq!(item.cloud.as_deref(), Some("gold"));
    assert!(item.policy.starts_with("slow (900 s"), "{}", item.policy);
    // What VMM and the vault refuse, each named.
    for (scenario, needle) in [
        (
            text("premium", "30", "gold", "corp"),
            "replication_policy slow",
        ),
        (
            text("standard", "900", "bare", "corp"),
            "no replication policy",
        ),
        (
            text("standard", "900", "gold", "lab"),
            "cloud gold's logical networks",
        ),
        (
            text("standard", "900", "nowhere", "corp"),
            "a cloud of the scenario",
        ),
    ] {
        let err = sim::Scenario::parse(&scenario).unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let premium_30 = sim::Scenario::parse(&text("premium", "30", "gold", "corp"))
        .unwrap_err()
        .to_string();
    assert!(premium_30.contains("100"), "{premium_30}");
}

#[test]
fn a_host_crash_stops_only_the_agents_of_its_host() {
    let text = r#"
name = "hosts"
duration_hours = 2
[[host]]
name = "hv01"
[[host]]
name = "hv02"
[[vm]]
name = "a"
host = "hv01"
[[vm.disk]]
name = "os"
size_mib = 4
churn_mib_per_hour = 6
[[vm]]
name = "b"
host = "hv02"
[[vm.disk]]
name = "os"
size_mib = 4
churn_mib_per_hour = 6
[[fault]]
kind = "host_crash"
at_minutes = 40
host = "hv01"
"#;
    let report = run_text(text, 3);
    assert!(report.passed(), "{:#?}", report.checks);
    let resyncs = |vm: &str| report.disks.iter().find(|d| d.vm == vm).unwrap().resyncs;
    assert_eq!((resyncs("a"), resyncs("b")), (1, 0));
    let registered: Vec<&str> = report
        .jobs
        .iter()
        .filter(|j| j.name == "register")
        .map(|j| j.vm.as_str())
        .collect();
    assert_eq!(registered, ["hv01", "hv02"]);
    assert_eq!(report.replicated_items[1].host, "hv02");
    let err = sim::Scenario::parse(&text.replace(
        "at_minutes = 40\nhost = \"hv01\"",
        "at_minutes = 40\nhost = \"hv09\"",
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("a host of the scenario"), "{err}");
}

#[test]
fn a_host_crash_inside_a_cycle_cuts_its_writes_and_nothing_is_lost() {
    let text = r#"
name = "mid-cycle"
duration_hours = 2
[storage]
profile = "PROFILE"
[policy]
copy_frequency_secs = 300
block_size_kib = 16
[[vm]]
name = "vm"
[[vm.disk]]
name = "os"
size_mib = 8
churn_mib_per_hour = 40
[[fault]]
kind = "host_crash"
at_minutes = 31
mid_cycle = true
[[fault]]
kind = "host_crash"
at_minutes = 61
mid_cycle = true
"#;
    for profile in ["standard", "premium"] {
        for seed in 1..4 {
            let report = run_text(&text.replace("PROFILE", profile), seed);
            assert!(report.passed(), "{profile} {seed}: {:#?}", report.checks);
            let d = &report.disks[0];
            assert!(d.crashed_cycles >= 1, "{profile} {seed}: {d:?}");
            assert!(d.resyncs >= 2, "{profile} {seed}: {d:?}");
        }
    }
}
