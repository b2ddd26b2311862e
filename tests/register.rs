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
    // A 6-character password is used, with a warning.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("warning: the .pfx password has 6 character"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
        .args(["register", "--vault", "vt", "--out"])
        .arg(dir.path())
        .env_remove("DRPLANE_PFX_PASSWORD")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DRPLANE_PFX_PASSWORD"));
}

/// Run drplane on a pseudo-terminal, typing `password` at its prompts.
fn on_terminal(args: &[&str], password: &str) -> (bool, String) {
    use std::io::Write;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/prompt.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_drplane"))
        .args(args)
        .env_remove("DRPLANE_PFX_PASSWORD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn password_prompt_on_a_terminal_is_not_echoed_and_never_in_the_process_list() {
    let dir = temp_dir();
    let d = dir.path().to_str().unwrap();
    let secret = "s3cret-Typed-At-Prompt";
    let (ok, shown) = on_terminal(&["register", "--vault", "tty", "--out", d], secret);
    assert!(ok, "{shown}");
    assert!(shown.contains(".pfx password: "), "{shown}");
    assert!(
        shown.contains("again: "),
        "asks twice when creating: {shown}"
    );
    assert!(!shown.contains(secret), "the password was echoed: {shown}");
    assert!(
        !shown.contains("warning"),
        "22 characters are enough: {shown}"
    );
    // The prompted password opens the .pfx; the command line never held it.
    let pfx = format!("{d}/tty.pfx");
    let raw = format!("{d}/disk.raw");
    std::fs::write(&raw, vec![7u8; 8192]).unwrap();
    let store = format!("{d}/store");
    let args = [
        "replicate",
        "--disk",
        &raw,
        "--store",
        &store,
        "--pfx",
        &pfx,
        "--name",
        "t",
    ];
    let (ok, shown) = on_terminal(&args, secret);
    assert!(ok, "{shown}");
    assert!(!shown.contains(secret));
    assert!(args.iter().all(|a| !a.contains(secret)));
    let (ok, shown) = on_terminal(&args, "wrong password");
    assert!(!ok);
    assert!(shown.contains("password"), "{shown}");
}

/// Vault names are Azure's (they name the files written): a path, an empty or hidden name is
/// refused before anything is written; the secrets are readable by their owner only.
#[test]
fn vault_names_are_validated_and_secrets_are_written_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir();
    let out = dir.path().join("out");
    for bad in [
        "../escape",
        "",
        ".hidden",
        "a/b",
        "v",
        "1v",
        "v.pfx",
        &"v".repeat(51),
    ] {
        let o = drplane()
            .args(["register", "--vault", bad, "--out"])
            .arg(&out)
            .env("DRPLANE_PFX_PASSWORD", "pw")
            .output()
            .unwrap();
        assert!(!o.status.success(), "--vault {bad:?} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("not a vault name"), "--vault {bad:?}: {err}");
    }
    assert!(
        !out.exists(),
        "a refused registration wrote {}",
        out.display()
    );
    assert!(!dir.path().join("escape.pfx").exists());
    run_ok(
        drplane()
            .args(["register", "--vault", "vault-2", "--out"])
            .arg(&out)
            .env("DRPLANE_PFX_PASSWORD", "pw"),
    );
    for name in ["vault-2.pfx", "vault-2.VaultCredentials"] {
        let mode = std::fs::metadata(out.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name} is {:o}", mode & 0o777);
    }
}
