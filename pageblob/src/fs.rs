//! The emulator's file-system seam: everything it stores goes through [`StoreFs`], so tests can
//! swap the real file system for [`CrashFs`], which dies at a chosen write (leaving that write
//! torn) the way a killed process would.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One open file.
pub trait StoreFile: Send + Sync {
    /// Read up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn sync_data(&self) -> io::Result<()>;

    /// Fill `buf` exactly.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the file",
                ));
            }
            done += n;
        }
        Ok(())
    }
}

/// How a store file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only (a reader of the store; works on read-only media).
    Read,
    /// Read and write an existing file.
    Write,
    /// Read and write, creating the file when it is missing.
    Create,
}

/// Files and folders of a store.
pub trait StoreFs: Send + Sync {
    /// Open a file as `mode` says.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StoreFile>>;
    fn exists(&self, path: &Path) -> bool;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// File names in a folder, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Replace `path` with `bytes` so that a crash leaves the old or the new content.
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Make the folder's entries (files created, removed or renamed in it) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl StoreFile for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len)
    }
    fn sync_data(&self) -> io::Result<()> {
        std::fs::File::sync_data(self)
    }
}

impl StoreFs for RealFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StoreFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(mode != OpenMode::Read)
            .create(mode == OpenMode::Create)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(f))
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        let f = std::fs::File::create(&tmp)?;
        FileExt::write_all_at(&f, bytes, 0)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        match path.parent() {
            Some(parent) => self.sync_dir(parent),
            None => Ok(()),
        }
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
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
    live: Vec<u8>,
    durable: Vec<u8>,
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

/// Write `buf` at `offset` into `bytes`, growing it with zeros.
fn write_into(bytes: &mut Vec<u8>, buf: &[u8], offset: usize) {
    let end = offset + buf.len();
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[offset..end].copy_from_slice(buf);
}

impl StoreFile for CrashFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.fs.check()?;
        let data = self.data.lock().expect("not poisoned");
        let start = (offset as usize).min(data.live.len());
        let n = buf.len().min(data.live.len() - start);
        buf[..n].copy_from_slice(&data.live[start..start + n]);
        Ok(n)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let keep = self.fs.count_write(buf.len())?;
        let n = keep.unwrap_or(buf.len());
        let mut data = self.data.lock().expect("not poisoned");
        write_into(&mut data.live, &buf[..n], offset as usize);
        match keep {
            Some(_) => {
                // The interrupted write's prefix reached the disk, whatever else did not.
                write_into(&mut data.durable, &buf[..n], offset as usize);
                Err(crashed())
            }
            None => Ok(()),
        }
    }
    fn len(&self) -> io::Result<u64> {
        self.fs.check()?;
        Ok(self.data.lock().expect("not poisoned").live.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs.check()?;
        self.data
            .lock()
            .expect("not poisoned")
            .live
            .resize(len as usize, 0);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        self.fs.check()?;
        let mut data = self.data.lock().expect("not poisoned");
        data.durable = data.live.clone();
        Ok(())
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
            Some(d) => Ok(d.lock().expect("not poisoned").live.clone()),
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
            live: bytes.to_vec(),
            durable: bytes.to_vec(),
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
