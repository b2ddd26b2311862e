//! The emulator's persistence: append-only segment files of checksummed records, each an
//! [`Effect`] plus (for page writes) its data. A record is acknowledged only after it is
//! written; on open every segment is read back in order and a torn record at the very end
//! (a crash mid-append) is cut off. Anything else that fails its checksum is corruption.
//!
//! Record layout (version 1, little-endian; see docs/pageblob-store.md):
//! `magic "DPLR" | version u8 | kind u8 | reserved u16 | meta_len u32 | data_len u32 |
//!  crc32c u32 (over the record with this field zero) | reserved u32 | meta (JSON) | data`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::fs::{OpenMode, StoreFile, StoreFs};

use super::account::Effect;
use super::error::{StoreError, StoreResult};

const MAGIC: &[u8; 4] = b"DPLR";
pub const RECORD_VERSION: u8 = 1;
const KIND_EFFECT: u8 = 1;
const HEADER_SIZE: u64 = 24;
const CRC_AT: usize = 16;
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
        for (n, file) in segments.iter().enumerate() {
            let path = segment_path(dir, n);
            let len = file.len().map_err(|e| io_err(&path, e))?;
            let mut pos = 0u64;
            while pos < len {
                match read_record(&**file, pos, len) {
                    Ok((effect, data_at, next)) => {
                        apply(effect, data_at.map(|d| address(n, d)));
                        pos = next;
                    }
                    Err(RecordError::Incomplete) if n == last => {
                        // A crash mid-append: never acknowledged. Only a writer cuts it.
                        if access == LogAccess::Write {
                            file.set_len(pos).map_err(|e| io_err(&path, e))?;
                            file.sync_data().map_err(|e| io_err(&path, e))?;
                        }
                        break;
                    }
                    Err(why) => {
                        return Err(StoreError::Corrupt(format!(
                            "{} at offset {pos}: {why}",
                            path.display()
                        )));
                    }
                }
            }
            tail = pos;
        }
        Ok(DataLog {
            dir: dir.to_path_buf(),
            fs,
            segments,
            tail,
            durability,
            unsynced: Default::default(),
        })
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
        // One buffer, one write: a power cut can only leave a prefix of the record (two
        // writes could persist the data without the header before it).
        let mut record = Vec::with_capacity(HEADER_SIZE as usize + meta.len() + data.len());
        record.extend_from_slice(MAGIC);
        record.extend_from_slice(&[RECORD_VERSION, KIND_EFFECT, 0, 0]);
        record.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        record.extend_from_slice(&(data.len() as u32).to_le_bytes());
        record.extend_from_slice(&[0; 8]);
        record.extend_from_slice(&meta);
        record.extend_from_slice(data);
        let crc = crc32c::crc32c(&record);
        record[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        let n = self.segments.len() - 1;
        let file = &self.segments[n];
        let path = segment_path(&self.dir, n);
        let start = self.tail;
        file.write_all_at(&record, start)
            .map_err(|e| io_err(&path, e))?;
        let data_at = start + HEADER_SIZE + meta.len() as u64;
        self.unsynced.insert(n);
        self.tail = data_at + data.len() as u64;
        Ok((!data.is_empty()).then(|| address(n, data_at)))
    }

    /// Segments appended to since the last call (their records are not yet synced by us):
    /// a caller syncs them outside the lock, for every append before it at once.
    pub fn take_unsynced(&mut self) -> Vec<(PathBuf, Arc<dyn StoreFile>)> {
        std::mem::take(&mut self.unsynced)
            .into_iter()
            .map(|n| (segment_path(&self.dir, n), Arc::clone(&self.segments[n])))
            .collect()
    }

    /// Sync every appended record now (before bytes they protect are overwritten in place).
    pub fn sync(&mut self) -> StoreResult<()> {
        for (path, file) in self.take_unsynced() {
            file.sync_data().map_err(|e| io_err(&path, e))?;
        }
        Ok(())
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
        let n = (address >> SEGMENT_SHIFT) as usize;
        let offset = address & ((1 << SEGMENT_SHIFT) - 1);
        let file = self.segments.get(n).ok_or_else(|| {
            StoreError::Corrupt(format!("data address {address:#x} names no segment"))
        })?;
        file.read_exact_at(buf, offset).map_err(|e| StoreError::Io {
            path: format!("segment {n} at {offset}"),
            source: e,
        })
    }
}

/// Read and verify the record at `pos`: `(effect, data offset, next record)`.
fn read_record(
    file: &dyn StoreFile,
    pos: u64,
    len: u64,
) -> Result<(Effect, Option<u64>, u64), RecordError> {
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
fn check_record(
    file: &dyn StoreFile,
    pos: u64,
    len: u64,
) -> Result<(Effect, Option<u64>, u64), Flaw> {
    if len - pos < HEADER_SIZE {
        return Err(Flaw::Short);
    }
    let mut head = [0u8; HEADER_SIZE as usize];
    file.read_exact_at(&mut head, pos)
        .map_err(|e| Flaw::Bad(e.to_string()))?;
    if &head[..4] != MAGIC {
        return Err(Flaw::Bad("bad magic".into()));
    }
    if head[4] != RECORD_VERSION || head[5] != KIND_EFFECT {
        return Err(Flaw::Bad(format!(
            "unknown record version {} kind {}",
            head[4], head[5]
        )));
    }
    let meta_len = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    let data_len = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes"));
    let stored = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes"));
    if meta_len > MAX_META_BYTES || data_len > MAX_DATA_BYTES {
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
    let effect: Effect = serde_json::from_slice(&body[..meta_len as usize])
        .map_err(|e| Flaw::Bad(format!("record meta: {e}")))?;
    let data_at = (data_len > 0).then_some(pos + HEADER_SIZE + u64::from(meta_len));
    Ok((effect, data_at, end))
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
