//! The session registry: which client ids have a session, which connection holds each,
//! and the sessions parked between connections (persistent sessions) with their
//! subscriptions. It owns takeover (a second connection with the same client id
//! [MQTT-3.1.4-3]) and session expiry. It is touched on connect and disconnect only,
//! never on the publish path, and knows nothing of sockets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::mqtt::broker::mailbox::{Mailbox, MailboxLimits, TAKEOVER};
use crate::mqtt::broker::persist::RecoveredSession;
use crate::mqtt::broker::router::Router;
use crate::mqtt::packet::{SubscriptionId, SubscriptionOptions};
use crate::mqtt::session::server::{ServerConfig, ServerSession};
use crate::mqtt::string::MqttString;
use crate::mqtt::topic::TopicFilter;

/// A subscription as the session remembers it (the router holds the live copy).
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionRecord {
    pub options: SubscriptionOptions,
    pub id: Option<SubscriptionId>,
}

/// A session's subscriptions by filter. A vector, not a map: most clients hold one to
/// a few subscriptions, and a hash map's smallest table costs several times what they
/// do in every idle connection; lookups only happen on SUBSCRIBE and UNSUBSCRIBE.
#[derive(Debug, Default)]
pub struct SubscriptionSet(Vec<(TopicFilter, SubscriptionRecord)>);

impl SubscriptionSet {
    /// Adds or replaces the subscription to `filter`.
    pub fn insert(&mut self, filter: TopicFilter, record: SubscriptionRecord) {
        match self.0.iter_mut().find(|(f, _)| *f == filter) {
            Some((_, existing)) => *existing = record,
            None => {
                // One slot at a time: `push` would reserve four.
                self.0.reserve_exact(1);
                self.0.push((filter, record));
            }
        }
    }

    pub fn remove(&mut self, filter: &TopicFilter) -> Option<SubscriptionRecord> {
        let at = self.0.iter().position(|(f, _)| f == filter)?;
        Some(self.0.swap_remove(at).1)
    }

    pub fn keys(&self) -> impl Iterator<Item = &TopicFilter> {
        self.0.iter().map(|(f, _)| f)
    }

    pub fn clear(&mut self) {
        self.0 = Vec::new();
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a connection holds while it serves a client: given back with
/// [`Sessions::release`].
#[derive(Debug)]
pub struct Held {
    pub client_id: Arc<str>,
    pub session: ServerSession,
    pub subscriptions: SubscriptionSet,
    /// Also rings the holder when another connection takes this client id over.
    pub mailbox: Arc<Mailbox>,
    /// Identifies this holding: a release or an expiry from an older one is ignored.
    pub generation: u64,
    pub session_present: bool,
}

#[derive(Debug)]
struct Parked {
    session: ServerSession,
    subscriptions: SubscriptionSet,
}

#[derive(Debug)]
struct Entry {
    generation: u64,
    mailbox: Arc<Mailbox>,
    /// `Some` while no connection holds the session. Boxed: a session is large, and
    /// the map holds an entry per client, connected or not.
    parked: Option<Box<Parked>>,
    /// Notified when the holding connection releases the session.
    released: Arc<Notify>,
    /// The will of the last connection, waiting for its delay: a connection resuming
    /// this session cancels it, the end of the session sends it at once
    /// [MQTT-3.1.3-9].
    pending_will: Option<Arc<WillSignal>>,
}

/// What becomes of a will waiting for its Will Delay Interval.
#[derive(Debug)]
pub struct WillSignal {
    /// `WILL_WAITING`, `WILL_CANCELLED` or `WILL_NOW`.
    fate: std::sync::atomic::AtomicU8,
    changed: Notify,
}

const WILL_WAITING: u8 = 0;
const WILL_CANCELLED: u8 = 1;
const WILL_NOW: u8 = 2;

impl WillSignal {
    fn new() -> Self {
        WillSignal {
            fate: std::sync::atomic::AtomicU8::new(WILL_WAITING),
            changed: Notify::new(),
        }
    }

    fn set(&self, fate: u8) {
        self.fate.store(fate, std::sync::atomic::Ordering::Release);
        // A stored permit if the timer is not waiting yet.
        self.changed.notify_one();
    }

    /// Waits until the delay passes or the session decides: true to publish the will.
    pub async fn publish_after(&self, delay: Duration) -> bool {
        let fate = || self.fate.load(std::sync::atomic::Ordering::Acquire);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = self.changed.notified() => {}
        }
        fate() != WILL_CANCELLED
    }
}

/// Why a session could not be attached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    #[error("the connection holding this client id did not let go in time")]
    TakeoverTimedOut,
}

#[derive(Debug)]
pub struct Sessions {
    entries: Mutex<HashMap<Arc<str>, Entry>>,
    next_generation: Mutex<u64>,
    session_config: Arc<ServerConfig>,
    mailbox_limits: MailboxLimits,
}

/// How long a connection being taken over may take to hand its session back.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

impl Sessions {
    pub fn new(session_config: ServerConfig, mailbox_limits: MailboxLimits) -> Self {
        Sessions {
            entries: Mutex::new(HashMap::new()),
            next_generation: Mutex::new(0),
            session_config: Arc::new(session_config),
            mailbox_limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        // Every critical section leaves the map consistent before it could panic.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn generation(&self) -> u64 {
        let mut g = self
            .next_generation
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *g += 1;
        *g
    }

    /// Number of sessions, connected or parked.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the session of `client_id` for a new connection: resumes a parked one
    /// (unless `clean_start`), takes one over from its current connection, or makes a
    /// new one. With `clean_start` the old session's subscriptions and queued messages
    /// are discarded.
    pub async fn attach(
        &self,
        client_id: &str,
        clean_start: bool,
        router: &Router,
    ) -> Result<Held, AttachError> {
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        loop {
            let wait_for = {
                let mut entries = self.lock();
                let generation = self.generation();
                match entries.get_mut(client_id) {
                    None => {
                        let key: Arc<str> = Arc::from(client_id);
                        let mailbox = Arc::new(Mailbox::new(self.mailbox_limits));
                        entries.insert(
                            Arc::clone(&key),
                            Entry {
                                generation,
                                mailbox: Arc::clone(&mailbox),
                                parked: None,
                                released: Arc::new(Notify::new()),
                                pending_will: None,
                            },
                        );
                        mailbox.set_online(true);
                        return Ok(Held {
                            session: self.new_session(client_id),
                            client_id: key,
                            subscriptions: SubscriptionSet::default(),
                            mailbox,
                            generation,
                            session_present: false,
                        });
                    }
                    Some(entry) => match entry.parked.take() {
                        Some(parked) => {
                            entry.generation = generation;
                            // A takeover rung for the previous holder (which ended
                            // before taking it) must not end this one.
                            entry.mailbox.silence(TAKEOVER);
                            let key = entries
                                .get_key_value(client_id)
                                .map(|(k, _)| Arc::clone(k))
                                .unwrap_or_else(|| Arc::from(client_id));
                            let Some(entry) = entries.get_mut(client_id) else {
                                continue;
                            };
                            let mut held = Held {
                                client_id: key,
                                session: parked.session,
                                subscriptions: parked.subscriptions,
                                mailbox: Arc::clone(&entry.mailbox),
                                generation,
                                session_present: true,
                            };
                            if let Some(will) = entry.pending_will.take() {
                                // Resumed in time: the will is off. Ended by a clean
                                // start: it goes now.
                                will.set(if clean_start {
                                    WILL_NOW
                                } else {
                                    WILL_CANCELLED
                                });
                            }
                            if clean_start {
                                if let Some(journal) = router.journal() {
                                    journal.session_end(&held.client_id);
                                }
                                discard(&mut held, router);
                                held.session = self.new_session(client_id);
                                held.session_present = false;
                            }
                            held.mailbox.set_online(true);
                            return Ok(held);
                        }
                        None => {
                            entry.mailbox.ring(TAKEOVER);
                            Arc::clone(&entry.released)
                        }
                    },
                }
            };
            if tokio::time::timeout_at(deadline, wait_for.notified())
                .await
                .is_err()
            {
                return Err(AttachError::TakeoverTimedOut);
            }
        }
    }

    /// Rings `signal` for every session's connection (shutdown).
    pub fn ring_all(&self, signal: u8) {
        for entry in self.lock().values() {
            entry.mailbox.ring(signal);
        }
    }

    fn new_session(&self, client_id: &str) -> ServerSession {
        let id = MqttString::try_from(client_id).unwrap_or_default();
        ServerSession::new(id, Arc::clone(&self.session_config))
    }

    /// Gives a session back when its connection ends. With a Session Expiry Interval of
    /// 0 the session ends now; otherwise it is parked, its QoS 1/2 messages still
    /// queueing, until a connection resumes it or it expires. Returns the expiry to
    /// schedule (`None`: ended now, or never expires).
    pub fn release(&self, held: Held, router: &Router) -> Option<Duration> {
        let mut held = held;
        let expiry = held.session.session_expiry_interval();
        let mut entries = self.lock();
        let entry = entries.get_mut(&held.client_id)?;
        if entry.generation != held.generation {
            // Taken over while we held it: the new holder owns the entry.
            return None;
        }
        held.mailbox.set_online(false);
        entry.released.notify_one();
        if expiry == 0 {
            entries.remove(&held.client_id);
            drop(entries);
            if held.mailbox.is_persistent()
                && let Some(journal) = router.journal()
            {
                // DISCONNECT set the expiry to 0: the session ends now.
                journal.session_end(&held.client_id);
            }
            discard(&mut held, router);
            return None;
        }
        if let Some(journal) = router.journal() {
            // DISCONNECT may have changed the interval.
            journal.session(&held.client_id, expiry);
        }
        entry.parked = Some(Box::new(Parked {
            session: held.session,
            subscriptions: held.subscriptions,
        }));
        (expiry != u32::MAX).then(|| Duration::from_secs(u64::from(expiry)))
    }

    /// Ends a parked session whose expiry interval ran out, if nobody resumed it since
    /// `generation`. Returns the number of queued messages discarded.
    pub fn expire(&self, client_id: &str, generation: u64, router: &Router) -> Option<usize> {
        let mut entries = self.lock();
        let entry = entries.get(client_id)?;
        if entry.generation != generation || entry.parked.is_none() {
            return None;
        }
        let entry = entries.remove(client_id)?;
        drop(entries);
        if let Some(will) = &entry.pending_will {
            will.set(WILL_NOW);
        }
        let parked = entry.parked?;
        if let Some(journal) = router.journal() {
            journal.session_end(&Arc::from(client_id));
        }
        let mut held = Held {
            client_id: Arc::from(client_id),
            session: parked.session,
            subscriptions: parked.subscriptions,
            mailbox: entry.mailbox,
            generation,
            session_present: false,
        };
        Some(discard(&mut held, router))
    }

    /// Parks the sessions recovered from the journal, their subscriptions back in the
    /// router and their queued messages in their mailboxes, as if their clients had just
    /// disconnected. Returns `(client id, generation, expiry)` for each, to schedule.
    pub fn restore(
        &self,
        recovered: Vec<RecoveredSession>,
        router: &Router,
    ) -> Vec<(Arc<str>, u64, u32)> {
        let mut restored = Vec::new();
        for r in recovered {
            let generation = self.generation();
            let mailbox = Arc::new(Mailbox::new(self.mailbox_limits));
            mailbox.set_persistent(true);
            mailbox.put_back(r.queued.into_iter());
            let mut subscriptions = SubscriptionSet::default();
            for (filter, options, id) in r.subscriptions {
                let subscriber = super::router::Subscriber {
                    mailbox: Arc::clone(&mailbox),
                    options,
                    id,
                    // Not journaled: read checks treat a restored subscription as
                    // anonymous until the client subscribes again.
                    username: None,
                };
                router.subscribe(&r.client_id, &filter, subscriber);
                subscriptions.insert(filter, SubscriptionRecord { options, id });
            }
            let mut session = self.new_session(&r.client_id);
            session.set_session_expiry_interval(r.expiry);
            self.lock().insert(
                Arc::clone(&r.client_id),
                Entry {
                    generation,
                    mailbox,
                    parked: Some(Box::new(Parked {
                        session,
                        subscriptions,
                    })),
                    released: Arc::new(Notify::new()),
                    pending_will: None,
                },
            );
            restored.push((r.client_id, generation, r.expiry));
        }
        restored
    }

    /// Registers a will waiting for its delay with the session parked by `generation`;
    /// `None` if the session is no longer there (then the will goes at once).
    pub fn arm_will(&self, client_id: &str, generation: u64) -> Option<Arc<WillSignal>> {
        let mut entries = self.lock();
        let entry = entries.get_mut(client_id)?;
        if entry.generation != generation || entry.parked.is_none() {
            return None;
        }
        let signal = Arc::new(WillSignal::new());
        entry.pending_will = Some(Arc::clone(&signal));
        Some(signal)
    }
}

/// Drops a session's subscriptions from the router and its queued messages.
fn discard(held: &mut Held, router: &Router) -> usize {
    router.unsubscribe_all(&held.client_id, held.subscriptions.keys());
    held.subscriptions.clear();
    held.mailbox.clear() + held.session.discard_state()
}
