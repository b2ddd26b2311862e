//! The Merkle tree over a disk's block digests whose root every manifest records: leaves in
//! block order, pairs hashed with the disk's digest key, an odd node carried up unchanged, the
//! empty tree hashing to the key's hash of nothing. [`merkle_root`] computes a root in one go;
//! [`MerkleTree`] keeps every level so a cycle that changes *k* of *n* blocks updates the root
//! in O(*k* log *n*) hashes instead of *n*.

/// Hash of one inner node.
fn parent(digest_key: &[u8; 32], a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(digest_key);
    h.update(a);
    h.update(b);
    *h.finalize().as_bytes()
}

/// The level above `level`. A pair equal to the one before it has the same parent, which is
/// taken again rather than hashed: a disk's unwritten blocks share one digest, so most of a
/// sparse disk's tree is runs of equal pairs (the simulator's fresh 1 GiB disks: 16,383
/// hashes per tree before, a few dozen now).
fn level_above(digest_key: &[u8; 32], level: &[[u8; 32]]) -> Vec<[u8; 32]> {
    let mut last: Option<(&[[u8; 32]], [u8; 32])> = None;
    level
        .chunks(2)
        .map(|pair| match pair {
            [a, b] => match last {
                Some((before, above)) if before == pair => above,
                _ => {
                    let above = parent(digest_key, a, b);
                    last = Some((pair, above));
                    above
                }
            },
            [a] => *a,
            _ => unreachable!("chunks(2)"),
        })
        .collect()
}

/// Merkle root of `leaves` (block digests in block order).
pub fn merkle_root(digest_key: &[u8; 32], leaves: &[[u8; 32]]) -> [u8; 32] {
    if leaves.is_empty() {
        return *blake3::keyed_hash(digest_key, b"").as_bytes();
    }
    let mut level = level_above(digest_key, leaves);
    while level.len() > 1 {
        level = level_above(digest_key, &level);
    }
    level.first().copied().unwrap_or(leaves[0])
}

/// A whole tree: the leaves (the digest table) and every level above them.
#[derive(Clone)]
pub struct MerkleTree {
    digest_key: [u8; 32],
    /// `levels[0]` are the leaves; the last level has one node (when there are leaves).
    levels: Vec<Vec<[u8; 32]>>,
}

/// The digest key stays out of debug output.
impl std::fmt::Debug for MerkleTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MerkleTree")
            .field("leaves", &self.leaves().len())
            .field("root", &self.root())
            .finish_non_exhaustive()
    }
}

impl MerkleTree {
    pub fn new(digest_key: &[u8; 32], leaves: Vec<[u8; 32]>) -> MerkleTree {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let above = level_above(digest_key, levels.last().expect("non-empty"));
            levels.push(above);
        }
        MerkleTree {
            digest_key: *digest_key,
            levels,
        }
    }

    pub fn leaves(&self) -> &[[u8; 32]] {
        &self.levels[0]
    }

    pub fn root(&self) -> [u8; 32] {
        match self.levels.last().and_then(|l| l.first()) {
            Some(root) => *root,
            None => *blake3::keyed_hash(&self.digest_key, b"").as_bytes(),
        }
    }

    /// Set leaf `index` and rehash its path to the root. Panics when `index` is out of range.
    pub fn set(&mut self, index: usize, leaf: [u8; 32]) {
        if self.levels[0][index] == leaf {
            return;
        }
        self.levels[0][index] = leaf;
        let mut i = index;
        for depth in 1..self.levels.len() {
            let below = &self.levels[depth - 1];
            let left = i & !1;
            let node = match below.get(left + 1) {
                Some(right) => parent(&self.digest_key, &below[left], right),
                None => below[left],
            };
            i /= 2;
            self.levels[depth][i] = node;
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
        assert_eq!(
            merkle_root(&KEY, &[]),
            *blake3::keyed_hash(&KEY, b"").as_bytes()
        );
        assert_eq!(merkle_root(&KEY, &[leaf(1)]), leaf(1));
        let ab = parent(&KEY, &leaf(1), &leaf(2));
        assert_eq!(merkle_root(&KEY, &[leaf(1), leaf(2)]), ab);
        // The odd third leaf is carried up.
        assert_eq!(
            merkle_root(&KEY, &[leaf(1), leaf(2), leaf(3)]),
            parent(&KEY, &ab, &leaf(3))
        );
        assert_eq!(MerkleTree::new(&KEY, vec![]).root(), merkle_root(&KEY, &[]));
    }

    #[test]
    fn debug_output_leaves_the_key_out() {
        let key = [0xA7u8; 32];
        let shown = format!("{:?}", MerkleTree::new(&key, vec![leaf(1), leaf(2)]));
        assert!(shown.contains("leaves: 2"), "{shown}");
        assert!(!shown.contains("167, 167, 167"), "{shown}");
    }

    /// The root as the module doc defines it, every pair hashed.
    fn root_by_definition(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            0 => *blake3::keyed_hash(&KEY, b"").as_bytes(),
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
                tree.set(i, leaf(v));
                prop_assert_eq!(tree.root(), merkle_root(&KEY, &leaves));
            }
            prop_assert_eq!(tree.leaves(), &leaves[..]);
        }
    }
}
