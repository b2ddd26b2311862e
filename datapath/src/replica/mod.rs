//! The replica of a disk in page blobs: how one block is stored in its slot ([`slot_header`]),
//! how it gets there and back ([`block_record`]: keyed digest, zero detection, zstd,
//! AES-256-GCM, CRC-32C), where the GCM nonces come from ([`nonce`]), the recovery-point
//! [`manifest`] and the [`merkle`] tree its root comes from, the replica's blobs
//! ([`disk_replica`]), how a point comes back ([`restore`]) and how a chain of points is
//! verified at the cost of what changed ([`point_chain`]), how a reader holds a point against
//! retention ([`point_hold`]), what a replica may be called
//! ([`replica_name`]), the premium [`staging_log`], and the [`fence`] that keeps one writer
//! per replica. Format: docs/replica-format.md.

pub mod batch;
pub mod block_record;
pub mod disk_replica;
pub mod epoch_record;
pub mod error;
pub mod fence;
pub mod manifest;
pub mod merkle;
pub mod nonce;
pub mod point_chain;
pub mod point_hold;
pub mod replica_name;
pub mod restore;
pub mod slot_header;
pub mod staging_log;
pub mod staging_log_format;
