//! One replication cycle of a disk that is not tracked by us (a file on the command line):
//! changes are found by comparing each block's keyed digest with the digest stored in its
//! replica slot; blocks the source reports unallocated are never read. Then the point commits.
//! The sans-IO replicator with scheduling, tracking and retention builds on this (issue 4).

use std::time::Instant;

use rayon::prelude::*;

use crate::keys::{DiskKeys, Identity};
use crate::replica::batch::encode_batch;
use crate::replica::block_record::BlockCodec;
use crate::replica::disk_replica::{DiskReplica, ReplicaError};
use crate::replica::manifest::{Consistency, Manifest};
use crate::replica::nonce::NonceSource;
use crate::replica::slot_header::{SlotHeader, HEADER_SIZE};

/// Blocks encoded per parallel batch: bounds memory to about this many blocks in flight.
pub const BATCH_BLOCKS: usize = 64;

/// Where a cycle reads the disk from.
pub trait BlockSource {
    fn disk_size(&self) -> u64;
    /// True when `[offset, offset+len)` is known to read as zeros without reading it.
    fn is_unallocated(&self, offset: u64, len: u64) -> bool;
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

/// What a cycle did.
#[derive(Debug, Clone, PartialEq)]
pub struct CycleReport {
    pub point: Manifest,
    pub blocks: u64,
    pub blocks_changed: u64,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    pub seconds: f64,
}

/// Failures of a cycle.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error("reading the source disk at {offset:#x}: {source}")]
    Source { offset: u64, source: std::io::Error },
    #[error("this replica was written with certificate {found}; the .pfx given is {given}")]
    OtherCertificate { found: String, given: String },
    #[error("the nonce epoch is used up")]
    Nonces,
}

fn hex(id: &[u8; 20]) -> String {
    id.iter().map(|b| format!("{b:02X}")).collect()
}

/// Replicate `source` into `replica` as the next recovery point.
pub fn replicate_once(
    replica: &DiskReplica<'_>,
    source: &dyn BlockSource,
    identity: &Identity,
    keys: &DiskKeys,
    zstd_level: i32,
    nonces: &mut NonceSource,
    now_nanos: u64,
) -> Result<CycleReport, CycleError> {
    let started = Instant::now();
    let layout = replica.layout;
    let digest_key = keys.digest.expose();
    // A replica written with another certificate fails here: its manifests do not
    // authenticate under this key.
    let points = replica.points(digest_key)?;
    if let Some(last) = points.last() {
        if last.key_id != identity.key_id.0 {
            return Err(CycleError::OtherCertificate {
                found: hex(&last.key_id),
                given: identity.key_id.to_string(),
            });
        }
    }
    let sequence = points.len() as u64;
    let codec = BlockCodec::new(keys, zstd_level, true);
    let mut digests = Vec::with_capacity(layout.blocks() as usize);
    let (mut changed, mut read, mut stored) = (0u64, 0u64, 0u64);
    let mut batch_idx: Vec<u64> = Vec::new();
    let mut batch_data: Vec<Vec<u8>> = Vec::new();
    let mut flush =
        |idx: &mut Vec<u64>, data: &mut Vec<Vec<u8>>, stored: &mut u64| -> Result<(), CycleError> {
            if idx.is_empty() {
                return Ok(());
            }
            let slices: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
            let encoded = encode_batch(&codec, idx, sequence, &slices, nonces)
                .map_err(|_| CycleError::Nonces)?;
            for (b, e) in idx.iter().zip(&encoded) {
                replica.write_block(*b, e)?;
                if let crate::replica::block_record::Encoded::Record { bytes, .. } = e {
                    *stored += bytes.len() as u64;
                }
            }
            idx.clear();
            data.clear();
            Ok(())
        };
    let mut head = vec![0u8; HEADER_SIZE];
    let full_zero_digest = codec.digest(&vec![0u8; layout.block_size as usize]);
    let blocks = layout.blocks();
    let mut group_start = 0;
    while group_start < blocks {
        let group_end = (group_start + BATCH_BLOCKS as u64).min(blocks);
        // Read the group (unallocated extents are never read), hash it on all cores.
        let mut datas = Vec::with_capacity((group_end - group_start) as usize);
        for block in group_start..group_end {
            let offset = block * u64::from(layout.block_size);
            let len = layout.block_len(block);
            let mut data = vec![0u8; len as usize];
            if !source.is_unallocated(offset, len) {
                source
                    .read_at(offset, &mut data)
                    .map_err(|e| CycleError::Source { offset, source: e })?;
                read += len;
            }
            datas.push(data);
        }
        let group_digests: Vec<[u8; 32]> = datas.par_iter().map(|d| codec.digest(d)).collect();
        for ((block, data), digest) in (group_start..group_end).zip(datas).zip(group_digests) {
            digests.push(digest);
            // The digest stored in the slot tells whether the replica already holds this block.
            replica.read_slot_header(block, &mut head)?;
            let current = if head.iter().all(|&b| b == 0) {
                Some(if data.len() == layout.block_size as usize {
                    full_zero_digest
                } else {
                    codec.digest(&vec![0u8; data.len()])
                })
            } else {
                SlotHeader::decode(&head).ok().map(|h| h.digest)
            };
            if current != Some(digest) {
                changed += 1;
                batch_idx.push(block);
                batch_data.push(data);
            }
        }
        if batch_idx.len() >= BATCH_BLOCKS {
            flush(&mut batch_idx, &mut batch_data, &mut stored)?;
        }
        group_start = group_end;
    }
    flush(&mut batch_idx, &mut batch_data, &mut stored)?;
    let point = replica.commit_point(
        sequence,
        sequence,
        now_nanos,
        Consistency::Crash,
        identity.key_id.0,
        &digests,
        digest_key,
    )?;
    Ok(CycleReport {
        point,
        blocks: layout.blocks(),
        blocks_changed: changed,
        bytes_read: read,
        bytes_stored: stored,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A VHDX disk (or chain) as a source: unallocated and zero extents are never read.
impl BlockSource for vhdx::Disk {
    fn disk_size(&self) -> u64 {
        self.virtual_size()
    }
    fn is_unallocated(&self, offset: u64, len: u64) -> bool {
        self.map(offset, len)
            .is_ok_and(|segs| segs.iter().all(|s| s.kind != vhdx::ExtentKind::Data))
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        vhdx::Disk::read_at(self, offset, buf).map_err(std::io::Error::other)
    }
}

/// A raw image file as a source.
#[derive(Debug)]
pub struct RawSource(pub vhdx::MappedFile);

impl BlockSource for RawSource {
    fn disk_size(&self) -> u64 {
        vhdx::ReadAt::len(&self.0)
    }
    fn is_unallocated(&self, _: u64, _: u64) -> bool {
        false
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        vhdx::ReadAt::read_at(&self.0, offset, buf)
    }
}
