//! Modbus devices in `fieldgate run`: one task per device reads its points through its
//! bus's task in the planner's requests, publishes them (report-on-change as for every
//! device), executes `set` commands (write, then read back and publish) and says the
//! device's availability. Scheduling, retries and wire checks belong to
//! `modbus::bus`; what registers mean to `modbus::value`; this module only connects them
//! to the gateway's topics.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use tokio::sync::mpsc;

use super::{
    DeviceCommand, Outputs, Points, Reports, answer, availability, publish_reading, too_old,
};
use crate::config::{Config, Device, ModbusDevice, Source};
use crate::devices::{Value, WriteError};
use crate::modbus::bus::{self, BusConfig, BusError, BusHandle, Unit};
use crate::modbus::planner::{MaxGap, Planner};
use crate::modbus::value::{self, DataRef, Encoding};
use crate::modbus::{Data, ReadRange};

/// The buses that the devices of `config` use, by id (a bus nobody uses is never
/// opened).
pub(super) fn used_buses(config: &Config) -> impl Iterator<Item = &crate::config::Bus> {
    let used: HashSet<&str> = config
        .devices
        .iter()
        .filter_map(|d| match &d.source {
            Source::Modbus(m) => Some(m.bus.as_str()),
            _ => None,
        })
        .collect();
    config
        .buses
        .iter()
        .filter(move |b| used.contains(b.id.as_str()))
}

/// Starts one task per bus that a device uses.
pub(super) fn spawn_buses(config: &Config) -> HashMap<String, (BusConfig, BusHandle)> {
    used_buses(config)
        .map(|b| (b.id.clone(), (b.link.clone(), bus::spawn(b.link.clone()))))
        .collect()
}

/// The planner's gap for bits: a gap of `registers` registers costs as many bytes on the
/// wire as 16 times as many bits.
fn max_gap(modbus: &ModbusDevice) -> MaxGap {
    match modbus.max_gap {
        None => MaxGap::default(),
        Some(registers) => MaxGap {
            registers,
            bits: registers.saturating_mul(16).min(2000),
        },
    }
}

/// A Modbus device's points, polled and written through `bus`.
pub(super) async fn run(
    device: Device,
    modbus: ModbusDevice,
    bus: BusHandle,
    prefix: String,
    clients: Outputs,
    mut commands_rx: mpsc::Receiver<DeviceCommand>,
) {
    let base = format!("{prefix}/{}", device.id);
    // The planner numbers points by their place in this list; `ids` maps back.
    let (ids, encodings): (Vec<String>, Vec<Encoding>) = device
        .points
        .iter()
        .filter_map(|p| p.modbus.clone().map(|e| (p.id.clone(), e)))
        .unzip();
    let mut poller = Poller {
        planner: Planner::new(&encodings, max_gap(&modbus)),
        unit: Unit {
            id: modbus.unit,
            timeout: modbus.timeout,
            retries: modbus.retries,
        },
        ids,
        encodings,
        bus,
        reports: Reports::default(),
        online: None,
        warned: HashSet::new(),
    };
    let mut ticks = tokio::time::interval(device.poll);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => poller.poll(&device, &clients, &base).await,
            Some(cmd) = commands_rx.recv() => {
                let outcome = poller.command(&device, &clients, &base, &cmd).await;
                answer(&base, &cmd, outcome).await;
            }
        }
    }
}

struct Poller {
    planner: Planner,
    unit: Unit,
    ids: Vec<String>,
    encodings: Vec<Encoding>,
    bus: BusHandle,
    reports: Reports,
    /// The availability last published (`None` before the first poll).
    online: Option<bool>,
    /// Problems already logged, so a persistent one is said once, not every poll.
    warned: HashSet<String>,
}

impl Poller {
    /// One poll cycle: every request of the plan, in order.
    async fn poll(&mut self, device: &Device, clients: &Outputs, base: &str) {
        let started = Instant::now();
        let requests = self.planner.plan().requests().to_vec();
        let mut answered = 0;
        let mut failure: Option<BusError> = None;
        for request in requests {
            match self.bus.read(&device.id, &self.unit, request.range).await {
                Ok(data) => {
                    answered += 1;
                    let split = match request.split(&data) {
                        Ok(split) => split.collect::<Vec<_>>(),
                        Err(e) => {
                            self.warn(device, format!("{:?}: {e}", request.range));
                            continue;
                        }
                    };
                    let now = Instant::now();
                    for (point, slice) in split {
                        self.publish(device, clients, base, point, slice, now).await;
                    }
                }
                Err(BusError::Exception(code)) => {
                    // The device is there and refused this range: the planner splits it
                    // (0x02, illegal data address) so the readable points carry on.
                    answered += 1;
                    if code == 2 {
                        self.planner.rejected(request.range);
                    } else {
                        self.warn(
                            device,
                            format!("{:?}: {}", request.range, BusError::Exception(code)),
                        );
                    }
                }
                Err(e) => failure = Some(e),
            }
        }
        for bad in self.planner.plan().bad().to_vec() {
            let id = self.ids.get(bad.point).cloned().unwrap_or_default();
            self.warn(
                device,
                format!("point {id:?} is not read: {:?}", bad.reason),
            );
        }
        // Reachable when anything answered; a cycle where every request failed (or a
        // degraded unit) makes it offline until one answers again.
        let online = match failure {
            Some(e) if answered == 0 => {
                self.warn(device, e.to_string());
                false
            }
            _ => true,
        };
        if online {
            clients
                .metrics
                .poll_succeeded(&device.id, started.elapsed());
        } else {
            clients.metrics.device_failed(&device.id);
        }
        if self.online != Some(online) {
            if online {
                // Said again if it fails again later.
                self.warned.clear();
            }
            self.online = Some(online);
            availability(clients, base, if online { "online" } else { "offline" }).await;
        }
    }

    async fn publish(
        &mut self,
        device: &Device,
        clients: &Outputs,
        base: &str,
        point: usize,
        slice: DataRef<'_>,
        now: Instant,
    ) {
        let (Some(id), Some(encoding)) = (self.ids.get(point), self.encodings.get(point)) else {
            return;
        };
        match value::decode(encoding, slice) {
            Ok(value) => {
                if self.reports.due(device, id, &value, now) {
                    publish_reading(clients, base, device, id, value).await;
                }
            }
            Err(e) => {
                let id = id.clone();
                self.warn(device, format!("point {id:?}: {e}"));
            }
        }
    }

    /// Executes a `set` command: checks, encodes, writes (writes go ahead of polls on
    /// the bus), reads the point back and publishes what the device now holds.
    async fn command(
        &mut self,
        device: &Device,
        clients: &Outputs,
        base: &str,
        cmd: &DeviceCommand,
    ) -> Result<Value, String> {
        let command = cmd.command.as_ref().map_err(ToString::to_string)?;
        if let Some(old) = too_old(device, &cmd.point, command) {
            return Err(old);
        }
        let config = Points::point(device, &cmd.point)
            .ok_or_else(|| WriteError::UnknownPoint(cmd.point.clone()).to_string())?;
        if !config.writable {
            return Err(WriteError::NotWritable(cmd.point.clone()).to_string());
        }
        if let Value::Number(n) = command.value {
            let (min, max) = (
                config.min.unwrap_or(f64::NEG_INFINITY),
                config.max.unwrap_or(f64::INFINITY),
            );
            if !(min..=max).contains(&n) {
                return Err(WriteError::OutOfRange { value: n, min, max }.to_string());
            }
        }
        let index = self
            .ids
            .iter()
            .position(|id| *id == cmd.point)
            .ok_or_else(|| WriteError::UnknownPoint(cmd.point.clone()).to_string())?;
        let encoding = self.encodings[index].clone();
        let own_range = ReadRange {
            table: encoding.table,
            address: encoding.address,
            count: encoding.data_type.registers(),
        };
        // One bit of a register: the other fifteen are written back as they are now.
        let current = match encoding.bit {
            Some(_) => match self.bus.read(&device.id, &self.unit, own_range).await {
                Ok(Data::Registers(registers)) => registers.first().copied(),
                Ok(Data::Bits(_)) => None,
                Err(e) => return Err(format!("cannot read the register to change a bit: {e}")),
            },
            None => None,
        };
        let write = value::encode(&encoding, &command.value, current).map_err(|e| e.to_string())?;
        self.bus
            .write(&device.id, &self.unit, write)
            .await
            .map_err(|e| e.to_string())?;
        // Read back: the result and the published state are what the device holds
        // (a device may clamp or refuse silently), not what was asked.
        let data = self
            .bus
            .read(&device.id, &self.unit, own_range)
            .await
            .map_err(|e| format!("written, but reading it back failed: {e}"))?;
        let value = value::decode(&encoding, DataRef::from(&data))
            .map_err(|e| format!("written, but the value read back is not valid: {e}"))?;
        self.reports.sent(&cmd.point, value.clone(), Instant::now());
        publish_reading(clients, base, device, &cmd.point, value.clone()).await;
        Ok(value)
    }

    /// Logs a device problem once until the device recovers.
    fn warn(&mut self, device: &Device, problem: String) {
        if self.warned.insert(problem.clone()) {
            crate::observe::device_warn(
                &device.id,
                format_args!("fieldgate run: device {}: {problem}", device.id),
            );
        }
    }
}
