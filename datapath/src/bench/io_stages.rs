//! The stages of the data path that move bytes instead of transforming them, timed alone on
//! the bench's sample as the pipeline meets them: a block copied out of the source, its record
//! written into the target store, and read back from it (a restore's fetch). With the
//! transforms of [`super::StageRates`] they make the bounds `bench` holds the initial
//! replication and the restore to: on a machine with as many cores as pipeline threads, the
//! kernel's copies into and out of the store are paid from the same cores as zstd.

use serde::Serialize;

use super::{best_rate, best_rate_prepared, BenchError, PASSES};
use crate::cycle::BlockSource;
use crate::replica::disk_replica::Layout;
use crate::replica::error::ReplicaError;
use crate::replica::slot_header::HEADER_SIZE;
use pageblob::{
    BlobPath, Conditions, DeleteSnapshots, ErrorCode, PageBlobStore, PageRead, PageWrite,
    StoreError, MAX_PUT_PAGES_BYTES, PIPELINE_DEPTH,
};

/// Single-thread throughput of the I/O stages.
#[derive(Debug, Clone, Serialize)]
pub struct IoRates {
    /// Copying blocks out of the source, in plain bytes per second.
    pub source_read: f64,
    /// Record bytes (slot header, stored payload, padding to whole pages) per plain byte.
    pub record_ratio: f64,
    /// Put Page of the records into a scratch blob of the target store, in record bytes per
    /// second.
    pub store_write: f64,
    /// Reading them back, in record bytes per second.
    pub store_read: f64,
}

impl IoRates {
    /// Seconds of one core per plain byte that a replication spends outside its transforms.
    pub(crate) fn replication_cost(&self) -> f64 {
        1.0 / self.source_read + self.record_ratio / self.store_write
    }

    /// Seconds of one core per plain byte that a restore spends fetching records.
    pub(crate) fn restore_cost(&self) -> f64 {
        self.record_ratio / self.store_read
    }
}

/// Time the I/O stages on the sample: `blocks[i]` is where `stored_lens[i]` (its stored
/// payload's length) came from. Scratch blobs named after `scratch` are created in the store
/// and deleted again, whatever happens in between.
pub fn io_rates(
    source: &dyn BlockSource,
    layout: &Layout,
    blocks: &[u64],
    stored_lens: &[usize],
    store: &dyn PageBlobStore,
    scratch: &BlobPath,
) -> Result<IoRates, BenchError> {
    let plain: u64 = blocks.iter().map(|&b| layout.block_len(b)).sum();
    let mut buf = vec![0u8; layout.block_size as usize];
    let mut read_error = None;
    let source_read = best_rate(plain, || {
        for &block in blocks {
            let offset = block * u64::from(layout.block_size);
            let len = layout.block_len(block) as usize;
            if let Err(e) = source.read_at(offset, &mut buf[..len]) {
                read_error.get_or_insert(BenchError::Source { offset, source: e });
            }
        }
    });
    if let Some(e) = read_error {
        return Err(e);
    }
    // Records as the cycle stores them: a header page and the payload, padded to pages, one
    // after another (their content does not matter to the store).
    let records: Vec<u64> = stored_lens
        .iter()
        .map(|&len| (HEADER_SIZE + len).next_multiple_of(512) as u64)
        .collect();
    let record_bytes: u64 = records.iter().sum();
    // Each write pass into a new blob: a cycle writes into pages the store never held, which
    // costs the kernel more than overwriting them.
    let passes: Vec<BlobPath> = (0..PASSES)
        .map(|i| BlobPath::new(&scratch.container, &format!("{}.{i}", scratch.blob)))
        .collect();
    let timed = time_store(store, &passes, &records, record_bytes);
    let mut deleted = Ok(());
    for path in &passes {
        let gone = store.delete_blob(
            path,
            None,
            Some(DeleteSnapshots::Include),
            &Conditions::default(),
        );
        match gone {
            Err(e) if e.code() != Some(ErrorCode::BlobNotFound) => deleted = Err(e),
            _ => {}
        }
    }
    let (store_write, store_read) = timed?;
    deleted.map_err(ReplicaError::from)?;
    Ok(IoRates {
        source_read,
        record_ratio: record_bytes as f64 / plain.max(1) as f64,
        store_write,
        store_read,
    })
}

/// Write every record into a new blob per pass and read them back from the last, best of
/// [`PASSES`] each.
fn time_store(
    store: &dyn PageBlobStore,
    passes: &[BlobPath],
    records: &[u64],
    record_bytes: u64,
) -> Result<(f64, f64), BenchError> {
    let largest = records.iter().copied().max().unwrap_or(0) as usize;
    // Incompressible bytes, as encrypted payloads are.
    let mut content = vec![0u8; largest];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in content.chunks_mut(8) {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    let size = record_bytes.max(512);
    let mut error: Option<StoreError> = None;
    let mut next = passes.iter();
    let store_write = best_rate_prepared(
        record_bytes,
        || {
            let path = next.next().unwrap_or(&passes[0]);
            store
                .create_page_blob(path, size, 0, &Conditions::default())
                .map(|_| path)
        },
        |created| {
            let path = match created {
                Ok(path) => path,
                Err(e) => {
                    error.get_or_insert(e);
                    return;
                }
            };
            // As the cycle's writers store them: batches of up to `PIPELINE_DEPTH` records
            // (an HTTP store pipelines a batch on one connection).
            let mut writes = Vec::with_capacity(records.len());
            let mut at = 0u64;
            for &len in records {
                for (i, chunk) in content[..len as usize]
                    .chunks(MAX_PUT_PAGES_BYTES as usize)
                    .enumerate()
                {
                    let offset = at + i as u64 * MAX_PUT_PAGES_BYTES;
                    writes.push(PageWrite {
                        path,
                        offset,
                        data: chunk,
                    });
                }
                at += len;
            }
            for batch in writes.chunks(PIPELINE_DEPTH) {
                if let Err(e) = store.put_pages_batch(batch, &Default::default()) {
                    error.get_or_insert(e);
                }
            }
        },
    );
    if let Some(e) = error {
        return Err(ReplicaError::from(e).into());
    }
    // Fetched as a restore fetches a record: with one read of its written pages (the
    // restore's page ranges say where they end; `DiskReplica::fetch_record_within`) — from a
    // store that does not answer promptly (across a network) in batches of up to
    // `PIPELINE_DEPTH` reads, as the restore reads them (`read_batch`: one round trip each).
    let read_from = &passes[passes.len() - 1];
    let batch = match store.answers_promptly() {
        true => 1,
        false => PIPELINE_DEPTH,
    };
    let mut bufs: Vec<Vec<u8>> = (0..batch).map(|_| vec![0u8; largest]).collect();
    let offsets: Vec<u64> = records
        .iter()
        .scan(0u64, |at, &len| {
            let this = *at;
            *at += len;
            Some(this)
        })
        .collect();
    let store_read = best_rate(record_bytes, || {
        for (lens, ats) in records.chunks(batch).zip(offsets.chunks(batch)) {
            let mut reads: Vec<PageRead<'_>> = bufs
                .iter_mut()
                .zip(lens.iter().zip(ats))
                .map(|(buf, (&len, &at))| PageRead {
                    path: read_from,
                    snapshot: None,
                    offset: at,
                    buf: &mut buf[..len as usize],
                })
                .collect();
            if let Err(e) = store.read_batch(&mut reads) {
                error.get_or_insert(e);
            }
        }
    });
    match error {
        Some(e) => Err(ReplicaError::from(e).into()),
        None => Ok((store_write, store_read)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pageblob::clock::ManualClock;
    use pageblob::data_log::Durability;
    use pageblob::faults::{FaultConfig, FaultyStore};
    use pageblob::{Emulator, Profile};

    use super::*;

    /// A store directory in `dir` behind a `FaultyStore` (it counts the calls), with the
    /// container `bench`.
    fn store_in(dir: &std::path::Path, config: FaultConfig) -> FaultyStore<Emulator> {
        let emulator = Emulator::open(
            dir,
            Profile::Standard,
            Durability::Process,
            Arc::new(ManualClock::new(1_700_000_000_000_000_000)),
        )
        .unwrap();
        let store = FaultyStore::new(emulator, config);
        store.create_container("bench").unwrap();
        store
    }

    /// The I/O stages over 70 records of 5,000 bytes (blocks of 16 KiB).
    fn seventy_records(store: &FaultyStore<Emulator>) -> IoRates {
        let layout = Layout {
            disk_size: 128 * 16384,
            block_size: 16384,
        };
        let disk = vec![7u8; layout.disk_size as usize];
        let blocks: Vec<u64> = (0..70).collect();
        let scratch = BlobPath::new("bench", "scratch");
        io_rates(&disk, &layout, &blocks, &[5000; 70], store, &scratch).unwrap()
    }

    #[test]
    fn the_write_stage_stores_records_in_batches_as_the_writers_do() {
        // 70 records: batches of 32, 32 and 6 in each pass, as the cycle's writers send them
        // (an HTTP store pipelines a batch); read back one record per call, as a restore.
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(dir.path(), FaultConfig::default());
        let rates = seventy_records(&store);
        assert_eq!(store.batches(), 3 * PASSES as u64);
        assert_eq!(store.reads(), 70 * PASSES as u64);
        assert!(rates.store_write > 0.0 && rates.store_read > 0.0);
        let per_record = (HEADER_SIZE + 5000).next_multiple_of(512) as f64;
        assert_eq!(rates.record_ratio, 70.0 * per_record / (70.0 * 16384.0));
        // The scratch blobs are gone.
        assert!(store.list_blobs("bench", "", false).unwrap().is_empty());
    }

    #[test]
    fn from_a_store_across_a_network_the_read_stage_reads_in_batches_as_a_restore_does() {
        // A store that does not answer promptly (here: latency): the 70 records are read back
        // in batches of 32, 32 and 6 (an HTTP store pipelines a batch), as the restore reads
        // them from such a store.
        let dir = tempfile::tempdir().unwrap();
        let config = FaultConfig {
            latency: std::time::Duration::from_micros(1),
            ..FaultConfig::default()
        };
        let store = store_in(dir.path(), config);
        assert!(!store.answers_promptly());
        seventy_records(&store);
        assert_eq!(store.read_batches(), 3 * PASSES as u64);
        assert_eq!(store.reads(), 70 * PASSES as u64);
    }
}
