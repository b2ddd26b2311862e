//! The writer against a model: random writes, zeroes and flushes on dynamic, fixed, 4K-sector
//! and differencing disks read back exactly; crashes at random points (dropped, torn and failed
//! writes on the crash-injecting backend) always leave an image whose metadata checks clean and
//! whose every sector holds a value it had since the last flush; a differencing chain of three
//! reads back against its model, including PARTIALLY_PRESENT blocks and ZERO blocks that hide
//! the parent.

use std::sync::Arc;

use vhdx::testing::CrashFile;
use vhdx::writer::ParentLink;
use vhdx::{CreateOptions, Disk, MemoryResolver, NoParents, VhdxWriter};

const MIB: u64 = 1 << 20;

use vhdx::testing::XorShift as Rng;

/// A seeded stand-in for the OS RNG (GUIDs).
fn guids(seed: u64) -> Box<dyn rand_core::RngCore + Send> {
    Box::new(Rng(seed | 1))
}

fn read_all(disk: &Disk) -> Vec<u8> {
    let mut out = vec![0u8; disk.virtual_size() as usize];
    disk.read_at(0, &mut out).unwrap();
    out
}

fn open_bytes(bytes: Vec<u8>) -> Disk {
    Disk::open_with(Box::new(bytes), "image", &NoParents).unwrap()
}

/// One random operation on writer and model; returns whether it was a flush.
enum Op {
    Write(u64, Vec<u8>),
    Zero(u64, u64),
    Flush,
}

fn random_op(rng: &mut Rng, size: u64, sector: u64) -> Op {
    match rng.below(10) {
        0 => Op::Flush,
        1 => {
            let off = rng.below(size / sector) * sector;
            let len = ((rng.below(3 * MIB / sector) + 1) * sector).min(size - off);
            Op::Zero(off, len)
        }
        _ => {
            let off = rng.below(size / sector) * sector;
            let len = ((rng.below(40) + 1) * sector).min(size - off);
            let fill = rng.draw() as u8;
            let data = (0..len)
                .map(|i| fill.wrapping_add((i / 512) as u8))
                .collect();
            Op::Write(off, data)
        }
    }
}

fn apply<W: vhdx::WriteAt>(
    op: &Op,
    writer: &mut VhdxWriter<W>,
    model: &mut [u8],
) -> vhdx::Result<()> {
    match op {
        Op::Write(off, data) => {
            writer.write_at(*off, data)?;
            model[*off as usize..*off as usize + data.len()].copy_from_slice(data);
        }
        Op::Zero(off, len) => {
            writer.zero(*off, *len)?;
            model[*off as usize..(*off + *len) as usize].fill(0);
        }
        Op::Flush => writer.flush()?,
    }
    Ok(())
}

#[test]
fn random_writes_read_back_on_every_kind_of_disk() {
    for (seed, fixed, sector, block) in [
        (1u64, false, 512u32, MIB as u32),
        (2, true, 512, MIB as u32),
        (3, false, 4096, 2 * MIB as u32),
        (4, false, 512, 4 * MIB as u32),
    ] {
        let size = 9 * MIB + 4096 * 3;
        let file = Arc::new(CrashFile::new());
        let options = CreateOptions {
            block_size: block,
            logical_sector_size: sector,
            fixed,
            ..CreateOptions::dynamic(size)
        };
        let mut writer = VhdxWriter::create(Arc::clone(&file), &options, guids(seed)).unwrap();
        let tracked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let t = Arc::clone(&tracked);
        writer.set_write_hook(move |o, l| t.lock().unwrap().push((o, l)));
        let mut model = vec![0u8; size as usize];
        let mut rng = Rng(seed * 77 + 1);
        for _ in 0..120 {
            let op = random_op(&mut rng, size, u64::from(sector));
            apply(&op, &mut writer, &mut model).unwrap();
        }
        assert!(
            !tracked.lock().unwrap().is_empty(),
            "the hook saw the writes"
        );
        writer.close().unwrap();
        let disk = open_bytes(file.bytes());
        assert!(
            read_all(&disk) == model,
            "seed {seed}: content differs from the model"
        );
        let report = Disk::check_with(Box::new(file.bytes()), "image", &NoParents);
        assert!(report.is_clean(), "seed {seed}: {:?}", report.findings);
    }
}

#[test]
fn crashes_at_random_points_leave_consistent_images() {
    let size = 6 * MIB;
    for case in 0..150u64 {
        let mut rng = Rng(case * 2654435761 + 7);
        let file = Arc::new(CrashFile::new());
        let options = CreateOptions {
            block_size: MIB as u32,
            log_size: MIB as u32,
            ..CreateOptions::dynamic(size)
        };
        let mut writer = VhdxWriter::create(Arc::clone(&file), &options, guids(case)).unwrap();
        let mut model = vec![0u8; size as usize];
        // Model states since the last flush (each a possible value of every sector).
        let mut window: Vec<Vec<u8>> = vec![model.clone()];
        let ops = 1 + rng.below(25);
        if rng.below(3) == 0 {
            file.fail_write(rng.below(60));
        }
        for _ in 0..ops {
            let op = random_op(&mut rng, size, 512);
            let flushed = matches!(op, Op::Flush);
            if apply(&op, &mut writer, &mut model).is_err() {
                // A failed I/O: the op may be partly done; its target values are possible.
                if let Op::Write(off, data) = &op {
                    let mut partial = model.clone();
                    partial[*off as usize..*off as usize + data.len()].copy_from_slice(data);
                    window.push(partial);
                }
                if let Op::Zero(off, len) = &op {
                    let mut partial = model.clone();
                    partial[*off as usize..(*off + *len) as usize].fill(0);
                    window.push(partial);
                }
                break;
            }
            if flushed {
                window.clear();
            }
            window.push(model.clone());
        }
        let survived = file.crash(case);
        let report = Disk::check_with(Box::new(survived.clone()), "crashed", &NoParents);
        assert!(
            report.findings.errors.is_empty(),
            "case {case}: metadata corrupt after a crash: {:?}",
            report.findings.errors
        );
        let content = read_all(&open_bytes(survived.clone()));
        for (s, sector) in content.chunks(512).enumerate() {
            let r = s * 512..s * 512 + 512;
            assert!(
                window.iter().any(|state| state[r.clone()] == *sector),
                "case {case}: sector {s} holds a value it never had since the last flush"
            );
        }
        // Reopened for writing, the replay is persisted and writing goes on.
        let reopened = Arc::new(CrashFile::from_bytes(survived));
        let mut writer = VhdxWriter::open(Arc::clone(&reopened), guids(case + 1000)).unwrap();
        writer.write_at(MIB, &[0x5A; 4096]).unwrap();
        writer.close().unwrap();
        let mut expected = content;
        expected[MIB as usize..MIB as usize + 4096].fill(0x5A);
        assert!(
            read_all(&open_bytes(reopened.bytes())) == expected,
            "case {case}"
        );
    }
}

#[test]
fn a_differencing_chain_of_three_reads_back_against_its_model() {
    let size = 12 * MIB;
    let block = 2 * MIB as u32;
    let mut rng = Rng(99);
    // Base: dynamic, a few written ranges.
    let base_file = Arc::new(CrashFile::new());
    let mut base = VhdxWriter::create(
        Arc::clone(&base_file),
        &CreateOptions {
            block_size: block,
            ..CreateOptions::dynamic(size)
        },
        guids(1),
    )
    .unwrap();
    let mut model = vec![0u8; size as usize];
    for _ in 0..20 {
        let op = random_op(&mut rng, size, 512);
        apply(&op, &mut base, &mut model).unwrap();
    }
    let base_link = base.close().unwrap();
    let base_model = model.clone();

    let child = |parent_guid, parent_name: &str, seed| {
        let file = Arc::new(CrashFile::new());
        let w = VhdxWriter::create(
            Arc::clone(&file),
            &CreateOptions {
                block_size: block,
                parent: Some(ParentLink {
                    data_write_guid: parent_guid,
                    relative_path: parent_name.into(),
                    absolute_path: None,
                }),
                ..CreateOptions::dynamic(size)
            },
            guids(seed),
        )
        .unwrap();
        (file, w)
    };
    // Middle: partial sectors over the base (PARTIALLY_PRESENT), one whole block rewritten.
    let (mid_file, mut mid) = child(base_link, "base.vhdx", 2);
    for _ in 0..25 {
        let op = random_op(&mut rng, size, 512);
        apply(&op, &mut mid, &mut model).unwrap();
    }
    let whole = vec![0xC3u8; block as usize];
    mid.write_at(u64::from(block) * 3, &whole).unwrap();
    model[3 * block as usize..4 * block as usize].copy_from_slice(&whole);
    let mid_link = mid.close().unwrap();
    let mid_model = model.clone();
    // Top: a whole block zeroed (ZERO hides the parents), a partial zero, partial writes.
    let (top_file, mut top) = child(mid_link, "mid.vhdx", 3);
    for _ in 0..25 {
        let op = random_op(&mut rng, size, 512);
        apply(&op, &mut top, &mut model).unwrap();
    }
    top.zero(u64::from(block), u64::from(block)).unwrap();
    model[block as usize..2 * block as usize].fill(0);
    top.zero(5 * MIB + 512, 8192).unwrap();
    model[(5 * MIB + 512) as usize..(5 * MIB + 512 + 8192) as usize].fill(0);
    // Unaligned writes are refused on a differencing disk, with a reason.
    let err = top.write_at(100, b"x").unwrap_err().to_string();
    assert!(err.contains("aligned"), "{err}");
    top.close().unwrap();

    let mut resolver = MemoryResolver::default();
    resolver
        .images
        .insert("base.vhdx".into(), Arc::new(base_file.bytes()));
    resolver
        .images
        .insert("mid.vhdx".into(), Arc::new(mid_file.bytes()));
    let disk = Disk::open_with(Box::new(top_file.bytes()), "top.vhdx", &resolver).unwrap();
    assert_eq!(disk.layers().len(), 3);
    assert!(
        read_all(&disk) == model,
        "the chain reads differently from its model"
    );
    let mid_disk = Disk::open_with(Box::new(mid_file.bytes()), "mid.vhdx", &resolver).unwrap();
    assert!(read_all(&mid_disk) == mid_model);
    assert!(read_all(&open_bytes(base_file.bytes())) == base_model);
    let states = disk.top().bat_stats().payload_states;
    assert!(
        states.iter().any(|(s, n)| *s == "zero" && *n > 0),
        "{states:?}"
    );
    let mid_states = mid_disk.top().bat_stats().payload_states;
    assert!(
        mid_states
            .iter()
            .any(|(s, n)| *s == "partially_present" && *n > 0),
        "{mid_states:?}"
    );
}
