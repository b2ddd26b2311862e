//! Helpers shared by the integration tests: the built binary, qemu tools, temp files.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub fn drplane() -> Command {
    Command::new(env!("CARGO_BIN_EXE_drplane"))
}

/// Run a command, panicking with its stderr if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (qemu-utils installed? .ci/run installs it)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

pub fn qemu_img(args: &[&str]) -> Output {
    run_ok(Command::new("qemu-img").args(args))
}

/// `qemu-io -c CMD... FILE` (the file argument may be a json: blkdebug spec).
pub fn qemu_io(target: &str, commands: &[String]) -> Output {
    let mut c = Command::new("qemu-io");
    for cmd in commands {
        c.arg("-c").arg(cmd);
    }
    c.arg(target);
    c.output().expect("cannot run qemu-io (install qemu-utils)")
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// `drplane vhdx export IMAGE -o OUT` then `qemu-img convert -O raw` and compare bytes.
pub fn assert_export_matches_qemu(dir: &Path, image: &Path) {
    let ours = dir.join("ours.raw");
    let theirs = dir.join("qemu.raw");
    // Called once per image with the same outputs: each export replaces the last.
    run_ok(drplane().args([
        "vhdx",
        "export",
        path_str(image),
        "-o",
        path_str(&ours),
        "--force",
    ]));
    qemu_convert_to_raw(image, &theirs);
    assert_files_equal(&ours, &theirs);
}

/// Compare two (possibly large, sparse) files in chunks.
pub fn assert_files_equal(a: &Path, b: &Path) {
    use std::io::Read;
    let (la, lb) = (
        std::fs::metadata(a).unwrap().len(),
        std::fs::metadata(b).unwrap().len(),
    );
    assert_eq!(
        la,
        lb,
        "{} and {} differ in length",
        a.display(),
        b.display()
    );
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut x, mut y) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    let mut done = 0u64;
    while done < la {
        let n = (la - done).min(x.len() as u64) as usize;
        fa.read_exact(&mut x[..n]).unwrap();
        fb.read_exact(&mut y[..n]).unwrap();
        if x[..n] != y[..n] {
            let i = x[..n]
                .iter()
                .zip(&y[..n])
                .position(|(p, q)| p != q)
                .unwrap();
            panic!(
                "{} and {} differ first at byte {:#x}",
                a.display(),
                b.display(),
                done + i as u64
            );
        }
        done += n as u64;
    }
}

/// A temporary folder for a test, removed afterwards unless `DRPLANE_KEEP_TEST_DIRS` is set
/// (to inspect what a failing run left).
pub fn temp_dir() -> tempfile::TempDir {
    let mut d = tempfile::tempdir().expect("temp dir");
    if std::env::var_os("DRPLANE_KEEP_TEST_DIRS").is_some() {
        d.disable_cleanup(true);
    }
    d
}

pub fn file_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// A blkdebug wrapper that fails the first write touching `sector` (512-byte units) with EIO.
pub fn blkdebug_failing_write(image: &Path, sector: u64) -> String {
    format!(
        r#"json:{{"driver":"vhdx","file":{{"driver":"blkdebug","inject-error":[{{"event":"pwritev","sector":{sector},"iotype":"write","errno":5,"once":true}}],"image":{{"driver":"file","filename":"{}"}}}}}}"#,
        path_str(image)
    )
}

pub fn qemu_convert_to_raw(image: &Path, raw: &Path) {
    qemu_img(&[
        "convert",
        "-f",
        "vhdx",
        "-O",
        "raw",
        path_str(image),
        path_str(raw),
    ]);
}

/// A `drplane blob serve` on a free loopback port.
pub struct Server {
    pub child: Child,
    pub endpoint: String,
}

pub fn start_server(data: &Path, profile: &str) -> Server {
    start_server_on(data, profile, "127.0.0.1:0")
}

/// [`start_server`] listening on `listen` (to restart a server where its clients expect it).
pub fn start_server_on(data: &Path, profile: &str, listen: &str) -> Server {
    let mut child = drplane()
        .args([
            "blob",
            "serve",
            "--listen",
            listen,
            "--profile",
            profile,
            "--data",
        ])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let endpoint = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Server { child, endpoint }
}

impl Server {
    pub fn addr(&self) -> String {
        self.endpoint
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_string()
    }
    pub fn stop(mut self, signal: &str) {
        run_ok(Command::new("kill").args([signal, &self.child.id().to_string()]));
        let status = self.child.wait().unwrap();
        if signal == "-TERM" {
            assert!(status.success(), "graceful shutdown exited with {status}");
        }
    }
}

/// The python of a venv under target/`name` that can `import module` (pip-installing `package`
/// into it on first use). Made once per target directory: the tests of one binary run in
/// parallel, so only the first caller builds it and the others wait for it.
pub fn python_venv(name: &str, module: &str, package: &str) -> PathBuf {
    static VENVS: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut made = VENVS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, py)) = made.iter().find(|(n, _)| n == name) {
        return py.clone();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(name);
    let py = root.join("bin/python");
    let has = |py: &Path| {
        Command::new(py)
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has(&py) {
        let _ = std::fs::remove_dir_all(&root); // a half-made venv from an interrupted run
        run_ok(Command::new("python3").args(["-m", "venv"]).arg(&root));
        run_ok(Command::new(&py).args(["-m", "pip", "install", "-q", package]));
    }
    made.push((name.to_string(), py.clone()));
    py
}

/// A one-hour scenario with one small disk, a test failover and its cleanup (`sim run` tests).
pub const SMALL_SCENARIO: &str = r#"
name = "cli-small"
seed = 3
duration_hours = 1
[policy]
copy_frequency_secs = 300
[[vm]]
name = "vm"
[[vm.disk]]
name = "os"
size_mib = 4
churn_mib_per_hour = 6
[[step]]
action = "test_failover"
at_minutes = 30
vm = "vm"
[[step]]
action = "cleanup_test_failover"
at_minutes = 40
vm = "vm"
"#;

/// A loop device attached to a file, detached when dropped.
pub struct LoopDevice(pub String);

impl LoopDevice {
    /// `None` where this machine has no loop devices.
    pub fn attach(backing: &str) -> Option<LoopDevice> {
        if !Path::new("/dev/loop-control").exists() {
            eprintln!("no loop devices on this machine (no /dev/loop-control): nothing to attach");
            return None;
        }
        let attach = run_ok(std::process::Command::new("losetup").args(["-f", "--show", backing]));
        Some(LoopDevice(
            String::from_utf8(attach.stdout).unwrap().trim().to_string(),
        ))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}
