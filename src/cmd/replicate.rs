//! `drplane replicate | points | restore`: one cycle of a disk file into a store, the recovery
//! points of a replica, and restoring one byte-exact.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use datapath::clock::{Clock, SystemClock};
use datapath::keys::Identity;
use datapath::pageblob::timestamp::http_date;
use datapath::replica::block_record::BlockCodec;
use datapath::replica::disk_replica::{DiskReplica, Layout};
use datapath::replica::nonce::NonceSource;
use datapath::replicate::{replicate_once, BlockSource, RawSource};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde_json::json;

use super::blob::Target;
use super::register::pfx_password;

/// Container that holds replicas.
const REPLICA_CONTAINER: &str = "replicas";

#[derive(Debug, Args)]
pub struct Keys {
    /// The .pfx from `drplane register`.
    #[arg(long)]
    pfx: PathBuf,
    /// File holding the .pfx password (else DRPLANE_PFX_PASSWORD, else a prompt).
    #[arg(long)]
    password_file: Option<PathBuf>,
}

impl Keys {
    fn load(&self) -> Result<Identity> {
        let bytes = std::fs::read(&self.pfx).with_context(|| self.pfx.display().to_string())?;
        let password = pfx_password(self.password_file.as_deref(), false)?;
        Identity::from_pfx(&bytes, &password).with_context(|| self.pfx.display().to_string())
    }
}

#[derive(Debug, Args)]
pub struct ReplicateArgs {
    /// The disk: a .vhdx (chains followed) or a raw image.
    #[arg(long)]
    disk: PathBuf,
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    keys: Keys,
    /// Replica name (default: the VHDX Virtual Disk ID, or the file name).
    #[arg(long)]
    name: Option<String>,
    /// Replication block size in KiB (power of two, 4–4096); fixed for a replica.
    #[arg(long, default_value_t = 64)]
    block_size_kib: u32,
    #[arg(long, default_value_t = 1)]
    zstd_level: i32,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct PointsArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    keys: Keys,
    #[arg(long)]
    name: String,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    keys: Keys,
    #[arg(long)]
    name: String,
    /// Point sequence number, or `latest`.
    #[arg(long, default_value = "latest")]
    point: String,
    /// Raw output file.
    #[arg(short, long)]
    output: PathBuf,
}

fn open_source(path: &Path) -> Result<(Box<dyn BlockSource>, String)> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into());
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("vhdx"))
    {
        let disk = vhdx::Disk::open(path).with_context(|| path.display().to_string())?;
        let id = disk.top().metadata.disk_id.to_string();
        Ok((Box::new(disk), id))
    } else {
        let file = vhdx::MappedFile::open(path).with_context(|| path.display().to_string())?;
        Ok((Box::new(RawSource(file)), stem))
    }
}

/// The layout of an existing replica (from its blob size) or of a new one.
fn layout_for(disk_size: u64, block_size_kib: u32) -> Result<Layout> {
    let block_size = block_size_kib
        .checked_mul(1024)
        .filter(|b| b.is_power_of_two() && (4096..=4 << 20).contains(b));
    let Some(block_size) = block_size else {
        bail!("--block-size-kib {block_size_kib}: a power of two from 4 to 4096")
    };
    Ok(Layout {
        disk_size: disk_size.next_multiple_of(512),
        block_size,
    })
}

pub fn replicate(args: ReplicateArgs) -> Result<ExitCode> {
    let identity = args.keys.load()?;
    let (source, default_name) = open_source(&args.disk)?;
    let name = args.name.unwrap_or(default_name);
    let store = args.target.open()?;
    let layout = layout_for(source.disk_size(), args.block_size_kib)?;
    let replica = DiskReplica::open(&*store, REPLICA_CONTAINER, &name, layout)?;
    let keys = identity.disk_keys(&name);
    let mut nonces = NonceSource::new_epoch(&mut ChaCha8Rng::from_os_rng());
    let report = replicate_once(
        &replica,
        &*source,
        &identity,
        &keys,
        args.zstd_level,
        &mut nonces,
        SystemClock.now_nanos(),
    )?;
    let ratio = if report.bytes_stored > 0 {
        report.bytes_read as f64 / report.bytes_stored as f64
    } else {
        0.0
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "name": name, "point": report.point.sequence, "snapshot": report.point.snapshot,
                "blocks": report.blocks, "blocks_changed": report.blocks_changed,
                "bytes_read": report.bytes_read, "bytes_stored": report.bytes_stored,
                "seconds": report.seconds,
            }))?
        );
    } else {
        println!(
            "{name}: point {} committed ({}), {} of {} blocks changed, {} bytes read, {} stored (ratio {ratio:.2}), {:.2} s",
            report.point.sequence, report.point.snapshot, report.blocks_changed, report.blocks, report.bytes_read, report.bytes_stored, report.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn open_replica<'a>(
    store: &'a dyn datapath::pageblob::PageBlobStore,
    name: &str,
) -> Result<DiskReplica<'a>> {
    let path = datapath::pageblob::BlobPath::new(REPLICA_CONTAINER, &format!("{name}.replica"));
    let size = store
        .properties(&path, None)
        .with_context(|| format!("no replica named {name}"))?
        .size;
    // The block size is in every manifest; open with a provisional layout to read them.
    Ok(DiskReplica::open(
        store,
        REPLICA_CONTAINER,
        name,
        Layout {
            disk_size: size,
            block_size: 4096,
        },
    )?)
}

pub fn points(args: PointsArgs) -> Result<ExitCode> {
    let identity = args.keys.load()?;
    let store = args.target.open()?;
    let replica = open_replica(&*store, &args.name)?;
    let keys = identity.disk_keys(&args.name);
    let points = replica.points(keys.digest.expose())?;
    if args.json {
        let v: Vec<_> = points
            .iter()
            .map(|p| json!({"point": p.sequence, "time": http_date(p.time_nanos), "snapshot": p.snapshot, "consistency": format!("{:?}", p.consistency).to_lowercase(), "disk_size": p.disk_size}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for p in &points {
            println!(
                "{:>4}  {}  {}  {:?}",
                p.sequence,
                http_date(p.time_nanos),
                p.snapshot,
                p.consistency
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    keys: Keys,
    #[arg(long)]
    name: String,
    #[arg(long)]
    json: bool,
}

/// Check that every point decrypts, decompresses and matches its Merkle root.
pub fn verify(args: VerifyArgs) -> Result<ExitCode> {
    let identity = args.keys.load()?;
    let store = args.target.open()?;
    let provisional = open_replica(&*store, &args.name)?;
    let keys = identity.disk_keys(&args.name);
    let points = provisional.points(keys.digest.expose())?;
    let codec = BlockCodec::new(&keys, 1, true);
    let mut results = Vec::new();
    let mut bad = 0;
    for manifest in &points {
        let layout = Layout {
            disk_size: manifest.disk_size,
            block_size: manifest.block_size,
        };
        let replica = DiskReplica::open(&*store, REPLICA_CONTAINER, &args.name, layout)?;
        let outcome = replica.restore(&codec, manifest, keys.digest.expose(), |_, _| Ok(()));
        if outcome.is_err() {
            bad += 1;
        }
        results.push((manifest.sequence, outcome.err().map(|e| e.to_string())));
    }
    if args.json {
        let v: Vec<_> = results
            .iter()
            .map(|(p, e)| json!({"point": p, "ok": e.is_none(), "error": e}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (p, e) in &results {
            match e {
                None => println!("point {p}: ok"),
                Some(e) => println!("point {p}: {e}"),
            }
        }
        println!("{} point(s) verified, {bad} failed", results.len());
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn restore(args: RestoreArgs) -> Result<ExitCode> {
    let identity = args.keys.load()?;
    let store = args.target.open()?;
    let provisional = open_replica(&*store, &args.name)?;
    let keys = identity.disk_keys(&args.name);
    let points = provisional.points(keys.digest.expose())?;
    let manifest = match args.point.as_str() {
        "latest" => points
            .last()
            .context("the replica has no recovery point")?
            .clone(),
        n => {
            let seq: u64 = n
                .parse()
                .with_context(|| format!("--point {n}: a number or latest"))?;
            points
                .iter()
                .find(|p| p.sequence == seq)
                .with_context(|| format!("no point {seq}"))?
                .clone()
        }
    };
    let layout = Layout {
        disk_size: manifest.disk_size,
        block_size: manifest.block_size,
    };
    let replica = DiskReplica::open(&*store, REPLICA_CONTAINER, &args.name, layout)?;
    let codec = BlockCodec::new(&keys, 1, true);
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&args.output).with_context(|| args.output.display().to_string())?,
    );
    replica.restore(&codec, &manifest, keys.digest.expose(), |_, block| {
        out.write_all(block)
    })?;
    out.flush()?;
    eprintln!(
        "restored point {} ({}) to {}",
        manifest.sequence,
        manifest.snapshot,
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
