//! A [`PageBlobStore`] over HTTP: talks to `drplane blob serve`, Azurite or a real Azure
//! account with Shared Key signing, retries 500/503 answers with exponential backoff, and
//! pipelines batches of Put Page calls on plain `http://` endpoints (`http::pipelined`).

use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use quick_xml::events::Event;

use super::exchange::{Answer, Signed};
use super::pipelined::Pipeline;
use super::shared_key;
use crate::clock::{Clock, SystemClock};
use crate::error::{ErrorCode, StoreError, StoreResult};
use crate::extent_map::PageRange;
use crate::timestamp::{http_date, parse_http_date};
use crate::types::*;
use crate::PageBlobStore;

/// API version we send.
pub const API_VERSION: &str = "2021-08-06";
/// Attempts per request when the service answers 500 or 503 (ServerBusy, OperationTimedOut).
pub const MAX_ATTEMPTS: u32 = 5;
/// First retry delay; doubled per attempt.
pub const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
/// How long a request keeps retrying connection failures (a `blob serve` restart takes well
/// under a second; a reboot of the host is not waited for).
pub const CONNECTION_RETRY_BUDGET: Duration = Duration::from_secs(20);
/// The same before the endpoint has answered anything: a mistyped host or port fails in
/// seconds, while a server still starting up is given a moment.
pub const FIRST_CONTACT_RETRY_BUDGET: Duration = Duration::from_secs(2);
/// Longest wait between two connection attempts.
const MAX_CONNECTION_RETRY_DELAY: Duration = Duration::from_secs(2);
/// Time to open a connection (the host name's lookup included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A request fails when a read or write on its connection makes no progress for this long (a
/// cap on the whole exchange would fail big uploads on slow links).
const STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a host name's addresses are reused.
const RESOLVE_TTL: Duration = Duration::from_secs(30);
/// Largest answer body read (a Get Blob of up to 256 MiB, or a long page list).
const MAX_RESPONSE_BYTES: u64 = 257 << 20;

/// Path characters left as they are (Azure's blob names may contain `/`).
const PATH_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');
/// Query values: everything but unreserved characters is escaped.
const QUERY_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// An HTTP page-blob client for one account.
pub struct HttpStore {
    /// `http://host:port/account` (path style) — the account is the first path segment.
    endpoint: String,
    account: String,
    key: Vec<u8>,
    agent: ureq::Agent,
    /// Dates the requests (the server refuses one more than 15 minutes off its time).
    clock: std::sync::Arc<dyn Clock>,
    /// The endpoint has answered a request (so a connection failure is a restart to wait
    /// out, not a wrong address).
    reached: std::sync::atomic::AtomicBool,
    /// Batches of Put Page calls pipelined on one connection (plain `http://`, no proxy).
    pipeline: Option<Pipeline>,
}

impl std::fmt::Debug for HttpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpStore")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// ureq looks the host up before every request, even one sent on a pooled connection, and its
/// resolver spawns a thread per lookup when a timeout covers it: at thousands of Put Page calls
/// per second that was a thread and a name lookup per call. This keeps each host's addresses
/// for `ttl` and otherwise asks `inner` (ureq's own resolver).
struct CachingResolver<R = ureq::unversioned::resolver::DefaultResolver> {
    inner: R,
    ttl: Duration,
    /// (scheme://authority, looked up at, addresses): one entry per host the agent talks to.
    cache: std::sync::Mutex<Vec<(String, std::time::Instant, ResolvedAddrs)>>,
}

type ResolvedAddrs = ureq::unversioned::resolver::ResolvedSocketAddrs;

impl<R> CachingResolver<R> {
    fn new(inner: R, ttl: Duration) -> CachingResolver<R> {
        CachingResolver {
            inner,
            ttl,
            cache: Default::default(),
        }
    }
}

impl<R> std::fmt::Debug for CachingResolver<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingResolver")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<R: ureq::unversioned::resolver::Resolver> ureq::unversioned::resolver::Resolver
    for CachingResolver<R>
{
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ResolvedAddrs, ureq::Error> {
        let key = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or_default(),
            uri.authority().map_or("", |a| a.as_str())
        );
        let now = std::time::Instant::now();
        let fresh = |at: &std::time::Instant| now.duration_since(*at) < self.ttl;
        {
            let cache = self.cache.lock().expect("resolver cache");
            if let Some((_, _, addrs)) = cache.iter().find(|(k, at, _)| *k == key && fresh(at)) {
                return Ok(addrs.clone());
            }
        }
        let addrs = self.inner.resolve(uri, config, timeout)?;
        let mut cache = self.cache.lock().expect("resolver cache");
        cache.retain(|(k, at, _)| *k != key && fresh(at));
        cache.push((key, now, addrs.clone()));
        Ok(addrs)
    }
}

impl Answer {
    fn properties(&self, snapshot: Option<&str>) -> Properties {
        let num = |n| self.header(n).and_then(|v| v.parse::<u64>().ok());
        Properties {
            size: num("x-ms-blob-content-length")
                .or_else(|| num("content-length"))
                .unwrap_or(0),
            etag: self.header("etag").unwrap_or_default().to_string(),
            last_modified: self
                .header("last-modified")
                .and_then(parse_http_date)
                .unwrap_or(0),
            sequence_number: num("x-ms-blob-sequence-number").unwrap_or(0),
            snapshot: snapshot.map(str::to_string),
            lease_state: LeaseStateName::parse(self.header("x-ms-lease-state").unwrap_or_default()),
            copy: self.header("x-ms-copy-id").map(|id| CopyInfo {
                id: id.to_string(),
                source: self
                    .header("x-ms-copy-source")
                    .unwrap_or_default()
                    .to_string(),
                source_snapshot: self
                    .header("x-ms-copy-source-snapshot")
                    .unwrap_or_default()
                    .to_string(),
                status: self
                    .header("x-ms-copy-status")
                    .unwrap_or_default()
                    .to_string(),
                destination_snapshot: self
                    .header("x-ms-copy-destination-snapshot")
                    .map(str::to_string),
                completed_at: self
                    .header("x-ms-copy-completion-time")
                    .and_then(parse_http_date),
            }),
            lease_duration: match self.header("x-ms-lease-duration") {
                Some("infinite") => Some(LeaseDuration::Infinite),
                Some("fixed") => Some(LeaseDuration::Fixed),
                _ => None,
            },
            metadata: self
                .headers
                .iter()
                .filter_map(|(n, v)| Some((n.strip_prefix("x-ms-meta-")?.to_string(), v.clone())))
                .collect(),
            content: ContentHeaders {
                content_type: self.header("content-type").map(str::to_string),
                content_encoding: self.header("content-encoding").map(str::to_string),
                content_language: self.header("content-language").map(str::to_string),
                content_disposition: self.header("content-disposition").map(str::to_string),
                cache_control: self.header("cache-control").map(str::to_string),
                content_md5: self.header("content-md5").map(str::to_string),
            },
        }
    }
}

/// Query or header name-value pairs of a request.
type Pairs = Vec<(&'static str, String)>;

/// The query (`snapshot`) and `x-ms-range` header of a Get Blob of bytes `[offset, end)`.
fn range_request(snapshot: Option<&str>, offset: u64, end: u64) -> (Pairs, Pairs) {
    let query = snapshot
        .map(|s| ("snapshot", s.to_string()))
        .into_iter()
        .collect();
    let range = vec![("x-ms-range", format!("bytes={offset}-{}", end - 1))];
    (query, range)
}

/// An answer's `Content-Range: bytes first-last/size`.
fn content_range(a: &Answer) -> Option<(u64, u64, u64)> {
    let (range, size) = a
        .header("content-range")?
        .trim()
        .strip_prefix("bytes ")?
        .split_once('/')?;
    let (first, last) = range.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?, size.parse().ok()?))
}

/// Whether `a` is exactly bytes `[offset, end)`: a 206 whose Content-Range and body are that
/// range (a server that ignored the range, or answered another, is not taken at its word).
fn answers_range(a: &Answer, offset: u64, end: u64) -> bool {
    a.status == 206
        && matches!(content_range(a), Some((first, last, _)) if first == offset && last.checked_add(1) == Some(end))
        && a.body.len() as u64 == end - offset
}

/// Every page of a List Blobs listing of `container`: `fetch` answers the page after a marker
/// (`None`: the first) with its entries and the `NextMarker` (empty: the last page). Azure
/// answers at most 5,000 entries and a marker to go on from; a marker given back twice, page
/// after page of nothing, more than [`MAX_LISTED_BLOBS`] entries or more than
/// [`MAX_LIST_PAGES`] pages end in an error rather than a listing that never ends or fills the
/// memory (an endpoint handing out a new marker with every entry).
pub(crate) fn all_blob_pages(
    container: &str,
    fetch: impl FnMut(Option<&str>) -> StoreResult<(Vec<BlobListing>, String)>,
) -> StoreResult<Vec<BlobListing>> {
    all_blob_pages_within(container, MAX_LISTED_BLOBS, fetch)
}

/// [`all_blob_pages`] refusing a listing past `max_entries` entries.
fn all_blob_pages_within(
    container: &str,
    max_entries: usize,
    mut fetch: impl FnMut(Option<&str>) -> StoreResult<(Vec<BlobListing>, String)>,
) -> StoreResult<Vec<BlobListing>> {
    let mut out = Vec::new();
    let mut marker: Option<String> = None;
    let mut seen_markers = std::collections::BTreeSet::new();
    let mut empty_in_a_row = 0;
    loop {
        let (page, next) = fetch(marker.as_deref())?;
        empty_in_a_row = if page.is_empty() {
            empty_in_a_row + 1
        } else {
            0
        };
        out.extend(page);
        if next.is_empty() {
            return Ok(out);
        }
        let endless = if !seen_markers.insert(next.clone()) {
            Some(format!("marker {next} came back"))
        } else if empty_in_a_row > MAX_EMPTY_LIST_PAGES {
            Some(format!("{empty_in_a_row} empty pages in a row"))
        } else if out.len() > max_entries {
            Some(format!("over {max_entries} entries"))
        } else if seen_markers.len() >= MAX_LIST_PAGES {
            Some(format!("over {MAX_LIST_PAGES} pages"))
        } else {
            None
        };
        if let Some(why) = endless {
            return Err(transport(
                "List Blobs",
                format!("the listing of {container} does not end ({why}; list with a prefix)"),
            ));
        }
        marker = Some(next);
    }
}

/// One List Blobs answer: its entries (name, snapshot, size, ETag, last modified, sequence
/// number, lease state) and its `NextMarker` (empty on the last page).
pub(crate) fn parse_blob_list(body: &[u8]) -> StoreResult<(Vec<BlobListing>, String)> {
    let mut out: Vec<BlobListing> = Vec::new();
    let mut next = String::new();
    xml_walk(body, |path, text| {
        let Some(last) = path.last().map(String::as_str) else {
            return;
        };
        if path.len() == 2 && last == "NextMarker" {
            next.push_str(text);
            return;
        }
        let in_blob = path.len() >= 2 && path[path.len() - 2] == "Blob";
        let in_props = path.len() >= 2 && path[path.len() - 2] == "Properties";
        if last == "Blob" && text.is_empty() {
            out.push(BlobListing {
                name: String::new(),
                properties: Properties::default(),
            });
            return;
        }
        let Some(b) = out.last_mut() else { return };
        match (in_blob, in_props, last) {
            (true, _, "Name") => b.name.push_str(text),
            (true, _, "Snapshot") if !text.is_empty() => {
                b.properties.snapshot = Some(text.to_string())
            }
            (_, true, "Content-Length") => b.properties.size = text.parse().unwrap_or(0),
            (_, true, "Etag") => b.properties.etag.push_str(text),
            (_, true, "Last-Modified") => {
                b.properties.last_modified = parse_http_date(text).unwrap_or(0)
            }
            (_, true, "x-ms-blob-sequence-number") => {
                b.properties.sequence_number = text.parse().unwrap_or(0)
            }
            (_, true, "LeaseState") => b.properties.lease_state = LeaseStateName::parse(text),
            _ => {}
        }
    })?;
    Ok((out, next))
}

/// Empty pages of a List Blobs answer taken in a row before the listing is refused as endless.
const MAX_EMPTY_LIST_PAGES: usize = 64;
/// Entries of one listing before it is refused: a replica lists its own blobs, snapshots and
/// holds by prefix (a few hundred); ten million entries would hold gigabytes.
const MAX_LISTED_BLOBS: usize = 10_000_000;
/// Pages of one listing before it is refused (Azure fills its pages: 5,000 entries each).
const MAX_LIST_PAGES: usize = 200_000;

fn transport(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        path: what.to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Whether sending a request twice leaves the same result as sending it once (so a request
/// whose connection broke may be sent again).
fn is_idempotent(method: &str, query: &[(&str, String)], headers: &[(&str, String)]) -> bool {
    let comp = query
        .iter()
        .find(|(n, _)| *n == "comp")
        .map(|(_, v)| v.as_str());
    match method {
        "GET" | "HEAD" => true,
        // Put Page (update or clear) and Create Blob; not Create Container (`restype`), whose
        // repeat answers 409 ContainerAlreadyExists.
        "PUT" if matches!(comp, Some("page") | None) => !query.iter().any(|(n, _)| *n == "restype"),
        // Resize and set the sequence number, but not increment it.
        "PUT" if comp == Some("properties") => !headers
            .iter()
            .any(|(n, v)| *n == "x-ms-sequence-number-action" && v == "increment"),
        // Snapshot, lease, copy, delete, create container: a second one differs.
        _ => false,
    }
}

/// How far a failed request got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    /// The connection was never made: nothing reached the server.
    NotSent,
    /// The connection broke after the request may have been applied.
    MaybeApplied,
}

/// A request that got no answer.
struct Failure {
    error: StoreError,
    /// None: not a connection failure (retrying cannot help).
    delivery: Option<Delivery>,
}

impl Failure {
    fn of(url: &str, e: ureq::Error) -> Failure {
        use std::io::ErrorKind as Kind;
        let delivery = match &e {
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => Some(Delivery::NotSent),
            ureq::Error::Io(io) => match io.kind() {
                Kind::ConnectionRefused | Kind::AddrNotAvailable | Kind::NotConnected => {
                    Some(Delivery::NotSent)
                }
                Kind::ConnectionReset
                | Kind::ConnectionAborted
                | Kind::BrokenPipe
                | Kind::UnexpectedEof
                | Kind::TimedOut => Some(Delivery::MaybeApplied),
                _ => None,
            },
            ureq::Error::Timeout(_) | ureq::Error::BodyStalled | ureq::Error::Protocol(_) => {
                Some(Delivery::MaybeApplied)
            }
            _ => None,
        };
        Failure {
            error: transport(url, e),
            delivery,
        }
    }
}

impl HttpStore {
    /// `endpoint`: e.g. `http://127.0.0.1:10000/devstoreaccount1`; `key`: the account key.
    pub fn new(endpoint: &str, account: &str, key: &[u8]) -> HttpStore {
        Self::build(endpoint, account, key, None)
    }

    /// [`new`](Self::new), reaching the account through `proxy` (a `CONNECT` tunnel).
    pub fn with_proxy(
        endpoint: &str,
        account: &str,
        key: &[u8],
        proxy: &super::proxy::ProxySettings,
    ) -> Result<HttpStore, super::proxy::ProxyError> {
        Ok(Self::build(endpoint, account, key, Some(proxy.to_ureq()?)))
    }

    fn build(endpoint: &str, account: &str, key: &[u8], proxy: Option<ureq::Proxy>) -> HttpStore {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_per_read(Some(STALL_TIMEOUT))
            .timeout_per_write(Some(STALL_TIMEOUT))
            .max_idle_connections_per_host(64);
        // Without one given, ureq's default applies (HTTPS_PROXY / HTTP_PROXY / NO_PROXY).
        let pipeline = match proxy {
            Some(_) => None,
            None => Pipeline::for_endpoint(endpoint, CONNECT_TIMEOUT, STALL_TIMEOUT),
        };
        if proxy.is_some() {
            config = config.proxy(proxy);
        }
        let agent = ureq::Agent::with_parts(
            config.build(),
            ureq::unversioned::transport::DefaultConnector::default(),
            CachingResolver::new(
                ureq::unversioned::resolver::DefaultResolver::default(),
                RESOLVE_TTL,
            ),
        );
        HttpStore {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            account: account.into(),
            key: key.to_vec(),
            agent,
            clock: std::sync::Arc::new(SystemClock),
            reached: std::sync::atomic::AtomicBool::new(false),
            pipeline,
        }
    }

    /// Date requests by `clock` (a server on a simulated clock); the default is the system's.
    pub fn with_clock(mut self, clock: std::sync::Arc<dyn Clock>) -> HttpStore {
        self.clock = clock;
        self
    }

    /// Send one request, signed, retrying 500/503, and connection failures: always when the
    /// request never left (connection refused: a server restarting), and for idempotent
    /// requests also when the connection broke mid-exchange. `query` values are unencoded.
    fn send(
        &self,
        method: &str,
        resource: &str,
        query: &[(&str, String)],
        headers: &[(&str, String)],
        body: &[u8],
    ) -> StoreResult<Answer> {
        let idempotent = is_idempotent(method, query, headers);
        let started = std::time::Instant::now();
        let mut busy_delay = FIRST_RETRY_DELAY;
        let mut busy_attempts = 0;
        let mut connection_delay = FIRST_RETRY_DELAY;
        loop {
            match self.send_once(method, resource, query, headers, body) {
                Ok(answer) => {
                    self.reached
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    busy_attempts += 1;
                    let retry = matches!(answer.status, 500 | 503) && busy_attempts < MAX_ATTEMPTS;
                    if !retry {
                        return self.check(answer);
                    }
                    std::thread::sleep(busy_delay);
                    busy_delay *= 2;
                }
                Err(Failure { error, delivery }) => {
                    let retry = match delivery {
                        Some(Delivery::NotSent) => true,
                        Some(Delivery::MaybeApplied) => idempotent,
                        None => false,
                    };
                    let reached = self.reached.load(std::sync::atomic::Ordering::Relaxed);
                    let budget = if reached {
                        CONNECTION_RETRY_BUDGET
                    } else {
                        FIRST_CONTACT_RETRY_BUDGET
                    };
                    if !retry {
                        return Err(error);
                    }
                    if started.elapsed() + connection_delay > budget {
                        return Err(if reached {
                            error
                        } else {
                            transport(
                                &self.endpoint,
                                format!(
                                    "no answer from the endpoint (tried for {:.1} s; is the \
                                     address right and the server running?): {error}",
                                    started.elapsed().as_secs_f64()
                                ),
                            )
                        });
                    }
                    std::thread::sleep(connection_delay);
                    connection_delay = (connection_delay * 2).min(MAX_CONNECTION_RETRY_DELAY);
                }
            }
        }
    }

    /// A request's URL and its headers, signed: `x-ms-date`, `x-ms-version`, the length and
    /// type of a `body_len`-byte body and `authorization` added to `headers`.
    fn signed(
        &self,
        method: &str,
        resource: &str,
        query: &[(&str, String)],
        headers: &[(&str, String)],
        body_len: usize,
    ) -> Signed {
        let encoded_path = utf8_percent_encode(resource, PATH_SET).to_string();
        let base_path = self
            .endpoint
            .split_once("://")
            .map_or("", |(_, rest)| rest)
            .split_once('/')
            .map_or("", |(_, p)| p);
        let path = format!("/{base_path}{encoded_path}");
        let mut query_string = String::new();
        for (i, (n, v)) in query.iter().enumerate() {
            query_string.push(if i == 0 { '?' } else { '&' });
            query_string.push_str(n);
            query_string.push('=');
            query_string.push_str(&utf8_percent_encode(v, QUERY_SET).to_string());
        }
        let mut all: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect();
        all.push(("x-ms-date".into(), http_date(self.clock.now_nanos())));
        all.push(("x-ms-version".into(), API_VERSION.into()));
        if body_len > 0 || method == "PUT" {
            all.push(("content-length".into(), body_len.to_string()));
        }
        if body_len > 0 {
            all.push(("content-type".into(), "application/octet-stream".into()));
        }
        let q: Vec<(String, String)> = query
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect();
        let sts = shared_key::string_to_sign(method, &self.account, &path, &q, &all);
        all.push((
            "authorization".into(),
            format!(
                "SharedKey {}:{}",
                self.account,
                shared_key::sign(&self.key, &sts)
            ),
        ));
        Signed {
            url: format!("{}{encoded_path}{query_string}", self.endpoint),
            target: format!("{path}{query_string}"),
            headers: all,
        }
    }

    fn send_once(
        &self,
        method: &str,
        resource: &str,
        query: &[(&str, String)],
        headers: &[(&str, String)],
        body: &[u8],
    ) -> Result<Answer, Failure> {
        let Signed { url, headers, .. } = self.signed(method, resource, query, headers, body.len());
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        for (n, v) in &headers {
            if n != "content-length" {
                builder = builder.header(n.as_str(), v.as_str());
            }
        }
        let request = builder.body(body.to_vec()).map_err(|e| Failure {
            error: transport(&url, e),
            delivery: None,
        })?;
        let mut response = self.agent.run(request).map_err(|e| Failure::of(&url, e))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(n, v)| {
                Some((
                    n.as_str().to_ascii_lowercase(),
                    v.to_str().ok()?.to_string(),
                ))
            })
            .collect();
        let body = if method == "HEAD" {
            Vec::new()
        } else {
            response
                .body_mut()
                .with_config()
                .limit(MAX_RESPONSE_BYTES)
                .read_to_vec()
                .map_err(|e| Failure::of(&url, e))?
        };
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    fn check(&self, a: Answer) -> StoreResult<Answer> {
        if a.status < 300 {
            return Ok(a);
        }
        let code_name = a
            .header("x-ms-error-code")
            .map(str::to_string)
            .or_else(|| xml_text(&a.body, "Code"));
        let message = xml_text(&a.body, "Message").unwrap_or_else(|| format!("HTTP {}", a.status));
        let code = code_name
            .as_deref()
            .and_then(ErrorCode::parse)
            .unwrap_or(ErrorCode::InternalError);
        Err(StoreError::service(
            code,
            format!("{message} ({} {})", a.status, code_name.unwrap_or_default()),
        ))
    }

    fn blob_resource(path: &BlobPath) -> String {
        format!("/{}/{}", path.container, path.blob)
    }
}

/// `x-ms-range` for `len` (> 0) bytes from `offset`.
fn page_range(offset: u64, len: u64) -> String {
    format!("bytes={offset}-{}", offset + len - 1)
}

fn cond_headers(cond: &Conditions) -> Vec<(&'static str, String)> {
    let mut h = Vec::new();
    if let Some(v) = &cond.if_match {
        h.push(("if-match", v.clone()));
    }
    if let Some(v) = &cond.if_none_match {
        h.push(("if-none-match", v.clone()));
    }
    if let Some(v) = cond.if_modified_since {
        h.push(("if-modified-since", http_date(v)));
    }
    if let Some(v) = cond.if_unmodified_since {
        h.push(("if-unmodified-since", http_date(v)));
    }
    if let Some(v) = cond.if_sequence_number_le {
        h.push(("x-ms-if-sequence-number-le", v.to_string()));
    }
    if let Some(v) = cond.if_sequence_number_lt {
        h.push(("x-ms-if-sequence-number-lt", v.to_string()));
    }
    if let Some(v) = cond.if_sequence_number_eq {
        h.push(("x-ms-if-sequence-number-eq", v.to_string()));
    }
    if let Some(v) = &cond.lease_id {
        h.push(("x-ms-lease-id", v.clone()));
    }
    h
}

/// Text of the first `<tag>` element.
fn xml_text(body: &[u8], tag: &str) -> Option<String> {
    let mut found = None;
    xml_walk(body, |path, text| {
        if found.is_none() && path.last().map(String::as_str) == Some(tag) && !text.is_empty() {
            found = Some(text.to_string());
        }
    })
    .ok()?;
    found
}

fn entity(name: &[u8]) -> Option<char> {
    Some(match name {
        b"amp" => '&',
        b"lt" => '<',
        b"gt" => '>',
        b"quot" => '"',
        b"apos" => '\'',
        _ => return None,
    })
}

/// Walk an XML document, calling `on` with (path of element names, text) at each element
/// start (empty text) and with each element's whole text (entities resolved) at its end.
fn xml_walk(body: &[u8], mut on: impl FnMut(&[String], &str)) -> StoreResult<()> {
    let bad = |e: String| StoreError::service(ErrorCode::InvalidXmlDocument, e);
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut stack: Vec<String> = Vec::new();
    // Per open element: its text is percent-encoded (`Encoded="true"`, e.g. a blob name
    // holding a character XML cannot carry) and is given decoded.
    let mut encoded: Vec<bool> = Vec::new();
    let mut text = String::new();
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e)) => {
                stack.push(String::from_utf8_lossy(e.name().as_ref()).into_owned());
                encoded.push(
                    e.attributes()
                        .flatten()
                        .any(|a| a.key.as_ref() == b"Encoded" && a.value.as_ref() == b"true"),
                );
                text.clear();
                on(&stack, "");
            }
            Ok(Event::End(_)) => {
                if !text.is_empty() {
                    if encoded.last() == Some(&true) {
                        text = percent_encoding::percent_decode_str(&text)
                            .decode_utf8()
                            .map_err(|_| bad(format!("encoded text {text:?} is not UTF-8")))?
                            .into_owned();
                    }
                    on(&stack, &text);
                    text.clear();
                }
                stack.pop();
                encoded.pop();
            }
            Ok(Event::Text(t)) => text.push_str(&t.decode().map_err(|e| bad(e.to_string()))?),
            Ok(Event::GeneralRef(r)) => {
                if let Some(c) = entity(r.as_ref()) {
                    text.push(c);
                }
            }
            Ok(Event::Eof) => return Ok(()),
            Err(e) => return Err(bad(e.to_string())),
            _ => {}
        }
        buf.clear();
    }
}

/// A Get Page Ranges answer, strictly: every `PageRange` / `ClearRange` has one numeric
/// `Start` and one numeric `End`, or the answer is refused naming what is wrong (a range
/// skipped over would read as pages never written). Whether the ranges make sense together
/// is [`crate::page_listing`]'s to check. `NextMarker` is kept as it came (Azure's is an
/// opaque token).
pub(crate) fn parse_page_list(body: &[u8]) -> StoreResult<PageRangeList> {
    /// A range being read: its kind and the numbers seen so far.
    struct Partial {
        cleared: bool,
        start: Option<u64>,
        end: Option<u64>,
    }
    let bad = |why: String| {
        StoreError::service(
            ErrorCode::InvalidXmlDocument,
            format!("the Get Page Ranges answer {why}"),
        )
    };
    let finish = |p: Partial| match (p.start, p.end) {
        (Some(start), Some(end)) => Ok(PageRange {
            start,
            end,
            cleared: p.cleared,
        }),
        (start, end) => Err(bad(format!(
            "has a range without its {} (Start {start:?}, End {end:?})",
            if start.is_none() { "Start" } else { "End" }
        ))),
    };
    let mut ranges = Vec::new();
    let mut partial: Option<Partial> = None;
    let mut next_marker = None;
    let mut first_error = None;
    xml_walk(body, |path, text| {
        if first_error.is_some() {
            return;
        }
        let n = path.len();
        let last = path.last().map(String::as_str);
        let outcome = match last {
            Some(kind @ ("PageRange" | "ClearRange")) if text.is_empty() => {
                // A new range begins: the one before must be whole.
                let done = partial.replace(Partial {
                    cleared: kind == "ClearRange",
                    start: None,
                    end: None,
                });
                done.map(finish).transpose().map(|r| ranges.extend(r))
            }
            Some(field @ ("Start" | "End"))
                if n >= 2 && matches!(path[n - 2].as_str(), "PageRange" | "ClearRange") =>
            {
                match (text.parse::<u64>(), partial.as_mut()) {
                    _ if text.is_empty() => Ok(()),
                    (Ok(v), Some(p)) => {
                        let slot = if field == "Start" {
                            &mut p.start
                        } else {
                            &mut p.end
                        };
                        match slot.replace(v) {
                            None => Ok(()),
                            Some(_) => Err(bad(format!("has a range with two {field}s"))),
                        }
                    }
                    (Ok(_), None) => Err(bad(format!("has a {field} outside a range"))),
                    (Err(_), _) => Err(bad(format!("has a range {field} {text:?}, not a number"))),
                }
            }
            Some("NextMarker") if !text.is_empty() => {
                next_marker = Some(text.to_string());
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = outcome {
            first_error = Some(e);
        }
    })?;
    if let Some(e) = first_error {
        return Err(e);
    }
    ranges.extend(partial.map(finish).transpose()?);
    Ok(PageRangeList {
        ranges,
        next_marker,
    })
}

impl PageBlobStore for HttpStore {
    fn create_container(&self, name: &str) -> StoreResult<()> {
        self.send(
            "PUT",
            &format!("/{name}"),
            &[("restype", "container".into())],
            &[],
            &[],
        )
        .map(|_| ())
    }

    fn list_containers(&self) -> StoreResult<Vec<String>> {
        let a = self.send("GET", "/", &[("comp", "list".into())], &[], &[])?;
        let mut out = Vec::new();
        xml_walk(&a.body, |path, text| {
            if path.ends_with(&["Container".to_string(), "Name".to_string()]) && !text.is_empty() {
                out.push(text.to_string());
            }
        })?;
        Ok(out)
    }

    fn create_page_blob(
        &self,
        path: &BlobPath,
        size: u64,
        sequence_number: u64,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        let mut h = cond_headers(cond);
        h.push(("x-ms-blob-type", "PageBlob".into()));
        h.push(("x-ms-blob-content-length", size.to_string()));
        h.push(("x-ms-blob-sequence-number", sequence_number.to_string()));
        self.send("PUT", &Self::blob_resource(path), &[], &h, &[])?;
        self.properties(path, None)
    }

    fn put_pages(
        &self,
        path: &BlobPath,
        offset: u64,
        data: &[u8],
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        if data.is_empty() {
            return Err(StoreError::service(
                ErrorCode::InvalidPageRange,
                "empty Put Page",
            ));
        }
        let mut h = cond_headers(cond);
        h.push(("x-ms-page-write", "update".into()));
        h.push(("x-ms-range", page_range(offset, data.len() as u64)));
        let a = self.send(
            "PUT",
            &Self::blob_resource(path),
            &[("comp", "page".into())],
            &h,
            data,
        )?;
        Ok(a.properties(None))
    }

    /// Pipelined on one connection, [`PIPELINE_DEPTH`] at a time, where the endpoint allows
    /// (plain `http://`, no proxy). A write that got no answer, or a 500/503, is sent again on
    /// its own with the usual retries (a Put Page repeated changes nothing).
    fn put_pages_batch(&self, writes: &[PageWrite<'_>], cond: &Conditions) -> StoreResult<()> {
        let one_by_one =
            |w: &PageWrite<'_>| self.put_pages(w.path, w.offset, w.data, cond).map(|_| ());
        let Some(pipeline) = self.pipeline.as_ref().filter(|_| writes.len() > 1) else {
            return writes.iter().try_for_each(one_by_one);
        };
        for group in writes.chunks(PIPELINE_DEPTH) {
            if let Some(empty) = group.iter().find(|w| w.data.is_empty()) {
                return one_by_one(empty);
            }
            let requests: Vec<(Signed, &[u8])> = group
                .iter()
                .map(|w| {
                    let mut headers = cond_headers(cond);
                    headers.push(("x-ms-page-write", "update".to_string()));
                    headers.push(("x-ms-range", page_range(w.offset, w.data.len() as u64)));
                    let signed = self.signed(
                        "PUT",
                        &Self::blob_resource(w.path),
                        &[("comp", "page".into())],
                        &headers,
                        w.data.len(),
                    );
                    (signed, w.data)
                })
                .collect();
            for (w, answer) in group.iter().zip(pipeline.exchange(&requests)) {
                match answer {
                    Some(a) if !matches!(a.status, 500 | 503) => {
                        self.reached
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                        self.check(a)?;
                    }
                    _ => one_by_one(w)?,
                }
            }
        }
        Ok(())
    }

    fn clear_pages(
        &self,
        path: &BlobPath,
        offset: u64,
        len: u64,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        if len == 0 {
            return Err(StoreError::service(
                ErrorCode::InvalidPageRange,
                "empty clear",
            ));
        }
        let mut h = cond_headers(cond);
        h.push(("x-ms-page-write", "clear".into()));
        h.push(("x-ms-range", page_range(offset, len)));
        let a = self.send(
            "PUT",
            &Self::blob_resource(path),
            &[("comp", "page".into())],
            &h,
            &[],
        )?;
        Ok(a.properties(None))
    }

    fn read(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        offset: u64,
        buf: &mut [u8],
    ) -> StoreResult<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let Some(end) = offset.checked_add(buf.len() as u64) else {
            return Err(StoreError::service(
                ErrorCode::InvalidRange,
                format!("{path}: range {offset}+{} past 2^64", buf.len()),
            ));
        };
        // One request: a range inside the blob comes back whole. One that starts past the end
        // is refused (InvalidRange); one that runs past it comes back cut at the end, and the
        // blob's size (from Content-Range, else its properties) says so.
        let (q, h) = range_request(snapshot, offset, end);
        let a = self.send("GET", &Self::blob_resource(path), &q, &h, &[])?;
        if !answers_range(&a, offset, end) {
            let size = match content_range(&a) {
                Some((_, _, size)) => size,
                None => self.properties(path, snapshot)?.size,
            };
            if end > size {
                return Err(StoreError::service(
                    ErrorCode::InvalidRange,
                    format!(
                        "{path}: range {offset}+{} ends past the {size}-byte blob",
                        buf.len()
                    ),
                ));
            }
            return Err(transport(
                "Get Blob",
                format!(
                    "answer {} with {} bytes and Content-Range {:?} for bytes {offset}-{}",
                    a.status,
                    a.body.len(),
                    a.header("content-range"),
                    end - 1
                ),
            ));
        }
        buf.copy_from_slice(&a.body);
        Ok(())
    }

    /// Pipelined on one connection, [`PIPELINE_DEPTH`] at a time, where the endpoint allows
    /// (plain `http://`, no proxy): a restore from a store across a network waits one round
    /// trip per batch instead of per record. A read whose answer is not its whole range (none
    /// came, an error, a range past the end) is made again on its own, which says why.
    fn read_batch(&self, reads: &mut [PageRead<'_>]) -> StoreResult<()> {
        let one_by_one = |r: &mut PageRead<'_>| self.read(r.path, r.snapshot, r.offset, r.buf);
        let Some(pipeline) = self.pipeline.as_ref().filter(|_| reads.len() > 1) else {
            return reads.iter_mut().try_for_each(one_by_one);
        };
        for group in reads.chunks_mut(PIPELINE_DEPTH) {
            let ranges: Option<Vec<u64>> = group
                .iter()
                .map(|r| {
                    r.offset
                        .checked_add(r.buf.len() as u64)
                        .filter(|_| !r.buf.is_empty())
                })
                .collect();
            let Some(ends) = ranges else {
                group.iter_mut().try_for_each(one_by_one)?;
                continue;
            };
            let requests: Vec<(Signed, &[u8])> = group
                .iter()
                .zip(&ends)
                .map(|(r, &end)| {
                    let (query, headers) = range_request(r.snapshot, r.offset, end);
                    let signed =
                        self.signed("GET", &Self::blob_resource(r.path), &query, &headers, 0);
                    (signed, &[][..])
                })
                .collect();
            let longest = group.iter().map(|r| r.buf.len()).max().unwrap_or(0);
            let answers = pipeline.exchange_with("GET", &requests, longest);
            for ((r, &end), answer) in group.iter_mut().zip(&ends).zip(answers) {
                match answer {
                    Some(a) if answers_range(&a, r.offset, end) => {
                        self.reached
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                        r.buf.copy_from_slice(&a.body);
                    }
                    _ => one_by_one(r)?,
                }
            }
        }
        Ok(())
    }

    fn page_ranges(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        prev_snapshot: Option<&str>,
        range: Option<(u64, u64)>,
        marker: Option<&str>,
        max_results: Option<usize>,
    ) -> StoreResult<PageRangeList> {
        let mut q = vec![("comp", "pagelist".to_string())];
        if let Some(s) = snapshot {
            q.push(("snapshot", s.into()));
        }
        if let Some(p) = prev_snapshot {
            q.push(("prevsnapshot", p.into()));
        }
        if let Some(m) = marker {
            q.push(("marker", m.to_string()));
        }
        if let Some(m) = max_results {
            q.push(("maxresults", m.to_string()));
        }
        let h: Vec<(&str, String)> = range
            .map(|(s, e)| ("x-ms-range", format!("bytes={s}-{e}")))
            .into_iter()
            .collect();
        let a = self.send("GET", &Self::blob_resource(path), &q, &h, &[])?;
        parse_page_list(&a.body)
    }

    fn snapshot(&self, path: &BlobPath, cond: &Conditions) -> StoreResult<String> {
        let a = self.send(
            "PUT",
            &Self::blob_resource(path),
            &[("comp", "snapshot".into())],
            &cond_headers(cond),
            &[],
        )?;
        a.header("x-ms-snapshot")
            .map(str::to_string)
            .ok_or_else(|| transport("Snapshot Blob", "no x-ms-snapshot header"))
    }

    fn list_blobs(
        &self,
        container: &str,
        prefix: &str,
        include_snapshots: bool,
    ) -> StoreResult<Vec<BlobListing>> {
        all_blob_pages(container, |marker| {
            let mut q = vec![
                ("restype", "container".to_string()),
                ("comp", "list".to_string()),
            ];
            if !prefix.is_empty() {
                q.push(("prefix", prefix.to_string()));
            }
            if include_snapshots {
                q.push(("include", "snapshots".into()));
            }
            if let Some(m) = marker {
                q.push(("marker", m.to_string()));
            }
            let a = self.send("GET", &format!("/{container}"), &q, &[], &[])?;
            parse_blob_list(&a.body)
        })
    }

    fn delete_blob(
        &self,
        path: &BlobPath,
        snapshot: Option<&str>,
        delete_snapshots: Option<DeleteSnapshots>,
        cond: &Conditions,
    ) -> StoreResult<()> {
        let q: Vec<(&str, String)> = snapshot
            .map(|s| ("snapshot", s.to_string()))
            .into_iter()
            .collect();
        let mut h = cond_headers(cond);
        match delete_snapshots {
            Some(DeleteSnapshots::Include) => h.push(("x-ms-delete-snapshots", "include".into())),
            Some(DeleteSnapshots::Only) => h.push(("x-ms-delete-snapshots", "only".into())),
            None => {}
        }
        self.send("DELETE", &Self::blob_resource(path), &q, &h, &[])
            .map(|_| ())
    }

    fn resize(&self, path: &BlobPath, size: u64, cond: &Conditions) -> StoreResult<Properties> {
        let mut h = cond_headers(cond);
        h.push(("x-ms-blob-content-length", size.to_string()));
        self.send(
            "PUT",
            &Self::blob_resource(path),
            &[("comp", "properties".into())],
            &h,
            &[],
        )?;
        self.properties(path, None)
    }

    fn set_sequence_number(
        &self,
        path: &BlobPath,
        action: SequenceNumberAction,
        cond: &Conditions,
    ) -> StoreResult<Properties> {
        let mut h = cond_headers(cond);
        match action {
            SequenceNumberAction::Max(n) => h.extend([
                ("x-ms-sequence-number-action", "max".into()),
                ("x-ms-blob-sequence-number", n.to_string()),
            ]),
            SequenceNumberAction::Update(n) => h.extend([
                ("x-ms-sequence-number-action", "update".into()),
                ("x-ms-blob-sequence-number", n.to_string()),
            ]),
            SequenceNumberAction::Increment => {
                h.push(("x-ms-sequence-number-action", "increment".into()))
            }
        }
        let a = self.send(
            "PUT",
            &Self::blob_resource(path),
            &[("comp", "properties".into())],
            &h,
            &[],
        )?;
        Ok(a.properties(None))
    }

    fn properties(&self, path: &BlobPath, snapshot: Option<&str>) -> StoreResult<Properties> {
        let q: Vec<(&str, String)> = snapshot
            .map(|s| ("snapshot", s.to_string()))
            .into_iter()
            .collect();
        let a = self.send("HEAD", &Self::blob_resource(path), &q, &[], &[])?;
        Ok(a.properties(snapshot))
    }

    fn lease(
        &self,
        path: &BlobPath,
        action: &LeaseAction,
        cond: &Conditions,
    ) -> StoreResult<LeaseAnswer> {
        let mut h = cond_headers(cond);
        match action {
            LeaseAction::Acquire {
                proposed_id,
                duration_secs,
            } => h.extend([
                ("x-ms-lease-action", "acquire".into()),
                ("x-ms-proposed-lease-id", proposed_id.clone()),
                (
                    "x-ms-lease-duration",
                    duration_secs.map_or("-1".to_string(), |d| d.to_string()),
                ),
            ]),
            LeaseAction::Renew { id } => h.extend([
                ("x-ms-lease-action", "renew".into()),
                ("x-ms-lease-id", id.clone()),
            ]),
            LeaseAction::Release { id } => h.extend([
                ("x-ms-lease-action", "release".into()),
                ("x-ms-lease-id", id.clone()),
            ]),
            LeaseAction::Change { id, proposed_id } => h.extend([
                ("x-ms-lease-action", "change".into()),
                ("x-ms-lease-id", id.clone()),
                ("x-ms-proposed-lease-id", proposed_id.clone()),
            ]),
            LeaseAction::Break { period_secs } => {
                h.push(("x-ms-lease-action", "break".into()));
                if let Some(p) = period_secs {
                    h.push(("x-ms-lease-break-period", p.to_string()));
                }
            }
        }
        let a = self.send(
            "PUT",
            &Self::blob_resource(path),
            &[("comp", "lease".into())],
            &h,
            &[],
        )?;
        Ok(LeaseAnswer {
            lease_id: a.header("x-ms-lease-id").map(str::to_string),
            lease_time_secs: a.header("x-ms-lease-time").and_then(|v| v.parse().ok()),
            etag: a.header("etag").unwrap_or_default().to_string(),
        })
    }

    fn incremental_copy(
        &self,
        dest: &BlobPath,
        source: &BlobPath,
        snapshot: Option<&str>,
    ) -> StoreResult<CopyInfo> {
        let mut url = format!(
            "{}{}",
            self.endpoint,
            utf8_percent_encode(&Self::blob_resource(source), PATH_SET)
        );
        if let Some(s) = snapshot {
            url.push_str("?snapshot=");
            url.push_str(&utf8_percent_encode(s, QUERY_SET).to_string());
        }
        let a = self.send(
            "PUT",
            &Self::blob_resource(dest),
            &[("comp", "incrementalcopy".into())],
            &[("x-ms-copy-source", url)],
            &[],
        )?;
        Ok(CopyInfo {
            id: a.header("x-ms-copy-id").unwrap_or_default().to_string(),
            source: source.to_string(),
            source_snapshot: snapshot.unwrap_or_default().to_string(),
            status: a.header("x-ms-copy-status").unwrap_or_default().to_string(),
            destination_snapshot: a
                .header("x-ms-copy-destination-snapshot")
                .map(str::to_string),
            completed_at: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mistyped endpoint (nothing listens there) fails within seconds, saying so; it used
    /// to retry for the 20 s a server restart is given.
    #[test]
    fn an_endpoint_that_never_answered_fails_in_seconds() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let store = HttpStore::new(
            &format!("http://127.0.0.1:{port}/devstoreaccount1"),
            "devstoreaccount1",
            b"key",
        );
        let started = std::time::Instant::now();
        let err = store.list_containers().unwrap_err().to_string();
        assert!(
            started.elapsed() < FIRST_CONTACT_RETRY_BUDGET + Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(err.contains("no answer from the endpoint"), "{err}");
        assert!(err.contains(&port.to_string()), "{err}");
    }
    /// A server on a loopback port that answers each request (its number, request line and
    /// header lines) with what `answer` makes, one request per connection; its endpoint.
    fn scripted_server(
        mut answer: impl FnMut(usize, &str, &[String]) -> Vec<u8> + Send + 'static,
    ) -> String {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!(
            "http://127.0.0.1:{}/devstoreaccount1",
            listener.local_addr().unwrap().port()
        );
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut headers = Vec::new();
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header.trim().is_empty() {
                        break;
                    }
                    headers.push(header);
                }
                let _ = stream.write_all(&answer(n, &line, &headers));
            }
        });
        endpoint
    }

    /// A server that answers Get Blob ranges of a 4096-byte blob as Azure does (a range that
    /// runs past the end cut there, one that starts past it refused with 416), one request per
    /// connection, and records each request's method.
    fn ranged_blob_server() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        const SIZE: u64 = 4096;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&seen);
        let endpoint = scripted_server(move |_, line, headers| {
            let method = line.split(' ').next().unwrap_or_default().to_string();
            let range = headers.iter().find_map(|header| {
                let lower = header.to_ascii_lowercase();
                let (a, b) = lower
                    .strip_prefix("x-ms-range:")?
                    .trim()
                    .trim_start_matches("bytes=")
                    .split_once('-')?;
                Some((a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()))
            });
            log.lock().unwrap().push(method);
            let common = "x-ms-request-id: r\r\nx-ms-version: 2021-08-06\r\nconnection: close\r\n";
            match range {
                Some((a, _)) if a >= SIZE => format!(
                    "HTTP/1.1 416 Range Not Satisfiable\r\n{common}x-ms-error-code: InvalidRange\r\ncontent-length: 0\r\n\r\n"
                )
                .into_bytes(),
                // A server that answers another range than asked, its length right.
                Some((100, b)) => {
                    let mut out = format!(
                        "HTTP/1.1 206 Partial Content\r\n{common}content-range: bytes 0-{}/{SIZE}\r\ncontent-length: {}\r\n\r\n",
                        b - 100,
                        b - 99
                    )
                    .into_bytes();
                    out.extend((0..=b - 100).map(|i| (i % 251) as u8));
                    out
                }
                Some((a, b)) => {
                    let end = b.min(SIZE - 1);
                    let mut out = format!(
                        "HTTP/1.1 206 Partial Content\r\n{common}content-range: bytes {a}-{end}/{SIZE}\r\ncontent-length: {}\r\n\r\n",
                        end - a + 1
                    )
                    .into_bytes();
                    out.extend((a..=end).map(|i| (i % 251) as u8));
                    out
                }
                None => format!("HTTP/1.1 400 Bad Request\r\n{common}content-length: 0\r\n\r\n")
                    .into_bytes(),
            }
        });
        (endpoint, seen)
    }

    /// A read is one Get Blob: the range's bytes, or InvalidRange where it runs past the end,
    /// told by the answer itself (it used to ask the blob's size first: two round trips per
    /// record for every restore and audit through HTTP).
    #[test]
    fn a_read_is_one_request_and_a_range_past_the_end_is_invalid() {
        let (endpoint, seen) = ranged_blob_server();
        let store = HttpStore::new(&endpoint, "devstoreaccount1", b"key");
        let path = BlobPath::new("c", "b");
        let mut buf = vec![0u8; 1000];
        store.read(&path, None, 3000, &mut buf).unwrap();
        assert!(buf
            .iter()
            .zip(3000u64..)
            .all(|(&b, i)| b == (i % 251) as u8));
        assert_eq!(
            *seen.lock().unwrap(),
            ["GET"],
            "one request, no properties first"
        );
        for offset in [3500, 4096, 9000] {
            let err = store.read(&path, None, offset, &mut buf).unwrap_err();
            assert_eq!(err.code(), Some(ErrorCode::InvalidRange), "{offset}: {err}");
        }
        assert!(seen.lock().unwrap().iter().all(|m| m == "GET"), "{seen:?}");
        let err = store.read(&path, None, 100, &mut buf).unwrap_err();
        assert!(
            err.to_string().contains("Content-Range"),
            "another range is not taken: {err}"
        );
    }

    /// A server that answers each request with the next of `bodies` (200, XML; the last again
    /// and again), one request per connection, and records each request's target.
    fn page_list_server(
        bodies: Vec<String>,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&seen);
        let endpoint = scripted_server(move |n, line, _| {
            log.lock()
                .unwrap()
                .push(line.split(' ').nth(1).unwrap_or_default().to_string());
            let body = &bodies[n.min(bodies.len() - 1)];
            format!(
                "HTTP/1.1 200 OK\r\nx-ms-request-id: r\r\nx-ms-version: 2021-08-06\r\n\
                 content-type: application/xml\r\nconnection: close\r\n\
                 content-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        });
        (endpoint, seen)
    }

    /// The `marker` a request target carries, percent-decoded.
    fn marker_sent(target: &str) -> Option<String> {
        target
            .split(['?', '&'])
            .find_map(|p| p.strip_prefix("marker="))
            .map(|m| {
                percent_encoding::percent_decode_str(m)
                    .decode_utf8()
                    .unwrap()
                    .into_owned()
            })
    }

    fn page_list(inner: &str) -> String {
        format!("<?xml version=\"1.0\" encoding=\"utf-8\"?><PageList>{inner}</PageList>")
    }

    /// Azure's `NextMarker` is a token, not an offset: it is given back as it came (it was
    /// parsed as a number, and a token ended the listing after its first answer), and an
    /// answer whose ranges cannot be read is refused rather than read as fewer ranges.
    #[test]
    fn page_list_answers_are_read_strictly_and_opaque_markers_given_back() {
        let token = "2!72!MDAwMDE2IWJsb2IgKzE=";
        let (endpoint, seen) = page_list_server(vec![
            page_list(&format!(
                "<PageRange><Start>0</Start><End>511</End></PageRange><NextMarker>{token}</NextMarker>"
            )),
            page_list("<PageRange><Start>4096</Start><End>8191</End></PageRange><NextMarker />"),
        ]);
        let store = HttpStore::new(&endpoint, "devstoreaccount1", b"key");
        let path = BlobPath::new("c", "b");
        let all = crate::page_listing::all_page_ranges(&store, &path, None, None).unwrap();
        assert_eq!(
            all.iter().map(|r| (r.start, r.end)).collect::<Vec<_>>(),
            [(0, 511), (4096, 8191)]
        );
        let targets = seen.lock().unwrap().clone();
        assert_eq!(targets.len(), 2, "{targets:?}");
        assert_eq!(
            marker_sent(&targets[1]).as_deref(),
            Some(token),
            "{targets:?}"
        );

        for (answer, why) in [
            ("<PageRange><Start>0x200</Start><End>1023</End></PageRange>", "Start \"0x200\", not a number"),
            ("<PageRange><Start>0</Start><End>-1</End></PageRange>", "End \"-1\", not a number"),
            ("<PageRange><Start>0</Start></PageRange><PageRange><Start>1024</Start><End>1535</End></PageRange>", "without its End"),
            ("<ClearRange><End>511</End></ClearRange>", "without its Start"),
            ("<PageRange><Start></Start><End>511</End></PageRange>", "without its Start"),
            ("<PageRange><Start>0</Start><Start>512</Start><End>1023</End></PageRange>", "two Starts"),
        ] {
            let (endpoint, _) = page_list_server(vec![page_list(answer)]);
            let store = HttpStore::new(&endpoint, "devstoreaccount1", b"key");
            let e = store
                .page_ranges(&path, None, None, None, None, None)
                .unwrap_err()
                .to_string();
            assert!(e.contains("InvalidXmlDocument") && e.contains(why), "{answer}: {e}");
        }
    }

    fn blob_list(inner: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><EnumerationResults \
             ServiceEndpoint=\"http://x/devstoreaccount1\" ContainerName=\"c\">{inner}\
             </EnumerationResults>"
        )
    }

    fn listed_blob(name: &str, lease: &str) -> String {
        format!(
            "<Blob><Name>{name}</Name><Properties><Content-Length>512</Content-Length>\
             <LeaseStatus>locked</LeaseStatus><LeaseState>{lease}</LeaseState>\
             </Properties></Blob>"
        )
    }

    /// List Blobs takes every page (Azure answers 5,000 entries at most, then a marker), sends
    /// the prefix, reads each blob's lease state (a point's hold counts only under a live
    /// lease), and refuses a listing that never ends.
    #[test]
    fn blob_listings_are_taken_whole_with_their_lease_states() {
        let token = "2!96!MDAwMDQ1IWQuaG9sZC0x";
        let (endpoint, seen) = page_list_server(vec![
            blob_list(&format!(
                "<Prefix>d.hold-</Prefix><Blobs>{}</Blobs><NextMarker>{token}</NextMarker>",
                listed_blob("d.hold-1-aa", "leased")
            )),
            blob_list(&format!(
                "<Blobs>{}</Blobs><NextMarker />",
                listed_blob("d.hold-2-bb", "expired")
            )),
        ]);
        let store = HttpStore::new(&endpoint, "devstoreaccount1", b"key");
        let all = store.list_blobs("c", "d.hold-", false).unwrap();
        let got: Vec<_> = all
            .iter()
            .map(|b| (b.name.as_str(), b.properties.lease_state))
            .collect();
        assert_eq!(
            got,
            [
                ("d.hold-1-aa", LeaseStateName::Leased),
                ("d.hold-2-bb", LeaseStateName::Expired)
            ]
        );
        let targets = seen.lock().unwrap().clone();
        assert_eq!(targets.len(), 2, "{targets:?}");
        assert!(
            targets.iter().all(|t| t.contains("prefix=d.hold-")),
            "{targets:?}"
        );
        assert!(!targets[0].contains("marker="), "{targets:?}");
        assert_eq!(
            marker_sent(&targets[1]).as_deref(),
            Some(token),
            "{targets:?}"
        );
        // The same marker again and again: refused, not followed for ever.
        let (endpoint, seen) = page_list_server(vec![blob_list(&format!(
            "<Blobs>{}</Blobs><NextMarker>{token}</NextMarker>",
            listed_blob("x", "available")
        ))]);
        let store = HttpStore::new(&endpoint, "devstoreaccount1", b"key");
        let e = store.list_blobs("c", "", false).unwrap_err().to_string();
        assert!(e.contains("does not end"), "{e}");
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_listing_that_hands_out_new_markers_for_ever_is_refused() {
        let entry = || BlobListing {
            name: "x".into(),
            properties: Properties::default(),
        };
        // One entry and a new marker on every page: refused after MAX_LIST_PAGES pages.
        let mut pages = 0usize;
        let e = all_blob_pages("c", |_| {
            pages += 1;
            Ok((vec![entry()], format!("m{pages}")))
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("does not end") && e.contains("pages"), "{e}");
        assert_eq!(pages, MAX_LIST_PAGES);
        // Full pages with new markers: refused once the entries pass the limit (ten million
        // by default; here a thousand).
        let mut pages = 0usize;
        let e = all_blob_pages_within("c", 1000, |_| {
            pages += 1;
            Ok((vec![entry(); 100], format!("m{pages}")))
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("over 1000 entries"), "{e}");
        assert_eq!(pages, 11);
        // Empty pages in a row: refused, though each marker is new.
        let mut pages = 0usize;
        let e = all_blob_pages("c", |_| {
            pages += 1;
            Ok((Vec::new(), format!("m{pages}")))
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("empty pages"), "{e}");
        assert_eq!(pages, MAX_EMPTY_LIST_PAGES + 1);
        // A long listing that ends is taken whole.
        let mut pages = 0usize;
        let all = all_blob_pages("c", |_| {
            pages += 1;
            let next = if pages < 1000 {
                format!("m{pages}")
            } else {
                String::new()
            };
            Ok((vec![entry(); 5], next))
        })
        .unwrap();
        assert_eq!(all.len(), 5000);
    }

    use ureq::unversioned::resolver::{DefaultResolver, Resolver};
    use ureq::unversioned::transport::NextTimeout;

    /// ureq's resolver, counting its lookups.
    #[derive(Debug, Default)]
    struct Counting {
        lookups: std::sync::atomic::AtomicUsize,
    }

    impl Resolver for Counting {
        fn resolve(
            &self,
            uri: &ureq::http::Uri,
            config: &ureq::config::Config,
            timeout: NextTimeout,
        ) -> Result<ResolvedAddrs, ureq::Error> {
            self.lookups
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            DefaultResolver::default().resolve(uri, config, timeout)
        }
    }

    #[test]
    fn only_requests_whose_repeat_changes_nothing_are_retried_after_a_broken_exchange() {
        let q = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
            pairs.iter().map(|(n, v)| (*n, v.to_string())).collect()
        };
        assert!(is_idempotent("GET", &q(&[("comp", "pagelist")]), &[]));
        assert!(is_idempotent("PUT", &q(&[("comp", "page")]), &[]));
        assert!(is_idempotent("PUT", &q(&[]), &[]), "Create Blob");
        assert!(
            !is_idempotent("PUT", &q(&[("restype", "container")]), &[]),
            "a repeated Create Container answers 409"
        );
        assert!(!is_idempotent("PUT", &q(&[("comp", "snapshot")]), &[]));
        let increment = [("x-ms-sequence-number-action", "increment".to_string())];
        assert!(!is_idempotent(
            "PUT",
            &q(&[("comp", "properties")]),
            &increment
        ));
    }

    #[test]
    fn a_host_is_looked_up_once_per_ttl_and_hosts_do_not_share_answers() {
        let config = ureq::config::Config::default();
        let resolve = |r: &CachingResolver<Counting>, uri: &str| {
            let addrs = r
                .resolve(&uri.parse().unwrap(), &config, NextTimeout::default())
                .unwrap();
            addrs.iter().map(|a| a.port()).collect::<Vec<_>>()
        };
        let lookups = |r: &CachingResolver<Counting>| {
            r.inner.lookups.load(std::sync::atomic::Ordering::Relaxed)
        };
        let cached = CachingResolver::new(Counting::default(), Duration::from_secs(60));
        for _ in 0..5 {
            assert_eq!(resolve(&cached, "http://127.0.0.1:10000/acct/c/b"), [10000]);
        }
        assert_eq!(lookups(&cached), 1, "one lookup for five requests");
        assert_eq!(resolve(&cached, "http://127.0.0.1:10001/acct"), [10001]);
        assert_eq!(resolve(&cached, "http://127.0.0.1:10000/other"), [10000]);
        assert_eq!(lookups(&cached), 2, "another port is another host");
        // A zero TTL: every request looks up again, and the cache does not grow.
        let uncached = CachingResolver::new(Counting::default(), Duration::ZERO);
        for _ in 0..3 {
            resolve(&uncached, "http://127.0.0.1:10000/");
        }
        assert_eq!(lookups(&uncached), 3);
        assert_eq!(uncached.cache.lock().unwrap().len(), 1);
    }
}
