//! The MQTT control packets of 3.1.1 and 5.0 as one set of Rust types.
//!
//! Owns the packet vocabulary (names from the specification) and the value rules that
//! types can carry (non-zero packet ids, QoS levels, reason codes per packet). Fields that
//! only 5.0 has are `Option`s or property structs that 3.1.1 simply leaves empty. It must
//! not know about bytes on the wire (that is `codec`) or about sessions and IO.

use std::fmt;
use std::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;

use crate::mqtt::string::MqttString;
use crate::mqtt::topic::{TopicFilter, TopicName};

/// The protocol revision a connection speaks, from CONNECT's Protocol Level byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl ProtocolVersion {
    /// The Protocol Level byte of CONNECT.
    pub const fn level(self) -> u8 {
        match self {
            ProtocolVersion::V311 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// The version for a Protocol Level byte, if we speak it.
    pub const fn from_level(level: u8) -> Option<Self> {
        match level {
            4 => Some(ProtocolVersion::V311),
            5 => Some(ProtocolVersion::V5),
            _ => None,
        }
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProtocolVersion::V311 => "3.1.1",
            ProtocolVersion::V5 => "5.0",
        })
    }
}

/// Quality of service of a message or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    /// QoS 0: fire and forget.
    #[default]
    AtMostOnce = 0,
    /// QoS 1: acknowledged by PUBACK, may be duplicated.
    AtLeastOnce = 1,
    /// QoS 2: four-step PUBREC/PUBREL/PUBCOMP flow, delivered once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for its two-bit wire value; 3 is not a QoS.
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    /// The wire value (0, 1 or 2).
    pub const fn as_u8(self) -> u8 {
        self as u8
    }
}

/// A Packet Identifier. Zero is not a packet identifier ([MQTT-2.2.1-3]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    /// The smallest id, 1.
    pub const MIN: PacketId = PacketId(NonZeroU16::MIN);

    /// The id for `value`, or `None` for 0.
    pub const fn new(value: u16) -> Option<Self> {
        match NonZeroU16::new(value) {
            Some(v) => Some(PacketId(v)),
            None => None,
        }
    }

    /// The numeric value (1..=65535).
    pub const fn get(self) -> u16 {
        self.0.get()
    }
}

impl fmt::Display for PacketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A Subscription Identifier: 1 to 268,435,455 (a Variable Byte Integer that is not 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriptionId(NonZeroU32);

impl SubscriptionId {
    /// Largest value a Variable Byte Integer holds.
    pub const MAX: u32 = 268_435_455;

    /// The id for `value`, or `None` for 0 or a value above [`Self::MAX`].
    pub const fn new(value: u32) -> Option<Self> {
        if value > Self::MAX {
            return None;
        }
        match NonZeroU32::new(value) {
            Some(v) => Some(SubscriptionId(v)),
            None => None,
        }
    }

    /// The numeric value.
    pub const fn get(self) -> u32 {
        self.0.get()
    }
}

/// The fifteen control packet types (the high nibble of the first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    /// MQTT 5.0 only.
    Auth = 15,
}

impl PacketType {
    /// The type for the high nibble of a fixed header; 0 is reserved.
    pub const fn from_nibble(nibble: u8) -> Option<Self> {
        Some(match nibble {
            1 => PacketType::Connect,
            2 => PacketType::ConnAck,
            3 => PacketType::Publish,
            4 => PacketType::PubAck,
            5 => PacketType::PubRec,
            6 => PacketType::PubRel,
            7 => PacketType::PubComp,
            8 => PacketType::Subscribe,
            9 => PacketType::SubAck,
            10 => PacketType::Unsubscribe,
            11 => PacketType::UnsubAck,
            12 => PacketType::PingReq,
            13 => PacketType::PingResp,
            14 => PacketType::Disconnect,
            15 => PacketType::Auth,
            _ => return None,
        })
    }

    /// The specification's name, e.g. `"PUBREL"`.
    pub const fn name(self) -> &'static str {
        match self {
            PacketType::Connect => "CONNECT",
            PacketType::ConnAck => "CONNACK",
            PacketType::Publish => "PUBLISH",
            PacketType::PubAck => "PUBACK",
            PacketType::PubRec => "PUBREC",
            PacketType::PubRel => "PUBREL",
            PacketType::PubComp => "PUBCOMP",
            PacketType::Subscribe => "SUBSCRIBE",
            PacketType::SubAck => "SUBACK",
            PacketType::Unsubscribe => "UNSUBSCRIBE",
            PacketType::UnsubAck => "UNSUBACK",
            PacketType::PingReq => "PINGREQ",
            PacketType::PingResp => "PINGRESP",
            PacketType::Disconnect => "DISCONNECT",
            PacketType::Auth => "AUTH",
        }
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An MQTT 5.0 Reason Code (§2.4). MQTT 3.1.1's CONNACK return codes and SUBACK return
/// codes are carried as their 5.0 equivalents, so sessions handle one vocabulary; the codec
/// translates at the 3.1.1 wire.
///
/// Several codes share a value (0x00 is Success, Normal disconnection and Granted QoS 0);
/// which one is meant depends on the packet. [`ReasonCode::is_valid_for`] says which codes
/// each packet may carry.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ReasonCode(pub u8);

#[allow(missing_docs)]
impl ReasonCode {
    pub const SUCCESS: Self = Self(0x00);
    pub const NORMAL_DISCONNECTION: Self = Self(0x00);
    pub const GRANTED_QOS_0: Self = Self(0x00);
    pub const GRANTED_QOS_1: Self = Self(0x01);
    pub const GRANTED_QOS_2: Self = Self(0x02);
    pub const DISCONNECT_WITH_WILL_MESSAGE: Self = Self(0x04);
    pub const NO_MATCHING_SUBSCRIBERS: Self = Self(0x10);
    pub const NO_SUBSCRIPTION_EXISTED: Self = Self(0x11);
    pub const CONTINUE_AUTHENTICATION: Self = Self(0x18);
    pub const RE_AUTHENTICATE: Self = Self(0x19);
    pub const UNSPECIFIED_ERROR: Self = Self(0x80);
    pub const MALFORMED_PACKET: Self = Self(0x81);
    pub const PROTOCOL_ERROR: Self = Self(0x82);
    pub const IMPLEMENTATION_SPECIFIC_ERROR: Self = Self(0x83);
    pub const UNSUPPORTED_PROTOCOL_VERSION: Self = Self(0x84);
    pub const CLIENT_IDENTIFIER_NOT_VALID: Self = Self(0x85);
    pub const BAD_USER_NAME_OR_PASSWORD: Self = Self(0x86);
    pub const NOT_AUTHORIZED: Self = Self(0x87);
    pub const SERVER_UNAVAILABLE: Self = Self(0x88);
    pub const SERVER_BUSY: Self = Self(0x89);
    pub const BANNED: Self = Self(0x8A);
    pub const SERVER_SHUTTING_DOWN: Self = Self(0x8B);
    pub const BAD_AUTHENTICATION_METHOD: Self = Self(0x8C);
    pub const KEEP_ALIVE_TIMEOUT: Self = Self(0x8D);
    pub const SESSION_TAKEN_OVER: Self = Self(0x8E);
    pub const TOPIC_FILTER_INVALID: Self = Self(0x8F);
    pub const TOPIC_NAME_INVALID: Self = Self(0x90);
    pub const PACKET_IDENTIFIER_IN_USE: Self = Self(0x91);
    pub const PACKET_IDENTIFIER_NOT_FOUND: Self = Self(0x92);
    pub const RECEIVE_MAXIMUM_EXCEEDED: Self = Self(0x93);
    pub const TOPIC_ALIAS_INVALID: Self = Self(0x94);
    pub const PACKET_TOO_LARGE: Self = Self(0x95);
    pub const MESSAGE_RATE_TOO_HIGH: Self = Self(0x96);
    pub const QUOTA_EXCEEDED: Self = Self(0x97);
    pub const ADMINISTRATIVE_ACTION: Self = Self(0x98);
    pub const PAYLOAD_FORMAT_INVALID: Self = Self(0x99);
    pub const RETAIN_NOT_SUPPORTED: Self = Self(0x9A);
    pub const QOS_NOT_SUPPORTED: Self = Self(0x9B);
    pub const USE_ANOTHER_SERVER: Self = Self(0x9C);
    pub const SERVER_MOVED: Self = Self(0x9D);
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: Self = Self(0x9E);
    pub const CONNECTION_RATE_EXCEEDED: Self = Self(0x9F);
    pub const MAXIMUM_CONNECT_TIME: Self = Self(0xA0);
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: Self = Self(0xA1);
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: Self = Self(0xA2);
}

impl ReasonCode {
    /// True for codes below 0x80 (success, granted QoS, informational).
    pub const fn is_success(self) -> bool {
        self.0 < 0x80
    }

    /// May `packet` carry this code (MQTT 5.0 §2.4, table 2-6)?
    pub fn is_valid_for(self, packet: PacketType) -> bool {
        let allowed: &[u8] = match packet {
            PacketType::ConnAck => &[
                0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90,
                0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
            ],
            PacketType::PubAck | PacketType::PubRec => {
                &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]
            }
            PacketType::PubRel | PacketType::PubComp => &[0x00, 0x92],
            PacketType::SubAck => &[
                0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
            ],
            PacketType::UnsubAck => &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91],
            // §2.4's summary table also allows 0x8C (Bad authentication method) here, for a
            // failed re-authentication, though §3.14.2.1's table omits it: accept it.
            PacketType::Disconnect => &[
                0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8C, 0x8D, 0x8E, 0x8F, 0x90,
                0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0,
                0xA1, 0xA2,
            ],
            PacketType::Auth => &[0x00, 0x18, 0x19],
            _ => &[],
        };
        allowed.contains(&self.0)
    }

    /// The specification's name for the code in the context of `packet`.
    pub fn name_for(self, packet: PacketType) -> &'static str {
        match (self.0, packet) {
            (0x00, PacketType::Disconnect) => "Normal disconnection",
            (0x00, PacketType::SubAck) => "Granted QoS 0",
            (0x00, _) => "Success",
            (0x01, _) => "Granted QoS 1",
            (0x02, _) => "Granted QoS 2",
            (0x04, _) => "Disconnect with Will Message",
            (0x10, _) => "No matching subscribers",
            (0x11, _) => "No subscription existed",
            (0x18, _) => "Continue authentication",
            (0x19, _) => "Re-authenticate",
            (0x80, _) => "Unspecified error",
            (0x81, _) => "Malformed Packet",
            (0x82, _) => "Protocol Error",
            (0x83, _) => "Implementation specific error",
            (0x84, _) => "Unsupported Protocol Version",
            (0x85, _) => "Client Identifier not valid",
            (0x86, _) => "Bad User Name or Password",
            (0x87, _) => "Not authorized",
            (0x88, _) => "Server unavailable",
            (0x89, _) => "Server busy",
            (0x8A, _) => "Banned",
            (0x8B, _) => "Server shutting down",
            (0x8C, _) => "Bad authentication method",
            (0x8D, _) => "Keep Alive timeout",
            (0x8E, _) => "Session taken over",
            (0x8F, _) => "Topic Filter invalid",
            (0x90, _) => "Topic Name invalid",
            (0x91, _) => "Packet Identifier in use",
            (0x92, _) => "Packet Identifier not found",
            (0x93, _) => "Receive Maximum exceeded",
            (0x94, _) => "Topic Alias invalid",
            (0x95, _) => "Packet too large",
            (0x96, _) => "Message rate too high",
            (0x97, _) => "Quota exceeded",
            (0x98, _) => "Administrative action",
            (0x99, _) => "Payload format invalid",
            (0x9A, _) => "Retain not supported",
            (0x9B, _) => "QoS not supported",
            (0x9C, _) => "Use another server",
            (0x9D, _) => "Server moved",
            (0x9E, _) => "Shared Subscriptions not supported",
            (0x9F, _) => "Connection rate exceeded",
            (0xA0, _) => "Maximum connect time",
            (0xA1, _) => "Subscription Identifiers not supported",
            (0xA2, _) => "Wildcard Subscriptions not supported",
            _ => "unknown reason code",
        }
    }
}

impl fmt::Debug for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReasonCode({:#04x})", self.0)
    }
}

/// A User Property: a name/value pair that MQTT 5.0 passes through unchanged, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserProperty {
    pub name: MqttString,
    pub value: MqttString,
}

/// The Payload Format Indicator property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// 0: unspecified bytes.
    Unspecified = 0,
    /// 1: UTF-8 encoded character data.
    Utf8 = 1,
}

/// Every MQTT control packet, 3.1.1 and 5.0 alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubResponse),
    PubRec(PubResponse),
    PubRel(PubResponse),
    PubComp(PubResponse),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    /// MQTT 5.0 only: extended authentication exchange.
    Auth(Auth),
}

impl Packet {
    /// The control packet type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }
}

/// CONNECT: the first packet a client sends (§3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The version the client asks for; the codec writes the matching name and level.
    pub protocol: ProtocolVersion,
    /// Clean Start (5.0) / Clean Session (3.1.1).
    pub clean_start: bool,
    /// Keep Alive in seconds; 0 turns the mechanism off.
    pub keep_alive: u16,
    /// May be empty: the server then assigns one (5.0) or, with Clean Session, makes one up.
    pub client_id: MqttString,
    pub will: Option<Will>,
    pub username: Option<MqttString>,
    /// Binary data; 3.1.1 only allows it together with a user name ([MQTT-3.1.2-22]).
    pub password: Option<Bytes>,
    pub properties: ConnectProperties,
}

/// The Will Message a server publishes when the connection ends abnormally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: WillProperties,
}

/// CONNACK: the server's answer to CONNECT (§3.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    pub session_present: bool,
    /// In 3.1.1, the return code 0..=5 is carried as its 5.0 equivalent
    /// (1→0x84, 2→0x85, 3→0x88, 4→0x86, 5→0x87).
    pub reason_code: ReasonCode,
    pub properties: ConnAckProperties,
}

/// PUBLISH: an Application Message (§3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Set on a re-delivery of a QoS 1/2 message; must be clear for QoS 0 ([MQTT-3.3.1-2]).
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only when a 5.0 Topic Alias stands in for it (see [`TopicName::empty_for_alias`]).
    pub topic: TopicName,
    /// Present exactly when `qos` is 1 or 2 ([MQTT-2.2.1-2]).
    pub packet_id: Option<PacketId>,
    pub payload: Bytes,
    pub properties: PublishProperties,
}

/// The body shared by PUBACK, PUBREC, PUBREL and PUBCOMP (§3.4 to §3.7): they differ only
/// in their packet type and in which reason codes they may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResponse {
    pub packet_id: PacketId,
    /// Always Success in 3.1.1, which has no reason code here.
    pub reason_code: ReasonCode,
    pub properties: AckProperties,
}

impl PubResponse {
    /// A successful response with no properties.
    pub fn success(packet_id: PacketId) -> Self {
        PubResponse {
            packet_id,
            reason_code: ReasonCode::SUCCESS,
            properties: AckProperties::default(),
        }
    }
}

/// SUBSCRIBE (§3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: PacketId,
    /// At least one ([MQTT-3.8.3-2]).
    pub subscriptions: Vec<Subscription>,
    pub properties: SubscribeProperties,
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub filter: TopicFilter,
    pub options: SubscriptionOptions,
}

/// The Subscription Options byte (§3.8.3.1). 3.1.1 only has `qos`; the rest keep their
/// defaults there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS the subscriber accepts.
    pub qos: QoS,
    /// Do not send the subscriber its own publications (not allowed on shared subscriptions).
    pub no_local: bool,
    /// Keep the RETAIN flag as published instead of clearing it on forwarding.
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

/// When retained messages are sent for a new subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// 0: at subscribe time.
    #[default]
    SendAtSubscribe = 0,
    /// 1: at subscribe time, only if the subscription did not exist.
    SendAtSubscribeIfNew = 1,
    /// 2: never.
    DoNotSend = 2,
}

/// SUBACK (§3.9): one reason code per subscription, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: PacketId,
    /// 3.1.1's return codes 0, 1, 2 and 0x80 have the same values in 5.0.
    pub reason_codes: Vec<ReasonCode>,
    pub properties: AckProperties,
}

/// UNSUBSCRIBE (§3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: PacketId,
    /// At least one ([MQTT-3.10.3-2]).
    pub filters: Vec<TopicFilter>,
    pub properties: UnsubscribeProperties,
}

/// UNSUBACK (§3.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: PacketId,
    /// One per filter in 5.0; always empty in 3.1.1, which has no payload here.
    pub reason_codes: Vec<ReasonCode>,
    pub properties: AckProperties,
}

/// DISCONNECT (§3.14). In 3.1.1 it has no content: reason Normal disconnection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    pub reason_code: ReasonCode,
    pub properties: DisconnectProperties,
}

/// AUTH (§3.15, MQTT 5.0 only).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason_code: ReasonCode,
    pub properties: AuthProperties,
}

/// CONNECT properties (§3.1.2.11).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<NonZeroU16>,
    pub maximum_packet_size: Option<NonZeroU32>,
    pub topic_alias_maximum: Option<u16>,
    pub request_response_information: Option<bool>,
    pub request_problem_information: Option<bool>,
    pub authentication_method: Option<MqttString>,
    pub authentication_data: Option<Bytes>,
    pub user_properties: Vec<UserProperty>,
}

/// Will properties (§3.1.3.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WillProperties {
    pub will_delay_interval: Option<u32>,
    pub payload_format_indicator: Option<PayloadFormat>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<MqttString>,
    pub response_topic: Option<TopicName>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<UserProperty>,
}

/// CONNACK properties (§3.2.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAckProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<NonZeroU16>,
    /// Only 0 or 1 may be sent: a server that supports QoS 2 leaves this out.
    pub maximum_qos: Option<QoS>,
    pub retain_available: Option<bool>,
    pub maximum_packet_size: Option<NonZeroU32>,
    pub assigned_client_identifier: Option<MqttString>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<MqttString>,
    pub user_properties: Vec<UserProperty>,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifiers_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
    pub server_keep_alive: Option<u16>,
    pub response_information: Option<MqttString>,
    pub server_reference: Option<MqttString>,
    pub authentication_method: Option<MqttString>,
    pub authentication_data: Option<Bytes>,
}

/// PUBLISH properties (§3.3.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishProperties {
    pub payload_format_indicator: Option<PayloadFormat>,
    pub message_expiry_interval: Option<u32>,
    pub topic_alias: Option<NonZeroU16>,
    pub response_topic: Option<TopicName>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<UserProperty>,
    /// Server to client only: the identifiers of every matching subscription.
    pub subscription_identifiers: Vec<SubscriptionId>,
    pub content_type: Option<MqttString>,
}

/// The properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckProperties {
    pub reason_string: Option<MqttString>,
    pub user_properties: Vec<UserProperty>,
}

impl AckProperties {
    /// True when there is nothing to encode.
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

/// SUBSCRIBE properties (§3.8.2.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscribeProperties {
    pub subscription_identifier: Option<SubscriptionId>,
    pub user_properties: Vec<UserProperty>,
}

/// UNSUBSCRIBE properties (§3.10.2.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubscribeProperties {
    pub user_properties: Vec<UserProperty>,
}

/// DISCONNECT properties (§3.14.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DisconnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub reason_string: Option<MqttString>,
    pub user_properties: Vec<UserProperty>,
    pub server_reference: Option<MqttString>,
}

/// AUTH properties (§3.15.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthProperties {
    pub authentication_method: Option<MqttString>,
    pub authentication_data: Option<Bytes>,
    pub reason_string: Option<MqttString>,
    pub user_properties: Vec<UserProperty>,
}
