//! Our codec against real implementations: raw packets we encode go over TCP to a real
//! mosquitto, and what mosquitto (and paho-mqtt through it) sends back is decoded by us.
//! This catches the mistakes fixtures cannot: a misreading of the spec shared by the
//! encoder and the decoder.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::num::{NonZeroU16, NonZeroU32};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fieldgate::mqtt::codec::{decode, encode};
use fieldgate::mqtt::packet::*;
use fieldgate::mqtt::string::MqttString;
use fieldgate::mqtt::topic::{TopicFilter, TopicName};

use crate::support::{self, Mosquitto};

const DEADLINE: Duration = Duration::from_secs(10);

/// A raw MQTT connection driven packet by packet with our codec.
struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    protocol: ProtocolVersion,
}

impl RawClient {
    fn connect(broker: &Mosquitto, connect: Connect) -> (RawClient, ConnAck) {
        let stream = TcpStream::connect(broker.addr()).expect("connect to mosquitto");
        let mut client = RawClient {
            stream,
            buf: BytesMut::new(),
            protocol: connect.protocol,
        };
        client.send(Packet::Connect(Box::new(connect)));
        match client.recv() {
            Packet::ConnAck(ack) => (client, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        encode(&packet, self.protocol, &mut out).expect("encodable");
        self.stream.write_all(&out).expect("write to mosquitto");
    }

    /// The next packet, waiting at most [`DEADLINE`].
    fn recv(&mut self) -> Packet {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(packet) = decode(&mut self.buf, 1 << 20, self.protocol).expect("decodes") {
                return packet;
            }
            let left = end.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no packet from mosquitto within {DEADLINE:?}"
            );
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).expect("read from mosquitto");
            assert!(n > 0, "mosquitto closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn s(v: &str) -> MqttString {
    MqttString::try_from(v).unwrap()
}

fn connect(protocol: ProtocolVersion, client_id: &str) -> Connect {
    let mut properties = ConnectProperties::default();
    if protocol == ProtocolVersion::V5 {
        properties.receive_maximum = NonZeroU16::new(20);
        properties.topic_alias_maximum = Some(4);
        properties.maximum_packet_size = NonZeroU32::new(1 << 20);
        properties.user_properties.push(UserProperty {
            name: s("site"),
            value: s("pump-station-3"),
        });
    }
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 30,
        client_id: s(client_id),
        will: None,
        username: None,
        password: None,
        properties,
    }
}

fn subscribe(client: &mut RawClient, filter: &str, qos: QoS, id: u16, sub_id: Option<u32>) {
    client.send(Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(id).unwrap(),
        subscriptions: vec![Subscription {
            filter: TopicFilter::try_from(filter).unwrap(),
            options: SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            },
        }],
        properties: SubscribeProperties {
            subscription_identifier: sub_id.and_then(SubscriptionId::new),
            user_properties: vec![],
        },
    }));
    match client.recv() {
        Packet::SubAck(ack) => {
            assert_eq!(ack.packet_id.get(), id);
            assert_eq!(ack.reason_codes, vec![ReasonCode(qos.as_u8())]);
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn publish(topic: &str, qos: QoS, id: u16, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::try_from(topic).unwrap(),
        packet_id: PacketId::new(id),
        payload: Bytes::from_static(payload),
        properties: PublishProperties::default(),
    }
}

/// Connects, subscribes and publishes to itself at QoS 0, 1 and 2 through mosquitto,
/// walking every acknowledgement flow in both directions.
fn round_trip_through_mosquitto(protocol: ProtocolVersion) {
    if !support::require_peer("mosquitto") {
        return;
    }
    let broker = Mosquitto::start();
    let (mut c, ack) = RawClient::connect(&broker, connect(protocol, "fg-codec-interop"));
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert!(!ack.session_present);
    subscribe(&mut c, "fg/interop/#", QoS::ExactlyOnce, 1, Some(7));

    // QoS 0: no acknowledgement, the message comes back.
    c.send(Packet::Publish(publish(
        "fg/interop/q0",
        QoS::AtMostOnce,
        0,
        b"zero",
    )));
    match c.recv() {
        Packet::Publish(p) => {
            assert_eq!(p.topic.as_str(), "fg/interop/q0");
            assert_eq!(&p.payload[..], b"zero");
            assert_eq!(p.qos, QoS::AtMostOnce);
            if protocol == ProtocolVersion::V5 {
                assert_eq!(p.properties.subscription_identifiers[0].get(), 7);
            }
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }

    // QoS 1: PUBACK for ours, and we PUBACK the copy we get. They may come in any order.
    let mut q1 = publish("fg/interop/q1", QoS::AtLeastOnce, 2, b"one");
    if protocol == ProtocolVersion::V5 {
        q1.properties = PublishProperties {
            payload_format_indicator: Some(PayloadFormat::Utf8),
            message_expiry_interval: Some(600),
            content_type: Some(s("text/plain")),
            response_topic: Some(TopicName::try_from("fg/interop/reply").unwrap()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
            user_properties: vec![
                UserProperty {
                    name: s("k"),
                    value: s("v1"),
                },
                UserProperty {
                    name: s("k"),
                    value: s("v2"),
                },
            ],
            ..PublishProperties::default()
        };
    }
    c.send(Packet::Publish(q1.clone()));
    let (mut got_ack, mut got_copy) = (false, false);
    while !(got_ack && got_copy) {
        match c.recv() {
            Packet::PubAck(a) => {
                assert_eq!(a.packet_id.get(), 2);
                assert_eq!(a.reason_code, ReasonCode::SUCCESS);
                got_ack = true;
            }
            Packet::Publish(p) => {
                assert_eq!(p.qos, QoS::AtLeastOnce);
                assert_eq!(&p.payload[..], b"one");
                let mut expected = q1.properties.clone();
                if protocol == ProtocolVersion::V5 {
                    // The broker counts the expiry down and adds our subscription id.
                    assert!(p.properties.message_expiry_interval.unwrap() <= 600);
                    expected.message_expiry_interval = p.properties.message_expiry_interval;
                    expected.subscription_identifiers = vec![SubscriptionId::new(7).unwrap()];
                }
                assert_eq!(p.properties, expected);
                c.send(Packet::PubAck(PubResponse::success(p.packet_id.unwrap())));
                got_copy = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    // QoS 2 out (PUBREC, PUBREL, PUBCOMP) and in (we answer PUBREC, then PUBCOMP).
    c.send(Packet::Publish(publish(
        "fg/interop/q2",
        QoS::ExactlyOnce,
        3,
        b"two",
    )));
    let (mut out_done, mut in_done) = (false, false);
    while !(out_done && in_done) {
        match c.recv() {
            Packet::PubRec(r) if r.packet_id.get() == 3 => {
                c.send(Packet::PubRel(PubResponse::success(r.packet_id)));
            }
            Packet::PubComp(r) => {
                assert_eq!(r.packet_id.get(), 3);
                out_done = true;
            }
            Packet::Publish(p) => {
                assert_eq!(p.qos, QoS::ExactlyOnce);
                assert_eq!(&p.payload[..], b"two");
                c.send(Packet::PubRec(PubResponse::success(p.packet_id.unwrap())));
            }
            Packet::PubRel(r) => {
                c.send(Packet::PubComp(PubResponse::success(r.packet_id)));
                in_done = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    c.send(Packet::PingReq);
    assert_eq!(c.recv(), Packet::PingResp);

    c.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: PacketId::new(4).unwrap(),
        filters: vec![TopicFilter::try_from("fg/interop/#").unwrap()],
        properties: UnsubscribeProperties::default(),
    }));
    match c.recv() {
        Packet::UnsubAck(a) => {
            assert_eq!(a.packet_id.get(), 4);
            let expected = match protocol {
                ProtocolVersion::V5 => vec![ReasonCode::SUCCESS],
                ProtocolVersion::V311 => vec![],
            };
            assert_eq!(a.reason_codes, expected);
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    c.send(Packet::Disconnect(Disconnect::default()));
}

#[test]
fn mosquitto_understands_our_3_1_1_packets_and_we_understand_its_answers() {
    round_trip_through_mosquitto(ProtocolVersion::V311);
}

#[test]
fn mosquitto_understands_our_5_0_packets_and_we_understand_its_answers() {
    round_trip_through_mosquitto(ProtocolVersion::V5);
}

#[test]
fn a_topic_alias_we_set_is_resolved_by_mosquitto() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let broker = Mosquitto::start();
    let (mut c, ack) = RawClient::connect(&broker, connect(ProtocolVersion::V5, "fg-alias"));
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    subscribe(&mut c, "fg/alias/#", QoS::AtMostOnce, 1, None);
    let alias = NonZeroU16::new(1);
    let mut first = publish("fg/alias/long/topic/name", QoS::AtMostOnce, 0, b"first");
    first.properties.topic_alias = alias;
    let mut second = publish("x", QoS::AtMostOnce, 0, b"second");
    second.topic = TopicName::empty_for_alias();
    second.properties.topic_alias = alias;
    c.send(Packet::Publish(first));
    c.send(Packet::Publish(second));
    for expected in [&b"first"[..], b"second"] {
        match c.recv() {
            Packet::Publish(p) => {
                assert_eq!(&p.payload[..], expected);
                // Our CONNECT allowed 4 aliases; mosquitto may use one toward us too.
                if p.topic.is_empty() {
                    assert!(p.properties.topic_alias.is_some());
                } else {
                    assert_eq!(p.topic.as_str(), "fg/alias/long/topic/name");
                }
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}

#[test]
fn mosquitto_refuses_a_bad_password_with_a_reason_code_we_read() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let dir = support::TempDir::new("fg-passwd");
    let passwd = dir.path().join("passwd");
    // mosquitto_passwd hashes; an empty file is enough: every user is then unknown.
    std::fs::write(&passwd, "").unwrap();
    let broker = Mosquitto::start_with_config(&format!(
        "allow_anonymous false\npassword_file {}\n",
        passwd.display()
    ));
    for protocol in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut request = connect(protocol, "fg-denied");
        request.username = Some(s("nobody"));
        request.password = Some(Bytes::from_static(b"wrong"));
        let (_c, ack) = RawClient::connect(&broker, request);
        // In 3.1.1 these are return codes 5 and 4, which we carry as their 5.0 equivalents.
        let expected = [
            ReasonCode::NOT_AUTHORIZED,
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        ];
        assert!(expected.contains(&ack.reason_code), "{protocol}: {ack:?}");
    }
}

/// Runs a paho-mqtt script in the background and hands its stdout lines to the test.
struct PahoScript {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl PahoScript {
    fn spawn(script: &str, args: &[&str]) -> PahoScript {
        let python = support::python().expect("python peer");
        let mut child = Command::new(python)
            .arg("-c")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        PahoScript { child, lines }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(DEADLINE)
            .expect("a line from the paho script within the deadline")
    }
}

impl Drop for PahoScript {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Subscribes with MQTT 5, says "ready", then prints one JSON line per message received.
const PAHO_SUBSCRIBER: &str = r#"
import json, sys
import paho.mqtt.client as mqtt
port, topic = int(sys.argv[1]), sys.argv[2]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
def on_connect(c, u, f, rc, p): c.subscribe(topic, qos=1)
def on_subscribe(c, u, mid, rcs, p): print("ready", flush=True)
def on_message(c, u, m):
    p = m.properties
    print(json.dumps({
        "topic": m.topic, "payload": m.payload.hex(), "qos": m.qos,
        "content_type": getattr(p, "ContentType", None),
        "response_topic": getattr(p, "ResponseTopic", None),
        "correlation": getattr(p, "CorrelationData", b"").hex(),
        "user": getattr(p, "UserProperty", []),
        "format": getattr(p, "PayloadFormatIndicator", None),
    }), flush=True)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("127.0.0.1", port)
c.loop_forever()
"#;

#[test]
fn paho_reads_the_properties_we_encode() {
    if !support::require_peers(&["mosquitto", "python", "paho-mqtt"]) {
        return;
    }
    let broker = Mosquitto::start();
    let paho = PahoScript::spawn(PAHO_SUBSCRIBER, &[&broker.port().to_string(), "fg/paho/#"]);
    assert_eq!(paho.line(), "ready");
    let (mut c, _) = RawClient::connect(&broker, connect(ProtocolVersion::V5, "fg-to-paho"));
    let mut p = publish("fg/paho/t", QoS::AtLeastOnce, 9, b"\x01\x02payload");
    p.properties = PublishProperties {
        payload_format_indicator: Some(PayloadFormat::Unspecified),
        content_type: Some(s("application/octet-stream")),
        response_topic: Some(TopicName::try_from("fg/paho/reply").unwrap()),
        correlation_data: Some(Bytes::from_static(b"\xde\xad")),
        user_properties: vec![
            UserProperty {
                name: s("ünïcode"),
                value: s("✓"),
            },
            UserProperty {
                name: s("b"),
                value: s(""),
            },
        ],
        ..PublishProperties::default()
    };
    c.send(Packet::Publish(p));
    match c.recv() {
        Packet::PubAck(a) => assert_eq!(a.packet_id.get(), 9),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let line = paho.line();
    let expect = [
        r#""topic": "fg/paho/t""#,
        r#""payload": "01027061796c6f6164""#,
        r#""content_type": "application/octet-stream""#,
        r#""response_topic": "fg/paho/reply""#,
        r#""correlation": "dead""#,
        r#""user": [["\u00fcn\u00efcode", "\u2713"], ["b", ""]]"#,
        r#""format": 0"#,
    ];
    for e in expect {
        assert!(line.contains(e), "{e} missing from paho's view: {line}");
    }
}

/// Publishes one MQTT 5 message with properties once connected, then exits.
const PAHO_PUBLISHER: &str = r#"
import sys
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port, topic = int(sys.argv[1]), sys.argv[2]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.connect("127.0.0.1", port)
c.loop_start()
props = Properties(PacketTypes.PUBLISH)
props.ContentType = "application/json"
props.MessageExpiryInterval = 120
props.CorrelationData = b"\x00\xff"
props.UserProperty = [("unit", "degC"), ("unit", "K")]
info = c.publish(topic, b'{"t":21.5}', qos=2, properties=props)
info.wait_for_publish(10)
c.disconnect()
c.loop_stop()
"#;

#[test]
fn we_read_the_properties_paho_encodes() {
    if !support::require_peers(&["mosquitto", "python", "paho-mqtt"]) {
        return;
    }
    let broker = Mosquitto::start();
    let (mut c, _) = RawClient::connect(&broker, connect(ProtocolVersion::V5, "fg-from-paho"));
    subscribe(
        &mut c,
        "fg/from-paho/#",
        QoS::ExactlyOnce,
        1,
        Some(268_435_455),
    );
    let paho = PahoScript::spawn(
        PAHO_PUBLISHER,
        &[&broker.port().to_string(), "fg/from-paho/x"],
    );
    let p = match c.recv() {
        Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    drop(paho);
    assert_eq!(p.topic.as_str(), "fg/from-paho/x");
    assert_eq!(p.qos, QoS::ExactlyOnce);
    assert_eq!(&p.payload[..], br#"{"t":21.5}"#);
    let props = &p.properties;
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert!(props.message_expiry_interval.is_some_and(|e| e <= 120));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"\x00\xff"[..]));
    let user: Vec<(&str, &str)> = props
        .user_properties
        .iter()
        .map(|u| (u.name.as_str(), u.value.as_str()))
        .collect();
    assert_eq!(user, [("unit", "degC"), ("unit", "K")]);
    // The largest Subscription Identifier there is: four bytes of Variable Byte Integer.
    assert_eq!(props.subscription_identifiers[0].get(), 268_435_455);
}
