//! Corruption suite: valid images damaged one way at a time, each with the verdict the spec
//! (or our documented choice) gives. Nothing here may panic, hang or over-allocate.

use vhdx::checksum::seal;
use vhdx::layout::*;
use vhdx::testing::{pattern, DirtyLog, ImageBuilder};
use vhdx::{Disk, Error, LogState, NoParents};

// Layout the builder uses: log at 1 MiB, metadata at 2 MiB, BAT at 3 MiB, data from 4 MiB.
const LOG: usize = MIB as usize;
const METADATA: usize = 2 * MIB as usize;
const BAT: usize = 3 * MIB as usize;
const H1: usize = HEADER_1_OFFSET as usize;
const H2: usize = HEADER_2_OFFSET as usize;
const RT1: usize = REGION_TABLE_1_OFFSET as usize;
const RT2: usize = REGION_TABLE_2_OFFSET as usize;

fn builder() -> ImageBuilder {
    let mut b = ImageBuilder::new(6 * MIB);
    b.write(0, &pattern(1, 4096))
        .write(2 * MIB, &pattern(2, 2 * MIB as usize));
    b
}

fn image() -> Vec<u8> {
    builder().build()
}

fn open(bytes: &[u8]) -> vhdx::Result<Disk> {
    Disk::open_with(Box::new(bytes.to_vec()), "img", &NoParents)
}

fn check(bytes: &[u8]) -> vhdx::CheckReport {
    Disk::check_with(Box::new(bytes.to_vec()), "img", &NoParents)
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn reseal_header(b: &mut [u8], at: usize) {
    seal(&mut b[at..at + 4096], 4);
}
fn reseal_region_tables(b: &mut [u8]) {
    seal(&mut b[RT1..RT1 + 65536], 4);
    seal(&mut b[RT2..RT2 + 65536], 4);
}

#[test]
fn pristine_image_is_clean() {
    let report = check(&image());
    assert!(report.is_clean(), "{:?}", report.findings);
}

// MS-VHDX 2.2.2.1: with one header invalid the other is current.
#[test]
fn header_with_bad_checksum_falls_back_to_other_copy() {
    let mut b = image();
    b[H2 + 200] ^= 1; // header 2 (sequence 2) is current; damage it
    let disk = open(&b).unwrap();
    assert_eq!(disk.top().header.sequence_number, 1);
    let report = check(&b);
    assert!(!report.is_clean());
    assert!(
        matches!(report.findings.recovered[0], Error::BadChecksum { offset, .. } if offset == HEADER_2_OFFSET + 4)
    );
}

#[test]
fn both_headers_invalid_is_corrupt() {
    let mut b = image();
    b[H1] = b'x';
    b[H2 + 300] ^= 4;
    let err = open(&b).unwrap_err();
    assert!(err.to_string().contains("neither header is valid"), "{err}");
}

#[test]
fn equal_sequence_numbers_with_different_content_is_corrupt() {
    let mut b = image();
    put_u64(&mut b, H2 + 8, 1);
    b[H2 + 20] ^= 0x10; // FileWriteGuid differs
    reseal_header(&mut b, H2);
    assert!(open(&b)
        .unwrap_err()
        .to_string()
        .contains("same sequence number"));
}

#[test]
fn header_sequence_number_at_u64_max_does_not_overflow() {
    let mut b = image();
    put_u64(&mut b, H1 + 8, u64::MAX);
    reseal_header(&mut b, H1);
    assert_eq!(open(&b).unwrap().top().header.sequence_number, u64::MAX);
}

#[test]
fn header_version_2_is_refused() {
    let mut b = image();
    b[H2 + 66] = 2;
    reseal_header(&mut b, H2);
    let err = open(&b).unwrap_err();
    assert!(
        matches!(err, Error::InvalidField { field: "Version", offset, .. } if offset == HEADER_2_OFFSET + 66),
        "{err}"
    );
}

#[test]
fn log_offset_not_mib_aligned_is_refused() {
    let mut b = image();
    put_u64(&mut b, H2 + 72, MIB + 4096);
    reseal_header(&mut b, H2);
    assert!(matches!(
        open(&b),
        Err(Error::InvalidField {
            field: "LogOffset",
            ..
        })
    ));
}

// Documented choice (docs/vhdx.md): region table 1 invalid → its copy is used, check fails.
#[test]
fn region_table_1_damaged_falls_back_to_table_2_and_check_reports_it() {
    let mut b = image();
    b[RT1 + 40] ^= 0xFF;
    let disk = open(&b).unwrap();
    assert_eq!(
        disk.top().region_table,
        vhdx::image::RegionTableSlot::SecondAfterFirstFailed
    );
    let report = check(&b);
    assert!(!report.is_clean());
    assert_eq!(
        report.findings.recovered[0].offset(),
        Some(REGION_TABLE_1_OFFSET + 4)
    );
}

#[test]
fn both_region_tables_damaged_is_corrupt() {
    let mut b = image();
    b[RT1 + 40] ^= 0xFF;
    b[RT2 + 40] ^= 0xFF;
    assert!(matches!(
        open(&b),
        Err(Error::BadChecksum {
            structure: "region table",
            ..
        })
    ));
}

#[test]
fn overlapping_regions_are_refused() {
    let mut b = image();
    // Entry 0 is the BAT: move it onto the metadata region.
    for t in [RT1, RT2] {
        put_u64(&mut b, t + 16 + 16, METADATA as u64);
    }
    reseal_region_tables(&mut b);
    assert!(open(&b).unwrap_err().to_string().contains("overlaps"));
}

#[test]
fn region_inside_the_header_section_is_refused() {
    let mut b = image();
    for t in [RT1, RT2] {
        put_u64(&mut b, t + 16 + 16, 0);
    }
    reseal_region_tables(&mut b);
    assert!(matches!(
        open(&b),
        Err(Error::InvalidField {
            field: "FileOffset",
            ..
        })
    ));
}

#[test]
fn unknown_required_region_is_refused() {
    let mut b = image();
    for t in [RT1, RT2] {
        put_u32(&mut b, t + 8, 3);
        let e = t + 16 + 64;
        b[e..e + 16].copy_from_slice(&[0x42; 16]);
        put_u64(&mut b, e + 16, 40 * MIB);
        put_u32(&mut b, e + 24, MIB as u32);
        put_u32(&mut b, e + 28, 1);
    }
    reseal_region_tables(&mut b);
    // The region lies past the end too, but the unknown-required rule is what refuses it.
    let err = open(&b).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
}

/// Metadata item `n` data offset within the region, as the builder lays them out.
fn metadata_item(b: &[u8], n: usize) -> usize {
    let e = METADATA + 32 + n * 32;
    METADATA + u32::from_le_bytes(b[e + 16..e + 20].try_into().unwrap()) as usize
}

#[test]
fn block_size_not_a_power_of_two_is_refused() {
    let mut b = image();
    let at = metadata_item(&b, 0);
    put_u32(&mut b, at, 3 * MIB as u32);
    let err = open(&b).unwrap_err();
    assert!(
        matches!(err, Error::InvalidField { field: "BlockSize", offset, .. } if offset == at as u64),
        "{err}"
    );
}

#[test]
fn virtual_size_not_a_sector_multiple_is_refused() {
    let mut b = image();
    let at = metadata_item(&b, 1);
    put_u64(&mut b, at, 6 * MIB + 100);
    assert!(matches!(
        open(&b),
        Err(Error::InvalidField {
            field: "VirtualDiskSize",
            ..
        })
    ));
}

#[test]
fn virtual_size_over_64_tib_is_refused() {
    let mut b = image();
    let at = metadata_item(&b, 1);
    put_u64(&mut b, at, 65 * TIB);
    assert!(matches!(
        open(&b),
        Err(Error::InvalidField {
            field: "VirtualDiskSize",
            ..
        })
    ));
}

#[test]
fn bat_region_too_small_for_the_virtual_size_is_refused() {
    let mut b = image();
    let at = metadata_item(&b, 1);
    put_u64(&mut b, at, 8 * TIB); // needs 8M entries = 64 MiB of BAT; region is 1 MiB
    let err = open(&b).unwrap_err();
    assert!(err.to_string().contains("BAT region"), "{err}");
}

#[test]
fn missing_required_metadata_item_is_refused() {
    let mut b = image();
    b[METADATA + 32 + 32..METADATA + 32 + 48].fill(0x77); // rename the Virtual Disk Size item
    let err = open(&b).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
}

fn bat_entry(b: &mut [u8], index: usize, value: u64) {
    put_u64(b, BAT + index * 8, value);
}

#[test]
fn bat_entry_pointing_past_eof_is_refused() {
    let mut b = image();
    bat_entry(&mut b, 1, 6 | (500 << 20));
    let err = open(&b).unwrap_err();
    assert!(err.to_string().contains("outside"), "{err}");
    assert_eq!(err.offset(), Some(BAT as u64 + 8));
}

#[test]
fn bat_entry_pointing_into_metadata_is_refused() {
    let mut b = image();
    bat_entry(&mut b, 1, 6 | (2 << 20));
    let err = open(&b).unwrap_err();
    assert!(
        err.to_string().contains("overlaps metadata region"),
        "{err}"
    );
}

#[test]
fn two_bat_entries_sharing_a_block_are_refused() {
    let mut b = image();
    let first = u64::from_le_bytes(b[BAT..BAT + 8].try_into().unwrap());
    bat_entry(&mut b, 5, first);
    assert!(open(&b)
        .unwrap_err()
        .to_string()
        .contains("overlaps payload block"));
}

#[test]
fn reserved_state_4_is_refused_and_state_5_reads_zeros() {
    let mut b = image();
    bat_entry(&mut b, 3, 4);
    assert!(open(&b)
        .unwrap_err()
        .to_string()
        .contains("reserved state 4"));
    let mut b = image();
    bat_entry(&mut b, 3, 5);
    let disk = open(&b).unwrap();
    let mut buf = vec![1u8; 4096];
    disk.read_at(3 * MIB, &mut buf).unwrap();
    assert!(buf.iter().all(|&x| x == 0));
}

#[test]
fn partially_present_block_without_parent_is_refused() {
    let mut b = image();
    let first = u64::from_le_bytes(b[BAT..BAT + 8].try_into().unwrap());
    bat_entry(&mut b, 0, (first & !7) | 7);
    assert!(open(&b)
        .unwrap_err()
        .to_string()
        .contains("partially present"));
}

#[test]
fn check_lists_every_bad_bat_entry_not_just_the_first() {
    let mut b = image();
    bat_entry(&mut b, 1, 4);
    bat_entry(&mut b, 4, 6 | (900 << 20));
    let report = check(&b);
    assert_eq!(
        report.findings.errors.len(),
        2,
        "{:?}",
        report.findings.errors
    );
}

#[test]
fn truncated_files_are_errors_at_every_cut() {
    let b = image();
    for cut in [
        0,
        7,
        4096,
        H1 + 100,
        RT1 + 10,
        MIB as usize - 1,
        LOG + 10,
        METADATA + 1000,
        BAT + 8,
        BAT + MIB as usize + 10,
        b.len() - 1,
    ] {
        assert!(open(&b[..cut]).is_err(), "cut at {cut}");
        assert!(!check(&b[..cut]).is_clean(), "cut at {cut}");
    }
}

fn dirty() -> (ImageBuilder, Vec<u8>) {
    let mut b = builder();
    b.dirty_log(DirtyLog {
        entries: 2,
        ..Default::default()
    });
    let bytes = b.build();
    (b, bytes)
}

#[test]
fn torn_newest_log_entry_replays_the_older_valid_sequence() {
    let (_, mut b) = dirty();
    // Entry 2 follows entry 1 (header sector + one data sector = 8 KiB).
    b[LOG + 8192 + 100] ^= 1; // entry 2 is one 4 KiB sector (no descriptors)
    let disk = open(&b).unwrap();
    assert!(matches!(
        disk.top().log_state,
        LogState::Replayed { entries: 1, .. }
    ));
}

#[test]
fn log_with_every_entry_damaged_is_dirty_without_entries() {
    let (_, mut b) = dirty();
    b[LOG + 100] ^= 1;
    b[LOG + 8192 + 100] ^= 1;
    let report = check(&b);
    assert!(report
        .findings
        .warnings
        .iter()
        .any(|w| w.contains("no valid entry")));
    assert_eq!(
        open(&b).unwrap().top().log_state,
        LogState::DirtyWithoutEntries
    );
}

#[test]
fn log_region_past_end_of_file_is_refused() {
    let (_, mut b) = dirty();
    put_u64(&mut b, H2 + 72, 512 * MIB);
    reseal_header(&mut b, H2);
    assert!(matches!(
        open(&b),
        Err(Error::Truncated {
            structure: "log",
            ..
        })
    ));
}

#[test]
fn log_length_over_the_limit_is_refused_without_allocating() {
    let (_, mut b) = dirty();
    put_u32(&mut b, H2 + 68, 0xFFF0_0000);
    reseal_header(&mut b, H2);
    assert!(matches!(open(&b), Err(Error::Unsupported { .. })));
}

use vhdx::testing::XorShift as Rng;

#[test]
fn random_structural_mutations_never_panic() {
    let (_, base) = dirty();
    let structures = [0, H1, H2, RT1, RT2, LOG, LOG + 8192, METADATA, BAT];
    let mut rng = Rng(0x5EED);
    for _ in 0..400 {
        let mut b = base.clone();
        for _ in 0..1 + rng.below(6) {
            let at =
                structures[rng.below(structures.len() as u64) as usize] + rng.below(256) as usize;
            b[at] = rng.draw() as u8;
        }
        if rng.below(2) == 0 {
            reseal_header(&mut b, H1);
            reseal_header(&mut b, H2);
            reseal_region_tables(&mut b);
        }
        if let Ok(disk) = open(&b) {
            let mut buf = vec![0u8; disk.virtual_size().min(8 * MIB) as usize];
            let _ = disk.read_at(0, &mut buf);
            for e in disk.extents().take(1000) {
                let _ = e;
            }
        }
        let _ = check(&b);
    }
}

// Found by fuzzing (open_image): a non-empty padding entry after the last payload block of a
// differencing BAT made the block-length arithmetic underflow.
#[test]
fn differencing_bat_padding_entry_past_the_last_block_is_ignored_not_a_panic() {
    let mut b = ImageBuilder::new(2 * MIB);
    b.parent(vhdx::Guid([1; 16]), "base.vhdx");
    let mut bytes = b.build();
    // 2 payload blocks; the chunk holds 4096 payload entries, so entry 100 is padding.
    bat_entry(&mut bytes, 100, 6 | (4 << 20));
    let report = check(&bytes);
    assert!(
        report
            .findings
            .warnings
            .iter()
            .any(|w| w.contains("past the last payload block")),
        "{:?}",
        report.findings
    );
}

#[test]
fn metadata_item_far_into_the_region_is_read() {
    // The opener reads the table and then only as far as the items reach: an item moved near
    // the end of the 1 MiB region must still be found (and its bytes read from there).
    let mut b = image();
    let entry = METADATA + 32 + 32; // item 1: Virtual Disk Size
    let old = metadata_item(&b, 1);
    let far = 1016 * 1024u32;
    let bytes: Vec<u8> = b[old..old + 8].to_vec();
    b[METADATA + far as usize..METADATA + far as usize + 8].copy_from_slice(&bytes);
    b[old..old + 8].fill(0);
    put_u32(&mut b, entry + 16, far);
    let disk = open(&b).unwrap();
    assert_eq!(disk.virtual_size(), 6 * MIB);
    // Changing the size there is seen: the bytes came from the far offset.
    put_u64(&mut b, METADATA + far as usize, 6 * MIB + 100);
    assert!(matches!(
        open(&b),
        Err(Error::InvalidField {
            field: "VirtualDiskSize",
            ..
        })
    ));
}

#[test]
fn metadata_item_ending_past_the_region_is_refused() {
    let mut b = image();
    let entry = METADATA + 32 + 32;
    put_u32(&mut b, entry + 16, MIB as u32 - 4); // 8 bytes from 4 before the region's end
    let err = open(&b).unwrap_err();
    assert!(
        err.to_string().contains("ends past the metadata region"),
        "{err}"
    );
}

/// Counts the bytes an open reads in the log region, and fails reads of one log sector.
struct LogReads {
    bytes: Vec<u8>,
    read_in_log: std::sync::atomic::AtomicU64,
    bad_sector: Option<u64>,
}

impl vhdx::ReadAt for LogReads {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let end = offset + buf.len() as u64;
        let log = LOG as u64..2 * MIB;
        if offset < log.end && end > log.start {
            let overlap = end.min(log.end) - offset.max(log.start);
            self.read_in_log
                .fetch_add(overlap, std::sync::atomic::Ordering::Relaxed);
        }
        if self.bad_sector.is_some_and(|s| offset <= s && s < end) {
            return Err(std::io::Error::other("bad sector"));
        }
        vhdx::ReadAt::read_at(&self.bytes, offset, buf)
    }
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
}

#[test]
fn an_open_reads_entry_headers_and_the_entries_not_the_whole_log() {
    let (b, bytes) = dirty();
    let reads = std::sync::Arc::new(LogReads {
        bytes: bytes.clone(),
        read_in_log: Default::default(),
        bad_sector: None,
    });
    let disk = Disk::open_with(Box::new(std::sync::Arc::clone(&reads)), "img", &NoParents).unwrap();
    assert!(matches!(
        disk.top().log_state,
        LogState::Replayed { entries: 2, .. }
    ));
    let mut content = vec![0u8; 6 * MIB as usize];
    disk.read_at(0, &mut content).unwrap();
    assert!(
        content == b.expected_content(None),
        "the replayed log is seen"
    );
    let read = reads.read_in_log.load(std::sync::atomic::Ordering::Relaxed);
    // 256 sector headers of 64 bytes, the two entries (12 KiB) and their payloads again.
    assert!(read < 64 << 10, "read {read} bytes of a 1 MiB log");

    // A sector of the first entry that cannot be read fails the open, naming the log.
    let failing = LogReads {
        bytes,
        read_in_log: Default::default(),
        bad_sector: Some(LOG as u64 + 4096 + 10),
    };
    let err = Disk::open_with(Box::new(failing), "img", &NoParents).unwrap_err();
    assert!(
        matches!(err, Error::Io { structure: "log", offset, .. } if offset == LOG as u64 + 4096),
        "{err}"
    );
}
