//! The `fieldgate` command line. Parses arguments and hands over to the library; owns no
//! protocol or gateway logic itself.
//!
//! Today it offers `decode` (print the MQTT packets in a hex dump, handy with captures);
//! `run` says what is not built yet instead of pretending.

use std::process::ExitCode;

use bytes::BytesMut;
use fieldgate::mqtt::codec;
use fieldgate::mqtt::packet::ProtocolVersion;

const USAGE: &str = "\
usage: fieldgate <command>

commands:
  run                      run the gateway (not built yet: see README, Status)
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
        ["run", ..] => {
            eprintln!(
                "fieldgate run: the gateway runtime is not built yet; this build has the \
                 MQTT 3.1.1/5.0 codec (try `fieldgate decode`)"
            );
            ExitCode::from(2)
        }
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
    if digits.len() % 2 != 0 {
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
