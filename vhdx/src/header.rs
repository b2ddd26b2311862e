//! The two VHDX headers (MS-VHDX 2.2.2) and the rule that picks the current one.

use crate::checksum;
use crate::error::{require_len, Error, Result};
use crate::guid::Guid;
use crate::layout::MIB;
use crate::le;

pub const SIGNATURE: &[u8; 4] = b"head";
/// MS-VHDX 2.2.2: the checksum covers the first 4 KiB of the 64 KiB header structure.
pub const CHECKSUMMED_SIZE: usize = 4096;
const CHECKSUM_AT: usize = 4;
const SEQUENCE_NUMBER_AT: usize = CHECKSUM_AT + 4;
const FILE_WRITE_GUID_AT: usize = SEQUENCE_NUMBER_AT + 8;
const DATA_WRITE_GUID_AT: usize = FILE_WRITE_GUID_AT + 16;
const LOG_GUID_AT: usize = DATA_WRITE_GUID_AT + 16;
const LOG_VERSION_AT: usize = LOG_GUID_AT + 16;
const VERSION_AT: usize = LOG_VERSION_AT + 2;
const LOG_LENGTH_AT: usize = VERSION_AT + 2;
const LOG_OFFSET_AT: usize = LOG_LENGTH_AT + 4;

/// MS-VHDX 2.2.2: the only defined format version.
pub const SUPPORTED_VERSION: u16 = 1;
/// MS-VHDX 2.2.2: the only defined log version.
pub const SUPPORTED_LOG_VERSION: u16 = 0;

/// One header copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub sequence_number: u64,
    pub file_write_guid: Guid,
    pub data_write_guid: Guid,
    /// Non-zero: the log may hold entries that must be replayed (MS-VHDX 2.3.3).
    pub log_guid: Guid,
    pub log_version: u16,
    pub version: u16,
    pub log_length: u32,
    pub log_offset: u64,
}

impl Header {
    /// Decode and verify signature and checksum — what MS-VHDX calls a *valid* header.
    pub fn decode(bytes: &[u8]) -> Result<Header> {
        const S: &str = "header";
        require_len(S, bytes, CHECKSUMMED_SIZE)?;
        let bytes = &bytes[..CHECKSUMMED_SIZE];
        if &bytes[..4] != SIGNATURE {
            return Err(Error::BadSignature {
                structure: S,
                offset: 0,
                expected: "head",
            });
        }
        checksum::verify(S, bytes, CHECKSUM_AT)?;
        Ok(Header {
            sequence_number: le::u64_at(bytes, SEQUENCE_NUMBER_AT),
            file_write_guid: Guid::read(bytes, FILE_WRITE_GUID_AT),
            data_write_guid: Guid::read(bytes, DATA_WRITE_GUID_AT),
            log_guid: Guid::read(bytes, LOG_GUID_AT),
            log_version: le::u16_at(bytes, LOG_VERSION_AT),
            version: le::u16_at(bytes, VERSION_AT),
            log_length: le::u32_at(bytes, LOG_LENGTH_AT),
            log_offset: le::u64_at(bytes, LOG_OFFSET_AT),
        })
    }

    /// Encode the 4 KiB checksummed part, checksum included.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; CHECKSUMMED_SIZE];
        out[..4].copy_from_slice(SIGNATURE);
        le::put_u64(&mut out, SEQUENCE_NUMBER_AT, self.sequence_number);
        out[FILE_WRITE_GUID_AT..FILE_WRITE_GUID_AT + 16].copy_from_slice(&self.file_write_guid.0);
        out[DATA_WRITE_GUID_AT..DATA_WRITE_GUID_AT + 16].copy_from_slice(&self.data_write_guid.0);
        out[LOG_GUID_AT..LOG_GUID_AT + 16].copy_from_slice(&self.log_guid.0);
        le::put_u16(&mut out, LOG_VERSION_AT, self.log_version);
        le::put_u16(&mut out, VERSION_AT, self.version);
        le::put_u32(&mut out, LOG_LENGTH_AT, self.log_length);
        le::put_u64(&mut out, LOG_OFFSET_AT, self.log_offset);
        checksum::seal(&mut out, CHECKSUM_AT);
        out
    }

    /// Field rules for the current header (offsets relative to the header).
    pub fn validate(&self) -> Result<()> {
        const S: &str = "header";
        if self.version != SUPPORTED_VERSION {
            return Err(Error::field(
                S,
                VERSION_AT as u64,
                "Version",
                self.version.into(),
                "MS-VHDX 2.2.2: must be 1",
            ));
        }
        if self.log_version != SUPPORTED_LOG_VERSION && !self.log_guid.is_zero() {
            return Err(Error::field(
                S,
                LOG_VERSION_AT as u64,
                "LogVersion",
                self.log_version.into(),
                "MS-VHDX 2.2.2: only log version 0 can be replayed",
            ));
        }
        if u64::from(self.log_length) % MIB != 0 || self.log_length == 0 {
            return Err(Error::field(
                S,
                LOG_LENGTH_AT as u64,
                "LogLength",
                self.log_length.into(),
                "MS-VHDX 2.2.2: must be a non-zero multiple of 1 MiB",
            ));
        }
        if self.log_offset % MIB != 0 || self.log_offset < MIB {
            return Err(Error::field(
                S,
                LOG_OFFSET_AT as u64,
                "LogOffset",
                self.log_offset,
                "MS-VHDX 2.2.2: must be a multiple of 1 MiB past the header section",
            ));
        }
        Ok(())
    }
}

/// Which header copy is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderSlot {
    First,
    Second,
}

/// MS-VHDX 2.2.2.1 plus qemu's tie rule: the current header is the only valid one, or the valid
/// one with the strictly greater sequence number; equal numbers are accepted only when both
/// copies are identical (as Disk2VHD writes them).
pub fn choose_current(
    first: &Result<Header>,
    second: &Result<Header>,
) -> std::result::Result<HeaderSlot, &'static str> {
    match (first, second) {
        (Ok(a), Ok(b)) => {
            if a.sequence_number > b.sequence_number {
                Ok(HeaderSlot::First)
            } else if b.sequence_number > a.sequence_number {
                Ok(HeaderSlot::Second)
            } else if a == b {
                Ok(HeaderSlot::First)
            } else {
                Err("both headers have the same sequence number but differ")
            }
        }
        (Ok(_), Err(_)) => Ok(HeaderSlot::First),
        (Err(_), Ok(_)) => Ok(HeaderSlot::Second),
        (Err(_), Err(_)) => Err("neither header is valid"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u64) -> Header {
        Header {
            sequence_number: seq,
            file_write_guid: Guid([1; 16]),
            data_write_guid: Guid([2; 16]),
            log_guid: Guid::ZERO,
            log_version: 0,
            version: 1,
            log_length: MIB as u32,
            log_offset: MIB,
        }
    }

    #[test]
    fn header_round_trips() {
        let h = header(u64::MAX);
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn header_with_bad_checksum_is_invalid() {
        let mut bytes = header(3).encode();
        bytes[100] ^= 0x40;
        assert!(matches!(
            Header::decode(&bytes),
            Err(Error::BadChecksum { .. })
        ));
    }

    // MS-VHDX 2.2.2.1: the greater sequence number wins; an invalid copy never does.
    #[test]
    fn greater_sequence_number_wins_and_invalid_copy_falls_back_to_other() {
        let bad: Result<Header> = Err(Error::invalid("header", 0, "x"));
        assert_eq!(
            choose_current(&Ok(header(5)), &Ok(header(6))),
            Ok(HeaderSlot::Second)
        );
        assert_eq!(
            choose_current(&Ok(header(7)), &Ok(header(6))),
            Ok(HeaderSlot::First)
        );
        assert_eq!(choose_current(&bad, &Ok(header(1))), Ok(HeaderSlot::Second));
        assert!(choose_current(&Err(Error::invalid("h", 0, "x")), &bad).is_err());
    }

    #[test]
    fn equal_sequence_numbers_need_identical_copies() {
        assert_eq!(
            choose_current(&Ok(header(9)), &Ok(header(9))),
            Ok(HeaderSlot::First)
        );
        let mut other = header(9);
        other.log_guid = Guid([5; 16]);
        assert!(choose_current(&Ok(header(9)), &Ok(other)).is_err());
    }

    #[test]
    fn version_other_than_one_is_refused() {
        let mut h = header(1);
        h.version = 2;
        assert!(h.validate().is_err());
        h.version = 1;
        h.log_offset = MIB + 512;
        assert!(h.validate().is_err());
    }
}
