//! Modbus devices: what a point's registers mean (`value`), which requests read a
//! device's points (`planner`), and the one task per physical bus that sends them
//! (`transport` for the wire, `bus` for scheduling, timeouts and retries). This module
//! must not know about MQTT: the gateway runtime turns its readings into telemetry.
//!
//! Addresses are 0-based protocol addresses throughout: register "40001" in a device
//! manual is holding register 0, "30010" is input register 9, "10001" discrete input 0,
//! "00001" coil 0.

pub mod bus;
pub mod planner;
pub mod transport;
pub mod value;

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Read/write bits (FC 1 read, FC 5/15 write).
    Coil,
    /// Read-only bits (FC 2).
    Discrete,
    /// Read/write 16-bit registers (FC 3 read, FC 6/16 write).
    Holding,
    /// Read-only 16-bit registers (FC 4).
    Input,
}

impl Table {
    /// Bits (coils, discrete inputs) rather than 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    /// The most items one read request may ask for (Modbus application protocol
    /// v1.1b3: 2000 bits for FC 1/2, 125 registers for FC 3/4).
    pub fn max_read(self) -> u16 {
        if self.is_bits() { 2000 } else { 125 }
    }
}

/// One read request: `count` items of `table` from `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReadRange {
    pub table: Table,
    pub address: u16,
    pub count: u16,
}

/// What a read returned: bits for coils and discrete inputs, registers otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    Bits(Vec<bool>),
    Registers(Vec<u16>),
}

/// One write request, with the function code the type needs (FC 5, 6, 15 or 16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// FC 5.
    SingleCoil { address: u16, value: bool },
    /// FC 15.
    MultipleCoils { address: u16, values: Vec<bool> },
    /// FC 6.
    SingleRegister { address: u16, value: u16 },
    /// FC 16.
    MultipleRegisters { address: u16, values: Vec<u16> },
}
