//! End to end with real tools: a VHDX made and changed by qemu, replicated with `drplane
//! replicate` through `drplane register`'s .pfx, and every point restored byte-identical to
//! `qemu-img convert -O raw` of the disk at that cycle.

mod common;

use common::*;

const PW: &str = "cycle-pw";

fn dp(args: &[&str]) -> std::process::Output {
    run_ok(drplane().args(args).env("DRPLANE_PFX_PASSWORD", PW))
}

#[test]
fn qemu_disk_replicated_over_cycles_restores_every_point_byte_exact() {
    qemu_cycles(false);
}

#[test]
fn qemu_disk_replicated_through_blob_serve_restores_every_point_byte_exact() {
    qemu_cycles(true);
}

/// Three cycles of a qemu-made, qemu-changed VHDX into a store directory, or into
/// `drplane blob serve` over HTTP.
fn qemu_cycles(over_http: bool) {
    let dir = temp_dir();
    let d = dir.path();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let server = over_http.then(|| start_server(&d.join("served"), "standard"));
    dp(&["register", "--vault", "vt", "--out", &p("reg")]);
    let pfx = p("reg/vt.pfx");
    let disk = p("disk.vhdx");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vhdx",
        "-o",
        "block_size=1M",
        &disk,
        "48M",
    ]);
    let edits: [&[&str]; 3] = [
        &["write -P 0x61 0 3M", "write -P 0x62 20M 64k"],
        &[
            "write -P 0x63 1M 8k",
            "write -z 20M 64k",
            "write -P 0x64 47M 1M",
        ],
        &["write -P 0x65 10M 4M"],
    ];
    let store = match &server {
        Some(s) => s.endpoint.clone(),
        None => p("store"),
    };
    for (cycle, edit) in edits.iter().enumerate() {
        let cmds: Vec<String> = edit.iter().map(|s| s.to_string()).collect();
        assert!(qemu_io(&disk, &cmds).status.success());
        qemu_convert_to_raw(
            std::path::Path::new(&disk),
            std::path::Path::new(&p(&format!("expected-{cycle}.raw"))),
        );
        let out = dp(&[
            "replicate",
            "--disk",
            &disk,
            "--store",
            &store,
            "--pfx",
            &pfx,
            "--name",
            "disk1",
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["point"], cycle as u64);
        if cycle > 0 {
            assert!(
                v["blocks_changed"].as_u64().unwrap() < v["blocks"].as_u64().unwrap() / 2,
                "delta cycle resent too much: {v}"
            );
        }
    }
    let points = dp(&[
        "points", "--store", &store, "--pfx", &pfx, "--name", "disk1", "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&points.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    for cycle in 0..3 {
        let out = p(&format!("restored-{cycle}.raw"));
        dp(&[
            "restore",
            "--store",
            &store,
            "--pfx",
            &pfx,
            "--name",
            "disk1",
            "--point",
            &cycle.to_string(),
            "-o",
            &out,
            // Decoded on pools of 1, 2 and 3 threads: the same bytes.
            "--threads",
            &(cycle + 1).to_string(),
        ]);
        assert_files_equal(
            std::path::Path::new(&out),
            std::path::Path::new(&p(&format!("expected-{cycle}.raw"))),
        );
    }
    let verify = [
        "verify", "--store", &store, "--pfx", &pfx, "--name", "disk1",
    ];
    let verified = dp(&[&verify[..], &["--json", "--threads", "3"]].concat());
    let v: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert!(v.as_array().unwrap().iter().all(|p| p["ok"] == true), "{v}");
    // By their changes: the same verdicts, fewer records decoded.
    let by_changes = dp(&[&verify[..], &["--changes-only"]].concat());
    let text = String::from_utf8_lossy(&by_changes.stdout);
    assert!(
        text.contains(&format!(
            "{} point(s) verified, 0 failed (",
            v.as_array().unwrap().len()
        )) && text.contains("records decoded: the oldest point and each one's changes)"),
        "{text}"
    );
    // One point, as restore names it.
    let one = dp(&[&verify[..], &["--point", "1", "--json"]].concat());
    let one: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(
        one,
        serde_json::json!([{"point": 1, "ok": true, "deleted_meanwhile": false, "error": null}])
    );
    fails_with(
        &[&verify[..], &["--point", "9"]].concat(),
        "no point 9: the replica holds 0, 1, 2",
    );
    // clap's refusal, which is not one line.
    let no_threads = drplane()
        .args([&verify[..], &["--threads", "0"]].concat())
        .env("DRPLANE_PFX_PASSWORD", PW)
        .output()
        .unwrap();
    assert!(!no_threads.status.success());
    assert!(String::from_utf8_lossy(&no_threads.stderr).contains("--threads"));
    // Another certificate cannot restore, and says why.
    dp(&["register", "--vault", "wt", "--out", &p("reg2")]);
    let other = drplane()
        .args([
            "restore",
            "--store",
            &store,
            "--pfx",
            &p("reg2/wt.pfx"),
            "--name",
            "disk1",
            "-o",
            &p("x.raw"),
        ])
        .env("DRPLANE_PFX_PASSWORD", PW)
        .output()
        .unwrap();
    assert!(!other.status.success());
    assert!(
        String::from_utf8_lossy(&other.stderr)
            .contains("replica disk1 was written with certificate"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    if let Some(server) = server {
        server.stop("-TERM");
    }
}

/// A folder with a registration (`reg/vt.pfx`, vault `vt`) and a 64 KiB raw disk (`disk.raw`).
fn registered_with_disk() -> tempfile::TempDir {
    let dir = temp_dir();
    let reg = dir.path().join("reg");
    dp(&["register", "--vault", "vt", "--out", reg.to_str().unwrap()]);
    std::fs::write(dir.path().join("disk.raw"), vec![1u8; 65536]).unwrap();
    dir
}

fn fails_with(args: &[&str], needle: &str) {
    let out = drplane()
        .args(args)
        .env("DRPLANE_PFX_PASSWORD", PW)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(err.contains(needle), "{args:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn policies_watch_mode_app_points_and_refusals() {
    let dir = temp_dir();
    let d = dir.path();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    dp(&["register", "--vault", "vt", "--out", &p("reg")]);
    let pfx = p("reg/vt.pfx");
    let disk = p("disk.raw");
    let mut bytes: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&disk, &bytes).unwrap();
    let store = p("store");
    let (fast, bad_policy, ok) = (p("fast.toml"), p("bad.toml"), p("ok.toml"));
    // 30-second copies on premium: refused, saying why.
    std::fs::write(&fast, "copy_frequency_secs = 30\n").unwrap();
    let base = [
        "replicate",
        "--disk",
        &disk,
        "--store",
        &store,
        "--pfx",
        &pfx,
        "--name",
        "d",
    ];
    let (premium_store, log_store) = (p("premium"), p("log"));
    let premium = [
        "replicate",
        "--disk",
        &disk,
        "--store",
        &premium_store,
        "--pfx",
        &pfx,
        "--name",
        "d",
        "--profile",
        "premium",
    ];
    let mut too_fast = premium.to_vec();
    too_fast.extend(["--policy", &fast]);
    fails_with(&too_fast, "premium allows 100");
    // Premium cycles are staged in a log on a standard store.
    fails_with(&premium, "needs --log-store");
    // The target store itself, by another path: refused naming the mistake (it failed on the
    // store's own lock, naming this very process).
    let itself = format!("{premium_store}/.");
    let mut onto_itself = premium.to_vec();
    onto_itself.extend(["--log-store", &itself]);
    fails_with(&onto_itself, "is the target store itself");
    let mut staged = premium.to_vec();
    staged.extend(["--log-store", &log_store, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&dp(&staged).stdout).unwrap();
    assert_eq!(v["point"], 0);
    assert!(std::path::Path::new(&log_store).join("store.json").exists());
    dp(&[
        "restore",
        "--store",
        &premium_store,
        "--pfx",
        &pfx,
        "--name",
        "d",
        "-o",
        &p("premium.raw"),
    ]);
    assert!(std::fs::read(p("premium.raw")).unwrap() == bytes);
    // A bad policy field is named.
    std::fs::write(&bad_policy, "upload_threads = 64\n").unwrap();
    let mut bad = base.to_vec();
    bad.extend(["--policy", &bad_policy]);
    fails_with(&bad, "upload_threads = 64");
    // The watch driver runs the machine's first cycle (initial replication) and stops.
    std::fs::write(&ok, "copy_frequency_secs = 900\nblock_size_kib = 128\n").unwrap();
    let mut watch = base.to_vec();
    watch.extend(["--policy", &ok, "--watch", "--cycles", "1", "--json"]);
    let out = dp(&watch);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "initial");
    assert_eq!(v["blocks"], 24, "128 KiB blocks from the policy");
    // A quiescent disk makes an app-consistent point; latest-app restores it.
    let app_image = bytes.clone();
    let mut once = base.to_vec();
    once.extend(["--app-consistent", "--json"]);
    bytes[70_000..80_000].fill(7);
    std::fs::write(&disk, &bytes).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&dp(&once).stdout).unwrap();
    assert_eq!(v["kind"], "delta");
    assert_eq!(v["consistency"], "app-consistent");
    assert_eq!(v["blocks_changed"], 1);
    let app_bytes = bytes.clone();
    bytes[2_000_000] ^= 1;
    std::fs::write(&disk, &bytes).unwrap();
    dp(&base);
    dp(&[
        "restore",
        "--store",
        &store,
        "--pfx",
        &pfx,
        "--name",
        "d",
        "--point",
        "latest-app",
        "-o",
        &p("app.raw"),
    ]);
    assert!(std::fs::read(p("app.raw")).unwrap() == app_bytes);
    assert!(app_bytes != app_image);
    // A raw file whose size is not a multiple of 512 restores to exactly its bytes.
    let odd = p("odd.raw");
    std::fs::write(&odd, &bytes[..70_001]).unwrap();
    dp(&[
        "replicate",
        "--disk",
        &odd,
        "--store",
        &store,
        "--pfx",
        &pfx,
        "--name",
        "odd",
    ]);
    dp(&[
        "restore",
        "--store",
        &store,
        "--pfx",
        &pfx,
        "--name",
        "odd",
        "-o",
        &p("odd.out"),
    ]);
    assert!(std::fs::read(p("odd.out")).unwrap() == bytes[..70_001]);
    // The block size of an existing replica cannot change.
    let mut other_block = base.to_vec();
    other_block.extend(["--block-size-kib", "64"]);
    fails_with(&other_block, "uses 128 KiB blocks");
}

/// As in ASR, the credentials' five days bound registering, not replicating: on day six the
/// registered server still replicates. Without its credentials the server is not registered,
/// and another registration's credentials are refused, each with the reason.
#[test]
fn replication_continues_on_day_six_and_needs_this_servers_registration() {
    let dir = registered_with_disk();
    let d = dir.path();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let args = [
        "replicate",
        "--disk",
        &p("disk.raw"),
        "--store",
        &p("store"),
        "--pfx",
        &p("reg/vt.pfx"),
    ];
    dp(&args);
    // Day six: issued six days ago, expired one day ago.
    let creds = p("reg/vt.VaultCredentials");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&creds).unwrap()).unwrap();
    let day = 24 * 3600 * 1_000_000_000u64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    v["issued_at"] = serde_json::json!(now - 6 * day);
    v["expires_at"] = serde_json::json!(now - day);
    std::fs::write(&creds, serde_json::to_vec(&v).unwrap()).unwrap();
    std::fs::write(p("disk.raw"), vec![2u8; 65536]).unwrap();
    let out = dp(&[&args[..], &["--json"]].concat());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["point"], 1, "day six committed the next point: {v}");
    // Credentials of another registration are refused.
    dp(&["register", "--vault", "wt", "--out", &p("reg2")]);
    let other_creds = p("reg2/wt.VaultCredentials");
    fails_with(
        &[&args[..], &["--credentials", &other_creds]].concat(),
        "the .pfx holds",
    );
    // The same certificate's credentials edited to name another vault are refused.
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&creds).unwrap()).unwrap();
    v["vault"] = serde_json::json!("wt");
    let edited = p("edited.VaultCredentials");
    std::fs::write(&edited, serde_json::to_vec(&v).unwrap()).unwrap();
    fails_with(
        &[&args[..], &["--credentials", &edited]].concat(),
        "vault vt's",
    );
    // No credentials: not registered (deleting them no longer skips the check).
    std::fs::remove_file(&creds).unwrap();
    fails_with(&args, "not registered");
}

/// `--name` follows the replica-name rules (Azure's blob-name rules, and a name is not a
/// path); a refused name creates nothing, not even the store.
#[test]
fn replica_names_outside_the_rules_are_refused_before_anything_is_made() {
    let dir = registered_with_disk();
    let d = dir.path();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let long = "n".repeat(300);
    for bad in ["", ".", "..", "/abs", "a//b", "line\nbreak", &long] {
        let args = [
            "replicate",
            "--disk",
            &p("disk.raw"),
            "--store",
            &p("store"),
            "--pfx",
            &p("reg/vt.pfx"),
            "--name",
            bad,
        ];
        let out = drplane()
            .args(args)
            .env("DRPLANE_PFX_PASSWORD", PW)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--name {bad:?} accepted");
        assert!(err.contains("--name"), "--name {bad:?}: {err}");
        assert!(!d.join("store").exists(), "--name {bad:?} made the store");
    }
    dp(&[
        "replicate",
        "--disk",
        &p("disk.raw"),
        "--store",
        &p("store"),
        "--pfx",
        &p("reg/vt.pfx"),
        "--name",
        "vm-01/disk 0",
    ]);
}

/// Errors say what is wrong in plain words: no Rust debug text, and the cause named as it is
/// (a file given as a store, a directory as a disk, a store of another profile).
#[test]
fn errors_name_the_cause_in_plain_words() {
    let dir = registered_with_disk();
    let d = dir.path();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    std::fs::write(p("a-file"), b"not a store").unwrap();
    std::fs::create_dir(p("a-dir")).unwrap();
    let pfx = p("reg/vt.pfx");
    let replicate = |disk: &str, store: &str, extra: &[&str]| {
        let mut args = vec!["replicate", "--disk", disk, "--store", store, "--pfx", &pfx];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<String>>()
    };
    let check = |args: Vec<String>, needle: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&args, needle);
        let out = drplane()
            .args(&args)
            .env("DRPLANE_PFX_PASSWORD", PW)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        for debug in ["{", "Some(", "None", "os error"] {
            assert!(!err.contains(debug), "debug text {debug:?} in: {err}");
        }
    };
    check(
        replicate(&p("disk.raw"), &p("a-file"), &[]),
        "is a file, not a directory",
    );
    check(
        replicate(&p("a-dir"), &p("store"), &[]),
        "a directory, not a regular file",
    );
    dp(&replicate(&p("disk.raw"), &p("store"), &[])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    check(
        replicate(
            &p("disk.raw"),
            &p("store"),
            &["--profile", "premium", "--log-store", &p("log")],
        ),
        "created with profile standard, not premium",
    );
    // A reader or writer given the wrong name, point or certificate is told what there is.
    let reg2 = p("reg2");
    dp(&["register", "--vault", "vt2", "--out", &reg2]);
    let pfx2 = p("reg2/vt2.pfx");
    let store = p("named");
    let out = p("out.raw");
    let named = |pfx: &str| {
        let mut args = replicate(&p("disk.raw"), &store, &["--name", "d1"]);
        args[6] = pfx.to_string();
        args
    };
    dp(&strs(&named(&pfx)));
    let restore = |pfx: &str, extra: &[&str]| {
        let mut args = vec!["restore", "--store", &store, "--pfx", pfx, "-o", &out];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<String>>()
    };
    check(
        restore(&pfx, &["--name", "nope"]),
        "no replica named nope in this store: it holds d1",
    );
    check(
        restore(&pfx, &["--name", "d1", "--point", "7"]),
        "no point 7: the replica holds 0 (",
    );
    check(
        restore(&pfx2, &["--name", "d1"]),
        "replica d1 was written with certificate",
    );
    check(named(&pfx2), "this replica was written with certificate");
    // The wrong run changed nothing: the replica's own writer commits again.
    dp(&strs(&named(&pfx)));
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Ctrl-C during a long `--watch` cycle (an initial replication at 1 MB/s) abandons it within
/// seconds: nothing is committed, and the next run commits a point that restores. Ctrl-C
/// while the watch waits for the next cycle stops it at once.
#[test]
fn ctrl_c_during_a_watch_cycle_stops_within_seconds_and_loses_nothing() {
    use std::time::{Duration, Instant};
    let dir = temp_dir();
    let d = dir.path();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    dp(&["register", "--vault", "vt", "--out", &p("reg")]);
    let mut data = vec![0u8; 32 << 20];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for b in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&x.to_le_bytes());
    }
    std::fs::write(p("disk.raw"), &data).unwrap();
    std::fs::write(
        p("slow.toml"),
        "[throttle]\nwork_hours_kbps = 8000\nnon_work_hours_kbps = 8000\n",
    )
    .unwrap();
    let base = [
        "replicate",
        "--disk",
        &p("disk.raw"),
        "--store",
        &p("store"),
        "--pfx",
        &p("reg/vt.pfx"),
        "--name",
        "d1",
    ];
    let interrupt_after = |extra: &[&str], wait: Duration| {
        let mut child = drplane()
            .args(base)
            .args(extra)
            .env("DRPLANE_PFX_PASSWORD", PW)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(wait);
        assert!(
            child.try_wait().unwrap().is_none(),
            "ended before the interrupt"
        );
        run_ok(std::process::Command::new("kill").args(["-INT", &child.id().to_string()]));
        let asked = Instant::now();
        let out = child.wait_with_output().unwrap();
        (asked.elapsed(), out)
    };
    // 32 MiB at 1 MB/s: a cycle of about 33 s, interrupted after 2.
    let (took, out) = interrupt_after(
        &["--watch", "--policy", &p("slow.toml")],
        Duration::from_secs(2),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        took < Duration::from_secs(5),
        "stopped {took:?} after Ctrl-C: {err}"
    );
    assert!(
        err.contains("cycle abandoned on request") && err.contains("stopped"),
        "{err}"
    );
    assert!(out.status.success(), "{err}");
    let points = dp(&[
        "points",
        "--store",
        &p("store"),
        "--pfx",
        &p("reg/vt.pfx"),
        "--name",
        "d1",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&points.stdout).unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        0,
        "an abandoned cycle committed: {v}"
    );
    // The next run commits the point, and it restores.
    dp(&base);
    dp(&[
        "restore",
        "--store",
        &p("store"),
        "--pfx",
        &p("reg/vt.pfx"),
        "--name",
        "d1",
        "--point",
        "0",
        "-o",
        &p("back.raw"),
    ]);
    assert!(
        std::fs::read(p("back.raw")).unwrap() == data,
        "the restored disk differs"
    );
    // Waiting for the next cycle (every 5 minutes by default): Ctrl-C stops it at once.
    let (took, out) = interrupt_after(&["--watch"], Duration::from_secs(2));
    assert!(
        took < Duration::from_secs(2),
        "stopped {took:?} after Ctrl-C"
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn two_replicate_runs_of_one_replica_at_once_through_blob_serve_spoil_nothing() {
    // Two hosts configured with one disk name, replicating into one endpoint at the same
    // moment: each run either commits its point or stops with an error that says another
    // writer has the replica; every point listed afterwards verifies and the last restores to
    // the disk of the run that committed it.
    let dir = registered_with_disk();
    let d = dir.path();
    let server = start_server(&d.join("served"), "standard");
    let pfx = d.join("reg/vt.pfx");
    let disks: Vec<std::path::PathBuf> = (0..2u8)
        .map(|i| {
            let path = d.join(format!("host{i}.raw"));
            let content: Vec<u8> = (0..1u32 << 20)
                .map(|j| (j.wrapping_mul(2_654_435_761) >> (8 + i)) as u8)
                .collect();
            std::fs::write(&path, content).unwrap();
            path
        })
        .collect();
    let replicate = |disk: &std::path::Path| {
        drplane()
            .args(["replicate", "--disk", path_str(disk), "--store"])
            .arg(&server.endpoint)
            .args(["--pfx", path_str(&pfx), "--name", "shared"])
            .env("DRPLANE_PFX_PASSWORD", PW)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let replica = [
        "--store",
        &server.endpoint,
        "--pfx",
        path_str(&pfx),
        "--name",
        "shared",
    ];
    let mut committed_by = None;
    for round in 0..4u8 {
        // New content each round, so each run has blocks to send.
        for disk in &disks {
            let mut bytes = std::fs::read(disk).unwrap();
            bytes[usize::from(round) * 4096..][..4096].fill(round.wrapping_mul(37) ^ 0x5A);
            std::fs::write(disk, bytes).unwrap();
        }
        let runs: Vec<_> = disks.iter().map(|disk| replicate(disk)).collect();
        for (i, run) in runs.into_iter().enumerate() {
            let out = run.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                committed_by = Some(i);
            } else {
                assert!(
                    err.contains("another writer took this replica over")
                        || err.contains("another writer claimed a nonce epoch"),
                    "round {round}, run {i}: {err}"
                );
            }
        }
        let verified = dp(&[&["verify"], &replica[..]].concat());
        assert!(
            String::from_utf8_lossy(&verified.stdout).contains(" 0 failed"),
            "round {round}"
        );
    }
    // Of the last round's committed runs, the later one's point is the newest.
    let newest = d.join("newest.raw");
    dp(&[&["restore"], &replica[..], &["--output", path_str(&newest)]].concat());
    let restored = std::fs::read(&newest).unwrap();
    assert!(
        disks
            .iter()
            .any(|disk| std::fs::read(disk).unwrap() == restored),
        "the newest point is one of the two disks (last committed by run {committed_by:?})"
    );
    server.stop("-TERM");
}
