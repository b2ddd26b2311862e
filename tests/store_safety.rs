//! A committed point stays restorable whatever the user does around it: two writers at once,
//! readers during a cycle, a store on a read-only mount, a flipped byte in the store's log, a
//! mistyped `--store`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Output, Stdio};

use common::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

const PW: &str = "safety-pw";

fn dp(args: &[&str]) -> Output {
    run_ok(drplane().args(args).env("DRPLANE_PFX_PASSWORD", PW))
}

fn dp_fails(args: &[&str]) -> String {
    let out = drplane()
        .args(args)
        .env("DRPLANE_PFX_PASSWORD", PW)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    stderr
}

/// A raw disk of `mib` MiB: half its 64 KiB blocks hold seeded, compressible bytes.
fn write_disk(path: &Path, mib: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut disk = vec![0u8; mib << 20];
    for block in disk.chunks_mut(65536) {
        if rng.next_u32() % 2 == 0 {
            let fill = rng.next_u32() as u8;
            for (i, v) in block.iter_mut().enumerate() {
                *v = if i % 4 == 0 {
                    rng.next_u32() as u8
                } else {
                    fill
                };
            }
        }
    }
    std::fs::write(path, &disk).unwrap();
    disk
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let s = Setup { dir: temp_dir() };
        dp(&["register", "--vault", "vt", "--out", &s.p("reg")]);
        s
    }
    fn p(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
    fn replicate(&self, disk: &str, store: &str, name: &str) -> Vec<String> {
        let pfx = self.p("reg/vt.pfx");
        [
            "replicate",
            "--disk",
            disk,
            "--store",
            store,
            "--pfx",
            &pfx,
            "--name",
            name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
    fn read_cmd(&self, cmd: &str, store: &str, name: &str) -> Vec<String> {
        let pfx = self.p("reg/vt.pfx");
        [cmd, "--store", store, "--pfx", &pfx, "--name", name]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn a_second_writer_is_refused_naming_the_first_and_readers_get_in_between_cycles() {
    let s = Setup::new();
    let store = s.p("store");
    write_disk(Path::new(&s.p("a.raw")), 8, 1);
    let b = write_disk(Path::new(&s.p("b.raw")), 8, 2);
    let mut watch_args = s.replicate(&s.p("a.raw"), &store, "a");
    watch_args.push("--watch".into());
    let mut watch = drplane()
        .args(args(&watch_args))
        .env("DRPLANE_PFX_PASSWORD", PW)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(watch.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("committed"), "{first:?}");
    // The watch sleeps until its next cycle, holding the store: a second writer is refused.
    let err = dp_fails(&args(&s.replicate(&s.p("b.raw"), &store, "b")));
    assert!(
        err.contains("in use by PID") && err.contains(&watch.id().to_string()),
        "{err}"
    );
    // Readers get in while it sleeps.
    let points = dp(&args(&s.read_cmd("points", &store, "a")));
    assert_eq!(String::from_utf8_lossy(&points.stdout).lines().count(), 1);
    dp(&args(&s.read_cmd("verify", &store, "a")));
    run_ok(std::process::Command::new("kill").args(["-INT", &watch.id().to_string()]));
    assert!(watch.wait().unwrap().success());
    // Once it is gone, the second writer runs, and both replicas verify.
    dp(&args(&s.replicate(&s.p("b.raw"), &store, "b")));
    dp(&args(&s.read_cmd("verify", &store, "a")));
    let mut restore = s.read_cmd("restore", &store, "b");
    restore.extend(["-o".into(), s.p("b.out")]);
    dp(&args(&restore));
    assert_eq!(std::fs::read(s.p("b.out")).unwrap(), b);
}

#[test]
fn readers_in_a_loop_during_cycles_lose_no_point() {
    let s = Setup::new();
    let store = s.p("store");
    let disk = s.p("d.raw");
    write_disk(Path::new(&disk), 32, 3);
    dp(&args(&s.replicate(&disk, &store, "d")));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let reads = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                dp(&args(&s.read_cmd("points", &store, "d")));
                reads += 1;
            }
            reads
        });
        for seed in 10..13 {
            write_disk(Path::new(&disk), 32, seed);
            dp(&args(&s.replicate(&disk, &store, "d")));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap()
    });
    assert!(reads > 0);
    let out = dp(&args(&s.read_cmd("verify", &store, "d")));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("4 point(s) verified, 0 failed"), "{text}");
}

#[test]
fn a_served_store_directory_is_refused_to_writers_and_readers_with_the_server_named() {
    let s = Setup::new();
    let data = s.dir.path().join("served");
    let server = start_server(&data, "standard");
    let store = data.to_str().unwrap();
    write_disk(Path::new(&s.p("d.raw")), 4, 4);
    let err = dp_fails(&args(&s.replicate(&s.p("d.raw"), store, "d")));
    assert!(err.contains("in use by PID"), "{err}");
    let err = dp_fails(&args(&s.read_cmd("points", store, "d")));
    assert!(
        err.contains("served by PID") && err.contains("URL"),
        "{err}"
    );
    server.stop("-TERM");
}

#[test]
fn points_verify_and_restore_work_on_a_read_only_mount() {
    let s = Setup::new();
    let store = s.p("store");
    let disk = s.p("d.raw");
    write_disk(Path::new(&disk), 8, 5);
    dp(&args(&s.replicate(&disk, &store, "d")));
    let second = write_disk(Path::new(&disk), 8, 6);
    dp(&args(&s.replicate(&disk, &store, "d")));
    let mnt = s.p("ro");
    std::fs::create_dir(&mnt).unwrap();
    // A private mount namespace: bind the store read-only and run every reader there.
    let drplane = env!("CARGO_BIN_EXE_drplane");
    let pfx = s.p("reg/vt.pfx");
    let out_file = s.p("restored.raw");
    let script = format!(
        "set -e; mount --bind -o ro {store} {mnt}; \
         ! touch {mnt}/probe 2>/dev/null; \
         {drplane} points --store {mnt} --pfx {pfx} --name d; \
         {drplane} verify --store {mnt} --pfx {pfx} --name d; \
         {drplane} restore --store {mnt} --pfx {pfx} --name d -o {out_file}"
    );
    let out = std::process::Command::new("unshare")
        .args(["-rm", "sh", "-c", &script])
        .env("DRPLANE_PFX_PASSWORD", PW)
        .output()
        .expect("unshare (util-linux) runs the read-only mount");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 point(s) verified, 0 failed"));
    assert_eq!(std::fs::read(&out_file).unwrap(), second);
}

/// A store whose file system fills up: the cycle that runs out of space fails naming it and
/// commits nothing, the points before it verify and restore, and once there is room the next
/// cycle commits a point that restores byte-exact. (A 20 MiB tmpfs in a private mount
/// namespace; 8 MiB incompressible disks: two points fit, the third does not.)
#[test]
fn a_full_file_system_fails_the_cycle_and_keeps_every_point() {
    let s = Setup::new();
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let disks: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let mut disk = vec![0u8; 8 << 20];
            rng.fill_bytes(&mut disk);
            std::fs::write(s.p(&format!("d{i}.raw")), &disk).unwrap();
            disk
        })
        .collect();
    let mnt = s.p("small");
    std::fs::create_dir(&mnt).unwrap();
    let store = format!("{mnt}/store");
    let disk = s.p("disk.raw");
    let drplane = env!("CARGO_BIN_EXE_drplane");
    let pfx = s.p("reg/vt.pfx");
    let at = |name: &str| s.p(name);
    let replicate =
        format!("{drplane} replicate --disk {disk} --store {store} --pfx {pfx} --name d");
    let reader = |cmd: &str| format!("{drplane} {cmd} --store {store} --pfx {pfx} --name d");
    let script = format!(
        "set -e; mount -t tmpfs -o size=20M tmpfs {mnt}; \
         cp {d0} {disk}; {replicate}; cp {d1} {disk}; {replicate}; \
         cp {d2} {disk}; ! {replicate} 2> {full_err}; \
         {verify} > {verified_full}; {restore} -o {restored_full}; \
         mount -o remount,size=64M {mnt}; {replicate}; \
         {verify} > {verified_room}; {restore} -o {restored_room}",
        d0 = at("d0.raw"),
        d1 = at("d1.raw"),
        d2 = at("d2.raw"),
        full_err = at("full.err"),
        verify = reader("verify"),
        verified_full = at("verified-full.txt"),
        restore = reader("restore"),
        restored_full = at("restored-full.raw"),
        verified_room = at("verified-room.txt"),
        restored_room = at("restored-room.raw"),
    );
    let out = std::process::Command::new("unshare")
        .args(["-rm", "sh", "-c", &script])
        .env("DRPLANE_PFX_PASSWORD", PW)
        .output()
        .expect("unshare (util-linux) runs the tmpfs mount");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let full = std::fs::read_to_string(at("full.err")).unwrap();
    assert!(full.contains("No space left on device"), "{full}");
    assert!(!full.contains("panicked"), "{full}");
    let verified = std::fs::read_to_string(at("verified-full.txt")).unwrap();
    assert!(
        verified.contains("2 point(s) verified, 0 failed"),
        "{verified}"
    );
    assert!(std::fs::read(at("restored-full.raw")).unwrap() == disks[1]);
    let verified = std::fs::read_to_string(at("verified-room.txt")).unwrap();
    assert!(
        verified.contains("3 point(s) verified, 0 failed"),
        "{verified}"
    );
    assert!(std::fs::read(at("restored-room.raw")).unwrap() == disks[2]);
}

#[test]
fn a_flipped_byte_in_the_store_log_fails_every_reader_and_keeps_the_log() {
    let s = Setup::new();
    let store = s.p("store");
    let disk = s.p("d.raw");
    for seed in 20..23 {
        write_disk(Path::new(&disk), 4, seed);
        dp(&args(&s.replicate(&disk, &store, "d")));
    }
    let seg = Path::new(&store).join("log/segment-000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&seg, &bytes).unwrap();
    for cmd in ["points", "verify"] {
        let err = dp_fails(&args(&s.read_cmd(cmd, &store, "d")));
        assert!(
            err.contains("damaged") && err.contains("segment-000000.log"),
            "{cmd}: {err}"
        );
    }
    let err = dp_fails(&args(&s.replicate(&disk, &store, "d")));
    assert!(err.contains("damaged"), "{err}");
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "the log was cut");
}

#[test]
fn a_mistyped_store_is_never_created_or_taken_over() {
    let s = Setup::new();
    let disk = s.p("d.raw");
    write_disk(Path::new(&disk), 2, 7);
    let missing = s.p("no-such-store");
    for cmd in ["points", "verify"] {
        let err = dp_fails(&args(&s.read_cmd(cmd, &missing, "d")));
        assert!(err.contains("not a drplane store"), "{cmd}: {err}");
    }
    assert!(!Path::new(&missing).exists());
    let unrelated = s.p("photos");
    std::fs::create_dir(&unrelated).unwrap();
    std::fs::write(Path::new(&unrelated).join("cat.jpg"), b"meow").unwrap();
    let err = dp_fails(&args(&s.replicate(&disk, &unrelated, "d")));
    assert!(err.contains("not empty"), "{err}");
    let names: Vec<_> = std::fs::read_dir(&unrelated)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["cat.jpg"]);
}

/// The home file of the store whose bytes at `at` are `magic` (blob content, by its format).
fn home_with(store: &str, at: usize, magic: &[u8; 4]) -> std::path::PathBuf {
    std::fs::read_dir(Path::new(store).join("homes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let b = std::fs::read(p).unwrap();
            b.len() >= at + 4 && &b[at..at + 4] == magic
        })
        .unwrap_or_else(|| panic!("no home file with {magic:?} at {at}"))
}

/// Flip a bit of the last written byte of the store's slots (a record's payload); returns the
/// home file and its bytes before.
fn damage_last_record(store: &str) -> (std::path::PathBuf, Vec<u8>) {
    let home = home_with(store, 0, b"DPSL");
    let good = std::fs::read(&home).unwrap();
    let mut bad = good.clone();
    let at = bad.iter().rposition(|&b| b != 0).unwrap();
    bad[at] ^= 0x01;
    std::fs::write(&home, &bad).unwrap();
    (home, good)
}

fn no_partial_files(dir: &Path) {
    let partial: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(partial.is_empty(), "left behind: {partial:?}");
}

#[test]
fn restore_never_overwrites_without_force_writes_sparse_and_leaves_nothing_when_it_fails() {
    let s = Setup::new();
    let store = s.p("store");
    let disk = s.p("d.raw");
    let content = write_disk(Path::new(&disk), 8, 8);
    dp(&args(&s.replicate(&disk, &store, "d")));
    let restore_to = |out: &str, extra: &[&str]| {
        let mut cmd = s.read_cmd("restore", &store, "d");
        cmd.extend(["-o".to_string(), out.to_string()]);
        cmd.extend(extra.iter().map(|e| e.to_string()));
        cmd
    };
    // The live source disk as output: refused, untouched.
    let err = dp_fails(&args(&restore_to(&disk, &[])));
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&disk).unwrap(), content);
    // A file of the store itself, even with --force (it was replaced by the restored disk,
    // the store's committed point with it), or a new file in it: refused, the file untouched.
    let home = std::fs::read_dir(Path::new(&store).join("homes"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let home_bytes = std::fs::read(&home).unwrap();
    for out in [
        home.clone(),
        Path::new(&store).join("store.json"),
        Path::new(&store).join("homes/new.raw"),
    ] {
        let err = dp_fails(&args(&restore_to(out.to_str().unwrap(), &["--force"])));
        assert!(err.contains("inside the store directory"), "{err}");
    }
    assert_eq!(std::fs::read(&home).unwrap(), home_bytes);
    assert!(!Path::new(&store).join("homes/new.raw").exists());
    // A new raw output is sparse: half the blocks are zeros, and they are holes.
    let out = s.p("restored.raw");
    dp(&args(&restore_to(&out, &[])));
    assert_eq!(std::fs::read(&out).unwrap(), content);
    let allocated = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&out).unwrap()) * 512;
    assert!(
        allocated < content.len() as u64 * 3 / 4,
        "{allocated} bytes allocated for {} with half its blocks zero",
        content.len()
    );
    // A new file has the permissions of any new file (0666 less the umask, not a temporary
    // file's 0600); --force replaces a file and keeps its permissions.
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &str| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    // The umask as the kernel reports it (setting it to read it would race other tests).
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let umask = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
        .unwrap();
    assert_eq!(mode(&out), 0o666 & !umask);
    std::fs::write(&out, b"old").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o640)).unwrap();
    dp(&args(&restore_to(&out, &["--force"])));
    assert_eq!(std::fs::read(&out).unwrap(), content);
    assert_eq!(mode(&out), 0o640, "a replaced file keeps its permissions");
    // What a restore killed mid-way leaves (its unlocked partial file) goes with the next
    // restore to that target; the file of a restore still running (locked) stays.
    let killed = s.p(".restored.raw.k1Ll3d.partial");
    std::fs::write(&killed, vec![7u8; 1 << 20]).unwrap();
    let running = s.p(".restored.raw.run1ng.partial");
    let held = std::fs::File::create(&running).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let other_target = s.p(".other.raw.k1Ll3d.partial");
    std::fs::write(&other_target, b"not ours").unwrap();
    let out_err = drplane()
        .args(args(&restore_to(&out, &["--force"])))
        .env("DRPLANE_PFX_PASSWORD", PW)
        .output()
        .unwrap();
    assert!(out_err.status.success());
    assert!(
        String::from_utf8_lossy(&out_err.stderr).contains("a restore that was stopped left it"),
        "{}",
        String::from_utf8_lossy(&out_err.stderr)
    );
    assert_eq!(std::fs::read(&out).unwrap(), content);
    assert!(
        !Path::new(&killed).exists(),
        "a killed restore's file stays"
    );
    assert!(
        Path::new(&running).exists(),
        "a running restore's file went"
    );
    assert!(
        Path::new(&other_target).exists(),
        "another target's file went"
    );
    drop(held);
    std::fs::remove_file(&running).unwrap();
    std::fs::remove_file(&other_target).unwrap();
    // A damaged record: the restore fails, no output appears, no partial file stays.
    damage_last_record(&store);
    for name in ["fail.raw", "fail.vhdx"] {
        let err = dp_fails(&args(&restore_to(&s.p(name), &[])));
        assert!(err.contains("nothing was written"), "{err}");
        assert!(!Path::new(&s.p(name)).exists(), "{name} appeared");
    }
    no_partial_files(s.dir.path());
}

#[test]
fn a_damaged_manifest_blocks_only_its_own_point() {
    let s = Setup::new();
    let store = s.p("store");
    let disk = s.p("d.raw");
    let mut contents = Vec::new();
    for seed in 30..33 {
        contents.push(write_disk(Path::new(&disk), 4, seed));
        dp(&args(&s.replicate(&disk, &store, "d")));
    }
    // Point 0's journal slot (slot 0: length, then the manifest's magic).
    let journal = home_with(&store, 4, b"DPMF");
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes[40] ^= 0x01;
    std::fs::write(&journal, &bytes).unwrap();
    let out = drplane()
        .args(args(&s.read_cmd("points", &store, "d")))
        .env("DRPLANE_PFX_PASSWORD", PW)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(listed, ["1", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("journal slot 0 is damaged"), "{stderr}");
    for point in [1usize, 2] {
        let out_file = s.p(&format!("p{point}.raw"));
        let mut cmd = s.read_cmd("restore", &store, "d");
        cmd.extend([
            "--point".into(),
            point.to_string(),
            "-o".into(),
            out_file.clone(),
        ]);
        dp(&args(&cmd));
        assert_eq!(std::fs::read(&out_file).unwrap(), contents[point]);
    }
    let err = dp_fails(&args(&s.read_cmd("verify", &store, "d")));
    assert!(err.contains("journal slot 0"), "{err}");
}

#[test]
fn fifos_character_devices_and_empty_disks_are_refused_with_a_clear_error() {
    let s = Setup::new();
    let store = s.p("store");
    let fifo = s.p("pipe.raw");
    run_ok(std::process::Command::new("mkfifo").arg(&fifo));
    let empty = s.p("empty.raw");
    std::fs::write(&empty, b"").unwrap();
    let vhdx_fifo = s.p("pipe.vhdx");
    run_ok(std::process::Command::new("mkfifo").arg(&vhdx_fifo));
    for (disk, says) in [
        (fifo.as_str(), "a FIFO"),
        (vhdx_fifo.as_str(), "a FIFO"),
        ("/dev/null", "a character device"),
        (empty.as_str(), "empty"),
        (s.dir.path().to_str().unwrap(), "a directory"),
    ] {
        // Under `timeout`: opening a FIFO for reading would block forever.
        let out = std::process::Command::new("timeout")
            .arg("60")
            .arg(env!("CARGO_BIN_EXE_drplane"))
            .args(args(&s.replicate(disk, &store, "d")))
            .env("DRPLANE_PFX_PASSWORD", PW)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{disk}: {err}");
        assert!(err.contains(says) && err.contains(disk), "{disk}: {err}");
    }
    assert!(
        !Path::new(&store).join("store.json").exists() || {
            // Nothing was committed anywhere.
            dp_fails(&args(&s.read_cmd("points", &store, "d"))).contains("no replica")
        }
    );
}

/// A loop device over a file: `replicate` reads it at its real size (its metadata says 0).
#[test]
fn a_block_device_is_replicated_at_its_real_size() {
    let s = Setup::new();
    let backing = s.p("backing.img");
    let content = write_disk(Path::new(&backing), 6, 9);
    let Some(attached) = LoopDevice::attach(&backing) else {
        return;
    };
    let device = attached.0.clone();
    let store = s.p("store");
    let mut replicate = s.replicate(&device, &store, "dev");
    replicate.push("--json".into());
    let out = dp(&args(&replicate));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["blocks"], 96, "{v}");
    let mut restore = s.read_cmd("restore", &store, "dev");
    restore.extend(["-o".into(), s.p("dev.out")]);
    dp(&args(&restore));
    assert_eq!(std::fs::read(s.p("dev.out")).unwrap(), content);
}

/// A point restored onto a block device (a replacement disk): only with `--force`, proven
/// before anything is written (a damaged point leaves the device as it was), written whole
/// with its zero blocks, and refused onto a device too small for the disk.
#[test]
fn a_point_restores_onto_a_block_device_proven_before_it_is_written() {
    let s = Setup::new();
    let store = s.p("store");
    let disk = s.p("d.raw");
    let content = write_disk(Path::new(&disk), 4, 12);
    dp(&args(&s.replicate(&disk, &store, "d")));
    // The device holds other bytes, beyond the disk's size too (they stay).
    let backing = s.p("target.img");
    let old: Vec<u8> = (0..5u32 << 20).map(|i| (i % 253) as u8 ^ 0xA5).collect();
    std::fs::write(&backing, &old).unwrap();
    let small = s.p("small.img");
    std::fs::write(&small, vec![0u8; 1 << 20]).unwrap();
    let (Some(target), Some(too_small)) =
        (LoopDevice::attach(&backing), LoopDevice::attach(&small))
    else {
        return;
    };
    let restore_to = |device: &str, force: bool| {
        let mut cmd = s.read_cmd("restore", &store, "d");
        cmd.extend(["-o".to_string(), device.to_string()]);
        if force {
            cmd.push("--force".into());
        }
        cmd
    };
    let err = dp_fails(&args(&restore_to(&target.0, false)));
    assert!(
        err.contains("block device") && err.contains("--force"),
        "{err}"
    );
    let err = dp_fails(&args(&restore_to(&too_small.0, true)));
    assert!(err.contains("holds 1048576 bytes"), "{err}");
    // A damaged record: refused before a byte of the device changes.
    let (home, good) = damage_last_record(&store);
    let err = dp_fails(&args(&restore_to(&target.0, true)));
    assert!(err.contains("nothing was written"), "{err}");
    assert!(
        std::fs::read(&target.0).unwrap() == old,
        "the device changed"
    );
    std::fs::write(&home, &good).unwrap();
    dp(&args(&restore_to(&target.0, true)));
    let now = std::fs::read(&target.0).unwrap();
    assert!(
        now[..content.len()] == content[..],
        "the point, zero blocks included"
    );
    assert!(
        now[content.len()..] == old[content.len()..],
        "past the disk: untouched"
    );
}

#[test]
fn durability_is_power_unless_the_user_opts_out_and_bad_values_are_refused() {
    let s = Setup::new();
    let disk = s.p("d.raw");
    write_disk(Path::new(&disk), 2, 11);
    // Default (power) and the opt-out both commit; nonsense is refused before any work.
    dp(&args(&s.replicate(&disk, &s.p("synced"), "d")));
    let mut fast = s.replicate(&disk, &s.p("fast"), "d");
    fast.extend(["--durability".into(), "process".into()]);
    dp(&args(&fast));
    let mut bad = s.replicate(&disk, &s.p("bad"), "d");
    bad.extend(["--durability".into(), "sometimes".into()]);
    let err = dp_fails(&args(&bad));
    assert!(err.contains("power or process"), "{err}");
    assert!(!Path::new(&s.p("bad")).exists());
    for store in ["synced", "fast"] {
        dp(&args(&s.read_cmd("verify", &s.p(store), "d")));
    }
}

/// A 7 TiB VHDX with a few blocks written is replicated, restored to a VHDX and verified by
/// its data, not its size (before, the scan alone kept ~8 GB of per-block tables for such a
/// disk); one past what a page blob holds (64 TiB) is refused, saying which disks fit, and
/// nothing is made in the store.
#[test]
fn a_huge_sparse_vhdx_replicates_by_its_data_and_one_past_a_page_blob_is_refused() {
    use vhdx::testing::{pattern, ImageBuilder};
    let s = Setup::new();
    let size = 7u64 << 40;
    let writes = [
        (0u64, pattern(1, 4096)),
        (size / 3 / 4096 * 4096, pattern(2, 70_000)),
        (size - 65536, pattern(3, 65536)),
    ];
    let mut image = ImageBuilder::new(size);
    for (at, bytes) in &writes {
        image.write(*at, bytes);
    }
    let disk = s.p("huge.vhdx");
    std::fs::write(&disk, image.build()).unwrap();
    let store = s.p("store");
    let mut replicate = s.replicate(&disk, &store, "huge");
    replicate.push("--json".into());
    let out = dp(&args(&replicate));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["blocks"], size / 65536, "{v}");
    let mut restore = s.read_cmd("restore", &store, "huge");
    restore.extend(["-o".into(), s.p("out.vhdx")]);
    dp(&args(&restore));
    let restored = vhdx::Disk::open(Path::new(&s.p("out.vhdx"))).unwrap();
    assert_eq!(restored.virtual_size(), size);
    for (at, bytes) in &writes {
        let mut exact = vec![0u8; bytes.len()];
        restored.read_at(*at, &mut exact).unwrap();
        assert_eq!(&exact, bytes, "at {at}");
    }
    let mut between = vec![0xFFu8; 65536];
    restored.read_at(size / 2, &mut between).unwrap();
    assert!(between.iter().all(|&b| b == 0));
    let out = dp(&args(&s.read_cmd("verify", &store, "huge")));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 point(s) verified, 0 failed"));

    let mut too_big = ImageBuilder::new(64 << 40);
    too_big.block_size(256 << 20).write(0, &pattern(4, 4096));
    let big = s.p("big.vhdx");
    std::fs::write(&big, too_big.build()).unwrap();
    let err = dp_fails(&args(&s.replicate(&big, &store, "big")));
    assert!(
        err.contains("past a page blob's 8 TiB; disks of up to 8727906222080 bytes"),
        "{err}"
    );
    let err = dp_fails(&args(&s.read_cmd("points", &store, "big")));
    assert!(err.contains("no replica named big"), "{err}");
    // Into a store directory not made yet: refused before it is made.
    let new_store = s.p("new-store");
    let err = dp_fails(&args(&s.replicate(&big, &new_store, "big")));
    assert!(err.contains("past a page blob's 8 TiB"), "{err}");
    assert!(
        !Path::new(&new_store).exists(),
        "a refused disk left a store behind"
    );
}
