//! One task per Modbus bus: every device on a bus (a unit id) sends its reads and writes
//! through a [`BusHandle`], and the bus task alone talks to the link, one request at a
//! time: writes before reads, reads round-robin between devices, each attempt bounded
//! by the unit's timeout and retried `retries` times, and a unit that keeps failing is
//! skipped between probes so a dead slave cannot starve the others. It owns the
//! scheduling and the unit health; the bytes on the wire are `transport`'s. It must not
//! decode values or know about MQTT: callers turn `Data` and `BusError` into readings
//! and availability.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::transport::{Op, Reply, Transport, Wire, WireError};
use super::{Data, ReadRange, Write};
use crate::config::Parity;

/// Consecutive failed requests (each after all its retries) that make a unit degraded.
/// Three tells a dead or unplugged slave from an occasional lost frame.
pub const DEGRADE_AFTER: u32 = 3;

/// A degraded unit is tried again (one attempt, a probe) after this long, doubling after
/// every failed probe up to [`PROBE_MAX`]; any answer restores it.
pub const PROBE_MIN: Duration = Duration::from_secs(1);
pub const PROBE_MAX: Duration = Duration::from_secs(60);

/// Requests (from all devices) that may wait to be taken in by the bus task; senders
/// wait beyond that.
const CHANNEL_CAPACITY: usize = 64;

/// Requests one device may have queued in the bus task; more are refused with
/// [`BusError::Busy`] (and counted), so a device that polls faster than the bus can
/// answer costs bounded memory.
const MAX_QUEUED_PER_DEVICE: usize = 32;

/// How a bus is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusConfig {
    /// `modbus_rtu`: a serial port (RS-485 or RS-232), or a pty in tests.
    Rtu {
        path: PathBuf,
        baud: u32,
        parity: Parity,
        data_bits: u8,
        stop_bits: u8,
        /// Silence before each frame; `None`: max(3.5 character times, 1.75 ms).
        inter_frame_delay: Option<Duration>,
        /// The kernel's RS-485 mode, for ports whose driver switches the transceiver.
        rs485: Option<Rs485>,
    },
    /// `modbus_tcp`.
    Tcp {
        host: String,
        port: u16,
        /// False: the connection is closed after each poll cycle (for devices that
        /// serve one client at a time).
        keep_connection: bool,
        /// Close the connection after this long without a request.
        idle_close: Option<Duration>,
    },
    /// `modbus_rtu_over_tcp`: RTU frames through a serial device server.
    RtuOverTcp {
        host: String,
        port: u16,
        /// Silence before each frame; `None`: 1.75 ms.
        inter_frame_delay: Option<Duration>,
    },
}

/// The kernel's RS-485 mode for a serial port (TIOCSRS485).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rs485 {
    /// RTS is high while sending (low while sending when false).
    pub rts_on_send_high: bool,
    pub delay_before_send: Duration,
    pub delay_after_send: Duration,
}

/// A device's address and patience on its bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// The Modbus unit (slave) id. 0 is broadcast on RTU: nothing answers it, so
    /// requests to it time out.
    pub id: u8,
    /// Bounds each attempt (the link's opening included).
    pub timeout: Duration,
    /// Attempts after the first before the request fails.
    pub retries: u32,
}

/// Why a read or write did not happen. Every variant says what the caller can do:
/// `Timeout`, `Degraded`, `Io` and `InvalidReply` mean the device is not reachable now
/// (mark it offline, keep polling); `Exception` and `InvalidRequest` are answers about
/// this request (the device is fine); `Busy` asks to slow down; `Closed` is final.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("unit {unit} did not answer within {timeout:?} ({attempts} attempts)")]
    Timeout {
        unit: u8,
        timeout: Duration,
        attempts: u32,
    },
    /// A Modbus exception: the device understood the request and refused it.
    #[error("the device refused the request: exception {0} ({name})", name = exception_name(*.0))]
    Exception(u8),
    /// The port or connection is not available (missing device file, connection
    /// refused, link lost); it is reopened with backoff.
    #[error("the bus is not available: {0}")]
    Io(String),
    /// The unit failed its last requests and is skipped until its next probe.
    #[error(
        "unit {unit} is not answering ({failures} failed requests in a row); skipped until \
         it is tried again in {retry_in:?}"
    )]
    Degraded {
        unit: u8,
        failures: u32,
        retry_in: Duration,
    },
    /// Replies kept not matching the request (a late reply, another unit's reply,
    /// garbage); the line has been resynchronised.
    #[error("the reply did not match the request: {0}")]
    InvalidReply(String),
    /// No Modbus request can carry this (nothing was sent).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Too many requests of this device are already waiting.
    #[error("too many requests are waiting for device {0}; poll it less often")]
    Busy(String),
    /// The bus task has ended.
    #[error("the bus has stopped")]
    Closed,
}

/// The names the Modbus application protocol gives exception codes.
pub fn exception_name(code: u8) -> &'static str {
    match code {
        1 => "illegal function",
        2 => "illegal data address",
        3 => "illegal data value",
        4 => "server device failure",
        5 => "acknowledge",
        6 => "server device busy",
        8 => "memory parity error",
        0x0A => "gateway path unavailable",
        0x0B => "gateway target device failed to respond",
        _ => "unknown exception",
    }
}

/// Counters of a bus since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Requests answered (data, a confirmed write, or an exception).
    pub answered: u64,
    /// Requests that failed (timeout, invalid replies, link down, degraded).
    pub failed: u64,
    /// Requests refused because their device had too many queued ([`BusError::Busy`]).
    pub refused: u64,
    /// Stale input bytes discarded (late replies, noise).
    pub stale_bytes: u64,
}

/// A cloneable way to a bus task. The task ends when the last handle is dropped (after
/// the request it is serving).
#[derive(Debug, Clone)]
pub struct BusHandle {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// One flag per unit id.
    degraded: Vec<AtomicBool>,
    answered: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    stale_bytes: AtomicU64,
}

#[derive(Debug)]
struct Job {
    device: String,
    unit: Unit,
    op: Op,
    reply: oneshot::Sender<Result<Reply, BusError>>,
}

/// Starts the task that owns the bus described by `config`. Nothing is opened until the
/// first request; a missing port or refused connection fails requests with
/// [`BusError::Io`] and is retried with capped backoff, never panicking. Must be called
/// within a tokio runtime.
pub fn spawn(config: BusConfig) -> BusHandle {
    spawn_with(Wire::new(config))
}

/// [`spawn`] over any transport (the tests use a scripted one).
pub fn spawn_with(transport: impl Transport) -> BusHandle {
    let (jobs, inbox) = mpsc::channel(CHANNEL_CAPACITY);
    let shared = Arc::new(Shared {
        degraded: (0..=u8::MAX).map(|_| AtomicBool::new(false)).collect(),
        answered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        stale_bytes: AtomicU64::new(0),
    });
    let task = BusTask {
        inbox,
        transport,
        queues: Queues::default(),
        health: vec![UnitHealth::default(); 256],
        shared: Arc::clone(&shared),
    };
    tokio::spawn(task.run());
    BusHandle { jobs, shared }
}

impl BusHandle {
    /// Reads `range` from `unit` for `device` (the name that round-robin is fair
    /// between). Returns exactly `range.count` bits or registers.
    ///
    /// # Cancel safety
    /// Dropping the future withdraws the request unless the bus task has already
    /// started it; then it may still reach the device, its result unseen.
    pub async fn read(
        &self,
        device: &str,
        unit: &Unit,
        range: ReadRange,
    ) -> Result<Data, BusError> {
        match self.submit(device, unit, Op::Read(range)).await? {
            Reply::Data(data) => Ok(data),
            Reply::Written => Err(BusError::InvalidReply(
                "a write confirmation answered a read".into(),
            )),
        }
    }

    /// Writes to `unit` for `device`, ahead of every queued read.
    ///
    /// # Cancel safety
    /// As for [`BusHandle::read`]: a dropped write may still happen.
    pub async fn write(&self, device: &str, unit: &Unit, write: Write) -> Result<(), BusError> {
        match self.submit(device, unit, Op::Write(write)).await? {
            Reply::Written => Ok(()),
            Reply::Data(_) => Err(BusError::InvalidReply("read data answered a write".into())),
        }
    }

    /// Whether `unit` is degraded now (its requests fail fast with
    /// [`BusError::Degraded`] until a probe succeeds).
    pub fn is_degraded(&self, unit: u8) -> bool {
        // 256 flags: every u8 indexes one.
        self.shared.degraded[usize::from(unit)].load(Ordering::Relaxed)
    }

    /// The bus's counters.
    pub fn stats(&self) -> BusStats {
        BusStats {
            answered: self.shared.answered.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
            stale_bytes: self.shared.stale_bytes.load(Ordering::Relaxed),
        }
    }

    async fn submit(&self, device: &str, unit: &Unit, op: Op) -> Result<Reply, BusError> {
        op.check().map_err(BusError::InvalidRequest)?;
        let (reply, result) = oneshot::channel();
        let job = Job {
            device: device.to_owned(),
            unit: *unit,
            op,
            reply,
        };
        self.jobs.send(job).await.map_err(|_| BusError::Closed)?;
        result.await.map_err(|_| BusError::Closed)?
    }
}

/// What is waiting, per device: writes ahead of reads, devices served in turn.
#[derive(Debug, Default)]
struct Queues {
    devices: HashMap<String, DeviceQueue>,
    /// The devices with something queued, next to be served first. Invariant: exactly
    /// the keys of `devices`, each once, and no device queue in it is empty.
    ring: VecDeque<String>,
}

#[derive(Debug, Default)]
struct DeviceQueue {
    writes: VecDeque<Job>,
    reads: VecDeque<Job>,
}

impl Queues {
    /// Queues `job`, or hands it back when its device already has
    /// [`MAX_QUEUED_PER_DEVICE`] requests waiting.
    fn push(&mut self, job: Job) -> Result<(), Job> {
        let queue = match self.devices.get_mut(&job.device) {
            Some(queue) => queue,
            None => {
                self.ring.push_back(job.device.clone());
                self.devices.entry(job.device.clone()).or_default()
            }
        };
        if queue.writes.len() + queue.reads.len() >= MAX_QUEUED_PER_DEVICE {
            return Err(job);
        }
        match job.op {
            Op::Write(_) => queue.writes.push_back(job),
            Op::Read(_) => queue.reads.push_back(job),
        }
        Ok(())
    }

    /// The next job: the oldest write of the first device in turn that has one, else
    /// the oldest read of the device whose turn it is. The served device goes to the
    /// back of the ring.
    fn pop(&mut self) -> Option<Job> {
        let position = self
            .ring
            .iter()
            .position(|device| {
                self.devices
                    .get(device)
                    .is_some_and(|q| !q.writes.is_empty())
            })
            .unwrap_or(0);
        let device = self.ring.remove(position)?;
        let queue = self.devices.get_mut(&device)?;
        let job = queue.writes.pop_front().or_else(|| queue.reads.pop_front());
        if queue.writes.is_empty() && queue.reads.is_empty() {
            self.devices.remove(&device);
        } else {
            self.ring.push_back(device);
        }
        job
    }
}

/// What the bus knows about one unit's recent answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct UnitHealth {
    /// Requests in a row that failed (timeouts, invalid replies).
    failures: u32,
    /// While degraded: the wait after the next failed probe.
    backoff: Duration,
    /// `Some` while degraded: when the next probe may go out.
    next_probe: Option<Instant>,
}

/// How the next request to a unit goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// With all its retries.
    Normal,
    /// One attempt: the unit is degraded and its probe is due.
    Probe,
    /// Not at all: degraded, next probe in this long.
    Skip(Duration),
}

impl UnitHealth {
    fn gate(&self, now: Instant) -> Gate {
        match self.next_probe {
            None => Gate::Normal,
            Some(at) if now < at => Gate::Skip(at - now),
            Some(_) => Gate::Probe,
        }
    }

    fn answered(&mut self) {
        *self = UnitHealth::default();
    }

    /// Counts a failed request; true when the unit is degraded afterwards.
    fn failed(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        if self.failures < DEGRADE_AFTER {
            return false;
        }
        let wait = match self.next_probe {
            None => PROBE_MIN,
            Some(_) => (self.backoff * 2).min(PROBE_MAX),
        };
        self.backoff = wait;
        self.next_probe = Some(now + wait);
        true
    }
}

struct BusTask<T> {
    inbox: mpsc::Receiver<Job>,
    transport: T,
    queues: Queues,
    /// Indexed by unit id.
    health: Vec<UnitHealth>,
    shared: Arc<Shared>,
}

impl<T: Transport> BusTask<T> {
    async fn run(mut self) {
        loop {
            // Take in everything already sent, so that a write sent while the last
            // request was on the wire goes before the reads queued earlier.
            while let Ok(job) = self.inbox.try_recv() {
                self.enqueue(job);
            }
            if let Some(job) = self.queues.pop() {
                self.serve(job).await;
                continue;
            }
            let next = match self.transport.idle_limit() {
                Some(limit) if self.transport.is_open() => {
                    match tokio::time::timeout(limit, self.inbox.recv()).await {
                        Ok(next) => next,
                        Err(_idle) => {
                            self.transport.close();
                            continue;
                        }
                    }
                }
                _ => self.inbox.recv().await,
            };
            match next {
                Some(job) => self.enqueue(job),
                // Every handle is gone.
                None => break,
            }
        }
    }

    fn enqueue(&mut self, job: Job) {
        if let Err(job) = self.queues.push(job) {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            let _ = job.reply.send(Err(BusError::Busy(job.device.clone())));
        }
    }

    async fn serve(&mut self, job: Job) {
        // The caller gave up (dropped its future): spare the bus the request.
        if job.reply.is_closed() {
            return;
        }
        let result = self.execute(&job).await;
        let counter = match &result {
            Ok(_) | Err(BusError::Exception(_)) => &self.shared.answered,
            Err(_) => &self.shared.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.shared
            .stale_bytes
            .store(self.transport.stale_bytes(), Ordering::Relaxed);
        let _ = job.reply.send(result);
    }

    /// Runs one job's attempts and keeps the unit's health.
    async fn execute(&mut self, job: &Job) -> Result<Reply, BusError> {
        let unit = job.unit.id;
        // `health` has 256 entries: every u8 indexes one.
        let health = self.health[usize::from(unit)];
        let attempts = match health.gate(Instant::now()) {
            Gate::Skip(retry_in) => {
                return Err(BusError::Degraded {
                    unit,
                    failures: health.failures,
                    retry_in,
                });
            }
            Gate::Probe => 1,
            Gate::Normal => job.unit.retries.saturating_add(1),
        };
        let mut made = 0;
        let mut unit_failed = false;
        let mut last = WireError::Io("no attempt was made".into());
        while made < attempts {
            made += 1;
            match self
                .transport
                .attempt(unit, &job.op, job.unit.timeout)
                .await
            {
                Ok(reply) => {
                    self.set_health(unit, |h, _| {
                        h.answered();
                    });
                    return Ok(reply);
                }
                Err(WireError::Exception(code)) => {
                    // An answer: the unit is alive, and asking again changes nothing.
                    self.set_health(unit, |h, _| {
                        h.answered();
                    });
                    return Err(BusError::Exception(code));
                }
                Err(e) => {
                    unit_failed |= matches!(e, WireError::Timeout(_) | WireError::InvalidReply(_));
                    last = e;
                }
            }
        }
        // A link that is down is not the unit's fault: only its own silence or
        // nonsense counts towards degrading it.
        if unit_failed {
            self.set_health(unit, |h, now| {
                h.failed(now);
            });
        }
        Err(match last {
            WireError::Timeout(timeout) => BusError::Timeout {
                unit,
                timeout,
                attempts: made,
            },
            WireError::InvalidReply(why) => BusError::InvalidReply(why),
            WireError::Io(why) => BusError::Io(why),
            WireError::Exception(code) => BusError::Exception(code),
        })
    }

    fn set_health(&mut self, unit: u8, change: impl FnOnce(&mut UnitHealth, Instant)) {
        let index = usize::from(unit);
        let health = &mut self.health[index];
        change(health, Instant::now());
        self.shared.degraded[index].store(health.next_probe.is_some(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::Table;
    use std::sync::Mutex;

    fn read(device: &str, address: u16) -> (Job, oneshot::Receiver<Result<Reply, BusError>>) {
        job(
            device,
            Op::Read(ReadRange {
                table: Table::Holding,
                address,
                count: 1,
            }),
        )
    }

    fn write(device: &str, address: u16) -> (Job, oneshot::Receiver<Result<Reply, BusError>>) {
        job(
            device,
            Op::Write(Write::SingleRegister { address, value: 1 }),
        )
    }

    fn job(device: &str, op: Op) -> (Job, oneshot::Receiver<Result<Reply, BusError>>) {
        let (reply, rx) = oneshot::channel();
        let unit = Unit {
            id: 1,
            timeout: Duration::from_millis(10),
            retries: 0,
        };
        let job = Job {
            device: device.into(),
            unit,
            op,
            reply,
        };
        (job, rx)
    }

    fn address(job: &Job) -> u16 {
        match &job.op {
            Op::Read(range) => range.address,
            Op::Write(Write::SingleRegister { address, .. }) => *address,
            Op::Write(_) => u16::MAX,
        }
    }

    fn drain(queues: &mut Queues) -> Vec<(String, u16)> {
        std::iter::from_fn(|| queues.pop())
            .map(|job| (job.device.clone(), address(&job)))
            .collect()
    }

    #[test]
    fn reads_take_turns_between_devices() {
        let mut queues = Queues::default();
        let mut keep = Vec::new();
        for (device, address) in [
            ("a", 1),
            ("a", 2),
            ("a", 3),
            ("b", 10),
            ("c", 20),
            ("b", 11),
        ] {
            let (job, rx) = read(device, address);
            keep.push(rx);
            queues.push(job).unwrap();
        }
        let order = drain(&mut queues);
        let expected = [
            ("a", 1),
            ("b", 10),
            ("c", 20),
            ("a", 2),
            ("b", 11),
            ("a", 3),
        ];
        assert_eq!(
            order,
            expected.map(|(d, a)| (d.to_string(), a)).to_vec(),
            "one request per device per turn"
        );
        assert!(queues.ring.is_empty());
        assert!(queues.devices.is_empty(), "emptied devices are forgotten");
    }

    #[test]
    fn writes_go_before_every_queued_read_and_also_take_turns() {
        let mut queues = Queues::default();
        let mut keep = Vec::new();
        for (job, rx) in [
            read("a", 1),
            read("b", 10),
            read("a", 2),
            write("b", 100),
            write("a", 200),
            write("b", 101),
        ] {
            keep.push(rx);
            queues.push(job).unwrap();
        }
        let order = drain(&mut queues);
        let expected = [
            ("a", 200),
            ("b", 100),
            ("b", 101),
            ("a", 1),
            ("b", 10),
            ("a", 2),
        ];
        assert_eq!(order, expected.map(|(d, a)| (d.to_string(), a)).to_vec());
    }

    #[test]
    fn a_device_cannot_queue_without_bound() {
        let mut queues = Queues::default();
        let mut keep = Vec::new();
        for i in 0..MAX_QUEUED_PER_DEVICE {
            let (job, rx) = read("greedy", i as u16);
            keep.push(rx);
            queues.push(job).unwrap();
        }
        let (job, _rx) = read("greedy", 999);
        assert!(queues.push(job).is_err(), "the 33rd request is refused");
        let (job, _rx) = read("modest", 1);
        assert!(queues.push(job).is_ok(), "other devices are not affected");
    }

    #[test]
    fn a_unit_degrades_after_three_failures_and_probes_with_capped_backoff() {
        let start = Instant::now();
        let mut health = UnitHealth::default();
        assert!(!health.failed(start));
        assert!(!health.failed(start));
        assert_eq!(
            health.gate(start),
            Gate::Normal,
            "two failures: still normal"
        );
        assert!(health.failed(start));
        assert_eq!(health.gate(start), Gate::Skip(PROBE_MIN));
        let probe_at = start + PROBE_MIN;
        assert_eq!(health.gate(probe_at), Gate::Probe);

        // Failed probes double the wait up to the cap.
        let mut now = probe_at;
        let mut waits = Vec::new();
        for _ in 0..8 {
            health.failed(now);
            let Gate::Skip(wait) = health.gate(now) else {
                panic!("degraded units are skipped between probes");
            };
            waits.push(wait.as_secs());
            now += wait;
        }
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);

        health.answered();
        assert_eq!(
            health.gate(now),
            Gate::Normal,
            "an answer restores the unit"
        );
        assert_eq!(health, UnitHealth::default());
    }

    /// A transport whose units answer as scripted, recording every attempt.
    #[derive(Clone, Default)]
    struct Scripted {
        attempts: Arc<Mutex<Vec<(u8, Op)>>>,
        dead: Vec<u8>,
    }

    impl Transport for Scripted {
        fn attempt(
            &mut self,
            unit: u8,
            op: &Op,
            timeout: Duration,
        ) -> impl Future<Output = Result<Reply, WireError>> + Send {
            self.attempts.lock().unwrap().push((unit, op.clone()));
            let dead = self.dead.contains(&unit);
            let op = op.clone();
            async move {
                if dead {
                    tokio::time::sleep(timeout).await;
                    return Err(WireError::Timeout(timeout));
                }
                match op {
                    Op::Read(range) if range.address == 0xDEAD => Err(WireError::Exception(2)),
                    Op::Read(range) => {
                        Ok(Reply::Data(Data::Registers(vec![
                            range.address;
                            usize::from(range.count)
                        ])))
                    }
                    Op::Write(_) => Ok(Reply::Written),
                }
            }
        }

        fn idle_limit(&self) -> Option<Duration> {
            None
        }

        fn is_open(&self) -> bool {
            true
        }

        fn close(&mut self) {}
    }

    fn holding(address: u16) -> ReadRange {
        ReadRange {
            table: Table::Holding,
            address,
            count: 2,
        }
    }

    #[tokio::test]
    async fn a_dead_unit_is_retried_then_degraded_while_the_live_one_is_still_served() {
        let transport = Scripted {
            dead: vec![9],
            ..Scripted::default()
        };
        let attempts = Arc::clone(&transport.attempts);
        let bus = spawn_with(transport);
        let dead = Unit {
            id: 9,
            timeout: Duration::from_millis(5),
            retries: 2,
        };
        let live = Unit { id: 1, ..dead };

        for i in 0..DEGRADE_AFTER {
            let error = bus.read("dead", &dead, holding(0)).await.unwrap_err();
            assert_eq!(
                error,
                BusError::Timeout {
                    unit: 9,
                    timeout: Duration::from_millis(5),
                    attempts: 3
                }
            );
            assert_eq!(bus.is_degraded(9), i + 1 == DEGRADE_AFTER);
            assert_eq!(
                bus.read("live", &live, holding(7)).await,
                Ok(Data::Registers(vec![7, 7]))
            );
        }
        let dead_attempts = || {
            attempts
                .lock()
                .unwrap()
                .iter()
                .filter(|(u, _)| *u == 9)
                .count()
        };
        assert_eq!(dead_attempts(), 9, "retries + 1 attempts per request");

        // Degraded: skipped without touching the bus.
        let error = bus.read("dead", &dead, holding(0)).await.unwrap_err();
        assert!(
            matches!(
                error,
                BusError::Degraded {
                    unit: 9,
                    failures: 3,
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(dead_attempts(), 9);
        assert!(
            error.to_string().contains("unit 9 is not answering"),
            "{error}"
        );
        assert!(!bus.is_degraded(1));
        assert_eq!(bus.stats().failed, 4);
        assert_eq!(bus.stats().answered, 3);
    }

    #[tokio::test]
    async fn an_exception_is_an_answer_not_retried_and_not_a_failure() {
        let transport = Scripted::default();
        let attempts = Arc::clone(&transport.attempts);
        let bus = spawn_with(transport);
        let unit = Unit {
            id: 4,
            timeout: Duration::from_millis(5),
            retries: 3,
        };
        for _ in 0..DEGRADE_AFTER + 1 {
            let error = bus.read("d", &unit, holding(0xDEAD)).await.unwrap_err();
            assert_eq!(error, BusError::Exception(2));
            assert_eq!(
                error.to_string(),
                "the device refused the request: exception 2 (illegal data address)"
            );
        }
        assert_eq!(attempts.lock().unwrap().len(), 4);
        assert!(!bus.is_degraded(4));
    }

    #[tokio::test]
    async fn requests_no_frame_can_carry_never_reach_the_bus() {
        let transport = Scripted::default();
        let attempts = Arc::clone(&transport.attempts);
        let bus = spawn_with(transport);
        let unit = Unit {
            id: 1,
            timeout: Duration::from_millis(5),
            retries: 0,
        };
        let range = ReadRange {
            table: Table::Input,
            address: 0,
            count: 200,
        };
        let error = bus.read("d", &unit, range).await.unwrap_err();
        assert!(matches!(error, BusError::InvalidRequest(_)), "{error}");
        assert!(attempts.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_write_sent_while_reads_wait_goes_first() {
        let transport = Scripted {
            dead: vec![5],
            ..Scripted::default()
        };
        let attempts = Arc::clone(&transport.attempts);
        let bus = spawn_with(transport);
        let slow = Unit {
            id: 5,
            timeout: Duration::from_millis(50),
            retries: 0,
        };
        let unit = Unit { id: 1, ..slow };
        // The slow unit's read occupies the bus while the rest queue up behind it.
        let first = tokio::spawn({
            let bus = bus.clone();
            async move { bus.read("slow", &slow, holding(1)).await }
        });
        wait_for(|| !attempts.lock().unwrap().is_empty()).await;
        let reads: Vec<_> = (0..3)
            .map(|i| {
                let bus = bus.clone();
                tokio::spawn(async move { bus.read("r", &unit, holding(10 + i)).await })
            })
            .collect();
        let writer = {
            let bus = bus.clone();
            tokio::spawn(async move {
                bus.write(
                    "w",
                    &unit,
                    Write::SingleRegister {
                        address: 99,
                        value: 1,
                    },
                )
                .await
            })
        };
        assert!(first.await.unwrap().is_err());
        assert_eq!(writer.await.unwrap(), Ok(()));
        for read in reads {
            assert!(read.await.unwrap().is_ok());
        }
        let order: Vec<_> = attempts
            .lock()
            .unwrap()
            .iter()
            .map(|(_, op)| op.clone())
            .collect();
        assert!(
            matches!(order[1], Op::Write(_)),
            "the write went right after the request in flight: {order:?}"
        );
    }

    /// Polls `cond` (every millisecond, at most 5 s).
    async fn wait_for(cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "condition not met within 5 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
