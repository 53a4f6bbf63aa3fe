//! What a point's registers or bits mean: data types, word and byte orders, scale and
//! offset, both ways (registers to a `Value` when reading, a `Value` to a `Write` when
//! writing). Pure functions; no IO.

/// A point's data type on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// A coil or discrete input, or one bit of a register (with `bit`).
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
    /// A whole register as 16 booleans (published as a number, bit 0 least significant).
    Bits,
}

/// Word and byte order of a multi-register value. The Modbus convention (and the
/// default) is big/big: "ABCD" for a 32-bit value, most significant word and byte first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Order {
    /// `word_order: little`: least significant register first ("CDAB").
    pub words_little: bool,
    /// `byte_order: little`: the two bytes of each register swapped ("BADC").
    pub bytes_little: bool,
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
    /// Published value = raw * scale + offset (numbers only).
    pub scale: f64,
    pub offset: f64,
}
