//! The client side of an MQTT session (3.1.1 and 5.0) as a sans-IO state machine.
//!
//! Owns everything a client must remember and decide: CONNECT/CONNACK, keep-alive, the
//! QoS 1/2 flows in both directions, packet ids, the server's receive maximum, resends
//! after a reconnect, topic aliases and the server's limits. It must not touch sockets,
//! tasks or clocks: time arrives as `now`, inputs are `handle_*` and the public requests,
//! outputs are `poll_packet`, `poll_event` and `poll_timeout` (the quinn-proto shape).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::mqtt::codec::{self, DecodeError};
use crate::mqtt::packet::{
    ConnAckProperties, Connect, ConnectProperties, Disconnect, DisconnectProperties, Packet,
    PacketId, ProtocolVersion, PubResponse, Publish, PublishProperties, QoS, ReasonCode, Subscribe,
    SubscribeProperties, Subscription, Unsubscribe, UnsubscribeProperties, UserProperty, Will,
};
use crate::mqtt::session::packet_id::PacketIdPool;
use crate::mqtt::string::MqttString;
use crate::mqtt::topic::{TopicFilter, TopicName};

/// How the client introduces itself and what it accepts. Filled from the gateway's
/// `upstream` config or from `fieldgate pub`/`sub` flags.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub protocol: ProtocolVersion,
    /// May be empty: the server then assigns one, which later reconnects reuse.
    pub client_id: MqttString,
    /// Clean Start (5.0) / Clean Session (3.1.1) on the first connection. Reconnects of a
    /// session the server keeps (`session_expiry_interval > 0`, or 3.1.1 without clean
    /// session) never ask for a clean start, so in-flight messages survive them.
    pub clean_start: bool,
    /// Seconds; 0 turns keep-alive off. A 5.0 server may replace it (Server Keep Alive).
    pub keep_alive: u16,
    pub username: Option<MqttString>,
    pub password: Option<Bytes>,
    pub will: Option<Will>,
    /// 5.0 Session Expiry Interval in seconds (0: the session ends with the connection).
    pub session_expiry_interval: u32,
    /// How many inbound QoS 1/2 messages we accept unacknowledged (5.0 Receive Maximum).
    pub receive_maximum: NonZeroU16,
    /// Largest packet we accept; the driver passes it to the decoder. 0 means no limit of
    /// our own (the protocol's 268,435,460 bytes), and CONNECT then leaves it out.
    pub maximum_packet_size: u32,
    /// Inbound topic aliases we accept (5.0); 0 refuses them.
    pub topic_alias_maximum: u16,
    /// Use outbound topic aliases when the server allows them (5.0).
    pub use_topic_aliases: bool,
    /// How long to wait for CONNACK, and for PINGRESP after a PINGREQ.
    pub response_timeout: Duration,
    /// Publishes accepted but not yet sent (offline, or the window is full). When full,
    /// [`ClientSession::publish`] refuses more: the caller holds them (bounded memory).
    pub max_pending: usize,
    pub user_properties: Vec<UserProperty>,
    /// Inbound QoS 1/2 messages are acknowledged (PUBACK, PUBREC) only when the
    /// application says so ([`ClientSession::ack_message`]), not on arrival: a message
    /// the application has not made safe yet is then sent again by the server after a
    /// crash, if it keeps our session. They arrive as [`Event::MessageToAck`].
    pub manual_acks: bool,
}

impl ClientConfig {
    /// Defaults for `client_id`: clean start, keep-alive 60 s, receive maximum 100,
    /// 1 MiB packets, 10 s response timeout, 1000 pending publishes.
    pub fn new(protocol: ProtocolVersion, client_id: MqttString) -> Self {
        ClientConfig {
            protocol,
            client_id,
            clean_start: true,
            keep_alive: 60,
            username: None,
            password: None,
            will: None,
            session_expiry_interval: 0,
            receive_maximum: NonZeroU16::MIN.saturating_add(99),
            maximum_packet_size: 1 << 20,
            topic_alias_maximum: 16,
            use_topic_aliases: true,
            response_timeout: Duration::from_secs(10),
            max_pending: 1000,
            user_properties: Vec::new(),
            manual_acks: false,
        }
    }
}

/// Identifies one [`ClientSession::publish`] call in [`Event::Delivered`] and
/// [`Event::PublishFailed`]. Unlike packet ids these are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublishToken(pub u64);

/// What the application hands back to [`ClientSession::ack_message`] once it has dealt
/// with an inbound QoS 1/2 message ([`ClientConfig::manual_acks`]). It carries the
/// server session it belongs to: after the server lost our session, a packet id may name
/// a new message, which an old acknowledgement must not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InboundAck {
    pub packet_id: PacketId,
    epoch: u64,
}

/// Identifies one subscribe or unsubscribe request in its acknowledgement event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestToken(pub u64);

/// What happened, for the driver and the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// CONNACK accepted the connection.
    Connected { session_present: bool },
    /// CONNACK refused the connection: close it. Whether to retry depends on `reason`
    /// (bad credentials will not fix themselves).
    ConnectionRefused {
        reason: ReasonCode,
        reason_string: Option<MqttString>,
    },
    /// The connection is over (see [`DisconnectCause`]): close the transport.
    /// In-flight messages stay in the session for the next connection.
    Disconnected(DisconnectCause),
    /// An application message from the server, topic alias already resolved.
    Message(Publish),
    /// With [`ClientConfig::manual_acks`]: an inbound QoS 1/2 message to acknowledge with
    /// [`ClientSession::ack_message`] once dealt with, in the order they came
    /// ([MQTT-4.6.0-2]). Until then the server may send it again (after a reconnect), and
    /// that copy is not reported again.
    MessageToAck(Publish, InboundAck),
    /// A QoS 1/2 publish completed (PUBACK / PUBCOMP); a QoS 0 one was handed to the
    /// transport.
    Delivered(PublishToken),
    /// The server refused a publish, or it cannot be sent (too large for the server,
    /// retain not supported). It will not be retried.
    PublishFailed {
        token: PublishToken,
        reason: ReasonCode,
    },
    /// SUBACK for [`ClientSession::subscribe`]: one code per filter (granted QoS or error).
    Subscribed {
        token: RequestToken,
        reason_codes: Vec<ReasonCode>,
    },
    /// The server had no session for us, so the subscriptions made earlier were sent again;
    /// these are its answers, one per filter, in the order subscribed.
    Resubscribed { reason_codes: Vec<ReasonCode> },
    /// UNSUBACK for [`ClientSession::unsubscribe`] (empty codes under 3.1.1).
    Unsubscribed {
        token: RequestToken,
        reason_codes: Vec<ReasonCode>,
    },
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectCause {
    /// We asked for it with [`ClientSession::disconnect`].
    Requested,
    /// The server sent DISCONNECT (5.0).
    ByServer {
        reason: ReasonCode,
        reason_string: Option<MqttString>,
    },
    /// The transport closed under us.
    ConnectionLost,
    /// No CONNACK within the response timeout.
    ConnectTimeout,
    /// No PINGRESP within the response timeout: the link is dead or stalled.
    KeepAliveTimeout,
    /// The server broke the protocol; under 5.0 we sent DISCONNECT with `reason`.
    ProtocolViolation { reason: ReasonCode, detail: String },
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the pending-publish queue is full ({0} messages): retry when one is delivered")]
    QueueFull(usize),
    #[error("not connected: QoS 0 messages are not kept while offline")]
    NotConnected,
    #[error("no more than 65535 packet identifiers can be in flight")]
    NoPacketId,
    #[error("SUBSCRIBE and UNSUBSCRIBE need at least one topic filter")]
    NoTopicFilters,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No transport.
    Idle,
    /// CONNECT sent, waiting for CONNACK until `deadline`.
    Connecting {
        deadline: Instant,
    },
    Connected,
    /// DISCONNECT queued; the driver closes the transport after sending it.
    Closing,
}

/// Where an outbound QoS 1/2 message is in its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    AwaitingAck,
    /// PUBREC received and PUBREL sent; waiting for PUBCOMP.
    AwaitingComp,
}

#[derive(Debug, Clone)]
struct Inflight {
    token: PublishToken,
    /// The message as the caller gave it (full topic, no alias, no packet id).
    message: Publish,
    stage: Stage,
}

#[derive(Debug, Clone)]
struct Pending {
    token: PublishToken,
    message: Publish,
}

/// An inbound QoS 1/2 message under `manual_acks`, between its arrival and the PUBACK
/// or PUBREC on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AppAck {
    qos: QoS,
    /// The application acknowledged it while no connection was up: the answer goes out
    /// when the server sends it again (it must, with DUP, after a reconnect with our
    /// session).
    acked: bool,
}

/// Who asked for a SUBSCRIBE: the caller, or the session re-making lost subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Caller(RequestToken),
    Resubscribe,
}

/// A SUBSCRIBE or UNSUBSCRIBE, queued or sent. The body is kept until the answer comes,
/// so a request whose answer a lost connection swallowed can be sent again.
#[derive(Debug, Clone)]
enum Request {
    Subscribe(Origin, Subscribe),
    Unsubscribe(RequestToken, Unsubscribe),
}

/// What the server told us it accepts (CONNACK properties, with 5.0 defaults).
#[derive(Debug, Clone, Copy)]
struct ServerLimits {
    receive_maximum: u16,
    maximum_packet_size: u32,
    topic_alias_maximum: u16,
    maximum_qos: QoS,
    retain_available: bool,
}

impl ServerLimits {
    const DEFAULT: ServerLimits = ServerLimits {
        receive_maximum: u16::MAX,
        maximum_packet_size: codec::MAX_REMAINING_LENGTH + 5,
        topic_alias_maximum: 0,
        maximum_qos: QoS::ExactlyOnce,
        retain_available: true,
    };

    fn from_connack(p: &ConnAckProperties) -> Self {
        let d = Self::DEFAULT;
        ServerLimits {
            receive_maximum: p.receive_maximum.map_or(d.receive_maximum, NonZeroU16::get),
            maximum_packet_size: p
                .maximum_packet_size
                .map_or(d.maximum_packet_size, |m| m.get()),
            topic_alias_maximum: p.topic_alias_maximum.unwrap_or(0),
            maximum_qos: p.maximum_qos.unwrap_or(QoS::ExactlyOnce),
            retain_available: p.retain_available.unwrap_or(true),
        }
    }
}

/// One client session, across any number of connections.
#[derive(Debug)]
pub struct ClientSession {
    config: ClientConfig,
    state: State,
    /// The latest `now` we were given: packets queued are stamped with it.
    now: Option<Instant>,
    /// True once a server has acknowledged a session it may keep; reconnects then do not
    /// ask for a clean start.
    has_server_session: bool,
    /// Effective keep-alive (a 5.0 server may replace ours).
    keep_alive: u16,
    limits: ServerLimits,

    ids: PacketIdPool,
    /// Outbound QoS 1/2 messages by packet id, and their send order (for resends).
    inflight: HashMap<PacketId, Inflight>,
    send_order: VecDeque<PacketId>,
    /// After CONNACK with Session Present: the in-flight ids not yet resent on this
    /// connection, in send order. They go out as the server's Receive Maximum allows.
    resend: VecDeque<PacketId>,
    pending: VecDeque<Pending>,
    requests: VecDeque<Request>,
    /// Requests sent and not yet answered, by packet id, with their place in the send
    /// order (ids wrap, so their order is not the send order).
    awaiting: HashMap<PacketId, (u64, Request)>,
    /// How many requests have been sent: the next one's place in the send order.
    requests_sent: u64,
    /// Subscriptions the server granted and we did not unsubscribe: made again when a
    /// connection starts without the server's session.
    subscriptions: Vec<Subscription>,
    /// Inbound QoS 2 ids between PUBREC and PUBREL: a PUBLISH with one of these is a
    /// duplicate and is not delivered again.
    incoming_qos2: BTreeSet<PacketId>,
    /// With `manual_acks`: inbound QoS 1/2 messages reported and not yet acknowledged
    /// on the wire, by packet id (see [`AppAck`]).
    awaiting_app: HashMap<PacketId, AppAck>,
    /// Counts the server sessions this session has seen; in every [`InboundAck`].
    epoch: u64,
    /// Topic aliases (5.0): ours toward the server, and the server's toward us.
    outbound_aliases: HashMap<TopicName, NonZeroU16>,
    inbound_aliases: HashMap<u16, TopicName>,

    last_sent: Option<Instant>,
    ping_deadline: Option<Instant>,
    next_token: u64,
    out: VecDeque<Packet>,
    events: VecDeque<Event>,
}

impl ClientSession {
    /// A session that has not connected yet.
    pub fn new(config: ClientConfig) -> Self {
        ClientSession {
            keep_alive: config.keep_alive,
            config,
            state: State::Idle,
            now: None,
            has_server_session: false,
            limits: ServerLimits::DEFAULT,
            ids: PacketIdPool::new(),
            inflight: HashMap::new(),
            send_order: VecDeque::new(),
            resend: VecDeque::new(),
            pending: VecDeque::new(),
            requests: VecDeque::new(),
            awaiting: HashMap::new(),
            requests_sent: 0,
            subscriptions: Vec::new(),
            incoming_qos2: BTreeSet::new(),
            awaiting_app: HashMap::new(),
            epoch: 0,
            outbound_aliases: HashMap::new(),
            inbound_aliases: HashMap::new(),
            last_sent: None,
            ping_deadline: None,
            next_token: 0,
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The protocol version of this session.
    pub fn protocol(&self) -> ProtocolVersion {
        self.config.protocol
    }

    /// The client identifier in use (the server-assigned one once known).
    pub fn client_id(&self) -> &MqttString {
        &self.config.client_id
    }

    /// True between CONNACK and the end of the connection.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Largest packet to accept from the server: give it to the decoder.
    pub fn max_incoming_packet_size(&self) -> u32 {
        match self.config.maximum_packet_size {
            0 => u32::MAX,
            limit => limit,
        }
    }

    /// Outbound QoS 1/2 messages sent and not yet acknowledged.
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Publishes accepted and not yet sent.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Would [`ClientSession::publish`] accept a QoS 1/2 message now?
    pub fn can_accept_publish(&self) -> bool {
        self.pending.len() < self.config.max_pending
    }

    /// A transport connection is up: sends CONNECT.
    pub fn handle_connected(&mut self, now: Instant) {
        self.now = Some(now);
        self.reset_connection_state();
        let clean_start = self.config.clean_start && !self.has_server_session;
        let mut properties = ConnectProperties::default();
        if self.config.protocol == ProtocolVersion::V5 {
            properties.session_expiry_interval =
                Some(self.config.session_expiry_interval).filter(|&s| s > 0);
            properties.receive_maximum = Some(self.config.receive_maximum);
            properties.maximum_packet_size =
                std::num::NonZeroU32::new(self.config.maximum_packet_size);
            properties.topic_alias_maximum =
                Some(self.config.topic_alias_maximum).filter(|&t| t > 0);
            properties.user_properties = self.config.user_properties.clone();
        }
        let connect = Connect {
            protocol: self.config.protocol,
            clean_start,
            keep_alive: self.config.keep_alive,
            client_id: self.config.client_id.clone(),
            will: self.config.will.clone(),
            username: self.config.username.clone(),
            password: self.config.password.clone(),
            properties,
        };
        self.send(Packet::Connect(Box::new(connect)));
        self.state = State::Connecting {
            deadline: now + self.config.response_timeout,
        };
    }

    /// The transport closed (or failed). In-flight messages are kept for the next
    /// connection; the caller reconnects when it sees fit.
    pub fn handle_closed(&mut self, now: Instant) {
        self.now = Some(now);
        let was = self.state;
        self.state = State::Idle;
        self.out.clear();
        match was {
            State::Idle => {}
            State::Closing => self.event(Event::Disconnected(DisconnectCause::Requested)),
            State::Connecting { .. } | State::Connected => {
                self.event(Event::Disconnected(DisconnectCause::ConnectionLost));
            }
        }
    }

    /// The decoder refused what the server sent: end the connection, telling a 5.0
    /// server why.
    pub fn handle_decode_error(&mut self, error: &DecodeError, now: Instant) {
        self.now = Some(now);
        self.violation(error.reason_code(), error.to_string());
    }

    /// Time passed: keep-alive, CONNACK and PINGRESP deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        match self.state {
            State::Connecting { deadline } if now >= deadline => {
                self.end(DisconnectCause::ConnectTimeout);
            }
            State::Connected => {
                if self.ping_deadline.is_some_and(|d| now >= d) {
                    self.end(DisconnectCause::KeepAliveTimeout);
                } else if self.ping_deadline.is_none()
                    && self.next_ping_at().is_some_and(|t| now >= t)
                {
                    self.send(Packet::PingReq);
                    self.ping_deadline = Some(now + self.config.response_timeout);
                }
            }
            _ => {}
        }
    }

    /// The earliest time [`ClientSession::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Connecting { deadline } => Some(deadline),
            State::Connected => self.ping_deadline.or_else(|| self.next_ping_at()),
            State::Idle | State::Closing => None,
        }
    }

    fn next_ping_at(&self) -> Option<Instant> {
        if self.keep_alive == 0 {
            return None;
        }
        let last = self.last_sent?;
        Some(last + Duration::from_secs(u64::from(self.keep_alive)))
    }

    /// The next packet to write, if any. Write them in the order returned.
    pub fn poll_packet(&mut self) -> Option<Packet> {
        self.out.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Queues an application message. QoS 1/2 messages are kept until acknowledged, across
    /// reconnects; QoS 0 ones only go out while connected. The message's `packet_id` and
    /// `dup` are the session's business and are ignored here.
    pub fn publish(
        &mut self,
        message: Publish,
        now: Instant,
    ) -> Result<PublishToken, SessionError> {
        self.now = Some(now);
        if message.qos == QoS::AtMostOnce {
            if self.state != State::Connected {
                return Err(SessionError::NotConnected);
            }
            let token = self.token();
            self.send_qos0(token, message);
            return Ok(token);
        }
        if !self.can_accept_publish() {
            return Err(SessionError::QueueFull(self.config.max_pending));
        }
        let token = self.token();
        self.pending.push_back(Pending { token, message });
        self.pump();
        Ok(token)
    }

    /// The application has dealt with an inbound message it got as
    /// [`Event::MessageToAck`]: sends its PUBACK (QoS 1) or PUBREC (QoS 2). Without a
    /// connection the answer goes out when the server sends the message again. An
    /// acknowledgement from before the server lost our session, or a second one, does
    /// nothing.
    pub fn ack_message(&mut self, ack: InboundAck, now: Instant) {
        self.now = Some(now);
        if ack.epoch != self.epoch {
            return;
        }
        let id = ack.packet_id;
        let Some(entry) = self.awaiting_app.get_mut(&id) else {
            return;
        };
        if self.state != State::Connected {
            entry.acked = true;
            return;
        }
        let qos = entry.qos;
        self.awaiting_app.remove(&id);
        self.answer_inbound(id, qos);
    }

    /// PUBACK, or PUBREC (the id then waits for PUBREL).
    fn answer_inbound(&mut self, id: PacketId, qos: QoS) {
        if qos == QoS::ExactlyOnce {
            self.incoming_qos2.insert(id);
            self.send(Packet::PubRec(PubResponse::success(id)));
        } else {
            self.send(Packet::PubAck(PubResponse::success(id)));
        }
    }

    /// Subscribes; the answer comes as [`Event::Subscribed`]. Queued until connected.
    /// The subscriptions are remembered and made again if the server loses our session.
    pub fn subscribe(
        &mut self,
        subscriptions: Vec<Subscription>,
        properties: SubscribeProperties,
        now: Instant,
    ) -> Result<RequestToken, SessionError> {
        self.now = Some(now);
        if subscriptions.is_empty() {
            return Err(SessionError::NoTopicFilters);
        }
        let token = RequestToken(self.next_token());
        let subscribe = Subscribe {
            // Replaced by a free id when sent.
            packet_id: PacketId::MIN,
            subscriptions,
            properties,
        };
        self.requests
            .push_back(Request::Subscribe(Origin::Caller(token), subscribe));
        self.pump();
        Ok(token)
    }

    /// Unsubscribes; the answer comes as [`Event::Unsubscribed`]. Queued until connected.
    pub fn unsubscribe(
        &mut self,
        filters: Vec<TopicFilter>,
        properties: UnsubscribeProperties,
        now: Instant,
    ) -> Result<RequestToken, SessionError> {
        self.now = Some(now);
        if filters.is_empty() {
            return Err(SessionError::NoTopicFilters);
        }
        self.subscriptions.retain(|s| !filters.contains(&s.filter));
        let token = RequestToken(self.next_token());
        let unsubscribe = Unsubscribe {
            packet_id: PacketId::MIN,
            filters,
            properties,
        };
        self.requests
            .push_back(Request::Unsubscribe(token, unsubscribe));
        self.pump();
        Ok(token)
    }

    /// Ends the connection gracefully: sends DISCONNECT (the server then drops our will,
    /// unless 5.0 `reason` is 0x04 "Disconnect with Will Message"). The driver closes the
    /// transport once the packet is written.
    pub fn disconnect(&mut self, reason: ReasonCode, now: Instant) {
        self.now = Some(now);
        if matches!(self.state, State::Idle | State::Closing) {
            return;
        }
        self.send(Packet::Disconnect(Disconnect {
            reason_code: reason,
            properties: DisconnectProperties::default(),
        }));
        self.state = State::Closing;
    }

    /// Takes one packet from the server.
    pub fn handle_packet(&mut self, packet: Packet, now: Instant) {
        self.now = Some(now);
        // PINGRESP answers our PINGREQ and clears its deadline. Before CONNACK there is no
        // PINGREQ to answer: the match below treats it, like any non-CONNACK packet, as a
        // protocol violation.
        if let Packet::PingResp = packet
            && !matches!(self.state, State::Connecting { .. })
        {
            self.ping_deadline = None;
            return;
        }
        match self.state {
            State::Connecting { .. } => match packet {
                Packet::ConnAck(ack) => self.on_connack(ack),
                other => self.violation(
                    ReasonCode::PROTOCOL_ERROR,
                    format!("{} before CONNACK", other.packet_type()),
                ),
            },
            // We said DISCONNECT before the CONNACK came: nothing left to agree on.
            State::Closing if matches!(packet, Packet::ConnAck(_)) => {}
            State::Connected | State::Closing => self.on_packet_connected(packet),
            State::Idle => {}
        }
    }

    fn on_connack(&mut self, ack: crate::mqtt::packet::ConnAck) {
        if !ack.reason_code.is_success() {
            self.state = State::Idle;
            self.event(Event::ConnectionRefused {
                reason: ack.reason_code,
                reason_string: ack.properties.reason_string,
            });
            return;
        }
        let props = &ack.properties;
        self.limits = ServerLimits::from_connack(props);
        if let Some(keep_alive) = props.server_keep_alive {
            self.keep_alive = keep_alive;
        }
        if let Some(id) = &props.assigned_client_identifier {
            // Reconnects must present it to resume the session.
            self.config.client_id = id.clone();
        }
        self.state = State::Connected;
        let session_expiry = props
            .session_expiry_interval
            .unwrap_or(self.config.session_expiry_interval);
        let keeps_session = match self.config.protocol {
            ProtocolVersion::V5 => session_expiry > 0,
            ProtocolVersion::V311 => !self.config.clean_start,
        };
        // Connected first: what the resends and restarts report happens on this connection.
        self.event(Event::Connected {
            session_present: ack.session_present,
        });
        if ack.session_present {
            self.resend_inflight();
        } else {
            self.restart_flows();
        }
        self.has_server_session = keeps_session;
        self.pump();
    }

    /// After CONNACK with Session Present: resend what is unacknowledged, in the original
    /// order, PUBLISH with DUP set and PUBREL as it was ([MQTT-4.4.0-1]).
    fn resend_inflight(&mut self) {
        self.resend = self.send_order.clone();
        self.resend_within_window();
        self.requeue_unanswered();
    }

    /// Sends the next resends while fewer messages than the server's Receive Maximum are on
    /// this connection. The new server may allow fewer than the old one did, and every
    /// resent PUBLISH counts against it ([MQTT-3.3.4-7]); sending them all at once would
    /// get the connection closed with Receive Maximum exceeded, again at every reconnect.
    /// The rest follow, still in order and before any new message, as the window frees.
    fn resend_within_window(&mut self) {
        let window = usize::from(self.limits.receive_maximum);
        // `resend` only holds ids still in `inflight` (see `complete` and `on_pubrec`).
        while self.inflight.len().saturating_sub(self.resend.len()) < window {
            let Some(id) = self.resend.pop_front() else {
                break;
            };
            let Some(entry) = self.inflight.get(&id) else {
                continue;
            };
            let packet = match entry.stage {
                Stage::AwaitingAck => {
                    // This server may accept less than the one the message first went to
                    // (size, retain); resending it anyway would end every reconnect.
                    if let Some(reason) = self.refuse_reason(&entry.message) {
                        if let Some(entry) = self.complete(id) {
                            self.event(Event::PublishFailed {
                                token: entry.token,
                                reason,
                            });
                        }
                        continue;
                    }
                    let mut publish = entry.message.clone();
                    publish.packet_id = Some(id);
                    publish.dup = true;
                    Packet::Publish(publish)
                }
                Stage::AwaitingComp => Packet::PubRel(PubResponse::success(id)),
            };
            self.send(packet);
        }
    }

    /// SUBSCRIBE/UNSUBSCRIBE whose answer the old connection lost are not resent by the
    /// protocol: they go back to the front of the queue and get new ids.
    fn requeue_unanswered(&mut self) {
        let mut unanswered: Vec<(PacketId, (u64, Request))> = self.awaiting.drain().collect();
        // In the order they were sent, not by id: after 65535 comes 1, and putting an
        // UNSUBSCRIBE before the SUBSCRIBE of the same filter would invert the outcome.
        unanswered.sort_by_key(|(_, (sent, _))| *sent);
        for (id, (_, request)) in unanswered.into_iter().rev() {
            self.ids.release(id);
            self.requests.push_front(request);
        }
    }

    /// After CONNACK without a session: the server forgot our in-flight messages, so they
    /// start over as new messages (at least once is kept; the spec's "discard" would lose
    /// them). A QoS 2 message whose PUBREC we had is the server's already: it counts as
    /// delivered.
    fn restart_flows(&mut self) {
        self.resend.clear();
        let order: Vec<PacketId> = self.send_order.drain(..).collect();
        let mut restart = Vec::new();
        for id in order {
            if let Some(entry) = self.inflight.remove(&id) {
                match entry.stage {
                    Stage::AwaitingAck => restart.push(Pending {
                        token: entry.token,
                        message: entry.message,
                    }),
                    Stage::AwaitingComp => self.event(Event::Delivered(entry.token)),
                }
            }
        }
        for p in restart.into_iter().rev() {
            self.pending.push_front(p);
        }
        self.incoming_qos2.clear();
        // The server forgot the messages it was waiting for us to acknowledge: what the
        // application acknowledges from now on belongs to this new session only.
        self.awaiting_app.clear();
        self.epoch += 1;
        self.requeue_unanswered();
        self.ids.clear();
        if !self.subscriptions.is_empty() {
            // The server has no subscriptions of ours: make the granted ones again.
            let subscribe = Subscribe {
                packet_id: PacketId::MIN,
                subscriptions: std::mem::take(&mut self.subscriptions),
                properties: SubscribeProperties::default(),
            };
            self.requests
                .push_front(Request::Subscribe(Origin::Resubscribe, subscribe));
        }
    }

    fn on_packet_connected(&mut self, packet: Packet) {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish),
            Packet::PubAck(r) => self.on_puback(r),
            Packet::PubRec(r) => self.on_pubrec(r),
            Packet::PubRel(r) => self.on_pubrel(r),
            Packet::PubComp(r) => self.on_pubcomp(r),
            Packet::SubAck(ack) => match self.take_awaiting(ack.packet_id) {
                Some(Request::Subscribe(origin, request)) => {
                    self.remember_granted(&request.subscriptions, &ack.reason_codes);
                    let reason_codes = ack.reason_codes;
                    self.event(match origin {
                        Origin::Caller(token) => Event::Subscribed {
                            token,
                            reason_codes,
                        },
                        Origin::Resubscribe => Event::Resubscribed { reason_codes },
                    });
                }
                other => self.unexpected_ack("SUBACK", ack.packet_id, other),
            },
            Packet::UnsubAck(ack) => match self.take_awaiting(ack.packet_id) {
                Some(Request::Unsubscribe(token, request)) => {
                    // `unsubscribe` already forgot these filters, but a SUBACK for an
                    // earlier SUBSCRIBE of them (the caller's, or a resubscription) may
                    // have arrived since and remembered them again. The server handles
                    // requests in order, so after this answer they are gone there.
                    self.subscriptions
                        .retain(|s| !request.filters.contains(&s.filter));
                    self.event(Event::Unsubscribed {
                        token,
                        reason_codes: ack.reason_codes,
                    });
                }
                other => self.unexpected_ack("UNSUBACK", ack.packet_id, other),
            },
            Packet::Disconnect(d) => {
                self.state = State::Idle;
                self.out.clear();
                self.event(Event::Disconnected(DisconnectCause::ByServer {
                    reason: d.reason_code,
                    reason_string: d.properties.reason_string,
                }));
            }
            Packet::Auth(_) => self.violation(
                ReasonCode::PROTOCOL_ERROR,
                "AUTH without an authentication method in CONNECT".into(),
            ),
            Packet::PingResp => {}
            other @ (Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)
            | Packet::PingReq) => self.violation(
                ReasonCode::PROTOCOL_ERROR,
                format!("a server does not send {}", other.packet_type()),
            ),
        }
        self.pump();
    }

    fn take_awaiting(&mut self, id: PacketId) -> Option<Request> {
        let (_, request) = self.awaiting.remove(&id)?;
        self.ids.release(id);
        Some(request)
    }

    /// An acknowledgement for no request of ours, or of the wrong kind: a protocol error.
    fn unexpected_ack(&mut self, what: &str, id: PacketId, taken: Option<Request>) {
        if let Some(request) = taken {
            // Wrong kind: keep waiting for the right answer after the reconnect.
            self.requests.push_front(request);
        }
        self.violation(
            ReasonCode::PROTOCOL_ERROR,
            format!("{what} for packet id {id}, which no matching request used"),
        );
    }

    /// Records the filters a SUBACK granted, replacing older ones with the same filter.
    fn remember_granted(&mut self, requested: &[Subscription], codes: &[ReasonCode]) {
        for (sub, code) in requested.iter().zip(codes) {
            if code.is_success() {
                self.subscriptions.retain(|s| s.filter != sub.filter);
                self.subscriptions.push(sub.clone());
            }
        }
    }

    fn on_publish(&mut self, mut publish: Publish) {
        if let Err(detail) = self.resolve_inbound_alias(&mut publish) {
            self.violation(ReasonCode::TOPIC_ALIAS_INVALID, detail);
            return;
        }
        match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => self.event(Event::Message(publish)),
            (qos, Some(id)) if self.config.manual_acks && !self.incoming_qos2.contains(&id) => {
                self.on_publish_to_ack(publish, qos, id);
            }
            (QoS::AtLeastOnce, Some(id)) => {
                self.event(Event::Message(publish));
                self.send(Packet::PubAck(PubResponse::success(id)));
            }
            (QoS::ExactlyOnce, Some(id)) => {
                if !self.incoming_qos2.contains(&id) {
                    if self.incoming_qos2.len() >= usize::from(self.config.receive_maximum.get()) {
                        self.violation(
                            ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                            "more unacknowledged QoS 2 messages than our Receive Maximum".into(),
                        );
                        return;
                    }
                    self.incoming_qos2.insert(id);
                    self.event(Event::Message(publish));
                }
                // A duplicate (DUP after a reconnect) is acknowledged again, not delivered.
                self.send(Packet::PubRec(PubResponse::success(id)));
            }
            // The codec guarantees a packet id for QoS 1/2.
            (_, None) => {}
        }
    }

    /// An inbound QoS 1/2 PUBLISH under `manual_acks` (a QoS 2 id already answered with
    /// PUBREC went the usual way: PUBREC again).
    fn on_publish_to_ack(&mut self, publish: Publish, qos: QoS, id: PacketId) {
        match self.awaiting_app.get(&id).copied() {
            // Sent again while the application still has it: reported once is enough.
            Some(AppAck { acked: false, .. }) => {}
            // Acknowledged while we were offline, and this is the server's resend.
            Some(AppAck { acked: true, .. }) if publish.dup => {
                self.awaiting_app.remove(&id);
                self.answer_inbound(id, qos);
            }
            // Not a resend: the id names a new message (the old one was finished on the
            // server's side), so it is reported like any other.
            entry => {
                if entry.is_none()
                    && self.awaiting_app.len() + self.incoming_qos2.len()
                        >= usize::from(self.config.receive_maximum.get())
                {
                    self.violation(
                        ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                        "more unacknowledged QoS 1/2 messages than our Receive Maximum".into(),
                    );
                    return;
                }
                self.awaiting_app.insert(id, AppAck { qos, acked: false });
                let ack = InboundAck {
                    packet_id: id,
                    epoch: self.epoch,
                };
                self.event(Event::MessageToAck(publish, ack));
            }
        }
    }

    fn resolve_inbound_alias(&mut self, publish: &mut Publish) -> Result<(), String> {
        let Some(alias) = publish.properties.topic_alias else {
            return Ok(());
        };
        if alias.get() > self.config.topic_alias_maximum {
            return Err(format!(
                "Topic Alias {alias} above our Topic Alias Maximum {}",
                self.config.topic_alias_maximum
            ));
        }
        if publish.topic.is_empty() {
            match self.inbound_aliases.get(&alias.get()) {
                Some(topic) => publish.topic = topic.clone(),
                None => return Err(format!("Topic Alias {alias} was never set")),
            }
        } else {
            self.inbound_aliases
                .insert(alias.get(), publish.topic.clone());
        }
        publish.properties.topic_alias = None;
        Ok(())
    }

    fn on_puback(&mut self, r: PubResponse) {
        let Some(entry) = self.inflight.get(&r.packet_id) else {
            return; // late or duplicate: nothing of ours is waiting for it
        };
        if entry.message.qos != QoS::AtLeastOnce {
            return;
        }
        let entry = self.complete(r.packet_id);
        if let Some(entry) = entry {
            self.report(entry.token, r.reason_code);
        }
    }

    fn on_pubrec(&mut self, r: PubResponse) {
        let id = r.packet_id;
        match self.inflight.get_mut(&id) {
            Some(entry) if entry.message.qos == QoS::ExactlyOnce => {
                if !r.reason_code.is_success() {
                    // 5.0: a refused QoS 2 message ends here, without PUBREL.
                    if let Some(entry) = self.complete(id) {
                        self.report(entry.token, r.reason_code);
                    }
                    return;
                }
                entry.stage = Stage::AwaitingComp;
                // A PUBREC for a message not yet resent: the PUBREL below puts it on
                // this connection.
                self.resend.retain(|&i| i != id);
                self.send(Packet::PubRel(PubResponse::success(id)));
            }
            _ => {
                // Unknown id: answer so the server can finish its side ([MQTT-4.3.3]).
                let mut rel = PubResponse::success(id);
                if self.config.protocol == ProtocolVersion::V5 {
                    rel.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                }
                self.send(Packet::PubRel(rel));
            }
        }
    }

    fn on_pubcomp(&mut self, r: PubResponse) {
        let waiting = self
            .inflight
            .get(&r.packet_id)
            .is_some_and(|e| e.stage == Stage::AwaitingComp);
        if waiting && let Some(entry) = self.complete(r.packet_id) {
            self.event(Event::Delivered(entry.token));
        }
    }

    fn on_pubrel(&mut self, r: PubResponse) {
        let known = self.incoming_qos2.remove(&r.packet_id);
        let mut comp = PubResponse::success(r.packet_id);
        if !known && self.config.protocol == ProtocolVersion::V5 {
            comp.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
        }
        self.send(Packet::PubComp(comp));
    }

    /// Ends an outbound flow: frees the id and the window slot.
    fn complete(&mut self, id: PacketId) -> Option<Inflight> {
        let entry = self.inflight.remove(&id)?;
        // Acknowledgements mostly come in send order: the id is then at the front.
        if self.send_order.front() == Some(&id) {
            self.send_order.pop_front();
        } else {
            self.send_order.retain(|&i| i != id);
        }
        if !self.resend.is_empty() {
            self.resend.retain(|&i| i != id);
        }
        self.ids.release(id);
        Some(entry)
    }

    fn report(&mut self, token: PublishToken, reason: ReasonCode) {
        if reason.is_success() {
            self.event(Event::Delivered(token));
        } else {
            self.event(Event::PublishFailed { token, reason });
        }
    }

    /// Moves queued work onto the wire while connected and the window allows.
    fn pump(&mut self) {
        if self.state != State::Connected {
            return;
        }
        while let Some(request) = self.requests.pop_front() {
            let Some(id) = self.ids.allocate() else {
                self.requests.push_front(request);
                break;
            };
            let (request, packet) = match request {
                Request::Subscribe(origin, mut s) => {
                    s.packet_id = id;
                    let packet = Packet::Subscribe(s.clone());
                    (Request::Subscribe(origin, s), packet)
                }
                Request::Unsubscribe(token, mut u) => {
                    u.packet_id = id;
                    let packet = Packet::Unsubscribe(u.clone());
                    (Request::Unsubscribe(token, u), packet)
                }
            };
            self.awaiting.insert(id, (self.requests_sent, request));
            self.requests_sent += 1;
            self.send(packet);
        }
        // Resends first: while any wait, the window is full and no new message goes out.
        self.resend_within_window();
        let window = usize::from(self.limits.receive_maximum);
        while self.inflight.len() < window {
            let Some(Pending { token, mut message }) = self.pending.pop_front() else {
                break;
            };
            if let Some(reason) = self.refuse_reason(&message) {
                self.event(Event::PublishFailed { token, reason });
                continue;
            }
            // The server's Maximum QoS: sending above it is a protocol error, and QoS 1
            // still delivers at least once.
            message.qos = message.qos.min(self.limits.maximum_qos);
            if message.qos == QoS::AtMostOnce {
                self.send_qos0(token, message);
                continue;
            }
            let Some(id) = self.ids.allocate() else {
                self.pending.push_front(Pending { token, message });
                break;
            };
            let mut wire = message.clone();
            wire.packet_id = Some(id);
            wire.dup = false;
            self.apply_outbound_alias(&mut wire);
            self.inflight.insert(
                id,
                Inflight {
                    token,
                    message,
                    stage: Stage::AwaitingAck,
                },
            );
            self.send_order.push_back(id);
            self.send(Packet::Publish(wire));
        }
    }

    /// Why `message` cannot go to this server, if it cannot.
    fn refuse_reason(&self, message: &Publish) -> Option<ReasonCode> {
        if message.retain && !self.limits.retain_available {
            return Some(ReasonCode::RETAIN_NOT_SUPPORTED);
        }
        // Runs for every message: a cheap upper bound settles the common case (no
        // properties, well under the limit) without encoding anything.
        if message.properties == PublishProperties::default() {
            // Fixed header (at most 5), topic length prefix and topic, packet id, an empty
            // Property Length, payload.
            let bound = 5 + 2 + message.topic.as_str().len() + 2 + 1 + message.payload.len();
            if bound as u64 <= u64::from(self.limits.maximum_packet_size) {
                return None;
            }
        }
        let mut probe = message.clone();
        if probe.qos != QoS::AtMostOnce {
            probe.packet_id = Some(PacketId::MIN);
        }
        if self.fits_server(&Packet::Publish(probe)) {
            None
        } else {
            Some(ReasonCode::PACKET_TOO_LARGE)
        }
    }

    fn send_qos0(&mut self, token: PublishToken, message: Publish) {
        if let Some(reason) = self.refuse_reason(&message) {
            self.event(Event::PublishFailed { token, reason });
            return;
        }
        let mut wire = message;
        wire.packet_id = None;
        wire.dup = false;
        self.apply_outbound_alias(&mut wire);
        self.send(Packet::Publish(wire));
        self.event(Event::Delivered(token));
    }

    /// 5.0: replace a repeated topic by its alias, within the server's Topic Alias
    /// Maximum. Aliases live for one connection only.
    ///
    /// [`Self::refuse_reason`] measured the PUBLISH with its full topic and no alias. The
    /// Topic Alias property adds bytes (and an empty topic plus the property is longer
    /// than a topic of one or two characters), so the aliased form is used only if it
    /// still fits the server's Maximum Packet Size. Otherwise the message goes out as
    /// measured, and a new alias is not recorded: the server would never have learnt it.
    fn apply_outbound_alias(&mut self, wire: &mut Publish) {
        // Aliases are the session's business: one a caller set would name nothing the
        // server was told about.
        wire.properties.topic_alias = None;
        if self.config.protocol != ProtocolVersion::V5 || !self.config.use_topic_aliases {
            return;
        }
        let (alias, new) = match self.outbound_aliases.get(&wire.topic) {
            Some(&alias) => (alias, false),
            None => {
                let next = self.outbound_aliases.len() + 1;
                match u16::try_from(next)
                    .ok()
                    .filter(|&n| n <= self.limits.topic_alias_maximum)
                    .and_then(NonZeroU16::new)
                {
                    Some(alias) => (alias, true),
                    None => return,
                }
            }
        };
        let mut aliased = wire.clone();
        aliased.properties.topic_alias = Some(alias);
        if !new {
            aliased.topic = TopicName::empty_for_alias();
        }
        let aliased = Packet::Publish(aliased);
        if !self.fits_server(&aliased) {
            return;
        }
        if new {
            self.outbound_aliases.insert(wire.topic.clone(), alias);
        }
        if let Packet::Publish(aliased) = aliased {
            *wire = aliased;
        }
    }

    /// Does `packet` encode within the server's Maximum Packet Size?
    fn fits_server(&self, packet: &Packet) -> bool {
        match codec::encoded_len(packet, self.config.protocol) {
            Ok(len) => len as u64 <= u64::from(self.limits.maximum_packet_size),
            Err(_) => false,
        }
    }

    fn reset_connection_state(&mut self) {
        self.out.clear();
        self.limits = ServerLimits::DEFAULT;
        self.keep_alive = self.config.keep_alive;
        self.outbound_aliases.clear();
        self.inbound_aliases.clear();
        self.ping_deadline = None;
        self.last_sent = None;
    }

    fn violation(&mut self, reason: ReasonCode, detail: String) {
        if self.config.protocol == ProtocolVersion::V5
            && matches!(self.state, State::Connected | State::Connecting { .. })
        {
            self.out.clear();
            self.send(Packet::Disconnect(Disconnect {
                reason_code: reason,
                properties: DisconnectProperties::default(),
            }));
        } else {
            self.out.clear();
        }
        self.state = State::Idle;
        self.event(Event::Disconnected(DisconnectCause::ProtocolViolation {
            reason,
            detail,
        }));
    }

    fn end(&mut self, cause: DisconnectCause) {
        self.state = State::Idle;
        self.out.clear();
        self.event(Event::Disconnected(cause));
    }

    fn send(&mut self, packet: Packet) {
        // After our DISCONNECT nothing more may be sent ([MQTT-3.14.4-2]): acknowledgements
        // still complete our messages, but answers to the server stay unsent (it redelivers
        // unacknowledged messages to the next session).
        if self.state == State::Closing {
            return;
        }
        self.last_sent = self.now;
        self.out.push_back(packet);
    }

    fn event(&mut self, event: Event) {
        self.events.push_back(event);
    }

    fn token(&mut self) -> PublishToken {
        PublishToken(self.next_token())
    }

    fn next_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }
}
