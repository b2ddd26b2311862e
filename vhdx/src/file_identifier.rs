//! File type identifier at offset 0 (MS-VHDX 2.2.1): `"vhdxfile"` and a UTF-16 creator string.

use crate::error::{require_len, Error, Result};

pub const SIGNATURE: &[u8; 8] = b"vhdxfile";
/// Signature plus the 512-byte creator field.
pub const ENCODED_SIZE: usize = 8 + CREATOR_SIZE;
const CREATOR_SIZE: usize = 512;

/// The file type identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentifier {
    /// The creator application, as written (informational only; never rewritten).
    pub creator: String,
}

impl FileIdentifier {
    pub fn decode(bytes: &[u8]) -> Result<FileIdentifier> {
        const S: &str = "file identifier";
        require_len(S, bytes, SIGNATURE.len())?;
        if &bytes[..8] != SIGNATURE {
            return Err(Error::BadSignature {
                structure: S,
                offset: 0,
                expected: "vhdxfile",
            });
        }
        let creator_bytes = &bytes[8..bytes.len().min(ENCODED_SIZE)];
        let units: Vec<u16> = creator_bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        Ok(FileIdentifier {
            creator: String::from_utf16_lossy(&units),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; ENCODED_SIZE];
        out[..8].copy_from_slice(SIGNATURE);
        for (i, unit) in self
            .creator
            .encode_utf16()
            .take(CREATOR_SIZE / 2 - 1)
            .enumerate()
        {
            out[8 + 2 * i..10 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_round_trips_and_wrong_magic_is_refused() {
        let id = FileIdentifier {
            creator: "drplane test".into(),
        };
        assert_eq!(FileIdentifier::decode(&id.encode()).unwrap(), id);
        assert!(matches!(
            FileIdentifier::decode(b"vhdxfilX"),
            Err(Error::BadSignature { .. })
        ));
        assert!(matches!(
            FileIdentifier::decode(b"vhd"),
            Err(Error::Truncated { .. })
        ));
    }
}
