//! The HTTP client against the HTTP server over the emulator, in one process: the same
//! conformance suite the emulator passes directly must pass through the REST API.

use std::sync::Arc;

use pageblob::clock::ManualClock;
use pageblob::conformance;
use pageblob::data_log::Durability;
use pageblob::http::client::HttpStore;
use pageblob::http::server::{serve, ServerConfig};
use pageblob::http::shared_key::{decode_key, DEV_ACCOUNT, DEV_KEY};
use pageblob::upload::upload_parallel;
use pageblob::{BlobPath, Conditions, Emulator, ErrorCode, PageBlobStore, Profile};

const START: u64 = 1_700_000_000_000_000_000;

struct Served {
    runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    endpoint: String,
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
    let store = Emulator::open(dir, profile, Durability::Process, clock.clone()).unwrap();
    serve_store(Arc::new(store), clock)
}

/// Serve any store on a free loopback port until the returned handle drops.
fn serve_store(store: Arc<dyn PageBlobStore>, clock: &Arc<ManualClock>) -> Served {
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
    runtime.spawn(serve(listener, store, config, clock, async {
        let _ = rx.await;
    }));
    Served {
        runtime,
        stop: Some(tx),
        endpoint: format!("http://{addr}/{DEV_ACCOUNT}"),
    }
}

fn client(s: &Served, key: &str) -> HttpStore {
    HttpStore::new(&s.endpoint, DEV_ACCOUNT, &decode_key(key).unwrap())
}

#[test]
fn http_client_and_server_pass_the_standard_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let s = served(dir.path(), Profile::Standard, &clock);
    conformance::standard_suite(&client(&s, DEV_KEY), &clock, "conformance");
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
