//! Live replication against a real `qemu-storage-daemon`: the daemon hosts a `.vhdx` or qcow2
//! disk exactly as a VM does, a guest writes to it over NBD (our client, every write stamped
//! with its sequence number), and `drplane replicate --qemu` replicates it with QEMU's dirty
//! bitmaps and fleecing views. Every point must be the disk after exactly the first k writes
//! for some k, never a mix; faults (drplane killed, QEMU restarted, NBD cut, disk resized) must
//! lose nothing.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use datapath::live::nbd::NbdClient;
use datapath::live::qmp::Qmp;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::{json, Value};

const PW: &str = "live-pw";
const SIZE: u64 = 64 << 20;

/// A qemu-storage-daemon hosting `disk` as node `disk0`, with the guest's writable NBD export
/// `vm0` and the QMP monitor.
struct Daemon {
    child: Child,
    qmp: PathBuf,
    nbd: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, disk: &Path, format: &str) -> Daemon {
        Daemon::start_many(dir, &[disk], format)
    }

    /// A daemon hosting each of `disks` as node `disk<i>` with its guest export `vm<i>` and
    /// a QMP monitor of its own (`qmp.sock`, then `qmp1.sock`, …: a monitor serves one client
    /// at a time, so runs for different disks meet in QEMU only through separate monitors).
    fn start_many(dir: &Path, disks: &[&Path], format: &str) -> Daemon {
        let monitors: Vec<PathBuf> = (0..disks.len())
            .map(|i| match i {
                0 => dir.join("qmp.sock"),
                i => dir.join(format!("qmp{i}.sock")),
            })
            .collect();
        let nbd = dir.join("nbd.sock");
        let _ = std::fs::remove_file(&nbd);
        let mut cmd = Command::new("qemu-storage-daemon");
        for (i, (disk, qmp)) in disks.iter().zip(&monitors).enumerate() {
            let _ = std::fs::remove_file(qmp);
            cmd.arg("--chardev")
                .arg(format!(
                    "socket,path={},server=on,wait=off,id=qmp{i}",
                    qmp.display()
                ))
                .args(["--monitor", &format!("chardev=qmp{i}"), "--blockdev"])
                .arg(format!(
                    "driver=file,filename={},node-name=file{i}",
                    disk.display()
                ))
                .arg("--blockdev")
                .arg(format!("driver={format},file=file{i},node-name=disk{i}"));
        }
        cmd.arg("--nbd-server")
            .arg(format!("addr.type=unix,addr.path={}", nbd.display()));
        for i in 0..disks.len() {
            cmd.args([
                "--export",
                &format!("type=nbd,id=vm{i},node-name=disk{i},name=vm{i},writable=on"),
            ]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-storage-daemon (package qemu-utils; .ci/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(monitors.iter().all(|m| m.exists()) && nbd.exists()) {
            assert!(
                Instant::now() < deadline,
                "qemu-storage-daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            child,
            qmp: monitors[0].clone(),
            nbd,
        }
    }

    /// Stop it with `signal` and wait.
    fn stop(mut self, signal: &str) {
        run_ok(Command::new("kill").args([signal, &self.child.id().to_string()]));
        self.child.wait().unwrap();
    }

    fn guest(&self) -> NbdClient<UnixStream> {
        NbdClient::connect_unix(&self.nbd, "vm0", &[], Duration::from_secs(30)).unwrap()
    }

    /// The whole disk as the guest sees it now.
    fn image(&self) -> Vec<u8> {
        let mut guest = self.guest();
        let mut image = vec![0; guest.size() as usize];
        guest.read(0, &mut image).unwrap();
        image
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The writes a guest made, in order: write k (from 1) is `log[k - 1]`, every 8-byte word of
/// it holding k.
type WriteLog = Arc<Mutex<Vec<(u64, usize)>>>;

fn stamped(k: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0; len];
    stamp(&mut data, k);
    data
}

fn stamp(data: &mut [u8], k: u64) {
    for word in data.chunks_exact_mut(8) {
        word.copy_from_slice(&k.to_le_bytes());
    }
}

/// A guest writing stamped 4 KiB–64 KiB blocks at random 4 KiB-aligned offsets in the first
/// `span` bytes of the disk until stopped.
struct Guest {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    log: WriteLog,
}

impl Guest {
    fn start(daemon: &Daemon, log: WriteLog, seed: u64, span: u64, pause: Duration) -> Guest {
        let stop = Arc::new(AtomicBool::new(false));
        let mut client = daemon.guest();
        let (flag, writes) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            while !flag.load(Ordering::Relaxed) {
                let len = 4096 * (1 + rng.next_u64() % 16) as usize;
                let offset = (rng.next_u64() % ((span - len as u64) / 4096)) * 4096;
                let k = writes.lock().unwrap().len() as u64 + 1;
                client.write(offset, &stamped(k, len)).unwrap();
                writes.lock().unwrap().push((offset, len));
                std::thread::sleep(pause);
            }
        });
        Guest {
            stop,
            thread: Some(thread),
            log,
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.log.lock().unwrap().len()
    }
}

/// The newest write a point holds: the largest stamp in it.
fn newest_write(image: &[u8], writes: usize) -> usize {
    image
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
        .filter(|&w| w as usize <= writes)
        .max()
        .unwrap_or(0) as usize
}

/// Each point is the disk after exactly the first k writes of `log` (on a disk that was
/// `base`), where k is the newest write it holds — or a panic naming the point. Returns each
/// point's k. The disk is rebuilt once, write by write, in the order of the points' k.
fn assert_prefixes_of_writes(
    points: Vec<(u64, Vec<u8>)>,
    base: &[u8],
    log: &[(u64, usize)],
) -> Vec<usize> {
    let mut by_k: Vec<(usize, u64, Vec<u8>)> = points
        .into_iter()
        .map(|(p, image)| (newest_write(&image, log.len()), p, image))
        .collect();
    let ks: Vec<usize> = by_k.iter().map(|(k, _, _)| *k).collect();
    by_k.sort_by_key(|(k, p, _)| (*k, *p));
    let mut disk = base.to_vec();
    let mut applied = 0;
    for (k, point, image) in by_k {
        for (i, &(offset, len)) in log.iter().enumerate().take(k).skip(applied) {
            stamp(
                &mut disk[offset as usize..offset as usize + len],
                i as u64 + 1,
            );
        }
        applied = k;
        if let Some(at) = image.iter().zip(&disk).position(|(a, b)| a != b) {
            panic!(
                "point {point} is not the disk after any prefix of the writes: it holds write \
                 {k} but differs from the disk after it at byte {at:#x}"
            );
        }
    }
    ks
}

/// A replica of the daemon's disk in a store directory, with its .pfx.
struct Replica {
    dir: PathBuf,
    pfx: String,
    store: String,
}

impl Replica {
    fn new(dir: &Path) -> Replica {
        let reg = dir.join("reg");
        run_ok(
            drplane()
                .args(["register", "--vault", "vt", "--out", path_str(&reg)])
                .env("DRPLANE_PFX_PASSWORD", PW),
        );
        Replica {
            dir: dir.to_path_buf(),
            pfx: path_str(&reg.join("vt.pfx")).into(),
            store: path_str(&dir.join("store")).into(),
        }
    }

    fn command(&self, daemon: &Daemon, extra: &[&str]) -> Command {
        self.command_via(daemon, &daemon.nbd, extra)
    }

    /// `replicate --qemu` reading the view through the NBD server at `nbd`.
    fn command_via(&self, daemon: &Daemon, nbd: &Path, extra: &[&str]) -> Command {
        let mut cmd = drplane();
        cmd.args(["replicate", "--qemu", path_str(&daemon.qmp)])
            .args(["--node", "disk0", "--name", "vm0", "--nbd-socket"])
            .arg(nbd)
            .args(["--store", &self.store, "--pfx", &self.pfx, "--json"])
            .args(extra)
            .env("DRPLANE_PFX_PASSWORD", PW);
        cmd
    }

    /// One cycle; its JSON report.
    fn cycle(&self, daemon: &Daemon, extra: &[&str]) -> Value {
        let out = run_ok(&mut self.command(daemon, extra));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn points(&self) -> Vec<u64> {
        let out = run_ok(
            drplane()
                .args(["points", "--store", &self.store, "--pfx", &self.pfx])
                .args(["--name", "vm0", "--json"])
                .env("DRPLANE_PFX_PASSWORD", PW),
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| p["point"].as_u64().unwrap())
            .collect()
    }

    fn restore(&self, point: u64) -> Vec<u8> {
        let out = self.dir.join(format!("restored-{point}.raw"));
        run_ok(
            drplane()
                .args(["restore", "--store", &self.store, "--pfx", &self.pfx])
                .args(["--name", "vm0", "--force", "--point", &point.to_string()])
                .arg("-o")
                .arg(&out)
                .env("DRPLANE_PFX_PASSWORD", PW),
        );
        let image = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        image
    }

    /// Every retained point is the disk after a prefix of `log`; returns each point's k.
    fn assert_points_consistent(&self, base: &[u8], log: &WriteLog) -> Vec<usize> {
        let log = log.lock().unwrap().clone();
        let points = self
            .points()
            .into_iter()
            .map(|p| (p, self.restore(p)))
            .collect();
        assert_prefixes_of_writes(points, base, &log)
    }
}

/// A daemon hosting a new VHDX in `dir`, and its replica with the initial point made.
fn replicated_vhdx(dir: &Path) -> (Daemon, Replica) {
    let daemon = Daemon::start(dir, &new_disk(dir, "vhdx"), "vhdx");
    let replica = Replica::new(dir);
    replica.cycle(&daemon, &[]);
    (daemon, replica)
}

fn new_disk(dir: &Path, format: &str) -> PathBuf {
    let disk = dir.join(format!("disk.{format}"));
    qemu_img(&[
        "create",
        "-q",
        "-f",
        format,
        path_str(&disk),
        &SIZE.to_string(),
    ]);
    disk
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn watch_on_a_vhdx_being_written_keeps_only_points_that_are_prefixes_of_the_writes() {
    let dir = temp_dir();
    let d = dir.path();
    let daemon = Daemon::start(d, &new_disk(d, "vhdx"), "vhdx");
    let replica = Replica::new(d);
    std::fs::write(d.join("policy.toml"), "copy_frequency_secs = 30\n").unwrap();
    let log = WriteLog::default();
    let guest = Guest::start(&daemon, log.clone(), 1, 16 << 20, Duration::from_millis(5));
    // Three cycles on the policy's 30-second schedule while the guest writes.
    let policy = d.join("policy.toml");
    let out = run_ok(&mut replica.command(
        &daemon,
        &["--watch", "--cycles", "3", "--policy", path_str(&policy)],
    ));
    let reports: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = reports
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["initial", "delta", "delta"], "{reports:?}");
    for r in &reports[1..] {
        // A delta reads only what changed: the guest writes in the first 16 MiB.
        assert!(r["bytes_read"].as_u64().unwrap() <= 16 << 20, "{r}");
        assert_eq!(
            r["bytes_read"],
            r["blocks_examined"].as_u64().unwrap() * 65536
        );
    }
    let writes = guest.finish();
    assert!(writes > 100, "the guest wrote only {writes} times");
    // One more cycle after the guest stopped: the disk exactly.
    replica.cycle(&daemon, &[]);
    let base = vec![0u8; SIZE as usize];
    let ks = replica.assert_points_consistent(&base, &log);
    assert_eq!(
        *ks.last().unwrap(),
        writes,
        "the last point holds every write"
    );
    assert!(
        ks.windows(2).all(|w| w[0] <= w[1]) && ks[0] < writes,
        "points advance through the writes: {ks:?}"
    );
    assert!(replica.restore(*replica.points().last().unwrap()) == daemon.image());
}

#[test]
fn a_qcow2_with_persistent_bitmaps_survives_a_clean_qemu_restart_and_resyncs_after_a_kill() {
    let dir = temp_dir();
    let d = dir.path();
    let disk = new_disk(d, "qcow2");
    let mut daemon = Daemon::start(d, &disk, "qcow2");
    let replica = Replica::new(d);
    let log = WriteLog::default();
    let persistent = ["--persistent-bitmap"];
    // Three cycles on the 30-second schedule, then three back to back, while the guest writes.
    std::fs::write(d.join("policy.toml"), "copy_frequency_secs = 30\n").unwrap();
    let policy = d.join("policy.toml");
    let guest = Guest::start(&daemon, log.clone(), 2, SIZE, Duration::from_millis(3));
    let watch = ["--watch", "--cycles", "3", "--policy", path_str(&policy)];
    run_ok(&mut replica.command(&daemon, &[&persistent[..], &watch[..]].concat()));
    for _ in 0..3 {
        replica.cycle(&daemon, &persistent);
    }
    let writes = guest.finish();
    let base = vec![0u8; SIZE as usize];
    let ks = replica.assert_points_consistent(&base, &log);
    assert!(ks.len() == 6 && ks[5] <= writes, "{ks:?}");
    // What the guest wrote after the last of them (as much as a loaded machine lets it) goes
    // with one more cycle, so what follows the restart is only the write below.
    replica.cycle(&daemon, &persistent);

    // A clean restart keeps the bitmap in the image: the next cycle is still a delta.
    daemon.stop("-TERM");
    daemon = Daemon::start(d, &disk, "qcow2");
    let before = daemon.image();
    let mut guest = daemon.guest();
    guest.write(5 << 20, &[0x5a; 8192]).unwrap();
    let r = replica.cycle(&daemon, &persistent);
    assert_eq!(r["kind"], "delta", "{r}");
    assert!(r["bytes_read"].as_u64().unwrap() < SIZE / 4, "{r}");
    let mut expected = before;
    expected[5 << 20..(5 << 20) + 8192].fill(0x5a);
    assert!(replica.restore(r["point"].as_u64().unwrap()) == expected);

    // Killed, QEMU leaves the bitmap inconsistent: a resync that keeps every older point.
    let points_before = replica.points();
    guest.write(9 << 20, &[0x6b; 4096]).unwrap();
    drop(guest);
    daemon.stop("-KILL");
    daemon = Daemon::start(d, &disk, "qcow2");
    let out = run_ok(&mut replica.command(&daemon, &persistent));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["kind"], "resync", "{r}");
    assert!(
        stderr(&out).contains("change tracking was lost"),
        "{}",
        stderr(&out)
    );
    // At most the block written since (unflushed, the kill may have lost it).
    assert!(r["blocks_changed"].as_u64().unwrap() <= 1, "{r}");
    let points = replica.points();
    assert!(points_before.iter().all(|p| points.contains(p)));
    assert!(replica.restore(r["point"].as_u64().unwrap()) == daemon.image());
    // And tracking is back: the next cycle is a delta again.
    daemon.guest().write(0, &[1; 4096]).unwrap();
    let r = replica.cycle(&daemon, &persistent);
    assert_eq!(r["kind"], "delta", "{r}");
    assert!(replica.restore(r["point"].as_u64().unwrap()) == daemon.image());

    // The disk grows under the replica: a clear error, nothing committed.
    // (The guest's export does not share resizing: it is taken off for the resize.)
    let mut qmp = Qmp::connect(&daemon.qmp, Duration::from_secs(10)).unwrap();
    qmp.execute("block-export-del", json!({"id": "vm0"}))
        .unwrap();
    qmp.wait_event("BLOCK_EXPORT_DELETED", |d| d["id"] == "vm0")
        .unwrap();
    qmp.execute(
        "block_resize",
        json!({"node-name": "disk0", "size": SIZE * 2}),
    )
    .unwrap();
    let export = json!({"type": "nbd", "id": "vm0", "node-name": "disk0", "name": "vm0",
        "writable": true});
    qmp.execute("block-export-add", export).unwrap();
    drop(qmp);
    let points = replica.points();
    let out = replica.command(&daemon, &persistent).output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("the replica was made for {SIZE}"))
            && stderr(&out).contains("replicate it under another --name"),
        "{}",
        stderr(&out)
    );
    assert_eq!(replica.points(), points, "nothing committed");
}

#[test]
fn drplane_killed_mid_cycle_loses_no_change_and_does_not_resync() {
    let dir = temp_dir();
    let d = dir.path();
    let (daemon, replica) = replicated_vhdx(d);
    let mut guest = daemon.guest();
    // A: changed before the cycle that is killed (incompressible: the throttle paces it).
    let mut a = vec![0u8; 8 << 20];
    ChaCha8Rng::seed_from_u64(3).fill_bytes(&mut a);
    guest.write(4 << 20, &a).unwrap();
    // A throttled cycle (64 KiB/s) is still reading when it is killed.
    std::fs::write(
        d.join("slow.toml"),
        "[throttle]\nwork_hours_kbps = 512\nwork_start_hour = 0\nwork_end_hour = 24\n",
    )
    .unwrap();
    let slow = d.join("slow.toml");
    let child = replica
        .command(
            &daemon,
            &["--policy", path_str(&slow), "--upload-threads", "1"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill_mid_cycle(child, &[d.join("drplane-vm0.fleece")]);
    assert_eq!(
        replica.points(),
        vec![0],
        "the killed cycle committed nothing"
    );
    // B: changed after the freeze the killed cycle made.
    guest.write(40 << 20, &[0xb2; 65536]).unwrap();
    let r = replica.cycle(&daemon, &[]);
    assert_eq!(
        r["kind"], "delta",
        "no resync while QEMU's bitmap survives: {r}"
    );
    let changed = (8 << 20) + 65536;
    assert_eq!(r["bytes_read"], changed, "exactly A and B are read: {r}");
    assert!(replica.restore(r["point"].as_u64().unwrap()) == daemon.image());

    // QEMU restarted: its bitmaps are gone; a resync compares every block and keeps history.
    let disk = d.join("disk.vhdx");
    daemon.stop("-TERM");
    let daemon = Daemon::start(d, &disk, "vhdx");
    daemon.guest().write(60 << 20, &[0xe5; 4096]).unwrap();
    let r = replica.cycle(&daemon, &[]);
    assert_eq!(r["kind"], "resync", "{r}");
    assert_eq!(r["bytes_read"], SIZE, "{r}");
    assert_eq!(r["blocks_changed"], 1, "only what changed is sent: {r}");
    assert_eq!(replica.points(), vec![0, 1, 2]);
    assert!(replica.restore(2) == daemon.image());
}

/// A scan of a live qcow2 reads what its allocation status does not promise to be zeros
/// (`base:allocation` over the frozen view), and a block whose data went — zeroed and unmapped
/// while QEMU was down, so a resync's view reports it zero — is still found, from the replica's
/// table, and cleared: both points restore the disk byte-exact.
#[test]
fn a_scan_of_a_sparse_qcow2_reads_its_data_and_finds_a_block_that_went() {
    let dir = temp_dir();
    let d = dir.path();
    let disk = new_disk(d, "qcow2");
    let daemon = Daemon::start(d, &disk, "qcow2");
    let mut guest = daemon.guest();
    guest.write(0, &[0x11; 4096]).unwrap();
    guest.write(20 << 20, &[0x22; 65536]).unwrap();
    guest.write(SIZE - 65536, &[0x33; 65536]).unwrap();
    drop(guest);
    let replica = Replica::new(d);
    let r = replica.cycle(&daemon, &[]);
    assert_eq!(r["kind"], "initial", "{r}");
    // Three blocks' worth, at most a qcow2 cluster (64 KiB) around each write.
    assert!(r["bytes_read"].as_u64().unwrap() <= 3 * 65536 * 2, "{r}");
    assert_eq!(r["blocks_changed"], 3, "{r}");
    assert!(replica.restore(0) == daemon.image());

    // QEMU down: the block at 20 MiB is zeroed and unmapped behind its back; its bitmaps are
    // gone, so the next cycle is a resync, and the view says that block reads zeros.
    daemon.stop("-TERM");
    let zeroed = qemu_io(
        path_str(&disk),
        &[format!("write -z -u {} 65536", 20 << 20)],
    );
    assert!(zeroed.status.success());
    let daemon = Daemon::start(d, &disk, "qcow2");
    let r = replica.cycle(&daemon, &[]);
    assert_eq!(r["kind"], "resync", "{r}");
    assert_eq!(
        r["blocks_changed"], 1,
        "the block that went is cleared: {r}"
    );
    assert!(r["bytes_read"].as_u64().unwrap() <= 2 * 65536 * 2, "{r}");
    let image = daemon.image();
    assert!(image[20 << 20..(20 << 20) + 65536].iter().all(|&b| b == 0));
    assert!(replica.restore(1) == image);
}

/// A qemu-storage-daemon with the monitor at `qmp`, hosting each of `disks` (path, format) as
/// node `disk<i>`, and no NBD server at all.
fn daemon_without_nbd_server(qmp: &Path, disks: &[(&Path, &str)]) -> Child {
    let mut cmd = Command::new("qemu-storage-daemon");
    cmd.arg("--chardev")
        .arg(format!(
            "socket,path={},server=on,wait=off,id=m",
            qmp.display()
        ))
        .args(["--monitor", "chardev=m"]);
    for (i, (disk, format)) in disks.iter().enumerate() {
        cmd.arg("--blockdev")
            .arg(format!(
                "driver=file,filename={},node-name=file{i}",
                disk.display()
            ))
            .arg("--blockdev")
            .arg(format!("driver={format},file=file{i},node-name=disk{i}"));
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-storage-daemon (package qemu-utils; .ci/run installs it)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !qmp.exists() {
        assert!(
            Instant::now() < deadline,
            "qemu-storage-daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Kill `child` (`-9`) in the middle of a (throttled) cycle: once its fleecing files exist
/// (the disks are frozen) and while it still runs.
fn kill_mid_cycle(mut child: Child, fleecing_files: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fleecing_files.iter().all(|f| f.exists()) {
        assert!(Instant::now() < deadline, "the cycle never froze the disk");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the cycle ended too soon"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A unix-socket relay to the NBD server that cuts every connection once `budget` bytes have
/// come back from the server, until `heal`ed.
struct CuttingRelay {
    path: PathBuf,
    cut: Arc<AtomicBool>,
}

impl CuttingRelay {
    fn start(dir: &Path, server: PathBuf, budget: u64) -> CuttingRelay {
        let path = dir.join("relay.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let cut = Arc::new(AtomicBool::new(true));
        let (cutting, sent) = (cut.clone(), Arc::new(AtomicU64::new(0)));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let mut upstream = UnixStream::connect(&server).unwrap();
                let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut u2);
                });
                let (cutting, sent) = (cutting.clone(), sent.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0; 16384];
                    while let Ok(n) = upstream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let total = sent.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                        if cutting.load(Ordering::Relaxed) && total > budget {
                            break;
                        }
                        if client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    let _ = upstream.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        CuttingRelay { path, cut }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }
}

#[test]
fn an_nbd_connection_cut_mid_read_abandons_the_cycle_and_the_retry_loses_nothing() {
    let dir = temp_dir();
    let d = dir.path();
    let (daemon, replica) = replicated_vhdx(d);
    let mut guest = daemon.guest();
    guest.write(1 << 20, &vec![0xc3; 16 << 20]).unwrap();
    let relay = CuttingRelay::start(d, daemon.nbd.clone(), 4 << 20);
    let out = replica
        .command_via(&daemon, &relay.path, &[])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a cut connection cannot commit");
    assert!(
        stderr(&out).contains("reading the source disk"),
        "{}",
        stderr(&out)
    );
    assert_eq!(replica.points(), vec![0]);
    // The changes went back to QEMU's bitmap: the retry reads them, and only them.
    guest.write(50 << 20, &[0xd4; 4096]).unwrap();
    relay.heal();
    let r = replica.cycle(&daemon, &[]);
    assert_eq!(r["kind"], "delta", "{r}");
    assert_eq!(r["bytes_read"], (16 << 20) + 65536, "{r}");
    assert!(replica.restore(r["point"].as_u64().unwrap()) == daemon.image());
}

#[test]
fn without_an_nbd_socket_drplane_runs_its_own_server_for_the_cycle() {
    let dir = temp_dir();
    let d = dir.path();
    let disk = new_disk(d, "vhdx");
    // A daemon with no NBD server at all: drplane starts one for each cycle.
    let qmp = d.join("own.sock");
    let mut child = daemon_without_nbd_server(&qmp, &[(&disk, "vhdx")]);
    // What a killed run of a version before session 25 left (fixed names, one set per QEMU):
    // its copy-before-write filter and fleecing job on the disk, its view. The first run clears
    // them: left, the filter would copy every guest write into that file until its directory
    // is full.
    let mut monitor = Qmp::connect(&qmp, Duration::from_secs(10)).unwrap();
    let legacy_file = d.join("legacy.fleece");
    std::fs::File::create(&legacy_file)
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    monitor
        .execute(
            "blockdev-add",
            json!({"driver": "file", "node-name": "drplane-fleece-temp",
                "filename": legacy_file}),
        )
        .unwrap();
    monitor
        .execute(
            "blockdev-backup",
            json!({"job-id": "drplane-fleece-job", "device": "disk0",
                "target": "drplane-fleece-temp", "sync": "none",
                "filter-node-name": "drplane-fleece-cbw"}),
        )
        .unwrap();
    monitor
        .execute(
            "blockdev-add",
            json!({"driver": "snapshot-access", "node-name": "drplane-fleece-view",
                "file": "drplane-fleece-cbw"}),
        )
        .unwrap();
    let legacy_left = |monitor: &mut Qmp| {
        let nodes = monitor.named_nodes().unwrap();
        let jobs = monitor.execute("query-block-jobs", json!({})).unwrap();
        let mut left: Vec<String> = nodes
            .into_iter()
            .map(|n| n.node_name)
            .filter(|n| n.starts_with("drplane-fleece"))
            .collect();
        left.extend(
            jobs.as_array()
                .unwrap()
                .iter()
                .filter_map(|j| j["device"].as_str().map(str::to_string)),
        );
        left
    };
    assert_eq!(
        legacy_left(&mut monitor).len(),
        4,
        "the leftovers are in place"
    );
    drop(monitor);
    let replica = Replica::new(d);
    for expected in ["initial", "delta"] {
        let out = run_ok(
            drplane()
                .args(["replicate", "--qemu", path_str(&qmp), "--node", "disk0"])
                .args(["--name", "vm0", "--store", &replica.store])
                .args(["--pfx", &replica.pfx, "--json"])
                .env("DRPLANE_PFX_PASSWORD", PW),
        );
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["kind"], expected, "{r}");
        assert!(
            !d.join("drplane-vm0.nbd").exists(),
            "the server is stopped after the cycle"
        );
    }
    let mut monitor = Qmp::connect(&qmp, Duration::from_secs(10)).unwrap();
    assert_eq!(legacy_left(&mut monitor), Vec::<String>::new());
    drop(monitor);
    // A node that does not exist is named.
    let out = drplane()
        .args(["replicate", "--qemu", path_str(&qmp), "--node", "nope"])
        .args([
            "--name",
            "vm0",
            "--store",
            &replica.store,
            "--pfx",
            &replica.pfx,
        ])
        .env("DRPLANE_PFX_PASSWORD", PW)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("block node nope"), "{}", stderr(&out));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_prefix_check_rejects_a_point_that_mixes_writes() {
    let base = vec![0u8; 1 << 20];
    let log: Vec<(u64, usize)> = vec![(0, 8192), (4096, 4096), (65536, 4096), (0, 4096)];
    let after = |k: usize| {
        let mut disk = base.clone();
        for (i, &(o, l)) in log.iter().enumerate().take(k) {
            stamp(&mut disk[o as usize..o as usize + l], i as u64 + 1);
        }
        disk
    };
    for k in 0..=log.len() {
        let disk = after(k);
        assert_eq!(assert_prefixes_of_writes(vec![(1, disk)], &base, &log), [k]);
    }
    // Write 3 without write 2 under it: a mix of two instants.
    let mut mixed = after(3);
    mixed[4096..8192].copy_from_slice(&stamped(1, 4096));
    let caught =
        std::panic::catch_unwind(|| assert_prefixes_of_writes(vec![(7, mixed)], &base, &log));
    assert!(caught.is_err(), "a torn point must be caught");
}

#[test]
fn two_disks_of_one_qemu_replicate_in_turn_and_through_one_monitor_and_one_disk_has_one_run() {
    // A VM with two disks, one `replicate` per disk, each through a monitor of its own: each
    // replica's cycle has its own fleecing view, job and export (names: unit test in
    // `live::qemu`), both restore byte-exact, and a second run for a disk that has one is
    // refused naming the first. (Runs at the same moment: see docs/live-replication.md.)
    let dir = temp_dir();
    let d = dir.path();
    let disks: Vec<PathBuf> = (0..2)
        .map(|i| {
            let disk = d.join(format!("disk{i}.qcow2"));
            qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                path_str(&disk),
                &SIZE.to_string(),
            ]);
            disk
        })
        .collect();
    let daemon = Daemon::start_many(d, &[&disks[0], &disks[1]], "qcow2");
    let monitors = [d.join("qmp.sock"), d.join("qmp1.sock")];
    let replica = Replica::new(d);
    let replicate_via = |i: usize, monitor: &Path, extra: &[&str]| {
        let mut cmd = drplane();
        cmd.args(["replicate", "--qemu", path_str(monitor)])
            .args(["--node", &format!("disk{i}"), "--name", &format!("vm{i}")])
            .arg("--nbd-socket")
            .arg(&daemon.nbd)
            .args(["--store", &format!("{}{i}", replica.store)])
            .args(["--pfx", &replica.pfx, "--json"])
            .args(extra)
            .env("DRPLANE_PFX_PASSWORD", PW)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let replicate = |i: usize, extra: &[&str]| replicate_via(i, &monitors[i], extra);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut guests: Vec<NbdClient<UnixStream>> = (0..2)
        .map(|i| {
            NbdClient::connect_unix(&daemon.nbd, &format!("vm{i}"), &[], Duration::from_secs(30))
                .unwrap()
        })
        .collect();
    for round in 0..3 {
        for (i, guest) in guests.iter_mut().enumerate() {
            let mut data = vec![0u8; 4 << 20];
            rng.fill_bytes(&mut data);
            guest.write((round * 8) << 20, &data).unwrap();
            let out = replicate(i, &[]).output().unwrap();
            assert!(
                out.status.success(),
                "round {round}, disk {i}: {}",
                stderr(&out)
            );
        }
    }
    let restores = |guests: &mut [NbdClient<UnixStream>]| {
        for (i, guest) in guests.iter_mut().enumerate() {
            let mut image = vec![0u8; SIZE as usize];
            guest.read(0, &mut image).unwrap();
            let out = d.join(format!("restored{i}.raw"));
            run_ok(
                drplane()
                    .args(["restore", "--store", &format!("{}{i}", replica.store)])
                    .args([
                        "--pfx",
                        &replica.pfx,
                        "--name",
                        &format!("vm{i}"),
                        "--force",
                    ])
                    .arg("-o")
                    .arg(&out)
                    .env("DRPLANE_PFX_PASSWORD", PW),
            );
            assert!(std::fs::read(&out).unwrap() == image, "disk {i} restores");
        }
    };
    restores(&mut guests);
    // The file node under a disk's format node is the qcow2 container, not the guest's disk:
    // refused, naming the node to give (it once replicated the container's bytes).
    let wrong_node = drplane()
        .args(["replicate", "--qemu", path_str(&monitors[1])])
        .args(["--node", "file1", "--name", "vm1-file", "--nbd-socket"])
        .arg(&daemon.nbd)
        .args(["--store", &format!("{}1", replica.store)])
        .args(["--pfx", &replica.pfx])
        .env("DRPLANE_PFX_PASSWORD", PW)
        .output()
        .unwrap();
    assert!(!wrong_node.status.success());
    assert!(
        stderr(&wrong_node).contains("under format node disk1 (qcow2)")
            && stderr(&wrong_node).contains("give --node disk1"),
        "{}",
        stderr(&wrong_node)
    );
    // A watch holds disk 0 (asleep between cycles); a second run for it is refused at once,
    // naming the first, and leaves the watch alone.
    let mut watch = replicate(0, &["--watch"]).spawn().unwrap();
    let pid = watch.id().to_string();
    // Attached once its lock file names it (its next cycle is minutes away).
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(d.join("drplane-vm0.lock")).unwrap_or_default() != pid {
        assert!(Instant::now() < deadline, "the watch did not attach");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = replicate(0, &[]).output().unwrap();
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains(&format!(
            "another drplane run (PID {pid}) is replicating vm0"
        )),
        "{}",
        stderr(&second)
    );
    run_ok(Command::new("kill").args(["-TERM", &pid]));
    assert!(watch.wait().unwrap().success(), "the watch stops cleanly");

    // Both disks through one monitor: a run holds it only to freeze and to thaw, so while a
    // long cycle of disk 0 reads and uploads (throttled to 64 KiB/s: 1 MiB of incompressible
    // changes, ~16 s), disk 1's run freezes, replicates, thaws and exits. (Until session 26 a
    // run held the monitor for its whole cycle and disk 1's waited for disk 0's to end.)
    std::fs::write(
        d.join("slow.toml"),
        "[throttle]\nwork_hours_kbps = 512\nwork_start_hour = 0\nwork_end_hour = 24\n",
    )
    .unwrap();
    for (i, guest) in guests.iter_mut().enumerate() {
        let mut data = vec![0u8; 1 << 20];
        rng.fill_bytes(&mut data);
        guest.write((32 + i as u64) << 20, &data).unwrap();
    }
    let slow_policy = d.join("slow.toml");
    let mut slow = replicate_via(0, &monitors[0], &["--policy", path_str(&slow_policy)])
        .spawn()
        .unwrap();
    // Frozen once its fleecing file is there (it goes when the cycle thaws).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.join("drplane-vm0.fleece").exists() {
        assert!(
            slow.try_wait().unwrap().is_none(),
            "disk 0's run ended before its cycle was seen frozen"
        );
        assert!(Instant::now() < deadline, "disk 0's cycle did not freeze");
        std::thread::sleep(Duration::from_millis(10));
    }
    let other = replicate_via(1, &monitors[0], &[]).output().unwrap();
    assert!(other.status.success(), "{}", stderr(&other));
    assert!(
        slow.try_wait().unwrap().is_none(),
        "disk 0's run ended first: disk 1's waited for the monitor until disk 0's cycle was over"
    );
    let slow = slow.wait_with_output().unwrap();
    assert!(slow.status.success(), "{}", stderr(&slow));
    restores(&mut guests);
}

/// QEMU saves the old data of every block the guest overwrites during a cycle into the
/// fleecing file, and fails the guest's write when it cannot. A scratch directory that fills
/// during a cycle must not fail the guest: the file's space is reserved before the freeze, and
/// a scratch directory without room for the disk refuses the cycle before the guest is touched.
/// Run in a private mount namespace (`unshare -rm`) with a tmpfs as the scratch directory, the
/// daemon and drplane both inside it.
#[test]
fn a_scratch_directory_that_fills_during_a_cycle_never_fails_the_guests_writes() {
    let dir = temp_dir();
    let d = dir.path();
    let disk = new_disk(d, "raw");
    let replica = Replica::new(d);
    let scratch = d.join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    let mut chunk = |name: &str| {
        let mut data = vec![0u8; 16 << 20];
        rng.fill_bytes(&mut data);
        std::fs::write(d.join(name), &data).unwrap();
        data
    };
    let (a, b, c) = (chunk("a.bin"), chunk("b.bin"), chunk("c.bin"));
    // A cycle of 16 MiB of random data paced at 2 MiB/s: ~8 s while the guest writes.
    std::fs::write(
        d.join("paced.toml"),
        "[throttle]\nwork_hours_kbps = 16384\nwork_start_hour = 0\nwork_end_hour = 24\n",
    )
    .unwrap();
    let at = |name: &str| d.join(name).display().to_string();
    let replicate = format!(
        "{} replicate --qemu {} --node disk0 --name vm0 --nbd-socket {} --store {} --pfx {} \
         --scratch-dir {} --json",
        env!("CARGO_BIN_EXE_drplane"),
        at("qmp.sock"),
        at("nbd.sock"),
        replica.store,
        replica.pfx,
        scratch.display(),
    );
    let guest = |file: &str, offset: u32| {
        format!(
            "qemu-io -f raw -c 'write -s {} {offset}M 16M' 'nbd+unix:///vm0?socket={}'",
            at(file),
            at("nbd.sock")
        )
    };
    let script = format!(
        "set -e; mount -t tmpfs -o size=80M tmpfs {scratch}; \
         qemu-storage-daemon --chardev socket,path={qmp},server=on,wait=off,id=q0 \
           --monitor chardev=q0 --blockdev driver=file,filename={disk},node-name=file0 \
           --blockdev driver=raw,file=file0,node-name=disk0 \
           --nbd-server addr.type=unix,addr.path={nbd} \
           --export type=nbd,id=vm0,node-name=disk0,name=vm0,writable=on & qsd=$!; \
         trap 'kill $qsd 2>/dev/null || true' EXIT; \
         for i in $(seq 200); do [ -S {nbd} ] && [ -S {qmp} ] && break; sleep 0.05; done; \
         {replicate} > {seed}; {guest_a} > /dev/null; \
         {replicate} --policy {paced} --upload-threads 1 > {paced_out} & cycle=$!; \
         for i in $(seq 600); do [ -e {scratch}/drplane-vm0.fleece ] && break; sleep 0.05; done; \
         fallocate -l $(( $(stat -f -c '%a * %S' {scratch}) )) {scratch}/filler; \
         stat -f -c '%a' {scratch} > {free_when_full}; \
         kill -0 $cycle; {guest_b} > {guest_b_out} 2>&1; kill -0 $cycle; \
         wait $cycle; rm {scratch}/filler; mount -o remount,size=32M {scratch}; \
         ! {replicate} 2> {refused}; {guest_c} > {guest_c_out} 2>&1; \
         {replicate} --no-scratch-reservation > {unreserved}; \
         kill $qsd; wait $qsd || true",
        scratch = scratch.display(),
        qmp = at("qmp.sock"),
        nbd = at("nbd.sock"),
        disk = disk.display(),
        seed = at("seed.json"),
        guest_a = guest("a.bin", 0),
        paced = at("paced.toml"),
        paced_out = at("paced.json"),
        free_when_full = at("free.txt"),
        guest_b = guest("b.bin", 0),
        guest_b_out = at("guest-b.txt"),
        refused = at("refused.txt"),
        guest_c = guest("c.bin", 32),
        guest_c_out = at("guest-c.txt"),
        unreserved = at("unreserved.json"),
    );
    let out = Command::new("unshare")
        .args(["-rm", "sh", "-c", &script])
        .env("DRPLANE_PFX_PASSWORD", PW)
        .output()
        .expect("unshare (util-linux) runs the tmpfs mount");
    let read = |name: &str| std::fs::read_to_string(d.join(name)).unwrap_or_default();
    assert!(
        out.status.success(),
        "{:?}\n{}\n{}\nguest B: {}\nrefused: {}\nguest C: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(&out),
        read("guest-b.txt"),
        read("refused.txt"),
        read("guest-c.txt"),
    );
    assert_eq!(
        read("free.txt").trim(),
        "0",
        "the scratch directory was full"
    );
    // The guest's write during the full-scratch cycle went through, and so did the one after
    // the refused cycle.
    for name in ["guest-b.txt", "guest-c.txt"] {
        let said = read(name);
        assert!(said.contains("wrote 16777216/16777216"), "{name}: {said}");
    }
    let refused = read("refused.txt");
    assert!(
        refused.contains("reserves the disk's size") && refused.contains("--scratch-dir"),
        "{refused}"
    );
    let point = |name: &str| -> u64 {
        let v: Value = serde_json::from_str(&read(name)).unwrap();
        v["point"].as_u64().unwrap()
    };
    assert_eq!(
        (
            point("seed.json"),
            point("paced.json"),
            point("unreserved.json")
        ),
        (0, 1, 2),
        "the refused cycle committed nothing"
    );
    let mut frozen = vec![0u8; SIZE as usize];
    frozen[..a.len()].copy_from_slice(&a);
    assert!(
        replica.restore(1) == frozen,
        "point 1 is the disk at its freeze"
    );
    let mut last = frozen;
    last[..b.len()].copy_from_slice(&b);
    last[32 << 20..48 << 20].copy_from_slice(&c);
    assert!(
        std::fs::read(&disk).unwrap() == last,
        "every guest write landed"
    );
    assert!(replica.restore(2) == last);
}

/// A VM's disks replicated together (`--node disk0 --name vm0 --node disk1 --name vm1`) are
/// frozen in one transaction, so every point of the machine is one instant of both: a guest
/// writes to the two disks in turn, one write after the other (write k to disk k mod 2), and
/// every machine point must hold, on both disks, exactly the writes up to one k. Disks frozen
/// one after the other (each its own `replicate`, as before) hold different prefixes.
#[test]
fn a_vms_disks_replicated_together_are_restored_at_one_instant() {
    let dir = temp_dir();
    let d = dir.path();
    let disks: Vec<PathBuf> = (0..2)
        .map(|i| {
            let disk = d.join(format!("disk{i}.vhdx"));
            qemu_img(&["create", "-q", "-f", "vhdx", path_str(&disk), "32M"]);
            disk
        })
        .collect();
    let daemon = Daemon::start_many(d, &[&disks[0], &disks[1]], "vhdx");
    let replica = Replica::new(d);
    let group_run = |extra: &[&str]| {
        let out = run_ok(
            drplane()
                .args(["replicate", "--qemu", path_str(&daemon.qmp)])
                .args(["--node", "disk0", "--name", "vm0", "--node", "disk1"])
                .args(["--name", "vm1", "--nbd-socket", path_str(&daemon.nbd)])
                .args(["--store", &replica.store, "--pfx", &replica.pfx, "--json"])
                .args(extra)
                .env("DRPLANE_PFX_PASSWORD", PW),
        );
        let reports: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(reports.len(), 2, "one report per disk: {reports:?}");
        reports
    };
    let group_cycle = || group_run(&[]);
    // The initial replication on the schedule (a new replica's first cycle is due at once).
    let first = group_run(&["--watch", "--cycles", "1"]);
    assert_eq!(
        (&first[0]["kind"], &first[1]["kind"]),
        (&json!("initial"), &json!("initial"))
    );
    // The guest: write k (from 1) to disk k mod 2, each after the one before completed.
    let log: Arc<Mutex<Vec<(usize, u64, usize)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let guest = {
        let mut clients: Vec<_> = ["vm0", "vm1"]
            .iter()
            .map(|e| NbdClient::connect_unix(&daemon.nbd, e, &[], Duration::from_secs(30)).unwrap())
            .collect();
        let (stop, log) = (stop.clone(), log.clone());
        std::thread::spawn(move || {
            let mut rng = ChaCha8Rng::seed_from_u64(17);
            while !stop.load(Ordering::Relaxed) {
                let k = log.lock().unwrap().len() + 1;
                let disk = k % 2;
                let len = 4096 * (1 + rng.next_u64() % 4) as usize;
                let offset = (rng.next_u64() % (((32 << 20) - len as u64) / 4096)) * 4096;
                clients[disk]
                    .write(offset, &stamped(k as u64, len))
                    .unwrap();
                log.lock().unwrap().push((disk, offset, len));
            }
        })
    };
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(150));
        let reports = group_cycle();
        assert_eq!(reports[0]["kind"], "delta", "{reports:?}");
    }
    stop.store(true, Ordering::Relaxed);
    guest.join().unwrap();
    group_cycle();
    let log = log.lock().unwrap().clone();
    assert!(log.len() > 100, "the guest wrote {} times", log.len());

    let out = run_ok(
        drplane()
            .args(["points", "--store", &replica.store, "--pfx", &replica.pfx])
            .args(["--name", "vm0", "--name", "vm1", "--json"])
            .env("DRPLANE_PFX_PASSWORD", PW),
    );
    let points: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        points.len(),
        6,
        "every cycle is a point of both disks: {points:?}"
    );
    let mut newest = Vec::new();
    for p in &points {
        let seq = p["points"]["vm0"].as_u64().unwrap().to_string();
        let outputs = [d.join("r0.raw"), d.join("r1.raw")];
        run_ok(
            drplane()
                .args(["restore", "--store", &replica.store, "--pfx", &replica.pfx])
                .args(["--name", "vm0", "--name", "vm1", "--point", &seq, "--force"])
                .arg("-o")
                .arg(&outputs[0])
                .arg("-o")
                .arg(&outputs[1])
                .env("DRPLANE_PFX_PASSWORD", PW),
        );
        let images = outputs.map(|o| std::fs::read(o).unwrap());
        // The newest write either disk holds; both must hold exactly the writes up to it.
        let k = images
            .iter()
            .map(|image| newest_write(image, log.len()))
            .max()
            .unwrap();
        let mut expected = [vec![0u8; 32 << 20], vec![0u8; 32 << 20]];
        for (i, &(disk, offset, len)) in log.iter().enumerate().take(k) {
            stamp(
                &mut expected[disk][offset as usize..offset as usize + len],
                i as u64 + 1,
            );
        }
        for disk in 0..2 {
            if let Some(at) = images[disk]
                .iter()
                .zip(&expected[disk])
                .position(|(a, b)| a != b)
            {
                panic!(
                    "machine point {p}: disk {disk} is not the disk after writes 1..={k} (the \
                     newest either disk holds): it differs at byte {at:#x}"
                );
            }
        }
        newest.push(k);
    }
    assert!(
        newest.windows(2).all(|w| w[0] <= w[1]) && newest[4] > newest[1],
        "the points move forward with the writes: {newest:?}"
    );
    assert_eq!(newest[5], log.len(), "the last point holds every write");

    // One disk's freeze cannot be made (its fleecing file's place is taken by a directory):
    // no disk is frozen, nothing commits, and the next cycle reads exactly what changed.
    let mut guest0 = daemon.guest();
    guest0.write(1 << 20, &[0xa0; 65536]).unwrap();
    let mut guest1 =
        NbdClient::connect_unix(&daemon.nbd, "vm1", &[], Duration::from_secs(30)).unwrap();
    guest1.write(2 << 20, &[0xa1; 65536]).unwrap();
    let blocked = d.join("drplane-vm1.fleece");
    std::fs::create_dir(&blocked).unwrap();
    let out = drplane()
        .args(["replicate", "--qemu", path_str(&daemon.qmp)])
        .args(["--node", "disk0", "--name", "vm0", "--node", "disk1"])
        .args(["--name", "vm1", "--nbd-socket", path_str(&daemon.nbd)])
        .args(["--store", &replica.store, "--pfx", &replica.pfx, "--json"])
        .env("DRPLANE_PFX_PASSWORD", PW)
        .output()
        .unwrap();
    let said = stderr(&out);
    assert!(!out.status.success() && out.stdout.is_empty(), "{said}");
    assert!(
        said.contains("drplane-vm1.fleece") && said.contains("no disk committed"),
        "{said}"
    );
    assert!(
        !d.join("drplane-vm0.fleece").exists(),
        "disk 0's freeze was undone"
    );
    std::fs::remove_dir(&blocked).unwrap();
    let reports = group_cycle();
    for r in &reports {
        assert_eq!(r["kind"], "delta", "{r}");
        assert_eq!(r["bytes_read"], 65536, "exactly the one change: {r}");
        assert_eq!(r["point"], 6, "{r}");
    }
    // drplane killed (-9) mid-cycle, both disks frozen: the next run clears what it left and
    // reads exactly what changed since point 6 on each disk, no resync.
    let mut a = vec![0u8; 4 << 20];
    ChaCha8Rng::seed_from_u64(5).fill_bytes(&mut a);
    guest0.write(4 << 20, &a).unwrap();
    guest1.write(8 << 20, &a).unwrap();
    let slow = d.join("slow.toml");
    std::fs::write(
        &slow,
        "[throttle]\nwork_hours_kbps = 512\nwork_start_hour = 0\nwork_end_hour = 24\n",
    )
    .unwrap();
    let child = drplane()
        .args(["replicate", "--qemu", path_str(&daemon.qmp)])
        .args(["--node", "disk0", "--name", "vm0", "--node", "disk1"])
        .args(["--name", "vm1", "--nbd-socket", path_str(&daemon.nbd)])
        .args(["--store", &replica.store, "--pfx", &replica.pfx])
        .args(["--policy", path_str(&slow), "--upload-threads", "1"])
        .env("DRPLANE_PFX_PASSWORD", PW)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kill_mid_cycle(
        child,
        &[d.join("drplane-vm0.fleece"), d.join("drplane-vm1.fleece")],
    );
    let reports = group_cycle();
    for r in &reports {
        assert_eq!(r["kind"], "delta", "{r}");
        assert_eq!(r["bytes_read"], 4 << 20, "exactly the change: {r}");
        assert_eq!(r["point"], 7, "the killed cycle committed nothing: {r}");
    }
    let images = [daemon.image(), {
        let mut image = vec![0; 32 << 20];
        guest1.read(0, &mut image).unwrap();
        image
    }];
    let outputs = [d.join("r0.raw"), d.join("r1.raw")];
    run_ok(
        drplane()
            .args(["restore", "--store", &replica.store, "--pfx", &replica.pfx])
            .args(["--name", "vm0", "--name", "vm1", "--force"])
            .arg("-o")
            .arg(&outputs[0])
            .arg("-o")
            .arg(&outputs[1])
            .env("DRPLANE_PFX_PASSWORD", PW),
    );
    for (output, image) in outputs.iter().zip(&images) {
        assert!(std::fs::read(output).unwrap() == *image);
    }

    // One disk of the machine's point cannot be read (its snapshot is gone): the restore
    // fails naming it, and no output appears, the other disk's included.
    let out = run_ok(
        drplane()
            .args(["points", "--store", &replica.store, "--pfx", &replica.pfx])
            .args(["--name", "vm1", "--json"])
            .env("DRPLANE_PFX_PASSWORD", PW),
    );
    let vm1: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let snapshot = vm1.last().unwrap()["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    {
        use pageblob::PageBlobStore;
        let store = pageblob::Emulator::open(
            Path::new(&replica.store),
            pageblob::Profile::Standard,
            pageblob::data_log::Durability::Process,
            Arc::new(pageblob::clock::SystemClock),
        )
        .unwrap();
        store
            .delete_blob(
                &pageblob::BlobPath::new("replicas", "vm1.replica"),
                Some(&snapshot),
                None,
                &pageblob::Conditions::default(),
            )
            .unwrap();
    }
    let fresh = [d.join("m0.raw"), d.join("m1.raw")];
    let out = drplane()
        .args(["restore", "--store", &replica.store, "--pfx", &replica.pfx])
        .args(["--name", "vm0", "--name", "vm1"])
        .arg("-o")
        .arg(&fresh[0])
        .arg("-o")
        .arg(&fresh[1])
        .env("DRPLANE_PFX_PASSWORD", PW)
        .output()
        .unwrap();
    assert!(
        !out.status.success() && stderr(&out).contains("vm1"),
        "{}",
        stderr(&out)
    );
    assert!(
        fresh.iter().all(|f| !f.exists()),
        "no output appears: {}",
        stderr(&out)
    );
    // Nor is a block device given for the first disk written.
    let backing = d.join("device.img");
    let old: Vec<u8> = (0..(40u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&backing, &old).unwrap();
    if let Some(device) = LoopDevice::attach(path_str(&backing)) {
        let out = drplane()
            .args(["restore", "--store", &replica.store, "--pfx", &replica.pfx])
            .args(["--name", "vm0", "--name", "vm1", "--force", "-o", &device.0])
            .arg("-o")
            .arg(&fresh[1])
            .env("DRPLANE_PFX_PASSWORD", PW)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{}", stderr(&out));
        assert!(
            std::fs::read(&device.0).unwrap() == old,
            "the device was written: {}",
            stderr(&out)
        );
        assert!(!fresh[1].exists());
    }
}

/// A VM's disks replicated together with no NBD server in QEMU: the group starts one for each
/// cycle (QEMU runs one, which every disk's view uses) and stops it when the cycle ends.
#[test]
fn a_vms_disks_replicated_together_share_one_nbd_server_drplane_starts() {
    let dir = temp_dir();
    let d = dir.path();
    let mut disks = Vec::new();
    for (i, pattern) in ["0x5a", "0xa5"].iter().enumerate() {
        let disk = d.join(format!("disk{i}.qcow2"));
        qemu_img(&["create", "-q", "-f", "qcow2", path_str(&disk), "16M"]);
        let target = path_str(&disk).to_string();
        let wrote = qemu_io(&target, &[format!("write -P {pattern} {}M 1M", 2 + i)]);
        assert!(wrote.status.success());
        disks.push(disk);
    }
    let qmp = d.join("own.sock");
    let mut child = daemon_without_nbd_server(&qmp, &[(&disks[0], "qcow2"), (&disks[1], "qcow2")]);
    let replica = Replica::new(d);
    for round in 0..2 {
        let out = run_ok(
            drplane()
                .args(["replicate", "--qemu", path_str(&qmp)])
                .args(["--node", "disk0", "--name", "vm0", "--node", "disk1"])
                .args([
                    "--name",
                    "vm1",
                    "--store",
                    &replica.store,
                    "--pfx",
                    &replica.pfx,
                ])
                .env("DRPLANE_PFX_PASSWORD", PW),
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            said.matches("committed").count(),
            2,
            "round {round}: {said}"
        );
        assert!(!d.join("drplane-vm0.nbd").exists(), "the server is stopped");
    }
    let mut monitor = Qmp::connect(&qmp, Duration::from_secs(10)).unwrap();
    let exports = monitor.execute("query-block-exports", json!({})).unwrap();
    assert_eq!(exports, json!([]), "nothing left exported");
    drop(monitor);
    let outputs = [d.join("r0.raw"), d.join("r1.raw")];
    let restore = |a: &Path, b: &Path, extra: &[&str]| {
        drplane()
            .args(["restore", "--store", &replica.store, "--pfx", &replica.pfx])
            .args(["--name", "vm0", "--name", "vm1"])
            .args(extra)
            .arg("-o")
            .arg(a)
            .arg("-o")
            .arg(b)
            .env("DRPLANE_PFX_PASSWORD", PW)
            .output()
            .unwrap()
    };
    // One file named twice (through a link to its folder), even with --force: refused before
    // anything is written (it once restored both there and reported both done, the first disk
    // lost).
    std::os::unix::fs::symlink(d, d.join("here")).unwrap();
    let twice = restore(&outputs[0], &d.join("here/r0.raw"), &["--force"]);
    let said = String::from_utf8_lossy(&twice.stderr);
    assert!(
        !twice.status.success() && said.contains("the same output as --name vm0"),
        "{said}"
    );
    assert!(!outputs[0].exists(), "nothing written");
    let points_twice = drplane()
        .args(["points", "--store", &replica.store, "--pfx", &replica.pfx])
        .args(["--name", "vm0", "--name", "vm0"])
        .env("DRPLANE_PFX_PASSWORD", PW)
        .output()
        .unwrap();
    assert!(!points_twice.status.success());
    let restored = restore(&outputs[0], &outputs[1], &[]);
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    // Disabling the machine: a disk that cannot be reached (a mistyped node) leaves every
    // disk's tracking as it was; then both go.
    let tracked = |qmp: &Path| -> usize {
        let mut monitor = Qmp::connect(qmp, Duration::from_secs(10)).unwrap();
        let nodes = monitor.named_nodes().unwrap();
        nodes
            .iter()
            .flat_map(|n| &n.dirty_bitmaps)
            .filter(|b| b.name.starts_with("drplane."))
            .count()
    };
    assert_eq!(tracked(&qmp), 2);
    let disable = |second_node: &str| {
        drplane()
            .args(["disable", "--qemu", path_str(&qmp)])
            .args(["--node", "disk0", "--name", "vm0", "--node", second_node])
            .args(["--name", "vm1"])
            .output()
            .unwrap()
    };
    let mistyped = disable("disk9");
    assert!(
        !mistyped.status.success() && stderr(&mistyped).contains("disk9"),
        "{}",
        stderr(&mistyped)
    );
    assert_eq!(
        tracked(&qmp),
        2,
        "a disable that cannot reach every disk changes none"
    );
    assert!(disable("disk1").status.success());
    assert_eq!(tracked(&qmp), 0);
    let _ = child.kill();
    let _ = child.wait();
    for (i, output) in outputs.iter().enumerate() {
        let raw = d.join(format!("disk{i}.raw"));
        qemu_img(&["convert", "-O", "raw", path_str(&disks[i]), path_str(&raw)]);
        assert_files_equal(output, &raw);
    }
}

/// One disk replicated under one name into two stores (a local one and the cloud, runs taking
/// turns): QEMU's bitmaps are named by the replica name, and a store's run once took the other
/// store's bitmap of the same point number for its own base — it had started later, so the
/// writes in between were never sent and the point was not the disk. A base now matches the
/// point's time as well: the other store's bitmaps mean a resync, never a wrong delta.
#[test]
fn two_stores_of_one_disk_under_one_name_never_take_each_others_changes() {
    let dir = temp_dir();
    let d = dir.path();
    let (daemon, a) = replicated_vhdx(d);
    let b = Replica {
        dir: d.to_path_buf(),
        pfx: a.pfx.clone(),
        store: path_str(&d.join("store-b")).into(),
    };
    // Written after A's point 0 and before B's: only A still owes it.
    daemon.guest().write(1 << 20, &[0x58; 65536]).unwrap();
    let r = b.cycle(&daemon, &[]);
    assert_eq!((&r["kind"], &r["point"]), (&json!("initial"), &json!(0)));
    let r = a.cycle(&daemon, &[]);
    assert_eq!(r["point"], 1, "{r}");
    assert_eq!(r["kind"], "resync", "B's bitmap is not A's base: {r}");
    assert!(a.restore(1) == daemon.image(), "A's point 1 is the disk");
    // A's own bitmap is its base again: a delta of exactly the next write.
    daemon.guest().write(2 << 20, &[0x59; 65536]).unwrap();
    let r = a.cycle(&daemon, &[]);
    assert_eq!(
        (&r["kind"], &r["bytes_read"]),
        (&json!("delta"), &json!(65536))
    );
    assert!(a.restore(2) == daemon.image());
}

/// `drplane disable` (ASR's "disable replication"): refused while a run replicates the disk;
/// then every bitmap of the replica leaves QEMU — a persistent one leaves the qcow2 image too —
/// with the scratch files, while the replica's points stay and restore. Replicating again is a
/// resync saying why. (Before, the bitmaps stayed in QEMU and in the image for good, costing
/// the guest's writes, with no command to remove them.)
#[test]
fn disable_removes_the_change_tracking_from_qemu_and_the_image_and_keeps_every_point() {
    let dir = temp_dir();
    let d = dir.path();
    let disk = new_disk(d, "qcow2");
    let mut daemon = Daemon::start(d, &disk, "qcow2");
    let replica = Replica::new(d);
    let persistent = ["--persistent-bitmap"];
    replica.cycle(&daemon, &persistent);
    daemon.guest().write(1 << 20, &[0x3c; 65536]).unwrap();
    replica.cycle(&daemon, &persistent);
    let our_bitmaps = |qmp: &Path| -> Vec<String> {
        let mut monitor = Qmp::connect(qmp, Duration::from_secs(10)).unwrap();
        let nodes = monitor.named_nodes().unwrap();
        nodes
            .iter()
            .flat_map(|n| n.dirty_bitmaps.iter().map(|b| b.name.clone()))
            .filter(|name| name.starts_with("drplane."))
            .collect()
    };
    assert_eq!(our_bitmaps(&daemon.qmp).len(), 1);
    let disable = |extra: &[&str]| {
        drplane()
            .args(["disable", "--qemu", path_str(&daemon.qmp)])
            .args(["--node", "disk0", "--name", "vm0"])
            .args(extra)
            .output()
            .unwrap()
    };
    // A watch holds the disk: refused, naming it, and the tracking stays.
    let mut watch = replica.command(&daemon, &["--watch"]).spawn().unwrap();
    let pid = watch.id().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(d.join("drplane-vm0.lock")).unwrap_or_default() != pid {
        assert!(Instant::now() < deadline, "the watch did not attach");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Given another scratch directory too: the lock is beside the QMP socket, not among the
    // scratch files (there, a run given another directory got through).
    let elsewhere = d.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    for extra in [&[][..], &["--scratch-dir", path_str(&elsewhere)][..]] {
        let refused = disable(extra);
        assert!(!refused.status.success());
        assert!(
            stderr(&refused).contains(&format!("another drplane run (PID {pid})")),
            "{extra:?}: {}",
            stderr(&refused)
        );
        assert_eq!(our_bitmaps(&daemon.qmp).len(), 1);
    }
    std::fs::remove_dir(&elsewhere).unwrap();
    run_ok(Command::new("kill").args(["-TERM", &pid]));
    assert!(watch.wait().unwrap().success());

    let done = disable(&[]);
    assert!(done.status.success(), "{}", stderr(&done));
    let said = String::from_utf8_lossy(&done.stdout);
    assert!(
        said.contains("change tracking removed (drplane.vm0."),
        "{said}"
    );
    assert_eq!(our_bitmaps(&daemon.qmp), Vec::<String>::new());
    let left: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("drplane-"))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "scratch files left");
    // A run that cannot attach (the NBD socket given for the QMP one) leaves no lock file.
    let wrong = drplane()
        .args(["disable", "--qemu", path_str(&daemon.nbd)])
        .args(["--node", "disk0", "--name", "vm0"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(
        !d.join("drplane-vm0.lock").exists(),
        "a failed attach left its lock"
    );
    // Nothing of drplane's in the image once QEMU has closed it.
    let image = daemon.image();
    daemon.stop("-TERM");
    let info = qemu_img(&["info", "--output=json", path_str(&disk)]);
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(!info.contains("drplane."), "{info}");
    daemon = Daemon::start(d, &disk, "qcow2");
    // Every point stays and restores; replicating again is a resync that says why.
    assert_eq!(replica.points(), vec![0, 1]);
    assert!(replica.restore(1) == image);
    let again = run_ok(&mut replica.command(&daemon, &persistent));
    let r: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(r["kind"], "resync", "{r}");
    assert!(
        stderr(&again).contains("replication was disabled"),
        "{}",
        stderr(&again)
    );
    assert!(replica.restore(r["point"].as_u64().unwrap()) == daemon.image());
}
