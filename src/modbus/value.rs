//! What a point's registers or bits mean: data types, word and byte orders, scale and
//! offset, both ways (registers to a `Value` when reading, a `Value` to a `Write` when
//! writing), and every reading of a block of registers for the commissioning CLI.
//! Pure functions on values already read; no IO, no MQTT, no knowledge of which requests
//! fetched the registers (that is `planner`'s).

use std::fmt;
use std::str::FromStr;

use super::{Data, Table, Write};
use crate::devices::Value;

/// A point's data type on the wire.
///
/// 64-bit integers are published as `f64` numbers: exact up to 2^53 (9,007,199,254,740,992),
/// the nearest double beyond (an energy counter in Wh reaches 2^53 after a thousand years
/// at 1 GW, so in practice they are exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// A coil or discrete input, or one bit of a register (with `bit`), or a whole
    /// register read as "not zero".
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// `len` bytes of ASCII/UTF-8, two per register, NULs and trailing spaces trimmed.
    String {
        len: u16,
    },
    /// A whole register as 16 booleans (published as a number, bit 0 least significant;
    /// written only as a whole pattern, never rounded).
    Bits,
}

impl DataType {
    /// How many items a point of this type occupies: registers in the holding and input
    /// tables, bits in the coil and discrete tables (where only `Bool` fits, one bit).
    ///
    /// A `string` of length 0 still occupies one register, so that every point is
    /// something a request can read (Modbus has no zero-length reads); configuration
    /// should refuse it anyway.
    pub fn registers(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 | DataType::Bits => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String { len } => len.div_ceil(2).max(1),
        }
    }

    /// The name used in configuration files (`u16`, `f32`, `string(10)`, …).
    fn name(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
            DataType::String { .. } => "string",
            DataType::Bits => "bits",
        }
    }

    /// The types word order applies to: the numbers (a no-op on the one-register ones),
    /// not strings, whose registers are always in reading order (see `Order`).
    fn has_word_order(self) -> bool {
        !matches!(
            self,
            DataType::Bool | DataType::String { .. } | DataType::Bits
        )
    }
}

/// The fixed-size types, by the name configuration files use.
const NAMED_TYPES: [DataType; 10] = [
    DataType::Bool,
    DataType::U16,
    DataType::I16,
    DataType::U32,
    DataType::I32,
    DataType::U64,
    DataType::I64,
    DataType::F32,
    DataType::F64,
    DataType::Bits,
];

/// A `type:` that is not one of the names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not one of bool, u16, i16, u32, i32, u64, i64, f32, f64, string(len), bits")]
pub struct DataTypeError(pub String);

impl FromStr for DataType {
    type Err = DataTypeError;

    /// `u16`, `f32`, `string(8)`, ... (any case).
    fn from_str(word: &str) -> Result<DataType, DataTypeError> {
        let unknown = || DataTypeError(word.to_owned());
        let lower = word.trim().to_ascii_lowercase();
        if let Some(found) = NAMED_TYPES.into_iter().find(|t| t.name() == lower) {
            return Ok(found);
        }
        let len = lower
            .strip_prefix("string(")
            .and_then(|rest| rest.strip_suffix(')'))
            .ok_or_else(unknown)?;
        let len = len.trim().parse().map_err(|_| unknown())?;
        Ok(DataType::String { len })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataType::String { len } => write!(f, "string({len})"),
            other => f.write_str(other.name()),
        }
    }
}

/// Word and byte order of a value, relative to the Modbus convention (and the default),
/// big/big: most significant register first, high byte first within each register.
///
/// Name the value's bytes A, B, C, … from the most significant. Under big/big a 32-bit
/// value travels as registers `AB CD` ("ABCD") and a 64-bit one as `AB CD EF GH`.
/// - `word_order: little` reverses the order of *all* the registers of the value:
///   `CD AB` ("CDAB"), and for 64 bits `GH EF CD AB` ("GHEFCDAB", not "CDABGHEF": some
///   manuals mean the latter; such a device needs its value read as two 32-bit halves).
/// - `byte_order: little` swaps the two bytes within each register: `BA DC` ("BADC"),
///   `BA DC FE HG` for 64 bits.
/// - Both together give the fully little-endian `DC BA` ("DCBA"), `HG FE DC BA`.
///
/// Byte order applies to every register-table type, including the single-register ones
/// (`u16`, `i16`, `bits`, a `bool` register or register bit: `bit` counts in the register
/// *after* the swap, so `bits` and `bit` always agree). Word order applies to the
/// multi-register numbers only: a string's registers are always in reading order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Order {
    /// `word_order: little`: least significant register first ("CDAB").
    pub words_little: bool,
    /// `byte_order: little`: the two bytes of each register swapped ("BADC").
    pub bytes_little: bool,
}

/// A word or an order name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("{0:?} is not a word or byte order; use big or little")]
    Endianness(String),
    #[error("{0:?} is not an order name; use ABCD, CDAB, BADC or DCBA")]
    Name(String),
}

impl Order {
    /// Big/big, the Modbus convention and the default.
    pub const ABCD: Order = Order {
        words_little: false,
        bytes_little: false,
    };
    /// Words swapped (registers in reverse order).
    pub const CDAB: Order = Order {
        words_little: true,
        bytes_little: false,
    };
    /// Bytes swapped within each register.
    pub const BADC: Order = Order {
        words_little: false,
        bytes_little: true,
    };
    /// Both: fully little-endian.
    pub const DCBA: Order = Order {
        words_little: true,
        bytes_little: true,
    };
    /// The four orders, in the order the commissioning CLI shows them.
    pub const ALL: [Order; 4] = [Order::ABCD, Order::CDAB, Order::BADC, Order::DCBA];

    /// From the configuration's `word_order` and `byte_order` words, `big` or `little`
    /// (either may be missing: big is the default).
    pub fn from_words(
        word_order: Option<&str>,
        byte_order: Option<&str>,
    ) -> Result<Order, OrderError> {
        fn little(word: Option<&str>) -> Result<bool, OrderError> {
            match word {
                None => Ok(false),
                Some(w) if w.eq_ignore_ascii_case("big") => Ok(false),
                Some(w) if w.eq_ignore_ascii_case("little") => Ok(true),
                Some(w) => Err(OrderError::Endianness(w.to_owned())),
            }
        }
        Ok(Order {
            words_little: little(word_order)?,
            bytes_little: little(byte_order)?,
        })
    }

    /// The four-letter name of a 32-bit value's bytes in this order.
    pub fn name(self) -> &'static str {
        match (self.words_little, self.bytes_little) {
            (false, false) => "ABCD",
            (true, false) => "CDAB",
            (false, true) => "BADC",
            (true, true) => "DCBA",
        }
    }

    /// The bytes of a value of `registers` registers as they travel, lettered from the
    /// most significant: `AB` / `BA` for one register, `GHEFCDAB` for 64 bits in CDAB.
    pub fn letters(self, registers: usize) -> String {
        let canonical: Vec<[char; 2]> = (0..registers)
            .map(|i| [letter(2 * i), letter(2 * i + 1)])
            .collect();
        let mut out = String::with_capacity(2 * registers);
        for i in 0..registers {
            let word = if self.words_little {
                registers - 1 - i
            } else {
                i
            };
            let [high, low] = canonical[word];
            if self.bytes_little {
                out.extend([low, high]);
            } else {
                out.extend([high, low]);
            }
        }
        out
    }

    /// Registers as they travel to registers in big/big order, most significant first;
    /// and back: both steps are their own inverses, so one function does both ways.
    fn arrange(self, registers: &[u16], reorder_words: bool) -> Vec<u16> {
        let n = registers.len();
        (0..n)
            .map(|i| {
                let word = registers[if self.words_little && reorder_words {
                    n - 1 - i
                } else {
                    i
                }];
                if self.bytes_little {
                    word.swap_bytes()
                } else {
                    word
                }
            })
            .collect()
    }

    /// One register's value after the byte order (word order has no say on one register).
    fn register(self, word: u16) -> u16 {
        if self.bytes_little {
            word.swap_bytes()
        } else {
            word
        }
    }
}

/// Lowercase would read as hex digits next to register dumps; 26 letters cover 13
/// registers, and past that the labels are not for people anyway.
fn letter(i: usize) -> char {
    u8::try_from(i)
        .ok()
        .filter(|&i| i < 26)
        .map_or('?', |i| char::from(b'A' + i))
}

impl FromStr for Order {
    type Err = OrderError;

    /// The four-letter names, any case: `ABCD`, `CDAB`, `BADC`, `DCBA`.
    fn from_str(name: &str) -> Result<Order, OrderError> {
        Order::ALL
            .into_iter()
            .find(|o| o.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| OrderError::Name(name.to_owned()))
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How one point maps to a device's table.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoding {
    pub table: super::Table,
    pub address: u16,
    pub data_type: DataType,
    pub order: Order,
    /// A single bit of a holding or input register (`DataType::Bool` only).
    pub bit: Option<u8>,
    /// Published value = raw * scale + offset (numbers, `bits` included).
    pub scale: f64,
    pub offset: f64,
}

impl Encoding {
    /// Whether this encoding can be read at all: what configuration should refuse
    /// up front (decode and encode check the parts they rely on again).
    pub fn check(&self) -> Result<(), ValueError> {
        if self.table.is_bits() && self.data_type != DataType::Bool {
            return Err(ValueError::TypeNotInTable {
                data_type: self.data_type,
                table: table_name(self.table),
            });
        }
        match self.bit {
            Some(bit) if bit > 15 => return Err(ValueError::NoSuchBit { bit }),
            Some(_) if self.table.is_bits() || self.data_type != DataType::Bool => {
                return Err(ValueError::BitNeedsBoolRegister);
            }
            _ => {}
        }
        let count = self.data_type.registers();
        if count > self.table.max_read() {
            return Err(ValueError::TooLarge {
                count,
                max: self.table.max_read(),
            });
        }
        if u32::from(self.address) + u32::from(count) > 1 << 16 {
            return Err(ValueError::PastLastAddress {
                address: self.address,
                count,
            });
        }
        if !self.scale.is_finite() || !self.offset.is_finite() || self.scale == 0.0 {
            return Err(ValueError::BadScale {
                scale: self.scale,
                offset: self.offset,
            });
        }
        Ok(())
    }
}

/// The items of one point, borrowed from a reply: what `decode` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataRef<'a> {
    Bits(&'a [bool]),
    Registers(&'a [u16]),
}

impl<'a> From<&'a Data> for DataRef<'a> {
    fn from(data: &'a Data) -> DataRef<'a> {
        match data {
            Data::Bits(bits) => DataRef::Bits(bits),
            Data::Registers(registers) => DataRef::Registers(registers),
        }
    }
}

impl DataRef<'_> {
    fn describe(self) -> String {
        match self {
            DataRef::Bits(b) => plural(b.len(), "bit"),
            DataRef::Registers(r) => plural(r.len(), "register"),
        }
    }
}

pub(super) fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Why a reading could not become a value, or a value could not become a write. The
/// messages end up in MQTT command results and in warnings, so they speak of the point
/// and the value, not of this code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    #[error("{table}s are read-only; only coils and holding registers can be written")]
    ReadOnly { table: &'static str },
    #[error("a {data_type} point cannot be a {table}; only bool points can")]
    TypeNotInTable {
        data_type: DataType,
        table: &'static str,
    },
    #[error("`bit` is only for bool points in holding or input registers")]
    BitNeedsBoolRegister,
    #[error("bit {bit} does not exist; a register has bits 0 to 15")]
    NoSuchBit { bit: u8 },
    #[error("the point spans {count} items, more than one request may read ({max})")]
    TooLarge { count: u16, max: u16 },
    #[error("the point at address {address} spans {count} items, past the last address 65535")]
    PastLastAddress { address: u16, count: u16 },
    #[error(
        "scale {scale} and offset {offset} cannot be used: scale must be a number other than 0"
    )]
    BadScale { scale: f64, offset: f64 },
    #[error("this {data_type} point takes {expected}, not {got}")]
    WrongKind {
        data_type: DataType,
        expected: &'static str,
        got: String,
    },
    #[error("{value} is out of range for this {data_type} point ({min} to {max})")]
    OutOfRange {
        value: f64,
        data_type: DataType,
        min: f64,
        max: f64,
    },
    #[error("{value} is not a whole number; a {data_type} point takes whole numbers")]
    NotWhole { value: f64, data_type: DataType },
    #[error("the text is {len} bytes long; this point holds at most {max}")]
    TextTooLong { len: usize, max: u16 },
    #[error("the text contains a NUL character, which would end it early on the device")]
    TextHasNul,
    #[error(
        "writing bit {bit} of register {address} needs the register's current value, \
         and it has not been read yet; try again after the next poll"
    )]
    NeedsCurrent { address: u16, bit: u8 },
    #[error("the device sent NaN or infinity as this {data_type} point's value")]
    NotFinite { data_type: DataType },
    #[error("the device sent text that is not valid UTF-8: {0}")]
    InvalidUtf8(std::str::Utf8Error),
    #[error("a {data_type} point needs {expected}, but the reply holds {got}")]
    WrongData {
        data_type: DataType,
        expected: String,
        got: String,
    },
}

/// Table names as the Modbus specification calls them, for messages.
pub(super) fn table_name(table: Table) -> &'static str {
    match table {
        Table::Coil => "coil",
        Table::Discrete => "discrete input",
        Table::Holding => "holding register",
        Table::Input => "input register",
    }
}

/// A point's value from exactly its own items (as `planner` slices them from a reply).
pub fn decode(encoding: &Encoding, data: DataRef<'_>) -> Result<Value, ValueError> {
    let data_type = encoding.data_type;
    let wrong_data = || ValueError::WrongData {
        data_type,
        expected: if encoding.table.is_bits() {
            plural(1, "bit")
        } else {
            plural(usize::from(data_type.registers()), "register")
        },
        got: data.describe(),
    };
    if encoding.table.is_bits() && data_type != DataType::Bool {
        return Err(ValueError::TypeNotInTable {
            data_type,
            table: table_name(encoding.table),
        });
    }
    let registers = match data {
        DataRef::Bits(&[bit]) if encoding.table.is_bits() && data_type == DataType::Bool => {
            return Ok(Value::Bool(bit));
        }
        DataRef::Registers(r)
            if !encoding.table.is_bits() && r.len() == usize::from(data_type.registers()) =>
        {
            r
        }
        _ => return Err(wrong_data()),
    };
    let order = encoding.order;
    match data_type {
        DataType::Bool => {
            // `registers` holds exactly `registers()` items, at least 1 (matched above).
            let word = order.register(registers[0]);
            match encoding.bit {
                Some(bit) if bit > 15 => Err(ValueError::NoSuchBit { bit }),
                Some(bit) => Ok(Value::Bool(word >> bit & 1 == 1)),
                None => Ok(Value::Bool(word != 0)),
            }
        }
        DataType::String { len } => {
            let mut bytes = Vec::with_capacity(registers.len() * 2);
            for word in order.arrange(registers, false) {
                bytes.extend(word.to_be_bytes());
            }
            bytes.truncate(usize::from(len));
            // The text ends at the first NUL (C-style: what follows is padding, and on
            // some devices stale bytes); trailing spaces are the other common padding.
            if let Some(nul) = bytes.iter().position(|&b| b == 0) {
                bytes.truncate(nul);
            }
            let text = std::str::from_utf8(&bytes).map_err(ValueError::InvalidUtf8)?;
            Ok(Value::Text(text.trim_end_matches(' ').to_owned()))
        }
        _ => {
            let raw = number(data_type, big_endian(&order.arrange(registers, true)))
                .ok_or(ValueError::NotFinite { data_type })?;
            let value = scaled(raw, encoding.scale, encoding.offset);
            if value.is_finite() {
                Ok(Value::Number(value))
            } else {
                // A finite raw value scaled past f64's range: as useless as a NaN.
                Err(ValueError::NotFinite { data_type })
            }
        }
    }
}

/// Registers most significant first, as one number (the low `16 * len` bits).
fn big_endian(words: &[u16]) -> u64 {
    words.iter().fold(0u64, |acc, &w| acc << 16 | u64::from(w))
}

/// A numeric type's raw value from its big-endian bits; `None` for a NaN or infinite
/// float (published as an error, not as a JSON null a dashboard would plot as 0).
fn number(data_type: DataType, bits: u64) -> Option<f64> {
    // The `as` casts below truncate to the type's width on purpose: `bits` holds exactly
    // that many significant bits, and the signed casts reinterpret two's complement.
    let raw = match data_type {
        DataType::U16 => f64::from(bits as u16),
        DataType::I16 => f64::from(bits as u16 as i16),
        DataType::U32 => f64::from(bits as u32),
        DataType::I32 => f64::from(bits as u32 as i32),
        DataType::U64 => bits as f64,
        DataType::I64 => bits as i64 as f64,
        DataType::F32 => {
            let f = f32::from_bits(bits as u32);
            if !f.is_finite() {
                return None;
            }
            shortest_f64(f)
        }
        DataType::F64 => f64::from_bits(bits),
        DataType::Bits => f64::from(bits as u16),
        DataType::Bool | DataType::String { .. } => return None,
    };
    raw.is_finite().then_some(raw)
}

/// The f64 of the shortest decimal that reads back as `f`: a device's 123.456f32
/// publishes as 123.456, not as its exact widening 123.45600128173828.
fn shortest_f64(f: f32) -> f64 {
    f.to_string().parse().unwrap_or(f64::from(f))
}

/// `raw * scale + offset`. When 1/scale is a whole number (0.1, 0.01, …) divide by it
/// instead: 1234 * 0.1 is 123.40000000000001 in binary floating point, 1234 / 10 is
/// the 123.4 people expect to see.
fn scaled(raw: f64, scale: f64, offset: f64) -> f64 {
    let inverse = 1.0 / scale;
    let value = if scale.abs() < 1.0 && inverse.fract() == 0.0 {
        raw / inverse
    } else {
        raw * scale
    };
    value + offset
}

/// The inverse of `scaled`, with the same care for decimal scales.
fn unscaled(value: f64, scale: f64, offset: f64) -> f64 {
    let inverse = 1.0 / scale;
    if scale.abs() < 1.0 && inverse.fract() == 0.0 {
        (value - offset) * inverse
    } else {
        (value - offset) / scale
    }
}

/// The request that writes `value` to the point. `current` is the register's present
/// content as last read (as it travels, before any byte swap), needed only to change one
/// `bit` of a register; the caller should read it right before writing, since another
/// master may change the other bits in between.
pub fn encode(
    encoding: &Encoding,
    value: &Value,
    current: Option<u16>,
) -> Result<Write, ValueError> {
    let data_type = encoding.data_type;
    let address = encoding.address;
    match encoding.table {
        Table::Discrete | Table::Input => {
            return Err(ValueError::ReadOnly {
                table: table_name(encoding.table),
            });
        }
        Table::Coil if data_type != DataType::Bool => {
            return Err(ValueError::TypeNotInTable {
                data_type,
                table: table_name(encoding.table),
            });
        }
        Table::Coil => {
            return Ok(Write::SingleCoil {
                address,
                value: as_bool(data_type, value)?,
            });
        }
        Table::Holding => {}
    }
    let order = encoding.order;
    let single = |word: u16| Write::SingleRegister {
        address,
        value: order.register(word),
    };
    match data_type {
        DataType::Bool => {
            let on = as_bool(data_type, value)?;
            match encoding.bit {
                None => Ok(single(u16::from(on))),
                Some(bit) if bit > 15 => Err(ValueError::NoSuchBit { bit }),
                Some(bit) => {
                    let current =
                        order.register(current.ok_or(ValueError::NeedsCurrent { address, bit })?);
                    let mask = 1u16 << bit;
                    Ok(single(if on { current | mask } else { current & !mask }))
                }
            }
        }
        DataType::String { len } => {
            let Value::Text(text) = value else {
                return Err(wrong_kind(data_type, "text", value));
            };
            if text.len() > usize::from(len) {
                return Err(ValueError::TextTooLong {
                    len: text.len(),
                    max: len,
                });
            }
            if text.contains('\0') {
                return Err(ValueError::TextHasNul);
            }
            // Padded with NULs to the whole point: what was there before must not show
            // through after a shorter text.
            let mut bytes = text.as_bytes().to_vec();
            bytes.resize(usize::from(data_type.registers()) * 2, 0);
            let words: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                .collect();
            Ok(Write::MultipleRegisters {
                address,
                values: order.arrange(&words, false),
            })
        }
        _ => {
            let bits = raw_bits(encoding, as_number(data_type, value)?)?;
            let count = usize::from(data_type.registers());
            let words: Vec<u16> = (0..count)
                .map(|i| (bits >> (16 * (count - 1 - i))) as u16)
                .collect();
            let values = order.arrange(&words, data_type.has_word_order());
            match (data_type, values.as_slice()) {
                (DataType::U16 | DataType::I16 | DataType::Bits, &[word]) => {
                    Ok(Write::SingleRegister {
                        address,
                        value: word,
                    })
                }
                _ => Ok(Write::MultipleRegisters { address, values }),
            }
        }
    }
}

/// A bool point takes true/false, and 1/0 as the sim switch does (a bare `1` command
/// parses as a number).
fn as_bool(data_type: DataType, value: &Value) -> Result<bool, ValueError> {
    match *value {
        Value::Bool(b) => Ok(b),
        Value::Number(n) if n == 0.0 || n == 1.0 => Ok(n == 1.0),
        _ => Err(wrong_kind(data_type, "true or false (or 1 or 0)", value)),
    }
}

fn as_number(data_type: DataType, value: &Value) -> Result<f64, ValueError> {
    match *value {
        Value::Number(n) => Ok(n),
        _ => Err(wrong_kind(data_type, "a number", value)),
    }
}

fn wrong_kind(data_type: DataType, expected: &'static str, value: &Value) -> ValueError {
    ValueError::WrongKind {
        data_type,
        expected,
        got: match value {
            Value::Bool(b) => format!("the boolean {b}"),
            Value::Number(n) => format!("the number {n}"),
            Value::Text(t) => format!("the text {t:?}"),
        },
    }
}

/// The raw bits (big-endian, the type's width) of a number written to a numeric point:
/// scale and offset undone, rounded to the nearest integer for integer types, checked
/// against the type's range (reported in the point's own units).
fn raw_bits(encoding: &Encoding, value: f64) -> Result<u64, ValueError> {
    let Encoding {
        data_type,
        scale,
        offset,
        ..
    } = *encoding;
    if !scale.is_finite() || !offset.is_finite() || scale == 0.0 {
        return Err(ValueError::BadScale { scale, offset });
    }
    let raw = unscaled(value, scale, offset);
    // [low, high] raw range, and for integers the exclusive power-of-two bound that the
    // cast below must stay under (2^64 is exact in f64, u64::MAX is not).
    let (low, high) = match data_type {
        DataType::U16 | DataType::Bits => (0.0, 65_536.0),
        DataType::I16 => (-32_768.0, 32_768.0),
        DataType::U32 => (0.0, 4_294_967_296.0),
        DataType::I32 => (-2_147_483_648.0, 2_147_483_648.0),
        DataType::U64 => (0.0, 18_446_744_073_709_551_616.0),
        DataType::I64 => (-9_223_372_036_854_775_808.0, 9_223_372_036_854_775_808.0),
        DataType::F32 => (-f64::from(f32::MAX), f64::from(f32::MAX)),
        DataType::F64 => (-f64::MAX, f64::MAX),
        DataType::Bool | DataType::String { .. } => {
            return Err(wrong_kind(data_type, "no number", &Value::Number(value)));
        }
    };
    let is_float = matches!(data_type, DataType::F32 | DataType::F64);
    let out_of_range = || {
        // The largest integer below the exclusive bound, as people count.
        let top = if is_float { high } else { high - 1.0 };
        let (a, b) = (scaled(low, scale, offset), scaled(top, scale, offset));
        ValueError::OutOfRange {
            value,
            data_type,
            min: a.min(b),
            max: a.max(b),
        }
    };
    if is_float {
        if !(raw.is_finite() && (low..=high).contains(&raw)) {
            return Err(out_of_range());
        }
        return Ok(match data_type {
            DataType::F32 => u64::from((raw as f32).to_bits()),
            _ => raw.to_bits(),
        });
    }
    if data_type == DataType::Bits && raw.fract() != 0.0 {
        // Rounding a bit pattern would set bits nobody asked for.
        return Err(ValueError::NotWhole { value, data_type });
    }
    let raw = raw.round();
    if !(low <= raw && raw < high) {
        return Err(out_of_range());
    }
    // In range per the check above, so the casts are exact; the signed ones then keep
    // the two's complement bits of the type's width.
    Ok(match data_type {
        DataType::U16 | DataType::U32 | DataType::U64 | DataType::Bits => raw as u64,
        DataType::I16 => u64::from(raw as i16 as u16),
        DataType::I32 => u64::from(raw as i32 as u32),
        _ => raw as i64 as u64,
    })
}

/// One way of reading registers, for `fieldgate modbus read`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interpretation {
    /// The first register it reads, counted from the first register read (0).
    pub offset: usize,
    pub data_type: DataType,
    pub order: Order,
    pub value: Reading,
}

/// The raw value of one interpretation (no scale; floats may be NaN or infinite here,
/// which tells the user that this reading is the wrong one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reading {
    Unsigned(u64),
    Signed(i64),
    F32(f32),
    F64(f64),
}

impl fmt::Display for Reading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reading::Unsigned(n) => write!(f, "{n}"),
            Reading::Signed(n) => write!(f, "{n}"),
            Reading::F32(x) => write!(f, "{x}"),
            Reading::F64(x) => write!(f, "{x}"),
        }
    }
}

impl Interpretation {
    /// `f32 CDAB`: the type and order as the configuration spells them; `u16 BA` for
    /// a byte-swapped single register (`byte_order: little`), and the bytes spelled out
    /// for 64-bit types: `f64 CDAB (GHEFCDAB)`.
    pub fn label(&self) -> String {
        match self.data_type.registers() {
            1 if self.order.bytes_little => format!("{} BA", self.data_type),
            1 => format!("{} AB", self.data_type),
            2 => format!("{} {}", self.data_type, self.order),
            n => format!(
                "{} {} ({})",
                self.data_type,
                self.order,
                self.order.letters(usize::from(n))
            ),
        }
    }
}

impl fmt::Display for Interpretation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{} {}: {}", self.offset, self.label(), self.value)
    }
}

/// Every reading of `registers` a point could be configured as, so a user commissioning
/// a device can pick the `type` and order that shows the expected value: u16 and i16 of
/// each register in both byte orders; u32, i32 and f32 from each register with a
/// following one, and u64, i64 and f64 from each with three following, in all four
/// orders. Sorted by offset, then type, then order.
pub fn interpretations(registers: &[u16]) -> Vec<Interpretation> {
    let mut out = Vec::new();
    for offset in 0..registers.len() {
        for (types, orders) in [
            (
                &[DataType::U16, DataType::I16][..],
                &[Order::ABCD, Order::BADC][..],
            ),
            (
                &[DataType::U32, DataType::I32, DataType::F32][..],
                &Order::ALL[..],
            ),
            (
                &[DataType::U64, DataType::I64, DataType::F64][..],
                &Order::ALL[..],
            ),
        ] {
            for &data_type in types {
                let count = usize::from(data_type.registers());
                let Some(window) = registers.get(offset..offset + count) else {
                    continue;
                };
                for &order in orders {
                    let bits = big_endian(&order.arrange(window, true));
                    // Truncating casts: `bits` holds exactly the type's width.
                    let value = match data_type {
                        DataType::U16 | DataType::U32 | DataType::U64 => Reading::Unsigned(bits),
                        DataType::I16 => Reading::Signed(i64::from(bits as u16 as i16)),
                        DataType::I32 => Reading::Signed(i64::from(bits as u32 as i32)),
                        DataType::F32 => Reading::F32(f32::from_bits(bits as u32)),
                        DataType::F64 => Reading::F64(f64::from_bits(bits)),
                        DataType::I64 => Reading::Signed(bits as i64),
                        DataType::Bool | DataType::Bits | DataType::String { .. } => continue,
                    };
                    out.push(Interpretation {
                        offset,
                        data_type,
                        order,
                        value,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn point(table: Table, data_type: DataType, order: Order) -> Encoding {
        Encoding {
            table,
            address: 100,
            data_type,
            order,
            bit: None,
            scale: 1.0,
            offset: 0.0,
        }
    }

    fn holding(data_type: DataType, order: Order) -> Encoding {
        point(Table::Holding, data_type, order)
    }

    fn regs(r: &[u16]) -> DataRef<'_> {
        DataRef::Registers(r)
    }

    fn num(n: f64) -> Value {
        Value::Number(n)
    }

    /// Register images computed by hand (and checked against Python's `struct`, not this
    /// code): each value in ABCD, CDAB, BADC and DCBA.
    fn images() -> Vec<(DataType, Value, [Vec<u16>; 4])> {
        vec![
            (
                DataType::U16,
                num(4660.0), // 0x1234
                [vec![0x1234], vec![0x1234], vec![0x3412], vec![0x3412]],
            ),
            (
                DataType::I16,
                num(-300.0), // 0xFED4
                [vec![0xFED4], vec![0xFED4], vec![0xD4FE], vec![0xD4FE]],
            ),
            (
                DataType::Bits,
                num(32769.0), // 0x8001
                [vec![0x8001], vec![0x8001], vec![0x0180], vec![0x0180]],
            ),
            (
                DataType::Bool,
                Value::Bool(true), // a whole register, 1
                [vec![0x0001], vec![0x0001], vec![0x0100], vec![0x0100]],
            ),
            (
                DataType::U32,
                num(305_419_896.0), // 0x12345678
                [
                    vec![0x1234, 0x5678],
                    vec![0x5678, 0x1234],
                    vec![0x3412, 0x7856],
                    vec![0x7856, 0x3412],
                ],
            ),
            (
                DataType::I32,
                num(-123_456_789.0), // 0xF8A432EB
                [
                    vec![0xF8A4, 0x32EB],
                    vec![0x32EB, 0xF8A4],
                    vec![0xA4F8, 0xEB32],
                    vec![0xEB32, 0xA4F8],
                ],
            ),
            (
                DataType::F32,
                num(123.456), // 0x42F6E979
                [
                    vec![0x42F6, 0xE979],
                    vec![0xE979, 0x42F6],
                    vec![0xF642, 0x79E9],
                    vec![0x79E9, 0xF642],
                ],
            ),
            (
                DataType::F32,
                num(-1.5), // 0xBFC00000
                [
                    vec![0xBFC0, 0x0000],
                    vec![0x0000, 0xBFC0],
                    vec![0xC0BF, 0x0000],
                    vec![0x0000, 0xC0BF],
                ],
            ),
            (
                DataType::U64,
                num(5_124_095_576_030_430.0), // 0x00123456789ABCDE
                [
                    vec![0x0012, 0x3456, 0x789A, 0xBCDE],
                    vec![0xBCDE, 0x789A, 0x3456, 0x0012],
                    vec![0x1200, 0x5634, 0x9A78, 0xDEBC],
                    vec![0xDEBC, 0x9A78, 0x5634, 0x1200],
                ],
            ),
            (
                DataType::I64,
                num(-1_234_567_890_123.0), // 0xFFFFFEE08E04FB35
                [
                    vec![0xFFFF, 0xFEE0, 0x8E04, 0xFB35],
                    vec![0xFB35, 0x8E04, 0xFEE0, 0xFFFF],
                    vec![0xFFFF, 0xE0FE, 0x048E, 0x35FB],
                    vec![0x35FB, 0x048E, 0xE0FE, 0xFFFF],
                ],
            ),
            (
                DataType::F64,
                num(123.456), // 0x405EDD2F1A9FBE77
                [
                    vec![0x405E, 0xDD2F, 0x1A9F, 0xBE77],
                    vec![0xBE77, 0x1A9F, 0xDD2F, 0x405E],
                    vec![0x5E40, 0x2FDD, 0x9F1A, 0x77BE],
                    vec![0x77BE, 0x9F1A, 0x2FDD, 0x5E40],
                ],
            ),
            (
                // "Hello": word order never reorders a string's registers.
                DataType::String { len: 5 },
                Value::Text("Hello".into()),
                [
                    vec![0x4865, 0x6C6C, 0x6F00],
                    vec![0x4865, 0x6C6C, 0x6F00],
                    vec![0x6548, 0x6C6C, 0x006F],
                    vec![0x6548, 0x6C6C, 0x006F],
                ],
            ),
        ]
    }

    #[test]
    fn every_type_in_every_order_decodes_its_hand_computed_image() {
        for (data_type, value, images) in images() {
            for (order, image) in Order::ALL.into_iter().zip(&images) {
                assert_eq!(
                    decode(&holding(data_type, order), regs(image)),
                    Ok(value.clone()),
                    "{data_type} {order} {image:04X?}"
                );
            }
        }
    }

    #[test]
    fn every_type_in_every_order_encodes_to_its_hand_computed_image() {
        for (data_type, value, images) in images() {
            for (order, image) in Order::ALL.into_iter().zip(images) {
                let expected = match data_type {
                    DataType::String { .. } => Write::MultipleRegisters {
                        address: 100,
                        values: image,
                    },
                    _ if image.len() == 1 => Write::SingleRegister {
                        address: 100,
                        value: image[0],
                    },
                    _ => Write::MultipleRegisters {
                        address: 100,
                        values: image,
                    },
                };
                assert_eq!(
                    encode(&holding(data_type, order), &value, None),
                    Ok(expected),
                    "{data_type} {order}"
                );
            }
        }
    }

    #[test]
    fn registers_per_type() {
        let cases = [
            (DataType::Bool, 1),
            (DataType::U16, 1),
            (DataType::I16, 1),
            (DataType::Bits, 1),
            (DataType::U32, 2),
            (DataType::I32, 2),
            (DataType::F32, 2),
            (DataType::U64, 4),
            (DataType::I64, 4),
            (DataType::F64, 4),
            (DataType::String { len: 1 }, 1),
            (DataType::String { len: 2 }, 1),
            (DataType::String { len: 5 }, 3),
            (DataType::String { len: 0 }, 1),
        ];
        for (data_type, n) in cases {
            assert_eq!(data_type.registers(), n, "{data_type}");
        }
    }

    #[test]
    fn orders_parse_from_words_and_names() {
        assert_eq!(Order::from_words(None, None), Ok(Order::ABCD));
        assert_eq!(
            Order::from_words(Some("little"), Some("big")),
            Ok(Order::CDAB)
        );
        assert_eq!(
            Order::from_words(Some("big"), Some("little")),
            Ok(Order::BADC)
        );
        assert_eq!(
            Order::from_words(Some("Little"), Some("LITTLE")),
            Ok(Order::DCBA)
        );
        assert_eq!(
            Order::from_words(Some("middle"), None),
            Err(OrderError::Endianness("middle".into()))
        );
        for order in Order::ALL {
            assert_eq!(order.name().parse(), Ok(order));
            assert_eq!(order.name().to_lowercase().parse(), Ok(order));
        }
        let err = "ACBD".parse::<Order>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"ACBD\" is not an order name; use ABCD, CDAB, BADC or DCBA"
        );
    }

    #[test]
    fn order_letters_spell_out_64_bit_layouts() {
        let spelled: Vec<String> = Order::ALL.iter().map(|o| o.letters(4)).collect();
        assert_eq!(spelled, ["ABCDEFGH", "GHEFCDAB", "BADCFEHG", "HGFEDCBA"]);
        let spelled: Vec<String> = Order::ALL.iter().map(|o| o.letters(2)).collect();
        assert_eq!(spelled, ["ABCD", "CDAB", "BADC", "DCBA"]);
        assert_eq!(Order::BADC.letters(1), "BA");
    }

    #[test]
    fn bits_and_discrete_inputs_decode_from_bits() {
        for table in [Table::Coil, Table::Discrete] {
            let p = point(table, DataType::Bool, Order::ABCD);
            assert_eq!(decode(&p, DataRef::Bits(&[true])), Ok(Value::Bool(true)));
            assert_eq!(decode(&p, DataRef::Bits(&[false])), Ok(Value::Bool(false)));
        }
    }

    #[test]
    fn scale_and_offset_apply_to_numbers_and_invert_on_write() {
        let mut p = holding(DataType::U16, Order::ABCD);
        p.scale = 0.1;
        // 1234 * 0.1 would be 123.40000000000001.
        assert_eq!(decode(&p, regs(&[1234])), Ok(num(123.4)));
        assert_eq!(
            encode(&p, &num(123.4), None),
            Ok(Write::SingleRegister {
                address: 100,
                value: 1234
            })
        );
        // Rounded to the nearest raw step: 12.36 / 0.1 = 123.6.
        assert_eq!(
            encode(&p, &num(12.36), None),
            Ok(Write::SingleRegister {
                address: 100,
                value: 124
            })
        );

        let mut t = holding(DataType::I16, Order::ABCD);
        t.scale = 0.5;
        t.offset = -40.0;
        assert_eq!(decode(&t, regs(&[0xFFFE])), Ok(num(-41.0))); // -2 * 0.5 - 40
        assert_eq!(
            encode(&t, &num(-41.0), None),
            Ok(Write::SingleRegister {
                address: 100,
                value: 0xFFFE
            })
        );

        let mut f = holding(DataType::F32, Order::ABCD);
        f.scale = 10.0;
        f.offset = 1.0;
        assert_eq!(decode(&f, regs(&[0xBFC0, 0])), Ok(num(-14.0)));
        assert_eq!(
            encode(&f, &num(-14.0), None),
            Ok(Write::MultipleRegisters {
                address: 100,
                values: vec![0xBFC0, 0]
            })
        );
    }

    #[test]
    fn bits_points_take_whole_patterns_only() {
        let p = holding(DataType::Bits, Order::ABCD);
        assert_eq!(decode(&p, regs(&[0x0005])), Ok(num(5.0)));
        assert!(matches!(
            encode(&p, &num(65536.0), None),
            Err(ValueError::OutOfRange { .. })
        ));
        assert_eq!(
            encode(&p, &num(5.5), None),
            Err(ValueError::NotWhole {
                value: 5.5,
                data_type: DataType::Bits
            })
        );
    }

    #[test]
    fn writing_past_a_types_range_names_the_range() {
        let p = holding(DataType::U16, Order::ABCD);
        let err = encode(&p, &num(70000.0), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "70000 is out of range for this u16 point (0 to 65535)"
        );
        let i = holding(DataType::I16, Order::ABCD);
        assert_eq!(
            encode(&i, &num(-32769.0), None).unwrap_err().to_string(),
            "-32769 is out of range for this i16 point (-32768 to 32767)"
        );
        // In the point's own units, and the right way round for a negative scale.
        let mut s = holding(DataType::U16, Order::ABCD);
        s.scale = 0.1;
        assert_eq!(
            encode(&s, &num(6553.6), None).unwrap_err().to_string(),
            "6553.6 is out of range for this u16 point (0 to 6553.5)"
        );
        s.scale = -1.0;
        assert_eq!(
            encode(&s, &num(1.0), None).unwrap_err().to_string(),
            "1 is out of range for this u16 point (-65535 to 0)"
        );
        let f = holding(DataType::F32, Order::ABCD);
        assert!(matches!(
            encode(&f, &num(1e39), None),
            Err(ValueError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode(&f, &num(f64::INFINITY), None),
            Err(ValueError::OutOfRange { .. })
        ));
        // Rounding happens before the check: 65535.4 is 65535, 65535.5 is 65536.
        assert!(encode(&p, &num(65535.4), None).is_ok());
        assert!(encode(&p, &num(65535.5), None).is_err());
        let u = holding(DataType::U64, Order::ABCD);
        assert!(encode(&u, &num(18_446_744_073_709_551_616.0), None).is_err());
        assert!(encode(&u, &num(-1.0), None).is_err());
    }

    #[test]
    fn a_bool_reads_and_writes_one_bit_of_a_register() {
        let mut p = holding(DataType::Bool, Order::ABCD);
        p.bit = Some(1);
        assert_eq!(decode(&p, regs(&[0b1010])), Ok(Value::Bool(true)));
        p.bit = Some(2);
        assert_eq!(decode(&p, regs(&[0b1010])), Ok(Value::Bool(false)));
        p.bit = Some(15);
        assert_eq!(decode(&p, regs(&[0x8000])), Ok(Value::Bool(true)));
        // Byte order first: bit 9 of the swapped register.
        let mut s = holding(DataType::Bool, Order::BADC);
        s.bit = Some(9);
        assert_eq!(decode(&s, regs(&[0x0002])), Ok(Value::Bool(true)));

        p.bit = Some(0);
        assert_eq!(
            encode(&p, &Value::Bool(true), Some(0x00F0)),
            Ok(Write::SingleRegister {
                address: 100,
                value: 0x00F1
            })
        );
        p.bit = Some(4);
        assert_eq!(
            encode(&p, &Value::Bool(false), Some(0x00F0)),
            Ok(Write::SingleRegister {
                address: 100,
                value: 0x00E0
            })
        );
        assert_eq!(
            encode(&s, &Value::Bool(false), Some(0x0302)),
            Ok(Write::SingleRegister {
                address: 100,
                value: 0x0300
            })
        );
        let err = encode(&p, &Value::Bool(true), None).unwrap_err();
        assert_eq!(
            err,
            ValueError::NeedsCurrent {
                address: 100,
                bit: 4
            }
        );
        assert!(
            err.to_string()
                .contains("needs the register's current value")
        );
        p.bit = Some(16);
        assert_eq!(
            decode(&p, regs(&[0])),
            Err(ValueError::NoSuchBit { bit: 16 })
        );
        assert_eq!(
            encode(&p, &Value::Bool(true), Some(0)),
            Err(ValueError::NoSuchBit { bit: 16 })
        );
    }

    #[test]
    fn strings_end_at_a_nul_and_lose_trailing_spaces() {
        let p = holding(DataType::String { len: 6 }, Order::ABCD);
        // "AB  " then NULs.
        assert_eq!(
            decode(&p, regs(&[0x4142, 0x2020, 0x0000])),
            Ok(Value::Text("AB".into()))
        );
        // Stale bytes after the NUL do not show.
        assert_eq!(
            decode(&p, regs(&[0x4142, 0x0043, 0x4445])),
            Ok(Value::Text("AB".into()))
        );
        // Leading spaces are content.
        assert_eq!(
            decode(&p, regs(&[0x2041, 0x2020, 0x2020])),
            Ok(Value::Text(" A".into()))
        );
        // An odd length ignores the last register's low byte.
        let odd = holding(DataType::String { len: 3 }, Order::ABCD);
        assert_eq!(
            decode(&odd, regs(&[0x6162, 0x6364])),
            Ok(Value::Text("abc".into()))
        );
        assert_eq!(
            encode(&odd, &Value::Text("abc".into()), None),
            Ok(Write::MultipleRegisters {
                address: 100,
                values: vec![0x6162, 0x6300]
            })
        );
        // UTF-8 beyond ASCII: "é" is C3 A9.
        assert_eq!(
            decode(&p, regs(&[0xC3A9, 0, 0])),
            Ok(Value::Text("é".into()))
        );
        assert!(matches!(
            decode(&p, regs(&[0xFFFE, 0, 0])),
            Err(ValueError::InvalidUtf8(_))
        ));
    }

    #[test]
    fn strings_are_padded_with_nuls_and_checked_on_write() {
        let p = holding(DataType::String { len: 6 }, Order::ABCD);
        assert_eq!(
            encode(&p, &Value::Text("Hi".into()), None),
            Ok(Write::MultipleRegisters {
                address: 100,
                values: vec![0x4869, 0, 0]
            })
        );
        assert_eq!(
            encode(&p, &Value::Text("abcdefg".into()), None)
                .unwrap_err()
                .to_string(),
            "the text is 7 bytes long; this point holds at most 6"
        );
        assert_eq!(
            encode(&p, &Value::Text("a\0b".into()), None),
            Err(ValueError::TextHasNul)
        );
        assert_eq!(
            encode(&p, &num(1.0), None).unwrap_err().to_string(),
            "this string(6) point takes text, not the number 1"
        );
    }

    #[test]
    fn nan_and_infinity_readings_are_errors() {
        let f = holding(DataType::F32, Order::ABCD);
        for image in [[0x7FC0, 0], [0x7F80, 0], [0xFF80, 0]] {
            assert_eq!(
                decode(&f, regs(&image)),
                Err(ValueError::NotFinite {
                    data_type: DataType::F32
                })
            );
        }
        let d = holding(DataType::F64, Order::ABCD);
        assert_eq!(
            decode(&d, regs(&[0x7FF8, 0, 0, 0]))
                .unwrap_err()
                .to_string(),
            "the device sent NaN or infinity as this f64 point's value"
        );
        // A finite reading scaled past f64's range is no better.
        let mut big = holding(DataType::F64, Order::ABCD);
        big.scale = 1e300;
        assert!(decode(&big, regs(&[0x7FEF, 0xFFFF, 0xFFFF, 0xFFFF])).is_err());
    }

    #[test]
    fn read_only_tables_refuse_writes() {
        for (table, name) in [
            (Table::Discrete, "discrete inputs"),
            (Table::Input, "input registers"),
        ] {
            let data_type = if table.is_bits() {
                DataType::Bool
            } else {
                DataType::U16
            };
            let err = encode(&point(table, data_type, Order::ABCD), &num(1.0), None).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("{name} are read-only; only coils and holding registers can be written")
            );
        }
    }

    #[test]
    fn coils_take_booleans_and_one_or_zero() {
        let c = point(Table::Coil, DataType::Bool, Order::ABCD);
        assert_eq!(
            encode(&c, &Value::Bool(true), None),
            Ok(Write::SingleCoil {
                address: 100,
                value: true
            })
        );
        assert_eq!(
            encode(&c, &num(0.0), None),
            Ok(Write::SingleCoil {
                address: 100,
                value: false
            })
        );
        assert_eq!(
            encode(&c, &num(2.0), None).unwrap_err().to_string(),
            "this bool point takes true or false (or 1 or 0), not the number 2"
        );
        let wrong = point(Table::Coil, DataType::U16, Order::ABCD);
        assert_eq!(
            encode(&wrong, &num(2.0), None).unwrap_err().to_string(),
            "a u16 point cannot be a coil; only bool points can"
        );
        assert!(matches!(
            decode(&wrong, DataRef::Bits(&[true])),
            Err(ValueError::TypeNotInTable { .. })
        ));
    }

    #[test]
    fn values_of_the_wrong_kind_are_refused_with_what_was_expected() {
        let p = holding(DataType::U16, Order::ABCD);
        assert_eq!(
            encode(&p, &Value::Text("abc".into()), None)
                .unwrap_err()
                .to_string(),
            "this u16 point takes a number, not the text \"abc\""
        );
        assert_eq!(
            encode(&p, &Value::Bool(true), None)
                .unwrap_err()
                .to_string(),
            "this u16 point takes a number, not the boolean true"
        );
        let b = holding(DataType::Bool, Order::ABCD);
        assert!(matches!(
            encode(&b, &Value::Text("on".into()), None),
            Err(ValueError::WrongKind { .. })
        ));
    }

    #[test]
    fn data_that_does_not_fit_the_point_is_an_error() {
        let p = holding(DataType::U32, Order::ABCD);
        assert_eq!(
            decode(&p, regs(&[1])).unwrap_err().to_string(),
            "a u32 point needs 2 registers, but the reply holds 1 register"
        );
        assert!(decode(&p, DataRef::Bits(&[true, false])).is_err());
        let c = point(Table::Coil, DataType::Bool, Order::ABCD);
        assert!(decode(&c, regs(&[1])).is_err());
        assert!(decode(&c, DataRef::Bits(&[])).is_err());
    }

    #[test]
    fn check_refuses_encodings_no_request_can_serve() {
        let ok = holding(DataType::F64, Order::ABCD);
        assert_eq!(ok.check(), Ok(()));
        let mut late = ok.clone();
        late.address = 65533;
        assert!(matches!(
            late.check(),
            Err(ValueError::PastLastAddress { .. })
        ));
        let huge = holding(DataType::String { len: 252 }, Order::ABCD);
        assert!(matches!(
            huge.check(),
            Err(ValueError::TooLarge {
                count: 126,
                max: 125
            })
        ));
        let mut zero = ok.clone();
        zero.scale = 0.0;
        assert!(matches!(zero.check(), Err(ValueError::BadScale { .. })));
        let mut bit = ok.clone();
        bit.bit = Some(3);
        assert_eq!(bit.check(), Err(ValueError::BitNeedsBoolRegister));
        let coil = point(Table::Coil, DataType::F32, Order::ABCD);
        assert!(matches!(
            coil.check(),
            Err(ValueError::TypeNotInTable { .. })
        ));
    }

    #[test]
    fn interpretations_show_every_type_and_order() {
        let found = interpretations(&[0x42F6, 0xE979]);
        // Per register: u16 and i16 in two byte orders (8); one 32-bit window: 3 x 4.
        assert_eq!(found.len(), 8 + 12);
        let f32_abcd = found
            .iter()
            .find(|i| i.data_type == DataType::F32 && i.order == Order::ABCD)
            .unwrap();
        assert_eq!(f32_abcd.value, Reading::F32(123.456));
        assert_eq!(f32_abcd.to_string(), "+0 f32 ABCD: 123.456");
        let u32_cdab = found
            .iter()
            .find(|i| i.data_type == DataType::U32 && i.order == Order::CDAB)
            .unwrap();
        assert_eq!(u32_cdab.value, Reading::Unsigned(0xE979_42F6));
        let i16_second = found
            .iter()
            .find(|i| i.offset == 1 && i.data_type == DataType::I16 && i.order == Order::ABCD)
            .unwrap();
        assert_eq!(i16_second.value, Reading::Signed(-5767)); // 0xE979 - 0x10000
        assert_eq!(i16_second.label(), "i16 AB");

        let four = interpretations(&[0x405E, 0xDD2F, 0x1A9F, 0xBE77]);
        // 4 x 4 sixteen-bit, 3 windows x 12 thirty-two-bit, 1 window x 12 sixty-four-bit.
        assert_eq!(four.len(), 16 + 36 + 12);
        let f64_abcd = four
            .iter()
            .find(|i| i.data_type == DataType::F64 && i.order == Order::ABCD)
            .unwrap();
        assert_eq!(f64_abcd.value, Reading::F64(123.456));
        let f64_cdab = four
            .iter()
            .find(|i| i.data_type == DataType::F64 && i.order == Order::CDAB)
            .unwrap();
        assert_eq!(f64_cdab.label(), "f64 CDAB (GHEFCDAB)");
        assert!(interpretations(&[]).is_empty());
    }

    fn order() -> impl Strategy<Value = Order> {
        prop::sample::select(Order::ALL.to_vec())
    }

    fn numeric_type() -> impl Strategy<Value = DataType> {
        let numeric: Vec<DataType> = NAMED_TYPES
            .into_iter()
            .filter(|t| !matches!(t, DataType::Bool | DataType::Bits))
            .collect();
        prop::sample::select(numeric)
    }

    /// A value every point of `data_type` can hold exactly, with scale 1 and offset 0.
    fn value_of(data_type: DataType) -> BoxedStrategy<Value> {
        const EXACT: i64 = 1 << 53;
        match data_type {
            DataType::Bool => any::<bool>().prop_map(Value::Bool).boxed(),
            DataType::U16 | DataType::Bits => any::<u16>().prop_map(|n| num(n.into())).boxed(),
            DataType::I16 => any::<i16>().prop_map(|n| num(n.into())).boxed(),
            DataType::U32 => any::<u32>().prop_map(|n| num(n.into())).boxed(),
            DataType::I32 => any::<i32>().prop_map(|n| num(n.into())).boxed(),
            DataType::U64 => (0..=EXACT).prop_map(|n| num(n as f64)).boxed(),
            DataType::I64 => (-EXACT..=EXACT).prop_map(|n| num(n as f64)).boxed(),
            // The published value of a finite f32 is its shortest decimal.
            DataType::F32 => any::<f32>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| num(f.to_string().parse().unwrap()))
                .boxed(),
            DataType::F64 => any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(num)
                .boxed(),
            DataType::String { len } => "[^\\x00]{0,12}"
                .prop_map(move |s: String| {
                    // Cut to `len` bytes on a character boundary; trailing spaces do not
                    // survive a read, by design.
                    let mut end = s.len().min(usize::from(len));
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    Value::Text(s[..end].trim_end_matches(' ').to_owned())
                })
                .boxed(),
        }
    }

    fn any_type() -> impl Strategy<Value = DataType> {
        prop_oneof![
            numeric_type(),
            Just(DataType::Bool),
            Just(DataType::Bits),
            (0u16..20).prop_map(|len| DataType::String { len }),
        ]
    }

    fn registers_of(write: Write) -> Vec<u16> {
        match write {
            Write::SingleRegister { value, .. } => vec![value],
            Write::MultipleRegisters { values, .. } => values,
            other => panic!("not a register write: {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn encode_then_decode_gives_the_value_back(
            (data_type, value) in any_type().prop_flat_map(|t| (Just(t), value_of(t))),
            order in order(),
        ) {
            let p = holding(data_type, order);
            let registers = registers_of(encode(&p, &value, None).unwrap());
            prop_assert_eq!(registers.len(), usize::from(data_type.registers()));
            prop_assert_eq!(decode(&p, regs(&registers)), Ok(value));
        }

        #[test]
        fn decode_then_encode_gives_the_registers_back(
            data_type in numeric_type(),
            order in order(),
            image in prop::collection::vec(any::<u16>(), 4),
        ) {
            let p = holding(data_type, order);
            let image = &image[..usize::from(data_type.registers())];
            let Ok(value) = decode(&p, regs(image)) else {
                // Only NaN and infinity fail, and only for floats.
                prop_assert!(matches!(data_type, DataType::F32 | DataType::F64));
                return Ok(());
            };
            match (data_type, &value) {
                // Beyond 2^53 the published f64 is the nearest double, not the value:
                // writing it back writes that double (2^64, past u64, is refused).
                (DataType::U64 | DataType::I64, Value::Number(n))
                    if n.abs() > 9_007_199_254_740_992.0 =>
                {
                    match encode(&p, &value, None) {
                        Ok(write) => {
                            let back = registers_of(write);
                            prop_assert_eq!(decode(&p, regs(&back)), Ok(value));
                        }
                        Err(_) => prop_assert_eq!(*n, 18_446_744_073_709_551_616.0),
                    }
                }
                _ => prop_assert_eq!(
                    registers_of(encode(&p, &value, None).unwrap()),
                    image.to_vec()
                ),
            }
        }

        #[test]
        fn scaled_integers_write_back_the_raw_value_they_were_read_from(
            data_type in prop::sample::select(vec![
                DataType::U16, DataType::I16, DataType::U32, DataType::I32,
            ]),
            order in order(),
            image in prop::collection::vec(any::<u16>(), 2),
            scale in prop::sample::select(vec![0.1, 0.01, 0.001, 0.5, 2.0, 10.0, -1.0, -0.1]),
            offset in prop::sample::select(vec![0.0, -40.0, 273.15, 0.5]),
        ) {
            let mut p = holding(data_type, order);
            p.scale = scale;
            p.offset = offset;
            let image = &image[..usize::from(data_type.registers())];
            let value = decode(&p, regs(image)).unwrap();
            prop_assert_eq!(registers_of(encode(&p, &value, None).unwrap()), image.to_vec());
        }

        #[test]
        fn a_bit_write_changes_only_that_bit(
            current in any::<u16>(),
            bit in 0u8..16,
            on in any::<bool>(),
            order in order(),
        ) {
            let mut p = holding(DataType::Bool, order);
            p.bit = Some(bit);
            let after = registers_of(encode(&p, &Value::Bool(on), Some(current)).unwrap())[0];
            prop_assert_eq!(decode(&p, regs(&[after])), Ok(Value::Bool(on)));
            for other in (0..16).filter(|&b| b != bit) {
                let mut q = p.clone();
                q.bit = Some(other);
                prop_assert_eq!(decode(&q, regs(&[after])), decode(&q, regs(&[current])));
            }
        }
    }
}
