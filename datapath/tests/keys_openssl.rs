//! `.pfx` files made by `openssl pkcs12` (modern PBES2/AES and `-legacy` RC2/3DES) load, give
//! the same keys, and fail with distinct errors for a wrong password or a missing key.

use std::path::Path;
use std::process::Command;

use datapath::keys::{Identity, KeyError};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl on PATH");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key and self-signed certificate, exported as modern, legacy, key-less and
/// certificate-less `.pfx` files.
fn make(dir: &Path, name: &str) {
    let key = format!("{name}.key");
    let cert = format!("{name}.crt");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "1",
            "-subj",
            "/CN=drplane-test",
        ],
    );
    openssl(
        dir,
        &[
            "pkcs12",
            "-export",
            "-inkey",
            &key,
            "-in",
            &cert,
            "-out",
            &format!("{name}-modern.pfx"),
            "-passout",
            "pass:s3cret",
        ],
    );
    openssl(
        dir,
        &[
            "pkcs12",
            "-export",
            "-legacy",
            "-inkey",
            &key,
            "-in",
            &cert,
            "-out",
            &format!("{name}-legacy.pfx"),
            "-passout",
            "pass:s3cret",
        ],
    );
    openssl(
        dir,
        &[
            "pkcs12",
            "-export",
            "-nokeys",
            "-in",
            &cert,
            "-out",
            &format!("{name}-nokey.pfx"),
            "-passout",
            "pass:s3cret",
        ],
    );
    openssl(
        dir,
        &[
            "pkcs12",
            "-export",
            "-nocerts",
            "-inkey",
            &key,
            "-out",
            &format!("{name}-nocert.pfx"),
            "-passout",
            "pass:s3cret",
        ],
    );
}

fn load(dir: &Path, file: &str, password: &str) -> Result<Identity, KeyError> {
    Identity::from_pfx(&std::fs::read(dir.join(file)).unwrap(), password)
}

fn fingerprint(dir: &Path, cert: &str) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha1", "-in", cert])
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
}

#[test]
fn modern_and_legacy_pfx_of_one_key_give_the_same_identity_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    make(dir.path(), "a");
    let modern = load(dir.path(), "a-modern.pfx", "s3cret").unwrap();
    let legacy = load(dir.path(), "a-legacy.pfx", "s3cret").unwrap();
    assert_eq!(modern.key_id, legacy.key_id);
    assert_eq!(
        modern.key_id.to_string(),
        fingerprint(dir.path(), "a.crt"),
        "key id is the SHA-1 thumbprint"
    );
    assert_eq!(modern.disk_keys("disk-1"), legacy.disk_keys("disk-1"));
    let k1 = modern.disk_keys("disk-1");
    let k2 = modern.disk_keys("disk-2");
    assert_ne!(k1.data, k2.data);
    assert_ne!(k1.data, k1.digest);
}

#[test]
fn another_certificate_gives_other_keys() {
    let dir = tempfile::tempdir().unwrap();
    make(dir.path(), "a");
    make(dir.path(), "b");
    let a = load(dir.path(), "a-modern.pfx", "s3cret").unwrap();
    let b = load(dir.path(), "b-modern.pfx", "s3cret").unwrap();
    assert_ne!(a.key_id, b.key_id);
    assert_ne!(a.disk_keys("d").data, b.disk_keys("d").data);
}

#[test]
fn wrong_password_and_missing_key_are_distinct_errors() {
    let dir = tempfile::tempdir().unwrap();
    make(dir.path(), "a");
    for file in ["a-modern.pfx", "a-legacy.pfx"] {
        let err = load(dir.path(), file, "wrong").unwrap_err();
        assert!(matches!(err, KeyError::WrongPassword), "{file}: {err}");
    }
    let err = load(dir.path(), "a-nokey.pfx", "s3cret").unwrap_err();
    assert!(matches!(err, KeyError::NoPrivateKey), "{err}");
    // A key without its certificate is named as such (it used to be "holds no private key").
    let err = load(dir.path(), "a-nocert.pfx", "s3cret").unwrap_err();
    assert!(matches!(err, KeyError::NoCertificate), "{err}");
    assert!(err.to_string().contains("no certificate"), "{err}");
}

/// The PKCS#8 bytes of the private key in a `.pfx`.
fn key_der(pfx: &[u8], password: &str) -> Vec<u8> {
    let store = p12_keystore::KeyStore::from_pkcs12(
        pfx,
        password,
        p12_keystore::Pkcs12ImportPolicy::Relaxed,
    )
    .unwrap();
    store.private_key_chain().unwrap().1.key().as_der().to_vec()
}

#[test]
fn the_registration_key_re_exported_by_openssl_in_another_encoding_gives_the_same_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let clock = pageblob::clock::ManualClock::new(1_700_000_000_000_000_000);
    let (_, pfx) = datapath::registration::register("vault", "host", "s3cret", &clock).unwrap();
    std::fs::write(d.join("reg.pfx"), &pfx).unwrap();
    // Out of the .pfx, the key without its optional public key, and back into a new .pfx.
    openssl(
        d,
        &[
            "pkcs12",
            "-in",
            "reg.pfx",
            "-nodes",
            "-passin",
            "pass:s3cret",
            "-out",
            "all.pem",
        ],
    );
    openssl(
        d,
        &["ec", "-in", "all.pem", "-no_public", "-out", "key.pem"],
    );
    openssl(d, &["x509", "-in", "all.pem", "-out", "cert.pem"]);
    openssl(
        d,
        &[
            "pkcs12",
            "-export",
            "-inkey",
            "key.pem",
            "-in",
            "cert.pem",
            "-out",
            "again.pfx",
            "-passout",
            "pass:other",
        ],
    );
    let again = std::fs::read(d.join("again.pfx")).unwrap();
    assert_ne!(
        key_der(&pfx, "s3cret"),
        key_der(&again, "other"),
        "the re-export should encode the key differently"
    );
    let (first, second) = (
        Identity::from_pfx(&pfx, "s3cret").unwrap(),
        Identity::from_pfx(&again, "other").unwrap(),
    );
    assert_eq!(first.key_id, second.key_id);
    assert_eq!(first.disk_keys("disk-1"), second.disk_keys("disk-1"));
}
