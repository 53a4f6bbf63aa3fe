//! A spooled message and its stored form. A record's frame body is
//! `seq (u64 LE) | PUBLISH (u32 LE length + MQTT 5.0 encoding)`: the codec carries the
//! topic, QoS, retain flag, v5 properties and payload, so there is one message format
//! to trust. What is per connection (packet id, DUP, topic alias) or only for server
//! to client (subscription identifiers) is not stored.

use bytes::{BufMut, Bytes, BytesMut};

use crate::mqtt::codec::EncodeError;
use crate::mqtt::packet::{Packet, PacketId, Publish, QoS};
use crate::storage::frame::{self, Fields};

/// A message in the spool, numbered in the order it was appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Unique and increasing across restarts; what [`Consumer::ack`](super::Consumer::ack)
    /// takes.
    pub seq: u64,
    /// As appended, without packet id, DUP, topic alias or subscription identifiers.
    pub publish: Publish,
}

/// `publish` as the spool keeps and hands it out.
pub(super) fn outgoing(mut publish: Publish) -> Publish {
    publish.dup = false;
    publish.packet_id = None;
    publish.properties.topic_alias = None;
    publish.properties.subscription_identifiers.clear();
    publish
}

/// The packet the codec encodes: a QoS 1/2 PUBLISH needs some packet id on the wire,
/// and the stored one means nothing (the upstream session picks its own).
fn wire(publish: &Publish) -> Packet {
    Packet::Publish(Publish {
        packet_id: (publish.qos != QoS::AtMostOnce).then_some(PacketId::MIN),
        ..publish.clone()
    })
}

/// The whole frame's size for `publish` (header, seq, packet): what the bounds count.
pub(super) fn frame_len(publish: &Publish) -> Result<u64, EncodeError> {
    Ok((frame::HEADER_LEN + 8 + frame::packet_len(&wire(publish))?) as u64)
}

/// Appends the frame of record `seq`.
pub(super) fn put_frame(
    out: &mut BytesMut,
    seq: u64,
    publish: &Publish,
) -> Result<(), EncodeError> {
    let mut result = Ok(());
    let start = out.len();
    frame::put_with(out, |body| {
        body.put_u64_le(seq);
        result = frame::put_packet(body, &wire(publish));
    });
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// No sequence number reaches this (2^62 appends would take a million a second for
/// 146,000 years); anything read from a file above it is damage, so sums of numbers
/// from files never overflow.
pub(super) const MAX_SEQ: u64 = 1 << 62;

/// The sequence number of a frame body (all recovery needs: no decoding).
pub(super) fn seq_of(body: &[u8]) -> Option<u64> {
    let seq = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    (seq < MAX_SEQ).then_some(seq)
}

/// Decodes a frame body; `None` for a body this version cannot read.
pub(super) fn decode(body: &[u8]) -> Option<Record> {
    let seq = seq_of(body)?;
    let mut fields = Fields(Bytes::copy_from_slice(body));
    fields.u64()?;
    let Packet::Publish(publish) = fields.packet()? else {
        return None;
    };
    Some(Record {
        seq,
        publish: outgoing(publish),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::packet::{PayloadFormat, PublishProperties, UserProperty};
    use crate::mqtt::string::MqttString;
    use crate::mqtt::topic::TopicName;
    use crate::storage::frame::Frame;

    #[test]
    fn every_field_of_a_v5_message_survives_the_round_trip() {
        let publish = Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: TopicName::try_from("plant/pump-3/temperature").unwrap(),
            packet_id: PacketId::new(77),
            payload: Bytes::from_static(b"{\"value\":21.5}"),
            properties: PublishProperties {
                payload_format_indicator: Some(PayloadFormat::Utf8),
                message_expiry_interval: Some(3600),
                topic_alias: std::num::NonZeroU16::new(3),
                response_topic: Some(TopicName::try_from("reply/here").unwrap()),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![UserProperty {
                    name: MqttString::try_from("site").unwrap(),
                    value: MqttString::try_from("north").unwrap(),
                }],
                subscription_identifiers: Vec::new(),
                content_type: Some(MqttString::try_from("application/json").unwrap()),
            },
        };
        let mut out = BytesMut::new();
        put_frame(&mut out, 42, &publish).unwrap();
        assert_eq!(out.len() as u64, frame_len(&publish).unwrap());
        let Frame::Whole { body, .. } = frame::read(&out) else {
            panic!("a whole frame")
        };
        assert_eq!(seq_of(body), Some(42));
        let record = decode(body).unwrap();
        assert_eq!(record.seq, 42);
        assert_eq!(record.publish, outgoing(publish));
        assert_eq!(record.publish.packet_id, None);
        assert_eq!(record.publish.properties.topic_alias, None);
    }

    #[test]
    fn a_message_the_codec_refuses_writes_nothing() {
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: TopicName::try_from("t").unwrap(),
            packet_id: None,
            payload: Bytes::new(),
            properties: PublishProperties {
                correlation_data: Some(Bytes::from(vec![0; 70_000])),
                ..PublishProperties::default()
            },
        };
        let mut out = BytesMut::from(&b"keep"[..]);
        assert!(put_frame(&mut out, 1, &publish).is_err());
        assert_eq!(&out[..], b"keep");
        assert!(frame_len(&publish).is_err());
    }
}
