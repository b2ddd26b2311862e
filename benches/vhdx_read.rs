//! Sequential read throughput of a dense dynamic VHDX, in process, next to memcpy of the same
//! bytes: the ratio says how close the reader gets to the memory bound.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vhdx::testing::{pattern, ImageBuilder};
use vhdx::Disk;

const SIZE: usize = 256 << 20;
const BUF: usize = 4 << 20;

fn sequential_read(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dense.vhdx");
    let data = pattern(7, SIZE);
    let mut b = ImageBuilder::new(SIZE as u64);
    b.block_size(32 << 20).write(0, &data);
    std::fs::write(&path, b.build()).unwrap();
    let disk = Disk::open(&path).unwrap();
    let mut buf = vec![0u8; BUF];

    let mut group = c.benchmark_group("sequential_read_256MiB");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(20);
    group.bench_function("memcpy_baseline", |bench| {
        bench.iter(|| {
            for chunk in data.chunks(BUF) {
                buf[..chunk.len()].copy_from_slice(chunk);
                std::hint::black_box(&buf);
            }
        })
    });
    group.bench_function("vhdx_read_at_mmap", |bench| {
        bench.iter(|| {
            let mut pos = 0u64;
            while pos < SIZE as u64 {
                disk.read_at(pos, &mut buf).unwrap();
                std::hint::black_box(&buf);
                pos += BUF as u64;
            }
        })
    });
    group.finish();
}

criterion_group!(benches, sequential_read);
criterion_main!(benches);
