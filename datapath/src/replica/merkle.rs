//! The Merkle tree over a disk's block digests whose root every manifest records: leaves in
//! block order, pairs hashed with the disk's digest key, an odd node carried up unchanged, the
//! empty tree hashing to the key's hash of nothing. [`merkle_root`] computes a root in one go;
//! [`MerkleTree`] keeps the tree between cycles so a cycle that changes *k* of *n* blocks
//! updates the root with at most *k* log *n* hashes instead of *n*.
//!
//! [`MerkleTree`] holds what a disk's data makes it hold, not what its size does: a disk's
//! zero blocks share one digest, so the nodes over runs of them are equal level by level.
//! Each level is kept in pages of [`PAGE`] nodes, and a page that is not held reads as that
//! level's zero node; the page of each level's last node is always held (the last block may be
//! short, and an odd last node is carried up rather than hashed). A 64 TiB disk with a few
//! blocks written holds a few pages per level, where a tree of every node held 64 GiB.

use std::collections::BTreeMap;

/// Hash of one inner node.
fn parent(digest_key: &[u8; 32], a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(digest_key);
    h.update(a);
    h.update(b);
    *h.finalize().as_bytes()
}

/// The root of the empty tree.
fn empty_root(digest_key: &[u8; 32]) -> [u8; 32] {
    *blake3::keyed_hash(digest_key, b"").as_bytes()
}

/// The level above `level`. A pair equal to the one before it has the same parent, which is
/// taken again rather than hashed.
fn level_above(digest_key: &[u8; 32], level: &[[u8; 32]]) -> Vec<[u8; 32]> {
    let mut pairs = PairCache::default();
    level
        .chunks(2)
        .map(|pair| match pair {
            [a, b] => pairs.parent(digest_key, a, b),
            [a] => *a,
            _ => unreachable!("chunks(2)"),
        })
        .collect()
}

/// The last pair hashed and its parent: runs of equal pairs (a disk's unwritten blocks) are
/// hashed once.
#[derive(Default)]
struct PairCache {
    last: Option<([u8; 32], [u8; 32], [u8; 32])>,
}

impl PairCache {
    fn parent(&mut self, digest_key: &[u8; 32], a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
        match self.last {
            Some((la, lb, above)) if la == *a && lb == *b => above,
            _ => {
                let above = parent(digest_key, a, b);
                self.last = Some((*a, *b, above));
                above
            }
        }
    }
}

/// Merkle root of `leaves` (block digests in block order).
pub fn merkle_root(digest_key: &[u8; 32], leaves: &[[u8; 32]]) -> [u8; 32] {
    if leaves.is_empty() {
        return empty_root(digest_key);
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = level_above(digest_key, &level);
    }
    level[0]
}

/// Nodes per page of a level (2 KiB).
pub const PAGE: u64 = 64;

type Page = Box<[[u8; 32]; PAGE as usize]>;

/// One level of a [`MerkleTree`]: `len` nodes, of which those in pages not held are `zero`.
#[derive(Clone)]
struct Level {
    len: u64,
    zero: [u8; 32],
    pages: BTreeMap<u64, Page>,
}

impl Level {
    fn get(&self, i: u64) -> [u8; 32] {
        self.pages
            .get(&(i / PAGE))
            .map_or(self.zero, |page| page[(i % PAGE) as usize])
    }

    /// Node `i`, its page taken into the level (filled with the zero node: what it read as).
    fn slot(&mut self, i: u64) -> &mut [u8; 32] {
        let zero = self.zero;
        let page = self
            .pages
            .entry(i / PAGE)
            .or_insert_with(|| Box::new([zero; PAGE as usize]));
        &mut page[(i % PAGE) as usize]
    }
}

/// A whole tree, every node readable, only the pages that differ from a run of zero blocks
/// held (see the module docs).
#[derive(Clone)]
pub struct MerkleTree {
    digest_key: [u8; 32],
    /// `levels[0]` are the leaves; the last level has one node (when there are leaves).
    levels: Vec<Level>,
    /// Leaves set since the levels above were last brought up to date, in the order set.
    stale: Vec<u64>,
}

/// The digest key stays out of debug output.
impl std::fmt::Debug for MerkleTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MerkleTree")
            .field("leaves", &self.len())
            .field("pages_held", &self.pages_held())
            .finish_non_exhaustive()
    }
}

impl MerkleTree {
    /// A tree of `len` leaves: leaf *i* is `leaves` gives it, else `zero` (the last leaf:
    /// `last_zero`, the digest of a short zero block). `leaves` pairs (index, digest) in any
    /// order; an index past `len` panics.
    pub fn sparse(
        digest_key: &[u8; 32],
        len: u64,
        zero: [u8; 32],
        last_zero: [u8; 32],
        leaves: impl IntoIterator<Item = (u64, [u8; 32])>,
    ) -> MerkleTree {
        let mut levels = Vec::new();
        let mut level = Level {
            len,
            zero,
            pages: BTreeMap::new(),
        };
        // The last node of each level, from a tree of zero leaves: held in its page.
        let mut last = last_zero;
        loop {
            if level.len == 0 {
                levels.push(level);
                break;
            }
            let n = level.len;
            *level.slot(n - 1) = last;
            if n == 1 {
                levels.push(level);
                break;
            }
            let above_zero = parent(digest_key, &level.zero, &level.zero);
            last = if n % 2 == 1 {
                last
            } else {
                parent(digest_key, &level.zero, &last)
            };
            let above = Level {
                len: n.div_ceil(2),
                zero: above_zero,
                pages: BTreeMap::new(),
            };
            levels.push(std::mem::replace(&mut level, above));
        }
        let mut tree = MerkleTree {
            digest_key: *digest_key,
            levels,
            stale: Vec::new(),
        };
        for (i, leaf) in leaves {
            tree.set(i, leaf);
        }
        tree
    }

    /// The tree of `leaves`, every one held (tests, small tables).
    pub fn new(digest_key: &[u8; 32], leaves: Vec<[u8; 32]>) -> MerkleTree {
        let len = leaves.len() as u64;
        let last = leaves.last().copied().unwrap_or([0; 32]);
        let zero = leaves.first().copied().unwrap_or([0; 32]);
        MerkleTree::sparse(digest_key, len, zero, last, (0..len).zip(leaves))
    }

    /// Number of leaves.
    pub fn len(&self) -> u64 {
        self.levels[0].len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Leaf `index`. Panics when it is out of range.
    pub fn get(&self, index: u64) -> [u8; 32] {
        assert!(index < self.len(), "leaf {index} of {}", self.len());
        self.levels[0].get(index)
    }

    /// The leaves in the pages held, ascending: every leaf that differs from the zero leaves
    /// is among them.
    pub fn held_leaves(&self) -> impl Iterator<Item = (u64, [u8; 32])> + '_ {
        let len = self.len();
        self.levels[0].pages.iter().flat_map(move |(&p, page)| {
            (p * PAGE..((p + 1) * PAGE).min(len)).map(move |i| (i, page[(i - p * PAGE) as usize]))
        })
    }

    /// Pages held over all levels (each [`PAGE`] nodes): what the tree costs in memory.
    pub fn pages_held(&self) -> usize {
        self.levels.iter().map(|l| l.pages.len()).sum()
    }

    /// Set leaf `index`; the levels above follow when the root is asked for. Panics when
    /// `index` is out of range.
    pub fn set(&mut self, index: u64, leaf: [u8; 32]) {
        assert!(index < self.len(), "leaf {index} of {}", self.len());
        if self.levels[0].get(index) == leaf {
            return;
        }
        *self.levels[0].slot(index) = leaf;
        self.stale.push(index);
    }

    /// The root, after rehashing the nodes above the leaves set since the last time: each
    /// such node once, level by level.
    pub fn root(&mut self) -> [u8; 32] {
        self.refresh();
        match self.levels.last() {
            Some(top) if top.len > 0 => top.get(0),
            _ => empty_root(&self.digest_key),
        }
    }

    fn refresh(&mut self) {
        if self.stale.is_empty() {
            return;
        }
        let mut nodes = std::mem::take(&mut self.stale);
        nodes.sort_unstable();
        nodes.dedup();
        for depth in 1..self.levels.len() {
            nodes.iter_mut().for_each(|i| *i /= 2);
            nodes.dedup();
            let (below, above) = self.levels.split_at_mut(depth);
            let (below, above) = (&below[depth - 1], &mut above[0]);
            let mut pairs = PairCache::default();
            for &i in &nodes {
                let left = below.get(2 * i);
                let node = if 2 * i + 1 < below.len {
                    pairs.parent(&self.digest_key, &left, &below.get(2 * i + 1))
                } else {
                    left
                };
                *above.slot(i) = node;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 32] = [5; 32];

    fn leaf(n: u8) -> [u8; 32] {
        [n; 32]
    }

    #[test]
    fn small_trees_match_their_definition() {
        assert_eq!(merkle_root(&KEY, &[]), empty_root(&KEY));
        assert_eq!(merkle_root(&KEY, &[leaf(1)]), leaf(1));
        let ab = parent(&KEY, &leaf(1), &leaf(2));
        assert_eq!(merkle_root(&KEY, &[leaf(1), leaf(2)]), ab);
        // The odd third leaf is carried up.
        assert_eq!(
            merkle_root(&KEY, &[leaf(1), leaf(2), leaf(3)]),
            parent(&KEY, &ab, &leaf(3))
        );
        assert_eq!(MerkleTree::new(&KEY, vec![]).root(), merkle_root(&KEY, &[]));
        assert_eq!(MerkleTree::new(&KEY, vec![leaf(4)]).root(), leaf(4));
    }

    #[test]
    fn debug_output_leaves_the_key_out() {
        let key = [0xA7u8; 32];
        let shown = format!("{:?}", MerkleTree::new(&key, vec![leaf(1), leaf(2)]));
        assert!(shown.contains("leaves: 2"), "{shown}");
        assert!(!shown.contains("167, 167, 167"), "{shown}");
    }

    /// A disk the format's largest (64 TiB in 64 KiB blocks: 2^30 leaves) with a few blocks
    /// written holds a few pages per level, and its root is the one a tree of every leaf
    /// would have (checked on a smaller disk below, where that tree fits).
    #[test]
    fn a_huge_sparse_disk_holds_pages_for_its_data_only() {
        let len = 1u64 << 30;
        let mut tree = MerkleTree::sparse(&KEY, len, leaf(0), leaf(9), [(5, leaf(1))]);
        tree.set(len / 2, leaf(2));
        tree.set(len - 2, leaf(3));
        let root = tree.root();
        assert!(tree.pages_held() < 4 * 31, "{} pages", tree.pages_held());
        assert_eq!(tree.get(5), leaf(1));
        assert_eq!(tree.get(6), leaf(0));
        assert_eq!(tree.get(len - 1), leaf(9));
        let held: Vec<u64> = tree
            .held_leaves()
            .filter(|&(i, d)| d != leaf(0) && i + 1 != len)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(held, [5, len / 2, len - 2]);
        tree.set(len / 2, leaf(0));
        assert_ne!(tree.root(), root);
    }

    /// The root as the module doc defines it, every pair hashed.
    fn root_by_definition(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            0 => empty_root(&KEY),
            1 => leaves[0],
            _ => {
                let above: Vec<[u8; 32]> = leaves
                    .chunks(2)
                    .map(|p| match p {
                        [a, b] => parent(&KEY, a, b),
                        [a] => *a,
                        _ => unreachable!(),
                    })
                    .collect();
                root_by_definition(&above)
            }
        }
    }

    proptest! {
        /// Leaves from a few values, so equal pairs (whose parent is reused) come in runs, next
        /// to unequal ones and odd ends.
        #[test]
        fn roots_of_repetitive_leaves_are_the_definitions(
            values in proptest::collection::vec(0u8..3, 0..300),
        ) {
            let leaves: Vec<[u8; 32]> = values.iter().map(|&v| leaf(v)).collect();
            prop_assert_eq!(merkle_root(&KEY, &leaves), root_by_definition(&leaves));
            prop_assert_eq!(MerkleTree::new(&KEY, leaves.clone()).root(), root_by_definition(&leaves));
        }

        /// A sparse tree (zero leaves, a different last one, a few set) over several pages
        /// per level has the root of the same leaves all held, after each batch of changes.
        #[test]
        fn sparse_trees_have_the_roots_of_their_leaves(
            len in 1u64..3000,
            short_last in any::<bool>(),
            batches in proptest::collection::vec(
                proptest::collection::vec((0u64..3000, 0u8..4), 0..20), 1..4),
        ) {
            let last_zero = if short_last { leaf(7) } else { leaf(0) };
            let mut leaves = vec![leaf(0); len as usize];
            leaves[len as usize - 1] = last_zero;
            let mut tree = MerkleTree::sparse(&KEY, len, leaf(0), last_zero, []);
            prop_assert_eq!(tree.root(), root_by_definition(&leaves));
            for batch in batches {
                for (i, v) in batch {
                    let i = i % len;
                    leaves[i as usize] = leaf(v);
                    tree.set(i, leaf(v));
                }
                prop_assert_eq!(tree.root(), root_by_definition(&leaves));
            }
            for (i, d) in tree.held_leaves() {
                prop_assert_eq!(d, leaves[i as usize]);
            }
            for (i, d) in leaves.iter().enumerate() {
                prop_assert_eq!(tree.get(i as u64), *d);
            }
        }

        #[test]
        fn updates_give_the_root_of_the_updated_leaves(
            n in 1usize..300,
            changes in proptest::collection::vec((0usize..300, any::<u8>()), 0..40),
        ) {
            let mut leaves: Vec<[u8; 32]> = (0..n).map(|i| leaf(i as u8)).collect();
            let mut tree = MerkleTree::new(&KEY, leaves.clone());
            prop_assert_eq!(tree.root(), merkle_root(&KEY, &leaves));
            for (i, v) in changes {
                let i = i % n;
                leaves[i] = leaf(v);
                tree.set(i as u64, leaf(v));
                prop_assert_eq!(tree.root(), merkle_root(&KEY, &leaves));
            }
        }
    }
}
