//! A blob incarnation's home bytes striped over several sparse files (stores of format 2):
//! 1 MiB chunk *c* of the blob lives in `homes/<incarnation>.<c mod 8>.data`, at its own blob
//! offset. A file's buffered writes are serialized by the kernel (its inode lock: on ext4 two
//! threads write 64 KiB records into one file no faster than one), so writers of different
//! chunks copy into different files side by side. Format-1 stores keep one file per
//! incarnation (`homes/<incarnation>.data`); `crate::emulator` chooses.
//!
//! Bytes no stripe holds (a stripe never created, or past its end) read as zeros.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::fs::{OpenMode, StoreFile, StoreFs};

/// Files a striped home is spread over.
pub const STRIPES: u64 = 8;
/// Bytes of the blob in a row that one stripe holds.
pub const STRIPE_CHUNK: u64 = 1 << 20;

/// The incarnation a home file's name belongs to: `<incarnation>.data` (one file) or
/// `<incarnation>.<stripe>.data`; `None` for any other name.
pub fn incarnation_of(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".data")?;
    let (incarnation, stripe) = match stem.split_once('.') {
        Some((i, s)) => (i, Some(s)),
        None => (stem, None),
    };
    if stripe.is_some_and(|s| s.parse::<u64>().map_or(true, |s| s >= STRIPES)) {
        return None;
    }
    incarnation.parse().ok()
}

/// One incarnation's striped home: its stripe files, opened (or created) on first use.
pub struct StripedHome {
    fs: Arc<dyn StoreFs>,
    dir: PathBuf,
    incarnation: u64,
    /// A writer creates stripes on first write; a reader only opens the ones there.
    writable: bool,
    /// Make a newly created stripe's name durable (`Durability::Power`).
    sync_created: bool,
    stripes: Mutex<Vec<Option<Arc<dyn StoreFile>>>>,
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
        fs: Arc<dyn StoreFs>,
        dir: &Path,
        incarnation: u64,
        writable: bool,
        sync_created: bool,
    ) -> StripedHome {
        StripedHome {
            fs,
            dir: dir.to_path_buf(),
            incarnation,
            writable,
            sync_created,
            stripes: Mutex::new(vec![None; STRIPES as usize]),
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

    /// The stripes opened so far.
    fn opened(&self) -> Vec<Arc<dyn StoreFile>> {
        let stripes = self.stripes.lock().unwrap_or_else(|p| p.into_inner());
        stripes.iter().flatten().cloned().collect()
    }
}

/// The stripe holding blob offset `offset`, and how many bytes from there it holds in a row.
fn chunk_at(offset: u64) -> (u64, u64) {
    let chunk = offset / STRIPE_CHUNK;
    (chunk % STRIPES, (chunk + 1) * STRIPE_CHUNK - offset)
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

impl StoreFile for StripedHome {
    /// Reads up to the end of the chunk at `offset`; bytes its stripe does not hold are zeros
    /// (never a 0-byte read, which would mean the end of the home).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let (stripe, in_row) = chunk_at(offset);
        let n = buf.len().min(usize::try_from(in_row).unwrap_or(usize::MAX));
        let buf = &mut buf[..n];
        let read = match self.stripe(stripe)? {
            Some(file) => file.read_at(buf, offset)?,
            None => 0,
        };
        if read == 0 {
            buf.fill(0);
            return Ok(n);
        }
        Ok(read)
    }

    fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let (stripe, in_row) = chunk_at(offset);
            let n = buf.len().min(usize::try_from(in_row).unwrap_or(usize::MAX));
            let file = self
                .stripe(stripe)?
                .ok_or_else(|| io::Error::other("a read-only home is not written"))?;
            file.write_all_at(&buf[..n], offset)?;
            buf = &buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    /// The furthest end of any stripe.
    fn len(&self) -> io::Result<u64> {
        let mut len = 0;
        for stripe in 0..STRIPES {
            if let Some(file) = self.stripe_if_there(stripe)? {
                len = len.max(file.len()?);
            }
        }
        Ok(len)
    }

    /// Cut every stripe longer than `len` to it (none is made longer).
    fn set_len(&self, len: u64) -> io::Result<()> {
        for stripe in 0..STRIPES {
            if let Some(file) = self.stripe_if_there(stripe)? {
                if file.len()? > len {
                    file.set_len(len)?;
                }
            }
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.opened().iter().try_for_each(|f| f.sync_data())
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
        let home = StripedHome::new(Arc::clone(&fs), dir.path(), 7, true, false);
        // Across the end of chunk 0 into chunk 1, and one in chunk 9 (stripe 1 again).
        let a = pattern(3 * 4096, 1);
        let a_at = STRIPE_CHUNK - 4096;
        home.write_all_at(&a, a_at).unwrap();
        let b = pattern(8192, 2);
        let b_at = 9 * STRIPE_CHUNK + 512;
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
        let reader = StripedHome::new(Arc::clone(&fs), dir.path(), 7, false, false);
        for h in [&home, &reader] {
            let mut all = vec![0xEEu8; (11 * STRIPE_CHUNK) as usize];
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

    #[test]
    fn only_home_file_names_name_an_incarnation() {
        assert_eq!(incarnation_of("0000000000000042.data"), Some(42));
        assert_eq!(incarnation_of("0000000000000042.7.data"), Some(42));
        assert_eq!(incarnation_of("0000000000000042.8.data"), None);
        assert_eq!(incarnation_of("0000000000000042.x.data"), None);
        assert_eq!(incarnation_of("0000000000000042.tmp"), None);
        assert_eq!(incarnation_of("store.json"), None);
    }
}
