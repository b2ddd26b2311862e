//! A client of the NBD protocol (NetworkBlockDevice `doc/proto.md`): the fixed newstyle
//! handshake, structured replies, metadata contexts (`base:allocation`, QEMU's
//! `qemu:dirty-bitmap:NAME`), `NBD_OPT_GO`, `NBD_CMD_READ` and `NBD_CMD_BLOCK_STATUS`. It reads a
//! fleecing view and its frozen dirty bitmap from a QEMU NBD export.
//!
//! The server is not trusted: every length it sends is checked against what was asked before
//! anything is allocated, a reply that does not cover a read exactly is an error, a block-status
//! reply must make progress, and the socket has a read timeout — a broken or hostile server
//! gives an [`NbdError`], never a panic, a hang or an unbounded allocation.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;

const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_SET_META_CONTEXT: u32 = 10;

const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERROR_BIT: u32 = 1 << 31;
const INFO_EXPORT: u16 = 0;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_BLOCK_STATUS: u16 = 7;

const REPLY_FLAG_DONE: u16 = 1;
const CHUNK_NONE: u16 = 0;
const CHUNK_OFFSET_DATA: u16 = 1;
const CHUNK_OFFSET_HOLE: u16 = 2;
const CHUNK_BLOCK_STATUS: u16 = 5;
const CHUNK_ERROR_BIT: u16 = 1 << 15;
const CHUNK_ERROR_OFFSET: u16 = CHUNK_ERROR_BIT | 2;

/// Transmission flag: the export is read-only.
pub const TRANSMISSION_READ_ONLY: u16 = 1 << 1;
/// `qemu:dirty-bitmap:` extent flag: the range changed.
pub const STATE_DIRTY: u32 = 1;
/// The metadata context of allocation: which ranges are holes, which read as zeros.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// `base:allocation` extent flag: the range reads as zeros.
pub const STATE_ZERO: u32 = 2;

/// Largest option reply we read (names and messages are at most 4 KiB by the spec).
const MAX_OPTION_REPLY: u32 = 64 << 10;
/// Largest read sent as one request (QEMU's limit is 32 MiB).
const MAX_READ_REQUEST: usize = 8 << 20;
/// Largest block-status payload we accept (a million extents).
const MAX_STATUS_PAYLOAD: u32 = 8 << 20;
/// Largest error payload we accept.
const MAX_ERROR_PAYLOAD: u32 = 4096 + 14;
/// Bytes one block-status request asks about.
const STATUS_REQUEST_BYTES: u64 = 1 << 31;
/// How long a reply may take before the connection counts as lost.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Failures talking to an NBD server.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("NBD connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the NBD server broke the protocol: {0}")]
    Protocol(String),
    #[error("the NBD server refused {option} (reply {reply:#x}): {message}")]
    Refused {
        option: &'static str,
        reply: u32,
        message: String,
    },
    #[error("the NBD server failed {command} at {offset:#x}: errno {errno}: {message}")]
    Request {
        command: &'static str,
        offset: u64,
        errno: u32,
        message: String,
    },
    #[error("NBD export {export}: no metadata context {context}")]
    NoContext { export: String, context: String },
}

fn protocol(what: impl Into<String>) -> NbdError {
    NbdError::Protocol(what.into())
}

/// A connected, negotiated NBD client in transmission phase.
pub struct NbdClient<S: Read + Write> {
    stream: S,
    export: String,
    size: u64,
    transmission_flags: u16,
    /// Metadata contexts the server granted: (id, name).
    contexts: Vec<(u32, String)>,
    next_cookie: u64,
}

impl<S: Read + Write> std::fmt::Debug for NbdClient<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdClient")
            .field("export", &self.export)
            .field("size", &self.size)
            .field("contexts", &self.contexts)
            .finish()
    }
}

impl NbdClient<UnixStream> {
    /// Connect to the server on the unix socket `path` and open `export` with the metadata
    /// `contexts`; replies slower than `timeout` end the connection.
    pub fn connect_unix(
        path: &Path,
        export: &str,
        contexts: &[&str],
        timeout: Duration,
    ) -> Result<Self, NbdError> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        NbdClient::handshake(stream, export, contexts)
    }
}

/// One structured-reply chunk header.
struct Chunk {
    flags: u16,
    kind: u16,
    length: u32,
}

impl<S: Read + Write> NbdClient<S> {
    /// Negotiate on a fresh connection: fixed newstyle, structured replies, the metadata
    /// `contexts` (each must be granted), then `NBD_OPT_GO` on `export`.
    pub fn handshake(mut stream: S, export: &str, contexts: &[&str]) -> Result<Self, NbdError> {
        if read_u64(&mut stream)? != NBDMAGIC || read_u64(&mut stream)? != IHAVEOPT {
            return Err(protocol("not a newstyle NBD server (bad greeting magic)"));
        }
        let server_flags = read_u16(&mut stream)?;
        if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(protocol("the server does not speak fixed newstyle"));
        }
        let client_flags = FLAG_FIXED_NEWSTYLE | (server_flags & FLAG_NO_ZEROES);
        stream.write_all(&u32::from(client_flags).to_be_bytes())?;
        if export.len() > 4096 || contexts.iter().any(|c| c.len() > 4096) {
            return Err(protocol("export or context name longer than 4096 bytes"));
        }
        let mut client = NbdClient {
            stream,
            export: export.into(),
            size: 0,
            transmission_flags: 0,
            contexts: Vec::new(),
            next_cookie: 1,
        };
        client.send_option(OPT_STRUCTURED_REPLY, &[])?;
        let (reply, data) = client.option_reply(OPT_STRUCTURED_REPLY)?;
        if reply != REP_ACK {
            return Err(refused("NBD_OPT_STRUCTURED_REPLY", reply, &data));
        }
        if !contexts.is_empty() {
            client.set_meta_contexts(contexts)?;
        }
        client.go()?;
        Ok(client)
    }

    fn set_meta_contexts(&mut self, contexts: &[&str]) -> Result<(), NbdError> {
        let mut data = name_field(&self.export);
        data.extend_from_slice(&(contexts.len() as u32).to_be_bytes());
        for c in contexts {
            data.extend_from_slice(&name_field(c));
        }
        self.send_option(OPT_SET_META_CONTEXT, &data)?;
        loop {
            let (reply, data) = self.option_reply(OPT_SET_META_CONTEXT)?;
            match reply {
                REP_ACK => break,
                REP_META_CONTEXT => {
                    if data.len() < 4 || self.contexts.len() >= contexts.len() {
                        return Err(protocol("unasked or short NBD_REP_META_CONTEXT"));
                    }
                    let id = u32::from_be_bytes(data[..4].try_into().expect("4 bytes"));
                    let name = String::from_utf8_lossy(&data[4..]).into_owned();
                    self.contexts.push((id, name));
                }
                r => return Err(refused("NBD_OPT_SET_META_CONTEXT", r, &data)),
            }
        }
        for c in contexts {
            if !self.contexts.iter().any(|(_, name)| name == c) {
                return Err(NbdError::NoContext {
                    export: self.export.clone(),
                    context: (*c).into(),
                });
            }
        }
        Ok(())
    }

    fn go(&mut self) -> Result<(), NbdError> {
        let mut data = name_field(&self.export);
        data.extend_from_slice(&0u16.to_be_bytes());
        self.send_option(OPT_GO, &data)?;
        let mut export_info = None;
        loop {
            let (reply, data) = self.option_reply(OPT_GO)?;
            match reply {
                REP_ACK => break,
                REP_INFO => {
                    if data.len() >= 2 && u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT {
                        if data.len() != 12 {
                            return Err(protocol("NBD_INFO_EXPORT is not 12 bytes"));
                        }
                        let size = u64::from_be_bytes(data[2..10].try_into().expect("8 bytes"));
                        let flags = u16::from_be_bytes([data[10], data[11]]);
                        export_info = Some((size, flags));
                    }
                }
                r => return Err(refused("NBD_OPT_GO", r, &data)),
            }
        }
        let (size, flags) = export_info
            .ok_or_else(|| protocol("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT"))?;
        self.size = size;
        self.transmission_flags = flags;
        Ok(())
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The export's transmission flags.
    pub fn transmission_flags(&self) -> u16 {
        self.transmission_flags
    }

    fn send_option(&mut self, option: u32, data: &[u8]) -> Result<(), NbdError> {
        let mut msg = Vec::with_capacity(16 + data.len());
        msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
        msg.extend_from_slice(&option.to_be_bytes());
        msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
        msg.extend_from_slice(data);
        self.stream.write_all(&msg)?;
        Ok(())
    }

    /// One reply to `option`: its type and payload.
    fn option_reply(&mut self, option: u32) -> Result<(u32, Vec<u8>), NbdError> {
        if read_u64(&mut self.stream)? != OPTION_REPLY_MAGIC {
            return Err(protocol("bad option reply magic"));
        }
        if read_u32(&mut self.stream)? != option {
            return Err(protocol(format!("reply to another option than {option}")));
        }
        let reply = read_u32(&mut self.stream)?;
        let len = read_u32(&mut self.stream)?;
        if len > MAX_OPTION_REPLY {
            return Err(protocol(format!("option reply of {len} bytes")));
        }
        let mut data = vec![0; len as usize];
        self.stream.read_exact(&mut data)?;
        Ok((reply, data))
    }

    fn send_request(&mut self, command: u16, offset: u64, len: u32) -> Result<u64, NbdError> {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let mut msg = [0u8; 28];
        msg[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        msg[6..8].copy_from_slice(&command.to_be_bytes());
        msg[8..16].copy_from_slice(&cookie.to_be_bytes());
        msg[16..24].copy_from_slice(&offset.to_be_bytes());
        msg[24..28].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&msg)?;
        Ok(cookie)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), NbdError> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(protocol(format!(
                "{offset:#x}+{len:#x} is past the export's {} bytes",
                self.size
            )));
        }
        Ok(())
    }

    /// Read `buf.len()` bytes at `offset`.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        self.check_range(offset, buf.len() as u64)?;
        let mut at = offset;
        for part in buf.chunks_mut(MAX_READ_REQUEST) {
            self.read_request(at, part)?;
            at += part.len() as u64;
        }
        Ok(())
    }

    fn read_request(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        let cookie = self.send_request(CMD_READ, offset, buf.len() as u32)?;
        let end = offset + buf.len() as u64;
        let mut covered: Vec<(u64, u64)> = Vec::new();
        let mut failure = None;
        loop {
            let Some(chunk) = self.reply_header(cookie, "NBD_CMD_READ", offset, buf)? else {
                // A simple reply carried the data.
                return Ok(());
            };
            match chunk.kind {
                CHUNK_OFFSET_DATA => {
                    if chunk.length < 8 {
                        return Err(protocol("NBD_REPLY_TYPE_OFFSET_DATA under 8 bytes"));
                    }
                    let at = read_u64(&mut self.stream)?;
                    let len = u64::from(chunk.length - 8);
                    if at < offset || at.checked_add(len).is_none_or(|e| e > end) {
                        return Err(protocol(format!(
                            "read data at {at:#x}+{len:#x} outside the request {offset:#x}..{end:#x}"
                        )));
                    }
                    let from = (at - offset) as usize;
                    self.stream
                        .read_exact(&mut buf[from..from + len as usize])?;
                    covered.push((at, len));
                }
                CHUNK_OFFSET_HOLE => {
                    if chunk.length != 12 {
                        return Err(protocol("NBD_REPLY_TYPE_OFFSET_HOLE is not 12 bytes"));
                    }
                    let at = read_u64(&mut self.stream)?;
                    let len = u64::from(read_u32(&mut self.stream)?);
                    if at < offset || at.checked_add(len).is_none_or(|e| e > end) {
                        return Err(protocol("read hole outside the request"));
                    }
                    let from = (at - offset) as usize;
                    buf[from..from + len as usize].fill(0);
                    covered.push((at, len));
                }
                kind => {
                    let error = self.other_chunk(&chunk, kind, "NBD_CMD_READ", offset)?;
                    failure = failure.or(error);
                }
            }
            if chunk.flags & REPLY_FLAG_DONE != 0 {
                break;
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        covered.sort_unstable();
        let mut next = offset;
        for (at, len) in covered {
            if at != next {
                return Err(protocol(format!(
                    "read reply for {offset:#x}..{end:#x} left {next:#x} unfilled or overlapping"
                )));
            }
            next = at + len;
        }
        if next != end {
            return Err(protocol(format!(
                "read reply for {offset:#x}..{end:#x} stopped at {next:#x}"
            )));
        }
        Ok(())
    }

    /// Read a reply's header for `cookie`. A simple reply (the error path of any command, the
    /// data of a read when the server chose it) is handled here: its error is returned, a
    /// successful read's data is read into `read_buf`, and `None` says the reply is complete.
    fn reply_header(
        &mut self,
        cookie: u64,
        command: &'static str,
        offset: u64,
        read_buf: &mut [u8],
    ) -> Result<Option<Chunk>, NbdError> {
        match read_u32(&mut self.stream)? {
            STRUCTURED_REPLY_MAGIC => {
                let flags = read_u16(&mut self.stream)?;
                let kind = read_u16(&mut self.stream)?;
                if read_u64(&mut self.stream)? != cookie {
                    return Err(protocol("reply for a request never sent"));
                }
                let length = read_u32(&mut self.stream)?;
                Ok(Some(Chunk {
                    flags,
                    kind,
                    length,
                }))
            }
            SIMPLE_REPLY_MAGIC => {
                let errno = read_u32(&mut self.stream)?;
                if read_u64(&mut self.stream)? != cookie {
                    return Err(protocol("reply for a request never sent"));
                }
                if errno != 0 {
                    return Err(NbdError::Request {
                        command,
                        offset,
                        errno,
                        message: String::new(),
                    });
                }
                if command == "NBD_CMD_BLOCK_STATUS" {
                    return Err(protocol(format!("{command} answered by a simple reply")));
                }
                self.stream.read_exact(read_buf)?;
                Ok(None)
            }
            magic => Err(protocol(format!("bad reply magic {magic:#x}"))),
        }
    }

    /// A chunk that is neither data nor status: `NONE`, an error (returned, after its payload
    /// is read so the stream stays in step), or an unknown kind (an error).
    fn other_chunk(
        &mut self,
        chunk: &Chunk,
        kind: u16,
        command: &'static str,
        offset: u64,
    ) -> Result<Option<NbdError>, NbdError> {
        if kind == CHUNK_NONE {
            if chunk.length != 0 || chunk.flags & REPLY_FLAG_DONE == 0 {
                return Err(protocol("NBD_REPLY_TYPE_NONE with a payload or not last"));
            }
            return Ok(None);
        }
        if kind & CHUNK_ERROR_BIT == 0 {
            return Err(protocol(format!("unknown reply chunk type {kind}")));
        }
        if chunk.length < 6 || chunk.length > MAX_ERROR_PAYLOAD {
            return Err(protocol(format!("error chunk of {} bytes", chunk.length)));
        }
        let mut payload = vec![0; chunk.length as usize];
        self.stream.read_exact(&mut payload)?;
        let errno = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"));
        let message_len = usize::from(u16::from_be_bytes([payload[4], payload[5]]));
        let message_end = (6 + message_len).min(payload.len());
        let message = String::from_utf8_lossy(&payload[6..message_end]).into_owned();
        let offset = if kind == CHUNK_ERROR_OFFSET && payload.len() >= message_end + 8 {
            u64::from_be_bytes(
                payload[message_end..message_end + 8]
                    .try_into()
                    .expect("8 bytes"),
            )
        } else {
            offset
        };
        Ok(Some(NbdError::Request {
            command,
            offset,
            errno,
            message,
        }))
    }

    /// The extents of metadata context `context` from `offset`, at most `len` bytes of them:
    /// `(offset, length, flags)`, consecutive, clipped to the request. The server may describe
    /// less than asked, never nothing.
    pub fn block_status(
        &mut self,
        context: &str,
        offset: u64,
        len: u32,
    ) -> Result<Vec<(u64, u64, u32)>, NbdError> {
        let id = self
            .contexts
            .iter()
            .find(|(_, name)| name == context)
            .map(|(id, _)| *id)
            .ok_or_else(|| NbdError::NoContext {
                export: self.export.clone(),
                context: context.into(),
            })?;
        self.check_range(offset, u64::from(len))?;
        let cookie = self.send_request(CMD_BLOCK_STATUS, offset, len)?;
        let end = offset + u64::from(len);
        let mut extents = Vec::new();
        let mut seen = false;
        let mut failure = None;
        loop {
            let chunk = self
                .reply_header(cookie, "NBD_CMD_BLOCK_STATUS", offset, &mut [])?
                .ok_or_else(|| protocol("block status answered by a simple reply"))?;
            if chunk.kind == CHUNK_BLOCK_STATUS {
                if chunk.length < 12 || (chunk.length - 4) % 8 != 0 {
                    return Err(protocol("block-status chunk of a bad length"));
                }
                if chunk.length > MAX_STATUS_PAYLOAD {
                    return Err(protocol(format!(
                        "block-status chunk of {} bytes",
                        chunk.length
                    )));
                }
                let mut payload = vec![0; chunk.length as usize];
                self.stream.read_exact(&mut payload)?;
                let chunk_id = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"));
                if chunk_id == id {
                    if seen {
                        return Err(protocol("two block-status chunks for one context"));
                    }
                    seen = true;
                    let mut at = offset;
                    for pair in payload[4..].chunks_exact(8) {
                        if at >= end {
                            break;
                        }
                        let length =
                            u64::from(u32::from_be_bytes(pair[..4].try_into().expect("4")));
                        let flags = u32::from_be_bytes(pair[4..].try_into().expect("4 bytes"));
                        if length == 0 {
                            return Err(protocol("a block-status extent of length 0"));
                        }
                        let length = length.min(end - at);
                        extents.push((at, length, flags));
                        at += length;
                    }
                }
            } else {
                let error = self.other_chunk(&chunk, chunk.kind, "NBD_CMD_BLOCK_STATUS", offset)?;
                failure = failure.or(error);
            }
            if chunk.flags & REPLY_FLAG_DONE != 0 {
                break;
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if extents.is_empty() {
            return Err(protocol(format!(
                "block status at {offset:#x} described nothing for {context}"
            )));
        }
        Ok(extents)
    }

    /// The ranges of `[start, end)` whose `context` extents have any bit of `flags` set,
    /// ascending, adjacent ranges merged.
    pub fn ranges_with(
        &mut self,
        context: &str,
        start: u64,
        end: u64,
        flags: u32,
    ) -> Result<Vec<(u64, u64)>, NbdError> {
        self.ranges_where(context, start, end, |f| f & flags != 0)
    }

    /// The ranges of `[start, end)` whose `context` extents' flags `keep` takes, as
    /// `(offset, length)`, ascending, adjacent ranges merged.
    pub fn ranges_where(
        &mut self,
        context: &str,
        start: u64,
        end: u64,
        keep: impl Fn(u32) -> bool,
    ) -> Result<Vec<(u64, u64)>, NbdError> {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut at = start;
        while at < end {
            let len = (end - at).min(STATUS_REQUEST_BYTES) as u32;
            for (offset, length, f) in self.block_status(context, at, len)? {
                if keep(f) {
                    match ranges.last_mut() {
                        Some((o, l)) if *o + *l == offset => *l += length,
                        _ => ranges.push((offset, length)),
                    }
                }
                at = offset + length;
            }
        }
        Ok(ranges)
    }

    /// Write `data` at `offset` (a writable export; the server acknowledges once it is done).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), NbdError> {
        self.check_range(offset, data.len() as u64)?;
        let mut at = offset;
        for part in data.chunks(MAX_READ_REQUEST) {
            let cookie = self.send_request(CMD_WRITE, at, part.len() as u32)?;
            self.stream.write_all(part)?;
            let mut failure = None;
            while let Some(chunk) = self.reply_header(cookie, "NBD_CMD_WRITE", at, &mut [])? {
                failure = failure.or(self.other_chunk(&chunk, chunk.kind, "NBD_CMD_WRITE", at)?);
                if chunk.flags & REPLY_FLAG_DONE != 0 {
                    break;
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
            at += part.len() as u64;
        }
        Ok(())
    }

    /// End the session politely (`NBD_CMD_DISC`).
    pub fn disconnect(mut self) -> Result<(), NbdError> {
        self.send_request(CMD_DISC, 0, 0)?;
        self.stream.flush()?;
        Ok(())
    }
}

fn refused(option: &'static str, reply: u32, data: &[u8]) -> NbdError {
    if reply & REP_ERROR_BIT == 0 {
        return protocol(format!("unexpected reply {reply} to {option}"));
    }
    NbdError::Refused {
        option,
        reply,
        message: String::from_utf8_lossy(data).into_owned(),
    }
}

/// A u32 length and the name's bytes.
fn name_field(name: &str) -> Vec<u8> {
    let mut out = (name.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(name.as_bytes());
    out
}

fn read_u16(r: &mut impl Read) -> std::io::Result<u16> {
    let mut b = [0; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

/// A server's side of a conversation, written out: the fuzz target's and the tests' input.
#[cfg(any(test, feature = "testing"))]
pub mod transcript {
    use super::*;

    /// The server's greeting and a successful negotiation of `export` (`size` bytes) with the
    /// contexts `(id, name)`.
    pub fn negotiation(size: u64, contexts: &[(u32, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&NBDMAGIC.to_be_bytes());
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        option_reply(&mut out, OPT_STRUCTURED_REPLY, REP_ACK, &[]);
        if !contexts.is_empty() {
            for (id, name) in contexts {
                let mut data = id.to_be_bytes().to_vec();
                data.extend_from_slice(name.as_bytes());
                option_reply(&mut out, OPT_SET_META_CONTEXT, REP_META_CONTEXT, &data);
            }
            option_reply(&mut out, OPT_SET_META_CONTEXT, REP_ACK, &[]);
        }
        let mut info = INFO_EXPORT.to_be_bytes().to_vec();
        info.extend_from_slice(&size.to_be_bytes());
        info.extend_from_slice(&0x058fu16.to_be_bytes());
        option_reply(&mut out, OPT_GO, REP_INFO, &info);
        option_reply(&mut out, OPT_GO, REP_ACK, &[]);
        out
    }

    fn option_reply(out: &mut Vec<u8>, option: u32, reply: u32, data: &[u8]) {
        out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        out.extend_from_slice(&option.to_be_bytes());
        out.extend_from_slice(&reply.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
    }

    /// A structured chunk for request `cookie`.
    pub fn chunk(out: &mut Vec<u8>, cookie: u64, kind: u16, done: bool, payload: &[u8]) {
        out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        out.extend_from_slice(&u16::from(done).to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&cookie.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// A read's data chunk.
    pub fn data(out: &mut Vec<u8>, cookie: u64, done: bool, offset: u64, bytes: &[u8]) {
        let mut payload = offset.to_be_bytes().to_vec();
        payload.extend_from_slice(bytes);
        chunk(out, cookie, CHUNK_OFFSET_DATA, done, &payload);
    }

    /// A block-status chunk of context `id`.
    pub fn status(out: &mut Vec<u8>, cookie: u64, id: u32, extents: &[(u32, u32)]) {
        let mut payload = id.to_be_bytes().to_vec();
        for (len, flags) in extents {
            payload.extend_from_slice(&len.to_be_bytes());
            payload.extend_from_slice(&flags.to_be_bytes());
        }
        chunk(out, cookie, CHUNK_BLOCK_STATUS, true, &payload);
    }

    /// A server stream to read from; what the client writes is dropped.
    #[derive(Debug)]
    pub struct Scripted(pub std::io::Cursor<Vec<u8>>);

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The fuzz target's body: negotiate, read and ask for the dirty ranges against a server
    /// that sends `bytes`. Any outcome but a panic, a hang or a huge allocation is fine.
    pub fn exercise(bytes: &[u8]) {
        let script = Scripted(std::io::Cursor::new(bytes.to_vec()));
        let Ok(mut client) = NbdClient::handshake(script, "fleece", &["qemu:dirty-bitmap:b"])
        else {
            return;
        };
        let size = client.size().min(1 << 20);
        let mut buf = vec![0; size as usize];
        let _ = client.read(0, &mut buf);
        let _ = client.ranges_with("qemu:dirty-bitmap:b", 0, client.size(), STATE_DIRTY);
    }
}

#[cfg(test)]
mod tests {
    use super::transcript::*;
    use super::*;

    const CONTEXT: &str = "qemu:dirty-bitmap:b1";

    fn client(script: Vec<u8>) -> Result<NbdClient<Scripted>, NbdError> {
        NbdClient::handshake(Scripted(std::io::Cursor::new(script)), "fleece", &[CONTEXT])
    }

    /// A negotiation, a 64 KiB read in two data chunks (out of order), and a block status.
    fn conversation() -> Vec<u8> {
        let mut s = negotiation(1 << 20, &[(2, CONTEXT)]);
        data(&mut s, 1, false, 32768, &[0xbb; 32768]);
        data(&mut s, 1, true, 0, &[0xaa; 32768]);
        status(&mut s, 2, 2, &[(65536, 0), (131072, 1), (1 << 20, 0)]);
        s
    }

    #[test]
    fn negotiates_reads_out_of_order_chunks_and_clips_extents() {
        let mut c = client(conversation()).unwrap();
        assert_eq!(c.size(), 1 << 20);
        let mut buf = vec![0; 65536];
        c.read(0, &mut buf).unwrap();
        assert!(buf[..32768].iter().all(|&b| b == 0xaa));
        assert!(buf[32768..].iter().all(|&b| b == 0xbb));
        let dirty = c.ranges_with(CONTEXT, 0, 1 << 20, STATE_DIRTY).unwrap();
        assert_eq!(dirty, vec![(65536, 131072)]);
    }

    #[test]
    fn a_read_reply_that_leaves_a_gap_is_an_error_not_stale_bytes() {
        let mut s = negotiation(1 << 20, &[(2, CONTEXT)]);
        data(&mut s, 1, false, 0, &[1; 4096]);
        data(&mut s, 1, true, 8192, &[1; 4096]);
        let mut c = client(s).unwrap();
        let err = c.read(0, &mut vec![0; 12288]).unwrap_err();
        assert!(err.to_string().contains("unfilled"), "{err}");
    }

    #[test]
    fn an_error_chunk_names_the_errno_and_message() {
        let mut s = negotiation(1 << 20, &[(2, CONTEXT)]);
        let mut payload = 5u32.to_be_bytes().to_vec();
        payload.extend_from_slice(&4u16.to_be_bytes());
        payload.extend_from_slice(b"gone");
        chunk(&mut s, 1, CHUNK_ERROR_BIT | 1, true, &payload);
        let err = client(s).unwrap().read(0, &mut [0; 512]).unwrap_err();
        assert!(matches!(err, NbdError::Request { errno: 5, .. }), "{err}");
        assert!(err.to_string().contains("gone"));
    }

    #[test]
    fn a_context_the_server_does_not_grant_is_refused_by_name() {
        let s = negotiation(1 << 20, &[]);
        // The server acknowledges SET_META_CONTEXT without granting anything.
        let mut script = s[..18].to_vec();
        script.extend_from_slice(&s[18..38]);
        let mut ack = Vec::new();
        ack.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        ack.extend_from_slice(&OPT_SET_META_CONTEXT.to_be_bytes());
        ack.extend_from_slice(&REP_ACK.to_be_bytes());
        ack.extend_from_slice(&0u32.to_be_bytes());
        script.extend_from_slice(&ack);
        script.extend_from_slice(&s[38..]);
        let err = client(script).unwrap_err();
        assert!(matches!(err, NbdError::NoContext { .. }), "{err}");
    }

    #[test]
    fn extents_that_make_no_progress_end_the_loop_with_an_error() {
        let mut s = negotiation(1 << 20, &[(2, CONTEXT)]);
        status(&mut s, 1, 2, &[(0, 1)]);
        let err = client(s)
            .unwrap()
            .ranges_with(CONTEXT, 0, 1 << 20, STATE_DIRTY)
            .unwrap_err();
        assert!(err.to_string().contains("length 0"), "{err}");
    }

    #[test]
    fn huge_lengths_from_the_server_are_refused_before_any_allocation() {
        let mut s = negotiation(1 << 20, &[(2, CONTEXT)]);
        chunk(&mut s, 1, CHUNK_BLOCK_STATUS, true, &[]);
        let at = s.len() - 4;
        s[at..].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = client(s)
            .unwrap()
            .block_status(CONTEXT, 0, 4096)
            .unwrap_err();
        assert!(matches!(err, NbdError::Protocol(_)), "{err}");
    }

    #[test]
    fn every_truncation_and_byte_flip_of_a_conversation_is_survived() {
        let whole = conversation();
        for cut in 0..whole.len() {
            exercise(&whole[..cut]);
        }
        for at in 0..whole.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bytes = whole.clone();
                bytes[at] ^= flip;
                exercise(&bytes);
            }
        }
    }
}
