//! Region tables (MS-VHDX 2.2.3): where the BAT and the metadata region live.

use crate::checksum;
use crate::error::{require_len, Error, Result};
use crate::guid::Guid;
use crate::layout::MIB;
use crate::le;

pub const SIGNATURE: &[u8; 4] = b"regi";
/// MS-VHDX 2.2.3: the table is 64 KiB and its checksum covers all of it.
pub const SIZE: usize = 64 * 1024;
const CHECKSUM_AT: usize = 4;
const ENTRY_COUNT_AT: usize = 8;
const ENTRIES_AT: usize = 16;
const ENTRY_SIZE: usize = 32;
/// MS-VHDX 2.2.3.1: at most 2047 entries fit after the 16-byte header.
pub const MAX_ENTRIES: u32 = 2047;

/// MS-VHDX 2.2.3.2 known region: the block allocation table.
pub const BAT_REGION: Guid = Guid::from_fields(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
/// MS-VHDX 2.2.3.2 known region: metadata.
pub const METADATA_REGION: Guid = Guid::from_fields(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);

/// One region table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionEntry {
    pub guid: Guid,
    pub file_offset: u64,
    pub length: u32,
    pub required: bool,
}

impl RegionEntry {
    pub fn end(&self) -> u64 {
        self.file_offset.saturating_add(self.length.into())
    }
}

/// A decoded region table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTable {
    pub entries: Vec<RegionEntry>,
}

/// The two regions every image needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownRegions {
    pub bat: RegionEntry,
    pub metadata: RegionEntry,
}

impl RegionTable {
    pub fn decode(bytes: &[u8]) -> Result<RegionTable> {
        const S: &str = "region table";
        require_len(S, bytes, SIZE)?;
        let bytes = &bytes[..SIZE];
        if &bytes[..4] != SIGNATURE {
            return Err(Error::BadSignature {
                structure: S,
                offset: 0,
                expected: "regi",
            });
        }
        checksum::verify(S, bytes, CHECKSUM_AT)?;
        let count = le::u32_at(bytes, ENTRY_COUNT_AT);
        if count > MAX_ENTRIES {
            return Err(Error::field(
                S,
                ENTRY_COUNT_AT as u64,
                "EntryCount",
                count.into(),
                "MS-VHDX 2.2.3.1: at most 2047",
            ));
        }
        let entries = (0..count as usize)
            .map(|i| {
                let at = ENTRIES_AT + i * ENTRY_SIZE;
                RegionEntry {
                    guid: Guid::read(bytes, at),
                    file_offset: le::u64_at(bytes, at + 16),
                    length: le::u32_at(bytes, at + 24),
                    required: le::u32_at(bytes, at + 28) & 1 != 0,
                }
            })
            .collect();
        Ok(RegionTable { entries })
    }

    pub fn encode(&self) -> Vec<u8> {
        assert!(self.entries.len() <= MAX_ENTRIES as usize);
        let mut out = vec![0u8; SIZE];
        out[..4].copy_from_slice(SIGNATURE);
        le::put_u32(&mut out, ENTRY_COUNT_AT, self.entries.len() as u32);
        for (i, e) in self.entries.iter().enumerate() {
            let at = ENTRIES_AT + i * ENTRY_SIZE;
            out[at..at + 16].copy_from_slice(&e.guid.0);
            le::put_u64(&mut out, at + 16, e.file_offset);
            le::put_u32(&mut out, at + 24, e.length);
            le::put_u32(&mut out, at + 28, u32::from(e.required));
        }
        checksum::seal(&mut out, CHECKSUM_AT);
        out
    }

    /// Apply MS-VHDX 2.2.3 rules and pick out the BAT and metadata regions. Offsets in errors
    /// point at the offending entry inside the table.
    pub fn known_regions(&self, file_len: u64) -> Result<KnownRegions> {
        const S: &str = "region table";
        let mut bat = None;
        let mut metadata = None;
        for (i, e) in self.entries.iter().enumerate() {
            let at = (ENTRIES_AT + i * ENTRY_SIZE) as u64;
            if e.file_offset % MIB != 0 || e.file_offset < MIB {
                return Err(Error::field(
                    S,
                    at + 16,
                    "FileOffset",
                    e.file_offset,
                    "MS-VHDX 2.2.3.2: a multiple of 1 MiB, at least 1 MiB",
                ));
            }
            if u64::from(e.length) % MIB != 0 || e.length == 0 {
                return Err(Error::field(
                    S,
                    at + 24,
                    "Length",
                    e.length.into(),
                    "MS-VHDX 2.2.3.2: a non-zero multiple of 1 MiB",
                ));
            }
            let slot = if e.guid == BAT_REGION {
                &mut bat
            } else if e.guid == METADATA_REGION {
                &mut metadata
            } else if e.required {
                return Err(Error::unsupported(
                    S,
                    at,
                    format!("unknown required region {}", e.guid),
                ));
            } else {
                continue; // MS-VHDX 2.2.3.2: unknown optional regions are ignored.
            };
            if slot.is_some() {
                return Err(Error::invalid(
                    S,
                    at,
                    format!("region {} listed twice", e.guid),
                ));
            }
            if e.end() > file_len {
                return Err(Error::invalid(
                    S,
                    at,
                    format!(
                        "region {} ends at {:#x}, past the end of the {file_len}-byte file",
                        e.guid,
                        e.end()
                    ),
                ));
            }
            *slot = Some(*e);
        }
        for (i, a) in self.entries.iter().enumerate() {
            for b in &self.entries[i + 1..] {
                if a.file_offset < b.end() && b.file_offset < a.end() {
                    return Err(Error::invalid(
                        S,
                        (ENTRIES_AT + i * ENTRY_SIZE) as u64,
                        format!("region {} overlaps region {}", a.guid, b.guid),
                    ));
                }
            }
        }
        match (bat, metadata) {
            (Some(bat), Some(metadata)) => Ok(KnownRegions { bat, metadata }),
            (None, _) => Err(Error::invalid(S, 0, "no BAT region")),
            (_, None) => Err(Error::invalid(S, 0, "no metadata region")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RegionTable {
        RegionTable {
            entries: vec![
                RegionEntry {
                    guid: BAT_REGION,
                    file_offset: 3 * MIB,
                    length: MIB as u32,
                    required: true,
                },
                RegionEntry {
                    guid: METADATA_REGION,
                    file_offset: 2 * MIB,
                    length: MIB as u32,
                    required: true,
                },
            ],
        }
    }

    #[test]
    fn region_table_round_trips_and_finds_known_regions() {
        let t = table();
        let decoded = RegionTable::decode(&t.encode()).unwrap();
        assert_eq!(decoded, t);
        let known = decoded.known_regions(8 * MIB).unwrap();
        assert_eq!(known.bat.file_offset, 3 * MIB);
        assert_eq!(known.metadata.file_offset, 2 * MIB);
    }

    // MS-VHDX 2.2.3.2: an unknown region marked required must make the reader refuse the file.
    #[test]
    fn unknown_required_region_is_refused_and_unknown_optional_ignored() {
        let mut t = table();
        t.entries.push(RegionEntry {
            guid: Guid([9; 16]),
            file_offset: 5 * MIB,
            length: MIB as u32,
            required: false,
        });
        assert!(t.known_regions(8 * MIB).is_ok());
        t.entries[2].required = true;
        assert!(matches!(
            t.known_regions(8 * MIB),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn overlapping_or_out_of_file_regions_are_refused() {
        let mut t = table();
        t.entries[0].file_offset = 2 * MIB;
        assert!(t.known_regions(8 * MIB).is_err());
        let t = table();
        assert!(t.known_regions(3 * MIB).is_err());
    }

    #[test]
    fn entry_count_over_limit_is_refused() {
        let mut bytes = table().encode();
        le::put_u32(&mut bytes, ENTRY_COUNT_AT, 5000);
        checksum::seal(&mut bytes, CHECKSUM_AT);
        assert!(matches!(
            RegionTable::decode(&bytes),
            Err(Error::InvalidField { .. })
        ));
    }
}
