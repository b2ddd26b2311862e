//! Nonce audit: every block record ever written — into replica slots, over earlier records,
//! into the premium staging log, by agents that restart (cleanly or not) and by cycles that
//! fail and are retried — is collected from the store's file writes, and no nonce ever seals
//! two different records under one replica's key. Epochs are claimed from the replica and
//! strictly increase across agent starts.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use datapath::agent::{AgentTarget, DiskAgent};
use datapath::keys::Identity;
use datapath::policy::Policy;
use datapath::replica::manifest::Consistency;
use datapath::replica::slot_header::{SlotHeader, MAGIC};
use datapath::replicator::{CycleKind, CyclePlan};
use datapath::source::AtRestDisk;
use pageblob::clock::{Clock, ManualClock};
use pageblob::data_log::Durability;
use pageblob::faults::{FaultConfig, FaultyStore};
use pageblob::fs::HookedFs;
use pageblob::{Emulator, Profile};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

const BLOCK: u64 = 65536;
const SIZE: u64 = 48 * BLOCK;

/// Every buffer written to any file of a store.
type Writes = Arc<Mutex<Vec<Vec<u8>>>>;

/// The real file system, keeping a copy of every write.
fn recording_fs(writes: Writes) -> HookedFs {
    HookedFs(Arc::new(
        move |_path: &Path,
              buf: &[u8],
              offset: u64,
              write: &dyn Fn(&[u8], u64) -> std::io::Result<()>| {
            writes.lock().unwrap().push(buf.to_vec());
            write(buf, offset)
        },
    ))
}

fn churn(disk: &mut [u8], rng: &mut ChaCha8Rng, blocks: usize) {
    for _ in 0..blocks {
        let b = (rng.next_u64() % (SIZE / BLOCK)) as usize * BLOCK as usize;
        let fill = rng.next_u32() as u8;
        for (i, v) in disk[b..b + BLOCK as usize].iter_mut().enumerate() {
            *v = if i % 9 == 0 {
                rng.next_u32() as u8
            } else {
                fill
            };
        }
    }
}

/// What tells two sealed records apart: digest, tag, payload CRC.
type Sealed = ([u8; 32], [u8; 16], u32);

/// Nonce → the distinct sealed records found under it.
fn audit(writes: &Writes) -> BTreeMap<[u8; 12], Vec<Sealed>> {
    let mut seen: BTreeMap<[u8; 12], Vec<_>> = BTreeMap::new();
    for buf in writes.lock().unwrap().iter() {
        let mut from = 0;
        while let Some(i) = buf[from..].windows(4).position(|w| w == MAGIC) {
            let at = from + i;
            if let Ok(h) = SlotHeader::decode(&buf[at..]) {
                let record = (h.digest, h.tag, h.payload_crc);
                let entry = seen.entry(h.nonce).or_default();
                if !entry.contains(&record) {
                    entry.push(record);
                }
            }
            from = at + 1;
        }
    }
    seen
}

fn identity() -> Identity {
    let clock = ManualClock::new(1_700_000_000_000_000_000);
    let (_, pfx) = datapath::registration::register("vault", "host", "pw", &clock).unwrap();
    Identity::from_pfx(&pfx, "pw").unwrap()
}

#[test]
fn no_nonce_ever_seals_two_records_across_restarts_failures_and_the_staging_log() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
    let writes: Writes = Default::default();
    let open = |sub: &str, profile| {
        Emulator::open_with_fs(
            Arc::new(recording_fs(Arc::clone(&writes))),
            &dir.path().join(sub),
            profile,
            Durability::Process,
            clock.clone(),
        )
        .unwrap()
    };
    let premium = Profile::Premium {
        snapshot_spacing: false,
    };
    let store = Arc::new(open("premium", premium));
    let log_store = open("log", Profile::Standard);
    let id = identity();
    let policy = Policy::from_toml("block_size_kib = 64", premium).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut disk = vec![0; SIZE as usize];
    let mut epochs = Vec::new();
    let mut committed = 0;
    for life in 0..6u64 {
        // Every other life the premium store fails writes at random: cycles fail part-way
        // (some after their staging log committed) and are retried by the next life.
        let faulty = FaultyStore::new(
            Arc::clone(&store),
            FaultConfig {
                seed: life,
                timeout_after_write: if life % 2 == 1 { 0.05 } else { 0.0 },
                ..FaultConfig::default()
            },
        );
        let opened = DiskAgent::open(
            AgentTarget {
                store: &faulty,
                container: "replicas",
                name: "disk",
                log_store: Some(&log_store),
                snapshot_limit: Some(100),
            },
            &id,
            policy.clone(),
            SIZE,
            None,
            true,
            // The same seed every life: only the claimed epochs keep the nonces apart.
            Box::new(ChaCha8Rng::seed_from_u64(7)),
        );
        let Ok((mut agent, _)) = opened else {
            continue;
        };
        epochs.push(agent.nonce_epoch());
        for _ in 0..3 {
            churn(&mut disk, &mut rng, 6);
            let plan = CyclePlan {
                kind: if committed == 0 {
                    CycleKind::Initial
                } else {
                    CycleKind::Delta
                },
                consistency: Consistency::Crash,
                throttle_bytes_per_sec: None,
                due_nanos: clock.now_nanos(),
            };
            clock.advance(300_000_000_000);
            if agent
                .run(&plan, &mut AtRestDisk(&disk), clock.now_nanos(), &|_| {})
                .is_ok()
            {
                committed += 1;
            }
        }
    }
    assert!(committed >= 9, "only {committed} cycles committed");
    assert!(
        epochs.windows(2).all(|w| w[0] < w[1]),
        "epochs do not increase: {epochs:?}"
    );
    let seen = audit(&writes);
    assert!(seen.len() > 100, "only {} records found", seen.len());
    for (nonce, records) in &seen {
        assert_eq!(
            records.len(),
            1,
            "nonce {nonce:02x?} sealed {} records",
            records.len()
        );
    }
}
