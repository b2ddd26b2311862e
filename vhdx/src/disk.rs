//! A virtual disk: one VHDX file or a differencing chain, read at virtual offsets.
//!
//! Owns parent resolution (locator paths, `parent_linkage`, loops, depth) and the mapping of
//! virtual ranges to file ranges through every layer, which both `read_at` and the extent
//! iterator use so they can never disagree.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bat::BlockState;
use crate::error::{Error, Result};
use crate::guid::Guid;
use crate::image::{Findings, VhdxFile};
use crate::io::{MappedFile, ReadAt};
use crate::parent_locator::ParentLocator;

/// Deepest differencing chain we follow (the top image counts as one). Real chains (Hyper-V
/// checkpoints) rarely pass a few dozen; the bound stops loops through renamed copies.
pub const MAX_CHAIN_DEPTH: usize = 64;

/// Opens the parent a locator names.
pub trait ParentResolver {
    /// Open the parent of the image named `child` (a name returned earlier by this resolver,
    /// or the top image's). Returns the parent's name — unique per file, used to detect
    /// loops — and its bytes.
    fn open_parent(
        &self,
        child: &str,
        locator: &ParentLocator,
    ) -> Result<(String, Box<dyn ReadAt>)>;
}

/// Resolves parents on the file system: `relative_path` against the child's folder, then
/// `volume_path` and `absolute_win32_path` when they are absolute paths on this system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileSystemResolver;

/// Candidate paths for a parent, in the order MS-VHDX 2.6.2.6.1 lists the keys.
pub fn parent_path_candidates(child: &Path, locator: &ParentLocator) -> Vec<PathBuf> {
    let dir = child.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for key in crate::parent_locator::PATH_KEYS {
        let Some(value) = locator.get(key) else {
            continue;
        };
        let unix = value.replace('\\', "/");
        if key == "relative_path" {
            let rel = unix.trim_start_matches("./");
            if !rel.is_empty() {
                out.push(dir.join(rel));
            }
        } else {
            for p in [PathBuf::from(value), PathBuf::from(&unix)] {
                if p.is_absolute() && !out.contains(&p) {
                    out.push(p);
                }
            }
        }
    }
    out
}

impl ParentResolver for FileSystemResolver {
    fn open_parent(
        &self,
        child: &str,
        locator: &ParentLocator,
    ) -> Result<(String, Box<dyn ReadAt>)> {
        let candidates = parent_path_candidates(Path::new(child), locator);
        if candidates.is_empty() {
            return Err(Error::Parent {
                child: child.into(),
                reason: "the parent locator has no usable path (relative_path, volume_path, absolute_win32_path)".into(),
            });
        }
        let mut tried = Vec::new();
        for path in &candidates {
            match MappedFile::open(path) {
                Ok(file) => {
                    let name = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
                    return Ok((name.display().to_string(), Box::new(file)));
                }
                Err(e) => tried.push(format!("{}: {e}", path.display())),
            }
        }
        Err(Error::Parent {
            child: child.into(),
            reason: format!("no parent found (tried {})", tried.join("; ")),
        })
    }
}

/// Refuses every parent: for opening untrusted bytes (fuzzing) without touching files.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoParents;

impl ParentResolver for NoParents {
    fn open_parent(&self, child: &str, _: &ParentLocator) -> Result<(String, Box<dyn ReadAt>)> {
        Err(Error::Parent {
            child: child.into(),
            reason: "parents are not resolved here".into(),
        })
    }
}

/// Parents held in memory, keyed by the `relative_path` they are known by
/// (backslashes read as slashes, a leading `./` dropped).
#[derive(Debug, Default, Clone)]
pub struct MemoryResolver {
    pub images: BTreeMap<String, Arc<Vec<u8>>>,
}

impl ParentResolver for MemoryResolver {
    fn open_parent(
        &self,
        child: &str,
        locator: &ParentLocator,
    ) -> Result<(String, Box<dyn ReadAt>)> {
        let rel = locator
            .get("relative_path")
            .unwrap_or_default()
            .replace('\\', "/");
        let rel = rel.trim_start_matches("./").to_string();
        match self.images.get(&rel) {
            Some(bytes) => Ok((rel, Box::new(Arc::clone(bytes)))),
            None => Err(Error::Parent {
                child: child.into(),
                reason: format!("no image named {rel:?}"),
            }),
        }
    }
}

/// How a virtual range reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtentKind {
    /// Stored data: must be read.
    Data,
    /// Known zeros (ZERO, UNMAPPED, UNDEFINED states): nothing to read.
    Zero,
    /// Allocated nowhere in the chain: reads zeros, nothing to read.
    Unallocated,
}

impl ExtentKind {
    pub fn name(self) -> &'static str {
        match self {
            ExtentKind::Data => "data",
            ExtentKind::Zero => "zero",
            ExtentKind::Unallocated => "unallocated",
        }
    }
}

/// Where one part of a virtual range is stored: for `Data`, in layer `layer` at
/// `file_offset` (bytes of that layer's file after log replay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub len: u64,
    pub kind: ExtentKind,
    pub layer: usize,
    pub file_offset: u64,
}

/// A run of the virtual disk with one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub kind: ExtentKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Data { layer: usize, file_offset: u64 },
    Zero,
    Unallocated,
}

#[derive(Debug, Clone, Copy)]
struct Piece {
    offset: u64,
    len: u64,
    source: Source,
}

/// One layer of a chain.
#[derive(Debug)]
pub struct Layer {
    pub name: String,
    pub file: VhdxFile,
}

/// A readable virtual disk.
#[derive(Debug)]
pub struct Disk {
    layers: Vec<Layer>,
}

/// Everything a structural check found.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub findings: Findings,
    /// Layers that opened (top first); empty if the top image could not be read.
    pub layers: Vec<String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.findings.is_clean()
    }
}

impl Disk {
    /// Open a VHDX file (memory-mapped) and its parents from the file system.
    pub fn open(path: &Path) -> Result<Disk> {
        let source = MappedFile::open(path).map_err(|source| Error::Io {
            structure: "file",
            offset: 0,
            source,
        })?;
        Disk::open_with(
            Box::new(source),
            &path.display().to_string(),
            &FileSystemResolver,
        )
    }

    /// Open from any source, resolving parents with `resolver`.
    pub fn open_with(
        source: Box<dyn ReadAt>,
        name: &str,
        resolver: &dyn ParentResolver,
    ) -> Result<Disk> {
        let mut findings = Findings::default();
        let disk = Disk::open_chain(source, name, resolver, &mut findings)?;
        match findings.errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(disk),
        }
    }

    /// Structural check of a file and its chain: every problem found, not just the first.
    pub fn check(path: &Path) -> CheckReport {
        match MappedFile::open(path) {
            Ok(source) => Disk::check_with(
                Box::new(source),
                &path.display().to_string(),
                &FileSystemResolver,
            ),
            Err(source) => {
                let mut report = CheckReport::default();
                report.findings.error(Error::Io {
                    structure: "file",
                    offset: 0,
                    source,
                });
                report
            }
        }
    }

    pub fn check_with(
        source: Box<dyn ReadAt>,
        name: &str,
        resolver: &dyn ParentResolver,
    ) -> CheckReport {
        let mut report = CheckReport::default();
        match Disk::open_chain(source, name, resolver, &mut report.findings) {
            Ok(disk) => {
                report.layers = disk.layers.iter().map(|l| l.name.clone()).collect();
                // Reads are only worth trying when the BAT itself passed.
                if !report.findings.errors.is_empty() {
                    return report;
                }
                if let Err(e) = disk.check_reads() {
                    report.findings.error(e);
                }
            }
            Err(e) => report.findings.error(e),
        }
        report
    }

    /// Resolve every extent once: finds unreadable sector bitmaps and reserved states.
    fn check_reads(&self) -> Result<()> {
        for extent in self.extents() {
            extent?;
        }
        Ok(())
    }

    fn open_chain(
        source: Box<dyn ReadAt>,
        name: &str,
        resolver: &dyn ParentResolver,
        findings: &mut Findings,
    ) -> Result<Disk> {
        let top = VhdxFile::open_with_findings(source, findings).map_err(|e| with_name(e, name))?;
        let mut layers = vec![Layer {
            name: name.to_string(),
            file: top,
        }];
        loop {
            let child = layers.last().expect("never empty");
            let Some(locator) = child.file.metadata.parent_locator.clone() else {
                break;
            };
            if layers.len() >= MAX_CHAIN_DEPTH {
                return Err(Error::Parent {
                    child: child.name.clone(),
                    reason: format!("chain deeper than {MAX_CHAIN_DEPTH} images"),
                });
            }
            let linkage = locator.parent_linkage().map_err(|e| Error::Parent {
                child: child.name.clone(),
                reason: e.to_string(),
            })?;
            let linkage2: Option<Guid> =
                locator.get("parent_linkage2").and_then(|v| v.parse().ok());
            let (parent_name, source) = resolver.open_parent(&child.name, &locator)?;
            if layers.iter().any(|l| l.name == parent_name) {
                return Err(Error::Parent {
                    child: child.name.clone(),
                    reason: format!("loop: {parent_name} is already in the chain"),
                });
            }
            let parent =
                VhdxFile::open_with_findings(source, findings).map_err(|e| Error::Parent {
                    child: child.name.clone(),
                    reason: format!("{parent_name}: {e}"),
                })?;
            let data_write_guid = parent.header.data_write_guid;
            if data_write_guid != linkage && Some(data_write_guid) != linkage2 {
                return Err(Error::Parent {
                    child: child.name.clone(),
                    reason: format!(
                        "parent_linkage {linkage} does not match {parent_name}'s DataWriteGuid {data_write_guid}: the parent changed after the child was made"
                    ),
                });
            }
            if parent.metadata.logical_sector_size != child.file.metadata.logical_sector_size {
                return Err(Error::Parent {
                    child: child.name.clone(),
                    reason: format!(
                        "logical sector size {} differs from the parent's {}",
                        child.file.metadata.logical_sector_size,
                        parent.metadata.logical_sector_size
                    ),
                });
            }
            layers.push(Layer {
                name: parent_name,
                file: parent,
            });
        }
        Ok(Disk { layers })
    }

    /// The top image.
    pub fn top(&self) -> &VhdxFile {
        &self.layers[0].file
    }

    /// All layers, top first.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    pub fn virtual_size(&self) -> u64 {
        self.top().metadata.virtual_size
    }

    pub fn logical_sector_size(&self) -> u32 {
        self.top().metadata.logical_sector_size
    }

    /// Map `[offset, offset+len)` to pieces, in any order.
    fn resolve(&self, offset: u64, len: u64, out: &mut Vec<Piece>) -> Result<()> {
        let mut work = vec![(0usize, offset, len)];
        while let Some((li, start, len)) = work.pop() {
            let file = &self.layers[li].file;
            let g = &file.geometry;
            let end = start + len;
            let inside_end = end.min(g.virtual_size.max(start));
            if inside_end < end {
                // A parent smaller than its child reads zeros past its end.
                out.push(Piece {
                    offset: inside_end,
                    len: end - inside_end,
                    source: Source::Unallocated,
                });
            }
            let has_parent = li + 1 < self.layers.len();
            let mut pos = start;
            while pos < inside_end {
                let block = pos / g.block_size;
                let in_block = pos % g.block_size;
                let n = (inside_end - pos).min(g.block_size - in_block);
                let entry = file.payload_entry(block);
                let mut emit = |source| {
                    out.push(Piece {
                        offset: pos,
                        len: n,
                        source,
                    })
                };
                match entry.state() {
                    BlockState::FullyPresent => emit(Source::Data {
                        layer: li,
                        file_offset: entry.file_offset() + in_block,
                    }),
                    BlockState::NotPresent if has_parent => work.push((li + 1, pos, n)),
                    BlockState::NotPresent => emit(Source::Unallocated),
                    BlockState::Zero
                    | BlockState::Undefined
                    | BlockState::Unmapped
                    | BlockState::Reserved(5) => emit(Source::Zero),
                    BlockState::PartiallyPresent if has_parent => {
                        let ss = g.logical_sector_size;
                        let first = in_block / ss;
                        let last = (in_block + n - 1) / ss;
                        let bits = file.sector_bits(block, first, last - first + 1)?;
                        let mut i = 0usize;
                        while i < bits.len() {
                            let mut j = i;
                            while j + 1 < bits.len() && bits[j + 1] == bits[i] {
                                j += 1;
                            }
                            let block_start = block * g.block_size;
                            let run_start = (block_start + (first + i as u64) * ss).max(pos);
                            let run_end = (block_start + (first + j as u64 + 1) * ss).min(pos + n);
                            if bits[i] {
                                let file_offset = entry.file_offset() + (run_start - block_start);
                                out.push(Piece {
                                    offset: run_start,
                                    len: run_end - run_start,
                                    source: Source::Data {
                                        layer: li,
                                        file_offset,
                                    },
                                });
                            } else {
                                work.push((li + 1, run_start, run_end - run_start));
                            }
                            i = j + 1;
                        }
                    }
                    other => {
                        return Err(Error::invalid(
                            "BAT",
                            file.regions.bat.file_offset
                                + g.payload_index(block) * crate::bat::ENTRY_SIZE,
                            format!(
                                "payload block {block} of {} has state {} and cannot be read",
                                self.layers[li].name,
                                other.name()
                            ),
                        ))
                    }
                }
                pos += n;
            }
        }
        Ok(())
    }

    /// Map `[offset, offset+len)` to segments in offset order: where each part's bytes are.
    pub fn map(&self, offset: u64, len: u64) -> Result<Vec<Segment>> {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.virtual_size())
        {
            return Err(Error::OutOfRange {
                offset,
                len,
                size: self.virtual_size(),
            });
        }
        let mut pieces = Vec::new();
        self.resolve(offset, len, &mut pieces)?;
        pieces.sort_unstable_by_key(|p| p.offset);
        Ok(pieces
            .into_iter()
            .map(|p| match p.source {
                Source::Data { layer, file_offset } => Segment {
                    offset: p.offset,
                    len: p.len,
                    kind: ExtentKind::Data,
                    layer,
                    file_offset,
                },
                Source::Zero => Segment {
                    offset: p.offset,
                    len: p.len,
                    kind: ExtentKind::Zero,
                    layer: 0,
                    file_offset: 0,
                },
                Source::Unallocated => Segment {
                    offset: p.offset,
                    len: p.len,
                    kind: ExtentKind::Unallocated,
                    layer: 0,
                    file_offset: 0,
                },
            })
            .collect())
    }

    /// The file holding a data segment's bytes verbatim, if any (no replayed log over it).
    pub fn segment_file(&self, segment: &Segment) -> Option<(&std::fs::File, u64)> {
        if segment.kind != ExtentKind::Data {
            return None;
        }
        self.layers[segment.layer]
            .file
            .view()
            .file_range(segment.file_offset, segment.len)
    }

    /// A data segment's bytes in place, when its file is memory-mapped (no replayed log over it).
    pub fn segment_bytes(&self, segment: &Segment) -> Option<&[u8]> {
        if segment.kind != ExtentKind::Data {
            return None;
        }
        self.layers[segment.layer]
            .file
            .view()
            .mapped(segment.file_offset, segment.len)
    }

    /// The caller is done with virtual `[offset, offset+len)` for now: memory-mapped layers drop
    /// those payload pages from the process, so one pass over a big disk keeps a bounded
    /// resident set (see [`ReadAt::release`]). Ranges that cannot be mapped are ignored.
    pub fn release(&self, offset: u64, len: u64) {
        let Ok(segments) = self.map(offset, len) else {
            return;
        };
        for seg in segments.iter().filter(|s| s.kind == ExtentKind::Data) {
            self.layers[seg.layer]
                .file
                .view()
                .release(seg.file_offset, seg.len);
        }
    }

    /// Whether the payload bytes [`Disk::segment_bytes`] handed out were really the images':
    /// an error naming the image when one shrank while mapped (its pages past the new end
    /// read as zeros; see [`ReadAt::check_mapped`]). Check after using lent bytes.
    pub fn check_mapped(&self) -> Result<()> {
        self.layers.iter().try_for_each(|layer| {
            layer
                .file
                .view()
                .check_mapped()
                .map_err(|source| Error::FileChanged {
                    file: layer.name.clone(),
                    source,
                })
        })
    }

    /// Read a data segment's bytes.
    pub fn read_segment(&self, segment: &Segment, buf: &mut [u8]) -> Result<()> {
        assert_eq!(buf.len() as u64, segment.len);
        match segment.kind {
            ExtentKind::Data => self.layers[segment.layer]
                .file
                .view()
                .read_at(segment.file_offset, buf)
                .map_err(|source| Error::Io {
                    structure: "payload block",
                    offset: segment.file_offset,
                    source,
                }),
            ExtentKind::Zero | ExtentKind::Unallocated => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// Read `buf.len()` bytes at virtual `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        for seg in self.map(offset, buf.len() as u64)? {
            let at = (seg.offset - offset) as usize;
            self.read_segment(&seg, &mut buf[at..at + seg.len as usize])?;
        }
        Ok(())
    }

    /// Extents of the whole disk in order, adjacent runs of one kind merged.
    pub fn extents(&self) -> Extents<'_> {
        Extents {
            disk: self,
            next: 0,
            end: self.virtual_size(),
            pending: VecDeque::new(),
            current: None,
            failed: false,
        }
    }
}

fn with_name(e: Error, name: &str) -> Error {
    match e {
        Error::Io {
            structure: "file",
            offset,
            source,
        } => Error::Io {
            structure: "file",
            offset,
            source: std::io::Error::new(source.kind(), format!("{name}: {source}")),
        },
        other => other,
    }
}

/// Iterator over a disk's extents; see [`Disk::extents`].
#[derive(Debug)]
pub struct Extents<'a> {
    disk: &'a Disk,
    next: u64,
    end: u64,
    pending: VecDeque<Extent>,
    current: Option<Extent>,
    failed: bool,
}

impl Iterator for Extents<'_> {
    type Item = Result<Extent>;

    fn next(&mut self) -> Option<Result<Extent>> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(p) = self.pending.pop_front() {
                match &mut self.current {
                    Some(c) if c.kind == p.kind && c.offset + c.len == p.offset => c.len += p.len,
                    _ => {
                        if let Some(done) = self.current.replace(p) {
                            return Some(Ok(done));
                        }
                    }
                }
                continue;
            }
            if self.next >= self.end {
                return self.current.take().map(Ok);
            }
            // Classify one block of the top image at a time.
            let block_size = self.disk.top().geometry.block_size;
            let chunk_end = ((self.next / block_size + 1) * block_size).min(self.end);
            match self.disk.map(self.next, chunk_end - self.next) {
                Ok(segments) => self.pending.extend(segments.into_iter().map(|s| Extent {
                    offset: s.offset,
                    len: s.len,
                    kind: s.kind,
                })),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
            self.next = chunk_end;
        }
    }
}
