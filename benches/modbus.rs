//! The Modbus side against its physical limits (issue 6, item 7).
//!
//! 1. **Modbus TCP throughput to a local peer.** One pymodbus server (started once for
//!    the run, with 100 holding registers loaded with known values) is polled
//!    back-to-back for a device of 100 `u16` points at addresses 0..99: the planner makes
//!    one 100-register request of it, sent through `bus::spawn(BusConfig::Tcp)`, the
//!    reply cut up by `Request::split` and every point decoded by `value::decode` and
//!    compared with what was loaded; the poll loop is a spawned task on a multi-thread
//!    runtime, as `fieldgate run` polls. The reference is the peer's own client library
//!    doing the same reads in a Python loop (`ModbusTcpClient` and
//!    `AsyncModbusTcpClient`, each comparing the registers with the loaded values), timed
//!    by the script itself after start-up, connecting and one warm-up read, so the
//!    interpreter's start is not in it. Figures: points per second (100 × cycles /
//!    seconds), the client's CPU per cycle (ours: all threads of this process, from
//!    `/proc/self/task/*/schedstat`; Python's: `time.process_time()`), and how busy the
//!    server was in the best run (its CPU time from `/proc/PID/task/*/schedstat` over
//!    the timed part, as a share of one core). One request at a time is a round trip
//!    each: the rate is bounded by client, server and loopback time added up, so
//!    neither side need be at 100%; a server near 100% was the limit, and then only the
//!    CPU figures compare the clients.
//!
//!    The server is a bench-local script like `tests/support/modbus_peer.py` but
//!    without its trace lines (two flushed prints per request would be part of what is
//!    measured).
//!
//!    Then a different, faster peer: tokio-modbus's own server in this process, polled
//!    the same way, against the bare tokio-modbus client (the library our transport
//!    wraps) on the same server: our bus's ceiling and what its scheduling, reply checks
//!    and decoding cost on top of the library. CPU there is the whole process's (client
//!    and server together).
//!
//!    Runs alternate between the clients, each run starting with the next one, and the
//!    best of N is reported, as ratios to the reference measured in the same run (the
//!    machine is shared and noisy).
//!
//! 2. **RTU plan quality and bus time per poll cycle.** For the devices of
//!    `config/examples/modbus-rtu.yaml` and `modbus-tcp.yaml` (their `max_gap` mapped as
//!    the gateway maps it) and for synthetic point sets, the planner's requests per poll
//!    cycle against the fewest possible, computed here by an independent exact method
//!    (a shortest chain of candidate ranges, not the planner's greedy pass; goal: equal,
//!    asserted), and against the naive one request per point. Bus time per cycle is
//!    computed from the frame sizes with 8E1 framing (11 bits per character): a request
//!    frame is 8 bytes (FC 1 to 4), its response 5 bytes plus the byte count (2 per
//!    register, a byte per 8 bits), and each frame is preceded by the inter-frame
//!    silence of max(3.5 characters, 1.75 ms). Excluded: the slave's turnaround (time
//!    from the end of a request to the start of its response: unknown per device, from
//!    well under a millisecond to tens of milliseconds), the USB adapter's latency (an FTDI chip's latency timer holds
//!    received bytes up to 16 ms by default) and the master's own scheduling, so these
//!    are floors, and the poll rates ceilings. The TCP example's PLC is planned the same
//!    way, its times what the same plan would take on a serial line.
//!
//! `cargo bench --bench modbus` runs the full measurement (3 alternated runs of each
//! client). Without `--bench` (as `cargo test --all-targets` runs benches) it does one
//! short run of each, a few seconds in all, that still checks every read returned the
//! loaded values and every plan is the fewest requests. Without the test venv's pymodbus
//! (made by `tests/run.sh`) the pymodbus part is skipped with a note, or fails under
//! `FIELDGATE_REQUIRE_PEERS=1`.

// A benchmark that cannot start its peers has nothing to measure: stopping is right.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fieldgate::config::{self, ModbusDevice, Source};
use fieldgate::devices::Value;
use fieldgate::modbus::bus::{self, BusConfig, BusHandle, Unit};
use fieldgate::modbus::planner::{MaxGap, Planner};
use fieldgate::modbus::value::{self, DataType, Encoding, Order};
use fieldgate::modbus::{ReadRange, Table};
use tokio::runtime::Runtime;

use support::KillOnDrop;

/// Holding registers loaded into the peers and read as one `u16` point each.
const REGISTERS: u16 = 100;
const UNIT: u8 = 1;

/// What register `i` holds: distinct, so a shifted or misaligned reply shows.
fn loaded_values() -> Vec<u16> {
    (0..REGISTERS).map(|i| 1000 + 7 * i).collect()
}

/// How many poll cycles one run does, and how many runs each client gets.
struct Sizes {
    pymodbus_cycles: u64,
    tokio_modbus_cycles: u64,
    runs: usize,
}

const FULL: Sizes = Sizes {
    pymodbus_cycles: 5_000,
    tokio_modbus_cycles: 20_000,
    runs: 3,
};

const SHORT: Sizes = Sizes {
    pymodbus_cycles: 300,
    tokio_modbus_cycles: 1_000,
    runs: 1,
};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full { FULL } else { SHORT };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let started = Instant::now();
    if support::require_peer("pymodbus") {
        against_pymodbus(&runtime, &sizes);
    }
    against_tokio_modbus(&runtime, &sizes);
    plans();
    if !full {
        println!(
            "short mode took {:.1} s: a check of the harness; an unoptimised build's figures \
             mean nothing (cargo bench --bench modbus measures)",
            started.elapsed().as_secs_f64()
        );
    }
}

// ---------------------------------------------------------------------------------------
// TCP throughput
// ---------------------------------------------------------------------------------------

/// The polled device: 100 `u16` points at holding registers 0..99, as configuration
/// gives them to the gateway.
struct Device {
    encodings: Vec<Encoding>,
    planner: Planner,
    unit: Unit,
    expected: Vec<Value>,
}

impl Device {
    fn new(values: &[u16]) -> Device {
        let encodings: Vec<Encoding> = (0..REGISTERS)
            .map(|address| Encoding {
                table: Table::Holding,
                address,
                data_type: DataType::U16,
                order: Order::ABCD,
                bit: None,
                scale: 1.0,
                offset: 0.0,
            })
            .collect();
        let planner = Planner::new(&encodings, MaxGap::default());
        assert_eq!(
            planner.plan().requests().len(),
            1,
            "100 contiguous registers take one request"
        );
        Device {
            encodings,
            planner,
            unit: Unit {
                id: UNIT,
                timeout: Duration::from_secs(3),
                retries: 0,
            },
            expected: values
                .iter()
                .map(|&v| Value::Number(f64::from(v)))
                .collect(),
        }
    }
}

/// `cycles` poll cycles of `device` through `bus`, as the gateway polls: every request
/// of the plan, each reply cut into points and decoded. Returns how many decoded values
/// differed from the loaded ones.
async fn poll(bus: BusHandle, device: Arc<Device>, cycles: u64) -> u64 {
    let mut wrong = 0;
    for _ in 0..cycles {
        for request in device.planner.plan().requests() {
            let data = bus
                .read("bench", &device.unit, request.range)
                .await
                .expect("the peer answers");
            for (point, items) in request.split(&data).expect("the reply fits its request") {
                let value = value::decode(&device.encodings[point], items).expect("u16 decodes");
                wrong += u64::from(value != device.expected[point]);
            }
        }
    }
    wrong
}

/// One timed run.
#[derive(Debug, Clone, Copy)]
struct Run {
    cycles: u64,
    wall: Duration,
    /// The client's CPU time (user and system); for the in-process peer, the whole
    /// process's, server included.
    cpu: Duration,
    /// The server process's CPU time over the same interval (a separate process only).
    server_cpu: Option<Duration>,
}

impl Run {
    fn points_per_second(&self) -> f64 {
        f64::from(REGISTERS) * self.cycles as f64 / self.wall.as_secs_f64()
    }

    fn wall_us_per_cycle(&self) -> f64 {
        self.wall.as_secs_f64() * 1e6 / self.cycles as f64
    }

    fn cpu_us_per_cycle(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.cycles as f64
    }

    /// The server's CPU as a share of one core over the run.
    fn server_busy(&self) -> Option<f64> {
        self.server_cpu
            .map(|cpu| cpu.as_secs_f64() / self.wall.as_secs_f64())
    }
}

/// The best of a client's runs: the highest rate, the lowest CPU per cycle, and how busy
/// the server was in the fastest run.
struct Best {
    points_per_second: f64,
    wall_us_per_cycle: f64,
    cpu_us_per_cycle: f64,
    server_busy: Option<f64>,
}

fn best(runs: &[Run]) -> Best {
    let fastest = runs
        .iter()
        .max_by(|a, b| a.points_per_second().total_cmp(&b.points_per_second()))
        .expect("at least one run");
    Best {
        points_per_second: fastest.points_per_second(),
        wall_us_per_cycle: fastest.wall_us_per_cycle(),
        cpu_us_per_cycle: runs
            .iter()
            .map(Run::cpu_us_per_cycle)
            .fold(f64::INFINITY, f64::min),
        server_busy: fastest.server_busy(),
    }
}

/// Times `cycles` poll cycles of ours, the poll loop a spawned task as in the gateway.
fn time_ours(
    runtime: &Runtime,
    bus: &BusHandle,
    device: &Arc<Device>,
    cycles: u64,
    server_pid: Option<u32>,
) -> Run {
    let server_before = server_pid.map(support::cpu_time);
    let cpu_before = support::cpu_time(std::process::id());
    let start = Instant::now();
    let task = runtime.spawn(poll(bus.clone(), Arc::clone(device), cycles));
    let wrong = runtime.block_on(task).expect("the poll task ends");
    let wall = start.elapsed();
    let cpu = support::cpu_time(std::process::id()).saturating_sub(cpu_before);
    let server_cpu = server_pid
        .zip(server_before)
        .map(|(pid, before)| support::cpu_time(pid).saturating_sub(before));
    assert_eq!(
        wrong, 0,
        "values read through our bus differ from the loaded ones"
    );
    Run {
        cycles,
        wall,
        cpu,
        server_cpu,
    }
}

/// A bus to `port` on 127.0.0.1, connected and warmed up by one poll cycle.
fn warm_bus(runtime: &Runtime, port: u16, device: &Arc<Device>) -> BusHandle {
    let _guard = runtime.enter();
    let bus = bus::spawn(BusConfig::Tcp {
        host: Ipv4Addr::LOCALHOST.to_string(),
        port,
        keep_connection: true,
        idle_close: None,
    });
    let wrong = runtime.block_on(poll(bus.clone(), Arc::clone(device), 1));
    assert_eq!(wrong, 0, "the warm-up read returned other values");
    bus
}

/// A pymodbus TCP server holding `values` in holding registers 0.. of unit 1, without
/// per-request tracing. Prints `LISTENING <port>` once it serves.
const PYMODBUS_SERVER: &str = r#"
import asyncio
import json
import sys

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice


def registers(values):
    return [SimData(i, values=int(v), datatype=DataType.REGISTERS) for i, v in enumerate(values)]


async def main(unit, values):
    nothing = [SimData(0, values=[False], datatype=DataType.BITS)]
    device = SimDevice(id=unit, simdata=(nothing, nothing, registers(values), registers([0])))
    server = ModbusTcpServer([device], address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    print(f"LISTENING {server.transport.sockets[0].getsockname()[1]}", flush=True)
    await server.serving


asyncio.run(main(int(sys.argv[1]), json.loads(sys.argv[2])))
"#;

/// pymodbus's own client reading the registers back-to-back: connects, checks one
/// warm-up read, prints `READY <pymodbus version>`, waits for a line on stdin, then
/// times `cycles` reads (wall and process CPU) and prints `DONE <wall s> <cpu s>
/// <reads that returned other values>`.
const PYMODBUS_CLIENT: &str = r#"
import asyncio
import sys
import time

import pymodbus
from pymodbus.client import AsyncModbusTcpClient, ModbusTcpClient

port, unit, cycles, flavour = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
expected = [int(v) for v in sys.argv[5].split(",")]
count = len(expected)


def ready(first):
    if first.isError() or first.registers != expected:
        sys.exit(f"the warm-up read returned {first}")
    # Start-up, connecting and the warm-up read are over: the bench samples the
    # server's CPU time and says go.
    print(f"READY {pymodbus.__version__}", flush=True)
    sys.stdin.readline()


def done(wall, cpu, wrong):
    print(f"DONE {wall} {cpu} {wrong}", flush=True)


def run_sync():
    client = ModbusTcpClient("127.0.0.1", port=port)
    if not client.connect():
        sys.exit(f"cannot connect to 127.0.0.1:{port}")
    ready(client.read_holding_registers(0, count=count, device_id=unit))
    wrong = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(cycles):
        reply = client.read_holding_registers(0, count=count, device_id=unit)
        if reply.isError() or reply.registers != expected:
            wrong += 1
    done(time.perf_counter() - wall, time.process_time() - cpu, wrong)
    client.close()


async def run_async():
    client = AsyncModbusTcpClient("127.0.0.1", port=port)
    if not await client.connect():
        sys.exit(f"cannot connect to 127.0.0.1:{port}")
    ready(await client.read_holding_registers(0, count=count, device_id=unit))
    wrong = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(cycles):
        reply = await client.read_holding_registers(0, count=count, device_id=unit)
        if reply.isError() or reply.registers != expected:
            wrong += 1
    done(time.perf_counter() - wall, time.process_time() - cpu, wrong)
    client.close()


if flavour == "sync":
    run_sync()
else:
    asyncio.run(run_async())
"#;

/// The pymodbus server process, killed on drop.
struct PymodbusServer {
    child: KillOnDrop,
    port: u16,
}

impl PymodbusServer {
    fn start(values: &[u16]) -> PymodbusServer {
        let python = support::python().expect("the test venv's python");
        let values = serde_json::to_string(values).expect("registers as JSON");
        let mut child = Command::new(python)
            .args(["-c", PYMODBUS_SERVER, &UNIT.to_string(), &values])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the pymodbus server");
        let stdout = child.stdout.take().expect("piped stdout");
        let child = KillOnDrop(child);
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the server's stdout");
        let port = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the pymodbus server did not start: {line:?}"));
        PymodbusServer { child, port }
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// One timed run of pymodbus's client (`flavour`: `sync` or `async`); the server's CPU
/// time is sampled around the script's timed loop only.
fn time_pymodbus(
    flavour: &str,
    server: &PymodbusServer,
    values: &[u16],
    cycles: u64,
) -> (Run, String) {
    let python = support::python().expect("the test venv's python");
    let expected: Vec<String> = values.iter().map(u16::to_string).collect();
    let mut child = Command::new(python)
        .args([
            "-c",
            PYMODBUS_CLIENT,
            &server.port.to_string(),
            &UNIT.to_string(),
            &cycles.to_string(),
            flavour,
            &expected.join(","),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the pymodbus client");
    let mut stdin: ChildStdin = child.stdin.take().expect("piped stdin");
    let stdout: ChildStdout = child.stdout.take().expect("piped stdout");
    let mut child = KillOnDrop(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut next_line = |what: &str| -> String {
        lines
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("the pymodbus {flavour} client ended before {what}"))
    };
    let ready = next_line("READY");
    let version = ready
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("expected READY, got {ready:?}"))
        .to_owned();
    let server_before = support::cpu_time(server.pid());
    writeln!(stdin, "go").expect("tell the client to start");
    let done = next_line("DONE");
    let server_cpu = support::cpu_time(server.pid()).saturating_sub(server_before);
    let fields: Vec<f64> = done
        .strip_prefix("DONE ")
        .unwrap_or_else(|| panic!("expected DONE, got {done:?}"))
        .split_whitespace()
        .map(|f| f.parse().expect("a number"))
        .collect();
    let [wall, cpu, wrong] = fields[..] else {
        panic!("expected three figures, got {done:?}");
    };
    assert_eq!(wrong, 0.0, "pymodbus's {flavour} client read other values");
    let _ = child.0.wait();
    let run = Run {
        cycles,
        wall: Duration::from_secs_f64(wall),
        cpu: Duration::from_secs_f64(cpu),
        server_cpu: Some(server_cpu),
    };
    (run, version)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Client {
    Ours,
    PymodbusSync,
    PymodbusAsync,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Ours => "fieldgate (bus, split, decode)",
            Client::PymodbusSync => "pymodbus ModbusTcpClient",
            Client::PymodbusAsync => "pymodbus AsyncModbusTcpClient",
        }
    }
}

fn against_pymodbus(runtime: &Runtime, sizes: &Sizes) {
    let values = loaded_values();
    let server = PymodbusServer::start(&values);
    let device = Arc::new(Device::new(&values));
    let bus = warm_bus(runtime, server.port, &device);
    let clients = [Client::Ours, Client::PymodbusSync, Client::PymodbusAsync];
    let cycles = sizes.pymodbus_cycles;
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); clients.len()];
    let mut version = String::new();
    for round in 0..sizes.runs {
        for k in 0..clients.len() {
            let i = (round + k) % clients.len();
            let run = match clients[i] {
                Client::Ours => time_ours(runtime, &bus, &device, cycles, Some(server.pid())),
                Client::PymodbusSync => {
                    let (run, v) = time_pymodbus("sync", &server, &values, cycles);
                    version = v;
                    run
                }
                Client::PymodbusAsync => time_pymodbus("async", &server, &values, cycles).0,
            };
            runs[i].push(run);
        }
    }
    println!(
        "Modbus TCP to a local pymodbus {version} server (one Python process): a device of \
         {REGISTERS} u16 points at holding 0..{}, one {REGISTERS}-register request per poll cycle; \
         best of {} alternated runs of {cycles} cycles",
        REGISTERS - 1,
        sizes.runs,
    );
    println!(
        "  {:<31} {:>9} {:>9} {:>14} {:>11}   ours against it",
        "client", "points/s", "cycles/s", "client CPU/cyc", "server busy"
    );
    let ours = best(&runs[0]);
    for (client, runs) in clients.iter().zip(&runs) {
        let b = best(runs);
        let against = if *client == Client::Ours {
            String::new()
        } else {
            format!(
                "{:.2}x the rate, {:.2}x the CPU per cycle",
                ours.points_per_second / b.points_per_second,
                ours.cpu_us_per_cycle / b.cpu_us_per_cycle
            )
        };
        println!(
            "  {:<31} {:>9.0} {:>9.0} {:>11.1} µs {:>10.0}%   {against}",
            client.name(),
            b.points_per_second,
            b.points_per_second / f64::from(REGISTERS),
            b.cpu_us_per_cycle,
            b.server_busy.unwrap_or(0.0) * 100.0,
        );
    }
    println!(
        "  (server busy: the pymodbus server's CPU as a share of one core in the client's \
         fastest run. One request at a time: each cycle is a round trip through client, \
         server and loopback; a server near 100% was the limit, and then the CPU figures \
         compare the clients better than the rates)"
    );
}

// ---------------------------------------------------------------------------------------
// The in-process tokio-modbus peer
// ---------------------------------------------------------------------------------------

/// tokio-modbus's server answering holding-register reads from `registers`.
#[derive(Clone)]
struct Registers(Arc<Vec<u16>>);

impl tokio_modbus::server::Service for Registers {
    type Request = tokio_modbus::SlaveRequest<'static>;
    type Response = tokio_modbus::Response;
    type Exception = tokio_modbus::ExceptionCode;
    type Future = std::future::Ready<Result<tokio_modbus::Response, tokio_modbus::ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        use tokio_modbus::{ExceptionCode, Request, Response};
        let result = match request.request {
            Request::ReadHoldingRegisters(address, count) => {
                let start = usize::from(address);
                self.0
                    .get(start..start + usize::from(count))
                    .map(|r| Response::ReadHoldingRegisters(r.to_vec()))
                    .ok_or(ExceptionCode::IllegalDataAddress)
            }
            _ => Err(ExceptionCode::IllegalFunction),
        };
        std::future::ready(result)
    }
}

/// Starts the server on a free loopback port in `runtime`; returns the port.
fn start_tokio_modbus_server(runtime: &Runtime, values: &[u16]) -> u16 {
    let service = Registers(Arc::new(values.to_vec()));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("the listener's port").port();
    runtime.spawn(async move {
        let server = tokio_modbus::server::tcp::Server::new(listener);
        let on_connected = move |stream, _addr| {
            let service = service.clone();
            async move { Ok(Some((service, stream))) }
        };
        let _ = server.serve(&on_connected, |_error| {}).await;
    });
    port
}

/// `cycles` reads with the bare tokio-modbus client, comparing the registers.
async fn poll_bare(
    mut context: tokio_modbus::client::Context,
    expected: Arc<Vec<u16>>,
    cycles: u64,
) -> (tokio_modbus::client::Context, u64) {
    use tokio_modbus::client::Reader;
    let mut wrong = 0;
    for _ in 0..cycles {
        let registers = context
            .read_holding_registers(0, REGISTERS)
            .await
            .expect("the server answers")
            .expect("no exception");
        wrong += u64::from(registers != *expected);
    }
    (context, wrong)
}

fn against_tokio_modbus(runtime: &Runtime, sizes: &Sizes) {
    let values = loaded_values();
    let port = start_tokio_modbus_server(runtime, &values);
    let device = Arc::new(Device::new(&values));
    let bus = warm_bus(runtime, port, &device);
    let expected = Arc::new(values);
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut context = runtime
        .block_on(tokio_modbus::client::tcp::connect_slave(
            address,
            tokio_modbus::Slave(UNIT),
        ))
        .expect("connect to the tokio-modbus server");
    let cycles = sizes.tokio_modbus_cycles;
    let mut ours = Vec::new();
    let mut bare = Vec::new();
    for round in 0..sizes.runs {
        for k in 0..2 {
            if (round + k) % 2 == 0 {
                ours.push(time_ours(runtime, &bus, &device, cycles, None));
                continue;
            }
            let cpu_before = support::cpu_time(std::process::id());
            let start = Instant::now();
            let task = runtime.spawn(poll_bare(context, Arc::clone(&expected), cycles));
            let (back, wrong) = runtime.block_on(task).expect("the poll task ends");
            let wall = start.elapsed();
            context = back;
            assert_eq!(wrong, 0, "the bare tokio-modbus client read other values");
            bare.push(Run {
                cycles,
                wall,
                cpu: support::cpu_time(std::process::id()).saturating_sub(cpu_before),
                server_cpu: None,
            });
        }
    }
    let (ours, bare) = (best(&ours), best(&bare));
    println!(
        "A different, faster peer: tokio-modbus 0.17's server in this process (same runtime), \
         the same device; best of {} alternated runs of {cycles} cycles",
        sizes.runs
    );
    println!(
        "  {:<31} {:>9} {:>11} {:>17}",
        "client", "points/s", "µs/cycle", "process CPU/cyc"
    );
    for (name, b) in [
        ("fieldgate (bus, split, decode)", &ours),
        ("tokio-modbus client, bare", &bare),
    ] {
        println!(
            "  {name:<31} {:>9.0} {:>11.1} {:>14.1} µs",
            b.points_per_second, b.wall_us_per_cycle, b.cpu_us_per_cycle
        );
    }
    println!(
        "  ours against the bare library: {:.2}x the rate, {:.2}x the CPU per cycle \
         (process CPU: client and server together)",
        ours.points_per_second / bare.points_per_second,
        ours.cpu_us_per_cycle / bare.cpu_us_per_cycle
    );
}

// ---------------------------------------------------------------------------------------
// RTU plans and bus time
// ---------------------------------------------------------------------------------------

/// A point set to plan.
struct Case {
    name: String,
    points: Vec<Encoding>,
    max_gap: MaxGap,
}

fn point(table: Table, address: u16, data_type: DataType) -> Encoding {
    Encoding {
        table,
        address,
        data_type,
        order: Order::ABCD,
        bit: None,
        scale: 1.0,
        offset: 0.0,
    }
}

/// The planner's gaps for a configured device, as the gateway derives them
/// (`app::modbus`): `max_gap` registers, and 16 times as many bits (the same bytes on the
/// wire) up to a request's 2000; the planner's defaults without it.
fn configured_gap(modbus: &ModbusDevice) -> MaxGap {
    match modbus.max_gap {
        None => MaxGap::default(),
        Some(registers) => MaxGap {
            registers,
            bits: registers.saturating_mul(16).min(2000),
        },
    }
}

/// The Modbus devices of an example configuration.
fn example_cases(file: &str) -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/examples")
        .join(file);
    let config = config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    config
        .devices
        .iter()
        .filter_map(|device| {
            let Source::Modbus(modbus) = &device.source else {
                return None;
            };
            let link = config.buses.iter().find(|bus| bus.id == modbus.bus).map_or(
                "?".to_owned(),
                |bus| match &bus.link {
                    BusConfig::Rtu { baud, .. } => format!("RTU {baud}"),
                    BusConfig::Tcp { .. } => "TCP".to_owned(),
                    BusConfig::RtuOverTcp { .. } => "RTU/TCP".to_owned(),
                },
            );
            Some(Case {
                name: format!("{} {} ({link})", file.trim_end_matches(".yaml"), device.id),
                points: device
                    .points
                    .iter()
                    .filter_map(|p| p.modbus.clone())
                    .collect(),
                max_gap: configured_gap(modbus),
            })
        })
        .collect()
}

fn synthetic_cases() -> Vec<Case> {
    let gaps = MaxGap::default();
    let (bit_gap, register_gap) = (gaps.bits, gaps.registers);
    // 40 f32 in 40 of the 200 two-register slots of 0..399, scattered: 97 is coprime to
    // 200, so the slots are distinct.
    let meter = (0..40u16)
        .map(|i| point(Table::Input, i * 97 % 200 * 2, DataType::F32))
        .collect();
    // 16 coils in 4 groups of 4; the gaps between groups: 96, exactly max_gap, max_gap + 1.
    let coils = [0, 100, 100 + 4 + bit_gap, 100 + 8 + 2 * bit_gap + 1]
        .into_iter()
        .flat_map(|start| (start..start + 4).map(|a| point(Table::Coil, a, DataType::Bool)))
        .collect();
    // Gaps alternating between exactly max_gap and max_gap + 1 registers.
    let mut edges = Vec::new();
    let mut next = 0;
    for (i, data_type) in [
        DataType::U16,
        DataType::U32,
        DataType::U16,
        DataType::F64,
        DataType::I16,
        DataType::F32,
        DataType::U16,
    ]
    .into_iter()
    .enumerate()
    {
        edges.push(point(Table::Holding, next, data_type));
        next += data_type.registers() + register_gap + u16::from(i % 2 == 1);
    }
    // One status register read as a whole and as three bits, a u32 and a u16 view of the
    // same registers, and a u16 exactly max_gap past them.
    let mut overlapping = vec![point(Table::Holding, 0, DataType::Bits)];
    overlapping.extend((0..3).map(|bit| Encoding {
        bit: Some(bit),
        ..point(Table::Holding, 0, DataType::Bool)
    }));
    overlapping.extend([
        point(Table::Holding, 1, DataType::U32),
        point(Table::Holding, 2, DataType::U16),
        point(Table::Holding, 3 + register_gap, DataType::U16),
    ]);
    // One register more than a request may read, all of it wanted.
    let over_limit = (0..126)
        .map(|a| point(Table::Holding, a, DataType::U16))
        .collect();
    // Every other register of 0..299: gaps of 1, so only the request limit splits.
    let dense = (0..150)
        .map(|i| point(Table::Input, 2 * i, DataType::U16))
        .collect();
    [
        ("40 f32 over 400 input registers", meter),
        ("16 coils, gaps 96/160/161", coils),
        ("registers, gaps 10/11 alternating", edges),
        ("overlapping views of holding 0..3", overlapping),
        ("126 contiguous u16", over_limit),
        ("150 u16, every other of 300", dense),
    ]
    .into_iter()
    .map(|(name, points)| Case {
        name: name.to_owned(),
        points,
        max_gap: gaps,
    })
    .collect()
}

/// A point's items, `start..end`, or `None` when no request can read it.
fn span(point: &Encoding) -> Option<(u32, u32)> {
    let start = u32::from(point.address);
    let end = start + u32::from(point.data_type.registers());
    (end - start <= u32::from(point.table.max_read()) && end <= 1 << 16).then_some((start, end))
}

/// The fewest requests that read every readable point, with at most `max_gap` items in
/// a row that belong to no point and at most the table's limit per request.
///
/// Independent of the planner: per table, a candidate request runs from some point's
/// start to some point's end. A minimal cover never needs a request inside another, so
/// its requests can be ordered with starts and ends both increasing; then a point is
/// covered exactly if the first request ending at or after its end also starts at or
/// before its start. `fewest[k]`: the fewest requests covering every point that ends by
/// `ends[k]`, the last of them ending there, over all candidate starts, each allowed
/// after any chain whose last request ends at or after every point it leaves out.
fn optimal(points: &[Encoding], max_gap: MaxGap) -> usize {
    [Table::Coil, Table::Discrete, Table::Holding, Table::Input]
        .into_iter()
        .map(|table| {
            let spans: Vec<(u32, u32)> = points
                .iter()
                .filter(|p| p.table == table)
                .filter_map(span)
                .collect();
            optimal_in_table(
                &spans,
                u32::from(max_gap.for_table(table)),
                u32::from(table.max_read()),
            )
        })
        .sum()
}

fn optimal_in_table(spans: &[(u32, u32)], gap: u32, limit: u32) -> usize {
    if spans.is_empty() {
        return 0;
    }
    // Runs of unwanted items longer than the gap, between the wanted ones: no request
    // may contain one.
    let mut sorted = spans.to_vec();
    sorted.sort_unstable();
    let mut too_wide = Vec::new();
    let mut wanted_until = sorted[0].1;
    for &(start, end) in &sorted[1..] {
        if start > wanted_until + gap {
            too_wide.push((wanted_until, start));
        }
        wanted_until = wanted_until.max(end);
    }
    let candidate = |start: u32, end: u32| {
        end > start
            && end - start <= limit
            && !too_wide.iter().any(|&(a, b)| start <= a && b <= end)
    };
    let mut starts: Vec<u32> = spans.iter().map(|s| s.0).collect();
    let mut ends: Vec<u32> = spans.iter().map(|s| s.1).collect();
    starts.sort_unstable();
    starts.dedup();
    ends.sort_unstable();
    ends.dedup();
    let mut fewest = vec![usize::MAX; ends.len()];
    for k in 0..ends.len() {
        let end = ends[k];
        for &start in starts.iter().filter(|&&s| candidate(s, end)) {
            // Points ending by `end` that this request does not cover: the chain before
            // it must cover them, so it ends at or after the last of their ends.
            let left_out = spans
                .iter()
                .filter(|&&(s, e)| e <= end && s < start)
                .map(|&(_, e)| e)
                .max();
            let cost = match left_out {
                None => 1,
                Some(must_reach) => (0..k)
                    .filter(|&j| ends[j] >= must_reach)
                    .map(|j| fewest[j])
                    .min()
                    .filter(|&c| c != usize::MAX)
                    .map_or(usize::MAX, |c| c + 1),
            };
            fewest[k] = fewest[k].min(cost);
        }
    }
    // The chain's last request ends at the last end (it must cover that point).
    fewest[ends.len() - 1]
}

/// Bits per character with 8E1 framing: start, 8 data, parity, stop.
const BITS_PER_CHARACTER: f64 = 11.0;
/// The RTU request frame for FC 1 to 4: unit, function, address, count, CRC.
const REQUEST_BYTES: u32 = 8;

/// A read response frame: unit, function, byte count, the data, CRC.
fn response_bytes(range: &ReadRange) -> u32 {
    let data = if range.table.is_bits() {
        u32::from(range.count).div_ceil(8)
    } else {
        2 * u32::from(range.count)
    };
    5 + data
}

fn wire_bytes(ranges: &[ReadRange]) -> u32 {
    ranges
        .iter()
        .map(|r| REQUEST_BYTES + response_bytes(r))
        .sum()
}

/// Seconds on the line for `ranges` at `baud`: every frame's characters, and before each
/// frame the silence of max(3.5 characters, 1.75 ms). Not the slave's turnaround.
fn bus_seconds(ranges: &[ReadRange], baud: u32) -> f64 {
    let character = BITS_PER_CHARACTER / f64::from(baud);
    let silence = (3.5 * character).max(0.00175);
    let frames = 2.0 * ranges.len() as f64;
    frames * silence + f64::from(wire_bytes(ranges)) * character
}

fn plans() {
    let mut cases = example_cases("modbus-rtu.yaml");
    cases.extend(example_cases("modbus-tcp.yaml"));
    cases.extend(synthetic_cases());
    println!(
        "RTU requests and bus time per poll cycle: 8E1 (11 bits per character), 8-byte \
         requests, 5 + data byte responses, max(3.5 characters, 1.75 ms) of silence before \
         every frame; the slave's turnaround and USB adapter latency excluded (floors; \
         polls/s are ceilings)"
    );
    println!(
        "  {:<34} {:>7} {:>6} {:>12} {:>5} {:>8} {:>7} {:>9} {:>7} {:>11}",
        "device",
        "max_gap",
        "points",
        "req p/opt/1pp",
        "bytes",
        "ms@9600",
        "polls/s",
        "ms@115200",
        "polls/s",
        "1pp ms@9600"
    );
    for case in &cases {
        let planner = Planner::new(&case.points, case.max_gap);
        let plan: Vec<ReadRange> = planner.plan().requests().iter().map(|r| r.range).collect();
        let naive: Vec<ReadRange> = case
            .points
            .iter()
            .filter(|p| span(p).is_some())
            .map(|p| ReadRange {
                table: p.table,
                address: p.address,
                count: p.data_type.registers(),
            })
            .collect();
        let fewest = optimal(&case.points, case.max_gap);
        let (slow, fast) = (bus_seconds(&plan, 9600), bus_seconds(&plan, 115_200));
        println!(
            "  {:<34} {:>7} {:>6} {:>12} {:>5} {:>8.1} {:>7.1} {:>9.2} {:>7.1} {:>11.1}",
            case.name,
            format!("{}/{}", case.max_gap.registers, case.max_gap.bits),
            case.points.len(),
            format!("{} / {} / {}", plan.len(), fewest, naive.len()),
            wire_bytes(&plan),
            slow * 1e3,
            1.0 / slow,
            fast * 1e3,
            1.0 / fast,
            bus_seconds(&naive, 9600) * 1e3,
        );
        assert_eq!(
            plan.len(),
            fewest,
            "{}: the planner's requests are not the fewest",
            case.name
        );
        assert!(
            planner.plan().bad().is_empty(),
            "{}: unread points",
            case.name
        );
    }
    println!(
        "  (max_gap: registers/bits; req: the planner's, the fewest possible, one per point \
         (1pp, the naive plan))"
    );
}
