//! The `drplane vhdx` commands as a user runs them: chains on disk, 4K sectors, exit codes,
//! one-line errors, streaming export.

mod common;

use common::*;
use vhdx::testing::{pattern, ImageBuilder};
use vhdx::Guid;

const MIB: u64 = 1 << 20;

#[test]
fn differencing_chain_on_disk_resolves_relative_paths_and_exports_the_merged_disk() {
    let dir = temp_dir();
    std::fs::create_dir(dir.path().join("parents")).unwrap();
    let mut base = ImageBuilder::new(4 * MIB);
    base.data_write_guid(Guid([1; 16]))
        .write(0, &pattern(1, 4 * MIB as usize));
    let mut top = ImageBuilder::new(4 * MIB);
    // Windows-style relative path into a subfolder, as Hyper-V writes it.
    top.parent(Guid([1; 16]), ".\\parents\\base.vhdx")
        .write(MIB + 512, &pattern(2, 1024));
    std::fs::write(dir.path().join("parents/base.vhdx"), base.build()).unwrap();
    let top_path = dir.path().join("top.vhdx");
    std::fs::write(&top_path, top.build()).unwrap();

    let out = dir.path().join("top.raw");
    run_ok(drplane().args(["vhdx", "export", path_str(&top_path), "-o", path_str(&out)]));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        top.expected_content(Some(&base.expected_content(None)))
    );

    let info = run_ok(drplane().args(["vhdx", "info", "--json", path_str(&top_path)]));
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["kind"], "differencing");
    assert_eq!(v["parents"].as_array().unwrap().len(), 1);
    assert!(v["parent_locator"]["relative_path"]
        .as_str()
        .unwrap()
        .contains("base.vhdx"));
    run_ok(drplane().args(["vhdx", "check", path_str(&top_path)]));
}

#[test]
fn missing_parent_is_one_clear_error_line() {
    let dir = temp_dir();
    let mut top = ImageBuilder::new(2 * MIB);
    top.parent(Guid([1; 16]), "gone.vhdx");
    let top_path = dir.path().join("orphan.vhdx");
    std::fs::write(&top_path, top.build()).unwrap();
    let out = drplane()
        .args([
            "vhdx",
            "export",
            path_str(&top_path),
            "-o",
            path_str(&dir.path().join("x.raw")),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("drplane: error:") && err.contains("gone.vhdx"),
        "{err}"
    );
}

#[test]
fn four_kib_sector_image_exports_and_reports_its_sector_size() {
    let dir = temp_dir();
    let mut b = ImageBuilder::new(8 * MIB);
    b.logical_sector_size(4096)
        .block_size(2 * MIB as u32)
        .write(3 * MIB, &pattern(3, 8192));
    let path = dir.path().join("4k.vhdx");
    std::fs::write(&path, b.build()).unwrap();
    let out = run_ok(drplane().args(["vhdx", "export", path_str(&path), "-o", "-"]));
    assert_eq!(out.stdout, b.expected_content(None));
    let info = run_ok(drplane().args(["vhdx", "info", path_str(&path)]));
    assert!(String::from_utf8(info.stdout)
        .unwrap()
        .contains("4096 logical"));
}

#[test]
fn check_exits_non_zero_and_lists_problems_with_offsets() {
    let dir = temp_dir();
    let mut bytes = ImageBuilder::new(4 * MIB).write(0, &[1; 4096]).build();
    let bat = 3 * MIB as usize; // builder layout
    bytes[bat + 8..bat + 16].copy_from_slice(&4u64.to_le_bytes());
    bytes[192 * 1024 + 100] ^= 1; // region table 1 damaged; its copy still works
    let path = dir.path().join("bad.vhdx");
    std::fs::write(&path, &bytes).unwrap();
    let out = drplane()
        .args(["vhdx", "check", "--json", path_str(&path)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["clean"], false);
    let offsets: Vec<u64> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert!(offsets.contains(&(bat as u64 + 8)), "{v}");
    assert!(offsets.contains(&(192 * 1024 + 4)), "{v}");
}

#[test]
fn not_a_vhdx_file_is_an_error_not_a_panic() {
    let dir = temp_dir();
    let path = dir.path().join("junk.vhdx");
    std::fs::write(&path, vec![0x5A; 3 * MIB as usize]).unwrap();
    for cmd in [["vhdx", "info"], ["vhdx", "check"]] {
        let out = drplane().args(cmd).arg(&path).output().unwrap();
        assert!(!out.status.success());
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
    let out = drplane()
        .args(["vhdx", "info", "/nonexistent/x.vhdx"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("/nonexistent/x.vhdx"));
}

#[test]
fn export_refuses_to_overwrite_its_input() {
    let dir = temp_dir();
    let path = dir.path().join("self.vhdx");
    let bytes = ImageBuilder::new(2 * MIB).build();
    std::fs::write(&path, &bytes).unwrap();
    let out = drplane()
        .args(["vhdx", "export", path_str(&path), "-o", path_str(&path)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

/// An existing output is replaced only with --force (export once truncated any file it was
/// given, as `qemu-img convert` does), and never inside a store directory.
#[test]
fn export_replaces_an_existing_file_only_with_force() {
    let dir = temp_dir();
    let image = dir.path().join("d.vhdx");
    std::fs::write(&image, ImageBuilder::new(2 * MIB).build()).unwrap();
    let out = dir.path().join("out.raw");
    std::fs::write(&out, b"the user's file").unwrap();
    let export = |extra: &[&str]| {
        drplane()
            .args(["vhdx", "export", path_str(&image), "-o", path_str(&out)])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = export(&[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("give --force"));
    assert_eq!(std::fs::read(&out).unwrap(), b"the user's file");
    assert!(export(&["--force"]).status.success());
    assert_eq!(std::fs::read(&out).unwrap(), vec![0u8; 2 * MIB as usize]);
    // Inside a store directory (one of its own files could be replaced): refused.
    let store = dir.path().join("store");
    std::fs::create_dir_all(store.join("homes")).unwrap();
    std::fs::write(store.join("store.json"), b"{}").unwrap();
    let inside = drplane()
        .args(["vhdx", "export", path_str(&image), "-o"])
        .arg(store.join("homes/x.raw"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&inside.stderr).contains("inside the store directory"));
    assert!(!store.join("homes/x.raw").exists());
    // A differencing disk exported over its own parent, even with --force: refused (the
    // chain would be gone).
    let base = dir.path().join("base.vhdx");
    let child = dir.path().join("child.vhdx");
    run_ok(drplane().args(["vhdx", "create", path_str(&base), "--size", "4M"]));
    run_ok(drplane().args([
        "vhdx",
        "create",
        path_str(&child),
        "--parent",
        path_str(&base),
    ]));
    let base_bytes = std::fs::read(&base).unwrap();
    let over_parent = drplane()
        .args([
            "vhdx",
            "export",
            path_str(&child),
            "-o",
            path_str(&base),
            "--force",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&over_parent.stderr).contains("a parent the input reads through")
    );
    assert!(std::fs::read(&base).unwrap() == base_bytes);
}

#[test]
fn parent_found_by_absolute_path_when_relative_path_is_stale() {
    let dir = temp_dir();
    let mut base = ImageBuilder::new(2 * MIB);
    base.data_write_guid(Guid([7; 16]))
        .write(0, &pattern(5, 4096));
    let base_path = dir.path().join("elsewhere-base.vhdx");
    std::fs::write(&base_path, base.build()).unwrap();
    let mut top = ImageBuilder::new(2 * MIB);
    top.parent(Guid([7; 16]), "moved-away.vhdx");
    top.extra_locator_entries
        .push(("absolute_win32_path".into(), path_str(&base_path).into()));
    let top_path = dir.path().join("top.vhdx");
    std::fs::write(&top_path, top.build()).unwrap();
    let out = run_ok(drplane().args(["vhdx", "export", path_str(&top_path), "-o", "-"]));
    assert_eq!(out.stdout, base.expected_content(None));
}

#[test]
fn sparse_64_tib_disk_opens_and_reports_its_size() {
    let dir = temp_dir();
    let size = 64u64 << 40;
    let mut b = ImageBuilder::new(size);
    b.block_size(256 << 20)
        .write(size - 4096, &pattern(6, 4096));
    let path = dir.path().join("huge.vhdx");
    std::fs::write(&path, b.build()).unwrap();
    let info = run_ok(drplane().args(["vhdx", "info", "--json", path_str(&path)]));
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["virtual_size"], size);
    assert_eq!(v["bat"]["states"]["fully_present"], 1);
    let disk = vhdx::Disk::open(&path).unwrap();
    let mut buf = vec![0u8; 4096];
    disk.read_at(size - 4096, &mut buf).unwrap();
    assert_eq!(buf, pattern(6, 4096));
}
