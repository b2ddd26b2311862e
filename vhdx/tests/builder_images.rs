//! Images qemu cannot make, built with `vhdx::testing`, read back against the builder's model.

use std::sync::Arc;

use vhdx::layout::{GIB, MIB};
use vhdx::testing::{pattern, BlockSpec, DirtyLog, ImageBuilder};
use vhdx::{bat::BlockState, Disk, Error, ExtentKind, Guid, LogState, MemoryResolver, NoParents};

fn open(bytes: Vec<u8>) -> vhdx::Result<Disk> {
    Disk::open_with(Box::new(bytes), "test.vhdx", &NoParents)
}

fn read_all(disk: &Disk) -> Vec<u8> {
    let mut out = vec![0u8; disk.virtual_size() as usize];
    // Odd-sized, unaligned reads exercise block and sector splitting.
    let mut pos = 0usize;
    let mut step = 777usize;
    while pos < out.len() {
        let n = step.min(out.len() - pos);
        disk.read_at(pos as u64, &mut out[pos..pos + n]).unwrap();
        pos += n;
        step = step * 3 % 300_007 + 511;
    }
    out
}

#[test]
fn dynamic_image_reads_back_writes_and_zeros() {
    let mut b = ImageBuilder::new(7 * MIB + 512);
    b.write(3, &pattern(1, 5000))
        .write(6 * MIB + 100, &pattern(2, MIB as usize - 100 + 412));
    let disk = open(b.build()).unwrap();
    assert_eq!(read_all(&disk), b.expected_content(None));
}

#[test]
fn fixed_image_with_4096_byte_sectors_reads_back() {
    let mut b = ImageBuilder::new(5 * MIB);
    b.fixed(true)
        .logical_sector_size(4096)
        .block_size(2 * MIB as u32);
    b.write(MIB + 4096, &pattern(3, 3 * 4096));
    let disk = open(b.build()).unwrap();
    assert_eq!(disk.logical_sector_size(), 4096);
    assert_eq!(disk.top().kind(), "fixed");
    assert_eq!(read_all(&disk), b.expected_content(None));
}

#[test]
fn every_payload_state_reads_as_the_spec_says() {
    let mut b = ImageBuilder::new(8 * MIB);
    b.write(0, &pattern(4, MIB as usize));
    b.block(1, BlockSpec::State(BlockState::Zero));
    b.block(2, BlockSpec::State(BlockState::Unmapped));
    b.block(3, BlockSpec::State(BlockState::Undefined));
    b.block(4, BlockSpec::State(BlockState::Reserved(5)));
    let disk = open(b.build()).unwrap();
    assert_eq!(read_all(&disk), b.expected_content(None));
    let kinds: Vec<(u64, ExtentKind)> = disk
        .extents()
        .map(|e| e.unwrap())
        .map(|e| (e.len, e.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            (MIB, ExtentKind::Data),
            (4 * MIB, ExtentKind::Zero),
            (3 * MIB, ExtentKind::Unallocated)
        ]
    );
}

#[test]
fn large_sparse_disk_crosses_the_first_sector_bitmap_entry() {
    // 4 GiB + 1 MiB at 1 MiB blocks: block 4096 sits after the first chunk's SB entry.
    let mut b = ImageBuilder::new(4 * GIB + MIB);
    b.write(4 * GIB + 4096, &pattern(5, 8192))
        .write(4 * GIB - 512, &pattern(6, 512));
    let disk = open(b.build()).unwrap();
    let mut buf = vec![0u8; 8192];
    disk.read_at(4 * GIB + 4096, &mut buf).unwrap();
    assert_eq!(buf, pattern(5, 8192));
    let mut buf = vec![0u8; 512];
    disk.read_at(4 * GIB - 512, &mut buf).unwrap();
    assert_eq!(buf, pattern(6, 512));
    let data: u64 = disk
        .extents()
        .map(|e| e.unwrap())
        .filter(|e| e.kind == ExtentKind::Data)
        .map(|e| e.len)
        .sum();
    assert_eq!(data, 2 * MIB);
}

fn dirty_image(log: DirtyLog) -> (ImageBuilder, Vec<u8>) {
    let mut b = ImageBuilder::new(9 * MIB);
    b.write(0, &pattern(7, 4096))
        .write(5 * MIB, &pattern(8, MIB as usize))
        .write(8 * MIB + 512, &pattern(9, 1024));
    b.dirty_log(log);
    let bytes = b.build();
    (b, bytes)
}

#[test]
fn dirty_log_is_replayed_in_memory_and_file_is_untouched() {
    let (b, bytes) = dirty_image(DirtyLog {
        entries: 2,
        ..Default::default()
    });
    let before = Arc::new(bytes);
    let disk = Disk::open_with(Box::new(Arc::clone(&before)), "t", &NoParents).unwrap();
    assert!(matches!(
        disk.top().log_state,
        LogState::Replayed { entries: 2, .. }
    ));
    assert_eq!(read_all(&disk), b.expected_content(None));
    // The reader never writes: the bytes it was given still hold the unreplayed BAT.
    let mut unreplayed = b.clone();
    unreplayed.dirty_log = None;
    assert_ne!(*before, unreplayed.build());
}

#[test]
fn wrapped_log_with_stale_entries_and_zero_descriptor_replays() {
    let (b, bytes) = dirty_image(DirtyLog {
        entries: 3,
        wrap: true,
        stale_entries: true,
        zero_descriptor: true,
        flushed_file_offset: None,
    });
    let disk = open(bytes).unwrap();
    let LogState::Replayed {
        entries,
        first_sequence,
        last_sequence,
    } = disk.top().log_state
    else {
        panic!("not replayed")
    };
    assert_eq!((entries, last_sequence - first_sequence), (3, 2));
    assert_eq!(read_all(&disk), b.expected_content(None));
}

#[test]
fn dirty_log_without_replay_would_read_garbage_bat() {
    // The zero-descriptor variant leaves 0xFF in the BAT region: only replay makes it readable.
    let (_, mut bytes) = dirty_image(DirtyLog {
        entries: 1,
        zero_descriptor: true,
        ..Default::default()
    });
    // Wipe the log ring (1 MiB at 1 MiB): LogGuid stays set, no valid entry remains.
    bytes[MIB as usize..2 * MIB as usize].fill(0);
    assert!(open(bytes).is_err());
}

#[test]
fn dirty_flag_without_any_valid_entry_reads_the_image_as_is() {
    let (b, mut bytes) = dirty_image(DirtyLog {
        entries: 1,
        ..Default::default()
    });
    bytes[MIB as usize..2 * MIB as usize].fill(0);
    let disk = open(bytes).unwrap();
    assert_eq!(disk.top().log_state, LogState::DirtyWithoutEntries);
    // The BAT update was only in the log: every block reads as never written.
    assert_eq!(read_all(&disk), vec![0u8; b.virtual_size as usize]);
}

#[test]
fn log_flushed_past_end_of_file_reports_truncation() {
    let (_, bytes) = dirty_image(DirtyLog {
        entries: 1,
        flushed_file_offset: Some(64 * MIB),
        ..Default::default()
    });
    assert!(matches!(open(bytes), Err(Error::Truncated { .. })));
}

fn guid(n: u8) -> Guid {
    Guid([n; 16])
}

/// base ← mid ← top, with PARTIALLY_PRESENT blocks and ZERO blocks hiding the parent.
fn chain() -> (MemoryResolver, Vec<u8>, Vec<u8>) {
    let size = 6 * MIB;
    let mut base = ImageBuilder::new(size);
    base.data_write_guid(guid(1))
        .write(0, &pattern(10, size as usize));
    let base_content = base.expected_content(None);
    let mut mid = ImageBuilder::new(size);
    mid.data_write_guid(guid(2)).parent(guid(1), ".\\base.vhdx");
    mid.write(512, &pattern(11, 1024))
        .write(2 * MIB, &pattern(12, MIB as usize))
        .write(4 * MIB + 4096, &pattern(13, 512));
    mid.block(3, BlockSpec::State(BlockState::Zero));
    let mid_content = mid.expected_content(Some(&base_content));
    let mut top = ImageBuilder::new(size);
    top.data_write_guid(guid(3)).parent(guid(2), "mid.vhdx");
    top.write(1024, &pattern(14, 512))
        .write(4 * MIB, &pattern(15, 4096))
        .write(5 * MIB + MIB - 512, &pattern(16, 512));
    let top_content = top.expected_content(Some(&mid_content));
    let mut resolver = MemoryResolver::default();
    resolver
        .images
        .insert("base.vhdx".into(), Arc::new(base.build()));
    resolver
        .images
        .insert("mid.vhdx".into(), Arc::new(mid.build()));
    (resolver, top.build(), top_content)
}

#[test]
fn chain_of_three_reads_through_partial_blocks_and_stops_at_zero_blocks() {
    let (resolver, top, expected) = chain();
    let disk = Disk::open_with(Box::new(top), "top.vhdx", &resolver).unwrap();
    assert_eq!(disk.layers().len(), 3);
    assert_eq!(disk.top().kind(), "differencing");
    assert_eq!(read_all(&disk), expected);
    // Block 3 is ZERO in mid: zeros even though base has data there.
    assert!(expected[3 * MIB as usize..4 * MIB as usize]
        .iter()
        .all(|&b| b == 0));
    let total: u64 = disk.extents().map(|e| e.unwrap().len).sum();
    assert_eq!(total, 6 * MIB);
}

#[test]
fn parent_with_other_data_write_guid_is_refused() {
    let (mut resolver, top, _) = chain();
    let mut other = ImageBuilder::new(6 * MIB);
    other.data_write_guid(guid(9));
    resolver
        .images
        .insert("base.vhdx".into(), Arc::new(other.build()));
    let err = Disk::open_with(Box::new(top), "top.vhdx", &resolver).unwrap_err();
    assert!(err.to_string().contains("parent_linkage"), "{err}");
}

#[test]
fn parent_loop_is_detected() {
    let mut a = ImageBuilder::new(2 * MIB);
    a.data_write_guid(guid(5)).parent(guid(6), "b.vhdx");
    let mut b = ImageBuilder::new(2 * MIB);
    b.data_write_guid(guid(6)).parent(guid(5), "a.vhdx");
    let mut resolver = MemoryResolver::default();
    resolver.images.insert("a.vhdx".into(), Arc::new(a.build()));
    resolver.images.insert("b.vhdx".into(), Arc::new(b.build()));
    let err = Disk::open_with(Box::new(a.build()), "a.vhdx", &resolver).unwrap_err();
    assert!(err.to_string().contains("loop"), "{err}");
}

#[test]
fn chain_deeper_than_the_limit_is_refused() {
    let mut resolver = MemoryResolver::default();
    let n = vhdx::disk::MAX_CHAIN_DEPTH + 1;
    for i in 0..n {
        let mut b = ImageBuilder::new(MIB);
        b.data_write_guid(Guid([
            (i % 250) as u8 + 1,
            (i / 250) as u8,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ]));
        if i + 1 < n {
            let p = i + 1;
            b.parent(
                Guid([
                    (p % 250) as u8 + 1,
                    (p / 250) as u8,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                ]),
                &format!("{p}.vhdx"),
            );
        }
        resolver
            .images
            .insert(format!("{i}.vhdx"), Arc::new(b.build()));
    }
    let top = resolver.images["0.vhdx"].as_ref().clone();
    let err = Disk::open_with(Box::new(top), "0.vhdx", &resolver).unwrap_err();
    assert!(err.to_string().contains("deeper"), "{err}");
}

#[test]
fn differencing_disk_with_4096_byte_sectors_reads_partial_sectors() {
    let mut base = ImageBuilder::new(4 * MIB);
    base.logical_sector_size(4096)
        .data_write_guid(guid(1))
        .write(0, &pattern(20, 4 * MIB as usize));
    let base_content = base.expected_content(None);
    let mut top = ImageBuilder::new(4 * MIB);
    top.logical_sector_size(4096)
        .parent(guid(1), "base.vhdx")
        .write(8192, &pattern(21, 4096))
        .write(3 * MIB, &pattern(22, 12288));
    let mut resolver = MemoryResolver::default();
    resolver
        .images
        .insert("base.vhdx".into(), Arc::new(base.build()));
    let disk = Disk::open_with(Box::new(top.build()), "top.vhdx", &resolver).unwrap();
    assert_eq!(read_all(&disk), top.expected_content(Some(&base_content)));
}

#[test]
fn differencing_disk_over_parent_with_other_sector_size_is_refused() {
    let mut base = ImageBuilder::new(4 * MIB);
    base.logical_sector_size(4096).data_write_guid(guid(1));
    let mut top = ImageBuilder::new(4 * MIB);
    top.parent(guid(1), "base.vhdx");
    let mut resolver = MemoryResolver::default();
    resolver
        .images
        .insert("base.vhdx".into(), Arc::new(base.build()));
    let err = Disk::open_with(Box::new(top.build()), "top.vhdx", &resolver).unwrap_err();
    assert!(err.to_string().contains("sector size"), "{err}");
}
