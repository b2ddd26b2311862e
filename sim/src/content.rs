//! What a disk held, block by block, without keeping its bytes: the checker's model of every VM
//! disk and of every recovery point. A model is each replication block's digest — keyed BLAKE3
//! under the disk's digest key, the digest the data path's records carry, but computed here
//! from the disk's own bytes — kept copy-on-write in chunks, so remembering the disk as it was at
//! each point costs the chunks that changed since the previous point, not the disk. A record
//! that decodes (its bytes hash to its header's digest, which AES-GCM authenticates) is proven
//! against the model by comparing digests, without hashing its bytes a second time. Its root (a
//! hash over the chunk hashes) stands for the whole content: two models with equal roots hold
//! the same bytes.

use std::sync::{Arc, OnceLock};

/// Block hashes per copy-on-write chunk.
const CHUNK_BLOCKS: usize = 64;

type BlockHash = [u8; 32];

#[derive(Debug, Clone)]
struct Chunk {
    hashes: Vec<BlockHash>,
    /// Hash of `hashes`, computed when first asked for (cleared by a change).
    digest: OnceLock<BlockHash>,
}

impl Chunk {
    fn digest(&self) -> BlockHash {
        // One call over the contiguous hashes: fed 32 bytes at a time, BLAKE3 compresses
        // one block after another instead of several chunks at once.
        *self
            .digest
            .get_or_init(|| *blake3::hash(self.hashes.as_flattened()).as_bytes())
    }
}

/// The content of a disk of `disk_size` bytes as per-block digests.
#[derive(Debug, Clone)]
pub struct ContentModel {
    disk_size: u64,
    block_size: u64,
    /// The disk's digest key: block digests are keyed BLAKE3 under it.
    key: [u8; 32],
    chunks: Vec<Arc<Chunk>>,
    /// Hashes of an all-zero block and of an all-zero last block (which may be short).
    zero: [BlockHash; 2],
}

/// What hashing the blocks of a model's geometry needs: the hashes of its all-zero blocks (the
/// last may be short) and the geometry. It can go to another thread while the model stays.
#[derive(Debug, Clone, Copy)]
pub struct BlockHasher {
    zero: [BlockHash; 2],
    disk_size: u64,
    block_size: u64,
    key: [u8; 32],
}

impl BlockHasher {
    /// Bytes in block `block` (the last may be short).
    pub fn block_len(&self, block: u64) -> usize {
        (self.disk_size - block * self.block_size).min(self.block_size) as usize
    }

    /// The hash block `block` has when it is all zero.
    pub fn zero_hash(&self, block: u64) -> BlockHash {
        self.zero[usize::from((block + 1) * self.block_size >= self.disk_size)]
    }

    /// The hash of block `block` holding `data`: an all-zero block gets the zero hash without
    /// being hashed.
    pub fn hash(&self, block: u64, data: &[u8]) -> BlockHash {
        if pageblob::is_zero(data) {
            self.zero_hash(block)
        } else {
            block_digest(&self.key, data)
        }
    }

    /// Read each of `blocks` from `disk` as it is now and hash it, one block in memory at a
    /// time: each block and its hash, for [`ContentModel::set_hashes`].
    pub fn read_and_hash(
        &self,
        disk: &vhdx::Disk,
        blocks: impl IntoIterator<Item = u64>,
    ) -> vhdx::Result<Vec<(u64, BlockHash)>> {
        let mut buf = vec![0u8; self.block_size as usize];
        blocks
            .into_iter()
            .map(|block| {
                let len = self.block_len(block);
                disk.read_at(block * self.block_size, &mut buf[..len])?;
                Ok((block, self.hash(block, &buf[..len])))
            })
            .collect()
    }
}

/// A block's digest under the disk's digest key `key` (as the data path's
/// `BlockCodec::digest`; all-zero blocks hash like any other).
fn block_digest(key: &[u8; 32], data: &[u8]) -> BlockHash {
    *blake3::keyed_hash(key, data).as_bytes()
}

impl ContentModel {
    /// An all-zero disk whose blocks' digests are keyed with `key` (the disk's digest key).
    pub fn zeroed(disk_size: u64, block_size: u32, key: [u8; 32]) -> ContentModel {
        let block_size = u64::from(block_size);
        let blocks = disk_size.div_ceil(block_size) as usize;
        let full = block_digest(&key, &vec![0u8; block_size as usize]);
        let tail = disk_size % block_size;
        let mut hashes = vec![full; blocks];
        if tail != 0 {
            hashes[blocks - 1] = block_digest(&key, &vec![0u8; tail as usize]);
        }
        let zero = [full, hashes.last().copied().unwrap_or(full)];
        let chunks = hashes
            .chunks(CHUNK_BLOCKS)
            .map(|c| {
                Arc::new(Chunk {
                    hashes: c.to_vec(),
                    digest: OnceLock::new(),
                })
            })
            .collect();
        ContentModel {
            disk_size,
            block_size,
            key,
            chunks,
            zero,
        }
    }

    pub fn blocks(&self) -> u64 {
        self.disk_size.div_ceil(self.block_size)
    }

    /// Bytes in block `block` (the last may be short).
    #[cfg(test)]
    pub fn block_len(&self, block: u64) -> usize {
        self.hasher().block_len(block)
    }

    pub fn get(&self, block: u64) -> BlockHash {
        let b = block as usize;
        self.chunks[b / CHUNK_BLOCKS].hashes[b % CHUNK_BLOCKS]
    }

    /// The same geometry, all zero.
    pub fn zeroed_like(&self) -> ContentModel {
        ContentModel::zeroed(self.disk_size, self.block_size as u32, self.key)
    }

    /// Block `block` now holds `data`.
    #[cfg(test)]
    pub fn set(&mut self, block: u64, data: &[u8]) {
        debug_assert_eq!(data.len(), self.block_len(block));
        self.set_hash(block, self.hasher().hash(block, data));
    }

    /// What hashing blocks of this geometry needs ([`BlockHasher`]).
    pub fn hasher(&self) -> BlockHasher {
        BlockHasher {
            zero: self.zero,
            disk_size: self.disk_size,
            block_size: self.block_size,
            key: self.key,
        }
    }

    /// The hash block `block` has when it is all zero.
    pub fn zero_hash(&self, block: u64) -> BlockHash {
        self.hasher().zero_hash(block)
    }

    /// Block `block` now holds bytes hashing to `hash`.
    pub fn set_hash(&mut self, block: u64, hash: BlockHash) {
        let b = block as usize;
        if self.get(block) == hash {
            return;
        }
        let chunk = Arc::make_mut(&mut self.chunks[b / CHUNK_BLOCKS]);
        chunk.hashes[b % CHUNK_BLOCKS] = hash;
        chunk.digest = OnceLock::new();
    }

    /// Blocks `first..=last` covering the byte range `offset..offset+len`.
    pub fn blocks_of(&self, offset: u64, len: u64) -> std::ops::RangeInclusive<u64> {
        let last = (offset + len.max(1) - 1).min(self.disk_size.saturating_sub(1));
        offset / self.block_size..=last / self.block_size
    }

    /// Read blocks `blocks` from `disk` into the model.
    pub fn refresh(
        &mut self,
        disk: &vhdx::Disk,
        blocks: impl IntoIterator<Item = u64>,
    ) -> vhdx::Result<()> {
        let hashes = self.hasher().read_and_hash(disk, blocks)?;
        self.set_hashes(hashes);
        Ok(())
    }

    /// Set each block's hash (from [`BlockHasher::read_and_hash`]).
    pub fn set_hashes(&mut self, hashes: Vec<(u64, BlockHash)>) {
        for (block, hash) in hashes {
            self.set_hash(block, hash);
        }
    }

    /// The model of everything `disk` holds, digests keyed with `key`.
    pub fn of_disk(
        disk: &vhdx::Disk,
        block_size: u32,
        key: [u8; 32],
    ) -> vhdx::Result<ContentModel> {
        let mut model = ContentModel::zeroed(disk.virtual_size(), block_size, key);
        let blocks = model.blocks();
        model.refresh(disk, 0..blocks)?;
        Ok(model)
    }

    /// A hash of the whole content.
    pub fn root(&self) -> BlockHash {
        let mut bytes = Vec::with_capacity(16 + 32 * self.chunks.len());
        bytes.extend_from_slice(&self.disk_size.to_le_bytes());
        bytes.extend_from_slice(&self.block_size.to_le_bytes());
        for c in &self.chunks {
            bytes.extend_from_slice(&c.digest());
        }
        // One call, as for a chunk's digest.
        *blake3::hash(&bytes).as_bytes()
    }

    /// Blocks whose content differs between `self` and `other` (same geometry), in order;
    /// chunks shared by both are skipped without looking inside.
    pub fn differing_blocks(&self, other: &ContentModel) -> Vec<u64> {
        let mut out = Vec::new();
        for (i, (a, b)) in self.chunks.iter().zip(&other.chunks).enumerate() {
            if Arc::ptr_eq(a, b) {
                continue;
            }
            for (j, (x, y)) in a.hashes.iter().zip(&b.hashes).enumerate() {
                if x != y {
                    out.push((i * CHUNK_BLOCKS + j) as u64);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_models_digests_are_the_data_paths() {
        use datapath::keys::{Identity, KeyId};
        use datapath::replica::block_record::BlockCodec;
        let identity = Identity::from_key_material(KeyId([3; 20]), "CN=t".into(), &[9; 64]);
        let keys = identity.disk_keys("vm1-os");
        let codec = BlockCodec::new(&keys, 1, true);
        // Three 4 KiB blocks and a short last one.
        let mut model = ContentModel::zeroed(3 * 4096 + 512, 4096, *keys.digest.expose());
        let hasher = model.hasher();
        let data = [5u8; 4096];
        assert_eq!(hasher.hash(1, &data), codec.digest(&data));
        assert_eq!(hasher.zero_hash(0), codec.digest(&[0; 4096]));
        assert_eq!(hasher.zero_hash(3), codec.digest(&[0; 512]));
        assert_eq!(hasher.hash(2, &[0; 4096]), codec.digest(&[0; 4096]));
        // Another disk's key gives other digests: a record is never proven against a model
        // of another disk.
        let other = ContentModel::zeroed(3 * 4096 + 512, 4096, [0; 32]);
        assert_ne!(other.hasher().hash(1, &data), hasher.hash(1, &data));
        model.set_hash(1, codec.digest(&data));
        assert_eq!(model.get(1), hasher.hash(1, &data));
    }

    #[test]
    fn roots_follow_content_and_snapshots_share_chunks() {
        let mut a = ContentModel::zeroed(1000 * 4096 + 100, 4096, [7; 32]);
        assert_eq!(a.blocks(), 1001);
        assert_eq!(a.block_len(1000), 100);
        let zero_root = a.root();
        let before = a.clone();
        a.set(700, &[1u8; 4096]);
        assert_ne!(a.root(), zero_root);
        assert_eq!(before.root(), zero_root, "a kept version does not change");
        assert_eq!(a.differing_blocks(&before), vec![700]);
        // Only the changed chunk was copied.
        let shared = a
            .chunks
            .iter()
            .zip(&before.chunks)
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert_eq!(shared, a.chunks.len() - 1);
        a.set(700, &[0u8; 4096]);
        assert_eq!(
            a.root(),
            zero_root,
            "writing the old bytes back restores the root"
        );
        assert_eq!(a.blocks_of(4095, 2), 0..=1);
        assert_eq!(a.blocks_of(1000 * 4096, 1 << 20), 1000..=1000);
    }
}
