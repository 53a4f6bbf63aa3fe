//! `ServerSession`: the broker's protocol state for one client, as a sans-IO state machine
//! in the shape of the client's (`handle_*` in, `poll_*` out, time passed in as `now`).
//!
//! It owns what the specification ties to a session (outbound QoS 1/2 flows with their
//! packet ids and the client's Receive Maximum as window, inbound QoS 2 ids awaiting
//! PUBREL, messages waiting for the window) and what it ties to one connection (keep-alive,
//! topic aliases both ways, the client's maximum packet size). It must not decide who
//! may connect, publish or subscribe, nor where messages go: it reports `Event`s and the
//! broker answers through `acknowledge_publish`, `suback`, `unsuback`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::mqtt::codec::{self, DecodeError};
use crate::mqtt::packet::{
    AckProperties, ConnAck, ConnAckProperties, Connect, Disconnect, DisconnectProperties, Packet,
    PacketId, PayloadFormat, ProtocolVersion, PubResponse, Publish, PublishProperties, QoS,
    ReasonCode, SubAck, Subscribe, SubscriptionId, UnsubAck, Unsubscribe,
};
use crate::mqtt::session::packet_id::PacketIdPool;
use crate::mqtt::string::MqttString;
use crate::mqtt::topic::TopicName;

/// The broker's limits as this session applies them.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Our Receive Maximum: inbound QoS 2 flows a client may have open at once.
    pub receive_maximum: NonZeroU16,
    /// The largest packet we accept (announced to 5.0 clients).
    pub maximum_packet_size: NonZeroU32,
    /// Topic aliases a 5.0 client may use towards us (0: none).
    pub topic_alias_maximum: u16,
    /// Topic aliases we use towards a 5.0 client, at most (bounded by the client's own).
    pub outbound_alias_maximum: u16,
    /// Longest keep-alive we allow; 0: no limit. 5.0 clients are told (Server Keep Alive).
    pub max_keep_alive: u16,
    /// Outbound QoS 1/2 messages in flight to one client, at most, even if it allows more.
    pub max_inflight: NonZeroU16,
    /// Messages waiting for the window inside the session before the broker stops handing
    /// it more (the rest wait in the broker's per-client queue).
    pub max_waiting: usize,
    /// Prefix of the Response Information given to clients that request it.
    pub response_information: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            receive_maximum: NonZeroU16::new(100).unwrap_or(NonZeroU16::MIN),
            maximum_packet_size: NonZeroU32::new(1 << 20).unwrap_or(NonZeroU32::MIN),
            topic_alias_maximum: 64,
            outbound_alias_maximum: 64,
            max_keep_alive: 0,
            max_inflight: NonZeroU16::new(100).unwrap_or(NonZeroU16::MIN),
            max_waiting: 200,
            response_information: None,
        }
    }
}

/// Payloads smaller than this are copied out of the read buffer (see `from_publish`).
const DETACH_BELOW: usize = 4096;

/// An application message as the broker stores and routes it: shared by every
/// subscriber it goes to, never copied per subscriber.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// 5.0 properties as published, without Topic Alias and Subscription Identifiers
    /// (those belong to one connection and one subscription).
    pub properties: PublishProperties,
    /// When the Message Expiry Interval runs out, if it has one.
    pub expires_at: Option<Instant>,
    /// The publishing client, for No Local.
    pub publisher: Option<Arc<str>>,
    /// Its number in the broker's journal, when persistence keeps it for a persistent
    /// session: the session reports [`Event::Finished`] with it once done.
    pub journal_seq: Option<u64>,
}

impl Message {
    /// Builds the stored form of a received PUBLISH (topic alias already resolved).
    pub fn from_publish(publish: Publish, publisher: Option<Arc<str>>, now: Instant) -> Self {
        let mut properties = publish.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        // Property strings share the read buffer too (see the payload below).
        for p in &mut properties.user_properties {
            p.name = p.name.detach();
            p.value = p.value.detach();
        }
        properties.content_type = properties.content_type.as_ref().map(MqttString::detach);
        properties.response_topic = properties.response_topic.as_ref().map(TopicName::detach);
        properties.correlation_data = properties
            .correlation_data
            .as_ref()
            .map(|c| Bytes::copy_from_slice(c));
        let expires_at = properties
            .message_expiry_interval
            .map(|s| now + Duration::from_secs(u64::from(s)));
        // A message may wait long (retained, or queued for an offline client): a small
        // one is copied out of the publisher's read buffer rather than keep all of that
        // buffer alive. A large one is most of its buffer anyway.
        let payload = if publish.payload.len() < DETACH_BELOW {
            Bytes::copy_from_slice(&publish.payload)
        } else {
            publish.payload
        };
        Message {
            topic: publish.topic.detach(),
            payload,
            qos: publish.qos,
            retain: publish.retain,
            properties,
            expires_at,
            publisher,
            journal_seq: None,
        }
    }

    /// True once the Message Expiry Interval has passed.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// One message on its way to this client: the shared message plus what the matching
/// subscription(s) decided.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub message: Arc<Message>,
    /// The lower of the message's QoS and the subscription's [MQTT-3.8.4-8].
    pub qos: QoS,
    /// RETAIN as sent: set for retained messages sent on subscribe, and for live ones only
    /// with Retain As Published [MQTT-3.3.1-12] [MQTT-3.3.1-13].
    pub retain: bool,
    pub subscription_ids: Vec<SubscriptionId>,
}

/// What the session reports to the broker.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An application message to route (topic alias resolved). For QoS 1 and 2 the broker
    /// must answer with [`ServerSession::acknowledge_publish`].
    Publish(Publish),
    /// SUBSCRIBE to authorise and apply; answer with [`ServerSession::suback`].
    Subscribe(Subscribe),
    /// UNSUBSCRIBE to apply; answer with [`ServerSession::unsuback`].
    Unsubscribe(Unsubscribe),
    /// The connection is over: write what `poll_packet` still has, then close it.
    Closed(CloseReason),
    /// The session is done with a journaled message (acknowledged by the client, sent
    /// at QoS 0, or dropped): the broker's journal may forget it for this client.
    Finished { journal_seq: u64 },
}

/// Why a connection ended, and so whether the will is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// DISCONNECT from the client: 0x00 discards the will, 0x04 asks for it [MQTT-3.14.4-3].
    ClientDisconnect { reason: ReasonCode },
    /// Nothing heard for 1.5 times the keep-alive [MQTT-3.1.2-22].
    KeepAliveTimeout,
    /// The client broke a rule: `reason` was sent in DISCONNECT (5.0).
    ProtocolError { reason: ReasonCode, detail: String },
    /// The transport closed without DISCONNECT.
    ConnectionLost,
    /// Another connection took over this client id [MQTT-3.1.4-3].
    TakenOver,
    /// The broker is stopping.
    ServerShuttingDown,
}

impl CloseReason {
    /// True when the will message must be published [MQTT-3.1.2-8].
    pub fn publishes_will(&self) -> bool {
        match self {
            CloseReason::ClientDisconnect { reason } => {
                *reason == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE
            }
            // A server shutting down is the same as a lost connection for the client.
            _ => true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowState {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    Qos1Sent,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    Qos2Sent,
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

#[derive(Debug)]
struct Flow {
    id: PacketId,
    state: FlowState,
    outgoing: Outgoing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No connection (a persistent session between connections).
    Offline,
    Connected,
    /// Closed(..) reported; waiting for the driver to drop the connection.
    Closing,
}

/// Per-connection values negotiated in CONNECT.
#[derive(Debug)]
struct Link {
    protocol: ProtocolVersion,
    keep_alive: Option<Duration>,
    last_received: Instant,
    client_receive_maximum: u16,
    client_maximum_packet_size: Option<u32>,
    client_alias_maximum: u16,
    aliases_in: HashMap<u16, TopicName>,
    aliases_out: HashMap<TopicName, NonZeroU16>,
    request_problem_information: bool,
}

/// The protocol state of one client's session.
#[derive(Debug)]
pub struct ServerSession {
    /// Shared by every session of the broker (one copy, not one per client).
    config: Arc<ServerConfig>,
    client_id: MqttString,
    state: State,
    link: Option<Link>,
    session_expiry_interval: u32,
    ids: PacketIdPool,
    /// Outbound QoS 1/2 flows in the order they were sent (resent in that order).
    inflight: VecDeque<Flow>,
    /// Messages waiting for the window.
    waiting: VecDeque<Outgoing>,
    /// Inbound QoS 2 packet ids between PUBREC and PUBREL: a PUBLISH with one of these is
    /// a resend and is not routed again [MQTT-4.3.3-10].
    awaiting_pubrel: HashSet<PacketId>,
    /// Inbound QoS 1/2 publishes handed to the broker and not yet acknowledged.
    unacknowledged: HashMap<PacketId, QoS>,
    packets: VecDeque<Packet>,
    events: VecDeque<Event>,
    /// Messages dropped because they were larger than the client's maximum packet size
    /// or expired while waiting.
    dropped: u64,
}

impl ServerSession {
    pub fn new(client_id: MqttString, config: impl Into<Arc<ServerConfig>>) -> Self {
        ServerSession {
            config: config.into(),
            client_id,
            state: State::Offline,
            link: None,
            session_expiry_interval: 0,
            ids: PacketIdPool::new(),
            inflight: VecDeque::new(),
            waiting: VecDeque::new(),
            awaiting_pubrel: HashSet::new(),
            unacknowledged: HashMap::new(),
            packets: VecDeque::new(),
            events: VecDeque::new(),
            dropped: 0,
        }
    }

    pub fn client_id(&self) -> &MqttString {
        &self.client_id
    }

    pub fn protocol(&self) -> ProtocolVersion {
        self.link
            .as_ref()
            .map_or(ProtocolVersion::V5, |link| link.protocol)
    }

    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// The Session Expiry Interval in force (CONNECT's, possibly changed by DISCONNECT).
    pub fn session_expiry_interval(&self) -> u32 {
        self.session_expiry_interval
    }

    /// Sets the Session Expiry Interval of a session restored from storage.
    pub fn set_session_expiry_interval(&mut self, seconds: u32) {
        self.session_expiry_interval = seconds;
    }

    /// Messages dropped so far (too large for the client, or expired while queued).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Messages in flight or waiting inside the session.
    pub fn queued(&self) -> usize {
        self.inflight.len() + self.waiting.len()
    }

    /// The largest packet this session accepts, for the decoder.
    pub fn max_incoming_packet_size(&self) -> usize {
        self.config.maximum_packet_size.get() as usize
    }

    /// True while the broker may hand this session more messages with [`Self::deliver`].
    pub fn wants_messages(&self) -> bool {
        self.state == State::Connected && self.waiting.len() < self.config.max_waiting
    }

    /// Accepts a CONNECT the broker has authorised: answers CONNACK (with the limits a
    /// 5.0 client must know) and, when the session was resumed, resends unacknowledged
    /// PUBLISH (DUP) and PUBREL [MQTT-4.4.0-1]. `assigned_id` is the identifier the broker
    /// chose for a client that sent none.
    pub fn accept(
        &mut self,
        connect: &Connect,
        session_present: bool,
        assigned_id: Option<MqttString>,
        now: Instant,
    ) {
        self.packets.clear();
        self.events.clear();
        let protocol = connect.protocol;
        let v5 = protocol == ProtocolVersion::V5;
        let props = &connect.properties;
        let mut keep_alive = connect.keep_alive;
        let mut server_keep_alive = None;
        let max = self.config.max_keep_alive;
        // 3.1.1 has no way to tell the client, so its keep-alive is taken as it is.
        if v5 && max > 0 && (keep_alive == 0 || keep_alive > max) {
            keep_alive = max;
            server_keep_alive = Some(max);
        }
        self.session_expiry_interval = if v5 {
            props.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            // A 3.1.1 persistent session never expires on its own.
            u32::MAX
        };
        self.link = Some(Link {
            protocol,
            keep_alive: (keep_alive > 0).then(|| Duration::from_secs(u64::from(keep_alive))),
            last_received: now,
            client_receive_maximum: props.receive_maximum.map_or(u16::MAX, NonZeroU16::get),
            client_maximum_packet_size: props.maximum_packet_size.map(NonZeroU32::get),
            client_alias_maximum: props
                .topic_alias_maximum
                .unwrap_or(0)
                .min(self.config.outbound_alias_maximum),
            aliases_in: HashMap::new(),
            aliases_out: HashMap::new(),
            request_problem_information: props.request_problem_information.unwrap_or(true),
        });
        self.state = State::Connected;
        let mut properties = ConnAckProperties::default();
        if v5 {
            properties.receive_maximum = Some(self.config.receive_maximum);
            properties.maximum_packet_size = Some(self.config.maximum_packet_size);
            properties.topic_alias_maximum = Some(self.config.topic_alias_maximum);
            properties.assigned_client_identifier = assigned_id;
            properties.server_keep_alive = server_keep_alive;
            if props.request_response_information == Some(true)
                && let Some(prefix) = &self.config.response_information
            {
                properties.response_information =
                    MqttString::try_from(format!("{prefix}{}", self.client_id.as_str()).as_str())
                        .ok();
            }
        }
        self.packets.push_back(Packet::ConnAck(ConnAck {
            session_present,
            reason_code: ReasonCode::SUCCESS,
            properties,
        }));
        if !session_present {
            self.clear_session_state();
        }
        // Resend in the original order; aliases are per connection, so full topics.
        let mut unsendable = Vec::new();
        for i in 0..self.inflight.len() {
            let flow = &self.inflight[i];
            let packet = match flow.state {
                FlowState::Qos1Sent | FlowState::Qos2Sent => {
                    let (id, outgoing) = (flow.id, flow.outgoing.clone());
                    match self.build_publish(&outgoing, Some(id), true, now) {
                        Some(publish) => Packet::Publish(publish),
                        None => {
                            unsendable.push(id);
                            continue;
                        }
                    }
                }
                FlowState::Released => Packet::PubRel(PubResponse::success(flow.id)),
            };
            self.packets.push_back(packet);
        }
        // Too large for the Maximum Packet Size of this connection [MQTT-3.1.2-25]: the
        // flow is over, or it would hold a window slot and a packet id for ever.
        for id in unsendable {
            if let Some(i) = self.inflight.iter().position(|f| f.id == id)
                && let Some(flow) = self.inflight.remove(i)
            {
                self.dropped += 1;
                self.finished(&flow.outgoing);
            }
            self.ids.release(id);
        }
        self.pump(now);
    }

    /// Builds the CONNACK that refuses a connection (the broker closes it after writing).
    pub fn refusal(reason: ReasonCode, reason_string: Option<&str>) -> Packet {
        let properties = ConnAckProperties {
            reason_string: reason_string.and_then(|s| MqttString::try_from(s).ok()),
            ..ConnAckProperties::default()
        };
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: reason,
            properties,
        })
    }

    fn clear_session_state(&mut self) {
        self.inflight.clear();
        self.waiting.clear();
        self.awaiting_pubrel.clear();
        self.unacknowledged.clear();
        self.ids.clear();
    }

    /// Ends the session's life: everything in flight and waiting is given up (a clean
    /// start, or the session expired).
    pub fn discard_state(&mut self) -> usize {
        let lost = self.queued();
        self.clear_session_state();
        lost
    }

    /// A packet arrived from the client.
    pub fn handle_packet(&mut self, packet: Packet, now: Instant) {
        if self.state != State::Connected {
            return;
        }
        if let Some(link) = &mut self.link {
            link.last_received = now;
        }
        match packet {
            Packet::Publish(publish) => self.handle_publish(publish),
            Packet::PubAck(ack) => {
                self.finish_flow(ack.packet_id, FlowState::Qos1Sent);
                self.pump(now);
            }
            Packet::PubRec(rec) => self.handle_pubrec(rec, now),
            Packet::PubComp(comp) => {
                self.finish_flow(comp.packet_id, FlowState::Released);
                self.pump(now);
            }
            Packet::PubRel(rel) => {
                let known = self.awaiting_pubrel.remove(&rel.packet_id);
                let reason = if known || self.protocol() != ProtocolVersion::V5 {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.packets.push_back(Packet::PubComp(PubResponse {
                    packet_id: rel.packet_id,
                    reason_code: reason,
                    properties: AckProperties::default(),
                }));
            }
            Packet::Subscribe(subscribe) => {
                if let Some(reason) = self.check_subscribe(&subscribe) {
                    return self.protocol_error(reason, "invalid SUBSCRIBE".into());
                }
                self.events.push_back(Event::Subscribe(subscribe));
            }
            Packet::Unsubscribe(unsubscribe) => {
                self.events.push_back(Event::Unsubscribe(unsubscribe));
            }
            Packet::PingReq => self.packets.push_back(Packet::PingResp),
            Packet::Disconnect(disconnect) => self.handle_disconnect(disconnect),
            Packet::Connect(_) => {
                // [MQTT-3.1.0-2]: a second CONNECT is a protocol violation.
                self.protocol_error(ReasonCode::PROTOCOL_ERROR, "second CONNECT".into());
            }
            Packet::Auth(_) => {
                // No enhanced authentication method was agreed in CONNECT [MQTT-4.12.0-1].
                self.protocol_error(ReasonCode::PROTOCOL_ERROR, "AUTH without a method".into());
            }
            other => {
                let name = other.packet_type().name();
                self.protocol_error(
                    ReasonCode::PROTOCOL_ERROR,
                    format!("a client must not send {name}"),
                );
            }
        }
    }

    fn check_subscribe(&self, subscribe: &Subscribe) -> Option<ReasonCode> {
        // [MQTT-3.8.3-4]: No Local on a shared subscription is a protocol error.
        subscribe
            .subscriptions
            .iter()
            .any(|s| s.filter.is_shared() && s.options.no_local)
            .then_some(ReasonCode::PROTOCOL_ERROR)
    }

    fn handle_publish(&mut self, mut publish: Publish) {
        let Some(link) = &mut self.link else { return };
        // Topic alias: map it, or resolve an empty topic through it [MQTT-3.3.2-12].
        if let Some(alias) = publish.properties.topic_alias.take() {
            if alias.get() > self.config.topic_alias_maximum {
                return self.protocol_error(
                    ReasonCode::TOPIC_ALIAS_INVALID,
                    format!("topic alias {alias} is above our maximum"),
                );
            }
            if publish.topic.is_empty() {
                match link.aliases_in.get(&alias.get()) {
                    Some(topic) => publish.topic = topic.clone(),
                    None => {
                        return self.protocol_error(
                            ReasonCode::PROTOCOL_ERROR,
                            format!("topic alias {alias} was never set"),
                        );
                    }
                }
            } else {
                // Kept for the connection's life: a copy, not a slice of the read buffer.
                link.aliases_in.insert(alias.get(), publish.topic.detach());
            }
        } else if publish.topic.is_empty() {
            return self.protocol_error(
                ReasonCode::TOPIC_NAME_INVALID,
                "empty topic without an alias".into(),
            );
        }
        let utf8_ok = publish.properties.payload_format_indicator != Some(PayloadFormat::Utf8)
            || std::str::from_utf8(&publish.payload).is_ok();
        match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => {
                if !utf8_ok {
                    return self.protocol_error(
                        ReasonCode::PAYLOAD_FORMAT_INVALID,
                        "payload is not UTF-8 as its format indicator says".into(),
                    );
                }
                self.events.push_back(Event::Publish(publish));
            }
            (qos, Some(id)) => {
                if qos == QoS::ExactlyOnce && self.awaiting_pubrel.contains(&id) {
                    // A resend of a message already routed: answer again, route once.
                    self.packets
                        .push_back(Packet::PubRec(PubResponse::success(id)));
                    return;
                }
                if self.unacknowledged.contains_key(&id) {
                    // The broker is still routing the first copy; its answer will do.
                    return;
                }
                let open = self.awaiting_pubrel.len() + self.unacknowledged.len();
                // 3.1.1 has no Receive Maximum to tell the client (paho and mosquitto
                // default to 20 in flight, our own client to the packet id space), so
                // none is enforced there: packet ids bound these sets to 65,535 anyway.
                if self.protocol() == ProtocolVersion::V5
                    && open >= usize::from(self.config.receive_maximum.get())
                {
                    // [MQTT-3.3.4-8]: more than our Receive Maximum in flight.
                    return self.protocol_error(
                        ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                        "more QoS 1/2 publishes in flight than our Receive Maximum".into(),
                    );
                }
                if !utf8_ok {
                    self.answer_publish(qos, id, ReasonCode::PAYLOAD_FORMAT_INVALID);
                    return;
                }
                self.unacknowledged.insert(id, qos);
                self.events.push_back(Event::Publish(publish));
            }
            // The codec refuses QoS 1/2 without a packet id.
            (_, None) => {}
        }
    }

    /// The broker's answer to an [`Event::Publish`] at QoS 1/2: SUCCESS, or
    /// NO_MATCHING_SUBSCRIBERS, or an error such as NOT_AUTHORIZED (5.0 only; a 3.1.1
    /// client gets a plain acknowledgement, as it has no way to hear a refusal).
    pub fn acknowledge_publish(&mut self, packet_id: PacketId, reason: ReasonCode) {
        let Some(qos) = self.unacknowledged.remove(&packet_id) else {
            return;
        };
        if self.state != State::Connected {
            return;
        }
        self.answer_publish(qos, packet_id, reason);
    }

    fn answer_publish(&mut self, qos: QoS, id: PacketId, reason: ReasonCode) {
        let reason = if self.protocol() == ProtocolVersion::V5 {
            reason
        } else {
            ReasonCode::SUCCESS
        };
        let response = PubResponse {
            packet_id: id,
            reason_code: reason,
            properties: AckProperties::default(),
        };
        if qos == QoS::ExactlyOnce {
            // An error code in PUBREC ends the flow (5.0 §4.3.3): no PUBREL follows.
            if reason.is_success() || reason == ReasonCode::NO_MATCHING_SUBSCRIBERS {
                self.awaiting_pubrel.insert(id);
            }
            self.packets.push_back(Packet::PubRec(response));
        } else {
            self.packets.push_back(Packet::PubAck(response));
        }
    }

    /// The broker's answer to an [`Event::Subscribe`]: one code per filter.
    pub fn suback(&mut self, packet_id: PacketId, reason_codes: Vec<ReasonCode>) {
        if self.state == State::Connected {
            self.packets.push_back(Packet::SubAck(SubAck {
                packet_id,
                reason_codes,
                properties: AckProperties::default(),
            }));
        }
    }

    /// The broker's answer to an [`Event::Unsubscribe`]: one code per filter (5.0).
    pub fn unsuback(&mut self, packet_id: PacketId, reason_codes: Vec<ReasonCode>) {
        if self.state == State::Connected {
            let reason_codes = if self.protocol() == ProtocolVersion::V5 {
                reason_codes
            } else {
                Vec::new()
            };
            self.packets.push_back(Packet::UnsubAck(UnsubAck {
                packet_id,
                reason_codes,
                properties: AckProperties::default(),
            }));
        }
    }

    fn handle_pubrec(&mut self, rec: PubResponse, now: Instant) {
        let Some(flow) = self.inflight.iter_mut().find(|f| f.id == rec.packet_id) else {
            if self.protocol() == ProtocolVersion::V5 {
                self.packets.push_back(Packet::PubRel(PubResponse {
                    packet_id: rec.packet_id,
                    reason_code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                    properties: AckProperties::default(),
                }));
            }
            return;
        };
        if !rec.reason_code.is_success() && rec.reason_code != ReasonCode::NO_MATCHING_SUBSCRIBERS {
            // The client refused it: the flow ends here (5.0 §4.3.3), no PUBREL.
            self.finish_flow(rec.packet_id, FlowState::Qos2Sent);
            self.pump(now);
            return;
        }
        flow.state = FlowState::Released;
        self.packets
            .push_back(Packet::PubRel(PubResponse::success(rec.packet_id)));
    }

    /// Ends the outbound flow `id` if it is in `expected` state: frees its id and its
    /// window slot. An acknowledgement for an unknown id is ignored (it may be a late
    /// answer to a flow a clean start discarded).
    fn finish_flow(&mut self, id: PacketId, expected: FlowState) {
        if let Some(i) = self
            .inflight
            .iter()
            .position(|f| f.id == id && f.state == expected)
        {
            if let Some(flow) = self.inflight.remove(i) {
                self.finished(&flow.outgoing);
            }
            self.ids.release(id);
        }
    }

    /// Reports that a journaled message needs no keeping for this client any more.
    fn finished(&mut self, outgoing: &Outgoing) {
        // QoS 0 deliveries are never journaled (they are not kept for offline clients).
        if outgoing.qos != QoS::AtMostOnce
            && let Some(journal_seq) = outgoing.message.journal_seq
        {
            self.events.push_back(Event::Finished { journal_seq });
        }
    }

    fn handle_disconnect(&mut self, disconnect: Disconnect) {
        if let Some(expiry) = disconnect.properties.session_expiry_interval {
            if self.session_expiry_interval == 0 && expiry != 0 {
                // [MQTT-3.14.2-2]: 0 in CONNECT cannot be raised in DISCONNECT.
                return self.protocol_error(
                    ReasonCode::PROTOCOL_ERROR,
                    "session expiry raised from 0 in DISCONNECT".into(),
                );
            }
            self.session_expiry_interval = expiry;
        }
        self.close(CloseReason::ClientDisconnect {
            reason: disconnect.reason_code,
        });
    }

    /// The decoder refused what the client sent: tell a 5.0 client why, then close.
    pub fn handle_decode_error(&mut self, error: &DecodeError, _now: Instant) {
        self.protocol_error(error.reason_code(), error.to_string());
    }

    /// The transport closed (or failed).
    pub fn handle_closed(&mut self, _now: Instant) {
        match self.state {
            State::Connected => self.close(CloseReason::ConnectionLost),
            State::Closing | State::Offline => {}
        }
        self.state = State::Offline;
        self.link = None;
        self.packets.clear();
    }

    /// Another connection takes over this client id: a 5.0 client hears why.
    pub fn take_over(&mut self) {
        self.server_close(ReasonCode::SESSION_TAKEN_OVER, CloseReason::TakenOver);
    }

    /// The broker is stopping.
    pub fn shut_down(&mut self) {
        self.server_close(
            ReasonCode::SERVER_SHUTTING_DOWN,
            CloseReason::ServerShuttingDown,
        );
    }

    fn protocol_error(&mut self, reason: ReasonCode, detail: String) {
        self.server_close(reason, CloseReason::ProtocolError { reason, detail });
    }

    /// Sends DISCONNECT with `reason` (5.0 only: in 3.1.1 only clients send DISCONNECT,
    /// so the server just closes) and reports `close`.
    fn server_close(&mut self, reason: ReasonCode, close: CloseReason) {
        if self.state != State::Connected {
            return;
        }
        if self.protocol() == ProtocolVersion::V5 {
            let mut properties = DisconnectProperties::default();
            if let CloseReason::ProtocolError { detail, .. } = &close
                && self
                    .link
                    .as_ref()
                    .is_some_and(|l| l.request_problem_information)
            {
                properties.reason_string = MqttString::try_from(detail.as_str()).ok();
            }
            self.packets.push_back(Packet::Disconnect(Disconnect {
                reason_code: reason,
                properties,
            }));
        }
        self.close(close);
    }

    fn close(&mut self, reason: CloseReason) {
        self.state = State::Closing;
        // Publishes handed to the broker but unanswered stay unanswered: the client
        // resends them on its next connection.
        self.unacknowledged.clear();
        self.events.push_back(Event::Closed(reason));
    }

    /// Hands the session a message for the client. Sent now if the window allows,
    /// otherwise kept in order until it does.
    pub fn deliver(&mut self, outgoing: Outgoing, now: Instant) {
        self.waiting.push_back(outgoing);
        if self.state == State::Connected {
            self.pump(now);
        }
    }

    /// Moves waiting messages onto the wire while the client's window allows. QoS 0
    /// messages take no window slot but keep their place in the order.
    fn pump(&mut self, now: Instant) {
        let window = self.window();
        while let Some(next) = self.waiting.front() {
            if next.qos != QoS::AtMostOnce && self.inflight.len() >= window {
                break;
            }
            let Some(outgoing) = self.waiting.pop_front() else {
                break;
            };
            if outgoing.message.is_expired(now) {
                self.dropped += 1;
                self.finished(&outgoing);
                continue;
            }
            if outgoing.qos == QoS::AtMostOnce {
                match self.build_publish(&outgoing, None, false, now) {
                    Some(publish) => self.packets.push_back(Packet::Publish(publish)),
                    None => self.dropped += 1,
                }
                self.finished(&outgoing);
                continue;
            }
            let Some(id) = self.ids.allocate() else {
                // Every id is in flight (only with a window of 65,535): wait for one.
                self.waiting.push_front(outgoing);
                break;
            };
            match self.build_publish(&outgoing, Some(id), false, now) {
                Some(publish) => {
                    self.packets.push_back(Packet::Publish(publish));
                    let state = if outgoing.qos == QoS::ExactlyOnce {
                        FlowState::Qos2Sent
                    } else {
                        FlowState::Qos1Sent
                    };
                    self.inflight.push_back(Flow {
                        id,
                        state,
                        outgoing,
                    });
                }
                None => {
                    // Too large for the client: dropped as if delivered [MQTT-3.1.2-25].
                    self.ids.release(id);
                    self.dropped += 1;
                    self.finished(&outgoing);
                }
            }
        }
    }

    fn window(&self) -> usize {
        let client = self
            .link
            .as_ref()
            .map_or(u16::MAX, |l| l.client_receive_maximum);
        usize::from(client.min(self.config.max_inflight.get()))
    }

    /// The PUBLISH for `outgoing`, or `None` when it would exceed the client's maximum
    /// packet size (after trying without properties the client can live without is not
    /// allowed: user properties must pass through, so it is dropped whole).
    fn build_publish(
        &mut self,
        outgoing: &Outgoing,
        packet_id: Option<PacketId>,
        dup: bool,
        now: Instant,
    ) -> Option<Publish> {
        let link = self.link.as_mut()?;
        let message = &outgoing.message;
        let mut properties = PublishProperties::default();
        let mut topic = message.topic.clone();
        let mut new_alias = None;
        if link.protocol == ProtocolVersion::V5 {
            properties = message.properties.clone();
            properties.subscription_identifiers = outgoing.subscription_ids.clone();
            if let Some(at) = message.expires_at {
                // What is left of the interval, rounded up [MQTT-3.3.2-6].
                let left = at.saturating_duration_since(now);
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                properties.message_expiry_interval = Some(u32::try_from(secs).unwrap_or(u32::MAX));
            }
            if !dup && link.client_alias_maximum > 0 {
                if let Some(alias) = link.aliases_out.get(&topic) {
                    properties.topic_alias = Some(*alias);
                    topic = TopicName::empty_for_alias();
                } else if let Some(alias) = u16::try_from(link.aliases_out.len() + 1)
                    .ok()
                    .filter(|&a| a <= link.client_alias_maximum)
                    .and_then(NonZeroU16::new)
                {
                    // Recorded only once the packet is known to be sent (below): a
                    // mapping the client never received would make the next message
                    // on this topic, sent as the alias alone, unreadable to it.
                    new_alias = Some(alias);
                    properties.topic_alias = Some(alias);
                }
            }
        }
        let publish = Publish {
            dup,
            qos: outgoing.qos,
            retain: outgoing.retain,
            topic,
            packet_id,
            payload: message.payload.clone(),
            properties,
        };
        if let Some(max) = link.client_maximum_packet_size {
            let len = codec::encoded_len(&Packet::Publish(publish.clone()), link.protocol).ok()?;
            if len > max as usize {
                return None;
            }
        }
        if let Some(alias) = new_alias {
            link.aliases_out.insert(publish.topic.clone(), alias);
        }
        Some(publish)
    }

    /// Checks keep-alive: 1.5 times the interval without a packet closes the connection.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state != State::Connected {
            return;
        }
        if let Some(deadline) = self.keep_alive_deadline()
            && now >= deadline
        {
            self.server_close(
                ReasonCode::KEEP_ALIVE_TIMEOUT,
                CloseReason::KeepAliveTimeout,
            );
        }
    }

    fn keep_alive_deadline(&self) -> Option<Instant> {
        let link = self.link.as_ref()?;
        let keep_alive = link.keep_alive?;
        Some(link.last_received + keep_alive + keep_alive / 2)
    }

    /// When [`Self::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state != State::Connected {
            return None;
        }
        self.keep_alive_deadline()
    }

    /// Gives back the capacity of queues that are empty: an idle connection should hold
    /// no buffers (a queue of packets keeps room for four, about a kilobyte, after use).
    pub fn release_spare_capacity(&mut self) {
        if self.packets.is_empty() && self.packets.capacity() > 0 {
            self.packets = VecDeque::new();
        }
        if self.events.is_empty() && self.events.capacity() > 0 {
            self.events = VecDeque::new();
        }
        if self.waiting.is_empty() && self.waiting.capacity() > 0 {
            self.waiting = VecDeque::new();
        }
        if self.inflight.is_empty() && self.inflight.capacity() > 0 {
            self.inflight = VecDeque::new();
        }
    }

    pub fn poll_packet(&mut self) -> Option<Packet> {
        self.packets.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}
