//! An HTTP proxy between the agent and the storage account, as the provider's and agent's
//! registration settings describe one: address, port, and optionally a user and password. The
//! client tunnels through it with `CONNECT` (so the Shared Key signature and, for `https://`
//! accounts, TLS stay end to end) and authenticates with `Proxy-Authorization: Basic`. The
//! password is held zeroized-on-drop, never printed (`Debug` redacts it) and never persisted:
//! [`ProxyRecord`] — what registration saves — has no password field.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// A proxy to reach the account through.
#[derive(Clone)]
pub struct ProxySettings {
    pub address: String,
    pub port: u16,
    pub user: Option<String>,
    password: Option<Zeroizing<String>>,
}

/// What registration records about the proxy (no password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyRecord {
    pub address: String,
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl std::fmt::Debug for ProxySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxySettings")
            .field("address", &self.address)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "(hidden)"))
            .finish()
    }
}

/// A proxy setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("proxy {given:?}: {why}")]
pub struct ProxyError {
    pub given: String,
    pub why: String,
}

impl ProxySettings {
    /// `HOST:PORT` (or `http://HOST:PORT`), with an optional user and password.
    pub fn parse(
        address_port: &str,
        user: Option<String>,
        password: Option<String>,
    ) -> Result<ProxySettings, ProxyError> {
        let err = |why: &str| ProxyError {
            given: address_port.to_string(),
            why: why.to_string(),
        };
        let rest = address_port
            .strip_prefix("http://")
            .unwrap_or(address_port)
            .trim_end_matches('/');
        if rest.contains("://") || rest.contains('@') || rest.contains('/') {
            return Err(err(
                "expected HOST:PORT (the user and password are given apart)",
            ));
        }
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| err("expected HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| err("the port is not a number from 1 to 65535"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.len() > 253 || host.chars().any(|c| c.is_whitespace()) {
            return Err(err("the address is not a host name or IP address"));
        }
        if password.is_some() && user.is_none() {
            return Err(err("a proxy password needs a proxy user"));
        }
        Ok(ProxySettings {
            address: host.to_string(),
            port,
            user,
            password: password.map(Zeroizing::new),
        })
    }

    /// The settings registration recorded, with the password given now (if any).
    pub fn from_record(record: &ProxyRecord, password: Option<String>) -> ProxySettings {
        ProxySettings {
            address: record.address.clone(),
            port: record.port,
            user: record.user.clone(),
            password: password.map(Zeroizing::new),
        }
    }

    pub fn record(&self) -> ProxyRecord {
        ProxyRecord {
            address: self.address.clone(),
            port: self.port,
            user: self.user.clone(),
        }
    }

    /// For the HTTP client.
    #[cfg(feature = "client")]
    pub(crate) fn to_ureq(&self) -> Result<ureq::Proxy, ProxyError> {
        let host = if self.address.contains(':') {
            format!("[{}]", self.address) // an IPv6 address
        } else {
            self.address.clone()
        };
        let mut b = ureq::Proxy::builder(ureq::ProxyProtocol::Http)
            .host(&host)
            .port(self.port);
        if let Some(u) = &self.user {
            b = b.username(u);
        }
        if let Some(p) = &self.password {
            b = b.password(p);
        }
        b.build().map_err(|e| ProxyError {
            given: format!("{}:{}", self.address, self.port),
            why: e.to_string(),
        })
    }
}

impl std::fmt::Display for ProxySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.user {
            Some(u) => write!(f, "{}:{} (user {u})", self.address, self.port),
            None => write!(f, "{}:{}", self.address, self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_the_password_never_shows() {
        let p = ProxySettings::parse(
            "http://proxy.corp:3128",
            Some("svc".into()),
            Some("s3cret".into()),
        )
        .unwrap();
        assert_eq!((p.address.as_str(), p.port), ("proxy.corp", 3128));
        assert!(!format!("{p:?} {p}").contains("s3cret"));
        assert_eq!(
            serde_json::to_string(&p.record()).unwrap(),
            r#"{"address":"proxy.corp","port":3128,"user":"svc"}"#
        );
        assert_eq!(
            ProxySettings::parse("[::1]:8080", None, None)
                .unwrap()
                .address,
            "::1"
        );
        for bad in [
            "proxy",
            "proxy:0",
            "proxy:99999",
            "u:p@proxy:80",
            ":80",
            "socks5://x:1",
        ] {
            assert!(ProxySettings::parse(bad, None, None).is_err(), "{bad}");
        }
        assert!(ProxySettings::parse("p:1", None, Some("x".into())).is_err());
        assert!(p.to_ureq().is_ok());
    }
}
