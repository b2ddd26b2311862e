//! A blob incarnation's home bytes striped over several sparse files (stores of format 2):
//! chunk *c* of the blob (4 MiB by default) lives in `homes/<incarnation>.<c mod files>.data`,
//! at its own blob offset. A file's buffered writes are serialized by the kernel (its inode
//! lock: on ext4 two threads write 64 KiB records into one file no faster than one), so writers
//! of different chunks copy into different files side by side. Format-1 stores keep one file
//! per incarnation (`homes/<incarnation>.data`). The layout is the store's, recorded in its
//! `store.json` when it is made ([`HomeLayout`]); `crate::emulator` reads it.
//!
//! Bytes no stripe holds (a stripe never created, or past its end) read as zeros.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::fs::{OpenMode, StoreFile, StoreFs};

/// How a home is striped: over `files` files, `chunk_bytes` of the blob in a row in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeStripes {
    pub files: u64,
    pub chunk_bytes: u64,
}

impl HomeStripes {
    /// What a store made in a directory uses: 8 files, 4 MiB chunks. Writers of different
    /// chunks copy side by side; at power durability each group commit syncs the stripes
    /// written since the last one, and each of those that holds new blocks costs a journal
    /// commit of its own, so a chunk holds a whole batch of replication records (32 × 64 KiB
    /// slots): with 1 MiB chunks a commit synced most of the 8 files (replication through
    /// `blob serve` at power: 3.9–4.5 s against 3.4–3.7 s).
    pub const DEFAULT: HomeStripes = HomeStripes {
        files: 8,
        chunk_bytes: 4 << 20,
    };

    /// Why these are not a layout this build writes and reads, if they are not: 2–64 files,
    /// a chunk of a power of two from 4 KiB to 1 GiB.
    pub fn check(&self) -> Result<(), String> {
        if !(2..=64).contains(&self.files) {
            return Err(format!("{} stripe files (2 to 64)", self.files));
        }
        if !self.chunk_bytes.is_power_of_two() || !(4096..=1 << 30).contains(&self.chunk_bytes) {
            return Err(format!(
                "stripe chunk of {} bytes (a power of two, 4 KiB to 1 GiB)",
                self.chunk_bytes
            ));
        }
        Ok(())
    }

    /// The stripe holding blob offset `offset`, and how many bytes from there it holds in a
    /// row.
    fn chunk_at(&self, offset: u64) -> (u64, u64) {
        let chunk = offset / self.chunk_bytes;
        (chunk % self.files, (chunk + 1) * self.chunk_bytes - offset)
    }
}

/// How a new store lays out its blobs' home bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HomeLayout {
    /// One file per blob incarnation (format 1).
    OneFile,
    /// Striped over several files (format 2).
    Striped(HomeStripes),
}

/// The incarnation a home file's name belongs to: `<incarnation>.data` (one file) or
/// `<incarnation>.<stripe>.data`; `None` for any other name.
pub fn incarnation_of(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".data")?;
    let (incarnation, stripe) = match stem.split_once('.') {
        Some((i, s)) => (i, Some(s)),
        None => (stem, None),
    };
    if stripe.is_some_and(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    incarnation.parse().ok()
}

/// One incarnation's striped home: its stripe files, opened (or created) on first use.
pub struct StripedHome {
    stripes_of: HomeStripes,
    fs: Arc<dyn StoreFs>,
    dir: PathBuf,
    incarnation: u64,
    /// A writer creates stripes on first write; a reader only opens the ones there.
    writable: bool,
    /// Make a newly created stripe's name durable (`Durability::Power`).
    sync_created: bool,
    stripes: Mutex<Vec<Option<Arc<dyn StoreFile>>>>,
    /// Bit *k*: stripe *k* was written or cut since its last sync (set after the write, so a
    /// sync that clears it first and misses the write leaves it set for the next).
    unsynced: AtomicU64,
}

impl std::fmt::Debug for StripedHome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripedHome")
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

impl StripedHome {
    pub fn new(
        stripes_of: HomeStripes,
        fs: Arc<dyn StoreFs>,
        dir: &Path,
        incarnation: u64,
        writable: bool,
        sync_created: bool,
    ) -> StripedHome {
        StripedHome {
            stripes_of,
            fs,
            dir: dir.to_path_buf(),
            incarnation,
            writable,
            sync_created,
            stripes: Mutex::new(vec![None; stripes_of.files as usize]),
            unsynced: AtomicU64::new(0),
        }
    }

    fn path(&self, stripe: u64) -> PathBuf {
        self.dir
            .join(format!("{:016}.{stripe}.data", self.incarnation))
    }

    /// Stripe `stripe`'s file: created for a writer, `None` for a reader where it was never
    /// written.
    fn stripe(&self, stripe: u64) -> io::Result<Option<Arc<dyn StoreFile>>> {
        let mut stripes = self.stripes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = &stripes[stripe as usize] {
            return Ok(Some(Arc::clone(f)));
        }
        let path = self.path(stripe);
        let mode = match self.writable {
            true => OpenMode::Create,
            false => OpenMode::Read,
        };
        let file = match self.fs.open(&path, mode) {
            Ok(f) => f,
            Err(e) if !self.writable && e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(with_path(&path, e)),
        };
        if self.sync_created {
            self.fs
                .sync_dir(&self.dir)
                .map_err(|e| with_path(&self.dir, e))?;
        }
        stripes[stripe as usize] = Some(Arc::clone(&file));
        Ok(Some(file))
    }
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

impl StripedHome {
    /// Up to the end of the chunk at `offset`, read from its stripe with `read` (`None`: the
    /// read would wait); bytes the stripe does not hold are zeros (never a 0-byte read, which
    /// would mean the end of the home).
    fn read_chunk(
        &self,
        buf: &mut [u8],
        offset: u64,
        read: impl FnOnce(&dyn StoreFile, &mut [u8], u64) -> io::Result<Option<usize>>,
    ) -> io::Result<Option<usize>> {
        if buf.is_empty() {
            return Ok(Some(0));
        }
        let (stripe, in_row) = self.stripes_of.chunk_at(offset);
        let n = buf.len().min(usize::try_from(in_row).unwrap_or(usize::MAX));
        let buf = &mut buf[..n];
        let read = match self.stripe(stripe)? {
            Some(file) => match read(&*file, buf, offset)? {
                Some(read) => read,
                None => return Ok(None),
            },
            None => 0,
        };
        if read == 0 {
            buf.fill(0);
            return Ok(Some(n));
        }
        Ok(Some(read))
    }
}

impl StoreFile for StripedHome {
    /// Reads up to the end of the chunk at `offset`; bytes its stripe does not hold are zeros
    /// (never a 0-byte read, which would mean the end of the home).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let read = self.read_chunk(buf, offset, |file, buf, offset| {
            file.read_at(buf, offset).map(Some)
        })?;
        Ok(read.expect("a read that may wait reads"))
    }

    fn read_at_if_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<Option<usize>> {
        self.read_chunk(buf, offset, |file, buf, offset| {
            file.read_at_if_cached(buf, offset)
        })
    }

    fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let (stripe, in_row) = self.stripes_of.chunk_at(offset);
            let n = buf.len().min(usize::try_from(in_row).unwrap_or(usize::MAX));
            let file = self
                .stripe(stripe)?
                .ok_or_else(|| io::Error::other("a read-only home is not written"))?;
            let written = file.write_all_at(&buf[..n], offset);
            // Even after a failed write: whatever part of it reached the file is synced too.
            self.unsynced.fetch_or(1 << stripe, Ordering::SeqCst);
            written?;
            buf = &buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    /// The furthest end of any stripe.
    fn len(&self) -> io::Result<u64> {
        let mut len = 0;
        for stripe in 0..self.stripes_of.files {
            if let Some(file) = self.stripe_if_there(stripe)? {
                len = len.max(file.len()?);
            }
        }
        Ok(len)
    }

    /// Cut every stripe longer than `len` to it (none is made longer).
    fn set_len(&self, len: u64) -> io::Result<()> {
        for stripe in 0..self.stripes_of.files {
            if let Some(file) = self.stripe_if_there(stripe)? {
                if file.len()? > len {
                    file.set_len(len)?;
                    self.unsynced.fetch_or(1 << stripe, Ordering::SeqCst);
                }
            }
        }
        Ok(())
    }

    /// Syncs the stripes written or cut since their last sync: an idle stripe's `fdatasync`
    /// is cheap, but each one holding new blocks costs a journal commit of its own.
    fn sync_data(&self) -> io::Result<()> {
        let unsynced = self.unsynced.swap(0, Ordering::SeqCst);
        let stripes: Vec<_> = {
            let stripes = self.stripes.lock().unwrap_or_else(|p| p.into_inner());
            (0..stripes.len())
                .filter(|k| unsynced & (1 << k) != 0)
                .filter_map(|k| stripes[k].clone())
                .collect()
        };
        let synced = stripes.iter().try_for_each(|f| f.sync_data());
        if synced.is_err() {
            // Not synced after all: the next sync tries them again.
            self.unsynced.fetch_or(unsynced, Ordering::SeqCst);
        }
        synced
    }
}

impl StripedHome {
    /// Stripe `stripe`'s file if it exists (never created here).
    fn stripe_if_there(&self, stripe: u64) -> io::Result<Option<Arc<dyn StoreFile>>> {
        if !self.writable || self.fs.exists(&self.path(stripe)) {
            return self.stripe(stripe);
        }
        let stripes = self.stripes.lock().unwrap_or_else(|p| p.into_inner());
        Ok(stripes[stripe as usize].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::RealFs;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn writes_across_chunks_read_back_and_unwritten_bytes_are_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<dyn StoreFs> = Arc::new(RealFs);
        let layout = HomeStripes::DEFAULT;
        let home = StripedHome::new(layout, Arc::clone(&fs), dir.path(), 7, true, false);
        // Across the end of chunk 0 into chunk 1, and one in chunk 9 (stripe 1 again).
        let a = pattern(3 * 4096, 1);
        let a_at = layout.chunk_bytes - 4096;
        home.write_all_at(&a, a_at).unwrap();
        let b = pattern(8192, 2);
        let b_at = 9 * layout.chunk_bytes + 512;
        home.write_all_at(&b, b_at).unwrap();
        let mut names = fs.list(dir.path()).unwrap();
        names.sort();
        assert_eq!(
            names,
            ["0000000000000007.0.data", "0000000000000007.1.data"]
        );
        assert!(names.iter().all(|n| incarnation_of(n) == Some(7)));
        // A reader of the same files sees the same bytes, zeros around them, and zeros in a
        // stripe never created (chunk 5).
        let reader = StripedHome::new(layout, Arc::clone(&fs), dir.path(), 7, false, false);
        for h in [&home, &reader] {
            let mut all = vec![0xEEu8; (11 * layout.chunk_bytes) as usize];
            let mut done = 0;
            while done < all.len() {
                let n = h.read_at(&mut all[done..], done as u64).unwrap();
                assert!(n > 0);
                done += n;
            }
            let mut expected = vec![0u8; all.len()];
            expected[a_at as usize..a_at as usize + a.len()].copy_from_slice(&a);
            expected[b_at as usize..b_at as usize + b.len()].copy_from_slice(&b);
            assert!(all == expected);
        }
        assert_eq!(home.len().unwrap(), b_at + b.len() as u64);
        assert!(reader.write_all_at(&[1; 512], 0).is_err());
    }

    /// A file system that counts each file's `sync_data` calls.
    struct CountingFs {
        inner: Arc<crate::memory_fs::CrashFs>,
        syncs: Arc<Mutex<std::collections::BTreeMap<PathBuf, u32>>>,
    }

    struct CountingFile {
        inner: Arc<dyn StoreFile>,
        path: PathBuf,
        syncs: Arc<Mutex<std::collections::BTreeMap<PathBuf, u32>>>,
    }

    impl StoreFile for CountingFile {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            self.inner.read_at(buf, offset)
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.inner.write_all_at(buf, offset)
        }
        fn len(&self) -> io::Result<u64> {
            self.inner.len()
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> io::Result<()> {
            *self
                .syncs
                .lock()
                .unwrap()
                .entry(self.path.clone())
                .or_default() += 1;
            self.inner.sync_data()
        }
    }

    impl StoreFs for CountingFs {
        fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StoreFile>> {
            Ok(Arc::new(CountingFile {
                inner: self.inner.open(path, mode)?,
                path: path.to_path_buf(),
                syncs: Arc::clone(&self.syncs),
            }))
        }
        fn exists(&self, path: &Path) -> bool {
            self.inner.exists(path)
        }
        fn remove(&self, path: &Path) -> io::Result<()> {
            self.inner.remove(path)
        }
        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            self.inner.list(dir)
        }
        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            self.inner.create_dir_all(dir)
        }
        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            self.inner.read(path)
        }
        fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
            self.inner.write_atomic(path, bytes)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            self.inner.sync_dir(dir)
        }
    }

    #[test]
    fn a_sync_covers_the_stripes_written_or_cut_since_the_last_and_no_others() {
        let crash = crate::memory_fs::CrashFs::new();
        let syncs = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
        let fs: Arc<dyn StoreFs> = Arc::new(CountingFs {
            inner: Arc::clone(&crash),
            syncs: Arc::clone(&syncs),
        });
        let layout = HomeStripes {
            files: 4,
            chunk_bytes: 4096,
        };
        let dir = Path::new("/store/homes");
        fs.create_dir_all(dir).unwrap();
        let home = StripedHome::new(layout, Arc::clone(&fs), dir, 3, true, true);
        let counts = || -> Vec<u32> {
            let syncs = syncs.lock().unwrap();
            (0..4)
                .map(|k| syncs.get(&home.path(k)).copied().unwrap_or(0))
                .collect()
        };
        // Chunks 0 and 1 (one write across them) and chunk 7 (stripe 3).
        let a = pattern(4096, 1);
        home.write_all_at(&a, 2048).unwrap();
        let b = pattern(1024, 2);
        home.write_all_at(&b, 7 * 4096).unwrap();
        home.sync_data().unwrap();
        assert_eq!(counts(), [1, 1, 0, 1]);
        // Nothing written since: nothing to sync.
        home.sync_data().unwrap();
        assert_eq!(counts(), [1, 1, 0, 1]);
        // Chunk 5 (stripe 1) only.
        let c = pattern(512, 3);
        home.write_all_at(&c, 5 * 4096).unwrap();
        home.sync_data().unwrap();
        assert_eq!(counts(), [1, 2, 0, 1]);
        // What was synced survives a power cut; a write after the last sync need not.
        home.write_all_at(&pattern(512, 4), 4096 * 6).unwrap();
        crash.restart_after_power_loss();
        let reader = StripedHome::new(layout, Arc::clone(&fs), dir, 3, false, false);
        let mut all = vec![0u8; 8 * 4096];
        let mut done = 0;
        while done < all.len() {
            done += reader.read_at(&mut all[done..], done as u64).unwrap();
        }
        assert!(all[2048..2048 + a.len()] == a[..]);
        assert!(all[7 * 4096..7 * 4096 + b.len()] == b[..]);
        assert!(all[5 * 4096..5 * 4096 + c.len()] == c[..]);
        // Cutting the home short changes only the stripes that held bytes past the cut.
        let home = StripedHome::new(layout, Arc::clone(&fs), dir, 3, true, true);
        home.set_len(4096 + 100).unwrap();
        home.sync_data().unwrap();
        assert_eq!(counts(), [1, 3, 0, 2]);
    }

    #[test]
    fn a_layout_outside_what_this_build_reads_is_named() {
        assert!(HomeStripes::DEFAULT.check().is_ok());
        for (files, chunk_bytes, why) in [
            (1, 1 << 20, "1 stripe files"),
            (65, 1 << 20, "65 stripe files"),
            (8, 3000, "chunk of 3000 bytes"),
            (8, 2048, "chunk of 2048 bytes"),
            (8, 2 << 30, "chunk of 2147483648 bytes"),
        ] {
            let e = HomeStripes { files, chunk_bytes }.check().unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn only_home_file_names_name_an_incarnation() {
        assert_eq!(incarnation_of("0000000000000042.data"), Some(42));
        assert_eq!(incarnation_of("0000000000000042.7.data"), Some(42));
        assert_eq!(incarnation_of("0000000000000042.63.data"), Some(42));
        assert_eq!(incarnation_of("0000000000000042..data"), None);
        assert_eq!(incarnation_of("0000000000000042.x.data"), None);
        assert_eq!(incarnation_of("0000000000000042.tmp"), None);
        assert_eq!(incarnation_of("store.json"), None);
    }
}
