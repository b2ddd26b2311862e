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
    /// Recovery Services vault to register with.
    #[arg(long)]
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

/// The .pfx password from a file, the environment or the terminal — never from the command line.
pub fn pfx_password(file: Option<&Path>, confirm: bool) -> Result<String> {
    if let Some(f) = file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("password file {}", f.display()))?;
        return Ok(text.lines().next().unwrap_or_default().to_string());
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
    let (mut credentials, pfx) = register(&args.vault, &server_name, &password, &SystemClock)?;
    credentials.proxy = proxy.as_ref().map(|p| p.record());
    std::fs::create_dir_all(&args.out).with_context(|| args.out.display().to_string())?;
    std::fs::write(&pfx_path, &pfx).with_context(|| pfx_path.display().to_string())?;
    std::fs::write(&creds_path, serde_json::to_vec_pretty(&credentials)?)
        .with_context(|| creds_path.display().to_string())?;
    println!("registered {server_name} with vault {}", credentials.vault);
    println!(
        "credentials: {} (expire {})",
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
