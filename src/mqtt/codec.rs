//! The one MQTT codec, shared by our client and our broker, for 3.1.1 and 5.0.
//!
//! Owns the wire format: fixed header, Variable Byte Integers, strings, properties, and
//! every rule a receiver must check. `decode` never panics on any input and slices the
//! read buffer instead of copying; `encode` never writes a packet that `decode` would
//! reject. It must not know about sessions, sockets or time.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::mqtt::packet::{
    AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, ConnectProperties,
    Disconnect, DisconnectProperties, Packet, PacketId, PacketType, PayloadFormat, ProtocolVersion,
    PubResponse, Publish, PublishProperties, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    SubscribeProperties, Subscription, SubscriptionId, SubscriptionOptions, UnsubAck, Unsubscribe,
    UnsubscribeProperties, UserProperty, Will, WillProperties,
};
use crate::mqtt::string::{MqttString, StringError};
use crate::mqtt::topic::{TopicError, TopicFilter, TopicName};

/// Largest value of a Variable Byte Integer, hence of a Remaining Length.
pub const MAX_REMAINING_LENGTH: u32 = 268_435_455;

/// Why bytes received from a peer are not a valid packet. The connection that sent them
/// cannot continue: answer with [`DecodeError::reason_code`] (in CONNACK before a session
/// exists, in DISCONNECT after, or by closing the socket under 3.1.1) and close it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("[MQTT-2.1.2] packet type {0} is reserved")]
    ReservedPacketType(u8),
    #[error("[MQTT-2.1.2] AUTH does not exist in MQTT 3.1.1")]
    AuthInV311,
    #[error("[MQTT-2.1.3-1] {packet} fixed-header flags are {flags:#06b}, must be {expected:#06b}")]
    InvalidFlags {
        packet: PacketType,
        flags: u8,
        expected: u8,
    },
    #[error("[MQTT-1.5.5] Variable Byte Integer in {0} is longer than 4 bytes")]
    VarIntTooLong(&'static str),
    #[error("[MQTT-1.5.5-1] Variable Byte Integer in {0} does not use the minimum number of bytes")]
    VarIntNotMinimal(&'static str),
    #[error("[MQTT-3.1.2-24] packet of {size} bytes exceeds the maximum packet size of {max}")]
    PacketTooLarge { size: u64, max: u32 },
    #[error("[MQTT-2.1.4] {packet}: {field} runs past the Remaining Length")]
    Truncated {
        packet: PacketType,
        field: &'static str,
    },
    #[error("[MQTT-2.1.4] {packet}: {extra} bytes left over after the last field")]
    TrailingBytes { packet: PacketType, extra: usize },
    #[error("{source} (in {packet} {field})")]
    InvalidString {
        packet: PacketType,
        field: &'static str,
        source: StringError,
    },
    #[error("{source} (in {packet} {field})")]
    InvalidTopic {
        packet: PacketType,
        field: &'static str,
        source: TopicError,
    },
    #[error("[MQTT-3.1.2-1] protocol name {0:?} is not \"MQTT\"")]
    ProtocolName(String),
    #[error("[MQTT-3.1.2-2] protocol level {0} is not supported (4 = 3.1.1, 5 = 5.0)")]
    UnsupportedProtocolLevel(u8),
    #[error("[MQTT-3.1.2-3] CONNECT reserved flag (bit 0) is set")]
    ConnectReservedFlag,
    #[error("[{}] Will QoS set without the Will Flag", by_version(*.0, "MQTT-3.1.2-11", "MQTT-3.1.2-13"))]
    WillQoSWithoutWill(ProtocolVersion),
    #[error("[{}] Will Retain set without the Will Flag", by_version(*.0, "MQTT-3.1.2-13", "MQTT-3.1.2-15"))]
    WillRetainWithoutWill(ProtocolVersion),
    #[error("[{}] Will QoS 3 is not a QoS", by_version(*.0, "MQTT-3.1.2-12", "MQTT-3.1.2-14"))]
    InvalidWillQoS(ProtocolVersion),
    #[error("[MQTT-3.1.2.11.10] CONNECT has Authentication Data but no Authentication Method")]
    AuthDataWithoutMethod,
    #[error("[MQTT-3.1.2-22] (MQTT 3.1.1) Password Flag set without the User Name Flag")]
    PasswordWithoutUsername,
    #[error("[MQTT-3.2.2-1] CONNACK acknowledge flags {0:#010b}: bits 7-1 are reserved")]
    ConnAckReservedFlags(u8),
    #[error("[MQTT-3.3.1-4] PUBLISH QoS 3 is not a QoS")]
    InvalidQoS,
    #[error("[MQTT-3.3.1-2] DUP set on a QoS 0 PUBLISH")]
    DupOnQoS0,
    #[error("[MQTT-2.2.1-3] {0}: Packet Identifier 0")]
    ZeroPacketId(PacketType),
    #[error("[MQTT-3.3.2-1] PUBLISH has an empty Topic Name and no Topic Alias")]
    EmptyTopicWithoutAlias,
    #[error("[MQTT-2.2.2] {packet}: property {id:#04x} is not defined for this packet")]
    PropertyNotAllowed { packet: PacketType, id: u8 },
    #[error("[MQTT-2.2.2] {packet}: property {id:#04x} appears more than once")]
    DuplicateProperty { packet: PacketType, id: u8 },
    #[error("[MQTT-2.2.2] {packet}: property {id:#04x} has invalid value {value}")]
    InvalidPropertyValue {
        packet: PacketType,
        id: u8,
        value: u32,
    },
    #[error("[MQTT-3.3.2-8] Topic Alias 0 is not allowed")]
    ZeroTopicAlias,
    #[error("[{}] {packet}: reason code {code:#04x} is not allowed in this packet", reason_code_rule(.packet))]
    InvalidReasonCode { packet: PacketType, code: u8 },
    #[error("[MQTT-3.8.3-2] SUBSCRIBE carries no topic filter")]
    NoSubscriptions,
    #[error("[MQTT-3.10.3-2] UNSUBSCRIBE carries no topic filter")]
    NoUnsubscribeFilters,
    #[error("[MQTT-3.8.3-5] SUBSCRIBE options {0:#010b}: reserved bits are set")]
    SubscriptionOptionsReserved(u8),
    #[error("[MQTT-3.8.3.1] SUBSCRIBE Maximum QoS 3 is not a QoS")]
    InvalidSubscriptionQoS,
    #[error("[MQTT-3.15.2.2.2] AUTH carries no Authentication Method")]
    AuthWithoutMethod,
    #[error("[MQTT-3.8.3.1] SUBSCRIBE Retain Handling 3 is reserved")]
    InvalidRetainHandling,
    #[error("[MQTT-3.8.3-4] No Local set on a shared subscription")]
    NoLocalOnSharedSubscription,
}

impl DecodeError {
    /// The reason code to send to the peer (CONNACK before the session exists, DISCONNECT
    /// after); 3.1.1 peers just get the connection closed, or the mapped CONNACK code.
    ///
    /// Every code returned here is one that both CONNACK and DISCONNECT may carry.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            ProtocolName(_) | UnsupportedProtocolLevel(_) => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            // Topic Alias invalid is a DISCONNECT code only, but a Topic Alias can only
            // appear in PUBLISH, after CONNACK.
            ZeroTopicAlias => ReasonCode::TOPIC_ALIAS_INVALID,
            // What the 5.0 text calls "a Protocol Error" rather than "a Malformed Packet".
            DuplicateProperty { .. }
            | InvalidPropertyValue { .. }
            | EmptyTopicWithoutAlias
            | InvalidRetainHandling
            | InvalidSubscriptionQoS
            | NoLocalOnSharedSubscription
            | NoSubscriptions
            | NoUnsubscribeFilters
            | AuthWithoutMethod
            | AuthDataWithoutMethod => ReasonCode::PROTOCOL_ERROR,
            // A topic that breaks the format rules is malformed; 0x90 and 0x8F are for
            // well-formed topics a server will not accept (e.g. by its ACL).
            _ => ReasonCode::MALFORMED_PACKET,
        }
    }
}

/// Picks the rule id of the version at hand where the two texts number a rule differently.
fn by_version(protocol: ProtocolVersion, v5: &'static str, v311: &'static str) -> &'static str {
    match protocol {
        ProtocolVersion::V5 => v5,
        ProtocolVersion::V311 => v311,
    }
}

/// The numbered rule that limits each packet's reason codes.
fn reason_code_rule(packet: &PacketType) -> &'static str {
    match packet {
        PacketType::ConnAck => "MQTT-3.2.2-8",
        PacketType::PubAck => "MQTT-3.4.2-1",
        PacketType::PubRec => "MQTT-3.5.2-1",
        PacketType::PubRel => "MQTT-3.6.2-1",
        PacketType::PubComp => "MQTT-3.7.2-1",
        PacketType::SubAck => "MQTT-3.9.3-2",
        PacketType::UnsubAck => "MQTT-3.11.3-2",
        PacketType::Disconnect => "MQTT-3.14.2-1",
        PacketType::Auth => "MQTT-3.15.2-1",
        _ => "MQTT-2.4",
    }
}

/// Why a packet cannot be encoded. These are caller bugs or limits to respect
/// (e.g. check [`encoded_len`] against the peer's Maximum Packet Size first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("packet of {0} bytes is larger than MQTT allows (remaining length > 268435455)")]
    TooLarge(u64),
    #[error("{packet}: {field} of {len} bytes is longer than 65535")]
    BinaryTooLong {
        packet: PacketType,
        field: &'static str,
        len: usize,
    },
    #[error("AUTH does not exist in MQTT 3.1.1")]
    AuthInV311,
    #[error("CONNECT is for MQTT {connect} but the connection encodes {encode}")]
    ProtocolMismatch {
        connect: ProtocolVersion,
        encode: ProtocolVersion,
    },
    #[error("MQTT 3.1.1 cannot send a password without a user name")]
    PasswordWithoutUsername,
    #[error("PUBLISH: QoS {qos} needs a packet identifier exactly when QoS > 0")]
    PacketIdMismatch { qos: u8 },
    #[error("PUBLISH: DUP must be clear for QoS 0")]
    DupOnQoS0,
    #[error("PUBLISH: an empty topic needs a Topic Alias (and MQTT 5.0)")]
    EmptyTopicWithoutAlias,
    #[error("{0}: at least one topic filter is needed")]
    NoTopicFilters(PacketType),
    #[error("SUBSCRIBE: No Local is not allowed on shared subscription {0}")]
    NoLocalOnSharedSubscription(String),
    #[error("{packet}: reason code {code:#04x} is not allowed in this packet")]
    InvalidReasonCode { packet: PacketType, code: u8 },
    #[error("CONNACK: Maximum QoS property can only be 0 or 1")]
    InvalidMaximumQoS,
    #[error("AUTH: anything but the empty Success form needs an Authentication Method")]
    AuthWithoutMethod,
    #[error("CONNECT: Authentication Data needs an Authentication Method")]
    AuthDataWithoutMethod,
}

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole packet (nothing is consumed),
/// and `Ok(Some(packet))` after removing the packet's bytes from `buf`. Strings, topics
/// and payloads in the packet share `buf`'s memory. A packet whose total size would exceed
/// `max_packet_size` is refused as soon as its fixed header is complete, so a peer cannot
/// make us buffer it. `protocol` is the connection's version; it is ignored for CONNECT,
/// which carries its own.
///
/// Inlined so that a caller's read loop builds each PUBLISH in place; every other packet
/// goes through `decode_other`, which is not.
///
/// ```
/// use bytes::BytesMut;
/// use fieldgate::mqtt::codec::decode;
/// use fieldgate::mqtt::packet::{Packet, ProtocolVersion};
///
/// // A PINGREQ, then the first byte of a PINGRESP.
/// let mut buf = BytesMut::from(&[0xC0, 0x00, 0xD0][..]);
/// assert_eq!(decode(&mut buf, 1024, ProtocolVersion::V5)?, Some(Packet::PingReq));
/// assert_eq!(decode(&mut buf, 1024, ProtocolVersion::V5)?, None);
/// buf.extend_from_slice(&[0x00]);
/// assert_eq!(decode(&mut buf, 1024, ProtocolVersion::V5)?, Some(Packet::PingResp));
/// # Ok::<(), fieldgate::mqtt::codec::DecodeError>(())
/// ```
#[inline]
pub fn decode(
    buf: &mut BytesMut,
    max_packet_size: u32,
    protocol: ProtocolVersion,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet = fixed_header_type(first, protocol)?;
    let Some((remaining, header_len)) = remaining_length(&buf[1..])? else {
        return Ok(None);
    };
    let size = header_len as u64 + 1 + u64::from(remaining);
    if size > u64::from(max_packet_size) {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    // `size` fits in usize: it is at most 268,435,460.
    let size = size as usize;
    if buf.len() < size {
        // No reservation here: the peer's claimed size is not yet proof of anything, and
        // the caller's read loop grows the buffer as bytes arrive.
        return Ok(None);
    }
    // Skip the fixed header in place (no reference count touched), then take the body.
    buf.advance(1 + header_len);
    let body = buf.split_to(remaining as usize).freeze();
    let mut r = Reader { buf: body, packet };
    let flags = first & 0x0F;
    if packet == PacketType::Publish {
        // The hot path, kept apart so the PUBLISH is built straight in the caller's return
        // slot instead of being copied (256 bytes) through the match and `?` below. The
        // payload takes the rest of the body, so there is nothing left to `finish`.
        return read_publish(&mut r, flags, protocol);
    }
    decode_other(&mut r, packet, flags, protocol)
}

/// Every packet but PUBLISH, kept out of line (see [`decode`]). PUBLISH is handled here
/// too, so this function is total on its own, though `decode` never sends it here.
#[inline(never)]
fn decode_other(
    r: &mut Reader,
    packet: PacketType,
    flags: u8,
    protocol: ProtocolVersion,
) -> Result<Option<Packet>, DecodeError> {
    let decoded = match packet {
        PacketType::Connect => Packet::Connect(Box::new(read_connect(r)?)),
        PacketType::ConnAck => Packet::ConnAck(read_connack(r, protocol)?),
        PacketType::Publish => return read_publish(r, flags, protocol),
        PacketType::PubAck => Packet::PubAck(read_pub_response(r, protocol)?),
        PacketType::PubRec => Packet::PubRec(read_pub_response(r, protocol)?),
        PacketType::PubRel => Packet::PubRel(read_pub_response(r, protocol)?),
        PacketType::PubComp => Packet::PubComp(read_pub_response(r, protocol)?),
        PacketType::Subscribe => Packet::Subscribe(read_subscribe(r, protocol)?),
        PacketType::SubAck => Packet::SubAck(read_suback(r, protocol)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(read_unsubscribe(r, protocol)?),
        PacketType::UnsubAck => Packet::UnsubAck(read_unsuback(r, protocol)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => Packet::Disconnect(read_disconnect(r, protocol)?),
        PacketType::Auth => Packet::Auth(read_auth(r)?),
    };
    r.finish()?;
    Ok(Some(decoded))
}

/// Checks the first byte: a known type with the flags the spec fixes for it.
fn fixed_header_type(first: u8, protocol: ProtocolVersion) -> Result<PacketType, DecodeError> {
    let nibble = first >> 4;
    let packet = PacketType::from_nibble(nibble).ok_or(DecodeError::ReservedPacketType(nibble))?;
    if packet == PacketType::Auth && protocol == ProtocolVersion::V311 {
        return Err(DecodeError::AuthInV311);
    }
    let flags = first & 0x0F;
    let expected = match packet {
        // PUBLISH flags are DUP, QoS and RETAIN; they are checked with the packet.
        PacketType::Publish => return Ok(packet),
        PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
        _ => 0,
    };
    if flags != expected {
        return Err(DecodeError::InvalidFlags {
            packet,
            flags,
            expected,
        });
    }
    Ok(packet)
}

/// Reads the Remaining Length that follows the first byte: `Ok(None)` if incomplete,
/// else the value and how many bytes encoded it.
fn remaining_length(bytes: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    match read_var_int(bytes, "Remaining Length")? {
        VarInt::Complete(value, len) => Ok(Some((value, len))),
        VarInt::Incomplete => Ok(None),
    }
}

enum VarInt {
    Complete(u32, usize),
    Incomplete,
}

/// Decodes a Variable Byte Integer (§1.5.5), rejecting more than four bytes and encodings
/// that are longer than needed.
fn read_var_int(bytes: &[u8], field: &'static str) -> Result<VarInt, DecodeError> {
    let mut value: u32 = 0;
    for (i, &byte) in bytes.iter().enumerate().take(4) {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            let len = i + 1;
            if len > 1 && byte == 0 {
                // A final byte of 0 after a continuation adds nothing: not minimal.
                return Err(DecodeError::VarIntNotMinimal(field));
            }
            return Ok(VarInt::Complete(value, len));
        }
    }
    if bytes.len() >= 4 {
        return Err(DecodeError::VarIntTooLong(field));
    }
    Ok(VarInt::Incomplete)
}

/// A cursor over one packet's body (everything after the fixed header).
struct Reader {
    buf: Bytes,
    packet: PacketType,
}

impl Reader {
    #[inline]
    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            return Err(DecodeError::Truncated {
                packet: self.packet,
                field,
            });
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    #[inline]
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.buf.get_u8())
    }

    #[inline]
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.buf.get_u32())
    }

    fn var_int(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        match read_var_int(&self.buf, field)? {
            VarInt::Complete(value, len) => {
                self.buf.advance(len);
                Ok(value)
            }
            VarInt::Incomplete => Err(DecodeError::Truncated {
                packet: self.packet,
                field,
            }),
        }
    }

    #[inline]
    fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        self.need(n, field)?;
        Ok(self.buf.split_to(n))
    }

    /// Binary Data: a two-byte length and that many bytes.
    #[inline]
    fn binary(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u16(field)?;
        self.bytes(usize::from(len), field)
    }

    /// A UTF-8 Encoded String, checked against the MQTT string rules.
    fn string(&mut self, field: &'static str) -> Result<MqttString, DecodeError> {
        let bytes = self.binary(field)?;
        MqttString::from_bytes(bytes).map_err(|source| DecodeError::InvalidString {
            packet: self.packet,
            field,
            source,
        })
    }

    fn topic_name(&mut self, field: &'static str) -> Result<TopicName, DecodeError> {
        let bytes = self.binary(field)?;
        TopicName::from_bytes(bytes).map_err(|source| self.topic_error(field, source))
    }

    fn topic_filter(&mut self, field: &'static str) -> Result<TopicFilter, DecodeError> {
        let s = self.string(field)?;
        TopicFilter::new(s).map_err(|source| self.topic_error(field, source))
    }

    fn topic_error(&self, field: &'static str, source: TopicError) -> DecodeError {
        DecodeError::InvalidTopic {
            packet: self.packet,
            field,
            source,
        }
    }

    #[inline]
    fn packet_id(&mut self) -> Result<PacketId, DecodeError> {
        let id = self.u16("Packet Identifier")?;
        PacketId::new(id).ok_or(DecodeError::ZeroPacketId(self.packet))
    }

    fn reason_code(&mut self) -> Result<ReasonCode, DecodeError> {
        let code = ReasonCode(self.u8("Reason Code")?);
        check_reason_code(code, self.packet)
    }

    /// Reads a Property Length and hands each property to `target`.
    fn properties(&mut self, target: &mut impl PropertySet) -> Result<(), DecodeError> {
        let len = self.var_int("Property Length")? as usize;
        self.need(len, "Properties")?;
        let mut props = Reader {
            buf: self.buf.split_to(len),
            packet: self.packet,
        };
        while !props.is_empty() {
            // Identifiers are Variable Byte Integers, but every defined one fits in a byte:
            // a multi-byte identifier is simply an unknown one.
            let id = props.var_int("Property Identifier")?;
            let id = u8::try_from(id).map_err(|_| DecodeError::PropertyNotAllowed {
                packet: self.packet,
                id: 0xFF,
            })?;
            target.read(id, &mut props)?;
        }
        Ok(())
    }

    /// Fails unless the whole body was used.
    fn finish(&self) -> Result<(), DecodeError> {
        if !self.buf.is_empty() {
            return Err(DecodeError::TrailingBytes {
                packet: self.packet,
                extra: self.buf.len(),
            });
        }
        Ok(())
    }
}

fn check_reason_code(code: ReasonCode, packet: PacketType) -> Result<ReasonCode, DecodeError> {
    if !code.is_valid_for(packet) {
        return Err(DecodeError::InvalidReasonCode {
            packet,
            code: code.0,
        });
    }
    Ok(code)
}

fn read_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary("Protocol Name")?;
    if name.as_ref() != b"MQTT" {
        return Err(DecodeError::ProtocolName(
            String::from_utf8_lossy(&name).into_owned(),
        ));
    }
    let level = r.u8("Protocol Level")?;
    let protocol =
        ProtocolVersion::from_level(level).ok_or(DecodeError::UnsupportedProtocolLevel(level))?;
    let flags = r.u8("Connect Flags")?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && will_qos != 0 {
        return Err(DecodeError::WillQoSWithoutWill(protocol));
    }
    if !will_flag && will_retain {
        return Err(DecodeError::WillRetainWithoutWill(protocol));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidWillQoS(protocol))?;
    if protocol == ProtocolVersion::V311 && password_flag && !username_flag {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16("Keep Alive")?;
    let mut properties = ConnectProperties::default();
    if protocol == ProtocolVersion::V5 {
        r.properties(&mut properties)?;
        if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
            return Err(DecodeError::AuthDataWithoutMethod);
        }
    }
    let client_id = r.string("Client Identifier")?;
    let will = if will_flag {
        let mut will_properties = WillProperties::default();
        if protocol == ProtocolVersion::V5 {
            r.properties(&mut will_properties)?;
        }
        Some(Will {
            topic: r.topic_name("Will Topic")?,
            payload: r.binary("Will Payload")?,
            qos: will_qos,
            retain: will_retain,
            properties: will_properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string("User Name")?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary("Password")?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// 3.1.1 CONNACK return codes 1..=5 and their 5.0 reason codes.
const V311_CONNACK_CODES: [(u8, ReasonCode); 5] = [
    (1, ReasonCode::UNSUPPORTED_PROTOCOL_VERSION),
    (2, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
    (3, ReasonCode::SERVER_UNAVAILABLE),
    (4, ReasonCode::BAD_USER_NAME_OR_PASSWORD),
    (5, ReasonCode::NOT_AUTHORIZED),
];

fn read_connack(r: &mut Reader, protocol: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("Connect Acknowledge Flags")?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::ConnAckReservedFlags(flags));
    }
    let code = r.u8("Connect Reason Code")?;
    let reason_code = match protocol {
        ProtocolVersion::V5 => check_reason_code(ReasonCode(code), PacketType::ConnAck)?,
        ProtocolVersion::V311 if code == 0 => ReasonCode::SUCCESS,
        ProtocolVersion::V311 => V311_CONNACK_CODES
            .iter()
            .find(|(v3, _)| *v3 == code)
            .map(|(_, v5)| *v5)
            .ok_or(DecodeError::InvalidReasonCode {
                packet: PacketType::ConnAck,
                code,
            })?,
    };
    let mut properties = ConnAckProperties::default();
    if protocol == ProtocolVersion::V5 {
        r.properties(&mut properties)?;
    }
    Ok(ConnAck {
        session_present: flags & 0x01 != 0,
        reason_code,
        properties,
    })
}

/// Returns the whole `decode` result so that `decode` can tail-call it (see there).
#[inline(always)]
fn read_publish(
    r: &mut Reader,
    flags: u8,
    protocol: ProtocolVersion,
) -> Result<Option<Packet>, DecodeError> {
    let dup = flags & 0x08 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::InvalidQoS)?;
    let retain = flags & 0x01 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::DupOnQoS0);
    }
    // An empty Topic Name is only valid with a Topic Alias, which is known only after the
    // properties: keep the raw bytes until then.
    let topic = r.binary("Topic Name")?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce | QoS::ExactlyOnce => Some(r.packet_id()?),
    };
    let mut properties = PublishProperties::default();
    if protocol == ProtocolVersion::V5 {
        r.properties(&mut properties)?;
    }
    // 3.1.1 has no Topic Alias: its empty topic fails in `TopicName::from_bytes` below.
    let topic = if topic.is_empty() && protocol == ProtocolVersion::V5 {
        if properties.topic_alias.is_none() {
            return Err(DecodeError::EmptyTopicWithoutAlias);
        }
        TopicName::empty_for_alias()
    } else {
        TopicName::from_bytes(topic).map_err(|source| r.topic_error("Topic Name", source))?
    };
    let payload = r.buf.split_off(0);
    Ok(Some(Packet::Publish(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        payload,
        properties,
    })))
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. In 5.0 the reason code and properties may be left
/// out (Success, none).
fn read_pub_response(
    r: &mut Reader,
    protocol: ProtocolVersion,
) -> Result<PubResponse, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut response = PubResponse::success(packet_id);
    if protocol == ProtocolVersion::V5 && !r.is_empty() {
        response.reason_code = r.reason_code()?;
        if !r.is_empty() {
            r.properties(&mut response.properties)?;
        }
    }
    Ok(response)
}

fn read_subscribe(r: &mut Reader, protocol: ProtocolVersion) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut properties = SubscribeProperties::default();
    if protocol == ProtocolVersion::V5 {
        r.properties(&mut properties)?;
    }
    let mut subscriptions = Vec::new();
    while !r.is_empty() {
        let filter = r.topic_filter("Topic Filter")?;
        let options = read_subscription_options(r.u8("Subscription Options")?, protocol)?;
        if options.no_local && filter.is_shared() {
            return Err(DecodeError::NoLocalOnSharedSubscription);
        }
        subscriptions.push(Subscription { filter, options });
    }
    if subscriptions.is_empty() {
        return Err(DecodeError::NoSubscriptions);
    }
    Ok(Subscribe {
        packet_id,
        subscriptions,
        properties,
    })
}

fn read_subscription_options(
    byte: u8,
    protocol: ProtocolVersion,
) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = match protocol {
        ProtocolVersion::V311 => 0xFC,
        ProtocolVersion::V5 => 0xC0,
    };
    if byte & reserved != 0 {
        return Err(DecodeError::SubscriptionOptionsReserved(byte));
    }
    let qos = QoS::from_u8(byte & 0x03).ok_or(DecodeError::InvalidSubscriptionQoS)?;
    let retain_handling = match (byte >> 4) & 0x03 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendAtSubscribeIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::InvalidRetainHandling),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0x04 != 0,
        retain_as_published: byte & 0x08 != 0,
        retain_handling,
    })
}

fn read_suback(r: &mut Reader, protocol: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut properties = AckProperties::default();
    if protocol == ProtocolVersion::V5 {
        r.properties(&mut properties)?;
    }
    let mut reason_codes = Vec::with_capacity(r.buf.len());
    while !r.is_empty() {
        let code = r.reason_code()?;
        // 3.1.1 only knows the granted QoS values and 0x80.
        if protocol == ProtocolVersion::V311 && !matches!(code.0, 0x00..=0x02 | 0x80) {
            return Err(DecodeError::InvalidReasonCode {
                packet: PacketType::SubAck,
                code: code.0,
            });
        }
        reason_codes.push(code);
    }
    Ok(SubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

fn read_unsubscribe(r: &mut Reader, protocol: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut properties = UnsubscribeProperties::default();
    if protocol == ProtocolVersion::V5 {
        r.properties(&mut properties)?;
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.topic_filter("Topic Filter")?);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoUnsubscribeFilters);
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn read_unsuback(r: &mut Reader, protocol: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut properties = AckProperties::default();
    let mut reason_codes = Vec::new();
    if protocol == ProtocolVersion::V5 {
        r.properties(&mut properties)?;
        while !r.is_empty() {
            reason_codes.push(r.reason_code()?);
        }
    }
    Ok(UnsubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

fn read_disconnect(r: &mut Reader, protocol: ProtocolVersion) -> Result<Disconnect, DecodeError> {
    let mut disconnect = Disconnect::default();
    if protocol == ProtocolVersion::V5 && !r.is_empty() {
        disconnect.reason_code = r.reason_code()?;
        if !r.is_empty() {
            r.properties(&mut disconnect.properties)?;
        }
    }
    Ok(disconnect)
}

fn read_auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    let mut auth = Auth::default();
    if !r.is_empty() {
        auth.reason_code = r.reason_code()?;
        if !r.is_empty() {
            r.properties(&mut auth.properties)?;
        }
    }
    // Only a bare Success (however it was written) may leave the method out.
    if auth != Auth::default() && auth.properties.authentication_method.is_none() {
        return Err(DecodeError::AuthWithoutMethod);
    }
    Ok(auth)
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

/// Property identifiers (MQTT 5.0 §2.2.2.2).
mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// A packet's property struct as seen by the codec: how to take in one property from the
/// wire, and how to write all of them. Properties are written in field order.
trait PropertySet {
    /// Reads the value of property `id` from `r` into its field, refusing properties the
    /// packet does not define and duplicates of those that may appear once.
    fn read(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError>;
    /// Writes every present property.
    fn write<S: Sink>(&self, s: &mut S);
}

fn not_allowed(id: u8, r: &Reader) -> DecodeError {
    DecodeError::PropertyNotAllowed {
        packet: r.packet,
        id,
    }
}

fn invalid_value(id: u8, value: u32, r: &Reader) -> DecodeError {
    DecodeError::InvalidPropertyValue {
        packet: r.packet,
        id,
        value,
    }
}

impl Reader {
    /// Reads a property that may appear only once with `read` and stores it in `slot`;
    /// a second occurrence is a Protocol Error.
    fn once<T>(
        &mut self,
        slot: &mut Option<T>,
        pid: u8,
        read: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<(), DecodeError> {
        if slot.is_some() {
            return Err(DecodeError::DuplicateProperty {
                packet: self.packet,
                id: pid,
            });
        }
        *slot = Some(read(self)?);
        Ok(())
    }

    /// A User Property, which may repeat: kept in order.
    fn user_property_into(&mut self, list: &mut Vec<UserProperty>) -> Result<(), DecodeError> {
        list.push(self.user_property()?);
        Ok(())
    }

    /// Maximum QoS: 0 or 1 (a server that supports QoS 2 leaves it out).
    fn prop_maximum_qos(&mut self, pid: u8) -> Result<QoS, DecodeError> {
        match self.u8("Maximum QoS")? {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            other => Err(invalid_value(pid, u32::from(other), self)),
        }
    }

    fn prop_topic_alias(&mut self) -> Result<NonZeroU16, DecodeError> {
        let v = self.u16("Topic Alias")?;
        NonZeroU16::new(v).ok_or(DecodeError::ZeroTopicAlias)
    }

    /// A Byte property that is a boolean: only 0 and 1 are valid.
    fn prop_bool(&mut self, id: u8) -> Result<bool, DecodeError> {
        match self.u8("property value")? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(invalid_value(id, u32::from(v), self)),
        }
    }

    fn prop_non_zero_u16(&mut self, id: u8) -> Result<NonZeroU16, DecodeError> {
        let v = self.u16("property value")?;
        NonZeroU16::new(v).ok_or_else(|| invalid_value(id, 0, self))
    }

    fn prop_non_zero_u32(&mut self, id: u8) -> Result<NonZeroU32, DecodeError> {
        let v = self.u32("property value")?;
        NonZeroU32::new(v).ok_or_else(|| invalid_value(id, 0, self))
    }

    fn prop_payload_format(&mut self, id: u8) -> Result<PayloadFormat, DecodeError> {
        match self.u8("property value")? {
            0 => Ok(PayloadFormat::Unspecified),
            1 => Ok(PayloadFormat::Utf8),
            v => Err(invalid_value(id, u32::from(v), self)),
        }
    }

    fn prop_subscription_id(&mut self, id: u8) -> Result<SubscriptionId, DecodeError> {
        let v = self.var_int("Subscription Identifier")?;
        SubscriptionId::new(v).ok_or_else(|| invalid_value(id, v, self))
    }

    fn user_property(&mut self) -> Result<UserProperty, DecodeError> {
        Ok(UserProperty {
            name: self.string("User Property name")?,
            value: self.string("User Property value")?,
        })
    }
}

impl PropertySet for ConnectProperties {
    fn read(&mut self, pid: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match pid {
            id::SESSION_EXPIRY_INTERVAL => r.once(&mut self.session_expiry_interval, pid, |r| {
                r.u32("Session Expiry Interval")
            }),
            id::RECEIVE_MAXIMUM => {
                r.once(&mut self.receive_maximum, pid, |r| r.prop_non_zero_u16(pid))
            }
            id::MAXIMUM_PACKET_SIZE => r.once(&mut self.maximum_packet_size, pid, |r| {
                r.prop_non_zero_u32(pid)
            }),
            id::TOPIC_ALIAS_MAXIMUM => r.once(&mut self.topic_alias_maximum, pid, |r| {
                r.u16("Topic Alias Maximum")
            }),
            id::REQUEST_RESPONSE_INFORMATION => {
                r.once(&mut self.request_response_information, pid, |r| {
                    r.prop_bool(pid)
                })
            }
            id::REQUEST_PROBLEM_INFORMATION => {
                r.once(&mut self.request_problem_information, pid, |r| {
                    r.prop_bool(pid)
                })
            }
            id::AUTHENTICATION_METHOD => r.once(&mut self.authentication_method, pid, |r| {
                r.string("Authentication Method")
            }),
            id::AUTHENTICATION_DATA => r.once(&mut self.authentication_data, pid, |r| {
                r.binary("Authentication Data")
            }),
            id::USER_PROPERTY => r.user_property_into(&mut self.user_properties),
            _ => Err(not_allowed(pid, r)),
        }
    }

    fn write<S: Sink>(&self, s: &mut S) {
        put_u32_prop(s, id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_u16_prop(
            s,
            id::RECEIVE_MAXIMUM,
            self.receive_maximum.map(NonZeroU16::get),
        );
        put_u32_prop(
            s,
            id::MAXIMUM_PACKET_SIZE,
            self.maximum_packet_size.map(NonZeroU32::get),
        );
        put_u16_prop(s, id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_bool_prop(
            s,
            id::REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        put_bool_prop(
            s,
            id::REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        put_string_prop(
            s,
            id::AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
        );
        put_binary_prop(
            s,
            id::AUTHENTICATION_DATA,
            self.authentication_data.as_deref(),
        );
        put_user_properties(s, &self.user_properties);
    }
}

impl PropertySet for WillProperties {
    fn read(&mut self, pid: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match pid {
            id::WILL_DELAY_INTERVAL => r.once(&mut self.will_delay_interval, pid, |r| {
                r.u32("Will Delay Interval")
            }),
            id::PAYLOAD_FORMAT_INDICATOR => r.once(&mut self.payload_format_indicator, pid, |r| {
                r.prop_payload_format(pid)
            }),
            id::MESSAGE_EXPIRY_INTERVAL => r.once(&mut self.message_expiry_interval, pid, |r| {
                r.u32("Message Expiry Interval")
            }),
            id::CONTENT_TYPE => r.once(&mut self.content_type, pid, |r| r.string("Content Type")),
            id::RESPONSE_TOPIC => r.once(&mut self.response_topic, pid, |r| {
                r.topic_name("Response Topic")
            }),
            id::CORRELATION_DATA => r.once(&mut self.correlation_data, pid, |r| {
                r.binary("Correlation Data")
            }),
            id::USER_PROPERTY => r.user_property_into(&mut self.user_properties),
            _ => Err(not_allowed(pid, r)),
        }
    }

    fn write<S: Sink>(&self, s: &mut S) {
        put_u32_prop(s, id::WILL_DELAY_INTERVAL, self.will_delay_interval);
        put_u8_prop(
            s,
            id::PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator.map(|f| f as u8),
        );
        put_u32_prop(s, id::MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_string_prop(s, id::CONTENT_TYPE, self.content_type.as_deref());
        put_string_prop(
            s,
            id::RESPONSE_TOPIC,
            self.response_topic.as_ref().map(TopicName::as_str),
        );
        put_binary_prop(s, id::CORRELATION_DATA, self.correlation_data.as_deref());
        put_user_properties(s, &self.user_properties);
    }
}

impl PropertySet for ConnAckProperties {
    fn read(&mut self, pid: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match pid {
            id::SESSION_EXPIRY_INTERVAL => r.once(&mut self.session_expiry_interval, pid, |r| {
                r.u32("Session Expiry Interval")
            }),
            id::RECEIVE_MAXIMUM => {
                r.once(&mut self.receive_maximum, pid, |r| r.prop_non_zero_u16(pid))
            }
            id::MAXIMUM_QOS => r.once(&mut self.maximum_qos, pid, |r| r.prop_maximum_qos(pid)),
            id::RETAIN_AVAILABLE => r.once(&mut self.retain_available, pid, |r| r.prop_bool(pid)),
            id::MAXIMUM_PACKET_SIZE => r.once(&mut self.maximum_packet_size, pid, |r| {
                r.prop_non_zero_u32(pid)
            }),
            id::ASSIGNED_CLIENT_IDENTIFIER => {
                r.once(&mut self.assigned_client_identifier, pid, |r| {
                    r.string("Assigned Client Identifier")
                })
            }
            id::TOPIC_ALIAS_MAXIMUM => r.once(&mut self.topic_alias_maximum, pid, |r| {
                r.u16("Topic Alias Maximum")
            }),
            id::REASON_STRING => {
                r.once(&mut self.reason_string, pid, |r| r.string("Reason String"))
            }
            id::USER_PROPERTY => r.user_property_into(&mut self.user_properties),
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                r.once(&mut self.wildcard_subscription_available, pid, |r| {
                    r.prop_bool(pid)
                })
            }
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                r.once(&mut self.subscription_identifiers_available, pid, |r| {
                    r.prop_bool(pid)
                })
            }
            id::SHARED_SUBSCRIPTION_AVAILABLE => {
                r.once(&mut self.shared_subscription_available, pid, |r| {
                    r.prop_bool(pid)
                })
            }
            id::SERVER_KEEP_ALIVE => r.once(&mut self.server_keep_alive, pid, |r| {
                r.u16("Server Keep Alive")
            }),
            id::RESPONSE_INFORMATION => r.once(&mut self.response_information, pid, |r| {
                r.string("Response Information")
            }),
            id::SERVER_REFERENCE => r.once(&mut self.server_reference, pid, |r| {
                r.string("Server Reference")
            }),
            id::AUTHENTICATION_METHOD => r.once(&mut self.authentication_method, pid, |r| {
                r.string("Authentication Method")
            }),
            id::AUTHENTICATION_DATA => r.once(&mut self.authentication_data, pid, |r| {
                r.binary("Authentication Data")
            }),
            _ => Err(not_allowed(pid, r)),
        }
    }

    fn write<S: Sink>(&self, s: &mut S) {
        put_u32_prop(s, id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_u16_prop(
            s,
            id::RECEIVE_MAXIMUM,
            self.receive_maximum.map(NonZeroU16::get),
        );
        put_u8_prop(s, id::MAXIMUM_QOS, self.maximum_qos.map(QoS::as_u8));
        put_bool_prop(s, id::RETAIN_AVAILABLE, self.retain_available);
        put_u32_prop(
            s,
            id::MAXIMUM_PACKET_SIZE,
            self.maximum_packet_size.map(NonZeroU32::get),
        );
        put_string_prop(
            s,
            id::ASSIGNED_CLIENT_IDENTIFIER,
            self.assigned_client_identifier.as_deref(),
        );
        put_u16_prop(s, id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_string_prop(s, id::REASON_STRING, self.reason_string.as_deref());
        put_user_properties(s, &self.user_properties);
        put_bool_prop(
            s,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        put_bool_prop(
            s,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        );
        put_bool_prop(
            s,
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        put_u16_prop(s, id::SERVER_KEEP_ALIVE, self.server_keep_alive);
        put_string_prop(
            s,
            id::RESPONSE_INFORMATION,
            self.response_information.as_deref(),
        );
        put_string_prop(s, id::SERVER_REFERENCE, self.server_reference.as_deref());
        put_string_prop(
            s,
            id::AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
        );
        put_binary_prop(
            s,
            id::AUTHENTICATION_DATA,
            self.authentication_data.as_deref(),
        );
    }
}

impl PropertySet for PublishProperties {
    fn read(&mut self, pid: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match pid {
            id::PAYLOAD_FORMAT_INDICATOR => r.once(&mut self.payload_format_indicator, pid, |r| {
                r.prop_payload_format(pid)
            }),
            id::MESSAGE_EXPIRY_INTERVAL => r.once(&mut self.message_expiry_interval, pid, |r| {
                r.u32("Message Expiry Interval")
            }),
            id::TOPIC_ALIAS => r.once(&mut self.topic_alias, pid, |r| r.prop_topic_alias()),
            id::RESPONSE_TOPIC => r.once(&mut self.response_topic, pid, |r| {
                r.topic_name("Response Topic")
            }),
            id::CORRELATION_DATA => r.once(&mut self.correlation_data, pid, |r| {
                r.binary("Correlation Data")
            }),
            id::USER_PROPERTY => r.user_property_into(&mut self.user_properties),
            id::SUBSCRIPTION_IDENTIFIER => {
                // Repeats when several of the receiver's subscriptions matched.
                let v = r.prop_subscription_id(pid)?;
                self.subscription_identifiers.push(v);
                Ok(())
            }
            id::CONTENT_TYPE => r.once(&mut self.content_type, pid, |r| r.string("Content Type")),
            _ => Err(not_allowed(pid, r)),
        }
    }

    fn write<S: Sink>(&self, s: &mut S) {
        put_u8_prop(
            s,
            id::PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator.map(|f| f as u8),
        );
        put_u32_prop(s, id::MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_u16_prop(s, id::TOPIC_ALIAS, self.topic_alias.map(NonZeroU16::get));
        put_string_prop(
            s,
            id::RESPONSE_TOPIC,
            self.response_topic.as_ref().map(TopicName::as_str),
        );
        put_binary_prop(s, id::CORRELATION_DATA, self.correlation_data.as_deref());
        put_user_properties(s, &self.user_properties);
        for sub_id in &self.subscription_identifiers {
            s.put_u8(id::SUBSCRIPTION_IDENTIFIER);
            put_var_int(s, sub_id.get());
        }
        put_string_prop(s, id::CONTENT_TYPE, self.content_type.as_deref());
    }
}

impl PropertySet for AckProperties {
    fn read(&mut self, pid: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match pid {
            id::REASON_STRING => {
                r.once(&mut self.reason_string, pid, |r| r.string("Reason String"))
            }
            id::USER_PROPERTY => r.user_property_into(&mut self.user_properties),
            _ => Err(not_allowed(pid, r)),
        }
    }

    fn write<S: Sink>(&self, s: &mut S) {
        put_string_prop(s, id::REASON_STRING, self.reason_string.as_deref());
        put_user_properties(s, &self.user_properties);
    }
}

impl PropertySet for SubscribeProperties {
    fn read(&mut self, pid: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match pid {
            id::SUBSCRIPTION_IDENTIFIER => r.once(&mut self.subscription_identifier, pid, |r| {
                r.prop_subscription_id(pid)
            }),
            id::USER_PROPERTY => r.user_property_into(&mut self.user_properties),
            _ => Err(not_allowed(pid, r)),
        }
    }

    fn write<S: Sink>(&self, s: &mut S) {
        if let Some(sub_id) = self.subscription_identifier {
            s.put_u8(id::SUBSCRIPTION_IDENTIFIER);
            put_var_int(s, sub_id.get());
        }
        put_user_properties(s, &self.user_properties);
    }
}

impl PropertySet for UnsubscribeProperties {
    fn read(&mut self, pid: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match pid {
            id::USER_PROPERTY => r.user_property_into(&mut self.user_properties),
            _ => Err(not_allowed(pid, r)),
        }
    }

    fn write<S: Sink>(&self, s: &mut S) {
        put_user_properties(s, &self.user_properties);
    }
}

impl PropertySet for DisconnectProperties {
    fn read(&mut self, pid: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match pid {
            id::SESSION_EXPIRY_INTERVAL => r.once(&mut self.session_expiry_interval, pid, |r| {
                r.u32("Session Expiry Interval")
            }),
            id::REASON_STRING => {
                r.once(&mut self.reason_string, pid, |r| r.string("Reason String"))
            }
            id::USER_PROPERTY => r.user_property_into(&mut self.user_properties),
            id::SERVER_REFERENCE => r.once(&mut self.server_reference, pid, |r| {
                r.string("Server Reference")
            }),
            _ => Err(not_allowed(pid, r)),
        }
    }

    fn write<S: Sink>(&self, s: &mut S) {
        put_u32_prop(s, id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_string_prop(s, id::REASON_STRING, self.reason_string.as_deref());
        put_user_properties(s, &self.user_properties);
        put_string_prop(s, id::SERVER_REFERENCE, self.server_reference.as_deref());
    }
}

impl PropertySet for AuthProperties {
    fn read(&mut self, pid: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match pid {
            id::AUTHENTICATION_METHOD => r.once(&mut self.authentication_method, pid, |r| {
                r.string("Authentication Method")
            }),
            id::AUTHENTICATION_DATA => r.once(&mut self.authentication_data, pid, |r| {
                r.binary("Authentication Data")
            }),
            id::REASON_STRING => {
                r.once(&mut self.reason_string, pid, |r| r.string("Reason String"))
            }
            id::USER_PROPERTY => r.user_property_into(&mut self.user_properties),
            _ => Err(not_allowed(pid, r)),
        }
    }

    fn write<S: Sink>(&self, s: &mut S) {
        put_string_prop(
            s,
            id::AUTHENTICATION_METHOD,
            self.authentication_method.as_deref(),
        );
        put_binary_prop(
            s,
            id::AUTHENTICATION_DATA,
            self.authentication_data.as_deref(),
        );
        put_string_prop(s, id::REASON_STRING, self.reason_string.as_deref());
        put_user_properties(s, &self.user_properties);
    }
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

/// Where encoded bytes go. Each packet is written twice through the same code: once into a
/// [`Counter`] to learn its Remaining Length (and property lengths), once into the buffer.
/// One writer per packet means the length can never disagree with the bytes.
trait Sink {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_slice(&mut self, v: &[u8]);
}

/// Counts bytes instead of writing them.
#[derive(Default)]
struct Counter(u64);

impl Sink for Counter {
    fn put_u8(&mut self, _: u8) {
        self.0 += 1;
    }
    fn put_u16(&mut self, _: u16) {
        self.0 += 2;
    }
    fn put_u32(&mut self, _: u32) {
        self.0 += 4;
    }
    fn put_slice(&mut self, v: &[u8]) {
        self.0 += v.len() as u64;
    }
}

impl Sink for BytesMut {
    fn put_u8(&mut self, v: u8) {
        BufMut::put_u8(self, v);
    }
    fn put_u16(&mut self, v: u16) {
        BufMut::put_u16(self, v);
    }
    fn put_u32(&mut self, v: u32) {
        BufMut::put_u32(self, v);
    }
    fn put_slice(&mut self, v: &[u8]) {
        self.extend_from_slice(v);
    }
}

/// Writes a Variable Byte Integer with the fewest bytes. Callers guarantee
/// `v <= MAX_REMAINING_LENGTH` (checked in [`encode`] before anything is written).
fn put_var_int<S: Sink>(s: &mut S, mut v: u32) {
    loop {
        let mut byte = (v & 0x7F) as u8;
        v >>= 7;
        if v > 0 {
            byte |= 0x80;
        }
        s.put_u8(byte);
        if v == 0 {
            return;
        }
    }
}

fn var_int_len(v: u64) -> u64 {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Length-prefixed bytes. Lengths are checked by [`check_encodable`] (binary data) and by
/// [`MqttString`] (strings) before writing, so the
/// truncating cast here never truncates for a packet that reaches the writer.
fn put_binary<S: Sink>(s: &mut S, v: &[u8]) {
    s.put_u16(v.len() as u16);
    s.put_slice(v);
}

fn put_string<S: Sink>(s: &mut S, v: &str) {
    put_binary(s, v.as_bytes());
}

fn put_u8_prop<S: Sink>(s: &mut S, pid: u8, v: Option<u8>) {
    if let Some(v) = v {
        s.put_u8(pid);
        s.put_u8(v);
    }
}

fn put_bool_prop<S: Sink>(s: &mut S, pid: u8, v: Option<bool>) {
    put_u8_prop(s, pid, v.map(u8::from));
}

fn put_u16_prop<S: Sink>(s: &mut S, pid: u8, v: Option<u16>) {
    if let Some(v) = v {
        s.put_u8(pid);
        s.put_u16(v);
    }
}

fn put_u32_prop<S: Sink>(s: &mut S, pid: u8, v: Option<u32>) {
    if let Some(v) = v {
        s.put_u8(pid);
        s.put_u32(v);
    }
}

fn put_string_prop<S: Sink>(s: &mut S, pid: u8, v: Option<&str>) {
    if let Some(v) = v {
        s.put_u8(pid);
        put_string(s, v);
    }
}

fn put_binary_prop<S: Sink>(s: &mut S, pid: u8, v: Option<&[u8]>) {
    if let Some(v) = v {
        s.put_u8(pid);
        put_binary(s, v);
    }
}

fn put_user_properties<S: Sink>(s: &mut S, props: &[UserProperty]) {
    for p in props {
        s.put_u8(id::USER_PROPERTY);
        put_string(s, &p.name);
        put_string(s, &p.value);
    }
}

/// Property Length followed by the properties.
fn put_properties<S: Sink>(s: &mut S, props: &impl PropertySet) {
    let mut counter = Counter::default();
    props.write(&mut counter);
    // Bounded by the packet's Remaining Length, which `encode` checked.
    put_var_int(s, counter.0 as u32);
    props.write(s);
}

/// Encodes `packet` for a connection speaking `protocol` and appends it to `buf`.
///
/// Fields that 3.1.1 lacks (properties, most reason codes, subscription options other
/// than QoS) are not written when `protocol` is 3.1.1. Nothing is appended on error.
///
/// ```
/// use bytes::BytesMut;
/// use fieldgate::mqtt::codec::encode;
/// use fieldgate::mqtt::packet::{Packet, PacketId, ProtocolVersion, PubResponse};
///
/// let puback = Packet::PubAck(PubResponse::success(PacketId::new(10).unwrap()));
/// let mut buf = BytesMut::new();
/// encode(&puback, ProtocolVersion::V5, &mut buf)?;
/// assert_eq!(&buf[..], &[0x40, 0x02, 0x00, 0x0A]);
/// # Ok::<(), fieldgate::mqtt::codec::EncodeError>(())
/// ```
pub fn encode(
    packet: &Packet,
    protocol: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let remaining = remaining_len(packet, protocol)?;
    buf.reserve(1 + var_int_len(u64::from(remaining)) as usize + remaining as usize);
    write_packet(buf, packet, protocol, remaining);
    Ok(())
}

/// The number of bytes [`encode`] would write: compare it with the peer's Maximum Packet
/// Size before sending.
pub fn encoded_len(packet: &Packet, protocol: ProtocolVersion) -> Result<usize, EncodeError> {
    let remaining = u64::from(remaining_len(packet, protocol)?);
    Ok((1 + var_int_len(remaining) + remaining) as usize)
}

/// Validates `packet` for `protocol` and returns its Remaining Length.
fn remaining_len(packet: &Packet, protocol: ProtocolVersion) -> Result<u32, EncodeError> {
    check_encodable(packet, protocol)?;
    let mut counter = Counter::default();
    write_body(&mut counter, packet, protocol);
    let remaining = counter.0;
    if remaining > u64::from(MAX_REMAINING_LENGTH) {
        return Err(EncodeError::TooLarge(1 + 4 + remaining));
    }
    // Fits: just checked against MAX_REMAINING_LENGTH.
    Ok(remaining as u32)
}

fn write_packet<S: Sink>(s: &mut S, packet: &Packet, protocol: ProtocolVersion, remaining: u32) {
    s.put_u8(first_byte(packet));
    put_var_int(s, remaining);
    write_body(s, packet, protocol);
}

fn first_byte(packet: &Packet) -> u8 {
    let kind = packet.packet_type() as u8;
    let flags = match packet {
        Packet::Publish(p) => (u8::from(p.dup) << 3) | (p.qos.as_u8() << 1) | u8::from(p.retain),
        Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
        _ => 0,
    };
    (kind << 4) | flags
}

/// Everything the types allow but the wire does not, so that encoding cannot produce a
/// packet our own decoder rejects.
fn check_encodable(packet: &Packet, protocol: ProtocolVersion) -> Result<(), EncodeError> {
    let v5 = protocol == ProtocolVersion::V5;
    let ptype = packet.packet_type();
    let check_code = |code: ReasonCode| {
        if code.is_valid_for(ptype) {
            Ok(())
        } else {
            Err(EncodeError::InvalidReasonCode {
                packet: ptype,
                code: code.0,
            })
        }
    };
    match packet {
        Packet::Connect(c) => {
            if c.protocol != protocol {
                return Err(EncodeError::ProtocolMismatch {
                    connect: c.protocol,
                    encode: protocol,
                });
            }
            if !v5 && c.password.is_some() && c.username.is_none() {
                return Err(EncodeError::PasswordWithoutUsername);
            }
            if v5
                && c.properties.authentication_data.is_some()
                && c.properties.authentication_method.is_none()
            {
                return Err(EncodeError::AuthDataWithoutMethod);
            }
            check_binary(ptype, "Password", c.password.as_deref())?;
            check_binary(
                ptype,
                "Authentication Data",
                c.properties.authentication_data.as_deref(),
            )?;
            if let Some(will) = &c.will {
                check_binary(ptype, "Will Payload", Some(&will.payload))?;
                check_binary(
                    ptype,
                    "Correlation Data",
                    will.properties.correlation_data.as_deref(),
                )?;
            }
        }
        Packet::ConnAck(c) => {
            check_code(c.reason_code)?;
            if c.properties.maximum_qos == Some(QoS::ExactlyOnce) {
                return Err(EncodeError::InvalidMaximumQoS);
            }
            check_binary(
                ptype,
                "Authentication Data",
                c.properties.authentication_data.as_deref(),
            )?;
        }
        Packet::Publish(p) => {
            if (p.qos == QoS::AtMostOnce) != p.packet_id.is_none() {
                return Err(EncodeError::PacketIdMismatch { qos: p.qos.as_u8() });
            }
            if p.dup && p.qos == QoS::AtMostOnce {
                return Err(EncodeError::DupOnQoS0);
            }
            if p.topic.is_empty() && !(v5 && p.properties.topic_alias.is_some()) {
                return Err(EncodeError::EmptyTopicWithoutAlias);
            }
            check_binary(
                ptype,
                "Correlation Data",
                p.properties.correlation_data.as_deref(),
            )?;
        }
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            check_code(r.reason_code)?;
        }
        Packet::Subscribe(s) => {
            if s.subscriptions.is_empty() {
                return Err(EncodeError::NoTopicFilters(ptype));
            }
            for sub in &s.subscriptions {
                if v5 && sub.options.no_local && sub.filter.is_shared() {
                    return Err(EncodeError::NoLocalOnSharedSubscription(
                        sub.filter.as_str().to_owned(),
                    ));
                }
            }
        }
        Packet::SubAck(s) => {
            for &code in &s.reason_codes {
                check_code(code)?;
            }
        }
        Packet::Unsubscribe(u) => {
            if u.filters.is_empty() {
                return Err(EncodeError::NoTopicFilters(ptype));
            }
        }
        Packet::UnsubAck(u) => {
            for &code in &u.reason_codes {
                check_code(code)?;
            }
        }
        Packet::Disconnect(d) => check_code(d.reason_code)?,
        Packet::Auth(a) => {
            if !v5 {
                return Err(EncodeError::AuthInV311);
            }
            check_code(a.reason_code)?;
            let is_empty_form =
                a.reason_code == ReasonCode::SUCCESS && a.properties == AuthProperties::default();
            if !is_empty_form && a.properties.authentication_method.is_none() {
                return Err(EncodeError::AuthWithoutMethod);
            }
            check_binary(
                ptype,
                "Authentication Data",
                a.properties.authentication_data.as_deref(),
            )?;
        }
        Packet::PingReq | Packet::PingResp => {}
    }
    Ok(())
}

fn check_binary(
    packet: PacketType,
    field: &'static str,
    v: Option<&[u8]>,
) -> Result<(), EncodeError> {
    match v {
        Some(v) if v.len() > usize::from(u16::MAX) => Err(EncodeError::BinaryTooLong {
            packet,
            field,
            len: v.len(),
        }),
        _ => Ok(()),
    }
}

fn write_body<S: Sink>(s: &mut S, packet: &Packet, protocol: ProtocolVersion) {
    let v5 = protocol == ProtocolVersion::V5;
    match packet {
        Packet::Connect(c) => write_connect(s, c),
        Packet::ConnAck(c) => {
            s.put_u8(u8::from(c.session_present));
            if v5 {
                s.put_u8(c.reason_code.0);
                put_properties(s, &c.properties);
            } else {
                s.put_u8(v311_connack_code(c.reason_code));
            }
        }
        Packet::Publish(p) => {
            put_string(s, p.topic.as_str());
            if let Some(packet_id) = p.packet_id {
                s.put_u16(packet_id.get());
            }
            if v5 {
                put_properties(s, &p.properties);
            }
            s.put_slice(&p.payload);
        }
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            s.put_u16(r.packet_id.get());
            if v5 {
                write_short_form_tail(s, r.reason_code, &r.properties, r.properties.is_empty());
            }
        }
        Packet::Subscribe(sub) => {
            s.put_u16(sub.packet_id.get());
            if v5 {
                put_properties(s, &sub.properties);
            }
            for subscription in &sub.subscriptions {
                put_string(s, subscription.filter.as_str());
                s.put_u8(subscription_options_byte(&subscription.options, v5));
            }
        }
        Packet::SubAck(a) => {
            s.put_u16(a.packet_id.get());
            if v5 {
                put_properties(s, &a.properties);
            }
            for code in &a.reason_codes {
                // 3.1.1 has one failure code, 0x80; 5.0's failure codes are all >= 0x80.
                let code = if !v5 && !code.is_success() {
                    0x80
                } else {
                    code.0
                };
                s.put_u8(code);
            }
        }
        Packet::Unsubscribe(u) => {
            s.put_u16(u.packet_id.get());
            if v5 {
                put_properties(s, &u.properties);
            }
            for filter in &u.filters {
                put_string(s, filter.as_str());
            }
        }
        Packet::UnsubAck(a) => {
            s.put_u16(a.packet_id.get());
            if v5 {
                put_properties(s, &a.properties);
                for code in &a.reason_codes {
                    s.put_u8(code.0);
                }
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            if v5 {
                let empty = d.properties == DisconnectProperties::default();
                write_short_form_tail(s, d.reason_code, &d.properties, empty);
            }
        }
        Packet::Auth(a) => {
            let empty = a.properties == AuthProperties::default();
            write_short_form_tail(s, a.reason_code, &a.properties, empty);
        }
    }
}

/// The 5.0 tail of PUBACK-like packets, DISCONNECT and AUTH, in its shortest form: nothing
/// for Success without properties, the reason code alone without properties, else both.
fn write_short_form_tail<S: Sink>(
    s: &mut S,
    code: ReasonCode,
    props: &impl PropertySet,
    props_empty: bool,
) {
    if code == ReasonCode::SUCCESS && props_empty {
        return;
    }
    s.put_u8(code.0);
    if !props_empty {
        put_properties(s, props);
    }
}

fn write_connect<S: Sink>(s: &mut S, c: &Connect) {
    let v5 = c.protocol == ProtocolVersion::V5;
    put_string(s, "MQTT");
    s.put_u8(c.protocol.level());
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0x02;
    }
    if let Some(will) = &c.will {
        flags |= 0x04 | (will.qos.as_u8() << 3);
        if will.retain {
            flags |= 0x20;
        }
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    s.put_u8(flags);
    s.put_u16(c.keep_alive);
    if v5 {
        put_properties(s, &c.properties);
    }
    put_string(s, &c.client_id);
    if let Some(will) = &c.will {
        if v5 {
            put_properties(s, &will.properties);
        }
        put_string(s, will.topic.as_str());
        put_binary(s, &will.payload);
    }
    if let Some(username) = &c.username {
        put_string(s, username);
    }
    if let Some(password) = &c.password {
        put_binary(s, password);
    }
}

fn subscription_options_byte(o: &SubscriptionOptions, v5: bool) -> u8 {
    let mut byte = o.qos.as_u8();
    if v5 {
        byte |= u8::from(o.no_local) << 2;
        byte |= u8::from(o.retain_as_published) << 3;
        byte |= (o.retain_handling as u8) << 4;
    }
    byte
}

/// The 3.1.1 CONNACK return code for a 5.0 reason code. 3.1.1 has five refusals; 5.0
/// codes without an exact match go to the nearest (authorisation-like ones to "not
/// authorized", the rest to "server unavailable").
fn v311_connack_code(code: ReasonCode) -> u8 {
    if code == ReasonCode::SUCCESS {
        return 0;
    }
    if let Some((v3, _)) = V311_CONNACK_CODES.iter().find(|(_, v5)| *v5 == code) {
        return *v3;
    }
    match code {
        ReasonCode::BANNED | ReasonCode::BAD_AUTHENTICATION_METHOD => 5,
        _ => 3,
    }
}
