//! Requests sent back to back on one connection, their answers read after (HTTP/1.1
//! pipelining, RFC 9112 §9.3.2): the client's
//! [`put_pages_batch`](crate::PageBlobStore::put_pages_batch) over plain `http://` endpoints.
//! One synchronous request per record costs both ends a sleep and a wake-up per record; a batch
//! costs one. Only requests whose repeat changes nothing are sent this way: whatever gets no
//! answer (a broken or closed connection, an answer this reader does not take) is left to the
//! caller to send again on its own.

use std::io::{IoSlice, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::Duration;

use super::exchange::{Answer, Signed};

/// Longest answer head read (Azure's are under 2 KiB).
const MAX_HEAD_BYTES: usize = 64 << 10;
/// Longest answer body read for writes, answered with no body or a short XML error (reads
/// take the longest range they asked for).
const MAX_BODY_BYTES: usize = 1 << 20;
/// Most headers in one answer.
const MAX_HEADERS: usize = 64;
/// Idle connections kept.
const MAX_IDLE: usize = 64;
/// Interim answers (100 Continue) skipped before one answer: a server that sends nothing else
/// is not waited on for ever.
const MAX_INTERIM: usize = 8;

/// Connections to one `http://` endpoint for pipelined exchanges.
pub(super) struct Pipeline {
    /// `host:port` (as in the endpoint; also the `host` header).
    authority: String,
    connect_timeout: Duration,
    stall_timeout: Duration,
    idle: Mutex<Vec<TcpStream>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Pipelining for `endpoint` when it is plain `http://` (not TLS, which this does not
    /// speak) and no proxy stands in between.
    pub(super) fn for_endpoint(
        endpoint: &str,
        connect_timeout: Duration,
        stall_timeout: Duration,
    ) -> Option<Pipeline> {
        let rest = endpoint.strip_prefix("http://")?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() || authority.contains('@') || proxy_from_environment() {
            return None;
        }
        let authority = if authority.rsplit_once(':').is_some_and(|(_, p)| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']')
        }) {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Some(Pipeline {
            authority,
            connect_timeout,
            stall_timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Send `requests` (signed, with their bodies) back to back on one connection and read
    /// their answers in order. Entry *i* is request *i*'s answer, or `None` where none came
    /// (connection refused, broken or closed first, or an answer not understood).
    pub(super) fn exchange(&self, requests: &[(Signed, &[u8])]) -> Vec<Option<Answer>> {
        self.exchange_with("PUT", requests, MAX_BODY_BYTES)
    }

    /// [`Pipeline::exchange`] for requests of `method` (the same for all, signed for it) whose
    /// answers may carry bodies of up to `max_body` bytes (reads: the longest range asked).
    pub(super) fn exchange_with(
        &self,
        method: &str,
        requests: &[(Signed, &[u8])],
        max_body: usize,
    ) -> Vec<Option<Answer>> {
        let mut answers: Vec<Option<Answer>> = Vec::new();
        let mut reused = self.idle.lock().expect("idle connections").pop();
        loop {
            let was_pooled = reused.is_some();
            let stream = match reused.take() {
                Some(s) => s,
                None => match self.connect() {
                    Ok(s) => s,
                    Err(_) => break,
                },
            };
            let (got, keep) = self.exchange_on(&stream, method, requests, max_body);
            answers = got;
            if keep && answers.len() == requests.len() {
                let mut idle = self.idle.lock().expect("idle connections");
                if idle.len() < MAX_IDLE {
                    idle.push(stream);
                }
            }
            // A pooled connection the server had closed while it was idle answers nothing:
            // try once more on a new one.
            if !(was_pooled && answers.is_empty()) {
                break;
            }
        }
        answers.resize_with(requests.len(), || None);
        answers
    }

    fn connect(&self) -> std::io::Result<TcpStream> {
        let mut last = None;
        for addr in self.authority.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, self.connect_timeout) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(self.stall_timeout))?;
                    s.set_write_timeout(Some(self.stall_timeout))?;
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no address")))
    }

    /// The answers read in order until one is missing, and whether the connection can be used
    /// again.
    fn exchange_on(
        &self,
        mut stream: &TcpStream,
        method: &str,
        requests: &[(Signed, &[u8])],
        max_body: usize,
    ) -> (Vec<Option<Answer>>, bool) {
        let mut head = Vec::with_capacity(1024);
        let mut sent_all = true;
        for (request, body) in requests {
            head.clear();
            write_head(&mut head, method, &self.authority, request);
            if write_all_vectored(&mut stream, &head, body).is_err() {
                sent_all = false;
                break;
            }
        }
        let mut reader = AnswerReader {
            stream,
            buf: Vec::with_capacity(4096),
            max_body,
        };
        let mut answers = Vec::with_capacity(requests.len());
        let mut keep = sent_all;
        while answers.len() < requests.len() {
            match reader.next_answer() {
                Some((answer, close)) => {
                    answers.push(Some(answer));
                    if close {
                        keep = false;
                        break;
                    }
                }
                None => {
                    keep = false;
                    break;
                }
            }
        }
        // Bytes past the last answer would belong to no request.
        (answers, keep && reader.buf.is_empty())
    }
}

/// `head` then `body` with as few calls as the socket allows (one `writev` when it takes both):
/// the head does not travel alone in a packet of its own.
fn write_all_vectored(stream: &mut &TcpStream, head: &[u8], body: &[u8]) -> std::io::Result<()> {
    let (mut head, mut body) = (head, body);
    while !head.is_empty() {
        let n = stream.write_vectored(&[IoSlice::new(head), IoSlice::new(body)])?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[n - from_head..];
    }
    stream.write_all(body)
}

/// Whether an HTTP proxy is configured in the environment (ureq would use it; a direct
/// connection must not go around it).
fn proxy_from_environment() -> bool {
    ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
}

/// The request line and headers of `request`, ending with the blank line.
fn write_head(out: &mut Vec<u8>, method: &str, authority: &str, request: &Signed) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(request.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &request.headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Reads answers one after another from a connection.
struct AnswerReader<R> {
    stream: R,
    /// Bytes read and not yet taken.
    buf: Vec<u8>,
    /// Longest answer body taken.
    max_body: usize,
}

impl<R: Read> AnswerReader<R> {
    /// The next answer and whether the server closes the connection after it; `None` when it
    /// could not be read (closed, broken, timed out, malformed, chunked, too big).
    fn next_answer(&mut self) -> Option<(Answer, bool)> {
        let mut interim = 0;
        let (head_len, status, headers) = loop {
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut slots);
            match parsed.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = parsed.code?;
                    let headers: Vec<(String, String)> = parsed
                        .headers
                        .iter()
                        .filter_map(|h| {
                            Some((
                                h.name.to_ascii_lowercase(),
                                std::str::from_utf8(h.value).ok()?.to_string(),
                            ))
                        })
                        .collect();
                    // An interim answer (100 Continue) is not the request's.
                    if (100..200).contains(&status) {
                        interim += 1;
                        if interim > MAX_INTERIM {
                            return None;
                        }
                        self.buf.drain(..n);
                        continue;
                    }
                    break (n, status, headers);
                }
                Ok(httparse::Status::Partial) if self.buf.len() < MAX_HEAD_BYTES => self.fill()?,
                _ => return None,
            }
        };
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        if header("transfer-encoding").is_some() {
            return None;
        }
        let body_len: usize = match header("content-length") {
            Some(v) => v.trim().parse().ok().filter(|&n| n <= self.max_body)?,
            None => 0,
        };
        let close = header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        while self.buf.len() < head_len + body_len {
            self.fill()?;
        }
        let body = self.buf[head_len..head_len + body_len].to_vec();
        self.buf.drain(..head_len + body_len);
        Some((
            Answer {
                status,
                headers,
                body,
            },
            close,
        ))
    }

    /// Read more bytes; `None` at the end of the stream or on an error.
    fn fill(&mut self) -> Option<()> {
        let mut chunk = [0u8; 16 << 10];
        let n = self.stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const SECOND: Duration = Duration::from_secs(1);

    /// A loopback server that runs `on_connection(stream, index)` for each connection it
    /// accepts (on its own thread); returns the endpoint and the count of connections.
    fn fake_server(
        on_connection: impl Fn(TcpStream, usize) + Send + Sync + 'static,
    ) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}/account", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let on_connection = Arc::new(on_connection);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let index = count.fetch_add(1, Ordering::SeqCst);
                let handler = on_connection.clone();
                std::thread::spawn(move || handler(stream, index));
            }
        });
        (endpoint, accepted)
    }

    /// Read `n` whole requests (head and body) from `stream`, within 5 s: their bodies.
    fn read_requests(stream: &mut TcpStream, n: usize) -> Vec<Vec<u8>> {
        stream.set_read_timeout(Some(5 * SECOND)).unwrap();
        let mut buf = Vec::new();
        let mut bodies = Vec::new();
        while bodies.len() < n {
            let mut slots = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut slots);
            if let Ok(httparse::Status::Complete(head)) = request.parse(&buf) {
                let len: usize = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |h| {
                        std::str::from_utf8(h.value).unwrap().parse().unwrap()
                    });
                if buf.len() >= head + len {
                    bodies.push(buf[head..head + len].to_vec());
                    buf.drain(..head + len);
                    continue;
                }
            }
            let mut chunk = [0u8; 8192];
            let got = stream
                .read(&mut chunk)
                .expect("requests arrive without waiting");
            assert!(got > 0, "connection closed after {} requests", bodies.len());
            buf.extend_from_slice(&chunk[..got]);
        }
        bodies
    }

    fn requests(n: usize) -> Vec<(Signed, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let body = vec![i as u8; 512 * (i + 1)];
                let signed = Signed {
                    url: String::new(),
                    target: format!("/account/c/b?comp=page&n={i}"),
                    headers: vec![("content-length".into(), body.len().to_string())],
                };
                (signed, body)
            })
            .collect()
    }

    fn exchange(pipeline: &Pipeline, requests: &[(Signed, Vec<u8>)]) -> Vec<Option<Answer>> {
        let borrowed: Vec<(Signed, &[u8])> = requests
            .iter()
            .map(|(s, b)| {
                let signed = Signed {
                    url: s.url.clone(),
                    target: s.target.clone(),
                    headers: s.headers.clone(),
                };
                (signed, &b[..])
            })
            .collect();
        pipeline.exchange(&borrowed)
    }

    fn pipeline(endpoint: &str) -> Pipeline {
        Pipeline::for_endpoint(endpoint, SECOND, 5 * SECOND).expect("plain http")
    }

    fn answer(n: usize, extra: &str) -> String {
        format!("HTTP/1.1 201 Created\r\ncontent-length: 0\r\nx-n: {n}\r\n{extra}\r\n")
    }

    /// An answer's status and `x-n` header, if one came.
    type Seen = Option<(u16, String)>;

    fn statuses(answers: &[Option<Answer>]) -> Vec<Seen> {
        answers
            .iter()
            .map(|a| {
                a.as_ref()
                    .map(|a| (a.status, a.header("x-n").unwrap_or_default().to_string()))
            })
            .collect()
    }

    /// Reads pipeline too: four GETs all sent before any answer, their bodies (up to the
    /// longest asked) taken in order; a body longer than that is not taken.
    #[test]
    fn reads_are_sent_together_and_their_bodies_come_back_in_order() {
        let (endpoint, _) = fake_server(|mut s, _| {
            read_requests(&mut s, 4);
            let mut all = Vec::new();
            for i in 0..4usize {
                let body = vec![b'a' + i as u8; 1000 * (i + 1)];
                all.extend_from_slice(
                    format!(
                        "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\nx-n: {i}\r\n\r\n",
                        body.len()
                    )
                    .as_bytes(),
                );
                all.extend_from_slice(&body);
            }
            s.write_all(&all).unwrap();
        });
        let gets: Vec<(Signed, &[u8])> = (0..4)
            .map(|i| {
                let signed = Signed {
                    url: String::new(),
                    target: format!("/account/c/b?n={i}"),
                    headers: vec![(
                        "x-ms-range".into(),
                        format!("bytes=0-{}", 1000 * (i + 1) - 1),
                    )],
                };
                (signed, &[][..])
            })
            .collect();
        let p = pipeline(&endpoint);
        let answers = p.exchange_with("GET", &gets, 4000);
        for (i, a) in answers.iter().enumerate() {
            let a = a.as_ref().expect("an answer");
            assert_eq!(
                (a.status, a.header("x-n")),
                (206, Some(i.to_string().as_str()))
            );
            assert_eq!(a.body, vec![b'a' + i as u8; 1000 * (i + 1)]);
        }
        let answers = p.exchange_with("GET", &gets, 3999);
        assert!(
            answers[..3].iter().all(Option::is_some),
            "{:?}",
            statuses(&answers)
        );
        assert!(answers[3].is_none(), "a body over the cap is not taken");
    }

    #[test]
    fn every_request_is_sent_before_any_answer_is_read() {
        // The server answers nothing until it holds all five requests: a client that waited
        // for each answer would get none.
        let (endpoint, accepted) = fake_server(|mut s, _| {
            let bodies = read_requests(&mut s, 5);
            for (i, body) in bodies.iter().enumerate() {
                assert_eq!(body, &vec![i as u8; 512 * (i + 1)]);
            }
            let all: String = (0..5).map(|i| answer(i, "")).collect();
            s.write_all(all.as_bytes()).unwrap();
            let _ = read_requests(&mut s, 5);
            s.write_all(all.as_bytes()).unwrap();
        });
        let p = pipeline(&endpoint);
        let want: Vec<_> = (0..5).map(|i| Some((201, i.to_string()))).collect();
        assert_eq!(statuses(&exchange(&p, &requests(5))), want);
        // The connection is kept and used again.
        assert_eq!(statuses(&exchange(&p, &requests(5))), want);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn requests_after_a_closing_answer_are_left_unanswered() {
        let (endpoint, accepted) = fake_server(|mut s, _| {
            let _ = read_requests(&mut s, 4);
            let two = answer(0, "") + &answer(1, "connection: close\r\n");
            s.write_all(two.as_bytes()).unwrap();
        });
        let p = pipeline(&endpoint);
        let got = statuses(&exchange(&p, &requests(4)));
        assert_eq!(
            got,
            vec![Some((201, "0".into())), Some((201, "1".into())), None, None]
        );
        // Not pooled: the next exchange opens a new connection.
        let _ = exchange(&p, &requests(4));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_pooled_connection_the_server_closed_is_replaced_once() {
        let (endpoint, accepted) = fake_server(|mut s, index| {
            let _ = read_requests(&mut s, 2);
            let both = answer(index * 10, "") + &answer(index * 10 + 1, "");
            s.write_all(both.as_bytes()).unwrap();
            // The server then closes the idle connection.
        });
        let p = pipeline(&endpoint);
        assert_eq!(
            statuses(&exchange(&p, &requests(2))),
            vec![Some((201, "0".into())), Some((201, "1".into()))]
        );
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            statuses(&exchange(&p, &requests(2))),
            vec![Some((201, "10".into())), Some((201, "11".into()))]
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn answers_it_cannot_read_whole_are_not_guessed_at() {
        let cases: [(&str, Vec<Seen>); 4] = [
            // An interim answer is skipped.
            (
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\nx-n: 0\r\n\r\n",
                vec![Some((201, "0".into())), None],
            ),
            (
                "HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
                vec![None, None],
            ),
            (
                "HTTP/1.1 500 Oops\r\ncontent-length: 99999999\r\n\r\n",
                vec![None, None],
            ),
            ("garbage\r\n\r\n", vec![None, None]),
        ];
        // A server that sends only interim answers is not waited on for ever.
        let endless = "HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_INTERIM + 1);
        let (endpoint, _) = fake_server(move |mut s, _| {
            let _ = read_requests(&mut s, 2);
            s.write_all(endless.as_bytes()).unwrap();
            std::thread::sleep(10 * SECOND);
        });
        let started = std::time::Instant::now();
        assert_eq!(
            statuses(&exchange(&pipeline(&endpoint), &requests(2))),
            vec![None, None]
        );
        assert!(started.elapsed() < 5 * SECOND, "waited on interim answers");
        for (reply, want) in cases {
            let (endpoint, _) = fake_server(move |mut s, _| {
                let _ = read_requests(&mut s, 2);
                s.write_all(reply.as_bytes()).unwrap();
            });
            assert_eq!(
                statuses(&exchange(&pipeline(&endpoint), &requests(2))),
                want,
                "{reply:?}"
            );
        }
    }

    /// Reads at most `step` bytes per call: answers split anywhere.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(out.len()).min(self.bytes.len());
            out[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    /// An answer as read back: status, headers, body, and whether the connection closes.
    type ReadBack = (u16, Vec<(String, String)>, Vec<u8>, bool);

    fn read_all(bytes: &[u8], step: usize) -> Vec<ReadBack> {
        let mut reader = AnswerReader {
            stream: Trickle { bytes, step },
            buf: Vec::new(),
            max_body: MAX_BODY_BYTES,
        };
        let mut answers = Vec::new();
        while let Some((a, close)) = reader.next_answer() {
            assert!(a.body.len() <= MAX_BODY_BYTES);
            answers.push((a.status, a.headers, a.body, close));
            assert!(answers.len() <= bytes.len(), "an answer out of nothing");
        }
        answers
    }

    proptest::proptest! {
        /// Whatever a server sends back: whole answers or none, never a panic or a hang, and
        /// the same answers however the bytes are split across reads.
        #[test]
        fn any_reply_stream_reads_the_same_however_it_is_split(
            pieces in proptest::collection::vec((0usize..7, proptest::collection::vec(proptest::num::u8::ANY, 0..40)), 0..12),
            cut in proptest::option::of(0usize..2000),
            step in 1usize..9,
        ) {
            const FRAGMENTS: [&str; 7] = [
                "HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
                "HTTP/1.1 400 Bad\r\ncontent-length: 5\r\n\r\nabcde",
                "HTTP/1.1 100 Continue\r\n\r\n",
                "HTTP/1.1 503 Busy\r\nconnection: close\r\ncontent-length: 2\r\n\r\nno",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
                "HTTP/1.1 201 Created\r\ncontent-length: 99999999999999999999\r\n\r\n",
                "",
            ];
            let mut bytes = Vec::new();
            for (kind, noise) in &pieces {
                bytes.extend_from_slice(FRAGMENTS[*kind].as_bytes());
                if *kind == 6 {
                    bytes.extend_from_slice(noise);
                }
            }
            if let Some(cut) = cut {
                bytes.truncate(cut);
            }
            let whole = read_all(&bytes, usize::MAX);
            let split = read_all(&bytes, step);
            proptest::prop_assert_eq!(whole, split);
        }
    }

    #[test]
    fn only_plain_http_without_a_proxy_is_pipelined() {
        assert!(
            Pipeline::for_endpoint("https://a.blob.core.windows.net/", SECOND, SECOND).is_none()
        );
        assert!(Pipeline::for_endpoint("http://user@host:1/a", SECOND, SECOND).is_none());
        let p = Pipeline::for_endpoint("http://127.0.0.1:10000/dev", SECOND, SECOND);
        assert_eq!(p.map(|p| p.authority), Some("127.0.0.1:10000".to_string()));
        let p = Pipeline::for_endpoint("http://[::1]/dev", SECOND, SECOND);
        assert_eq!(p.map(|p| p.authority), Some("[::1]:80".to_string()));
    }
}
