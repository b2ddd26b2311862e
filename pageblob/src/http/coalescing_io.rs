//! A server connection's socket whose short answers wait until the server has nothing more to
//! read: the answers to a client's pipelined requests leave together instead of one send (and
//! one wake-up of the client) each.
//!
//! hyper flushes after every answer. Here such a flush of fewer than [`HOLD_BYTES`] sends
//! nothing when the client's next request has already arrived (read ahead and handed to the
//! server's next read); otherwise, and when a read would wait, when more would not fit, or at
//! shutdown, what is held is sent. So nothing waits on the client, and a connection holds at
//! most [`HOLD_BYTES`] of answers (hyper's own `pipeline_flush` does the
//! same with a write buffer that has no bound: a client that stops reading a long answer would
//! have all of it held).
//!
//! Answers may also wait for a sync ([`SyncDebt`]): a store at power durability answers a Put
//! Page before the sync that makes it durable, and the answer leaves only once that sync is
//! made. hyper reads a connection's next request only after answering the one before, so a
//! client's 32 pipelined records would otherwise each wait for a sync of their own; this way
//! the lot shares one. No byte leaves this socket while a sync is owed: an answer sent is a
//! write made durable.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes of answers held back (about fifty Put Page answers).
pub const HOLD_BYTES: usize = 16 << 10;

/// Makes the writes up to a ticket durable (a store's `sync_owed`); run on a blocking thread.
pub type PaySync = Arc<dyn Fn(u64) -> io::Result<()> + Send + Sync>;

/// The sync a connection's store owes before the answers held for it may leave: the highest
/// ticket owed, and how to pay it.
#[derive(Default)]
pub struct SyncDebt {
    owed: Mutex<Option<(u64, PaySync)>>,
}

impl std::fmt::Debug for SyncDebt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let owed = self.owed.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("SyncDebt")
            .field("owed", &owed.as_ref().map(|(ticket, _)| *ticket))
            .finish()
    }
}

impl SyncDebt {
    /// Owe `ticket` (and every earlier one), paid with `pay`.
    pub fn owe(&self, ticket: u64, pay: PaySync) {
        let mut owed = self.owed.lock().unwrap_or_else(|p| p.into_inner());
        if owed.as_ref().is_none_or(|(t, _)| *t < ticket) {
            *owed = Some((ticket, pay));
        }
    }

    fn take(&self) -> Option<(u64, PaySync)> {
        self.owed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// `inner` with short writes held back until a read would wait, and every write until the
/// sync owed is paid.
pub struct CoalescingIo<T> {
    inner: T,
    /// Written by the server, not yet sent.
    held: Vec<u8>,
    /// How much of `held` has been sent.
    sent: usize,
    /// A long answer is being written: writes pass through until the next flush.
    passing: bool,
    /// Read from the client while answers were held (its next requests), not yet taken.
    ahead: Vec<u8>,
    /// The read that filled `ahead` met the end of the stream or an error (given next).
    ahead_end: Option<io::Result<()>>,
    /// What the store owes before anything is sent.
    debt: Arc<SyncDebt>,
    /// A sync being made (on a blocking thread) before what is held may leave.
    paying: Option<tokio::task::JoinHandle<io::Result<()>>>,
    /// A sync failed: nothing is sent from then on (a later flush or shutdown would otherwise
    /// send answers to writes that were never made durable).
    sync_failed: bool,
}

impl<T> std::fmt::Debug for CoalescingIo<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoalescingIo")
            .field("held", &self.held.len())
            .field("ahead", &self.ahead.len())
            .field("debt", &self.debt)
            .field("paying", &self.paying.is_some())
            .finish_non_exhaustive()
    }
}

impl<T> CoalescingIo<T> {
    pub fn new(inner: T) -> CoalescingIo<T> {
        CoalescingIo::owing(inner, Arc::default())
    }

    /// Sending nothing while `debt` is owed.
    pub fn owing(inner: T, debt: Arc<SyncDebt>) -> CoalescingIo<T> {
        CoalescingIo {
            inner,
            held: Vec::new(),
            sent: 0,
            passing: false,
            ahead: Vec::new(),
            ahead_end: None,
            debt,
            paying: None,
            sync_failed: false,
        }
    }

    /// Pay what is owed: ready once no sync is owed (a failed sync is an error: nothing held
    /// is sent, and the connection ends).
    fn poll_pay(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.sync_failed {
                return Poll::Ready(Err(io::Error::other(
                    "a sync failed: the answers it held are never sent",
                )));
            }
            if let Some(paying) = &mut self.paying {
                let paid = ready!(Pin::new(paying).poll(cx));
                self.paying = None;
                if let Err(e) = paid.map_err(io::Error::other).and_then(|r| r) {
                    self.sync_failed = true;
                    self.held.clear();
                    self.sent = 0;
                    return Poll::Ready(Err(e));
                }
            }
            match self.debt.take() {
                None => return Poll::Ready(Ok(())),
                Some((ticket, pay)) => {
                    self.paying = Some(tokio::task::spawn_blocking(move || pay(ticket)));
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> CoalescingIo<T> {
    /// Send everything held, once what is owed is paid.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pay(cx))?;
        while self.sent < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> CoalescingIo<T> {
    /// Whether the client has sent more than the server has read: what is already read ahead,
    /// or a read made now that does not wait (kept for the server's next read).
    fn client_sent_more(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.ahead.is_empty() || self.ahead_end.is_some() {
            return !self.ahead.is_empty();
        }
        let mut chunk = [0u8; 16 << 10];
        let mut probe = ReadBuf::new(&mut chunk);
        match Pin::new(&mut self.inner).poll_read(cx, &mut probe) {
            Poll::Pending => false,
            Poll::Ready(Ok(())) if !probe.filled().is_empty() => {
                self.ahead.extend_from_slice(probe.filled());
                true
            }
            Poll::Ready(end) => {
                // The end of the stream, or an error: given to the server's next read, after
                // the answers are sent.
                self.ahead_end = Some(end);
                false
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for CoalescingIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.ahead.is_empty() {
            let n = this.ahead.len().min(buf.remaining());
            buf.put_slice(&this.ahead[..n]);
            this.ahead.drain(..n);
            return Poll::Ready(Ok(()));
        }
        if let Some(end) = this.ahead_end.take() {
            return Poll::Ready(end);
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending if !this.held.is_empty() => {
                // Nothing more to answer for now: what is held goes out before the wait.
                match this.poll_send_held(cx) {
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    _ => Poll::Pending,
                }
            }
            other => other,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for CoalescingIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.passing && this.held.len() + buf.len() <= HOLD_BYTES {
            this.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        // A long answer: what is held goes first, then everything until the next flush
        // passes straight through.
        ready!(this.poll_send_held(cx))?;
        this.passing = true;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if !this.passing && this.held.len() + len <= HOLD_BYTES {
            bufs.iter().for_each(|b| this.held.extend_from_slice(b));
            return Poll::Ready(Ok(len));
        }
        ready!(this.poll_send_held(cx))?;
        this.passing = true;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.passing && !this.held.is_empty() && this.client_sent_more(cx) {
            // The client's next requests are here: their answers join these. The server is
            // woken to read them (their arrival was taken here).
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_send_held(cx))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        this.passing = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An answer flushed while the client's next request is already there stays held; the
    /// next answer, flushed with nothing more to read, takes both out in one piece.
    #[tokio::test]
    async fn answers_wait_for_the_requests_already_sent_and_leave_together() {
        let (server_end, mut client) = tokio::io::duplex(1 << 20);
        let mut server = CoalescingIo::new(server_end);
        client.write_all(b"r1r2").await.unwrap();
        let mut two = [0u8; 2];
        server.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"r1");
        server.write_all(b"a1").await.unwrap();
        server.flush().await.unwrap();
        let mut probe = [0u8; 8];
        let early = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            client.read(&mut probe),
        )
        .await;
        assert!(
            early.is_err(),
            "an answer left while the next request waited"
        );
        server.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"r2", "the request read ahead is the server's next");
        server.write_all(b"a2").await.unwrap();
        server.flush().await.unwrap();
        let got = client.read(&mut probe).await.unwrap();
        assert_eq!(&probe[..got], b"a1a2");
        // A long answer is not held.
        let long = vec![7u8; HOLD_BYTES * 3];
        server.write_all(&long).await.unwrap();
        server.flush().await.unwrap();
        let mut back = vec![0u8; long.len()];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back, long);
        // Shutdown sends what is held.
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"bye");
    }

    /// Answers held while a sync is owed leave only once it is paid, all together; a sync that
    /// fails sends nothing and ends the connection's writes with its error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_owed_a_sync_leave_only_once_it_is_made() {
        let (server_end, mut client) = tokio::io::duplex(1 << 20);
        let debt = Arc::new(SyncDebt::default());
        let mut server = CoalescingIo::owing(server_end, Arc::clone(&debt));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Arc::new(Mutex::new(released));
        let paid = Arc::new(Mutex::new(Vec::new()));
        let pay: PaySync = {
            let (released, paid) = (Arc::clone(&released), Arc::clone(&paid));
            Arc::new(move |ticket| {
                released.lock().unwrap().recv().unwrap();
                paid.lock().unwrap().push(ticket);
                Ok(())
            })
        };
        debt.owe(3, Arc::clone(&pay));
        debt.owe(2, Arc::clone(&pay)); // an earlier ticket: 3 still owed
        server.write_all(b"a1").await.unwrap();
        debt.owe(7, Arc::clone(&pay));
        server.write_all(b"a2").await.unwrap();
        let flushing = tokio::spawn(async move {
            server.flush().await.unwrap();
            server
        });
        let mut probe = [0u8; 8];
        let early = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            client.read(&mut probe),
        )
        .await;
        assert!(early.is_err(), "an answer left before its sync was made");
        release.send(()).unwrap();
        let mut server = flushing.await.unwrap();
        let got = client.read(&mut probe).await.unwrap();
        assert_eq!(&probe[..got], b"a1a2");
        assert_eq!(
            *paid.lock().unwrap(),
            [7],
            "one sync, for the highest ticket"
        );
        // A sync that fails: what is held never leaves.
        debt.owe(8, Arc::new(|_| Err(io::Error::other("the disk is gone"))));
        server.write_all(b"a3").await.unwrap();
        let e = server.flush().await.unwrap_err();
        assert!(e.to_string().contains("the disk is gone"), "{e}");
        // Nor after it: a shutdown (or anything written later) sends nothing.
        assert!(server.write_all(b"a4").await.is_err() || server.flush().await.is_err());
        assert!(server.shutdown().await.is_err());
        drop(server);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }
}
