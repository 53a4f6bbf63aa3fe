//! The spool: the upstream path's queue of outgoing QoS 1/2 messages, kept in an
//! append-only segment log in the state directory so that what the gateway accepted
//! reaches the upstream broker across network cuts, broker restarts and a `kill -9`.
//! It owns the files, the bounds and the order; it must not do MQTT networking: a
//! consumer task takes records, publishes them, and acknowledges them here after
//! PUBACK (QoS 1) or PUBCOMP (QoS 2).
//!
//! # On disk
//!
//! `<dir>/<first seq, 20 digits>.seg`: segments. An 8-byte header (`FGSPOOL`, format
//! version 1), then frames `length (u32 LE) | CRC-32 (u32 LE) | body`, body
//! `seq (u64 LE) | PUBLISH (u32 LE length + its MQTT 5.0 encoding: topic, QoS, retain,
//! v5 properties, payload)`. Sequence numbers increase within and across segments (gaps
//! are numbers that were done before they had to be written). A new segment starts when
//! the current one would pass `segment_bytes`. `<dir>/cursor`: one frame with the ack
//! cursor (every record below it is done) and a reserved sequence floor, replaced
//! atomically (`cursor.tmp`, sync, rename, directory sync).
//!
//! Segments are only appended to and deleted whole, never rewritten (flash wears by
//! erase blocks): a segment goes once every record in it is done and a newer one exists.
//! Recovery cuts a torn tail off the last segment (nothing before it is lost), stops
//! reading an older segment at a damaged frame (what followed is counted lost), and
//! takes a missing or damaged cursor as "replay everything" (duplicates, never loss).
//!
//! # Guarantees
//!
//! `append` resolves once its record is as safe as the mode promises:
//! - `durability: disk`, `fsync: always`: written and `fdatasync`ed (concurrent
//!   appenders share one sync: group commit). Survives a power cut.
//! - `fsync: interval`: written to the file (survives a crash of the process, `kill -9`);
//!   synced within `fsync_interval`, so a power cut loses at most that much.
//! - `fsync: never`: written to the file; the system syncs when it likes.
//! - `durability: offline`: while the consumer is online, has no disk backlog and
//!   memory holds less than `memory_bytes`, records stay only in memory and `append`
//!   resolves at once: a crash loses them (the price of not writing flash while the
//!   uplink is healthy). Otherwise (offline, backlogged, or memory full) memory is
//!   written out in order and the record goes to disk as above.
//!
//! Records are handed out in sequence order and leave only when acknowledged (or
//! dropped by `on_full: drop_oldest`, counted). Only the cursor is saved: records
//! acknowledged out of order above it, and acknowledgements of the last second
//! (`fsync_interval` under `interval`), are sent again after a restart: duplicates,
//! never loss. The spool treats every record alike; whether QoS 0 messages go through
//! it is the caller's choice.

mod acks;
mod consumer;
mod cursor;
mod record;
mod recover;
mod segment;
mod state;
mod writer;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::mqtt::codec::EncodeError;
use crate::mqtt::packet::Publish;
use crate::storage::{Fsync, SyncSchedule};

pub use consumer::Consumer;
pub use cursor::CursorState;
pub use record::Record;

use state::{Blocked, State};
use writer::{Progress, Writer};

/// Whether records wait on disk or, while the uplink keeps up, in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every record is written before `append` resolves.
    Disk,
    /// Records are written only while the consumer is offline or behind.
    Offline,
}

/// What a full spool does with one more record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// Delete the oldest whole segment(s), even if not acknowledged (counted in
    /// `dropped_full`): fresh telemetry matters more than old.
    DropOldest,
    /// Refuse the new record with [`SpoolError::Full`] (counted in `rejected`).
    RejectNew,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub durability: Durability,
    /// Segment files together (headers and frames) stay at or below this.
    pub max_bytes: u64,
    /// A segment is closed once the next record would take it past this.
    pub segment_bytes: u64,
    /// Offline mode: memory-only records before they go to disk. Both modes: how much
    /// of what is on disk is also kept in memory for the consumer.
    pub memory_bytes: u64,
    pub on_full: OnFull,
    pub fsync: Fsync,
}

impl SpoolConfig {
    pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
    pub const DEFAULT_SEGMENT_BYTES: u64 = 16 << 20;
    pub const DEFAULT_MEMORY_BYTES: u64 = 1 << 20;
    /// Smaller segments would spend more on headers and directory syncs than on records.
    pub const MIN_SEGMENT_BYTES: u64 = 4 << 10;

    /// The defaults: on disk, 64 MiB in 16 MiB segments, oldest dropped when full,
    /// synced every second.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SpoolConfig {
            dir: dir.into(),
            durability: Durability::Disk,
            max_bytes: Self::DEFAULT_MAX_BYTES,
            segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
            memory_bytes: Self::DEFAULT_MEMORY_BYTES,
            on_full: OnFull::DropOldest,
            fsync: Fsync::Interval(Duration::from_secs(1)),
        }
    }

    /// Why these sizes cannot work, if they cannot: the setting to change and why.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.segment_bytes < Self::MIN_SEGMENT_BYTES {
            return Some((
                "segment_bytes",
                format!(
                    "{} bytes is below the minimum of {} (4KiB)",
                    self.segment_bytes,
                    Self::MIN_SEGMENT_BYTES
                ),
            ));
        }
        // A full spool frees space a whole segment at a time: the bound must hold the
        // segment being written and at least one more.
        if self.max_bytes < self.segment_bytes.saturating_mul(2) {
            return Some((
                "max_bytes",
                format!(
                    "{} bytes must be at least twice segment_bytes ({} bytes)",
                    self.max_bytes, self.segment_bytes
                ),
            ));
        }
        None
    }
}

/// Why the spool did not take or give a record, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Opening or reading the directory failed: check the path and its permissions.
    #[error("spool {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A segment from a newer fieldgate: upgrade, or move the directory aside.
    #[error("spool {path} has format version {version}, newer than this fieldgate reads")]
    Format { path: PathBuf, version: u8 },
    /// Another spool holds the directory: another fieldgate with the same state
    /// directory is running.
    #[error("spool {path} is in use by another process (its lock file is held)")]
    Locked { path: PathBuf },
    #[error("spool settings: {0}")]
    Config(String),
    /// `on_full: reject_new` and no room: retry after the uplink drained some.
    #[error("the spool is full ({max_bytes} bytes) and refuses new messages (on_full: reject_new)")]
    Full { max_bytes: u64 },
    /// Larger than the whole spool: it can never be stored.
    #[error("a message of {size} bytes cannot fit in a spool of {max_bytes} bytes")]
    TooLarge { size: u64, max_bytes: u64 },
    /// Not a message MQTT can carry: give up on it.
    #[error("the message cannot be stored: {0}")]
    Unencodable(#[from] EncodeError),
    /// A write failed (disk full, I/O error): nothing more is taken until the spool is
    /// opened again, which recovers what reached the disk.
    #[error("the spool stopped after a write error: {source}")]
    Stopped {
        #[source]
        source: Arc<io::Error>,
    },
    #[error("the spool is closed")]
    Closed,
}

/// Counters since the spool was opened (and gauges: `pending`, `disk_bytes`,
/// `memory_bytes`, `segments`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records `append` accepted.
    pub enqueued: u64,
    /// Records acknowledged by the consumer, each counted once.
    pub delivered: u64,
    /// Records not yet acknowledged that `drop_oldest` deleted with their segment.
    pub dropped_full: u64,
    /// Records that could not be read back (damaged files, found at open or on replay).
    pub dropped_corrupt: u64,
    /// Appends refused: `reject_new` with a full spool, or a record larger than it.
    pub rejected: u64,
    /// Records accepted (or recovered) and not yet done.
    pub pending: u64,
    /// Segment bytes on disk, including those queued for the writer.
    pub disk_bytes: u64,
    /// Bytes of records held only in memory (offline mode).
    pub memory_bytes: u64,
    pub segments: u64,
    /// Bytes written to segment and cursor files.
    pub bytes_written: u64,
    /// `fdatasync`/`fsync` calls on files and the directory.
    pub syncs: u64,
}

/// What opening found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    /// Records not acknowledged: the consumer gets them first, in order.
    pub records: u64,
    pub bytes: u64,
    /// Bytes of a torn last frame cut off the last segment.
    pub truncated_bytes: u64,
    /// Older segments damaged partway, or files that are not segments.
    pub corrupt_segments: usize,
    /// Records after damage in an older segment that were not acknowledged (at most:
    /// numbers there may have been done already).
    pub lost_records: u64,
    pub cursor: CursorState,
    /// The number the next append gets.
    pub next_seq: u64,
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            segments: 0,
            records: 0,
            bytes: 0,
            truncated_bytes: 0,
            corrupt_segments: 0,
            lost_records: 0,
            cursor: CursorState::Missing,
            next_seq: 0,
        }
    }
}

/// What the handles, the consumer and the writer thread share.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// The writer waits on it for work.
    wake_writer: Condvar,
    /// The consumer waits on it for records (one consumer: `notify_one` keeps a permit,
    /// so a record appended between its check and its wait is not missed).
    new_records: Notify,
    progress: watch::Sender<Progress>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something did, the counters may be
        // off but the files are not, so carrying on beats taking the gateway down.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stop_reason(&self) -> SpoolError {
        match &self.lock().failed {
            Some(e) => SpoolError::Stopped {
                source: Arc::clone(e),
            },
            None => SpoolError::Closed,
        }
    }
}

/// Held by every handle: when the last goes, the writer flushes and ends.
#[derive(Debug)]
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.lock().close();
        self.0.wake_writer.notify_one();
    }
}

/// The producer side: cheap to clone, one per task that accepts messages.
#[derive(Debug, Clone)]
pub struct Spool {
    owner: Arc<Owner>,
}

impl Spool {
    /// Opens (or creates) the spool in `config.dir`, recovers what it holds and starts
    /// its writer thread. Blocking: it reads every segment (call it before serving, or
    /// from `spawn_blocking`).
    pub fn open(config: SpoolConfig) -> Result<(Spool, Consumer, Recovery), SpoolError> {
        if let Some((key, problem)) = config.problem() {
            return Err(SpoolError::Config(format!("{key}: {problem}")));
        }
        let opened = recover::open(&config)?;
        let next_seq = opened.state.next_seq;
        let (progress, _) = watch::channel(Progress {
            written: next_seq,
            synced: next_seq,
            floor: opened.state.persisted.floor,
            stopped: false,
        });
        let shared = Arc::new(Shared {
            state: Mutex::new(opened.state),
            wake_writer: Condvar::new(),
            new_records: Notify::new(),
            progress,
        });
        let now = Instant::now();
        let writer = Writer {
            shared: Arc::clone(&shared),
            dir: config.dir.clone(),
            current: opened.current,
            sync: SyncSchedule::new(config.fsync, now),
            cursor_every: match config.fsync {
                Fsync::Interval(every) => every,
                Fsync::Always | Fsync::Never => Duration::from_secs(1),
            },
            last_cursor: now,
            lock: Some(opened.lock),
        };
        std::thread::Builder::new()
            .name("fieldgate-spool".into())
            .spawn(move || writer.run())
            .map_err(|source| SpoolError::Io {
                path: config.dir.clone(),
                source,
            })?;
        let owner = Arc::new(Owner(shared));
        let spool = Spool {
            owner: Arc::clone(&owner),
        };
        Ok((spool, Consumer::new(owner), opened.recovery))
    }

    fn shared(&self) -> &Shared {
        &self.owner.0
    }

    /// Appends `publish` and resolves once it is as durable as the mode promises (see
    /// the module's Guarantees); returns its sequence number. Waits while the writer is
    /// more than 8 MiB behind. The same as [`enqueue`](Self::enqueue) then
    /// [`Enqueued::durable`].
    ///
    /// # Cancel safety
    /// Once the record is taken, cancelling only stops the wait: the record stays in the
    /// spool and will be delivered.
    pub async fn append(&self, publish: Publish) -> Result<u64, SpoolError> {
        self.enqueue(publish).await?.durable().await
    }

    /// Takes `publish` (it has its sequence number and its place in the order once this
    /// returns) without waiting for it to be durable: [`Enqueued::durable`] does that.
    /// This lets one task take many records in order and wait for them together, so
    /// that under `fsync: always` they share syncs. Waits only while the writer is more
    /// than 8 MiB behind.
    ///
    /// # Cancel safety
    /// If cancelled, the record was not taken.
    pub async fn enqueue(&self, publish: Publish) -> Result<Enqueued, SpoolError> {
        let publish = record::outgoing(publish);
        let size = record::frame_len(&publish)?;
        let shared = self.shared();
        let (placed, always) = loop {
            let blocked = {
                let mut st = shared.lock();
                st.check_open()?;
                match st.blocked() {
                    Some(blocked) => blocked,
                    None => break (st.append(publish, size)?, st.config.fsync == Fsync::Always),
                }
            };
            shared.wake_writer.notify_one();
            let mut progress = shared.progress.subscribe();
            let _ = progress
                .wait_for(|p| {
                    p.stopped
                        || match blocked {
                            Blocked::Written(end) => p.written >= end,
                            Blocked::Floor(seq) => p.floor > seq,
                        }
                })
                .await;
        };
        shared.new_records.notify_one();
        if placed.on_disk {
            shared.wake_writer.notify_one();
        }
        Ok(Enqueued {
            spool: self.clone(),
            seq: placed.seq,
            on_disk: placed.on_disk,
            always,
        })
    }

    pub fn stats(&self) -> SpoolStats {
        self.shared().lock().stats()
    }

    /// Writes what is queued and what only memory holds, syncs it (unless `fsync:
    /// never`), saves the cursor and stops the writer. Later appends fail with [`SpoolError::Closed`]. Dropping every
    /// handle does the same without waiting.
    ///
    /// # Cancel safety
    /// Cancel safe: the spool closes anyway; only the wait is dropped.
    pub async fn close(&self) {
        let shared = self.shared();
        shared.lock().close();
        shared.wake_writer.notify_one();
        shared.new_records.notify_one();
        let mut progress = shared.progress.subscribe();
        let _ = progress.wait_for(|p| p.stopped).await;
    }
}

/// A record the spool has taken (see [`Spool::enqueue`]), not yet known to be as durable
/// as the mode promises.
#[derive(Debug)]
#[must_use = "a taken record is delivered anyway; `durable` says when it is safe"]
pub struct Enqueued {
    spool: Spool,
    seq: u64,
    on_disk: bool,
    always: bool,
}

impl Enqueued {
    /// Its sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Resolves once the record is as durable as the mode promises (see the module's
    /// Guarantees) and returns its sequence number; fails if the spool stopped or closed
    /// before that.
    ///
    /// # Cancel safety
    /// Cancel safe: the record stays in the spool; only the wait is dropped.
    pub async fn durable(self) -> Result<u64, SpoolError> {
        if !self.on_disk {
            return Ok(self.seq);
        }
        let shared = self.spool.shared();
        let seq = self.seq;
        let always = self.always;
        let durable = |p: &Progress| {
            if always {
                p.synced > seq
            } else {
                p.written > seq
            }
        };
        let mut progress = shared.progress.subscribe();
        let reached = match progress.wait_for(|p| p.stopped || durable(p)).await {
            Ok(p) => durable(&p),
            Err(_) => false,
        };
        if reached {
            Ok(seq)
        } else {
            Err(shared.stop_reason())
        }
    }
}
