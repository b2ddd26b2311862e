//! Reads that ride out transient errors: a [`PageBlobStore`] wrapper that retries the
//! read-only operations (Get Blob, Get Page Ranges, Get Blob Properties, listings) on 503
//! ServerBusy and 500 OperationTimedOut / InternalError, as a service-side reader — a failover
//! job restoring a point inside Azure — does. Writes pass through once: whether a write may be
//! repeated is the writer's decision. No sleeping between attempts: a caller that models time
//! (the simulator) charges it; the HTTP client has its own timed backoff.

use super::error::{ErrorCode, StoreError, StoreResult};
use super::types::*;
use super::PageBlobStore;

/// `inner`, with each read tried up to `attempts` times.
#[derive(Debug)]
pub struct ReadRetry<S> {
    pub inner: S,
    pub attempts: u32,
}

fn transient(e: &StoreError) -> bool {
    matches!(
        e.code(),
        Some(ErrorCode::ServerBusy | ErrorCode::OperationTimedOut | ErrorCode::InternalError)
    )
}

impl<S: PageBlobStore> ReadRetry<S> {
    pub fn new(inner: S, attempts: u32) -> ReadRetry<S> {
        ReadRetry {
            inner,
            attempts: attempts.max(1),
        }
    }

    fn again<T>(&self, mut call: impl FnMut() -> StoreResult<T>) -> StoreResult<T> {
        let mut tries = 1;
        loop {
            match call() {
                Err(e) if transient(&e) && tries < self.attempts => tries += 1,
                other => return other,
            }
        }
    }
}

impl<S: PageBlobStore> PageBlobStore for ReadRetry<S> {
    fn create_container_with(&self, name: &str, metadata: &Metadata) -> StoreResult<()> {
        self.inner.create_container_with(name, metadata)
    }
    fn container_properties(&self, name: &str) -> StoreResult<ContainerProperties> {
        self.again(|| self.inner.container_properties(name))
    }
    fn set_container_metadata(
        &self,
        name: &str,
        metadata: &Metadata,
    ) -> StoreResult<ContainerProperties> {
        self.inner.set_container_metadata(name, metadata)
    }
    fn create_page_blob_with(
        &self,
        path: &BlobPath,
        size: u64,
        sequence_number: u64,
        cond: &Conditions,
        headers: &BlobHeaders,
    ) -> StoreResult<Properties> {
        self.inner
            .create_page_blob_with(path, size, sequence_number, cond, headers)
    }
    fn set_metadata(
        &self,
        path: &BlobPath,
        metadata: &Metadata,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        self.inner.set_metadata(path, metadata, cond)
    }
    fn set_content_headers(
        &self,
        path: &BlobPath,
        content: &ContentHeaders,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        self.inner.set_content_headers(path, content, cond)
    }
    fn set_properties(
        &self,
        path: &BlobPath,
        changes: &crate::blob_headers::PropertyChanges,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        self.inner.set_properties(path, changes, cond)
    }
    fn create_container(&self, name: &str) -> StoreResult<()> {
        self.inner.create_container(name)
    }
    fn list_containers(&self) -> StoreResult<Vec<String>> {
        self.again(|| self.inner.list_containers())
    }
    fn create_page_blob(
        &self,
        path: &BlobPath,
        size: u64,
        sequence_number: u64,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        self.inner
            .create_page_blob(path, size, sequence_number, cond)
    }
    fn put_pages(
        &self,
        path: &BlobPath,
        offset: u64,
        data: &[u8],
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        self.inner.put_pages(path, offset, data, cond)
    }
    fn put_pages_batch(&self, writes: &[PageWrite<'_>], cond: &Conditions) -> StoreResult<()> {
        self.inner.put_pages_batch(writes, cond)
    }
    fn clear_pages(
        &self,
        path: &BlobPath,
        offset: u64,
        len: u64,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        self.inner.clear_pages(path, offset, len, cond)
    }
    fn read(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        offset: u64,
        buf: &mut [u8],
    ) -> StoreResult<()> {
        self.again(|| self.inner.read(path, snapshot, offset, buf))
    }
    fn answers_promptly(&self) -> bool {
        self.inner.answers_promptly()
    }
    /// The inner store's batch; where it fails, each read again on its own, with retries.
    fn read_batch(&self, reads: &mut [PageRead<'_>]) -> StoreResult<()> {
        if self.inner.read_batch(reads).is_ok() {
            return Ok(());
        }
        reads
            .iter_mut()
            .try_for_each(|r| self.read(r.path, r.snapshot, r.offset, r.buf))
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
        self.again(|| {
            self.inner
                .page_ranges(path, snapshot, prev_snapshot, range, marker, max_results)
        })
    }
    fn snapshot(&self, path: &BlobPath, cond: &Conditions) -> StoreResult<String> {
        self.inner.snapshot(path, cond)
    }
    fn list_blobs(
        &self,
        container: &str,
        prefix: &str,
        include_snapshots: bool,
    ) -> StoreResult<Vec<BlobListing>> {
        self.again(|| self.inner.list_blobs(container, prefix, include_snapshots))
    }
    fn delete_blob(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        delete_snapshots: Option<DeleteSnapshots>,
        cond: &Conditions,
    ) -> StoreResult<()> {
        self.inner
            .delete_blob(path, snapshot, delete_snapshots, cond)
    }
    fn resize(&self, path: &BlobPath, size: u64, cond: &Conditions) -> StoreResult<Properties> {
        self.inner.resize(path, size, cond)
    }
    fn set_sequence_number(
        &self,
        path: &BlobPath,
        action: SequenceNumberAction,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        self.inner.set_sequence_number(path, action, cond)
    }
    fn properties(&self, path: &BlobPath, snapshot: Option<&str>) -> StoreResult<Properties> {
        self.again(|| self.inner.properties(path, snapshot))
    }
    fn lease(
        &self,
        path: &BlobPath,
        action: &LeaseAction,
        cond: &Conditions,
    ) -> StoreResult<LeaseAnswer> {
        self.inner.lease(path, action, cond)
    }
    fn incremental_copy(
        &self,
        dest: &BlobPath,
        source: &BlobPath,
        snapshot: Option<&str>,
    ) -> StoreResult<CopyInfo> {
        self.inner.incremental_copy(dest, source, snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{FaultConfig, FaultyStore};
    use crate::{Emulator, Profile};

    #[test]
    fn reads_survive_a_storm_that_fails_most_single_calls() {
        let dir = tempfile::tempdir().unwrap();
        let emulator = std::sync::Arc::new(
            Emulator::open(
                dir.path(),
                Profile::Standard,
                crate::data_log::Durability::Process,
                std::sync::Arc::new(crate::clock::ManualClock::new(1)),
            )
            .unwrap(),
        );
        let path = BlobPath::new("storm", "b");
        emulator.create_container("storm").unwrap();
        emulator
            .create_page_blob(&path, 4096, 0, &Conditions::default())
            .unwrap();
        emulator
            .put_pages(&path, 512, &[7; 512], &Conditions::default())
            .unwrap();
        let storm = FaultConfig {
            seed: 3,
            server_busy: 0.6,
            ..FaultConfig::default()
        };
        let bare = FaultyStore::new(emulator.clone(), storm);
        let failures = (0..50)
            .filter(|_| bare.read(&path, None, 512, &mut [0; 512]).is_err())
            .count();
        assert!(
            failures > 15,
            "the storm fails single reads ({failures} of 50)"
        );
        let retried = ReadRetry::new(FaultyStore::new(emulator.clone(), storm), 40);
        for _ in 0..50 {
            let mut buf = [0u8; 512];
            retried.read(&path, None, 512, &mut buf).unwrap();
            assert_eq!(buf, [7; 512]);
        }
        // Writes are not repeated: a busy answer comes straight back.
        let writes = ReadRetry::new(FaultyStore::new(emulator.clone(), storm), 40);
        let refused = (0..50)
            .filter(|_| {
                writes
                    .put_pages(&path, 0, &[1; 512], &Conditions::default())
                    .is_err()
            })
            .count();
        assert!(refused > 15);
    }
}
