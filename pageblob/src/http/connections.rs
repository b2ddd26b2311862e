//! The Blob REST server's connections: accepting them under a cap, closing the idle, the slow
//! and the stalled, and making room for a new client by closing the idlest connection instead
//! of letting a crowd of silent sockets starve everyone.
//!
//! Rules (all in [`ServerLimits`]):
//! - at most `max_connections` are open. A new connection past the cap closes the idlest open
//!   one: never one in the middle of a request, and connections that have never sent an
//!   authenticated request go before those that have, oldest activity first. When every
//!   connection is inside a request the newcomer gets `503 ServerBusy` and is closed.
//! - a connection outside any request (keep-alive idle, or still sending its headers) for
//!   `idle_timeout` is closed; so is one whose answer has not moved for `stall_timeout`
//!   (a client that stopped reading).
//! - request heads are bounded by `max_header_bytes`: refused with 431 (hyper's read buffer,
//!   [`READ_BUFFER_BYTES`] or more, bounds what it holds before that check).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use super::coalescing_io::{CoalescingIo, PaySync, SyncDebt};

/// Bounds on what clients may hold of the server.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Connections open at once (each is a file descriptor and a read buffer).
    pub max_connections: usize,
    /// A connection outside any request for this long is closed (covers slow headers).
    pub idle_timeout: Duration,
    /// An answer that the client has not taken any of for this long is abandoned.
    pub stall_timeout: Duration,
    /// Largest request head (request line and headers), bytes; at least 8 KiB.
    pub max_header_bytes: usize,
}

/// Smallest read buffer hyper accepts.
const MIN_HEADER_BYTES: usize = 8 << 10;
/// hyper's read buffer per connection at most (it grows there only while reads fill it): a Put
/// Page body of a few records comes in one read, instead of a read per 64 KiB. Replicating 1
/// GiB through the server on 2 cores: 1.58 → 1.48 s.
pub const READ_BUFFER_BYTES: usize = 256 << 10;

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 512,
            idle_timeout: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(60),
            max_header_bytes: 64 << 10,
        }
    }
}

impl ServerLimits {
    /// These limits with the connection cap lowered to fit `open_files` descriptors, keeping
    /// `reserve` for the store's own files and the listener.
    pub fn fitting_open_files(mut self, open_files: u64, reserve: u64) -> ServerLimits {
        let room = open_files.saturating_sub(reserve).max(1);
        self.max_connections = self.max_connections.min(room as usize);
        self
    }
}

/// One open connection, as the accept loop and the request handler see it.
#[derive(Debug)]
pub struct Connection {
    /// Requests whose handler is running.
    in_handler: AtomicUsize,
    /// Answers still being sent.
    in_body: AtomicUsize,
    /// Milliseconds since the registry's epoch of the last sign of life.
    last_active_ms: AtomicU64,
    /// A request on this connection passed authentication.
    authenticated: AtomicBool,
    /// Chosen to make room; closing.
    evicted: AtomicBool,
    close: Notify,
    epoch: Instant,
    /// The client's address (a SAS may name the addresses it is good from).
    peer: std::net::IpAddr,
    /// The sync owed before this connection's answers may leave.
    debt: Arc<SyncDebt>,
}

impl Connection {
    fn new(epoch: Instant, peer: std::net::IpAddr) -> Connection {
        let c = Connection {
            in_handler: AtomicUsize::new(0),
            in_body: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(0),
            authenticated: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            close: Notify::new(),
            epoch,
            peer,
            debt: Arc::default(),
        };
        c.touch();
        c
    }

    /// The client's IP address.
    pub fn peer(&self) -> std::net::IpAddr {
        self.peer
    }

    /// The answers on this connection from now on leave only once the store's writes up to
    /// `ticket` are durable (`pay` makes them so).
    pub fn owe_sync(&self, ticket: u64, pay: PaySync) {
        self.debt.owe(ticket, pay);
    }

    /// A request on this connection carried the account's key.
    pub fn mark_authenticated(&self) {
        self.authenticated.store(true, Ordering::Relaxed);
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_active_ms.store(ms, Ordering::Relaxed);
    }

    fn last_active(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed))
    }

    fn idle(&self) -> bool {
        self.in_handler.load(Ordering::Relaxed) == 0 && self.in_body.load(Ordering::Relaxed) == 0
    }
}

/// Counts a running handler; dropped (also when hyper drops the request) it uncounts.
struct InHandler(Arc<Connection>);

impl Drop for InHandler {
    fn drop(&mut self) {
        self.0.in_handler.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Counts an answer being sent; lives inside the response body.
struct InBody(Arc<Connection>);

impl Drop for InBody {
    fn drop(&mut self) {
        self.0.in_body.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// The open connections, by acceptance order.
struct Registry {
    open: Mutex<BTreeMap<u64, Arc<Connection>>>,
    epoch: Instant,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Connection>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections open and not already closing.
    fn live(&self) -> usize {
        self.lock()
            .values()
            .filter(|c| !c.evicted.load(Ordering::Relaxed))
            .count()
    }

    /// Mark the connection to close for a newcomer: idle ones only, never-authenticated before
    /// authenticated, then the longest idle. False when every connection is inside a request.
    fn evict_idlest(&self) -> bool {
        let open = self.lock();
        let victim = open
            .values()
            .filter(|c| !c.evicted.load(Ordering::Relaxed) && c.idle())
            .min_by_key(|c| {
                (
                    c.authenticated.load(Ordering::Relaxed),
                    c.last_active_ms.load(Ordering::Relaxed),
                )
            });
        match victim {
            Some(c) => {
                c.evicted.store(true, Ordering::Relaxed);
                c.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Accept connections until `shutdown` completes, serving each request with `service`; then
/// let requests in progress finish and return.
pub async fn accept_loop<S, F>(
    listener: tokio::net::TcpListener,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    service: S,
) -> std::io::Result<()>
where
    S: Fn(Arc<Connection>, hyper::Request<Body>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let registry = Arc::new(Registry {
        open: Mutex::new(BTreeMap::new()),
        epoch: Instant::now(),
    });
    let (stopping_tx, stopping) = watch::channel(false);
    // Every connection task holds a sender: when all are gone, every connection is closed.
    let (running, mut all_closed) = mpsc::channel::<()>(1);
    let mut next_id = 0u64;
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => (tcp, peer.ip()),
                Err(_) => {
                    // Out of descriptors or a connection reset before we took it: the cap
                    // should prevent the first; either way, wait a moment and go on.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // Small answers after big uploads must not wait for delayed ACKs (Nagle).
        let _ = tcp.set_nodelay(true);
        if registry.live() >= limits.max_connections && !registry.evict_idlest() {
            tokio::spawn(refuse_busy(tcp));
            continue;
        }
        let conn = Arc::new(Connection::new(registry.epoch, peer));
        next_id += 1;
        let id = next_id;
        registry.lock().insert(id, Arc::clone(&conn));
        let task = serve_connection(
            tcp,
            Arc::clone(&conn),
            limits.clone(),
            stopping.clone(),
            service.clone(),
        );
        let registry = Arc::clone(&registry);
        let running = running.clone();
        tokio::spawn(async move {
            task.await;
            registry.lock().remove(&id);
            drop(running);
        });
    }
    let _ = stopping_tx.send(true);
    drop(running);
    let _ = all_closed.recv().await;
    Ok(())
}

/// The size of a request's head as sent: request line and header lines.
fn head_bytes<B>(request: &hyper::Request<B>) -> usize {
    let target = request
        .uri()
        .path_and_query()
        .map_or(1, |p| p.as_str().len());
    let line = request.method().as_str().len() + target + " HTTP/1.1\r\n".len();
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + ": \r\n".len())
        .sum();
    line + headers + 2
}

/// Serve one connection until the client leaves, it idles or stalls past its limit, it is
/// evicted, or the server stops.
async fn serve_connection<S, F>(
    tcp: tokio::net::TcpStream,
    conn: Arc<Connection>,
    limits: ServerLimits,
    mut stopping: watch::Receiver<bool>,
    service: S,
) where
    S: Fn(Arc<Connection>, hyper::Request<Body>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let for_requests = Arc::clone(&conn);
    let max_head = limits.max_header_bytes.max(MIN_HEADER_BYTES);
    let svc = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let conn = Arc::clone(&for_requests);
        let service = service.clone();
        let head_too_large = head_bytes(&request) > max_head;
        async move {
            if head_too_large {
                return Ok(Response::builder()
                    .status(hyper::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
                    .header("connection", "close")
                    .body(Body::empty())
                    .expect("valid response"));
            }
            conn.in_handler.fetch_add(1, Ordering::Relaxed);
            let handler = InHandler(Arc::clone(&conn));
            let response = service(Arc::clone(&conn), request.map(Body::new)).await;
            conn.in_body.fetch_add(1, Ordering::Relaxed);
            let in_body = InBody(Arc::clone(&conn));
            drop(handler);
            Ok::<_, Infallible>(response.map(move |body| {
                Body::new(body.map_frame(move |frame| {
                    in_body.0.touch();
                    frame
                }))
            }))
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .max_buf_size(max_head.max(READ_BUFFER_BYTES))
        .serve_connection(
            hyper_util::rt::TokioIo::new(CoalescingIo::owing(tcp, Arc::clone(&conn.debt))),
            svc,
        );
    tokio::pin!(served);
    let mut closing = false;
    loop {
        tokio::select! {
            _ = served.as_mut() => return,
            () = conn.close.notified() => return,
            () = watchdog(&conn, &limits) => return,
            _ = stopping.changed(), if !closing => {
                if conn.idle() {
                    return;
                }
                served.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Completes when the connection has been outside any request for `idle_timeout`, or its
/// answer has not moved for `stall_timeout`.
async fn watchdog(conn: &Connection, limits: &ServerLimits) {
    loop {
        let limit = if conn.in_handler.load(Ordering::Relaxed) > 0 {
            // The handler bounds its own waits (the request body's read timeout).
            None
        } else if conn.in_body.load(Ordering::Relaxed) > 0 {
            Some(limits.stall_timeout)
        } else {
            Some(limits.idle_timeout)
        };
        match limit {
            None => tokio::time::sleep(limits.idle_timeout).await,
            Some(limit) => {
                let deadline = conn.last_active() + limit;
                if Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep_until(deadline).await;
            }
        }
    }
}

/// Tell a connection past the cap, when nobody can make room, that the server is busy.
async fn refuse_busy(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let answer = b"HTTP/1.1 503 Server Busy\r\nx-ms-error-code: ServerBusy\r\n\
content-length: 0\r\nconnection: close\r\n\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = tcp.write_all(answer).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}
