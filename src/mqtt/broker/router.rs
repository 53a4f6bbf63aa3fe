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

use crate::mqtt::broker::mailbox::{Mailbox, Offer};
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
#[derive(Debug, Default)]
pub struct Routed {
    /// Mailboxes it was queued in.
    pub delivered: usize,
    /// Connected subscribers whose mailboxes are full: the publisher must wait for room
    /// and offer these again ([`Blocked::retry`]) before acknowledging.
    pub blocked: Vec<Blocked>,
    /// Mailboxes that refused it (full, or QoS 0 for an offline client): counted drops.
    pub dropped: usize,
    /// Deliveries recorded in the journal (to persistent sessions).
    pub journaled: usize,
}

/// A delivery waiting for room in a connected subscriber's full mailbox.
#[derive(Debug)]
pub struct Blocked {
    pub mailbox: Arc<Mailbox>,
    pub client: Arc<str>,
    outgoing: Outgoing,
}

impl Blocked {
    /// Offers the message again: `None` once it is queued or (its client gone) dropped,
    /// `Some(self)` while the mailbox is still full.
    pub fn retry(self, router: &Router) -> Option<Blocked> {
        let seq = self.outgoing.message.journal_seq;
        let Blocked {
            mailbox,
            client,
            outgoing,
        } = self;
        match mailbox.offer(outgoing) {
            Offer::Queued => None,
            Offer::Dropped => {
                router.dropped_one(&client, &mailbox, seq);
                None
            }
            Offer::Full(outgoing) => Some(Blocked {
                mailbox,
                client,
                outgoing,
            }),
        }
    }

    /// Gives up waiting (the publisher waited too long): dropped and counted.
    pub fn drop_counted(self, router: &Router) {
        router.dropped_one(
            &self.client,
            &self.mailbox,
            self.outgoing.message.journal_seq,
        );
    }
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
    /// A shared subscription's delivery: a copy of its own, never merged.
    shared: bool,
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
        let mut targets = Targets::default();
        tree.for_each_match(&message.topic, |m| match m {
            Match::Single(key, subscriber) => {
                // [MQTT-3.8.3-3]: No Local: not back to the publisher.
                if subscriber.options.no_local && message.publisher.as_deref() == Some(&**key) {
                    return;
                }
                targets.add(key, subscriber, message.qos);
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
                    targets.push_shared(Target {
                        shared: true,
                        ..target(key, subscriber, message.qos)
                    });
                }
            }
        });
        let mut routed = Routed::default();
        for t in targets.list {
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
            match t.subscriber.mailbox.offer(outgoing) {
                Offer::Queued => routed.delivered += 1,
                Offer::Dropped => {
                    routed.dropped += 1;
                    if let Some((journal, seq)) = journaled {
                        journal.finished(t.key, seq);
                    }
                }
                Offer::Full(outgoing) => routed.blocked.push(Blocked {
                    mailbox: Arc::clone(&t.subscriber.mailbox),
                    client: Arc::clone(t.key),
                    outgoing,
                }),
            }
        }
        self.stats.record_routed(&routed);
        routed
    }

    /// Routes a message nobody waits on (a will, `$SYS`): full mailboxes drop it, counted.
    pub fn publish_or_drop(&self, message: &Arc<Message>, acl: &dyn ReadCheck) -> Routed {
        let mut routed = self.publish(message, acl);
        for blocked in routed.blocked.drain(..) {
            routed.dropped += 1;
            blocked.drop_counted(self);
        }
        routed
    }

    /// Counts a delivery that was given up, and tells the journal the client will not
    /// get it.
    fn dropped_one(&self, client: &Arc<str>, mailbox: &Mailbox, seq: Option<u64>) {
        self.stats.publish_dropped.fetch_add(1, Ordering::Relaxed);
        if let (Some(journal), Some(seq)) = (&self.journal, seq)
            && mailbox.is_persistent()
        {
            journal.finished(client, seq);
        }
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
}

fn target<'a>(key: &'a Arc<str>, subscriber: &'a Subscriber, qos: QoS) -> Target<'a> {
    Target {
        key,
        subscriber,
        qos: qos.min(subscriber.options.qos),
        retain_as_published: subscriber.options.retain_as_published,
        ids: subscriber.id.into_iter().collect(),
        shared: false,
    }
}

/// Beyond this many targets, merging looks clients up in a map instead of scanning.
const SCAN_LIMIT: usize = 16;

/// The deliveries one publish makes, with overlapping subscriptions of a client merged.
#[derive(Default)]
struct Targets<'a> {
    list: Vec<Target<'a>>,
    /// Mailbox address -> index in `list` of its ordinary (not shared) delivery; only
    /// filled once `list` outgrows [`SCAN_LIMIT`], so the usual handful of targets costs
    /// no hashing, and a fan-out to thousands no quadratic scan.
    index: HashMap<*const Mailbox, usize>,
}

impl<'a> Targets<'a> {
    fn push_shared(&mut self, target: Target<'a>) {
        self.list.push(target);
    }

    /// Adds an ordinary subscription's delivery, merged with the client's earlier one.
    fn add(&mut self, key: &'a Arc<str>, subscriber: &'a Subscriber, qos: QoS) {
        let mailbox = Arc::as_ptr(&subscriber.mailbox);
        let found = if self.list.len() <= SCAN_LIMIT {
            self.list
                .iter()
                .position(|t| !t.shared && Arc::as_ptr(&t.subscriber.mailbox) == mailbox)
        } else {
            if self.index.is_empty() {
                for (i, t) in self.list.iter().enumerate() {
                    if !t.shared {
                        self.index.insert(Arc::as_ptr(&t.subscriber.mailbox), i);
                    }
                }
            }
            self.index.get(&mailbox).copied()
        };
        match found.and_then(|i| self.list.get_mut(i)) {
            Some(existing) => {
                existing.qos = existing.qos.max(qos.min(subscriber.options.qos));
                existing.retain_as_published |= subscriber.options.retain_as_published;
                existing.ids.extend(subscriber.id);
            }
            None => {
                if !self.index.is_empty() {
                    self.index.insert(mailbox, self.list.len());
                }
                self.list.push(target(key, subscriber, qos));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::broker::mailbox::MailboxLimits;
    use crate::mqtt::packet::{PublishProperties, RetainHandling};
    use bytes::Bytes;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Sub {
        client: usize,
        filter: String,
        qos: u8,
        no_local: bool,
        rap: bool,
        id: Option<u32>,
    }

    fn arb_sub() -> impl Strategy<Value = Sub> {
        let level = prop::sample::select(vec!["a", "b", "+"]);
        (
            0usize..4,
            prop::collection::vec(level, 1..3),
            any::<bool>(),
            prop::option::of(prop::sample::select(vec!["g", "h"])),
            0u8..3,
            any::<bool>(),
            any::<bool>(),
            prop::option::of(1u32..5),
        )
            .prop_map(|(client, levels, hash, group, qos, no_local, rap, id)| {
                let mut filter = levels.join("/");
                if hash {
                    filter.push_str("/#");
                }
                let filter = match group {
                    Some(g) => format!("$share/{g}/{filter}"),
                    None => filter,
                };
                // [MQTT-3.8.3-4]: No Local is not allowed on a shared subscription.
                let no_local = no_local && group.is_none();
                Sub {
                    client,
                    filter,
                    qos,
                    no_local,
                    rap,
                    id,
                }
            })
    }

    /// What one client should get for one publish, per the naive reading of the rules.
    #[derive(Debug, PartialEq, Eq)]
    struct Expected {
        qos: QoS,
        retain: bool,
        ids: Vec<u32>,
    }

    #[test]
    fn a_wide_fan_out_still_merges_each_clients_overlapping_subscriptions() {
        // More targets than SCAN_LIMIT: merging goes through the map.
        let router = Router::new(Arc::new(Stats::default()), None);
        let mut mailboxes = Vec::new();
        for i in 0..40 {
            let client: Arc<str> = Arc::from(format!("c{i}").as_str());
            let mailbox = Arc::new(Mailbox::new(MailboxLimits::default()));
            mailbox.set_online(true);
            for (filter, qos) in [("a/#", QoS::AtMostOnce), ("a/+", QoS::AtLeastOnce)] {
                let subscriber = Subscriber {
                    mailbox: Arc::clone(&mailbox),
                    options: SubscriptionOptions {
                        qos,
                        ..SubscriptionOptions::default()
                    },
                    id: None,
                    username: None,
                };
                router.subscribe(&client, &TopicFilter::try_from(filter).unwrap(), subscriber);
            }
            mailboxes.push(mailbox);
        }
        let message = Arc::new(Message {
            topic: TopicName::try_from("a/b").unwrap(),
            payload: Bytes::from_static(b"p"),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: PublishProperties::default(),
            expires_at: None,
            publisher: None,
            journal_seq: None,
        });
        let routed = router.publish(&message, &AllowAll);
        assert_eq!(routed.delivered, 40);
        for mailbox in &mailboxes {
            let mut got = Vec::new();
            mailbox.take(10, &mut got);
            assert_eq!(got.len(), 1, "one copy per client");
            assert_eq!(got[0].qos, QoS::AtLeastOnce, "the higher granted QoS");
        }
    }

    proptest! {
        /// Against a naive model: each client with matching ordinary subscriptions gets
        /// exactly one copy at the highest granted QoS (never above the message's), with
        /// every matching subscription identifier, RETAIN kept only with Retain As
        /// Published, none of its own messages where No Local says so; and each shared
        /// group (per filter) hands the message to exactly one of its members.
        #[test]
        fn routing_matches_a_naive_model(
            subs in prop::collection::vec(arb_sub(), 0..12),
            topic in prop::sample::select(vec!["a", "b", "a/b", "a/a/b", "b/a"]),
            msg_qos in 0u8..3,
            retain in any::<bool>(),
            publisher in 0usize..5,
        ) {
            let router = Router::new(Arc::new(Stats::default()), None);
            let clients: Vec<Arc<str>> = (0..4).map(|i| Arc::from(format!("c{i}").as_str())).collect();
            let mailboxes: Vec<Arc<Mailbox>> = (0..4)
                .map(|_| {
                    let m = Arc::new(Mailbox::new(MailboxLimits::default()));
                    m.set_online(true);
                    m
                })
                .collect();
            // Later subscriptions to the same filter replace earlier ones, as in MQTT.
            let mut live: Vec<Sub> = Vec::new();
            for sub in &subs {
                let options = SubscriptionOptions {
                    qos: QoS::from_u8(sub.qos).unwrap(),
                    no_local: sub.no_local,
                    retain_as_published: sub.rap,
                    retain_handling: RetainHandling::SendAtSubscribe,
                };
                let filter = TopicFilter::try_from(sub.filter.as_str()).unwrap();
                router.subscribe(&clients[sub.client], &filter, Subscriber {
                    mailbox: Arc::clone(&mailboxes[sub.client]),
                    options,
                    id: sub.id.and_then(SubscriptionId::new),
                    username: None,
                });
                live.retain(|s| !(s.client == sub.client && s.filter == sub.filter));
                live.push(sub.clone());
            }
            let msg_qos = QoS::from_u8(msg_qos).unwrap();
            let message = Arc::new(Message {
                topic: TopicName::try_from(topic).unwrap(),
                payload: Bytes::from_static(b"p"),
                qos: msg_qos,
                retain,
                properties: PublishProperties::default(),
                expires_at: None,
                publisher: clients.get(publisher).cloned(),
                journal_seq: None,
            });
            router.publish(&message, &AllowAll);

            let matching: Vec<&Sub> = live
                .iter()
                .filter(|s| TopicFilter::try_from(s.filter.as_str()).unwrap().matches(&message.topic))
                .collect();
            let mut shared_groups = std::collections::BTreeSet::new();
            for s in &matching {
                if s.filter.starts_with("$share/") {
                    shared_groups.insert(s.filter.clone());
                }
            }
            let mut shared_deliveries = 0;
            for (c, mailbox) in mailboxes.iter().enumerate() {
                let mut got = Vec::new();
                mailbox.take(usize::MAX, &mut got);
                let own: Vec<&&Sub> = matching
                    .iter()
                    .filter(|s| s.client == c && !s.filter.starts_with("$share/"))
                    .filter(|s| !(s.no_local && publisher == c))
                    .collect();
                let expected = (!own.is_empty()).then(|| {
                    let mut ids: Vec<u32> = own.iter().filter_map(|s| s.id).collect();
                    ids.sort();
                    Expected {
                        qos: msg_qos.min(own.iter().map(|s| QoS::from_u8(s.qos).unwrap()).max().unwrap()),
                        retain: retain && own.iter().any(|s| s.rap),
                        ids,
                    }
                });
                // Deliveries to shared members are separate copies: take them out first.
                let member_of: Vec<&&Sub> = matching
                    .iter()
                    .filter(|s| s.client == c && s.filter.starts_with("$share/"))
                    .collect();
                let ordinary: Vec<Expected> = got
                    .iter()
                    .map(|o| {
                        let mut ids: Vec<u32> = o.subscription_ids.iter().map(|i| i.get()).collect();
                        ids.sort();
                        Expected { qos: o.qos, retain: o.retain, ids }
                    })
                    .collect();
                let extra = ordinary.len() - usize::from(expected.is_some());
                prop_assert!(extra <= member_of.len(), "client {} got {} copies", c, ordinary.len());
                shared_deliveries += extra;
                if let Some(expected) = expected {
                    prop_assert!(ordinary.contains(&expected), "client {}: {:?} not in {:?}", c, expected, ordinary);
                }
                for o in &got {
                    prop_assert!(o.qos <= msg_qos, "never above the message's QoS");
                }
            }
            prop_assert_eq!(shared_deliveries, shared_groups.len(), "one member per shared group");
        }
    }
}
