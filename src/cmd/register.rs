//! `drplane register`: vault credentials (5 days) and the data-encryption certificate (.pfx).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use datapath::registration::register;
use pageblob::clock::SystemClock;
use pageblob::timestamp::http_date;

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Recovery Services vault to register with: 2-50 letters, digits and hyphens, starting
    /// with a letter (Azure's rule); it names the files written.
    #[arg(long, value_parser = vault_name)]
    vault: String,
    /// Folder for `<vault>.VaultCredentials` and `<vault>.pfx`.
    #[arg(long)]
    out: PathBuf,
    /// Friendly server name (default: this host's name).
    #[arg(long)]
    server_name: Option<String>,
    /// File holding the .pfx password (else DRPLANE_PFX_PASSWORD, else a prompt).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// The proxy this server reaches the service through: recorded in the credentials (not
    /// its password) for the agent to use.
    #[command(flatten)]
    proxy: super::proxy::ProxyArgs,
    /// Check that this storage account (URL) answers, through the proxy when there is one.
    #[arg(long, value_name = "URL")]
    check_store: Option<String>,
    /// Account key for --check-store (default: the development key; or DRPLANE_ACCOUNT_KEY).
    #[arg(long, env = "DRPLANE_ACCOUNT_KEY", hide_env_values = true)]
    key: Option<String>,
}

/// A Recovery Services vault name, as Azure allows them: 2-50 characters, letters, digits and
/// hyphens, starting with a letter. (It becomes a file name: no separators, no dots.)
fn vault_name(name: &str) -> Result<String, String> {
    let valid = (2..=50).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if valid {
        Ok(name.to_string())
    } else {
        Err(format!(
            "{name:?} is not a vault name: 2-50 letters, digits and hyphens, starting with a letter"
        ))
    }
}

/// Write a secret to a new file readable by its owner only (0600), never over an existing one.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| path.display().to_string())?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| path.display().to_string())
}

/// The .pfx password from a file, the environment or the terminal — never from the command line.
pub fn pfx_password(file: Option<&Path>, confirm: bool) -> Result<String> {
    if let Some(f) = file {
        return super::secret_from_file(f, "password file");
    }
    if let Ok(p) = std::env::var("DRPLANE_PFX_PASSWORD") {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no .pfx password: give --password-file or set DRPLANE_PFX_PASSWORD");
    }
    let p = rpassword::prompt_password(".pfx password: ")?;
    if confirm && rpassword::prompt_password("again: ")? != p {
        bail!("the two passwords differ");
    }
    Ok(p)
}

/// Passwords shorter than this are warned about at registration.
const ADVISED_PASSWORD_CHARS: usize = 12;

/// A warning for a short .pfx password (it is still used: the user chose it).
fn weak_password_warning(password: &str) -> Option<String> {
    let chars = password.chars().count();
    (chars < ADVISED_PASSWORD_CHARS).then(|| {
        format!(
            "warning: the .pfx password has {chars} character(s): whoever copies the .pfx can \
             try passwords offline, and it holds the keys of every replica; \
             {ADVISED_PASSWORD_CHARS} or more (a passphrase) are advised"
        )
    })
}

pub fn run(args: RegisterArgs) -> Result<ExitCode> {
    let server_name = match args.server_name {
        Some(n) => n,
        None => std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "drplane-host".into()),
    };
    let creds_path = args.out.join(format!("{}.VaultCredentials", args.vault));
    let pfx_path = args.out.join(format!("{}.pfx", args.vault));
    for p in [&creds_path, &pfx_path] {
        if p.exists() {
            bail!("{} exists: registering again would replace the key that decrypts existing replicas (move it away first)", p.display());
        }
    }
    let proxy = args.proxy.settings(None)?;
    if let Some(url) = &args.check_store {
        // Registration fails early, like the provider's, when the service is not reachable.
        let target = super::blob::Target::url(url, args.key.clone(), args.proxy.clone());
        let store = target.open_reader()?;
        store.list_containers().with_context(|| match &proxy {
            Some(p) => format!("reaching {url} through proxy {p}"),
            None => format!("reaching {url}"),
        })?;
        println!(
            "reached {url}{}",
            proxy
                .as_ref()
                .map_or(String::new(), |p| format!(" through proxy {p}"))
        );
    }
    let password = pfx_password(args.password_file.as_deref(), true)?;
    if password.is_empty() {
        bail!("the .pfx password is empty");
    }
    if let Some(warning) = weak_password_warning(&password) {
        eprintln!("{warning}");
    }
    let (mut credentials, pfx) = register(&args.vault, &server_name, &password, &SystemClock)?;
    credentials.proxy = proxy.as_ref().map(|p| p.record());
    std::fs::create_dir_all(&args.out).with_context(|| args.out.display().to_string())?;
    write_secret(&pfx_path, &pfx)?;
    if let Err(e) = write_secret(&creds_path, &serde_json::to_vec_pretty(&credentials)?) {
        // Half a registration is none: the .pfx goes too.
        let _ = std::fs::remove_file(&pfx_path);
        return Err(e);
    }
    // The names in the folder are durable too.
    if let Ok(dir) = std::fs::File::open(&args.out) {
        let _ = dir.sync_all();
    }
    println!("registered {server_name} with vault {}", credentials.vault);
    println!(
        "credentials: {} (register other servers with them until {}; replication does not expire)",
        creds_path.display(),
        http_date(credentials.expires_at)
    );
    println!(
        "certificate: {} (thumbprint {})",
        pfx_path.display(),
        credentials.certificate_thumbprint
    );
    Ok(ExitCode::SUCCESS)
}
