//! Test image builder: spec-conformant VHDX images qemu cannot make — differencing chains,
//! 4096-byte sectors, PARTIALLY_PRESENT blocks, crafted dirty logs (wrapped, with stale
//! entries, with zero descriptors). Shared by unit tests, integration tests, fuzz seeds and
//! benches. Images are built in memory; keep virtual sizes modest or blocks sparse.

use std::collections::BTreeMap;

use crate::bat::{BatEntry, BlockState, Geometry, ENTRY_SIZE as BAT_ENTRY_SIZE};
use crate::file_identifier::FileIdentifier;
use crate::guid::Guid;
use crate::header::Header;
use crate::layout::*;
use crate::log_entry::{EntryHeader, LogEntry, LogWrite};
use crate::region_table::{RegionEntry, RegionTable, BAT_REGION, METADATA_REGION};

/// What a payload block holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockSpec {
    /// An explicit state without data (ZERO, UNMAPPED, UNDEFINED, or a raw reserved value).
    State(BlockState),
    /// FULLY_PRESENT with this data (exactly one block long).
    Full(Vec<u8>),
    /// PARTIALLY_PRESENT (differencing only): `data` where `present[sector]`.
    Partial { data: Vec<u8>, present: Vec<bool> },
}

/// How to leave the BAT update in the log instead of the BAT region (a crash after the log
/// was flushed but before it was applied).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirtyLog {
    /// Entries the update is spread over (at least 1).
    pub entries: usize,
    /// Place the sequence so it wraps around the end of the ring.
    pub wrap: bool,
    /// Add entries that must be ignored: another LogGuid, and an older unconnected entry.
    pub stale_entries: bool,
    /// Fill the file's BAT with garbage and have the log zero it first (zero descriptor).
    pub zero_descriptor: bool,
    /// Override FlushedFileOffset (e.g. past the end, to model a truncated file).
    pub flushed_file_offset: Option<u64>,
}

/// Builder of in-memory VHDX images.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    pub virtual_size: u64,
    pub block_size: u32,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    pub log_size: u32,
    pub fixed: bool,
    pub disk_id: Guid,
    pub data_write_guid: Guid,
    pub file_write_guid: Guid,
    /// `(parent DataWriteGuid, relative_path)` for a differencing disk.
    pub parent: Option<(Guid, String)>,
    /// Extra parent locator entries (e.g. `absolute_win32_path`), after the builder's own.
    pub extra_locator_entries: Vec<(String, String)>,
    pub dirty_log: Option<DirtyLog>,
    pub creator: String,
    blocks: BTreeMap<u64, BlockSpec>,
}

/// Sequence number of the first crafted log entry.
const FIRST_LOG_SEQUENCE: u64 = 100;
const CRAFTED_LOG_GUID: Guid = Guid([0x4C; 16]);

impl ImageBuilder {
    /// A dynamic disk with 1 MiB blocks and 512-byte sectors.
    pub fn new(virtual_size: u64) -> ImageBuilder {
        ImageBuilder {
            virtual_size,
            block_size: MIB as u32,
            logical_sector_size: 512,
            physical_sector_size: 4096,
            log_size: MIB as u32,
            fixed: false,
            disk_id: Guid([0xD1; 16]),
            data_write_guid: Guid([0xDA; 16]),
            file_write_guid: Guid([0xF1; 16]),
            parent: None,
            extra_locator_entries: Vec::new(),
            dirty_log: None,
            creator: "drplane test builder".into(),
            blocks: BTreeMap::new(),
        }
    }

    pub fn block_size(&mut self, block_size: u32) -> &mut Self {
        self.block_size = block_size;
        self
    }
    pub fn logical_sector_size(&mut self, size: u32) -> &mut Self {
        self.logical_sector_size = size;
        self
    }
    pub fn fixed(&mut self, fixed: bool) -> &mut Self {
        self.fixed = fixed;
        self
    }
    pub fn data_write_guid(&mut self, guid: Guid) -> &mut Self {
        self.data_write_guid = guid;
        self
    }
    /// Make this a differencing disk of the image whose DataWriteGuid is `linkage`.
    pub fn parent(&mut self, linkage: Guid, relative_path: &str) -> &mut Self {
        self.parent = Some((linkage, relative_path.into()));
        self
    }
    pub fn dirty_log(&mut self, log: DirtyLog) -> &mut Self {
        self.dirty_log = Some(log);
        self
    }
    /// Set a block's content or state directly.
    pub fn block(&mut self, index: u64, spec: BlockSpec) -> &mut Self {
        self.blocks.insert(index, spec);
        self
    }

    /// Write bytes at a virtual offset. In a differencing disk, sectors touched become
    /// present (offset and length must be sector aligned) and the rest reads the parent.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> &mut Self {
        assert!(
            offset + data.len() as u64 <= self.virtual_size,
            "write past the end"
        );
        let bs = u64::from(self.block_size);
        let ss = u64::from(self.logical_sector_size);
        let differencing = self.parent.is_some();
        if differencing {
            assert!(
                offset % ss == 0 && data.len() as u64 % ss == 0,
                "differencing writes are sector aligned"
            );
        }
        let mut pos = offset;
        let end = offset + data.len() as u64;
        while pos < end {
            let block = pos / bs;
            let in_block = (pos % bs) as usize;
            let n = ((end - pos).min(bs - in_block as u64)) as usize;
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + n];
            let spec = self.blocks.entry(block).or_insert_with(|| {
                if differencing {
                    BlockSpec::Partial {
                        data: vec![0; bs as usize],
                        present: vec![false; (bs / ss) as usize],
                    }
                } else {
                    BlockSpec::Full(vec![0; bs as usize])
                }
            });
            match spec {
                BlockSpec::Full(d) => d[in_block..in_block + n].copy_from_slice(src),
                BlockSpec::Partial { data: d, present } => {
                    d[in_block..in_block + n].copy_from_slice(src);
                    for s in in_block as u64 / ss..(in_block + n) as u64 / ss {
                        present[s as usize] = true;
                    }
                    if present.iter().all(|&p| p) {
                        *spec = BlockSpec::Full(std::mem::take(d));
                    }
                }
                BlockSpec::State(_) => {
                    let mut d = vec![0; bs as usize];
                    d[in_block..in_block + n].copy_from_slice(src);
                    if differencing {
                        let mut present = vec![false; (bs / ss) as usize];
                        for s in in_block as u64 / ss..(in_block + n) as u64 / ss {
                            present[s as usize] = true;
                        }
                        *spec = BlockSpec::Partial { data: d, present };
                    } else {
                        *spec = BlockSpec::Full(d);
                    }
                }
            }
            pos += n as u64;
        }
        self
    }

    /// What a reader must see, given the parent's content (differencing disks).
    pub fn expected_content(&self, parent: Option<&[u8]>) -> Vec<u8> {
        let bs = self.block_size as usize;
        let ss = self.logical_sector_size as usize;
        let vs = self.virtual_size as usize;
        let mut out = vec![0u8; vs];
        if let Some(p) = parent {
            let n = p.len().min(vs);
            out[..n].copy_from_slice(&p[..n]);
        }
        for (&block, spec) in &self.blocks {
            let start = block as usize * bs;
            if start >= vs {
                continue;
            }
            let len = bs.min(vs - start);
            let dst = &mut out[start..start + len];
            match spec {
                BlockSpec::Full(d) => dst.copy_from_slice(&d[..len]),
                BlockSpec::State(BlockState::NotPresent) => {}
                BlockSpec::State(_) => dst.fill(0),
                BlockSpec::Partial { data, present } => {
                    for (s, &p) in present.iter().enumerate() {
                        let a = s * ss;
                        if p && a < len {
                            let b = (a + ss).min(len);
                            dst[a..b].copy_from_slice(&data[a..b]);
                        }
                    }
                }
            }
        }
        out
    }

    /// Build the image file.
    pub fn build(&self) -> Vec<u8> {
        let has_parent = self.parent.is_some();
        let g = Geometry::new(
            self.virtual_size,
            self.block_size,
            self.logical_sector_size,
            has_parent,
        );
        let bs = g.block_size;
        let log_offset = MIB;
        let log_len = u64::from(self.log_size);
        let md_offset = log_offset + log_len;
        let md_len = MIB;
        let bat_offset = md_offset + md_len;
        let bat_len = (g.total_bat_entries() * BAT_ENTRY_SIZE).next_multiple_of(MIB);
        let mut next = bat_offset + bat_len;

        let mut bat = vec![BatEntry(0); g.total_bat_entries() as usize];
        let mut payload: Vec<(u64, &[u8])> = Vec::new();
        let zero_block = vec![0u8; bs as usize];
        let mut bitmaps: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for block in 0..g.payload_blocks {
            let spec = self.blocks.get(&block);
            let index = g.payload_index(block) as usize;
            match spec {
                None if self.fixed => {
                    bat[index] = BatEntry::new(BlockState::FullyPresent, next);
                    payload.push((next, &zero_block));
                    next += bs;
                }
                None => {}
                Some(BlockSpec::State(s)) => bat[index] = BatEntry(u64::from(s.bits())),
                Some(BlockSpec::Full(d)) => {
                    bat[index] = BatEntry::new(BlockState::FullyPresent, next);
                    payload.push((next, d));
                    next += bs;
                }
                Some(BlockSpec::Partial { data, present }) => {
                    assert!(has_parent, "PARTIALLY_PRESENT needs a parent");
                    bat[index] = BatEntry::new(BlockState::PartiallyPresent, next);
                    payload.push((next, data));
                    next += bs;
                    let chunk = block / g.chunk_ratio;
                    let bitmap = bitmaps
                        .entry(chunk)
                        .or_insert_with(|| vec![0u8; SECTOR_BITMAP_BLOCK_SIZE as usize]);
                    let first = (block % g.chunk_ratio) * g.sectors_per_block();
                    for (s, &p) in present.iter().enumerate() {
                        if p {
                            let bit = first + s as u64;
                            bitmap[(bit / 8) as usize] |= 1 << (bit % 8);
                        }
                    }
                }
            }
        }
        for &chunk in bitmaps.keys() {
            bat[g.sector_bitmap_index(chunk) as usize] =
                BatEntry::new(BlockState::FullyPresent, next);
            next += SECTOR_BITMAP_BLOCK_SIZE;
        }
        let file_len = next;
        let mut out = vec![0u8; file_len as usize];
        let mut put = |at: u64, bytes: &[u8]| {
            out[at as usize..at as usize + bytes.len()].copy_from_slice(bytes)
        };

        put(
            FILE_IDENTIFIER_OFFSET,
            &FileIdentifier {
                creator: self.creator.clone(),
            }
            .encode(),
        );
        let regions = RegionTable {
            entries: vec![
                RegionEntry {
                    guid: BAT_REGION,
                    file_offset: bat_offset,
                    length: bat_len as u32,
                    required: true,
                },
                RegionEntry {
                    guid: METADATA_REGION,
                    file_offset: md_offset,
                    length: md_len as u32,
                    required: true,
                },
            ],
        };
        put(REGION_TABLE_1_OFFSET, &regions.encode());
        put(REGION_TABLE_2_OFFSET, &regions.encode());
        put(md_offset, &self.metadata_region());

        let bat_bytes: Vec<u8> = bat.iter().flat_map(|e| e.encode()).collect();
        let mut log_guid = Guid::ZERO;
        if let Some(dirty) = &self.dirty_log {
            log_guid = CRAFTED_LOG_GUID;
            let old = if dirty.zero_descriptor {
                vec![0xFF; bat_len as usize]
            } else {
                vec![0u8; bat_len as usize]
            };
            put(bat_offset, &old);
            let log = craft_log(dirty, &old, &bat_bytes, bat_offset, log_len, file_len);
            put(log_offset, &log);
        } else {
            put(bat_offset, &bat_bytes);
        }
        for (at, data) in payload {
            put(at, data);
        }
        for (&chunk, bitmap) in &bitmaps {
            let at = bat[g.sector_bitmap_index(chunk) as usize].file_offset();
            put(at, bitmap);
        }
        let header = |seq| Header {
            sequence_number: seq,
            file_write_guid: self.file_write_guid,
            data_write_guid: self.data_write_guid,
            log_guid,
            log_version: 0,
            version: 1,
            log_length: self.log_size,
            log_offset,
        };
        put(HEADER_1_OFFSET, &header(1).encode());
        put(HEADER_2_OFFSET, &header(2).encode());
        out
    }

    fn metadata_region(&self) -> Vec<u8> {
        let parent_locator = self.parent.as_ref().map(|(linkage, rel)| {
            let mut entries = vec![("parent_linkage".to_string(), format!("{{{linkage}}}"))];
            if !rel.is_empty() {
                entries.push(("relative_path".into(), rel.replace('/', "\\")));
            }
            entries.extend(self.extra_locator_entries.iter().cloned());
            entries
        });
        crate::create::metadata_region(&crate::create::DiskParameters {
            virtual_size: self.virtual_size,
            block_size: self.block_size,
            logical_sector_size: self.logical_sector_size,
            physical_sector_size: self.physical_sector_size,
            fixed: self.fixed,
            disk_id: self.disk_id,
            parent_locator,
        })
    }
}

/// Lay the BAT update (`old` → `new`, both the BAT region's bytes) into a log ring.
fn craft_log(
    dirty: &DirtyLog,
    old: &[u8],
    new: &[u8],
    bat_offset: u64,
    log_len: u64,
    file_len: u64,
) -> Vec<u8> {
    let sector = LOG_SECTOR_SIZE as usize;
    let mut writes: Vec<LogWrite> = Vec::new();
    if dirty.zero_descriptor {
        writes.push(LogWrite::Zero {
            file_offset: bat_offset,
            length: old.len() as u64,
        });
    }
    for i in 0..new.len().div_ceil(sector) {
        let mut s = vec![0u8; sector];
        let chunk = &new[i * sector..new.len().min((i + 1) * sector)];
        s[..chunk.len()].copy_from_slice(chunk);
        let was_zeroed = dirty.zero_descriptor;
        let differs = if was_zeroed {
            s.iter().any(|&b| b != 0)
        } else {
            s[..] != old[i * sector..(i + 1) * sector]
        };
        if differs {
            writes.push(LogWrite::Data {
                file_offset: bat_offset + (i * sector) as u64,
                sector: s,
            });
        }
    }
    let entries = dirty.entries.max(1);
    let per_entry = writes.len().div_ceil(entries).max(1);
    let mut groups: Vec<Vec<LogWrite>> =
        writes.chunks(per_entry).map(<[LogWrite]>::to_vec).collect();
    groups.resize(entries, Vec::new());
    let mut ring = vec![0u8; log_len as usize];
    let start = if dirty.wrap {
        log_len - LOG_SECTOR_SIZE
    } else {
        0
    };
    let mut pos = start;
    let flushed = dirty.flushed_file_offset.unwrap_or(file_len);
    let place = |ring: &mut Vec<u8>, at: u64, bytes: &[u8]| {
        assert!(
            bytes.len() as u64 <= log_len,
            "crafted entry larger than the log"
        );
        for (i, b) in bytes.iter().enumerate() {
            ring[((at + i as u64) % log_len) as usize] = *b;
        }
    };
    let header = |seq: u64, guid: Guid| EntryHeader {
        checksum: 0,
        entry_length: 0,
        tail: start as u32,
        sequence_number: seq,
        descriptor_count: 0,
        log_guid: guid,
        flushed_file_offset: flushed,
        last_file_offset: file_len,
    };
    for (n, group) in groups.iter().enumerate() {
        let bytes = LogEntry::encode(
            &header(FIRST_LOG_SEQUENCE + n as u64, CRAFTED_LOG_GUID),
            group,
        );
        place(&mut ring, pos, &bytes);
        pos = (pos + bytes.len() as u64) % log_len;
    }
    if dirty.stale_entries {
        // After the active sequence, leaving one free slot: a newer entry of another LogGuid,
        // then an older, unconnected entry of this LogGuid whose tail points at itself.
        let gap = pos + LOG_SECTOR_SIZE;
        let other = LogEntry::encode(&header(FIRST_LOG_SEQUENCE + 1000, Guid([0x99; 16])), &[]);
        place(&mut ring, gap % log_len, &other);
        let old_at = (gap + 2 * LOG_SECTOR_SIZE) % log_len;
        let mut h = header(FIRST_LOG_SEQUENCE - 10, CRAFTED_LOG_GUID);
        h.tail = old_at as u32;
        place(&mut ring, old_at, &LogEntry::encode(&h, &[]));
    }
    ring
}

/// Deterministic pseudo-random bytes (xorshift) for test data without a `rand` dependency.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A file in memory that models a disk with a volatile write cache, for crash tests of the
/// writer: reads see every write; `flush` makes the writes so far durable; `crash` returns
/// what survives a power loss — the durable bytes plus, for each write since the last flush in
/// order, either nothing, all of it, or a torn subset of its 512-byte sectors (seeded). It can
/// also fail the n-th write with an I/O error.
#[derive(Debug, Default)]
pub struct CrashFile {
    state: std::sync::Mutex<CrashState>,
}

#[derive(Debug, Default)]
struct CrashState {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Writes since the last flush: offset and bytes, or a length change (`None` bytes).
    pending: Vec<(u64, Option<Vec<u8>>)>,
    writes: u64,
    fail_write: Option<u64>,
}

impl CrashFile {
    pub fn new() -> CrashFile {
        CrashFile::default()
    }

    /// Start from existing bytes (all durable).
    pub fn from_bytes(bytes: Vec<u8>) -> CrashFile {
        CrashFile {
            state: std::sync::Mutex::new(CrashState {
                durable: bytes.clone(),
                current: bytes,
                ..CrashState::default()
            }),
        }
    }

    /// Make write number `n` (counting from 0, from now on) fail.
    pub fn fail_write(&self, n: u64) {
        let mut s = self.state.lock().expect("crash file");
        s.fail_write = Some(s.writes + n);
    }

    /// What reads see now.
    pub fn bytes(&self) -> Vec<u8> {
        self.state.lock().expect("crash file").current.clone()
    }

    /// The bytes a power loss now would leave, choices drawn from `seed`.
    pub fn crash(&self, seed: u64) -> Vec<u8> {
        let s = self.state.lock().expect("crash file");
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut out = s.durable.clone();
        for (offset, bytes) in &s.pending {
            match bytes {
                None => {
                    // Length changes are metadata the file system journals: they survive.
                    out.resize(*offset as usize, 0);
                }
                Some(bytes) => {
                    let end = *offset as usize + bytes.len();
                    if out.len() < end {
                        out.resize(end, 0);
                    }
                    match next() % 3 {
                        0 => {}
                        1 => out[*offset as usize..end].copy_from_slice(bytes),
                        _ => {
                            for (i, sector) in bytes.chunks(512).enumerate() {
                                if next() % 2 == 0 {
                                    let at = *offset as usize + i * 512;
                                    out[at..at + sector.len()].copy_from_slice(sector);
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

impl crate::io::ReadAt for CrashFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.state
            .lock()
            .expect("crash file")
            .current
            .read_at(offset, buf)
    }
    fn len(&self) -> u64 {
        self.state.lock().expect("crash file").current.len() as u64
    }
}

impl crate::io::WriteAt for CrashFile {
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut s = self.state.lock().expect("crash file");
        let n = s.writes;
        s.writes += 1;
        if s.fail_write == Some(n) {
            return Err(std::io::Error::other("injected write failure"));
        }
        let end = offset as usize + data.len();
        if s.current.len() < end {
            s.current.resize(end, 0);
        }
        s.current[offset as usize..end].copy_from_slice(data);
        s.pending.push((offset, Some(data.to_vec())));
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        let mut s = self.state.lock().expect("crash file");
        s.durable = s.current.clone();
        s.pending.clear();
        Ok(())
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut s = self.state.lock().expect("crash file");
        s.current.resize(len as usize, 0);
        s.pending.push((len, None));
        Ok(())
    }
}

/// xorshift64: a tiny deterministic generator for tests (positions, patterns, GUIDs), also
/// usable where a `RngCore` is injected.
#[derive(Debug, Clone)]
pub struct XorShift(pub u64);

impl XorShift {
    pub fn draw(&mut self) -> u64 {
        // Zero is a fixed point of xorshift; never start there.
        if self.0 == 0 {
            self.0 = 0x9E37_79B9_7F4A_7C15;
        }
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform-enough in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.draw() % n
    }
}

impl rand_core::RngCore for XorShift {
    fn next_u32(&mut self) -> u32 {
        XorShift::draw(self) as u32
    }
    fn next_u64(&mut self) -> u64 {
        XorShift::draw(self)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = XorShift::draw(self) as u8;
        }
    }
}
