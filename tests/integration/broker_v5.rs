//! fieldgate's broker and MQTT 5.0: flow control both ways, maximum packet size both
//! ways, topic aliases both ways, message and session expiry, will delay, subscription
//! identifiers and options, shared subscriptions, properties passed through, and what
//! CONNACK announces. Raw clients check exact packets; paho-mqtt (v5) checks that a
//! real client library sees the same. Where the paho interoperability suite
//! (`client_test5.py`) has a test, ours checks the same normative statements.

use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fieldgate::mqtt::broker::router::ReadCheck;
use fieldgate::mqtt::broker::{Authorizer, BrokerConfig};
use fieldgate::mqtt::packet::{
    Disconnect, DisconnectProperties, Packet, PayloadFormat, ProtocolVersion, PubResponse, QoS,
    ReasonCode, Subscribe, SubscribeProperties, Subscription, SubscriptionId, SubscriptionOptions,
    UserProperty,
};
use fieldgate::mqtt::session::server::ServerConfig;
use fieldgate::mqtt::topic::{TopicFilter, TopicName};

use crate::broker_conformance::{
    DEADLINE, Raw, get, paho_on_own_broker, pid, publish, quiet_config, string, v5,
    wait_for_connected,
};
use crate::support::{broker::TestBroker, wait_until};

fn subscribe_with(
    id: u16,
    filter: &str,
    options: SubscriptionOptions,
    sub_id: Option<u32>,
) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid(id),
        subscriptions: vec![Subscription {
            filter: TopicFilter::try_from(filter).unwrap(),
            options,
        }],
        properties: SubscribeProperties {
            subscription_identifier: sub_id.map(|n| SubscriptionId::new(n).unwrap()),
            ..SubscribeProperties::default()
        },
    })
}

fn at(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

fn expect_suback(raw: &mut Raw) -> Vec<ReasonCode> {
    match raw.expect() {
        Packet::SubAck(suback) => suback.reason_codes,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn expect_disconnect(raw: &mut Raw) -> ReasonCode {
    let heard = raw.expect_closed(DEADLINE);
    match heard.last() {
        Some(Packet::Disconnect(d)) => d.reason_code,
        _ => panic!("expected DISCONNECT then close, heard {heard:?}"),
    }
}

// ---- Flow control -----------------------------------------------------------------------

#[test]
fn the_broker_never_has_more_unacknowledged_messages_in_flight_than_the_client_s_receive_maximum() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let mut connect = v5("rm-sub");
    connect.properties.receive_maximum = NonZeroU16::new(2);
    let mut sub = Raw::connected(port, connect);
    sub.subscribe(1, &[("rm/#", QoS::ExactlyOnce)]);
    let mut publisher = Raw::connected(port, v5("rm-pub"));
    for n in 1..=5u16 {
        let q = if n == 3 { 2 } else { 1 };
        publisher.publish(publish("rm/x", q, n, &format!("m{n}")));
    }
    // [MQTT-3.3.4-9]: two in flight, then nothing until one is acknowledged.
    let first = sub.expect_publish();
    let second = sub.expect_publish();
    assert_eq!(
        (&first.payload[..], &second.payload[..]),
        (&b"m1"[..], &b"m2"[..])
    );
    sub.expect_silence(Duration::from_millis(300));
    sub.ack(&first);
    let third = sub.expect_publish();
    assert_eq!(&third.payload[..], b"m3");
    assert_eq!(third.qos, QoS::ExactlyOnce);
    sub.expect_silence(Duration::from_millis(200));
    // A QoS 2 flow holds its slot until PUBCOMP, not PUBREC [MQTT-4.9.0-2].
    sub.send(Packet::PubRec(PubResponse::success(
        third.packet_id.unwrap(),
    )));
    assert!(matches!(sub.expect(), Packet::PubRel(_)));
    sub.expect_silence(Duration::from_millis(200));
    sub.send(Packet::PubComp(PubResponse::success(
        third.packet_id.unwrap(),
    )));
    let fourth = sub.expect_publish();
    assert_eq!(&fourth.payload[..], b"m4");
    sub.ack(&second);
    sub.ack(&fourth);
    let fifth = sub.expect_publish();
    assert_eq!(&fifth.payload[..], b"m5");
    sub.ack(&fifth);
    sub.expect_silence(Duration::from_millis(100));
}

#[test]
fn a_client_with_more_unreleased_qos_2_publishes_than_our_receive_maximum_hears_0x93() {
    let broker = TestBroker::start_with(quiet_config());
    let (mut raw, connack) = Raw::connect(broker.port(), v5("greedy"));
    let ours = ServerConfig::default().receive_maximum;
    assert_eq!(connack.properties.receive_maximum, Some(ours));
    let mut bytes = bytes::BytesMut::new();
    for n in 1..=ours.get() + 1 {
        let packet = Packet::Publish(publish("greedy/x", 2, n, "x"));
        fieldgate::mqtt::codec::encode(&packet, ProtocolVersion::V5, &mut bytes).unwrap();
    }
    raw.send_bytes(&bytes);
    let heard = raw.expect_closed(DEADLINE);
    let recs = heard
        .iter()
        .filter(|p| matches!(p, Packet::PubRec(_)))
        .count();
    assert_eq!(recs, usize::from(ours.get()), "one PUBREC per allowed flow");
    assert!(
        matches!(heard.last(), Some(Packet::Disconnect(d)) if d.reason_code == ReasonCode::RECEIVE_MAXIMUM_EXCEEDED),
        "{:?}",
        heard.last()
    );
}

// ---- Maximum packet size ----------------------------------------------------------------

#[test]
fn a_packet_larger_than_our_maximum_packet_size_is_answered_with_disconnect_0x95() {
    let broker = TestBroker::start_with(BrokerConfig {
        session: ServerConfig {
            maximum_packet_size: NonZeroU32::new(1024).unwrap(),
            ..ServerConfig::default()
        },
        ..quiet_config()
    });
    let (mut raw, connack) = Raw::connect(broker.port(), v5("big-sender"));
    assert_eq!(
        connack.properties.maximum_packet_size,
        NonZeroU32::new(1024)
    );
    raw.send(Packet::Publish(publish("big/x", 0, 0, &"x".repeat(2000))));
    assert_eq!(expect_disconnect(&mut raw), ReasonCode::PACKET_TOO_LARGE);
}

#[test]
fn a_message_larger_than_the_client_s_maximum_packet_size_is_not_sent_to_it_and_is_counted() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let mut small = v5("small-max");
    small.properties.maximum_packet_size = NonZeroU32::new(100);
    // Aliases too: a message dropped for size must not leave an alias behind that the
    // client never heard of.
    small.properties.topic_alias_maximum = Some(4);
    let mut small = Raw::connected(port, small);
    small.subscribe(1, &[("size/#", QoS::AtLeastOnce)]);
    let mut roomy = Raw::connected(port, v5("roomy"));
    roomy.subscribe(1, &[("size/#", QoS::AtLeastOnce)]);
    let mut publisher = Raw::connected(port, v5("size-pub"));
    let big = "b".repeat(200);
    publisher.publish(publish("size/x", 1, 1, &big));
    publisher.publish(publish("size/x", 1, 2, "small"));
    // [MQTT-3.1.2-24]: the client never sees the big one...
    let got = small.expect_publish();
    assert_eq!(&got.payload[..], b"small");
    assert_eq!(
        got.topic.as_str(),
        "size/x",
        "the first message on a topic names it"
    );
    small.ack(&got);
    // ...while a client without a limit gets both.
    for expected in [big.as_bytes(), b"small"] {
        let got = roomy.expect_publish();
        assert_eq!(&got.payload[..], expected);
        roomy.ack(&got);
    }
    assert!(
        broker
            .broker()
            .stats()
            .publish_dropped
            .load(Ordering::Relaxed)
            >= 1
    );
}

// ---- Topic aliases ----------------------------------------------------------------------

#[test]
fn topic_aliases_from_the_client_are_resolved_and_bad_ones_end_the_connection() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let mut sub = Raw::connected(port, v5("alias-sub"));
    sub.subscribe(1, &[("alias/#", QoS::AtMostOnce)]);
    let (mut client, connack) = Raw::connect(port, v5("alias-pub"));
    let max = connack.properties.topic_alias_maximum.unwrap_or(0);
    assert!(max >= 1, "the broker accepts aliases: {connack:?}");
    let mut first = publish("alias/one", 0, 0, "set");
    first.properties.topic_alias = NonZeroU16::new(1);
    client.send(Packet::Publish(first));
    let mut second = publish("alias/one", 0, 0, "use");
    second.topic = TopicName::empty_for_alias();
    second.properties.topic_alias = NonZeroU16::new(1);
    client.send(Packet::Publish(second));
    for payload in [&b"set"[..], b"use"] {
        let got = sub.expect_publish();
        assert_eq!(
            (got.topic.as_str(), &got.payload[..]),
            ("alias/one", payload)
        );
        assert_eq!(
            got.properties.topic_alias, None,
            "aliases belong to one connection"
        );
    }
    // Above our maximum [MQTT-3.3.2-9].
    let mut over = publish("alias/two", 0, 0, "over");
    over.properties.topic_alias = NonZeroU16::new(max + 1);
    client.send(Packet::Publish(over));
    assert_eq!(
        expect_disconnect(&mut client),
        ReasonCode::TOPIC_ALIAS_INVALID
    );
    // Alias 0 is not allowed [MQTT-3.3.2-8]: spelled out, as our codec will not write
    // it. PUBLISH QoS 0 "alias/z", properties: Topic Alias (0x23) = 0.
    let mut zero = Raw::connected(port, v5("alias-zero"));
    let mut bytes = vec![0x30, 14, 0x00, 0x07];
    bytes.extend_from_slice(b"alias/z");
    bytes.extend_from_slice(&[0x03, 0x23, 0x00, 0x00, b'!']);
    zero.send_bytes(&bytes);
    assert_eq!(
        expect_disconnect(&mut zero),
        ReasonCode::TOPIC_ALIAS_INVALID
    );
    // Aliases do not survive the connection [MQTT-3.3.2-7]: a new connection using alias
    // 1 without setting it is refused.
    let mut again = Raw::connected(port, v5("alias-pub"));
    let mut unknown = publish("alias/one", 0, 0, "unknown");
    unknown.topic = TopicName::empty_for_alias();
    unknown.properties.topic_alias = NonZeroU16::new(1);
    again.send(Packet::Publish(unknown));
    let reason = expect_disconnect(&mut again);
    assert!(
        [ReasonCode::PROTOCOL_ERROR, ReasonCode::TOPIC_ALIAS_INVALID].contains(&reason),
        "{reason:?}"
    );
}

#[test]
fn the_broker_uses_topic_aliases_up_to_the_client_s_topic_alias_maximum() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let mut connect = v5("alias-receiver");
    connect.properties.topic_alias_maximum = Some(2);
    let mut sub = Raw::connected(port, connect);
    sub.subscribe(1, &[("to/#", QoS::AtLeastOnce)]);
    let mut publisher = Raw::connected(port, v5("alias-source"));
    let sends = ["to/a", "to/a", "to/b", "to/c", "to/b", "to/c", "to/a"];
    for (n, t) in sends.iter().enumerate() {
        publisher.publish(publish(t, 1, n as u16 + 1, t));
    }
    // Resolve as a client must, and check every message can be resolved.
    let mut aliases: std::collections::HashMap<u16, String> = Default::default();
    let mut used_alias = 0;
    for t in sends {
        let got = sub.expect_publish();
        sub.ack(&got);
        let name = match got.properties.topic_alias {
            Some(alias) => {
                assert!(alias.get() <= 2, "alias {alias} above the client's maximum");
                used_alias += 1;
                if got.topic.is_empty() {
                    aliases
                        .get(&alias.get())
                        .cloned()
                        .expect("an alias set before")
                } else {
                    aliases.insert(alias.get(), got.topic.as_str().to_string());
                    got.topic.as_str().to_string()
                }
            }
            None => got.topic.as_str().to_string(),
        };
        assert_eq!(name, t);
        assert_eq!(&got.payload[..], t.as_bytes());
    }
    assert!(used_alias >= 4, "the broker used aliases: {used_alias}");
    // A client that announces no maximum gets no aliases [MQTT-3.3.2-8].
    let mut plain = Raw::connected(port, v5("alias-none"));
    plain.subscribe(1, &[("to/#", QoS::AtMostOnce)]);
    publisher.publish(publish("to/a", 0, 0, "x"));
    publisher.publish(publish("to/a", 0, 0, "y"));
    for _ in 0..2 {
        let got = plain.expect_publish();
        assert_eq!(got.properties.topic_alias, None);
        assert_eq!(got.topic.as_str(), "to/a");
    }
}

// ---- Expiry -----------------------------------------------------------------------------

#[test]
fn message_expiry_removes_retained_and_queued_messages_and_what_is_sent_counts_down() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    // An offline persistent subscriber.
    let mut away = v5("expiry-away");
    away.clean_start = false;
    away.properties.session_expiry_interval = Some(60);
    let mut raw = Raw::connected(port, away.clone());
    raw.subscribe(1, &[("exp/q", QoS::AtLeastOnce)]);
    raw.disconnect();
    let mut publisher = Raw::connected(port, v5("expiry-pub"));
    let with_expiry = |t: &str, id: u16, payload: &str, secs: u32, retain: bool| {
        let mut p = publish(t, 1, id, payload);
        p.retain = retain;
        p.properties.message_expiry_interval = Some(secs);
        p
    };
    let started = Instant::now();
    publisher.publish(with_expiry("exp/r", 1, "short-lived", 1, true));
    publisher.publish(with_expiry("exp/z", 2, "long-lived", 60, true));
    publisher.publish(with_expiry("exp/q", 3, "queued short", 1, false));
    publisher.publish(with_expiry("exp/q", 4, "queued long", 60, false));
    // At first the short-lived retained message is there, sent with what is left.
    let mut probe = Raw::connected(port, v5("expiry-probe"));
    probe.subscribe(1, &[("exp/r", QoS::AtLeastOnce)]);
    let got = probe.expect_publish();
    assert!(
        got.retain,
        "[MQTT-3.3.1-8]: RETAIN set on a message sent for a subscription"
    );
    assert_eq!(got.properties.message_expiry_interval, Some(1));
    // Poll new subscriptions until the retained message is gone [MQTT-3.3.2-5].
    let mut n = 0;
    wait_until(DEADLINE, "the retained message to expire", || {
        n += 1;
        let mut probe = Raw::connected(port, v5(&format!("expiry-probe-{n}")));
        probe.subscribe(1, &[("exp/+", QoS::AtLeastOnce)]);
        // Sorted by topic: exp/r comes before exp/z while it exists.
        let got = probe.expect_publish();
        got.topic.as_str() == "exp/z"
    });
    assert!(started.elapsed() >= Duration::from_secs(1));
    // The queued short-lived message expired too; the long one is sent with its interval
    // reduced by the time it waited [MQTT-3.3.2-6].
    let (mut back, connack) = Raw::connect(port, away);
    assert!(connack.session_present);
    let got = back.expect_publish();
    assert_eq!(&got.payload[..], b"queued long");
    let left = got.properties.message_expiry_interval.unwrap();
    assert!(
        left < 60,
        "sent with {left} s left after waiting over a second"
    );
    back.ack(&got);
    back.expect_silence(Duration::from_millis(200));
}

#[test]
fn a_session_survives_its_expiry_interval_ends_after_it_and_disconnect_can_change_it() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let persistent = |id: &str, expiry: u32, clean: bool| {
        let mut c = v5(id);
        c.clean_start = clean;
        c.properties.session_expiry_interval = Some(expiry);
        c
    };
    let sessions = || broker.broker().stats().sessions.load(Ordering::Relaxed);
    // Expiry 0: the session ends with the connection.
    let mut raw = Raw::connected(port, persistent("se-zero", 0, true));
    raw.subscribe(1, &[("se/#", QoS::AtLeastOnce)]);
    raw.disconnect();
    let (raw, connack) = Raw::connect(port, persistent("se-zero", 0, false));
    assert!(!connack.session_present);
    raw.disconnect();
    // Expiry 1 s: present right after, gone once it has passed.
    let mut raw = Raw::connected(port, persistent("se-one", 1, true));
    raw.subscribe(1, &[("se/#", QoS::AtLeastOnce)]);
    raw.disconnect();
    let (raw, connack) = Raw::connect(port, persistent("se-one", 1, false));
    assert!(connack.session_present);
    raw.drop_connection();
    wait_for_connected(&broker, 0);
    wait_until(DEADLINE, "the session to expire", || sessions() == 0);
    let (raw, connack) = Raw::connect(port, persistent("se-one", 1, false));
    assert!(!connack.session_present);
    // DISCONNECT may shorten it to 0: the session ends at once [MQTT-3.14.2-2 allows
    // lowering].
    let mut end_now = Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::SUCCESS,
        properties: DisconnectProperties {
            session_expiry_interval: Some(0),
            ..DisconnectProperties::default()
        },
    });
    let mut raw = raw;
    raw.send(end_now.clone());
    raw.expect_closed(DEADLINE);
    let (mut raw, connack) = Raw::connect(port, persistent("se-one", 0, false));
    assert!(!connack.session_present);
    // Raising it from 0 in DISCONNECT is a protocol error [MQTT-3.14.2-2].
    if let Packet::Disconnect(d) = &mut end_now {
        d.properties.session_expiry_interval = Some(30);
    }
    raw.send(end_now);
    assert_eq!(expect_disconnect(&mut raw), ReasonCode::PROTOCOL_ERROR);
}

// ---- Wills ------------------------------------------------------------------------------

fn will_client(port: u16, id: &str, delay: Option<u32>, expiry: u32) -> Raw {
    let mut c = v5(id);
    c.will = Some(crate::broker_conformance::will("will/t", "", delay));
    if let Some(will) = &mut c.will {
        will.payload = Bytes::from(format!("{id} is gone"));
    }
    c.properties.session_expiry_interval = Some(expiry);
    Raw::connected(port, c)
}

#[test]
fn disconnect_0x04_publishes_the_will_and_a_normal_disconnect_discards_it() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let mut watcher = Raw::connected(port, v5("will-watcher"));
    watcher.subscribe(
        1,
        &[
            ("will/t", QoS::AtLeastOnce),
            ("will/marker", QoS::AtLeastOnce),
        ],
    );
    let normal = will_client(port, "normal", None, 0);
    normal.disconnect();
    let mut c = v5("asks-for-will");
    let mut w = crate::broker_conformance::will("will/t", "asks-for-will is gone", None);
    w.properties.user_properties = vec![UserProperty {
        name: string("why"),
        value: string("asked"),
    }];
    w.properties.content_type = Some(string("text/plain"));
    c.will = Some(w);
    let mut with_will = Raw::connected(port, c);
    with_will.send(Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
        properties: DisconnectProperties::default(),
    }));
    with_will.expect_closed(DEADLINE);
    let got = watcher.expect_publish();
    assert_eq!(
        &got.payload[..],
        b"asks-for-will is gone",
        "only the 0x04 client's will"
    );
    // The will's properties travel with it [MQTT-3.1.3-10].
    assert_eq!(got.properties.user_properties.len(), 1);
    assert_eq!(got.properties.user_properties[0].value.as_str(), "asked");
    assert_eq!(got.properties.content_type.as_deref(), Some("text/plain"));
    watcher.ack(&got);
    let mut marker = Raw::connected(port, v5("will-marker"));
    marker.publish(publish("will/marker", 1, 1, "end"));
    let got = watcher.expect_publish();
    assert_eq!(&got.payload[..], b"end");
}

#[test]
fn a_delayed_will_is_cancelled_by_a_reconnect_in_time_and_published_after_the_delay_otherwise() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let mut watcher = Raw::connected(port, v5("delay-watcher"));
    watcher.subscribe(1, &[("will/t", QoS::AtLeastOnce)]);
    // A: will delay 1 s, back within it: no will [MQTT-3.1.3-9].
    let a = will_client(port, "delay-a", Some(1), 30);
    a.drop_connection();
    wait_for_connected(&broker, 1);
    let mut a_again = v5("delay-a");
    a_again.clean_start = false;
    a_again.properties.session_expiry_interval = Some(30);
    let (_a_again, connack) = Raw::connect(port, a_again);
    assert!(connack.session_present);
    // B: same delay, dropped after A, never back: its will comes after the delay. Had A's
    // been published it would have come first (its timer started earlier).
    let b = will_client(port, "delay-b", Some(1), 30);
    let dropped = Instant::now();
    b.drop_connection();
    let got = watcher.expect_publish();
    assert_eq!(&got.payload[..], b"delay-b is gone");
    let took = dropped.elapsed();
    assert!(took >= Duration::from_millis(950), "will after {took:?}");
    watcher.ack(&got);
    // C: the session ends (expiry 1 s) before the will delay (30 s): the will goes when
    // the session ends [MQTT-3.1.2-8].
    let c = will_client(port, "delay-c", Some(30), 1);
    let dropped = Instant::now();
    c.drop_connection();
    let got = watcher.expect_publish();
    assert_eq!(&got.payload[..], b"delay-c is gone");
    let took = dropped.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(5),
        "{took:?}"
    );
    watcher.ack(&got);
    // D: no session to outlive (expiry 0): the will goes at once despite its delay.
    let d = will_client(port, "delay-d", Some(30), 0);
    let dropped = Instant::now();
    d.drop_connection();
    let got = watcher.expect_publish();
    assert_eq!(&got.payload[..], b"delay-d is gone");
    assert!(dropped.elapsed() < Duration::from_millis(900));
}

#[test]
fn a_clean_start_within_the_will_delay_ends_the_old_session_and_its_will_goes_at_once() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let mut watcher = Raw::connected(port, v5("clean-watcher"));
    watcher.subscribe(1, &[("will/t", QoS::AtLeastOnce)]);
    let e = will_client(port, "delay-e", Some(30), 60);
    e.drop_connection();
    wait_for_connected(&broker, 1);
    // A new session for the same client id (Clean Start): the old session ends, and a
    // will waiting for its delay is sent when its session ends [MQTT-3.1.3-9].
    let started = Instant::now();
    let (_e_again, connack) = Raw::connect(port, v5("delay-e"));
    assert!(!connack.session_present);
    let got = watcher.expect_publish();
    assert_eq!(&got.payload[..], b"delay-e is gone");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "sent at the clean start, not after the 30 s delay"
    );
}

// ---- CONNACK ----------------------------------------------------------------------------

#[test]
fn connack_assigns_an_identifier_caps_keep_alive_and_gives_response_information_on_request() {
    let broker = TestBroker::start_with(BrokerConfig {
        session: ServerConfig {
            max_keep_alive: 30,
            response_information: Some("replies/".into()),
            ..ServerConfig::default()
        },
        ..quiet_config()
    });
    let port = broker.port();
    // [MQTT-3.2.2-16]: an empty client id gets one assigned, even without clean start.
    let mut anonymous = v5("");
    anonymous.clean_start = false;
    let (raw, connack) = Raw::connect(port, anonymous);
    assert_eq!(connack.reason_code, ReasonCode::SUCCESS);
    let assigned = connack
        .properties
        .assigned_client_identifier
        .clone()
        .unwrap();
    assert!(!assigned.is_empty());
    assert_eq!(
        connack.properties.server_keep_alive,
        Some(30),
        "keep-alive 0 is above any cap"
    );
    raw.disconnect();
    let mut named = crate::broker_conformance::connect(ProtocolVersion::V5, "named", true, 60);
    named.properties.request_response_information = Some(true);
    let (raw, connack) = Raw::connect(port, named);
    assert_eq!(connack.properties.assigned_client_identifier, None);
    // [MQTT-3.2.2-21]: the client must use the server's keep-alive.
    assert_eq!(connack.properties.server_keep_alive, Some(30));
    assert_eq!(
        connack.properties.response_information.as_deref(),
        Some("replies/named")
    );
    raw.disconnect();
    let modest = crate::broker_conformance::connect(ProtocolVersion::V5, "modest", true, 10);
    let (raw, connack) = Raw::connect(port, modest);
    assert!(matches!(
        connack.properties.server_keep_alive,
        None | Some(10)
    ));
    assert_eq!(
        connack.properties.response_information, None,
        "not requested"
    );
    raw.disconnect();
}

// ---- Publishing rules -------------------------------------------------------------------

#[test]
fn a_payload_marked_utf8_that_is_not_is_refused_with_0x99_and_not_routed() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let mut sub = Raw::connected(port, v5("pfi-sub"));
    sub.subscribe(1, &[("pfi/#", QoS::AtLeastOnce)]);
    let mut client = Raw::connected(port, v5("pfi-pub"));
    for q in [1, 2] {
        let mut bad = publish("pfi/x", q, q.into(), "");
        bad.payload = Bytes::from_static(&[0xff, 0xfe, 0x41]);
        bad.properties.payload_format_indicator = Some(PayloadFormat::Utf8);
        assert_eq!(
            client.publish(bad),
            ReasonCode::PAYLOAD_FORMAT_INVALID,
            "QoS {q}"
        );
    }
    let mut good = publish("pfi/x", 1, 3, "grüße");
    good.properties.payload_format_indicator = Some(PayloadFormat::Utf8);
    assert_eq!(client.publish(good), ReasonCode::SUCCESS);
    let got = sub.expect_publish();
    assert_eq!(
        &got.payload[..],
        "grüße".as_bytes(),
        "the refused ones were not routed"
    );
    assert_eq!(
        got.properties.payload_format_indicator,
        Some(PayloadFormat::Utf8)
    );
}

#[test]
fn overlapping_subscriptions_give_one_message_with_every_subscription_identifier() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let mut sub = Raw::connected(port, v5("ids"));
    sub.send(subscribe_with(1, "ids/+", at(QoS::AtMostOnce), Some(7)));
    expect_suback(&mut sub);
    sub.send(subscribe_with(
        2,
        "ids/#",
        at(QoS::ExactlyOnce),
        Some(456_789),
    ));
    expect_suback(&mut sub);
    sub.send(subscribe_with(3, "ids/x", at(QoS::AtLeastOnce), None));
    expect_suback(&mut sub);
    let mut publisher = Raw::connected(port, v5("ids-pub"));
    let mut message = publish("ids/x", 2, 1, "once");
    message.retain = true;
    publisher.publish(message);
    // [MQTT-3.3.4-2] one message at the highest QoS, [MQTT-3.3.4-3] with every id.
    let got = sub.expect_publish();
    assert_eq!(got.qos, QoS::ExactlyOnce);
    assert!(
        !got.retain,
        "a live message clears RETAIN without Retain As Published"
    );
    let mut ids: Vec<u32> = got
        .properties
        .subscription_identifiers
        .iter()
        .map(|i| i.get())
        .collect();
    ids.sort();
    assert_eq!(ids, [7, 456_789]);
    sub.ack(&got);
    sub.expect_silence(Duration::from_millis(200));
    // The retained copy sent for a new subscription carries that subscription's id.
    sub.send(subscribe_with(4, "ids/x", at(QoS::AtLeastOnce), Some(99)));
    expect_suback(&mut sub);
    let got = sub.expect_publish();
    assert!(got.retain);
    let ids: Vec<u32> = got
        .properties
        .subscription_identifiers
        .iter()
        .map(|i| i.get())
        .collect();
    assert_eq!(ids, [99]);
}

#[test]
fn no_local_shared_subscriptions_and_unsubscribe_codes_behave_as_5_0_says() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let mut me = Raw::connected(port, v5("no-local"));
    me.send(subscribe_with(
        1,
        "nl/#",
        SubscriptionOptions {
            no_local: true,
            ..at(QoS::AtLeastOnce)
        },
        None,
    ));
    expect_suback(&mut me);
    me.publish(publish("nl/x", 1, 2, "mine"));
    let mut other = Raw::connected(port, v5("no-local-other"));
    other.publish(publish("nl/x", 1, 1, "theirs"));
    // [MQTT-3.8.3-3]: not back to the publisher; the other client's message comes.
    let got = me.expect_publish();
    assert_eq!(&got.payload[..], b"theirs");
    me.ack(&got);
    // [MQTT-3.8.3-4]: No Local on a shared subscription is a protocol error. Our codec
    // will not write it, so the bytes are spelled out: packet id 3, no properties,
    // "$share/g/nl/#", options QoS 1 + No Local.
    let mut bad = vec![0x82, 19, 0x00, 0x03, 0x00, 0x00, 13];
    bad.extend_from_slice(b"$share/g/nl/#");
    bad.push(0x01 | 0x04);
    me.send_bytes(&bad);
    assert_eq!(expect_disconnect(&mut me), ReasonCode::PROTOCOL_ERROR);
    // UNSUBACK: success, or "no subscription existed".
    let mut unsub = Raw::connected(port, v5("unsub"));
    unsub.subscribe(1, &[("u/a", QoS::AtMostOnce)]);
    unsub.send(Packet::Unsubscribe(fieldgate::mqtt::packet::Unsubscribe {
        packet_id: pid(2),
        filters: vec![
            TopicFilter::try_from("u/a").unwrap(),
            TopicFilter::try_from("u/b").unwrap(),
        ],
        properties: Default::default(),
    }));
    match unsub.expect() {
        Packet::UnsubAck(ack) => assert_eq!(
            ack.reason_codes,
            [ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
        ),
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
}

/// Refuses subscriptions to `test/nosubscribe` (as the paho suite's broker is set up).
#[derive(Debug)]
pub struct NoSubscribe;

impl ReadCheck for NoSubscribe {
    fn may_receive(&self, _: Option<&str>, _: &str, _: &TopicName) -> bool {
        true
    }
}

impl Authorizer for NoSubscribe {
    fn may_publish(&self, _: Option<&str>, _: &str, topic: &TopicName) -> bool {
        topic.as_str() != "test/nopublish"
    }
    fn may_subscribe(&self, _: Option<&str>, _: &str, filter: &TopicFilter) -> bool {
        filter.filter() != "test/nosubscribe"
    }
}

pub fn no_subscribe_config() -> BrokerConfig {
    BrokerConfig {
        authorizer: Some(Arc::new(NoSubscribe)),
        ..quiet_config()
    }
}

#[test]
fn a_refused_subscription_hears_0x80_as_the_paho_suite_expects_and_a_refused_publish_0x87() {
    let broker = TestBroker::start_with(no_subscribe_config());
    let mut raw = Raw::connected(broker.port(), v5("refused"));
    assert_eq!(
        raw.subscribe(
            1,
            &[
                ("test/nosubscribe", QoS::ExactlyOnce),
                ("test/ok", QoS::AtLeastOnce)
            ]
        ),
        [ReasonCode::UNSPECIFIED_ERROR, ReasonCode::GRANTED_QOS_1]
    );
    assert_eq!(
        raw.publish(publish("test/nopublish", 1, 2, "x")),
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        raw.publish(publish("test/nopublish", 2, 3, "x")),
        ReasonCode::NOT_AUTHORIZED
    );
    // A publish nobody subscribed to is still accepted (0x10 is a success).
    assert_eq!(
        raw.publish(publish("test/nobody", 1, 4, "x")),
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
}

#[test]
fn the_internal_client_gets_past_the_acl_and_anonymity_but_only_with_its_secret() {
    let login = fieldgate::mqtt::broker::auth::InternalClient::generate().unwrap();
    let broker = TestBroker::start_with(BrokerConfig {
        allow_anonymous: false,
        internal_client: Some(login.clone()),
        ..no_subscribe_config()
    });
    let as_internal = |password: &[u8]| {
        let mut connect = v5("internal");
        connect.username = Some(string(login.username()));
        connect.password = Some(Bytes::copy_from_slice(password));
        connect
    };
    // Someone who knows the name but not the secret is refused.
    let (_, connack) = Raw::connect(broker.port(), as_internal(b"guess"));
    assert_eq!(connack.reason_code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    let (_, connack) = Raw::connect(broker.port(), v5("anonymous"));
    assert_eq!(connack.reason_code, ReasonCode::NOT_AUTHORIZED);
    // The gateway itself: in, and the ACL does not apply to it.
    let mut raw = Raw::connected(broker.port(), as_internal(login.password()));
    assert_eq!(
        raw.subscribe(1, &[("test/nosubscribe", QoS::AtLeastOnce)]),
        [ReasonCode::GRANTED_QOS_1]
    );
    assert_eq!(
        raw.publish(publish("test/nopublish", 1, 2, "x")),
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
}

// ---- paho-mqtt v5 ---------------------------------------------------------------------

#[test]
fn paho_v5_sees_properties_passed_through_and_subscription_options_applied() {
    let Some(obs) = paho_on_own_broker(
        r#"
a = connect("paho5-a")
b = connect("paho5-b")
subscribe(b, "p5/props", options=SubscribeOptions(qos=2))
pp = props("PUBLISH", UserProperty=[("a", "2"), ("c", "3")], ContentType="text/x",
           PayloadFormatIndicator=1, ResponseTopic="p5/reply", CorrelationData=b"334")
for q in range(3):
    publish(a, "p5/props", b"q%d" % q, q, properties=pp)
until(b, 3)
for i, m in enumerate(b.msgs):
    p = m[4]
    obs("props%d" % i, (m[2], p.UserProperty, p.ContentType, p.PayloadFormatIndicator,
                        p.ResponseTopic, p.CorrelationData))
# Retain as published, and retain handling 0/1/2 (client_test5 test_subscribe_options).
c = connect("paho5-c")
subscribe(c, "p5/rap", options=SubscribeOptions(qos=1, retainAsPublished=True))
publish(a, "p5/rap", b"not retained", 1)
publish(a, "p5/rap", b"retained", 1, retain=True)
until(c, 2)
obs("rap", [(m[1], m[3]) for m in c.msgs])
for t in ["p5/rh/0", "p5/rh/1", "p5/rh/2"]:
    publish(a, t, t.encode(), 1, retain=True)
def retained_after(rh, twice):
    d = connect("paho5-rh%d" % rh)
    for _ in range(2 if twice else 1):
        subscribe(d, "p5/rh/+", options=SubscribeOptions(qos=1, retainHandling=rh))
    # A live marker: everything retained was sent before it.
    subscribe(d, "p5/marker", options=SubscribeOptions(qos=1))
    publish(a, "p5/marker", b"m", 1)
    wait(lambda: any(m[0] == "p5/marker" for m in d.msgs), "marker")
    stop(d)
    return len([m for m in d.msgs if m[0] != "p5/marker"])
obs("rh0_twice", retained_after(0, True))
obs("rh1_twice", retained_after(1, True))
obs("rh2", retained_after(2, False))
# Empty payload deletes the retained message.
publish(a, "p5/rh/0", b"", 1, retain=True)
obs("rh0_after_delete", retained_after(0, False))
# Request/response with No Local on both sides (client_test5 test_request_response).
req = connect("paho5-req")
resp = connect("paho5-resp")
subscribe(req, "p5/rr", options=SubscribeOptions(qos=2, noLocal=True))
subscribe(resp, "p5/rr", options=SubscribeOptions(qos=2, noLocal=True))
publish(req, "p5/rr", b"request", 1, properties=props("PUBLISH", ResponseTopic="p5/rr", CorrelationData=b"7"))
until(resp, 1)
rp = resp.msgs[0][4]
publish(resp, rp.ResponseTopic, b"response", 1, properties=props("PUBLISH", CorrelationData=rp.CorrelationData))
until(req, 1)
obs("rr", (resp.msgs[0][1], req.msgs[0][1], req.msgs[0][4].CorrelationData, len(resp.msgs)))
for cl in (a, b, c, req, resp):
    stop(cl)
"#,
    ) else {
        return;
    };
    for q in 0..3 {
        assert_eq!(
            get(&obs, &format!("props{q}")),
            format!("({q}, [('a', '2'), ('c', '3')], 'text/x', 1, 'p5/reply', b'334')")
        );
    }
    assert_eq!(
        get(&obs, "rap"),
        "[(b'not retained', False), (b'retained', True)]"
    );
    assert_eq!(
        get(&obs, "rh0_twice"),
        "6",
        "retain handling 0: sent on every subscribe"
    );
    assert_eq!(
        get(&obs, "rh1_twice"),
        "3",
        "retain handling 1: only for a new subscription"
    );
    assert_eq!(get(&obs, "rh2"), "0", "retain handling 2: never");
    assert_eq!(get(&obs, "rh0_after_delete"), "2");
    assert_eq!(get(&obs, "rr"), "(b'request', b'response', b'7', 1)");
}

#[test]
fn paho_v5_gets_server_topic_aliases_and_may_use_its_own() {
    let Some(obs) = paho_on_own_broker(
        r#"
# client_test5 test_server_topic_alias: announce a maximum of 1, get aliases back.
a = connect("paho5-alias", properties=props("CONNECT", TopicAliasMaximum=1))
subscribe(a, "p5/alias", options=SubscribeOptions(qos=2))
for q in range(3):
    publish(a, "p5/alias", b"server alias %d" % q, q)
until(a, 3)
obs("server", [(m[0], getattr(m[4], "TopicAlias", None)) for m in a.msgs])
stop(a)
# Without a maximum: no aliases.
n = connect("paho5-noalias")
subscribe(n, "p5/alias", options=SubscribeOptions(qos=2))
for q in range(3):
    publish(n, "p5/alias", b"plain %d" % q, q)
until(n, 3)
obs("none", [(m[0], getattr(m[4], "TopicAlias", None)) for m in n.msgs])
# client_test5 test_client_topic_alias: set alias 1, then publish with it alone.
c = connect("paho5-calias")
subscribe(c, "p5/calias", options=SubscribeOptions(qos=2))
publish(c, "p5/calias", b"set", 1, properties=props("PUBLISH", TopicAlias=1))
publish(c, "", b"use", 1, properties=props("PUBLISH", TopicAlias=1))
until(c, 2)
obs("client", [(m[0], m[1]) for m in c.msgs])
stop(c)
stop(n)
"#,
    ) else {
        return;
    };
    assert_eq!(
        get(&obs, "server"),
        "[('p5/alias', 1), ('', 1), ('', 1)]",
        "the first message sets alias 1, the next ones use it"
    );
    assert_eq!(
        get(&obs, "none"),
        "[('p5/alias', None), ('p5/alias', None), ('p5/alias', None)]"
    );
    assert_eq!(
        get(&obs, "client"),
        "[('p5/calias', b'set'), ('p5/calias', b'use')]"
    );
}

#[test]
fn paho_v5_shared_subscription_members_each_get_a_part_and_together_all() {
    let Some(obs) = paho_on_own_broker(
        r#"
a = connect("paho5-share-a")
b = connect("paho5-share-b")
watch = connect("paho5-share-watch")
pub = connect("paho5-share-pub")
publish(pub, "p5/share/x", b"retained before", 1, retain=True)
for c in (a, b):
    subscribe(c, "$share/g/p5/share/+", options=SubscribeOptions(qos=1))
subscribe(watch, "p5/share/+", options=SubscribeOptions(qos=1))
until(watch, 1, "the retained message")
N = 40
for i in range(N):
    publish(pub, "p5/share/x", b"%d" % i, 1)
until(watch, N + 1)
wait(lambda: len(a.msgs) + len(b.msgs) >= N, "shared deliveries")
got = sorted(int(m[1]) for m in a.msgs + b.msgs if m[1] != b"retained before")
obs("all_once", got == list(range(N)))
obs("both_members", len(a.msgs) > 0 and len(b.msgs) > 0)
obs("retained_to_members", [m for m in a.msgs + b.msgs if m[1] == b"retained before"])
for c in (a, b, watch, pub):
    stop(c)
"#,
    ) else {
        return;
    };
    assert_eq!(
        get(&obs, "all_once"),
        "True",
        "each message to exactly one member"
    );
    assert_eq!(
        get(&obs, "both_members"),
        "True",
        "the group shares the load"
    );
    assert_eq!(
        get(&obs, "retained_to_members"),
        "[]",
        "no retained messages for a shared subscription"
    );
}

#[test]
fn paho_v5_with_receive_maximum_2_and_manual_acks_gets_two_messages_until_it_acknowledges() {
    let Some(obs) = paho_on_own_broker(
        r#"
# client_test5 test_flow_control1, with a real client holding its acknowledgements back.
slow = connect("paho5-slow", properties=props("CONNECT", ReceiveMaximum=2), manual_ack=True)
subscribe(slow, "p5/flow", options=SubscribeOptions(qos=1))
src = connect("paho5-src")
for i in range(4):
    publish(src, "p5/flow", b"%d" % i, 1)
until(slow, 2)
# A round trip: anything the broker would have sent before its SUBACK is here by now.
subscribe(slow, "p5/probe", options=SubscribeOptions(qos=0))
obs("held", [m[1] for m in slow.msgs])
slow.ack(slow.msgs[0][5], 1)
until(slow, 3)
subscribe(slow, "p5/probe2", options=SubscribeOptions(qos=0))
obs("after_one_ack", [m[1] for m in slow.msgs])
for m in slow.msgs[1:]:
    slow.ack(m[5], 1)
until(slow, 4)
obs("all", [m[1] for m in slow.msgs])
stop(slow)
stop(src)
"#,
    ) else {
        return;
    };
    assert_eq!(get(&obs, "held"), "[b'0', b'1']");
    assert_eq!(get(&obs, "after_one_ack"), "[b'0', b'1', b'2']");
    assert_eq!(get(&obs, "all"), "[b'0', b'1', b'2', b'3']");
}

#[test]
fn messages_still_queued_when_a_session_expires_are_counted_as_dropped() {
    let broker = TestBroker::start_with(quiet_config());
    let port = broker.port();
    let mut away = v5("expiring-away");
    away.properties.session_expiry_interval = Some(1);
    let mut raw = Raw::connected(port, away);
    raw.subscribe(1, &[("expiring/#", QoS::AtLeastOnce)]);
    raw.disconnect();
    let mut publisher = Raw::connected(port, v5("expiring-pub"));
    publisher.publish(publish("expiring/x", 1, 1, "never delivered"));
    publisher.publish(publish("expiring/x", 2, 2, "never delivered either"));
    let stats = broker.broker().stats();
    assert_eq!(
        stats.publish_dropped.load(Ordering::Relaxed),
        0,
        "queued, not dropped"
    );
    wait_until(DEADLINE, "the session to expire", || {
        stats.sessions.load(Ordering::Relaxed) == 1
    });
    wait_until(DEADLINE, "its two messages counted", || {
        stats.publish_dropped.load(Ordering::Relaxed) == 2
    });
}
