//! Opening a spool directory: read the cursor, scan every segment (CRC and sequence
//! order), cut a torn tail off the last segment, note a corrupt stretch of an older one
//! (its records are counted as lost, the file is left as it is), delete segments that are
//! entirely done, and reserve sequence numbers ahead of everything seen. Never panics on
//! any file content; only IO errors and a newer format stop it.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use super::acks::AckSet;
use super::cursor::{self, Cursor, RESERVE};
use super::segment::{self, Header};
use super::state::{Pending, SegmentMeta, State};
use super::{Recovery, SpoolConfig, SpoolError, SpoolStats};

/// A recovered state and the segment the writer appends to.
#[derive(Debug)]
pub(super) struct Opened {
    pub(super) state: State,
    pub(super) current: Option<(u64, File)>,
    pub(super) recovery: Recovery,
    /// The directory's lock, held for as long as the writer runs.
    pub(super) lock: File,
}

/// The lock file's name (not a segment name, so listing ignores it).
pub(super) const LOCK: &str = "lock";

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn open(config: &SpoolConfig) -> Result<Opened, SpoolError> {
    let dir = config.dir.as_path();
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let lock = lock(dir)?;
    // A crash between writing the temporary cursor and renaming it: the old one stands.
    let temp = dir.join(cursor::TEMP);
    match fs::remove_file(&temp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_error(&temp)(e)),
        _ => {}
    }
    let (saved, cursor_state) = cursor::load(dir).map_err(io_error(dir))?;
    let firsts = segment::list(dir).map_err(io_error(dir))?;
    // Numbers start at 1; anything below the oldest segment is gone, hence done.
    let start = saved
        .map_or(1, |c| c.below)
        .max(firsts.first().copied().unwrap_or(1))
        .max(1);
    let mut acks = AckSet::new(start);
    let mut recovery = Recovery {
        cursor: cursor_state,
        ..Recovery::default()
    };
    let mut stats = SpoolStats::default();
    let mut segments = VecDeque::new();
    let mut current = None;
    // Every number below this is accounted for: a record seen, or done.
    let mut seen_end = start;
    // Above every segment's name, so a new segment's name is always free.
    let mut min_next = start;
    for (i, &first) in firsts.iter().enumerate() {
        let path = segment::path(dir, first);
        let next_first = firsts.get(i + 1).copied();
        let last = next_first.is_none();
        // Numbers between two segments were never stored (done before they could be).
        acks.mark(seen_end..first);
        seen_end = seen_end.max(first);
        min_next = min_next.max(first);
        let mut records = 0;
        let scan = segment::scan(&path, first, next_first, |seq| {
            acks.mark(seen_end..seq);
            if !acks.is_done(seq) {
                records += 1;
            }
            seen_end = seq + 1;
        })
        .map_err(io_error(&path))?;
        let mut good_len = scan.good_len;
        match scan.header {
            Header::Ours => {}
            Header::Version(version) => return Err(SpoolError::Format { path, version }),
            Header::Torn if last => {
                // Created just before a crash: start it again.
                let mut file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_error(&path))?;
                file.set_len(0)
                    .and_then(|()| file.write_all(&segment::header()))
                    .and_then(|()| file.sync_all())
                    .map_err(io_error(&path))?;
                recovery.truncated_bytes += scan.file_len;
                good_len = segment::HEADER_LEN;
            }
            Header::Torn | Header::Foreign => {
                // Not ours to read or to delete: reported and left alone; the next
                // segment gets a name above it.
                recovery.corrupt_segments += 1;
                min_next = min_next.max(first + 1);
                crate::observe::warn(format_args!(
                    "fieldgate spool: {} is not a spool segment; left alone",
                    path.display()
                ));
                continue;
            }
        }
        stats.pending += records;
        if good_len < scan.file_len && scan.header == Header::Ours {
            if last {
                // A torn tail (or damage we cannot tell from one): cut, so appends go
                // on from a frame boundary. What it held was never acknowledged under
                // `fsync: always`.
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_error(&path))?;
                file.set_len(good_len)
                    .and_then(|()| file.sync_all())
                    .map_err(io_error(&path))?;
                recovery.truncated_bytes += scan.file_len - good_len;
            } else {
                // Damage inside an older segment: what followed it up to the next
                // segment cannot be read. The file is not rewritten (no writes in
                // place); it goes once everything in it is done.
                recovery.corrupt_segments += 1;
                let lost_until = next_first.unwrap_or(seen_end);
                let lost = acks.mark(seen_end..lost_until);
                recovery.lost_records += lost;
                seen_end = seen_end.max(lost_until);
                crate::observe::warn(format_args!(
                    "fieldgate spool: {} is damaged at byte {good_len}; up to {lost} records after it are lost",
                    path.display()
                ));
            }
        }
        segments.push_back(SegmentMeta {
            first,
            end: scan.last_seq.map_or(first, |s| s + 1),
            bytes: good_len,
        });
        stats.disk_bytes += good_len;
        if last {
            let file = OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(io_error(&path))?;
            current = Some((first, file));
        }
    }
    stats.dropped_corrupt = recovery.lost_records;
    let floor = saved.map_or(0, |c| c.floor.max(c.below));
    let next_seq = seen_end.max(min_next).max(floor);
    acks.mark(seen_end..next_seq);
    // Segments whose records are all done; a crash may have cut their deletion short.
    while segments.len() > 1
        && let Some(oldest) = segments.front().copied()
        && oldest.end <= acks.below()
    {
        let path = segment::path(dir, oldest.first);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_error(&path)(e)),
            _ => {}
        }
        stats.disk_bytes = stats.disk_bytes.saturating_sub(oldest.bytes);
        segments.pop_front();
    }
    // Reserve numbers before handing any out, so none is ever handed out twice.
    let persisted = Cursor {
        below: acks.below(),
        floor: next_seq + RESERVE,
    };
    stats.bytes_written += cursor::store(dir, persisted, config.fsync.syncs())
        .map_err(io_error(&dir.join(cursor::FILE)))?;
    if config.fsync.syncs() {
        stats.syncs += 2;
    }
    recovery.segments = segments.len();
    recovery.records = stats.pending;
    recovery.bytes = stats.disk_bytes;
    recovery.next_seq = next_seq;
    let state = State {
        config: config.clone(),
        next_seq,
        acks,
        window: VecDeque::new(),
        window_first: next_seq,
        window_bytes: 0,
        memory_only_bytes: 0,
        disk_end: next_seq,
        segments,
        // The writer has no file for the last segment when it was not the last file.
        sealed: current.is_none(),
        pending: Pending::default(),
        deletions: Vec::new(),
        written: next_seq,
        synced: next_seq,
        persisted,
        // Until the consumer says the uplink is up, offline mode writes to disk.
        online: false,
        closing: false,
        failed: None,
        stats,
    };
    Ok(Opened {
        state,
        current,
        recovery,
        lock,
    })
}

/// Takes the directory's lock: two writers on one spool (a second `fieldgate run` with
/// the same state directory, or a reload that opened it before the old one closed)
/// would hand out the same sequence numbers and delete each other's segments. An
/// advisory `flock`, so the kernel releases it when the process dies: a crash never
/// leaves a stale lock behind.
fn lock(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error(&path))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(SpoolError::Locked { path: dir.into() }),
        Err(e) => Err(io_error(&path)(e.into())),
    }
}
