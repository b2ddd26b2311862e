//! The semantics of a storage account's page blobs, with no I/O: requests are checked against
//! the state and turned into [`Effect`]s; applying an effect is the only way state changes.
//! The emulator logs each effect before applying it, and replays the log on open, so the
//! state after a crash is exactly the state of the acknowledged effects.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::blob_headers::{BlobHeaders, ContentHeaders, Metadata, MetadataError, PropertyChanges};
use super::error::{ErrorCode, StoreError, StoreResult};
use super::extent_map::{ExtentMap, PageRange};
use super::names::{blob_name_error, container_name_error};
use super::timestamp::{parse_snapshot_id, snapshot_id};
use super::types::*;

/// A state change, as logged. Data bytes are not here: page writes go to the blob's home file
/// (`WritePages` records where), and copy-on-write copies to the data log (`Relocate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    CreateContainer {
        name: String,
        time: u64,
        #[serde(default, skip_serializing_if = "Metadata::is_empty")]
        metadata: Metadata,
    },
    /// Create or replace a blob (a new incarnation; existing snapshots stay).
    CreateBlob {
        path: BlobPath,
        size: u64,
        sequence_number: u64,
        time: u64,
        #[serde(default, skip_serializing_if = "Metadata::is_empty")]
        metadata: Metadata,
        #[serde(default, skip_serializing_if = "ContentHeaders::is_empty")]
        content: ContentHeaders,
    },
    /// Replace a blob's metadata.
    SetMetadata {
        path: BlobPath,
        metadata: Metadata,
        time: u64,
    },
    /// Replace a blob's content headers.
    SetContentHeaders {
        path: BlobPath,
        content: ContentHeaders,
        time: u64,
    },
    /// Replace a container's metadata.
    SetContainerMetadata {
        name: String,
        metadata: Metadata,
        time: u64,
    },
    /// Write data (stored at home location `data`), or clear when `data` is `None`.
    WritePages {
        path: BlobPath,
        offset: u64,
        len: u64,
        data: Option<u64>,
        time: u64,
    },
    Resize {
        path: BlobPath,
        size: u64,
        time: u64,
    },
    /// Several effects of one request (Set Blob Properties with several parts), logged as one
    /// record so that a crash leaves all of them or none.
    Together {
        effects: Vec<Effect>,
    },
    SetSequenceNumber {
        path: BlobPath,
        value: u64,
        time: u64,
    },
    Snapshot {
        path: BlobPath,
        id: u64,
        time: u64,
    },
    /// Delete the blob (`base`), its snapshots (`snapshots`), or one snapshot.
    Delete {
        path: BlobPath,
        snapshot: Option<u64>,
        base: bool,
        snapshots: bool,
    },
    Lease {
        path: BlobPath,
        lease: Lease,
        time: u64,
    },
    /// An incremental copy into `path` started (`done` false) or finished (`done` true).
    Copy {
        path: BlobPath,
        info: CopyInfo,
        done: bool,
    },
    /// Copy-on-write: the home bytes `[offset, offset+len)` of the blob's current incarnation
    /// were copied to the data log at `data`; the listed snapshots now read them from there.
    Relocate {
        path: BlobPath,
        snapshots: Vec<u64>,
        offset: u64,
        len: u64,
        data: Option<u64>,
    },
}

/// `(virtual offset, length, data location)` runs of a read.
pub type ReadRuns = Vec<(u64, u64, u64)>;

/// Lease state as stored (times in nanoseconds).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Lease {
    #[default]
    Available,
    Leased {
        id: String,
        expires: Option<u64>,
    },
    Breaking {
        id: String,
        broken_at: u64,
    },
    /// Broken; written by stores from before the holder's id was kept (any id releases it).
    Broken,
    /// Broken: the holder `id` may still release it.
    BrokenFrom {
        id: String,
    },
    Released,
}

impl Lease {
    /// The lease as it stands at `now` (leases expire and breaks complete with time).
    fn at(&self, now: u64) -> Lease {
        match self {
            Lease::Leased {
                expires: Some(t), ..
            } if now >= *t => Lease::Released,
            Lease::Breaking { broken_at, id } if now >= *broken_at => {
                Lease::BrokenFrom { id: id.clone() }
            }
            other => other.clone(),
        }
    }

    fn state_name(&self, now: u64) -> LeaseStateName {
        match (self, self.at(now)) {
            (Lease::Leased { .. }, Lease::Released) => LeaseStateName::Expired,
            (_, Lease::Available | Lease::Released) => LeaseStateName::Available,
            (_, Lease::Leased { .. }) => LeaseStateName::Leased,
            (_, Lease::Breaking { .. }) => LeaseStateName::Breaking,
            (_, Lease::Broken | Lease::BrokenFrom { .. }) => LeaseStateName::Broken,
        }
    }
}

#[derive(Debug, Clone)]
struct Version {
    size: u64,
    map: ExtentMap,
    /// Effect number of the last change (ETag source).
    changed_at: u64,
    last_modified: u64,
    sequence_number: u64,
    /// Effect number that created the blob this version belongs to.
    incarnation: u64,
    /// Effect number when a snapshot was taken (diff baseline).
    taken_at: u64,
    /// Effect number of the last resize that made the blob smaller (0: none).
    shrunk_at: u64,
    metadata: Metadata,
    content: ContentHeaders,
}

#[derive(Debug, Clone)]
struct Blob {
    /// `None` when only snapshots remain.
    base: Option<Version>,
    snapshots: BTreeMap<u64, Version>,
    /// The snapshots by the operation that took them (`Version::taken_at` → id): a write to
    /// the home file looks up only those its filter lets through
    /// ([`Account::snapshots_sharing_home`]) instead of walking all of them.
    taken: BTreeMap<u64, u64>,
    lease: Lease,
    /// Set when the blob is the destination of incremental copies.
    copy: Option<CopyInfo>,
}

#[derive(Debug, Clone, Default)]
struct Container {
    blobs: BTreeMap<String, Blob>,
    metadata: Metadata,
    /// Effect number of the last change to the container itself (ETag source).
    changed_at: u64,
    last_modified: u64,
}

/// All containers and blobs of one account.
#[derive(Debug, Clone)]
pub struct Account {
    profile: Profile,
    containers: BTreeMap<String, Container>,
    /// Effects applied so far: the store-wide write sequence.
    applied: u64,
}

fn err<T>(code: ErrorCode, message: impl Into<String>) -> StoreResult<T> {
    Err(StoreError::service(code, message))
}

fn etag(changed_at: u64) -> String {
    format!("\"0x8D{changed_at:014X}\"")
}

/// Check `offset`/`len` are page aligned and inside `size` (416 InvalidPageRange otherwise).
fn check_page_range(path: &BlobPath, offset: u64, len: u64, size: u64) -> StoreResult<()> {
    let end = offset.checked_add(len);
    if offset % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 || len == 0 || end.is_none_or(|e| e > size) {
        return err(
            ErrorCode::InvalidPageRange,
            format!(
                "{path}: range {offset}+{len} is not 512-byte aligned inside the {size}-byte blob"
            ),
        );
    }
    Ok(())
}

/// Azure's rules for metadata, as a service error.
fn check_metadata(metadata: &Metadata) -> StoreResult<()> {
    match super::blob_headers::check_metadata(metadata) {
        Ok(()) => Ok(()),
        Err(MetadataError::Invalid(why)) => err(ErrorCode::InvalidMetadata, why),
        Err(MetadataError::TooLarge(why)) => err(ErrorCode::MetadataTooLarge, why),
    }
}

/// Content headers a later read can answer with.
fn check_content(content: &ContentHeaders) -> StoreResult<()> {
    content
        .check()
        .or_else(|why| err(ErrorCode::InvalidHeaderValue, why))
}

fn check_size(size: u64) -> StoreResult<()> {
    if size % PAGE_SIZE != 0 || size > MAX_BLOB_SIZE {
        return err(
            ErrorCode::InvalidHeaderValue,
            format!("blob size {size} is not a multiple of 512 up to 8 TiB"),
        );
    }
    Ok(())
}

impl Account {
    pub fn new(profile: Profile) -> Account {
        Account {
            profile,
            containers: BTreeMap::new(),
            applied: 0,
        }
    }

    /// Effects applied so far.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Apply an effect (checked before, or read back from the log).
    pub fn apply(&mut self, effect: &Effect) {
        self.applied += 1;
        let seq = self.applied;
        match effect {
            Effect::CreateContainer {
                name,
                time,
                metadata,
            } => {
                let c = self.containers.entry(name.clone()).or_default();
                c.metadata = metadata.clone();
                c.changed_at = seq;
                c.last_modified = *time;
            }
            Effect::SetContainerMetadata {
                name,
                metadata,
                time,
            } => {
                if let Some(c) = self.containers.get_mut(name) {
                    c.metadata = metadata.clone();
                    c.changed_at = seq;
                    c.last_modified = *time;
                }
            }
            Effect::SetMetadata {
                path,
                metadata,
                time,
            } => self.change_base(path, seq, *time, |v| v.metadata = metadata.clone()),
            Effect::SetContentHeaders {
                path,
                content,
                time,
            } => self.change_base(path, seq, *time, |v| v.content = content.clone()),
            Effect::CreateBlob {
                path,
                size,
                sequence_number,
                time,
                metadata,
                content,
            } => {
                let container = self.containers.entry(path.container.clone()).or_default();
                let blob = container
                    .blobs
                    .entry(path.blob.clone())
                    .or_insert_with(|| Blob {
                        copy: None,
                        base: None,
                        snapshots: BTreeMap::new(),
                        taken: BTreeMap::new(),
                        lease: Lease::Available,
                    });
                blob.base = Some(Version {
                    size: *size,
                    map: ExtentMap::default(),
                    changed_at: seq,
                    last_modified: *time,
                    sequence_number: *sequence_number,
                    incarnation: seq,
                    taken_at: 0,
                    shrunk_at: 0,
                    metadata: metadata.clone(),
                    content: content.clone(),
                });
            }
            Effect::WritePages {
                path,
                offset,
                len,
                data,
                time,
            } => {
                if let Some(v) = self.base_mut(path) {
                    v.map.insert(*offset, *len, seq, *data);
                    v.changed_at = seq;
                    v.last_modified = *time;
                }
            }
            Effect::Together { effects } => {
                for effect in effects {
                    self.apply(effect);
                }
            }
            Effect::Resize { path, size, time } => {
                if let Some(v) = self.base_mut(path) {
                    if *size < v.size {
                        v.map.truncate(*size);
                        v.shrunk_at = seq;
                    }
                    v.size = *size;
                    v.changed_at = seq;
                    v.last_modified = *time;
                }
            }
            Effect::SetSequenceNumber { path, value, time } => {
                self.change_base(path, seq, *time, |v| v.sequence_number = *value)
            }
            Effect::Snapshot { path, id, .. } => {
                if let Some(blob) = self.blob_mut(path) {
                    if let Some(base) = &blob.base {
                        let mut v = base.clone();
                        v.taken_at = seq;
                        if let Some(replaced) = blob.snapshots.insert(*id, v) {
                            blob.taken.remove(&replaced.taken_at);
                        }
                        blob.taken.insert(seq, *id);
                    }
                }
            }
            Effect::Delete {
                path,
                snapshot,
                base,
                snapshots,
            } => {
                let mut remove_blob = false;
                if let Some(blob) = self.blob_mut(path) {
                    if let Some(id) = snapshot {
                        if let Some(gone) = blob.snapshots.remove(id) {
                            blob.taken.remove(&gone.taken_at);
                        }
                    }
                    if *snapshots {
                        blob.snapshots.clear();
                        blob.taken.clear();
                    }
                    if *base {
                        blob.base = None;
                        blob.lease = Lease::Available;
                        blob.copy = None;
                    }
                    remove_blob = blob.base.is_none() && blob.snapshots.is_empty();
                }
                if remove_blob {
                    if let Some(c) = self.containers.get_mut(&path.container) {
                        c.blobs.remove(&path.blob);
                    }
                }
            }
            Effect::Lease { path, lease, .. } => {
                if let Some(blob) = self.blob_mut(path) {
                    blob.lease = lease.clone();
                }
            }
            Effect::Copy { path, info, done } => {
                if let Some(blob) = self.blob_mut(path) {
                    let mut info = info.clone();
                    info.status = if *done { "success" } else { "pending" }.into();
                    blob.copy = Some(info);
                }
            }
            Effect::Relocate {
                path,
                snapshots,
                offset,
                len,
                data,
            } => {
                let address = data.expect("a relocation carries its data");
                if let Some(blob) = self.blob_mut(path) {
                    for id in snapshots {
                        if let Some(v) = blob.snapshots.get_mut(id) {
                            v.map.relocate_home(*offset, *len, address);
                        }
                    }
                }
            }
        }
    }

    /// Mark copies that were running when the store went down as failed (derived at open).
    pub fn fail_interrupted_copies(&mut self) {
        for blob in self
            .containers
            .values_mut()
            .flat_map(|c| c.blobs.values_mut())
        {
            if let Some(c) = &mut blob.copy {
                if c.status == "pending" {
                    c.status = "failed".into();
                }
            }
        }
    }

    /// Check an incremental copy of `source` at `snapshot` into `dest`. Returns the snapshot
    /// time to copy and the previously copied one (none for the first copy).
    pub fn check_incremental_copy(
        &self,
        dest: &BlobPath,
        source: &BlobPath,
        snapshot: Option<&str>,
    ) -> StoreResult<(u64, Option<String>)> {
        let Some(snapshot) = snapshot else {
            return err(
                ErrorCode::IncrementalCopySourceMustBeSnapshot,
                format!("copy source {source} must name a snapshot"),
            );
        };
        self.version(source, Some(snapshot))?;
        let new = parse_snapshot_id(snapshot).expect("version() parsed it");
        self.container(&dest.container)?;
        match self
            .blob(dest)
            .ok()
            .and_then(|b| b.base.as_ref().map(|_| b))
        {
            None => Ok((new, None)),
            Some(blob) => {
                let Some(copy) = &blob.copy else {
                    return err(
                        ErrorCode::IncrementalCopyBlobMismatch,
                        format!("{dest} exists and is not an incremental copy"),
                    );
                };
                if copy.source != source.to_string() {
                    return err(
                        ErrorCode::IncrementalCopyBlobMismatch,
                        format!("{dest} copies {}, not {source}", copy.source),
                    );
                }
                let prev = parse_snapshot_id(&copy.source_snapshot).unwrap_or(0);
                if new <= prev {
                    return err(
                        ErrorCode::IncrementalCopyOfEarlierSnapshotNotAllowed,
                        format!(
                            "{snapshot} is not newer than the last copied {}",
                            copy.source_snapshot
                        ),
                    );
                }
                // A source snapshot deleted since the last copy leaves nothing to diff against:
                // copy everything again.
                let prev_live = self.version(source, Some(&copy.source_snapshot)).is_ok();
                Ok((new, prev_live.then(|| copy.source_snapshot.clone())))
            }
        }
    }

    /// Snapshots of `path`'s current incarnation that still read `[offset, offset+len)` from
    /// the blob's home file: they must be relocated before the home bytes are overwritten.
    pub fn snapshots_sharing_home(&self, path: &BlobPath, offset: u64, len: u64) -> Vec<u64> {
        let Ok(blob) = self.blob(path) else {
            return Vec::new();
        };
        let Some(base) = &blob.base else {
            return Vec::new();
        };
        // The filter alone is not the answer even where the range is all home data: a write
        // torn after its relocation was logged leaves the base's extent as it was while the
        // snapshots that shared it read the log now (`datapath`'s torn-cycle test found it).
        let candidates = base.map.home_readers(offset, offset + len, base.shrunk_at);
        let ids: Vec<u64> = if candidates.any {
            blob.snapshots.keys().copied().collect()
        } else {
            use std::ops::Bound::{Excluded, Unbounded};
            let mut ids: Vec<u64> = blob
                .taken
                .range((Excluded(candidates.taken_after), Unbounded))
                .chain(blob.taken.range(..candidates.taken_before))
                .map(|(_, id)| *id)
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        let shares = |v: &Version| {
            candidates.may_include(v.taken_at)
                && v.incarnation == base.incarnation
                && v.map.has_home_data(offset, offset + len)
        };
        let sharing: Vec<u64> = ids
            .into_iter()
            .filter(|id| blob.snapshots.get(id).is_some_and(shares))
            .collect();
        debug_assert_eq!(
            sharing,
            blob.snapshots
                .iter()
                .filter(|(_, v)| shares(v))
                .map(|(id, _)| *id)
                .collect::<Vec<_>>(),
            "the index of snapshots by operation agrees with a walk of them all"
        );
        sharing
    }

    /// The incarnation (home file) of the base blob.
    pub fn incarnation(&self, path: &BlobPath) -> StoreResult<u64> {
        Ok(self.base(path)?.incarnation)
    }

    /// Whether applying `effect` may leave some incarnation with no version (its home file is
    /// then garbage): a blob replaced or deleted may; a snapshot deleted while its blob's
    /// current version (or another snapshot) is of the same incarnation may not — the common
    /// case, retention deleting a replica's oldest point, answered without a walk over the
    /// account.
    pub fn may_end_an_incarnation(&self, effect: &Effect) -> bool {
        match effect {
            Effect::CreateBlob { .. } => true,
            Effect::Delete {
                path,
                snapshot: Some(id),
                base: false,
                snapshots: false,
            } => {
                let Ok(blob) = self.blob(path) else {
                    return false;
                };
                let Some(gone) = blob.snapshots.get(id) else {
                    return false;
                };
                let kept = |v: &Version| v.incarnation == gone.incarnation;
                !(blob.base.as_ref().is_some_and(kept)
                    || blob
                        .snapshots
                        .iter()
                        .any(|(other, v)| other != id && kept(v)))
            }
            Effect::Delete { .. } => true,
            Effect::Together { effects } => effects.iter().any(|e| self.may_end_an_incarnation(e)),
            _ => false,
        }
    }

    /// Incarnations still referenced by any version (home files to keep).
    pub fn live_incarnations(&self) -> std::collections::BTreeSet<u64> {
        self.containers
            .values()
            .flat_map(|c| c.blobs.values())
            .flat_map(|b| b.base.iter().chain(b.snapshots.values()))
            .map(|v| v.incarnation)
            .collect()
    }

    fn blob_mut(&mut self, path: &BlobPath) -> Option<&mut Blob> {
        self.containers
            .get_mut(&path.container)?
            .blobs
            .get_mut(&path.blob)
    }

    fn base_mut(&mut self, path: &BlobPath) -> Option<&mut Version> {
        self.blob_mut(path)?.base.as_mut()
    }

    /// Apply `change` to the base blob as effect `seq` at `time` (a new ETag and time).
    fn change_base(
        &mut self,
        path: &BlobPath,
        seq: u64,
        time: u64,
        change: impl FnOnce(&mut Version),
    ) {
        if let Some(v) = self.base_mut(path) {
            change(v);
            v.changed_at = seq;
            v.last_modified = time;
        }
    }

    fn container(&self, name: &str) -> StoreResult<&Container> {
        self.containers.get(name).ok_or_else(|| {
            StoreError::service(
                ErrorCode::ContainerNotFound,
                format!("container {name} does not exist"),
            )
        })
    }

    fn blob(&self, path: &BlobPath) -> StoreResult<&Blob> {
        self.container(&path.container)?
            .blobs
            .get(&path.blob)
            .ok_or_else(|| {
                StoreError::service(
                    ErrorCode::BlobNotFound,
                    format!("blob {path} does not exist"),
                )
            })
    }

    fn base(&self, path: &BlobPath) -> StoreResult<&Version> {
        self.blob(path)?.base.as_ref().ok_or_else(|| {
            StoreError::service(
                ErrorCode::BlobNotFound,
                format!("blob {path} does not exist"),
            )
        })
    }

    /// The base blob or one of its snapshots.
    fn version(&self, path: &BlobPath, snapshot: Option<&str>) -> StoreResult<&Version> {
        match snapshot {
            None => self.base(path),
            Some(id) => {
                let nanos = parse_snapshot_id(id).ok_or_else(|| {
                    StoreError::service(
                        ErrorCode::InvalidQueryParameterValue,
                        format!("snapshot {id:?} is not a snapshot time"),
                    )
                })?;
                self.blob(path)?.snapshots.get(&nanos).ok_or_else(|| {
                    StoreError::service(
                        ErrorCode::BlobNotFound,
                        format!("snapshot {id} of {path} does not exist"),
                    )
                })
            }
        }
    }

    /// Conditions on ETag, dates, sequence numbers and the lease, for an operation that writes.
    fn check_write(&self, path: &BlobPath, cond: &Conditions, now: u64) -> StoreResult<&Version> {
        let blob = self.blob(path)?;
        if blob.copy.is_some() {
            return err(
                ErrorCode::OperationNotAllowedOnIncrementalCopyBlob,
                format!("{path} is an incremental copy destination: only copies write it"),
            );
        }
        let v = self.base(path)?;
        check_etag_and_dates(v, cond)?;
        let seq = v.sequence_number;
        let seq_ok = cond.if_sequence_number_le.is_none_or(|n| seq <= n)
            && cond.if_sequence_number_lt.is_none_or(|n| seq < n)
            && cond.if_sequence_number_eq.is_none_or(|n| seq == n);
        if !seq_ok {
            return err(
                ErrorCode::SequenceNumberConditionNotMet,
                format!("{path}: sequence number is {seq}"),
            );
        }
        check_lease_for_write(path, &blob.lease, cond, now)?;
        Ok(v)
    }

    pub fn create_container(
        &self,
        name: &str,
        metadata: &Metadata,
        now: u64,
    ) -> StoreResult<Effect> {
        if let Some(why) = container_name_error(name) {
            return err(ErrorCode::InvalidResourceName, why);
        }
        check_metadata(metadata)?;
        if self.containers.contains_key(name) {
            return err(
                ErrorCode::ContainerAlreadyExists,
                format!("container {name} already exists"),
            );
        }
        Ok(Effect::CreateContainer {
            name: name.into(),
            time: now,
            metadata: metadata.clone(),
        })
    }

    pub fn set_container_metadata(
        &self,
        name: &str,
        metadata: &Metadata,
        now: u64,
    ) -> StoreResult<Effect> {
        self.container(name)?;
        check_metadata(metadata)?;
        Ok(Effect::SetContainerMetadata {
            name: name.into(),
            metadata: metadata.clone(),
            time: now,
        })
    }

    pub fn container_properties(&self, name: &str) -> StoreResult<ContainerProperties> {
        let c = self.container(name)?;
        Ok(ContainerProperties {
            etag: etag(c.changed_at),
            last_modified: c.last_modified,
            metadata: c.metadata.clone(),
        })
    }

    pub fn set_metadata(
        &self,
        path: &BlobPath,
        metadata: &Metadata,
        cond: &Conditions,
        now: u64,
    ) -> StoreResult<Effect> {
        check_metadata(metadata)?;
        self.check_write(path, cond, now)?;
        Ok(Effect::SetMetadata {
            path: path.clone(),
            metadata: metadata.clone(),
            time: now,
        })
    }

    pub fn set_content_headers(
        &self,
        path: &BlobPath,
        content: &ContentHeaders,
        cond: &Conditions,
        now: u64,
    ) -> StoreResult<Effect> {
        check_content(content)?;
        self.check_write(path, cond, now)?;
        Ok(Effect::SetContentHeaders {
            path: path.clone(),
            content: content.clone(),
            time: now,
        })
    }

    pub fn create_blob(
        &self,
        path: &BlobPath,
        size: u64,
        sequence_number: u64,
        cond: &Conditions,
        headers: &BlobHeaders,
        now: u64,
    ) -> StoreResult<Effect> {
        self.container(&path.container)?;
        if let Some(why) = blob_name_error(&path.blob) {
            return err(ErrorCode::InvalidResourceName, why);
        }
        check_metadata(&headers.metadata)?;
        check_content(&headers.content)?;
        check_size(size)?;
        if sequence_number > MAX_SEQUENCE_NUMBER {
            return err(
                ErrorCode::InvalidHeaderValue,
                format!("sequence number {sequence_number} exceeds 2^63-1"),
            );
        }
        if let Ok(blob) = self.blob(path) {
            if let Some(v) = &blob.base {
                // Put Blob with If-None-Match: * means "only if absent": 409, not 412.
                if cond.if_none_match.as_deref() == Some("*") {
                    return err(
                        ErrorCode::BlobAlreadyExists,
                        format!("{path} already exists (If-None-Match: *)"),
                    );
                }
                check_etag_and_dates(v, cond)?;
                check_lease_for_write(path, &blob.lease, cond, now)?;
            }
        } else if cond.if_match.is_some() {
            return err(
                ErrorCode::ConditionNotMet,
                format!("{path} does not exist (If-Match)"),
            );
        }
        Ok(Effect::CreateBlob {
            path: path.clone(),
            size,
            sequence_number,
            time: now,
            metadata: headers.metadata.clone(),
            content: headers.content.clone(),
        })
    }

    /// Check a put or clear; `data` is filled in by the store once the bytes are stored.
    pub fn write_pages(
        &self,
        path: &BlobPath,
        offset: u64,
        len: u64,
        clear: bool,
        cond: &Conditions,
        now: u64,
    ) -> StoreResult<Effect> {
        if !clear && len > MAX_PUT_PAGES_BYTES {
            return err(
                ErrorCode::RequestBodyTooLarge,
                format!("{path}: {len} bytes in one Put Page (at most 4 MiB)"),
            );
        }
        let v = self.check_write(path, cond, now)?;
        check_page_range(path, offset, len, v.size)?;
        // The base blob's data lives at its own offset in the blob's home file.
        let data = (!clear).then(|| super::extent_map::home(offset));
        Ok(Effect::WritePages {
            path: path.clone(),
            offset,
            len,
            data,
            time: now,
        })
    }

    pub fn resize(
        &self,
        path: &BlobPath,
        size: u64,
        cond: &Conditions,
        now: u64,
    ) -> StoreResult<Effect> {
        check_size(size)?;
        self.check_write(path, cond, now)?;
        Ok(Effect::Resize {
            path: path.clone(),
            size,
            time: now,
        })
    }

    pub fn set_sequence_number(
        &self,
        path: &BlobPath,
        action: SequenceNumberAction,
        cond: &Conditions,
        now: u64,
    ) -> StoreResult<Effect> {
        let v = self.check_write(path, cond, now)?;
        let value = match action {
            SequenceNumberAction::Max(n) => v.sequence_number.max(n),
            SequenceNumberAction::Update(n) => n,
            SequenceNumberAction::Increment => {
                if v.sequence_number >= MAX_SEQUENCE_NUMBER {
                    return err(
                        ErrorCode::SequenceNumberIncrementTooLarge,
                        format!("{path}: sequence number is already 2^63-1"),
                    );
                }
                v.sequence_number + 1
            }
        };
        if value > MAX_SEQUENCE_NUMBER {
            return err(
                ErrorCode::InvalidHeaderValue,
                format!("sequence number {value} exceeds 2^63-1"),
            );
        }
        Ok(Effect::SetSequenceNumber {
            path: path.clone(),
            value,
            time: now,
        })
    }

    /// Set Blob Properties with several parts: each checked, with `cond`, against the blob as
    /// it is (they change different properties, so none depends on another), and one effect
    /// for all of them.
    pub fn set_properties(
        &self,
        path: &BlobPath,
        changes: &PropertyChanges,
        cond: &Conditions,
        now: u64,
    ) -> StoreResult<Effect> {
        let mut effects = Vec::new();
        if let Some(size) = changes.size {
            effects.push(self.resize(path, size, cond, now)?);
        }
        if let Some(action) = changes.sequence_number {
            effects.push(self.set_sequence_number(path, action, cond, now)?);
        }
        if let Some(content) = &changes.content {
            effects.push(self.set_content_headers(path, content, cond, now)?);
        }
        Ok(match effects.len() {
            1 => effects.remove(0),
            _ => Effect::Together { effects },
        })
    }

    pub fn snapshot(&self, path: &BlobPath, cond: &Conditions, now: u64) -> StoreResult<Effect> {
        let blob = self.blob(path)?;
        let v = self.base(path)?;
        check_etag_and_dates(v, cond)?;
        if let Some(id) = &cond.lease_id {
            check_lease_for_write(
                path,
                &blob.lease,
                &Conditions {
                    lease_id: Some(id.clone()),
                    ..Default::default()
                },
                now,
            )?;
        }
        if let Some(max) = self.profile.max_snapshots_per_blob() {
            if blob.snapshots.len() >= max {
                return err(
                    ErrorCode::SnapshotCountExceeded,
                    format!(
                        "{path} already has {} snapshots; the premium profile allows {max}",
                        blob.snapshots.len()
                    ),
                );
            }
        }
        if let (Some(spacing), Some((&last, _))) = (
            self.profile.min_snapshot_spacing_nanos(),
            blob.snapshots.last_key_value(),
        ) {
            if now < last.saturating_add(spacing) {
                return err(
                    ErrorCode::SnapshotOperationRateExceeded,
                    format!("{path}: one snapshot per 10 minutes on premium"),
                );
            }
        }
        // Snapshot times are unique per blob: a second snapshot in the same 100 ns tick moves on.
        let mut id = now / 100 * 100;
        if let Some((&last, _)) = blob.snapshots.last_key_value() {
            id = id.max(last + 100);
        }
        Ok(Effect::Snapshot {
            path: path.clone(),
            id,
            time: now,
        })
    }

    pub fn delete(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        mode: Option<DeleteSnapshots>,
        cond: &Conditions,
        now: u64,
    ) -> StoreResult<Effect> {
        let blob = self.blob(path)?;
        if let Some(id) = snapshot {
            if mode.is_some() {
                return err(
                    ErrorCode::InvalidQueryParameterValue,
                    "x-ms-delete-snapshots cannot be given when deleting a snapshot",
                );
            }
            self.version(path, Some(id))?;
            let nanos = parse_snapshot_id(id).expect("version() parsed it");
            return Ok(Effect::Delete {
                path: path.clone(),
                snapshot: Some(nanos),
                base: false,
                snapshots: false,
            });
        }
        let v = self.base(path)?;
        check_etag_and_dates(v, cond)?;
        check_lease_for_write(path, &blob.lease, cond, now)?;
        match mode {
            None if !blob.snapshots.is_empty() => err(
                ErrorCode::SnapshotsPresent,
                format!(
                    "{path} has {} snapshots: say include or only",
                    blob.snapshots.len()
                ),
            ),
            None => Ok(Effect::Delete {
                path: path.clone(),
                snapshot: None,
                base: true,
                snapshots: false,
            }),
            Some(DeleteSnapshots::Include) => Ok(Effect::Delete {
                path: path.clone(),
                snapshot: None,
                base: true,
                snapshots: true,
            }),
            Some(DeleteSnapshots::Only) => Ok(Effect::Delete {
                path: path.clone(),
                snapshot: None,
                base: false,
                snapshots: true,
            }),
        }
    }

    pub fn lease(
        &self,
        path: &BlobPath,
        action: &LeaseAction,
        cond: &Conditions,
        now: u64,
    ) -> StoreResult<(Effect, LeaseAnswer)> {
        let blob = self.blob(path)?;
        let v = self.base(path)?;
        check_etag_and_dates(v, cond)?;
        let current = blob.lease.at(now);
        let secs = 1_000_000_000u64;
        let mismatch = |what: &str| {
            err(
                ErrorCode::LeaseIdMismatchWithLeaseOperation,
                format!("{path}: {what}"),
            )
        };
        let (lease, answer_id, time_left) = match action {
            LeaseAction::Acquire {
                proposed_id,
                duration_secs,
            } => {
                if let Some(d) = duration_secs {
                    if !(15..=60).contains(d) {
                        return err(
                            ErrorCode::InvalidHeaderValue,
                            format!("lease duration {d}: 15 to 60 seconds, or -1"),
                        );
                    }
                }
                match &current {
                    Lease::Leased { id, .. } if id != proposed_id => {
                        return err(ErrorCode::LeaseAlreadyPresent, format!("{path} is leased"))
                    }
                    Lease::Breaking { .. } => {
                        return err(
                            ErrorCode::LeaseIsBreakingAndCannotBeAcquired,
                            format!("{path}: lease is breaking"),
                        )
                    }
                    _ => {}
                }
                let expires = duration_secs.map(|d| now + u64::from(d) * secs);
                (
                    Lease::Leased {
                        id: proposed_id.clone(),
                        expires,
                    },
                    Some(proposed_id.clone()),
                    None,
                )
            }
            LeaseAction::Renew { id } => match (&blob.lease, &current) {
                (Lease::Leased { id: held, expires }, _) if held == id => {
                    let duration = expires.map(|_| 60 * secs);
                    (
                        Lease::Leased {
                            id: id.clone(),
                            expires: duration.map(|d| now + d),
                        },
                        Some(id.clone()),
                        None,
                    )
                }
                (_, Lease::Broken | Lease::BrokenFrom { .. } | Lease::Breaking { .. }) => {
                    return err(
                        ErrorCode::LeaseIsBrokenAndCannotBeRenewed,
                        format!("{path}: lease was broken"),
                    )
                }
                (_, Lease::Available) => {
                    return err(
                        ErrorCode::LeaseNotPresentWithLeaseOperation,
                        format!("{path} has no lease"),
                    )
                }
                _ => return mismatch("lease id does not match"),
            },
            LeaseAction::Release { id } => match &blob.lease {
                Lease::Leased { id: held, .. }
                | Lease::Breaking { id: held, .. }
                | Lease::BrokenFrom { id: held }
                    if held == id =>
                {
                    (Lease::Available, None, None)
                }
                Lease::Broken => (Lease::Available, None, None),
                Lease::Available | Lease::Released => {
                    return err(
                        ErrorCode::LeaseNotPresentWithLeaseOperation,
                        format!("{path} has no lease"),
                    )
                }
                _ => return mismatch("lease id does not match"),
            },
            LeaseAction::Change { id, proposed_id } => match &current {
                Lease::Leased { id: held, expires } if held == id || held == proposed_id => (
                    Lease::Leased {
                        id: proposed_id.clone(),
                        expires: *expires,
                    },
                    Some(proposed_id.clone()),
                    None,
                ),
                Lease::Breaking { .. } => {
                    return err(
                        ErrorCode::LeaseIsBreakingAndCannotBeChanged,
                        format!("{path}: lease is breaking"),
                    )
                }
                Lease::Leased { .. } => return mismatch("lease id does not match"),
                _ => {
                    return err(
                        ErrorCode::LeaseNotPresentWithLeaseOperation,
                        format!("{path} has no lease"),
                    )
                }
            },
            LeaseAction::Break { period_secs } => match &current {
                Lease::Leased { id, expires } => {
                    let remaining = expires.map_or(0, |e| e.saturating_sub(now));
                    let period = period_secs.map_or(remaining, |p| {
                        (u64::from(p) * secs).min(if expires.is_some() {
                            remaining
                        } else {
                            u64::MAX
                        })
                    });
                    if period == 0 {
                        (Lease::BrokenFrom { id: id.clone() }, None, Some(0))
                    } else {
                        (
                            Lease::Breaking {
                                id: id.clone(),
                                broken_at: now + period,
                            },
                            None,
                            Some(period.div_ceil(secs)),
                        )
                    }
                }
                Lease::Breaking { broken_at, .. } => (
                    blob.lease.clone(),
                    None,
                    Some(broken_at.saturating_sub(now).div_ceil(secs)),
                ),
                Lease::Broken | Lease::BrokenFrom { .. } => (current.clone(), None, Some(0)),
                _ => {
                    return err(
                        ErrorCode::LeaseNotPresentWithLeaseOperation,
                        format!("{path} has no lease"),
                    )
                }
            },
        };
        let answer = LeaseAnswer {
            lease_id: answer_id,
            lease_time_secs: time_left,
            etag: etag(v.changed_at),
        };
        Ok((
            Effect::Lease {
                path: path.clone(),
                lease,
                time: now,
            },
            answer,
        ))
    }

    /// Properties of the blob or a snapshot.
    pub fn properties(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        now: u64,
    ) -> StoreResult<Properties> {
        let v = self.version(path, snapshot)?;
        let lease = &self.blob(path)?.lease;
        let lease_duration = match lease.at(now) {
            Lease::Leased { expires, .. } if snapshot.is_none() => Some(if expires.is_some() {
                LeaseDuration::Fixed
            } else {
                LeaseDuration::Infinite
            }),
            _ => None,
        };
        Ok(Properties {
            size: v.size,
            etag: etag(v.changed_at),
            last_modified: v.last_modified,
            sequence_number: v.sequence_number,
            snapshot: snapshot.map(str::to_string),
            lease_state: if snapshot.is_some() {
                LeaseStateName::Available
            } else {
                lease.state_name(now)
            },
            copy: self.blob(path)?.copy.clone(),
            lease_duration,
            metadata: v.metadata.clone(),
            content: v.content.clone(),
        })
    }

    /// Where the bytes of `[offset, offset+len)` are: the version's incarnation (home file)
    /// and `(offset, len, location)` runs; the caller fills the rest with zeros.
    pub fn read_plan(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        offset: u64,
        len: u64,
    ) -> StoreResult<(u64, ReadRuns)> {
        let v = self.version(path, snapshot)?;
        if offset.checked_add(len).is_none_or(|e| e > v.size) {
            return err(
                ErrorCode::InvalidRange,
                format!(
                    "{path}: range {offset}+{len} ends past the {}-byte blob",
                    v.size
                ),
            );
        }
        let runs = v
            .map
            .clipped(offset, offset + len)
            .into_iter()
            .filter_map(|(s, e)| e.data.map(|d| (s, e.len, d)))
            .collect();
        Ok((v.incarnation, runs))
    }

    /// Get Page Ranges (optionally as a diff against `prev_snapshot`, paged), checked and taken
    /// in O(1) (the version's map is shared, not copied): the walk over its extents,
    /// [`PageRangeQuery::answer`], needs no access to the account, so a store answers it
    /// without holding its lock.
    pub fn page_range_query(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        prev_snapshot: Option<&str>,
        range: Option<(u64, u64)>,
        marker: Option<u64>,
        max_results: Option<usize>,
    ) -> StoreResult<PageRangeQuery> {
        let v = self.version(path, snapshot)?;
        let (mut start, end) = match range {
            Some((s, e)) => {
                // `e` is inclusive and comes from a client: `e + 1` must not overflow.
                let end = e
                    .checked_add(1)
                    .filter(|end| *end > s && s % PAGE_SIZE == 0 && end % PAGE_SIZE == 0);
                let Some(end) = end else {
                    return err(
                        ErrorCode::InvalidPageRange,
                        format!("{path}: range {s}-{e} is not 512-byte aligned"),
                    );
                };
                (s, end.min(v.size))
            }
            None => (0, v.size),
        };
        if let Some(m) = marker {
            start = start.max(m);
        }
        let diff = match prev_snapshot {
            None => None,
            Some(prev_id) => {
                let prev = match self.version(path, Some(prev_id)) {
                    Ok(p) => p,
                    Err(StoreError::Service {
                        code: ErrorCode::BlobNotFound,
                        ..
                    }) => {
                        return err(
                            ErrorCode::PreviousSnapshotNotFound,
                            format!("{path}: previous snapshot {prev_id} does not exist"),
                        )
                    }
                    Err(e) => return Err(e),
                };
                if let Some(cur) = snapshot.and_then(parse_snapshot_id) {
                    if parse_snapshot_id(prev_id).is_some_and(|p| p > cur) {
                        return err(
                            ErrorCode::PreviousSnapshotCannotBeNewer,
                            format!(
                                "{path}: {prev_id} is newer than {}",
                                snapshot.unwrap_or_default()
                            ),
                        );
                    }
                }
                if prev.incarnation != v.incarnation {
                    return err(
                        ErrorCode::BlobOverwritten,
                        format!("{path} was recreated after snapshot {prev_id}"),
                    );
                }
                // Pages past a shrunken size are gone; pages past the old size read as zeros:
                // report the difference in size as cleared when the blob shrank.
                let shrunk = (prev.size > v.size && end == v.size).then(|| PageRange {
                    start: v.size,
                    end: prev.size - 1,
                    cleared: true,
                });
                Some((prev.taken_at, prev.map.clone(), shrunk))
            }
        };
        Ok(PageRangeQuery {
            map: v.map.clone(),
            start,
            end,
            diff,
            max: max_results
                .unwrap_or(MAX_RANGES_PER_ANSWER)
                .clamp(1, MAX_RANGES_PER_ANSWER),
        })
    }

    pub fn list_blobs(
        &self,
        container: &str,
        prefix: &str,
        include_snapshots: bool,
        now: u64,
    ) -> StoreResult<Vec<BlobListing>> {
        let mut out = Vec::new();
        let under = self
            .container(container)?
            .blobs
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(name, _)| name.starts_with(prefix));
        for (name, blob) in under {
            let path = BlobPath::new(container, name);
            if include_snapshots {
                for id in blob.snapshots.keys() {
                    let sid = snapshot_id(*id);
                    out.push(BlobListing {
                        name: name.clone(),
                        properties: self.properties(&path, Some(&sid), now)?,
                    });
                }
            }
            if blob.base.is_some() {
                out.push(BlobListing {
                    name: name.clone(),
                    properties: self.properties(&path, None, now)?,
                });
            }
        }
        Ok(out)
    }

    pub fn list_containers(&self) -> Vec<String> {
        self.containers.keys().cloned().collect()
    }

    /// Snapshot ids of a blob, oldest first.
    pub fn snapshots(&self, path: &BlobPath) -> StoreResult<Vec<String>> {
        Ok(self
            .blob(path)?
            .snapshots
            .keys()
            .map(|&id| snapshot_id(id))
            .collect())
    }
}

fn check_etag_and_dates(v: &Version, cond: &Conditions) -> StoreResult<()> {
    let tag = etag(v.changed_at);
    let matches =
        |want: &str| want == "*" || want == tag || want.trim_matches('"') == tag.trim_matches('"');
    if cond.if_match.as_deref().is_some_and(|m| !matches(m))
        || cond.if_none_match.as_deref().is_some_and(matches)
        || cond
            .if_modified_since
            .is_some_and(|t| v.last_modified / 1_000_000_000 <= t / 1_000_000_000)
        || cond
            .if_unmodified_since
            .is_some_and(|t| v.last_modified / 1_000_000_000 > t / 1_000_000_000)
    {
        return err(
            ErrorCode::ConditionNotMet,
            format!("condition not met (ETag is {tag})"),
        );
    }
    Ok(())
}

fn check_lease_for_write(
    path: &BlobPath,
    lease: &Lease,
    cond: &Conditions,
    now: u64,
) -> StoreResult<()> {
    let held = match lease.at(now) {
        Lease::Leased { id, .. } | Lease::Breaking { id, .. } => Some(id),
        _ => None,
    };
    match (held, &cond.lease_id) {
        (Some(_), None) => err(
            ErrorCode::LeaseIdMissing,
            format!("{path} is leased: send x-ms-lease-id"),
        ),
        (Some(id), Some(given)) if id != *given => err(
            ErrorCode::LeaseIdMismatchWithBlobOperation,
            format!("{path}: lease id does not match"),
        ),
        (None, Some(_)) => err(
            ErrorCode::LeaseNotPresentWithBlobOperation,
            format!("{path} has no active lease"),
        ),
        _ => Ok(()),
    }
}

/// A checked Get Page Ranges, holding the version's (shared) map: answered without the account.
#[derive(Debug, Clone)]
pub struct PageRangeQuery {
    map: ExtentMap,
    start: u64,
    end: u64,
    /// A diff: the operation that took the previous snapshot, its (shared) map, and the range
    /// a shrink cleared.
    diff: Option<(u64, ExtentMap, Option<PageRange>)>,
    max: usize,
}

impl PageRangeQuery {
    /// The page of ranges: a walk over the map's extents in the queried range. Its marker is
    /// the byte offset the next page starts at, as a string.
    pub fn answer(self) -> PageRangeList {
        let (ranges, next_marker) = self.answer_page();
        PageRangeList {
            ranges,
            next_marker: next_marker.map(|m| m.to_string()),
        }
    }

    /// The page of ranges and the byte offset the next page starts at.
    pub fn answer_page(self) -> (Vec<PageRange>, Option<u64>) {
        let mut ranges = match self.diff {
            None => self.map.valid_ranges(self.start, self.end),
            Some((since, earlier, shrunk)) => {
                let mut changed = self
                    .map
                    .changed_since(since, &earlier, self.start, self.end);
                changed.extend(shrunk);
                changed
            }
        };
        let next_marker = if ranges.len() > self.max {
            ranges.truncate(self.max);
            ranges.last().map(|r| r.end + 1)
        } else {
            None
        };
        (ranges, next_marker)
    }
}
