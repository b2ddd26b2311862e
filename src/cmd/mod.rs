//! One module per command group.

pub mod bench;
pub mod bench_compare;
pub mod blob;
pub mod plan;
pub mod proxy;
pub mod register;
pub mod replicate;
pub mod sim;
pub mod vhdx;

/// `--threads N`: the size of the pool a command decodes (or encodes) blocks in.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Threads {
    /// Threads that fetch, authenticate, decompress and hash blocks; default: one per core.
    #[arg(long = "threads", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
}

impl Threads {
    /// Run `work` in a pool of this many threads (the calling thread waits, so the work gets
    /// exactly that many), or in rayon's global pool (one per core) when none was asked for.
    pub fn run<T: Send>(self, work: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        use anyhow::Context;
        match self.threads {
            None => Ok(work()),
            Some(n) => Ok(rayon::ThreadPoolBuilder::new()
                .num_threads(usize::from(n))
                .build()
                .context("the thread pool")?
                .install(work)),
        }
    }
}
