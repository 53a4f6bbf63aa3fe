//! A client's mailbox: the bounded queue between the publishers' tasks, which route
//! messages into it, and the one task serving the client's connection, which takes them
//! out as the client's window allows. While the client is away (a persistent session),
//! its QoS 1/2 messages wait here.
//!
//! Bounded by message count and bytes; what does not fit is dropped and counted, never
//! silently (see `Mailbox::offer`). It must not know about sockets or packets.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

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

/// What [`Mailbox::offer`] did with a message.
#[derive(Debug)]
pub enum Offer {
    Queued,
    /// Dropped and counted: QoS 0 for an offline client, or the client is offline and
    /// its mailbox full.
    Dropped,
    /// The client is connected but its mailbox is full: the message is handed back so
    /// the publisher can wait for room ([`Mailbox::space`]) instead of dropping it.
    Full(Outgoing),
}

#[derive(Debug, Default)]
struct Inbox {
    queue: VecDeque<Outgoing>,
    bytes: usize,
    online: bool,
}

/// Signals for the task serving the mailbox's client ([`Mailbox::ring`]): a message
/// arrived, another connection takes the session over, the broker shuts down.
pub const ARRIVED: u8 = 1;
pub const TAKEOVER: u8 = 2;
pub const SHUTDOWN: u8 = 4;

/// One waker for the three signals of a connection, instead of a `Notify` (and a
/// `Notified` future inside every idle connection's task) for each.
#[derive(Debug, Default)]
struct Doorbell {
    /// Signals rung and not yet taken: a signal rung while the task is busy elsewhere
    /// waits here, as a `Notify` permit would.
    rung: AtomicU8,
    /// The signals the waiting task asked for: ringing another does not wake it (a
    /// message arriving for a client whose window is full must not spin its task).
    interest: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

#[derive(Debug)]
pub struct Mailbox {
    inbox: Mutex<Inbox>,
    /// Wakes the connection task on a message, a takeover or shutdown.
    doorbell: Doorbell,
    limits: MailboxLimits,
    dropped: AtomicU64,
    /// The session outlives its connections (expiry > 0): what it is sent is journaled
    /// when the broker persists.
    persistent: AtomicBool,
    /// Wakes publishers waiting for room once messages are taken out.
    space: Notify,
    /// Set once a publisher has waited here: only then does `take` pay for a wake-up.
    space_wanted: AtomicBool,
}

fn size_of(outgoing: &Outgoing) -> usize {
    outgoing.message.payload.len() + outgoing.message.topic.as_str().len()
}

impl Mailbox {
    pub fn new(limits: MailboxLimits) -> Self {
        Mailbox {
            inbox: Mutex::new(Inbox::default()),
            doorbell: Doorbell::default(),
            limits,
            dropped: AtomicU64::new(0),
            persistent: AtomicBool::new(false),
            space: Notify::new(),
            space_wanted: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inbox> {
        // A panic while holding this lock cannot leave the queue half-changed (each
        // critical section is one push or pop), so a poisoned lock is still usable.
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a message for a connected client, hands it back when the mailbox is full
    /// (back-pressure: the publisher waits), or drops and counts it when the client is
    /// away and its mailbox full (or it is QoS 0 and the client away).
    pub fn offer(&self, outgoing: Outgoing) -> Offer {
        let size = size_of(&outgoing);
        {
            let mut inbox = self.lock();
            let full = inbox.queue.len() >= self.limits.max_messages
                || inbox.bytes + size > self.limits.max_bytes;
            let offline_qos0 =
                !inbox.online && outgoing.qos == QoS::AtMostOnce && !self.limits.queue_qos0_offline;
            match (inbox.online, full) {
                _ if offline_qos0 => {}
                (true, true) => return Offer::Full(outgoing),
                (false, true) => {}
                (_, false) => {
                    inbox.bytes += size;
                    inbox.queue.push_back(outgoing);
                    drop(inbox);
                    self.ring(ARRIVED);
                    return Offer::Queued;
                }
            }
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        Offer::Dropped
    }

    /// Resolves when the mailbox may have room again (or its client went away, which
    /// turns waiting into dropping).
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits.
    pub async fn space(&self) {
        self.space_wanted.store(true, Ordering::Relaxed);
        let freed = self.space.notified();
        tokio::pin!(freed);
        // Registered before checking, so a `take` in between cannot be missed.
        freed.as_mut().enable();
        {
            let inbox = self.lock();
            let room =
                inbox.queue.len() < self.limits.max_messages && inbox.bytes < self.limits.max_bytes;
            if room || !inbox.online {
                return;
            }
        }
        freed.await;
    }

    fn wake_space_waiters(&self) {
        if self.space_wanted.load(Ordering::Relaxed) {
            self.space.notify_waiters();
        }
    }

    /// Takes up to `max` messages, oldest first.
    pub fn take(&self, max: usize, into: &mut Vec<Outgoing>) {
        let taken = {
            let mut inbox = self.lock();
            let inbox = &mut *inbox;
            let n = max.min(inbox.queue.len());
            for outgoing in inbox.queue.drain(..n) {
                inbox.bytes -= size_of(&outgoing);
                into.push(outgoing);
            }
            n
        };
        if taken > 0 {
            self.wake_space_waiters();
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
        drop(inbox);
        self.wake_space_waiters();
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
        if !online {
            // Publishers waiting for room now drop instead (counted).
            self.wake_space_waiters();
        }
    }

    /// Messages refused so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Rings `signal` (one of [`ARRIVED`], [`TAKEOVER`], [`SHUTDOWN`]) for the task
    /// serving this mailbox's client; kept until that task takes it.
    pub fn ring(&self, signal: u8) {
        let bell = &self.doorbell;
        // SeqCst with `poll_signals`: either this load sees the waiter's interest, or
        // the waiter's second look sees this signal.
        bell.rung.fetch_or(signal, Ordering::SeqCst);
        if bell.interest.load(Ordering::SeqCst) & signal != 0
            && let Some(waker) = lock(&bell.waker).as_ref()
        {
            waker.wake_by_ref();
        }
    }

    /// Forgets a rung `signal` (a takeover meant for an earlier connection).
    pub fn silence(&self, signal: u8) {
        self.doorbell.rung.fetch_and(!signal, Ordering::SeqCst);
    }

    /// Resolves with the signals among `interest` that were rung since they were last
    /// taken (at least one), taking them.
    ///
    /// # Cancel safety
    /// Cancel safe: signals are only taken when it resolves.
    pub fn signals(&self, interest: u8) -> impl std::future::Future<Output = u8> + Send + '_ {
        std::future::poll_fn(move |cx| self.poll_signals(cx, interest))
    }

    fn poll_signals(&self, cx: &mut Context<'_>, interest: u8) -> Poll<u8> {
        let bell = &self.doorbell;
        let take = || bell.rung.fetch_and(!interest, Ordering::SeqCst) & interest;
        let rung = take();
        if rung != 0 {
            // Not waiting any more: later signals wait in `rung` without a wake-up.
            bell.interest.store(0, Ordering::SeqCst);
            return Poll::Ready(rung);
        }
        {
            let mut waker = lock(&bell.waker);
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        bell.interest.store(interest, Ordering::SeqCst);
        match take() {
            0 => Poll::Pending,
            rung => {
                bell.interest.store(0, Ordering::SeqCst);
                Poll::Ready(rung)
            }
        }
    }
}

/// Locks a mutex whose critical sections cannot leave it half-changed (one assignment
/// or read each), so a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
