//! GPIO lines behind one small trait, so the gateway runs the same on a Raspberry Pi
//! (rppal), on any Linux board (gpiocdev, the GPIO character device) and in tests (a
//! mock backend whose lines are files). It owns opening the lines (inputs with their
//! pulls, outputs at their initial levels), reading and writing them, delivering input
//! edges as they happen (kernel edge events through gpiocdev, rppal's interrupt thread,
//! a scan of the mock's files), and the debounce rules for polled readings
//! ([`Debounce`]) and for edges ([`EdgeDebounce`]). Opening fails with a clear error on
//! a machine without the hardware; the runtime then marks the device offline and
//! retries. Edges are optional: a backend that cannot deliver them says so
//! ([`GpioError::EdgesUnsupported`]) and its inputs are polled only. This module must
//! not know about MQTT.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gpiocdev::line::{EdgeDetection, EdgeKind};
use tokio::sync::mpsc;

use crate::config::{GpioBackendKind, GpioChip, GpioLine};

#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    #[error("GPIO (rppal): {0}")]
    Rppal(String),
    #[error("GPIO chip {chip}: {why}")]
    Cdev { chip: PathBuf, why: String },
    #[error("mock GPIO line {line}: {why}")]
    Mock { line: u32, why: String },
    #[error("line {0} is not configured as an output")]
    NotOutput(u32),
    #[error("no edge events ({0}); inputs are polled only")]
    EdgesUnsupported(String),
}

/// An input line changed level: `high` is the new level, `at` when the backend saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    pub line: u32,
    pub high: bool,
    pub at: Instant,
}

/// A device's input edges as its backend sees them, in order. An `Err` is the last item
/// of a watch that failed (the chip went away, a mock file was removed); the channel
/// closing without one means no more edges come, and the inputs are polled only.
pub type Edges = mpsc::Receiver<Result<Edge, GpioError>>;

/// Edges that may wait for the device's task. A burst of contact bounce fits; should
/// edges still be lost, nothing is wrong for long: a settled edge is confirmed by reading
/// the line, and the polls go on.
const EDGE_QUEUE: usize = 64;

/// Reads inputs and drives outputs of the lines a device was opened with, and reports
/// its inputs' edges.
pub trait GpioBackend: Send {
    fn read(&mut self, line: u32) -> Result<bool, GpioError>;
    fn write(&mut self, line: u32, high: bool) -> Result<(), GpioError>;

    /// Starts reporting the input lines' edges (both directions); once per open, inside a
    /// tokio runtime. The watch, and the task or thread it runs on, ends when the backend
    /// is dropped (the device closed); no edges are sent once the receiver is dropped. A
    /// backend without edges (this default) says [`GpioError::EdgesUnsupported`]; its
    /// inputs are then only polled.
    fn watch_edges(&mut self) -> Result<Edges, GpioError> {
        Err(GpioError::EdgesUnsupported(
            "this backend has none".to_string(),
        ))
    }
}

/// The runtime that edge watchers run on: the caller's.
fn runtime() -> Result<tokio::runtime::Handle, GpioError> {
    tokio::runtime::Handle::try_current()
        .map_err(|_| GpioError::EdgesUnsupported("not inside a tokio runtime".to_string()))
}

/// Opens `lines` on `chip`: inputs with their pulls, outputs at their initial levels.
pub fn open(chip: &GpioChip, lines: &[GpioLine]) -> Result<Box<dyn GpioBackend>, GpioError> {
    let kind = match &chip.backend {
        GpioBackendKind::Auto if on_raspberry_pi() => GpioBackendKind::Rppal,
        GpioBackendKind::Auto => GpioBackendKind::Gpiocdev,
        other => other.clone(),
    };
    let mut backend: Box<dyn GpioBackend> = match kind {
        GpioBackendKind::Mock(dir) => Box::new(Mock {
            dir,
            inputs: lines.iter().filter(|l| !l.output).map(|l| l.line).collect(),
            watches: Vec::new(),
        }),
        GpioBackendKind::Rppal => Box::new(Rppal::open(lines)?),
        GpioBackendKind::Gpiocdev | GpioBackendKind::Auto => {
            Box::new(Cdev::open(&chip.chip, lines)?)
        }
    };
    for line in lines.iter().filter(|l| l.output) {
        backend.write(line.line, line.initial)?;
    }
    Ok(backend)
}

fn on_raspberry_pi() -> bool {
    std::fs::read_to_string("/proc/device-tree/model").is_ok_and(|m| m.contains("Raspberry Pi"))
}

/// Software debounce for a polled input: a new level counts once every poll has seen it
/// for at least the debounce period (a contact bouncing between polls is ignored).
#[derive(Debug, Default, Clone, Copy)]
pub struct Debounce {
    stable: Option<bool>,
    candidate: Option<(bool, Instant)>,
}

impl Debounce {
    /// Feeds one reading; returns the level that counts now.
    pub fn feed(&mut self, level: bool, now: Instant, period: Duration) -> Option<bool> {
        match self.stable {
            None => self.stable = Some(level),
            Some(stable) if stable == level => self.candidate = None,
            Some(_) => match self.candidate {
                Some((candidate, since)) if candidate == level => {
                    if now.duration_since(since) >= period {
                        self.stable = Some(level);
                        self.candidate = None;
                    }
                }
                _ => {
                    self.candidate = Some((level, now));
                    if period.is_zero() {
                        self.stable = Some(level);
                        self.candidate = None;
                    }
                }
            },
        }
        self.stable
    }

    /// The level that counts now (`None` before the first reading).
    pub fn level(&self) -> Option<bool> {
        self.stable
    }

    /// An edge to `edge_level` has settled (no further edge for the debounce period) and
    /// the line now reads `level`. If they agree, the level has held for the whole period
    /// and counts at once. If not, an edge was missed (a full queue, a change too quick
    /// for the backend) and nobody knows how long `level` has held: it goes through
    /// [`feed`](Self::feed) like a polled reading.
    pub fn confirm(
        &mut self,
        edge_level: bool,
        level: bool,
        now: Instant,
        period: Duration,
    ) -> Option<bool> {
        if level == edge_level {
            self.stable = Some(level);
            self.candidate = None;
            self.stable
        } else {
            self.feed(level, now, period)
        }
    }
}

/// Debounce for edges: a line's new level counts once the line has been quiet (no
/// further edge) for its debounce period after its last edge, so contact bounce inside
/// the period only restarts the wait and is never reported. What is due is read back and
/// judged by [`Debounce::confirm`].
#[derive(Debug, Default, Clone)]
pub struct EdgeDebounce {
    /// Lines waiting to settle: the level of their last edge and when they are due, in
    /// the order their edges came.
    settling: Vec<(u32, bool, Instant)>,
}

impl EdgeDebounce {
    /// Notes an edge; `period` is its line's debounce.
    pub fn edge(&mut self, edge: &Edge, period: Duration) {
        // A later edge on a line restarts its wait: that is what ignores bounce.
        self.settling.retain(|(line, _, _)| *line != edge.line);
        // A period too long for the clock never settles; the polls still see the line.
        if let Some(due) = edge.at.checked_add(period) {
            self.settling.push((edge.line, edge.high, due));
        }
    }

    /// When the next line settles, if any is waiting.
    pub fn next_due(&self) -> Option<Instant> {
        self.settling.iter().map(|(_, _, due)| *due).min()
    }

    /// The lines quiet for their whole period by `now`, with the level of their last
    /// edge: earliest first, lines due together in the order of their edges.
    pub fn take_due(&mut self, now: Instant) -> Vec<(u32, bool)> {
        let mut due: Vec<(u32, bool, Instant)> = self
            .settling
            .iter()
            .filter(|(_, _, due)| *due <= now)
            .copied()
            .collect();
        self.settling.retain(|(_, _, due)| *due > now);
        // Stable: ties keep their edges' order.
        due.sort_by_key(|(_, _, due)| *due);
        due.into_iter()
            .map(|(line, high, _)| (line, high))
            .collect()
    }
}

/// Lines as files `<dir>/<line>` holding `0` or `1`: a test sets inputs by writing them
/// and reads outputs back.
struct Mock {
    dir: PathBuf,
    inputs: Vec<u32>,
    /// Dropped with the mock (the device closed): the scanning task sees its end and
    /// stops.
    watches: Vec<tokio::sync::oneshot::Sender<()>>,
}

/// How often the mock's input files are looked at for edges: a few milliseconds, so a
/// test sees an edge published long before any poll, at the cost of a few tiny reads.
const MOCK_SCAN: Duration = Duration::from_millis(5);

fn read_mock(dir: &Path, line: u32) -> Result<bool, GpioError> {
    let path = dir.join(line.to_string());
    let text = std::fs::read_to_string(&path).map_err(|e| GpioError::Mock {
        line,
        why: format!("{}: {e}", path.display()),
    })?;
    Ok(text.trim() == "1")
}

impl GpioBackend for Mock {
    fn read(&mut self, line: u32) -> Result<bool, GpioError> {
        read_mock(&self.dir, line)
    }

    fn write(&mut self, line: u32, high: bool) -> Result<(), GpioError> {
        let path = self.dir.join(line.to_string());
        // Written aside and renamed: a reader never sees a half-written (empty) line.
        let temporary = self.dir.join(format!(".{line}.tmp"));
        std::fs::write(&temporary, if high { "1\n" } else { "0\n" })
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(|e| GpioError::Mock {
                line,
                why: format!("{}: {e}", path.display()),
            })
    }

    /// A task compares the input files with what they held at the last scan; a
    /// difference is an edge. (It reads them on the runtime: a few bytes from a test's
    /// directory.)
    fn watch_edges(&mut self) -> Result<Edges, GpioError> {
        let runtime = runtime()?;
        // Read before returning, so that a change written after this call is an edge.
        let mut levels = self
            .inputs
            .iter()
            .map(|&line| read_mock(&self.dir, line).map(|high| (line, high)))
            .collect::<Result<Vec<_>, _>>()?;
        let (tx, rx) = mpsc::channel(EDGE_QUEUE);
        if levels.is_empty() {
            // Nothing to watch: the sender goes now, and the channel says so.
            return Ok(rx);
        }
        let dir = self.dir.clone();
        let (closing, mut closed) = tokio::sync::oneshot::channel::<()>();
        self.watches.push(closing);
        runtime.spawn(async move {
            let mut scan = tokio::time::interval(MOCK_SCAN);
            scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    // The device was closed, or nobody listens: stop scanning.
                    _ = &mut closed => return,
                    () = tx.closed() => return,
                    _ = scan.tick() => {}
                }
                for (line, level) in &mut levels {
                    match read_mock(&dir, *line) {
                        Ok(high) if high == *level => {}
                        Ok(high) => {
                            *level = high;
                            let edge = Edge {
                                line: *line,
                                high,
                                at: Instant::now(),
                            };
                            if tx.send(Ok(edge)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            // As a poll would: the line is gone, the device goes offline.
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// The Linux GPIO character device: one request per line.
struct Cdev {
    chip: PathBuf,
    /// Shared with the edge watchers, which hold an input's request while they read its
    /// events; they let go when the watch ends, so a reopen finds the lines free.
    requests: HashMap<u32, (Arc<gpiocdev::Request>, bool)>,
    /// Set when the device closes: the edge threads stop.
    watches: Vec<Arc<AtomicBool>>,
}

impl Cdev {
    fn open(chip: &Path, lines: &[GpioLine]) -> Result<Cdev, GpioError> {
        let err = |e: gpiocdev::Error| GpioError::Cdev {
            chip: chip.to_path_buf(),
            why: e.to_string(),
        };
        let mut requests = HashMap::new();
        for l in lines {
            let mut builder = gpiocdev::Request::builder();
            builder
                .on_chip(chip)
                .with_consumer("fieldgate")
                .with_line(l.line);
            if l.output {
                builder.as_output(gpiocdev::line::Value::from(l.initial));
            } else {
                builder.as_input();
                match l.pull {
                    Some(true) => {
                        builder.with_bias(gpiocdev::line::Bias::PullUp);
                    }
                    Some(false) => {
                        builder.with_bias(gpiocdev::line::Bias::PullDown);
                    }
                    None => {}
                }
            }
            requests.insert(
                l.line,
                (Arc::new(builder.request().map_err(err)?), l.output),
            );
        }
        Ok(Cdev {
            chip: chip.to_path_buf(),
            requests,
            watches: Vec::new(),
        })
    }

    fn err(&self, why: String) -> GpioError {
        GpioError::Cdev {
            chip: self.chip.clone(),
            why,
        }
    }
}

impl GpioBackend for Cdev {
    fn read(&mut self, line: u32) -> Result<bool, GpioError> {
        let Some((request, _)) = self.requests.get(&line) else {
            return Err(self.err(format!("line {line} was not requested")));
        };
        request
            .value(line)
            .map(|v| v == gpiocdev::line::Value::Active)
            .map_err(|e| self.err(e.to_string()))
    }

    fn write(&mut self, line: u32, high: bool) -> Result<(), GpioError> {
        match self.requests.get(&line) {
            Some((request, true)) => request
                .set_value(line, gpiocdev::line::Value::from(high))
                .map(|_| ())
                .map_err(|e| self.err(e.to_string())),
            _ => Err(GpioError::NotOutput(line)),
        }
    }

    /// Turns on the kernel's edge detection (both edges) on every input line and reads
    /// each line's events on a thread of its own. (Not on the runtime's reactor: tokio's
    /// safe `AsyncFd` constructors are deprecated for the unsafe `register`, and this
    /// crate has no `unsafe`.)
    fn watch_edges(&mut self) -> Result<Edges, GpioError> {
        let mut inputs: Vec<(u32, Arc<gpiocdev::Request>)> = self
            .requests
            .iter()
            .filter(|(_, (_, output))| !*output)
            .map(|(&line, (request, _))| (line, Arc::clone(request)))
            .collect();
        inputs.sort_by_key(|(line, _)| *line);
        for (done, (line, request)) in inputs.iter().enumerate() {
            if let Err(e) = edge_detection(request, *line, Some(EdgeDetection::BothEdges)) {
                // All lines or none: a line left detecting would queue events for nobody
                // (a line whose chip has no interrupt for it refuses).
                for (line, request) in &inputs[..done] {
                    let _ = edge_detection(request, *line, None);
                }
                return Err(GpioError::EdgesUnsupported(format!(
                    "chip {}: line {line}: {e}",
                    self.chip.display()
                )));
            }
        }
        let (tx, rx) = mpsc::channel(EDGE_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        self.watches.push(Arc::clone(&stop));
        for (line, request) in inputs {
            let watch = CdevWatch {
                chip: self.chip.clone(),
                request,
                tx: tx.clone(),
                stop: Arc::clone(&stop),
            };
            std::thread::Builder::new()
                .name(format!("gpio-edges-{line}"))
                .spawn(move || watch.run())
                .map_err(|e| {
                    // The threads already started end with the receiver, dropped now.
                    GpioError::EdgesUnsupported(format!("no thread for line {line}: {e}"))
                })?;
        }
        Ok(rx)
    }
}

impl Drop for Cdev {
    /// Closing the device ends its edge threads, even while someone still holds the
    /// receiver.
    fn drop(&mut self) {
        for stop in &self.watches {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

/// How long an edge thread waits for an event before it looks whether its watch has
/// ended. Shorter than the first retry delay after a failure (250 ms), so that a reopen
/// finds the lines released; long enough that an idle thread costs nothing to speak of.
const CDEV_WAKE: Duration = Duration::from_millis(100);

/// How often an edge thread whose queue is full tries again: only while the device's
/// task is behind by a whole queue.
const CDEV_FULL_RETRY: Duration = Duration::from_millis(5);

/// One input line's edge events, read on a thread and forwarded.
struct CdevWatch {
    chip: PathBuf,
    request: Arc<gpiocdev::Request>,
    tx: mpsc::Sender<Result<Edge, GpioError>>,
    stop: Arc<AtomicBool>,
}

impl CdevWatch {
    /// Forwards events until the device is closed, the receiver is gone or the line
    /// fails (the failure is the last item sent). Returning drops this thread's handle on
    /// the request, the last one once the device is closed, which frees the line.
    fn run(self) {
        let fail = |e: gpiocdev::Error| {
            Err(GpioError::Cdev {
                chip: self.chip.clone(),
                why: format!("edge events: {e}"),
            })
        };
        while !self.stop.load(Ordering::Relaxed) && !self.tx.is_closed() {
            match self.request.wait_edge_event(CDEV_WAKE) {
                Ok(false) => {}
                Ok(true) => match self.request.read_edge_event() {
                    Ok(event) => {
                        // Timed on arrival: the kernel's timestamp is CLOCK_MONOTONIC
                        // nanoseconds, which an `Instant` cannot be made from; the two
                        // differ by the moment this thread took to wake.
                        let edge = Edge {
                            line: event.offset,
                            high: event.kind == EdgeKind::Rising,
                            at: Instant::now(),
                        };
                        if !self.send(Ok(edge)) {
                            return;
                        }
                    }
                    Err(e) => {
                        self.send(fail(e));
                        return;
                    }
                },
                Err(e) => {
                    self.send(fail(e));
                    return;
                }
            }
        }
    }

    /// Sends one item, waiting while the queue is full (the kernel keeps queueing
    /// meanwhile); false once the receiver is gone or the device closed.
    fn send(&self, item: Result<Edge, GpioError>) -> bool {
        let mut item = item;
        loop {
            match self.tx.try_send(item) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
                // Not `blocking_send`, which would not see the device close.
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if self.stop.load(Ordering::Relaxed) {
                        return false;
                    }
                    item = back;
                    std::thread::sleep(CDEV_FULL_RETRY);
                }
            }
        }
    }
}

/// Sets (or, with `None`, clears) edge detection on one requested line, keeping its
/// other settings (direction, bias).
fn edge_detection(
    request: &gpiocdev::Request,
    line: u32,
    edges: Option<EdgeDetection>,
) -> Result<(), gpiocdev::Error> {
    let mut config = request.config();
    config.with_line(line).with_edge_detection(edges);
    request.reconfigure(&config)
}

/// A Raspberry Pi's GPIO through rppal (BCM line numbers).
struct Rppal {
    inputs: HashMap<u32, rppal::gpio::InputPin>,
    outputs: HashMap<u32, rppal::gpio::OutputPin>,
}

impl Rppal {
    fn open(lines: &[GpioLine]) -> Result<Rppal, GpioError> {
        let err = |e: rppal::gpio::Error| GpioError::Rppal(e.to_string());
        let gpio = rppal::gpio::Gpio::new().map_err(err)?;
        let mut inputs = HashMap::new();
        let mut outputs = HashMap::new();
        for l in lines {
            let number = u8::try_from(l.line)
                .map_err(|_| GpioError::Rppal(format!("line {} is not a BCM pin", l.line)))?;
            let pin = gpio.get(number).map_err(err)?;
            if l.output {
                let out = if l.initial {
                    pin.into_output_high()
                } else {
                    pin.into_output_low()
                };
                outputs.insert(l.line, out);
            } else {
                let input = match l.pull {
                    Some(true) => pin.into_input_pullup(),
                    Some(false) => pin.into_input_pulldown(),
                    None => pin.into_input(),
                };
                inputs.insert(l.line, input);
            }
        }
        Ok(Rppal { inputs, outputs })
    }
}

impl GpioBackend for Rppal {
    fn read(&mut self, line: u32) -> Result<bool, GpioError> {
        if let Some(pin) = self.inputs.get(&line) {
            return Ok(pin.is_high());
        }
        self.outputs
            .get(&line)
            .map(|pin| pin.is_set_high())
            .ok_or_else(|| GpioError::Rppal(format!("line {line} was not opened")))
    }

    fn write(&mut self, line: u32, high: bool) -> Result<(), GpioError> {
        let pin = self
            .outputs
            .get_mut(&line)
            .ok_or(GpioError::NotOutput(line))?;
        if high {
            pin.set_high();
        } else {
            pin.set_low();
        }
        Ok(())
    }

    /// rppal's interrupt thread calls back on every edge; the callback forwards it.
    /// Dropping the pins (closing the device) stops that thread.
    fn watch_edges(&mut self) -> Result<Edges, GpioError> {
        use rppal::gpio::Trigger;
        let (tx, rx) = mpsc::channel(EDGE_QUEUE);
        let mut failure = None;
        for (&line, pin) in &mut self.inputs {
            let tx = tx.clone();
            let forward = move |event: rppal::gpio::Event| {
                let high = match event.trigger {
                    Trigger::RisingEdge => true,
                    Trigger::FallingEdge => false,
                    // With `Trigger::Both` rppal reports only the two above.
                    _ => return,
                };
                // rppal's thread must never wait for us: with the queue full the edge is
                // dropped, and the settle read and the polls still see the level.
                let _ = tx.try_send(Ok(Edge {
                    line,
                    high,
                    at: Instant::now(),
                }));
            };
            // rppal's own debounce stays off: the runtime debounces edges and polls alike.
            if let Err(e) = pin.set_async_interrupt(Trigger::Both, None, forward) {
                failure = Some(GpioError::EdgesUnsupported(format!("line {line}: {e}")));
                break;
            }
        }
        if let Some(failure) = failure {
            // All lines or none, as with gpiocdev.
            for pin in self.inputs.values_mut() {
                let _ = pin.clear_async_interrupt();
            }
            return Err(failure);
        }
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_level_counts_only_after_holding_for_the_debounce_period() {
        let mut d = Debounce::default();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let period = Duration::from_millis(50);
        assert_eq!(
            d.feed(false, ms(0), period),
            Some(false),
            "the first reading counts"
        );
        assert_eq!(
            d.feed(true, ms(10), period),
            Some(false),
            "a new level, not yet"
        );
        assert_eq!(
            d.feed(false, ms(20), period),
            Some(false),
            "it bounced back"
        );
        assert_eq!(d.feed(true, ms(30), period), Some(false));
        assert_eq!(d.feed(true, ms(70), period), Some(false), "40 ms is not 50");
        assert_eq!(d.feed(true, ms(80), period), Some(true), "held 50 ms");
        let mut instant = Debounce::default();
        instant.feed(false, ms(0), Duration::ZERO);
        assert_eq!(
            instant.feed(true, ms(1), Duration::ZERO),
            Some(true),
            "no debounce"
        );
    }

    fn edge(line: u32, high: bool, at: Instant) -> Edge {
        Edge { line, high, at }
    }

    #[test]
    fn an_edge_counts_once_its_line_has_been_quiet_for_the_debounce_period() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let period = Duration::from_millis(50);
        let mut settling = EdgeDebounce::default();
        assert_eq!(settling.next_due(), None, "nothing to wait for");

        // Bounce: every edge restarts the wait; only the last level is reported.
        settling.edge(&edge(17, true, ms(0)), period);
        settling.edge(&edge(17, false, ms(3)), period);
        settling.edge(&edge(17, true, ms(8)), period);
        assert_eq!(settling.next_due(), Some(ms(58)));
        assert_eq!(settling.take_due(ms(57)), [], "49 ms quiet is not 50");
        assert_eq!(settling.take_due(ms(58)), [(17, true)]);
        assert_eq!(settling.take_due(ms(500)), [], "reported once");
        assert_eq!(settling.next_due(), None);

        // A pulse shorter than the period ends where it began: still reported, as the
        // level the line settled at (the caller sees it did not change).
        settling.edge(&edge(17, false, ms(600)), period);
        settling.edge(&edge(17, true, ms(620)), period);
        assert_eq!(settling.take_due(ms(669)), []);
        assert_eq!(settling.take_due(ms(670)), [(17, true)]);

        // Lines settle on their own periods, earliest first; ties in edge order.
        settling.edge(&edge(5, true, ms(1000)), Duration::from_millis(100));
        settling.edge(&edge(6, true, ms(1010)), Duration::from_millis(10));
        settling.edge(&edge(7, false, ms(1010)), Duration::from_millis(80));
        settling.edge(&edge(8, true, ms(1010)), Duration::from_millis(80));
        assert_eq!(settling.next_due(), Some(ms(1020)));
        assert_eq!(
            settling.take_due(ms(2000)),
            [(6, true), (7, false), (8, true), (5, true)]
        );

        // No debounce: due at once.
        settling.edge(&edge(9, true, ms(3000)), Duration::ZERO);
        assert_eq!(settling.take_due(ms(3000)), [(9, true)]);
        // A period past the clock's end never settles (the polls still read the line).
        settling.edge(&edge(9, false, ms(3001)), Duration::MAX);
        assert_eq!(settling.next_due(), None);
    }

    #[test]
    fn a_settled_edge_counts_if_the_line_agrees_and_is_judged_as_a_poll_if_not() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let period = Duration::from_millis(50);
        let mut d = Debounce::default();
        assert_eq!(d.level(), None);
        d.feed(false, ms(0), period);
        assert_eq!(
            d.confirm(true, true, ms(60), period),
            Some(true),
            "quiet for the period since the edge: counts at once"
        );
        assert_eq!(d.level(), Some(true));
        // The last edge said low but the line reads high: an edge was missed, so the high
        // level has held for an unknown time and must hold for the period, as polled.
        assert_eq!(d.confirm(false, false, ms(100), period), Some(false));
        assert_eq!(d.confirm(false, true, ms(200), period), Some(false));
        assert_eq!(d.feed(true, ms(249), period), Some(false));
        assert_eq!(d.feed(true, ms(250), period), Some(true));
    }

    /// A directory of mock lines for one test.
    fn mock_dir(name: &str, lines: &[(u32, &str)]) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("fieldgate-gpio-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (line, level) in lines {
            std::fs::write(dir.join(line.to_string()), level).unwrap();
        }
        dir
    }

    fn mock_chip(dir: &Path) -> GpioChip {
        GpioChip {
            backend: GpioBackendKind::Mock(dir.to_path_buf()),
            chip: PathBuf::new(),
        }
    }

    fn input(line: u32) -> GpioLine {
        GpioLine {
            line,
            output: false,
            pull: None,
            initial: false,
            debounce: Duration::ZERO,
        }
    }

    /// Sets a mock line as a real one changes: at once, never through an empty file.
    fn set(dir: &Path, line: u32, level: &str) {
        let aside = dir.join(format!(".{line}"));
        std::fs::write(&aside, level).unwrap();
        std::fs::rename(&aside, dir.join(line.to_string())).unwrap();
    }

    /// The next edge or error, waited for at most a few seconds (the mock scans every
    /// few milliseconds).
    async fn next(edges: &mut Edges) -> Result<Edge, GpioError> {
        tokio::time::timeout(Duration::from_secs(5), edges.recv())
            .await
            .expect("an edge within 5 s")
            .expect("the watch still running")
    }

    #[tokio::test]
    async fn the_mock_reports_edges_written_to_its_files_and_a_removed_file_as_an_error() {
        let dir = mock_dir("edges", &[(17, "0\n"), (18, "1\n")]);
        let output = GpioLine {
            output: true,
            ..input(27)
        };
        let mut backend = open(&mock_chip(&dir), &[input(17), input(18), output]).unwrap();
        let mut edges = backend.watch_edges().unwrap();
        let before = Instant::now();
        set(&dir, 17, "1\n");
        let rose = next(&mut edges).await.unwrap();
        assert_eq!((rose.line, rose.high), (17, true));
        assert!(rose.at >= before, "timed when seen");
        set(&dir, 18, "0\n");
        let fell = next(&mut edges).await.unwrap();
        assert_eq!((fell.line, fell.high), (18, false));
        // Outputs are not inputs: driving one is no edge.
        backend.write(27, true).unwrap();
        set(&dir, 17, "0\n");
        assert_eq!(next(&mut edges).await.unwrap().line, 17);

        std::fs::remove_file(dir.join("18")).unwrap();
        assert!(matches!(
            next(&mut edges).await,
            Err(GpioError::Mock { line: 18, .. })
        ));
        let ended = tokio::time::timeout(Duration::from_secs(5), edges.recv()).await;
        assert!(
            matches!(ended, Ok(None)),
            "an error ends the watch: {ended:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn closing_the_mock_ends_its_watch() {
        let dir = mock_dir("close", &[(17, "0\n")]);
        let mut backend = open(&mock_chip(&dir), &[input(17)]).unwrap();
        let mut edges = backend.watch_edges().unwrap();
        set(&dir, 17, "1\n");
        assert!(next(&mut edges).await.is_ok_and(|e| e.high));
        drop(backend);
        let ended = tokio::time::timeout(Duration::from_secs(5), edges.recv()).await;
        assert!(
            matches!(ended, Ok(None)),
            "the scanning task stopped: {ended:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_mock_without_inputs_closes_its_edges_at_once() {
        let dir = mock_dir("no-inputs", &[]);
        let output = GpioLine {
            output: true,
            ..input(27)
        };
        let mut backend = open(&mock_chip(&dir), &[output]).unwrap();
        let mut edges = backend.watch_edges().unwrap();
        assert!(edges.recv().await.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn edges_are_refused_with_a_reason_by_a_backend_without_them_or_outside_a_runtime() {
        struct Plain;
        impl GpioBackend for Plain {
            fn read(&mut self, _line: u32) -> Result<bool, GpioError> {
                Ok(false)
            }
            fn write(&mut self, line: u32, _high: bool) -> Result<(), GpioError> {
                Err(GpioError::NotOutput(line))
            }
        }
        assert!(matches!(
            Plain.watch_edges(),
            Err(GpioError::EdgesUnsupported(_))
        ));
        let dir = mock_dir("no-runtime", &[(17, "0\n")]);
        let mut backend = open(&mock_chip(&dir), &[input(17)]).unwrap();
        let refused = backend.watch_edges().map(|_| ()).unwrap_err();
        assert!(refused.to_string().contains("tokio runtime"), "{refused}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
