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
use rand_core::SeedableRng;
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
    let Ok(blobs) = store.list_blobs(REPLICA_CONTAINER, "", false) else {
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

    /// Whether `manifest`'s point is gone since it was listed: no longer in the replica's
    /// journal (retention clears a point's journal slot first, then deletes its snapshot, so a
    /// snapshot gone from under a reader is a point no longer listed). A restore that failed
    /// on such a point met a deletion, not damage. Not known (an error listing): false.
    pub fn deleted_since_listed(&self, manifest: &Manifest) -> bool {
        self.replica(manifest)
            .ok()
            .and_then(|replica| replica.points(self.keys.digest.expose()).ok())
            .is_some_and(|now| {
                !now.iter()
                    .any(|p| p.sequence == manifest.sequence && p.snapshot == manifest.snapshot)
            })
    }

    /// Run `work` with `manifest`'s point held against retention
    /// (`datapath::replica::point_hold`): a replication running meanwhile through the same
    /// endpoint leaves the point until `work` is done. Once held, the point must still be
    /// listed (retention may have deleted it just before): if not, `work` does not run. A
    /// store directory opened for reading takes no hold and needs none (its readers' lock keeps
    /// the writer out while they read); an endpoint that refuses one (a read-only SAS) gets a
    /// warning, and `work` runs without.
    pub fn while_held<T: Send>(
        &self,
        manifest: &Manifest,
        work: impl FnOnce() -> Result<T> + Send,
    ) -> Result<T> {
        let replica = self.replica(manifest)?;
        let mut rng = rand_chacha::ChaCha8Rng::from_os_rng();
        let hold = match replica.hold_point(manifest.sequence, &mut rng) {
            Ok(hold) => hold,
            Err(datapath::replica::error::ReplicaError::Store(pageblob::StoreError::ReadOnly(
                _,
            ))) => {
                return work();
            }
            Err(e) => {
                eprintln!(
                    "replica {}: point {} could not be held against retention ({e}): a \
                     replication running meanwhile may delete it while it is read",
                    self.name, manifest.sequence
                );
                return work();
            }
        };
        let failed_renewal = |e: &datapath::replica::error::ReplicaError| {
            eprintln!(
                "replica {}: the hold on point {} could not be renewed ({e}): once its lease \
                 runs out ({} s after the last renewal) a replication running meanwhile may \
                 delete the point while it is read",
                self.name,
                manifest.sequence,
                datapath::replica::point_hold::HOLD_LEASE_SECS
            )
        };
        datapath::replica::point_hold::while_held(self.store, hold, &failed_renewal, || {
            if self.deleted_since_listed(manifest) {
                bail!(
                    "point {} of {} was deleted (by the retention of a replication running \
                     meanwhile) before it could be held: choose a newer point (`drplane points` \
                     lists them)",
                    manifest.sequence,
                    self.name
                );
            }
            work()
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
    // Points a restore or a verify holds now (retention leaves them; a listing that fails,
    // from a store that cannot list, shows none).
    let held = datapath::replica::point_hold::held_now(&*store, REPLICA_CONTAINER, &read.name)
        .unwrap_or_default();
    if args.json {
        let v: Vec<_> = points
            .iter()
            .map(|p| json!({"point": p.sequence, "time": http_date(p.time_nanos), "snapshot": p.snapshot, "consistency": format!("{:?}", p.consistency).to_lowercase(), "disk_size": p.disk_size, "held": held.contains(&p.sequence)}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for p in points {
            println!(
                "{:>4}  {}  {}  {:?}{}",
                p.sequence,
                http_date(p.time_nanos),
                p.snapshot,
                p.consistency,
                if held.contains(&p.sequence) {
                    "  held (being read)"
                } else {
                    ""
                }
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
/// when at least one point was verified and nothing at all is damaged; a point deleted while
/// it was being verified (by the retention of a replication running meanwhile) is reported as
/// such, neither verified nor failed.
pub fn verify(args: VerifyArgs) -> Result<ExitCode> {
    let identity = args.keys.load()?;
    let store = args.target.open_reader()?;
    let read = ReadPoints::open(&*store, &identity, &args.name)?;
    if read.points.is_empty() {
        bail!("replica {}: no recovery point to verify", args.name);
    }
    // Journal slots that do not decode are points that fail, unless one point was asked for.
    let damaged = if args.point.is_some() {
        0
    } else {
        read.damaged
    };
    let chosen = match &args.point {
        Some(point) => vec![choose_point(&read.points, point)?],
        None => read.points.clone(),
    };
    // One pool for all the points.
    let checked = args
        .threads
        .run(|| verify_listed(&read, &chosen, args.changes_only))??;
    let count =
        |want: fn(&Verdict) -> bool| checked.verdicts.iter().filter(|(_, v)| want(v)).count();
    let bad = damaged + count(|v| matches!(v, Verdict::Failed(_)));
    let deleted = count(|v| matches!(v, Verdict::Deleted(_)));
    let verified = count(|v| matches!(v, Verdict::Ok)) + bad;
    if args.json {
        let v: Vec<_> = checked
            .verdicts
            .iter()
            .map(|(p, verdict)| {
                let (ok, deleted, error) = match verdict {
                    Verdict::Ok => (true, false, None),
                    Verdict::Failed(e) => (false, false, Some(e)),
                    Verdict::Deleted(e) => (false, true, Some(e)),
                };
                json!({"point": p, "ok": ok, "deleted_meanwhile": deleted, "error": error})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (p, verdict) in &checked.verdicts {
            match verdict {
                Verdict::Ok => println!("point {p}: ok"),
                Verdict::Failed(e) => println!("point {p}: {e}"),
                Verdict::Deleted(_) => println!(
                    "point {p}: deleted while it was being verified (the retention of a \
                     replication running meanwhile): not verified"
                ),
            }
        }
        let how = if args.changes_only {
            format!(
                " ({} records decoded: the oldest point and each one's changes)",
                checked.records_decoded
            )
        } else {
            String::new()
        };
        let gone = if deleted > 0 {
            format!(", {deleted} deleted meanwhile")
        } else {
            String::new()
        };
        println!("{verified} point(s) verified, {bad} failed{gone}{how}");
    }
    if verified == 0 {
        eprintln!(
            "replica {}: nothing verified: every point listed was deleted before it could be \
             (`drplane points` lists the points there are now)",
            args.name
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What `verify` found of one point.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Ok,
    /// Damaged (what failed, and where).
    Failed(String),
    /// Its restore failed because the point is gone: deleted since it was listed (the error
    /// it met). Not a judgement of the replica.
    Deleted(String),
}

/// Each of `chosen` (points of `read`, oldest first) and what became of it.
struct Checked {
    verdicts: Vec<(u64, Verdict)>,
    /// Records decoded by `--changes-only`.
    records_decoded: u64,
}

/// Verify `chosen`, each restored in full, or (`changes_only`) from the point before it.
fn verify_listed(
    read: &ReadPoints<'_>,
    chosen: &[Manifest],
    changes_only: bool,
) -> Result<Checked> {
    let codec = BlockCodec::new(&read.keys, 1, true);
    let digest_key = read.keys.digest.expose();
    let mut chain = PointChain::default();
    let mut checked = Checked {
        verdicts: Vec::new(),
        records_decoded: 0,
    };
    for manifest in chosen {
        let replica = read.replica(manifest)?;
        let held = read.while_held(manifest, || {
            Ok(if changes_only {
                replica
                    .verify_in_chain(&codec, manifest, digest_key, &mut chain)
                    .map(|step| step.records_decoded)
            } else {
                replica
                    .restore_blocks(&codec, manifest, digest_key, |_, _| Ok(()))
                    .map(|()| 0)
            })
        });
        let verdict = match held {
            Ok(Ok(decoded)) => {
                checked.records_decoded += decoded;
                Verdict::Ok
            }
            // Deleted before it could be held.
            Err(e) => Verdict::Deleted(format!("{e:#}")),
            Ok(Err(e)) if read.deleted_since_listed(manifest) => Verdict::Deleted(e.to_string()),
            Ok(Err(e)) => Verdict::Failed(e.to_string()),
        };
        checked.verdicts.push((manifest.sequence, verdict));
    }
    Ok(checked)
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

#[cfg(test)]
mod tests {
    use super::{verify_listed, ReadPoints, Verdict, REPLICA_CONTAINER};
    use datapath::cycle::{run_cycle, CycleOptions};
    use datapath::keys::Identity;
    use datapath::replica::disk_replica::{DiskReplica, Layout};
    use datapath::replica::nonce::NonceSource;
    use pageblob::clock::ManualClock;
    use pageblob::{Conditions, Emulator, PageBlobStore};

    const T0: u64 = 1_700_000_000_000_000_000;
    const LAYOUT: Layout = Layout {
        disk_size: 64 * 4096,
        block_size: 4096,
    };

    /// A store with replica "disk" of three points (each cycle rewrites a block).
    fn three_points(dir: &std::path::Path) -> (Emulator, Identity) {
        let store = Emulator::open(
            dir,
            pageblob::Profile::Standard,
            pageblob::data_log::Durability::Process,
            std::sync::Arc::new(ManualClock::new(T0)),
        )
        .unwrap();
        let (_, pfx) =
            datapath::registration::register("vault", "host", "pw", &ManualClock::new(T0)).unwrap();
        let id = Identity::from_pfx(&pfx, "pw").unwrap();
        let keys = id.disk_keys("disk");
        let replica = DiskReplica::open(&store, REPLICA_CONTAINER, "disk", LAYOUT).unwrap();
        let mut disk: Vec<u8> = (0..LAYOUT.disk_size).map(|i| (i / 7) as u8).collect();
        for cycle in 0..3u8 {
            disk[cycle as usize * 4096] = !cycle;
            let options = CycleOptions::scan(T0 + u64::from(cycle) * 1_000_000_000);
            let mut nonces = NonceSource::for_epoch(u64::from(cycle) + 1);
            run_cycle(&replica, &disk, &id, &keys, &options, &mut nonces, &|_| {}).unwrap();
        }
        (store, id)
    }

    /// A point deleted (as retention deletes one: its journal slot, then its snapshot) after
    /// `verify` listed it is reported as deleted, not as a damaged point; a listed point whose
    /// snapshot is missing fails. The restore's error says so too.
    #[test]
    fn a_point_deleted_while_verified_is_not_called_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id) = three_points(dir.path());
        let read = ReadPoints::open(&store, &id, "disk").unwrap();
        assert_eq!(read.points.len(), 3);
        let replica = read.replica(&read.points[0]).unwrap();
        replica.delete_point(&read.points[0]).unwrap();
        // The newest point's snapshot gone while its journal slot still lists it: damage.
        store
            .delete_blob(
                &replica.data,
                Some(&read.points[2].snapshot),
                None,
                &Conditions::default(),
            )
            .unwrap();
        for changes_only in [false, true] {
            let checked = verify_listed(&read, &read.points, changes_only).unwrap();
            let verdicts: Vec<_> = checked.verdicts.iter().map(|(_, v)| v).collect();
            assert!(
                matches!(
                    verdicts[..],
                    [Verdict::Deleted(_), Verdict::Ok, Verdict::Failed(_)]
                ),
                "changes only: {changes_only}: {verdicts:?}"
            );
        }
        assert!(read.deleted_since_listed(&read.points[0]));
        assert!(!read.deleted_since_listed(&read.points[1]));
        assert!(!read.deleted_since_listed(&read.points[2]));
        let why = |p: usize| {
            let e = super::super::restore::explain_deleted(
                &read,
                &read.points[p],
                anyhow::anyhow!("BlobNotFound"),
                "nothing was written to out.raw",
            );
            format!("{e:#}")
        };
        let deleted = why(0);
        assert!(
            deleted.starts_with(
                "point 0 of disk was deleted while it was being restored (the retention"
            ) && deleted.contains("nothing was written to out.raw: restore a newer point")
                && deleted.ends_with("BlobNotFound"),
            "{deleted}"
        );
        assert_eq!(why(2), "BlobNotFound");
    }
}
