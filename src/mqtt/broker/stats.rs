//! Broker-wide counters, updated with relaxed atomics on the hot paths and published as
//! `$SYS/broker/...` topics (Mosquitto's names, so existing dashboards work). This module
//! only counts and names; the broker decides when to publish.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crate::mqtt::broker::router::Routed;

#[derive(Debug)]
pub struct Stats {
    pub started: Instant,
    pub clients_connected: AtomicUsize,
    /// Sessions known, connected or not.
    pub sessions: AtomicUsize,
    pub subscriptions: AtomicUsize,
    pub retained: AtomicUsize,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub publish_received: AtomicU64,
    pub publish_sent: AtomicU64,
    /// Messages a mailbox refused (full, or QoS 0 for an offline client) or a session
    /// dropped (expired, too large for the client).
    pub publish_dropped: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub connections_refused: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            clients_connected: AtomicUsize::new(0),
            sessions: AtomicUsize::new(0),
            subscriptions: AtomicUsize::new(0),
            retained: AtomicUsize::new(0),
            messages_received: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            publish_received: AtomicU64::new(0),
            publish_sent: AtomicU64::new(0),
            publish_dropped: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
        }
    }
}

impl Stats {
    pub fn record_routed(&self, routed: &Routed) {
        if routed.dropped > 0 {
            self.publish_dropped
                .fetch_add(routed.dropped as u64, Ordering::Relaxed);
        }
    }

    /// `(topic, value)` for every `$SYS` figure, Mosquitto's names where they exist.
    pub fn sys_topics(&self, version: &str) -> Vec<(&'static str, String)> {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        let count = |a: &AtomicUsize| a.load(Ordering::Relaxed).to_string();
        let sessions = self.sessions.load(Ordering::Relaxed);
        let connected = self.clients_connected.load(Ordering::Relaxed);
        vec![
            ("$SYS/broker/version", format!("fieldgate {version}")),
            (
                "$SYS/broker/uptime",
                format!("{} seconds", self.started.elapsed().as_secs()),
            ),
            ("$SYS/broker/clients/connected", connected.to_string()),
            (
                "$SYS/broker/clients/disconnected",
                sessions.saturating_sub(connected).to_string(),
            ),
            ("$SYS/broker/clients/total", sessions.to_string()),
            (
                "$SYS/broker/subscriptions/count",
                count(&self.subscriptions),
            ),
            ("$SYS/broker/retained messages/count", count(&self.retained)),
            (
                "$SYS/broker/messages/received",
                load(&self.messages_received),
            ),
            ("$SYS/broker/messages/sent", load(&self.messages_sent)),
            (
                "$SYS/broker/publish/messages/received",
                load(&self.publish_received),
            ),
            (
                "$SYS/broker/publish/messages/sent",
                load(&self.publish_sent),
            ),
            (
                "$SYS/broker/publish/messages/dropped",
                load(&self.publish_dropped),
            ),
            ("$SYS/broker/bytes/received", load(&self.bytes_received)),
            ("$SYS/broker/bytes/sent", load(&self.bytes_sent)),
            (
                "$SYS/broker/connections/refused",
                load(&self.connections_refused),
            ),
        ]
    }
}
