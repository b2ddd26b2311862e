//! `drplane blob serve`: the embedded page-blob store over the Azure Blob REST API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use datapath::clock::SystemClock;
use datapath::pageblob::data_log::Durability;
use datapath::pageblob::http::server::{serve, ServerConfig};
use datapath::pageblob::http::shared_key::{decode_key, DEV_ACCOUNT, DEV_KEY};
use datapath::pageblob::{Emulator, Profile};

#[derive(Debug, Subcommand)]
pub enum BlobCommand {
    /// Serve a store directory as an Azure Blob endpoint (path-style URLs, Shared Key).
    Serve {
        /// Address to listen on (port 0 picks a free port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:10000")]
        listen: SocketAddr,
        /// Store directory (created if missing).
        #[arg(long)]
        data: PathBuf,
        /// Account name in URLs and signatures.
        #[arg(long, default_value = DEV_ACCOUNT)]
        account: String,
        /// Base64 account key (default: the well-known development key).
        #[arg(long, default_value = DEV_KEY, hide_default_value = true)]
        key: String,
        /// standard | premium (100 snapshots per blob) | premium-spaced (also 1 per 10 min).
        #[arg(long, default_value = "standard")]
        profile: String,
        /// process: acknowledged writes survive a killed server; power: fdatasync each write.
        #[arg(long, default_value = "process")]
        durability: String,
    },
}

pub fn run(command: BlobCommand) -> Result<ExitCode> {
    match command {
        BlobCommand::Serve {
            listen,
            data,
            account,
            key,
            profile,
            durability,
        } => {
            let profile = Profile::parse(&profile).with_context(|| {
                format!("--profile {profile}: standard, premium or premium-spaced")
            })?;
            let durability = match durability.as_str() {
                "process" => Durability::Process,
                "power" => Durability::Power,
                other => bail!("--durability {other}: process or power"),
            };
            let key = decode_key(&key).context("--key is not base64")?;
            let store = Emulator::open(&data, profile, durability, Arc::new(SystemClock))
                .with_context(|| format!("store {}", data.display()))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listen on {listen}"))?;
                let addr = listener.local_addr()?;
                println!("listening on http://{addr}/{account}");
                eprintln!(
                    "connection string: DefaultEndpointsProtocol=http;AccountName={account};AccountKey=<key>;BlobEndpoint=http://{addr}/{account};"
                );
                let shutdown = async {
                    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                };
                serve(listener, Arc::new(store), ServerConfig { account, key }, Arc::new(SystemClock), shutdown).await?;
                eprintln!("stopped");
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
