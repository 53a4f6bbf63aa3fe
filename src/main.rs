//! The `fieldgate` command line. Parses arguments and hands over to the library; owns no
//! protocol or gateway logic itself.
//!
//! It offers `run` (the gateway), `broker` (the MQTT broker alone), `pub` and `sub` (MQTT
//! command-line clients with mosquitto_pub/_sub's flags), `passwd` (broker password
//! files), `check-config` / `print-default-config`, `modbus read` / `modbus write` (one
//! Modbus device, for commissioning), and `decode` (the MQTT packets in a hex dump, handy
//! with captures).

mod cli;

use std::process::ExitCode;

use bytes::BytesMut;
use fieldgate::mqtt::codec;
use fieldgate::mqtt::packet::ProtocolVersion;

const USAGE: &str = "\
usage: fieldgate <command>

commands:
  run [-c FILE]            run the gateway (default: the embedded configuration)
  check-config FILE        check a configuration file and list every problem
  print-default-config     print the embedded default configuration
  broker [-p PORT]         run the MQTT broker alone (like mosquitto -p; --help for options)
  pub [options]            publish MQTT messages (like mosquitto_pub; --help for options)
  sub [options]            print MQTT messages (like mosquitto_sub; --help for options)
  passwd FILE USER         edit the broker's password file (like mosquitto_passwd; --help)
  modbus read|write ...    read or write a Modbus device, for commissioning (--help)
  decode [-V 311|5] HEX    print the MQTT packets in HEX (spaces allowed; default -V 5)
  --version                print the version
  --help                   print this help";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] | ["--help" | "-h" | "help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        ["--version" | "-V" | "version"] => {
            println!("fieldgate {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        ["run", rest @ ..] => match cli::gateway::parse_run(rest) {
            Ok(Some(file)) => finish("run", block_on_threads(cli::gateway::run(file))),
            Ok(None) => help(cli::gateway::RUN_HELP),
            Err(message) => {
                eprintln!("fieldgate run: {message}");
                ExitCode::from(cli::EXIT_USAGE)
            }
        },
        ["check-config", rest @ ..] => finish("check-config", cli::gateway::check(rest)),
        ["print-default-config"] => {
            print!("{}", fieldgate::config::DEFAULT);
            ExitCode::SUCCESS
        }
        ["broker", rest @ ..] => match cli::broker::parse_broker(rest) {
            Ok(cli::Command::Help(text)) => help(text),
            Ok(cli::Command::Run(opts)) => {
                finish("broker", block_on_threads(cli::broker::run(opts)))
            }
            Err(e) => usage_error("broker", &e),
        },
        ["pub", rest @ ..] => match cli::parse_pub(rest) {
            Ok(cli::Command::Help(text)) => help(text),
            Ok(cli::Command::Run(opts)) => finish("pub", block_on(cli::run::publish(opts))),
            Err(e) => usage_error("pub", &e),
        },
        ["sub", rest @ ..] => match cli::parse_sub(rest) {
            Ok(cli::Command::Help(text)) => help(text),
            Ok(cli::Command::Run(opts)) => finish("sub", block_on(cli::run::subscribe(opts))),
            Err(e) => usage_error("sub", &e),
        },
        ["passwd", rest @ ..] => cli::passwd::run(rest),
        ["modbus", rest @ ..] => match cli::modbus::parse(rest) {
            Ok(cli::Command::Help(text)) => help(text),
            Ok(cli::Command::Run(command)) => {
                finish(command.name(), block_on(cli::modbus::run(command)))
            }
            Err(e) => {
                eprintln!("fieldgate {e}");
                ExitCode::from(cli::EXIT_USAGE)
            }
        },
        ["decode", rest @ ..] => match decode_command(rest) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("fieldgate decode: {message}");
                ExitCode::FAILURE
            }
        },
        [other, ..] => {
            eprintln!("fieldgate: unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn help(text: &str) -> ExitCode {
    println!("{text}");
    ExitCode::SUCCESS
}

fn usage_error(command: &str, error: &cli::CliError) -> ExitCode {
    eprintln!("fieldgate {command}: {error}");
    ExitCode::from(cli::EXIT_USAGE)
}

fn finish(command: &str, outcome: cli::run::Outcome) -> ExitCode {
    if let Some(message) = outcome.message {
        eprintln!("fieldgate {command}: {message}");
    }
    ExitCode::from(outcome.code)
}

/// Runs a command-line client on a single-threaded runtime: one connection needs no more,
/// and it keeps the process small.
fn block_on<F: std::future::Future<Output = cli::run::Outcome>>(run: F) -> cli::run::Outcome {
    block_on_runtime(tokio::runtime::Builder::new_current_thread(), run)
}

/// Runs a server (the broker) on a runtime with a worker per core: connections are
/// served in parallel.
fn block_on_threads<F: std::future::Future<Output = cli::run::Outcome>>(
    run: F,
) -> cli::run::Outcome {
    block_on_runtime(tokio::runtime::Builder::new_multi_thread(), run)
}

fn block_on_runtime<F: std::future::Future<Output = cli::run::Outcome>>(
    mut builder: tokio::runtime::Builder,
    run: F,
) -> cli::run::Outcome {
    match builder.enable_all().build() {
        Ok(runtime) => runtime.block_on(run),
        Err(e) => cli::run::Outcome {
            code: cli::EXIT_ERROR,
            message: Some(format!("cannot start the runtime: {e}")),
        },
    }
}

/// `decode [-V 311|5] HEX...`: decodes every packet in the hex dump, in order.
fn decode_command(args: &[&str]) -> Result<(), String> {
    let (protocol, hex) = match args {
        ["-V", "311" | "3.1.1", hex @ ..] => (ProtocolVersion::V311, hex),
        ["-V", "5" | "5.0", hex @ ..] => (ProtocolVersion::V5, hex),
        ["-V", other, ..] => return Err(format!("unknown protocol version {other:?}")),
        hex => (ProtocolVersion::V5, hex),
    };
    let mut buf = BytesMut::from(parse_hex(&hex.concat())?.as_slice());
    if buf.is_empty() {
        return Err("no bytes given".into());
    }
    while !buf.is_empty() {
        match codec::decode(&mut buf, u32::MAX, protocol) {
            Ok(Some(packet)) => println!("{packet:#?}"),
            Ok(None) => return Err(format!("{} bytes left: not a whole packet", buf.len())),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).map_err(|_| "not hex".to_string())?;
            u8::from_str_radix(s, 16).map_err(|_| format!("{s:?} is not a hex byte"))
        })
        .collect()
}
