//! How the running gateway is doing, for the service manager: healthy while every one of
//! its tasks (devices, the clients' event loops, the spool's pump) is still running, and
//! a one-line summary for `systemctl status`. It decides nothing; `fieldgate run` pets
//! the watchdog only while this says healthy.

use super::Gateway;

impl Gateway {
    /// Every task that runs for the gateway's life (or the links' life, until a reload):
    /// the clients' event loops and the like, the devices, the metrics listener.
    fn tasks(&self) -> impl Iterator<Item = &tokio::task::JoinHandle<()>> {
        self.links
            .tasks
            .iter()
            .chain(self.links.devices.values())
            .chain(self.metrics_listener.as_ref().map(|(_, task)| task))
    }

    /// True while none of the gateway's tasks has ended (each runs for the gateway's life:
    /// one that ended panicked or lost its channel, and systemd should restart us).
    pub fn healthy(&self) -> bool {
        self.tasks().all(|task| !task.is_finished())
    }

    /// One line: the broker's addresses and how many tasks run.
    pub fn summary(&self) -> String {
        let broker = match self.broker_addrs() {
            [] => "no local broker".to_string(),
            addrs => format!(
                "broker on {}",
                addrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let running = self.tasks().filter(|t| !t.is_finished()).count();
        format!(
            "{broker}; {} devices; {running} of {} tasks running",
            self.links.devices.len(),
            self.tasks().count()
        )
    }
}

impl Gateway {
    /// Where `/metrics` and `/healthz` are served (port 0 resolved), if configured.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listener.as_ref().map(|(addr, _)| *addr)
    }

    /// Copies the broker's and the spool's figures into the metrics and publishes them,
    /// retained, on `<prefix>/status` (both brokers).
    pub async fn refresh(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut snapshot = crate::metrics::Snapshot::default();
        if let Some(broker) = &self.broker {
            let stats = broker.stats();
            snapshot.broker_connections = stats.clients_connected.load(Relaxed) as u64;
            snapshot.broker_messages_received = stats.publish_received.load(Relaxed);
            snapshot.broker_messages_sent = stats.publish_sent.load(Relaxed);
            snapshot.broker_messages_dropped = stats.publish_dropped.load(Relaxed);
        }
        if let Some(upstream) = self.upstream_stats() {
            snapshot.spool_pending = upstream.spool.pending;
            snapshot.spool_disk_bytes = upstream.spool.disk_bytes;
            snapshot.spool_enqueued = upstream.spool.enqueued;
            snapshot.spool_delivered = upstream.spool.delivered;
            snapshot.spool_dropped = upstream.spool.dropped_full;
            snapshot.spool_rejected = upstream.spool.rejected;
            snapshot.upstream_qos0_dropped = upstream.qos0_dropped_offline;
        }
        let metrics = &self.metrics;
        metrics.update(snapshot, self.healthy());
        let Ok(topic) = super::topic(&format!("{}/status", self.links.prefix)) else {
            return;
        };
        let payload = metrics.status_json(&self.summary());
        for client in self.links.outputs.handles() {
            let status = super::message(
                topic.clone(),
                payload.clone(),
                crate::mqtt::packet::QoS::AtLeastOnce,
                true,
            );
            let _ = client.enqueue(status).await;
        }
    }
}
