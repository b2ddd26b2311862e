//! `datapath`: keys, change tracking, the block pipeline, the replica layout, the page-blob
//! store, the replicator and restore.
//!
//! - [`clock`]: injected time; [`registration`] and [`keys`]: vault credentials, .pfx, key
//!   derivation; [`policy`]: replication policies validated against the store profile.
//! - [`pageblob`]: the store (Azure page-blob semantics, crash-safe emulator, REST server and
//!   client).
//! - [`replica`]: block pipeline, slot records, manifests, the replica blobs and restore.
//! - [`tracking`]: the persistent change bitmap; [`cycle`]: one replication cycle;
//!   [`retention`]: which points to keep; [`replicator`]: the sans-IO state machine that
//!   schedules cycles; [`agent`]: carries out its plans for one disk; [`throttle`]: upload
//!   pacing for the real driver.
//! - [`mod@bench`]: `drplane bench`, the data path measured on one disk; [`synthetic`]: seeded
//!   realistic disk content for it and for the benchmark scripts.

#![forbid(unsafe_code)]

pub mod agent;
pub mod bench;
pub mod clock;
pub mod cycle;
#[cfg(any(test, feature = "testing"))]
pub mod fuzz_targets;
pub mod keys;
pub mod pageblob;
pub mod policy;
pub mod registration;
pub mod replica;
pub mod replicator;
pub mod retention;
pub mod synthetic;
pub mod throttle;
pub mod tracking;
