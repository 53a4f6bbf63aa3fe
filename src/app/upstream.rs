//! The upstream path of `fieldgate run`: what goes to the upstream broker at QoS 1/2
//! (telemetry, messages forwarded from the LAN) goes through the spool, and a pump task
//! publishes the spool's records and acknowledges each in the spool only after its
//! PUBACK (QoS 1) or PUBCOMP (QoS 2). QoS 0 goes straight to the client while the uplink
//! is up and is dropped (counted) while it is down. The path's counters are published,
//! retained, on `<prefix>/$SYS/spool`.
//!
//! It owns the wiring between the spool and the upstream client; the queue's rules are
//! `spool`'s, the protocol's `mqtt::client`'s.
//!
//! # Who resends
//!
//! The pump never rewinds the consumer while the process runs. A record handed to the
//! client is the client session's from then on: it keeps unacknowledged messages across
//! reconnects and sends them again (with DUP when the broker kept our session, as new
//! messages when it did not), in their original order and before anything newer. If the
//! pump also rewound, every reconnect would put the in-flight records on the wire twice.
//! What the client never confirmed is still in the spool (not acknowledged), so after a
//! restart of the process the consumer starts from it again: that is the one replay.
//!
//! # Forwarded LAN messages
//!
//! With a `from: local` rule the gateway's local client keeps a persistent session on
//! its own broker and acknowledges (PUBACK/PUBREC) an inbound QoS 1/2 message only once
//! its copies are in the spool as durably as the spool's mode promises
//! (`ClientConfig::manual_acks`, in the order received). The broker journals what a
//! persistent session is owed before it answers the LAN publisher (when
//! `broker.persistence` is on), so a message the LAN publisher saw acknowledged is, at
//! any moment, in the broker's journal or in the spool; a `kill -9` in between makes
//! the broker send it to the gateway again after the restart (a duplicate at most).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{message, topic};
use crate::mqtt::client::{ClientError, Delivery, DeliveryError, Handle};
use crate::mqtt::packet::{Publish, QoS};
use crate::mqtt::session::client::InboundAck;
use crate::spool::{Consumer, Enqueued, Recovery, Spool, SpoolConfig, SpoolError, SpoolStats};

/// Records handed to the client and not yet acknowledged. Enough to keep any broker's
/// receive maximum busy (the client's session sends within the broker's window and
/// holds the rest, so the link never idles for want of a record), small enough that
/// the client's own queue (1,000) keeps room for availability messages.
const PUMP_WINDOW: usize = 256;

/// The pump wakes for acknowledgements when this many of the oldest records in flight
/// have their outcome (or all, when fewer are in flight): one wake-up per batch of
/// PUBACKs instead of one per message, while the window still has room to keep the link
/// busy.
const ACK_BATCH: usize = 32;

/// How often the counters are looked at; they are published when they changed.
const STATUS_TICK: Duration = Duration::from_secs(1);
/// Upstream gets the counters at most this often (brokers in the cloud may bill per
/// message); the local broker within a second of a change.
const STATUS_UPSTREAM_EVERY: Duration = Duration::from_secs(10);

/// How long shutdown waits for the messages in flight to be acknowledged before it
/// leaves them to the next start (they are still in the spool: sent again then).
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// What the upstream path counts besides the spool's own counters.
#[derive(Debug, Default)]
struct Counters {
    qos0_dropped: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    connected: AtomicBool,
    /// Warnings said once (a stopped spool would otherwise say it per message).
    warned_stopped: AtomicBool,
    warned_full: AtomicBool,
}

/// The upstream path's counters: the spool's and the path's own. Cheap to take; what the
/// status topic publishes (and what metrics can read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamStats {
    pub spool: SpoolStats,
    /// QoS 0 messages dropped because the uplink was down.
    pub qos0_dropped_offline: u64,
    /// Messages the upstream broker refused (a PUBACK/PUBREC error code, or too large
    /// for it): taken out of the spool, not retried.
    pub refused: u64,
    /// Messages the spool could not take for another reason than being full (a write
    /// error stopped it; a message MQTT cannot carry).
    pub failed: u64,
    pub connected: bool,
    /// What opening the spool found.
    pub recovery: Recovery,
}

impl UpstreamStats {
    /// The retained status payload.
    fn json(&self) -> String {
        let s = &self.spool;
        serde_json::json!({
            "connected": self.connected,
            "enqueued": s.enqueued,
            "delivered": s.delivered,
            "dropped": {
                "full": s.dropped_full,
                "corrupt": s.dropped_corrupt,
                "qos0_offline": self.qos0_dropped_offline,
                "refused": self.refused,
            },
            "rejected": s.rejected,
            "failed": self.failed,
            "pending": s.pending,
            "disk_bytes": s.disk_bytes,
            "memory_bytes": s.memory_bytes,
            "segments": s.segments,
            "bytes_written": s.bytes_written,
            "syncs": s.syncs,
            "recovered": {
                "records": self.recovery.records,
                "truncated_bytes": self.recovery.truncated_bytes,
                "corrupt_segments": self.recovery.corrupt_segments,
                "lost_records": self.recovery.lost_records,
            },
        })
        .to_string()
    }
}

/// The producers' side of the upstream path: cheap to clone, one per task.
#[derive(Debug, Clone)]
pub(super) struct UpstreamPath {
    handle: Handle,
    spool: Spool,
    link: watch::Receiver<bool>,
    counters: Arc<Counters>,
    /// QoS 0 deliveries, checked in order by [`count_qos0`].
    qos0: mpsc::Sender<Delivery>,
}

/// The running parts, owned by the gateway.
#[derive(Debug)]
pub(super) struct Running {
    pub(super) path: UpstreamPath,
    recovery: Recovery,
    drain: watch::Sender<bool>,
    pump: tokio::task::JoinHandle<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Why the upstream path could not start.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{0}")]
    Spool(#[from] SpoolError),
    #[error("opening the spool: {0}")]
    Join(String),
}

/// Opens the spool (reading what it holds, on a blocking thread), logs what recovery
/// found and starts the pump and the QoS 0 counter. The status task starts with
/// [`Running::start_status`], once the local client exists. The sender is for the
/// upstream client's event loop: whether the client is connected (see [`Link`]).
pub(super) async fn start(
    config: SpoolConfig,
    handle: Handle,
) -> Result<(Running, Link), UpstreamError> {
    let dir = config.dir.clone();
    let (spool, consumer, recovery) = tokio::task::spawn_blocking(move || Spool::open(config))
        .await
        .map_err(|e| UpstreamError::Join(e.to_string()))??;
    log_recovery(&dir, &recovery);
    let counters = Arc::new(Counters::default());
    let (link_tx, link) = watch::channel(false);
    let (drain, drain_rx) = watch::channel(false);
    let (qos0, qos0_rx) = mpsc::channel(1024);
    let pump = tokio::spawn(pump(Pump {
        consumer,
        handle: handle.clone(),
        link: link.clone(),
        drain: drain_rx,
        counters: Arc::clone(&counters),
    }));
    let counting = tokio::spawn(count_qos0(qos0_rx, Arc::clone(&counters)));
    let running = Running {
        path: UpstreamPath {
            handle,
            spool,
            link,
            counters,
            qos0,
        },
        recovery,
        drain,
        pump,
        tasks: vec![counting],
    };
    Ok((running, Link(link_tx)))
}

/// Tells the upstream path whether the upstream client is connected.
#[derive(Debug)]
pub(super) struct Link(watch::Sender<bool>);

impl Link {
    pub(super) fn set(&self, connected: bool) {
        // Only a change wakes the pump (a client that cannot connect reports every try).
        self.0
            .send_if_modified(|up| std::mem::replace(up, connected) != connected);
    }
}

fn log_recovery(dir: &std::path::Path, r: &Recovery) {
    let mut line = format!(
        "fieldgate run: spool {}: {} messages to send ({} bytes in {} segments)",
        dir.display(),
        r.records,
        r.bytes,
        r.segments
    );
    if r.truncated_bytes > 0 {
        line.push_str(&format!(
            "; cut {} bytes of a torn last write",
            r.truncated_bytes
        ));
    }
    if r.corrupt_segments > 0 || r.lost_records > 0 {
        line.push_str(&format!(
            "; {} damaged files, up to {} messages lost",
            r.corrupt_segments, r.lost_records
        ));
    }
    crate::observe::warn(format_args!("{line}"));
}

impl Running {
    pub(super) fn stats(&self) -> UpstreamStats {
        self.path.stats(&self.recovery)
    }

    /// Publishes the counters on `<prefix>/$SYS/spool`: retained on the local broker
    /// within a second of a change, and upstream (QoS 0, while connected) at most every
    /// 10 s.
    pub(super) fn start_status(&mut self, prefix: &str, local: Handle) {
        let Ok(status) = topic(&format!("{prefix}/$SYS/spool")) else {
            return;
        };
        let path = self.path.clone();
        let recovery = self.recovery.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(STATUS_TICK);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut local_last = None;
            let mut upstream_last = None;
            let mut upstream_at: Option<tokio::time::Instant> = None;
            loop {
                ticks.tick().await;
                let stats = path.stats(&recovery);
                if local_last.as_ref() != Some(&stats) {
                    let payload = stats.json();
                    let _ = local
                        .enqueue(message(status.clone(), payload, QoS::AtLeastOnce, true))
                        .await;
                    local_last = Some(stats.clone());
                }
                let due = upstream_at.is_none_or(|at| at.elapsed() >= STATUS_UPSTREAM_EVERY);
                if stats.connected && due && upstream_last.as_ref() != Some(&stats) {
                    // Straight to the client: an old status is worth nothing later, so
                    // it does not go through the spool.
                    let _ = path
                        .handle
                        .enqueue(message(status.clone(), stats.json(), QoS::AtMostOnce, true))
                        .await;
                    upstream_last = Some(stats);
                    upstream_at = Some(tokio::time::Instant::now());
                }
            }
        }));
    }

    /// Stops taking records, waits a little for those in flight to be acknowledged,
    /// stops the tasks and closes the spool (what is queued is written and synced).
    pub(super) async fn shutdown(self) {
        self.drain.send_replace(true);
        let mut pump = self.pump;
        if tokio::time::timeout(DRAIN_WAIT, &mut pump).await.is_err() {
            pump.abort();
        }
        for task in &self.tasks {
            task.abort();
        }
        self.path.spool.close().await;
    }
}

impl UpstreamPath {
    pub(super) fn handle(&self) -> &Handle {
        &self.handle
    }

    fn stats(&self, recovery: &Recovery) -> UpstreamStats {
        let c = &self.counters;
        UpstreamStats {
            spool: self.spool.stats(),
            qos0_dropped_offline: c.qos0_dropped.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            connected: c.connected.load(Ordering::Relaxed),
            recovery: recovery.clone(),
        }
    }

    /// Telemetry: QoS 1/2 into the spool, returning once the record is as durable as
    /// the spool's mode promises (so a reading counts as taken only then); QoS 0
    /// straight to the client, or dropped and counted while the uplink is down.
    pub(super) async fn publish(&self, message: Publish) {
        if message.qos == QoS::AtMostOnce {
            self.publish_qos0(message).await;
            return;
        }
        if let Err(e) = self.spool.append(message).await {
            self.failed(&e);
        }
    }

    /// A forwarded message: QoS 0 as in [`publish`](Self::publish); QoS 1/2 taken by
    /// the spool in order, returned for the caller to wait on. `Err` when the spool has
    /// stopped (or closed): the caller must not acknowledge what it forwards, so that
    /// its source sends it again after a restart.
    async fn forward(&self, message: Publish) -> Result<Option<Enqueued>, ()> {
        if message.qos == QoS::AtMostOnce {
            self.publish_qos0(message).await;
            return Ok(None);
        }
        match self.spool.enqueue(message).await {
            Ok(enqueued) => Ok(Some(enqueued)),
            Err(e) => {
                self.failed(&e);
                match e {
                    SpoolError::Stopped { .. } | SpoolError::Closed => Err(()),
                    _ => Ok(None),
                }
            }
        }
    }

    async fn publish_qos0(&self, message: Publish) {
        if !*self.link.borrow() {
            self.counters.qos0_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.handle.enqueue(message).await {
            // The link may have gone since it was checked: the delivery says.
            Ok(delivery) => {
                let _ = self.qos0.send(delivery).await;
            }
            Err(_) => {
                self.counters.qos0_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts (and says once) why the spool did not take a message. Full and too-large
    /// are the spool's own `rejected` count.
    fn failed(&self, e: &SpoolError) {
        match e {
            SpoolError::Full { .. } | SpoolError::TooLarge { .. } => {
                if !self.counters.warned_full.swap(true, Ordering::Relaxed) {
                    crate::observe::warn(format_args!(
                        "fieldgate run: upstream: {e}; counted in {}",
                        "`rejected` on <prefix>/$SYS/spool (said once)"
                    ));
                }
            }
            SpoolError::Closed => {}
            e => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                if !self.counters.warned_stopped.swap(true, Ordering::Relaxed) {
                    crate::observe::warn(format_args!(
                        "fieldgate run: upstream: {e} (said once; counted in `failed` on <prefix>/$SYS/spool)"
                    ));
                }
            }
        }
    }
}

/// Waits for each QoS 0 delivery (they resolve in order, as soon as the client has
/// written or refused them) and counts those refused for want of a connection.
async fn count_qos0(mut deliveries: mpsc::Receiver<Delivery>, counters: Arc<Counters>) {
    while let Some(delivery) = deliveries.recv().await {
        match delivery.await {
            Err(DeliveryError::NotAccepted(ClientError::NotConnected)) => {
                counters.qos0_dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(DeliveryError::Refused(_)) => {
                counters.refused.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

struct Pump {
    consumer: Consumer,
    handle: Handle,
    link: watch::Receiver<bool>,
    drain: watch::Receiver<bool>,
    counters: Arc<Counters>,
}

/// Takes the spool's records in order, hands them to the upstream client (at most
/// [`PUMP_WINDOW`] unacknowledged), and acknowledges each in the spool once the client
/// reports its PUBACK/PUBCOMP. Tells the spool whether the uplink is up. See the module
/// doc for why it never rewinds.
///
/// It takes nothing while the uplink is down: the backlog stays the spool's, where
/// `on_full` and the counters apply to it (what the client already had when the link
/// went, at most a window, stays the client's and is sent after the reconnect, even if
/// `drop_oldest` meanwhile dropped and counted its segment).
async fn pump(mut p: Pump) {
    // Oldest first: the client completes them mostly in order, and slots free from the
    // oldest on (a later one done first waits a moment for its ack here).
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let mut draining = false;
    let mut read_failures: u32 = 0;
    let mut online = *p.link.borrow_and_update();
    p.counters.connected.store(online, Ordering::Relaxed);
    p.consumer.set_online(online);
    loop {
        if draining && inflight.is_empty() {
            return;
        }
        let taking = online && !draining && inflight.len() < PUMP_WINDOW;
        tokio::select! {
            biased;
            () = acked(&mut inflight) => {
                // Every outcome there is from the oldest on, without waiting. (Waking
                // per batch, and taking records in batches below, took the drain of a
                // backlog from 0.73x of the rate mosquitto takes a fresh stream from our
                // client to about 0.8-0.9x.)
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                while let Some(oldest) = inflight.front_mut() {
                    let outcome = match &mut oldest.outcome {
                        Outcome::Done(outcome) => outcome.clone(),
                        Outcome::Waiting(delivery) => {
                            let std::task::Poll::Ready(outcome) =
                                std::pin::Pin::new(delivery).poll(&mut cx)
                            else {
                                break;
                            };
                            outcome
                        }
                    };
                    let seq = oldest.seq;
                    inflight.pop_front();
                    if !p.settle(seq, outcome) {
                        return;
                    }
                }
            }
            changed = p.link.changed() => {
                if changed.is_err() {
                    return;
                }
                online = *p.link.borrow_and_update();
                p.counters.connected.store(online, Ordering::Relaxed);
                p.consumer.set_online(online);
            }
            changed = p.drain.changed() => {
                draining = changed.is_err() || *p.drain.borrow_and_update();
            }
            record = p.consumer.next(), if taking => {
                let mut record = record;
                // This one, then what is ready behind it up to the window, without
                // waiting for more to be appended.
                loop {
                    match record {
                        Ok(taken) => {
                            read_failures = 0;
                            match p.handle.enqueue(taken.publish).await {
                                Ok(delivery) => inflight.push_back(InFlight {
                                    seq: taken.seq,
                                    outcome: Outcome::Waiting(delivery),
                                }),
                                // The client has stopped: the record stays in the spool.
                                Err(_) => return,
                            }
                        }
                        Err(SpoolError::Closed | SpoolError::Stopped { .. }) => draining = true,
                        Err(e) => {
                            // A segment could not be read (IO): say so, retry with a
                            // growing pause rather than spin on a failing disk.
                            read_failures = read_failures.saturating_add(1);
                            if read_failures == 1 {
                                crate::observe::warn(format_args!("fieldgate run: upstream: {e}"));
                            }
                            let pause = Duration::from_millis(100)
                                .saturating_mul(read_failures.min(100));
                            tokio::time::sleep(pause).await;
                        }
                    }
                    if draining || inflight.len() >= PUMP_WINDOW || read_failures > 0 {
                        break;
                    }
                    record = match p.consumer.try_next().await {
                        Ok(Some(taken)) => Ok(taken),
                        Ok(None) => break,
                        Err(e) => Err(e),
                    };
                }
            }
        }
    }
}

impl Pump {
    /// Takes the oldest delivery's outcome: acknowledges its record in the spool (also
    /// when the broker refused it: retrying cannot help). False when the client has
    /// stopped (shutdown): what it had stays in the spool.
    fn settle(&self, seq: u64, outcome: Result<(), DeliveryError>) -> bool {
        match outcome {
            Ok(()) => {}
            // The broker refused it, or it can never go to this broker (too large,
            // retain not supported).
            Err(DeliveryError::Refused(reason)) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                crate::observe::warn(format_args!(
                    "fieldgate run: upstream refused message {seq}: {}",
                    reason.name_for(crate::mqtt::packet::PacketType::PubAck)
                ));
            }
            Err(DeliveryError::NotAccepted(ClientError::Session(e))) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                crate::observe::warn(format_args!(
                    "fieldgate run: upstream client did not take message {seq}: {e}"
                ));
            }
            Err(_) => return false,
        }
        self.consumer.ack(seq);
        true
    }
}

/// A record handed to the client, and what became of it.
struct InFlight {
    seq: u64,
    outcome: Outcome,
}

enum Outcome {
    Waiting(Delivery),
    /// Kept until the records before it are settled (a `Delivery` is polled to its
    /// end only once).
    Done(Result<(), DeliveryError>),
}

/// Resolves once the [`ACK_BATCH`]th oldest record in flight (or the newest, when fewer
/// are) and the oldest have their outcome; never when nothing is in flight.
///
/// # Cancel safety
/// Cancel safe: an outcome is stored in its entry as it arrives; nothing leaves the
/// queue here.
async fn acked(inflight: &mut VecDeque<InFlight>) {
    let Some(last) = inflight.len().checked_sub(1) else {
        return std::future::pending().await;
    };
    for i in [last.min(ACK_BATCH - 1), 0] {
        if let Some(entry) = inflight.get_mut(i)
            && let Outcome::Waiting(delivery) = &mut entry.outcome
        {
            let outcome = delivery.await;
            entry.outcome = Outcome::Done(outcome);
        }
    }
}

/// An inbound message's acknowledgement, held until the spool has its copies.
#[derive(Debug)]
pub(super) struct PendingAck {
    pub(super) ack: InboundAck,
    pub(super) copies: Vec<Enqueued>,
    /// A copy could not be taken (the spool stopped): never acknowledge, so that the
    /// broker sends it again after a restart.
    pub(super) hold: bool,
}

/// The other end of [`spawn_acker`].
pub(super) type Acks = mpsc::Sender<PendingAck>;

/// Acknowledges inbound messages on `handle`, in the order they came, each once its
/// copies are as durable as the spool's mode promises. The channel's room is the local
/// client's receive maximum (the broker sends no more unacknowledged messages than
/// that), so the event loop never waits on it.
pub(super) fn spawn_acker(handle: Handle, room: usize) -> (Acks, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<PendingAck>(room.max(1));
    let task = tokio::spawn(async move {
        while let Some(pending) = rx.recv().await {
            let mut safe = !pending.hold;
            for copy in pending.copies {
                if copy.durable().await.is_err() {
                    safe = false;
                }
            }
            if safe && handle.ack(pending.ack).await.is_err() {
                return;
            }
        }
    });
    (tx, task)
}

impl UpstreamPath {
    /// Forwards `copies` of one inbound message; the spool's records for the caller to
    /// wait on before it acknowledges the message, and whether it must not.
    pub(super) async fn forward_all(&self, copies: Vec<Publish>) -> (Vec<Enqueued>, bool) {
        let mut taken = Vec::new();
        let mut hold = false;
        for copy in copies {
            match self.forward(copy).await {
                Ok(Some(enqueued)) => taken.push(enqueued),
                Ok(None) => {}
                Err(()) => hold = true,
            }
        }
        (taken, hold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_payload_names_every_counter() {
        let stats = UpstreamStats {
            spool: SpoolStats {
                enqueued: 5,
                delivered: 3,
                dropped_full: 1,
                rejected: 2,
                pending: 1,
                ..SpoolStats::default()
            },
            qos0_dropped_offline: 4,
            refused: 0,
            failed: 0,
            connected: true,
            recovery: Recovery::default(),
        };
        let json: serde_json::Value = serde_json::from_str(&stats.json()).unwrap();
        assert_eq!(json["enqueued"], 5);
        assert_eq!(json["delivered"], 3);
        assert_eq!(json["dropped"]["full"], 1);
        assert_eq!(json["dropped"]["qos0_offline"], 4);
        assert_eq!(json["rejected"], 2);
        assert_eq!(json["pending"], 1);
        assert_eq!(json["connected"], true);
        assert_eq!(json["recovered"]["records"], 0);
    }
}
