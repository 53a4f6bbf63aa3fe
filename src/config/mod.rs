//! The YAML configuration: read, checked as a whole, turned into typed settings before
//! anything starts. Every problem found is reported at once with its YAML path and line
//! (`broker.listeners[1].bind: "x" is not an address (line 7)`); unknown keys are
//! errors. `raw` mirrors the file; this module gives it meaning. It must not start
//! anything: callers (the broker, the gateway) take the result.
//!
//! Sections so far: `gateway` (id, state directory, topic prefix) and `broker`.

mod modbus;
pub mod raw;
pub mod units;

use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroU32};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::mqtt::broker::auth::{Acl, PasswordFile};
use crate::mqtt::broker::persist::PersistConfig;
use crate::mqtt::broker::tls::TlsListenerConfig;
use crate::mqtt::broker::{BrokerConfig, ListenerConfig, Transport};
use crate::spool::{Durability, OnFull, SpoolConfig};
use crate::storage::Fsync;
use raw::{RawBroker, RawConfig, RawLimits, RawSpool, Text};

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: Gateway,
    /// `None` when the file has no `broker:` section (no local broker).
    pub broker: Option<BrokerConfig>,
    /// The cloud or plant broker telemetry also goes to, and commands also come from.
    pub upstream: Option<Upstream>,
    pub forward: Vec<Forward>,
    /// Home Assistant discovery prefix, when discovery is on.
    pub discovery_prefix: Option<String>,
    /// Modbus buses, each shared by the devices that name it.
    pub buses: Vec<Bus>,
    pub devices: Vec<Device>,
    /// Where `/metrics` and `/healthz` are served, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Each top-level section as written (canonical JSON), so a reload can tell which
    /// parts of the file changed (a `password_file`'s contents are not part of it).
    pub sections: std::collections::BTreeMap<String, String>,
}

/// A physical link that Modbus devices share; one task owns each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bus {
    pub id: String,
    pub link: crate::modbus::bus::BusConfig,
}

/// A Modbus device: a unit on a bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModbusDevice {
    /// The `id` of a `buses` entry.
    pub bus: String,
    pub unit: u8,
    /// Bounds each request; after `retries` more attempts the read has failed.
    pub timeout: Duration,
    pub retries: u32,
    /// Points at most this many registers (or bits) apart are read in one request;
    /// `None` takes the planner's default.
    pub max_gap: Option<u16>,
    /// The word and byte order of points that do not give their own.
    pub order: crate::modbus::value::Order,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub protocol: crate::mqtt::packet::ProtocolVersion,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keep_alive: Duration,
    /// `Some` for `mqtts://`.
    pub tls: Option<crate::mqtt::client::TlsOptions>,
    /// The offline queue in `<state_dir>/spool` (defaults when the file has no
    /// `spool:`).
    pub spool: SpoolConfig,
}

/// Which broker a forwarding rule takes messages from (it publishes them to the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Local,
    Upstream,
}

/// Copies messages matching `filter` from one broker to the other.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    pub from: Side,
    pub filter: crate::mqtt::topic::TopicFilter,
    /// Topic rewrite: the leading `strip` is removed, then `prefix` put in front.
    pub strip: Option<String>,
    pub prefix: Option<String>,
    pub qos: crate::mqtt::packet::QoS,
}

impl Forward {
    /// The topic a forwarded message gets.
    pub fn rewrite(&self, topic: &str) -> String {
        let rest = match &self.strip {
            Some(strip) => topic.strip_prefix(strip.as_str()).unwrap_or(topic),
            None => topic,
        };
        match &self.prefix {
            Some(prefix) => format!("{prefix}{rest}"),
            None => rest.to_string(),
        }
    }
}

/// A device and the points it reads or writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// A topic level: `<prefix>/<device>/<point>`.
    pub id: String,
    pub source: Source,
    /// How often its points are read.
    pub poll: Duration,
    pub points: Vec<Point>,
}

/// Where a device's values come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Simulated values, for demos and end-to-end tests.
    Sim,
    /// A line-oriented sensor on a serial port.
    Serial(SerialPort),
    /// GPIO lines of this board.
    Gpio(GpioChip),
    /// A unit on a Modbus bus.
    Modbus(ModbusDevice),
}

/// Which GPIO backend drives a device's lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpioBackendKind {
    /// rppal on a Raspberry Pi, gpiocdev elsewhere.
    Auto,
    Rppal,
    /// The Linux GPIO character device (`chip`).
    Gpiocdev,
    /// Files in a directory: `<dir>/<line>` holds `0` or `1` (tests and demos).
    Mock(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpioChip {
    pub backend: GpioBackendKind,
    pub chip: PathBuf,
}

/// One GPIO line of a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpioLine {
    pub line: u32,
    pub output: bool,
    /// Inputs: `Some(true)` pull-up, `Some(false)` pull-down, `None` neither.
    pub pull: Option<bool>,
    /// Outputs: the level set at start.
    pub initial: bool,
    /// Inputs: how long a new level must hold before it counts.
    pub debounce: Duration,
}

/// A serial line: one frame per line, `\n`-terminated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialPort {
    pub path: PathBuf,
    pub baud: u32,
    pub format: FrameFormat,
    /// `None`: `\n`-terminated lines; `Some(n)`: frames of `n` bytes.
    pub frame_length: Option<usize>,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
    pub flow_control: FlowControl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowControl {
    None,
    Software,
    Hardware,
}

/// How a frame is read into point values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameFormat {
    /// `{"temperature": 21.5, "door": true}`
    Json,
    /// `temperature=21.5 door=1` (spaces, commas or semicolons between pairs)
    KeyValue,
    /// A regular expression whose named groups are the fields (checked at load).
    Regex(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub id: String,
    /// For a `sim` device: what the value does.
    pub sim: Option<SimWave>,
    pub unit: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub writable: bool,
    pub qos: crate::mqtt::packet::QoS,
    pub retain: bool,
    /// Report on change: publish only when the value moved by more than this.
    pub deadband: Option<f64>,
    /// With `deadband`: republish an unchanged value at least this often.
    pub heartbeat: Option<Duration>,
    /// Commands older than this (their JSON `ts`) are refused, never executed.
    pub max_age: Option<Duration>,
    /// Publish the bare value instead of the JSON object.
    pub raw_payload: bool,
    /// Home Assistant device class, passed through to discovery.
    pub device_class: Option<String>,
    /// Serial devices: the frame field holding this point.
    pub key: String,
    /// GPIO devices: the point's line.
    pub gpio: Option<GpioLine>,
    /// Modbus devices: the point's table, address, type, order, scale and offset.
    pub modbus: Option<crate::modbus::value::Encoding>,
}

/// A simulated point's behaviour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SimWave {
    /// Between `min` and `max` (default 0..1) over `period`.
    Sine { period: Duration },
    /// Counts up by one each poll.
    Counter,
    /// A boolean that keeps what it is set to (writable).
    Switch,
    /// Keeps the number it is set to (writable), starting at `min` or 0.
    Constant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub id: String,
    /// Where persistent state lives (the broker's journal under `broker/`, the upstream
    /// spool under `spool/`).
    pub state_dir: PathBuf,
    /// Prefix of every topic the gateway publishes: `fieldgate/<id>` unless set.
    pub topic_prefix: String,
    /// What is logged (`gateway.log_level`), before `RUST_LOG` adds to it.
    pub log: crate::observe::LogFilter,
}

/// One thing wrong in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where, as a YAML path: `broker.listeners[1].bind`.
    pub path: String,
    pub line: Option<u64>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not YAML, a wrong type or an unknown key: the parser stops at the first.
    #[error("{0}")]
    Syntax(String),
    /// Everything the checks found, one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The problems, one per line of output.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(problems) => problems.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// The embedded default configuration (`config/fieldgate.yaml`, compiled in).
pub const DEFAULT: &str = include_str!("../../config/fieldgate.yaml");

/// Checks the embedded default; its relative paths are taken from the working directory.
pub fn default_config() -> Result<Config, ConfigError> {
    parse(DEFAULT, Path::new("."))
}

/// Reads and checks a configuration file. Relative paths inside it (password file, TLS
/// files, state directory) are taken relative to the file's directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base)
}

/// Where the systemd credential `name` is: `$CREDENTIALS_DIRECTORY/name` while the
/// service runs (systemd copied it there, readable by the service alone), else `name`
/// in `base` (the configuration's directory: where `LoadCredential=` takes it from, so
/// `check-config` run by root reads the same secret).
fn credential(name: &str, base: &Path) -> PathBuf {
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if Path::new(&dir).join(name).exists() => Path::new(&dir).join(name),
        _ => base.join(name),
    }
}

/// Checks configuration text; relative paths are taken against `base`.
pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| syntax_error(&e))?;
    // The same text once more as plain values: it parsed above, so this cannot fail on
    // syntax; an empty file is no sections.
    let sections = match serde_saphyr::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .map(|(key, value)| (key, value.to_string()))
            .collect(),
        _ => std::collections::BTreeMap::new(),
    };
    let mut check = Checker {
        problems: Vec::new(),
        base: base.to_path_buf(),
    };
    let gateway = check.gateway(&raw);
    let broker = raw
        .broker
        .as_ref()
        .map(|b| check.broker(b, &gateway.state_dir));
    let buses = check.buses(&raw.buses);
    let metrics = raw.metrics.as_ref().and_then(|m| {
        m.bind
            .value
            .parse::<SocketAddr>()
            .map_err(|_| {
                check.problem(
                    "metrics.bind",
                    Some(m.bind.referenced.line()),
                    format!(
                        "{:?} is not an address: write IP:PORT, e.g. 127.0.0.1:9100",
                        m.bind.value
                    ),
                );
            })
            .ok()
    });
    let devices = check.devices(&raw.devices, &buses);
    let upstream = raw
        .upstream
        .as_ref()
        .map(|u| check.upstream(u, &gateway.state_dir));
    let forward = check.forward(&raw.forward, upstream.is_some(), broker.is_some());
    let discovery_prefix = raw.homeassistant.as_ref().map(|ha| {
        ha.discovery_prefix
            .as_ref()
            .map_or_else(|| "homeassistant".to_string(), |p| p.value.clone())
    });
    if check.problems.is_empty() {
        Ok(Config {
            gateway,
            broker,
            upstream,
            forward,
            discovery_prefix,
            buses,
            devices,
            metrics,
            sections,
        })
    } else {
        Err(ConfigError::Invalid(check.problems))
    }
}

fn syntax_error(e: &serde_saphyr::Error) -> ConfigError {
    // The parser's own text names the key or value; add the line when it knows it.
    let message = e.to_string();
    let message = message.lines().next().unwrap_or("invalid YAML").to_string();
    match e.location() {
        Some(at) if !message.contains("line") => {
            ConfigError::Syntax(format!("{message} (line {})", at.line()))
        }
        _ => ConfigError::Syntax(message),
    }
}

struct Checker {
    problems: Vec<Problem>,
    base: PathBuf,
}

impl Checker {
    fn problem(&mut self, path: &str, line: Option<u64>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_string(),
            line,
            message: message.into(),
        });
    }

    fn path(&self, text: &Text) -> PathBuf {
        self.base.join(&text.value)
    }

    /// The upstream password: given, read from a file (its first line), or from a
    /// systemd credential; at most one of the three.
    fn upstream_password(&mut self, raw: &raw::RawUpstream) -> Option<String> {
        let given = [
            ("upstream.password", &raw.password),
            ("upstream.password_file", &raw.password_file),
            ("upstream.password_credential", &raw.password_credential),
        ];
        let mut set = given
            .iter()
            .filter_map(|(key, t)| Some((*key, (*t).as_ref()?)));
        let (key, text) = set.next()?;
        if let Some((second, t)) = set.next() {
            self.problem(
                second,
                Some(t.referenced.line()),
                format!("give only one of password, password_file and password_credential ({key} is set too)"),
            );
            return None;
        }
        let file = match key {
            "upstream.password" => return Some(text.value.clone()),
            "upstream.password_file" => self.path(text),
            _ => {
                if text.value.is_empty() || text.value.contains('/') || text.value == ".." {
                    self.problem(
                        key,
                        Some(text.referenced.line()),
                        format!("{:?} is not a credential name (a file name, as in LoadCredential=NAME:...)", text.value),
                    );
                    return None;
                }
                credential(&text.value, &self.base)
            }
        };
        match std::fs::read_to_string(&file) {
            Ok(content) => Some(content.lines().next().unwrap_or("").to_string()),
            Err(e) => {
                self.problem(
                    key,
                    Some(text.referenced.line()),
                    format!("{}: {e}", file.display()),
                );
                None
            }
        }
    }

    /// One of a few words (`none | even | odd`); a problem naming them all otherwise.
    fn choice<T: Copy>(
        &mut self,
        path: &str,
        text: &Option<Text>,
        choices: &[(&str, T)],
        default: T,
    ) -> T {
        let Some(t) = text else {
            return default;
        };
        match choices.iter().find(|(word, _)| *word == t.value) {
            Some((_, value)) => *value,
            None => {
                let words: Vec<&str> = choices.iter().map(|(w, _)| *w).collect();
                self.problem(
                    path,
                    Some(t.referenced.line()),
                    format!("{:?} is not one of {}", t.value, words.join(", ")),
                );
                default
            }
        }
    }

    fn duration(&mut self, path: &str, text: &Option<Text>, default: Duration) -> Duration {
        match text {
            None => default,
            Some(t) => units::parse_duration(&t.value).unwrap_or_else(|e| {
                self.problem(path, Some(t.referenced.line()), e);
                default
            }),
        }
    }

    fn size(&mut self, path: &str, text: &Option<Text>, default: u64) -> u64 {
        match text {
            None => default,
            Some(t) => units::parse_size(&t.value).unwrap_or_else(|e| {
                self.problem(path, Some(t.referenced.line()), e);
                default
            }),
        }
    }

    fn number(
        &mut self,
        path: &str,
        value: &Option<raw::Number>,
        range: std::ops::RangeInclusive<u64>,
        default: u64,
    ) -> u64 {
        match value {
            None => default,
            Some(n) if range.contains(&n.value) => n.value,
            Some(n) => {
                self.problem(
                    path,
                    Some(n.referenced.line()),
                    format!(
                        "{} is out of range {}..={}",
                        n.value,
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
        }
    }

    fn gateway(&mut self, raw: &RawConfig) -> Gateway {
        let g = &raw.gateway;
        let id = match &g.id {
            Some(id) if id.value.is_empty() || id.value.contains(['/', '+', '#']) => {
                self.problem(
                    "gateway.id",
                    Some(id.referenced.line()),
                    format!(
                        "{:?} must be non-empty without '/', '+' or '#' (it is a topic level)",
                        id.value
                    ),
                );
                "fieldgate".to_string()
            }
            Some(id) => id.value.clone(),
            None => "fieldgate".to_string(),
        };
        let state_dir = match &g.state_dir {
            Some(dir) => self.path(dir),
            // systemd's StateDirectory= sets this; otherwise a directory next to us.
            None => std::env::var_os("STATE_DIRECTORY")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("fieldgate-state")),
        };
        let topic_prefix = g
            .topic_prefix
            .as_ref()
            .map_or_else(|| format!("fieldgate/{id}"), |p| p.value.clone());
        let log = match &g.log_level {
            None => crate::observe::LogFilter::default(),
            Some(spec) => spec
                .value
                .parse()
                .unwrap_or_else(|e: crate::observe::LogFilterError| {
                    self.problem(
                        "gateway.log_level",
                        Some(spec.referenced.line()),
                        e.to_string(),
                    );
                    crate::observe::LogFilter::default()
                }),
        };
        Gateway {
            id,
            state_dir,
            topic_prefix,
            log,
        }
    }

    fn broker(&mut self, raw: &RawBroker, state_dir: &Path) -> BrokerConfig {
        let mut config = BrokerConfig::default();
        for (i, listener) in raw.listeners.iter().enumerate() {
            let path = format!("broker.listeners[{i}]");
            let line = Some(listener.bind.referenced.line());
            let bind = match listener.bind.value.parse::<SocketAddr>() {
                Ok(bind) => bind,
                Err(_) => {
                    self.problem(
                        &format!("{path}.bind"),
                        line,
                        format!(
                            "{:?} is not an address: write IP:PORT, e.g. 0.0.0.0:1883",
                            listener.bind.value
                        ),
                    );
                    continue;
                }
            };
            let transport = match (&listener.tls, listener.websocket) {
                (Some(_), true) => {
                    self.problem(
                        &path,
                        line,
                        "tls and websocket together (wss://) are not supported yet; use one",
                    );
                    continue;
                }
                (Some(tls), false) => Transport::Tls(TlsListenerConfig {
                    cert_file: self.path(&tls.cert_file),
                    key_file: self.path(&tls.key_file),
                    client_ca_file: tls.client_ca_file.as_ref().map(|f| self.path(f)),
                    require_client_cert: tls.require_client_cert,
                }),
                (None, true) => Transport::WebSocket,
                (None, false) => Transport::Tcp,
            };
            if let Transport::Tls(tls) = &transport {
                for file in [&tls.cert_file, &tls.key_file]
                    .into_iter()
                    .chain(tls.client_ca_file.as_ref())
                {
                    if !file.exists() {
                        self.problem(
                            &format!("{path}.tls"),
                            line,
                            format!("{} does not exist", file.display()),
                        );
                    }
                }
                if tls.require_client_cert && tls.client_ca_file.is_none() {
                    self.problem(
                        &format!("{path}.tls.require_client_cert"),
                        line,
                        "needs client_ca_file: the CA that signs client certificates",
                    );
                }
            }
            config.listeners.push(ListenerConfig { bind, transport });
        }
        if raw.listeners.is_empty() {
            self.problem(
                "broker.listeners",
                None,
                "no listener: add one, e.g. `- bind: 127.0.0.1:1883`",
            );
        }
        config.allow_anonymous = raw.allow_anonymous.unwrap_or(raw.password_file.is_none());
        if let Some(file) = &raw.password_file {
            match PasswordFile::load(&self.path(file)) {
                Ok(passwords) => config.authenticator = Some(Arc::new(passwords)),
                Err(e) => self.problem(
                    "broker.password_file",
                    Some(file.referenced.line()),
                    e.to_string(),
                ),
            }
        }
        if let Some(file) = &raw.acl_file {
            match Acl::load(&self.path(file)) {
                Ok(acl) => config.authorizer = Some(Arc::new(acl)),
                Err(e) => self.problem(
                    "broker.acl_file",
                    Some(file.referenced.line()),
                    e.to_string(),
                ),
            }
        }
        if let Some(persistence) = &raw.persistence
            && persistence.enabled != Some(false)
        {
            let fsync = self.fsync(
                "broker.persistence",
                &persistence.fsync,
                &persistence.fsync_interval,
            );
            config.persistence = Some(PersistConfig {
                fsync,
                ..PersistConfig::new(state_dir.join("broker"))
            });
        }
        config.sys_interval = match &raw.sys_interval {
            Some(t) if t.value == "off" => None,
            other => Some(self.duration("broker.sys_interval", other, Duration::from_secs(10))),
        };
        self.limits(&raw.limits, &mut config);
        config
    }

    /// `fsync: always | interval | never` and `fsync_interval` (default 1s) of the
    /// section at `path`.
    fn fsync(&mut self, path: &str, fsync: &Option<Text>, interval: &Option<Text>) -> Fsync {
        let every = self.duration(
            &format!("{path}.fsync_interval"),
            interval,
            Duration::from_secs(1),
        );
        let policy = self.choice(
            &format!("{path}.fsync"),
            fsync,
            &[
                ("always", Some(Fsync::Always)),
                ("interval", None),
                ("never", Some(Fsync::Never)),
            ],
            None,
        );
        policy.unwrap_or(Fsync::Interval(every))
    }

    /// `upstream.spool`: the offline queue's bounds and durability.
    fn spool(&mut self, raw: Option<&RawSpool>, state_dir: &Path) -> SpoolConfig {
        let mut config = SpoolConfig::new(state_dir.join("spool"));
        let Some(raw) = raw else {
            return config;
        };
        let p = |key: &str| format!("upstream.spool.{key}");
        config.durability = self.choice(
            &p("durability"),
            &raw.durability,
            &[("disk", Durability::Disk), ("offline", Durability::Offline)],
            config.durability,
        );
        config.max_bytes = self.size(&p("max_bytes"), &raw.max_bytes, config.max_bytes);
        config.segment_bytes = self.size(
            &p("segment_bytes"),
            &raw.segment_bytes,
            config.segment_bytes,
        );
        config.memory_bytes = self.size(&p("memory_bytes"), &raw.memory_bytes, config.memory_bytes);
        config.on_full = self.choice(
            &p("on_full"),
            &raw.on_full,
            &[
                ("drop_oldest", OnFull::DropOldest),
                ("reject_new", OnFull::RejectNew),
            ],
            config.on_full,
        );
        config.fsync = self.fsync("upstream.spool", &raw.fsync, &raw.fsync_interval);
        if let Some((key, message)) = config.problem() {
            let text = match key {
                "segment_bytes" => &raw.segment_bytes,
                _ => &raw.max_bytes,
            };
            let line = text
                .as_ref()
                .or(raw.max_bytes.as_ref())
                .or(raw.segment_bytes.as_ref())
                .map(|t| t.referenced.line());
            self.problem(&p(key), line, message);
        }
        config
    }

    fn upstream(&mut self, raw: &raw::RawUpstream, state_dir: &Path) -> Upstream {
        let line = Some(raw.url.referenced.line());
        let (tls, rest) = match raw.url.value.split_once("://") {
            Some(("mqtt", rest)) => (false, rest),
            Some(("mqtts", rest)) => (true, rest),
            _ => {
                self.problem(
                    "upstream.url",
                    line,
                    format!(
                        "{:?} must be mqtt://host:port or mqtts://host:port",
                        raw.url.value
                    ),
                );
                (false, "")
            }
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => match port.parse::<u16>() {
                Ok(port) => (host.to_string(), port),
                Err(_) => {
                    self.problem("upstream.url", line, format!("{port:?} is not a port"));
                    (host.to_string(), 1883)
                }
            },
            None => (rest.to_string(), if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() && !rest.is_empty() {
            self.problem("upstream.url", line, "no host");
        }
        let protocol = match raw.protocol.as_ref().map(|p| p.value.as_str()) {
            None | Some("5") | Some("5.0") => crate::mqtt::packet::ProtocolVersion::V5,
            Some("3.1.1") | Some("311") => crate::mqtt::packet::ProtocolVersion::V311,
            Some(other) => {
                self.problem(
                    "upstream.protocol",
                    raw.protocol.as_ref().map(|p| p.referenced.line()),
                    format!("{other:?} is not 5 or 3.1.1"),
                );
                crate::mqtt::packet::ProtocolVersion::V5
            }
        };
        let password = self.upstream_password(raw);
        let keep_alive = self.duration(
            "upstream.keep_alive",
            &raw.keep_alive,
            Duration::from_secs(30),
        );
        let tls = tls.then(|| {
            let files = raw.tls.as_ref();
            crate::mqtt::client::TlsOptions {
                ca_file: files.and_then(|t| t.ca_file.as_ref()).map(|f| self.path(f)),
                system_roots: files.and_then(|t| t.ca_file.as_ref()).is_none(),
                client_cert: files.and_then(|t| match (&t.cert_file, &t.key_file) {
                    (Some(c), Some(k)) => Some((self.path(c), self.path(k))),
                    _ => None,
                }),
                skip_hostname_check: false,
            }
        });
        if tls.is_none() && raw.tls.is_some() {
            self.problem("upstream.tls", line, "TLS settings need an mqtts:// url");
        }
        // The files as the client will load them: a CA file without a certificate, or a
        // key that does not parse, is found here rather than at the first connection.
        // (Only when files are named: the system's roots are the machine's business, and
        // a machine without them is told so when the client connects.)
        if let Some(options) = &tls
            && (options.ca_file.is_some() || options.client_cert.is_some())
            && let Err(e) = crate::mqtt::client::check_tls(options)
        {
            let url_line = line;
            let line = raw.tls.as_ref().and_then(|t| {
                [&t.ca_file, &t.cert_file, &t.key_file]
                    .into_iter()
                    .flatten()
                    .map(|f| f.referenced.line())
                    .next()
            });
            self.problem("upstream.tls", line.or(url_line), e.to_string());
        }
        Upstream {
            host,
            port,
            protocol,
            client_id: raw.client_id.as_ref().map(|c| c.value.clone()),
            username: raw.username.as_ref().map(|u| u.value.clone()),
            password,
            keep_alive,
            tls,
            spool: self.spool(raw.spool.as_ref(), state_dir),
        }
    }

    fn forward(&mut self, raw: &[raw::RawForward], upstream: bool, local: bool) -> Vec<Forward> {
        let mut rules = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            let path = format!("forward[{i}]");
            let line = Some(r.from.referenced.line());
            let from = match r.from.value.as_str() {
                "local" => Side::Local,
                "upstream" => Side::Upstream,
                other => {
                    self.problem(
                        &format!("{path}.from"),
                        line,
                        format!("{other:?} is not local or upstream"),
                    );
                    continue;
                }
            };
            if let Some(to) = &r.to {
                let other = match from {
                    Side::Local => "upstream",
                    Side::Upstream => "local",
                };
                if to.value != other {
                    self.problem(
                        &format!("{path}.to"),
                        Some(to.referenced.line()),
                        format!(
                            "{:?}: a rule from {} forwards to {other} (`to` may be left out)",
                            to.value, r.from.value
                        ),
                    );
                    continue;
                }
            }
            if !(upstream && local) {
                self.problem(
                    &path,
                    line,
                    "forwarding needs both a broker and an upstream section",
                );
            }
            let filter = match crate::mqtt::topic::TopicFilter::try_from(r.filter.value.as_str()) {
                Ok(filter) => filter,
                Err(e) => {
                    self.problem(
                        &format!("{path}.filter"),
                        Some(r.filter.referenced.line()),
                        e.to_string(),
                    );
                    continue;
                }
            };
            let qos = self.number(&format!("{path}.qos"), &r.qos, 0..=2, 1);
            rules.push(Forward {
                from,
                filter,
                strip: r.strip.as_ref().map(|s| s.value.clone()),
                prefix: r.prefix.as_ref().map(|p| p.value.clone()),
                qos: crate::mqtt::packet::QoS::from_u8(qos as u8).unwrap_or_default(),
            });
        }
        rules
    }

    /// A name used as a topic level: not empty, no `/`, `+`, `#`.
    fn topic_level(&mut self, path: &str, text: &Text) -> bool {
        let ok = !text.value.is_empty() && !text.value.contains(['/', '+', '#']);
        if !ok {
            self.problem(
                path,
                Some(text.referenced.line()),
                format!(
                    "{:?} must be non-empty without '/', '+' or '#' (it is a topic level)",
                    text.value
                ),
            );
        }
        ok
    }

    fn devices(&mut self, raw: &[raw::RawDevice], buses: &[Bus]) -> Vec<Device> {
        let mut devices = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, d) in raw.iter().enumerate() {
            let path = format!("devices[{i}]");
            let line = Some(d.id.referenced.line());
            self.topic_level(&format!("{path}.id"), &d.id);
            if !seen.insert(d.id.value.clone()) {
                self.problem(
                    &format!("{path}.id"),
                    line,
                    format!("{:?} is used twice", d.id.value),
                );
            }
            // `bus:` makes a Modbus device; `source: modbus` may say so too.
            let source_word = match (&d.source, &d.bus) {
                (Some(s), _) => s.value.as_str(),
                (None, Some(_)) => "modbus",
                (None, None) => {
                    self.problem(
                        &format!("{path}.source"),
                        line,
                        "a device needs `source:` (sim, serial, gpio) or `bus:` (Modbus)",
                    );
                    continue;
                }
            };
            let source_line = d
                .source
                .as_ref()
                .map_or(line, |s| Some(s.referenced.line()));
            if d.bus.is_some() && source_word != "modbus" {
                self.problem(
                    &format!("{path}.bus"),
                    line,
                    format!("only modbus devices are on a bus, not {source_word:?} ones"),
                );
            }
            let source = match source_word {
                "sim" => Source::Sim,
                "serial" => {
                    let Some(port) = &d.port else {
                        self.problem(
                            &format!("{path}.port"),
                            line,
                            "a serial device needs `port: /dev/tty...`",
                        );
                        continue;
                    };
                    let baud =
                        self.number(&format!("{path}.baud"), &d.baud, 50..=4_000_000, 9600) as u32;
                    let format = match d.format.as_ref().map(|f| (f.value.as_str(), f)) {
                        None | Some(("json", _)) => FrameFormat::Json,
                        Some(("key_value", _)) => FrameFormat::KeyValue,
                        Some(("regex", f)) => match &d.pattern {
                            Some(p) => match regex::Regex::new(&p.value) {
                                Ok(_) => FrameFormat::Regex(p.value.clone()),
                                Err(e) => {
                                    self.problem(
                                        &format!("{path}.pattern"),
                                        Some(p.referenced.line()),
                                        e.to_string(),
                                    );
                                    FrameFormat::Json
                                }
                            },
                            None => {
                                self.problem(
                                    &format!("{path}.pattern"),
                                    Some(f.referenced.line()),
                                    "format: regex needs a pattern with named groups",
                                );
                                FrameFormat::Json
                            }
                        },
                        Some((other, f)) => {
                            self.problem(
                                &format!("{path}.format"),
                                Some(f.referenced.line()),
                                format!("{other:?} is not json, key_value or regex"),
                            );
                            FrameFormat::Json
                        }
                    };
                    let frame_length = d.frame_length.as_ref().map(|_| {
                        self.number(
                            &format!("{path}.frame_length"),
                            &d.frame_length,
                            1..=65_536,
                            1,
                        ) as usize
                    });
                    let parity = self.choice(
                        &format!("{path}.parity"),
                        &d.parity,
                        &[
                            ("none", Parity::None),
                            ("even", Parity::Even),
                            ("odd", Parity::Odd),
                        ],
                        Parity::None,
                    );
                    let flow_control = self.choice(
                        &format!("{path}.flow_control"),
                        &d.flow_control,
                        &[
                            ("none", FlowControl::None),
                            ("software", FlowControl::Software),
                            ("hardware", FlowControl::Hardware),
                        ],
                        FlowControl::None,
                    );
                    let data_bits =
                        self.number(&format!("{path}.data_bits"), &d.data_bits, 5..=8, 8) as u8;
                    let stop_bits =
                        self.number(&format!("{path}.stop_bits"), &d.stop_bits, 1..=2, 1) as u8;
                    Source::Serial(SerialPort {
                        path: PathBuf::from(&port.value),
                        baud,
                        format,
                        frame_length,
                        parity,
                        data_bits,
                        stop_bits,
                        flow_control,
                    })
                }
                "gpio" => {
                    let backend = match d.backend.as_ref().map(|b| (b.value.as_str(), b)) {
                        None | Some(("auto", _)) => GpioBackendKind::Auto,
                        Some(("rppal", _)) => GpioBackendKind::Rppal,
                        Some(("gpiocdev", _)) => GpioBackendKind::Gpiocdev,
                        Some(("mock", b)) => match &d.mock_dir {
                            Some(dir) => GpioBackendKind::Mock(self.path(dir)),
                            None => {
                                self.problem(
                                    &format!("{path}.mock_dir"),
                                    Some(b.referenced.line()),
                                    "the mock backend needs mock_dir",
                                );
                                continue;
                            }
                        },
                        Some((other, b)) => {
                            self.problem(
                                &format!("{path}.backend"),
                                Some(b.referenced.line()),
                                format!("{other:?} is not auto, rppal, gpiocdev or mock"),
                            );
                            continue;
                        }
                    };
                    let chip = d.chip.as_ref().map_or_else(
                        || PathBuf::from("/dev/gpiochip0"),
                        |c| PathBuf::from(&c.value),
                    );
                    Source::Gpio(GpioChip { backend, chip })
                }
                "modbus" => match self.modbus_device(&path, line, d, buses) {
                    Some(device) => Source::Modbus(device),
                    None => continue,
                },
                other => {
                    self.problem(
                        &format!("{path}.source"),
                        source_line,
                        format!(
                            "{other:?} is not a device source; use sim, serial, gpio or modbus"
                        ),
                    );
                    continue;
                }
            };
            if !matches!(source, Source::Modbus(_)) {
                self.not_modbus_device(&path, line, d);
            }
            let poll = self.duration(&format!("{path}.poll"), &d.poll, Duration::from_secs(1));
            if poll.is_zero() {
                self.problem(&format!("{path}.poll"), line, "must be more than 0s");
            }
            let mut points = Vec::new();
            let mut point_ids = std::collections::HashSet::new();
            for (j, p) in d.points.iter().enumerate() {
                let ppath = format!("{path}.points[{j}]");
                let pline = Some(p.id.referenced.line());
                self.topic_level(&format!("{ppath}.id"), &p.id);
                if !point_ids.insert(p.id.value.clone()) {
                    self.problem(
                        &format!("{ppath}.id"),
                        pline,
                        format!("{:?} is used twice", p.id.value),
                    );
                }
                let period = self.duration(
                    &format!("{ppath}.period"),
                    &p.period,
                    Duration::from_secs(60),
                );
                let sim = match (&source, p.sim.as_ref().map(|s| s.value.as_str())) {
                    (Source::Serial(_) | Source::Gpio(_) | Source::Modbus(_), None) => None,
                    (Source::Serial(_) | Source::Gpio(_) | Source::Modbus(_), Some(_)) => {
                        self.problem(
                            &format!("{ppath}.sim"),
                            pline,
                            "only sim devices have `sim`",
                        );
                        None
                    }
                    (Source::Sim, Some("sine")) if !period.is_zero() => {
                        Some(SimWave::Sine { period })
                    }
                    (Source::Sim, Some("sine")) => {
                        self.problem(&format!("{ppath}.period"), pline, "must be more than 0s");
                        None
                    }
                    (Source::Sim, Some("counter")) => Some(SimWave::Counter),
                    (Source::Sim, Some("switch")) => Some(SimWave::Switch),
                    (Source::Sim, Some("constant") | None) => Some(SimWave::Constant),
                    (Source::Sim, Some(other)) => {
                        self.problem(
                            &format!("{ppath}.sim"),
                            pline,
                            format!("{other:?} is not one of sine, counter, switch, constant"),
                        );
                        None
                    }
                };
                let (min, max) = (
                    p.min.as_ref().map(|m| m.value),
                    p.max.as_ref().map(|m| m.value),
                );
                if let (Some(lo), Some(hi)) = (min, max)
                    && lo > hi
                {
                    self.problem(
                        &format!("{ppath}.min"),
                        pline,
                        format!("{lo} is above max {hi}"),
                    );
                }
                let qos = self.number(&format!("{ppath}.qos"), &p.qos, 0..=2, 0);
                let deadband = p.deadband.as_ref().map(|d| d.value);
                if let Some(d) = &p.deadband
                    && (d.value.is_nan() || d.value < 0.0)
                {
                    self.problem(
                        &format!("{ppath}.deadband"),
                        Some(d.referenced.line()),
                        format!("{} must be 0 or more", d.value),
                    );
                }
                let heartbeat = p.heartbeat.as_ref().map(|_| {
                    self.duration(
                        &format!("{ppath}.heartbeat"),
                        &p.heartbeat,
                        Duration::from_secs(60),
                    )
                });
                let max_age = p.max_age.as_ref().map(|_| {
                    self.duration(
                        &format!("{ppath}.max_age"),
                        &p.max_age,
                        Duration::from_secs(60),
                    )
                });
                let raw_payload = self.choice(
                    &format!("{ppath}.payload"),
                    &p.payload,
                    &[("json", false), ("raw", true)],
                    false,
                );
                points.push(Point {
                    id: p.id.value.clone(),
                    sim,
                    unit: p.unit.as_ref().map(|u| u.value.clone()),
                    min,
                    max,
                    writable: p.writable,
                    qos: crate::mqtt::packet::QoS::from_u8(qos as u8).unwrap_or_default(),
                    retain: p.retain,
                    deadband,
                    heartbeat,
                    max_age,
                    raw_payload,
                    device_class: p.device_class.as_ref().map(|c| c.value.clone()),
                    key: p
                        .key
                        .as_ref()
                        .map_or_else(|| p.id.value.clone(), |k| k.value.clone()),
                    gpio: self.gpio_line(&ppath, &source, p),
                    modbus: self.modbus_point(&ppath, &source, d, p),
                });
            }
            devices.push(Device {
                id: d.id.value.clone(),
                source,
                poll,
                points,
            });
        }
        devices
    }

    /// A GPIO point's line settings (`None` for other sources, or when wrong).
    fn gpio_line(&mut self, path: &str, source: &Source, p: &raw::RawPoint) -> Option<GpioLine> {
        let line_no = Some(p.id.referenced.line());
        if !matches!(source, Source::Gpio(_)) {
            if p.line.is_some() {
                self.problem(
                    &format!("{path}.line"),
                    line_no,
                    "only gpio devices have lines",
                );
            }
            return None;
        }
        let Some(line) = &p.line else {
            self.problem(
                &format!("{path}.line"),
                line_no,
                "a gpio point needs `line:` (e.g. 17)",
            );
            return None;
        };
        let output = self.choice(
            &format!("{path}.direction"),
            &p.direction,
            &[("input", false), ("output", true)],
            false,
        );
        if p.writable != output {
            self.problem(
                &format!("{path}.writable"),
                line_no,
                "a gpio point is writable exactly when its direction is output",
            );
        }
        let pull = self.choice(
            &format!("{path}.pull"),
            &p.pull,
            &[("none", None), ("up", Some(true)), ("down", Some(false))],
            None,
        );
        let initial = self.choice(
            &format!("{path}.initial"),
            &p.initial,
            &[("low", false), ("high", true)],
            false,
        );
        let debounce = self.duration(&format!("{path}.debounce"), &p.debounce, Duration::ZERO);
        Some(GpioLine {
            line: u32::try_from(line.value).unwrap_or(u32::MAX),
            output,
            pull,
            initial,
            debounce,
        })
    }

    fn limits(&mut self, raw: &RawLimits, config: &mut BrokerConfig) {
        let p = |key: &str| format!("broker.limits.{key}");
        config.max_connections = self.number(
            &p("max_connections"),
            &raw.max_connections,
            1..=1_000_000,
            config.max_connections as u64,
        ) as usize;
        let max_packet = self.size(
            &p("max_packet_size"),
            &raw.max_packet_size,
            u64::from(config.session.maximum_packet_size.get()),
        );
        match u32::try_from(max_packet).ok().and_then(NonZeroU32::new) {
            Some(max) if max.get() <= 268_435_460 => config.session.maximum_packet_size = max,
            _ => self.problem(
                &p("max_packet_size"),
                raw.max_packet_size.as_ref().map(|t| t.referenced.line()),
                "must be from 1 B to 256MiB (MQTT's limit)",
            ),
        }
        let n16 = |this: &mut Self, key: &str, v: &Option<raw::Number>, default: NonZeroU16| {
            let n = this.number(&p(key), v, 1..=65535, u64::from(default.get()));
            NonZeroU16::new(u16::try_from(n).unwrap_or(u16::MAX)).unwrap_or(default)
        };
        config.session.receive_maximum = n16(
            self,
            "receive_maximum",
            &raw.receive_maximum,
            config.session.receive_maximum,
        );
        config.session.max_inflight = n16(
            self,
            "max_inflight",
            &raw.max_inflight,
            config.session.max_inflight,
        );
        config.mailbox.max_messages = self.number(
            &p("max_queued_messages"),
            &raw.max_queued_messages,
            1..=100_000_000,
            config.mailbox.max_messages as u64,
        ) as usize;
        config.mailbox.max_bytes = self.size(
            &p("max_queued_bytes"),
            &raw.max_queued_bytes,
            config.mailbox.max_bytes as u64,
        ) as usize;
        config.max_topic_levels = self.number(
            &p("max_topic_levels"),
            &raw.max_topic_levels,
            0..=10_000,
            config.max_topic_levels as u64,
        ) as usize;
        let keep_alive = self.duration(
            &p("max_keep_alive"),
            &raw.max_keep_alive,
            Duration::from_secs(u64::from(config.session.max_keep_alive)),
        );
        config.session.max_keep_alive = u16::try_from(keep_alive.as_secs()).unwrap_or_else(|_| {
            self.problem(
                &p("max_keep_alive"),
                raw.max_keep_alive.as_ref().map(|t| t.referenced.line()),
                "must be at most 65535s (MQTT's limit)",
            );
            0
        });
        config.connect_timeout = self.duration(
            &p("connect_timeout"),
            &raw.connect_timeout,
            config.connect_timeout,
        );
        config.session.topic_alias_maximum = self.number(
            &p("topic_alias_maximum"),
            &raw.topic_alias_maximum,
            0..=65535,
            u64::from(config.session.topic_alias_maximum),
        ) as u16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<String> {
        parse(yaml, Path::new("/nonexistent"))
            .unwrap_err()
            .problems()
    }

    #[test]
    fn the_embedded_default_is_valid_and_has_a_broker_and_a_sim_device() {
        let config = default_config().unwrap();
        assert!(config.broker.is_some());
        assert_eq!(config.devices.len(), 1);
        assert_eq!(config.devices[0].source, Source::Sim);
        assert!(config.devices[0].points.iter().any(|p| p.writable));
    }

    #[test]
    fn a_minimal_broker_section_gets_the_defaults() {
        let config = parse(
            "broker:\n  listeners:\n    - bind: 127.0.0.1:1883\n",
            Path::new("."),
        )
        .unwrap();
        let broker = config.broker.unwrap();
        assert_eq!(broker.listeners.len(), 1);
        assert!(broker.allow_anonymous);
        assert!(broker.persistence.is_none());
        assert_eq!(config.gateway.topic_prefix, "fieldgate/fieldgate");
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_path_and_line() {
        let found = problems(
            "broker:\n  listeners:\n    - bind: nowhere\n  sys_interval: 10\n  limits:\n    max_inflight: 0\n    connect_timeout: 3 weeks\n",
        );
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(found[0].starts_with("broker.listeners[0].bind: \"nowhere\" is not an address"));
        assert!(found[0].ends_with("(line 3)"), "{}", found[0]);
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("broker.sys_interval") && p.ends_with("(line 4)"))
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("broker.limits.max_inflight: 0 is out of range"))
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("broker.limits.connect_timeout"))
        );
    }

    #[test]
    fn upstream_and_forward_mistakes_are_reported_together() {
        let found = problems(
            "upstream:\n  url: http://cloud:1883\n  protocol: 4\nforward:\n  - from: sideways\n    filter: a/#\n  - from: local\n    filter: a/#/b\n",
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("upstream.url") && p.ends_with("(line 2)")),
            "{found:#?}"
        );
        assert!(
            found.iter().any(|p| p.starts_with("upstream.protocol")),
            "{found:#?}"
        );
        assert!(
            found.iter().any(|p| p.starts_with("forward[0].from")),
            "{found:#?}"
        );
        assert!(
            found.iter().any(|p| p.starts_with("forward[1].filter")),
            "{found:#?}"
        );
    }

    #[test]
    fn upstream_spool_takes_its_settings_and_defaults_under_the_state_directory() {
        let config = parse(
            "gateway:\n  state_dir: /var/lib/fg\nupstream:\n  url: mqtt://cloud\n  spool:\n    durability: offline\n    max_bytes: 256MiB\n    segment_bytes: 8MiB\n    memory_bytes: 512KiB\n    on_full: reject_new\n    fsync: always\n",
            Path::new("."),
        )
        .unwrap();
        let spool = config.upstream.unwrap().spool;
        assert_eq!(spool.dir, Path::new("/var/lib/fg/spool"));
        assert_eq!(spool.durability, Durability::Offline);
        assert_eq!(
            (spool.max_bytes, spool.segment_bytes, spool.memory_bytes),
            (256 << 20, 8 << 20, 512 << 10)
        );
        assert_eq!(spool.on_full, OnFull::RejectNew);
        assert_eq!(spool.fsync, Fsync::Always);
        let defaults = parse("upstream:\n  url: mqtt://cloud\n", Path::new("/etc/fg"))
            .unwrap()
            .upstream
            .unwrap()
            .spool;
        assert_eq!(defaults.durability, Durability::Disk);
        assert_eq!(defaults.on_full, OnFull::DropOldest);
        assert_eq!(defaults.fsync, Fsync::Interval(Duration::from_secs(1)));
        assert_eq!(defaults.max_bytes, SpoolConfig::DEFAULT_MAX_BYTES);
    }

    #[test]
    fn upstream_spool_mistakes_are_reported_with_their_keys_and_lines() {
        let found = problems(
            "upstream:\n  url: mqtt://cloud\n  spool:\n    durability: sometimes\n    max_bytes: 10 parsecs\n    on_full: drop_newest\n    fsync: often\n    fsync_interval: 5\n",
        );
        for (key, line) in [
            ("durability", 4),
            ("max_bytes", 5),
            ("on_full", 6),
            ("fsync", 7),
            ("fsync_interval", 8),
        ] {
            let path = format!("upstream.spool.{key}: ");
            assert!(
                found
                    .iter()
                    .any(|p| p.starts_with(&path) && p.ends_with(&format!("(line {line})"))),
                "{key}: {found:#?}"
            );
        }
        let found = problems(
            "upstream:\n  url: mqtt://cloud\n  spool:\n    max_bytes: 20MiB\n    segment_bytes: 16MiB\n",
        );
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].starts_with("upstream.spool.max_bytes: 20971520 bytes must be at least twice")
                && found[0].ends_with("(line 4)"),
            "{found:#?}"
        );
        let found = problems("upstream:\n  url: mqtt://cloud\n  spool:\n    segment_bytes: 100\n");
        assert!(
            found[0].starts_with("upstream.spool.segment_bytes:") && found[0].ends_with("(line 4)"),
            "{found:#?}"
        );
    }

    #[test]
    fn a_forward_rule_rewrites_topics_by_strip_and_prefix() {
        let config = parse(
            "broker:\n  listeners:\n    - bind: 127.0.0.1:1883\nupstream:\n  url: mqtts://cloud.example\nforward:\n  - from: upstream\n    filter: cmd/#\n    strip: cmd/\n    prefix: site/\n",
            Path::new("."),
        )
        .unwrap();
        let upstream = config.upstream.unwrap();
        assert_eq!(
            (upstream.host.as_str(), upstream.port),
            ("cloud.example", 8883)
        );
        assert!(upstream.tls.is_some_and(|t| t.system_roots));
        assert_eq!(config.forward[0].rewrite("cmd/valve/1"), "site/valve/1");
    }

    #[test]
    fn a_forward_rule_may_name_its_destination_but_only_the_other_side() {
        let base = "broker:\n  listeners:\n    - bind: 127.0.0.1:1883\nupstream:\n  url: mqtt://cloud\nforward:\n";
        let config = parse(
            &format!("{base}  - {{from: local, filter: \"in/#\", to: upstream, qos: 1}}\n"),
            Path::new("."),
        )
        .unwrap();
        assert_eq!(config.forward[0].from, Side::Local);
        let found = problems(&format!(
            "{base}  - {{from: upstream, filter: \"cmd/#\", to: upstream}}\n"
        ));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0]
                .starts_with("forward[0].to: \"upstream\": a rule from upstream forwards to local"),
            "{found:#?}"
        );
    }

    #[test]
    fn the_upstream_password_comes_from_one_place_and_a_credential_from_beside_the_file() {
        let dir = std::env::temp_dir().join(format!("fieldgate-credential-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("upstream-password"), "s3cret\nignored\n").unwrap();
        let base =
            "broker:\n  listeners:\n    - bind: 127.0.0.1:1883\nupstream:\n  url: mqtt://cloud\n";
        // Outside systemd (no $CREDENTIALS_DIRECTORY in tests), beside the file.
        let config = parse(
            &format!("{base}  password_credential: upstream-password\n"),
            &dir,
        )
        .unwrap();
        assert_eq!(config.upstream.unwrap().password.as_deref(), Some("s3cret"));
        let found = parse(
            &format!("{base}  password: x\n  password_credential: upstream-password\n"),
            &dir,
        )
        .unwrap_err()
        .problems();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("upstream.password_credential: give only one"),
            "{found:?}"
        );
        let found = problems(&format!("{base}  password_credential: ../etc/shadow\n"));
        assert!(found[0].contains("is not a credential name"), "{found:?}");
        let found = problems(&format!("{base}  password_credential: missing\n"));
        assert!(
            found[0].starts_with("upstream.password_credential: /nonexistent/missing"),
            "{found:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_upstream_ca_file_without_a_certificate_is_a_problem_of_the_tls_section() {
        let dir = std::env::temp_dir().join(format!("fieldgate-bad-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), "not a certificate\n").unwrap();
        let found = parse(
            "upstream:\n  url: mqtts://cloud\n  tls:\n    ca_file: ca.pem\n",
            &dir,
        )
        .unwrap_err()
        .problems();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("upstream.tls: "), "{found:?}");
        assert!(found[0].contains("no certificate in it"), "{found:?}");
        assert!(found[0].ends_with("(line 4)"), "{found:?}");
    }

    #[test]
    fn a_log_level_spec_is_checked_with_its_line() {
        let config = parse(
            "gateway:\n  log_level: warn,fieldgate::modbus=debug\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(
            config.gateway.log.level_for("fieldgate::modbus::bus"),
            log::LevelFilter::Debug
        );
        let found = problems("gateway:\n  id: gw\n  log_level: very-loud\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("gateway.log_level: \"very-loud\""),
            "{found:?}"
        );
        assert!(found[0].ends_with("(line 3)"), "{found:?}");
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        let found = problems("broker:\n  listeners: []\n  max_conections: 5\n");
        assert!(found[0].contains("max_conections"), "{found:?}");
    }

    #[test]
    fn a_missing_password_file_is_a_problem_of_its_key() {
        let found = problems(
            "broker:\n  listeners:\n    - bind: 127.0.0.1:1883\n  password_file: passwd\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("broker.password_file:"), "{found:?}");
        assert!(found[0].ends_with("(line 4)"), "{found:?}");
    }
}
