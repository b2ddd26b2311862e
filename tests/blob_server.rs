//! `drplane blob serve` against the official Azure SDK for Python (azure-storage-blob, installed
//! into a venv under target/ on first use), across restarts — graceful and `kill -9` — and
//! against hostile requests.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// A venv with azure-storage-blob (made once per target directory).
fn python() -> PathBuf {
    python_venv("pyenv", "azure.storage.blob", "azure-storage-blob")
}

fn sdk(py: &Path, endpoint: &str, phase: &str, profile: &str, input: Option<&[u8]>) -> Vec<u8> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/sdk_pageblob.py");
    let mut child = Command::new(py)
        .arg(script)
        .args([endpoint, phase, profile])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.unwrap_or_default())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "SDK {phase} ({profile}) failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn python_sdk_round_trip_survives_graceful_restart_on_standard() {
    let py = python();
    let dir = temp_dir();
    let server = start_server(dir.path(), "standard");
    let summary = sdk(&py, &server.endpoint, "write", "standard", None);
    server.stop("-TERM");
    let server = start_server(dir.path(), "standard");
    sdk(&py, &server.endpoint, "verify", "standard", Some(&summary));
    server.stop("-TERM");
}

#[test]
fn python_sdk_sees_premium_snapshot_limit_and_data_survives_kill_9() {
    let py = python();
    let dir = temp_dir();
    let server = start_server(dir.path(), "premium");
    let summary = sdk(&py, &server.endpoint, "write", "premium", None);
    server.stop("-KILL");
    let server = start_server(dir.path(), "premium");
    sdk(&py, &server.endpoint, "verify", "premium", Some(&summary));
    server.stop("-TERM");
}

fn raw(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn bad_signatures_and_garbage_requests_are_refused_and_the_server_stays_up() {
    let dir = temp_dir();
    let server = start_server(dir.path(), "standard");
    let addr = server.addr();
    let unsigned = raw(&addr, b"PUT /devstoreaccount1/c1?restype=container HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert!(
        unsigned.starts_with("HTTP/1.1 403")
            && unsigned.contains("x-ms-error-code: AuthenticationFailed"),
        "{unsigned}"
    );
    let forged = raw(
        &addr,
        b"PUT /devstoreaccount1/abc?restype=container HTTP/1.1\r\nHost: x\r\nx-ms-date: Wed, 09 Mar 2011 01:42:34 GMT\r\nAuthorization: SharedKey devstoreaccount1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(
        forged.starts_with("HTTP/1.1 403") && forged.contains("AuthenticationFailed"),
        "{forged}"
    );
    let _ = raw(&addr, b"\x00\x01garbage\r\n\r\n");
    let _ = raw(&addr, b"GET /devstoreaccount1/%ff%fe/%00?comp=pagelist&marker=zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let huge = raw(&addr, b"PUT /devstoreaccount1/c/b?comp=page HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\nConnection: close\r\n\r\n");
    assert!(huge.starts_with("HTTP/1.1 4"), "{huge}");
    let again = raw(
        &addr,
        b"GET /devstoreaccount1?comp=list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        again.starts_with("HTTP/1.1 403"),
        "server no longer answers: {again}"
    );
    server.stop("-TERM");
}

/// `drplane blob upload` against the server: a file whose length is not a multiple of 512, with
/// an all-zero 4 MiB chunk in the middle, uploaded by 3 workers: every byte reads back, the zero
/// chunk was never sent (no page range), and the tail past the file reads as zeros.
#[test]
fn cli_upload_streams_a_file_with_holes_and_an_odd_tail() {
    use pageblob::http::client::HttpStore;
    use pageblob::{BlobPath, PageBlobStore};
    let dir = temp_dir();
    let server = start_server(&dir.path().join("store"), "standard");
    let chunk = 4usize << 20;
    let mut data: Vec<u8> = (0..(3 * chunk + 12_345) as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    data[chunk..2 * chunk].fill(0);
    let file = file_in(dir.path(), "disk.raw");
    std::fs::write(&file, &data).unwrap();
    let out = run_ok(
        drplane()
            .args(["blob", "upload"])
            .arg(&file)
            .args([
                "--store",
                &server.endpoint,
                "--container",
                "upl",
                "--name",
                "d",
            ])
            .args(["--threads", "3"]),
    );
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    let size = data.len().next_multiple_of(512);
    assert!(
        said.contains(&format!("{size} bytes ({} sent)", size - chunk)),
        "{said}"
    );
    let store = HttpStore::new(
        &server.endpoint,
        pageblob::http::shared_key::DEV_ACCOUNT,
        &pageblob::http::shared_key::decode_key(pageblob::http::shared_key::DEV_KEY).unwrap(),
    );
    let p = BlobPath::new("upl", "d");
    let mut back = vec![0xAAu8; size];
    store.read(&p, None, 0, &mut back).unwrap();
    assert!(back[..data.len()] == data[..], "uploaded bytes differ");
    assert!(back[data.len()..].iter().all(|&b| b == 0), "tail not zero");
    let ranges: Vec<(u64, u64)> = store
        .page_ranges(&p, None, None, None, None, None)
        .unwrap()
        .ranges
        .iter()
        .map(|r| (r.start, r.end))
        .collect();
    let c = chunk as u64;
    assert_eq!(ranges, vec![(0, c - 1), (2 * c, size as u64 - 1)]);
    // A missing file is named, not a panic.
    let missing = drplane()
        .args([
            "blob",
            "upload",
            "/nonexistent/disk.raw",
            "--store",
            &server.endpoint,
        ])
        .args(["--container", "upl", "--name", "x"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/disk.raw"));
    // The blob exists now: replaced only with --force (upload replaced any blob, a replica's
    // journal with its committed points included); a replica's blob never.
    let small = file_in(dir.path(), "small.raw");
    std::fs::write(&small, [7u8; 512]).unwrap();
    let upload = |container: &str, name: &str, force: bool| {
        let mut cmd = drplane();
        cmd.args(["blob", "upload"]).arg(&small).args([
            "--store",
            &server.endpoint,
            "--container",
            container,
            "--name",
            name,
        ]);
        if force {
            cmd.arg("--force");
        }
        cmd.output().unwrap()
    };
    let again = upload("upl", "d", false);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("upl/d exists: give --force"));
    store.read(&p, None, 0, &mut back).unwrap();
    assert!(back[..data.len()] == data[..], "replaced without --force");
    assert!(upload("upl", "d", true).status.success());
    assert_eq!(store.properties(&p, None).unwrap().size, 512);
    assert!(upload("replicas", "vm.journal", false).status.success());
    for force in [false, true] {
        let refused = upload("replicas", "vm.journal", force);
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && said.contains("belongs to a replica"),
            "{said}"
        );
    }
    server.stop("-TERM");
}

/// A request signed with the development key, as raw HTTP/1.1 bytes (`headers` lower-case).
fn signed_request(
    addr: &str,
    method: &str,
    path: &str,
    query: &str,
    headers: &[(&str, String)],
) -> Vec<u8> {
    use pageblob::http::shared_key::{decode_key, sign, string_to_sign, DEV_ACCOUNT, DEV_KEY};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut all: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect();
    all.push(("x-ms-date".into(), pageblob::timestamp::http_date(now)));
    all.push(("x-ms-version".into(), "2021-08-06".into()));
    let sts = string_to_sign(
        method,
        DEV_ACCOUNT,
        path,
        &pageblob::http::server::parse_query(query),
        &all,
    );
    let signature = sign(&decode_key(DEV_KEY).unwrap(), &sts);
    let mut head = format!("{method} {path}?{query} HTTP/1.1\r\nhost: {addr}\r\n");
    for (n, v) in &all {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!(
        "authorization: SharedKey {DEV_ACCOUNT}:{signature}\r\n\r\n"
    ));
    head.into_bytes()
}

/// Resident memory of a process, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// `blob serve` under a crowd: thousands of idle and slow-header connections, hundreds of
/// unauthenticated requests declaring 4 MiB bodies, and a dozen authenticated 64 MiB reads
/// whose clients stop reading. A normal client is served throughout, and the server's memory
/// stays bounded (before the fixes: 931 MB for the bodies alone, and no answer at all once
/// ~1,020 connections were open).
#[test]
fn blob_serve_keeps_serving_a_normal_client_through_a_crowd_with_bounded_memory() {
    use pageblob::http::client::HttpStore;
    use pageblob::http::shared_key::{decode_key, DEV_ACCOUNT, DEV_KEY};
    use pageblob::{BlobPath, Conditions, PageBlobStore};
    use rustix::process::{getrlimit, setrlimit, Resource};
    // Room for the crowd in this process.
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
    let fds = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    // Past the server's cap (512, or less on a machine with few descriptors), so eviction is
    // exercised even where the hard limit is the common 1024.
    let crowd = (fds.saturating_sub(400) as usize).min(3000);
    assert!(
        crowd > 512,
        "open-file hard limit {fds}: too low to crowd the server past its cap"
    );

    let dir = temp_dir();
    let server = start_server(dir.path(), "standard");
    let addr = server.addr();
    let pid = server.child.id();
    let client = HttpStore::new(&server.endpoint, DEV_ACCOUNT, &decode_key(DEV_KEY).unwrap());
    let none = Conditions::default();
    client.create_container("load").unwrap();
    let big = BlobPath::new("load", "big");
    let size = 64u64 << 20;
    client.create_page_blob(&big, size, 0, &none).unwrap();
    let chunk = |i: u64| -> Vec<u8> {
        (0..4u64 << 20)
            .map(|j| ((i * 131 + j * 7) >> 3) as u8)
            .collect()
    };
    for i in 0..size / (4 << 20) {
        client
            .put_pages(&big, i * (4 << 20), &chunk(i), &none)
            .unwrap();
    }
    let baseline = rss(pid);

    // Normal client's check: a write and a read back, each answered.
    let small = BlobPath::new("load", "small");
    client.create_page_blob(&small, 1 << 20, 0, &none).unwrap();
    let served = |round: u8| {
        let page = vec![round; 4096];
        client
            .put_pages(&small, 0, &page, &none)
            .unwrap_or_else(|e| panic!("round {round}: write: {e}"));
        let mut back = vec![0u8; 4096];
        client
            .read(&small, None, 0, &mut back)
            .unwrap_or_else(|e| panic!("round {round}: read: {e}"));
        assert_eq!(back, page, "round {round}");
    };
    served(1);

    // The crowd: idle, slow headers, unauthenticated 4 MiB bodies.
    let mut held = Vec::new();
    let unauthenticated = 300;
    for i in 0..crowd {
        let mut s = TcpStream::connect(&addr).unwrap();
        if i % 3 == 1 {
            let _ = s.write_all(b"PUT /devstoreaccount1/load/x?comp=page HTTP/1.1\r\nHost: x\r\n");
        }
        if i < unauthenticated {
            let head = format!(
                "PUT /devstoreaccount1/load/big?comp=page HTTP/1.1\r\nHost: x\r\nx-ms-date: {}\r\n\
                 Authorization: SharedKey {DEV_ACCOUNT}:AAAA\r\nContent-Length: {}\r\n\r\n",
                pageblob::timestamp::http_date(0),
                4 << 20
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&[0x55; 64 << 10]);
        }
        held.push(s);
        if i % 500 == 499 {
            served((i / 500 + 2) as u8);
        }
    }
    // A dozen full 64 MiB reads whose clients read the headers and then stop.
    let mut stalled = Vec::new();
    for _ in 0..12 {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        s.write_all(&signed_request(
            &addr,
            "GET",
            "/devstoreaccount1/load/big",
            "timeout=30",
            &[],
        ))
        .unwrap();
        let mut first = [0u8; 64];
        let n = s.read(&mut first).unwrap();
        assert!(
            first[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&first[..n])
        );
        stalled.push(s);
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    served(100);
    let crowded = rss(pid);
    eprintln!(
        "crowd of {crowd} connections, {unauthenticated} unauthenticated bodies, 12 stalled 64 MiB reads: \
         server RSS {} MB → {} MB",
        baseline >> 20,
        crowded >> 20
    );
    assert!(
        crowded < baseline + (200 << 20),
        "server memory grew from {} MB to {} MB",
        baseline >> 20,
        crowded >> 20
    );
    // A full read by the normal client, concurrently with the stalled ones, is whole.
    let mut all = vec![0u8; size as usize];
    client.read(&big, None, 0, &mut all).unwrap();
    for i in 0..size / (4 << 20) {
        let at = (i * (4 << 20)) as usize;
        assert!(all[at..at + (4 << 20)] == chunk(i)[..], "chunk {i} differs");
    }
    drop(held);
    drop(stalled);
    served(200);
    server.stop("-TERM");
}

/// `blob serve` killed and restarted in the middle of a replication cycle: the client retries
/// through the refused and reset connections and the cycle commits a point that restores.
#[test]
fn a_replication_cycle_rides_through_a_blob_serve_restart() {
    let dir = temp_dir();
    let d = dir.path();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let server = start_server(&d.join("served"), "standard");
    let addr = server.addr();
    run_ok(drplane().env("DRPLANE_PFX_PASSWORD", "restart-pw").args([
        "register",
        "--vault",
        "vt",
        "--out",
        &p("reg"),
    ]));
    // 96 MiB of data that does not compress away.
    let disk = p("disk.raw");
    let mut data = vec![0u8; 96 << 20];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
    }
    std::fs::write(&disk, &data).unwrap();
    let mut replicate = drplane()
        .env("DRPLANE_PFX_PASSWORD", "restart-pw")
        .args([
            "replicate",
            "--disk",
            &disk,
            "--store",
            &server.endpoint,
            "--pfx",
            &p("reg/vt.pfx"),
        ])
        .args(["--name", "d1", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    if replicate.try_wait().unwrap().is_some() {
        let out = replicate.wait_with_output().unwrap();
        panic!(
            "the cycle ended before the restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    server.stop("-KILL");
    std::thread::sleep(std::time::Duration::from_millis(700));
    let server = start_server_on(&d.join("served"), "standard", &addr);
    let out = replicate.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the cycle failed across the restart:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = p("restored.raw");
    run_ok(
        drplane()
            .env("DRPLANE_PFX_PASSWORD", "restart-pw")
            .args([
                "restore",
                "--store",
                &server.endpoint,
                "--pfx",
                &p("reg/vt.pfx"),
            ])
            .args(["--name", "d1", "--point", "0", "-o", &restored]),
    );
    assert!(
        std::fs::read(&restored).unwrap() == data,
        "the restored disk differs"
    );
    server.stop("-TERM");
}

#[test]
fn blob_sas_mints_tokens_the_server_honours_and_refuses_bad_requests() {
    use pageblob::http::client::HttpStore;
    use pageblob::{BlobPath, Conditions, PageBlobStore};
    let dir = temp_dir();
    let server = start_server(dir.path(), "standard");
    let store = HttpStore::new(
        &server.endpoint,
        pageblob::http::shared_key::DEV_ACCOUNT,
        &pageblob::http::shared_key::decode_key(pageblob::http::shared_key::DEV_KEY).unwrap(),
    );
    store.create_container("shared").unwrap();
    let p = BlobPath::new("shared", "disk");
    store
        .create_page_blob(&p, 4096, 0, &Conditions::default())
        .unwrap();
    let mint = |args: &[&str]| {
        let out = run_ok(drplane().args(["blob", "sas"]).args(args));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let token = mint(&[
        "--container",
        "shared",
        "--blob",
        "disk",
        "--permissions",
        "r",
        "--expiry",
        "2099-01-01",
    ]);
    let get = |path: &str, method: &str, token: &str| {
        raw(
            &server.addr(),
            format!(
                "{method} /devstoreaccount1/{path}?{token} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
    };
    let read = get("shared/disk", "HEAD", &token);
    assert!(read.starts_with("HTTP/1.1 200"), "{read}");
    let write = get("shared/disk", "PUT", &format!("comp=metadata&{token}"));
    assert!(
        write.starts_with("HTTP/1.1 403") && write.contains("AuthorizationPermissionMismatch"),
        "{write}"
    );
    let account = mint(&["--permissions", "l", "--expiry", "2099-01-01T00:00:00Z"]);
    let list = get("", "GET", &format!("comp=list&{account}"));
    assert!(
        list.starts_with("HTTP/1.1 200") && list.contains("<Name>shared</Name>"),
        "{list}"
    );
    for bad in [
        &["--permissions", "rx", "--expiry", "2099-01-01"][..],
        &["--permissions", "r", "--expiry", "next week"],
        &[
            "--permissions",
            "r",
            "--expiry",
            "2099-01-01",
            "--ip",
            "somewhere",
        ],
        &[
            "--permissions",
            "r",
            "--expiry",
            "2099-01-01",
            "--start",
            "2099-02-01",
        ],
        &[
            "--permissions",
            "r",
            "--expiry",
            "2099-01-01",
            "--container",
            "Bad_Name",
        ],
    ] {
        let out = drplane().args(["blob", "sas"]).args(bad).output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "{bad:?}: {said}"
        );
        assert!(said.contains("--"), "{bad:?} names the flag: {said}");
    }
    server.stop("-TERM");
}
