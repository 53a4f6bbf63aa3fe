//! The spool against its promises: order, acknowledgement, bounds, recovery from torn
//! and damaged files, group commit, and offline mode's silence on flash. A "crash" is a
//! copy of the directory taken while the spool runs: what `kill -9` would leave. Tests
//! close their spool before their directory goes, so the writer's last round finds it.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::mqtt::packet::{PublishProperties, QoS};
use crate::mqtt::topic::TopicName;

/// A scratch directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("fieldgate-spool-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// What a crash at this moment leaves: a copy of every file.
    fn crash_copy(&self, name: &str) -> TempDir {
        let copy = TempDir::new(name);
        for entry in fs::read_dir(&self.0).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), copy.0.join(entry.file_name())).unwrap();
        }
        copy
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn message(n: u64) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: n.is_multiple_of(7),
        topic: TopicName::try_from(format!("plant/line-{}/reading", n % 3).as_str()).unwrap(),
        packet_id: None,
        payload: Bytes::from(format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(40))),
        properties: PublishProperties {
            message_expiry_interval: Some(600),
            ..PublishProperties::default()
        },
    }
}

/// The `n` a record was appended with.
fn number(record: &Record) -> u64 {
    let text = std::str::from_utf8(&record.publish.payload).unwrap();
    let digits: String = text[5..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}

fn config(dir: &TempDir) -> SpoolConfig {
    SpoolConfig {
        fsync: Fsync::Never,
        ..SpoolConfig::new(dir.path())
    }
}

/// 4 KiB segments (about 40 records) and room for `max_bytes`.
fn segmented(dir: &TempDir, max_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        segment_bytes: SpoolConfig::MIN_SEGMENT_BYTES,
        max_bytes,
        ..config(dir)
    }
}

/// Two segments: full after about 80 records.
fn small(dir: &TempDir) -> SpoolConfig {
    segmented(dir, 2 * SpoolConfig::MIN_SEGMENT_BYTES)
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// Takes records until everything appended has been handed out.
async fn drain(consumer: &mut Consumer) -> Vec<Record> {
    let mut out = Vec::new();
    while let Some(record) = consumer.try_next().await.unwrap() {
        out.push(record);
    }
    out
}

async fn append_all(spool: &Spool, range: std::ops::Range<u64>) -> Vec<u64> {
    let mut seqs = Vec::new();
    for n in range {
        seqs.push(spool.append(message(n)).await.unwrap());
    }
    seqs
}

#[tokio::test]
async fn appended_records_come_out_in_order_and_leave_when_acknowledged() {
    let dir = TempDir::new("round-trip");
    let (spool, mut consumer, recovery) = Spool::open(config(&dir)).unwrap();
    assert_eq!(recovery.records, 0);
    let seqs = append_all(&spool, 0..20).await;
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let records = drain(&mut consumer).await;
    assert_eq!(records.len(), 20);
    for (n, record) in records.iter().enumerate() {
        assert_eq!(record.seq, seqs[n]);
        assert_eq!(record.publish, record::outgoing(message(n as u64)));
    }
    for record in &records {
        consumer.ack(record.seq);
    }
    let stats = spool.stats();
    assert_eq!(
        (stats.enqueued, stats.delivered, stats.pending),
        (20, 20, 0)
    );
    consumer.rewind();
    assert!(drain(&mut consumer).await.is_empty(), "acknowledged: gone");
    spool.close().await;
}

#[tokio::test]
async fn next_waits_for_an_append() {
    let dir = TempDir::new("wait");
    let (spool, mut consumer, _) = Spool::open(config(&dir)).unwrap();
    let waiting = tokio::spawn(async move { consumer.next().await.map(|r| number(&r)) });
    tokio::task::yield_now().await;
    spool.append(message(5)).await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), 5);
}

#[tokio::test]
async fn a_restart_replays_what_was_not_acknowledged_in_order_and_numbers_go_on() {
    let dir = TempDir::new("restart");
    let seqs = {
        let (spool, mut consumer, _) = Spool::open(config(&dir)).unwrap();
        let seqs = append_all(&spool, 0..10).await;
        let taken = drain(&mut consumer).await;
        // Out of order, as QoS 2 completions may come; 0..4 are all done.
        for i in [3, 0, 2, 1, 7] {
            consumer.ack(taken[i].seq);
        }
        spool.close().await;
        seqs
    };
    let (spool, mut consumer, recovery) = Spool::open(config(&dir)).unwrap();
    assert_eq!(recovery.cursor, CursorState::Loaded);
    let replayed: Vec<u64> = drain(&mut consumer).await.iter().map(number).collect();
    // 7 was acknowledged above the cursor: only the cursor is saved, so it comes
    // again (a duplicate, never a loss).
    assert_eq!(replayed, vec![4, 5, 6, 7, 8, 9]);
    assert_eq!(recovery.records, 6);
    let next = spool.append(message(10)).await.unwrap();
    assert!(next > *seqs.last().unwrap());
}

#[tokio::test]
async fn rewind_hands_out_again_what_was_in_flight_but_not_what_was_acknowledged() {
    let dir = TempDir::new("rewind");
    let (spool, mut consumer, _) = Spool::open(config(&dir)).unwrap();
    append_all(&spool, 0..5).await;
    let first = consumer.next().await.unwrap();
    let second = consumer.next().await.unwrap();
    let _third = consumer.next().await.unwrap();
    consumer.ack(second.seq);
    consumer.rewind();
    let again: Vec<u64> = drain(&mut consumer).await.iter().map(number).collect();
    assert_eq!(again, vec![0, 2, 3, 4]);
    assert_eq!(number(&first), 0);
    spool.close().await;
}

#[tokio::test]
async fn acknowledgements_in_any_order_free_everything_once_the_gap_closes() {
    let dir = TempDir::new("out-of-order");
    let cfg = segmented(&dir, 1 << 20);
    let (spool, mut consumer, _) = Spool::open(cfg.clone()).unwrap();
    append_all(&spool, 0..200).await;
    let taken = drain(&mut consumer).await;
    assert!(spool.stats().segments > 2);
    for record in taken.iter().skip(1).rev() {
        consumer.ack(record.seq);
    }
    assert_eq!(spool.stats().pending, 1);
    assert!(spool.stats().segments > 1, "the first record holds them");
    consumer.ack(taken[0].seq);
    let stats = spool.stats();
    assert_eq!(
        (stats.pending, stats.delivered, stats.segments),
        (0, 200, 1)
    );
    spool.close().await;
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "only the current one stays"
    );
    let (_, mut consumer, recovery) = Spool::open(cfg).unwrap();
    assert_eq!(recovery.records, 0);
    assert!(drain(&mut consumer).await.is_empty());
}

#[tokio::test]
async fn segments_roll_over_and_are_deleted_once_acknowledged() {
    let dir = TempDir::new("rollover");
    let cfg = segmented(&dir, 64 << 10);
    let (spool, mut consumer, _) = Spool::open(cfg.clone()).unwrap();
    append_all(&spool, 0..300).await;
    let files = segment_files(dir.path());
    assert!(files.len() >= 5, "{files:?}");
    for file in &files {
        assert!(fs::metadata(file).unwrap().len() <= cfg.segment_bytes);
    }
    let first_names: Vec<u64> = files
        .iter()
        .map(|f| f.file_stem().unwrap().to_str().unwrap().parse().unwrap())
        .collect();
    let taken = drain(&mut consumer).await;
    assert_eq!(taken.len(), 300);
    assert_eq!(taken[0].seq, first_names[0], "named by their first record");
    for record in &taken[..150] {
        consumer.ack(record.seq);
    }
    spool.close().await;
    let left = segment_files(dir.path());
    assert!(left.len() < files.len() && left.len() > 1, "{left:?}");
    let (_, mut consumer, recovery) = Spool::open(cfg).unwrap();
    assert_eq!(recovery.records, 150);
    let replayed: Vec<u64> = drain(&mut consumer).await.iter().map(number).collect();
    assert_eq!(replayed, (150..300).collect::<Vec<_>>());
}

#[tokio::test]
async fn replay_reads_the_disk_when_memory_holds_nothing() {
    let dir = TempDir::new("disk-replay");
    let cfg = SpoolConfig {
        memory_bytes: 0,
        ..segmented(&dir, 1 << 20)
    };
    let (spool, mut consumer, _) = Spool::open(cfg).unwrap();
    append_all(&spool, 0..500).await;
    let taken: Vec<u64> = drain(&mut consumer).await.iter().map(number).collect();
    assert_eq!(taken, (0..500).collect::<Vec<_>>());
    consumer.rewind();
    assert_eq!(drain(&mut consumer).await.len(), 500, "again from disk");
    spool.close().await;
}

#[tokio::test]
async fn drop_oldest_deletes_whole_segments_and_counts_exactly_what_was_not_delivered() {
    let dir = TempDir::new("drop-oldest");
    let (spool, mut consumer, _) = Spool::open(small(&dir)).unwrap();
    append_all(&spool, 0..10).await;
    let early = drain(&mut consumer).await;
    for record in &early {
        consumer.ack(record.seq);
    }
    append_all(&spool, 10..400).await;
    let stats = spool.stats();
    assert!(stats.dropped_full > 0);
    assert!(stats.disk_bytes <= 2 * SpoolConfig::MIN_SEGMENT_BYTES);
    assert_eq!(stats.enqueued, 400);
    assert_eq!(
        stats.enqueued,
        stats.delivered + stats.dropped_full + stats.pending,
        "{stats:?}"
    );
    let rest: Vec<u64> = drain(&mut consumer).await.iter().map(number).collect();
    assert_eq!(rest.len() as u64, stats.pending);
    assert_eq!(rest.last(), Some(&399), "the newest are kept");
    assert!(
        rest.windows(2).all(|w| w[1] == w[0] + 1),
        "a contiguous tail"
    );
    assert_eq!(rest[0], 400 - stats.pending);
    assert_eq!(stats.rejected, 0);
    spool.close().await;
}

#[tokio::test]
async fn reject_new_refuses_and_counts_until_acknowledgements_free_room() {
    let dir = TempDir::new("reject-new");
    let cfg = SpoolConfig {
        on_full: OnFull::RejectNew,
        ..small(&dir)
    };
    let (spool, mut consumer, _) = Spool::open(cfg).unwrap();
    let mut accepted = 0;
    let mut refused = 0;
    for n in 0..200 {
        match spool.append(message(n)).await {
            Ok(_) => accepted += 1,
            Err(SpoolError::Full { max_bytes }) => {
                assert_eq!(max_bytes, 2 * SpoolConfig::MIN_SEGMENT_BYTES);
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused > 0 && accepted > 0);
    let stats = spool.stats();
    assert_eq!((stats.rejected, stats.enqueued), (refused, accepted));
    assert_eq!(stats.dropped_full, 0);
    let kept: Vec<u64> = drain(&mut consumer).await.iter().map(number).collect();
    assert_eq!(
        kept,
        (0..accepted).collect::<Vec<_>>(),
        "the oldest are kept"
    );
    consumer.rewind();
    for record in drain(&mut consumer).await {
        consumer.ack(record.seq);
    }
    spool.append(message(1000)).await.unwrap();
    spool.close().await;
}

#[tokio::test]
async fn a_message_larger_than_the_spool_or_not_encodable_is_refused() {
    let dir = TempDir::new("too-large");
    let (spool, _consumer, _) = Spool::open(small(&dir)).unwrap();
    let mut big = message(1);
    big.payload = Bytes::from(vec![0u8; 20_000]);
    assert!(matches!(
        spool.append(big).await,
        Err(SpoolError::TooLarge { .. })
    ));
    let mut aliased = message(2);
    aliased.topic = TopicName::empty_for_alias();
    aliased.properties.topic_alias = std::num::NonZeroU16::new(4);
    assert!(matches!(
        spool.append(aliased).await,
        Err(SpoolError::Unencodable(_))
    ));
    assert_eq!(spool.stats().rejected, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_always_shares_one_sync_among_concurrent_appenders() {
    let dir = TempDir::new("group-commit");
    let cfg = SpoolConfig {
        fsync: Fsync::Always,
        ..SpoolConfig::new(dir.path())
    };
    let (spool, _consumer, _) = Spool::open(cfg).unwrap();
    let before = spool.stats().syncs;
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let spool = spool.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    spool.append(message(t * 100 + i)).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let syncs = spool.stats().syncs - before;
    assert!(syncs >= 1);
    assert!(syncs < 64 * 20 / 2, "{syncs} syncs for 1280 appends");
    // Every append resolved after its sync: all of them are in the file.
    let copy = dir.crash_copy("group-commit-crash");
    let (_, _, recovery) = Spool::open(config(&copy)).unwrap();
    assert_eq!(recovery.records, 64 * 20);
    spool.close().await;
}

#[tokio::test]
async fn fsync_interval_syncs_without_further_appends() {
    let dir = TempDir::new("interval");
    let cfg = SpoolConfig {
        fsync: Fsync::Interval(Duration::from_millis(20)),
        ..SpoolConfig::new(dir.path())
    };
    let (spool, _consumer, _) = Spool::open(cfg).unwrap();
    spool.append(message(1)).await.unwrap();
    let syncs = spool.stats().syncs;
    // Polling with a deadline: the writer's timer runs on its own thread's clock.
    let deadline = Instant::now() + Duration::from_secs(10);
    while spool.stats().syncs == syncs {
        assert!(Instant::now() < deadline, "no sync within the interval");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    spool.close().await;
}

#[tokio::test]
async fn offline_mode_writes_nothing_while_the_uplink_keeps_up() {
    let dir = TempDir::new("offline-healthy");
    let cfg = SpoolConfig {
        durability: Durability::Offline,
        ..config(&dir)
    };
    let (spool, mut consumer, _) = Spool::open(cfg).unwrap();
    consumer.set_online(true);
    let at_open = spool.stats().bytes_written;
    for n in 0..5000 {
        spool.append(message(n)).await.unwrap();
        let record = consumer.next().await.unwrap();
        assert_eq!(number(&record), n);
        consumer.ack(record.seq);
    }
    let stats = spool.stats();
    assert_eq!(stats.bytes_written, at_open, "{stats:?}");
    assert_eq!(
        (stats.disk_bytes, stats.segments, stats.delivered),
        (0, 0, 5000)
    );
    assert!(segment_files(dir.path()).is_empty());
    spool.close().await;
}

#[tokio::test]
async fn offline_mode_spills_memory_in_order_when_the_uplink_goes_down() {
    let dir = TempDir::new("offline-spill");
    let cfg = SpoolConfig {
        durability: Durability::Offline,
        ..config(&dir)
    };
    let (spool, mut consumer, _) = Spool::open(cfg.clone()).unwrap();
    consumer.set_online(true);
    append_all(&spool, 0..5).await;
    // Two in flight, one acknowledged: the other four are still owed.
    let first = consumer.next().await.unwrap();
    consumer.next().await.unwrap();
    consumer.ack(first.seq);
    assert!(spool.stats().memory_bytes > 0);
    assert!(segment_files(dir.path()).is_empty());
    consumer.set_online(false);
    append_all(&spool, 5..8).await;
    assert_eq!(spool.stats().memory_bytes, 0);
    // A crash now: everything owed is on disk, in order.
    let copy = dir.crash_copy("offline-spill-crash");
    let (_, mut recovered, _) = Spool::open(SpoolConfig {
        dir: copy.path().to_path_buf(),
        ..cfg
    })
    .unwrap();
    let replayed: Vec<u64> = drain(&mut recovered).await.iter().map(number).collect();
    assert_eq!(replayed, (1..8).collect::<Vec<_>>());
    // Back online: the backlog first, then new records behind it, one order.
    consumer.set_online(true);
    consumer.rewind();
    append_all(&spool, 8..10).await;
    let all: Vec<u64> = drain(&mut consumer).await.iter().map(number).collect();
    assert_eq!(all, (1..10).collect::<Vec<_>>());
    spool.close().await;
}

#[tokio::test]
async fn offline_mode_spills_when_memory_fills_and_returns_to_memory_once_caught_up() {
    let dir = TempDir::new("offline-backlog");
    let cfg = SpoolConfig {
        durability: Durability::Offline,
        memory_bytes: 2000,
        ..config(&dir)
    };
    let (spool, mut consumer, _) = Spool::open(cfg).unwrap();
    consumer.set_online(true);
    append_all(&spool, 0..100).await;
    assert!(!segment_files(dir.path()).is_empty(), "backlogged: on disk");
    let taken = drain(&mut consumer).await;
    assert_eq!(
        taken.iter().map(number).collect::<Vec<_>>(),
        (0..100).collect::<Vec<_>>()
    );
    for record in &taken {
        consumer.ack(record.seq);
    }
    let written = spool.stats().bytes_written;
    spool.append(message(100)).await.unwrap();
    let record = consumer.next().await.unwrap();
    consumer.ack(record.seq);
    let stats = spool.stats();
    assert_eq!(stats.memory_bytes, 0);
    assert_eq!(stats.bytes_written, written, "caught up: memory again");
    spool.close().await;
}

#[tokio::test]
async fn sequence_numbers_never_repeat_even_for_memory_records_lost_in_a_crash() {
    let dir = TempDir::new("floor");
    let cfg = SpoolConfig {
        durability: Durability::Offline,
        ..config(&dir)
    };
    let (spool, consumer, _) = Spool::open(cfg.clone()).unwrap();
    consumer.set_online(true);
    let seqs = append_all(&spool, 0..10).await;
    let copy = dir.crash_copy("floor-crash");
    let (spool2, _, recovery) = Spool::open(SpoolConfig {
        dir: copy.path().to_path_buf(),
        ..cfg
    })
    .unwrap();
    assert_eq!(recovery.records, 0, "memory records die with the process");
    let next = spool2.append(message(10)).await.unwrap();
    assert!(next > *seqs.last().unwrap());
    spool.close().await;
    spool2.close().await;
}

/// The segment's bytes and where its last frame starts.
fn last_frame_start(path: &Path) -> (Vec<u8>, usize) {
    let bytes = fs::read(path).unwrap();
    let mut at = segment::HEADER_LEN as usize;
    let mut last = at;
    while let crate::storage::frame::Frame::Whole { len, .. } =
        crate::storage::frame::read(&bytes[at..])
    {
        last = at;
        at += len;
    }
    assert_eq!(at, bytes.len());
    (bytes, last)
}

#[tokio::test]
async fn a_torn_last_record_is_cut_at_any_byte_and_everything_before_it_survives() {
    let dir = TempDir::new("torn");
    let seqs = {
        let (spool, consumer, _) = Spool::open(config(&dir)).unwrap();
        let seqs = append_all(&spool, 0..6).await;
        consumer.ack(seqs[0]);
        spool.close().await;
        seqs
    };
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 1);
    let (bytes, last_start) = last_frame_start(&files[0]);
    for cut in last_start..bytes.len() {
        let copy = dir.crash_copy("torn-cut");
        let segment = copy.path().join(files[0].file_name().unwrap());
        fs::write(&segment, &bytes[..cut]).unwrap();
        let (spool, mut consumer, recovery) = Spool::open(config(&copy)).unwrap();
        assert_eq!(
            recovery.truncated_bytes,
            (cut - last_start) as u64,
            "cut {cut}"
        );
        assert_eq!(recovery.records, 4, "cut {cut}");
        let replayed: Vec<u64> = drain(&mut consumer).await.iter().map(number).collect();
        assert_eq!(replayed, vec![1, 2, 3, 4], "cut {cut}");
        assert_eq!(fs::metadata(&segment).unwrap().len(), last_start as u64);
        let next = spool.append(message(6)).await.unwrap();
        assert!(next > seqs[5], "cut {cut}: numbers go on");
        spool.close().await;
        let (_, mut again, recovery) = Spool::open(config(&copy)).unwrap();
        assert_eq!(
            recovery.truncated_bytes, 0,
            "cut {cut}: clean after the cut"
        );
        let replayed: Vec<u64> = drain(&mut again).await.iter().map(number).collect();
        assert_eq!(replayed, vec![1, 2, 3, 4, 6], "cut {cut}");
    }
}

#[tokio::test]
async fn damage_inside_an_older_segment_loses_only_the_rest_of_that_segment() {
    let dir = TempDir::new("damaged");
    let cfg = segmented(&dir, 1 << 20);
    {
        let (spool, _, _) = Spool::open(cfg.clone()).unwrap();
        append_all(&spool, 0..150).await;
        spool.close().await;
    }
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    let mut bytes = fs::read(&files[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    fs::write(&files[0], &bytes).unwrap();
    let (_, mut consumer, recovery) = Spool::open(SpoolConfig {
        dir: dir.path().to_path_buf(),
        ..cfg
    })
    .unwrap();
    assert_eq!(recovery.corrupt_segments, 1);
    assert!(recovery.lost_records > 0);
    assert_eq!(recovery.truncated_bytes, 0);
    let replayed: Vec<u64> = drain(&mut consumer).await.iter().map(number).collect();
    assert_eq!(replayed.len() as u64 + recovery.lost_records, 150);
    assert!(replayed.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(replayed.last(), Some(&149));
    assert_eq!(consumer.stats().dropped_corrupt, recovery.lost_records);
    assert_eq!(
        fs::read(&files[0]).unwrap(),
        bytes,
        "not rewritten in place"
    );
}

#[tokio::test]
async fn a_missing_or_damaged_cursor_replays_everything() {
    let dir = TempDir::new("cursor-lost");
    {
        let (spool, mut consumer, _) = Spool::open(config(&dir)).unwrap();
        append_all(&spool, 0..10).await;
        for record in drain(&mut consumer).await.iter().take(5) {
            consumer.ack(record.seq);
        }
        spool.close().await;
    }
    let damaged = dir.crash_copy("cursor-damaged");
    let cursor_file = damaged.path().join(cursor::FILE);
    let mut bytes = fs::read(&cursor_file).unwrap();
    bytes[12] ^= 1;
    fs::write(&cursor_file, bytes).unwrap();
    let (_, mut consumer, recovery) = Spool::open(config(&damaged)).unwrap();
    assert_eq!(recovery.cursor, CursorState::Corrupt);
    assert_eq!(drain(&mut consumer).await.len(), 10);
    let missing = dir.crash_copy("cursor-missing");
    fs::remove_file(missing.path().join(cursor::FILE)).unwrap();
    let (_, mut consumer, recovery) = Spool::open(config(&missing)).unwrap();
    assert_eq!(recovery.cursor, CursorState::Missing);
    assert_eq!(drain(&mut consumer).await.len(), 10);
}

#[tokio::test]
async fn a_crash_between_writing_the_new_cursor_and_renaming_it_keeps_the_old_one() {
    let dir = TempDir::new("cursor-atomic");
    let seqs = {
        let (spool, mut consumer, _) = Spool::open(config(&dir)).unwrap();
        let seqs = append_all(&spool, 0..10).await;
        for record in drain(&mut consumer).await.iter().take(5) {
            consumer.ack(record.seq);
        }
        spool.close().await;
        seqs
    };
    // The writer had written the next cursor (all ten acknowledged) to its temporary
    // file, whole or in part, when the process died.
    let newer = cursor::encode(cursor::Cursor {
        below: seqs[9] + 1,
        floor: seqs[9] + 1 + cursor::RESERVE,
    });
    for temp in [&newer[..], &newer[..7]] {
        let copy = dir.crash_copy("cursor-atomic-crash");
        fs::write(copy.path().join(cursor::TEMP), temp).unwrap();
        let (_, mut consumer, recovery) = Spool::open(config(&copy)).unwrap();
        assert_eq!(recovery.cursor, CursorState::Loaded);
        let replayed: Vec<u64> = drain(&mut consumer).await.iter().map(number).collect();
        assert_eq!(replayed, vec![5, 6, 7, 8, 9]);
        assert!(!copy.path().join(cursor::TEMP).exists());
    }
}

#[tokio::test]
async fn a_segment_from_a_newer_version_stops_the_open_and_foreign_files_are_left_alone() {
    let dir = TempDir::new("versions");
    {
        let (spool, _, _) = Spool::open(config(&dir)).unwrap();
        append_all(&spool, 0..3).await;
        spool.close().await;
    }
    let newer = dir.crash_copy("versions-newer");
    let segment = segment_files(newer.path()).remove(0);
    let mut bytes = fs::read(&segment).unwrap();
    bytes[7] = 9;
    fs::write(&segment, bytes).unwrap();
    assert!(matches!(
        Spool::open(config(&newer)),
        Err(SpoolError::Format { version: 9, .. })
    ));
    let foreign = dir.crash_copy("versions-foreign");
    fs::write(
        foreign.path().join(segment::file_name(1 << 40)),
        b"not a segment at all",
    )
    .unwrap();
    fs::write(foreign.path().join("notes.txt"), b"mine").unwrap();
    let (spool, mut consumer, recovery) = Spool::open(config(&foreign)).unwrap();
    assert_eq!(recovery.corrupt_segments, 1);
    assert_eq!(drain(&mut consumer).await.len(), 3);
    assert!(spool.append(message(3)).await.unwrap() > 1 << 40);
    assert!(foreign.path().join("notes.txt").exists());
}

#[tokio::test]
async fn no_damage_to_the_files_makes_open_or_replay_panic_or_invent_records() {
    let dir = TempDir::new("fuzz");
    let cfg = segmented(&dir, 1 << 20);
    let mut published = std::collections::HashMap::new();
    {
        let (spool, _, _) = Spool::open(cfg.clone()).unwrap();
        for n in 0..120 {
            published.insert(spool.append(message(n)).await.unwrap(), n);
        }
        spool.close().await;
    }
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for round in 0..150 {
        let copy = dir.crash_copy("fuzz-round");
        let mut files: Vec<PathBuf> = fs::read_dir(copy.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let only_tail = round % 3 == 0;
        for _ in 0..rng.usize(1..4) {
            let file = if only_tail {
                segment_files(copy.path()).pop().unwrap()
            } else {
                files[rng.usize(..files.len())].clone()
            };
            let mut bytes = fs::read(&file).unwrap();
            match (only_tail, rng.u8(0..3)) {
                (true, _) | (false, 0) => {
                    let extra: Vec<u8> = (0..rng.usize(1..200)).map(|_| rng.u8(..)).collect();
                    bytes.extend_from_slice(&extra);
                }
                (false, 1) => bytes.truncate(rng.usize(0..=bytes.len())),
                _ if bytes.is_empty() => {}
                _ => {
                    let i = rng.usize(..bytes.len());
                    bytes[i] ^= rng.u8(1..);
                }
            }
            fs::write(&file, bytes).unwrap();
        }
        let opened = Spool::open(SpoolConfig {
            dir: copy.path().to_path_buf(),
            ..cfg.clone()
        });
        let (_, mut consumer, recovery) = match opened {
            Ok(opened) => opened,
            Err(SpoolError::Format { .. }) => continue,
            Err(e) => panic!("round {round}: {e}"),
        };
        let replayed = drain(&mut consumer).await;
        assert!(replayed.windows(2).all(|w| w[0].seq < w[1].seq));
        for record in &replayed {
            let n = published.get(&record.seq).copied();
            assert_eq!(n, Some(number(record)), "round {round}: no invented record");
        }
        if only_tail {
            assert_eq!(replayed.len(), 120, "round {round}: {recovery:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_amid_appends_keeps_every_record_whose_append_had_resolved() {
    let dir = TempDir::new("kill-9");
    let cfg = segmented(&dir, 64 << 20);
    let (spool, _consumer, _) = Spool::open(cfg.clone()).unwrap();
    let resolved = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let appenders: Vec<_> = (0..8)
        .map(|t| {
            let spool = spool.clone();
            let resolved = std::sync::Arc::clone(&resolved);
            tokio::spawn(async move {
                for i in 0..400 {
                    let n = t * 1000 + i;
                    let seq = spool.append(message(n)).await.unwrap();
                    resolved.lock().unwrap().push((seq, n));
                }
            })
        })
        .collect();
    // Wait (polling) until some are through, then "crash" while the rest keep coming.
    let deadline = Instant::now() + Duration::from_secs(30);
    while resolved.lock().unwrap().len() < 1000 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let acknowledged = resolved.lock().unwrap().clone();
    let copy = dir.crash_copy("kill-9-crash");
    for appender in appenders {
        appender.await.unwrap();
    }
    let (_, mut consumer, _) = Spool::open(SpoolConfig {
        dir: copy.path().to_path_buf(),
        ..cfg
    })
    .unwrap();
    let replayed = drain(&mut consumer).await;
    assert!(replayed.windows(2).all(|w| w[0].seq < w[1].seq));
    let found: std::collections::HashMap<u64, u64> =
        replayed.iter().map(|r| (r.seq, number(r))).collect();
    for (seq, n) in acknowledged {
        assert_eq!(found.get(&seq), Some(&n), "record {seq} was acknowledged");
    }
    spool.close().await;
}

#[tokio::test]
async fn records_taken_with_enqueue_keep_their_order_and_share_syncs_when_awaited_together() {
    let dir = TempDir::new("enqueue");
    let (spool, mut consumer, _) = Spool::open(SpoolConfig {
        fsync: Fsync::Always,
        ..config(&dir)
    })
    .unwrap();
    let mut taken = Vec::new();
    for n in 0..50 {
        taken.push(spool.enqueue(message(n)).await.unwrap());
    }
    let seqs: Vec<u64> = taken.iter().map(Enqueued::seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let syncs_before = spool.stats().syncs;
    for enqueued in taken {
        enqueued.durable().await.unwrap();
    }
    let syncs = spool.stats().syncs - syncs_before;
    assert!(
        syncs < 25,
        "50 records waited on together took {syncs} syncs"
    );
    let records = drain(&mut consumer).await;
    assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), seqs);
    spool.close().await;
}

#[tokio::test]
async fn a_second_spool_on_the_same_directory_is_refused_until_the_first_closes() {
    let dir = TempDir::new("locked");
    let (spool, _consumer, _) = Spool::open(config(&dir)).unwrap();
    append_all(&spool, 0..3).await;
    match Spool::open(config(&dir)) {
        Err(SpoolError::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("a second writer was let in: {other:?}"),
    }
    // `close` returns once the lock is free: the reopened spool has the three records.
    spool.close().await;
    let (again, mut consumer, recovery) = Spool::open(config(&dir)).unwrap();
    assert_eq!(recovery.records, 3);
    assert_eq!(drain(&mut consumer).await.len(), 3);
    again.close().await;
}
