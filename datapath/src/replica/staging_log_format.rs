//! The bytes of a premium replica's staging log ([`super::staging_log`]): its header page and
//! its entry pages.
//!
//! Format (version 2, little-endian):
//! - header, page 0: magic `DPLG` | version u16 | committed u8 | consistency u8 | sequence u64 |
//!   time_nanos u64 | entries u64 | end offset u64 | CRC-32C of the preceding bytes. Version 1
//!   is the same page with magic `DPSL` (the slot header's); it is still read;
//! - entries from offset 512, each an entry page — magic `DPSE` | block u64 | kind u8
//!   (0 zero block, 1 record) | reserved \[3\] | record length u32 | record CRC-32C u32 |
//!   CRC-32C of the preceding bytes — then the slot record padded to whole pages.

use super::block_record::Encoded;
use super::manifest::Consistency;
use super::slot_header::HeaderError;
use pageblob::PAGE_SIZE;

/// What is wrong with a staging log's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StagingLogError {
    #[error("not a staging-log header")]
    NotAHeader,
    #[error("staging-log header CRC-32C mismatch")]
    HeaderChecksum,
    #[error("staging-log version {0}")]
    Version(u16),
    #[error("staging-log consistency {0}")]
    Consistency(u8),
    #[error("not a staging-log entry")]
    NotAnEntry,
    #[error("entry header CRC-32C mismatch")]
    EntryChecksum,
    #[error("entry kind {0}")]
    EntryKind(u8),
    #[error("a zero-block entry with a record")]
    ZeroBlockWithRecord,
    #[error("a staging log for this disk would exceed a page blob's 8 TiB")]
    TooLarge,
    #[error("entry past the log's capacity")]
    PastCapacity,
    #[error("entries run past the committed end")]
    EntriesPastEnd,
    #[error("record of {0} bytes is longer than a slot")]
    RecordTooLong(u64),
    #[error("record runs past the committed end")]
    RecordPastEnd,
    #[error("record CRC-32C mismatch")]
    RecordChecksum,
    #[error("entry for block {0}, past the disk's end")]
    BlockPastDiskEnd(u64),
    #[error("record's slot header: {0}")]
    SlotHeader(HeaderError),
}

const HEADER_MAGIC: &[u8; 4] = b"DPLG";
const ENTRY_MAGIC: &[u8; 4] = b"DPSE";
const VERSION: u16 = 2;
/// Version 1 headers began with the slot header's magic; they are still read.
const V1_HEADER_MAGIC: &[u8; 4] = b"DPSL";
const V1: u16 = 1;
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

    /// `None` for an empty page (no committed log). Reads version 2 and version 1 headers.
    pub fn decode(page: &[u8]) -> Result<Option<LogHeader>, StagingLogError> {
        if pageblob::is_zero(page) {
            return Ok(None);
        }
        if page.len() < HEADER_LEN + 4 {
            return Err(StagingLogError::NotAHeader);
        }
        let version = u16::from_le_bytes([page[4], page[5]]);
        match (&page[..4], version) {
            (m, VERSION) if m == HEADER_MAGIC => {}
            (m, V1) if m == V1_HEADER_MAGIC => {}
            (m, v) if m == HEADER_MAGIC || m == V1_HEADER_MAGIC => {
                return Err(StagingLogError::Version(v))
            }
            _ => return Err(StagingLogError::NotAHeader),
        }
        let stored = u32::from_le_bytes(page[HEADER_LEN..HEADER_LEN + 4].try_into().expect("4"));
        if crc32c::crc32c(&page[..HEADER_LEN]) != stored {
            return Err(StagingLogError::HeaderChecksum);
        }
        if page[6] != 1 {
            return Ok(None);
        }
        let consistency = match page[7] {
            0 => Consistency::Crash,
            1 => Consistency::Application,
            c => return Err(StagingLogError::Consistency(c)),
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
    pub fn decode(page: &[u8]) -> Result<EntryHeader, StagingLogError> {
        if page.len() < ENTRY_LEN + 4 || &page[..4] != ENTRY_MAGIC {
            return Err(StagingLogError::NotAnEntry);
        }
        let stored = u32::from_le_bytes(page[ENTRY_LEN..ENTRY_LEN + 4].try_into().expect("4"));
        if crc32c::crc32c(&page[..ENTRY_LEN]) != stored {
            return Err(StagingLogError::EntryChecksum);
        }
        let has_record = match page[12] {
            0 => false,
            1 => true,
            k => return Err(StagingLogError::EntryKind(k)),
        };
        let record_len = u32::from_le_bytes(page[16..20].try_into().expect("4"));
        if !has_record && record_len != 0 {
            return Err(StagingLogError::ZeroBlockWithRecord);
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
        // Version 2 is pinned: a reference header's fields and their CRC never change. (The
        // CRC-32C of the whole page would not do: over bytes followed by their own CRC it is
        // the same constant for every header.)
        assert_eq!(
            crc32c::crc32c(&page[..HEADER_LEN]),
            PINNED_V2_HEADER_CRC,
            "staging-log header format changed"
        );
        for i in 0..HEADER_LEN + 4 {
            let mut bad = page.clone();
            bad[i] ^= 0x10;
            assert!(LogHeader::decode(&bad).is_err(), "byte {i}");
        }
        assert_eq!(EntryHeader::decode(&page), Err(StagingLogError::NotAnEntry));
    }

    const PINNED_V2_HEADER_CRC: u32 = 0x9E96_7AF4;

    /// A version-1 header: the slot header's magic, version 1, its own CRC.
    fn as_version_1(mut page: Vec<u8>) -> Vec<u8> {
        page[..4].copy_from_slice(b"DPSL");
        page[4..6].copy_from_slice(&1u16.to_le_bytes());
        let crc = crc32c::crc32c(&page[..HEADER_LEN]);
        page[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&crc.to_le_bytes());
        page
    }

    #[test]
    fn a_version_1_header_is_still_read_and_other_versions_are_named() {
        let h = LogHeader {
            sequence: 4,
            time_nanos: 5,
            consistency: Consistency::Crash,
            entries: 1,
            end: 1024,
        };
        let v1 = as_version_1(h.encode());
        assert_eq!(&h.encode()[..4], b"DPLG");
        assert_eq!(LogHeader::decode(&v1), Ok(Some(h)));
        let mut v3 = h.encode();
        v3[4..6].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(LogHeader::decode(&v3), Err(StagingLogError::Version(3)));
        let mut foreign = h.encode();
        foreign[..4].copy_from_slice(b"XXXX");
        assert_eq!(
            LogHeader::decode(&foreign),
            Err(StagingLogError::NotAHeader)
        );
    }
}
