//! The sans-IO client session (`mqtt::session::client`) and its packet id pool, driven
//! packet by packet on a virtual clock: each test takes one `Instant::now()` as its base
//! and moves time by adding durations, so nothing sleeps and every deadline is exact.
//!
//! The first part checks each rule the session implements, for both protocol versions
//! where they differ; the last part is a property test that runs random operation
//! sequences against a model of the server and checks the session's invariants after
//! every step.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::{NonZeroU16, NonZeroU32};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;

use fieldgate::mqtt::codec;
use fieldgate::mqtt::packet::{
    AckProperties, ConnAck, ConnAckProperties, Connect, ConnectProperties, Disconnect,
    DisconnectProperties, Packet, PacketId, ProtocolVersion, PubResponse, Publish,
    PublishProperties, QoS, ReasonCode, SubAck, Subscribe, SubscribeProperties, Subscription,
    SubscriptionOptions, UnsubAck, Unsubscribe, UnsubscribeProperties, UserProperty, Will,
    WillProperties,
};
use fieldgate::mqtt::session::client::{
    ClientConfig, ClientSession, DisconnectCause, Event, InboundAck, PublishToken, RequestToken,
    SessionError,
};
use fieldgate::mqtt::session::packet_id::PacketIdPool;
use fieldgate::mqtt::string::MqttString;
use fieldgate::mqtt::topic::{TopicFilter, TopicName};

const V3: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;
const BOTH: [ProtocolVersion; 2] = [V3, V5];

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// A session and its virtual clock. Everything fed to the session is stamped `now`.
struct Harness {
    session: ClientSession,
    now: Instant,
}

impl Harness {
    fn new(config: ClientConfig) -> Self {
        Harness {
            session: ClientSession::new(config),
            now: Instant::now(),
        }
    }

    /// Default config for `protocol`, changed by `f`.
    fn with(protocol: ProtocolVersion, f: impl FnOnce(&mut ClientConfig)) -> Self {
        let mut config = ClientConfig::new(protocol, mstr("gw-1"));
        f(&mut config);
        Harness::new(config)
    }

    fn of(protocol: ProtocolVersion) -> Self {
        Harness::with(protocol, |_| {})
    }

    /// A config whose session the server keeps across connections (5.0 session expiry,
    /// 3.1.1 without clean session), so that Session Present is meaningful.
    fn persistent(protocol: ProtocolVersion) -> Self {
        Harness::with(protocol, |c| {
            c.session_expiry_interval = 3600;
            c.clean_start = protocol == V5;
        })
    }

    /// Connected with a plain CONNACK, the CONNECT and the Connected event consumed.
    fn connected(protocol: ProtocolVersion) -> Self {
        let mut h = Harness::of(protocol);
        h.connect(false);
        h.expect_connected(false);
        h
    }

    /// The transport is up: returns the CONNECT, which must be the only packet sent.
    fn open(&mut self) -> Connect {
        self.session.handle_connected(self.now);
        match self.sent().as_slice() {
            [Packet::Connect(connect)] => (**connect).clone(),
            other => panic!("expected exactly one CONNECT, got {other:?}"),
        }
    }

    /// `open` and a successful CONNACK: returns what the session sent after the CONNACK.
    fn connect(&mut self, session_present: bool) -> Vec<Packet> {
        self.connect_with(session_present, ConnAckProperties::default())
    }

    fn connect_with(
        &mut self,
        session_present: bool,
        properties: ConnAckProperties,
    ) -> Vec<Packet> {
        self.open();
        self.recv(Packet::ConnAck(ConnAck {
            session_present,
            reason_code: ReasonCode::SUCCESS,
            properties,
        }));
        self.sent()
    }

    fn expect_connected(&mut self, session_present: bool) {
        assert_eq!(self.events(), [Event::Connected { session_present }]);
    }

    fn recv(&mut self, packet: Packet) {
        self.session.handle_packet(packet, self.now);
    }

    fn close(&mut self) {
        self.session.handle_closed(self.now);
    }

    /// Drains the packets the session wants written.
    fn sent(&mut self) -> Vec<Packet> {
        std::iter::from_fn(|| self.session.poll_packet()).collect()
    }

    /// Drains the session's events.
    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.session.poll_event()).collect()
    }

    /// Moves the clock `secs` forward, calling `handle_timeout` at every deadline the
    /// session announces on the way (at the deadline itself, as a driver would).
    fn advance(&mut self, secs: u64) {
        let target = self.now + Duration::from_secs(secs);
        while let Some(due) = self.session.poll_timeout() {
            if due > target {
                break;
            }
            self.now = self.now.max(due);
            self.session.handle_timeout(self.now);
            assert_ne!(
                self.session.poll_timeout(),
                Some(due),
                "handle_timeout at the announced deadline changed nothing"
            );
        }
        self.now = target;
    }

    fn publish(&mut self, topic: &str, qos: QoS) -> PublishToken {
        self.session
            .publish(message(topic, qos), self.now)
            .expect("publish accepted")
    }

    fn publish_msg(&mut self, message: Publish) -> Result<PublishToken, SessionError> {
        self.session.publish(message, self.now)
    }

    fn subscribe(&mut self, filters: &[&str]) -> RequestToken {
        let subscriptions = filters
            .iter()
            .map(|f| subscription(f, QoS::AtLeastOnce))
            .collect();
        self.session
            .subscribe(subscriptions, SubscribeProperties::default(), self.now)
            .expect("subscribe accepted")
    }

    fn unsubscribe(&mut self, filters: &[&str]) -> RequestToken {
        let filters = filters.iter().map(|f| filter(f)).collect();
        self.session
            .unsubscribe(filters, UnsubscribeProperties::default(), self.now)
            .expect("unsubscribe accepted")
    }
}

fn mstr(s: &str) -> MqttString {
    MqttString::try_from(s).unwrap()
}

fn topic(s: &str) -> TopicName {
    TopicName::try_from(s).unwrap()
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::try_from(s).unwrap()
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn nz16(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap()
}

fn message(topic_name: &str, qos: QoS) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic(topic_name),
        packet_id: None,
        payload: Bytes::from_static(b"22.5"),
        properties: PublishProperties::default(),
    }
}

fn subscription(f: &str, qos: QoS) -> Subscription {
    Subscription {
        filter: filter(f),
        options: SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        },
    }
}

fn response(id: u16, code: ReasonCode) -> PubResponse {
    PubResponse {
        reason_code: code,
        ..PubResponse::success(pid(id))
    }
}

fn puback(id: u16) -> Packet {
    Packet::PubAck(PubResponse::success(pid(id)))
}

fn pubrec(id: u16) -> Packet {
    Packet::PubRec(PubResponse::success(pid(id)))
}

fn pubrel(id: u16) -> Packet {
    Packet::PubRel(PubResponse::success(pid(id)))
}

fn pubcomp(id: u16) -> Packet {
    Packet::PubComp(PubResponse::success(pid(id)))
}

fn suback(id: PacketId, codes: &[ReasonCode]) -> Packet {
    Packet::SubAck(SubAck {
        packet_id: id,
        reason_codes: codes.to_vec(),
        properties: AckProperties::default(),
    })
}

fn unsuback(id: PacketId, codes: &[ReasonCode]) -> Packet {
    Packet::UnsubAck(UnsubAck {
        packet_id: id,
        reason_codes: codes.to_vec(),
        properties: AckProperties::default(),
    })
}

fn disconnect_packet(code: ReasonCode) -> Packet {
    Packet::Disconnect(Disconnect {
        reason_code: code,
        properties: DisconnectProperties::default(),
    })
}

/// An inbound PUBLISH from the server.
fn inbound(topic_name: &str, qos: QoS, id: Option<u16>) -> Publish {
    Publish {
        packet_id: id.map(pid),
        payload: Bytes::from_static(b"on"),
        ..message(topic_name, qos)
    }
}

/// The PUBLISH packets among `packets`, in order.
fn publishes(packets: &[Packet]) -> Vec<Publish> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// The one PUBLISH in `packets`.
fn only_publish(packets: &[Packet]) -> Publish {
    match packets {
        [Packet::Publish(p)] => p.clone(),
        other => panic!("expected exactly one PUBLISH, got {other:?}"),
    }
}

fn only_subscribe(packets: &[Packet]) -> Subscribe {
    match packets {
        [Packet::Subscribe(s)] => s.clone(),
        other => panic!("expected exactly one SUBSCRIBE, got {other:?}"),
    }
}

fn only_unsubscribe(packets: &[Packet]) -> Unsubscribe {
    match packets {
        [Packet::Unsubscribe(u)] => u.clone(),
        other => panic!("expected exactly one UNSUBSCRIBE, got {other:?}"),
    }
}

fn violation_reason(events: &[Event]) -> ReasonCode {
    match events {
        [Event::Disconnected(DisconnectCause::ProtocolViolation { reason, .. })] => *reason,
        other => panic!("expected exactly one protocol violation, got {other:?}"),
    }
}

/// After a protocol violation: 5.0 queues DISCONNECT with the reason, 3.1.1 sends nothing.
fn assert_violation(h: &mut Harness, protocol: ProtocolVersion, reason: ReasonCode) {
    assert_eq!(violation_reason(&h.events()), reason);
    let expected = match protocol {
        V5 => vec![disconnect_packet(reason)],
        V3 => vec![],
    };
    assert_eq!(h.sent(), expected);
    assert!(!h.session.is_connected());
    assert_eq!(h.session.poll_timeout(), None);
}

fn connack_props(f: impl FnOnce(&mut ConnAckProperties)) -> ConnAckProperties {
    let mut p = ConnAckProperties::default();
    f(&mut p);
    p
}

// ---------------------------------------------------------------------------------------
// 1. CONNECT
// ---------------------------------------------------------------------------------------

fn will() -> Will {
    Will {
        topic: topic("gw/status"),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: WillProperties::default(),
    }
}

fn user_property() -> UserProperty {
    UserProperty {
        name: mstr("site"),
        value: mstr("north"),
    }
}

#[test]
fn connect_v5_carries_identity_will_credentials_and_every_configured_property() {
    let mut h = Harness::with(V5, |c| {
        c.keep_alive = 30;
        c.username = Some(mstr("user"));
        c.password = Some(Bytes::from_static(b"secret"));
        c.will = Some(will());
        c.session_expiry_interval = 3600;
        c.receive_maximum = nz16(20);
        c.maximum_packet_size = 4096;
        c.topic_alias_maximum = 8;
        c.user_properties = vec![user_property()];
    });
    let connect = h.open();
    assert_eq!(
        connect,
        Connect {
            protocol: V5,
            clean_start: true,
            keep_alive: 30,
            client_id: mstr("gw-1"),
            will: Some(will()),
            username: Some(mstr("user")),
            password: Some(Bytes::from_static(b"secret")),
            properties: ConnectProperties {
                session_expiry_interval: Some(3600),
                receive_maximum: Some(nz16(20)),
                maximum_packet_size: NonZeroU32::new(4096),
                topic_alias_maximum: Some(8),
                user_properties: vec![user_property()],
                ..ConnectProperties::default()
            },
        }
    );
    assert!(h.events().is_empty(), "nothing happens before CONNACK");
}

#[test]
fn connect_v5_leaves_out_a_zero_session_expiry_and_a_zero_topic_alias_maximum() {
    let mut h = Harness::with(V5, |c| {
        c.session_expiry_interval = 0;
        c.topic_alias_maximum = 0;
    });
    let props = h.open().properties;
    assert_eq!(props.session_expiry_interval, None);
    assert_eq!(props.topic_alias_maximum, None);
    // The defaults of ClientConfig::new still go out.
    assert_eq!(props.receive_maximum, Some(nz16(100)));
    assert_eq!(props.maximum_packet_size, NonZeroU32::new(1 << 20));
}

#[test]
fn connect_v311_carries_the_same_fields_and_no_properties() {
    let mut h = Harness::with(V3, |c| {
        c.clean_start = false;
        c.keep_alive = 15;
        c.username = Some(mstr("user"));
        c.password = Some(Bytes::from_static(b"pw"));
        c.will = Some(will());
        c.session_expiry_interval = 3600;
        c.user_properties = vec![user_property()];
    });
    let connect = h.open();
    assert_eq!(connect.protocol, V3);
    assert!(!connect.clean_start);
    assert_eq!(connect.keep_alive, 15);
    assert_eq!(connect.client_id, mstr("gw-1"));
    assert_eq!(connect.will, Some(will()));
    assert_eq!(connect.username, Some(mstr("user")));
    assert_eq!(connect.password, Some(Bytes::from_static(b"pw")));
    assert_eq!(connect.properties, ConnectProperties::default());
    // And the CONNECT is one the 3.1.1 encoder accepts.
    let mut buf = BytesMut::new();
    codec::encode(&Packet::Connect(Box::new(connect)), V3, &mut buf).unwrap();
}

// ---------------------------------------------------------------------------------------
// 2. Waiting for CONNACK
// ---------------------------------------------------------------------------------------

#[test]
fn no_connack_within_the_response_timeout_ends_with_connect_timeout() {
    for protocol in BOTH {
        let mut h = Harness::with(protocol, |c| c.response_timeout = Duration::from_secs(5));
        let start = h.now;
        h.open();
        assert_eq!(
            h.session.poll_timeout(),
            Some(start + Duration::from_secs(5))
        );
        h.advance(4);
        assert!(h.events().is_empty(), "{protocol}: still waiting after 4 s");
        h.advance(1);
        assert_eq!(
            h.events(),
            [Event::Disconnected(DisconnectCause::ConnectTimeout)]
        );
        assert!(h.sent().is_empty());
        assert_eq!(h.session.poll_timeout(), None);
        // The driver closes the transport: no second event.
        h.close();
        assert!(h.events().is_empty());
        // A CONNACK arriving now is for a dead connection and changes nothing.
        h.recv(Packet::ConnAck(ConnAck::default()));
        assert!(h.events().is_empty());
        assert!(!h.session.is_connected());
    }
}

#[test]
fn a_packet_other_than_connack_first_is_a_protocol_violation() {
    for protocol in BOTH {
        let mut h = Harness::of(protocol);
        h.open();
        h.recv(puback(1));
        assert_violation(&mut h, protocol, ReasonCode::PROTOCOL_ERROR);
    }
}

#[test]
fn a_pingresp_before_connack_is_a_protocol_violation_too() {
    for protocol in BOTH {
        let mut h = Harness::of(protocol);
        h.open();
        h.recv(Packet::PingResp);
        assert_violation(&mut h, protocol, ReasonCode::PROTOCOL_ERROR);
    }
}

#[test]
fn a_second_connack_is_a_protocol_violation() {
    let mut h = Harness::connected(V5);
    h.recv(Packet::ConnAck(ConnAck::default()));
    assert_violation(&mut h, V5, ReasonCode::PROTOCOL_ERROR);
}

// ---------------------------------------------------------------------------------------
// 3. CONNACK refused
// ---------------------------------------------------------------------------------------

#[test]
fn a_refused_connack_reports_connection_refused_with_its_reason_and_string() {
    let mut h = Harness::of(V5);
    h.open();
    h.recv(Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        properties: connack_props(|p| p.reason_string = Some(mstr("who are you"))),
    }));
    assert_eq!(
        h.events(),
        [Event::ConnectionRefused {
            reason: ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            reason_string: Some(mstr("who are you")),
        }]
    );
    assert!(!h.session.is_connected());
    assert_eq!(h.session.poll_timeout(), None, "no CONNACK deadline left");
    h.close();
    assert!(
        h.events().is_empty(),
        "the refusal already ended the connection"
    );
}

#[test]
fn v311_connack_return_codes_arrive_as_their_v5_reason_codes() {
    let mapping = [
        (1, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION),
        (2, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
        (3, ReasonCode::SERVER_UNAVAILABLE),
        (4, ReasonCode::BAD_USER_NAME_OR_PASSWORD),
        (5, ReasonCode::NOT_AUTHORIZED),
    ];
    for (wire, reason) in mapping {
        let mut h = Harness::of(V3);
        h.open();
        // The bytes a 3.1.1 broker sends, through the codec as the driver would.
        let mut buf = BytesMut::from(&[0x20, 0x02, 0x00, wire][..]);
        let connack = codec::decode(&mut buf, 1024, V3).unwrap().unwrap();
        h.recv(connack);
        assert_eq!(
            h.events(),
            [Event::ConnectionRefused {
                reason,
                reason_string: None,
            }],
            "3.1.1 return code {wire}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 4. Keep-alive
// ---------------------------------------------------------------------------------------

#[test]
fn silence_for_keep_alive_seconds_sends_pingreq() {
    for protocol in BOTH {
        let mut h = Harness::connected(protocol);
        // The CONNECT was the last packet sent; keep-alive is 60 s.
        assert_eq!(
            h.session.poll_timeout(),
            Some(h.now + Duration::from_secs(60))
        );
        h.advance(59);
        assert!(h.sent().is_empty(), "{protocol}");
        h.advance(1);
        assert_eq!(h.sent(), [Packet::PingReq], "{protocol}");
        assert!(h.events().is_empty());
        assert!(h.session.is_connected());
    }
}

#[test]
fn sending_another_packet_postpones_the_ping() {
    for protocol in BOTH {
        let mut h = Harness::connected(protocol);
        h.advance(50);
        h.publish("t", QoS::AtMostOnce);
        h.sent();
        h.events();
        h.advance(59);
        assert!(h.sent().is_empty(), "{protocol}: 59 s after the PUBLISH");
        h.advance(1);
        assert_eq!(h.sent(), [Packet::PingReq], "{protocol}");
    }
}

#[test]
fn receiving_packets_does_not_postpone_the_ping() {
    let mut h = Harness::connected(V5);
    h.advance(30);
    h.recv(Packet::Publish(inbound("t", QoS::AtMostOnce, None)));
    h.events();
    h.advance(30);
    assert_eq!(h.sent(), [Packet::PingReq]);
}

#[test]
fn pingresp_clears_the_deadline_and_the_next_ping_comes_keep_alive_later() {
    for protocol in BOTH {
        let mut h = Harness::connected(protocol);
        h.advance(60);
        assert_eq!(h.sent(), [Packet::PingReq]);
        let pinged = h.now;
        assert_eq!(
            h.session.poll_timeout(),
            Some(pinged + Duration::from_secs(10))
        );
        h.advance(9);
        h.recv(Packet::PingResp);
        assert_eq!(
            h.session.poll_timeout(),
            Some(pinged + Duration::from_secs(60))
        );
        h.advance(51);
        assert!(
            h.events().is_empty(),
            "{protocol}: the answered ping ends nothing"
        );
        assert_eq!(h.sent(), [Packet::PingReq]);
    }
}

#[test]
fn no_pingresp_within_the_response_timeout_ends_with_keep_alive_timeout() {
    for protocol in BOTH {
        let mut h = Harness::connected(protocol);
        h.advance(60);
        assert_eq!(h.sent(), [Packet::PingReq]);
        // Other traffic does not stand in for the PINGRESP.
        h.recv(Packet::Publish(inbound("t", QoS::AtMostOnce, None)));
        h.events();
        h.advance(9);
        assert!(h.events().is_empty());
        h.advance(1);
        assert_eq!(
            h.events(),
            [Event::Disconnected(DisconnectCause::KeepAliveTimeout)],
            "{protocol}"
        );
        assert!(
            h.sent().is_empty(),
            "{protocol}: no packet after a dead link"
        );
        assert!(!h.session.is_connected());
        assert_eq!(h.session.poll_timeout(), None);
        h.close();
        assert!(h.events().is_empty());
    }
}

#[test]
fn keep_alive_zero_never_pings_and_needs_no_timeout_when_connected() {
    for protocol in BOTH {
        let mut h = Harness::with(protocol, |c| c.keep_alive = 0);
        let connect = h.open();
        assert_eq!(connect.keep_alive, 0);
        assert!(h.session.poll_timeout().is_some(), "the CONNACK deadline");
        h.recv(Packet::ConnAck(ConnAck::default()));
        h.expect_connected(false);
        assert_eq!(h.session.poll_timeout(), None, "{protocol}");
        h.advance(100_000);
        assert!(h.sent().is_empty());
        assert!(h.events().is_empty());
    }
}

#[test]
fn v5_server_keep_alive_in_connack_replaces_ours_for_that_connection() {
    let mut h = Harness::of(V5);
    h.connect_with(false, connack_props(|p| p.server_keep_alive = Some(10)));
    h.expect_connected(false);
    h.advance(9);
    assert!(h.sent().is_empty());
    h.advance(1);
    assert_eq!(h.sent(), [Packet::PingReq]);
    h.recv(Packet::PingResp);

    // The next connection asks for ours again, and a Server Keep Alive of 0 turns it off.
    h.close();
    h.events();
    assert_eq!(h.open().keep_alive, 60);
    h.recv(Packet::ConnAck(ConnAck {
        properties: connack_props(|p| p.server_keep_alive = Some(0)),
        ..ConnAck::default()
    }));
    h.expect_connected(false);
    assert_eq!(h.session.poll_timeout(), None);
    h.advance(1000);
    assert!(h.sent().is_empty());
}

// ---------------------------------------------------------------------------------------
// 5. Outbound QoS 1 and QoS 2
// ---------------------------------------------------------------------------------------

#[test]
fn qos1_publish_gets_a_packet_id_and_puback_reports_delivered() {
    for protocol in BOTH {
        let mut h = Harness::connected(protocol);
        let token = h.publish("sensors/t", QoS::AtLeastOnce);
        let wire = only_publish(&h.sent());
        assert_eq!(wire.packet_id, Some(pid(1)));
        assert_eq!(wire.qos, QoS::AtLeastOnce);
        assert!(!wire.dup);
        assert_eq!(wire.topic, topic("sensors/t"));
        assert_eq!(wire.payload, Bytes::from_static(b"22.5"));
        assert!(h.events().is_empty(), "not delivered before PUBACK");
        assert_eq!(h.session.inflight_len(), 1);

        h.recv(puback(1));
        assert_eq!(h.events(), [Event::Delivered(token)], "{protocol}");
        assert!(h.sent().is_empty());
        assert_eq!(h.session.inflight_len(), 0);

        // Ids are taken from the free set, moving forward.
        h.publish("sensors/t", QoS::AtLeastOnce);
        assert_eq!(only_publish(&h.sent()).packet_id, Some(pid(2)));
    }
}

#[test]
fn publish_ignores_the_callers_packet_id_and_dup() {
    let mut h = Harness::connected(V5);
    let mut m = message("t", QoS::AtLeastOnce);
    m.packet_id = Some(pid(999));
    m.dup = true;
    h.publish_msg(m).unwrap();
    let wire = only_publish(&h.sent());
    assert_eq!(wire.packet_id, Some(pid(1)));
    assert!(!wire.dup);
}

#[test]
fn puback_with_a_failure_code_reports_publish_failed() {
    let mut h = Harness::connected(V5);
    let token = h.publish("t", QoS::AtLeastOnce);
    h.sent();
    h.recv(Packet::PubAck(response(1, ReasonCode::NOT_AUTHORIZED)));
    assert_eq!(
        h.events(),
        [Event::PublishFailed {
            token,
            reason: ReasonCode::NOT_AUTHORIZED,
        }]
    );
    assert_eq!(h.session.inflight_len(), 0);
    assert!(h.sent().is_empty(), "a refused message is not retried");
}

#[test]
fn puback_no_matching_subscribers_is_still_delivered() {
    let mut h = Harness::connected(V5);
    let token = h.publish("t", QoS::AtLeastOnce);
    h.sent();
    h.recv(Packet::PubAck(response(
        1,
        ReasonCode::NO_MATCHING_SUBSCRIBERS,
    )));
    assert_eq!(h.events(), [Event::Delivered(token)]);
}

#[test]
fn a_duplicate_or_late_puback_is_ignored() {
    for protocol in BOTH {
        let mut h = Harness::connected(protocol);
        let token = h.publish("t", QoS::AtLeastOnce);
        h.sent();
        h.recv(puback(1));
        assert_eq!(h.events(), [Event::Delivered(token)]);
        h.recv(puback(1));
        h.recv(puback(77));
        assert!(h.events().is_empty(), "{protocol}");
        assert!(h.sent().is_empty());
        assert!(h.session.is_connected());
    }
}

#[test]
fn acks_of_the_wrong_kind_do_not_complete_a_message() {
    let mut h = Harness::connected(V5);
    let qos2 = h.publish("t", QoS::ExactlyOnce);
    h.sent();
    // PUBACK for a QoS 2 message, PUBCOMP before PUBREC: both ignored.
    h.recv(puback(1));
    h.recv(pubcomp(1));
    assert!(h.events().is_empty());
    assert_eq!(h.session.inflight_len(), 1);
    // The proper flow still completes it.
    h.recv(pubrec(1));
    assert_eq!(h.sent(), [pubrel(1)]);
    h.recv(pubcomp(1));
    assert_eq!(h.events(), [Event::Delivered(qos2)]);
}

#[test]
fn qos2_publish_pubrec_sends_pubrel_and_pubcomp_reports_delivered() {
    for protocol in BOTH {
        let mut h = Harness::connected(protocol);
        let token = h.publish("t", QoS::ExactlyOnce);
        let wire = only_publish(&h.sent());
        assert_eq!((wire.qos, wire.packet_id), (QoS::ExactlyOnce, Some(pid(1))));
        h.recv(pubrec(1));
        assert_eq!(h.sent(), [pubrel(1)], "{protocol}");
        assert!(h.events().is_empty(), "not delivered before PUBCOMP");
        // A repeated PUBREC gets the PUBREL again.
        h.recv(pubrec(1));
        assert_eq!(h.sent(), [pubrel(1)]);
        h.recv(pubcomp(1));
        assert_eq!(h.events(), [Event::Delivered(token)], "{protocol}");
        assert_eq!(h.session.inflight_len(), 0);
        // A late PUBCOMP is ignored.
        h.recv(pubcomp(1));
        assert!(h.events().is_empty());
        assert!(h.sent().is_empty());
    }
}

#[test]
fn pubrec_with_a_failure_code_reports_publish_failed_and_sends_no_pubrel() {
    let mut h = Harness::connected(V5);
    let token = h.publish("t", QoS::ExactlyOnce);
    h.sent();
    h.recv(Packet::PubRec(response(1, ReasonCode::QUOTA_EXCEEDED)));
    assert_eq!(
        h.events(),
        [Event::PublishFailed {
            token,
            reason: ReasonCode::QUOTA_EXCEEDED,
        }]
    );
    assert!(h.sent().is_empty(), "no PUBREL after a refusing PUBREC");
    assert_eq!(h.session.inflight_len(), 0);
}

#[test]
fn pubrec_for_an_unknown_id_is_answered_with_pubrel() {
    let mut h = Harness::connected(V5);
    h.recv(pubrec(9));
    assert_eq!(
        h.sent(),
        [Packet::PubRel(response(
            9,
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        ))]
    );
    assert!(h.events().is_empty());
    assert!(h.session.is_connected());

    let mut h = Harness::connected(V3);
    h.recv(pubrec(9));
    assert_eq!(h.sent(), [pubrel(9)], "3.1.1 has no reason code to say so");
}

#[test]
fn pubrec_for_a_qos1_message_does_not_touch_it() {
    let mut h = Harness::connected(V5);
    let token = h.publish("t", QoS::AtLeastOnce);
    h.sent();
    h.recv(pubrec(1));
    assert_eq!(
        h.sent(),
        [Packet::PubRel(response(
            1,
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        ))]
    );
    h.recv(puback(1));
    assert_eq!(h.events(), [Event::Delivered(token)]);
}

// ---------------------------------------------------------------------------------------
// 6. QoS 0
// ---------------------------------------------------------------------------------------

#[test]
fn qos0_publish_while_offline_is_refused_with_not_connected() {
    for protocol in BOTH {
        let mut h = Harness::of(protocol);
        assert_eq!(
            h.publish_msg(message("t", QoS::AtMostOnce)),
            Err(SessionError::NotConnected)
        );
        h.open();
        assert_eq!(
            h.publish_msg(message("t", QoS::AtMostOnce)),
            Err(SessionError::NotConnected),
            "{protocol}: not before CONNACK either"
        );
        assert!(h.sent().is_empty());
        assert_eq!(h.session.pending_len(), 0, "QoS 0 is never kept");
    }
}

#[test]
fn qos0_publish_while_connected_is_sent_and_delivered_at_once() {
    for protocol in BOTH {
        let mut h = Harness::connected(protocol);
        let token = h.publish("t", QoS::AtMostOnce);
        let wire = only_publish(&h.sent());
        assert_eq!(wire.qos, QoS::AtMostOnce);
        assert_eq!(wire.packet_id, None);
        assert!(!wire.dup);
        assert_eq!(h.events(), [Event::Delivered(token)], "{protocol}");
        assert_eq!(h.session.inflight_len(), 0);
    }
}

#[test]
fn publish_tokens_are_never_reused() {
    let mut h = Harness::connected(V5);
    let a = h.publish("t", QoS::AtMostOnce);
    let b = h.publish("t", QoS::AtLeastOnce);
    let c = h.subscribe(&["x"]);
    let d = h.publish("t", QoS::ExactlyOnce);
    let all = [a.0, b.0, c.0, d.0];
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len());
}

// ---------------------------------------------------------------------------------------
// 7. Inflight window and pending queue
// ---------------------------------------------------------------------------------------

#[test]
fn with_server_receive_maximum_2_only_two_publishes_are_in_flight() {
    let mut h = Harness::of(V5);
    h.connect_with(false, connack_props(|p| p.receive_maximum = Some(nz16(2))));
    h.expect_connected(false);
    let t1 = h.publish("t", QoS::AtLeastOnce);
    let _t2 = h.publish("t", QoS::ExactlyOnce);
    let t3 = h.publish("t", QoS::AtLeastOnce);
    let wire = publishes(&h.sent());
    assert_eq!(
        wire.iter().map(|p| p.packet_id).collect::<Vec<_>>(),
        [Some(pid(1)), Some(pid(2))]
    );
    assert_eq!((h.session.inflight_len(), h.session.pending_len()), (2, 1));

    h.recv(puback(1));
    assert_eq!(h.events(), [Event::Delivered(t1)]);
    let third = only_publish(&h.sent());
    assert_eq!(third.packet_id, Some(pid(3)));
    assert_eq!((h.session.inflight_len(), h.session.pending_len()), (2, 0));
    h.recv(puback(3));
    assert_eq!(h.events(), [Event::Delivered(t3)]);
}

#[test]
fn a_qos2_message_holds_its_window_slot_until_pubcomp() {
    let mut h = Harness::of(V5);
    h.connect_with(false, connack_props(|p| p.receive_maximum = Some(nz16(1))));
    h.events();
    h.publish("t", QoS::ExactlyOnce);
    h.publish("t", QoS::AtLeastOnce);
    assert_eq!(publishes(&h.sent()).len(), 1);
    h.recv(pubrec(1));
    assert_eq!(h.sent(), [pubrel(1)], "PUBREC alone does not free the slot");
    h.recv(pubcomp(1));
    assert_eq!(only_publish(&h.sent()).qos, QoS::AtLeastOnce);
}

#[test]
fn qos0_publishes_do_not_wait_for_the_window() {
    let mut h = Harness::of(V5);
    h.connect_with(false, connack_props(|p| p.receive_maximum = Some(nz16(1))));
    h.events();
    h.publish("t", QoS::AtLeastOnce);
    h.publish("t", QoS::AtLeastOnce);
    h.sent();
    let token = h.publish("t", QoS::AtMostOnce);
    assert_eq!(only_publish(&h.sent()).qos, QoS::AtMostOnce);
    assert_eq!(h.events(), [Event::Delivered(token)]);
}

#[test]
fn when_max_pending_is_reached_publish_is_refused_with_queue_full() {
    for protocol in BOTH {
        let mut h = Harness::with(protocol, |c| c.max_pending = 2);
        h.publish("t", QoS::AtLeastOnce);
        h.publish("t", QoS::ExactlyOnce);
        assert!(!h.session.can_accept_publish());
        assert_eq!(
            h.publish_msg(message("t", QoS::AtLeastOnce)),
            Err(SessionError::QueueFull(2)),
            "{protocol}"
        );
        assert_eq!(h.session.pending_len(), 2);
        // Once they are on the wire, there is room again.
        h.connect(false);
        assert!(h.session.can_accept_publish());
        h.publish("t", QoS::AtLeastOnce);
    }
}

#[test]
fn max_pending_counts_messages_waiting_for_the_window() {
    let mut h = Harness::with(V5, |c| c.max_pending = 1);
    h.connect_with(false, connack_props(|p| p.receive_maximum = Some(nz16(1))));
    h.publish("t", QoS::AtLeastOnce);
    h.publish("t", QoS::AtLeastOnce);
    assert_eq!(
        h.publish_msg(message("t", QoS::AtLeastOnce)),
        Err(SessionError::QueueFull(1))
    );
    h.sent();
    h.recv(puback(1));
    assert!(h.session.can_accept_publish());
}

#[test]
fn publishes_made_before_connecting_go_out_after_connack_in_order() {
    for protocol in BOTH {
        let mut h = Harness::of(protocol);
        let a = h.publish("a", QoS::AtLeastOnce);
        let b = h.publish("b", QoS::ExactlyOnce);
        assert_eq!(h.session.pending_len(), 2);
        assert!(h.sent().is_empty(), "nothing to send to");
        h.open();
        assert!(h.sent().is_empty(), "nothing before CONNACK");
        h.recv(Packet::ConnAck(ConnAck::default()));
        let wire = publishes(&h.sent());
        assert_eq!(
            wire.iter()
                .map(|p| (p.topic.as_str(), p.packet_id))
                .collect::<Vec<_>>(),
            [("a", Some(pid(1))), ("b", Some(pid(2)))],
            "{protocol}"
        );
        h.recv(puback(1));
        h.recv(pubrec(2));
        h.recv(pubcomp(2));
        assert_eq!(
            h.events(),
            [
                Event::Connected {
                    session_present: false
                },
                Event::Delivered(a),
                Event::Delivered(b)
            ]
        );
    }
}

// ---------------------------------------------------------------------------------------
// 8. Reconnects: resends and restarts
// ---------------------------------------------------------------------------------------

#[test]
fn with_session_present_unacked_messages_are_resent_with_dup_same_ids_in_order() {
    for protocol in BOTH {
        let mut h = Harness::persistent(protocol);
        h.connect(false);
        h.events();
        let a = h.publish("a", QoS::AtLeastOnce);
        let b = h.publish("b", QoS::ExactlyOnce);
        let c = h.publish("c", QoS::ExactlyOnce);
        let d = h.publish("d", QoS::AtLeastOnce);
        let originals = publishes(&h.sent());
        h.recv(pubrec(3));
        assert_eq!(h.sent(), [pubrel(3)]);
        h.close();
        assert_eq!(
            h.events(),
            [Event::Disconnected(DisconnectCause::ConnectionLost)]
        );
        assert_eq!(h.session.inflight_len(), 4, "kept for the next connection");

        let resent = h.connect(true);
        let dup = |p: &Publish| {
            Packet::Publish(Publish {
                dup: true,
                ..p.clone()
            })
        };
        assert_eq!(
            resent,
            [
                dup(&originals[0]),
                dup(&originals[1]),
                pubrel(3),
                dup(&originals[3])
            ],
            "{protocol}"
        );
        h.expect_connected(true);

        h.recv(puback(1));
        h.recv(pubrec(2));
        assert_eq!(h.sent(), [pubrel(2)]);
        h.recv(pubcomp(2));
        h.recv(pubcomp(3));
        h.recv(puback(4));
        assert_eq!(
            h.events(),
            [
                Event::Delivered(a),
                Event::Delivered(b),
                Event::Delivered(c),
                Event::Delivered(d)
            ]
        );
    }
}

#[test]
fn with_session_present_a_subscribe_whose_suback_was_lost_is_sent_again() {
    for protocol in BOTH {
        let mut h = Harness::persistent(protocol);
        h.connect(false);
        h.events();
        let token = h.subscribe(&["a/#", "b"]);
        let first = only_subscribe(&h.sent());
        h.close();
        h.events();
        let again = only_subscribe(&h.connect(true));
        assert_eq!(again.subscriptions, first.subscriptions, "{protocol}");
        h.expect_connected(true);
        let codes = [ReasonCode::GRANTED_QOS_1, ReasonCode::GRANTED_QOS_1];
        // The old id is no longer awaited: only the new one is answered.
        h.recv(suback(again.packet_id, &codes));
        assert_eq!(
            h.events(),
            [Event::Subscribed {
                token,
                reason_codes: codes.to_vec(),
            }]
        );
    }
}

#[test]
fn with_session_present_an_unsubscribe_whose_unsuback_was_lost_is_sent_again() {
    let mut h = Harness::persistent(V5);
    h.connect(false);
    h.events();
    let sub = h.subscribe(&["a"]);
    let unsub = h.unsubscribe(&["a"]);
    let sent = h.sent();
    assert!(matches!(
        sent.as_slice(),
        [Packet::Subscribe(_), Packet::Unsubscribe(_)]
    ));
    h.close();
    h.events();
    let resent = h.connect(true);
    // Both again, in the order they were first sent.
    let (s, u) = match resent.as_slice() {
        [Packet::Subscribe(s), Packet::Unsubscribe(u)] => (s.clone(), u.clone()),
        other => panic!("expected SUBSCRIBE then UNSUBSCRIBE, got {other:?}"),
    };
    h.events();
    h.recv(suback(s.packet_id, &[ReasonCode::GRANTED_QOS_1]));
    h.recv(unsuback(u.packet_id, &[ReasonCode::SUCCESS]));
    assert_eq!(
        h.events(),
        [
            Event::Subscribed {
                token: sub,
                reason_codes: vec![ReasonCode::GRANTED_QOS_1],
            },
            Event::Unsubscribed {
                token: unsub,
                reason_codes: vec![ReasonCode::SUCCESS],
            }
        ]
    );
}

/// A server whose new Receive Maximum is smaller than what is in flight gets the resends
/// as its window allows, in order and before new messages ([MQTT-3.3.4-7]); all at once
/// it would close the connection (Receive Maximum exceeded), again at every reconnect.
#[test]
fn with_session_present_resends_respect_a_smaller_receive_maximum() {
    let mut h = Harness::persistent(V5);
    h.connect(false);
    h.events();
    let a = h.publish("a", QoS::AtLeastOnce);
    let b = h.publish("b", QoS::ExactlyOnce);
    let c = h.publish("c", QoS::AtLeastOnce);
    h.sent();
    h.recv(pubrec(2));
    assert_eq!(h.sent(), [pubrel(2)]);
    h.close();
    h.events();

    let one = connack_props(|p| p.receive_maximum = Some(nz16(1)));
    let resent = only_publish(&h.connect_with(true, one));
    assert_eq!((resent.packet_id, resent.dup), (Some(pid(1)), true));
    h.expect_connected(true);
    let d = h.publish("d", QoS::AtLeastOnce);
    assert!(h.sent().is_empty(), "the window is full");

    h.recv(puback(1));
    assert_eq!(h.sent(), [pubrel(2)]);
    h.recv(pubcomp(2));
    let resent = only_publish(&h.sent());
    assert_eq!((resent.packet_id, resent.dup), (Some(pid(3)), true));
    h.recv(puback(3));
    let new = only_publish(&h.sent());
    assert_eq!((new.topic.as_str(), new.dup), ("d", false));
    h.recv(Packet::PubAck(PubResponse::success(new.packet_id.unwrap())));
    assert_eq!(
        h.events(),
        [
            Event::Delivered(a),
            Event::Delivered(b),
            Event::Delivered(c),
            Event::Delivered(d)
        ]
    );
}

/// Requests whose answers a lost connection swallowed go out again in the order they were
/// first sent, also when their packet ids wrapped past 65535 in between: sending an
/// UNSUBSCRIBE before the SUBSCRIBE of the same filter would invert the outcome.
#[test]
fn unanswered_requests_are_sent_again_in_their_order_across_the_packet_id_wrap() {
    let mut h = Harness::persistent(V5);
    h.connect(false);
    h.events();
    // Walk the id pool up to 65534 with QoS 1 round trips.
    for n in 1..u16::MAX {
        h.publish("t", QoS::AtLeastOnce);
        assert_eq!(only_publish(&h.sent()).packet_id, Some(pid(n)));
        h.recv(puback(n));
        h.events();
    }
    let sub = h.subscribe(&["a"]);
    let unsub = h.unsubscribe(&["a"]);
    let ids: Vec<u16> = h
        .sent()
        .iter()
        .map(|p| match p {
            Packet::Subscribe(s) => s.packet_id.get(),
            Packet::Unsubscribe(u) => u.packet_id.get(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        ids,
        [u16::MAX, 1],
        "the UNSUBSCRIBE got the id after the wrap"
    );
    h.close();
    h.events();
    let (s, u) = match h.connect(true).as_slice() {
        [Packet::Subscribe(s), Packet::Unsubscribe(u)] => (s.clone(), u.clone()),
        other => panic!("expected SUBSCRIBE then UNSUBSCRIBE, got {other:?}"),
    };
    h.events();
    h.recv(suback(s.packet_id, &[ReasonCode::GRANTED_QOS_1]));
    h.recv(unsuback(u.packet_id, &[ReasonCode::SUCCESS]));
    assert_eq!(
        h.events(),
        [
            Event::Subscribed {
                token: sub,
                reason_codes: vec![ReasonCode::GRANTED_QOS_1],
            },
            Event::Unsubscribed {
                token: unsub,
                reason_codes: vec![ReasonCode::SUCCESS],
            }
        ]
    );
}

#[test]
fn without_session_present_unacked_messages_restart_as_new_and_pubrecd_ones_count_as_delivered() {
    for protocol in BOTH {
        let mut h = Harness::persistent(protocol);
        h.connect(false);
        h.events();
        let a = h.publish("a", QoS::AtLeastOnce);
        let b = h.publish("b", QoS::ExactlyOnce);
        let c = h.publish("c", QoS::ExactlyOnce);
        h.sent();
        h.recv(pubrec(3));
        assert_eq!(h.sent(), [pubrel(3)]);
        h.close();
        h.events();

        let restarted = h.connect(false);
        let events = h.events();
        assert!(
            events.contains(&Event::Delivered(c)),
            "{protocol}: {events:?}"
        );
        assert!(events.contains(&Event::Connected {
            session_present: false
        }));
        assert_eq!(events.len(), 2, "{events:?}");
        // A and B as new messages (no DUP), in their order; C is the server's already, so
        // neither its PUBLISH nor its PUBREL is sent again.
        let wire = publishes(&restarted);
        assert_eq!(wire.len(), restarted.len(), "only PUBLISH: {restarted:?}");
        assert_eq!(
            wire.iter()
                .map(|p| (p.topic.as_str(), p.qos, p.dup))
                .collect::<Vec<_>>(),
            [
                ("a", QoS::AtLeastOnce, false),
                ("b", QoS::ExactlyOnce, false)
            ],
            "{protocol}"
        );
        let (ia, ib) = (wire[0].packet_id.unwrap(), wire[1].packet_id.unwrap());
        assert_ne!(ia, ib);
        h.recv(Packet::PubAck(PubResponse::success(ia)));
        h.recv(Packet::PubRec(PubResponse::success(ib)));
        assert_eq!(h.sent(), [Packet::PubRel(PubResponse::success(ib))]);
        h.recv(Packet::PubComp(PubResponse::success(ib)));
        assert_eq!(h.events(), [Event::Delivered(a), Event::Delivered(b)]);
        assert_eq!(h.session.inflight_len(), 0);
    }
}

#[test]
fn without_session_present_granted_subscriptions_are_made_again() {
    for protocol in BOTH {
        let mut h = Harness::persistent(protocol);
        h.connect(false);
        h.events();
        let token = h.subscribe(&["a/#", "b"]);
        let s = only_subscribe(&h.sent());
        // "b" is refused: only "a/#" is the server's.
        h.recv(suback(
            s.packet_id,
            &[ReasonCode::GRANTED_QOS_1, ReasonCode::UNSPECIFIED_ERROR],
        ));
        assert_eq!(
            h.events(),
            [Event::Subscribed {
                token,
                reason_codes: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::UNSPECIFIED_ERROR],
            }]
        );

        // With the session kept, nothing needs remaking.
        h.close();
        h.events();
        assert!(h.connect(true).is_empty(), "{protocol}");
        h.events();

        // Without it, the granted filter is subscribed again, with its options.
        h.close();
        h.events();
        let again = only_subscribe(&h.connect(false));
        assert_eq!(again.subscriptions, [subscription("a/#", QoS::AtLeastOnce)]);
        h.expect_connected(false);
        h.recv(suback(again.packet_id, &[ReasonCode::GRANTED_QOS_1]));
        assert_eq!(
            h.events(),
            [Event::Resubscribed {
                reason_codes: vec![ReasonCode::GRANTED_QOS_1],
            }]
        );

        // And again after another lost session: the resubscription was remembered.
        h.close();
        h.events();
        let third = only_subscribe(&h.connect(false));
        assert_eq!(third.subscriptions, again.subscriptions, "{protocol}");
    }
}

#[test]
fn an_unsubscribed_filter_is_not_made_again() {
    let mut h = Harness::persistent(V5);
    h.connect(false);
    h.events();
    h.subscribe(&["a", "b"]);
    let s = only_subscribe(&h.sent());
    h.recv(suback(s.packet_id, &[ReasonCode::GRANTED_QOS_1; 2]));
    h.unsubscribe(&["a"]);
    let u = only_unsubscribe(&h.sent());
    h.recv(unsuback(u.packet_id, &[ReasonCode::SUCCESS]));
    h.close();
    h.events();
    let again = only_subscribe(&h.connect(false));
    assert_eq!(again.subscriptions, [subscription("b", QoS::AtLeastOnce)]);
}

/// The subscription must not come back because its SUBACK arrived after `unsubscribe` was
/// called: the server processed the UNSUBSCRIBE after the SUBSCRIBE.
#[test]
fn a_filter_unsubscribed_before_its_suback_arrived_is_not_made_again() {
    for protocol in BOTH {
        let mut h = Harness::persistent(protocol);
        h.connect(false);
        h.events();
        h.subscribe(&["a"]);
        h.unsubscribe(&["a"]);
        let (s, u) = match h.sent().as_slice() {
            [Packet::Subscribe(s), Packet::Unsubscribe(u)] => (s.clone(), u.clone()),
            other => panic!("expected SUBSCRIBE then UNSUBSCRIBE, got {other:?}"),
        };
        h.recv(suback(s.packet_id, &[ReasonCode::GRANTED_QOS_1]));
        let codes: &[ReasonCode] = match protocol {
            V5 => &[ReasonCode::SUCCESS],
            V3 => &[],
        };
        h.recv(unsuback(u.packet_id, codes));
        h.close();
        h.events();
        assert_eq!(
            h.connect(false),
            [],
            "{protocol}: nothing to subscribe again"
        );
    }
}

/// The same race when the session itself re-makes the subscription after a lost session.
#[test]
fn a_filter_unsubscribed_while_its_resubscription_is_in_flight_is_not_made_again() {
    let mut h = Harness::persistent(V5);
    h.connect(false);
    h.events();
    h.subscribe(&["a"]);
    let s = only_subscribe(&h.sent());
    h.recv(suback(s.packet_id, &[ReasonCode::GRANTED_QOS_1]));
    h.close();
    h.events();
    let resub = only_subscribe(&h.connect(false));
    h.unsubscribe(&["a"]);
    let u = only_unsubscribe(&h.sent());
    h.recv(suback(resub.packet_id, &[ReasonCode::GRANTED_QOS_1]));
    h.recv(unsuback(u.packet_id, &[ReasonCode::SUCCESS]));
    h.close();
    h.events();
    assert_eq!(h.connect(false), []);
}

#[test]
fn without_session_present_inbound_qos2_state_is_forgotten() {
    let mut h = Harness::persistent(V5);
    h.connect(false);
    h.events();
    h.recv(Packet::Publish(inbound("t", QoS::ExactlyOnce, Some(5))));
    assert_eq!(h.events().len(), 1);
    h.sent();
    h.close();
    h.events();
    h.connect(false);
    h.events();
    // Id 5 is a new message for a new session.
    h.recv(Packet::Publish(inbound("t", QoS::ExactlyOnce, Some(5))));
    assert!(matches!(h.events().as_slice(), [Event::Message(_)]));
}

#[test]
fn with_session_present_an_inbound_qos2_duplicate_is_not_delivered_again() {
    let mut h = Harness::persistent(V5);
    h.connect(false);
    h.events();
    h.recv(Packet::Publish(inbound("t", QoS::ExactlyOnce, Some(5))));
    assert_eq!(h.events().len(), 1);
    assert_eq!(h.sent(), [pubrec(5)]);
    h.close();
    h.events();
    h.connect(true);
    h.events();
    let mut dup = inbound("t", QoS::ExactlyOnce, Some(5));
    dup.dup = true;
    h.recv(Packet::Publish(dup));
    assert!(h.events().is_empty());
    assert_eq!(h.sent(), [pubrec(5)]);
    h.recv(pubrel(5));
    assert_eq!(h.sent(), [pubcomp(5)]);
}

#[test]
fn messages_in_flight_when_the_connection_drops_before_connack_are_kept() {
    let mut h = Harness::persistent(V5);
    h.connect(false);
    h.events();
    let token = h.publish("a", QoS::AtLeastOnce);
    h.sent();
    h.close();
    h.open();
    h.close(); // lost again before CONNACK
    assert_eq!(
        h.events(),
        [
            Event::Disconnected(DisconnectCause::ConnectionLost),
            Event::Disconnected(DisconnectCause::ConnectionLost)
        ]
    );
    let resent = only_publish(&h.connect(true));
    assert!(resent.dup);
    h.recv(puback(1));
    assert_eq!(
        h.events(),
        [
            Event::Connected {
                session_present: true
            },
            Event::Delivered(token)
        ]
    );
}

// ---------------------------------------------------------------------------------------
// 9. Clean start and the client identifier across reconnects
// ---------------------------------------------------------------------------------------

/// The clean-start flag of the next `n` CONNECTs, each answered with a plain CONNACK.
fn clean_start_flags(h: &mut Harness, connack: &ConnAck, n: usize) -> Vec<bool> {
    (0..n)
        .map(|_| {
            let clean = h.open().clean_start;
            h.recv(Packet::ConnAck(connack.clone()));
            h.close();
            h.events();
            clean
        })
        .collect()
}

#[test]
fn v5_with_session_expiry_asks_for_clean_start_only_on_the_first_connection() {
    let mut h = Harness::with(V5, |c| c.session_expiry_interval = 600);
    assert_eq!(
        clean_start_flags(&mut h, &ConnAck::default(), 3),
        [true, false, false]
    );
}

#[test]
fn v5_without_session_expiry_asks_for_clean_start_every_time() {
    let mut h = Harness::with(V5, |c| c.session_expiry_interval = 0);
    assert_eq!(
        clean_start_flags(&mut h, &ConnAck::default(), 2),
        [true, true]
    );
}

#[test]
fn v5_a_server_that_shortens_session_expiry_to_zero_gets_clean_starts() {
    let mut h = Harness::with(V5, |c| c.session_expiry_interval = 600);
    let connack = ConnAck {
        properties: connack_props(|p| p.session_expiry_interval = Some(0)),
        ..ConnAck::default()
    };
    assert_eq!(clean_start_flags(&mut h, &connack, 2), [true, true]);
}

#[test]
fn v5_clean_start_false_is_never_clean() {
    let mut h = Harness::with(V5, |c| {
        c.clean_start = false;
        c.session_expiry_interval = 600;
    });
    assert_eq!(
        clean_start_flags(&mut h, &ConnAck::default(), 2),
        [false, false]
    );
}

#[test]
fn v311_clean_session_flag_follows_the_config_on_every_connection() {
    let mut h = Harness::with(V3, |c| c.clean_start = false);
    assert_eq!(
        clean_start_flags(&mut h, &ConnAck::default(), 2),
        [false, false]
    );
    let mut h = Harness::with(V3, |c| c.clean_start = true);
    assert_eq!(
        clean_start_flags(&mut h, &ConnAck::default(), 2),
        [true, true]
    );
}

#[test]
fn a_refused_or_lost_first_connection_still_asks_for_clean_start_next_time() {
    let mut h = Harness::with(V5, |c| c.session_expiry_interval = 600);
    assert!(h.open().clean_start);
    h.recv(Packet::ConnAck(ConnAck {
        reason_code: ReasonCode::SERVER_BUSY,
        ..ConnAck::default()
    }));
    h.close();
    assert!(h.open().clean_start, "no server kept a session yet");
    h.close();
    assert!(h.open().clean_start);
}

#[test]
fn the_server_assigned_client_id_is_used_on_reconnect() {
    let mut h = Harness::new(ClientConfig::new(V5, MqttString::empty()));
    assert_eq!(h.open().client_id, MqttString::empty());
    h.recv(Packet::ConnAck(ConnAck {
        properties: connack_props(|p| p.assigned_client_identifier = Some(mstr("auto-7f3a"))),
        ..ConnAck::default()
    }));
    assert_eq!(h.session.client_id(), &mstr("auto-7f3a"));
    h.close();
    assert_eq!(h.open().client_id, mstr("auto-7f3a"));
}

// ---------------------------------------------------------------------------------------
// 10. Inbound messages
// ---------------------------------------------------------------------------------------

#[test]
fn inbound_qos0_is_delivered_without_an_answer() {
    let mut h = Harness::connected(V3);
    let m = inbound("t", QoS::AtMostOnce, None);
    h.recv(Packet::Publish(m.clone()));
    assert_eq!(h.events(), [Event::Message(m)]);
    assert!(h.sent().is_empty());
}

#[test]
fn inbound_qos1_is_delivered_and_acknowledged_with_puback() {
    for protocol in BOTH {
        let mut h = Harness::connected(protocol);
        let m = inbound("t", QoS::AtLeastOnce, Some(3));
        h.recv(Packet::Publish(m.clone()));
        assert_eq!(h.events(), [Event::Message(m)], "{protocol}");
        assert_eq!(h.sent(), [puback(3)]);
    }
}

#[test]
fn inbound_qos2_is_delivered_once_and_a_duplicate_only_gets_pubrec_again() {
    for protocol in BOTH {
        let mut h = Harness::connected(protocol);
        let m = inbound("t", QoS::ExactlyOnce, Some(7));
        h.recv(Packet::Publish(m.clone()));
        assert_eq!(h.events(), [Event::Message(m.clone())], "{protocol}");
        assert_eq!(h.sent(), [pubrec(7)]);

        h.recv(Packet::Publish(Publish {
            dup: true,
            ..m.clone()
        }));
        assert!(h.events().is_empty(), "{protocol}: no second Message");
        assert_eq!(h.sent(), [pubrec(7)]);

        h.recv(pubrel(7));
        assert_eq!(h.sent(), [pubcomp(7)]);
        assert!(h.events().is_empty());

        // After PUBREL the id is free: the next PUBLISH with it is a new message.
        h.recv(Packet::Publish(m.clone()));
        assert_eq!(h.events(), [Event::Message(m)]);
    }
}

/// A persistent session whose inbound QoS 1/2 messages the application acknowledges.
fn manual(protocol: ProtocolVersion) -> Harness {
    Harness::with(protocol, |c| {
        c.session_expiry_interval = 3600;
        c.clean_start = false;
        c.manual_acks = true;
    })
}

/// The one `MessageToAck` among `events`.
fn only_to_ack(events: &[Event]) -> (Publish, InboundAck) {
    match events {
        [Event::MessageToAck(p, ack)] => (p.clone(), *ack),
        other => panic!("expected exactly one MessageToAck, got {other:?}"),
    }
}

#[test]
fn with_manual_acks_inbound_qos1_and_qos2_are_answered_only_when_the_application_acks() {
    for protocol in BOTH {
        let mut h = manual(protocol);
        h.connect(false);
        h.expect_connected(false);
        let one = inbound("t", QoS::AtLeastOnce, Some(3));
        h.recv(Packet::Publish(one.clone()));
        let (got, ack1) = only_to_ack(&h.events());
        assert_eq!(got, one, "{protocol}");
        assert!(h.sent().is_empty(), "{protocol}: no PUBACK before the ack");
        let two = inbound("u", QoS::ExactlyOnce, Some(4));
        h.recv(Packet::Publish(two.clone()));
        let (_, ack2) = only_to_ack(&h.events());
        assert!(h.sent().is_empty(), "{protocol}: no PUBREC before the ack");

        h.session.ack_message(ack1, h.now);
        assert_eq!(h.sent(), [puback(3)], "{protocol}");
        h.session.ack_message(ack1, h.now);
        assert!(h.sent().is_empty(), "{protocol}: a second ack does nothing");
        h.session.ack_message(ack2, h.now);
        assert_eq!(h.sent(), [pubrec(4)], "{protocol}");
        // The QoS 2 flow then goes on as usual: a resend only gets PUBREC again.
        h.recv(Packet::Publish(Publish {
            dup: true,
            ..two.clone()
        }));
        assert!(h.events().is_empty());
        assert_eq!(h.sent(), [pubrec(4)]);
        h.recv(pubrel(4));
        assert_eq!(h.sent(), [pubcomp(4)]);
        // QoS 0 needs no acknowledgement and comes as a plain Message.
        let zero = inbound("t", QoS::AtMostOnce, None);
        h.recv(Packet::Publish(zero.clone()));
        assert_eq!(h.events(), [Event::Message(zero)]);
    }
}

#[test]
fn with_manual_acks_a_resend_is_not_reported_twice_and_an_ack_given_offline_answers_it() {
    let mut h = manual(V5);
    h.connect(false);
    h.expect_connected(false);
    let m = inbound("t", QoS::AtLeastOnce, Some(9));
    h.recv(Packet::Publish(m.clone()));
    let (_, ack) = only_to_ack(&h.events());
    // The connection drops before the application is done: the server (which keeps our
    // session) sends the message again; the application still has it.
    h.close();
    h.events();
    assert!(h.connect(true).is_empty());
    h.expect_connected(true);
    let resend = Publish {
        dup: true,
        ..m.clone()
    };
    h.recv(Packet::Publish(resend.clone()));
    assert!(h.events().is_empty(), "the resend is not a new message");
    assert!(h.sent().is_empty());
    // Acknowledged while offline: the answer waits for the server's resend.
    h.close();
    h.events();
    h.session.ack_message(ack, h.now);
    assert!(h.sent().is_empty());
    h.connect(true);
    h.expect_connected(true);
    h.recv(Packet::Publish(resend));
    assert!(h.events().is_empty());
    assert_eq!(h.sent(), [puback(9)]);
}

#[test]
fn with_manual_acks_an_ack_from_before_the_server_lost_our_session_does_not_answer_a_new_message() {
    let mut h = manual(V5);
    h.connect(false);
    h.expect_connected(false);
    h.recv(Packet::Publish(inbound("t", QoS::AtLeastOnce, Some(5))));
    let (_, old) = only_to_ack(&h.events());
    h.close();
    h.events();
    // The server lost our session: id 5 may now name another message.
    h.connect(false);
    h.expect_connected(false);
    let new = inbound("t2", QoS::AtLeastOnce, Some(5));
    h.recv(Packet::Publish(new.clone()));
    let (got, fresh) = only_to_ack(&h.events());
    assert_eq!(got, new);
    h.session.ack_message(old, h.now);
    assert!(h.sent().is_empty(), "the old acknowledgement is stale");
    h.session.ack_message(fresh, h.now);
    assert_eq!(h.sent(), [puback(5)]);
}

#[test]
fn pubrel_for_an_unknown_id_is_answered_with_pubcomp() {
    let mut h = Harness::connected(V5);
    h.recv(pubrel(9));
    assert_eq!(
        h.sent(),
        [Packet::PubComp(response(
            9,
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        ))]
    );
    let mut h = Harness::connected(V3);
    h.recv(pubrel(9));
    assert_eq!(h.sent(), [pubcomp(9)]);
    assert!(h.session.is_connected());
}

#[test]
fn more_unacknowledged_inbound_qos2_than_our_receive_maximum_is_a_violation() {
    for protocol in BOTH {
        let mut h = Harness::with(protocol, |c| c.receive_maximum = nz16(2));
        h.connect(false);
        h.events();
        for id in 1..=2 {
            h.recv(Packet::Publish(inbound("t", QoS::ExactlyOnce, Some(id))));
        }
        assert_eq!(h.events().len(), 2);
        assert_eq!(h.sent(), [pubrec(1), pubrec(2)]);
        // A duplicate of one of them is no new message.
        h.recv(Packet::Publish(inbound("t", QoS::ExactlyOnce, Some(2))));
        assert_eq!(h.sent(), [pubrec(2)]);
        // QoS 1 is acknowledged at once and does not count.
        h.recv(Packet::Publish(inbound("t", QoS::AtLeastOnce, Some(9))));
        assert_eq!(h.sent(), [puback(9)]);
        h.events();

        h.recv(Packet::Publish(inbound("t", QoS::ExactlyOnce, Some(3))));
        assert_violation(&mut h, protocol, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
    }
}

#[test]
fn a_pubrel_frees_an_inbound_slot() {
    let mut h = Harness::with(V5, |c| c.receive_maximum = nz16(1));
    h.connect(false);
    h.events();
    h.recv(Packet::Publish(inbound("t", QoS::ExactlyOnce, Some(1))));
    h.recv(pubrel(1));
    h.recv(Packet::Publish(inbound("t", QoS::ExactlyOnce, Some(2))));
    assert_eq!(h.events().len(), 2);
    assert!(h.session.is_connected());
}

// ---------------------------------------------------------------------------------------
// 11. Topic aliases
// ---------------------------------------------------------------------------------------

fn alias_connack(max: u16) -> ConnAckProperties {
    connack_props(|p| p.topic_alias_maximum = Some(max))
}

/// (topic, alias) of each PUBLISH in `packets`.
fn topics_and_aliases(packets: &[Packet]) -> Vec<(String, Option<u16>)> {
    publishes(packets)
        .iter()
        .map(|p| {
            (
                p.topic.as_str().to_owned(),
                p.properties.topic_alias.map(NonZeroU16::get),
            )
        })
        .collect()
}

fn ta(topic_name: &str, alias: Option<u16>) -> (String, Option<u16>) {
    (topic_name.to_owned(), alias)
}

#[test]
fn the_first_publish_to_a_topic_sets_an_alias_and_the_next_uses_it_alone() {
    let mut h = Harness::of(V5);
    h.connect_with(false, alias_connack(10));
    h.events();
    h.publish("sensors/temperature", QoS::AtMostOnce);
    h.publish("sensors/temperature", QoS::AtLeastOnce);
    h.publish("sensors/humidity", QoS::ExactlyOnce);
    h.publish("sensors/temperature", QoS::AtMostOnce);
    let sent = h.sent();
    assert_eq!(
        topics_and_aliases(&sent),
        [
            ta("sensors/temperature", Some(1)),
            ta("", Some(1)),
            ta("sensors/humidity", Some(2)),
            ta("", Some(1)),
        ]
    );
    // Each one encodes: an empty topic only ever goes out with its alias.
    for p in &sent {
        codec::encoded_len(p, V5).unwrap();
    }
}

#[test]
fn aliases_are_not_used_beyond_the_servers_topic_alias_maximum() {
    let mut h = Harness::of(V5);
    h.connect_with(false, alias_connack(2));
    h.events();
    for t in ["a", "b", "c", "c", "a", "b"] {
        h.publish(t, QoS::AtMostOnce);
    }
    assert_eq!(
        topics_and_aliases(&h.sent()),
        [
            ta("a", Some(1)),
            ta("b", Some(2)),
            ta("c", None),
            ta("c", None),
            ta("", Some(1)),
            ta("", Some(2)),
        ]
    );
}

#[test]
fn aliases_are_not_used_with_v311_when_disabled_or_when_the_server_allows_none() {
    let cases: [(&str, Harness, ConnAckProperties); 4] = [
        ("3.1.1", Harness::of(V3), ConnAckProperties::default()),
        (
            "disabled",
            Harness::with(V5, |c| c.use_topic_aliases = false),
            alias_connack(10),
        ),
        ("not offered", Harness::of(V5), ConnAckProperties::default()),
        ("zero", Harness::of(V5), alias_connack(0)),
    ];
    for (name, mut h, props) in cases {
        h.connect_with(false, props);
        h.events();
        h.publish("a", QoS::AtLeastOnce);
        h.publish("a", QoS::AtMostOnce);
        assert_eq!(
            topics_and_aliases(&h.sent()),
            [ta("a", None), ta("a", None)],
            "{name}"
        );
    }
}

#[test]
fn aliases_start_over_on_reconnect_and_resent_messages_carry_full_topics() {
    let mut h = Harness::persistent(V5);
    h.connect_with(false, alias_connack(5));
    h.events();
    h.publish("a", QoS::AtLeastOnce);
    h.publish("a", QoS::AtLeastOnce);
    assert_eq!(
        topics_and_aliases(&h.sent()),
        [ta("a", Some(1)), ta("", Some(1))]
    );
    h.close();
    h.events();

    let resent = h.connect_with(true, alias_connack(5));
    assert_eq!(
        topics_and_aliases(&resent),
        [ta("a", None), ta("a", None)],
        "the new connection knows no alias"
    );
    assert!(publishes(&resent).iter().all(|p| p.dup));
    h.publish("a", QoS::AtMostOnce);
    h.publish("a", QoS::AtMostOnce);
    assert_eq!(
        topics_and_aliases(&h.sent()),
        [ta("a", Some(1)), ta("", Some(1))],
        "aliases are set up again"
    );
}

#[test]
fn restarted_messages_after_a_lost_session_set_their_aliases_again() {
    let mut h = Harness::persistent(V5);
    h.connect_with(false, alias_connack(5));
    h.events();
    h.publish("a", QoS::AtLeastOnce);
    h.publish("a", QoS::AtLeastOnce);
    h.sent();
    h.close();
    h.events();
    let restarted = h.connect_with(false, alias_connack(5));
    assert_eq!(
        topics_and_aliases(&restarted),
        [ta("a", Some(1)), ta("", Some(1))]
    );
}

#[test]
fn an_inbound_alias_set_then_used_resolves_to_its_topic() {
    let mut h = Harness::with(V5, |c| c.topic_alias_maximum = 4);
    h.connect(false);
    h.events();
    let mut first = inbound("plant/line1", QoS::AtMostOnce, None);
    first.properties.topic_alias = Some(nz16(4));
    h.recv(Packet::Publish(first));
    let mut second = inbound("plant/line1", QoS::AtLeastOnce, Some(1));
    second.topic = TopicName::empty_for_alias();
    second.properties.topic_alias = Some(nz16(4));
    h.recv(Packet::Publish(second));
    // The alias can be pointed at another topic.
    let mut third = inbound("plant/line2", QoS::AtMostOnce, None);
    third.properties.topic_alias = Some(nz16(4));
    h.recv(Packet::Publish(third));
    let mut fourth = inbound("x", QoS::AtMostOnce, None);
    fourth.topic = TopicName::empty_for_alias();
    fourth.properties.topic_alias = Some(nz16(4));
    h.recv(Packet::Publish(fourth));

    let events = h.events();
    let received: Vec<(String, Option<NonZeroU16>)> = events
        .iter()
        .map(|e| match e {
            Event::Message(p) => (p.topic.as_str().to_owned(), p.properties.topic_alias),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        received,
        [
            ("plant/line1".to_owned(), None),
            ("plant/line1".to_owned(), None),
            ("plant/line2".to_owned(), None),
            ("plant/line2".to_owned(), None),
        ]
    );
    assert_eq!(h.sent(), [puback(1)]);
}

#[test]
fn an_unknown_inbound_alias_is_violation_0x94() {
    let mut h = Harness::with(V5, |c| c.topic_alias_maximum = 4);
    h.connect(false);
    h.events();
    let mut m = inbound("t", QoS::AtMostOnce, None);
    m.topic = TopicName::empty_for_alias();
    m.properties.topic_alias = Some(nz16(2));
    h.recv(Packet::Publish(m));
    assert_violation(&mut h, V5, ReasonCode::TOPIC_ALIAS_INVALID);
}

#[test]
fn an_inbound_alias_above_our_maximum_is_violation_0x94() {
    for max in [0, 4] {
        let mut h = Harness::with(V5, |c| c.topic_alias_maximum = max);
        h.connect(false);
        h.events();
        let mut m = inbound("t", QoS::AtMostOnce, None);
        m.properties.topic_alias = Some(nz16(max + 1));
        h.recv(Packet::Publish(m));
        assert_violation(&mut h, V5, ReasonCode::TOPIC_ALIAS_INVALID);
    }
}

#[test]
fn inbound_aliases_do_not_outlive_the_connection() {
    let mut h = Harness::with(V5, |c| c.topic_alias_maximum = 4);
    h.connect(false);
    h.events();
    let mut set = inbound("t", QoS::AtMostOnce, None);
    set.properties.topic_alias = Some(nz16(1));
    h.recv(Packet::Publish(set));
    h.close();
    h.connect(false);
    h.events();
    let mut used = inbound("t", QoS::AtMostOnce, None);
    used.topic = TopicName::empty_for_alias();
    used.properties.topic_alias = Some(nz16(1));
    h.recv(Packet::Publish(used));
    assert_violation(&mut h, V5, ReasonCode::TOPIC_ALIAS_INVALID);
}

// ---------------------------------------------------------------------------------------
// 12. Server limits
// ---------------------------------------------------------------------------------------

/// A message to `topic_name` whose QoS 1 PUBLISH (with a packet id, no alias) encodes to
/// exactly `size` bytes under 5.0.
fn message_of_size(topic_name: &str, size: usize) -> Publish {
    let mut m = message(topic_name, QoS::AtLeastOnce);
    m.packet_id = Some(pid(1));
    let len = |m: &Publish| codec::encoded_len(&Packet::Publish(m.clone()), V5).unwrap();
    // The Remaining Length field grows with the payload: adjust until exact.
    let mut payload = size - (len(&m) - m.payload.len());
    for _ in 0..4 {
        m.payload = Bytes::from(vec![b'x'; payload]);
        match len(&m) {
            n if n == size => break,
            n if n > size => payload -= n - size,
            n => payload += size - n,
        }
    }
    assert_eq!(len(&m), size, "no payload makes a {size}-byte PUBLISH");
    m.packet_id = None;
    m
}

#[test]
fn a_publish_larger_than_the_servers_maximum_packet_size_fails_without_using_an_id() {
    let mut h = Harness::of(V5);
    let limit = 64;
    h.connect_with(
        false,
        connack_props(|p| p.maximum_packet_size = NonZeroU32::new(limit)),
    );
    h.events();
    let too_big = h
        .publish_msg(message_of_size("t", limit as usize + 1))
        .unwrap();
    assert_eq!(
        h.events(),
        [Event::PublishFailed {
            token: too_big,
            reason: ReasonCode::PACKET_TOO_LARGE,
        }]
    );
    assert!(h.sent().is_empty(), "nothing sent");
    assert_eq!(h.session.inflight_len(), 0);

    // Exactly at the limit is fine, and gets the first id: none was used above.
    let fits = h.publish_msg(message_of_size("t", limit as usize)).unwrap();
    assert_eq!(only_publish(&h.sent()).packet_id, Some(pid(1)));
    h.recv(puback(1));
    assert_eq!(h.events(), [Event::Delivered(fits)]);

    // QoS 0 is held to the same limit.
    let mut qos0 = message_of_size("t", limit as usize + 10);
    qos0.qos = QoS::AtMostOnce;
    let token = h.publish_msg(qos0).unwrap();
    assert_eq!(
        h.events(),
        [Event::PublishFailed {
            token,
            reason: ReasonCode::PACKET_TOO_LARGE,
        }]
    );
    assert!(h.sent().is_empty());
}

#[test]
fn a_message_queued_while_offline_fails_when_the_next_server_is_too_small_for_it() {
    let mut h = Harness::of(V5);
    let a = h.publish_msg(message_of_size("t", 200)).unwrap();
    let b = h.publish("t", QoS::AtLeastOnce);
    let sent = h.connect_with(
        false,
        connack_props(|p| p.maximum_packet_size = NonZeroU32::new(100)),
    );
    assert_eq!(only_publish(&sent).packet_id, Some(pid(1)));
    let events = h.events();
    assert!(events.contains(&Event::PublishFailed {
        token: a,
        reason: ReasonCode::PACKET_TOO_LARGE,
    }));
    h.recv(puback(1));
    assert_eq!(h.events(), [Event::Delivered(b)]);
}

/// A new topic alias adds a property to the PUBLISH: a message that fits the server's
/// Maximum Packet Size without it must not be pushed over the limit by it.
#[test]
fn a_topic_alias_never_pushes_a_publish_over_the_servers_maximum_packet_size() {
    let limit = 80;
    let mut h = Harness::of(V5);
    h.connect_with(
        false,
        connack_props(|p| {
            p.maximum_packet_size = NonZeroU32::new(limit);
            p.topic_alias_maximum = Some(10);
        }),
    );
    h.events();
    // Near the limit, at it, and the same to a one-letter topic (whose alias form, an
    // empty topic plus the property, is longer than the topic itself).
    for (t, size) in [
        ("long/topic/name", limit - 1),
        ("long/topic/name", limit),
        ("x", limit),
    ] {
        for _ in 0..2 {
            let token = h.publish_msg(message_of_size(t, size as usize)).unwrap();
            let wire = only_publish(&h.sent());
            let len = codec::encoded_len(&Packet::Publish(wire.clone()), V5).unwrap();
            assert!(
                len <= limit as usize,
                "{len} bytes sent to a {limit}-byte server"
            );
            h.recv(Packet::PubAck(PubResponse::success(
                wire.packet_id.unwrap(),
            )));
            assert_eq!(h.events(), [Event::Delivered(token)]);
        }
    }
    // Small messages to the same topics still use aliases, and consistently: an alias the
    // server was never told about is never used.
    h.publish("long/topic/name", QoS::AtMostOnce);
    h.publish("long/topic/name", QoS::AtMostOnce);
    let sent = h.sent();
    let [first, second] = &topics_and_aliases(&sent)[..] else {
        panic!("two PUBLISH expected: {sent:?}");
    };
    if first.0.is_empty() {
        assert_eq!(first, second, "an alias set earlier");
    } else {
        assert_eq!(second.0, "", "the alias just set: {sent:?}");
        assert_eq!(first.1, second.1);
    }
}

#[test]
fn a_retained_publish_fails_when_the_server_has_no_retain() {
    let mut h = Harness::of(V5);
    h.connect_with(false, connack_props(|p| p.retain_available = Some(false)));
    h.events();
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let mut m = message("t", qos);
        m.retain = true;
        let token = h.publish_msg(m).unwrap();
        assert_eq!(
            h.events(),
            [Event::PublishFailed {
                token,
                reason: ReasonCode::RETAIN_NOT_SUPPORTED,
            }]
        );
        assert!(h.sent().is_empty());
    }
    // Without RETAIN it goes out, with the first id.
    h.publish("t", QoS::AtLeastOnce);
    assert_eq!(only_publish(&h.sent()).packet_id, Some(pid(1)));
}

#[test]
fn a_qos2_publish_goes_out_as_qos1_when_the_server_maximum_qos_is_1() {
    let mut h = Harness::of(V5);
    h.connect_with(
        false,
        connack_props(|p| p.maximum_qos = Some(QoS::AtLeastOnce)),
    );
    h.events();
    let token = h.publish("t", QoS::ExactlyOnce);
    let wire = only_publish(&h.sent());
    assert_eq!(wire.qos, QoS::AtLeastOnce);
    h.recv(puback(1));
    assert_eq!(h.events(), [Event::Delivered(token)]);
}

#[test]
fn a_qos1_publish_goes_out_as_qos0_when_the_server_maximum_qos_is_0() {
    let mut h = Harness::of(V5);
    h.connect_with(
        false,
        connack_props(|p| p.maximum_qos = Some(QoS::AtMostOnce)),
    );
    h.events();
    let token = h.publish("t", QoS::AtLeastOnce);
    let wire = only_publish(&h.sent());
    assert_eq!((wire.qos, wire.packet_id), (QoS::AtMostOnce, None));
    assert_eq!(h.events(), [Event::Delivered(token)]);
    assert_eq!(h.session.inflight_len(), 0);
}

#[test]
fn server_limits_do_not_carry_over_to_the_next_connection() {
    let mut h = Harness::of(V5);
    h.connect_with(
        false,
        connack_props(|p| {
            p.maximum_qos = Some(QoS::AtLeastOnce);
            p.receive_maximum = Some(nz16(1));
            p.retain_available = Some(false);
        }),
    );
    h.close();
    h.events();
    h.connect(false);
    h.events();
    let mut m = message("t", QoS::ExactlyOnce);
    m.retain = true;
    h.publish_msg(m).unwrap();
    h.publish("t", QoS::ExactlyOnce);
    let wire = publishes(&h.sent());
    assert_eq!(wire.len(), 2);
    assert!(wire.iter().all(|p| p.qos == QoS::ExactlyOnce));
    assert!(h.events().is_empty());
}

// ---------------------------------------------------------------------------------------
// 13. Subscribe and unsubscribe
// ---------------------------------------------------------------------------------------

#[test]
fn subscribe_and_unsubscribe_are_queued_until_connected() {
    for protocol in BOTH {
        let mut h = Harness::of(protocol);
        let s = h.subscribe(&["a/+"]);
        let u = h.unsubscribe(&["old/#"]);
        assert!(h.sent().is_empty());
        h.open();
        assert!(h.sent().is_empty(), "{protocol}: not before CONNACK");
        h.recv(Packet::ConnAck(ConnAck::default()));
        let (sub, unsub) = match h.sent().as_slice() {
            [Packet::Subscribe(s), Packet::Unsubscribe(u)] => (s.clone(), u.clone()),
            other => panic!("expected SUBSCRIBE, UNSUBSCRIBE: {other:?}"),
        };
        assert_eq!(sub.subscriptions, [subscription("a/+", QoS::AtLeastOnce)]);
        assert_eq!(unsub.filters, [filter("old/#")]);
        assert_ne!(sub.packet_id, unsub.packet_id);
        h.events();

        h.recv(suback(sub.packet_id, &[ReasonCode::GRANTED_QOS_1]));
        let unsub_codes: &[ReasonCode] = match protocol {
            V5 => &[ReasonCode::NO_SUBSCRIPTION_EXISTED],
            V3 => &[],
        };
        h.recv(unsuback(unsub.packet_id, unsub_codes));
        assert_eq!(
            h.events(),
            [
                Event::Subscribed {
                    token: s,
                    reason_codes: vec![ReasonCode::GRANTED_QOS_1],
                },
                Event::Unsubscribed {
                    token: u,
                    reason_codes: unsub_codes.to_vec(),
                }
            ],
            "{protocol}"
        );
    }
}

#[test]
fn subscribe_passes_options_and_properties_through() {
    let mut h = Harness::connected(V5);
    let subs = vec![Subscription {
        filter: filter("$share/g/a"),
        options: SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: false,
            retain_as_published: true,
            retain_handling: fieldgate::mqtt::packet::RetainHandling::DoNotSend,
        },
    }];
    let props = SubscribeProperties {
        subscription_identifier: fieldgate::mqtt::packet::SubscriptionId::new(42),
        user_properties: vec![user_property()],
    };
    h.session
        .subscribe(subs.clone(), props.clone(), h.now)
        .unwrap();
    let s = only_subscribe(&h.sent());
    assert_eq!((s.subscriptions, s.properties), (subs, props));
}

#[test]
fn suback_with_a_refusal_is_still_reported_with_its_codes() {
    let mut h = Harness::connected(V3);
    let token = h.subscribe(&["a", "b"]);
    let s = only_subscribe(&h.sent());
    let codes = [ReasonCode::GRANTED_QOS_0, ReasonCode::UNSPECIFIED_ERROR];
    h.recv(suback(s.packet_id, &codes));
    assert_eq!(
        h.events(),
        [Event::Subscribed {
            token,
            reason_codes: codes.to_vec(),
        }]
    );
}

#[test]
fn empty_filter_lists_are_refused() {
    let mut h = Harness::connected(V5);
    assert_eq!(
        h.session
            .subscribe(vec![], SubscribeProperties::default(), h.now),
        Err(SessionError::NoTopicFilters)
    );
    assert_eq!(
        h.session
            .unsubscribe(vec![], UnsubscribeProperties::default(), h.now),
        Err(SessionError::NoTopicFilters)
    );
    assert!(h.sent().is_empty());
}

#[test]
fn a_suback_or_unsuback_for_an_unknown_id_is_a_protocol_violation() {
    for protocol in BOTH {
        let mut h = Harness::connected(protocol);
        h.recv(suback(pid(4), &[ReasonCode::GRANTED_QOS_0]));
        assert_violation(&mut h, protocol, ReasonCode::PROTOCOL_ERROR);

        let mut h = Harness::connected(protocol);
        h.recv(unsuback(pid(4), &[]));
        assert_violation(&mut h, protocol, ReasonCode::PROTOCOL_ERROR);
    }
}

#[test]
fn a_suback_for_a_publishs_id_is_a_protocol_violation() {
    let mut h = Harness::connected(V5);
    h.publish("t", QoS::AtLeastOnce);
    h.sent();
    h.recv(suback(pid(1), &[ReasonCode::GRANTED_QOS_0]));
    assert_violation(&mut h, V5, ReasonCode::PROTOCOL_ERROR);
}

#[test]
fn an_ack_of_the_wrong_kind_is_a_violation_and_the_request_is_sent_again_later() {
    let mut h = Harness::persistent(V5);
    h.connect(false);
    h.events();
    let token = h.unsubscribe(&["a"]);
    let u = only_unsubscribe(&h.sent());
    h.recv(suback(u.packet_id, &[ReasonCode::GRANTED_QOS_0]));
    assert_violation(&mut h, V5, ReasonCode::PROTOCOL_ERROR);
    h.close();
    assert!(h.events().is_empty());
    let again = only_unsubscribe(&h.connect(true));
    assert_eq!(again.filters, u.filters);
    h.events();
    h.recv(unsuback(again.packet_id, &[ReasonCode::SUCCESS]));
    assert_eq!(
        h.events(),
        [Event::Unsubscribed {
            token,
            reason_codes: vec![ReasonCode::SUCCESS],
        }]
    );
}

// ---------------------------------------------------------------------------------------
// 14. The end of a connection
// ---------------------------------------------------------------------------------------

#[test]
fn a_server_disconnect_reports_disconnected_by_server() {
    let mut h = Harness::connected(V5);
    h.publish("t", QoS::AtLeastOnce);
    h.sent();
    h.recv(Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::SERVER_SHUTTING_DOWN,
        properties: DisconnectProperties {
            reason_string: Some(mstr("maintenance")),
            ..DisconnectProperties::default()
        },
    }));
    assert_eq!(
        h.events(),
        [Event::Disconnected(DisconnectCause::ByServer {
            reason: ReasonCode::SERVER_SHUTTING_DOWN,
            reason_string: Some(mstr("maintenance")),
        })]
    );
    assert!(h.sent().is_empty());
    assert!(!h.session.is_connected());
    assert_eq!(h.session.poll_timeout(), None);
    h.close();
    assert!(h.events().is_empty(), "one Disconnected per connection");
    assert_eq!(h.session.inflight_len(), 1, "kept for the next connection");
}

#[test]
fn disconnect_queues_disconnect_and_the_close_reports_requested() {
    for protocol in BOTH {
        let mut h = Harness::connected(protocol);
        h.session
            .disconnect(ReasonCode::DISCONNECT_WITH_WILL_MESSAGE, h.now);
        assert_eq!(
            h.sent(),
            [disconnect_packet(ReasonCode::DISCONNECT_WITH_WILL_MESSAGE)]
        );
        assert!(!h.session.is_connected());
        assert_eq!(h.session.poll_timeout(), None, "no pings while closing");
        assert_eq!(
            h.publish_msg(message("t", QoS::AtMostOnce)),
            Err(SessionError::NotConnected)
        );
        // A second call adds nothing.
        h.session
            .disconnect(ReasonCode::NORMAL_DISCONNECTION, h.now);
        assert!(h.sent().is_empty());
        assert!(h.events().is_empty());
        h.close();
        assert_eq!(
            h.events(),
            [Event::Disconnected(DisconnectCause::Requested)],
            "{protocol}"
        );
    }
}

#[test]
fn acknowledgements_arriving_while_closing_still_complete_messages() {
    let mut h = Harness::connected(V5);
    let token = h.publish("t", QoS::AtLeastOnce);
    h.sent();
    h.session
        .disconnect(ReasonCode::NORMAL_DISCONNECTION, h.now);
    h.sent();
    h.recv(puback(1));
    assert_eq!(h.events(), [Event::Delivered(token)]);
}

#[test]
fn nothing_is_sent_after_our_disconnect_not_even_an_acknowledgement() {
    for protocol in BOTH {
        let mut h = Harness::connected(protocol);
        h.session
            .disconnect(ReasonCode::NORMAL_DISCONNECTION, h.now);
        assert_eq!(h.sent().len(), 1, "only DISCONNECT");
        h.recv(Packet::Publish(inbound("late", QoS::AtLeastOnce, Some(7))));
        h.advance(3600);
        assert!(
            h.sent().is_empty(),
            "[MQTT-3.14.4-2]: nothing after DISCONNECT"
        );
    }
}

#[test]
fn a_maximum_packet_size_of_zero_means_no_limit_of_our_own() {
    let mut config = ClientConfig::new(V5, MqttString::try_from("zero-limit").unwrap());
    config.maximum_packet_size = 0;
    let session = ClientSession::new(config);
    assert_eq!(session.max_incoming_packet_size(), u32::MAX);
}

#[test]
fn a_resend_the_new_server_cannot_take_fails_instead_of_ending_every_reconnect() {
    let mut h = Harness::persistent(V5);
    h.connect(false);
    h.events();
    let mut retained = message("kept", QoS::AtLeastOnce);
    retained.retain = true;
    let token = h.publish_msg(retained).unwrap();
    assert_eq!(publishes(&h.sent()).len(), 1);
    h.close();
    h.events();
    let no_retain = ConnAckProperties {
        retain_available: Some(false),
        ..ConnAckProperties::default()
    };
    let resent = h.connect_with(true, no_retain);
    assert!(publishes(&resent).is_empty(), "resent {resent:?}");
    assert_eq!(
        h.events(),
        [
            Event::Connected {
                session_present: true
            },
            Event::PublishFailed {
                token,
                reason: ReasonCode::RETAIN_NOT_SUPPORTED
            }
        ]
    );
    assert_eq!(h.session.inflight_len(), 0);
}

#[test]
fn a_topic_alias_set_by_the_caller_is_not_sent() {
    for use_aliases in [false, true] {
        let mut h = Harness::with(V5, |c| c.use_topic_aliases = use_aliases);
        h.connect(false);
        h.events();
        let mut m = message("t", QoS::AtLeastOnce);
        m.properties.topic_alias = NonZeroU16::new(5);
        h.publish_msg(m).unwrap();
        let sent = publishes(&h.sent());
        // The server announced no Topic Alias Maximum: no alias may be used at all.
        assert_eq!(
            sent[0].properties.topic_alias, None,
            "use_aliases {use_aliases}"
        );
        assert_eq!(sent[0].topic.as_str(), "t");
    }
}

#[test]
fn a_connack_after_we_said_disconnect_is_ignored() {
    let mut h = Harness::of(V5);
    h.open();
    h.session
        .disconnect(ReasonCode::NORMAL_DISCONNECTION, h.now);
    assert!(matches!(h.sent().as_slice(), [Packet::Disconnect(_)]));
    h.recv(Packet::ConnAck(ConnAck::default()));
    assert!(h.sent().is_empty());
    assert!(h.events().is_empty());
    h.close();
    assert_eq!(
        h.events(),
        [Event::Disconnected(DisconnectCause::Requested)]
    );
}

#[test]
fn disconnect_while_offline_does_nothing() {
    let mut h = Harness::of(V5);
    h.session
        .disconnect(ReasonCode::NORMAL_DISCONNECTION, h.now);
    assert!(h.sent().is_empty());
    h.close();
    assert!(h.events().is_empty());
}

#[test]
fn losing_the_transport_reports_connection_lost() {
    for protocol in BOTH {
        let mut h = Harness::connected(protocol);
        h.publish("t", QoS::AtLeastOnce);
        h.close();
        assert_eq!(
            h.events(),
            [Event::Disconnected(DisconnectCause::ConnectionLost)]
        );
        assert!(h.sent().is_empty(), "unsent packets die with the transport");
        assert_eq!(h.session.poll_timeout(), None);
        assert_eq!(h.session.inflight_len(), 1);
        // Closing again, or while idle, reports nothing.
        h.close();
        assert!(h.events().is_empty());
    }
}

#[test]
fn a_decode_error_is_a_violation_with_the_errors_reason_code() {
    for protocol in BOTH {
        let mut h = Harness::connected(protocol);
        // A 9-byte PINGRESP claim where at most 4 are accepted.
        let mut buf = BytesMut::from(&[0xD0, 0x07][..]);
        let error = codec::decode(&mut buf, 4, protocol).unwrap_err();
        assert_eq!(error.reason_code(), ReasonCode::PACKET_TOO_LARGE);
        h.session.handle_decode_error(&error, h.now);
        assert_violation(&mut h, protocol, ReasonCode::PACKET_TOO_LARGE);

        let mut h = Harness::connected(protocol);
        // Reserved packet type 0.
        let mut buf = BytesMut::from(&[0x00, 0x00][..]);
        let error = codec::decode(&mut buf, 1024, protocol).unwrap_err();
        h.session.handle_decode_error(&error, h.now);
        assert_violation(&mut h, protocol, error.reason_code());
    }
}

#[test]
fn a_decode_error_before_connack_is_a_violation_too() {
    let mut h = Harness::of(V5);
    h.open();
    let mut buf = BytesMut::from(&[0x00, 0x00][..]);
    let error = codec::decode(&mut buf, 1024, V5).unwrap_err();
    h.session.handle_decode_error(&error, h.now);
    assert_violation(&mut h, V5, error.reason_code());
}

#[test]
fn packets_after_the_connection_ended_are_ignored() {
    let mut h = Harness::connected(V5);
    h.publish("t", QoS::AtLeastOnce);
    h.sent();
    h.close();
    h.events();
    h.recv(puback(1));
    h.recv(Packet::Publish(inbound("t", QoS::AtLeastOnce, Some(1))));
    assert!(h.events().is_empty());
    assert!(h.sent().is_empty());
    assert_eq!(h.session.inflight_len(), 1);
}

#[test]
fn the_incoming_size_limit_is_ours() {
    let h = Harness::with(V5, |c| c.maximum_packet_size = 2048);
    assert_eq!(h.session.max_incoming_packet_size(), 2048);
    assert_eq!(h.session.protocol(), V5);
}

// ---------------------------------------------------------------------------------------
// 15. PacketIdPool
// ---------------------------------------------------------------------------------------

#[test]
fn pool_allocates_upwards_from_1_and_skips_ids_in_use() {
    let mut pool = PacketIdPool::new();
    assert!(pool.is_empty());
    assert_eq!(pool.allocate(), Some(pid(1)));
    assert!(pool.mark_used(pid(3)));
    assert!(!pool.mark_used(pid(3)), "already in use");
    assert_eq!(pool.allocate(), Some(pid(2)));
    assert_eq!(pool.allocate(), Some(pid(4)), "3 is in use");
    assert_eq!(pool.len(), 4);
    assert!(pool.is_used(pid(3)));
    assert!(!pool.is_used(pid(5)));
}

#[test]
fn pool_does_not_hand_out_a_just_released_id_next() {
    let mut pool = PacketIdPool::new();
    let a = pool.allocate().unwrap();
    assert!(pool.release(a));
    let b = pool.allocate().unwrap();
    assert_ne!(a, b);
    assert_eq!(b, pid(2));
}

#[test]
fn pool_release_of_an_id_not_in_use_returns_false() {
    let mut pool = PacketIdPool::new();
    assert!(!pool.release(pid(7)));
    let a = pool.allocate().unwrap();
    assert!(pool.release(a));
    assert!(!pool.release(a), "released twice");
    assert!(pool.is_empty());
}

#[test]
fn pool_wraps_after_65535_skipping_0_and_runs_out_when_all_are_used() {
    let mut pool = PacketIdPool::new();
    // One pass over every id, in order: 65,535 cheap allocations.
    for n in 1..=u16::MAX {
        assert_eq!(pool.allocate(), Some(pid(n)));
    }
    assert_eq!(pool.len(), usize::from(u16::MAX));
    assert_eq!(pool.allocate(), None, "all 65,535 in use");
    assert_eq!(pool.allocate(), None);

    // Free two ids below the last one handed out: allocation wraps past 65535, never
    // yields 0, and finds the first free one.
    assert!(pool.release(pid(2)));
    assert!(pool.release(pid(40_000)));
    assert_eq!(pool.allocate(), Some(pid(2)));
    assert_eq!(pool.allocate(), Some(pid(40_000)));
    assert_eq!(pool.allocate(), None);

    // 65535 itself is handed out after wrapping from just below it.
    assert!(pool.release(pid(u16::MAX)));
    assert!(pool.release(pid(1)));
    assert_eq!(pool.allocate(), Some(pid(u16::MAX)));
    assert_eq!(pool.allocate(), Some(pid(1)));

    pool.clear();
    assert!(pool.is_empty());
    assert!(pool.allocate().is_some());
}

#[test]
fn pool_with_a_single_free_id_finds_it_wherever_it_is() {
    let mut pool = PacketIdPool::new();
    for n in 1..=u16::MAX {
        if n != 12_345 {
            assert!(pool.mark_used(pid(n)));
        }
    }
    assert_eq!(pool.allocate(), Some(pid(12_345)));
    assert_eq!(pool.allocate(), None);
}

// ---------------------------------------------------------------------------------------
// 16. Property: random operation sequences against a model of the server
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum AckKind {
    PubAck,
    PubRec,
    PubComp,
    SubAck,
    UnsubAck,
}

#[derive(Debug, Clone)]
enum Which {
    Oldest,
    Newest,
    At(Index),
}

#[derive(Debug, Clone)]
enum Op {
    Publish(QoS),
    /// Answer one thing awaiting the server, correctly (with a failure code if `fail`).
    Ack {
        which: Which,
        fail: bool,
    },
    /// An acknowledgement of `kind` for `id`, whatever that id is doing.
    Spurious {
        kind: AckKind,
        id: u16,
    },
    LoseConnection,
    /// Close if needed, connect, CONNACK with this Session Present and Receive Maximum.
    Reconnect {
        session_present: bool,
        receive_maximum: u16,
    },
    /// Connect without a CONNACK (yet).
    ConnectOnly,
    Advance {
        secs: u64,
        answer_pings: bool,
    },
    Subscribe,
    Unsubscribe(Index),
    Disconnect,
}

fn qos_strategy() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn which_strategy() -> impl Strategy<Value = Which> {
    prop_oneof![
        Just(Which::Oldest),
        Just(Which::Newest),
        any::<Index>().prop_map(Which::At)
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![
        3 => Just(AckKind::PubAck),
        3 => Just(AckKind::PubRec),
        3 => Just(AckKind::PubComp),
        1 => Just(AckKind::SubAck),
        1 => Just(AckKind::UnsubAck),
    ];
    prop_oneof![
        8 => qos_strategy().prop_map(Op::Publish),
        8 => (which_strategy(), prop::bool::weighted(0.1))
            .prop_map(|(which, fail)| Op::Ack { which, fail }),
        2 => (kind, 1..=40u16).prop_map(|(kind, id)| Op::Spurious { kind, id }),
        1 => Just(Op::LoseConnection),
        2 => (any::<bool>(), 1..=4u16).prop_map(|(session_present, receive_maximum)| {
            Op::Reconnect { session_present, receive_maximum }
        }),
        1 => Just(Op::ConnectOnly),
        2 => (1..=40u64, prop::bool::weighted(0.7))
            .prop_map(|(secs, answer_pings)| Op::Advance { secs, answer_pings }),
        1 => Just(Op::Subscribe),
        1 => any::<Index>().prop_map(Op::Unsubscribe),
        1 => Just(Op::Disconnect),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Idle,
    Connecting,
    Connected,
}

/// Something on the current connection waiting for the server's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Live {
    /// PUBLISH awaiting PUBACK (QoS 1) or PUBREC (QoS 2).
    Publish {
        seq: u64,
        qos: QoS,
    },
    /// PUBREL awaiting PUBCOMP; `this_connection` if its PUBLISH was sent on this one too
    /// (only those count against the Receive Maximum, MQTT 5.0 §4.9).
    PubRel {
        seq: u64,
        this_connection: bool,
    },
    Subscribe,
    Unsubscribe,
}

/// What the model knows about one publish call.
#[derive(Debug, Clone)]
struct Sent {
    token: PublishToken,
    qos: QoS,
    /// Final events seen (Delivered / PublishFailed).
    finals: u32,
    /// The server acknowledged it (PUBACK success or PUBREC success).
    accepted: bool,
    /// The server refused it (failure code).
    refused: bool,
    /// The id of its latest PUBLISH, and the clean-session epoch it was sent in.
    last_id: Option<(PacketId, u32)>,
    /// When its current flow first went on the wire (orders resends).
    first_sent: u64,
}

struct Model {
    h: Harness,
    protocol: ProtocolVersion,
    clean_start_config: bool,
    link: Link,
    /// The server's Receive Maximum on the current connection.
    receive_maximum: u16,
    /// The server's Topic Alias Maximum, and the aliases it has been told this connection.
    alias_maximum: u16,
    aliases: HashMap<u16, String>,
    /// Awaiting the server on the current connection, in the order sent.
    wire: Vec<(PacketId, Live)>,
    /// Publishes by sequence number (carried in the payload).
    messages: HashMap<u64, Sent>,
    by_token: HashMap<PublishToken, u64>,
    /// QoS 2 messages past PUBREC, by id: their PUBREL may be resent.
    awaiting_comp: HashMap<PacketId, u64>,
    /// Request tokens and the answers seen for each.
    requests: HashMap<RequestToken, u32>,
    next_seq: u64,
    next_filter: u64,
    filters: Vec<String>,
    clean_epoch: u32,
    send_clock: u64,
    /// After a Session Present CONNACK: (id, seq, is PUBREL) of each resend the session
    /// owes, in the order the messages were first sent.
    owed: VecDeque<(PacketId, u64, bool)>,
    /// A server has acknowledged a session it keeps: CONNECT must not ask for a clean start.
    session_kept: bool,
}

const MAX_PENDING: usize = 6;
const KEEP_ALIVE: u16 = 30;
const ALIAS_MAXIMUM: u16 = 2;

impl Model {
    fn new(protocol: ProtocolVersion, clean_start: bool) -> Self {
        let h = Harness::with(protocol, |c| {
            c.clean_start = clean_start;
            c.session_expiry_interval = 3600;
            c.keep_alive = KEEP_ALIVE;
            c.max_pending = MAX_PENDING;
        });
        Model {
            h,
            protocol,
            clean_start_config: clean_start,
            link: Link::Idle,
            receive_maximum: u16::MAX,
            alias_maximum: 0,
            aliases: HashMap::new(),
            wire: Vec::new(),
            messages: HashMap::new(),
            by_token: HashMap::new(),
            awaiting_comp: HashMap::new(),
            requests: HashMap::new(),
            next_seq: 0,
            next_filter: 0,
            filters: Vec::new(),
            clean_epoch: 0,
            send_clock: 0,
            owed: VecDeque::new(),
            session_kept: false,
        }
    }

    fn live(&self, id: PacketId) -> Option<Live> {
        self.wire.iter().find(|(i, _)| *i == id).map(|(_, l)| *l)
    }

    fn take_live(&mut self, id: PacketId) -> Option<Live> {
        let at = self.wire.iter().position(|(i, _)| *i == id)?;
        Some(self.wire.remove(at).1)
    }

    /// The flow of `id` is over: off the wire, or off the owed resends (`owed` is its
    /// position there).
    fn retire(&mut self, id: PacketId, owed: Option<usize>) {
        match owed {
            Some(at) => {
                self.owed.remove(at);
            }
            None => {
                self.take_live(id);
            }
        }
    }

    /// PUBREC for `id` made the session send PUBREL: it now awaits PUBCOMP on the wire.
    fn await_pubcomp(&mut self, id: PacketId, seq: u64, owed: Option<usize>) {
        match owed {
            Some(at) => {
                self.owed.remove(at);
                let live = Live::PubRel {
                    seq,
                    this_connection: false,
                };
                self.wire.push((id, live));
            }
            None => {
                let slot = self.wire.iter_mut().find(|(i, _)| *i == id).unwrap();
                slot.1 = Live::PubRel {
                    seq,
                    this_connection: true,
                };
            }
        }
    }

    fn insert_live(&mut self, id: PacketId, live: Live) -> Result<(), TestCaseError> {
        prop_assert!(
            self.live(id).is_none(),
            "packet id {} used by {:?} while {:?} still holds it",
            id,
            live,
            self.live(id)
        );
        self.wire.push((id, live));
        Ok(())
    }

    fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Publish(qos) => self.publish(*qos),
            Op::Ack { which, fail } => {
                if self.link != Link::Connected || self.wire.is_empty() {
                    return Ok(());
                }
                let at = match which {
                    Which::Oldest => 0,
                    Which::Newest => self.wire.len() - 1,
                    Which::At(i) => i.index(self.wire.len()),
                };
                let (id, live) = self.wire[at];
                let kind = match live {
                    Live::Publish {
                        qos: QoS::AtLeastOnce,
                        ..
                    } => AckKind::PubAck,
                    Live::Publish { .. } => AckKind::PubRec,
                    Live::PubRel { .. } => AckKind::PubComp,
                    Live::Subscribe => AckKind::SubAck,
                    Live::Unsubscribe => AckKind::UnsubAck,
                };
                self.server_sends(kind, id, *fail)
            }
            Op::Spurious { kind, id } => self.server_sends(*kind, pid(*id), false),
            Op::LoseConnection => self.lose_connection(),
            Op::Reconnect {
                session_present,
                receive_maximum,
            } => self.reconnect(*session_present, *receive_maximum),
            Op::ConnectOnly => {
                self.lose_connection()?;
                self.open()
            }
            Op::Advance { secs, answer_pings } => self.advance(*secs, *answer_pings),
            Op::Subscribe => {
                self.next_filter += 1;
                let f = format!("s/{}", self.next_filter);
                self.filters.push(f.clone());
                let token = self.h.subscribe(&[f.as_str()]);
                prop_assert!(self.requests.insert(token, 0).is_none());
                self.settle()
            }
            Op::Unsubscribe(i) => {
                let f = if self.filters.is_empty() {
                    "s/none".to_owned()
                } else {
                    self.filters[i.index(self.filters.len())].clone()
                };
                let token = self.h.unsubscribe(&[f.as_str()]);
                prop_assert!(self.requests.insert(token, 0).is_none());
                self.settle()
            }
            Op::Disconnect => {
                if self.link == Link::Idle {
                    self.h
                        .session
                        .disconnect(ReasonCode::NORMAL_DISCONNECTION, self.h.now);
                    prop_assert!(self.h.sent().is_empty());
                    return self.settle();
                }
                self.h
                    .session
                    .disconnect(ReasonCode::NORMAL_DISCONNECTION, self.h.now);
                let sent = self.h.sent();
                prop_assert_eq!(
                    sent,
                    vec![disconnect_packet(ReasonCode::NORMAL_DISCONNECTION)]
                );
                self.h.close();
                let events = self.h.events();
                prop_assert_eq!(
                    &events,
                    &vec![Event::Disconnected(DisconnectCause::Requested)]
                );
                self.ended();
                Ok(())
            }
        }
    }

    fn publish(&mut self, qos: QoS) -> Result<(), TestCaseError> {
        self.next_seq += 1;
        let seq = self.next_seq;
        let mut m = message(&format!("t/{}", seq % 3), qos);
        m.payload = Bytes::copy_from_slice(&seq.to_be_bytes());
        let had_room = self.h.session.can_accept_publish();
        match self.h.publish_msg(m) {
            Ok(token) => {
                if qos == QoS::AtMostOnce {
                    prop_assert_eq!(self.link, Link::Connected, "QoS 0 accepted offline");
                } else {
                    prop_assert!(had_room, "accepted beyond max_pending");
                }
                self.messages.insert(
                    seq,
                    Sent {
                        token,
                        qos,
                        finals: 0,
                        accepted: false,
                        refused: false,
                        last_id: None,
                        first_sent: 0,
                    },
                );
                prop_assert!(self.by_token.insert(token, seq).is_none(), "token reused");
            }
            Err(SessionError::NotConnected) => {
                prop_assert!(qos == QoS::AtMostOnce && self.link != Link::Connected);
            }
            Err(SessionError::QueueFull(n)) => {
                prop_assert_eq!(n, MAX_PENDING);
                prop_assert!(qos != QoS::AtMostOnce && !had_room);
            }
            Err(e) => prop_assert!(false, "unexpected error {e:?}"),
        }
        let sent = self.h.sent();
        if qos == QoS::AtMostOnce && self.link == Link::Connected {
            let token = self.messages[&seq].token;
            self.packets(sent)?;
            let events = self.h.events();
            prop_assert_eq!(&events, &vec![Event::Delivered(token)]);
            self.events(events)?;
        } else {
            self.packets(sent)?;
            self.settle()?;
        }
        Ok(())
    }

    /// The server sends an acknowledgement of `kind` for `id`; checks what the session
    /// does with it according to what `id` is on the current connection.
    fn server_sends(
        &mut self,
        kind: AckKind,
        id: PacketId,
        fail: bool,
    ) -> Result<(), TestCaseError> {
        let v5 = self.protocol == V5;
        let code = if fail && v5 {
            ReasonCode::NOT_AUTHORIZED
        } else {
            ReasonCode::SUCCESS
        };
        let connected = self.link == Link::Connected;
        let mut live = if connected { self.live(id) } else { None };
        // A message the session still owes a resend on this connection is in flight all
        // the same: an answer for it counts (though a server would not send one yet).
        let owed = if connected && live.is_none() {
            self.owed.iter().position(|o| o.0 == id)
        } else {
            None
        };
        if let Some(at) = owed {
            let (_, seq, pubrel) = self.owed[at];
            let qos = self.messages[&seq].qos;
            live = Some(if pubrel {
                Live::PubRel {
                    seq,
                    this_connection: false,
                }
            } else {
                Live::Publish { seq, qos }
            });
        }
        // What must come back: a PUBREL (with its code), a final event, a violation.
        let mut expect_pubrel: Option<ReasonCode> = None;
        let mut expect_final: Option<Event> = None;
        let mut expect_violation = self.link == Link::Connecting;
        let packet = match kind {
            AckKind::PubAck => {
                if let Some(Live::Publish {
                    seq,
                    qos: QoS::AtLeastOnce,
                }) = live
                {
                    self.retire(id, owed);
                    expect_final = Some(self.mark_answer(seq, code));
                }
                Packet::PubAck(response(id.get(), code))
            }
            AckKind::PubRec => {
                match live {
                    Some(Live::Publish {
                        seq,
                        qos: QoS::ExactlyOnce,
                    }) => {
                        if code.is_success() {
                            self.await_pubcomp(id, seq, owed);
                            self.awaiting_comp.insert(id, seq);
                            expect_pubrel = Some(ReasonCode::SUCCESS);
                        } else {
                            self.retire(id, owed);
                        }
                        let answer = self.mark_answer(seq, code);
                        if !code.is_success() {
                            expect_final = Some(answer);
                        }
                    }
                    Some(Live::PubRel { seq, .. }) => {
                        if owed.is_some() {
                            self.await_pubcomp(id, seq, owed);
                        }
                        expect_pubrel = Some(ReasonCode::SUCCESS);
                    }
                    _ if connected => {
                        expect_pubrel = Some(if v5 {
                            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                        } else {
                            ReasonCode::SUCCESS
                        });
                    }
                    _ => {}
                }
                Packet::PubRec(response(id.get(), code))
            }
            AckKind::PubComp => {
                if let Some(Live::PubRel { seq, .. }) = live {
                    self.retire(id, owed);
                    self.awaiting_comp.remove(&id);
                    expect_final = Some(Event::Delivered(self.messages[&seq].token));
                }
                Packet::PubComp(PubResponse::success(id))
            }
            AckKind::SubAck => {
                let codes = if fail {
                    vec![ReasonCode::UNSPECIFIED_ERROR]
                } else {
                    vec![ReasonCode::GRANTED_QOS_1]
                };
                match live {
                    Some(Live::Subscribe) => {
                        self.take_live(id);
                    }
                    _ => expect_violation |= connected,
                }
                // The filter count is not checked by the session; one code will do.
                suback(id, &codes)
            }
            AckKind::UnsubAck => {
                match live {
                    Some(Live::Unsubscribe) => {
                        self.take_live(id);
                    }
                    _ => expect_violation |= connected,
                }
                let codes = if v5 {
                    vec![ReasonCode::SUCCESS]
                } else {
                    vec![]
                };
                unsuback(id, &codes)
            }
        };
        self.h.recv(packet);
        let mut sent = self.h.sent();
        if let Some(code) = expect_pubrel {
            let at = sent
                .iter()
                .position(|p| matches!(p, Packet::PubRel(r) if r.packet_id == id));
            prop_assert!(at.is_some(), "no PUBREL for PUBREC {}: {:?}", id, sent);
            let Packet::PubRel(r) = sent.remove(at.unwrap()) else {
                unreachable!()
            };
            prop_assert_eq!(r.reason_code, code);
        }
        let events = self.h.events();
        if let Some(expected) = &expect_final {
            prop_assert!(
                events.contains(expected),
                "expected {:?}, got {:?}",
                expected,
                events
            );
        }
        if expect_violation {
            prop_assert!(
                matches!(
                    events.as_slice(),
                    [Event::Disconnected(DisconnectCause::ProtocolViolation { reason, .. })]
                        if *reason == ReasonCode::PROTOCOL_ERROR
                ),
                "expected a violation for {:?} {}, got {:?}",
                kind,
                id,
                events
            );
            let expected = if v5 {
                vec![disconnect_packet(ReasonCode::PROTOCOL_ERROR)]
            } else {
                vec![]
            };
            prop_assert_eq!(&sent, &expected);
            sent.clear();
        }
        if self.link == Link::Idle {
            prop_assert!(
                sent.is_empty() && events.is_empty(),
                "{:?} {:?}",
                sent,
                events
            );
        }
        self.packets(sent)?;
        self.events(events)
    }

    /// Records the server's answer to message `seq`; returns the final event it implies.
    fn mark_answer(&mut self, seq: u64, code: ReasonCode) -> Event {
        let m = self.messages.get_mut(&seq).unwrap();
        if code.is_success() {
            m.accepted = true;
            Event::Delivered(m.token)
        } else {
            m.refused = true;
            Event::PublishFailed {
                token: m.token,
                reason: code,
            }
        }
    }

    fn lose_connection(&mut self) -> Result<(), TestCaseError> {
        let was = self.link;
        self.h.close();
        let events = self.h.events();
        if was == Link::Idle {
            prop_assert!(events.is_empty());
        } else {
            prop_assert_eq!(
                &events,
                &vec![Event::Disconnected(DisconnectCause::ConnectionLost)]
            );
        }
        prop_assert!(self.h.sent().is_empty());
        self.ended();
        Ok(())
    }

    /// The connection is over: nothing on it awaits an answer any more.
    fn ended(&mut self) {
        self.link = Link::Idle;
        self.wire.clear();
        self.aliases.clear();
        self.owed.clear();
    }

    fn open(&mut self) -> Result<(), TestCaseError> {
        let connect = self.h.open();
        let expect_clean = self.clean_start_config && !self.session_kept;
        prop_assert_eq!(connect.clean_start, expect_clean);
        self.link = Link::Connecting;
        Ok(())
    }

    fn reconnect(
        &mut self,
        session_present: bool,
        receive_maximum: u16,
    ) -> Result<(), TestCaseError> {
        self.lose_connection()?;
        self.open()?;
        let mut properties = ConnAckProperties::default();
        if self.protocol == V5 {
            properties.receive_maximum = Some(nz16(receive_maximum));
            properties.topic_alias_maximum = Some(ALIAS_MAXIMUM);
            self.receive_maximum = receive_maximum;
            self.alias_maximum = ALIAS_MAXIMUM;
        }
        if session_present {
            // What the session must resend: every unfinished QoS 1/2 message sent since the
            // last lost session, PUBREL for those the server has PUBREC'd.
            let epoch = self.clean_epoch;
            let mut owed: Vec<(u64, PacketId, u64, bool)> = self
                .messages
                .iter()
                .filter(|(_, m)| m.finals == 0 && m.qos != QoS::AtMostOnce)
                .filter_map(|(&seq, m)| match m.last_id {
                    Some((id, e)) if e == epoch => Some((m.first_sent, id, seq, m.accepted)),
                    _ => None,
                })
                .collect();
            owed.sort_unstable();
            self.owed = owed
                .into_iter()
                .map(|(_, id, seq, pubrel)| (id, seq, pubrel))
                .collect();
        } else {
            self.clean_epoch += 1;
        }
        self.h.recv(Packet::ConnAck(ConnAck {
            session_present,
            reason_code: ReasonCode::SUCCESS,
            properties,
        }));
        self.link = Link::Connected;
        self.session_kept = true; // session expiry 3600 (5.0), or no clean session (3.1.1)
        let sent = self.h.sent();
        self.packets(sent)?;
        let events = self.h.events();
        prop_assert!(
            events.contains(&Event::Connected { session_present }),
            "{:?}",
            events
        );
        if !session_present {
            // QoS 2 messages past PUBREC are the server's: reported delivered, not resent.
            for seq in self.awaiting_comp.drain().map(|(_, seq)| seq) {
                let token = self.messages[&seq].token;
                prop_assert!(events.contains(&Event::Delivered(token)), "{:?}", events);
            }
        }
        self.events(events)
    }

    fn advance(&mut self, secs: u64, answer_pings: bool) -> Result<(), TestCaseError> {
        let target = self.h.now + Duration::from_secs(secs);
        while let Some(due) = self.h.session.poll_timeout() {
            if due > target {
                break;
            }
            self.h.now = self.h.now.max(due);
            self.h.session.handle_timeout(self.h.now);
            let mut sent = self.h.sent();
            if let Some(at) = sent.iter().position(|p| *p == Packet::PingReq) {
                prop_assert_eq!(self.link, Link::Connected);
                sent.remove(at);
                if answer_pings {
                    self.h.recv(Packet::PingResp);
                }
            }
            self.packets(sent)?;
            let events = self.h.events();
            for e in &events {
                if let Event::Disconnected(cause) = e {
                    let expected = match self.link {
                        Link::Connecting => DisconnectCause::ConnectTimeout,
                        _ => DisconnectCause::KeepAliveTimeout,
                    };
                    prop_assert_eq!(cause, &expected);
                }
            }
            self.events(events)?;
            prop_assert_ne!(self.h.session.poll_timeout(), Some(due), "no progress");
        }
        self.h.now = target;
        Ok(())
    }

    /// Processes whatever the last operation made the session send and report.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        let sent = self.h.sent();
        self.packets(sent)?;
        let events = self.h.events();
        self.events(events)
    }

    /// Checks and records packets the session sent.
    fn packets(&mut self, sent: Vec<Packet>) -> Result<(), TestCaseError> {
        for packet in sent {
            match packet {
                Packet::Publish(p) => {
                    prop_assert_eq!(self.link, Link::Connected, "PUBLISH before CONNACK");
                    let seq = u64::from_be_bytes(p.payload[..].try_into().unwrap());
                    self.check_alias(&p, seq)?;
                    let epoch = self.clean_epoch;
                    self.send_clock += 1;
                    let clock = self.send_clock;
                    let m = self.messages.get_mut(&seq).unwrap();
                    prop_assert_eq!(m.finals, 0, "PUBLISH of a finished message");
                    prop_assert!(!m.accepted, "PUBLISH of a message the server accepted");
                    prop_assert_eq!(p.qos, m.qos);
                    let Some(id) = p.packet_id else {
                        prop_assert_eq!(p.qos, QoS::AtMostOnce);
                        continue;
                    };
                    if p.dup {
                        // Only as the next resend owed after a Session Present CONNACK,
                        // with the id the message had.
                        let next = self.owed.pop_front();
                        prop_assert_eq!(
                            next,
                            Some((id, seq, false)),
                            "DUP PUBLISH {} out of turn",
                            id
                        );
                    } else {
                        prop_assert!(
                            self.owed.is_empty(),
                            "new PUBLISH before the resends: {:?}",
                            self.owed
                        );
                        if let Some((_, sent_epoch)) = m.last_id {
                            prop_assert!(
                                epoch > sent_epoch,
                                "sent again as new without a lost session"
                            );
                        }
                        m.first_sent = clock;
                    }
                    m.last_id = Some((id, epoch));
                    let qos = p.qos;
                    self.insert_live(id, Live::Publish { seq, qos })?;
                }
                Packet::PubRel(r) => {
                    // PUBRELs that answer our PUBREC are taken out by `server_sends`: this
                    // must be the next resend owed.
                    prop_assert_eq!(r.reason_code, ReasonCode::SUCCESS);
                    let next = self.owed.pop_front();
                    prop_assert!(
                        matches!(next, Some((id, _, true)) if id == r.packet_id),
                        "PUBREL {} out of turn, owed {:?}",
                        r.packet_id,
                        next
                    );
                    let seq = next.unwrap().1;
                    let live = Live::PubRel {
                        seq,
                        this_connection: false,
                    };
                    self.insert_live(r.packet_id, live)?;
                }
                Packet::Subscribe(s) => {
                    prop_assert_eq!(self.link, Link::Connected);
                    self.insert_live(s.packet_id, Live::Subscribe)?;
                }
                Packet::Unsubscribe(u) => {
                    prop_assert_eq!(self.link, Link::Connected);
                    self.insert_live(u.packet_id, Live::Unsubscribe)?;
                }
                other => prop_assert!(false, "unexpected packet {:?}", other),
            }
        }
        // Flow control (MQTT 5.0 §4.9): PUBLISH sent on this connection and not yet
        // completed never exceed the server's Receive Maximum.
        let unacknowledged = self
            .wire
            .iter()
            .filter(|(_, l)| {
                matches!(
                    l,
                    Live::Publish { .. }
                        | Live::PubRel {
                            this_connection: true,
                            ..
                        }
                )
            })
            .count();
        prop_assert!(
            unacknowledged <= usize::from(self.receive_maximum),
            "{} unacknowledged PUBLISH, Receive Maximum {}",
            unacknowledged,
            self.receive_maximum
        );
        // And resends only wait while the window is full.
        if !self.owed.is_empty() {
            let on_wire = self
                .wire
                .iter()
                .filter(|(_, l)| matches!(l, Live::Publish { .. } | Live::PubRel { .. }))
                .count();
            prop_assert!(
                on_wire >= usize::from(self.receive_maximum),
                "resends {:?} held back with only {} in flight",
                self.owed,
                on_wire
            );
        }
        Ok(())
    }

    /// The server's view of topic aliases: set before use, within its maximum.
    fn check_alias(&mut self, p: &Publish, seq: u64) -> Result<(), TestCaseError> {
        let expected = format!("t/{}", seq % 3);
        match p.properties.topic_alias.map(NonZeroU16::get) {
            None => prop_assert_eq!(p.topic.as_str(), expected),
            Some(alias) => {
                prop_assert!(
                    alias <= self.alias_maximum,
                    "alias {alias} above the maximum"
                );
                if p.topic.is_empty() {
                    prop_assert_eq!(self.aliases.get(&alias), Some(&expected), "alias {}", alias);
                } else {
                    prop_assert_eq!(p.topic.as_str(), expected.as_str());
                    self.aliases.insert(alias, expected);
                }
            }
        }
        Ok(())
    }

    fn events(&mut self, events: Vec<Event>) -> Result<(), TestCaseError> {
        for event in events {
            match event {
                Event::Connected { .. } => {}
                Event::Disconnected(_) => {
                    // The driver closes the transport; the session already said why.
                    self.h.close();
                    prop_assert!(self.h.events().is_empty(), "a second Disconnected");
                    self.h.sent();
                    self.ended();
                }
                Event::Delivered(token) | Event::PublishFailed { token, .. } => {
                    let failed = matches!(event, Event::PublishFailed { .. });
                    let seq = self.by_token.get(&token).copied();
                    prop_assert!(seq.is_some(), "final event for unknown {:?}", token);
                    let m = self.messages.get_mut(&seq.unwrap()).unwrap();
                    m.finals += 1;
                    prop_assert_eq!(m.finals, 1, "second final event for {:?}", token);
                    if m.qos != QoS::AtMostOnce {
                        if failed {
                            prop_assert!(m.refused, "failed without a refusal: {:?}", token);
                        } else {
                            prop_assert!(m.accepted, "delivered before the server had it");
                        }
                    }
                }
                Event::Subscribed { token, .. } | Event::Unsubscribed { token, .. } => {
                    let count = self.requests.get_mut(&token);
                    prop_assert!(count.is_some(), "answer for unknown {:?}", token);
                    let count = count.unwrap();
                    *count += 1;
                    prop_assert_eq!(*count, 1, "second answer for {:?}", token);
                }
                Event::Resubscribed { .. } => {}
                other => prop_assert!(false, "unexpected event {:?}", other),
            }
        }
        Ok(())
    }

    /// Reconnects with the session kept and answers everything until the session is quiet;
    /// then every QoS 1/2 message and every request must have exactly one answer.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        let receive_maximum = if self.protocol == V5 {
            self.receive_maximum.min(4)
        } else {
            4
        };
        self.reconnect(true, receive_maximum)?;
        let mut rounds = 0;
        while !self.wire.is_empty() {
            rounds += 1;
            prop_assert!(rounds < 10_000, "the session never went quiet");
            self.run(&Op::Ack {
                which: Which::Oldest,
                fail: false,
            })?;
            prop_assert_eq!(self.link, Link::Connected);
        }
        prop_assert_eq!(self.h.session.inflight_len(), 0);
        prop_assert_eq!(self.h.session.pending_len(), 0);
        for (seq, m) in &self.messages {
            if m.qos != QoS::AtMostOnce {
                prop_assert_eq!(
                    m.finals,
                    1,
                    "message {} ({:?}) has no final event",
                    seq,
                    m.token
                );
            }
        }
        for (token, count) in &self.requests {
            prop_assert_eq!(*count, 1, "request {:?} answered {} times", token, count);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn random_operation_sequences_keep_the_session_invariants(
        v5 in any::<bool>(),
        clean_start in any::<bool>(),
        ops in prop::collection::vec(op_strategy(), 1..80),
    ) {
        let protocol = if v5 { V5 } else { V3 };
        // 3.1.1 keeps the session only without clean session.
        let mut model = Model::new(protocol, clean_start && v5);
        for op in &ops {
            model.run(op)?;
        }
        model.finish()?;
    }
}
