//! The gateway runtime behind `fieldgate run`: starts the local broker, connects the
//! gateway's own MQTT client to it, polls each device on its own task, publishes
//! telemetry and availability, and executes `set` commands. It wires the parts together
//! and owns no protocol or device logic of its own.
//!
//! Topics (`<prefix>` is `gateway.topic_prefix`, `fieldgate/<id>` by default):
//! `<prefix>/<device>/<point>` telemetry; `<prefix>/<device>/<point>/set` commands and
//! `.../set/result` their results; `<prefix>/availability` and
//! `<prefix>/<device>/availability`, retained `online`/`offline`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::bridge::{commands, telemetry};
use crate::config::{Config, Device};
use crate::devices::sim::SimDevice;
use crate::devices::{Quality, Value};
use crate::mqtt::broker::{Broker, BrokerError, Transport};
use crate::mqtt::client::{self, ClientEvent, ClientOptions, Handle};
use crate::mqtt::packet::{
    ProtocolVersion, Publish, PublishProperties, QoS, Subscription, SubscriptionOptions, Will,
    WillProperties,
};
use crate::mqtt::session::client::ClientConfig;
use crate::mqtt::string::MqttString;
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
}

/// A command for a device task: the point, and the parsed command or why its payload
/// is not one (answered with an error result, never executed).
#[derive(Debug)]
struct DeviceCommand {
    point: String,
    command: Result<commands::Command, commands::CommandError>,
}

/// A running gateway; [`Gateway::shutdown`] says `offline` and stops everything.
#[derive(Debug)]
pub struct Gateway {
    broker: Option<Broker>,
    client: Handle,
    prefix: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
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
    /// Starts the broker, the client and the devices.
    pub async fn start(config: Config) -> Result<Gateway, AppError> {
        let prefix = config.gateway.topic_prefix.clone();
        let broker = match config.broker.clone() {
            Some(broker) => Some(Broker::start(broker).await?),
            None => None,
        };
        let addr = broker
            .as_ref()
            .and_then(|b| {
                b.local_addrs()
                    .iter()
                    .zip(&config.broker.as_ref()?.listeners)
                    .find(|(_, l)| l.transport == Transport::Tcp)
                    .map(|(a, _)| *a)
            })
            .ok_or(AppError::NoLocalBroker)?;
        let (client, mut events) = connect(&config, addr, &prefix)?;
        // Commands arrive as client events; each goes to its device's task.
        let mut routes: HashMap<String, mpsc::Sender<DeviceCommand>> = HashMap::new();
        let mut tasks = Vec::new();
        for device in &config.devices {
            let (tx, rx) = mpsc::channel(64);
            routes.insert(device.id.clone(), tx);
            tasks.push(tokio::spawn(run_device(
                device.clone(),
                prefix.clone(),
                client.clone(),
                rx,
            )));
        }
        let set_filter = format!("{prefix}/+/+/set");
        let client_for_events = client.clone();
        let availability = topic(&format!("{prefix}/availability"))?;
        tasks.push(tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    ClientEvent::Connected { .. } => {
                        // Retained, so late subscribers know; the will says `offline`.
                        let online =
                            message(availability.clone(), "online", QoS::AtLeastOnce, true);
                        let _ = client_for_events.enqueue(online).await;
                        if let Ok(filter) = TopicFilter::try_from(set_filter.as_str()) {
                            let subscription = Subscription {
                                filter,
                                options: SubscriptionOptions {
                                    qos: QoS::AtLeastOnce,
                                    ..SubscriptionOptions::default()
                                },
                            };
                            let _ = client_for_events.subscribe(vec![subscription]).await;
                        }
                    }
                    ClientEvent::Message(publish) => {
                        route_command(&publish, &routes, &set_filter).await;
                    }
                    _ => {}
                }
            }
        }));
        Ok(Gateway {
            broker,
            client,
            prefix,
            tasks,
        })
    }

    /// The local broker's bound addresses (port 0 resolved).
    pub fn broker_addrs(&self) -> &[SocketAddr] {
        self.broker.as_ref().map_or(&[], |b| b.local_addrs())
    }

    /// Announces `offline`, disconnects and stops the broker.
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Ok(availability) = topic(&format!("{}/availability", self.prefix)) {
            let offline = message(availability, "offline", QoS::AtLeastOnce, true);
            if let Ok(delivery) = self.client.enqueue(offline).await {
                let _ = tokio::time::timeout(Duration::from_secs(2), delivery.delivered()).await;
            }
        }
        self.client.disconnect().await;
        if let Some(broker) = self.broker {
            broker.shutdown().await;
        }
    }
}

fn connect(
    config: &Config,
    addr: SocketAddr,
    prefix: &str,
) -> Result<(Handle, client::Events), AppError> {
    let id = MqttString::try_from(format!("{}-gateway", config.gateway.id).as_str())
        .map_err(|e| AppError::Client(e.to_string()))?;
    let mut session = ClientConfig::new(ProtocolVersion::V5, id);
    session.keep_alive = 30;
    session.will = Some(Will {
        topic: topic(&format!("{prefix}/availability"))?,
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: WillProperties::default(),
    });
    let options = ClientOptions::new(addr.ip().to_string(), addr.port(), session);
    client::spawn(options).map_err(|e| AppError::Client(e.to_string()))
}

/// `<prefix>/<device>/<point>/set` -> the device's task; anything else is ignored.
async fn route_command(
    publish: &Publish,
    routes: &HashMap<String, mpsc::Sender<DeviceCommand>>,
    set_filter: &str,
) {
    let prefix = set_filter.trim_end_matches("/+/+/set");
    let Some(rest) = publish
        .topic
        .as_str()
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.strip_suffix("/set"))
    else {
        return;
    };
    let Some((device, point)) = rest.split_once('/') else {
        return;
    };
    let Some(route) = routes.get(device) else {
        return;
    };
    let command = DeviceCommand {
        point: point.to_string(),
        command: commands::parse(&publish.payload),
    };
    // A full queue means the device is far behind: dropping this command is safer than
    // executing it late; the sender hears nothing and may retry.
    let _ = route.try_send(command);
}

/// Polls one device, publishes its readings, executes its commands.
async fn run_device(
    device: Device,
    prefix: String,
    client: Handle,
    mut commands_rx: mpsc::Receiver<DeviceCommand>,
) {
    let mut sim = SimDevice::new(&device);
    let started = Instant::now();
    let base = format!("{prefix}/{}", device.id);
    if let Ok(availability) = topic(&format!("{base}/availability")) {
        let _ = client
            .enqueue(message(availability, "online", QoS::AtLeastOnce, true))
            .await;
    }
    let mut ticks = tokio::time::interval(device.poll);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                for (point, value) in sim.read(started.elapsed()) {
                    publish_reading(&client, &base, &sim, &point, value).await;
                }
            }
            Some(cmd) = commands_rx.recv() => {
                let outcome = match &cmd.command {
                    Ok(command) => sim.write(&cmd.point, command.value).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Ok(value) = outcome {
                    // The new state goes out at once, not at the next poll.
                    publish_reading(&client, &base, &sim, &cmd.point, value).await;
                }
                let id = cmd.command.as_ref().ok().and_then(|c| c.id.as_ref());
                let result = commands::result(id, outcome);
                if let Ok(result_topic) = topic(&format!("{base}/{}/set/result", cmd.point)) {
                    let _ = client.enqueue(message(result_topic, result, QoS::AtLeastOnce, false)).await;
                }
            }
        }
    }
}

async fn publish_reading(client: &Handle, base: &str, sim: &SimDevice, point: &str, value: Value) {
    let Some(config) = sim.point(point) else {
        return;
    };
    let Ok(point_topic) = topic(&format!("{base}/{point}")) else {
        return;
    };
    let payload = telemetry::payload(
        value,
        config.unit.as_deref(),
        Quality::Good,
        SystemTime::now(),
    );
    let _ = client
        .enqueue(message(point_topic, payload, config.qos, config.retain))
        .await;
}
