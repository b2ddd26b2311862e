//! Get Blob answers sent as they are read: a range of up to 256 MiB goes out in
//! [`READ_CHUNK_BYTES`] pieces, so a crowd of large concurrent reads holds a few chunks each, not
//! whole ranges.
//!
//! A blob (not a snapshot) can change while its answer is on the wire; after each chunk the
//! blob's ETag is compared with the one in the answer's headers, and on a change the answer is
//! cut short (the client sees a body shorter than its Content-Length, an error) rather than
//! mixing two versions.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use hyper::body::{Bytes, Frame};
use tokio::sync::mpsc;

use crate::types::BlobPath;
use crate::PageBlobStore;

/// Bytes read from the store per piece of an answer.
pub const READ_CHUNK_BYTES: usize = 1 << 20;

/// What one Get Blob answer reads.
pub struct BlobRead {
    pub store: Arc<dyn PageBlobStore>,
    pub path: BlobPath,
    pub snapshot: Option<String>,
    /// First byte.
    pub start: u64,
    pub len: u64,
    /// The ETag in the answer's headers (checked after each chunk of a blob).
    pub etag: String,
}

impl BlobRead {
    /// The answer's body. Inside a tokio runtime the chunks are read on the blocking pool as
    /// the client takes them; outside one (offline requests), it is read at once.
    pub fn into_body(self) -> Body {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // One chunk waiting while the next is read.
                let (tx, rx) = mpsc::channel(1);
                runtime.spawn(self.produce(tx));
                Body::new(Chunks(rx))
            }
            Err(_) => match self.read_chunk(self.start, self.len as usize) {
                Ok(data) => Body::from(data),
                Err(e) => Body::new(Failed(Some(e))),
            },
        }
    }

    async fn produce(self, tx: mpsc::Sender<io::Result<Bytes>>) {
        let this = Arc::new(self);
        let end = this.start + this.len;
        let mut at = this.start;
        while at < end {
            let n = (end - at).min(READ_CHUNK_BYTES as u64) as usize;
            let reader = Arc::clone(&this);
            let chunk = tokio::task::spawn_blocking(move || reader.read_chunk(at, n))
                .await
                .unwrap_or_else(|_| Err(io::Error::other("read task failed")));
            let failed = chunk.is_err();
            if tx.send(chunk.map(Bytes::from)).await.is_err() || failed {
                return; // the client left, or the answer is cut short
            }
            at += n as u64;
        }
    }

    /// `n` bytes at `at`, checked against the answer's ETag when reading a blob.
    fn read_chunk(&self, at: u64, n: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; n];
        let snapshot = self.snapshot.as_deref();
        self.store
            .read(&self.path, snapshot, at, &mut buf)
            .map_err(io::Error::other)?;
        if snapshot.is_none() {
            let now = self
                .store
                .properties(&self.path, None)
                .map_err(io::Error::other)?;
            if now.etag != self.etag {
                return Err(io::Error::other(format!(
                    "{}: changed while being read (ETag {} → {}); answer cut short",
                    self.path, self.etag, now.etag
                )));
            }
        }
        Ok(buf)
    }
}

/// Chunks as the producer sends them.
struct Chunks(mpsc::Receiver<io::Result<Bytes>>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|next| next.map(|chunk| chunk.map(Frame::data)))
    }
}

/// A body that fails at once (an offline read that failed after the headers were decided).
struct Failed(Option<io::Error>);

impl hyper::body::Body for Failed {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Poll::Ready(self.0.take().map(Err))
    }
}
