//! One VHDX file opened read-only: headers chosen, log replayed in memory, regions,
//! metadata and BAT decoded and checked. Differencing chains are built from these in `disk`.

use std::borrow::Cow;

use crate::bat::{BatEntry, BlockState, Geometry, ENTRY_SIZE as BAT_ENTRY_SIZE};
use crate::error::{Error, Result};
use crate::file_identifier::{self, FileIdentifier};
use crate::header::{self, choose_current, Header, HeaderSlot};
use crate::io::ReadAt;
use crate::layout::*;
use crate::log_replay::{find_active_sequence, LogRegion, Overlay, MAX_LOG_LENGTH};
use crate::metadata::{Metadata, MetadataTable, TABLE_SIZE};
use crate::region_table::{KnownRegions, RegionTable};
use crate::view::FileView;

/// Largest metadata region we read: qemu and Hyper-V write 1 MiB; items may be up to 1 MiB
/// each, so a few MiB would do — anything bigger is refused rather than allocated.
pub const MAX_METADATA_REGION_LENGTH: u64 = 64 * MIB;
/// At most this many problems are collected by a structural check; the rest are counted.
pub const MAX_REPORTED_PROBLEMS: usize = 1000;

/// The log's state at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogState {
    /// LogGuid is zero: nothing to replay.
    Clean,
    /// Entries were replayed in memory (the file itself is untouched).
    Replayed {
        entries: usize,
        first_sequence: u64,
        last_sequence: u64,
    },
    /// LogGuid is set but no valid sequence exists. Verdict (documented in docs/vhdx.md): the
    /// image is read as it is, like qemu does; a writer set LogGuid and crashed before logging.
    DirtyWithoutEntries,
}

/// Which region table was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionTableSlot {
    First,
    /// Table 1 was invalid; table 2 (its copy) was used.
    SecondAfterFirstFailed,
}

/// What an open found besides the image itself; a check reports all of it.
#[derive(Debug, Default)]
pub struct Findings {
    /// Problems that make the image unreadable as it is: a strict open fails on the first.
    pub errors: Vec<Error>,
    /// Damage the reader worked around by design (an invalid region table 1 with a good copy,
    /// an invalid non-current header): the image reads, but it is not clean.
    pub recovered: Vec<Error>,
    /// Problems beyond `MAX_REPORTED_PROBLEMS` that were counted but not kept.
    pub not_kept: usize,
    /// Things worth knowing that are not damage (a replayed log, state 5 blocks).
    pub warnings: Vec<String>,
}

impl Findings {
    pub(crate) fn error(&mut self, e: Error) {
        if self.errors.len() + self.recovered.len() < MAX_REPORTED_PROBLEMS {
            self.errors.push(e);
        } else {
            self.not_kept += 1;
        }
    }

    pub(crate) fn recovered(&mut self, e: Error) {
        if self.errors.len() + self.recovered.len() < MAX_REPORTED_PROBLEMS {
            self.recovered.push(e);
        } else {
            self.not_kept += 1;
        }
    }

    /// True when nothing at all is wrong.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.recovered.is_empty() && self.not_kept == 0
    }
}

/// Counts of BAT entry states, for `info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatStats {
    /// Payload entries by state name, in a fixed order.
    pub payload_states: Vec<(&'static str, u64)>,
    pub sector_bitmaps_present: u64,
    /// Bytes of payload blocks that are FULLY or PARTIALLY present.
    pub allocated_bytes: u64,
}

/// One opened VHDX file.
#[derive(Debug)]
pub struct VhdxFile {
    view: FileView,
    pub identifier: FileIdentifier,
    pub header: Header,
    pub header_slot: HeaderSlot,
    pub region_table: RegionTableSlot,
    pub regions: KnownRegions,
    pub metadata: Metadata,
    pub geometry: Geometry,
    pub log_state: LogState,
    bat: Vec<BatEntry>,
}

/// Read `len` bytes into a new buffer. Never allocates more than `view` really holds.
fn read(view: &dyn ReadAt, structure: &'static str, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    read_into(view, structure, offset, len, &mut buf)?;
    Ok(buf)
}

/// [`read`] into `buf` (resized to `len`; its old bytes are overwritten).
fn read_into(
    view: &dyn ReadAt,
    structure: &'static str,
    offset: u64,
    len: u64,
    buf: &mut Vec<u8>,
) -> Result<()> {
    let available = view.len();
    if offset.checked_add(len).is_none_or(|end| end > available) {
        return Err(Error::Truncated {
            structure,
            offset,
            needed: len,
            available: available.saturating_sub(offset),
        });
    }
    buf.resize(len as usize, 0);
    view.read_at(offset, buf).map_err(|source| Error::Io {
        structure,
        offset,
        source,
    })
}

/// The log region of an image, read from the file as the search asks (each sector's entry
/// header, then the entries it verifies), not whole: an open reads a few KiB of a 1 MiB log.
struct LogInFile<'v> {
    view: &'v FileView,
    start: u64,
    len: u64,
}

impl LogRegion for LogInFile<'_> {
    fn region_len(&self) -> u64 {
        self.len
    }
    fn bytes(&self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        let mut buf = vec![0u8; len];
        self.view
            .read_at(self.start + offset, &mut buf)
            .map_err(|source| Error::Io {
                structure: "log",
                offset,
                source,
            })?;
        Ok(Cow::Owned(buf))
    }
    fn sector_heads(&self, len: usize) -> Result<Vec<u8>> {
        let sectors = (self.len / LOG_SECTOR_SIZE) as usize;
        let mut buf = vec![0u8; sectors * len];
        if buf.is_empty() {
            return Ok(buf);
        }
        match self
            .view
            .read_strided(self.start, LOG_SECTOR_SIZE, sectors, &mut buf)
        {
            Ok(()) => Ok(buf),
            // Again one sector at a time, so the error names the sector.
            Err(_) => crate::log_replay::sector_by_sector_heads(self, len),
        }
    }
}

/// MS-VHDX 2.3.3: find the log's active sequence in `log` (the header's log region) and the
/// overlay that replays it.
fn replay_log(
    log: &dyn LogRegion,
    header: &Header,
    file_len: u64,
    findings: &mut Findings,
) -> Result<(LogState, Option<Overlay>)> {
    let at = |e: Error| e.at(header.log_offset);
    Ok(
        match find_active_sequence(log, header.log_guid).map_err(at)? {
            None => {
                findings.warnings.push(
                    "LogGuid is set but the log holds no valid entry sequence: nothing replayed"
                        .into(),
                );
                (LogState::DirtyWithoutEntries, None)
            }
            Some(seq) => {
                let state = LogState::Replayed {
                    entries: seq.entries.len(),
                    first_sequence: seq.first_sequence_number(),
                    last_sequence: seq.head().sequence_number,
                };
                let overlay = Overlay::replay(log, &seq, file_len).map_err(|e| match e {
                    Error::Io { .. } => at(e),
                    other => other,
                })?;
                findings.warnings.push(format!(
                    "the log holds {} unapplied entries: replayed in memory",
                    seq.entries.len()
                ));
                (state, Some(overlay))
            }
        },
    )
}

fn decode_header_at(source: &dyn ReadAt, offset: u64) -> Result<Header> {
    let bytes = read(source, "header", offset, header::CHECKSUMMED_SIZE as u64)?;
    Header::decode(&bytes).map_err(|e| e.at(offset))
}

fn decode_region_table_at(view: &dyn ReadAt, offset: u64) -> Result<RegionTable> {
    let bytes = read(
        view,
        "region table",
        offset,
        crate::region_table::SIZE as u64,
    )?;
    RegionTable::decode(&bytes).map_err(|e| e.at(offset))
}

impl VhdxFile {
    /// Open strictly: any structural problem is an error.
    pub fn open(source: Box<dyn ReadAt>) -> Result<VhdxFile> {
        let mut findings = Findings::default();
        let file = VhdxFile::open_with_findings(source, &mut findings)?;
        match findings.errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(file),
        }
    }

    /// Open, recording every non-fatal problem in `findings` (used by `check`). Returns an
    /// error only when the image cannot be read at all.
    pub fn open_with_findings(
        source: Box<dyn ReadAt>,
        findings: &mut Findings,
    ) -> Result<VhdxFile> {
        let file_len = source.len();
        if file_len < HEADER_SECTION_SIZE {
            return Err(Error::Truncated {
                structure: "header section",
                offset: 0,
                needed: HEADER_SECTION_SIZE,
                available: file_len,
            });
        }
        let id_bytes = read(
            &*source,
            "file identifier",
            FILE_IDENTIFIER_OFFSET,
            file_identifier::ENCODED_SIZE as u64,
        )?;
        let identifier = FileIdentifier::decode(&id_bytes)?;

        // MS-VHDX 2.2.2.1: pick the current header.
        let h1 = decode_header_at(&*source, HEADER_1_OFFSET);
        let h2 = decode_header_at(&*source, HEADER_2_OFFSET);
        let header_slot = choose_current(&h1, &h2)
            .map_err(|why| Error::invalid("headers", HEADER_1_OFFSET, why))?;
        let (header, other) = match header_slot {
            HeaderSlot::First => (h1?, h2),
            HeaderSlot::Second => (h2?, h1),
        };
        if let Err(e) = other {
            findings.recovered(e);
        }
        let header_offset = match header_slot {
            HeaderSlot::First => HEADER_1_OFFSET,
            HeaderSlot::Second => HEADER_2_OFFSET,
        };
        header.validate().map_err(|e| e.at(header_offset))?;

        // MS-VHDX 2.3.3: replay the log before trusting any other metadata.
        let mut view = FileView::new(source);
        let log_state = if header.log_guid.is_zero() {
            LogState::Clean
        } else {
            let log_len = u64::from(header.log_length);
            if log_len > MAX_LOG_LENGTH {
                return Err(Error::unsupported(
                    "header",
                    header_offset,
                    format!("LogLength {log_len} exceeds the supported {MAX_LOG_LENGTH}"),
                ));
            }
            let log_end = header.log_offset.checked_add(log_len);
            if log_end.is_none_or(|end| end > view.len()) {
                return Err(Error::Truncated {
                    structure: "log",
                    offset: header.log_offset,
                    needed: log_len,
                    available: view.len().saturating_sub(header.log_offset),
                });
            }
            let log = LogInFile {
                view: &view,
                start: header.log_offset,
                len: log_len,
            };
            let (state, overlay) = replay_log(&log, &header, file_len, findings)?;
            if let Some(overlay) = overlay {
                view.set_overlay(overlay);
            }
            state
        };

        // MS-VHDX 2.2.3: region table 1, falling back to its copy (documented choice).
        let table_1 = decode_region_table_at(&view, REGION_TABLE_1_OFFSET).and_then(|t| {
            t.known_regions(view.len())
                .map(|k| (t, k))
                .map_err(|e| e.at(REGION_TABLE_1_OFFSET))
        });
        let table_2 = decode_region_table_at(&view, REGION_TABLE_2_OFFSET).and_then(|t| {
            t.known_regions(view.len())
                .map(|k| (t, k))
                .map_err(|e| e.at(REGION_TABLE_2_OFFSET))
        });
        let (regions, region_table) = match (table_1, table_2) {
            (Ok((t1, k)), t2) => {
                match t2 {
                    Ok((t2, _)) if t2 != t1 => findings.recovered(Error::invalid(
                        "region table",
                        REGION_TABLE_2_OFFSET,
                        "differs from region table 1",
                    )),
                    Ok(_) => {}
                    Err(e) => findings.recovered(e),
                }
                (k, RegionTableSlot::First)
            }
            (Err(e1), Ok((_, k))) => {
                findings.recovered(e1);
                (k, RegionTableSlot::SecondAfterFirstFailed)
            }
            (Err(e1), Err(_)) => return Err(e1),
        };

        let md = regions.metadata;
        if u64::from(md.length) > MAX_METADATA_REGION_LENGTH {
            return Err(Error::unsupported(
                "metadata region",
                md.file_offset,
                format!(
                    "length {} exceeds the supported {MAX_METADATA_REGION_LENGTH}",
                    md.length
                ),
            ));
        }
        // The region is usually 1 MiB, almost all of it unused: read its table, then only as
        // far as its items reach (the whole region if the table does not decode, so errors are
        // the same as for a whole read).
        let md_len = u64::from(md.length);
        let table_len = md_len.min(TABLE_SIZE as u64);
        let mut md_bytes = read(&view, "metadata region", md.file_offset, table_len)?;
        let needed = MetadataTable::decode(&md_bytes)
            .map_or(md_len, |t| t.extent().clamp(table_len, md_len));
        if needed > table_len {
            md_bytes = read(&view, "metadata region", md.file_offset, needed)?;
        }
        let metadata =
            Metadata::decode_prefix(&md_bytes, md_len).map_err(|e| e.at(md.file_offset))?;
        let geometry = Geometry::new(
            metadata.virtual_size,
            metadata.file_parameters.block_size,
            metadata.logical_sector_size,
            metadata.file_parameters.has_parent,
        );
        geometry
            .check_bat_region(regions.bat.length.into())
            .map_err(|e| e.at(regions.bat.file_offset))?;
        let bat_bytes = read(
            &view,
            "BAT",
            regions.bat.file_offset,
            geometry.total_bat_entries() * BAT_ENTRY_SIZE,
        )?;
        let bat: Vec<BatEntry> = bat_bytes
            .chunks_exact(BAT_ENTRY_SIZE as usize)
            .map(|c| BatEntry::decode(c.try_into().expect("8-byte chunk")))
            .collect();
        let file = VhdxFile {
            view,
            identifier,
            header,
            header_slot,
            region_table,
            regions,
            metadata,
            geometry,
            log_state,
            bat,
        };
        file.validate_bat(findings);
        Ok(file)
    }

    /// MS-VHDX 2.5: BAT entry rules, and no block overlapping another or any region.
    fn validate_bat(&self, findings: &mut Findings) {
        let g = &self.geometry;
        let bat_at = |index: u64| self.regions.bat.file_offset + index * BAT_ENTRY_SIZE;
        let view_len = self.view.len();
        // Everything that occupies the file, as (start, end, what, BAT index or none).
        let mut used: Vec<(u64, u64, &'static str, Option<u64>)> = vec![
            (0, HEADER_SECTION_SIZE, "header section", None),
            (
                self.regions.bat.file_offset,
                self.regions.bat.end(),
                "BAT region",
                None,
            ),
            (
                self.regions.metadata.file_offset,
                self.regions.metadata.end(),
                "metadata region",
                None,
            ),
        ];
        let log_end = self
            .header
            .log_offset
            .saturating_add(self.header.log_length.into());
        used.push((self.header.log_offset, log_end, "log", None));
        for (index, entry) in self.bat.iter().enumerate() {
            let index = index as u64;
            if g.is_sector_bitmap_index(index) {
                if !g.has_parent {
                    continue; // ignored outside differencing disks (qemu < 8.0 wrote garbage here)
                }
                match entry.state() {
                    BlockState::NotPresent => {}
                    BlockState::FullyPresent => {
                        let start = entry.file_offset();
                        if start < HEADER_SECTION_SIZE || start.saturating_add(SECTOR_BITMAP_BLOCK_SIZE) > view_len {
                            findings.error(Error::invalid("BAT", bat_at(index), format!("sector bitmap block at {start:#x} lies outside the file")));
                        } else {
                            used.push((start, start + SECTOR_BITMAP_BLOCK_SIZE, "sector bitmap block", Some(index)));
                        }
                    }
                    other => findings.error(Error::invalid("BAT", bat_at(index), format!("sector bitmap entry in state {} (MS-VHDX 2.5.1.2 allows not_present or present)", other.name()))),
                }
                continue;
            }
            let block = index - index / (g.chunk_ratio + 1);
            if block >= g.payload_blocks {
                // Padding of a differencing BAT's last chunk: describes nothing, never read.
                if entry.state() != BlockState::NotPresent {
                    findings.warnings.push(format!(
                        "BAT entry {index} lies past the last payload block but is not empty"
                    ));
                }
                continue;
            }
            if entry.reserved_bits() != 0 {
                findings
                    .warnings
                    .push(format!("BAT entry {index} has reserved bits set"));
            }
            match entry.state() {
                BlockState::Reserved(4) => findings.error(Error::invalid("BAT", bat_at(index), format!("payload block {block} has reserved state 4"))),
                BlockState::Reserved(_) => findings.warnings.push(format!("payload block {block} has state 5 (UNMAPPED in early drafts): read as zeros")),
                BlockState::PartiallyPresent if !g.has_parent => findings.error(Error::invalid("BAT", bat_at(index), format!("payload block {block} is partially present in a disk without a parent (MS-VHDX 2.5.1.1)"))),
                BlockState::FullyPresent | BlockState::PartiallyPresent => {
                    let start = entry.file_offset();
                    let len = g.block_len(block);
                    if start < HEADER_SECTION_SIZE || start.saturating_add(len) > view_len {
                        findings.error(Error::invalid("BAT", bat_at(index), format!("payload block {block} at {start:#x} (+{len}) lies outside the {view_len}-byte file")));
                    } else {
                        used.push((start, start + len, "payload block", Some(index)));
                    }
                    if entry.state() == BlockState::PartiallyPresent {
                        let sb = self.bat[g.sector_bitmap_index(block / g.chunk_ratio) as usize];
                        if sb.state() != BlockState::FullyPresent {
                            findings.error(Error::invalid("BAT", bat_at(index), format!("payload block {block} is partially present but its chunk has no sector bitmap")));
                        }
                    }
                }
                _ => {}
            }
        }
        used.sort_unstable();
        for pair in used.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if b.0 < a.1 {
                let at = b.3.or(a.3).map_or(b.0, bat_at);
                findings.error(Error::invalid(
                    "BAT",
                    at,
                    format!("{} at {:#x} overlaps {} at {:#x}", b.2, b.0, a.2, a.0),
                ));
            }
        }
    }

    /// The view (file after log replay) for reading payload.
    pub fn view(&self) -> &FileView {
        &self.view
    }

    /// BAT entry of payload block `block`.
    pub fn payload_entry(&self, block: u64) -> BatEntry {
        self.bat[self.geometry.payload_index(block) as usize]
    }

    /// BAT entry of the sector bitmap covering payload block `block`.
    pub fn sector_bitmap_entry(&self, block: u64) -> BatEntry {
        self.bat[self
            .geometry
            .sector_bitmap_index(block / self.geometry.chunk_ratio) as usize]
    }

    /// Read the sector-bitmap bits for `count` sectors starting at sector `first` of payload
    /// block `block` (a partially present block of a differencing disk).
    pub fn sector_bits(&self, block: u64, first: u64, count: u64) -> Result<Vec<bool>> {
        let g = &self.geometry;
        let sb = self.sector_bitmap_entry(block);
        let sector_in_chunk = (block % g.chunk_ratio) * g.sectors_per_block() + first;
        let first_byte = sector_in_chunk / 8;
        let last_byte = (sector_in_chunk + count).div_ceil(8);
        let bytes = read(
            &self.view,
            "sector bitmap",
            sb.file_offset() + first_byte,
            last_byte - first_byte,
        )?;
        Ok((0..count)
            .map(|i| {
                let bit = sector_in_chunk + i - first_byte * 8;
                bytes[(bit / 8) as usize] >> (bit % 8) & 1 == 1
            })
            .collect())
    }

    /// Counts of BAT states.
    pub fn bat_stats(&self) -> BatStats {
        let g = &self.geometry;
        let mut counts = [0u64; 8];
        let mut allocated = 0;
        for block in 0..g.payload_blocks {
            let e = self.payload_entry(block);
            counts[e.state().bits() as usize] += 1;
            if matches!(
                e.state(),
                BlockState::FullyPresent | BlockState::PartiallyPresent
            ) {
                allocated += g.block_len(block);
            }
        }
        let sector_bitmaps_present = if g.has_parent {
            (0..g.sector_bitmap_blocks)
                .filter(|&c| {
                    self.bat[g.sector_bitmap_index(c) as usize].state() == BlockState::FullyPresent
                })
                .count() as u64
        } else {
            0
        };
        BatStats {
            payload_states: (0..8u8)
                .map(|b| (BlockState::from_bits(b).name(), counts[b as usize]))
                .filter(|(name, n)| *n > 0 || !name.starts_with("reserved"))
                .collect(),
            sector_bitmaps_present,
            allocated_bytes: allocated,
        }
    }

    /// Disk kind as users name it.
    pub fn kind(&self) -> &'static str {
        if self.metadata.file_parameters.has_parent {
            "differencing"
        } else if self.metadata.file_parameters.leave_block_allocated {
            "fixed"
        } else {
            "dynamic"
        }
    }

    /// Header section: which header was current and whether its table came from copy 2.
    pub fn header_offset(&self) -> u64 {
        match self.header_slot {
            HeaderSlot::First => HEADER_1_OFFSET,
            HeaderSlot::Second => HEADER_2_OFFSET,
        }
    }

    /// Metadata item offset helper for reports.
    pub fn metadata_region(&self) -> (u64, u32) {
        (
            self.regions.metadata.file_offset,
            self.regions.metadata.length,
        )
    }
}
