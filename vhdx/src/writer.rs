//! Writing a VHDX file: create (dynamic, fixed, differencing), open for writing, `write_at`,
//! `zero` (trim), `flush`, `close`. Payload data is written in place; every metadata change
//! (BAT entries, sector bitmaps) goes through the log as MS-VHDX 2.3 orders it:
//!
//! 1. new payload data written, then flushed (so no BAT entry can point at unwritten data);
//! 2. a log entry holding the new 4 KiB metadata sectors written, then flushed;
//! 3. the sectors written in place (made durable by the next step 1 or by `flush`).
//!
//! Each entry's Tail is the entry itself: the entries before it were applied and flushed by the
//! flush of step 1, so after a crash a replay of the newest entry alone is complete.
//! Headers change (two alternating updates, flushed) before the first write of a session —
//! a new FileWriteGuid, DataWriteGuid and LogGuid — and at `close`, which clears the LogGuid.
//! Writes to a differencing disk must be logical-sector aligned; unwritten sectors of a new
//! block keep reading the parent (PARTIALLY_PRESENT with the chunk's sector bitmap), and ZERO
//! blocks (which hide the parent) become FULLY_PRESENT. Every successful write and zero
//! reports its byte range to the change-tracking hook.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand_core::RngCore;

use crate::bat::{BatEntry, BlockState, Geometry};
use crate::create::{create_image, DiskParameters};
use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::header::{Header, HeaderSlot};
use crate::image::{LogState, VhdxFile};
use crate::io::{ReadAt, WriteAt};
use crate::layout::*;
use crate::log_entry::{EntryHeader, LogEntry, LogWrite};
use crate::log_replay::find_active_sequence;

/// Bytes of one log data sector and of one metadata sector written through the log.
const SECTOR: u64 = LOG_SECTOR_SIZE;

/// How to make a new disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    pub virtual_size: u64,
    pub block_size: u32,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    pub log_size: u32,
    pub fixed: bool,
    /// A differencing disk: the parent's DataWriteGuid and its path relative to the child
    /// (and, optionally, absolute).
    pub parent: Option<ParentLink>,
}

/// Where a differencing disk's parent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentLink {
    pub data_write_guid: Guid,
    pub relative_path: String,
    pub absolute_path: Option<String>,
}

impl CreateOptions {
    /// A dynamic disk with 32 MiB blocks, 512-byte logical and 4096-byte physical sectors and
    /// a 1 MiB log (Hyper-V's defaults).
    pub fn dynamic(virtual_size: u64) -> CreateOptions {
        CreateOptions {
            virtual_size,
            block_size: 32 * MIB as u32,
            logical_sector_size: 512,
            physical_sector_size: 4096,
            log_size: MIB as u32,
            fixed: false,
            parent: None,
        }
    }
}

type WriteHook = Box<dyn FnMut(u64, u64) + Send>;

/// An open VHDX file being written.
pub struct VhdxWriter<W: WriteAt> {
    file: Arc<W>,
    geometry: Geometry,
    bat_offset: u64,
    bat: Vec<BatEntry>,
    /// LeaveBlockAllocated (fixed disks): zeroing writes zeros instead of freeing blocks.
    fixed: bool,
    header: Header,
    header_slot: HeaderSlot,
    /// Next payload allocation (1 MiB aligned, at or past the file's end).
    file_end: u64,
    /// Log ring: where the next entry goes and its sequence number.
    log_head: u64,
    log_sequence: u64,
    session_started: bool,
    /// Sector bitmap blocks read so far, by chunk.
    bitmaps: BTreeMap<u64, Vec<u8>>,
    rng: Box<dyn RngCore + Send>,
    on_write: Option<WriteHook>,
    /// Metadata sectors (file offsets) changed and not yet logged.
    dirty_sectors: BTreeSet<u64>,
    /// Bulk mode: no intermediate flushes (see `set_bulk`).
    bulk: bool,
}

impl<W: WriteAt> std::fmt::Debug for VhdxWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdxWriter")
            .field("geometry", &self.geometry)
            .field("file_end", &self.file_end)
            .finish_non_exhaustive()
    }
}

fn io_err(structure: &'static str, offset: u64) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io {
        structure,
        offset,
        source,
    }
}

fn random_guid(rng: &mut dyn RngCore) -> Guid {
    let mut g = [0u8; 16];
    rng.fill_bytes(&mut g);
    // RFC 4122 version 4, variant 1.
    g[7] = (g[7] & 0x0F) | 0x40;
    g[8] = (g[8] & 0x3F) | 0x80;
    Guid(g)
}

impl<W: WriteAt + 'static> VhdxWriter<W> {
    /// Create a new disk in the empty `file` and open it for writing. `rng` draws the GUIDs
    /// (the OS generator in production, a seeded one in tests and the simulator).
    pub fn create(
        file: W,
        options: &CreateOptions,
        mut rng: Box<dyn RngCore + Send>,
    ) -> Result<VhdxWriter<W>> {
        let parent_locator = options.parent.as_ref().map(|p| {
            let mut entries = vec![(
                "parent_linkage".to_string(),
                format!("{{{}}}", p.data_write_guid),
            )];
            entries.push(("relative_path".into(), p.relative_path.replace('/', "\\")));
            if let Some(abs) = &p.absolute_path {
                entries.push(("absolute_win32_path".into(), abs.clone()));
            }
            entries
        });
        let params = DiskParameters {
            virtual_size: options.virtual_size,
            block_size: options.block_size,
            logical_sector_size: options.logical_sector_size,
            physical_sector_size: options.physical_sector_size,
            fixed: options.fixed,
            disk_id: random_guid(&mut *rng),
            parent_locator,
        };
        let file_write = random_guid(&mut *rng);
        let data_write = random_guid(&mut *rng);
        create_image(&file, &params, options.log_size, file_write, data_write)?;
        VhdxWriter::open(file, rng)
    }

    /// Open an existing disk for writing. A log left by a crash is replayed into the file
    /// (and flushed) first.
    pub fn open(file: W, rng: Box<dyn RngCore + Send>) -> Result<VhdxWriter<W>> {
        let file = Arc::new(file);
        let image = VhdxFile::open(Box::new(Arc::clone(&file)))?;
        if let LogState::Replayed { .. } = image.log_state {
            persist_replay(&*file, &image)?;
        }
        let geometry = image.geometry;
        let bat_offset = image.regions.bat.file_offset;
        let mut raw = vec![0u8; (geometry.total_bat_entries() * 8) as usize];
        file.read_at(bat_offset, &mut raw)
            .map_err(io_err("BAT", bat_offset))?;
        let bat = raw
            .chunks_exact(8)
            .map(|c| BatEntry::decode(c.try_into().expect("8 bytes")))
            .collect();
        let file_end = file.len().next_multiple_of(MIB);
        Ok(VhdxWriter {
            geometry,
            bat_offset,
            bat,
            fixed: image.metadata.file_parameters.leave_block_allocated,
            header: image.header.clone(),
            header_slot: image.header_slot,
            file_end,
            log_head: 0,
            log_sequence: 1,
            session_started: false,
            bitmaps: BTreeMap::new(),
            rng,
            on_write: None,
            dirty_sectors: BTreeSet::new(),
            bulk: false,
            file,
        })
    }
}

/// Write what a replayed log changed into the file itself, and flush.
fn persist_replay(file: &dyn WriteAt, image: &VhdxFile) -> Result<()> {
    let h = &image.header;
    let mut log = vec![0u8; h.log_length as usize];
    file.read_at(h.log_offset, &mut log)
        .map_err(io_err("log", h.log_offset))?;
    let Some(seq) = find_active_sequence(&log, h.log_guid)? else {
        return Ok(());
    };
    let view = image.view();
    let head = seq.head();
    if file.len() < head.last_file_offset {
        file.set_len(head.last_file_offset)
            .map_err(io_err("file", head.last_file_offset))?;
    }
    for (_, entry) in &seq.entries {
        for d in &entry.descriptors {
            let (start, end) = d.range().expect("checked by LogEntry::decode");
            let mut bytes = vec![0u8; (end - start) as usize];
            view.read_at(start, &mut bytes)
                .map_err(io_err("replayed log", start))?;
            file.write_at(start, &bytes)
                .map_err(io_err("replayed log", start))?;
        }
    }
    file.flush().map_err(io_err("file", 0))
}

impl<W: WriteAt> VhdxWriter<W> {
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    pub fn virtual_size(&self) -> u64 {
        self.geometry.virtual_size
    }

    /// The DataWriteGuid a differencing child must link to (valid after `close`).
    pub fn data_write_guid(&self) -> Guid {
        self.header.data_write_guid
    }

    /// Call `hook(offset, len)` after every successful write or zero (change tracking).
    pub fn set_write_hook(&mut self, hook: impl FnMut(u64, u64) + Send + 'static) {
        self.on_write = Some(Box::new(hook));
    }

    /// Bulk mode, for a file that is useless until it is complete (import, restore): no
    /// ordering flushes, and `close` does not flush either (call `flush` for durability). A
    /// crash leaves a file to delete, not one to trust.
    pub fn set_bulk(&mut self, bulk: bool) {
        self.bulk = bulk;
    }

    /// An ordering point: flush unless in bulk mode.
    fn barrier(&self, structure: &'static str) -> Result<()> {
        if self.bulk {
            return Ok(());
        }
        self.file.flush().map_err(io_err(structure, 0))
    }

    fn is_differencing(&self) -> bool {
        self.geometry.has_parent
    }

    /// Write the next header (sequence + 1) over the non-current copy and flush.
    fn update_header(&mut self, change: impl Fn(&mut Header)) -> Result<()> {
        for _ in 0..2 {
            let mut next = self.header.clone();
            change(&mut next);
            next.sequence_number =
                self.header
                    .sequence_number
                    .checked_add(1)
                    .ok_or(Error::Invalid {
                        structure: "header",
                        offset: 0,
                        reason: "sequence number exhausted".into(),
                    })?;
            let (slot, at) = match self.header_slot {
                HeaderSlot::First => (HeaderSlot::Second, HEADER_2_OFFSET),
                HeaderSlot::Second => (HeaderSlot::First, HEADER_1_OFFSET),
            };
            self.file
                .write_at(at, &next.encode())
                .map_err(io_err("header", at))?;
            self.barrier("header")?;
            self.header = next;
            self.header_slot = slot;
        }
        Ok(())
    }

    /// Before the first change of a session: new FileWriteGuid, DataWriteGuid and LogGuid.
    fn start_session(&mut self) -> Result<()> {
        if self.session_started {
            return Ok(());
        }
        let file_write = random_guid(&mut *self.rng);
        let data_write = random_guid(&mut *self.rng);
        let log_guid = random_guid(&mut *self.rng);
        self.update_header(|h| {
            h.file_write_guid = file_write;
            h.data_write_guid = data_write;
            h.log_guid = log_guid;
        })?;
        self.log_head = 0;
        self.session_started = true;
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.geometry.virtual_size;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::OutOfRange { offset, len, size });
        }
        let ss = self.geometry.logical_sector_size;
        if self.is_differencing() && (offset % ss != 0 || len % ss != 0) {
            return Err(Error::Invalid {
                structure: "write",
                offset,
                reason: format!(
                    "writes to a differencing disk must be aligned to its {ss}-byte sectors"
                ),
            });
        }
        Ok(())
    }

    /// Write `data` at virtual offset `offset`.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        self.start_session()?;
        let bs = self.geometry.block_size;
        let mut allocated = false;
        let mut pos = offset;
        let end = offset + data.len() as u64;
        while pos < end {
            let block = pos / bs;
            let in_block = pos % bs;
            let n = (end - pos).min(bs - in_block);
            let chunk = &data[(pos - offset) as usize..(pos - offset + n) as usize];
            allocated |= self.write_block(block, in_block, chunk)?;
            pos += n;
        }
        if allocated || !self.dirty_sectors.is_empty() {
            self.commit_metadata()?;
        }
        if let Some(hook) = &mut self.on_write {
            hook(offset, data.len() as u64);
        }
        Ok(())
    }

    /// Write part of one block; true when metadata changed.
    fn write_block(&mut self, block: u64, in_block: u64, data: &[u8]) -> Result<bool> {
        let g = self.geometry;
        let index = g.payload_index(block) as usize;
        let entry = self.bat[index];
        let whole = in_block == 0
            && data.len() as u64 == g.block_size.min(g.virtual_size - block * g.block_size);
        match entry.state() {
            BlockState::FullyPresent => {
                self.write_payload(entry.file_offset() + in_block, data)?;
                Ok(false)
            }
            BlockState::PartiallyPresent => {
                self.write_payload(entry.file_offset() + in_block, data)?;
                self.mark_sectors(block, in_block, data.len() as u64)?;
                Ok(true)
            }
            BlockState::NotPresent if self.is_differencing() && !whole => {
                let at = self.allocate(g.block_size)?;
                self.write_payload(at + in_block, data)?;
                self.set_bat(index, BatEntry::new(BlockState::PartiallyPresent, at));
                self.mark_sectors(block, in_block, data.len() as u64)?;
                Ok(true)
            }
            _ => {
                // Not present (dynamic, or a whole block), zero, unmapped, undefined: a new
                // block reading zeros around the data (the allocation is a hole).
                let at = self.allocate(g.block_size)?;
                self.write_payload(at + in_block, data)?;
                self.set_bat(index, BatEntry::new(BlockState::FullyPresent, at));
                Ok(true)
            }
        }
    }

    fn write_payload(&self, at: u64, data: &[u8]) -> Result<()> {
        self.file
            .write_at(at, data)
            .map_err(io_err("payload block", at))
    }

    /// Reserve `len` bytes at the end of the file (they read zeros).
    fn allocate(&mut self, len: u64) -> Result<u64> {
        let at = self.file_end;
        let end = at.checked_add(len).ok_or(Error::Invalid {
            structure: "file",
            offset: at,
            reason: "file size overflow".into(),
        })?;
        if self.file.len() < end {
            self.file.set_len(end).map_err(io_err("file", end))?;
        }
        self.file_end = end;
        Ok(at)
    }

    fn set_bat(&mut self, index: usize, entry: BatEntry) {
        self.bat[index] = entry;
        let at = self.bat_offset + index as u64 * 8;
        self.dirty_sectors.insert(at - at % SECTOR);
    }

    /// Mark sectors of `block` present in its chunk's sector bitmap.
    fn mark_sectors(&mut self, block: u64, in_block: u64, len: u64) -> Result<()> {
        let g = self.geometry;
        let chunk = block / g.chunk_ratio;
        let sb_index = g.sector_bitmap_index(chunk) as usize;
        let sb_at = match self.bat[sb_index].state() {
            BlockState::FullyPresent => self.bat[sb_index].file_offset(),
            _ => {
                let at = self.allocate(SECTOR_BITMAP_BLOCK_SIZE)?;
                self.set_bat(sb_index, BatEntry::new(BlockState::FullyPresent, at));
                self.bitmaps
                    .insert(chunk, vec![0u8; SECTOR_BITMAP_BLOCK_SIZE as usize]);
                at
            }
        };
        if let std::collections::btree_map::Entry::Vacant(v) = self.bitmaps.entry(chunk) {
            let mut bytes = vec![0u8; SECTOR_BITMAP_BLOCK_SIZE as usize];
            self.file
                .read_at(sb_at, &mut bytes)
                .map_err(io_err("sector bitmap", sb_at))?;
            v.insert(bytes);
        }
        let bitmap = self.bitmaps.get_mut(&chunk).expect("loaded");
        let ss = g.logical_sector_size;
        let first = (block % g.chunk_ratio) * g.sectors_per_block() + in_block / ss;
        for bit in first..first + len.div_ceil(ss) {
            bitmap[(bit / 8) as usize] |= 1 << (bit % 8);
            let at = sb_at + bit / 8;
            self.dirty_sectors.insert(at - at % SECTOR);
        }
        Ok(())
    }

    /// The current bytes of a metadata sector (from the BAT or a loaded sector bitmap).
    fn metadata_sector(&self, at: u64) -> Vec<u8> {
        let bat_end = self.bat_offset + self.bat.len() as u64 * 8;
        if at >= self.bat_offset && at < bat_end {
            let first = ((at - self.bat_offset) / 8) as usize;
            let mut out = vec![0u8; SECTOR as usize];
            for (i, e) in self.bat[first..(first + 512).min(self.bat.len())]
                .iter()
                .enumerate()
            {
                out[i * 8..i * 8 + 8].copy_from_slice(&e.encode());
            }
            return out;
        }
        for (&chunk, bitmap) in &self.bitmaps {
            let sb = self.bat[self.geometry.sector_bitmap_index(chunk) as usize].file_offset();
            if at >= sb && at < sb + SECTOR_BITMAP_BLOCK_SIZE {
                let i = (at - sb) as usize;
                return bitmap[i..i + SECTOR as usize].to_vec();
            }
        }
        unreachable!("metadata sector {at:#x} is neither BAT nor a loaded sector bitmap")
    }

    /// Steps 1–3 of the module doc for the changed metadata sectors.
    fn commit_metadata(&mut self) -> Result<()> {
        let sectors: Vec<u64> = std::mem::take(&mut self.dirty_sectors)
            .into_iter()
            .collect();
        // An entry holds one descriptor sector (126 descriptors) and its data sectors, and
        // must fit in the ring with room to spare.
        let log_len = u64::from(self.header.log_length);
        let per_entry = (126usize)
            .min(((log_len / SECTOR).saturating_sub(2)) as usize)
            .max(1);
        self.barrier("payload")?;
        for batch in sectors.chunks(per_entry) {
            let writes: Vec<LogWrite> = batch
                .iter()
                .map(|&at| LogWrite::Data {
                    file_offset: at,
                    sector: self.metadata_sector(at),
                })
                .collect();
            let entry_len = (1 + writes.len() as u64) * SECTOR;
            if self.log_head + entry_len > log_len {
                self.log_head = 0;
            }
            let file_len = self.file.len();
            let header = EntryHeader {
                checksum: 0,
                entry_length: 0,
                tail: self.log_head as u32,
                sequence_number: self.log_sequence,
                descriptor_count: 0,
                log_guid: self.header.log_guid,
                flushed_file_offset: file_len,
                last_file_offset: file_len,
            };
            let bytes = LogEntry::encode(&header, &writes);
            let at = self.header.log_offset + self.log_head;
            self.file
                .write_at(at, &bytes)
                .map_err(io_err("log entry", at))?;
            self.barrier("log entry")?;
            self.log_head += bytes.len() as u64;
            self.log_sequence += 1;
            for w in &writes {
                if let LogWrite::Data {
                    file_offset,
                    sector,
                } = w
                {
                    self.file
                        .write_at(*file_offset, sector)
                        .map_err(io_err("metadata", *file_offset))?;
                }
            }
            if batch.len() == per_entry {
                // Another entry follows: the ring must not be overwritten before this one is
                // durable in place.
                self.barrier("metadata")?;
            }
        }
        Ok(())
    }

    /// Zero `len` bytes at `offset` (trim): whole blocks become ZERO (which also hides a
    /// parent), partial blocks are written with zeros where they are not already zero.
    pub fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.start_session()?;
        let g = self.geometry;
        let bs = g.block_size;
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let block = pos / bs;
            let in_block = pos % bs;
            let block_len = bs.min(g.virtual_size - block * bs);
            let n = (end - pos).min(block_len - in_block);
            let index = g.payload_index(block) as usize;
            let state = self.bat[index].state();
            if in_block == 0 && n == block_len && !self.fixed {
                if state != BlockState::Zero {
                    self.set_bat(index, BatEntry::new(BlockState::Zero, 0));
                }
            } else {
                let reads_zero = match state {
                    BlockState::Zero | BlockState::Unmapped | BlockState::Undefined => true,
                    BlockState::NotPresent => !self.is_differencing(),
                    _ => false,
                };
                if !reads_zero {
                    let zeros = vec![0u8; n as usize];
                    self.write_block(block, in_block, &zeros)?;
                }
            }
            pos += n;
        }
        if !self.dirty_sectors.is_empty() {
            self.commit_metadata()?;
        }
        if let Some(hook) = &mut self.on_write {
            hook(offset, len);
        }
        Ok(())
    }

    /// Make every write so far durable.
    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(io_err("file", 0))
    }

    /// Flush and mark the file clean (LogGuid cleared).
    /// In bulk mode nothing is flushed (like `cp` or `qemu-img convert`); call `flush` first
    /// for a durable file.
    pub fn close(mut self) -> Result<Guid> {
        self.barrier("file")?;
        if self.session_started {
            self.update_header(|h| h.log_guid = Guid::ZERO)?;
        }
        self.barrier("file")?;
        Ok(self.header.data_write_guid)
    }
}
