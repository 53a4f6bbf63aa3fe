//! The subcommands' flags, help texts, output and exit codes. `pub` and `sub` take
//! mosquitto_pub/mosquitto_sub's flags where they overlap so that habits carry over
//! (`options`, `pub_args`, `sub_args`, `format`, `run`); `passwd` edits password files like
//! mosquitto_passwd; `broker` and `gateway` start the broker and the gateway from the
//! library; `modbus` reads and writes one Modbus device through the library's bus task.
//! It owns no protocol or gateway logic and opens no sockets itself: the library
//! connects, serves and publishes with the options parsed here. `pub -l`/`-s`, `passwd`
//! and the `run` modules read stdin or files where a flag asks for it.
//!
//! # Exit codes
//!
//! mosquitto documents 0 for success, 27 for `mosquitto_sub -W` timing out and, when the
//! broker refuses the connection, the CONNACK code; everything else is "non-zero". We keep
//! those and give the undocumented cases their own values, chosen outside the CONNACK
//! ranges (1..=5 for 3.1.1, 128..=162 for 5.0) so a script can tell them apart:
//!
//! | code | constant | meaning |
//! |---|---|---|
//! | 0 | [`EXIT_OK`] | pub: every message sent (and acknowledged at QoS 1/2); sub: `-C` reached |
//! | 1 | [`EXIT_USAGE`] | bad arguments, or the `-f` file cannot be read (mosquitto: also 1) |
//! | 1..=5 | [`connect_refused_exit_code`] | MQTT 3.1.1 broker refused: its CONNACK return code |
//! | 27 | [`EXIT_TIMEOUT`] | sub `-W` expired (mosquitto's value) |
//! | 69 | [`EXIT_UNREACHABLE`] | no connection: name lookup, TCP connect or TLS handshake failed |
//! | 70 | [`EXIT_ERROR`] | anything else after connecting: connection lost, protocol error, stdin error |
//! | 128..=162 | [`connect_refused_exit_code`] | MQTT 5 broker refused: its CONNACK reason code |
//!
//! As with mosquitto, 3.1.1's refusal 1 (unacceptable protocol version) shares its value
//! with [`EXIT_USAGE`]. mosquitto exits 1 where we use 69 and 70.

pub mod broker;
mod format;
pub mod gateway;
pub mod modbus;
mod options;
pub mod passwd;
mod pub_args;
pub mod run;
mod sub_args;

pub use {
    format::format_message,
    options::ConnectOptions,
    pub_args::{MessageSource, PubOptions, parse_pub},
    sub_args::{SubOptions, parse_sub},
};

use fieldgate::mqtt::packet::{ProtocolVersion, ReasonCode};
use fieldgate::mqtt::string::StringError;
use fieldgate::mqtt::topic::TopicError;

/// Installs the logger of a long-running command (`run`, `broker`): the configuration's
/// `gateway.log_level`, with `RUST_LOG`'s directives over it.
pub fn start_logging(configured: &fieldgate::observe::LogFilter) {
    fieldgate::observe::init(log_filter(configured));
}

/// The configuration's `gateway.log_level` with `RUST_LOG`'s directives over it.
pub fn log_filter(configured: &fieldgate::observe::LogFilter) -> fieldgate::observe::LogFilter {
    let mut filter = configured.clone();
    if let Ok(spec) = std::env::var("RUST_LOG")
        && let Err(e) = filter.apply(&spec)
    {
        // A typo in the environment must not stop a service: say so, keep the rest.
        eprintln!("fieldgate: RUST_LOG ignored: {e}");
        filter = configured.clone();
    }
    filter
}

/// Success.
pub const EXIT_OK: u8 = 0;
/// Bad arguments (the one-line [`CliError`] goes to stderr), or an unreadable `-f` file.
pub const EXIT_USAGE: u8 = 1;
/// The exit code for a refusal whose code is not a refusal code (below 0x80 in MQTT 5,
/// or not one of 3.1.1's five): 0x80, "Unspecified error". Prefer
/// [`connect_refused_exit_code`], which passes the broker's code through.
pub const EXIT_CONNECT_REFUSED: u8 = 0x80;
/// `sub -W` expired, whether or not messages arrived (mosquitto_sub's documented 27).
pub const EXIT_TIMEOUT: u8 = 27;
/// The broker could not be reached: name lookup, TCP connect or TLS handshake failed
/// (sysexits' EX_UNAVAILABLE; mosquitto uses 1).
pub const EXIT_UNREACHABLE: u8 = 69;
/// Any other failure once connected: the connection dropped, the broker broke the
/// protocol, a subscription was refused, stdin could not be read (mosquitto uses 1).
pub const EXIT_ERROR: u8 = 70;

/// The exit code for a CONNACK that refused the connection, as mosquitto does: the code
/// the broker sent. The codec carries 3.1.1's return codes 1..=5 as their 5.0 reason
/// codes; this maps them back so a 3.1.1 refusal exits with the 1..=5 its broker sent.
pub fn connect_refused_exit_code(code: ReasonCode, protocol: ProtocolVersion) -> u8 {
    match protocol {
        ProtocolVersion::V5 if !code.is_success() => code.0,
        ProtocolVersion::V5 => EXIT_CONNECT_REFUSED,
        ProtocolVersion::V311 => match code {
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => 1,
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => 2,
            ReasonCode::SERVER_UNAVAILABLE => 3,
            ReasonCode::BAD_USER_NAME_OR_PASSWORD => 4,
            ReasonCode::NOT_AUTHORIZED => 5,
            _ => EXIT_CONNECT_REFUSED,
        },
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<T> {
    /// Connect and do the work with these options.
    Run(T),
    /// `--help`: print this text to stdout and exit with [`EXIT_OK`].
    Help(&'static str),
}

/// Why the arguments cannot be used. Each message is one line that names the flag, says
/// what is wrong and how to put it right; print it as `fieldgate pub: <message>` and exit
/// with [`EXIT_USAGE`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    #[error("unknown option {0} (--help lists the options)")]
    UnknownOption(String),
    #[error("{0} is a mosquitto option that fieldgate does not support (--help lists ours)")]
    UnsupportedOption(String),
    #[error(
        "unexpected argument {0:?}: each value goes right after its option (--help lists them)"
    )]
    UnexpectedArgument(String),
    #[error("{flag}: missing value; expected {expects} after it")]
    MissingValue { flag: String, expects: &'static str },
    #[error("{flag}: QoS must be 0, 1 or 2, got {got}")]
    InvalidQoS { flag: String, got: String },
    #[error("{flag}: {what} must be a whole number from {min} to {max}, got {got}")]
    OutOfRange {
        flag: String,
        what: &'static str,
        min: u64,
        max: u64,
        got: String,
    },
    #[error("-V: unknown protocol version {0}; use 5 (MQTT 5.0) or 311 (MQTT 3.1.1)")]
    InvalidProtocolVersion(String),
    #[error("-V: {0} is MQTT 3.1, which fieldgate does not speak; use 311 (MQTT 3.1.1) or 5")]
    Mqtt31NotSupported(String),
    #[error("{flag}: {value:?} cannot be published to: {source}")]
    InvalidTopicName {
        flag: String,
        value: String,
        source: TopicError,
    },
    #[error("{flag}: {value:?} is not a valid topic filter: {source}")]
    InvalidTopicFilter {
        flag: String,
        value: String,
        source: TopicError,
    },
    #[error("{flag}: {source}")]
    InvalidString { flag: String, source: StringError },
    #[error("-h: the host is empty; give a host name or address")]
    EmptyHost,
    #[error("-L: {url:?} is not a mqtt[s]://[user[:password]@]host[:port]/topic URL: {why}")]
    InvalidUrl { url: String, why: &'static str },
    #[error("-c with MQTT 3.1.1 needs a non-empty client id: give -i ID, or use -V 5")]
    PersistentSessionWithoutId,
    #[error("-P with MQTT 3.1.1 needs a user name as well: add -u USER, or use -V 5")]
    PasswordWithoutUsername,
    #[error("--cert needs --key: give the private key of the client certificate too")]
    CertWithoutKey,
    #[error("--key needs --cert: give the client certificate the key belongs to")]
    KeyWithoutCert,
    #[error("{0} needs --will-topic: a will is published on a topic")]
    WillWithoutTopic(&'static str),
    #[error("no topic given: add -t TOPIC")]
    MissingTopic,
    #[error("pub publishes to one topic, but both {first:?} and {second:?} were given")]
    TopicGivenTwice { first: String, second: String },
    #[error("no message given: add one of -m TEXT, -f FILE, -s, -l or -n")]
    MissingMessage,
    #[error("{second}: the message was already given by {first}; use one of -m, -f, -s, -l, -n")]
    TwoMessageSources { first: String, second: String },
    #[error("no topic filter given: add -t FILTER (as many as you like)")]
    MissingFilter,
    #[error("-F: {0}")]
    InvalidFormat(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_3_1_1_refusal_exits_with_the_return_code_the_broker_sent() {
        // What the codec turns 3.1.1's return codes 1..=5 into.
        let carried = [0x84, 0x85, 0x88, 0x86, 0x87];
        for (sent, code) in (1..=5).zip(carried) {
            assert_eq!(
                connect_refused_exit_code(ReasonCode(code), ProtocolVersion::V311),
                sent
            );
        }
    }

    #[test]
    fn an_mqtt_5_refusal_exits_with_its_reason_code() {
        for code in [
            ReasonCode::BANNED,
            ReasonCode::SERVER_BUSY,
            ReasonCode::NOT_AUTHORIZED,
        ] {
            assert_eq!(connect_refused_exit_code(code, ProtocolVersion::V5), code.0);
        }
    }

    #[test]
    fn a_refusal_without_a_refusal_code_exits_with_unspecified_error() {
        assert_eq!(
            connect_refused_exit_code(ReasonCode::SUCCESS, ProtocolVersion::V5),
            128
        );
        assert_eq!(
            connect_refused_exit_code(ReasonCode::BANNED, ProtocolVersion::V311),
            128
        );
    }

    #[test]
    fn the_exit_codes_stay_clear_of_each_other_and_of_the_connack_ranges() {
        let connack = |c: u8| (1..=5).contains(&c) || (128..=162).contains(&c);
        for code in [EXIT_OK, EXIT_TIMEOUT, EXIT_UNREACHABLE, EXIT_ERROR] {
            assert!(!connack(code), "{code}");
        }
        assert_eq!((EXIT_OK, EXIT_USAGE, EXIT_TIMEOUT), (0, 1, 27));
    }

    #[test]
    fn every_error_message_is_one_line() {
        let errors = [
            CliError::UnknownOption("-z".into()),
            CliError::UnexpectedArgument("x".into()),
            CliError::MissingMessage,
            CliError::InvalidFormat("%z is unknown".into()),
        ];
        for e in errors {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }
}
