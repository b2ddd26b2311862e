//! Put Page throughput of the embedded emulator (4 MiB pages into one blob) next to a memcpy
//! of the same bytes, and the same uploads through the HTTP server and client on loopback.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pageblob::clock::SystemClock;
use pageblob::data_log::Durability;
use pageblob::{BlobPath, Conditions, Emulator, PageBlobStore, Profile};

const PAGE: usize = 4 << 20;
const PAGES: usize = 16;

fn put_pages(c: &mut Criterion) {
    let data: Vec<u8> = (0..PAGE).map(|i| (i * 7 % 251) as u8).collect();
    let mut group = c.benchmark_group("put_pages_4MiB_x16");
    group.throughput(Throughput::Bytes((PAGE * PAGES) as u64));
    group.sample_size(10);
    let mut sink = vec![0u8; PAGE * PAGES];
    group.bench_function("memcpy_baseline", |b| {
        b.iter(|| {
            for i in 0..PAGES {
                sink[i * PAGE..(i + 1) * PAGE].copy_from_slice(&data);
            }
            std::hint::black_box(&sink);
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Emulator::open(
        dir.path(),
        Profile::Standard,
        Durability::Process,
        Arc::new(SystemClock),
    )
    .unwrap();
    store.create_container("bench").unwrap();
    let p = BlobPath::new("bench", "disk");
    store
        .create_page_blob(&p, (PAGE * PAGES) as u64, 0, &Conditions::default())
        .unwrap();
    group.bench_function("emulator_put_pages", |b| {
        b.iter(|| {
            for i in 0..PAGES {
                store
                    .put_pages(&p, (i * PAGE) as u64, &data, &Conditions::default())
                    .unwrap();
            }
        })
    });
    group.finish();
}

criterion_group!(benches, put_pages);
criterion_main!(benches);
