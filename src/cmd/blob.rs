//! `drplane blob serve|upload|ls|ranges|snapshots`: the page-blob store from the command line.
//! Every command but `serve` works on a store directory or an endpoint URL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use pageblob::clock::SystemClock;
use pageblob::data_log::Durability;
use pageblob::faults::{FaultConfig, FaultyStore};
use pageblob::http::connections::ServerLimits;
use pageblob::http::server::{serve_with_limits, ServerConfig};
use pageblob::http::shared_key::{decode_key, DEV_ACCOUNT, DEV_KEY};
use pageblob::location::StoreLocation;
use pageblob::timestamp::http_date;
use pageblob::upload::upload_chunks;
use pageblob::{BlobPath, Conditions, Emulator, PageBlobStore, Profile, PAGE_SIZE};
use serde_json::json;

use crate::progress::bytes_bar;

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
        /// power (default): every acknowledged write is synced, files and folders, and
        /// survives a power cut; process: it survives a killed server only (faster).
        #[arg(long, default_value = "power")]
        durability: String,
        /// Connections open at once; past it, a new client closes the idlest connection
        /// (lowered to fit the open-file limit).
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
        max_connections: u32,
        /// Seconds a connection may sit outside a request (idle, or sending its headers).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=86_400))]
        idle_timeout: u32,
        /// Threads answering requests (default: one per core). Beside a client on a small
        /// machine, fewer leave it more of the cores: replicating through a server with one
        /// thread on 2 cores is ~5% faster than with two.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
        threads: Option<u16>,
        #[command(flatten)]
        faults: FaultArgs,
    },
    /// Upload a raw file as a page blob (size rounded up to 512; zero pages skipped).
    Upload {
        /// The raw file to upload.
        file: PathBuf,
        #[command(flatten)]
        target: Target,
        /// Container of the new blob (created if missing).
        #[arg(long)]
        container: String,
        /// Name of the new page blob.
        #[arg(long)]
        name: String,
        /// Parallel Put Page calls (1–32, like UploadThreadsPerVM).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32))]
        threads: u16,
        /// Replace a blob of that name (its snapshots stay). A replica's blobs (container
        /// `replicas`) are never replaced: they hold its committed points.
        #[arg(long)]
        force: bool,
    },
    /// List containers, or the blobs (and snapshots) of one container.
    Ls {
        #[command(flatten)]
        target: Target,
        /// List this container's blobs and snapshots (default: the containers).
        container: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Page ranges of a blob or snapshot, or the diff against a previous snapshot.
    Ranges {
        #[command(flatten)]
        target: Target,
        /// The blob's container.
        container: String,
        /// The page blob.
        name: String,
        /// Ranges of this snapshot (its timestamp) instead of the blob.
        #[arg(long)]
        snapshot: Option<String>,
        /// Only what changed since this earlier snapshot (written and cleared ranges).
        #[arg(long)]
        prev_snapshot: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Mint a shared access signature (a query string to append to a URL with `?`): for a blob
    /// (`--container` and `--blob`), a container (`--container`), or the account (neither).
    Sas {
        /// Container the token is for (omit for an account SAS).
        #[arg(long)]
        container: Option<String>,
        /// Blob in that container the token is for.
        #[arg(long, requires = "container")]
        blob: Option<String>,
        /// Permission letters: r read, l list, c create, w write, d delete (e.g. `rl`).
        #[arg(long)]
        permissions: String,
        /// Expiry, UTC: `2030-01-31` or `2030-01-31T12:00:00Z`.
        #[arg(long)]
        expiry: String,
        /// Start, UTC (default: at once).
        #[arg(long)]
        start: Option<String>,
        /// Client addresses allowed: one address or `LOW-HIGH`.
        #[arg(long)]
        ip: Option<String>,
        /// Resource types of an account SAS: s service, c container, o object.
        #[arg(long, default_value = "sco", conflicts_with = "container")]
        resource_types: String,
        /// Account name in URLs and signatures.
        #[arg(long, default_value = DEV_ACCOUNT)]
        account: String,
        /// Base64 account key (default: the well-known development key).
        #[arg(long, default_value = DEV_KEY, hide_default_value = true)]
        key: String,
    },
    /// Snapshots of a blob.
    Snapshots {
        #[command(flatten)]
        target: Target,
        /// The blob's container.
        container: String,
        /// The page blob.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Seeded fault and throttle injection (all off by default).
#[derive(Debug, Args)]
pub struct FaultArgs {
    /// Chance (0–1) of 503 ServerBusy per request, before it is applied.
    #[arg(long, default_value_t = 0.0)]
    fault_busy: f64,
    /// Chance (0–1) of 500 OperationTimedOut after a write was applied.
    #[arg(long, default_value_t = 0.0)]
    fault_timeout: f64,
    /// Chance (0–1) that a Put Page of several pages is torn: a prefix applied, then 500.
    #[arg(long, default_value_t = 0.0)]
    fault_torn: f64,
    /// Seed of the fault draws.
    #[arg(long, default_value_t = 0)]
    fault_seed: u64,
    /// Latency added to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Bandwidth cap in MiB/s for request and answer bodies.
    #[arg(long)]
    bandwidth_mib: Option<u64>,
}

impl FaultArgs {
    fn config(&self) -> Result<Option<FaultConfig>> {
        for (name, p) in [
            ("--fault-busy", self.fault_busy),
            ("--fault-timeout", self.fault_timeout),
            ("--fault-torn", self.fault_torn),
        ] {
            if !(0.0..=1.0).contains(&p) {
                bail!("{name} {p}: a chance between 0 and 1");
            }
        }
        let active = self.fault_busy > 0.0
            || self.fault_timeout > 0.0
            || self.fault_torn > 0.0
            || self.latency_ms > 0
            || self.bandwidth_mib.is_some();
        Ok(active.then(|| FaultConfig {
            seed: self.fault_seed,
            server_busy: self.fault_busy,
            timeout_after_write: self.fault_timeout,
            torn_write: self.fault_torn,
            refuse_deletes: false,
            kill_after_writes: None,
            latency: std::time::Duration::from_millis(self.latency_ms),
            bandwidth_bytes_per_sec: self.bandwidth_mib.map(|m| m.saturating_mul(1 << 20)),
        }))
    }
}

/// Where the store is.
#[derive(Debug, Args)]
pub struct Target {
    /// A store directory, or an endpoint such as http://127.0.0.1:10000/devstoreaccount1.
    #[arg(long)]
    store: String,
    /// Account for an endpoint (default: from the URL path).
    #[arg(long)]
    account: Option<String>,
    /// Base64 key for an endpoint (default: the development key; or DRPLANE_ACCOUNT_KEY).
    #[arg(long, env = "DRPLANE_ACCOUNT_KEY", hide_env_values = true)]
    key: Option<String>,
    #[command(flatten)]
    pub proxy: super::proxy::ProxyArgs,
    /// The proxy registration recorded (used when `--proxy` is not given).
    #[arg(skip)]
    pub recorded_proxy: Option<pageblob::http::proxy::ProxyRecord>,
    /// A store directory written to: `power` (default) syncs every write, files and folders,
    /// so committed points survive a power cut; `process` only survives a killed process.
    #[arg(long, default_value = "power", value_parser = parse_durability)]
    durability: Durability,
}

/// `--durability`: power or process.
pub fn parse_durability(text: &str) -> Result<Durability, String> {
    match text {
        "power" => Ok(Durability::Power),
        "process" => Ok(Durability::Process),
        other => Err(format!("{other}: power or process")),
    }
}

impl Target {
    /// An account at `url` (its account from the path), reached through `proxy`.
    pub fn url(url: &str, key: Option<String>, proxy: super::proxy::ProxyArgs) -> Target {
        Target {
            store: url.to_string(),
            account: None,
            key,
            proxy,
            recorded_proxy: None,
            durability: Durability::Power,
        }
    }

    /// The same account and key, another store.
    /// Whether `other` names this target's store: the same endpoint URL, or the same
    /// directory by any path.
    pub fn is_store(&self, other: &str) -> bool {
        use super::output_file::OutputIdentity;
        let url = |s: &str| s.starts_with("http://") || s.starts_with("https://");
        match (url(&self.store), url(other)) {
            (true, true) => self.store.trim_end_matches('/') == other.trim_end_matches('/'),
            (false, false) => {
                OutputIdentity::of(std::path::Path::new(&self.store))
                    == OutputIdentity::of(std::path::Path::new(other))
            }
            _ => false,
        }
    }

    /// Whether opening this target to write would create a store directory (it names a
    /// directory that is not there yet).
    pub fn would_create_store(&self) -> bool {
        let url = self.store.starts_with("http://") || self.store.starts_with("https://");
        !url && !std::path::Path::new(&self.store).exists()
    }

    pub fn with_store(&self, store: &str) -> Target {
        Target {
            store: store.to_string(),
            account: self.account.clone(),
            key: self.key.clone(),
            proxy: self.proxy.clone(),
            recorded_proxy: self.recorded_proxy.clone(),
            durability: self.durability,
        }
    }

    /// The library's location: the proxy resolved (flags, else the registration's).
    fn location(&self) -> Result<StoreLocation> {
        Ok(StoreLocation {
            store: self.store.clone(),
            account: self.account.clone(),
            key: self.key.clone(),
            proxy: self.proxy.settings(self.recorded_proxy.as_ref())?,
            durability: self.durability,
        })
    }

    /// The store to write: replicate, upload, bench (see [`StoreLocation::open_writer`]).
    pub fn open_writer(
        &self,
        new_profile: Option<Profile>,
    ) -> Result<(Box<dyn PageBlobStore>, Option<Profile>)> {
        Ok(self
            .location()?
            .open_writer(new_profile, Arc::new(SystemClock))?)
    }

    /// The store to read: points, verify, restore, listings (see
    /// [`StoreLocation::open_reader`]); waiting for a writer is said on stderr.
    pub fn open_reader(&self) -> Result<Box<dyn PageBlobStore>> {
        let store = &self.store;
        Ok(self
            .location()?
            .open_reader(Arc::new(SystemClock), &|holder| {
                eprintln!(
                    "store {store} is being written by {holder}: waiting for it to finish its cycle"
                )
            })?)
    }
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
            max_connections,
            idle_timeout,
            threads,
            faults,
        } => {
            let limits = ServerLimits {
                max_connections: max_connections as usize,
                idle_timeout: std::time::Duration::from_secs(idle_timeout.into()),
                ..ServerLimits::default()
            };
            // Room for the store's own files and the listener.
            let limits = limits.fitting_open_files(raise_open_file_limit(), 256);
            run_serve(
                listen, data, account, key, profile, durability, limits, threads, &faults,
            )
        }
        BlobCommand::Sas {
            container,
            blob,
            permissions,
            expiry,
            start,
            ip,
            resource_types,
            account,
            key,
        } => {
            let token = mint_sas(&SasRequest {
                container: container.as_deref(),
                blob: blob.as_deref(),
                permissions: &permissions,
                expiry: &expiry,
                start: start.as_deref(),
                ip: ip.as_deref(),
                resource_types: &resource_types,
                account: &account,
                key: &key,
            })?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        BlobCommand::Upload {
            file,
            target,
            container,
            name,
            threads,
            force,
        } => upload(&file, &target, &container, &name, threads.into(), force),
        BlobCommand::Ls {
            target,
            container,
            json,
        } => ls(&target, container.as_deref(), json),
        BlobCommand::Ranges {
            target,
            container,
            name,
            snapshot,
            prev_snapshot,
            json,
        } => {
            let store = target.open_reader()?;
            let p = BlobPath::new(&container, &name);
            let all = pageblob::page_listing::all_page_ranges(
                &*store,
                &p,
                snapshot.as_deref(),
                prev_snapshot.as_deref(),
            )?;
            if json {
                let v: Vec<_> = all
                    .iter()
                    .map(|r| json!({"start": r.start, "end": r.end, "cleared": r.cleared}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for r in &all {
                    println!(
                        "{} {}-{} ({} bytes)",
                        if r.cleared { "clear" } else { "page " },
                        r.start,
                        r.end,
                        r.end - r.start + 1
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BlobCommand::Snapshots {
            target,
            container,
            name,
            json,
        } => {
            let store = target.open_reader()?;
            let snaps: Vec<String> = store
                .list_blobs(&container, "", true)?
                .into_iter()
                .filter(|b| b.name == name)
                .filter_map(|b| b.properties.snapshot)
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&snaps)?);
            } else {
                for s in snaps {
                    println!("{s}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn ls(target: &Target, container: Option<&str>, as_json: bool) -> Result<ExitCode> {
    let store = target.open_reader()?;
    match container {
        None => {
            let names = store.list_containers()?;
            if as_json {
                println!("{}", serde_json::to_string_pretty(&names)?);
            } else {
                for n in names {
                    println!("{n}");
                }
            }
        }
        Some(c) => {
            let blobs = store.list_blobs(c, "", true)?;
            if as_json {
                let v: Vec<_> = blobs
                    .iter()
                    .map(|b| json!({"name": b.name, "snapshot": b.properties.snapshot, "size": b.properties.size, "etag": b.properties.etag, "sequence_number": b.properties.sequence_number, "last_modified": http_date(b.properties.last_modified)}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for b in blobs {
                    println!(
                        "{:<40} {:>16} {}",
                        b.name,
                        b.properties.size,
                        b.properties.snapshot.as_deref().unwrap_or("(base)")
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn upload(
    file: &std::path::Path,
    target: &Target,
    container: &str,
    name: &str,
    threads: usize,
    force: bool,
) -> Result<ExitCode> {
    let (store, _) = target.open_writer(None)?;
    let len = std::fs::metadata(file)
        .with_context(|| file.display().to_string())?
        .len();
    let size = len.next_multiple_of(PAGE_SIZE);
    match store.create_container(container) {
        Ok(()) => {}
        Err(e) if e.code() == Some(pageblob::ErrorCode::ContainerAlreadyExists) => {}
        Err(e) => return Err(e.into()),
    }
    let p = BlobPath::new(container, name);
    // Created only where no blob is (If-None-Match: *, so a blob made meanwhile is not
    // replaced either), unless --force; never over a replica's blob, whose loss would take
    // its committed points with it.
    let only_if_absent = Conditions {
        if_none_match: Some("*".into()),
        ..Conditions::default()
    };
    let replica_blob = container == super::REPLICA_CONTAINER;
    let cond = if force && !replica_blob {
        Conditions::default()
    } else {
        only_if_absent
    };
    if let Err(e) = store.create_page_blob(&p, size, 0, &cond) {
        if e.code() != Some(pageblob::ErrorCode::BlobAlreadyExists) {
            return Err(e.into());
        }
        if replica_blob {
            bail!(
                "{p} exists and belongs to a replica: its committed points depend on it, so \
                 blob upload never replaces it (upload into another container)"
            );
        }
        bail!("{p} exists: give --force to replace it (its snapshots stay)");
    }
    let bar = bytes_bar(size, "upload");
    let f = std::fs::File::open(file).with_context(|| file.display().to_string())?;
    let start = std::time::Instant::now();
    // Every worker reads its own chunk (past the end of the file: zeros, up to the last page)
    // and sends it unless it is all zeros (the blob was just created).
    let fill = |at: u64, buf: &mut [u8]| -> std::io::Result<()> {
        let inside = len.saturating_sub(at).min(buf.len() as u64) as usize;
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf[..inside], at)?;
        buf[inside..].fill(0);
        bar.inc(buf.len() as u64);
        Ok(())
    };
    let sent = upload_chunks(&*store, &p, 0, size, threads, true, &fill)
        .with_context(|| format!("uploading {}", file.display()))?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "uploaded {name}: {size} bytes ({sent} sent) in {secs:.2} s ({:.1} MiB/s)",
        sent as f64 / secs / 1048576.0
    );
    Ok(ExitCode::SUCCESS)
}

/// Raise this process's open-file limit to its hard maximum; the limit now in force.
fn raise_open_file_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum || limit.maximum.is_none() {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// What `blob sas` was asked for.
struct SasRequest<'a> {
    container: Option<&'a str>,
    blob: Option<&'a str>,
    permissions: &'a str,
    expiry: &'a str,
    start: Option<&'a str>,
    ip: Option<&'a str>,
    resource_types: &'a str,
    account: &'a str,
    key: &'a str,
}

/// Check a SAS request the way the server will read it, then sign it.
fn mint_sas(r: &SasRequest<'_>) -> Result<String> {
    use pageblob::http::sas::{account_sas, service_sas, Grant};
    use pageblob::timestamp::parse_sas_time;
    if r.permissions.is_empty() || !r.permissions.chars().all(|c| "rlcwd".contains(c)) {
        anyhow::bail!(
            "--permissions {:?}: letters from r, l, c, w, d",
            r.permissions
        );
    }
    let expiry = parse_sas_time(r.expiry).with_context(|| {
        format!(
            "--expiry {:?}: 2030-01-31 or 2030-01-31T12:00:00Z (UTC)",
            r.expiry
        )
    })?;
    if let Some(start) = r.start {
        let at = parse_sas_time(start).with_context(|| {
            format!("--start {start:?}: 2030-01-31 or 2030-01-31T12:00:00Z (UTC)")
        })?;
        if at >= expiry {
            anyhow::bail!("--start {start} is not before --expiry {}", r.expiry);
        }
    }
    if let Some(ip) = r.ip {
        let (low, high) = ip.split_once('-').unwrap_or((ip, ip));
        for a in [low, high] {
            a.parse::<std::net::IpAddr>()
                .with_context(|| format!("--ip {ip:?}: an address or LOW-HIGH"))?;
        }
    }
    if r.resource_types.is_empty() || !r.resource_types.chars().all(|c| "sco".contains(c)) {
        anyhow::bail!(
            "--resource-types {:?}: letters from s, c, o",
            r.resource_types
        );
    }
    if let Some(c) = r.container {
        if let Some(why) = pageblob::names::container_name_error(c) {
            anyhow::bail!("--container: {why}");
        }
    }
    if let Some(why) = r.blob.and_then(pageblob::names::blob_name_error) {
        anyhow::bail!("--blob: {why}");
    }
    let key = decode_key(r.key).context("--key is not base64")?;
    let grant = Grant {
        permissions: r.permissions,
        start: r.start,
        expiry: r.expiry,
        ip: r.ip,
        protocol: None,
    };
    Ok(match r.container {
        Some(c) => service_sas(r.account, &key, c, r.blob, &grant),
        None => account_sas(r.account, &key, r.resource_types, &grant),
    })
}

#[allow(clippy::too_many_arguments)]
fn run_serve(
    listen: SocketAddr,
    data: PathBuf,
    account: String,
    key: String,
    profile: String,
    durability: String,
    limits: ServerLimits,
    threads: Option<u16>,
    faults: &FaultArgs,
) -> Result<ExitCode> {
    let profile = Profile::parse(&profile)
        .with_context(|| format!("--profile {profile}: standard, premium or premium-spaced"))?;
    let durability =
        parse_durability(&durability).map_err(|e| anyhow::anyhow!("--durability {e}"))?;
    let key = decode_key(&key).context("--key is not base64")?;
    let emulator = Emulator::open(&data, profile, durability, Arc::new(SystemClock))
        .with_context(|| format!("store {}", data.display()))?;
    // Readers of the directory are told to use the URL instead of waiting for the server.
    emulator
        .hold_until_exit()
        .with_context(|| format!("store {}", data.display()))?;
    let store: Arc<dyn PageBlobStore> = match faults.config()? {
        Some(config) => Arc::new(FaultyStore::new(emulator, config)),
        None => Arc::new(emulator),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        runtime.worker_threads(threads.into());
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listen on {listen}"))?;
        let addr = listener.local_addr()?;
        println!("listening on http://{addr}/{account}");
        eprintln!("connection string: DefaultEndpointsProtocol=http;AccountName={account};AccountKey=<key>;BlobEndpoint=http://{addr}/{account};");
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        eprintln!("at most {} connections", limits.max_connections);
        serve_with_limits(listener, store, ServerConfig { account, key }, Arc::new(SystemClock), limits, shutdown).await?;
        eprintln!("stopped");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
