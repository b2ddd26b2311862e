//! The file as the rest of the reader sees it: the raw bytes with the replayed log laid over
//! them and, if the log says so, extended with zeros to its LastFileOffset.

use std::io;

use crate::io::ReadAt;
use crate::log_replay::Overlay;

/// A read-only view of one image file after in-memory log replay.
pub struct FileView {
    base: Box<dyn ReadAt>,
    overlay: Option<Overlay>,
    len: u64,
}

impl std::fmt::Debug for FileView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileView")
            .field("len", &self.len)
            .field(
                "overlay_runs",
                &self.overlay.as_ref().map(Overlay::run_count),
            )
            .finish()
    }
}

impl FileView {
    pub fn new(base: Box<dyn ReadAt>) -> FileView {
        let len = base.len();
        FileView {
            base,
            overlay: None,
            len,
        }
    }

    /// Lay a replayed log over the file.
    pub fn set_overlay(&mut self, overlay: Overlay) {
        self.len = self.len.max(overlay.replayed_len);
        self.overlay = Some(overlay);
    }

    pub fn has_overlay(&self) -> bool {
        self.overlay.is_some()
    }

    /// Length of the underlying file, before any log extension.
    pub fn file_len(&self) -> u64 {
        self.base.len()
    }
}

impl ReadAt for FileView {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "read of {} bytes at {offset:#x} ends past the end ({} bytes)",
                        buf.len(),
                        self.len
                    ),
                )
            })?;
        let base_len = self.base.len();
        let from_base = end.min(base_len).saturating_sub(offset) as usize;
        if from_base > 0 {
            self.base.read_at(offset, &mut buf[..from_base])?;
        }
        buf[from_base..].fill(0);
        if let Some(o) = &self.overlay {
            o.apply(offset, buf);
        }
        Ok(())
    }

    /// From the file in one call while no replayed log covers the view and every piece is in
    /// the file (a log search reads every sector's header this way); else piece by piece.
    fn read_strided(
        &self,
        offset: u64,
        stride: u64,
        count: usize,
        buf: &mut [u8],
    ) -> io::Result<()> {
        let len = crate::io::strided_piece_len(buf.len(), count)?;
        let in_base = crate::io::strided_end(offset, stride, count, len)
            .is_some_and(|end| end <= self.base.len());
        if self.overlay.is_none() && in_base {
            return self.base.read_strided(offset, stride, count, buf);
        }
        crate::io::read_piece_by_piece(self, offset, stride, count, buf)
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn file_range(&self, offset: u64, len: u64) -> Option<(&std::fs::File, u64)> {
        if self
            .overlay
            .as_ref()
            .is_some_and(|o| o.intersects(offset, len))
        {
            return None;
        }
        self.base.file_range(offset, len)
    }

    fn mapped(&self, offset: u64, len: u64) -> Option<&[u8]> {
        if self
            .overlay
            .as_ref()
            .is_some_and(|o| o.intersects(offset, len))
        {
            return None;
        }
        self.base.mapped(offset, len)
    }

    fn release(&self, offset: u64, len: u64) {
        self.base.release(offset, len)
    }

    fn check_mapped(&self) -> std::io::Result<()> {
        self.base.check_mapped()
    }
}
