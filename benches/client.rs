//! Client throughput and footprint against mosquitto's own clients, in the same run.
//!
//! Publishes N 100-byte messages from stdin lines with `fieldgate pub -l`, with
//! `mosquitto_pub -l` and with a paho-mqtt script (when the test venv exists) to the same
//! local mosquitto (window 100: the broker's Receive Maximum), at QoS 0 and QoS 1,
//! alternating runs so that noise from other tenants hits all, and reports messages per
//! second and CPU per message, as ratios. On this 2-core box the broker itself caps the
//! rate near mosquitto_pub's (two mosquitto_pubs together gain little), so CPU per
//! message is the fairer cost. Then it measures the resident memory of an idle
//! `fieldgate sub` next to an idle `mosquitto_sub`.
//!
//! A rate counts only what reached the broker: each run's messages are read from the
//! broker's own `$SYS/broker/publish/messages/received` counter, not assumed from the
//! input. (Fix: the first version divided the input size by the time, and credited
//! `mosquitto_pub -l` at QoS 1 with messages it never sent: it exits 0 at the end of
//! its input with about two thirds of 200,000 lines still queued, and they are lost.)
//!
//! `cargo bench --bench client` runs the full measurement; without `--bench` (as
//! `cargo test --all-targets` runs it) it does a short pass to prove the harness works.

// A benchmark that cannot start its peers has nothing to measure: stopping is right.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Mosquitto;

/// The broker's Receive Maximum (mosquitto's `max_inflight_messages`): 100 by default,
/// as the issue asks; `FIELDGATE_BENCH_WINDOW` changes it, which shows how the window
/// shapes the exchange (our client sends what each batch of acknowledgements frees).
const DEFAULT_WINDOW: usize = 100;

fn payload_lines(n: u64) -> Vec<u8> {
    let mut input = Vec::with_capacity(n as usize * 101);
    for i in 0..n {
        // 100 bytes of payload, then the newline that `-l` splits on.
        let line = format!("{i:0>100}");
        input.extend_from_slice(&line.as_bytes()[line.len() - 100..]);
        input.push(b'\n');
    }
    input
}

/// Wall time and CPU time (user + system) of one publisher run.
#[derive(Clone, Copy)]
struct Cost {
    wall: Duration,
    cpu: Duration,
    /// Messages the broker counted as received during the run.
    delivered: u64,
    /// The broker's own CPU time during the run: near `wall`, the broker is the limit.
    broker_cpu: Duration,
}

impl Cost {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.wall.as_secs_f64()
    }

    /// CPU time per delivered message, in nanoseconds.
    fn cpu_per_message(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e9 / self.delivered.max(1) as f64
    }
}

/// The broker's count of PUBLISH packets received, as its `$SYS` tree reports it once a
/// second (`sys_interval 1`), read by a `mosquitto_sub` that stays connected.
struct ReceivedCounter {
    updates: std::sync::mpsc::Receiver<u64>,
    latest: u64,
    child: std::process::Child,
}

impl ReceivedCounter {
    fn start(port: &str) -> Self {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", port])
            .args(["-t", "$SYS/broker/publish/messages/received"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, updates) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Some(value) = line.ok().and_then(|l| l.trim().parse().ok()) else {
                    return;
                };
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        let mut counter = ReceivedCounter {
            updates,
            latest: 0,
            child,
        };
        // The retained value arrives at once: the counter is live from here on.
        counter.latest = counter
            .updates
            .recv_timeout(Duration::from_secs(10))
            .expect("the broker publishes its $SYS counter");
        counter
    }

    /// The latest value, without waiting.
    fn current(&mut self) -> u64 {
        while let Ok(value) = self.updates.try_recv() {
            self.latest = value;
        }
        self.latest
    }

    /// Waits until the counter has grown by `expected` since `before`, or has stopped
    /// moving (no update for 2.5 $SYS intervals: what was lost stays lost), and returns
    /// the growth.
    fn settle(&mut self, before: u64, expected: u64) -> u64 {
        loop {
            if self.latest >= before + expected {
                break;
            }
            match self.updates.recv_timeout(Duration::from_millis(2500)) {
                Ok(value) => self.latest = value,
                Err(_) => break,
            }
        }
        self.latest - before
    }
}

impl Drop for ReceivedCounter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses the line bash's `times` prints for children ("0m0.345s 0m0.012s").
fn parse_times(line: &str) -> Option<Duration> {
    let mut total = 0.0;
    for part in line.split_whitespace() {
        let (minutes, seconds) = part.trim_end_matches('s').split_once('m')?;
        total += minutes.parse::<f64>().ok()? * 60.0 + seconds.parse::<f64>().ok()?;
    }
    Some(Duration::from_secs_f64(total))
}

/// Runs a publisher reading `input` lines from stdin, under bash so that `times` reports
/// the CPU it used: what a client costs, even where the broker caps the rate.
fn timed_publish(
    command: &[String],
    input: &[u8],
    messages: u64,
    counter: &mut ReceivedCounter,
    broker: u32,
) -> Cost {
    let before = counter.current();
    let broker_before = cpu_time(broker);
    let start = Instant::now();
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(r#""$@" && times"#)
        .arg("publisher")
        .args(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("publisher starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input)
        .expect("publisher reads its input");
    let out = support::wait_child_output(child, Duration::from_secs(300));
    let wall = start.elapsed();
    let broker_cpu = cpu_time(broker).saturating_sub(broker_before);
    assert!(
        out.status.success(),
        "publisher failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `times` prints the shell's own line, then its children's.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let cpu = stdout
        .lines()
        .nth(1)
        .and_then(parse_times)
        .expect("bash's times output");
    let delivered = counter.settle(before, messages);
    Cost {
        wall,
        cpu,
        delivered,
        broker_cpu,
    }
}

fn command(program: &str, args: &[&str]) -> Vec<String> {
    std::iter::once(program)
        .chain(args.iter().copied())
        .map(String::from)
        .collect()
}

fn ours(port: &str, qos: &str) -> Vec<String> {
    let args = ["pub", "-p", port, "-q", qos, "-t", "bench/ours", "-l"];
    command(env!("CARGO_BIN_EXE_fieldgate"), &args)
}

fn reference(port: &str, qos: &str) -> Vec<String> {
    let args = [
        "-h",
        "127.0.0.1",
        "-p",
        port,
        "-q",
        qos,
        "-t",
        "bench/ref",
        "-l",
        "-V",
        "mqttv5",
    ];
    command("mosquitto_pub", &args)
}

/// The paho-mqtt reference (MQTT 5, the same window): one message per stdin line, then
/// it waits until every one is acknowledged (QoS 1) or handed to the socket (QoS 0).
const PAHO_PUBLISHER: &str = r#"
import collections, sys, threading
import paho.mqtt.client as mqtt
port, qos = int(sys.argv[1]), int(sys.argv[2])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.max_inflight_messages_set(100)
connected = threading.Event()
c.on_connect = lambda *args: connected.set()
c.connect("127.0.0.1", port)
c.loop_start()
connected.wait(10)
# paho's message ids wrap at 65535 and must not collide: keep at most 1000 waiting.
waiting = collections.deque()
for line in sys.stdin.buffer:
    waiting.append(c.publish("bench/paho", line.rstrip(b"\n"), qos=qos))
    if len(waiting) > 1000:
        waiting.popleft().wait_for_publish(60)
for info in waiting:
    info.wait_for_publish(60)
c.disconnect()
c.loop_stop()
"#;

fn paho(python: &std::path::Path, port: &str, qos: &str) -> Vec<String> {
    let python = python.display().to_string();
    command(&python, &["-c", PAHO_PUBLISHER, port, qos])
}

/// CPU time a single-threaded process (mosquitto) has used: the first field of
/// `/proc/PID/schedstat`, in nanoseconds.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap_or_default();
    let ns = stat.split_whitespace().next().and_then(|n| n.parse().ok());
    Duration::from_nanos(ns.expect("the broker's /proc schedstat"))
}

/// A `/proc/PID/status` figure in KiB ("VmRSS:", "RssAnon:").
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident memory of an idle subscriber once mosquitto has acknowledged its SUBSCRIBE:
/// all of it, and the anonymous part (heap and stacks, without mapped files such as the
/// shared C library, which every process on the box shares).
fn idle_rss(broker: &Mosquitto, mut command: Command, id: &str) -> (u64, u64) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("subscriber starts");
    broker.wait_for_suback(id);
    let rss = status_kib(child.id(), "VmRSS:").expect("the subscriber's /proc status");
    let anon = status_kib(child.id(), "RssAnon:").expect("the subscriber's /proc status");
    let _ = child.kill();
    let _ = child.wait();
    (rss, anon)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if support::mosquitto_bin().is_none() || support::find_program("mosquitto_pub").is_none() {
        if support::peers_required() {
            panic!("mosquitto and mosquitto_pub are needed: run tests/run.sh");
        }
        println!("client benchmark skipped: mosquitto is not installed");
        return;
    }
    let (messages, runs) = if full { (200_000u64, 5) } else { (500, 1) };
    let window = std::env::var("FIELDGATE_BENCH_WINDOW")
        .ok()
        .and_then(|w| w.parse::<usize>().ok())
        .unwrap_or(DEFAULT_WINDOW);
    let broker = Mosquitto::start_with_config(&format!(
        "max_inflight_messages {window}\nmax_queued_messages 0\nsys_interval 1\n"
    ));
    let input = payload_lines(messages);
    let mut counter = ReceivedCounter::start(&broker.port().to_string());
    println!(
        "client benchmark: {messages} messages of 100 bytes, window {window}, {runs} runs each, best run"
    );
    let port = broker.port().to_string();
    let python = support::python().filter(|p| p.exists());
    for qos in ["0", "1"] {
        let mut clients: Vec<(&str, Vec<String>)> = vec![
            ("fieldgate pub", ours(&port, qos)),
            ("mosquitto_pub", reference(&port, qos)),
        ];
        if let Some(python) = &python {
            clients.push(("paho-mqtt", paho(python, &port, qos)));
        }
        // Alternate the clients run by run, so that noise from other tenants hits all.
        let mut costs: Vec<Vec<Cost>> = vec![Vec::new(); clients.len()];
        for _ in 0..runs {
            for (i, (_, command)) in clients.iter().enumerate() {
                costs[i].push(timed_publish(
                    command,
                    &input,
                    messages,
                    &mut counter,
                    broker.pid(),
                ));
            }
        }
        // Best run by rate; the CPU figure is the lowest per delivered message.
        let best_rate = |r: &[Cost]| r.iter().map(Cost::rate).fold(0.0, f64::max);
        let best_cpu = |r: &[Cost]| {
            r.iter()
                .map(Cost::cpu_per_message)
                .fold(f64::INFINITY, f64::min)
        };
        let fewest = |r: &[Cost]| r.iter().map(|c| c.delivered).min().unwrap_or(0);
        // How busy the broker was in the client's fastest run.
        let broker_busy = |r: &[Cost]| {
            r.iter()
                .max_by(|a, b| a.rate().total_cmp(&b.rate()))
                .map_or(0.0, |c| c.broker_cpu.as_secs_f64() / c.wall.as_secs_f64())
        };
        let (ours_rate, ours_cpu) = (best_rate(&costs[0]), best_cpu(&costs[0]));
        println!(
            "QoS {qos}: fieldgate pub {ours_rate:>8.0} msg/s, {ours_cpu:>5.0} ns CPU per message, \
             fewest delivered in a run {}/{messages}, broker busy {:.0}% of the best run",
            fewest(&costs[0]),
            broker_busy(&costs[0]) * 100.0
        );
        for ((name, _), runs) in clients.iter().zip(&costs).skip(1) {
            let (rate, cpu) = (best_rate(runs), best_cpu(runs));
            println!(
                "       {name:<13} {rate:>8.0} msg/s, {cpu:>5.0} ns CPU per message, \
                 fewest delivered in a run {}/{messages}, broker busy {:.0}%: \
                 fieldgate pub has {:.2}x its rate and uses {:.2}x its CPU",
                fewest(runs),
                broker_busy(runs) * 100.0,
                ours_rate / rate,
                ours_cpu / cpu,
            );
        }
        assert_eq!(
            fewest(&costs[0]),
            messages,
            "fieldgate pub lost messages: every one it accepted must reach the broker"
        );
    }
    let mut ours_sub = Command::new(env!("CARGO_BIN_EXE_fieldgate"));
    ours_sub.args(["sub", "-p", &port, "-t", "idle/#", "-i", "fg-idle"]);
    let mut ref_sub = Command::new("mosquitto_sub");
    ref_sub.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        "idle/#",
        "-i",
        "mosq-idle",
    ]);
    let (ours_rss, ours_anon) = idle_rss(&broker, ours_sub, "fg-idle");
    let (ref_rss, ref_anon) = idle_rss(&broker, ref_sub, "mosq-idle");
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "idle subscriber RSS: fieldgate sub {:.2} MiB, mosquitto_sub {:.2} MiB: {:.2}x",
        mib(ours_rss),
        mib(ref_rss),
        ours_rss as f64 / ref_rss as f64
    );
    println!(
        "  anonymous part (heap, stacks): fieldgate sub {:.2} MiB, mosquitto_sub {:.2} MiB",
        mib(ours_anon),
        mib(ref_anon)
    );
    if full {
        // The deployment build (README): statically linked, so no shared C library is
        // mapped and only the parts of it we use are resident.
        match static_build() {
            Ok(binary) => {
                let mut static_sub = Command::new(binary);
                static_sub.args(["sub", "-p", &port, "-t", "idle/#", "-i", "fg-static-idle"]);
                let (rss, anon) = idle_rss(&broker, static_sub, "fg-static-idle");
                println!(
                    "  static build (crt-static): fieldgate sub {:.2} MiB ({:.2} MiB anonymous): {:.2}x mosquitto_sub",
                    mib(rss),
                    mib(anon),
                    rss as f64 / ref_rss as f64
                );
            }
            Err(why) => println!("  static build not measured: {why}"),
        }
    }
}

/// Builds the statically linked release binary the README describes, in its own target
/// directory (so this does not wait on the benchmark's own build lock), and returns it.
fn static_build() -> Result<std::path::PathBuf, String> {
    let rustc = Command::new("rustc")
        .arg("-vV")
        .output()
        .map_err(|e| format!("rustc: {e}"))?;
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .ok_or("rustc -vV names no host")?;
    let target_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/static");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--bin",
            "fieldgate",
            "--target",
            &host,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build --target {host} with crt-static failed"
        ));
    }
    Ok(target_dir.join(host).join("release/fieldgate"))
}
