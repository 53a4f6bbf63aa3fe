//! `fieldgate broker`: runs the local MQTT broker on its own, like `mosquitto -p PORT`
//! (127.0.0.1 only, anonymous access) until SIGINT or SIGTERM. It owns the flags and
//! the run; the broker itself is `fieldgate::mqtt::broker`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use fieldgate::mqtt::broker::persist::{Fsync, PersistConfig};
use fieldgate::mqtt::broker::{Broker, BrokerConfig, ListenerConfig, Transport};

use super::run::Outcome;
use super::{CliError, Command, EXIT_ERROR, EXIT_OK};

pub const HELP: &str = "\
usage: fieldgate broker -c FILE [-v]
       fieldgate broker [-p PORT] [--websocket-port PORT] [--state-dir DIR] [--fsync POLICY] [-v]

Runs the MQTT 3.1.1/5.0 broker alone: from the `broker:` section of a YAML configuration
file (listeners, TLS, password file, ACL, limits, persistence), or with no file on
127.0.0.1 with anonymous access (like `mosquitto -p PORT` in Mosquitto 2).

  -c, --config FILE        the YAML configuration (the gateway's own file works)
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
    /// `-c FILE`: the `broker:` section of this YAML file decides everything.
    pub config: Option<std::path::PathBuf>,
    pub port: u16,
    pub websocket_port: Option<u16>,
    pub state_dir: Option<std::path::PathBuf>,
    pub fsync: Fsync,
    pub verbose: bool,
}

pub fn parse_broker(args: &[&str]) -> Result<Command<BrokerOptions>, CliError> {
    let mut opts = BrokerOptions {
        config: None,
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
                let file = args.next().ok_or_else(|| CliError::MissingValue {
                    flag: arg.to_string(),
                    expects: "a YAML configuration file",
                })?;
                opts.config = Some(file.into());
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
    let config = match &opts.config {
        Some(file) => match fieldgate::config::load(file) {
            Ok(config) => match config.broker {
                Some(broker) => {
                    super::start_logging(&config.gateway.log);
                    broker
                }
                None => {
                    return Outcome {
                        code: super::EXIT_USAGE,
                        message: Some(format!("{}: no `broker:` section", file.display())),
                    };
                }
            },
            Err(e) => {
                return Outcome {
                    code: super::EXIT_USAGE,
                    message: Some(format!("{}:\n{e}", file.display())),
                };
            }
        },
        None => {
            super::start_logging(&fieldgate::observe::LogFilter::default());
            command_line_config(&opts)
        }
    };
    serve(config, opts.verbose).await
}

/// `-p`, `--websocket-port`, `--state-dir`, `--fsync`: a broker on 127.0.0.1.
fn command_line_config(opts: &BrokerOptions) -> BrokerConfig {
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
    let persistence = opts.state_dir.as_ref().map(|dir| PersistConfig {
        fsync: opts.fsync,
        ..PersistConfig::new(dir)
    });
    BrokerConfig {
        listeners,
        persistence,
        ..BrokerConfig::default()
    }
}

async fn serve(config: BrokerConfig, verbose: bool) -> Outcome {
    let broker = match Broker::start(config).await {
        Ok(broker) => broker,
        Err(e) => {
            return Outcome {
                code: EXIT_ERROR,
                message: Some(e.to_string()),
            };
        }
    };
    if verbose {
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

pub(super) async fn wait_for_stop_signal() {
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
