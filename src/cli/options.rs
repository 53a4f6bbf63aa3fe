//! The connection options `fieldgate pub` and `fieldgate sub` share (broker address, client
//! id, credentials, keep-alive, protocol version, session, QoS, TLS files, will) and the
//! argument cursor and value parsers both commands use.
//!
//! Parsing and validation only: nothing here opens a file, a socket or stdin. The driver
//! does that with the values parsed here, so that parsing stays testable and instant.

use std::path::PathBuf;

use bytes::Bytes;
use fieldgate::mqtt::packet::{ProtocolVersion, QoS, Will, WillProperties};
use fieldgate::mqtt::string::MqttString;
use fieldgate::mqtt::topic::TopicName;

use super::CliError;

/// Broker host when `-h` is not given. mosquitto says `localhost`; an address skips name
/// resolution and the `::1`-first attempt some resolvers make on small gateways.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// Plain MQTT port (IANA).
pub const DEFAULT_PORT: u16 = 1883;
/// MQTT over TLS port (IANA), the default as soon as any TLS option is given.
pub const DEFAULT_TLS_PORT: u16 = 8883;
/// Keep-alive when `-k` is not given, as in mosquitto.
pub const DEFAULT_KEEP_ALIVE: u16 = 60;

/// How to reach and log in to the broker: everything `-h -p -L -i -u -P -k -V -c -q -d`,
/// the TLS flags and the will flags said, with defaults applied and cross-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Host name or address, without brackets for IPv6 (`-h`, `-L`).
    pub host: String,
    /// `-p`, else 8883 when [`ConnectOptions::tls`] is set, else 1883.
    pub port: u16,
    /// `-i`, else `fieldgate-pub-<pid>` / `fieldgate-sub-<pid>`. May be empty only if the
    /// user asked for it with `-i ''` (MQTT 5 then lets the broker assign one).
    pub client_id: MqttString,
    pub username: Option<MqttString>,
    /// Binary in both versions; under 3.1.1 parsing guarantees a user name comes with it
    /// ([MQTT-3.1.2-22]).
    pub password: Option<Bytes>,
    /// Seconds; 0 turns keep-alive off.
    pub keep_alive: u16,
    /// `-V`; defaults to 5 (mosquitto defaults to 3.1.1).
    pub protocol: ProtocolVersion,
    /// Clean Start (5.0) / Clean Session (3.1.1); `-c` makes it false. See
    /// [`ConnectOptions::session_expiry_interval`] for what MQTT 5 also needs.
    pub clean_start: bool,
    /// `-q`: the QoS of pub's messages, or of sub's subscriptions.
    pub qos: QoS,
    /// `-d`: print protocol debug messages to stderr.
    pub debug: bool,
    /// Set as soon as any TLS option is given (or `-L mqtts://`).
    pub tls: Option<TlsOptions>,
    /// `--will-*`, ready for `Connect::will` (no will properties: there are no flags for them).
    pub will: Option<Will>,
}

impl ConnectOptions {
    /// The MQTT 5 Session Expiry Interval to put in CONNECT. With `-c` the session must
    /// outlive the connection or resuming it is pointless, so like mosquitto we ask for one
    /// that never expires (0xFFFF_FFFF). `None` means leave the property out (0: the session
    /// ends with the connection). Always `None` for 3.1.1, which has no such property.
    pub fn session_expiry_interval(&self) -> Option<u32> {
        match self.protocol {
            ProtocolVersion::V5 if !self.clean_start => Some(u32::MAX),
            _ => None,
        }
    }
}

/// TLS settings. Only file paths: loading and checking them is the driver's job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// `--cafile`: PEM CA certificates to trust. `None`: the platform's trust roots.
    pub ca_file: Option<PathBuf>,
    /// `--cert` and `--key`, which parsing only accepts together.
    pub client_cert: Option<ClientCert>,
    /// False with `--insecure`: the certificate chain is still verified, only the check
    /// that it names the host we connected to is skipped.
    pub verify_hostname: bool,
}

/// A client certificate and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Which command the options are for; it only picks the default client id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Pub,
    Sub,
}

impl Role {
    fn default_client_id(self) -> String {
        let name = match self {
            Role::Pub => "pub",
            Role::Sub => "sub",
        };
        format!("fieldgate-{name}-{}", std::process::id())
    }
}

/// Walks the arguments in order. Like mosquitto, the word after a flag that takes a value
/// is that value even if it starts with '-' (`-m -1` publishes "-1").
#[derive(Debug)]
pub(super) struct ArgCursor<'a> {
    args: &'a [&'a str],
    next: usize,
}

impl<'a> ArgCursor<'a> {
    pub(super) fn new(args: &'a [&'a str]) -> Self {
        ArgCursor { args, next: 0 }
    }

    /// The next argument, or `None` at the end.
    pub(super) fn next_arg(&mut self) -> Option<&'a str> {
        let arg = self.args.get(self.next).copied();
        self.next += 1;
        arg
    }

    /// The value of `flag`; `expects` names it for the error ("a topic").
    pub(super) fn value(&mut self, flag: &str, expects: &'static str) -> Result<&'a str, CliError> {
        self.next_arg().ok_or_else(|| CliError::MissingValue {
            flag: flag.to_owned(),
            expects,
        })
    }
}

/// The error for an argument no parser claimed: a flag we do not know, a mosquitto flag we
/// do not implement, or a stray word.
pub(super) fn unclaimed(arg: &str, unsupported: &[&str]) -> CliError {
    if !arg.starts_with('-') || arg == "-" {
        CliError::UnexpectedArgument(arg.to_owned())
    } else if SHARED_UNSUPPORTED.contains(&arg) || unsupported.contains(&arg) {
        CliError::UnsupportedOption(arg.to_owned())
    } else {
        CliError::UnknownOption(arg.to_owned())
    }
}

/// mosquitto flags both tools have that we do not implement, so that a user trying one
/// hears "not supported" rather than "unknown".
const SHARED_UNSUPPORTED: &[&str] = &[
    "-A",
    "--capath",
    "--ciphers",
    "-D",
    "--property",
    "-I",
    "--id-prefix",
    "--keyform",
    "--nodelay",
    "--proxy",
    "--psk",
    "--psk-identity",
    "--quiet",
    "-S",
    "--tls-alpn",
    "--tls-engine",
    "--tls-engine-kpass-sha1",
    "--tls-use-os-certs",
    "--tls-version",
    "--unix",
    "-x",
];

/// A QoS value: 0, 1 or 2.
pub(super) fn parse_qos(flag: &str, raw: &str) -> Result<QoS, CliError> {
    raw.parse::<u8>()
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| CliError::InvalidQoS {
            flag: flag.to_owned(),
            got: raw.to_owned(),
        })
}

/// A whole number in `min..=max`; `what` names it for the error ("keepalive (seconds)").
pub(super) fn parse_number<T>(
    flag: &str,
    what: &'static str,
    raw: &str,
    min: T,
    max: T,
) -> Result<T, CliError>
where
    T: TryFrom<u64> + Into<u64> + Copy,
{
    let (lo, hi) = (min.into(), max.into());
    let out_of_range = || CliError::OutOfRange {
        flag: flag.to_owned(),
        what,
        min: lo,
        max: hi,
        got: raw.to_owned(),
    };
    // u64 parsing already refuses signs other than '+', spaces and fractions.
    let n = raw.parse::<u64>().map_err(|_| out_of_range())?;
    if !(lo..=hi).contains(&n) {
        return Err(out_of_range());
    }
    T::try_from(n).map_err(|_| out_of_range())
}

/// A topic name for `-t` of pub, `--will-topic` or `-L`.
pub(super) fn parse_topic_name(flag: &str, raw: &str) -> Result<TopicName, CliError> {
    TopicName::try_from(raw).map_err(|source| CliError::InvalidTopicName {
        flag: flag.to_owned(),
        value: raw.to_owned(),
        source,
    })
}

fn parse_mqtt_string(flag: &str, raw: &str) -> Result<MqttString, CliError> {
    MqttString::try_from(raw).map_err(|source| CliError::InvalidString {
        flag: flag.to_owned(),
        source,
    })
}

fn parse_protocol(raw: &str) -> Result<ProtocolVersion, CliError> {
    match raw {
        // "3.1.1" and "5.0" as `fieldgate decode -V` takes them; the rest are mosquitto's.
        "311" | "mqttv311" | "3.1.1" => Ok(ProtocolVersion::V311),
        "5" | "mqttv5" | "5.0" => Ok(ProtocolVersion::V5),
        // mosquitto's "31" is MQTT 3.1 (protocol level 3), a different protocol we do not
        // speak; quietly sending 3.1.1 instead would be a surprise.
        "31" | "mqttv31" => Err(CliError::Mqtt31NotSupported(raw.to_owned())),
        _ => Err(CliError::InvalidProtocolVersion(raw.to_owned())),
    }
}

/// The parts of `-L mqtt[s]://[user[:password]@]host[:port]/topic`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url<'a> {
    tls: bool,
    username: Option<&'a str>,
    password: Option<&'a str>,
    host: &'a str,
    port: Option<&'a str>,
    topic: &'a str,
}

/// Splits a `-L` URL. No percent-decoding (mosquitto does none either), so a password
/// containing '@' or '/' has to go through `-P` instead.
fn parse_url(raw: &str) -> Result<Url<'_>, CliError> {
    let bad = |why: &'static str| CliError::InvalidUrl {
        url: raw.to_owned(),
        why,
    };
    let (tls, rest) = if let Some(rest) = raw.strip_prefix("mqtt://") {
        (false, rest)
    } else if let Some(rest) = raw.strip_prefix("mqtts://") {
        (true, rest)
    } else {
        return Err(bad("it must start with mqtt:// or mqtts://"));
    };
    let (authority, topic) = rest
        .split_once('/')
        .ok_or(bad("it must end with /<topic>"))?;
    if topic.is_empty() {
        return Err(bad("the topic after the host is empty"));
    }
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, authority),
    };
    // The password runs from the first ':' to the '@', so it may itself contain ':'.
    let (username, password) = match userinfo.map(|u| u.split_once(':').ok_or(u)) {
        Some(Ok((user, password))) => (Some(user), Some(password)),
        Some(Err(user)) => (Some(user), None),
        None => (None, None),
    };
    // "[v6::addr]:port" keeps the colons of an IPv6 address apart from the port's.
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or(bad("an IPv6 address needs its closing ']'"))?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(bad("only :<port> may follow ']'")),
            },
        }
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    Ok(Url {
        tls,
        username,
        password,
        host,
        port,
        topic,
    })
}

/// Collects the shared flags as they come, then applies defaults and cross-checks in
/// [`ConnectBuilder::finish`]. Later flags override earlier ones, as in mosquitto.
#[derive(Debug, Default)]
pub(super) struct ConnectBuilder {
    host: Option<String>,
    port: Option<u16>,
    client_id: Option<MqttString>,
    username: Option<MqttString>,
    password: Option<Bytes>,
    keep_alive: Option<u16>,
    protocol: Option<ProtocolVersion>,
    persistent_session: bool,
    qos: Option<QoS>,
    debug: bool,
    ca_file: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    insecure: bool,
    url_tls: bool,
    /// The topic of the last `-L`, for the command to read as a name (pub) or filter (sub).
    pub(super) url_topic: Option<String>,
    will_topic: Option<TopicName>,
    will_payload: Option<Bytes>,
    will_qos: Option<QoS>,
    will_retain: bool,
}

impl ConnectBuilder {
    /// Takes `flag` and its value if it is a shared option. `Ok(false)`: not ours.
    pub(super) fn accept(
        &mut self,
        flag: &str,
        args: &mut ArgCursor<'_>,
    ) -> Result<bool, CliError> {
        match flag {
            "-h" | "--host" => {
                let host = args.value(flag, "a host name or address")?;
                if host.is_empty() {
                    return Err(CliError::EmptyHost);
                }
                self.host = Some(host.to_owned());
            }
            "-p" | "--port" => {
                let raw = args.value(flag, "a port number")?;
                self.port = Some(parse_number(flag, "port", raw, 1, u16::MAX)?);
            }
            "-L" | "--url" => {
                let raw = args.value(flag, "a URL like mqtt://host:1883/topic")?;
                self.apply_url(flag, raw)?;
            }
            "-i" | "--id" => {
                let raw = args.value(flag, "a client id")?;
                self.client_id = Some(parse_mqtt_string(flag, raw)?);
            }
            "-u" | "--username" => {
                let raw = args.value(flag, "a user name")?;
                self.username = Some(parse_mqtt_string(flag, raw)?);
            }
            "-P" | "--pw" => {
                let raw = args.value(flag, "a password")?;
                self.password = Some(Bytes::copy_from_slice(raw.as_bytes()));
            }
            "-k" | "--keepalive" => {
                let raw = args.value(flag, "a number of seconds")?;
                let secs = parse_number(flag, "keepalive (seconds)", raw, 0, u16::MAX)?;
                self.keep_alive = Some(secs);
            }
            "-V" | "--protocol-version" => {
                self.protocol = Some(parse_protocol(args.value(flag, "311 or 5")?)?);
            }
            "-c" | "--disable-clean-session" => self.persistent_session = true,
            "-q" | "--qos" => self.qos = Some(parse_qos(flag, args.value(flag, "0, 1 or 2")?)?),
            "-d" | "--debug" => self.debug = true,
            "--cafile" => {
                self.ca_file = Some(PathBuf::from(args.value(flag, "a PEM file")?));
            }
            "--cert" => self.cert = Some(PathBuf::from(args.value(flag, "a PEM file")?)),
            "--key" => self.key = Some(PathBuf::from(args.value(flag, "a PEM file")?)),
            "--insecure" => self.insecure = true,
            "--will-topic" => {
                let raw = args.value(flag, "a topic")?;
                self.will_topic = Some(parse_topic_name(flag, raw)?);
            }
            "--will-payload" => {
                let raw = args.value(flag, "a message")?;
                self.will_payload = Some(Bytes::copy_from_slice(raw.as_bytes()));
            }
            "--will-qos" => {
                self.will_qos = Some(parse_qos(flag, args.value(flag, "0, 1 or 2")?)?);
            }
            "--will-retain" => self.will_retain = true,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn apply_url(&mut self, flag: &str, raw: &str) -> Result<(), CliError> {
        let url = parse_url(raw)?;
        self.host = Some(url.host.to_owned());
        self.port = match url.port {
            Some(port) => Some(parse_number(flag, "port", port, 1, u16::MAX)?),
            // mqtts:// without a port means 8883 even if an earlier -p said otherwise.
            None => None,
        };
        if let Some(user) = url.username {
            self.username = Some(parse_mqtt_string(flag, user)?);
        }
        if let Some(password) = url.password {
            self.password = Some(Bytes::copy_from_slice(password.as_bytes()));
        }
        self.url_tls = url.tls;
        self.url_topic = Some(url.topic.to_owned());
        Ok(())
    }

    /// Applies the defaults and checks the combinations no single flag can.
    pub(super) fn finish(self, role: Role) -> Result<ConnectOptions, CliError> {
        let protocol = self.protocol.unwrap_or(ProtocolVersion::V5);
        let client_id = match self.client_id {
            Some(id) => id,
            None => parse_mqtt_string("-i", &role.default_client_id())?,
        };
        if protocol == ProtocolVersion::V311 && self.persistent_session && client_id.is_empty() {
            // [MQTT-3.1.3-7]: an empty client id needs Clean Session in 3.1.1.
            return Err(CliError::PersistentSessionWithoutId);
        }
        if protocol == ProtocolVersion::V311 && self.password.is_some() && self.username.is_none() {
            return Err(CliError::PasswordWithoutUsername);
        }
        let client_cert = match (self.cert, self.key) {
            (Some(cert), Some(key)) => Some(ClientCert { cert, key }),
            (None, None) => None,
            (Some(_), None) => return Err(CliError::CertWithoutKey),
            (None, Some(_)) => return Err(CliError::KeyWithoutCert),
        };
        let tls =
            (self.url_tls || self.ca_file.is_some() || client_cert.is_some() || self.insecure)
                .then_some(TlsOptions {
                    ca_file: self.ca_file,
                    client_cert,
                    verify_hostname: !self.insecure,
                });
        let will = match self.will_topic {
            Some(topic) => Some(Will {
                topic,
                payload: self.will_payload.unwrap_or_default(),
                qos: self.will_qos.unwrap_or_default(),
                retain: self.will_retain,
                properties: WillProperties::default(),
            }),
            None => {
                let orphan = [
                    ("--will-payload", self.will_payload.is_some()),
                    ("--will-qos", self.will_qos.is_some()),
                    ("--will-retain", self.will_retain),
                ]
                .into_iter()
                .find_map(|(flag, given)| given.then_some(flag));
                if let Some(flag) = orphan {
                    return Err(CliError::WillWithoutTopic(flag));
                }
                None
            }
        };
        let port = self.port.unwrap_or(if tls.is_some() {
            DEFAULT_TLS_PORT
        } else {
            DEFAULT_PORT
        });
        Ok(ConnectOptions {
            host: self.host.unwrap_or_else(|| DEFAULT_HOST.to_owned()),
            port,
            client_id,
            username: self.username,
            password: self.password,
            keep_alive: self.keep_alive.unwrap_or(DEFAULT_KEEP_ALIVE),
            protocol,
            clean_start: !self.persistent_session,
            qos: self.qos.unwrap_or_default(),
            debug: self.debug,
            tls,
            will,
        })
    }
}

/// The connection part of both help texts, written once. `$role` is "pub" or "sub".
macro_rules! connection_help {
    ($role:literal) => {
        concat!(
            "connection:
  -h, --host HOST         broker host name or address (default 127.0.0.1)
  -p, --port PORT         broker port (default 1883, or 8883 with any TLS option)
  -L, --url URL           mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT]/TOPIC: address,
                          login and topic at once; mqtts:// turns TLS on
  -V, --protocol-version VERSION
                          MQTT version: 5 (or mqttv5) or 311 (or mqttv311); default 5,
                          where mosquitto defaults to 3.1.1; MQTT 3.1 is not supported
  -i, --id ID             client id (default fieldgate-",
            $role,
            "-<process id>)
  -u, --username USER     user name to log in with
  -P, --pw PASSWORD       password to log in with (MQTT 3.1.1 needs -u as well)
  -k, --keepalive SECS    longest silence before a ping, 0 to 65535, 0 = never
                          (default 60)
  -c, --disable-clean-session
                          keep the session on the broker after disconnecting and
                          resume it next time (3.1.1 needs a non-empty -i)
  -q, --qos 0|1|2         quality of service (default 0)
  -d, --debug             print protocol debug messages to stderr

will (what the broker publishes for us if the connection drops):
  --will-topic TOPIC      topic of the will; the other --will-* flags need it
  --will-payload TEXT     message of the will (default empty)
  --will-qos 0|1|2        QoS of the will (default 0)
  --will-retain           have the broker retain the will

TLS (giving any of these turns TLS on):
  --cafile FILE           trust the CA certificates in this PEM file
  --cert FILE             log in with this client certificate (PEM; needs --key)
  --key FILE              private key of --cert (PEM; needs --cert)
  --insecure              accept a server certificate issued for another host name

  --help                  print this help

exit status: 0 success, 1 bad arguments, 27 sub -W timed out, 69 broker unreachable,
  70 other errors after connecting; if the broker refuses the connection, its CONNACK
  code (1 to 5 with MQTT 3.1.1, 128 and up with MQTT 5)."
        )
    };
}
pub(super) use connection_help;

#[cfg(test)]
mod tests {
    use super::*;
    use fieldgate::mqtt::string::StringError;

    fn finish(args: &[&str], role: Role) -> Result<ConnectOptions, CliError> {
        let mut cursor = ArgCursor::new(args);
        let mut builder = ConnectBuilder::default();
        while let Some(flag) = cursor.next_arg() {
            if !builder.accept(flag, &mut cursor)? {
                return Err(unclaimed(flag, &[]));
            }
        }
        builder.finish(role)
    }

    fn parse(args: &[&str]) -> Result<ConnectOptions, CliError> {
        finish(args, Role::Pub)
    }

    fn ok(args: &[&str]) -> ConnectOptions {
        parse(args).unwrap()
    }

    #[test]
    fn the_defaults_are_localhost_1883_mqtt_5_keepalive_60_clean_qos_0() {
        let o = ok(&[]);
        assert_eq!(o.host, "127.0.0.1");
        assert_eq!(o.port, 1883);
        assert_eq!(o.keep_alive, 60);
        assert_eq!(o.protocol, ProtocolVersion::V5);
        assert!(o.clean_start);
        assert_eq!(o.qos, QoS::AtMostOnce);
        assert!(!o.debug);
        assert_eq!(o.username, None);
        assert_eq!(o.password, None);
        assert_eq!(o.tls, None);
        assert_eq!(o.will, None);
        assert_eq!(o.session_expiry_interval(), None);
    }

    #[test]
    fn the_default_client_id_names_the_command_and_the_process() {
        let pid = std::process::id();
        assert_eq!(ok(&[]).client_id, format!("fieldgate-pub-{pid}").as_str());
        let sub = finish(&[], Role::Sub).unwrap();
        assert_eq!(sub.client_id, format!("fieldgate-sub-{pid}").as_str());
    }

    #[test]
    fn every_connection_flag_is_parsed() {
        let o = ok(&[
            "-h",
            "broker.lan",
            "-p",
            "1884",
            "-i",
            "me",
            "-u",
            "user",
            "-P",
            "secret",
            "-k",
            "30",
            "-V",
            "311",
            "-c",
            "-q",
            "2",
            "-d",
        ]);
        assert_eq!(o.host, "broker.lan");
        assert_eq!(o.port, 1884);
        assert_eq!(o.client_id, "me");
        assert_eq!(o.username.as_deref(), Some("user"));
        assert_eq!(o.password, Some(Bytes::from_static(b"secret")));
        assert_eq!(o.keep_alive, 30);
        assert_eq!(o.protocol, ProtocolVersion::V311);
        assert!(!o.clean_start);
        assert_eq!(o.qos, QoS::ExactlyOnce);
        assert!(o.debug);
    }

    #[test]
    fn the_long_forms_mosquitto_has_are_accepted() {
        let o = ok(&[
            "--host",
            "b",
            "--port",
            "2",
            "--id",
            "x",
            "--username",
            "u",
            "--pw",
            "p",
            "--keepalive",
            "0",
            "--protocol-version",
            "mqttv311",
            "--disable-clean-session",
            "--qos",
            "1",
            "--debug",
        ]);
        assert_eq!((o.host.as_str(), o.port), ("b", 2));
        assert_eq!(o.keep_alive, 0);
        assert_eq!(o.protocol, ProtocolVersion::V311);
        assert!(!o.clean_start && o.debug);
        assert_eq!(o.qos, QoS::AtLeastOnce);
    }

    #[test]
    fn a_later_flag_overrides_an_earlier_one() {
        let o = ok(&["-h", "a", "-h", "b", "-q", "2", "-q", "0"]);
        assert_eq!(o.host, "b");
        assert_eq!(o.qos, QoS::AtMostOnce);
    }

    #[test]
    fn every_spelling_of_the_two_protocol_versions_is_accepted() {
        for v in ["311", "mqttv311", "3.1.1"] {
            assert_eq!(ok(&["-V", v]).protocol, ProtocolVersion::V311, "{v}");
        }
        for v in ["5", "mqttv5", "5.0"] {
            assert_eq!(ok(&["-V", v]).protocol, ProtocolVersion::V5, "{v}");
        }
    }

    #[test]
    fn mqtt_3_1_is_refused_rather_than_silently_spoken_as_3_1_1() {
        for v in ["31", "mqttv31"] {
            let e = parse(&["-V", v]).unwrap_err();
            assert_eq!(e, CliError::Mqtt31NotSupported(v.into()));
            assert!(e.to_string().contains("use 311"), "{e}");
        }
    }

    #[test]
    fn an_unknown_protocol_version_is_refused() {
        let e = parse(&["-V", "4"]).unwrap_err();
        assert_eq!(e, CliError::InvalidProtocolVersion("4".into()));
        assert_eq!(
            e.to_string(),
            "-V: unknown protocol version 4; use 5 (MQTT 5.0) or 311 (MQTT 3.1.1)"
        );
    }

    #[test]
    fn any_tls_option_turns_tls_on_and_makes_8883_the_default_port() {
        for args in [
            &["--cafile", "ca.pem"][..],
            &["--cert", "c.pem", "--key", "k.pem"],
            &["--insecure"],
        ] {
            let o = ok(args);
            assert!(o.tls.is_some(), "{args:?}");
            assert_eq!(o.port, 8883, "{args:?}");
        }
        assert_eq!(ok(&["--cafile", "ca.pem", "-p", "1"]).port, 1);
        assert_eq!(ok(&["-p", "1", "--cafile", "ca.pem"]).port, 1);
    }

    #[test]
    fn the_tls_flags_are_parsed() {
        let o = ok(&[
            "--cafile",
            "/etc/ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--insecure",
        ]);
        assert_eq!(
            o.tls,
            Some(TlsOptions {
                ca_file: Some("/etc/ca.pem".into()),
                client_cert: Some(ClientCert {
                    cert: "c.pem".into(),
                    key: "k.pem".into()
                }),
                verify_hostname: false,
            })
        );
        assert!(ok(&["--cafile", "ca"]).tls.unwrap().verify_hostname);
    }

    #[test]
    fn a_certificate_without_its_key_is_refused_and_the_other_way_round() {
        let e = parse(&["--cert", "c.pem"]).unwrap_err();
        assert_eq!(e, CliError::CertWithoutKey);
        assert_eq!(
            e.to_string(),
            "--cert needs --key: give the private key of the client certificate too"
        );
        assert_eq!(parse(&["--key", "k.pem"]), Err(CliError::KeyWithoutCert));
    }

    #[test]
    fn the_will_flags_build_a_will() {
        let o = ok(&[
            "--will-topic",
            "gw/status",
            "--will-payload",
            "offline",
            "--will-qos",
            "1",
            "--will-retain",
        ]);
        let will = o.will.unwrap();
        assert_eq!(will.topic.as_str(), "gw/status");
        assert_eq!(will.payload, Bytes::from_static(b"offline"));
        assert_eq!(will.qos, QoS::AtLeastOnce);
        assert!(will.retain);
        assert_eq!(will.properties, WillProperties::default());
    }

    #[test]
    fn a_will_topic_alone_makes_an_empty_unretained_qos_0_will() {
        let will = ok(&["--will-topic", "t"]).will.unwrap();
        assert!(will.payload.is_empty());
        assert_eq!(will.qos, QoS::AtMostOnce);
        assert!(!will.retain);
    }

    #[test]
    fn will_flags_without_a_will_topic_are_refused() {
        for (args, flag) in [
            (&["--will-payload", "x"][..], "--will-payload"),
            (&["--will-qos", "1"], "--will-qos"),
            (&["--will-retain"], "--will-retain"),
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e, CliError::WillWithoutTopic(flag), "{args:?}");
            assert!(e.to_string().starts_with(flag), "{e}");
            assert!(e.to_string().contains("--will-topic"), "{e}");
        }
    }

    #[test]
    fn a_will_topic_with_a_wildcard_is_refused() {
        let e = parse(&["--will-topic", "a/#"]).unwrap_err();
        assert!(matches!(e, CliError::InvalidTopicName { ref flag, .. } if flag == "--will-topic"));
    }

    #[test]
    fn a_bad_qos_is_refused_with_the_flag_and_the_value() {
        let e = parse(&["-q", "3"]).unwrap_err();
        assert_eq!(e.to_string(), "-q: QoS must be 0, 1 or 2, got 3");
        assert_eq!(
            parse(&["--will-qos", "x"]).unwrap_err().to_string(),
            "--will-qos: QoS must be 0, 1 or 2, got x"
        );
    }

    #[test]
    fn a_keepalive_outside_0_to_65535_is_refused() {
        for raw in ["65536", "-1", "1.5", "ten", ""] {
            let e = parse(&["-k", raw]).unwrap_err();
            assert!(matches!(e, CliError::OutOfRange { .. }), "{raw:?}: {e}");
        }
        assert_eq!(
            parse(&["-k", "65536"]).unwrap_err().to_string(),
            "-k: keepalive (seconds) must be a whole number from 0 to 65535, got 65536"
        );
        assert_eq!(ok(&["-k", "65535"]).keep_alive, 65535);
    }

    #[test]
    fn a_port_of_0_or_above_65535_is_refused() {
        for raw in ["0", "65536"] {
            let e = parse(&["-p", raw]).unwrap_err();
            assert!(
                matches!(
                    e,
                    CliError::OutOfRange {
                        min: 1,
                        max: 65535,
                        ..
                    }
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn a_flag_missing_its_value_is_named() {
        for flag in [
            "-h",
            "-p",
            "-i",
            "-u",
            "-P",
            "-k",
            "-V",
            "-q",
            "-L",
            "--cafile",
            "--will-topic",
        ] {
            let e = parse(&[flag]).unwrap_err();
            assert!(
                matches!(e, CliError::MissingValue { flag: ref f, .. } if f == flag),
                "{flag}: {e}"
            );
            assert!(
                e.to_string().starts_with(&format!("{flag}: missing value")),
                "{e}"
            );
        }
    }

    #[test]
    fn an_empty_host_is_refused() {
        assert_eq!(parse(&["-h", ""]), Err(CliError::EmptyHost));
    }

    #[test]
    fn a_client_id_with_a_null_character_is_refused() {
        assert_eq!(
            parse(&["-i", "a\0b"]),
            Err(CliError::InvalidString {
                flag: "-i".into(),
                source: StringError::NullCharacter
            })
        );
    }

    #[test]
    fn a_persistent_3_1_1_session_needs_a_client_id() {
        let e = parse(&["-V", "311", "-c", "-i", ""]).unwrap_err();
        assert_eq!(e, CliError::PersistentSessionWithoutId);
        // The generated default id is never empty, and MQTT 5 lets the broker assign one.
        assert!(!ok(&["-V", "311", "-c"]).clean_start);
        assert!(!ok(&["-V", "5", "-c", "-i", ""]).clean_start);
    }

    #[test]
    fn a_persistent_mqtt_5_session_asks_never_to_expire() {
        assert_eq!(ok(&["-c"]).session_expiry_interval(), Some(u32::MAX));
        assert_eq!(ok(&["-c", "-V", "311"]).session_expiry_interval(), None);
    }

    #[test]
    fn a_3_1_1_password_needs_a_user_name() {
        assert_eq!(
            parse(&["-V", "311", "-P", "pw"]),
            Err(CliError::PasswordWithoutUsername)
        );
        assert!(ok(&["-V", "5", "-P", "pw"]).password.is_some());
    }

    #[test]
    fn a_url_gives_host_port_login_and_topic() {
        let args = ["-L", "mqtt://ann:pw:x@broker:1884/a/b"];
        let mut cursor = ArgCursor::new(&args);
        let mut builder = ConnectBuilder::default();
        let flag = cursor.next_arg().unwrap();
        assert!(builder.accept(flag, &mut cursor).unwrap());
        assert_eq!(builder.url_topic.as_deref(), Some("a/b"));
        let o = builder.finish(Role::Pub).unwrap();
        assert_eq!((o.host.as_str(), o.port), ("broker", 1884));
        assert_eq!(o.username.as_deref(), Some("ann"));
        assert_eq!(o.password, Some(Bytes::from_static(b"pw:x")));
        assert_eq!(o.tls, None);
    }

    #[test]
    fn an_mqtts_url_turns_tls_on_and_takes_a_bracketed_ipv6_host() {
        let o = ok(&["-L", "mqtts://[::1]/t"]);
        assert_eq!((o.host.as_str(), o.port), ("::1", 8883));
        assert!(o.tls.unwrap().verify_hostname);
        assert_eq!(ok(&["-L", "mqtt://[fe80::1]:1884/t"]).port, 1884);
    }

    #[test]
    fn a_url_without_a_password_or_login_has_none() {
        let o = ok(&["-L", "mqtt://ann@h/t"]);
        assert_eq!(o.username.as_deref(), Some("ann"));
        assert_eq!(o.password, None);
        let o = ok(&["-L", "mqtt://h/t"]);
        assert_eq!((o.host.as_str(), o.port, o.username), ("h", 1883, None));
        let o = ok(&["-L", "mqtt://ann:@h/t"]);
        assert_eq!(o.password, Some(Bytes::new()));
    }

    #[test]
    fn a_malformed_url_says_what_is_wrong() {
        for (url, why) in [
            ("http://h/t", "it must start with mqtt:// or mqtts://"),
            ("mqtt://h", "it must end with /<topic>"),
            ("mqtt://h/", "the topic after the host is empty"),
            ("mqtt:///t", "the host is empty"),
            ("mqtt://[::1/t", "an IPv6 address needs its closing ']'"),
            ("mqtt://[::1]x/t", "only :<port> may follow ']'"),
        ] {
            assert_eq!(
                parse(&["-L", url]),
                Err(CliError::InvalidUrl {
                    url: url.into(),
                    why
                }),
                "{url}"
            );
        }
        assert!(matches!(
            parse(&["-L", "mqtt://h:99999/t"]),
            Err(CliError::OutOfRange { .. })
        ));
    }

    #[test]
    fn an_unknown_flag_a_mosquitto_only_flag_and_a_stray_word_are_told_apart() {
        assert_eq!(parse(&["-z"]), Err(CliError::UnknownOption("-z".into())));
        assert_eq!(
            parse(&["--capath"]),
            Err(CliError::UnsupportedOption("--capath".into()))
        );
        assert_eq!(
            parse(&["hello"]),
            Err(CliError::UnexpectedArgument("hello".into()))
        );
        assert_eq!(parse(&["-"]), Err(CliError::UnexpectedArgument("-".into())));
    }

    #[test]
    fn a_value_starting_with_a_dash_belongs_to_its_flag() {
        assert_eq!(
            ok(&["-P", "-secret"]).password,
            Some(Bytes::from_static(b"-secret"))
        );
    }
}
