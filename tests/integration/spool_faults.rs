//! The upstream path's promises under faults, with real processes: `fieldgate run`
//! (started as a process, killed with SIGKILL), Debian's mosquitto upstream (restarted
//! with its own persistence), the fault-injecting proxy on the uplink. A LAN publisher
//! (our client) sends numbered messages at a known rate into a `forward` rule on the
//! gateway's broker and records which the broker acknowledged; an upstream subscriber
//! (our client, persistent session, QoS 2) records what arrives.
//!
//! Each scenario checks: no acknowledged message lost where the mode promises it
//! (`durability: disk`), loss within the documented window otherwise (`offline`: what
//! memory held), duplicates only for QoS 1 (a QoS 2 scenario must have none), the order
//! of first arrivals kept, and drops equal to the spool's counters
//! (`<prefix>/$SYS/spool`). Each prints one line: scenario, sent, acknowledged,
//! received, lost, duplicated, wall time (`cargo test spool_faults -- --nocapture`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fieldgate::mqtt::client::{self, Backoff, ClientEvent, ClientOptions, Handle};
use fieldgate::mqtt::packet::{
    ProtocolVersion, Publish, PublishProperties, QoS, Subscription, SubscriptionOptions,
};
use fieldgate::mqtt::session::client::ClientConfig;
use fieldgate::mqtt::string::MqttString;
use fieldgate::mqtt::topic::{TopicFilter, TopicName};

use crate::gateway_run::start_with;
use crate::support::proxy::Proxy;
use crate::support::{KillOnDrop, Mosquitto, TempDir, free_port, require_peer, wait_until_async};

/// mosquitto must not drop what queues for the subscriber during a replay burst (its
/// default is 1,000 per client): the test counts the gateway's losses, not its.
const MOSQUITTO_EXTRA: &str = "max_queued_messages 0";

/// The LAN publisher's pace: `BURST` messages every `TICK` (1,000 messages/s).
const BURST: u64 = 10;
const TICK: Duration = Duration::from_millis(10);

/// How long anything may take to arrive once the faults are over.
const SETTLE: Duration = Duration::from_secs(20);

fn client_options(port: u16, id: &str, persistent: bool) -> ClientOptions {
    let mut session = ClientConfig::new(ProtocolVersion::V5, MqttString::try_from(id).unwrap());
    if persistent {
        // Clean Start off from the first connection: mosquitto (2.0) does not save a
        // session that began with Clean Start to its database, however long its expiry.
        session.clean_start = false;
        session.session_expiry_interval = 3600;
    }
    let mut options = ClientOptions::new("127.0.0.1", port, session);
    // Back soon after a restart: the scenarios' outages are short.
    options.reconnect = Some(Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(300),
    });
    options
}

/// A unique client id: tests run in parallel against brokers of their own, but a name
/// per test reads better in mosquitto's log.
fn id(scenario: &str, role: &str) -> String {
    format!("{scenario}-{role}-{}", std::process::id())
}

/// The upstream subscriber: every message on its filter, in arrival order.
struct Counter {
    got: Arc<Mutex<Vec<(String, u64)>>>,
    _handle: Handle,
}

impl Counter {
    async fn start(port: u16, filter: &str, scenario: &str) -> Counter {
        let (handle, mut events) =
            client::spawn(client_options(port, &id(scenario, "counter"), true)).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&got);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let ClientEvent::Message(p) = event {
                    let n = std::str::from_utf8(&p.payload)
                        .ok()
                        .and_then(|t| t.parse::<u64>().ok())
                        .expect("a numbered payload");
                    sink.lock().unwrap().push((p.topic.as_str().to_string(), n));
                }
            }
        });
        let codes = handle
            .subscribe(vec![Subscription {
                filter: TopicFilter::try_from(filter).unwrap(),
                options: SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    ..SubscriptionOptions::default()
                },
            }])
            .await
            .expect("SUBACK from mosquitto");
        assert!(codes.iter().all(|c| c.is_success()), "{codes:?}");
        Counter {
            got,
            _handle: handle,
        }
    }

    /// The numbers that arrived on `topic`, in arrival order.
    fn numbers(&self, topic: &str) -> Vec<u64> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, n)| *n)
            .collect()
    }

    /// Waits until at least `n` messages arrived on `topic` (traffic flows).
    async fn wait_for(&self, topic: &str, n: usize, what: &str) {
        wait_until_async(SETTLE, what, || {
            let got = self.numbers(topic).len();
            async move { got >= n }
        })
        .await;
    }

    fn distinct(&self, topic: &str) -> BTreeSet<u64> {
        self.numbers(topic).into_iter().collect()
    }
}

/// The LAN publisher: numbered messages on `topic` at the set pace, and the numbers the
/// gateway's broker acknowledged (for QoS 0: handed to the connection).
struct Lan {
    sent: Arc<AtomicU64>,
    /// Times the gateway's broker dropped the publisher's connection.
    disconnects: Arc<AtomicU64>,
    acked: Arc<Mutex<BTreeSet<u64>>>,
    task: tokio::task::JoinHandle<()>,
    _handle: Handle,
}

impl Lan {
    /// Connects, then publishes on a task of its own. (Connected first: a QoS 0 message
    /// before CONNACK is refused, not queued.)
    async fn start(port: u16, topic: &str, qos: QoS, count: u64, client: &str) -> Lan {
        let (handle, mut events) = client::spawn(client_options(port, client, false)).unwrap();
        loop {
            match tokio::time::timeout(SETTLE, events.recv()).await {
                Ok(Some(ClientEvent::Connected { .. })) => break,
                Ok(Some(_)) => {}
                other => panic!("the LAN publisher did not connect: {other:?}"),
            }
        }
        // Read so that the client never waits on a full event channel.
        let disconnects = Arc::new(AtomicU64::new(0));
        let dropped = Arc::clone(&disconnects);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let ClientEvent::Disconnected(_) = event {
                    dropped.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        let sent = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let (h, s, a) = (handle.clone(), Arc::clone(&sent), Arc::clone(&acked));
        let topic = TopicName::try_from(topic).unwrap();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(TICK);
            for n in 0..count {
                if n % BURST == 0 {
                    ticks.tick().await;
                }
                let message = Publish {
                    dup: false,
                    qos,
                    retain: false,
                    topic: topic.clone(),
                    packet_id: None,
                    payload: Bytes::from(n.to_string()),
                    properties: PublishProperties::default(),
                };
                let Ok(delivery) = h.enqueue(message).await else {
                    return;
                };
                s.fetch_add(1, Ordering::SeqCst);
                let acked = Arc::clone(&a);
                tokio::spawn(async move {
                    if delivery.await.is_ok() {
                        acked.lock().unwrap().insert(n);
                    }
                });
            }
        });
        Lan {
            sent,
            disconnects,
            acked,
            task,
            _handle: handle,
        }
    }

    fn acked(&self) -> BTreeSet<u64> {
        self.acked.lock().unwrap().clone()
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until everything is sent and acknowledged.
    async fn finish(&mut self, count: u64) {
        (&mut self.task).await.unwrap();
        let sent = Arc::clone(&self.sent);
        assert_eq!(sent.load(Ordering::SeqCst), count);
        wait_until_async(SETTLE, "every LAN message acknowledged", || {
            let n = self.acked_count() as u64;
            async move { n == count }
        })
        .await;
    }
}

/// The latest message on one topic of the gateway's broker (it follows the broker
/// across a restart of the gateway).
struct Watch {
    latest: Arc<Mutex<Option<Bytes>>>,
    _handle: Handle,
}

impl Watch {
    async fn start(port: u16, topic: &str, client: &str) -> Watch {
        let (handle, mut events) = client::spawn(client_options(port, client, false)).unwrap();
        let latest = Arc::new(Mutex::new(None));
        let sink = Arc::clone(&latest);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let ClientEvent::Message(p) = event {
                    *sink.lock().unwrap() = Some(p.payload);
                }
            }
        });
        let codes = handle
            .subscribe(vec![Subscription {
                filter: TopicFilter::try_from(topic).unwrap(),
                options: SubscriptionOptions::default(),
            }])
            .await
            .expect("SUBACK");
        assert!(codes.iter().all(|c| c.is_success()), "{codes:?}");
        Watch {
            latest,
            _handle: handle,
        }
    }

    /// The gateway's `<prefix>/$SYS/spool` status.
    async fn status(port: u16, scenario: &str) -> Watch {
        let topic = format!("fieldgate/{scenario}/$SYS/spool");
        Watch::start(port, &topic, &id(scenario, "status")).await
    }

    fn json(&self) -> serde_json::Value {
        self.latest
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|p| serde_json::from_slice(p).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Waits until the JSON payload satisfies `cond`; returns it.
    async fn wait_for(
        &self,
        what: &str,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_until_async(SETTLE, what, || {
            let ok = cond(&self.json());
            async move { ok }
        })
        .await;
        self.json()
    }
}

/// Starts `fieldgate run` on `config` in `dir` and waits until its client on its own
/// broker has subscribed to the forwarded topics (the `probe` device says `online`
/// only after that), so that nothing published from now on misses the rules.
async fn start_gateway(dir: &TempDir, config: &str, local: u16, scenario: &str) -> KillOnDrop {
    let (gateway, _) = start_with(dir, config);
    let topic = format!("fieldgate/{scenario}/probe/availability");
    let probe = Watch::start(local, &topic, &id(scenario, "probe")).await;
    wait_until_async(SETTLE, "the gateway's subscriptions", || {
        let online = probe.latest.lock().unwrap().as_deref() == Some(b"online".as_slice());
        async move { online }
    })
    .await;
    gateway
}

fn count(status: &serde_json::Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(status, |v, key| &v[*key])
        .as_u64()
        .unwrap_or(0)
}

/// A gateway with no devices: its broker on `local`, upstream at `upstream`, the
/// `upstream.spool` lines given, `in/#` forwarded up as `up/in/...` at `qos` and
/// `q0/#` at QoS 0, and a `probe` device without points (see [`start_gateway`]). Its
/// broker persists with `fsync: always`: a message the LAN publisher saw acknowledged
/// is in the broker's journal or in the spool.
fn gateway_config(id: &str, local: u16, upstream: u16, spool: &str, qos: u8) -> String {
    format!(
        "gateway:\n  id: {id}\nbroker:\n  listeners:\n    - bind: 127.0.0.1:{local}\n  \
         persistence: {{fsync: always}}\nupstream:\n  url: mqtt://127.0.0.1:{upstream}\n  \
         spool:\n{spool}\nforward:\n  - from: local\n    to: upstream\n    filter: in/#\n    prefix: up/\n    \
         qos: {qos}\n  - from: local\n    filter: q0/#\n    prefix: up/\n    qos: 0\n\
         devices:\n  - id: probe\n    source: sim\n    poll: 1h\n    points: []\n"
    )
}

/// What the subscriber got against what the broker acknowledged.
#[derive(Debug)]
struct Tally {
    sent: u64,
    acked: usize,
    received: usize,
    /// Acknowledged and never received.
    lost: Vec<u64>,
    duplicated: usize,
    /// A number that arrived (first) after a larger one had.
    out_of_order: Option<(u64, u64)>,
}

fn tally(sent: u64, acked: &BTreeSet<u64>, got: &[u64]) -> Tally {
    let distinct: BTreeSet<u64> = got.iter().copied().collect();
    let mut seen = BTreeSet::new();
    let mut last_new: Option<u64> = None;
    let mut out_of_order = None;
    for &n in got {
        if seen.insert(n) {
            if let Some(last) = last_new
                && n < last
                && out_of_order.is_none()
            {
                out_of_order = Some((last, n));
            }
            last_new = Some(n);
        }
    }
    Tally {
        sent,
        acked: acked.len(),
        received: distinct.len(),
        lost: acked.difference(&distinct).copied().collect(),
        duplicated: got.len() - distinct.len(),
        out_of_order,
    }
}

fn report(scenario: &str, t: &Tally, started: Instant) {
    println!(
        "spool_faults | {scenario:<32} | sent {:>5} | acked {:>5} | received {:>5} | lost {:>4} | duplicated {:>4} | {:>4.1} s",
        t.sent,
        t.acked,
        t.received,
        t.lost.len(),
        t.duplicated,
        started.elapsed().as_secs_f64()
    );
}

fn kill(gateway: &mut KillOnDrop) {
    let _ = gateway.0.kill();
    let _ = gateway.0.wait();
}

/// Waits until `counter` has every acknowledged number on `topic`; fails naming the
/// missing ones.
async fn all_arrived(counter: &Counter, topic: &str, acked: &BTreeSet<u64>) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let got = counter.distinct(topic);
        if got.is_superset(acked) {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let missing: Vec<u64> = acked.difference(&got).copied().collect();
            panic!(
                "after {SETTLE:?}, {} acknowledged messages on {topic} have not arrived: {:?}...",
                missing.len(),
                &missing[..missing.len().min(20)]
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uplink_cut_and_restored_loses_nothing_and_qos2_arrives_once_in_order() {
    if !require_peer("mosquitto") {
        return;
    }
    let started = Instant::now();
    let mosquitto = Mosquitto::start_with_config(MOSQUITTO_EXTRA);
    let proxy = Proxy::start(mosquitto.addr());
    let counter = Counter::start(mosquitto.port(), "up/#", "cut").await;
    let dir = TempDir::new("spool-cut");
    let local = free_port();
    let spool = "    durability: disk\n    fsync: interval\n    fsync_interval: 200ms";
    let config = gateway_config("cut", local, proxy.port(), spool, 2);
    let _gateway = start_gateway(&dir, &config, local, "cut").await;
    let total = 3000;
    let mut lan = Lan::start(local, "in/cut", QoS::ExactlyOnce, total, &id("cut", "lan")).await;
    counter
        .wait_for("up/in/cut", 500, "traffic before the cut")
        .await;
    // The outage: connections cut, new ones refused, for two seconds.
    proxy.refuse();
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    lan.finish(total).await;
    let acked = lan.acked();
    all_arrived(&counter, "up/in/cut", &acked).await;
    let t = tally(total, &acked, &counter.numbers("up/in/cut"));
    report("uplink cut 2 s (QoS 2, disk)", &t, started);
    assert!(t.lost.is_empty(), "{t:?}");
    assert_eq!(t.duplicated, 0, "QoS 2 through a kept session: {t:?}");
    assert_eq!(t.out_of_order, None, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_stopped_and_restarted_with_its_persistence_loses_nothing() {
    if !require_peer("mosquitto") {
        return;
    }
    let started = Instant::now();
    let mut mosquitto = Mosquitto::start_persistent(MOSQUITTO_EXTRA);
    let counter = Counter::start(mosquitto.port(), "up/#", "restart").await;
    let dir = TempDir::new("spool-restart");
    let local = free_port();
    let spool = "    durability: disk\n    fsync: always";
    let config = gateway_config("restart", local, mosquitto.port(), spool, 1);
    let _gateway = start_gateway(&dir, &config, local, "restart").await;
    let total = 3000;
    let mut lan = Lan::start(
        local,
        "in/restart",
        QoS::AtLeastOnce,
        total,
        &id("restart", "lan"),
    )
    .await;
    counter
        .wait_for("up/in/restart", 500, "traffic before the restart")
        .await;
    mosquitto.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    mosquitto.start_again();
    lan.finish(total).await;
    let acked = lan.acked();
    all_arrived(&counter, "up/in/restart", &acked).await;
    let t = tally(total, &acked, &counter.numbers("up/in/restart"));
    report("mosquitto restart (QoS 1, disk)", &t, started);
    assert!(t.lost.is_empty(), "{t:?}");
    assert_eq!(t.out_of_order, None, "{t:?}");
    // QoS 1: what was in flight when the broker went may come twice (resent with DUP
    // after the reconnect); never more than the window the pump keeps in flight.
    assert!(t.duplicated <= 256, "{t:?}");
}

/// `kill -9` of the gateway under load and a restart on the same state directory:
/// with `durability` as given, the acknowledged messages not received must fit in
/// `loss_bound` (none for `disk`).
async fn killed_under_load(scenario: &str, label: &str, spool: &str, loss_bound: usize) {
    let started = Instant::now();
    let mosquitto = Mosquitto::start_with_config(MOSQUITTO_EXTRA);
    let counter = Counter::start(mosquitto.port(), "up/#", scenario).await;
    let dir = TempDir::new(scenario);
    let local = free_port();
    let config = gateway_config(scenario, local, mosquitto.port(), spool, 1);
    let mut gateway = start_gateway(&dir, &config, local, scenario).await;
    let total = 3000;
    let topic = format!("up/in/{scenario}");
    let mut lan = Lan::start(
        local,
        &format!("in/{scenario}"),
        QoS::AtLeastOnce,
        total,
        &id(scenario, "lan"),
    )
    .await;
    wait_until_async(SETTLE, "traffic before the kill", || {
        let n = lan.acked_count();
        async move { n >= 1000 }
    })
    .await;
    kill(&mut gateway);
    let (_gateway, _) = start_with(&dir, &config);
    lan.finish(total).await;
    let acked = lan.acked();
    if loss_bound == 0 {
        all_arrived(&counter, &topic, &acked).await;
    } else {
        // Wait for the tail: everything after the restart arrives.
        let last = total - 1;
        wait_until_async(SETTLE, "the last message", || {
            let ok = counter.distinct(&topic).contains(&last);
            async move { ok }
        })
        .await;
    }
    let t = tally(total, &acked, &counter.numbers(&topic));
    report(label, &t, started);
    assert!(
        t.lost.len() <= loss_bound,
        "lost more than {loss_bound}: {t:?}"
    );
    assert_eq!(t.out_of_order, None, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_under_load_with_disk_and_fsync_always_loses_no_acknowledged_message() {
    if !require_peer("mosquitto") {
        return;
    }
    killed_under_load(
        "kill-disk",
        "fieldgate kill -9 (QoS 1, disk+always)",
        "    durability: disk\n    fsync: always",
        0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_under_load_in_offline_mode_loses_at_most_what_memory_held() {
    if !require_peer("mosquitto") {
        return;
    }
    // `memory_bytes: 4KiB` of memory-only records, each at least its 20 bytes of frame
    // and record header plus the topic (`up/in/kill-offline`, 18 bytes).
    let memory_bytes = 4096;
    let bound = memory_bytes / (20 + 18);
    killed_under_load(
        "kill-offline",
        "fieldgate kill -9 (QoS 1, offline)",
        "    durability: offline\n    memory_bytes: 4KiB",
        bound,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_segment_loses_only_its_torn_record_and_says_so() {
    if !require_peer("mosquitto") {
        return;
    }
    let started = Instant::now();
    let mosquitto = Mosquitto::start_with_config(MOSQUITTO_EXTRA);
    let proxy = Proxy::start(mosquitto.addr());
    proxy.refuse();
    let counter = Counter::start(mosquitto.port(), "up/#", "torn").await;
    let dir = TempDir::new("spool-torn");
    let local = free_port();
    let spool = "    durability: disk\n    fsync: always";
    let config = gateway_config("torn", local, proxy.port(), spool, 1);
    let mut gateway = start_gateway(&dir, &config, local, "torn").await;
    let status = Watch::status(local, "torn").await;
    let total = 200;
    let mut lan = Lan::start(
        local,
        "in/torn",
        QoS::AtLeastOnce,
        total,
        &id("torn", "lan"),
    )
    .await;
    lan.finish(total).await;
    status
        .wait_for("every message in the spool", |s| {
            count(s, &["enqueued"]) == total
        })
        .await;
    kill(&mut gateway);
    // Tear the last record: cut 5 bytes off the end of the last segment.
    let spool_dir = dir.path().join("fieldgate-state/spool");
    let mut segments: Vec<_> = std::fs::read_dir(&spool_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    let last = segments.last().expect("a segment");
    let file = std::fs::OpenOptions::new().write(true).open(last).unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len - 5).unwrap();
    drop(file);
    proxy.restore();
    let (_gateway, _) = start_with(&dir, &config);
    let seen = status
        .wait_for("the recovery in the status", |s| {
            count(s, &["recovered", "truncated_bytes"]) > 0 && count(s, &["pending"]) == 0
        })
        .await;
    let acked = lan.acked();
    let expected: BTreeSet<u64> = (0..total - 1).collect();
    all_arrived(&counter, "up/in/torn", &expected).await;
    let t = tally(total, &acked, &counter.numbers("up/in/torn"));
    report("torn last segment (disk+always)", &t, started);
    assert_eq!(t.lost, [total - 1], "only the torn record: {t:?}");
    assert_eq!(count(&seen, &["recovered", "records"]), total - 1, "{seen}");
    assert_eq!(t.duplicated, 0, "{t:?}");
    assert_eq!(t.out_of_order, None, "{t:?}");
}

/// The uplink down from the start, a spool of four 4 KiB segments, 400 QoS 1 messages
/// and 50 QoS 0 ones; then the uplink back. Returns the tally and the final status.
async fn full_spool(scenario: &str, on_full: &str) -> (Tally, serde_json::Value, Counter) {
    let mosquitto = Mosquitto::start_with_config(MOSQUITTO_EXTRA);
    let proxy = Proxy::start(mosquitto.addr());
    proxy.refuse();
    let counter = Counter::start(mosquitto.port(), "up/#", scenario).await;
    let dir = TempDir::new(scenario);
    let local = free_port();
    let spool = format!(
        "    durability: disk\n    fsync: never\n    segment_bytes: 4KiB\n    max_bytes: 16KiB\n    on_full: {on_full}"
    );
    let config = gateway_config(scenario, local, proxy.port(), &spool, 1);
    let _gateway = start_gateway(&dir, &config, local, scenario).await;
    let status = Watch::status(local, scenario).await;
    let total = 400;
    let mut lan = Lan::start(
        local,
        &format!("in/{scenario}"),
        QoS::AtLeastOnce,
        total,
        &id(scenario, "lan"),
    )
    .await;
    let mut zero = Lan::start(
        local,
        &format!("q0/{scenario}"),
        QoS::AtMostOnce,
        50,
        &id(scenario, "lan0"),
    )
    .await;
    lan.finish(total).await;
    zero.finish(50).await;
    status
        .wait_for("every message taken, refused or dropped", |s| {
            count(s, &["enqueued"]) + count(s, &["rejected"]) == total
                && count(s, &["dropped", "qos0_offline"]) == 50
        })
        .await;
    proxy.restore();
    let done = status
        .wait_for("the backlog sent", |s| {
            s["connected"] == true && count(s, &["pending"]) == 0
        })
        .await;
    let acked = lan.acked();
    let topic = format!("up/in/{scenario}");
    let expected = count(&done, &["delivered"]) as usize;
    wait_until_async(SETTLE, "the delivered messages at the subscriber", || {
        let n = counter.distinct(&topic).len();
        async move { n >= expected }
    })
    .await;
    let t = tally(total, &acked, &counter.numbers(&topic));
    (t, done, counter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_with_drop_oldest_drops_the_oldest_and_counts_each() {
    if !require_peer("mosquitto") {
        return;
    }
    let started = Instant::now();
    let (t, status, counter) = full_spool("full-drop", "drop_oldest").await;
    report("full spool, drop_oldest", &t, started);
    let dropped = count(&status, &["dropped", "full"]);
    assert!(dropped > 0, "16 KiB cannot hold 400 messages: {status}");
    assert_eq!(t.lost.len() as u64, dropped, "{t:?} {status}");
    // The oldest went: what arrived is the newest, without a hole.
    let first_kept = t.lost.len() as u64;
    assert_eq!(t.lost, (0..first_kept).collect::<Vec<_>>(), "{t:?}");
    assert_eq!(t.out_of_order, None, "{t:?}");
    assert_eq!(t.duplicated, 0, "{t:?}");
    assert!(counter.numbers("up/q0/full-drop").is_empty());
    assert_eq!(count(&status, &["dropped", "qos0_offline"]), 50, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_with_reject_new_refuses_the_newest_and_counts_each() {
    if !require_peer("mosquitto") {
        return;
    }
    let started = Instant::now();
    let (t, status, counter) = full_spool("full-reject", "reject_new").await;
    report("full spool, reject_new", &t, started);
    let rejected = count(&status, &["rejected"]);
    assert!(rejected > 0, "16 KiB cannot hold 400 messages: {status}");
    assert_eq!(t.lost.len() as u64, rejected, "{t:?} {status}");
    // The newest were refused: what arrived is the oldest, without a hole.
    let kept = t.received as u64;
    assert_eq!(t.lost, (kept..400).collect::<Vec<_>>(), "{t:?}");
    assert_eq!(t.out_of_order, None, "{t:?}");
    assert_eq!(t.duplicated, 0, "{t:?}");
    assert!(counter.numbers("up/q0/full-reject").is_empty());
    assert_eq!(count(&status, &["dropped", "qos0_offline"]), 50, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_moves_the_upstream_keeps_the_backlog_and_the_lan_clients() {
    if !require_peer("mosquitto") {
        return;
    }
    let started = Instant::now();
    let mut old = Mosquitto::start_with_config(MOSQUITTO_EXTRA);
    let new = Mosquitto::start_with_config(MOSQUITTO_EXTRA);
    let old_counter = Counter::start(old.port(), "up/#", "reload").await;
    let new_counter = Counter::start(new.port(), "+/in/reload", "reload").await;
    let dir = TempDir::new("spool-reload");
    let local = free_port();
    let spool = "    durability: disk\n    fsync: always";
    let config = gateway_config("reload", local, old.port(), spool, 1);
    let gateway = start_gateway(&dir, &config, local, "reload").await;
    let status = Watch::status(local, "reload").await;
    let total = 3000;
    let mut lan = Lan::start(
        local,
        "in/reload",
        QoS::AtLeastOnce,
        total,
        &id("reload", "lan"),
    )
    .await;
    old_counter
        .wait_for("up/in/reload", 500, "traffic before the outage")
        .await;
    // The old upstream goes away and a backlog builds up in the spool ...
    old.stop();
    status
        .wait_for("a backlog in the spool", |s| count(s, &["pending"]) >= 300)
        .await;
    // ... then the file names another upstream and another prefix for the rule.
    let moved = gateway_config("reload", local, new.port(), spool, 1).replacen(
        "prefix: up/\n    qos: 1",
        "prefix: moved/\n    qos: 1",
        1,
    );
    assert_ne!(moved, config);
    std::fs::write(dir.path().join("fieldgate.yaml"), moved).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &gateway.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    lan.finish(total).await;
    let acked = lan.acked();
    // Every acknowledged number reached one of the upstreams under one of the names.
    let arrived = |counter: &Counter, topic: &str| counter.numbers(topic);
    let mut got = arrived(&old_counter, "up/in/reload");
    wait_until_async(SETTLE, "every acknowledged message upstream", || {
        let mut all: BTreeSet<u64> = got.iter().copied().collect();
        all.extend(arrived(&new_counter, "up/in/reload"));
        all.extend(arrived(&new_counter, "moved/in/reload"));
        let done = all.is_superset(&acked);
        async move { done }
    })
    .await;
    let backlog = arrived(&new_counter, "up/in/reload");
    let renamed = arrived(&new_counter, "moved/in/reload");
    assert!(
        !backlog.is_empty(),
        "the spool's backlog (queued under the old rule) went to the new upstream"
    );
    assert!(
        !renamed.is_empty(),
        "the new rule's prefix applies after the reload"
    );
    // The backlog was queued before anything the new rule renamed: a renamed number at
    // or below the backlog's last is a duplicate (in flight from the gateway's broker
    // when the links restarted, so delivered to the new session again).
    let before: BTreeSet<u64> = got.iter().chain(&backlog).copied().collect();
    let first_new = renamed.iter().filter(|n| !before.contains(n)).min();
    assert!(
        backlog.iter().max() < first_new,
        "backlog up to {:?}, but {first_new:?} renamed first",
        backlog.iter().max()
    );
    got.extend(backlog);
    got.extend(renamed);
    let t = tally(total, &acked, &got);
    report("reload to another upstream (QoS 1)", &t, started);
    assert!(t.lost.is_empty(), "{t:?}");
    assert_eq!(t.out_of_order, None, "{t:?}");
    // QoS 1: what was in flight when the links restarted may come twice.
    assert!(t.duplicated <= 256, "{t:?}");
    assert_eq!(
        lan.disconnects.load(Ordering::SeqCst),
        0,
        "the reload dropped a LAN client of the gateway's broker"
    );
}
