//! The 512-byte header in front of every stored block (format version 1, little-endian).
//! It is authenticated as AES-GCM associated data, with its own CRC-32C for a cheap check.

use thiserror::Error;

pub const HEADER_SIZE: usize = 512;
pub const MAGIC: &[u8; 4] = b"DPSL";
pub const VERSION: u16 = 1;

const VERSION_AT: usize = 4;
const FLAGS_AT: usize = 6;
const BLOCK_INDEX_AT: usize = 8;
const GENERATION_AT: usize = 16;
const STORED_LEN_AT: usize = 24;
const PLAIN_LEN_AT: usize = 28;
const NONCE_AT: usize = 32;
const TAG_AT: usize = 44;
const DIGEST_AT: usize = 60;
const PAYLOAD_CRC_AT: usize = 92;
const HEADER_CRC_AT: usize = HEADER_SIZE - 4;

/// The payload is zstd-compressed (else stored as is, because compression did not pay).
pub const FLAG_COMPRESSED: u16 = 1;
/// The payload is AES-256-GCM ciphertext (else plaintext: encryption at rest off).
pub const FLAG_ENCRYPTED: u16 = 2;
const KNOWN_FLAGS: u16 = FLAG_COMPRESSED | FLAG_ENCRYPTED;
/// Largest block a slot can hold (the replication block size is 4 KiB–4 MiB).
pub const MAX_BLOCK_BYTES: u32 = 4 << 20;

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderError {
    #[error("slot header: {0} bytes, need {HEADER_SIZE}")]
    Short(usize),
    #[error("slot header: bad magic (not a drplane slot, or never written)")]
    BadMagic,
    #[error("slot header: CRC-32C {actual:#010x}, stored {stored:#010x}")]
    BadChecksum { stored: u32, actual: u32 },
    #[error("slot header: version {0} (this build reads {VERSION})")]
    Version(u16),
    #[error("slot header: {field} = {value} is out of range")]
    Field { field: &'static str, value: u64 },
}

/// A decoded slot header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotHeader {
    pub flags: u16,
    pub block_index: u64,
    /// The replication cycle that wrote the block.
    pub generation: u64,
    /// Payload bytes after the header.
    pub stored_len: u32,
    /// Block bytes once decoded.
    pub plain_len: u32,
    pub nonce: [u8; 12],
    pub tag: [u8; 16],
    /// Keyed BLAKE3 of the plaintext block.
    pub digest: [u8; 32],
    /// CRC-32C of the stored payload.
    pub payload_crc: u32,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl SlotHeader {
    /// The bytes, with `tag` and both CRCs zeroed: the AES-GCM associated data.
    pub fn associated_data(&self) -> [u8; HEADER_SIZE] {
        let mut h = *self;
        h.tag = [0; 16];
        h.payload_crc = 0;
        h.encode_fields()
    }

    fn encode_fields(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..4].copy_from_slice(MAGIC);
        b[VERSION_AT..VERSION_AT + 2].copy_from_slice(&VERSION.to_le_bytes());
        b[FLAGS_AT..FLAGS_AT + 2].copy_from_slice(&self.flags.to_le_bytes());
        b[BLOCK_INDEX_AT..BLOCK_INDEX_AT + 8].copy_from_slice(&self.block_index.to_le_bytes());
        b[GENERATION_AT..GENERATION_AT + 8].copy_from_slice(&self.generation.to_le_bytes());
        b[STORED_LEN_AT..STORED_LEN_AT + 4].copy_from_slice(&self.stored_len.to_le_bytes());
        b[PLAIN_LEN_AT..PLAIN_LEN_AT + 4].copy_from_slice(&self.plain_len.to_le_bytes());
        b[NONCE_AT..NONCE_AT + 12].copy_from_slice(&self.nonce);
        b[TAG_AT..TAG_AT + 16].copy_from_slice(&self.tag);
        b[DIGEST_AT..DIGEST_AT + 32].copy_from_slice(&self.digest);
        b[PAYLOAD_CRC_AT..PAYLOAD_CRC_AT + 4].copy_from_slice(&self.payload_crc.to_le_bytes());
        b
    }

    /// Encode with the header CRC sealed.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = self.encode_fields();
        let crc = crc32c::crc32c(&b[..HEADER_CRC_AT]);
        b[HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(bytes: &[u8]) -> Result<SlotHeader, HeaderError> {
        if bytes.len() < HEADER_SIZE {
            return Err(HeaderError::Short(bytes.len()));
        }
        let b = &bytes[..HEADER_SIZE];
        if &b[..4] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let stored = u32_at(b, HEADER_CRC_AT);
        let actual = crc32c::crc32c(&b[..HEADER_CRC_AT]);
        if stored != actual {
            return Err(HeaderError::BadChecksum { stored, actual });
        }
        let version = u16_at(b, VERSION_AT);
        if version != VERSION {
            return Err(HeaderError::Version(version));
        }
        let h = SlotHeader {
            flags: u16_at(b, FLAGS_AT),
            block_index: u64_at(b, BLOCK_INDEX_AT),
            generation: u64_at(b, GENERATION_AT),
            stored_len: u32_at(b, STORED_LEN_AT),
            plain_len: u32_at(b, PLAIN_LEN_AT),
            nonce: b[NONCE_AT..NONCE_AT + 12].try_into().expect("12 bytes"),
            tag: b[TAG_AT..TAG_AT + 16].try_into().expect("16 bytes"),
            digest: b[DIGEST_AT..DIGEST_AT + 32].try_into().expect("32 bytes"),
            payload_crc: u32_at(b, PAYLOAD_CRC_AT),
        };
        if h.flags & !KNOWN_FLAGS != 0 {
            return Err(HeaderError::Field {
                field: "flags",
                value: h.flags.into(),
            });
        }
        if h.plain_len == 0 || h.plain_len > MAX_BLOCK_BYTES {
            return Err(HeaderError::Field {
                field: "plain_len",
                value: h.plain_len.into(),
            });
        }
        if h.stored_len > MAX_BLOCK_BYTES
            || (h.flags & FLAG_COMPRESSED == 0 && h.stored_len != h.plain_len)
        {
            return Err(HeaderError::Field {
                field: "stored_len",
                value: h.stored_len.into(),
            });
        }
        Ok(h)
    }
}
