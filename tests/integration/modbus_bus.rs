//! The Modbus bus task and its wire against real slaves: pymodbus as a Modbus TCP
//! server, as RTU slaves on a socat pty pair and as an RTU-over-TCP server, and
//! tokio-modbus's own TCP server in-process. Slow, silent, restarting and lying slaves
//! included; the late-reply tests show what tokio-modbus 0.17 alone does and that the
//! bus does not.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fieldgate::config::Parity;
use fieldgate::modbus::bus::{self, BusConfig, BusError, BusHandle, DEGRADE_AFTER, Rs485, Unit};
use fieldgate::modbus::{Data, ReadRange, Table, Write};
use serde_json::json;

use crate::support::modbus::{ModbusPeer, PtyPair};
use crate::support::{TempDir, require_peers};

/// Late replies in these tests come this long after the request; the timeout is well
/// below, so the request has timed out (and the line been flushed) when it comes.
const LATE: f64 = 0.3;
const SHORT_TIMEOUT: Duration = Duration::from_millis(100);

fn unit(id: u8) -> Unit {
    Unit {
        id,
        timeout: Duration::from_secs(1),
        retries: 1,
    }
}

fn range(table: Table, address: u16, count: u16) -> ReadRange {
    ReadRange {
        table,
        address,
        count,
    }
}

fn holding(address: u16, count: u16) -> ReadRange {
    range(Table::Holding, address, count)
}

fn registers(values: &[u16]) -> Result<Data, BusError> {
    Ok(Data::Registers(values.to_vec()))
}

fn bits(values: &[bool]) -> Result<Data, BusError> {
    Ok(Data::Bits(values.to_vec()))
}

fn tcp(port: u16) -> BusConfig {
    BusConfig::Tcp {
        host: "127.0.0.1".into(),
        port,
        keep_connection: true,
        idle_close: None,
    }
}

fn rtu(path: &std::path::Path) -> BusConfig {
    BusConfig::Rtu {
        path: path.to_path_buf(),
        baud: 19200,
        parity: Parity::None,
        data_bits: 8,
        stop_bits: 1,
        inter_frame_delay: None,
        rs485: None,
    }
}

/// Holding registers 100, 101, ... 119 at addresses 0 to 19.
fn twenty_registers() -> Vec<u16> {
    (100..120).collect()
}

/// Polls `read` until it succeeds (at most 15 s), returning what it read.
async fn read_until_ok(bus: &BusHandle, unit: &Unit, range: ReadRange) -> Data {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match bus.read("poller", unit, range).await {
            Ok(data) => return data,
            Err(e) if Instant::now() >= deadline => panic!("still failing after 15 s: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_tcp_reads_every_table_writes_with_fc_5_6_15_16_and_reports_exceptions() {
    if !require_peers(&["pymodbus"]) {
        return;
    }
    let peer = ModbusPeer::start(json!({"mode": "tcp", "units": [{
        "id": 1,
        "coils": [true, false, true],
        "discrete": [false, true],
        "holding": [100, 101, 102, 103],
        "input": [7, 8],
    }]}));
    let bus = bus::spawn(tcp(peer.port()));
    let meter = unit(1);

    assert_eq!(
        bus.read("meter", &meter, holding(0, 4)).await,
        registers(&[100, 101, 102, 103])
    );
    assert_eq!(
        bus.read("meter", &meter, range(Table::Input, 0, 2)).await,
        registers(&[7, 8])
    );
    assert_eq!(
        bus.read("meter", &meter, range(Table::Coil, 0, 3)).await,
        bits(&[true, false, true])
    );
    assert_eq!(
        bus.read("meter", &meter, range(Table::Discrete, 0, 2))
            .await,
        bits(&[false, true])
    );

    let writes = [
        Write::SingleCoil {
            address: 1,
            value: true,
        },
        Write::MultipleCoils {
            address: 0,
            values: vec![false, true, false],
        },
        Write::SingleRegister {
            address: 1,
            value: 555,
        },
        Write::MultipleRegisters {
            address: 2,
            values: vec![1000, 1001],
        },
    ];
    for write in writes {
        assert_eq!(bus.write("meter", &meter, write).await, Ok(()));
    }
    // The peer applied each write with its function code.
    for line in [
        "SET 5 1 [true]",
        "SET 15 0 [false, true, false]",
        "SET 6 1 [555]",
        "SET 16 2 [1000, 1001]",
    ] {
        peer.wait_for_line(line, |l| l == line);
    }
    assert_eq!(
        bus.read("meter", &meter, holding(0, 4)).await,
        registers(&[100, 555, 1000, 1001])
    );
    assert_eq!(
        bus.read("meter", &meter, range(Table::Coil, 0, 3)).await,
        bits(&[false, true, false])
    );

    // Past the loaded values: the device refuses, the bus says so and does not retry.
    let error = bus.read("meter", &meter, holding(3, 2)).await.unwrap_err();
    assert_eq!(error, BusError::Exception(2));
    assert_eq!(
        error.to_string(),
        "the device refused the request: exception 2 (illegal data address)"
    );
    assert_eq!(peer.count(|l| l.starts_with("REQ 1 3 3")), 1, "no retry");
    assert!(!bus.is_degraded(1), "an exception is an answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rtu_units_share_one_serial_bus_and_each_gets_its_own_answers() {
    if !require_peers(&["pymodbus", "socat"]) {
        return;
    }
    let dir = TempDir::new("modbus-two-units");
    let pty = PtyPair::start(&dir);
    let peer = ModbusPeer::start(json!({"mode": "rtu", "path": pty.slave, "units": [
        {"id": 1, "holding": [11, 12]},
        {"id": 2, "holding": [21, 22], "coils": [false, false]},
    ]}));
    let bus = bus::spawn(rtu(&pty.master));
    let (one, two) = (unit(1), unit(2));
    for _ in 0..5 {
        let (a, b) = tokio::join!(
            bus.read("one", &one, holding(0, 2)),
            bus.read("two", &two, holding(0, 2))
        );
        assert_eq!(a, registers(&[11, 12]));
        assert_eq!(b, registers(&[21, 22]));
    }
    let write = Write::SingleCoil {
        address: 1,
        value: true,
    };
    assert_eq!(bus.write("two", &two, write).await, Ok(()));
    assert_eq!(
        bus.read("two", &two, range(Table::Coil, 0, 2)).await,
        bits(&[false, true])
    );
    assert_eq!(peer.count(|l| l.starts_with("REQ 1 ")), 5);
    assert_eq!(peer.count(|l| l.starts_with("REQ 2 ")), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_frames_through_a_device_server_read_write_and_report_exceptions() {
    if !require_peers(&["pymodbus"]) {
        return;
    }
    let peer = ModbusPeer::start(json!({"mode": "rtu-over-tcp", "units": [
        {"id": 5, "holding": [1, 2, 3], "input": [42]},
    ]}));
    let bus = bus::spawn(BusConfig::RtuOverTcp {
        host: "127.0.0.1".into(),
        port: peer.port(),
        inter_frame_delay: None,
    });
    let device = unit(5);
    assert_eq!(
        bus.read("d", &device, holding(0, 3)).await,
        registers(&[1, 2, 3])
    );
    assert_eq!(
        bus.read("d", &device, range(Table::Input, 0, 1)).await,
        registers(&[42])
    );
    let write = Write::MultipleRegisters {
        address: 1,
        values: vec![20, 30],
    };
    assert_eq!(bus.write("d", &device, write).await, Ok(()));
    peer.wait_for_line("the write", |l| l == "SET 16 1 [20, 30]");
    assert_eq!(
        bus.read("d", &device, holding(0, 3)).await,
        registers(&[1, 20, 30])
    );
    assert_eq!(
        bus.read("d", &device, holding(2, 5)).await,
        Err(BusError::Exception(2))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_that_never_answers_times_out_on_every_attempt_degrades_and_never_starves_the_other()
{
    if !require_peers(&["pymodbus", "socat"]) {
        return;
    }
    let dir = TempDir::new("modbus-silent");
    let pty = PtyPair::start(&dir);
    let peer = ModbusPeer::start(json!({"mode": "rtu", "path": pty.slave, "units": [
        {"id": 1, "holding": [11, 12]},
        {"id": 3, "holding": [0], "silent": true},
    ]}));
    let bus = bus::spawn(rtu(&pty.master));
    let live = unit(1);
    let dead = Unit {
        id: 3,
        timeout: SHORT_TIMEOUT,
        retries: 1,
    };

    // The dead unit's requests and the live unit's polls run at the same time.
    let poller = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let mut results = Vec::new();
            for _ in 0..6 {
                results.push(bus.read("live", &live, holding(0, 2)).await);
            }
            results
        })
    };
    for failures in 1..=DEGRADE_AFTER {
        let error = bus.read("dead", &dead, holding(0, 1)).await.unwrap_err();
        assert_eq!(
            error,
            BusError::Timeout {
                unit: 3,
                timeout: SHORT_TIMEOUT,
                attempts: 2
            }
        );
        let attempts = 2 * failures as usize;
        peer.wait_for_count("the dead unit's requests", attempts, |l| {
            l.starts_with("REQ 3 ")
        });
        assert_eq!(
            peer.count(|l| l.starts_with("REQ 3 ")),
            attempts,
            "retries + 1 attempts"
        );
        assert_eq!(bus.is_degraded(3), failures == DEGRADE_AFTER);
    }
    for result in poller.await.unwrap() {
        assert_eq!(result, registers(&[11, 12]));
    }
    // The live unit was served between the dead unit's requests, not after them all.
    let lines = peer.lines();
    let first_dead = lines.iter().position(|l| l.starts_with("REQ 3 ")).unwrap();
    let last_dead = lines.iter().rposition(|l| l.starts_with("REQ 3 ")).unwrap();
    assert!(
        lines[first_dead..last_dead]
            .iter()
            .any(|l| l.starts_with("REQ 1 ")),
        "round robin: {lines:#?}"
    );

    // Degraded: failed at once, without a frame on the bus.
    let started = Instant::now();
    let error = bus.read("dead", &dead, holding(0, 1)).await.unwrap_err();
    assert!(
        matches!(error, BusError::Degraded { unit: 3, .. }),
        "{error}"
    );
    assert!(started.elapsed() < SHORT_TIMEOUT);
    assert_eq!(peer.count(|l| l.starts_with("REQ 3 ")), 6);
    assert_eq!(
        bus.read("live", &live, holding(0, 2)).await,
        registers(&[11, 12])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_tokio_modbus_0_17_takes_a_late_reply_as_the_answer_to_the_next_request() {
    // Documents the upstream behaviour the bus guards against; if this starts failing,
    // tokio-modbus has fixed it.
    if !require_peers(&["pymodbus", "socat"]) {
        return;
    }
    use tokio_modbus::client::Reader;
    use tokio_serial::SerialPortBuilderExt;

    let dir = TempDir::new("modbus-late-raw");
    let pty = PtyPair::start(&dir);
    let peer = ModbusPeer::start(json!({"mode": "rtu", "path": pty.slave, "units": [
        {"id": 1, "holding": twenty_registers(), "delay": LATE, "delay_address": 0},
    ]}));
    let port = tokio_serial::new(pty.master.to_string_lossy(), 19200)
        .open_native_async()
        .unwrap();
    let mut ctx = tokio_modbus::client::rtu::attach_slave(port, tokio_modbus::Slave(1));

    let first = tokio::time::timeout(SHORT_TIMEOUT, ctx.read_holding_registers(0, 2)).await;
    assert!(first.is_err(), "the slow read times out");
    // The slave answers read(0, 2) after all: 01 03 04 0064 0065 (100, 101).
    peer.wait_for_line("the late reply", |l| l.starts_with("SENT 0103040064"));

    let second = ctx.read_holding_registers(10, 2).await.unwrap().unwrap();
    // Holding 10 and 11 are 110 and 111.
    assert_eq!(
        second,
        vec![100, 101],
        "tokio-modbus 0.17 returned the late reply to read(0, 2) for read(10, 2)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_never_takes_a_late_reply_as_the_answer_to_the_next_request() {
    if !require_peers(&["pymodbus", "socat"]) {
        return;
    }
    let dir = TempDir::new("modbus-late-bus");
    let pty = PtyPair::start(&dir);
    let peer = ModbusPeer::start(json!({"mode": "rtu", "path": pty.slave, "units": [
        {"id": 1, "holding": twenty_registers(), "delay": LATE, "delay_address": 0},
    ]}));
    let bus = bus::spawn(rtu(&pty.master));
    let slow = Unit {
        id: 1,
        timeout: SHORT_TIMEOUT,
        retries: 0,
    };
    let late_replies = |l: &str| l.starts_with("SENT 0103040064");
    // The reply to `range`: its own data, or (when the late bytes were still on their way
    // through the pty when the request went out, as on a loaded machine) a refusal, after
    // which the line is resynchronised and asking again gives the data. Never another
    // request's data.
    // Returns whether it took a refusal.
    let read_right = async |range: ReadRange, expected: &[u16]| -> bool {
        match bus.read("meter", &slow, range).await {
            Err(BusError::InvalidReply(_)) => {
                assert_eq!(bus.read("meter", &slow, range).await, registers(expected));
                true
            }
            other => {
                assert_eq!(other, registers(expected));
                false
            }
        }
    };

    // The late reply arrives before the next request goes out: discarded before it.
    let error = bus.read("meter", &slow, holding(0, 2)).await.unwrap_err();
    assert!(matches!(error, BusError::Timeout { .. }), "{error}");
    peer.wait_for_count("the first late reply", 1, late_replies);
    // See the probe below: another shape first, in case the reply is still in transit.
    match bus.read("meter", &slow, holding(9, 1)).await {
        Ok(data) => assert_eq!(data, Data::Registers(vec![109])),
        Err(e) => assert!(matches!(e, BusError::InvalidReply(_)), "{e}"),
    }
    let mut refused = read_right(holding(10, 2), &[110, 111]).await;

    // The next request goes out before the late reply arrives: its own answer comes
    // first, and the late one is discarded before the request after.
    let error = bus.read("meter", &slow, holding(0, 2)).await.unwrap_err();
    assert!(matches!(error, BusError::Timeout { .. }), "{error}");
    refused |= read_right(holding(12, 2), &[112, 113]).await;
    peer.wait_for_count("the second late reply", 2, late_replies);
    // A late reply still in transit when a request of the same shape to the same unit
    // goes out cannot be told from its answer on RTU (no transaction id: see
    // `modbus::transport`); on a loaded machine the pty relay can hold it that long. A
    // read of another shape first takes it out either way: drained before, or refused
    // (wrong count) and resynchronised.
    match bus.read("meter", &slow, holding(16, 1)).await {
        Ok(data) => assert_eq!(data, Data::Registers(vec![116])),
        Err(e) => assert!(matches!(e, BusError::InvalidReply(_)), "{e}"),
    }
    refused |= read_right(holding(18, 2), &[118, 119]).await;
    if !refused {
        // Late bytes were drained, not read as answers (how many depends on where the
        // frames' ends fell relative to the drains).
        assert!(
            bus.stats().stale_bytes >= 9,
            "the late replies were discarded: {:?}",
            bus.stats()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modbus_tcp_server_that_restarts_is_reconnected() {
    if !require_peers(&["pymodbus"]) {
        return;
    }
    let spec = json!({"mode": "tcp", "units": [{"id": 1, "holding": [7, 8]}]});
    let peer = ModbusPeer::start(spec);
    let bus = bus::spawn(tcp(peer.port()));
    let device = unit(1);
    assert_eq!(
        bus.read("d", &device, holding(0, 2)).await,
        registers(&[7, 8])
    );

    let spec = peer.stop();
    let error = bus.read("d", &device, holding(0, 2)).await.unwrap_err();
    assert!(matches!(error, BusError::Io(_)), "{error}");

    let peer = ModbusPeer::start_again(spec);
    assert_eq!(
        read_until_ok(&bus, &device, holding(0, 2)).await,
        Data::Registers(vec![7, 8])
    );
    // The peer's output is collected by a thread: wait for the line, then count.
    peer.wait_for_count("the new connection", 1, |l| l == "CONNECTED");
    assert_eq!(peer.count(|l| l == "CONNECTED"), 1, "one new connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keep_connection_the_connection_is_closed_between_poll_cycles() {
    if !require_peers(&["pymodbus"]) {
        return;
    }
    let peer = ModbusPeer::start(json!({"mode": "tcp", "units": [{"id": 1, "holding": [7, 8]}]}));
    let bus = bus::spawn(BusConfig::Tcp {
        host: "127.0.0.1".into(),
        port: peer.port(),
        keep_connection: false,
        idle_close: None,
    });
    let device = unit(1);
    for cycle in 1..=2 {
        // One cycle: a few requests back to back on one connection.
        for _ in 0..3 {
            assert_eq!(
                bus.read("d", &device, holding(0, 2)).await,
                registers(&[7, 8])
            );
        }
        peer.wait_for_count("the connection closed after the cycle", cycle, |l| {
            l == "DISCONNECTED"
        });
    }
    assert_eq!(peer.count(|l| l == "CONNECTED"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_serial_port_is_an_io_error_until_it_appears() {
    if !require_peers(&["pymodbus", "socat"]) {
        return;
    }
    let dir = TempDir::new("modbus-missing");
    let (master, slave) = (dir.path().join("master"), dir.path().join("slave"));
    let bus = bus::spawn(rtu(&master));
    let device = unit(1);
    let error = bus.read("d", &device, holding(0, 2)).await.unwrap_err();
    let BusError::Io(why) = &error else {
        panic!("expected an I/O error, got {error}");
    };
    assert!(
        why.contains("cannot open") && why.contains("master"),
        "{error}"
    );

    let pty = PtyPair::start_at(master, slave);
    let _peer = ModbusPeer::start(json!({"mode": "rtu", "path": pty.slave, "units": [
        {"id": 1, "holding": [3, 4]},
    ]}));
    assert_eq!(
        read_until_ok(&bus, &device, holding(0, 2)).await,
        Data::Registers(vec![3, 4])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs485_mode_on_a_port_without_it_fails_with_a_clear_error() {
    if !require_peers(&["socat"]) {
        return;
    }
    let rs485 = Rs485 {
        rts_on_send_high: true,
        delay_before_send: Duration::ZERO,
        delay_after_send: Duration::from_micros(500),
    };
    // Directly: a pty has no RS-485 mode.
    let (port, _other) = tokio_serial::SerialStream::pair().unwrap();
    let error = fieldgate::modbus::transport::set_rs485_mode(&port, &rs485).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(25), "ENOTTY: {error}");

    // Through the bus: the port does not open, and the error says why.
    let dir = TempDir::new("modbus-rs485");
    let pty = PtyPair::start(&dir);
    let bus = bus::spawn(BusConfig::Rtu {
        path: pty.master.clone(),
        baud: 9600,
        parity: Parity::Even,
        data_bits: 8,
        stop_bits: 1,
        inter_frame_delay: None,
        rs485: Some(rs485),
    });
    let error = bus.read("d", &unit(1), holding(0, 1)).await.unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, BusError::Io(_)), "{message}");
    assert!(message.contains("RS-485 mode"), "{message}");
}

/// A tokio-modbus server holding 16 registers, recording the unit ids it was asked as.
#[derive(Clone, Default)]
struct InProcess {
    registers: Arc<Mutex<Vec<u16>>>,
    units: Arc<Mutex<Vec<u8>>>,
}

impl tokio_modbus::server::Service for InProcess {
    type Request = tokio_modbus::SlaveRequest<'static>;
    type Response = tokio_modbus::Response;
    type Exception = tokio_modbus::ExceptionCode;
    type Future = std::future::Ready<Result<tokio_modbus::Response, tokio_modbus::ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        use tokio_modbus::{ExceptionCode, Request, Response};
        self.units.lock().unwrap().push(request.slave);
        let mut registers = self.registers.lock().unwrap();
        let span = |address: u16, count: usize| {
            let start = usize::from(address);
            (start + count <= registers.len()).then_some(start..start + count)
        };
        let result = match request.request {
            Request::ReadHoldingRegisters(address, count) => span(address, count.into())
                .map(|r| Response::ReadHoldingRegisters(registers[r].to_vec()))
                .ok_or(ExceptionCode::IllegalDataAddress),
            Request::WriteMultipleRegisters(address, values) => match span(address, values.len()) {
                Some(r) => {
                    registers[r].copy_from_slice(&values);
                    Ok(Response::WriteMultipleRegisters(
                        address,
                        values.len() as u16,
                    ))
                }
                None => Err(ExceptionCode::IllegalDataAddress),
            },
            _ => Err(ExceptionCode::IllegalFunction),
        };
        std::future::ready(result)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_modbus_own_server_in_process_takes_writes_and_refuses_unknown_functions() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let service = InProcess {
        registers: Arc::new(Mutex::new(vec![0; 16])),
        ..InProcess::default()
    };
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let on_connected = {
        let service = service.clone();
        move |stream, _addr| {
            let service = service.clone();
            async move { Ok(Some((service, stream))) }
        }
    };
    let serving = tokio::spawn(async move {
        let _ = server.serve(&on_connected, |_error| {}).await;
    });

    let bus = bus::spawn(tcp(port));
    let device = unit(7);
    let write = Write::MultipleRegisters {
        address: 10,
        values: vec![1, 2, 3],
    };
    assert_eq!(bus.write("d", &device, write).await, Ok(()));
    assert_eq!(
        bus.read("d", &device, holding(9, 5)).await,
        registers(&[0, 1, 2, 3, 0])
    );
    assert_eq!(*service.units.lock().unwrap(), [7, 7]);
    assert_eq!(
        bus.read("d", &device, range(Table::Coil, 0, 1)).await,
        Err(BusError::Exception(1))
    );
    assert_eq!(
        bus.read("d", &device, holding(15, 2)).await,
        Err(BusError::Exception(2))
    );
    serving.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_with_fewer_registers_than_asked_for_is_refused_and_the_connection_made_anew() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A Modbus TCP "device" that answers every read with one register too few.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(Mutex::new(0));
    let counter = Arc::clone(&connections);
    let liar = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            *counter.lock().unwrap() += 1;
            tokio::spawn(async move {
                let mut request = [0u8; 12];
                while stream.read_exact(&mut request).await.is_ok() {
                    let count = u16::from_be_bytes([request[10], request[11]]);
                    let words = count.saturating_sub(1);
                    let mut reply = vec![request[0], request[1], 0, 0];
                    reply.extend_from_slice(&(3 + 2 * words).to_be_bytes());
                    reply.extend_from_slice(&[request[6], 3, (2 * words) as u8]);
                    for i in 0..words {
                        reply.extend_from_slice(&i.to_be_bytes());
                    }
                    if stream.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });

    let bus = bus::spawn(tcp(port));
    let device = Unit {
        id: 1,
        timeout: Duration::from_secs(1),
        retries: 2,
    };
    let error = bus.read("d", &device, holding(0, 2)).await.unwrap_err();
    let BusError::InvalidReply(why) = &error else {
        panic!("expected an invalid reply, got {error}");
    };
    assert!(
        why.contains("asked for 2 registers, the reply carries 1"),
        "{error}"
    );
    assert_eq!(
        *connections.lock().unwrap(),
        3,
        "each attempt on a new connection"
    );
    liar.abort();
}
