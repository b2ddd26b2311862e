//! One block through the pipeline and back: keyed BLAKE3 digest → zero detection → zstd (kept
//! only when it saves space) → AES-256-GCM with the slot header as associated data → CRC-32C
//! of the stored payload. Decoding checks all of it in the opposite order and names what failed.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use thiserror::Error;

use super::slot_header::{
    HeaderError, SlotHeader, FLAG_COMPRESSED, FLAG_ENCRYPTED, HEADER_SIZE, MAX_BLOCK_BYTES,
};
use crate::keys::DiskKeys;

/// What a block became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// All zeros: nothing is stored, the slot is cleared.
    Zero { digest: [u8; 32] },
    /// Header and payload, ready to be written from the slot's start.
    Record { header: SlotHeader, bytes: Vec<u8> },
}

impl Encoded {
    pub fn digest(&self) -> [u8; 32] {
        match self {
            Encoded::Zero { digest } => *digest,
            Encoded::Record { header, .. } => header.digest,
        }
    }
}

/// Why a stored record did not decode to its block.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("record holds block {found}, expected block {expected}")]
    WrongBlock { expected: u64, found: u64 },
    #[error("record payload cut short: {stored} bytes announced, {available} present")]
    Truncated { stored: u32, available: usize },
    #[error("payload CRC-32C {actual:#010x}, stored {stored:#010x} (damaged in storage)")]
    PayloadChecksum { stored: u32, actual: u32 },
    #[error("authentication failed: tampered data, or another key than the one that wrote it")]
    Authentication,
    #[error("record is encrypted but no key is at hand")]
    NoKey,
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("decoded {actual} bytes, header says {expected}")]
    Length { expected: u32, actual: usize },
    #[error("digest of the decoded block does not match the record's")]
    Digest,
}

/// Encodes and decodes blocks of one disk.
pub struct BlockCodec {
    digest_key: [u8; 32],
    cipher: Option<Aes256Gcm>,
    zstd_level: i32,
}

impl std::fmt::Debug for BlockCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCodec")
            .field("encrypted", &self.cipher.is_some())
            .field("zstd_level", &self.zstd_level)
            .finish()
    }
}

impl Drop for BlockCodec {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.digest_key);
    }
}

impl BlockCodec {
    /// `encrypt`: encryption at rest (the policy switch); digests are keyed either way.
    pub fn new(keys: &DiskKeys, zstd_level: i32, encrypt: bool) -> BlockCodec {
        let cipher =
            encrypt.then(|| Aes256Gcm::new_from_slice(keys.data.expose()).expect("32-byte key"));
        BlockCodec {
            digest_key: *keys.digest.expose(),
            cipher,
            zstd_level,
        }
    }

    /// Keyed BLAKE3 of a block.
    pub fn digest(&self, block: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.digest_key, block).as_bytes()
    }

    /// Encode `block` (1 byte to 4 MiB) as block `index` of cycle `generation`. `nonce` must
    /// be fresh (from a `NonceSource`) when encrypting.
    pub fn encode(&self, index: u64, generation: u64, block: &[u8], nonce: [u8; 12]) -> Encoded {
        assert!(!block.is_empty() && block.len() as u64 <= u64::from(MAX_BLOCK_BYTES));
        let digest = self.digest(block);
        if block.iter().all(|&b| b == 0) {
            return Encoded::Zero { digest };
        }
        let compressed = zstd::bulk::compress(block, self.zstd_level)
            .ok()
            .filter(|c| c.len() < block.len());
        let (mut payload, mut flags) = match compressed {
            Some(c) => (c, FLAG_COMPRESSED),
            None => (block.to_vec(), 0),
        };
        let mut header = SlotHeader {
            flags: 0,
            block_index: index,
            generation,
            stored_len: payload.len() as u32,
            plain_len: block.len() as u32,
            nonce: [0; 12],
            tag: [0; 16],
            digest,
            payload_crc: 0,
        };
        if let Some(cipher) = &self.cipher {
            flags |= FLAG_ENCRYPTED;
            header.flags = flags;
            header.nonce = nonce;
            let aad = header.associated_data();
            let tag = cipher
                .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut payload)
                .expect("AES-GCM encrypts any length we use");
            header.tag = tag.into();
        } else {
            header.flags = flags;
        }
        header.payload_crc = crc32c::crc32c(&payload);
        let mut bytes = Vec::with_capacity(HEADER_SIZE + payload.len());
        bytes.extend_from_slice(&header.encode());
        bytes.extend_from_slice(&payload);
        Encoded::Record { header, bytes }
    }

    /// Decode a record read from block `expected_index`'s slot.
    pub fn decode(&self, record: &[u8], expected_index: u64) -> Result<Vec<u8>, RecordError> {
        let header = SlotHeader::decode(record)?;
        if header.block_index != expected_index {
            return Err(RecordError::WrongBlock {
                expected: expected_index,
                found: header.block_index,
            });
        }
        let available = record.len() - HEADER_SIZE;
        if header.stored_len as usize > available {
            return Err(RecordError::Truncated {
                stored: header.stored_len,
                available,
            });
        }
        let mut payload = record[HEADER_SIZE..HEADER_SIZE + header.stored_len as usize].to_vec();
        let actual = crc32c::crc32c(&payload);
        if actual != header.payload_crc {
            return Err(RecordError::PayloadChecksum {
                stored: header.payload_crc,
                actual,
            });
        }
        if header.flags & FLAG_ENCRYPTED != 0 {
            let cipher = self.cipher.as_ref().ok_or(RecordError::NoKey)?;
            let aad = header.associated_data();
            cipher
                .decrypt_in_place_detached(
                    Nonce::from_slice(&header.nonce),
                    &aad,
                    &mut payload,
                    Tag::from_slice(&header.tag),
                )
                .map_err(|_| RecordError::Authentication)?;
        }
        let block = if header.flags & FLAG_COMPRESSED != 0 {
            // Bounded by plain_len (≤ 4 MiB, checked by the header decoder).
            zstd::bulk::decompress(&payload, header.plain_len as usize)
                .map_err(|e| RecordError::Decompress(e.to_string()))?
        } else {
            payload
        };
        if block.len() != header.plain_len as usize {
            return Err(RecordError::Length {
                expected: header.plain_len,
                actual: block.len(),
            });
        }
        if self.digest(&block) != header.digest {
            return Err(RecordError::Digest);
        }
        Ok(block)
    }
}
