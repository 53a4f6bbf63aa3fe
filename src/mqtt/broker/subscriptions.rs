//! The subscription tree: which subscribers' filters match a topic name, found by walking
//! the topic's levels once instead of testing every filter.
//!
//! Nodes sit behind `Arc`s and are copied on write (`Arc::make_mut`), so cloning a tree is
//! cheap and a subscribe copies only the nodes on its path. That lets the router publish
//! from an immutable snapshot while a subscriber changes the next one. This module knows
//! nothing of sessions or delivery: values are whatever the router stores.

use std::collections::HashMap;
use std::sync::Arc;

use crate::mqtt::topic::{TopicFilter, TopicName};

/// Filters and their subscribers, keyed by `K` (a client) per filter and share group.
#[derive(Debug)]
pub struct SubscriptionTree<K, V> {
    root: Arc<Node<K, V>>,
    len: usize,
}

// Manual: deriving would require `K: Clone, V: Clone` only for the `Arc` clone.
impl<K, V> Clone for SubscriptionTree<K, V> {
    fn clone(&self) -> Self {
        SubscriptionTree {
            root: Arc::clone(&self.root),
            len: self.len,
        }
    }
}

impl<K, V> Default for SubscriptionTree<K, V> {
    fn default() -> Self {
        SubscriptionTree {
            root: Arc::new(Node::default()),
            len: 0,
        }
    }
}

/// The subscribers of one filter (and share group), in subscription order.
type Members<K, V> = Vec<(K, V)>;

#[derive(Debug, Clone)]
struct Node<K, V> {
    /// Next levels by their text; `+` and `#` are children like any other level.
    children: HashMap<Box<str>, Arc<Node<K, V>>>,
    /// Ordinary subscriptions whose filter ends here.
    subscribers: Vec<(K, V)>,
    /// `$share/<group>/…` subscriptions whose filter ends here, one list per group.
    groups: Vec<(Box<str>, Members<K, V>)>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            subscribers: Vec::new(),
            groups: Vec::new(),
        }
    }
}

impl<K, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.groups.is_empty()
    }
}

/// One matching subscription, as `SubscriptionTree::for_each_match` reports it.
#[derive(Debug)]
pub enum Match<'a, K, V> {
    /// An ordinary subscription.
    Single(&'a K, &'a V),
    /// A shared subscription: the message goes to one of `members` ([MQTT-4.8.2]). Two
    /// groups of the same name on different filters are different shared subscriptions.
    Shared {
        group: &'a str,
        members: &'a [(K, V)],
    },
}

impl<K: Clone + PartialEq, V: Clone> SubscriptionTree<K, V> {
    /// Number of (filter, group, key) subscriptions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `key`'s subscription to `filter`, or replaces it (returning the old value):
    /// a client has at most one subscription per filter [MQTT-3.8.4-3].
    pub fn insert(&mut self, filter: &TopicFilter, key: K, value: V) -> Option<V> {
        let mut node = Arc::make_mut(&mut self.root);
        for level in filter.filter().split('/') {
            node = Arc::make_mut(node.children.entry(level.into()).or_default());
        }
        let list = match filter.share_group() {
            None => &mut node.subscribers,
            Some(group) => {
                let index = match node.groups.iter().position(|(g, _)| &**g == group) {
                    Some(i) => i,
                    None => {
                        node.groups.push((group.into(), Vec::new()));
                        node.groups.len() - 1
                    }
                };
                &mut node.groups[index].1
            }
        };
        match list.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => Some(std::mem::replace(old, value)),
            None => {
                // Most filters have one subscriber: no room for four (a thousand sensors
                // on their own topics would otherwise each pay for three empty slots).
                list.reserve_exact(1);
                list.push((key, value));
                self.len += 1;
                None
            }
        }
    }

    /// Removes `key`'s subscription to `filter`, pruning nodes left empty.
    pub fn remove(&mut self, filter: &TopicFilter, key: &K) -> Option<V> {
        let levels: Vec<&str> = filter.filter().split('/').collect();
        let removed = remove_at(
            Arc::make_mut(&mut self.root),
            &levels,
            filter.share_group(),
            key,
        );
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// The value `key` holds for `filter`, if subscribed.
    pub fn get(&self, filter: &TopicFilter, key: &K) -> Option<&V> {
        let mut node = &self.root;
        for level in filter.filter().split('/') {
            node = node.children.get(level)?;
        }
        let list = match filter.share_group() {
            None => &node.subscribers,
            Some(group) => &node.groups.iter().find(|(g, _)| &**g == group)?.1,
        };
        list.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Calls `visit` once for every subscription whose filter matches `topic` (for a shared
    /// subscription, once per group with all its members).
    pub fn for_each_match<'a>(&'a self, topic: &TopicName, mut visit: impl FnMut(Match<'a, K, V>)) {
        let levels: Vec<&str> = topic.as_str().split('/').collect();
        // [MQTT-4.7.2-1]: first-level wildcards never match `$` topics.
        let system = topic.is_system();
        visit_matches(&self.root, &levels, !system, &mut visit);
    }
}

fn remove_at<K: Clone + PartialEq, V: Clone>(
    node: &mut Node<K, V>,
    levels: &[&str],
    group: Option<&str>,
    key: &K,
) -> Option<V> {
    let Some((first, rest)) = levels.split_first() else {
        return match group {
            None => {
                let i = node.subscribers.iter().position(|(k, _)| k == key)?;
                Some(node.subscribers.swap_remove(i).1)
            }
            Some(group) => {
                let g = node.groups.iter().position(|(g, _)| &**g == group)?;
                let members = &mut node.groups[g].1;
                let i = members.iter().position(|(k, _)| k == key)?;
                // Keep the members' order: shared delivery takes turns along it.
                let (_, value) = members.remove(i);
                if members.is_empty() {
                    node.groups.swap_remove(g);
                }
                Some(value)
            }
        };
    };
    let child = node.children.get_mut(*first)?;
    let removed = remove_at(Arc::make_mut(child), rest, group, key);
    if removed.is_some() && child.is_empty() {
        node.children.remove(*first);
    }
    removed
}

fn visit_matches<'a, K, V>(
    node: &'a Node<K, V>,
    levels: &[&str],
    wildcards_allowed: bool,
    visit: &mut impl FnMut(Match<'a, K, V>),
) {
    if wildcards_allowed && let Some(hash) = node.children.get("#") {
        // `#` matches the rest of the levels, and also the parent level itself:
        // "a/#" matches "a" [MQTT-4.7.1-2].
        report(hash, visit);
    }
    let Some((first, rest)) = levels.split_first() else {
        report(node, visit);
        return;
    };
    if wildcards_allowed && let Some(plus) = node.children.get("+") {
        visit_matches(plus, rest, true, visit);
    }
    if let Some(exact) = node.children.get(*first) {
        visit_matches(exact, rest, true, visit);
    }
}

fn report<'a, K, V>(node: &'a Node<K, V>, visit: &mut impl FnMut(Match<'a, K, V>)) {
    for (key, value) in &node.subscribers {
        visit(Match::Single(key, value));
    }
    for (group, members) in &node.groups {
        visit(Match::Shared { group, members });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::topic;
    use proptest::prelude::*;

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::try_from(s).unwrap()
    }

    fn name(s: &str) -> TopicName {
        TopicName::try_from(s).unwrap()
    }

    /// (filter as written, key) of every match, sorted, shared groups as "$share/g/…".
    fn matching(tree: &SubscriptionTree<u8, String>, topic: &str) -> Vec<(String, u8)> {
        let mut out = Vec::new();
        tree.for_each_match(&name(topic), |m| match m {
            Match::Single(k, v) => out.push((v.clone(), *k)),
            Match::Shared { members, .. } => {
                out.extend(members.iter().map(|(k, v)| (v.clone(), *k)));
            }
        });
        out.sort();
        out
    }

    #[test]
    fn hash_matches_the_parent_level_and_everything_below() {
        let mut tree = SubscriptionTree::default();
        tree.insert(&filter("a/#"), 1, "a/#".to_string());
        assert_eq!(matching(&tree, "a"), vec![("a/#".into(), 1)]);
        assert_eq!(matching(&tree, "a/b/c"), vec![("a/#".into(), 1)]);
        assert!(matching(&tree, "b").is_empty());
    }

    #[test]
    fn first_level_wildcards_do_not_match_dollar_topics() {
        let mut tree = SubscriptionTree::default();
        tree.insert(&filter("#"), 1, "#".to_string());
        tree.insert(&filter("+/broker"), 2, "+/broker".to_string());
        tree.insert(&filter("$SYS/#"), 3, "$SYS/#".to_string());
        assert_eq!(matching(&tree, "$SYS/broker"), vec![("$SYS/#".into(), 3)]);
    }

    #[test]
    fn a_clone_is_a_snapshot_that_later_changes_do_not_touch() {
        let mut tree = SubscriptionTree::default();
        tree.insert(&filter("a/b"), 1, "a/b".to_string());
        let snapshot = tree.clone();
        tree.insert(&filter("a/+"), 2, "a/+".to_string());
        tree.remove(&filter("a/b"), &1);
        assert_eq!(matching(&snapshot, "a/b"), vec![("a/b".into(), 1)]);
        assert_eq!(matching(&tree, "a/b"), vec![("a/+".into(), 2)]);
    }

    #[test]
    fn resubscribing_replaces_and_removing_prunes() {
        let mut tree = SubscriptionTree::default();
        assert_eq!(tree.insert(&filter("a/+"), 1, "x".to_string()), None);
        assert_eq!(
            tree.insert(&filter("a/+"), 1, "y".to_string()),
            Some("x".to_string())
        );
        assert_eq!(tree.len(), 1);
        assert_eq!(tree.remove(&filter("a/+"), &1), Some("y".to_string()));
        assert!(tree.is_empty());
        assert!(tree.root.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn each_share_group_is_reported_once_with_all_its_members() {
        let mut tree = SubscriptionTree::default();
        tree.insert(&filter("$share/g/a/+"), 1, String::new());
        tree.insert(&filter("$share/g/a/+"), 2, String::new());
        tree.insert(&filter("$share/h/a/+"), 3, String::new());
        let mut groups = Vec::new();
        tree.for_each_match(&name("a/b"), |m| {
            if let Match::Shared { group, members } = m {
                groups.push((group.to_string(), members.len()));
            }
        });
        groups.sort();
        assert_eq!(groups, vec![("g".to_string(), 2), ("h".to_string(), 1)]);
    }

    // Small alphabets so that random filters and names often collide.
    fn level() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "", "$x"]).prop_map(String::from)
    }

    fn arb_name() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..4)
            .prop_map(|l| l.join("/"))
            // An empty topic name is invalid [MQTT-4.7.3-1].
            .prop_filter("non-empty", |n| !n.is_empty())
    }

    fn arb_filter() -> impl Strategy<Value = String> {
        let level = prop_oneof![level(), Just("+".to_string())];
        (
            prop::collection::vec(level, 1..4),
            any::<bool>(),
            prop_oneof![Just(None), Just(Some("g")), Just(Some("h"))],
        )
            .prop_map(|(levels, hash, group)| {
                let mut f = levels.join("/");
                if hash {
                    f.push_str("/#");
                } else if f.is_empty() {
                    // An empty filter is invalid [MQTT-4.7.3-1].
                    f.push('#');
                }
                match group {
                    Some(g) => format!("$share/{g}/{f}"),
                    None => f,
                }
            })
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(String, u8),
        Remove(String, u8),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (arb_filter(), 0u8..4).prop_map(|(f, k)| Op::Insert(f, k)),
            (arb_filter(), 0u8..4).prop_map(|(f, k)| Op::Remove(f, k)),
        ]
    }

    proptest! {
        /// The tree answers like a naive list of (filter, key) tested one by one with
        /// `topic::matches`, after any sequence of subscribes and unsubscribes.
        #[test]
        fn tree_matches_like_a_naive_list(
            ops in prop::collection::vec(arb_op(), 0..40),
            names in prop::collection::vec(arb_name(), 1..6),
        ) {
            let mut tree = SubscriptionTree::default();
            let mut model: Vec<(String, u8)> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(f, k) => {
                        let existed = model.contains(&(f.clone(), k));
                        let old = tree.insert(&filter(&f), k, f.clone());
                        prop_assert_eq!(old.is_some(), existed);
                        if !existed {
                            model.push((f, k));
                        }
                    }
                    Op::Remove(f, k) => {
                        let existed = model.contains(&(f.clone(), k));
                        prop_assert_eq!(tree.remove(&filter(&f), &k).is_some(), existed);
                        model.retain(|e| e != &(f.clone(), k));
                    }
                }
                prop_assert_eq!(tree.len(), model.len());
            }
            for n in &names {
                let mut expected: Vec<(String, u8)> = model
                    .iter()
                    .filter(|(f, _)| filter(f).matches(&name(n)))
                    .cloned()
                    .collect();
                expected.sort();
                prop_assert_eq!(matching(&tree, n), expected, "topic {}", n);
                prop_assert_eq!(
                    topic::matches("#", n),
                    !n.starts_with('$'),
                    "the model's own $-rule"
                );
            }
        }
    }
}
