//! Importing a raw image into a VHDX: only the non-zero stretches are written, so zero blocks
//! stay unallocated.

use std::io;

use crate::error::{Error, Result};
use crate::io::{ReadAt, WriteAt};
use crate::writer::VhdxWriter;

/// True when every byte is zero (the inner loop vectorizes).
fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |acc, &b| acc | b) == 0
}

/// Copy `size` bytes of `source` into `writer`, leaving all-zero stretches unwritten (so their
/// blocks stay unallocated). A reader thread fills the next 64 MiB chunk while this one is
/// written; runs of data are written in one call each.
pub fn copy_nonzero<W: WriteAt>(
    source: &(dyn ReadAt + Sync),
    size: u64,
    writer: &mut VhdxWriter<W>,
    progress: &dyn Fn(u64),
) -> Result<()> {
    const CHUNK: u64 = 64 << 20;
    const GRAIN: usize = 64 << 10;
    let (full_tx, full_rx) =
        std::sync::mpsc::sync_channel::<std::result::Result<(u64, Vec<u8>), (u64, io::Error)>>(1);
    let (free_tx, free_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
    for _ in 0..2 {
        free_tx
            .send(vec![0u8; CHUNK as usize])
            .expect("room for two buffers");
    }
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || {
            let mut at = 0u64;
            while at < size {
                let Ok(mut buf) = free_rx.recv() else { return };
                let n = (size - at).min(CHUNK) as usize;
                buf.resize(n, 0);
                let read = source
                    .read_at(at, &mut buf)
                    .map(|()| (at, buf))
                    .map_err(|e| (at, e));
                let failed = read.is_err();
                if full_tx.send(read).is_err() || failed {
                    return;
                }
                at += n as u64;
            }
        });
        while let Ok(chunk) = full_rx.recv() {
            let (at, buf) = chunk.map_err(|(offset, source)| Error::Io {
                structure: "import source",
                offset,
                source,
            })?;
            let n = buf.len();
            // Write each maximal run of non-zero 64 KiB grains.
            let grain_end = |i: usize| (i + GRAIN).min(n);
            let mut i = 0;
            while i < n {
                if is_zero(&buf[i..grain_end(i)]) {
                    i = grain_end(i);
                    continue;
                }
                let start = i;
                while i < n && !is_zero(&buf[i..grain_end(i)]) {
                    i = grain_end(i);
                }
                writer.write_at(at + start as u64, &buf[start..i])?;
            }
            progress(at + n as u64);
            // The reader may have stopped (end of input): a refused buffer is fine.
            let _ = free_tx.send(buf);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::disk::{Disk, ExtentKind, NoParents};
    use crate::io::MemoryFile;
    use crate::testing::XorShift;
    use crate::writer::CreateOptions;

    const MIB: u64 = 1 << 20;

    /// A source whose reads fail from `bad_from` on.
    struct FailingSource {
        bytes: Vec<u8>,
        bad_from: u64,
    }

    impl ReadAt for FailingSource {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            if offset + buf.len() as u64 > self.bad_from {
                return Err(io::Error::other("medium error"));
            }
            self.bytes.read_at(offset, buf)
        }
        fn len(&self) -> u64 {
            self.bytes.len() as u64
        }
    }

    fn writer(size: u64) -> (Arc<MemoryFile>, VhdxWriter<Arc<MemoryFile>>) {
        let file = Arc::new(MemoryFile::new());
        let options = CreateOptions {
            block_size: MIB as u32,
            ..CreateOptions::dynamic(size)
        };
        let w = VhdxWriter::create(Arc::clone(&file), &options, Box::new(XorShift(7))).unwrap();
        (file, w)
    }

    #[test]
    fn zero_stretches_stay_unallocated_and_the_rest_reads_back() {
        // 8 MiB: data in blocks 1 and 6 (one byte near the end of 6), zeros elsewhere.
        let mut raw = vec![0u8; 8 * MIB as usize];
        raw[MIB as usize..MIB as usize + 5000].fill(0xAB);
        raw[7 * MIB as usize - 1] = 1;
        let (file, mut w) = writer(raw.len() as u64);
        let done = std::sync::Mutex::new(0);
        copy_nonzero(&raw, raw.len() as u64, &mut w, &|d| {
            *done.lock().unwrap() = d
        })
        .unwrap();
        w.close().unwrap();
        assert_eq!(*done.lock().unwrap(), raw.len() as u64);
        let disk = Disk::open_with(Box::new(file), "imported", &NoParents).unwrap();
        let data: Vec<(u64, u64)> = disk
            .extents()
            .map(|e| e.unwrap())
            .filter(|e| e.kind == ExtentKind::Data)
            .map(|e| (e.offset, e.len))
            .collect();
        assert_eq!(data, vec![(MIB, MIB), (6 * MIB, MIB)]);
        let mut back = vec![0u8; raw.len()];
        disk.read_at(0, &mut back).unwrap();
        assert!(back == raw);
    }

    #[test]
    fn a_failed_source_read_names_its_offset() {
        let bytes = vec![1u8; 130 * MIB as usize];
        let source = FailingSource {
            bytes,
            bad_from: 100 * MIB,
        };
        let (_, mut w) = writer(130 * MIB);
        let err = copy_nonzero(&source, 130 * MIB, &mut w, &|_| {}).unwrap_err();
        assert!(
            matches!(err, Error::Io { offset, .. } if offset == 64 * MIB),
            "{err}"
        );
    }
}
