//! What the gateway counts, for Prometheus (`/metrics`, OpenMetrics text) and for the
//! retained `<prefix>/status` JSON: per device polls, errors, poll latency and the time
//! of the last success; the local broker's connections and messages; the upstream
//! spool's depth, drops and bytes on disk. Also the optional HTTP listener serving
//! `/metrics` and `/healthz`. It counts what it is told; it must not decide health or
//! touch devices.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabel {
    device: String,
}

/// The figures the broker and the spool keep themselves, copied in now and then.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub broker_connections: u64,
    pub broker_messages_received: u64,
    pub broker_messages_sent: u64,
    pub broker_messages_dropped: u64,
    pub spool_pending: u64,
    pub spool_disk_bytes: u64,
    pub spool_enqueued: u64,
    pub spool_delivered: u64,
    /// Dropped by `on_full: drop_oldest` (`dropped.full` on `<prefix>/$SYS/spool`).
    pub spool_dropped: u64,
    /// Refused by `on_full: reject_new`.
    pub spool_rejected: u64,
    pub upstream_qos0_dropped: u64,
}

/// The gateway's counters (shared by its tasks).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    polls: Family<DeviceLabel, Counter>,
    errors: Family<DeviceLabel, Counter>,
    poll_seconds: Family<DeviceLabel, Histogram, fn() -> Histogram>,
    last_success: Family<DeviceLabel, Gauge<f64, AtomicU64>>,
    broker_connections: Gauge,
    broker_received: Counter,
    broker_sent: Counter,
    broker_dropped: Counter,
    spool_pending: Gauge,
    spool_disk_bytes: Gauge,
    spool_enqueued: Counter,
    spool_delivered: Counter,
    spool_dropped: Counter,
    spool_rejected: Counter,
    upstream_qos0_dropped: Counter,
    /// The last snapshot copied in: counters only move forward by the difference.
    last: std::sync::Mutex<Snapshot>,
    healthy: AtomicBool,
}

/// Poll latency buckets: 1 ms (a sim point) to about 8 s (a slow RS-485 bus with
/// retries).
fn poll_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 14,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("fieldgate");
        let polls = Family::<DeviceLabel, Counter>::default();
        let errors = Family::<DeviceLabel, Counter>::default();
        let poll_seconds =
            Family::<DeviceLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                poll_histogram,
            );
        let last_success = Family::<DeviceLabel, Gauge<f64, AtomicU64>>::default();
        registry.register("device_polls", "Successful device reads", polls.clone());
        registry.register(
            "device_errors",
            "Failed device reads and writes",
            errors.clone(),
        );
        registry.register(
            "device_poll_seconds",
            "Time one poll of a device took",
            poll_seconds.clone(),
        );
        registry.register(
            "device_last_success_timestamp_seconds",
            "When a device last answered (Unix time; its age is time() minus this)",
            last_success.clone(),
        );
        let metrics = Metrics {
            polls,
            errors,
            poll_seconds,
            last_success,
            broker_connections: Gauge::default(),
            broker_received: Counter::default(),
            broker_sent: Counter::default(),
            broker_dropped: Counter::default(),
            spool_pending: Gauge::default(),
            spool_disk_bytes: Gauge::default(),
            spool_enqueued: Counter::default(),
            spool_delivered: Counter::default(),
            spool_dropped: Counter::default(),
            spool_rejected: Counter::default(),
            upstream_qos0_dropped: Counter::default(),
            last: std::sync::Mutex::new(Snapshot::default()),
            healthy: AtomicBool::new(true),
            registry,
        };
        metrics.register_gauges()
    }

    fn register_gauges(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "broker_connections",
            "Clients connected to the local broker",
            self.broker_connections.clone(),
        );
        r.register(
            "broker_messages_received",
            "PUBLISH packets the local broker received",
            self.broker_received.clone(),
        );
        r.register(
            "broker_messages_sent",
            "PUBLISH packets the local broker sent",
            self.broker_sent.clone(),
        );
        r.register(
            "broker_messages_dropped",
            "Messages the local broker dropped (full queues, offline QoS 0)",
            self.broker_dropped.clone(),
        );
        r.register(
            "spool_pending",
            "Upstream messages waiting in the spool",
            self.spool_pending.clone(),
        );
        r.register(
            "spool_disk_bytes",
            "Bytes the spool holds on disk",
            self.spool_disk_bytes.clone(),
        );
        r.register(
            "spool_enqueued",
            "Messages the spool took for the upstream broker",
            self.spool_enqueued.clone(),
        );
        r.register(
            "spool_delivered",
            "Spooled messages the upstream broker acknowledged",
            self.spool_delivered.clone(),
        );
        r.register(
            "spool_dropped",
            "Spooled messages dropped to make room (on_full: drop_oldest)",
            self.spool_dropped.clone(),
        );
        r.register(
            "spool_rejected",
            "Messages the full spool refused (on_full: reject_new)",
            self.spool_rejected.clone(),
        );
        r.register(
            "upstream_qos0_dropped",
            "QoS 0 messages dropped while the upstream was away",
            self.upstream_qos0_dropped.clone(),
        );
        self
    }

    /// A device answered a poll that took `took`.
    pub fn poll_succeeded(&self, device: &str, took: Duration) {
        let label = DeviceLabel {
            device: device.to_owned(),
        };
        self.polls.get_or_create(&label).inc();
        self.poll_seconds
            .get_or_create(&label)
            .observe(took.as_secs_f64());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.last_success.get_or_create(&label).set(now);
    }

    /// A device failed a read or a write.
    pub fn device_failed(&self, device: &str) {
        self.errors
            .get_or_create(&DeviceLabel {
                device: device.to_owned(),
            })
            .inc();
    }

    /// Copies in the broker's and the spool's own figures.
    pub fn update(&self, now: Snapshot, healthy: bool) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let forward = |counter: &Counter, before: u64, after: u64| {
            counter.inc_by(after.saturating_sub(before));
        };
        forward(
            &self.broker_received,
            last.broker_messages_received,
            now.broker_messages_received,
        );
        forward(
            &self.broker_sent,
            last.broker_messages_sent,
            now.broker_messages_sent,
        );
        forward(
            &self.broker_dropped,
            last.broker_messages_dropped,
            now.broker_messages_dropped,
        );
        forward(
            &self.spool_delivered,
            last.spool_delivered,
            now.spool_delivered,
        );
        forward(
            &self.spool_enqueued,
            last.spool_enqueued,
            now.spool_enqueued,
        );
        forward(&self.spool_dropped, last.spool_dropped, now.spool_dropped);
        forward(
            &self.spool_rejected,
            last.spool_rejected,
            now.spool_rejected,
        );
        forward(
            &self.upstream_qos0_dropped,
            last.upstream_qos0_dropped,
            now.upstream_qos0_dropped,
        );
        let gauge = |g: &Gauge, v: u64| {
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        gauge(&self.broker_connections, now.broker_connections);
        gauge(&self.spool_pending, now.spool_pending);
        gauge(&self.spool_disk_bytes, now.spool_disk_bytes);
        *last = now;
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail; an encoding error would be a bug in a
        // metric's name, and the scrape then gets what was written so far.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// The key figures as JSON, for the retained `<prefix>/status`.
    pub fn status_json(&self, summary: &str) -> String {
        let last = *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        serde_json::json!({
            "healthy": self.healthy.load(Ordering::Relaxed),
            "summary": summary,
            "broker": {
                "connections": last.broker_connections,
                "messages_received": last.broker_messages_received,
                "messages_sent": last.broker_messages_sent,
                "messages_dropped": last.broker_messages_dropped,
            },
            // The headline figures, named as on `<prefix>/$SYS/spool` (which has them
            // all, sooner).
            "spool": {
                "enqueued": last.spool_enqueued,
                "delivered": last.spool_delivered,
                "dropped_full": last.spool_dropped,
                "rejected": last.spool_rejected,
                "pending": last.spool_pending,
                "disk_bytes": last.spool_disk_bytes,
            },
            "upstream_qos0_dropped": last.upstream_qos0_dropped,
        })
        .to_string()
    }

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// Errors of the metrics listener.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Requests larger than this are not HTTP requests a scraper sends.
const MAX_REQUEST: usize = 8 * 1024;
/// A client that sends no full request line in this long is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Listens on `addr` for `GET /metrics` and `GET /healthz`; returns the bound address
/// and the task.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors and the like: try again shortly.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let metrics = Arc::clone(&metrics);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &metrics)).await;
            });
        }
    });
    Ok((bound, task))
}

/// Reads one request's head and answers it; the connection then closes.
async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_REQUEST {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (status, content_type, body) = match (words.next(), words.next()) {
        (Some("GET"), Some("/metrics")) => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        (Some("GET"), Some("/healthz")) if metrics.is_healthy() => {
            ("200 OK", "text/plain", "ok\n".to_string())
        }
        (Some("GET"), Some("/healthz")) => (
            "503 Service Unavailable",
            "text/plain",
            "unhealthy\n".to_string(),
        ),
        (Some("GET"), _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    let mut response = String::new();
    let _ = write!(
        response,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_move_by_the_difference_and_devices_get_their_own_series() {
        let metrics = Metrics::new();
        metrics.poll_succeeded("meter", Duration::from_millis(12));
        metrics.poll_succeeded("meter", Duration::from_millis(30));
        metrics.device_failed("pump");
        let snapshot = Snapshot {
            broker_connections: 3,
            broker_messages_received: 10,
            spool_pending: 7,
            spool_enqueued: 9,
            spool_rejected: 2,
            ..Snapshot::default()
        };
        metrics.update(snapshot, true);
        metrics.update(
            Snapshot {
                broker_messages_received: 15,
                ..snapshot
            },
            true,
        );
        let text = metrics.encode();
        assert!(
            text.contains("fieldgate_device_polls_total{device=\"meter\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("fieldgate_device_errors_total{device=\"pump\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("fieldgate_device_poll_seconds_count{device=\"meter\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("fieldgate_broker_messages_received_total 15"),
            "{text}"
        );
        assert!(text.contains("fieldgate_broker_connections 3"), "{text}");
        assert!(text.contains("fieldgate_spool_pending 7"), "{text}");
        assert!(text.contains("fieldgate_device_last_success_timestamp_seconds{device=\"meter\"}"));
        let status: serde_json::Value = serde_json::from_str(&metrics.status_json("ok")).unwrap();
        assert_eq!(status["spool"]["pending"], 7);
        assert!(text.contains("fieldgate_spool_enqueued_total 9"), "{text}");
        assert!(text.contains("fieldgate_spool_rejected_total 2"), "{text}");
        assert_eq!(status["spool"]["rejected"], 2);
        assert_eq!(status["spool"]["dropped_full"], 0);
        assert_eq!(status["healthy"], true);
    }

    #[tokio::test]
    async fn the_listener_serves_metrics_and_health_and_refuses_the_rest() {
        let metrics = Arc::new(Metrics::new());
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), Arc::clone(&metrics))
            .await
            .unwrap();
        let get = |path: &'static str| async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut reply = String::new();
            stream.read_to_string(&mut reply).await.unwrap();
            reply
        };
        let reply = get("/metrics").await;
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(
            reply.contains("# TYPE fieldgate_broker_connections gauge"),
            "{reply}"
        );
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200 OK"));
        metrics.update(Snapshot::default(), false);
        assert!(get("/healthz").await.starts_with("HTTP/1.1 503"));
        assert!(get("/nothing").await.starts_with("HTTP/1.1 404"));
        task.abort();
    }
}
