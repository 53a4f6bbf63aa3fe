//! `fieldgate modbus read` / `write`, the real binary against a pymodbus slave: raw
//! registers and the table of readings (a known f32 found under the order it was stored
//! in), coils, an exception named, a silent unit timed out, typed and raw writes seen
//! arriving at the peer and read back, RTU on a pty, and usage errors.

use std::process::{Command, Output};
use std::time::Duration;

use crate::support::modbus::{ModbusPeer, PtyPair};
use crate::support::{TempDir, require_peer, require_peers, run_with_timeout};

/// 123.456 as an f32 is 0x42F6E979: ABCD registers [0x42F6, 0xE979], CDAB [0xE979, 0x42F6].
const ABCD: [u16; 2] = [0x42F6, 0xE979];
const CDAB: [u16; 2] = [0xE979, 0x42F6];

/// Runs `fieldgate modbus ARGS` to its end (a hang fails the test after 20 s).
fn modbus(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fieldgate"));
    command.arg("modbus").args(args);
    run_with_timeout(command, Duration::from_secs(20))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The cell of the readings table for the value of `data_type` starting at register
/// `from`, in the column headed `order`; empty when the cell is blank. Read the way a
/// person reads it: by the header's column positions.
fn reading(text: &str, from: u16, data_type: &str, order: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.iter().position(|l| l.contains("ABCD"))?;
    let column = lines[header].find(order)?;
    let mut current = None;
    for line in &lines[header + 1..] {
        let mut words = line.split_whitespace();
        let mut word = words.next();
        if let Some(n) = word.and_then(|w| w.parse::<u16>().ok()) {
            current = Some(n);
            word = words.next();
        }
        if current == Some(from) && word == Some(data_type) {
            let cell = line.get(column..).unwrap_or("");
            return Some(cell.split(' ').next().unwrap_or("").to_string());
        }
    }
    None
}

fn tcp(peer: &ModbusPeer) -> String {
    format!("127.0.0.1:{}", peer.port())
}

#[test]
fn read_prints_raw_registers_and_finds_a_known_f32_under_its_order() {
    if !require_peer("pymodbus") {
        return;
    }
    let mut holding = vec![0u16; 24];
    holding[10..12].copy_from_slice(&ABCD);
    holding[20..22].copy_from_slice(&CDAB);
    let peer = ModbusPeer::start(serde_json::json!({
        "mode": "tcp",
        "units": [{"id": 1, "holding": holding, "coils": [true, false, true]}],
    }));
    let bus = tcp(&peer);

    let args = ["--tcp", &bus, "--kind", "holding", "--count", "2"];
    let out = modbus(&[&["read", "--address", "10"], &args[..]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!("unit 1 at {bus}: holding registers 10 to 11\n")),
        "{text}"
    );
    assert!(text.contains("10: 0x42F6  17142\n"), "{text}");
    assert!(text.contains("11: 0xE979  59769\n"), "{text}");
    assert_eq!(
        reading(&text, 10, "f32", "ABCD").as_deref(),
        Some("123.456"),
        "{text}"
    );
    assert_ne!(
        reading(&text, 10, "f32", "CDAB").as_deref(),
        Some("123.456"),
        "{text}"
    );
    assert_eq!(
        reading(&text, 10, "u16", "ABCD").as_deref(),
        Some("17142"),
        "{text}"
    );
    assert_eq!(
        reading(&text, 11, "i16", "ABCD").as_deref(),
        Some("-5767"),
        "{text}"
    );
    assert_eq!(
        reading(&text, 10, "u32", "ABCD").as_deref(),
        Some("1123477881")
    );

    // The same value stored word-swapped: found under CDAB.
    let out = modbus(&[&["read", "--address", "20"], &args[..]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("20: 0xE979  59769\n"), "{text}");
    assert_eq!(
        reading(&text, 20, "f32", "CDAB").as_deref(),
        Some("123.456"),
        "{text}"
    );
    assert_ne!(
        reading(&text, 20, "f32", "ABCD").as_deref(),
        Some("123.456"),
        "{text}"
    );

    let out = modbus(&[
        "read",
        "--tcp",
        &bus,
        "--kind",
        "coil",
        "--address",
        "0",
        "--count",
        "3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("unit 1 at {bus}: coils 0 to 2\n  0: 1  on\n  1: 0  off\n  2: 1  on\n")
    );
}

#[test]
fn an_exception_is_named_and_a_silent_unit_times_out_both_non_zero() {
    if !require_peer("pymodbus") {
        return;
    }
    let peer = ModbusPeer::start(serde_json::json!({
        "mode": "tcp",
        "units": [
            {"id": 1, "holding": [1, 2]},
            {"id": 2, "holding": [1], "silent": true},
        ],
    }));
    let bus = tcp(&peer);

    // Past the two loaded registers: exception 2.
    let out = modbus(&[
        "read",
        "--tcp",
        &bus,
        "--kind",
        "holding",
        "--address",
        "1",
        "--count",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(70), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("exception 2 (illegal data address)"), "{err}");
    assert!(err.contains("holding registers 1 to 2"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(stdout(&out).is_empty());

    let out = modbus(&[
        "read",
        "--tcp",
        &bus,
        "--unit",
        "2",
        "--kind",
        "holding",
        "--address",
        "0",
        "--timeout",
        "200ms",
    ]);
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("timeout: unit 2 did not answer within 200ms"),
        "{err}"
    );
}

#[test]
fn writes_encode_like_a_configured_point_reach_the_peer_and_are_read_back() {
    if !require_peer("pymodbus") {
        return;
    }
    let peer = ModbusPeer::start(serde_json::json!({
        "mode": "tcp",
        "units": [{"id": 1, "holding": vec![0; 8], "coils": vec![false; 8]}],
    }));
    let bus = tcp(&peer);
    let write = |extra: &[&str]| {
        let out = modbus(&[&["write", "--tcp", &bus][..], extra].concat());
        assert!(out.status.success(), "{extra:?}: {}", stderr(&out));
        stdout(&out)
    };

    // u16 (the default type): FC 6.
    let text = write(&["--kind", "holding", "--address", "0", "--value", "4660"]);
    peer.wait_for_line("FC 6 at 0", |l| l == "SET 6 0 [4660]");
    assert!(
        text.starts_with("wrote u16 4660 (0x1234) to holding register 0 with FC 6\n"),
        "{text}"
    );
    assert!(text.contains("0: 0x1234   4660\n"), "read back: {text}");

    // f32 in CDAB order: FC 16 with the words swapped; the read-back shows it under CDAB.
    let text = write(&[
        "--kind",
        "holding",
        "--address",
        "4",
        "--type",
        "f32",
        "--order",
        "CDAB",
        "--value",
        "123.456",
    ]);
    peer.wait_for_line("FC 16 at 4", |l| l == "SET 16 4 [59769, 17142]");
    assert!(
        text.starts_with(
            "wrote f32 123.456 in CDAB order (0xE979 0x42F6) to holding registers 4 to 5 \
             with FC 16\n"
        ),
        "{text}"
    );
    assert_eq!(
        reading(&text, 4, "f32", "CDAB").as_deref(),
        Some("123.456"),
        "{text}"
    );

    // Raw registers, as given.
    write(&["--kind", "holding", "--address", "6", "--raw", "0xBEEF,1"]);
    peer.wait_for_line("FC 16 at 6", |l| l == "SET 16 6 [48879, 1]");

    // A coil (FC 5), then three at once (FC 15).
    let text = write(&["--kind", "coil", "--address", "2", "--value", "on"]);
    peer.wait_for_line("FC 5 at 2", |l| l == "SET 5 2 [true]");
    assert!(text.ends_with("coil 2\n  2: 1  on\n"), "{text}");
    let text = write(&["--kind", "coil", "--address", "4", "--raw", "1,0,1"]);
    peer.wait_for_line("FC 15 at 4", |l| l == "SET 15 4 [true, false, true]");
    assert!(
        text.ends_with("  4: 1  on\n  5: 0  off\n  6: 1  on\n"),
        "{text}"
    );
}

#[test]
fn read_over_rtu_on_a_pty() {
    if !require_peers(&["pymodbus", "socat"]) {
        return;
    }
    let dir = TempDir::new("cli-modbus-rtu");
    let pty = PtyPair::start(&dir);
    let _peer = ModbusPeer::start(serde_json::json!({
        "mode": "rtu",
        "path": pty.slave,
        "baud": 19200,
        "units": [{"id": 7, "input": [0, ABCD[0], ABCD[1]]}],
    }));
    let master = pty.master.to_string_lossy().into_owned();
    let out = modbus(&[
        "read",
        "--rtu",
        &master,
        "--baud",
        "19200",
        "--parity",
        "none",
        "--unit",
        "7",
        "--kind",
        "input",
        "--address",
        "1",
        "--count",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "unit 7 at {master} 19200 8N1: input registers 1 to 2\n"
        )),
        "{text}"
    );
    assert_eq!(
        reading(&text, 1, "f32", "ABCD").as_deref(),
        Some("123.456"),
        "{text}"
    );
}

#[test]
fn usage_errors_exit_1_with_one_line_and_touch_no_bus() {
    // Port 9 (discard) is never reached: every one of these fails while parsing.
    for args in [
        &[][..],
        &["peek"],
        &["read", "--kind", "holding", "--address", "0"],
        &["read", "--tcp", "127.0.0.1:9", "--address", "0"],
        &[
            "read",
            "--tcp",
            "127.0.0.1:9",
            "--kind",
            "holding",
            "--address",
            "40001x",
        ],
        &[
            "read",
            "--tcp",
            "127.0.0.1:9",
            "--kind",
            "holding",
            "--address",
            "0",
            "--count",
            "126",
        ],
        &[
            "read",
            "--tcp",
            "127.0.0.1:9",
            "--rtu",
            "/dev/null",
            "--kind",
            "coil",
            "--address",
            "0",
        ],
        &[
            "read",
            "--tcp",
            "127.0.0.1:9",
            "--baud",
            "9600",
            "--kind",
            "coil",
            "--address",
            "0",
        ],
        &[
            "write",
            "--tcp",
            "127.0.0.1:9",
            "--kind",
            "input",
            "--address",
            "0",
            "--value",
            "1",
        ],
        &[
            "write",
            "--tcp",
            "127.0.0.1:9",
            "--kind",
            "holding",
            "--address",
            "0",
            "--value",
            "70000",
        ],
        &[
            "write",
            "--tcp",
            "127.0.0.1:9",
            "--kind",
            "holding",
            "--address",
            "0",
        ],
        &[
            "write",
            "--tcp",
            "127.0.0.1:9",
            "--kind",
            "holding",
            "--address",
            "0",
            "--value",
            "1",
            "--order",
            "XYZW",
        ],
        &[
            "read",
            "--tcp",
            "127.0.0.1:9",
            "--kind",
            "holding",
            "--address",
            "0",
            "--bogus",
        ],
    ] {
        let out = modbus(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("fieldgate modbus"), "{args:?}: {err}");
        assert!(err.contains("--help"), "{args:?}: {err}");
        assert!(stdout(&out).is_empty(), "{args:?}");
    }

    let out = modbus(&["--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    assert!(
        help.contains("40001 is --kind holding --address 0"),
        "{help}"
    );
    let out = modbus(&["write", "--help"]);
    assert_eq!(stdout(&out), help);

    let mut top = Command::new(env!("CARGO_BIN_EXE_fieldgate"));
    top.arg("--help");
    let out = run_with_timeout(top, Duration::from_secs(20));
    assert!(stdout(&out).contains("modbus read|write"), "{out:?}");
}
