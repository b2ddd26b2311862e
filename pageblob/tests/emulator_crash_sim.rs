//! Crash simulation: the emulator over `CrashFs`, killed at every single write of a workload
//! (with that write torn at several lengths), restarted, and checked against a model of what
//! was acknowledged: every acknowledged write and snapshot is there; only the pages of the one
//! unacknowledged operation may hold either version. The same at every write with a power cut
//! (`Durability::Power`): every write not yet synced is dropped, the interrupted one torn.

use std::sync::Arc;

use pageblob::clock::ManualClock;
use pageblob::data_log::Durability;
use pageblob::fs::StoreFs;
use pageblob::home_file::{HomeLayout, HomeStripes};
use pageblob::memory_fs::CrashFs;
use pageblob::{BlobPath, Conditions, Emulator, PageBlobStore, Profile};

const SLOT: u64 = 8192;
const SLOTS: u64 = 32;
const SIZE: u64 = SLOT * SLOTS;

#[derive(Debug, Clone)]
enum Op {
    Put {
        slot: u64,
        slots: u64,
        seed: u8,
    },
    Clear {
        slot: u64,
    },
    Snapshot,
    /// Single slots written with one `put_pages_batch` (one group commit for all).
    PutBatch {
        slots: [u64; 3],
        seed: u8,
    },
    /// `put_pages_owing_sync`, acknowledged once `sync_owed` has paid its ticket (as `blob
    /// serve` answers a pipelined Put Page).
    PutOwing {
        slot: u64,
        seed: u8,
    },
    /// As `blob serve` makes a Put Page on its async worker: `try_put_pages_owing_sync`, and
    /// where that would wait, `put_pages_owing_sync`; acknowledged once its sync is made.
    TryPutOwing {
        slot: u64,
        seed: u8,
    },
}

fn workload() -> Vec<Op> {
    (0..30u64)
        .map(|i| match i % 6 {
            1 if i % 12 == 7 => Op::PutOwing {
                slot: i * 7 % SLOTS,
                seed: i as u8 + 201,
            },
            // Slots written before a snapshot (shared: the write would wait) and not.
            1 | 2 if i % 12 == 1 || i % 12 == 8 => Op::TryPutOwing {
                slot: i * 7 % SLOTS,
                seed: i as u8 + 171,
            },
            0..=2 => Op::Put {
                slot: i * 7 % SLOTS,
                slots: 1,
                seed: i as u8 + 1,
            },
            3 => Op::Snapshot,
            4 => Op::Clear {
                slot: i * 5 % SLOTS,
            },
            _ if i % 12 == 11 => Op::PutBatch {
                slots: [i * 5 % SLOTS, (i * 5 + 11) % SLOTS, (i * 5 + 23) % SLOTS],
                seed: i as u8 + 151,
            },
            _ => Op::Put {
                slot: i * 3 % (SLOTS - 1),
                slots: 2,
                seed: i as u8 + 101,
            },
        })
        .collect()
}

fn bytes(seed: u8, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

/// The byte ranges an operation writes, `[start, end)` each.
fn touched(op: &Op) -> Vec<(u64, u64)> {
    match op {
        Op::Put { slot, slots, .. } => vec![(slot * SLOT, (slot + slots) * SLOT)],
        Op::Clear { slot } => vec![(slot * SLOT, (slot + 1) * SLOT)],
        Op::Snapshot => Vec::new(),
        Op::PutBatch { slots, .. } => slots.iter().map(|s| (s * SLOT, (s + 1) * SLOT)).collect(),
        Op::PutOwing { slot, .. } | Op::TryPutOwing { slot, .. } => {
            vec![(slot * SLOT, (slot + 1) * SLOT)]
        }
    }
}

/// The content of slot `slot` of a batch written with `seed`.
fn batch_bytes(seed: u8, slot: u64) -> Vec<u8> {
    bytes(seed.wrapping_add(slot as u8), SLOT)
}

fn p() -> BlobPath {
    BlobPath::new("crash", "disk")
}

/// The store's home layouts tried: one file per blob, and striped over 3 files in 16 KiB
/// chunks (the workload's writes of one or more 8 KiB slots cross chunks and stripes).
const LAYOUTS: [HomeLayout; 2] = [
    HomeLayout::OneFile,
    HomeLayout::Striped(HomeStripes {
        files: 3,
        chunk_bytes: 16 << 10,
    }),
];

fn open(
    fs: &Arc<CrashFs>,
    layout: HomeLayout,
    durability: Durability,
) -> pageblob::StoreResult<Emulator> {
    let fs: Arc<dyn StoreFs> = Arc::new(Arc::clone(fs));
    Emulator::open_with_fs_and_layout(
        fs,
        std::path::Path::new("/store"),
        Profile::Standard,
        layout,
        durability,
        Arc::new(ManualClock::new(1_700_000_000_000_000_000)),
    )
}

/// What a run acknowledged: base content, snapshots with their content, the failed operation,
/// and whether the blob got created at all.
type Outcome = (Vec<u8>, Vec<(String, Vec<u8>)>, Option<Op>, bool);

/// Run the workload until the first failure.
fn run(fs: &Arc<CrashFs>, layout: HomeLayout, durability: Durability) -> Outcome {
    let mut model = vec![0u8; SIZE as usize];
    let mut snaps = Vec::new();
    let store = match open(fs, layout, durability) {
        Ok(s) => s,
        Err(_) => return (model, snaps, None, false),
    };
    let none = Conditions::default();
    if store.create_container("crash").is_err()
        || store.create_page_blob(&p(), SIZE, 0, &none).is_err()
    {
        return (model, snaps, None, false);
    }
    for op in workload() {
        let ok = match &op {
            Op::Put { slot, slots, seed } => store
                .put_pages(&p(), slot * SLOT, &bytes(*seed, slots * SLOT), &none)
                .is_ok(),
            Op::Clear { slot } => store.clear_pages(&p(), slot * SLOT, SLOT, &none).is_ok(),
            Op::PutBatch { slots, seed } => {
                let path = p();
                let data: Vec<Vec<u8>> = slots.iter().map(|&s| batch_bytes(*seed, s)).collect();
                let writes: Vec<pageblob::PageWrite<'_>> = slots
                    .iter()
                    .zip(&data)
                    .map(|(&s, d)| pageblob::PageWrite {
                        path: &path,
                        offset: s * SLOT,
                        data: d,
                    })
                    .collect();
                store.put_pages_batch(&writes, &none).is_ok()
            }
            Op::PutOwing { slot, seed } => store
                .put_pages_owing_sync(&p(), slot * SLOT, &bytes(*seed, SLOT), &none)
                .and_then(|(_, ticket)| ticket.map_or(Ok(()), |t| store.sync_owed(t)))
                .is_ok(),
            Op::TryPutOwing { slot, seed } => {
                let data = bytes(*seed, SLOT);
                store
                    .try_put_pages_owing_sync(&p(), slot * SLOT, &data, &none)
                    .and_then(|made| match made {
                        Some(made) => Ok(made),
                        None => store.put_pages_owing_sync(&p(), slot * SLOT, &data, &none),
                    })
                    .and_then(|(_, ticket)| ticket.map_or(Ok(()), |t| store.sync_owed(t)))
                    .is_ok()
            }
            Op::Snapshot => match store.snapshot(&p(), &none) {
                Ok(id) => {
                    snaps.push((id, model.clone()));
                    true
                }
                Err(_) => false,
            },
        };
        if !ok {
            return (model, snaps, Some(op), true);
        }
        match op {
            Op::Put { slot, slots, seed } => model
                [(slot * SLOT) as usize..((slot + slots) * SLOT) as usize]
                .copy_from_slice(&bytes(seed, slots * SLOT)),
            Op::Clear { slot } => {
                model[(slot * SLOT) as usize..((slot + 1) * SLOT) as usize].fill(0)
            }
            Op::PutOwing { slot, seed } | Op::TryPutOwing { slot, seed } => model
                [(slot * SLOT) as usize..((slot + 1) * SLOT) as usize]
                .copy_from_slice(&bytes(seed, SLOT)),
            Op::PutBatch { slots, seed } => {
                for s in slots {
                    model[(s * SLOT) as usize..((s + 1) * SLOT) as usize]
                        .copy_from_slice(&batch_bytes(seed, s));
                }
            }
            Op::Snapshot => {}
        }
    }
    (model, snaps, None, true)
}

#[test]
fn crash_at_every_write_with_torn_writes_keeps_everything_acknowledged() {
    crash_at_every_write(Durability::Process, false, &[0, 7, 3000, usize::MAX]);
}

#[test]
fn power_cut_at_every_write_keeps_everything_acknowledged() {
    // The interrupted write reaches the disk not at all, one sector, or whole.
    crash_at_every_write(Durability::Power, true, &[0, 512, usize::MAX]);
}

/// Crash at each write of the workload, each write torn at each of `tears` bytes; `power_cut`:
/// the restart sees only what was synced.
fn crash_at_every_write(durability: Durability, power_cut: bool, tears: &[usize]) {
    for layout in LAYOUTS {
        crash_at_every_write_in(layout, durability, power_cut, tears);
    }
}

fn crash_at_every_write_in(
    layout: HomeLayout,
    durability: Durability,
    power_cut: bool,
    tears: &[usize],
) {
    let full = CrashFs::new();
    let _ = run(&full, layout, durability);
    let total_writes = full.writes();
    assert!(
        total_writes > 40,
        "workload made only {total_writes} writes"
    );
    let mut crashes = 0;
    for k in 0..total_writes {
        for &torn in tears {
            let fs = CrashFs::new();
            fs.crash_after(k, torn);
            let (model, snaps, failed, blob_created) = run(&fs, layout, durability);
            assert!(fs.has_crashed(), "write {k} never came");
            crashes += 1;
            if power_cut {
                fs.restart_after_power_loss();
            } else {
                fs.restart();
            }
            let store = open(&fs, layout, durability)
                .unwrap_or_else(|e| panic!("crash at write {k} (torn {torn}): reopen failed: {e}"));
            if !blob_created {
                continue;
            }
            let mut got = vec![0u8; SIZE as usize];
            store
                .read(&p(), None, 0, &mut got)
                .unwrap_or_else(|e| panic!("crash at write {k} (torn {torn}): read: {e}"));
            let skip = failed.as_ref().map(touched).unwrap_or_default();
            for page in 0..SIZE / 512 {
                let (a, b) = (page * 512, page * 512 + 512);
                if skip.iter().any(|&(s, e)| a < e && s < b) {
                    continue; // the unacknowledged operation's pages may hold either version
                }
                assert!(
                    got[a as usize..b as usize] == model[a as usize..b as usize],
                    "crash at write {k} (torn {torn}): page {page} lost an acknowledged write"
                );
            }
            for (id, content) in &snaps {
                let mut s = vec![0u8; SIZE as usize];
                store
                    .read(&p(), Some(id), 0, &mut s)
                    .unwrap_or_else(|e| panic!("crash at write {k}: snapshot {id}: {e}"));
                assert!(
                    s == *content,
                    "crash at write {k} (torn {torn}): snapshot {id} changed"
                );
            }
            // The store keeps working after the crash.
            store
                .put_pages(&p(), 0, &[9; 512], &Conditions::default())
                .unwrap();
        }
    }
    eprintln!(
        "{crashes} simulated crashes ({layout:?}, {durability:?}) over {total_writes} writes"
    );
}
