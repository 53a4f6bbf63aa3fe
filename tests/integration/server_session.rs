//! The broker's sans-IO session (`mqtt::session::server`) on a virtual clock: each test
//! takes one `Instant::now()` as its base and moves time by adding durations, so nothing
//! sleeps and every deadline is exact. The rules first, then a property test of the
//! outbound window and packet ids against random acknowledgements and reconnects.

use std::collections::HashSet;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use fieldgate::mqtt::packet::{
    Connect, ConnectProperties, Disconnect, DisconnectProperties, Packet, PacketId,
    ProtocolVersion, PubResponse, Publish, PublishProperties, QoS, ReasonCode,
};
use fieldgate::mqtt::session::server::{
    CloseReason, Event, Message, Outgoing, ServerConfig, ServerSession,
};
use fieldgate::mqtt::string::MqttString;
use fieldgate::mqtt::topic::TopicName;

const V3: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn connect(protocol: ProtocolVersion, keep_alive: u16, props: ConnectProperties) -> Connect {
    Connect {
        protocol,
        clean_start: false,
        keep_alive,
        client_id: MqttString::try_from("dev-1").unwrap(),
        will: None,
        username: None,
        password: None,
        properties: props,
    }
}

fn session(config: ServerConfig) -> ServerSession {
    ServerSession::new(MqttString::try_from("dev-1").unwrap(), config)
}

/// A session with default limits, connected at `t0` by a client with keep-alive 0 and
/// `props`, its CONNACK already taken.
fn connected(protocol: ProtocolVersion, props: ConnectProperties) -> (ServerSession, Instant) {
    let t0 = Instant::now();
    let mut s = session(ServerConfig::default());
    s.accept(&connect(protocol, 0, props), false, None, t0);
    drain(&mut s);
    (s, t0)
}

fn drain(s: &mut ServerSession) -> Vec<Packet> {
    std::iter::from_fn(|| s.poll_packet()).collect()
}

fn events(s: &mut ServerSession) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn message(topic: &str, qos: QoS, seq: Option<u64>) -> Arc<Message> {
    Arc::new(Message {
        topic: TopicName::try_from(topic).unwrap(),
        payload: Bytes::from_static(b"x"),
        qos,
        retain: false,
        properties: PublishProperties::default(),
        expires_at: None,
        publisher: None,
        journal_seq: seq,
    })
}

fn outgoing(m: &Arc<Message>, qos: QoS) -> Outgoing {
    Outgoing {
        message: Arc::clone(m),
        qos,
        retain: false,
        subscription_ids: Vec::new(),
    }
}

fn publishes(packets: &[Packet]) -> Vec<&Publish> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

#[test]
fn silence_for_one_and_a_half_keep_alives_closes_the_connection() {
    for protocol in [V3, V5] {
        let t0 = Instant::now();
        let mut s = session(ServerConfig::default());
        s.accept(
            &connect(protocol, 10, ConnectProperties::default()),
            false,
            None,
            t0,
        );
        drain(&mut s);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(15)));
        s.handle_packet(Packet::PingReq, t0 + Duration::from_secs(9));
        assert_eq!(drain(&mut s), vec![Packet::PingResp]);
        let deadline = t0 + Duration::from_secs(9) + Duration::from_secs(15);
        assert_eq!(s.poll_timeout(), Some(deadline));
        s.handle_timeout(deadline - Duration::from_millis(1));
        assert!(events(&mut s).is_empty(), "not yet");
        s.handle_timeout(deadline);
        assert_eq!(
            events(&mut s),
            vec![Event::Closed(CloseReason::KeepAliveTimeout)]
        );
        let sent = drain(&mut s);
        if protocol == V5 {
            assert!(
                matches!(&sent[..], [Packet::Disconnect(d)] if d.reason_code == ReasonCode::KEEP_ALIVE_TIMEOUT),
                "{sent:?}"
            );
        } else {
            assert!(
                sent.is_empty(),
                "3.1.1 servers send no DISCONNECT: {sent:?}"
            );
        }
    }
}

#[test]
fn keep_alive_zero_never_times_out_and_a_maximum_is_announced_to_v5() {
    let (s, t0) = connected(V5, ConnectProperties::default());
    assert_eq!(s.poll_timeout(), None);
    let config = ServerConfig {
        max_keep_alive: 30,
        ..ServerConfig::default()
    };
    let mut s = session(config);
    s.accept(
        &connect(V5, 0, ConnectProperties::default()),
        false,
        None,
        t0,
    );
    let Some(Packet::ConnAck(ack)) = s.poll_packet() else {
        panic!("CONNACK first")
    };
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(45)));
}

#[test]
fn the_window_never_exceeds_the_clients_receive_maximum() {
    let t0 = Instant::now();
    let mut s = session(ServerConfig::default());
    let props = ConnectProperties {
        receive_maximum: NonZeroU16::new(2),
        ..ConnectProperties::default()
    };
    s.accept(&connect(V5, 0, props), false, None, t0);
    drain(&mut s);
    for i in 0..5 {
        s.deliver(
            outgoing(
                &message(&format!("t/{i}"), QoS::AtLeastOnce, None),
                QoS::AtLeastOnce,
            ),
            t0,
        );
    }
    let sent = drain(&mut s);
    assert_eq!(publishes(&sent).len(), 2, "only two in flight");
    let first = publishes(&sent)[0].packet_id.unwrap();
    s.handle_packet(Packet::PubAck(PubResponse::success(first)), t0);
    assert_eq!(
        publishes(&drain(&mut s)).len(),
        1,
        "one acknowledged, one more sent"
    );
}

#[test]
fn a_resumed_session_resends_unacknowledged_publishes_with_dup_and_pubrel_for_released_ones() {
    let (mut s, t0) = connected(V5, ConnectProperties::default());
    s.deliver(
        outgoing(&message("a", QoS::AtLeastOnce, None), QoS::AtLeastOnce),
        t0,
    );
    s.deliver(
        outgoing(&message("b", QoS::ExactlyOnce, None), QoS::ExactlyOnce),
        t0,
    );
    let sent = drain(&mut s);
    let ids: Vec<PacketId> = publishes(&sent)
        .iter()
        .map(|p| p.packet_id.unwrap())
        .collect();
    // b gets its PUBREC: PUBREL goes out, and the link dies before PUBCOMP.
    s.handle_packet(Packet::PubRec(PubResponse::success(ids[1])), t0);
    assert_eq!(
        drain(&mut s),
        vec![Packet::PubRel(PubResponse::success(ids[1]))]
    );
    s.handle_closed(t0);
    let t1 = t0 + Duration::from_secs(5);
    s.accept(
        &connect(V5, 0, ConnectProperties::default()),
        true,
        None,
        t1,
    );
    let again = drain(&mut s);
    assert!(matches!(&again[0], Packet::ConnAck(a) if a.session_present));
    let Packet::Publish(resent) = &again[1] else {
        panic!("{again:?}")
    };
    assert!(resent.dup && resent.packet_id == Some(ids[0]) && resent.topic.as_str() == "a");
    assert_eq!(again[2], Packet::PubRel(PubResponse::success(ids[1])));
}

#[test]
fn an_inbound_qos2_resend_is_answered_but_routed_once() {
    let (mut s, t0) = connected(V3, ConnectProperties::default());
    let publish = Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: TopicName::try_from("q2").unwrap(),
        packet_id: Some(pid(7)),
        payload: Bytes::from_static(b"once"),
        properties: PublishProperties::default(),
    };
    s.handle_packet(Packet::Publish(publish.clone()), t0);
    assert!(matches!(&events(&mut s)[..], [Event::Publish(_)]));
    s.acknowledge_publish(pid(7), ReasonCode::SUCCESS);
    assert_eq!(
        drain(&mut s),
        vec![Packet::PubRec(PubResponse::success(pid(7)))]
    );
    s.handle_packet(
        Packet::Publish(Publish {
            dup: true,
            ..publish
        }),
        t0,
    );
    assert!(events(&mut s).is_empty(), "not routed twice");
    assert_eq!(
        drain(&mut s),
        vec![Packet::PubRec(PubResponse::success(pid(7)))]
    );
    s.handle_packet(Packet::PubRel(PubResponse::success(pid(7))), t0);
    assert_eq!(
        drain(&mut s),
        vec![Packet::PubComp(PubResponse::success(pid(7)))]
    );
}

#[test]
fn more_open_qos2_flows_than_our_receive_maximum_is_disconnect_0x93() {
    let t0 = Instant::now();
    let config = ServerConfig {
        receive_maximum: NonZeroU16::new(2).unwrap(),
        ..ServerConfig::default()
    };
    let mut s = session(config);
    s.accept(
        &connect(V5, 0, ConnectProperties::default()),
        false,
        None,
        t0,
    );
    drain(&mut s);
    for id in 1..=3 {
        s.handle_packet(
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::ExactlyOnce,
                retain: false,
                topic: TopicName::try_from("q").unwrap(),
                packet_id: Some(pid(id)),
                payload: Bytes::new(),
                properties: PublishProperties::default(),
            }),
            t0,
        );
        for e in events(&mut s) {
            if let Event::Publish(p) = e {
                s.acknowledge_publish(p.packet_id.unwrap(), ReasonCode::SUCCESS);
            }
        }
    }
    let sent = drain(&mut s);
    assert!(
        sent.iter().any(|p| matches!(p, Packet::Disconnect(d) if d.reason_code == ReasonCode::RECEIVE_MAXIMUM_EXCEEDED)),
        "{sent:?}"
    );
}

#[test]
fn a_topic_alias_from_the_client_is_resolved_and_an_unknown_one_is_a_protocol_error() {
    let (mut s, t0) = connected(V5, ConnectProperties::default());
    let with_alias = |topic: &str, alias: u16| {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: if topic.is_empty() {
                TopicName::empty_for_alias()
            } else {
                TopicName::try_from(topic).unwrap()
            },
            packet_id: None,
            payload: Bytes::new(),
            properties: PublishProperties {
                topic_alias: NonZeroU16::new(alias),
                ..PublishProperties::default()
            },
        })
    };
    s.handle_packet(with_alias("long/topic/name", 1), t0);
    s.handle_packet(with_alias("", 1), t0);
    let routed: Vec<String> = events(&mut s)
        .into_iter()
        .map(|e| match e {
            Event::Publish(p) => p.topic.as_str().to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(routed, ["long/topic/name", "long/topic/name"]);
    s.handle_packet(with_alias("", 2), t0);
    assert!(matches!(
        &events(&mut s)[..],
        [Event::Closed(CloseReason::ProtocolError { .. })]
    ));
}

#[test]
fn we_use_topic_aliases_towards_a_client_that_allows_them() {
    let t0 = Instant::now();
    let mut s = session(ServerConfig::default());
    let props = ConnectProperties {
        topic_alias_maximum: Some(1),
        ..ConnectProperties::default()
    };
    s.accept(&connect(V5, 0, props), false, None, t0);
    drain(&mut s);
    let m = message("sensors/hall/temperature", QoS::AtMostOnce, None);
    s.deliver(outgoing(&m, QoS::AtMostOnce), t0);
    s.deliver(outgoing(&m, QoS::AtMostOnce), t0);
    let other = message("sensors/hall/humidity", QoS::AtMostOnce, None);
    s.deliver(outgoing(&other, QoS::AtMostOnce), t0);
    let sent = drain(&mut s);
    let p = publishes(&sent);
    assert_eq!(p[0].topic.as_str(), "sensors/hall/temperature");
    assert_eq!(p[0].properties.topic_alias, NonZeroU16::new(1));
    assert!(p[1].topic.is_empty(), "second time by alias only");
    assert_eq!(p[1].properties.topic_alias, NonZeroU16::new(1));
    assert_eq!(p[2].topic.as_str(), "sensors/hall/humidity");
    assert_eq!(p[2].properties.topic_alias, None, "only one alias allowed");
}

#[test]
fn a_message_larger_than_the_clients_maximum_packet_size_is_dropped_not_sent() {
    let t0 = Instant::now();
    let mut s = session(ServerConfig::default());
    let props = ConnectProperties {
        maximum_packet_size: std::num::NonZeroU32::new(64),
        ..ConnectProperties::default()
    };
    s.accept(&connect(V5, 0, props), false, None, t0);
    drain(&mut s);
    let big = Arc::new(Message {
        payload: Bytes::from(vec![b'x'; 100]),
        ..(*message("big", QoS::AtLeastOnce, Some(9))).clone()
    });
    s.deliver(outgoing(&big, QoS::AtLeastOnce), t0);
    s.deliver(
        outgoing(&message("small", QoS::AtLeastOnce, None), QoS::AtLeastOnce),
        t0,
    );
    let sent = drain(&mut s);
    let topics: Vec<&str> = publishes(&sent).iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(topics, ["small"]);
    assert_eq!(s.dropped(), 1);
    assert_eq!(
        events(&mut s),
        vec![Event::Finished { journal_seq: 9 }],
        "the journal may forget it"
    );
}

#[test]
fn an_expired_message_is_not_sent_and_the_rest_of_its_interval_is() {
    let (mut s, t0) = connected(V5, ConnectProperties::default());
    let expiring = |topic: &str, secs: u64| {
        Arc::new(Message {
            expires_at: Some(t0 + Duration::from_secs(secs)),
            ..(*message(topic, QoS::AtMostOnce, None)).clone()
        })
    };
    let later = t0 + Duration::from_millis(2500);
    s.deliver(outgoing(&expiring("gone", 2), QoS::AtMostOnce), later);
    s.deliver(outgoing(&expiring("kept", 10), QoS::AtMostOnce), later);
    let sent = drain(&mut s);
    let p = publishes(&sent);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].topic.as_str(), "kept");
    // 7.5 s left, rounded up [MQTT-3.3.2-6].
    assert_eq!(p[0].properties.message_expiry_interval, Some(8));
}

#[test]
fn a_normal_disconnect_discards_the_will_and_0x04_asks_for_it() {
    let t0 = Instant::now();
    for (reason, will) in [
        (ReasonCode::NORMAL_DISCONNECTION, false),
        (ReasonCode::DISCONNECT_WITH_WILL_MESSAGE, true),
    ] {
        let mut s = session(ServerConfig::default());
        s.accept(
            &connect(V5, 0, ConnectProperties::default()),
            false,
            None,
            t0,
        );
        s.handle_packet(
            Packet::Disconnect(Disconnect {
                reason_code: reason,
                properties: DisconnectProperties::default(),
            }),
            t0,
        );
        let [Event::Closed(close)] = &events(&mut s)[..] else {
            panic!()
        };
        assert_eq!(close.publishes_will(), will);
    }
    assert!(CloseReason::ConnectionLost.publishes_will());
}

#[test]
fn raising_the_session_expiry_from_zero_at_disconnect_is_a_protocol_error() {
    let (mut s, t0) = connected(V5, ConnectProperties::default());
    s.handle_packet(
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::NORMAL_DISCONNECTION,
            properties: DisconnectProperties {
                session_expiry_interval: Some(60),
                ..DisconnectProperties::default()
            },
        }),
        t0,
    );
    assert!(matches!(
        &events(&mut s)[..],
        [Event::Closed(CloseReason::ProtocolError { reason, .. })] if *reason == ReasonCode::PROTOCOL_ERROR
    ));
}

#[derive(Debug, Clone)]
enum Op {
    Deliver(u8),
    AckOldest,
    AckNewest,
    Reconnect(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3).prop_map(Op::Deliver),
        2 => Just(Op::AckOldest),
        2 => Just(Op::AckNewest),
        1 => (1u16..5).prop_map(Op::Reconnect),
    ]
}

proptest! {
    /// Whatever the client acknowledges and however often it reconnects (with a new
    /// receive maximum), the session never has more QoS 1/2 PUBLISHes open than the
    /// client allows, never reuses a packet id that is still open, and every journaled
    /// message it was given is either still with it or reported `Finished`.
    #[test]
    fn the_outbound_window_and_packet_ids_stay_within_the_rules(ops in prop::collection::vec(op(), 1..80)) {
        let t0 = Instant::now();
        let mut s = session(ServerConfig::default());
        let mut receive_max = 3u16;
        let props = |n: u16| ConnectProperties { receive_maximum: NonZeroU16::new(n), ..ConnectProperties::default() };
        s.accept(&connect(V5, 0, props(receive_max)), false, None, t0);
        let mut open: Vec<(PacketId, QoS)> = Vec::new();
        let mut given = 0u64;
        let mut finished = HashSet::new();
        let mut sent_qos0 = 0u64;
        let mut seq = 0u64;
        for op in ops {
            match op {
                Op::Deliver(q) => {
                    seq += 1;
                    let qos = QoS::from_u8(q).unwrap();
                    s.deliver(outgoing(&message("t", qos, Some(seq)), qos), t0);
                    given += 1;
                }
                Op::AckOldest | Op::AckNewest if !open.is_empty() => {
                    let i = if matches!(op, Op::AckOldest) { 0 } else { open.len() - 1 };
                    let (id, qos) = open.remove(i);
                    // PUBACK ends a QoS 1 flow; PUBREC, then PUBCOMP after our PUBREL, a
                    // QoS 2 one (the PUBREL is checked below with the other packets).
                    if qos == QoS::AtLeastOnce {
                        s.handle_packet(Packet::PubAck(PubResponse::success(id)), t0);
                    } else {
                        s.handle_packet(Packet::PubRec(PubResponse::success(id)), t0);
                        prop_assert_eq!(s.poll_packet(), Some(Packet::PubRel(PubResponse::success(id))));
                        s.handle_packet(Packet::PubComp(PubResponse::success(id)), t0);
                    }
                }
                Op::AckOldest | Op::AckNewest => {}
                Op::Reconnect(n) => {
                    s.handle_closed(t0);
                    receive_max = n;
                    s.accept(&connect(V5, 0, props(n)), true, None, t0);
                    open.clear();
                }
            }
            for p in std::iter::from_fn(|| s.poll_packet()) {
                let Packet::Publish(p) = p else { continue };
                match p.packet_id {
                    None => sent_qos0 += 1,
                    Some(id) if p.dup => {
                        // A resend after reconnect: it was open before.
                        prop_assert!(!open.iter().any(|(i, _)| *i == id), "resent twice");
                        open.push((id, p.qos));
                    }
                    Some(id) => {
                        prop_assert!(!open.iter().any(|(i, _)| *i == id), "id {:?} reused while open", id);
                        prop_assert!(
                            open.len() < usize::from(receive_max),
                            "a new PUBLISH beyond the receive maximum {}", receive_max
                        );
                        open.push((id, p.qos));
                    }
                }
            }
            for e in std::iter::from_fn(|| s.poll_event()) {
                if let Event::Finished { journal_seq } = e {
                    prop_assert!(finished.insert(journal_seq), "finished twice");
                }
            }
            // Nothing lost, nothing counted twice: every message given is still queued or
            // in flight, or was sent at QoS 0, or was acknowledged (Finished).
            prop_assert_eq!(s.queued() as u64 + finished.len() as u64 + sent_qos0, given);
        }
    }
}
