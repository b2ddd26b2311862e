//! The I/O seam: everything the reader needs from storage is [`ReadAt`]. Parsing never
//! touches a file directly, so fuzzers and tests feed bytes, and the CLI feeds a memory map.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// Positional, exact reads from something with a fixed length.
pub trait ReadAt: Send + Sync {
    /// Fill all of `buf` from `offset`; reading past [`ReadAt::len`] is an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Length in bytes.
    fn len(&self) -> u64;
    /// Fill `buf` with `count` pieces of `buf.len() / count` bytes each, piece `i` read from
    /// `offset + i * stride` (e.g. the first bytes of every sector of a region): one call, so
    /// a source can serve them in one pass. Reading past [`ReadAt::len`] is an error.
    fn read_strided(
        &self,
        offset: u64,
        stride: u64,
        count: usize,
        buf: &mut [u8],
    ) -> io::Result<()> {
        read_piece_by_piece(self, offset, stride, count, buf)
    }
    /// True when empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// When `[offset, offset+len)` is stored verbatim in a file, that file and the offset in
    /// it: lets callers copy without passing the bytes through memory (copy_file_range).
    fn file_range(&self, _offset: u64, _len: u64) -> Option<(&File, u64)> {
        None
    }
    /// When `[offset, offset+len)` is in memory already (a map), the bytes themselves.
    fn mapped(&self, _offset: u64, _len: u64) -> Option<&[u8]> {
        None
    }
    /// The caller is done with `[offset, offset+len)` for now: a memory map drops those pages
    /// from the process (they stay cached and read back the same), so a pass over a big file
    /// does not grow the resident set. A hint; other sources ignore it.
    fn release(&self, _offset: u64, _len: u64) {}
    /// Whether the bytes [`ReadAt::mapped`] handed out so far were really the file's: an
    /// error once the file shrank under its map (the pages past its new end then read as
    /// zeros, see [`crate::map_guard`]). Callers check after using mapped bytes and before
    /// trusting what they computed from them. Sources without a map always pass.
    fn check_mapped(&self) -> io::Result<()> {
        Ok(())
    }
}

fn past_end(offset: u64, len: usize, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("read of {len} bytes at {offset:#x} ends past the end ({size} bytes)"),
    )
}

/// Bounds-checked copy out of an in-memory image.
fn read_slice(bytes: &[u8], offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let end = offset.checked_add(buf.len() as u64);
    match end {
        Some(end) if end <= bytes.len() as u64 => {
            buf.copy_from_slice(&bytes[offset as usize..end as usize]);
            Ok(())
        }
        _ => Err(past_end(offset, buf.len(), bytes.len() as u64)),
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        read_slice(self, offset, buf)
    }
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        read_slice(self, offset, buf)
    }
    fn len(&self) -> u64 {
        Vec::len(self) as u64
    }
}

/// [`ReadAt::read_strided`] with one [`ReadAt::read_at`] per piece.
pub(crate) fn read_piece_by_piece<R: ReadAt + ?Sized>(
    source: &R,
    offset: u64,
    stride: u64,
    count: usize,
    buf: &mut [u8],
) -> io::Result<()> {
    let len = strided_piece_len(buf.len(), count)?;
    for (i, piece) in buf.chunks_exact_mut(len).enumerate() {
        let at = (i as u64)
            .checked_mul(stride)
            .and_then(|span| offset.checked_add(span))
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "a strided read past 2^64")
            })?;
        source.read_at(at, piece)?;
    }
    Ok(())
}

/// Where the last of `count` pieces of `len` bytes, `stride` apart from `offset`, ends (`None`
/// past 2^64).
pub(crate) fn strided_end(offset: u64, stride: u64, count: usize, len: usize) -> Option<u64> {
    (count as u64)
        .checked_sub(1)?
        .checked_mul(stride)
        .and_then(|span| offset.checked_add(span))
        .and_then(|last| last.checked_add(len as u64))
}

/// The length of each of `count` equal pieces of a `buf_len`-byte buffer, for
/// [`ReadAt::read_strided`] (an error when it does not divide evenly).
pub(crate) fn strided_piece_len(buf_len: usize, count: usize) -> io::Result<usize> {
    if count == 0 || buf_len == 0 || buf_len % count != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a strided read of {buf_len} bytes in {count} pieces"),
        ));
    }
    Ok(buf_len / count)
}

/// `ReadAt` for a pointer to a source: every method goes to the source.
macro_rules! forward_read_at {
    ($($pointer:ident),*) => {$(
        impl<T: ReadAt + ?Sized> ReadAt for $pointer<T> {
            fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
                (**self).read_at(offset, buf)
            }
            fn read_strided(
                &self,
                offset: u64,
                stride: u64,
                count: usize,
                buf: &mut [u8],
            ) -> io::Result<()> {
                (**self).read_strided(offset, stride, count, buf)
            }
            fn len(&self) -> u64 {
                (**self).len()
            }
            fn file_range(&self, offset: u64, len: u64) -> Option<(&File, u64)> {
                (**self).file_range(offset, len)
            }
            fn mapped(&self, offset: u64, len: u64) -> Option<&[u8]> {
                (**self).mapped(offset, len)
            }
            fn release(&self, offset: u64, len: u64) {
                (**self).release(offset, len)
            }
            fn check_mapped(&self) -> io::Result<()> {
                (**self).check_mapped()
            }
        }
    )*};
}

forward_read_at!(Arc, Box);

/// A read-only file mapped into memory; reads are bounds-checked copies out of the map.
///
/// If another process shrinks the file while it is mapped, the pages past the new end would
/// fault (`SIGBUS`) and end the process; here they read as zeros instead
/// ([`crate::map_guard`]), every `read_at` that touched them fails, and
/// [`ReadAt::check_mapped`] reports it for bytes handed out by `mapped`.
#[derive(Debug)]
pub struct MappedFile {
    file: File,
    /// Declared before `map`: unwatched before the map goes away.
    watch: Option<crate::map_guard::Watch>,
    map: Option<memmap2::Mmap>,
}

/// The length of a regular file, or the size of a block device (whose metadata says 0).
pub fn file_or_device_len(file: &File) -> io::Result<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file.metadata()?.file_type().is_block_device() {
            // The end of a block device is its size (what BLKGETSIZE64 answers).
            return io::Seek::seek(&mut &*file, io::SeekFrom::End(0));
        }
    }
    Ok(file.metadata()?.len())
}

/// Refuse, before opening it, a path that is neither a regular file nor a block device: a
/// FIFO would block the open forever, a character device (`/dev/null`, `/dev/zero`) has no
/// size, a directory no bytes.
pub fn check_file_or_device(path: &Path) -> io::Result<()> {
    let kind = std::fs::metadata(path)?.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_block_device() {
            return Ok(());
        }
        let what = if kind.is_fifo() {
            Some("a FIFO")
        } else if kind.is_socket() {
            Some("a socket")
        } else if kind.is_char_device() {
            Some("a character device")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what}, not a regular file or block device"),
            ));
        }
    }
    if kind.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a directory, not a regular file or block device",
        ));
    }
    Ok(())
}

impl MappedFile {
    /// Map `path` (a regular file or a block device) read-only. An empty file is allowed (it
    /// maps nothing); anything else is refused before it is opened
    /// ([`check_file_or_device`]).
    pub fn open(path: &Path) -> io::Result<MappedFile> {
        check_file_or_device(path)?;
        let file = File::open(path)?;
        let len = file_or_device_len(&file)?;
        if len == 0 {
            return Ok(MappedFile {
                file,
                watch: None,
                map: None,
            });
        }
        // SAFETY: the map is read-only and we never hand out references that outlive a read.
        // If another process truncates the file underneath us, the watch turns the faults
        // into zero pages that `check_mapped` reports (see `map_guard`).
        let map = unsafe { memmap2::MmapOptions::new().len(len as usize).map(&file)? };
        #[cfg(unix)]
        {
            let _ = map.advise(memmap2::Advice::Sequential);
        }
        Ok(MappedFile {
            file,
            watch: crate::map_guard::watch(map.as_ptr(), map.len()),
            map: Some(map),
        })
    }

    /// An error when the file is now shorter than its map, or a fault found it so.
    fn check_length(&self) -> io::Result<()> {
        let mapped = self.len();
        let shrank = self.watch.as_ref().is_some_and(|w| w.shrank());
        let now = file_or_device_len(&self.file)?;
        if shrank || now < mapped {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the file shrank while it was being read: {mapped} bytes when opened, \
                     {now} now (truncated by another process?)"
                ),
            ));
        }
        Ok(())
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

fn within(offset: u64, len: u64, size: u64) -> bool {
    offset.checked_add(len).is_some_and(|end| end <= size)
}

impl ReadAt for MappedFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        read_slice(self.bytes(), offset, buf)?;
        if self.watch.as_ref().is_some_and(|w| w.shrank()) {
            return self.check_length();
        }
        Ok(())
    }
    fn len(&self) -> u64 {
        self.bytes().len() as u64
    }
    fn file_range(&self, offset: u64, len: u64) -> Option<(&File, u64)> {
        within(offset, len, self.len()).then_some((&self.file, offset))
    }
    fn mapped(&self, offset: u64, len: u64) -> Option<&[u8]> {
        within(offset, len, self.len())
            .then(|| &self.bytes()[offset as usize..(offset + len) as usize])
    }
    fn check_mapped(&self) -> io::Result<()> {
        self.check_length()
    }
    #[cfg(unix)]
    fn release(&self, offset: u64, len: u64) {
        let (Some(map), true) = (&self.map, within(offset, len, self.len())) else {
            return;
        };
        // SAFETY: a shared, read-only map of a file: MADV_DONTNEED only unmaps the pages, and
        // the next access faults the same file bytes back in, so slices still held over the
        // range keep reading what they read before (memmap2 marks it unchecked because on
        // private or anonymous maps the bytes would change).
        let _ = unsafe {
            map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                offset as usize,
                len as usize,
            )
        };
    }
}

/// A file read with `pread`; for callers that must not map (other systems than Linux, where a
/// shrinking mapped file still faults, or many files open at once).
#[derive(Debug)]
pub struct PositionalFile {
    file: File,
    len: u64,
}

impl PositionalFile {
    pub fn open(path: &Path) -> io::Result<PositionalFile> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(PositionalFile { file, len })
    }
}

impl ReadAt for PositionalFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.len => {}
            _ => return Err(past_end(offset, buf.len(), self.len)),
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            self.file.read_exact_at(buf, offset)
        }
        #[cfg(windows)]
        {
            use std::os::windows::fs::FileExt;
            let mut done = 0;
            while done < buf.len() {
                let n = self
                    .file
                    .seek_read(&mut buf[done..], offset + done as u64)?;
                if n == 0 {
                    return Err(past_end(offset, buf.len(), self.len));
                }
                done += n;
            }
            Ok(())
        }
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn file_range(&self, offset: u64, len: u64) -> Option<(&File, u64)> {
        within(offset, len, self.len).then_some((&self.file, offset))
    }
}

/// The write side of the I/O seam: what the VHDX writer needs from a file. Reads (through
/// [`ReadAt`]) see every write made so far; `flush` makes them durable.
pub trait WriteAt: ReadAt {
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Make every write so far durable (`fdatasync` for files).
    fn flush(&self) -> io::Result<()>;
    /// Grow (or shrink) the file; new bytes read as zeros.
    fn set_len(&self, len: u64) -> io::Result<()>;
}

impl<T: WriteAt + ?Sized> WriteAt for Arc<T> {
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        (**self).write_at(offset, data)
    }
    fn flush(&self) -> io::Result<()> {
        (**self).flush()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        (**self).set_len(len)
    }
}

/// A file opened for reading and writing with positional I/O.
#[derive(Debug)]
pub struct ReadWriteFile {
    file: File,
    len: std::sync::atomic::AtomicU64,
}

impl ReadWriteFile {
    /// Open an existing file for writing.
    pub fn open(path: &Path) -> io::Result<ReadWriteFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let len = file.metadata()?.len();
        Ok(ReadWriteFile {
            file,
            len: len.into(),
        })
    }

    /// Create a new file (an existing one is refused).
    pub fn create_new(path: &Path) -> io::Result<ReadWriteFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(ReadWriteFile {
            file,
            len: 0.into(),
        })
    }
}

impl ReadAt for ReadWriteFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let len = ReadAt::len(self);
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= len => {}
            _ => return Err(past_end(offset, buf.len(), len)),
        }
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }
    fn len(&self) -> u64 {
        self.len.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl WriteAt for ReadWriteFile {
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.file, data, offset)?;
        self.len.fetch_max(
            offset + data.len() as u64,
            std::sync::atomic::Ordering::AcqRel,
        );
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.len.store(len, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}

/// A sparse file in memory (the simulator's VM disks, tests): 4 KiB pages held only once
/// something other than zeros is written to them, so a disk costs what was written, like a
/// sparse file on disk. Holes read as zeros.
#[derive(Debug, Default)]
pub struct MemoryFile {
    inner: std::sync::RwLock<SparsePages>,
}

#[derive(Debug, Default)]
struct SparsePages {
    len: u64,
    pages: PageTable,
}

const MEMORY_PAGE: u64 = 4 << 10;
/// Pages per [`PageTable`] group (2 MiB of file).
const GROUP_PAGES: usize = 512;

/// The pages that hold data, by page number: groups of [`GROUP_PAGES`] slots in an ordered
/// map. A lookup is one search among the groups (a 1 GiB file has 512) and an index; the pages
/// of a range are adjacent slots, so a walk over them reads no map nodes page by page.
#[derive(Debug, Default)]
struct PageTable {
    groups: std::collections::BTreeMap<u64, PageGroup>,
    held: u64,
}

/// The [`GROUP_PAGES`] slots of one group: a page's bytes, or `None` for a hole.
type PageGroup = Box<[Option<Box<[u8]>>]>;

impl PageTable {
    fn split(page: u64) -> (u64, usize) {
        (
            page / GROUP_PAGES as u64,
            (page % GROUP_PAGES as u64) as usize,
        )
    }

    fn get(&self, page: u64) -> Option<&[u8]> {
        let (group, slot) = Self::split(page);
        self.groups.get(&group)?[slot].as_deref()
    }

    fn get_mut(&mut self, page: u64) -> Option<&mut [u8]> {
        let (group, slot) = Self::split(page);
        self.groups.get_mut(&group)?[slot].as_deref_mut()
    }

    fn insert(&mut self, page: u64, bytes: Box<[u8]>) {
        let (group, slot) = Self::split(page);
        let slots = self
            .groups
            .entry(group)
            .or_insert_with(|| (0..GROUP_PAGES).map(|_| None).collect());
        if slots[slot].replace(bytes).is_none() {
            self.held += 1;
        }
    }

    /// Pages held.
    fn len(&self) -> u64 {
        self.held
    }

    /// The pages held in `first..=last`, in order.
    fn range(&self, first: u64, last: u64) -> impl Iterator<Item = (u64, &[u8])> {
        let (first_group, _) = Self::split(first);
        let (last_group, _) = Self::split(last);
        self.groups
            .range(first_group..=last_group)
            .flat_map(|(&group, slots)| {
                let base = group * GROUP_PAGES as u64;
                slots
                    .iter()
                    .enumerate()
                    .filter_map(move |(i, p)| Some((base + i as u64, p.as_deref()?)))
            })
            .filter(move |&(page, _)| (first..=last).contains(&page))
    }

    /// Drop every page from `first` on.
    fn truncate(&mut self, first: u64) {
        let (group, slot) = Self::split(first);
        let whole = self.groups.split_off(&(group + 1));
        self.held -= whole
            .values()
            .map(|slots| slots.iter().filter(|p| p.is_some()).count() as u64)
            .sum::<u64>();
        if let Some(slots) = self.groups.get_mut(&group) {
            for p in &mut slots[slot..] {
                if p.take().is_some() {
                    self.held -= 1;
                }
            }
        }
    }
}

impl MemoryFile {
    pub fn new() -> MemoryFile {
        MemoryFile::default()
    }

    /// A copy of the contents.
    pub fn to_vec(&self) -> Vec<u8> {
        let inner = self.inner.read().expect("memory file");
        let mut out = vec![0u8; inner.len as usize];
        let Some(last_byte) = inner.len.checked_sub(1) else {
            return out;
        };
        for (page, data) in inner.pages.range(0, last_byte / MEMORY_PAGE) {
            let at = (page * MEMORY_PAGE) as usize;
            let n = <[u8]>::len(data).min(out.len().saturating_sub(at));
            out[at..at + n].copy_from_slice(&data[..n]);
        }
        out
    }

    /// Bytes held in memory (pages with data).
    pub fn resident_bytes(&self) -> u64 {
        self.inner.read().expect("memory file").pages.len() * MEMORY_PAGE
    }
}

/// Each page touched by `offset..offset+len`: (page, offset in page, offset in the caller's
/// buffer, length).
fn page_spans(offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize, usize)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let at = offset + done as u64;
        let page = at / MEMORY_PAGE;
        let within = (at % MEMORY_PAGE) as usize;
        let n = (MEMORY_PAGE as usize - within).min(len - done);
        let span = (page, within, done, n);
        done += n;
        Some(span)
    })
}

impl SparsePages {
    /// `offset..offset + len` lies inside the file.
    fn check_inside(&self, offset: u64, len: usize) -> io::Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read of {len} bytes at {offset} past the end"),
            )),
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check_inside(offset, buf.len())?;
        for (page, within, at, n) in page_spans(offset, buf.len()) {
            match self.pages.get(page) {
                Some(data) => buf[at..at + n].copy_from_slice(&data[within..within + n]),
                None => buf[at..at + n].fill(0),
            }
        }
        Ok(())
    }
}

impl ReadAt for MemoryFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read().expect("memory file").read_at(offset, buf)
    }

    /// Under one lock; pieces a whole number of pages apart that each stay inside one page
    /// (a sector's first bytes) come from one in-order walk over the pages that hold data,
    /// instead of a map search per piece.
    fn read_strided(
        &self,
        offset: u64,
        stride: u64,
        count: usize,
        buf: &mut [u8],
    ) -> io::Result<()> {
        let len = strided_piece_len(buf.len(), count)?;
        let within = (offset % MEMORY_PAGE) as usize;
        if stride == 0 || stride % MEMORY_PAGE != 0 || within + len > MEMORY_PAGE as usize {
            return read_piece_by_piece(self, offset, stride, count, buf);
        }
        let end = strided_end(offset, stride, count, len).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "a strided read past 2^64")
        })?;
        let last = end - len as u64;
        let inner = self.inner.read().expect("memory file");
        inner.check_inside(last, len)?;
        buf.fill(0);
        let (first_page, stride_pages) = (offset / MEMORY_PAGE, stride / MEMORY_PAGE);
        let pieces: Vec<(usize, &[u8])> = inner
            .pages
            .range(first_page, last / MEMORY_PAGE)
            .filter(|(page, _)| (page - first_page) % stride_pages == 0)
            .map(|(page, data)| {
                let i = ((page - first_page) / stride_pages) as usize;
                (i, &data[within..within + len])
            })
            .collect();
        // The pages lie scattered over the heap and are mostly out of the caches (a log's 256
        // sector heads, read at every open): one load from each first, independent of one
        // another so their misses overlap, instead of one miss per copy in turn.
        let touched = pieces.iter().fold(0u8, |acc, (_, piece)| acc ^ piece[0]);
        std::hint::black_box(touched);
        for (i, piece) in pieces {
            buf[i * len..(i + 1) * len].copy_from_slice(piece);
        }
        Ok(())
    }
    fn len(&self) -> u64 {
        self.inner.read().expect("memory file").len
    }
}

impl WriteAt for MemoryFile {
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut inner = self.inner.write().expect("memory file");
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| usize::try_from(e).is_ok())
            .ok_or_else(|| io::Error::other("write past the addressable end"))?;
        for (page, within, at, n) in page_spans(offset, data.len()) {
            let part = &data[at..at + n];
            match inner.pages.get_mut(page) {
                Some(bytes) => bytes[within..within + n].copy_from_slice(part),
                None if part.iter().all(|&b| b == 0) => {}
                // A whole page is copied in as it comes, not zeroed first.
                None if n == MEMORY_PAGE as usize => {
                    inner.pages.insert(page, part.into());
                }
                None => {
                    let mut bytes = vec![0u8; MEMORY_PAGE as usize].into_boxed_slice();
                    bytes[within..within + n].copy_from_slice(part);
                    inner.pages.insert(page, bytes);
                }
            }
        }
        inner.len = inner.len.max(end);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        usize::try_from(len).map_err(|_| io::Error::other("length too large"))?;
        let mut inner = self.inner.write().expect("memory file");
        if len < inner.len {
            // Whole pages past the end go; the tail of the last one is zeroed.
            let first_gone = len.div_ceil(MEMORY_PAGE);
            inner.pages.truncate(first_gone);
            if len % MEMORY_PAGE != 0 {
                if let Some(last) = inner.pages.get_mut(len / MEMORY_PAGE) {
                    last[(len % MEMORY_PAGE) as usize..].fill(0);
                }
            }
        }
        inner.len = len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_file_across_page_groups_matches_a_vector() {
        // Writes over three 2 MiB page groups, their edges included, then shrinks that cut a
        // group part-way and on its edge: every read, the copy and the pages held agree with a
        // plain vector written the same way.
        let f = MemoryFile::new();
        let mut model: Vec<u8> = Vec::new();
        let group = GROUP_PAGES as u64 * MEMORY_PAGE;
        let write = |f: &MemoryFile, model: &mut Vec<u8>, at: u64, len: usize, byte: u8| {
            let data = vec![byte; len];
            f.write_at(at, &data).unwrap();
            let end = at as usize + len;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[at as usize..end].copy_from_slice(&data);
        };
        write(&f, &mut model, group - 100, 200, 1); // across the first edge
        write(&f, &mut model, 2 * group + 4096 * 7 + 3, 9000, 2);
        write(&f, &mut model, 5, 10, 3);
        write(&f, &mut model, group + 4096, 4096, 0); // zeros into a hole: no page
        write(&f, &mut model, 3 * group - 1, 1, 4); // the last byte of the third group
        let check = |f: &MemoryFile, model: &[u8]| {
            assert_eq!(f.len(), model.len() as u64);
            assert_eq!(f.to_vec(), model);
            let held = model
                .chunks(MEMORY_PAGE as usize)
                .filter(|p| p.iter().any(|&b| b != 0))
                .count() as u64;
            assert_eq!(f.resident_bytes(), held * MEMORY_PAGE);
            for (at, len) in [(0, 64), (group - 200, 400), (2 * group, 40_000)] {
                let end = (at + len).min(model.len() as u64);
                let mut buf = vec![0xee; (end - at) as usize];
                f.read_at(at, &mut buf).unwrap();
                assert_eq!(buf, model[at as usize..end as usize]);
            }
        };
        check(&f, &model);
        // Cut part-way through the third group, then exactly on the second group's end.
        for len in [2 * group + 4096 * 7 + 10, 2 * group] {
            f.set_len(len).unwrap();
            model.truncate(len as usize);
            check(&f, &model);
        }
        // Grown again: the dropped bytes read as zeros.
        f.set_len(3 * group).unwrap();
        model.resize(3 * group as usize, 0);
        check(&f, &model);
    }

    #[test]
    fn a_memory_file_is_sparse_and_reads_like_a_vector() {
        let f = MemoryFile::new();
        let mut model = Vec::new();
        let mut write = |offset: u64, data: &[u8]| {
            f.write_at(offset, data).unwrap();
            let end = offset as usize + data.len();
            if model.len() < end {
                model.resize(end, 0);
            }
            model[offset as usize..end].copy_from_slice(data);
        };
        write(10, &[7; 100]);
        write(MEMORY_PAGE * 3 - 5, &[9; 20]); // spans two pages
        write(MEMORY_PAGE * 10, &vec![0; 3 * MEMORY_PAGE as usize]); // zeros: no pages
        assert_eq!(f.len(), model.len() as u64);
        assert_eq!(f.resident_bytes(), 3 * MEMORY_PAGE);
        assert_eq!(f.to_vec(), model);
        let mut buf = vec![1u8; 300];
        f.read_at(MEMORY_PAGE * 3 - 100, &mut buf).unwrap();
        assert_eq!(buf[..], model[(MEMORY_PAGE * 3 - 100) as usize..][..300]);
        assert!(f.read_at(f.len() - 1, &mut [0; 2]).is_err());
        // Shrinking drops pages and zeroes the cut tail; growing reads zeros.
        f.set_len(MEMORY_PAGE * 3 - 1).unwrap();
        f.set_len(MEMORY_PAGE * 4).unwrap();
        assert_eq!(f.resident_bytes(), 2 * MEMORY_PAGE);
        let mut tail = [1u8; 2];
        f.read_at(MEMORY_PAGE * 3 - 1, &mut tail).unwrap();
        assert_eq!(tail, [0, 0]);
    }

    #[test]
    fn a_strided_read_of_a_memory_file_matches_reads_piece_by_piece() {
        let f = MemoryFile::new();
        let page = MEMORY_PAGE as usize;
        let bytes: Vec<u8> = (0..40 * page).map(|i| (i % 253) as u8 | 1).collect();
        f.write_at(0, &bytes).unwrap();
        // Holes: pages never written read as zeros, in the walk as in a read.
        f.set_len(0).unwrap();
        for p in [0usize, 3, 4, 9, 17, 31, 39] {
            f.write_at((p * page) as u64, &bytes[p * page..(p + 1) * page])
                .unwrap();
        }
        f.set_len(40 * MEMORY_PAGE).unwrap();
        // (offset, stride, count, piece): the page walk (whole-page strides, pieces inside a
        // page, at a page's start or inside it) and the fallback (other strides, pieces
        // crossing a page's end).
        for (offset, stride, count, len) in [
            (0, MEMORY_PAGE, 40, 64),
            (100, MEMORY_PAGE, 39, 64),
            (MEMORY_PAGE * 3, 2 * MEMORY_PAGE, 18, 4096),
            (10, 3000, 20, 50),
            (MEMORY_PAGE - 8, MEMORY_PAGE, 5, 16),
            (0, 0, 4, 8),
        ] {
            let mut strided = vec![0xAAu8; count * len];
            f.read_strided(offset, stride, count, &mut strided).unwrap();
            let mut one_by_one = vec![0x55u8; count * len];
            for (i, piece) in one_by_one.chunks_exact_mut(len).enumerate() {
                f.read_at(offset + i as u64 * stride, piece).unwrap();
            }
            assert_eq!(
                strided, one_by_one,
                "offset {offset} stride {stride} count {count}"
            );
        }
        // Past the end, pieces that do not divide the buffer, no pieces: errors.
        let mut buf = vec![0u8; 2 * 64];
        assert!(f
            .read_strided(39 * MEMORY_PAGE, MEMORY_PAGE, 2, &mut buf)
            .is_err());
        assert!(f.read_strided(0, MEMORY_PAGE, 3, &mut buf).is_err());
        assert!(f.read_strided(0, MEMORY_PAGE, 0, &mut buf).is_err());
        assert!(f.read_strided(0, u64::MAX, 2, &mut buf).is_err());
        assert!(f.read_strided(2, u64::MAX, 2, &mut buf).is_err());
        assert!(f
            .read_strided(MEMORY_PAGE, u64::MAX - MEMORY_PAGE + 1, 2, &mut buf)
            .is_err());
    }

    /// Resident kB of the mapping that starts at `addr`, from /proc/self/smaps.
    #[cfg(target_os = "linux")]
    fn resident_kib(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines();
        let head = format!("{addr:x}-");
        lines
            .by_ref()
            .find(|l| l.starts_with(&head))
            .expect("the mapping is listed");
        let rss = lines.find(|l| l.starts_with("Rss:")).unwrap();
        rss.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn releasing_a_mapped_range_drops_it_from_the_resident_set_and_keeps_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let bytes: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = MappedFile::open(&path).unwrap();
        let lent = file.mapped(1 << 20, 2 << 20).unwrap();
        assert_eq!(lent, &bytes[1 << 20..3 << 20]);
        let addr = file.bytes().as_ptr() as usize;
        assert!(resident_kib(addr) >= 2048, "touched pages are resident");
        file.release(0, 4 << 20);
        assert_eq!(resident_kib(addr), 0, "released pages leave the process");
        // The bytes read back the same, through the slice still held and through reads.
        assert_eq!(lent, &bytes[1 << 20..3 << 20]);
        let mut buf = vec![0u8; 4096];
        file.read_at(3 << 20, &mut buf).unwrap();
        assert_eq!(buf, bytes[3 << 20..(3 << 20) + 4096]);
        // Out of range: ignored.
        file.release(4 << 20, 1);
        file.release(u64::MAX, 2);
    }

    fn shrink(path: &Path, len: u64) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len)
            .unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_shrinking_under_its_map_fails_reads_instead_of_ending_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let bytes: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = MappedFile::open(&path).unwrap();
        let mut buf = vec![0u8; 64 << 10];
        file.read_at(0, &mut buf).unwrap();
        file.check_mapped().unwrap();
        shrink(&path, 1 << 20);
        // A read past the new end faults; the fault is turned into zero pages and an error.
        let err = file.read_at(2 << 20, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let message = err.to_string();
        assert!(
            message.contains("shrank")
                && message.contains("4194304")
                && message.contains("1048576"),
            "{message}"
        );
        // Bytes lent before or after read as zeros (no fault) and the check reports them.
        let lent = file.mapped(3 << 20, 64 << 10).unwrap();
        assert!(lent.iter().all(|&b| b == 0));
        assert!(file.check_mapped().is_err());
        // Every later read fails too: the file is not what was opened.
        assert!(file.read_at(0, &mut buf).is_err());
        drop(file);
        // A new map of the shrunk file reads it as it is now.
        let reopened = MappedFile::open(&path).unwrap();
        assert_eq!(reopened.len(), 1 << 20);
        reopened.read_at(0, &mut buf).unwrap();
        assert_eq!(buf, bytes[..64 << 10]);
        reopened.check_mapped().unwrap();
    }

    #[test]
    fn a_file_shrinking_inside_its_last_page_is_reported_by_the_check() {
        // No page is lost, so nothing faults: the length comparison finds it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![7u8; 10_000]).unwrap();
        let file = MappedFile::open(&path).unwrap();
        shrink(&path, 9_000);
        let err = file.check_mapped().unwrap_err();
        assert!(
            err.to_string()
                .contains("10000 bytes when opened, 9000 now"),
            "{err}"
        );
    }

    /// The child's side of the next test: a fault in a map nobody watches.
    #[cfg(target_os = "linux")]
    fn fault_in_an_unwatched_map(dir: &Path) {
        let watched = dir.join("watched");
        std::fs::write(&watched, vec![1u8; 1 << 20]).unwrap();
        let _guarded = MappedFile::open(&watched).unwrap();
        let other = dir.join("other");
        std::fs::write(&other, vec![1u8; 1 << 20]).unwrap();
        let file = File::open(&other).unwrap();
        // SAFETY: the point of the test: the file shrinks under this map.
        let map = unsafe { memmap2::Mmap::map(&file).unwrap() };
        shrink(&other, 0);
        let sum: u64 = map.iter().map(|&b| u64::from(b)).sum();
        println!("read {sum} without a fault");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_fault_outside_any_watched_map_still_ends_the_process() {
        use std::os::unix::process::ExitStatusExt;
        const CHILD: &str = "VHDX_MAP_GUARD_CHILD_DIR";
        if let Some(dir) = std::env::var_os(CHILD) {
            fault_in_an_unwatched_map(Path::new(&dir));
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "io::tests::a_fault_outside_any_watched_map_still_ends_the_process",
                "--test-threads=1",
            ])
            .env(CHILD, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}");
    }
}
