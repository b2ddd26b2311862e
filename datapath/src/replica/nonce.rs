//! AES-GCM nonces that never repeat under one key, across crashes and restarts: 96 bits =
//! a 64-bit epoch ‖ a 32-bit counter that never wraps. Every agent start (and every used-up
//! epoch) claims the replica's next epoch, which is stored before its first nonce is used
//! (`DiskReplica::claim_epoch`, `epoch_record`), so the epochs of a replica strictly increase.

use rand_core::RngCore;

/// Hands out nonces within one epoch.
#[derive(Debug, Clone)]
pub struct NonceSource {
    epoch: u64,
    next: u32,
    exhausted: bool,
}

impl NonceSource {
    /// An unclaimed random epoch from `rng`, for one-off runs over a throwaway replica (tests,
    /// benches); the agent claims epochs from the replica instead.
    pub fn new_epoch(rng: &mut impl RngCore) -> NonceSource {
        NonceSource {
            epoch: rng.next_u64(),
            next: 0,
            exhausted: false,
        }
    }

    /// Nonces of a claimed epoch (`DiskReplica::claim_epoch`).
    pub fn for_epoch(epoch: u64) -> NonceSource {
        NonceSource {
            epoch,
            next: 0,
            exhausted: false,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Pass over `n` nonces, as `n` calls of [`next_nonce`](Self::next_nonce) would; `None`
    /// (and this epoch used up) when fewer than `n` are left.
    pub fn skip(&mut self, n: u64) -> Option<()> {
        if n == 0 {
            return Some(());
        }
        if self.exhausted {
            return None;
        }
        let end = u64::from(self.next) + n;
        match end.cmp(&(1u64 << 32)) {
            std::cmp::Ordering::Less => {
                self.next = end as u32;
                Some(())
            }
            std::cmp::Ordering::Equal => {
                self.exhausted = true;
                Some(())
            }
            std::cmp::Ordering::Greater => {
                self.exhausted = true;
                None
            }
        }
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

    #[test]
    fn skipping_passes_over_the_nonces_that_many_calls_would_take() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut called = NonceSource::new_epoch(&mut rng);
        let mut skipped = called.clone();
        for _ in 0..5 {
            called.next_nonce().unwrap();
        }
        skipped.skip(5).unwrap();
        skipped.skip(0).unwrap();
        assert_eq!(skipped.next_nonce(), called.next_nonce());
        let near_end = |next| NonceSource {
            epoch: 9,
            next,
            exhausted: false,
        };
        // The last nonce of the epoch can be skipped over; one past it cannot.
        let mut s = near_end(u32::MAX - 1);
        assert!(s.skip(2).is_some());
        assert!(s.next_nonce().is_none());
        let mut s = near_end(u32::MAX - 1);
        assert!(s.skip(3).is_none());
        assert!(s.next_nonce().is_none());
        let mut s = near_end(u32::MAX - 1);
        assert!(s.skip(1).is_some());
        assert_eq!(s.next_nonce().unwrap()[8..], u32::MAX.to_le_bytes());
    }
}
