//! The MQTT client's IO driver: one tokio task that owns the connection to the upstream
//! broker (TCP or TLS), feeds a [`ClientSession`] and reconnects with capped, jittered
//! backoff. Applications talk to it through a cloneable [`Handle`] and read what arrives
//! from [`Events`].
//!
//! It owns sockets, TLS and the clock; every protocol decision stays in the session.
//! Each turn drains what the session wants sent and writes it, then waits for exactly one
//! input (bytes, a request or a timer). A write races only the session's timers (a stalled
//! link must still time out), never reads or requests, and keeps its unwritten rest.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::mqtt::codec;
use crate::mqtt::packet::{
    Publish, ReasonCode, SubscribeProperties, Subscription, UnsubscribeProperties,
};
use crate::mqtt::session::client::{
    ClientConfig, ClientSession, DisconnectCause, Event, InboundAck, PublishToken, RequestToken,
    SessionError,
};
use crate::mqtt::topic::TopicFilter;

/// Where and how to connect, and how to behave when the link fails.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub host: String,
    pub port: u16,
    /// `None`: plain TCP.
    pub tls: Option<TlsOptions>,
    pub session: ClientConfig,
    /// `None`: give up after the first connection ends or fails (command-line tools).
    pub reconnect: Option<Backoff>,
    /// Time allowed for TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Requests (publish, subscribe, ...) queued toward the client task.
    pub request_capacity: usize,
    /// Events (messages, state changes) queued toward the application; when full, the
    /// client stops reading from the broker (back-pressure, nothing is dropped).
    pub event_capacity: usize,
}

impl ClientOptions {
    /// Plain TCP to `host:port`, reconnecting with the default backoff.
    pub fn new(host: impl Into<String>, port: u16, session: ClientConfig) -> Self {
        ClientOptions {
            host: host.into(),
            port,
            tls: None,
            session,
            reconnect: Some(Backoff::default()),
            connect_timeout: Duration::from_secs(10),
            request_capacity: 256,
            event_capacity: 1024,
        }
    }
}

/// TLS settings (rustls).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM file of the CA(s) that signed the broker's certificate.
    pub ca_file: Option<PathBuf>,
    /// Also trust the operating system's roots (for public brokers and cloud services).
    pub system_roots: bool,
    /// PEM certificate chain and private key for mutual TLS (AWS IoT Core needs it).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Check the chain but not that the certificate names the host (like mosquitto's
    /// `--insecure`): for brokers reached by an address their certificate does not list.
    pub skip_hostname_check: bool,
}

/// Reconnect delays: exponential from `initial` up to `max`, each picked at random in its
/// upper half so that a fleet of gateways does not reconnect in lockstep.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before attempt `n` (0-based) of a series of failures.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
        let ceiling = self.initial.saturating_mul(factor).min(self.max);
        let half = ceiling / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// Why a request failed, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("the client has stopped; create a new one")]
    Stopped,
    #[error("not connected, and QoS 0 messages are not kept while offline")]
    NotConnected,
    #[error("the broker refused: {}", .0.name_for(crate::mqtt::packet::PacketType::ConnAck))]
    Refused(ReasonCode),
    #[error("{0}")]
    Session(#[from] SessionError),
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// Why a message did not make it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The broker refused it (PUBACK/PUBREC reason code), or it cannot go to this broker
    /// (too large, retain not available).
    #[error("refused: {}", .0.name_for(crate::mqtt::packet::PacketType::PubAck))]
    Refused(ReasonCode),
    /// The session did not take it.
    #[error("{0}")]
    NotAccepted(ClientError),
    /// The client stopped first; a QoS 1/2 message may still sit in its session.
    #[error("the client stopped before the message was acknowledged")]
    Stopped,
}

/// The outcome of one publish: acknowledged by the broker (QoS 1/2), or handed to the
/// connection (QoS 0).
#[derive(Debug)]
pub struct Delivery(oneshot::Receiver<Result<(), DeliveryError>>);

impl Delivery {
    /// Waits for the outcome.
    ///
    /// # Cancel safety
    /// Dropping the future loses only the notification, never the message.
    pub async fn delivered(self) -> Result<(), DeliveryError> {
        self.0.await.unwrap_or(Err(DeliveryError::Stopped))
    }
}

/// Polling a `Delivery` in place is [`Delivery::delivered`] without giving it up, so
/// that a queue of them can wait on its oldest (the upstream pump does).
impl std::future::Future for Delivery {
    type Output = Result<(), DeliveryError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|outcome| outcome.unwrap_or(Err(DeliveryError::Stopped)))
    }
}

/// What the application receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    Connected {
        session_present: bool,
    },
    /// The connection ended (it will be retried if reconnecting is on).
    Disconnected(DisconnectCause),
    /// The broker refused the connection (CONNACK), with its reason.
    Refused(ReasonCode),
    /// TCP or TLS could not be established.
    Unreachable(String),
    Message(Publish),
    /// With `manual_acks`: a QoS 1/2 message to acknowledge with [`Handle::ack`] once the
    /// application has made it safe, in the order received.
    MessageToAck(Publish, InboundAck),
    /// Subscriptions re-made after the broker lost our session.
    Resubscribed(Vec<ReasonCode>),
}

/// The receiving side for [`ClientEvent`]s. When it is dropped the client keeps running.
#[derive(Debug)]
pub struct Events(mpsc::Receiver<ClientEvent>);

impl Events {
    /// The next event; `None` once the client has stopped.
    ///
    /// # Cancel safety
    /// Cancel safe: an event is either returned or stays queued.
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        self.0.recv().await
    }
}

enum Request {
    Publish {
        // Boxed: a PUBLISH is large next to the other requests.
        message: Box<Publish>,
        /// Told once the session has taken the message (for [`Handle::publish`]).
        accepted: Option<oneshot::Sender<Result<(), ClientError>>>,
        outcome: oneshot::Sender<Result<(), DeliveryError>>,
    },
    Subscribe {
        subscriptions: Vec<Subscription>,
        answer: oneshot::Sender<Result<Vec<ReasonCode>, ClientError>>,
    },
    Unsubscribe {
        filters: Vec<TopicFilter>,
        answer: oneshot::Sender<Result<Vec<ReasonCode>, ClientError>>,
    },
    Disconnect {
        done: oneshot::Sender<()>,
    },
    Ack(InboundAck),
}

/// Sends requests to the client task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Handle {
    requests: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Request::Publish { .. } => "Publish",
            Request::Subscribe { .. } => "Subscribe",
            Request::Unsubscribe { .. } => "Unsubscribe",
            Request::Disconnect { .. } => "Disconnect",
            Request::Ack(_) => "Ack",
        })
    }
}

impl Handle {
    /// Hands `message` to the session and returns once the session has accepted it (so
    /// it waits while the session's pending queue is full). QoS 1/2 messages then survive
    /// reconnects; the returned [`Delivery`] reports the broker's acknowledgement. QoS 0
    /// messages fail with [`ClientError::NotConnected`] while offline.
    ///
    /// # Cancel safety
    /// If cancelled before it returns, the message may or may not have been accepted.
    pub async fn publish(&self, message: Publish) -> Result<Delivery, ClientError> {
        let (accepted, accepted_rx) = oneshot::channel();
        let (outcome, outcome_rx) = oneshot::channel();
        self.send_publish(message, Some(accepted), outcome).await?;
        accepted_rx.await.map_err(|_| ClientError::Stopped)??;
        Ok(Delivery(outcome_rx))
    }

    /// Queues `message` for the client and returns without waiting for the session to
    /// take it; everything else is the [`Delivery`]'s to report. Messages queued one after
    /// another keep their order. This lets a producer keep many messages in the pipe (the
    /// client then writes them in batches); the request queue bounds how many.
    ///
    /// # Cancel safety
    /// If cancelled, the message was either queued (and will be sent) or not at all.
    pub async fn enqueue(&self, message: Publish) -> Result<Delivery, ClientError> {
        let (outcome, outcome_rx) = oneshot::channel();
        self.send_publish(message, None, outcome).await?;
        Ok(Delivery(outcome_rx))
    }

    async fn send_publish(
        &self,
        message: Publish,
        accepted: Option<oneshot::Sender<Result<(), ClientError>>>,
        outcome: oneshot::Sender<Result<(), DeliveryError>>,
    ) -> Result<(), ClientError> {
        self.requests
            .send(Request::Publish {
                message: Box::new(message),
                accepted,
                outcome,
            })
            .await
            .map_err(|_| ClientError::Stopped)
    }

    /// Subscribes and waits for SUBACK: one reason code per subscription (the granted
    /// QoS, or an error code). Made again automatically if the broker loses our session.
    ///
    /// # Cancel safety
    /// If cancelled, the request may still be carried out; only its answer is lost.
    pub async fn subscribe(
        &self,
        subscriptions: Vec<Subscription>,
    ) -> Result<Vec<ReasonCode>, ClientError> {
        let (answer, rx) = oneshot::channel();
        self.requests
            .send(Request::Subscribe {
                subscriptions,
                answer,
            })
            .await
            .map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)?
    }

    /// Unsubscribes and waits for UNSUBACK (5.0 reason codes; empty under 3.1.1).
    ///
    /// # Cancel safety
    /// If cancelled, the request may still be carried out; only its answer is lost.
    pub async fn unsubscribe(
        &self,
        filters: Vec<TopicFilter>,
    ) -> Result<Vec<ReasonCode>, ClientError> {
        let (answer, rx) = oneshot::channel();
        self.requests
            .send(Request::Unsubscribe { filters, answer })
            .await
            .map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)?
    }

    /// Acknowledges an inbound message received as [`ClientEvent::MessageToAck`] (see
    /// [`ClientConfig::manual_acks`]): its PUBACK or PUBREC goes out now, or when the
    /// broker sends it again after a reconnect.
    ///
    /// # Cancel safety
    /// If cancelled, the acknowledgement was either queued or not at all; an
    /// unacknowledged message is sent again by the broker after a reconnect.
    pub async fn ack(&self, ack: InboundAck) -> Result<(), ClientError> {
        self.requests
            .send(Request::Ack(ack))
            .await
            .map_err(|_| ClientError::Stopped)
    }

    /// Sends DISCONNECT (so the broker drops our will), closes the connection and stops
    /// the client. Returns when that is done.
    ///
    /// # Cancel safety
    /// If cancelled after the request was queued, the client still disconnects and stops.
    pub async fn disconnect(&self) {
        let (done, rx) = oneshot::channel();
        if self
            .requests
            .send(Request::Disconnect { done })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }
}

/// Starts the client task on the current tokio runtime. TLS files are read here, so
/// their errors come back at once.
pub fn spawn(options: ClientOptions) -> Result<(Handle, Events), ClientError> {
    let tls = match &options.tls {
        Some(tls) => Some(tls_connector(tls)?),
        None => None,
    };
    let (requests_tx, requests_rx) = mpsc::channel(options.request_capacity.max(1));
    let (events_tx, events_rx) = mpsc::channel(options.event_capacity.max(1));
    let task = Task {
        session: ClientSession::new(options.session.clone()),
        options,
        tls,
        requests: requests_rx,
        events: events_tx,
        deliveries: HashMap::new(),
        subscribes: HashMap::new(),
        held: None,
        stopping: None,
    };
    tokio::spawn(task.run());
    Ok((
        Handle {
            requests: requests_tx,
        },
        Events(events_rx),
    ))
}

/// Most requests taken in one turn before writing (see `Task::take_more_requests`).
const BATCH: usize = 64;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Answer = oneshot::Sender<Result<Vec<ReasonCode>, ClientError>>;

struct Task {
    options: ClientOptions,
    tls: Option<(tokio_rustls::TlsConnector, bool)>,
    session: ClientSession,
    requests: mpsc::Receiver<Request>,
    events: mpsc::Sender<ClientEvent>,
    deliveries: HashMap<PublishToken, oneshot::Sender<Result<(), DeliveryError>>>,
    subscribes: HashMap<RequestToken, Answer>,
    /// A publish waiting for room in the session's pending queue.
    held: Option<Request>,
    /// Set once the application asked to disconnect.
    stopping: Option<oneshot::Sender<()>>,
}

/// How one connection ended, for the reconnect loop.
enum End {
    /// Reconnect (after backoff, if reconnecting is on).
    Retry,
    /// The broker refused us for a reason that retrying soon will not change (see
    /// [`is_lasting_refusal`]): reconnect after the longest backoff, so a fleet with a
    /// wrong password does not hammer its broker, yet recovers once it is fixed there.
    RetryAfterLongest,
    /// Stop the task.
    Stop,
}

impl Task {
    async fn run(mut self) {
        let mut failures: u32 = 0;
        loop {
            let mut wait_longest = false;
            match self.connect().await {
                Ok(io) => {
                    let established = self.serve(io).await;
                    match established {
                        (End::Stop, _) => break,
                        (End::Retry, connected) => {
                            if connected {
                                failures = 0;
                            }
                        }
                        (End::RetryAfterLongest, _) => wait_longest = true,
                    }
                }
                Err(reason) => {
                    if self.emit(ClientEvent::Unreachable(reason)).await.is_err() {
                        // Nobody listens; keep serving the handle anyway.
                    }
                }
            }
            let Some(backoff) = self.options.reconnect else {
                break;
            };
            if self.stopping.is_some() {
                break;
            }
            let delay = if wait_longest {
                backoff.max
            } else {
                backoff.delay(failures)
            };
            failures = failures.saturating_add(1);
            if !self.wait_offline(delay).await {
                break;
            }
        }
        self.fail_waiters();
        if let Some(done) = self.stopping.take() {
            let _ = done.send(());
        }
    }

    /// TCP connect (with TCP_NODELAY: with Nagle on both sides a QoS 1 stream stalls on
    /// delayed ACKs) and the TLS handshake, within the connect timeout.
    async fn connect(&self) -> Result<Box<dyn Io>, String> {
        let addr = format!("{}:{}", self.options.host, self.options.port);
        let attempt = async {
            let tcp = TcpStream::connect(&addr)
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            tcp.set_nodelay(true).map_err(|e| format!("{addr}: {e}"))?;
            let Some((connector, _)) = &self.tls else {
                return Ok(Box::new(tcp) as Box<dyn Io>);
            };
            let name = ServerName::try_from(self.options.host.clone())
                .map_err(|e| format!("{}: not a valid TLS server name: {e}", self.options.host))?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("{addr}: TLS: {e}"))?;
            Ok(Box::new(tls) as Box<dyn Io>)
        };
        match tokio::time::timeout(self.options.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "{addr}: no connection within {:?}",
                self.options.connect_timeout
            )),
        }
    }

    /// Runs one connection until it ends. Returns how, and whether CONNACK accepted it.
    async fn serve(&mut self, mut io: Box<dyn Io>) -> (End, bool) {
        let mut connected = false;
        self.session.handle_connected(Instant::now().into_std());
        let mut read_buf = BytesMut::with_capacity(8 * 1024);
        let mut write_buf = BytesMut::with_capacity(8 * 1024);
        // Set once every handle is gone and DISCONNECT is queued.
        let mut hanging_up = false;
        loop {
            // 1. Write what the session wants sent, in order; only the session's timers
            //    can interrupt a write (see `write_out`), never a read or a request.
            while let Some(packet) = self.session.poll_packet() {
                if let Err(e) = codec::encode(&packet, self.session.protocol(), &mut write_buf) {
                    // Our own session built it: a bug, but not a reason to crash.
                    log_bug(&format!("cannot encode {:?}: {e}", packet.packet_type()));
                }
            }
            if !write_buf.is_empty() && self.write_out(&mut io, &mut write_buf).await.is_err() {
                write_buf.clear();
                self.session.handle_closed(Instant::now().into_std());
            }
            //    Once a requested DISCONNECT is written, the client closes the connection
            //    itself ([MQTT-3.14.4-1]) rather than wait for the broker to, which a stalled
            //    link never does. Closing -> Disconnected(Requested), handled below.
            if write_buf.is_empty()
                && (self.stopping.is_some() || hanging_up)
                && !self.session.is_connected()
            {
                self.session.handle_closed(Instant::now().into_std());
            }
            // 2. Hand events to their waiters and the application.
            let mut end = None;
            while let Some(event) = self.session.poll_event() {
                match event {
                    Event::Connected { session_present } => {
                        connected = true;
                        let _ = self.emit(ClientEvent::Connected { session_present }).await;
                    }
                    Event::ConnectionRefused { reason, .. } => {
                        let _ = self.emit(ClientEvent::Refused(reason)).await;
                        self.fail_subscribes(ClientError::Refused(reason));
                        end = Some(if is_lasting_refusal(reason) {
                            End::RetryAfterLongest
                        } else {
                            End::Retry
                        });
                    }
                    Event::Disconnected(cause) => {
                        let stop = cause == DisconnectCause::Requested;
                        let _ = self.emit(ClientEvent::Disconnected(cause)).await;
                        end = Some(if stop { End::Stop } else { End::Retry });
                    }
                    other => self.dispatch(other).await,
                }
            }
            if let Some(end) = end {
                // Bounded: on a stalled link, TLS's close_notify may never get out.
                let _ = tokio::time::timeout(self.options.session.response_timeout, io.shutdown())
                    .await;
                return (end, connected);
            }
            if !write_buf.is_empty() {
                // A timer interrupted the write (and was handled): finish writing first.
                continue;
            }
            // 3. Wait for exactly one input.
            let deadline = self.session.poll_timeout().map(Instant::from_std);
            let accepting = self.held.is_none() && self.stopping.is_none();
            tokio::select! {
                read = io.read_buf(&mut read_buf) => {
                    let now = Instant::now().into_std();
                    match read {
                        Ok(0) | Err(_) => self.session.handle_closed(now),
                        Ok(_) => self.decode_all(&mut read_buf, now),
                    }
                }
                request = self.requests.recv(), if accepting => match request {
                    Some(request) => {
                        self.handle_request(request);
                        self.take_more_requests();
                    }
                    // Every handle is gone: nobody can publish any more, so finish.
                    None => {
                        hanging_up = true;
                        self.session.disconnect(ReasonCode::NORMAL_DISCONNECTION, Instant::now().into_std());
                    }
                },
                () = sleep_until(deadline) => {
                    self.session.handle_timeout(Instant::now().into_std());
                }
            }
            self.retry_held();
        }
    }

    /// Writes `buf` out (consuming it) and flushes, while still running the session's
    /// timers: on a stalled link with a full send buffer a write blocks for as long as TCP
    /// keeps retrying (minutes), and keep-alive must end the connection meanwhile. When a
    /// timer fires it is handled and this returns early, the unwritten rest left in `buf`
    /// (to be written before anything else, or dropped if the connection ended).
    ///
    /// (Fix: a plain `write_all` here blocked the whole task on such a link: no
    /// keep-alive timeout and no requests answered. And nothing flushed: tokio-rustls may
    /// accept data into its buffer without writing it when the socket is full.)
    async fn write_out(&mut self, io: &mut Box<dyn Io>, buf: &mut BytesMut) -> std::io::Result<()> {
        enum Step {
            Wrote(usize),
            Flushed,
            Timer,
        }
        loop {
            let deadline = self.session.poll_timeout().map(Instant::from_std);
            // `write` and `flush` are cancel safe: if the timer wins, nothing of `buf` was
            // taken.
            let step = tokio::select! {
                done = async {
                    if buf.is_empty() {
                        io.flush().await.map(|()| Step::Flushed)
                    } else {
                        io.write(buf).await.map(Step::Wrote)
                    }
                } => done?,
                () = sleep_until(deadline) => Step::Timer,
            };
            match step {
                Step::Wrote(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Step::Wrote(n) => bytes::Buf::advance(buf, n),
                Step::Flushed => return Ok(()),
                Step::Timer => {
                    self.session.handle_timeout(Instant::now().into_std());
                    return Ok(());
                }
            }
        }
    }

    fn decode_all(&mut self, buf: &mut BytesMut, now: std::time::Instant) {
        let max = self.session.max_incoming_packet_size();
        loop {
            match codec::decode(buf, max, self.session.protocol()) {
                Ok(Some(packet)) => self.session.handle_packet(packet, now),
                Ok(None) => return,
                Err(e) => {
                    self.session.handle_decode_error(&e, now);
                    buf.clear();
                    return;
                }
            }
        }
    }

    fn handle_request(&mut self, request: Request) {
        let now = Instant::now().into_std();
        match request {
            Request::Publish {
                message,
                accepted,
                outcome,
            } => {
                let qos0 = message.qos == crate::mqtt::packet::QoS::AtMostOnce;
                if !qos0 && !self.session.can_accept_publish() {
                    self.held = Some(Request::Publish {
                        message,
                        accepted,
                        outcome,
                    });
                    return;
                }
                let result = match self.session.publish(*message, now) {
                    Ok(token) => {
                        self.deliveries.insert(token, outcome);
                        Ok(())
                    }
                    Err(e) => {
                        let e = match e {
                            SessionError::NotConnected => ClientError::NotConnected,
                            e => ClientError::Session(e),
                        };
                        let _ = outcome.send(Err(DeliveryError::NotAccepted(e.clone())));
                        Err(e)
                    }
                };
                if let Some(accepted) = accepted {
                    let _ = accepted.send(result);
                }
            }
            Request::Subscribe {
                subscriptions,
                answer,
            } => match self
                .session
                .subscribe(subscriptions, SubscribeProperties::default(), now)
            {
                Ok(token) => {
                    self.subscribes.insert(token, answer);
                }
                Err(e) => {
                    let _ = answer.send(Err(e.into()));
                }
            },
            Request::Unsubscribe { filters, answer } => {
                match self
                    .session
                    .unsubscribe(filters, UnsubscribeProperties::default(), now)
                {
                    Ok(token) => {
                        self.subscribes.insert(token, answer);
                    }
                    Err(e) => {
                        let _ = answer.send(Err(e.into()));
                    }
                }
            }
            Request::Ack(ack) => self.session.ack_message(ack, now),
            Request::Disconnect { done } => {
                self.stopping = Some(done);
                // Queues DISCONNECT (the session is now Closing); `serve` writes it and then
                // closes the connection. (Fix: this used to call `handle_closed` here when
                // `!is_connected()`, which is always true once Closing: the DISCONNECT was
                // dropped unsent and the broker published our will on every graceful
                // disconnect.)
                self.session
                    .disconnect(ReasonCode::NORMAL_DISCONNECTION, now);
            }
        }
    }

    /// After one request, takes those already queued behind it (up to [`BATCH`]), so that
    /// a burst of publishes shares one write instead of costing a syscall each.
    fn take_more_requests(&mut self) {
        for _ in 0..BATCH {
            if self.held.is_some() || self.stopping.is_some() {
                return;
            }
            match self.requests.try_recv() {
                Ok(request) => self.handle_request(request),
                Err(_) => return,
            }
        }
    }

    /// Offers a held publish to the session again once it has room.
    fn retry_held(&mut self) {
        if self.session.can_accept_publish()
            && let Some(request) = self.held.take()
        {
            self.handle_request(request);
        }
    }

    async fn dispatch(&mut self, event: Event) {
        match event {
            Event::Message(publish) => {
                let _ = self.emit(ClientEvent::Message(publish)).await;
            }
            Event::MessageToAck(publish, ack) => {
                let _ = self.emit(ClientEvent::MessageToAck(publish, ack)).await;
            }
            Event::Delivered(token) => {
                if let Some(tx) = self.deliveries.remove(&token) {
                    let _ = tx.send(Ok(()));
                }
            }
            Event::PublishFailed { token, reason } => {
                if let Some(tx) = self.deliveries.remove(&token) {
                    let _ = tx.send(Err(DeliveryError::Refused(reason)));
                }
            }
            Event::Subscribed {
                token,
                reason_codes,
            }
            | Event::Unsubscribed {
                token,
                reason_codes,
            } => {
                if let Some(tx) = self.subscribes.remove(&token) {
                    let _ = tx.send(Ok(reason_codes));
                }
            }
            Event::Resubscribed { reason_codes } => {
                let _ = self.emit(ClientEvent::Resubscribed(reason_codes)).await;
            }
            Event::Connected { .. } | Event::ConnectionRefused { .. } | Event::Disconnected(_) => {}
        }
    }

    /// Waits out a reconnect delay while still answering requests. False: stop.
    async fn wait_offline(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            let accepting = self.held.is_none();
            tokio::select! {
                () = tokio::time::sleep_until(until) => return true,
                request = self.requests.recv(), if accepting => match request {
                    Some(Request::Disconnect { done }) => {
                        self.stopping = Some(done);
                        return false;
                    }
                    Some(request) => self.handle_request(request),
                    None => return false,
                },
            }
            self.retry_held();
        }
    }

    async fn emit(&mut self, event: ClientEvent) -> Result<(), ()> {
        self.events.send(event).await.map_err(|_| ())
    }

    fn fail_subscribes(&mut self, error: ClientError) {
        for (_, tx) in self.subscribes.drain() {
            let _ = tx.send(Err(error.clone()));
        }
    }

    /// The task is ending: tell everyone still waiting.
    fn fail_waiters(&mut self) {
        self.fail_subscribes(ClientError::Stopped);
        self.deliveries.clear();
        if let Some(Request::Publish {
            accepted, outcome, ..
        }) = self.held.take()
        {
            if let Some(accepted) = accepted {
                let _ = accepted.send(Err(ClientError::Stopped));
            }
            let _ = outcome.send(Err(DeliveryError::Stopped));
        }
    }
}

/// CONNACK refusals that a retry in a moment will not change: credentials,
/// authorisation, a ban, the protocol version or the client identifier.
fn is_lasting_refusal(reason: ReasonCode) -> bool {
    matches!(
        reason,
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            | ReasonCode::CLIENT_IDENTIFIER_NOT_VALID
            | ReasonCode::BAD_USER_NAME_OR_PASSWORD
            | ReasonCode::NOT_AUTHORIZED
            | ReasonCode::BANNED
            | ReasonCode::BAD_AUTHENTICATION_METHOD
    )
}

/// Sleeps until `deadline`, or forever without one.
///
/// # Cancel safety
/// Cancel safe: it holds no state.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn log_bug(message: &str) {
    eprintln!("fieldgate: internal error: {message}");
}

/// Loads the TLS files as a connection would (CA, client certificate and key): for
/// checking a configuration before anything connects.
pub fn check_tls(tls: &TlsOptions) -> Result<(), ClientError> {
    tls_connector(tls).map(|_| ())
}

fn tls_connector(tls: &TlsOptions) -> Result<(tokio_rustls::TlsConnector, bool), ClientError> {
    let err = |what: &str, e: &dyn std::fmt::Display| ClientError::Tls(format!("{what}: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &tls.ca_file {
        let certs =
            CertificateDer::pem_file_iter(ca).map_err(|e| err(&ca.display().to_string(), &e))?;
        for cert in certs {
            let cert = cert.map_err(|e| err(&ca.display().to_string(), &e))?;
            roots
                .add(cert)
                .map_err(|e| err(&ca.display().to_string(), &e))?;
        }
        if roots.is_empty() {
            return Err(err(
                &ca.display().to_string(),
                &"no certificate in it (PEM `BEGIN CERTIFICATE` blocks expected)",
            ));
        }
    }
    if tls.system_roots || tls.ca_file.is_none() {
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // A system store with a certificate rustls cannot parse is not our problem.
            let _ = roots.add(cert);
        }
    }
    if roots.is_empty() {
        return Err(ClientError::Tls(
            "no trusted CA: give ca_file or enable system roots".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("TLS versions", &e))?;
    let roots = Arc::new(roots);
    let builder = if tls.skip_hostname_check {
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| err("verifier", &e))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoHostnameCheck(inner)))
    } else {
        builder.with_root_certificates(roots)
    };
    let config = match &tls.client_cert {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| err(&cert.display().to_string(), &e))?
                .collect::<Result<_, _>>()
                .map_err(|e| err(&cert.display().to_string(), &e))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| err(&key.display().to_string(), &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| err("client certificate", &e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok((
        tokio_rustls::TlsConnector::from(Arc::new(config)),
        tls.skip_hostname_check,
    ))
}

/// Verifies the chain like WebPKI does, but accepts a certificate that does not name the
/// host (mosquitto's `--insecure`). Everything else a verifier checks is delegated.
#[derive(Debug)]
struct NoHostnameCheck(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for NoHostnameCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
