//! `datapath`: keys, change tracking, the block pipeline, the replica layout, the page-blob
//! store, the replicator and restore.
//!
//! Landed so far: the injected [`clock`] and the [`pageblob`] store (Azure page-blob
//! semantics, the embedded crash-safe emulator). Keys, tracking, pipeline and replicator
//! follow with issue 4.

#![forbid(unsafe_code)]

pub mod clock;
pub mod pageblob;
