//! The point auditor: proves every recovery point of a disk restores to the disk as it was,
//! and that no AES-GCM nonce is used for two records, at a cost proportional to what changed.
//!
//! The first point is checked block by block against its [`ContentModel`]. Each later point is
//! checked against the last one verified: only the blocks whose slots differ between the two
//! snapshots (the store's page-range diff) or whose content differs between the two models are
//! read, decrypted and compared; every other slot holds the very record already verified, and
//! its model entry is unchanged. By induction each point restores byte-exact. The record headers
//! read on the way feed the nonce audit: records inherited by a snapshot were audited where they
//! first appeared. The end-of-run checker still restores some points in full, through the
//! replica's own restore, which also checks each manifest's Merkle root.

use std::collections::{BTreeMap, BTreeSet};

use datapath::replica::block_record::BlockCodec;
use datapath::replica::disk_replica::DiskReplica;
use datapath::replica::manifest::Manifest;

use crate::content::{block_hash, ContentModel};

/// Audit state of one disk.
#[derive(Debug, Default)]
pub struct PointAudit {
    /// The last verified point: sequence, snapshot, model.
    last: Option<(u64, String, ContentModel)>,
    /// Nonce → (block, generation) of the record that used it.
    nonces: BTreeMap<[u8; 12], (u64, u64)>,
    /// Record headers audited.
    pub records: usize,
    /// Nonces found on two different records.
    pub reuse: Vec<String>,
    /// Points proven to restore byte-exact.
    pub verified: BTreeSet<u64>,
    /// Points that do not, with why.
    pub failures: Vec<String>,
}

impl PointAudit {
    /// Verify, in order, every point in `points` newer than the last verified one, against the
    /// disk's model at that point (`models`, by sequence).
    pub fn catch_up(
        &mut self,
        replica: &DiskReplica<'_>,
        codec: &BlockCodec,
        points: &[Manifest],
        models: &BTreeMap<u64, ContentModel>,
    ) {
        let after = self.last.as_ref().map(|(s, _, _)| *s);
        for p in points
            .iter()
            .filter(|p| after.is_none_or(|s| p.sequence > s))
        {
            let Some(model) = models.get(&p.sequence) else {
                self.failures.push(format!(
                    "point {}: the checker has no record of the disk at that point",
                    p.sequence
                ));
                continue;
            };
            match self.verify(replica, codec, p, model) {
                Ok(()) => {
                    self.verified.insert(p.sequence);
                }
                Err(why) => self.failures.push(format!("point {}: {why}", p.sequence)),
            }
            self.last = Some((p.sequence, p.snapshot.clone(), model.clone()));
        }
    }

    fn verify(
        &mut self,
        replica: &DiskReplica<'_>,
        codec: &BlockCodec,
        point: &Manifest,
        model: &ContentModel,
    ) -> Result<(), String> {
        // Diff against the last verified snapshot; if retention deleted it, against nothing.
        let base = self
            .last
            .as_ref()
            .and_then(|(_, snapshot, m)| {
                replica
                    .changed_blocks(Some(snapshot), Some(&point.snapshot))
                    .ok()
                    .map(|changed| (changed, m.clone()))
            })
            .map_or_else(
                || {
                    replica
                        .changed_blocks(None, Some(&point.snapshot))
                        .map(|changed| (changed, model.zeroed_like()))
                },
                Ok,
            );
        let (changed, base_model) = base.map_err(|e| e.to_string())?;
        let mut blocks: BTreeSet<u64> = changed.into_iter().collect();
        blocks.extend(model.differing_blocks(&base_model));
        for block in blocks {
            let hash = match replica
                .read_record(codec, Some(&point.snapshot), block)
                .map_err(|e| e.to_string())?
            {
                Some((header, data)) => {
                    self.note_nonce(block, header.nonce, header.generation);
                    block_hash(&data)
                }
                None => model.zero_hash(block),
            };
            if hash != model.get(block) {
                return Err(format!("block {block} differs from the disk at that point"));
            }
        }
        Ok(())
    }

    /// Audit the records of the blob as it is now that no point holds yet (a failed cycle's).
    pub fn audit_live_blob(&mut self, replica: &DiskReplica<'_>) -> Result<(), String> {
        let last = self.last.as_ref().map(|(_, s, _)| s.clone());
        let blocks = replica
            .changed_blocks(last.as_deref(), None)
            .map_err(|e| e.to_string())?;
        let mut head = vec![0u8; datapath::replica::slot_header::HEADER_SIZE];
        for block in blocks {
            replica
                .read_slot_header(block, &mut head)
                .map_err(|e| e.to_string())?;
            if let Ok(h) = datapath::replica::slot_header::SlotHeader::decode(&head) {
                self.note_nonce(block, h.nonce, h.generation);
            }
        }
        Ok(())
    }

    fn note_nonce(&mut self, block: u64, nonce: [u8; 12], generation: u64) {
        if nonce == [0; 12] {
            return; // not encrypted
        }
        self.records += 1;
        let record = (block, generation);
        if let Some(other) = self.nonces.insert(nonce, record) {
            if other != record {
                self.reuse
                    .push(format!("blocks {other:?} and {record:?} share a nonce"));
            }
        }
    }
}
