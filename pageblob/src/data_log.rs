//! The emulator's persistence: append-only segment files of checksummed records, each an
//! [`Effect`] plus (for page writes) its data. A record is acknowledged only after it is
//! written (and, at `Durability::Power`, synced); on open every segment is read back in order
//! and a torn record at the very end (a crash mid-append) is cut off, as is the unsynced tail a
//! power cut leaves (holes and torn records after the last sync, which no record after them
//! shows was synced). Anything else that fails its checksum is corruption.
//!
//! Record layout (little-endian; see docs/pageblob-store.md):
//! `magic "DPLR" | version u8 | kind u8 | reserved u16 | meta_len u32 | data_len u32 |
//!  crc32c u32 (over the record with this field zero) | unsynced u32 | meta (JSON) | data`.
//! Version 1 (`Durability::Process` writers) has zero in `unsynced`; version 2 (`Power`
//! writers) has the number of bytes of this segment before the record that were not yet known
//! to be synced when it was appended (`u32::MAX`: the last sync ended in an earlier segment).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::fs::{OpenMode, StoreFile, StoreFs};

use super::account::Effect;
use super::error::{StoreError, StoreResult};

const MAGIC: &[u8; 4] = b"DPLR";
/// Records of a writer that does not sync (`Durability::Process`).
pub const RECORD_VERSION: u8 = 1;
/// Records of a `Durability::Power` writer: they say how far the log was synced.
pub const SYNCED_RECORD_VERSION: u8 = 2;
/// `unsynced` of a version-2 record whose segment holds no synced byte known to its writer.
const SYNC_IN_EARLIER_SEGMENT: u32 = u32::MAX;
const KIND_EFFECT: u8 = 1;
/// A version-2 record with no meta and no data, appended after each group sync: it shows
/// that every byte before it (less its `unsynced`) was synced, so damage there is corruption
/// even when no write follows.
const KIND_SYNC_MARK: u8 = 2;
const HEADER_SIZE: u64 = 24;
const CRC_AT: usize = 16;
const UNSYNCED_AT: usize = 20;
/// A segment is closed once it passes this size; addresses are `segment << 40 | offset`.
pub const SEGMENT_TARGET_BYTES: u64 = 1 << 30;
const SEGMENT_SHIFT: u32 = 40;
/// Largest metadata part of a record (an effect is a few hundred bytes of JSON).
const MAX_META_BYTES: u32 = 1 << 20;
/// Largest data part (one Put Page).
const MAX_DATA_BYTES: u32 = 4 << 20;

/// When to force records to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Written to the OS before acknowledging: survives the process being killed.
    Process,
    /// Synced before acknowledging (the emulator syncs home files, then the log, for all the
    /// calls waiting at once): survives power loss too.
    Power,
}

/// Whether the log is opened by the store's one writer or by a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogAccess {
    /// Files opened for writing; a torn final record is cut off.
    Write,
    /// Files opened read-only and never changed (read-only media work).
    Read,
}

/// Why a record could not be read back.
#[derive(Debug, thiserror::Error)]
enum RecordError {
    /// The record ends past the end of the file, or the rest of the file is zeros: what a
    /// crash in the middle of an append leaves.
    #[error("record cut short")]
    Incomplete,
    /// Anything else: the bytes are there but wrong.
    #[error("{0}")]
    Damaged(String),
}

/// Append-only record log over numbered segment files.
pub struct DataLog {
    dir: PathBuf,
    fs: Arc<dyn StoreFs>,
    segments: Vec<Arc<dyn StoreFile>>,
    /// Bytes used in the last segment.
    tail: u64,
    durability: Durability,
    /// Segments with appends not synced yet.
    unsynced: std::collections::BTreeSet<usize>,
    /// Address up to which every record is known to be synced (written into version-2
    /// records; raised by [`PendingSync::sync`], which runs outside the caller's lock).
    synced: Arc<std::sync::atomic::AtomicU64>,
}

/// The appends a caller is about to sync, and how far the log is synced once it has.
pub struct PendingSync {
    files: Vec<(PathBuf, Arc<dyn StoreFile>)>,
    /// Address of the log's end when the appends were taken.
    upto: u64,
    synced: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for PendingSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSync")
            .field("segments", &self.files.len())
            .field("upto", &self.upto)
            .finish()
    }
}

impl PendingSync {
    /// `fdatasync` every segment appended to, then note that the log is synced to here.
    pub fn sync(self) -> StoreResult<()> {
        for (path, file) in &self.files {
            file.sync_data().map_err(|e| io_err(path, e))?;
        }
        self.synced
            .fetch_max(self.upto, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

fn io_err(path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn segment_path(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("segment-{n:06}.log"))
}

/// Address of byte `offset` of segment `segment`.
fn address(segment: usize, offset: u64) -> u64 {
    (segment as u64) << SEGMENT_SHIFT | offset
}

impl std::fmt::Debug for DataLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataLog")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("tail", &self.tail)
            .finish()
    }
}

impl std::fmt::Debug for LogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReader")
            .field("segments", &self.segments.len())
            .finish()
    }
}

impl DataLog {
    /// Open (or start) the log in `dir`, calling `apply` for every intact record in order with
    /// the effect and the address of its data.
    ///
    /// Only an *incomplete* final record of the last segment (a crash mid-append: cut short,
    /// or the file grown over bytes that never arrived) was never acknowledged; a writer cuts
    /// it off, a reader stops before it and leaves the files alone. Any other record that
    /// fails its checks is damage, and an error that names the segment and offset: skipping
    /// or cutting it would silently drop the acknowledged records after it.
    pub fn open(
        fs: Arc<dyn StoreFs>,
        dir: &Path,
        durability: Durability,
        access: LogAccess,
        mut apply: impl FnMut(Effect, Option<u64>),
    ) -> StoreResult<DataLog> {
        let mode = match access {
            LogAccess::Write => {
                fs.create_dir_all(dir).map_err(|e| io_err(dir, e))?;
                OpenMode::Write
            }
            LogAccess::Read => OpenMode::Read,
        };
        let mut segments = Vec::new();
        while fs.exists(&segment_path(dir, segments.len())) {
            let p = segment_path(dir, segments.len());
            segments.push(fs.open(&p, mode).map_err(|e| io_err(&p, e))?);
        }
        if segments.is_empty() && access == LogAccess::Write {
            let p = segment_path(dir, 0);
            segments.push(fs.open(&p, OpenMode::Create).map_err(|e| io_err(&p, e))?);
            fs.sync_dir(dir).map_err(|e| io_err(dir, e))?;
        }
        let mut tail = 0;
        let last = segments.len().saturating_sub(1);
        // The version of the last intact record: whether a power-mode writer was appending.
        let mut last_version = None;
        'segments: for n in 0..segments.len() {
            let path = segment_path(dir, n);
            let file = &segments[n];
            let len = file.len().map_err(|e| io_err(&path, e))?;
            let mut pos = 0u64;
            while pos < len {
                match read_record(&**file, pos, len) {
                    Ok(record) => {
                        if let Some(effect) = record.effect {
                            apply(effect, record.data_at.map(|d| address(n, d)));
                        }
                        last_version = Some(record.version);
                        pos = record.end;
                    }
                    Err(RecordError::Incomplete) if n == last => {
                        // A crash mid-append: never acknowledged. Only a writer cuts it.
                        if access == LogAccess::Write {
                            file.set_len(pos).map_err(|e| io_err(&path, e))?;
                            file.sync_data().map_err(|e| io_err(&path, e))?;
                        }
                        tail = pos;
                        break 'segments;
                    }
                    Err(why) => {
                        let unsynced = unsynced_tail(&segments, n, pos, last_version)
                            .map_err(|e| io_err(&path, e))?;
                        if !unsynced {
                            return Err(StoreError::Corrupt(format!(
                                "{} at offset {pos}: {why}",
                                path.display()
                            )));
                        }
                        // A power cut after the last sync: nothing from here on was
                        // acknowledged. A writer cuts it all; a reader stops here.
                        if access == LogAccess::Write {
                            cut_after_power_cut(&*fs, dir, &segments, n, pos)?;
                        }
                        segments.truncate(n + 1);
                        tail = pos;
                        break 'segments;
                    }
                }
            }
            tail = pos;
        }
        // A power-mode writer starts from a synced log (the replayed records may not have been:
        // an earlier writer may have been killed before its group commit) and marks it so.
        let power_writer = durability == Durability::Power && access == LogAccess::Write;
        if power_writer {
            for (n, file) in segments.iter().enumerate() {
                let p = segment_path(dir, n);
                file.sync_data().map_err(|e| io_err(&p, e))?;
            }
        }
        let synced = address(segments.len().saturating_sub(1), tail);
        let mut log = DataLog {
            dir: dir.to_path_buf(),
            fs,
            segments,
            tail,
            durability,
            unsynced: Default::default(),
            // What the open read back is on disk (a cut tail was synced above).
            synced: Arc::new(std::sync::atomic::AtomicU64::new(synced)),
        };
        if power_writer && tail > 0 {
            log.append_sync_mark()?;
        }
        Ok(log)
    }

    /// Append a record; returns the address of `data` in the log (when there is data).
    pub fn append(&mut self, effect: &Effect, data: &[u8]) -> StoreResult<Option<u64>> {
        let meta = serde_json::to_vec(effect).expect("effects serialize");
        assert!(
            meta.len() as u64 <= u64::from(MAX_META_BYTES)
                && data.len() as u64 <= u64::from(MAX_DATA_BYTES)
        );
        if self.tail >= SEGMENT_TARGET_BYTES {
            let n = self.segments.len();
            let p = segment_path(&self.dir, n);
            let f = self
                .fs
                .open(&p, OpenMode::Create)
                .map_err(|e| io_err(&p, e))?;
            if self.durability == Durability::Power {
                self.fs
                    .sync_dir(&self.dir)
                    .map_err(|e| io_err(&self.dir, e))?;
            }
            self.segments.push(f);
            self.tail = 0;
        }
        let data_at = self.write_record(KIND_EFFECT, &meta, data)?;
        Ok((!data.is_empty()).then(|| address(self.segments.len() - 1, data_at)))
    }

    /// After a sync (`Durability::Power`): append a sync mark, so the records it covers are
    /// known synced even if nothing is written after them. It is itself synced by the next
    /// group commit, or lost to a power cut before then, which loses no evidence that matters:
    /// the records a lost mark covered are then judged by what follows them, as before.
    pub fn append_sync_mark(&mut self) -> StoreResult<()> {
        if self.durability == Durability::Power {
            self.write_record(KIND_SYNC_MARK, &[], &[])?;
        }
        Ok(())
    }

    /// Write one record at the end of the last segment; returns where its data starts.
    fn write_record(&mut self, kind: u8, meta: &[u8], data: &[u8]) -> StoreResult<u64> {
        // One buffer, one write: a power cut can only leave a prefix of the record (two
        // writes could persist the data without the header before it).
        let mut record = Vec::with_capacity(HEADER_SIZE as usize + meta.len() + data.len());
        let n = self.segments.len() - 1;
        let start = self.tail;
        let (version, unsynced) = match self.durability {
            Durability::Process => (RECORD_VERSION, 0),
            Durability::Power => {
                let synced = self.synced.load(std::sync::atomic::Ordering::SeqCst);
                let unsynced = if synced >> SEGMENT_SHIFT == n as u64 {
                    let synced_offset = synced & ((1 << SEGMENT_SHIFT) - 1);
                    u32::try_from(start.saturating_sub(synced_offset))
                        .unwrap_or(SYNC_IN_EARLIER_SEGMENT)
                } else {
                    SYNC_IN_EARLIER_SEGMENT
                };
                (SYNCED_RECORD_VERSION, unsynced)
            }
        };
        record.extend_from_slice(MAGIC);
        record.extend_from_slice(&[version, kind, 0, 0]);
        record.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        record.extend_from_slice(&(data.len() as u32).to_le_bytes());
        record.extend_from_slice(&[0; 4]);
        record.extend_from_slice(&unsynced.to_le_bytes());
        record.extend_from_slice(meta);
        record.extend_from_slice(data);
        let crc = crc32c::crc32c(&record);
        record[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        let file = &self.segments[n];
        let path = segment_path(&self.dir, n);
        file.write_all_at(&record, start)
            .map_err(|e| io_err(&path, e))?;
        let data_at = start + HEADER_SIZE + meta.len() as u64;
        self.unsynced.insert(n);
        self.tail = data_at + data.len() as u64;
        Ok(data_at)
    }

    /// Segments appended to since the last call (their records are not yet synced by us):
    /// a caller syncs them outside the lock with [`PendingSync::sync`], for every append
    /// before it at once.
    pub fn take_unsynced(&mut self) -> PendingSync {
        PendingSync {
            files: std::mem::take(&mut self.unsynced)
                .into_iter()
                .map(|n| (segment_path(&self.dir, n), Arc::clone(&self.segments[n])))
                .collect(),
            upto: address(self.segments.len() - 1, self.tail),
            synced: Arc::clone(&self.synced),
        }
    }

    /// Sync every appended record now (before bytes they protect are overwritten in place).
    pub fn sync(&mut self) -> StoreResult<()> {
        self.take_unsynced().sync()
    }

    /// A handle that can read data at log addresses without holding the log.
    pub fn reader(&self) -> LogReader {
        LogReader {
            segments: self.segments.clone(),
        }
    }
}

/// Reads data by address; cheap to clone, valid while the log only grows.
#[derive(Clone)]
pub struct LogReader {
    segments: Vec<Arc<dyn StoreFile>>,
}

impl LogReader {
    pub fn read(&self, address: u64, buf: &mut [u8]) -> StoreResult<()> {
        let read = self.read_with(address, buf, |file, buf, offset| {
            file.read_exact_at(buf, offset).map(|()| true)
        })?;
        debug_assert!(read);
        Ok(())
    }

    /// [`read`](Self::read) only if it need not wait for the device (`StoreFile::read_at_if_cached`):
    /// `false` where it would, and then nothing is promised of `buf`.
    pub fn read_if_cached(&self, address: u64, buf: &mut [u8]) -> StoreResult<bool> {
        self.read_with(address, buf, |file, buf, offset| {
            file.read_exact_at_if_cached(buf, offset)
        })
    }

    fn read_with(
        &self,
        address: u64,
        buf: &mut [u8],
        read: impl FnOnce(&dyn StoreFile, &mut [u8], u64) -> io::Result<bool>,
    ) -> StoreResult<bool> {
        let n = (address >> SEGMENT_SHIFT) as usize;
        let offset = address & ((1 << SEGMENT_SHIFT) - 1);
        let file = self.segments.get(n).ok_or_else(|| {
            StoreError::Corrupt(format!("data address {address:#x} names no segment"))
        })?;
        read(&**file, buf, offset).map_err(|e| StoreError::Io {
            path: format!("segment {n} at {offset}"),
            source: e,
        })
    }
}

/// An intact record as read back.
struct Record {
    /// None for a sync mark.
    effect: Option<Effect>,
    /// Offset of its data in the segment, if it has any.
    data_at: Option<u64>,
    /// Where the next record starts.
    end: u64,
    version: u8,
    /// Version 2: bytes before it not known synced when it was appended.
    unsynced: u32,
}

/// Read and verify the record at `pos`.
fn read_record(file: &dyn StoreFile, pos: u64, len: u64) -> Result<Record, RecordError> {
    match check_record(file, pos, len) {
        Ok(record) => Ok(record),
        Err(Flaw::Short) => Err(cut_short(file, pos, len)),
        // Bytes that never arrived read as zeros: a tail of zeros is an incomplete append.
        Err(Flaw::Bad(why)) => match zeros_to_end(file, pos, len) {
            Ok(true) => Err(RecordError::Incomplete),
            Ok(false) => Err(RecordError::Damaged(why)),
            Err(e) => Err(RecordError::Damaged(format!("{why}; then reading on: {e}"))),
        },
    }
}

/// What is wrong with the bytes at a record's position.
enum Flaw {
    /// The file ends before the record does.
    Short,
    Bad(String),
}

/// Decode and check one record, without judging what a failure means.
fn check_record(file: &dyn StoreFile, pos: u64, len: u64) -> Result<Record, Flaw> {
    if len - pos < HEADER_SIZE {
        return Err(Flaw::Short);
    }
    let mut head = [0u8; HEADER_SIZE as usize];
    file.read_exact_at(&mut head, pos)
        .map_err(|e| Flaw::Bad(e.to_string()))?;
    if &head[..4] != MAGIC {
        return Err(Flaw::Bad("bad magic".into()));
    }
    let (version, kind) = (head[4], head[5]);
    let known = matches!(
        (version, kind),
        (RECORD_VERSION, KIND_EFFECT) | (SYNCED_RECORD_VERSION, KIND_EFFECT | KIND_SYNC_MARK)
    );
    if !known {
        return Err(Flaw::Bad(format!(
            "unknown record version {} kind {}",
            head[4], head[5]
        )));
    }
    let meta_len = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    let data_len = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes"));
    let stored = u32::from_le_bytes(head[CRC_AT..CRC_AT + 4].try_into().expect("4 bytes"));
    let unsynced = u32::from_le_bytes(
        head[UNSYNCED_AT..UNSYNCED_AT + 4]
            .try_into()
            .expect("4 bytes"),
    );
    let mark_with_content = kind == KIND_SYNC_MARK && (meta_len | data_len) != 0;
    if meta_len > MAX_META_BYTES || data_len > MAX_DATA_BYTES || mark_with_content {
        return Err(Flaw::Bad(format!(
            "record lengths {meta_len}+{data_len} over the limits"
        )));
    }
    let end = pos + HEADER_SIZE + u64::from(meta_len) + u64::from(data_len);
    if end > len {
        return Err(Flaw::Short);
    }
    let mut body = vec![0u8; meta_len as usize + data_len as usize];
    file.read_exact_at(&mut body, pos + HEADER_SIZE)
        .map_err(|e| Flaw::Bad(e.to_string()))?;
    head[16..20].fill(0);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head), &body);
    if crc != stored {
        return Err(Flaw::Bad(format!(
            "checksum {crc:#010x}, stored {stored:#010x}"
        )));
    }
    let effect = match kind {
        KIND_EFFECT => Some(
            serde_json::from_slice::<Effect>(&body[..meta_len as usize])
                .map_err(|e| Flaw::Bad(format!("record meta: {e}")))?,
        ),
        _ => None,
    };
    let data_at = (data_len > 0).then_some(pos + HEADER_SIZE + u64::from(meta_len));
    Ok(Record {
        effect,
        data_at,
        end,
        version,
        unsynced,
    })
}

/// Cut the log at `pos` of segment `n`: that segment truncated and every later one removed,
/// the cut and the folder synced.
fn cut_after_power_cut(
    fs: &dyn StoreFs,
    dir: &Path,
    segments: &[Arc<dyn StoreFile>],
    n: usize,
    pos: u64,
) -> StoreResult<()> {
    let path = segment_path(dir, n);
    segments[n].set_len(pos).map_err(|e| io_err(&path, e))?;
    segments[n].sync_data().map_err(|e| io_err(&path, e))?;
    for later in n + 1..segments.len() {
        let p = segment_path(dir, later);
        fs.remove(&p).map_err(|e| io_err(&p, e))?;
    }
    fs.sync_dir(dir).map_err(|e| io_err(dir, e))
}

/// Whether the damage at `pos` of segment `n` is what a power cut leaves: the log was written
/// by a power-mode writer (version-2 records before the damage, or none before it and only
/// version-2 records after), and no intact record after it shows that `pos` had been synced —
/// a version-2 record whose synced part reaches past `pos`, or any version-1 record (a writer
/// that does not sync, whose records are acknowledged as written). Synced bytes cannot be torn
/// by a power cut, so damage they hold is corruption, not an unsynced tail.
fn unsynced_tail(
    segments: &[Arc<dyn StoreFile>],
    n: usize,
    pos: u64,
    version_before: Option<u8>,
) -> io::Result<bool> {
    if version_before == Some(RECORD_VERSION) {
        return Ok(false);
    }
    // Bytes that only look like record starts: past a few, call it damage rather than read
    // on (a hostile segment full of magics with large lengths would take hours).
    let mut false_starts = 0;
    for (m, file) in segments.iter().enumerate().skip(n) {
        let len = file.len()?;
        let mut at = if m == n { pos + 1 } else { 0 };
        while at < len {
            let Some(found) = find_magic(&**file, at, len)? else {
                break;
            };
            match check_record(&**file, found, len) {
                Ok(record) => {
                    if record.version == RECORD_VERSION {
                        return Ok(false);
                    }
                    // Every byte of segment `m` before `found - unsynced` had been synced.
                    let certified = record.unsynced != SYNC_IN_EARLIER_SEGMENT
                        && (m > n || found.saturating_sub(u64::from(record.unsynced)) > pos);
                    if certified {
                        return Ok(false);
                    }
                    at = record.end;
                }
                Err(_) => {
                    false_starts += 1;
                    if false_starts > MAX_TAIL_CANDIDATES {
                        return Ok(false);
                    }
                    at = found + 1;
                }
            }
        }
    }
    Ok(true)
}

/// The offset of the next `MAGIC` at or after `from` (before `len`), reading in chunks.
fn find_magic(file: &dyn StoreFile, from: u64, len: u64) -> io::Result<Option<u64>> {
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize + MAGIC.len() - 1];
    let mut at = from;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        if n < MAGIC.len() {
            return Ok(None);
        }
        file.read_exact_at(&mut buf[..n], at)?;
        if let Some(i) = buf[..n].windows(MAGIC.len()).position(|w| w == MAGIC) {
            return Ok(Some(at + i as u64));
        }
        at += (n - (MAGIC.len() - 1)) as u64;
    }
    Ok(None)
}

/// Candidate record starts `cut_short` tries before calling the tail damaged.
const MAX_TAIL_CANDIDATES: usize = 64;

/// The record at `pos` claims more bytes than the file holds. That is a torn append only when
/// it can be the last record: what follows is no longer than one record, and no intact record
/// starts inside it (a flipped length bit in an earlier record must not cut the ones after it).
fn cut_short(file: &dyn StoreFile, pos: u64, len: u64) -> RecordError {
    let max_record = HEADER_SIZE + u64::from(MAX_META_BYTES) + u64::from(MAX_DATA_BYTES);
    if len - pos > max_record {
        return RecordError::Damaged(format!(
            "the record claims to run past the end of the file, {} bytes before it",
            len - pos
        ));
    }
    let mut rest = vec![0u8; (len - pos) as usize];
    if let Err(e) = file.read_exact_at(&mut rest, pos) {
        return RecordError::Damaged(e.to_string());
    }
    let mut from = 1;
    for _ in 0..MAX_TAIL_CANDIDATES {
        let Some(i) = rest[from..].windows(4).position(|w| w == MAGIC) else {
            return RecordError::Incomplete;
        };
        let at = pos + (from + i) as u64;
        if check_record(file, at, len).is_ok() {
            return RecordError::Damaged(format!(
                "the record claims to run past the end of the file, but an intact record starts at {at}"
            ));
        }
        from += i + 1;
    }
    RecordError::Damaged("the record claims to run past the end of the file, and what follows looks like more records".into())
}

/// Whether every byte of `[pos, len)` is zero.
fn zeros_to_end(file: &dyn StoreFile, pos: u64, len: u64) -> std::io::Result<bool> {
    let mut buf = vec![0u8; 64 << 10];
    let mut at = pos;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::StoreFs;
    use crate::memory_fs::CrashFs;

    fn effect(i: u64) -> Effect {
        Effect::CreateContainer {
            name: format!("c{i}"),
            time: i,
            metadata: Default::default(),
        }
    }

    /// Open the log in /log, returning it and the effects it replayed (their `time`).
    fn open(
        fs: &Arc<CrashFs>,
        durability: Durability,
        access: LogAccess,
    ) -> StoreResult<(DataLog, Vec<u64>)> {
        let mut seen = Vec::new();
        let log = DataLog::open(
            Arc::new(Arc::clone(fs)) as Arc<dyn StoreFs>,
            Path::new("/log"),
            durability,
            access,
            |e, _| {
                if let Effect::CreateContainer { time, .. } = e {
                    seen.push(time);
                }
            },
        )?;
        Ok((log, seen))
    }

    fn segment_len(fs: &Arc<CrashFs>) -> u64 {
        fs.open(&segment_path(Path::new("/log"), 0), OpenMode::Read)
            .unwrap()
            .len()
            .unwrap()
    }

    #[test]
    fn a_power_cut_hole_before_a_torn_append_is_the_unsynced_tail() {
        let fs = CrashFs::new();
        let (mut log, _) = open(&fs, Durability::Power, LogAccess::Write).unwrap();
        log.append(&effect(1), &[]).unwrap();
        log.sync().unwrap();
        // Two appends waiting for a group commit: the first never reaches the disk, the
        // second is torn at 7 bytes by the cut. Neither was acknowledged.
        log.append(&effect(2), &[5; 3000]).unwrap();
        fs.crash_after(0, 7);
        assert!(log.append(&effect(3), &[]).is_err());
        drop(log);
        fs.restart_after_power_loss();
        // A reader sees the acknowledged record and changes nothing.
        let before = segment_len(&fs);
        let (_, seen) = open(&fs, Durability::Power, LogAccess::Read).unwrap();
        assert_eq!(seen, [1]);
        assert_eq!(segment_len(&fs), before);
        // A writer cuts the tail and goes on.
        let (mut log, seen) = open(&fs, Durability::Power, LogAccess::Write).unwrap();
        assert_eq!(seen, [1]);
        assert!(segment_len(&fs) < before);
        log.append(&effect(4), &[]).unwrap();
        log.sync().unwrap();
        drop(log);
        fs.restart_after_power_loss();
        let (_, seen) = open(&fs, Durability::Power, LogAccess::Write).unwrap();
        assert_eq!(seen, [1, 4]);
    }

    #[test]
    fn damage_a_later_record_shows_was_synced_is_corruption() {
        let fs = CrashFs::new();
        let (mut log, _) = open(&fs, Durability::Power, LogAccess::Write).unwrap();
        for i in 1..=3 {
            log.append(&effect(i), &[i as u8; 100]).unwrap();
            log.sync().unwrap();
        }
        drop(log);
        // Flip a byte of the second record's data: synced, so no power cut did this.
        let second = segment_len(&fs) / 3 + 10;
        let file = fs
            .open(&segment_path(Path::new("/log"), 0), OpenMode::Write)
            .unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, second).unwrap();
        file.write_all_at(&[byte[0] ^ 1], second).unwrap();
        file.sync_data().unwrap();
        fs.restart_after_power_loss();
        for access in [LogAccess::Read, LogAccess::Write] {
            let err = open(&fs, Durability::Power, access)
                .unwrap_err()
                .to_string();
            assert!(err.contains("segment-000000.log at offset"), "{err}");
        }
        // The damage is still there for someone to look at.
        let (mut log, _) = {
            file.write_all_at(&byte, second).unwrap();
            open(&fs, Durability::Power, LogAccess::Write).unwrap()
        };
        log.append(&effect(9), &[]).unwrap();
    }

    #[test]
    fn damage_to_the_last_records_of_a_synced_log_is_corruption() {
        // The store's last write, synced and marked as the emulator's group commit does; then
        // a byte of it rots while nothing else is written: not a power cut's tail.
        let fs = CrashFs::new();
        let (mut log, _) = open(&fs, Durability::Power, LogAccess::Write).unwrap();
        log.append(&effect(1), &[1; 100]).unwrap();
        let last_at = segment_len(&fs) + 30;
        log.append(&effect(2), &[2; 100]).unwrap();
        log.take_unsynced().sync().unwrap();
        log.append_sync_mark().unwrap();
        drop(log);
        fs.restart();
        let file = fs
            .open(&segment_path(Path::new("/log"), 0), OpenMode::Write)
            .unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, last_at).unwrap();
        file.write_all_at(&[byte[0] ^ 0x40], last_at).unwrap();
        let err = open(&fs, Durability::Power, LogAccess::Write)
            .unwrap_err()
            .to_string();
        assert!(err.contains("segment-000000.log at offset"), "{err}");
        // Restored, the log opens with both records (and the mark is no effect).
        file.write_all_at(&byte, last_at).unwrap();
        let (_, seen) = open(&fs, Durability::Power, LogAccess::Write).unwrap();
        assert_eq!(seen, [1, 2]);
    }

    #[test]
    fn a_tail_full_of_false_record_starts_is_damage_not_a_long_search() {
        // After a synced record, bytes that keep claiming to start records (magic, version 2,
        // lengths that fit the file, wrong checksums): past a few the search stops and the
        // log is called damaged, instead of checking every one of them.
        let fs = CrashFs::new();
        let (mut log, _) = open(&fs, Durability::Power, LogAccess::Write).unwrap();
        log.append(&effect(1), &[]).unwrap();
        log.sync().unwrap();
        drop(log);
        let at = segment_len(&fs);
        let mut fake = [0u8; 32];
        fake[..4].copy_from_slice(MAGIC);
        fake[4..6].copy_from_slice(&[SYNCED_RECORD_VERSION, KIND_EFFECT]);
        fake[8..12].copy_from_slice(&8u32.to_le_bytes());
        let tail: Vec<u8> = std::iter::repeat_n(fake, 200).flatten().collect();
        let file = fs
            .open(&segment_path(Path::new("/log"), 0), OpenMode::Write)
            .unwrap();
        file.write_all_at(&[0; 8], at).unwrap();
        file.write_all_at(&tail, at + 8).unwrap();
        let err = open(&fs, Durability::Power, LogAccess::Read)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("at offset {at}")), "{err}");
    }

    #[test]
    fn a_log_that_does_not_sync_keeps_the_strict_rule() {
        // Version-1 records (`Process`): a hole followed by more bytes is damage, whatever
        // caused it, because their writer acknowledged records without syncing them.
        let fs = CrashFs::new();
        let (mut log, _) = open(&fs, Durability::Process, LogAccess::Write).unwrap();
        log.append(&effect(1), &[]).unwrap();
        let hole_at = segment_len(&fs);
        log.append(&effect(2), &[]).unwrap();
        log.append(&effect(3), &[]).unwrap();
        drop(log);
        let file = fs
            .open(&segment_path(Path::new("/log"), 0), OpenMode::Write)
            .unwrap();
        file.write_all_at(&[0; 8], hole_at).unwrap();
        let err = open(&fs, Durability::Power, LogAccess::Write)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("at offset {hole_at}")), "{err}");
    }
}
