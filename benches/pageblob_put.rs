//! Put Page throughput of the embedded emulator (4 MiB pages into one blob) next to a memcpy
//! of the same bytes, and replication-sized records (64 KiB) written into a fresh blob by 1, 2
//! and 4 threads at once, as a cycle's store writers write them: how far the store's writes
//! scale with threads.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pageblob::clock::SystemClock;
use pageblob::data_log::Durability;
use pageblob::{BlobPath, Conditions, Emulator, PageBlobStore, Profile};

const PAGE: usize = 4 << 20;
const PAGES: usize = 16;

/// An emulator in `dir` with the container "bench".
fn bench_store(dir: &std::path::Path) -> Emulator {
    let store = Emulator::open(
        dir,
        Profile::Standard,
        Durability::Process,
        Arc::new(SystemClock),
    )
    .unwrap();
    store.create_container("bench").unwrap();
    store
}

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
    let store = bench_store(dir.path());
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
    records_by_threads(c);
}

/// Bytes of records written per iteration, and the size of each.
const RECORDS_BYTES: usize = 256 << 20;
const RECORD: usize = 64 << 10;

fn records_by_threads(c: &mut Criterion) {
    let record: Vec<u8> = (0..RECORD).map(|i| (i * 13 % 251) as u8).collect();
    let mut group = c.benchmark_group("put_pages_64KiB_records_into_a_fresh_blob");
    group.throughput(Throughput::Bytes(RECORDS_BYTES as u64));
    group.sample_size(10);
    let dir = tempfile::tempdir().unwrap();
    let store = bench_store(dir.path());
    let p = BlobPath::new("bench", "records");
    let records = RECORDS_BYTES / RECORD;
    for threads in [1usize, 2, 4] {
        group.bench_function(format!("{threads}_threads"), |b| {
            b.iter_batched(
                || {
                    // A fresh blob (and home file) each time: a cycle writes pages the store
                    // never held.
                    let _ = store.delete_blob(&p, None, None, &Conditions::default());
                    store
                        .create_page_blob(&p, RECORDS_BYTES as u64, 0, &Conditions::default())
                        .unwrap();
                },
                |()| {
                    std::thread::scope(|s| {
                        for t in 0..threads {
                            let (store, p, record) = (&store, &p, &record);
                            s.spawn(move || {
                                for i in (t..records).step_by(threads) {
                                    store
                                        .put_pages(
                                            p,
                                            (i * RECORD) as u64,
                                            record,
                                            &Conditions::default(),
                                        )
                                        .unwrap();
                                }
                            });
                        }
                    });
                },
                criterion::BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, put_pages);
criterion_main!(benches);
