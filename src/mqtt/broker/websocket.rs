//! MQTT over WebSocket, server side (RFC 6455, MQTT 5.0 §6): the HTTP/1.1 upgrade
//! handshake ([`accept`]) and [`WsStream`], which unwraps binary frames into the plain byte
//! stream the broker reads and writes as if it were TCP.
//!
//! It knows nothing of MQTT packets: a frame may hold part of a packet or several
//! ([MQTT-6.0.0-2]), so frame boundaries mean nothing here. It never panics on what the
//! peer sends and sets no timers: bounding the handshake's time is the caller's job.

use std::fmt;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Appended to the client's key before hashing (RFC 6455 §1.3).
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Size of the read buffer that frame headers and small payloads go through. Payloads
/// read into a caller's buffer at least this large skip it (no copy).
const READ_BUF: usize = 8 * 1024;

/// Most a payload read straight into the caller's buffer asks for. Safe code must zero an
/// uninitialised buffer (a `BytesMut` behind `read_buf`) before reading into it, and
/// zeroing far more than one socket read returns would cost more than the copy it saves.
const MAX_DIRECT_READ: usize = 64 * 1024;

/// Largest frame `poll_write` sends: a larger write is sent in part (a legal short
/// write). It bounds the copy kept when the socket takes only part of a frame.
const MAX_OUT_FRAME: usize = 64 * 1024;

/// Control frames carry at most 125 bytes and cannot be fragmented (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Longest frame header: 2 bytes, an 8-byte extended length and a 4-byte mask.
const MAX_HEADER: usize = 14;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Close status codes we send (RFC 6455 §7.4.1).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_UNSUPPORTED_DATA: u16 = 1003;
const CLOSE_INVALID_PAYLOAD: u16 = 1007;
const CLOSE_TOO_BIG: u16 = 1009;

/// The subprotocols we take, best first. `mqtt` is the one MQTT 3.1.1 and 5.0 name
/// ([MQTT-6.0.0-3], [MQTT-6.0.0-4]); `mqttv3.1` is what MQTT 3.1-era clients (older Paho
/// JavaScript among them) offer instead. We accept it when `mqtt` is not offered and echo
/// it back, because a WebSocket client must fail a handshake whose subprotocol it did not
/// offer (RFC 6455 §4.1). A real MQTT 3.1 CONNECT is then refused by the codec (protocol
/// level 3), which the broker can answer with a CONNACK naming the version: that tells the
/// user more than a failed upgrade.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Bounds on what a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsLimits {
    /// Largest HTTP request header block (request line, headers, blank line), in bytes.
    /// Default 8 KiB: browsers send about 1 KiB, cookies included.
    pub max_header: usize,
    /// Largest payload of one incoming frame, in bytes (close 1009 beyond). Payloads are
    /// streamed through, not buffered, so this bounds no memory; it refuses absurd lengths
    /// early. Keep it at least the broker's maximum packet size: most clients (paho-mqtt
    /// among them) send each packet as one frame. Default 1 MiB.
    pub max_frame: usize,
}

impl Default for WsLimits {
    fn default() -> Self {
        WsLimits {
            max_header: 8 * 1024,
            max_frame: 1024 * 1024,
        }
    }
}

/// Why a WebSocket handshake failed. Every variant with an [`http_status`] has been
/// answered with that status before `accept` returned it.
///
/// [`http_status`]: WsError::http_status
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// Reading the request or writing the answer failed; nothing was answered.
    #[error("I/O error in the WebSocket handshake: {0}")]
    Io(#[from] io::Error),
    /// The client closed the connection before its request was complete.
    #[error("the client closed the connection before the end of its HTTP request")]
    Eof,
    #[error("the HTTP request header block is larger than {max} bytes")]
    HeaderTooLarge { max: usize },
    #[error("malformed HTTP request: {0}")]
    Malformed(&'static str),
    #[error("HTTP method `{0}` is not GET (RFC 6455 §4.1)")]
    NotGet(String),
    #[error("the request is not a WebSocket upgrade: no `Upgrade: websocket`")]
    NotWebSocket,
    #[error("the `Connection` header does not list `upgrade`")]
    NoConnectionUpgrade,
    #[error("header `{0}` is missing")]
    MissingHeader(&'static str),
    #[error("Sec-WebSocket-Version `{0}` is not supported, only 13 is")]
    UnsupportedVersion(String),
    #[error("Sec-WebSocket-Key is repeated or not 16 bytes in base64 (RFC 6455 §4.1)")]
    BadKey,
    #[error("the client does not offer the `mqtt` WebSocket subprotocol [MQTT-6.0.0-3]")]
    NoMqttSubprotocol,
}

impl WsError {
    /// The HTTP status the client was sent, or `None` when nothing could be answered.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            WsError::Io(_) | WsError::Eof => None,
            WsError::HeaderTooLarge { .. } => Some(431),
            WsError::NotGet(_) => Some(405),
            WsError::NotWebSocket | WsError::UnsupportedVersion(_) => Some(426),
            WsError::Malformed(_)
            | WsError::NoConnectionUpgrade
            | WsError::MissingHeader(_)
            | WsError::BadKey
            | WsError::NoMqttSubprotocol => Some(400),
        }
    }
}

/// A broken rule in the client's frames. `WsStream::poll_read` returns it inside an
/// [`io::Error`] (kind `InvalidData`, or `UnexpectedEof` for [`FrameError::Truncated`];
/// `get_ref()` and `downcast_ref` recover it), after queueing a close frame with
/// [`close_code`](FrameError::close_code). Every later read returns it again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("client frame is not masked (RFC 6455 §5.1)")]
    Unmasked,
    #[error("text frame: MQTT travels in binary frames only [MQTT-6.0.0-1]")]
    Text,
    #[error("reserved bits set, but no extension was negotiated (RFC 6455 §5.2)")]
    ReservedBits,
    #[error("reserved opcode {0:#x} (RFC 6455 §5.2)")]
    ReservedOpcode(u8),
    #[error("frame payload of {len} bytes is larger than the limit of {max}")]
    TooLarge { len: u64, max: usize },
    #[error("control frame fragmented or longer than 125 bytes (RFC 6455 §5.5)")]
    BadControl,
    #[error("continuation frame with no fragmented message to continue (RFC 6455 §5.4)")]
    UnexpectedContinuation,
    #[error("new data frame before the fragmented message ended (RFC 6455 §5.4)")]
    UnfinishedMessage,
    #[error("payload length not in its shortest form or above 2^63 (RFC 6455 §5.2)")]
    BadLength,
    #[error("close frame with a 1-byte body or an invalid status code (RFC 6455 §5.5.1)")]
    BadClose,
    #[error("close frame reason is not UTF-8 (RFC 6455 §5.5.1)")]
    CloseReasonNotUtf8,
    #[error("the connection ended in the middle of a frame")]
    Truncated,
}

impl FrameError {
    /// The close status code sent for this error (RFC 6455 §7.4.1); `None` when the
    /// connection is already gone.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            FrameError::Text => Some(CLOSE_UNSUPPORTED_DATA),
            FrameError::TooLarge { .. } => Some(CLOSE_TOO_BIG),
            FrameError::CloseReasonNotUtf8 => Some(CLOSE_INVALID_PAYLOAD),
            FrameError::Truncated => None,
            FrameError::Unmasked
            | FrameError::ReservedBits
            | FrameError::ReservedOpcode(_)
            | FrameError::BadControl
            | FrameError::UnexpectedContinuation
            | FrameError::UnfinishedMessage
            | FrameError::BadLength
            | FrameError::BadClose => Some(CLOSE_PROTOCOL_ERROR),
        }
    }
}

impl From<FrameError> for io::Error {
    fn from(e: FrameError) -> Self {
        let kind = match e {
            FrameError::Truncated => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// Reads the client's HTTP/1.1 upgrade request from `stream`, checks it and answers
/// `101 Switching Protocols`; a bad request is answered with an HTTP error status (see
/// [`WsError::http_status`]) and returned as the error. Any request path is accepted
/// ([`WsStream::path`] has it), and so is any `Host` and `Origin`: a LAN broker has no
/// canonical host name, and no cookie or browser credential is honoured here.
///
/// Reads at most `limits.max_header` bytes but never waits on a timer: wrap it in
/// `tokio::time::timeout`, or a client that sends nothing holds the connection forever.
/// Bytes the client sends after its request (frames it did not wait to send) are kept.
/// Header names are case-insensitive, `Upgrade` and `Connection` are comma lists, lines
/// must end in CRLF; subprotocol names are compared exactly, as the client will compare
/// our answer.
///
/// # Cancel safety
///
/// Not cancel safe: dropping the future drops the stream with it, mid-handshake.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    limits: &WsLimits,
) -> Result<WsStream<S>, WsError> {
    let checked = match read_request_head(&mut stream, limits.max_header).await {
        Ok((buf, end)) => check_request(&buf[..end]).map(|upgrade| (upgrade, buf, end)),
        Err(e) => Err(e),
    };
    let (upgrade, buf, end) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            // Best effort: the typed error is what the caller needs, whether or not the
            // client is still there to read the answer.
            let _ = answer_error(&mut stream, &e).await;
            return Err(e);
        }
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {}\r\n\r\n",
        upgrade.accept, upgrade.subprotocol
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;
    Ok(WsStream::new(
        stream,
        upgrade.path,
        upgrade.subprotocol,
        limits,
        &buf[end..],
    ))
}

/// Reads until the blank line that ends the header block. Returns the buffer and where
/// the block ends (after its `\r\n\r\n`); bytes after that are the client's first frames.
async fn read_request_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_header: usize,
) -> Result<(Vec<u8>, usize), WsError> {
    let mut buf = vec![0u8; max_header];
    let mut filled = 0;
    loop {
        if filled == max_header {
            return Err(WsError::HeaderTooLarge { max: max_header });
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(WsError::Eof);
        }
        // Only the new bytes and the 3 before them can complete a `\r\n\r\n`.
        let from = filled.saturating_sub(3);
        filled += n;
        if let Some(at) = memchr::memmem::find(&buf[from..filled], b"\r\n\r\n") {
            buf.truncate(filled);
            return Ok((buf, from + at + 4));
        }
    }
}

/// What a valid upgrade request asks for.
#[derive(Debug, PartialEq, Eq)]
struct Upgrade {
    path: String,
    /// The `Sec-WebSocket-Accept` value.
    accept: String,
    subprotocol: &'static str,
}

/// Checks a request header block (ending in its blank line) against RFC 6455 §4.2.1 and
/// MQTT 5.0 §6. Pure, so every rule is unit-tested without IO.
fn check_request(head: &[u8]) -> Result<Upgrade, WsError> {
    let mut rest = head;
    let request_line = next_line(&mut rest).ok_or(WsError::Malformed("no request line"))?;
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(WsError::Malformed(
            "request line is not `METHOD target HTTP/1.1`",
        ));
    };
    if method != b"GET" {
        return Err(WsError::NotGet(
            String::from_utf8_lossy(method).into_owned(),
        ));
    }
    if !http_version_at_least_1_1(version) {
        return Err(WsError::Malformed("HTTP version is not 1.1 or later"));
    }
    let path = match std::str::from_utf8(target) {
        Ok(path) if !path.is_empty() => path.to_owned(),
        _ => return Err(WsError::Malformed("request target is empty or not UTF-8")),
    };

    let mut upgrade_websocket = false;
    let mut connection_upgrade = false;
    let mut versions: Vec<&[u8]> = Vec::new();
    let mut key: Option<&[u8]> = None;
    let mut offers_mqtt = false;
    let mut offers_mqtt31 = false;
    while let Some(line) = next_line(&mut rest) {
        if line.is_empty() {
            break;
        }
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            return Err(WsError::Malformed("obsolete header line folding"));
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            return Err(WsError::Malformed("header line without a colon"));
        };
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        if name.is_empty() || !name.iter().all(|&b| is_token_char(b)) {
            return Err(WsError::Malformed("invalid header name"));
        }
        if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_websocket |= list_items(value).any(|v| v.eq_ignore_ascii_case(b"websocket"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection_upgrade |= list_items(value).any(|v| v.eq_ignore_ascii_case(b"upgrade"));
        } else if name.eq_ignore_ascii_case(b"sec-websocket-version") {
            versions.extend(list_items(value));
        } else if name.eq_ignore_ascii_case(b"sec-websocket-key") {
            if key.replace(value).is_some() {
                return Err(WsError::BadKey);
            }
        } else if name.eq_ignore_ascii_case(b"sec-websocket-protocol") {
            for offer in list_items(value) {
                offers_mqtt |= offer == SUBPROTOCOLS[0].as_bytes();
                offers_mqtt31 |= offer == SUBPROTOCOLS[1].as_bytes();
            }
        }
    }

    if !upgrade_websocket {
        return Err(WsError::NotWebSocket);
    }
    if !connection_upgrade {
        return Err(WsError::NoConnectionUpgrade);
    }
    if versions.is_empty() {
        return Err(WsError::MissingHeader("Sec-WebSocket-Version"));
    }
    if versions.iter().any(|v| *v != b"13") {
        let offered: Vec<_> = versions
            .iter()
            .map(|v| String::from_utf8_lossy(v))
            .collect();
        return Err(WsError::UnsupportedVersion(offered.join(", ")));
    }
    let key = key.ok_or(WsError::MissingHeader("Sec-WebSocket-Key"))?;
    if BASE64.decode(key).map_or(true, |nonce| nonce.len() != 16) {
        return Err(WsError::BadKey);
    }
    let subprotocol = match (offers_mqtt, offers_mqtt31) {
        (true, _) => SUBPROTOCOLS[0],
        (false, true) => SUBPROTOCOLS[1],
        (false, false) => return Err(WsError::NoMqttSubprotocol),
    };
    Ok(Upgrade {
        path,
        accept: accept_key(key),
        subprotocol,
    })
}

/// Takes the next CRLF-terminated line off `rest`. A bare CR or LF inside a line would let
/// two parsers disagree on where a header ends, so such a line is returned as is and
/// fails the token and value checks or simply matches nothing we use.
fn next_line<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let at = memchr::memmem::find(rest, b"\r\n")?;
    let line = &rest[..at];
    *rest = &rest[at + 2..];
    Some(line)
}

fn http_version_at_least_1_1(version: &[u8]) -> bool {
    match version.strip_prefix(b"HTTP/") {
        Some(&[major @ b'0'..=b'9', b'.', minor @ b'0'..=b'9']) => (major, minor) >= (b'1', b'1'),
        _ => false,
    }
}

/// Optional white space around header values and list items (RFC 7230 §3.2.3).
fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// The non-empty items of a comma-separated header value.
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|item| !item.is_empty())
}

/// `tchar` of RFC 7230 §3.2.6: what a header name may be made of.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `Sec-WebSocket-Accept`: base64 of the SHA-1 of the key as sent plus the GUID (§4.2.2).
fn accept_key(key: &[u8]) -> String {
    let mut sha1 = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    sha1.update(key);
    sha1.update(ACCEPT_GUID);
    BASE64.encode(sha1.finish())
}

/// Answers a refused handshake with its HTTP status, a one-line reason for whoever is
/// debugging with curl, and the end of the connection.
async fn answer_error<S: AsyncWrite + Unpin>(stream: &mut S, e: &WsError) -> io::Result<()> {
    let Some(status) = e.http_status() else {
        return Ok(());
    };
    let (reason, headers) = match status {
        405 => ("Method Not Allowed", "Allow: GET\r\nConnection: close\r\n"),
        // RFC 7231 §6.5.15: a 426 names the protocol to upgrade to; RFC 6455 §4.4: and
        // the versions we speak.
        426 => (
            "Upgrade Required",
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nConnection: Upgrade, close\r\n",
        ),
        431 => ("Request Header Fields Too Large", "Connection: close\r\n"),
        _ => ("Bad Request", "Connection: close\r\n"),
    };
    let body = format!("{e}\n");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\n{headers}Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;
    stream.shutdown().await
}

/// A WebSocket connection after the handshake, seen as the byte stream it carries.
///
/// Reading yields the payload bytes of the client's binary and continuation frames, in
/// order and unmasked; a ping is answered with a pong, a close with a close and then end
/// of stream (`Ok` with no bytes). A broken frame rule queues a close with its status
/// code and returns a [`FrameError`]; once a close is queued, writes fail (`BrokenPipe`),
/// as no data frame may follow it. Writing sends each `poll_write` as one unmasked,
/// final binary frame of at most 64 KiB (a larger buffer is a short write); shutdown sends
/// a close (1000) first.
///
/// Drive it from one task, as the broker's connection task does: reading may write (the
/// pong or close reply goes out at once when the socket takes it, else on the next read,
/// write, flush or shutdown), so the halves of a `tokio::io::split` in two tasks could
/// steal each other's wake-ups. Bytes written are only sure to leave after `flush`, and a
/// close frame is only sure to leave after `shutdown`.
///
/// # Cancel safety
///
/// Both directions are cancel safe in the way a `TcpStream` is. `poll_write` returns
/// `Pending` only before it has taken any byte; once it returns `Ok(n)` those `n` bytes
/// will be sent (an unwritten rest of the frame is kept and goes first next time), so a
/// dropped `write_all` future's own count of what was written is exact. A frame being
/// read is state of the stream, not of the future, and bytes reach the caller's buffer
/// only when `poll_read` returns them.
pub struct WsStream<S> {
    io: S,
    path: String,
    subprotocol: &'static str,
    max_frame: usize,
    /// Received bytes not yet parsed or handed out: `rbuf[rpos..rend]`.
    rbuf: Box<[u8]>,
    rpos: usize,
    rend: usize,
    read: ReadState,
    /// Between a data frame without FIN and the continuation frame with FIN.
    fragmented: bool,
    /// Frame bytes owed to the client, in order: the unwritten tail of a data frame and
    /// whole control frames. Never holds part of a frame whose rest is not here, so a
    /// control frame can always be appended.
    out: BytesMut,
    /// The last ping not yet answered (RFC 6455 §5.5.3 lets one pong answer several).
    pong: Option<Control>,
    closing: Closing,
    /// A write failed mid-frame: what the client has is no longer a valid frame sequence.
    write_broken: bool,
}

impl<S: fmt::Debug> fmt::Debug for WsStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsStream")
            .field("io", &self.io)
            .field("path", &self.path)
            .field("subprotocol", &self.subprotocol)
            .field("read", &self.read)
            .field("buffered_in", &(self.rend - self.rpos))
            .field("buffered_out", &self.out.len())
            .field("closing", &self.closing)
            .field("write_broken", &self.write_broken)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ReadState {
    /// Waiting for the next frame header.
    Header,
    /// Inside a data frame's payload: `left` bytes to go, the mask key and where in it the
    /// next byte falls.
    Payload {
        left: u64,
        mask: [u8; 4],
        phase: usize,
    },
    /// The client's close frame arrived, or the connection ended between frames.
    Closed,
    Failed(FrameError),
}

/// Where our close frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    Open,
    /// To be sent once `out` is drained, with this status code (none: an empty body).
    Queued(Option<u16>),
    /// In `out` or already written: no data frame may follow (RFC 6455 §5.5.1).
    Committed,
}

/// A control frame's payload.
#[derive(Debug, Clone, Copy)]
struct Control {
    len: usize,
    body: [u8; MAX_CONTROL_PAYLOAD],
}

impl Control {
    fn payload(&self) -> &[u8] {
        &self.body[..self.len]
    }
}

/// A parsed client frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHeader {
    fin: bool,
    opcode: u8,
    len: u64,
    mask: [u8; 4],
    /// Bytes the header takes on the wire.
    size: usize,
}

impl<S> WsStream<S> {
    fn new(
        io: S,
        path: String,
        subprotocol: &'static str,
        limits: &WsLimits,
        early: &[u8],
    ) -> Self {
        let mut rbuf = vec![0u8; READ_BUF.max(early.len())].into_boxed_slice();
        rbuf[..early.len()].copy_from_slice(early);
        WsStream {
            io,
            path,
            subprotocol,
            max_frame: limits.max_frame,
            rbuf,
            rpos: 0,
            rend: early.len(),
            read: ReadState::Header,
            fragmented: false,
            out: BytesMut::new(),
            pong: None,
            closing: Closing::Open,
            write_broken: false,
        }
    }

    /// The request target of the upgrade request, e.g. `/mqtt`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The subprotocol agreed on: `mqtt`, or `mqttv3.1` for a client that offered only that.
    pub fn subprotocol(&self) -> &str {
        self.subprotocol
    }

    /// The transport underneath (for its peer address, say). There is no `get_mut`:
    /// bytes written around the framing would corrupt it.
    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Writes `out`, then the queued pong and close frames, until all is written.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_broken {
            return Poll::Ready(Err(broken_pipe("an earlier WebSocket write failed")));
        }
        loop {
            while !self.out.is_empty() {
                match ready!(Pin::new(&mut self.io).poll_write(cx, &self.out)) {
                    Ok(0) => {
                        self.write_broken = true;
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    Ok(n) => self.out.advance(n.min(self.out.len())),
                    Err(e) => {
                        self.write_broken = true;
                        return Poll::Ready(Err(e));
                    }
                }
            }
            if let Some(pong) = self.pong.take() {
                put_frame(&mut self.out, OP_PONG, pong.payload());
            } else if let Closing::Queued(code) = self.closing {
                let body = code.map(u16::to_be_bytes);
                put_frame(
                    &mut self.out,
                    OP_CLOSE,
                    body.as_ref().map_or(&[], |b| &b[..]),
                );
                self.closing = Closing::Committed;
            } else {
                // A 64 KiB tail once should not stay with an idle connection for good.
                if self.out.capacity() > READ_BUF {
                    self.out = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// True while a control frame is queued or part of `out` is unwritten.
    fn owes_control(&self) -> bool {
        !self.out.is_empty() || self.pong.is_some() || matches!(self.closing, Closing::Queued(_))
    }

    /// Sends queued control frames if the socket takes them now; otherwise they go with
    /// the next read, write, flush or shutdown. A write error is kept in `write_broken` and
    /// reported by the next write, so the read that triggered this still reports its own
    /// outcome.
    fn flush_control(&mut self, cx: &mut Context<'_>) {
        let _ = self.poll_drain(cx);
    }

    /// Fails the read side for good, queueing the close frame the error calls for.
    fn fail(&mut self, cx: &mut Context<'_>, e: FrameError) -> Poll<io::Result<()>> {
        self.read = ReadState::Failed(e.clone());
        self.pong = None;
        if let Some(code) = e.close_code()
            && self.closing == Closing::Open
        {
            self.closing = Closing::Queued(Some(code));
            self.flush_control(cx);
        }
        Poll::Ready(Err(e.into()))
    }

    /// Reads more bytes into `rbuf`; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rpos == self.rend {
            self.rpos = 0;
            self.rend = 0;
        } else if self.rbuf.len() - self.rend < MAX_HEADER + MAX_CONTROL_PAYLOAD {
            // Make room for a whole header plus control payload, which is all that is ever
            // waited for here: data payloads are handed out before more is read. So `free`
            // below is never empty, which would read as the end of the stream.
            self.rbuf.copy_within(self.rpos..self.rend, 0);
            self.rend -= self.rpos;
            self.rpos = 0;
        }
        let mut free = ReadBuf::new(&mut self.rbuf[self.rend..]);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut free))?;
        let n = free.filled().len();
        self.rend += n;
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A pong or close reply the socket could not take earlier goes now, so that a
        // driver that only reads (waiting for the client) still answers; the write
        // readiness this registers is what wakes it for that.
        if this.owes_control() {
            this.flush_control(cx);
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match this.read {
                ReadState::Failed(ref e) => return Poll::Ready(Err(e.clone().into())),
                ReadState::Closed => return Poll::Ready(Ok(())),
                ReadState::Payload { left: 0, .. } => this.read = ReadState::Header,
                ReadState::Payload { left, mask, phase } => {
                    let want = usize::try_from(left)
                        .map_or(buf.remaining(), |left| left.min(buf.remaining()));
                    let n = if this.rpos < this.rend {
                        let n = want.min(this.rend - this.rpos);
                        let chunk = &mut this.rbuf[this.rpos..this.rpos + n];
                        unmask(chunk, mask, phase);
                        buf.put_slice(chunk);
                        this.rpos += n;
                        n
                    } else if want >= READ_BUF {
                        // A large read straight into the caller's buffer: no copy.
                        let dst = buf.initialize_unfilled_to(want.min(MAX_DIRECT_READ));
                        let mut direct = ReadBuf::new(dst);
                        ready!(Pin::new(&mut this.io).poll_read(cx, &mut direct))?;
                        let n = direct.filled().len();
                        if n == 0 {
                            return this.fail(cx, FrameError::Truncated);
                        }
                        unmask(&mut dst[..n], mask, phase);
                        buf.advance(n);
                        n
                    } else {
                        if ready!(this.poll_fill(cx))? == 0 {
                            return this.fail(cx, FrameError::Truncated);
                        }
                        continue;
                    };
                    this.read = ReadState::Payload {
                        left: left - n as u64,
                        mask,
                        phase: (phase + n) % 4,
                    };
                    return Poll::Ready(Ok(()));
                }
                ReadState::Header => {
                    let parsed = parse_header(
                        &this.rbuf[this.rpos..this.rend],
                        this.max_frame,
                        this.fragmented,
                    );
                    let header = match parsed {
                        Ok(Some(header)) => header,
                        Ok(None) => {
                            let between_frames = this.rpos == this.rend && !this.fragmented;
                            if ready!(this.poll_fill(cx))? == 0 {
                                if between_frames {
                                    // Gone without a close frame; to the broker that is
                                    // the end of the stream like a TCP FIN.
                                    this.read = ReadState::Closed;
                                    return Poll::Ready(Ok(()));
                                }
                                return this.fail(cx, FrameError::Truncated);
                            }
                            continue;
                        }
                        Err(e) => return this.fail(cx, e),
                    };
                    if header.opcode & 0x8 == 0 {
                        this.rpos += header.size;
                        this.fragmented = !header.fin;
                        this.read = ReadState::Payload {
                            left: header.len,
                            mask: header.mask,
                            phase: 0,
                        };
                        continue;
                    }
                    // A control frame (at most 125 bytes) is taken whole from `rbuf`.
                    // `len` fits: parse_header refused more than 125.
                    let len = header.len as usize;
                    if this.rend - this.rpos < header.size + len {
                        if ready!(this.poll_fill(cx))? == 0 {
                            return this.fail(cx, FrameError::Truncated);
                        }
                        continue;
                    }
                    let start = this.rpos + header.size;
                    let mut control = Control {
                        len,
                        body: [0; MAX_CONTROL_PAYLOAD],
                    };
                    control.body[..len].copy_from_slice(&this.rbuf[start..start + len]);
                    unmask(&mut control.body[..len], header.mask, 0);
                    this.rpos = start + len;
                    match header.opcode {
                        OP_PING if this.closing == Closing::Open => {
                            this.pong = Some(control);
                            this.flush_control(cx);
                        }
                        OP_CLOSE => match close_reply(control.payload()) {
                            Ok(code) => {
                                // RFC 6455 §5.5.1: answer with a close, echoing the code.
                                if this.closing == Closing::Open {
                                    this.closing = Closing::Queued(code);
                                    this.flush_control(cx);
                                }
                                this.read = ReadState::Closed;
                                return Poll::Ready(Ok(()));
                            }
                            Err(e) => return this.fail(cx, e),
                        },
                        // A pong, or a ping after our close: nothing to answer.
                        _ => {}
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closing != Closing::Open {
            return Poll::Ready(Err(broken_pipe("the WebSocket is closing")));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Whatever is owed goes first; until it is out, nothing of `buf` is taken.
        ready!(this.poll_drain(cx))?;
        let payload = &buf[..buf.len().min(MAX_OUT_FRAME)];
        let (header, header_len) = frame_header(OP_BINARY, payload.len());
        let header = &header[..header_len];

        if !this.io.is_write_vectored() {
            // One copy beats two writes (and, over TLS, two records) per frame.
            this.out.reserve(header.len() + payload.len());
            this.out.put_slice(header);
            this.out.put_slice(payload);
            // The frame is ours now: Pending only delays it to the next write or flush.
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(payload.len()));
        }

        // Header and payload in one vectored write, straight from the caller's buffer.
        let total = header.len() + payload.len();
        let mut written = 0;
        while written < total {
            let (first, second) = if written < header.len() {
                (&header[written..], payload)
            } else {
                (&payload[written - header.len()..], &[][..])
            };
            let slices = [IoSlice::new(first), IoSlice::new(second)];
            match Pin::new(&mut this.io).poll_write_vectored(cx, &slices) {
                Poll::Pending if written == 0 => return Poll::Pending,
                Poll::Pending => {
                    // Part of the frame is on the wire, so all of it is committed: keep
                    // the rest (one copy, at most MAX_OUT_FRAME) and report it written.
                    this.out.put_slice(first);
                    this.out.put_slice(second);
                    return Poll::Ready(Ok(payload.len()));
                }
                Poll::Ready(Ok(0)) => {
                    this.write_broken = true;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => {
                    this.write_broken |= written > 0;
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(Ok(payload.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// Sends a close frame (1000, unless one was already sent) and shuts the transport
    /// down. The close is best effort: a transport that cannot take it is shut down anyway.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closing == Closing::Open {
            this.pong = None;
            this.closing = Closing::Queued(Some(CLOSE_NORMAL));
        }
        if !this.write_broken {
            let _ = ready!(this.poll_drain(cx));
            let _ = ready!(Pin::new(&mut this.io).poll_flush(cx));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

fn broken_pipe(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, why)
}

/// A final, unmasked server frame header for a payload of `len` bytes (RFC 6455 §5.2):
/// the bytes and how many of them are used.
fn frame_header(opcode: u8, len: usize) -> ([u8; 10], usize) {
    let mut header = [0u8; 10];
    header[0] = 0x80 | opcode;
    if let Ok(short @ 0..=125) = u8::try_from(len) {
        header[1] = short;
        (header, 2)
    } else if let Ok(medium) = u16::try_from(len) {
        header[1] = 126;
        header[2..4].copy_from_slice(&medium.to_be_bytes());
        (header, 4)
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (header, 10)
    }
}

fn put_frame(out: &mut BytesMut, opcode: u8, payload: &[u8]) {
    let (header, header_len) = frame_header(opcode, payload.len());
    out.reserve(header_len + payload.len());
    out.put_slice(&header[..header_len]);
    out.put_slice(payload);
}

/// Parses a client frame header from the start of `buf`: `Ok(None)` until all of it is
/// there. Rules are checked as soon as the bytes they need have arrived, so a bad frame is
/// refused without waiting for (or reading) its payload.
fn parse_header(
    buf: &[u8],
    max_frame: usize,
    fragmented: bool,
) -> Result<Option<FrameHeader>, FrameError> {
    let &[b0, b1, ..] = buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    if !matches!(
        opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(FrameError::ReservedOpcode(opcode));
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let short = b1 & 0x7F;
    let control = opcode & 0x8 != 0;
    if control && (!fin || usize::from(short) > MAX_CONTROL_PAYLOAD) {
        return Err(FrameError::BadControl);
    }
    match opcode {
        OP_TEXT => return Err(FrameError::Text),
        OP_CONTINUATION if !fragmented => return Err(FrameError::UnexpectedContinuation),
        OP_BINARY if fragmented => return Err(FrameError::UnfinishedMessage),
        _ => {}
    }
    let (len, extended) = match short {
        126 => {
            let Some(&[a, b]) = buf.get(2..4) else {
                return Ok(None);
            };
            let len = u16::from_be_bytes([a, b]);
            if len < 126 {
                return Err(FrameError::BadLength);
            }
            (u64::from(len), 2)
        }
        127 => {
            let Some(&[a, b, c, d, e, f, g, h]) = buf.get(2..10) else {
                return Ok(None);
            };
            let len = u64::from_be_bytes([a, b, c, d, e, f, g, h]);
            if len <= 0xFFFF || len >> 63 != 0 {
                return Err(FrameError::BadLength);
            }
            (len, 8)
        }
        short => (u64::from(short), 0),
    };
    if !control && len > u64::try_from(max_frame).unwrap_or(u64::MAX) {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame,
        });
    }
    let Some(&[m0, m1, m2, m3]) = buf.get(2 + extended..6 + extended) else {
        return Ok(None);
    };
    Ok(Some(FrameHeader {
        fin,
        opcode,
        len,
        mask: [m0, m1, m2, m3],
        size: 6 + extended,
    }))
}

/// The close reply to a client's close body: its status code to echo, or none for an
/// empty body (RFC 6455 §5.5.1, §7.4).
fn close_reply(body: &[u8]) -> Result<Option<u16>, FrameError> {
    match body {
        [] => Ok(None),
        [_] => Err(FrameError::BadClose),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            // 1004-1006 and 1015 are reserved, never sent; 3000-4999 are for
            // applications; the rest below 5000 is unassigned.
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(FrameError::BadClose);
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(FrameError::CloseReasonNotUtf8);
            }
            Ok(Some(code))
        }
    }
}

/// XORs `data` with the mask key, `data[0]` falling on key byte `phase % 4` (§5.3).
fn unmask(data: &mut [u8], mask: [u8; 4], phase: usize) {
    let key: [u8; 4] = std::array::from_fn(|i| mask[(phase + i) % 4]);
    let mut words = data.chunks_exact_mut(4);
    for word in &mut words {
        for (b, k) in word.iter_mut().zip(key) {
            *b ^= k;
        }
    }
    for (b, k) in words.into_remainder().iter_mut().zip(key) {
        *b ^= k;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// The request of RFC 6455 §1.3, with the MQTT subprotocol.
    fn request(method: &str, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut text = format!("{method} /mqtt HTTP/1.1\r\nHost: gateway.local\r\n");
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        text.into_bytes()
    }

    fn good_headers() -> Vec<(&'static str, &'static str)> {
        vec![
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Protocol", "mqtt"),
        ]
    }

    fn with(name: &'static str, value: &'static str) -> Vec<(&'static str, &'static str)> {
        let mut headers: Vec<_> = good_headers()
            .into_iter()
            .filter(|(n, _)| *n != name)
            .collect();
        headers.push((name, value));
        headers
    }

    fn without(name: &str) -> Vec<(&'static str, &'static str)> {
        good_headers()
            .into_iter()
            .filter(|(n, _)| *n != name)
            .collect()
    }

    #[test]
    fn the_accept_key_of_rfc_6455_section_1_3_is_reproduced() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_valid_request_is_accepted_with_its_path_and_the_mqtt_subprotocol() {
        let upgrade = check_request(&request("GET", &good_headers())).unwrap();
        assert_eq!(
            upgrade,
            Upgrade {
                path: "/mqtt".into(),
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(),
                subprotocol: "mqtt",
            }
        );
    }

    #[test]
    fn header_names_are_case_insensitive_and_lists_are_searched() {
        let head = request(
            "GET",
            &[
                ("upgrade", "h2c, WebSocket"),
                ("CONNECTION", "keep-alive,  Upgrade "),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-Websocket-Version", "13"),
                ("sec-websocket-protocol", "wamp"),
                ("Sec-WebSocket-Protocol", "mqttv3.1 , mqtt"),
            ],
        );
        assert_eq!(check_request(&head).unwrap().subprotocol, "mqtt");
    }

    #[test]
    fn mqttv3_1_is_taken_when_it_is_the_only_mqtt_offer() {
        let head = request("GET", &with("Sec-WebSocket-Protocol", "mqttv3.1"));
        assert_eq!(check_request(&head).unwrap().subprotocol, "mqttv3.1");
    }

    #[test]
    fn each_broken_rule_has_its_error_and_status() {
        let cases: Vec<(Vec<u8>, u16, &str)> = vec![
            (request("POST", &good_headers()), 405, "NotGet"),
            (request("GET", &without("Upgrade")), 426, "NotWebSocket"),
            (request("GET", &with("Upgrade", "h2c")), 426, "NotWebSocket"),
            (
                request("GET", &with("Connection", "keep-alive")),
                400,
                "NoConnectionUpgrade",
            ),
            (
                request("GET", &without("Sec-WebSocket-Version")),
                400,
                "MissingHeader",
            ),
            (
                request("GET", &with("Sec-WebSocket-Version", "8")),
                426,
                "UnsupportedVersion",
            ),
            (
                request("GET", &without("Sec-WebSocket-Key")),
                400,
                "MissingHeader",
            ),
            (
                request("GET", &with("Sec-WebSocket-Key", "c2hvcnQ=")),
                400,
                "BadKey",
            ),
            (
                request("GET", &with("Sec-WebSocket-Key", "not base64 at all!!")),
                400,
                "BadKey",
            ),
            (
                request("GET", &without("Sec-WebSocket-Protocol")),
                400,
                "NoMqttSubprotocol",
            ),
            (
                request("GET", &with("Sec-WebSocket-Protocol", "MQTT, wamp")),
                400,
                "NoMqttSubprotocol",
            ),
            (
                b"GET /mqtt HTTP/1.0\r\nUpgrade: websocket\r\n\r\n".to_vec(),
                400,
                "Malformed",
            ),
            (b"GET /mqtt\r\n\r\n".to_vec(), 400, "Malformed"),
            (
                b"GET /mqtt HTTP/1.1\r\nUpgrade : websocket\r\n\r\n".to_vec(),
                400,
                "Malformed",
            ),
            (
                b"GET /mqtt HTTP/1.1\r\nUpgrade: websocket\r\n folded\r\n\r\n".to_vec(),
                400,
                "Malformed",
            ),
        ];
        for (head, status, variant) in cases {
            let e = check_request(&head).unwrap_err();
            assert_eq!(e.http_status(), Some(status), "{e}");
            assert!(
                format!("{e:?}").starts_with(variant),
                "{} gave {e:?}, expected {variant}",
                String::from_utf8_lossy(&head)
            );
        }
    }

    #[test]
    fn a_repeated_key_is_refused() {
        let mut headers = good_headers();
        headers.push(("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(matches!(
            check_request(&request("GET", &headers)),
            Err(WsError::BadKey)
        ));
    }

    fn masked(b0: u8, len_bytes: &[u8]) -> Vec<u8> {
        let mut frame = vec![b0];
        frame.extend_from_slice(len_bytes);
        frame[1] |= 0x80;
        frame.extend_from_slice(&[1, 2, 3, 4]);
        frame
    }

    #[test]
    fn headers_parse_in_all_three_length_forms_and_wait_for_missing_bytes() {
        let frame = masked(0x82, &[5]);
        for cut in 0..frame.len() {
            assert_eq!(parse_header(&frame[..cut], 1 << 20, false), Ok(None));
        }
        let header = parse_header(&frame, 1 << 20, false).unwrap().unwrap();
        assert_eq!(
            header,
            FrameHeader {
                fin: true,
                opcode: OP_BINARY,
                len: 5,
                mask: [1, 2, 3, 4],
                size: 6
            }
        );
        let medium = parse_header(&masked(0x02, &[126, 0x01, 0x00]), 1 << 20, false);
        assert_eq!(medium.unwrap().unwrap().len, 256);
        let long = masked(0x00, &[127, 0, 0, 0, 0, 0, 1, 0, 0]);
        let header = parse_header(&long, 1 << 20, true).unwrap().unwrap();
        assert_eq!((header.fin, header.len, header.size), (false, 65536, 14));
    }

    #[test]
    fn header_rules_are_enforced() {
        let cases: Vec<(Vec<u8>, bool, FrameError)> = vec![
            (vec![0x82, 0x05], false, FrameError::Unmasked),
            (masked(0x81, &[1]), false, FrameError::Text),
            (masked(0xC2, &[1]), false, FrameError::ReservedBits),
            (masked(0x83, &[1]), false, FrameError::ReservedOpcode(3)),
            (masked(0x8B, &[1]), false, FrameError::ReservedOpcode(0xB)),
            (masked(0x09, &[1]), false, FrameError::BadControl),
            (masked(0x89, &[126, 0, 126]), false, FrameError::BadControl),
            (
                masked(0x80, &[1]),
                false,
                FrameError::UnexpectedContinuation,
            ),
            (masked(0x82, &[1]), true, FrameError::UnfinishedMessage),
            (masked(0x82, &[126, 0, 125]), false, FrameError::BadLength),
            (
                masked(0x82, &[127, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]),
                false,
                FrameError::BadLength,
            ),
            (
                masked(0x82, &[127, 0x80, 0, 0, 0, 0, 1, 0, 0]),
                false,
                FrameError::BadLength,
            ),
            (
                masked(0x82, &[127, 0, 0, 0, 0, 0, 0x10, 0, 1]),
                false,
                FrameError::TooLarge {
                    len: 0x10_0001,
                    max: 1 << 20,
                },
            ),
        ];
        for (frame, fragmented, expected) in cases {
            assert_eq!(
                parse_header(&frame, 1 << 20, fragmented),
                Err(expected.clone()),
                "{frame:02x?}"
            );
        }
    }

    #[test]
    fn a_control_frame_is_not_held_to_the_data_frame_limit() {
        let ping = masked(0x89, &[100]);
        assert!(parse_header(&ping, 10, false).unwrap().is_some());
    }

    #[test]
    fn server_headers_use_the_shortest_length_form() {
        assert_eq!(
            frame_header(OP_BINARY, 125),
            ([0x82, 125, 0, 0, 0, 0, 0, 0, 0, 0], 2)
        );
        assert_eq!(frame_header(OP_BINARY, 126).0[..4], [0x82, 126, 0, 126]);
        assert_eq!(frame_header(OP_PONG, 65535).0[..4], [0x8A, 126, 0xFF, 0xFF]);
        assert_eq!(
            frame_header(OP_BINARY, 65536),
            ([0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0], 10)
        );
    }

    #[test]
    fn unmasking_in_pieces_equals_unmasking_at_once() {
        let mask = [0xA1, 0xB2, 0xC3, 0xD4];
        let original: Vec<u8> = (0..=255u8).cycle().take(1031).collect();
        let mut whole = original.clone();
        unmask(&mut whole, mask, 0);
        for (i, b) in whole.iter().enumerate() {
            assert_eq!(*b, original[i] ^ mask[i % 4]);
        }
        for split in [1, 2, 3, 5, 7, 500] {
            let mut pieces = original.clone();
            let (head, tail) = pieces.split_at_mut(split);
            unmask(head, mask, 0);
            unmask(tail, mask, split);
            assert_eq!(pieces, whole, "split at {split}");
        }
    }

    #[test]
    fn close_bodies_are_checked() {
        assert_eq!(close_reply(&[]), Ok(None));
        assert_eq!(close_reply(&[0x03, 0xE8]), Ok(Some(1000)));
        assert_eq!(close_reply(b"\x0f\xa0bye"), Ok(Some(4000)));
        assert_eq!(close_reply(&[0x03]), Err(FrameError::BadClose));
        assert_eq!(close_reply(&[0x03, 0xED]), Err(FrameError::BadClose)); // 1005
        assert_eq!(close_reply(&[0x03, 0xE7]), Err(FrameError::BadClose)); // 999
        assert_eq!(
            close_reply(&[0x03, 0xE8, 0xFF]),
            Err(FrameError::CloseReasonNotUtf8)
        );
    }
}
