//! One block through the pipeline and back: keyed BLAKE3 digest → zero detection → zstd (kept
//! only when it saves space) → AES-256-GCM with the slot header as associated data → CRC-32C
//! of the stored payload. Decoding checks all of it in the opposite order and names what failed.

use aes_gcm::aead::AeadInOut;
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
    /// Bytes written to the store: the record padded with zeros to whole 512-byte pages
    /// (0 for a zero block, whose slot is cleared instead).
    pub fn stored_bytes(&self) -> u64 {
        match self {
            Encoded::Zero { .. } => 0,
            Encoded::Record { bytes, .. } => bytes.len().next_multiple_of(PAGE) as u64,
        }
    }

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

/// Page granularity records are padded to.
const PAGE: usize = 512;

thread_local! {
    /// A zstd context per thread, reused across blocks (creating one per block costs more
    /// than compressing a 64 KiB block).
    static COMPRESSOR: std::cell::RefCell<Option<(CompressorTuning, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    /// Likewise for decoding (restore, verify).
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// The zstd settings a block is compressed with: the policy's level, and for the fast levels
/// (1 and below) on blocks of at most 128 KiB a hash table of 2^12 entries (16 KiB, which stays
/// in the L1 cache) instead of zstd's 2^13. On the realistic benchmark disk that compresses 7%
/// faster for 2% more stored bytes (`scripts/bench-replicate.sh`). Decoding is unaffected: the
/// frames are standard zstd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CompressorTuning {
    level: i32,
    small_table: bool,
}

impl CompressorTuning {
    const SMALL_BLOCK: usize = 128 << 10;
    const SMALL_HASH_LOG: u32 = 12;

    fn for_block(level: i32, len: usize) -> CompressorTuning {
        CompressorTuning {
            level,
            small_table: level <= 1 && len <= Self::SMALL_BLOCK,
        }
    }

    fn compressor(self) -> Option<zstd::bulk::Compressor<'static>> {
        let mut c = zstd::bulk::Compressor::new(self.level).ok()?;
        if self.small_table {
            c.set_parameter(zstd::zstd_safe::CParameter::HashLog(Self::SMALL_HASH_LOG))
                .ok()?;
        }
        Some(c)
    }
}

/// A zstd context set up as the pipeline sets it up for blocks of `block_len` bytes at `level`
/// (benchmarks measure the compression stage with it).
pub fn block_compressor(level: i32, block_len: usize) -> Option<zstd::bulk::Compressor<'static>> {
    CompressorTuning::for_block(level, block_len).compressor()
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

/// A block's digest under a disk's digest key: keyed BLAKE3 of its bytes. The digest table,
/// the record headers and the Merkle leaves all hold it.
pub fn block_digest(digest_key: &[u8; 32], block: &[u8]) -> [u8; 32] {
    *blake3::keyed_hash(digest_key, block).as_bytes()
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

    /// Keyed BLAKE3 of a block ([`block_digest`] under this codec's key).
    pub fn digest(&self, block: &[u8]) -> [u8; 32] {
        block_digest(&self.digest_key, block)
    }

    /// Encode `block` (1 byte to 4 MiB) as block `index` of cycle `generation`. `nonce` must
    /// be fresh (from a `NonceSource`) when encrypting.
    pub fn encode(&self, index: u64, generation: u64, block: &[u8], nonce: [u8; 12]) -> Encoded {
        self.encode_digested(index, generation, block, self.digest(block), nonce)
    }

    /// [`encode`](Self::encode) for a block whose keyed digest the caller already has.
    pub fn encode_digested(
        &self,
        index: u64,
        generation: u64,
        block: &[u8],
        digest: [u8; 32],
        nonce: [u8; 12],
    ) -> Encoded {
        assert!(!block.is_empty() && block.len() as u64 <= u64::from(MAX_BLOCK_BYTES));
        if pageblob::is_zero(block) {
            return Encoded::Zero { digest };
        }
        // One buffer: header space, then the payload, with room to pad to whole pages. Only the
        // header space is initialised here: zstd writes into the spare capacity (no memset of a
        // block-sized buffer per block).
        let mut bytes = Vec::with_capacity((HEADER_SIZE + block.len()).next_multiple_of(PAGE));
        bytes.resize(HEADER_SIZE, 0);
        // zstd is kept only when it saves at least a byte.
        let compressed = COMPRESSOR.with(|slot| {
            let mut slot = slot.borrow_mut();
            let tuning = CompressorTuning::for_block(self.zstd_level, block.len());
            if slot.as_ref().is_none_or(|(t, _)| *t != tuning) {
                *slot = tuning.compressor().map(|c| (tuning, c));
            }
            let (_, compressor) = slot.as_mut()?;
            let mut cursor = std::io::Cursor::new(&mut bytes);
            cursor.set_position(HEADER_SIZE as u64);
            let n = compressor.compress_to_buffer(block, &mut cursor).ok()?;
            (n < block.len()).then_some(n)
        });
        let stored_len = match compressed {
            Some(n) => n,
            None => {
                bytes.truncate(HEADER_SIZE);
                bytes.extend_from_slice(block);
                block.len()
            }
        };
        let mut flags = if compressed.is_some() {
            FLAG_COMPRESSED
        } else {
            0
        };
        debug_assert_eq!(bytes.len(), HEADER_SIZE + stored_len);
        let mut header = SlotHeader {
            flags: 0,
            block_index: index,
            generation,
            stored_len: stored_len as u32,
            plain_len: block.len() as u32,
            nonce: [0; 12],
            tag: [0; 16],
            digest,
            payload_crc: 0,
        };
        let payload = &mut bytes[HEADER_SIZE..];
        if let Some(cipher) = &self.cipher {
            flags |= FLAG_ENCRYPTED;
            header.flags = flags;
            header.nonce = nonce;
            let aad = header.associated_data();
            let tag = cipher
                .encrypt_inout_detached(&Nonce::from(nonce), &aad, payload.into())
                .expect("AES-GCM encrypts any length we use");
            header.tag = tag.into();
        } else {
            header.flags = flags;
        }
        header.payload_crc = crc32c::crc32c(payload);
        bytes[..HEADER_SIZE].copy_from_slice(&header.encode());
        Encoded::Record { header, bytes }
    }

    /// Decode a record read from block `expected_index`'s slot.
    pub fn decode(&self, record: &[u8], expected_index: u64) -> Result<Vec<u8>, RecordError> {
        self.decode_owned(record.to_vec(), expected_index)
            .map(|(block, _)| block)
    }

    /// [`decode`](Self::decode) of a record the caller gives up: the payload is authenticated
    /// and decrypted in place (no copy), and the block's keyed digest — already checked
    /// against the header's — comes back with it.
    pub fn decode_owned(
        &self,
        mut record: Vec<u8>,
        expected_index: u64,
    ) -> Result<(Vec<u8>, [u8; 32]), RecordError> {
        let header = SlotHeader::decode(&record)?;
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
        record.truncate(HEADER_SIZE + header.stored_len as usize);
        let payload = &mut record[HEADER_SIZE..];
        let actual = crc32c::crc32c(payload);
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
                .decrypt_inout_detached(
                    &Nonce::from(header.nonce),
                    &aad,
                    (&mut *payload).into(),
                    &Tag::from(header.tag),
                )
                .map_err(|_| RecordError::Authentication)?;
        }
        let block = if header.flags & FLAG_COMPRESSED != 0 {
            // Bounded by plain_len (≤ 4 MiB, checked by the header decoder).
            DECOMPRESSOR
                .with(|slot| {
                    let mut slot = slot.borrow_mut();
                    if slot.is_none() {
                        *slot = Some(zstd::bulk::Decompressor::new()?);
                    }
                    slot.as_mut()
                        .expect("just set")
                        .decompress(payload, header.plain_len as usize)
                })
                .map_err(|e| RecordError::Decompress(e.to_string()))?
        } else {
            record.drain(..HEADER_SIZE);
            record
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
        Ok((block, header.digest))
    }
}
