//! One task per client connection: reads CONNECT, authenticates, attaches the session,
//! then turns bytes into `ServerSession::handle_packet`, session events into router
//! calls, mailbox messages into `deliver`, and writes what `poll_packet` gives. Writes
//! happen outside `select!`, as in the client driver. Protocol rules stay in the
//! session; who-may-do-what stays in the authenticator and authorizer.
//!
//! Memory: an idle TCP connection holds no read or write buffer (the read buffer is
//! reserved when the socket is readable and released once it has been consumed), so a
//! thousand idle sensors cost little more than their sessions.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant as StdInstant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::router::Subscriber;
use super::sessions::{Held, SubscriptionRecord};
use super::{Core, mailbox};
use crate::mqtt::codec::{self, DecodeError};
use crate::mqtt::packet::{
    Connect, Packet, PayloadFormat, ProtocolVersion, Publish, PublishProperties, QoS, ReasonCode,
    RetainHandling, Subscribe, Unsubscribe, Will,
};
use crate::mqtt::session::server::{CloseReason, Event, Message, Outgoing, ServerSession};
use crate::mqtt::string::MqttString;
use crate::mqtt::topic::TopicName;

/// Bytes reserved for one read, at first and at most. A connection starts small (most
/// devices send packets of a few dozen bytes, and every buffer allocated and freed leaves
/// its mark on the heap of a broker holding thousands of connections) and doubles its
/// reservation while reads fill it (a busy publisher soon reads 64 KiB at a time).
const READ_CHUNK_MIN: usize = 512;
const READ_CHUNK_MAX: usize = 64 * 1024;

/// The next reservation after a read of `n` bytes into a reservation of `chunk`.
fn next_chunk(chunk: usize, n: usize) -> usize {
    if n >= chunk {
        (chunk * 2).min(READ_CHUNK_MAX)
    } else if n < chunk / 8 {
        (chunk / 2).max(READ_CHUNK_MIN)
    } else {
        chunk
    }
}
/// Messages taken from the mailbox at a time.
const TAKE_BATCH: usize = 64;
/// How long a publish may wait for room in a connected subscriber's full mailbox before
/// its copy is dropped (counted). Waiting is the normal case (a fast publisher, a slower
/// subscriber); the limit only breaks a stuck subscriber's hold, or a cycle of publishers
/// each waiting on the other's subscriber.
const BLOCK_LIMIT: Duration = Duration::from_secs(30);

/// A publish whose copies wait for room in subscribers' mailboxes.
struct BlockedPublish {
    targets: std::collections::VecDeque<super::router::Blocked>,
    packet_id: Option<crate::mqtt::packet::PacketId>,
    reason: ReasonCode,
    until: Instant,
}

/// A write that makes no progress for this long ends the connection (a client that
/// stopped reading must not hold the task, and its session, for ever).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A byte stream the connection reads from without holding a buffer while idle.
pub(super) trait ReadInto: AsyncWrite + Unpin + Send {
    /// Waits for input and appends it to `buf`; `Ok(0)` is end of stream.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is read unless it completes.
    fn read_into(
        &mut self,
        buf: &mut BytesMut,
        reserve: usize,
    ) -> impl std::future::Future<Output = std::io::Result<usize>> + Send;
}

impl ReadInto for TcpStream {
    // A hand-written poll instead of `readable().await`: the `Readiness` future that
    // `readable()` returns is about 150 bytes, and it sits in every idle connection's
    // task; this one holds three references. `poll_read_ready` keeps one reader waker,
    // which is enough: only this connection's task reads this socket.
    fn read_into(
        &mut self,
        buf: &mut BytesMut,
        reserve: usize,
    ) -> impl std::future::Future<Output = std::io::Result<usize>> + Send {
        std::future::poll_fn(move |cx| {
            loop {
                std::task::ready!(self.poll_read_ready(cx))?;
                buf.reserve(reserve);
                match self.try_read_buf(buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // Readiness can be stale (a read that finds nothing clears it):
                        // give the reservation back before waiting again, or every idle
                        // connection would hold one.
                        if buf.is_empty() {
                            *buf = BytesMut::new();
                        }
                    }
                    other => return std::task::Poll::Ready(other),
                }
            }
        })
    }
}

/// Any other stream (WebSocket, TLS): these keep buffers of their own anyway.
pub(super) struct Buffered<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Unpin + Send> ReadInto for Buffered<S> {
    async fn read_into(&mut self, buf: &mut BytesMut, reserve: usize) -> std::io::Result<usize> {
        buf.reserve(reserve);
        self.0.read_buf(buf).await
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Buffered<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

pub(super) async fn serve(stream: TcpStream, core: Arc<Core>) {
    Connection::run(stream, core).await;
}

/// TLS: the handshake is bounded by the connect timeout, like the wait for CONNECT.
pub(super) async fn serve_tls(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    core: Arc<Core>,
) {
    let handshake = tokio::time::timeout(core.config.connect_timeout, acceptor.accept(stream));
    if let Ok(Ok(tls)) = handshake.await {
        Connection::run(Buffered(tls), core).await;
    }
}

pub(super) async fn serve_websocket(stream: TcpStream, core: Arc<Core>) {
    let limits = super::websocket::WsLimits::default();
    let upgraded = tokio::time::timeout(
        core.config.connect_timeout,
        super::websocket::accept(stream, &limits),
    )
    .await;
    if let Ok(Ok(ws)) = upgraded {
        Connection::run(Buffered(ws), core).await;
    }
}

/// One connection's state after CONNECT was accepted.
struct Connection<S> {
    io: S,
    core: Arc<Core>,
    held: Held,
    username: Option<Arc<str>>,
    /// Boxed: most clients have none, and every idle connection pays for this field.
    will: Option<Box<Will>>,
    read_buf: BytesMut,
    write_buf: BytesMut,
    scratch: Vec<Outgoing>,
    /// Why the session ended, once it reported `Event::Closed`.
    closed: Option<CloseReason>,
    /// The session's drop count already added to the broker's (a resumed session
    /// brings the count of its earlier connections).
    drops_counted: u64,
    /// A publish waiting for room in subscribers' mailboxes: while set, nothing more is
    /// read or handled from this client.
    blocked: Option<BlockedPublish>,
    /// What the next read reserves (see [`READ_CHUNK_MIN`]).
    read_chunk: usize,
}

impl<S: ReadInto> Connection<S> {
    /// Serves one connection from its first byte to its end.
    async fn run(io: S, core: Arc<Core>) {
        // The handshake's futures are boxed: they are large and never needed again.
        let Some(mut connection) = Box::pin(Self::handshake(io, Arc::clone(&core))).await else {
            return;
        };
        let reason = connection.serve().await;
        core.stats.clients_connected.fetch_sub(1, Ordering::Relaxed);
        Box::pin(connection.finish(reason)).await;
        core.stats
            .sessions
            .store(core.sessions.len(), Ordering::Relaxed);
    }

    /// CONNECT, authentication, the session, CONNACK: the connection ready to serve, or
    /// `None` when it was refused or closed.
    async fn handshake(mut io: S, core: Arc<Core>) -> Option<Self> {
        let mut read_buf = BytesMut::new();
        let connect = tokio::time::timeout(
            core.config.connect_timeout,
            read_connect(&mut io, &mut read_buf, &core),
        )
        .await;
        let connect = match connect {
            Ok(Ok(connect)) => connect,
            Ok(Err(refusal)) => {
                if let Some((packet, protocol)) = refusal {
                    core.stats
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    let _ = write_packet(&mut io, &packet, protocol).await;
                }
                let _ = io.shutdown().await;
                return None;
            }
            // No CONNECT in time: close without a word, nothing was agreed.
            Err(_) => return None,
        };
        let protocol = connect.protocol;
        let refuse = |reason: ReasonCode| Some((ServerSession::refusal(reason, None), protocol));
        // Authentication (may be slow: a blocking thread).
        let username: Option<Arc<str>> = connect.username.as_ref().map(|u| Arc::from(u.as_str()));
        if let Err(reason) = authenticate(&core, &connect).await {
            core.stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            if let Some((packet, protocol)) = refuse(reason) {
                let _ = write_packet(&mut io, &packet, protocol).await;
            }
            let _ = io.shutdown().await;
            return None;
        }
        // Client identifier: assign one to a client that sent none [MQTT-3.1.3-6].
        let (client_id, assigned) = if connect.client_id.is_empty() {
            if protocol == ProtocolVersion::V311 && !connect.clean_start {
                // [MQTT-3.1.3-8]: 3.1.1 refuses an empty id with a persistent session.
                if let Some((packet, protocol)) = refuse(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID) {
                    let _ = write_packet(&mut io, &packet, protocol).await;
                }
                return None;
            }
            let id = format!("fieldgate-{:016x}", fastrand::u64(..));
            let assigned = MqttString::try_from(id.as_str()).ok();
            (id, assigned.filter(|_| protocol == ProtocolVersion::V5))
        } else {
            (connect.client_id.as_str().to_owned(), None)
        };
        let held = match core
            .sessions
            .attach(&client_id, connect.clean_start, &core.router)
            .await
        {
            Ok(held) => held,
            Err(_) => {
                if let Some((packet, protocol)) = refuse(ReasonCode::SERVER_BUSY) {
                    let _ = write_packet(&mut io, &packet, protocol).await;
                }
                return None;
            }
        };
        core.stats.clients_connected.fetch_add(1, Ordering::Relaxed);
        core.stats
            .sessions
            .store(core.sessions.len(), Ordering::Relaxed);
        let drops_counted = held.session.dropped();
        let mut connection = Connection {
            io,
            core: Arc::clone(&core),
            held,
            username,
            will: connect.will.as_ref().map(|w| Box::new(detach_will(w))),
            read_buf,
            write_buf: BytesMut::new(),
            scratch: Vec::new(),
            closed: None,
            drops_counted,
            blocked: None,
            read_chunk: READ_CHUNK_MIN,
        };
        let now = StdInstant::now();
        let present = connection.held.session_present;
        connection
            .held
            .session
            .accept(&connect, present, assigned, now);
        // CONNECT's strings share the read buffer: keeping it across the connection's
        // life would pin that buffer for every idle client.
        drop(connect);
        // Packets the client sent right behind CONNECT (without waiting for CONNACK, as
        // it may) are already buffered: nothing would wake the loop for them.
        if !connection.read_buf.is_empty() {
            Box::pin(connection.decode_all(now)).await;
        }
        connection.record_session();
        Some(connection)
    }

    /// The connection's main loop; returns why it ended.
    ///
    /// Memory: this future is what an idle connection costs, so everything it awaits
    /// only now and then (decoding and handling packets, writing, finishing) is boxed
    /// and takes heap only while it runs; the loop itself holds just the wait.
    async fn serve(&mut self) -> CloseReason {
        // Shutdown rings every session's mailbox; one that attached after that ring
        // learns it here.
        if *self.core.shutdown.borrow() {
            self.held.session.shut_down();
        }
        loop {
            let now = StdInstant::now();
            // 0. A publish waiting for room: offer it again; once through, carry on with
            //    what the client sent behind it (still buffered).
            if self.blocked.is_some() && self.retry_blocked(false) && !self.read_buf.is_empty() {
                Box::pin(self.decode_all(now)).await;
            }
            // 1. Messages waiting in the mailbox, as far as the session wants them.
            if self.held.session.wants_messages() {
                self.held.mailbox.take(TAKE_BATCH, &mut self.scratch);
                for outgoing in self.scratch.drain(..) {
                    self.held.session.deliver(outgoing, now);
                }
            }
            // 2. Session events (from a timeout, a takeover, ...): route, subscribe, end.
            Box::pin(self.handle_events(now)).await;
            self.count_session_drops();
            // 3. Write what the session wants sent.
            if Box::pin(self.write_pending()).await.is_err() {
                self.held.session.handle_closed(now);
                return self.closed.take().unwrap_or(CloseReason::ConnectionLost);
            }
            if let Some(reason) = self.closed.take() {
                return reason;
            }
            if self.held.session.wants_messages() && !self.held.mailbox.is_empty() {
                // More waiting than one batch: take it before sleeping.
                continue;
            }
            // 4. Wait for exactly one input, holding no spare buffers meanwhile.
            self.held.session.release_spare_capacity();
            if self.scratch.capacity() > 0 {
                self.scratch = Vec::new();
            }
            let deadline = self.held.session.poll_timeout().map(Instant::from_std);
            // Messages only while the client's window has room; a takeover or shutdown
            // always.
            let interest = mailbox::TAKEOVER
                | mailbox::SHUTDOWN
                | if self.held.session.wants_messages() {
                    mailbox::ARRIVED
                } else {
                    0
                };
            let reading = self.blocked.is_none();
            tokio::select! {
                read = self.io.read_into(&mut self.read_buf, self.read_chunk), if reading => {
                    let now = StdInstant::now();
                    match read {
                        Ok(0) | Err(_) => {
                            self.held.session.handle_closed(now);
                            return CloseReason::ConnectionLost;
                        }
                        Ok(n) => {
                            self.read_chunk = next_chunk(self.read_chunk, n);
                            self.core.stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                            Box::pin(self.decode_all(now)).await;
                        }
                    }
                }
                signals = self.held.mailbox.signals(interest) => {
                    if signals & mailbox::SHUTDOWN != 0 {
                        self.held.session.shut_down();
                    } else if signals & mailbox::TAKEOVER != 0 {
                        self.held.session.take_over();
                    }
                }
                give_up = wait_for_room_boxed(self.blocked.as_ref()), if !reading => {
                    if give_up {
                        self.retry_blocked(true);
                    }
                }
                () = sleep_until(deadline) => self.held.session.handle_timeout(StdInstant::now()),
            }
        }
    }

    /// Adds the messages the session dropped since the last call (too large for the
    /// client, expired while waiting) to `$SYS/broker/publish/messages/dropped`: drops
    /// are counted, never silent.
    fn count_session_drops(&mut self) {
        let dropped = self.held.session.dropped();
        let new = dropped.saturating_sub(self.drops_counted);
        if new > 0 {
            self.core
                .stats
                .publish_dropped
                .fetch_add(new, Ordering::Relaxed);
        }
        self.drops_counted = dropped;
    }

    /// Offers a blocked publish's copies again; true once none is left (all queued, or
    /// dropped and counted after [`BLOCK_LIMIT`]), and then answers the PUBLISH.
    fn retry_blocked(&mut self, give_up: bool) -> bool {
        let Some(blocked) = &mut self.blocked else {
            return true;
        };
        while let Some(target) = blocked.targets.pop_front() {
            if give_up {
                target.drop_counted(&self.core.router);
                continue;
            }
            if let Some(still) = target.retry(&self.core.router) {
                blocked.targets.push_front(still);
                return false;
            }
        }
        if let Some(id) = blocked.packet_id {
            self.held.session.acknowledge_publish(id, blocked.reason);
        }
        self.blocked = None;
        true
    }

    /// Acts on what the session reported: routes, subscribes, notes the end. Stops
    /// while a publish waits for room (later events keep their order behind it).
    async fn handle_events(&mut self, now: StdInstant) {
        while self.blocked.is_none()
            && let Some(event) = self.held.session.poll_event()
        {
            match event {
                Event::Publish(publish) => self.publish(publish, now).await,
                Event::Subscribe(subscribe) => self.subscribe(subscribe, now),
                Event::Unsubscribe(unsubscribe) => self.unsubscribe(unsubscribe),
                Event::Closed(reason) => self.closed = Some(reason),
                Event::Finished { journal_seq } => {
                    if let Some(journal) = self.persisting() {
                        journal.finished(&self.held.client_id, journal_seq);
                    }
                }
            }
        }
    }

    async fn decode_all(&mut self, now: StdInstant) {
        let max = u32::try_from(self.held.session.max_incoming_packet_size()).unwrap_or(u32::MAX);
        let protocol = self.held.session.protocol();
        loop {
            match codec::decode(&mut self.read_buf, max, protocol) {
                Ok(Some(packet)) => {
                    self.core
                        .stats
                        .messages_received
                        .fetch_add(1, Ordering::Relaxed);
                    if matches!(packet, Packet::Publish(_)) {
                        self.core
                            .stats
                            .publish_received
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    self.held.session.handle_packet(packet, now);
                    // Answer each packet before reading the next, so that answers go
                    // out in the order of the requests (a SUBACK before the PINGRESP of
                    // a PINGREQ sent after the SUBSCRIBE; PUBACKs in PUBLISH order
                    // [MQTT-4.6.0-2]).
                    self.handle_events(now).await;
                    if self.blocked.is_some() {
                        // The rest stays buffered until the publish gets its room.
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.held.session.handle_decode_error(&e, now);
                    self.read_buf.clear();
                    break;
                }
            }
        }
        if self.read_buf.is_empty() {
            // Idle connections keep no read buffer (see the module header).
            self.read_buf = BytesMut::new();
        }
    }

    async fn write_pending(&mut self) -> std::io::Result<()> {
        let protocol = self.held.session.protocol();
        while let Some(packet) = self.held.session.poll_packet() {
            self.core
                .stats
                .messages_sent
                .fetch_add(1, Ordering::Relaxed);
            if matches!(packet, Packet::Publish(_)) {
                self.core.stats.publish_sent.fetch_add(1, Ordering::Relaxed);
            }
            if let Err(e) = codec::encode(&packet, protocol, &mut self.write_buf) {
                // The session built it: a bug, reported, not a crash.
                crate::observe::warn(format_args!(
                    "fieldgate broker: cannot encode {:?}: {e}",
                    packet.packet_type()
                ));
            }
        }
        if self.write_buf.is_empty() {
            return Ok(());
        }
        let n = self.write_buf.len();
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            self.io.write_all(&self.write_buf).await?;
            self.io.flush().await
        })
        .await;
        self.write_buf = BytesMut::new();
        match written {
            Ok(Ok(())) => {
                self.core
                    .stats
                    .bytes_sent
                    .fetch_add(n as u64, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    fn client_id(&self) -> &str {
        &self.held.client_id
    }

    /// The journal, when the broker persists and this client's session outlives its
    /// connection.
    fn persisting(&self) -> Option<&super::persist::Journal> {
        self.core
            .router
            .journal()
            .filter(|_| self.held.mailbox.is_persistent())
    }

    /// Marks and journals the session as persistent when its expiry interval says so
    /// (CONNECT decided it in `accept`).
    fn record_session(&mut self) {
        let expiry = self.held.session.session_expiry_interval();
        self.held.mailbox.set_persistent(expiry > 0);
        if let Some(journal) = self.persisting() {
            journal.session(&self.held.client_id, expiry);
        }
    }

    async fn publish(&mut self, publish: Publish, now: StdInstant) {
        let core = Arc::clone(&self.core);
        let core = &core;
        let access = core.access();
        let packet_id = publish.packet_id;
        let reason = if too_many_levels(core, publish.topic.as_str()) {
            ReasonCode::TOPIC_NAME_INVALID
        } else if !access.may_publish(self.username.as_deref(), self.client_id(), &publish.topic) {
            ReasonCode::NOT_AUTHORIZED
        } else {
            let publisher = Some(Arc::clone(&self.held.client_id));
            let mut message = Message::from_publish(publish, publisher, now);
            core.router.stamp(&mut message);
            let message = Arc::new(message);
            if message.retain {
                core.router.retain(&message);
            }
            let routed = core.router.publish(&message, access.read_check());
            // What a persistent session will get (or a retained message) is written to
            // the journal before the publisher hears PUBACK, so a crash of the process
            // cannot lose it; `fsync: always` also syncs it (power loss).
            if let Some(journal) = core.router.journal()
                && packet_id.is_some()
                && (routed.journaled > 0 || message.retain)
            {
                journal.durable().await;
            }
            let reason = if routed.delivered + routed.dropped + routed.blocked.len() == 0 {
                ReasonCode::NO_MATCHING_SUBSCRIBERS
            } else {
                ReasonCode::SUCCESS
            };
            // Waiting on our own full mailbox could never end: it drains only as this
            // client acknowledges, and a blocked connection reads nothing. Dropped,
            // counted.
            let mut routed = routed;
            let own = &self.held.mailbox;
            let (own_copies, others): (Vec<_>, Vec<_>) = routed
                .blocked
                .drain(..)
                .partition(|b| Arc::ptr_eq(&b.mailbox, own));
            for copy in own_copies {
                copy.drop_counted(&core.router);
            }
            routed.blocked = others;
            if !routed.blocked.is_empty() {
                // Back-pressure: some connected subscriber's mailbox is full. This
                // connection stops reading (TCP slows the publisher down) and answers
                // the PUBLISH only once every copy is queued (see `serve`).
                self.blocked = Some(BlockedPublish {
                    targets: routed.blocked.into(),
                    packet_id,
                    reason,
                    until: Instant::now() + BLOCK_LIMIT,
                });
                return;
            }
            reason
        };
        // A refused QoS 0 message has no acknowledgement to carry the refusal: it is
        // just not routed, as in Mosquitto.
        if let Some(id) = packet_id {
            self.held.session.acknowledge_publish(id, reason);
        }
    }

    fn subscribe(&mut self, subscribe: Subscribe, now: StdInstant) {
        let core = Arc::clone(&self.core);
        let access = core.access();
        let v5 = self.held.session.protocol() == ProtocolVersion::V5;
        let mut codes = Vec::with_capacity(subscribe.subscriptions.len());
        let mut retained = Vec::new();
        let id = subscribe.properties.subscription_identifier;
        for subscription in subscribe.subscriptions {
            let filter = subscription.filter;
            let options = subscription.options;
            if too_many_levels(&core, filter.filter()) {
                codes.push(failure(v5, ReasonCode::TOPIC_FILTER_INVALID));
                continue;
            }
            let allowed = access.may_subscribe(self.username.as_deref(), self.client_id(), &filter);
            if !allowed {
                // 0x80 rather than 0x87: both are allowed, and clients and the Eclipse
                // Paho interoperability suite (`test_subscribe_failure`) expect 0x80 for a
                // subscription the server does not allow. A refused PUBLISH still hears
                // 0x87 in its PUBACK.
                codes.push(ReasonCode::UNSPECIFIED_ERROR);
                continue;
            }
            let subscriber = Subscriber {
                mailbox: Arc::clone(&self.held.mailbox),
                options,
                id,
                username: self.username.clone(),
            };
            let existed = core
                .router
                .subscribe(&self.held.client_id, &filter, subscriber);
            // Kept as long as the session: a copy, not a slice of the read buffer.
            self.held
                .subscriptions
                .insert(filter.detach(), SubscriptionRecord { options, id });
            if let Some(journal) = self.persisting() {
                journal.subscribe(&self.held.client_id, &filter, options, id);
            }
            codes.push(ReasonCode(options.qos as u8));
            // Retained messages as Retain Handling says [MQTT-3.3.1-9] [MQTT-3.3.1-10]
            // [MQTT-3.3.1-11]; never for a shared subscription (5.0 §4.8.2).
            let send_retained = !filter.is_shared()
                && match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendAtSubscribeIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                };
            if send_retained {
                for message in core.router.retained_matching(&filter, now) {
                    if access.read_check().may_receive(
                        self.username.as_deref(),
                        self.client_id(),
                        &message.topic,
                    ) {
                        let qos = message.qos.min(options.qos);
                        retained.push(Outgoing {
                            message,
                            qos,
                            retain: true,
                            subscription_ids: id.into_iter().collect(),
                        });
                    }
                }
            }
        }
        // SUBACK first, then the retained messages it let through.
        self.held.session.suback(subscribe.packet_id, codes);
        for outgoing in retained {
            self.held.session.deliver(outgoing, now);
        }
    }

    fn unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let mut codes = Vec::with_capacity(unsubscribe.filters.len());
        for filter in &unsubscribe.filters {
            let existed = self.core.router.unsubscribe(&self.held.client_id, filter);
            self.held.subscriptions.remove(filter);
            if let Some(journal) = self.persisting() {
                journal.unsubscribe(&self.held.client_id, filter);
            }
            codes.push(if existed {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::NO_SUBSCRIPTION_EXISTED
            });
        }
        self.held.session.unsuback(unsubscribe.packet_id, codes);
    }

    /// After the loop: flush what is left, close, publish the will if due, and give the
    /// session back to the registry.
    async fn finish(mut self, reason: CloseReason) {
        // A publish still waiting for room was never acknowledged: the client sends it
        // again if its session lives on. The copies not yet queued are dropped, counted.
        if let Some(blocked) = self.blocked.take() {
            for target in blocked.targets {
                target.drop_counted(&self.core.router);
            }
        }
        let _ = self.write_pending().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
        let core = Arc::clone(&self.core);
        self.held.session.handle_closed(StdInstant::now());
        self.count_session_drops();
        let will = self
            .will
            .take()
            .filter(|_| reason.publishes_will())
            .map(|w| *w);
        let username = self.username.clone();
        let client_id = Arc::clone(&self.held.client_id);
        let generation = self.held.generation;
        let expiry = core.sessions.release(self.held, &core.router);
        if let Some(will) = will {
            let pending = PendingWill {
                will,
                username,
                client_id: Arc::clone(&client_id),
                generation,
            };
            schedule_will(&core, pending, expiry);
        }
        if let Some(after) = expiry {
            schedule_expiry(&core, client_id, generation, after);
        }
    }
}

/// The will, copied out of the CONNECT's read buffer: it is kept for the whole
/// connection, and the buffer should not be.
fn detach_will(will: &Will) -> Will {
    let mut will = will.clone();
    will.topic = will.topic.detach();
    will.payload = Bytes::copy_from_slice(&will.payload);
    will.properties.user_properties = will
        .properties
        .user_properties
        .iter()
        .map(|p| crate::mqtt::packet::UserProperty {
            name: p.name.detach(),
            value: p.value.detach(),
        })
        .collect();
    will.properties.content_type = will
        .properties
        .content_type
        .as_ref()
        .map(MqttString::detach);
    will.properties.response_topic = will
        .properties
        .response_topic
        .as_ref()
        .map(TopicName::detach);
    will.properties.correlation_data = will
        .properties
        .correlation_data
        .as_ref()
        .map(|c| Bytes::copy_from_slice(c));
    will
}

/// Reads the first packet, which must be CONNECT [MQTT-3.1.0-1]. An error carries the
/// CONNACK to send, if the client deserves one (a wrong protocol version does; garbage
/// does not).
async fn read_connect<S: ReadInto>(
    io: &mut S,
    buf: &mut BytesMut,
    core: &Core,
) -> Result<Connect, Option<(Packet, ProtocolVersion)>> {
    let max = core.config.session.maximum_packet_size.get();
    loop {
        match codec::decode(buf, max, ProtocolVersion::V5) {
            Ok(Some(Packet::Connect(connect))) => return Ok(*connect),
            Ok(Some(_)) => return Err(None),
            Ok(None) => {}
            // [MQTT-3.1.2-2]: answer in 3.1.1 form, which every version can read. MQTT
            // 3.1 ("MQIsdp") is a version we do not speak rather than garbage: its
            // clients read the same CONNACK and report an unacceptable protocol version
            // instead of a lost connection.
            Err(DecodeError::UnsupportedProtocolLevel(_)) => return Err(Some(unsupported())),
            Err(DecodeError::ProtocolName(name)) if name == "MQIsdp" => {
                return Err(Some(unsupported()));
            }
            Err(_) => return Err(None),
        }
        match io.read_into(buf, READ_CHUNK_MIN).await {
            Ok(0) | Err(_) => return Err(None),
            Ok(_) => {}
        }
    }
}

async fn authenticate(core: &Core, connect: &Connect) -> Result<(), ReasonCode> {
    // Without a password file nobody can prove who they are: a user name alone is no
    // better than none (Mosquitto 2 behaves the same).
    let access = core.access();
    // The gateway's own client, whatever the files say; its user name is taken only
    // with its secret, so no one else can claim it.
    if let Some(internal) = &access.internal_client
        && connect.username.as_ref().map(|u| u.as_str()) == Some(internal.username())
    {
        return if internal.accepts(connect.password.as_deref()) {
            Ok(())
        } else {
            Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
        };
    }
    let Some(authenticator) = access.authenticator.clone() else {
        return if access.allow_anonymous {
            Ok(())
        } else {
            Err(ReasonCode::NOT_AUTHORIZED)
        };
    };
    if connect.username.is_none() && connect.password.is_none() {
        return if access.allow_anonymous {
            Ok(())
        } else {
            Err(ReasonCode::NOT_AUTHORIZED)
        };
    }
    let username = connect.username.as_ref().map(|u| u.as_str().to_owned());
    let password: Option<Bytes> = connect.password.clone();
    // Slow hashes on a few blocking threads at most: a flood of wrong passwords queues
    // here instead of occupying every blocking thread (the wait counts against the
    // connect timeout).
    let Ok(_permit) = core.auth_checks.acquire().await else {
        return Err(ReasonCode::SERVER_UNAVAILABLE);
    };
    tokio::task::spawn_blocking(move || {
        authenticator.authenticate(username.as_deref(), password.as_deref())
    })
    .await
    .unwrap_or(Err(ReasonCode::SERVER_UNAVAILABLE))
}

async fn write_packet<S: AsyncWrite + Unpin>(
    io: &mut S,
    packet: &Packet,
    protocol: ProtocolVersion,
) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    if codec::encode(packet, protocol, &mut buf).is_ok() {
        io.write_all(&buf).await?;
        io.flush().await?;
    }
    Ok(())
}

/// The CONNACK refusing a protocol version, in 3.1.1 form.
fn unsupported() -> (Packet, ProtocolVersion) {
    let packet = ServerSession::refusal(ReasonCode::UNSUPPORTED_PROTOCOL_VERSION, None);
    (packet, ProtocolVersion::V311)
}

fn too_many_levels(core: &Core, topic: &str) -> bool {
    let max = core.config.max_topic_levels;
    max > 0 && topic.split('/').count() > max
}

/// A SUBACK failure code: 5.0 says why; 3.1.1 has only 0x80.
fn failure(v5: bool, reason: ReasonCode) -> ReasonCode {
    if v5 {
        reason
    } else {
        ReasonCode::UNSPECIFIED_ERROR
    }
}

/// A will that may have to wait for its Will Delay Interval.
struct PendingWill {
    will: Will,
    username: Option<Arc<str>>,
    client_id: Arc<str>,
    /// The connection that ended.
    generation: u64,
}

/// Publishes a will now, or after its Will Delay Interval, or when its session ends if
/// that comes first (a clean start or expiry); a connection resuming the same session in
/// time cancels it [MQTT-3.1.3-9]. `expiry` is the parked session's expiry (`None`: it
/// ended at once or never expires).
fn schedule_will(core: &Arc<Core>, pending: PendingWill, expiry: Option<Duration>) {
    let will_delay = Duration::from_secs(u64::from(
        pending.will.properties.will_delay_interval.unwrap_or(0),
    ));
    let delay = match expiry {
        Some(expiry) => will_delay.min(expiry),
        // A session that never expires waits the whole delay; one that ended: none.
        None => will_delay,
    };
    let signal = if delay.is_zero() {
        None
    } else {
        core.sessions
            .arm_will(&pending.client_id, pending.generation)
    };
    let Some(signal) = signal else {
        publish_will(
            core,
            pending.will,
            pending.username.as_deref(),
            pending.client_id,
        );
        return;
    };
    let core = Arc::clone(core);
    tokio::spawn(async move {
        if signal.publish_after(delay).await {
            publish_will(
                &core,
                pending.will,
                pending.username.as_deref(),
                pending.client_id,
            );
        }
    });
}

fn publish_will(core: &Core, will: Will, username: Option<&str>, client_id: Arc<str>) {
    if !core.access().may_publish(username, &client_id, &will.topic) {
        return;
    }
    let properties = PublishProperties {
        payload_format_indicator: will.properties.payload_format_indicator,
        message_expiry_interval: will.properties.message_expiry_interval,
        content_type: will.properties.content_type,
        response_topic: will.properties.response_topic,
        correlation_data: will.properties.correlation_data,
        user_properties: will.properties.user_properties,
        ..PublishProperties::default()
    };
    let publish = Publish {
        dup: false,
        qos: will.qos,
        retain: will.retain,
        topic: will.topic,
        packet_id: None,
        payload: will.payload,
        properties,
    };
    let message = Arc::new(Message::from_publish(
        publish,
        Some(client_id),
        StdInstant::now(),
    ));
    if message.retain {
        core.router.retain(&message);
    }
    core.router
        .publish_or_drop(&message, core.access().read_check());
}

pub(super) fn schedule_expiry(
    core: &Arc<Core>,
    client_id: Arc<str>,
    generation: u64,
    after: Duration,
) {
    let core = Arc::clone(core);
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        // What the session still held for its client will never be delivered: counted
        // as dropped, like every other message the broker gives up on.
        if let Some(lost) = core.sessions.expire(&client_id, generation, &core.router) {
            core.stats
                .publish_dropped
                .fetch_add(lost as u64, Ordering::Relaxed);
        }
        core.stats
            .sessions
            .store(core.sessions.len(), Ordering::Relaxed);
    });
}

/// Publishes `$SYS/broker/...` every `interval`, retained, as Mosquitto does.
pub(super) async fn publish_sys(core: Arc<Core>, interval: Duration) {
    let mut shutdown = core.shutdown.clone();
    // The first figures after one interval: at start they would all be zero.
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => return,
        }
        for (topic, value) in core.stats.sys_topics(env!("CARGO_PKG_VERSION")) {
            let Ok(topic) = TopicName::try_from(topic) else {
                continue;
            };
            let message = Arc::new(Message {
                topic,
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: PublishProperties {
                    payload_format_indicator: Some(PayloadFormat::Utf8),
                    ..PublishProperties::default()
                },
                expires_at: None,
                publisher: None,
                journal_seq: None,
            });
            core.router.retain(&message);
            core.router
                .publish_or_drop(&message, core.access().read_check());
        }
    }
}

/// Waits until the first mailbox a blocked publish waits on may have room (false), or
/// until the publish has waited [`BLOCK_LIMIT`] (true).
///
/// # Cancel safety
/// Cancel safe: it only waits.
async fn wait_for_room(blocked: Option<&BlockedPublish>) -> bool {
    let Some(blocked) = blocked else {
        return std::future::pending().await;
    };
    let Some(first) = blocked.targets.front() else {
        return false;
    };
    tokio::select! {
        () = first.mailbox.space() => false,
        () = tokio::time::sleep_until(blocked.until) => true,
    }
}

/// [`wait_for_room`] on the heap, allocated only when polled: `select!` builds its
/// futures whether or not their branch is enabled, and this one is large and only awaited
/// by a blocked publisher, so inline it would cost every idle connection.
///
/// # Cancel safety
/// Cancel safe: it only waits.
async fn wait_for_room_boxed(blocked: Option<&BlockedPublish>) -> bool {
    Box::pin(wait_for_room(blocked)).await
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
