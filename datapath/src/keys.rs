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

/// Derivation contexts; changing one changes every key, so each carries a version. v2 of the
/// master key derives from the private key's material (`canonical_key_material`), not from its
/// PKCS#8 encoding, which differs between exports of one key.
pub const MASTER_KEY_CONTEXT: &str =
    "drplane 2026-12-04 master key from registration private key material v2";
pub const DATA_KEY_CONTEXT: &str = "drplane 2026-11-26 disk data key v1";
pub const DIGEST_KEY_CONTEXT: &str = "drplane 2026-11-26 disk digest key v1";

/// Why a `.pfx` could not give us a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("wrong password for the .pfx (its integrity check failed)")]
    WrongPassword,
    #[error("the .pfx holds no private key (export it with its key)")]
    NoPrivateKey,
    #[error("the .pfx holds a private key but no certificate for it (export the key with its certificate: the certificate's thumbprint names the key)")]
    NoCertificate,
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
        f.write_str(&hex::encode_upper(self.0))
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

/// PKCS#8 algorithm identifiers of the keys a registration certificate may hold.
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const OID_ED25519: &str = "1.3.101.112";

/// The private key as numbers, whatever its encoding: the same key exported by rcgen, by
/// `openssl pkcs12 -export`, with or without the optional public key or curve parameters,
/// PKCS#8 v1 or v2, gives the same bytes. Each field is length-prefixed (u32 LE):
/// - EC: `"ec"`, the curve's OID (DER), the private scalar (ECPrivateKey.privateKey);
/// - RSA: `"rsa"`, modulus n, public exponent e, private exponent d (minimal big-endian);
/// - Ed25519: `"ed25519"`, the 32-byte seed.
pub fn canonical_key_material(pkcs8_der: &[u8]) -> Result<Vec<u8>, KeyError> {
    use der::asn1::{ObjectIdentifier, OctetStringRef, UintRef};
    use der::{Decode, Encode, Reader, SliceReader};
    let malformed = |what: &str, e: der::Error| KeyError::Malformed(format!("{what}: {e}"));
    let info = pkcs8::PrivateKeyInfoRef::try_from(pkcs8_der)
        .map_err(|e| KeyError::Malformed(format!("private key (PKCS#8): {e}")))?;
    let key = info.private_key.as_bytes();
    let mut out = Vec::new();
    let mut field = |bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    match info.algorithm.oid.to_string().as_str() {
        OID_EC_PUBLIC_KEY => {
            let curve: ObjectIdentifier = info
                .algorithm
                .parameters
                .ok_or_else(|| KeyError::Malformed("EC private key without a curve".into()))?
                .decode_as()
                .map_err(|e| malformed("EC curve", e))?;
            let mut r = SliceReader::new(key).map_err(|e| malformed("ECPrivateKey", e))?;
            let scalar = r
                .sequence(|r| {
                    let _version = u8::decode(r)?;
                    let scalar = <&OctetStringRef>::decode(r)?;
                    // Optional parameters and public key: not key material.
                    r.read_slice(r.remaining_len())?;
                    Ok::<_, der::Error>(scalar.as_bytes())
                })
                .map_err(|e| malformed("ECPrivateKey", e))?;
            field(b"ec");
            field(&curve.to_der().map_err(|e| malformed("EC curve", e))?);
            field(scalar);
        }
        OID_RSA_ENCRYPTION => {
            let mut r = SliceReader::new(key).map_err(|e| malformed("RSAPrivateKey", e))?;
            let (n, e, d) = r
                .sequence(|r| {
                    let _version = u8::decode(r)?;
                    let n = UintRef::decode(r)?;
                    let e = UintRef::decode(r)?;
                    let d = UintRef::decode(r)?;
                    r.read_slice(r.remaining_len())?;
                    Ok::<_, der::Error>((n.as_bytes(), e.as_bytes(), d.as_bytes()))
                })
                .map_err(|e| malformed("RSAPrivateKey", e))?;
            field(b"rsa");
            field(n);
            field(e);
            field(d);
        }
        OID_ED25519 => {
            let seed = <&OctetStringRef>::from_der(key).map_err(|e| malformed("Ed25519 key", e))?;
            field(b"ed25519");
            field(seed.as_bytes());
        }
        other => {
            return Err(KeyError::Unsupported(format!(
                "private key algorithm {other} (EC, RSA and Ed25519 are)"
            )))
        }
    }
    Ok(out)
}

impl Identity {
    /// Load a `.pfx` (PKCS#12) and derive the master key from its private key.
    pub fn from_pfx(bytes: &[u8], password: &str) -> Result<Identity, KeyError> {
        let store = KeyStore::from_pkcs12(bytes, password, Pkcs12ImportPolicy::Relaxed)
            .map_err(classify)?;
        let Some((_, chain)) = store.private_key_chain() else {
            // No key with its certificate: say which half is missing.
            let archive =
                p12_keystore::Pkcs12Archive::from_pkcs12(bytes, password).map_err(classify)?;
            return Err(if archive.keys.is_empty() {
                KeyError::NoPrivateKey
            } else {
                KeyError::NoCertificate
            });
        };
        let cert = chain.certs().first().ok_or(KeyError::NoCertificate)?;
        let key_id = KeyId(Sha1::digest(cert.as_der()).into());
        let mut material = canonical_key_material(chain.key().as_der())?;
        let identity = Identity::from_key_material(key_id, cert.subject().to_string(), &material);
        material.zeroize();
        Ok(identity)
    }

    /// An identity from its parts: the certificate's key id and the private key material
    /// (`canonical_key_material`; the simulator's certificates are seeded bytes).
    pub fn from_key_material(key_id: KeyId, subject: String, key_material: &[u8]) -> Identity {
        Identity {
            key_id,
            subject,
            master: Secret32(blake3::derive_key(MASTER_KEY_CONTEXT, key_material)),
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
