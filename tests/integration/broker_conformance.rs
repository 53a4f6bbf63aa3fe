//! fieldgate's broker against real clients, for what both MQTT versions share: the QoS
//! matrix with mosquitto_pub/mosquitto_sub and our own `fieldgate pub`/`sub`, abusive and
//! malformed input from raw sockets (one bad client never hurts the others), keep-alive,
//! takeover, the connection limits, the mailbox bound and `$SYS`.
//!
//! It also holds what `broker_v311` and `broker_v5` share: `Raw`, a blocking client that
//! speaks packets through our codec but sends exactly what a test tells it to (nothing
//! automatic: no acknowledgements, no pings), and `Paho`, which runs a paho-mqtt script
//! that prints `key=value` observations for the test to assert on.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fieldgate::mqtt::broker::BrokerConfig;
use fieldgate::mqtt::broker::mailbox::MailboxLimits;
use fieldgate::mqtt::codec;
use fieldgate::mqtt::packet::{
    ConnAck, Connect, ConnectProperties, Disconnect, Packet, PacketId, ProtocolVersion,
    PubResponse, Publish, PublishProperties, QoS, ReasonCode, Subscribe, SubscribeProperties,
    Subscription, SubscriptionOptions, Will, WillProperties,
};
use fieldgate::mqtt::string::MqttString;
use fieldgate::mqtt::topic::{TopicFilter, TopicName};

use crate::support::{self, PEER_TIMEOUT, broker::TestBroker, wait_until};

/// Longest wait for something that should happen promptly.
pub const DEADLINE: Duration = Duration::from_secs(10);

// ---- Raw: a client that does only what it is told -------------------------------------

/// What a raw client heard within a wait.
#[derive(Debug)]
pub enum Heard {
    /// Boxed: a packet is large next to the other answers.
    Packet(Box<Packet>),
    /// The broker closed the connection.
    Closed,
    /// Nothing within the wait.
    Silent,
}

pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    pub protocol: ProtocolVersion,
}

impl Raw {
    /// A TCP connection to the broker; nothing sent yet.
    pub fn open(port: u16, protocol: ProtocolVersion) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: BytesMut::new(),
            protocol,
        }
    }

    /// Opens a connection, sends `connect` and returns the CONNACK.
    pub fn connect(port: u16, connect: Connect) -> (Raw, ConnAck) {
        let mut raw = Raw::open(port, connect.protocol);
        raw.send(Packet::Connect(Box::new(connect)));
        match raw.expect() {
            Packet::ConnAck(connack) => (raw, connack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// `connect` for a client that must be accepted.
    pub fn connected(port: u16, connect: Connect) -> Raw {
        let (raw, connack) = Raw::connect(port, connect);
        assert_eq!(connack.reason_code, ReasonCode::SUCCESS, "{connack:?}");
        raw
    }

    pub fn send(&mut self, packet: Packet) {
        let mut buf = BytesMut::new();
        codec::encode(&packet, self.protocol, &mut buf).unwrap();
        self.send_bytes(&buf);
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        // The broker may already have closed on us; a test then sees `Closed`.
        let _ = self.stream.write_all(bytes);
    }

    /// The next packet, the close, or silence after `within`.
    pub fn hear(&mut self, within: Duration) -> Heard {
        let end = Instant::now() + within;
        loop {
            match codec::decode(&mut self.buf, u32::MAX, self.protocol) {
                Ok(Some(packet)) => return Heard::Packet(Box::new(packet)),
                Ok(None) => {}
                Err(e) => panic!("the broker sent a malformed packet: {e}"),
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Heard::Silent;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Heard::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Heard::Silent;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // Reset by the broker: closed as far as the client can tell.
                Err(_) => return Heard::Closed,
            }
        }
    }

    /// The next packet, within `DEADLINE`.
    pub fn expect(&mut self) -> Packet {
        match self.hear(DEADLINE) {
            Heard::Packet(packet) => *packet,
            other => panic!("expected a packet, heard {other:?}"),
        }
    }

    /// The next PUBLISH, within `DEADLINE`.
    pub fn expect_publish(&mut self) -> Publish {
        match self.expect() {
            Packet::Publish(publish) => publish,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Nothing at all for `within` (the connection stays open and quiet).
    pub fn expect_silence(&mut self, within: Duration) {
        match self.hear(within) {
            Heard::Silent => {}
            other => panic!("expected silence, heard {other:?}"),
        }
    }

    /// Reads until the broker closes the connection (within `within`); returns what it
    /// sent before closing.
    pub fn expect_closed(&mut self, within: Duration) -> Vec<Packet> {
        let end = Instant::now() + within;
        let mut heard = Vec::new();
        loop {
            match self.hear(end.saturating_duration_since(Instant::now())) {
                Heard::Packet(packet) => heard.push(*packet),
                Heard::Closed => return heard,
                Heard::Silent => panic!("still open after {within:?}; heard {heard:?}"),
            }
        }
    }

    /// SUBSCRIBE and wait for its SUBACK; returns the reason codes.
    pub fn subscribe(&mut self, id: u16, filters: &[(&str, QoS)]) -> Vec<ReasonCode> {
        self.send(subscribe(id, filters, None));
        match self.expect() {
            Packet::SubAck(suback) => {
                assert_eq!(suback.packet_id, pid(id));
                suback.reason_codes
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// PUBLISH at `qos` and complete the flow (PUBACK, or PUBREC/PUBREL/PUBCOMP); returns
    /// the broker's reason code (PUBACK's or PUBREC's). QoS 0 returns SUCCESS at once.
    pub fn publish(&mut self, publish: Publish) -> ReasonCode {
        let (qos, id) = (publish.qos, publish.packet_id);
        self.send(Packet::Publish(publish));
        let Some(id) = id else {
            return ReasonCode::SUCCESS;
        };
        match (qos, self.expect()) {
            (QoS::AtLeastOnce, Packet::PubAck(ack)) if ack.packet_id == id => ack.reason_code,
            (QoS::ExactlyOnce, Packet::PubRec(rec)) if rec.packet_id == id => {
                if rec.reason_code.is_success() {
                    self.send(Packet::PubRel(PubResponse::success(id)));
                    match self.expect() {
                        Packet::PubComp(comp) if comp.packet_id == id => {}
                        other => panic!("expected PUBCOMP {id:?}, got {other:?}"),
                    }
                }
                rec.reason_code
            }
            (_, other) => panic!("expected the acknowledgement of {id:?}, got {other:?}"),
        }
    }

    /// Acknowledges a received QoS 1 message, or completes a received QoS 2 one.
    pub fn ack(&mut self, publish: &Publish) {
        let Some(id) = publish.packet_id else { return };
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(Packet::PubAck(PubResponse::success(id))),
            QoS::ExactlyOnce => {
                self.send(Packet::PubRec(PubResponse::success(id)));
                match self.expect() {
                    Packet::PubRel(rel) if rel.packet_id == id => {}
                    other => panic!("expected PUBREL {id:?}, got {other:?}"),
                }
                self.send(Packet::PubComp(PubResponse::success(id)));
            }
        }
    }

    /// Sends DISCONNECT (normal) and waits for the broker to close.
    pub fn disconnect(mut self) {
        self.send(Packet::Disconnect(Disconnect::default()));
        self.expect_closed(DEADLINE);
    }

    /// Closes the socket without DISCONNECT (an abnormal end for the broker).
    pub fn drop_connection(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

pub fn pid(id: u16) -> PacketId {
    PacketId::new(id).unwrap()
}

pub fn topic(s: &str) -> TopicName {
    TopicName::try_from(s).unwrap()
}

pub fn string(s: &str) -> MqttString {
    MqttString::try_from(s).unwrap()
}

pub fn qos(n: u8) -> QoS {
    QoS::from_u8(n).unwrap()
}

/// CONNECT with the given id, clean start/session and keep-alive, nothing else.
pub fn connect(
    protocol: ProtocolVersion,
    client_id: &str,
    clean: bool,
    keep_alive: u16,
) -> Connect {
    Connect {
        protocol,
        clean_start: clean,
        keep_alive,
        client_id: string(client_id),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

pub fn v5(client_id: &str) -> Connect {
    connect(ProtocolVersion::V5, client_id, true, 0)
}

pub fn v311(client_id: &str) -> Connect {
    connect(ProtocolVersion::V311, client_id, true, 0)
}

pub fn will(topic_name: &str, payload: &'static str, delay: Option<u32>) -> Will {
    Will {
        topic: topic(topic_name),
        payload: Bytes::from_static(payload.as_bytes()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: delay,
            ..WillProperties::default()
        },
    }
}

/// PUBLISH `payload` on `topic_name` at `qos` (packet id `id` unless QoS 0).
pub fn publish(topic_name: &str, q: u8, id: u16, payload: &str) -> Publish {
    let qos = qos(q);
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic(topic_name),
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        properties: PublishProperties::default(),
    }
}

pub fn subscribe(id: u16, filters: &[(&str, QoS)], sub_id: Option<u32>) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid(id),
        subscriptions: filters
            .iter()
            .map(|(f, qos)| Subscription {
                filter: TopicFilter::try_from(*f).unwrap(),
                options: SubscriptionOptions {
                    qos: *qos,
                    ..SubscriptionOptions::default()
                },
            })
            .collect(),
        properties: SubscribeProperties {
            subscription_identifier: sub_id
                .map(|n| fieldgate::mqtt::packet::SubscriptionId::new(n).unwrap()),
            ..SubscribeProperties::default()
        },
    })
}

/// Waits until the broker counts `n` subscriptions in total.
pub fn wait_for_subscriptions(broker: &TestBroker, n: usize) {
    wait_until(DEADLINE, &format!("{n} subscriptions"), || {
        broker
            .broker()
            .stats()
            .subscriptions
            .load(Ordering::Relaxed)
            >= n
    });
}

/// Waits until the broker counts exactly `n` connected clients.
pub fn wait_for_connected(broker: &TestBroker, n: usize) {
    wait_until(DEADLINE, &format!("{n} connected clients"), || {
        broker
            .broker()
            .stats()
            .clients_connected
            .load(Ordering::Relaxed)
            == n
    });
}

/// A broker with short timers for tests (no `$SYS` noise unless asked).
pub fn quiet_config() -> BrokerConfig {
    BrokerConfig {
        sys_interval: None,
        ..BrokerConfig::default()
    }
}

// ---- Paho: scripts that report observations -------------------------------------------

/// Helpers every paho script starts with. `PORT` is the broker's port. `connect(...)`
/// returns a started client whose `msgs` list collects (topic, payload, qos, retain,
/// properties, mid) and whose `ev` dict records connack/suback/disconnect outcomes. `wait`
/// polls a condition with a deadline (never a bare sleep). `obs` prints an observation.
pub const PAHO_PRELUDE: &str = r#"
import sys, time, threading
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions

PORT = int(sys.argv[1])

def wait(cond, what, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise SystemExit("timed out waiting for " + what)
        time.sleep(0.01)

def obs(key, value):
    print("%s=%r" % (key, value), flush=True)

def props(kind, **kw):
    p = Properties(getattr(PacketTypes, kind))
    for k, v in kw.items():
        setattr(p, k, v)
    return p

def make(cid, v5=True, **kw):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                    protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, **kw)
    c.msgs = []
    c.ev = {"subacks": [], "unsubacks": [], "pubacks": {}, "disconnect": None,
            "connack": None}
    def on_connect(cl, ud, flags, rc, p):
        cl.ev["connack"] = (rc.value, flags.session_present, p)
    def on_message(cl, ud, m):
        cl.msgs.append((m.topic, m.payload, m.qos, m.retain, m.properties, m.mid))
    def on_subscribe(cl, ud, mid, rcs, p):
        cl.ev["subacks"].append([rc.value for rc in rcs])
    def on_publish(cl, ud, mid, rc, p):
        cl.ev["pubacks"][mid] = rc.value
    def on_unsubscribe(cl, ud, mid, rcs, p):
        cl.ev["unsubacks"].append([rc.value for rc in rcs])
    def on_disconnect(cl, ud, flags, rc, p):
        cl.ev["disconnect"] = rc.value
    c.on_connect, c.on_message, c.on_subscribe = on_connect, on_message, on_subscribe
    c.on_publish, c.on_disconnect = on_publish, on_disconnect
    c.on_unsubscribe = on_unsubscribe
    return c

def connect(cid, v5=True, clean=True, keepalive=60, properties=None, will=None, **kw):
    c = make(cid, v5, **({} if v5 else {"clean_session": clean}), **kw)
    if will is not None:
        c.will_set(*will[:4], properties=will[4] if len(will) > 4 else None)
    if v5:
        c.connect("127.0.0.1", PORT, keepalive, clean_start=clean, properties=properties)
    else:
        c.connect("127.0.0.1", PORT, keepalive)
    c.loop_start()
    wait(lambda: c.ev["connack"] is not None, cid + " CONNACK")
    return c

def subscribe(c, *args, **kw):
    n = len(c.ev["subacks"])
    c.subscribe(*args, **kw)
    wait(lambda: len(c.ev["subacks"]) > n, "SUBACK")
    return c.ev["subacks"][-1]

def unsubscribe(c, *args, **kw):
    n = len(c.ev["unsubacks"])
    c.unsubscribe(*args, **kw)
    wait(lambda: len(c.ev["unsubacks"]) > n, "UNSUBACK")
    return c.ev["unsubacks"][-1]

def publish(c, topic, payload, qos=0, retain=False, properties=None):
    info = c.publish(topic, payload, qos, retain, properties)
    info.wait_for_publish(10)
    return info

def until(c, n, what="messages"):
    wait(lambda: len(c.msgs) >= n, "%d %s (have %r)" % (n, what, c.msgs))

def stop(c):
    c.disconnect()
    c.loop_stop()
"#;

/// Runs `script` (after `PAHO_PRELUDE`) against `port`; returns its observations, or
/// panics with its output if it failed.
pub fn paho(port: u16, script: &str) -> BTreeMap<String, String> {
    let full = format!("{PAHO_PRELUDE}\n{script}");
    let out = support::run_python(&full, &[&port.to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "paho script failed\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    observations(&stdout)
}

/// Runs a paho script (after `PAHO_PRELUDE`) against a broker of its own with
/// [`quiet_config`]; `None` when paho-mqtt is not installed (the test then skips).
pub fn paho_on_own_broker(script: &str) -> Option<BTreeMap<String, String>> {
    if !support::require_peer("paho-mqtt") {
        return None;
    }
    let broker = TestBroker::start_with(quiet_config());
    Some(paho(broker.port(), script))
}

/// Starts a paho script (after `PAHO_PRELUDE`) that keeps running, e.g. to be killed.
pub fn paho_spawn(port: u16, script: &str) -> Child {
    let python = support::python().expect("the test venv's python");
    Command::new(python)
        .arg("-c")
        .arg(format!("{PAHO_PRELUDE}\n{script}"))
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `key=value` lines, the last value for a key winning.
pub fn observations(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The observation `key`, with the whole set in the panic message when missing.
pub fn get<'a>(obs: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    obs.get(key)
        .unwrap_or_else(|| panic!("no observation {key:?} in {obs:#?}"))
}

// ---- Cross-version tests ----------------------------------------------------------------

fn mosquitto_sub(port: u16, version: &str, q: u8, id: &str, count: usize) -> Child {
    Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
        .args(["-i", id, "-t", "matrix/#", "-q", &q.to_string()])
        .args(["-C", &count.to_string(), "-W", "20", "-F", "%t %q %p"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn mosquitto_clients_get_each_message_at_the_lower_of_publish_and_subscription_qos() {
    if !support::require_peers(&["mosquitto_pub", "mosquitto_sub"]) {
        return;
    }
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    // Subscribers and publishers of both versions: both directions of each version's
    // QoS flows, and the translation between versions, in one run.
    let pairs = [("mqttv311", "mqttv5"), ("mqttv5", "mqttv311")];
    let mut subs = Vec::new();
    for (sub_version, _) in pairs {
        for q in 0..3u8 {
            let id = format!("matrix-{sub_version}-q{q}");
            subs.push((sub_version, q, mosquitto_sub(port, sub_version, q, &id, 6)));
        }
    }
    wait_for_subscriptions(&broker, subs.len());
    for (_, pub_version) in pairs {
        for q in 0..3u8 {
            let status = Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-V",
                    pub_version,
                ])
                .args(["-q", &q.to_string(), "-t", &format!("matrix/{pub_version}")])
                .args(["-m", &format!("sent-at-{q}")])
                .status()
                .unwrap();
            assert!(status.success(), "mosquitto_pub -V {pub_version} -q {q}");
        }
    }
    for (sub_version, sub_q, child) in subs {
        let out = support::wait_child_output(child, PEER_TIMEOUT);
        // Sorted: libmosquitto hands a QoS 2 message to the application at PUBREL, so
        // a QoS 0 message sent later may be printed first.
        let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect();
        got.sort();
        let mut expected: Vec<String> = pairs
            .iter()
            .flat_map(|(_, pub_version)| {
                (0..3u8).map(move |p| format!("matrix/{pub_version} {} sent-at-{p}", p.min(sub_q)))
            })
            .collect();
        expected.sort();
        assert_eq!(got, expected, "{sub_version} subscriber at QoS {sub_q}");
    }
}

fn fieldgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fieldgate"))
}

#[test]
fn fieldgate_pub_and_sub_talk_through_the_broker_in_both_versions() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port().to_string();
    let mut subs = Vec::new();
    for version in ["311", "5"] {
        let child = fieldgate()
            .args(["sub", "-h", "127.0.0.1", "-p", &port, "-V", version])
            .args(["-i", &format!("fg-sub-{version}"), "-t", "fg/#", "-q", "2"])
            .args(["-v", "-C", "6"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        subs.push(child);
    }
    wait_for_subscriptions(&broker, 2);
    for version in ["311", "5"] {
        for q in ["0", "1", "2"] {
            let out = fieldgate()
                .args([
                    "pub",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-V",
                    version,
                    "-q",
                    q,
                ])
                .args(["-t", &format!("fg/v{version}"), "-m", &format!("q{q}")])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    for sub in subs {
        let out = support::wait_child_output(sub, PEER_TIMEOUT);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "fg/v311 q0\nfg/v311 q1\nfg/v311 q2\nfg/v5 q0\nfg/v5 q1\nfg/v5 q2\n"
        );
    }
}

/// A healthy subscriber that must keep getting messages while others misbehave.
fn bystander(port: u16, id: &str) -> Raw {
    let mut raw = Raw::connected(port, v5(id));
    assert_eq!(
        raw.subscribe(1, &[("calm/#", QoS::AtLeastOnce)]),
        [ReasonCode(1)]
    );
    raw
}

fn bystander_still_served(port: u16, bystander: &mut Raw, n: u16) {
    let mut publisher = Raw::connected(port, v311("calm-publisher"));
    publisher.publish(publish("calm/still", 1, n, &format!("still here {n}")));
    publisher.disconnect();
    let got = bystander.expect_publish();
    assert_eq!(&got.payload[..], format!("still here {n}").as_bytes());
    bystander.ack(&got);
}

#[test]
fn garbage_a_second_connect_or_a_first_packet_other_than_connect_closes_only_that_client() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let mut calm = bystander(port, "calm");
    // Garbage instead of CONNECT [MQTT-3.1.0-1].
    let mut garbage = Raw::open(port, ProtocolVersion::V5);
    garbage.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(garbage.expect_closed(DEADLINE).is_empty());
    // A first packet that is a well-formed PINGREQ, not CONNECT.
    let mut ping = Raw::open(port, ProtocolVersion::V5);
    ping.send(Packet::PingReq);
    assert!(ping.expect_closed(DEADLINE).is_empty());
    // A second CONNECT [MQTT-3.1.0-2]: 5.0 hears DISCONNECT 0x82, 3.1.1 is just closed.
    let mut twice = Raw::connected(port, v5("twice-5"));
    twice.send(Packet::Connect(Box::new(v5("twice-5"))));
    let heard = twice.expect_closed(DEADLINE);
    assert!(
        matches!(&heard[..], [Packet::Disconnect(d)] if d.reason_code == ReasonCode::PROTOCOL_ERROR),
        "{heard:?}"
    );
    let mut twice = Raw::connected(port, v311("twice-311"));
    twice.send(Packet::Connect(Box::new(v311("twice-311"))));
    assert!(twice.expect_closed(DEADLINE).is_empty());
    // Garbage after a good CONNECT: a reserved packet type 0, then a broken length.
    let mut broken = Raw::connected(port, v5("broken"));
    broken.send_bytes(&[0x00, 0x00]);
    let heard = broken.expect_closed(DEADLINE);
    assert!(
        matches!(&heard[..], [Packet::Disconnect(d)] if d.reason_code == ReasonCode::MALFORMED_PACKET),
        "{heard:?}"
    );
    let mut broken = Raw::connected(port, v311("broken-311"));
    broken.send_bytes(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]);
    assert!(broken.expect_closed(DEADLINE).is_empty());
    // PUBLISH QoS 3 (both QoS bits set) is malformed [MQTT-3.3.1-4].
    let mut qos3 = Raw::connected(port, v5("qos3"));
    qos3.send_bytes(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01]);
    qos3.expect_closed(DEADLINE);
    bystander_still_served(port, &mut calm, 1);
    wait_for_connected(&broker, 1);
}

#[test]
fn a_connect_split_into_single_bytes_and_packets_sent_with_it_are_all_read() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let mut raw = Raw::open(port, ProtocolVersion::V5);
    let mut bytes = BytesMut::new();
    codec::encode(
        &Packet::Connect(Box::new(v5("slow"))),
        raw.protocol,
        &mut bytes,
    )
    .unwrap();
    for b in bytes.iter() {
        raw.send_bytes(&[*b]);
    }
    assert!(matches!(raw.expect(), Packet::ConnAck(c) if c.reason_code == ReasonCode::SUCCESS));
    // CONNECT, SUBSCRIBE and PINGREQ in one write: all three are answered without
    // the client sending anything more.
    let mut raw = Raw::open(port, ProtocolVersion::V5);
    let mut bytes = BytesMut::new();
    for packet in [
        Packet::Connect(Box::new(v5("eager"))),
        subscribe(7, &[("eager/#", QoS::AtMostOnce)], None),
        Packet::PingReq,
    ] {
        codec::encode(&packet, raw.protocol, &mut bytes).unwrap();
    }
    raw.send_bytes(&bytes);
    assert!(matches!(raw.expect(), Packet::ConnAck(_)));
    assert!(matches!(raw.expect(), Packet::SubAck(s) if s.packet_id == pid(7)));
    assert!(matches!(raw.expect(), Packet::PingResp));
}

#[test]
fn a_socket_that_never_sends_connect_is_closed_after_the_connect_timeout() {
    let broker = TestBroker::start_with(BrokerConfig {
        connect_timeout: Duration::from_millis(300),
        ..quiet_config()
    });
    let started = Instant::now();
    let mut idle = Raw::open(broker.port(), ProtocolVersion::V5);
    assert!(idle.expect_closed(DEADLINE).is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Half a CONNECT is no better than none.
    let started = Instant::now();
    let mut half = Raw::open(broker.port(), ProtocolVersion::V5);
    half.send_bytes(&[0x10, 0x20, 0x00, 0x04, b'M']);
    assert!(half.expect_closed(DEADLINE).is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn connections_beyond_max_connections_are_closed_and_counted() {
    let broker = TestBroker::start_with(BrokerConfig {
        max_connections: 2,
        ..quiet_config()
    });
    let port = broker.port();
    let a = Raw::connected(port, v5("limit-a"));
    let mut b = Raw::connected(port, v311("limit-b"));
    let mut c = Raw::open(port, ProtocolVersion::V5);
    c.send(Packet::Connect(Box::new(v5("limit-c"))));
    assert!(c.expect_closed(DEADLINE).is_empty());
    assert!(
        broker
            .broker()
            .stats()
            .connections_refused
            .load(Ordering::Relaxed)
            >= 1
    );
    // A slot freed is a slot available again.
    a.disconnect();
    wait_until(DEADLINE, "a free slot", || {
        let (mut d, connack) = Raw::connect(port, v5("limit-d"));
        let ok = connack.reason_code == ReasonCode::SUCCESS;
        if ok {
            d.send(Packet::PingReq);
            assert!(matches!(d.expect(), Packet::PingResp));
        }
        ok
    });
    b.send(Packet::PingReq);
    assert!(matches!(b.expect(), Packet::PingResp));
}

#[test]
fn topics_and_filters_deeper_than_max_topic_levels_are_refused() {
    let broker = TestBroker::start_with(BrokerConfig {
        max_topic_levels: 3,
        ..quiet_config()
    });
    let port = broker.port();
    let mut c5 = Raw::connected(port, v5("levels-5"));
    assert_eq!(
        c5.subscribe(
            1,
            &[("a/b/c/d", QoS::AtLeastOnce), ("a/b/c", QoS::AtLeastOnce)]
        ),
        [ReasonCode::TOPIC_FILTER_INVALID, ReasonCode::GRANTED_QOS_1]
    );
    assert_eq!(
        c5.publish(publish("a/b/c/d", 1, 2, "deep")),
        ReasonCode::TOPIC_NAME_INVALID
    );
    let mut c3 = Raw::connected(port, v311("levels-311"));
    assert_eq!(
        c3.subscribe(1, &[("a/+/+/+", QoS::AtMostOnce)]),
        [ReasonCode::UNSPECIFIED_ERROR]
    );
    // The deep publish was not routed; a shallow one is.
    c3.publish(publish("a/b/c", 1, 3, "shallow"));
    let got = c5.expect_publish();
    assert_eq!(&got.payload[..], b"shallow");
}

fn keep_alive_closes_a_silent_client(protocol: ProtocolVersion) {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let mut watcher = Raw::connected(port, v5("ka-watcher"));
    watcher.subscribe(1, &[("ka/will", QoS::AtLeastOnce)]);
    let mut idle = Raw::connected(port, connect(protocol, "ka-idle-0", true, 0));
    let mut silent = connect(protocol, "ka-silent", true, 1);
    silent.will = Some(will("ka/will", "silent client gone", None));
    let started = Instant::now();
    let mut silent = Raw::connected(port, silent);
    // [MQTT-3.1.2-24]: closed after 1.5 times the keep-alive without a packet.
    let heard = silent.expect_closed(Duration::from_secs(4));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1400), "closed after {took:?}");
    assert!(took < Duration::from_millis(2600), "closed after {took:?}");
    if protocol == ProtocolVersion::V5 {
        assert!(
            matches!(&heard[..], [Packet::Disconnect(d)] if d.reason_code == ReasonCode::KEEP_ALIVE_TIMEOUT),
            "{heard:?}"
        );
    } else {
        assert!(heard.is_empty(), "{heard:?}");
    }
    // The will goes out (the close was not a normal DISCONNECT).
    let got = watcher.expect_publish();
    assert_eq!(&got.payload[..], b"silent client gone");
    // The keep-alive 0 client idled through all of it and is still served.
    idle.send(Packet::PingReq);
    assert!(matches!(idle.expect(), Packet::PingResp));
}

#[test]
fn a_silent_3_1_1_client_is_closed_after_one_and_a_half_keep_alives_and_keep_alive_0_never_is() {
    keep_alive_closes_a_silent_client(ProtocolVersion::V311);
}

#[test]
fn a_silent_5_0_client_hears_0x8d_after_one_and_a_half_keep_alives_and_keep_alive_0_never_does() {
    keep_alive_closes_a_silent_client(ProtocolVersion::V5);
}

#[test]
fn a_client_that_keeps_pinging_is_not_closed_by_keep_alive() {
    let broker = TestBroker::start_with(quiet_config());
    let mut raw = Raw::connected(
        broker.port(),
        connect(ProtocolVersion::V311, "pinger", true, 1),
    );
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        // Well inside the 1.5 s allowance.
        raw.send(Packet::PingReq);
        match raw.hear(Duration::from_millis(700)) {
            Heard::Packet(packet) if matches!(*packet, Packet::PingResp) => {}
            other => panic!("expected PINGRESP, heard {other:?}"),
        }
        // Pace the pings: waiting for silence is the point here, not a stand-in for polling.
        raw.expect_silence(Duration::from_millis(300));
    }
}

fn takeover(protocol: ProtocolVersion) {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let mut first = connect(protocol, "twin", false, 0);
    first.properties.session_expiry_interval = Some(60);
    let mut first = Raw::connected(port, first);
    first.subscribe(1, &[("twin/#", QoS::AtLeastOnce)]);
    let mut second = connect(protocol, "twin", false, 0);
    second.properties.session_expiry_interval = Some(60);
    let (mut second, connack) = Raw::connect(port, second);
    assert_eq!(connack.reason_code, ReasonCode::SUCCESS);
    // [MQTT-3.1.4-3]: the first connection is closed; the session moves over.
    assert!(
        connack.session_present,
        "the persistent session is taken over"
    );
    let heard = first.expect_closed(DEADLINE);
    if protocol == ProtocolVersion::V5 {
        assert!(
            matches!(&heard[..], [Packet::Disconnect(d)] if d.reason_code == ReasonCode::SESSION_TAKEN_OVER),
            "{heard:?}"
        );
    } else {
        assert!(heard.is_empty(), "{heard:?}");
    }
    let mut publisher = Raw::connected(port, v5("twin-pub"));
    publisher.publish(publish("twin/x", 1, 1, "to the second"));
    let got = second.expect_publish();
    assert_eq!(&got.payload[..], b"to the second");
    wait_for_connected(&broker, 2);
}

#[test]
fn a_second_3_1_1_connection_with_the_same_client_id_takes_the_session_over() {
    takeover(ProtocolVersion::V311);
}

#[test]
fn a_second_5_0_connection_with_the_same_client_id_takes_over_and_the_first_hears_0x8e() {
    takeover(ProtocolVersion::V5);
}

#[test]
fn a_full_mailbox_drops_messages_for_an_offline_subscriber_and_counts_them_in_sys() {
    let broker = TestBroker::start_with(BrokerConfig {
        mailbox: MailboxLimits {
            max_messages: 3,
            ..MailboxLimits::default()
        },
        sys_interval: Some(Duration::from_millis(100)),
        ..BrokerConfig::default()
    });
    let port = broker.port();
    let mut away = Raw::connected(port, connect(ProtocolVersion::V311, "away", false, 0));
    away.subscribe(1, &[("box/#", QoS::AtLeastOnce)]);
    away.disconnect();
    let mut publisher = Raw::connected(port, v5("box-pub"));
    for n in 1..=5u16 {
        // The publisher is not told: its message was accepted, a subscriber's copy was not.
        publisher.publish(publish("box/m", 1, n, &format!("m{n}")));
    }
    let dropped = || {
        broker
            .broker()
            .stats()
            .publish_dropped
            .load(Ordering::Relaxed)
    };
    assert_eq!(dropped(), 2);
    let mut watcher = Raw::connected(port, v5("box-watcher"));
    watcher.subscribe(
        1,
        &[("$SYS/broker/publish/messages/dropped", QoS::AtMostOnce)],
    );
    wait_until(DEADLINE, "$SYS dropped = 2", || {
        let got = watcher.expect_publish();
        &got.payload[..] == b"2"
    });
    let (mut back, connack) = Raw::connect(port, connect(ProtocolVersion::V311, "away", false, 0));
    assert!(connack.session_present);
    for n in 1..=3 {
        let got = back.expect_publish();
        assert_eq!(&got.payload[..], format!("m{n}").as_bytes());
        back.ack(&got);
    }
    back.expect_silence(Duration::from_millis(200));
}

#[test]
fn sys_topics_report_version_uptime_clients_and_publish_counters() {
    let broker = TestBroker::start_with(BrokerConfig {
        sys_interval: Some(Duration::from_millis(100)),
        ..BrokerConfig::default()
    });
    let port = broker.port();
    let mut publisher = Raw::connected(port, v311("sys-pub"));
    for n in 1..=3u16 {
        publisher.publish(publish("sys/x", 1, n, "x"));
    }
    let mut watcher = Raw::connected(port, v5("sys-watcher"));
    // `#` does not match `$SYS` [MQTT-4.7.2-1]; `$SYS/#` does.
    watcher.subscribe(1, &[("#", QoS::AtMostOnce), ("$SYS/#", QoS::AtMostOnce)]);
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let wanted = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/publish/messages/received",
        "$SYS/broker/publish/messages/sent",
        "$SYS/broker/publish/messages/dropped",
    ];
    wait_until(DEADLINE, "every $SYS topic", || {
        let got = watcher.expect_publish();
        watcher.ack(&got);
        seen.insert(
            got.topic.as_str().to_string(),
            String::from_utf8_lossy(&got.payload).into_owned(),
        );
        // Both clients and the three publishes, once a tick has counted them.
        wanted.iter().all(|t| seen.contains_key(*t))
            && seen["$SYS/broker/clients/connected"] == "2"
            && seen["$SYS/broker/publish/messages/received"] == "3"
    });
    assert!(
        seen["$SYS/broker/version"].starts_with("fieldgate "),
        "{seen:?}"
    );
    assert!(seen["$SYS/broker/uptime"].ends_with(" seconds"), "{seen:?}");
    assert_eq!(
        seen["$SYS/broker/publish/messages/dropped"], "0",
        "{seen:?}"
    );
    assert!(!seen.contains_key("sys/x"), "{seen:?}");
}

fn qos_2_resend_is_routed_once(protocol: ProtocolVersion) {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let mut sub = Raw::connected(port, v5("dedup-sub"));
    sub.subscribe(1, &[("dedup/#", QoS::ExactlyOnce)]);
    let mut client = Raw::connected(port, connect(protocol, "dedup-pub", true, 0));
    let first = publish("dedup/x", 2, 5, "exactly once");
    client.send(Packet::Publish(first.clone()));
    assert!(matches!(client.expect(), Packet::PubRec(r) if r.packet_id == pid(5)));
    // The client did not hear PUBREC (as far as it knows) and resends with DUP: it is
    // answered again but not routed again [MQTT-4.3.3-10].
    let mut again = first;
    again.dup = true;
    client.send(Packet::Publish(again));
    assert!(matches!(client.expect(), Packet::PubRec(r) if r.packet_id == pid(5)));
    client.send(Packet::PubRel(PubResponse::success(pid(5))));
    assert!(matches!(client.expect(), Packet::PubComp(c) if c.packet_id == pid(5)));
    // After PUBCOMP the id is free: the same id is a new message.
    client.publish(publish("dedup/x", 2, 5, "a new one"));
    let got = [sub.expect_publish(), sub.expect_publish()];
    assert_eq!(&got[0].payload[..], b"exactly once");
    assert_eq!(&got[1].payload[..], b"a new one");
    for publish in &got {
        sub.ack(publish);
    }
    sub.expect_silence(Duration::from_millis(200));
}

#[test]
fn a_3_1_1_qos_2_publish_resent_before_pubrel_is_delivered_once() {
    qos_2_resend_is_routed_once(ProtocolVersion::V311);
}

#[test]
fn a_5_0_qos_2_publish_resent_before_pubrel_is_delivered_once() {
    qos_2_resend_is_routed_once(ProtocolVersion::V5);
}

#[test]
fn a_broker_shutting_down_tells_5_0_clients_0x8b_and_closes_3_1_1_ones() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let mut c5 = Raw::connected(port, v5("bye-5"));
    let mut c3 = Raw::connected(port, v311("bye-311"));
    wait_for_connected(&broker, 2);
    broker.shutdown();
    let heard = c5.expect_closed(DEADLINE);
    assert!(
        matches!(&heard[..], [Packet::Disconnect(d)] if d.reason_code == ReasonCode::SERVER_SHUTTING_DOWN),
        "{heard:?}"
    );
    assert!(
        c3.expect_closed(DEADLINE).is_empty(),
        "3.1.1 has no server DISCONNECT"
    );
}

#[test]
fn fieldgate_pub_streams_qos_2_lines_over_3_1_1_without_being_cut_off() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port().to_string();
    let mut sub = Raw::connected(broker.port(), v5("stream-sub"));
    sub.subscribe(1, &[("stream/#", QoS::AtMostOnce)]);
    // Our own client keeps as many QoS 2 flows open as 3.1.1 lets it (no Receive
    // Maximum there): the broker must not take that for abuse.
    let mut child = fieldgate()
        .args([
            "pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "311",
            "-q",
            "2",
        ])
        .args(["-t", "stream/x", "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: String = (1..=1000).map(|n| format!("{n}\n")).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = support::wait_child_output(child, PEER_TIMEOUT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in 1..=1000 {
        assert_eq!(&sub.expect_publish().payload[..], n.to_string().as_bytes());
    }
}
