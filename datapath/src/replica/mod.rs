//! The replica's block records: how one block of a disk is stored in its slot of the replica
//! page blob ([`slot_header`]), how it gets there and back ([`block_record`]: keyed digest,
//! zero detection, zstd, AES-256-GCM, CRC-32C), and where the GCM nonces come from ([`nonce`]).
//! Format: docs/replica-format.md.

pub mod batch;
pub mod block_record;
pub mod disk_replica;
pub mod manifest;
pub mod nonce;
pub mod slot_header;
