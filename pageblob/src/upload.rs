//! Bulk upload into a page blob over any [`PageBlobStore`]: Put Page calls of at most 4 MiB,
//! `threads` of them in flight (ASR's UploadThreadsPerVM: default 4, at most 32). Each worker
//! takes the next chunk as soon as its previous one is acknowledged, reading it itself, so
//! reading and sending overlap and no worker waits for the others.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use thiserror::Error;

use super::error::StoreError;
use super::types::{BlobPath, Conditions, MAX_PUT_PAGES_BYTES};
use super::PageBlobStore;
use crate::is_zero;

/// Why an upload stopped.
#[derive(Debug, Error)]
pub enum UploadError {
    #[error("reading the source at byte {offset}: {source}")]
    Read { offset: u64, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Upload `len` bytes (a multiple of 512) to `offset` of the blob at `path`; `fill(at, buf)`
/// supplies source bytes `at..at + buf.len()`. With `skip_zero`, all-zero chunks are not sent
/// (right for a blob just created, which reads zeros). Returns the bytes sent. The first error
/// stops every worker.
pub fn upload_chunks(
    store: &dyn PageBlobStore,
    path: &BlobPath,
    offset: u64,
    len: u64,
    threads: usize,
    skip_zero: bool,
    fill: &(dyn Fn(u64, &mut [u8]) -> std::io::Result<()> + Sync),
) -> Result<u64, UploadError> {
    let threads = threads.clamp(1, 32) as u64;
    let chunks = len.div_ceil(MAX_PUT_PAGES_BYTES);
    let next = AtomicU64::new(0);
    let sent = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    let send_one = |buf: &mut Vec<u8>, index: u64| -> Result<(), UploadError> {
        let at = index * MAX_PUT_PAGES_BYTES;
        let n = (len - at).min(MAX_PUT_PAGES_BYTES) as usize;
        buf.resize(n, 0);
        fill(at, buf).map_err(|source| UploadError::Read { offset: at, source })?;
        if skip_zero && is_zero(buf) {
            return Ok(());
        }
        store.put_pages(path, offset + at, buf, &Conditions::default())?;
        sent.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    };
    std::thread::scope(|scope| {
        for _ in 0..threads.min(chunks) {
            scope.spawn(|| {
                let mut buf = Vec::with_capacity(MAX_PUT_PAGES_BYTES as usize);
                while !failed.load(Ordering::Relaxed) {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= chunks {
                        break;
                    }
                    if let Err(e) = send_one(&mut buf, index) {
                        failed.store(true, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                        break;
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(sent.into_inner()),
    }
}

/// Upload `data` (a multiple of 512 bytes) at `offset`, every chunk sent (zeros included).
pub fn upload_parallel(
    store: &dyn PageBlobStore,
    path: &BlobPath,
    offset: u64,
    data: &[u8],
    threads: usize,
) -> Result<(), StoreError> {
    let fill = |at: u64, buf: &mut [u8]| {
        buf.copy_from_slice(&data[at as usize..at as usize + buf.len()]);
        Ok(())
    };
    match upload_chunks(
        store,
        path,
        offset,
        data.len() as u64,
        threads,
        false,
        &fill,
    ) {
        Ok(_) => Ok(()),
        Err(UploadError::Store(e)) => Err(e),
        Err(UploadError::Read { .. }) => unreachable!("copying from memory does not fail"),
    }
}
