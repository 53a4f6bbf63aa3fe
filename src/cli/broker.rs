//! `fieldgate broker`: runs the local MQTT broker on its own, like `mosquitto -p PORT`
//! (127.0.0.1 only, anonymous access) until SIGINT or SIGTERM. It owns the flags and
//! the run; the broker itself is `fieldgate::mqtt::broker`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use fieldgate::mqtt::broker::persist::{Fsync, PersistConfig};
use fieldgate::mqtt::broker::{Broker, BrokerConfig, ListenerConfig, Transport};

use super::run::Outcome;
use super::{CliError, Command, EXIT_ERROR, EXIT_OK};

pub const HELP: &str = "\
usage: fieldgate broker [-p PORT] [--websocket-port PORT] [--state-dir DIR] [--fsync POLICY] [-v]

Runs the MQTT 3.1.1/5.0 broker alone, anonymous access, on 127.0.0.1 (like
`mosquitto -p PORT` in Mosquitto 2).

  -p, --port PORT          TCP listener port (default 1883; 0 picks a free one)
  --websocket-port PORT    also listen for MQTT over WebSocket (ws://, subprotocol mqtt)
  --state-dir DIR          keep retained messages and persistent sessions in DIR
                           (they survive a restart or a crash)
  --fsync POLICY           always | interval (default: at most 1 s of writes lost on
                           power loss) | never; a crash of the process loses nothing
                           a publisher was acknowledged for
  -v, --verbose            print the bound addresses on stderr
  --help                   this text";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerOptions {
    pub port: u16,
    pub websocket_port: Option<u16>,
    pub state_dir: Option<std::path::PathBuf>,
    pub fsync: Fsync,
    pub verbose: bool,
}

pub fn parse_broker(args: &[&str]) -> Result<Command<BrokerOptions>, CliError> {
    let mut opts = BrokerOptions {
        port: 1883,
        websocket_port: None,
        state_dir: None,
        fsync: Fsync::Interval(std::time::Duration::from_secs(1)),
        verbose: false,
    };
    let mut args = args.iter();
    while let Some(&arg) = args.next() {
        match arg {
            "--help" => return Ok(Command::Help(HELP)),
            "-p" | "--port" => opts.port = port(arg, args.next())?,
            "--websocket-port" => opts.websocket_port = Some(port(arg, args.next())?),
            "-v" | "--verbose" => opts.verbose = true,
            "--state-dir" => {
                let dir = args.next().ok_or_else(|| CliError::MissingValue {
                    flag: arg.to_string(),
                    expects: "a directory",
                })?;
                opts.state_dir = Some(dir.into());
            }
            "--fsync" => {
                opts.fsync = match args.next().copied() {
                    Some("always") => Fsync::Always,
                    Some("interval") => Fsync::Interval(std::time::Duration::from_secs(1)),
                    Some("never") => Fsync::Never,
                    _ => {
                        return Err(CliError::MissingValue {
                            flag: arg.to_string(),
                            expects: "always, interval or never",
                        });
                    }
                }
            }
            "-c" | "--config" => {
                return Err(CliError::UnsupportedOption(format!(
                    "{arg} (the YAML configuration comes with the gateway's config work)"
                )));
            }
            other if other.starts_with('-') => {
                return Err(CliError::UnknownOption(other.to_string()));
            }
            other => return Err(CliError::UnexpectedArgument(other.to_string())),
        }
    }
    Ok(Command::Run(opts))
}

fn port(flag: &str, value: Option<&&str>) -> Result<u16, CliError> {
    let value = value.ok_or_else(|| CliError::MissingValue {
        flag: flag.to_string(),
        expects: "a port number",
    })?;
    value.parse().map_err(|_| CliError::OutOfRange {
        flag: flag.to_string(),
        what: "the port",
        min: 0,
        max: 65535,
        got: value.to_string(),
    })
}

/// Runs the broker until SIGINT/SIGTERM, then disconnects clients cleanly.
pub async fn run(opts: BrokerOptions) -> Outcome {
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut listeners = vec![ListenerConfig {
        bind: SocketAddr::new(localhost, opts.port),
        transport: Transport::Tcp,
    }];
    if let Some(port) = opts.websocket_port {
        listeners.push(ListenerConfig {
            bind: SocketAddr::new(localhost, port),
            transport: Transport::WebSocket,
        });
    }
    let persistence = opts.state_dir.map(|dir| PersistConfig {
        fsync: opts.fsync,
        ..PersistConfig::new(dir)
    });
    let config = BrokerConfig {
        listeners,
        persistence,
        ..BrokerConfig::default()
    };
    let broker = match Broker::start(config).await {
        Ok(broker) => broker,
        Err(e) => {
            return Outcome {
                code: EXIT_ERROR,
                message: Some(e.to_string()),
            };
        }
    };
    if opts.verbose {
        for addr in broker.local_addrs() {
            eprintln!("fieldgate broker: listening on {addr}");
        }
    }
    wait_for_stop_signal().await;
    broker.shutdown().await;
    Outcome {
        code: EXIT_OK,
        message: None,
    }
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        // Without signal handlers, Ctrl-C still ends the process the default way.
        _ => std::future::pending().await,
    }
}
