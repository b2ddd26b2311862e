//! `drplane bench`: measures a generated disk or a given one (which it never writes), reports
//! every cycle, restores the last point, and refuses bad settings with one clear line.

mod common;

use common::*;
use serde_json::Value;

fn bench_json(args: &[&str]) -> Value {
    let out = run_ok(drplane().arg("bench").args(args).arg("--json"));
    serde_json::from_slice(&out.stdout).expect("bench --json prints JSON")
}

#[test]
fn a_generated_disk_is_measured_through_initial_and_delta_cycles_and_verified() {
    let r = bench_json(&["--size", "8M", "--churn", "1,25", "--sample-mib", "2"]);
    assert_eq!(r["disk_size"], 8 << 20);
    assert_eq!(r["block_size"], 65536);
    assert_eq!(r["blocks"], 128);
    assert!(r["disk"]
        .as_str()
        .unwrap()
        .contains("generated realistic disk (seed 1)"));
    let initial = &r["initial"];
    let nonzero = initial["bytes_changed"].as_u64().unwrap();
    assert!(nonzero > 2 << 20 && nonzero < 8 << 20, "{r}");
    assert!(initial["bytes_sent"].as_u64().unwrap() < nonzero);
    assert!(initial["seconds"].as_f64().unwrap() > 0.0);
    let deltas = r["deltas"].as_array().unwrap();
    assert_eq!(deltas.len(), 2);
    assert_eq!(deltas[0]["churn_percent"], 1.0);
    // 25% of 128 blocks are rewritten; a few of them with zeros over zeros.
    let changed = deltas[1]["blocks_changed"].as_u64().unwrap();
    assert!((20..=32).contains(&changed), "{changed}");
    assert!(r["verify_seconds"].as_f64().is_some());
    assert!(r["stages"]["zstd"].as_f64().unwrap() > 0.0);
    assert!(r["pipeline_efficiency"].as_f64().unwrap() > 0.0);
    // Schema 2: the restore as a stage with its bound, the bound with I/O, flat figures.
    assert_eq!(r["schema"], 2);
    assert!(r["restore"]["bytes_restored"].as_u64().unwrap() > 0);
    assert!(r["restore_efficiency"].as_f64().unwrap() > 0.0);
    assert!(r["replication_efficiency"].as_f64().unwrap() > 0.0);
    assert!(r["io"]["store_write"].as_f64().unwrap() > 0.0);
    let figures = r["figures"].as_object().unwrap();
    for name in [
        "initial_seconds",
        "delta_1pct_seconds",
        "delta_25pct_seconds",
        "restore_seconds",
        "restore_efficiency",
        "stage_store_write_bytes_per_sec",
        "measured_bound_bytes_per_sec",
        "measured_efficiency",
    ] {
        assert!(figures[name].as_f64().unwrap() > 0.0, "{name}: {r}");
    }
    // Where the initial replication's CPU went: the pipeline's pool (which does the
    // transforms) and the rest (the store's writers), within the process's CPU.
    if cfg!(target_os = "linux") {
        let cpu = figures["initial_cpu_seconds"].as_f64().unwrap();
        let pool = figures["initial_pool_cpu_seconds"].as_f64().unwrap();
        let other = figures["initial_other_cpu_seconds"].as_f64().unwrap();
        assert!(pool > 0.0 && pool <= cpu, "{r}");
        assert!((pool + other - cpu).abs() < 1e-6, "{r}");
        assert!(figures["initial_unused_core_seconds"].as_f64().unwrap() >= 0.0);
        // The serial part, from the cycle's own counters, and what it would allow on more
        // cores: never more than the whole bound, never better with more threads.
        let settling = figures["initial_serial_cpu_seconds"].as_f64().unwrap();
        assert!(settling > 0.0 && settling <= pool, "{r}");
        assert!(figures["serial_ceiling_threads"].as_f64().unwrap() > 0.0);
        let projected: Vec<f64> = [4, 8, 16]
            .map(|n| {
                figures[&format!("projected_{n}_thread_efficiency")]
                    .as_f64()
                    .unwrap()
            })
            .to_vec();
        assert!(
            projected[0] <= 1.0 && projected[1] <= projected[0] && projected[2] <= projected[1],
            "{projected:?}"
        );
    }
}

#[test]
fn a_given_vhdx_is_only_read_and_a_given_store_keeps_the_replica() {
    let dir = temp_dir();
    let raw = file_in(dir.path(), "disk.raw");
    let vhdx = file_in(dir.path(), "disk.vhdx");
    run_ok(drplane().args([
        "bench",
        "make-disk",
        path_str(&raw),
        "--size",
        "6M",
        "--seed",
        "3",
    ]));
    // Made again over it: refused without --force (make-disk truncated any file it was given).
    let again = drplane()
        .args(["bench", "make-disk", path_str(&raw), "--size", "1M"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists: give --force"));
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 6 << 20);
    run_ok(drplane().args(["vhdx", "import", path_str(&raw), "-o", path_str(&vhdx)]));
    let before = std::fs::read(&vhdx).unwrap();
    let store = file_in(dir.path(), "store");
    let r = bench_json(&[
        "--disk",
        path_str(&vhdx),
        "--churn",
        "10",
        "--block-size-kib",
        "256",
        "--store",
        path_str(&store),
        "--pipeline-threads",
        "1",
    ]);
    assert_eq!(r["disk_size"], 6 << 20);
    assert_eq!(r["pipeline_threads"], 1);
    assert_eq!(r["block_size"], 256 << 10);
    assert!(r["verify_seconds"].as_f64().is_some());
    assert!(
        std::fs::read(&vhdx).unwrap() == before,
        "bench wrote to the disk"
    );
    let replica = r["replica"].as_str().unwrap().to_string();
    let name = replica.rsplit('/').next().unwrap();
    assert!(name.starts_with("bench-"), "{replica}");
    let listed = run_ok(drplane().args(["blob", "ls", "--store", path_str(&store), "bench"]));
    assert!(String::from_utf8_lossy(&listed.stdout).contains(name));
}

#[test]
fn bad_settings_fail_with_one_line_naming_them() {
    for (args, expected) in [
        (
            &["--size", "4M", "--churn", "150"][..],
            "150% is not between 0 and 100",
        ),
        (
            &["--size", "4M", "--block-size-kib", "48"][..],
            "block_size_kib = 48",
        ),
        (&["--size", "4M", "--sample-mib", "0"][..], "stage sample"),
        (&["--size", "12Q"][..], "unknown unit"),
        (
            &["--disk", "/nonexistent/disk.raw"][..],
            "/nonexistent/disk.raw",
        ),
        // No machine here has 128 TiB free: refused before a byte is written.
        (&["--size", "64T", "--churn", "none"][..], "not enough room"),
        (
            &[
                "make-disk",
                "/tmp/drplane-bench-never-written.raw",
                "--size",
                "64T",
            ][..],
            "not enough room",
        ),
    ] {
        let out = drplane().arg("bench").args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(!std::path::Path::new("/tmp/drplane-bench-never-written.raw").exists());
    // A given disk too big for a replica in the temporary folder (sparse: costs nothing).
    let dir = temp_dir();
    let huge = file_in(dir.path(), "huge.raw");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(15 << 40)
        .unwrap();
    let out = drplane()
        .args(["bench", "--disk", path_str(&huge)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not enough room for the replica of a 15.00 TiB disk"),
        "{stderr}"
    );
}

#[test]
fn several_runs_go_into_their_own_replicas_and_report_medians() {
    let dir = temp_dir();
    let store = file_in(dir.path(), "store");
    let r = bench_json(&[
        "--size",
        "4M",
        "--churn",
        "5,20",
        "--runs",
        "3",
        "--no-verify",
        "--store",
        path_str(&store),
    ]);
    let runs = r["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    let replicas: std::collections::BTreeSet<&str> = runs
        .iter()
        .map(|run| run["replica"].as_str().unwrap())
        .collect();
    assert_eq!(replicas.len(), 3, "{replicas:?}");
    // The same seed changes the same blocks in every run.
    let changed: Vec<&Value> = runs
        .iter()
        .map(|run| &run["deltas"][1]["blocks_changed"])
        .collect();
    assert!(changed.iter().all(|c| *c == changed[0]), "{changed:?}");
    let m = &r["median"];
    assert_eq!(m["runs"], 3);
    assert_eq!(m["delta_seconds"].as_array().unwrap().len(), 2);
    let mut initial: Vec<f64> = runs
        .iter()
        .map(|run| run["initial"]["seconds"].as_f64().unwrap())
        .collect();
    initial.sort_by(f64::total_cmp);
    assert_eq!(m["initial_seconds"].as_f64().unwrap(), initial[1]);
    assert!(m["verify_seconds"].is_null());
    assert_eq!(r["schema"], 2);
    assert_eq!(r["figures"]["initial_seconds"], m["initial_seconds"]);
    assert!(
        r["figures"].get("restore_seconds").is_none(),
        "not verified"
    );
}

#[test]
fn compare_prints_each_figure_s_change_and_can_fail_on_a_regression() {
    let dir = temp_dir();
    let old = file_in(dir.path(), "old.json");
    let new = file_in(dir.path(), "new.json");
    let report = |initial: f64, restore_rate: f64| {
        serde_json::json!({
            "schema": 2,
            "figures": {
                "initial_seconds": initial,
                "restore_bytes_per_sec": restore_rate,
                "replication_efficiency": 0.9,
            }
        })
        .to_string()
    };
    std::fs::write(&old, report(2.0, 1e9)).unwrap();
    std::fs::write(&new, report(2.5, 1.1e9)).unwrap();
    let compare = |extra: &[&str]| {
        drplane()
            .args(["bench", "compare", path_str(&old), path_str(&new)])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = compare(&[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name}: {text}"))
            .to_string()
    };
    assert!(line("initial_seconds").contains("+25.0% (worse)"), "{text}");
    assert!(
        line("restore_bytes_per_sec").contains("+10.0% (better)"),
        "{text}"
    );
    assert!(line("replication_efficiency").contains("(same)"), "{text}");
    // Worse by 25%: fails a 20% limit, passes a 30% one.
    let out = compare(&["--max-regression", "20"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("initial_seconds got 25.0% worse"));
    assert!(compare(&["--max-regression", "30"]).status.success());
    // Reports without the schema, or not JSON, are refused naming the file.
    std::fs::write(&new, r#"{"initial": {"seconds": 1.0}}"#).unwrap();
    let out = compare(&[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("new.json") && stderr.contains("schema"),
        "{stderr}"
    );
    std::fs::write(&new, "not json").unwrap();
    let stderr = String::from_utf8_lossy(&compare(&[]).stderr).to_string();
    assert!(stderr.contains("not JSON"), "{stderr}");
}
