//! Writes a seed corpus for the `decode_packet` fuzz target: valid encodings of every
//! packet type, for 3.1.1 and 5.0, with and without properties, alone and back to back.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example write_seeds [-- DIR]`
//! (DIR defaults to `fuzz/corpus/decode_packet`). Each file is the target's control byte
//! followed by the packet bytes; see `fuzz_targets/decode_packet.rs` for the layout.

use std::num::{NonZeroU16, NonZeroU32};
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use fieldgate::mqtt::codec::encode;
use fieldgate::mqtt::packet::{
    AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, ConnectProperties,
    Disconnect, DisconnectProperties, Packet, PacketId, PayloadFormat, ProtocolVersion,
    PubResponse, Publish, PublishProperties, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    SubscribeProperties, Subscription, SubscriptionId, SubscriptionOptions, UnsubAck, Unsubscribe,
    UnsubscribeProperties, UserProperty, Will, WillProperties,
};
use fieldgate::mqtt::string::MqttString;
use fieldgate::mqtt::topic::{TopicFilter, TopicName};

use ProtocolVersion::{V5, V311};

fn s(v: &str) -> MqttString {
    MqttString::try_from(v).expect("valid string")
}

fn topic(v: &str) -> TopicName {
    TopicName::try_from(v).expect("valid topic")
}

fn filter(v: &str) -> TopicFilter {
    TopicFilter::try_from(v).expect("valid filter")
}

fn id(v: u16) -> PacketId {
    PacketId::new(v).expect("non-zero")
}

fn users() -> Vec<UserProperty> {
    vec![
        UserProperty {
            name: s("site"),
            value: s("Zürich-β"),
        },
        UserProperty {
            name: s("site"),
            value: s("日本"),
        },
    ]
}

fn nz16(v: u16) -> NonZeroU16 {
    NonZeroU16::new(v).expect("non-zero")
}

fn connect(v: ProtocolVersion, full: bool) -> Packet {
    let v5 = v == V5;
    Packet::Connect(Box::new(Connect {
        protocol: v,
        clean_start: !full,
        keep_alive: if full { 65_535 } else { 0 },
        client_id: if full {
            s("gw-01/pump")
        } else {
            MqttString::empty()
        },
        will: full.then(|| Will {
            topic: topic("fieldgate/gw-01/status"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: if v5 {
                WillProperties {
                    will_delay_interval: Some(30),
                    payload_format_indicator: Some(PayloadFormat::Utf8),
                    message_expiry_interval: Some(3600),
                    content_type: Some(s("text/plain")),
                    response_topic: Some(topic("reply/here")),
                    correlation_data: Some(Bytes::from_static(&[1, 2, 3])),
                    user_properties: users(),
                }
            } else {
                WillProperties::default()
            },
        }),
        username: full.then(|| s("operator")),
        password: full.then(|| Bytes::from_static(b"\x00secret\xff")),
        properties: if v5 && full {
            ConnectProperties {
                session_expiry_interval: Some(u32::MAX),
                receive_maximum: Some(nz16(20)),
                maximum_packet_size: NonZeroU32::new(1 << 20),
                topic_alias_maximum: Some(10),
                request_response_information: Some(true),
                request_problem_information: Some(false),
                authentication_method: Some(s("SCRAM-SHA-256")),
                authentication_data: Some(Bytes::from_static(b"n,,n=user")),
                user_properties: users(),
            }
        } else {
            ConnectProperties::default()
        },
    }))
}

fn connack(v: ProtocolVersion, code: u8) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present: code == 0,
        reason_code: ReasonCode(code),
        properties: if v == V5 {
            ConnAckProperties {
                session_expiry_interval: Some(0),
                receive_maximum: Some(nz16(100)),
                maximum_qos: Some(QoS::AtLeastOnce),
                retain_available: Some(true),
                maximum_packet_size: NonZeroU32::new(65_536),
                assigned_client_identifier: Some(s("auto-7f3a")),
                topic_alias_maximum: Some(5),
                reason_string: Some(s("welcome")),
                user_properties: users(),
                wildcard_subscription_available: Some(true),
                subscription_identifiers_available: Some(true),
                shared_subscription_available: Some(false),
                server_keep_alive: Some(120),
                response_information: Some(s("resp/")),
                server_reference: Some(s("other:1883")),
                authentication_method: Some(s("SCRAM-SHA-256")),
                authentication_data: Some(Bytes::from_static(b"r=abc")),
            }
        } else {
            ConnAckProperties::default()
        },
    })
}

fn publish(v: ProtocolVersion, qos: QoS, payload_len: usize, props: bool) -> Packet {
    let v5 = v == V5;
    Packet::Publish(Publish {
        dup: qos != QoS::AtMostOnce,
        qos,
        retain: qos == QoS::ExactlyOnce,
        topic: topic("fieldgate/gw-01/pump-3/temperature"),
        packet_id: (qos != QoS::AtMostOnce).then(|| id(0x1234)),
        payload: (0..payload_len)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>()
            .into(),
        properties: if v5 && props {
            PublishProperties {
                payload_format_indicator: Some(PayloadFormat::Unspecified),
                message_expiry_interval: Some(60),
                topic_alias: Some(nz16(3)),
                response_topic: Some(topic("reply/gw-01")),
                correlation_data: Some(Bytes::from_static(b"corr")),
                user_properties: users(),
                subscription_identifiers: [1, 127, 128, 16_384, SubscriptionId::MAX]
                    .into_iter()
                    .filter_map(SubscriptionId::new)
                    .collect(),
                content_type: Some(s("application/json")),
            }
        } else {
            PublishProperties::default()
        },
    })
}

fn alias_only_publish() -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: TopicName::empty_for_alias(),
        packet_id: None,
        payload: Bytes::from_static(b"21.5"),
        properties: PublishProperties {
            topic_alias: Some(nz16(3)),
            ..PublishProperties::default()
        },
    })
}

fn ack_props(v: ProtocolVersion) -> AckProperties {
    if v == V5 {
        AckProperties {
            reason_string: Some(s("because")),
            user_properties: users(),
        }
    } else {
        AckProperties::default()
    }
}

fn responses(v: ProtocolVersion) -> Vec<Packet> {
    let (code, rel_code) = if v == V5 { (0x10, 0x92) } else { (0, 0) };
    let r = |code: u8| PubResponse {
        packet_id: id(7),
        reason_code: ReasonCode(code),
        properties: ack_props(v),
    };
    vec![
        Packet::PubAck(PubResponse::success(id(1))),
        Packet::PubAck(r(code)),
        Packet::PubRec(r(code)),
        Packet::PubRel(r(rel_code)),
        Packet::PubComp(r(rel_code)),
        Packet::PubComp(PubResponse::success(id(u16::MAX))),
    ]
}

fn subscribe(v: ProtocolVersion) -> Packet {
    let v5 = v == V5;
    let options = |qos, no_local, rap, rh| {
        if v5 {
            SubscriptionOptions {
                qos,
                no_local,
                retain_as_published: rap,
                retain_handling: rh,
            }
        } else {
            SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            }
        }
    };
    Packet::Subscribe(Subscribe {
        packet_id: id(10),
        subscriptions: vec![
            Subscription {
                filter: filter("fieldgate/+/pump-3/#"),
                options: options(QoS::ExactlyOnce, true, true, RetainHandling::DoNotSend),
            },
            Subscription {
                filter: filter("$share/loggers/sensors/+"),
                options: options(
                    QoS::AtLeastOnce,
                    false,
                    false,
                    RetainHandling::SendAtSubscribeIfNew,
                ),
            },
            Subscription {
                filter: filter("#"),
                options: options(
                    QoS::AtMostOnce,
                    false,
                    false,
                    RetainHandling::SendAtSubscribe,
                ),
            },
        ],
        properties: if v5 {
            SubscribeProperties {
                subscription_identifier: SubscriptionId::new(16_384),
                user_properties: users(),
            }
        } else {
            SubscribeProperties::default()
        },
    })
}

fn suback(v: ProtocolVersion) -> Packet {
    let codes: &[u8] = if v == V5 {
        &[0, 1, 2, 0x80, 0x8F, 0x9E, 0xA2]
    } else {
        &[0, 1, 2, 0x80]
    };
    Packet::SubAck(SubAck {
        packet_id: id(10),
        reason_codes: codes.iter().map(|&c| ReasonCode(c)).collect(),
        properties: ack_props(v),
    })
}

fn unsubscribe(v: ProtocolVersion) -> Packet {
    Packet::Unsubscribe(Unsubscribe {
        packet_id: id(11),
        filters: vec![filter("a/b"), filter("$share/g/+/x"), filter("/")],
        properties: if v == V5 {
            UnsubscribeProperties {
                user_properties: users(),
            }
        } else {
            UnsubscribeProperties::default()
        },
    })
}

fn unsuback(v: ProtocolVersion) -> Packet {
    Packet::UnsubAck(UnsubAck {
        packet_id: id(11),
        reason_codes: if v == V5 {
            vec![ReasonCode(0), ReasonCode(0x11), ReasonCode(0x87)]
        } else {
            Vec::new()
        },
        properties: ack_props(v),
    })
}

fn disconnect_v5() -> Packet {
    Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::SERVER_SHUTTING_DOWN,
        properties: DisconnectProperties {
            session_expiry_interval: Some(0),
            reason_string: Some(s("maintenance")),
            user_properties: users(),
            server_reference: Some(s("backup:1883")),
        },
    })
}

fn auth_v5(code: u8, props: bool) -> Packet {
    Packet::Auth(Auth {
        reason_code: ReasonCode(code),
        properties: if props {
            AuthProperties {
                authentication_method: Some(s("SCRAM-SHA-256")),
                authentication_data: Some(Bytes::from_static(b"c=biws,r=abc")),
                reason_string: Some(s("continue")),
                user_properties: users(),
            }
        } else {
            AuthProperties::default()
        },
    })
}

/// Named seeds: (file name, version, packets sent back to back).
fn seeds() -> Vec<(String, ProtocolVersion, Vec<Packet>)> {
    let mut out = Vec::new();
    for v in [V311, V5] {
        let tag = if v == V5 { "v5" } else { "v311" };
        let mut add = |name: &str, packets: Vec<Packet>| {
            out.push((format!("{tag}-{name}"), v, packets));
        };
        add("connect-minimal", vec![connect(v, false)]);
        add("connect-full", vec![connect(v, true)]);
        add("connack-success", vec![connack(v, 0)]);
        add("connack-refused", vec![connack(v, 0x86)]);
        add("publish-qos0", vec![publish(v, QoS::AtMostOnce, 4, false)]);
        add(
            "publish-qos1-props",
            vec![publish(v, QoS::AtLeastOnce, 40, true)],
        );
        add(
            "publish-qos2-200",
            vec![publish(v, QoS::ExactlyOnce, 200, true)],
        );
        add(
            "publish-qos1-17k",
            vec![publish(v, QoS::AtLeastOnce, 17_000, false)],
        );
        for (i, r) in responses(v).into_iter().enumerate() {
            add(&format!("pub-response-{i}"), vec![r]);
        }
        add("subscribe", vec![subscribe(v)]);
        add("suback", vec![suback(v)]);
        add("unsubscribe", vec![unsubscribe(v)]);
        add("unsuback", vec![unsuback(v)]);
        add("pingreq", vec![Packet::PingReq]);
        add("pingresp", vec![Packet::PingResp]);
        add(
            "disconnect",
            vec![Packet::Disconnect(Disconnect::default())],
        );
        add(
            "session",
            vec![
                connect(v, true),
                connack(v, 0),
                subscribe(v),
                suback(v),
                publish(v, QoS::AtLeastOnce, 10, true),
                Packet::PubAck(PubResponse::success(id(0x1234))),
                Packet::PingReq,
                Packet::PingResp,
                unsubscribe(v),
                unsuback(v),
                Packet::Disconnect(Disconnect::default()),
            ],
        );
    }
    out.push((
        "v5-publish-alias-only".into(),
        V5,
        vec![alias_only_publish()],
    ));
    out.push(("v5-disconnect-props".into(), V5, vec![disconnect_v5()]));
    out.push(("v5-auth-empty".into(), V5, vec![auth_v5(0, false)]));
    out.push(("v5-auth-continue".into(), V5, vec![auth_v5(0x18, true)]));
    out
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus/decode_packet".to_owned()),
    );
    std::fs::create_dir_all(&dir).expect("create corpus directory");
    let seeds = seeds();
    for (i, (name, v, packets)) in seeds.iter().enumerate() {
        // Control byte: version in bit 0, no size limit, and a split point that varies
        // from seed to seed.
        let control = u8::from(*v == V5) | ((((i * 7) % 32) as u8) << 3);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[control]);
        for p in packets {
            encode(p, *v, &mut buf).expect("seed packet encodes");
        }
        std::fs::write(dir.join(format!("{name}.bin")), &buf).expect("write seed");
    }
    println!("wrote {} seeds to {}", seeds.len(), dir.display());
}
