//! The file-system seam: everything a store (and a change tracker) keeps goes through
//! [`StoreFs`]. [`RealFs`] is the operating system's; `crate::memory_fs::CrashFs` keeps files in
//! memory (the simulator's world, and crash tests that kill it at a chosen write).

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

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

    /// [`read_at`](Self::read_at) only if it need not wait for the device: `None` where some
    /// of the bytes are not in memory (the page cache), and then nothing is promised of `buf`.
    /// A server's async worker reads this way and hands only what would wait to a blocking
    /// thread. By default `None`: no read is known not to wait.
    fn read_at_if_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<Option<usize>> {
        let _ = (buf, offset);
        Ok(None)
    }

    /// [`read_exact_at`](Self::read_exact_at) only if it need not wait for the device
    /// ([`read_at_if_cached`](Self::read_at_if_cached)): `false` where it would.
    fn read_exact_at_if_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        let mut done = 0;
        while done < buf.len() {
            match self.read_at_if_cached(&mut buf[done..], offset + done as u64)? {
                None => return Ok(false),
                Some(0) => return Err(past_the_end()),
                Some(n) => done += n,
            }
        }
        Ok(true)
    }

    /// Fill `buf` exactly.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                return Err(past_the_end());
            }
            done += n;
        }
        Ok(())
    }
}

fn past_the_end() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "read past the end of the file",
    )
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
    /// `preadv2` with `RWF_NOWAIT` until `buf` is full or the file ends: the kernel copies
    /// what the page cache holds and says `EAGAIN` where it would have to read the device.
    /// A file system that cannot read that way (`EOPNOTSUPP`) is one whose reads may wait.
    fn read_at_if_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<Option<usize>> {
        use rustix::io::{Errno, ReadWriteFlags};
        let mut done = 0;
        while done < buf.len() {
            let mut part = [io::IoSliceMut::new(&mut buf[done..])];
            match rustix::io::preadv2(
                self,
                &mut part,
                offset + done as u64,
                ReadWriteFlags::NOWAIT,
            ) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN | Errno::OPNOTSUPP) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(done))
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
            // A bare file name lives in the current folder.
            Some(parent) if parent.as_os_str().is_empty() => self.sync_dir(Path::new(".")),
            Some(parent) => self.sync_dir(parent),
            None => Ok(()),
        }
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

/// How a [`HookedFs`] file's write goes: the hook gets the file's path, the bytes, their
/// offset and the real write, and calls the real write as it likes (tests keep a copy of every
/// write, or pause one half way).
pub type WriteHook = dyn Fn(&Path, &[u8], u64, &dyn Fn(&[u8], u64) -> io::Result<()>) -> io::Result<()>
    + Send
    + Sync;

/// The operating system's file system with every positioned file write passed through a hook
/// (`write_atomic` goes straight through).
#[derive(Clone)]
pub struct HookedFs(pub Arc<WriteHook>);

impl std::fmt::Debug for HookedFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookedFs")
    }
}

struct HookedFile {
    file: Arc<dyn StoreFile>,
    path: std::path::PathBuf,
    hook: Arc<WriteHook>,
}

impl StoreFile for HookedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (self.hook)(&self.path, buf, offset, &|b, o| {
            self.file.write_all_at(b, o)
        })
    }
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn read_at_if_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<Option<usize>> {
        self.file.read_at_if_cached(buf, offset)
    }
}

impl StoreFs for HookedFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StoreFile>> {
        Ok(Arc::new(HookedFile {
            file: RealFs.open(path, mode)?,
            path: path.to_path_buf(),
            hook: Arc::clone(&self.0),
        }))
    }
    fn exists(&self, path: &Path) -> bool {
        RealFs.exists(path)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        RealFs.remove(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        RealFs.list(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        RealFs.create_dir_all(dir)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        RealFs.read(path)
    }
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        RealFs.write_atomic(path, bytes)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        RealFs.sync_dir(dir)
    }
}

/// Every file under `dir` dropped from the page cache (`POSIX_FADV_DONTNEED`; written-back
/// pages only, so a caller syncs first): for tests of reads that would wait for the device.
/// `false` where the file system keeps its files in memory (tmpfs, ramfs): nothing is dropped,
/// and its reads never wait.
#[cfg(any(test, feature = "testing"))]
pub fn drop_from_page_cache(dir: &Path) -> io::Result<bool> {
    const TMPFS: i64 = 0x0102_1994;
    const RAMFS: i64 = 0x8584_58f6;
    let kind = rustix::fs::statfs(dir)?.f_type as i64;
    if kind == TMPFS || kind == RAMFS {
        return Ok(false);
    }
    let mut paths = vec![dir.to_path_buf()];
    while let Some(path) = paths.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                paths.push(entry?.path());
            }
        } else {
            let file = std::fs::File::open(&path)?;
            rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file's bytes in the page cache are read without waiting, whole, up to the end; once
    /// the kernel has dropped them (written back, then `POSIX_FADV_DONTNEED`), the read says
    /// it would wait — on a file system that reads this way at all (one that cannot says so
    /// every time, and its reads go to a thread that may wait).
    #[test]
    fn a_read_from_the_page_cache_is_made_and_one_from_the_device_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = RealFs
            .open(&dir.path().join("f"), OpenMode::Create)
            .unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        file.write_all_at(&data, 0).unwrap();
        let mut buf = vec![0u8; 200_000];
        match file.read_at_if_cached(&mut buf, 50_000).unwrap() {
            None => return, // this file system cannot tell: nothing more to check
            Some(n) => assert_eq!((n, &buf[..n]), (200_000, &data[50_000..250_000])),
        }
        // Past the end: what there is.
        assert_eq!(
            file.read_at_if_cached(&mut buf, 250_000).unwrap(),
            Some(50_000)
        );
        assert_eq!(&buf[..50_000], &data[250_000..]);
        assert_eq!(file.read_at_if_cached(&mut buf, 400_000).unwrap(), Some(0));
        // Written back and dropped from the cache: a read would wait for the device (on a file
        // system that keeps files in memory, nothing is dropped and no read waits).
        file.sync_data().unwrap();
        let dropped = drop_from_page_cache(dir.path()).unwrap();
        let expected = if dropped { None } else { Some(200_000) };
        assert_eq!(file.read_at_if_cached(&mut buf, 0).unwrap(), expected);
        // A read that may wait brings the bytes back.
        assert_eq!(file.read_at(&mut buf, 0).unwrap(), 200_000);
        assert_eq!(file.read_at_if_cached(&mut buf, 0).unwrap(), Some(200_000));
        assert_eq!(&buf[..], &data[..200_000]);
    }
}
