//! `datapath`: keys, change tracking, the block pipeline, the replica layout, the page-blob
//! store, the replicator and restore.
//!
//! Landed so far: the injected [`clock`]; the [`pageblob`] store (Azure page-blob semantics,
//! the crash-safe emulator, the REST server and client); [`registration`] and [`keys`] (.pfx
//! and key derivation); [`policy`]; [`tracking`] (the persistent change bitmap); and
//! [`replica`] (the block pipeline and slot record). The replicator, recovery points and
//! restore follow with issue 4.

#![forbid(unsafe_code)]

pub mod clock;
#[cfg(any(test, feature = "testing"))]
pub mod fuzz_targets;
pub mod keys;
pub mod pageblob;
pub mod policy;
pub mod registration;
pub mod replica;
pub mod replicate;
pub mod tracking;
