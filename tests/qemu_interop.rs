//! Interop with qemu: images made by `qemu-img`/`qemu-io` at test time must export
//! byte-identical to `qemu-img convert -O raw`. Needs qemu-utils (installed by .ci/run).

mod common;

use common::*;

const MIB: u64 = 1 << 20;

/// Writes spread over the disk: start, block-straddling, odd-sized, near the end, zeroes.
fn scatter_writes(size: u64, block: u64) -> Vec<String> {
    vec![
        "write -P 0x11 0 64k".into(),
        format!("write -P 0x22 {} 8k", block - 4096),
        format!("write -P 0x33 {} 1536", (3 * block) % (size - block) + 512),
        format!("write -P 0x44 {} 4k", size - 4096),
        format!("write -z {} 4k", block - 4096),
        format!(
            "write -P 0x55 {} {}",
            size / 2,
            (2 * block + 512).min(size / 2 - 4096)
        ),
    ]
}

fn make(dir: &std::path::Path, name: &str, size: u64, opts: &str) -> std::path::PathBuf {
    let image = dir.join(name);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vhdx",
        "-o",
        opts,
        path_str(&image),
        &size.to_string(),
    ]);
    image
}

#[test]
fn dynamic_images_of_several_block_sizes_export_like_qemu() {
    let dir = temp_dir();
    for (block, size) in [
        (1, 64 * MIB),
        (8, 200 * MIB),
        (32, 256 * MIB),
        (256, 600 * MIB),
    ] {
        let image = make(
            dir.path(),
            &format!("dyn{block}.vhdx"),
            size,
            &format!("subformat=dynamic,block_size={block}M"),
        );
        let out = qemu_io(path_str(&image), &scatter_writes(size, block * MIB));
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_export_matches_qemu(dir.path(), &image);
    }
}

#[test]
fn fixed_images_with_block_state_zero_on_and_off_export_like_qemu() {
    let dir = temp_dir();
    for zero in ["on", "off"] {
        let size = 48 * MIB;
        let image = make(
            dir.path(),
            &format!("fixed-{zero}.vhdx"),
            size,
            &format!("subformat=fixed,block_size=8M,block_state_zero={zero}"),
        );
        let out = qemu_io(path_str(&image), &scatter_writes(size, 8 * MIB));
        assert!(out.status.success());
        assert_export_matches_qemu(dir.path(), &image);
        let info = run_ok(drplane().args(["vhdx", "info", "--json", path_str(&image)]));
        let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(v["kind"], "fixed");
    }
}

#[test]
fn odd_virtual_size_not_a_block_multiple_exports_like_qemu() {
    let dir = temp_dir();
    let size = 37 * MIB + 3 * 512;
    let image = make(dir.path(), "odd.vhdx", size, "block_size=8M");
    let out = qemu_io(
        path_str(&image),
        &[
            "write -P 0x66 37M 1536".into(),
            "write -P 0x67 0 512".into(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_export_matches_qemu(dir.path(), &image);
}

#[test]
fn disk_over_4_gib_crossing_the_first_sector_bitmap_entry_exports_like_qemu() {
    let dir = temp_dir();
    let size = 4 * 1024 * MIB + 8 * MIB;
    let image = make(dir.path(), "big.vhdx", size, "block_size=1M");
    let writes = vec![
        format!("write -P 0x71 {} 64k", 4 * 1024 * MIB - 32768),
        format!("write -P 0x72 {} 1M", 4 * 1024 * MIB + 2 * MIB),
        "write -P 0x73 0 4k".into(),
    ];
    assert!(qemu_io(path_str(&image), &writes).status.success());
    assert_export_matches_qemu(dir.path(), &image);
}

/// qemu-img refuses read-only opens of dirty images; repair a copy, then compare.
fn assert_dirty_export_matches_repaired_qemu(
    dir: &std::path::Path,
    image: &std::path::Path,
    entries_expected: Option<u64>,
) {
    let info = run_ok(drplane().args(["vhdx", "info", "--json", path_str(image)]));
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["log"]["state"], "dirty", "{v}");
    if let Some(n) = entries_expected {
        assert_eq!(v["log"]["entries"], n);
    }
    let before = std::fs::read(image).unwrap();
    let ours = dir.join("dirty-ours.raw");
    run_ok(drplane().args(["vhdx", "export", path_str(image), "-o", path_str(&ours)]));
    assert_eq!(
        before,
        std::fs::read(image).unwrap(),
        "export modified the dirty image"
    );
    let copy = dir.join("repaired.vhdx");
    std::fs::copy(image, &copy).unwrap();
    qemu_img(&["check", "-q", "-r", "all", path_str(&copy)]);
    let theirs = dir.join("dirty-qemu.raw");
    qemu_convert_to_raw(&copy, &theirs);
    assert_files_equal(&ours, &theirs);
}

// qemu's layout: BAT at 2 MiB = sector 4096. Failing that write leaves the BAT update only
// in the log (the entry was written and flushed first).
#[test]
fn dirty_log_left_by_a_failed_bat_write_is_replayed_like_qemu() {
    let dir = temp_dir();
    let image = make(dir.path(), "dirty.vhdx", 64 * MIB, "block_size=8M");
    assert!(qemu_io(path_str(&image), &["write -P 0x12 0 1M".into()])
        .status
        .success());
    let out = qemu_io(
        &blkdebug_failing_write(&image, 4096),
        &["write -P 0xcd 9M 64k".into()],
    );
    assert!(!out.status.success(), "the injected error did not fire");
    assert_dirty_export_matches_repaired_qemu(dir.path(), &image, Some(1));
}

// 150 allocations (8 KiB entries) go round the 1 MiB ring; the 151st fails its BAT write in
// the second 4 KiB of the BAT (block 600), which no earlier allocation touched.
#[test]
fn dirty_log_after_the_ring_wrapped_is_replayed_like_qemu() {
    let dir = temp_dir();
    let image = make(dir.path(), "wrap.vhdx", 1024 * MIB, "block_size=1M");
    let mut cmds: Vec<String> = (0..150u64)
        .map(|i| format!("write -P {} {} 4k", i % 250 + 1, i * MIB + 4096))
        .collect();
    cmds.push(format!("write -P 0xee {} 4k", 600 * MIB));
    let out = qemu_io(&blkdebug_failing_write(&image, 4096 + 9), &cmds);
    assert!(!out.status.success(), "the injected error did not fire");
    assert_dirty_export_matches_repaired_qemu(dir.path(), &image, None);
    let info = run_ok(drplane().args(["vhdx", "info", "--json", path_str(&image)]));
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert!(
        v["log"]["last_sequence"].as_u64().unwrap() > 128,
        "ring did not wrap: {v}"
    );
}

#[test]
fn qemu_check_and_our_check_agree_on_clean_images() {
    let dir = temp_dir();
    let image = make(dir.path(), "clean.vhdx", 32 * MIB, "block_size=1M");
    assert!(qemu_io(path_str(&image), &scatter_writes(32 * MIB, MIB))
        .status
        .success());
    qemu_img(&["check", "-q", path_str(&image)]);
    run_ok(drplane().args(["vhdx", "check", path_str(&image)]));
}
