//! An HTTP server speaking the Azure Blob REST API for page blobs, over any
//! [`PageBlobStore`]: path-style URLs (`/ACCOUNT/CONTAINER/BLOB`), Shared Key authentication,
//! `x-ms-*` headers, XML bodies, and Azure's status codes with `x-ms-error-code`.
//! Store calls are blocking and run on tokio's blocking pool.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use percent_encoding::percent_decode_str;

use super::blob_read::{BlobRead, READ_CHUNK_BYTES};
use super::connections::{accept_loop, Connection, ServerLimits};
use super::listing::{page_blobs, page_names, ListParams};
use super::sas;
use super::shared_key;
use super::structured_body::{self, content_crc64};
use super::xml;
use crate::blob_headers::PropertyChanges;
use crate::clock::Clock;
use crate::error::{ErrorCode, StoreError};
use crate::names::blob_name_error;
use crate::timestamp::{http_date, parse_http_date};
use crate::types::*;
use crate::PageBlobStore;

/// Largest request body read: a 4 MiB Put Page plus room to answer 413 ourselves.
pub const MAX_BODY_BYTES: usize = (4 << 20) + (64 << 10);
/// Largest Get Blob range in one request (Azure's limit for a page-blob read is the blob; ours
/// keeps one answer's time on the wire bounded). Answers are streamed in
/// 1 MiB pieces.
pub const MAX_READ_BYTES: u64 = 256 << 20;
/// How long a client may take to send a request body.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// How far a signed request's `x-ms-date` may be from the server's time (Azure: 15 minutes):
/// a captured request cannot be replayed later.
pub const REQUEST_DATE_WINDOW_NANOS: u64 = 15 * 60 * 1_000_000_000;
/// Version reported when the request names none.
const DEFAULT_VERSION: &str = "2021-08-06";

/// Account and key the server authenticates against.
#[derive(Clone)]
pub struct ServerConfig {
    pub account: String,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

struct AppState {
    buffers: BufferPool,
    store: Arc<dyn PageBlobStore>,
    config: ServerConfig,
    clock: Arc<dyn Clock>,
    requests: AtomicU64,
    /// Mixed into request ids so that two server runs do not hand out the same ones.
    request_id_seed: u64,
}

impl AppState {
    fn new(store: Arc<dyn PageBlobStore>, config: ServerConfig, clock: Arc<dyn Clock>) -> Self {
        AppState {
            buffers: BufferPool {
                free: std::sync::Mutex::new(Vec::new()),
            },
            store,
            config,
            request_id_seed: clock.now_nanos(),
            clock,
            requests: AtomicU64::new(0),
        }
    }
}

/// Serve until `shutdown` completes, then finish in-flight requests and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<dyn PageBlobStore>,
    config: ServerConfig,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_limits(
        listener,
        store,
        config,
        clock,
        ServerLimits::default(),
        shutdown,
    )
    .await
}

/// [`serve`] under explicit connection limits.
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    store: Arc<dyn PageBlobStore>,
    config: ServerConfig,
    clock: Arc<dyn Clock>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new(AppState::new(store, config, clock));
    accept_loop(listener, limits, shutdown, move |conn, request| {
        handle(Arc::clone(&state), Some(conn), request)
    })
    .await
}

/// One request through authentication, routing and the store, without a socket: what the
/// server does once a request's body is in (the fuzz target drives the server through this).
#[cfg(any(test, feature = "testing"))]
pub fn handle_offline(
    store: Arc<dyn PageBlobStore>,
    config: ServerConfig,
    clock: Arc<dyn Clock>,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let state = AppState::new(store, config, clock);
    let response = dispatch(&state, method, uri, headers, body);
    finish(response, 0, DEFAULT_VERSION, &state)
}

/// Answer one request; the client's `x-ms-client-request-id` (up to 1,024 visible ASCII
/// characters, as Azure allows) is echoed on every answer, errors included.
async fn handle(state: Arc<AppState>, conn: Option<Arc<Connection>>, request: Request) -> Response {
    let client_request_id = request
        .headers()
        .get("x-ms-client-request-id")
        .filter(|v| v.len() <= 1024 && v.as_bytes().iter().all(|b| (0x20..0x7f).contains(b)))
        .cloned();
    let mut response = answer(state, conn, request).await;
    if let Some(id) = client_request_id {
        response.headers_mut().insert("x-ms-client-request-id", id);
    }
    response
}

async fn answer(state: Arc<AppState>, conn: Option<Arc<Connection>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let request_id = state.requests.fetch_add(1, Ordering::Relaxed);
    let version = parts
        .headers
        .get("x-ms-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(DEFAULT_VERSION)
        .to_string();
    let refuse = |code: ErrorCode, message: &str| {
        finish(
            error_response(&StoreError::service(code, message)),
            request_id,
            &version,
            &state,
        )
    };
    let declared = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        // Answer before waiting for a body we will not read.
        return refuse(ErrorCode::RequestBodyTooLarge, "request body over 4 MiB");
    }
    // Authenticate from the headers alone: a client without the key never gets a byte of its
    // body read (or a buffer reserved for it).
    let req = Req::of(&parts.uri, &parts.headers);
    let peer = conn.as_ref().map(|c| c.peer());
    if let Err(e) = authenticate(&state, &parts.method, parts.uri.path(), &req, peer) {
        return finish(error_response(&e), request_id, &version, &state);
    }
    if let Some(conn) = &conn {
        conn.mark_authenticated();
    }
    let mut buf = state.buffers.take(declared.unwrap_or(0) as usize);
    match tokio::time::timeout(BODY_READ_TIMEOUT, read_body(body, &mut buf)).await {
        Ok(Ok(())) => {}
        Ok(Err(BodyError::TooLarge)) => {
            return refuse(ErrorCode::RequestBodyTooLarge, "request body over 4 MiB")
        }
        Ok(Err(BodyError::Broken)) => {
            return refuse(ErrorCode::InvalidInput, "request body could not be read")
        }
        Err(_) => {
            return refuse(
                ErrorCode::OperationTimedOut,
                "request body not received in time",
            )
        }
    }
    if is_small_put_page(&parts, buf.len()) || is_blob_read(&parts) {
        // On the async worker unless the store would wait: on a connection, a Put Page's sync
        // is left owed (its answer held until the sync is made) and a read is made only from
        // memory; without a connection, only where the store answers promptly.
        let call = conn.as_ref().map(|_| ConnectionCall::on_worker());
        if call.is_some() || state.store.answers_promptly() {
            let response = respond(
                &state,
                &parts.method,
                &parts.uri,
                &parts.headers,
                &buf,
                call.as_ref(),
            );
            if !call.as_ref().is_some_and(ConnectionCall::would_wait) {
                if let (Some(conn), Some(call)) = (&conn, call) {
                    call.hand_to(conn, &state.store);
                }
                state.buffers.give(buf);
                return finish(response, request_id, &version, &state);
            }
        }
    }
    // On a connection, a Put Page's sync may be left owed: the connection's socket holds its
    // answer until the sync is made, and meanwhile reads the client's next request.
    let call = conn.as_ref().map(|_| Arc::new(ConnectionCall::default()));
    let st = Arc::clone(&state);
    let call_there = call.clone();
    let response = tokio::task::spawn_blocking(move || {
        let response = respond(
            &st,
            &parts.method,
            &parts.uri,
            &parts.headers,
            &buf,
            call_there.as_deref(),
        );
        st.buffers.give(buf);
        response
    })
    .await
    .unwrap_or_else(|_| {
        error_response(&StoreError::service(
            ErrorCode::InternalError,
            "request handler failed",
        ))
    });
    if let (Some(conn), Some(call)) = (&conn, call) {
        call.hand_to(conn, &state.store);
    }
    finish(response, request_id, &version, &state)
}

/// A request's call on a connection: where it is made, and the sync its Put Page left owed
/// (`PageBlobStore::put_pages_owing_sync`), for the connection to make before the answer
/// leaves.
#[derive(Debug, Default)]
struct ConnectionCall {
    ticket: std::sync::Mutex<Option<SyncTicket>>,
    /// Made on the async worker: a store call that would wait (a Put Page for a sync before
    /// its write or for other calls, a read for the device) is not made here
    /// (`PageBlobStore::try_put_pages_owing_sync`, `PageBlobStore::try_read`) but on a
    /// blocking thread.
    on_worker: bool,
    /// A call was not made because it would wait (its answer is not sent).
    would_wait: std::sync::atomic::AtomicBool,
}

impl ConnectionCall {
    fn on_worker() -> ConnectionCall {
        ConnectionCall {
            on_worker: true,
            ..ConnectionCall::default()
        }
    }

    fn note(&self, ticket: Option<SyncTicket>) {
        let mut owed = self.ticket.lock().unwrap_or_else(|p| p.into_inner());
        *owed = (*owed).max(ticket);
    }

    /// The call was not made, as it would wait: the error is never sent, the call is made
    /// again on a blocking thread.
    fn waits(&self) -> StoreError {
        self.would_wait.store(true, Ordering::SeqCst);
        StoreError::service(
            ErrorCode::InternalError,
            "a call that would wait, made again on a blocking thread",
        )
    }

    fn would_wait(&self) -> bool {
        self.would_wait.load(Ordering::SeqCst)
    }

    /// The connection owes the sync noted here (if any), paid by `store`.
    fn hand_to(&self, conn: &Connection, store: &Arc<dyn PageBlobStore>) {
        let Some(ticket) = self.ticket.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let store = Arc::clone(store);
        conn.owe_sync(
            ticket.0,
            Arc::new(move |t| {
                store
                    .sync_owed(SyncTicket(t))
                    .map_err(std::io::Error::other)
            }),
        );
    }
}

/// `x-ms-sequence-number-action` (with `x-ms-blob-sequence-number` where it needs one),
/// checked before a Set Blob Properties changes anything.
fn sequence_number_action(req: &Req) -> Result<Option<SequenceNumberAction>, StoreError> {
    let Some(action) = req.header("x-ms-sequence-number-action") else {
        return Ok(None);
    };
    let value = req.u64_header("x-ms-blob-sequence-number")?;
    let need = |v: Option<u64>| {
        let v = v.ok_or_else(|| {
            bad(
                ErrorCode::MissingRequiredHeader,
                "x-ms-blob-sequence-number is required",
            )
        })?;
        if v > MAX_SEQUENCE_NUMBER {
            return Err(bad(
                ErrorCode::InvalidHeaderValue,
                format!("sequence number {v} exceeds 2^63-1"),
            ));
        }
        Ok(v)
    };
    Ok(Some(match action {
        "max" => SequenceNumberAction::Max(need(value)?),
        "update" => SequenceNumberAction::Update(need(value)?),
        "increment" => SequenceNumberAction::Increment,
        other => {
            return Err(bad(
                ErrorCode::InvalidHeaderValue,
                format!("x-ms-sequence-number-action {other}"),
            ))
        }
    }))
}

/// Put Page calls up to this size are made on the async worker when the store answers
/// promptly: a page-cache write of a replication record takes tens of microseconds, less than
/// handing it to a blocking thread and back (one replication of 1 GiB through the server: 11,700
/// such calls, 1.2 → 0.8 s of server CPU). Anything else, or bigger, goes to a blocking thread.
const INLINE_PUT_PAGE_BYTES: usize = 1 << 20;

/// Get Blob or Get Blob Properties (a blob's URL, no `comp` or `restype`): made on the async
/// worker, its bytes read only from memory (`PageBlobStore::try_read`). Reading them on a
/// blocking thread and back cost more than the read: a restore of 1 GiB through the server
/// (~12,000 Get Blob calls of a record each) took 1.7–2.6 s with 1.0–1.1 s of server CPU, and
/// 1.1–1.4 s with 0.4–0.5 s.
fn is_blob_read(parts: &axum::http::request::Parts) -> bool {
    (parts.method == Method::GET || parts.method == Method::HEAD)
        && !parts.uri.query().is_some_and(|q| {
            q.split('&')
                .any(|kv| kv.starts_with("comp=") || kv.starts_with("restype="))
        })
}

fn is_small_put_page(parts: &axum::http::request::Parts, body_len: usize) -> bool {
    parts.method == Method::PUT
        && body_len <= INLINE_PUT_PAGE_BYTES
        && parts
            .uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "comp=page"))
}

enum BodyError {
    TooLarge,
    Broken,
}

/// Read a request body into `buf`, refusing more than `MAX_BODY_BYTES`.
async fn read_body(mut body: Body, buf: &mut Vec<u8>) -> Result<(), BodyError> {
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Broken)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY_BYTES {
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(())
}

/// Request-body buffers kept for reuse: a 4 MiB upload then lands in memory the process has
/// already touched instead of freshly zeroed pages.
struct BufferPool {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
}

/// Buffers kept at most (one per concurrent upload is plenty).
const POOLED_BUFFERS: usize = 32;

impl BufferPool {
    fn take(&self, capacity: usize) -> Vec<u8> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = free.pop().unwrap_or_default();
        buf.clear();
        buf.reserve(capacity.min(MAX_BODY_BYTES));
        buf
    }

    fn give(&self, buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < POOLED_BUFFERS && buf.capacity() <= MAX_BODY_BYTES {
            free.push(buf);
        }
    }
}

fn finish(mut r: Response, request_id: u64, version: &str, state: &AppState) -> Response {
    let h = r.headers_mut();
    h.insert(
        "x-ms-request-id",
        request_guid(state.request_id_seed, request_id)
            .parse()
            .expect("ascii"),
    );
    if let Ok(v) = version.parse() {
        h.insert("x-ms-version", v);
    }
    h.insert(
        "date",
        http_date(state.clock.now_nanos()).parse().expect("ascii"),
    );
    h.insert("server", "drplane-blob".parse().expect("ascii"));
    r
}

/// The `x-ms-request-id` of request number `n`: a version-4-shaped GUID, as Azure sends, unique
/// within a server run and unlikely to repeat across runs (`seed` is the start time).
fn request_guid(seed: u64, n: u64) -> String {
    // splitmix64: consecutive inputs give unrelated outputs.
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let hi = mix(seed ^ n.rotate_left(32));
    let lo = mix(hi ^ n);
    let hi = (hi & !0xf000) | 0x4000; // version 4
    let lo = (lo & !(0xc << 60)) | (0x8 << 60); // RFC 4122 variant
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

fn error_response(e: &StoreError) -> Response {
    let (code, message) = match e {
        StoreError::Service { code, message } => (*code, message.clone()),
        other => (ErrorCode::InternalError, other.to_string()),
    };
    let body = xml::error(code.as_str(), &message);
    Response::builder()
        .status(code.status())
        .header("x-ms-error-code", code.as_str())
        .header("content-type", "application/xml")
        .body(Body::from(body))
        .expect("valid response")
}

fn bad(code: ErrorCode, message: impl Into<String>) -> StoreError {
    StoreError::service(code, message)
}

/// Everything about one request the operations need.
struct Req<'a> {
    headers: &'a HeaderMap,
    query: Vec<(String, String)>,
}

impl<'a> Req<'a> {
    fn of(uri: &axum::http::Uri, headers: &'a HeaderMap) -> Req<'a> {
        Req {
            headers,
            query: parse_query(uri.query().unwrap_or("")),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn u64_header(&self, name: &'static str) -> Result<Option<u64>, StoreError> {
        self.header(name)
            .map(|v| {
                v.trim().parse::<u64>().map_err(|_| {
                    bad(
                        ErrorCode::InvalidHeaderValue,
                        format!("{name}: {v:?} is not a number"),
                    )
                })
            })
            .transpose()
    }
    fn date_header(&self, name: &'static str) -> Result<Option<u64>, StoreError> {
        self.header(name)
            .map(|v| {
                parse_http_date(v).ok_or_else(|| {
                    bad(
                        ErrorCode::InvalidHeaderValue,
                        format!("{name}: {v:?} is not an HTTP date"),
                    )
                })
            })
            .transpose()
    }
    fn conditions(&self) -> Result<Conditions, StoreError> {
        Ok(Conditions {
            if_match: self.header("if-match").map(str::to_string),
            if_none_match: self.header("if-none-match").map(str::to_string),
            if_modified_since: self.date_header("if-modified-since")?,
            if_unmodified_since: self.date_header("if-unmodified-since")?,
            if_sequence_number_le: self.u64_header("x-ms-if-sequence-number-le")?,
            if_sequence_number_lt: self.u64_header("x-ms-if-sequence-number-lt")?,
            if_sequence_number_eq: self.u64_header("x-ms-if-sequence-number-eq")?,
            lease_id: self.header("x-ms-lease-id").map(str::to_string),
        })
    }
    /// `x-ms-range` (preferred) or `Range`: `bytes=start-end` (end optional).
    fn range(&self) -> Result<Option<(u64, Option<u64>)>, StoreError> {
        let Some(v) = self.header("x-ms-range").or_else(|| self.header("range")) else {
            return Ok(None);
        };
        let invalid = || {
            bad(
                ErrorCode::InvalidHeaderValue,
                format!("range {v:?} is not bytes=START-END"),
            )
        };
        let spec = v.trim().strip_prefix("bytes=").ok_or_else(invalid)?;
        let (a, b) = spec.split_once('-').ok_or_else(invalid)?;
        let start = a.parse().map_err(|_| invalid())?;
        let end = if b.is_empty() {
            None
        } else {
            Some(b.parse::<u64>().map_err(|_| invalid())?)
        };
        if end.is_some_and(|e| e < start) {
            return Err(invalid());
        }
        Ok(Some((start, end)))
    }
}

/// A query string as decoded (name, value) pairs, in order (what Shared Key signs).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(n), decode(v))
        })
        .collect()
}

/// A container or blob name from the URL path: percent-decoded, and UTF-8 (a name is never
/// guessed from broken bytes: two byte strings would become one name).
fn decode_path_segment(s: &str) -> Result<String, StoreError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|name| name.into_owned())
        .map_err(|_| {
            bad(
                ErrorCode::InvalidUri,
                format!("path segment {s:?} is not UTF-8 once percent-decoded"),
            )
        })
}

fn decode(s: &str) -> String {
    percent_decode_str(&s.replace('+', "%20"))
        .decode_utf8_lossy()
        .into_owned()
}

/// Shared Key (an `Authorization` header) or a shared access signature (`sig` in the query).
fn authenticate(
    state: &AppState,
    method: &Method,
    path: &str,
    req: &Req<'_>,
    peer: Option<std::net::IpAddr>,
) -> Result<(), StoreError> {
    if req.header("authorization").is_none() && sas::is_sas(&req.query) {
        let (container, blob) = resource_names(state, path)?;
        let level = match (&container, &blob) {
            (None, _) => sas::Level::Service,
            (Some(_), None) => sas::Level::Container,
            (Some(_), Some(_)) => sas::Level::Object,
        };
        let need = sas::need(method.as_str(), level, req.q("restype"), req.q("comp"));
        let target = sas::Target {
            account: &state.config.account,
            container: container.as_deref(),
            blob: blob.as_deref(),
        };
        let now = state.clock.now_nanos();
        return sas::check(&state.config.key, &req.query, target, need, peer, now);
    }
    let auth = req.header("authorization").ok_or_else(|| {
        bad(
            ErrorCode::AuthenticationFailed,
            "no Authorization header (Shared Key) and no shared access signature (sig=)",
        )
    })?;
    let (scheme, rest) = auth.split_once(' ').unwrap_or(("", ""));
    let (account, signature) = rest.split_once(':').unwrap_or(("", ""));
    if scheme != "SharedKey" || account != state.config.account {
        return Err(bad(
            ErrorCode::AuthenticationFailed,
            format!(
                "Authorization must be SharedKey {}:SIGNATURE",
                state.config.account
            ),
        ));
    }
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .filter_map(|(n, v)| {
            Some((
                n.as_str().to_ascii_lowercase(),
                v.to_str().ok()?.to_string(),
            ))
        })
        .collect();
    let sts = shared_key::string_to_sign(
        method.as_str(),
        &state.config.account,
        path,
        &req.query,
        &headers,
    );
    if !shared_key::verify(&state.config.key, &sts, signature) {
        return Err(bad(
            ErrorCode::AuthenticationFailed,
            "the request signature does not match (check the account key)",
        ));
    }
    check_request_date(req, state.clock.now_nanos())
}

/// A signed request carries its time (`x-ms-date`, else `Date`), within
/// [`REQUEST_DATE_WINDOW_NANOS`] of `now`.
fn check_request_date(req: &Req<'_>, now: u64) -> Result<(), StoreError> {
    let (name, value) = match (req.header("x-ms-date"), req.header("date")) {
        (Some(v), _) => ("x-ms-date", v),
        (None, Some(v)) => ("date", v),
        (None, None) => {
            return Err(bad(
                ErrorCode::AuthenticationFailed,
                "no x-ms-date or Date header: a signed request must carry its time",
            ))
        }
    };
    let at = parse_http_date(value).ok_or_else(|| {
        bad(
            ErrorCode::AuthenticationFailed,
            format!("{name} {value:?} is not an HTTP date"),
        )
    })?;
    if at.abs_diff(now) > REQUEST_DATE_WINDOW_NANOS {
        return Err(bad(
            ErrorCode::AuthenticationFailed,
            format!(
                "{name} {value} is more than 15 minutes from the server's time {}",
                http_date(now)
            ),
        ));
    }
    Ok(())
}

/// A request whose `Content-MD5` (when sent) is not the body's.
fn check_content_md5(req: &Req<'_>, body: &[u8]) -> Result<(), StoreError> {
    use base64::Engine as _;
    use md5::Digest as _;
    let Some(sent) = req.header("content-md5") else {
        return Ok(());
    };
    let actual = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body));
    if sent.trim() != actual {
        return Err(bad(
            ErrorCode::Md5Mismatch,
            format!("Content-MD5 {sent} is not the body's ({actual})"),
        ));
    }
    Ok(())
}

/// A request whose `x-ms-content-crc64` (when sent) is not the body's. Azure's CRC-64 is
/// CRC-64/NVME (reflected polynomial 0x9A6C9329AC4BC9B5), sent as its 8 little-endian bytes in
/// base64.
fn check_content_crc64(req: &Req<'_>, body: &[u8]) -> Result<(), StoreError> {
    use base64::Engine as _;
    let Some(sent) = req.header("x-ms-content-crc64") else {
        return Ok(());
    };
    let actual =
        base64::engine::general_purpose::STANDARD.encode(content_crc64(body).to_le_bytes());
    if sent.trim() != actual {
        return Err(bad(
            ErrorCode::Crc64Mismatch,
            format!("x-ms-content-crc64 {sent} is not the body's ({actual})"),
        ));
    }
    Ok(())
}

/// Authenticate, then answer (what the fuzz target drives).
#[cfg(any(test, feature = "testing"))]
fn dispatch(
    state: &AppState,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let req = Req::of(uri, headers);
    match authenticate(state, method, uri.path(), &req, None) {
        Ok(()) => respond(state, method, uri, headers, body, None),
        Err(e) => error_response(&e),
    }
}

/// The answer to one authenticated request; a Put Page may leave its sync in `call` (`None`:
/// every write durable before the answer).
fn respond(
    state: &AppState,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
    call: Option<&ConnectionCall>,
) -> Response {
    let req = Req::of(uri, headers);
    let structured = req.header("x-ms-structured-body").is_some();
    let answer = structured_content(&req, body).and_then(|decoded| {
        let body = decoded.as_deref().unwrap_or(body);
        check_content_md5(&req, body)?;
        check_content_crc64(&req, body)?;
        route(state, method, uri.path(), &req, body, call)
    });
    match answer {
        Ok(mut r) => {
            if structured {
                // Says the body was read as a structured message and its CRCs checked.
                r.headers_mut().insert(
                    "x-ms-structured-body",
                    structured_body::STRUCTURED_BODY_CRC64
                        .parse()
                        .expect("ascii"),
                );
            }
            r
        }
        Err(e) => error_response(&e),
    }
}

/// The content of a structured message body (`x-ms-structured-body`), CRCs checked; `None`
/// for a plain body.
fn structured_content(req: &Req<'_>, body: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(kind) = req.header("x-ms-structured-body") else {
        return Ok(None);
    };
    let normalized: String = kind.chars().filter(|c| !c.is_whitespace()).collect();
    if !normalized.eq_ignore_ascii_case("XSM/1.0;properties=crc64") {
        return Err(bad(
            ErrorCode::InvalidHeaderValue,
            format!(
                "x-ms-structured-body {kind:?}: only {:?} is served",
                structured_body::STRUCTURED_BODY_CRC64
            ),
        ));
    }
    let length = req
        .u64_header("x-ms-structured-content-length")?
        .ok_or_else(|| {
            bad(
                ErrorCode::MissingRequiredHeader,
                "x-ms-structured-content-length is required with x-ms-structured-body",
            )
        })?;
    structured_body::decode(body, length).map(Some)
}

fn ok(status: u16) -> axum::http::response::Builder {
    Response::builder().status(StatusCode::from_u16(status).expect("valid status"))
}

fn with_properties(
    b: axum::http::response::Builder,
    p: &Properties,
) -> axum::http::response::Builder {
    b.header("etag", &p.etag)
        .header("last-modified", http_date(p.last_modified))
        .header("x-ms-blob-sequence-number", p.sequence_number.to_string())
}

/// `x-ms-meta-NAME` for each metadata entry.
fn with_metadata(
    mut b: axum::http::response::Builder,
    metadata: &Metadata,
) -> axum::http::response::Builder {
    for (name, value) in metadata {
        b = b.header(format!("x-ms-meta-{name}"), value);
    }
    b
}

/// Everything Get Blob Properties reports about a blob or snapshot (the headers Get Blob
/// repeats), but the content length and range.
fn with_all_properties(
    b: axum::http::response::Builder,
    p: &Properties,
    ranged: bool,
) -> axum::http::response::Builder {
    let mut b = with_metadata(with_properties(b, p), &p.metadata)
        .header("x-ms-blob-type", "PageBlob")
        .header("accept-ranges", "bytes")
        .header("x-ms-lease-state", p.lease_state.as_str())
        .header(
            "x-ms-lease-status",
            if p.lease_state == LeaseStateName::Leased {
                "locked"
            } else {
                "unlocked"
            },
        )
        .header("x-ms-server-encrypted", "false");
    if let Some(d) = p.lease_duration {
        b = b.header("x-ms-lease-duration", d.as_str());
    }
    for (_, response_name, value) in p.content.fields() {
        let value = match (response_name, value) {
            ("content-type", None) => Some("application/octet-stream"),
            (_, v) => v,
        };
        match (response_name, value) {
            (_, None) => {}
            // A ranged read does not carry the whole blob's MD5 as its own.
            ("content-md5", Some(v)) if ranged => b = b.header("x-ms-blob-content-md5", v),
            (name, Some(v)) => b = b.header(name, v),
        }
    }
    if let Some(s) = &p.snapshot {
        b = b.header("x-ms-snapshot", s);
    }
    if let Some(c) = &p.copy {
        b = with_copy(b, c)
            .header("x-ms-copy-source", &c.source)
            .header("x-ms-copy-source-snapshot", &c.source_snapshot)
            .header("x-ms-incremental-copy", "true");
        if let Some(t) = c.completed_at {
            b = b.header("x-ms-copy-completion-time", http_date(t));
        }
    }
    b
}

/// `x-ms-copy-id`, `-status` and `-destination-snapshot` of an incremental copy.
fn with_copy(b: axum::http::response::Builder, c: &CopyInfo) -> axum::http::response::Builder {
    let b = b
        .header("x-ms-copy-id", &c.id)
        .header("x-ms-copy-status", &c.status);
    match &c.destination_snapshot {
        Some(s) => b.header("x-ms-copy-destination-snapshot", s),
        None => b,
    }
}

/// The `x-ms-meta-*` headers of a request.
fn request_metadata(req: &Req<'_>) -> Result<Metadata, StoreError> {
    let mut metadata = Metadata::new();
    for (name, value) in req.headers {
        let Some(key) = name.as_str().strip_prefix("x-ms-meta-") else {
            continue;
        };
        let value = value.to_str().map_err(|_| {
            bad(
                ErrorCode::InvalidMetadata,
                format!("metadata value of {key:?} is not printable ASCII"),
            )
        })?;
        if metadata
            .insert(key.to_string(), value.to_string())
            .is_some()
        {
            return Err(bad(
                ErrorCode::InvalidMetadata,
                format!("metadata {key:?} given twice"),
            ));
        }
    }
    Ok(metadata)
}

/// Read conditions (`If-Match`, `If-Unmodified-Since`: 412; `If-None-Match`,
/// `If-Modified-Since`: 304), in RFC 9110's order. `Some` is the 304 answer.
fn check_read_conditions(
    p: &Properties,
    cond: &Conditions,
) -> Result<Option<Response>, StoreError> {
    let tag = p.etag.trim_matches('"');
    let matches = |list: &str| {
        list.split(',')
            .map(|t| t.trim().trim_start_matches("W/").trim_matches('"'))
            .any(|t| t == "*" || t == tag)
    };
    let secs = |nanos: u64| nanos / 1_000_000_000;
    let failed = |what: &str| {
        Err(bad(
            ErrorCode::ConditionNotMet,
            format!("{what} not met (ETag is {})", p.etag),
        ))
    };
    if let Some(m) = &cond.if_match {
        if !matches(m) {
            return failed("If-Match");
        }
    } else if cond
        .if_unmodified_since
        .is_some_and(|t| secs(p.last_modified) > secs(t))
    {
        return failed("If-Unmodified-Since");
    }
    let not_modified = match &cond.if_none_match {
        Some(m) => matches(m),
        None => cond
            .if_modified_since
            .is_some_and(|t| secs(p.last_modified) <= secs(t)),
    };
    if not_modified {
        let answer = with_properties(ok(304), p)
            .header("x-ms-error-code", ErrorCode::ConditionNotMet.as_str())
            .body(Body::empty())
            .expect("valid response");
        return Ok(Some(answer));
    }
    Ok(None)
}

/// Whether `include=` lists `what`.
fn includes(req: &Req<'_>, what: &str) -> bool {
    req.q("include")
        .is_some_and(|i| i.split(',').any(|x| x.trim() == what))
}

/// Split a copy-source URL (`http://host/ACCOUNT/CONTAINER/BLOB?snapshot=T`) of this account.
fn parse_copy_source(account: &str, url: &str) -> Result<(BlobPath, Option<String>), StoreError> {
    let invalid = || {
        bad(
            ErrorCode::InvalidHeaderValue,
            format!("x-ms-copy-source {url:?} is not a blob URL of account {account}"),
        )
    };
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path_and_query = rest.find('/').map_or("", |i| &rest[i..]);
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(3, '/').collect();
    if parts.len() != 3 || parts[0] != account || parts[1].is_empty() || parts[2].is_empty() {
        return Err(invalid());
    }
    let snapshot = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "snapshot")
        .map(|(_, v)| decode(v));
    let path = BlobPath {
        container: decode_path_segment(parts[1])?,
        blob: decode_path_segment(parts[2])?,
    };
    if let Some(why) = blob_name_error(&path.blob) {
        return Err(bad(ErrorCode::InvalidResourceName, why));
    }
    Ok((path, snapshot))
}

/// The container and blob a path names (`/ACCOUNT[/CONTAINER[/BLOB]]`), decoded and checked.
fn resource_names(
    state: &AppState,
    path: &str,
) -> Result<(Option<String>, Option<String>), StoreError> {
    let segments: Vec<&str> = path.trim_start_matches('/').splitn(3, '/').collect();
    if segments.first().copied() != Some(state.config.account.as_str()) {
        return Err(bad(
            ErrorCode::InvalidUri,
            format!(
                "path {path:?} does not start with /{}",
                state.config.account
            ),
        ));
    }
    let container = segments
        .get(1)
        .map(|c| decode_path_segment(c))
        .transpose()?
        .filter(|c| !c.is_empty());
    let blob = segments
        .get(2)
        .map(|b| decode_path_segment(b))
        .transpose()?
        .filter(|b| !b.is_empty());
    if let Some(why) = blob.as_deref().and_then(blob_name_error) {
        return Err(bad(ErrorCode::InvalidResourceName, why));
    }
    Ok((container, blob))
}

fn route(
    state: &AppState,
    method: &Method,
    path: &str,
    req: &Req<'_>,
    body: &[u8],
    call: Option<&ConnectionCall>,
) -> Result<Response, StoreError> {
    let (container, blob) = resource_names(state, path)?;
    let store = &*state.store;
    let comp = req.q("comp");
    let snapshot = req.q("snapshot").map(str::to_string);

    let Some(container) = container else {
        return account_request(state, method, req, comp);
    };
    let Some(blob) = blob else {
        return container_request(state, method, path, req, comp, container);
    };
    let p = BlobPath { container, blob };
    let cond = req.conditions()?;
    let call = BlobCall {
        state,
        store,
        req,
        p,
        cond,
        snapshot,
        on_connection: call,
    };
    match (method, comp) {
        (&Method::PUT, None) => call.put_blob(),
        (&Method::PUT, Some("page")) => call.put_page(body),
        (&Method::GET, Some("pagelist")) => call.get_page_ranges(),
        (&Method::PUT, Some("incrementalcopy")) => call.incremental_copy(),
        (&Method::PUT, Some("snapshot")) => call.snapshot(),
        (&Method::PUT, Some("metadata")) => call.set_metadata(),
        (&Method::GET | &Method::HEAD, Some("metadata")) => call.get_metadata(),
        (&Method::PUT, Some("properties")) => call.set_properties(),
        (&Method::PUT, Some("lease")) => call.lease(),
        (&Method::HEAD, None) | (&Method::GET, None) => call.get_blob(method),
        (&Method::DELETE, None) => call.delete_blob(),
        _ => Err(bad(
            ErrorCode::UnsupportedHttpVerb,
            format!(
                "{method} {path} (comp={}) is not supported",
                comp.unwrap_or("")
            ),
        )),
    }
}

/// A request to the account: List Containers.
fn account_request(
    state: &AppState,
    method: &Method,
    req: &Req<'_>,
    comp: Option<&str>,
) -> Result<Response, StoreError> {
    let store = &*state.store;
    let service_url = format!("/{}", state.config.account);
    match (method, comp) {
        (&Method::GET, Some("list")) => {
            let params = ListParams::from_query(|n| req.q(n))?;
            let names = store.list_containers()?;
            let (page, next) = page_names(&names, &params);
            let entries = page
                .into_iter()
                .map(|name| {
                    Ok(xml::ContainerEntry {
                        name,
                        properties: store.container_properties(name)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let xml = xml::container_list(
                &service_url,
                &params,
                &entries,
                next.as_deref(),
                includes(req, "metadata"),
            );
            Ok(built(
                ok(200).header("content-type", "application/xml"),
                Body::from(xml),
            ))
        }
        _ => Err(bad(
            ErrorCode::UnsupportedHttpVerb,
            format!("{method} on the account is not supported"),
        )),
    }
}

/// A request to a container: create it, set or get its metadata and properties, list its
/// blobs.
fn container_request(
    state: &AppState,
    method: &Method,
    path: &str,
    req: &Req<'_>,
    comp: Option<&str>,
    container: String,
) -> Result<Response, StoreError> {
    let store = &*state.store;
    let service_url = format!("/{}", state.config.account);
    match (method, req.q("restype"), comp) {
        (&Method::PUT, Some("container"), None) => {
            store.create_container_with(&container, &request_metadata(req)?)?;
            // The container exists now: whatever happens next, the answer is 201 (a client
            // told 503 would create it again and be told it already exists).
            let answer = match store.container_properties(&container) {
                Ok(props) => ok(201)
                    .header("etag", &props.etag)
                    .header("last-modified", http_date(props.last_modified)),
                Err(_) => ok(201),
            };
            Ok(built(answer, empty()))
        }
        (&Method::PUT, Some("container"), Some("metadata")) => {
            let props = store.set_container_metadata(&container, &request_metadata(req)?)?;
            Ok(built(
                ok(200)
                    .header("etag", &props.etag)
                    .header("last-modified", http_date(props.last_modified)),
                empty(),
            ))
        }
        (&Method::GET, Some("container"), Some("list")) => {
            let params = ListParams::from_query(|n| req.q(n))?;
            let blobs = store.list_blobs(&container, &params.prefix, includes(req, "snapshots"))?;
            let (page, next) = page_blobs(&blobs, &params);
            let xml = xml::blob_list(
                &service_url,
                &container,
                &params,
                &page,
                next.as_deref(),
                includes(req, "metadata"),
            );
            Ok(built(
                ok(200).header("content-type", "application/xml"),
                Body::from(xml),
            ))
        }
        (&Method::GET | &Method::HEAD, Some("container"), None | Some("metadata")) => {
            let props = store.container_properties(&container)?;
            let b = ok(200)
                .header("etag", &props.etag)
                .header("last-modified", http_date(props.last_modified))
                .header("x-ms-lease-state", "available")
                .header("x-ms-lease-status", "unlocked")
                .header("x-ms-has-immutability-policy", "false")
                .header("x-ms-has-legal-hold", "false");
            Ok(built(with_metadata(b, &props.metadata), empty()))
        }
        _ => Err(bad(
            ErrorCode::UnsupportedHttpVerb,
            format!("{method} {path} is not supported"),
        )),
    }
}

/// A response with `body`.
fn built(b: axum::http::response::Builder, body: Body) -> Response {
    b.body(body).expect("valid response")
}

fn empty() -> Body {
    Body::empty()
}

/// Snapshots are read-only: a request that would change one is refused.
fn refuse_snapshot(p: &BlobPath, snapshot: Option<&str>) -> Result<(), StoreError> {
    if snapshot.is_some() {
        return Err(bad(
            ErrorCode::InvalidQueryParameterValue,
            format!("{p}: a snapshot is read-only"),
        ));
    }
    Ok(())
}

/// One request to a blob (or one of its snapshots): what each blob operation reads.
struct BlobCall<'a> {
    state: &'a AppState,
    store: &'a dyn PageBlobStore,
    req: &'a Req<'a>,
    p: BlobPath,
    cond: Conditions,
    snapshot: Option<String>,
    /// Where the call is made, and where a Put Page may leave its sync owed.
    on_connection: Option<&'a ConnectionCall>,
}

impl BlobCall<'_> {
    /// Put Blob: a new page blob (only page blobs).
    fn put_blob(self) -> Result<Response, StoreError> {
        let BlobCall {
            store,
            req,
            p,
            cond,
            snapshot,
            ..
        } = self;
        refuse_snapshot(&p, snapshot.as_deref())?;
        match req.header("x-ms-blob-type") {
            Some("PageBlob") => {}
            Some(other) => {
                return Err(bad(
                    ErrorCode::InvalidHeaderValue,
                    format!("x-ms-blob-type {other}: only PageBlob is supported"),
                ))
            }
            None => {
                return Err(bad(
                    ErrorCode::MissingRequiredHeader,
                    "x-ms-blob-type is required",
                ))
            }
        }
        let size = req.u64_header("x-ms-blob-content-length")?.ok_or_else(|| {
            bad(
                ErrorCode::MissingRequiredHeader,
                "x-ms-blob-content-length is required for a page blob",
            )
        })?;
        let seq = req.u64_header("x-ms-blob-sequence-number")?.unwrap_or(0);
        let headers = BlobHeaders {
            metadata: request_metadata(req)?,
            content: ContentHeaders::from_request(|n| req.header(n).map(str::to_string))
                .unwrap_or_default(),
        };
        let props = store.create_page_blob_with(&p, size, seq, &cond, &headers)?;
        Ok(built(
            with_properties(ok(201), &props).header("x-ms-request-server-encrypted", "false"),
            empty(),
        ))
    }

    /// Put Page: write (`update`) or clear a range of pages.
    fn put_page(self, body: &[u8]) -> Result<Response, StoreError> {
        let BlobCall {
            store,
            req,
            p,
            cond,
            snapshot,
            on_connection,
            ..
        } = self;
        refuse_snapshot(&p, snapshot.as_deref())?;
        let (start, end) = req.range()?.ok_or_else(|| {
            bad(
                ErrorCode::MissingRequiredHeader,
                "x-ms-range or Range is required",
            )
        })?;
        let end =
            end.ok_or_else(|| bad(ErrorCode::InvalidHeaderValue, "the page range needs an end"))?;
        // `req.range()` ensures end >= start; only `+ 1` can overflow (end = 2^64 - 1).
        let len = (end - start).checked_add(1).ok_or_else(|| {
            bad(
                ErrorCode::InvalidPageRange,
                format!("range {start}-{end} is too long"),
            )
        })?;
        let props = match req.header("x-ms-page-write") {
            Some("update") => {
                if body.len() as u64 != len {
                    return Err(bad(
                        ErrorCode::InvalidHeaderValue,
                        format!("{} body bytes for a {len}-byte range", body.len()),
                    ));
                }
                match on_connection {
                    Some(call) if call.on_worker => {
                        match store.try_put_pages_owing_sync(&p, start, body, &cond)? {
                            Some((props, ticket)) => {
                                call.note(ticket);
                                props
                            }
                            None => return Err(call.waits()),
                        }
                    }
                    Some(call) => {
                        let (props, ticket) = store.put_pages_owing_sync(&p, start, body, &cond)?;
                        call.note(ticket);
                        props
                    }
                    None => store.put_pages(&p, start, body, &cond)?,
                }
            }
            Some("clear") => match on_connection {
                // Clearing is made durable at once: on the worker only where that is prompt.
                Some(call) if call.on_worker && !store.answers_promptly() => {
                    return Err(call.waits())
                }
                _ => store.clear_pages(&p, start, len, &cond)?,
            },
            Some(other) => {
                return Err(bad(
                    ErrorCode::InvalidHeaderValue,
                    format!("x-ms-page-write {other}: update or clear"),
                ))
            }
            None => {
                return Err(bad(
                    ErrorCode::MissingRequiredHeader,
                    "x-ms-page-write is required",
                ))
            }
        };
        Ok(built(
            with_properties(ok(201), &props).header("x-ms-request-server-encrypted", "false"),
            empty(),
        ))
    }

    /// Get Page Ranges, or their diff against a previous snapshot.
    fn get_page_ranges(self) -> Result<Response, StoreError> {
        let BlobCall {
            state,
            store,
            req,
            p,
            cond,
            snapshot,
            ..
        } = self;
        // An open-ended range (`bytes=0-`, what the JS SDK sends) runs to the blob's end.
        let range = req
            .range()?
            .map(|(s, e)| (s, e.unwrap_or(MAX_BLOB_SIZE - 1)));
        // The store checks the marker is one it gave.
        let marker = req.q("marker");
        let max = req
            .q("maxresults")
            .map(|m| {
                m.parse::<usize>()
                    .map_err(|_| bad(ErrorCode::InvalidQueryParameterValue, "maxresults"))
            })
            .transpose()?;
        // The managed-disk form names the previous snapshot by URL instead.
        let prev_from_url = match req.header("x-ms-previous-snapshot-url") {
            Some(url) => parse_copy_source(&state.config.account, url)?.1,
            None => None,
        };
        let prev = req.q("prevsnapshot").or(prev_from_url.as_deref());
        let props = store.properties(&p, snapshot.as_deref())?;
        if let Some(not_modified) = check_read_conditions(&props, &cond)? {
            return Ok(not_modified);
        }
        let list = store.page_ranges(&p, snapshot.as_deref(), prev, range, marker, max)?;
        let b = ok(200)
            .header("content-type", "application/xml")
            .header("x-ms-blob-content-length", props.size.to_string());
        Ok(built(
            with_properties(b, &props),
            Body::from(xml::page_list(&list)),
        ))
    }

    /// Incremental Copy Blob from a snapshot of another blob.
    fn incremental_copy(self) -> Result<Response, StoreError> {
        let BlobCall {
            state,
            store,
            req,
            p,
            snapshot,
            ..
        } = self;
        refuse_snapshot(&p, snapshot.as_deref())?;
        let source = req.header("x-ms-copy-source").ok_or_else(|| {
            bad(
                ErrorCode::MissingRequiredHeader,
                "x-ms-copy-source is required",
            )
        })?;
        let (source, source_snapshot) = parse_copy_source(&state.config.account, source)?;
        let info = store.incremental_copy(&p, &source, source_snapshot.as_deref())?;
        // The copy is started now: whatever happens next, the answer is 202 (a client told
        // 503 would start it again and be refused, the snapshot having been copied).
        let answer = match store.properties(&p, None) {
            Ok(props) => with_properties(ok(202), &props),
            Err(_) => ok(202),
        };
        Ok(built(with_copy(answer, &info), empty()))
    }

    /// Snapshot Blob.
    fn snapshot(self) -> Result<Response, StoreError> {
        let BlobCall {
            store,
            p,
            cond,
            snapshot,
            ..
        } = self;
        refuse_snapshot(&p, snapshot.as_deref())?;
        let id = store.snapshot(&p, &cond)?;
        // The snapshot exists now: whatever happens next, the answer is 201 (a client
        // told otherwise would take another). The ETag and time are the snapshot's.
        let answer = match store.properties(&p, Some(&id)) {
            Ok(props) => with_properties(ok(201), &props),
            Err(_) => ok(201),
        };
        Ok(built(answer.header("x-ms-snapshot", id), empty()))
    }

    /// Set Blob Metadata.
    fn set_metadata(self) -> Result<Response, StoreError> {
        let BlobCall {
            store,
            req,
            p,
            cond,
            snapshot,
            ..
        } = self;
        refuse_snapshot(&p, snapshot.as_deref())?;
        let props = store.set_metadata(&p, &request_metadata(req)?, &cond)?;
        Ok(built(with_properties(ok(200), &props), empty()))
    }

    /// Get Blob Metadata.
    fn get_metadata(self) -> Result<Response, StoreError> {
        let BlobCall {
            store,
            p,
            cond,
            snapshot,
            ..
        } = self;
        let props = store.properties(&p, snapshot.as_deref())?;
        if let Some(not_modified) = check_read_conditions(&props, &cond)? {
            return Ok(not_modified);
        }
        Ok(built(
            with_metadata(with_properties(ok(200), &props), &props.metadata),
            empty(),
        ))
    }

    /// Set Blob Properties: resize, sequence number and content headers.
    fn set_properties(self) -> Result<Response, StoreError> {
        let BlobCall {
            store,
            req,
            p,
            cond,
            snapshot,
            ..
        } = self;
        refuse_snapshot(&p, snapshot.as_deref())?;
        // Everything the request asks for is read and checked before anything changes, so
        // a bad header never leaves part of the request applied.
        let changes = PropertyChanges {
            size: req.u64_header("x-ms-blob-content-length")?,
            sequence_number: sequence_number_action(req)?,
            content: ContentHeaders::from_request(|n| req.header(n).map(str::to_string)),
        };
        // Every part checked against the blob as it was, and all applied or none
        // (`PageBlobStore::set_properties`); a request with none of them changes nothing.
        let props = store.set_properties(&p, &changes, &cond)?;
        Ok(built(with_properties(ok(200), &props), empty()))
    }

    /// Lease Blob: acquire, renew, release, change or break.
    fn lease(self) -> Result<Response, StoreError> {
        let BlobCall {
            store,
            req,
            p,
            cond,
            snapshot,
            ..
        } = self;
        refuse_snapshot(&p, snapshot.as_deref())?;
        let id = || {
            req.header("x-ms-lease-id")
                .map(str::to_string)
                .ok_or_else(|| {
                    bad(
                        ErrorCode::MissingRequiredHeader,
                        "x-ms-lease-id is required",
                    )
                })
        };
        let proposed = || {
            req.header("x-ms-proposed-lease-id")
                .map(str::to_string)
                .ok_or_else(|| {
                    bad(
                        ErrorCode::MissingRequiredHeader,
                        "x-ms-proposed-lease-id is required",
                    )
                })
        };
        let secs = |name: &'static str| -> Result<Option<i64>, StoreError> {
            req.header(name)
                .map(|v| {
                    v.trim()
                        .parse::<i64>()
                        .map_err(|_| bad(ErrorCode::InvalidHeaderValue, format!("{name}: {v:?}")))
                })
                .transpose()
        };
        let (action, status) = match req.header("x-ms-lease-action") {
            Some("acquire") => {
                let d = secs("x-ms-lease-duration")?.unwrap_or(-1);
                let duration_secs =
                    if d == -1 {
                        None
                    } else {
                        Some(u32::try_from(d).map_err(|_| {
                            bad(ErrorCode::InvalidHeaderValue, "x-ms-lease-duration")
                        })?)
                    };
                (
                    LeaseAction::Acquire {
                        proposed_id: proposed()?,
                        duration_secs,
                    },
                    201,
                )
            }
            Some("renew") => (LeaseAction::Renew { id: id()? }, 200),
            Some("release") => (LeaseAction::Release { id: id()? }, 200),
            Some("change") => (
                LeaseAction::Change {
                    id: id()?,
                    proposed_id: proposed()?,
                },
                200,
            ),
            Some("break") => {
                let period = secs("x-ms-lease-break-period")?
                    .map(|v| u32::try_from(v.clamp(0, 60)).unwrap_or(0));
                (
                    LeaseAction::Break {
                        period_secs: period,
                    },
                    202,
                )
            }
            _ => {
                return Err(bad(
                    ErrorCode::InvalidHeaderValue,
                    "x-ms-lease-action must be acquire, renew, release, change or break",
                ))
            }
        };
        let lease_cond = Conditions {
            lease_id: None,
            ..cond
        };
        let answer = store.lease(&p, &action, &lease_cond)?;
        let mut b = ok(status).header("etag", &answer.etag);
        if let Some(id) = &answer.lease_id {
            b = b.header("x-ms-lease-id", id);
        }
        if let Some(t) = answer.lease_time_secs {
            b = b.header("x-ms-lease-time", t.to_string());
        }
        Ok(built(b, empty()))
    }

    /// Get Blob (whole or a range) and Get Blob Properties (`HEAD`).
    fn get_blob(self, method: &Method) -> Result<Response, StoreError> {
        let BlobCall {
            state,
            store,
            req,
            p,
            cond,
            snapshot,
            on_connection,
        } = self;
        let props = store.properties(&p, snapshot.as_deref())?;
        if let Some(not_modified) = check_read_conditions(&props, &cond)? {
            return Ok(not_modified);
        }
        let range = req.range()?;
        let base = with_all_properties(ok(200), &props, method == Method::GET && range.is_some());
        if method == Method::HEAD {
            return Ok(built(
                base.header("content-length", props.size.to_string()),
                empty(),
            ));
        }
        let (start, end, partial) = match range {
            Some((s, e)) => {
                if s >= props.size {
                    return Err(bad(
                        ErrorCode::InvalidRange,
                        format!(
                            "{p}: range starts at {s}, past the {}-byte blob",
                            props.size
                        ),
                    ));
                }
                (s, e.unwrap_or(u64::MAX).min(props.size - 1), true)
            }
            None if props.size == 0 => {
                return Ok(built(base.header("content-length", "0"), empty()))
            }
            None => (0, props.size - 1, false),
        };
        let len = end - start + 1;
        if len > MAX_READ_BYTES {
            return Err(bad(
                ErrorCode::InvalidRange,
                format!("{p}: {len} bytes in one read; use ranges of at most {MAX_READ_BYTES}"),
            ));
        }
        let body = if len <= READ_CHUNK_BYTES as u64 {
            let mut buf = vec![0u8; len as usize];
            match on_connection {
                // On the async worker only from memory (the page cache): a read that would
                // wait for the device, or for a write of these bytes, is made on a blocking
                // thread.
                Some(call) if call.on_worker => {
                    if !store.try_read(&p, snapshot.as_deref(), start, &mut buf)? {
                        return Err(call.waits());
                    }
                }
                _ => store.read(&p, snapshot.as_deref(), start, &mut buf)?,
            }
            Body::from(buf)
        } else {
            BlobRead {
                store: Arc::clone(&state.store),
                path: p.clone(),
                snapshot: snapshot.clone(),
                start,
                len,
                etag: props.etag.clone(),
            }
            .into_body()
        };
        let b = if partial {
            base.status(206).header(
                "content-range",
                format!("bytes {start}-{end}/{}", props.size),
            )
        } else {
            base
        };
        Ok(built(b.header("content-length", len.to_string()), body))
    }

    /// Delete Blob, a snapshot, or its snapshots.
    fn delete_blob(self) -> Result<Response, StoreError> {
        let BlobCall {
            store,
            req,
            p,
            cond,
            snapshot,
            ..
        } = self;
        let mode = match req.header("x-ms-delete-snapshots") {
            None => None,
            Some("include") => Some(DeleteSnapshots::Include),
            Some("only") => Some(DeleteSnapshots::Only),
            Some(other) => {
                return Err(bad(
                    ErrorCode::InvalidHeaderValue,
                    format!("x-ms-delete-snapshots {other}: include or only"),
                ))
            }
        };
        store.delete_blob(&p, snapshot.as_deref(), mode, &cond)?;
        Ok(built(ok(202), empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str) -> axum::http::request::Parts {
        let (parts, ()) = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap()
            .into_parts();
        parts
    }

    #[test]
    fn only_small_put_pages_are_made_on_the_async_worker() {
        let page = "/devstoreaccount1/c/b?comp=page";
        assert!(is_small_put_page(&parts("PUT", page), 64 << 10));
        assert!(is_small_put_page(
            &parts("PUT", "/a/c/b?timeout=30&comp=page"),
            INLINE_PUT_PAGE_BYTES
        ));
        assert!(!is_small_put_page(
            &parts("PUT", page),
            INLINE_PUT_PAGE_BYTES + 1
        ));
        assert!(!is_small_put_page(&parts("GET", page), 0));
        assert!(!is_small_put_page(&parts("PUT", "/a/c/b?comp=pagelist"), 0));
        assert!(!is_small_put_page(&parts("PUT", "/a/c/b?comp=snapshot"), 0));
        assert!(!is_small_put_page(&parts("PUT", "/a/c/b"), 0));
    }

    #[test]
    fn request_ids_are_distinct_guids() {
        let ids: std::collections::BTreeSet<String> =
            (0..1000).map(|n| request_guid(7, n)).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            let groups: Vec<&str> = id.split('-').collect();
            let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
            assert_eq!(lens, [8, 4, 4, 4, 12], "{id}");
            assert!(groups[2].starts_with('4'), "{id}");
            assert!(matches!(groups[3].as_bytes()[0], b'8'..=b'b'), "{id}");
        }
        assert_ne!(request_guid(7, 0), request_guid(8, 0));
    }

    #[test]
    fn content_crc64_is_azure_storages() {
        // Vectors from the Azure SDK's own CRC-64 (azure-storage-extensions `crc64.compute`).
        assert_eq!(content_crc64(b""), 0);
        assert_eq!(content_crc64(b"123456789"), 0xae8b_1486_0a79_9888);
        assert_eq!(content_crc64(&[0x5a; 512]), 0x070d_59de_60cf_31c5);
    }

    #[test]
    fn a_sent_crc64_must_be_the_bodys() {
        let mut headers = HeaderMap::new();
        let req = |headers: &HeaderMap| -> Result<(), StoreError> {
            let req = Req {
                headers,
                query: Vec::new(),
            };
            check_content_crc64(&req, &[0x5a; 512])
        };
        assert!(req(&headers).is_ok(), "not sent: not checked");
        headers.insert("x-ms-content-crc64", "xTHPYN5ZDQc=".parse().unwrap());
        assert!(req(&headers).is_ok());
        headers.insert("x-ms-content-crc64", "AAAAAAAAAAA=".parse().unwrap());
        let e = req(&headers).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Crc64Mismatch), "{e}");
    }
}
