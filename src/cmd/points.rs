//! `drplane points | verify`: a replica's recovery points as a reader sees them
//! ([`ReadPoints`]: the intact ones and the damaged journal slots), and checking each one
//! byte-exact. With several `--name`s, the points of a machine whose disks were replicated
//! together: the instants every one of them has a point at.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use datapath::keys::Identity;
use datapath::replica::block_record::BlockCodec;
use datapath::replica::disk_replica::{DiskReplica, Layout};
use datapath::replica::manifest::{Consistency, Manifest};
use datapath::replica::point_chain::PointChain;
use pageblob::timestamp::http_date;
use pageblob::PageBlobStore;
use serde_json::json;

use super::blob::Target;
use super::replicate::{Keys, REPLICA_CONTAINER};

#[derive(Debug, Args)]
pub struct PointsArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    keys: Keys,
    /// Replica name (as given to `replicate`). Several: the points of a machine whose disks
    /// were replicated together (the instants every one of them has a point at).
    #[arg(long, required = true)]
    name: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// The replicas a store holds, for an error that names one it does not: `: it holds a, b`
/// (at most 20 named), `: it holds none`, or nothing when they cannot be listed.
fn replicas_here(store: &dyn PageBlobStore) -> String {
    let Ok(blobs) = store.list_blobs(REPLICA_CONTAINER, false) else {
        return String::new();
    };
    let names: Vec<&str> = blobs
        .iter()
        .filter_map(|b| b.name.strip_suffix(".replica"))
        .collect();
    match names.len() {
        0 => ": it holds none".to_string(),
        n if n <= 20 => format!(": it holds {}", names.join(", ")),
        n => format!(": it holds {n}, among them {}", names[..20].join(", ")),
    }
}

/// A replica's points as a reader sees them: the intact ones, and the journal slots that are
/// damaged (each named on stderr).
pub struct ReadPoints<'a> {
    store: &'a dyn PageBlobStore,
    pub name: String,
    pub keys: datapath::keys::DiskKeys,
    pub points: Vec<Manifest>,
    pub damaged: usize,
}

impl<'a> ReadPoints<'a> {
    pub fn open(store: &'a dyn PageBlobStore, identity: &Identity, name: &str) -> Result<Self> {
        let path = pageblob::BlobPath::new(REPLICA_CONTAINER, &format!("{name}.replica"));
        let size = match store.properties(&path, None) {
            Ok(p) => p.size,
            Err(e) if e.code().is_some_and(|c| c.status() == 404) => {
                bail!(
                    "no replica named {name} in this store{}",
                    replicas_here(store)
                )
            }
            Err(e) => return Err(e.into()),
        };
        // The block size is in every manifest; open with a provisional layout to read them.
        let provisional = DiskReplica::open_existing(
            store,
            REPLICA_CONTAINER,
            name,
            Layout {
                disk_size: size,
                block_size: 4096,
            },
        )?;
        let keys = identity.disk_keys(name);
        let (points, damaged) = provisional.points_and_damage(keys.digest.expose())?;
        let other = datapath::replica::disk_replica::written_with_other_certificate(
            &points,
            &damaged,
            &identity.key_id.0,
        );
        if let Some(found) = other {
            bail!(
                "replica {name} was written with certificate {}; the .pfx given is {}",
                datapath::keys::KeyId(found),
                identity.key_id
            );
        }
        if points.is_empty() && !damaged.is_empty() {
            // Nothing authenticates: most likely the wrong certificate, not damage everywhere.
            bail!(
                "replica {name}: none of its {} point(s) can be read with this .pfx: {}",
                damaged.len(),
                damaged[0].error
            );
        }
        for d in &damaged {
            eprintln!(
                "replica {name}: journal slot {} is damaged, its point cannot be used: {}",
                d.slot, d.error
            );
        }
        Ok(ReadPoints {
            store,
            name: name.to_string(),
            keys,
            points,
            damaged: damaged.len(),
        })
    }

    /// The replica laid out as `manifest` says.
    pub fn replica(&self, manifest: &Manifest) -> Result<DiskReplica<'a>> {
        let layout = Layout {
            disk_size: manifest.disk_size,
            block_size: manifest.block_size,
        };
        Ok(DiskReplica::open_existing(
            self.store,
            REPLICA_CONTAINER,
            &self.name,
            layout,
        )?)
    }
}

pub fn points(args: PointsArgs) -> Result<ExitCode> {
    let identity = args.keys.load()?;
    let store = args.target.open_reader()?;
    if args.name.len() > 1 {
        if let Some(twice) = args
            .name
            .iter()
            .enumerate()
            .find_map(|(i, n)| args.name[..i].contains(n).then_some(n))
        {
            bail!("--name {twice} is given twice: each disk once");
        }
        let reads = args
            .name
            .iter()
            .map(|name| ReadPoints::open(&*store, &identity, name))
            .collect::<Result<Vec<_>>>()?;
        print_machine_points(&reads, args.json)?;
        return Ok(if reads.iter().all(|r| r.damaged == 0) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let read = ReadPoints::open(&*store, &identity, &args.name[0])?;
    let points = &read.points;
    if args.json {
        let v: Vec<_> = points
            .iter()
            .map(|p| json!({"point": p.sequence, "time": http_date(p.time_nanos), "snapshot": p.snapshot, "consistency": format!("{:?}", p.consistency).to_lowercase(), "disk_size": p.disk_size}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for p in points {
            println!(
                "{:>4}  {}  {}  {:?}",
                p.sequence,
                http_date(p.time_nanos),
                p.snapshot,
                p.consistency
            );
        }
    }
    Ok(if read.damaged == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    keys: Keys,
    /// Replica name (as given to `replicate`).
    #[arg(long)]
    name: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Verify only this point (a sequence number, `latest` or `latest-app`), restored in full.
    #[arg(long, conflicts_with = "changes_only")]
    point: Option<String>,
    /// Restore only the oldest point in full; check each later one from the one before it,
    /// reading and decoding only the slots the store's page-range diff says changed (every
    /// record is still decoded once and every point's Merkle root proven). Without it, every
    /// point is restored in full: the cost of the disk's data once per point.
    #[arg(long)]
    changes_only: bool,
    #[command(flatten)]
    threads: super::Threads,
}

/// Check that every point decrypts, decompresses and matches its Merkle root. Success only
/// when there is at least one point and nothing at all is damaged.
pub fn verify(args: VerifyArgs) -> Result<ExitCode> {
    let identity = args.keys.load()?;
    let store = args.target.open_reader()?;
    let read = ReadPoints::open(&*store, &identity, &args.name)?;
    if read.points.is_empty() {
        bail!("replica {}: no recovery point to verify", args.name);
    }
    let codec = BlockCodec::new(&read.keys, 1, true);
    let mut results = Vec::new();
    // Journal slots that do not decode are points that fail, unless one point was asked for.
    let damaged = if args.point.is_some() {
        0
    } else {
        read.damaged
    };
    let mut bad = damaged;
    let mut chain = PointChain::default();
    let mut decoded = 0;
    let digest_key = read.keys.digest.expose();
    let chosen = match &args.point {
        Some(point) => vec![choose_point(&read.points, point)?],
        None => read.points.clone(),
    };
    // One pool for all the points.
    args.threads.run(|| -> Result<()> {
        for manifest in &chosen {
            let replica = read.replica(manifest)?;
            let outcome = if args.changes_only {
                replica
                    .verify_in_chain(&codec, manifest, digest_key, &mut chain)
                    .map(|step| decoded += step.records_decoded)
            } else {
                replica.restore_blocks(&codec, manifest, digest_key, |_, _| Ok(()))
            };
            if outcome.is_err() {
                bad += 1;
            }
            results.push((manifest.sequence, outcome.err().map(|e| e.to_string())));
        }
        Ok(())
    })??;
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
        let how = if args.changes_only {
            format!(" ({decoded} records decoded: the oldest point and each one's changes)")
        } else {
            String::new()
        };
        println!(
            "{} point(s) verified, {bad} failed{how}",
            results.len() + damaged
        );
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The machine's points: each time every replica of `reads` has a point at (the disks were
/// frozen together then), with each one's point, oldest first.
pub fn machine_points<'r>(reads: &'r [ReadPoints<'_>]) -> Vec<Vec<&'r Manifest>> {
    let Some((first, rest)) = reads.split_first() else {
        return Vec::new();
    };
    first
        .points
        .iter()
        .filter_map(|p| {
            let mut all = vec![p];
            for read in rest {
                all.push(read.points.iter().find(|q| q.time_nanos == p.time_nanos)?);
            }
            Some(all)
        })
        .collect()
}

/// The point `--point` names among a replica's `points`.
pub fn choose_point(points: &[Manifest], point: &str) -> Result<Manifest> {
    let manifest = match point {
        "latest" => points.last().context("the replica has no recovery point")?,
        "latest-app" => points
            .iter()
            .rev()
            .find(|p| p.consistency == Consistency::Application)
            .context("the replica has no app-consistent recovery point")?,
        n => {
            let seq: u64 = n
                .parse()
                .with_context(|| format!("--point {n}: a number, latest or latest-app"))?;
            points.iter().find(|p| p.sequence == seq).with_context(|| {
                let held: Vec<String> = points.iter().map(|p| p.sequence.to_string()).collect();
                let held = match held.as_slice() {
                    [] => "none".to_string(),
                    [first, .., last] if held.len() > 12 => {
                        format!("{} points, {first} to {last}", held.len())
                    }
                    all => all.join(", "),
                };
                format!("no point {seq}: the replica holds {held} (`drplane points` lists them)")
            })?
        }
    };
    Ok(manifest.clone())
}

/// The machine point `point` names (`latest`, `latest-app`, or the first disk's sequence).
pub fn choose_machine_point(reads: &[ReadPoints<'_>], point: &str) -> Result<Vec<Manifest>> {
    let names: Vec<&str> = reads.iter().map(|r| r.name.as_str()).collect();
    let all = machine_points(reads);
    let app = |m: &&Vec<&Manifest>| m.iter().all(|p| p.consistency == Consistency::Application);
    let chosen = match point {
        "latest" => all.last(),
        "latest-app" => all.iter().rev().find(app),
        n => {
            let seq: u64 = n
                .parse()
                .map_err(|_| anyhow::anyhow!("--point {n}: a number, latest or latest-app"))?;
            match all.iter().find(|m| m[0].sequence == seq) {
                Some(m) => Some(m),
                None => bail!(
                    "{}'s point {seq} is not a point of all of {} (`drplane points` with the \
                     same --names lists theirs)",
                    names[0],
                    names.join(", ")
                ),
            }
        }
    };
    match chosen {
        Some(m) => Ok(m.iter().map(|p| (*p).clone()).collect()),
        None => bail!(
            "{}",
            no_common_point(
                reads,
                if point == "latest-app" {
                    "app-consistent "
                } else {
                    ""
                }
            )
        ),
    }
}

/// Why a machine has no point (`kind`: "" or "app-consistent ").
fn no_common_point(reads: &[ReadPoints<'_>], kind: &str) -> String {
    let names: Vec<&str> = reads.iter().map(|r| r.name.as_str()).collect();
    format!(
        "no {kind}point is common to {}: each disk's points were taken at other instants \
         (replicate a machine's disks together, with one --node and --name each)",
        names.join(", ")
    )
}

/// `points` with several `--name`s: the machine's points.
pub fn print_machine_points(reads: &[ReadPoints<'_>], json: bool) -> Result<()> {
    let all = machine_points(reads);
    if all.is_empty() {
        eprintln!("{}", no_common_point(reads, ""));
    }
    if json {
        let v: Vec<_> = all
            .iter()
            .map(|m| {
                let disks: serde_json::Map<String, serde_json::Value> = reads
                    .iter()
                    .zip(m)
                    .map(|(r, p)| (r.name.clone(), json!(p.sequence)))
                    .collect();
                json!({"time": http_date(m[0].time_nanos), "points": disks,
                    "consistency": format!("{:?}", m[0].consistency).to_lowercase()})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for m in &all {
            let disks: Vec<String> = reads
                .iter()
                .zip(m)
                .map(|(r, p)| format!("{} {}", r.name, p.sequence))
                .collect();
            println!(
                "{}  {}  {:?}",
                http_date(m[0].time_nanos),
                disks.join(", "),
                m[0].consistency
            );
        }
    }
    Ok(())
}
