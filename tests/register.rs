//! `drplane register` against OpenSSL: the .pfx it writes opens with `openssl pkcs12`, and the
//! thumbprint it reports is the certificate's SHA-1 fingerprint.

mod common;

use std::process::Command;

use common::*;

#[test]
fn registered_pfx_opens_with_openssl_and_thumbprint_matches() {
    let dir = temp_dir();
    let out = run_ok(
        drplane()
            .args([
                "register",
                "--vault",
                "vault1",
                "--server-name",
                "hv01",
                "--out",
            ])
            .arg(dir.path())
            .env("DRPLANE_PFX_PASSWORD", "pw-123"),
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("vault1.VaultCredentials")).unwrap())
            .unwrap();
    assert_eq!(creds["vault"], "vault1");
    let issued = creds["issued_at"].as_u64().unwrap();
    assert_eq!(
        creds["expires_at"].as_u64().unwrap() - issued,
        5 * 24 * 3600 * 1_000_000_000
    );
    let pfx = dir.path().join("vault1.pfx");
    let cert = dir.path().join("cert.pem");
    let status = Command::new("openssl")
        .args(["pkcs12", "-in"])
        .arg(&pfx)
        .args(["-passin", "pass:pw-123", "-nokeys", "-out"])
        .arg(&cert)
        .status()
        .unwrap();
    assert!(status.success(), "openssl cannot open our .pfx");
    let fp = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    let fp = String::from_utf8(fp.stdout)
        .unwrap()
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "");
    assert_eq!(creds["certificate_thumbprint"], fp);
    assert!(stdout.contains(&fp));
    // Registering again into the same folder would replace the key: refused.
    let again = drplane()
        .args(["register", "--vault", "vault1", "--out"])
        .arg(dir.path())
        .env("DRPLANE_PFX_PASSWORD", "x")
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
}

#[test]
fn register_without_a_password_source_fails_clearly() {
    let dir = temp_dir();
    let out = drplane()
        .args(["register", "--vault", "v", "--out"])
        .arg(dir.path())
        .env_remove("DRPLANE_PFX_PASSWORD")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DRPLANE_PFX_PASSWORD"));
}
