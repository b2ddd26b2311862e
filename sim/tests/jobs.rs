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
    let dir = sim::swarm::scratch_dir().unwrap();
    let report = sim::run(&scenario, 1, dir.path()).unwrap();
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
