//! Replication through power cuts: cycles into the emulator with `Durability::Power` over
//! `CrashFs`, the power cut at seeded random writes (the interrupted write torn), the machine
//! restarted with only what was synced, and the store reopened: every committed point is
//! there and restores byte-exact, and the next cycle commits.

use std::sync::Arc;

use datapath::cycle::{run_cycle, CycleOptions};
use datapath::keys::Identity;
use datapath::replica::block_record::BlockCodec;
use datapath::replica::disk_replica::{DiskReplica, Layout};
use datapath::replica::nonce::NonceSource;
use pageblob::clock::ManualClock;
use pageblob::data_log::Durability;
use pageblob::fs::StoreFs;
use pageblob::home_file::{HomeLayout, HomeStripes};
use pageblob::memory_fs::CrashFs;
use pageblob::{Emulator, Profile};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

const BLOCK: u32 = 16384;
const SIZE: u64 = 24 * 16384;

fn identity() -> Identity {
    let clock = ManualClock::new(1_700_000_000_000_000_000);
    let (_, pfx) = datapath::registration::register("vault", "host", "pw", &clock).unwrap();
    Identity::from_pfx(&pfx, "pw").unwrap()
}

/// The store of run `seed`: odd seeds stripe the homes over 3 files in 16 KiB chunks (every
/// 64 KiB block's record crosses stripes), even ones keep one file per blob.
fn open(fs: &Arc<CrashFs>, clock: &Arc<ManualClock>, seed: u64) -> pageblob::StoreResult<Emulator> {
    let fs: Arc<dyn StoreFs> = Arc::new(Arc::clone(fs));
    let homes = match seed % 2 {
        1 => HomeLayout::Striped(HomeStripes {
            files: 3,
            chunk_bytes: 16 << 10,
        }),
        _ => HomeLayout::OneFile,
    };
    Emulator::open_with_fs_and_layout(
        fs,
        std::path::Path::new("/store"),
        Profile::Standard,
        homes,
        Durability::Power,
        clock.clone(),
    )
}

fn layout() -> Layout {
    Layout {
        disk_size: SIZE,
        block_size: BLOCK,
    }
}

fn churn(disk: &mut [u8], rng: &mut ChaCha8Rng, blocks: usize) {
    for _ in 0..blocks {
        let b = (rng.next_u64() % (SIZE / u64::from(BLOCK))) as usize * BLOCK as usize;
        let fill = rng.next_u32() as u8;
        for (i, v) in disk[b..b + BLOCK as usize].iter_mut().enumerate() {
            *v = if i % 7 == 0 {
                rng.next_u32() as u8
            } else {
                fill
            };
        }
    }
}

/// Six cycles of a churned disk into a store on `fs`: the images of the points committed,
/// and of the cycle that failed (if one did).
struct Run {
    committed: Vec<Vec<u8>>,
    failed: Option<Vec<u8>>,
    disk: Vec<u8>,
    nonces: NonceSource,
    clock: Arc<ManualClock>,
}

fn replicate(fs: &Arc<CrashFs>, seed: u64, id: &Identity, upload_threads: usize) -> Run {
    let keys = id.disk_keys("disk");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
    let mut disk = vec![0; SIZE as usize];
    let mut committed: Vec<Vec<u8>> = Vec::new();
    let mut nonces = NonceSource::new_epoch(&mut rng);
    let mut failed = None;
    for t in 0..6u64 {
        churn(&mut disk, &mut rng, 5);
        clock.advance(60_000_000_000);
        let outcome = open(fs, &clock, seed)
            .map_err(|e| e.to_string())
            .and_then(|store| {
                let replica = DiskReplica::open(&store, "replicas", "disk", layout())
                    .map_err(|e| e.to_string())?;
                let options = CycleOptions {
                    upload_threads,
                    ..CycleOptions::scan(1_700_000_000_000_000_000 + t)
                };
                run_cycle(&replica, &disk, id, &keys, &options, &mut nonces, &|_| {})
                    .map(drop)
                    .map_err(|e| e.to_string())
            });
        match outcome {
            Ok(()) => committed.push(disk.clone()),
            Err(_) => {
                failed = Some(disk.clone());
                break;
            }
        }
    }
    Run {
        committed,
        failed,
        disk,
        nonces,
        clock,
    }
}

#[test]
fn power_cuts_during_replication_keep_every_committed_point() {
    power_cuts(0..24, 0);
}

/// With writer threads the records go to the store in batches (`put_pages_batch`: one group
/// commit for each batch). The threads' order varies from run to run, and with it how many
/// sync marks the log gets, so the cut falls in the first half of the dry run's writes.
#[test]
fn power_cuts_during_replication_with_writer_threads_keep_every_committed_point() {
    power_cuts(100..108, 2);
}

fn power_cuts(seeds: std::ops::Range<u64>, upload_threads: usize) {
    let id = identity();
    let keys = id.disk_keys("disk");
    let codec = BlockCodec::new(&keys, 1, true);
    for seed in seeds {
        // A run without a cut counts the writes; the cut falls on a seeded one of them.
        let dry = CrashFs::new();
        replicate(&dry, seed, &id, upload_threads);
        let fs = CrashFs::new();
        let mut rng = ChaCha8Rng::seed_from_u64(1000 + seed);
        let tear = [0, 512, usize::MAX][seed as usize % 3];
        let writes = match upload_threads {
            0 => dry.writes(),
            _ => dry.writes() / 2,
        };
        fs.crash_after(rng.next_u64() % writes, tear);
        let Run {
            committed,
            failed,
            disk,
            mut nonces,
            clock,
        } = replicate(&fs, seed, &id, upload_threads);
        assert!(fs.has_crashed(), "seed {seed}: the cut never came");
        fs.restart_after_power_loss();
        let store = open(&fs, &clock, seed)
            .unwrap_or_else(|e| panic!("seed {seed}: reopen after the power cut: {e}"));
        let replica = DiskReplica::open(&store, "replicas", "disk", layout()).unwrap();
        let points = replica.points(keys.digest.expose()).unwrap();
        // Every committed point; the interrupted cycle's point only if it got that far.
        assert!(
            (committed.len()..=committed.len() + 1).contains(&points.len()),
            "seed {seed}: {} points after {} commits",
            points.len(),
            committed.len()
        );
        let images: Vec<&Vec<u8>> = committed.iter().chain(failed.as_ref()).collect();
        for (p, image) in points.iter().zip(images) {
            let mut out = Vec::new();
            replica
                .restore(&codec, p, keys.digest.expose(), |_, b| {
                    out.extend_from_slice(b);
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("seed {seed}: point {}: {e}", p.sequence));
            assert!(out == *image, "seed {seed}: point {} differs", p.sequence);
        }
        // And replication goes on.
        let options = CycleOptions {
            upload_threads: 0,
            ..CycleOptions::scan(1_800_000_000_000_000_000)
        };
        run_cycle(&replica, &disk, &id, &keys, &options, &mut nonces, &|_| {})
            .unwrap_or_else(|e| panic!("seed {seed}: the cycle after the cut: {e}"));
    }
}
