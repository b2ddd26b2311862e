//! Writing a virtual disk out as a raw image: sparse into a file (holes are never written),
//! or as a full stream (holes become zeros) for pipes.

use std::fs::File;
use std::io::Write;

use crate::disk::{Disk, ExtentKind};
use crate::error::{Error, Result};

/// Largest read issued per step: big enough to amortise calls, small enough to stay in cache.
pub const EXPORT_CHUNK_BYTES: usize = 4 << 20;

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

/// Export `disk` as raw bytes. `progress` is told the virtual bytes done after each step.
pub fn export_raw(
    disk: &Disk,
    target: RawTarget<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<ExportStats> {
    let size = disk.virtual_size();
    let mut stats = ExportStats {
        virtual_size: size,
        ..Default::default()
    };
    let mut buf = vec![0u8; EXPORT_CHUNK_BYTES];
    let zeros = vec![0u8; EXPORT_CHUNK_BYTES];
    let mut target = target;
    if let RawTarget::File(f) = &target {
        f.set_len(0).map_err(|e| output_error(0, e))?;
        f.set_len(size).map_err(|e| output_error(0, e))?;
    }
    for extent in disk.extents() {
        let extent = extent?;
        let mut pos = extent.offset;
        let end = extent.offset + extent.len;
        while pos < end {
            let n = (end - pos).min(EXPORT_CHUNK_BYTES as u64 - pos % EXPORT_CHUNK_BYTES as u64)
                as usize;
            match (extent.kind, &mut target) {
                (ExtentKind::Data, t) => {
                    disk.read_at(pos, &mut buf[..n])?;
                    match t {
                        RawTarget::File(f) => {
                            write_all_at(f, &buf[..n], pos).map_err(|e| output_error(pos, e))?
                        }
                        RawTarget::Stream(w) => {
                            w.write_all(&buf[..n]).map_err(|e| output_error(pos, e))?
                        }
                    }
                    stats.data_bytes += n as u64;
                }
                (_, RawTarget::File(_)) => stats.hole_bytes += n as u64,
                (_, RawTarget::Stream(w)) => {
                    w.write_all(&zeros[..n]).map_err(|e| output_error(pos, e))?;
                    stats.hole_bytes += n as u64;
                }
            }
            pos += n as u64;
            progress(pos);
        }
    }
    if let RawTarget::Stream(w) = &mut target {
        w.flush().map_err(|e| output_error(size, e))?;
    }
    Ok(stats)
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
