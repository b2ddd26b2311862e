//! The embedded emulator: the conformance suite on both profiles, persistence across reopen,
//! a torn log tail, and a writer killed with SIGKILL at random moments.

use std::sync::Arc;

use pageblob::clock::ManualClock;
use pageblob::conformance;
use pageblob::data_log::Durability;
use pageblob::fs::{HookedFs, RealFs, StoreFs};
use pageblob::home_file::{HomeLayout, HomeStripes};
use pageblob::{BlobPath, Conditions, Emulator, PageBlobStore, PageRead, Profile};
use std::path::Path;

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

/// Set Blob Properties with several parts is one record in the log: a write cut anywhere in
/// it leaves every part or none after reopen (the parts were three records, so a cut could
/// leave the blob resized with its old sequence number).
#[test]
fn a_set_blob_properties_of_several_parts_is_kept_whole_or_not_at_all() {
    use pageblob::blob_headers::{ContentHeaders, PropertyChanges};
    use pageblob::SequenceNumberAction;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let p = BlobPath::new("cont1", "disk");
    let seg = dir.path().join("log/segment-000000.log");
    let state = |store: &Emulator| {
        let props = store.properties(&p, None).unwrap();
        (
            props.size,
            props.sequence_number,
            props.content.content_type,
        )
    };
    let (before, after, whole) = {
        let store = open(dir.path(), Profile::Standard, &clock);
        store.create_container("cont1").unwrap();
        store
            .create_page_blob(&p, 4096, 3, &Conditions::default())
            .unwrap();
        let before = state(&store);
        let len_before = std::fs::metadata(&seg).unwrap().len();
        let changes = PropertyChanges {
            size: Some(8192),
            sequence_number: Some(SequenceNumberAction::Update(9)),
            content: Some(ContentHeaders {
                content_type: Some("application/octet-stream".into()),
                ..ContentHeaders::default()
            }),
        };
        store
            .set_properties(&p, &changes, &Conditions::default())
            .unwrap();
        let after = state(&store);
        assert_eq!(after, (8192, 9, Some("application/octet-stream".into())));
        (
            before,
            after,
            std::fs::read(&seg).unwrap()[len_before as usize..].to_vec(),
        )
    };
    let full = std::fs::read(&seg).unwrap();
    let start = full.len() - whole.len();
    for keep in (0..whole.len()).step_by(7).chain([whole.len()]) {
        std::fs::write(&seg, &full[..start + keep]).unwrap();
        let store = open(dir.path(), Profile::Standard, &clock);
        let expected = if keep == whole.len() { &after } else { &before };
        assert_eq!(&state(&store), expected, "{keep} of {} bytes", whole.len());
    }
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

/// A store of three blobs with some pages and a snapshot each: many records in one segment.
fn store_with_records(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Vec<u8> {
    let store = open(dir, Profile::Standard, clock);
    store.create_container("cont").unwrap();
    for b in 0..3u8 {
        let p = BlobPath::new("cont", &format!("blob{b}"));
        store
            .create_page_blob(&p, 1 << 20, 0, &Conditions::default())
            .unwrap();
        store
            .put_pages(&p, 0, &[b + 1; 4096], &Conditions::default())
            .unwrap();
        store.snapshot(&p, &Conditions::default()).unwrap();
    }
    drop(store);
    std::fs::read(dir.join("log/segment-000000.log")).unwrap()
}

#[test]
fn a_flipped_byte_in_the_last_segment_is_damage_not_a_torn_tail_and_nothing_is_cut() {
    let clock = Arc::new(ManualClock::new(START));
    // Flip a byte in a middle record's body, its header's length, and its magic: each is
    // damage named by segment and offset, for a writer and a reader alike.
    for at in [40usize, 13, 0] {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join("log/segment-000000.log");
        let mut bytes = store_with_records(dir.path(), &clock);
        // The second record starts where the first ends.
        let first_len = 24
            + u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize
            + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        bytes[first_len + at] ^= if at == 13 { 0x40 } else { 0x01 };
        std::fs::write(&seg, &bytes).unwrap();
        let writer = Emulator::open(
            dir.path(),
            Profile::Standard,
            Durability::Process,
            clock.clone(),
        )
        .unwrap_err()
        .to_string();
        let reader = Emulator::open_read_only(dir.path(), false, clock.clone())
            .unwrap_err()
            .to_string();
        for err in [&writer, &reader] {
            assert!(
                err.contains("damaged")
                    && err.contains("segment-000000.log")
                    && err.contains(&format!("offset {first_len}")),
                "flip at +{at}: {err}"
            );
        }
        assert_eq!(
            std::fs::read(&seg).unwrap(),
            bytes,
            "flip at +{at}: the log was changed"
        );
    }
}

#[test]
fn a_reader_leaves_a_torn_tail_alone_and_a_writer_cuts_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let bytes = store_with_records(dir.path(), &clock);
    let seg = dir.path().join("log/segment-000000.log");
    // A record cut mid-append (the last snapshot is lost), and a file grown over bytes that
    // never arrived (everything is there): listings of 3 blobs and their snapshots.
    let mut grown = bytes.clone();
    grown.extend_from_slice(&[0; 700]);
    for (tail, listed) in [(bytes[..bytes.len() - 30].to_vec(), 5), (grown, 6)] {
        std::fs::write(&seg, &tail).unwrap();
        let reader = Emulator::open_read_only(dir.path(), false, clock.clone()).unwrap();
        assert_eq!(reader.list_blobs("cont", "", true).unwrap().len(), listed);
        drop(reader);
        assert_eq!(
            std::fs::read(&seg).unwrap(),
            tail,
            "the reader changed the log"
        );
    }
    drop(open(dir.path(), Profile::Standard, &clock));
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        bytes,
        "the writer cut only the tail"
    );
}

#[test]
fn a_read_only_store_refuses_changes_and_mistyped_directories_stay_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    store_with_records(dir.path(), &clock);
    let reader = Emulator::open_read_only(dir.path(), false, clock.clone()).unwrap();
    let err = reader.create_container("other").unwrap_err();
    assert!(err.to_string().contains("read-only"), "{err}");
    let mut buf = vec![0u8; 4096];
    reader
        .read(&BlobPath::new("cont", "blob2"), None, 0, &mut buf)
        .unwrap();
    assert_eq!(buf, vec![3u8; 4096]);
    // A mistyped store: nothing is created in a missing or unrelated directory.
    let missing = dir.path().join("no-such-store");
    let err = Emulator::open_read_only(&missing, false, clock.clone()).unwrap_err();
    assert!(err.to_string().contains("not a drplane store"), "{err}");
    assert!(!missing.exists());
    let unrelated = tempfile::tempdir().unwrap();
    std::fs::write(unrelated.path().join("notes.txt"), b"mine").unwrap();
    let err = Emulator::open(
        unrelated.path(),
        Profile::Standard,
        Durability::Process,
        clock,
    )
    .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    let names: Vec<_> = std::fs::read_dir(unrelated.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("notes.txt")]);
}

#[test]
fn snapshot_reads_never_see_writes_made_after_the_snapshot_under_concurrent_stress() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let store = open(dir.path(), Profile::Standard, &clock);
    let p = BlobPath::new("cont", "disk");
    store.create_container("cont").unwrap();
    store
        .create_page_blob(&p, 4 << 20, 0, &Conditions::default())
        .unwrap();
    const LEN: usize = 4 << 20;
    let (tx, rx) = std::sync::mpsc::sync_channel::<(String, u8)>(0);
    let (store, clock, p) = (&store, &clock, &p);
    std::thread::scope(|s| {
        s.spawn(move || {
            // Write fill i, snapshot it, and at once overwrite its last page while a reader
            // copies the snapshot front to back: the overwrite must never show in it.
            for i in 0..120u32 {
                let fill = (i % 250) as u8 + 1;
                store
                    .put_pages(p, 0, &vec![fill; LEN], &Conditions::default())
                    .unwrap();
                clock.advance(1_000);
                let id = store.snapshot(p, &Conditions::default()).unwrap();
                tx.send((id, fill)).unwrap();
                store
                    .put_pages(
                        p,
                        (LEN - 4096) as u64,
                        &[!fill; 4096],
                        &Conditions::default(),
                    )
                    .unwrap();
            }
        });
        s.spawn(move || {
            let mut buf = vec![0u8; LEN];
            for (id, fill) in rx {
                store.read(p, Some(&id), 0, &mut buf).unwrap();
                if let Some(at) = buf.iter().position(|&b| b != fill) {
                    panic!("snapshot {id} of fill {fill} read {} at {at}", buf[at]);
                }
                store
                    .delete_blob(p, Some(&id), None, &Conditions::default())
                    .unwrap();
            }
        });
    });
}

/// A 64 KiB record of writer `writer`'s write number `seq` to slot `slot`: one 8-byte word
/// repeated, so a read can tell a whole record from a torn one.
fn tagged_record(writer: u8, seq: u32, slot: u16) -> Vec<u8> {
    let word = [
        writer,
        (seq >> 16) as u8,
        (seq >> 8) as u8,
        seq as u8,
        0xA5,
        0x5A,
        (slot >> 8) as u8,
        slot as u8,
    ];
    word.repeat(RECORD / 8)
}

const RECORD: usize = 64 << 10;
const SLOTS: u16 = 48;

/// The writer and write number of a whole record of `slot` (zeros: never written); panics
/// naming what it read where on a torn or misplaced record.
fn whole_record(bytes: &[u8], slot: u16, what: &str) -> Option<(u8, u32)> {
    let word = &bytes[..8];
    if let Some(at) = bytes.chunks(8).position(|w| w != word) {
        panic!("{what}: slot {slot} is torn at byte {}", at * 8);
    }
    if word == [0; 8] {
        return None;
    }
    assert_eq!(
        [
            word[4],
            word[5],
            u16::from_be_bytes([word[6], word[7]]) as u8
        ],
        [0xA5, 0x5A, slot as u8],
        "{what}: slot {slot} holds another slot's record"
    );
    Some((word[0], u32::from_be_bytes([0, word[1], word[2], word[3]])))
}

/// Unconditioned Put Pages copy their bytes outside the store's lock: writers of one blob run
/// side by side, two per slot, while a reader, a snapshot taker and conditioned writes go on.
/// Whatever the interleaving: no read returns a torn record or one older than a read before
/// it returned; a snapshot never changes after it was taken (also after a reopen); the base
/// after a reopen is the base before it.
fn concurrent_writes_keep_every_promise(
    fs: Arc<dyn StoreFs>,
    format: HomeFormat,
    durability: Durability,
    writes_each: u32,
) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let layout = match format {
        HomeFormat::OneFile => HomeLayout::OneFile,
        // Chunks half a record long: every record is split over two stripes.
        HomeFormat::Striped => HomeLayout::Striped(HomeStripes {
            files: 3,
            chunk_bytes: RECORD as u64 / 2,
        }),
    };
    let open = |clock: Arc<ManualClock>| {
        Emulator::open_with_fs_and_layout(
            fs.clone(),
            dir.path(),
            Profile::Standard,
            layout,
            durability,
            clock,
        )
        .unwrap()
    };
    let p = BlobPath::new("cont", "disk");
    let size = u64::from(SLOTS) * RECORD as u64;
    let read_all = |store: &Emulator, snapshot: Option<&str>| {
        let mut all = vec![0u8; size as usize];
        store.read(&p, snapshot, 0, &mut all).unwrap();
        all
    };
    let (base, snapshots) = {
        let store = open(clock.clone());
        store.create_container("cont").unwrap();
        store
            .create_page_blob(&p, size, 0, &Conditions::default())
            .unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (store, p, stop) = (&store, &p, &stop);
        let snapshots = std::thread::scope(|s| {
            let writers: Vec<_> = (0..4u8)
                .map(|writer| {
                    s.spawn(move || {
                        // Writers 0 and 2 share the even slots, 1 and 3 the odd ones.
                        let mut slot = u16::from(writer % 2);
                        for seq in 1..=writes_each {
                            let record = tagged_record(writer, seq, slot);
                            let at = u64::from(slot) * RECORD as u64;
                            let none = Conditions::default();
                            if writer < 2 {
                                store.put_pages(p, at, &record, &none).unwrap();
                            } else {
                                // As `blob serve` makes a Put Page: without waiting where it
                                // can, else as a call that may wait; then its sync.
                                let made = store.try_put_pages_owing_sync(p, at, &record, &none);
                                let (_, ticket) = match made.unwrap() {
                                    Some(made) => made,
                                    None => {
                                        store.put_pages_owing_sync(p, at, &record, &none).unwrap()
                                    }
                                };
                                if let Some(ticket) = ticket {
                                    store.sync_owed(ticket).unwrap();
                                }
                            }
                            slot = (slot + 2 + 2 * u16::from(writer / 2)) % SLOTS;
                        }
                    })
                })
                .collect();
            // A reader of the whole blob, in one read and then one read per slot in a batch
            // (`read_batch`) by turns: whole records only, and never an older write of a
            // writer to a slot than one it saw before.
            s.spawn(move || {
                let mut seen = std::collections::BTreeMap::new();
                let mut batched = false;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    batched = !batched;
                    let all = if batched {
                        // Stale bytes in the buffers: a read must set every byte.
                        let mut all = vec![0xEE; size as usize];
                        let mut reads: Vec<PageRead<'_>> = all
                            .chunks_mut(RECORD)
                            .enumerate()
                            .map(|(slot, buf)| PageRead {
                                path: p,
                                snapshot: None,
                                offset: (slot * RECORD) as u64,
                                buf,
                            })
                            .collect();
                        store.read_batch(&mut reads).unwrap();
                        drop(reads);
                        all
                    } else {
                        read_all(store, None)
                    };
                    for (slot, record) in all.chunks(RECORD).enumerate() {
                        let slot = slot as u16;
                        if let Some((writer, seq)) = whole_record(record, slot, "base read") {
                            let last = seen.entry((slot, writer)).or_insert(seq);
                            assert!(
                                seq >= *last,
                                "slot {slot}: writer {writer}'s write {seq} read after {last}"
                            );
                            *last = seq;
                        }
                    }
                }
            });
            // Conditioned writes to the last slot (their own path, under the lock).
            s.spawn(move || {
                let slot = SLOTS - 1;
                let mut seq = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    seq += 1;
                    let etag = store.properties(p, None).unwrap().etag;
                    let cond = Conditions {
                        if_match: Some(etag),
                        ..Conditions::default()
                    };
                    // Another write may change the ETag in between: 412 then.
                    let _ = store.put_pages(
                        p,
                        u64::from(slot) * RECORD as u64,
                        &tagged_record(9, seq, slot),
                        &cond,
                    );
                }
            });
            // Snapshots, each read whole at once: it must read the same for ever after.
            let taker = s.spawn(move || {
                let mut taken = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && taken.len() < 40 {
                    let id = store.snapshot(p, &Conditions::default()).unwrap();
                    let bytes = read_all(store, Some(&id));
                    for (slot, record) in bytes.chunks(RECORD).enumerate() {
                        whole_record(record, slot as u16, "snapshot");
                    }
                    taken.push((id, bytes));
                }
                taken
            });
            for w in writers {
                w.join().unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            taker.join().unwrap()
        });
        for (id, bytes) in &snapshots {
            assert!(read_all(store, Some(id)) == *bytes, "snapshot {id} changed");
        }
        (read_all(store, None), snapshots)
    };
    assert!(snapshots.len() > 1, "{} snapshots", snapshots.len());
    let store = open(clock);
    let homes = std::fs::read_dir(dir.path().join("homes")).unwrap().count();
    match format {
        HomeFormat::Striped => assert_eq!(homes, 3),
        HomeFormat::OneFile => assert_eq!(homes, 1),
    }
    assert!(read_all(&store, None) == base, "the base after a reopen");
    for (id, bytes) in &snapshots {
        assert!(
            read_all(&store, Some(id)) == *bytes,
            "snapshot {id} after a reopen"
        );
    }
}

/// How a store lays out a blob's home bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HomeFormat {
    /// One file per blob (format 1).
    OneFile,
    /// Striped over several files (format 2, what a directory store is made in; here over 3
    /// files in chunks of half a record).
    Striped,
}

#[test]
fn concurrent_writes_keep_every_promise_at_process_durability() {
    for format in [HomeFormat::OneFile, HomeFormat::Striped] {
        concurrent_writes_keep_every_promise(Arc::new(RealFs), format, Durability::Process, 1000);
    }
}

#[test]
fn concurrent_writes_keep_every_promise_at_power_durability() {
    for format in [HomeFormat::OneFile, HomeFormat::Striped] {
        concurrent_writes_keep_every_promise(Arc::new(RealFs), format, Durability::Power, 60);
    }
}

#[test]
fn concurrent_writes_keep_every_promise_when_home_writes_are_slow() {
    // Each home write stops half way for a millisecond: a read or a snapshot that does not
    // wait for a write in flight sees its record torn.
    let pause_home_writes =
        |path: &Path,
         buf: &[u8],
         offset: u64,
         write: &dyn Fn(&[u8], u64) -> std::io::Result<()>| {
            if path.extension().is_none_or(|e| e != "data") {
                return write(buf, offset);
            }
            let half = buf.len() / 2;
            write(&buf[..half], offset)?;
            std::thread::sleep(std::time::Duration::from_millis(1));
            write(&buf[half..], offset + half as u64)
        };
    let fs: Arc<dyn StoreFs> = Arc::new(HookedFs(Arc::new(pause_home_writes)));
    for format in [HomeFormat::OneFile, HomeFormat::Striped] {
        concurrent_writes_keep_every_promise(fs.clone(), format, Durability::Process, 120);
    }
}

/// A change made to a `store.json`.
type Damage = dyn Fn(&mut serde_json::Value);

#[test]
fn a_one_file_store_keeps_its_format_and_an_unknown_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let p = BlobPath::new("cont", "disk");
    // Format 1: one home file per blob.
    {
        let store = Emulator::open_with_fs(
            Arc::new(RealFs),
            dir.path(),
            Profile::Standard,
            Durability::Process,
            clock.clone(),
        )
        .unwrap();
        store.create_container("cont").unwrap();
        store
            .create_page_blob(&p, 4 << 20, 0, &Conditions::default())
            .unwrap();
        store
            .put_pages(&p, 0, &[1; 4 << 20], &Conditions::default())
            .unwrap();
    }
    let settings = std::fs::read_to_string(dir.path().join("store.json")).unwrap();
    assert!(settings.contains("\"format_version\": 1"), "{settings}");
    // Opened as any directory store is, it is still read and written in its own format.
    {
        let store = open(dir.path(), Profile::Standard, &clock);
        store
            .put_pages(&p, 3 << 20, &[2; 4096], &Conditions::default())
            .unwrap();
        let mut all = vec![0u8; 4 << 20];
        store.read(&p, None, 0, &mut all).unwrap();
        assert!(all[..3 << 20].iter().all(|&b| b == 1));
        assert!(all[3 << 20..(3 << 20) + 4096].iter().all(|&b| b == 2));
        assert!(all[(3 << 20) + 4096..].iter().all(|&b| b == 1));
    }
    let homes: Vec<_> = std::fs::read_dir(dir.path().join("homes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(homes.len(), 1, "{homes:?}");
    // A new directory store is striped (format 2). A format this build does not know, or a
    // format-2 store.json without its stripes or with stripes this build does not read, is
    // refused, naming the file and what is wrong.
    let striped = tempfile::tempdir().unwrap();
    drop(open(striped.path(), Profile::Standard, &clock));
    let settings_path = striped.path().join("store.json");
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&settings_path).unwrap()).unwrap();
    assert_eq!(settings["format_version"], 2, "{settings}");
    let unknown_format = |s: &mut serde_json::Value| s["format_version"] = 3.into();
    let no_stripes = |s: &mut serde_json::Value| {
        s.as_object_mut().unwrap().remove("home_stripes");
    };
    let one_stripe = |s: &mut serde_json::Value| s["home_stripes"]["files"] = 1.into();
    let damage: [(&Damage, &str); 3] = [
        (&unknown_format, "format version 3"),
        (&no_stripes, "format version 2 without home_stripes"),
        (&one_stripe, "1 stripe files"),
    ];
    for (change, why) in damage {
        let mut bad = settings.clone();
        change(&mut bad);
        std::fs::write(&settings_path, bad.to_string()).unwrap();
        let e = Emulator::open(
            striped.path(),
            Profile::Standard,
            Durability::Process,
            clock.clone(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("store.json") && e.contains(why), "{e}");
    }
}

/// The incarnations whose home files are in the store directory.
fn home_incarnations(dir: &Path) -> std::collections::BTreeSet<u64> {
    std::fs::read_dir(dir.join("homes"))
        .unwrap()
        .filter_map(|e| pageblob::home_file::incarnation_of(e.unwrap().file_name().to_str()?))
        .collect()
}

#[test]
fn a_home_file_goes_with_the_last_version_that_reads_it_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let store = open(dir.path(), Profile::Standard, &clock);
    let p = BlobPath::new("cont", "disk");
    let none = Conditions::default();
    store.create_container("cont").unwrap();
    store.create_page_blob(&p, 1 << 20, 0, &none).unwrap();
    store.put_pages(&p, 0, &[1; 8192], &none).unwrap();
    clock.advance(1_000);
    let old = store.snapshot(&p, &none).unwrap();
    // Replaced: a new incarnation; the snapshot still reads the old one's home file.
    store.create_page_blob(&p, 1 << 20, 0, &none).unwrap();
    store.put_pages(&p, 0, &[2; 4096], &none).unwrap();
    let both = home_incarnations(dir.path());
    assert_eq!(both.len(), 2, "{both:?}");
    // A snapshot of the current incarnation goes: both home files stay.
    clock.advance(1_000);
    let new = store.snapshot(&p, &none).unwrap();
    store.delete_blob(&p, Some(&new), None, &none).unwrap();
    assert_eq!(home_incarnations(dir.path()), both);
    let mut back = vec![0u8; 8192];
    store.read(&p, Some(&old), 0, &mut back).unwrap();
    assert_eq!(back, [1; 8192]);
    // The last version of the old incarnation goes: so does its home file, and only it.
    store.delete_blob(&p, Some(&old), None, &none).unwrap();
    let left = home_incarnations(dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left.is_subset(&both));
    store.read(&p, None, 0, &mut back).unwrap();
    assert_eq!(back[..4096], [2; 4096]);
    // The blob goes: no home file is left.
    store.delete_blob(&p, None, None, &none).unwrap();
    assert!(home_incarnations(dir.path()).is_empty());
}

/// A store directory at power durability (`blob serve`'s default) in `dir`, holding the empty
/// 1 MiB page blob `p`.
fn with_a_blob_at_power(dir: &Path, clock: &Arc<ManualClock>, p: &BlobPath) -> Emulator {
    let store = Emulator::open(dir, Profile::Standard, Durability::Power, clock.clone()).unwrap();
    store.create_container(&p.container).unwrap();
    store
        .create_page_blob(p, 1 << 20, 0, &Conditions::default())
        .unwrap();
    store
}

/// What `blob serve` makes on its async worker (`try_put_pages_owing_sync`): at power
/// durability a write is made there only if it need not wait — not over bytes a snapshot
/// shares (they are copied aside and synced before the overwrite), not under a condition a
/// write changes, not while the writer lets readers in —, and otherwise nothing is done. At
/// process durability nothing waits.
#[test]
fn a_write_that_would_wait_is_not_made_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let none = Conditions::default();
    let p = BlobPath::new("cont", "disk");
    let store = with_a_blob_at_power(dir.path(), &clock, &p);
    let read = |snapshot: Option<&str>| {
        let mut b = vec![0u8; 128 << 10];
        store.read(&p, snapshot, 0, &mut b).unwrap();
        b
    };
    let (_, ticket) = store
        .try_put_pages_owing_sync(&p, 0, &[1; 65536], &none)
        .unwrap()
        .expect("a write of bytes no snapshot shares is made at once");
    store
        .sync_owed(ticket.expect("at power durability the sync is owed"))
        .unwrap();
    let snapshot = store.snapshot(&p, &none).unwrap();
    let before = store.properties(&p, None).unwrap();
    assert!(
        store
            .try_put_pages_owing_sync(&p, 0, &[2; 65536], &none)
            .unwrap()
            .is_none(),
        "a write over bytes the snapshot shares would wait for their sync"
    );
    let after = store.properties(&p, None).unwrap();
    assert_eq!(
        (after.etag, after.last_modified),
        (before.etag.clone(), before.last_modified)
    );
    assert!(
        read(None)[..65536].iter().all(|&b| b == 1),
        "nothing was written"
    );
    // Bytes the snapshot does not share are written at once.
    let (_, ticket) = store
        .try_put_pages_owing_sync(&p, 65536, &[3; 65536], &none)
        .unwrap()
        .expect("bytes the snapshot does not share");
    store.sync_owed(ticket.unwrap()).unwrap();
    assert!(read(None)[65536..].iter().all(|&b| b == 3));
    assert!(read(Some(&snapshot))[65536..].iter().all(|&b| b == 0));
    // A condition a write changes is checked under the lock, with the write: not here.
    let if_match = Conditions {
        if_match: Some(store.properties(&p, None).unwrap().etag),
        ..Conditions::default()
    };
    assert!(store
        .try_put_pages_owing_sync(&p, 65536, &[4; 512], &if_match)
        .unwrap()
        .is_none());
    // A writer that let readers in (`quiesce`) would wait for them before its next change.
    store.quiesce();
    assert!(store
        .try_put_pages_owing_sync(&p, 65536, &[5; 512], &none)
        .unwrap()
        .is_none());
    store.put_pages(&p, 0, &[6; 512], &none).unwrap();
    assert!(store
        .try_put_pages_owing_sync(&p, 65536, &[7; 512], &none)
        .unwrap()
        .is_some());
    assert!(read(Some(&snapshot))[..65536].iter().all(|&b| b == 1));
    drop(store);
    // At process durability nothing waits: the same overwrite is made, and nothing is owed.
    let store = Emulator::open(dir.path(), Profile::Standard, Durability::Process, clock).unwrap();
    let made = store
        .try_put_pages_owing_sync(&p, 0, &[8; 65536], &none)
        .unwrap();
    assert!(matches!(made, Some((_, None))), "{made:?}");
    let mut b = vec![0u8; 65536];
    store.read(&p, Some(&snapshot), 0, &mut b).unwrap();
    assert!(
        b[..512].iter().all(|&x| x == 1),
        "the snapshot keeps its bytes"
    );
}

/// What `blob serve` reads on its async worker (`try_read`): the same bytes `read` gives, of
/// the blob and of a snapshot whose bytes moved to the log, while they are in memory; once the
/// kernel has dropped the store's files from its cache, nothing (the read would wait for the
/// device). Over the in-memory file system a read never waits.
#[test]
fn a_read_without_waiting_reads_what_a_read_reads_or_says_it_would_wait() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let none = Conditions::default();
    let p = BlobPath::new("cont", "disk");
    let store = with_a_blob_at_power(dir.path(), &clock, &p);
    store.put_pages(&p, 0, &[1; 65536], &none).unwrap();
    let snapshot = store.snapshot(&p, &none).unwrap();
    store.put_pages(&p, 4096, &[2; 8192], &none).unwrap(); // the snapshot's bytes to the log
    let both = |store: &Emulator, snapshot: Option<&str>| {
        let mut read = vec![0xEE; 70_000];
        store.read(&p, snapshot, 1000, &mut read).unwrap();
        let mut tried = vec![0xDD; 70_000];
        let made = store.try_read(&p, snapshot, 1000, &mut tried).unwrap();
        (made, made && tried == read)
    };
    for snapshot in [None, Some(snapshot.as_str())] {
        match both(&store, snapshot) {
            (true, same) => assert!(same, "{snapshot:?}: the bytes differ"),
            (false, _) => return, // a file system whose reads cannot be made without waiting
        }
    }
    // Every file of the store written back (power durability) and dropped from the cache
    // (where the file system does not keep its files in memory, as tmpfs does).
    if pageblob::fs::drop_from_page_cache(dir.path()).unwrap() {
        let mut buf = vec![0u8; 70_000];
        assert!(!store.try_read(&p, None, 1000, &mut buf).unwrap());
        assert!(!store.try_read(&p, Some(&snapshot), 1000, &mut buf).unwrap());
    }
    // Read once the way that may wait, they are in memory again.
    for snapshot in [None, Some(snapshot.as_str())] {
        assert_eq!(both(&store, snapshot), (true, true), "{snapshot:?}");
    }
    // Memory never waits.
    let fs: Arc<dyn StoreFs> = Arc::new(pageblob::memory_fs::CrashFs::new());
    let store = Emulator::open_with_fs_and_layout(
        fs,
        Path::new("/store"),
        Profile::Standard,
        HomeLayout::Striped(HomeStripes::DEFAULT),
        Durability::Power,
        clock,
    )
    .unwrap();
    store.create_container("cont").unwrap();
    store.create_page_blob(&p, 1 << 20, 0, &none).unwrap();
    store.put_pages(&p, 0, &[3; 65536], &none).unwrap();
    assert_eq!(both(&store, None), (true, true));
}

#[test]
fn power_durability_passes_the_conformance_suite_too() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let store = Emulator::open(
        dir.path(),
        Profile::Standard,
        Durability::Power,
        clock.clone(),
    )
    .unwrap();
    conformance::standard_suite(&store, &clock, "conformance");
}

#[test]
fn metadata_content_headers_and_a_broken_lease_survive_reopen() {
    use pageblob::{BlobHeaders, ContentHeaders, LeaseAction, LeaseStateName, Metadata};
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let path = BlobPath::new("ctr", "disk");
    let meta = |pairs: &[(&str, &str)]| -> Metadata {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    };
    {
        let store = open(dir.path(), Profile::Standard, &clock);
        store
            .create_container_with("ctr", &meta(&[("owner", "ops")]))
            .unwrap();
        let headers = BlobHeaders {
            metadata: meta(&[("vm", "1")]),
            content: ContentHeaders {
                content_type: Some("application/x-vhd".into()),
                ..ContentHeaders::default()
            },
        };
        let none = Conditions::default();
        store
            .create_page_blob_with(&path, 4096, 0, &none, &headers)
            .unwrap();
        let bad = meta(&[("not-an-identifier", "x")]);
        let e = store.set_metadata(&path, &bad, &none).unwrap_err();
        assert_eq!(e.code(), Some(pageblob::ErrorCode::InvalidMetadata));
        store
            .set_metadata(&path, &meta(&[("state", "replicating")]), &none)
            .unwrap();
        store
            .lease(
                &path,
                &LeaseAction::Acquire {
                    proposed_id: "holder".into(),
                    duration_secs: None,
                },
                &none,
            )
            .unwrap();
        store
            .lease(
                &path,
                &LeaseAction::Break {
                    period_secs: Some(0),
                },
                &none,
            )
            .unwrap();
    }
    let store = open(dir.path(), Profile::Standard, &clock);
    let p = store.properties(&path, None).unwrap();
    assert_eq!(p.metadata, meta(&[("state", "replicating")]));
    assert_eq!(p.content.content_type.as_deref(), Some("application/x-vhd"));
    assert_eq!(p.lease_state, LeaseStateName::Broken);
    assert_eq!(
        store.container_properties("ctr").unwrap().metadata,
        meta(&[("owner", "ops")])
    );
    // A broken lease is released by its holder's id only.
    let none = Conditions::default();
    let release = |id: &str| LeaseAction::Release { id: id.into() };
    let e = store
        .lease(&path, &release("someone-else"), &none)
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(pageblob::ErrorCode::LeaseIdMismatchWithLeaseOperation)
    );
    store.lease(&path, &release("holder"), &none).unwrap();
    assert_eq!(
        store.properties(&path, None).unwrap().lease_state,
        LeaseStateName::Available
    );
}

#[test]
fn effects_logged_before_metadata_existed_still_read() {
    // The effect log is JSON: records written by earlier versions carry no metadata, content
    // headers or copy-snapshot fields, and a broken lease without its holder.
    use pageblob::account::{Effect, Lease};
    let old_create: Effect = serde_json::from_str(
        r#"{"CreateBlob":{"path":{"container":"c","blob":"b"},"size":512,"sequence_number":0,"time":1}}"#,
    )
    .unwrap();
    let Effect::CreateBlob {
        metadata, content, ..
    } = &old_create
    else {
        panic!("{old_create:?}");
    };
    assert!(metadata.is_empty() && content.is_empty());
    let old_broken: Lease = serde_json::from_str(r#""Broken""#).unwrap();
    assert_eq!(old_broken, Lease::Broken);
    // And what this version writes for such a blob is byte-for-byte what the old one wrote.
    assert_eq!(
        serde_json::to_string(&old_create).unwrap(),
        r#"{"CreateBlob":{"path":{"container":"c","blob":"b"},"size":512,"sequence_number":0,"time":1}}"#
    );
}

/// One step of the snapshot-isolation property below (pages of 512 bytes).
#[derive(Debug, Clone)]
enum SnapshotOp {
    Put { page: u64, pages: u64, fill: u8 },
    Clear { page: u64, pages: u64 },
    Snapshot,
    DeleteSnapshot { index: usize },
    Resize { pages: u64 },
    Reopen,
}

fn snapshot_op() -> impl proptest::strategy::Strategy<Value = SnapshotOp> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0..48u64, 1..10u64, 1..=255u8).prop_map(|(page, pages, fill)| SnapshotOp::Put { page, pages, fill }),
        1 => (0..48u64, 1..10u64).prop_map(|(page, pages)| SnapshotOp::Clear { page, pages }),
        2 => Just(SnapshotOp::Snapshot),
        1 => (0..8usize).prop_map(|index| SnapshotOp::DeleteSnapshot { index }),
        1 => (1..=48u64).prop_map(|pages| SnapshotOp::Resize { pages }),
        1 => Just(SnapshotOp::Reopen),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 96, ..Default::default() })]
    /// Writes over data that snapshots share with the blob (copy-on-write of the home file),
    /// clears, resizes, snapshot deletes and reopens (the log replayed) in any order: every
    /// snapshot keeps reading what the blob held when it was taken, and the blob its own model.
    #[test]
    fn every_snapshot_keeps_its_bytes_whatever_happens_after_it(
        ops in proptest::collection::vec(snapshot_op(), 1..60)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(START));
        let none = Conditions::default();
        let p = BlobPath::new("iso", "disk");
        let mut store = Some(open(dir.path(), Profile::Standard, &clock));
        let s = store.as_ref().unwrap();
        s.create_container("iso").unwrap();
        s.create_page_blob(&p, 32 * 512, 0, &none).unwrap();
        let mut base = vec![0u8; 32 * 512];
        let mut snaps: Vec<(String, Vec<u8>)> = Vec::new();
        for op in ops {
            clock.advance(1_000_000);
            let s = store.as_ref().unwrap();
            let size = base.len() as u64 / 512;
            match op {
                SnapshotOp::Put { page, pages, fill } if page < size => {
                    let pages = pages.min(size - page);
                    let bytes: Vec<u8> = (0..pages * 512).map(|i| fill.wrapping_add(i as u8)).collect();
                    s.put_pages(&p, page * 512, &bytes, &none).unwrap();
                    base[(page * 512) as usize..][..bytes.len()].copy_from_slice(&bytes);
                }
                SnapshotOp::Clear { page, pages } if page < size => {
                    let pages = pages.min(size - page);
                    s.clear_pages(&p, page * 512, pages * 512, &none).unwrap();
                    base[(page * 512) as usize..][..(pages * 512) as usize].fill(0);
                }
                SnapshotOp::Snapshot => snaps.push((s.snapshot(&p, &none).unwrap(), base.clone())),
                SnapshotOp::DeleteSnapshot { index } if index < snaps.len() => {
                    let (id, _) = snaps.remove(index);
                    s.delete_blob(&p, Some(&id), None, &none).unwrap();
                }
                SnapshotOp::Resize { pages } => {
                    s.resize(&p, pages * 512, &none).unwrap();
                    base.resize((pages * 512) as usize, 0);
                }
                SnapshotOp::Reopen => {
                    drop(store.take());
                    store = Some(open(dir.path(), Profile::Standard, &clock));
                }
                _ => {}
            }
            let s = store.as_ref().unwrap();
            let mut got = vec![0u8; base.len()];
            s.read(&p, None, 0, &mut got).unwrap();
            proptest::prop_assert!(got == base, "the blob differs from its model");
            for (id, bytes) in &snaps {
                let mut got = vec![0u8; bytes.len()];
                s.read(&p, Some(id), 0, &mut got).unwrap();
                proptest::prop_assert!(&got == bytes, "snapshot {} changed", id);
            }
        }
    }
}
