//! The spool's writer thread: the only code that writes segment files and the cursor.
//! It takes everything queued since its last round in one go (group commit: one write,
//! and under `fsync: always` one `fdatasync`, for all the appenders waiting), opens a
//! new segment where the state marked one, deletes the segments the state gave up, and
//! writes the cursor when it is due. Blocking IO lives here, off the tokio workers.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::Shared;
use super::cursor::{self, Cursor};
use super::segment;
use super::state::Pending;
use crate::storage::{SyncSchedule, sync_dir};

/// What the writer has done, for appenders waiting on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Progress {
    /// Records below this are in their file (the page cache: they survive a crash of
    /// the process).
    pub(super) written: u64,
    /// ... and synced (they survive a power cut).
    pub(super) synced: u64,
    /// No sequence number below this can be handed out again after a restart.
    pub(super) floor: u64,
    /// The writer has stopped: closed, or failed (the state says which).
    pub(super) stopped: bool,
}

/// What one round did, for the counters.
#[derive(Debug, Default)]
struct Round {
    bytes: u64,
    syncs: u64,
}

#[derive(Debug)]
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) dir: PathBuf,
    pub(super) current: Option<(u64, File)>,
    pub(super) sync: SyncSchedule,
    /// How long a moved cursor may wait before it is written.
    pub(super) cursor_every: Duration,
    pub(super) last_cursor: Instant,
    /// The directory's lock: released after the last flush, before the writer says it
    /// stopped (so a spool opened once `close` returned finds it free).
    pub(super) lock: Option<File>,
}

impl Writer {
    pub(super) fn run(mut self) {
        let mut batch = Pending::default();
        loop {
            let (deletions, cursor, closing) = {
                let mut st = self.shared.lock();
                loop {
                    let now = Instant::now();
                    let (cursor, cursor_at) =
                        st.cursor_due(now, self.cursor_every, self.last_cursor);
                    if !st.pending.is_empty()
                        || !st.deletions.is_empty()
                        || st.closing
                        || cursor.is_some()
                        || self.sync.due(now)
                    {
                        std::mem::swap(&mut batch, &mut st.pending);
                        break (std::mem::take(&mut st.deletions), cursor, st.closing);
                    }
                    let deadline = [self.sync.deadline(), cursor_at]
                        .into_iter()
                        .flatten()
                        .min();
                    st = match deadline {
                        Some(at) => {
                            let wait = at.saturating_duration_since(now);
                            match self.shared.wake_writer.wait_timeout(st, wait) {
                                Ok((st, _)) => st,
                                Err(poisoned) => poisoned.into_inner().0,
                            }
                        }
                        None => self
                            .shared
                            .wake_writer
                            .wait(st)
                            .unwrap_or_else(PoisonError::into_inner),
                    };
                }
            };
            let outcome = self.round(&batch, &deletions, cursor, closing);
            let written_end = batch.last_seq().map(|seq| seq + 1);
            batch.clear();
            let progress = {
                let mut st = self.shared.lock();
                match outcome {
                    Ok(round) => {
                        st.stats.bytes_written += round.bytes;
                        st.stats.syncs += round.syncs;
                        let end = written_end.unwrap_or(st.written);
                        st.written_through(end, !self.sync.is_dirty());
                        if let Some(cursor) = cursor {
                            st.persisted = cursor;
                        }
                    }
                    Err(e) => {
                        crate::observe::warn(format_args!(
                            "fieldgate spool: writing {} failed, the spool stops: {e}",
                            self.dir.display()
                        ));
                        st.failed = Some(Arc::new(e));
                    }
                }
                Progress {
                    written: st.written,
                    synced: st.synced,
                    floor: st.persisted.floor,
                    stopped: closing || st.failed.is_some(),
                }
            };
            if progress.stopped {
                self.current = None;
                self.lock = None;
            }
            self.shared.progress.send_replace(progress);
            if progress.stopped {
                // A consumer waiting for records learns that none will come.
                self.shared.new_records.notify_one();
                return;
            }
        }
    }

    fn round(
        &mut self,
        batch: &Pending,
        deletions: &[u64],
        cursor: Option<Cursor>,
        closing: bool,
    ) -> io::Result<Round> {
        let mut round = Round::default();
        let mut start = 0;
        let mut frame_start = 0;
        for mark in &batch.marks {
            if mark.new_segment {
                self.append(&batch.buf[start..frame_start], &mut round)?;
                self.roll(mark.seq, &mut round)?;
                start = frame_start;
            }
            frame_start = mark.end;
        }
        self.append(&batch.buf[start..], &mut round)?;
        let now = Instant::now();
        let policy = self.sync.policy();
        if self.sync.due(now) || (closing && self.sync.is_dirty() && policy.syncs()) {
            self.sync_current(&mut round)?;
        }
        for &first in deletions {
            if self.current.as_ref().is_some_and(|(f, _)| *f == first) {
                self.current = None;
            }
            match fs::remove_file(segment::path(&self.dir, first)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        if let Some(cursor) = cursor {
            round.bytes += cursor::store(&self.dir, cursor, policy.syncs())?;
            if policy.syncs() {
                round.syncs += 2;
            }
            self.last_cursor = now;
        }
        Ok(round)
    }

    fn append(&mut self, bytes: &[u8], round: &mut Round) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let Some((_, file)) = &mut self.current else {
            // The state marks the first record of every segment; this would be a bug.
            return Err(io::Error::other("spool: frames for no open segment"));
        };
        file.write_all(bytes)?;
        round.bytes += bytes.len() as u64;
        self.sync.wrote();
        Ok(())
    }

    fn sync_current(&mut self, round: &mut Round) -> io::Result<()> {
        if let Some((_, file)) = &self.current {
            file.sync_data()?;
            round.syncs += 1;
        }
        self.sync.synced(Instant::now());
        Ok(())
    }

    /// Closes the current segment (synced, unless the policy leaves that to the
    /// system) and starts the one named `first`.
    fn roll(&mut self, first: u64, round: &mut Round) -> io::Result<()> {
        let policy = self.sync.policy();
        if policy.syncs() && self.sync.is_dirty() {
            self.sync_current(round)?;
        }
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(segment::path(&self.dir, first))?;
        file.write_all(&segment::header())?;
        round.bytes += segment::HEADER_LEN;
        self.sync.wrote();
        if policy.syncs() {
            // The new name must reach the disk, or a power cut could lose the file.
            sync_dir(&self.dir)?;
            round.syncs += 1;
        }
        self.current = Some((first, file));
        Ok(())
    }
}
