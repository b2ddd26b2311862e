//! `--proxy HOST:PORT [--proxy-user U] [--proxy-password-file F]`: how the agent reaches the
//! storage account through an HTTP proxy (a CONNECT tunnel), as ASR's provider and agent are
//! registered with one. The password comes from a file or `DRPLANE_PROXY_PASSWORD`, never from
//! the command line, and is never printed.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pageblob::http::proxy::{ProxyRecord, ProxySettings};

#[derive(Debug, Clone, Default, Args)]
pub struct ProxyArgs {
    /// Reach the storage account through this HTTP proxy (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    pub proxy: Option<String>,
    /// User for the proxy.
    #[arg(long)]
    pub proxy_user: Option<String>,
    /// File holding the proxy password (else DRPLANE_PROXY_PASSWORD).
    #[arg(long)]
    pub proxy_password_file: Option<PathBuf>,
}

impl ProxyArgs {
    fn password(&self) -> Result<Option<String>> {
        if let Some(f) = &self.proxy_password_file {
            return super::secret_from_file(f, "proxy password file").map(Some);
        }
        Ok(std::env::var("DRPLANE_PROXY_PASSWORD").ok())
    }

    /// The proxy to use: the one given here, else the one registration recorded (`recorded`),
    /// else none.
    pub fn settings(&self, recorded: Option<&ProxyRecord>) -> Result<Option<ProxySettings>> {
        let user_given = self.proxy_user.is_some();
        match (&self.proxy, recorded) {
            (Some(address), _) => {
                let password = if user_given { self.password()? } else { None };
                Ok(Some(ProxySettings::parse(
                    address,
                    self.proxy_user.clone(),
                    password,
                )?))
            }
            (None, Some(record)) => {
                let password = if record.user.is_some() {
                    self.password()?
                } else {
                    None
                };
                Ok(Some(ProxySettings::from_record(record, password)))
            }
            (None, None) if user_given || self.proxy_password_file.is_some() => {
                anyhow::bail!("--proxy-user and --proxy-password-file need --proxy")
            }
            (None, None) => Ok(None),
        }
    }
}
