//! VHDX writer throughput: sequential and random 4 KiB / 64 KiB writes into allocated blocks of
//! a fixed disk (data in place), and sequential 64 KiB writes into a new dynamic disk (block
//! allocation through the log, with its flushes). Beside each, the same writes with `pwrite` to
//! a plain file (the baseline).

use std::os::unix::fs::FileExt;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use vhdx::{CreateOptions, ReadWriteFile, VhdxWriter};

const DISK: u64 = 256 << 20;
const WRITTEN: u64 = 16 << 20;

fn offsets(io: u64, random: bool) -> Vec<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    (0..WRITTEN / io)
        .map(|i| {
            if random {
                (rng.next_u64() % (DISK / io)) * io
            } else {
                i * io
            }
        })
        .collect()
}

fn new_disk(dir: &std::path::Path, name: &str, fixed: bool) -> VhdxWriter<ReadWriteFile> {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let options = CreateOptions {
        fixed,
        block_size: 1 << 20,
        ..CreateOptions::dynamic(DISK)
    };
    VhdxWriter::create(
        ReadWriteFile::create_new(&path).unwrap(),
        &options,
        Box::new(ChaCha8Rng::seed_from_u64(2)),
    )
    .unwrap()
}

fn writes(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("vhdx_write");
    group.throughput(Throughput::Bytes(WRITTEN));
    group.sample_size(10);
    let mut fixed = new_disk(dir.path(), "fixed.vhdx", true);
    let plain = std::fs::File::create(dir.path().join("plain.raw")).unwrap();
    plain.set_len(DISK).unwrap();
    for io in [4096u64, 65536] {
        let data = vec![0xA5u8; io as usize];
        for random in [false, true] {
            let name = format!(
                "{}_{}KiB",
                if random { "random" } else { "sequential" },
                io / 1024
            );
            let at = offsets(io, random);
            group.bench_function(format!("overwrite_{name}"), |b| {
                b.iter(|| {
                    for &o in &at {
                        fixed.write_at(o, &data).unwrap();
                    }
                })
            });
            group.bench_function(format!("baseline_pwrite_{name}"), |b| {
                b.iter(|| {
                    for &o in &at {
                        plain.write_all_at(&data, o).unwrap();
                    }
                })
            });
        }
    }
    let data = vec![0x5Au8; 65536];
    let at = offsets(65536, false);
    group.bench_function("allocate_sequential_64KiB", |b| {
        b.iter_batched(
            || new_disk(dir.path(), "dynamic.vhdx", false),
            |mut disk| {
                for &o in &at {
                    disk.write_at(o, &data).unwrap();
                }
                disk
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, writes);
criterion_main!(benches);
