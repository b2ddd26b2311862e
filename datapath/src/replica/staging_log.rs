//! The staging log of a premium replica: a page blob `NAME.log` on a standard store (ASR's
//! "standard storage account for the replication log") where a cycle's records land first. A
//! cycle appends its entries, commits the log header, applies the entries to the premium data
//! blob, commits the point, and clears the log. A log found committed at the next start is
//! applied then (the point it holds is completed); an uncommitted one is discarded, and the cycle
//! is simply redone.

//!
//! The bytes of the header and entry pages: [`super::staging_log_format`].

use super::block_record::Encoded;
use super::error::ReplicaError;
use super::slot_header::{SlotHeader, HEADER_SIZE, MAX_BLOCK_BYTES};
use super::staging_log_format::{entry_bytes, EntryHeader, LogHeader, StagingLogError};
use pageblob::{BlobPath, Conditions, ErrorCode, PageBlobStore, MAX_PUT_PAGES_BYTES, PAGE_SIZE};

/// Page blobs are at most 8 TiB.
const MAX_LOG_BYTES: u64 = 8 << 40;

/// The staging log of one replica.
pub struct StagingLog<'a> {
    store: &'a dyn PageBlobStore,
    pub path: BlobPath,
    capacity: u64,
    /// The replica writer's fence (`DiskReplica::take_over`), required by every write.
    fence: Option<u64>,
}

impl std::fmt::Debug for StagingLog<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StagingLog({:?})", self.path)
    }
}

fn none() -> Conditions {
    Conditions::default()
}

fn damaged(path: &BlobPath, offset: u64, why: StagingLogError) -> ReplicaError {
    ReplicaError::StagingLog {
        path: format!("{}/{}", path.container, path.blob),
        offset,
        why,
    }
}

impl<'a> StagingLog<'a> {
    /// Open (creating if needed) `container/NAME.log` sized for `blocks` records of up to
    /// `slot_size` bytes each.
    pub fn open(
        store: &'a dyn PageBlobStore,
        container: &str,
        name: &str,
        blocks: u64,
        slot_size: u64,
    ) -> Result<StagingLog<'a>, ReplicaError> {
        let capacity = blocks
            .checked_mul(PAGE_SIZE + slot_size)
            .and_then(|b| b.checked_add(PAGE_SIZE))
            .filter(|b| *b <= MAX_LOG_BYTES)
            .ok_or_else(|| {
                damaged(
                    &BlobPath::new(container, name),
                    0,
                    StagingLogError::TooLarge,
                )
            })?;
        match store.create_container(container) {
            Ok(()) => {}
            Err(e) if e.code() == Some(ErrorCode::ContainerAlreadyExists) => {}
            Err(e) => return Err(e.into()),
        }
        let path = BlobPath::new(container, &format!("{name}.log"));
        match store.properties(&path, None) {
            Ok(p) if p.size >= capacity => {}
            Ok(_) => {
                store.resize(&path, capacity, &none())?;
            }
            Err(e) if e.code() == Some(ErrorCode::BlobNotFound) => {
                store.create_page_blob(&path, capacity, 0, &none())?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(StagingLog {
            store,
            path,
            capacity,
            fence: None,
        })
    }

    /// Take the log over with the replica's fence (its sequence number from now on, required
    /// by every write of this handle).
    pub fn take_over(&mut self, fence: u64) -> Result<(), ReplicaError> {
        super::fence::raise_fence(self.store, &self.path, fence)?;
        self.fence = Some(fence);
        Ok(())
    }

    /// Conditions of this handle's writes.
    fn fenced(&self) -> Conditions {
        Conditions {
            if_sequence_number_eq: self.fence,
            ..none()
        }
    }

    /// A store error of a write: a refused fence is [`ReplicaError::TakenOver`].
    fn write_error(&self, e: pageblob::StoreError) -> ReplicaError {
        ReplicaError::of_fenced_write(self.fence, &self.path, e)
    }

    /// Where the first entry goes.
    pub fn first_entry() -> u64 {
        PAGE_SIZE
    }

    /// Bytes an entry for `encoded` takes.
    pub fn entry_len(encoded: &Encoded) -> u64 {
        PAGE_SIZE + encoded.stored_bytes()
    }

    /// Write the entry for block `block` at `offset` (from `first_entry`, advanced by
    /// `entry_len` per entry).
    pub fn write_entry(
        &self,
        offset: u64,
        block: u64,
        encoded: Encoded,
    ) -> Result<(), ReplicaError> {
        let entry = entry_bytes(block, encoded);
        if offset + entry.len() as u64 > self.capacity {
            return Err(damaged(&self.path, offset, StagingLogError::PastCapacity));
        }
        let cond = self.fenced();
        for (i, chunk) in entry.chunks(MAX_PUT_PAGES_BYTES as usize).enumerate() {
            self.store
                .put_pages(
                    &self.path,
                    offset + i as u64 * MAX_PUT_PAGES_BYTES,
                    chunk,
                    &cond,
                )
                .map_err(|e| self.write_error(e))?;
        }
        Ok(())
    }

    /// Commit: the entries written make up cycle `header.sequence`.
    pub fn commit(&self, header: &LogHeader) -> Result<(), ReplicaError> {
        self.store
            .put_pages(&self.path, 0, &header.encode(), &self.fenced())
            .map_err(|e| self.write_error(e))?;
        Ok(())
    }

    /// The committed header, if the log holds a committed cycle.
    pub fn committed(&self) -> Result<Option<LogHeader>, ReplicaError> {
        let mut page = vec![0u8; PAGE_SIZE as usize];
        self.store.read(&self.path, None, 0, &mut page)?;
        LogHeader::decode(&page).map_err(|why| damaged(&self.path, 0, why))
    }

    /// Read the committed entries in order: `apply(block, record)` with the record's bytes
    /// (`None` for a zero block).
    pub fn for_each_entry(
        &self,
        header: &LogHeader,
        mut apply: impl FnMut(u64, Option<Encoded>) -> Result<(), ReplicaError>,
    ) -> Result<(), ReplicaError> {
        let mut at = Self::first_entry();
        let mut page = vec![0u8; PAGE_SIZE as usize];
        for _ in 0..header.entries {
            if at + PAGE_SIZE > header.end.min(self.capacity) {
                return Err(damaged(&self.path, at, StagingLogError::EntriesPastEnd));
            }
            self.store.read(&self.path, None, at, &mut page)?;
            let entry = EntryHeader::decode(&page).map_err(|why| damaged(&self.path, at, why))?;
            let len = u64::from(entry.record_len);
            // A record is a slot header and at most one block: anything longer is damage, and
            // is refused before a buffer is allocated for it.
            if len > (HEADER_SIZE + MAX_BLOCK_BYTES as usize) as u64 {
                return Err(damaged(&self.path, at, StagingLogError::RecordTooLong(len)));
            }
            let padded = len.next_multiple_of(PAGE_SIZE);
            if at + PAGE_SIZE + padded > header.end.min(self.capacity) {
                return Err(damaged(&self.path, at, StagingLogError::RecordPastEnd));
            }
            let encoded = if entry.has_record {
                let mut bytes = vec![0u8; len as usize];
                self.store
                    .read(&self.path, None, at + PAGE_SIZE, &mut bytes)?;
                if crc32c::crc32c(&bytes) != entry.record_crc {
                    return Err(damaged(&self.path, at, StagingLogError::RecordChecksum));
                }
                let header = SlotHeader::decode(&bytes)
                    .map_err(|e| damaged(&self.path, at, StagingLogError::SlotHeader(e)))?;
                Some(Encoded::Record { header, bytes })
            } else {
                None
            };
            let block = entry.block;
            apply(block, encoded)?;
            at += PAGE_SIZE + padded;
        }
        Ok(())
    }

    /// Empty the log: the header first (nothing is committed any more), then the entries.
    pub fn clear(&self, end: u64) -> Result<(), ReplicaError> {
        let cond = self.fenced();
        self.store
            .clear_pages(&self.path, 0, PAGE_SIZE, &cond)
            .map_err(|e| self.write_error(e))?;
        let end = end.min(self.capacity).next_multiple_of(PAGE_SIZE);
        if end > PAGE_SIZE {
            self.store
                .clear_pages(&self.path, PAGE_SIZE, end - PAGE_SIZE, &cond)
                .map_err(|e| self.write_error(e))?;
        }
        Ok(())
    }

    /// Bytes in use, from the blob's page ranges (to clear a log left uncommitted).
    pub fn used_end(&self) -> Result<u64, ReplicaError> {
        Ok(
            pageblob::page_listing::all_page_ranges(self.store, &self.path, None, None)?
                .last()
                .map_or(0, |r| r.end + 1),
        )
    }
}
