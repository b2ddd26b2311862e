//! Fixed positions and units of the VHDX file layout (MS-VHDX 2.1: the first 1 MiB).

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;
pub const TIB: u64 = 1024 * GIB;

/// MS-VHDX 2.1: the header section is five 64 KiB structures.
pub const HEADER_SECTION_STRUCTURE_SIZE: u64 = 64 * KIB;
pub const FILE_IDENTIFIER_OFFSET: u64 = 0;
pub const HEADER_1_OFFSET: u64 = HEADER_SECTION_STRUCTURE_SIZE;
pub const HEADER_2_OFFSET: u64 = HEADER_1_OFFSET + HEADER_SECTION_STRUCTURE_SIZE;
pub const REGION_TABLE_1_OFFSET: u64 = HEADER_2_OFFSET + HEADER_SECTION_STRUCTURE_SIZE;
pub const REGION_TABLE_2_OFFSET: u64 = REGION_TABLE_1_OFFSET + HEADER_SECTION_STRUCTURE_SIZE;
/// MS-VHDX 2.1: everything after the header section is 1 MiB aligned.
pub const HEADER_SECTION_SIZE: u64 = MIB;

/// MS-VHDX 2.2.3.1 / 2.6.1.4: largest virtual disk the format allows.
pub const MAX_VIRTUAL_SIZE: u64 = 64 * TIB;
/// MS-VHDX 2.6.1.1: block sizes are powers of two between 1 MiB and 256 MiB.
pub const MIN_BLOCK_SIZE: u32 = MIB as u32;
pub const MAX_BLOCK_SIZE: u32 = 256 * MIB as u32;
/// MS-VHDX 2.3: the log is a ring of 4 KiB sectors.
pub const LOG_SECTOR_SIZE: u64 = 4 * KIB;
/// MS-VHDX 2.5: a sector bitmap block is 1 MiB and holds 2^23 bits.
pub const SECTOR_BITMAP_BLOCK_SIZE: u64 = MIB;
