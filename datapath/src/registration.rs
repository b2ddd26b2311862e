//! Registration: vault credentials (valid for 5 days, as ASR's registration key) and the
//! data-encryption certificate, a self-signed certificate with its private key saved as a
//! password-protected `.pfx` (PBES2/AES-256, HMAC-SHA-256) that [`Identity::from_pfx`] and
//! `openssl pkcs12` read.

use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
use serde::{Deserialize, Serialize};

use crate::keys::{Identity, KeyError};
use pageblob::clock::Clock;
use pageblob::timestamp::http_date;

/// Format version of the credentials file.
pub const CREDENTIALS_FORMAT_VERSION: u32 = 1;
/// ASR registration keys are valid for five days from generation.
pub const CREDENTIALS_VALID_NANOS: u64 = 5 * 24 * 3600 * 1_000_000_000;

/// What registration gives the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultCredentials {
    pub format_version: u32,
    pub vault: String,
    pub server_name: String,
    /// Nanoseconds since the epoch.
    pub issued_at: u64,
    pub expires_at: u64,
    /// Thumbprint of the data-encryption certificate.
    pub certificate_thumbprint: String,
    /// The proxy the server reaches the service through, when registration was given one
    /// (its password is never recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<pageblob::http::proxy::ProxyRecord>,
}

/// Why registration or a credentials check failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("vault credentials for {vault} expired at {expired} (valid 5 days from issue): register again")]
    Expired { vault: String, expired: String },
    #[error("these vault credentials are for certificate {credentials}, the .pfx holds {pfx}: use the credentials registered with this .pfx")]
    OtherCertificate { credentials: String, pfx: String },
    #[error("these vault credentials are for vault {credentials}, the .pfx's certificate is vault {pfx}'s")]
    OtherVault { credentials: String, pfx: String },
    #[error("certificate generation failed: {0}")]
    Certificate(String),
    #[error("writing the .pfx failed: {0}")]
    Pfx(String),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The certificate subject's common name as [`register`] writes it.
fn subject_for(vault: &str) -> String {
    format!("drplane data encryption ({vault})")
}

impl VaultCredentials {
    /// This server's registration with its vault, shown by its credentials, is the one
    /// `identity` (the .pfx) was made in: the thumbprints agree, and the certificate names the
    /// same vault. Expiry is not checked: as in ASR, the five days bound registering with the
    /// credentials, not replicating once registered.
    pub fn check_registered_with(&self, identity: &Identity) -> Result<(), RegistrationError> {
        if self.certificate_thumbprint != identity.key_id.to_string() {
            return Err(RegistrationError::OtherCertificate {
                credentials: self.certificate_thumbprint.clone(),
                pfx: identity.key_id.to_string(),
            });
        }
        // A certificate made elsewhere (no vault in its name) is bound by thumbprint alone.
        let named = identity
            .subject
            .split_once("drplane data encryption (")
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(vault, _)| vault.to_string());
        if let Some(vault) = named.filter(|v| *v != self.vault) {
            return Err(RegistrationError::OtherVault {
                credentials: self.vault.clone(),
                pfx: vault,
            });
        }
        Ok(())
    }

    /// Whether the credentials may still register a server at `now` (five days from issue).
    pub fn check_can_register(&self, now: u64) -> Result<(), RegistrationError> {
        if now >= self.expires_at {
            return Err(RegistrationError::Expired {
                vault: self.vault.clone(),
                expired: http_date(self.expires_at),
            });
        }
        Ok(())
    }
}

/// Register `server_name` with `vault`: make the certificate and `.pfx` (protected by
/// `password`) and the credentials that expire five days from now.
pub fn register(
    vault: &str,
    server_name: &str,
    password: &str,
    clock: &dyn Clock,
) -> Result<(VaultCredentials, Vec<u8>), RegistrationError> {
    let cert_err = |e: rcgen::Error| RegistrationError::Certificate(e.to_string());
    let key_pair = rcgen::KeyPair::generate().map_err(cert_err)?;
    let mut params =
        rcgen::CertificateParams::new(vec![server_name.to_string()]).map_err(cert_err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, subject_for(vault));
    let cert = params.self_signed(&key_pair).map_err(cert_err)?;
    let pfx_err = |e: p12_keystore::error::Error| RegistrationError::Pfx(e.to_string());
    let key = PrivateKey::from_der(&key_pair.serialize_der()).map_err(pfx_err)?;
    let certificate = Certificate::from_der(cert.der()).map_err(pfx_err)?;
    let mut store = KeyStore::new();
    let chain = PrivateKeyChain::new(vec![1u8; 20], key, [certificate]);
    store.add_entry(
        "drplane-data-encryption",
        KeyStoreEntry::PrivateKeyChain(chain),
    );
    let pfx = store.writer(password).write().map_err(pfx_err)?;
    // Read it back: what we hand out must load.
    let identity = Identity::from_pfx(&pfx, password)?;
    let now = clock.now_nanos();
    let credentials = VaultCredentials {
        format_version: CREDENTIALS_FORMAT_VERSION,
        vault: vault.into(),
        server_name: server_name.into(),
        issued_at: now,
        expires_at: now.saturating_add(CREDENTIALS_VALID_NANOS),
        certificate_thumbprint: identity.key_id.to_string(),
        proxy: None,
    };
    Ok((credentials, pfx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pageblob::clock::ManualClock;

    #[test]
    fn registered_pfx_loads_and_credentials_bind_it_without_expiring() {
        let clock = ManualClock::new(1_700_000_000_000_000_000);
        let (creds, pfx) = register("vault-a", "host1", "pw", &clock).unwrap();
        let identity = Identity::from_pfx(&pfx, "pw").unwrap();
        assert_eq!(identity.key_id.to_string(), creds.certificate_thumbprint);
        assert!(matches!(
            Identity::from_pfx(&pfx, "nope"),
            Err(KeyError::WrongPassword)
        ));
        creds
            .check_can_register(clock.now_nanos() + CREDENTIALS_VALID_NANOS - 1)
            .unwrap();
        let err = creds
            .check_can_register(clock.now_nanos() + CREDENTIALS_VALID_NANOS)
            .unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        // Registered: day six and day six hundred replicate alike.
        creds.check_registered_with(&identity).unwrap();
        let mut other_vault = creds.clone();
        other_vault.vault = "vault-b".into();
        assert!(matches!(
            other_vault.check_registered_with(&identity),
            Err(RegistrationError::OtherVault { .. })
        ));
        let (_, other_pfx) = register("vault-a", "host2", "pw", &clock).unwrap();
        let other = Identity::from_pfx(&other_pfx, "pw").unwrap();
        assert!(matches!(
            creds.check_registered_with(&other),
            Err(RegistrationError::OtherCertificate { .. })
        ));
    }
}
