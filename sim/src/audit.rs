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
use rayon::prelude::*;

use crate::content::ContentModel;

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
                    .changed_block_extents(Some(snapshot), Some(&point.snapshot))
                    .ok()
                    .map(|changed| (changed, m.clone()))
            })
            .map_or_else(
                || {
                    replica
                        .changed_block_extents(None, Some(&point.snapshot))
                        .map(|changed| (changed, model.zeroed_like()))
                },
                Ok,
            );
        let (changed, base_model) = base.map_err(|e| e.to_string())?;
        // Each block with the bytes the diff says were written from its slot's start (a record
        // read with one call); blocks the model says changed and the diff does not, with none.
        let mut blocks: BTreeMap<u64, u64> = changed.into_iter().collect();
        for block in model.differing_blocks(&base_model) {
            blocks.entry(block).or_insert(0);
        }
        // The records are read and decoded on the pool (a thread that has finished its own
        // disks' cycles takes part of the last one's proof instead of waiting for it); their
        // outcomes are then taken in block order, so the first failure, the nonces noted and
        // everything after are as one by one.
        let blocks: Vec<(u64, u64)> = blocks.into_iter().collect();
        let decoded: Vec<_> = blocks
            .par_iter()
            .map(|&(block, written)| {
                replica
                    .read_record_within(codec, Some(&point.snapshot), block, written)
                    .map(|record| record.map(|(header, _)| header))
            })
            .collect();
        for (&(block, _), decoded) in blocks.iter().zip(decoded) {
            let hash = match decoded.map_err(|e| e.to_string())? {
                // The record decoded: its bytes hash to the header's digest.
                Some(header) => {
                    self.note_nonce(block, header.nonce, header.generation);
                    header.digest
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

/// A disk replicated through the real pipeline, for the audit's tests.
#[cfg(test)]
pub(crate) mod fixture {
    use std::sync::Arc;

    use datapath::cycle::{run_cycle, CycleOptions};
    use datapath::keys::{DiskKeys, Identity, KeyId};
    use datapath::replica::block_record::BlockCodec;
    use datapath::replica::disk_replica::{DiskReplica, Layout};
    use datapath::replica::manifest::Manifest;
    use datapath::replica::nonce::NonceSource;
    use pageblob::data_log::Durability;
    use pageblob::{Emulator, Profile};
    use rand_core::SeedableRng;
    use vhdx::{CreateOptions, MemoryFile, NoParents, VhdxWriter};

    use crate::content::ContentModel;

    pub(crate) const BLOCK: u32 = 64 << 10;
    pub(crate) const SIZE: u64 = 4 << 20;
    pub(crate) const LAYOUT: Layout = Layout {
        disk_size: SIZE,
        block_size: BLOCK,
    };

    /// A 4 MiB VHDX, its writer, and a store its cycles replicate into.
    pub(crate) struct Fixture {
        pub(crate) store: Emulator,
        identity: Identity,
        keys: DiskKeys,
        pub(crate) codec: BlockCodec,
        file: Arc<MemoryFile>,
        pub(crate) writer: VhdxWriter<Arc<MemoryFile>>,
        nonces: NonceSource,
    }

    impl Fixture {
        pub(crate) fn new() -> Fixture {
            let clock = Arc::new(pageblob::clock::ManualClock::new(1_700_000_000_000_000_000));
            let store = Emulator::open_with_fs(
                Arc::new(pageblob::memory_fs::CrashFs::new()),
                std::path::Path::new("/store"),
                Profile::Standard,
                Durability::Process,
                clock,
            )
            .unwrap();
            let identity = Identity::from_key_material(KeyId([1; 20]), "CN=t".into(), &[7; 64]);
            let keys = identity.disk_keys("d");
            let codec = BlockCodec::new(&keys, 1, true);
            let file = Arc::new(MemoryFile::new());
            let writer = VhdxWriter::create(
                Arc::clone(&file),
                &CreateOptions::dynamic(SIZE),
                Box::new(rand_chacha::ChaCha8Rng::seed_from_u64(1)),
            )
            .unwrap();
            let nonces = NonceSource::new_epoch(&mut rand_chacha::ChaCha8Rng::seed_from_u64(2));
            Fixture {
                store,
                identity,
                keys,
                codec,
                file,
                writer,
                nonces,
            }
        }

        pub(crate) fn replica(&self) -> DiskReplica<'_> {
            DiskReplica::open(&self.store, "replicas", "d", LAYOUT).unwrap()
        }

        /// The disk as it is now.
        pub(crate) fn disk(&self) -> vhdx::Disk {
            vhdx::Disk::open_with(Box::new(Arc::clone(&self.file)), "d", &NoParents).unwrap()
        }

        /// Flush the writer, run a cycle at time `t`, and return the model of what it read.
        pub(crate) fn cycle(&mut self, t: u64) -> ContentModel {
            self.writer.flush().unwrap();
            let disk = self.disk();
            let mut options = CycleOptions::scan(t);
            options.upload_threads = 0;
            let replica = DiskReplica::open(&self.store, "replicas", "d", LAYOUT).unwrap();
            run_cycle(
                &replica,
                &disk,
                &self.identity,
                &self.keys,
                &options,
                &mut self.nonces,
                &|_| {},
            )
            .unwrap();
            ContentModel::of_disk(&disk, BLOCK, *self.keys.digest.expose()).unwrap()
        }

        pub(crate) fn points(&self) -> Vec<Manifest> {
            self.replica().points(self.keys.digest.expose()).unwrap()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::Fixture;
    use super::*;

    #[test]
    fn points_that_match_the_disk_pass_and_a_lost_write_is_caught() {
        let mut f = Fixture::new();
        let mut models = BTreeMap::new();
        let mut audit = PointAudit::default();
        f.writer.write_at(0, &[1; 100_000]).unwrap();
        models.insert(0, f.cycle(10));
        f.writer.write_at(3 << 20, &[2; 70_000]).unwrap();
        f.writer.zero(0, 65536).unwrap();
        models.insert(1, f.cycle(20));
        audit.catch_up(&f.replica(), &f.codec, &f.points(), &models);
        assert!(audit.failures.is_empty(), "{:?}", audit.failures);
        assert_eq!(audit.verified.len(), 2);
        assert!(audit.records >= 3 && audit.reuse.is_empty());

        // The disk gets a write the next point does not hold (as if the data path dropped it):
        // the checker's model says otherwise, and the audit names the block.
        let replicated = f.cycle(30);
        f.writer.write_at(2 << 20, &[3; 4096]).unwrap();
        f.writer.flush().unwrap();
        let mut claimed = replicated.clone();
        claimed.refresh(&f.disk(), [32]).unwrap();
        models.insert(2, claimed);
        audit.catch_up(&f.replica(), &f.codec, &f.points(), &models);
        assert_eq!(
            audit.failures,
            vec!["point 2: block 32 differs from the disk at that point".to_string()]
        );
        assert!(!audit.verified.contains(&2));

        // A record that decodes but holds other bytes than the disk had at that point (as if
        // the data path stored a stale block): its digest is not the model's.
        f.writer.write_at(1 << 20, &[5; 65536]).unwrap();
        let mut claimed = f.cycle(40);
        claimed.set_hash(16, claimed.hasher().hash(16, &[6; 65536]));
        models.insert(3, claimed);
        audit.catch_up(&f.replica(), &f.codec, &f.points(), &models);
        assert_eq!(
            audit.failures.last().map(String::as_str),
            Some("point 3: block 16 differs from the disk at that point")
        );
        assert!(!audit.verified.contains(&3));
    }
}
