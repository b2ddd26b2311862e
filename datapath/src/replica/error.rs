//! [`ReplicaError`]: what can go wrong with a replica, from the store up to a point's proof.

use super::block_record::RecordError;
use super::epoch_record::EpochRecordError;
use super::manifest::ManifestError;
use super::staging_log_format::StagingLogError;
use pageblob::StoreError;

/// What went wrong with a replica.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("point {point}, block {block}: {source}")]
    Block {
        point: String,
        block: u64,
        source: RecordError,
    },
    #[error("point {point}: {source}")]
    Manifest { point: u64, source: ManifestError },
    #[error("point {point}: Merkle root of the restored blocks does not match the manifest")]
    MerkleMismatch { point: String },
    #[error("staging log {path} at {offset:#x}: {why}")]
    StagingLog {
        path: String,
        offset: u64,
        why: StagingLogError,
    },
    #[error("journal is full: point {sequence} would overwrite live point {live}")]
    JournalFull { sequence: u64, live: u64 },
    #[error(
        "journal slot of point {sequence} already holds a manifest: another writer committed \
         point {sequence} of this replica"
    )]
    PointTaken { sequence: u64 },
    #[error("replica name {name:?}: {why}")]
    BadName { name: String, why: String },
    /// The replica's data blob (a slot per block) would be past a page blob's largest size.
    #[error(
        "the disk is {disk_size} bytes: its replica's data blob would be {blob_size} bytes (a \
         slot of 512 + {block_size} bytes per block), past a page blob's 8 TiB; disks of up to \
         {largest} bytes can be replicated with {block_size}-byte blocks"
    )]
    DiskTooLarge {
        disk_size: u64,
        block_size: u32,
        blob_size: u64,
        largest: u64,
    },
    /// The replica's points were written with another certificate than the .pfx given: none
    /// authenticates and all name one other thumbprint, or (keys alike) the newest names
    /// another.
    #[error("this replica was written with certificate {found}; the .pfx given is {given}")]
    OtherCertificate { found: String, given: String },
    #[error("no replica named {name} (its {blob} blob is missing)")]
    NoReplica { name: String, blob: String },
    #[error("{blob}: {source}")]
    Epochs {
        blob: String,
        source: EpochRecordError,
    },
    #[error("{blob}: every nonce epoch is used")]
    EpochsExhausted { blob: String },
    /// A later writer took the replica over (`DiskReplica::take_over`): this writer's write
    /// was refused, so it commits nothing more.
    #[error(
        "{blob}: another writer took this replica over (this writer's fence, sequence number \
         {fence}, was replaced); this writer stopped and commits nothing more"
    )]
    TakenOver { blob: String, fence: u64 },
    /// Two writers claimed a nonce epoch at the same moment: this one's claim was refused, so
    /// no epoch (and no nonce) is ever shared.
    #[error(
        "{blob}: another writer claimed a nonce epoch of this replica at the same moment (or this \
         writer's claim landed and its answer was lost); nothing uses that epoch: run again"
    )]
    EpochClaimRaced { blob: String },
}

impl ReplicaError {
    /// The error of a write to `blob` by a writer fenced with `fence` (`None`: unfenced): a
    /// refused fence is [`ReplicaError::TakenOver`].
    pub(crate) fn of_fenced_write(
        fence: Option<u64>,
        blob: &pageblob::BlobPath,
        e: StoreError,
    ) -> ReplicaError {
        match fence {
            Some(fence) if e.code() == Some(pageblob::ErrorCode::SequenceNumberConditionNotMet) => {
                ReplicaError::TakenOver {
                    blob: blob.to_string(),
                    fence,
                }
            }
            _ => e.into(),
        }
    }
}
