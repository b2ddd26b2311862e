//! The block pipeline (encode of 64 KiB blocks) next to each stage alone, on three kinds of
//! data: text-like, half zero blocks, random. Every stage runs on exactly the bytes it sees in
//! the pipeline (zstd with a reused context on the non-zero blocks; AES-GCM and CRC-32C on what
//! zstd kept), and every throughput counts input bytes, so the stage times add up to the
//! pipeline's single-core bound: pipeline time / sum of stage times is its efficiency. The
//! parallel pipeline is held against N times that bound (N cores scaling perfectly).

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use datapath::keys::{DiskKeys, Secret32};
use datapath::replica::batch::encode_batch;
use datapath::replica::block_record::{block_compressor, BlockCodec};
use datapath::replica::nonce::NonceSource;
use pageblob::is_zero;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

const BLOCK: usize = 64 * 1024;
const BLOCKS: usize = 64;

fn data(kind: &str) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words = [
        "disk ",
        "block ",
        "replica ",
        "cycle ",
        "azure ",
        "hyper-v ",
        "snapshot\n",
    ];
    (0..BLOCKS)
        .flat_map(|b| {
            let mut block = vec![0u8; BLOCK];
            match kind {
                "random" => block.iter_mut().for_each(|v| *v = rand() as u8),
                "half_zero" if b % 2 == 0 => {}
                _ => {
                    let mut i = 0;
                    let mut pos = 0;
                    while pos < BLOCK {
                        let w = words[(rand() % words.len() as u64) as usize].as_bytes();
                        let n = w.len().min(BLOCK - pos);
                        block[pos..pos + n].copy_from_slice(&w[..n]);
                        pos += n;
                        i += 1;
                    }
                    let _ = i;
                }
            }
            block
        })
        .collect()
}

/// Benchmark one stage over `items` on one core, with state from `init` reused across items
/// (as each pipeline thread reuses its zstd context and buffers).
fn stage<T, S>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    items: &[T],
    init: impl Fn() -> S,
    run: impl Fn(&mut S, &T) -> u64,
) {
    group.bench_function(format!("stage_{name}"), |b| {
        let mut state = init();
        b.iter(|| {
            items
                .iter()
                .map(|item| run(&mut state, item))
                .fold(0u64, u64::wrapping_add)
        })
    });
}

fn pipeline(c: &mut Criterion) {
    let keys = DiskKeys {
        data: Secret32::from_bytes([1; 32]),
        digest: Secret32::from_bytes([2; 32]),
    };
    let codec = BlockCodec::new(&keys, 1, true);
    let cipher = Aes256Gcm::new_from_slice(&[1; 32]).unwrap();
    let compressor = || block_compressor(1, BLOCK).expect("zstd context");
    for kind in ["text_like", "half_zero", "random"] {
        let input = data(kind);
        let blocks: Vec<&[u8]> = input.chunks(BLOCK).collect();
        let nonzero: Vec<&[u8]> = blocks.iter().copied().filter(|blk| !is_zero(blk)).collect();
        // What zstd keeps: the compressed block, or the block itself when that is not smaller.
        let mut zstd = compressor();
        let stored: Vec<Vec<u8>> = nonzero
            .iter()
            .map(|blk| {
                let c = zstd.compress(blk).unwrap();
                if c.len() < blk.len() {
                    c
                } else {
                    blk.to_vec()
                }
            })
            .collect();
        let mut group = c.benchmark_group(format!("pipeline_64KiB_blocks/{kind}"));
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.sample_size(10);
        stage(
            &mut group,
            "blake3_keyed",
            &blocks,
            || (),
            |(), blk| u64::from(blake3::keyed_hash(&[2; 32], blk).as_bytes()[0]),
        );
        stage(
            &mut group,
            "zero_check",
            &blocks,
            || (),
            |(), blk| u64::from(is_zero(blk)),
        );
        stage(
            &mut group,
            "zstd_1",
            &nonzero,
            || (compressor(), vec![0u8; BLOCK]),
            |(zstd, out), blk| {
                zstd.compress_to_buffer(blk, &mut out[..BLOCK - 1])
                    .unwrap_or(0) as u64
            },
        );
        stage(
            &mut group,
            "aes_256_gcm",
            &stored,
            || vec![0u8; BLOCK],
            |buf, blk| {
                let buf = &mut buf[..blk.len()];
                buf.copy_from_slice(blk);
                let tag = cipher
                    .encrypt_inout_detached(&Nonce::from([3; 12]), b"", buf.into())
                    .unwrap();
                u64::from(tag[0])
            },
        );
        stage(
            &mut group,
            "crc32c",
            &stored,
            || (),
            |(), s| u64::from(crc32c::crc32c(s)),
        );
        group.bench_function("pipeline_encode", |b| {
            b.iter(|| {
                blocks
                    .iter()
                    .enumerate()
                    .map(|(i, blk)| {
                        let digest = codec.digest(blk);
                        codec
                            .encode_digested(i as u64, 1, blk, digest, [4; 12])
                            .digest()[0]
                    })
                    .fold(0u8, |a, v| a ^ v)
            })
        });
        let indices: Vec<u64> = (0..blocks.len() as u64).collect();
        group.bench_function("pipeline_encode_parallel_all_cores", |b| {
            b.iter(|| {
                let mut nonces = NonceSource::new_epoch(&mut ChaCha8Rng::seed_from_u64(1));
                encode_batch(&codec, &indices, 1, &blocks, &mut nonces)
                    .unwrap()
                    .len()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
