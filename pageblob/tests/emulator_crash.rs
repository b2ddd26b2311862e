//! Crash safety of the embedded emulator against a real `kill -9`: this test re-runs its own
//! binary as a writer process, kills it at pseudo-random moments, reopens the store and checks
//! that every write and snapshot the writer saw acknowledged is there, byte for byte.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pageblob::clock::SystemClock;
use pageblob::data_log::Durability;
use pageblob::{BlobPath, Conditions, Emulator, PageBlobStore, Profile};

const CHILD_ENV: &str = "DRPLANE_CRASH_WRITER_DIR";
const TEST_NAME: &str = "writer_killed_at_random_moments_loses_no_acknowledged_write";
const WRITE_BYTES: usize = 64 * 1024;
const SLOTS: u64 = 2048;

fn content(round: u64, i: u64) -> Vec<u8> {
    let mut x = (round << 32 | i).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..WRITE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn open(dir: &str) -> Emulator {
    Emulator::open(
        std::path::Path::new(dir),
        Profile::Standard,
        Durability::Process,
        Arc::new(SystemClock),
    )
    .unwrap()
}

/// The writer: writes distinct slots of blob `round-N`, printing each acknowledgement.
fn writer(dir: &str, round: u64) {
    let store = open(dir);
    let _ = store.create_container("crash");
    let p = BlobPath::new("crash", &format!("round-{round}"));
    store
        .create_page_blob(&p, SLOTS * WRITE_BYTES as u64, 0, &Conditions::default())
        .unwrap();
    println!("created");
    for i in 0..SLOTS {
        store
            .put_pages(
                &p,
                i * WRITE_BYTES as u64,
                &content(round, i),
                &Conditions::default(),
            )
            .unwrap();
        println!("ack {i}");
        if i % 7 == 6 {
            let id = store.snapshot(&p, &Conditions::default()).unwrap();
            println!("snap {i} {id}");
            // Overwrite the slot the snapshot shares: copy-on-write must keep the snapshot's view.
            store
                .put_pages(
                    &p,
                    i * WRITE_BYTES as u64,
                    &content(round + 1000, i),
                    &Conditions::default(),
                )
                .unwrap();
            println!("over {i}");
        }
    }
}

#[test]
fn writer_killed_at_random_moments_loses_no_acknowledged_write() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let round = std::env::var("DRPLANE_CRASH_ROUND")
            .unwrap()
            .parse()
            .unwrap();
        writer(&dir, round);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir_str = dir.path().to_str().unwrap().to_string();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut checked_writes = 0;
    for round in 0..12u64 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir_str)
            .env("DRPLANE_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        // Wait for the blob to exist, then let it write for a pseudo-random while.
        while !lines.lock().unwrap().iter().any(|l| l.ends_with("created")) {
            if let Some(status) = child.try_wait().unwrap() {
                reader_done(&lines);
                panic!(
                    "round {round}: writer exited early ({status}) after {} lines",
                    lines.lock().unwrap().len()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(rng % 40_000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();

        let store = open(&dir_str);
        let p = BlobPath::new("crash", &format!("round-{round}"));
        let mut buf = vec![0u8; WRITE_BYTES];
        for line in lines.lock().unwrap().iter() {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts[0] {
                "ack" => {
                    let i: u64 = parts[1].parse().unwrap();
                    if i % 7 == 6 {
                        continue; // an overwrite followed; checked by "snap" and "over"
                    }
                    store
                        .read(&p, None, i * WRITE_BYTES as u64, &mut buf)
                        .unwrap();
                    assert!(
                        buf == content(round, i),
                        "round {round}: acknowledged write {i} lost"
                    );
                    checked_writes += 1;
                }
                "over" => {
                    let i: u64 = parts[1].parse().unwrap();
                    store
                        .read(&p, None, i * WRITE_BYTES as u64, &mut buf)
                        .unwrap();
                    assert!(
                        buf == content(round + 1000, i),
                        "round {round}: acknowledged overwrite {i} lost"
                    );
                }
                "snap" => {
                    let i: u64 = parts[1].parse().unwrap();
                    store
                        .read(&p, Some(parts[2]), i * WRITE_BYTES as u64, &mut buf)
                        .unwrap();
                    assert!(
                        buf == content(round, i),
                        "round {round}: snapshot {} lost write {i}",
                        parts[2]
                    );
                }
                _ => {}
            }
        }
    }
    assert!(
        checked_writes > 0,
        "no write was acknowledged before the kills"
    );
    eprintln!("checked {checked_writes} acknowledged writes over 12 kills");
}

/// Give the stdout reader a moment to collect the last lines before reporting them.
fn reader_done(_: &Arc<Mutex<Vec<String>>>) {
    std::thread::sleep(Duration::from_millis(50));
}
