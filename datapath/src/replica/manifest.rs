//! The manifest of a recovery point (format version 1, little-endian), appended to the disk's
//! journal when the point commits: what the point is, which key wrote it, and a Merkle root
//! over every block digest. A keyed BLAKE3 MAC (digest key) makes any tampering an error, and a
//! CRC-32C tells storage damage apart from tampering.
//!
//! Layout: magic `DPMF` | version u16 | consistency u8 | reserved u8 | sequence u64 |
//! time_nanos u64 | generation u64 | disk_size u64 | block_size u32 | key_id \[20\] |
//! merkle_root \[32\] | snapshot id length u16 | snapshot id (UTF-8) | MAC \[32\] | CRC-32C u32.

pub const MAGIC: &[u8; 4] = b"DPMF";
pub const VERSION: u16 = 1;
const FIXED: usize = 4 + 2 + 1 + 1 + 8 + 8 + 8 + 8 + 4 + 20 + 32 + 2;
/// Snapshot ids are 28 characters; anything far longer is not ours.
const MAX_SNAPSHOT_ID: usize = 256;

/// Crash- or application-consistent (VSS) point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    Crash,
    Application,
}

/// One recovery point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub sequence: u64,
    pub time_nanos: u64,
    pub consistency: Consistency,
    pub generation: u64,
    pub disk_size: u64,
    pub block_size: u32,
    pub key_id: [u8; 20],
    pub merkle_root: [u8; 32],
    /// The replica blob's snapshot holding this point.
    pub snapshot: String,
}

/// Why stored manifest bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest: {0}")]
    Malformed(String),
    #[error("manifest CRC-32C mismatch (damaged in storage)")]
    Checksum,
    #[error("manifest authentication failed: tampered, or written with another key")]
    Authentication,
}

impl Manifest {
    /// Encode and seal with the disk's digest key.
    pub fn encode(&self, digest_key: &[u8; 32]) -> Vec<u8> {
        assert!(self.snapshot.len() <= MAX_SNAPSHOT_ID);
        let mut b = Vec::with_capacity(FIXED + self.snapshot.len() + 36);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.push(match self.consistency {
            Consistency::Crash => 0,
            Consistency::Application => 1,
        });
        b.push(0);
        for v in [
            self.sequence,
            self.time_nanos,
            self.generation,
            self.disk_size,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.block_size.to_le_bytes());
        b.extend_from_slice(&self.key_id);
        b.extend_from_slice(&self.merkle_root);
        b.extend_from_slice(&(self.snapshot.len() as u16).to_le_bytes());
        b.extend_from_slice(self.snapshot.as_bytes());
        let mac = *blake3::keyed_hash(digest_key, &b).as_bytes();
        b.extend_from_slice(&mac);
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and verify; the key id is returned even when authentication fails, so a caller
    /// can say "written with certificate X" rather than "corrupt".
    pub fn decode(bytes: &[u8], digest_key: &[u8; 32]) -> Result<Manifest, ManifestError> {
        let bad = |why: &str| ManifestError::Malformed(why.into());
        if bytes.len() < FIXED + 36 || &bytes[..4] != MAGIC {
            return Err(bad("not a manifest"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(ManifestError::Checksum);
        }
        let (signed, mac) = body.split_at(body.len() - 32);
        let version = u16::from_le_bytes([signed[4], signed[5]]);
        if version != VERSION {
            return Err(bad(&format!("version {version}")));
        }
        let id_len = u16::from_le_bytes([signed[FIXED - 2], signed[FIXED - 1]]) as usize;
        if id_len > MAX_SNAPSHOT_ID || FIXED + id_len != signed.len() {
            return Err(bad("snapshot id length does not match"));
        }
        if blake3::keyed_hash(digest_key, signed)
            != blake3::Hash::from_bytes(mac.try_into().expect("32 bytes"))
        {
            return Err(ManifestError::Authentication);
        }
        let u64_at =
            |at: usize| u64::from_le_bytes(signed[at..at + 8].try_into().expect("8 bytes"));
        Ok(Manifest {
            consistency: match signed[6] {
                0 => Consistency::Crash,
                1 => Consistency::Application,
                other => return Err(bad(&format!("consistency {other}"))),
            },
            sequence: u64_at(8),
            time_nanos: u64_at(16),
            generation: u64_at(24),
            disk_size: u64_at(32),
            block_size: u32::from_le_bytes(signed[40..44].try_into().expect("4 bytes")),
            key_id: signed[44..64].try_into().expect("20 bytes"),
            merkle_root: signed[64..96].try_into().expect("32 bytes"),
            snapshot: String::from_utf8(signed[FIXED..].to_vec())
                .map_err(|_| bad("snapshot id is not UTF-8"))?,
        })
    }

    /// The key id stored in manifest bytes, without verifying them (for error messages).
    pub fn peek_key_id(bytes: &[u8]) -> Option<[u8; 20]> {
        (bytes.len() >= FIXED && &bytes[..4] == MAGIC)
            .then(|| bytes[44..64].try_into().expect("20 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::merkle::merkle_root;

    const KEY: [u8; 32] = [9; 32];

    fn manifest() -> Manifest {
        Manifest {
            sequence: 42,
            time_nanos: 1_700_000_000_123_456_700,
            consistency: Consistency::Application,
            generation: 7,
            disk_size: 1 << 30,
            block_size: 65536,
            key_id: [0xAB; 20],
            merkle_root: merkle_root(&KEY, &[[1; 32], [2; 32], [3; 32]]),
            snapshot: "2026-11-26T08:00:00.0000000Z".into(),
        }
    }

    #[test]
    fn manifest_round_trips_and_every_flipped_byte_is_refused() {
        let bytes = manifest().encode(&KEY);
        assert_eq!(Manifest::decode(&bytes, &KEY).unwrap(), manifest());
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x20;
            assert!(Manifest::decode(&b, &KEY).is_err(), "byte {i}");
        }
        assert!(Manifest::decode(&bytes[..bytes.len() - 1], &KEY).is_err());
    }

    #[test]
    fn another_key_is_an_authentication_error_and_the_key_id_is_still_readable() {
        let bytes = manifest().encode(&KEY);
        assert_eq!(
            Manifest::decode(&bytes, &[8; 32]),
            Err(ManifestError::Authentication)
        );
        assert_eq!(Manifest::peek_key_id(&bytes), Some([0xAB; 20]));
    }

    #[test]
    fn version_1_manifest_bytes_are_pinned() {
        // CRC-32C of the whole encoding pins every byte: a change here is a format change and
        // needs a version bump.
        let crc = crc32c::crc32c(&manifest().encode(&KEY));
        assert_eq!(crc, GOLDEN_CRC, "manifest v1 encoding changed");
    }

    const GOLDEN_CRC: u32 = 1_214_729_159;

    #[test]
    fn merkle_root_depends_on_every_leaf_and_its_position() {
        let leaves: Vec<[u8; 32]> = (0..7u8).map(|i| [i; 32]).collect();
        let root = merkle_root(&KEY, &leaves);
        for i in 0..leaves.len() {
            let mut l = leaves.clone();
            l[i][0] ^= 1;
            assert_ne!(merkle_root(&KEY, &l), root, "leaf {i}");
        }
        let mut swapped = leaves.clone();
        swapped.swap(0, 1);
        assert_ne!(merkle_root(&KEY, &swapped), root);
        assert_ne!(merkle_root(&KEY, &[]), merkle_root(&[1; 32], &[]));
    }
}
