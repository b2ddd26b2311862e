//! What the HTTP client sends and reads back, whichever way it goes (one request through ureq,
//! or a pipelined batch on a connection of its own): a signed request and its answer.

/// A signed request, ready to send.
pub(super) struct Signed {
    /// The whole URL.
    pub(super) url: String,
    /// Path and query as sent on the request line.
    pub(super) target: String,
    /// Every header, `authorization` and `content-length` included.
    pub(super) headers: Vec<(String, String)>,
}

/// An answer: status, headers (names in lower case) and body.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
}

impl Answer {
    /// The first value of header `name` (lower case).
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}
