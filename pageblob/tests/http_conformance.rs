//! The HTTP client against the HTTP server over the emulator, in one process: the same
//! conformance suite the emulator passes directly must pass through the REST API.

use std::sync::Arc;

use pageblob::clock::ManualClock;
use pageblob::conformance;
use pageblob::data_log::Durability;
use pageblob::http::client::HttpStore;
use pageblob::http::connections::ServerLimits;
use pageblob::http::server::{serve_with_limits, ServerConfig};
use pageblob::http::shared_key::{decode_key, DEV_ACCOUNT, DEV_KEY};
use pageblob::upload::upload_parallel;
use pageblob::{BlobPath, Conditions, Emulator, ErrorCode, PageBlobStore, Profile};

const START: u64 = 1_700_000_000_000_000_000;

struct Served {
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    endpoint: String,
    /// The server's clock: clients date their requests by it.
    clock: Arc<dyn pageblob::clock::Clock>,
}

impl Served {
    /// `host:port` the server listens on.
    fn address(&self) -> String {
        let rest = self.endpoint.trim_start_matches("http://");
        rest.split('/').next().unwrap().to_string()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = &self.runtime;
    }
}

fn served(dir: &std::path::Path, profile: Profile, clock: &Arc<ManualClock>) -> Served {
    served_at(dir, profile, Durability::Process, clock)
}

fn served_at(
    dir: &std::path::Path,
    profile: Profile,
    durability: Durability,
    clock: &Arc<ManualClock>,
) -> Served {
    let store = Emulator::open(dir, profile, durability, clock.clone()).unwrap();
    serve_store(Arc::new(store), clock)
}

/// Serve any store on a free loopback port until the returned handle drops.
fn serve_store(store: Arc<dyn PageBlobStore>, clock: &Arc<ManualClock>) -> Served {
    serve_limited(store, clock, ServerLimits::default())
}

fn serve_limited(
    store: Arc<dyn PageBlobStore>,
    clock: &Arc<ManualClock>,
    limits: ServerLimits,
) -> Served {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let config = ServerConfig {
        account: DEV_ACCOUNT.into(),
        key: decode_key(DEV_KEY).unwrap(),
    };
    let clock: Arc<dyn pageblob::clock::Clock> = clock.clone();
    runtime.spawn(serve_with_limits(
        listener,
        store,
        config,
        clock.clone(),
        limits,
        async {
            let _ = rx.await;
        },
    ));
    Served {
        runtime,
        stop: Some(tx),
        endpoint: format!("http://{addr}/{DEV_ACCOUNT}"),
        clock,
    }
}

fn client(s: &Served, key: &str) -> HttpStore {
    HttpStore::new(&s.endpoint, DEV_ACCOUNT, &decode_key(key).unwrap()).with_clock(s.clock.clone())
}

#[test]
fn http_client_and_server_pass_the_standard_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let s = served(dir.path(), Profile::Standard, &clock);
    conformance::standard_suite(&client(&s, DEV_KEY), &clock, "conformance");
}

/// At power durability (`blob serve`'s default) a Put Page is made on the server's async
/// worker where it need not wait and on a blocking thread where it must (bytes a snapshot
/// shares, conditions a write changes, clears): the suite holds either way.
#[test]
fn a_server_at_power_durability_passes_the_standard_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let s = served_at(dir.path(), Profile::Standard, Durability::Power, &clock);
    conformance::standard_suite(&client(&s, DEV_KEY), &clock, "conformance");
}

/// A Get Blob is made on the server's async worker from memory; one whose bytes the kernel
/// has dropped from its cache would wait for the device, and is made on a blocking thread
/// instead: the answer is the same bytes either way.
#[test]
fn a_read_of_bytes_no_longer_in_memory_is_answered_all_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let s = served_at(dir.path(), Profile::Standard, Durability::Power, &clock);
    let c = client(&s, DEV_KEY);
    c.create_container("cold").unwrap();
    let p = BlobPath::new("cold", "disk");
    let none = Conditions::default();
    c.create_page_blob(&p, 4 << 20, 0, &none).unwrap();
    let data: Vec<u8> = (0..(3u32 << 20) / 4)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect();
    for (k, chunk) in data.chunks(1 << 20).enumerate() {
        c.put_pages(&p, (k as u64) << 20, chunk, &none).unwrap();
    }
    let snapshot = c.snapshot(&p, &none).unwrap();
    c.put_pages(&p, 0, &vec![9u8; 1 << 20], &none).unwrap();
    let read = |snapshot: Option<&str>, len: usize| {
        let mut back = vec![0u8; len];
        c.read(&p, snapshot, 0, &mut back).unwrap();
        back
    };
    for round in ["in memory", "dropped from the cache"] {
        if round != "in memory" {
            // Written back (power durability), then dropped.
            let _dropped = pageblob::fs::drop_from_page_cache(dir.path()).unwrap();
        }
        assert!(
            read(Some(&snapshot), data.len()) == data,
            "{round}: the snapshot"
        );
        let base = read(None, data.len());
        assert!(base[..1 << 20].iter().all(|&b| b == 9), "{round}: the base");
        assert!(base[1 << 20..] == data[1 << 20..], "{round}: the base");
    }
}

#[test]
fn http_client_and_server_enforce_the_premium_snapshot_limit() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let s = served(
        dir.path(),
        Profile::Premium {
            snapshot_spacing: false,
        },
        &clock,
    );
    conformance::premium_snapshot_limit(&client(&s, DEV_KEY), "premium");
}

#[test]
fn wrong_account_key_is_authentication_failed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let s = served(dir.path(), Profile::Standard, &clock);
    let wrong = client(
        &s,
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    );
    assert_eq!(
        wrong.create_container("nope").unwrap_err().code(),
        Some(ErrorCode::AuthenticationFailed)
    );
}

#[test]
fn parallel_upload_with_many_threads_lands_every_page() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let s = served(dir.path(), Profile::Standard, &clock);
    let c = client(&s, DEV_KEY);
    c.create_container("upload").unwrap();
    let p = BlobPath::new("upload", "disk");
    let data: Vec<u8> = (0..(37u32 << 20) / 4)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect();
    c.create_page_blob(&p, 64 << 20, 0, &Conditions::default())
        .unwrap();
    upload_parallel(&c, &p, 1 << 20, &data, 8).unwrap();
    let mut back = vec![0u8; data.len()];
    c.read(&p, None, 1 << 20, &mut back).unwrap();
    assert!(back == data);
    let ranges = c
        .page_ranges(&p, None, None, None, None, None)
        .unwrap()
        .ranges;
    assert_eq!(
        (ranges.len(), ranges[0].start, ranges[0].end),
        (1, 1 << 20, (1 << 20) + data.len() as u64 - 1)
    );
}

#[test]
fn client_retries_through_injected_server_busy_and_the_suite_still_holds() {
    use pageblob::faults::{FaultConfig, FaultyStore};
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let emulator = Emulator::open(
        dir.path(),
        Profile::Standard,
        Durability::Process,
        clock.clone(),
    )
    .unwrap();
    let config = FaultConfig {
        seed: 7,
        server_busy: 0.1,
        ..Default::default()
    };
    let faulty = Arc::new(FaultyStore::new(emulator, config));
    let s = serve_store(faulty.clone(), &clock);
    conformance::standard_suite(&client(&s, DEV_KEY), &clock, "faulty");
    assert!(
        faulty.injected() > 10,
        "only {} faults injected",
        faulty.injected()
    );
}

#[test]
fn injected_faults_are_the_same_for_the_same_seed() {
    use pageblob::faults::{FaultConfig, FaultyStore};
    let run = |seed| {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(START));
        let e = Emulator::open(dir.path(), Profile::Standard, Durability::Process, clock).unwrap();
        let f = FaultyStore::new(
            e,
            FaultConfig {
                seed,
                server_busy: 0.3,
                ..Default::default()
            },
        );
        (0..200)
            .map(|_| f.list_containers().is_err())
            .collect::<Vec<bool>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

/// One raw HTTP/1.1 exchange with the server: `headers` are sent as given (signed by
/// [`signed`] or not), then `body`; the answer's status line and headers.
fn exchange(
    s: &Served,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> String {
    use std::io::{Read, Write};
    let addr = s.address();
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).unwrap();
    let _ = tcp.write_all(body);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // The status and headers are enough; a server that waits for a body it should not read
    // times out here.
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(e) => panic!("no answer from the server: {e}"),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// `headers` plus a Shared Key signature of them with the development key.
fn signed(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(&str, String)],
) -> Vec<(String, String)> {
    use pageblob::http::shared_key::{sign, string_to_sign};
    let mut all: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect();
    all.push(("x-ms-version".into(), "2021-08-06".into()));
    let sts = string_to_sign(
        method,
        DEV_ACCOUNT,
        path,
        &pageblob::http::server::parse_query(query),
        &all,
    );
    let signature = sign(&decode_key(DEV_KEY).unwrap(), &sts);
    all.push((
        "authorization".into(),
        format!("SharedKey {DEV_ACCOUNT}:{signature}"),
    ));
    all
}

#[test]
fn a_request_without_the_key_is_refused_before_its_body_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let s = served(dir.path(), Profile::Standard, &clock);
    // Declares 4 MiB and sends none of it: the answer must not wait for the body.
    let headers = [
        ("content-length".to_string(), (4 << 20).to_string()),
        (
            "authorization".to_string(),
            format!("SharedKey {DEV_ACCOUNT}:AAAA"),
        ),
    ];
    let answer = exchange(
        &s,
        "PUT",
        &format!("/{DEV_ACCOUNT}/c/b?comp=page"),
        &headers,
        &[],
    );
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("AuthenticationFailed"), "{answer}");
}

#[test]
fn signed_requests_carry_a_date_within_15_minutes_of_the_server() {
    use pageblob::timestamp::http_date;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let s = served(dir.path(), Profile::Standard, &clock);
    let path = format!("/{DEV_ACCOUNT}/dated");
    let minutes = |m: i64| (START as i64 + m * 60_000_000_000) as u64;
    for (date, ok) in [
        (Some(http_date(minutes(-14))), true),
        (Some(http_date(minutes(-16))), false),
        (Some(http_date(minutes(16))), false),
        (Some("yesterday".to_string()), false),
        (None, false),
    ] {
        let mut h = vec![];
        if let Some(d) = &date {
            h.push(("x-ms-date", d.clone()));
        }
        let answer = exchange(
            &s,
            "GET",
            &format!("{path}?restype=container"),
            &signed("GET", &path, "restype=container", &h),
            &[],
        );
        // A container that does not exist answers 404 once the request is let in.
        let let_in = answer.starts_with("HTTP/1.1 404");
        assert_eq!(let_in, ok, "date {date:?}: {answer}");
        if !ok {
            assert!(answer.contains("AuthenticationFailed"), "{answer}");
        }
    }
}

#[test]
fn a_put_page_replayed_with_another_body_fails_its_content_md5() {
    use base64::Engine as _;
    use pageblob::timestamp::http_date;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let s = served(dir.path(), Profile::Standard, &clock);
    let c = client(&s, DEV_KEY);
    c.create_container("cmd5").unwrap();
    c.create_page_blob(&BlobPath::new("cmd5", "b"), 4096, 0, &Conditions::default())
        .unwrap();
    let page = vec![0x5au8; 512];
    let md5 =
        base64::engine::general_purpose::STANDARD.encode(<md5::Md5 as md5::Digest>::digest(&page));
    let path = format!("/{DEV_ACCOUNT}/cmd5/b");
    let headers = signed(
        "PUT",
        &path,
        "comp=page",
        &[
            ("content-length", "512".into()),
            ("content-md5", md5),
            ("x-ms-date", http_date(START)),
            ("x-ms-page-write", "update".into()),
            ("x-ms-range", "bytes=0-511".into()),
        ],
    );
    let uri = format!("{path}?comp=page");
    let answer = exchange(&s, "PUT", &uri, &headers, &page);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    // The captured request with another body of the same length.
    let answer = exchange(&s, "PUT", &uri, &headers, &[0x66; 512]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("Md5Mismatch"), "{answer}");
    let mut read = vec![0u8; 512];
    c.read(&BlobPath::new("cmd5", "b"), None, 0, &mut read)
        .unwrap();
    assert_eq!(read, page, "the replayed body was not written");
}

/// Past the connection cap a newcomer closes the idlest connection, never one inside a
/// request; connections idle or stuck in their headers past the idle timeout are closed.
#[test]
fn the_connection_cap_makes_room_for_clients_and_idle_connections_time_out() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let store = Emulator::open(
        dir.path(),
        Profile::Standard,
        Durability::Process,
        clock.clone(),
    )
    .unwrap();
    let limits = ServerLimits {
        max_connections: 16,
        idle_timeout: Duration::from_secs(2),
        ..ServerLimits::default()
    };
    let s = serve_limited(Arc::new(store), &clock, limits);
    let c = client(&s, DEV_KEY);
    c.create_container("capped").unwrap();
    let p = BlobPath::new("capped", "b");
    c.create_page_blob(&p, 8 << 20, 0, &Conditions::default())
        .unwrap();
    c.put_pages(&p, 0, &vec![7u8; 4 << 20], &Conditions::default())
        .unwrap();
    c.put_pages(&p, 4 << 20, &vec![9u8; 4 << 20], &Conditions::default())
        .unwrap();
    let addr = s.address();
    // A read inside its answer: the client takes the headers, then stops reading.
    let path = format!("/{DEV_ACCOUNT}/capped/b");
    let mut busy = std::net::TcpStream::connect(&addr).unwrap();
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n");
    for (n, v) in signed(
        "GET",
        &path,
        "",
        &[("x-ms-date", pageblob::timestamp::http_date(START))],
    ) {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    busy.write_all(head.as_bytes()).unwrap();
    let mut first = [0u8; 12];
    busy.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // Ten times the cap of silent and half-sent connections.
    let mut crowd = Vec::new();
    for i in 0..160 {
        let mut t = std::net::TcpStream::connect(&addr).unwrap();
        if i % 2 == 0 {
            t.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        }
        crowd.push(t);
    }
    let mut back = vec![0u8; 4096];
    c.read(&p, None, 0, &mut back).unwrap();
    assert!(
        back.iter().all(|&b| b == 7),
        "the client is served past the cap"
    );
    // Nearly all of the crowd was closed to make room (at most the cap can still be open).
    let is_closed = |t: &mut std::net::TcpStream| {
        t.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        match t.read(&mut [0u8; 1]) {
            Ok(0) => true,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            Ok(_) => panic!("an answer to a request never sent"),
        }
    };
    let closed = crowd.iter_mut().map(is_closed).filter(|&c| c).count();
    assert!(
        closed >= 160 - 16,
        "only {closed} of 160 crowding connections were closed"
    );
    // The answer in progress was never chosen: all of it arrives.
    busy.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    busy.take(8 << 20).read_to_end(&mut rest).unwrap();
    assert!(
        rest.len() >= 8 << 20,
        "the busy answer was cut at {} bytes",
        rest.len()
    );
    // A connection that sends half its headers and waits is closed after the idle timeout.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let closed_after = match slow.read(&mut [0u8; 64]) {
        Ok(0) => started.elapsed(),
        other => panic!("slow connection not closed: {other:?}"),
    };
    assert!(
        closed_after < Duration::from_secs(5),
        "closed after {closed_after:?}"
    );
}

/// A large Get Blob answer goes out in chunks; a write to the blob while it is on the wire
/// cuts it short (the client sees too few bytes) instead of mixing two versions.
#[test]
fn a_streamed_read_is_cut_short_when_the_blob_changes_under_it() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let s = served(dir.path(), Profile::Standard, &clock);
    let c = client(&s, DEV_KEY);
    c.create_container("stream").unwrap();
    let p = BlobPath::new("stream", "b");
    let size = 32usize << 20;
    c.create_page_blob(&p, size as u64, 0, &Conditions::default())
        .unwrap();
    for i in 0..size / (4 << 20) {
        c.put_pages(
            &p,
            (i * (4 << 20)) as u64,
            &vec![1u8; 4 << 20],
            &Conditions::default(),
        )
        .unwrap();
    }
    let addr = s.address();
    let path = format!("/{DEV_ACCOUNT}/stream/b");
    let get = |headers: &[(String, String)]| {
        let mut t = std::net::TcpStream::connect(&addr).unwrap();
        let mut head = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        t.write_all(head.as_bytes()).unwrap();
        t.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        t
    };
    let headers = signed(
        "GET",
        &path,
        "",
        &[("x-ms-date", pageblob::timestamp::http_date(START))],
    );
    // Unchanged: the whole blob arrives.
    let mut whole = Vec::new();
    get(&headers).read_to_end(&mut whole).unwrap();
    assert!(
        whole.len() > size && whole.ends_with(&vec![1u8; 1 << 20]),
        "{} bytes",
        whole.len()
    );
    // Changed after the first bytes: the answer stops short.
    let mut t = get(&headers);
    let mut first = vec![0u8; 64 << 10];
    t.read_exact(&mut first).unwrap();
    c.put_pages(
        &p,
        (size - 4096) as u64,
        &[2u8; 4096],
        &Conditions::default(),
    )
    .unwrap();
    let mut rest = Vec::new();
    let _ = t.read_to_end(&mut rest);
    let got = first.len() + rest.len();
    assert!(got < size, "a read across a write returned {got} bytes");
    assert!(!rest.contains(&2u8), "bytes of the new version were sent");
}

/// Names are decoded strictly and checked against Azure's rules before anything is stored;
/// a name XML cannot carry is listed percent-encoded with `Encoded="true"`.
#[test]
fn blob_names_are_refused_or_encoded_as_azure_does() {
    use pageblob::timestamp::http_date;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let s = served(dir.path(), Profile::Standard, &clock);
    let c = client(&s, DEV_KEY);
    c.create_container("names").unwrap();
    let create = |encoded: &str| {
        let path = format!("/{DEV_ACCOUNT}/names/{encoded}");
        let headers = signed(
            "PUT",
            &path,
            "",
            &[
                ("content-length", "0".into()),
                ("x-ms-blob-type", "PageBlob".into()),
                ("x-ms-blob-content-length", "512".into()),
                ("x-ms-date", http_date(START)),
            ],
        );
        exchange(&s, "PUT", &path, &headers, &[])
    };
    // Two invalid byte strings would have become one lossy name.
    for (encoded, code) in [
        ("%FF%FE", "InvalidUri"),
        ("%FE%FF", "InvalidUri"),
        ("a%0Ab", "InvalidResourceName"),
        ("a%00", "InvalidResourceName"),
        ("a/../b", "InvalidResourceName"),
    ] {
        let answer = create(encoded);
        assert!(
            answer.starts_with("HTTP/1.1 400") && answer.contains(code),
            "{encoded}: {answer}"
        );
    }
    assert!(
        c.list_blobs("names", "", false).unwrap().is_empty(),
        "nothing was created"
    );
    let odd = "odd\u{FFFF}name";
    c.create_page_blob(&BlobPath::new("names", odd), 512, 0, &Conditions::default())
        .unwrap();
    let path = format!("/{DEV_ACCOUNT}/names");
    let headers = signed(
        "GET",
        &path,
        "comp=list&restype=container",
        &[("x-ms-date", http_date(START))],
    );
    let mut listing = String::new();
    {
        use std::io::{Read, Write};
        let addr = s.address();
        let mut t = std::net::TcpStream::connect(&addr).unwrap();
        let mut head = format!("GET {path}?comp=list&restype=container HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        t.write_all(head.as_bytes()).unwrap();
        t.read_to_string(&mut listing).unwrap();
    }
    assert!(
        listing.contains(r#"<Name Encoded="true">odd%EF%BF%BFname</Name>"#),
        "{listing}"
    );
    assert!(!listing.contains('\u{FFFF}'), "a raw U+FFFF in the XML");
    // Our own client reads the name back decoded.
    let names: Vec<String> = c
        .list_blobs("names", "", false)
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, vec![odd.to_string()]);
}

/// Get Page Ranges with an open-ended range (`x-ms-range: bytes=0-`, the JS SDK's default)
/// lists the ranges (it was 416); `x-ms-client-request-id` is echoed, errors included.
#[test]
fn open_ended_page_range_lists_and_the_client_request_id_is_echoed() {
    use pageblob::timestamp::http_date;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let s = served(dir.path(), Profile::Standard, &clock);
    let c = client(&s, DEV_KEY);
    c.create_container("open").unwrap();
    let p = BlobPath::new("open", "b");
    c.create_page_blob(&p, 1 << 20, 0, &Conditions::default())
        .unwrap();
    c.put_pages(&p, 4096, &[7u8; 1024], &Conditions::default())
        .unwrap();
    let path = format!("/{DEV_ACCOUNT}/open/b");
    let headers = signed(
        "GET",
        &path,
        "comp=pagelist",
        &[
            ("x-ms-client-request-id", "my-id-42".into()),
            ("x-ms-date", http_date(START)),
            ("x-ms-range", "bytes=0-".into()),
        ],
    );
    let answer = exchange(&s, "GET", &format!("{path}?comp=pagelist"), &headers, &[]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("x-ms-client-request-id: my-id-42"),
        "{answer}"
    );
    let refused = exchange(
        &s,
        "GET",
        &format!("{path}?comp=pagelist"),
        &[("x-ms-client-request-id".into(), "err-7".into())],
        &[],
    );
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(
        refused.contains("x-ms-client-request-id: err-7"),
        "{refused}"
    );
}

/// Set Blob Properties with several changes in one request applies all of them or none: a
/// bad header, a stale ETag or a refused part leaves the blob as it was, and conditions hold
/// against the blob as it was before the request (a resize used to apply and the sequence
/// number then fail its If-Match on the resize's new ETag).
#[test]
fn set_blob_properties_applies_all_of_a_request_or_none() {
    use pageblob::timestamp::http_date;
    use pageblob::types::SequenceNumberAction;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let s = served(dir.path(), Profile::Standard, &clock);
    let c = client(&s, DEV_KEY);
    c.create_container("props").unwrap();
    let p = BlobPath::new("props", "b");
    c.create_page_blob(&p, 4096, 3, &Conditions::default())
        .unwrap();
    let path = format!("/{DEV_ACCOUNT}/props/b");
    let send = |headers: &[(&str, &str)]| {
        let mut all: Vec<(&str, String)> =
            headers.iter().map(|(n, v)| (*n, v.to_string())).collect();
        all.push(("x-ms-date", http_date(START)));
        let signed = signed("PUT", &path, "comp=properties", &all);
        exchange(&s, "PUT", &format!("{path}?comp=properties"), &signed, &[])
    };
    let state = || {
        let props = c.properties(&p, None).unwrap();
        (
            props.size,
            props.sequence_number,
            props.content.content_type,
        )
    };
    let before = state();

    // A sequence-number action without its value: refused before the resize.
    let answer = send(&[
        ("x-ms-blob-content-length", "8192"),
        ("x-ms-sequence-number-action", "update"),
    ]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(state(), before);
    // A size that is not whole pages with content headers: the headers are not set.
    let answer = send(&[
        ("x-ms-blob-content-length", "1000"),
        ("x-ms-blob-content-type", "text/plain"),
    ]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(state(), before);

    // If-Match the ETag as it was: every part applies.
    let etag = c.properties(&p, None).unwrap().etag;
    let answer = send(&[
        ("x-ms-blob-content-length", "8192"),
        ("x-ms-sequence-number-action", "update"),
        ("x-ms-blob-sequence-number", "9"),
        ("x-ms-blob-content-type", "application/octet-stream"),
        ("if-match", &etag),
    ]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let after = state();
    assert_eq!(
        after,
        (8192, 9, Some("application/octet-stream".to_string()))
    );
    // That ETag is stale now: nothing applies.
    let answer = send(&[
        ("x-ms-blob-content-length", "16384"),
        ("x-ms-sequence-number-action", "increment"),
        ("if-match", &etag),
    ]);
    assert!(answer.starts_with("HTTP/1.1 412"), "{answer}");
    assert_eq!(state(), after);
    // An increment past 2^63-1 is refused before the resize.
    c.set_sequence_number(
        &p,
        SequenceNumberAction::Update(i64::MAX as u64),
        &Conditions::default(),
    )
    .unwrap();
    let answer = send(&[
        ("x-ms-blob-content-length", "16384"),
        ("x-ms-sequence-number-action", "increment"),
    ]);
    assert!(answer.starts_with("HTTP/1.1 409"), "{answer}");
    assert_eq!(c.properties(&p, None).unwrap().size, 8192);
}

/// A TCP relay in front of `upstream`: connection `cut_connection` (counting from 0) is cut
/// (both ways, at once) after `cut_after` bytes of requests have gone through it. Returns the
/// relay's address and the count of connections made through it.
fn cutting_relay(
    upstream: String,
    cut_connection: usize,
    cut_after: u64,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::Ordering;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = count.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let index = accepted.fetch_add(1, Ordering::SeqCst);
            let server = TcpStream::connect(&upstream).unwrap();
            let limit = if index == cut_connection {
                cut_after
            } else {
                u64::MAX
            };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                let mut passed = 0u64;
                loop {
                    let n = match c_in.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let n = n.min((limit - passed) as usize);
                    if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    passed += n as u64;
                    if passed >= limit {
                        break;
                    }
                }
                let _ = c_in.shutdown(Shutdown::Both);
                let _ = s_out.shutdown(Shutdown::Both);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_in, &mut c_out);
                let _ = c_out.shutdown(Shutdown::Both);
            });
        }
    });
    (addr, count)
}

/// A pipelined batch whose connection is cut in the middle of a request body: the writes that
/// got no answer are sent again on their own, and every page lands.
#[test]
fn a_pipelined_batch_cut_mid_request_still_lands_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let s = served(dir.path(), Profile::Standard, &clock);
    let upstream = s.address();
    let direct = client(&s, DEV_KEY);
    direct.create_container("cut").unwrap();
    let p = BlobPath::new("cut", "disk");
    direct
        .create_page_blob(&p, 4 << 20, 0, &Conditions::default())
        .unwrap();
    // Connection 0 is the client's first (the pipelined batch's): cut 5.5 records in.
    let (relay, connections) = cutting_relay(upstream, 0, 5 * 65536 + 40_000);
    let through = HttpStore::new(
        &format!("http://{relay}/{DEV_ACCOUNT}"),
        DEV_ACCOUNT,
        &decode_key(DEV_KEY).unwrap(),
    )
    .with_clock(s.clock.clone());
    let records: Vec<Vec<u8>> = (0..12u32)
        .map(|i| {
            (0..65536 / 4)
                .flat_map(|j| (i * 1_000_003 + j).to_le_bytes())
                .collect()
        })
        .collect();
    let batch: Vec<pageblob::PageWrite<'_>> = records
        .iter()
        .enumerate()
        .map(|(i, data)| pageblob::PageWrite {
            path: &p,
            offset: i as u64 * 65536,
            data,
        })
        .collect();
    through
        .put_pages_batch(&batch, &Default::default())
        .unwrap();
    for (i, data) in records.iter().enumerate() {
        let mut back = vec![0u8; data.len()];
        direct.read(&p, None, i as u64 * 65536, &mut back).unwrap();
        assert!(&back == data, "record {i} landed");
    }
    assert!(
        connections.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the cut connection was replaced"
    );
}

/// Request heads are bounded by `max_header_bytes` (64 KiB by default), whatever hyper's read
/// buffer holds: a head just under it is read and answered, one over it gets 431.
#[test]
fn a_request_head_over_the_limit_is_refused_with_431() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let s = served(dir.path(), Profile::Standard, &clock);
    for (padding, status) in [(60 << 10, "403"), (70 << 10, "431"), (300 << 10, "431")] {
        let headers = vec![("x-padding".to_string(), "a".repeat(padding))];
        let answer = exchange(&s, "GET", "/devstoreaccount1?comp=list", &headers, &[]);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{padding}-byte header: {answer}"
        );
    }
}
