//! Encoding a batch of blocks on all cores with output that never depends on scheduling:
//! nonces are handed out in block order before any work starts, rayon encodes, and results are
//! collected in block order. Callers bound memory by the batch size they pass.

use rayon::prelude::*;

use super::block_record::{BlockCodec, Encoded};
use super::nonce::NonceSource;

/// Why a batch could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the nonce epoch is used up: start a new epoch before encoding more blocks")]
pub struct EpochExhausted;

/// Encode `blocks[i]` as block `indices[i]` of cycle `generation`.
pub fn encode_batch(
    codec: &BlockCodec,
    indices: &[u64],
    generation: u64,
    blocks: &[&[u8]],
    nonces: &mut NonceSource,
) -> Result<Vec<Encoded>, EpochExhausted> {
    assert_eq!(indices.len(), blocks.len());
    let assigned: Vec<[u8; 12]> = (0..blocks.len())
        .map(|_| nonces.next_nonce().ok_or(EpochExhausted))
        .collect::<Result<_, _>>()?;
    Ok(blocks
        .par_iter()
        .zip(assigned.par_iter())
        .zip(indices.par_iter())
        .map(|((block, nonce), index)| codec.encode(*index, generation, block, *nonce))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{DiskKeys, Secret32};
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    #[test]
    fn parallel_output_is_identical_to_sequential_whatever_the_pool_size() {
        let keys = DiskKeys {
            data: Secret32::from_bytes([1; 32]),
            digest: Secret32::from_bytes([2; 32]),
        };
        let codec = BlockCodec::new(&keys, 3, true);
        let data: Vec<Vec<u8>> = (0..48u32)
            .map(|i| {
                (0..16384u32)
                    .map(|j| ((i * 31 + j * (i % 5)) % 251) as u8)
                    .collect()
            })
            .collect();
        let blocks: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        let sequential: Vec<Encoded> = {
            let mut n = NonceSource::new_epoch(&mut ChaCha8Rng::seed_from_u64(5));
            blocks
                .iter()
                .enumerate()
                .map(|(i, b)| codec.encode(100 + i as u64, 3, b, n.next_nonce().unwrap()))
                .collect()
        };
        for threads in [1, 2, 7] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut n = NonceSource::new_epoch(&mut ChaCha8Rng::seed_from_u64(5));
            let indices: Vec<u64> = (100..100 + blocks.len() as u64).collect();
            let parallel = pool
                .install(|| encode_batch(&codec, &indices, 3, &blocks, &mut n))
                .unwrap();
            assert!(
                parallel == sequential,
                "{threads} threads changed the output"
            );
        }
    }
}
