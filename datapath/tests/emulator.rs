//! The embedded emulator: the conformance suite on both profiles, persistence across reopen,
//! a torn log tail, and a writer killed with SIGKILL at random moments.

use std::sync::Arc;

use datapath::clock::ManualClock;
use datapath::pageblob::conformance;
use datapath::pageblob::data_log::Durability;
use datapath::pageblob::{BlobPath, Conditions, Emulator, PageBlobStore, Profile};

const START: u64 = 1_700_000_000_000_000_000;

fn open(dir: &std::path::Path, profile: Profile, clock: &Arc<ManualClock>) -> Emulator {
    Emulator::open(dir, profile, Durability::Process, clock.clone()).unwrap()
}

#[test]
fn standard_profile_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    conformance::standard_suite(
        &open(dir.path(), Profile::Standard, &clock),
        &clock,
        "conformance",
    );
}

#[test]
fn premium_profile_refuses_the_101st_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    conformance::premium_snapshot_limit(
        &open(
            dir.path(),
            Profile::Premium {
                snapshot_spacing: false,
            },
            &clock,
        ),
        "premium",
    );
}

#[test]
fn everything_acknowledged_is_back_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let p = BlobPath::new("cont1", "disk");
    let (props, snap) = {
        let store = open(dir.path(), Profile::Standard, &clock);
        store.create_container("cont1").unwrap();
        store
            .create_page_blob(&p, 1 << 20, 3, &Conditions::default())
            .unwrap();
        store
            .put_pages(&p, 4096, &[5; 8192], &Conditions::default())
            .unwrap();
        let snap = store.snapshot(&p, &Conditions::default()).unwrap();
        store
            .clear_pages(&p, 4096, 512, &Conditions::default())
            .unwrap();
        (store.properties(&p, None).unwrap(), snap)
    };
    let store = open(dir.path(), Profile::Standard, &clock);
    assert_eq!(store.properties(&p, None).unwrap(), props);
    let mut buf = vec![0u8; 8192];
    store.read(&p, Some(&snap), 4096, &mut buf).unwrap();
    assert_eq!(buf, vec![5; 8192]);
    store.read(&p, None, 4096, &mut buf).unwrap();
    assert_eq!(&buf[..512], &[0; 512]);
    assert_eq!(
        store
            .page_ranges(&p, None, Some(&snap), None, None, None)
            .unwrap()
            .ranges
            .len(),
        1
    );
}

#[test]
fn torn_record_at_the_tail_is_dropped_and_the_store_opens() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let p = BlobPath::new("cont1", "disk");
    {
        let store = open(dir.path(), Profile::Standard, &clock);
        store.create_container("cont1").unwrap();
        store
            .create_page_blob(&p, 1 << 20, 0, &Conditions::default())
            .unwrap();
        store
            .put_pages(&p, 0, &[1; 4096], &Conditions::default())
            .unwrap();
        store
            .put_pages(&p, 4096, &[2; 4096], &Conditions::default())
            .unwrap();
    }
    let seg = dir.path().join("log/segment-000000.log");
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 100).unwrap(); // the last put was cut mid-write
    let store = open(dir.path(), Profile::Standard, &clock);
    let mut buf = vec![9u8; 8192];
    store.read(&p, None, 0, &mut buf).unwrap();
    assert_eq!(&buf[..4096], &[1; 4096]);
    assert_eq!(&buf[4096..], &[0; 4096]);
    // And appends continue cleanly after the cut.
    store
        .put_pages(&p, 4096, &[3; 4096], &Conditions::default())
        .unwrap();
    drop(store);
    let store = open(dir.path(), Profile::Standard, &clock);
    store.read(&p, None, 4096, &mut buf[..4096]).unwrap();
    assert_eq!(&buf[..4096], &[3; 4096]);
}

#[test]
fn damage_before_the_tail_is_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    {
        let store = open(dir.path(), Profile::Standard, &clock);
        store.create_container("cont1").unwrap();
        store.create_container("cont2").unwrap();
    }
    let seg = dir.path().join("log/segment-000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[30] ^= 1;
    // Add a second segment so the damaged one is not the tail.
    std::fs::write(&seg, &bytes).unwrap();
    std::fs::write(dir.path().join("log/segment-000001.log"), b"").unwrap();
    let err =
        Emulator::open(dir.path(), Profile::Standard, Durability::Process, clock).unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
}

#[test]
fn reopening_with_another_profile_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    drop(open(dir.path(), Profile::Standard, &clock));
    assert!(Emulator::open(
        dir.path(),
        Profile::Premium {
            snapshot_spacing: false
        },
        Durability::Process,
        clock
    )
    .is_err());
}
