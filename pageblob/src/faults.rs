//! Seeded fault and throttle injection around any [`PageBlobStore`]: 503 ServerBusy before an
//! operation (nothing applied), 500 OperationTimedOut after a write was applied (the caller
//! cannot tell), torn Put Page writes (a prefix of the pages applied, then 500), added latency
//! and a bandwidth cap. Off unless configured; the same seed and
//! call sequence always draw the same faults. A test can also put another client's requests at
//! an exact point among this one's ([`FaultyStore::before_write_to`]).

use std::sync::Mutex;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::error::{ErrorCode, StoreError, StoreResult};
use super::types::*;
use super::PageBlobStore;

/// What to inject.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultConfig {
    pub seed: u64,
    /// Chance per call of 503 ServerBusy before the operation.
    pub server_busy: f64,
    /// Chance per write of 500 OperationTimedOut after the write was applied.
    pub timeout_after_write: f64,
    /// Chance per Put Page of more than one page that the connection drops mid-body: only a
    /// prefix of whole pages (at least one, not all) is applied, then 500 OperationTimedOut.
    pub torn_write: f64,
    /// Every Delete Blob answered 503 ServerBusy (nothing deleted): retention cannot free
    /// snapshots, so they pile up against the profile's limit.
    pub refuse_deletes: bool,
    /// The writer's process dies after this many more writes (counted from when this config
    /// is set): every later call fails, nothing more is applied — a crash mid-cycle.
    pub kill_after_writes: Option<u64>,
    /// Added to every call.
    pub latency: Duration,
    /// Bytes per second moved by reads and writes; `None`: no cap.
    pub bandwidth_bytes_per_sec: Option<u64>,
}

/// A store that misbehaves on purpose.
pub struct FaultyStore<S> {
    inner: S,
    config: Mutex<FaultConfig>,
    rng: Mutex<ChaCha8Rng>,
    injected: std::sync::atomic::AtomicU64,
    /// Writes since the config was last set (for `kill_after_writes`).
    writes: std::sync::atomic::AtomicU64,
    /// Get Blob calls (ranges read), all told.
    reads: std::sync::atomic::AtomicU64,
    /// `put_pages_batch` calls, all told.
    batches: std::sync::atomic::AtomicU64,
    /// `read_batch` calls made.
    read_batches: std::sync::atomic::AtomicU64,
    /// What to run just before the next write to a blob of this name.
    interleaved: Mutex<Option<Interleaved>>,
}

/// [`FaultyStore::before_write_to`]'s blob name and what to run.
type Interleaved = (String, Box<dyn FnOnce() + Send>);

impl<S> std::fmt::Debug for FaultyStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S: PageBlobStore> FaultyStore<S> {
    pub fn new(inner: S, config: FaultConfig) -> FaultyStore<S> {
        let rng = Mutex::new(ChaCha8Rng::seed_from_u64(config.seed));
        FaultyStore {
            inner,
            config: Mutex::new(config),
            rng,
            injected: Default::default(),
            writes: Default::default(),
            reads: Default::default(),
            batches: Default::default(),
            read_batches: Default::default(),
            interleaved: Mutex::new(None),
        }
    }

    /// Run `action` once, just before the next write to blob `name` (of any container) goes
    /// to the store: how a test puts another client's requests (a reader taking a hold, say)
    /// at an exact point among this store's caller's. `action` may call this store itself.
    pub fn before_write_to(&self, name: &str, action: impl FnOnce() + Send + 'static) {
        *self.interleaved.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((name.to_owned(), Box::new(action)));
    }

    /// Before a write to `path`: the interleaved action, if it waits for this blob.
    fn interleave(&self, path: &BlobPath) {
        let action = {
            let mut slot = self.interleaved.lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_ref() {
                Some((name, _)) if *name == path.blob => slot.take().map(|(_, action)| action),
                _ => None,
            }
        };
        if let Some(action) = action {
            action();
        }
    }

    /// The faults now in force.
    pub fn config(&self) -> FaultConfig {
        *self.config.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Change the faults in force (a storm starts or ends); the random stream goes on.
    pub fn set_config(&self, config: FaultConfig) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
        self.writes.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Reads (Get Blob calls) asked of the store so far, failed ones included.
    pub fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Batches of writes (`put_pages_batch` calls) asked of the store so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Batches of reads (`read_batch` calls) asked of the store so far.
    pub fn read_batches(&self) -> u64 {
        self.read_batches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn draw(&self, chance: f64) -> bool {
        if chance <= 0.0 {
            return false;
        }
        let x = self
            .rng
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_u64();
        let hit = ((x >> 11) as f64) < chance * (1u64 << 53) as f64;
        if hit {
            self.injected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        hit
    }

    /// A number in `0..n` from the fault stream.
    fn pick(&self, n: u64) -> u64 {
        self.rng
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_u64()
            % n.max(1)
    }

    /// Before a call: latency, bandwidth, maybe 503; nothing at all once the process died.
    fn before(&self, bytes: usize) -> StoreResult<()> {
        let config = self.config();
        if config
            .kill_after_writes
            .is_some_and(|n| self.writes.load(std::sync::atomic::Ordering::Relaxed) >= n)
        {
            return Err(StoreError::Io {
                path: "(store)".into(),
                source: std::io::Error::other("the process was killed (injected)"),
            });
        }
        let mut wait = config.latency;
        if let Some(bps) = config.bandwidth_bytes_per_sec.filter(|b| *b > 0) {
            wait += Duration::from_secs_f64(bytes as f64 / bps as f64);
        }
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        if self.draw(config.server_busy) {
            return Err(StoreError::service(
                ErrorCode::ServerBusy,
                "Ingress is over the account limit. (injected)",
            ));
        }
        Ok(())
    }

    /// After a write: maybe 500 although it was applied.
    fn after_write<T>(&self, result: StoreResult<T>) -> StoreResult<T> {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if result.is_ok() && self.draw(self.config().timeout_after_write) {
            return Err(StoreError::service(
                ErrorCode::OperationTimedOut,
                "Operation could not be completed within the specified time. (injected)",
            ));
        }
        result
    }
}

impl<S: PageBlobStore> PageBlobStore for FaultyStore<S> {
    fn answers_promptly(&self) -> bool {
        let config = self.config();
        config.latency.is_zero()
            && config.bandwidth_bytes_per_sec.is_none_or(|b| b == 0)
            && self.inner.answers_promptly()
    }
    fn create_container(&self, name: &str) -> StoreResult<()> {
        self.before(0)?;
        self.inner.create_container(name)
    }
    fn create_container_with(&self, name: &str, metadata: &Metadata) -> StoreResult<()> {
        self.before(0)?;
        self.inner.create_container_with(name, metadata)
    }
    fn container_properties(&self, name: &str) -> StoreResult<ContainerProperties> {
        self.before(0)?;
        self.inner.container_properties(name)
    }
    fn set_container_metadata(
        &self,
        name: &str,
        metadata: &Metadata,
    ) -> StoreResult<ContainerProperties> {
        self.before(0)?;
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
        self.interleave(path);
        self.before(0)?;
        let r = self
            .inner
            .create_page_blob_with(path, size, sequence_number, cond, headers);
        self.after_write(r)
    }
    fn set_metadata(
        &self,
        path: &BlobPath,
        metadata: &Metadata,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        self.interleave(path);
        self.before(0)?;
        let r = self.inner.set_metadata(path, metadata, cond);
        self.after_write(r)
    }
    fn set_content_headers(
        &self,
        path: &BlobPath,
        content: &ContentHeaders,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        self.interleave(path);
        self.before(0)?;
        let r = self.inner.set_content_headers(path, content, cond);
        self.after_write(r)
    }
    fn set_properties(
        &self,
        path: &BlobPath,
        changes: &crate::blob_headers::PropertyChanges,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        self.interleave(path);
        self.before(0)?;
        let r = self.inner.set_properties(path, changes, cond);
        self.after_write(r)
    }
    fn list_containers(&self) -> StoreResult<Vec<String>> {
        self.before(0)?;
        self.inner.list_containers()
    }
    fn create_page_blob(
        &self,
        path: &BlobPath,
        size: u64,
        sequence_number: u64,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        self.interleave(path);
        self.before(0)?;
        let r = self
            .inner
            .create_page_blob(path, size, sequence_number, cond);
        self.after_write(r)
    }
    fn put_pages(
        &self,
        path: &BlobPath,
        offset: u64,
        data: &[u8],
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        self.interleave(path);
        self.before(data.len())?;
        let pages = data.len() / PAGE_SIZE as usize;
        if pages > 1 && self.draw(self.config().torn_write) {
            let kept = 1 + self.pick(pages as u64 - 1) as usize;
            self.inner
                .put_pages(path, offset, &data[..kept * PAGE_SIZE as usize], cond)?;
            return Err(StoreError::service(
                ErrorCode::OperationTimedOut,
                "Operation could not be completed within the specified time. (injected: torn write)",
            ));
        }
        let r = self.inner.put_pages(path, offset, data, cond);
        self.after_write(r)
    }
    /// Each write as its own Put Page (each may draw a fault), counted as one batch.
    fn put_pages_batch(&self, writes: &[PageWrite<'_>], cond: &Conditions) -> StoreResult<()> {
        self.batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for w in writes {
            self.put_pages(w.path, w.offset, w.data, cond)?;
        }
        Ok(())
    }
    fn clear_pages(
        &self,
        path: &BlobPath,
        offset: u64,
        len: u64,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        self.interleave(path);
        self.before(0)?;
        let r = self.inner.clear_pages(path, offset, len, cond);
        self.after_write(r)
    }
    fn read(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        offset: u64,
        buf: &mut [u8],
    ) -> StoreResult<()> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.before(buf.len())?;
        self.inner.read(path, snapshot, offset, buf)
    }
    /// Each read as [`read`](PageBlobStore::read) makes it (faults drawn per read), counted as
    /// one batch.
    fn read_batch(&self, reads: &mut [PageRead<'_>]) -> StoreResult<()> {
        self.read_batches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for r in reads.iter_mut() {
            self.read(r.path, r.snapshot, r.offset, r.buf)?;
        }
        Ok(())
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
        self.before(0)?;
        self.inner
            .page_ranges(path, snapshot, prev_snapshot, range, marker, max_results)
    }
    fn snapshot(&self, path: &BlobPath, cond: &Conditions) -> StoreResult<String> {
        self.interleave(path);
        self.before(0)?;
        let r = self.inner.snapshot(path, cond);
        self.after_write(r)
    }
    fn list_blobs(
        &self,
        container: &str,
        prefix: &str,
        include_snapshots: bool,
    ) -> StoreResult<Vec<BlobListing>> {
        self.before(0)?;
        self.inner.list_blobs(container, prefix, include_snapshots)
    }
    fn delete_blob(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        delete_snapshots: Option<DeleteSnapshots>,
        cond: &Conditions,
    ) -> StoreResult<()> {
        self.interleave(path);
        self.before(0)?;
        if self.config().refuse_deletes {
            return Err(StoreError::service(
                ErrorCode::ServerBusy,
                "The server is busy. (injected: deletes refused)",
            ));
        }
        let r = self
            .inner
            .delete_blob(path, snapshot, delete_snapshots, cond);
        self.after_write(r)
    }
    fn resize(&self, path: &BlobPath, size: u64, cond: &Conditions) -> StoreResult<Properties> {
        self.interleave(path);
        self.before(0)?;
        let r = self.inner.resize(path, size, cond);
        self.after_write(r)
    }
    fn set_sequence_number(
        &self,
        path: &BlobPath,
        action: SequenceNumberAction,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        self.interleave(path);
        self.before(0)?;
        let r = self.inner.set_sequence_number(path, action, cond);
        self.after_write(r)
    }
    fn properties(&self, path: &BlobPath, snapshot: Option<&str>) -> StoreResult<Properties> {
        self.before(0)?;
        self.inner.properties(path, snapshot)
    }
    fn lease(
        &self,
        path: &BlobPath,
        action: &LeaseAction,
        cond: &Conditions,
    ) -> StoreResult<LeaseAnswer> {
        self.interleave(path);
        self.before(0)?;
        let r = self.inner.lease(path, action, cond);
        self.after_write(r)
    }
    fn incremental_copy(
        &self,
        dest: &BlobPath,
        source: &BlobPath,
        snapshot: Option<&str>,
    ) -> StoreResult<CopyInfo> {
        self.interleave(dest);
        self.before(0)?;
        let r = self.inner.incremental_copy(dest, source, snapshot);
        self.after_write(r)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::data_log::Durability;
    use crate::{Emulator, Profile};

    fn emulator(dir: &std::path::Path, durability: Durability) -> Emulator {
        Emulator::open(
            dir,
            Profile::Standard,
            durability,
            Arc::new(ManualClock::new(0)),
        )
        .unwrap()
    }

    #[test]
    fn only_a_store_without_syncs_latency_or_bandwidth_cap_answers_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let plain = FaultyStore::new(
            emulator(&dir.path().join("a"), Durability::Process),
            FaultConfig {
                server_busy: 0.5,
                ..FaultConfig::default()
            },
        );
        assert!(plain.answers_promptly(), "drawing 503s does not wait");
        for slow in [
            FaultConfig {
                latency: Duration::from_millis(1),
                ..FaultConfig::default()
            },
            FaultConfig {
                bandwidth_bytes_per_sec: Some(1 << 20),
                ..FaultConfig::default()
            },
        ] {
            plain.set_config(slow);
            assert!(!plain.answers_promptly(), "{slow:?}");
        }
        plain.set_config(FaultConfig::default());
        assert!(plain.answers_promptly(), "the storm is over");
        let synced = FaultyStore::new(
            emulator(&dir.path().join("b"), Durability::Power),
            FaultConfig::default(),
        );
        assert!(!synced.answers_promptly(), "every write is synced");
    }

    #[test]
    fn an_interleaved_action_runs_once_just_before_the_next_write_to_its_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(FaultyStore::new(
            emulator(dir.path(), Durability::Process),
            FaultConfig::default(),
        ));
        let cond = Conditions::default();
        store.create_container("box").unwrap();
        let (a, b) = (BlobPath::new("box", "a"), BlobPath::new("box", "b"));
        store.create_page_blob(&a, 1024, 0, &cond).unwrap();
        store.create_page_blob(&b, 1024, 0, &cond).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (inner, log) = (Arc::clone(&store), Arc::clone(&seen));
        store.before_write_to("b", move || {
            // Another client's write, with what it saw of "b" before this one's.
            let mut page = [0u8; 512];
            inner
                .read(&BlobPath::new("box", "b"), None, 0, &mut page)
                .unwrap();
            inner
                .put_pages(
                    &BlobPath::new("box", "a"),
                    0,
                    &[2; 512],
                    &Conditions::default(),
                )
                .unwrap();
            log.lock().unwrap().push(page[0]);
        });
        store.put_pages(&a, 0, &[1; 512], &cond).unwrap();
        assert!(seen.lock().unwrap().is_empty(), "a write to another blob");
        store.put_pages(&b, 0, &[3; 512], &cond).unwrap();
        store.put_pages(&b, 0, &[4; 512], &cond).unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![0],
            "once, before the first write to b"
        );
        let mut page = [0u8; 512];
        store.read(&a, None, 0, &mut page).unwrap();
        assert_eq!(page[0], 2, "the action's own write went through");
    }
}
