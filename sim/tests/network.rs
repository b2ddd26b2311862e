//! The WAN as a replicating host sees it: when one upload connection carries less than the
//! link (`[network] connection_kbps`: its TCP window over the round trip), a cycle's records
//! go over the policy's `upload_threads` connections, so more threads finish sooner — ASR's
//! UploadThreadsPerVM.

fn first_point_minutes(threads: u32, connection_kbps: Option<u64>) -> f64 {
    let network = connection_kbps.map_or(String::new(), |c| format!("connection_kbps = {c}\n"));
    let text = format!(
        "name = \"threads\"\nduration_hours = 1\n[network]\nbandwidth_mbps = 100\n{network}\
         [workload]\nincompressible = true\n[policy]\ncopy_frequency_secs = 300\nupload_threads = {threads}\n\
         [[vm]]\nname = \"a\"\n[[vm.disk]]\nname = \"d\"\nsize_mib = 64\nused_mib = 32\nchurn_kib_per_hour = 256\nhot_spot = 0.0\n"
    );
    let scenario = sim::Scenario::parse(&text).unwrap();
    let report = sim::run(&scenario, 1).unwrap();
    let failed: Vec<_> = report.checks.iter().filter(|c| !c.ok).collect();
    assert!(failed.is_empty(), "{failed:?}");
    report.disks[0].first_point_minute.unwrap()
}

#[test]
fn upload_threads_multiply_what_one_connection_carries() {
    // 32 MiB over 2 Mbit/s connections: one thread takes ~2.2 minutes, eight ~17 s; the
    // 100 Mbit/s link itself would take ~3 s.
    let one = first_point_minutes(1, Some(2_000));
    let eight = first_point_minutes(8, Some(2_000));
    let unlimited = first_point_minutes(1, None);
    assert!(one > 2.0 && one < 2.6, "one thread: {one} min");
    assert!(eight > 0.2 && eight < 0.4, "eight threads: {eight} min");
    assert!(unlimited < 0.1, "no connection limit: {unlimited} min");
    // With connections faster than the link, threads change nothing.
    assert_eq!(
        first_point_minutes(1, Some(200_000)),
        first_point_minutes(8, Some(200_000))
    );
}
