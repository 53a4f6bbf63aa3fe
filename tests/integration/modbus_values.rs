//! Every data type in every word/byte order, decoded from a real slave (pymodbus) loaded
//! with register images built here from the values' big-endian bytes (not by the code
//! under test), read through the planner and the bus; and written back through `encode`
//! and the bus, observed on the peer with the function code the type needs.

use std::time::Duration;

use fieldgate::devices::Value;
use fieldgate::modbus::bus::{self, BusConfig, Unit};
use fieldgate::modbus::planner::{MaxGap, Planner};
use fieldgate::modbus::value::{self, DataRef, DataType, Encoding, Order};
use fieldgate::modbus::{ReadRange, Table};
use serde_json::json;

use crate::support::modbus::ModbusPeer;
use crate::support::require_peer;

/// A value and its big-endian bytes, as the Modbus convention ("ABCD") sends them.
struct Case {
    data_type: DataType,
    value: Value,
    bytes: Vec<u8>,
}

fn cases() -> Vec<Case> {
    let n = |data_type, value: f64, bytes: &[u8]| Case {
        data_type,
        value: Value::Number(value),
        bytes: bytes.to_vec(),
    };
    vec![
        n(DataType::U16, 51234.0, &51234u16.to_be_bytes()),
        n(DataType::I16, -1234.0, &(-1234i16).to_be_bytes()),
        n(
            DataType::U32,
            3_000_000_123.0,
            &3_000_000_123u32.to_be_bytes(),
        ),
        n(
            DataType::I32,
            -2_000_000_123.0,
            &(-2_000_000_123i32).to_be_bytes(),
        ),
        n(
            DataType::U64,
            1_125_899_906_855_039.0,
            &1_125_899_906_855_039u64.to_be_bytes(),
        ),
        n(
            DataType::I64,
            -1_125_899_906_842_631.0,
            &(-1_125_899_906_842_631i64).to_be_bytes(),
        ),
        n(DataType::F32, 123.456, &123.456f32.to_be_bytes()),
        n(DataType::F64, -98765.4321, &(-98765.4321f64).to_be_bytes()),
        n(
            DataType::Bits,
            40965.0,
            &0b1010_0000_0000_0101u16.to_be_bytes(),
        ),
        Case {
            data_type: DataType::String { len: 6 },
            value: Value::Text("FG-01".into()),
            bytes: b"FG-01\0".to_vec(),
        },
    ]
}

/// The registers a slave holds for `bytes` in `order`: big-endian pairs, each pair's
/// bytes swapped for a little byte order, the registers reversed for a little word order
/// (strings keep their register order: text has no words).
fn image(bytes: &[u8], order: Order, text: bool) -> Vec<u16> {
    let mut registers: Vec<u16> = bytes
        .chunks(2)
        .map(|pair| {
            let (hi, lo) = (pair[0], pair.get(1).copied().unwrap_or(0));
            if order.bytes_little {
                u16::from_be_bytes([lo, hi])
            } else {
                u16::from_be_bytes([hi, lo])
            }
        })
        .collect();
    if order.words_little && !text {
        registers.reverse();
    }
    registers
}

/// Each case in each order, one after the other from holding register 0, plus a bool in
/// bit 5 of the register after them.
fn layout() -> (Vec<u16>, Vec<(Encoding, Value)>) {
    let mut registers = Vec::new();
    let mut points = Vec::new();
    for case in cases() {
        for order in Order::ALL {
            let text = matches!(case.data_type, DataType::String { .. });
            let address = u16::try_from(registers.len()).unwrap();
            registers.extend(image(&case.bytes, order, text));
            points.push((
                Encoding {
                    table: Table::Holding,
                    address,
                    data_type: case.data_type,
                    order,
                    bit: None,
                    scale: 1.0,
                    offset: 0.0,
                },
                case.value.clone(),
            ));
        }
    }
    let address = u16::try_from(registers.len()).unwrap();
    registers.push(1 << 5);
    points.push((
        Encoding {
            table: Table::Holding,
            address,
            data_type: DataType::Bool,
            order: Order::ABCD,
            bit: Some(5),
            scale: 1.0,
            offset: 0.0,
        },
        Value::Bool(true),
    ));
    (registers, points)
}

fn unit() -> Unit {
    Unit {
        id: 1,
        timeout: Duration::from_secs(2),
        retries: 1,
    }
}

#[test]
fn every_type_in_every_order_is_decoded_as_the_slave_was_loaded_and_written_back() {
    if !require_peer("pymodbus") {
        return;
    }
    let (registers, points) = layout();
    let peer = ModbusPeer::start(json!({
        "mode": "tcp",
        "port": 0,
        "units": [{"id": 1, "holding": registers}],
    }));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let bus = bus::spawn(BusConfig::Tcp {
            host: "127.0.0.1".into(),
            port: peer.port(),
            keep_connection: true,
            idle_close: None,
        });
        let encodings: Vec<Encoding> = points.iter().map(|(e, _)| e.clone()).collect();
        let planner = Planner::new(&encodings, MaxGap::default());
        let mut decoded = vec![None; points.len()];
        for request in planner.plan().requests() {
            let data = bus.read("values", &unit(), request.range).await.unwrap();
            for (point, slice) in request.split(&data).unwrap() {
                decoded[point] = Some(value::decode(&encodings[point], slice).unwrap());
            }
        }
        for ((encoding, expected), got) in points.iter().zip(&decoded) {
            assert_eq!(
                got.as_ref(),
                Some(expected),
                "{} {} at {}",
                encoding.data_type,
                encoding.order,
                encoding.address
            );
        }

        // Writes: a new value per type and order, then read back through the bus.
        let mut writes = 0;
        for (encoding, old) in &points {
            let new = match old {
                Value::Number(n) if encoding.data_type == DataType::Bits => {
                    Value::Number(f64::from(!(*n as u16)))
                }
                Value::Number(n) if *n < 0.0 => Value::Number(n + 1.0),
                Value::Number(n) => Value::Number(if *n > 1000.0 { n - 1.0 } else { n * 2.0 }),
                Value::Bool(b) => Value::Bool(!b),
                Value::Text(_) => Value::Text("XY".into()),
            };
            // The register holding the bool point, as loaded (only bit 5 set).
            let current = encoding.bit.map(|_| 1 << 5);
            let write = value::encode(encoding, &new, current).unwrap();
            bus.write("values", &unit(), write).await.unwrap();
            writes += 1;
            let own = ReadRange {
                table: encoding.table,
                address: encoding.address,
                count: encoding.data_type.registers(),
            };
            let data = bus.read("values", &unit(), own).await.unwrap();
            let back = value::decode(encoding, DataRef::from(&data)).unwrap();
            assert_eq!(back, new, "{} {}", encoding.data_type, encoding.order);
        }
        // One-register types go as FC 6, the others as FC 16.
        let single = points
            .iter()
            .filter(|(e, _)| e.data_type.registers() == 1)
            .count();
        peer.wait_for_count("FC 6 writes", single, |l| l.starts_with("SET 6 "));
        peer.wait_for_count("FC 16 writes", writes - single, |l| {
            l.starts_with("SET 16 ")
        });
    });
}
