//! Laying out a new VHDX file (MS-VHDX 2.1): the file identifier, both headers, both region
//! tables, an empty log, the metadata region and the BAT. Layout: log at 1 MiB, metadata region
//! (1 MiB) after the log, BAT after the metadata, payload blocks after the BAT. A fixed disk gets
//! every payload block allocated (FULLY_PRESENT; the file is extended, so the blocks are holes
//! reading zeros until written).

use crate::bat::{BatEntry, BlockState, Geometry, ENTRY_SIZE as BAT_ENTRY_SIZE};
use crate::error::{Error, Result};
use crate::file_identifier::FileIdentifier;
use crate::guid::Guid;
use crate::header::Header;
use crate::io::WriteAt;
use crate::layout::*;
use crate::metadata::{self, FileParameters, MetadataEntry, MetadataTable};
use crate::parent_locator::{ParentLocator, VHDX_LOCATOR_TYPE};
use crate::region_table::{RegionEntry, RegionTable, BAT_REGION, METADATA_REGION};

/// What a new disk looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskParameters {
    pub virtual_size: u64,
    pub block_size: u32,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    /// Every block allocated up front (LeaveBlockAllocated).
    pub fixed: bool,
    pub disk_id: Guid,
    /// A differencing disk: the parent locator's key/value entries (`parent_linkage` first).
    pub parent_locator: Option<Vec<(String, String)>>,
}

impl DiskParameters {
    /// Check the parameters against the spec's limits.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, value: u64, rule: &'static str| {
            Err(Error::InvalidField {
                structure: "new disk parameters",
                offset: 0,
                field,
                value,
                rule,
            })
        };
        if !self.block_size.is_power_of_two()
            || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&self.block_size)
        {
            return bad(
                "block size",
                u64::from(self.block_size),
                "a power of two from 1 MiB to 256 MiB",
            );
        }
        for (field, v) in [
            ("logical sector size", self.logical_sector_size),
            ("physical sector size", self.physical_sector_size),
        ] {
            if v != 512 && v != 4096 {
                return bad(field, u64::from(v), "512 or 4096");
            }
        }
        if self.virtual_size == 0
            || self.virtual_size > MAX_VIRTUAL_SIZE
            || self.virtual_size % u64::from(self.logical_sector_size) != 0
        {
            return bad(
                "virtual size",
                self.virtual_size,
                "a multiple of the logical sector size, at most 64 TiB",
            );
        }
        if self.fixed && self.parent_locator.is_some() {
            return bad("fixed", 1, "a differencing disk cannot be fixed");
        }
        Ok(())
    }

    pub fn geometry(&self) -> Geometry {
        Geometry::new(
            self.virtual_size,
            self.block_size,
            self.logical_sector_size,
            self.parent_locator.is_some(),
        )
    }
}

/// The 1 MiB metadata region of a disk: table, then the items, each 4 KiB aligned.
pub fn metadata_region(p: &DiskParameters) -> Vec<u8> {
    let mut items: Vec<(Guid, Vec<u8>, bool)> = vec![
        (
            metadata::FILE_PARAMETERS,
            FileParameters {
                block_size: p.block_size,
                leave_block_allocated: p.fixed,
                has_parent: p.parent_locator.is_some(),
            }
            .encode(),
            false,
        ),
        (
            metadata::VIRTUAL_DISK_SIZE,
            p.virtual_size.to_le_bytes().to_vec(),
            true,
        ),
        (metadata::VIRTUAL_DISK_ID, p.disk_id.0.to_vec(), true),
        (
            metadata::LOGICAL_SECTOR_SIZE,
            p.logical_sector_size.to_le_bytes().to_vec(),
            true,
        ),
        (
            metadata::PHYSICAL_SECTOR_SIZE,
            p.physical_sector_size.to_le_bytes().to_vec(),
            true,
        ),
    ];
    if let Some(entries) = &p.parent_locator {
        let locator = ParentLocator {
            locator_type: VHDX_LOCATOR_TYPE,
            entries: entries.clone(),
        };
        items.push((metadata::PARENT_LOCATOR, locator.encode(), false));
    }
    let mut region = vec![0u8; MIB as usize];
    let mut entries = Vec::new();
    let mut at = metadata::TABLE_SIZE as u32;
    for (id, bytes, is_virtual_disk) in items {
        region[at as usize..at as usize + bytes.len()].copy_from_slice(&bytes);
        entries.push(MetadataEntry {
            item_id: id,
            offset: at,
            length: bytes.len() as u32,
            is_user: false,
            is_virtual_disk,
            is_required: true,
        });
        at += (bytes.len() as u32).next_multiple_of(4096);
    }
    region[..metadata::TABLE_SIZE].copy_from_slice(&MetadataTable { entries }.encode());
    region
}

/// Where the regions of a new file go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewLayout {
    pub log_offset: u64,
    pub log_length: u32,
    pub metadata_offset: u64,
    pub bat_offset: u64,
    pub bat_length: u64,
    /// First byte after the BAT: where payload blocks start.
    pub data_start: u64,
}

impl NewLayout {
    pub fn new(p: &DiskParameters, log_length: u32) -> NewLayout {
        let log_offset = MIB;
        let metadata_offset = log_offset + u64::from(log_length);
        let bat_offset = metadata_offset + MIB;
        let bat_length = (p.geometry().total_bat_entries() * BAT_ENTRY_SIZE).next_multiple_of(MIB);
        NewLayout {
            log_offset,
            log_length,
            metadata_offset,
            bat_offset,
            bat_length,
            data_start: bat_offset + bat_length,
        }
    }
}

/// Write a new, empty (or, when fixed, fully allocated) disk into `file`, which must be empty.
/// `guids` supplies FileWriteGuid and DataWriteGuid. Everything is flushed before returning.
pub fn create_image(
    file: &dyn WriteAt,
    p: &DiskParameters,
    log_length: u32,
    file_write_guid: Guid,
    data_write_guid: Guid,
) -> Result<()> {
    p.validate()?;
    if log_length == 0 || u64::from(log_length) % MIB != 0 {
        return Err(Error::InvalidField {
            structure: "new disk parameters",
            offset: 0,
            field: "log size",
            value: u64::from(log_length),
            rule: "a non-zero multiple of 1 MiB",
        });
    }
    let io = |offset: u64| {
        move |source: std::io::Error| Error::Io {
            structure: "new VHDX file",
            offset,
            source,
        }
    };
    let layout = NewLayout::new(p, log_length);
    let g = p.geometry();
    let mut bat = vec![BatEntry(0); g.total_bat_entries() as usize];
    let mut end = layout.data_start;
    if p.fixed {
        for block in 0..g.payload_blocks {
            bat[g.payload_index(block) as usize] = BatEntry::new(BlockState::FullyPresent, end);
            end += g.block_size;
        }
    }
    file.set_len(end).map_err(io(0))?;
    let put = |at: u64, bytes: &[u8]| file.write_at(at, bytes).map_err(io(at));
    put(
        FILE_IDENTIFIER_OFFSET,
        &FileIdentifier {
            creator: format!("drplane {}", env!("CARGO_PKG_VERSION")),
        }
        .encode(),
    )?;
    let regions = RegionTable {
        entries: vec![
            RegionEntry {
                guid: BAT_REGION,
                file_offset: layout.bat_offset,
                length: layout.bat_length as u32,
                required: true,
            },
            RegionEntry {
                guid: METADATA_REGION,
                file_offset: layout.metadata_offset,
                length: MIB as u32,
                required: true,
            },
        ],
    };
    put(REGION_TABLE_1_OFFSET, &regions.encode())?;
    put(REGION_TABLE_2_OFFSET, &regions.encode())?;
    put(layout.metadata_offset, &metadata_region(p))?;
    let bat_bytes: Vec<u8> = bat.iter().flat_map(|e| e.encode()).collect();
    put(layout.bat_offset, &bat_bytes)?;
    let header = |sequence_number| Header {
        sequence_number,
        file_write_guid,
        data_write_guid,
        log_guid: Guid::ZERO,
        log_version: 0,
        version: 1,
        log_length,
        log_offset: layout.log_offset,
    };
    put(HEADER_1_OFFSET, &header(1).encode())?;
    put(HEADER_2_OFFSET, &header(2).encode())?;
    file.flush().map_err(io(0))
}
