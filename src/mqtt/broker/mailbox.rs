//! A client's mailbox: the bounded queue between the publishers' tasks, which route
//! messages into it, and the one task serving the client's connection, which takes them
//! out as the client's window allows. While the client is away (a persistent session),
//! its QoS 1/2 messages wait here.
//!
//! Bounded by message count and bytes; what does not fit is dropped and counted, never
//! silently (see `Mailbox::push`). It must not know about sockets or packets.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

use crate::mqtt::packet::QoS;
use crate::mqtt::session::server::Outgoing;

/// How much one client's mailbox may hold.
#[derive(Debug, Clone, Copy)]
pub struct MailboxLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    /// Keep QoS 0 messages for an offline client too (Mosquitto's `queue_qos0_messages`).
    pub queue_qos0_offline: bool,
}

impl Default for MailboxLimits {
    fn default() -> Self {
        MailboxLimits {
            max_messages: 10_000,
            max_bytes: 16 << 20,
            queue_qos0_offline: false,
        }
    }
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The mailbox is at its message or byte limit.
    Full,
    /// QoS 0 for a client that is not connected.
    Offline,
}

#[derive(Debug, Default)]
struct Inbox {
    queue: VecDeque<Outgoing>,
    bytes: usize,
    online: bool,
}

#[derive(Debug)]
pub struct Mailbox {
    inbox: Mutex<Inbox>,
    /// Wakes the connection task when a message arrives (a stored permit covers a
    /// message that arrives while it is busy elsewhere).
    arrived: Notify,
    limits: MailboxLimits,
    dropped: AtomicU64,
    /// The session outlives its connections (expiry > 0): what it is sent is journaled
    /// when the broker persists.
    persistent: AtomicBool,
}

fn size_of(outgoing: &Outgoing) -> usize {
    outgoing.message.payload.len() + outgoing.message.topic.as_str().len()
}

impl Mailbox {
    pub fn new(limits: MailboxLimits) -> Self {
        Mailbox {
            inbox: Mutex::new(Inbox::default()),
            arrived: Notify::new(),
            limits,
            dropped: AtomicU64::new(0),
            persistent: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inbox> {
        // A panic while holding this lock cannot leave the queue half-changed (each
        // critical section is one push or pop), so a poisoned lock is still usable.
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a message for the client, or drops it and counts it in
    /// [`Self::dropped`] (and the caller counts it broker-wide).
    pub fn push(&self, outgoing: Outgoing) -> Result<(), Refused> {
        let size = size_of(&outgoing);
        {
            let mut inbox = self.lock();
            if !inbox.online && outgoing.qos == QoS::AtMostOnce && !self.limits.queue_qos0_offline {
                drop(inbox);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Offline);
            }
            if inbox.queue.len() >= self.limits.max_messages
                || inbox.bytes + size > self.limits.max_bytes
            {
                drop(inbox);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Full);
            }
            inbox.bytes += size;
            inbox.queue.push_back(outgoing);
        }
        self.arrived.notify_one();
        Ok(())
    }

    /// Takes up to `max` messages, oldest first.
    pub fn take(&self, max: usize, into: &mut Vec<Outgoing>) {
        let mut inbox = self.lock();
        let inbox = &mut *inbox;
        let n = max.min(inbox.queue.len());
        for outgoing in inbox.queue.drain(..n) {
            inbox.bytes -= size_of(&outgoing);
            into.push(outgoing);
        }
    }

    /// Puts messages back at the front (in their order), e.g. when a session is parked
    /// with messages it could not send.
    pub fn put_back(&self, outgoing: impl DoubleEndedIterator<Item = Outgoing>) {
        let mut inbox = self.lock();
        for o in outgoing.rev() {
            inbox.bytes += size_of(&o);
            inbox.queue.push_front(o);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops everything queued (a clean start or an expired session); returns how many.
    pub fn clear(&self) -> usize {
        let mut inbox = self.lock();
        inbox.bytes = 0;
        let n = inbox.queue.len();
        inbox.queue.clear();
        n
    }

    pub fn is_persistent(&self) -> bool {
        self.persistent.load(Ordering::Relaxed)
    }

    pub fn set_persistent(&self, persistent: bool) {
        self.persistent.store(persistent, Ordering::Relaxed);
    }

    pub fn is_online(&self) -> bool {
        self.lock().online
    }

    pub fn set_online(&self, online: bool) {
        self.lock().online = online;
    }

    /// Messages refused so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Resolves when a message may have arrived since the last call.
    ///
    /// # Cancel safety
    /// Cancel safe: a notification not consumed stays stored for the next call.
    pub async fn arrived(&self) {
        self.arrived.notified().await;
    }
}
