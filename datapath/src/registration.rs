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
    #[error("vault credentials are for vault {found}, not {expected}")]
    WrongVault { expected: String, found: String },
    #[error("certificate generation failed: {0}")]
    Certificate(String),
    #[error("writing the .pfx failed: {0}")]
    Pfx(String),
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl VaultCredentials {
    /// Refuse expired credentials or another vault's.
    pub fn check(&self, vault: &str, now: u64) -> Result<(), RegistrationError> {
        if self.vault != vault {
            return Err(RegistrationError::WrongVault {
                expected: vault.into(),
                found: self.vault.clone(),
            });
        }
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
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("drplane data encryption ({vault})"),
    );
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
    fn registered_pfx_loads_and_credentials_expire_after_five_days() {
        let clock = ManualClock::new(1_700_000_000_000_000_000);
        let (creds, pfx) = register("vault-a", "host1", "pw", &clock).unwrap();
        let identity = Identity::from_pfx(&pfx, "pw").unwrap();
        assert_eq!(identity.key_id.to_string(), creds.certificate_thumbprint);
        assert!(matches!(
            Identity::from_pfx(&pfx, "nope"),
            Err(KeyError::WrongPassword)
        ));
        creds
            .check("vault-a", clock.now_nanos() + CREDENTIALS_VALID_NANOS - 1)
            .unwrap();
        let err = creds
            .check("vault-a", clock.now_nanos() + CREDENTIALS_VALID_NANOS)
            .unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        assert!(matches!(
            creds.check("vault-b", clock.now_nanos()),
            Err(RegistrationError::WrongVault { .. })
        ));
    }
}
