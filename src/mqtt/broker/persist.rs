//! Broker persistence: retained messages and persistent sessions (their subscriptions and
//! queued QoS 1/2 messages) in an append-only journal in the state directory, so they
//! survive a restart and a `kill -9`.
//!
//! One writer thread owns the file. Broker tasks send it records (a bounded channel: a
//! disk that cannot keep up slows publishers rather than growing memory); it appends them
//! in batches, syncs per the fsync policy (one `fdatasync` per batch: group commit), and
//! keeps a model of the live state from which it rewrites a compact journal once the file
//! has grown well past it (write to a temporary file, sync, rename). Recovery replays the
//! journal into the same model and stops at the first torn or corrupt record.
//!
//! Frames, the fsync policy and atomic rewrites come from `crate::storage` (shared with
//! the spool). Messages and subscriptions inside bodies are encoded with the MQTT 5.0
//! codec (a PUBLISH, a one-filter SUBSCRIBE), so there is one wire format to trust. This
//! module must not know about connections: the router and the session registry call it.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::oneshot;

use crate::mqtt::packet::{
    Packet, PacketId, Publish, QoS, Subscribe, SubscribeProperties, Subscription, SubscriptionId,
    SubscriptionOptions,
};
use crate::mqtt::session::server::{Message, Outgoing};
use crate::mqtt::string::MqttString;
use crate::mqtt::topic::{TopicFilter, TopicName};
use crate::storage::frame::{self, Fields, Frame, put_packet, put_str};
use crate::storage::{SyncSchedule, replace_file};

/// The fsync policy type lives in `storage`; the broker's users know it by this path.
pub use crate::storage::Fsync;

const JOURNAL: &str = "broker.journal";
const COMPACTING: &str = "broker.journal.tmp";
/// Records queued for the writer before senders wait. The channel allocates its slots up
/// front (about 100 bytes each), so this is also a fixed cost in memory: 4,096 slots are
/// 400 KB, and the writer takes them a batch at a time anyway.
const CHANNEL_BOUND: usize = 4096;

#[derive(Debug, Clone)]
pub struct PersistConfig {
    pub dir: PathBuf,
    pub fsync: Fsync,
    /// Rewrite the journal once it is this much larger than the live state.
    pub compact_slack: u64,
}

impl PersistConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PersistConfig {
            dir: dir.into(),
            fsync: Fsync::Interval(Duration::from_secs(1)),
            compact_slack: 16 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("state directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// A queued delivery to a persistent session, as restored.
#[derive(Debug, Clone)]
pub struct RecoveredSession {
    pub client_id: Arc<str>,
    pub expiry: u32,
    pub subscriptions: Vec<(TopicFilter, SubscriptionOptions, Option<SubscriptionId>)>,
    pub queued: Vec<Outgoing>,
}

/// What the journal held at start.
#[derive(Debug, Default)]
pub struct Recovered {
    pub retained: Vec<Arc<Message>>,
    pub sessions: Vec<RecoveredSession>,
    /// Bytes of a torn or corrupt tail that were cut off.
    pub truncated: u64,
}

#[derive(Debug, Clone)]
enum Record {
    Message(Arc<Message>, u64),
    Retain(TopicName, Option<u64>),
    Session(Arc<str>, u32),
    SessionEnd(Arc<str>),
    Subscribe(
        Arc<str>,
        TopicFilter,
        SubscriptionOptions,
        Option<SubscriptionId>,
    ),
    Unsubscribe(Arc<str>, TopicFilter),
    Enqueue(Arc<str>, Queued),
    Finished(Arc<str>, u64),
}

#[derive(Debug, Clone, PartialEq)]
struct Queued {
    seq: u64,
    qos: QoS,
    retain: bool,
    ids: Vec<SubscriptionId>,
}

#[derive(Debug)]
enum Command {
    Record(Record),
    /// A record that refers to a stored message: the message is written first unless
    /// the journal has it already (one copy however many sessions queue it).
    WithMessage(Arc<Message>, u64, Record),
    /// Answer once everything sent before is written (and synced under `Fsync::Always`).
    Sync(oneshot::Sender<()>),
    /// Write, sync and close the file, then answer and end the thread.
    Close(oneshot::Sender<()>),
}

/// The handle the broker uses to record changes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Journal {
    tx: SyncSender<Command>,
    next_seq: Arc<AtomicU64>,
    fsync: Fsync,
}

impl Journal {
    /// Opens (or creates) the journal in `config.dir`, recovers its state, compacts it
    /// and starts the writer thread.
    pub fn open(config: &PersistConfig) -> Result<(Journal, Recovered), PersistError> {
        let io = |source| PersistError::Io {
            dir: config.dir.clone(),
            source,
        };
        fs::create_dir_all(&config.dir).map_err(io)?;
        let path = config.dir.join(JOURNAL);
        let (model, truncated) = match fs::read(&path) {
            Ok(bytes) => replay(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Model::default(), 0),
            Err(e) => return Err(io(e)),
        };
        let recovered = model.recovered(truncated);
        let file = rewrite(&config.dir, &model).map_err(io)?;
        let next_seq = Arc::new(AtomicU64::new(model.max_seq + 1));
        let (tx, rx) = std::sync::mpsc::sync_channel(CHANNEL_BOUND);
        let writer = Writer {
            file,
            dir: config.dir.clone(),
            model,
            sync: SyncSchedule::new(config.fsync, Instant::now()),
            compact_slack: config.compact_slack,
            written: 0,
        };
        std::thread::Builder::new()
            .name("fieldgate-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(io)?;
        Ok((
            Journal {
                tx,
                next_seq,
                fsync: config.fsync,
            },
            recovered,
        ))
    }

    /// A fresh sequence number for a message that may be journaled.
    pub fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    pub fn fsync(&self) -> Fsync {
        self.fsync
    }

    fn send(&self, record: Record) {
        self.send_command(Command::Record(record));
    }

    fn send_command(&self, command: Command) {
        match self.tx.try_send(command) {
            Ok(()) => {}
            // The writer is behind: wait for room (back-pressure on the publisher) rather
            // than drop an acknowledged message. Blocking a runtime worker briefly is the
            // lesser evil here; it only happens when the disk cannot keep up.
            Err(TrySendError::Full(command)) => {
                let _ = self.tx.send(command);
            }
            // The writer thread is gone (its error was logged): nothing more can be saved.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Sets `message` (numbered `seq`) as the retained message of its topic.
    pub fn retain(&self, message: &Arc<Message>, seq: u64) {
        let record = Record::Retain(message.topic.clone(), Some(seq));
        self.send_command(Command::WithMessage(Arc::clone(message), seq, record));
    }

    /// Clears the retained message of `topic`.
    pub fn clear_retained(&self, topic: &TopicName) {
        self.send(Record::Retain(topic.clone(), None));
    }

    pub fn session(&self, client_id: &Arc<str>, expiry: u32) {
        self.send(Record::Session(Arc::clone(client_id), expiry));
    }

    pub fn session_end(&self, client_id: &Arc<str>) {
        self.send(Record::SessionEnd(Arc::clone(client_id)));
    }

    pub fn subscribe(
        &self,
        client_id: &Arc<str>,
        filter: &TopicFilter,
        options: SubscriptionOptions,
        id: Option<SubscriptionId>,
    ) {
        self.send(Record::Subscribe(
            Arc::clone(client_id),
            filter.clone(),
            options,
            id,
        ));
    }

    pub fn unsubscribe(&self, client_id: &Arc<str>, filter: &TopicFilter) {
        self.send(Record::Unsubscribe(Arc::clone(client_id), filter.clone()));
    }

    /// A message (numbered `seq`) queued for a persistent session.
    pub fn enqueue(&self, client_id: &Arc<str>, seq: u64, outgoing: &Outgoing) {
        let record = Record::Enqueue(
            Arc::clone(client_id),
            Queued {
                seq,
                qos: outgoing.qos,
                retain: outgoing.retain,
                ids: outgoing.subscription_ids.clone(),
            },
        );
        self.send_command(Command::WithMessage(
            Arc::clone(&outgoing.message),
            seq,
            record,
        ));
    }

    /// The session is done with the message (acknowledged, or dropped).
    pub fn finished(&self, client_id: &Arc<str>, seq: u64) {
        self.send(Record::Finished(Arc::clone(client_id), seq));
    }

    /// Writes and syncs everything recorded so far and stops the writer (broker
    /// shutdown). Records sent later are lost.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send_async(Command::Close(tx)).await {
            let _ = rx.await;
        }
    }

    /// Sends a command from async code; false if the writer is gone. A full channel is
    /// waited on from a blocking thread, never a runtime worker; the usual case (room)
    /// costs no thread hop, which matters because every acknowledged message to a
    /// persistent session comes through here.
    async fn send_async(&self, command: Command) -> bool {
        match self.tx.try_send(command) {
            Ok(()) => true,
            Err(TrySendError::Disconnected(_)) => false,
            Err(TrySendError::Full(command)) => {
                let tx = self.tx.clone();
                matches!(
                    tokio::task::spawn_blocking(move || tx.send(command)).await,
                    Ok(Ok(()))
                )
            }
        }
    }

    /// Resolves once everything recorded so far is written, and synced when the policy
    /// is [`Fsync::Always`].
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future only drops the answer.
    pub async fn durable(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send_async(Command::Sync(tx)).await {
            let _ = rx.await;
        }
    }
}

/// The live state the journal describes.
#[derive(Debug, Default)]
struct Model {
    messages: HashMap<u64, (Arc<Message>, usize)>,
    retained: HashMap<TopicName, u64>,
    sessions: HashMap<Arc<str>, SessionModel>,
    max_seq: u64,
}

#[derive(Debug, Default)]
struct SessionModel {
    expiry: u32,
    subscriptions: HashMap<TopicFilter, (SubscriptionOptions, Option<SubscriptionId>)>,
    queue: BTreeMap<u64, Queued>,
}

impl Model {
    fn add_ref(&mut self, seq: u64) -> bool {
        match self.messages.get_mut(&seq) {
            Some((_, refs)) => {
                *refs += 1;
                true
            }
            None => false,
        }
    }

    fn release(&mut self, seq: u64) {
        if let Some((_, refs)) = self.messages.get_mut(&seq) {
            *refs -= 1;
            if *refs == 0 {
                self.messages.remove(&seq);
            }
        }
    }

    /// Applies a record; false if it changes nothing (a repeated message).
    fn apply(&mut self, record: &Record) -> bool {
        match record {
            Record::Message(message, seq) => {
                self.max_seq = self.max_seq.max(*seq);
                if self.messages.contains_key(seq) {
                    return false;
                }
                // Kept only while something refers to it; a message nobody keeps is
                // dropped at the next compaction.
                self.messages.insert(*seq, (Arc::clone(message), 0));
            }
            Record::Retain(topic, seq) => {
                if let Some(old) = self.retained.remove(topic) {
                    self.release(old);
                }
                if let Some(seq) = seq
                    && self.add_ref(*seq)
                {
                    self.retained.insert(topic.clone(), *seq);
                }
            }
            Record::Session(client, expiry) => {
                self.sessions.entry(Arc::clone(client)).or_default().expiry = *expiry;
            }
            Record::SessionEnd(client) => {
                if let Some(session) = self.sessions.remove(client) {
                    for seq in session.queue.keys() {
                        self.release(*seq);
                    }
                }
            }
            Record::Subscribe(client, filter, options, id) => {
                if let Some(session) = self.sessions.get_mut(client) {
                    session
                        .subscriptions
                        .insert(filter.clone(), (*options, *id));
                }
            }
            Record::Unsubscribe(client, filter) => {
                if let Some(session) = self.sessions.get_mut(client) {
                    session.subscriptions.remove(filter);
                }
            }
            Record::Enqueue(client, queued) => {
                if self.sessions.contains_key(client)
                    && self.add_ref(queued.seq)
                    && let Some(session) = self.sessions.get_mut(client)
                {
                    session.queue.insert(queued.seq, queued.clone());
                }
            }
            Record::Finished(client, seq) => {
                let removed = self
                    .sessions
                    .get_mut(client)
                    .and_then(|s| s.queue.remove(seq))
                    .is_some();
                if removed {
                    self.release(*seq);
                }
            }
        }
        true
    }

    /// Drops stored messages nothing refers to (left by records written before a crash).
    fn collect_garbage(&mut self) {
        self.messages.retain(|_, (_, refs)| *refs > 0);
    }

    fn recovered(&self, truncated: u64) -> Recovered {
        let message = |seq: &u64| self.messages.get(seq).map(|(m, _)| Arc::clone(m));
        let mut retained: Vec<Arc<Message>> = self.retained.values().filter_map(message).collect();
        retained.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
        let sessions = self
            .sessions
            .iter()
            .map(|(client, s)| RecoveredSession {
                client_id: Arc::clone(client),
                expiry: s.expiry,
                subscriptions: s
                    .subscriptions
                    .iter()
                    .map(|(f, (o, id))| (f.clone(), *o, *id))
                    .collect(),
                // In sequence order: the order they were published in.
                queued: s
                    .queue
                    .values()
                    .filter_map(|q| {
                        Some(Outgoing {
                            message: message(&q.seq)?,
                            qos: q.qos,
                            retain: q.retain,
                            subscription_ids: q.ids.clone(),
                        })
                    })
                    .collect(),
            })
            .collect();
        Recovered {
            retained,
            sessions,
            truncated,
        }
    }

    /// The records that rebuild this state, in an order replay accepts.
    fn records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        let mut seqs: Vec<&u64> = self.messages.keys().collect();
        seqs.sort();
        for seq in seqs {
            if let Some((m, _)) = self.messages.get(seq) {
                out.push(Record::Message(Arc::clone(m), *seq));
            }
        }
        for (topic, seq) in &self.retained {
            out.push(Record::Retain(topic.clone(), Some(*seq)));
        }
        for (client, s) in &self.sessions {
            out.push(Record::Session(Arc::clone(client), s.expiry));
            for (filter, (options, id)) in &s.subscriptions {
                out.push(Record::Subscribe(
                    Arc::clone(client),
                    filter.clone(),
                    *options,
                    *id,
                ));
            }
            for queued in s.queue.values() {
                out.push(Record::Enqueue(Arc::clone(client), queued.clone()));
            }
        }
        out
    }
}

/// Replays journal bytes; returns the state and how many trailing bytes were unusable.
fn replay(mut bytes: &[u8]) -> (Model, u64) {
    let mut model = Model::default();
    while !bytes.is_empty() {
        match read_frame(bytes) {
            Some((body, rest)) => {
                match decode_record(body) {
                    Some(record) => {
                        model.apply(&record);
                    }
                    // A frame with a good checksum but a body we cannot read: written by
                    // a newer version, or a bug. Stop here like for a torn tail.
                    None => break,
                }
                bytes = rest;
            }
            None => break,
        }
    }
    model.collect_garbage();
    (model, bytes.len() as u64)
}

fn read_frame(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    match frame::read(bytes) {
        Frame::Whole { body, len } => Some((body, &bytes[len..])),
        Frame::Incomplete { .. } | Frame::Corrupt => None,
    }
}

fn write_frame(out: &mut BytesMut, record: &Record) {
    frame::put_with(out, |body| encode_record(body, record));
}

/// Writes the model as a fresh journal next to the old one, syncs it and renames it
/// over the old one; returns the file to append to.
fn rewrite(dir: &Path, model: &Model) -> std::io::Result<File> {
    let mut buf = BytesMut::new();
    for record in model.records() {
        write_frame(&mut buf, &record);
    }
    replace_file(dir, JOURNAL, COMPACTING, &buf, true)?;
    OpenOptions::new().append(true).open(dir.join(JOURNAL))
}

struct Writer {
    file: File,
    dir: PathBuf,
    model: Model,
    sync: SyncSchedule,
    compact_slack: u64,
    /// Bytes appended since the last rewrite.
    written: u64,
}

impl Writer {
    fn run(mut self, rx: Receiver<Command>) {
        let mut buf = BytesMut::new();
        let mut waiters = Vec::new();
        let mut closing = None;
        while closing.is_none() {
            let timeout = self
                .sync
                .deadline()
                .map_or(Duration::from_secs(3600), |at| {
                    at.saturating_duration_since(Instant::now())
                });
            let first = match rx.recv_timeout(timeout) {
                Ok(command) => Some(command),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.file.sync_data();
                    return;
                }
            };
            // Group commit: everything already queued goes into this one write.
            for command in first.into_iter().chain(rx.try_iter().take(4096)) {
                match command {
                    Command::Record(record) => {
                        if self.model.apply(&record) {
                            write_frame(&mut buf, &record);
                        }
                    }
                    Command::WithMessage(message, seq, record) => {
                        let stored = Record::Message(message, seq);
                        if self.model.apply(&stored) {
                            write_frame(&mut buf, &stored);
                        }
                        if self.model.apply(&record) {
                            write_frame(&mut buf, &record);
                        }
                    }
                    Command::Sync(waiter) => waiters.push(waiter),
                    Command::Close(waiter) => {
                        closing = Some(waiter);
                        break;
                    }
                }
            }
            if let Err(e) = self.write(&mut buf, closing.is_some()) {
                crate::observe::warn(format_args!(
                    "fieldgate broker: journal write failed, persistence stops: {e}"
                ));
                return;
            }
            for waiter in waiters.drain(..) {
                let _ = waiter.send(());
            }
            if self.written > self.compact_slack
                && let Err(e) = self.compact()
            {
                crate::observe::warn(format_args!(
                    "fieldgate broker: journal compaction failed: {e}"
                ));
            }
        }
        if let Some(waiter) = closing {
            let _ = waiter.send(());
        }
    }

    /// Appends `buf` and syncs when the policy says so, or always when `closing`.
    fn write(&mut self, buf: &mut BytesMut, closing: bool) -> std::io::Result<()> {
        if !buf.is_empty() {
            self.file.write_all(buf)?;
            self.written += buf.len() as u64;
            buf.clear();
            self.sync.wrote();
        }
        let now = Instant::now();
        if closing || self.sync.due(now) {
            self.file.sync_data()?;
            self.sync.synced(now);
        }
        Ok(())
    }

    fn compact(&mut self) -> std::io::Result<()> {
        self.model.collect_garbage();
        self.file = rewrite(&self.dir, &self.model)?;
        self.written = 0;
        // The rewrite synced everything it holds.
        self.sync.synced(Instant::now());
        Ok(())
    }
}

// Record bodies: a kind byte, then fields. Strings: u16 length + UTF-8; blobs: u32
// length + bytes (an encoded PUBLISH or SUBSCRIBE).

const MESSAGE: u8 = 1;
const RETAIN: u8 = 2;
const SESSION: u8 = 3;
const SESSION_END: u8 = 4;
const SUBSCRIBE: u8 = 5;
const UNSUBSCRIBE: u8 = 6;
const ENQUEUE: u8 = 7;
const FINISHED: u8 = 8;

fn unix_millis(at: Instant) -> u64 {
    let now = Instant::now();
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let wall = if at >= now {
        wall + (at - now)
    } else {
        wall.saturating_sub(now - at)
    };
    u64::try_from(wall.as_millis()).unwrap_or(u64::MAX)
}

fn instant_from_unix_millis(millis: u64) -> Instant {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let at = Duration::from_millis(millis);
    let now = Instant::now();
    if at >= wall {
        now + (at - wall)
    } else {
        now.checked_sub(wall - at).unwrap_or(now)
    }
}

fn encode_record(out: &mut BytesMut, record: &Record) {
    match record {
        Record::Message(message, seq) => {
            out.put_u8(MESSAGE);
            out.put_u64_le(*seq);
            out.put_u64_le(message.expires_at.map_or(0, unix_millis));
            put_str(out, message.publisher.as_deref().unwrap_or(""));
            let publish = Publish {
                dup: false,
                qos: message.qos,
                retain: message.retain,
                topic: message.topic.clone(),
                packet_id: (message.qos != QoS::AtMostOnce).then_some(PacketId::MIN),
                payload: message.payload.clone(),
                properties: message.properties.clone(),
            };
            // Stored messages came through the same codec: they encode.
            let _ = put_packet(out, &Packet::Publish(publish));
        }
        Record::Retain(topic, seq) => {
            out.put_u8(RETAIN);
            put_str(out, topic.as_str());
            out.put_u64_le(seq.unwrap_or(0));
        }
        Record::Session(client, expiry) => {
            out.put_u8(SESSION);
            put_str(out, client);
            out.put_u32_le(*expiry);
        }
        Record::SessionEnd(client) => {
            out.put_u8(SESSION_END);
            put_str(out, client);
        }
        Record::Subscribe(client, filter, options, id) => {
            out.put_u8(SUBSCRIBE);
            put_str(out, client);
            let subscribe = Subscribe {
                packet_id: PacketId::MIN,
                subscriptions: vec![Subscription {
                    filter: filter.clone(),
                    options: *options,
                }],
                properties: SubscribeProperties {
                    subscription_identifier: *id,
                    user_properties: Vec::new(),
                },
            };
            let _ = put_packet(out, &Packet::Subscribe(subscribe));
        }
        Record::Unsubscribe(client, filter) => {
            out.put_u8(UNSUBSCRIBE);
            put_str(out, client);
            put_str(out, filter.as_str());
        }
        Record::Enqueue(client, queued) => {
            out.put_u8(ENQUEUE);
            put_str(out, client);
            out.put_u64_le(queued.seq);
            out.put_u8(queued.qos as u8);
            out.put_u8(u8::from(queued.retain));
            out.put_u16_le(queued.ids.len() as u16);
            for id in &queued.ids {
                out.put_u32_le(id.get());
            }
        }
        Record::Finished(client, seq) => {
            out.put_u8(FINISHED);
            put_str(out, client);
            out.put_u64_le(*seq);
        }
    }
}

fn read_client(b: &mut Fields) -> Option<Arc<str>> {
    b.string().map(Arc::from)
}

fn decode_record(body: &[u8]) -> Option<Record> {
    let mut b = Fields(Bytes::copy_from_slice(body));
    Some(match b.u8()? {
        MESSAGE => {
            let seq = b.u64()?;
            let expires = b.u64()?;
            let publisher = b.string()?;
            let Packet::Publish(publish) = b.packet()? else {
                return None;
            };
            let message = Message {
                topic: publish.topic,
                payload: publish.payload,
                qos: publish.qos,
                retain: publish.retain,
                properties: publish.properties,
                expires_at: (expires != 0).then(|| instant_from_unix_millis(expires)),
                publisher: (!publisher.is_empty()).then(|| Arc::from(publisher.as_str())),
                journal_seq: Some(seq),
            };
            Record::Message(Arc::new(message), seq)
        }
        RETAIN => {
            let topic = TopicName::try_from(b.string()?.as_str()).ok()?;
            let seq = b.u64()?;
            Record::Retain(topic, (seq != 0).then_some(seq))
        }
        SESSION => Record::Session(read_client(&mut b)?, b.u32()?),
        SESSION_END => Record::SessionEnd(read_client(&mut b)?),
        SUBSCRIBE => {
            let client = read_client(&mut b)?;
            let Packet::Subscribe(mut subscribe) = b.packet()? else {
                return None;
            };
            let subscription = subscribe.subscriptions.pop()?;
            Record::Subscribe(
                client,
                subscription.filter,
                subscription.options,
                subscribe.properties.subscription_identifier,
            )
        }
        UNSUBSCRIBE => {
            let client = read_client(&mut b)?;
            let filter = MqttString::try_from(b.string()?.as_str()).ok()?;
            Record::Unsubscribe(client, TopicFilter::new(filter).ok()?)
        }
        ENQUEUE => {
            let client = read_client(&mut b)?;
            let seq = b.u64()?;
            let qos = QoS::from_u8(b.u8()?)?;
            let retain = b.u8()? != 0;
            let n = b.u16()?;
            let mut ids = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                ids.push(SubscriptionId::new(b.u32()?)?);
            }
            Record::Enqueue(
                client,
                Queued {
                    seq,
                    qos,
                    retain,
                    ids,
                },
            )
        }
        FINISHED => Record::Finished(read_client(&mut b)?, b.u64()?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::packet::PublishProperties;

    fn message(topic: &str, payload: &'static str) -> Arc<Message> {
        Arc::new(Message {
            topic: TopicName::try_from(topic).unwrap(),
            payload: Bytes::from_static(payload.as_bytes()),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: PublishProperties::default(),
            expires_at: None,
            publisher: Some(Arc::from("pub")),
            journal_seq: None,
        })
    }

    fn frames(records: &[Record]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        for r in records {
            write_frame(&mut buf, r);
        }
        buf.to_vec()
    }

    #[test]
    fn replay_keeps_queued_messages_until_finished_and_retained_until_cleared() {
        let client: Arc<str> = Arc::from("c");
        let q = |seq| Queued {
            seq,
            qos: QoS::AtLeastOnce,
            retain: false,
            ids: vec![],
        };
        let bytes = frames(&[
            Record::Session(Arc::clone(&client), 60),
            Record::Subscribe(
                Arc::clone(&client),
                TopicFilter::try_from("a/#").unwrap(),
                SubscriptionOptions::default(),
                SubscriptionId::new(7),
            ),
            Record::Message(message("a/1", "one"), 1),
            Record::Enqueue(Arc::clone(&client), q(1)),
            Record::Message(message("a/2", "two"), 2),
            Record::Enqueue(Arc::clone(&client), q(2)),
            Record::Finished(Arc::clone(&client), 1),
            Record::Message(message("r", "kept"), 3),
            Record::Retain(TopicName::try_from("r").unwrap(), Some(3)),
        ]);
        let (model, truncated) = replay(&bytes);
        assert_eq!(truncated, 0);
        let recovered = model.recovered(0);
        assert_eq!(recovered.retained.len(), 1);
        assert_eq!(recovered.retained[0].payload, "kept");
        let session = &recovered.sessions[0];
        assert_eq!(session.expiry, 60);
        assert_eq!(session.subscriptions[0].2, SubscriptionId::new(7));
        let queued: Vec<_> = session
            .queued
            .iter()
            .map(|o| o.message.payload.clone())
            .collect();
        assert_eq!(queued, vec![Bytes::from_static(b"two")]);
        assert_eq!(model.messages.len(), 2, "the finished message is gone");
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_cut_and_what_precedes_it_survives() {
        let client: Arc<str> = Arc::from("c");
        let good = frames(&[Record::Session(Arc::clone(&client), 5)]);
        let mut torn = good.clone();
        torn.extend_from_slice(&frames(&[Record::SessionEnd(Arc::clone(&client))])[..5]);
        let (model, truncated) = replay(&torn);
        assert_eq!(truncated, 5);
        assert!(model.sessions.contains_key("c"));
        let mut corrupt = good.clone();
        let mut end = frames(&[Record::SessionEnd(client)]);
        let last = end.len() - 1;
        end[last] ^= 0xFF;
        corrupt.extend_from_slice(&end);
        let (model, truncated) = replay(&corrupt);
        assert_eq!(truncated, end.len() as u64);
        assert!(model.sessions.contains_key("c"));
    }

    #[test]
    fn compaction_writes_a_journal_that_replays_to_the_same_state() {
        let client: Arc<str> = Arc::from("c");
        let mut model = Model::default();
        for r in [
            Record::Session(Arc::clone(&client), 9),
            Record::Message(
                Arc::new(Message {
                    journal_seq: Some(4),
                    ..(*message("a", "x")).clone()
                }),
                4,
            ),
            Record::Enqueue(
                Arc::clone(&client),
                Queued {
                    seq: 4,
                    qos: QoS::ExactlyOnce,
                    retain: true,
                    ids: vec![SubscriptionId::new(3).unwrap()],
                },
            ),
        ] {
            model.apply(&r);
        }
        let mut buf = BytesMut::new();
        for r in model.records() {
            write_frame(&mut buf, &r);
        }
        let (again, _) = replay(&buf);
        let a = model.recovered(0);
        let b = again.recovered(0);
        assert_eq!(format!("{:?}", a.sessions), format!("{:?}", b.sessions));
        assert_eq!(again.max_seq, 4);
    }
}
