//! `fieldgate run`, `fieldgate check-config` and `fieldgate print-default-config`: the
//! gateway's command line. Reading and checking the YAML is `config`'s job, running it
//! `app`'s; this owns the flags, the messages and the exit codes.

use std::path::PathBuf;

use fieldgate::app::Gateway;
use fieldgate::config::{self, Config, ConfigError};

use fieldgate::systemd::{self, Notifier};
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::run::Outcome;

/// How long a clean stop may take (flushing the spool, saying `offline`, closing the
/// broker) before the process ends anyway; below systemd's default TimeoutStopSec (90 s).
const SHUTDOWN_LIMIT: std::time::Duration = std::time::Duration::from_secs(20);

/// What ended a wait of the main loop.
enum Woke {
    Stop,
    Reload,
    Refresh,
}

/// How often the metrics take the broker's and the spool's figures, and `<prefix>/status`
/// is published.
const STATUS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// SIGINT and SIGTERM, listened to for the process's life.
struct StopSignals {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
}

impl StopSignals {
    fn new() -> StopSignals {
        StopSignals {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
        }
    }

    /// Resolves at the next SIGINT or SIGTERM (never, without handlers: the default
    /// action then ends the process anyway).
    ///
    /// # Cancel safety
    /// Cancel safe: a signal not yet taken stays pending.
    async fn recv(&mut self) {
        tokio::select! {
            () = next_signal(&mut self.interrupt) => {}
            () = next_signal(&mut self.terminate) => {}
        }
    }
}

/// Resolves at each signal of `signals` (never, without a handler).
///
/// # Cancel safety
/// Cancel safe: a signal not yet taken stays pending.
async fn next_signal(signals: &mut Option<Signal>) {
    match signals {
        Some(signal) => {
            if signal.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// SIGHUP: reads the file again; applies it if it is valid, else keeps what runs and says
/// why (every problem, as `check-config` would). `Err` when the gateway could not go on
/// (see [`Gateway::reload`]): the caller stops, so the service manager restarts it.
async fn reload(gateway: &mut Gateway, file: Option<&PathBuf>) -> Result<(), String> {
    let Some(file) = file else {
        fieldgate::observe::warn(format_args!(
            "fieldgate run: reload: running the embedded configuration, nothing to re-read"
        ));
        return Ok(());
    };
    match config::load(file) {
        Err(e) => fieldgate::observe::warn(format_args!(
            "fieldgate run: reload refused, the running configuration stays: {}:\n{e}",
            file.display()
        )),
        Ok(config) => {
            let report = gateway
                .reload(config)
                .await
                .map_err(|e| format!("reload: the gateway could not be started again: {e}"))?;
            if let Some(log) = &report.log {
                fieldgate::observe::set_filter(super::log_filter(log));
            }
            fieldgate::observe::warn(format_args!("fieldgate run: reloaded: {report}"));
        }
    }
    Ok(())
}

/// Pets systemd's watchdog every `interval` while the gateway is healthy, with a status
/// line; never returns (a stop signal ends the wait). Without a watchdog it only waits.
async fn pet_watchdog(
    systemd: &Notifier,
    gateway: &Gateway,
    interval: Option<std::time::Duration>,
) {
    let Some(interval) = interval else {
        return std::future::pending().await;
    };
    let mut ticks = tokio::time::interval(interval);
    let mut warned = false;
    loop {
        ticks.tick().await;
        if gateway.healthy() {
            let _ = systemd.notify(&format!("WATCHDOG=1\nSTATUS={}", gateway.summary()));
            warned = false;
        } else if !warned {
            // Not petting lets systemd restart us (Restart=on-failure); say why first.
            fieldgate::observe::warn(format_args!(
                "fieldgate run: unhealthy ({}); the watchdog is no longer petted",
                gateway.summary()
            ));
            let _ = systemd.status(&format!("unhealthy: {}", gateway.summary()));
            warned = true;
        }
    }
}
use super::{EXIT_ERROR, EXIT_OK, EXIT_USAGE};

pub const RUN_HELP: &str = "\
usage: fieldgate run [-c FILE]

Runs the gateway: the local broker, the devices, telemetry and commands, until SIGINT
or SIGTERM. Without -c it runs the embedded default (a broker on 127.0.0.1:1883 and a
simulated device); `fieldgate print-default-config` shows it. Watch and drive it with

  fieldgate sub -t 'fieldgate/#' -v
  fieldgate pub -t fieldgate/fieldgate/demo/switch/set -m on";

/// `run [-c FILE]`: the configuration file, if any.
pub fn parse_run(args: &[&str]) -> Result<Option<Option<PathBuf>>, String> {
    match args {
        [] => Ok(Some(None)),
        ["--help" | "-h"] => Ok(None),
        ["-c" | "--config", file] => Ok(Some(Some(PathBuf::from(file)))),
        ["-c" | "--config"] => Err("-c: missing value; expected a YAML file after it".into()),
        [other, ..] => Err(format!(
            "unexpected argument {other:?} (--help lists the options)"
        )),
    }
}

fn load(file: Option<&PathBuf>) -> Result<Config, Outcome> {
    let loaded = match file {
        Some(file) => config::load(file),
        None => config::default_config(),
    };
    loaded.map_err(|e| Outcome {
        code: EXIT_USAGE,
        message: Some(describe(file, &e)),
    })
}

fn describe(file: Option<&PathBuf>, e: &ConfigError) -> String {
    let name = file.map_or_else(
        || "the embedded default".to_string(),
        |f| f.display().to_string(),
    );
    format!("{name}:\n{e}")
}

/// Runs the gateway until a stop signal.
pub async fn run(file: Option<PathBuf>) -> Outcome {
    let config = match load(file.as_ref()) {
        Ok(config) => config,
        Err(outcome) => return outcome,
    };
    super::start_logging(&config.gateway.log);
    // Handlers before anything else: systemd may send SIGHUP (`systemctl reload`) as
    // soon as READY=1 is out, and without a handler SIGHUP's default action ends the
    // process. A signal taken during the start waits for the loop below.
    let mut hangups = signal(SignalKind::hangup()).ok();
    let mut stops = StopSignals::new();
    let gateway = match Gateway::start(config).await {
        Ok(gateway) => gateway,
        Err(e) => {
            return Outcome {
                code: EXIT_ERROR,
                message: Some(e.to_string()),
            };
        }
    };
    for addr in gateway.broker_addrs() {
        eprintln!("fieldgate run: broker listening on {addr}");
    }
    // systemd (Type=notify): ready now that the broker listens and devices run; the
    // watchdog petted only while every task of the gateway still runs.
    let systemd = Notifier::from_env();
    let _ = systemd.ready(&gateway.summary());
    let watchdog = systemd::watchdog_interval();
    let mut gateway = gateway;
    if let Some(addr) = gateway.metrics_addr() {
        eprintln!("fieldgate run: metrics on http://{addr}/metrics");
    }
    let mut refresh = tokio::time::interval(STATUS_INTERVAL);
    let mut failure = None;
    loop {
        let woke = tokio::select! {
            () = stops.recv() => Woke::Stop,
            () = pet_watchdog(&systemd, &gateway, watchdog) => Woke::Stop,
            () = next_signal(&mut hangups) => Woke::Reload,
            _ = refresh.tick() => Woke::Refresh,
        };
        match woke {
            Woke::Stop => break,
            Woke::Refresh => gateway.refresh().await,
            Woke::Reload => {
                let _ = systemd.notify("RELOADING=1");
                if let Err(e) = reload(&mut gateway, file.as_ref()).await {
                    fieldgate::observe::warn(format_args!("fieldgate run: {e}"));
                    failure = Some(e);
                    break;
                }
                let _ = systemd.ready(&gateway.summary());
            }
        }
    }
    let _ = systemd.stopping();
    // Bounded: a peer that never answers must not keep the service from stopping
    // (systemd would kill it after TimeoutStopSec anyway, without the clean part).
    if tokio::time::timeout(SHUTDOWN_LIMIT, gateway.shutdown())
        .await
        .is_err()
    {
        fieldgate::observe::warn(format_args!(
            "fieldgate run: shutdown took longer than {SHUTDOWN_LIMIT:?}; stopping anyway"
        ));
    }
    match failure {
        // Restart=on-failure starts it again, on the file as it is then.
        Some(e) => Outcome {
            code: EXIT_ERROR,
            message: Some(e),
        },
        None => Outcome {
            code: EXIT_OK,
            message: None,
        },
    }
}

/// `check-config FILE`: every problem on its own line, exit 1 if any.
pub fn check(args: &[&str]) -> Outcome {
    let [file] = args else {
        return Outcome {
            code: EXIT_USAGE,
            message: Some("usage: fieldgate check-config FILE".into()),
        };
    };
    let path = PathBuf::from(file);
    match config::load(&path) {
        Ok(_) => {
            println!("{file}: ok");
            Outcome {
                code: EXIT_OK,
                message: None,
            }
        }
        Err(e) => Outcome {
            code: EXIT_USAGE,
            message: Some(describe(Some(&path), &e)),
        },
    }
}
