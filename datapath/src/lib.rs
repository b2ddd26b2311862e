//! `datapath`: keys, change tracking, the block pipeline, the replica layout, the replicator
//! and restore, over any `pageblob::PageBlobStore`.
//!
//! - [`registration`] and [`keys`]: vault credentials, .pfx, key derivation; [`policy`]:
//!   replication policies validated against the store profile.
//! - [`replica`]: block pipeline, slot records, manifests, the replica blobs and restore.
//! - [`source`]: what a cycle reads — a frozen view and what changed since the last point
//!   (a file at rest, a tracked disk, a live QEMU disk through [`live`]);
//!   [`tracking`]: the persistent change bitmap; [`cycle`]: one replication cycle;
//!   [`retention`]: which points to keep; [`replicator`]: the sans-IO state machine that
//!   schedules cycles; [`agent`]: carries out its plans for one disk; [`driver`]: the two
//!   together, stepped by the simulator or run on the system clock by `replicate --watch`;
//!   [`throttle`]: upload pacing in real time.
//! - [`mod@bench`]: `drplane bench`, the data path measured on one disk, apart from the core;
//!   [`bench::synthetic`]: seeded realistic disk content for it and for the benchmark scripts;
//!   [`cpu_clock`]: the process's and a thread's CPU time, for the pipeline's own counters.

#![forbid(unsafe_code)]

pub mod agent;
pub mod bench;
pub mod cpu_clock;
pub mod cycle;
pub mod driver;
#[cfg(any(test, feature = "testing"))]
pub mod fuzz_targets;
pub mod keys;
pub mod live;
pub mod policy;
pub mod registration;
pub mod replica;
pub mod replicator;
pub mod retention;
pub mod source;
pub mod throttle;
pub mod tracking;
