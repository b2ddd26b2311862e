//! Bodies of the pageblob cargo-fuzz targets, shared with the stable corpus replay test:
//! `blob_requests` (HTTP request sequences through the blob server's request handling),
//! `store_log` (bytes as a store's log segment, opened by a reader and a writer) and
//! `page_list` (an endpoint's Get Page Ranges answers, as the client reads and joins them) and
//! `blob_list` (an endpoint's List Blobs answers, as the client reads and pages through them).

pub const TARGETS: [&str; 4] = ["blob_requests", "store_log", "page_list", "blob_list"];

pub fn run(name: &str, data: &[u8]) {
    match name {
        "blob_requests" => blob_requests(data),
        "store_log" => store_log(data),
        "page_list" => page_list(data),
        "blob_list" => blob_list(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

/// Separates the answers of one `page_list` input.
pub const ANSWER_SEPARATOR: u8 = 0;

/// `data` as up to 8 Get Page Ranges answers from an endpoint (split at NUL bytes; past them,
/// an empty answer), read by the HTTP client and joined into one listing as every reader of
/// ranges joins them. Never a panic or a hang; a listing that is taken holds whole 512-byte
/// pages below 8 TiB, in order, none overlapping.
pub fn page_list(data: &[u8]) {
    use crate::types::{BlobPath, MAX_BLOB_SIZE, PAGE_SIZE};
    let answers: Vec<&[u8]> = data.split(|&b| b == ANSWER_SEPARATOR).take(8).collect();
    let mut asked = 0;
    let joined = crate::page_listing::join_pages(&BlobPath::new("fuzz", "b"), |_| {
        let body = answers.get(asked).copied().unwrap_or_default();
        asked += 1;
        crate::http::client::parse_page_list(body)
    });
    assert!(asked <= answers.len() + 1, "{asked} answers asked for");
    if let Ok(ranges) = joined {
        for r in &ranges {
            assert!(
                r.start % PAGE_SIZE == 0 && r.end % PAGE_SIZE == PAGE_SIZE - 1,
                "{r:?}"
            );
            assert!(r.start <= r.end && r.end < MAX_BLOB_SIZE, "{r:?}");
        }
        assert!(
            ranges.windows(2).all(|w| w[0].end < w[1].start),
            "{ranges:?}"
        );
    }
}

/// `data` as up to 8 List Blobs answers from an endpoint (split at NUL bytes; past them, an
/// empty answer), read by the HTTP client and paged through as `list_blobs` pages. Never a
/// panic or a hang: the listing ends within the answers given (one more, empty, at most).
pub fn blob_list(data: &[u8]) {
    let answers: Vec<&[u8]> = data.split(|&b| b == ANSWER_SEPARATOR).take(8).collect();
    let mut asked = 0;
    let listed = crate::http::client::all_blob_pages("fuzz", |_| {
        let body = answers.get(asked).copied().unwrap_or_default();
        asked += 1;
        crate::http::client::parse_blob_list(body)
    });
    assert!(asked <= answers.len() + 1, "{asked} answers asked for");
    if let Ok(blobs) = listed {
        assert!(
            blobs.len() <= data.len(),
            "{} entries from {} bytes",
            blobs.len(),
            data.len()
        );
    }
}

/// `data` as the only segment of a store's log (in memory), opened by a reader, then by a
/// power-mode writer, then by a reader again. Never a panic or an allocation past the record
/// limits; a reader replays exactly the effects a writer keeps, and what a writer leaves (its
/// cut, its sync mark) opens again with the same effects.
pub fn store_log(data: &[u8]) {
    use crate::data_log::{DataLog, Durability, LogAccess};
    use crate::fs::{OpenMode, StoreFs};
    use crate::memory_fs::CrashFs;
    use std::path::Path;
    use std::sync::Arc;

    let fs = CrashFs::new();
    let dir = Path::new("/log");
    let store_fs = || Arc::new(Arc::clone(&fs)) as Arc<dyn StoreFs>;
    let written = fs
        .create_dir_all(dir)
        .and_then(|()| fs.open(&dir.join("segment-000000.log"), OpenMode::Create))
        .and_then(|f| f.write_all_at(data, 0));
    if written.is_err() {
        return;
    }
    let open = |access| {
        let mut effects = Vec::new();
        DataLog::open(store_fs(), dir, Durability::Power, access, |e, at| {
            effects.push((e, at))
        })
        .map(|_| effects)
    };
    let read = open(LogAccess::Read);
    let Ok(kept) = open(LogAccess::Write) else {
        assert!(read.is_err(), "a reader accepted a log a writer refused");
        return;
    };
    assert_eq!(read.expect("the writer accepted it"), kept);
    assert_eq!(
        open(LogAccess::Read).expect("the writer's log reopens"),
        kept
    );
}

/// A store log segment as a power-mode writer leaves it: effects with and without data, the
/// sync marks of two group commits, then `tail` (e.g. a torn append).
fn store_log_seed(tail: &[u8]) -> Vec<u8> {
    use crate::account::Effect;
    use crate::data_log::{DataLog, Durability, LogAccess};
    use crate::fs::{OpenMode, StoreFs};
    use crate::memory_fs::CrashFs;
    use crate::types::BlobPath;
    use std::path::Path;
    use std::sync::Arc;

    let fs = CrashFs::new();
    let dir = Path::new("/log");
    let mut log = DataLog::open(
        Arc::new(Arc::clone(&fs)) as Arc<dyn StoreFs>,
        dir,
        Durability::Power,
        LogAccess::Write,
        |_, _| {},
    )
    .expect("in memory");
    let path = BlobPath::new("c", "b");
    let effects = [
        Effect::CreateContainer {
            name: "c".into(),
            time: 1,
            metadata: Default::default(),
        },
        Effect::Relocate {
            path: path.clone(),
            snapshots: vec![1],
            offset: 512,
            len: 512,
            data: None,
        },
        // Set Blob Properties with several parts: one record.
        Effect::Together {
            effects: vec![
                Effect::Resize {
                    path: path.clone(),
                    size: 8192,
                    time: 2,
                },
                Effect::SetSequenceNumber {
                    path: path.clone(),
                    value: 9,
                    time: 2,
                },
            ],
        },
    ];
    for effect in &effects {
        let data = if matches!(effect, Effect::Relocate { .. }) {
            vec![7u8; 512]
        } else {
            Vec::new()
        };
        log.append(effect, &data).expect("in memory");
        log.take_unsynced().sync().expect("in memory");
        log.append_sync_mark().expect("in memory");
    }
    let file = fs
        .open(&dir.join("segment-000000.log"), OpenMode::Read)
        .expect("written");
    let mut bytes = vec![0u8; file.len().expect("in memory") as usize];
    file.read_exact_at(&mut bytes, 0).expect("in memory");
    bytes.extend_from_slice(tail);
    bytes
}

/// Valid inputs to start from.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let page = "x".repeat(1024);
    let put = format!(
        "PUT /devstoreaccount1/disks/d0?comp=page\nx-ms-page-write: update\nx-ms-range: bytes=0-1023\n\n{page}"
    );
    for (name, premium, requests) in [
        (
            "page-blob-life",
            false,
            vec![
                "PUT /devstoreaccount1/disks?restype=container",
                "PUT /devstoreaccount1/disks/d0\nx-ms-blob-type: PageBlob\nx-ms-blob-content-length: 1048576\nx-ms-blob-sequence-number: 3",
                put.as_str(),
                "PUT /devstoreaccount1/disks/d0?comp=snapshot",
                "PUT /devstoreaccount1/disks/d0?comp=page\nx-ms-page-write: clear\nx-ms-range: bytes=512-1023",
                "GET /devstoreaccount1/disks/d0?comp=pagelist\nx-ms-range: bytes=0-4095",
                "GET /devstoreaccount1/disks/d0\nx-ms-range: bytes=0-2047",
                "HEAD /devstoreaccount1/disks/d0",
                "GET /devstoreaccount1/disks?restype=container&comp=list&include=snapshots",
                "DELETE /devstoreaccount1/disks/d0\nx-ms-delete-snapshots: include",
            ],
        ),
        (
            "leases-and-conditions",
            true,
            vec![
                "PUT /devstoreaccount1/disks?restype=container",
                "PUT /devstoreaccount1/disks/d0\nx-ms-blob-type: PageBlob\nx-ms-blob-content-length: 4096",
                "PUT /devstoreaccount1/disks/d0?comp=lease\nx-ms-lease-action: acquire\nx-ms-lease-duration: -1\nx-ms-proposed-lease-id: 11111111-2222-3333-4444-555555555555",
                "PUT /devstoreaccount1/disks/d0?comp=properties\nx-ms-sequence-number-action: increment\nx-ms-lease-id: 11111111-2222-3333-4444-555555555555",
                "PUT /devstoreaccount1/disks/d0?comp=properties\nx-ms-blob-content-length: 8192\nif-match: \"nope\"",
                "PUT /devstoreaccount1/disks/d0?comp=properties\nx-ms-blob-content-length: 8192\nx-ms-sequence-number-action: max\nx-ms-blob-sequence-number: 7\nx-ms-blob-content-type: text/plain\nx-ms-lease-id: 11111111-2222-3333-4444-555555555555",
                "PUT /devstoreaccount1/disks/d0?comp=lease\nx-ms-lease-action: break",
                "PUT /devstoreaccount1/disks/d1?comp=incrementalcopy\nx-ms-copy-source: http://127.0.0.1/devstoreaccount1/disks/d0?snapshot=2026-11-26T00:00:00.0000000Z",
            ],
        ),
    ] {
        out.push((
            "blob_requests",
            name.to_string(),
            blob_request_sequence(premium, &requests),
        ));
    }
    out.push(("store_log", "synced".into(), store_log_seed(&[])));
    let answer = |inner: &str| {
        format!("<?xml version=\"1.0\" encoding=\"utf-8\"?><PageList>{inner}</PageList>")
    };
    let mut paged = answer(
        "<PageRange><Start>0</Start><End>4095</End></PageRange>\
         <ClearRange><Start>8192</Start><End>8703</End></ClearRange>\
         <NextMarker>2!72!MDAwMDE2</NextMarker>",
    )
    .into_bytes();
    paged.push(ANSWER_SEPARATOR);
    paged.extend(answer("<PageRange><Start>1048576</Start><End>2097151</End></PageRange>").bytes());
    out.push(("page_list", "two-answers".into(), paged));
    let listing = |inner: &str| {
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><EnumerationResults \
             ServiceEndpoint=\"http://127.0.0.1:10000/devstoreaccount1\" \
             ContainerName=\"replicas\">{inner}</EnumerationResults>"
        )
    };
    let mut pages = listing(
        "<Prefix>d.hold-</Prefix><Blobs><Blob><Name>d.hold-3-0123456789abcdef</Name>\
         <Properties><Last-Modified>Mon, 07 Dec 2026 15:13:14 GMT</Last-Modified>\
         <Etag>\"0x1\"</Etag><Content-Length>512</Content-Length>\
         <x-ms-blob-sequence-number>0</x-ms-blob-sequence-number><LeaseStatus>locked</LeaseStatus>\
         <LeaseState>leased</LeaseState></Properties></Blob></Blobs>\
         <NextMarker>2!96!MDAwMDQ1</NextMarker>",
    )
    .into_bytes();
    pages.push(ANSWER_SEPARATOR);
    pages.extend(
        listing(
            "<Blobs><Blob><Name>d.replica</Name><Snapshot>2026-12-07T15:13:14.0000000Z</Snapshot>\
             <Properties><LeaseState>available</LeaseState></Properties></Blob></Blobs>\
             <NextMarker />",
        )
        .bytes(),
    );
    out.push(("blob_list", "two-pages".into(), pages));
    // A power cut's tail: a lost append (zeros), then 7 bytes of a torn one.
    let mut torn = vec![0u8; 300];
    torn.extend_from_slice(b"DPLR\x02\x01\x00");
    out.push(("store_log", "power-cut-tail".into(), store_log_seed(&torn)));
    out
}

/// Separates the requests of one `blob_requests` input.
pub const REQUEST_SEPARATOR: &[u8] = b"\n%%\n";

/// A sequence of HTTP requests (`REQUEST_SEPARATOR` between them), each
/// `METHOD PATH?QUERY\nname: value\n...\n\nBODY`, run in order against a fresh store through
/// the server's request handling — signed with the development key (unless the request carries
/// its own Authorization), so they reach the operations. Every answer must be a well-formed
/// status; the server must not panic, hang or allocate from a size it was told.
pub fn blob_requests(data: &[u8]) {
    let _ = blob_request_statuses(data);
}

/// [`blob_requests`], giving each answer's status.
pub fn blob_request_statuses(data: &[u8]) -> Vec<u16> {
    use crate::clock::{Clock, ManualClock};
    use crate::http::server::{handle_offline, parse_query, ServerConfig};
    use crate::http::shared_key::{self, DEV_ACCOUNT, DEV_KEY};
    use crate::{data_log::Durability, Emulator, Profile};
    use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
    use std::sync::Arc;

    let mut statuses = Vec::new();
    let Ok(dir) = tempfile::tempdir() else {
        return statuses;
    };
    let clock = Arc::new(ManualClock::new(1_795_651_200_000_000_000));
    let profile = if data.first().is_some_and(|b| b & 1 == 1) {
        Profile::Premium {
            snapshot_spacing: false,
        }
    } else {
        Profile::Standard
    };
    let Ok(store) = Emulator::open(dir.path(), profile, Durability::Process, clock.clone()) else {
        return statuses;
    };
    let store: Arc<dyn crate::PageBlobStore> = Arc::new(store);
    let key = shared_key::decode_key(DEV_KEY).expect("development key");
    let config = ServerConfig {
        account: DEV_ACCOUNT.to_string(),
        key: key.clone(),
    };
    let mut rest = data.get(1..).unwrap_or_default();
    for _ in 0..32 {
        let (request, next) = match find(rest, REQUEST_SEPARATOR) {
            Some(at) => (&rest[..at], &rest[at + REQUEST_SEPARATOR.len()..]),
            None => (rest, &[][..]),
        };
        rest = next;
        let (head, body) = match find(request, b"\n\n") {
            Some(at) => (&request[..at], &request[at + 2..]),
            None => (request, &[][..]),
        };
        let head = String::from_utf8_lossy(head);
        let mut lines = head.lines();
        let first = lines.next().unwrap_or_default();
        let (method, target) = first.split_once(' ').unwrap_or((first, "/"));
        let (Ok(method), Ok(uri)) = (Method::from_bytes(method.as_bytes()), target.parse::<Uri>())
        else {
            continue;
        };
        let mut headers = HeaderMap::new();
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            ) {
                headers.append(n, v);
            }
        }
        if !body.is_empty() && !headers.contains_key("content-length") {
            headers.insert("content-length", HeaderValue::from(body.len()));
        }
        headers
            .entry("x-ms-version")
            .or_insert(HeaderValue::from_static("2021-08-06"));
        // Dated by the server's clock, so the request is inside the replay window.
        headers.entry("x-ms-date").or_insert(
            HeaderValue::from_str(&crate::timestamp::http_date(clock.now_nanos()))
                .expect("HTTP date"),
        );
        if !headers.contains_key("authorization") {
            let query = parse_query(uri.query().unwrap_or(""));
            let listed: Vec<(String, String)> = headers
                .iter()
                .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect();
            let sts = shared_key::string_to_sign(
                method.as_str(),
                DEV_ACCOUNT,
                uri.path(),
                &query,
                &listed,
            );
            let auth = format!("SharedKey {DEV_ACCOUNT}:{}", shared_key::sign(&key, &sts));
            if let Ok(v) = HeaderValue::from_str(&auth) {
                headers.insert("authorization", v);
            }
        }
        let response = handle_offline(
            store.clone(),
            config.clone(),
            clock.clone(),
            &method,
            &uri,
            &headers,
            body,
        );
        let status = response.status().as_u16();
        assert!((200..600).contains(&status), "status {status}");
        statuses.push(status);
        if rest.is_empty() {
            break;
        }
    }
    statuses
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A `blob_requests` input: `profile_byte`, then the requests joined by the separator.
pub fn blob_request_sequence(premium: bool, requests: &[&str]) -> Vec<u8> {
    let mut out = vec![u8::from(premium)];
    for (i, r) in requests.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(REQUEST_SEPARATOR);
        }
        out.extend_from_slice(r.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds sign their requests right and reach the operations: the life of a page blob
    /// answers as Azure would, step by step.
    #[test]
    fn blob_request_seeds_reach_the_operations() {
        let seeds = seeds();
        let (_, _, life) = seeds
            .iter()
            .find(|(t, n, _)| *t == "blob_requests" && n == "page-blob-life")
            .unwrap();
        assert_eq!(
            blob_request_statuses(life),
            [201, 201, 201, 201, 201, 200, 206, 200, 200, 202]
        );
        let (_, _, leases) = seeds
            .iter()
            .find(|(t, n, _)| *t == "blob_requests" && n == "leases-and-conditions")
            .unwrap();
        let statuses = blob_request_statuses(leases);
        assert_eq!(&statuses[..4], [201, 201, 201, 200], "{statuses:?}");
        assert_eq!(statuses[4], 412, "If-Match on another ETag: {statuses:?}");
    }
}
