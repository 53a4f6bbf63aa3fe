//! `fieldgate modbus read` and `fieldgate modbus write`: one request to one Modbus device
//! from the command line, for commissioning. A read prints every item raw (hex and
//! decimal) and, for registers, every type and order a point could be configured as
//! (`modbus::value::interpretations`), so the right `type` and `order` show at a glance; a
//! write encodes its value exactly as a configured point would (`modbus::value::encode`),
//! then reads back what the device holds.
//!
//! It owns the flags, the output and the exit codes. It must not speak Modbus itself or
//! decode values its own way: the link, retries and reply checks are `modbus::bus`'s (one
//! bus task, as in the gateway), the meaning of registers is `modbus::value`'s, so what
//! this prints is what `fieldgate run` would publish.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use fieldgate::config::Parity;
use fieldgate::config::units::parse_duration;
use fieldgate::devices::Value;
use fieldgate::modbus::bus::{self, BusConfig, BusError, Unit};
use fieldgate::modbus::transport::Op;
use fieldgate::modbus::value::{
    self, DataType, Encoding, Interpretation, Order, Reading, ValueError,
};
use fieldgate::modbus::{Data, ReadRange, Table, Write};

use super::run::Outcome;
use super::{Command, EXIT_ERROR, EXIT_OK, EXIT_UNREACHABLE};

pub const HELP: &str = "\
usage: fieldgate modbus read BUS [--unit N] --kind KIND --address A [--count N] [--timeout T]
       fieldgate modbus write BUS [--unit N] --kind coil|holding --address A
                              (--value V [--type TYPE] [--order ORDER] | --raw LIST) [--timeout T]

Talks to one Modbus device directly, to commission it. `read` prints each item raw (hex
and decimal) and, for registers, the value they hold as every type and order a point can
be configured with, so the right `type` and `order` show at a glance. `write` encodes
the value as a point of that type and order would (FC 5, 6, 15 or 16, as the type
needs), writes it, then reads back what the device holds.

BUS, one of:
  --tcp HOST[:PORT]          Modbus TCP (port 502 unless given; IPv6 as [::1]:502)
  --rtu PATH                 Modbus RTU on a serial port, e.g. /dev/ttyUSB0, with
      --baud N                 9600 unless given
      --parity none|even|odd   even unless given (the Modbus default, 8E1; many
                               devices are set to none)
      --data-bits 7|8          8 unless given
      --stop-bits 1|2          1 unless given
  --rtu-over-tcp HOST:PORT   RTU frames through a serial device server

  --unit N          the device's unit (slave) id: 1 to 247 on RTU, 0 to 255 on TCP
                    (default 1)
  --kind KIND       coil, discrete (inputs), holding (registers) or input (registers)
  --address A       the first item's protocol address, counted from 0: a manual's
                    40001 is --kind holding --address 0, 30010 is --kind input
                    --address 9, 10001 is discrete 0 and 00001 coil 0
  --count N         read: how many items (default 1; at most 125 registers or 2000 bits)
  --value V         write: a number, or true/false (also 1/0, on/off) for bool;
                    integers may be given in hex (0x1234)
  --type TYPE       write: u16, i16, u32, i32, u64, i64, f32, f64 or bool (default
                    u16 for holding registers, bool for coils)
  --order ORDER     write: ABCD (default), CDAB, BADC or DCBA, as a point's `order:`
  --raw LIST        write: the items themselves, comma-separated: registers as 0x1234
                    or 4660, coils as 1 or 0 (written as given, no type or order)
  --timeout T       how long to wait for the answer (default 1s; e.g. 500ms)
  --help            this text

Example: fieldgate modbus read --tcp 192.168.1.50 --kind holding --address 10 --count 2

Exit status: 0 done; 1 bad arguments; 69 no answer (the port or connection failed, or
the unit did not answer in time); 70 the device refused the request (its Modbus
exception is named) or answered with something that does not fit it.";

/// The `device` name the bus task schedules by: there is only the one.
const DEVICE: &str = "cli";

/// The answer wait when `--timeout` is not given: the configuration's default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// What `fieldgate modbus ...` was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct ModbusCommand {
    pub bus: BusConfig,
    pub unit: Unit,
    pub action: Action,
}

/// A read, or a write followed by a read of the same items.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Read(ReadRange),
    Write {
        write: Write,
        /// What was asked for, for the report: "f32 123.456 in CDAB order".
        value: String,
    },
}

impl ModbusCommand {
    /// The command's name for messages: `modbus read` or `modbus write`.
    pub fn name(&self) -> &'static str {
        match self.action {
            Action::Read(_) => "modbus read",
            Action::Write { .. } => "modbus write",
        }
    }
}

/// Why the arguments cannot be used, with the command they were given to. Displays as
/// one line, `modbus read: <problem> (...--help...)`, for `main` to put after
/// `fieldgate `.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{command}: {problem} (`fieldgate {command} --help` lists the options)")]
pub struct ArgError {
    pub command: &'static str,
    pub problem: Problem,
}

/// What is wrong with the arguments.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("no subcommand given; use read or write")]
    MissingSubcommand,
    #[error("unknown subcommand {0:?}; use read or write")]
    UnknownSubcommand(String),
    #[error("unknown option {0}")]
    UnknownOption(String),
    #[error("{flag} is for `modbus {belongs}` only")]
    WrongSubcommand {
        flag: &'static str,
        belongs: &'static str,
    },
    #[error("unexpected argument {0:?}: each value goes right after its option")]
    UnexpectedArgument(String),
    #[error("{flag}: missing value; expected {expects} after it")]
    MissingValue {
        flag: &'static str,
        expects: &'static str,
    },
    #[error("{flag}: {got:?} is not {expects}")]
    InvalidValue {
        flag: &'static str,
        got: String,
        expects: String,
    },
    #[error("no bus given: add --tcp HOST[:PORT], --rtu PATH or --rtu-over-tcp HOST:PORT")]
    MissingBus,
    #[error(
        "{second}: the bus was already given by {first}; give one of --tcp, --rtu, --rtu-over-tcp"
    )]
    TwoBuses {
        first: &'static str,
        second: &'static str,
    },
    #[error("{0} sets up a serial port, so it goes with --rtu only")]
    SerialFlagWithoutRtu(&'static str),
    #[error("--unit {unit}: an RTU unit id is 1 to 247{why}")]
    RtuUnit { unit: u8, why: &'static str },
    #[error("{flag} is required: {what}")]
    MissingFlag {
        flag: &'static str,
        what: &'static str,
    },
    #[error("--kind {0}: only coils and holding registers can be written")]
    ReadOnly(&'static str),
    #[error("nothing to write: add --value V or --raw LIST")]
    NothingToWrite,
    #[error("--value and --raw both given; give one")]
    ValueAndRaw,
    #[error("{0} goes with --value; --raw items are written as given")]
    TypeWithRaw(&'static str),
    #[error("--type {0}: a coil holds one bit, so it takes --type bool (the default)")]
    CoilType(DataType),
    #[error("--value: {0}")]
    Value(ValueError),
    #[error("--timeout: {0}")]
    Timeout(String),
    #[error("{0}")]
    Request(String),
}

fn arg_error(command: &'static str) -> impl Fn(Problem) -> ArgError {
    move |problem| ArgError { command, problem }
}

/// Parses the arguments after `modbus`: `read ...`, `write ...` or `--help`. Everything a
/// request needs is checked here, the value encoded included, so that a mistake is a
/// usage error before anything is opened.
pub fn parse(args: &[&str]) -> Result<Command<ModbusCommand>, ArgError> {
    let (command, writing, rest) = match args {
        [] => return Err(arg_error("modbus")(Problem::MissingSubcommand)),
        ["--help" | "-h" | "help", ..] => return Ok(Command::Help(HELP)),
        ["read", rest @ ..] => ("modbus read", false, rest),
        ["write", rest @ ..] => ("modbus write", true, rest),
        [other, ..] => {
            return Err(arg_error("modbus")(Problem::UnknownSubcommand(
                (*other).to_owned(),
            )));
        }
    };
    match Flags::collect(rest, writing) {
        Ok(None) => Ok(Command::Help(HELP)),
        Ok(Some(flags)) => flags.finish().map(Command::Run).map_err(arg_error(command)),
        Err(problem) => Err(arg_error(command)(problem)),
    }
}

/// The flags as given, each parsed on its own; `finish` checks them together.
#[derive(Debug, Default)]
struct Flags<'a> {
    writing: bool,
    bus: Option<(&'static str, BusFlag)>,
    baud: Option<u32>,
    parity: Option<Parity>,
    data_bits: Option<u8>,
    stop_bits: Option<u8>,
    /// The first serial flag seen, for the error when there is no `--rtu`.
    serial_flag: Option<&'static str>,
    unit: Option<u8>,
    table: Option<Table>,
    address: Option<u16>,
    count: Option<u16>,
    timeout: Option<Duration>,
    // Write only: parsed in `finish`, since `--value` means nothing without `--type`.
    value: Option<&'a str>,
    data_type: Option<DataType>,
    order: Option<Order>,
    raw: Option<&'a str>,
}

#[derive(Debug)]
enum BusFlag {
    Tcp(String, u16),
    Rtu(PathBuf),
    RtuOverTcp(String, u16),
}

impl<'a> Flags<'a> {
    /// Reads every flag; `None` for `--help`.
    fn collect(args: &[&'a str], writing: bool) -> Result<Option<Flags<'a>>, Problem> {
        let mut flags = Flags {
            writing,
            ..Flags::default()
        };
        let mut args = args.iter().copied();
        while let Some(arg) = args.next() {
            // The flag as a `&'static str`, for messages; and its value, which is the next
            // word even if it starts with '-' (`--value -5`).
            let Some(flag) = FLAGS.iter().copied().find(|f| *f == arg) else {
                return Err(if arg.starts_with('-') && arg.len() > 1 {
                    Problem::UnknownOption(arg.to_owned())
                } else {
                    Problem::UnexpectedArgument(arg.to_owned())
                });
            };
            if flag == "--help" || flag == "-h" {
                return Ok(None);
            }
            flags.check_subcommand(flag)?;
            let expects = expects(flag);
            let value = args.next().ok_or(Problem::MissingValue { flag, expects })?;
            let invalid = |why: &str| Problem::InvalidValue {
                flag,
                got: value.to_owned(),
                expects: why.to_owned(),
            };
            match flag {
                "--tcp" => {
                    let (host, port) = host_port(value, Some(502)).map_err(invalid)?;
                    flags.set_bus(flag, BusFlag::Tcp(host, port))?;
                }
                "--rtu-over-tcp" => {
                    let (host, port) = host_port(value, None).map_err(invalid)?;
                    flags.set_bus(flag, BusFlag::RtuOverTcp(host, port))?;
                }
                "--rtu" => {
                    if value.is_empty() {
                        return Err(invalid(expects));
                    }
                    flags.set_bus(flag, BusFlag::Rtu(PathBuf::from(value)))?;
                }
                "--baud" => {
                    flags.baud =
                        Some(number(value, 50, 4_000_000).ok_or_else(|| invalid(expects))?);
                }
                "--parity" => {
                    flags.parity = Some(match value.to_ascii_lowercase().as_str() {
                        "none" | "n" => Parity::None,
                        "even" | "e" => Parity::Even,
                        "odd" | "o" => Parity::Odd,
                        _ => return Err(invalid(expects)),
                    });
                }
                "--data-bits" => {
                    flags.data_bits = Some(number(value, 7, 8).ok_or_else(|| invalid(expects))?);
                }
                "--stop-bits" => {
                    flags.stop_bits = Some(number(value, 1, 2).ok_or_else(|| invalid(expects))?);
                }
                "--unit" => {
                    flags.unit = Some(number(value, 0, 255).ok_or_else(|| invalid(expects))?)
                }
                "--kind" => flags.table = Some(table(value).ok_or_else(|| invalid(expects))?),
                "--address" => {
                    flags.address = Some(number(value, 0, 65535).ok_or_else(|| invalid(expects))?);
                }
                "--count" => {
                    flags.count = Some(number(value, 1, 2000).ok_or_else(|| invalid(expects))?)
                }
                "--timeout" => {
                    let timeout = parse_duration(value).map_err(Problem::Timeout)?;
                    if timeout.is_zero() {
                        return Err(invalid("a duration longer than 0s"));
                    }
                    flags.timeout = Some(timeout);
                }
                "--value" => flags.value = Some(value),
                "--type" => {
                    flags.data_type = Some(data_type(value).ok_or_else(|| invalid(expects))?);
                }
                "--order" => {
                    flags.order = Some(value.parse().map_err(|_| invalid(expects))?);
                }
                "--raw" => flags.raw = Some(value),
                // FLAGS and this match list the same flags (a unit test walks FLAGS).
                _ => return Err(Problem::UnknownOption(arg.to_owned())),
            }
            if matches!(flag, "--baud" | "--parity" | "--data-bits" | "--stop-bits") {
                flags.serial_flag.get_or_insert(flag);
            }
        }
        Ok(Some(flags))
    }

    fn check_subcommand(&self, flag: &'static str) -> Result<(), Problem> {
        let write_only = matches!(flag, "--value" | "--type" | "--order" | "--raw");
        match (write_only, flag == "--count", self.writing) {
            (true, _, false) => Err(Problem::WrongSubcommand {
                flag,
                belongs: "write",
            }),
            (_, true, true) => Err(Problem::WrongSubcommand {
                flag,
                belongs: "read",
            }),
            _ => Ok(()),
        }
    }

    fn set_bus(&mut self, flag: &'static str, bus: BusFlag) -> Result<(), Problem> {
        if let Some((first, _)) = self.bus {
            return Err(Problem::TwoBuses {
                first,
                second: flag,
            });
        }
        self.bus = Some((flag, bus));
        Ok(())
    }

    /// Checks the flags together and builds the request.
    fn finish(self) -> Result<ModbusCommand, Problem> {
        let (_, bus_flag) = self.bus.as_ref().ok_or(Problem::MissingBus)?;
        let rtu = matches!(bus_flag, BusFlag::Rtu(_) | BusFlag::RtuOverTcp(..));
        let unit = self.unit.unwrap_or(1);
        if rtu && !(1..=247).contains(&unit) {
            return Err(Problem::RtuUnit {
                unit,
                why: if unit == 0 {
                    " (0 is broadcast, which no device answers)"
                } else {
                    ""
                },
            });
        }
        let bus = self.bus_config()?;
        let table = self.table.ok_or(Problem::MissingFlag {
            flag: "--kind",
            what: "coil, discrete, holding or input",
        })?;
        let address = self.address.ok_or(Problem::MissingFlag {
            flag: "--address",
            what: "the first item's address, counted from 0",
        })?;
        let unit = Unit {
            id: unit,
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            // Commissioning wants to see a lost answer, not have it hidden by a retry.
            retries: 0,
        };
        let action = if self.writing {
            self.write_action(table, address)?
        } else {
            let range = ReadRange {
                table,
                address,
                count: self.count.unwrap_or(1),
            };
            Op::Read(range).check().map_err(Problem::Request)?;
            Action::Read(range)
        };
        Ok(ModbusCommand { bus, unit, action })
    }

    fn bus_config(&self) -> Result<BusConfig, Problem> {
        let Some((_, bus_flag)) = &self.bus else {
            return Err(Problem::MissingBus);
        };
        if let (Some(flag), false) = (self.serial_flag, matches!(bus_flag, BusFlag::Rtu(_))) {
            return Err(Problem::SerialFlagWithoutRtu(flag));
        }
        Ok(match bus_flag {
            BusFlag::Tcp(host, port) => BusConfig::Tcp {
                host: host.clone(),
                port: *port,
                keep_connection: true,
                idle_close: None,
            },
            BusFlag::RtuOverTcp(host, port) => BusConfig::RtuOverTcp {
                host: host.clone(),
                port: *port,
                inter_frame_delay: None,
            },
            // The configuration's defaults, so a device that works here works there.
            BusFlag::Rtu(path) => BusConfig::Rtu {
                path: path.clone(),
                baud: self.baud.unwrap_or(9600),
                parity: self.parity.unwrap_or(Parity::Even),
                data_bits: self.data_bits.unwrap_or(8),
                stop_bits: self.stop_bits.unwrap_or(1),
                inter_frame_delay: None,
                rs485: None,
            },
        })
    }

    fn write_action(&self, table: Table, address: u16) -> Result<Action, Problem> {
        if !matches!(table, Table::Coil | Table::Holding) {
            return Err(Problem::ReadOnly(kind_name(table)));
        }
        let (write, value) = match (self.value, self.raw) {
            (None, None) => return Err(Problem::NothingToWrite),
            (Some(_), Some(_)) => return Err(Problem::ValueAndRaw),
            (None, Some(raw)) => {
                if self.data_type.is_some() {
                    return Err(Problem::TypeWithRaw("--type"));
                }
                if self.order.is_some() {
                    return Err(Problem::TypeWithRaw("--order"));
                }
                raw_write(table, address, raw)?
            }
            (Some(text), None) => self.encoded_write(table, address, text)?,
        };
        Op::Write(write.clone()).check().map_err(Problem::Request)?;
        Ok(Action::Write { write, value })
    }

    /// `--value` as a configured point of `--type` and `--order` would write it.
    fn encoded_write(
        &self,
        table: Table,
        address: u16,
        text: &str,
    ) -> Result<(Write, String), Problem> {
        let default_type = if table == Table::Coil {
            DataType::Bool
        } else {
            DataType::U16
        };
        let data_type = self.data_type.unwrap_or(default_type);
        if table == Table::Coil && data_type != DataType::Bool {
            return Err(Problem::CoilType(data_type));
        }
        let order = self.order.unwrap_or_default();
        let value = typed_value(data_type, text)?;
        let encoding = Encoding {
            table,
            address,
            data_type,
            order,
            bit: None,
            scale: 1.0,
            offset: 0.0,
        };
        encoding.check().map_err(Problem::Value)?;
        let write = value::encode(&encoding, &value, None).map_err(Problem::Value)?;
        let shown = match value {
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::Text(t) => t,
        };
        let in_order = if order == Order::ABCD {
            String::new()
        } else {
            format!(" in {order} order")
        };
        // The registers too: what the type and order made of the value.
        let description = match &write {
            Write::SingleCoil { .. } | Write::MultipleCoils { .. } => shown,
            Write::SingleRegister { value: word, .. } => {
                format!("{data_type} {shown}{in_order} ({})", hex_words(&[*word]))
            }
            Write::MultipleRegisters { values, .. } => {
                format!("{data_type} {shown}{in_order} ({})", hex_words(values))
            }
        };
        Ok((write, description))
    }
}

/// Every flag, for the lookup in `collect`.
const FLAGS: &[&str] = &[
    "--help",
    "-h",
    "--tcp",
    "--rtu",
    "--rtu-over-tcp",
    "--baud",
    "--parity",
    "--data-bits",
    "--stop-bits",
    "--unit",
    "--kind",
    "--address",
    "--count",
    "--timeout",
    "--value",
    "--type",
    "--order",
    "--raw",
];

/// What a flag's value should be, for messages.
fn expects(flag: &str) -> &'static str {
    match flag {
        "--tcp" => "HOST or HOST:PORT",
        "--rtu-over-tcp" => "HOST:PORT",
        "--rtu" => "a serial port such as /dev/ttyUSB0",
        "--baud" => "a baud rate from 50 to 4000000",
        "--parity" => "none, even or odd",
        "--data-bits" => "7 or 8",
        "--stop-bits" => "1 or 2",
        "--unit" => "a unit id from 0 to 255",
        "--kind" => "coil, discrete, holding or input",
        "--address" => "an address from 0 to 65535",
        "--count" => "a count from 1 to 2000",
        "--timeout" => "a duration such as 500ms or 2s",
        "--value" => "the value to write",
        "--type" => "u16, i16, u32, i32, u64, i64, f32, f64 or bool",
        "--order" => "ABCD, CDAB, BADC or DCBA",
        "--raw" => "comma-separated items such as 0x1234,0x5678",
        _ => "a value",
    }
}

/// A whole number in `min..=max` (decimal).
fn number<T: TryFrom<u64>>(text: &str, min: u64, max: u64) -> Option<T> {
    text.parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .and_then(|n| T::try_from(n).ok())
}

/// `HOST:PORT`, `[IPV6]:PORT`, or the host alone when there is a `default` port.
fn host_port(text: &str, default: Option<u16>) -> Result<(String, u16), &'static str> {
    let bad = if default.is_some() {
        "HOST or HOST:PORT (IPv6 as [::1]:502)"
    } else {
        "HOST:PORT (IPv6 as [::1]:502)"
    };
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(bad)?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(bad),
        }
    } else {
        match text.split_once(':') {
            // A second ':' is an IPv6 address without brackets: ambiguous with a port.
            Some((_, port)) if port.contains(':') => return Err(bad),
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        Some(port) => number(port, 1, 65535).ok_or(bad)?,
        None => default.ok_or(bad)?,
    };
    if host.is_empty() {
        return Err(bad);
    }
    Ok((host.to_owned(), port))
}

fn table(word: &str) -> Option<Table> {
    Some(match word.to_ascii_lowercase().as_str() {
        "coil" | "coils" => Table::Coil,
        "discrete" | "discrete-input" | "discrete_input" | "discrete-inputs" => Table::Discrete,
        "holding" | "holding-register" | "holding_register" | "holding-registers" => Table::Holding,
        "input" | "input-register" | "input_register" | "input-registers" => Table::Input,
        _ => return None,
    })
}

/// The `--type` names, as the configuration spells them (strings and bit patterns are
/// not offered: they are not what commissioning a number needs).
fn data_type(word: &str) -> Option<DataType> {
    word.parse()
        .ok()
        .filter(|t| !matches!(t, DataType::String { .. } | DataType::Bits))
}

/// `--value` as a `Value` of `data_type`. Integers are checked here against the type's
/// range and whole-number-ness (the encoder would round a fraction, which a point's
/// scale needs and a typed command-line value does not).
fn typed_value(data_type: DataType, text: &str) -> Result<Value, Problem> {
    let invalid = |expects: String| Problem::InvalidValue {
        flag: "--value",
        got: text.to_owned(),
        expects,
    };
    let (min, max): (i128, i128) = match data_type {
        DataType::Bool => {
            return match text.to_ascii_lowercase().as_str() {
                "true" | "on" | "1" => Ok(Value::Bool(true)),
                "false" | "off" | "0" => Ok(Value::Bool(false)),
                _ => Err(invalid("true or false (or 1/0, on/off)".into())),
            };
        }
        DataType::F32 => {
            // Checked here too: the encoder's message spells f32::MAX out in 39 digits.
            return match text.parse::<f64>() {
                Ok(x) if x.abs() <= f64::from(f32::MAX) => Ok(Value::Number(x)),
                _ => Err(invalid(format!(
                    "a number an f32 holds (-{max:e} to {max:e})",
                    max = f32::MAX
                ))),
            };
        }
        DataType::F64 => {
            return match text.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(Value::Number(x)),
                _ => Err(invalid("a finite number for f64".into())),
            };
        }
        DataType::U16 => (0, u16::MAX.into()),
        DataType::I16 => (i16::MIN.into(), i16::MAX.into()),
        DataType::U32 => (0, u32::MAX.into()),
        DataType::I32 => (i32::MIN.into(), i32::MAX.into()),
        DataType::U64 => (0, u64::MAX.into()),
        DataType::I64 => (i64::MIN.into(), i64::MAX.into()),
        DataType::String { .. } | DataType::Bits => {
            return Err(invalid(format!("something a {data_type} holds")));
        }
    };
    let n = integer(text).ok_or_else(|| {
        invalid(format!(
            "a whole number for {data_type} (decimal or 0x hex)"
        ))
    })?;
    if !(min..=max).contains(&n) {
        return Err(invalid(format!(
            "in range for {data_type} ({min} to {max})"
        )));
    }
    // The encoder takes numbers as f64, exact up to 2^53: refuse what would be rounded
    // rather than write a neighbouring value.
    let x = n as f64;
    if x as i128 != n {
        return Err(invalid(
            "exactly representable: 64-bit values pass through a double, which is exact \
             only up to 2^53; write it with --raw"
                .into(),
        ));
    }
    Ok(Value::Number(x))
}

/// A whole number, decimal or `0x` hex, with an optional sign.
fn integer(text: &str) -> Option<i128> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (radix, digits) = match unsigned
        .strip_prefix("0x")
        .or_else(|| unsigned.strip_prefix("0X"))
    {
        Some(hex) => (16, hex),
        None => (10, unsigned),
    };
    // Digits only: `from_str_radix` would also take a second sign ("--5", "0x-5").
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i128::from_str_radix(digits, radix).ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

/// `--raw`: coils as 1/0 (or true/false, on/off), registers as decimal or `0x` hex.
fn raw_write(table: Table, address: u16, list: &str) -> Result<(Write, String), Problem> {
    let items: Vec<&str> = list.split(',').map(str::trim).collect();
    let invalid = |item: &str, expects: &str| Problem::InvalidValue {
        flag: "--raw",
        got: item.to_owned(),
        expects: expects.to_owned(),
    };
    if table == Table::Coil {
        let values = items
            .iter()
            .map(|item| match item.to_ascii_lowercase().as_str() {
                "1" | "true" | "on" => Ok(true),
                "0" | "false" | "off" => Ok(false),
                _ => Err(invalid(item, "a coil state: 1 or 0")),
            })
            .collect::<Result<Vec<bool>, Problem>>()?;
        let shown = values
            .iter()
            .map(|&b| if b { "1" } else { "0" })
            .collect::<Vec<_>>()
            .join(" ");
        let write = match values.as_slice() {
            &[value] => Write::SingleCoil { address, value },
            _ => Write::MultipleCoils { address, values },
        };
        return Ok((write, shown));
    }
    let values = items
        .iter()
        .map(|item| {
            integer(item)
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| {
                    invalid(
                        item,
                        "a register value from 0 to 65535 (or 0x0000 to 0xFFFF)",
                    )
                })
        })
        .collect::<Result<Vec<u16>, Problem>>()?;
    let shown = hex_words(&values);
    let write = match values.as_slice() {
        &[value] => Write::SingleRegister { address, value },
        _ => Write::MultipleRegisters { address, values },
    };
    Ok((write, shown))
}

/// Runs the command; what `main` calls on a current-thread runtime.
pub async fn run(command: ModbusCommand) -> Outcome {
    let ModbusCommand { bus, unit, action } = command;
    let place = format!("unit {} at {}", unit.id, describe_bus(&bus));
    let hint = timeout_hint(&bus);
    let handle = bus::spawn(bus);
    let range = match action {
        Action::Read(range) => range,
        Action::Write { write, value } => {
            let (range, fc) = written(&write);
            let what = describe_items(range);
            if let Err(e) = handle.write(DEVICE, &unit, write.clone()).await {
                return failure(&place, &what, e, hint);
            }
            let report = format!("wrote {value} to {what} with FC {fc}\nread back:\n");
            if let Err(outcome) = print(&report) {
                return outcome;
            }
            range
        }
    };
    match handle.read(DEVICE, &unit, range).await {
        Ok(data) => match print(&render(&place, range, &data)) {
            Ok(()) => Outcome {
                code: EXIT_OK,
                message: None,
            },
            Err(outcome) => outcome,
        },
        Err(e) => failure(&place, &describe_items(range), e, hint),
    }
}

/// The items a write covers (what to read back), and its function code.
fn written(write: &Write) -> (ReadRange, u8) {
    let (table, address, count, fc) = match write {
        Write::SingleCoil { address, .. } => (Table::Coil, *address, 1, 5),
        Write::MultipleCoils { address, values } => (Table::Coil, *address, values.len(), 15),
        Write::SingleRegister { address, .. } => (Table::Holding, *address, 1, 6),
        Write::MultipleRegisters { address, values } => {
            (Table::Holding, *address, values.len(), 16)
        }
    };
    let range = ReadRange {
        table,
        address,
        // `Op::check` passed in `parse`: at most 1968 coils or 123 registers.
        count: u16::try_from(count).unwrap_or(u16::MAX),
    };
    (range, fc)
}

fn print(text: &str) -> Result<(), Outcome> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Outcome {
            code: EXIT_ERROR,
            message: Some(format!("cannot write to stdout: {e}")),
        })
}

/// A failed request as an exit code and a message that says what to check.
fn failure(place: &str, what: &str, error: BusError, timeout_hint: &str) -> Outcome {
    let (code, message) = match &error {
        BusError::Timeout { unit, timeout, .. } => (
            EXIT_UNREACHABLE,
            format!(
                "{what} of {place}: timeout: unit {unit} did not answer within {timeout:?}; \
                 check {timeout_hint}"
            ),
        ),
        BusError::Exception(code) => {
            let hint = match code {
                1 => "; the device does not offer this function code: is --kind right?",
                2 => {
                    "; the device has no such address: --address counts from 0 (a manual's \
                     40001 is holding 0)"
                }
                _ => "",
            };
            (EXIT_ERROR, format!("{what} of {place}: {error}{hint}"))
        }
        BusError::Io(_) | BusError::Degraded { .. } | BusError::Closed => {
            (EXIT_UNREACHABLE, format!("{what} of {place}: {error}"))
        }
        BusError::InvalidReply(_) | BusError::InvalidRequest(_) | BusError::Busy(_) => {
            (EXIT_ERROR, format!("{what} of {place}: {error}"))
        }
    };
    Outcome {
        code,
        message: Some(message),
    }
}

/// What to check when a unit stays silent.
fn timeout_hint(bus: &BusConfig) -> &'static str {
    match bus {
        BusConfig::Rtu { .. } => "--unit, --baud, --parity and the wiring (A/B swapped?)",
        BusConfig::Tcp { .. } => "--unit (a gateway answers only for the units behind it)",
        BusConfig::RtuOverTcp { .. } => "--unit and the device server's serial settings",
    }
}

fn describe_bus(bus: &BusConfig) -> String {
    match bus {
        BusConfig::Tcp { host, port, .. } => host_and_port(host, *port),
        BusConfig::RtuOverTcp { host, port, .. } => {
            format!("{} (RTU over TCP)", host_and_port(host, *port))
        }
        BusConfig::Rtu {
            path,
            baud,
            parity,
            data_bits,
            stop_bits,
            ..
        } => {
            let parity = match parity {
                Parity::None => 'N',
                Parity::Even => 'E',
                Parity::Odd => 'O',
            };
            format!("{} {baud} {data_bits}{parity}{stop_bits}", path.display())
        }
    }
}

fn host_and_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn kind_name(table: Table) -> &'static str {
    match table {
        Table::Coil => "coil",
        Table::Discrete => "discrete",
        Table::Holding => "holding",
        Table::Input => "input",
    }
}

/// "holding registers 10 to 11", "coil 3".
fn describe_items(range: ReadRange) -> String {
    let (one, many) = match range.table {
        Table::Coil => ("coil", "coils"),
        Table::Discrete => ("discrete input", "discrete inputs"),
        Table::Holding => ("holding register", "holding registers"),
        Table::Input => ("input register", "input registers"),
    };
    let last = u32::from(range.address) + u32::from(range.count.max(1)) - 1;
    if range.count <= 1 {
        format!("{one} {}", range.address)
    } else {
        format!("{many} {} to {last}", range.address)
    }
}

fn hex_words(words: &[u16]) -> String {
    words
        .iter()
        .map(|w| format!("0x{w:04X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A read's report: a headline, every item raw, and for registers every reading.
fn render(place: &str, range: ReadRange, data: &Data) -> String {
    let mut out = format!("{place}: {}\n", describe_items(range));
    let last = u32::from(range.address) + u32::from(range.count.max(1)) - 1;
    let width = last.to_string().len();
    // `write!` to a String cannot fail.
    match data {
        Data::Bits(bits) => {
            for (address, &bit) in (u32::from(range.address)..).zip(bits) {
                let state = if bit { "1  on" } else { "0  off" };
                let _ = writeln!(out, "  {address:>width$}: {state}");
            }
        }
        Data::Registers(words) => {
            for (address, word) in (u32::from(range.address)..).zip(words) {
                let _ = writeln!(out, "  {address:>width$}: 0x{word:04X}  {word:>5}");
            }
            out.push('\n');
            out.push_str(&render_readings(range.address, words));
        }
    }
    out
}

/// One row of the readings table: a type read from one register on, in the four orders.
struct Row {
    offset: usize,
    data_type: DataType,
    cells: [Option<String>; 4],
}

/// The table of `interpretations`: a row per first register and type, a column per
/// order, so a known value is found by eye and its row and column are the `type` and
/// `order` to configure.
fn render_readings(first: u16, words: &[u16]) -> String {
    let mut rows: Vec<Row> = Vec::new();
    for Interpretation {
        offset,
        data_type,
        order,
        value,
    } in value::interpretations(words)
    {
        // `interpretations` lists the orders of one type and offset next to each other.
        let column = Order::ALL.iter().position(|o| *o == order).unwrap_or(0);
        let same = rows
            .last()
            .is_some_and(|r| r.offset == offset && r.data_type == data_type);
        if !same {
            rows.push(Row {
                offset,
                data_type,
                cells: Default::default(),
            });
        }
        if let Some(row) = rows.last_mut() {
            row.cells[column] = Some(reading(value));
        }
    }
    let from_width = rows
        .iter()
        .map(|r| (usize::from(first) + r.offset).to_string().len())
        .chain([4])
        .max()
        .unwrap_or(4);
    let mut widths = Order::ALL.map(|o| o.name().len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(&row.cells) {
            *width = (*width).max(cell.as_ref().map_or(0, String::len));
        }
    }
    let mut out = String::new();
    let mut line = format!("  {:>from_width$}  type", "from");
    for (order, width) in Order::ALL.iter().zip(widths) {
        let _ = write!(line, "  {:<width$}", order.name());
    }
    out.push_str(line.trim_end());
    out.push('\n');
    let mut previous = None;
    for row in &rows {
        let from = if previous == Some(row.offset) {
            String::new()
        } else {
            (usize::from(first) + row.offset).to_string()
        };
        previous = Some(row.offset);
        let mut line = format!("  {from:>from_width$}  {:<4}", row.data_type.to_string());
        for (cell, width) in row.cells.iter().zip(widths) {
            let _ = write!(line, "  {:<width$}", cell.as_deref().unwrap_or(""));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if rows.iter().any(|r| r.data_type.registers() == 1) {
        out.push_str(
            "u16, i16: one register, so only the byte order counts (CDAB reads as ABCD, \
             DCBA as BADC)\n",
        );
    }
    if rows.iter().any(|r| r.data_type.registers() == 4) {
        let spelled: Vec<String> = Order::ALL
            .iter()
            .map(|o| format!("{} = {}", o.name(), o.letters(4)))
            .collect();
        let _ = writeln!(out, "u64, i64, f64: {}", spelled.join(", "));
    }
    out
}

/// One reading as text: floats in exponent form when plain digits would run long
/// (`f32` garbage often reads as 1e-38 or 3e38), so the columns stay narrow.
fn reading(value: Reading) -> String {
    fn float(x: f64, plain: String, exponent: String) -> String {
        let magnitude = x.abs();
        if x == 0.0 || !x.is_finite() || (1e-5..1e15).contains(&magnitude) {
            plain
        } else {
            exponent
        }
    }
    match value {
        Reading::Unsigned(n) => n.to_string(),
        Reading::Signed(n) => n.to_string(),
        Reading::F32(x) => float(f64::from(x), format!("{x}"), format!("{x:e}")),
        Reading::F64(x) => float(x, format!("{x}"), format!("{x:e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn command(args: &[&str]) -> ModbusCommand {
        match parse(args) {
            Ok(Command::Run(command)) => command,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn problem(args: &[&str]) -> Problem {
        match parse(args) {
            Err(e) => e.problem,
            other => panic!("{args:?} parsed: {other:?}"),
        }
    }

    const TCP: [&str; 2] = ["--tcp", "10.0.0.5"];

    #[test]
    fn a_read_over_tcp_takes_the_defaults_of_the_configuration() {
        let c = command(&[
            "read",
            "--tcp",
            "10.0.0.5",
            "--kind",
            "holding",
            "--address",
            "10",
        ]);
        assert_eq!(
            c.bus,
            BusConfig::Tcp {
                host: "10.0.0.5".into(),
                port: 502,
                keep_connection: true,
                idle_close: None
            }
        );
        assert_eq!(
            c.unit,
            Unit {
                id: 1,
                timeout: Duration::from_secs(1),
                retries: 0
            }
        );
        assert_eq!(
            c.action,
            Action::Read(ReadRange {
                table: Table::Holding,
                address: 10,
                count: 1
            })
        );
        assert_eq!(c.name(), "modbus read");
    }

    #[test]
    fn every_bus_and_its_flags_parse() {
        let c = command(&[
            "read",
            "--rtu",
            "/dev/ttyUSB0",
            "--baud",
            "19200",
            "--parity",
            "none",
            "--data-bits",
            "7",
            "--stop-bits",
            "2",
            "--unit",
            "247",
            "--kind",
            "coil",
            "--address",
            "0",
            "--count",
            "16",
            "--timeout",
            "250ms",
        ]);
        assert_eq!(
            c.bus,
            BusConfig::Rtu {
                path: "/dev/ttyUSB0".into(),
                baud: 19200,
                parity: Parity::None,
                data_bits: 7,
                stop_bits: 2,
                inter_frame_delay: None,
                rs485: None
            }
        );
        assert_eq!(
            (c.unit.id, c.unit.timeout),
            (247, Duration::from_millis(250))
        );
        assert_eq!(describe_bus(&c.bus), "/dev/ttyUSB0 19200 7N2");
        let c = command(&[
            "read",
            "--rtu-over-tcp",
            "[::1]:4001",
            "--kind",
            "input",
            "--address",
            "9",
        ]);
        assert_eq!(
            c.bus,
            BusConfig::RtuOverTcp {
                host: "::1".into(),
                port: 4001,
                inter_frame_delay: None
            }
        );
        assert_eq!(describe_bus(&c.bus), "[::1]:4001 (RTU over TCP)");
        let c = command(&[
            "read",
            "--tcp",
            "plc:1502",
            "--unit",
            "0",
            "--kind",
            "discrete",
            "--address",
            "1",
        ]);
        assert_eq!(describe_bus(&c.bus), "plc:1502");
        assert_eq!(c.unit.id, 0, "unit 0 is fine on TCP");
    }

    #[test]
    fn a_typed_value_is_encoded_as_a_configured_point_would_be() {
        let write = |extra: &[&str]| {
            let mut args = vec![
                "write",
                TCP[0],
                TCP[1],
                "--kind",
                "holding",
                "--address",
                "10",
            ];
            args.extend_from_slice(extra);
            match command(&args).action {
                Action::Write { write, value } => (write, value),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            write(&["--value", "123.456", "--type", "f32", "--order", "CDAB"]),
            (
                Write::MultipleRegisters {
                    address: 10,
                    values: vec![0xE979, 0x42F6]
                },
                "f32 123.456 in CDAB order (0xE979 0x42F6)".into()
            )
        );
        assert_eq!(
            write(&["--value", "0x1234"]).0,
            Write::SingleRegister {
                address: 10,
                value: 0x1234
            }
        );
        assert_eq!(
            write(&["--type", "i16", "--value", "-2"]).0,
            Write::SingleRegister {
                address: 10,
                value: 0xFFFE
            }
        );
        assert_eq!(
            write(&["--raw", "0x1234, 4660"]),
            (
                Write::MultipleRegisters {
                    address: 10,
                    values: vec![0x1234, 0x1234]
                },
                "0x1234 0x1234".into()
            )
        );
        let coil = |extra: &[&str]| {
            let mut args = vec!["write", TCP[0], TCP[1], "--kind", "coil", "--address", "3"];
            args.extend_from_slice(extra);
            match command(&args).action {
                Action::Write { write, .. } => write,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            coil(&["--value", "on"]),
            Write::SingleCoil {
                address: 3,
                value: true
            }
        );
        assert_eq!(
            coil(&["--raw", "1,0,1"]),
            Write::MultipleCoils {
                address: 3,
                values: vec![true, false, true]
            }
        );
    }

    #[test]
    fn mistakes_are_named_with_the_flag() {
        let read = |extra: &[&str]| {
            let mut args = vec![
                "read",
                TCP[0],
                TCP[1],
                "--kind",
                "holding",
                "--address",
                "0",
            ];
            args.extend_from_slice(extra);
            problem(&args)
        };
        assert_eq!(problem(&[]), Problem::MissingSubcommand);
        assert_eq!(
            problem(&["peek"]),
            Problem::UnknownSubcommand("peek".into())
        );
        assert_eq!(
            problem(&["read", "--kind", "holding", "--address", "0"]),
            Problem::MissingBus
        );
        assert!(matches!(
            read(&["--rtu", "/dev/x"]),
            Problem::TwoBuses {
                first: "--tcp",
                second: "--rtu"
            }
        ));
        assert_eq!(
            read(&["--baud", "9600"]),
            Problem::SerialFlagWithoutRtu("--baud")
        );
        assert!(matches!(
            read(&["--kind", "register"]),
            Problem::InvalidValue { flag: "--kind", .. }
        ));
        assert!(matches!(
            read(&["--address", "65536"]),
            Problem::InvalidValue {
                flag: "--address",
                ..
            }
        ));
        assert!(matches!(
            read(&["--address", "-1"]),
            Problem::InvalidValue {
                flag: "--address",
                ..
            }
        ));
        assert!(
            matches!(read(&["--count", "126"]), Problem::Request(_)),
            "125 registers at most"
        );
        assert!(matches!(
            read(&["--address", "65535", "--count", "2"]),
            Problem::Request(_)
        ));
        assert!(matches!(read(&["--timeout", "1"]), Problem::Timeout(_)));
        assert!(matches!(
            read(&["--timeout", "0s"]),
            Problem::InvalidValue {
                flag: "--timeout",
                ..
            }
        ));
        assert!(matches!(
            read(&["--count"]),
            Problem::MissingValue {
                flag: "--count",
                ..
            }
        ));
        assert_eq!(
            read(&["--value", "1"]),
            Problem::WrongSubcommand {
                flag: "--value",
                belongs: "write"
            }
        );
        assert_eq!(read(&["-x"]), Problem::UnknownOption("-x".into()));
        assert_eq!(
            read(&["stray"]),
            Problem::UnexpectedArgument("stray".into())
        );
        assert!(matches!(
            problem(&["read", "--tcp", "a:b:c", "--kind", "coil", "--address", "0"]),
            Problem::InvalidValue { flag: "--tcp", .. }
        ));
        assert!(matches!(
            problem(&[
                "read",
                "--rtu-over-tcp",
                "host",
                "--kind",
                "coil",
                "--address",
                "0"
            ]),
            Problem::InvalidValue {
                flag: "--rtu-over-tcp",
                ..
            }
        ));
        assert!(matches!(
            problem(&[
                "read",
                "--rtu",
                "/dev/x",
                "--unit",
                "0",
                "--kind",
                "coil",
                "--address",
                "0"
            ]),
            Problem::RtuUnit { unit: 0, .. }
        ));
        assert_eq!(
            problem(&["read", TCP[0], TCP[1], "--address", "0"]),
            Problem::MissingFlag {
                flag: "--kind",
                what: "coil, discrete, holding or input"
            }
        );

        let write = |kind: &str, extra: &[&str]| {
            let mut args = vec!["write", TCP[0], TCP[1], "--kind", kind, "--address", "0"];
            args.extend_from_slice(extra);
            problem(&args)
        };
        assert_eq!(
            write("input", &["--value", "1"]),
            Problem::ReadOnly("input")
        );
        assert_eq!(
            write("discrete", &["--value", "1"]),
            Problem::ReadOnly("discrete")
        );
        assert_eq!(write("holding", &[]), Problem::NothingToWrite);
        assert_eq!(
            write("holding", &["--value", "1", "--raw", "1"]),
            Problem::ValueAndRaw
        );
        assert_eq!(
            write("holding", &["--raw", "1", "--type", "u16"]),
            Problem::TypeWithRaw("--type")
        );
        assert_eq!(
            write("coil", &["--value", "1", "--type", "u16"]),
            Problem::CoilType(DataType::U16)
        );
        assert_eq!(
            write("holding", &["--count", "2"]),
            Problem::WrongSubcommand {
                flag: "--count",
                belongs: "read"
            }
        );
        for (value, data_type) in [
            ("70000", "u16"),
            ("1.5", "u16"),
            ("-1", "u32"),
            ("x", "i32"),
            ("nan", "f32"),
            ("yes", "bool"),
            ("9007199254740993", "u64"),
            ("--5", "i16"),
            ("0x-5", "i16"),
        ] {
            assert!(
                matches!(
                    write("holding", &["--type", data_type, "--value", value]),
                    Problem::InvalidValue {
                        flag: "--value",
                        ..
                    }
                ),
                "{data_type} {value}"
            );
        }
        assert!(matches!(
            write("holding", &["--type", "f32", "--value", "1e39"]),
            Problem::InvalidValue {
                flag: "--value",
                ..
            }
        ));
        assert!(matches!(
            write("holding", &["--raw", "0x10000"]),
            Problem::InvalidValue { flag: "--raw", .. }
        ));
        assert!(matches!(
            write("coil", &["--raw", "2"]),
            Problem::InvalidValue { flag: "--raw", .. }
        ));
        assert!(matches!(
            write("holding", &["--order", "ABDC", "--value", "1"]),
            Problem::InvalidValue {
                flag: "--order",
                ..
            }
        ));
        assert!(matches!(
            write(
                "holding",
                &["--address", "65535", "--type", "u32", "--value", "1"]
            ),
            Problem::Value(_)
        ));
    }

    #[test]
    fn every_error_is_one_line_that_points_at_help() {
        for args in [
            &[][..],
            &["read"],
            &[
                "write",
                "--tcp",
                "h",
                "--kind",
                "holding",
                "--address",
                "0",
                "--value",
                "x",
            ],
            &["read", "--tcp"],
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
            assert!(e.contains("--help"), "{e}");
        }
        let e = parse(&["write", "--tcp", "h", "--kind", "input", "--address", "0"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "modbus write: --kind input: only coils and holding registers can be written \
             (`fieldgate modbus write --help` lists the options)"
        );
    }

    #[test]
    fn help_is_offered_everywhere() {
        for args in [
            &["--help"][..],
            &["read", "--help"],
            &["write", "--tcp", "h", "-h"],
        ] {
            assert_eq!(parse(args).unwrap(), Command::Help(HELP));
        }
    }

    #[test]
    fn every_listed_flag_is_handled() {
        for flag in FLAGS {
            let problems: Vec<Problem> = ["read", "write"]
                .into_iter()
                .filter_map(|sub| match parse(&[sub, flag]) {
                    Ok(Command::Help(_)) => None,
                    Ok(Command::Run(c)) => panic!("{flag}: {c:?}"),
                    Err(e) => Some(e.problem),
                })
                .collect();
            if matches!(*flag, "--help" | "-h") {
                assert!(problems.is_empty());
                continue;
            }
            assert!(
                problems
                    .iter()
                    .any(|p| matches!(p, Problem::MissingValue { .. })),
                "{flag}: {problems:?}"
            );
            assert_ne!(expects(flag), "a value", "{flag} has its own description");
        }
    }

    #[test]
    fn a_read_shows_raw_items_and_every_reading_in_columns() {
        let range = ReadRange {
            table: Table::Holding,
            address: 10,
            count: 2,
        };
        let text = render(
            "unit 1 at h:502",
            range,
            &Data::Registers(vec![0x42F6, 0xE979]),
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "unit 1 at h:502: holding registers 10 to 11");
        assert_eq!(lines[1], "  10: 0x42F6  17142");
        assert_eq!(lines[2], "  11: 0xE979  59769");
        let header = lines.iter().find(|l| l.contains("ABCD")).unwrap();
        assert!(
            header.trim_start().starts_with("from  type  ABCD"),
            "{header}"
        );
        let f32_row = lines
            .iter()
            .find(|l| l.trim_start().starts_with("f32"))
            .unwrap();
        let cells: Vec<&str> = f32_row.split_whitespace().collect();
        assert_eq!(cells[1], "123.456", "ABCD: {text}");
        // Columns line up with their headers.
        let column = header.find("CDAB").unwrap();
        assert_eq!(f32_row.find(cells[2]), Some(column), "{text}");
        let u16_row = lines.iter().find(|l| l.contains("u16")).unwrap();
        assert!(
            u16_row.trim_start().starts_with("10  u16   17142"),
            "{u16_row}"
        );
        assert!(text.contains("only the byte order counts"), "{text}");
        assert!(!text.contains("u64"), "two registers hold no 64-bit value");
    }

    #[test]
    fn four_registers_add_the_64_bit_readings_and_spell_their_orders() {
        let range = ReadRange {
            table: Table::Input,
            address: 0,
            count: 4,
        };
        // 1.0 as an f64: 0x3FF0_0000_0000_0000.
        let text = render("p", range, &Data::Registers(vec![0x3FF0, 0, 0, 0]));
        let f64_row = text
            .lines()
            .find(|l| l.trim_start().starts_with("f64"))
            .unwrap();
        assert_eq!(f64_row.split_whitespace().nth(1), Some("1"), "{text}");
        assert!(text.contains("CDAB = GHEFCDAB"), "{text}");
        // Garbage floats stay short.
        assert!(text.lines().all(|l| l.len() < 120), "{text}");
    }

    #[test]
    fn bits_show_as_states() {
        let range = ReadRange {
            table: Table::Coil,
            address: 8,
            count: 3,
        };
        let text = render("p", range, &Data::Bits(vec![true, false, true]));
        assert_eq!(
            text,
            "p: coils 8 to 10\n   8: 1  on\n   9: 0  off\n  10: 1  on\n"
        );
    }

    #[test]
    fn readings_use_exponents_only_when_digits_would_run_long() {
        assert_eq!(reading(Reading::F32(123.456)), "123.456");
        assert_eq!(reading(Reading::F32(f32::MAX)), "3.4028235e38");
        assert_eq!(reading(Reading::F32(1e-40)), "1e-40");
        assert_eq!(reading(Reading::F64(0.0)), "0");
        assert_eq!(reading(Reading::F32(f32::NAN)), "NaN");
        assert_eq!(reading(Reading::Signed(-5)), "-5");
    }

    #[test]
    fn a_failure_names_the_exception_and_a_timeout_says_so() {
        let exception = failure(
            "unit 1 at h:502",
            "holding register 99",
            BusError::Exception(2),
            "",
        );
        assert_eq!(exception.code, EXIT_ERROR);
        let message = exception.message.unwrap();
        assert!(
            message.contains("exception 2 (illegal data address)"),
            "{message}"
        );
        let timeout = failure(
            "unit 7 at h:502",
            "coil 0",
            BusError::Timeout {
                unit: 7,
                timeout: Duration::from_millis(200),
                attempts: 1,
            },
            "--unit",
        );
        assert_eq!(timeout.code, EXIT_UNREACHABLE);
        assert_eq!(
            timeout.message.unwrap(),
            "coil 0 of unit 7 at h:502: timeout: unit 7 did not answer within 200ms; check --unit"
        );
    }

    proptest! {
        #[test]
        fn no_arguments_panic_the_parser(
            args in proptest::collection::vec(
                prop_oneof![
                    proptest::sample::select(FLAGS.to_vec()).prop_map(str::to_owned),
                    proptest::sample::select(vec!["read", "write", "holding", "coil", "0", "1", "65535", "0x", "-", "f32", "CDAB", "h:1", "[::1]"]).prop_map(str::to_owned),
                    ".{0,8}",
                ],
                0..12,
            )
        ) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let _ = parse(&args);
        }
    }
}
