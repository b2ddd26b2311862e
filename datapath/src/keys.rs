//! Keys: the registration certificate's `.pfx` is loaded (PBES2/AES as OpenSSL 3 writes it, or
//! the legacy 3DES/RC2 of `openssl -legacy` and older Windows), and every key drplane uses is
//! derived from its private key with BLAKE3 `derive_key` under versioned contexts:
//! master key → per-disk data key (AES-256-GCM) and digest key (keyed BLAKE3).
//! The key id is the certificate's SHA-1 thumbprint, as Windows shows it. Key bytes are zeroed
//! when dropped. Details: docs/keys.md.

use std::fmt;

use p12_keystore::{KeyStore, Pkcs12ImportPolicy};
use sha1::{Digest, Sha1};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Derivation contexts; changing one changes every key, so each carries a version.
pub const MASTER_KEY_CONTEXT: &str =
    "drplane 2026-11-26 master key from registration certificate v1";
pub const DATA_KEY_CONTEXT: &str = "drplane 2026-11-26 disk data key v1";
pub const DIGEST_KEY_CONTEXT: &str = "drplane 2026-11-26 disk digest key v1";

/// Why a `.pfx` could not give us a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("wrong password for the .pfx (its integrity check failed)")]
    WrongPassword,
    #[error("the .pfx holds no private key (export it with its key)")]
    NoPrivateKey,
    #[error("the .pfx uses an unsupported algorithm: {0}")]
    Unsupported(String),
    #[error("not a valid .pfx: {0}")]
    Malformed(String),
}

/// A certificate thumbprint (SHA-1 of its DER), which names the key in every manifest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 20]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// 32 secret bytes, zeroed on drop and never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Secret32([u8; 32]);

impl Secret32 {
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret32(..)")
    }
}

impl Secret32 {
    /// Wrap key bytes (for tests, golden files and keys carried in from elsewhere).
    pub fn from_bytes(bytes: [u8; 32]) -> Secret32 {
        Secret32(bytes)
    }
}

/// The keys of one protected disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskKeys {
    /// AES-256-GCM key for block records.
    pub data: Secret32,
    /// Key of the keyed BLAKE3 block digests.
    pub digest: Secret32,
}

/// The registration identity: its key id and the master key derived from its private key.
#[derive(Debug, Clone)]
pub struct Identity {
    pub key_id: KeyId,
    /// Certificate subject, for messages.
    pub subject: String,
    master: Secret32,
}

fn classify(e: p12_keystore::error::Error) -> KeyError {
    use p12_keystore::error::Error as E;
    match e {
        E::MacError(_) | E::UnpadError => KeyError::WrongPassword,
        E::UnsupportedEncryptionScheme
        | E::UnsupportedMacAlgorithm
        | E::UnsupportedContentType
        | E::UnsupportedCertificateType => KeyError::Unsupported(e.to_string()),
        other => KeyError::Malformed(other.to_string()),
    }
}

impl Identity {
    /// Load a `.pfx` (PKCS#12) and derive the master key from its private key.
    pub fn from_pfx(bytes: &[u8], password: &str) -> Result<Identity, KeyError> {
        let store = KeyStore::from_pkcs12(bytes, password, Pkcs12ImportPolicy::Relaxed)
            .map_err(classify)?;
        let (_, chain) = store.private_key_chain().ok_or(KeyError::NoPrivateKey)?;
        let cert = chain
            .certs()
            .first()
            .ok_or_else(|| KeyError::Malformed("the private key has no certificate".into()))?;
        let key_id = KeyId(Sha1::digest(cert.as_der()).into());
        Ok(Identity::from_key_material(
            key_id,
            cert.subject().to_string(),
            chain.key().as_der(),
        ))
    }

    /// An identity from its parts: the certificate's key id and the private key's DER bytes
    /// (the simulator's certificates are seeded bytes).
    pub fn from_key_material(key_id: KeyId, subject: String, private_key_der: &[u8]) -> Identity {
        Identity {
            key_id,
            subject,
            master: Secret32(blake3::derive_key(MASTER_KEY_CONTEXT, private_key_der)),
        }
    }

    /// Keys of the disk named `disk` (its stable id, e.g. the VHDX Virtual Disk ID).
    pub fn disk_keys(&self, disk: &str) -> DiskKeys {
        let derive = |context: &str| {
            let mut material = Vec::with_capacity(32 + disk.len());
            material.extend_from_slice(self.master.expose());
            material.extend_from_slice(disk.as_bytes());
            let key = Secret32(blake3::derive_key(context, &material));
            material.zeroize();
            key
        };
        DiskKeys {
            data: derive(DATA_KEY_CONTEXT),
            digest: derive(DIGEST_KEY_CONTEXT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_their_bytes() {
        let s = Secret32([7; 32]);
        assert_eq!(format!("{s:?}"), "Secret32(..)");
    }

    #[test]
    fn key_id_prints_as_a_windows_thumbprint() {
        let id = KeyId([0xAB; 20]);
        assert_eq!(id.to_string(), "AB".repeat(20));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for bytes in [&b""[..], b"\x30\x03\x02\x01\x03", &[0xFF; 64]] {
            assert!(matches!(
                Identity::from_pfx(bytes, "x"),
                Err(KeyError::Malformed(_) | KeyError::Unsupported(_))
            ));
        }
    }
}
