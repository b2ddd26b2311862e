//! The disks' workload over a day: with busy hours (`peak_hours`, `peak_share`) each hour
//! writes its share of the day's churn, so the planner's peak-hour predictions can be checked
//! against the simulation (`drplane plan --verify`).

/// MiB the one disk's workload wrote in the first `hours` hours (the run starts at midnight UTC).
fn written_mib(hours: u64, peak: &str) -> f64 {
    let text = format!(
        "name = \"day\"\nduration_hours = {hours}\n[workload]\n{peak}\n[policy]\ncopy_frequency_secs = 900\n\
         [[vm]]\nname = \"a\"\n[[vm.disk]]\nname = \"d\"\nsize_mib = 64\nchurn_mib_per_hour = 4\nhot_spot = 0.0\n"
    );
    let scenario = sim::Scenario::parse(&text).unwrap();
    let report = sim::run(&scenario, 1).unwrap();
    let failed: Vec<_> = report.checks.iter().filter(|c| !c.ok).collect();
    assert!(failed.is_empty(), "{failed:?}");
    report.disks[0].bytes_written_by_workload as f64 / f64::from(1 << 20)
}

fn near(got: f64, want: f64) -> bool {
    (got - want).abs() <= want * 0.02
}

#[test]
fn busy_hours_write_their_share_of_the_day_and_the_rest_spread_evenly() {
    // 4 MiB/h on average is 96 MiB a day; half of it in 00:00-06:00 (16 MiB/h), the other half
    // over the 18 other hours (2.67 MiB/h).
    let peak = "peak_hours = \"0-6\"\npeak_share = 0.5";
    let busy = written_mib(6, peak);
    let day_half = written_mib(12, peak);
    assert!(near(busy, 48.0), "busy hours wrote {busy} MiB");
    assert!(
        near(day_half - busy, 16.0),
        "six quiet hours wrote {} MiB",
        day_half - busy
    );
    // Without busy hours: 4 MiB every hour.
    let even = written_mib(6, "");
    assert!(near(even, 24.0), "an even workload wrote {even} MiB in 6 h");
}
