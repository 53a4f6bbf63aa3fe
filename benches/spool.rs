//! Spool benchmark: what the offline queue costs.
//!
//! - Enqueue throughput of 100-byte messages per fsync policy, one appender and 64
//!   concurrent ones (group commit), against references measured in the same run: a plain
//!   `write_all` + `sync_data` loop of the same frame size (for `always`) and a plain
//!   `write_all` loop (for `interval` and `never`). The machine is shared and its disk
//!   is whatever the temp directory sits on, so ratios say more than rates.
//! - Replay: reading the backlog back, from disk (after a restart) and from memory.
//! - Offline mode while healthy: bytes written to the state directory per hour, against
//!   disk mode under the same load.
//! - Recovery: opening a spool of 1 GiB (4 MiB without `--bench`), page cache warm.
//!
//! `cargo bench --bench spool` runs the full measurement; without `--bench` (as
//! `cargo test --all-targets` runs it) every case runs briefly, so the suite notices
//! when one breaks.

// A benchmark whose setup fails has nothing to measure: stopping is right.
#![allow(clippy::expect_used)]

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fieldgate::mqtt::packet::{Publish, PublishProperties, QoS};
use fieldgate::mqtt::topic::TopicName;
use fieldgate::spool::{Durability, Spool, SpoolConfig, SpoolStats};
use fieldgate::storage::Fsync;

const TOPIC: &str = "fieldgate/gw-01/pump-3/temperature";
const PAYLOAD: usize = 100;

struct Sizes {
    /// Messages for the policies that do not wait for the disk.
    fast: usize,
    /// Messages for one appender under `fsync: always` (one sync each).
    synced: usize,
    /// Bytes for the recovery case.
    recovery_bytes: u64,
}

const FULL: Sizes = Sizes {
    fast: 200_000,
    synced: 2_000,
    recovery_bytes: 1 << 30,
};
const QUICK: Sizes = Sizes {
    fast: 2_000,
    synced: 50,
    recovery_bytes: 4 << 20,
};

fn message(n: usize) -> Publish {
    let mut payload = format!("{{\"n\":{n},\"v\":");
    payload.push_str(&"7".repeat(PAYLOAD - payload.len() - 1));
    payload.push('}');
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicName::try_from(TOPIC).expect("constant topic is valid"),
        packet_id: None,
        payload: Bytes::from(payload),
        properties: PublishProperties::default(),
    }
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!(
            "fieldgate-bench-spool-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("temp dir");
        Scratch(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn config(dir: &Scratch, fsync: Fsync) -> SpoolConfig {
    SpoolConfig {
        fsync,
        // Room for every case without a consumer.
        max_bytes: 4 << 30,
        segment_bytes: 64 << 20,
        ..SpoolConfig::new(dir.path())
    }
}

/// One row of the table.
struct Row {
    case: String,
    messages: usize,
    elapsed: Duration,
    syncs: Option<u64>,
    reference: Option<Duration>,
}

impl Row {
    fn print(&self) {
        let per_second = self.messages as f64 / self.elapsed.as_secs_f64();
        let micros = self.elapsed.as_secs_f64() * 1e6 / self.messages as f64;
        let syncs = self.syncs.map_or("-".to_string(), |s| {
            format!("{:.3}", s as f64 / self.messages as f64)
        });
        let ratio = self.reference.map_or("-".to_string(), |r| {
            format!("{:.2}x", self.elapsed.as_secs_f64() / r.as_secs_f64())
        });
        println!(
            "{:<44} {:>9} {:>12.0} {:>9.2} {:>9} {:>10}",
            self.case, self.messages, per_second, micros, syncs, ratio
        );
    }
}

/// Appends `messages` spread over `appenders` tasks; returns the time and the syncs.
async fn enqueue(spool: &Spool, appenders: usize, messages: usize) -> (Duration, u64) {
    let before = spool.stats().syncs;
    let start = Instant::now();
    let per_task = messages / appenders;
    let tasks: Vec<_> = (0..appenders)
        .map(|t| {
            let spool = spool.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    spool
                        .append(message(t * per_task + i))
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("appender");
    }
    (start.elapsed(), spool.stats().syncs - before)
}

/// The bare cost of the same bytes: one frame-sized write per message, each synced or
/// not.
fn plain_writes(dir: &Scratch, frame: usize, messages: usize, sync: bool) -> Duration {
    let mut file = File::create(dir.path().join("reference")).expect("reference file");
    let bytes = vec![0x5a; frame];
    let start = Instant::now();
    for _ in 0..messages {
        file.write_all(&bytes).expect("write");
        if sync {
            file.sync_data().expect("sync");
        }
    }
    start.elapsed()
}

/// A frame's size for a benchmark message, from what one append writes.
async fn frame_size() -> usize {
    let dir = Scratch::new("frame");
    let (spool, _consumer, _) = Spool::open(config(&dir, Fsync::Never)).expect("open spool");
    let before = spool.stats();
    spool.append(message(0)).await.expect("append");
    spool.append(message(1)).await.expect("append");
    let after = spool.stats();
    // The second append: the first one also wrote the segment header.
    let second_only = after.disk_bytes - before.disk_bytes;
    spool.close().await;
    (second_only / 2) as usize
}

async fn enqueue_rows(sizes: &Sizes, frame: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    let dir = Scratch::new("reference");
    let synced_reference = plain_writes(&dir, frame, sizes.synced, true);
    let plain_reference = plain_writes(&dir, frame, sizes.fast, false);
    rows.push(Row {
        case: "reference: write + fdatasync per message".into(),
        messages: sizes.synced,
        elapsed: synced_reference,
        syncs: Some(sizes.synced as u64),
        reference: None,
    });
    rows.push(Row {
        case: "reference: write per message, no sync".into(),
        messages: sizes.fast,
        elapsed: plain_reference,
        syncs: Some(0),
        reference: None,
    });
    let policies = [
        ("always", Fsync::Always),
        ("interval 1s", Fsync::Interval(Duration::from_secs(1))),
        ("never", Fsync::Never),
    ];
    for (name, fsync) in policies {
        for appenders in [1, 64] {
            let messages = if fsync == Fsync::Always && appenders == 1 {
                sizes.synced
            } else {
                sizes.fast
            };
            let dir = Scratch::new("enqueue");
            let (spool, _consumer, _) = Spool::open(config(&dir, fsync)).expect("open spool");
            let (elapsed, syncs) = enqueue(&spool, appenders, messages).await;
            spool.close().await;
            let reference = match (fsync, appenders) {
                (Fsync::Always, 1) => synced_reference,
                (Fsync::Always, _) => {
                    // Same message count as the run: scale the measured per-message cost.
                    synced_reference.mul_f64(messages as f64 / sizes.synced as f64)
                }
                _ => plain_reference.mul_f64(messages as f64 / sizes.fast as f64),
            };
            rows.push(Row {
                case: format!("enqueue fsync={name}, {appenders} appender(s)"),
                messages,
                elapsed,
                syncs: Some(syncs),
                reference: Some(reference),
            });
        }
    }
    let dir = Scratch::new("memory");
    let (spool, consumer, _) = Spool::open(SpoolConfig {
        durability: Durability::Offline,
        memory_bytes: 1 << 30,
        ..config(&dir, Fsync::Always)
    })
    .expect("open spool");
    consumer.set_online(true);
    let (elapsed, syncs) = enqueue(&spool, 1, sizes.fast).await;
    // Closed before the directory goes, so the writer's last round finds it.
    spool.close().await;
    rows.push(Row {
        case: "enqueue durability=offline (memory), 1".into(),
        messages: sizes.fast,
        elapsed,
        syncs: Some(syncs),
        reference: Some(plain_reference),
    });
    rows
}

/// Replay rates: a restarted spool read from disk, and a live one read from memory.
async fn replay_rows(sizes: &Sizes) -> Vec<Row> {
    let mut rows = Vec::new();
    let dir = Scratch::new("replay");
    {
        let (spool, _consumer, _) = Spool::open(config(&dir, Fsync::Never)).expect("open spool");
        enqueue(&spool, 8, sizes.fast).await;
        spool.close().await;
    }
    let (restarted, mut consumer, recovery) =
        Spool::open(config(&dir, Fsync::Never)).expect("reopen spool");
    assert_eq!(recovery.records as usize, sizes.fast);
    let start = Instant::now();
    let mut n = 0;
    while let Some(record) = consumer.try_next().await.expect("read") {
        consumer.ack(record.seq);
        n += 1;
    }
    assert_eq!(n, sizes.fast);
    restarted.close().await;
    rows.push(Row {
        case: "replay from disk after restart (+ ack)".into(),
        messages: n,
        elapsed: start.elapsed(),
        syncs: None,
        reference: None,
    });
    let dir = Scratch::new("replay-memory");
    let (spool, mut consumer, _) = Spool::open(SpoolConfig {
        memory_bytes: 1 << 30,
        ..config(&dir, Fsync::Never)
    })
    .expect("open spool");
    enqueue(&spool, 8, sizes.fast).await;
    let start = Instant::now();
    let mut n = 0;
    while let Some(record) = consumer.try_next().await.expect("read") {
        consumer.ack(record.seq);
        n += 1;
    }
    spool.close().await;
    rows.push(Row {
        case: "replay from memory (+ ack)".into(),
        messages: n,
        elapsed: start.elapsed(),
        syncs: None,
        reference: None,
    });
    rows
}

/// Bytes written while a consumer keeps up, extrapolated to an hour at 10 messages a
/// second; offline mode against disk mode.
async fn healthy_writes(sizes: &Sizes) -> Vec<(String, SpoolStats, f64)> {
    let mut out = Vec::new();
    for (name, durability) in [("offline", Durability::Offline), ("disk", Durability::Disk)] {
        let dir = Scratch::new("healthy");
        let (spool, mut consumer, _) = Spool::open(SpoolConfig {
            durability,
            ..config(&dir, Fsync::Interval(Duration::from_secs(1)))
        })
        .expect("open spool");
        consumer.set_online(true);
        let before = spool.stats();
        for n in 0..sizes.fast {
            spool.append(message(n)).await.expect("append");
            let record = consumer.next().await.expect("next");
            consumer.ack(record.seq);
        }
        let after = spool.stats();
        let per_message = (after.bytes_written - before.bytes_written) as f64 / sizes.fast as f64;
        out.push((name.to_string(), after, per_message * 10.0 * 3600.0));
        spool.close().await;
    }
    out
}

/// Fills a spool to `bytes`, closes it, and times opening it again.
async fn recovery(bytes: u64) -> (u64, u64, Duration) {
    let dir = Scratch::new("recovery");
    let cfg = SpoolConfig {
        max_bytes: bytes * 2,
        segment_bytes: SpoolConfig::DEFAULT_SEGMENT_BYTES.min(bytes / 4),
        ..config(&dir, Fsync::Never)
    };
    {
        let (spool, _consumer, _) = Spool::open(cfg.clone()).expect("open spool");
        while spool.stats().disk_bytes < bytes {
            enqueue(&spool, 64, 64 * 100).await;
        }
        spool.close().await;
    }
    let start = Instant::now();
    let (_spool, _consumer, recovery) = Spool::open(cfg).expect("reopen spool");
    let elapsed = start.elapsed();
    (recovery.bytes, recovery.records, elapsed)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full { FULL } else { QUICK };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let frame = frame_size().await;
        println!(
            "spool benchmark ({}): {PAYLOAD}-byte payloads, {frame}-byte frames, temp dir {}",
            if full { "full" } else { "quick" },
            std::env::temp_dir().display()
        );
        println!(
            "{:<44} {:>9} {:>12} {:>9} {:>9} {:>10}",
            "case", "messages", "msg/s", "us/msg", "syncs/msg", "vs ref"
        );
        for row in enqueue_rows(&sizes, frame).await {
            row.print();
        }
        for row in replay_rows(&sizes).await {
            row.print();
        }
        println!();
        println!(
            "consumer keeping up (append, take, ack), fsync=interval 1s \
             (disk mode also rewrites its 32-byte cursor at most once a second):"
        );
        for (name, stats, per_hour) in healthy_writes(&sizes).await {
            println!(
                "  durability={name:<8} {:>10} bytes written for {} messages: {:>12.0} bytes/hour at 10 msg/s",
                stats.bytes_written, stats.delivered, per_hour
            );
        }
        println!();
        let (bytes, records, elapsed) = recovery(sizes.recovery_bytes).await;
        println!(
            "recovery: {:.0} MiB, {records} records in {:.3}s ({:.0} MiB/s, page cache warm)",
            bytes as f64 / (1 << 20) as f64,
            elapsed.as_secs_f64(),
            bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
        );
    });
}
