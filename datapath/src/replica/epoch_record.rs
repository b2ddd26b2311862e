//! The nonce-epoch record of a replica (format version 1, little-endian, one 512-byte page at
//! offset 0 of the `NAME.epochs` blob): the last epoch an agent claimed. Every agent start and
//! every exhausted epoch claims the next one and stores it *before* its first nonce is used,
//! so the epochs of one replica strictly increase and a nonce (epoch ‖ counter) is never used
//! twice under the replica's key, across crashes and restarts (docs/keys.md).
//!
//! `magic "DPEP" | version u32 | last epoch u64 | reserved (zeros) | CRC-32C u32 at 508`.

/// The record's size: one page.
pub const EPOCH_RECORD_SIZE: usize = 512;
const MAGIC: &[u8; 4] = b"DPEP";
const VERSION: u32 = 1;
const CRC_AT: usize = EPOCH_RECORD_SIZE - 4;

/// Why an epoch record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochRecordError {
    #[error("epoch record: {0} bytes, need {EPOCH_RECORD_SIZE}")]
    Short(usize),
    #[error("epoch record: bad magic")]
    Magic,
    #[error("epoch record: version {0} (this build reads {VERSION})")]
    Version(u32),
    #[error("epoch record: CRC-32C mismatch (damaged in storage)")]
    Checksum,
}

/// The last epoch claimed for a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochRecord {
    pub last_epoch: u64,
}

impl EpochRecord {
    pub fn encode(&self) -> [u8; EPOCH_RECORD_SIZE] {
        let mut b = [0u8; EPOCH_RECORD_SIZE];
        b[..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.last_epoch.to_le_bytes());
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode a record; `Ok(None)` for a page never written (all zeros).
    pub fn decode(bytes: &[u8]) -> Result<Option<EpochRecord>, EpochRecordError> {
        if bytes.len() < EPOCH_RECORD_SIZE {
            return Err(EpochRecordError::Short(bytes.len()));
        }
        let b = &bytes[..EPOCH_RECORD_SIZE];
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        if &b[..4] != MAGIC {
            return Err(EpochRecordError::Magic);
        }
        let version = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(EpochRecordError::Version(version));
        }
        let stored = u32::from_le_bytes(b[CRC_AT..].try_into().expect("4 bytes"));
        if crc32c::crc32c(&b[..CRC_AT]) != stored {
            return Err(EpochRecordError::Checksum);
        }
        Ok(Some(EpochRecord {
            last_epoch: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_any_flipped_bit_is_refused() {
        let r = EpochRecord {
            last_epoch: 0x0123_4567_89AB_CDEF,
        };
        let bytes = r.encode();
        assert_eq!(EpochRecord::decode(&bytes), Ok(Some(r)));
        assert_eq!(EpochRecord::decode(&[0; 512]), Ok(None));
        for bit in [0, 40, 70, 127, 4000, 4095] {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(EpochRecord::decode(&b).is_err(), "bit {bit}");
        }
        assert_eq!(
            EpochRecord::decode(&bytes[..100]),
            Err(EpochRecordError::Short(100))
        );
    }
}
