//! Writing a virtual disk out as a raw image: sparse into a file (holes are never written),
//! or as a full stream (holes become zeros) for pipes.
//!
//! Into a file, chunks are copied by worker threads at their own offsets, so the output bytes
//! do not depend on scheduling. Data stored verbatim in a file moves with `copy_file_range`
//! (a reflink on XFS/Btrfs, an in-kernel copy elsewhere); where the kernel cannot, mapped data
//! is written straight from the map; anything else (replayed-log overlays, in-memory sources)
//! is read into a buffer and written.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::disk::{Disk, ExtentKind, Segment};
use crate::error::{Error, Result};

/// Virtual bytes per work item: big enough to amortise calls, small enough to balance threads.
pub const EXPORT_CHUNK_BYTES: usize = 4 << 20;
/// Copy threads used by default: the machines we target have two cores.
pub const DEFAULT_EXPORT_THREADS: usize = 2;

/// Where the raw bytes go.
#[allow(missing_debug_implementations)]
pub enum RawTarget<'a> {
    /// A regular file, sized to the disk and written at offsets; holes stay holes.
    File(&'a File),
    /// A stream that receives every byte in order.
    Stream(&'a mut dyn Write),
}

/// What an export did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportStats {
    pub virtual_size: u64,
    /// Bytes read from stored data and written.
    pub data_bytes: u64,
    /// Bytes left as holes (file) or streamed as zeros.
    pub hole_bytes: u64,
}

fn output_error(offset: u64, source: std::io::Error) -> Error {
    Error::Io {
        structure: "output",
        offset,
        source,
    }
}

/// Export `disk` as raw bytes with `threads` copy threads (file targets only).
/// `progress` receives the number of virtual bytes finished, as they finish.
pub fn export_raw(
    disk: &Disk,
    target: RawTarget<'_>,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ExportStats> {
    match target {
        RawTarget::File(f) => export_to_file(disk, f, threads.max(1), progress),
        RawTarget::Stream(w) => export_to_stream(disk, w, progress),
    }
}

fn export_to_stream(
    disk: &Disk,
    w: &mut dyn Write,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ExportStats> {
    let size = disk.virtual_size();
    let mut stats = ExportStats {
        virtual_size: size,
        ..Default::default()
    };
    let mut buf = vec![0u8; EXPORT_CHUNK_BYTES];
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(EXPORT_CHUNK_BYTES as u64);
        for seg in disk.map(pos, n)? {
            let dst = &mut buf[..seg.len as usize];
            disk.read_segment(&seg, dst)?;
            w.write_all(dst).map_err(|e| output_error(seg.offset, e))?;
            match seg.kind {
                ExtentKind::Data => stats.data_bytes += seg.len,
                _ => stats.hole_bytes += seg.len,
            }
        }
        pos += n;
        progress(n);
    }
    w.flush().map_err(|e| output_error(size, e))?;
    Ok(stats)
}

fn export_to_file(
    disk: &Disk,
    out: &File,
    threads: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ExportStats> {
    let size = disk.virtual_size();
    // Old contents must go so holes read as zeros; but truncating an empty file would make
    // ext4 (auto_da_alloc) flush everything on close, so only truncate when there is data.
    let existing = out.metadata().map_err(|e| output_error(0, e))?.len();
    if existing != 0 {
        out.set_len(0).map_err(|e| output_error(0, e))?;
    }
    out.set_len(size).map_err(|e| output_error(0, e))?;
    let chunks = size.div_ceil(EXPORT_CHUNK_BYTES as u64);
    let reflinks = reflinking_fs(out);
    let next = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let data_bytes = AtomicU64::new(0);
    let worker = || {
        let mut buf = Vec::new();
        let mut copier = Copier {
            no_kernel_copy: false,
            reflinks,
        };
        while !failed.load(Ordering::Relaxed) {
            let chunk = next.fetch_add(1, Ordering::Relaxed);
            if chunk >= chunks {
                break;
            }
            let pos = chunk * EXPORT_CHUNK_BYTES as u64;
            let n = (size - pos).min(EXPORT_CHUNK_BYTES as u64);
            let copied = disk.map(pos, n).and_then(|segments| {
                segments
                    .iter()
                    .filter(|s| s.kind == ExtentKind::Data)
                    .try_for_each(|s| {
                        copier.copy(disk, s, out, &mut buf).map(|()| {
                            data_bytes.fetch_add(s.len, Ordering::Relaxed);
                        })
                    })
            });
            // An image that shrank under its map makes writes from it fail (EFAULT): name
            // the cause, not the output.
            let result = disk.check_mapped().and(copied);
            if let Err(e) = result {
                failed.store(true, Ordering::Relaxed);
                first_error
                    .lock()
                    .expect("no panics while held")
                    .get_or_insert(e);
                break;
            }
            progress(n);
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(worker);
        }
        worker();
    });
    if let Some(e) = first_error.into_inner().expect("no panics while held") {
        return Err(e);
    }
    let data_bytes = data_bytes.into_inner();
    Ok(ExportStats {
        virtual_size: size,
        data_bytes,
        hole_bytes: size - data_bytes,
    })
}

/// Copies one data segment into the output at its virtual offset.
struct Copier {
    /// Set once the kernel refused copy_file_range (other file system, old kernel).
    no_kernel_copy: bool,
    /// The output's file system shares blocks on copy_file_range.
    reflinks: bool,
}

/// True when `out` lives on a file system where copy_file_range reflinks (XFS, Btrfs).
#[cfg(target_os = "linux")]
#[allow(clippy::unnecessary_cast)] // f_type's width differs between Linux targets
fn reflinking_fs(out: &File) -> bool {
    const XFS_SUPER_MAGIC: i64 = 0x5846_5342;
    const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
    rustix::fs::fstatfs(out)
        .is_ok_and(|s| matches!(s.f_type as i64, XFS_SUPER_MAGIC | BTRFS_SUPER_MAGIC))
}

#[cfg(not(target_os = "linux"))]
fn reflinking_fs(_: &File) -> bool {
    false
}

impl Copier {
    fn copy(&mut self, disk: &Disk, seg: &Segment, out: &File, buf: &mut Vec<u8>) -> Result<()> {
        // On XFS and Btrfs copy_file_range shares the blocks (reflink): the export costs
        // metadata only. Elsewhere a write straight from the map measured faster
        // (scripts/bench-export.sh on ext4), and copy_file_range is the fallback.
        if let (false, Some(bytes)) = (self.reflinks, disk.segment_bytes(seg)) {
            return write_all_at(out, bytes, seg.offset).map_err(|e| output_error(seg.offset, e));
        }
        if !self.no_kernel_copy {
            if let Some((file, file_offset)) = disk.segment_file(seg) {
                match kernel_copy(file, file_offset, out, seg.offset, seg.len) {
                    Ok(true) => return Ok(()),
                    Ok(false) => self.no_kernel_copy = true,
                    Err(e) => return Err(output_error(seg.offset, e)),
                }
            }
        }
        if let Some(bytes) = disk.segment_bytes(seg) {
            return write_all_at(out, bytes, seg.offset).map_err(|e| output_error(seg.offset, e));
        }
        buf.resize(seg.len as usize, 0);
        disk.read_segment(seg, buf)?;
        write_all_at(out, buf, seg.offset).map_err(|e| output_error(seg.offset, e))
    }
}

/// copy_file_range the whole range; `Ok(false)` when the kernel cannot do it here (nothing
/// was copied, so the caller falls back to read + write).
#[cfg(target_os = "linux")]
fn kernel_copy(
    src: &File,
    mut src_offset: u64,
    dst: &File,
    mut dst_offset: u64,
    len: u64,
) -> std::io::Result<bool> {
    use rustix::io::Errno;
    let mut left = len;
    while left > 0 {
        let want = left.min(1 << 30) as usize;
        match rustix::fs::copy_file_range(
            src,
            Some(&mut src_offset),
            dst,
            Some(&mut dst_offset),
            want,
        ) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "source file shrank during the copy",
                ));
            }
            Ok(n) => left -= n as u64,
            Err(Errno::INTR) => {}
            Err(Errno::XDEV | Errno::NOSYS | Errno::OPNOTSUPP | Errno::INVAL) if left == len => {
                return Ok(false)
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

#[cfg(not(target_os = "linux"))]
fn kernel_copy(_: &File, _: u64, _: &File, _: u64, _: u64) -> std::io::Result<bool> {
    Ok(false)
}

#[cfg(unix)]
fn write_all_at(f: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    f.write_all_at(buf, offset)
}

#[cfg(windows)]
fn write_all_at(f: &File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = f.seek_write(buf, offset)?;
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}
