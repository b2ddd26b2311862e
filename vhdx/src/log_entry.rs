//! Log entries (MS-VHDX 2.3.1): header, zero and data descriptors, data sectors.

use crate::checksum;
use crate::error::{require_len, Error, Result};
use crate::guid::Guid;
use crate::layout::{LOG_SECTOR_SIZE, MIB};
use crate::le;

pub const ENTRY_SIGNATURE: &[u8; 4] = b"loge";
pub const ZERO_SIGNATURE: &[u8; 4] = b"zero";
pub const DATA_DESCRIPTOR_SIGNATURE: &[u8; 4] = b"desc";
pub const DATA_SECTOR_SIGNATURE: &[u8; 4] = b"data";
pub const HEADER_SIZE: usize = 64;
pub const DESCRIPTOR_SIZE: usize = 32;
const SECTOR: usize = LOG_SECTOR_SIZE as usize;
/// Payload bytes a data sector carries between its signature/SequenceHigh and SequenceLow.
pub const DATA_SECTOR_PAYLOAD: usize = 4084;
/// Bytes restored from the descriptor in front of a data sector's payload.
pub const LEADING_BYTES: usize = 8;

const CHECKSUM_AT: usize = 4;
const ENTRY_LENGTH_AT: usize = 8;
const TAIL_AT: usize = 12;
const SEQUENCE_NUMBER_AT: usize = 16;
const DESCRIPTOR_COUNT_AT: usize = 24;
const LOG_GUID_AT: usize = 32;
const FLUSHED_FILE_OFFSET_AT: usize = 48;
const LAST_FILE_OFFSET_AT: usize = 56;

/// The fixed 64-byte part of an entry; decoding it is cheap and needs no checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    pub checksum: u32,
    pub entry_length: u32,
    /// Log offset of the oldest entry of the sequence this entry belongs to.
    pub tail: u32,
    pub sequence_number: u64,
    pub descriptor_count: u32,
    pub log_guid: Guid,
    pub flushed_file_offset: u64,
    pub last_file_offset: u64,
}

impl EntryHeader {
    /// Decode the header fields and apply the cheap rules (no checksum).
    pub fn decode(bytes: &[u8]) -> Result<EntryHeader> {
        const S: &str = "log entry";
        require_len(S, bytes, HEADER_SIZE)?;
        if &bytes[..4] != ENTRY_SIGNATURE {
            return Err(Error::BadSignature {
                structure: S,
                offset: 0,
                expected: "loge",
            });
        }
        let h = EntryHeader {
            checksum: le::u32_at(bytes, CHECKSUM_AT),
            entry_length: le::u32_at(bytes, ENTRY_LENGTH_AT),
            tail: le::u32_at(bytes, TAIL_AT),
            sequence_number: le::u64_at(bytes, SEQUENCE_NUMBER_AT),
            descriptor_count: le::u32_at(bytes, DESCRIPTOR_COUNT_AT),
            log_guid: Guid::read(bytes, LOG_GUID_AT),
            flushed_file_offset: le::u64_at(bytes, FLUSHED_FILE_OFFSET_AT),
            last_file_offset: le::u64_at(bytes, LAST_FILE_OFFSET_AT),
        };
        let field =
            |at: usize, name, value: u64, rule| Err(Error::field(S, at as u64, name, value, rule));
        if h.entry_length == 0 || h.entry_length as usize % SECTOR != 0 {
            return field(
                ENTRY_LENGTH_AT,
                "EntryLength",
                h.entry_length.into(),
                "MS-VHDX 2.3.1.1: a non-zero multiple of 4 KiB",
            );
        }
        if h.tail as usize % SECTOR != 0 {
            return field(
                TAIL_AT,
                "Tail",
                h.tail.into(),
                "MS-VHDX 2.3.1.1: a multiple of 4 KiB",
            );
        }
        if h.sequence_number == 0 {
            return field(
                SEQUENCE_NUMBER_AT,
                "SequenceNumber",
                0,
                "MS-VHDX 2.3.1.1: greater than 0",
            );
        }
        if h.flushed_file_offset % MIB != 0 {
            return field(
                FLUSHED_FILE_OFFSET_AT,
                "FlushedFileOffset",
                h.flushed_file_offset,
                "MS-VHDX 2.3.1.1: a multiple of 1 MiB",
            );
        }
        if h.last_file_offset % MIB != 0 {
            return field(
                LAST_FILE_OFFSET_AT,
                "LastFileOffset",
                h.last_file_offset,
                "MS-VHDX 2.3.1.1: a multiple of 1 MiB",
            );
        }
        Ok(h)
    }

    /// Number of 4 KiB sectors holding the header and descriptors.
    pub fn descriptor_sectors(&self) -> u64 {
        (HEADER_SIZE as u64 + u64::from(self.descriptor_count) * DESCRIPTOR_SIZE as u64)
            .div_ceil(LOG_SECTOR_SIZE)
    }
}

/// What one descriptor asks the replay to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descriptor {
    /// Write `length` zero bytes at `file_offset`.
    Zero { file_offset: u64, length: u64 },
    /// Write a 4 KiB sector at `file_offset`: `leading` ‖ the data sector's 4084 bytes ‖
    /// `trailing`. `data_sector` indexes the entry's data sectors.
    Data {
        file_offset: u64,
        leading: [u8; 8],
        trailing: [u8; 4],
        data_sector: u32,
    },
}

impl Descriptor {
    /// The file range this descriptor writes, or `None` if it overflows.
    pub fn range(&self) -> Option<(u64, u64)> {
        match *self {
            Descriptor::Zero {
                file_offset,
                length,
            } => Some((file_offset, file_offset.checked_add(length)?)),
            Descriptor::Data { file_offset, .. } => {
                Some((file_offset, file_offset.checked_add(LOG_SECTOR_SIZE)?))
            }
        }
    }
}

/// A fully verified entry. Data sector payloads stay in the log bytes; `data_offsets` holds
/// the entry-relative offset of each data sector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub header: EntryHeader,
    pub descriptors: Vec<Descriptor>,
}

impl LogEntry {
    /// Verify a whole entry: `bytes` is exactly `EntryLength` bytes (already unwrapped from
    /// the ring). Offsets in errors are relative to the entry start.
    pub fn decode(bytes: &[u8], expected_log_guid: Guid) -> Result<LogEntry> {
        const S: &str = "log entry";
        let header = EntryHeader::decode(bytes)?;
        if bytes.len() != header.entry_length as usize {
            return Err(Error::invalid(
                S,
                ENTRY_LENGTH_AT as u64,
                format!(
                    "EntryLength {} but {} bytes given",
                    header.entry_length,
                    bytes.len()
                ),
            ));
        }
        if header.log_guid != expected_log_guid {
            return Err(Error::invalid(
                S,
                LOG_GUID_AT as u64,
                format!(
                    "LogGuid {} is not the header's {expected_log_guid}",
                    header.log_guid
                ),
            ));
        }
        // The descriptors must fit before any data sector: bounds the count by EntryLength.
        let descriptor_sectors = header.descriptor_sectors();
        if descriptor_sectors * LOG_SECTOR_SIZE > u64::from(header.entry_length) {
            return Err(Error::field(
                S,
                DESCRIPTOR_COUNT_AT as u64,
                "DescriptorCount",
                header.descriptor_count.into(),
                "MS-VHDX 2.3.1.1: descriptors must fit in EntryLength",
            ));
        }
        checksum::verify(S, bytes, CHECKSUM_AT)?;
        let mut descriptors = Vec::with_capacity(header.descriptor_count as usize);
        let mut data_sectors = 0u32;
        for i in 0..header.descriptor_count as usize {
            let at = HEADER_SIZE + i * DESCRIPTOR_SIZE;
            let d = &bytes[at..at + DESCRIPTOR_SIZE];
            let sequence = le::u64_at(d, 24);
            if sequence != header.sequence_number {
                return Err(Error::invalid(
                    S,
                    at as u64 + 24,
                    format!(
                        "descriptor sequence {sequence} is not the entry's {}",
                        header.sequence_number
                    ),
                ));
            }
            let file_offset = le::u64_at(d, 16);
            if file_offset % LOG_SECTOR_SIZE != 0 {
                return Err(Error::field(
                    S,
                    at as u64 + 16,
                    "FileOffset",
                    file_offset,
                    "MS-VHDX 2.3.1.2: a multiple of 4 KiB",
                ));
            }
            let descriptor = match &d[..4] {
                s if s == ZERO_SIGNATURE => {
                    let length = le::u64_at(d, 8);
                    if length == 0
                        || length % LOG_SECTOR_SIZE != 0
                        || file_offset.checked_add(length).is_none()
                    {
                        return Err(Error::field(
                            S,
                            at as u64 + 8,
                            "ZeroLength",
                            length,
                            "MS-VHDX 2.3.1.2: a non-zero multiple of 4 KiB",
                        ));
                    }
                    Descriptor::Zero {
                        file_offset,
                        length,
                    }
                }
                s if s == DATA_DESCRIPTOR_SIGNATURE => {
                    let mut trailing = [0u8; 4];
                    trailing.copy_from_slice(&d[4..8]);
                    let mut leading = [0u8; 8];
                    leading.copy_from_slice(&d[8..16]);
                    let data_sector = data_sectors;
                    data_sectors += 1;
                    Descriptor::Data {
                        file_offset,
                        leading,
                        trailing,
                        data_sector,
                    }
                }
                _ => {
                    return Err(Error::BadSignature {
                        structure: "log descriptor",
                        offset: at as u64,
                        expected: "zero or desc",
                    });
                }
            };
            descriptors.push(descriptor);
        }
        let expected_len = (descriptor_sectors + u64::from(data_sectors)) * LOG_SECTOR_SIZE;
        if expected_len != u64::from(header.entry_length) {
            return Err(Error::field(
                S,
                ENTRY_LENGTH_AT as u64,
                "EntryLength",
                header.entry_length.into(),
                "MS-VHDX 2.3.1.1: descriptor sectors plus one sector per data descriptor",
            ));
        }
        for n in 0..data_sectors as u64 {
            let at = ((descriptor_sectors + n) * LOG_SECTOR_SIZE) as usize;
            let sector = &bytes[at..at + SECTOR];
            if &sector[..4] != DATA_SECTOR_SIGNATURE {
                return Err(Error::BadSignature {
                    structure: "log data sector",
                    offset: at as u64,
                    expected: "data",
                });
            }
            let high = u64::from(le::u32_at(sector, 4));
            let low = u64::from(le::u32_at(sector, SECTOR - 4));
            if high << 32 | low != header.sequence_number {
                return Err(Error::invalid(
                    "log data sector",
                    at as u64,
                    format!(
                        "sequence {} is not the entry's {}",
                        high << 32 | low,
                        header.sequence_number
                    ),
                ));
            }
        }
        Ok(LogEntry {
            header,
            descriptors,
        })
    }

    /// Entry-relative offset of the 4084 payload bytes of data sector `n`.
    pub fn data_payload_offset(&self, n: u32) -> u64 {
        (self.header.descriptor_sectors() + u64::from(n)) * LOG_SECTOR_SIZE + 8
    }

    /// Encode an entry (for the test builder and, later, the writer). Data descriptors take
    /// their sector's content from `sectors`, in order.
    pub fn encode(header: &EntryHeader, writes: &[LogWrite]) -> Vec<u8> {
        let descriptor_count = writes.len() as u32;
        let mut h = *header;
        h.descriptor_count = descriptor_count;
        let descriptor_sectors = h.descriptor_sectors() as usize;
        let data_count = writes
            .iter()
            .filter(|w| matches!(w, LogWrite::Data { .. }))
            .count();
        let len = (descriptor_sectors + data_count) * SECTOR;
        h.entry_length = len as u32;
        let mut out = vec![0u8; len];
        out[..4].copy_from_slice(ENTRY_SIGNATURE);
        le::put_u32(&mut out, ENTRY_LENGTH_AT, h.entry_length);
        le::put_u32(&mut out, TAIL_AT, h.tail);
        le::put_u64(&mut out, SEQUENCE_NUMBER_AT, h.sequence_number);
        le::put_u32(&mut out, DESCRIPTOR_COUNT_AT, descriptor_count);
        out[LOG_GUID_AT..LOG_GUID_AT + 16].copy_from_slice(&h.log_guid.0);
        le::put_u64(&mut out, FLUSHED_FILE_OFFSET_AT, h.flushed_file_offset);
        le::put_u64(&mut out, LAST_FILE_OFFSET_AT, h.last_file_offset);
        let mut data_n = 0;
        for (i, w) in writes.iter().enumerate() {
            let at = HEADER_SIZE + i * DESCRIPTOR_SIZE;
            match w {
                LogWrite::Zero {
                    file_offset,
                    length,
                } => {
                    out[at..at + 4].copy_from_slice(ZERO_SIGNATURE);
                    le::put_u64(&mut out, at + 8, *length);
                    le::put_u64(&mut out, at + 16, *file_offset);
                }
                LogWrite::Data {
                    file_offset,
                    sector,
                } => {
                    assert_eq!(sector.len(), SECTOR);
                    out[at..at + 4].copy_from_slice(DATA_DESCRIPTOR_SIGNATURE);
                    out[at + 4..at + 8].copy_from_slice(&sector[SECTOR - 4..]);
                    out[at + 8..at + 16].copy_from_slice(&sector[..8]);
                    le::put_u64(&mut out, at + 16, *file_offset);
                    let s = (descriptor_sectors + data_n) * SECTOR;
                    data_n += 1;
                    out[s..s + 4].copy_from_slice(DATA_SECTOR_SIGNATURE);
                    le::put_u32(&mut out, s + 4, (h.sequence_number >> 32) as u32);
                    out[s + 8..s + 8 + DATA_SECTOR_PAYLOAD].copy_from_slice(&sector[8..SECTOR - 4]);
                    le::put_u32(&mut out, s + SECTOR - 4, h.sequence_number as u32);
                }
            }
            le::put_u64(&mut out, at + 24, h.sequence_number);
        }
        checksum::seal(&mut out, CHECKSUM_AT);
        out
    }
}

/// One write to put in an encoded entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogWrite {
    Zero {
        file_offset: u64,
        length: u64,
    },
    /// `sector` is the full 4 KiB the replay must produce at `file_offset`.
    Data {
        file_offset: u64,
        sector: Vec<u8>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u64) -> EntryHeader {
        EntryHeader {
            checksum: 0,
            entry_length: 0,
            tail: 0,
            sequence_number: seq,
            descriptor_count: 0,
            log_guid: Guid([7; 16]),
            flushed_file_offset: 4 * MIB,
            last_file_offset: 4 * MIB,
        }
    }

    fn writes() -> Vec<LogWrite> {
        let sector: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        vec![
            LogWrite::Data {
                file_offset: 2 * MIB,
                sector,
            },
            LogWrite::Zero {
                file_offset: 3 * MIB,
                length: 8192,
            },
        ]
    }

    #[test]
    fn entry_round_trips_with_leading_and_trailing_bytes() {
        let bytes = LogEntry::encode(&header(0x1_0000_0002), &writes());
        let e = LogEntry::decode(&bytes, Guid([7; 16])).unwrap();
        assert_eq!(e.header.entry_length, 8192);
        let Descriptor::Data {
            leading,
            trailing,
            data_sector,
            ..
        } = e.descriptors[0]
        else {
            panic!()
        };
        let LogWrite::Data { sector, .. } = &writes()[0] else {
            panic!()
        };
        assert_eq!(&leading, &sector[..8]);
        assert_eq!(&trailing, &sector[4092..]);
        let p = e.data_payload_offset(data_sector) as usize;
        assert_eq!(&bytes[p..p + DATA_SECTOR_PAYLOAD], &sector[8..4092]);
        assert_eq!(
            e.descriptors[1],
            Descriptor::Zero {
                file_offset: 3 * MIB,
                length: 8192
            }
        );
    }

    #[test]
    fn entry_with_other_log_guid_or_bad_checksum_is_rejected() {
        let bytes = LogEntry::encode(&header(5), &writes());
        assert!(LogEntry::decode(&bytes, Guid([8; 16])).is_err());
        let mut torn = bytes.clone();
        torn[5000] ^= 1;
        assert!(matches!(
            LogEntry::decode(&torn, Guid([7; 16])),
            Err(Error::BadChecksum { .. })
        ));
    }

    #[test]
    fn huge_descriptor_count_is_rejected_before_reading_descriptors() {
        let mut bytes = LogEntry::encode(&header(5), &writes());
        le::put_u32(&mut bytes, DESCRIPTOR_COUNT_AT, u32::MAX);
        checksum::seal(&mut bytes, CHECKSUM_AT);
        assert!(matches!(
            LogEntry::decode(&bytes, Guid([7; 16])),
            Err(Error::InvalidField { .. })
        ));
    }
}
