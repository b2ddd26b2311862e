//! `drplane blob serve` against the official Azure SDK for JavaScript (`@azure/storage-blob`,
//! pinned in `tests/js/package.json`, installed with npm into `target/jsenv` on first use;
//! `.ci/run` installs it there ahead).
//! The script `tests/js/sdk_pageblob.cjs` exercises every page-blob behaviour the SDK offers,
//! then a restarted server (graceful or `kill -9`) must hold everything it acknowledged.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// `node_modules` holding the SDK as `tests/js/package.json` pins it, installed once per
/// target directory (again when the pin changes).
fn node_modules() -> PathBuf {
    static MODULES: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    MODULES
        .get_or_init(|| {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            let root = manifest.join("target").join("jsenv");
            let wanted = std::fs::read(manifest.join("tests/js/package.json")).unwrap();
            let installed = std::fs::read(root.join("package.json")).ok();
            let complete = root
                .join("node_modules/@azure/storage-blob/package.json")
                .exists();
            if installed.as_deref() != Some(&wanted[..]) || !complete {
                std::fs::create_dir_all(&root).unwrap();
                std::fs::write(root.join("package.json"), &wanted).unwrap();
                run_ok(
                    Command::new("npm")
                        .args(["install", "--no-audit", "--no-fund", "--prefix"])
                        .arg(&root),
                );
            }
            root.join("node_modules")
        })
        .clone()
}

/// Run one phase of the SDK script; its stdout (a JSON summary) on success.
fn sdk(endpoint: &str, phase: &str, profile: &str, input: &[u8]) -> Vec<u8> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/sdk_pageblob.cjs");
    let mut child = Command::new("node")
        .arg(script)
        .args([endpoint, phase, profile])
        .env("NODE_PATH", node_modules())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node (Node.js) is needed for the JavaScript SDK tests; .ci/run installs it");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "JavaScript SDK {phase} ({profile}) failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn checks_passed(summary: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(summary).unwrap();
    v["passed"].as_u64().unwrap()
}

#[test]
fn js_sdk_page_blob_behaviours_hold_and_survive_a_graceful_restart_on_standard() {
    let dir = temp_dir();
    let server = start_server(dir.path(), "standard");
    let summary = sdk(&server.endpoint, "write", "standard", b"");
    assert!(checks_passed(&summary) >= 17, "every write check ran");
    server.stop("-TERM");
    let server = start_server(dir.path(), "standard");
    sdk(&server.endpoint, "verify", "standard", &summary);
    server.stop("-TERM");
}

#[test]
fn js_sdk_sees_the_premium_snapshot_cap_and_everything_survives_kill_9() {
    let dir = temp_dir();
    let server = start_server(dir.path(), "premium");
    let summary = sdk(&server.endpoint, "write", "premium", b"");
    let v: serde_json::Value = serde_json::from_slice(&summary).unwrap();
    assert_eq!(v["limit"], 100, "the premium cap was reached");
    server.stop("-KILL");
    let server = start_server(dir.path(), "premium");
    sdk(&server.endpoint, "verify", "premium", &summary);
    server.stop("-TERM");
}
