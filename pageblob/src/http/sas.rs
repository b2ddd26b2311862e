//! Shared access signatures (SAS) for the Blob service, signed with the account key: service
//! SAS (`sr=c` container, `sr=b` blob, `sr=bs` blob snapshot) and account SAS (`ss`, `srt`).
//! What each grants (permissions, start and expiry, IP range, protocol) is checked here;
//! the string each signs follows the REST reference for signed versions 2018-11-09 onwards
//! (with the encryption-scope line from 2020-12-06). Stored access policies (`si`) and user
//! delegation keys are refused with a message saying so. Used by the server (verify) and by
//! tests and tools that mint tokens (sign).

use std::net::IpAddr;

use super::shared_key;
use crate::error::{ErrorCode, StoreError};
use crate::timestamp::{parse_sas_time, snapshot_id};

/// Oldest signed version whose string to sign we know.
pub const OLDEST_SIGNED_VERSION: &str = "2018-11-09";
/// From this signed version on, the string to sign carries the encryption scope.
const ENCRYPTION_SCOPE_VERSION: &str = "2020-12-06";
/// The version our own tokens say they are signed with.
pub const SIGNED_VERSION: &str = "2021-08-06";

/// How far down the hierarchy an operation reaches (account SAS `srt` letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `s`: the account (list containers).
    Service,
    /// `c`: a container.
    Container,
    /// `o`: a blob.
    Object,
}

impl Level {
    fn letter(self) -> char {
        match self {
            Level::Service => 's',
            Level::Container => 'c',
            Level::Object => 'o',
        }
    }
}

/// What an operation needs from a SAS: its level and any one of these permission letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub level: Level,
    pub any_of: &'static str,
    /// Creates a container: a service SAS cannot grant that.
    pub creates_container: bool,
}

/// The permission a REST operation needs, from its method, level and `comp`.
pub fn need(method: &str, level: Level, restype: Option<&str>, comp: Option<&str>) -> Need {
    let any_of = match (method, level, comp) {
        ("GET", Level::Service | Level::Container, Some("list")) => "l",
        ("GET" | "HEAD", _, _) => "r",
        ("DELETE", _, _) => "d",
        // Put Blob, Snapshot Blob and Incremental Copy make a blob (or snapshot).
        ("PUT", Level::Object, None | Some("snapshot") | Some("incrementalcopy")) => "cw",
        ("PUT", Level::Container, None) => "cw",
        _ => "w",
    };
    Need {
        level,
        any_of,
        creates_container: method == "PUT"
            && level == Level::Container
            && restype == Some("container")
            && comp.is_none(),
    }
}

/// The resource a request addresses (names decoded).
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub account: &'a str,
    pub container: Option<&'a str>,
    pub blob: Option<&'a str>,
}

/// True when the query carries a signature (`sig`): the request is authorized by SAS.
pub fn is_sas(query: &[(String, String)]) -> bool {
    query.iter().any(|(n, _)| n == "sig")
}

fn auth_failed(message: impl Into<String>) -> StoreError {
    StoreError::service(ErrorCode::AuthenticationFailed, message)
}

fn forbidden(code: ErrorCode, message: impl Into<String>) -> StoreError {
    StoreError::service(code, message)
}

/// The signed fields of a token, by query name.
struct Fields<'a>(&'a [(String, String)]);

impl Fields<'_> {
    fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }
    fn required(&self, name: &str, what: &str) -> Result<&str, StoreError> {
        match self.get(name) {
            "" => Err(auth_failed(format!(
                "the shared access signature has no {name} ({what})"
            ))),
            v => Ok(v),
        }
    }
}

/// The string an account SAS signs.
fn account_string_to_sign(account: &str, f: &Fields<'_>) -> String {
    let mut lines = vec![
        account,
        f.get("sp"),
        f.get("ss"),
        f.get("srt"),
        f.get("st"),
        f.get("se"),
        f.get("sip"),
        f.get("spr"),
        f.get("sv"),
    ];
    if f.get("sv") >= ENCRYPTION_SCOPE_VERSION {
        lines.push(f.get("ses"));
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

/// The string a service SAS signs, for the canonical resource `/blob/ACCOUNT/CONTAINER[/BLOB]`.
fn service_string_to_sign(canonical: &str, f: &Fields<'_>) -> String {
    let mut lines = vec![
        f.get("sp"),
        f.get("st"),
        f.get("se"),
        canonical,
        f.get("si"),
        f.get("sip"),
        f.get("spr"),
        f.get("sv"),
        f.get("sr"),
        f.get("snapshot"),
    ];
    if f.get("sv") >= ENCRYPTION_SCOPE_VERSION {
        lines.push(f.get("ses"));
    }
    lines.extend(["rscc", "rscd", "rsce", "rscl", "rsct"].map(|n| f.get(n)));
    lines.join("\n")
}

/// Check a SAS-authorized request: the signature (with `key`), the time window, protocol,
/// client address, scope and permission. `peer` is the client's address (`None` when not
/// known: a token limited to addresses is then refused).
pub fn check(
    key: &[u8],
    query: &[(String, String)],
    target: Target<'_>,
    need: Need,
    peer: Option<IpAddr>,
    now: u64,
) -> Result<(), StoreError> {
    let f = Fields(query);
    let version = f.required("sv", "signed version")?;
    if version < OLDEST_SIGNED_VERSION {
        return Err(auth_failed(format!(
            "signed version {version} is older than {OLDEST_SIGNED_VERSION}, the oldest served"
        )));
    }
    if !f.get("si").is_empty() {
        return Err(auth_failed(
            "stored access policies (si) are not supported by this server: sign the \
             permissions and expiry into the token",
        ));
    }
    if !f.get("skoid").is_empty() {
        return Err(auth_failed(
            "user delegation SAS is not supported by this server: sign with the account key",
        ));
    }
    let account_sas = !f.get("ss").is_empty() || !f.get("srt").is_empty();
    let string_to_sign = if account_sas {
        account_string_to_sign(target.account, &f)
    } else {
        let canonical = match (
            f.required("sr", "signed resource")?,
            target.container,
            target.blob,
        ) {
            ("c", Some(c), _) => format!("/blob/{}/{c}", target.account),
            ("b" | "bs", Some(c), Some(b)) => format!("/blob/{}/{c}/{b}", target.account),
            ("b" | "bs" | "c", _, _) => {
                return Err(forbidden(
                    ErrorCode::AuthorizationResourceTypeMismatch,
                    format!(
                        "a service SAS for sr={} does not reach this resource",
                        f.get("sr")
                    ),
                ))
            }
            (other, _, _) => {
                return Err(auth_failed(format!(
                    "signed resource sr={other} is not served (c, b or bs)"
                )))
            }
        };
        service_string_to_sign(&canonical, &f)
    };
    if !shared_key::verify(key, &string_to_sign, f.get("sig")) {
        return Err(auth_failed(
            "the shared access signature does not match (signed with another key, or a \
             signed field was changed)",
        ));
    }
    check_window(&f, now)?;
    check_protocol(&f)?;
    check_address(&f, peer)?;
    if account_sas {
        if !f.get("ss").contains('b') {
            return Err(forbidden(
                ErrorCode::AuthorizationServiceMismatch,
                format!(
                    "the account SAS is for services {:?}, not blob (b)",
                    f.get("ss")
                ),
            ));
        }
        if !f.get("srt").contains(need.level.letter()) {
            return Err(forbidden(
                ErrorCode::AuthorizationResourceTypeMismatch,
                format!(
                    "the account SAS is for resource types {:?}; this operation needs {}",
                    f.get("srt"),
                    need.level.letter()
                ),
            ));
        }
    } else if need.level == Level::Service || need.creates_container {
        return Err(forbidden(
            ErrorCode::AuthorizationResourceTypeMismatch,
            "a service SAS cannot list or create containers (use an account SAS)",
        ));
    }
    let permissions = f.get("sp");
    if !need.any_of.chars().any(|p| permissions.contains(p)) {
        return Err(forbidden(
            ErrorCode::AuthorizationPermissionMismatch,
            format!(
                "the SAS grants {permissions:?}; this operation needs one of {:?}",
                need.any_of
            ),
        ));
    }
    Ok(())
}

fn check_window(f: &Fields<'_>, now: u64) -> Result<(), StoreError> {
    let time = |name: &str| -> Result<Option<u64>, StoreError> {
        match f.get(name) {
            "" => Ok(None),
            v => parse_sas_time(v)
                .map(Some)
                .ok_or_else(|| auth_failed(format!("{name}={v:?} is not an ISO 8601 UTC time"))),
        }
    };
    let expiry =
        time("se")?.ok_or_else(|| auth_failed("the shared access signature has no se (expiry)"))?;
    let start = time("st")?;
    if start.is_some_and(|s| now < s) || now >= expiry {
        return Err(auth_failed(format!(
            "the shared access signature is valid from {} to {}; the server's time is {}",
            f.get("st"),
            f.get("se"),
            snapshot_id(now)
        )));
    }
    Ok(())
}

fn check_protocol(f: &Fields<'_>) -> Result<(), StoreError> {
    match f.get("spr") {
        "" | "https,http" | "http,https" => Ok(()),
        "https" => Err(forbidden(
            ErrorCode::AuthorizationProtocolMismatch,
            "the SAS allows HTTPS only; this server speaks HTTP",
        )),
        other => Err(auth_failed(format!(
            "spr={other:?} is not https or https,http"
        ))),
    }
}

fn check_address(f: &Fields<'_>, peer: Option<IpAddr>) -> Result<(), StoreError> {
    let sip = f.get("sip");
    if sip.is_empty() {
        return Ok(());
    }
    let (low, high) = sip.split_once('-').unwrap_or((sip, sip));
    let parse = |s: &str| {
        s.trim()
            .parse::<IpAddr>()
            .map_err(|_| auth_failed(format!("sip={sip:?} is not an address or a range")))
    };
    let (low, high) = (parse(low)?, parse(high)?);
    let inside = peer.is_some_and(|p| {
        let p = match p {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(p, IpAddr::V4),
            v4 => v4,
        };
        low <= p && p <= high
    });
    if !inside {
        return Err(forbidden(
            ErrorCode::AuthorizationSourceIPMismatch,
            format!(
                "the SAS is good from {sip}; the request came from {}",
                peer.map_or("an unknown address".into(), |p| p.to_string())
            ),
        ));
    }
    Ok(())
}

/// What a minted token grants.
#[derive(Debug, Clone, Default)]
pub struct Grant<'a> {
    pub permissions: &'a str,
    /// ISO 8601 UTC times, as they go into the token (`2030-01-01T00:00:00Z`).
    pub start: Option<&'a str>,
    pub expiry: &'a str,
    pub ip: Option<&'a str>,
    pub protocol: Option<&'a str>,
}

fn token(pairs: Vec<(&str, String)>) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    pairs
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(n, v)| format!("{n}={}", utf8_percent_encode(&v, NON_ALPHANUMERIC)))
        .collect::<Vec<_>>()
        .join("&")
}

fn base_pairs<'a>(g: &Grant<'a>) -> Vec<(&'static str, String)> {
    vec![
        ("sv", SIGNED_VERSION.to_string()),
        ("sp", g.permissions.to_string()),
        ("st", g.start.unwrap_or_default().to_string()),
        ("se", g.expiry.to_string()),
        ("sip", g.ip.unwrap_or_default().to_string()),
        ("spr", g.protocol.unwrap_or_default().to_string()),
    ]
}

fn signed(key: &[u8], mut pairs: Vec<(&'static str, String)>, string_to_sign: &str) -> String {
    pairs.push(("sig", shared_key::sign(key, string_to_sign)));
    token(pairs)
}

/// A service SAS query string for a container (`blob` `None`) or a blob.
pub fn service_sas(
    account: &str,
    key: &[u8],
    container: &str,
    blob: Option<&str>,
    g: &Grant<'_>,
) -> String {
    let mut pairs = base_pairs(g);
    pairs.push(("sr", if blob.is_some() { "b" } else { "c" }.to_string()));
    let owned: Vec<(String, String)> = pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect();
    let canonical = match blob {
        Some(b) => format!("/blob/{account}/{container}/{b}"),
        None => format!("/blob/{account}/{container}"),
    };
    let sts = service_string_to_sign(&canonical, &Fields(&owned));
    signed(key, pairs, &sts)
}

/// An account SAS query string for the blob service and resource types `srt` (`s`, `c`, `o`).
pub fn account_sas(account: &str, key: &[u8], resource_types: &str, g: &Grant<'_>) -> String {
    let mut pairs = base_pairs(g);
    pairs.push(("ss", "b".to_string()));
    pairs.push(("srt", resource_types.to_string()));
    let owned: Vec<(String, String)> = pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect();
    let sts = account_string_to_sign(account, &Fields(&owned));
    signed(key, pairs, &sts)
}

#[cfg(all(test, feature = "server"))]
mod tests {
    use super::*;

    /// A minted token's query, decoded as the server decodes it.
    fn parse_query(token: &str) -> Vec<(String, String)> {
        token
            .split('&')
            .map(|kv| {
                let (n, v) = kv.split_once('=').unwrap();
                let v = percent_encoding::percent_decode_str(v)
                    .decode_utf8()
                    .unwrap();
                (n.to_string(), v.into_owned())
            })
            .collect()
    }

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_900_000_000 * 1_000_000_000; // 2030-03-17

    fn target<'a>(container: Option<&'a str>, blob: Option<&'a str>) -> Target<'a> {
        Target {
            account: "acct",
            container,
            blob,
        }
    }

    fn grant(permissions: &str) -> Grant<'_> {
        Grant {
            permissions,
            start: Some("2030-01-01T00:00:00Z"),
            expiry: "2030-12-31T00:00:00Z",
            ..Grant::default()
        }
    }

    fn run(
        token: &str,
        t: Target<'_>,
        method: &str,
        level: Level,
        comp: Option<&str>,
    ) -> Result<(), StoreError> {
        let q = parse_query(token);
        let restype = (level == Level::Container).then_some("container");
        check(
            KEY,
            &q,
            t,
            need(method, level, restype, comp),
            Some("127.0.0.1".parse().unwrap()),
            NOW,
        )
    }

    fn code(r: Result<(), StoreError>) -> ErrorCode {
        r.unwrap_err().code().unwrap()
    }

    #[test]
    fn a_blob_sas_reads_its_blob_and_nothing_else() {
        let token = service_sas("acct", KEY, "c", Some("disk"), &grant("r"));
        let disk = target(Some("c"), Some("disk"));
        assert!(run(&token, disk, "GET", Level::Object, None).is_ok());
        assert_eq!(
            code(run(&token, disk, "PUT", Level::Object, Some("page"))),
            ErrorCode::AuthorizationPermissionMismatch
        );
        assert_eq!(
            code(run(
                &token,
                target(Some("c"), Some("other")),
                "GET",
                Level::Object,
                None
            )),
            ErrorCode::AuthenticationFailed
        );
        assert_eq!(
            code(run(
                &token,
                target(Some("c"), None),
                "GET",
                Level::Container,
                Some("list")
            )),
            ErrorCode::AuthorizationResourceTypeMismatch
        );
        // A changed permission breaks the signature.
        let forged = token.replace("sp=r", "sp=rw");
        assert_eq!(
            code(run(&forged, disk, "PUT", Level::Object, Some("page"))),
            ErrorCode::AuthenticationFailed
        );
    }

    #[test]
    fn a_container_sas_reaches_its_blobs_but_cannot_make_containers() {
        let token = service_sas("acct", KEY, "c", None, &grant("rwl"));
        assert!(run(
            &token,
            target(Some("c"), Some("x")),
            "PUT",
            Level::Object,
            Some("page")
        )
        .is_ok());
        assert!(run(
            &token,
            target(Some("c"), None),
            "GET",
            Level::Container,
            Some("list")
        )
        .is_ok());
        assert_eq!(
            code(run(
                &token,
                target(Some("c"), None),
                "PUT",
                Level::Container,
                None
            )),
            ErrorCode::AuthorizationResourceTypeMismatch
        );
        assert_eq!(
            code(run(
                &token,
                target(Some("d"), Some("x")),
                "GET",
                Level::Object,
                None
            )),
            ErrorCode::AuthenticationFailed
        );
    }

    #[test]
    fn an_account_sas_is_bounded_by_resource_types_time_address_and_protocol() {
        let token = account_sas("acct", KEY, "co", &grant("rwc"));
        assert!(run(
            &token,
            target(Some("c"), None),
            "PUT",
            Level::Container,
            None
        )
        .is_ok());
        assert_eq!(
            code(run(
                &token,
                target(None, None),
                "GET",
                Level::Service,
                Some("list")
            )),
            ErrorCode::AuthorizationResourceTypeMismatch
        );
        let late = Grant {
            expiry: "2030-01-02",
            ..grant("r")
        };
        let expired = account_sas("acct", KEY, "o", &late);
        assert_eq!(
            code(run(
                &expired,
                target(Some("c"), Some("b")),
                "GET",
                Level::Object,
                None
            )),
            ErrorCode::AuthenticationFailed
        );
        let elsewhere = Grant {
            ip: Some("10.0.0.1-10.0.0.9"),
            ..grant("r")
        };
        let token = account_sas("acct", KEY, "o", &elsewhere);
        assert_eq!(
            code(run(
                &token,
                target(Some("c"), Some("b")),
                "GET",
                Level::Object,
                None
            )),
            ErrorCode::AuthorizationSourceIPMismatch
        );
        let https = Grant {
            protocol: Some("https"),
            ..grant("r")
        };
        let token = account_sas("acct", KEY, "o", &https);
        assert_eq!(
            code(run(
                &token,
                target(Some("c"), Some("b")),
                "GET",
                Level::Object,
                None
            )),
            ErrorCode::AuthorizationProtocolMismatch
        );
    }

    #[test]
    fn sas_times_parse_in_every_form_azure_accepts() {
        let day = parse_sas_time("2030-01-02").unwrap();
        assert_eq!(parse_sas_time("2030-01-02T00:00Z"), Some(day));
        assert_eq!(
            parse_sas_time("2030-01-02T00:00:01Z"),
            Some(day + 1_000_000_000)
        );
        assert_eq!(
            parse_sas_time("2030-01-02T00:00:00.5Z"),
            Some(day + 500_000_000)
        );
        for bad in [
            "2030-02-30",
            "2030-01-02T25:00Z",
            "2030-01-02T00:00",
            "tomorrow",
            "",
        ] {
            assert_eq!(parse_sas_time(bad), None, "{bad}");
        }
    }
}
