//! A disk's replica in a page-blob store, three page blobs:
//! - the **data blob** `NAME.replica` of fixed slots (slot *i* holds block *i*: a 512-byte
//!   header and up to a block of payload, so rewriting a block always hits the same pages);
//! - the **digest table** `NAME.digests`: 32 bytes per block, the keyed digest of what the slot
//!   holds (all zero for a zero block), so a cycle knows the replica without reading every slot;
//! - the **journal** `NAME.journal`: a ring of 4 KiB manifest slots, point *n* in slot
//!   *n mod 8192*; a deleted point's slot is cleared, so Get Page Ranges lists the live points.
//!
//! A point commits in this order: digest-table entries of a batch → its slots → (all batches)
//! → data blob snapshotted → manifest written. A crash before the manifest leaves earlier points
//! intact; the cycle is redone. Because table entries are written before their slots, the table
//! is trusted only when its Merkle root equals the last manifest's; otherwise a crash interrupted
//! a cycle and the table is rebuilt from the slot headers.

use super::block_record::{BlockCodec, Encoded};
use super::error::ReplicaError;
use super::fence::{fence_of, raise_fence};
use super::manifest::{Consistency, Manifest, ManifestError};
use super::slot_header::{SlotHeader, HEADER_SIZE};
use super::staging_log::StagingLog;
use pageblob::{
    BlobPath, Conditions, ErrorCode, PageBlobStore, PageWrite, MAX_PUT_PAGES_BYTES, PAGE_SIZE,
};

/// Bytes per journal slot (a manifest is ~160 bytes).
pub const JOURNAL_SLOT: u64 = 4096;
/// Slots in the journal ring: live points must stay fewer (retention keeps them far fewer).
pub const JOURNAL_SLOTS: u64 = 8192;
/// Journal slots a listing reads with one call (1 MiB).
const JOURNAL_READ_SLOTS: u64 = 256;
/// Bytes of a journal slot read first from a store that answers promptly: one page, which
/// holds a manifest of up to 508 bytes whole.
const JOURNAL_HEAD_BYTES: usize = 512;
/// Bytes of one digest-table entry.
pub const DIGEST_ENTRY: u64 = 32;

/// A journal slot whose manifest could not be read: the point it held cannot be trusted, the
/// others still can.
#[derive(Debug)]
pub struct DamagedPoint {
    /// Journal slot index (the point's sequence modulo the journal's slots).
    pub slot: u64,
    pub error: ReplicaError,
    /// The certificate thumbprint a well-formed manifest names when it does not authenticate
    /// under the key given: written with that other certificate (or tampered with). Unverified:
    /// for telling the user which .pfx the replica needs, never for trusting anything.
    pub other_key_id: Option<[u8; 20]>,
}

/// The one certificate a replica's points were written with when none of them authenticates
/// under the key given and every damaged slot names the same other thumbprint; `None` when
/// some point reads, or the slots say different things (damage, not another certificate).
pub fn written_with_other_certificate(
    points: &[Manifest],
    damaged: &[DamagedPoint],
    given: &[u8; 20],
) -> Option<[u8; 20]> {
    let first = damaged.first()?.other_key_id?;
    let same = damaged.iter().all(|d| d.other_key_id == Some(first));
    (points.is_empty() && same && first != *given).then_some(first)
}

/// Slot geometry of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub disk_size: u64,
    pub block_size: u32,
}

impl Layout {
    pub fn blocks(&self) -> u64 {
        self.disk_size.div_ceil(u64::from(self.block_size))
    }
    pub fn slot_size(&self) -> u64 {
        HEADER_SIZE as u64 + u64::from(self.block_size)
    }
    pub fn slot_offset(&self, block: u64) -> u64 {
        block * self.slot_size()
    }
    /// The data blob's size: a slot per block.
    pub fn data_blob_size(&self) -> u64 {
        self.blocks() * self.slot_size()
    }

    /// An error when the data blob would be past a page blob's largest size
    /// ([`pageblob::MAX_BLOB_SIZE`], 8 TiB), saying which disks fit.
    pub fn check_fits(&self) -> Result<(), ReplicaError> {
        let blob_size = self.blocks().saturating_mul(self.slot_size());
        if blob_size <= pageblob::MAX_BLOB_SIZE {
            return Ok(());
        }
        Err(ReplicaError::DiskTooLarge {
            disk_size: self.disk_size,
            block_size: self.block_size,
            blob_size,
            largest: pageblob::MAX_BLOB_SIZE / self.slot_size() * u64::from(self.block_size),
        })
    }

    /// Bytes of block `block` inside the disk (the last block may be short).
    pub fn block_len(&self, block: u64) -> u64 {
        u64::from(self.block_size).min(self.disk_size - block * u64::from(self.block_size))
    }
}

/// The replica of one disk.
pub struct DiskReplica<'a> {
    store: &'a dyn PageBlobStore,
    pub data: BlobPath,
    pub digests: BlobPath,
    pub journal: BlobPath,
    /// The last nonce epoch claimed (`epoch_record`).
    pub epochs: BlobPath,
    pub layout: Layout,
    /// Premium targets: the staging log on a standard store that cycles go through.
    pub staging: Option<StagingLog<'a>>,
    /// The points as last read, with the journal's ETag and the key they were verified with:
    /// while the journal is unchanged — or changed only through this handle, which keeps the
    /// listing in step (`change_journal`) — listing them costs one Get Blob Properties.
    points_cache: std::sync::Mutex<Option<CachedPoints>>,
    /// How a listing reads the journal's slots.
    journal_reads: JournalReads,
    /// This writer's fence ([`DiskReplica::take_over`]): the sequence number the data blob,
    /// the digest table and the journal hold while it is the replica's writer, and which its
    /// writes to them require (`x-ms-if-sequence-number-eq`). `None`: a reader, or a writer
    /// that does not fence (tests of the format).
    fence: Option<u64>,
}

/// How a listing reads the journal's slots (a manifest is a few hundred bytes of its 4 KiB
/// slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JournalReads {
    /// A run of slots per call: the fewest calls, what a store across a network wants, and
    /// one whose calls may fail (each call is another chance to).
    #[default]
    Runs,
    /// Each slot's first page alone, the rest of a slot only when the manifest's length (or
    /// a zero page) says so: the fewest bytes copied, for a reader of a store in its own
    /// process that lists often (the simulator's checker, twice per cycle). Taken only where
    /// the store answers promptly; elsewhere a listing reads runs.
    SlotHeads,
}

/// Journal ETag, digest key, points.
type CachedPoints = (String, [u8; 32], Vec<Manifest>);

impl std::fmt::Debug for DiskReplica<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskReplica")
            .field("data", &self.data)
            .field("layout", &self.layout)
            .finish()
    }
}

fn none() -> Conditions {
    Conditions::default()
}

/// Create the page blob `path` of `size` bytes unless it exists: only if absent
/// (`If-None-Match: *`), so a replica another writer made meanwhile is never replaced.
fn create_if_absent(
    store: &dyn PageBlobStore,
    path: &BlobPath,
    size: u64,
) -> Result<(), ReplicaError> {
    let only_if_absent = Conditions {
        if_none_match: Some("*".into()),
        ..none()
    };
    match store.create_page_blob(path, size, 0, &only_if_absent) {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(ErrorCode::BlobAlreadyExists) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl<'a> DiskReplica<'a> {
    /// Open (creating if needed) the replica blobs `NAME.replica`, `NAME.digests` and
    /// `NAME.journal`.
    pub fn open(
        store: &'a dyn PageBlobStore,
        container: &str,
        name: &str,
        layout: Layout,
    ) -> Result<DiskReplica<'a>, ReplicaError> {
        // Checked where replicas are made and written; readers still open a replica an older
        // version let in under a name refused now (its points stay restorable).
        if let Some(why) = super::replica_name::replica_name_error(name) {
            return Err(ReplicaError::BadName {
                name: name.into(),
                why,
            });
        }
        layout.check_fits()?;
        match store.create_container(container) {
            Ok(()) => {}
            Err(e) if e.code() == Some(ErrorCode::ContainerAlreadyExists) => {}
            Err(e) => return Err(e.into()),
        }
        let r = DiskReplica::named(store, container, name, layout);
        let absent = |path: &BlobPath| matches!(store.properties(path, None), Err(e) if e.code() == Some(ErrorCode::BlobNotFound));
        if absent(&r.data) {
            create_if_absent(store, &r.data, layout.data_blob_size())?;
        }
        if absent(&r.digests) {
            let size = (layout.blocks() * DIGEST_ENTRY).next_multiple_of(PAGE_SIZE);
            create_if_absent(store, &r.digests, size)?;
        }
        if absent(&r.journal) {
            create_if_absent(store, &r.journal, JOURNAL_SLOTS * JOURNAL_SLOT)?;
        }
        Ok(r)
    }

    /// Open an existing replica to read it, creating nothing (a reader's store may be
    /// read-only; a mistyped name is an error, not a new replica).
    pub fn open_existing(
        store: &'a dyn PageBlobStore,
        container: &str,
        name: &str,
        layout: Layout,
    ) -> Result<DiskReplica<'a>, ReplicaError> {
        let r = DiskReplica::named(store, container, name, layout);
        for path in [&r.data, &r.journal] {
            match store.properties(path, None) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.code(),
                        Some(ErrorCode::BlobNotFound | ErrorCode::ContainerNotFound)
                    ) =>
                {
                    return Err(ReplicaError::NoReplica {
                        name: name.into(),
                        blob: path.to_string(),
                    })
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(r)
    }

    fn named(
        store: &'a dyn PageBlobStore,
        container: &str,
        name: &str,
        layout: Layout,
    ) -> DiskReplica<'a> {
        DiskReplica {
            store,
            data: BlobPath::new(container, &format!("{name}.replica")),
            digests: BlobPath::new(container, &format!("{name}.digests")),
            journal: BlobPath::new(container, &format!("{name}.journal")),
            epochs: BlobPath::new(container, &format!("{name}.epochs")),
            layout,
            staging: None,
            points_cache: Default::default(),
            journal_reads: JournalReads::Runs,
            fence: None,
        }
    }

    /// Another handle on the same blobs, for reading (no staging log; a points cache of its
    /// own): made without a call to the store.
    pub fn reader(&self) -> DiskReplica<'a> {
        DiskReplica {
            store: self.store,
            data: self.data.clone(),
            digests: self.digests.clone(),
            journal: self.journal.clone(),
            epochs: self.epochs.clone(),
            layout: self.layout,
            staging: None,
            points_cache: Default::default(),
            journal_reads: JournalReads::Runs,
            fence: None,
        }
    }

    /// This handle with the slot geometry `layout` (the block size of an existing replica
    /// decides it): the same blobs, fence and staging log, made without a call to the store.
    pub fn with_layout(mut self, layout: Layout) -> DiskReplica<'a> {
        if layout != self.layout {
            self.layout = layout;
            *self
                .points_cache
                .get_mut()
                .unwrap_or_else(|p| p.into_inner()) = None;
        }
        self
    }

    /// Read the journal's slots as `reads` says when listing points.
    pub fn set_journal_reads(&mut self, reads: JournalReads) {
        self.journal_reads = reads;
    }

    /// The store the replica's blobs are in.
    pub fn store(&self) -> &'a dyn PageBlobStore {
        self.store
    }

    /// The replica's name (its data blob's, less `.replica`).
    pub fn name(&self) -> &str {
        self.data
            .blob
            .strip_suffix(".replica")
            .unwrap_or(&self.data.blob)
    }

    /// Hold point `sequence` against retention while it is read ([`super::point_hold`]).
    pub fn hold_point(
        &self,
        sequence: u64,
        rng: &mut dyn rand_core::RngCore,
    ) -> Result<super::point_hold::PointHold, ReplicaError> {
        super::point_hold::PointHold::take(
            self.store,
            &self.data.container,
            self.name(),
            sequence,
            rng,
        )
    }

    /// Renew `hold` on one of this replica's points.
    pub fn hold_renew(&self, hold: &super::point_hold::PointHold) -> Result<(), ReplicaError> {
        hold.renew(self.store)
    }

    /// Let `hold` go.
    pub fn release_hold(&self, hold: super::point_hold::PointHold) -> Result<(), ReplicaError> {
        hold.release(self.store)
    }

    /// The points readers hold now ([`super::point_hold::held_points`]).
    pub fn held_points(
        &self,
        now_nanos: u64,
    ) -> Result<std::collections::BTreeSet<u64>, ReplicaError> {
        super::point_hold::held_points(self.store, &self.data.container, self.name(), now_nanos)
    }

    /// The points readers hold now ([`super::point_hold::held_now`]: nothing swept).
    pub fn held_now(&self) -> Result<std::collections::BTreeSet<u64>, ReplicaError> {
        super::point_hold::held_now(self.store, &self.data.container, self.name())
    }

    /// Claim the next nonce epoch: read the last one claimed, store its successor, and return
    /// it only once that is stored, so no two claims (across crashes and restarts) ever get
    /// the same epoch. The first claim starts at a random epoch below 2^63 from `rng`.
    pub fn claim_epoch(&self, rng: &mut dyn rand_core::RngCore) -> Result<u64, ReplicaError> {
        use super::epoch_record::{EpochRecord, EPOCH_RECORD_SIZE};
        let etag = match self.store.properties(&self.epochs, None) {
            Ok(p) => p.etag,
            Err(e) if e.code() == Some(ErrorCode::BlobNotFound) => {
                create_if_absent(self.store, &self.epochs, EPOCH_RECORD_SIZE as u64)?;
                self.store.properties(&self.epochs, None)?.etag
            }
            Err(e) => return Err(e.into()),
        };
        let mut page = [0u8; EPOCH_RECORD_SIZE];
        self.store.read(&self.epochs, None, 0, &mut page)?;
        let blob = || self.epochs.to_string();
        let last = EpochRecord::decode(&page).map_err(|source| ReplicaError::Epochs {
            blob: blob(),
            source,
        })?;
        let next = match last {
            None => rng.next_u64() >> 1,
            Some(r) => r
                .last_epoch
                .checked_add(1)
                .ok_or_else(|| ReplicaError::EpochsExhausted { blob: blob() })?,
        };
        let record = EpochRecord { last_epoch: next };
        // Only over the record read: of two writers claiming at once, one is refused, so no
        // two ever use one epoch. (A retried write of this claim that had already landed is
        // refused too: the claim fails and nothing uses the epoch.)
        let unchanged = Conditions {
            if_match: Some(etag),
            ..none()
        };
        match self
            .store
            .put_pages(&self.epochs, 0, &record.encode(), &unchanged)
        {
            Ok(_) => Ok(next),
            Err(e) if e.code() == Some(ErrorCode::ConditionNotMet) => {
                Err(ReplicaError::EpochClaimRaced { blob: blob() })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Become the replica's one writer, fenced by epoch `epoch` (just claimed): the data blob,
    /// the digest table, the journal (and the staging log) take the fence as their sequence
    /// number, and every later write of this handle to them requires it. A writer that
    /// took the replica over before is refused from then on (412 → [`ReplicaError::TakenOver`]),
    /// so two agents of one replica never interleave a cycle: of two, the later to take over
    /// writes, the other stops. Take over before listing the points a writer acts on.
    pub fn take_over(&mut self, epoch: u64) -> Result<(), ReplicaError> {
        let fence = fence_of(epoch);
        for path in [&self.data, &self.digests, &self.journal] {
            raise_fence(self.store, path, fence)?;
        }
        if let Some(log) = &mut self.staging {
            log.take_over(fence)?;
        }
        self.fence = Some(fence);
        Ok(())
    }

    /// Whether this handle is still the replica's writer (the data blob holds its fence):
    /// [`ReplicaError::TakenOver`] if not. A handle that does not fence is not checked.
    fn check_fence(&self) -> Result<(), ReplicaError> {
        let Some(fence) = self.fence else {
            return Ok(());
        };
        if self.store.properties(&self.data, None)?.sequence_number == fence {
            Ok(())
        } else {
            Err(ReplicaError::TakenOver {
                blob: self.data.to_string(),
                fence,
            })
        }
    }

    /// Write `bytes` (whole pages) at `at` of `path`, fenced, in Put Pages of at most 4 MiB.
    fn put_fenced(&self, path: &BlobPath, at: u64, bytes: &[u8]) -> Result<(), ReplicaError> {
        let cond = self.fenced();
        for (i, chunk) in bytes.chunks(MAX_PUT_PAGES_BYTES as usize).enumerate() {
            self.store
                .put_pages(path, at + (i as u64) * MAX_PUT_PAGES_BYTES, chunk, &cond)
                .map_err(|e| self.write_error(path, e))?;
        }
        Ok(())
    }

    /// Conditions of this handle's writes to its fenced blobs.
    fn fenced(&self) -> Conditions {
        Conditions {
            if_sequence_number_eq: self.fence,
            ..none()
        }
    }

    /// A store error of a write to `path`: a refused fence is [`ReplicaError::TakenOver`].
    fn write_error(&self, path: &BlobPath, e: pageblob::StoreError) -> ReplicaError {
        ReplicaError::of_fenced_write(self.fence, path, e)
    }

    /// Stage this replica's cycles in a log on `store` (a standard store for a premium target).
    pub fn with_staging(
        mut self,
        store: &'a dyn PageBlobStore,
        container: &str,
        name: &str,
    ) -> Result<DiskReplica<'a>, ReplicaError> {
        let log = StagingLog::open(
            store,
            container,
            name,
            self.layout.blocks(),
            self.layout.slot_size(),
        )?;
        self.staging = Some(log);
        if let (Some(fence), Some(log)) = (self.fence, &mut self.staging) {
            log.take_over(fence)?;
        }
        Ok(self)
    }

    /// Write a block's record into its slot (only the pages it occupies), or clear the slot.
    pub fn write_block(&self, block: u64, encoded: Encoded) -> Result<(), ReplicaError> {
        let at = self.layout.slot_offset(block);
        let cond = self.fenced();
        match encoded {
            Encoded::Zero { .. } => {
                self.store
                    .clear_pages(&self.data, at, self.layout.slot_size(), &cond)
                    .map_err(|e| self.write_error(&self.data, e))?;
            }
            Encoded::Record { mut bytes, .. } => {
                bytes.resize(bytes.len().next_multiple_of(PAGE_SIZE as usize), 0);
                self.put_fenced(&self.data, at, &bytes)?;
            }
        }
        Ok(())
    }

    /// [`write_block`](Self::write_block) for several blocks: the records go to the store as one
    /// batch of Put Page calls, any zero blocks' slots are cleared one by one.
    pub fn write_blocks(
        &self,
        blocks: impl Iterator<Item = (u64, Encoded)>,
    ) -> Result<(), ReplicaError> {
        let mut records = Vec::new();
        for (block, encoded) in blocks {
            match encoded {
                Encoded::Record { mut bytes, .. }
                    if bytes.len() <= MAX_PUT_PAGES_BYTES as usize =>
                {
                    bytes.resize(bytes.len().next_multiple_of(PAGE_SIZE as usize), 0);
                    records.push((self.layout.slot_offset(block), bytes));
                }
                other => self.write_block(block, other)?,
            }
        }
        let writes: Vec<PageWrite<'_>> = records
            .iter()
            .map(|(offset, bytes)| PageWrite {
                path: &self.data,
                offset: *offset,
                data: bytes,
            })
            .collect();
        self.store
            .put_pages_batch(&writes, &self.fenced())
            .map_err(|e| self.write_error(&self.data, e))
    }

    /// The digest table as stored: block *i*'s keyed digest for every block with a non-zero
    /// entry, ascending (the other blocks are zero blocks: an all-zero entry). Reads only the
    /// pages that were ever written, a bounded piece at a time: what this costs follows the
    /// blocks the replica holds, not the disk's size.
    pub fn load_digest_table(&self) -> Result<Vec<(u64, [u8; 32])>, ReplicaError> {
        const PIECE: u64 = 1 << 20;
        let table_end = self.layout.blocks() * DIGEST_ENTRY;
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for (start, end) in self.written_ranges(&self.digests)? {
            let end = end.min(table_end);
            let mut at = start.next_multiple_of(DIGEST_ENTRY);
            while at < end {
                let n = (end - at).min(PIECE);
                buf.resize(n as usize, 0);
                self.store.read(&self.digests, None, at, &mut buf)?;
                for (i, e) in buf.chunks_exact(DIGEST_ENTRY as usize).enumerate() {
                    let e: [u8; 32] = e.try_into().expect("32 bytes");
                    if e != [0; 32] {
                        out.push((at / DIGEST_ENTRY + i as u64, e));
                    }
                }
                at += n;
            }
        }
        Ok(out)
    }

    /// The written ranges of the digest table blob, `(start, end)` in bytes.
    pub fn written_digest_ranges(&self) -> Result<Vec<(u64, u64)>, ReplicaError> {
        self.written_ranges(&self.digests)
    }

    /// Clear `len` bytes of table pages from byte `at` (their blocks read as zero blocks).
    pub fn clear_digest_pages(&self, at: u64, len: u64) -> Result<(), ReplicaError> {
        self.store
            .clear_pages(&self.digests, at, len, &self.fenced())
            .map_err(|e| self.write_error(&self.digests, e))?;
        Ok(())
    }

    /// Write the table pages holding entries `first..first + entries.len()`.
    pub fn store_digest_entries(
        &self,
        first: u64,
        entries: &[Option<[u8; 32]>],
    ) -> Result<(), ReplicaError> {
        if entries.is_empty() {
            return Ok(());
        }
        // Whole pages: the entries plus their page neighbours, which the caller's table must
        // supply; so callers pass page-aligned runs (see `digest_pages`).
        let mut bytes = Vec::with_capacity(entries.len() * DIGEST_ENTRY as usize);
        for e in entries {
            bytes.extend_from_slice(&e.unwrap_or([0; 32]));
        }
        let at = first * DIGEST_ENTRY;
        assert!(at % PAGE_SIZE == 0, "digest runs start on a page");
        bytes.resize(bytes.len().next_multiple_of(PAGE_SIZE as usize), 0);
        self.put_fenced(&self.digests, at, &bytes)
    }

    /// Rebuild the digest table from the slot headers (after an interrupted cycle): slots
    /// never written or cleared are zero blocks; only written slots are read. A write cut short
    /// may have left a new header over old or partial payload (a torn write), so every written
    /// slot's whole record is read and its payload checksum verified, and a damaged record gets
    /// a digest nothing matches: the block is sent again. Every slot, not only those the store's
    /// diff from the last point lists: a store may not list a write it never acknowledged (the
    /// emulator after a power cut), and a torn slot trusted here would be in the next point.
    pub fn rebuild_digest_table(&self) -> Result<Vec<(u64, [u8; 32])>, ReplicaError> {
        const UNKNOWN: [u8; 32] = [0xFF; 32];
        let mut table = Vec::new();
        let slot = self.layout.slot_size();
        let mut head = vec![0u8; HEADER_SIZE];
        let mut payload = Vec::new();
        // Blocks below this one were looked at (a slot may lie across two written ranges).
        let mut next_block = 0;
        for (start, end) in self.written_ranges(&self.data)? {
            let first = (start / slot).max(next_block);
            let last = ((end - 1) / slot).min(self.layout.blocks() - 1);
            for block in first..=last {
                next_block = block + 1;
                self.read_slot_header(block, &mut head)?;
                if pageblob::is_zero(&head) {
                    continue;
                }
                let Ok(header) = SlotHeader::decode(&head) else {
                    table.push((block, UNKNOWN));
                    continue;
                };
                let stored = u64::from(header.stored_len);
                let intact = stored <= u64::from(self.layout.block_size) && {
                    payload.resize(stored as usize, 0);
                    self.store.read(
                        &self.data,
                        None,
                        self.layout.slot_offset(block) + HEADER_SIZE as u64,
                        &mut payload,
                    )?;
                    crc32c::crc32c(&payload) == header.payload_crc
                };
                table.push((block, if intact { header.digest } else { UNKNOWN }));
            }
        }
        Ok(table)
    }

    /// Written ranges of a blob as half-open `(start, end)` byte pairs, all pages of them.
    fn written_ranges(&self, path: &BlobPath) -> Result<Vec<(u64, u64)>, ReplicaError> {
        self.written_ranges_at(path, None)
    }

    pub(super) fn written_ranges_at(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
    ) -> Result<Vec<(u64, u64)>, ReplicaError> {
        // Checked whole pages below a page blob's largest size: `end + 1` cannot overflow.
        Ok(
            pageblob::page_listing::all_page_ranges(self.store, path, snapshot, None)?
                .into_iter()
                .map(|r| (r.start, r.end + 1))
                .collect(),
        )
    }

    /// Bytes the data blob holds now (its written pages): what the replica costs in storage.
    pub fn stored_bytes(&self) -> Result<u64, ReplicaError> {
        Ok(self
            .written_ranges(&self.data)?
            .iter()
            .map(|(start, end)| end - start)
            .sum())
    }

    /// Blocks whose slots differ between point snapshot `prev` (none: an empty blob) and
    /// `snapshot` (none: the blob as it is now) — written or cleared — in order, from the
    /// store's page-range diff. What an auditor reads to check a point incrementally.
    pub fn changed_blocks(
        &self,
        prev: Option<&str>,
        snapshot: Option<&str>,
    ) -> Result<Vec<u64>, ReplicaError> {
        Ok(self
            .changed_block_extents(prev, snapshot)?
            .into_iter()
            .map(|(block, _)| block)
            .collect())
    }

    /// [`changed_blocks`](Self::changed_blocks), each with the bytes from its slot's start that
    /// the diff says changed (0 when the slot's first page did not): a hint for
    /// [`read_record_within`](Self::read_record_within).
    pub fn changed_block_extents(
        &self,
        prev: Option<&str>,
        snapshot: Option<&str>,
    ) -> Result<Vec<(u64, u64)>, ReplicaError> {
        let slot = self.layout.slot_size();
        let mut out: Vec<(u64, u64)> = Vec::new();
        // In order and none overlapping (`page_listing` checks), so each block comes once,
        // or twice in a row when two ranges share its slot.
        for r in pageblob::page_listing::all_page_ranges(self.store, &self.data, snapshot, prev)? {
            let last = (r.end / slot).min(self.layout.blocks().saturating_sub(1));
            for block in r.start / slot..=last {
                let start = block * slot;
                let from_start = if r.start <= start {
                    (r.end + 1).min(start + slot) - start
                } else {
                    0
                };
                match out.last_mut() {
                    Some((last, known)) if *last == block => *known = (*known).max(from_start),
                    _ => out.push((block, from_start)),
                }
            }
        }
        Ok(out)
    }

    /// The decodable slot headers of the data blob (or one of its snapshots), by block: only
    /// written slots are read. For audits (the simulator's nonce-reuse checker).
    pub fn slot_headers(
        &self,
        snapshot: Option<&str>,
    ) -> Result<Vec<(u64, SlotHeader)>, ReplicaError> {
        let slot = self.layout.slot_size();
        let mut out = Vec::new();
        let mut head = vec![0u8; HEADER_SIZE];
        let mut last = None;
        for (start, end) in self.written_ranges_at(&self.data, snapshot)? {
            for block in start / slot..=((end - 1) / slot).min(self.layout.blocks() - 1) {
                if last.is_some_and(|l| l >= block) {
                    continue;
                }
                last = Some(block);
                self.store
                    .read(&self.data, snapshot, block * slot, &mut head)?;
                if let Ok(h) = SlotHeader::decode(&head) {
                    out.push((block, h));
                }
            }
        }
        Ok(out)
    }

    /// The current slot header bytes of `block` (all zero for a cleared or never-written slot).
    pub fn read_slot_header(&self, block: u64, head: &mut [u8]) -> Result<(), ReplicaError> {
        self.store.read(
            &self.data,
            None,
            self.layout.slot_offset(block),
            &mut head[..HEADER_SIZE],
        )?;
        Ok(())
    }

    /// Read and decode block `block` from the blob or a point's snapshot. A cleared slot reads
    /// as a zero block.
    pub fn read_block(
        &self,
        codec: &BlockCodec,
        snapshot: Option<&str>,
        block: u64,
    ) -> Result<Vec<u8>, ReplicaError> {
        Ok(self.read_record(codec, snapshot, block)?.map_or_else(
            || vec![0; self.layout.block_len(block) as usize],
            |(_, b)| b,
        ))
    }

    /// [`read_block`](Self::read_block) with the record's header, or `None` for a cleared
    /// slot (a zero block). The block's bytes hash to the header's digest (checked in decoding).
    pub fn read_record(
        &self,
        codec: &BlockCodec,
        snapshot: Option<&str>,
        block: u64,
    ) -> Result<Option<(SlotHeader, Vec<u8>)>, ReplicaError> {
        self.read_record_within(codec, snapshot, block, HEADER_SIZE as u64)
    }

    /// [`read_record`](Self::read_record) of a slot whose first `written` bytes the caller
    /// knows were written (from page ranges): see [`fetch_record_within`](Self::fetch_record_within).
    pub fn read_record_within(
        &self,
        codec: &BlockCodec,
        snapshot: Option<&str>,
        block: u64,
        written: u64,
    ) -> Result<Option<(SlotHeader, Vec<u8>)>, ReplicaError> {
        let Some(record) = self.fetch_record_within(snapshot, block, written)? else {
            return Ok(None);
        };
        let header = SlotHeader::decode(&record).map_err(|e| block_error(snapshot, block, e))?;
        codec
            .decode_owned(record, block)
            .map(|(data, _)| Some((header, data)))
            .map_err(|e| block_error(snapshot, block, e))
    }

    /// The raw record in block `block`'s slot (header and stored payload, not checked beyond
    /// the header's shape); `None` for a cleared slot.
    pub fn fetch_record(
        &self,
        snapshot: Option<&str>,
        block: u64,
    ) -> Result<Option<Vec<u8>>, ReplicaError> {
        self.fetch_record_within(snapshot, block, HEADER_SIZE as u64)
    }

    /// [`fetch_record`](Self::fetch_record) of a slot whose first `written` bytes are known to
    /// be written (a listing of page ranges says so): they are read with one call, which holds
    /// the whole record when it lies within them — a record is written from its slot's start,
    /// so the written pages at the start of a slot cover the newest record. Only what the
    /// header says lies beyond them is read with a second call (one read instead of two per
    /// record: a restore or an audit from Azure makes half the requests). Less than a header
    /// reads the header first, as `fetch_record` does.
    pub fn fetch_record_within(
        &self,
        snapshot: Option<&str>,
        block: u64,
        written: u64,
    ) -> Result<Option<Vec<u8>>, ReplicaError> {
        let mut record = vec![0u8; self.first_read_len(written)];
        self.store.read(
            &self.data,
            snapshot,
            self.layout.slot_offset(block),
            &mut record,
        )?;
        self.finish_record(snapshot, block, record)
    }

    /// [`DiskReplica::fetch_record_within`] for several blocks, `(block, written)` each: the
    /// first reads go to the store together (`read_batch`: the HTTP client pipelines them, so
    /// a restore across a network waits a round trip per batch, not per record). Where the
    /// batch fails, each block is read again on its own, so an error names its block.
    pub fn fetch_records_within(
        &self,
        snapshot: Option<&str>,
        blocks: &[(u64, u64)],
    ) -> Vec<Result<Option<Vec<u8>>, ReplicaError>> {
        let mut records: Vec<Vec<u8>> = blocks
            .iter()
            .map(|&(_, written)| vec![0u8; self.first_read_len(written)])
            .collect();
        let mut reads: Vec<pageblob::PageRead<'_>> = blocks
            .iter()
            .zip(records.iter_mut())
            .map(|(&(block, _), buf)| pageblob::PageRead {
                path: &self.data,
                snapshot,
                offset: self.layout.slot_offset(block),
                buf,
            })
            .collect();
        let batched = self.store.read_batch(&mut reads);
        drop(reads);
        match batched {
            Ok(()) => blocks
                .iter()
                .zip(records)
                .map(|(&(block, _), record)| self.finish_record(snapshot, block, record))
                .collect(),
            Err(_) => blocks
                .iter()
                .map(|&(block, written)| self.fetch_record_within(snapshot, block, written))
                .collect(),
        }
    }

    /// The bytes a record's first read takes: the slot's written bytes from its start, at
    /// least a header, at most the slot.
    fn first_read_len(&self, written: u64) -> usize {
        written.clamp(HEADER_SIZE as u64, self.layout.slot_size()) as usize
    }

    /// A record from its first read (`record`): `None` where the slot holds none, else cut to
    /// the record's length, the rest read where the header says it goes on.
    fn finish_record(
        &self,
        snapshot: Option<&str>,
        block: u64,
        mut record: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, ReplicaError> {
        let at = self.layout.slot_offset(block);
        let first = record.len();
        if pageblob::is_zero(&record[..HEADER_SIZE]) {
            return Ok(None);
        }
        let header = SlotHeader::decode(&record[..HEADER_SIZE])
            .map_err(|e| block_error(snapshot, block, e))?;
        let stored = (u64::from(header.stored_len)).min(u64::from(self.layout.block_size));
        let whole = HEADER_SIZE + stored as usize;
        if whole <= first {
            record.truncate(whole);
        } else {
            record.resize(whole, 0);
            self.store.read(
                &self.data,
                snapshot,
                at + first as u64,
                &mut record[first..],
            )?;
        }
        Ok(Some(record))
    }

    /// Commit a point: snapshot the data blob, then write its manifest into journal slot
    /// `sequence`, recording `merkle_root` (of the digest table as the point holds it).
    /// Returns the manifest.
    #[allow(clippy::too_many_arguments)]
    pub fn commit_point(
        &self,
        sequence: u64,
        generation: u64,
        time_nanos: u64,
        consistency: Consistency,
        key_id: [u8; 20],
        merkle_root: [u8; 32],
        digest_key: &[u8; 32],
    ) -> Result<Manifest, ReplicaError> {
        let slot_at = (sequence % JOURNAL_SLOTS) * JOURNAL_SLOT;
        let mut occupant = [0u8; 4];
        self.store
            .read(&self.journal, None, slot_at, &mut occupant)?;
        if occupant != [0; 4] {
            // A writer that took the replica over since this one's last write may have
            // committed this sequence: say so rather than blame the journal.
            self.check_fence()?;
            // Live points are far fewer than the slots: the occupant is point
            // `sequence - JOURNAL_SLOTS` kept past the ring, or — with no such point — a manifest
            // of this very sequence that another writer (one that does not fence) committed.
            return Err(match sequence.checked_sub(JOURNAL_SLOTS) {
                Some(live) => ReplicaError::JournalFull { sequence, live },
                None => ReplicaError::PointTaken { sequence },
            });
        }
        let snapshot = self.store.snapshot(&self.data, &none())?;
        let manifest = Manifest {
            sequence,
            time_nanos,
            consistency,
            generation,
            disk_size: self.layout.disk_size,
            block_size: self.layout.block_size,
            key_id,
            merkle_root,
            snapshot,
        };
        // A journal slot: manifest length (u32) then the manifest.
        let encoded = manifest.encode(digest_key);
        let mut bytes = (encoded.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&encoded);
        bytes.resize(JOURNAL_SLOT as usize, 0);
        self.change_journal(
            |cond| self.store.put_pages(&self.journal, slot_at, &bytes, cond),
            |key, points| {
                // Listed under another key, the new manifest is not known to verify there.
                if key != digest_key {
                    return false;
                }
                let at = points.partition_point(|p| p.sequence < manifest.sequence);
                points.insert(at, manifest.clone());
                true
            },
        )?;
        Ok(manifest)
    }

    /// Delete a point ([`delete_points`](Self::delete_points) of one).
    pub fn delete_point(&self, manifest: &Manifest) -> Result<Vec<u64>, ReplicaError> {
        self.delete_points(&[manifest])
    }

    /// Delete `points`: their journal slots are cleared first (the points are gone), then the
    /// replica's holds are listed, then the snapshot of each point no live hold names is
    /// deleted. A reader takes its hold and then checks its point is still listed
    /// ([`super::point_hold`]), so a reader that found it listed took its hold before the
    /// slot was cleared, and the listing here sees that hold: its point's snapshot stays,
    /// unlisted, until the reader lets go (`sweep_orphans` removes it then). Returns the
    /// points whose snapshots were kept so. A crash in between leaves orphan snapshots that
    /// `sweep_orphans` removes.
    pub fn delete_points(&self, points: &[&Manifest]) -> Result<Vec<u64>, ReplicaError> {
        let mut kept_for_readers = Vec::new();
        if points.is_empty() {
            return Ok(kept_for_readers);
        }
        for manifest in points {
            let slot = manifest.sequence % JOURNAL_SLOTS;
            self.change_journal(
                |cond| {
                    self.store
                        .clear_pages(&self.journal, slot * JOURNAL_SLOT, JOURNAL_SLOT, cond)
                },
                |_, points| {
                    points.retain(|p| p.sequence % JOURNAL_SLOTS != slot);
                    true
                },
            )?;
        }
        let held = self.held_now()?;
        for manifest in points {
            if held.contains(&manifest.sequence) {
                kept_for_readers.push(manifest.sequence);
            } else {
                self.delete_snapshot(&manifest.snapshot)?;
            }
        }
        Ok(kept_for_readers)
    }

    /// Change the journal with `write`. While this handle holds a listing of the points, the
    /// write is conditioned on the journal's ETag at that listing, so its success proves the
    /// journal is the listing plus this change: `follow` brings the listing along (false:
    /// drop it) and the next `points` costs one Get Blob Properties instead of a scan. A
    /// journal someone else changed meanwhile (412) loses the listing and takes the write
    /// unconditioned, as it would have without one.
    fn change_journal(
        &self,
        write: impl Fn(&Conditions) -> pageblob::StoreResult<pageblob::Properties>,
        follow: impl FnOnce(&[u8; 32], &mut Vec<Manifest>) -> bool,
    ) -> Result<(), ReplicaError> {
        let mut cache = self.points_cache.lock().unwrap_or_else(|p| p.into_inner());
        let fenced = self.fenced();
        let unlisted =
            |write: &dyn Fn(&Conditions) -> pageblob::StoreResult<pageblob::Properties>| {
                write(&fenced)
                    .map(|_| ())
                    .map_err(|e| self.write_error(&self.journal, e))
            };
        let Some((etag, key, mut points)) = cache.take() else {
            return unlisted(&write);
        };
        let cond = Conditions {
            if_match: Some(etag),
            ..self.fenced()
        };
        match write(&cond) {
            Ok(after) => {
                if follow(&key, &mut points) {
                    *cache = Some((after.etag, key, points));
                }
                Ok(())
            }
            Err(e) if e.code() == Some(ErrorCode::ConditionNotMet) => unlisted(&write),
            Err(e) => Err(self.write_error(&self.journal, e)),
        }
    }

    fn delete_snapshot(&self, snapshot: &str) -> Result<(), ReplicaError> {
        match self
            .store
            .delete_blob(&self.data, Some(snapshot), None, &none())
        {
            Err(e) if e.code() == Some(ErrorCode::BlobNotFound) => Ok(()),
            other => Ok(other?),
        }
    }

    /// Delete snapshots of the data blob that no live point references (left by a crash
    /// during a cycle's commit or a point's deletion, or kept for a reader by
    /// [`delete_points`](Self::delete_points)). While a live hold names a point that is not
    /// among `live`, a reader may still be reading such a snapshot (a hold names its point's
    /// sequence, not its snapshot), so none is deleted: [`Sweep::spared_for_readers`] says
    /// how many wait for a later sweep.
    pub fn sweep_orphans(&self, live: &[Manifest]) -> Result<Sweep, ReplicaError> {
        let referenced: std::collections::BTreeSet<&str> =
            live.iter().map(|m| m.snapshot.as_str()).collect();
        let mut sweep = Sweep::default();
        let listed = self
            .store
            .list_blobs(&self.data.container, &self.data.blob, true)?;
        // Still the writer once the snapshots are listed: a writer that takes over later takes
        // its snapshots later, so none of them is in the listing (an unreferenced snapshot of
        // its commit in progress is not an orphan).
        self.check_fence()?;
        let orphans: Vec<&str> = listed
            .iter()
            .filter(|listing| listing.name == self.data.blob)
            .filter_map(|listing| listing.properties.snapshot.as_deref())
            .filter(|snapshot| !referenced.contains(snapshot))
            .collect();
        if orphans.is_empty() {
            return Ok(sweep);
        }
        // Listed after the points were (`live`): a hold on a point unlisted before then was
        // taken before then, so it is in this listing while its lease lives.
        let held = self.held_now()?;
        if held
            .iter()
            .any(|sequence| !live.iter().any(|m| m.sequence == *sequence))
        {
            sweep.spared_for_readers = orphans.len();
            return Ok(sweep);
        }
        for snapshot in orphans {
            self.delete_snapshot(snapshot)?;
            sweep.swept += 1;
        }
        Ok(sweep)
    }

    /// Every live point, oldest first: the journal slots Get Page Ranges reports.
    pub fn points(&self, digest_key: &[u8; 32]) -> Result<Vec<Manifest>, ReplicaError> {
        let etag = self.store.properties(&self.journal, None)?.etag;
        let mut cache = self.points_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((tag, key, points)) = cache.as_ref() {
            if *tag == etag && key == digest_key {
                return Ok(points.clone());
            }
        }
        let points = self.read_points(digest_key)?;
        // Kept only if the journal did not change while it was read.
        if self.store.properties(&self.journal, None)?.etag == etag {
            *cache = Some((etag, *digest_key, points.clone()));
        }
        Ok(points)
    }

    /// Every point whose manifest reads back, oldest first, and the journal slots that do not:
    /// a reader lists and restores what is intact and names what is damaged.
    pub fn points_and_damage(
        &self,
        digest_key: &[u8; 32],
    ) -> Result<(Vec<Manifest>, Vec<DamagedPoint>), ReplicaError> {
        let mut damaged = Vec::new();
        let points = self.scan_journal(digest_key, &mut |slot, error, other_key_id| {
            damaged.push(DamagedPoint {
                slot,
                error,
                other_key_id,
            });
            Ok(())
        })?;
        Ok((points, damaged))
    }

    /// `Err(OtherCertificate)` when the replica's points were all written with a certificate
    /// other than `key_id` (the thumbprint of the .pfx given): a read-only check, for a writer
    /// to make before it claims the replica (its claim would fence off the replica's own
    /// writer for nothing: it cannot write a point anyway) and for a reader to name the
    /// certificate it needs.
    pub fn check_certificate(
        &self,
        digest_key: &[u8; 32],
        key_id: &[u8; 20],
    ) -> Result<(), ReplicaError> {
        let (points, damaged) = self.points_and_damage(digest_key)?;
        match written_with_other_certificate(&points, &damaged, key_id) {
            Some(found) => Err(ReplicaError::OtherCertificate {
                found: hex::encode_upper(found),
                given: hex::encode_upper(key_id),
            }),
            None => Ok(()),
        }
    }

    /// Every point, failing on the first damaged manifest (a writer must not build on a
    /// journal it cannot read whole).
    fn read_points(&self, digest_key: &[u8; 32]) -> Result<Vec<Manifest>, ReplicaError> {
        self.scan_journal(digest_key, &mut |_, error, _| Err(error))
    }

    /// The journal's manifests, oldest first; `damaged` decides what a bad slot means (it is
    /// told the thumbprint a well-formed manifest that does not authenticate names).
    fn scan_journal(
        &self,
        digest_key: &[u8; 32],
        damaged: &mut dyn FnMut(u64, ReplicaError, Option<[u8; 20]>) -> Result<(), ReplicaError>,
    ) -> Result<Vec<Manifest>, ReplicaError> {
        let mut out = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut chunk = Vec::new();
        let mut take = |at: u64, slot: &[u8]| -> Result<(), ReplicaError> {
            if pageblob::is_zero(slot) {
                return Ok(());
            }
            let len = (u32::from_le_bytes(slot[..4].try_into().expect("4 bytes")) as usize)
                .min(slot.len() - 4);
            match Manifest::decode(&slot[4..4 + len], digest_key) {
                Ok(manifest) => out.push(manifest),
                Err(source) => {
                    let other_key_id = matches!(source, ManifestError::Authentication)
                        .then(|| Manifest::peek_key_id(&slot[4..4 + len]))
                        .flatten();
                    damaged(
                        at,
                        ReplicaError::Manifest { point: at, source },
                        other_key_id,
                    )?
                }
            }
            Ok(())
        };
        let by_head =
            self.journal_reads == JournalReads::SlotHeads && self.store.answers_promptly();
        let mut head = vec![0u8; JOURNAL_HEAD_BYTES];
        for (start, end) in self.written_ranges(&self.journal)? {
            let slots = start / JOURNAL_SLOT..end.div_ceil(JOURNAL_SLOT).min(JOURNAL_SLOTS);
            if by_head {
                for at in slots.filter(|at| seen.insert(*at)) {
                    self.store
                        .read(&self.journal, None, at * JOURNAL_SLOT, &mut head)?;
                    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
                    if 4 + len <= head.len() && !pageblob::is_zero(&head) {
                        take(at, &head)?;
                    } else {
                        chunk.resize(JOURNAL_SLOT as usize, 0);
                        self.store
                            .read(&self.journal, None, at * JOURNAL_SLOT, &mut chunk)?;
                        take(at, &chunk)?;
                    }
                }
                continue;
            }
            // Runs of slots not read yet, each read with one call (a listing costs a request
            // or two, not one per point), at most `JOURNAL_READ_SLOTS` at a time.
            let mut index = slots.start;
            while index < slots.end {
                if seen.contains(&index) {
                    index += 1;
                    continue;
                }
                let run_end = (index..slots.end)
                    .take(JOURNAL_READ_SLOTS as usize)
                    .find(|i| seen.contains(i))
                    .unwrap_or(slots.end.min(index + JOURNAL_READ_SLOTS));
                chunk.resize(((run_end - index) * JOURNAL_SLOT) as usize, 0);
                self.store
                    .read(&self.journal, None, index * JOURNAL_SLOT, &mut chunk)?;
                for (at, slot) in (index..run_end).zip(chunk.chunks_exact(JOURNAL_SLOT as usize)) {
                    seen.insert(at);
                    take(at, slot)?;
                }
                index = run_end;
            }
        }
        out.sort_by_key(|m| m.sequence);
        Ok(out)
    }
}

/// What [`DiskReplica::sweep_orphans`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Orphan snapshots deleted.
    pub swept: usize,
    /// Orphan snapshots left while a reader holds a point no longer listed.
    pub spared_for_readers: usize,
}

/// A block of `snapshot` (the blob itself: `None`) that did not decode.
pub(crate) fn block_error(
    snapshot: Option<&str>,
    block: u64,
    source: impl Into<super::block_record::RecordError>,
) -> ReplicaError {
    ReplicaError::Block {
        point: snapshot.unwrap_or("(current)").to_string(),
        block,
        source: source.into(),
    }
}
