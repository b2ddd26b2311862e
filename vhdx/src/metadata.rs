//! The metadata region (MS-VHDX 2.6): its table of items and the system items the reader needs.

use crate::error::{require_len, Error, Result};
use crate::guid::Guid;
use crate::layout::{MAX_BLOCK_SIZE, MAX_VIRTUAL_SIZE, MIB, MIN_BLOCK_SIZE};
use crate::le;
use crate::parent_locator::ParentLocator;

pub const SIGNATURE: &[u8; 8] = b"metadata";
/// MS-VHDX 2.6.1: the table occupies the first 64 KiB of the region.
pub const TABLE_SIZE: usize = 64 * 1024;
const ENTRY_COUNT_AT: usize = 10;
const ENTRIES_AT: usize = 32;
const ENTRY_SIZE: usize = 32;
/// MS-VHDX 2.6.1.1: at most 2047 entries.
pub const MAX_ENTRIES: u16 = 2047;
/// MS-VHDX 2.6.1.2: at most 1024 user items.
pub const MAX_USER_ENTRIES: usize = 1024;
/// MS-VHDX 2.6.1.2: an item is at most 1 MiB.
pub const MAX_ITEM_LENGTH: u32 = MIB as u32;

const FLAG_IS_USER: u32 = 1;
const FLAG_IS_VIRTUAL_DISK: u32 = 2;
const FLAG_IS_REQUIRED: u32 = 4;

pub const FILE_PARAMETERS: Guid = Guid::from_fields(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
pub const VIRTUAL_DISK_SIZE: Guid = Guid::from_fields(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
pub const VIRTUAL_DISK_ID: Guid = Guid::from_fields(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
pub const LOGICAL_SECTOR_SIZE: Guid = Guid::from_fields(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
pub const PHYSICAL_SECTOR_SIZE: Guid = Guid::from_fields(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
pub const PARENT_LOCATOR: Guid = Guid::from_fields(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);

/// The system items this reader understands; anything else that is required is refused.
const KNOWN_ITEMS: [Guid; 6] = [
    FILE_PARAMETERS,
    VIRTUAL_DISK_SIZE,
    VIRTUAL_DISK_ID,
    LOGICAL_SECTOR_SIZE,
    PHYSICAL_SECTOR_SIZE,
    PARENT_LOCATOR,
];

/// One metadata table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataEntry {
    pub item_id: Guid,
    /// Offset of the item from the start of the metadata region.
    pub offset: u32,
    pub length: u32,
    pub is_user: bool,
    pub is_virtual_disk: bool,
    pub is_required: bool,
}

impl MetadataEntry {
    fn flags(&self) -> u32 {
        (u32::from(self.is_user) * FLAG_IS_USER)
            | (u32::from(self.is_virtual_disk) * FLAG_IS_VIRTUAL_DISK)
            | (u32::from(self.is_required) * FLAG_IS_REQUIRED)
    }
}

/// The metadata table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataTable {
    pub entries: Vec<MetadataEntry>,
}

/// Byte offset, inside the table, of entry `i` (for error reporting).
pub fn entry_offset(i: usize) -> u64 {
    (ENTRIES_AT + i * ENTRY_SIZE) as u64
}

impl MetadataTable {
    pub fn decode(bytes: &[u8]) -> Result<MetadataTable> {
        const S: &str = "metadata table";
        require_len(S, bytes, TABLE_SIZE)?;
        if &bytes[..8] != SIGNATURE {
            return Err(Error::BadSignature {
                structure: S,
                offset: 0,
                expected: "metadata",
            });
        }
        let count = le::u16_at(bytes, ENTRY_COUNT_AT);
        if count > MAX_ENTRIES {
            return Err(Error::field(
                S,
                ENTRY_COUNT_AT as u64,
                "EntryCount",
                count.into(),
                "MS-VHDX 2.6.1.1: at most 2047",
            ));
        }
        let entries = (0..count as usize)
            .map(|i| {
                let at = ENTRIES_AT + i * ENTRY_SIZE;
                let flags = le::u32_at(bytes, at + 24);
                MetadataEntry {
                    item_id: Guid::read(bytes, at),
                    offset: le::u32_at(bytes, at + 16),
                    length: le::u32_at(bytes, at + 20),
                    is_user: flags & FLAG_IS_USER != 0,
                    is_virtual_disk: flags & FLAG_IS_VIRTUAL_DISK != 0,
                    is_required: flags & FLAG_IS_REQUIRED != 0,
                }
            })
            .collect();
        Ok(MetadataTable { entries })
    }

    /// Where the last byte of any entry's item ends, from the region's start (the table's own
    /// size at least).
    pub fn extent(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| u64::from(e.offset) + u64::from(e.length))
            .fold(TABLE_SIZE as u64, u64::max)
    }

    pub fn encode(&self) -> Vec<u8> {
        assert!(self.entries.len() <= MAX_ENTRIES as usize);
        let mut out = vec![0u8; TABLE_SIZE];
        out[..8].copy_from_slice(SIGNATURE);
        le::put_u16(&mut out, ENTRY_COUNT_AT, self.entries.len() as u16);
        for (i, e) in self.entries.iter().enumerate() {
            let at = ENTRIES_AT + i * ENTRY_SIZE;
            out[at..at + 16].copy_from_slice(&e.item_id.0);
            le::put_u32(&mut out, at + 16, e.offset);
            le::put_u32(&mut out, at + 20, e.length);
            le::put_u32(&mut out, at + 24, e.flags());
        }
        out
    }

    /// Check the table's rules against a region of `region_len` bytes (MS-VHDX 2.6.1.2).
    /// Offsets in errors are relative to the region.
    pub fn validate(&self, region_len: u64) -> Result<()> {
        const S: &str = "metadata table";
        let users = self.entries.iter().filter(|e| e.is_user).count();
        if users > MAX_USER_ENTRIES {
            return Err(Error::invalid(
                S,
                0,
                format!("{users} user items; MS-VHDX 2.6.1.2 allows at most 1024"),
            ));
        }
        for (i, e) in self.entries.iter().enumerate() {
            let at = entry_offset(i);
            if e.length == 0 {
                if e.offset != 0 {
                    return Err(Error::field(
                        S,
                        at + 16,
                        "Offset",
                        e.offset.into(),
                        "MS-VHDX 2.6.1.2: must be 0 when Length is 0",
                    ));
                }
            } else {
                if u64::from(e.offset) < TABLE_SIZE as u64 {
                    return Err(Error::field(
                        S,
                        at + 16,
                        "Offset",
                        e.offset.into(),
                        "MS-VHDX 2.6.1.2: at least 64 KiB",
                    ));
                }
                if e.length > MAX_ITEM_LENGTH {
                    return Err(Error::field(
                        S,
                        at + 20,
                        "Length",
                        e.length.into(),
                        "MS-VHDX 2.6.1.2: at most 1 MiB",
                    ));
                }
                if u64::from(e.offset) + u64::from(e.length) > region_len {
                    return Err(Error::invalid(
                        S,
                        at,
                        format!("item {} ends past the metadata region", e.item_id),
                    ));
                }
            }
            if self.entries[..i]
                .iter()
                .any(|o| o.item_id == e.item_id && o.is_user == e.is_user)
            {
                return Err(Error::invalid(
                    S,
                    at,
                    format!("item {} listed twice", e.item_id),
                ));
            }
            if e.is_required && !e.is_user && !KNOWN_ITEMS.contains(&e.item_id) {
                return Err(Error::unsupported(
                    S,
                    at,
                    format!("unknown required metadata item {}", e.item_id),
                ));
            }
            if e.is_required && e.is_user {
                return Err(Error::unsupported(
                    S,
                    at,
                    format!("required user metadata item {}", e.item_id),
                ));
            }
        }
        for (i, a) in self.entries.iter().enumerate() {
            for b in &self.entries[i + 1..] {
                let (a0, a1) = (
                    u64::from(a.offset),
                    u64::from(a.offset) + u64::from(a.length),
                );
                let (b0, b1) = (
                    u64::from(b.offset),
                    u64::from(b.offset) + u64::from(b.length),
                );
                if a.length > 0 && b.length > 0 && a0 < b1 && b0 < a1 {
                    return Err(Error::invalid(
                        S,
                        entry_offset(i),
                        format!("item {} overlaps item {}", a.item_id, b.item_id),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The system (non-user) entry for `item`, if listed.
    pub fn find(&self, item: Guid) -> Option<(usize, &MetadataEntry)> {
        self.entries
            .iter()
            .enumerate()
            .find(|(_, e)| e.item_id == item && !e.is_user)
    }
}

/// File Parameters item (MS-VHDX 2.6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileParameters {
    pub block_size: u32,
    /// Set by fixed disks: blocks stay allocated.
    pub leave_block_allocated: bool,
    /// A differencing disk.
    pub has_parent: bool,
}

impl FileParameters {
    pub const SIZE: usize = 8;

    pub fn decode(bytes: &[u8]) -> Result<FileParameters> {
        const S: &str = "file parameters";
        require_len(S, bytes, Self::SIZE)?;
        let block_size = le::u32_at(bytes, 0);
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(Error::field(
                S,
                0,
                "BlockSize",
                block_size.into(),
                "MS-VHDX 2.6.2.1: a power of two from 1 MiB to 256 MiB",
            ));
        }
        let flags = le::u32_at(bytes, 4);
        Ok(FileParameters {
            block_size,
            leave_block_allocated: flags & 1 != 0,
            has_parent: flags & 2 != 0,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; Self::SIZE];
        le::put_u32(&mut out, 0, self.block_size);
        le::put_u32(
            &mut out,
            4,
            u32::from(self.leave_block_allocated) | u32::from(self.has_parent) << 1,
        );
        out
    }
}

/// Logical or physical sector size item (MS-VHDX 2.6.2.4/2.6.2.5): 512 or 4096.
pub fn decode_sector_size(structure: &'static str, bytes: &[u8]) -> Result<u32> {
    require_len(structure, bytes, 4)?;
    let size = le::u32_at(bytes, 0);
    if size != 512 && size != 4096 {
        return Err(Error::field(
            structure,
            0,
            "SectorSize",
            size.into(),
            "MS-VHDX 2.6.2.4: 512 or 4096",
        ));
    }
    Ok(size)
}

/// Virtual Disk Size item (MS-VHDX 2.6.2.2); the sector-size multiple is checked by the caller.
pub fn decode_virtual_size(bytes: &[u8]) -> Result<u64> {
    const S: &str = "virtual disk size";
    require_len(S, bytes, 8)?;
    let size = le::u64_at(bytes, 0);
    if size == 0 || size > MAX_VIRTUAL_SIZE {
        return Err(Error::field(
            S,
            0,
            "VirtualDiskSize",
            size,
            "MS-VHDX 2.6.2.2: non-zero and at most 64 TiB",
        ));
    }
    Ok(size)
}

/// Virtual Disk ID item (MS-VHDX 2.6.2.3).
pub fn decode_disk_id(bytes: &[u8]) -> Result<Guid> {
    require_len("virtual disk id", bytes, 16)?;
    Ok(Guid::read(bytes, 0))
}

/// The system metadata a reader needs, parsed and cross-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub file_parameters: FileParameters,
    pub virtual_size: u64,
    pub disk_id: Guid,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    pub parent_locator: Option<ParentLocator>,
}

impl Metadata {
    /// Parse the whole metadata region (`region` = its bytes). Offsets in errors are relative
    /// to the region start.
    pub fn decode(region: &[u8]) -> Result<Metadata> {
        Metadata::decode_prefix(region, region.len() as u64)
    }

    /// [`Metadata::decode`] of a region `region_len` bytes long from its first bytes `prefix`,
    /// which must reach as far as the table's entries do ([`MetadataTable::extent`]) or to
    /// the region's end.
    pub fn decode_prefix(prefix: &[u8], region_len: u64) -> Result<Metadata> {
        let region = prefix;
        let table = MetadataTable::decode(region)?;
        table.validate(region_len)?;
        if table.extent() > region.len() as u64 {
            return Err(Error::Truncated {
                structure: "metadata region",
                offset: 0,
                needed: table.extent(),
                available: region.len() as u64,
            });
        }
        let item = |id: Guid, name: &'static str| -> Result<(u64, &[u8])> {
            let (i, e) = table.find(id).ok_or_else(|| {
                Error::invalid("metadata table", 0, format!("required item {name} missing"))
            })?;
            if e.length == 0 {
                return Err(Error::invalid(
                    "metadata table",
                    entry_offset(i),
                    format!("item {name} is empty"),
                ));
            }
            let start = e.offset as usize;
            Ok((start as u64, &region[start..start + e.length as usize]))
        };
        let (at, b) = item(FILE_PARAMETERS, "File Parameters")?;
        let file_parameters = FileParameters::decode(b).map_err(|e| e.at(at))?;
        let (at, b) = item(VIRTUAL_DISK_SIZE, "Virtual Disk Size")?;
        let virtual_size = decode_virtual_size(b).map_err(|e| e.at(at))?;
        let (at, b) = item(VIRTUAL_DISK_ID, "Virtual Disk ID")?;
        let disk_id = decode_disk_id(b).map_err(|e| e.at(at))?;
        let (at, b) = item(LOGICAL_SECTOR_SIZE, "Logical Sector Size")?;
        let logical_sector_size =
            decode_sector_size("logical sector size", b).map_err(|e| e.at(at))?;
        let (at, b) = item(PHYSICAL_SECTOR_SIZE, "Physical Sector Size")?;
        let physical_sector_size =
            decode_sector_size("physical sector size", b).map_err(|e| e.at(at))?;
        if virtual_size % u64::from(logical_sector_size) != 0 {
            return Err(Error::field(
                "virtual disk size",
                0,
                "VirtualDiskSize",
                virtual_size,
                "MS-VHDX 2.6.2.2: a multiple of the logical sector size",
            )
            .at(at));
        }
        let parent_locator = if file_parameters.has_parent {
            let (at, b) = item(PARENT_LOCATOR, "Parent Locator")?;
            Some(ParentLocator::decode(b).map_err(|e| e.at(at))?)
        } else {
            None
        };
        Ok(Metadata {
            file_parameters,
            virtual_size,
            disk_id,
            logical_sector_size,
            physical_sector_size,
            parent_locator,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_size_must_be_power_of_two_in_range() {
        for bad in [0u32, 512 * 1024, 3 * MIB as u32, 512 * MIB as u32] {
            let p = FileParameters {
                block_size: bad,
                leave_block_allocated: false,
                has_parent: false,
            };
            assert!(FileParameters::decode(&p.encode()).is_err(), "{bad}");
        }
        let p = FileParameters {
            block_size: 32 * MIB as u32,
            leave_block_allocated: true,
            has_parent: true,
        };
        assert_eq!(FileParameters::decode(&p.encode()).unwrap(), p);
    }

    // MS-VHDX 2.6.1.2: unknown items marked IsRequired must make the reader refuse the file.
    #[test]
    fn unknown_required_item_is_refused() {
        let t = MetadataTable {
            entries: vec![MetadataEntry {
                item_id: Guid([3; 16]),
                offset: 64 * 1024,
                length: 8,
                is_user: false,
                is_virtual_disk: false,
                is_required: true,
            }],
        };
        let decoded = MetadataTable::decode(&t.encode()).unwrap();
        assert_eq!(decoded, t);
        assert!(matches!(
            decoded.validate(MIB),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn item_inside_table_or_past_region_is_refused() {
        let mut e = MetadataEntry {
            item_id: FILE_PARAMETERS,
            offset: 4096,
            length: 8,
            is_user: false,
            is_virtual_disk: false,
            is_required: true,
        };
        assert!(MetadataTable { entries: vec![e] }.validate(MIB).is_err());
        e.offset = MIB as u32 - 4;
        assert!(MetadataTable { entries: vec![e] }.validate(MIB).is_err());
    }

    #[test]
    fn sector_sizes_other_than_512_and_4096_are_refused() {
        assert_eq!(
            decode_sector_size("s", &4096u32.to_le_bytes()).unwrap(),
            4096
        );
        assert!(decode_sector_size("s", &1024u32.to_le_bytes()).is_err());
    }
}
