//! Structured message bodies (`x-ms-structured-body: XSM/1.0; properties=crc64`), which newer
//! Azure SDKs send instead of one `x-ms-content-crc64` so that a body is checked piece by piece.
//!
//! Layout, all integers little-endian:
//! - message header (13 bytes): version `1` (u8), whole message length (u64), flags (u16; bit 0:
//!   CRC-64 present), segment count (u16);
//! - per segment: number (u16, from 1), content length (u64), content, and with the CRC-64 flag
//!   the segment's CRC-64 (8 bytes);
//! - with the CRC-64 flag, the CRC-64 of all content (8 bytes).
//!
//! The CRC is Azure Storage's CRC-64 ([`content_crc64`]), which `x-ms-content-crc64` also
//! carries.

use crate::error::{ErrorCode, StoreError};

/// Azure Storage's CRC-64 of `data`: CRC-64/NVME (reflected polynomial 0x9A6C9329AC4BC9B5).
pub fn content_crc64(data: &[u8]) -> u64 {
    const AZURE_CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_NVME);
    AZURE_CRC64.checksum(data)
}

/// The header value naming the one structured format served.
pub const STRUCTURED_BODY_CRC64: &str = "XSM/1.0; properties=crc64";
const MESSAGE_HEADER_BYTES: usize = 13;
const SEGMENT_HEADER_BYTES: usize = 10;
const CRC_BYTES: usize = 8;
const FLAG_CRC64: u16 = 1;

fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::service(
        ErrorCode::InvalidInput,
        format!("structured body: {}", message.into()),
    )
}

/// Reads little-endian fields off the front of a body, naming the field that runs short.
struct Cursor<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], StoreError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.body.len());
        let Some(end) = end else {
            return Err(invalid(format!(
                "ends inside the {what} at byte {}",
                self.at
            )));
        };
        let piece = &self.body[self.at..end];
        self.at = end;
        Ok(piece)
    }
    fn u16(&mut self, what: &str) -> Result<u16, StoreError> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, StoreError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
}

/// The content of a structured `body` that declares `content_length` bytes of content
/// (`x-ms-structured-content-length`), every CRC checked.
pub fn decode(body: &[u8], content_length: u64) -> Result<Vec<u8>, StoreError> {
    let crc = content_crc64;
    let mut c = Cursor { body, at: 0 };
    let version = c.take(1, "version")?[0];
    if version != 1 {
        return Err(invalid(format!("version {version}; only 1 is served")));
    }
    let message_length = c.u64("message length")?;
    if message_length != body.len() as u64 {
        return Err(invalid(format!(
            "says {message_length} bytes, the body has {}",
            body.len()
        )));
    }
    let flags = c.u16("flags")?;
    if flags & !FLAG_CRC64 != 0 {
        return Err(invalid(format!("unknown flags {flags:#x}")));
    }
    let with_crc = flags & FLAG_CRC64 != 0;
    let segments = c.u16("segment count")?;
    debug_assert_eq!(c.at, MESSAGE_HEADER_BYTES);
    // The content is smaller than the body, which is bounded by the server.
    let mut content = Vec::with_capacity(body.len());
    for number in 1..=segments {
        let got = c.u16("segment number")?;
        if got != number {
            return Err(invalid(format!("segment {got} where {number} belongs")));
        }
        let len = c.u64("segment length")?;
        let len = usize::try_from(len).map_err(|_| invalid("segment length"))?;
        let data = c.take(len, "segment content")?;
        if with_crc {
            let sent = c.u64("segment CRC-64")?;
            if sent != crc(data) {
                return Err(StoreError::service(
                    ErrorCode::Crc64Mismatch,
                    format!("structured body: segment {number}'s CRC-64 is not its content's"),
                ));
            }
        }
        content.extend_from_slice(data);
    }
    if with_crc {
        let sent = c.u64("message CRC-64")?;
        if sent != crc(&content) {
            return Err(StoreError::service(
                ErrorCode::Crc64Mismatch,
                "structured body: the message CRC-64 is not its content's",
            ));
        }
    }
    if c.at != body.len() {
        return Err(invalid(format!(
            "{} bytes after the message",
            body.len() - c.at
        )));
    }
    if content.len() as u64 != content_length {
        return Err(invalid(format!(
            "{} bytes of content; x-ms-structured-content-length says {content_length}",
            content.len()
        )));
    }
    Ok(content)
}

/// Encode `content` as one CRC-64 structured message of `segment` bytes per segment (what an
/// SDK sends; for tests and tools).
pub fn encode(content: &[u8], segment: usize) -> Vec<u8> {
    let crc = content_crc64;
    let pieces: Vec<&[u8]> = if content.is_empty() {
        Vec::new()
    } else {
        content.chunks(segment.max(1)).collect()
    };
    let length = MESSAGE_HEADER_BYTES
        + pieces
            .iter()
            .map(|p| SEGMENT_HEADER_BYTES + p.len() + CRC_BYTES)
            .sum::<usize>()
        + CRC_BYTES;
    let mut out = Vec::with_capacity(length);
    out.push(1);
    out.extend_from_slice(&(length as u64).to_le_bytes());
    out.extend_from_slice(&FLAG_CRC64.to_le_bytes());
    out.extend_from_slice(&(pieces.len() as u16).to_le_bytes());
    for (i, p) in pieces.iter().enumerate() {
        out.extend_from_slice(&(i as u16 + 1).to_le_bytes());
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(&crc(p).to_le_bytes());
    }
    out.extend_from_slice(&crc(content).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_structured_body_round_trips_and_every_flipped_byte_is_caught() {
        let content: Vec<u8> = (0..1536u32).map(|i| (i * 7) as u8).collect();
        let body = encode(&content, 512);
        assert_eq!(body.len(), 13 + 3 * (10 + 512 + 8) + 8);
        assert_eq!(decode(&body, 1536).unwrap(), content);
        for at in 0..body.len() {
            let mut bad = body.clone();
            bad[at] ^= 0x10;
            assert!(decode(&bad, 1536).is_err(), "flip at {at} accepted");
        }
        assert!(decode(&body, 1535).is_err(), "content length must agree");
        assert!(decode(&body[..body.len() - 1], 1536).is_err());
        assert!(decode(&[], 0).is_err());
    }

    #[test]
    fn a_corrupt_segment_is_a_crc64_mismatch() {
        let content = vec![0x5au8; 1024];
        let mut body = encode(&content, 1024);
        body[13 + 10 + 100] ^= 1;
        let e = decode(&body, 1024).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Crc64Mismatch), "{e}");
    }
}
