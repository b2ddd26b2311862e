//! A big disk with little data costs what its data costs: a scan examines the blocks its
//! source may hold data in and those the replica holds as non-zero, no others; the digest
//! table, its tree and a rebuilt table hold pages for those blocks only; a restore decodes only
//! the slots its point wrote. And skipping costs nothing in what is stored: the records, their
//! nonces and the Merkle roots are those of a scan that examines every block.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use datapath::cycle::{run_cycle_cached, BlockSource, CycleCache, CycleOptions, CycleReport};
use datapath::keys::Identity;
use datapath::replica::block_record::BlockCodec;
use datapath::replica::disk_replica::{DiskReplica, Layout};
use datapath::replica::error::ReplicaError;
use datapath::replica::nonce::NonceSource;
use pageblob::clock::ManualClock;
use pageblob::data_log::Durability;
use pageblob::{BlobPath, Emulator, PageBlobStore, Profile};

/// A disk of `size` bytes holding `blocks` (offset → bytes); everything else reads as zeros.
/// With `tells`, it says which ranges may hold data, as a sparse file or a VHDX does.
struct SparseDisk {
    size: u64,
    blocks: BTreeMap<u64, Vec<u8>>,
    tells: bool,
    reads: AtomicU64,
}

impl SparseDisk {
    fn overlapping(&self, offset: u64, len: u64) -> impl Iterator<Item = (&u64, &Vec<u8>)> {
        self.blocks
            .range(..offset + len)
            .filter(move |(&at, bytes)| at + bytes.len() as u64 > offset)
    }
}

impl BlockSource for SparseDisk {
    fn disk_size(&self) -> u64 {
        self.size
    }
    fn is_unallocated(&self, offset: u64, len: u64) -> bool {
        self.tells && self.overlapping(offset, len).next().is_none()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        buf.fill(0);
        for (&at, bytes) in self.overlapping(offset, buf.len() as u64) {
            let from = at.max(offset);
            let to = (at + bytes.len() as u64).min(offset + buf.len() as u64);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&bytes[(from - at) as usize..(to - at) as usize]);
        }
        Ok(())
    }
    fn data_ranges(&self) -> Option<Vec<(u64, u64)>> {
        self.tells.then(|| {
            self.blocks
                .iter()
                .map(|(&at, bytes)| (at, at + bytes.len() as u64))
                .collect()
        })
    }
}

const T0: u64 = 1_700_000_000_000_000_000;

fn identity() -> Identity {
    let clock = ManualClock::new(T0);
    let (_, pfx) = datapath::registration::register("vault", "host", "pw", &clock).unwrap();
    Identity::from_pfx(&pfx, "pw").expect("test identity")
}

fn store(dir: &std::path::Path) -> Arc<Emulator> {
    Arc::new(
        Emulator::open(
            dir,
            Profile::Standard,
            Durability::Process,
            Arc::new(ManualClock::new(T0)),
        )
        .unwrap(),
    )
}

fn cycle(
    replica: &DiskReplica<'_>,
    disk: &SparseDisk,
    id: &Identity,
    nonces: &mut NonceSource,
    cache: &mut CycleCache,
    t: u64,
) -> CycleReport {
    let keys = id.disk_keys("disk");
    let options = CycleOptions {
        upload_threads: 2,
        ..CycleOptions::scan(T0 + t)
    };
    run_cycle_cached(replica, disk, id, &keys, &options, nonces, &|_| {}, cache).unwrap()
}

/// Every written page of `path`, as (offset, bytes).
fn written(store: &dyn PageBlobStore, path: &BlobPath) -> Vec<(u64, Vec<u8>)> {
    let list = store
        .page_ranges(path, None, None, None, None, None)
        .unwrap();
    assert!(list.next_marker.is_none());
    list.ranges
        .iter()
        .map(|r| {
            let mut buf = vec![0u8; (r.end + 1 - r.start) as usize];
            store.read(path, None, r.start, &mut buf).unwrap();
            (r.start, buf)
        })
        .collect()
}

/// The non-zero blocks of the newest point, restored: (block, bytes); and how many blocks the
/// sink was given in all.
fn restored(
    replica: &DiskReplica<'_>,
    id: &Identity,
) -> Result<(BTreeMap<u64, Vec<u8>>, u64), ReplicaError> {
    let keys = id.disk_keys("disk");
    let codec = BlockCodec::new(&keys, 1, true);
    let points = replica.points(keys.digest.expose())?;
    let mut out = BTreeMap::new();
    let mut given = 0;
    replica.restore_blocks(
        &codec,
        points.last().unwrap(),
        keys.digest.expose(),
        |b, data| {
            assert_eq!(b, given, "blocks in order, each once");
            given += 1;
            if let Some(data) = data {
                out.insert(b, data.to_vec());
            }
            Ok(())
        },
    )?;
    Ok((out, given))
}

fn block_of(byte: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| if i % 7 == 0 { byte } else { b'.' })
        .collect()
}

/// The same three cycles of one disk, once from a source that says where its data is and once
/// from one that does not: every byte of the replica's blobs is the same, and so is the next
/// nonce — blocks not examined pass their nonces over.
#[test]
fn skipping_the_known_zero_blocks_stores_what_examining_every_block_stores() {
    const BLOCK: u32 = 16384;
    let size = 200 * u64::from(BLOCK) + 4096; // 200 full blocks and a short one
    let last = 200 * u64::from(BLOCK);
    let id = identity();
    let mut disks: Vec<SparseDisk> = [true, false]
        .map(|tells| SparseDisk {
            size,
            blocks: BTreeMap::from([
                (0, block_of(1, BLOCK as usize)),
                (77 * u64::from(BLOCK), block_of(2, BLOCK as usize)),
                (last, block_of(3, 4096)),
            ]),
            tells,
            reads: AtomicU64::new(0),
        })
        .into();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let stores = [store(dirs[0].path()), store(dirs[1].path())];
    let layout = Layout {
        disk_size: size,
        block_size: BLOCK,
    };
    let replicas: Vec<DiskReplica<'_>> = stores
        .iter()
        .map(|s| DiskReplica::open(&**s, "replicas", "disk", layout).unwrap())
        .collect();
    let mut nonces = [NonceSource::for_epoch(41), NonceSource::for_epoch(41)];
    let mut caches = [CycleCache::default(), CycleCache::default()];
    for round in 0..3u64 {
        match round {
            // Block 77 goes (its data and its allocation: only the replica's table says it
            // was there), block 150 comes, and the short last block changes.
            1 => {
                for d in &mut disks {
                    d.blocks.remove(&(77 * u64::from(BLOCK)));
                    d.blocks
                        .insert(150 * u64::from(BLOCK), block_of(4, BLOCK as usize));
                    d.blocks.insert(last, block_of(5, 4096));
                }
            }
            // A fresh process (no cache): the table is read back from the store.
            2 => {
                caches = [CycleCache::default(), CycleCache::default()];
                for d in &mut disks {
                    d.blocks.insert(3 * u64::from(BLOCK), block_of(6, 100));
                }
            }
            _ => {}
        }
        let reports: Vec<CycleReport> = (0..2)
            .map(|i| {
                cycle(
                    &replicas[i],
                    &disks[i],
                    &id,
                    &mut nonces[i],
                    &mut caches[i],
                    round,
                )
            })
            .collect();
        assert_eq!(reports[0].point.merkle_root, reports[1].point.merkle_root);
        assert_eq!(reports[0].blocks_changed, reports[1].blocks_changed);
        assert_eq!(reports[0].blocks_examined, 201);
        assert_eq!(reports[1].blocks_examined, 201);
        for i in 0..2 {
            let (blocks, given) = restored(&replicas[i], &id).unwrap();
            assert_eq!(given, 201);
            let expected: BTreeMap<u64, Vec<u8>> = disks[i]
                .blocks
                .iter()
                .map(|(&at, bytes)| {
                    let b = at / u64::from(BLOCK);
                    let mut whole = vec![0u8; layout.block_len(b) as usize];
                    whole[(at % u64::from(BLOCK)) as usize..][..bytes.len()].copy_from_slice(bytes);
                    (b, whole)
                })
                .collect();
            assert_eq!(blocks, expected, "round {round}");
        }
        let r = &replicas;
        for path in [(&r[0].data, &r[1].data), (&r[0].digests, &r[1].digests)] {
            assert_eq!(
                written(&*stores[0], path.0),
                written(&*stores[1], path.1),
                "round {round}: {}",
                path.0
            );
        }
    }
    // The source that said where its data was was read for those blocks only: 3, 3 and 4
    // blocks (block 77, gone, was examined from the replica's table without a read).
    assert_eq!(disks[0].reads.load(Ordering::Relaxed), 10);
    assert_eq!(disks[1].reads.load(Ordering::Relaxed), 3 * 201);
    assert_eq!(nonces[0].next_nonce(), nonces[1].next_nonce());
}

/// A differencing VHDX over a parent, both sparse: a scan of the chain (its data ranges from
/// both layers' allocation) stores, byte for byte, what a scan of the same bytes held in memory
/// (no allocation known: every block examined) stores.
#[test]
fn a_scan_of_a_differencing_vhdx_stores_what_a_scan_of_its_bytes_stores() {
    use vhdx::testing::{pattern, ImageBuilder};
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let mut base = ImageBuilder::new(64 * MIB);
    base.data_write_guid(vhdx::Guid([1; 16]))
        .write(0, &pattern(1, 300_000))
        .write(40 * MIB, &pattern(2, 65536));
    let mut top = ImageBuilder::new(64 * MIB);
    top.parent(vhdx::Guid([1; 16]), ".\\base.vhdx")
        .write(MIB + 512, &pattern(3, 1024))
        .write(50 * MIB, &pattern(4, 200_192));
    std::fs::write(dir.path().join("base.vhdx"), base.build()).unwrap();
    std::fs::write(dir.path().join("top.vhdx"), top.build()).unwrap();
    let chain = vhdx::Disk::open(&dir.path().join("top.vhdx")).unwrap();
    let bytes = top.expected_content(Some(&base.expected_content(None)));
    let ranges = BlockSource::data_ranges(&chain).expect("a VHDX knows its allocation");
    let covered: u64 = ranges.iter().map(|(s, e)| e - s).sum();
    assert!(covered < 16 * MIB, "{ranges:?}");
    let id = identity();
    let stores = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let layout = Layout {
        disk_size: 64 * MIB,
        block_size: 65536,
    };
    let sources: [&dyn BlockSource; 2] = [&chain, &bytes];
    let mut blobs = Vec::new();
    for (source, dir) in sources.iter().zip(&stores) {
        let store = store(dir.path());
        let replica = DiskReplica::open(&*store, "replicas", "disk", layout).unwrap();
        let keys = id.disk_keys("disk");
        let options = CycleOptions {
            upload_threads: 2,
            ..CycleOptions::scan(T0)
        };
        let mut nonces = NonceSource::for_epoch(3);
        let report = run_cycle_cached(
            &replica,
            *source,
            &id,
            &keys,
            &options,
            &mut nonces,
            &|_| {},
            &mut CycleCache::default(),
        )
        .unwrap();
        blobs.push((
            report.point.merkle_root,
            written(&*store, &replica.data),
            written(&*store, &replica.digests),
            nonces.next_nonce(),
        ));
        let (restored, _) = restored(&replica, &id).unwrap();
        for (b, data) in restored {
            let at = (b * 65536) as usize;
            assert_eq!(data, bytes[at..at + data.len()], "block {b}");
        }
    }
    assert!(blobs[0] == blobs[1], "the two scans stored different bytes");
}

/// 4 TiB in 64 KiB blocks (2^26 blocks) with four blocks of data: the cycles, the table's
/// tree, the table blob, its rebuild and the restore all follow those blocks. (Before, a scan
/// of this disk listed every block, kept a digest and a tree node per block and took 4.8 GB
/// and 26 s; a 64 TiB disk could not be replicated at all.)
#[test]
fn a_huge_sparse_disk_costs_what_its_data_costs() {
    const BLOCK: u32 = 65536;
    let size = 4u64 << 40;
    let blocks = size / u64::from(BLOCK);
    let id = identity();
    let mut disk = SparseDisk {
        size,
        blocks: BTreeMap::from([
            (0, block_of(1, 4096)),
            (size / 3, block_of(2, 70_000)),
            (size - 65536, block_of(3, 65536)),
        ]),
        tells: true,
        reads: AtomicU64::new(0),
    };
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let layout = Layout {
        disk_size: size,
        block_size: BLOCK,
    };
    let replica = DiskReplica::open(&*store, "replicas", "huge", layout).unwrap();
    let mut nonces = NonceSource::for_epoch(7);
    let mut cache = CycleCache::default();
    let first = cycle(&replica, &disk, &id, &mut nonces, &mut cache, 0);
    assert_eq!((first.blocks, first.blocks_changed), (blocks, 4));
    let held = cache.table_pages_held().unwrap();
    // A few pages per level of the tree's 27, not the 2^21 a tree of every node holds.
    assert!(held < 4 * 27, "{held} pages held");
    disk.blocks.remove(&0);
    disk.blocks.insert(size / 2, block_of(4, 65536));
    let second = cycle(&replica, &disk, &id, &mut nonces, &mut cache, 1);
    assert_eq!(second.blocks_changed, 2, "block 0 cleared, one block new");
    assert!(disk.reads.load(Ordering::Relaxed) <= 10);

    // The table blob holds a page per non-zero entry.
    let table = written(&*store, &replica.digests);
    let table_bytes: usize = table.iter().map(|(_, b)| b.len()).sum();
    assert!(
        table_bytes <= 5 * 512,
        "{table_bytes} bytes of table written"
    );

    // Damage a page of zero entries far from any data: the next cycle (a fresh process)
    // does not trust the table, rebuilds it from the slots, and stores it whole — that page
    // cleared, not the whole 2 GiB table written.
    let far = (blocks / 4) * 32 / 512 * 512;
    store
        .put_pages(&replica.digests, far, &[0xAB; 512], &Default::default())
        .unwrap();
    let mut fresh = CycleCache::default();
    let third = cycle(&replica, &disk, &id, &mut nonces, &mut fresh, 2);
    assert!(third.table_rebuilt);
    assert_eq!(third.blocks_changed, 0);
    let rebuilt = written(&*store, &replica.digests);
    assert!(
        rebuilt.iter().all(|(at, _)| *at != far),
        "the damaged page was cleared"
    );
    let rebuilt_bytes: usize = rebuilt.iter().map(|(_, b)| b.len()).sum();
    assert!(
        rebuilt_bytes <= 5 * 512,
        "{rebuilt_bytes} bytes of table written"
    );

    // The newest point restores the disk's blocks, every other one a zero block.
    let (restored, given) = restored(&replica, &id).unwrap();
    assert_eq!(given, blocks);
    let expected: Vec<u64> = vec![
        size / 3 / 65536,
        size / 3 / 65536 + 1,
        blocks / 2,
        blocks - 1,
    ];
    assert_eq!(restored.keys().copied().collect::<Vec<_>>(), expected);
    assert_eq!(restored[&(blocks - 1)], block_of(3, 65536));
}

/// A disk whose replica's data blob (a slot of 512 + block size bytes per block) would be
/// past a page blob's 8 TiB is refused before anything is made, saying which disks fit.
#[test]
fn a_disk_past_what_a_page_blob_holds_is_refused_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let layout = Layout {
        disk_size: 64 << 40,
        block_size: 65536,
    };
    let err = match DiskReplica::open(&*store, "replicas", "huge", layout) {
        Ok(_) => panic!("a 64 TiB disk was let in"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("past a page blob's 8 TiB"), "{err}");
    assert!(err.contains("disks of up to 8727906222080 bytes"), "{err}");
    let fits = Layout {
        disk_size: 8_727_906_222_080,
        block_size: 65536,
    };
    DiskReplica::open(&*store, "replicas", "fits", fits).unwrap();
    assert!(DiskReplica::open(
        &*store,
        "replicas",
        "one-more",
        Layout {
            disk_size: 8_727_906_222_080 + 1,
            ..fits
        }
    )
    .is_err());
}
