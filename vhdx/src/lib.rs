//! `vhdx`: the MS-VHDX virtual disk format, read and write.
//!
//! This crate owns everything about the format and nothing else: pure decoders for every
//! on-disk structure (one module each), log replay into an in-memory overlay, differencing
//! chains, and the virtual-disk view that the data path reads. It depends on nothing of ours.
//!
//! Layers, bottom up:
//! - structures: [`file_identifier`], [`header`], [`region_table`], [`metadata`],
//!   [`parent_locator`], [`bat`], [`log_entry`] — each `decode(&[u8]) -> Result` and `encode`;
//! - [`log_replay`]: active sequence search and the replay overlay;
//! - [`image`]: one file opened and validated; [`disk`]: a chain read at virtual offsets;
//! - [`io`]: the `ReadAt`/`WriteAt` seam (memory-mapped files, `pread`/`pwrite`, bytes);
//! - [`create`]: laying out a new file; [`writer`]: writing through the log; [`import`]: a raw
//!   image into a new VHDX, zero stretches left unallocated.
//!
//! Hostile input is an `Err` naming the structure and file offset: every count and size read
//! from a file is checked against the file before anything is allocated from it.

#![forbid(unsafe_op_in_unsafe_fn)]

pub mod bat;
pub mod checksum;
pub mod create;
pub mod disk;
pub mod error;
pub mod export;
pub mod file_identifier;
#[cfg(any(test, feature = "testing"))]
pub mod fuzz_targets;
pub mod guid;
pub mod header;
pub mod image;
pub mod import;
pub mod io;
pub mod layout;
mod le;
pub mod log_entry;
pub mod log_replay;
pub mod map_guard;
pub mod metadata;
pub mod parent_locator;
pub mod region_table;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod view;
pub mod writer;

pub use disk::{
    CheckReport, Disk, Extent, ExtentKind, FileSystemResolver, MemoryResolver, NoParents,
    ParentResolver,
};
pub use error::{Error, Result};
pub use guid::Guid;
pub use image::{LogState, VhdxFile};
pub use io::{MappedFile, MemoryFile, PositionalFile, ReadAt, ReadWriteFile, WriteAt};
pub use writer::{CreateOptions, VhdxWriter};
