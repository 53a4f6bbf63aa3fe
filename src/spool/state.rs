//! The spool's shared state and the rules it keeps: where an appended record goes
//! (memory or disk), the bounds (`max_bytes` with `on_full`, `memory_bytes`), which
//! segment a record lands in, what acknowledgements free, and when the cursor is worth
//! writing. One mutex guards it; it is held for bookkeeping only, never across IO or an
//! `.await` (the writer thread does the IO with the lock released).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::acks::AckSet;
use super::cursor::{Cursor, RESERVE};
use super::record::{self, Record};
use super::segment;
use super::{Durability, OnFull, SpoolConfig, SpoolError, SpoolStats};
use crate::mqtt::packet::Publish;

/// Frames queued for the writer beyond which appenders wait for it: a disk that cannot
/// keep up slows producers instead of growing memory.
pub(super) const PENDING_LIMIT: usize = 8 << 20;

/// A record held in memory: the only copy (offline mode), or a cached copy of one on
/// disk, so a consumer that keeps up never reads the disk.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) seq: u64,
    pub(super) publish: Publish,
    /// Its frame's size, which is also what it counts against `memory_bytes`.
    pub(super) size: u64,
}

/// A segment as the state sees it, including frames the writer has not written yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SegmentMeta {
    /// Its name.
    pub(super) first: u64,
    /// One past its last record (`first` while it has none).
    pub(super) end: u64,
    /// Header and frames.
    pub(super) bytes: u64,
}

/// Frames for the writer, in sequence order.
#[derive(Debug, Default)]
pub(super) struct Pending {
    pub(super) buf: BytesMut,
    pub(super) marks: Vec<Mark>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Mark {
    pub(super) seq: u64,
    /// Where its frame ends in `buf`.
    pub(super) end: usize,
    /// It is the first record of a new segment (named by `seq`).
    pub(super) new_segment: bool,
}

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    pub(super) fn last_seq(&self) -> Option<u64> {
        self.marks.last().map(|m| m.seq)
    }

    pub(super) fn clear(&mut self) {
        self.buf.clear();
        self.marks.clear();
    }
}

/// Why an appender must wait before its record can be taken.
#[derive(Debug, Clone, Copy)]
pub(super) enum Blocked {
    /// Until the writer has written everything below this.
    Written(u64),
    /// Until a cursor reserving this sequence number is on disk.
    Floor(u64),
}

/// Where an appended record went.
#[derive(Debug, Clone, Copy)]
pub(super) struct Placed {
    pub(super) seq: u64,
    pub(super) on_disk: bool,
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) config: SpoolConfig,
    pub(super) next_seq: u64,
    pub(super) acks: AckSet,
    /// The most recent records, contiguous from `window_first` to `next_seq`.
    pub(super) window: VecDeque<Entry>,
    pub(super) window_first: u64,
    pub(super) window_bytes: u64,
    /// Bytes of records that exist only in memory (offline mode).
    pub(super) memory_only_bytes: u64,
    /// Records numbered below this went to disk (or are done); from it on they are only
    /// in memory. Memory-only records are always the newest: before anything goes to
    /// disk, they are spilled, in order.
    pub(super) disk_end: u64,
    /// Oldest first; the last is the one being appended to, unless `sealed`.
    pub(super) segments: VecDeque<SegmentMeta>,
    /// The last segment takes no more records (recovery found a file after it that is
    /// not a segment: records appended to it would sort after that file's name).
    pub(super) sealed: bool,
    pub(super) pending: Pending,
    /// Segments (by first seq) whose files the writer deletes after its next writes.
    pub(super) deletions: Vec<u64>,
    /// Records below this are in their segment file (set by the writer).
    pub(super) written: u64,
    /// ... and synced to the disk.
    pub(super) synced: u64,
    /// What the cursor file holds.
    pub(super) persisted: Cursor,
    pub(super) online: bool,
    pub(super) closing: bool,
    pub(super) failed: Option<Arc<io::Error>>,
    pub(super) stats: SpoolStats,
}

impl State {
    /// Refuses work once the writer failed or the spool closed.
    pub(super) fn check_open(&self) -> Result<(), SpoolError> {
        if let Some(e) = &self.failed {
            return Err(SpoolError::Stopped {
                source: Arc::clone(e),
            });
        }
        if self.closing {
            return Err(SpoolError::Closed);
        }
        Ok(())
    }

    pub(super) fn blocked(&self) -> Option<Blocked> {
        if self.pending.buf.len() > PENDING_LIMIT
            && let Some(last) = self.pending.last_seq()
        {
            return Some(Blocked::Written(last + 1));
        }
        (self.next_seq >= self.persisted.floor).then_some(Blocked::Floor(self.next_seq))
    }

    /// Takes a record (its frame being `size` bytes): into memory when the durability
    /// mode allows, else to the writer, after spilling what memory holds.
    pub(super) fn append(&mut self, publish: Publish, size: u64) -> Result<Placed, SpoolError> {
        let max_bytes = self.config.max_bytes;
        if size + segment::HEADER_LEN > max_bytes {
            self.stats.rejected += 1;
            return Err(SpoolError::TooLarge { size, max_bytes });
        }
        let seq = self.next_seq;
        let on_disk = !self.keeps_in_memory(size);
        if on_disk {
            let stored = self.spill().and_then(|()| self.store(seq, &publish, size));
            if let Err(e) = stored {
                self.stats.rejected += 1;
                return Err(e);
            }
            self.disk_end = seq + 1;
        } else {
            self.memory_only_bytes += size;
        }
        if self.window.is_empty() {
            self.window_first = seq;
        }
        self.window.push_back(Entry { seq, publish, size });
        self.window_bytes += size;
        self.next_seq += 1;
        self.stats.enqueued += 1;
        self.stats.pending += 1;
        self.trim();
        Ok(Placed { seq, on_disk })
    }

    /// Offline mode keeps a record in memory only while the consumer is online, has no
    /// disk backlog left, and memory has room.
    fn keeps_in_memory(&self, size: u64) -> bool {
        self.config.durability == Durability::Offline
            && self.online
            && self.acks.below() >= self.disk_end
            && self.memory_only_bytes + size <= self.config.memory_bytes
    }

    /// Writes every memory-only record to disk, oldest first. With `reject_new` and a
    /// full disk it stops at the first that does not fit; the rest stay in memory (they
    /// were accepted already) and new records are refused until they are out.
    pub(super) fn spill(&mut self) -> Result<(), SpoolError> {
        self.disk_end = self.disk_end.max(self.window_first);
        while self.disk_end < self.next_seq {
            let seq = self.disk_end;
            let Some(entry) = self.window.get((seq - self.window_first) as usize) else {
                break;
            };
            let (publish, size) = (entry.publish.clone(), entry.size);
            if !self.acks.is_done(seq) {
                self.store(seq, &publish, size)?;
            }
            self.memory_only_bytes = self.memory_only_bytes.saturating_sub(size);
            self.disk_end = seq + 1;
        }
        Ok(())
    }

    /// Queues record `seq` for its segment, making room first.
    fn store(&mut self, seq: u64, publish: &Publish, size: u64) -> Result<(), SpoolError> {
        self.make_room(size + segment::HEADER_LEN)?;
        let new_segment = match self.segments.back() {
            None => true,
            Some(_) if self.sealed => true,
            Some(s) => s.end > s.first && s.bytes + size > self.config.segment_bytes,
        };
        self.sealed = false;
        record::put_frame(&mut self.pending.buf, seq, publish)?;
        self.pending.marks.push(Mark {
            seq,
            end: self.pending.buf.len(),
            new_segment,
        });
        if new_segment {
            self.segments.push_back(SegmentMeta {
                first: seq,
                end: seq,
                bytes: segment::HEADER_LEN,
            });
            self.stats.disk_bytes += segment::HEADER_LEN;
        }
        if let Some(current) = self.segments.back_mut() {
            current.end = seq + 1;
            current.bytes += size;
        }
        self.stats.disk_bytes += size;
        Ok(())
    }

    /// Keeps the disk within `max_bytes` with `need` more bytes: `drop_oldest` deletes
    /// whole segments from the oldest on (counting the records in them that were not
    /// done), `reject_new` refuses.
    fn make_room(&mut self, need: u64) -> Result<(), SpoolError> {
        let max_bytes = self.config.max_bytes;
        while self.stats.disk_bytes + need > max_bytes {
            if self.config.on_full == OnFull::RejectNew {
                return Err(SpoolError::Full { max_bytes });
            }
            let Some(oldest) = self.segments.pop_front() else {
                break;
            };
            self.stats.disk_bytes = self.stats.disk_bytes.saturating_sub(oldest.bytes);
            let dropped = self.acks.mark(oldest.first..oldest.end);
            self.stats.dropped_full += dropped;
            self.stats.pending = self.stats.pending.saturating_sub(dropped);
            // The writer writes whatever of it is still queued, then deletes the file; a
            // later record starts a new segment.
            self.deletions.push(oldest.first);
            self.trim();
        }
        Ok(())
    }

    /// Marks `seq` acknowledged (a number it never handed out, or one done already,
    /// changes nothing). True when the writer has new work from it: a segment to delete,
    /// or a cursor that just fell behind (it then keeps its own timer; waking it on
    /// every acknowledgement would cost a context switch each).
    pub(super) fn ack(&mut self, seq: u64) -> bool {
        if seq >= self.next_seq {
            return false;
        }
        let was_unsaved = self.below_unsaved();
        let newly = self.acks.mark(seq..seq + 1);
        self.stats.delivered += newly;
        self.stats.pending = self.stats.pending.saturating_sub(newly);
        self.settle();
        !self.deletions.is_empty() || (!was_unsaved && self.below_unsaved())
    }

    /// Marks records that cannot be read back as done; returns how many were lost.
    pub(super) fn lose(&mut self, seqs: std::ops::Range<u64>) -> u64 {
        let lost = self.acks.mark(seqs);
        self.stats.dropped_corrupt += lost;
        self.stats.pending = self.stats.pending.saturating_sub(lost);
        self.settle();
        lost
    }

    /// After records became done: frees memory and queues fully done segments (never the
    /// last: it is still appended to, and deleting it would only churn the directory).
    fn settle(&mut self) {
        self.trim();
        while self.segments.len() > 1
            && let Some(oldest) = self.segments.front()
            && oldest.end <= self.acks.below()
        {
            self.stats.disk_bytes = self.stats.disk_bytes.saturating_sub(oldest.bytes);
            self.deletions.push(oldest.first);
            self.segments.pop_front();
        }
    }

    /// Drops done records from the front of the window, then cached copies of records
    /// already in their file while the window is over `memory_bytes`.
    pub(super) fn trim(&mut self) {
        while let Some(front) = self.window.front() {
            let done = front.seq < self.acks.below();
            let cached = front.seq < self.disk_end && front.seq < self.written;
            if !(done || (cached && self.window_bytes > self.config.memory_bytes)) {
                break;
            }
            if front.seq >= self.disk_end {
                self.memory_only_bytes = self.memory_only_bytes.saturating_sub(front.size);
            }
            self.window_bytes = self.window_bytes.saturating_sub(front.size);
            self.window.pop_front();
            self.window_first += 1;
        }
        if self.window.is_empty() {
            self.window_first = self.next_seq;
        }
    }

    /// The writer has written (and maybe synced) everything queued below `end`.
    pub(super) fn written_through(&mut self, end: u64, synced: bool) {
        self.written = self.written.max(end);
        if synced {
            self.synced = self.written;
        }
        self.trim();
    }

    /// Stops taking records; what only memory holds goes to disk first (with
    /// `reject_new` and a full disk, what does not fit is lost with the process).
    pub(super) fn close(&mut self) {
        if !self.closing && self.failed.is_none() {
            let _ = self.spill();
        }
        self.closing = true;
    }

    pub(super) fn set_online(&mut self, online: bool) {
        self.online = online;
        if !online && self.config.durability == Durability::Offline {
            // With `reject_new` and a full disk some stay in memory; the next append or
            // going offline again retries.
            let _ = self.spill();
        }
    }

    /// Whether the cursor file lags behind records on disk that are done.
    fn below_unsaved(&self) -> bool {
        self.acks.below().min(self.disk_end) > self.persisted.below
    }

    /// The cursor to write now, if any, and otherwise when one falls due. Sequence
    /// numbers are reserved half a `RESERVE` ahead, so appenders never wait for it in
    /// practice; a moved cursor waits for `every` (it only saves duplicates at restart,
    /// and every write costs the flash two syncs).
    pub(super) fn cursor_due(
        &self,
        now: Instant,
        every: Duration,
        last_write: Instant,
    ) -> (Option<Cursor>, Option<Instant>) {
        let reserve = self.next_seq + RESERVE / 2 > self.persisted.floor;
        let unsaved = self.below_unsaved();
        let at = last_write + every;
        if reserve || (unsaved && (self.closing || now >= at)) {
            let floor = if reserve {
                self.next_seq + RESERVE
            } else {
                self.persisted.floor
            };
            let cursor = Cursor {
                below: self.acks.below(),
                floor,
            };
            return (Some(cursor), None);
        }
        (None, unsaved.then_some(at))
    }

    /// The window's copy of record `seq`.
    pub(super) fn in_window(&self, seq: u64) -> Option<Record> {
        let entry = self
            .window
            .get(seq.checked_sub(self.window_first)? as usize)?;
        Some(Record {
            seq,
            publish: entry.publish.clone(),
        })
    }

    /// The segment holding `seq` and the number below which its records lie.
    pub(super) fn segment_of(&self, seq: u64) -> Option<(u64, u64)> {
        let i = self
            .segments
            .partition_point(|s| s.first <= seq)
            .checked_sub(1)?;
        let bound = self
            .segments
            .get(i + 1)
            .map_or(self.disk_end, |next| next.first);
        Some((self.segments.get(i)?.first, bound))
    }

    pub(super) fn stats(&self) -> SpoolStats {
        SpoolStats {
            memory_bytes: self.memory_only_bytes,
            segments: self.segments.len() as u64,
            ..self.stats
        }
    }
}
