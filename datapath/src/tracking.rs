//! Change tracking at replication-block granularity with a persistent bitmap. The file carries
//! the disk's identity, a generation and a clean-shutdown flag; tracking that cannot be trusted
//! (no file, damaged, another disk, unclean stop) says why, and the replicator resyncs.
//! Bits leave the bitmap only when the recovery point holding them commits.
//!
//! File (version 1, little-endian): magic `DPCT` | version u16 | clean u8 | reserved u8 |
//! block size u32 | disk size u64 | generation u64 | identity length u16 | identity bytes |
//! bitmap (one bit per block, LSB first) | CRC-32C of everything before it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pageblob::fs::{OpenMode, RealFs, StoreFs};

const MAGIC: &[u8; 4] = b"DPCT";
const VERSION: u16 = 1;
/// Identity strings are names or GUIDs; longer ones are refused.
const MAX_IDENTITY_BYTES: usize = 1024;

/// What is wrong with a bitmap file's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitmapError {
    #[error("not a change-tracking bitmap")]
    NotABitmap,
    #[error("checksum mismatch")]
    Checksum,
    #[error("version {0}")]
    Version(u16),
    #[error("header fields out of range")]
    FieldsOutOfRange,
    #[error("identity is not UTF-8")]
    IdentityNotUtf8,
    #[error("bitmap length does not match the disk size")]
    LengthMismatch,
}

/// Why the bitmap cannot be trusted: the replicator must compare digests (resync).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Untrusted {
    NoBitmap,
    Damaged(BitmapError),
    OtherDisk,
    UncleanStop,
}

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Untrusted::NoBitmap => f.write_str("no change-tracking bitmap"),
            Untrusted::Damaged(why) => write!(f, "change-tracking bitmap damaged: {why}"),
            Untrusted::OtherDisk => f.write_str("change-tracking bitmap belongs to another disk"),
            Untrusted::UncleanStop => f.write_str("tracking stopped uncleanly"),
        }
    }
}

/// A tracker for one disk.
pub struct ChangeTracker {
    /// Where the bitmap file lives (the real file system, or the simulator's in memory).
    fs: Arc<dyn StoreFs>,
    path: PathBuf,
    identity: String,
    block_size: u32,
    disk_size: u64,
    generation: u64,
    /// Blocks changed since the running cycle started.
    active: Vec<u8>,
    /// Blocks the running cycle is replicating (cleared when its point commits).
    in_flight: Vec<u8>,
    /// fsync each bitmap update (survives power loss); off, an update survives the process
    /// being killed only.
    power_safe: bool,
}

impl std::fmt::Debug for ChangeTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeTracker")
            .field("path", &self.path)
            .field("identity", &self.identity)
            .field("block_size", &self.block_size)
            .field("disk_size", &self.disk_size)
            .field("generation", &self.generation)
            .field("pending_blocks", &self.pending_blocks())
            .field("power_safe", &self.power_safe)
            .finish()
    }
}

fn blocks_of(disk_size: u64, block_size: u32) -> u64 {
    disk_size.div_ceil(u64::from(block_size))
}

impl ChangeTracker {
    /// Open tracking for a disk. Returns the tracker (marked "in use" on disk, so a crash is
    /// noticed) and, when the stored bitmap cannot be trusted, why.
    pub fn open(
        path: &Path,
        identity: &str,
        disk_size: u64,
        block_size: u32,
    ) -> std::io::Result<(ChangeTracker, Option<Untrusted>)> {
        ChangeTracker::open_in(Arc::new(RealFs), path, identity, disk_size, block_size)
    }

    /// [`ChangeTracker::open`] with the bitmap file at `path` in `fs`.
    pub fn open_in(
        fs: Arc<dyn StoreFs>,
        path: &Path,
        identity: &str,
        disk_size: u64,
        block_size: u32,
    ) -> std::io::Result<(ChangeTracker, Option<Untrusted>)> {
        assert!(
            block_size.is_power_of_two()
                && block_size >= 4096
                && identity.len() <= MAX_IDENTITY_BYTES
        );
        let bytes_needed = blocks_of(disk_size, block_size).div_ceil(8) as usize;
        let (generation, bitmap, untrusted) = match fs.read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (0, vec![0; bytes_needed], Some(Untrusted::NoBitmap))
            }
            Err(e) => return Err(e),
            Ok(bytes) => match decode(&bytes) {
                Err(why) => (0, vec![0; bytes_needed], Some(Untrusted::Damaged(why))),
                Ok(f)
                    if f.identity != identity
                        || f.disk_size != disk_size
                        || f.block_size != block_size =>
                {
                    (
                        f.generation,
                        vec![0; bytes_needed],
                        Some(Untrusted::OtherDisk),
                    )
                }
                Ok(f) if !f.clean => (f.generation, f.bitmap, Some(Untrusted::UncleanStop)),
                Ok(f) => (f.generation, f.bitmap, None),
            },
        };
        let mut tracker = ChangeTracker {
            fs,
            path: path.to_path_buf(),
            identity: identity.into(),
            block_size,
            disk_size,
            generation: generation + 1,
            active: bitmap,
            in_flight: vec![0; bytes_needed],
            power_safe: true,
        };
        tracker.persist(false)?;
        Ok((tracker, untrusted))
    }

    /// The tracked disk's size.
    pub fn disk_size(&self) -> u64 {
        self.disk_size
    }

    /// Bytes per tracked block.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Record a write of `len` bytes at `offset`.
    pub fn mark(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / u64::from(self.block_size);
        let last = offset
            .saturating_add(len - 1)
            .min(self.disk_size.saturating_sub(1))
            / u64::from(self.block_size);
        for b in first..=last {
            self.active[(b / 8) as usize] |= 1 << (b % 8);
        }
    }

    /// Mark every block (after a resync decided what to send, or for initial replication).
    pub fn mark_all(&mut self) {
        self.mark(0, self.disk_size);
    }

    /// Start a cycle: the blocks to replicate, in order. Writes from now on go to a fresh set.
    pub fn begin_cycle(&mut self) -> Vec<u64> {
        for (f, a) in self.in_flight.iter_mut().zip(self.active.iter_mut()) {
            *f |= *a;
            *a = 0;
        }
        let blocks = blocks_of(self.disk_size, self.block_size);
        // Byte by byte, skipping the unchanged ones (most of a disk between two cycles).
        let mut out = Vec::new();
        for (at, &byte) in self.in_flight.iter().enumerate() {
            let mut bits = byte;
            while bits != 0 {
                let block = at as u64 * 8 + u64::from(bits.trailing_zeros());
                if block < blocks {
                    out.push(block);
                }
                bits &= bits - 1;
            }
        }
        out
    }

    /// The cycle's point committed: its blocks are replicated.
    pub fn commit_cycle(&mut self) -> std::io::Result<()> {
        self.in_flight.fill(0);
        self.persist(false)
    }

    /// The cycle failed: its blocks stay changed for the next one (nothing is lost).
    pub fn abort_cycle(&mut self) {
        for (a, f) in self.active.iter_mut().zip(self.in_flight.iter_mut()) {
            *a |= *f;
            *f = 0;
        }
    }

    /// Persist and mark the stop as clean.
    pub fn close(mut self) -> std::io::Result<()> {
        self.abort_cycle();
        self.persist(true)
    }

    /// Changed blocks not yet committed (active ∪ in flight).
    pub fn pending_blocks(&self) -> u64 {
        self.active
            .iter()
            .zip(&self.in_flight)
            .map(|(a, f)| u64::from((a | f).count_ones()))
            .sum()
    }

    /// Write the bitmap (active ∪ in flight) atomically: temp file, fsync, rename.
    pub fn persist(&mut self, clean: bool) -> std::io::Result<()> {
        self.write_bitmap(clean)
    }

    /// Whether bitmap updates are fsynced (the default). The simulator turns it off: its host
    /// crash kills processes, not the OS's page cache, like the emulator's `Durability::Process`.
    pub fn set_power_safe(&mut self, on: bool) {
        self.power_safe = on;
    }

    fn write_bitmap(&self, clean: bool) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(40 + self.identity.len() + self.active.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(u8::from(clean));
        out.push(0);
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.extend_from_slice(&self.disk_size.to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&(self.identity.len() as u16).to_le_bytes());
        out.extend_from_slice(self.identity.as_bytes());
        out.extend(self.active.iter().zip(&self.in_flight).map(|(a, f)| a | f));
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        if !self.power_safe {
            // No power loss to survive: rewrite in place (a kill mid-write leaves a bitmap
            // whose checksum fails, which opens as damaged: a resync, never a wrong answer).
            let file = self.fs.open(&self.path, OpenMode::Create)?;
            file.write_all_at(&out, 0)?;
            return file.set_len(out.len() as u64);
        }
        // Temp file, fsync, rename, fsync of the folder.
        self.fs.write_atomic(&self.path, &out)
    }
}

struct Decoded {
    clean: bool,
    block_size: u32,
    disk_size: u64,
    generation: u64,
    identity: String,
    bitmap: Vec<u8>,
}

fn decode(bytes: &[u8]) -> Result<Decoded, BitmapError> {
    if bytes.len() < 34 || &bytes[..4] != MAGIC {
        return Err(BitmapError::NotABitmap);
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if crc32c::crc32c(body) != stored {
        return Err(BitmapError::Checksum);
    }
    let version = u16::from_le_bytes([body[4], body[5]]);
    if version != VERSION {
        return Err(BitmapError::Version(version));
    }
    let block_size = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes"));
    let disk_size = u64::from_le_bytes(body[12..20].try_into().expect("8 bytes"));
    let generation = u64::from_le_bytes(body[20..28].try_into().expect("8 bytes"));
    let id_len = u16::from_le_bytes([body[28], body[29]]) as usize;
    if id_len > MAX_IDENTITY_BYTES
        || 30 + id_len > body.len()
        || !block_size.is_power_of_two()
        || block_size < 4096
    {
        return Err(BitmapError::FieldsOutOfRange);
    }
    let identity = String::from_utf8(body[30..30 + id_len].to_vec())
        .map_err(|_| BitmapError::IdentityNotUtf8)?;
    let bitmap = body[30 + id_len..].to_vec();
    if bitmap.len() as u64 != blocks_of(disk_size, block_size).div_ceil(8) {
        return Err(BitmapError::LengthMismatch);
    }
    Ok(Decoded {
        clean: body[6] == 1,
        block_size,
        disk_size,
        generation,
        identity,
        bitmap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn first_open_is_untrusted_then_a_clean_stop_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.ct");
        let (mut t, why) = ChangeTracker::open(&p, "disk-1", 10 * MIB, 65536).unwrap();
        assert_eq!(why, Some(Untrusted::NoBitmap));
        t.mark(65536 + 10, 100);
        t.mark(5 * MIB - 1, 2);
        t.close().unwrap();
        let (mut t, why) = ChangeTracker::open(&p, "disk-1", 10 * MIB, 65536).unwrap();
        assert_eq!(why, None);
        assert_eq!(t.begin_cycle(), vec![1, 79, 80]);
    }

    #[test]
    fn a_crash_leaves_the_bitmap_untrusted_but_keeps_the_bits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.ct");
        let (mut t, _) = ChangeTracker::open(&p, "d", 4 * MIB, 65536).unwrap();
        t.mark(0, 1);
        t.persist(false).unwrap();
        drop(t); // no close: a crash
        let (mut t, why) = ChangeTracker::open(&p, "d", 4 * MIB, 65536).unwrap();
        assert_eq!(why, Some(Untrusted::UncleanStop));
        assert_eq!(t.begin_cycle(), vec![0]);
    }

    #[test]
    fn bits_leave_only_when_the_point_commits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.ct");
        let (mut t, _) = ChangeTracker::open(&p, "d", 4 * MIB, 65536).unwrap();
        t.mark(0, 1);
        assert_eq!(t.begin_cycle(), vec![0]);
        t.mark(65536, 1); // a write during the cycle
        t.abort_cycle();
        assert_eq!(t.pending_blocks(), 2);
        assert_eq!(t.begin_cycle(), vec![0, 1]);
        t.mark(2 * 65536, 1);
        t.commit_cycle().unwrap();
        assert_eq!(t.begin_cycle(), vec![2]);
    }

    #[test]
    fn damaged_or_foreign_bitmaps_are_untrusted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.ct");
        let (t, _) = ChangeTracker::open(&p, "d", 4 * MIB, 65536).unwrap();
        t.close().unwrap();
        let (t, why) = ChangeTracker::open(&p, "other", 4 * MIB, 65536).unwrap();
        assert_eq!(why, Some(Untrusted::OtherDisk));
        t.close().unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        let (_, why) = ChangeTracker::open(&p, "other", 4 * MIB, 65536).unwrap();
        assert_eq!(why, Some(Untrusted::Damaged(BitmapError::Checksum)));
    }
}
