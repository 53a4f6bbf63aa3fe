//! The Modbus wire: opening a bus's link (a serial port, a TCP connection, RTU frames
//! through a serial device server), sending one request at a time through tokio-modbus,
//! and what tokio-modbus leaves to its caller: the silent gap before each RTU frame,
//! discarding stale input, checking every reply against its request, and reopening a
//! link that failed. It must not schedule requests or retry them (the bus does), decode
//! point values (`value`) or know about MQTT.
//!
//! Why the checks: tokio-modbus's RTU client clears only its own buffer before a
//! request, so a reply that arrives after its request timed out sits in the port and is
//! taken as the answer to the next request (of the same unit and function code). Here a
//! `Line` discards whatever is waiting before every frame it sends, a timeout is
//! followed by a wait for a quiet line and a fresh context, a reply followed by another
//! frame is refused, and a reply must carry what its request asked for (a read of N
//! registers exactly N registers, a write the echo of its address and value or count).
//! One case no master can tell apart remains: a late reply that arrives after the next
//! request went out, to the same unit, of the same shape, with no second frame after it.

use std::borrow::Cow;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, sleep_until, timeout_at};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, ProtocolError, Request, Response, Slave};

use super::bus::{BusConfig, Rs485};
use super::{Data, ReadRange, Table, Write};
use crate::config::Parity;

/// The shortest silence Modbus RTU allows between frames at any baud rate (the spec fixes
/// t3.5 at 1.75 ms above 19200 baud); also the default gap for RTU over TCP, where the
/// device server's baud rate is unknown.
pub const MIN_INTER_FRAME_DELAY: Duration = Duration::from_micros(1750);

/// After a timeout or a bad reply the line must stay silent at least this long before
/// the next request: USB serial adapters hand bytes over in bursts up to their latency
/// timer apart (16 ms by default on FTDI chips), so a shorter silence proves nothing.
const MIN_FLUSH_QUIET: Duration = Duration::from_millis(20);

/// The longest wait for silence after a timeout. Half the timeout (see `flush_quiet`)
/// catches a slave that is slow rather than dead; this caps what a long timeout costs.
const MAX_FLUSH_QUIET: Duration = Duration::from_secs(1);

/// A line that keeps receiving for this long is not going to go quiet (noise, a
/// babbling device, a wrong baud rate): the link is closed and reopened instead.
const FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// Bytes past the expected reply that make the reply ambiguous: the smallest RTU frame
/// (an exception: unit, function, code, two CRC bytes). Fewer is line noise, such as
/// the single zero byte some RS-485 transceivers emit when they turn around.
const MIN_RTU_FRAME: usize = 5;

/// Reconnect backoff after a failed open or connect: first wait, doubled up to the cap.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Modbus TCP timeouts in a row (any unit) after which the connection is presumed dead
/// (half-open, a gateway that hung) and made anew. A single timeout is usually one slow
/// unit behind a gateway, which a new connection would not help.
const TCP_TIMEOUTS_BEFORE_RECONNECT: u32 = 3;

/// With `keep_connection: false`, how long the connection may stay idle before it is
/// closed: the requests of one poll cycle follow each other within milliseconds, so the
/// connection lives for a cycle and is closed between cycles.
const POLL_CYCLE_LINGER: Duration = Duration::from_millis(50);

/// How many stale bytes one poll may discard before it yields, so that a stream that
/// always has data cannot keep the task busy forever.
const DISCARD_PER_POLL: usize = 4096;

/// The most values one FC 15 / FC 16 request may carry (Modbus application protocol
/// v1.1b3: the byte count is one byte, the PDU at most 253 bytes).
const MAX_WRITE_COILS: usize = 1968;
const MAX_WRITE_REGISTERS: usize = 123;

/// One request as the bus hands it to the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Read(ReadRange),
    Write(Write),
}

/// What a request returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A read's values, exactly as many as were asked for.
    Data(Data),
    /// A write the device confirmed.
    Written,
}

/// Why one attempt at a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// No (complete) reply within the attempt's time; the input has been flushed since.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The device answered with a Modbus exception.
    #[error("exception {0}")]
    Exception(u8),
    /// The link could not be opened or failed; it is reopened (with backoff) on the next
    /// attempt.
    #[error("{0}")]
    Io(String),
    /// A reply that does not answer the request; the line has been resynchronised.
    #[error("{0}")]
    InvalidReply(String),
}

/// What the bus needs from a link: one attempt at a time, and closing when idle. The
/// real one is [`Wire`]; the bus's tests use a scripted one.
pub trait Transport: Send + 'static {
    /// Sends `op` to `unit` and waits at most `timeout` for its reply. Never retries.
    /// After a timeout or an invalid reply the implementation resynchronises the line
    /// before returning, so the next attempt starts clean.
    fn attempt(
        &mut self,
        unit: u8,
        op: &Op,
        timeout: Duration,
    ) -> impl Future<Output = Result<Reply, WireError>> + Send;

    /// How long the link may stay open with nothing to send; `None`: indefinitely.
    fn idle_limit(&self) -> Option<Duration>;

    /// Whether the link is open now.
    fn is_open(&self) -> bool;

    /// Closes the link; the next attempt opens it again.
    fn close(&mut self);

    /// Stale bytes discarded so far (late replies, noise).
    fn stale_bytes(&self) -> u64 {
        0
    }
}

impl Op {
    /// Refuses what no Modbus request can carry (an empty or oversized read or write, a
    /// range past address 65535), before it costs any bus time; tokio-modbus would send
    /// a corrupt frame (or panic in a debug build) for some of these.
    pub fn check(&self) -> Result<(), String> {
        let (what, address, count, max) = match self {
            Op::Read(range) => (
                "read",
                range.address,
                usize::from(range.count),
                usize::from(range.table.max_read()),
            ),
            Op::Write(Write::SingleCoil { .. } | Write::SingleRegister { .. }) => return Ok(()),
            Op::Write(Write::MultipleCoils { address, values }) => {
                ("coil write", *address, values.len(), MAX_WRITE_COILS)
            }
            Op::Write(Write::MultipleRegisters { address, values }) => (
                "register write",
                *address,
                values.len(),
                MAX_WRITE_REGISTERS,
            ),
        };
        if count == 0 || count > max {
            return Err(format!("a {what} must cover 1 to {max} items, not {count}"));
        }
        if usize::from(address) + count > 65536 {
            return Err(format!(
                "a {what} of {count} items from address {address} runs past address 65535"
            ));
        }
        Ok(())
    }

    fn request(&self) -> Request<'_> {
        match self {
            Op::Read(ReadRange {
                table,
                address,
                count,
            }) => match table {
                Table::Coil => Request::ReadCoils(*address, *count),
                Table::Discrete => Request::ReadDiscreteInputs(*address, *count),
                Table::Holding => Request::ReadHoldingRegisters(*address, *count),
                Table::Input => Request::ReadInputRegisters(*address, *count),
            },
            Op::Write(Write::SingleCoil { address, value }) => {
                Request::WriteSingleCoil(*address, *value)
            }
            Op::Write(Write::MultipleCoils { address, values }) => {
                Request::WriteMultipleCoils(*address, Cow::Borrowed(values))
            }
            Op::Write(Write::SingleRegister { address, value }) => {
                Request::WriteSingleRegister(*address, *value)
            }
            Op::Write(Write::MultipleRegisters { address, values }) => {
                Request::WriteMultipleRegisters(*address, Cow::Borrowed(values))
            }
        }
    }
}

/// Checks that `response` answers `op`: the right kind, exactly the number of items
/// asked for (bits come padded to whole bytes, so the byte count must match and the
/// padding is cut off), a write's echo of its address and value or count.
fn check_reply(op: &Op, response: Response) -> Result<Reply, String> {
    use Response as R;
    match (op, response) {
        (Op::Read(range), R::ReadCoils(bits)) if range.table == Table::Coil => {
            check_bits(range, bits)
        }
        (Op::Read(range), R::ReadDiscreteInputs(bits)) if range.table == Table::Discrete => {
            check_bits(range, bits)
        }
        (Op::Read(range), R::ReadHoldingRegisters(words)) if range.table == Table::Holding => {
            check_registers(range, words)
        }
        (Op::Read(range), R::ReadInputRegisters(words)) if range.table == Table::Input => {
            check_registers(range, words)
        }
        (Op::Write(Write::SingleCoil { address, value }), R::WriteSingleCoil(a, v)) => {
            echo(*address == a && *value == v, "coil", a, u16::from(v))
        }
        (Op::Write(Write::SingleRegister { address, value }), R::WriteSingleRegister(a, v)) => {
            echo(*address == a && *value == v, "register", a, v)
        }
        (Op::Write(Write::MultipleCoils { address, values }), R::WriteMultipleCoils(a, n)) => echo(
            *address == a && values.len() == usize::from(n),
            "coils",
            a,
            n,
        ),
        (
            Op::Write(Write::MultipleRegisters { address, values }),
            R::WriteMultipleRegisters(a, n),
        ) => echo(
            *address == a && values.len() == usize::from(n),
            "registers",
            a,
            n,
        ),
        (op, response) => Err(format!(
            "a function {} reply to a function {} request",
            response.function_code().value(),
            op.request().function_code().value()
        )),
    }
}

fn check_bits(range: &ReadRange, mut bits: Vec<bool>) -> Result<Reply, String> {
    let bytes = usize::from(range.count).div_ceil(8);
    if bits.len() != bytes * 8 {
        return Err(format!(
            "asked for {} bits ({bytes} bytes), the reply carries {} bytes",
            range.count,
            bits.len() / 8
        ));
    }
    bits.truncate(usize::from(range.count));
    Ok(Reply::Data(Data::Bits(bits)))
}

fn check_registers(range: &ReadRange, words: Vec<u16>) -> Result<Reply, String> {
    if words.len() != usize::from(range.count) {
        return Err(format!(
            "asked for {} registers, the reply carries {}",
            range.count,
            words.len()
        ));
    }
    Ok(Reply::Data(Data::Registers(words)))
}

fn echo(matches: bool, what: &str, address: u16, value: u16) -> Result<Reply, String> {
    if matches {
        Ok(Reply::Written)
    } else {
        Err(format!(
            "the write's confirmation names {what} {address} = {value}, not what was written"
        ))
    }
}

/// The length of an RTU frame carrying `result` (unit, PDU, CRC), for telling whether
/// more than one frame arrived; `None` for replies this module never asks for.
fn rtu_frame_len(result: &Result<Response, ExceptionCode>) -> Option<usize> {
    let pdu = match result {
        Err(_) => 2,
        Ok(Response::ReadCoils(bits) | Response::ReadDiscreteInputs(bits)) => 2 + bits.len() / 8,
        Ok(Response::ReadHoldingRegisters(words) | Response::ReadInputRegisters(words)) => {
            2 + 2 * words.len()
        }
        Ok(
            Response::WriteSingleCoil(..)
            | Response::WriteSingleRegister(..)
            | Response::WriteMultipleCoils(..)
            | Response::WriteMultipleRegisters(..),
        ) => 5,
        Ok(_) => return None,
    };
    Some(1 + pdu + 2)
}

/// The default RTU inter-frame gap: 3.5 character times at the port's baud rate and
/// framing (start bit, data bits, parity bit, stop bits), at least
/// [`MIN_INTER_FRAME_DELAY`].
pub fn default_inter_frame_delay(
    baud: u32,
    parity: Parity,
    data_bits: u8,
    stop_bits: u8,
) -> Duration {
    let parity_bits = u64::from(parity != Parity::None);
    let bits = 1 + u64::from(data_bits) + parity_bits + u64::from(stop_bits);
    // 3.5 characters of `bits` bits at `baud` bits per second, in nanoseconds.
    let nanos = bits * 3_500_000_000 / u64::from(baud.max(1));
    Duration::from_nanos(nanos).max(MIN_INTER_FRAME_DELAY)
}

/// Anything a bus talks over: a serial port, a pty, a TCP stream.
trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// The byte stream under a tokio-modbus context, shared with the [`Wire`] so the wire
/// can flush it and build a new context on it. Before the first byte of every frame it
/// discards whatever input is waiting and keeps the line silent for the inter-frame
/// gap; it counts what arrives after each frame it sends.
///
/// The lock is only ever taken inside a poll function or a short accessor, never held
/// across an await, and only one task (the bus's) uses a line.
#[derive(Clone)]
struct Line {
    state: Arc<Mutex<LineState>>,
}

struct LineState {
    stream: Box<dyn ByteStream>,
    /// Silence required before a frame is sent.
    gap: Duration,
    /// When the last byte was received or the last frame was flushed.
    quiet_since: Instant,
    /// A frame is being written (its first byte was accepted, it is not flushed yet).
    sending: bool,
    /// Wakes the writer when the gap has passed.
    gap_timer: Pin<Box<Sleep>>,
    /// Bytes received since the current frame started going out.
    received: usize,
    /// Stale bytes discarded over the line's life.
    discarded: u64,
}

impl fmt::Debug for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Line").finish_non_exhaustive()
    }
}

impl Line {
    /// Wraps `stream`. Must be called within a tokio runtime (it makes a timer).
    fn new(stream: impl AsyncRead + AsyncWrite + Send + Unpin + 'static, gap: Duration) -> Line {
        let now = Instant::now();
        Line {
            state: Arc::new(Mutex::new(LineState {
                stream: Box::new(stream),
                gap,
                quiet_since: now,
                sending: false,
                gap_timer: Box::pin(sleep_until(now)),
                received: 0,
                discarded: 0,
            })),
        }
    }

    fn lock(&self) -> io::Result<MutexGuard<'_, LineState>> {
        // Poisoned only if a poll function panicked while holding it; the stream's state
        // is then unknown and the link must be reopened, which an I/O error does.
        self.state
            .lock()
            .map_err(|_| io::Error::other("the line's state was lost to a panic"))
    }

    fn received(&self) -> io::Result<usize> {
        Ok(self.lock()?.received)
    }

    fn discarded(&self) -> u64 {
        self.lock().map_or(0, |state| state.discarded)
    }

    /// Reads and drops input until none has arrived for `quiet` (counted from now at the
    /// earliest); returns how many bytes it dropped. Fails if the line has not gone quiet
    /// within [`FLUSH_LIMIT`] or the stream fails or ends.
    async fn discard_until_quiet(&self, quiet: Duration) -> io::Result<usize> {
        let start = Instant::now();
        let give_up = start + FLUSH_LIMIT;
        let before = self.lock()?.discarded;
        let mut timer = Box::pin(sleep_until(start + quiet));
        poll_fn(|cx| {
            let mut state = self.lock()?;
            loop {
                ready!(state.poll_discard(cx))?;
                let now = Instant::now();
                let quiet_at = state.quiet_since.max(start) + quiet;
                if now >= quiet_at {
                    // Whatever frame was going out when a timeout cut it off is over:
                    // the next one waits for the gap and discards stale input again.
                    state.sending = false;
                    let dropped = state.discarded - before;
                    return Poll::Ready(Ok(usize::try_from(dropped).unwrap_or(usize::MAX)));
                }
                if now >= give_up {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the line did not go quiet within {FLUSH_LIMIT:?}"),
                    )));
                }
                timer.as_mut().reset(quiet_at.min(give_up));
                ready!(timer.as_mut().poll(cx));
            }
        })
        .await
    }
}

impl LineState {
    /// Drops whatever input is waiting. Ready once the stream has nothing more (its read
    /// is then registered for wake-up); Pending, with a wake-up already due, after
    /// [`DISCARD_PER_POLL`] bytes. A stream that ended is an error: the peer is gone.
    fn poll_discard(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let mut scratch = [0u8; 256];
        let mut total = 0;
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the other end closed the connection",
                        )));
                    }
                    total += n;
                    self.discarded += n as u64;
                    self.quiet_since = Instant::now();
                    if total >= DISCARD_PER_POLL {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    /// Ready when a frame may go out: nothing stale waiting, and the line silent for
    /// the gap. Bytes that arrive while waiting restart the gap.
    fn poll_ready_to_send(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_discard(cx))?;
            let ready_at = self.quiet_since + self.gap;
            if Instant::now() >= ready_at {
                return Poll::Ready(Ok(()));
            }
            self.gap_timer.as_mut().reset(ready_at);
            ready!(self.gap_timer.as_mut().poll(cx));
        }
    }
}

impl AsyncRead for Line {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut guard = self.lock()?;
        let state = &mut *guard;
        let before = buf.filled().len();
        ready!(Pin::new(&mut state.stream).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n > 0 {
            state.received += n;
            state.quiet_since = Instant::now();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Line {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut guard = self.lock()?;
        let state = &mut *guard;
        if !state.sending {
            ready!(state.poll_ready_to_send(cx))?;
            state.sending = true;
            state.received = 0;
        }
        Pin::new(&mut state.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let mut guard = self.lock()?;
        let state = &mut *guard;
        ready!(Pin::new(&mut state.stream).poll_flush(cx))?;
        if state.sending {
            // A serial port's flush waits until the bytes have left the UART (tcdrain),
            // so the gap before the next frame counts from here.
            state.sending = false;
            state.quiet_since = Instant::now();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let mut guard = self.lock()?;
        Pin::new(&mut guard.stream).poll_shutdown(cx)
    }
}

/// An open link: the line and the tokio-modbus context on it.
struct Conn {
    line: Line,
    ctx: Context,
    /// `Some(gap)` for RTU framing (serial or through a device server), `None` for
    /// Modbus TCP (MBAP headers with transaction ids).
    rtu_gap: Option<Duration>,
}

impl Conn {
    fn rtu(line: Line, gap: Duration) -> Conn {
        let ctx = tokio_modbus::client::rtu::attach_slave(line.clone(), Slave(0));
        Conn {
            line,
            ctx,
            rtu_gap: Some(gap),
        }
    }

    fn tcp(line: Line) -> Conn {
        let ctx = tokio_modbus::client::tcp::attach_slave(line.clone(), Slave(0));
        Conn {
            line,
            ctx,
            rtu_gap: None,
        }
    }
}

/// A bus's link, opened lazily on the first attempt and reopened after a failure (with
/// capped exponential backoff between failed opens). Owned by the bus task.
pub struct Wire {
    config: BusConfig,
    conn: Option<Conn>,
    /// The wait after the next failed open.
    backoff: Duration,
    /// After a failed open: no new try before this instant, and why the last one failed.
    blocked: Option<(Instant, String)>,
    tcp_timeouts_in_a_row: u32,
    /// Stale bytes discarded by lines already closed.
    stale_before: u64,
}

impl fmt::Debug for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wire")
            .field("config", &self.config)
            .field("open", &self.conn.is_some())
            .field("blocked", &self.blocked)
            .finish_non_exhaustive()
    }
}

impl Wire {
    /// A closed wire for `config`; nothing is opened until the first attempt.
    pub fn new(config: BusConfig) -> Wire {
        Wire {
            config,
            conn: None,
            backoff: RECONNECT_MIN,
            blocked: None,
            tcp_timeouts_in_a_row: 0,
            stale_before: 0,
        }
    }

    /// One attempt at `op` on `unit`, opening the link first if needed; the whole
    /// attempt (opening included) is bounded by `timeout`. See [`Transport::attempt`].
    pub async fn attempt(
        &mut self,
        unit: u8,
        op: &Op,
        timeout: Duration,
    ) -> Result<Reply, WireError> {
        let deadline = Instant::now() + timeout;
        self.open(deadline).await?;
        let Some(conn) = self.conn.as_mut() else {
            return Err(WireError::Io("the link is not open".into()));
        };
        conn.ctx.set_slave(Slave(unit));
        let result = match timeout_at(deadline, conn.ctx.call(op.request())).await {
            Err(_elapsed) => {
                self.after_timeout(timeout).await;
                return Err(WireError::Timeout(timeout));
            }
            Ok(Err(tokio_modbus::Error::Transport(e)))
                if e.kind() == io::ErrorKind::InvalidData =>
            {
                self.resync().await;
                return Err(WireError::InvalidReply(format!(
                    "the reply could not be decoded ({e})"
                )));
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                self.drop_link();
                return Err(WireError::Io(format!("the link failed: {e}")));
            }
            Ok(Err(tokio_modbus::Error::Protocol(mismatch))) => {
                let why = describe_mismatch(&mismatch);
                self.resync().await;
                return Err(WireError::InvalidReply(why));
            }
            Ok(Ok(result)) => result,
        };
        if let Err(e) = self.check_single_frame(&result).await {
            self.resync().await;
            return Err(e);
        }
        // A reply came back: the link works, whatever the device said.
        self.tcp_timeouts_in_a_row = 0;
        self.backoff = RECONNECT_MIN;
        match result {
            Err(code) => Err(WireError::Exception(u8::from(code))),
            Ok(response) => match check_reply(op, response) {
                Ok(reply) => Ok(reply),
                Err(why) => {
                    self.resync().await;
                    Err(WireError::InvalidReply(why))
                }
            },
        }
    }

    /// Opens the link unless it is open; fails at once while a failed open's backoff
    /// runs.
    async fn open(&mut self, deadline: Instant) -> Result<(), WireError> {
        if self.conn.is_some() {
            return Ok(());
        }
        if let Some((until, why)) = &self.blocked {
            let now = Instant::now();
            if now < *until {
                return Err(WireError::Io(format!(
                    "{why}; next try in {:?}",
                    *until - now
                )));
            }
        }
        match connect(&self.config, deadline).await {
            Ok(conn) => {
                self.conn = Some(conn);
                self.blocked = None;
                self.tcp_timeouts_in_a_row = 0;
                Ok(())
            }
            Err(why) => {
                let wait = self.backoff;
                self.backoff = (wait * 2).min(RECONNECT_MAX);
                self.blocked = Some((Instant::now() + wait, why.clone()));
                Err(WireError::Io(why))
            }
        }
    }

    /// RTU: a reply followed by more bytes than line noise may be a late answer to an
    /// earlier request with the real one behind it; neither can be trusted. The wait
    /// for the inter-frame gap here is one the next request would wait anyway.
    async fn check_single_frame(
        &mut self,
        result: &Result<Response, ExceptionCode>,
    ) -> Result<(), WireError> {
        let Some(conn) = self.conn.as_ref() else {
            return Ok(());
        };
        let (Some(gap), Some(frame)) = (conn.rtu_gap, rtu_frame_len(result)) else {
            return Ok(());
        };
        let line = conn.line.clone();
        let extra = line
            .received()
            .map_err(|e| WireError::Io(e.to_string()))?
            .saturating_sub(frame);
        let trailing = line
            .discard_until_quiet(gap)
            .await
            .map_err(|e| WireError::InvalidReply(format!("after the reply: {e}")))?;
        if extra + trailing >= MIN_RTU_FRAME {
            return Err(WireError::InvalidReply(format!(
                "{} bytes more than one reply arrived, so the reply may answer an earlier \
                 request",
                extra + trailing
            )));
        }
        Ok(())
    }

    async fn after_timeout(&mut self, timeout: Duration) {
        let Some(conn) = self.conn.as_ref() else {
            return;
        };
        match conn.rtu_gap {
            Some(gap) => self.flush(flush_quiet(timeout, gap)).await,
            None => {
                // Modbus TCP: a late reply carries an old transaction id and is refused
                // (or discarded before the next request); only a run of timeouts says
                // the connection itself is dead.
                self.tcp_timeouts_in_a_row += 1;
                if self.tcp_timeouts_in_a_row >= TCP_TIMEOUTS_BEFORE_RECONNECT {
                    self.drop_link();
                }
            }
        }
    }

    /// After a reply that could not be trusted: RTU flushes and starts a fresh
    /// context; Modbus TCP, whose stream position is then unknown, reconnects.
    async fn resync(&mut self) {
        match self.conn.as_ref().map(|conn| conn.rtu_gap) {
            Some(Some(gap)) => self.flush(gap.max(MIN_FLUSH_QUIET)).await,
            Some(None) => self.drop_link(),
            None => {}
        }
    }

    /// Discards input until the line has been quiet for `quiet`, then builds a new
    /// context on it (tokio-modbus's decoder may hold part of a frame); a line that
    /// will not go quiet is closed and reopened.
    async fn flush(&mut self, quiet: Duration) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        match conn.line.discard_until_quiet(quiet).await {
            Ok(_) => {
                let gap = conn.rtu_gap.unwrap_or(MIN_INTER_FRAME_DELAY);
                *conn = Conn::rtu(conn.line.clone(), gap);
            }
            Err(_) => self.drop_link(),
        }
    }

    /// Closes the link after a failure; the next attempt reconnects at once (backoff
    /// applies only once opening fails).
    fn drop_link(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.stale_before += conn.line.discarded();
        }
    }
}

impl Transport for Wire {
    fn attempt(
        &mut self,
        unit: u8,
        op: &Op,
        timeout: Duration,
    ) -> impl Future<Output = Result<Reply, WireError>> + Send {
        Wire::attempt(self, unit, op, timeout)
    }

    fn idle_limit(&self) -> Option<Duration> {
        match &self.config {
            BusConfig::Tcp {
                keep_connection: false,
                idle_close,
                ..
            } => Some(idle_close.map_or(POLL_CYCLE_LINGER, |d| d.min(POLL_CYCLE_LINGER))),
            BusConfig::Tcp { idle_close, .. } => *idle_close,
            BusConfig::Rtu { .. } | BusConfig::RtuOverTcp { .. } => None,
        }
    }

    fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    fn close(&mut self) {
        self.drop_link();
    }

    fn stale_bytes(&self) -> u64 {
        self.stale_before + self.conn.as_ref().map_or(0, |conn| conn.line.discarded())
    }
}

/// The silence awaited after an RTU timeout: half the timeout, so a slave that is slow
/// rather than dead has its late reply discarded before the next request goes out;
/// at least the gap and [`MIN_FLUSH_QUIET`], at most [`MAX_FLUSH_QUIET`].
fn flush_quiet(timeout: Duration, gap: Duration) -> Duration {
    (timeout / 2)
        .min(MAX_FLUSH_QUIET)
        .max(gap)
        .max(MIN_FLUSH_QUIET)
}

fn describe_mismatch(mismatch: &ProtocolError) -> String {
    match mismatch {
        ProtocolError::HeaderMismatch { message, .. } => {
            format!("the reply belongs to another request ({message})")
        }
        ProtocolError::FunctionCodeMismatch { request, result } => {
            let replied = match result {
                Ok(response) => response.function_code(),
                Err(exception) => exception.function,
            };
            format!(
                "a function {} reply to a function {} request",
                replied.value(),
                request.value()
            )
        }
    }
}

/// Opens the link `config` describes (bounded by `deadline` where it can block).
async fn connect(config: &BusConfig, deadline: Instant) -> Result<Conn, String> {
    match config {
        BusConfig::Rtu {
            path,
            baud,
            parity,
            data_bits,
            stop_bits,
            inter_frame_delay,
            rs485,
        } => {
            let port = open_serial(path, *baud, *parity, *data_bits, *stop_bits, rs485.as_ref())?;
            let gap = inter_frame_delay.unwrap_or_else(|| {
                default_inter_frame_delay(*baud, *parity, *data_bits, *stop_bits)
            });
            Ok(Conn::rtu(Line::new(port, gap), gap))
        }
        BusConfig::Tcp { host, port, .. } => {
            let stream = connect_tcp(host, *port, deadline).await?;
            Ok(Conn::tcp(Line::new(stream, Duration::ZERO)))
        }
        BusConfig::RtuOverTcp {
            host,
            port,
            inter_frame_delay,
        } => {
            let stream = connect_tcp(host, *port, deadline).await?;
            let gap = inter_frame_delay.unwrap_or(MIN_INTER_FRAME_DELAY);
            Ok(Conn::rtu(Line::new(stream, gap), gap))
        }
    }
}

async fn connect_tcp(host: &str, port: u16, deadline: Instant) -> Result<TcpStream, String> {
    match timeout_at(deadline, TcpStream::connect((host, port))).await {
        Err(_elapsed) => Err(format!(
            "connecting to {host}:{port} took longer than the request's timeout"
        )),
        Ok(Err(e)) => Err(format!("cannot connect to {host}:{port}: {e}")),
        Ok(Ok(stream)) => {
            // Requests are small and each waits for its reply: Nagle would only delay them.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

fn open_serial(
    path: &std::path::Path,
    baud: u32,
    parity: Parity,
    data_bits: u8,
    stop_bits: u8,
    rs485: Option<&Rs485>,
) -> Result<tokio_serial::SerialStream, String> {
    use tokio_serial::SerialPortBuilderExt;
    let data_bits = match data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        8 => tokio_serial::DataBits::Eight,
        other => return Err(format!("{other} data bits are not supported (5 to 8)")),
    };
    let stop_bits = match stop_bits {
        1 => tokio_serial::StopBits::One,
        2 => tokio_serial::StopBits::Two,
        other => return Err(format!("{other} stop bits are not supported (1 or 2)")),
    };
    let parity = match parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let port = tokio_serial::new(path.to_string_lossy(), baud)
        .parity(parity)
        .data_bits(data_bits)
        .stop_bits(stop_bits)
        .open_native_async()
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    if let Some(rs485) = rs485 {
        set_rs485_mode(&port, rs485).map_err(|e| {
            format!(
                "cannot switch {} to RS-485 mode: {e}; its driver does not support the \
                 kernel's RS-485 mode (leave `rs485` out if the adapter switches direction \
                 by itself)",
                path.display()
            )
        })?;
    }
    Ok(port)
}

/// Switches a serial port to the Linux kernel's RS-485 mode (the TIOCSRS485 ioctl): the
/// driver raises RTS around each frame (high while sending if `rts_on_send_high`) with
/// the configured delays, rounded up to whole milliseconds. Fails with the kernel's
/// error on a port whose driver has no RS-485 support (a pty: "Inappropriate ioctl for
/// device"), and with `Unsupported` off Linux or on architectures whose ioctl number
/// differs.
#[allow(unsafe_code)]
pub fn set_rs485_mode(port: &impl std::os::fd::AsRawFd, rs485: &Rs485) -> io::Result<()> {
    // `struct serial_rs485` from <linux/serial.h>: three u32 and a 20-byte union.
    #[repr(C)]
    struct SerialRs485 {
        flags: u32,
        delay_rts_before_send: u32,
        delay_rts_after_send: u32,
        padding: [u32; 5],
    }
    const SER_RS485_ENABLED: u32 = 1;
    const SER_RS485_RTS_ON_SEND: u32 = 1 << 1;
    const SER_RS485_RTS_AFTER_SEND: u32 = 1 << 2;

    let Some(request) = tiocsrs485() else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "RS-485 mode is only implemented for Linux on x86, ARM and RISC-V",
        ));
    };
    let millis = |d: Duration| u32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u32::MAX);
    let rts = if rs485.rts_on_send_high {
        SER_RS485_RTS_ON_SEND
    } else {
        SER_RS485_RTS_AFTER_SEND
    };
    let config = SerialRs485 {
        flags: SER_RS485_ENABLED | rts,
        delay_rts_before_send: millis(rs485.delay_before_send),
        delay_rts_after_send: millis(rs485.delay_after_send),
        padding: [0; 5],
    };
    unsafe extern "C" {
        fn ioctl(fd: std::ffi::c_int, request: IoctlRequest, ...) -> std::ffi::c_int;
    }
    // SAFETY: the descriptor belongs to `port`, which outlives the call; TIOCSRS485 reads
    // exactly one `struct serial_rs485` through the pointer, which points to `config`, a
    // live local with that layout (`repr(C)`, the same fields and size); nothing is
    // written through it.
    let rc = unsafe { ioctl(port.as_raw_fd(), request, &raw const config) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// glibc declares `ioctl(int, unsigned long, ...)`, musl `ioctl(int, int, ...)`.
#[cfg(not(target_env = "musl"))]
type IoctlRequest = std::ffi::c_ulong;
#[cfg(target_env = "musl")]
type IoctlRequest = std::ffi::c_int;

/// TIOCSRS485 where it is 0x542F (asm-generic/ioctls.h); other architectures (MIPS,
/// PowerPC, SPARC, Alpha) number it differently and are not supported.
fn tiocsrs485() -> Option<IoctlRequest> {
    if cfg!(all(
        target_os = "linux",
        any(
            target_arch = "x86",
            target_arch = "x86_64",
            target_arch = "arm",
            target_arch = "aarch64",
            target_arch = "riscv32",
            target_arch = "riscv64",
        )
    )) {
        Some(0x542F)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(address: u16, count: u16) -> Op {
        Op::Read(ReadRange {
            table: Table::Holding,
            address,
            count,
        })
    }

    #[test]
    fn the_default_gap_is_three_and_a_half_characters_but_never_under_1_75_ms() {
        // 9600 8N1: 10 bits a character, 3.5 characters = 35 bits = 3.646 ms.
        let gap = default_inter_frame_delay(9600, Parity::None, 8, 1);
        assert_eq!(gap, Duration::from_nanos(35 * 1_000_000_000 / 9600));
        // 9600 8E1: 11 bits.
        let gap = default_inter_frame_delay(9600, Parity::Even, 8, 1);
        assert_eq!(gap, Duration::from_nanos(3_500_000_000 * 11 / 9600));
        // 115200: 0.3 ms by the formula, the spec's floor instead.
        assert_eq!(
            default_inter_frame_delay(115_200, Parity::None, 8, 1),
            MIN_INTER_FRAME_DELAY
        );
        // A zero baud rate (refused by the config) must not divide by zero.
        assert!(default_inter_frame_delay(0, Parity::None, 8, 1) > MIN_INTER_FRAME_DELAY);
    }

    #[test]
    fn a_read_reply_must_carry_exactly_the_registers_asked_for() {
        let op = holding(10, 2);
        assert_eq!(
            check_reply(&op, Response::ReadHoldingRegisters(vec![1, 2])),
            Ok(Reply::Data(Data::Registers(vec![1, 2])))
        );
        let short = check_reply(&op, Response::ReadHoldingRegisters(vec![1]));
        assert!(short.unwrap_err().contains("asked for 2 registers"));
        assert!(check_reply(&op, Response::ReadHoldingRegisters(vec![1, 2, 3])).is_err());
        // Input registers do not answer a holding register read.
        assert!(check_reply(&op, Response::ReadInputRegisters(vec![1, 2])).is_err());
    }

    #[test]
    fn a_bit_reply_must_carry_the_right_number_of_bytes_and_loses_its_padding() {
        let op = Op::Read(ReadRange {
            table: Table::Coil,
            address: 0,
            count: 10,
        });
        let mut bits = vec![true; 10];
        bits.resize(16, false);
        assert_eq!(
            check_reply(&op, Response::ReadCoils(bits)),
            Ok(Reply::Data(Data::Bits(vec![true; 10])))
        );
        assert!(check_reply(&op, Response::ReadCoils(vec![false; 8])).is_err());
        assert!(check_reply(&op, Response::ReadCoils(vec![false; 24])).is_err());
        assert!(check_reply(&op, Response::ReadDiscreteInputs(vec![false; 16])).is_err());
    }

    #[test]
    fn a_write_is_confirmed_only_by_its_own_echo() {
        let op = Op::Write(Write::SingleRegister {
            address: 3,
            value: 7,
        });
        assert_eq!(
            check_reply(&op, Response::WriteSingleRegister(3, 7)),
            Ok(Reply::Written)
        );
        assert!(check_reply(&op, Response::WriteSingleRegister(3, 8)).is_err());
        assert!(check_reply(&op, Response::WriteSingleRegister(4, 7)).is_err());
        let op = Op::Write(Write::MultipleCoils {
            address: 0,
            values: vec![true, false, true],
        });
        assert_eq!(
            check_reply(&op, Response::WriteMultipleCoils(0, 3)),
            Ok(Reply::Written)
        );
        assert!(check_reply(&op, Response::WriteMultipleCoils(0, 2)).is_err());
    }

    #[test]
    fn requests_no_modbus_frame_can_carry_are_refused() {
        assert!(holding(0, 125).check().is_ok());
        assert!(holding(0, 126).check().is_err());
        assert!(holding(0, 0).check().is_err());
        assert!(holding(65535, 1).check().is_ok());
        assert!(holding(65535, 2).check().is_err());
        let registers = |n: usize| {
            Op::Write(Write::MultipleRegisters {
                address: 0,
                values: vec![0; n],
            })
        };
        assert!(registers(123).check().is_ok());
        assert!(registers(124).check().is_err());
        assert!(registers(0).check().is_err());
    }

    #[test]
    fn frame_lengths_follow_the_reply() {
        assert_eq!(
            rtu_frame_len(&Err(ExceptionCode::IllegalDataAddress)),
            Some(5)
        );
        assert_eq!(
            rtu_frame_len(&Ok(Response::ReadHoldingRegisters(vec![0; 3]))),
            Some(11)
        );
        assert_eq!(
            rtu_frame_len(&Ok(Response::ReadCoils(vec![false; 16]))),
            Some(7)
        );
        assert_eq!(
            rtu_frame_len(&Ok(Response::WriteSingleCoil(0, true))),
            Some(8)
        );
    }

    #[test]
    fn the_quiet_wait_after_a_timeout_is_half_the_timeout_within_bounds() {
        let gap = Duration::from_millis(2);
        assert_eq!(
            flush_quiet(Duration::from_millis(100), gap),
            Duration::from_millis(50)
        );
        assert_eq!(flush_quiet(Duration::from_millis(10), gap), MIN_FLUSH_QUIET);
        assert_eq!(flush_quiet(Duration::from_secs(10), gap), MAX_FLUSH_QUIET);
        // A configured gap longer than the cap wins, and nothing panics.
        assert_eq!(
            flush_quiet(Duration::from_secs(10), Duration::from_secs(3)),
            Duration::from_secs(3)
        );
    }
}
