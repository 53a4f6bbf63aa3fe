//! The router: which mailboxes a published message goes to, and the retained messages.
//!
//! The publish path takes no lock shared by all publishers: it matches against an
//! immutable snapshot of the subscription tree (an `ArcSwap` load), then locks only the
//! mailboxes it delivers to. Subscribes and unsubscribes, which are rare, copy the
//! changed path of the tree and swap the snapshot under a writers' mutex. Retained
//! messages sit in their own map, locked only by retained publishes and by subscribes.
//! The router must not know about connections or sessions' protocol state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::mqtt::broker::mailbox::{Mailbox, Refused};
use crate::mqtt::broker::persist::Journal;
use crate::mqtt::broker::stats::Stats;
use crate::mqtt::broker::subscriptions::{Match, SubscriptionTree};
use crate::mqtt::packet::{QoS, SubscriptionId, SubscriptionOptions};
use crate::mqtt::session::server::{Message, Outgoing};
use crate::mqtt::topic::{TopicFilter, TopicName};

/// One client's subscription, as stored in the tree.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub mailbox: Arc<Mailbox>,
    pub options: SubscriptionOptions,
    pub id: Option<SubscriptionId>,
    /// The client's user name, for read checks at delivery.
    pub username: Option<Arc<str>>,
}

/// Decides per delivery whether a client may receive a topic (the ACL's read rules).
pub trait ReadCheck: Sync {
    fn may_receive(&self, username: Option<&str>, client_id: &str, topic: &TopicName) -> bool;
}

/// No ACL: everyone may receive everything.
#[derive(Debug)]
pub struct AllowAll;

impl ReadCheck for AllowAll {
    fn may_receive(&self, _: Option<&str>, _: &str, _: &TopicName) -> bool {
        true
    }
}

type Tree = SubscriptionTree<Arc<str>, Subscriber>;

#[derive(Debug)]
pub struct Router {
    snapshot: ArcSwap<Tree>,
    /// Serialises changes to the tree (each copies the current snapshot's changed path).
    writer: Mutex<()>,
    retained: Mutex<HashMap<TopicName, Arc<Message>>>,
    /// Turns for shared subscriptions: each delivery to a group starts at the next member.
    shared_turn: AtomicUsize,
    pub stats: Arc<Stats>,
    /// Where retained messages and persistent sessions' deliveries are recorded.
    journal: Option<Journal>,
}

/// What routing one message did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    /// Mailboxes it was queued in.
    pub delivered: usize,
    /// Mailboxes that refused it (full, or QoS 0 for an offline client): counted drops.
    pub dropped: usize,
    /// Deliveries recorded in the journal (to persistent sessions).
    pub journaled: usize,
}

/// A client's deliveries merged over its matching subscriptions: one message per client
/// with the highest granted QoS and every subscription identifier [MQTT-3.3.4-2]
/// [MQTT-3.3.4-3] [MQTT-3.3.4-4].
struct Target<'a> {
    key: &'a Arc<str>,
    subscriber: &'a Subscriber,
    qos: QoS,
    retain_as_published: bool,
    ids: Vec<SubscriptionId>,
}

impl Router {
    pub fn new(stats: Arc<Stats>, journal: Option<Journal>) -> Self {
        Router {
            snapshot: ArcSwap::from_pointee(Tree::default()),
            writer: Mutex::new(()),
            retained: Mutex::new(HashMap::new()),
            shared_turn: AtomicUsize::new(0),
            stats,
            journal,
        }
    }

    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// Gives a message its journal number when the broker persists and the message may
    /// need keeping (QoS 1/2, or retained).
    pub fn stamp(&self, message: &mut Message) {
        if let Some(journal) = &self.journal
            && (message.qos != QoS::AtMostOnce || message.retain)
        {
            message.journal_seq = Some(journal.next_seq());
        }
    }

    fn change(&self, f: impl FnOnce(&mut Tree)) {
        // The guard only orders writers; a panic inside `f` leaves the old snapshot in
        // place, so a poisoned lock is still safe to take.
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut tree = Tree::clone(&self.snapshot.load());
        f(&mut tree);
        self.stats
            .subscriptions
            .store(tree.len(), Ordering::Relaxed);
        self.snapshot.store(Arc::new(tree));
    }

    /// Adds or replaces `client`'s subscription; true if it existed before.
    pub fn subscribe(
        &self,
        client: &Arc<str>,
        filter: &TopicFilter,
        subscriber: Subscriber,
    ) -> bool {
        let mut existed = false;
        self.change(|tree| {
            existed = tree
                .insert(filter, Arc::clone(client), subscriber)
                .is_some()
        });
        existed
    }

    /// Removes `client`'s subscription; true if there was one.
    pub fn unsubscribe(&self, client: &Arc<str>, filter: &TopicFilter) -> bool {
        let mut existed = false;
        self.change(|tree| existed = tree.remove(filter, client).is_some());
        existed
    }

    /// Removes several of `client`'s subscriptions in one change (a session ending).
    pub fn unsubscribe_all<'a>(
        &self,
        client: &Arc<str>,
        filters: impl IntoIterator<Item = &'a TopicFilter>,
    ) {
        self.change(|tree| {
            for filter in filters {
                tree.remove(filter, client);
            }
        });
    }

    /// Routes a message to every matching subscriber's mailbox.
    pub fn publish(&self, message: &Arc<Message>, acl: &dyn ReadCheck) -> Routed {
        let tree = self.snapshot.load();
        let mut targets: Vec<Target<'_>> = Vec::new();
        tree.for_each_match(&message.topic, |m| match m {
            Match::Single(key, subscriber) => {
                // [MQTT-3.8.3-3]: No Local: not back to the publisher.
                if subscriber.options.no_local && message.publisher.as_deref() == Some(&**key) {
                    return;
                }
                add_target(&mut targets, key, subscriber, message.qos);
            }
            Match::Shared { members, .. } => {
                // One member per group: the next connected one in turn, else the next.
                let turn = self.shared_turn.fetch_add(1, Ordering::Relaxed);
                let n = members.len();
                let pick = (0..n)
                    .map(|i| &members[(turn + i) % n])
                    .find(|(_, s)| s.mailbox.is_online())
                    .or_else(|| members.get(turn % n));
                if let Some((key, subscriber)) = pick {
                    // Shared deliveries are never merged with the client's own ones.
                    targets.push(target(key, subscriber, message.qos));
                }
            }
        });
        let mut routed = Routed::default();
        for t in targets {
            if !acl.may_receive(t.subscriber.username.as_deref(), t.key, &message.topic) {
                continue;
            }
            let outgoing = Outgoing {
                message: Arc::clone(message),
                qos: t.qos,
                retain: message.retain && t.retain_as_published,
                subscription_ids: t.ids,
            };
            // Journal before queueing: the subscriber may finish with it at once, and its
            // "finished" record must come after this one.
            let journaled = match (&self.journal, message.journal_seq) {
                (Some(journal), Some(seq))
                    if t.qos != QoS::AtMostOnce && t.subscriber.mailbox.is_persistent() =>
                {
                    journal.enqueue(t.key, seq, &outgoing);
                    routed.journaled += 1;
                    Some((journal, seq))
                }
                _ => None,
            };
            match t.subscriber.mailbox.push(outgoing) {
                Ok(()) => routed.delivered += 1,
                Err(Refused::Full | Refused::Offline) => {
                    routed.dropped += 1;
                    if let Some((journal, seq)) = journaled {
                        journal.finished(t.key, seq);
                    }
                }
            }
        }
        self.stats.record_routed(routed);
        routed
    }

    /// Stores or (with an empty payload) deletes the retained message for its topic
    /// [MQTT-3.3.1-5] [MQTT-3.3.1-6].
    pub fn retain(&self, message: &Arc<Message>) {
        if let Some(journal) = &self.journal {
            match message.journal_seq {
                Some(seq) if !message.payload.is_empty() => journal.retain(message, seq),
                _ => journal.clear_retained(&message.topic),
            }
        }
        self.restore_retained(message);
    }

    /// Stores a retained message without journaling it (recovery).
    pub fn restore_retained(&self, message: &Arc<Message>) {
        let mut retained = self.retained.lock().unwrap_or_else(|p| p.into_inner());
        if message.payload.is_empty() {
            retained.remove(&message.topic);
        } else {
            retained.insert(message.topic.clone(), Arc::clone(message));
        }
        self.stats.retained.store(retained.len(), Ordering::Relaxed);
    }

    /// Retained messages matching `filter` that have not expired, for a new subscription.
    pub fn retained_matching(&self, filter: &TopicFilter, now: Instant) -> Vec<Arc<Message>> {
        let mut retained = self.retained.lock().unwrap_or_else(|p| p.into_inner());
        retained.retain(|_, m| !m.is_expired(now));
        let mut found: Vec<Arc<Message>> = retained
            .values()
            .filter(|m| filter.matches(&m.topic))
            .cloned()
            .collect();
        // A stable order (by topic) makes replays predictable for clients and tests.
        found.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
        found
    }

    /// Every retained message (for persistence).
    pub fn retained_all(&self) -> Vec<Arc<Message>> {
        let retained = self.retained.lock().unwrap_or_else(|p| p.into_inner());
        retained.values().cloned().collect()
    }
}

fn target<'a>(key: &'a Arc<str>, subscriber: &'a Subscriber, qos: QoS) -> Target<'a> {
    Target {
        key,
        subscriber,
        qos: qos.min(subscriber.options.qos),
        retain_as_published: subscriber.options.retain_as_published,
        ids: subscriber.id.into_iter().collect(),
    }
}

fn add_target<'a>(
    targets: &mut Vec<Target<'a>>,
    key: &'a Arc<str>,
    subscriber: &'a Subscriber,
    qos: QoS,
) {
    // Overlapping subscriptions of one client: merge into one delivery. Linear search is
    // right for the usual handful of targets; fan-out to many distinct clients rarely
    // has the same client twice, and then the cost is one comparison per target.
    if let Some(existing) = targets
        .iter_mut()
        .find(|t| Arc::ptr_eq(&t.subscriber.mailbox, &subscriber.mailbox))
    {
        existing.qos = existing.qos.max(qos.min(subscriber.options.qos));
        existing.retain_as_published |= subscriber.options.retain_as_published;
        existing.ids.extend(subscriber.id);
        return;
    }
    targets.push(target(key, subscriber, qos));
}
