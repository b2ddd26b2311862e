//! The conformance suite every [`PageBlobStore`] must pass: Azure's page-blob semantics,
//! status codes and error-code names. Each check takes a store (and the clock it runs on, for
//! leases) and panics with the operation that misbehaved.

use super::error::ErrorCode;
use super::types::*;
use super::{PageBlobStore, PageRange, StoreResult};
use crate::clock::ManualClock;

fn code<T: std::fmt::Debug>(r: StoreResult<T>) -> ErrorCode {
    match r {
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("expected a service error, got {e}")),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

fn none() -> Conditions {
    Conditions::default()
}

fn bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn read(
    store: &dyn PageBlobStore,
    path: &BlobPath,
    snapshot: Option<&str>,
    offset: u64,
    len: usize,
) -> Vec<u8> {
    let mut buf = vec![0xAA; len];
    store.read(path, snapshot, offset, &mut buf).unwrap();
    buf
}

fn range(start: u64, end: u64) -> PageRange {
    PageRange {
        start,
        end,
        cleared: false,
    }
}

fn clear(start: u64, end: u64) -> PageRange {
    PageRange {
        start,
        end,
        cleared: true,
    }
}

fn ranges(
    store: &dyn PageBlobStore,
    path: &BlobPath,
    snapshot: Option<&str>,
    prev: Option<&str>,
) -> Vec<PageRange> {
    store
        .page_ranges(path, snapshot, prev, None, None, None)
        .unwrap()
        .ranges
}

/// Run every check on a store with the `standard` profile. `container` must not exist yet.
pub fn standard_suite(store: &dyn PageBlobStore, clock: &ManualClock, container: &str) {
    containers_and_creation(store, container);
    put_clear_read_and_ranges(store, container);
    batched_put_pages(store, container);
    batched_reads(store, container);
    page_range_paging(store, container);
    snapshots_and_diffs(store, container);
    delete_rules(store, container);
    conditions_and_sequence_numbers(store, container);
    leases(store, clock, container);
    resize(store, container);
    incremental_copy(store, container);
}

pub fn incremental_copy(store: &dyn PageBlobStore, container: &str) {
    let src = BlobPath::new(container, "copy-source");
    let dst = BlobPath::new(container, "copy-dest");
    store.create_page_blob(&src, 1 << 20, 0, &none()).unwrap();
    store.put_pages(&src, 0, &bytes(1, 8192), &none()).unwrap();
    assert_eq!(
        code(store.incremental_copy(&dst, &src, None)),
        ErrorCode::IncrementalCopySourceMustBeSnapshot
    );
    let s1 = store.snapshot(&src, &none()).unwrap();
    let info = store.incremental_copy(&dst, &src, Some(&s1)).unwrap();
    assert!(
        info.status == "success" || info.status == "pending",
        "{info:?}"
    );
    assert_eq!(read(store, &dst, None, 0, 8192), bytes(1, 8192));
    assert_eq!(
        code(store.put_pages(&dst, 0, &[1; 512], &none())),
        ErrorCode::OperationNotAllowedOnIncrementalCopyBlob
    );
    store
        .put_pages(&src, 4096, &bytes(2, 512), &none())
        .unwrap();
    store.clear_pages(&src, 0, 512, &none()).unwrap();
    store
        .put_pages(&src, 65536, &bytes(3, 1024), &none())
        .unwrap();
    let s2 = store.snapshot(&src, &none()).unwrap();
    store.incremental_copy(&dst, &src, Some(&s2)).unwrap();
    assert_eq!(
        read(store, &dst, None, 0, 70_000 / 512 * 512),
        read(store, &src, Some(&s2), 0, 70_000 / 512 * 512)
    );
    assert_eq!(
        code(store.incremental_copy(&dst, &src, Some(&s1))),
        ErrorCode::IncrementalCopyOfEarlierSnapshotNotAllowed
    );
    let copy = store
        .properties(&dst, None)
        .unwrap()
        .copy
        .expect("copy state on the destination");
    assert_eq!(
        (copy.status.as_str(), copy.source_snapshot.as_str()),
        ("success", s2.as_str())
    );
    let dest_snapshots = store
        .list_blobs(container, "", true)
        .unwrap()
        .into_iter()
        .filter(|b| b.name == "copy-dest" && b.properties.snapshot.is_some())
        .count();
    assert_eq!(dest_snapshots, 2, "one destination snapshot per copy");
    let other = BlobPath::new(container, "not-a-copy");
    store.create_page_blob(&other, 4096, 0, &none()).unwrap();
    assert_eq!(
        code(store.incremental_copy(&other, &src, Some(&s2))),
        ErrorCode::IncrementalCopyBlobMismatch
    );
}

pub fn containers_and_creation(store: &dyn PageBlobStore, container: &str) {
    assert_eq!(
        code(store.create_page_blob(&BlobPath::new(container, "x"), 512, 0, &none())),
        ErrorCode::ContainerNotFound
    );
    store.create_container(container).unwrap();
    assert_eq!(
        code(store.create_container(container)),
        ErrorCode::ContainerAlreadyExists
    );
    assert!(store
        .list_containers()
        .unwrap()
        .contains(&container.to_string()));
    let p = BlobPath::new(container, "create");
    assert_eq!(
        code(store.create_page_blob(&p, 1000, 0, &none())),
        ErrorCode::InvalidHeaderValue
    );
    assert_eq!(
        code(store.create_page_blob(&p, MAX_BLOB_SIZE + 512, 0, &none())),
        ErrorCode::InvalidHeaderValue
    );
    assert_eq!(
        code(store.create_page_blob(&p, 512, MAX_SEQUENCE_NUMBER + 1, &none())),
        ErrorCode::InvalidHeaderValue
    );
    let props = store
        .create_page_blob(&p, MAX_BLOB_SIZE, 7, &none())
        .unwrap();
    assert_eq!((props.size, props.sequence_number), (MAX_BLOB_SIZE, 7));
    assert_eq!(
        code(store.properties(&BlobPath::new(container, "missing"), None)),
        ErrorCode::BlobNotFound
    );
}

pub fn put_clear_read_and_ranges(store: &dyn PageBlobStore, container: &str) {
    let p = BlobPath::new(container, "pages");
    store.create_page_blob(&p, 64 * 1024, 0, &none()).unwrap();
    assert_eq!(read(store, &p, None, 0, 4096), vec![0; 4096]);
    assert_eq!(
        code(store.put_pages(&p, 100, &[1; 512], &none())),
        ErrorCode::InvalidPageRange
    );
    assert_eq!(
        code(store.put_pages(&p, 0, &[1; 500], &none())),
        ErrorCode::InvalidPageRange
    );
    assert_eq!(
        code(store.put_pages(&p, 64 * 1024, &[1; 512], &none())),
        ErrorCode::InvalidPageRange
    );
    let big = BlobPath::new(container, "big");
    store.create_page_blob(&big, 16 << 20, 0, &none()).unwrap();
    assert_eq!(
        code(store.put_pages(&big, 0, &vec![1; (4 << 20) + 512], &none())),
        ErrorCode::RequestBodyTooLarge
    );
    store
        .put_pages(&big, 0, &bytes(9, 4 << 20), &none())
        .unwrap();
    assert_eq!(read(store, &big, None, 0, 4 << 20), bytes(9, 4 << 20));

    let before = store.properties(&p, None).unwrap().etag;
    store.put_pages(&p, 1024, &bytes(1, 4096), &none()).unwrap();
    store.put_pages(&p, 8192, &bytes(2, 1024), &none()).unwrap();
    assert_ne!(
        store.properties(&p, None).unwrap().etag,
        before,
        "writes change the ETag"
    );
    store.put_pages(&p, 5120, &bytes(3, 3072), &none()).unwrap(); // joins the first two
    assert_eq!(ranges(store, &p, None, None), vec![range(1024, 9215)]);
    store.clear_pages(&p, 2048, 1024, &none()).unwrap();
    assert_eq!(
        ranges(store, &p, None, None),
        vec![range(1024, 2047), range(3072, 9215)]
    );
    let got = read(store, &p, None, 1024, 8192);
    let mut want = vec![0u8; 8192];
    want[..4096].copy_from_slice(&bytes(1, 4096));
    want[1024..2048].fill(0);
    want[4096..7168].copy_from_slice(&bytes(3, 3072));
    want[7168..8192].copy_from_slice(&bytes(2, 1024));
    assert_eq!(got, want);
    let within = store
        .page_ranges(&p, None, None, Some((0, 2559)), None, None)
        .unwrap()
        .ranges;
    assert_eq!(within, vec![range(1024, 2047)]);
    assert_eq!(
        code(store.read(&p, None, 64 * 1024 - 512, &mut [0; 1024])),
        ErrorCode::InvalidRange
    );
    // Ranges at the edges of the number space and past the blob are answered, not crashed on.
    assert_eq!(
        code(store.page_ranges(&p, None, None, Some((0, u64::MAX)), None, None)),
        ErrorCode::InvalidPageRange
    );
    let empty = BlobPath::new(container, "pages-empty");
    store.create_page_blob(&empty, 4096, 0, &none()).unwrap();
    let past = store.page_ranges(
        &empty,
        None,
        None,
        Some((1 << 20, (2 << 20) - 1)),
        None,
        None,
    );
    assert!(past.unwrap().ranges.is_empty());
    let marker_past = store.page_ranges(&empty, None, None, None, Some("1099511627776"), None);
    assert!(marker_past.unwrap().ranges.is_empty());
    // A marker the store never gave is refused, not read as the start.
    assert_eq!(
        code(store.page_ranges(&empty, None, None, None, Some("2!48!MDAw"), None)),
        ErrorCode::InvalidQueryParameterValue
    );
    // A clear may span the whole blob.
    store.clear_pages(&p, 0, 64 * 1024, &none()).unwrap();
    assert!(ranges(store, &p, None, None).is_empty());
}

/// [`PageBlobStore::put_pages_batch`]: every write of a batch lands (one byte pattern per
/// write, sizes from one page to 4 MiB, out of order, more writes than one pipelined exchange);
/// a bad write fails the batch with the error its own Put Page gets, and a batch for a blob
/// that is not there fails as Put Page does.
pub fn batched_put_pages(store: &dyn PageBlobStore, container: &str) {
    let p = BlobPath::new(container, "batched");
    store.create_page_blob(&p, 32 << 20, 0, &none()).unwrap();
    let sizes = [512, 4096, 65536, 1536, 131_072, 43008, 512, 262_144];
    let mut at = 0u64;
    let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
    for i in 0..40usize {
        let len = if i == 20 {
            4 << 20
        } else {
            sizes[i % sizes.len()]
        };
        writes.push((at, bytes(i as u8, len)));
        at += len as u64 + if i % 3 == 0 { 512 } else { 0 };
    }
    assert!(at <= 32 << 20);
    writes.reverse();
    let batch: Vec<PageWrite<'_>> = writes
        .iter()
        .map(|(offset, data)| PageWrite {
            path: &p,
            offset: *offset,
            data,
        })
        .collect();
    store.put_pages_batch(&batch, &none()).unwrap();
    let mut want = vec![0u8; at as usize];
    for (offset, data) in &writes {
        want[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
    }
    // Read back a MiB at a time (a store that fails calls at random fails long reads often).
    for (i, piece) in want.chunks(1 << 20).enumerate() {
        let got = read(store, &p, None, (i as u64) << 20, piece.len());
        assert!(got == piece, "batched writes read back (MiB {i})");
    }
    let gaps = ranges(store, &p, None, None).len();
    assert_eq!(gaps, 14, "one range per run of adjacent writes");

    let ok = bytes(77, 1024);
    let misaligned = [1u8; 1000];
    for (bad, expected) in [
        (&misaligned[..], ErrorCode::InvalidPageRange),
        (&[][..], ErrorCode::InvalidPageRange),
    ] {
        let batch = [
            PageWrite {
                path: &p,
                offset: 0,
                data: &ok,
            },
            PageWrite {
                path: &p,
                offset: 8192,
                data: bad,
            },
            PageWrite {
                path: &p,
                offset: 16384,
                data: &ok,
            },
        ];
        assert_eq!(code(store.put_pages_batch(&batch, &none())), expected);
    }
    let missing = BlobPath::new(container, "batched-missing");
    let batch = [
        PageWrite {
            path: &missing,
            offset: 0,
            data: &ok,
        },
        PageWrite {
            path: &missing,
            offset: 4096,
            data: &ok,
        },
    ];
    assert_eq!(
        code(store.put_pages_batch(&batch, &none())),
        ErrorCode::BlobNotFound
    );
    store.put_pages_batch(&[], &none()).unwrap();

    // Under a sequence-number condition (a writer's fence): refused whole while the blob holds
    // another number, every write landed once it holds that one.
    let fenced = BlobPath::new(container, "batched-fenced");
    store
        .create_page_blob(&fenced, 1 << 20, 7, &none())
        .unwrap();
    let pattern = bytes(91, 65536);
    let batch: Vec<PageWrite<'_>> = (0..4u64)
        .map(|i| PageWrite {
            path: &fenced,
            offset: i * 131_072,
            data: &pattern,
        })
        .collect();
    let fence = |n| Conditions {
        if_sequence_number_eq: Some(n),
        ..none()
    };
    assert_eq!(
        code(store.put_pages_batch(&batch, &fence(6))),
        ErrorCode::SequenceNumberConditionNotMet
    );
    assert!(
        ranges(store, &fenced, None, None).is_empty(),
        "a refused batch writes nothing"
    );
    store.put_pages_batch(&batch, &fence(7)).unwrap();
    assert_eq!(ranges(store, &fenced, None, None).len(), 4);
    assert!(read(store, &fenced, None, 3 * 131_072, 65536) == pattern);
}

/// `read_batch` reads what `read` reads, from a blob and its snapshot, in any number at once
/// (pages never written as zeros, whatever the buffers held); a read past the end or of a
/// missing blob fails the batch as it fails alone.
pub fn batched_reads(store: &dyn PageBlobStore, container: &str) {
    let p = BlobPath::new(container, "batched-reads");
    store.create_page_blob(&p, 2 << 20, 0, &none()).unwrap();
    let mut old = bytes(5, 1 << 20);
    store.put_pages(&p, 0, &old, &none()).unwrap();
    let snapshot = store.snapshot(&p, &none()).unwrap();
    let new = bytes(6, 64 << 10);
    store.put_pages(&p, 128 << 10, &new, &none()).unwrap();
    // A written piece between unwritten pages after the snapshot was taken.
    let island = bytes(7, 8 << 10);
    store.put_pages(&p, 1536 << 10, &island, &none()).unwrap();
    old.resize(2 << 20, 0);
    let mut want = old.clone();
    want[128 << 10..192 << 10].copy_from_slice(&new);
    want[1536 << 10..1544 << 10].copy_from_slice(&island);
    // 40 reads of 1..=40 KiB less a byte, spread over the blob, every other one from the
    // snapshot (more than one pipelined batch), into buffers holding other bytes.
    let spans: Vec<(u64, usize, bool)> = (0..40u64)
        .map(|i| {
            (
                (i * 49_142) % (1900 << 10),
                (i as usize + 1) * 1024 - 1,
                i % 2 == 0,
            )
        })
        // The island with unwritten pages on both sides, from the blob and the snapshot.
        .chain([(1532 << 10, 16 << 10, false), (1532 << 10, 16 << 10, true)])
        .collect();
    let mut bufs: Vec<Vec<u8>> = spans.iter().map(|&(_, len, _)| vec![0xEE; len]).collect();
    let mut reads: Vec<PageRead<'_>> = spans
        .iter()
        .zip(bufs.iter_mut())
        .map(|(&(offset, _, from_snapshot), buf)| PageRead {
            path: &p,
            snapshot: from_snapshot.then_some(snapshot.as_str()),
            offset,
            buf,
        })
        .collect();
    store.read_batch(&mut reads).unwrap();
    drop(reads);
    for (&(offset, len, from_snapshot), got) in spans.iter().zip(&bufs) {
        let source = if from_snapshot { &old } else { &want };
        let at = offset as usize;
        assert!(got[..] == source[at..at + len], "read of {len} at {offset}");
    }
    let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
    let past_end = [
        PageRead {
            path: &p,
            snapshot: None,
            offset: 0,
            buf: &mut a,
        },
        PageRead {
            path: &p,
            snapshot: None,
            offset: (2 << 20) - 2048,
            buf: &mut b,
        },
    ];
    assert_eq!(
        code(store.read_batch(&mut { past_end })),
        ErrorCode::InvalidRange
    );
    let missing = BlobPath::new(container, "batched-reads-missing");
    let (mut a, mut b) = (vec![0u8; 512], vec![0u8; 512]);
    let mut gone = [
        PageRead {
            path: &missing,
            snapshot: None,
            offset: 0,
            buf: &mut a,
        },
        PageRead {
            path: &missing,
            snapshot: None,
            offset: 512,
            buf: &mut b,
        },
    ];
    assert_eq!(code(store.read_batch(&mut gone)), ErrorCode::BlobNotFound);
    store.read_batch(&mut []).unwrap();
}

pub fn page_range_paging(store: &dyn PageBlobStore, container: &str) {
    let p = BlobPath::new(container, "paging");
    store.create_page_blob(&p, 1 << 20, 0, &none()).unwrap();
    for i in 0..25u64 {
        store
            .put_pages(&p, i * 2048, &[i as u8; 512], &none())
            .unwrap();
    }
    let mut all = Vec::new();
    let mut marker: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store
            .page_ranges(&p, None, None, None, marker.as_deref(), Some(10))
            .unwrap();
        pages += 1;
        assert!(page.ranges.len() <= 10);
        all.extend(page.ranges);
        match page.next_marker {
            Some(m) => marker = Some(m),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        all,
        (0..25u64)
            .map(|i| range(i * 2048, i * 2048 + 511))
            .collect::<Vec<_>>()
    );
}

pub fn snapshots_and_diffs(store: &dyn PageBlobStore, container: &str) {
    let p = BlobPath::new(container, "snaps");
    store.create_page_blob(&p, 1 << 20, 0, &none()).unwrap();
    store.put_pages(&p, 0, &bytes(1, 8192), &none()).unwrap();
    let s1 = store.snapshot(&p, &none()).unwrap();
    assert_eq!(s1.len(), 28, "seven fractional digits: {s1}");
    store.put_pages(&p, 4096, &bytes(2, 4096), &none()).unwrap();
    store.clear_pages(&p, 0, 1024, &none()).unwrap();
    store.put_pages(&p, 65536, &bytes(3, 512), &none()).unwrap();
    let s2 = store.snapshot(&p, &none()).unwrap();
    assert!(s2 > s1);
    assert_eq!(
        read(store, &p, Some(&s1), 0, 8192),
        bytes(1, 8192),
        "a snapshot keeps its content"
    );
    assert_eq!(ranges(store, &p, Some(&s1), None), vec![range(0, 8191)]);
    assert_eq!(
        ranges(store, &p, None, Some(&s1)),
        vec![clear(0, 1023), range(4096, 8191), range(65536, 66047)],
        "diff reports updated and cleared pages"
    );
    assert_eq!(ranges(store, &p, Some(&s2), Some(&s1)).len(), 3);
    assert!(ranges(store, &p, None, Some(&s2)).is_empty());
    assert_eq!(
        code(store.page_ranges(&p, Some(&s1), Some(&s2), None, None, None)),
        ErrorCode::PreviousSnapshotCannotBeNewer
    );
    assert_eq!(
        code(store.page_ranges(
            &p,
            None,
            Some("2001-01-01T00:00:00.0000000Z"),
            None,
            None,
            None
        )),
        ErrorCode::PreviousSnapshotNotFound
    );
    assert_eq!(
        code(store.read(&p, Some("not-a-time"), 0, &mut [0; 512])),
        ErrorCode::InvalidQueryParameterValue
    );
    let listed = store.list_blobs(container, "", true).unwrap();
    assert_eq!(listed.iter().filter(|b| b.name == "snaps").count(), 3);
    // Recreating the blob makes diffs against older snapshots meaningless.
    store.create_page_blob(&p, 1 << 20, 0, &none()).unwrap();
    assert_eq!(
        code(store.page_ranges(&p, None, Some(&s1), None, None, None)),
        ErrorCode::BlobOverwritten
    );
    assert_eq!(
        read(store, &p, Some(&s2), 65536, 512),
        bytes(3, 512),
        "snapshots survive the overwrite"
    );
}

pub fn delete_rules(store: &dyn PageBlobStore, container: &str) {
    let p = BlobPath::new(container, "delete");
    store.create_page_blob(&p, 4096, 0, &none()).unwrap();
    let s = store.snapshot(&p, &none()).unwrap();
    assert_eq!(
        code(store.delete_blob(&p, None, None, &none())),
        ErrorCode::SnapshotsPresent
    );
    store
        .delete_blob(&p, None, Some(DeleteSnapshots::Only), &none())
        .unwrap();
    assert_eq!(
        code(store.properties(&p, Some(&s))),
        ErrorCode::BlobNotFound
    );
    store.properties(&p, None).unwrap();
    let s = store.snapshot(&p, &none()).unwrap();
    store.delete_blob(&p, Some(&s), None, &none()).unwrap();
    store.snapshot(&p, &none()).unwrap();
    store
        .delete_blob(&p, None, Some(DeleteSnapshots::Include), &none())
        .unwrap();
    assert_eq!(code(store.properties(&p, None)), ErrorCode::BlobNotFound);
}

pub fn conditions_and_sequence_numbers(store: &dyn PageBlobStore, container: &str) {
    let p = BlobPath::new(container, "cond");
    let props = store.create_page_blob(&p, 4096, 5, &none()).unwrap();
    let wrong = Conditions {
        if_match: Some("\"0x8D000000000000\"".into()),
        ..none()
    };
    assert_eq!(
        code(store.put_pages(&p, 0, &[1; 512], &wrong)),
        ErrorCode::ConditionNotMet
    );
    let right = Conditions {
        if_match: Some(props.etag.clone()),
        ..none()
    };
    store.put_pages(&p, 0, &[1; 512], &right).unwrap();
    assert_eq!(
        code(store.put_pages(&p, 0, &[1; 512], &right)),
        ErrorCode::ConditionNotMet,
        "the ETag moved on"
    );
    let star = Conditions {
        if_none_match: Some("*".into()),
        ..none()
    };
    assert_eq!(
        code(store.create_page_blob(&p, 4096, 0, &star)),
        ErrorCode::BlobAlreadyExists
    );
    for (cond, ok) in [
        (
            Conditions {
                if_sequence_number_le: Some(5),
                ..none()
            },
            true,
        ),
        (
            Conditions {
                if_sequence_number_le: Some(4),
                ..none()
            },
            false,
        ),
        (
            Conditions {
                if_sequence_number_lt: Some(5),
                ..none()
            },
            false,
        ),
        (
            Conditions {
                if_sequence_number_lt: Some(6),
                ..none()
            },
            true,
        ),
        (
            Conditions {
                if_sequence_number_eq: Some(5),
                ..none()
            },
            true,
        ),
        (
            Conditions {
                if_sequence_number_eq: Some(6),
                ..none()
            },
            false,
        ),
    ] {
        let r = store.put_pages(&p, 512, &[2; 512], &cond);
        if ok {
            r.unwrap();
        } else {
            assert_eq!(
                code(r),
                ErrorCode::SequenceNumberConditionNotMet,
                "{cond:?}"
            );
        }
    }
    let n = |a| {
        store
            .set_sequence_number(&p, a, &none())
            .unwrap()
            .sequence_number
    };
    assert_eq!(n(SequenceNumberAction::Max(3)), 5);
    assert_eq!(n(SequenceNumberAction::Max(9)), 9);
    assert_eq!(n(SequenceNumberAction::Update(2)), 2);
    assert_eq!(n(SequenceNumberAction::Increment), 3);
    n(SequenceNumberAction::Update(MAX_SEQUENCE_NUMBER));
    assert_eq!(
        code(store.set_sequence_number(&p, SequenceNumberAction::Increment, &none())),
        ErrorCode::SequenceNumberIncrementTooLarge
    );
}

pub fn leases(store: &dyn PageBlobStore, clock: &ManualClock, container: &str) {
    let p = BlobPath::new(container, "lease");
    store.create_page_blob(&p, 4096, 0, &none()).unwrap();
    let with = |id: &str| Conditions {
        lease_id: Some(id.into()),
        ..none()
    };
    assert_eq!(
        code(store.put_pages(&p, 0, &[1; 512], &with("a"))),
        ErrorCode::LeaseNotPresentWithBlobOperation
    );
    let acquire = |id: &str, d| LeaseAction::Acquire {
        proposed_id: id.into(),
        duration_secs: d,
    };
    assert_eq!(
        code(store.lease(&p, &acquire("a", Some(5)), &none())),
        ErrorCode::InvalidHeaderValue
    );
    let answer = store.lease(&p, &acquire("a", Some(15)), &none()).unwrap();
    assert_eq!(answer.lease_id.as_deref(), Some("a"));
    assert_eq!(
        store.properties(&p, None).unwrap().lease_state,
        LeaseStateName::Leased
    );
    // A listing says so too, and a prefix lists only the names that start with it.
    store
        .create_page_blob(&BlobPath::new(container, "leased-not"), 512, 0, &none())
        .unwrap();
    let listed_lease = |prefix: &str| -> Vec<(String, LeaseStateName)> {
        store
            .list_blobs(container, prefix, false)
            .unwrap()
            .into_iter()
            .map(|b| (b.name, b.properties.lease_state))
            .collect()
    };
    assert_eq!(
        listed_lease("lease"),
        [
            ("lease".to_string(), LeaseStateName::Leased),
            ("leased-not".to_string(), LeaseStateName::Available)
        ]
    );
    assert_eq!(
        listed_lease("leased"),
        [("leased-not".to_string(), LeaseStateName::Available)]
    );
    assert!(listed_lease("leasez").is_empty());
    assert_eq!(
        code(store.put_pages(&p, 0, &[1; 512], &none())),
        ErrorCode::LeaseIdMissing
    );
    assert_eq!(
        code(store.put_pages(&p, 0, &[1; 512], &with("b"))),
        ErrorCode::LeaseIdMismatchWithBlobOperation
    );
    assert_eq!(
        code(store.lease(&p, &acquire("b", None), &none())),
        ErrorCode::LeaseAlreadyPresent
    );
    store.put_pages(&p, 0, &[1; 512], &with("a")).unwrap();
    clock.advance(16_000_000_000);
    assert_eq!(
        store.properties(&p, None).unwrap().lease_state,
        LeaseStateName::Expired
    );
    assert_eq!(
        listed_lease("lease")[0],
        ("lease".to_string(), LeaseStateName::Expired)
    );
    store.put_pages(&p, 0, &[2; 512], &none()).unwrap();
    store.lease(&p, &acquire("c", None), &none()).unwrap();
    store
        .lease(
            &p,
            &LeaseAction::Change {
                id: "c".into(),
                proposed_id: "d".into(),
            },
            &none(),
        )
        .unwrap();
    let broken = store
        .lease(
            &p,
            &LeaseAction::Break {
                period_secs: Some(10),
            },
            &none(),
        )
        .unwrap();
    assert_eq!(broken.lease_time_secs, Some(10));
    assert_eq!(
        store.properties(&p, None).unwrap().lease_state,
        LeaseStateName::Breaking
    );
    assert_eq!(
        code(store.lease(&p, &acquire("e", None), &none())),
        ErrorCode::LeaseIsBreakingAndCannotBeAcquired
    );
    clock.advance(10_000_000_000);
    assert_eq!(
        store.properties(&p, None).unwrap().lease_state,
        LeaseStateName::Broken
    );
    assert_eq!(
        code(store.lease(&p, &LeaseAction::Renew { id: "d".into() }, &none())),
        ErrorCode::LeaseIsBrokenAndCannotBeRenewed
    );
    store.put_pages(&p, 0, &[3; 512], &none()).unwrap();
    store.lease(&p, &acquire("f", None), &none()).unwrap();
    store
        .lease(&p, &LeaseAction::Release { id: "f".into() }, &none())
        .unwrap();
    assert_eq!(
        store.properties(&p, None).unwrap().lease_state,
        LeaseStateName::Available
    );
}

pub fn resize(store: &dyn PageBlobStore, container: &str) {
    let p = BlobPath::new(container, "resize");
    store.create_page_blob(&p, 8192, 0, &none()).unwrap();
    store.put_pages(&p, 0, &[7; 8192], &none()).unwrap();
    assert_eq!(
        code(store.resize(&p, 1000, &none())),
        ErrorCode::InvalidHeaderValue
    );
    store.resize(&p, 4096, &none()).unwrap();
    assert_eq!(ranges(store, &p, None, None), vec![range(0, 4095)]);
    store.resize(&p, 16384, &none()).unwrap();
    assert_eq!(
        read(store, &p, None, 0, 16384)[4096..],
        vec![0u8; 12288][..],
        "growing reads zeros, dropped pages stay dropped"
    );
}

/// Premium: at most 100 snapshots per blob.
pub fn premium_snapshot_limit(store: &dyn PageBlobStore, container: &str) {
    store.create_container(container).unwrap();
    let p = BlobPath::new(container, "premium");
    store.create_page_blob(&p, 4096, 0, &none()).unwrap();
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(store.snapshot(&p, &none()).unwrap());
    }
    assert_eq!(
        code(store.snapshot(&p, &none())),
        ErrorCode::SnapshotCountExceeded
    );
    store.delete_blob(&p, Some(&ids[0]), None, &none()).unwrap();
    store.snapshot(&p, &none()).unwrap();
    assert_eq!(
        code(store.snapshot(&p, &none())),
        ErrorCode::SnapshotCountExceeded
    );
}
