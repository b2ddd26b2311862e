//! The HTTP page-blob client and `register` through an HTTP proxy: a small CONNECT proxy run by
//! the test on loopback (it demands `Proxy-Authorization: Basic`, counts the tunnels it opened
//! and splices bytes to `drplane blob serve`). Listing, replicating and registering work through
//! it; a wrong proxy password is refused with a clear error that never shows the password.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine;
use common::*;

const USER: &str = "svc-asr";
const PASSWORD: &str = "pr0xy-Secret";

struct Proxy {
    addr: String,
    tunnels: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

fn start_proxy() -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let tunnels = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let (t, r) = (tunnels.clone(), refused.clone());
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { return };
            let (t, r, expected) = (t.clone(), r.clone(), expected.clone());
            std::thread::spawn(move || tunnel(client, &expected, &t, &r));
        }
    });
    Proxy {
        addr,
        tunnels,
        refused,
    }
}

fn tunnel(client: TcpStream, expected: &str, tunnels: &AtomicUsize, refused: &AtomicUsize) {
    let mut reader = BufReader::new(client.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    let mut authorized = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("proxy-authorization") && value.trim() == expected {
                authorized = true;
            }
        }
    }
    let mut client = client;
    let target = match request.split_whitespace().collect::<Vec<_>>()[..] {
        ["CONNECT", target, _] => target.to_string(),
        _ => {
            let _ =
                client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n");
            return;
        }
    };
    if !authorized {
        refused.fetch_add(1, Ordering::SeqCst);
        let _ = client.write_all(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n",
        );
        return;
    }
    let Ok(upstream) = TcpStream::connect(&target) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    tunnels.fetch_add(1, Ordering::SeqCst);
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .unwrap();
    // Whatever the client sent after the request head is already in the reader's buffer.
    let buffered = reader.buffer().to_vec();
    let mut up_writer = upstream.try_clone().unwrap();
    up_writer.write_all(&buffered).unwrap();
    let mut up_reader = upstream;
    let mut client_writer = client.try_clone().unwrap();
    let down = std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_reader, &mut client_writer);
        let _ = client_writer.shutdown(std::net::Shutdown::Both);
    });
    let mut rest = reader.into_inner();
    let _ = std::io::copy(&mut rest, &mut up_writer);
    let _ = up_writer.shutdown(std::net::Shutdown::Both);
    let _ = down.join();
}

#[test]
fn the_client_and_register_go_through_an_authenticating_proxy() {
    let dir = temp_dir();
    let server = start_server(&dir.path().join("store"), "standard");
    let proxy = start_proxy();
    let password_file = dir.path().join("proxy-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();

    // Register through the proxy: the account answers, and the proxy (not its password) is
    // recorded in the credentials.
    let out = run_ok(
        drplane()
            .args([
                "register",
                "--vault",
                "v1",
                "--server-name",
                "hv01",
                "--out",
            ])
            .arg(dir.path().join("reg"))
            .args(["--proxy", &proxy.addr, "--proxy-user", USER])
            .arg("--proxy-password-file")
            .arg(&password_file)
            .args(["--check-store", &server.endpoint])
            .env("DRPLANE_PFX_PASSWORD", "pfx-pw"),
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("through proxy"), "{stdout}");
    let creds = std::fs::read_to_string(dir.path().join("reg/v1.VaultCredentials")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&creds).unwrap();
    assert_eq!(v["proxy"]["address"], "127.0.0.1");
    assert_eq!(v["proxy"]["user"], USER);
    assert!(
        !creds.contains(PASSWORD),
        "the proxy password is never recorded"
    );
    let after_register = proxy.tunnels.load(Ordering::SeqCst);
    assert!(after_register >= 1);

    // Replicate with those credentials: the agent uses the recorded proxy; the password comes
    // from the environment.
    let disk = dir.path().join("disk.raw");
    let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i / 4096) as u8).collect();
    std::fs::write(&disk, &data).unwrap();
    let out = run_ok(
        drplane()
            .args(["replicate", "--disk"])
            .arg(&disk)
            .args(["--store", &server.endpoint, "--name", "d1", "--pfx"])
            .arg(dir.path().join("reg/v1.pfx"))
            .env("DRPLANE_PFX_PASSWORD", "pfx-pw")
            .env("DRPLANE_PROXY_PASSWORD", PASSWORD),
    );
    assert!(out.status.success());
    assert!(proxy.tunnels.load(Ordering::SeqCst) > after_register);
    let restored = dir.path().join("restored.raw");
    run_ok(
        drplane()
            .args([
                "restore",
                "--store",
                &server.endpoint,
                "--name",
                "d1",
                "--point",
                "latest",
                "--pfx",
            ])
            .arg(dir.path().join("reg/v1.pfx"))
            .args(["--proxy", &proxy.addr, "--proxy-user", USER, "-o"])
            .arg(&restored)
            .env("DRPLANE_PFX_PASSWORD", "pfx-pw")
            .env("DRPLANE_PROXY_PASSWORD", PASSWORD),
    );
    assert!(std::fs::read(&restored).unwrap() == data);

    // A wrong password: refused by the proxy, said clearly, the password not echoed.
    let out = drplane()
        .args([
            "blob",
            "ls",
            "--store",
            &server.endpoint,
            "--proxy",
            &proxy.addr,
            "--proxy-user",
            USER,
        ])
        .env("DRPLANE_PROXY_PASSWORD", "wrong-Secret-42")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("407") || stderr.to_lowercase().contains("proxy"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wrong-Secret-42") && !stderr.contains(PASSWORD),
        "{stderr}"
    );
    assert!(proxy.refused.load(Ordering::SeqCst) >= 1);
    server.stop("-TERM");
}
