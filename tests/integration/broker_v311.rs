//! fieldgate's broker and MQTT 3.1.1: paho-mqtt (v3.1.1) for QoS, retained messages,
//! overlapping subscriptions, persistent sessions, wills and refused subscriptions, and
//! raw sockets for the exact bytes 3.1.1 prescribes (CONNACK return codes, DUP on
//! redelivery). Where the paho interoperability suite (`client_test.py`) has a test, ours
//! checks the same normative statements.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use fieldgate::mqtt::packet::{Packet, ProtocolVersion, PubResponse, QoS, ReasonCode};

use crate::broker_conformance::{
    DEADLINE, Raw, connect, get, paho, paho_on_own_broker, paho_spawn, publish, quiet_config, v5,
    v311, wait_for_connected,
};
use crate::broker_v5::no_subscribe_config;
use crate::support::{self, broker::TestBroker};

#[test]
fn paho_3_1_1_gets_every_qos_retained_messages_one_copy_for_overlaps_and_no_dollar_topics() {
    if !support::require_peer("paho-mqtt") {
        return;
    }
    let broker = TestBroker::start_with(quiet_config());
    let obs = paho(
        broker.port(),
        r##"
a = connect("p3-a", v5=False)
b = connect("p3-b", v5=False)
subscribe(a, "p3/live/#", qos=2)
for q in range(3):
    publish(b, "p3/live/x", b"q%d" % q, q, retain=(q == 1))
until(a, 3)
# [MQTT-3.3.1-9]: RETAIN is 0 on messages sent to an established subscription.
obs("live", [(m[1], m[2], m[3]) for m in a.msgs])
# Retained: set, replace, delete by an empty payload [MQTT-3.3.1-5/-7/-10].
publish(b, "p3/r/1", b"first", 0, retain=True)
publish(b, "p3/r/1", b"replaced", 1, retain=True)
publish(b, "p3/r/2", b"to delete", 2, retain=True)
publish(b, "p3/r/2", b"", 1, retain=True)
publish(b, "p3/r/3", b"kept", 2, retain=True)
c = connect("p3-c", v5=False)
subscribe(c, "p3/r/+", qos=2)
until(c, 2)
# A round trip: anything else retained would have come before this SUBACK.
subscribe(c, "p3/none", qos=0)
obs("retained", sorted((m[0], m[1], m[2], m[3]) for m in c.msgs))
# client_test.py test_overlapping_subscriptions: one message at the highest QoS.
o = connect("p3-overlap", v5=False)
subscribe(o, [("p3/TopicA/#", 2), ("p3/TopicA/+", 1)])
subscribe(o, "p3/marker", qos=0)
publish(o, "p3/TopicA/C", b"overlapping", 2)
publish(o, "p3/marker", b"marker", 0)
wait(lambda: any(m[0] == "p3/marker" for m in o.msgs), "marker")
obs("overlap", [(m[1], m[2]) for m in o.msgs if m[0] != "p3/marker"])
# client_test.py test_dollar_topics: "#" does not match "$..." [MQTT-4.7.2-1].
d = connect("p3-dollar", v5=False)
subscribe(d, "#", qos=1)
d.msgs.clear()
publish(b, "$p3/x", b"dollar", 1)
publish(b, "p3/after", b"after", 1)
wait(lambda: any(m[0] == "p3/after" for m in d.msgs), "the message after")
obs("dollar", [m[0] for m in d.msgs if m[0].startswith("$")])
# client_test.py test_unsubscribe.
u = connect("p3-unsub", v5=False)
subscribe(u, [("p3/u/0", 2), ("p3/u/1", 2)])
unsubscribe(u, "p3/u/0")
publish(b, "p3/u/0", b"unsubscribed", 1)
publish(b, "p3/u/1", b"subscribed", 1)
until(u, 1)
subscribe(u, "p3/u/none", qos=0)
obs("unsub", [m[1] for m in u.msgs])
for cl in (a, b, c, o, d, u):
    stop(cl)
"##,
    );
    assert_eq!(
        get(&obs, "live"),
        "[(b'q0', 0, False), (b'q1', 1, False), (b'q2', 2, False)]"
    );
    assert_eq!(
        get(&obs, "retained"),
        "[('p3/r/1', b'replaced', 1, True), ('p3/r/3', b'kept', 2, True)]",
        "replaced, deleted and kept retained messages, RETAIN set on subscribe"
    );
    assert_eq!(get(&obs, "overlap"), "[(b'overlapping', 2)]");
    assert_eq!(get(&obs, "dollar"), "[]");
    assert_eq!(get(&obs, "unsub"), "[b'subscribed']");
}

#[test]
fn paho_3_1_1_persistent_sessions_keep_qos_1_and_2_messages_and_a_clean_session_drops_them() {
    let Some(obs) = paho_on_own_broker(
        r#"
# client_test.py test_offline_message_queueing.
a = connect("p3-away", v5=False, clean=False)
subscribe(a, "p3/q/+", qos=2)
stop(a)
b = connect("p3-pub", v5=False)
for q in range(3):
    publish(b, "p3/q/%d" % q, b"while away %d" % q, q)
a = connect("p3-away", v5=False, clean=False)
obs("present", a.ev["connack"][1])
until(a, 2)
subscribe(a, "p3/none", qos=0)
obs("queued", sorted((m[1], m[2]) for m in a.msgs))
stop(a)
# A clean session discards the old one and its queued messages.
publish(b, "p3/q/1", b"for the old session", 1)
c = connect("p3-away", v5=False, clean=True)
obs("clean_present", c.ev["connack"][1])
subscribe(c, "p3/none", qos=0)
obs("clean_got", [m[1] for m in c.msgs])
stop(c)
c = connect("p3-away", v5=False, clean=False)
obs("after_clean_present", c.ev["connack"][1])
subscribe(c, "p3/none", qos=0)
obs("after_clean_got", [m[1] for m in c.msgs])
stop(c)
stop(b)
"#,
    ) else {
        return;
    };
    assert_eq!(get(&obs, "present"), "True");
    assert_eq!(
        get(&obs, "queued"),
        "[(b'while away 1', 1), (b'while away 2', 2)]",
        "QoS 1 and 2 kept for the offline client, QoS 0 not"
    );
    assert_eq!(get(&obs, "clean_present"), "False");
    assert_eq!(get(&obs, "clean_got"), "[]");
    assert_eq!(get(&obs, "after_clean_present"), "False");
    assert_eq!(get(&obs, "after_clean_got"), "[]");
}

#[test]
fn a_will_is_published_when_the_paho_client_process_is_killed_but_not_after_a_normal_disconnect() {
    if !support::require_peer("paho-mqtt") {
        return;
    }
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let mut watcher = Raw::connected(port, v311("will-watcher"));
    watcher.subscribe(1, &[("p3/will/#", QoS::AtLeastOnce)]);
    // Normal DISCONNECT: the will is discarded [MQTT-3.1.2-10].
    paho(
        port,
        r#"
c = connect("p3-polite", v5=False, will=("p3/will/polite", b"polite died", 1, False))
stop(c)
"#,
    );
    // Killed: the connection ends without DISCONNECT, so the will goes [MQTT-3.1.2-8].
    let mut child = paho_spawn(
        port,
        r#"
c = connect("p3-doomed", v5=False, will=("p3/will/doomed", b"doomed died", 1, True))
while True:
    time.sleep(60)
"#,
    );
    wait_for_connected(&broker, 2);
    child.kill().unwrap();
    child.wait().unwrap();
    let got = watcher.expect_publish();
    assert_eq!(
        got.topic.as_str(),
        "p3/will/doomed",
        "not the polite client's will"
    );
    assert_eq!(&got.payload[..], b"doomed died");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    watcher.ack(&got);
    // The will was retained as asked: a new subscriber gets it with RETAIN set.
    let mut late = Raw::connected(port, v311("will-late"));
    late.subscribe(1, &[("p3/will/#", QoS::AtLeastOnce)]);
    let got = late.expect_publish();
    assert_eq!((got.topic.as_str(), got.retain), ("p3/will/doomed", true));
}

#[test]
fn a_refused_3_1_1_subscription_is_answered_with_0x80_as_client_test_expects() {
    if !support::require_peer("paho-mqtt") {
        return;
    }
    let broker = TestBroker::start_with(no_subscribe_config());
    let obs = paho(
        broker.port(),
        r#"
c = connect("p3-refused", v5=False)
obs("suback", subscribe(c, [("test/nosubscribe", 2), ("test/ok", 1)]))
stop(c)
"#,
    );
    assert_eq!(get(&obs, "suback"), "[128, 1]");
}

/// Writes raw bytes and reads the answer until the broker closes (or 4 bytes come).
fn raw_exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 64];
    while answer.len() < 4 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    answer
}

#[test]
fn connack_return_codes_are_3_1_1_bytes_for_an_empty_id_without_clean_session_and_a_bad_level() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    // CONNECT "MQTT" level 4, clean session 0, keep-alive 0, empty client id.
    let empty_id_persistent = [
        0x10, 12, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    // [MQTT-3.1.3-8]: return code 2, identifier rejected; then the broker closes.
    assert_eq!(
        raw_exchange(port, &empty_id_persistent),
        [0x20, 0x02, 0x00, 0x02]
    );
    let mut empty_id_clean = empty_id_persistent;
    empty_id_clean[9] = 0x02;
    // With clean session 1 it is accepted [MQTT-3.1.3-7].
    assert_eq!(
        raw_exchange(port, &empty_id_clean),
        [0x20, 0x02, 0x00, 0x00]
    );
    // [MQTT-3.1.2-2]: an unsupported level gets return code 1.
    let mut level_9 = empty_id_clean;
    level_9[8] = 9;
    assert_eq!(raw_exchange(port, &level_9), [0x20, 0x02, 0x00, 0x01]);
    // MQTT 3.1 ("MQIsdp", level 3), which we do not speak, hears the same.
    let mqtt_3_1 = [
        0x10, 14, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x00, 0x00,
        0x00,
    ];
    assert_eq!(raw_exchange(port, &mqtt_3_1), [0x20, 0x02, 0x00, 0x01]);
}

#[test]
fn unacknowledged_qos_1_and_2_messages_are_resent_with_dup_to_a_resumed_3_1_1_session() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let persistent = || connect(ProtocolVersion::V311, "redeliver", false, 0);
    let mut sub = Raw::connected(port, persistent());
    sub.subscribe(1, &[("rd/#", QoS::ExactlyOnce)]);
    let mut publisher = Raw::connected(port, v5("rd-pub"));
    publisher.publish(publish("rd/1", 1, 1, "one"));
    publisher.publish(publish("rd/2", 2, 2, "two"));
    publisher.publish(publish("rd/3", 2, 3, "three"));
    let one = sub.expect_publish();
    let two = sub.expect_publish();
    let three = sub.expect_publish();
    // Only PUBREC for the third: the broker must resend PUBREL, not the PUBLISH.
    sub.send(Packet::PubRec(PubResponse::success(
        three.packet_id.unwrap(),
    )));
    assert!(matches!(sub.expect(), Packet::PubRel(_)));
    sub.drop_connection();
    wait_for_connected(&broker, 1);
    // client_test.py test_redelivery_on_reconnect [MQTT-4.4.0-1].
    let (mut back, connack) = Raw::connect(port, persistent());
    assert!(connack.session_present);
    for original in [&one, &two] {
        let again = back.expect_publish();
        assert!(again.dup, "[MQTT-3.3.1-1]: DUP on a redelivery");
        assert_eq!(again.packet_id, original.packet_id, "the same packet id");
        assert_eq!(
            (again.topic.as_str(), &again.payload[..]),
            (original.topic.as_str(), &original.payload[..])
        );
    }
    match back.expect() {
        Packet::PubRel(rel) => assert_eq!(Some(rel.packet_id), three.packet_id),
        other => panic!("expected the PUBREL again, got {other:?}"),
    }
    back.ack(&one);
    back.ack(&two);
    back.send(Packet::PubComp(PubResponse::success(
        three.packet_id.unwrap(),
    )));
    back.expect_silence(Duration::from_millis(200));
    // 3.1.1 has no reason codes: PUBACK is plain even with nobody subscribed.
    assert_eq!(
        Raw::connected(port, v311("rd-nobody")).publish(publish("nobody/x", 1, 9, "x")),
        ReasonCode::SUCCESS
    );
}

#[test]
fn a_3_1_1_client_may_keep_more_qos_2_flows_open_than_the_5_0_receive_maximum() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let mut sub = Raw::connected(port, v311("many-sub"));
    sub.subscribe(1, &[("many/#", QoS::AtMostOnce)]);
    // 3.1.1 has no Receive Maximum: 150 unreleased QoS 2 flows are the client's business
    // (packet ids bound them), not a reason to close the connection.
    let mut client = Raw::connected(port, v311("many-pub"));
    let mut bytes = bytes::BytesMut::new();
    for n in 1..=150u16 {
        let packet = Packet::Publish(publish("many/x", 2, n, &n.to_string()));
        fieldgate::mqtt::codec::encode(&packet, ProtocolVersion::V311, &mut bytes).unwrap();
    }
    client.send_bytes(&bytes);
    for n in 1..=150u16 {
        match client.expect() {
            Packet::PubRec(rec) => assert_eq!(rec.packet_id.get(), n),
            other => panic!("expected PUBREC {n}, got {other:?}"),
        }
    }
    for n in 1..=150u16 {
        client.send(Packet::PubRel(PubResponse::success(
            crate::broker_conformance::pid(n),
        )));
        assert!(matches!(client.expect(), Packet::PubComp(c) if c.packet_id.get() == n));
    }
    for n in 1..=150u16 {
        assert_eq!(&sub.expect_publish().payload[..], n.to_string().as_bytes());
    }
}
