//! The Modbus parts of the configuration: `buses:` entries, Modbus devices (`bus:` +
//! `unit:`) and their points (`kind`, `address`, `type`, orders, `scale`, `offset`).
//! Checks only what the file says (ranges, combinations that cannot work); it must not
//! open ports or talk to devices.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::{self, PortOrPath, Text};
use super::{Bus, Checker, ModbusDevice, Parity, Source};
use crate::modbus::Table;
use crate::modbus::bus::{BusConfig, Rs485};
use crate::modbus::value::{DataType, Encoding, Order};

/// The default TCP port of Modbus/TCP (IANA "mbap").
const MODBUS_TCP_PORT: u16 = 502;

/// Keys a Modbus point may have and other points may not.
fn modbus_point_keys(p: &raw::RawPoint) -> [(&'static str, bool); 9] {
    [
        ("kind", p.kind.is_some()),
        ("address", p.address.is_some()),
        ("type", p.data_type.is_some()),
        ("bit", p.bit.is_some()),
        ("word_order", p.word_order.is_some()),
        ("byte_order", p.byte_order.is_some()),
        ("order", p.order.is_some()),
        ("scale", p.scale.is_some()),
        ("offset", p.offset.is_some()),
    ]
}

impl Checker {
    pub(super) fn buses(&mut self, raw: &[raw::RawBus]) -> Vec<Bus> {
        let mut buses: Vec<Bus> = Vec::new();
        for (i, b) in raw.iter().enumerate() {
            let path = format!("buses[{i}]");
            let line = Some(b.id.referenced.line());
            if buses.iter().any(|other| other.id == b.id.value) {
                self.problem(
                    &format!("{path}.id"),
                    line,
                    format!("{:?} is used twice", b.id.value),
                );
            }
            let kind_line = Some(b.kind.referenced.line());
            let serial_only = [
                ("baud", b.baud.is_some()),
                ("parity", b.parity.is_some()),
                ("data_bits", b.data_bits.is_some()),
                ("stop_bits", b.stop_bits.is_some()),
                ("rs485", b.rs485.is_some()),
            ];
            let tcp_only = [
                ("host", b.host.is_some()),
                ("keep_connection", b.keep_connection.is_some()),
                ("idle_close", b.idle_close.is_some()),
            ];
            let link = match b.kind.value.as_str() {
                "modbus_rtu" => {
                    self.not_here(&path, line, "a modbus_rtu bus", &tcp_only);
                    let port = match b.port.as_ref().map(|p| (&p.value, p.referenced.line())) {
                        Some((PortOrPath::Path(p), _)) => PathBuf::from(p),
                        Some((PortOrPath::Number(_), port_line)) => {
                            self.problem(
                                &format!("{path}.port"),
                                Some(port_line),
                                "a modbus_rtu bus needs a serial port path (/dev/ttyUSB0)",
                            );
                            continue;
                        }
                        None => {
                            self.problem(
                                &format!("{path}.port"),
                                line,
                                "a modbus_rtu bus needs `port: /dev/tty...`",
                            );
                            continue;
                        }
                    };
                    let baud =
                        self.number(&format!("{path}.baud"), &b.baud, 50..=4_000_000, 9600) as u32;
                    // Modbus RTU's default framing is 8E1 (the specification's "even
                    // parity is required" default); many devices are set to 8N1.
                    let parity = self.choice(
                        &format!("{path}.parity"),
                        &b.parity,
                        &[
                            ("none", Parity::None),
                            ("even", Parity::Even),
                            ("odd", Parity::Odd),
                        ],
                        Parity::Even,
                    );
                    let data_bits =
                        self.number(&format!("{path}.data_bits"), &b.data_bits, 7..=8, 8) as u8;
                    let stop_bits =
                        self.number(&format!("{path}.stop_bits"), &b.stop_bits, 1..=2, 1) as u8;
                    let rs485 = b.rs485.as_ref().map(|r| self.rs485(&path, r));
                    BusConfig::Rtu {
                        path: port,
                        baud,
                        parity,
                        data_bits,
                        stop_bits,
                        inter_frame_delay: self.gap(&path, &b.inter_frame_delay),
                        rs485,
                    }
                }
                "modbus_tcp" | "modbus_rtu_over_tcp" => {
                    let rtu = b.kind.value == "modbus_rtu_over_tcp";
                    self.not_here(
                        &path,
                        line,
                        &format!("a {} bus", b.kind.value),
                        &serial_only,
                    );
                    let Some(host) = &b.host else {
                        self.problem(
                            &format!("{path}.host"),
                            line,
                            format!("a {} bus needs `host:`", b.kind.value),
                        );
                        continue;
                    };
                    let port = match b.port.as_ref().map(|p| (&p.value, p.referenced.line())) {
                        None => MODBUS_TCP_PORT,
                        Some((PortOrPath::Number(n), port_line)) => match u16::try_from(*n) {
                            Ok(port) if port > 0 => port,
                            _ => {
                                self.problem(
                                    &format!("{path}.port"),
                                    Some(port_line),
                                    format!("{n} is out of range 1..=65535"),
                                );
                                MODBUS_TCP_PORT
                            }
                        },
                        Some((PortOrPath::Path(p), port_line)) => {
                            self.problem(
                                &format!("{path}.port"),
                                Some(port_line),
                                format!("{p:?} is not a TCP port number"),
                            );
                            MODBUS_TCP_PORT
                        }
                    };
                    if rtu {
                        self.not_here(
                            &path,
                            line,
                            "a modbus_rtu_over_tcp bus",
                            &[
                                ("keep_connection", b.keep_connection.is_some()),
                                ("idle_close", b.idle_close.is_some()),
                            ],
                        );
                        BusConfig::RtuOverTcp {
                            host: host.value.clone(),
                            port,
                            inter_frame_delay: self.gap(&path, &b.inter_frame_delay),
                        }
                    } else {
                        self.not_here(
                            &path,
                            line,
                            "a modbus_tcp bus (TCP has no frame gap)",
                            &[("inter_frame_delay", b.inter_frame_delay.is_some())],
                        );
                        let idle_close = b.idle_close.as_ref().map(|_| {
                            self.duration(
                                &format!("{path}.idle_close"),
                                &b.idle_close,
                                Duration::from_secs(60),
                            )
                        });
                        BusConfig::Tcp {
                            host: host.value.clone(),
                            port,
                            keep_connection: b.keep_connection.unwrap_or(true),
                            idle_close,
                        }
                    }
                }
                other => {
                    self.problem(
                        &format!("{path}.type"),
                        kind_line,
                        format!(
                            "{other:?} is not one of modbus_rtu, modbus_tcp, modbus_rtu_over_tcp"
                        ),
                    );
                    continue;
                }
            };
            buses.push(Bus {
                id: b.id.value.clone(),
                link,
            });
        }
        buses
    }

    /// A problem for each key set that this kind of entry does not take.
    fn not_here(&mut self, path: &str, line: Option<u64>, what: &str, keys: &[(&str, bool)]) {
        for (key, _) in keys.iter().filter(|(_, set)| *set) {
            self.problem(
                &format!("{path}.{key}"),
                line,
                format!("{what} has no {key}"),
            );
        }
    }

    fn gap(&mut self, path: &str, text: &Option<Text>) -> Option<Duration> {
        text.as_ref().map(|_| {
            self.duration(
                &format!("{path}.inter_frame_delay"),
                text,
                Duration::from_millis(2),
            )
        })
    }

    fn rs485(&mut self, path: &str, r: &raw::RawRs485) -> Rs485 {
        Rs485 {
            rts_on_send_high: self.choice(
                &format!("{path}.rs485.rts_on_send"),
                &r.rts_on_send,
                &[("high", true), ("low", false)],
                true,
            ),
            delay_before_send: self.duration(
                &format!("{path}.rs485.delay_before_send"),
                &r.delay_before_send,
                Duration::ZERO,
            ),
            delay_after_send: self.duration(
                &format!("{path}.rs485.delay_after_send"),
                &r.delay_after_send,
                Duration::ZERO,
            ),
        }
    }

    /// A Modbus device's bus, unit and request settings (`None` when unusable).
    pub(super) fn modbus_device(
        &mut self,
        path: &str,
        line: Option<u64>,
        d: &raw::RawDevice,
        buses: &[Bus],
    ) -> Option<ModbusDevice> {
        let Some(bus) = &d.bus else {
            self.problem(
                &format!("{path}.bus"),
                line,
                "a modbus device needs `bus:` (the id of a `buses` entry)",
            );
            return None;
        };
        let Some(on) = buses.iter().find(|b| b.id == bus.value) else {
            let known: Vec<&str> = buses.iter().map(|b| b.id.as_str()).collect();
            self.problem(
                &format!("{path}.bus"),
                Some(bus.referenced.line()),
                if known.is_empty() {
                    format!("{:?} is not a bus: there is no `buses:` section", bus.value)
                } else {
                    format!(
                        "{:?} is not one of the buses: {}",
                        bus.value,
                        known.join(", ")
                    )
                },
            );
            return None;
        };
        // RTU addresses 1..=247 (0 is broadcast, which is never answered); Modbus/TCP
        // gateways also use 255 and 0 for "the server itself".
        let units = match on.link {
            BusConfig::Tcp { .. } => 0..=255,
            BusConfig::Rtu { .. } | BusConfig::RtuOverTcp { .. } => 1..=247,
        };
        let Some(unit) = &d.unit else {
            self.problem(
                &format!("{path}.unit"),
                line,
                "a modbus device needs `unit:` (its slave id, e.g. 1)",
            );
            return None;
        };
        let unit = self.number(&format!("{path}.unit"), &Some(unit.clone()), units, 1) as u8;
        let timeout = self.duration(
            &format!("{path}.timeout"),
            &d.timeout,
            Duration::from_secs(1),
        );
        if timeout.is_zero() {
            self.problem(&format!("{path}.timeout"), line, "must be more than 0s");
        }
        let retries = self.number(&format!("{path}.retries"), &d.retries, 0..=10, 2) as u32;
        let max_gap = d
            .max_gap
            .as_ref()
            .map(|_| self.number(&format!("{path}.max_gap"), &d.max_gap, 0..=2000, 0) as u16);
        let order = self.order(
            path,
            &d.order,
            &d.word_order,
            &d.byte_order,
            Order::default(),
        );
        Some(ModbusDevice {
            order,
            bus: bus.value.clone(),
            unit,
            timeout,
            retries,
            max_gap,
        })
    }

    /// A problem for each Modbus key on a device that is not on a bus.
    pub(super) fn not_modbus_device(&mut self, path: &str, line: Option<u64>, d: &raw::RawDevice) {
        let keys = [
            ("unit", d.unit.is_some()),
            ("timeout", d.timeout.is_some()),
            ("retries", d.retries.is_some()),
            ("max_gap", d.max_gap.is_some()),
            ("word_order", d.word_order.is_some()),
            ("byte_order", d.byte_order.is_some()),
            ("order", d.order.is_some()),
        ];
        self.not_here(path, line, "a device that is not on a Modbus bus", &keys);
    }

    /// An order from `order: CDAB` or `word_order`/`byte_order`, over `default`.
    fn order(
        &mut self,
        path: &str,
        order: &Option<Text>,
        words: &Option<Text>,
        bytes: &Option<Text>,
        default: Order,
    ) -> Order {
        let mut result = default;
        if order.is_some() {
            if words.is_some() || bytes.is_some() {
                self.problem(
                    &format!("{path}.order"),
                    order.as_ref().map(|o| o.referenced.line()),
                    "give either `order` or `word_order`/`byte_order`, not both",
                );
            }
            let names = Order::ALL.map(|o| (o.name(), o));
            return self.choice(&format!("{path}.order"), order, &names, default);
        }
        let big_little = [("big", false), ("little", true)];
        result.words_little = self.choice(
            &format!("{path}.word_order"),
            words,
            &big_little,
            default.words_little,
        );
        result.bytes_little = self.choice(
            &format!("{path}.byte_order"),
            bytes,
            &big_little,
            default.bytes_little,
        );
        result
    }

    /// A Modbus point's encoding (`None` for other sources, or when wrong).
    pub(super) fn modbus_point(
        &mut self,
        path: &str,
        source: &Source,
        d: &raw::RawDevice,
        p: &raw::RawPoint,
    ) -> Option<Encoding> {
        let line = Some(p.id.referenced.line());
        let _ = d;
        if !matches!(source, Source::Modbus(_)) {
            for (key, _) in modbus_point_keys(p).iter().filter(|(_, set)| *set) {
                self.problem(
                    &format!("{path}.{key}"),
                    line,
                    format!("only modbus points have `{key}`"),
                );
            }
            return None;
        }
        let table = self.choice(
            &format!("{path}.kind"),
            &p.kind,
            &[
                ("coil", Some(Table::Coil)),
                ("discrete", Some(Table::Discrete)),
                ("holding", Some(Table::Holding)),
                ("input", Some(Table::Input)),
            ],
            None,
        );
        let Some(table) = table else {
            if p.kind.is_none() {
                self.problem(
                    &format!("{path}.kind"),
                    line,
                    "a modbus point needs `kind:` (coil, discrete, holding or input)",
                );
            }
            return None;
        };
        let Some(address) = &p.address else {
            self.problem(
                &format!("{path}.address"),
                line,
                "a modbus point needs `address:` (0-based: register 40001 is holding 0)",
            );
            return None;
        };
        let address_line = Some(address.referenced.line());
        let address = self.number(&format!("{path}.address"), &p.address, 0..=65_535, 0) as u16;
        let default_type = if table.is_bits() {
            DataType::Bool
        } else {
            DataType::U16
        };
        let data_type = match &p.data_type {
            None => default_type,
            Some(t) => match t.value.parse::<DataType>() {
                Ok(DataType::String { len }) if len == 0 || len > 250 => {
                    self.problem(
                        &format!("{path}.type"),
                        Some(t.referenced.line()),
                        format!("a string of {len} bytes: the length must be 1..=250"),
                    );
                    return None;
                }
                Ok(data_type) => data_type,
                Err(e) => {
                    self.problem(
                        &format!("{path}.type"),
                        Some(t.referenced.line()),
                        e.to_string(),
                    );
                    return None;
                }
            },
        };
        if table.is_bits() && data_type != DataType::Bool {
            self.problem(
                &format!("{path}.type"),
                line,
                "coils and discrete inputs are single bits: type bool",
            );
            return None;
        }
        let bit = match &p.bit {
            None => None,
            Some(b) if table.is_bits() || data_type != DataType::Bool => {
                self.problem(
                    &format!("{path}.bit"),
                    Some(b.referenced.line()),
                    "`bit` picks one bit of a holding or input register: type bool",
                );
                None
            }
            Some(_) => Some(self.number(&format!("{path}.bit"), &p.bit, 0..=15, 0) as u8),
        };
        if !table.is_bits() && data_type == DataType::Bool && bit.is_none() {
            self.problem(
                &format!("{path}.bit"),
                line,
                "a bool in a register needs `bit:` (0 is the least significant)",
            );
        }
        let end = u32::from(address) + u32::from(data_type.registers());
        if end > 65_536 {
            self.problem(
                &format!("{path}.address"),
                address_line,
                format!("the point runs past the last address 65535 (it ends at {end})"),
            );
        }
        if p.writable && matches!(table, Table::Discrete | Table::Input) {
            self.problem(
                &format!("{path}.writable"),
                line,
                "discrete and input tables are read-only: only coil and holding points are \
                 writable",
            );
        }
        let Source::Modbus(device) = source else {
            return None;
        };
        let device_order = device.order;
        let order = self.order(path, &p.order, &p.word_order, &p.byte_order, device_order);
        let scale = p.scale.as_ref().map_or(1.0, |s| s.value);
        if !scale.is_finite() || scale == 0.0 {
            self.problem(
                &format!("{path}.scale"),
                p.scale.as_ref().map(|s| s.referenced.line()),
                format!("{scale} must be a number other than 0"),
            );
        }
        let offset = p.offset.as_ref().map_or(0.0, |o| o.value);
        if !offset.is_finite() {
            self.problem(
                &format!("{path}.offset"),
                p.offset.as_ref().map(|o| o.referenced.line()),
                format!("{offset} must be a finite number"),
            );
        }
        let numeric = !matches!(data_type, DataType::Bool | DataType::String { .. });
        if !numeric && (p.scale.is_some() || p.offset.is_some()) {
            self.problem(
                &format!("{path}.scale"),
                line,
                "scale and offset apply to numbers only",
            );
        }
        Some(Encoding {
            table,
            address,
            data_type,
            order,
            bit,
            scale,
            offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Parity, Source, parse};
    use crate::modbus::Table;
    use crate::modbus::bus::BusConfig;
    use crate::modbus::value::{DataType, Order};

    const GOOD: &str = "\
buses:
  - id: rs485
    type: modbus_rtu
    port: /dev/ttyUSB0
    baud: 19200
  - id: plc
    type: modbus_tcp
    host: 192.168.1.10
    keep_connection: false
    idle_close: 30s
  - id: server
    type: modbus_rtu_over_tcp
    host: 10.0.0.5
    port: 4001
    inter_frame_delay: 5ms
devices:
  - id: meter
    bus: rs485
    unit: 3
    order: CDAB
    points:
      - id: power
        kind: input
        address: 12
        type: f32
        scale: 0.001
      - id: serial
        kind: holding
        address: 100
        type: string(10)
        order: ABCD
      - id: alarm
        kind: holding
        address: 7
        type: bool
        bit: 15
  - id: plc
    source: modbus
    bus: plc
    unit: 0
    timeout: 200ms
    retries: 0
    points:
      - id: pump
        kind: coil
        address: 0
        writable: true
      - id: setpoint
        kind: holding
        address: 40
        type: i16
        word_order: little
        writable: true
";

    #[test]
    fn buses_devices_and_points_are_read_with_their_defaults() {
        let config = parse(GOOD, Path::new(".")).unwrap();
        assert_eq!(config.buses.len(), 3);
        assert_eq!(
            config.buses[0].link,
            BusConfig::Rtu {
                path: "/dev/ttyUSB0".into(),
                baud: 19200,
                parity: Parity::Even,
                data_bits: 8,
                stop_bits: 1,
                inter_frame_delay: None,
                rs485: None,
            }
        );
        assert!(matches!(
            &config.buses[1].link,
            BusConfig::Tcp { host, port: 502, keep_connection: false, idle_close: Some(d) }
                if host == "192.168.1.10" && d.as_secs() == 30
        ));
        assert!(matches!(
            config.buses[2].link,
            BusConfig::RtuOverTcp { port: 4001, inter_frame_delay: Some(d), .. } if d.as_millis() == 5
        ));
        let Source::Modbus(meter) = &config.devices[0].source else {
            panic!("not a modbus device: {:?}", config.devices[0].source);
        };
        assert_eq!((meter.unit, meter.retries), (3, 2));
        assert_eq!(meter.timeout.as_secs(), 1);
        let cdab = Order {
            words_little: true,
            bytes_little: false,
        };
        let power = config.devices[0].points[0].modbus.clone().unwrap();
        assert_eq!(
            (power.table, power.address, power.data_type, power.order),
            (Table::Input, 12, DataType::F32, cdab)
        );
        assert!((power.scale - 0.001).abs() < f64::EPSILON);
        let serial = config.devices[0].points[1].modbus.clone().unwrap();
        assert_eq!(serial.data_type, DataType::String { len: 10 });
        assert_eq!(serial.order, Order::default(), "the point's order wins");
        let alarm = config.devices[0].points[2].modbus.clone().unwrap();
        assert_eq!((alarm.data_type, alarm.bit), (DataType::Bool, Some(15)));
        let pump = config.devices[1].points[0].modbus.clone().unwrap();
        assert_eq!((pump.table, pump.data_type), (Table::Coil, DataType::Bool));
        let setpoint = config.devices[1].points[1].modbus.clone().unwrap();
        assert!(setpoint.order.words_little && !setpoint.order.bytes_little);
    }

    #[test]
    fn modbus_mistakes_are_all_reported_with_their_paths_and_lines() {
        let yaml = "\
buses:
  - id: rs485
    type: modbus_rtu
    port: 502
  - id: plc
    type: modbus_tcp
    host: plc.local
    port: /dev/ttyS0
    baud: 9600
  - id: other
    type: profibus
devices:
  - id: meter
    bus: nowhere
    unit: 1
  - id: plc
    bus: plc
    unit: 1
    order: CDAB
    word_order: big
    points:
      - id: far
        kind: holding
        address: 70000
      - id: tail
        kind: holding
        address: 65534
        type: f64
      - id: bad_type
        kind: holding
        address: 1
        type: float
      - id: coil_bit
        kind: coil
        address: 1
        bit: 3
      - id: written_input
        kind: input
        address: 2
        writable: true
      - id: empty
        kind: holding
        address: 3
        type: string(0)
      - id: bool_without_bit
        kind: holding
        address: 4
        type: bool
      - id: nowhere
        address: 5
  - id: demo
    source: sim
    unit: 4
    points:
      - id: level
        address: 9
";
        let found = super::super::parse(yaml, Path::new("."))
            .unwrap_err()
            .problems();
        let expect = [
            ("buses[0].port", 4),
            ("buses[1].port", 8),
            ("buses[1].baud", 5),
            ("buses[2].type", 11),
            ("devices[0].bus", 14),
            ("devices[1].order", 19),
            (
                "devices[1].points[0].address: 70000 is out of range 0..=65535",
                24,
            ),
            ("devices[1].points[1].address", 27),
            ("devices[1].points[2].type", 32),
            ("devices[1].points[3].bit", 36),
            ("devices[1].points[4].writable", 37),
            ("devices[1].points[5].type", 44),
            ("devices[1].points[6].bit", 45),
            ("devices[1].points[7].kind", 49),
            ("devices[2].unit", 51),
            ("devices[2].points[0].address", 55),
        ];
        for (start, line) in expect {
            assert!(
                found
                    .iter()
                    .any(|p| p.starts_with(start) && p.ends_with(&format!("(line {line})"))),
                "no problem {start}... (line {line}) in {found:#?}"
            );
        }
        assert_eq!(found.len(), expect.len(), "{found:#?}");
    }
}
