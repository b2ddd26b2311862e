//! `datapath`: keys, change tracking, the block pipeline, the replica layout, the page-blob
//! store, the replicator and restore.
//!
//! Empty until the data-path issues land; it exists now so the workspace has its final shape
//! and the dependency direction (vhdx ← datapath ← sim ← CLI) is fixed from the start.

#![forbid(unsafe_code)]
