//! Byte-exact codec fixtures, derived by hand from the packet layouts of the MQTT 3.1.1
//! (OASIS Standard, 29 October 2014) and MQTT 5.0 (OASIS Standard, 7 March 2019)
//! specifications, chapters 2 and 3 of each.
//!
//! Every positive fixture is a byte literal plus the `Packet` it means, and is checked four
//! ways: `decode` returns exactly that packet and consumes exactly its bytes, `encode`
//! writes exactly those bytes, `encoded_len` is their count, and feeding the bytes one at
//! a time yields `Ok(None)` until the last one. Negative fixtures are bytes `decode` must
//! refuse, with the normative statement the error must cite and the reason code a
//! receiver would send.
//!
//! Rule ids are cited from MQTT 5.0 where a rule exists in both versions, and from 3.1.1
//! only for rules 3.1.1 alone has. Where the specification states a rule without a
//! numbered conformance statement, the expected id is the section that states it.

// A panic in a fixture is a test failure with a message, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{BufMut, Bytes, BytesMut};
use fieldgate::mqtt::codec::{self, EncodeError};
use fieldgate::mqtt::packet::{
    AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, ConnectProperties,
    Disconnect, DisconnectProperties, Packet, PacketId, PacketType, PayloadFormat, ProtocolVersion,
    PubResponse, Publish, PublishProperties, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    SubscribeProperties, Subscription, SubscriptionId, SubscriptionOptions, UnsubAck, Unsubscribe,
    UnsubscribeProperties, UserProperty, Will, WillProperties,
};
use fieldgate::mqtt::string::MqttString;
use fieldgate::mqtt::topic::{TopicFilter, TopicName};

use ProtocolVersion::{V5, V311};

/// No limit beyond the protocol's own (a packet is at most 268,435,460 bytes).
const UNLIMITED: u32 = u32::MAX;

/// PINGREQ: appended after a fixture to check that `decode` takes only its own bytes.
const PINGREQ: &[u8] = &[0xC0, 0x00];

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// A packet and its one canonical encoding.
struct Fixture {
    name: &'static str,
    version: ProtocolVersion,
    bytes: &'static [u8],
    packet: Packet,
}

fn fixture(
    name: &'static str,
    version: ProtocolVersion,
    bytes: &'static [u8],
    packet: Packet,
) -> Fixture {
    Fixture {
        name,
        version,
        bytes,
        packet,
    }
}

/// Bytes the decoder must accept although the encoder writes the same packet differently
/// (a form the specification allows but does not require, e.g. an explicit Success).
struct DecodeOnly {
    name: &'static str,
    version: ProtocolVersion,
    bytes: &'static [u8],
    packet: Packet,
    canonical: &'static [u8],
}

/// Bytes `decode` must refuse.
struct Reject {
    name: &'static str,
    version: ProtocolVersion,
    bytes: &'static [u8],
    max_packet_size: u32,
    /// The error's Display must contain one of these (several only where more than one
    /// statement of the specification applies to the same fault).
    rules: &'static [&'static str],
    /// What the receiver answers with (CONNACK or DISCONNECT reason code).
    reason: u8,
}

fn reject(
    name: &'static str,
    version: ProtocolVersion,
    bytes: &'static [u8],
    rules: &'static [&'static str],
    reason: u8,
) -> Reject {
    Reject {
        name,
        version,
        bytes,
        max_packet_size: UNLIMITED,
        rules,
        reason,
    }
}

/// The Remaining Length a fixture writes and the length of its fixed header, if the
/// fixture has a complete one of at most four bytes.
fn written_remaining_length(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value: usize = 0;
    for (i, &b) in bytes.get(1..)?.iter().enumerate().take(4) {
        value |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, 2 + i));
        }
    }
    None
}

/// Guards against fixture typos: the Remaining Length written in the fixture must be the
/// number of bytes that follow it.
fn check_remaining_length(name: &str, bytes: &[u8]) {
    let Some((value, header)) = written_remaining_length(bytes) else {
        panic!("fixture bug in {name}: no complete Remaining Length");
    };
    assert_eq!(
        value,
        bytes.len() - header,
        "fixture bug in {name}: Remaining Length {value} but {} bytes follow",
        bytes.len() - header
    );
}

/// Decodes `bytes` (plus `trailer`) in one go; the packet must come out and only
/// `trailer` may remain.
fn check_decode_whole(
    version: ProtocolVersion,
    bytes: &[u8],
    trailer: &[u8],
    packet: &Packet,
    errors: &mut Vec<String>,
) {
    let mut buf = BytesMut::from(bytes);
    buf.extend_from_slice(trailer);
    match codec::decode(&mut buf, UNLIMITED, version) {
        Ok(Some(decoded)) => {
            if &decoded != packet {
                errors.push(format!(
                    "decode returned\n      {decoded:?}\n    expected\n      {packet:?}"
                ));
            }
            if buf[..] != trailer[..] {
                errors.push(format!(
                    "decode with {} trailing bytes left {:02X?}, expected {trailer:02X?}",
                    trailer.len(),
                    &buf[..]
                ));
            }
        }
        Ok(None) => errors.push(format!(
            "decode (with {} trailing bytes) returned Ok(None) for a whole packet",
            trailer.len()
        )),
        Err(e) => errors.push(format!(
            "decode (with {} trailing bytes) failed: {e}",
            trailer.len()
        )),
    }
}

/// Feeds `bytes` into a growing buffer; `decode` must say "need more" (and leave the
/// buffer alone) for every proper prefix, then return the packet for the whole.
fn check_decode_byte_by_byte(
    version: ProtocolVersion,
    bytes: &[u8],
    packet: &Packet,
    errors: &mut Vec<String>,
) {
    let mut buf = BytesMut::new();
    for (i, &byte) in bytes.iter().enumerate() {
        match codec::decode(&mut buf, UNLIMITED, version) {
            Ok(None) if buf[..] == bytes[..i] => {}
            Ok(None) => {
                errors.push(format!("decode of a {i}-byte prefix modified the buffer"));
                return;
            }
            other => {
                errors.push(format!(
                    "decode of a {i}-byte prefix returned {other:?}, expected Ok(None)"
                ));
                return;
            }
        }
        buf.put_u8(byte);
    }
    match codec::decode(&mut buf, UNLIMITED, version) {
        Ok(Some(decoded)) if &decoded == packet && buf.is_empty() => {}
        other => errors.push(format!(
            "decode after the last byte returned {other:?} leaving {} bytes",
            buf.len()
        )),
    }
}

/// `encode` writes exactly `bytes`, and `encoded_len` agrees.
fn check_encode(version: ProtocolVersion, packet: &Packet, bytes: &[u8], errors: &mut Vec<String>) {
    let mut buf = BytesMut::new();
    match codec::encode(packet, version, &mut buf) {
        Ok(()) if buf[..] == bytes[..] => {}
        Ok(()) => errors.push(format!(
            "encode wrote\n      {:02X?}\n    expected\n      {bytes:02X?}",
            &buf[..]
        )),
        Err(e) => errors.push(format!("encode failed: {e}")),
    }
    match codec::encoded_len(packet, version) {
        Ok(len) if len == bytes.len() => {}
        other => errors.push(format!(
            "encoded_len returned {other:?}, expected Ok({})",
            bytes.len()
        )),
    }
}

/// Collects every failure of every fixture, then fails once with all of them.
fn report(kind: &str, total: usize, failures: Vec<(String, Vec<String>)>) {
    if failures.is_empty() {
        return;
    }
    let mut message = format!("{} of {total} {kind} failed:\n", failures.len());
    for (name, errors) in &failures {
        message.push_str(&format!("  {name}:\n"));
        for e in errors {
            message.push_str(&format!("    - {e}\n"));
        }
    }
    panic!("{message}");
}

fn round_trip(fixtures: &[Fixture]) {
    let mut failures = Vec::new();
    for f in fixtures {
        check_remaining_length(f.name, f.bytes);
        let mut errors = Vec::new();
        check_decode_whole(f.version, f.bytes, &[], &f.packet, &mut errors);
        check_decode_whole(f.version, f.bytes, PINGREQ, &f.packet, &mut errors);
        check_encode(f.version, &f.packet, f.bytes, &mut errors);
        check_decode_byte_by_byte(f.version, f.bytes, &f.packet, &mut errors);
        if !errors.is_empty() {
            failures.push((format!("{} ({})", f.name, f.version), errors));
        }
    }
    report("fixtures", fixtures.len(), failures);
}

fn decode_only(fixtures: &[DecodeOnly]) {
    let mut failures = Vec::new();
    for f in fixtures {
        check_remaining_length(f.name, f.bytes);
        check_remaining_length(f.name, f.canonical);
        let mut errors = Vec::new();
        check_decode_whole(f.version, f.bytes, &[], &f.packet, &mut errors);
        check_decode_whole(f.version, f.bytes, PINGREQ, &f.packet, &mut errors);
        check_decode_byte_by_byte(f.version, f.bytes, &f.packet, &mut errors);
        check_encode(f.version, &f.packet, f.canonical, &mut errors);
        if !errors.is_empty() {
            failures.push((format!("{} ({})", f.name, f.version), errors));
        }
    }
    report("decode-only fixtures", fixtures.len(), failures);
}

fn rejects(fixtures: &[Reject]) {
    let mut failures = Vec::new();
    for f in fixtures {
        // Only the fixtures about the Remaining Length itself, or that stop after the
        // fixed header, may disagree with their own length.
        let about_the_header = f.max_packet_size != UNLIMITED
            || f.rules.iter().any(|rule| rule.starts_with("MQTT-1.5.5"));
        if !about_the_header {
            check_remaining_length(f.name, f.bytes);
        }
        let mut errors = Vec::new();
        let mut buf = BytesMut::from(f.bytes);
        match codec::decode(&mut buf, f.max_packet_size, f.version) {
            Err(e) => {
                let text = e.to_string();
                if !f.rules.iter().any(|rule| text.contains(rule)) {
                    errors.push(format!("error {text:?} cites none of {:?}", f.rules));
                }
                if e.reason_code() != ReasonCode(f.reason) {
                    errors.push(format!(
                        "error {text:?} maps to {:?}, expected ReasonCode({:#04x})",
                        e.reason_code(),
                        f.reason
                    ));
                }
            }
            other => errors.push(format!("decode returned {other:?}, expected an error")),
        }
        if !errors.is_empty() {
            failures.push((
                format!("{} ({}, {:02X?})", f.name, f.version, f.bytes),
                errors,
            ));
        }
    }
    report("negative fixtures", fixtures.len(), failures);
}

// ---------------------------------------------------------------------------------------
// Value helpers
// ---------------------------------------------------------------------------------------

fn s(v: &str) -> MqttString {
    MqttString::try_from(v).unwrap()
}

fn topic(v: &str) -> TopicName {
    TopicName::try_from(v).unwrap()
}

fn filter(v: &str) -> TopicFilter {
    TopicFilter::try_from(v).unwrap()
}

fn id(v: u16) -> PacketId {
    PacketId::new(v).unwrap()
}

fn nz16(v: u16) -> NonZeroU16 {
    NonZeroU16::new(v).unwrap()
}

fn nz32(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap()
}

fn sub_id(v: u32) -> SubscriptionId {
    SubscriptionId::new(v).unwrap()
}

fn user(name: &str, value: &str) -> UserProperty {
    UserProperty {
        name: s(name),
        value: s(value),
    }
}

fn bin(b: &'static [u8]) -> Bytes {
    Bytes::from_static(b)
}

fn connect(c: Connect) -> Packet {
    Packet::Connect(Box::new(c))
}

/// A CONNECT with nothing optional: the base that fixtures override.
fn bare_connect(protocol: ProtocolVersion, client_id: &str) -> Connect {
    Connect {
        protocol,
        clean_start: false,
        keep_alive: 0,
        client_id: s(client_id),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

fn publish(qos: QoS, t: &str, packet_id: Option<u16>, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic(t),
        packet_id: packet_id.map(id),
        payload: bin(payload),
        properties: PublishProperties::default(),
    }
}

fn response(packet_id: u16, reason: u8, properties: AckProperties) -> PubResponse {
    PubResponse {
        packet_id: id(packet_id),
        reason_code: ReasonCode(reason),
        properties,
    }
}

fn reason_string(v: &str) -> AckProperties {
    AckProperties {
        reason_string: Some(s(v)),
        user_properties: Vec::new(),
    }
}

fn options(
    qos: QoS,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: RetainHandling,
) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        no_local,
        retain_as_published,
        retain_handling,
    }
}

fn sub(f: &str, options: SubscriptionOptions) -> Subscription {
    Subscription {
        filter: filter(f),
        options,
    }
}

fn sub_qos(f: &str, qos: QoS) -> Subscription {
    sub(
        f,
        SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        },
    )
}

fn codes(values: &[u8]) -> Vec<ReasonCode> {
    values.iter().copied().map(ReasonCode).collect()
}

// ---------------------------------------------------------------------------------------
// MQTT 5.0: CONNECT (§3.1)
// ---------------------------------------------------------------------------------------

const V5_CONNECT_FULL: &[u8] = &[
    0x10, 0x81, 0x01, // CONNECT, Remaining Length 129 (two bytes)
    // Variable header
    0x00, 0x04, b'M', b'Q', b'T', b'T', // Protocol Name
    0x05, // Protocol Version 5
    0xF6, // Connect Flags: User Name, Password, Will Retain, Will QoS 2, Will, Clean Start
    0x00, 0x3C, // Keep Alive 60
    0x30, // Property Length 48
    0x11, 0x00, 0x00, 0x0E, 0x10, // 0x11 Session Expiry Interval 3600
    0x21, 0x00, 0x14, // 0x21 Receive Maximum 20
    0x27, 0x00, 0x00, 0x40, 0x00, // 0x27 Maximum Packet Size 16384
    0x22, 0x00, 0x0A, // 0x22 Topic Alias Maximum 10
    0x19, 0x01, // 0x19 Request Response Information 1
    0x17, 0x00, // 0x17 Request Problem Information 0
    0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M', // 0x15 Authentication Method
    0x16, 0x00, 0x03, 0x01, 0x02, 0x03, // 0x16 Authentication Data
    0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'1', // 0x26 User Property a=1
    0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'2', // 0x26 User Property a=2 (same name again)
    // Payload
    0x00, 0x04, b'd', b'e', b'v', b'1', // Client Identifier "dev1"
    0x27, // Will Property Length 39
    0x18, 0x00, 0x00, 0x00, 0x1E, // 0x18 Will Delay Interval 30
    0x01, 0x01, // 0x01 Payload Format Indicator 1 (UTF-8)
    0x02, 0x00, 0x00, 0x00, 0x78, // 0x02 Message Expiry Interval 120
    0x03, 0x00, 0x04, b'j', b's', b'o', b'n', // 0x03 Content Type "json"
    0x08, 0x00, 0x05, b'r', b'e', b'p', b'l', b'y', // 0x08 Response Topic "reply"
    0x09, 0x00, 0x02, 0xCA, 0xFE, // 0x09 Correlation Data
    0x26, 0x00, 0x01, b'w', 0x00, 0x01, b'x', // 0x26 User Property w=x
    0x00, 0x06, b'l', b'w', b't', b'/', b'd', b'1', // Will Topic "lwt/d1"
    0x00, 0x03, b'b', b'y', b'e', // Will Payload "bye"
    0x00, 0x05, b'a', b'l', b'i', b'c', b'e', // User Name "alice"
    0x00, 0x02, b'p', b'w', // Password "pw"
];

fn v5_connect_full() -> Packet {
    connect(Connect {
        protocol: V5,
        clean_start: true,
        keep_alive: 60,
        client_id: s("dev1"),
        will: Some(Will {
            topic: topic("lwt/d1"),
            payload: bin(b"bye"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval: Some(30),
                payload_format_indicator: Some(PayloadFormat::Utf8),
                message_expiry_interval: Some(120),
                content_type: Some(s("json")),
                response_topic: Some(topic("reply")),
                correlation_data: Some(bin(&[0xCA, 0xFE])),
                user_properties: vec![user("w", "x")],
            },
        }),
        username: Some(s("alice")),
        password: Some(bin(b"pw")),
        properties: ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(nz16(20)),
            maximum_packet_size: Some(nz32(16384)),
            topic_alias_maximum: Some(10),
            request_response_information: Some(true),
            request_problem_information: Some(false),
            authentication_method: Some(s("SCRAM")),
            authentication_data: Some(bin(&[0x01, 0x02, 0x03])),
            user_properties: vec![user("a", "1"), user("a", "2")],
        },
    })
}

#[test]
fn v5_connect_with_will_and_all_properties_round_trips_byte_exact() {
    round_trip(&[fixture(
        "CONNECT with every property, a will with every will property, user name and password",
        V5,
        V5_CONNECT_FULL,
        v5_connect_full(),
    )]);
}

#[test]
fn v5_connect_variable_header_example_from_the_spec_round_trips_byte_exact() {
    // MQTT 5.0 §3.1.2.12, Figure 3-6: "00 04 'M' 'Q' 'T' 'T' 05 CE 00 0A 05 11 00 00 00 0A".
    const BYTES: &[u8] = &[
        0x10, 0x23, // CONNECT, Remaining Length 35
        0x00, 0x04, b'M', b'Q', b'T', b'T', // Protocol Name
        0x05, // Protocol Version 5
        0xCE, // User Name, Password, Will QoS 1, Will Flag, Clean Start
        0x00, 0x0A, // Keep Alive 10
        0x05, // Property Length 5
        0x11, 0x00, 0x00, 0x00, 0x0A, // 0x11 Session Expiry Interval 10
        // Payload
        0x00, 0x02, b'c', b'1', // Client Identifier "c1"
        0x00, // Will Property Length 0
        0x00, 0x01, b'w', // Will Topic "w"
        0x00, 0x03, b'b', b'y', b'e', // Will Payload "bye"
        0x00, 0x01, b'u', // User Name "u"
        0x00, 0x01, b'p', // Password "p"
    ];
    round_trip(&[fixture(
        "spec example CONNECT",
        V5,
        BYTES,
        connect(Connect {
            clean_start: true,
            keep_alive: 10,
            will: Some(Will {
                topic: topic("w"),
                payload: bin(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: WillProperties::default(),
            }),
            username: Some(s("u")),
            password: Some(bin(b"p")),
            properties: ConnectProperties {
                session_expiry_interval: Some(10),
                ..ConnectProperties::default()
            },
            ..bare_connect(V5, "c1")
        }),
    )]);
}

#[test]
fn v5_connect_minimal_round_trips_byte_exact() {
    const BYTES: &[u8] = &[
        0x10, 0x0D, // CONNECT, Remaining Length 13
        0x00, 0x04, b'M', b'Q', b'T', b'T', // Protocol Name
        0x05, // Protocol Version 5
        0x00, // Connect Flags: none
        0x00, 0x00, // Keep Alive 0
        0x00, // Property Length 0
        0x00, 0x00, // Client Identifier "" (the server assigns one)
    ];
    round_trip(&[fixture(
        "minimal CONNECT",
        V5,
        BYTES,
        connect(bare_connect(V5, "")),
    )]);
}

#[test]
fn v5_connect_with_password_but_no_user_name_round_trips_byte_exact() {
    // MQTT 5.0 §3.1.2.9: unlike 3.1.1, a Password without a User Name is allowed.
    const BYTES: &[u8] = &[
        0x10, 0x14, // CONNECT, Remaining Length 20
        0x00, 0x04, b'M', b'Q', b'T', b'T', // Protocol Name
        0x05, // Protocol Version 5
        0x42, // Connect Flags: Password, Clean Start
        0x00, 0x1E, // Keep Alive 30
        0x00, // Property Length 0
        0x00, 0x02, b'c', b'2', // Client Identifier "c2"
        0x00, 0x03, b't', b'o', b'k', // Password "tok"
    ];
    round_trip(&[fixture(
        "CONNECT with password only",
        V5,
        BYTES,
        connect(Connect {
            clean_start: true,
            keep_alive: 30,
            password: Some(bin(b"tok")),
            ..bare_connect(V5, "c2")
        }),
    )]);
}

// ---------------------------------------------------------------------------------------
// MQTT 5.0: CONNACK (§3.2)
// ---------------------------------------------------------------------------------------

#[test]
fn v5_connack_with_all_properties_round_trips_byte_exact() {
    const BYTES: &[u8] = &[
        0x20, 0x4D, // CONNACK, Remaining Length 77
        0x01, // Connect Acknowledge Flags: Session Present
        0x00, // Reason Code 0x00 Success
        0x4A, // Property Length 74
        0x11, 0x00, 0x00, 0x00, 0x3C, // 0x11 Session Expiry Interval 60
        0x21, 0x00, 0x0A, // 0x21 Receive Maximum 10
        0x24, 0x01, // 0x24 Maximum QoS 1
        0x25, 0x00, // 0x25 Retain Available 0
        0x27, 0x00, 0x01, 0x00, 0x00, // 0x27 Maximum Packet Size 65536
        0x12, 0x00, 0x04, b'a', b'u', b't', b'o', // 0x12 Assigned Client Identifier
        0x22, 0x00, 0x05, // 0x22 Topic Alias Maximum 5
        0x1F, 0x00, 0x02, b'o', b'k', // 0x1F Reason String "ok"
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // 0x26 User Property k=v
        0x28, 0x01, // 0x28 Wildcard Subscription Available 1
        0x29, 0x00, // 0x29 Subscription Identifiers Available 0
        0x2A, 0x01, // 0x2A Shared Subscription Available 1
        0x13, 0x00, 0x1E, // 0x13 Server Keep Alive 30
        0x1A, 0x00, 0x04, b'r', b'e', b's', b'p', // 0x1A Response Information
        0x1C, 0x00, 0x03, b's', b'r', b'v', // 0x1C Server Reference
        0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M', // 0x15 Authentication Method
        0x16, 0x00, 0x02, 0xAB, 0xCD, // 0x16 Authentication Data
    ];
    round_trip(&[fixture(
        "CONNACK with every property",
        V5,
        BYTES,
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: ReasonCode::SUCCESS,
            properties: ConnAckProperties {
                session_expiry_interval: Some(60),
                receive_maximum: Some(nz16(10)),
                maximum_qos: Some(QoS::AtLeastOnce),
                retain_available: Some(false),
                maximum_packet_size: Some(nz32(65536)),
                assigned_client_identifier: Some(s("auto")),
                topic_alias_maximum: Some(5),
                reason_string: Some(s("ok")),
                user_properties: vec![user("k", "v")],
                wildcard_subscription_available: Some(true),
                subscription_identifiers_available: Some(false),
                shared_subscription_available: Some(true),
                server_keep_alive: Some(30),
                response_information: Some(s("resp")),
                server_reference: Some(s("srv")),
                authentication_method: Some(s("SCRAM")),
                authentication_data: Some(bin(&[0xAB, 0xCD])),
            },
        }),
    )]);
}

#[test]
fn v5_connack_success_and_refusal_round_trip_byte_exact() {
    round_trip(&[
        fixture(
            "CONNACK success, no properties",
            V5,
            // CONNACK, RL 3, flags 0, Reason Code 0x00, Property Length 0
            &[0x20, 0x03, 0x00, 0x00, 0x00],
            Packet::ConnAck(ConnAck::default()),
        ),
        fixture(
            "CONNACK refused 0x87 Not authorized",
            V5,
            // CONNACK, RL 3, flags 0, Reason Code 0x87, Property Length 0
            &[0x20, 0x03, 0x00, 0x87, 0x00],
            Packet::ConnAck(ConnAck {
                reason_code: ReasonCode::NOT_AUTHORIZED,
                ..ConnAck::default()
            }),
        ),
        fixture(
            "CONNACK refused 0x84 Unsupported Protocol Version",
            V5,
            // CONNACK, RL 3, flags 0, Reason Code 0x84, Property Length 0
            &[0x20, 0x03, 0x00, 0x84, 0x00],
            Packet::ConnAck(ConnAck {
                reason_code: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                ..ConnAck::default()
            }),
        ),
    ]);
}

// ---------------------------------------------------------------------------------------
// MQTT 5.0: PUBLISH (§3.3)
// ---------------------------------------------------------------------------------------

#[test]
fn v5_publish_qos0_and_qos1_with_dup_and_retain_round_trip_byte_exact() {
    round_trip(&[
        fixture(
            "PUBLISH QoS 0",
            V5,
            &[
                0x30, 0x08, // PUBLISH, DUP 0 QoS 0 RETAIN 0, Remaining Length 8
                0x00, 0x03, b'a', b'/', b'b', // Topic Name "a/b"
                0x00, // Property Length 0
                b'h', b'i', // Payload "hi"
            ],
            Packet::Publish(publish(QoS::AtMostOnce, "a/b", None, b"hi")),
        ),
        fixture(
            "PUBLISH QoS 1 DUP RETAIN",
            V5,
            &[
                0x3B, 0x07, // PUBLISH, DUP 1 QoS 1 RETAIN 1, Remaining Length 7
                0x00, 0x01, b't', // Topic Name "t"
                0x00, 0x0A, // Packet Identifier 10
                0x00, // Property Length 0
                b'x', // Payload "x"
            ],
            Packet::Publish(Publish {
                dup: true,
                retain: true,
                ..publish(QoS::AtLeastOnce, "t", Some(10), b"x")
            }),
        ),
        fixture(
            // MQTT 5.0 §3.3.2.3.9, Figure 3-9: Topic "a/b", Packet Identifier 10, no
            // properties: "00 03 'a' '/' 'b' 00 0A 00".
            "spec example PUBLISH variable header",
            V5,
            &[
                0x32, 0x0A, // PUBLISH QoS 1, Remaining Length 10
                0x00, 0x03, b'a', b'/', b'b', // Topic Name "a/b"
                0x00, 0x0A, // Packet Identifier 10
                0x00, // Property Length 0
                b'h', b'i', // Payload "hi"
            ],
            Packet::Publish(publish(QoS::AtLeastOnce, "a/b", Some(10), b"hi")),
        ),
    ]);
}

#[test]
fn v5_publish_qos2_with_every_property_round_trips_byte_exact() {
    const BYTES: &[u8] = &[
        0x34, 0x3E, // PUBLISH, DUP 0 QoS 2 RETAIN 0, Remaining Length 62
        0x00, 0x03, b's', b'/', b'1', // Topic Name "s/1"
        0x12, 0x34, // Packet Identifier 0x1234
        0x34, // Property Length 52
        0x01, 0x01, // 0x01 Payload Format Indicator 1 (UTF-8)
        0x02, 0x00, 0x00, 0x0E, 0x10, // 0x02 Message Expiry Interval 3600
        0x23, 0x00, 0x07, // 0x23 Topic Alias 7 (sets the mapping)
        0x08, 0x00, 0x03, b'r', b'/', b'1', // 0x08 Response Topic "r/1"
        0x09, 0x00, 0x04, 0x01, 0x02, 0x03, 0x04, // 0x09 Correlation Data
        0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'1', // 0x26 User Property a=1
        0x26, 0x00, 0x01, b'b', 0x00, 0x01, b'2', // 0x26 User Property b=2
        0x0B, 0x80, 0x01, // 0x0B Subscription Identifier 128 (two-byte VBI)
        0x0B, 0xFF, 0xFF, 0xFF, 0x7F, // 0x0B Subscription Identifier 268435455
        0x03, 0x00, 0x04, b'j', b's', b'o', b'n', // 0x03 Content Type "json"
        b'{', b'}', // Payload "{}"
    ];
    round_trip(&[fixture(
        "PUBLISH QoS 2 with every property",
        V5,
        BYTES,
        Packet::Publish(Publish {
            properties: PublishProperties {
                payload_format_indicator: Some(PayloadFormat::Utf8),
                message_expiry_interval: Some(3600),
                topic_alias: Some(nz16(7)),
                response_topic: Some(topic("r/1")),
                correlation_data: Some(bin(&[1, 2, 3, 4])),
                user_properties: vec![user("a", "1"), user("b", "2")],
                subscription_identifiers: vec![sub_id(128), sub_id(268_435_455)],
                content_type: Some(s("json")),
            },
            ..publish(QoS::ExactlyOnce, "s/1", Some(0x1234), b"{}")
        }),
    )]);
}

#[test]
fn v5_publish_with_empty_topic_and_topic_alias_round_trips_byte_exact() {
    round_trip(&[fixture(
        "PUBLISH naming its topic by alias only",
        V5,
        &[
            0x30, 0x07, // PUBLISH QoS 0, Remaining Length 7
            0x00, 0x00, // Topic Name "" (zero length)
            0x03, // Property Length 3
            0x23, 0x00, 0x02, // 0x23 Topic Alias 2
            b'v', // Payload "v"
        ],
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: TopicName::empty_for_alias(),
            packet_id: None,
            payload: bin(b"v"),
            properties: PublishProperties {
                topic_alias: Some(nz16(2)),
                ..PublishProperties::default()
            },
        }),
    )]);
}

// ---------------------------------------------------------------------------------------
// MQTT 5.0: PUBACK, PUBREC, PUBREL, PUBCOMP (§3.4 to §3.7)
// ---------------------------------------------------------------------------------------

#[test]
fn v5_puback_in_its_three_length_forms_round_trips_byte_exact() {
    round_trip(&[
        fixture(
            "PUBACK Success, no properties: Remaining Length 2",
            V5,
            &[0x40, 0x02, 0x00, 0x01], // PUBACK, RL 2, Packet Identifier 1
            Packet::PubAck(PubResponse::success(id(1))),
        ),
        fixture(
            "PUBACK 0x10 No matching subscribers, no properties: Remaining Length 3",
            V5,
            &[0x40, 0x03, 0x00, 0x02, 0x10], // PUBACK, RL 3, id 2, Reason Code 0x10
            Packet::PubAck(response(2, 0x10, AckProperties::default())),
        ),
        fixture(
            "PUBACK 0x80 with properties",
            V5,
            &[
                0x40, 0x12, // PUBACK, Remaining Length 18
                0x00, 0x03, // Packet Identifier 3
                0x80, // Reason Code 0x80 Unspecified error
                0x0E, // Property Length 14
                0x1F, 0x00, 0x04, b'f', b'u', b'l', b'l', // 0x1F Reason String "full"
                0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // 0x26 User Property k=v
            ],
            Packet::PubAck(response(
                3,
                0x80,
                AckProperties {
                    reason_string: Some(s("full")),
                    user_properties: vec![user("k", "v")],
                },
            )),
        ),
    ]);
}

#[test]
fn v5_pubrec_in_its_three_length_forms_round_trips_byte_exact() {
    round_trip(&[
        fixture(
            "PUBREC Success, no properties",
            V5,
            &[0x50, 0x02, 0x00, 0x01], // PUBREC, RL 2, Packet Identifier 1
            Packet::PubRec(PubResponse::success(id(1))),
        ),
        fixture(
            "PUBREC 0x97 Quota exceeded, no properties",
            V5,
            &[0x50, 0x03, 0x00, 0x02, 0x97], // PUBREC, RL 3, id 2, Reason Code 0x97
            Packet::PubRec(response(2, 0x97, AckProperties::default())),
        ),
        fixture(
            "PUBREC Success with a property (the reason code must then be written)",
            V5,
            &[
                0x50, 0x09, // PUBREC, Remaining Length 9
                0x00, 0x03, // Packet Identifier 3
                0x00, // Reason Code 0x00 Success
                0x05, // Property Length 5
                0x1F, 0x00, 0x02, b'o', b'k', // 0x1F Reason String "ok"
            ],
            Packet::PubRec(response(3, 0x00, reason_string("ok"))),
        ),
    ]);
}

#[test]
fn v5_pubrel_in_its_three_length_forms_round_trips_byte_exact() {
    round_trip(&[
        fixture(
            "PUBREL Success, no properties",
            V5,
            &[0x62, 0x02, 0x00, 0x01], // PUBREL (flags 0b0010), RL 2, Packet Identifier 1
            Packet::PubRel(PubResponse::success(id(1))),
        ),
        fixture(
            "PUBREL 0x92 Packet Identifier not found, no properties",
            V5,
            &[0x62, 0x03, 0x00, 0x02, 0x92], // PUBREL, RL 3, id 2, Reason Code 0x92
            Packet::PubRel(response(2, 0x92, AckProperties::default())),
        ),
        fixture(
            "PUBREL 0x92 with properties",
            V5,
            &[
                0x62, 0x0B, // PUBREL, Remaining Length 11
                0x00, 0x03, // Packet Identifier 3
                0x92, // Reason Code 0x92
                0x07, // Property Length 7
                0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // 0x26 User Property k=v
            ],
            Packet::PubRel(response(
                3,
                0x92,
                AckProperties {
                    reason_string: None,
                    user_properties: vec![user("k", "v")],
                },
            )),
        ),
    ]);
}

#[test]
fn v5_pubcomp_in_its_three_length_forms_round_trips_byte_exact() {
    round_trip(&[
        fixture(
            "PUBCOMP Success, no properties",
            V5,
            &[0x70, 0x02, 0xFF, 0xFF], // PUBCOMP, RL 2, Packet Identifier 65535
            Packet::PubComp(PubResponse::success(id(0xFFFF))),
        ),
        fixture(
            "PUBCOMP 0x92 Packet Identifier not found, no properties",
            V5,
            &[0x70, 0x03, 0x00, 0x02, 0x92], // PUBCOMP, RL 3, id 2, Reason Code 0x92
            Packet::PubComp(response(2, 0x92, AckProperties::default())),
        ),
        fixture(
            "PUBCOMP Success with a property",
            V5,
            &[
                0x70, 0x0B, // PUBCOMP, Remaining Length 11
                0x00, 0x03, // Packet Identifier 3
                0x00, // Reason Code 0x00 Success
                0x07, // Property Length 7
                0x1F, 0x00, 0x04, b'd', b'o', b'n', b'e', // 0x1F Reason String "done"
            ],
            Packet::PubComp(response(3, 0x00, reason_string("done"))),
        ),
    ]);
}

#[test]
fn v5_acknowledgements_in_forms_the_encoder_does_not_choose_still_decode() {
    // §3.4.2.1 and §3.4.2.2: the Reason Code and the Property Length may be omitted, not
    // must; a sender may write Success or an empty property list explicitly.
    // §3.14.2.2.1: DISCONNECT with Remaining Length 1 has no Property Length.
    // §3.15.2.1: AUTH may carry an explicit Success and empty properties.
    decode_only(&[
        DecodeOnly {
            name: "PUBACK with an explicit Success reason code",
            version: V5,
            bytes: &[0x40, 0x03, 0x00, 0x01, 0x00], // RL 3, id 1, Reason Code 0x00
            packet: Packet::PubAck(PubResponse::success(id(1))),
            canonical: &[0x40, 0x02, 0x00, 0x01],
        },
        DecodeOnly {
            name: "PUBACK with explicit Success and Property Length 0",
            version: V5,
            bytes: &[0x40, 0x04, 0x00, 0x01, 0x00, 0x00], // RL 4, id 1, 0x00, props 0
            packet: Packet::PubAck(PubResponse::success(id(1))),
            canonical: &[0x40, 0x02, 0x00, 0x01],
        },
        DecodeOnly {
            name: "PUBREL 0x92 with Property Length 0",
            version: V5,
            bytes: &[0x62, 0x04, 0x00, 0x02, 0x92, 0x00], // RL 4, id 2, 0x92, props 0
            packet: Packet::PubRel(response(2, 0x92, AckProperties::default())),
            canonical: &[0x62, 0x03, 0x00, 0x02, 0x92],
        },
        DecodeOnly {
            name: "DISCONNECT with an explicit Normal disconnection",
            version: V5,
            bytes: &[0xE0, 0x01, 0x00], // RL 1, Reason Code 0x00
            packet: Packet::Disconnect(Disconnect::default()),
            canonical: &[0xE0, 0x00],
        },
        DecodeOnly {
            name: "DISCONNECT with explicit Normal disconnection and Property Length 0",
            version: V5,
            bytes: &[0xE0, 0x02, 0x00, 0x00], // RL 2, Reason Code 0x00, props 0
            packet: Packet::Disconnect(Disconnect::default()),
            canonical: &[0xE0, 0x00],
        },
        DecodeOnly {
            name: "DISCONNECT 0x04 with Property Length 0",
            version: V5,
            bytes: &[0xE0, 0x02, 0x04, 0x00], // RL 2, Reason Code 0x04, props 0
            packet: Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
                properties: DisconnectProperties::default(),
            }),
            canonical: &[0xE0, 0x01, 0x04],
        },
        DecodeOnly {
            name: "AUTH with explicit Success and Property Length 0",
            version: V5,
            bytes: &[0xF0, 0x02, 0x00, 0x00], // RL 2, Reason Code 0x00, props 0
            packet: Packet::Auth(Auth::default()),
            canonical: &[0xF0, 0x00],
        },
    ]);
}

// ---------------------------------------------------------------------------------------
// MQTT 5.0: SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK (§3.8 to §3.11)
// ---------------------------------------------------------------------------------------

#[test]
fn v5_subscribe_with_every_option_combination_round_trips_byte_exact() {
    const BYTES: &[u8] = &[
        0x82, 0x38, // SUBSCRIBE (flags 0b0010), Remaining Length 56
        0x00, 0x0A, // Packet Identifier 10
        0x0A, // Property Length 10
        0x0B, 0x96, 0x01, // 0x0B Subscription Identifier 150 (two-byte VBI)
        0x26, 0x00, 0x01, b'u', 0x00, 0x01, b'p', // 0x26 User Property u=p
        // Payload: Topic Filter + Subscription Options
        0x00, 0x03, b'a', b'/', b'+', // "a/+"
        0x00, // QoS 0
        0x00, 0x03, b'b', b'/', b'#', // "b/#"
        0x05, // QoS 1, No Local
        0x00, 0x01, b'c', // "c"
        0x0A, // QoS 2, Retain As Published
        0x00, 0x03, b'd', b'/', b'e', // "d/e"
        0x11, // QoS 1, Retain Handling 1
        0x00, 0x0E, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'r', b'p', b'/', b'f', b'/',
        b'#', // "$share/grp/f/#"
        0x2A, // QoS 2, Retain As Published, Retain Handling 2
        0x00, 0x01, b'g', // "g"
        0x2D, // QoS 1, No Local, Retain As Published, Retain Handling 2
    ];
    round_trip(&[fixture(
        "SUBSCRIBE with six filters",
        V5,
        BYTES,
        Packet::Subscribe(Subscribe {
            packet_id: id(10),
            subscriptions: vec![
                sub_qos("a/+", QoS::AtMostOnce),
                sub(
                    "b/#",
                    options(
                        QoS::AtLeastOnce,
                        true,
                        false,
                        RetainHandling::SendAtSubscribe,
                    ),
                ),
                sub(
                    "c",
                    options(
                        QoS::ExactlyOnce,
                        false,
                        true,
                        RetainHandling::SendAtSubscribe,
                    ),
                ),
                sub(
                    "d/e",
                    options(
                        QoS::AtLeastOnce,
                        false,
                        false,
                        RetainHandling::SendAtSubscribeIfNew,
                    ),
                ),
                sub(
                    "$share/grp/f/#",
                    options(QoS::ExactlyOnce, false, true, RetainHandling::DoNotSend),
                ),
                sub(
                    "g",
                    options(QoS::AtLeastOnce, true, true, RetainHandling::DoNotSend),
                ),
            ],
            properties: SubscribeProperties {
                subscription_identifier: Some(sub_id(150)),
                user_properties: vec![user("u", "p")],
            },
        }),
    )]);
}

#[test]
fn v5_subscribe_payload_example_from_the_spec_round_trips_byte_exact() {
    // MQTT 5.0 §3.8.3, Figure 3-21: "a/b" with options 1 and "c/d" with options 2.
    round_trip(&[fixture(
        "spec example SUBSCRIBE",
        V5,
        &[
            0x82, 0x0F, // SUBSCRIBE, Remaining Length 15
            0x00, 0x0A, // Packet Identifier 10
            0x00, // Property Length 0
            0x00, 0x03, b'a', b'/', b'b', 0x01, // "a/b", QoS 1
            0x00, 0x03, b'c', b'/', b'd', 0x02, // "c/d", QoS 2
        ],
        Packet::Subscribe(Subscribe {
            packet_id: id(10),
            subscriptions: vec![
                sub_qos("a/b", QoS::AtLeastOnce),
                sub_qos("c/d", QoS::ExactlyOnce),
            ],
            properties: SubscribeProperties::default(),
        }),
    )]);
}

#[test]
fn v5_suback_with_mixed_reason_codes_and_a_reason_string_round_trips_byte_exact() {
    round_trip(&[fixture(
        "SUBACK with seven reason codes",
        V5,
        &[
            0x90, 0x14, // SUBACK, Remaining Length 20
            0x00, 0x0A, // Packet Identifier 10
            0x0A, // Property Length 10
            0x1F, 0x00, 0x07, b'p', b'a', b'r', b't', b'i', b'a', b'l', // 0x1F Reason String
            // Payload: one Reason Code per filter
            0x00, // Granted QoS 0
            0x01, // Granted QoS 1
            0x02, // Granted QoS 2
            0x80, // Unspecified error
            0x8F, // Topic Filter invalid
            0x9E, // Shared Subscriptions not supported
            0xA2, // Wildcard Subscriptions not supported
        ],
        Packet::SubAck(SubAck {
            packet_id: id(10),
            reason_codes: codes(&[0x00, 0x01, 0x02, 0x80, 0x8F, 0x9E, 0xA2]),
            properties: reason_string("partial"),
        }),
    )]);
}

#[test]
fn v5_unsubscribe_round_trips_byte_exact() {
    round_trip(&[
        fixture(
            "UNSUBSCRIBE with a user property and a shared filter",
            V5,
            &[
                0xA2, 0x1B, // UNSUBSCRIBE (flags 0b0010), Remaining Length 27
                0x00, 0x0B, // Packet Identifier 11
                0x07, // Property Length 7
                0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // 0x26 User Property k=v
                0x00, 0x03, b'a', b'/', b'+', // "a/+"
                0x00, 0x0A, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/',
                b'b', // "$share/g/b"
            ],
            Packet::Unsubscribe(Unsubscribe {
                packet_id: id(11),
                filters: vec![filter("a/+"), filter("$share/g/b")],
                properties: UnsubscribeProperties {
                    user_properties: vec![user("k", "v")],
                },
            }),
        ),
        fixture(
            // MQTT 5.0 §3.10.3, Figure 3-29: "a/b" and "c/d".
            "spec example UNSUBSCRIBE",
            V5,
            &[
                0xA2, 0x0D, // UNSUBSCRIBE, Remaining Length 13
                0x00, 0x0A, // Packet Identifier 10
                0x00, // Property Length 0
                0x00, 0x03, b'a', b'/', b'b', // "a/b"
                0x00, 0x03, b'c', b'/', b'd', // "c/d"
            ],
            Packet::Unsubscribe(Unsubscribe {
                packet_id: id(10),
                filters: vec![filter("a/b"), filter("c/d")],
                properties: UnsubscribeProperties::default(),
            }),
        ),
    ]);
}

#[test]
fn v5_unsuback_with_reason_codes_round_trips_byte_exact() {
    round_trip(&[
        fixture(
            "UNSUBACK with a reason string and three reason codes",
            V5,
            &[
                0xB0, 0x0B, // UNSUBACK, Remaining Length 11
                0x00, 0x0B, // Packet Identifier 11
                0x05, // Property Length 5
                0x1F, 0x00, 0x02, b'o', b'k', // 0x1F Reason String "ok"
                0x00, // Success
                0x11, // No subscription existed
                0x87, // Not authorized
            ],
            Packet::UnsubAck(UnsubAck {
                packet_id: id(11),
                reason_codes: codes(&[0x00, 0x11, 0x87]),
                properties: reason_string("ok"),
            }),
        ),
        fixture(
            "UNSUBACK with no properties",
            V5,
            &[
                0xB0, 0x04, // UNSUBACK, Remaining Length 4
                0x00, 0x0C, // Packet Identifier 12
                0x00, // Property Length 0
                0x00, // Success
            ],
            Packet::UnsubAck(UnsubAck {
                packet_id: id(12),
                reason_codes: codes(&[0x00]),
                properties: AckProperties::default(),
            }),
        ),
    ]);
}

// ---------------------------------------------------------------------------------------
// MQTT 5.0: PINGREQ, PINGRESP, DISCONNECT, AUTH (§3.12 to §3.15)
// ---------------------------------------------------------------------------------------

#[test]
fn v5_pingreq_and_pingresp_round_trip_byte_exact() {
    round_trip(&[
        fixture("PINGREQ", V5, &[0xC0, 0x00], Packet::PingReq),
        fixture("PINGRESP", V5, &[0xD0, 0x00], Packet::PingResp),
    ]);
}

#[test]
fn v5_disconnect_in_its_three_forms_round_trips_byte_exact() {
    round_trip(&[
        fixture(
            "DISCONNECT Normal, no properties: Remaining Length 0",
            V5,
            &[0xE0, 0x00],
            Packet::Disconnect(Disconnect::default()),
        ),
        fixture(
            "DISCONNECT 0x04 Disconnect with Will Message, no properties: Remaining Length 1",
            V5,
            &[0xE0, 0x01, 0x04],
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
                properties: DisconnectProperties::default(),
            }),
        ),
        fixture(
            "DISCONNECT 0x9C with every property",
            V5,
            &[
                0xE0, 0x1E, // DISCONNECT, Remaining Length 30
                0x9C, // Reason Code 0x9C Use another server
                0x1C, // Property Length 28
                0x11, 0x00, 0x00, 0x00, 0x0A, // 0x11 Session Expiry Interval 10
                0x1F, 0x00, 0x05, b'm', b'o', b'v', b'e', b'd', // 0x1F Reason String
                0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // 0x26 User Property k=v
                0x1C, 0x00, 0x05, b'o', b't', b'h', b'e', b'r', // 0x1C Server Reference
            ],
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::USE_ANOTHER_SERVER,
                properties: DisconnectProperties {
                    session_expiry_interval: Some(10),
                    reason_string: Some(s("moved")),
                    user_properties: vec![user("k", "v")],
                    server_reference: Some(s("other")),
                },
            }),
        ),
        fixture(
            "DISCONNECT Normal with a property",
            V5,
            &[
                0xE0, 0x07, // DISCONNECT, Remaining Length 7
                0x00, // Reason Code 0x00 Normal disconnection
                0x05, // Property Length 5
                0x11, 0x00, 0x00, 0x00, 0x3C, // 0x11 Session Expiry Interval 60
            ],
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::NORMAL_DISCONNECTION,
                properties: DisconnectProperties {
                    session_expiry_interval: Some(60),
                    ..DisconnectProperties::default()
                },
            }),
        ),
    ]);
}

#[test]
fn v5_auth_in_its_forms_round_trips_byte_exact() {
    // The one-byte form (reason code, no properties) is left out on purpose: §3.15.2.1
    // only allows omitting the properties together with a Success reason code, and
    // §3.15.2.2.2 makes omitting the Authentication Method a Protocol Error.
    round_trip(&[
        fixture(
            "AUTH Success, no properties: Remaining Length 0",
            V5,
            &[0xF0, 0x00],
            Packet::Auth(Auth::default()),
        ),
        fixture(
            "AUTH 0x18 Continue authentication",
            V5,
            &[
                0xF0, 0x11, // AUTH, Remaining Length 17
                0x18, // Reason Code 0x18 Continue authentication
                0x0F, // Property Length 15
                0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M', // 0x15 Authentication Method
                0x16, 0x00, 0x04, 0x01, 0x02, 0x03, 0x04, // 0x16 Authentication Data
            ],
            Packet::Auth(Auth {
                reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
                properties: AuthProperties {
                    authentication_method: Some(s("SCRAM")),
                    authentication_data: Some(bin(&[1, 2, 3, 4])),
                    ..AuthProperties::default()
                },
            }),
        ),
        fixture(
            "AUTH 0x19 Re-authenticate with every property",
            V5,
            &[
                0xF0, 0x1E, // AUTH, Remaining Length 30
                0x19, // Reason Code 0x19 Re-authenticate
                0x1C, // Property Length 28
                0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M', // 0x15 Authentication Method
                0x16, 0x00, 0x02, 0xAA, 0xBB, // 0x16 Authentication Data
                0x1F, 0x00, 0x05, b'a', b'g', b'a', b'i', b'n', // 0x1F Reason String
                0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // 0x26 User Property k=v
            ],
            Packet::Auth(Auth {
                reason_code: ReasonCode::RE_AUTHENTICATE,
                properties: AuthProperties {
                    authentication_method: Some(s("SCRAM")),
                    authentication_data: Some(bin(&[0xAA, 0xBB])),
                    reason_string: Some(s("again")),
                    user_properties: vec![user("k", "v")],
                },
            }),
        ),
        fixture(
            "AUTH Success with an Authentication Method",
            V5,
            &[
                0xF0, 0x0A, // AUTH, Remaining Length 10
                0x00, // Reason Code 0x00 Success
                0x08, // Property Length 8
                0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M', // 0x15 Authentication Method
            ],
            Packet::Auth(Auth {
                reason_code: ReasonCode::SUCCESS,
                properties: AuthProperties {
                    authentication_method: Some(s("SCRAM")),
                    ..AuthProperties::default()
                },
            }),
        ),
    ]);
}

// ---------------------------------------------------------------------------------------
// MQTT 3.1.1: CONNECT, CONNACK (§3.1, §3.2)
// ---------------------------------------------------------------------------------------

/// MQTT 3.1.1 §3.1.2.10, Figure 3.6: the variable header example
/// "00 04 'M' 'Q' 'T' 'T' 04 CE 00 0A" (User Name, Password, Will QoS 1, Will Flag,
/// Clean Session, Keep Alive 10), here with the payload those flags call for.
const V311_CONNECT_SPEC_EXAMPLE: &[u8] = &[
    0x10, 0x2E, // CONNECT, Remaining Length 46
    0x00, 0x04, b'M', b'Q', b'T', b'T', // Protocol Name
    0x04, // Protocol Level 4
    0xCE, // Connect Flags: User Name, Password, Will QoS 1, Will Flag, Clean Session
    0x00, 0x0A, // Keep Alive 10
    // Payload
    0x00, 0x05, b'd', b'e', b'v', b'4', b'2', // Client Identifier "dev42"
    0x00, 0x09, b'l', b'w', b't', b'/', b'd', b'e', b'v', b'4', b'2', // Will Topic
    0x00, 0x04, b'g', b'o', b'n', b'e', // Will Message "gone"
    0x00, 0x04, b'u', b's', b'e', b'r', // User Name "user"
    0x00, 0x04, b'p', b'a', b's', b's', // Password "pass"
];

fn v311_connect_spec_example() -> Packet {
    connect(Connect {
        clean_start: true,
        keep_alive: 10,
        will: Some(Will {
            topic: topic("lwt/dev42"),
            payload: bin(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
        }),
        username: Some(s("user")),
        password: Some(bin(b"pass")),
        ..bare_connect(V311, "dev42")
    })
}

#[test]
fn v311_connect_variable_header_example_from_the_spec_round_trips_byte_exact() {
    round_trip(&[fixture(
        "spec example CONNECT with will, user name, password and clean session",
        V311,
        V311_CONNECT_SPEC_EXAMPLE,
        v311_connect_spec_example(),
    )]);
}

#[test]
fn v311_connect_minimal_and_with_retained_will_round_trip_byte_exact() {
    round_trip(&[
        fixture(
            "minimal CONNECT",
            V311,
            &[
                0x10, 0x0D, // CONNECT, Remaining Length 13
                0x00, 0x04, b'M', b'Q', b'T', b'T', // Protocol Name
                0x04, // Protocol Level 4
                0x00, // Connect Flags: none
                0x00, 0x00, // Keep Alive 0
                0x00, 0x01, b'a', // Client Identifier "a"
            ],
            connect(bare_connect(V311, "a")),
        ),
        fixture(
            "CONNECT with an empty client identifier and clean session",
            V311,
            &[
                0x10, 0x0C, // CONNECT, Remaining Length 12
                0x00, 0x04, b'M', b'Q', b'T', b'T', // Protocol Name
                0x04, // Protocol Level 4
                0x02, // Connect Flags: Clean Session
                0x00, 0x00, // Keep Alive 0
                0x00, 0x00, // Client Identifier ""
            ],
            connect(Connect {
                clean_start: true,
                ..bare_connect(V311, "")
            }),
        ),
        fixture(
            "CONNECT with a retained QoS 2 will and a user name only",
            V311,
            &[
                0x10, 0x15, // CONNECT, Remaining Length 21
                0x00, 0x04, b'M', b'Q', b'T', b'T', // Protocol Name
                0x04, // Protocol Level 4
                0xB4, // Connect Flags: User Name, Will Retain, Will QoS 2, Will Flag
                0x01, 0x2C, // Keep Alive 300
                0x00, 0x01, b'c', // Client Identifier "c"
                0x00, 0x01, b't', // Will Topic "t"
                0x00, 0x00, // Will Message (empty)
                0x00, 0x01, b'u', // User Name "u"
            ],
            connect(Connect {
                keep_alive: 300,
                will: Some(Will {
                    topic: topic("t"),
                    payload: Bytes::new(),
                    qos: QoS::ExactlyOnce,
                    retain: true,
                    properties: WillProperties::default(),
                }),
                username: Some(s("u")),
                ..bare_connect(V311, "c")
            }),
        ),
    ]);
}

#[test]
fn a_connect_is_decoded_by_its_own_protocol_level_whatever_the_connection_version() {
    // The codec's contract: `protocol` is ignored for CONNECT.
    let mut errors = Vec::new();
    check_decode_whole(
        V5,
        V311_CONNECT_SPEC_EXAMPLE,
        &[],
        &v311_connect_spec_example(),
        &mut errors,
    );
    check_decode_whole(V311, V5_CONNECT_FULL, &[], &v5_connect_full(), &mut errors);
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn v311_connack_accepted_with_session_present_and_refused_with_each_return_code() {
    let refused = |code: u8| {
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode(code),
            properties: ConnAckProperties::default(),
        })
    };
    round_trip(&[
        fixture(
            "CONNACK accepted, session present",
            V311,
            &[0x20, 0x02, 0x01, 0x00], // CONNACK, RL 2, Session Present, return code 0
            Packet::ConnAck(ConnAck {
                session_present: true,
                ..ConnAck::default()
            }),
        ),
        fixture(
            "CONNACK 1 unacceptable protocol version = 0x84",
            V311,
            &[0x20, 0x02, 0x00, 0x01],
            refused(0x84),
        ),
        fixture(
            "CONNACK 2 identifier rejected = 0x85",
            V311,
            &[0x20, 0x02, 0x00, 0x02],
            refused(0x85),
        ),
        fixture(
            "CONNACK 3 server unavailable = 0x88",
            V311,
            &[0x20, 0x02, 0x00, 0x03],
            refused(0x88),
        ),
        fixture(
            "CONNACK 4 bad user name or password = 0x86",
            V311,
            &[0x20, 0x02, 0x00, 0x04],
            refused(0x86),
        ),
        fixture(
            "CONNACK 5 not authorized = 0x87",
            V311,
            &[0x20, 0x02, 0x00, 0x05],
            refused(0x87),
        ),
    ]);
}

// ---------------------------------------------------------------------------------------
// MQTT 3.1.1: PUBLISH and its acknowledgements (§3.3 to §3.7)
// ---------------------------------------------------------------------------------------

#[test]
fn v311_publish_at_each_qos_round_trips_byte_exact() {
    round_trip(&[
        fixture(
            "PUBLISH QoS 0",
            V311,
            &[
                0x30, 0x07, // PUBLISH QoS 0, Remaining Length 7
                0x00, 0x03, b'a', b'/', b'b', // Topic Name "a/b"
                b'h', b'i', // Payload "hi"
            ],
            Packet::Publish(publish(QoS::AtMostOnce, "a/b", None, b"hi")),
        ),
        fixture(
            // MQTT 3.1.1 §3.3.2.3, Figure 3.11: Topic "a/b", Packet Identifier 10.
            "spec example PUBLISH QoS 1",
            V311,
            &[
                0x32, 0x09, // PUBLISH QoS 1, Remaining Length 9
                0x00, 0x03, b'a', b'/', b'b', // Topic Name "a/b"
                0x00, 0x0A, // Packet Identifier 10
                b'h', b'i', // Payload "hi"
            ],
            Packet::Publish(publish(QoS::AtLeastOnce, "a/b", Some(10), b"hi")),
        ),
        fixture(
            "PUBLISH QoS 2 DUP RETAIN with an empty payload",
            V311,
            &[
                0x3D, 0x07, // PUBLISH DUP 1 QoS 2 RETAIN 1, Remaining Length 7
                0x00, 0x03, b'a', b'/', b'b', // Topic Name "a/b"
                0xFF, 0xFF, // Packet Identifier 65535
            ],
            Packet::Publish(Publish {
                dup: true,
                retain: true,
                ..publish(QoS::ExactlyOnce, "a/b", Some(0xFFFF), b"")
            }),
        ),
    ]);
}

#[test]
fn v311_puback_pubrec_pubrel_pubcomp_round_trip_byte_exact() {
    round_trip(&[
        fixture(
            "PUBACK",
            V311,
            &[0x40, 0x02, 0x00, 0x01], // PUBACK, RL 2, Packet Identifier 1
            Packet::PubAck(PubResponse::success(id(1))),
        ),
        fixture(
            "PUBREC",
            V311,
            &[0x50, 0x02, 0x01, 0x00], // PUBREC, RL 2, Packet Identifier 256
            Packet::PubRec(PubResponse::success(id(256))),
        ),
        fixture(
            "PUBREL (fixed-header flags 0b0010)",
            V311,
            &[0x62, 0x02, 0x00, 0x03], // PUBREL, RL 2, Packet Identifier 3
            Packet::PubRel(PubResponse::success(id(3))),
        ),
        fixture(
            "PUBCOMP",
            V311,
            &[0x70, 0x02, 0xFF, 0xFF], // PUBCOMP, RL 2, Packet Identifier 65535
            Packet::PubComp(PubResponse::success(id(0xFFFF))),
        ),
    ]);
}

// ---------------------------------------------------------------------------------------
// MQTT 3.1.1: SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PING, DISCONNECT (§3.8 to §3.14)
// ---------------------------------------------------------------------------------------

#[test]
fn v311_subscribe_round_trips_byte_exact() {
    round_trip(&[
        fixture(
            // MQTT 3.1.1 §3.8.3, Figure 3.22: "a/b" QoS 1 and "c/d" QoS 2.
            "spec example SUBSCRIBE",
            V311,
            &[
                0x82, 0x0E, // SUBSCRIBE (flags 0b0010), Remaining Length 14
                0x00, 0x0A, // Packet Identifier 10
                0x00, 0x03, b'a', b'/', b'b', 0x01, // "a/b", Requested QoS 1
                0x00, 0x03, b'c', b'/', b'd', 0x02, // "c/d", Requested QoS 2
            ],
            Packet::Subscribe(Subscribe {
                packet_id: id(10),
                subscriptions: vec![
                    sub_qos("a/b", QoS::AtLeastOnce),
                    sub_qos("c/d", QoS::ExactlyOnce),
                ],
                properties: SubscribeProperties::default(),
            }),
        ),
        fixture(
            "SUBSCRIBE with wildcards at each QoS",
            V311,
            &[
                0x82, 0x14, // SUBSCRIBE, Remaining Length 20
                0x00, 0x01, // Packet Identifier 1
                0x00, 0x03, b'a', b'/', b'b', 0x00, // "a/b", QoS 0
                0x00, 0x03, b'c', b'/', b'#', 0x01, // "c/#", QoS 1
                0x00, 0x03, b'+', b'/', b'd', 0x02, // "+/d", QoS 2
            ],
            Packet::Subscribe(Subscribe {
                packet_id: id(1),
                subscriptions: vec![
                    sub_qos("a/b", QoS::AtMostOnce),
                    sub_qos("c/#", QoS::AtLeastOnce),
                    sub_qos("+/d", QoS::ExactlyOnce),
                ],
                properties: SubscribeProperties::default(),
            }),
        ),
    ]);
}

#[test]
fn v311_suback_with_a_failure_code_round_trips_byte_exact() {
    round_trip(&[
        fixture(
            // MQTT 3.1.1 §3.9.3, Figure 3.26: return codes 0, 2 and 128 (Failure).
            "spec example SUBACK",
            V311,
            &[
                0x90, 0x05, // SUBACK, Remaining Length 5
                0x00, 0x0A, // Packet Identifier 10
                0x00, 0x02, 0x80, // Success QoS 0, Success QoS 2, Failure
            ],
            Packet::SubAck(SubAck {
                packet_id: id(10),
                reason_codes: codes(&[0x00, 0x02, 0x80]),
                properties: AckProperties::default(),
            }),
        ),
        fixture(
            "SUBACK with every return code",
            V311,
            &[
                0x90, 0x06, // SUBACK, Remaining Length 6
                0x00, 0x01, // Packet Identifier 1
                0x00, 0x01, 0x02, 0x80, // QoS 0, QoS 1, QoS 2, Failure
            ],
            Packet::SubAck(SubAck {
                packet_id: id(1),
                reason_codes: codes(&[0x00, 0x01, 0x02, 0x80]),
                properties: AckProperties::default(),
            }),
        ),
    ]);
}

#[test]
fn v311_unsubscribe_and_unsuback_round_trip_byte_exact() {
    round_trip(&[
        fixture(
            // MQTT 3.1.1 §3.10.3, Figure 3.30: "a/b" and "c/d".
            "spec example UNSUBSCRIBE",
            V311,
            &[
                0xA2, 0x0C, // UNSUBSCRIBE (flags 0b0010), Remaining Length 12
                0x00, 0x0A, // Packet Identifier 10
                0x00, 0x03, b'a', b'/', b'b', // "a/b"
                0x00, 0x03, b'c', b'/', b'd', // "c/d"
            ],
            Packet::Unsubscribe(Unsubscribe {
                packet_id: id(10),
                filters: vec![filter("a/b"), filter("c/d")],
                properties: UnsubscribeProperties::default(),
            }),
        ),
        fixture(
            "UNSUBACK (no payload in 3.1.1)",
            V311,
            &[0xB0, 0x02, 0x00, 0x0A], // UNSUBACK, RL 2, Packet Identifier 10
            Packet::UnsubAck(UnsubAck {
                packet_id: id(10),
                reason_codes: Vec::new(),
                properties: AckProperties::default(),
            }),
        ),
    ]);
}

#[test]
fn v311_pingreq_pingresp_and_disconnect_round_trip_byte_exact() {
    round_trip(&[
        fixture("PINGREQ", V311, &[0xC0, 0x00], Packet::PingReq),
        fixture("PINGRESP", V311, &[0xD0, 0x00], Packet::PingResp),
        fixture(
            "DISCONNECT",
            V311,
            &[0xE0, 0x00],
            Packet::Disconnect(Disconnect::default()),
        ),
    ]);
}

#[test]
fn v311_encoding_leaves_out_what_311_does_not_have() {
    // The canonical rules: properties, the PUBACK-family/UNSUBACK/DISCONNECT reason codes
    // and subscription options other than QoS are not written in 3.1.1.
    let cases: Vec<(&str, Packet, &[u8])> = vec![
        (
            "PUBLISH with properties",
            Packet::Publish(Publish {
                properties: PublishProperties {
                    message_expiry_interval: Some(5),
                    user_properties: vec![user("k", "v")],
                    ..PublishProperties::default()
                },
                ..publish(QoS::AtLeastOnce, "a/b", Some(10), b"hi")
            }),
            &[
                0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i',
            ],
        ),
        (
            "PUBACK with a reason code and a reason string",
            Packet::PubAck(response(1, 0x10, reason_string("none"))),
            &[0x40, 0x02, 0x00, 0x01],
        ),
        (
            "SUBSCRIBE with 5.0 subscription options",
            Packet::Subscribe(Subscribe {
                packet_id: id(1),
                subscriptions: vec![sub(
                    "a",
                    options(QoS::AtLeastOnce, true, true, RetainHandling::DoNotSend),
                )],
                properties: SubscribeProperties {
                    subscription_identifier: Some(sub_id(3)),
                    user_properties: Vec::new(),
                },
            }),
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x01],
        ),
        (
            "UNSUBACK with reason codes",
            Packet::UnsubAck(UnsubAck {
                packet_id: id(2),
                reason_codes: codes(&[0x00, 0x11]),
                properties: reason_string("x"),
            }),
            &[0xB0, 0x02, 0x00, 0x02],
        ),
        (
            "DISCONNECT with a reason code and properties",
            Packet::Disconnect(Disconnect {
                reason_code: ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
                properties: DisconnectProperties {
                    reason_string: Some(s("bye")),
                    ..DisconnectProperties::default()
                },
            }),
            &[0xE0, 0x00],
        ),
        (
            "CONNECT with properties and will properties",
            connect(Connect {
                will: Some(Will {
                    topic: topic("t"),
                    payload: bin(b"x"),
                    qos: QoS::AtMostOnce,
                    retain: false,
                    properties: WillProperties {
                        will_delay_interval: Some(5),
                        ..WillProperties::default()
                    },
                }),
                properties: ConnectProperties {
                    session_expiry_interval: Some(60),
                    ..ConnectProperties::default()
                },
                ..bare_connect(V311, "a")
            }),
            &[
                0x10, 0x13, // CONNECT, Remaining Length 19
                0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, // Protocol Name, Level 4
                0x04, // Connect Flags: Will Flag
                0x00, 0x00, // Keep Alive 0
                0x00, 0x01, b'a', // Client Identifier
                0x00, 0x01, b't', // Will Topic
                0x00, 0x01, b'x', // Will Message
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (name, packet, bytes) in &cases {
        check_remaining_length(name, bytes);
        let mut errors = Vec::new();
        check_encode(V311, packet, bytes, &mut errors);
        if !errors.is_empty() {
            failures.push((name.to_string(), errors));
        }
    }
    report("3.1.1 encodings", cases.len(), failures);
}

// ---------------------------------------------------------------------------------------
// Remaining Length boundaries (MQTT 3.1.1 §2.2.3 Table 2.4, MQTT 5.0 §1.5.5 Table 1-1)
// ---------------------------------------------------------------------------------------

/// A QoS 0 PUBLISH to "a" whose Remaining Length is exactly `remaining`, with a zero
/// payload built to size. Checks the same four properties as `round_trip`; the prefix
/// check feeds the fixed header byte by byte, then jumps to the last byte for large sizes.
fn check_remaining_length_boundary(version: ProtocolVersion, remaining: usize, vbi: &[u8]) {
    let name = format!("PUBLISH with Remaining Length {remaining} ({version})");
    // Topic Name "a" (3 bytes), plus the Property Length byte in 5.0.
    let overhead = if version == V5 { 4 } else { 3 };
    let payload_len = remaining - overhead;
    let header_len = 1 + vbi.len();
    let total = header_len + remaining;

    let mut head = vec![0x30];
    head.extend_from_slice(vbi);
    head.extend_from_slice(&[0x00, 0x01, b'a']);
    if version == V5 {
        head.push(0x00);
    }
    // `zeroed` lets the kernel hand out untouched zero pages: the 256 MiB case stays cheap.
    let wire = |len: usize| {
        let mut buf = BytesMut::zeroed(len);
        let n = head.len().min(len);
        buf[..n].copy_from_slice(&head[..n]);
        buf
    };
    let expected = wire(total);
    assert_eq!(
        written_remaining_length(&head),
        Some((remaining, header_len)),
        "fixture bug in {name}: {vbi:02X?} is not {remaining}"
    );
    let packet = Packet::Publish(Publish {
        payload: Bytes::from(vec![0u8; payload_len]),
        ..publish(QoS::AtMostOnce, "a", None, b"")
    });

    let mut errors = Vec::new();
    match codec::encoded_len(&packet, version) {
        Ok(len) if len == total => {}
        other => errors.push(format!(
            "encoded_len returned {other:?}, expected Ok({total})"
        )),
    }
    let mut encoded = BytesMut::new();
    match codec::encode(&packet, version, &mut encoded) {
        Ok(()) if encoded.len() != total => errors.push(format!(
            "encode wrote {} bytes, expected {total}",
            encoded.len()
        )),
        Ok(()) if encoded[..] != expected[..] => errors.push(format!(
            "encode wrote a different header {:02X?}, expected {:02X?}",
            &encoded[..head.len()],
            &head[..]
        )),
        Ok(()) => {}
        Err(e) => errors.push(format!("encode failed: {e}")),
    }
    drop(encoded);

    let mut prefixes: Vec<usize> = (0..=head.len()).collect();
    if total <= 20_000 {
        prefixes.extend(head.len() + 1..total);
    } else {
        prefixes.extend([head.len() + 1, total / 2, total - 1]);
    }
    for len in prefixes {
        let mut buf = wire(len);
        match codec::decode(&mut buf, UNLIMITED, version) {
            Ok(None) if buf.len() == len => {}
            other => {
                errors.push(format!(
                    "decode of a {len}-byte prefix returned {other:?} (buffer now {} bytes)",
                    buf.len()
                ));
                break;
            }
        }
    }
    let mut buf = expected;
    match codec::decode(&mut buf, UNLIMITED, version) {
        Ok(Some(decoded)) if decoded == packet && buf.is_empty() => {}
        Ok(Some(Packet::Publish(p))) => errors.push(format!(
            "decode returned a PUBLISH to {:?} with {} payload bytes, {} bytes left",
            p.topic,
            p.payload.len(),
            buf.len()
        )),
        other => errors.push(format!("decode returned {other:?}")),
    }
    assert!(errors.is_empty(), "{name}:\n{errors:#?}");
}

#[test]
fn remaining_length_zero_is_one_byte() {
    // Table 2.4 / Table 1-1: 0 is 0x00. PINGREQ and DISCONNECT are the packets with
    // nothing after the fixed header.
    round_trip(&[
        fixture(
            "PINGREQ, Remaining Length 0",
            V311,
            &[0xC0, 0x00],
            Packet::PingReq,
        ),
        fixture(
            "DISCONNECT, Remaining Length 0",
            V5,
            &[0xE0, 0x00],
            Packet::Disconnect(Disconnect::default()),
        ),
    ]);
}

#[test]
fn remaining_length_127_is_one_byte_and_128_is_two() {
    check_remaining_length_boundary(V311, 127, &[0x7F]);
    check_remaining_length_boundary(V311, 128, &[0x80, 0x01]);
    check_remaining_length_boundary(V5, 127, &[0x7F]);
    check_remaining_length_boundary(V5, 128, &[0x80, 0x01]);
}

#[test]
fn remaining_length_16383_is_two_bytes_and_16384_is_three() {
    check_remaining_length_boundary(V311, 16_383, &[0xFF, 0x7F]);
    check_remaining_length_boundary(V311, 16_384, &[0x80, 0x80, 0x01]);
    check_remaining_length_boundary(V5, 16_384, &[0x80, 0x80, 0x01]);
}

#[test]
fn remaining_length_2097151_is_three_bytes_and_2097152_is_four() {
    check_remaining_length_boundary(V311, 2_097_151, &[0xFF, 0xFF, 0x7F]);
    check_remaining_length_boundary(V311, 2_097_152, &[0x80, 0x80, 0x80, 0x01]);
}

#[test]
fn remaining_length_268435455_is_the_four_byte_maximum() {
    check_remaining_length_boundary(V311, 268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]);
}

#[test]
fn a_packet_exactly_at_the_maximum_packet_size_is_accepted() {
    // MQTT 5.0 §2.1.4: the packet size is the fixed header plus the Remaining Length,
    // here 1 + 2 + 128 = 131 bytes.
    let mut bytes = vec![0x30, 0x80, 0x01, 0x00, 0x01, b'a'];
    bytes.resize(131, b'x');
    let mut buf = BytesMut::from(&bytes[..]);
    let decoded = codec::decode(&mut buf, 131, V311);
    assert!(
        matches!(decoded, Ok(Some(Packet::Publish(_)))) && buf.is_empty(),
        "decode with max_packet_size 131 returned {decoded:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Negative fixtures: the fixed header
// ---------------------------------------------------------------------------------------

#[test]
fn reserved_packet_types_are_refused() {
    rejects(&[
        // MQTT 5.0 §2.1.2 Table 2-1: type 0 is Reserved, Forbidden. No numbered statement.
        reject("packet type 0", V5, &[0x00, 0x00], &["MQTT-2.1.2"], 0x81),
        reject("packet type 0", V311, &[0x00, 0x00], &["MQTT-2.1.2"], 0x81),
        // MQTT 3.1.1 §2.2.1 Table 2.1: type 15 is Reserved, Forbidden, exactly like 0.
        reject(
            "AUTH (type 15) under 3.1.1",
            V311,
            &[0xF0, 0x00],
            &["MQTT-2.1.2", "MQTT-2.2.1"],
            0x81,
        ),
    ]);
}

#[test]
fn wrong_fixed_header_flags_are_malformed() {
    // MQTT 5.0 [MQTT-2.1.3-1] applies to every packet; PUBREL, SUBSCRIBE, UNSUBSCRIBE,
    // DISCONNECT and AUTH also have a statement of their own. Either may be cited.
    rejects(&[
        reject(
            "PUBREL with flags 0b0000",
            V5,
            &[0x60, 0x02, 0x00, 0x01],
            &["MQTT-3.6.1-1", "MQTT-2.1.3-1"],
            0x81,
        ),
        reject(
            "PUBREL with flags 0b0000",
            V311,
            &[0x60, 0x02, 0x00, 0x01],
            &["MQTT-3.6.1-1", "MQTT-2.1.3-1"],
            0x81,
        ),
        reject(
            "SUBSCRIBE with flags 0b0000",
            V5,
            // RL 7, id 1, Property Length 0, "a", QoS 0
            &[0x80, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x00],
            &["MQTT-3.8.1-1", "MQTT-2.1.3-1"],
            0x81,
        ),
        reject(
            "SUBSCRIBE with flags 0b0000",
            V311,
            &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
            &["MQTT-3.8.1-1", "MQTT-2.1.3-1"],
            0x81,
        ),
        reject(
            "UNSUBSCRIBE with flags 0b0000",
            V5,
            &[0xA0, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a'],
            &["MQTT-3.10.1-1", "MQTT-2.1.3-1"],
            0x81,
        ),
        reject(
            "UNSUBSCRIBE with flags 0b0011",
            V311,
            &[0xA3, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'],
            &["MQTT-3.10.1-1", "MQTT-2.1.3-1"],
            0x81,
        ),
        reject(
            "CONNECT with flags 0b0001",
            V5,
            &[
                0x11, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x00,
            ],
            &["MQTT-2.1.3-1"],
            0x81,
        ),
        reject(
            "PINGREQ with flags 0b0001",
            V5,
            &[0xC1, 0x00],
            &["MQTT-2.1.3-1"],
            0x81,
        ),
        reject(
            "PINGREQ with flags 0b1000",
            V311,
            &[0xC8, 0x00],
            &["MQTT-2.1.3-1"],
            0x81,
        ),
        reject(
            "PUBACK with flags 0b0010",
            V5,
            &[0x42, 0x02, 0x00, 0x01],
            &["MQTT-2.1.3-1"],
            0x81,
        ),
        reject(
            "DISCONNECT with flags 0b0001",
            V5,
            &[0xE1, 0x00],
            &["MQTT-3.14.1-1", "MQTT-2.1.3-1"],
            0x81,
        ),
        reject(
            "AUTH with flags 0b0100",
            V5,
            &[0xF4, 0x00],
            &["MQTT-3.15.1-1", "MQTT-2.1.3-1"],
            0x81,
        ),
    ]);
}

#[test]
fn publish_qos_3_and_dup_on_qos_0_are_malformed() {
    rejects(&[
        reject(
            "PUBLISH QoS 3",
            V5,
            // QoS bits 11, RL 6, "a", id 1, Property Length 0
            &[0x36, 0x06, 0x00, 0x01, b'a', 0x00, 0x01, 0x00],
            &["MQTT-3.3.1-4"],
            0x81,
        ),
        reject(
            "PUBLISH QoS 3",
            V311,
            &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
            &["MQTT-3.3.1-4"],
            0x81,
        ),
        reject(
            "PUBLISH DUP on QoS 0",
            V5,
            &[0x38, 0x04, 0x00, 0x01, b'a', 0x00],
            &["MQTT-3.3.1-2"],
            0x81,
        ),
        reject(
            "PUBLISH DUP on QoS 0",
            V311,
            &[0x39, 0x03, 0x00, 0x01, b'a'],
            &["MQTT-3.3.1-2"],
            0x81,
        ),
    ]);
}

#[test]
fn malformed_remaining_lengths_are_refused() {
    rejects(&[
        // MQTT 5.0 §1.5.5: at most four bytes. Refused as soon as the fourth byte still
        // has its continuation bit, without waiting for a fifth.
        reject(
            "Remaining Length with a 5th byte",
            V5,
            &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            &["MQTT-1.5.5", "MQTT-2.1.4"],
            0x81,
        ),
        reject(
            "Remaining Length whose 4th byte continues",
            V311,
            &[0x30, 0x80, 0x80, 0x80, 0x80],
            &["MQTT-1.5.5", "MQTT-2.1.4"],
            0x81,
        ),
        reject(
            "Remaining Length 0 written as 0x80 0x00",
            V5,
            &[0xC0, 0x80, 0x00],
            &["MQTT-1.5.5-1"],
            0x81,
        ),
        reject(
            "Remaining Length 2 written as 0x82 0x80 0x00",
            V311,
            &[0x40, 0x82, 0x80, 0x00, 0x00, 0x01],
            &["MQTT-1.5.5-1"],
            0x81,
        ),
        reject(
            "Property Length 0 written as 0x80 0x00",
            V5,
            &[0xE0, 0x03, 0x00, 0x80, 0x00],
            &["MQTT-1.5.5-1"],
            0x81,
        ),
        reject(
            "Subscription Identifier 1 written as 0x81 0x00",
            V5,
            // RL 10, id 1, Property Length 3, 0x0B 0x81 0x00, "a", QoS 0
            &[
                0x82, 0x0A, 0x00, 0x01, 0x03, 0x0B, 0x81, 0x00, 0x00, 0x01, b'a', 0x00,
            ],
            &["MQTT-1.5.5-1"],
            0x81,
        ),
    ]);
}

#[test]
fn a_packet_larger_than_the_maximum_packet_size_is_refused_from_its_fixed_header() {
    // MQTT 5.0 §3.1.2.11.4 / §3.2.2.3.6: a packet over the receiver's Maximum Packet Size
    // is answered with 0x95. Only the fixed header (RL 128, 131 bytes in all) is given:
    // the error must come before the body arrives.
    rejects(&[
        Reject {
            max_packet_size: 130,
            ..reject(
                "131-byte PUBLISH, limit 130",
                V5,
                &[0x30, 0x80, 0x01],
                &["MQTT-3.1.2-24", "MQTT-3.2.2-15"],
                0x95,
            )
        },
        Reject {
            max_packet_size: 130,
            ..reject(
                "131-byte PUBLISH, limit 130",
                V311,
                &[0x30, 0x80, 0x01],
                &["MQTT-3.1.2-24", "MQTT-3.2.2-15"],
                0x95,
            )
        },
        Reject {
            max_packet_size: 1024,
            ..reject(
                "PUBLISH announcing 268435455 bytes, limit 1024",
                V5,
                &[0x30, 0xFF, 0xFF, 0xFF, 0x7F],
                &["MQTT-3.1.2-24", "MQTT-3.2.2-15"],
                0x95,
            )
        },
    ]);
}

#[test]
fn remaining_lengths_that_disagree_with_the_fields_are_malformed() {
    // No numbered statement: MQTT 5.0 §2.1.4 defines the Remaining Length as the bytes of
    // the variable header and payload.
    rejects(&[
        reject(
            "PUBACK with Remaining Length 1",
            V5,
            &[0x40, 0x01, 0x00],
            &["MQTT-2.1.4"],
            0x81,
        ),
        reject(
            "CONNECT cut inside the protocol name",
            V5,
            &[0x10, 0x05, 0x00, 0x04, b'M', b'Q', b'T'],
            &["MQTT-2.1.4"],
            0x81,
        ),
        reject(
            "PUBLISH whose Property Length runs past the packet",
            V5,
            &[0x30, 0x05, 0x00, 0x01, b'a', 0x05, 0x00],
            &["MQTT-2.1.4"],
            0x81,
        ),
        reject(
            "SUBSCRIBE filter without its options byte",
            V311,
            &[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'],
            &["MQTT-2.1.4"],
            0x81,
        ),
        reject(
            "PINGREQ with a trailing byte",
            V5,
            &[0xC0, 0x01, 0x00],
            &["MQTT-2.1.4"],
            0x81,
        ),
        reject(
            "PINGRESP with a trailing byte",
            V311,
            &[0xD0, 0x01, 0x00],
            &["MQTT-2.1.4"],
            0x81,
        ),
        // MQTT 3.1.1 §3.4.1: PUBACK's Remaining Length is 2; 3.1.1 has no reason code.
        reject(
            "3.1.1 PUBACK with a reason code byte",
            V311,
            &[0x40, 0x03, 0x00, 0x01, 0x00],
            &["MQTT-2.1.4"],
            0x81,
        ),
        reject(
            "3.1.1 DISCONNECT with a reason code byte",
            V311,
            &[0xE0, 0x01, 0x04],
            &["MQTT-2.1.4"],
            0x81,
        ),
    ]);
}

// ---------------------------------------------------------------------------------------
// Negative fixtures: CONNECT and CONNACK
// ---------------------------------------------------------------------------------------

#[test]
fn unsupported_protocol_names_and_levels_are_refused_with_0x84() {
    rejects(&[
        // MQTT 3.1's name and level: both [MQTT-3.1.2-1] and [MQTT-3.1.2-2] apply.
        reject(
            "CONNECT \"MQIsdp\" level 3",
            V5,
            &[
                0x10, 0x10, // CONNECT, Remaining Length 16
                0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', // Protocol Name "MQIsdp"
                0x03, // Protocol Level 3
                0x02, // Clean Session
                0x00, 0x3C, // Keep Alive 60
                0x00, 0x02, b'c', b'1', // Client Identifier
            ],
            &["MQTT-3.1.2-1", "MQTT-3.1.2-2"],
            0x84,
        ),
        reject(
            "CONNECT \"MQTT\" level 3",
            V311,
            &[
                0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x03, 0x02, 0x00, 0x3C, 0x00, 0x02,
                b'c', b'1',
            ],
            &["MQTT-3.1.2-2"],
            0x84,
        ),
        reject(
            "CONNECT \"MQTT\" level 6",
            V5,
            &[
                0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3C, 0x00, 0x02,
                b'c', b'1',
            ],
            &["MQTT-3.1.2-2"],
            0x84,
        ),
        reject(
            "CONNECT \"MQTX\" level 5",
            V5,
            &[
                0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'X', 0x05, 0x02, 0x00, 0x3C, 0x00, 0x00,
                0x02, b'c', b'1',
            ],
            &["MQTT-3.1.2-1"],
            0x84,
        ),
    ]);
}

/// A 5.0 CONNECT with no properties, client id "", and the given Connect Flags: the
/// payload fields the flags announce are not present, so decoders that check the flags
/// before the payload see the flag error.
macro_rules! v5_connect_with_flags {
    ($flags:expr) => {
        &[
            0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, $flags, 0x00, 0x00, 0x00, 0x00,
            0x00,
        ]
    };
}

#[test]
fn invalid_connect_flags_are_refused() {
    rejects(&[
        reject(
            "CONNECT reserved flag (bit 0) set",
            V5,
            v5_connect_with_flags!(0x01),
            &["MQTT-3.1.2-3"],
            0x81,
        ),
        reject(
            "CONNECT reserved flag (bit 0) set",
            V311,
            &[
                0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x03, 0x00, 0x00, 0x00, 0x01,
                b'a',
            ],
            &["MQTT-3.1.2-3"],
            0x81,
        ),
        // §3.1.2.6: "A value of 3 (0x03) is a Malformed Packet."
        reject(
            "Will QoS 3",
            V5,
            &[
                0x10, 0x13, // CONNECT, Remaining Length 19
                0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, // Protocol Name, Version 5
                0x1C, // Will QoS 3, Will Flag
                0x00, 0x00, // Keep Alive 0
                0x00, // Property Length 0
                0x00, 0x00, // Client Identifier ""
                0x00, // Will Property Length 0
                0x00, 0x01, b't', // Will Topic "t"
                0x00, 0x00, // Will Payload (empty)
            ],
            &["MQTT-3.1.2-12"],
            0x81,
        ),
        reject(
            "Will QoS 1 without the Will Flag",
            V5,
            v5_connect_with_flags!(0x08),
            &["MQTT-3.1.2-11"],
            0x81,
        ),
        // MQTT 5.0 numbers the Will Retain rule separately from the Will QoS rule.
        reject(
            "Will Retain without the Will Flag",
            V5,
            v5_connect_with_flags!(0x20),
            &["MQTT-3.1.2-13"],
            0x81,
        ),
        // MQTT 3.1.1 [MQTT-3.1.2-11] covers Will QoS and Will Retain together.
        reject(
            "Will Retain without the Will Flag",
            V311,
            &[
                0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x20, 0x00, 0x00, 0x00, 0x01,
                b'a',
            ],
            &["MQTT-3.1.2-11", "MQTT-3.1.2-15"],
            0x81,
        ),
        // MQTT 3.1.1 only: [MQTT-3.1.2-22]. A flags-byte inconsistency like the will
        // ones above; 3.1.1 [MQTT-3.1.4-1] treats a CONNECT that does not conform to
        // §3.1 as malformed.
        reject(
            "3.1.1 Password without User Name",
            V311,
            &[
                0x10, 0x11, // CONNECT, Remaining Length 17
                0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, // Protocol Name, Level 4
                0x40, // Password Flag only
                0x00, 0x00, // Keep Alive 0
                0x00, 0x01, b'c', // Client Identifier "c"
                0x00, 0x02, b'p', b'w', // Password "pw"
            ],
            &["MQTT-3.1.2-22"],
            0x81,
        ),
    ]);
}

#[test]
fn connack_reserved_flags_and_foreign_reason_codes_are_refused() {
    rejects(&[
        reject(
            "CONNACK acknowledge flags 0b00000010",
            V5,
            &[0x20, 0x03, 0x02, 0x00, 0x00],
            &["MQTT-3.2.2-1"],
            0x81,
        ),
        reject(
            "CONNACK acknowledge flags 0b10000001",
            V311,
            &[0x20, 0x02, 0x81, 0x00],
            &["MQTT-3.2.2-1"],
            0x81,
        ),
        // 0x04 is Disconnect with Will Message: not a Connect Reason Code.
        reject(
            "CONNACK reason code 0x04",
            V5,
            &[0x20, 0x03, 0x00, 0x04, 0x00],
            &["MQTT-3.2.2-8"],
            0x81,
        ),
    ]);
}

// ---------------------------------------------------------------------------------------
// Negative fixtures: strings and topics
// ---------------------------------------------------------------------------------------

#[test]
fn strings_that_are_not_valid_mqtt_utf8_are_malformed() {
    // MQTT 5.0 §1.5.4: ill-formed UTF-8 or U+0000 in a UTF-8 Encoded String is a
    // Malformed Packet.
    rejects(&[
        reject(
            "Topic Name containing U+0000",
            V5,
            &[0x30, 0x05, 0x00, 0x02, b'a', 0x00, 0x00],
            &["MQTT-1.5.4-2"],
            0x81,
        ),
        reject(
            "Client Identifier containing U+0000",
            V5,
            &[
                0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x00, 0x00, 0x00,
                0x02, b'a', 0x00,
            ],
            &["MQTT-1.5.4-2"],
            0x81,
        ),
        reject(
            "Topic Name with an encoded surrogate U+D800 (ED A0 80)",
            V5,
            &[0x30, 0x06, 0x00, 0x03, 0xED, 0xA0, 0x80, 0x00],
            &["MQTT-1.5.4-1"],
            0x81,
        ),
        reject(
            "User Property value with an encoded surrogate",
            V5,
            &[
                0x40, 0x0D, // PUBACK, Remaining Length 13
                0x00, 0x01, 0x80, // Packet Identifier 1, Reason Code 0x80
                0x09, // Property Length 9
                0x26, 0x00, 0x01, b'k', 0x00, 0x03, 0xED, 0xA0, 0x80, // 0x26 k=<U+D800>
            ],
            &["MQTT-1.5.4-1", "MQTT-1.5.7-1"],
            0x81,
        ),
        reject(
            "Topic Name with invalid UTF-8 (C3 28)",
            V311,
            &[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28],
            &["MQTT-1.5.4-1"],
            0x81,
        ),
        reject(
            "Topic Filter with an overlong encoding (C0 AF)",
            V311,
            &[0x82, 0x07, 0x00, 0x01, 0x00, 0x02, 0xC0, 0xAF, 0x00],
            &["MQTT-1.5.4-1"],
            0x81,
        ),
        reject(
            "User Name that is not UTF-8 (FF)",
            V5,
            &[
                0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x82, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x01, 0xFF,
            ],
            &["MQTT-1.5.4-1"],
            0x81,
        ),
    ]);
}

#[test]
fn publish_topic_names_with_wildcards_are_malformed() {
    // [MQTT-3.3.2-2]. A Topic Name that breaks the format is malformed (0x81): 0x90
    // Topic Name invalid is defined as "The Topic Name is not malformed, but is not
    // accepted by this Client or Server" (MQTT 5.0 §3.4.2.1, §3.14.2.1).
    rejects(&[
        reject(
            "PUBLISH to \"a/+\"",
            V5,
            &[0x30, 0x06, 0x00, 0x03, b'a', b'/', b'+', 0x00],
            &["MQTT-3.3.2-2"],
            0x81,
        ),
        reject(
            "PUBLISH to \"#\"",
            V311,
            &[0x30, 0x03, 0x00, 0x01, b'#'],
            &["MQTT-3.3.2-2"],
            0x81,
        ),
        reject(
            "Will Topic \"a/#\"",
            V5,
            &[
                0x10, 0x15, // CONNECT, Remaining Length 21
                0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, // Protocol Name, Version 5
                0x06, // Will Flag, Clean Start
                0x00, 0x00, // Keep Alive 0
                0x00, // Property Length 0
                0x00, 0x00, // Client Identifier ""
                0x00, // Will Property Length 0
                0x00, 0x03, b'a', b'/', b'#', // Will Topic "a/#"
                0x00, 0x00, // Will Payload (empty)
            ],
            &["MQTT-3.3.2-2", "MQTT-4.7.0-1"],
            0x81,
        ),
    ]);
}

#[test]
fn empty_publish_topics_are_refused() {
    rejects(&[
        // MQTT 3.1.1 [MQTT-4.7.3-1]: Topic Names are at least one character long.
        reject(
            "PUBLISH with an empty Topic Name",
            V311,
            &[0x30, 0x02, 0x00, 0x00],
            &["MQTT-4.7.3-1", "MQTT-3.3.2-1"],
            0x81,
        ),
        // MQTT 5.0 §3.3.2.1: "It is a Protocol Error if the Topic Name is zero length and
        // there is no Topic Alias."
        reject(
            "PUBLISH with an empty Topic Name and no Topic Alias",
            V5,
            &[0x30, 0x03, 0x00, 0x00, 0x00],
            &["MQTT-3.3.2-1"],
            0x82,
        ),
    ]);
}

// ---------------------------------------------------------------------------------------
// Negative fixtures: packet identifiers
// ---------------------------------------------------------------------------------------

#[test]
fn packet_identifier_zero_is_refused() {
    rejects(&[
        reject(
            "PUBLISH QoS 1 with Packet Identifier 0",
            V5,
            &[0x32, 0x06, 0x00, 0x01, b'a', 0x00, 0x00, 0x00],
            &["MQTT-2.2.1-3"],
            0x81,
        ),
        reject(
            "PUBLISH QoS 2 with Packet Identifier 0",
            V311,
            &[0x34, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],
            &["MQTT-2.2.1-3"],
            0x81,
        ),
        reject(
            "SUBSCRIBE with Packet Identifier 0",
            V5,
            &[0x82, 0x07, 0x00, 0x00, 0x00, 0x00, 0x01, b'a', 0x00],
            &["MQTT-2.2.1-3"],
            0x81,
        ),
        reject(
            "UNSUBSCRIBE with Packet Identifier 0",
            V311,
            &[0xA2, 0x05, 0x00, 0x00, 0x00, 0x01, b'a'],
            &["MQTT-2.2.1-3"],
            0x81,
        ),
        // No statement is aimed at PUBACK itself: [MQTT-2.2.1-5] (the id of the PUBLISH
        // it answers, which is non-zero by [MQTT-2.2.1-3]/[MQTT-2.2.1-4]).
        reject(
            "PUBACK with Packet Identifier 0",
            V5,
            &[0x40, 0x02, 0x00, 0x00],
            &["MQTT-2.2.1-3", "MQTT-2.2.1-5"],
            0x81,
        ),
    ]);
}

// ---------------------------------------------------------------------------------------
// Negative fixtures: SUBSCRIBE and UNSUBSCRIBE payloads
// ---------------------------------------------------------------------------------------

#[test]
fn subscribe_and_unsubscribe_without_filters_are_protocol_errors() {
    // MQTT 5.0 §3.8.3 "A SUBSCRIBE packet with no Payload is a Protocol Error" and §3.10.3
    // "An UNSUBSCRIBE packet with no Payload is a Protocol Error".
    rejects(&[
        reject(
            "SUBSCRIBE with no filters",
            V5,
            &[0x82, 0x03, 0x00, 0x01, 0x00],
            &["MQTT-3.8.3-2"],
            0x82,
        ),
        // 3.1.1 numbers it [MQTT-3.8.3-3]; 5.0's number is accepted too.
        reject(
            "SUBSCRIBE with no filters",
            V311,
            &[0x82, 0x02, 0x00, 0x01],
            &["MQTT-3.8.3-2", "MQTT-3.8.3-3"],
            0x82,
        ),
        reject(
            "UNSUBSCRIBE with no filters",
            V5,
            &[0xA2, 0x03, 0x00, 0x01, 0x00],
            &["MQTT-3.10.3-2"],
            0x82,
        ),
        reject(
            "UNSUBSCRIBE with no filters",
            V311,
            &[0xA2, 0x02, 0x00, 0x01],
            &["MQTT-3.10.3-2"],
            0x82,
        ),
    ]);
}

/// A 5.0 SUBSCRIBE, id 1, no properties, filter "a" with the given options byte.
macro_rules! v5_subscribe_a_with_options {
    ($options:expr) => {
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', $options]
    };
}

#[test]
fn invalid_subscription_options_are_refused() {
    rejects(&[
        reject(
            "Subscription Options with reserved bits 7-6 set",
            V5,
            v5_subscribe_a_with_options!(0xC0),
            &["MQTT-3.8.3-5"],
            0x81,
        ),
        // 3.1.1 §3.8.3.1: bits 7-2 are reserved, so 5.0's No Local bit is malformed
        // there (3.1.1 numbers the rule [MQTT-3-8.3-4], sic).
        reject(
            "3.1.1 Requested QoS byte with bit 2 set",
            V311,
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04],
            &["MQTT-3.8.3-5", "MQTT-3-8.3-4"],
            0x81,
        ),
        // §3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3."
        reject(
            "Retain Handling 3",
            V5,
            v5_subscribe_a_with_options!(0x30),
            &["MQTT-3.8.3.1"],
            0x82,
        ),
        // §3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3."
        reject(
            "Maximum QoS 3",
            V5,
            v5_subscribe_a_with_options!(0x03),
            &["MQTT-3.8.3.1"],
            0x82,
        ),
        reject(
            "No Local on a shared subscription",
            V5,
            &[
                0x82, 0x10, // SUBSCRIBE, Remaining Length 16
                0x00, 0x01, // Packet Identifier 1
                0x00, // Property Length 0
                0x00, 0x0A, b'$', b's', b'h', b'a', b'r', b'e', b'/', b'g', b'/',
                b'a', // "$share/g/a"
                0x04, // No Local, QoS 0
            ],
            &["MQTT-3.8.3-4"],
            0x82,
        ),
    ]);
}

#[test]
fn malformed_topic_filters_are_refused() {
    // A filter that breaks the wildcard rules is malformed (0x81): 0x8F Topic Filter
    // invalid is defined as "The Topic Filter is correctly formed, but is not accepted"
    // (MQTT 5.0 §3.9.3, §3.14.2.1).
    rejects(&[
        reject(
            "SUBSCRIBE to \"a/#/b\"",
            V5,
            &[
                0x82, 0x0B, 0x00, 0x01, 0x00, 0x00, 0x05, b'a', b'/', b'#', b'/', b'b', 0x00,
            ],
            &["MQTT-4.7.1-1"],
            0x81,
        ),
        reject(
            "SUBSCRIBE to \"a+\"",
            V311,
            &[0x82, 0x07, 0x00, 0x01, 0x00, 0x02, b'a', b'+', 0x00],
            &["MQTT-4.7.1-2"],
            0x81,
        ),
        reject(
            "UNSUBSCRIBE from \"\"",
            V5,
            &[0xA2, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00],
            &["MQTT-4.7.3-1"],
            0x81,
        ),
    ]);
}

// ---------------------------------------------------------------------------------------
// Negative fixtures: properties
// ---------------------------------------------------------------------------------------

#[test]
fn duplicate_properties_are_protocol_errors() {
    // "It is a Protocol Error to include the <property> more than once" (each property's
    // own section; no numbered statement), MQTT 5.0 §2.2.2 for properties in general.
    rejects(&[
        reject(
            "CONNECT with two Session Expiry Intervals",
            V5,
            &[
                0x10, 0x17, // CONNECT, Remaining Length 23
                0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x0A, // header
                0x0A, // Property Length 10
                0x11, 0x00, 0x00, 0x00, 0x01, // 0x11 Session Expiry Interval 1
                0x11, 0x00, 0x00, 0x00, 0x02, // 0x11 Session Expiry Interval 2
                0x00, 0x00, // Client Identifier ""
            ],
            &["MQTT-2.2.2", "MQTT-3.1.2.11"],
            0x82,
        ),
        reject(
            "PUBLISH with two Content Types",
            V5,
            &[
                0x30, 0x0C, // PUBLISH, Remaining Length 12
                0x00, 0x01, b'a', // Topic Name "a"
                0x08, // Property Length 8
                0x03, 0x00, 0x01, b'x', // 0x03 Content Type "x"
                0x03, 0x00, 0x01, b'y', // 0x03 Content Type "y"
            ],
            &["MQTT-2.2.2", "MQTT-3.3.2.3"],
            0x82,
        ),
    ]);
}

#[test]
fn properties_not_defined_for_the_packet_are_malformed() {
    // MQTT 5.0 §2.2.2.2: "A Control Packet which contains an Identifier which is not valid
    // for its packet type ... is a Malformed Packet."
    rejects(&[
        reject(
            "Topic Alias in CONNECT",
            V5,
            &[
                0x10, 0x10, // CONNECT, Remaining Length 16
                0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x0A, // header
                0x03, // Property Length 3
                0x23, 0x00, 0x01, // 0x23 Topic Alias 1
                0x00, 0x00, // Client Identifier ""
            ],
            &["MQTT-2.2.2"],
            0x81,
        ),
        reject(
            "Session Expiry Interval among the Will Properties",
            V5,
            &[
                0x10, 0x18, // CONNECT, Remaining Length 24
                0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, // Protocol Name, Version 5
                0x06, // Will Flag, Clean Start
                0x00, 0x00, // Keep Alive 0
                0x00, // Property Length 0
                0x00, 0x00, // Client Identifier ""
                0x05, // Will Property Length 5
                0x11, 0x00, 0x00, 0x00, 0x01, // 0x11 Session Expiry Interval 1
                0x00, 0x01, b't', // Will Topic "t"
                0x00, 0x00, // Will Payload (empty)
            ],
            &["MQTT-2.2.2"],
            0x81,
        ),
        reject(
            "unknown property 0x7F in DISCONNECT",
            V5,
            &[0xE0, 0x04, 0x00, 0x02, 0x7F, 0x00],
            &["MQTT-2.2.2"],
            0x81,
        ),
    ]);
}

#[test]
fn property_values_outside_their_range_are_refused() {
    rejects(&[
        // §3.1.2.11.3: "It is a Protocol Error to include the Receive Maximum value more
        // than once or for it to have the value 0."
        reject(
            "Receive Maximum 0",
            V5,
            &[
                0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00,
                0x0A, // header
                0x03, 0x21, 0x00, 0x00, // Property Length 3, 0x21 Receive Maximum 0
                0x00, 0x00, // Client Identifier ""
            ],
            &["MQTT-2.2.2", "MQTT-3.1.2.11"],
            0x82,
        ),
        // [MQTT-3.3.2-8]; the receiver answers 0x94 Topic Alias invalid.
        reject(
            "Topic Alias 0",
            V5,
            &[
                0x30, 0x08, 0x00, 0x01, b'a', // PUBLISH, RL 8, Topic Name "a"
                0x03, 0x23, 0x00, 0x00, // Property Length 3, 0x23 Topic Alias 0
                b'x', // Payload
            ],
            &["MQTT-3.3.2-8"],
            0x94,
        ),
        // §3.2.2.3.4: "It is a Protocol Error to include Maximum QoS more than once, or to
        // have a value other than 0 or 1."
        reject(
            "Maximum QoS 2 in CONNACK",
            V5,
            &[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02],
            &["MQTT-2.2.2", "MQTT-3.2.2.3"],
            0x82,
        ),
        reject(
            "Payload Format Indicator 2",
            V5,
            &[
                0x30, 0x07, 0x00, 0x01, b'a', // PUBLISH, RL 7, Topic Name "a"
                0x02, 0x01, 0x02, // Property Length 2, 0x01 Payload Format Indicator 2
                b'x', // Payload
            ],
            &["MQTT-2.2.2", "MQTT-3.3.2.3"],
            0x82,
        ),
        // §3.8.2.1.2: "It is a Protocol Error if the Subscription Identifier has a value
        // of 0."
        reject(
            "Subscription Identifier 0 in SUBSCRIBE",
            V5,
            &[
                0x82, 0x09, 0x00, 0x01, // SUBSCRIBE, RL 9, Packet Identifier 1
                0x02, 0x0B, 0x00, // Property Length 2, 0x0B Subscription Identifier 0
                0x00, 0x01, b'a', 0x00, // "a", QoS 0
            ],
            &["MQTT-2.2.2", "MQTT-3.8.2.1"],
            0x82,
        ),
        reject(
            "Subscription Identifier 0 in PUBLISH",
            V5,
            &[
                0x30, 0x07, 0x00, 0x01, b'a', // PUBLISH, RL 7, Topic Name "a"
                0x02, 0x0B, 0x00, // Property Length 2, 0x0B Subscription Identifier 0
                b'x', // Payload
            ],
            &["MQTT-2.2.2", "MQTT-3.3.2.3"],
            0x82,
        ),
        // §3.1.2.11.6: "It is Protocol Error to ... have a value other than 0 or 1."
        reject(
            "Request Response Information 2",
            V5,
            &[
                0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00,
                0x0A, // header
                0x02, 0x19, 0x02, // Property Length 2, 0x19 Request Response Information 2
                0x00, 0x00, // Client Identifier ""
            ],
            &["MQTT-2.2.2", "MQTT-3.1.2.11"],
            0x82,
        ),
    ]);
}

// ---------------------------------------------------------------------------------------
// Negative fixtures: reason codes
// ---------------------------------------------------------------------------------------

#[test]
fn reason_codes_not_defined_for_the_packet_are_refused() {
    // Each packet has a numbered statement "The Client or Server sending the <packet>
    // MUST use one of the <packet> Reason Codes".
    rejects(&[
        reject(
            "PUBACK 0x92 (a PUBREL/PUBCOMP code)",
            V5,
            &[0x40, 0x03, 0x00, 0x01, 0x92],
            &["MQTT-3.4.2-1"],
            0x81,
        ),
        reject(
            "PUBREC 0x92",
            V5,
            &[0x50, 0x03, 0x00, 0x01, 0x92],
            &["MQTT-3.5.2-1"],
            0x81,
        ),
        reject(
            "PUBREL 0x10",
            V5,
            &[0x62, 0x03, 0x00, 0x01, 0x10],
            &["MQTT-3.6.2-1"],
            0x81,
        ),
        reject(
            "PUBCOMP 0x80",
            V5,
            &[0x70, 0x03, 0x00, 0x01, 0x80],
            &["MQTT-3.7.2-1"],
            0x81,
        ),
        reject(
            "SUBACK 0x11 (an UNSUBACK code)",
            V5,
            &[0x90, 0x04, 0x00, 0x01, 0x00, 0x11],
            &["MQTT-3.9.3-2"],
            0x81,
        ),
        // 3.1.1 [MQTT-3.9.3-2]: codes other than 0x00, 0x01, 0x02 and 0x80 are reserved.
        reject(
            "3.1.1 SUBACK return code 0x03",
            V311,
            &[0x90, 0x03, 0x00, 0x01, 0x03],
            &["MQTT-3.9.3-2"],
            0x81,
        ),
        reject(
            "UNSUBACK 0x01",
            V5,
            &[0xB0, 0x04, 0x00, 0x01, 0x00, 0x01],
            &["MQTT-3.11.3-2"],
            0x81,
        ),
        reject(
            "DISCONNECT 0x84 (a CONNACK code)",
            V5,
            &[0xE0, 0x01, 0x84],
            &["MQTT-3.14.2-1"],
            0x81,
        ),
        reject(
            "AUTH 0x01",
            V5,
            &[0xF0, 0x02, 0x01, 0x00],
            &["MQTT-3.15.2-1"],
            0x81,
        ),
    ]);
}

#[test]
fn an_auth_without_an_authentication_method_is_a_protocol_error() {
    // MQTT 5.0 §3.15.2.2.2: "It is a Protocol Error to omit the Authentication Method or
    // to include it more than once." Only the Remaining Length 0 form (Success, no
    // properties, §3.15.2.1) may leave it out.
    rejects(&[
        reject(
            "AUTH 0x18 with Property Length 0",
            V5,
            &[0xF0, 0x02, 0x18, 0x00],
            &["MQTT-3.15.2.2"],
            0x82,
        ),
        reject(
            "AUTH 0x19 with only Authentication Data",
            V5,
            &[0xF0, 0x06, 0x19, 0x04, 0x16, 0x00, 0x01, 0xAA],
            &["MQTT-3.15.2.2"],
            0x82,
        ),
        reject(
            "AUTH 0x18 with two Authentication Methods",
            V5,
            &[
                0xF0, 0x0A, 0x18, 0x08, // AUTH, RL 10, 0x18, Property Length 8
                0x15, 0x00, 0x01, b'a', // 0x15 Authentication Method "a"
                0x15, 0x00, 0x01, b'b', // 0x15 Authentication Method "b"
            ],
            &["MQTT-3.15.2.2", "MQTT-2.2.2"],
            0x82,
        ),
        // §3.1.2.11.10: "It is a Protocol Error to include Authentication Data if there is
        // no Authentication Method."
        reject(
            "CONNECT with Authentication Data but no Authentication Method",
            V5,
            &[
                0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00,
                0x0A, // header
                0x04, 0x16, 0x00, 0x01, 0xAA, // Property Length 4, 0x16 Authentication Data
                0x00, 0x00, // Client Identifier ""
            ],
            &["MQTT-3.1.2.11", "MQTT-2.2.2"],
            0x82,
        ),
    ]);
}

#[test]
fn every_decode_error_display_starts_with_its_spec_rule() {
    // The codec's documented contract: "Display starts with the spec rule".
    let samples: &[(&str, ProtocolVersion, &[u8])] = &[
        (
            "U+0000 in a Topic Name",
            V5,
            &[0x30, 0x05, 0x00, 0x02, b'a', 0x00, 0x00],
        ),
        (
            "surrogate in a Topic Name",
            V5,
            &[0x30, 0x06, 0x00, 0x03, 0xED, 0xA0, 0x80, 0x00],
        ),
        (
            "wildcard in a Topic Name",
            V5,
            &[0x30, 0x06, 0x00, 0x03, b'a', b'/', b'+', 0x00],
        ),
        (
            "invalid Topic Filter",
            V311,
            &[0x82, 0x07, 0x00, 0x01, 0x00, 0x02, b'a', b'+', 0x00],
        ),
        ("reserved packet type", V5, &[0x00, 0x00]),
        ("Packet Identifier 0", V5, &[0x40, 0x02, 0x00, 0x00]),
    ];
    let mut failures = Vec::new();
    for (name, version, bytes) in samples {
        let mut buf = BytesMut::from(*bytes);
        match codec::decode(&mut buf, UNLIMITED, *version) {
            Err(e) if e.to_string().starts_with("[MQTT-") => {}
            Err(e) => failures.push(format!("{name}: {:?}", e.to_string())),
            other => failures.push(format!("{name}: decode returned {other:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "errors whose Display does not start with \"[MQTT-\":\n{failures:#?}"
    );
}

#[test]
fn every_decode_error_maps_to_a_reason_code_its_answering_packet_may_carry() {
    // A refused CONNECT is answered with CONNACK, anything later with DISCONNECT
    // (MQTT 5.0 §4.13); each may only carry its own reason codes (§2.4, Table 2-6).
    let samples: &[(&str, &[u8])] = &[
        (
            "CONNECT with a wildcard in the Will Topic",
            &[
                0x10, 0x15, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x06, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x03, b'a', b'/', b'#', 0x00, 0x00,
            ],
        ),
        (
            "CONNECT with an empty Will Topic",
            &[
                0x10, 0x12, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x06, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            ],
        ),
        (
            "CONNECT with a wildcard in the will's Response Topic",
            &[
                0x10, 0x17, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x06, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x04, 0x08, 0x00, 0x01, b'+', 0x00, 0x01, b't', 0x00, 0x00,
            ],
        ),
        (
            "CONNECT with Will QoS 3 but no Will Flag",
            v5_connect_with_flags!(0x18),
        ),
        (
            "CONNECT with the reserved flag",
            v5_connect_with_flags!(0x01),
        ),
        (
            "CONNECT level 6",
            &[
                0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3C, 0x00, 0x02,
                b'c', b'1',
            ],
        ),
        (
            "PUBLISH to \"a/+\"",
            &[0x30, 0x06, 0x00, 0x03, b'a', b'/', b'+', 0x00],
        ),
        (
            "SUBSCRIBE to \"a/#/b\"",
            &[
                0x82, 0x0B, 0x00, 0x01, 0x00, 0x00, 0x05, b'a', b'/', b'#', b'/', b'b', 0x00,
            ],
        ),
        ("SUBSCRIBE with no filters", &[0x82, 0x03, 0x00, 0x01, 0x00]),
        (
            "Topic Alias 0",
            &[0x30, 0x08, 0x00, 0x01, b'a', 0x03, 0x23, 0x00, 0x00, b'x'],
        ),
        ("PUBACK 0x92", &[0x40, 0x03, 0x00, 0x01, 0x92]),
    ];
    let mut failures = Vec::new();
    for (name, bytes) in samples {
        check_remaining_length(name, bytes);
        let answer = if bytes[0] >> 4 == 1 {
            PacketType::ConnAck
        } else {
            PacketType::Disconnect
        };
        let mut buf = BytesMut::from(*bytes);
        match codec::decode(&mut buf, UNLIMITED, V5) {
            Err(e) if e.reason_code().is_valid_for(answer) => {}
            Err(e) => failures.push(format!(
                "{name}: {:?} ({e}) is not a {answer} reason code",
                e.reason_code()
            )),
            other => failures.push(format!("{name}: decode returned {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------------------
// Encode errors
// ---------------------------------------------------------------------------------------

/// `encode` and `encoded_len` both refuse `packet`, and `encode` writes nothing.
fn assert_encode_refused(
    name: &str,
    packet: &Packet,
    version: ProtocolVersion,
    expected: fn(&EncodeError) -> bool,
) {
    let mut buf = BytesMut::new();
    let encoded = codec::encode(packet, version, &mut buf);
    assert!(
        matches!(&encoded, Err(e) if expected(e)),
        "{name}: encode returned {encoded:?}"
    );
    assert!(
        buf.is_empty(),
        "{name}: encode wrote {} bytes before failing",
        buf.len()
    );
    let len = codec::encoded_len(packet, version);
    assert!(
        matches!(&len, Err(e) if expected(e)),
        "{name}: encoded_len returned {len:?}"
    );
}

#[test]
fn auth_cannot_be_encoded_for_mqtt_311() {
    assert_encode_refused(
        "AUTH for 3.1.1",
        &Packet::Auth(Auth::default()),
        V311,
        |e| matches!(e, EncodeError::AuthInV311),
    );
}

#[test]
fn a_publish_whose_packet_identifier_does_not_match_its_qos_cannot_be_encoded() {
    let qos1_without_id = Packet::Publish(publish(QoS::AtLeastOnce, "a", None, b"x"));
    let qos0_with_id = Packet::Publish(publish(QoS::AtMostOnce, "a", Some(1), b"x"));
    for version in [V5, V311] {
        assert_encode_refused(
            "QoS 1 PUBLISH without a packet id",
            &qos1_without_id,
            version,
            |e| matches!(e, EncodeError::PacketIdMismatch { .. }),
        );
        assert_encode_refused(
            "QoS 0 PUBLISH with a packet id",
            &qos0_with_id,
            version,
            |e| matches!(e, EncodeError::PacketIdMismatch { .. }),
        );
    }
}

#[test]
fn packets_that_decode_would_refuse_cannot_be_encoded() {
    assert_encode_refused(
        "SUBSCRIBE without filters",
        &Packet::Subscribe(Subscribe {
            packet_id: id(1),
            subscriptions: Vec::new(),
            properties: SubscribeProperties::default(),
        }),
        V5,
        |e| matches!(e, EncodeError::NoTopicFilters(_)),
    );
    assert_encode_refused(
        "No Local on a shared subscription",
        &Packet::Subscribe(Subscribe {
            packet_id: id(1),
            subscriptions: vec![sub(
                "$share/g/a",
                options(
                    QoS::AtMostOnce,
                    true,
                    false,
                    RetainHandling::SendAtSubscribe,
                ),
            )],
            properties: SubscribeProperties::default(),
        }),
        V5,
        |e| matches!(e, EncodeError::NoLocalOnSharedSubscription(_)),
    );
    assert_encode_refused(
        "PUBACK with reason code 0x92",
        &Packet::PubAck(response(1, 0x92, AckProperties::default())),
        V5,
        |e| matches!(e, EncodeError::InvalidReasonCode { .. }),
    );
    assert_encode_refused(
        "CONNACK with Maximum QoS 2",
        &Packet::ConnAck(ConnAck {
            properties: ConnAckProperties {
                maximum_qos: Some(QoS::ExactlyOnce),
                ..ConnAckProperties::default()
            },
            ..ConnAck::default()
        }),
        V5,
        |e| matches!(e, EncodeError::InvalidMaximumQoS),
    );
    assert_encode_refused(
        "3.1.1 CONNECT with a password but no user name",
        &connect(Connect {
            password: Some(bin(b"pw")),
            ..bare_connect(V311, "c")
        }),
        V311,
        |e| matches!(e, EncodeError::PasswordWithoutUsername),
    );
    assert_encode_refused(
        "3.1.1 PUBLISH with an empty topic",
        &Packet::Publish(Publish {
            topic: TopicName::empty_for_alias(),
            ..publish(QoS::AtMostOnce, "a", None, b"x")
        }),
        V311,
        |e| matches!(e, EncodeError::EmptyTopicWithoutAlias),
    );
    assert_encode_refused(
        "5.0 CONNECT on a 3.1.1 connection",
        &connect(bare_connect(V5, "c")),
        V311,
        |e| matches!(e, EncodeError::ProtocolMismatch { .. }),
    );
}

#[test]
fn a_publish_beyond_the_largest_remaining_length_cannot_be_encoded() {
    // Topic "a" (3 bytes) + 268,435,453 payload bytes = Remaining Length 268,435,456,
    // one more than a Variable Byte Integer holds. The zeroed payload is not touched.
    let packet = Packet::Publish(Publish {
        payload: Bytes::from(vec![0u8; 268_435_453]),
        ..publish(QoS::AtMostOnce, "a", None, b"")
    });
    assert_encode_refused("PUBLISH of 268435456 bytes", &packet, V311, |e| {
        matches!(e, EncodeError::TooLarge(_))
    });
}
