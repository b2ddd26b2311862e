//! `pageblob`: page blobs as Azure defines them. The [`PageBlobStore`] trait every replica
//! target implements, the account semantics behind it ([`account`]), the embedded emulator
//! ([`emulator`]) that persists them crash-safely under a store directory ([`data_log`],
//! [`extent_map`], [`fs`], [`store_lock`]), injected faults ([`faults`]), read retries
//! ([`read_retry`]), disk upload ([`upload`]), opening a store by directory or URL
//! ([`location`]), every page range of a listing checked ([`page_listing`]), and the Blob
//! REST API ([`http`]: the server
//! behind the `server` feature, the client behind `client`).
//!
//! Errors carry Azure's status codes and error-code names ([`error`]), so callers handle the
//! embedded store, the served store and a real account alike. Time comes from an injected
//! [`clock`].

#![forbid(unsafe_code)]

pub mod account;
pub mod blob_headers;
pub mod clock;
#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod data_log;
pub mod emulator;
pub mod error;
pub mod extent_map;
pub mod faults;
pub mod fs;
pub mod home_file;
pub mod http;
pub mod location;
pub mod lock_holder;
pub mod memory_fs;
pub mod names;
pub mod page_listing;
pub mod read_retry;
pub mod store_lock;
pub mod timestamp;
pub mod types;
pub mod upload;

#[cfg(all(any(test, feature = "testing"), feature = "server", feature = "client"))]
pub mod fuzz_targets;

pub use emulator::Emulator;
pub use error::{ErrorCode, StoreError, StoreResult};
pub use extent_map::PageRange;
pub use types::*;

/// True when every byte is zero: such pages need not be written (a page blob reads zeros where
/// nothing was). Branch-free inner loop, so it vectorizes.
pub fn is_zero(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(64);
    let body = chunks.all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0);
    body && chunks.remainder().iter().all(|&b| b == 0)
}

/// Azure page-blob operations (the subset drplane replicates with).
pub trait PageBlobStore: Send + Sync {
    fn create_container(&self, name: &str) -> StoreResult<()>;
    fn list_containers(&self) -> StoreResult<Vec<String>>;
    /// Create Container with metadata.
    fn create_container_with(&self, name: &str, metadata: &Metadata) -> StoreResult<()> {
        if metadata.is_empty() {
            return self.create_container(name);
        }
        Err(not_implemented("container metadata"))
    }
    /// Get Container Properties (with its metadata).
    fn container_properties(&self, name: &str) -> StoreResult<ContainerProperties> {
        let _ = name;
        Err(not_implemented("container properties"))
    }
    /// Set Container Metadata: replaces all of it.
    fn set_container_metadata(
        &self,
        name: &str,
        metadata: &Metadata,
    ) -> StoreResult<ContainerProperties> {
        let _ = (name, metadata);
        Err(not_implemented("container metadata"))
    }
    /// Put Blob with metadata and content headers.
    fn create_page_blob_with(
        &self,
        path: &BlobPath,
        size: u64,
        sequence_number: u64,
        cond: &Conditions,
        headers: &BlobHeaders,
    ) -> StoreResult<Properties> {
        if headers.is_empty() {
            return self.create_page_blob(path, size, sequence_number, cond);
        }
        Err(not_implemented("blob metadata and content headers"))
    }
    /// Set Blob Metadata: replaces all of it.
    fn set_metadata(
        &self,
        path: &BlobPath,
        metadata: &Metadata,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        let _ = (path, metadata, cond);
        Err(not_implemented("blob metadata"))
    }
    /// Set Blob Properties with content headers: all six are set together.
    fn set_content_headers(
        &self,
        path: &BlobPath,
        content: &ContentHeaders,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        let _ = (path, content, cond);
        Err(not_implemented("content headers"))
    }
    /// Set Blob Properties with several parts (a size, a sequence-number action, content
    /// headers): `cond` holds against the blob as it was, and every part applies or none does.
    /// This default applies them one after another — the first checks `cond`, the later ones
    /// only its lease — so another client's change in between can fail a later part after an
    /// earlier one applied; the embedded store overrides it with one change under its lock.
    fn set_properties(
        &self,
        path: &BlobPath,
        changes: &blob_headers::PropertyChanges,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        let lease_only = Conditions {
            lease_id: cond.lease_id.clone(),
            ..Conditions::default()
        };
        let mut props = None;
        let mut cond_now = cond;
        if let Some(size) = changes.size {
            props = Some(self.resize(path, size, cond_now)?);
            cond_now = &lease_only;
        }
        if let Some(action) = changes.sequence_number {
            props = Some(self.set_sequence_number(path, action, cond_now)?);
            cond_now = &lease_only;
        }
        if let Some(content) = &changes.content {
            props = Some(self.set_content_headers(path, content, cond_now)?);
        }
        match props {
            Some(p) => Ok(p),
            None => self.properties(path, None),
        }
    }
    /// Put Blob with `x-ms-blob-type: PageBlob`: create or replace.
    fn create_page_blob(
        &self,
        path: &BlobPath,
        size: u64,
        sequence_number: u64,
        cond: &Conditions,
    ) -> StoreResult<Properties>;
    /// Put Page, `update`: 512-aligned, at most 4 MiB.
    fn put_pages(
        &self,
        path: &BlobPath,
        offset: u64,
        data: &[u8],
        cond: &Conditions,
    ) -> StoreResult<Properties>;
    /// Several Put Page `update` calls whose ranges do not overlap, in any order, each under
    /// `cond` (meant for conditions a write does not change: the sequence number, the lease):
    /// all are applied when this returns `Ok`. On an error some may have been applied (as with
    /// the same calls made one by one, or side by side). A store may send them together; the
    /// HTTP client pipelines them on one connection.
    fn put_pages_batch(&self, writes: &[PageWrite<'_>], cond: &Conditions) -> StoreResult<()> {
        for w in writes {
            self.put_pages(w.path, w.offset, w.data, cond)?;
        }
        Ok(())
    }
    /// Put Page, `clear`.
    fn clear_pages(
        &self,
        path: &BlobPath,
        offset: u64,
        len: u64,
        cond: &Conditions,
    ) -> StoreResult<Properties>;
    /// Get Blob with a range, from the blob or a snapshot.
    fn read(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        offset: u64,
        buf: &mut [u8],
    ) -> StoreResult<()>;
    /// [`read`](Self::read), made only where it need not wait (for other calls, for the
    /// device, for the network), so that an async server may make it on its worker: `false`
    /// where it would, and then nothing is promised of `buf`. By default made where the store
    /// [answers promptly](Self::answers_promptly), else `false`.
    fn try_read(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        offset: u64,
        buf: &mut [u8],
    ) -> StoreResult<bool> {
        match self.answers_promptly() {
            true => self.read(path, snapshot, offset, buf).map(|()| true),
            false => Ok(false),
        }
    }
    /// Several reads, each as [`PageBlobStore::read`] makes it: every buffer is filled when
    /// this returns `Ok`. A store may send them together; the HTTP client pipelines them on
    /// one connection. On an error it is not said which buffers were filled: a caller that
    /// must name the read that failed makes them again one by one.
    fn read_batch(&self, reads: &mut [PageRead<'_>]) -> StoreResult<()> {
        for r in reads.iter_mut() {
            self.read(r.path, r.snapshot, r.offset, r.buf)?;
        }
        Ok(())
    }
    /// Get Page Ranges, optionally the diff against `prev_snapshot`, paged by `marker`.
    fn page_ranges(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        prev_snapshot: Option<&str>,
        range: Option<(u64, u64)>,
        marker: Option<&str>,
        max_results: Option<usize>,
    ) -> StoreResult<PageRangeList>;
    /// Snapshot Blob: returns the snapshot id.
    fn snapshot(&self, path: &BlobPath, cond: &Conditions) -> StoreResult<String>;
    /// List Blobs: the blobs of `container` whose names start with `prefix` (`""`: all), in
    /// name order, with their snapshots when asked; every page of a paged answer.
    fn list_blobs(
        &self,
        container: &str,
        prefix: &str,
        include_snapshots: bool,
    ) -> StoreResult<Vec<BlobListing>>;
    fn delete_blob(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        delete_snapshots: Option<DeleteSnapshots>,
        cond: &Conditions,
    ) -> StoreResult<()>;
    /// Set Blob Properties with `x-ms-blob-content-length`.
    fn resize(&self, path: &BlobPath, size: u64, cond: &Conditions) -> StoreResult<Properties>;
    fn set_sequence_number(
        &self,
        path: &BlobPath,
        action: SequenceNumberAction,
        cond: &Conditions,
    ) -> StoreResult<Properties>;
    fn properties(&self, path: &BlobPath, snapshot: Option<&str>) -> StoreResult<Properties>;
    fn lease(
        &self,
        path: &BlobPath,
        action: &LeaseAction,
        cond: &Conditions,
    ) -> StoreResult<LeaseAnswer>;
    /// Incremental Copy Blob: bring `dest` to the content of `source` at `snapshot`, copying
    /// only what changed since the previously copied snapshot, then snapshot `dest`.
    fn incremental_copy(
        &self,
        dest: &BlobPath,
        source: &BlobPath,
        snapshot: Option<&str>,
    ) -> StoreResult<CopyInfo>;
    /// True when a small write returns without waiting: no sync to the disk, no injected
    /// latency or bandwidth cap, no network. A server may then make such calls on its async
    /// worker instead of handing each to a blocking thread.
    fn answers_promptly(&self) -> bool {
        false
    }
    /// Put Page (`update`) that may leave its durability owed: the write is applied (and
    /// visible) when this returns, and where the store makes writes durable with a sync it
    /// may return a ticket instead of waiting for one. **Nothing may acknowledge the write to
    /// anyone before [`sync_owed`](Self::sync_owed) has paid the ticket.** A server answering
    /// a connection's pipelined Put Pages uses it to make one sync for the lot. By default the
    /// write is made durable at once and nothing is owed.
    fn put_pages_owing_sync(
        &self,
        path: &BlobPath,
        offset: u64,
        data: &[u8],
        cond: &Conditions,
    ) -> StoreResult<(Properties, Option<SyncTicket>)> {
        Ok((self.put_pages(path, offset, data, cond)?, None))
    }
    /// [`put_pages_owing_sync`](Self::put_pages_owing_sync), made only where it need not wait
    /// (for a sync, for other calls, for the network), so that an async server may make it on
    /// its worker: `None` where it would wait, and then nothing was done. By default made
    /// where the store [answers promptly](Self::answers_promptly), else `None`.
    fn try_put_pages_owing_sync(
        &self,
        path: &BlobPath,
        offset: u64,
        data: &[u8],
        cond: &Conditions,
    ) -> StoreResult<Option<(Properties, Option<SyncTicket>)>> {
        match self.answers_promptly() {
            true => self
                .put_pages_owing_sync(path, offset, data, cond)
                .map(Some),
            false => Ok(None),
        }
    }
    /// Make every write up to `ticket` durable ([`put_pages_owing_sync`](Self::put_pages_owing_sync)).
    fn sync_owed(&self, ticket: SyncTicket) -> StoreResult<()> {
        let _ = ticket;
        Ok(())
    }
    /// The caller will make no call for a while (a `--watch` between cycles): a store
    /// directory lets its readers in until the next change. Nothing for other stores.
    fn quiesce(&self) {}
}

/// What a store that does not keep `what` answers when asked to.
fn not_implemented(what: &str) -> StoreError {
    StoreError::service(
        ErrorCode::NotImplemented,
        format!("this store does not keep {what}"),
    )
}

/// A shared store is a store.
impl<T: PageBlobStore + ?Sized> PageBlobStore for std::sync::Arc<T> {
    fn create_container_with(&self, name: &str, metadata: &Metadata) -> StoreResult<()> {
        (**self).create_container_with(name, metadata)
    }
    fn container_properties(&self, name: &str) -> StoreResult<ContainerProperties> {
        (**self).container_properties(name)
    }
    fn set_container_metadata(
        &self,
        name: &str,
        metadata: &Metadata,
    ) -> StoreResult<ContainerProperties> {
        (**self).set_container_metadata(name, metadata)
    }
    fn create_page_blob_with(
        &self,
        path: &BlobPath,
        size: u64,
        sequence_number: u64,
        cond: &Conditions,
        headers: &BlobHeaders,
    ) -> StoreResult<Properties> {
        (**self).create_page_blob_with(path, size, sequence_number, cond, headers)
    }
    fn set_metadata(
        &self,
        path: &BlobPath,
        metadata: &Metadata,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        (**self).set_metadata(path, metadata, cond)
    }
    fn set_content_headers(
        &self,
        path: &BlobPath,
        content: &ContentHeaders,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        (**self).set_content_headers(path, content, cond)
    }
    fn set_properties(
        &self,
        path: &BlobPath,
        changes: &blob_headers::PropertyChanges,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        (**self).set_properties(path, changes, cond)
    }
    fn create_container(&self, name: &str) -> StoreResult<()> {
        (**self).create_container(name)
    }
    fn list_containers(&self) -> StoreResult<Vec<String>> {
        (**self).list_containers()
    }
    fn create_page_blob(
        &self,
        path: &BlobPath,
        size: u64,
        sequence_number: u64,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        (**self).create_page_blob(path, size, sequence_number, cond)
    }
    fn put_pages(
        &self,
        path: &BlobPath,
        offset: u64,
        data: &[u8],
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        (**self).put_pages(path, offset, data, cond)
    }
    fn put_pages_batch(&self, writes: &[PageWrite<'_>], cond: &Conditions) -> StoreResult<()> {
        (**self).put_pages_batch(writes, cond)
    }
    fn clear_pages(
        &self,
        path: &BlobPath,
        offset: u64,
        len: u64,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        (**self).clear_pages(path, offset, len, cond)
    }
    fn read(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        offset: u64,
        buf: &mut [u8],
    ) -> StoreResult<()> {
        (**self).read(path, snapshot, offset, buf)
    }
    fn try_read(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        offset: u64,
        buf: &mut [u8],
    ) -> StoreResult<bool> {
        (**self).try_read(path, snapshot, offset, buf)
    }
    fn read_batch(&self, reads: &mut [PageRead<'_>]) -> StoreResult<()> {
        (**self).read_batch(reads)
    }
    fn page_ranges(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        prev_snapshot: Option<&str>,
        range: Option<(u64, u64)>,
        marker: Option<&str>,
        max_results: Option<usize>,
    ) -> StoreResult<PageRangeList> {
        (**self).page_ranges(path, snapshot, prev_snapshot, range, marker, max_results)
    }
    fn snapshot(&self, path: &BlobPath, cond: &Conditions) -> StoreResult<String> {
        (**self).snapshot(path, cond)
    }
    fn list_blobs(
        &self,
        container: &str,
        prefix: &str,
        include_snapshots: bool,
    ) -> StoreResult<Vec<BlobListing>> {
        (**self).list_blobs(container, prefix, include_snapshots)
    }
    fn delete_blob(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        delete_snapshots: Option<DeleteSnapshots>,
        cond: &Conditions,
    ) -> StoreResult<()> {
        (**self).delete_blob(path, snapshot, delete_snapshots, cond)
    }
    fn resize(&self, path: &BlobPath, size: u64, cond: &Conditions) -> StoreResult<Properties> {
        (**self).resize(path, size, cond)
    }
    fn set_sequence_number(
        &self,
        path: &BlobPath,
        action: SequenceNumberAction,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        (**self).set_sequence_number(path, action, cond)
    }
    fn properties(&self, path: &BlobPath, snapshot: Option<&str>) -> StoreResult<Properties> {
        (**self).properties(path, snapshot)
    }
    fn lease(
        &self,
        path: &BlobPath,
        action: &LeaseAction,
        cond: &Conditions,
    ) -> StoreResult<LeaseAnswer> {
        (**self).lease(path, action, cond)
    }
    fn incremental_copy(
        &self,
        dest: &BlobPath,
        source: &BlobPath,
        snapshot: Option<&str>,
    ) -> StoreResult<CopyInfo> {
        (**self).incremental_copy(dest, source, snapshot)
    }
    fn answers_promptly(&self) -> bool {
        (**self).answers_promptly()
    }
    fn put_pages_owing_sync(
        &self,
        path: &BlobPath,
        offset: u64,
        data: &[u8],
        cond: &Conditions,
    ) -> StoreResult<(Properties, Option<SyncTicket>)> {
        (**self).put_pages_owing_sync(path, offset, data, cond)
    }
    fn try_put_pages_owing_sync(
        &self,
        path: &BlobPath,
        offset: u64,
        data: &[u8],
        cond: &Conditions,
    ) -> StoreResult<Option<(Properties, Option<SyncTicket>)>> {
        (**self).try_put_pages_owing_sync(path, offset, data, cond)
    }
    fn sync_owed(&self, ticket: SyncTicket) -> StoreResult<()> {
        (**self).sync_owed(ticket)
    }
    fn quiesce(&self) {
        (**self).quiesce()
    }
}
