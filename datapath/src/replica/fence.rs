//! The fence of one writer per replica (docs/replica-format.md, "One writer per replica"): the
//! sequence number a writer of a nonce epoch puts on the replica's blobs, and how it puts it
//! there so that of writers taking over at once the later epoch holds every blob.

use pageblob::{BlobPath, Conditions, PageBlobStore, SequenceNumberAction};

use super::error::ReplicaError;

/// Fences are epochs modulo 2^53.
const FENCE_BITS: u32 = 53;

/// The sequence number that fences a writer of nonce epoch `epoch`: its low 53 bits, so it
/// survives a store that keeps sequence numbers as doubles (Azurite; Azure allows up to
/// 2^63 − 1); consecutive epochs get different fences.
pub(crate) fn fence_of(epoch: u64) -> u64 {
    epoch & ((1 << FENCE_BITS) - 1)
}

/// Whether fence `a` belongs to a later epoch than fence `b`, in the order fences wrap in
/// (epochs claimed one after another are far closer than 2^52).
fn later(a: u64, b: u64) -> bool {
    let ahead = a.wrapping_sub(b) & ((1 << FENCE_BITS) - 1);
    ahead != 0 && ahead < 1 << (FENCE_BITS - 1)
}

/// Put `fence` on `path`. Raised with `max`, never set down: two writers taking a replica
/// over at once write their fences blob after blob, and with a plain update each could be
/// left holding some blobs while the other holds the rest (both then refused, neither
/// committing: seen in CI with two `replicate` runs at once). With `max` the later epoch
/// holds every blob. A larger number there that is behind `fence` in the wrapping order (an
/// epoch's fence past 2^53 − 1 starts again at 0) is replaced.
pub(crate) fn raise_fence(
    store: &dyn PageBlobStore,
    path: &BlobPath,
    fence: u64,
) -> Result<(), ReplicaError> {
    let none = Conditions::default();
    let held = store
        .set_sequence_number(path, SequenceNumberAction::Max(fence), &none)?
        .sequence_number;
    if held != fence && later(fence, held) {
        store.set_sequence_number(path, SequenceNumberAction::Update(fence), &none)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{fence_of, later};

    #[test]
    fn fences_survive_a_store_that_keeps_sequence_numbers_as_doubles() {
        // Azurite parses sequence numbers into JavaScript numbers: a fence above 2^53 came
        // back rounded and every fenced write of the one writer was refused.
        for epoch in [
            0,
            1,
            (1 << 53) - 1,
            1 << 53,
            (1 << 62) + 12_345,
            u64::MAX >> 1,
            u64::MAX,
        ] {
            let fence = fence_of(epoch);
            assert_eq!(fence as f64 as u64, fence, "epoch {epoch}");
            assert_ne!(
                fence_of(epoch.wrapping_add(1)),
                fence,
                "epoch {epoch} and the next"
            );
            // The next epoch is later, also where its fence wraps to 0.
            assert!(
                later(fence_of(epoch.wrapping_add(1)), fence),
                "epoch {epoch}"
            );
            assert!(
                !later(fence, fence_of(epoch.wrapping_add(1))),
                "epoch {epoch}"
            );
            assert!(!later(fence, fence), "epoch {epoch}");
        }
    }
}
