//! `drplane sim run` from the command line: a small scenario file passes and reports its trace
//! hash (the same twice); a hostile scenario is refused with one line naming the field.

mod common;

use common::*;

#[test]
fn a_scenario_runs_reproducibly_and_a_hostile_one_is_refused() {
    let dir = temp_dir();
    let file = file_in(dir.path(), "small.toml");
    std::fs::write(&file, SMALL_SCENARIO).unwrap();
    let run = || {
        let out = run_ok(drplane().args(["sim", "run", path_str(&file), "--json"]));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let (a, b) = (run(), run());
    assert_eq!(a["trace_hash"], b["trace_hash"]);
    // The summary reads as words, not Rust debug text (it said "limit None").
    let text = run_ok(drplane().args(["sim", "run", path_str(&file)]));
    let text = String::from_utf8_lossy(&text.stdout);
    for debug in ["None", "Some(", " { "] {
        assert!(
            !text.contains(debug),
            "debug text {debug:?} in the summary:\n{text}"
        );
    }
    assert!(
        text.contains("no snapshot limit (standard storage)"),
        "{text}"
    );
    assert!(
        a["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true),
        "{a}"
    );
    // register, test failover, cleanup.
    assert_eq!(a["jobs"].as_array().unwrap().len(), 3);

    std::fs::write(
        &file,
        SMALL_SCENARIO.replace("size_mib = 4", "size_mib = 99999999"),
    )
    .unwrap();
    let out = drplane()
        .args(["sim", "run", path_str(&file)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vm[0].disk[0].size_mib"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn plan_reads_a_workload_file_and_flags_and_verifies_by_simulation() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("workload.toml");
    std::fs::write(
        &file,
        "vms = 2\ndisks_per_vm = 2\ndisk_gib = 64\nused_gib = 16\nchurn_gib_per_day = 8\nprofile = \"standard\"\nbandwidth_mbps = 50\n[policy]\ncopy_frequency_secs = 300\nretention_hours = 8\n",
    )
    .unwrap();
    let out = drplane()
        .arg("plan")
        .arg(&file)
        .args(["--vms", "3", "--verify", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["input"]["vms"], 3, "the flag overrides the file");
    assert_eq!(v["plan"]["verdicts"].as_array().unwrap().len(), 3);
    assert_eq!(v["plan"]["snapshots_per_blob"], 19);
    let comparisons = v["verification"]["comparisons"].as_array().unwrap();
    assert!(comparisons.len() >= 2);
    for c in comparisons {
        assert!(c["relative_error"].as_f64().unwrap() < 0.35, "{c}");
    }
    // A bad workload is named, not a panic.
    let out = drplane()
        .args(["plan", "--disk-gib", "10", "--used-gib", "20"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("used_gib") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn plan_takes_groups_of_different_vms_and_names_each_in_its_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mixed.toml");
    std::fs::write(
        &file,
        "profile = \"standard\"\nbandwidth_mbps = 200\ndisk_gib = 40\nchurn_gib_per_day = 5\n\
         [[group]]\nname = \"web\"\nvms = 2\n\
         [[group]]\nname = \"db\"\ndisks_per_vm = 2\ndisk_gib = 100\nchurn_gib_per_day = 250\n",
    )
    .unwrap();
    let out = run_ok(drplane().arg("plan").arg(&file).args(["--disk-gib", "30"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("churn per VM in web at peak"), "{text}");
    assert!(text.contains("  web-2: fits"), "{text}");
    assert!(
        text.contains("  db-1: exceeds: churn 3.11 MB/s at peak is over the 2 MB/s"),
        "{text}"
    );
    // The top-level VM count belongs to VMs alike, not to groups.
    let out = drplane()
        .arg("plan")
        .arg(&file)
        .args(["--vms", "3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("each group says how many VMs"));
}

/// The simulated world lives in memory: a run writes nothing in its working directory, its
/// temporary directory or `/dev/shm`. `--workdir` keeps the stores and trackers instead.
#[test]
fn sim_run_leaves_no_file_behind_unless_told_to_keep_the_stores() {
    let dir = temp_dir();
    let (cwd, tmp) = (dir.path().join("cwd"), dir.path().join("tmp"));
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    let scenario = dir.path().join("small.toml");
    std::fs::write(&scenario, SMALL_SCENARIO).unwrap();
    let shm_before = shm_entries();
    run_ok(drplane().current_dir(&cwd).env("TMPDIR", &tmp).args([
        "sim",
        "run",
        path_str(&scenario),
    ]));
    for d in [&cwd, &tmp] {
        let left: Vec<_> = std::fs::read_dir(d).unwrap().collect();
        assert!(left.is_empty(), "{} holds {left:?}", d.display());
    }
    assert_eq!(shm_entries(), shm_before, "nothing new in /dev/shm");

    let kept = dir.path().join("kept");
    run_ok(drplane().args([
        "sim",
        "run",
        path_str(&scenario),
        "--workdir",
        path_str(&kept),
    ]));
    assert!(kept.join("store/store.json").is_file());
    assert!(kept.join("trackers/vm-os.ctb").is_file());
}

/// The drplane entries in `/dev/shm` (none where the machine has no `/dev/shm`).
fn shm_entries() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("drplane"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Output to a reader that went away (`drplane sim run … | head -1`) ends the command as a
/// shell's tools end, with status 141 and nothing on stderr: std's `println!` panicked there,
/// with a backtrace.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let dir = temp_dir();
    let file = file_in(dir.path(), "small.toml");
    std::fs::write(&file, SMALL_SCENARIO).unwrap();
    let mut child = drplane()
        .args(["sim", "run", path_str(&file)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the report is printed (the drill runs first).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
