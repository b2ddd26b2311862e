//! Requests and answers of the page-blob API, shared by every store implementation.

use serde::{Deserialize, Serialize};

pub use super::blob_headers::{BlobHeaders, ContentHeaders, Metadata};
use super::extent_map::PageRange;

/// Page size of page blobs: offsets and lengths are multiples of it.
pub const PAGE_SIZE: u64 = 512;
/// Largest page blob (8 TiB).
pub const MAX_BLOB_SIZE: u64 = 8 << 40;
/// Largest Put Page body (4 MiB).
pub const MAX_PUT_PAGES_BYTES: u64 = 4 << 20;
/// Most ranges one Get Page Ranges answer carries.
pub const MAX_RANGES_PER_ANSWER: usize = 10_000;
/// Largest sequence number (2^63 − 1).
pub const MAX_SEQUENCE_NUMBER: u64 = i64::MAX as u64;

/// A blob by container and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlobPath {
    pub container: String,
    pub blob: String,
}

impl BlobPath {
    pub fn new(container: &str, blob: &str) -> BlobPath {
        BlobPath {
            container: container.into(),
            blob: blob.into(),
        }
    }
}

impl std::fmt::Display for BlobPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.container, self.blob)
    }
}

/// Blob properties as Get Blob Properties reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    pub size: u64,
    /// Quoted, as sent in the `ETag` header.
    pub etag: String,
    /// Nanoseconds since the epoch.
    pub last_modified: u64,
    pub sequence_number: u64,
    /// Snapshot id when these are a snapshot's properties.
    pub snapshot: Option<String>,
    pub lease_state: LeaseStateName,
    /// Set on the destination of an incremental copy.
    pub copy: Option<CopyInfo>,
    /// Whether the held lease is infinite or fixed (`x-ms-lease-duration`); `None` unleased.
    pub lease_duration: Option<LeaseDuration>,
    pub metadata: Metadata,
    pub content: ContentHeaders,
}

/// Container properties as Get Container Properties reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerProperties {
    pub etag: String,
    /// Nanoseconds since the epoch.
    pub last_modified: u64,
    pub metadata: Metadata,
}

/// State of an incremental copy, as Get Blob Properties reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyInfo {
    pub id: String,
    /// `container/blob` of the source.
    pub source: String,
    /// The source snapshot copied last (or being copied).
    pub source_snapshot: String,
    /// `pending`, `success` or `failed`.
    pub status: String,
    /// The destination's snapshot that holds this copy, once it succeeded
    /// (`x-ms-copy-destination-snapshot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_snapshot: Option<String>,
    /// When the copy finished (nanoseconds), once it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<u64>,
}

/// `x-ms-lease-state` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LeaseStateName {
    #[default]
    Available,
    Leased,
    Expired,
    Breaking,
    Broken,
}

impl LeaseStateName {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseStateName::Available => "available",
            LeaseStateName::Leased => "leased",
            LeaseStateName::Expired => "expired",
            LeaseStateName::Breaking => "breaking",
            LeaseStateName::Broken => "broken",
        }
    }

    /// The state as `x-ms-lease-state` or a listing's `LeaseState` names it; anything else
    /// (or nothing) is `Available`.
    pub fn parse(name: &str) -> LeaseStateName {
        match name {
            "leased" => LeaseStateName::Leased,
            "expired" => LeaseStateName::Expired,
            "breaking" => LeaseStateName::Breaking,
            "broken" => LeaseStateName::Broken,
            _ => LeaseStateName::Available,
        }
    }
}

/// `x-ms-lease-duration` of a held lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseDuration {
    Infinite,
    Fixed,
}

impl LeaseDuration {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseDuration::Infinite => "infinite",
            LeaseDuration::Fixed => "fixed",
        }
    }
}

/// Most writes a batch goes in at once: the replicator's writers take up to this many records
/// per batch, and the HTTP client pipelines this many requests before reading their answers
/// (which must fit in the socket's receive buffer while the requests are still being written).
pub const PIPELINE_DEPTH: usize = 32;

/// A sync a store owes for writes it applied without waiting for one
/// ([`put_pages_owing_sync`](crate::PageBlobStore::put_pages_owing_sync));
/// [`sync_owed`](crate::PageBlobStore::sync_owed) pays it. Tickets of one store are ordered:
/// paying one pays every earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SyncTicket(pub u64);

/// One write of [`PageBlobStore::put_pages_batch`](crate::PageBlobStore::put_pages_batch):
/// `data` (512-aligned, at most 4 MiB) at `offset` of the blob at `path`.
#[derive(Clone, Copy, Debug)]
pub struct PageWrite<'a> {
    pub path: &'a BlobPath,
    pub offset: u64,
    pub data: &'a [u8],
}

/// One read of [`PageBlobStore::read_batch`](crate::PageBlobStore::read_batch): `buf.len()`
/// bytes at `offset` of the blob at `path` (of its `snapshot`, where given).
#[derive(Debug)]
pub struct PageRead<'a> {
    pub path: &'a BlobPath,
    pub snapshot: Option<&'a str>,
    pub offset: u64,
    pub buf: &'a mut [u8],
}

/// Access conditions of a request (`If-*`, `x-ms-if-sequence-number-*`, `x-ms-lease-id`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    pub if_match: Option<String>,
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<u64>,
    pub if_unmodified_since: Option<u64>,
    pub if_sequence_number_le: Option<u64>,
    pub if_sequence_number_lt: Option<u64>,
    pub if_sequence_number_eq: Option<u64>,
    pub lease_id: Option<String>,
}

/// `x-ms-sequence-number-action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceNumberAction {
    Max(u64),
    Update(u64),
    Increment,
}

/// `x-ms-delete-snapshots`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeleteSnapshots {
    /// Delete the blob and its snapshots.
    Include,
    /// Delete only the snapshots.
    Only,
}

/// `x-ms-lease-action` with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAction {
    /// Duration 15–60 s, or `None` for an infinite lease.
    Acquire {
        proposed_id: String,
        duration_secs: Option<u32>,
    },
    Renew {
        id: String,
    },
    Release {
        id: String,
    },
    Change {
        id: String,
        proposed_id: String,
    },
    /// Break period 0–60 s; `None`: the remaining lease time (immediately for infinite).
    Break {
        period_secs: Option<u32>,
    },
}

/// What a lease operation answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAnswer {
    pub lease_id: Option<String>,
    /// Seconds until a breaking lease is broken.
    pub lease_time_secs: Option<u64>,
    pub etag: String,
}

/// A page of Get Page Ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRangeList {
    pub ranges: Vec<PageRange>,
    /// Where the listing goes on (Azure's `NextMarker`): opaque, given back unchanged as the
    /// next call's `marker`. This crate's stores make it the byte offset to continue from;
    /// Azure's are tokens, not numbers.
    pub next_marker: Option<String>,
}

/// One blob (or snapshot) in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobListing {
    pub name: String,
    pub properties: Properties,
}

/// Storage profile: what the modelled account allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Profile {
    Standard,
    /// Premium page blobs: at most 100 snapshots per blob; optionally one per 10 minutes.
    Premium {
        snapshot_spacing: bool,
    },
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Profile {
    /// Snapshots one blob may keep.
    pub fn max_snapshots_per_blob(self) -> Option<usize> {
        match self {
            Profile::Standard => None,
            Profile::Premium { .. } => Some(100),
        }
    }

    /// Least time between two snapshots of one blob.
    pub fn min_snapshot_spacing_nanos(self) -> Option<u64> {
        match self {
            Profile::Premium {
                snapshot_spacing: true,
            } => Some(10 * 60 * 1_000_000_000),
            _ => None,
        }
    }

    /// The name [`parse`](Self::parse) reads (`standard`, `premium`, `premium-spaced`).
    pub fn name(self) -> &'static str {
        match self {
            Profile::Standard => "standard",
            Profile::Premium {
                snapshot_spacing: false,
            } => "premium",
            Profile::Premium {
                snapshot_spacing: true,
            } => "premium-spaced",
        }
    }

    pub fn parse(name: &str) -> Option<Profile> {
        match name {
            "standard" => Some(Profile::Standard),
            "premium" => Some(Profile::Premium {
                snapshot_spacing: false,
            }),
            "premium-spaced" => Some(Profile::Premium {
                snapshot_spacing: true,
            }),
            _ => None,
        }
    }
}
