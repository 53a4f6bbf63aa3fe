//! Property tests of the MQTT codec (`fieldgate::mqtt::codec`) for 3.1.1 and 5.0.
//!
//! The strategies below build arbitrary *valid* packets of every type: for 5.0 everything
//! the types can hold (all properties, all reason codes a packet may carry, shared
//! subscriptions, empty topics with a Topic Alias), for 3.1.1 only what 3.1.1 can carry
//! (no properties, Success on PUBACK-like packets, the five CONNACK refusals, ...). The
//! properties then check, for both versions:
//!
//! 1. `decode(encode(p)) == p`, consuming exactly the encoded bytes, and `encoded_len`
//!    agrees with `encode`;
//! 2. any proper prefix of an encoding decodes to `Ok(None)` without touching the buffer,
//!    and the rest completes it;
//! 3. packets concatenated in one buffer come back in order;
//! 4. `max_packet_size` is exact: one byte less is Packet too large, as soon as the fixed
//!    header is in;
//! 5. arbitrary and mutated bytes never panic, and whatever decodes re-encodes to itself;
//! 6. a decoded PUBLISH shares the read buffer (payload and topic are not copied);
//! 7. a 5.0 packet encoded for 3.1.1 loses exactly what the codec documents;
//! 8. large PUBLISHes on both sides of each Remaining Length size boundary (128, 16,384,
//!    2,097,152) get the shortest header and round-trip.
//!
//! Failures are not persisted to a regressions file: when one turns up, keep its shrunk
//! input at the end of this file as a plain `#[test]` named after the behaviour.

use std::num::{NonZeroU16, NonZeroU32};
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use fieldgate::mqtt::codec::{self, DecodeError, EncodeError, decode, encode, encoded_len};
use fieldgate::mqtt::packet::{
    AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, ConnectProperties,
    Disconnect, DisconnectProperties, Packet, PacketId, PacketType, PayloadFormat, ProtocolVersion,
    PubResponse, Publish, PublishProperties, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    SubscribeProperties, Subscription, SubscriptionId, SubscriptionOptions, UnsubAck, Unsubscribe,
    UnsubscribeProperties, UserProperty, Will, WillProperties,
};
use fieldgate::mqtt::string::MqttString;
use fieldgate::mqtt::topic::{TopicFilter, TopicName};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::strategy::Union;
use proptest::test_runner::{Config, TestCaseError};

use ProtocolVersion::{V5, V311};

// ---------------------------------------------------------------------------------------
// Reason codes each packet may carry (MQTT 5.0 §3.2.2.2, §3.4.2.1 to §3.7.2.1, §3.9.3,
// §3.11.3, §3.14.2.1, §3.15.2.1), written out from the specification rather than taken
// from `ReasonCode::is_valid_for`, so the generators do not just mirror the codec.
// ---------------------------------------------------------------------------------------

const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const PUBACK_PUBREC_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_PUBCOMP_CODES: &[u8] = &[0x00, 0x92];
const SUBACK_CODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];
/// 3.1.1 CONNACK return codes 0..=5 as the 5.0 codes the codec carries them as.
const V311_CONNACK_CODES: &[u8] = &[0x00, 0x84, 0x85, 0x88, 0x86, 0x87];
/// 3.1.1 SUBACK return codes.
const V311_SUBACK_CODES: &[u8] = &[0x00, 0x01, 0x02, 0x80];

// ---------------------------------------------------------------------------------------
// Leaf strategies
// ---------------------------------------------------------------------------------------

/// Text for MQTT strings: mostly ASCII, often any Unicode scalar value except U+0000, and
/// sometimes a mix of 1-, 2-, 3- and 4-byte characters, BOM and control characters.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => regex(&format!("[a-zA-Z0-9 _.:-]{{0,{max}}}")),
        2 => regex(&format!("[^\\x00]{{0,{max}}}")),
        1 => regex(&format!(
            "[a\\x01\\x7F\\x{{80}}\\x{{7FF}}\\x{{800}}\\x{{FEFF}}\\x{{FFFF}}\\x{{10000}}\\x{{10FFFF}}äöü€日本語𝄞]{{1,{max}}}"
        )),
    ]
}

/// A strategy for strings matching `pattern`.
// The patterns are constants: a bad one must fail the tests loudly, not generate nothing.
#[allow(clippy::expect_used)]
fn regex(pattern: &str) -> BoxedStrategy<String> {
    proptest::string::string_regex(pattern)
        .expect("valid regex")
        .boxed()
}

fn mqtt_string() -> impl Strategy<Value = MqttString> {
    text(12).prop_filter_map("U+0000 is not allowed", |s| MqttString::try_from(s).ok())
}

fn user_properties() -> impl Strategy<Value = Vec<UserProperty>> {
    vec(
        (mqtt_string(), mqtt_string()).prop_map(|(name, value)| UserProperty { name, value }),
        0..4,
    )
}

/// Binary Data for properties, passwords and will payloads.
fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

/// A PUBLISH payload: usually 0..300 bytes (crossing the 1-/2-byte Remaining Length
/// boundary at 128), occasionally 16-20 KiB (crossing the 2-/3-byte boundary at 16,384).
fn payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        30 => vec(any::<u8>(), 0..300).prop_map(Bytes::from),
        1 => (16_000usize..20_480, any::<u8>()).prop_map(|(len, seed)| patterned(len, seed)),
    ]
}

/// `len` bytes of a cheap non-constant pattern (random bytes would be slow to generate
/// and pointless to shrink at this size).
fn patterned(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect::<Vec<u8>>()
        .into()
}

/// A u32 that often sits on an edge.
fn u32_value() -> impl Strategy<Value = u32> {
    prop_oneof![any::<u32>(), Just(0u32), Just(u32::MAX), 0u32..300,]
}

fn u16_value() -> impl Strategy<Value = u16> {
    prop_oneof![any::<u16>(), Just(0u16), Just(u16::MAX)]
}

fn non_zero_u16() -> impl Strategy<Value = NonZeroU16> {
    prop_oneof![
        any::<NonZeroU16>(),
        Just(NonZeroU16::MIN),
        Just(NonZeroU16::MAX)
    ]
}

fn non_zero_u32() -> impl Strategy<Value = NonZeroU32> {
    prop_oneof![
        any::<NonZeroU32>(),
        Just(NonZeroU32::MIN),
        Just(NonZeroU32::MAX)
    ]
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    prop_oneof![1u16..=u16::MAX, Just(1u16), Just(u16::MAX)]
        .prop_filter_map("0 is not a packet id", PacketId::new)
}

/// Subscription identifiers, biased to the Variable Byte Integer length boundaries.
fn subscription_id() -> impl Strategy<Value = SubscriptionId> {
    prop_oneof![
        1u32..=SubscriptionId::MAX,
        select(vec![
            1u32,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            SubscriptionId::MAX
        ]),
    ]
    .prop_filter_map("1..=268435455", SubscriptionId::new)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn payload_format() -> impl Strategy<Value = PayloadFormat> {
    prop_oneof![Just(PayloadFormat::Unspecified), Just(PayloadFormat::Utf8)]
}

fn reason_code(codes: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    select(codes).prop_map(ReasonCode)
}

/// One topic level without wildcards or separators (may be empty: "a//b" is valid).
fn level() -> BoxedStrategy<String> {
    prop_oneof![
        4 => regex("[a-z0-9_$ -]{0,6}"),
        1 => regex("[^\\x00/+#]{0,5}"),
    ]
    .boxed()
}

/// A topic name: levels joined by '/', such as "a/b", "/", "$SYS/x" or "a//é".
fn topic_name() -> impl Strategy<Value = TopicName> {
    vec(level(), 1..5).prop_filter_map("a topic name is not empty", |levels| {
        TopicName::try_from(levels.join("/").as_str()).ok()
    })
}

/// A topic filter with '+' levels, an optional final '#', and sometimes a
/// `$share/<group>/` prefix.
fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    let filter_level = prop_oneof![3 => level(), 1 => Just("+".to_owned())];
    let group = prop_oneof![regex("[a-zA-Z0-9_-]{1,6}"), regex("[^\\x00/+#]{1,4}")];
    (
        vec(filter_level, 1..5),
        any::<bool>(),
        option::weighted(0.25, group),
    )
        .prop_filter_map(
            "a topic filter is not empty",
            |(mut levels, multi, group)| {
                if multi {
                    levels.push("#".to_owned());
                }
                let filter = levels.join("/");
                let raw = match group {
                    Some(group) => format!("$share/{group}/{filter}"),
                    None => filter,
                };
                TopicFilter::try_from(raw.as_str()).ok()
            },
        )
}

// ---------------------------------------------------------------------------------------
// Property sets (5.0 only; 3.1.1 gets the defaults)
// ---------------------------------------------------------------------------------------

fn connect_properties(v: ProtocolVersion) -> BoxedStrategy<ConnectProperties> {
    if v == V311 {
        return Just(ConnectProperties::default()).boxed();
    }
    (
        option::of(u32_value()),
        option::of(non_zero_u16()),
        option::of(non_zero_u32()),
        option::of(u16_value()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        // Authentication Data only together with an Authentication Method.
        option::of((mqtt_string(), option::of(binary()))),
        user_properties(),
    )
        .prop_map(|(sei, rm, mps, tam, rri, rpi, auth, up)| {
            let (am, ad) = match auth {
                Some((method, data)) => (Some(method), data),
                None => (None, None),
            };
            ConnectProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                authentication_method: am,
                authentication_data: ad,
                user_properties: up,
            }
        })
        .boxed()
}

fn will_properties(v: ProtocolVersion) -> BoxedStrategy<WillProperties> {
    if v == V311 {
        return Just(WillProperties::default()).boxed();
    }
    (
        option::of(u32_value()),
        option::of(payload_format()),
        option::of(u32_value()),
        option::of(mqtt_string()),
        option::of(topic_name()),
        option::of(binary()),
        user_properties(),
    )
        .prop_map(|(wdi, pfi, mei, ct, rt, cd, up)| WillProperties {
            will_delay_interval: wdi,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
        })
        .boxed()
}

fn connack_properties(v: ProtocolVersion) -> BoxedStrategy<ConnAckProperties> {
    if v == V311 {
        return Just(ConnAckProperties::default()).boxed();
    }
    // Maximum QoS may only be 0 or 1 on the wire.
    let maximum_qos = prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)];
    (
        (
            option::of(u32_value()),
            option::of(non_zero_u16()),
            option::of(maximum_qos),
            option::of(any::<bool>()),
            option::of(non_zero_u32()),
            option::of(mqtt_string()),
            option::of(u16_value()),
            option::of(mqtt_string()),
            user_properties(),
        ),
        (
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            option::of(any::<bool>()),
            option::of(u16_value()),
            option::of(mqtt_string()),
            option::of(mqtt_string()),
            option::of(mqtt_string()),
            option::of(binary()),
        ),
    )
        .prop_map(
            |((sei, rm, mq, ra, mps, aci, tam, rs, up), (wsa, sia, ssa, ska, ri, sr, am, ad))| {
                ConnAckProperties {
                    session_expiry_interval: sei,
                    receive_maximum: rm,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size: mps,
                    assigned_client_identifier: aci,
                    topic_alias_maximum: tam,
                    reason_string: rs,
                    user_properties: up,
                    wildcard_subscription_available: wsa,
                    subscription_identifiers_available: sia,
                    shared_subscription_available: ssa,
                    server_keep_alive: ska,
                    response_information: ri,
                    server_reference: sr,
                    authentication_method: am,
                    authentication_data: ad,
                }
            },
        )
        .boxed()
}

/// PUBLISH properties except the Topic Alias, which goes with the topic (see `publish`).
fn publish_properties(v: ProtocolVersion) -> BoxedStrategy<PublishProperties> {
    if v == V311 {
        return Just(PublishProperties::default()).boxed();
    }
    (
        option::of(payload_format()),
        option::of(u32_value()),
        option::of(topic_name()),
        option::of(binary()),
        user_properties(),
        vec(subscription_id(), 0..4),
        option::of(mqtt_string()),
    )
        .prop_map(|(pfi, mei, rt, cd, up, sids, ct)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            topic_alias: None,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
            subscription_identifiers: sids,
            content_type: ct,
        })
        .boxed()
}

fn ack_properties(v: ProtocolVersion) -> BoxedStrategy<AckProperties> {
    if v == V311 {
        return Just(AckProperties::default()).boxed();
    }
    (option::of(mqtt_string()), user_properties())
        .prop_map(|(reason_string, user_properties)| AckProperties {
            reason_string,
            user_properties,
        })
        .boxed()
}

fn subscribe_properties(v: ProtocolVersion) -> BoxedStrategy<SubscribeProperties> {
    if v == V311 {
        return Just(SubscribeProperties::default()).boxed();
    }
    (option::of(subscription_id()), user_properties())
        .prop_map(
            |(subscription_identifier, user_properties)| SubscribeProperties {
                subscription_identifier,
                user_properties,
            },
        )
        .boxed()
}

fn unsubscribe_properties(v: ProtocolVersion) -> BoxedStrategy<UnsubscribeProperties> {
    if v == V311 {
        return Just(UnsubscribeProperties::default()).boxed();
    }
    user_properties()
        .prop_map(|user_properties| UnsubscribeProperties { user_properties })
        .boxed()
}

fn disconnect_properties() -> impl Strategy<Value = DisconnectProperties> {
    (
        option::of(u32_value()),
        option::of(mqtt_string()),
        user_properties(),
        option::of(mqtt_string()),
    )
        .prop_map(|(sei, rs, up, sr)| DisconnectProperties {
            session_expiry_interval: sei,
            reason_string: rs,
            user_properties: up,
            server_reference: sr,
        })
}

fn auth_properties() -> impl Strategy<Value = AuthProperties> {
    (
        option::of(mqtt_string()),
        option::of(binary()),
        option::of(mqtt_string()),
        user_properties(),
    )
        .prop_map(|(am, ad, rs, up)| AuthProperties {
            authentication_method: am,
            authentication_data: ad,
            reason_string: rs,
            user_properties: up,
        })
}

/// Half of all property sets are empty: that is the common case on the wire, and it is
/// where the 5.0 short forms (no reason code, no property length) apply.
fn mostly_empty<T: Default + Clone + std::fmt::Debug + 'static>(
    s: BoxedStrategy<T>,
) -> BoxedStrategy<T> {
    prop_oneof![Just(T::default()), s].boxed()
}

// ---------------------------------------------------------------------------------------
// Packets
// ---------------------------------------------------------------------------------------

fn connect(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let will = (
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        will_properties(v),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    let client_id = prop_oneof![Just(MqttString::empty()), mqtt_string()];
    (
        any::<bool>(),
        u16_value(),
        client_id,
        option::of(will),
        option::of(mqtt_string()),
        option::of(binary()),
        mostly_empty(connect_properties(v)),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // 3.1.1 allows a password only together with a user name.
                let password = if v == V311 && username.is_none() {
                    None
                } else {
                    password
                };
                Packet::Connect(Box::new(Connect {
                    protocol: v,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
        .boxed()
}

fn connack(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let codes = if v == V5 {
        CONNACK_CODES
    } else {
        V311_CONNACK_CODES
    };
    (
        any::<bool>(),
        reason_code(codes),
        mostly_empty(connack_properties(v)),
    )
        .prop_map(|(session_present, reason_code, properties)| {
            Packet::ConnAck(ConnAck {
                session_present,
                reason_code,
                properties,
            })
        })
        .boxed()
}

fn publish(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    // (topic, topic alias): 3.1.1 always has a topic and no alias; 5.0 sometimes sends an
    // alias alone (empty topic), sometimes both.
    let topic_and_alias = if v == V5 {
        prop_oneof![
            3 => topic_name().prop_map(|t| (t, None)),
            1 => (topic_name(), non_zero_u16()).prop_map(|(t, a)| (t, Some(a))),
            1 => non_zero_u16().prop_map(|a| (TopicName::empty_for_alias(), Some(a))),
        ]
        .boxed()
    } else {
        topic_name().prop_map(|t| (t, None)).boxed()
    };
    (
        topic_and_alias,
        qos(),
        any::<bool>(),
        any::<bool>(),
        packet_id(),
        payload(),
        mostly_empty(publish_properties(v)),
    )
        .prop_map(
            |((topic, topic_alias), qos, dup, retain, id, payload, properties)| {
                let qos0 = qos == QoS::AtMostOnce;
                Packet::Publish(Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    topic,
                    packet_id: if qos0 { None } else { Some(id) },
                    payload,
                    properties: PublishProperties {
                        topic_alias,
                        ..properties
                    },
                })
            },
        )
        .boxed()
}

fn pub_response(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let kinds: [(PacketType, &'static [u8]); 4] = [
        (PacketType::PubAck, PUBACK_PUBREC_CODES),
        (PacketType::PubRec, PUBACK_PUBREC_CODES),
        (PacketType::PubRel, PUBREL_PUBCOMP_CODES),
        (PacketType::PubComp, PUBREL_PUBCOMP_CODES),
    ];
    let choices = kinds.map(|(kind, codes)| {
        let code = if v == V5 {
            reason_code(codes).boxed()
        } else {
            Just(ReasonCode::SUCCESS).boxed()
        };
        (packet_id(), code, mostly_empty(ack_properties(v)))
            .prop_map(move |(packet_id, reason_code, properties)| {
                let r = PubResponse {
                    packet_id,
                    reason_code,
                    properties,
                };
                match kind {
                    PacketType::PubAck => Packet::PubAck(r),
                    PacketType::PubRec => Packet::PubRec(r),
                    PacketType::PubRel => Packet::PubRel(r),
                    _ => Packet::PubComp(r),
                }
            })
            .boxed()
    });
    Union::new(choices).boxed()
}

fn subscribe(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let retain_handling = prop_oneof![
        Just(RetainHandling::SendAtSubscribe),
        Just(RetainHandling::SendAtSubscribeIfNew),
        Just(RetainHandling::DoNotSend),
    ];
    let subscription = (
        topic_filter(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        retain_handling,
    )
        .prop_map(move |(filter, qos, no_local, rap, rh)| {
            let options = if v == V5 {
                SubscriptionOptions {
                    qos,
                    // No Local is a Protocol Error on a shared subscription.
                    no_local: no_local && !filter.is_shared(),
                    retain_as_published: rap,
                    retain_handling: rh,
                }
            } else {
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                }
            };
            Subscription { filter, options }
        });
    (
        packet_id(),
        vec(subscription, 1..5),
        mostly_empty(subscribe_properties(v)),
    )
        .prop_map(|(packet_id, subscriptions, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                subscriptions,
                properties,
            })
        })
        .boxed()
}

fn suback(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let codes = if v == V5 {
        SUBACK_CODES
    } else {
        V311_SUBACK_CODES
    };
    (
        packet_id(),
        vec(reason_code(codes), 0..5),
        mostly_empty(ack_properties(v)),
    )
        .prop_map(|(packet_id, reason_codes, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reason_codes,
                properties,
            })
        })
        .boxed()
}

fn unsubscribe(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    (
        packet_id(),
        vec(topic_filter(), 1..5),
        mostly_empty(unsubscribe_properties(v)),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        })
        .boxed()
}

fn unsuback(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let codes = if v == V5 {
        vec(reason_code(UNSUBACK_CODES), 0..5).boxed()
    } else {
        // 3.1.1 UNSUBACK has no payload.
        Just(Vec::new()).boxed()
    };
    (packet_id(), codes, mostly_empty(ack_properties(v)))
        .prop_map(|(packet_id, reason_codes, properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reason_codes,
                properties,
            })
        })
        .boxed()
}

fn disconnect(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    if v == V311 {
        return Just(Packet::Disconnect(Disconnect::default())).boxed();
    }
    (
        reason_code(DISCONNECT_CODES),
        mostly_empty(disconnect_properties().boxed()),
    )
        .prop_map(|(reason_code, properties)| {
            Packet::Disconnect(Disconnect {
                reason_code,
                properties,
            })
        })
        .boxed()
}

/// AUTH: the bare Success form, or anything else with an Authentication Method
/// (MQTT 5.0 §3.15.2.2.2).
fn auth() -> BoxedStrategy<Packet> {
    let bare = Just(Packet::Auth(Auth::default()));
    let full = (reason_code(AUTH_CODES), auth_properties(), mqtt_string()).prop_map(
        |(reason_code, mut properties, method)| {
            properties.authentication_method.get_or_insert(method);
            Packet::Auth(Auth {
                reason_code,
                properties,
            })
        },
    );
    prop_oneof![1 => bare, 3 => full].boxed()
}

/// Any valid packet that `v` can represent exactly: all fifteen types for 5.0, all but
/// AUTH for 3.1.1. PUBLISH is weighted up: it has the most shapes.
fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut choices: Vec<(u32, BoxedStrategy<Packet>)> = vec![
        (2, connect(v)),
        (1, connack(v)),
        (3, publish(v)),
        (4, pub_response(v)),
        (2, subscribe(v)),
        (1, suback(v)),
        (1, unsubscribe(v)),
        (1, unsuback(v)),
        (1, Just(Packet::PingReq).boxed()),
        (1, Just(Packet::PingResp).boxed()),
        (1, disconnect(v)),
    ];
    if v == V5 {
        choices.push((1, auth()));
    }
    Union::new_weighted(choices).boxed()
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(V311), Just(V5)]
}

/// A version and a packet that version can carry.
fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    versioned(packet)
}

/// `(v, x)` for either version, with `make(v)` built once per version (building the
/// strategies compiles their regexes, far too slow to redo for every case).
fn versioned<T: std::fmt::Debug + 'static>(
    make: impl Fn(ProtocolVersion) -> BoxedStrategy<T>,
) -> impl Strategy<Value = (ProtocolVersion, T)> {
    prop_oneof![
        make(V311).prop_map(|x| (V311, x)),
        make(V5).prop_map(|x| (V5, x)),
    ]
}

/// How a valid encoding gets damaged.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Truncate(Index),
    Remove(Index),
    Insert(Index, u8),
    Append(Vec<u8>),
    SetFirstByte(u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        1 => any::<Index>().prop_map(Mutation::Remove),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => vec(any::<u8>(), 1..16).prop_map(Mutation::Append),
        1 => any::<u8>().prop_map(Mutation::SetFirstByte),
    ]
}

fn apply(mutation: &Mutation, bytes: &mut Vec<u8>) {
    let len = bytes.len();
    match mutation {
        Mutation::Flip(i, x) => {
            if len > 0 {
                bytes[i.index(len)] ^= x;
            }
        }
        Mutation::Set(i, b) => {
            if len > 0 {
                bytes[i.index(len)] = *b;
            }
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(len.max(1))),
        Mutation::Remove(i) => {
            if len > 0 {
                bytes.remove(i.index(len));
            }
        }
        Mutation::Insert(i, b) => bytes.insert(i.index(len + 1), *b),
        Mutation::Append(extra) => bytes.extend_from_slice(extra),
        Mutation::SetFirstByte(b) => {
            if len > 0 {
                bytes[0] = *b;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Checks shared by the properties
// ---------------------------------------------------------------------------------------

fn fail(what: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(what.to_string())
}

fn encoded(p: &Packet, v: ProtocolVersion) -> Result<BytesMut, TestCaseError> {
    let mut buf = BytesMut::new();
    encode(p, v, &mut buf).map_err(|e| fail(format!("encode failed: {e} for {p:?}")))?;
    Ok(buf)
}

/// The version a packet decoded on a `v` connection is re-encoded with: CONNECT carries
/// its own.
fn version_of(p: &Packet, v: ProtocolVersion) -> ProtocolVersion {
    match p {
        Packet::Connect(c) => c.protocol,
        _ => v,
    }
}

/// Feeds `bytes` to `decode` until it needs more or fails. For every packet that comes
/// out: `encode` accepts it, `encoded_len` agrees, the canonical encoding is no longer
/// than what was received, and it decodes back to the same packet. `Ok(None)` must not
/// consume anything.
fn decode_all_and_reencode(
    bytes: &[u8],
    max: u32,
    v: ProtocolVersion,
) -> Result<Vec<Packet>, TestCaseError> {
    let mut buf = BytesMut::from(bytes);
    let mut packets = Vec::new();
    loop {
        let before = buf.clone();
        match decode(&mut buf, max, v) {
            Ok(None) => {
                prop_assert_eq!(&buf, &before, "Ok(None) consumed bytes");
                return Ok(packets);
            }
            Err(_) => return Ok(packets),
            Ok(Some(p)) => {
                let consumed = before.len() - buf.len();
                prop_assert!(consumed >= 2, "a packet is at least two bytes");
                prop_assert!(consumed as u64 <= u64::from(max));
                let v2 = version_of(&p, v);
                let mut again = encoded(&p, v2)?;
                prop_assert_eq!(encoded_len(&p, v2).ok(), Some(again.len()));
                prop_assert!(
                    again.len() <= consumed,
                    "canonical form ({} bytes) is longer than the {} bytes received",
                    again.len(),
                    consumed
                );
                let back = decode(&mut again, u32::MAX, v2)
                    .map_err(|e| fail(format!("re-encoded {p:?} does not decode: {e}")))?;
                prop_assert_eq!(back.as_ref(), Some(&p));
                prop_assert!(again.is_empty());
                packets.push(p);
            }
        }
    }
}

/// Number of bytes of the fixed header at the front of a valid encoding.
fn fixed_header_len(bytes: &[u8]) -> usize {
    1 + bytes[1..]
        .iter()
        .position(|b| b & 0x80 == 0)
        .map_or(0, |i| i + 1)
}

fn var_int_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn contains(range: &Range<usize>, slice: &[u8]) -> bool {
    let start = slice.as_ptr() as usize;
    range.start <= start && start + slice.len() <= range.end
}

/// What a 5.0 packet becomes after a trip through a 3.1.1 connection, as the codec
/// documents it; `None` when `encode` must refuse it.
fn projected_to_v311(p: &Packet) -> Option<Packet> {
    Some(match p {
        Packet::Connect(_) | Packet::Auth(_) => return None,
        Packet::ConnAck(c) => Packet::ConnAck(ConnAck {
            session_present: c.session_present,
            reason_code: c.reason_code,
            properties: ConnAckProperties::default(),
        }),
        Packet::Publish(pb) => {
            if pb.topic.is_empty() {
                return None;
            }
            Packet::Publish(Publish {
                properties: Default::default(),
                ..pb.clone()
            })
        }
        Packet::PubAck(r) => Packet::PubAck(PubResponse::success(r.packet_id)),
        Packet::PubRec(r) => Packet::PubRec(PubResponse::success(r.packet_id)),
        Packet::PubRel(r) => Packet::PubRel(PubResponse::success(r.packet_id)),
        Packet::PubComp(r) => Packet::PubComp(PubResponse::success(r.packet_id)),
        Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            packet_id: s.packet_id,
            subscriptions: s
                .subscriptions
                .iter()
                .map(|sub| Subscription {
                    filter: sub.filter.clone(),
                    options: SubscriptionOptions {
                        qos: sub.options.qos,
                        ..SubscriptionOptions::default()
                    },
                })
                .collect(),
            properties: SubscribeProperties::default(),
        }),
        Packet::SubAck(s) => Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reason_codes: s
                .reason_codes
                .iter()
                .map(|&c| {
                    if c.is_success() {
                        c
                    } else {
                        ReasonCode::UNSPECIFIED_ERROR
                    }
                })
                .collect(),
            properties: AckProperties::default(),
        }),
        Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            packet_id: u.packet_id,
            filters: u.filters.clone(),
            properties: UnsubscribeProperties::default(),
        }),
        Packet::UnsubAck(u) => Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reason_codes: Vec::new(),
            properties: AckProperties::default(),
        }),
        Packet::PingReq => Packet::PingReq,
        Packet::PingResp => Packet::PingResp,
        Packet::Disconnect(_) => Packet::Disconnect(Disconnect::default()),
    })
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn every_packet_decodes_back_to_itself_consuming_exactly_its_encoding(
        (v, p) in versioned_packet(),
        trailing in vec(any::<u8>(), 0..4),
    ) {
        let mut buf = encoded(&p, v)?;
        let len = buf.len();
        prop_assert_eq!(encoded_len(&p, v), Ok(len));
        // Bytes after the packet (the start of the next one) are left alone.
        buf.extend_from_slice(&trailing);
        let decoded = decode(&mut buf, u32::MAX, v);
        prop_assert_eq!(decoded, Ok(Some(p)));
        prop_assert_eq!(&buf[..], &trailing[..]);
    }

    #[test]
    fn a_packet_split_anywhere_decodes_only_once_the_rest_arrives(
        (v, p) in versioned_packet(),
        split in any::<Index>(),
    ) {
        let whole = encoded(&p, v)?;
        let at = split.index(whole.len());
        let mut buf = BytesMut::from(&whole[..at]);
        prop_assert_eq!(decode(&mut buf, u32::MAX, v), Ok(None));
        prop_assert_eq!(&buf[..], &whole[..at], "a partial packet must be left intact");
        buf.extend_from_slice(&whole[at..]);
        prop_assert_eq!(decode(&mut buf, u32::MAX, v), Ok(Some(p)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn packets_concatenated_in_one_buffer_decode_in_order(
        (v, packets) in versioned(|v| vec(packet(v), 1..6).boxed()),
    ) {
        let mut buf = BytesMut::new();
        for p in &packets {
            encode(p, v, &mut buf).map_err(fail)?;
        }
        for p in &packets {
            prop_assert_eq!(decode(&mut buf, u32::MAX, v), Ok(Some(p.clone())));
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decode(&mut buf, u32::MAX, v), Ok(None));
    }

    #[test]
    fn the_maximum_packet_size_admits_a_packet_of_exactly_that_size_and_not_one_byte_more(
        (v, p) in versioned_packet(),
    ) {
        let whole = encoded(&p, v)?;
        let size = u32::try_from(whole.len()).map_err(fail)?;

        let mut buf = whole.clone();
        let too_large = decode(&mut buf, size - 1, v);
        prop_assert!(
            matches!(&too_large, Err(e) if e.reason_code() == ReasonCode::PACKET_TOO_LARGE),
            "{:?}", too_large
        );
        let is_packet_too_large = matches!(too_large, Err(DecodeError::PacketTooLarge { .. }));
        prop_assert!(is_packet_too_large);

        // Refused as soon as the fixed header is complete, before the body is buffered.
        let mut header = BytesMut::from(&whole[..fixed_header_len(&whole)]);
        let early = decode(&mut header, size - 1, v);
        prop_assert!(
            matches!(&early, Err(e) if e.reason_code() == ReasonCode::PACKET_TOO_LARGE),
            "{:?}", early
        );

        let mut buf = whole.clone();
        prop_assert_eq!(decode(&mut buf, size, v), Ok(Some(p)));
    }

    #[test]
    fn a_decoded_publish_shares_the_read_buffer_instead_of_copying(
        (v, p) in versioned(publish),
    ) {
        let mut buf = encoded(&p, v)?;
        let start = buf.as_ptr() as usize;
        let range = start..start + buf.len();
        let Ok(Some(Packet::Publish(decoded))) = decode(&mut buf, u32::MAX, v) else {
            return Err(fail("not a PUBLISH"));
        };
        if !decoded.payload.is_empty() {
            prop_assert!(contains(&range, &decoded.payload), "payload was copied");
        }
        if !decoded.topic.is_empty() {
            prop_assert!(contains(&range, decoded.topic.as_str().as_bytes()), "topic was copied");
        }
        for up in &decoded.properties.user_properties {
            if !up.value.is_empty() {
                prop_assert!(contains(&range, up.value.as_bytes()), "user property was copied");
            }
        }
    }

    #[test]
    fn a_5_0_packet_sent_to_a_3_1_1_peer_loses_only_what_3_1_1_cannot_carry(
        p in packet(V5),
    ) {
        let mut buf = BytesMut::new();
        let result = encode(&p, V311, &mut buf);
        match (&p, projected_to_v311(&p)) {
            (Packet::Connect(c), _) => {
                prop_assert_eq!(
                    result,
                    Err(EncodeError::ProtocolMismatch { connect: V5, encode: V311 })
                );
                prop_assert!(buf.is_empty(), "nothing is appended on error");
                // The same CONNECT asked for 3.1.1 drops its properties.
                let mut c = (**c).clone();
                c.protocol = V311;
                let p311 = Packet::Connect(Box::new(c.clone()));
                let r311 = encode(&p311, V311, &mut buf);
                if c.password.is_some() && c.username.is_none() {
                    prop_assert_eq!(r311, Err(EncodeError::PasswordWithoutUsername));
                    return Ok(());
                }
                prop_assert_eq!(r311, Ok(()));
                c.properties = ConnectProperties::default();
                if let Some(will) = &mut c.will {
                    will.properties = WillProperties::default();
                }
                let expected = Packet::Connect(Box::new(c));
                prop_assert_eq!(decode(&mut buf, u32::MAX, V5), Ok(Some(expected)));
            }
            (Packet::ConnAck(c), Some(Packet::ConnAck(expected))) => {
                prop_assert_eq!(result, Ok(()));
                let Ok(Some(Packet::ConnAck(got))) = decode(&mut buf, u32::MAX, V311) else {
                    return Err(fail("CONNACK did not decode"));
                };
                prop_assert_eq!(got.session_present, expected.session_present);
                prop_assert_eq!(got.properties, expected.properties);
                if V311_CONNACK_CODES.contains(&c.reason_code.0) {
                    prop_assert_eq!(got.reason_code, c.reason_code);
                } else {
                    // No exact 3.1.1 equivalent: some refusal, never success.
                    prop_assert!(
                        V311_CONNACK_CODES[1..].contains(&got.reason_code.0),
                        "{:?} became {:?}", c.reason_code, got.reason_code
                    );
                }
            }
            (_, None) => {
                prop_assert!(result.is_err(), "{:?} is not representable in 3.1.1", p);
                prop_assert!(buf.is_empty(), "nothing is appended on error");
            }
            (_, Some(expected)) => {
                prop_assert_eq!(result, Ok(()));
                prop_assert_eq!(encoded_len(&p, V311), Ok(buf.len()));
                prop_assert_eq!(decode(&mut buf, u32::MAX, V311), Ok(Some(expected)));
                prop_assert!(buf.is_empty());
            }
        }
    }
}

// Robustness: cheap per case, so more of them.
proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn arbitrary_bytes_never_panic_and_whatever_decodes_reencodes_to_itself(
        bytes in vec(any::<u8>(), 0..512),
        max in prop_oneof![Just(u32::MAX), 0u32..600],
    ) {
        decode_all_and_reencode(&bytes, max, V311)?;
        decode_all_and_reencode(&bytes, max, V5)?;
    }

    #[test]
    fn damaged_encodings_never_panic_and_whatever_decodes_reencodes_to_itself(
        (v, packets) in versioned(|v| vec(packet(v), 1..3).boxed()),
        mutations in vec(mutation(), 1..4),
    ) {
        let mut bytes = Vec::new();
        for p in &packets {
            bytes.extend_from_slice(&encoded(p, v)?);
        }
        for m in &mutations {
            apply(m, &mut bytes);
        }
        decode_all_and_reencode(&bytes, u32::MAX, V311)?;
        decode_all_and_reencode(&bytes, u32::MAX, V5)?;
    }
}

/// Remaining Lengths on both sides of each Variable Byte Integer length boundary, and a
/// few bytes around them.
fn boundary_remaining_length() -> impl Strategy<Value = usize> {
    (
        select(vec![127usize, 16_383, 20_480, 2_097_151, 2_097_152]),
        -2isize..=2,
    )
        .prop_map(|(edge, delta)| edge.saturating_add_signed(delta))
}

proptest! {
    #![proptest_config(config(24))]

    #[test]
    fn large_publishes_cross_the_remaining_length_boundaries_intact(
        v in version(),
        remaining in boundary_remaining_length(),
        qos in qos(),
        seed in any::<u8>(),
        long_topic in any::<bool>(),
    ) {
        // Sometimes the longest topic a string can hold, where it fits in the target length.
        let topic = if long_topic && remaining > 70_000 { "t/".repeat(32_767) + "x" } else { "t".to_owned() };
        let mut p = Publish {
            dup: false,
            qos,
            retain: false,
            topic: TopicName::try_from(topic.as_str()).map_err(fail)?,
            packet_id: if qos == QoS::AtMostOnce { None } else { PacketId::new(7) },
            payload: Bytes::new(),
            properties: Default::default(),
        };
        let empty = encoded(&Packet::Publish(p.clone()), v)?;
        let overhead = empty.len() - fixed_header_len(&empty);
        p.payload = patterned(remaining - overhead, seed);
        let p = Packet::Publish(p);

        let mut buf = encoded(&p, v)?;
        prop_assert_eq!(buf.len(), 1 + var_int_len(remaining) + remaining);
        prop_assert_eq!(fixed_header_len(&buf), 1 + var_int_len(remaining));
        prop_assert_eq!(encoded_len(&p, v), Ok(buf.len()));
        let header = fixed_header_len(&buf);
        let mut partial = BytesMut::from(&buf[..header + 1]);
        prop_assert_eq!(decode(&mut partial, u32::MAX, v), Ok(None));
        prop_assert_eq!(decode(&mut buf, u32::MAX, v), Ok(Some(p)));
        prop_assert!(buf.is_empty());
    }
}

// ---------------------------------------------------------------------------------------
// Fixed examples: the documented 3.1.1 mappings, byte for byte
// ---------------------------------------------------------------------------------------

fn bytes_of(p: &Packet, v: ProtocolVersion) -> Result<Vec<u8>, EncodeError> {
    let mut buf = BytesMut::new();
    encode(p, v, &mut buf)?;
    Ok(buf.to_vec())
}

#[test]
fn connack_refusals_map_to_the_3_1_1_return_codes_and_back() {
    for (v5, v3) in [
        (0x00, 0),
        (0x84, 1),
        (0x85, 2),
        (0x88, 3),
        (0x86, 4),
        (0x87, 5),
    ] {
        let p = Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode(v5),
            properties: ConnAckProperties::default(),
        });
        assert_eq!(bytes_of(&p, V311).unwrap(), [0x20, 0x02, 0x00, v3]);
        let mut buf = BytesMut::from(&[0x20, 0x02, 0x00, v3][..]);
        assert_eq!(decode(&mut buf, u32::MAX, V311), Ok(Some(p)));
    }
}

#[test]
fn a_5_0_suback_failure_is_sent_to_a_3_1_1_peer_as_0x80() {
    let p = Packet::SubAck(SubAck {
        packet_id: PacketId::new(1).unwrap(),
        reason_codes: vec![ReasonCode::GRANTED_QOS_2, ReasonCode::QUOTA_EXCEEDED],
        properties: AckProperties::default(),
    });
    assert_eq!(
        bytes_of(&p, V311).unwrap(),
        [0x90, 0x04, 0x00, 0x01, 0x02, 0x80]
    );
}

#[test]
fn a_3_1_1_unsuback_and_disconnect_have_no_body() {
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: PacketId::new(0x1234).unwrap(),
        reason_codes: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
        properties: AckProperties::default(),
    });
    assert_eq!(bytes_of(&unsuback, V311).unwrap(), [0xB0, 0x02, 0x12, 0x34]);
    let disconnect = Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::SERVER_SHUTTING_DOWN,
        properties: DisconnectProperties::default(),
    });
    assert_eq!(bytes_of(&disconnect, V311).unwrap(), [0xE0, 0x00]);
}

#[test]
fn the_remaining_length_uses_the_fewest_bytes_at_each_boundary() {
    // Through the public constant, so the largest length is checked too.
    assert_eq!(codec::MAX_REMAINING_LENGTH, 268_435_455);
    for (remaining, header) in [
        (3usize, 2usize),
        (127, 2),
        (128, 3),
        (16_383, 3),
        (16_384, 4),
    ] {
        // A 3.1.1 QoS 0 PUBLISH to "t" has 3 bytes before its payload.
        let p = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: TopicName::try_from("t").unwrap(),
            packet_id: None,
            payload: Bytes::from(vec![0u8; remaining - 3]),
            properties: Default::default(),
        });
        let bytes = bytes_of(&p, V311).unwrap();
        assert_eq!(bytes.len(), header + remaining, "remaining {remaining}");
    }
}
