//! Block allocation table entries and the geometry that indexes them (MS-VHDX 2.5).

use crate::error::{Error, Result};
use crate::layout::{MIB, SECTOR_BITMAP_BLOCK_SIZE};

/// Size of one BAT entry.
pub const ENTRY_SIZE: u64 = 8;
const STATE_MASK: u64 = 0b111;
/// MS-VHDX 2.5.1: bits 3..19 are reserved.
const RESERVED_MASK: u64 = 0x000F_FFF8;
const FILE_OFFSET_MB_SHIFT: u32 = 20;

/// Payload block states (MS-VHDX 2.5.1.1) and sector bitmap states (2.5.1.2) share values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BlockState {
    /// 0: not allocated; reads zeros (or the parent, in a differencing disk).
    NotPresent,
    /// 1: contents undefined; we read zeros.
    Undefined,
    /// 2: reads zeros, never the parent.
    Zero,
    /// 3: unmapped (trimmed); we read zeros.
    Unmapped,
    /// 6: the whole block is at FileOffsetMB.
    FullyPresent,
    /// 7: differencing only: per sector, through the chunk's sector bitmap.
    PartiallyPresent,
    /// 4 and 5: reserved values (5 was UNMAPPED in drafts; we read zeros like qemu).
    Reserved(u8),
}

impl BlockState {
    pub fn from_bits(bits: u8) -> BlockState {
        match bits {
            0 => BlockState::NotPresent,
            1 => BlockState::Undefined,
            2 => BlockState::Zero,
            3 => BlockState::Unmapped,
            6 => BlockState::FullyPresent,
            7 => BlockState::PartiallyPresent,
            other => BlockState::Reserved(other),
        }
    }

    pub fn bits(self) -> u8 {
        match self {
            BlockState::NotPresent => 0,
            BlockState::Undefined => 1,
            BlockState::Zero => 2,
            BlockState::Unmapped => 3,
            BlockState::FullyPresent => 6,
            BlockState::PartiallyPresent => 7,
            BlockState::Reserved(b) => b,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BlockState::NotPresent => "not_present",
            BlockState::Undefined => "undefined",
            BlockState::Zero => "zero",
            BlockState::Unmapped => "unmapped",
            BlockState::FullyPresent => "fully_present",
            BlockState::PartiallyPresent => "partially_present",
            BlockState::Reserved(4) => "reserved_4",
            BlockState::Reserved(_) => "reserved_5",
        }
    }
}

/// One BAT entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatEntry(pub u64);

impl BatEntry {
    pub fn new(state: BlockState, file_offset: u64) -> BatEntry {
        assert!(file_offset % MIB == 0, "BAT offsets are whole MiB");
        BatEntry(u64::from(state.bits()) | (file_offset / MIB) << FILE_OFFSET_MB_SHIFT)
    }

    pub fn decode(bytes: [u8; 8]) -> BatEntry {
        BatEntry(u64::from_le_bytes(bytes))
    }

    pub fn encode(self) -> [u8; 8] {
        self.0.to_le_bytes()
    }

    pub fn state(self) -> BlockState {
        BlockState::from_bits((self.0 & STATE_MASK) as u8)
    }

    /// File offset in bytes (FileOffsetMB × 1 MiB; cannot overflow: 44 bits × 2^20).
    pub fn file_offset(self) -> u64 {
        (self.0 >> FILE_OFFSET_MB_SHIFT) * MIB
    }

    pub fn reserved_bits(self) -> u64 {
        self.0 & RESERVED_MASK
    }
}

/// Sizes and index arithmetic derived from the metadata (MS-VHDX 2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub virtual_size: u64,
    pub block_size: u64,
    pub logical_sector_size: u64,
    /// Payload blocks per sector bitmap block.
    pub chunk_ratio: u64,
    pub payload_blocks: u64,
    pub sector_bitmap_blocks: u64,
    pub has_parent: bool,
}

impl Geometry {
    /// Derive the geometry; the inputs were validated by the metadata decoder.
    pub fn new(
        virtual_size: u64,
        block_size: u32,
        logical_sector_size: u32,
        has_parent: bool,
    ) -> Geometry {
        let block_size = u64::from(block_size);
        let logical_sector_size = u64::from(logical_sector_size);
        // MS-VHDX 2.5: ChunkRatio = 2^23 × LogicalSectorSize / BlockSize (always ≥ 16 here).
        let chunk_ratio = (1u64 << 23) * logical_sector_size / block_size;
        let payload_blocks = virtual_size.div_ceil(block_size);
        let sector_bitmap_blocks = payload_blocks.div_ceil(chunk_ratio);
        Geometry {
            virtual_size,
            block_size,
            logical_sector_size,
            chunk_ratio,
            payload_blocks,
            sector_bitmap_blocks,
            has_parent,
        }
    }

    /// MS-VHDX 2.5: entries the BAT must hold. Differencing disks carry a sector bitmap entry
    /// after every chunk, including the last partial one; others omit the trailing one.
    pub fn total_bat_entries(&self) -> u64 {
        if self.has_parent {
            self.sector_bitmap_blocks * (self.chunk_ratio + 1)
        } else {
            self.payload_blocks + (self.payload_blocks - 1) / self.chunk_ratio
        }
    }

    /// BAT index of payload block `block`.
    pub fn payload_index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio
    }

    /// BAT index of the sector bitmap entry of chunk `chunk`.
    pub fn sector_bitmap_index(&self, chunk: u64) -> u64 {
        chunk * (self.chunk_ratio + 1) + self.chunk_ratio
    }

    /// True when BAT index `index` holds a sector bitmap entry.
    pub fn is_sector_bitmap_index(&self, index: u64) -> bool {
        index % (self.chunk_ratio + 1) == self.chunk_ratio
    }

    /// Bytes of payload block `block` that lie inside the virtual disk.
    /// Zero for the padding entries of a differencing BAT's last chunk (past the disk).
    pub fn block_len(&self, block: u64) -> u64 {
        let start = block.saturating_mul(self.block_size);
        self.block_size.min(self.virtual_size.saturating_sub(start))
    }

    pub fn sectors_per_block(&self) -> u64 {
        self.block_size / self.logical_sector_size
    }

    /// Check the BAT region can hold every entry (MS-VHDX 2.5: never trust one formula).
    pub fn check_bat_region(&self, bat_region_len: u64) -> Result<()> {
        let needed = self.total_bat_entries() * ENTRY_SIZE;
        if needed > bat_region_len {
            return Err(Error::invalid(
                "BAT region",
                0,
                format!(
                    "needs {needed} bytes for {} entries but is {bat_region_len} bytes",
                    self.total_bat_entries()
                ),
            ));
        }
        Ok(())
    }

    /// Byte offset, within its 1 MiB sector bitmap block, of the bit for logical sector
    /// `sector` of the disk — and the bit index within that byte.
    pub fn sector_bitmap_bit(&self, sector: u64) -> (u64, u8) {
        let sectors_per_chunk = SECTOR_BITMAP_BLOCK_SIZE * 8;
        let bit = sector % sectors_per_chunk;
        (bit / 8, (bit % 8) as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{GIB, TIB};

    // MS-VHDX 2.5: chunk ratio values listed in the spec's table for 512-byte sectors.
    #[test]
    fn chunk_ratio_matches_spec_table() {
        for (block, ratio) in [(MIB, 4096), (32 * MIB, 128), (256 * MIB, 16)] {
            assert_eq!(
                Geometry::new(GIB, block as u32, 512, false).chunk_ratio,
                ratio
            );
        }
        assert_eq!(
            Geometry::new(GIB, MIB as u32, 4096, false).chunk_ratio,
            32768
        );
    }

    #[test]
    fn sector_bitmap_entries_interleave_after_each_chunk() {
        let g = Geometry::new(64 * TIB, 32 * MIB as u32, 512, true);
        assert_eq!(g.payload_index(127), 127);
        assert_eq!(g.sector_bitmap_index(0), 128);
        assert_eq!(g.payload_index(128), 129);
        assert!(g.is_sector_bitmap_index(128));
        assert!(!g.is_sector_bitmap_index(129));
        assert_eq!(g.total_bat_entries(), g.sector_bitmap_blocks * 129);
    }

    #[test]
    fn non_differencing_bat_omits_trailing_bitmap_entry() {
        // 4 GiB + 1 sector at 32 MiB blocks: 129 payload blocks, one interleaved SB entry.
        let g = Geometry::new(4 * GIB + 512, 32 * MIB as u32, 512, false);
        assert_eq!(g.payload_blocks, 129);
        assert_eq!(g.total_bat_entries(), 130);
        assert_eq!(g.block_len(128), 512);
    }

    #[test]
    fn entry_packs_state_and_offset() {
        let e = BatEntry::new(BlockState::FullyPresent, 7 * MIB);
        assert_eq!(e.state(), BlockState::FullyPresent);
        assert_eq!(e.file_offset(), 7 * MIB);
        assert_eq!(BatEntry(4).state(), BlockState::Reserved(4));
        assert_eq!(BatEntry(u64::MAX).file_offset(), ((1u64 << 44) - 1) * MIB);
    }
}
