//! The consumer side: the upstream task takes records in sequence order (from memory
//! when it keeps up, from the segments otherwise, read in batches on a blocking thread),
//! acknowledges them after PUBACK/PUBCOMP, and rewinds on reconnect so what was in
//! flight is sent again.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::record::{self, Record};
use super::segment::{self, FrameReader, Header, Next};
use super::{Owner, SpoolError, SpoolStats};

/// Stop a disk read after this many bytes or records (bounds the read-ahead).
const BATCH_BYTES: usize = 1 << 20;
const BATCH_RECORDS: usize = 4096;

/// Takes records out of the spool: one per spool, owned by the task that publishes them
/// upstream.
#[derive(Debug)]
pub struct Consumer {
    owner: Arc<Owner>,
    /// The next number to hand out; done ones are skipped.
    read_seq: u64,
    /// Records read from disk, from `read_seq` on.
    readahead: VecDeque<Record>,
    /// Where the last disk read stopped.
    reader: Option<SegmentReader>,
}

#[derive(Debug)]
struct SegmentReader {
    first: u64,
    frames: FrameReader,
    last_seq: Option<u64>,
    /// Stopped at damage: nothing more comes from this segment.
    broken: bool,
}

#[derive(Debug, Default)]
struct Batch {
    records: Vec<Record>,
    /// Good frames whose message this version cannot decode.
    undecodable: Vec<u64>,
    /// The segment has nothing more to give (its end, or damage).
    finished: bool,
    reader: Option<SegmentReader>,
}

enum Step {
    Wait,
    Read {
        path: PathBuf,
        first: u64,
        bound: u64,
    },
}

impl Consumer {
    pub(super) fn new(owner: Arc<Owner>) -> Self {
        Consumer {
            owner,
            read_seq: 0,
            readahead: VecDeque::new(),
            reader: None,
        }
    }

    /// The next record not yet handed out (since the last [`rewind`](Self::rewind)), in
    /// sequence order; waits for one to be appended.
    ///
    /// # Cancel safety
    /// Cancel safe: a record is taken only when this returns it. A disk read in progress
    /// is repeated by the next call.
    pub async fn next(&mut self) -> Result<Record, SpoolError> {
        loop {
            if let Some(record) = self.take(true).await? {
                return Ok(record);
            }
        }
    }

    /// Like [`next`](Self::next) (reading the disk if the record is there), but `None`
    /// instead of waiting when everything appended so far has been handed out.
    ///
    /// # Cancel safety
    /// Cancel safe, like `next`.
    pub async fn try_next(&mut self) -> Result<Option<Record>, SpoolError> {
        self.take(false).await
    }

    async fn take(&mut self, wait: bool) -> Result<Option<Record>, SpoolError> {
        let shared = Arc::clone(&self.owner.0);
        loop {
            let step = {
                let mut st = shared.lock();
                st.check_open()?;
                self.read_seq = st.acks.next_not_done(self.read_seq);
                let seq = self.read_seq;
                if seq >= st.next_seq {
                    Step::Wait
                } else if let Some(record) = st.in_window(seq) {
                    self.read_seq += 1;
                    return Ok(Some(record));
                } else {
                    while self.readahead.front().is_some_and(|r| r.seq < seq) {
                        self.readahead.pop_front();
                    }
                    match self.readahead.front().map(|r| r.seq) {
                        Some(found) if found == seq => {
                            if let Some(record) = self.readahead.pop_front() {
                                self.read_seq += 1;
                                return Ok(Some(record));
                            }
                            continue;
                        }
                        // The file skips it: it cannot be read back.
                        Some(found) => {
                            lost(&mut st, seq..found);
                            continue;
                        }
                        None => match st.segment_of(seq) {
                            Some((first, bound)) => Step::Read {
                                path: segment::path(&st.config.dir, first),
                                first,
                                bound,
                            },
                            None => {
                                lost(&mut st, seq..seq + 1);
                                continue;
                            }
                        },
                    }
                }
            };
            let (path, first, bound) = match step {
                Step::Wait if wait => {
                    shared.new_records.notified().await;
                    continue;
                }
                Step::Wait => return Ok(None),
                Step::Read { path, first, bound } => (path, first, bound),
            };
            let from = self.read_seq;
            let reader = self
                .reader
                .take()
                .filter(|r| r.first == first && r.last_seq.is_none_or(|last| last < from));
            let reading = path.clone();
            let batch =
                tokio::task::spawn_blocking(move || read_batch(reader, &reading, first, from))
                    .await
                    .map_err(io::Error::other)
                    .and_then(|read| read)
                    .map_err(|source| SpoolError::Io { path, source })?;
            self.reader = batch.reader;
            let mut st = shared.lock();
            for seq in batch.undecodable {
                lost(&mut st, seq..seq + 1);
            }
            self.readahead.extend(
                batch
                    .records
                    .into_iter()
                    .filter(|r| r.seq >= self.read_seq && !st.acks.is_done(r.seq)),
            );
            if self.readahead.is_empty() && batch.finished {
                // Everything from here to where memory takes over should have been in
                // this segment.
                let end = bound.min(st.window_first).max(self.read_seq + 1);
                lost(&mut st, self.read_seq..end);
            }
        }
    }

    /// Marks record `seq` delivered (after PUBACK for QoS 1, PUBCOMP for QoS 2), in any
    /// order. It is never handed out again, and its segment goes once all of it is done.
    pub fn ack(&self, seq: u64) {
        let shared = &self.owner.0;
        let wake = shared.lock().ack(seq);
        if wake {
            shared.wake_writer.notify_one();
        }
    }

    /// Starts again from the oldest record not acknowledged: after a reconnect, what was
    /// in flight is handed out again (for QoS 1 the broker may see it twice).
    pub fn rewind(&mut self) {
        self.read_seq = 0;
        self.readahead.clear();
        self.reader = None;
    }

    /// Whether the uplink is up and keeping up. In `durability: offline` the spool keeps
    /// records only in memory while this is true and there is no disk backlog; going
    /// offline writes what memory holds to disk, oldest first. Starts false.
    pub fn set_online(&self, online: bool) {
        let shared = &self.owner.0;
        let wake = {
            let mut st = shared.lock();
            st.set_online(online);
            !st.pending.is_empty()
        };
        if wake {
            shared.wake_writer.notify_one();
        }
    }

    pub fn stats(&self) -> SpoolStats {
        self.owner.0.lock().stats()
    }
}

fn lost(st: &mut super::state::State, seqs: std::ops::Range<u64>) {
    let (start, end) = (seqs.start, seqs.end);
    let count = st.lose(seqs);
    if count > 0 {
        crate::observe::warn(format_args!(
            "fieldgate spool: {count} records numbered {start}..{end} cannot be read back from {} and are dropped",
            st.config.dir.display()
        ));
    }
}

/// Reads the records numbered `from` on from segment `first` (continuing where `reader`
/// stopped, when given), up to a batch's worth.
fn read_batch(
    reader: Option<SegmentReader>,
    path: &std::path::Path,
    first: u64,
    from: u64,
) -> io::Result<Batch> {
    let mut reader = match reader {
        Some(reader) => reader,
        None => match open_segment(path, first) {
            Ok(reader) => reader,
            // Deleted since the read was planned (dropped by `drop_oldest`): its records
            // are done, so nothing is counted lost for them.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Batch {
                    finished: true,
                    ..Batch::default()
                });
            }
            Err(e) => return Err(e),
        },
    };
    let mut batch = Batch::default();
    let mut bytes = 0;
    while !reader.broken {
        match reader.frames.next()? {
            Next::Frame(body) => {
                let in_order = record::seq_of(body)
                    .filter(|s| *s >= first && reader.last_seq.is_none_or(|last| *s > last));
                let Some(seq) = in_order else {
                    reader.broken = true;
                    break;
                };
                reader.last_seq = Some(seq);
                if seq < from {
                    continue;
                }
                bytes += body.len();
                match record::decode(body) {
                    Some(record) => batch.records.push(record),
                    None => batch.undecodable.push(seq),
                }
                if bytes >= BATCH_BYTES || batch.records.len() >= BATCH_RECORDS {
                    batch.reader = Some(reader);
                    return Ok(batch);
                }
            }
            Next::End => break,
            Next::Corrupt => reader.broken = true,
        }
    }
    batch.finished = true;
    batch.reader = Some(reader);
    Ok(batch)
}

fn open_segment(path: &std::path::Path, first: u64) -> io::Result<SegmentReader> {
    let file = File::open(path)?;
    let mut head = [0u8; segment::HEADER_LEN as usize];
    let ours = match file.read_exact_at(&mut head, 0) {
        Ok(()) => segment::check_header(&head) == Header::Ours,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => false,
        Err(e) => return Err(e),
    };
    Ok(SegmentReader {
        first,
        frames: FrameReader::new(file, segment::HEADER_LEN),
        last_seq: None,
        broken: !ours,
    })
}
