//! Files in memory behind the [`StoreFs`] seam: [`CrashFs`]. The simulator keeps its whole
//! world in one (no work directory, nothing on disk); crash tests make it die at a chosen write.
//! A file is sparse, in copy-on-write pages: a blob's home file written at a 100 GiB slot
//! offset holds only the pages written, and making a file durable shares its pages instead of
//! copying them.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::fs::{OpenMode, StoreFile, StoreFs};

/// Page of a sparse file: a store's writes are mostly replication records of a few KiB at
/// slot starts, so a page bigger than a record would be zeroed (and faulted in) for nothing.
const PAGE: u64 = 4 << 10;

/// A sparse byte string: pages never written read as zeros.
#[derive(Debug, Default, Clone)]
struct SparseBytes {
    len: u64,
    pages: BTreeMap<u64, Arc<Vec<u8>>>,
}

/// Each page `offset..offset + len` touches: (page, offset in the page, offset in the
/// caller's buffer, length).
fn spans(offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize, usize)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let at = offset + done as u64;
        let in_page = (at % PAGE) as usize;
        let n = (PAGE as usize - in_page).min(len - done);
        let span = (at / PAGE, in_page, done, n);
        done += n;
        Some(span)
    })
}

impl SparseBytes {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> usize {
        let n = (buf.len() as u64).min(self.len.saturating_sub(offset)) as usize;
        if n == 0 {
            return 0;
        }
        let pages = offset / PAGE..=(offset + n as u64 - 1) / PAGE;
        if pages.start() == pages.end() {
            // Within one page (a journal slot's head, a record header): one lookup.
            let within = (offset % PAGE) as usize;
            match self.pages.get(pages.start()) {
                Some(data) => buf[..n].copy_from_slice(&data[within..within + n]),
                None => buf[..n].fill(0),
            }
            return n;
        }
        // The pages lie scattered over the heap and a read's are mostly out of the caches (an
        // audit's records, a journal's slots): one load from each first, independent of one
        // another so their misses overlap, instead of one miss per page copied in turn.
        let touched = self
            .pages
            .range(pages.clone())
            .fold(0u8, |acc, (_, data)| acc ^ data[0]);
        std::hint::black_box(touched);
        let mut held = self.pages.range(pages).peekable();
        for (page, in_page, at, len) in spans(offset, n) {
            let out = &mut buf[at..at + len];
            match held.next_if(|(p, _)| **p == page) {
                Some((_, data)) => out.copy_from_slice(&data[in_page..in_page + len]),
                None => out.fill(0),
            }
        }
        n
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) {
        for (page, in_page, at, len) in spans(offset, buf.len()) {
            let part = &buf[at..at + len];
            if len == PAGE as usize {
                // A whole page replaces the one held (shared with a crash image or not),
                // copied in as it comes rather than zeroed or copied first.
                self.pages.insert(page, Arc::new(part.to_vec()));
                continue;
            }
            let data = self
                .pages
                .entry(page)
                .or_insert_with(|| Arc::new(vec![0; PAGE as usize]));
            Arc::make_mut(data)[in_page..in_page + len].copy_from_slice(part);
        }
        self.len = self.len.max(offset + buf.len() as u64);
    }

    /// Shrink or grow (with zeros) to `len`.
    fn set_len(&mut self, len: u64) {
        if len < self.len {
            self.pages.retain(|&page, _| page * PAGE < len);
            let tail = (len % PAGE) as usize;
            if let Some(last) = self.pages.get_mut(&(len / PAGE)).filter(|_| tail != 0) {
                Arc::make_mut(last)[tail..].fill(0);
            }
        }
        self.len = len;
    }

    fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.len as usize];
        self.read_at(&mut out, 0);
        out
    }

    fn from_slice(bytes: &[u8]) -> SparseBytes {
        let mut s = SparseBytes::default();
        s.write_at(bytes, 0);
        s
    }
}

/// An in-memory file system that crashes on purpose: after `writes_before_crash` writes, the
/// next write lands only its first `torn_bytes` bytes and every later call fails, like a
/// process killed mid-`pwrite`. [`CrashFs::restart`] brings it back with the files as left;
/// [`CrashFs::restart_after_power_loss`] as a power cut leaves them: every write not yet made
/// durable (`sync_data` for a file's bytes, `sync_dir` or `write_atomic` for its entry in the
/// folder) is gone, except the torn prefix of the fatal write, which reached the disk.
#[derive(Debug, Default)]
pub struct CrashFs {
    state: Mutex<CrashState>,
}

#[derive(Debug, Default)]
struct CrashState {
    files: BTreeMap<PathBuf, Arc<Mutex<CrashFileData>>>,
    writes_before_crash: Option<u64>,
    torn_bytes: usize,
    crashed: bool,
    writes: u64,
}

/// A file's bytes as the process sees them and as the disk holds them.
#[derive(Debug, Default, Clone)]
struct CrashFileData {
    live: SparseBytes,
    durable: SparseBytes,
    /// Its name survives a power cut (the folder was synced after it was created).
    entry_durable: bool,
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash: the process is gone")
}

struct CrashFile {
    fs: Arc<CrashFs>,
    data: Arc<Mutex<CrashFileData>>,
}

impl CrashFs {
    pub fn new() -> Arc<CrashFs> {
        Arc::new(CrashFs::default())
    }

    /// An independent copy of every file as it stands (live and durable bytes), to crash one
    /// history at many points without replaying what led up to it.
    pub fn fork(&self) -> Arc<CrashFs> {
        let s = self.state.lock().expect("not poisoned");
        let files = s
            .files
            .iter()
            .map(|(p, f)| {
                let copy = f.lock().expect("not poisoned").clone();
                (p.clone(), Arc::new(Mutex::new(copy)))
            })
            .collect();
        Arc::new(CrashFs {
            state: Mutex::new(CrashState {
                files,
                ..CrashState::default()
            }),
        })
    }

    /// Crash at the write after `writes` more successful ones, keeping `torn_bytes` of it.
    pub fn crash_after(&self, writes: u64, torn_bytes: usize) {
        let mut s = self.state.lock().expect("not poisoned");
        s.writes_before_crash = Some(writes);
        s.torn_bytes = torn_bytes;
    }

    /// Writes done since the last restart.
    pub fn writes(&self) -> u64 {
        self.state.lock().expect("not poisoned").writes
    }

    pub fn has_crashed(&self) -> bool {
        self.state.lock().expect("not poisoned").crashed
    }

    /// Come back up after a crash with whatever the files hold.
    pub fn restart(&self) {
        let mut s = self.state.lock().expect("not poisoned");
        s.crashed = false;
        s.writes_before_crash = None;
        s.writes = 0;
    }

    /// Come back up after a power cut: only what was made durable is there (and the torn
    /// prefix of the write the cut interrupted).
    pub fn restart_after_power_loss(&self) {
        let mut s = self.state.lock().expect("not poisoned");
        s.files
            .retain(|_, f| f.lock().expect("not poisoned").entry_durable);
        for f in s.files.values() {
            let mut f = f.lock().expect("not poisoned");
            f.live = f.durable.clone();
        }
        s.crashed = false;
        s.writes_before_crash = None;
        s.writes = 0;
    }

    fn check(&self) -> io::Result<()> {
        if self.state.lock().expect("not poisoned").crashed {
            return Err(crashed());
        }
        Ok(())
    }

    /// Account for one write; `Some(n)`: this write is the fatal one, keep `n` bytes.
    fn count_write(&self, len: usize) -> io::Result<Option<usize>> {
        let mut s = self.state.lock().expect("not poisoned");
        if s.crashed {
            return Err(crashed());
        }
        s.writes += 1;
        if s.writes_before_crash.is_some_and(|n| s.writes > n) {
            s.crashed = true;
            return Ok(Some(s.torn_bytes.min(len)));
        }
        Ok(None)
    }
}

impl StoreFile for CrashFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.fs.check()?;
        Ok(self
            .data
            .lock()
            .expect("not poisoned")
            .live
            .read_at(buf, offset))
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let keep = self.fs.count_write(buf.len())?;
        let n = keep.unwrap_or(buf.len());
        let mut data = self.data.lock().expect("not poisoned");
        data.live.write_at(&buf[..n], offset);
        match keep {
            Some(_) => {
                // The interrupted write's prefix reached the disk, whatever else did not.
                data.durable.write_at(&buf[..n], offset);
                Err(crashed())
            }
            None => Ok(()),
        }
    }
    fn len(&self) -> io::Result<u64> {
        self.fs.check()?;
        Ok(self.data.lock().expect("not poisoned").live.len)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs.check()?;
        self.data.lock().expect("not poisoned").live.set_len(len);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.fs.check()?;
        let mut data = self.data.lock().expect("not poisoned");
        data.durable = data.live.clone();
        Ok(())
    }
    /// Memory: a read never waits.
    fn read_at_if_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<Option<usize>> {
        self.read_at(buf, offset).map(Some)
    }
}

/// `CrashFs` is used through an `Arc` so its files can reach back to it.
impl StoreFs for Arc<CrashFs> {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StoreFile>> {
        self.check()?;
        let mut s = self.state.lock().expect("not poisoned");
        let data = match s.files.get(path) {
            Some(d) => Arc::clone(d),
            None if mode == OpenMode::Create => {
                let d = Arc::new(Mutex::new(CrashFileData::default()));
                s.files.insert(path.to_path_buf(), Arc::clone(&d));
                d
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} not found", path.display()),
                ))
            }
        };
        Ok(Arc::new(CrashFile {
            fs: Arc::clone(self),
            data,
        }))
    }
    fn exists(&self, path: &Path) -> bool {
        self.state
            .lock()
            .expect("not poisoned")
            .files
            .contains_key(path)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.check()?;
        self.state.lock().expect("not poisoned").files.remove(path);
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.check()?;
        let s = self.state.lock().expect("not poisoned");
        Ok(s.files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
    fn create_dir_all(&self, _: &Path) -> io::Result<()> {
        self.check()
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.check()?;
        let s = self.state.lock().expect("not poisoned");
        match s.files.get(path) {
            Some(d) => Ok(d.lock().expect("not poisoned").live.to_vec()),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} not found", path.display()),
            )),
        }
    }
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        // Written, synced and renamed over the old one, then the folder synced: the crash
        // happens before it or after it, never inside.
        if self.count_write(bytes.len())?.is_some() {
            return Err(crashed());
        }
        let file = CrashFileData {
            live: SparseBytes::from_slice(bytes),
            durable: SparseBytes::from_slice(bytes),
            entry_durable: true,
        };
        self.state
            .lock()
            .expect("not poisoned")
            .files
            .insert(path.to_path_buf(), Arc::new(Mutex::new(file)));
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check()?;
        let s = self.state.lock().expect("not poisoned");
        for (path, f) in &s.files {
            if path.parent() == Some(dir) {
                f.lock().expect("not poisoned").entry_durable = true;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_bytes_read_back_what_was_written_and_zeros_elsewhere() {
        let mut s = SparseBytes::default();
        let far = 100 << 30;
        s.write_at(&[7; 100_000], far - 50_000);
        assert_eq!(s.len, far + 50_000);
        let touched = (far + 50_000).div_ceil(PAGE) - (far - 50_000) / PAGE;
        assert_eq!(
            s.pages.len() as u64,
            touched,
            "only the pages written are held"
        );
        let mut buf = vec![1u8; 200_000];
        assert_eq!(s.read_at(&mut buf, far - 100_000), 150_000);
        assert!(buf[..50_000].iter().all(|&b| b == 0));
        assert!(buf[50_000..150_000].iter().all(|&b| b == 7));
        // Shrinking drops the tail; growing again reads zeros there.
        s.set_len(far - 49_999);
        s.set_len(far);
        let mut two = [9u8; 2];
        s.read_at(&mut two, far - 50_000);
        assert_eq!(two, [7, 0]);
        // Reads within one page: of a page held, and of one never written.
        let mut ten = [9u8; 10];
        s.read_at(&mut ten, far - 50_005);
        assert_eq!(ten, [0, 0, 0, 0, 0, 7, 0, 0, 0, 0]);
        s.read_at(&mut ten, 4096 * 3 + 100);
        assert_eq!(ten, [0; 10]);
    }

    #[test]
    fn whole_page_writes_replace_the_page_and_leave_a_copy_alone() {
        let mut live = SparseBytes::default();
        live.write_at(&[1; 3 * PAGE as usize], 0);
        let durable = live.clone();
        // A whole page, a page and a half (one whole page, one part), and a part of a page.
        live.write_at(&[2; PAGE as usize], PAGE);
        live.write_at(&[3; PAGE as usize + 100], 2 * PAGE);
        live.write_at(&[4; 10], 5);
        let bytes = live.to_vec();
        assert_eq!(bytes.len(), 3 * PAGE as usize + 100);
        assert!(bytes[..5].iter().all(|&b| b == 1));
        assert!(bytes[5..15].iter().all(|&b| b == 4));
        assert!(bytes[15..PAGE as usize].iter().all(|&b| b == 1));
        assert!(bytes[PAGE as usize..2 * PAGE as usize]
            .iter()
            .all(|&b| b == 2));
        assert!(bytes[2 * PAGE as usize..].iter().all(|&b| b == 3));
        assert_eq!(durable.to_vec(), vec![1; 3 * PAGE as usize]);
    }

    #[test]
    fn a_durable_copy_does_not_see_later_writes() {
        let mut live = SparseBytes::from_slice(&[1; 10]);
        let durable = live.clone();
        live.write_at(&[2], 3);
        assert_eq!(durable.to_vec(), vec![1; 10]);
        assert_eq!(live.to_vec()[3], 2);
    }
}
