//! The local MQTT broker (3.1.1 and 5.0) for LAN devices: listeners, one task per
//! connection, the router (subscriptions, retained messages), the session registry,
//! authentication and ACLs, `$SYS` statistics. Protocol decisions live in the sans-IO
//! `mqtt::session::server`; this module drives sockets and shares state between
//! connections, and must not grow protocol rules of its own.
//!
//! ```text
//!  listener ──accept──▶ connection task ──handle_packet──▶ ServerSession
//!                          │  ▲ poll_packet / poll_event
//!            Publish event │  │ deliver
//!                          ▼  │
//!          Router (tree snapshot) ──push──▶ Mailbox of each subscriber ──▶ its task
//! ```

pub mod auth;
mod connection;
mod listener;
pub mod mailbox;
pub mod persist;
pub mod router;
pub mod sessions;
pub mod stats;
pub mod subscriptions;
pub mod tls;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::mqtt::packet::ReasonCode;
use crate::mqtt::session::server::ServerConfig;
use crate::mqtt::topic::{TopicFilter, TopicName};
use mailbox::MailboxLimits;
use router::{ReadCheck, Router};
use sessions::Sessions;
use stats::Stats;

/// How clients reach a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// MQTT straight over TCP.
    Tcp,
    /// MQTT over TLS (usually port 8883), optionally with client certificates.
    Tls(tls::TlsListenerConfig),
    /// MQTT over WebSocket (`ws://`, subprotocol `mqtt`), for browser dashboards.
    WebSocket,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    pub transport: Transport,
}

/// Checks credentials in CONNECT. May be slow (salted, iterated hashes): the broker
/// calls it on a blocking thread.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    /// `Ok` to accept; `Err(reason)` refuses with that CONNACK code (0x86 bad user name
    /// or password, 0x87 not authorized).
    fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<(), ReasonCode>;
}

/// Decides what an authenticated client may do (the ACL).
pub trait Authorizer: ReadCheck + Send + Sync + std::fmt::Debug {
    fn may_publish(&self, username: Option<&str>, client_id: &str, topic: &TopicName) -> bool;
    fn may_subscribe(&self, username: Option<&str>, client_id: &str, filter: &TopicFilter) -> bool;
}

impl Authenticator for auth::PasswordFile {
    fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<(), ReasonCode> {
        match (username, password) {
            (Some(user), Some(password)) if self.verify(user, password) => Ok(()),
            _ => Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
        }
    }
}

impl ReadCheck for auth::Acl {
    fn may_receive(&self, username: Option<&str>, client_id: &str, topic: &TopicName) -> bool {
        self.can_receive(username, client_id, topic)
    }
}

impl Authorizer for auth::Acl {
    fn may_publish(&self, username: Option<&str>, client_id: &str, topic: &TopicName) -> bool {
        self.can_publish(username, client_id, topic)
    }

    fn may_subscribe(&self, username: Option<&str>, client_id: &str, filter: &TopicFilter) -> bool {
        self.can_subscribe(username, client_id, filter)
    }
}

/// Everything the broker needs to run.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub listeners: Vec<ListenerConfig>,
    /// Accept clients without a user name. Ignored (all accepted) without an
    /// authenticator only when true; false with no authenticator refuses everyone.
    pub allow_anonymous: bool,
    pub authenticator: Option<Arc<dyn Authenticator>>,
    pub authorizer: Option<Arc<dyn Authorizer>>,
    /// Per-session protocol limits (receive maximum, packet size, aliases, keep-alive).
    pub session: ServerConfig,
    /// Per-client queue bounds.
    pub mailbox: MailboxLimits,
    pub max_connections: usize,
    /// A socket that sends no CONNECT within this is closed.
    pub connect_timeout: Duration,
    /// Topics and filters with more levels are refused (0: no limit).
    pub max_topic_levels: usize,
    /// How often `$SYS/broker/...` is published; `None`: never.
    pub sys_interval: Option<Duration>,
    /// Where retained messages and persistent sessions are kept; `None`: in memory only.
    pub persistence: Option<persist::PersistConfig>,
    /// A client in this process that may always connect and do anything (the gateway's
    /// own; not from the configuration file).
    pub internal_client: Option<auth::InternalClient>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listeners: Vec::new(),
            allow_anonymous: true,
            authenticator: None,
            authorizer: None,
            session: ServerConfig::default(),
            mailbox: MailboxLimits::default(),
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(10),
            max_topic_levels: 32,
            sys_interval: Some(Duration::from_secs(10)),
            persistence: None,
            internal_client: None,
        }
    }
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no listener configured")]
    NoListener,
    #[error(transparent)]
    Persistence(#[from] persist::PersistError),
    #[error("TLS listener {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: tls::TlsError,
    },
}

/// Who may connect and what they may do. Replaceable while the broker runs (a reload
/// re-reads the password and ACL files), so connections look it up for each check
/// instead of keeping it: a client already connected stays connected, and the new rules
/// apply to what it does next.
#[derive(Debug, Clone)]
pub struct Access {
    pub allow_anonymous: bool,
    pub authenticator: Option<Arc<dyn Authenticator>>,
    pub authorizer: Option<Arc<dyn Authorizer>>,
    /// Fixed for the broker's life ([`Broker::set_access`] keeps it).
    internal_client: Option<auth::InternalClient>,
}

impl Access {
    fn read_check(&self) -> &dyn ReadCheck {
        self
    }

    /// Whether `username` may do what `check` asks the ACL: always for the internal
    /// client, and for everyone when there is no ACL.
    fn allows(&self, username: Option<&str>, check: impl FnOnce(&dyn Authorizer) -> bool) -> bool {
        self.internal_client
            .as_ref()
            .is_some_and(|c| c.is(username))
            || self.authorizer.as_deref().is_none_or(check)
    }

    fn may_publish(&self, username: Option<&str>, client_id: &str, topic: &TopicName) -> bool {
        self.allows(username, |a| a.may_publish(username, client_id, topic))
    }

    fn may_subscribe(&self, username: Option<&str>, client_id: &str, filter: &TopicFilter) -> bool {
        self.allows(username, |a| a.may_subscribe(username, client_id, filter))
    }
}

impl ReadCheck for Access {
    fn may_receive(&self, username: Option<&str>, client_id: &str, topic: &TopicName) -> bool {
        self.allows(username, |a| a.may_receive(username, client_id, topic))
    }
}

impl BrokerConfig {
    /// The access rules this configuration starts with.
    pub fn access(&self) -> Access {
        Access {
            allow_anonymous: self.allow_anonymous,
            authenticator: self.authenticator.clone(),
            authorizer: self.authorizer.clone(),
            internal_client: self.internal_client.clone(),
        }
    }
}

/// State shared by every connection task.
#[derive(Debug)]
struct Core {
    /// How the broker was started; its access fields are only where `access` began.
    config: BrokerConfig,
    access: arc_swap::ArcSwap<Access>,
    router: Router,
    sessions: Sessions,
    stats: Arc<Stats>,
    connections: Arc<Semaphore>,
    /// Password checks running at once (each is deliberately slow).
    auth_checks: Semaphore,
    shutdown: watch::Receiver<bool>,
}

impl Core {
    /// The access rules now (an `Arc`: it may be held across an await).
    fn access(&self) -> Arc<Access> {
        self.access.load_full()
    }
}

/// A running broker. Dropping it stops the listeners; [`Broker::shutdown`] also tells
/// connected clients (5.0: DISCONNECT 0x8B) and waits for the tasks.
#[derive(Debug)]
pub struct Broker {
    core: Arc<Core>,
    local_addrs: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Broker {
    /// Binds every listener and starts serving on the current tokio runtime.
    pub async fn start(config: BrokerConfig) -> Result<Broker, BrokerError> {
        if config.listeners.is_empty() {
            return Err(BrokerError::NoListener);
        }
        let (stop, shutdown) = watch::channel(false);
        let stats = Arc::new(Stats::default());
        let (journal, recovered) = match &config.persistence {
            Some(persistence) => {
                let (journal, recovered) = persist::Journal::open(persistence)?;
                (Some(journal), recovered)
            }
            None => (None, persist::Recovered::default()),
        };
        let core = Arc::new(Core {
            router: Router::new(Arc::clone(&stats), journal),
            sessions: Sessions::new(config.session.clone(), config.mailbox),
            connections: Arc::new(Semaphore::new(config.max_connections)),
            auth_checks: Semaphore::new(2),
            stats,
            shutdown,
            access: arc_swap::ArcSwap::from_pointee(config.access()),
            config,
        });
        if recovered.truncated > 0 {
            crate::observe::warn(format_args!(
                "fieldgate broker: journal had a torn or corrupt tail; cut {} bytes",
                recovered.truncated
            ));
        }
        for message in &recovered.retained {
            core.router.restore_retained(message);
        }
        for (client_id, generation, expiry) in
            core.sessions.restore(recovered.sessions, &core.router)
        {
            if expiry != u32::MAX {
                connection::schedule_expiry(
                    &core,
                    client_id,
                    generation,
                    Duration::from_secs(u64::from(expiry)),
                );
            }
        }
        core.stats
            .sessions
            .store(core.sessions.len(), std::sync::atomic::Ordering::Relaxed);
        let mut local_addrs = Vec::new();
        let mut tasks = Vec::new();
        for listener in &core.config.listeners {
            let accepting = match &listener.transport {
                Transport::Tcp => listener::Accepting::Tcp,
                Transport::WebSocket => listener::Accepting::WebSocket,
                Transport::Tls(config) => {
                    listener::Accepting::Tls(tls::acceptor(config).map_err(|source| {
                        BrokerError::Tls {
                            addr: listener.bind,
                            source,
                        }
                    })?)
                }
            };
            let socket = tokio::net::TcpListener::bind(listener.bind)
                .await
                .map_err(|source| BrokerError::Bind {
                    addr: listener.bind,
                    source,
                })?;
            local_addrs.push(socket.local_addr().unwrap_or(listener.bind));
            tasks.push(tokio::spawn(listener::accept_loop(
                socket,
                accepting,
                Arc::clone(&core),
            )));
        }
        if let Some(interval) = core.config.sys_interval {
            tasks.push(tokio::spawn(connection::publish_sys(
                Arc::clone(&core),
                interval,
            )));
        }
        Ok(Broker {
            core,
            local_addrs,
            stop,
            tasks,
        })
    }

    /// The bound addresses, in listener order (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    pub fn stats(&self) -> &Stats {
        &self.core.stats
    }

    /// Replaces who may connect and what they may do; connected clients stay. The
    /// internal client stays the one the broker started with.
    pub fn set_access(&self, mut access: Access) {
        access.internal_client = self.core.access.load().internal_client.clone();
        self.core.access.store(Arc::new(access));
    }

    /// Stops accepting, disconnects every client and waits (bounded) for them to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        self.core.sessions.ring_all(mailbox::SHUTDOWN);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        // Connection tasks hold a permit each; all returned means all ended.
        let all = u32::try_from(self.core.config.max_connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.core.connections.acquire_many(all),
        )
        .await;
        if let Some(journal) = self.core.router.journal() {
            journal.close().await;
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.core.sessions.ring_all(mailbox::SHUTDOWN);
        for task in &self.tasks {
            task.abort();
        }
    }
}
