//! Two replication cycles of a disk into the embedded store, through the real pipeline, slot
//! layout, snapshots and journal; both points restore byte-exact, and damage or a wrong key is
//! reported with the point and block.

use std::sync::Arc;

use datapath::keys::{DiskKeys, Secret32};
use datapath::replica::batch::encode_batch;
use datapath::replica::block_record::{BlockCodec, RecordError};
use datapath::replica::disk_replica::{DiskReplica, JournalReads, Layout};
use datapath::replica::error::ReplicaError;
use datapath::replica::manifest::Consistency;
use datapath::replica::nonce::NonceSource;
use pageblob::clock::ManualClock;
use pageblob::data_log::Durability;
use pageblob::faults::{FaultConfig, FaultyStore};
use pageblob::{BlobPath, Conditions, Emulator, PageBlobStore, Profile};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

const BLOCK: u32 = 65536;
const SIZE: u64 = 8 * 65536 * 2 + 4096; // 16 full blocks and a short one

const LAYOUT: Layout = Layout {
    disk_size: SIZE,
    block_size: BLOCK,
};

/// A store in `dir` at process durability, on a manual clock.
fn open_store(dir: &std::path::Path, profile: Profile) -> (Emulator, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
    let store = Emulator::open(dir, profile, Durability::Process, clock.clone()).unwrap();
    (store, clock)
}

fn keys(n: u8) -> DiskKeys {
    DiskKeys {
        data: Secret32::from_bytes([n; 32]),
        digest: Secret32::from_bytes([n ^ 0x33; 32]),
    }
}

/// Text-like bytes with a pseudo-random byte in every third place.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i % 3 == 0 {
                (x >> 8) as u8
            } else {
                b"replica "[i % 8]
            }
        })
        .collect()
}

/// Replicate `blocks` of `disk`, then commit point `sequence`.
#[allow(clippy::too_many_arguments)]
fn cycle(
    replica: &DiskReplica<'_>,
    codec: &BlockCodec,
    keys: &DiskKeys,
    disk: &[u8],
    blocks: &[u64],
    digests: &mut [[u8; 32]],
    sequence: u64,
    nonces: &mut NonceSource,
) {
    let layout = replica.layout;
    let slices: Vec<&[u8]> = blocks
        .iter()
        .map(|&b| {
            let start = (b * u64::from(layout.block_size)) as usize;
            &disk[start..start + layout.block_len(b) as usize]
        })
        .collect();
    let encoded = encode_batch(codec, blocks, sequence, &slices, nonces).unwrap();
    for (&b, rec) in blocks.iter().zip(&encoded) {
        replica.write_block(b, rec.clone()).unwrap();
        digests[b as usize] = rec.digest();
    }
    let root = datapath::replica::merkle::merkle_root(keys.digest.expose(), digests);
    commit(replica, keys, sequence, root);
}

/// A disk's keys (`keys(n)`), codec, nonces and digest table after point 0: every block of
/// `disk` replicated.
struct Replicated {
    keys: DiskKeys,
    codec: BlockCodec,
    nonces: NonceSource,
    digests: Vec<[u8; 32]>,
}

fn replicate_whole(replica: &DiskReplica<'_>, n: u8, disk: &[u8]) -> Replicated {
    let keys = keys(n);
    let codec = BlockCodec::new(&keys, 3, true);
    let mut nonces = NonceSource::new_epoch(&mut ChaCha8Rng::seed_from_u64(u64::from(n)));
    let mut digests = vec![[0u8; 32]; replica.layout.blocks() as usize];
    let all: Vec<u64> = (0..replica.layout.blocks()).collect();
    cycle(
        replica,
        &codec,
        &keys,
        disk,
        &all,
        &mut digests,
        0,
        &mut nonces,
    );
    Replicated {
        keys,
        codec,
        nonces,
        digests,
    }
}

/// Commit point `sequence` (of generation `sequence`) with Merkle root `root`.
fn commit(
    replica: &DiskReplica<'_>,
    keys: &DiskKeys,
    sequence: u64,
    root: [u8; 32],
) -> datapath::replica::manifest::Manifest {
    replica
        .commit_point(
            sequence,
            sequence,
            1_700_000_000_000_000_000 + sequence,
            Consistency::Crash,
            [0xAA; 20],
            root,
            keys.digest.expose(),
        )
        .unwrap()
}

#[test]
fn two_cycles_restore_byte_exact_and_damage_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) = open_store(
        dir.path(),
        Profile::Premium {
            snapshot_spacing: false,
        },
    );
    let layout = LAYOUT;
    let replica = DiskReplica::open(&store, "replicas", "disk-1", layout).unwrap();
    let mut disk = pattern(1, SIZE as usize);
    disk[3 * BLOCK as usize..4 * BLOCK as usize].fill(0); // a zero block
    let Replicated {
        keys: k,
        codec,
        mut nonces,
        mut digests,
    } = replicate_whole(&replica, 1, &disk);
    let point0 = disk.clone();

    clock.advance(300_000_000_000);
    disk[BLOCK as usize + 100..BLOCK as usize + 200].fill(7);
    disk[5 * BLOCK as usize..6 * BLOCK as usize].fill(0);
    let tail = disk.len() - 10;
    disk[tail] ^= 0xFF; // the short last block
    cycle(
        &replica,
        &codec,
        &k,
        &disk,
        &[1, 5, layout.blocks() - 1],
        &mut digests,
        1,
        &mut nonces,
    );

    let points = replica.points(k.digest.expose()).unwrap();
    assert_eq!(points.len(), 2);
    for (manifest, expected) in points.iter().zip([&point0, &disk]) {
        let mut restored = Vec::new();
        replica
            .restore(&codec, manifest, k.digest.expose(), |_, b| {
                restored.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
        assert!(
            restored == *expected,
            "point {} did not restore byte-exact",
            manifest.sequence
        );
    }

    // Another certificate's keys: refused, naming point and block.
    let wrong = BlockCodec::new(&keys(2), 3, true);
    let err = replica
        .restore(&wrong, &points[0], keys(2).digest.expose(), |_, _| Ok(()))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ReplicaError::Block {
                block: 0,
                source: RecordError::Authentication,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        replica.points(keys(2).digest.expose()).is_err(),
        "manifests are bound to the key"
    );

    // Damage in the current blob is named by block.
    let slot = layout.slot_offset(2);
    let mut page = vec![0u8; 512];
    store
        .read(&replica.data, None, slot + 512, &mut page)
        .unwrap();
    page[10] ^= 1;
    store
        .put_pages(&replica.data, slot + 512, &page, &Conditions::default())
        .unwrap();
    let err = replica.read_block(&codec, None, 2).unwrap_err();
    assert!(
        matches!(
            err,
            ReplicaError::Block {
                block: 2,
                source: RecordError::PayloadChecksum { .. },
                ..
            }
        ),
        "{err}"
    );
    // The points are snapshots: the damage did not reach them.
    assert!(replica
        .read_block(&codec, Some(&points[1].snapshot), 2)
        .is_ok());

    // A tampered manifest is refused, naming the point.
    let mut j = vec![0u8; 512];
    store.read(&replica.journal, None, 4096, &mut j).unwrap();
    j[40] ^= 1;
    store
        .put_pages(
            &BlobPath::new("replicas", "disk-1.journal"),
            4096,
            &j,
            &Conditions::default(),
        )
        .unwrap();
    let err = replica.points(k.digest.expose()).unwrap_err();
    assert!(
        matches!(err, ReplicaError::Manifest { point: 1, .. }),
        "{err}"
    );
}

/// A reader that knows a slot's written pages (a restore's page ranges, a diff's extents) gets
/// its record with one Get Blob call, whatever the hint says the record is the same, and a
/// slot that still holds a longer, older record's tail restores byte-exact.
#[test]
fn a_record_within_its_written_pages_is_read_with_one_call() {
    let dir = tempfile::tempdir().unwrap();
    let (emulator, clock) = open_store(dir.path(), Profile::Standard);
    let store = FaultyStore::new(emulator, FaultConfig::default());
    let replica = DiskReplica::open(&store, "replicas", "disk-1", LAYOUT).unwrap();
    let mut disk = pattern(3, SIZE as usize);
    let Replicated {
        keys: k,
        codec,
        mut nonces,
        mut digests,
    } = replicate_whole(&replica, 3, &disk);
    // Block 1 shrinks to a short record: its slot keeps the longer record's written tail.
    clock.advance(300_000_000_000);
    disk[BLOCK as usize..2 * BLOCK as usize].fill(7);
    cycle(
        &replica,
        &codec,
        &k,
        &disk,
        &[1],
        &mut digests,
        1,
        &mut nonces,
    );
    let points = replica.points(k.digest.expose()).unwrap();
    let snapshot = points[1].snapshot.as_str();
    let slot = LAYOUT.slot_size();
    let reads = |f: &dyn Fn() -> Option<Vec<u8>>| {
        let before = store.reads();
        let record = f();
        (record, store.reads() - before)
    };
    for block in [0, 1, LAYOUT.blocks() - 1] {
        let (record, two) = reads(&|| replica.fetch_record(Some(snapshot), block).unwrap());
        let record = record.expect("a written slot");
        assert_eq!(two, 2, "header, then payload");
        // The slot's written pages from its start hold the record: one call.
        let (within, one) = reads(&|| {
            replica
                .fetch_record_within(Some(snapshot), block, slot)
                .unwrap()
        });
        assert_eq!((within.as_ref(), one), (Some(&record), 1), "block {block}");
        // A hint short of the record (or none) costs the second call, with the same record.
        for short in [0, 512, record.len() as u64 - 1] {
            let (again, calls) = reads(&|| {
                replica
                    .fetch_record_within(Some(snapshot), block, short)
                    .unwrap()
            });
            assert_eq!((again.as_ref(), calls), (Some(&record), 2), "block {block}");
        }
    }
    // A diff's extents say how much of each changed slot to read: the short record of block 1.
    let changed = replica
        .changed_block_extents(Some(&points[0].snapshot), Some(snapshot))
        .unwrap();
    assert_eq!(changed.len(), 1, "{changed:?}");
    let (block, written) = changed[0];
    let short = replica.fetch_record(Some(snapshot), 1).unwrap().unwrap();
    assert_eq!(block, 1);
    assert_eq!(written, (short.len() as u64).div_ceil(512) * 512);
    // Restores, which read with their page ranges' extents, are byte-exact (block 1's slot
    // still holds the longer record's tail past the short one).
    for (manifest, expected) in points.iter().zip([pattern(3, SIZE as usize), disk]) {
        let mut restored = Vec::new();
        let before = store.reads();
        replica
            .restore(&codec, manifest, k.digest.expose(), |_, b| {
                restored.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
        assert!(restored == expected, "point {}", manifest.sequence);
        assert!(
            store.reads() - before < 2 * LAYOUT.blocks(),
            "one call per record, not two"
        );
    }
}

/// A listing reads a journal of hundreds of points with gaps left by deleted ones, and names
/// damaged slots, the same every way it reads: a run of slots per call (by default, and from a
/// store across a network whatever it is asked) or each slot's first page, the rest when the
/// manifest's length or a zero page says so (`JournalReads::SlotHeads`, from a store in this
/// process).
#[test]
fn a_long_journal_with_gaps_and_damage_lists_every_point() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open_store(dir.path(), Profile::Standard).0);
    let remote = FaultyStore::new(
        Arc::clone(&store),
        FaultConfig {
            latency: std::time::Duration::from_micros(1),
            ..FaultConfig::default()
        },
    );
    assert!(store.answers_promptly() && !remote.answers_promptly());
    let replica = DiskReplica::open(&*store, "replicas", "disk-1", LAYOUT).unwrap();
    let k = keys(4);
    let digests = vec![[0u8; 32]; LAYOUT.blocks() as usize];
    let root = datapath::replica::merkle::merkle_root(k.digest.expose(), &digests);
    let mut live = Vec::new();
    for sequence in 0..600u64 {
        live.push(commit(&replica, &k, sequence, root));
    }
    // Delete every seventh point and the run 250..262 (a gap across the first read's end).
    let (gone, kept): (Vec<_>, Vec<_>) = live
        .into_iter()
        .partition(|m| m.sequence % 7 == 0 || (250..262).contains(&m.sequence));
    for m in &gone {
        replica.delete_point(m).unwrap();
    }
    let sequences = |points: &[datapath::replica::manifest::Manifest]| -> Vec<u64> {
        points.iter().map(|m| m.sequence).collect()
    };
    let readers = || {
        [&*store as &dyn PageBlobStore, &remote].map(|from| {
            [JournalReads::Runs, JournalReads::SlotHeads].map(|reads| {
                let mut reader = DiskReplica::open(from, "replicas", "disk-1", LAYOUT).unwrap();
                reader.set_journal_reads(reads);
                reader
            })
        })
    };
    for reader in readers().into_iter().flatten() {
        let listed = reader.points(k.digest.expose()).unwrap();
        assert_eq!(sequences(&listed), sequences(&kept));
        assert_eq!(listed, kept);
    }

    // Damage three slots: point 400's first page overwritten; point 401's first page zeroed
    // and its second written (a zero first page is not taken for an empty slot); point 402's
    // length saying the manifest runs past its first page, over garbage.
    let journal = BlobPath::new("replicas", "disk-1.journal");
    let put = |slot: u64, bytes: &[u8]| {
        store
            .put_pages(&journal, slot * 4096, bytes, &Conditions::default())
            .unwrap()
    };
    put(400, &[0x5A; 512]);
    put(401, &[0; 512]);
    store
        .put_pages(
            &journal,
            401 * 4096 + 512,
            &[0x5A; 512],
            &Conditions::default(),
        )
        .unwrap();
    let mut long = [0x5Au8; 1024];
    long[..4].copy_from_slice(&900u32.to_le_bytes());
    put(402, &long);
    for reader in readers().into_iter().flatten() {
        let (points, damaged) = reader.points_and_damage(k.digest.expose()).unwrap();
        assert_eq!(
            damaged.iter().map(|d| d.slot).collect::<Vec<_>>(),
            [400, 401, 402]
        );
        assert_eq!(points.len(), kept.len() - 3);
        assert!(points.iter().all(|m| !(400..403).contains(&m.sequence)));
        assert!(
            reader.points(k.digest.expose()).is_err(),
            "a writer refuses a damaged journal"
        );
    }
}

#[test]
fn a_listing_follows_its_own_commits_and_deletes_and_not_another_writers() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open_store(dir.path(), Profile::Standard);
    let replica = DiskReplica::open(&store, "replicas", "disk-1", LAYOUT).unwrap();
    let k = keys(5);
    let key = k.digest.expose();
    let digests = vec![[0u8; 32]; LAYOUT.blocks() as usize];
    let root = datapath::replica::merkle::merkle_root(key, &digests);
    let sequences = |points: &[datapath::replica::manifest::Manifest]| {
        points.iter().map(|m| m.sequence).collect::<Vec<_>>()
    };
    let first = commit(&replica, &k, 0, root);
    commit(&replica, &k, 1, root);
    assert_eq!(sequences(&replica.points(key).unwrap()), [0, 1]);
    // Changes through the handle that listed: its listing follows them.
    commit(&replica, &k, 2, root);
    replica.delete_point(&first).unwrap();
    let fresh = || {
        DiskReplica::open_existing(&store, "replicas", "disk-1", LAYOUT)
            .unwrap()
            .points(key)
            .unwrap()
    };
    assert_eq!(replica.points(key).unwrap(), fresh());
    assert_eq!(sequences(&fresh()), [1, 2]);
    // Another writer commits between this handle's listing and its next commit: the commit
    // still lands, and the next listing has both points.
    let other = DiskReplica::open(&store, "replicas", "disk-1", LAYOUT).unwrap();
    commit(&other, &k, 3, root);
    commit(&replica, &k, 4, root);
    assert_eq!(sequences(&replica.points(key).unwrap()), [1, 2, 3, 4]);
    assert_eq!(replica.points(key).unwrap(), fresh());
    // A manifest committed under another key is not carried into a listing under this one.
    let stranger = keys(6);
    commit(&replica, &stranger, 5, root);
    assert!(
        replica.points(key).is_err(),
        "a manifest under another key does not verify"
    );
}
