//! The gateway's links: its own MQTT clients (on the local broker and upstream), the
//! upstream path with its spool, the tasks that serve the clients' events (commands,
//! forwarding rules, Home Assistant) and the device tasks that publish through them.
//! They start as one piece and stop as one, so a reload that changes the gateway's id or
//! prefix, the upstream, the forwarding rules or discovery restarts them (the spool is
//! closed and opened again with its backlog) while the local broker keeps its LAN
//! clients and the Modbus buses keep their lines. Starting or stopping the broker, the
//! buses or the metrics listener is not this module's job: `Gateway` owns those.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{
    AppError, DeviceCommand, ForwardTo, Outputs, Routes, ServeClient, message, serve_client,
    spawn_device, topic, upstream,
};
use crate::bridge::discovery;
use crate::config::{Config, Forward, Side, Upstream};
use crate::metrics::Metrics;
use crate::modbus::bus::BusHandle;
use crate::mqtt::client::{self, ClientOptions, Handle};
use crate::mqtt::packet::{ProtocolVersion, QoS, Will, WillProperties};
use crate::mqtt::session::client::ClientConfig;
use crate::mqtt::string::MqttString;

/// How long the local broker keeps the gateway's session while the gateway is away:
/// only across a restart (the broker runs in the same process), so a week is plenty; a
/// bound keeps a session whose client id changed from lingering for ever.
const LOCAL_SESSION_EXPIRY: u32 = 7 * 24 * 3600;

/// How long the upstream broker keeps the gateway's session across a network cut (MQTT
/// 5): unacknowledged QoS 2 messages are then completed, not sent as new ones. Each
/// start begins clean (see `connect_upstream`).
const UPSTREAM_SESSION_EXPIRY: u32 = 24 * 3600;

/// Inbound QoS 1/2 messages the local broker may have waiting for the gateway's
/// acknowledgement (our Receive Maximum): the acknowledgement queue's room.
const LOCAL_RECEIVE_MAXIMUM: u16 = 100;

/// How long devices wait for the local client's first CONNACK (see [`Links::start`]).
const LOCAL_CONNECT_WAIT: Duration = Duration::from_secs(5);

/// The gateway's broker, as its own client reaches it.
#[derive(Debug, Clone)]
pub(super) struct LocalBroker {
    pub(super) addr: SocketAddr,
    /// Credentials the broker takes whatever its password and ACL files say.
    pub(super) login: crate::mqtt::broker::auth::InternalClient,
}

/// The running links (see the module header).
#[derive(Debug)]
pub(super) struct Links {
    /// The gateway's clients: the local broker's first, then the upstream one.
    pub(super) clients: Vec<Handle>,
    pub(super) prefix: String,
    /// The clients' event loops and the like: for the links' whole life.
    pub(super) tasks: Vec<JoinHandle<()>>,
    /// One task per device, by id (a reload restarts only those that changed).
    pub(super) devices: HashMap<String, JoinHandle<()>>,
    pub(super) routes: Routes,
    pub(super) outputs: Outputs,
    /// The spool and its pump, with an upstream.
    pub(super) upstream: Option<upstream::Running>,
}

impl Links {
    /// Connects the gateway's clients (to the local broker at `broker`, and upstream),
    /// opens the spool, and starts the devices of `config` on `buses` once the local
    /// client is connected.
    pub(super) async fn start(
        config: &Config,
        broker: &LocalBroker,
        metrics: &Arc<Metrics>,
        buses: &HashMap<String, BusHandle>,
    ) -> Result<Links, AppError> {
        let prefix = config.gateway.topic_prefix.clone();
        // Forwarding LAN messages up: the local client's session outlives a crash and it
        // acknowledges a message only once the spool has it (see `app::upstream`).
        let forwards_up =
            config.upstream.is_some() && config.forward.iter().any(|r| r.from == Side::Local);
        let local = connect_local(config, broker, &prefix, forwards_up)?;
        let upstream = match &config.upstream {
            Some(upstream) => Some(connect_upstream(config, upstream, &prefix)?),
            None => None,
        };
        let (mut running, link) = match (&config.upstream, &upstream) {
            (Some(settings), Some((handle, _))) => {
                let (running, link) =
                    upstream::start(settings.spool.clone(), handle.clone()).await?;
                (Some(running), Some(link))
            }
            _ => (None, None),
        };
        let clients: Vec<Handle> = std::iter::once(local.0.clone())
            .chain(upstream.as_ref().map(|(h, _)| h.clone()))
            .collect();
        let outputs = Outputs {
            metrics: Arc::clone(metrics),
            local: local.0.clone(),
            upstream: running.as_ref().map(|r| r.path.clone()),
        };
        // Commands arrive as client events; each goes to its device's task.
        let mut routes: HashMap<String, mpsc::Sender<DeviceCommand>> = HashMap::new();
        let mut inboxes = Vec::new();
        for device in &config.devices {
            let (tx, rx) = mpsc::channel(64);
            routes.insert(device.id.clone(), tx);
            inboxes.push(rx);
        }
        let mut tasks = Vec::new();
        if let Some(running) = &mut running {
            running.start_status(&prefix, local.0.clone());
        }
        let acks = if forwards_up {
            let (acks, task) =
                upstream::spawn_acker(local.0.clone(), usize::from(LOCAL_RECEIVE_MAXIMUM));
            tasks.push(task);
            Some(acks)
        } else {
            None
        };
        let routes: Routes = Arc::new(std::sync::RwLock::new(routes));
        let discovery = config.discovery_prefix.as_ref().map(|discovery_prefix| {
            let messages: Vec<discovery::Discovery> = config
                .devices
                .iter()
                .flat_map(|d| discovery::messages(discovery_prefix, &config.gateway.id, &prefix, d))
                .collect();
            Arc::new((format!("{discovery_prefix}/status"), messages))
        });
        let up_path = outputs.upstream.clone().map(ForwardTo::Upstream);
        let (ready_tx, mut ready) = tokio::sync::watch::channel(false);
        let sides = [
            Some((Side::Local, local, up_path, Some(ready_tx), None, acks)),
            upstream.map(|u| {
                let to_local = Some(ForwardTo::Local(clients[0].clone()));
                (Side::Upstream, u, to_local, None, link, None)
            }),
        ];
        for (side, (handle, events), forward_to, ready, link, acks) in sides.into_iter().flatten() {
            let rules: Vec<Forward> = config
                .forward
                .iter()
                .filter(|r| r.from == side)
                .cloned()
                .collect();
            tasks.push(tokio::spawn(serve_client(
                ServeClient {
                    prefix: prefix.clone(),
                    handle,
                    forward_to,
                    link,
                    acks,
                    rules,
                    routes: Arc::clone(&routes),
                    discovery: discovery.clone(),
                    ready,
                },
                events,
            )));
        }
        // Devices start once the local broker has the gateway's client: a first reading
        // at QoS 0 taken before would be dropped (and with a long poll, missing for long).
        // The broker is in this process, so this is a matter of milliseconds; the bound
        // only keeps a broken start from hanging.
        let _ = tokio::time::timeout(LOCAL_CONNECT_WAIT, ready.wait_for(|r| *r)).await;
        let mut links = Links {
            clients,
            prefix,
            tasks,
            devices: HashMap::new(),
            routes,
            outputs,
            upstream: running,
        };
        for (device, rx) in config.devices.iter().zip(inboxes) {
            match spawn_device(device, &links.prefix, &links.outputs, buses, rx) {
                Ok(task) => {
                    links.devices.insert(device.id.clone(), task);
                }
                Err(e) => {
                    links.stop(false).await;
                    return Err(e);
                }
            }
        }
        Ok(links)
    }

    /// Stops the devices, lets the upstream pump finish what is in flight (briefly) and
    /// closes the spool (it is free to be opened again when this returns), announces
    /// `offline` if asked (at shutdown; a restart of the links says `online` again at
    /// once, so it does not) and disconnects the clients (cleanly: no will). Leaves the
    /// links empty: nothing runs, nothing is owned.
    pub(super) async fn stop(&mut self, offline: bool) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        for (_, task) in self.devices.drain() {
            task.abort();
        }
        if let Some(upstream) = self.upstream.take() {
            upstream.shutdown().await;
        }
        for client in std::mem::take(&mut self.clients) {
            if offline && let Ok(availability) = topic(&format!("{}/availability", self.prefix)) {
                let offline = message(availability, "offline", QoS::AtLeastOnce, true);
                if let Ok(delivery) = client.enqueue(offline).await {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), delivery.delivered()).await;
                }
            }
            client.disconnect().await;
        }
    }
}

fn will(prefix: &str) -> Result<Will, AppError> {
    Ok(Will {
        topic: topic(&format!("{prefix}/availability"))?,
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: WillProperties::default(),
    })
}

fn client_id(id: &str) -> Result<MqttString, AppError> {
    MqttString::try_from(id).map_err(|e| AppError::Client(e.to_string()))
}

/// The client on the local broker (plain TCP on loopback), logged in with the broker's
/// internal credentials. With `forwards_up` its session is persistent and it
/// acknowledges inbound QoS 1/2 messages itself, once their copies are in the spool
/// (see `app::upstream`).
fn connect_local(
    config: &Config,
    broker: &LocalBroker,
    prefix: &str,
    forwards_up: bool,
) -> Result<(Handle, client::Events), AppError> {
    let id = client_id(&format!("{}-gateway", config.gateway.id))?;
    let mut session = ClientConfig::new(ProtocolVersion::V5, id);
    session.username = Some(client_id(broker.login.username())?);
    session.password = Some(Bytes::copy_from_slice(broker.login.password()));
    session.keep_alive = 30;
    session.will = Some(will(prefix)?);
    session.receive_maximum = std::num::NonZeroU16::MIN.saturating_add(LOCAL_RECEIVE_MAXIMUM - 1);
    if forwards_up {
        // Resume the session the broker restored from its journal: messages it took
        // for us and we never acknowledged come again.
        session.clean_start = false;
        session.session_expiry_interval = LOCAL_SESSION_EXPIRY;
        session.manual_acks = true;
    }
    let addr = broker.addr;
    let options = ClientOptions::new(addr.ip().to_string(), addr.port(), session);
    client::spawn(options).map_err(|e| AppError::Client(e.to_string()))
}

/// The client on the upstream broker, with its will saying `offline` there too.
fn connect_upstream(
    config: &Config,
    upstream: &Upstream,
    prefix: &str,
) -> Result<(Handle, client::Events), AppError> {
    let id = upstream
        .client_id
        .clone()
        .unwrap_or_else(|| format!("fieldgate-{}", config.gateway.id));
    let mut session = ClientConfig::new(upstream.protocol, client_id(&id)?);
    session.keep_alive = u16::try_from(upstream.keep_alive.as_secs()).unwrap_or(u16::MAX);
    session.username = match &upstream.username {
        Some(u) => Some(client_id(u)?),
        None => None,
    };
    session.password = upstream.password.clone().map(Bytes::from);
    session.will = Some(will(prefix)?);
    // Each start begins clean (a new process knows none of the old session's packet
    // ids: a QoS 2 id the broker still held would make it drop a new message as a
    // duplicate), and later reconnects resume the session, so in-flight QoS 2 messages
    // are completed rather than sent again (MQTT 5 only: 3.1.1's Clean Session cannot
    // say both). Across a restart of the broker this holds only if it saves such a
    // session: mosquitto 2.0 does not save one that began with Clean Start.
    session.clean_start = true;
    session.session_expiry_interval = UPSTREAM_SESSION_EXPIRY;
    let mut options = ClientOptions::new(upstream.host.clone(), upstream.port, session);
    options.tls = upstream.tls.clone();
    client::spawn(options).map_err(|e| AppError::Client(e.to_string()))
}
