//! Bodies of the cargo-fuzz targets, here so the stable test suite can replay the corpus and
//! the builder seeds through exactly the code the fuzzer runs. Each takes arbitrary bytes and
//! must return without panicking, hanging or allocating without bound.

use std::sync::Arc;

use crate::disk::{Disk, NoParents};
use crate::guid::Guid;
use crate::layout::{LOG_SECTOR_SIZE, MIB};
use crate::log_replay::{find_active_sequence, Overlay};
use crate::metadata::{Metadata, MetadataTable, TABLE_SIZE};
use crate::parent_locator::ParentLocator;
use crate::testing::{pattern, BlockSpec, DirtyLog, ImageBuilder};

/// Bytes read per data extent: enough to touch every mapping path, bounded for speed.
const READ_PER_EXTENT: u64 = 8192;
/// Extents visited per input (a hostile BAT may describe millions).
const EXTENTS_VISITED: usize = 4096;

/// Open a whole image from bytes, walk its extents, read some of each, and check it.
pub fn open_image(data: &[u8]) {
    let bytes = Arc::new(data.to_vec());
    if let Ok(disk) = Disk::open_with(Box::new(Arc::clone(&bytes)), "fuzz", &NoParents) {
        let mut buf = vec![0u8; READ_PER_EXTENT as usize];
        for extent in disk.extents().take(EXTENTS_VISITED) {
            let Ok(extent) = extent else { break };
            let n = extent.len.min(READ_PER_EXTENT) as usize;
            let _ = disk.read_at(extent.offset, &mut buf[..n]);
        }
        let size = disk.virtual_size();
        let _ = disk.read_at(
            size.saturating_sub(4096),
            &mut buf[..4096.min(size as usize)],
        );
    }
    let _ = Disk::check_with(Box::new(bytes), "fuzz", &NoParents);
}

/// Treat the input as a log ring (after a 16-byte LogGuid) and replay it.
pub fn log_replay(data: &[u8]) {
    if data.len() < 16 + LOG_SECTOR_SIZE as usize {
        return;
    }
    let guid = Guid(data[..16].try_into().expect("16 bytes"));
    let ring_len = ((data.len() - 16) / LOG_SECTOR_SIZE as usize * LOG_SECTOR_SIZE as usize)
        .min(4 * MIB as usize);
    let ring = data[16..16 + ring_len].to_vec();
    if let Ok(Some(seq)) = find_active_sequence(&ring, guid) {
        let head = *seq.head();
        if let Ok(overlay) = Overlay::replay(&ring, &seq, head.flushed_file_offset) {
            let mut buf = vec![0u8; 3 * LOG_SECTOR_SIZE as usize];
            for (_, entry) in &seq.entries {
                for d in &entry.descriptors {
                    if let Some((start, _)) = d.range() {
                        overlay.apply(start.saturating_sub(100), &mut buf);
                    }
                }
            }
        }
    }
}

/// Decode a metadata region (the input, padded to the 64 KiB table).
pub fn metadata(data: &[u8]) {
    let mut region = data.to_vec();
    if region.len() < TABLE_SIZE {
        region.resize(TABLE_SIZE, 0);
    }
    if let Ok(table) = MetadataTable::decode(&region) {
        let _ = table.validate(region.len() as u64);
    }
    let _ = Metadata::decode(&region);
}

/// Decode a parent locator item and its linkage.
pub fn parent_locator(data: &[u8]) {
    if let Ok(locator) = ParentLocator::decode(data) {
        let _ = locator.parent_linkage();
        let _ =
            crate::disk::parent_path_candidates(std::path::Path::new("/x/child.vhdx"), &locator);
    }
}

/// Target names, for the seed writer and the replay test.
pub const TARGETS: [&str; 4] = ["open_image", "log_replay", "metadata", "parent_locator"];

/// Run target `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "open_image" => open_image(data),
        "log_replay" => log_replay(data),
        "metadata" => metadata(data),
        "parent_locator" => parent_locator(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

/// Seed inputs for each target, made by the builder: valid images of every kind the reader
/// supports, so the fuzzer starts from deep inside the format.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut images: Vec<(String, ImageBuilder)> = Vec::new();
    let mut dynamic = ImageBuilder::new(3 * MIB);
    dynamic.write(4096, &pattern(1, 8192));
    images.push(("dynamic".into(), dynamic));
    let mut fixed = ImageBuilder::new(2 * MIB);
    fixed
        .fixed(true)
        .logical_sector_size(4096)
        .write(0, &pattern(2, 4096));
    images.push(("fixed-4k".into(), fixed));
    let mut dirty = ImageBuilder::new(3 * MIB);
    dirty.write(MIB, &pattern(3, 4096)).dirty_log(DirtyLog {
        entries: 2,
        wrap: true,
        stale_entries: true,
        zero_descriptor: true,
        flushed_file_offset: None,
    });
    images.push(("dirty-wrapped".into(), dirty.clone()));
    let mut diff = ImageBuilder::new(2 * MIB);
    diff.parent(Guid([1; 16]), "base.vhdx")
        .write(512, &pattern(4, 1024))
        .block(1, BlockSpec::State(crate::bat::BlockState::Zero));
    images.push(("differencing".into(), diff.clone()));
    for (name, b) in &images {
        let bytes = b.build();
        if name == "dirty-wrapped" {
            let log = &bytes[MIB as usize..2 * MIB as usize];
            let mut seed = vec![0x4C; 16];
            seed.extend_from_slice(log);
            out.push(("log_replay", name.clone(), seed));
        }
        // Metadata region at 2 MiB and its parent locator item, as the builder lays them out.
        let md = bytes[2 * MIB as usize..3 * MIB as usize].to_vec();
        if name == "differencing" {
            let table = MetadataTable::decode(&md).expect("builder metadata");
            if let Some((_, e)) = table.find(crate::metadata::PARENT_LOCATOR) {
                out.push((
                    "parent_locator",
                    name.clone(),
                    md[e.offset as usize..(e.offset + e.length) as usize].to_vec(),
                ));
            }
        }
        let used = md
            .iter()
            .rposition(|&b| b != 0)
            .map_or(TABLE_SIZE, |p| p + 1);
        out.push((
            "metadata",
            name.clone(),
            md[..used.max(TABLE_SIZE)].to_vec(),
        ));
        out.push(("open_image", name.clone(), bytes));
    }
    out
}
