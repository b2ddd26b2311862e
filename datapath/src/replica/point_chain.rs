//! Verifying a replica's points oldest first at the cost of what changed between them
//! (`drplane verify --changes-only`). The first point is restored in full through the
//! replica's own restore (every record it holds authenticated, decompressed and hashed, the
//! Merkle root proven), keeping the digests of its blocks with records. Each later point is
//! checked from the one before it: only the slots the store's page-range diff between their
//! two snapshots names are read and decoded, every other slot holds the very record already
//! decoded, and the point's Merkle root is proven over the digests so updated. So every record
//! any point holds is decoded once, and every point's root is proven, where restoring each
//! point in full decodes every record once per point holding it.
//!
//! What it trusts beyond a full verify: the store's diff, that a slot the diff does not name
//! reads the same through both snapshots (Azure's snapshots share their unchanged pages). A
//! point that fails, or whose diff the store cannot give (the point before was deleted
//! meanwhile), is followed by one verified in full.

use rayon::prelude::*;

use super::block_record::BlockCodec;
use super::disk_replica::DiskReplica;
use super::error::ReplicaError;
use super::manifest::Manifest;
use super::merkle::MerkleTree;
use super::restore::{zero_digests, Fetch};

/// The digests of a point's blocks with records, by block, ascending.
type Held = Vec<(u64, [u8; 32])>;

/// The last point verified: its snapshot and the digests of its blocks with records.
#[derive(Debug, Default)]
pub struct PointChain {
    last: Option<(String, Held)>,
}

/// How a point was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainStep {
    /// Records read and decoded for it.
    pub records_decoded: u64,
    /// Whether it was restored in full (the first, or one after a failure) rather than from
    /// the point before it.
    pub in_full: bool,
}

impl DiskReplica<'_> {
    /// Verify `manifest`'s point, after `chain`'s last point when there is one (see the
    /// module). Points must come oldest first. An error leaves the chain empty: the next
    /// point is verified in full.
    pub fn verify_in_chain(
        &self,
        codec: &BlockCodec,
        manifest: &Manifest,
        digest_key: &[u8; 32],
        chain: &mut PointChain,
    ) -> Result<ChainStep, ReplicaError> {
        let last = chain.last.take();
        let step = match last {
            Some((snapshot, held)) => {
                match self.changed_block_extents(Some(&snapshot), Some(&manifest.snapshot)) {
                    Ok(changed) => self.verify_changes(codec, manifest, digest_key, held, &changed),
                    // No diff (the point before is gone): this one in full.
                    Err(_) => self.verify_in_full(codec, manifest, digest_key),
                }
            }
            None => self.verify_in_full(codec, manifest, digest_key),
        };
        let (held, step) = step?;
        chain.last = Some((manifest.snapshot.clone(), held));
        Ok(step)
    }

    fn verify_in_full(
        &self,
        codec: &BlockCodec,
        manifest: &Manifest,
        digest_key: &[u8; 32],
    ) -> Result<(Held, ChainStep), ReplicaError> {
        let mut held = Vec::new();
        self.restore_with(
            codec,
            manifest,
            digest_key,
            Fetch::Parallel,
            |block, data, digest| {
                if data.is_some() {
                    held.push((block, *digest));
                }
                Ok(())
            },
        )?;
        let records_decoded = held.len() as u64;
        Ok((
            held,
            ChainStep {
                records_decoded,
                in_full: true,
            },
        ))
    }

    /// The point after the one whose blocks with records had `held` digests, `changed`
    /// (blocks and the bytes the diff says changed from their slot's start) being the slots
    /// that differ between the two snapshots.
    fn verify_changes(
        &self,
        codec: &BlockCodec,
        manifest: &Manifest,
        digest_key: &[u8; 32],
        held: Held,
        changed: &[(u64, u64)],
    ) -> Result<(Held, ChainStep), ReplicaError> {
        let snapshot = Some(manifest.snapshot.as_str());
        // Read and decoded on the pool; the first failure in block order is the one told.
        let decoded: Vec<Result<Option<[u8; 32]>, ReplicaError>> = changed
            .par_iter()
            .map(|&(block, written)| {
                self.read_record_within(codec, snapshot, block, written)
                    .map(|record| record.map(|(header, _)| header.digest))
            })
            .collect();
        let mut updates = Vec::with_capacity(changed.len());
        for (&(block, _), digest) in changed.iter().zip(decoded) {
            updates.push((block, digest?));
        }
        let records_decoded = updates.iter().filter(|(_, d)| d.is_some()).count() as u64;
        let held = merge(held, updates);
        let (zero_full, zero_tail) = zero_digests(codec, &self.layout);
        let root = MerkleTree::sparse(
            digest_key,
            self.layout.blocks(),
            zero_full,
            zero_tail,
            held.iter().copied(),
        )
        .root();
        if root != manifest.merkle_root {
            return Err(ReplicaError::MerkleMismatch {
                point: manifest.snapshot.clone(),
            });
        }
        Ok((
            held,
            ChainStep {
                records_decoded,
                in_full: false,
            },
        ))
    }
}

/// `held` (ascending by block) with `updates` (ascending) applied: a digest replaces the
/// block's, `None` (a cleared slot: a zero block) removes it.
fn merge(held: Held, updates: Vec<(u64, Option<[u8; 32]>)>) -> Held {
    let mut out = Vec::with_capacity(held.len() + updates.len());
    let mut held = held.into_iter().peekable();
    for (block, digest) in updates {
        while let Some(kept) = held.next_if(|(b, _)| *b < block) {
            out.push(kept);
        }
        held.next_if(|(b, _)| *b == block);
        if let Some(d) = digest {
            out.push((block, d));
        }
    }
    out.extend(held);
    out
}

#[cfg(test)]
mod tests {
    use super::merge;

    #[test]
    fn updates_replace_add_and_remove_digests_in_block_order() {
        let held = vec![(1, [1; 32]), (4, [4; 32]), (9, [9; 32])];
        let updates = vec![
            (0, Some([10; 32])),
            (4, None),
            (5, Some([5; 32])),
            (9, Some([90; 32])),
        ];
        assert_eq!(
            merge(held, updates),
            vec![(0, [10; 32]), (1, [1; 32]), (5, [5; 32]), (9, [90; 32])]
        );
        assert_eq!(merge(vec![(3, [3; 32])], vec![]), vec![(3, [3; 32])]);
        assert_eq!(merge(vec![], vec![(2, None)]), vec![]);
    }
}
