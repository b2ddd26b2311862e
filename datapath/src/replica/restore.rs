//! Restoring a recovery point (the RTO of every failover): every slot the point's snapshot
//! holds is fetched, authenticated, decompressed and hashed by the rayon pool the caller runs
//! in, a group of blocks at a time; the next group is decoded while the caller's sink takes the
//! last one, in block order. The Merkle root of all the blocks' digests is proven against the
//! manifest before the restore returns `Ok`, so a caller publishes its output only then.
//! Only the groups holding a slot the point's snapshot wrote are fetched and decoded; the
//! blocks between them go to the sink as zero blocks, and the root is proven over the digests
//! of the blocks with records (the tree reads the others as zero blocks): a big sparse disk
//! restores in the time and memory its data needs.
//!
//! Records are fetched by the pool too ([`Fetch::Parallel`]: one read per record from a store
//! that answers promptly, a batch of reads per task from one across a network, which the HTTP
//! client pipelines), or one after another by the calling thread in block order
//! ([`Fetch::InOrder`]): the simulator's stores draw their
//! faults per call in a seeded order, and the order of the calls must not depend on thread
//! scheduling. Either way the sink sees the same blocks in the same order.

use rayon::prelude::*;

use super::block_record::BlockCodec;
use super::disk_replica::{block_error, DiskReplica, Layout};
use super::error::ReplicaError;
use super::manifest::Manifest;
use super::merkle::MerkleTree;
use pageblob::StoreError;

/// Bytes of blocks decoded together (at most 128 blocks, at least 2).
const GROUP_BYTES: u64 = 8 << 20;

/// How a restore reads the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// The pool's threads read records, as many at once as there are threads.
    Parallel,
    /// The calling thread reads records one after another in block order, while the pool
    /// decodes the group before; the store sees the same calls in the same order every time.
    InOrder,
}

/// One block as the pool leaves it: its bytes (`None`: a zero block, never stored) and the
/// keyed digest that goes into the Merkle tree.
struct Restored {
    data: Option<Vec<u8>>,
    digest: [u8; 32],
}

type Fetched = Result<Option<Vec<u8>>, ReplicaError>;

impl DiskReplica<'_> {
    /// Restore a point block by block (`sink` gets every block in order, zero blocks as
    /// zeros), verifying every record and, at the end, the Merkle root.
    pub fn restore(
        &self,
        codec: &BlockCodec,
        manifest: &Manifest,
        digest_key: &[u8; 32],
        mut sink: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
    ) -> Result<(), ReplicaError> {
        let mut zero = Vec::new();
        self.restore_blocks(codec, manifest, digest_key, |block, data| match data {
            Some(data) => sink(block, data),
            None => {
                zero.resize(self.layout.block_len(block) as usize, 0);
                sink(block, &zero)
            }
        })
    }

    /// [`restore`](Self::restore), telling zero blocks (cleared slots) apart: `sink` gets
    /// `None` for them, so a caller can skip them without looking at their bytes.
    pub fn restore_blocks(
        &self,
        codec: &BlockCodec,
        manifest: &Manifest,
        digest_key: &[u8; 32],
        mut sink: impl FnMut(u64, Option<&[u8]>) -> std::io::Result<()>,
    ) -> Result<(), ReplicaError> {
        self.restore_with(
            codec,
            manifest,
            digest_key,
            Fetch::Parallel,
            |block, data, _| sink(block, data),
        )
    }

    /// [`restore_blocks`](Self::restore_blocks) with the store read as `fetch` says; `sink`
    /// also gets each block's digest (its bytes were checked against it, and the digests
    /// together are checked against the manifest's Merkle root before this returns `Ok`).
    pub fn restore_with(
        &self,
        codec: &BlockCodec,
        manifest: &Manifest,
        digest_key: &[u8; 32],
        fetch: Fetch,
        mut sink: impl FnMut(u64, Option<&[u8]>, &[u8; 32]) -> std::io::Result<()>,
    ) -> Result<(), ReplicaError> {
        let plan = RestorePlan::new(self, codec, manifest)?;
        let blocks = self.layout.blocks();
        let group = (GROUP_BYTES / u64::from(self.layout.block_size)).clamp(2, 128);
        // The digests of the blocks with records; the others are zero blocks.
        let mut held = Vec::new();
        // Blocks before this one went to the sink.
        let mut sunk_to = 0;
        let mut sink_group = |first: u64, group: Vec<Result<Restored, ReplicaError>>| {
            let output = |e| StoreError::Io {
                path: "restore output".into(),
                source: e,
            };
            for block in sunk_to..first {
                sink(block, None, &plan.zero_digest(block)).map_err(output)?;
            }
            sunk_to = sunk_to.max(first);
            for (block, restored) in (first..).zip(group) {
                let restored = restored?;
                sink(block, restored.data.as_deref(), &restored.digest).map_err(output)?;
                if restored.data.is_some() {
                    held.push((block, restored.digest));
                }
                sunk_to = block + 1;
            }
            Ok::<(), ReplicaError>(())
        };
        // Only the groups with a slot the snapshot wrote are decoded; the blocks between them
        // are zero blocks, handed to the sink as such.
        let starts = plan.groups_with_records(group);
        let range = |start: u64| start..(start + group).min(blocks);
        // The group the sink takes next, and (in order) the records fetched for the one after.
        let mut decoded: Option<(u64, Vec<Result<Restored, ReplicaError>>)> = None;
        let mut fetched: Option<Vec<Fetched>> = match (fetch, starts.first()) {
            (Fetch::InOrder, Some(&first)) => Some(range(first).map(|b| plan.fetch(b)).collect()),
            _ => None,
        };
        for (i, &start) in starts.iter().enumerate() {
            let records = fetched.take();
            let mut next: Option<Vec<Result<Restored, ReplicaError>>> = None;
            let mut sunk = Ok(());
            rayon::in_place_scope(|scope| {
                let plan = &plan;
                let out = &mut next;
                scope.spawn(move |_| *out = Some(plan.decode_group(range(start), records)));
                // Meanwhile, on this thread: the group before into the sink, and (in order)
                // the records of the group after.
                if let Some((first, group)) = decoded.take() {
                    sunk = sink_group(first, group);
                }
                if let (Fetch::InOrder, Some(&after), true) =
                    (fetch, starts.get(i + 1), sunk.is_ok())
                {
                    fetched = Some(range(after).map(|b| plan.fetch(b)).collect());
                }
            });
            sunk?;
            decoded = Some((start, next.expect("the decoding task ran")));
        }
        if let Some((first, group)) = decoded {
            sink_group(first, group)?;
        }
        sink_group(blocks, Vec::new())?;
        let root =
            MerkleTree::sparse(digest_key, blocks, plan.zero_full, plan.zero_tail, held).root();
        if root != manifest.merkle_root {
            return Err(ReplicaError::MerkleMismatch {
                point: manifest.snapshot.clone(),
            });
        }
        Ok(())
    }
}

/// The digests of a zero block and of a zero last block (which may be short) of `layout`.
pub(super) fn zero_digests(codec: &BlockCodec, layout: &Layout) -> ([u8; 32], [u8; 32]) {
    let full = u64::from(layout.block_size);
    let tail = layout.block_len(layout.blocks().saturating_sub(1));
    let zero_full = codec.digest(&vec![0u8; full as usize]);
    let zero_tail = if tail == full {
        zero_full
    } else {
        codec.digest(&vec![0u8; tail as usize])
    };
    (zero_full, zero_tail)
}

/// What every block of one restore needs: the store, which slots the snapshot ever wrote,
/// and the digests of zero blocks.
struct RestorePlan<'r, 'a> {
    replica: &'r DiskReplica<'a>,
    codec: &'r BlockCodec,
    snapshot: &'r str,
    /// The snapshot's written page ranges `[start, end)`, ascending: slots outside them are
    /// zero blocks and are not read at all.
    written: Vec<(u64, u64)>,
    zero_full: [u8; 32],
    zero_tail: [u8; 32],
}

impl<'r, 'a> RestorePlan<'r, 'a> {
    fn new(
        replica: &'r DiskReplica<'a>,
        codec: &'r BlockCodec,
        manifest: &'r Manifest,
    ) -> Result<Self, ReplicaError> {
        let written = replica.written_ranges_at(&replica.data, Some(&manifest.snapshot))?;
        let (zero_full, zero_tail) = zero_digests(codec, &replica.layout);
        Ok(RestorePlan {
            replica,
            codec,
            snapshot: &manifest.snapshot,
            written,
            zero_full,
            zero_tail,
        })
    }

    /// The record in `block`'s slot; `None` when the snapshot never wrote the slot's pages or
    /// the slot was cleared.
    fn fetch(&self, block: u64) -> Fetched {
        match self.written_from_start(block) {
            None => Ok(None),
            Some(written) => self
                .replica
                .fetch_record_within(Some(self.snapshot), block, written),
        }
    }

    /// [`RestorePlan::fetch`] for `blocks`, their records read with one batch.
    fn fetch_batch(&self, blocks: &[u64]) -> Vec<Fetched> {
        let written: Vec<Option<u64>> =
            blocks.iter().map(|&b| self.written_from_start(b)).collect();
        let stored: Vec<(u64, u64)> = blocks
            .iter()
            .zip(&written)
            .filter_map(|(&b, w)| Some((b, (*w)?)))
            .collect();
        let mut records = self
            .replica
            .fetch_records_within(Some(self.snapshot), &stored)
            .into_iter();
        written
            .iter()
            .map(|w| match w {
                None => Ok(None),
                Some(_) => records.next().expect("a record per stored block"),
            })
            .collect()
    }

    /// The digest of `block` when it is a zero block.
    fn zero_digest(&self, block: u64) -> [u8; 32] {
        if block + 1 == self.replica.layout.blocks() {
            self.zero_tail
        } else {
            self.zero_full
        }
    }

    /// The first blocks of the groups of `group` blocks (the disk's blocks cut in such groups
    /// from block 0) that hold a slot the snapshot wrote, ascending.
    fn groups_with_records(&self, group: u64) -> Vec<u64> {
        let slot = self.replica.layout.slot_size();
        let blocks = self.replica.layout.blocks();
        let mut starts: Vec<u64> = Vec::new();
        for &(start, end) in &self.written {
            let first = start / slot / group;
            let last = ((end - 1) / slot).min(blocks.saturating_sub(1)) / group;
            let from = starts.last().map_or(first, |&s| first.max(s / group + 1));
            starts.extend((from..=last).map(|g| g * group).filter(|&b| b < blocks));
        }
        starts
    }

    /// `None` when the snapshot wrote none of `block`'s slot; else how many bytes from the
    /// slot's start it wrote (they hold the record: one read; 0 when the written pages start
    /// later in the slot).
    fn written_from_start(&self, block: u64) -> Option<u64> {
        let slot = self.replica.layout.slot_size();
        let (start, end) = (block * slot, (block + 1) * slot);
        let i = self.written.partition_point(|&(_, e)| e <= start);
        let &(from, to) = self.written.get(i).filter(|&&(s, _)| s < end)?;
        Some(if from <= start {
            to.min(end) - start
        } else {
            0
        })
    }

    /// The blocks of `group` fetched (unless `records` holds them already, in order) and
    /// decoded on the pool.
    fn decode_group(
        &self,
        group: std::ops::Range<u64>,
        records: Option<Vec<Fetched>>,
    ) -> Vec<Result<Restored, ReplicaError>> {
        let start = group.start;
        if let Some(records) = records {
            return records
                .into_par_iter()
                .enumerate()
                .map(|(i, record)| self.decode(start + i as u64, record))
                .collect();
        }
        if self.replica.store().answers_promptly() {
            return (0..group.count())
                .into_par_iter()
                .map(|i| start + i as u64)
                .map(|block| self.decode(block, self.fetch(block)))
                .collect();
        }
        // A store across a network: a batch of reads per task, each batch one round trip
        // (the HTTP client pipelines as many as `PIPELINE_DEPTH`), the batches side by side —
        // at least one per thread, so a group's decoding still spreads over the whole pool.
        let blocks: Vec<u64> = group.collect();
        let per_batch = blocks
            .len()
            .div_ceil(rayon::current_num_threads())
            .clamp(1, pageblob::PIPELINE_DEPTH);
        let batches: Vec<Vec<Result<Restored, ReplicaError>>> = blocks
            .par_chunks(per_batch)
            .map(|batch| {
                batch
                    .iter()
                    .zip(self.fetch_batch(batch))
                    .map(|(&block, record)| self.decode(block, record))
                    .collect()
            })
            .collect();
        batches.into_iter().flatten().collect()
    }

    fn decode(&self, block: u64, fetched: Fetched) -> Result<Restored, ReplicaError> {
        match fetched? {
            Some(record) => {
                let (data, digest) = self
                    .codec
                    .decode_owned(record, block)
                    .map_err(|e| block_error(Some(self.snapshot), block, e))?;
                Ok(Restored {
                    data: Some(data),
                    digest,
                })
            }
            None => Ok(Restored {
                data: None,
                digest: self.zero_digest(block),
            }),
        }
    }
}
