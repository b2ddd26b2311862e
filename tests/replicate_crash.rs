//! Crash safety of the replicator as a process: `drplane replicate` is killed (SIGKILL) at
//! seeded random moments of a cycle, then run again. Every committed point stays intact and
//! restores byte-exact, and the rerun completes the cycle.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

const PW: &str = "crash-pw";
const SIZE: usize = 24 << 20;

fn dp(args: &[&str]) -> std::process::Output {
    run_ok(drplane().args(args).env("DRPLANE_PFX_PASSWORD", PW))
}

/// Rewrite `count` 64 KiB blocks with fresh compressible bytes.
fn churn(disk: &mut [u8], rng: &mut ChaCha8Rng, count: usize) {
    for _ in 0..count {
        let block = (rng.next_u64() as usize % (SIZE / 65536)) * 65536;
        let fill = rng.next_u32() as u8;
        for (i, v) in disk[block..block + 65536].iter_mut().enumerate() {
            *v = if i % 3 == 0 {
                rng.next_u32() as u8
            } else {
                fill
            };
        }
    }
}

#[test]
fn killed_cycles_never_damage_committed_points_and_the_rerun_completes() {
    let dir = temp_dir();
    let d = dir.path();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    dp(&["register", "--vault", "vt", "--out", &p("reg")]);
    let (pfx, store, disk_path) = (p("reg/vt.pfx"), p("store"), p("disk.raw"));
    let replicate = [
        "replicate",
        "--disk",
        &disk_path,
        "--store",
        &store,
        "--pfx",
        &pfx,
        "--name",
        "d",
        "--json",
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(0xC0FFEE);
    let mut disk = vec![0u8; SIZE];
    churn(&mut disk, &mut rng, 200);
    // Runs are timed (the latest full run), so kills can be spread over a whole run.
    std::fs::write(&disk_path, &disk).unwrap();
    let started = std::time::Instant::now();
    dp(&replicate);
    let mut run_ms = started.elapsed().as_millis() as u64;
    let mut committed: Vec<Vec<u8>> = vec![disk.clone()];
    let mut kills = 0;
    let mut round = 0;
    // Until four runs were killed mid-cycle (a loaded machine makes some runs finish first).
    while kills < 4 {
        round += 1;
        assert!(
            round <= 24,
            "only {kills} of {round} runs could be killed mid-cycle"
        );
        churn(&mut disk, &mut rng, 150);
        std::fs::write(&disk_path, &disk).unwrap();
        let delay = Duration::from_millis(rng.next_u64() % (run_ms * 9 / 10).max(1));
        let mut child = drplane()
            .args(replicate)
            .env("DRPLANE_PFX_PASSWORD", PW)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        kills += usize::from(child.try_wait().unwrap().is_none());
        child.kill().ok();
        child.wait().unwrap();
        // Whatever happened, the committed points are all intact...
        let verify = dp(&[
            "verify", "--store", &store, "--pfx", &pfx, "--name", "d", "--json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
        let points = v.as_array().unwrap();
        assert!(points.iter().all(|p| p["ok"] == true), "round {round}: {v}");
        // ...and the killed run either committed its point or left none.
        assert!(
            (committed.len()..=committed.len() + 1).contains(&points.len()),
            "round {round}: a committed point was lost, or two appeared: {v}"
        );
        if points.len() > committed.len() {
            committed.push(disk.clone());
        }
        // The rerun completes a cycle and its point is the disk.
        let started = std::time::Instant::now();
        let out = dp(&replicate);
        run_ms = started.elapsed().as_millis() as u64;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        committed.push(disk.clone());
        assert_eq!(
            v["point"].as_u64().unwrap() as usize,
            committed.len() - 1,
            "{v}"
        );
    }
    for (seq, image) in committed.iter().enumerate() {
        let out = p(&format!("restored-{seq}.raw"));
        dp(&[
            "restore",
            "--store",
            &store,
            "--pfx",
            &pfx,
            "--name",
            "d",
            "--point",
            &seq.to_string(),
            "-o",
            &out,
        ]);
        assert!(
            std::fs::read(&out).unwrap() == *image,
            "point {seq} differs"
        );
    }
}
