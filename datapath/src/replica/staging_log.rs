//! The staging log of a premium replica: a page blob `NAME.log` on a standard store (ASR's
//! "standard storage account for the replication log") where a cycle's records land first. A
//! cycle appends its entries, commits the log header, applies the entries to the premium data
//! blob, commits the point, and clears the log. A log found committed at the next start is
//! applied then (the point it holds is completed); an uncommitted one is discarded, and the cycle
//! is simply redone.
//!
//! Format (version 1, little-endian):
//! - header, page 0: magic `DPSL` | version u16 | committed u8 | consistency u8 | sequence u64 |
//!   time_nanos u64 | entries u64 | end offset u64 | CRC-32C of the preceding bytes;
//! - entries from offset 512, each an entry page — magic `DPSE` | block u64 | kind u8
//!   (0 zero block, 1 record) | reserved \[3\] | record length u32 | record CRC-32C u32 |
//!   CRC-32C of the preceding bytes — then the slot record padded to whole pages.

use super::block_record::Encoded;
use super::disk_replica::ReplicaError;
use super::manifest::Consistency;
use super::slot_header::{SlotHeader, HEADER_SIZE, MAX_BLOCK_BYTES};
use crate::pageblob::{
    BlobPath, Conditions, ErrorCode, PageBlobStore, MAX_PUT_PAGES_BYTES, PAGE_SIZE,
};

const HEADER_MAGIC: &[u8; 4] = b"DPSL";
const ENTRY_MAGIC: &[u8; 4] = b"DPSE";
const VERSION: u16 = 1;
/// Page blobs are at most 8 TiB.
const MAX_LOG_BYTES: u64 = 8 << 40;
const HEADER_LEN: usize = 4 + 2 + 1 + 1 + 8 + 8 + 8 + 8;
const ENTRY_LEN: usize = 4 + 8 + 1 + 3 + 4 + 4;

/// A committed log's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHeader {
    pub sequence: u64,
    pub time_nanos: u64,
    pub consistency: Consistency,
    pub entries: u64,
    /// Offset just past the last entry.
    pub end: u64,
}

impl LogHeader {
    /// The header page.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(PAGE_SIZE as usize);
        b.extend_from_slice(HEADER_MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.push(1);
        b.push(match self.consistency {
            Consistency::Crash => 0,
            Consistency::Application => 1,
        });
        for v in [self.sequence, self.time_nanos, self.entries, self.end] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b.resize(PAGE_SIZE as usize, 0);
        b
    }

    /// `None` for an empty page (no committed log); an error names what is wrong.
    pub fn decode(page: &[u8]) -> Result<Option<LogHeader>, String> {
        if page.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        if page.len() < HEADER_LEN + 4 || &page[..4] != HEADER_MAGIC {
            return Err("not a staging-log header".into());
        }
        let stored = u32::from_le_bytes(page[HEADER_LEN..HEADER_LEN + 4].try_into().expect("4"));
        if crc32c::crc32c(&page[..HEADER_LEN]) != stored {
            return Err("staging-log header CRC-32C mismatch".into());
        }
        let version = u16::from_le_bytes([page[4], page[5]]);
        if version != VERSION {
            return Err(format!("staging-log version {version}"));
        }
        if page[6] != 1 {
            return Ok(None);
        }
        let consistency = match page[7] {
            0 => Consistency::Crash,
            1 => Consistency::Application,
            c => return Err(format!("staging-log consistency {c}")),
        };
        let u = |at: usize| u64::from_le_bytes(page[at..at + 8].try_into().expect("8"));
        Ok(Some(LogHeader {
            sequence: u(8),
            time_nanos: u(16),
            consistency,
            entries: u(24),
            end: u(32),
        }))
    }
}

/// The page in front of each entry's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    pub block: u64,
    /// `false`: a zero block (no record follows).
    pub has_record: bool,
    pub record_len: u32,
    pub record_crc: u32,
}

impl EntryHeader {
    pub fn decode(page: &[u8]) -> Result<EntryHeader, String> {
        if page.len() < ENTRY_LEN + 4 || &page[..4] != ENTRY_MAGIC {
            return Err("not a staging-log entry".into());
        }
        let stored = u32::from_le_bytes(page[ENTRY_LEN..ENTRY_LEN + 4].try_into().expect("4"));
        if crc32c::crc32c(&page[..ENTRY_LEN]) != stored {
            return Err("entry header CRC-32C mismatch".into());
        }
        let has_record = match page[12] {
            0 => false,
            1 => true,
            k => return Err(format!("entry kind {k}")),
        };
        let record_len = u32::from_le_bytes(page[16..20].try_into().expect("4"));
        if !has_record && record_len != 0 {
            return Err("a zero-block entry with a record".into());
        }
        Ok(EntryHeader {
            block: u64::from_le_bytes(page[4..12].try_into().expect("8")),
            has_record,
            record_len,
            record_crc: u32::from_le_bytes(page[20..24].try_into().expect("4")),
        })
    }
}

/// An entry as stored: its entry page, then the record padded to whole pages.
pub fn entry_bytes(block: u64, encoded: Encoded) -> Vec<u8> {
    let (kind, mut record) = match encoded {
        Encoded::Zero { .. } => (0u8, Vec::new()),
        Encoded::Record { bytes, .. } => (1u8, bytes),
    };
    let mut entry = Vec::with_capacity(PAGE_SIZE as usize + record.len());
    entry.extend_from_slice(ENTRY_MAGIC);
    entry.extend_from_slice(&block.to_le_bytes());
    entry.push(kind);
    entry.extend_from_slice(&[0; 3]);
    entry.extend_from_slice(&(record.len() as u32).to_le_bytes());
    entry.extend_from_slice(&crc32c::crc32c(&record).to_le_bytes());
    let crc = crc32c::crc32c(&entry);
    entry.extend_from_slice(&crc.to_le_bytes());
    entry.resize(PAGE_SIZE as usize, 0);
    record.resize(record.len().next_multiple_of(PAGE_SIZE as usize), 0);
    entry.extend_from_slice(&record);
    entry
}

/// The staging log of one replica.
pub struct StagingLog<'a> {
    store: &'a dyn PageBlobStore,
    pub path: BlobPath,
    capacity: u64,
}

impl std::fmt::Debug for StagingLog<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StagingLog({:?})", self.path)
    }
}

fn none() -> Conditions {
    Conditions::default()
}

fn damaged(path: &BlobPath, offset: u64, why: impl Into<String>) -> ReplicaError {
    ReplicaError::StagingLog {
        path: format!("{}/{}", path.container, path.blob),
        offset,
        why: why.into(),
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
                    "a staging log for this disk would exceed a page blob's 8 TiB",
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
        })
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
            return Err(damaged(&self.path, offset, "entry past the log's capacity"));
        }
        for (i, chunk) in entry.chunks(MAX_PUT_PAGES_BYTES as usize).enumerate() {
            self.store.put_pages(
                &self.path,
                offset + i as u64 * MAX_PUT_PAGES_BYTES,
                chunk,
                &none(),
            )?;
        }
        Ok(())
    }

    /// Commit: the entries written make up cycle `header.sequence`.
    pub fn commit(&self, header: &LogHeader) -> Result<(), ReplicaError> {
        self.store
            .put_pages(&self.path, 0, &header.encode(), &none())?;
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
                return Err(damaged(
                    &self.path,
                    at,
                    "entries run past the committed end",
                ));
            }
            self.store.read(&self.path, None, at, &mut page)?;
            let entry = EntryHeader::decode(&page).map_err(|why| damaged(&self.path, at, why))?;
            let len = u64::from(entry.record_len);
            // A record is a slot header and at most one block: anything longer is damage, and
            // is refused before a buffer is allocated for it.
            if len > (HEADER_SIZE + MAX_BLOCK_BYTES as usize) as u64 {
                return Err(damaged(&self.path, at, "record longer than a slot"));
            }
            let padded = len.next_multiple_of(PAGE_SIZE);
            if at + PAGE_SIZE + padded > header.end.min(self.capacity) {
                return Err(damaged(
                    &self.path,
                    at,
                    "record runs past the committed end",
                ));
            }
            let encoded = if entry.has_record {
                let mut bytes = vec![0u8; len as usize];
                self.store
                    .read(&self.path, None, at + PAGE_SIZE, &mut bytes)?;
                if crc32c::crc32c(&bytes) != entry.record_crc {
                    return Err(damaged(&self.path, at, "record CRC-32C mismatch"));
                }
                let header = SlotHeader::decode(&bytes)
                    .map_err(|e| damaged(&self.path, at, e.to_string()))?;
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
        self.store.clear_pages(&self.path, 0, PAGE_SIZE, &none())?;
        let end = end.min(self.capacity).next_multiple_of(PAGE_SIZE);
        if end > PAGE_SIZE {
            self.store
                .clear_pages(&self.path, PAGE_SIZE, end - PAGE_SIZE, &none())?;
        }
        Ok(())
    }

    /// Bytes in use, from the blob's page ranges (to clear a log left uncommitted).
    pub fn used_end(&self) -> Result<u64, ReplicaError> {
        let list = self
            .store
            .page_ranges(&self.path, None, None, None, None, None)?;
        let mut end = list.ranges.last().map_or(0, |r| r.end + 1);
        let mut marker = list.next_marker;
        while let Some(m) = marker {
            let more = self
                .store
                .page_ranges(&self.path, None, None, None, Some(m), None)?;
            end = end.max(more.ranges.last().map_or(0, |r| r.end + 1));
            marker = more.next_marker;
        }
        Ok(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_entry_pages_round_trip_and_refuse_damage() {
        let h = LogHeader {
            sequence: 9,
            time_nanos: 1_700_000_000_000_000_000,
            consistency: Consistency::Application,
            entries: 3,
            end: 512 * 40,
        };
        let page = h.encode();
        assert_eq!(LogHeader::decode(&page), Ok(Some(h)));
        assert_eq!(LogHeader::decode(&[0u8; 512]), Ok(None));
        // Version 1 is pinned: the CRC of a reference header never changes.
        assert_eq!(
            crc32c::crc32c(&page),
            0x5DC9_9FD3,
            "staging-log header format changed"
        );
        for i in 0..HEADER_LEN + 4 {
            let mut bad = page.clone();
            bad[i] ^= 0x10;
            assert!(LogHeader::decode(&bad).is_err(), "byte {i}");
        }
        assert!(EntryHeader::decode(&page).is_err());
    }
}
