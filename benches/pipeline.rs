//! The block pipeline (encode of 64 KiB blocks) next to each stage alone, on three kinds of
//! data: text-like, half zero blocks, random. Every stage runs on exactly the bytes it sees in
//! the pipeline (zstd with a reused context on the non-zero blocks; AES-GCM and CRC-32C on what
//! zstd kept), and every throughput counts input bytes, so the stage times add up to the
//! pipeline's single-core bound: pipeline time / sum of stage times is its efficiency.

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use datapath::keys::{DiskKeys, Secret32};
use datapath::replica::batch::encode_batch;
use datapath::replica::block_record::BlockCodec;
use datapath::replica::nonce::NonceSource;
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

fn pipeline(c: &mut Criterion) {
    let keys = DiskKeys {
        data: Secret32::from_bytes([1; 32]),
        digest: Secret32::from_bytes([2; 32]),
    };
    let codec = BlockCodec::new(&keys, 1, true);
    let cipher = Aes256Gcm::new_from_slice(&[1; 32]).unwrap();
    for kind in ["text_like", "half_zero", "random"] {
        let input = data(kind);
        let mut group = c.benchmark_group(format!("pipeline_64KiB_blocks/{kind}"));
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.sample_size(10);
        group.bench_function("stage_blake3_keyed", |b| {
            b.iter(|| {
                input
                    .chunks(BLOCK)
                    .map(|blk| blake3::keyed_hash(&[2; 32], blk).as_bytes()[0])
                    .fold(0u8, |a, v| a ^ v)
            })
        });
        let nonzero: Vec<&[u8]> = input
            .chunks(BLOCK)
            .filter(|blk| blk.iter().any(|&v| v != 0))
            .collect();
        let mut compressor = zstd::bulk::Compressor::new(1).unwrap();
        // What zstd keeps: the compressed block, or the block itself when that is not smaller.
        let stored: Vec<Vec<u8>> = nonzero
            .iter()
            .map(|blk| {
                let c = compressor.compress(blk).unwrap();
                if c.len() < blk.len() {
                    c
                } else {
                    blk.to_vec()
                }
            })
            .collect();
        group.bench_function("stage_zero_check", |b| {
            b.iter(|| {
                input
                    .chunks(BLOCK)
                    .filter(|blk| datapath::replica::block_record::is_zero(blk))
                    .count()
            })
        });
        group.bench_function("stage_zstd_1", |b| {
            let mut out = vec![0u8; BLOCK];
            b.iter(|| {
                nonzero
                    .iter()
                    .map(|blk| {
                        compressor
                            .compress_to_buffer(blk, &mut out[..BLOCK - 1])
                            .unwrap_or(0)
                    })
                    .sum::<usize>()
            })
        });
        group.bench_function("stage_aes_256_gcm", |b| {
            let mut buf = vec![0u8; BLOCK];
            b.iter(|| {
                for blk in &stored {
                    let buf = &mut buf[..blk.len()];
                    buf.copy_from_slice(blk);
                    std::hint::black_box(
                        cipher
                            .encrypt_inout_detached(&Nonce::from([3; 12]), b"", buf.into())
                            .unwrap(),
                    );
                }
            })
        });
        group.bench_function("stage_crc32c", |b| {
            b.iter(|| {
                stored
                    .iter()
                    .map(|s| crc32c::crc32c(s))
                    .fold(0u32, |a, v| a ^ v)
            })
        });
        group.bench_function("pipeline_encode", |b| {
            b.iter(|| {
                input
                    .chunks(BLOCK)
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
        let blocks: Vec<&[u8]> = input.chunks(BLOCK).collect();
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
