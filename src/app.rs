//! The gateway runtime behind `fieldgate run`: starts the local broker, connects the
//! gateway's own MQTT client to it, polls each device on its own task, publishes
//! telemetry and availability, and executes `set` commands. It wires the parts together
//! and owns no protocol or device logic of its own.
//!
//! Topics (`<prefix>` is `gateway.topic_prefix`, `fieldgate/<id>` by default):
//! `<prefix>/<device>/<point>` telemetry; `<prefix>/<device>/<point>/set` commands and
//! `.../set/result` their results; `<prefix>/availability` and
//! `<prefix>/<device>/availability`, retained `online`/`offline`; `<prefix>/$SYS/spool`
//! the upstream path's counters (see `upstream`).
//!
//! With an upstream, QoS 1/2 telemetry and forwarded LAN messages go through the spool
//! (`app::upstream`); availability, command results and discovery go to the upstream
//! client directly (its session keeps QoS 1/2 ones across reconnects, not restarts).

mod health;
mod links;
mod modbus;
mod reload;
mod upstream;

pub use reload::Reload;

pub use upstream::{UpstreamError, UpstreamStats};

use links::Links;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::bridge::{commands, discovery, telemetry};
use crate::config::{Config, Device, Forward, GpioChip, SerialPort, Source};
use crate::devices::sim::SimDevice;
use crate::devices::{Quality, Value};
use crate::mqtt::broker::{Broker, BrokerError, Transport};
use crate::mqtt::client::{self, ClientEvent, Handle};
use crate::mqtt::packet::{Publish, PublishProperties, QoS, Subscription, SubscriptionOptions};
use crate::mqtt::topic::{TopicFilter, TopicName};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("local broker: {0}")]
    Broker(#[from] BrokerError),
    #[error("no local broker with a TCP listener to publish to (an upstream comes later)")]
    NoLocalBroker,
    #[error("MQTT client: {0}")]
    Client(String),
    #[error("{0:?} is not a valid topic")]
    Topic(String),
    #[error("device on bus {0:?}, which is not configured")]
    UnknownBus(String),
    #[error("{0}")]
    Metrics(String),
    #[error("upstream spool: {0}")]
    Spool(#[from] UpstreamError),
}

/// A command for a device task: the point, the parsed command or why its payload is not
/// one (answered with an error result, never executed), and the broker it came from (the
/// result goes back there).
#[derive(Debug)]
struct DeviceCommand {
    point: String,
    command: Result<commands::Command, commands::CommandError>,
    reply: Handle,
    /// MQTT 5 request/response: the command's Response Topic and Correlation Data; the
    /// result goes there too.
    response: Option<(TopicName, Option<Bytes>)>,
}

/// Where each device's commands go, by device id; replaced entries on a reload.
type Routes = std::sync::Arc<std::sync::RwLock<HashMap<String, mpsc::Sender<DeviceCommand>>>>;

/// A running gateway; [`Gateway::shutdown`] says `offline` and stops everything.
#[derive(Debug)]
pub struct Gateway {
    broker: Option<Broker>,
    /// Where and as whom the gateway's own client reaches the local broker.
    local: links::LocalBroker,
    /// The counters every task adds to: kept across reloads, so they carry on.
    metrics: Arc<crate::metrics::Metrics>,
    /// The `/metrics` listener, if configured: its address (port 0 resolved) and task.
    metrics_listener: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    /// The bus tasks in use, with what they were started for.
    buses: HashMap<String, (crate::modbus::bus::BusConfig, crate::modbus::bus::BusHandle)>,
    /// The clients, the upstream path and the devices (see `links`).
    links: Links,
    /// The configuration running (after a reload: what it applied, and the sections it
    /// could not apply as they were).
    config: Config,
}

/// Where readings and availability go: the local broker's client, and with an upstream,
/// its path (the spool for QoS 1/2, the client for the rest).
#[derive(Debug, Clone)]
struct Outputs {
    local: Handle,
    upstream: Option<upstream::UpstreamPath>,
    /// Counted per device: polls, errors, latency, last success.
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Outputs {
    /// Both clients, for what does not go through the spool.
    fn handles(&self) -> impl Iterator<Item = &Handle> {
        std::iter::once(&self.local).chain(self.upstream.as_ref().map(|u| u.handle()))
    }
}

/// Where a broker's messages matching `forward` rules are copied to.
#[derive(Debug)]
enum ForwardTo {
    /// The local broker (rules `from: upstream`).
    Local(Handle),
    /// The upstream path (rules `from: local`): through the spool at QoS 1/2.
    Upstream(upstream::UpstreamPath),
}

fn topic(name: &str) -> Result<TopicName, AppError> {
    TopicName::try_from(name).map_err(|_| AppError::Topic(name.to_string()))
}

fn message(topic: TopicName, payload: impl Into<Bytes>, qos: QoS, retain: bool) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic,
        packet_id: None,
        payload: payload.into(),
        properties: PublishProperties::default(),
    }
}

impl Gateway {
    /// Starts the broker, the metrics listener, the buses and the links (the clients,
    /// the upstream path and the devices).
    pub async fn start(config: Config) -> Result<Gateway, AppError> {
        // The gateway's own client must get in whatever the password and ACL files say
        // (with a password file, anonymous clients are refused by default).
        let login = crate::mqtt::broker::auth::InternalClient::generate()
            .map_err(|e| AppError::Client(e.to_string()))?;
        let broker = match config.broker.clone() {
            Some(mut broker) => {
                broker.internal_client = Some(login.clone());
                Some(Broker::start(broker).await?)
            }
            None => None,
        };
        let broker_addr = broker
            .as_ref()
            .and_then(|b| {
                b.local_addrs()
                    .iter()
                    .zip(&config.broker.as_ref()?.listeners)
                    .find(|(_, l)| l.transport == Transport::Tcp)
                    .map(|(a, _)| *a)
            })
            .ok_or(AppError::NoLocalBroker)?;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let metrics_listener = match config.metrics {
            Some(bind) => Some(serve_metrics(bind, &metrics).await?),
            None => None,
        };
        let buses = modbus::spawn_buses(&config);
        let local = links::LocalBroker {
            addr: broker_addr,
            login,
        };
        let links = Links::start(&config, &local, &metrics, &bus_handles(&buses)).await?;
        Ok(Gateway {
            broker,
            local,
            metrics,
            metrics_listener,
            buses,
            links,
            config,
        })
    }

    /// The local broker's bound addresses (port 0 resolved).
    pub fn broker_addrs(&self) -> &[SocketAddr] {
        self.broker.as_ref().map_or(&[], |b| b.local_addrs())
    }

    /// The upstream path's counters (with an upstream): what `<prefix>/$SYS/spool`
    /// publishes.
    pub fn upstream_stats(&self) -> Option<UpstreamStats> {
        self.links.upstream.as_ref().map(upstream::Running::stats)
    }

    /// Stops the devices, lets the upstream pump finish what is in flight (briefly) and
    /// closes the spool, announces `offline`, disconnects and stops the broker.
    pub async fn shutdown(mut self) {
        if let Some((_, listener)) = &self.metrics_listener {
            listener.abort();
        }
        self.links.stop(true).await;
        if let Some(broker) = self.broker {
            broker.shutdown().await;
        }
    }
}

/// Binds the `/metrics` listener.
async fn serve_metrics(
    bind: SocketAddr,
    metrics: &Arc<crate::metrics::Metrics>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), AppError> {
    crate::metrics::serve(bind, Arc::clone(metrics))
        .await
        .map_err(|e| AppError::Metrics(e.to_string()))
}

/// The handles of running buses, by id: what device tasks are given.
fn bus_handles(
    buses: &HashMap<String, (crate::modbus::bus::BusConfig, crate::modbus::bus::BusHandle)>,
) -> HashMap<String, crate::modbus::bus::BusHandle> {
    buses
        .iter()
        .map(|(id, (_, handle))| (id.clone(), handle.clone()))
        .collect()
}

/// Starts the task of one device, taking its commands from `rx`.
fn spawn_device(
    device: &Device,
    prefix: &str,
    outputs: &Outputs,
    buses: &HashMap<String, crate::modbus::bus::BusHandle>,
    rx: mpsc::Receiver<DeviceCommand>,
) -> Result<tokio::task::JoinHandle<()>, AppError> {
    let (device, prefix, outputs) = (device.clone(), prefix.to_string(), outputs.clone());
    Ok(match &device.source {
        Source::Sim => tokio::spawn(run_sim_device(device, prefix, outputs, rx)),
        Source::Serial(port) => {
            let port = port.clone();
            tokio::spawn(run_serial_device(device, port, prefix, outputs, rx))
        }
        Source::Gpio(chip) => {
            let chip = chip.clone();
            tokio::spawn(run_gpio_device(device, chip, prefix, outputs, rx))
        }
        Source::Modbus(m) => {
            // The configuration only names buses that exist.
            let Some(bus) = buses.get(&m.bus) else {
                return Err(AppError::UnknownBus(m.bus.clone()));
            };
            let (m, bus) = (m.clone(), bus.clone());
            tokio::spawn(modbus::run(device, m, bus, prefix, outputs, rx))
        }
    })
}

/// What one client's event loop needs.
struct ServeClient {
    prefix: String,
    handle: Handle,
    /// Where messages matching `rules` go.
    forward_to: Option<ForwardTo>,
    /// The upstream client's loop tells the upstream path whether it is connected.
    link: Option<upstream::Link>,
    /// With `manual_acks` (the local client when it forwards up): where inbound
    /// messages wait for their acknowledgement.
    acks: Option<upstream::Acks>,
    rules: Vec<Forward>,
    routes: Routes,
    discovery: Option<std::sync::Arc<(String, Vec<discovery::Discovery>)>>,
    /// Told `true` at the first CONNACK (the local client: devices wait for it).
    ready: Option<tokio::sync::watch::Sender<bool>>,
}

/// One broker's client events: on (re)connect, availability and subscriptions; then
/// `set` commands to their devices and messages matching forwarding rules to the other
/// broker.
async fn serve_client(serve: ServeClient, mut events: client::Events) {
    let set_filter = format!("{}/+/+/set", serve.prefix);
    let Ok(availability) = topic(&format!("{}/availability", serve.prefix)) else {
        return;
    };
    while let Some(event) = events.recv().await {
        match event {
            ClientEvent::Connected { .. } => {
                if let Some(link) = &serve.link {
                    link.set(true);
                }
                let handle = &serve.handle;
                // Retained, so late subscribers know; the will says `offline`.
                let online = message(availability.clone(), "online", QoS::AtLeastOnce, true);
                let _ = handle.enqueue(online).await;
                let mut subscriptions: Vec<Subscription> = Vec::new();
                if let Ok(filter) = TopicFilter::try_from(set_filter.as_str()) {
                    subscriptions.push(subscription(filter, QoS::AtLeastOnce));
                }
                subscriptions.extend(
                    serve
                        .rules
                        .iter()
                        .map(|r| subscription(r.filter.clone(), r.qos)),
                );
                if let Some(discovery) = &serve.discovery
                    && let Ok(status) = TopicFilter::try_from(discovery.0.as_str())
                {
                    subscriptions.push(subscription(status, QoS::AtLeastOnce));
                    announce(handle, &discovery.1).await;
                }
                let _ = handle.subscribe(subscriptions).await;
                if let Some(ready) = &serve.ready {
                    ready.send_replace(true);
                }
            }
            ClientEvent::Disconnected(_)
            | ClientEvent::Refused(_)
            | ClientEvent::Unreachable(_) => {
                if let Some(link) = &serve.link {
                    link.set(false);
                }
            }
            ClientEvent::Message(publish) => {
                // QoS 0, or acknowledged by the client already: nothing to wait for.
                let _ = on_message(&serve, &publish).await;
            }
            ClientEvent::MessageToAck(publish, ack) => {
                let (copies, hold) = on_message(&serve, &publish).await;
                match &serve.acks {
                    Some(acks) => {
                        let pending = upstream::PendingAck { ack, copies, hold };
                        if acks.send(pending).await.is_err() {
                            return;
                        }
                    }
                    None if !hold => {
                        let _ = serve.handle.ack(ack).await;
                    }
                    None => {}
                }
            }
            ClientEvent::Resubscribed(_) => {}
        }
    }
}

/// A message from the broker: Home Assistant's status, a command, or one to forward.
/// Returns the spool records its copies became (to be durable before the message is
/// acknowledged) and whether it must not be acknowledged at all (the spool stopped).
async fn on_message(serve: &ServeClient, publish: &Publish) -> (Vec<crate::spool::Enqueued>, bool) {
    let none = (Vec::new(), false);
    // Home Assistant (re)started: it forgets what was discovered.
    if let Some(discovery) = &serve.discovery
        && publish.topic.as_str() == discovery.0
    {
        if &publish.payload[..] == b"online" {
            announce(&serve.handle, &discovery.1).await;
        }
        return none;
    }
    if route_command(publish, &serve.routes, &serve.prefix, &serve.handle) {
        return none;
    }
    let Some(forward_to) = &serve.forward_to else {
        return none;
    };
    let copies: Vec<Publish> = serve
        .rules
        .iter()
        .filter(|r| r.filter.matches(&publish.topic))
        .filter_map(|rule| {
            let to = topic(&rule.rewrite(publish.topic.as_str())).ok()?;
            Some(Publish {
                qos: publish.qos.min(rule.qos),
                topic: to,
                packet_id: None,
                dup: false,
                ..publish.clone()
            })
        })
        .collect();
    match forward_to {
        ForwardTo::Local(local) => {
            for copy in copies {
                let _ = local.enqueue(copy).await;
            }
            none
        }
        ForwardTo::Upstream(upstream) => upstream.forward_all(copies).await,
    }
}

/// Publishes the Home Assistant discovery messages, retained.
async fn announce(handle: &Handle, messages: &[discovery::Discovery]) {
    for m in messages {
        if let Ok(t) = topic(&m.topic) {
            let _ = handle
                .enqueue(message(t, m.payload.clone(), QoS::AtLeastOnce, true))
                .await;
        }
    }
}

fn subscription(filter: TopicFilter, qos: QoS) -> Subscription {
    Subscription {
        filter,
        options: SubscriptionOptions {
            qos,
            // Our own telemetry and results must not come back to us.
            no_local: true,
            ..SubscriptionOptions::default()
        },
    }
}

/// `<prefix>/<device>/<point>/set` -> the device's task; false for any other topic.
fn route_command(publish: &Publish, routes: &Routes, prefix: &str, reply: &Handle) -> bool {
    let Some(rest) = publish
        .topic
        .as_str()
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.strip_suffix("/set"))
    else {
        return false;
    };
    let Some((device, point)) = rest.split_once('/') else {
        return false;
    };
    // Cloned out: the lock is held for a lookup only, never across a send.
    let route = routes
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(device)
        .cloned();
    let Some(route) = route else {
        return false;
    };
    let command = DeviceCommand {
        point: point.to_string(),
        command: commands::parse(&publish.payload),
        reply: reply.clone(),
        response: publish
            .properties
            .response_topic
            .clone()
            .map(|t| (t, publish.properties.correlation_data.clone())),
    };
    // A full queue means the device is far behind: dropping this command is safer than
    // executing it late; the sender hears nothing and may retry.
    let _ = route.try_send(command);
    true
}

/// Polls a simulated device, publishes its readings, executes its commands.
async fn run_sim_device(
    device: Device,
    prefix: String,
    clients: Outputs,
    mut commands_rx: mpsc::Receiver<DeviceCommand>,
) {
    let mut sim = SimDevice::new(&device);
    let started = Instant::now();
    let base = format!("{prefix}/{}", device.id);
    availability(&clients, &base, "online").await;
    let mut reports = Reports::default();
    let mut ticks = tokio::time::interval(device.poll);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let now = Instant::now();
                for (point, value) in sim.read(started.elapsed()) {
                    if reports.due(&sim, &point, &value, now) {
                        publish_reading(&clients, &base, &sim, &point, value).await;
                    }
                }
                clients.metrics.poll_succeeded(&device.id, now.elapsed());
            }
            Some(cmd) = commands_rx.recv() => {
                let outcome = match &cmd.command {
                    Ok(command) => too_old(&sim, &cmd.point, command)
                        .map_or_else(|| sim.write(&cmd.point, command.value.clone()).map_err(|e| e.to_string()), Err),
                    Err(e) => Err(e.to_string()),
                };
                if let Ok(value) = &outcome {
                    // The new state goes out at once, not at the next poll.
                    reports.sent(&cmd.point, value.clone(), Instant::now());
                    publish_reading(&clients, &base, &sim, &cmd.point, value.clone()).await;
                }
                answer(&base, &cmd, outcome).await;
            }
        }
    }
}

/// Publishes a device's availability, retained, on every broker.
async fn availability(clients: &Outputs, base: &str, state: &'static str) {
    if let Ok(t) = topic(&format!("{base}/availability")) {
        for client in clients.handles() {
            let _ = client
                .enqueue(message(t.clone(), state, QoS::AtLeastOnce, true))
                .await;
        }
    }
}

/// Answers a command on the broker it came from (and its MQTT 5 Response Topic).
async fn answer(base: &str, cmd: &DeviceCommand, outcome: Result<Value, String>) {
    let id = cmd.command.as_ref().ok().and_then(|c| c.id.as_ref());
    let result = commands::result(id, outcome);
    if let Some((response_topic, correlation_data)) = &cmd.response {
        let mut response = message(
            response_topic.clone(),
            result.clone(),
            QoS::AtLeastOnce,
            false,
        );
        response.properties.correlation_data = correlation_data.clone();
        let _ = cmd.reply.enqueue(response).await;
    }
    if let Ok(result_topic) = topic(&format!("{base}/{}/set/result", cmd.point)) {
        let _ = cmd
            .reply
            .enqueue(message(result_topic, result, QoS::AtLeastOnce, false))
            .await;
    }
}

/// Longest wait between attempts to open a device that is gone (a serial port
/// unplugged, a GPIO chip missing).
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A line-oriented serial sensor: opens the port (retrying with capped backoff while it
/// is missing, e.g. a USB adapter unplugged), publishes what each line holds, writes
/// commands as lines. Its availability follows the port.
async fn run_serial_device(
    device: Device,
    port: SerialPort,
    prefix: String,
    clients: Outputs,
    mut commands_rx: mpsc::Receiver<DeviceCommand>,
) {
    use tokio::io::AsyncWriteExt;
    use tokio_serial::SerialPortBuilderExt;
    let base = format!("{prefix}/{}", device.id);
    let mut reports = Reports::default();
    let mut delay = Duration::from_millis(250);
    availability(&clients, &base, "offline").await;
    let parser = match crate::devices::serial::FrameParser::new(&port.format) {
        Ok(parser) => parser,
        Err(e) => {
            // The configuration check compiles the pattern first; this cannot happen.
            crate::observe::device_warn(
                &device.id,
                format_args!("fieldgate run: device {}: {e}", device.id),
            );
            return;
        }
    };
    loop {
        let path = port.path.to_string_lossy().into_owned();
        match serial_builder(&path, &port).open_native_async() {
            Ok(stream) => {
                delay = Duration::from_millis(250);
                availability(&clients, &base, "online").await;
                let (reader, mut writer) = tokio::io::split(stream);
                let mut frames = Frames::new(reader, port.frame_length);
                loop {
                    tokio::select! {
                        frame = frames.next() => match frame {
                            Ok(Some(line)) => {
                                let now = Instant::now();
                                for (point, value) in parser.parse(&line, &device.points) {
                                    if reports.due(&device, &point, &value, now) {
                                        publish_reading(&clients, &base, &device, &point, value).await;
                                    }
                                }
                                // A frame the device sent by itself: no poll, no latency.
                                clients.metrics.poll_succeeded(&device.id, Duration::ZERO);
                            }
                            // Closed or failed (unplugged): offline, then reopen.
                            Ok(None) | Err(_) => break,
                        },
                        Some(cmd) = commands_rx.recv() => {
                            let outcome = match &cmd.command {
                                Err(e) => Err(e.to_string()),
                                Ok(command) => match too_old(&device, &cmd.point, command) {
                                    Some(old) => Err(old),
                                    None => match Points::point(&device, &cmd.point) {
                                        None => Err(crate::devices::WriteError::UnknownPoint(cmd.point.clone()).to_string()),
                                        Some(point) => match crate::devices::serial::write_line(point, &command.value) {
                                            Err(e) => Err(e.to_string()),
                                            Ok(line) => match writer.write_all(line.as_bytes()).await {
                                                Ok(()) => Ok(command.value.clone()),
                                                Err(e) => Err(format!("cannot write to the port: {e}")),
                                            },
                                        },
                                    },
                                },
                            };
                            answer(&base, &cmd, outcome).await;
                        }
                    }
                }
                availability(&clients, &base, "offline").await;
            }
            Err(_) => {
                // Missing port: retried below; the availability topic already says so.
            }
        }
        clients.metrics.device_failed(&device.id);
        wait_offline(&base, &mut commands_rx, delay, "its port is not open").await;
        delay = (delay * 2).min(RETRY_MAX);
    }
}

/// The port's settings as tokio-serial takes them.
fn serial_builder(path: &str, port: &SerialPort) -> tokio_serial::SerialPortBuilder {
    use crate::config::{FlowControl, Parity};
    let parity = match port.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let data_bits = match port.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let stop_bits = if port.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    let flow_control = match port.flow_control {
        FlowControl::None => tokio_serial::FlowControl::None,
        FlowControl::Software => tokio_serial::FlowControl::Software,
        FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
    };
    tokio_serial::new(path, port.baud)
        .parity(parity)
        .data_bits(data_bits)
        .stop_bits(stop_bits)
        .flow_control(flow_control)
}

/// Frames from a serial port: `\n`-terminated lines, or `length`-byte chunks.
struct Frames<R> {
    reader: R,
    buf: BytesMut,
    length: Option<usize>,
}

impl<R: tokio::io::AsyncRead + Unpin> Frames<R> {
    fn new(reader: R, length: Option<usize>) -> Self {
        Frames {
            reader,
            buf: BytesMut::new(),
            length,
        }
    }

    /// The next frame as text; `None` at end of stream.
    ///
    /// # Cancel safety
    /// Cancel safe: bytes read are kept in the buffer until a whole frame is there.
    async fn next(&mut self) -> std::io::Result<Option<String>> {
        use tokio::io::AsyncReadExt;
        loop {
            let end = match self.length {
                Some(n) => (self.buf.len() >= n).then_some((n, n)),
                None => self
                    .buf
                    .iter()
                    .position(|&b| b == b'\n')
                    .map(|i| (i, i + 1)),
            };
            if let Some((frame_end, consumed)) = end {
                let frame = self.buf.split_to(consumed);
                let text = String::from_utf8_lossy(&frame[..frame_end])
                    .trim_end_matches('\r')
                    .to_string();
                return Ok(Some(text));
            }
            // A sensor that never ends its line must not grow memory for ever.
            if self.buf.len() > 64 * 1024 {
                self.buf.clear();
            }
            self.buf.reserve(256);
            if self.reader.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }
}

/// Waits `delay` before a device is tried again; commands meanwhile get a clear error
/// result, not silence.
async fn wait_offline(
    base: &str,
    commands_rx: &mut mpsc::Receiver<DeviceCommand>,
    delay: Duration,
    why: &str,
) {
    let until = tokio::time::Instant::now() + delay;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until) => return,
            Some(cmd) = commands_rx.recv() => {
                answer(base, &cmd, Err(format!("the device is offline ({why})"))).await;
            }
        }
    }
}

/// GPIO lines: inputs published when they change (edges, after their debounce period)
/// and at every poll, outputs set by commands and published. A board without the chip
/// (or a failing line) makes the device offline, retried with capped backoff; the rest of
/// the gateway carries on.
async fn run_gpio_device(
    device: Device,
    chip: GpioChip,
    prefix: String,
    clients: Outputs,
    mut commands_rx: mpsc::Receiver<DeviceCommand>,
) {
    use crate::devices::gpio::{Debounce, EdgeDebounce};
    let base = format!("{prefix}/{}", device.id);
    let lines: Vec<crate::config::GpioLine> = device.points.iter().filter_map(|p| p.gpio).collect();
    let mut reports = Reports::default();
    let mut delay = Duration::from_millis(250);
    let mut last_error = String::new();
    let mut said_no_edges = false;
    availability(&clients, &base, "offline").await;
    loop {
        let failure = match crate::devices::gpio::open(&chip, &lines) {
            Err(e) => e.to_string(),
            Ok(mut backend) => {
                delay = Duration::from_millis(250);
                last_error.clear();
                availability(&clients, &base, "online").await;
                let mut ticks = tokio::time::interval(device.poll);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut debounce: HashMap<u32, Debounce> = HashMap::new();
                // Edges publish a change once it has settled instead of at the next poll;
                // without them (or once they stop) the polls alone carry on.
                let mut edges = if lines.iter().any(|l| !l.output) {
                    match backend.watch_edges() {
                        Ok(edges) => Some(edges),
                        Err(e) => {
                            if !said_no_edges {
                                crate::observe::device_warn(
                                    &device.id,
                                    format_args!(
                                        "fieldgate run: device {}: {e}, every {:?}",
                                        device.id, device.poll
                                    ),
                                );
                                said_no_edges = true;
                            }
                            None
                        }
                    }
                } else {
                    None
                };
                let mut settling = EdgeDebounce::default();
                let failure = 'serve: loop {
                    let settles_at = settling.next_due();
                    tokio::select! {
                        _ = ticks.tick() => {
                            let now = Instant::now();
                            for point in &device.points {
                                let Some(line) = point.gpio else { continue };
                                match backend.read(line.line) {
                                    Ok(level) => {
                                        let level = if line.output {
                                            Some(level)
                                        } else {
                                            debounce.entry(line.line).or_default().feed(level, now, line.debounce)
                                        };
                                        let Some(level) = level else { continue };
                                        let value = Value::Bool(level);
                                        if reports.due(&device, &point.id, &value, now) {
                                            publish_reading(&clients, &base, &device, &point.id, value).await;
                                        }
                                    }
                                    Err(e) => break 'serve e.to_string(),
                                }
                            }
                            clients.metrics.poll_succeeded(&device.id, now.elapsed());
                        }
                        edge = next_edge(&mut edges) => match edge {
                            Some(Ok(edge)) => {
                                let period = lines
                                    .iter()
                                    .find(|l| l.line == edge.line)
                                    .map_or(Duration::ZERO, |l| l.debounce);
                                settling.edge(&edge, period);
                            }
                            // The watch failed as a read would have: offline, then reopen.
                            Some(Err(e)) => break 'serve e.to_string(),
                            None => edges = None,
                        },
                        () = sleep_until_settled(settles_at) => {
                            let now = Instant::now();
                            for (line, edge_level) in settling.take_due(now) {
                                let Some(config) = lines.iter().find(|l| l.line == line) else { continue };
                                // Read back: the level the edges ended at must still be
                                // there (see `Debounce::confirm`).
                                let level = match backend.read(line) {
                                    Ok(level) => level,
                                    Err(e) => break 'serve e.to_string(),
                                };
                                let input = debounce.entry(line).or_default();
                                let before = input.level();
                                let after = input.confirm(edge_level, level, now, config.debounce);
                                // A bounce that ended where it began changes nothing and
                                // is not published; the polls still report the level.
                                if after == before {
                                    continue;
                                }
                                let Some(level) = after else { continue };
                                let value = Value::Bool(level);
                                for point in device.points.iter().filter(|p| p.gpio.is_some_and(|g| g.line == line && !g.output)) {
                                    if reports.due(&device, &point.id, &value, now) {
                                        publish_reading(&clients, &base, &device, &point.id, value.clone()).await;
                                    }
                                }
                            }
                        }
                        Some(cmd) = commands_rx.recv() => {
                            let outcome = gpio_write(&device, backend.as_mut(), &cmd);
                            if let Ok(value) = &outcome {
                                reports.sent(&cmd.point, value.clone(), Instant::now());
                                publish_reading(&clients, &base, &device, &cmd.point, value.clone()).await;
                            }
                            answer(&base, &cmd, outcome).await;
                        }
                    }
                };
                availability(&clients, &base, "offline").await;
                failure
            }
        };
        // Said once per new failure, not at every retry.
        clients.metrics.device_failed(&device.id);
        if failure != last_error {
            crate::observe::device_warn(
                &device.id,
                format_args!("fieldgate run: device {}: {failure}", device.id),
            );
            last_error = failure;
        }
        wait_offline(&base, &mut commands_rx, delay, &last_error).await;
        delay = (delay * 2).min(RETRY_MAX);
    }
}

/// The next input edge of a GPIO device; never, if it has no edges.
///
/// # Cancel safety
/// Cancel safe, as `mpsc::Receiver::recv` is.
async fn next_edge(
    edges: &mut Option<crate::devices::gpio::Edges>,
) -> Option<Result<crate::devices::gpio::Edge, crate::devices::gpio::GpioError>> {
    match edges {
        Some(edges) => edges.recv().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until the next GPIO line settles; for ever if none is settling.
async fn sleep_until_settled(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// Executes a command on a GPIO output: `on`/`off`, `true`/`false` or `1`/`0`.
fn gpio_write(
    device: &Device,
    backend: &mut dyn crate::devices::gpio::GpioBackend,
    cmd: &DeviceCommand,
) -> Result<Value, String> {
    let command = cmd.command.as_ref().map_err(ToString::to_string)?;
    if let Some(old) = too_old(device, &cmd.point, command) {
        return Err(old);
    }
    let point = Points::point(device, &cmd.point)
        .ok_or_else(|| crate::devices::WriteError::UnknownPoint(cmd.point.clone()).to_string())?;
    let line = point
        .gpio
        .filter(|l| l.output)
        .ok_or_else(|| crate::devices::WriteError::NotWritable(cmd.point.clone()).to_string())?;
    let high = match &command.value {
        Value::Bool(b) => *b,
        Value::Number(n) if *n == 0.0 || *n == 1.0 => *n == 1.0,
        Value::Number(_) | Value::Text(_) => {
            return Err(crate::devices::WriteError::WrongType {
                point: cmd.point.clone(),
                expected: "on/off, true/false or 1/0",
            }
            .to_string());
        }
    };
    backend.write(line.line, high).map_err(|e| e.to_string())?;
    Ok(Value::Bool(high))
}

/// Finds a point's configuration by id (a sim device, or a device's configuration).
trait Points {
    fn point(&self, id: &str) -> Option<&crate::config::Point>;
}

impl Points for SimDevice {
    fn point(&self, id: &str) -> Option<&crate::config::Point> {
        SimDevice::point(self, id)
    }
}

impl Points for Device {
    fn point(&self, id: &str) -> Option<&crate::config::Point> {
        self.points.iter().find(|p| p.id == id)
    }
}

/// A command older than its point's `max_age` (by its `ts`) is refused, never executed.
fn too_old(points: &impl Points, point: &str, command: &commands::Command) -> Option<String> {
    let max_age = points.point(point)?.max_age?;
    let age = SystemTime::now()
        .duration_since(command.issued?)
        .unwrap_or_default();
    (age > max_age).then(|| {
        format!(
            "the command is {:.1}s old, older than max_age {:.1}s",
            age.as_secs_f64(),
            max_age.as_secs_f64()
        )
    })
}

/// What was last published per point, for report-on-change (`deadband`) and
/// `heartbeat`. Points with neither are published at every poll.
#[derive(Debug, Default)]
struct Reports {
    last: HashMap<String, (Value, Instant)>,
}

impl Reports {
    /// True if `value` should be published now; records it if so.
    fn due(&mut self, points: &impl Points, point: &str, value: &Value, now: Instant) -> bool {
        let Some(config) = points.point(point) else {
            return false;
        };
        let due = match (config.deadband, self.last.get(point)) {
            (None, _) | (_, None) => true,
            (Some(deadband), Some((last, at))) => {
                let moved = match (value, last) {
                    (Value::Number(v), Value::Number(l)) => (v - l).abs() > deadband,
                    (v, l) => v != l,
                };
                moved
                    || config
                        .heartbeat
                        .is_some_and(|h| now.duration_since(*at) >= h)
            }
        };
        if due {
            self.sent(point, value.clone(), now);
        }
        due
    }

    fn sent(&mut self, point: &str, value: Value, now: Instant) {
        self.last.insert(point.to_string(), (value, now));
    }
}

async fn publish_reading(
    clients: &Outputs,
    base: &str,
    points: &impl Points,
    point: &str,
    value: Value,
) {
    let Some(config) = points.point(point) else {
        return;
    };
    let Ok(point_topic) = topic(&format!("{base}/{point}")) else {
        return;
    };
    let payload = if config.raw_payload {
        value.to_string()
    } else {
        telemetry::payload(
            value,
            config.unit.as_deref(),
            Quality::Good,
            SystemTime::now(),
        )
    };
    let payload = Bytes::from(payload);
    // Telemetry goes to both brokers: to the local one straight away, upstream through
    // the spool (QoS 1/2; this waits until the reading is as durable as the spool's mode
    // promises) or, at QoS 0, only while the uplink is up.
    let reading = message(point_topic, payload, config.qos, config.retain);
    let _ = clients.local.enqueue(reading.clone()).await;
    if let Some(upstream) = &clients.upstream {
        upstream.publish(reading).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn device(yaml_points: &str) -> SimDevice {
        let yaml = format!("devices:\n  - id: d\n    source: sim\n    points:\n{yaml_points}");
        let config = crate::config::parse(&yaml, Path::new(".")).unwrap();
        SimDevice::new(&config.devices[0])
    }

    #[test]
    fn report_on_change_waits_for_the_deadband_or_the_heartbeat() {
        let sim = device(
            "      - id: level\n        sim: constant\n        deadband: 0.5\n        heartbeat: 10s\n      - id: plain\n        sim: constant\n",
        );
        let mut reports = Reports::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(
            reports.due(&sim, "level", &Value::Number(1.0), at(0)),
            "first reading"
        );
        assert!(
            !reports.due(&sim, "level", &Value::Number(1.4), at(1)),
            "within the deadband"
        );
        assert!(
            reports.due(&sim, "level", &Value::Number(1.6), at(2)),
            "moved by more"
        );
        assert!(
            !reports.due(&sim, "level", &Value::Number(1.6), at(11)),
            "heartbeat not yet"
        );
        assert!(
            reports.due(&sim, "level", &Value::Number(1.6), at(12)),
            "heartbeat"
        );
        assert!(reports.due(&sim, "plain", &Value::Number(0.0), at(0)));
        assert!(
            reports.due(&sim, "plain", &Value::Number(0.0), at(0)),
            "no deadband: always"
        );
    }

    #[test]
    fn a_command_older_than_max_age_is_refused() {
        let sim = device(
            "      - id: level\n        sim: constant\n        writable: true\n        max_age: 5s\n",
        );
        let command = |age: u64| commands::Command {
            value: Value::Number(1.0),
            id: None,
            issued: Some(SystemTime::now() - Duration::from_secs(age)),
        };
        assert_eq!(too_old(&sim, "level", &command(1)), None);
        assert!(too_old(&sim, "level", &command(60)).is_some_and(|e| e.contains("max_age")));
        let undated = commands::Command {
            issued: None,
            ..command(0)
        };
        assert_eq!(
            too_old(&sim, "level", &undated),
            None,
            "no ts: nothing to judge by"
        );
    }
}
