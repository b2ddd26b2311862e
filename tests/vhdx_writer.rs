//! The VHDX writer against qemu, both directions: what `drplane vhdx create|import` and the
//! writer produce passes `qemu-img check` and compares identical to its raw equivalent; qemu
//! writes into our images and our reader reads them; our writer writes into qemu's images and
//! qemu reads them; `drplane restore -o X.vhdx` restores a point as a VHDX qemu reads.

mod common;

use std::path::Path;

use common::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

const MIB: u64 = 1 << 20;

fn check_and_compare(vhdx: &Path, raw: &Path) {
    let check = qemu_img(&["check", path_str(vhdx)]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let cmp = qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "vhdx",
        path_str(raw),
        path_str(vhdx),
    ]);
    assert!(
        cmp.status.success(),
        "{}: {}",
        vhdx.display(),
        String::from_utf8_lossy(&cmp.stdout)
    );
}

/// A raw image with data runs, zero runs and a tail that is not block aligned.
fn raw_image(path: &Path, size: u64, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut bytes = vec![0u8; size as usize];
    for _ in 0..12 {
        let at = (rng.next_u64() % (size / 512)) as usize * 512;
        let len = ((rng.next_u64() % (3 * MIB)) as usize).min(bytes.len() - at);
        rng.fill_bytes(&mut bytes[at..at + len]);
    }
    std::fs::write(path, &bytes).unwrap();
    bytes
}

#[test]
fn imports_pass_qemu_check_and_compare_identical_dynamic_and_fixed() {
    let dir = temp_dir();
    let raw = file_in(dir.path(), "disk.raw");
    raw_image(&raw, 37 * MIB + 3 * 512, 1);
    for (name, extra) in [
        ("dyn.vhdx", vec!["--block-size", "1M"]),
        ("dyn32.vhdx", vec![]),
        ("fixed.vhdx", vec!["--fixed", "--block-size", "8M"]),
    ] {
        let out = file_in(dir.path(), name);
        let mut args = vec!["vhdx", "import", path_str(&raw), "-o", path_str(&out)];
        args.extend(extra);
        run_ok(drplane().args(&args));
        // qemu pads the raw side with zeros to the virtual size.
        check_and_compare(&out, &raw);
        assert_export_matches_qemu(dir.path(), &out);
    }
    // Zero stretches stay unallocated: the dynamic file is far smaller than the disk.
    let dynamic = std::fs::metadata(file_in(dir.path(), "dyn.vhdx"))
        .unwrap()
        .len();
    assert!(dynamic < 37 * MIB, "{dynamic} bytes");
}

#[test]
fn qemu_writes_into_our_images_and_our_writer_into_qemus() {
    let dir = temp_dir();
    let d = dir.path();
    // Ours, then qemu writes, then our reader agrees with qemu's.
    let ours = file_in(d, "ours.vhdx");
    run_ok(drplane().args([
        "vhdx",
        "create",
        path_str(&ours),
        "--size",
        "64M",
        "--block-size",
        "2M",
    ]));
    let out = qemu_io(
        path_str(&ours),
        &[
            "write -P 0x11 0 3M".into(),
            "write -P 0x22 40M 100k".into(),
            "write -z 1M 1M".into(),
        ],
    );
    assert!(out.status.success());
    assert!(qemu_img(&["check", path_str(&ours)]).status.success());
    assert_export_matches_qemu(d, &ours);

    // qemu's, then our writer (random writes, zeroes, flushes), then qemu reads it.
    for (name, opts) in [
        ("qemu-dyn.vhdx", "subformat=dynamic,block_size=1M"),
        (
            "qemu-fixed.vhdx",
            "subformat=fixed,block_size=1M,block_state_zero=off",
        ),
    ] {
        let theirs = file_in(d, name);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vhdx",
            "-o",
            opts,
            path_str(&theirs),
            "24M",
        ]);
        assert!(qemu_io(path_str(&theirs), &["write -P 0x33 5M 2M".into()])
            .status
            .success());
        let mut model = vec![0u8; 24 * MIB as usize];
        model[5 * MIB as usize..7 * MIB as usize].fill(0x33);
        let file = vhdx::ReadWriteFile::open(&theirs).unwrap();
        let mut w = vhdx::VhdxWriter::open(file, Box::new(ChaCha8Rng::seed_from_u64(5))).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        for i in 0..40u64 {
            let at = (rng.next_u64() % (24 * MIB / 512 - 64)) * 512;
            if i % 7 == 0 {
                w.zero(at, 20 * 512).unwrap();
                model[at as usize..at as usize + 20 * 512].fill(0);
            } else {
                let mut data = vec![0u8; 512 * (1 + (rng.next_u64() % 40) as usize)];
                rng.fill_bytes(&mut data);
                w.write_at(at, &data).unwrap();
                model[at as usize..at as usize + data.len()].copy_from_slice(&data);
            }
            if i % 10 == 9 {
                w.flush().unwrap();
            }
        }
        w.close().unwrap();
        let raw = file_in(d, &format!("{name}.raw"));
        std::fs::write(&raw, &model).unwrap();
        check_and_compare(&theirs, &raw);
    }
}

#[test]
fn differencing_disks_from_the_cli_read_through_their_parent() {
    let dir = temp_dir();
    let d = dir.path();
    let raw = file_in(d, "base.raw");
    let base_bytes = raw_image(&raw, 16 * MIB, 3);
    let base = file_in(d, "base.vhdx");
    run_ok(drplane().args([
        "vhdx",
        "import",
        path_str(&raw),
        "-o",
        path_str(&base),
        "--block-size",
        "1M",
    ]));
    std::fs::create_dir(d.join("kids")).unwrap();
    let child = d.join("kids/child.vhdx");
    run_ok(drplane().args([
        "vhdx",
        "create",
        path_str(&child),
        "--parent",
        path_str(&base),
    ]));
    // Write into the child with our writer; the parent shows through elsewhere.
    let file = vhdx::ReadWriteFile::open(&child).unwrap();
    let mut w = vhdx::VhdxWriter::open(file, Box::new(ChaCha8Rng::seed_from_u64(9))).unwrap();
    w.write_at(MIB + 4096, &[0xEE; 8192]).unwrap();
    w.zero(4 * MIB, MIB).unwrap();
    w.close().unwrap();
    let mut expected = base_bytes;
    expected[(MIB + 4096) as usize..(MIB + 4096 + 8192) as usize].fill(0xEE);
    expected[4 * MIB as usize..5 * MIB as usize].fill(0);
    let exported = file_in(d, "child.raw");
    run_ok(drplane().args([
        "vhdx",
        "export",
        path_str(&child),
        "-o",
        path_str(&exported),
    ]));
    assert!(std::fs::read(&exported).unwrap() == expected);
    run_ok(drplane().args(["vhdx", "check", path_str(&child)]));
}

#[test]
fn restore_to_vhdx_is_read_by_qemu_as_the_point() {
    let dir = temp_dir();
    let d = dir.path();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let raw = file_in(d, "disk.raw");
    raw_image(&raw, 20 * MIB, 4);
    let env = ("DRPLANE_PFX_PASSWORD", "pw");
    run_ok(
        drplane()
            .args(["register", "--vault", "vt", "--out", &p("reg")])
            .env(env.0, env.1),
    );
    let common = ["--store", &p("store"), "--pfx", &p("reg/vt.pfx")];
    run_ok(
        drplane()
            .args(["replicate", "--disk", path_str(&raw), "--name", "d"])
            .args(common)
            .env(env.0, env.1),
    );
    let out = file_in(d, "restored.vhdx");
    run_ok(
        drplane()
            .args(["restore", "--name", "d", "-o", path_str(&out)])
            .args(common)
            .env(env.0, env.1),
    );
    check_and_compare(&out, &raw);
}

#[test]
fn a_64_tib_disk_is_created_sparse_and_qemu_accepts_it() {
    let dir = temp_dir();
    let big = file_in(dir.path(), "big.vhdx");
    run_ok(drplane().args(["vhdx", "create", path_str(&big), "--size", "64T"]));
    let info = qemu_img(&["info", "--output=json", path_str(&big)]);
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["virtual-size"], 64u64 << 40);
    assert!(qemu_img(&["check", path_str(&big)]).status.success());
    assert!(qemu_io(path_str(&big), &["write -P 0x42 63T 1M".into()])
        .status
        .success());
    assert!(qemu_img(&["check", path_str(&big)]).status.success());
    let file = vhdx::ReadWriteFile::open(&big).unwrap();
    let mut w = vhdx::VhdxWriter::open(file, Box::new(ChaCha8Rng::seed_from_u64(3))).unwrap();
    w.write_at((64 << 40) - 4096, &[7; 4096]).unwrap();
    w.close().unwrap();
    let disk = vhdx::Disk::open(&big).unwrap();
    let mut buf = vec![0u8; 4096];
    disk.read_at((64 << 40) - 4096, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 7));
    disk.read_at(63 << 40, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0x42));
    assert!(std::fs::metadata(&big).unwrap().len() < 200 * MIB);
}
