//! `fieldgate run` with Modbus devices, against pymodbus as the slave: registers of
//! every table published as telemetry (an f32 in CDAB order, a scaled integer, a string,
//! coils), `set` commands on a coil and a holding register change the peer and answer
//! with the value read back, bad commands are refused before anything is written, and the
//! device's availability follows the peer going away and coming back.

use crate::gateway_run::{json, publish, receive, start_with};
use crate::support::modbus::ModbusPeer;
use crate::support::{TempDir, require_peer, run_program};

/// A persistent session on the gateway's broker that collects what arrives on `filter`
/// (QoS 1) between calls, so nothing published after `watch` returns is missed.
struct Watcher {
    port: String,
    id: String,
    filter: String,
}

impl Watcher {
    /// Subscribes (and returns once the subscription is in place: `-E`).
    fn watch(port: &str, filter: &str) -> Watcher {
        let id = format!("watch-{}", fastrand::u32(..));
        let out = run_program(
            "mosquitto_sub",
            &["-p", port, "-c", "-i", &id, "-q", "1", "-t", filter, "-E"],
        );
        assert!(out.status.success(), "{out:?}");
        Watcher {
            port: port.to_string(),
            id,
            filter: filter.to_string(),
        }
    }

    /// The next message (within 10 s), as `topic payload`.
    fn next(&self) -> String {
        let args = [
            "-p",
            &self.port,
            "-c",
            "-i",
            &self.id,
            "-q",
            "1",
            "-t",
            &self.filter,
            "-v",
            "-C",
            "1",
            "-W",
            "10",
        ];
        let out = run_program("mosquitto_sub", &args);
        assert!(
            out.status.success(),
            "no message on {}: {out:?}",
            self.filter
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// 230.5 as an f32 is 0x43668000: ABCD registers [0x4366, 0x8000], CDAB [0x8000, 0x4366].
const VOLTAGE_CDAB: [u16; 2] = [0x8000, 0x4366];

fn config(port: u16) -> String {
    format!(
        "\
gateway:
  id: gw6
broker:
  listeners:
    - bind: 127.0.0.1:0
buses:
  - id: plc
    type: modbus_tcp
    host: 127.0.0.1
    port: {port}
devices:
  - id: meter
    bus: plc
    unit: 1
    poll: 200ms
    timeout: 300ms
    retries: 0
    order: CDAB
    points:
      - id: voltage
        kind: holding
        address: 0
        type: f32
        unit: V
      - id: speed
        kind: holding
        address: 2
        type: u16
        writable: true
        max: 3000
      - id: temperature
        kind: input
        address: 0
        type: i16
        scale: 0.1
      - id: model
        kind: holding
        address: 4
        type: string(4)
      - id: pump
        kind: coil
        address: 0
        writable: true
      - id: door
        kind: discrete
        address: 1
"
    )
}

fn peer_spec() -> serde_json::Value {
    serde_json::json!({
        "mode": "tcp",
        "port": 0,
        "units": [{
            "id": 1,
            "holding": [VOLTAGE_CDAB[0], VOLTAGE_CDAB[1], 1234, 0, 0x4657, 0x3130],
            "input": [0xFF9C],
            "coils": [false, false],
            "discrete": [false, true],
        }],
    })
}

/// The value of the first message on `topic` whose payload satisfies `accept`.
fn value_on(
    port: &str,
    topic: &str,
    accept: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..20 {
        let line = receive(port, &[topic], 1).remove(0);
        let payload = json(&line);
        if accept(&payload["value"]) {
            return payload;
        }
    }
    panic!("no accepted value on {topic}");
}

#[test]
fn modbus_registers_are_published_and_set_commands_change_the_peer() {
    if !require_peer("pymodbus") || !require_peer("mosquitto_sub") {
        return;
    }
    let peer = ModbusPeer::start(peer_spec());
    let dir = TempDir::new("gateway-modbus");
    let (_gateway, port) = start_with(&dir, &config(peer.port()));

    // Every table and type, decoded as the peer was loaded.
    let voltage = value_on(&port, "fieldgate/gw6/meter/voltage", |_| true);
    assert_eq!(voltage["value"], 230.5, "{voltage}");
    assert_eq!(voltage["unit"], "V");
    assert_eq!(voltage["quality"], "good");
    let temperature = value_on(&port, "fieldgate/gw6/meter/temperature", |_| true);
    assert_eq!(temperature["value"], -10, "-100 x 0.1: {temperature}");
    assert_eq!(
        value_on(&port, "fieldgate/gw6/meter/speed", |_| true)["value"],
        1234
    );
    assert_eq!(
        value_on(&port, "fieldgate/gw6/meter/model", |_| true)["value"],
        "FW10"
    );
    assert_eq!(
        value_on(&port, "fieldgate/gw6/meter/pump", |_| true)["value"],
        false
    );
    assert_eq!(
        value_on(&port, "fieldgate/gw6/meter/door", |_| true)["value"],
        true
    );
    let availability = receive(&port, &["fieldgate/gw6/meter/availability"], 1);
    assert_eq!(availability, ["fieldgate/gw6/meter/availability online"]);

    // A holding register: FC 6 on the peer, then the value read back in the result.
    let results = Watcher::watch(&port, "fieldgate/gw6/meter/+/set/result");
    publish(
        &port,
        "fieldgate/gw6/meter/speed/set",
        r#"{"value": 1500, "id": "s1"}"#,
    );
    peer.wait_for_line("FC 6 write of 1500 at 2", |l| l == "SET 6 2 [1500]");
    let result = json(&results.next());
    assert_eq!(
        result,
        serde_json::json!({"id": "s1", "ok": true, "value": 1500})
    );
    value_on(&port, "fieldgate/gw6/meter/speed", |v| *v == 1500);

    // A coil: FC 5.
    publish(&port, "fieldgate/gw6/meter/pump/set", "on");
    peer.wait_for_line("FC 5 write of coil 0", |l| l == "SET 5 0 [true]");
    let result = json(&results.next());
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["value"], true, "{result}");

    // Refused before anything is written: above the point's max, not writable, garbage.
    let writes_before = peer.count(|l| l.starts_with("SET "));
    publish(&port, "fieldgate/gw6/meter/speed/set", "70000");
    let result = json(&results.next());
    assert_eq!(result["ok"], false, "{result}");
    assert!(
        result["error"].as_str().unwrap().contains("outside"),
        "{result}"
    );
    publish(&port, "fieldgate/gw6/meter/voltage/set", "1");
    let result = json(&results.next());
    assert!(
        result["error"].as_str().unwrap().contains("not writable"),
        "{result}"
    );
    publish(&port, "fieldgate/gw6/meter/pump/set", "{not json");
    let result = json(&results.next());
    assert_eq!(result["ok"], false, "{result}");
    assert_eq!(
        peer.count(|l| l.starts_with("SET ")),
        writes_before,
        "a refused command wrote"
    );

    // The slave goes away: the device goes offline; it comes back: online again.
    let spec = peer.stop();
    let got = receive(&port, &["fieldgate/gw6/meter/availability"], 2);
    assert_eq!(
        got.last().map(String::as_str),
        Some("fieldgate/gw6/meter/availability offline"),
        "{got:?}"
    );
    let _peer = ModbusPeer::start_again(spec);
    let mut online = false;
    for _ in 0..20 {
        let got = receive(&port, &["fieldgate/gw6/meter/availability"], 1);
        if got == ["fieldgate/gw6/meter/availability online"] {
            online = true;
            break;
        }
    }
    assert!(online, "the device did not come back online");
}
