//! Measuring the data path on one disk (`drplane bench`): each pipeline stage alone on a
//! sample of the disk's blocks, the initial replication, tracked delta cycles at chosen churn
//! levels, and a byte-exact check of the last point. It runs the real cycle into a real store;
//! the disk itself is never written: changed blocks are laid over it in memory
//! ([`ChurnedSource`]), as a change tracker would report them.

pub mod io_stages;
pub mod synthetic;

use std::collections::BTreeMap;
use std::time::Instant;

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use rand_core::SeedableRng;
use serde::Serialize;

use crate::cpu_clock::{process_cpu_seconds, thread_cpu_seconds};
use crate::cycle::{run_cycle_cached, BlockSource, CycleError, CycleOptions, Selection};
use crate::keys::Identity;
use crate::replica::block_record::{block_compressor, BlockCodec};
use crate::replica::disk_replica::{DiskReplica, Layout};
use crate::replica::error::ReplicaError;
use crate::replica::nonce::NonceSource;
pub use io_stages::IoRates;
use pageblob::clock::Clock;
use pageblob::is_zero;
use pageblob::{BlobPath, PageBlobStore};
use synthetic::{ContentKind, RealisticContent};

/// Changed blocks held in memory at once, over all churn levels.
pub const MAX_CHURN_BYTES: u64 = 2 << 30;
/// Largest stage sample (held in memory with its compressed and encrypted copies).
pub const MAX_SAMPLE_BYTES: u64 = 256 << 20;
/// The sample search reads at most this many times the sample's size: a disk of allocated
/// zeros is not read twice over just to find there is nothing to time.
const SAMPLE_SEARCH_FACTOR: u64 = 16;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub block_size: u32,
    pub zstd_level: i32,
    pub encrypt: bool,
    pub upload_threads: usize,
    /// Delta cycles, in order: the share of the disk's blocks each one changes, in percent.
    pub churn_percents: Vec<f64>,
    /// Seeds the choice of changed blocks and their new content.
    pub seed: u64,
    /// Bytes of non-zero blocks the stages are timed on (spread over the disk).
    pub stage_sample_bytes: u64,
    /// Restore the last point and compare it with the disk.
    pub verify: bool,
}

impl BenchConfig {
    /// Check the settings for a disk of `disk_size` bytes; the number of blocks each delta
    /// cycle changes.
    pub fn validate(&self, disk_size: u64) -> Result<Vec<u64>, BenchError> {
        crate::policy::check_block_size(self.block_size)?;
        if disk_size == 0 {
            return Err(BenchError::EmptyDisk);
        }
        if !(u64::from(self.block_size)..=MAX_SAMPLE_BYTES).contains(&self.stage_sample_bytes) {
            return Err(BenchError::Sample(self.stage_sample_bytes));
        }
        let blocks = disk_size.div_ceil(u64::from(self.block_size));
        let mut churn_blocks = Vec::new();
        for &percent in &self.churn_percents {
            if !(0.0..=100.0).contains(&percent) {
                return Err(BenchError::Churn(percent));
            }
            churn_blocks.push(((blocks as f64 * percent / 100.0).round() as u64).min(blocks));
        }
        let needed = churn_blocks.iter().sum::<u64>() * u64::from(self.block_size);
        if needed > MAX_CHURN_BYTES {
            return Err(BenchError::ChurnMemory {
                needed,
                limit: MAX_CHURN_BYTES,
            });
        }
        Ok(churn_blocks)
    }
}

/// Bad settings, and failures while measuring.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("the disk is empty")]
    EmptyDisk,
    #[error("churn {0}% is not between 0 and 100")]
    Churn(f64),
    #[error(
        "the churn levels change {needed} bytes of blocks, held in memory; the limit is {limit} (choose lower churn or a smaller disk)"
    )]
    ChurnMemory { needed: u64, limit: u64 },
    #[error("stage sample of {0} bytes: between one block and {MAX_SAMPLE_BYTES} bytes")]
    Sample(u64),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error("reading the disk at {offset:#x}: {source}")]
    Source { offset: u64, source: std::io::Error },
    #[error(transparent)]
    Cycle(#[from] CycleError),
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error("the store lists no recovery point after the bench's cycles")]
    NoPoint,
    #[error("the last point does not restore to the disk: block {block} differs")]
    Mismatch { block: u64 },
}

/// Single-thread throughput of each stage, in bytes of the block they take per second.
#[derive(Debug, Clone, Serialize)]
pub struct StageRates {
    /// Non-zero plain bytes timed.
    pub sample_bytes: u64,
    pub blake3_keyed: f64,
    pub zstd: f64,
    /// Stored payload bytes per plain byte (zstd kept only where it saves space).
    pub stored_ratio: f64,
    /// On the stored payloads.
    pub aes_256_gcm: f64,
    /// On the stored payloads.
    pub crc32c: f64,
    /// Decrypting and checking the stored payloads (a restore's), on their bytes.
    pub aes_256_gcm_open: f64,
    /// Decompressing the stored payloads, in plain bytes out (blocks stored as they are cost
    /// nothing here).
    pub zstd_decompress: f64,
}

impl StageRates {
    /// Plain bytes per second `threads` cores could push through all four stages, each block
    /// paying every stage (AES-GCM and CRC-32C on its stored size).
    pub fn pipeline_bound(&self, threads: usize) -> f64 {
        threads as f64 / self.replication_cost()
    }

    /// Seconds of one core per plain byte for the data stages of a replication.
    fn replication_cost(&self) -> f64 {
        1.0 / self.blake3_keyed
            + 1.0 / self.zstd
            + self.stored_ratio / self.aes_256_gcm
            + self.stored_ratio / self.crc32c
    }

    /// Seconds of one core per plain byte for a restore's decoding: CRC-32C, AES-GCM open,
    /// zstd decompression, BLAKE3 (the records' fetch is in [`IoRates`]).
    fn restore_decode_cost(&self) -> f64 {
        self.stored_ratio / self.crc32c
            + self.stored_ratio / self.aes_256_gcm_open
            + 1.0 / self.zstd_decompress
            + 1.0 / self.blake3_keyed
    }
}

/// One measured cycle.
#[derive(Debug, Clone, Serialize)]
pub struct CycleFigures {
    /// `None` for the initial replication.
    pub churn_percent: Option<f64>,
    pub seconds: f64,
    /// CPU time of the whole process during the cycle (all threads), where the OS tells.
    pub cpu_seconds: Option<f64>,
    /// CPU time of the pipeline's pool threads during the cycle (the transforms, the source's
    /// reads, and the cycle's own bookkeeping when it runs on one of them), where the OS tells;
    /// the rest of [`Self::cpu_seconds`] is the store's writer threads and any other thread.
    pub pool_cpu_seconds: Option<f64>,
    /// CPU time of the cycle's serial part: its own thread preparing and settling the groups
    /// one after another ([`crate::cycle::CycleReport::serial_cpu_seconds`]).
    pub serial_cpu_seconds: Option<f64>,
    /// Wall time of the cycle before its first group and after its last.
    pub outside_groups_seconds: f64,
    pub blocks_examined: u64,
    pub blocks_changed: u64,
    pub bytes_read: u64,
    pub bytes_changed: u64,
    pub bytes_sent: u64,
}

/// Everything `drplane bench` reports.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub disk_size: u64,
    pub block_size: u32,
    pub blocks: u64,
    pub zstd_level: i32,
    pub encrypt: bool,
    pub upload_threads: usize,
    /// Worker threads of the pipeline (rayon), which also restore.
    pub pipeline_threads: usize,
    /// Cores the process may run on.
    pub cores: usize,
    /// `None` when the disk holds no non-zero block to time the stages on.
    pub stages: Option<StageRates>,
    /// Non-zero plain bytes per second the pipeline's threads encode together when each runs
    /// the pipeline's codec over the stage sample at the same time, nothing shared and no
    /// hand-off ([`transforms_on_threads`]): the transforms' bound as the machine gives it to
    /// that many threads at once. [`StageRates::pipeline_bound`] assumes each thread runs as
    /// fast as one alone; cores that share caches, memory bandwidth or a clock that drops
    /// with load do not.
    pub transforms_on_threads: Option<f64>,
    /// Timed with the stages.
    pub io: Option<IoRates>,
    pub initial: CycleFigures,
    pub deltas: Vec<CycleFigures>,
    /// The last point restored (not written anywhere), when asked to verify.
    pub restore: Option<RestoreFigures>,
    /// Seconds to restore the last point and compare it with the disk, when asked.
    pub verify_seconds: Option<f64>,
}

/// The last point's restore.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreFigures {
    pub seconds: f64,
    pub cpu_seconds: Option<f64>,
    /// Plain bytes of the records decoded (zero blocks are not stored and cost nothing).
    pub bytes_restored: u64,
}

impl BenchReport {
    /// Disk bytes per second of the initial replication.
    pub fn initial_rate(&self) -> f64 {
        self.disk_size as f64 / self.initial.seconds.max(1e-9)
    }

    /// The stages' bound on the pipeline's threads, in non-zero bytes per second.
    pub fn pipeline_bound(&self) -> Option<f64> {
        self.stages
            .as_ref()
            .map(|s| s.pipeline_bound(self.pipeline_threads))
    }

    /// Non-zero bytes per second of the initial replication against [`Self::pipeline_bound`].
    pub fn pipeline_efficiency(&self) -> Option<f64> {
        self.pipeline_bound()
            .map(|bound| self.initial_nonzero_rate() / bound)
    }

    /// Non-zero bytes per second of the initial replication against
    /// [`Self::transforms_on_threads`]: what the pipeline's coordination costs, the machine's
    /// own scaling aside.
    pub fn measured_efficiency(&self) -> Option<f64> {
        self.transforms_on_threads
            .map(|bound| self.initial_nonzero_rate() / bound)
    }

    fn initial_nonzero_rate(&self) -> f64 {
        self.initial.bytes_changed as f64 / self.initial.seconds.max(1e-9)
    }

    /// The bound with the I/O stages: the pipeline's threads do the transforms, and the
    /// machine's cores do everything, the source reads and the store's writes included.
    pub fn replication_bound(&self) -> Option<f64> {
        let (stages, io) = (self.stages.as_ref()?, self.io.as_ref()?);
        let data = stages.replication_cost();
        let all = data + io.replication_cost();
        let threads = self.pipeline_threads as f64;
        let cores = self.cores as f64;
        Some((threads / data).min(cores / all))
    }

    /// Non-zero bytes per second the initial replication's serial parts keep up with, however
    /// many threads do the transforms: the cycle's own thread preparing and settling the groups
    /// one after another ([`CycleFigures::serial_cpu_seconds`]), and the store's writers, each
    /// of the `upload_threads` doing its share of the CPU the threads outside the pool used
    /// here ([`CycleFigures::other_cpu_seconds`]: the writers, and anything else, counted as
    /// theirs). Measured on this machine's cores, so it holds for more cores as long as the
    /// per-byte costs do.
    pub fn serial_ceiling(&self) -> Option<f64> {
        let (settling, writing) = self.serial_seconds()?;
        Some(self.initial.bytes_changed as f64 / settling.max(writing).max(1e-9))
    }

    /// The initial replication's serial parts in seconds: the cycle's thread settling its
    /// groups, and one writer's share of the writers' CPU.
    fn serial_seconds(&self) -> Option<(f64, f64)> {
        let c = &self.initial;
        let writing = c.other_cpu_seconds()? / self.upload_threads.max(1) as f64;
        Some((c.serial_cpu_seconds?, writing))
    }

    /// [`Self::serial_ceiling`] in threads: how many pipeline threads' worth of transforms
    /// (each at one thread's share of the stages' bound) the serial parts keep fed.
    pub fn serial_ceiling_threads(&self) -> Option<f64> {
        Some(self.serial_ceiling()? / self.stages.as_ref()?.pipeline_bound(1))
    }

    /// The thread counts `bench` projects [`Self::projected_efficiency`] to (its JSON figures
    /// `projected_N_thread_efficiency`).
    pub const PROJECTED_THREADS: [usize; 3] = [4, 8, 16];

    /// The share of the transforms' bound the initial replication would reach on `threads`
    /// threads with a core each, if the only limits were the stages and the serial parts as
    /// measured here: the transforms (and the cycle's thread's settling, as that thread is one
    /// of the pool's) spread over the threads, never faster than the settling alone or the
    /// writers alone, plus the cycle's time before and after its groups. A projection from
    /// the pipeline's own counters, for machines with more cores than this one.
    pub fn projected_efficiency(&self, threads: usize) -> Option<f64> {
        let one_thread = self.stages.as_ref()?.pipeline_bound(1);
        let bytes = self.initial.bytes_changed as f64;
        let (settling, writing) = self.serial_seconds()?;
        let threads = threads.max(1) as f64;
        let transforms = bytes / one_thread / threads;
        let spread = (bytes / one_thread + settling) / threads;
        let projected = self.initial.outside_groups_seconds + spread.max(settling).max(writing);
        Some(transforms / projected.max(1e-9))
    }

    /// Non-zero bytes per second of the initial replication against
    /// [`Self::replication_bound`].
    pub fn replication_efficiency(&self) -> Option<f64> {
        self.replication_bound()
            .map(|bound| self.initial_nonzero_rate() / bound)
    }

    /// Plain bytes per second of records a restore on the pipeline's threads could decode:
    /// fetch, CRC-32C, AES-GCM open, zstd decompression and BLAKE3 for every block.
    pub fn restore_bound(&self) -> Option<f64> {
        let (stages, io) = (self.stages.as_ref()?, self.io.as_ref()?);
        let per_byte = stages.restore_decode_cost() + io.restore_cost();
        Some(self.pipeline_threads.min(self.cores) as f64 / per_byte)
    }

    /// Plain bytes per second the restore decoded.
    pub fn restore_rate(&self) -> Option<f64> {
        self.restore
            .as_ref()
            .map(|r| r.bytes_restored as f64 / r.seconds.max(1e-9))
    }

    /// [`Self::restore_rate`] against [`Self::restore_bound`].
    pub fn restore_efficiency(&self) -> Option<f64> {
        Some(self.restore_rate()? / self.restore_bound()?)
    }
}

/// A disk with some blocks replaced in memory: what the disk looks like after writes that a
/// change tracker recorded. Replaced blocks are read from memory; the rest comes from below.
#[derive(Debug)]
pub struct ChurnedSource<'a, S: BlockSource + ?Sized> {
    base: &'a S,
    block_size: u64,
    blocks: BTreeMap<u64, Vec<u8>>,
}

impl<'a, S: BlockSource + ?Sized> ChurnedSource<'a, S> {
    pub fn new(base: &'a S, block_size: u32) -> ChurnedSource<'a, S> {
        ChurnedSource {
            base,
            block_size: u64::from(block_size),
            blocks: BTreeMap::new(),
        }
    }

    /// Replace block `index` (its bytes must be the block's full length).
    pub fn replace(&mut self, index: u64, bytes: Vec<u8>) {
        self.blocks.insert(index, bytes);
    }

    /// Bytes held in memory.
    pub fn held_bytes(&self) -> u64 {
        self.blocks.values().map(|b| b.len() as u64).sum()
    }

    fn replaced(&self, offset: u64, len: u64) -> impl Iterator<Item = (u64, &Vec<u8>)> {
        let first = offset / self.block_size;
        let last = (offset + len).div_ceil(self.block_size);
        self.blocks.range(first..last).map(|(&i, b)| (i, b))
    }
}

impl<S: BlockSource + ?Sized> BlockSource for ChurnedSource<'_, S> {
    fn disk_size(&self) -> u64 {
        self.base.disk_size()
    }
    fn is_unallocated(&self, offset: u64, len: u64) -> bool {
        self.replaced(offset, len).next().is_none() && self.base.is_unallocated(offset, len)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.base.read_at(offset, buf)?;
        let end = offset + buf.len() as u64;
        for (index, bytes) in self.replaced(offset, buf.len() as u64) {
            let start = index * self.block_size;
            let (from, to) = (start.max(offset), (start + bytes.len() as u64).min(end));
            if from < to {
                buf[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&bytes[(from - start) as usize..(to - start) as usize]);
            }
        }
        Ok(())
    }
    fn release(&self, offset: u64, len: u64) {
        self.base.release(offset, len)
    }
    fn check_reads(&self) -> std::io::Result<()> {
        self.base.check_reads()
    }
}

/// CPU time the threads of the current rayon pool have used, summed (each thread's own clock,
/// read on that thread), where the OS tells.
pub fn pool_cpu_seconds() -> Option<f64> {
    rayon::broadcast(|_| thread_cpu_seconds()).into_iter().sum()
}

impl CycleFigures {
    /// CPU time of the threads outside the pipeline's pool (the store's writers, the cycle's
    /// own thread where it is not one of the pool's).
    pub fn other_cpu_seconds(&self) -> Option<f64> {
        Some((self.cpu_seconds? - self.pool_cpu_seconds?).max(0.0))
    }

    /// Core-seconds of `cores` the process left unused during the cycle (waiting on one
    /// another, on I/O, or on other processes).
    pub fn unused_core_seconds(&self, cores: usize) -> Option<f64> {
        Some((cores as f64 * self.seconds - self.cpu_seconds?).max(0.0))
    }
}

/// Non-zero blocks spread evenly over the disk, up to `sample_bytes` in all.
fn sample_blocks(
    source: &dyn BlockSource,
    layout: &Layout,
    sample_bytes: u64,
) -> Result<Vec<(u64, Vec<u8>)>, BenchError> {
    let blocks = layout.blocks();
    let wanted = (sample_bytes / u64::from(layout.block_size)).max(1);
    let stride = (blocks / wanted).max(1);
    let mut out = Vec::new();
    let mut taken = 0u64;
    let mut read = 0u64;
    // Two passes: evenly spaced blocks first, then the rest in order, until the sample is full.
    let spaced = (0..blocks).step_by(stride as usize);
    let rest = (0..blocks).filter(|b| b % stride != 0);
    for block in spaced.chain(rest) {
        if taken >= sample_bytes || read >= sample_bytes.saturating_mul(SAMPLE_SEARCH_FACTOR) {
            break;
        }
        let offset = block * u64::from(layout.block_size);
        let len = layout.block_len(block);
        if source.is_unallocated(offset, len) {
            continue;
        }
        let mut data = vec![0u8; len as usize];
        source
            .read_at(offset, &mut data)
            .map_err(|e| BenchError::Source { offset, source: e })?;
        source.release(offset, len);
        read += len;
        if !is_zero(&data) {
            taken += len;
            out.push((block, data));
        }
    }
    Ok(out)
}

/// Timed passes per stage; the fastest counts (the others met page faults, cold caches or
/// a busy neighbour).
pub(crate) const PASSES: usize = 3;

/// Bytes per second of the fastest of [`PASSES`] runs of `pass`, which handles `bytes`.
fn best_rate(bytes: u64, mut pass: impl FnMut()) -> f64 {
    best_rate_prepared(bytes, || (), |()| pass())
}

/// [`best_rate`] of a pass that consumes what `prepare` makes for it (untimed).
pub(crate) fn best_rate_prepared<T>(
    bytes: u64,
    mut prepare: impl FnMut() -> T,
    mut pass: impl FnMut(T),
) -> f64 {
    let best = (0..PASSES)
        .map(|_| {
            let input = prepare();
            let start = Instant::now();
            pass(input);
            start.elapsed()
        })
        .min()
        .unwrap_or_default();
    bytes as f64 / best.as_secs_f64().max(1e-9)
}

/// Time each stage alone on `sample` (single-threaded, as one pipeline thread runs them, with
/// one reused zstd context per block length, as the pipeline keeps one per thread).
pub fn stage_rates(sample: &[Vec<u8>], zstd_level: i32, digest_key: &[u8; 32]) -> StageRates {
    stage_rates_and_lengths(sample, zstd_level, digest_key).0
}

/// [`stage_rates`], and the stored payload length of each sample block.
fn stage_rates_and_lengths(
    sample: &[Vec<u8>],
    zstd_level: i32,
    digest_key: &[u8; 32],
) -> (StageRates, Vec<usize>) {
    let plain: u64 = sample.iter().map(|b| b.len() as u64).sum();
    let blake3_keyed = best_rate(plain, || {
        for block in sample {
            std::hint::black_box(blake3::keyed_hash(digest_key, block));
        }
    });
    let mut compressors = BTreeMap::new();
    for block in sample {
        compressors
            .entry(block.len())
            .or_insert_with(|| block_compressor(zstd_level, block.len()));
    }
    let mut stored: Vec<Vec<u8>> = Vec::new();
    let zstd = best_rate(plain, || {
        stored = sample
            .iter()
            .map(|block| {
                let mut out = Vec::with_capacity(block.len());
                let compressed = compressors
                    .get_mut(&block.len())
                    .and_then(Option::as_mut)
                    .and_then(|c| c.compress_to_buffer(block, &mut out).ok());
                match compressed {
                    Some(n) if n < block.len() => out,
                    _ => block.clone(),
                }
            })
            .collect();
    });
    let stored_bytes: u64 = stored.iter().map(|b| b.len() as u64).sum();
    // Sealed under the digest key with counter nonces: these payloads are timed and dropped,
    // never stored.
    let cipher = Aes256Gcm::new_from_slice(digest_key).expect("32-byte key");
    let nonce = |i: usize| {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
        Nonce::from(nonce)
    };
    let seal = |payloads: &mut [Vec<u8>]| -> Vec<Option<aes_gcm::Tag>> {
        payloads
            .iter_mut()
            .enumerate()
            .map(|(i, payload)| {
                cipher
                    .encrypt_inout_detached(&nonce(i), b"bench", payload.as_mut_slice().into())
                    .ok()
            })
            .collect()
    };
    let mut scratch = stored.clone();
    let aes_256_gcm = best_rate(stored_bytes, || {
        std::hint::black_box(seal(&mut scratch));
    });
    let mut sealed = stored.clone();
    let tags = seal(&mut sealed);
    let aes_256_gcm_open = best_rate_prepared(
        stored_bytes,
        || sealed.clone(),
        |mut copies| {
            for (i, (payload, tag)) in copies.iter_mut().zip(&tags).enumerate() {
                let opened = tag.as_ref().map(|tag| {
                    cipher.decrypt_inout_detached(
                        &nonce(i),
                        b"bench",
                        payload.as_mut_slice().into(),
                        tag,
                    )
                });
                std::hint::black_box(opened.is_some_and(|r| r.is_ok()));
            }
        },
    );
    let crc32c = best_rate(stored_bytes, || {
        for payload in &stored {
            std::hint::black_box(crc32c::crc32c(payload));
        }
    });
    let mut decompressor = zstd::bulk::Decompressor::new().ok();
    let mut out = vec![0u8; sample.iter().map(Vec::len).max().unwrap_or(0)];
    let zstd_decompress = best_rate(plain, || {
        for (block, payload) in sample.iter().zip(&stored) {
            if let (true, Some(d)) = (payload.len() < block.len(), decompressor.as_mut()) {
                let done = d.decompress_to_buffer(payload, &mut out[..block.len()]);
                std::hint::black_box(done.is_ok());
            }
        }
    });
    let rates = StageRates {
        sample_bytes: plain,
        blake3_keyed,
        zstd,
        stored_ratio: stored_bytes as f64 / plain.max(1) as f64,
        aes_256_gcm,
        crc32c,
        aes_256_gcm_open,
        zstd_decompress,
    };
    (rates, stored.iter().map(Vec::len).collect())
}

/// Plain bytes per second the current rayon pool's threads encode together, each running the
/// pipeline's codec ([`BlockCodec::encode`]: keyed BLAKE3, zstd at `zstd_level`, AES-256-GCM,
/// CRC-32C) over all of `sample` at the same time; the fastest of three passes. The keys are
/// made for this and dropped (every record is discarded), and each block of each pass and
/// thread gets its own nonce.
pub fn transforms_on_threads(sample: &[Vec<u8>], zstd_level: i32) -> f64 {
    let mut material = [0u8; 64];
    rand_core::RngCore::fill_bytes(&mut rand_chacha::ChaCha8Rng::from_os_rng(), &mut material);
    let identity = Identity::from_key_material(
        crate::keys::KeyId([0; 20]),
        "CN=bench transforms".into(),
        &material,
    );
    let codec = BlockCodec::new(&identity.disk_keys("transforms"), zstd_level, true);
    let plain: u64 = sample.iter().map(|b| b.len() as u64).sum();
    let threads = rayon::current_num_threads();
    let mut pass = 0u32;
    best_rate(plain * threads as u64, || {
        pass += 1;
        rayon::broadcast(|ctx| {
            for (i, block) in sample.iter().enumerate() {
                let mut nonce = [0u8; 12];
                nonce[..4].copy_from_slice(&pass.to_le_bytes());
                nonce[4..6].copy_from_slice(&(ctx.index() as u16).to_le_bytes());
                nonce[6..].copy_from_slice(&(i as u64).to_le_bytes()[..6]);
                std::hint::black_box(codec.encode(i as u64, 0, block, nonce));
            }
        });
    })
}

/// What a bench run writes to and reads from.
#[allow(missing_debug_implementations)]
pub struct BenchTarget<'a> {
    pub store: &'a dyn PageBlobStore,
    pub container: &'a str,
    /// A name no replica has yet in that container.
    pub name: &'a str,
    pub identity: &'a Identity,
    pub clock: &'a dyn Clock,
}

/// Run the whole measurement. `stage` is told what runs next ("stages", "initial",
/// "churn 1%", "verify").
pub fn run_bench(
    source: &dyn BlockSource,
    target: &BenchTarget<'_>,
    config: &BenchConfig,
    stage: &dyn Fn(&str),
) -> Result<BenchReport, BenchError> {
    let layout = Layout {
        disk_size: source.disk_size(),
        block_size: config.block_size,
    };
    let churn_blocks = config.validate(layout.disk_size)?;
    let blocks = layout.blocks();
    let keys = target.identity.disk_keys(target.name);

    stage("stages");
    let (positions, sample): (Vec<u64>, Vec<Vec<u8>>) =
        sample_blocks(source, &layout, config.stage_sample_bytes)?
            .into_iter()
            .unzip();
    let timed = (!sample.is_empty())
        .then(|| stage_rates_and_lengths(&sample, config.zstd_level, keys.digest.expose()));
    let transforms_on_threads =
        (!sample.is_empty()).then(|| transforms_on_threads(&sample, config.zstd_level));
    drop(sample);

    let replica = DiskReplica::open(target.store, target.container, target.name, layout)?;
    let (stages, io) = match timed {
        Some((rates, stored_lens)) => {
            let scratch = BlobPath::new(target.container, &format!("{}.stages", target.name));
            let io = io_stages::io_rates(
                source,
                &layout,
                &positions,
                &stored_lens,
                target.store,
                &scratch,
            )?;
            (Some(rates), Some(io))
        }
        None => (None, None),
    };
    let mut nonces = NonceSource::new_epoch(&mut rand_chacha::ChaCha8Rng::from_os_rng());
    let mut churned = ChurnedSource::new(source, config.block_size);
    let mut cache = crate::cycle::CycleCache::default();
    let mut cycle = |churned: &ChurnedSource<'_, dyn BlockSource>,
                     selection: Selection,
                     churn_percent: Option<f64>|
     -> Result<CycleFigures, BenchError> {
        let options = CycleOptions {
            selection,
            zstd_level: config.zstd_level,
            encrypt: config.encrypt,
            upload_threads: config.upload_threads,
            ..CycleOptions::scan(target.clock.now_nanos())
        };
        let pool_cpu = pool_cpu_seconds();
        let cpu = process_cpu_seconds();
        let start = Instant::now();
        let report = run_cycle_cached(
            &replica,
            churned,
            target.identity,
            &keys,
            &options,
            &mut nonces,
            &|_| {},
            &mut cache,
        )?;
        let seconds = start.elapsed().as_secs_f64();
        // The pool's window inside the process's: the pool's share is never overstated.
        let pool_cpu_seconds = pool_cpu.zip(pool_cpu_seconds()).map(|(a, b)| b - a);
        Ok(CycleFigures {
            churn_percent,
            seconds,
            cpu_seconds: cpu.zip(process_cpu_seconds()).map(|(a, b)| b - a),
            pool_cpu_seconds,
            serial_cpu_seconds: report.serial_cpu_seconds,
            outside_groups_seconds: report.outside_groups_seconds,
            blocks_examined: report.blocks_examined,
            blocks_changed: report.blocks_changed,
            bytes_read: report.bytes_read,
            bytes_changed: report.bytes_changed,
            bytes_sent: report.bytes_sent,
        })
    };

    stage("initial");
    let initial = cycle(&churned, Selection::Scan, None)?;
    let mut deltas = Vec::new();
    let mut content = RealisticContent::new(config.seed);
    let mut buf = Vec::new();
    for (&percent, &count) in config.churn_percents.iter().zip(&churn_blocks) {
        // Distinct blocks chosen from the seeded stream, each rewritten with new content of a
        // kind drawn as the disk's (a tenth of the writes zero their block: trims, freed space).
        let mut changed = std::collections::BTreeSet::new();
        while (changed.len() as u64) < count {
            changed.insert(content.below(blocks));
        }
        for &block in &changed {
            let kind = match content.below(10) {
                0 => ContentKind::Zeros,
                _ => match content.next_kind() {
                    ContentKind::Zeros => ContentKind::Text,
                    kind => kind,
                },
            };
            content.fill(kind, layout.block_len(block) as usize, &mut buf);
            churned.replace(block, std::mem::take(&mut buf));
        }
        stage(&format!("churn {percent}%"));
        let selection = Selection::Blocks(changed.into_iter().collect());
        deltas.push(cycle(&churned, selection, Some(percent))?);
    }

    let (restore, verify_seconds) = if config.verify {
        let codec = BlockCodec::new(&keys, config.zstd_level, config.encrypt);
        let (restore, verify) = restore_and_verify(&replica, &codec, &keys, &churned, stage)?;
        (Some(restore), Some(verify))
    } else {
        (None, None)
    };

    Ok(BenchReport {
        disk_size: layout.disk_size,
        block_size: config.block_size,
        blocks,
        zstd_level: config.zstd_level,
        encrypt: config.encrypt,
        upload_threads: config.upload_threads,
        pipeline_threads: rayon::current_num_threads(),
        cores: std::thread::available_parallelism().map_or(1, usize::from),
        stages,
        transforms_on_threads,
        io,
        initial,
        deltas,
        restore,
        verify_seconds,
    })
}

/// The last point restored as `verify` restores it (every record fetched, opened, decompressed
/// and hashed by the pool, the Merkle root proven; the blocks go nowhere), timed; then restored
/// again, each block compared with `disk` as the last cycle saw it. The seconds of the second.
fn restore_and_verify(
    replica: &DiskReplica<'_>,
    codec: &BlockCodec,
    keys: &crate::keys::DiskKeys,
    disk: &dyn BlockSource,
    stage: &dyn Fn(&str),
) -> Result<(RestoreFigures, f64), BenchError> {
    let digest_key = keys.digest.expose();
    let points = replica.points(digest_key)?;
    let last = points.last().ok_or(BenchError::NoPoint)?;
    stage("restore");
    let cpu = process_cpu_seconds();
    let start = Instant::now();
    let mut bytes_restored = 0u64;
    replica.restore_blocks(codec, last, digest_key, |_, data| {
        bytes_restored += data.map_or(0, |d| d.len() as u64);
        Ok(())
    })?;
    let restore = RestoreFigures {
        seconds: start.elapsed().as_secs_f64(),
        cpu_seconds: cpu.zip(process_cpu_seconds()).map(|(a, b)| b - a),
        bytes_restored,
    };
    stage("verify");
    let start = Instant::now();
    let block_size = u64::from(replica.layout.block_size);
    let mut expected = Vec::new();
    let mut mismatch = None;
    // The disk's pages read so far are given back a group's worth at a time, as a cycle gives
    // them back (one `MADV_DONTNEED` per block made every other core of the process flush its
    // TLB: two such interrupts per 64 KiB).
    let mut held_from = 0;
    replica.restore(codec, last, digest_key, |block, bytes| {
        let offset = block * block_size;
        expected.resize(bytes.len(), 0);
        disk.read_at(offset, &mut expected)?;
        let end = offset + bytes.len() as u64;
        if end.saturating_sub(held_from) >= crate::cycle::GROUP_BYTES {
            disk.release(held_from, end - held_from);
            held_from = end;
        }
        if mismatch.is_none() && expected != bytes {
            mismatch = Some(block);
        }
        Ok(())
    })?;
    disk.release(held_from, disk.disk_size().saturating_sub(held_from));
    if let Some(block) = mismatch {
        return Err(BenchError::Mismatch { block });
    }
    Ok((restore, start.elapsed().as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;
    use pageblob::clock::ManualClock;
    use pageblob::data_log::Durability;
    use pageblob::{Emulator, Profile};
    use synthetic::write_realistic_disk;

    /// A disk in memory; once `lie` is set, every read returns other bytes.
    struct MemDisk {
        bytes: Vec<u8>,
        lie: AtomicBool,
        read: std::sync::atomic::AtomicU64,
    }

    impl BlockSource for MemDisk {
        fn disk_size(&self) -> u64 {
            self.bytes.len() as u64
        }
        fn is_unallocated(&self, _: u64, _: u64) -> bool {
            false
        }
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            buf.copy_from_slice(&self.bytes[offset as usize..offset as usize + buf.len()]);
            self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
            if self.lie.load(Ordering::Relaxed) {
                buf[0] ^= 1;
            }
            Ok(())
        }
    }

    fn disk(size: u64) -> MemDisk {
        let mut bytes = Vec::new();
        write_realistic_disk(&mut bytes, size, 4).unwrap();
        MemDisk {
            bytes,
            lie: AtomicBool::new(false),
            read: Default::default(),
        }
    }

    fn config(churn: &[f64]) -> BenchConfig {
        BenchConfig {
            block_size: 16384,
            zstd_level: 1,
            encrypt: true,
            upload_threads: 2,
            churn_percents: churn.to_vec(),
            seed: 9,
            stage_sample_bytes: 1 << 20,
            verify: true,
        }
    }

    fn with_target<T>(f: impl FnOnce(&BenchTarget<'_>) -> T) -> T {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
        let store = Emulator::open(
            dir.path(),
            Profile::Standard,
            Durability::Process,
            clock.clone(),
        )
        .unwrap();
        let (_, pfx) = crate::registration::register("v", "h", "pw", &*clock).unwrap();
        let identity = Identity::from_pfx(&pfx, "pw").unwrap();
        f(&BenchTarget {
            store: &store,
            container: "bench",
            name: "d",
            identity: &identity,
            clock: &*clock,
        })
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn the_pool_cpu_counts_every_pool_thread_and_no_other() {
        let thread_cpu = || thread_cpu_seconds().unwrap();
        let spin = |seconds: f64| {
            let start = thread_cpu();
            while thread_cpu() - start < seconds {
                std::hint::black_box(0u64);
            }
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let (pool_used, process_used) = pool.install(|| {
            let (pool_before, process_before) = (pool_cpu_seconds(), process_cpu_seconds());
            // 30 ms on each of the three pool threads, 100 ms on a thread outside the pool.
            rayon::broadcast(|_| spin(0.03));
            std::thread::scope(|s| {
                s.spawn(|| spin(0.1));
            });
            let pool_after = pool_cpu_seconds();
            let process_after = process_cpu_seconds();
            (
                pool_after.unwrap() - pool_before.unwrap(),
                process_after.unwrap() - process_before.unwrap(),
            )
        });
        // Each pool thread's 30 ms (and whatever the idle threads spun), not the other's 100 ms.
        assert!((0.09..0.18).contains(&pool_used), "{pool_used}");
        assert!(
            process_used >= pool_used + 0.1,
            "{process_used} {pool_used}"
        );
        let figures = CycleFigures {
            churn_percent: None,
            seconds: 0.1,
            cpu_seconds: Some(process_used),
            pool_cpu_seconds: Some(pool_used),
            serial_cpu_seconds: None,
            outside_groups_seconds: 0.0,
            blocks_examined: 0,
            blocks_changed: 0,
            bytes_read: 0,
            bytes_changed: 0,
            bytes_sent: 0,
        };
        assert!(figures.other_cpu_seconds().unwrap() >= 0.1);
        let unused = figures.unused_core_seconds(4).unwrap();
        assert!(
            (unused - (0.4 - process_used).max(0.0)).abs() < 1e-9,
            "{unused}"
        );
    }

    #[test]
    fn a_bench_replicates_the_disk_changes_the_churn_asked_and_restores_the_last_point() {
        let disk = disk(6 << 20);
        let nonzero_blocks = disk
            .bytes
            .chunks(16384)
            .filter(|b| b.iter().any(|&x| x != 0))
            .count() as u64;
        let stages = std::sync::Mutex::new(Vec::new());
        let (report, blobs) = with_target(|t| {
            let report = run_bench(&disk, t, &config(&[1.0, 10.0]), &|s| {
                stages.lock().unwrap().push(s.to_string())
            });
            let blobs: Vec<String> = t
                .store
                .list_blobs("bench", "", false)
                .unwrap()
                .into_iter()
                .map(|b| b.name)
                .collect();
            (report, blobs)
        });
        let report = report.unwrap();
        assert_eq!(
            stages.into_inner().unwrap(),
            [
                "stages",
                "initial",
                "churn 1%",
                "churn 10%",
                "restore",
                "verify"
            ]
        );
        // The I/O stages' scratch blobs are gone; the replica's blobs stay.
        assert!(blobs.iter().all(|b| !b.contains(".stages")), "{blobs:?}");
        assert!(blobs.contains(&"d.replica".to_string()), "{blobs:?}");
        let io = report.io.as_ref().unwrap();
        assert!(io.source_read > 0.0 && io.store_write > 0.0 && io.store_read > 0.0);
        // Records are a header page and the payload: more than the stored payloads alone.
        assert!(io.record_ratio > report.stages.as_ref().unwrap().stored_ratio);
        let restore = report.restore.as_ref().unwrap();
        assert!(restore.bytes_restored > 0 && restore.bytes_restored <= 384 * 16384);
        assert!(report.restore_bound().unwrap() > 0.0);
        // The I/O stages can only lower the bound.
        let with_io = report.replication_bound().unwrap();
        let transforms = report.pipeline_bound().unwrap();
        assert!(
            with_io > 0.0 && with_io <= transforms,
            "{with_io} {transforms}"
        );
        assert_eq!(report.blocks, 384);
        // The transforms measured on the pool's threads at once, and the cycle against them.
        let measured = report.transforms_on_threads.unwrap();
        let efficiency = report.measured_efficiency().unwrap();
        assert!(measured > 0.0 && efficiency > 0.0 && efficiency.is_finite());
        // The pipeline's own counters of its serial part, and the projection they give.
        let serial = report.initial.serial_cpu_seconds.unwrap();
        assert!(serial > 0.0 && serial <= report.initial.cpu_seconds.unwrap());
        let outside = report.initial.outside_groups_seconds;
        assert!(outside > 0.0 && outside < report.initial.seconds);
        assert!(report.serial_ceiling_threads().unwrap() > 0.0);
        let projected: Vec<f64> = [1, 2, 16]
            .map(|n| report.projected_efficiency(n).unwrap())
            .to_vec();
        assert!(
            projected[0] <= 1.0 && projected[1] <= projected[0] && projected[2] <= projected[1],
            "{projected:?}"
        );
        assert_eq!(report.initial.blocks_changed, nonzero_blocks);
        assert_eq!(report.initial.bytes_changed, nonzero_blocks * 16384);
        assert!(
            report.initial.bytes_sent > 0 && report.initial.bytes_sent < disk.bytes.len() as u64
        );
        // 1% and 10% of 384 blocks: 4 and 38 chosen; a zero written over zeros is no change.
        let changed: Vec<u64> = report.deltas.iter().map(|d| d.blocks_changed).collect();
        assert!((1..=4).contains(&changed[0]), "{changed:?}");
        assert!((25..=38).contains(&changed[1]), "{changed:?}");
        for d in &report.deltas {
            assert!(
                d.blocks_examined <= 38 && d.bytes_read <= 38 * 16384,
                "{d:?}"
            );
        }
        assert!(report.verify_seconds.is_some());
        let s = report.stages.as_ref().unwrap();
        assert_eq!(s.sample_bytes, 1 << 20);
        assert!(s.stored_ratio > 0.3 && s.stored_ratio < 1.0, "{s:?}");
        let bound = s.pipeline_bound(2);
        assert!(bound > 0.0 && bound < 2.0 * s.zstd, "{bound} {s:?}");
    }

    #[test]
    fn a_last_point_that_differs_from_the_disk_is_reported() {
        let disk = disk(2 << 20);
        let err = with_target(|t| {
            run_bench(&disk, t, &config(&[5.0]), &|s| {
                if s == "verify" {
                    disk.lie.store(true, Ordering::Relaxed);
                }
            })
        })
        .unwrap_err();
        assert!(matches!(err, BenchError::Mismatch { .. }), "{err}");
    }

    #[test]
    fn settings_out_of_range_are_refused_before_any_work() {
        let disk = disk(1 << 20);
        let refuse = |c: BenchConfig| {
            let err = with_target(|t| run_bench(&disk, t, &c, &|s| panic!("ran {s}"))).unwrap_err();
            err.to_string()
        };
        assert!(refuse(config(&[101.0])).contains("101% is not between 0 and 100"));
        assert!(refuse(config(&[f64::NAN])).contains("NaN"));
        assert!(refuse(BenchConfig {
            block_size: 3000,
            ..config(&[])
        })
        .contains("block_size_kib"));
        assert!(refuse(BenchConfig {
            stage_sample_bytes: 0,
            ..config(&[])
        })
        .contains("stage sample"));
        // A big disk whose churn would not fit in memory.
        let big = ChurnedSource::new(&disk, 16384);
        struct Huge<'a>(ChurnedSource<'a, MemDisk>);
        impl BlockSource for Huge<'_> {
            fn disk_size(&self) -> u64 {
                1 << 40
            }
            fn is_unallocated(&self, _: u64, _: u64) -> bool {
                true
            }
            fn read_at(&self, o: u64, b: &mut [u8]) -> std::io::Result<()> {
                self.0.read_at(o % (1 << 20), b)
            }
        }
        let err =
            with_target(|t| run_bench(&Huge(big), t, &config(&[1.0]), &|s| panic!("ran {s}")))
                .unwrap_err();
        assert!(err.to_string().contains("held in memory"), "{err}");
    }

    #[test]
    fn the_sample_is_spread_over_the_disk_and_its_search_is_bounded() {
        let layout = Layout {
            disk_size: 48 << 20,
            block_size: 65536,
        };
        // Allocated zeros only: nothing to time, and at most 16 samples' worth is read.
        let zeros = MemDisk {
            bytes: vec![0; 48 << 20],
            lie: AtomicBool::new(false),
            read: Default::default(),
        };
        assert!(sample_blocks(&zeros, &layout, 1 << 20).unwrap().is_empty());
        assert_eq!(zeros.read.load(Ordering::Relaxed), 16 << 20);
        // Data in the last quarter only: the evenly spaced pass finds it (every 24th block, 8 of
        // them there); the in-order pass then runs out of budget among the zeros before it.
        let mut tail = vec![0u8; 48 << 20];
        tail[36 << 20..].fill(5);
        let tail = MemDisk {
            bytes: tail,
            lie: AtomicBool::new(false),
            read: Default::default(),
        };
        let sample = sample_blocks(&tail, &layout, 2 << 20).unwrap();
        assert_eq!(sample.len(), 8);
        assert_eq!(tail.read.load(Ordering::Relaxed), 32 << 20);
        assert!(sample.iter().all(|b| b.1.iter().all(|&x| x == 5)));
    }

    proptest::proptest! {
        #[test]
        fn a_churned_source_reads_like_the_disk_with_the_blocks_written(
            replaced in proptest::collection::vec((0u64..20, 0u8..255), 0..8),
            reads in proptest::collection::vec((0u64..20 * 4096, 1usize..3 * 4096), 1..8),
        ) {
            // A 20-block disk of 4 KiB blocks whose last block is short.
            let size = 19 * 4096 + 1000;
            let base = MemDisk {
                bytes: (0..size).map(|i| (i % 251) as u8).collect(),
                lie: AtomicBool::new(false),
                read: Default::default(),
            };
            let mut model = base.bytes.clone();
            let mut churned = ChurnedSource::new(&base, 4096);
            for (block, fill) in replaced {
                let start = (block * 4096) as usize;
                let end = (start + 4096).min(size);
                churned.replace(block, vec![fill; end - start]);
                model[start..end].fill(fill);
            }
            for (offset, len) in reads {
                let offset = offset % size as u64;
                let len = len.min(size - offset as usize);
                if len == 0 {
                    continue;
                }
                let mut buf = vec![0u8; len];
                churned.read_at(offset, &mut buf).unwrap();
                proptest::prop_assert_eq!(&buf[..], &model[offset as usize..offset as usize + len]);
            }
        }
    }

    #[test]
    fn a_churned_source_reads_replaced_blocks_over_the_disk() {
        let disk = disk(1 << 20);
        let mut churned = ChurnedSource::new(&disk, 16384);
        churned.replace(2, vec![7; 16384]);
        churned.replace(3, vec![8; 16384]);
        // A read across the replaced blocks and their neighbours.
        let mut buf = vec![0u8; 4 * 16384];
        churned.read_at(16384 + 100, &mut buf[..3 * 16384]).unwrap();
        let mut expected = disk.bytes[16384 + 100..4 * 16384 + 100].to_vec();
        expected[16384 - 100..2 * 16384 - 100].fill(7);
        expected[2 * 16384 - 100..3 * 16384 - 100].fill(8);
        assert!(buf[..3 * 16384] == expected[..]);
        assert_eq!(churned.held_bytes(), 2 * 16384);
    }
}
