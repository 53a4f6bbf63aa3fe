//! Upstream path benchmark: is the spool ever the bottleneck, and what does a healthy
//! gateway write to its disk?
//!
//! - Replay drain rate: a backlog of N 100-byte QoS 1 messages left on disk in a
//!   gateway's spool is sent by the real pump (`fieldgate`'s `Gateway`, in process) to
//!   a local mosquitto, timed from the upstream connection to the last PUBACK; against
//!   the rate the same mosquitto accepts a fresh QoS 1 stream of the same messages from
//!   our client (`mqtt::client`, pipelined), in the same run, runs alternating, best of
//!   each. Goal: the drain at least 0.8x the fresh stream. The box is shared and other
//!   tenants' builds swing single runs by a third either way, so each line also gives
//!   the CPU time per message of this process (the client, and for the drain the whole
//!   gateway) and how busy mosquitto was: those move less with the noise.
//! - Bytes written per hour by a healthy gateway publishing 100 points/s upstream (a
//!   simulated device, 10 counters at QoS 1 every 100 ms) with `durability: offline`
//!   and `durability: disk` (`fsync: interval`, 1 s), from the spool's own counters
//!   (segments and cursor), extrapolated from the measured time.
//!
//! `cargo bench --bench upstream` runs the full measurement; without `--bench` (as
//! `cargo test --all-targets` runs it) every case runs briefly, so the suite notices
//! when one breaks. `FIELDGATE_BENCH_BACKLOG=N` changes the backlog's size.

// A benchmark whose setup fails has nothing to measure: stopping is right.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fieldgate::app::{Gateway, UpstreamStats};
use fieldgate::mqtt::client::{self, ClientEvent, ClientOptions};
use fieldgate::mqtt::packet::{ProtocolVersion, Publish, PublishProperties, QoS};
use fieldgate::mqtt::session::client::ClientConfig;
use fieldgate::mqtt::string::MqttString;
use fieldgate::mqtt::topic::TopicName;
use fieldgate::spool::{Spool, SpoolConfig};
use fieldgate::storage::Fsync;

use support::{Mosquitto, TempDir};

const TOPIC: &str = "fieldgate/bench/pump-3/temperature";
const PAYLOAD: usize = 100;
/// mosquitto's Receive Maximum for us (its `max_inflight_messages`), as in the client
/// benchmark.
const WINDOW: usize = 100;

struct Sizes {
    backlog: u64,
    runs: usize,
    healthy: Duration,
}

const FULL: Sizes = Sizes {
    backlog: 100_000,
    runs: 5,
    healthy: Duration::from_secs(30),
};
const QUICK: Sizes = Sizes {
    backlog: 2_000,
    runs: 1,
    healthy: Duration::from_secs(1),
};

fn message(n: u64) -> Publish {
    let payload = format!("{n:0>PAYLOAD$}");
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicName::try_from(TOPIC).expect("constant topic"),
        packet_id: None,
        payload: Bytes::from(payload),
        properties: PublishProperties::default(),
    }
}

/// Wall time, this process's CPU time and mosquitto's over one measured stretch.
#[derive(Debug, Clone, Copy)]
struct Cost {
    wall: Duration,
    ours: Duration,
    broker: Duration,
}

/// Takes CPU readings at the start of a stretch.
struct Meter {
    broker_pid: u32,
    start: Instant,
    ours: Duration,
    broker: Duration,
}

impl Meter {
    fn start(broker_pid: u32) -> Meter {
        Meter {
            broker_pid,
            start: Instant::now(),
            ours: support::cpu_time(std::process::id()),
            broker: support::cpu_time(broker_pid),
        }
    }

    fn stop(&self) -> Cost {
        Cost {
            wall: self.start.elapsed(),
            ours: support::cpu_time(std::process::id()).saturating_sub(self.ours),
            broker: support::cpu_time(self.broker_pid).saturating_sub(self.broker),
        }
    }
}

/// How long mosquitto takes a fresh stream of `n` QoS 1 messages from our client:
/// from the first publish to the last PUBACK.
async fn fresh_stream(port: u16, broker_pid: u32, n: u64, run: usize) -> Cost {
    let id = MqttString::try_from(format!("bench-fresh-{run}").as_str()).unwrap();
    let options = ClientOptions::new(
        "127.0.0.1",
        port,
        ClientConfig::new(ProtocolVersion::V5, id),
    );
    let (handle, mut events) = client::spawn(options).unwrap();
    loop {
        match events.recv().await {
            Some(ClientEvent::Connected { .. }) => break,
            Some(_) => {}
            None => panic!("the client stopped before connecting"),
        }
    }
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let meter = Meter::start(broker_pid);
    let mut deliveries = VecDeque::with_capacity(n as usize);
    for i in 0..n {
        deliveries.push_back(handle.enqueue(message(i)).await.unwrap());
    }
    for delivery in deliveries {
        delivery.await.expect("PUBACK");
    }
    let cost = meter.stop();
    handle.disconnect().await;
    cost
}

/// A gateway on `state_dir` with its broker on a free port, mosquitto on `port`
/// upstream, the spool settings given, and `devices` (YAML, may be empty).
fn gateway_config(state_dir: &Path, port: u16, spool: &str, devices: &str) -> String {
    format!(
        "gateway:\n  id: bench\n  state_dir: {}\nbroker:\n  listeners:\n    - bind: 127.0.0.1:0\n\
         upstream:\n  url: mqtt://127.0.0.1:{port}\n  spool:\n{spool}\ndevices:\n{devices}",
        state_dir.display()
    )
}

async fn start_gateway(yaml: &str) -> Gateway {
    let config = fieldgate::config::parse(yaml, Path::new(".")).expect("a valid configuration");
    Gateway::start(config).await.expect("the gateway starts")
}

fn stats(gateway: &Gateway) -> UpstreamStats {
    gateway.upstream_stats().expect("an upstream")
}

/// Polls the gateway's counters (1 ms) until `cond`.
async fn wait_for(gateway: &Gateway, what: &str, cond: impl Fn(&UpstreamStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if cond(&stats(gateway)) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Leaves `n` messages in a spool under `state_dir` (as a gateway that could not reach
/// its upstream would), then lets a gateway's pump send them: the time from the
/// upstream connection to the last PUBACK.
async fn drain(port: u16, broker_pid: u32, n: u64) -> Cost {
    let state = TempDir::new("bench-upstream-drain");
    {
        let (spool, _consumer, _) = Spool::open(SpoolConfig {
            fsync: Fsync::Never,
            max_bytes: 1 << 30,
            ..SpoolConfig::new(state.path().join("spool"))
        })
        .expect("open the spool");
        let mut taken = Vec::new();
        for i in 0..n {
            taken.push(spool.enqueue(message(i)).await.expect("enqueue"));
        }
        for t in taken {
            t.durable().await.expect("written");
        }
        spool.close().await;
    }
    let spool = "    max_bytes: 1GiB\n    fsync: interval";
    let gateway = start_gateway(&gateway_config(state.path(), port, spool, "  []\n")).await;
    assert_eq!(stats(&gateway).recovery.records, n, "the backlog is there");
    wait_for(&gateway, "the upstream connection", |s| s.connected).await;
    let meter = Meter::start(broker_pid);
    wait_for(&gateway, "the backlog drained", |s| s.spool.delivered == n).await;
    let cost = meter.stop();
    gateway.shutdown().await;
    cost
}

/// A healthy gateway publishing 100 points/s for `time`: bytes the spool wrote (and its
/// syncs), and messages delivered.
async fn healthy(port: u16, durability: &str, time: Duration) -> (u64, u64, u64, Duration) {
    let state = TempDir::new("bench-upstream-healthy");
    let mut devices =
        String::from("  - id: pump-3\n    source: sim\n    poll: 100ms\n    points:\n");
    for i in 0..10 {
        devices.push_str(&format!("      - {{id: c{i}, sim: counter, qos: 1}}\n"));
    }
    let spool =
        format!("    durability: {durability}\n    fsync: interval\n    fsync_interval: 1s");
    let gateway = start_gateway(&gateway_config(state.path(), port, &spool, &devices)).await;
    wait_for(&gateway, "the upstream connection", |s| s.connected).await;
    // Past the start: the first readings and the first cursor.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = stats(&gateway).spool;
    let start = Instant::now();
    tokio::time::sleep(time).await;
    let after = stats(&gateway).spool;
    let elapsed = start.elapsed();
    gateway.shutdown().await;
    (
        after.bytes_written - before.bytes_written,
        after.syncs - before.syncs,
        after.delivered - before.delivered,
        elapsed,
    )
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if support::mosquitto_bin().is_none() {
        if support::peers_required() {
            panic!("mosquitto is needed: run tests/run.sh");
        }
        println!("upstream benchmark skipped: mosquitto is not installed");
        return;
    }
    let mut sizes = if full { FULL } else { QUICK };
    if let Some(n) = std::env::var("FIELDGATE_BENCH_BACKLOG")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        sizes.backlog = n;
    }
    let broker = Mosquitto::start_with_config(&format!(
        "max_inflight_messages {WINDOW}\nmax_queued_messages 0\n"
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let n = sizes.backlog;
        println!(
            "upstream benchmark ({}): {n} messages of {PAYLOAD} bytes at QoS 1, mosquitto window {WINDOW}, best of {} runs, temp dir {}",
            if full { "full" } else { "quick" },
            sizes.runs,
            std::env::temp_dir().display()
        );
        let (mut fresh, mut drained) = (Vec::new(), Vec::new());
        // Alternating, so that noise from other tenants hits both.
        for run in 0..sizes.runs {
            fresh.push(fresh_stream(broker.port(), broker.pid(), n, run).await);
            drained.push(drain(broker.port(), broker.pid(), n).await);
        }
        let best = |costs: &[Cost]| costs.iter().copied().min_by_key(|c| c.wall).unwrap();
        let (fresh, drained) = (best(&fresh), best(&drained));
        let rate = |c: Cost| n as f64 / c.wall.as_secs_f64();
        let row = |name: &str, c: Cost| {
            println!(
                "{name:<50} {:>9.0} {:>13.2} {:>13.0}%",
                rate(c),
                c.ours.as_secs_f64() * 1e6 / n as f64,
                c.broker.as_secs_f64() * 100.0 / c.wall.as_secs_f64()
            );
        };
        println!(
            "{:<50} {:>9} {:>14} {:>14}",
            "case (best run)", "msg/s", "our CPU us/msg", "mosquitto busy"
        );
        row("fresh QoS 1 stream from our client (reference)", fresh);
        row("backlog on disk drained by the gateway's pump", drained);
        println!(
            "drain rate {:.2}x the fresh stream's (goal >= 0.8x); CPU per message {:.2}x",
            rate(drained) / rate(fresh),
            drained.ours.as_secs_f64() / fresh.ours.as_secs_f64()
        );
        println!();
        println!(
            "healthy gateway, 100 points/s at QoS 1, fsync=interval 1s, measured for {:?}:",
            sizes.healthy
        );
        for durability in ["offline", "disk"] {
            let (bytes, syncs, delivered, elapsed) =
                healthy(broker.port(), durability, sizes.healthy).await;
            let per_hour = |x: u64| x as f64 * 3600.0 / elapsed.as_secs_f64();
            println!(
                "  durability={durability:<8} {:>12.0} bytes/hour ({:>8.0} syncs/hour), {:.0} messages/s delivered",
                per_hour(bytes),
                per_hour(syncs),
                delivered as f64 / elapsed.as_secs_f64()
            );
        }
    });
}
