//! The YAML file as written: a serde mirror with every key optional where a default
//! exists, unknown keys refused, and values that need checking kept `Spanned` so a
//! problem can name its line. No meaning is given here: `config::load` validates.

use serde::Deserialize;
use serde_saphyr::Spanned;

pub type Text = Spanned<String>;
pub type Number = Spanned<u64>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub gateway: RawGateway,
    pub broker: Option<RawBroker>,
    pub upstream: Option<RawUpstream>,
    #[serde(default)]
    pub forward: Vec<RawForward>,
    /// Home Assistant MQTT discovery (opt-in).
    pub homeassistant: Option<RawHomeAssistant>,
    /// Physical links shared by devices (Modbus RTU ports, Modbus TCP servers).
    #[serde(default)]
    pub buses: Vec<RawBus>,
    /// The optional HTTP listener for Prometheus (`/metrics`) and `/healthz`.
    pub metrics: Option<RawMetrics>,
    #[serde(default)]
    pub devices: Vec<RawDevice>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// `IP:PORT`, e.g. `127.0.0.1:9100`.
    pub bind: Text,
}

/// A Modbus bus: `type: modbus_rtu` (a serial port), `modbus_tcp` or
/// `modbus_rtu_over_tcp` (RTU frames through a serial device server).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBus {
    pub id: Text,
    #[serde(rename = "type")]
    pub kind: Text,
    /// RTU: the serial port (`/dev/ttyUSB0`); TCP: the port number (default 502).
    pub port: Option<Spanned<PortOrPath>>,
    /// RTU: the port's speed and framing.
    pub baud: Option<Number>,
    pub parity: Option<Text>,
    pub data_bits: Option<Number>,
    pub stop_bits: Option<Number>,
    /// RTU: silence kept between frames (default max(3.5 character times, 1.75 ms)).
    pub inter_frame_delay: Option<Text>,
    /// RTU: the kernel's RS-485 mode (TIOCSRS485) for transceivers driven by RTS.
    pub rs485: Option<RawRs485>,
    /// TCP and RTU over TCP: the server.
    pub host: Option<Text>,
    /// TCP: keep the connection open between polls (default true).
    pub keep_connection: Option<bool>,
    /// TCP: close a connection unused this long.
    pub idle_close: Option<Text>,
}

/// `port:` is a number on a TCP bus and a device path on a serial one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PortOrPath {
    Number(u64),
    Path(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRs485 {
    /// RTS level while sending: `high` (default) or `low`.
    pub rts_on_send: Option<Text>,
    pub delay_before_send: Option<Text>,
    pub delay_after_send: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHomeAssistant {
    pub discovery_prefix: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: Text,
    /// `5` or `3.1.1`.
    pub protocol: Option<Text>,
    pub client_id: Option<Text>,
    pub username: Option<Text>,
    pub password: Option<Text>,
    pub password_file: Option<Text>,
    /// A systemd credential's name (`LoadCredential=NAME:...`): read from
    /// `$CREDENTIALS_DIRECTORY/NAME` under the service, else from `NAME` beside the file.
    pub password_credential: Option<Text>,
    pub keep_alive: Option<Text>,
    pub tls: Option<RawUpstreamTls>,
    /// The offline queue (`<state_dir>/spool`).
    pub spool: Option<RawSpool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpool {
    /// `disk` (every message written before it is acknowledged) or `offline` (written
    /// only while the uplink is down or behind).
    pub durability: Option<Text>,
    pub max_bytes: Option<Text>,
    pub segment_bytes: Option<Text>,
    /// Offline mode: how much may wait in memory before it goes to disk.
    pub memory_bytes: Option<Text>,
    /// `drop_oldest` or `reject_new`.
    pub on_full: Option<Text>,
    /// `always`, `interval` or `never`.
    pub fsync: Option<Text>,
    pub fsync_interval: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub ca_file: Option<Text>,
    pub cert_file: Option<Text>,
    pub key_file: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    /// `local` or `upstream`: where messages are taken from.
    pub from: Text,
    /// Optional, for readability: the other side (`upstream` or `local`).
    pub to: Option<Text>,
    pub filter: Text,
    /// Replaces the topic's leading `strip` part (or prepends, when `strip` is absent).
    pub strip: Option<Text>,
    pub prefix: Option<Text>,
    pub qos: Option<Number>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    pub id: Text,
    /// `sim`, `serial`, `gpio` or `modbus` (implied by `bus`).
    pub source: Option<Text>,
    /// Modbus devices: the bus they are on, their unit (slave) id, how long a request
    /// may take and how often it is retried, how far apart two points may be and still
    /// be read in one request, and the default word/byte order of their points.
    pub bus: Option<Text>,
    pub unit: Option<Number>,
    pub timeout: Option<Text>,
    pub retries: Option<Number>,
    pub max_gap: Option<Number>,
    pub word_order: Option<Text>,
    pub byte_order: Option<Text>,
    pub order: Option<Text>,
    pub poll: Option<Text>,
    /// Serial devices: the port (`/dev/ttyUSB0`), its speed, and the frame format.
    pub port: Option<Text>,
    pub baud: Option<Number>,
    /// `json` (`{"temperature": 21.5}` per line), `key_value` (`temperature=21.5 ...`)
    /// or `regex` (named groups of `pattern` are the fields).
    pub format: Option<Text>,
    pub pattern: Option<Text>,
    /// Frames of this many bytes instead of lines.
    pub frame_length: Option<Number>,
    /// `none` (default), `even` or `odd`.
    pub parity: Option<Text>,
    /// 5 to 8 (default 8).
    pub data_bits: Option<Number>,
    /// 1 (default) or 2.
    pub stop_bits: Option<Number>,
    /// `none` (default), `software` or `hardware`.
    pub flow_control: Option<Text>,
    /// GPIO devices: `auto` (rppal on a Raspberry Pi, else gpiocdev), `rppal`,
    /// `gpiocdev` or `mock` (files in `mock_dir`, for tests and demos).
    pub backend: Option<Text>,
    /// gpiocdev: the chip (default `/dev/gpiochip0`).
    pub chip: Option<Text>,
    pub mock_dir: Option<Text>,
    #[serde(default)]
    pub points: Vec<RawPoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoint {
    pub id: Text,
    /// For `sim` devices: `sine`, `counter`, `switch` or `constant`.
    pub sim: Option<Text>,
    pub unit: Option<Text>,
    pub min: Option<Spanned<f64>>,
    pub max: Option<Spanned<f64>>,
    /// A sine's period.
    pub period: Option<Text>,
    #[serde(default)]
    pub writable: bool,
    pub qos: Option<Number>,
    #[serde(default)]
    pub retain: bool,
    /// Publish only when the value moved by more than this (absolute).
    pub deadband: Option<Spanned<f64>>,
    /// Republish an unchanged value this often.
    pub heartbeat: Option<Text>,
    /// Refuse commands older than this (by the `ts` of a JSON command).
    pub max_age: Option<Text>,
    /// `json` (default) or `raw` (the bare value).
    pub payload: Option<Text>,
    /// Home Assistant's device class (`temperature`, `power`, ...), for discovery.
    pub device_class: Option<Text>,
    /// Serial devices: the field of a frame that holds this point (default: its id).
    pub key: Option<Text>,
    /// GPIO devices: the line (BCM number on a Raspberry Pi), `input` or `output`, the
    /// input's pull, the output's level at start.
    pub line: Option<Number>,
    pub direction: Option<Text>,
    pub pull: Option<Text>,
    pub initial: Option<Text>,
    /// GPIO inputs: a new level counts once it has held this long (contact bounce).
    pub debounce: Option<Text>,
    /// Modbus points: the table (`coil`, `discrete`, `holding`, `input`), the 0-based
    /// protocol address, the data type (`u16`, `f32`, `string(8)`, ...), a bit of a
    /// register, the word and byte order (or `order: ABCD | CDAB | BADC | DCBA`), and
    /// `value = raw * scale + offset`.
    pub kind: Option<Text>,
    pub address: Option<Number>,
    #[serde(rename = "type")]
    pub data_type: Option<Text>,
    pub bit: Option<Number>,
    pub word_order: Option<Text>,
    pub byte_order: Option<Text>,
    pub order: Option<Text>,
    pub scale: Option<Spanned<f64>>,
    pub offset: Option<Spanned<f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub id: Option<Text>,
    pub state_dir: Option<Text>,
    pub topic_prefix: Option<Text>,
    /// `info` (default), `debug`, ... and per-module overrides:
    /// `warn,fieldgate::modbus=debug` (`RUST_LOG` adds to it).
    pub log_level: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBroker {
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    pub allow_anonymous: Option<bool>,
    pub password_file: Option<Text>,
    pub acl_file: Option<Text>,
    pub persistence: Option<RawPersistence>,
    #[serde(default)]
    pub limits: RawLimits,
    /// A duration, or `off`.
    pub sys_interval: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub bind: Text,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub websocket: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert_file: Text,
    pub key_file: Text,
    pub client_ca_file: Option<Text>,
    #[serde(default)]
    pub require_client_cert: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPersistence {
    pub enabled: Option<bool>,
    /// `always`, `interval` or `never`.
    pub fsync: Option<Text>,
    pub fsync_interval: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<Number>,
    pub max_packet_size: Option<Text>,
    pub receive_maximum: Option<Number>,
    pub max_inflight: Option<Number>,
    pub max_queued_messages: Option<Number>,
    pub max_queued_bytes: Option<Text>,
    pub max_topic_levels: Option<Number>,
    pub max_keep_alive: Option<Text>,
    pub connect_timeout: Option<Text>,
    pub topic_alias_maximum: Option<Number>,
}
