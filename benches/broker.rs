//! Our broker (`fieldgate broker`) against Mosquitto, in the same run, with the same load
//! generator, on the same machine.
//!
//! What it measures, for each broker:
//! - throughput: fan-in (10 publishers to 1 subscriber) and fan-out (1 publisher to 10
//!   subscribers), QoS 0 and QoS 1, 100-byte payloads, unpaced, best of N runs. The rate
//!   is what reached the subscribers: every payload names its publisher and sequence
//!   number, so each subscriber counts distinct arrivals (and duplicates) instead of
//!   assuming delivery; messages published but never received are reported as lost;
//! - latency: p50 and p99 from the send time carried in the payload to the moment the
//!   subscriber's task sees the message, on separate runs paced at 20% of the lower of
//!   the two brokers' peaks (the same offered load for both; at saturation latency only
//!   measures how long the queues are), samples pooled over the runs;
//! - memory: VmRSS of a fresh broker, and with 1,000 idle clients connected and
//!   subscribed (raw CONNECT and SUBSCRIBE over tokio sockets: lighter than full
//!   clients), as a total and per connection; and VmHWM after all the load runs.
//!
//! Mosquitto gets a configuration that lets it keep up: `max_queued_messages 1000000`
//! (its default of 1000 drops silently under fan-in), `max_inflight_messages 100` (our
//! receive maximum and in-flight window), `set_tcp_nodelay true` (our broker sets it), and
//! no per-message logging (the test support writes `log_type all`, a log line per PUBLISH
//! to a file; `log_type none` resets it). Our broker runs with its defaults.
//!
//! Runs alternate between the brokers, and which goes first, so that noise from other
//! tenants of this shared 2-core box hits both. The load generator is this process: our
//! client library on a multi-thread tokio runtime, publishing pipelined through
//! `Handle::enqueue` as `fieldgate pub -l` does. It shares the cores with the broker, so
//! its CPU use is printed next to the broker's: readers can see which one was the limit.
//! (In fan-in, one subscriber connection takes everything, so its client can be the limit:
//! a generator near 100% of a core next to a broker well below says so.)
//!
//! `cargo bench --bench broker` runs the full measurement; without `--bench` (as
//! `cargo test --all-targets` runs it) it does a short pass that proves the harness works
//! and asserts that no message was lost through our broker.

// A benchmark that cannot start its peers has nothing to measure: stopping is right.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fieldgate::mqtt::client::{self, ClientEvent, ClientOptions, Delivery, Events, Handle};
use fieldgate::mqtt::codec;
use fieldgate::mqtt::packet::{
    Connect, ConnectProperties, Packet, PacketId, ProtocolVersion, Publish, PublishProperties, QoS,
    Subscribe, SubscribeProperties, Subscription, SubscriptionOptions,
};
use fieldgate::mqtt::session::client::ClientConfig;
use fieldgate::mqtt::string::MqttString;
use fieldgate::mqtt::topic::{TopicFilter, TopicName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use support::Mosquitto;

/// Both brokers' window: our receive maximum and in-flight limit, Mosquitto's
/// `max_inflight_messages`.
const WINDOW: usize = 100;
const PAYLOAD_LEN: usize = 100;
/// Messages a publisher keeps queued and unconfirmed, as `fieldgate pub -l` does: enough
/// to keep the window full, bounded so memory stays flat.
const IN_FLIGHT: usize = 1024;
/// The latency runs' offered load, as a share of the lower of the two peaks.
const LATENCY_LOAD: f64 = 0.2;
/// With nothing arriving for this long after the publishers are done, what is missing is
/// lost (or the broker is stuck; either way, the run reports it).
const QUIET: Duration = Duration::from_secs(3);
/// Connecting, subscribing, disconnecting: each gets this long.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Which {
    Fieldgate,
    Mosquitto,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Fieldgate => "fieldgate",
            Which::Mosquitto => "mosquitto",
        }
    }
}

enum Process {
    /// `fieldgate broker -p 0 -v`, its stderr kept (a panic message is the bug report).
    Ours {
        child: Child,
        stderr: Arc<Mutex<Vec<String>>>,
    },
    Theirs(Mosquitto),
}

/// A broker process on a free loopback port.
struct BrokerUnderTest {
    which: Which,
    port: u16,
    pid: u32,
    process: Process,
}

impl BrokerUnderTest {
    fn start(which: Which) -> Self {
        match which {
            Which::Fieldgate => Self::start_ours(),
            Which::Mosquitto => {
                let mosquitto = Mosquitto::start_with_config(&format!(
                    "max_queued_messages 1000000\nmax_inflight_messages {WINDOW}\n\
                     set_tcp_nodelay true\nlog_type none\nlog_type error\nlog_type warning\n"
                ));
                BrokerUnderTest {
                    which,
                    port: mosquitto.port(),
                    pid: mosquitto.pid(),
                    process: Process::Theirs(mosquitto),
                }
            }
        }
    }

    fn start_ours() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
            .args(["broker", "-p", "0", "-v"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fieldgate broker starts");
        let pipe = child.stderr.take().expect("stderr is piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (lines_tx, lines) = std::sync::mpsc::channel();
        let kept = Arc::clone(&stderr);
        // Drains stderr for the broker's whole life, so a chatty broker never blocks.
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { return };
                let _ = lines_tx.send(line.clone());
                kept.lock().unwrap().push(line);
            }
        });
        let pid = child.id();
        // From here on, Drop kills the child on every path, the panics below included.
        let mut broker = BrokerUnderTest {
            which: Which::Fieldgate,
            port: 0,
            pid,
            process: Process::Ours { child, stderr },
        };
        let deadline = Instant::now() + STEP_TIMEOUT;
        while broker.port == 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("fieldgate broker: listening on ") {
                        broker.port = addr.rsplit(':').next().unwrap().parse().unwrap();
                    }
                }
                Err(_) => panic!(
                    "fieldgate broker did not report its port within {STEP_TIMEOUT:?}:\n{}",
                    broker.output()
                ),
            }
        }
        broker
    }

    /// Why the process is gone, if it is (a zombie counts: it is no longer serving).
    fn exited(&self) -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid));
        let state = stat
            .as_deref()
            .ok()
            .and_then(|s| s.rsplit_once(')'))
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        match state {
            Some('Z' | 'X') | None => Some(format!(
                "{} (pid {}) has exited; its output:\n{}",
                self.which.name(),
                self.pid,
                self.output()
            )),
            Some(_) => None,
        }
    }

    /// The end of what the broker printed, for reports.
    fn output(&self) -> String {
        let lines: Vec<String> = match &self.process {
            Process::Ours { stderr, .. } => stderr.lock().unwrap().clone(),
            Process::Theirs(mosquitto) => mosquitto.log().lines().map(String::from).collect(),
        };
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn status_kib(&self, key: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for BrokerUnderTest {
    fn drop(&mut self) {
        if let Process::Ours { child, .. } = &mut self.process {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The payload: send time (ns since `base`), publisher, sequence number, then filler.
fn payload(base: Instant, publisher: u32, seq: u64) -> Bytes {
    let mut bytes = vec![b'.'; PAYLOAD_LEN];
    let sent = base.elapsed().as_nanos() as u64;
    bytes[0..8].copy_from_slice(&sent.to_le_bytes());
    bytes[8..12].copy_from_slice(&publisher.to_le_bytes());
    bytes[12..20].copy_from_slice(&seq.to_le_bytes());
    Bytes::from(bytes)
}

fn parse_payload(payload: &[u8]) -> Option<(u64, usize, u64)> {
    if payload.len() != PAYLOAD_LEN {
        return None;
    }
    let sent = u64::from_le_bytes(payload[0..8].try_into().ok()?);
    let publisher = u32::from_le_bytes(payload[8..12].try_into().ok()?);
    let seq = u64::from_le_bytes(payload[12..20].try_into().ok()?);
    Some((sent, publisher as usize, seq))
}

/// Connects one client of our library (MQTT 5, no reconnects: a lost connection is a
/// finding, not something to paper over) and waits for CONNACK.
async fn connect(port: u16, id: String) -> Result<(Handle, Events), String> {
    let session = ClientConfig::new(ProtocolVersion::V5, MqttString::try_from(id).unwrap());
    let mut options = ClientOptions::new("127.0.0.1", port, session);
    options.reconnect = None;
    let (handle, mut events) = client::spawn(options).map_err(|e| e.to_string())?;
    let connected = tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            match events.recv().await {
                Some(ClientEvent::Connected { .. }) => return Ok(()),
                Some(ClientEvent::Refused(code)) => return Err(format!("refused: {code:?}")),
                Some(ClientEvent::Unreachable(why)) => return Err(format!("unreachable: {why}")),
                Some(ClientEvent::Disconnected(cause)) => {
                    return Err(format!("disconnected: {cause:?}"));
                }
                Some(_) => {}
                None => return Err("the client stopped".to_string()),
            }
        }
    })
    .await;
    match connected {
        Ok(Ok(())) => Ok((handle, events)),
        Ok(Err(why)) => Err(why),
        Err(_) => Err(format!("no CONNACK within {STEP_TIMEOUT:?}")),
    }
}

/// One load run: who publishes how much, how fast.
#[derive(Clone, Copy)]
struct Load {
    publishers: usize,
    subscribers: usize,
    qos: QoS,
    per_publisher: u64,
    /// Messages per second per publisher; `None`: as fast as the broker takes them.
    pace: Option<f64>,
}

/// What one run measured.
#[derive(Default)]
struct RunResult {
    /// Messages the publishers got confirmed (QoS 1: PUBACK; QoS 0: written out).
    published: u64,
    /// Distinct messages that arrived, over all subscribers.
    received: u64,
    /// Deliveries that should have arrived: `published` times the subscriber count.
    expected: u64,
    duplicates: u64,
    /// From the first publish to the last arrival.
    elapsed: Duration,
    /// The window the CPU figures cover (first publish to the end of the wait).
    wall: Duration,
    generator_cpu: Duration,
    broker_cpu: Duration,
    /// End-to-end latencies in nanoseconds (paced runs only).
    latencies: Vec<u64>,
    problems: Vec<String>,
}

impl RunResult {
    fn rate(&self) -> f64 {
        if self.elapsed.is_zero() {
            return 0.0;
        }
        self.received as f64 / self.elapsed.as_secs_f64()
    }

    fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }

    fn cpu_percent(&self, cpu: Duration) -> f64 {
        100.0 * cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }
}

/// What one subscriber counted.
struct Tally {
    received: u64,
    duplicates: u64,
    foreign: u64,
    /// When the last new message arrived, in ns since `base`.
    last: u64,
    latencies: Vec<u64>,
    problem: Option<String>,
}

async fn subscriber(
    mut events: Events,
    load: Load,
    base: Instant,
    progress: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Tally {
    let mut seen = vec![vec![false; load.per_publisher as usize]; load.publishers];
    let mut tally = Tally {
        received: 0,
        duplicates: 0,
        foreign: 0,
        last: 0,
        latencies: Vec::new(),
        problem: None,
    };
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = stop.changed() => break,
        };
        match event {
            Some(ClientEvent::Message(message)) => {
                let now = base.elapsed().as_nanos() as u64;
                let slot = parse_payload(&message.payload).and_then(|(sent, publisher, seq)| {
                    let slot = seen.get_mut(publisher)?.get_mut(seq as usize)?;
                    Some((sent, slot))
                });
                match slot {
                    Some((_, slot)) if *slot => tally.duplicates += 1,
                    Some((sent, slot)) => {
                        *slot = true;
                        tally.received += 1;
                        tally.last = now;
                        if load.pace.is_some() {
                            tally.latencies.push(now.saturating_sub(sent));
                        }
                        progress.store(tally.received, Ordering::Relaxed);
                    }
                    None => tally.foreign += 1,
                }
            }
            Some(ClientEvent::Disconnected(cause)) => {
                tally.problem = Some(format!("a subscriber was disconnected: {cause:?}"));
                break;
            }
            Some(_) => {}
            None => {
                tally.problem = Some("a subscriber's client stopped".to_string());
                break;
            }
        }
    }
    tally
}

/// What one publisher got confirmed, and what went wrong.
async fn publisher(
    handle: Handle,
    index: u32,
    load: Load,
    topic: TopicName,
    base: Instant,
    start: tokio::time::Instant,
    deadline: tokio::time::Instant,
) -> (u64, Option<String>) {
    let mut waiting: VecDeque<Delivery> = VecDeque::new();
    let mut confirmed = 0;
    let mut problem = None;
    for seq in 0..load.per_publisher {
        if let Some(rate) = load.pace {
            // An absolute schedule: a late wake-up is caught up, not added to every
            // message after it.
            tokio::time::sleep_until(start + Duration::from_secs_f64(seq as f64 / rate)).await;
        }
        let message = Publish {
            dup: false,
            qos: load.qos,
            retain: false,
            topic: topic.clone(),
            packet_id: None,
            payload: payload(base, index, seq),
            properties: PublishProperties::default(),
        };
        match tokio::time::timeout_at(deadline, handle.enqueue(message)).await {
            Ok(Ok(delivery)) => waiting.push_back(delivery),
            Ok(Err(e)) => {
                problem = Some(format!("publisher {index}: message {seq} refused: {e}"));
                break;
            }
            Err(_) => {
                problem = Some(format!(
                    "publisher {index}: stuck queueing message {seq} of {} at the deadline",
                    load.per_publisher
                ));
                break;
            }
        }
        if waiting.len() > IN_FLIGHT {
            let oldest = waiting.pop_front().unwrap();
            settle(oldest, index, deadline, &mut confirmed, &mut problem).await;
        }
    }
    while let Some(delivery) = waiting.pop_front() {
        settle(delivery, index, deadline, &mut confirmed, &mut problem).await;
    }
    (confirmed, problem)
}

/// Waits for one publish's outcome (bounded by the run's deadline) and counts it.
async fn settle(
    delivery: Delivery,
    index: u32,
    deadline: tokio::time::Instant,
    confirmed: &mut u64,
    problem: &mut Option<String>,
) {
    match tokio::time::timeout_at(deadline, delivery.delivered()).await {
        Ok(Ok(())) => *confirmed += 1,
        Ok(Err(e)) => {
            problem.get_or_insert_with(|| format!("publisher {index}: delivery failed: {e}"));
        }
        Err(_) => {
            problem.get_or_insert_with(|| {
                format!("publisher {index}: a delivery was not confirmed before the deadline")
            });
        }
    }
}

/// Reads a publisher's events (it gets no messages) so its client never stalls on a full
/// event queue, and reports a lost connection.
async fn watch_publisher(mut events: Events, index: usize) -> Option<String> {
    while let Some(event) = events.recv().await {
        if let ClientEvent::Disconnected(cause) = event
            && cause != fieldgate::mqtt::session::client::DisconnectCause::Requested
        {
            return Some(format!("publisher {index} was disconnected: {cause:?}"));
        }
    }
    None
}

async fn disconnect_all(handles: Vec<Handle>) {
    let mut set = tokio::task::JoinSet::new();
    for handle in handles {
        set.spawn(async move { tokio::time::timeout(STEP_TIMEOUT, handle.disconnect()).await });
    }
    while set.join_next().await.is_some() {}
}

/// Runs `load` against `broker` on topic `bench/<id>` and counts what arrived; every wait
/// is bounded by `limit` (from the first publish) or `STEP_TIMEOUT`.
async fn run_load(broker: &BrokerUnderTest, load: Load, id: &str, limit: Duration) -> RunResult {
    let mut result = RunResult::default();
    if let Some(why) = broker.exited() {
        result.problems.push(why);
        return result;
    }
    let base = Instant::now();
    let topic = TopicName::try_from(format!("bench/{id}").as_str()).unwrap();
    let filter = TopicFilter::try_from(format!("bench/{id}").as_str()).unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut handles = Vec::new();
    let mut subscribers = Vec::new();
    let mut progress = Vec::new();
    for i in 0..load.subscribers {
        let (handle, events) = match connect(broker.port, format!("{id}-s{i}")).await {
            Ok(connected) => connected,
            Err(why) => {
                result.problems.push(format!("subscriber {i}: {why}"));
                break;
            }
        };
        let subscription = Subscription {
            filter: filter.clone(),
            options: SubscriptionOptions {
                qos: load.qos,
                ..SubscriptionOptions::default()
            },
        };
        match tokio::time::timeout(STEP_TIMEOUT, handle.subscribe(vec![subscription])).await {
            Ok(Ok(codes)) if codes.iter().all(|c| c.is_success()) => {}
            outcome => {
                result
                    .problems
                    .push(format!("subscriber {i}: SUBSCRIBE failed: {outcome:?}"));
                handles.push(handle);
                break;
            }
        }
        handles.push(handle);
        let counter = Arc::new(AtomicU64::new(0));
        progress.push(Arc::clone(&counter));
        subscribers.push(tokio::spawn(subscriber(
            events,
            load,
            base,
            counter,
            stop_rx.clone(),
        )));
    }
    let mut publishers = Vec::new();
    let mut watchers = Vec::new();
    for i in 0..load.publishers {
        if !result.problems.is_empty() {
            break;
        }
        match connect(broker.port, format!("{id}-p{i}")).await {
            Ok((handle, events)) => {
                publishers.push(handle);
                watchers.push(tokio::spawn(watch_publisher(events, i)));
            }
            Err(why) => result.problems.push(format!("publisher {i}: {why}")),
        }
    }
    if !result.problems.is_empty() {
        let _ = stop_tx.send(true);
        handles.extend(publishers);
        disconnect_all(handles).await;
        return result;
    }

    let generator_before = support::cpu_time(std::process::id());
    let broker_before = support::cpu_time(broker.pid);
    let start_ns = base.elapsed().as_nanos() as u64;
    let start = tokio::time::Instant::now();
    let deadline = start + limit;
    let mut sending = Vec::new();
    for (i, handle) in publishers.iter().enumerate() {
        sending.push(tokio::spawn(publisher(
            handle.clone(),
            i as u32,
            load,
            topic.clone(),
            base,
            start,
            deadline,
        )));
    }
    for task in sending {
        let (confirmed, problem) = task.await.expect("a publisher task");
        result.published += confirmed;
        result.problems.extend(problem);
    }
    result.expected = result.published * load.subscribers as u64;

    // Wait until every subscriber has everything, or nothing has arrived for `QUIET`, or
    // the run's deadline passes. The CPU window ends when the publishers are done or at
    // the last arrival after that, whichever is later: the quiet wait after a loss is
    // idle time that would only dilute the figures.
    let arrived = || {
        progress
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let pid = std::process::id();
    let snapshot = || {
        (
            start.elapsed(),
            support::cpu_time(pid),
            support::cpu_time(broker.pid),
        )
    };
    let mut end = snapshot();
    let mut last_count = arrived();
    let mut last_change = tokio::time::Instant::now();
    loop {
        let count = arrived();
        if count >= result.expected {
            end = snapshot();
            break;
        }
        let now = tokio::time::Instant::now();
        if count != last_count {
            last_count = count;
            last_change = now;
            end = snapshot();
        } else if now - last_change >= QUIET {
            break;
        }
        if now >= deadline {
            result.problems.push(format!(
                "deadline of {limit:?} passed with {count} of {} deliveries",
                result.expected
            ));
            end = snapshot();
            break;
        }
        tokio::time::sleep(support::POLL_INTERVAL).await;
    }
    result.wall = end.0;
    result.generator_cpu = end.1.saturating_sub(generator_before);
    result.broker_cpu = end.2.saturating_sub(broker_before);

    let _ = stop_tx.send(true);
    for task in subscribers {
        match tokio::time::timeout(STEP_TIMEOUT, task).await {
            Ok(Ok(tally)) => {
                result.received += tally.received;
                result.duplicates += tally.duplicates;
                let last = Duration::from_nanos(tally.last.saturating_sub(start_ns));
                result.elapsed = result.elapsed.max(last);
                result.latencies.extend(tally.latencies);
                result.problems.extend(tally.problem);
                if tally.foreign > 0 {
                    result.problems.push(format!(
                        "a subscriber got {} messages that no publisher of this run sent",
                        tally.foreign
                    ));
                }
            }
            _ => result
                .problems
                .push("a subscriber task did not stop".to_string()),
        }
    }
    handles.extend(publishers);
    disconnect_all(handles).await;
    for watcher in watchers {
        if let Ok(Ok(Some(why))) = tokio::time::timeout(STEP_TIMEOUT, watcher).await {
            result.problems.push(why);
        }
    }
    if let Some(why) = broker.exited() {
        result.problems.push(why);
    }
    result
}

/// Opens one idle client with raw packets: CONNECT and SUBSCRIBE in one write, then reads
/// until CONNACK and SUBACK have both come back.
async fn idle_client(port: u16, i: usize) -> Result<tokio::net::TcpStream, String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let protocol = ProtocolVersion::V5;
    let connect = Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: MqttString::try_from(format!("idle-{i}")).unwrap(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    };
    let subscribe = Subscribe {
        packet_id: PacketId::MIN,
        subscriptions: vec![Subscription {
            filter: TopicFilter::try_from(format!("idle/{i}").as_str()).unwrap(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..SubscriptionOptions::default()
            },
        }],
        properties: SubscribeProperties::default(),
    };
    let mut out = BytesMut::new();
    codec::encode(&Packet::Connect(Box::new(connect)), protocol, &mut out).unwrap();
    codec::encode(&Packet::Subscribe(subscribe), protocol, &mut out).unwrap();
    stream
        .write_all(&out)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = BytesMut::with_capacity(256);
    let (mut connack, mut suback) = (false, false);
    while !(connack && suback) {
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the broker closed the connection".to_string());
        }
        while let Some(packet) =
            codec::decode(&mut buf, 1 << 20, protocol).map_err(|e| e.to_string())?
        {
            match packet {
                Packet::ConnAck(ack) if ack.reason_code.is_success() => connack = true,
                Packet::SubAck(ack) if ack.reason_codes.iter().all(|c| c.is_success()) => {
                    suback = true;
                }
                other => return Err(format!("unexpected answer: {other:?}")),
            }
        }
    }
    Ok(stream)
}

/// Opens `count` idle clients, 50 at a time: a thousand SYNs at once can overflow a
/// listen backlog, and a dropped SYN costs a one-second retransmit that measures only the
/// kernel.
async fn open_idle(port: u16, count: usize) -> Result<Vec<tokio::net::TcpStream>, String> {
    let mut streams = Vec::with_capacity(count);
    for first in (0..count).step_by(50) {
        let mut set = tokio::task::JoinSet::new();
        for i in first..(first + 50).min(count) {
            set.spawn(async move {
                tokio::time::timeout(STEP_TIMEOUT, idle_client(port, i))
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!("no CONNACK and SUBACK within {STEP_TIMEOUT:?}"))
                    })
                    .map_err(|why| format!("idle client {i}: {why}"))
            });
        }
        while let Some(opened) = set.join_next().await {
            streams.push(opened.map_err(|e| e.to_string())??);
        }
    }
    Ok(streams)
}

/// The soft limit on open files; each idle client costs one here and one in the broker.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Memory figures of one broker, in KiB.
#[derive(Default, Clone, Copy)]
struct Memory {
    rest: u64,
    idle: Option<u64>,
    peak: u64,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

struct Settings {
    /// Deliveries to subscribers per run (publishers times messages times subscribers).
    deliveries: u64,
    runs: usize,
    latency_seconds: f64,
    idle_clients: usize,
    limit: Duration,
}

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    publishers: usize,
    subscribers: usize,
}

const SCENARIOS: [Scenario; 2] = [
    Scenario {
        name: "fan-in 10->1",
        publishers: 10,
        subscribers: 1,
    },
    Scenario {
        name: "fan-out 1->10",
        publishers: 1,
        subscribers: 10,
    },
];

/// Every run of one scenario at one QoS, per broker (index: `Which as usize`).
struct Measured {
    label: String,
    throughput: [Vec<RunResult>; 2],
    latency: [Vec<RunResult>; 2],
    latency_rate: Option<f64>,
}

fn row(label: &str, ours: &str, theirs: &str, ratio: &str) {
    println!("{label:<60}{ours:>14}{theirs:>14}{ratio:>16}");
}

fn ratio(ours: f64, theirs: f64) -> String {
    if ours.is_finite() && theirs.is_finite() && theirs > 0.0 && ours > 0.0 {
        format!("{:.2}x", ours / theirs)
    } else {
        "-".to_string()
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if support::mosquitto_bin().is_none() {
        if support::peers_required() {
            panic!("mosquitto is needed: run tests/run.sh");
        }
        println!("broker benchmark skipped: mosquitto is not installed");
        return;
    }
    let settings = if full {
        Settings {
            deliveries: 200_000,
            runs: 3,
            latency_seconds: 3.0,
            idle_clients: 1000,
            limit: Duration::from_secs(120),
        }
    } else {
        Settings {
            deliveries: 300,
            runs: 1,
            latency_seconds: 0.0,
            idle_clients: 50,
            limit: Duration::from_secs(30),
        }
    };
    let mut notes = Vec::new();
    let mut idle_clients = settings.idle_clients;
    if let Some(limit) = open_files_limit()
        && limit < idle_clients + 200
    {
        // Raising the limit needs setrlimit, which needs unsafe (or a crate for it).
        idle_clients = limit.saturating_sub(200);
        notes.push(format!(
            "open-file limit {limit}: measured {idle_clients} idle clients instead of {}",
            settings.idle_clients
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the load generator");
    let brokers = [
        BrokerUnderTest::start(Which::Fieldgate),
        BrokerUnderTest::start(Which::Mosquitto),
    ];
    let mut problems: Vec<String> = Vec::new();

    // Memory first, on fresh brokers: at rest, then with the idle clients.
    let mut memory = [Memory::default(); 2];
    for (broker, memory) in brokers.iter().zip(&mut memory) {
        memory.rest = broker.status_kib("VmRSS:").unwrap_or(0);
        match runtime.block_on(open_idle(broker.port, idle_clients)) {
            Ok(streams) => {
                memory.idle = broker.status_kib("VmRSS:");
                drop(streams);
            }
            Err(why) => problems.push(format!("{}: idle clients: {why}", broker.which.name())),
        }
    }

    let mut measured = Vec::new();
    let mut run_id = 0;
    for scenario in SCENARIOS {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let label = format!("{} QoS {}", scenario.name, qos as u8);
            let per_publisher =
                settings.deliveries / (scenario.publishers * scenario.subscribers) as u64;
            let mut load = Load {
                publishers: scenario.publishers,
                subscribers: scenario.subscribers,
                qos,
                per_publisher,
                pace: None,
            };
            let mut entry = Measured {
                label: label.clone(),
                throughput: [Vec::new(), Vec::new()],
                latency: [Vec::new(), Vec::new()],
                latency_rate: None,
            };
            // Alternate the brokers run by run, and which goes first.
            let order = |run: usize| {
                if run.is_multiple_of(2) {
                    [0, 1]
                } else {
                    [1, 0]
                }
            };
            for run in 0..settings.runs {
                for b in order(run) {
                    run_id += 1;
                    let id = format!("r{run_id}");
                    let result = runtime.block_on(run_load(&brokers[b], load, &id, settings.limit));
                    entry.throughput[b].push(result);
                }
            }
            // The paced runs: the same offered load for both, a share of the lower peak.
            let peaks: Vec<f64> = entry
                .throughput
                .iter()
                .map(|runs| runs.iter().map(RunResult::rate).fold(0.0, f64::max))
                .filter(|&p| p > 0.0)
                .collect();
            if let Some(peak) = peaks.iter().copied().reduce(f64::min) {
                let rate = LATENCY_LOAD * peak;
                entry.latency_rate = Some(rate);
                // Deliveries per second = publish rate times subscribers.
                let per_pub_rate = rate / (scenario.subscribers * scenario.publishers) as f64;
                load.pace = Some(per_pub_rate);
                if full {
                    load.per_publisher = (per_pub_rate * settings.latency_seconds).ceil() as u64;
                }
                for run in 0..settings.runs {
                    for b in order(run) {
                        run_id += 1;
                        let id = format!("r{run_id}");
                        let result =
                            runtime.block_on(run_load(&brokers[b], load, &id, settings.limit));
                        entry.latency[b].push(result);
                    }
                }
            }
            for (b, broker) in brokers.iter().enumerate() {
                for (kind, runs) in [
                    ("throughput", &entry.throughput[b]),
                    ("latency", &entry.latency[b]),
                ] {
                    for r in runs {
                        for p in &r.problems {
                            problems
                                .push(format!("{} {label} {kind} run: {p}", broker.which.name()));
                        }
                        if r.lost() > 0 || r.duplicates > 0 {
                            problems.push(format!(
                                "{} {label} {kind} run: {} of {} deliveries lost, {} duplicates",
                                broker.which.name(),
                                r.lost(),
                                r.expected,
                                r.duplicates
                            ));
                        }
                    }
                }
            }
            measured.push(entry);
        }
    }
    for (broker, memory) in brokers.iter().zip(&mut memory) {
        memory.peak = broker.status_kib("VmHWM:").unwrap_or(0);
    }

    print_table(&settings, idle_clients, &measured, &memory);
    for note in &notes {
        println!("note: {note}");
    }
    if problems.is_empty() {
        println!("no problems: every message published reached every subscriber, once");
    } else {
        println!("problems ({}):", problems.len());
        for p in &problems {
            println!("  {p}");
        }
    }

    if !full {
        // The short pass proves the harness and our broker's delivery: nothing may be lost
        // through it, no run may fail.
        let ours: Vec<&String> = problems
            .iter()
            .filter(|p| p.starts_with("fieldgate"))
            .collect();
        assert!(
            ours.is_empty(),
            "our broker failed the short pass: {ours:#?}"
        );
        assert!(
            memory[0].idle.is_some(),
            "our broker did not take {idle_clients} idle clients"
        );
        for entry in &measured {
            for r in &entry.throughput[0] {
                assert!(
                    r.expected > 0 && r.received == r.expected,
                    "{}: lost messages",
                    entry.label
                );
            }
        }
    }
}

fn print_table(
    settings: &Settings,
    idle_clients: usize,
    measured: &[Measured],
    memory: &[Memory; 2],
) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "{} deliveries per throughput run, {} runs each, brokers alternated; ratio = fieldgate / \
         mosquitto (msg/s: higher is better; latency and memory: lower is better)",
        settings.deliveries, settings.runs
    );
    row(
        &format!("broker benchmark ({cores} cores, {PAYLOAD_LEN}-byte payloads, window {WINDOW})"),
        "fieldgate",
        "mosquitto",
        "ratio",
    );
    let indent = " ".repeat(21);
    for entry in measured {
        let best = |b: usize| {
            entry.throughput[b]
                .iter()
                .max_by(|x, y| x.rate().total_cmp(&y.rate()))
        };
        let rate = |b: usize| best(b).map_or(0.0, RunResult::rate);
        row(
            &format!(
                "{:<21}msg/s delivered (best of {})",
                entry.label, settings.runs
            ),
            &format!("{:.0}", rate(0)),
            &format!("{:.0}", rate(1)),
            &ratio(rate(0), rate(1)),
        );
        let worst_loss = |b: usize| {
            entry.throughput[b]
                .iter()
                .chain(&entry.latency[b])
                .map(|r| (r.lost(), r.expected, r.duplicates, !r.problems.is_empty()))
                .max()
                .map_or("no run".to_string(), |(lost, expected, dups, failed)| {
                    let mut text = format!("{lost}/{expected}");
                    if dups > 0 {
                        text.push_str(&format!(" +{dups}d"));
                    }
                    if failed {
                        text.push('!');
                    }
                    text
                })
        };
        row(
            &format!("{indent}lost/expected, worst run (d: dup, !: failed)"),
            &worst_loss(0),
            &worst_loss(1),
            "",
        );
        let cpu = |b: usize| {
            best(b).map_or("-".to_string(), |r| {
                format!(
                    "{:.0}% / {:.0}%",
                    r.cpu_percent(r.generator_cpu),
                    r.cpu_percent(r.broker_cpu)
                )
            })
        };
        row(
            &format!("{indent}CPU of a core: generator / broker (best run)"),
            &cpu(0),
            &cpu(1),
            "",
        );
        let latency = |b: usize| {
            let mut all: Vec<u64> = entry.latency[b]
                .iter()
                .flat_map(|r| r.latencies.iter().copied())
                .collect();
            all.sort_unstable();
            (percentile(&all, 0.50) / 1e6, percentile(&all, 0.99) / 1e6)
        };
        let ((o50, o99), (t50, t99)) = (latency(0), latency(1));
        let show = |p50: f64, p99: f64| {
            if p50.is_nan() {
                "-".to_string()
            } else {
                format!("{p50:.2} / {p99:.2}")
            }
        };
        let rate_text = entry
            .latency_rate
            .map_or("not run".to_string(), |r| format!("at {r:.0} msg/s"));
        row(
            &format!("{indent}p50 / p99 latency (ms) {rate_text}"),
            &show(o50, o99),
            &show(t50, t99),
            &format!("{} / {}", ratio(o50, t50), ratio(o99, t99)),
        );
    }
    let kib = |v: Option<u64>, rest: u64| {
        v.map(|v| v.saturating_sub(rest) as f64 / idle_clients.max(1) as f64)
    };
    let per_conn = [
        kib(memory[0].idle, memory[0].rest),
        kib(memory[1].idle, memory[1].rest),
    ];
    let show =
        |v: Option<f64>, digits: usize| v.map_or("failed".to_string(), |v| format!("{v:.digits$}"));
    row(
        &format!("idle RSS per connection (KiB), {idle_clients} clients"),
        &show(per_conn[0], 2),
        &show(per_conn[1], 2),
        &ratio(
            per_conn[0].unwrap_or(f64::NAN),
            per_conn[1].unwrap_or(f64::NAN),
        ),
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    let idle = [memory[0].idle.map(mib), memory[1].idle.map(mib)];
    row(
        &format!("RSS with {idle_clients} idle clients (MiB)"),
        &show(idle[0], 2),
        &show(idle[1], 2),
        &ratio(idle[0].unwrap_or(f64::NAN), idle[1].unwrap_or(f64::NAN)),
    );
    let (rest0, rest1) = (mib(memory[0].rest), mib(memory[1].rest));
    row(
        "RSS at rest (MiB)",
        &format!("{rest0:.2}"),
        &format!("{rest1:.2}"),
        &ratio(rest0, rest1),
    );
    let (peak0, peak1) = (mib(memory[0].peak), mib(memory[1].peak));
    row(
        "peak RSS over the whole run, VmHWM (MiB)",
        &format!("{peak0:.2}"),
        &format!("{peak1:.2}"),
        &ratio(peak0, peak1),
    );
}
