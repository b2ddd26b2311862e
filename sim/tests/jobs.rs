//! Job durations come from the cost model in true time: a host clock skewed from true time
//! changes when the host thinks things happen, not how long a planned failover takes.

fn planned_failover_seconds(skew_secs: i64) -> u64 {
    let skew = if skew_secs == 0 {
        String::new()
    } else {
        format!("[[fault]]\nkind = \"clock_skew\"\nat_minutes = 20\nseconds = {skew_secs}\n")
    };
    let text = format!(
        "name = \"skewed-failover\"\nduration_hours = 2\n[network]\nbandwidth_mbps = 20\n\
         [policy]\ncopy_frequency_secs = 300\n\
         [[vm]]\nname = \"a\"\n[[vm.disk]]\nname = \"d\"\nsize_mib = 16\nchurn_mib_per_hour = 24\n\
         {skew}[[step]]\naction = \"planned_failover\"\nat_minutes = 60\nvm = \"a\"\n"
    );
    let scenario = sim::Scenario::parse(&text).unwrap();
    let report = sim::run(&scenario, 1).unwrap();
    let failed: Vec<_> = report.checks.iter().filter(|c| !c.ok).collect();
    assert!(failed.is_empty(), "skew {skew_secs}: {failed:?}");
    let job = report
        .jobs
        .iter()
        .find(|j| j.name.to_lowercase().contains("planned failover"))
        .unwrap_or_else(|| panic!("no planned failover job: {:?}", report.jobs));
    assert!(job.succeeded, "{job:?}");
    job.seconds
}

#[test]
fn a_skewed_host_clock_does_not_stretch_a_planned_failover() {
    let plain = planned_failover_seconds(0);
    for skew in [600, -600, 3000] {
        let skewed = planned_failover_seconds(skew);
        assert!(
            skewed.abs_diff(plain) <= 5,
            "skew {skew} s: planned failover took {skewed} s, {plain} s without skew"
        );
    }
}

/// Swarm seed 1270, reduced: the agent restarts a minute before a failback, so the failback
/// copies blocks home while the agent is down. Those writes must reach the next agent's
/// tracker, or its first tracked delta leaves them out and the point does not restore.
#[test]
fn failback_writes_while_the_agent_restarts_reach_the_next_agent() {
    for restart_before in [1, 0] {
        let text = format!(
            "name = \"failback-restart\"\nduration_hours = 3\n[network]\nbandwidth_mbps = 100\n\
             [policy]\ncopy_frequency_secs = 300\nretention_hours = 3\n\
             [[vm]]\nname = \"a\"\n[[vm.disk]]\nname = \"d\"\nsize_mib = 23\nchurn_mib_per_hour = 34\nhot_spot = 0.7\n\
             [[fault]]\nkind = \"agent_restart\"\nat_minutes = {}\n\
             [[step]]\naction = \"unplanned_failover\"\nat_minutes = 87\nvm = \"a\"\npoint = \"latest\"\n\
             [[step]]\naction = \"commit\"\nat_minutes = 88\nvm = \"a\"\n\
             [[step]]\naction = \"failback\"\nat_minutes = 99\nvm = \"a\"\n",
            99 - restart_before
        );
        let scenario = sim::Scenario::parse(&text).unwrap();
        let report = sim::run(&scenario, 1270).unwrap();
        let failed: Vec<_> = report.checks.iter().filter(|c| !c.ok).collect();
        assert!(
            failed.is_empty(),
            "restart {restart_before} min before: {failed:?}"
        );
        let failback = report
            .jobs
            .iter()
            .find(|j| j.name.to_lowercase().contains("failback"))
            .expect("a failback job");
        assert!(failback.succeeded, "{failback:?}");
    }
}

/// A point arrives when its cycle completes in simulated time, not when the cycle starts: an
/// unplanned failover in the middle of the initial replication over a slow WAN finds no point
/// (the data has not arrived), and one after it completes restores that point.
#[test]
fn a_failover_during_initial_replication_finds_no_point_that_has_not_arrived() {
    let text = "name = \"slow-initial\"\nduration_hours = 1\n\
        [network]\nbandwidth_mbps = 1\n[workload]\nincompressible = true\n\
        [policy]\ncopy_frequency_secs = 300\n\
        [[vm]]\nname = \"a\"\n[[vm.disk]]\nname = \"d\"\nsize_mib = 64\nused_mib = 48\n\
        churn_mib_per_hour = 1\n\
        [[step]]\naction = \"unplanned_failover\"\nat_minutes = 3\nvm = \"a\"\n\
        [[step]]\naction = \"commit\"\nat_minutes = 4\nvm = \"a\"\n";
    let scenario = sim::Scenario::parse(text).unwrap();
    let report = sim::run(&scenario, 1).unwrap();
    let failed: Vec<_> = report.checks.iter().filter(|c| !c.ok).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let disk = &report.disks[0];
    // 48 MiB of random data at 1 Mbit/s: the first cycle runs for over six minutes.
    assert!(
        disk.max_steady_cycle_secs > 360.0 || disk.max_rpo_secs > 360.0,
        "{disk:?}"
    );
    let failover = report
        .jobs
        .iter()
        .find(|j| j.name == "unplanned failover")
        .unwrap();
    assert!(!failover.succeeded, "{failover:?}");
    assert!(
        failover.detail.contains("no such recovery point"),
        "{failover:?}"
    );

    // The same failover once the cycle has completed restores its point.
    let later = sim::Scenario::parse(
        &text
            .replace("at_minutes = 3", "at_minutes = 12")
            .replace("at_minutes = 4", "at_minutes = 13"),
    )
    .unwrap();
    let report = sim::run(&later, 1).unwrap();
    let failed: Vec<_> = report.checks.iter().filter(|c| !c.ok).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let failover = report
        .jobs
        .iter()
        .find(|j| j.name == "unplanned failover")
        .unwrap();
    assert!(failover.succeeded, "{failover:?}");
}
