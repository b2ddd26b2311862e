//! A disk's replica in a page-blob store: the **data blob** of fixed slots (slot *i* holds
//! block *i*: a 512-byte header and up to a block of payload, so rewriting a block always hits
//! the same pages) and the **journal blob** of 4 KiB manifest slots, one per recovery point.
//! A point commits in this order: slots written → data blob snapshotted → manifest written.
//! A crash before the manifest leaves earlier points intact; the cycle is simply redone.

use super::block_record::{BlockCodec, Encoded, RecordError};
use super::manifest::{merkle_root, Consistency, Manifest, ManifestError};
use super::slot_header::{SlotHeader, HEADER_SIZE};
use crate::pageblob::{
    BlobPath, Conditions, ErrorCode, PageBlobStore, StoreError, MAX_PUT_PAGES_BYTES, PAGE_SIZE,
};

/// Bytes per journal slot (a manifest is ~160 bytes).
pub const JOURNAL_SLOT: u64 = 4096;
/// Points a journal can hold before it must be rotated.
pub const JOURNAL_SLOTS: u64 = 8192;

/// What went wrong with a replica.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("point {point}, block {block}: {source}")]
    Block {
        point: String,
        block: u64,
        source: RecordError,
    },
    #[error("point {point}: {source}")]
    Manifest { point: u64, source: ManifestError },
    #[error("point {point}: Merkle root of the restored blocks does not match the manifest")]
    MerkleMismatch { point: String },
    #[error("journal is full ({JOURNAL_SLOTS} points)")]
    JournalFull,
}

/// Slot geometry of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub disk_size: u64,
    pub block_size: u32,
}

impl Layout {
    pub fn blocks(&self) -> u64 {
        self.disk_size.div_ceil(u64::from(self.block_size))
    }
    pub fn slot_size(&self) -> u64 {
        HEADER_SIZE as u64 + u64::from(self.block_size)
    }
    pub fn slot_offset(&self, block: u64) -> u64 {
        block * self.slot_size()
    }
    /// Bytes of block `block` inside the disk (the last block may be short).
    pub fn block_len(&self, block: u64) -> u64 {
        u64::from(self.block_size).min(self.disk_size - block * u64::from(self.block_size))
    }
}

/// The replica of one disk.
pub struct DiskReplica<'a> {
    store: &'a dyn PageBlobStore,
    pub data: BlobPath,
    pub journal: BlobPath,
    pub layout: Layout,
}

impl std::fmt::Debug for DiskReplica<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskReplica")
            .field("data", &self.data)
            .field("layout", &self.layout)
            .finish()
    }
}

fn none() -> Conditions {
    Conditions::default()
}

impl<'a> DiskReplica<'a> {
    /// Open (creating if needed) the replica blobs `NAME.replica` and `NAME.journal`.
    pub fn open(
        store: &'a dyn PageBlobStore,
        container: &str,
        name: &str,
        layout: Layout,
    ) -> Result<DiskReplica<'a>, ReplicaError> {
        match store.create_container(container) {
            Ok(()) => {}
            Err(e) if e.code() == Some(ErrorCode::ContainerAlreadyExists) => {}
            Err(e) => return Err(e.into()),
        }
        let r = DiskReplica {
            store,
            data: BlobPath::new(container, &format!("{name}.replica")),
            journal: BlobPath::new(container, &format!("{name}.journal")),
            layout,
        };
        let absent = |path: &BlobPath| matches!(store.properties(path, None), Err(e) if e.code() == Some(ErrorCode::BlobNotFound));
        if absent(&r.data) {
            store.create_page_blob(&r.data, layout.blocks() * layout.slot_size(), 0, &none())?;
        }
        if absent(&r.journal) {
            store.create_page_blob(&r.journal, JOURNAL_SLOTS * JOURNAL_SLOT, 0, &none())?;
        }
        Ok(r)
    }

    /// Write a block's record into its slot (only the pages it occupies), or clear the slot.
    pub fn write_block(&self, block: u64, encoded: &Encoded) -> Result<(), ReplicaError> {
        let at = self.layout.slot_offset(block);
        match encoded {
            Encoded::Zero { .. } => {
                self.store
                    .clear_pages(&self.data, at, self.layout.slot_size(), &none())?;
            }
            Encoded::Record { bytes, .. } => {
                let mut padded = bytes.clone();
                padded.resize(bytes.len().next_multiple_of(PAGE_SIZE as usize), 0);
                for (i, chunk) in padded.chunks(MAX_PUT_PAGES_BYTES as usize).enumerate() {
                    self.store.put_pages(
                        &self.data,
                        at + (i as u64) * MAX_PUT_PAGES_BYTES,
                        chunk,
                        &none(),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// The current slot header bytes of `block` (all zero for a cleared or never-written slot).
    pub fn read_slot_header(&self, block: u64, head: &mut [u8]) -> Result<(), ReplicaError> {
        self.store.read(
            &self.data,
            None,
            self.layout.slot_offset(block),
            &mut head[..HEADER_SIZE],
        )?;
        Ok(())
    }

    /// Read and decode block `block` from the blob or a point's snapshot. A cleared slot reads
    /// as a zero block.
    pub fn read_block(
        &self,
        codec: &BlockCodec,
        snapshot: Option<&str>,
        block: u64,
    ) -> Result<Vec<u8>, ReplicaError> {
        let at = self.layout.slot_offset(block);
        let point = snapshot.unwrap_or("(current)").to_string();
        let mut head = vec![0u8; HEADER_SIZE];
        self.store.read(&self.data, snapshot, at, &mut head)?;
        if head.iter().all(|&b| b == 0) {
            return Ok(vec![0; self.layout.block_len(block) as usize]);
        }
        let header = SlotHeader::decode(&head).map_err(|e| ReplicaError::Block {
            point: point.clone(),
            block,
            source: e.into(),
        })?;
        let stored = (u64::from(header.stored_len)).min(u64::from(self.layout.block_size));
        let mut record = head;
        record.resize(HEADER_SIZE + stored as usize, 0);
        self.store.read(
            &self.data,
            snapshot,
            at + HEADER_SIZE as u64,
            &mut record[HEADER_SIZE..],
        )?;
        codec
            .decode(&record, block)
            .map_err(|source| ReplicaError::Block {
                point,
                block,
                source,
            })
    }

    /// Commit a point: snapshot the data blob, then write its manifest into journal slot
    /// `sequence`. Returns the manifest.
    #[allow(clippy::too_many_arguments)]
    pub fn commit_point(
        &self,
        sequence: u64,
        generation: u64,
        time_nanos: u64,
        consistency: Consistency,
        key_id: [u8; 20],
        digests: &[[u8; 32]],
        digest_key: &[u8; 32],
    ) -> Result<Manifest, ReplicaError> {
        if sequence >= JOURNAL_SLOTS {
            return Err(ReplicaError::JournalFull);
        }
        let snapshot = self.store.snapshot(&self.data, &none())?;
        let manifest = Manifest {
            sequence,
            time_nanos,
            consistency,
            generation,
            disk_size: self.layout.disk_size,
            block_size: self.layout.block_size,
            key_id,
            merkle_root: merkle_root(digest_key, digests),
            snapshot,
        };
        // A journal slot: manifest length (u32) then the manifest.
        let encoded = manifest.encode(digest_key);
        let mut bytes = (encoded.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&encoded);
        bytes.resize(JOURNAL_SLOT as usize, 0);
        self.store
            .put_pages(&self.journal, sequence * JOURNAL_SLOT, &bytes, &none())?;
        Ok(manifest)
    }

    /// Every committed point, oldest first (journal slots up to the first empty one).
    pub fn points(&self, digest_key: &[u8; 32]) -> Result<Vec<Manifest>, ReplicaError> {
        let mut out = Vec::new();
        let mut slot = vec![0u8; JOURNAL_SLOT as usize];
        for seq in 0..JOURNAL_SLOTS {
            self.store
                .read(&self.journal, None, seq * JOURNAL_SLOT, &mut slot)?;
            if slot.iter().all(|&b| b == 0) {
                break;
            }
            let len = (u32::from_le_bytes(slot[..4].try_into().expect("4 bytes")) as usize)
                .min(slot.len() - 4);
            let manifest = Manifest::decode(&slot[4..4 + len], digest_key)
                .map_err(|source| ReplicaError::Manifest { point: seq, source })?;
            out.push(manifest);
        }
        Ok(out)
    }

    /// Restore a point block by block (`sink` gets each block in order), verifying every
    /// record and, at the end, the Merkle root.
    pub fn restore(
        &self,
        codec: &BlockCodec,
        manifest: &Manifest,
        digest_key: &[u8; 32],
        mut sink: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
    ) -> Result<(), ReplicaError> {
        let mut digests = Vec::with_capacity(self.layout.blocks() as usize);
        for block in 0..self.layout.blocks() {
            let data = self.read_block(codec, Some(&manifest.snapshot), block)?;
            digests.push(codec.digest(&data));
            sink(block, &data).map_err(|e| StoreError::Io {
                path: "restore output".into(),
                source: e,
            })?;
        }
        if merkle_root(digest_key, &digests) != manifest.merkle_root {
            return Err(ReplicaError::MerkleMismatch {
                point: manifest.snapshot.clone(),
            });
        }
        Ok(())
    }
}
