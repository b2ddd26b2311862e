//! AES-GCM nonces that never repeat under one key, across crashes and restarts: 96 bits =
//! a 64-bit epoch ‖ a 32-bit counter. Every agent start (and every counter wrap) takes a fresh
//! epoch drawn from the injected RNG and records it before its first write, so two runs of the
//! agent never share an epoch unless the 64-bit draw collides.

use rand_core::RngCore;

/// Hands out nonces within one epoch.
#[derive(Debug, Clone)]
pub struct NonceSource {
    epoch: u64,
    next: u32,
    exhausted: bool,
}

impl NonceSource {
    /// A new epoch from `rng` (the OS RNG in production, a seeded one in the simulator).
    pub fn new_epoch(rng: &mut impl RngCore) -> NonceSource {
        NonceSource {
            epoch: rng.next_u64(),
            next: 0,
            exhausted: false,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The next nonce, or `None` once the 2^32 nonces of this epoch are used (start a new epoch).
    pub fn next_nonce(&mut self) -> Option<[u8; 12]> {
        if self.exhausted {
            return None;
        }
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&self.epoch.to_le_bytes());
        n[8..].copy_from_slice(&self.next.to_le_bytes());
        match self.next.checked_add(1) {
            Some(v) => self.next = v,
            None => self.exhausted = true,
        }
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    #[test]
    fn nonces_are_unique_within_and_across_epochs() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let mut source = NonceSource::new_epoch(&mut rng);
            for _ in 0..1000 {
                assert!(seen.insert(source.next_nonce().unwrap()), "nonce repeated");
            }
        }
    }

    #[test]
    fn an_epoch_ends_instead_of_wrapping() {
        let mut s = NonceSource {
            epoch: 9,
            next: u32::MAX,
            exhausted: false,
        };
        assert!(s.next_nonce().is_some());
        assert!(s.next_nonce().is_none());
    }
}
