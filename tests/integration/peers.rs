//! The test peers themselves work: a real mosquitto started by `support::Mosquitto`
//! carries messages for mosquitto's own clients and for paho-mqtt (MQTT 3.1.1 and 5.0),
//! and the test venv has pymodbus 3. If these fail, fix the environment, not the crate.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{self, Mosquitto};

/// Subscribes, publishes once the subscription is acknowledged, and prints the payload it
/// receives back. Arguments: port, protocol ("3.1.1" or "5"), topic, payload.
const PAHO_ROUND_TRIP: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt

port, proto, topic, payload = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
protocol = {"3.1.1": mqtt.MQTTv311, "5": mqtt.MQTTv5}[proto]
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol)
received = threading.Event()
failure = []

def on_connect(client, userdata, flags, reason_code, properties):
    if reason_code.is_failure:
        failure.append(f"connect refused: {reason_code}")
        received.set()
    else:
        client.subscribe(topic, qos=1)

def on_subscribe(client, userdata, mid, reason_codes, properties):
    if any(rc.is_failure for rc in reason_codes):
        failure.append(f"subscribe refused: {reason_codes}")
        received.set()
    else:
        client.publish(topic, payload, qos=1)

def on_message(client, userdata, message):
    print(message.payload.decode(), flush=True)
    received.set()

client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.connect("127.0.0.1", port)
client.loop_start()
ok = received.wait(10)
client.disconnect()
client.loop_stop()
if failure or not ok:
    sys.exit(failure[0] if failure else "no message within 10 s")
"#;

fn paho_round_trip(protocol: &str) {
    if !support::require_peers(&["mosquitto", "python", "paho-mqtt"]) {
        return;
    }
    let broker = Mosquitto::start();
    let port = broker.port().to_string();
    let payload = format!("hello from paho over MQTT {protocol}");
    let out = support::run_python(
        PAHO_ROUND_TRIP,
        &[&port, protocol, "fieldgate/test/paho", &payload],
    );
    assert!(
        out.status.success(),
        "paho round trip failed ({}):\n{}\n--- mosquitto log ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        broker.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), payload);
}

#[test]
fn mosquitto_delivers_a_retained_message_from_mosquitto_pub_to_mosquitto_sub() {
    if !support::require_peers(&["mosquitto", "mosquitto_pub", "mosquitto_sub"]) {
        return;
    }
    let broker = Mosquitto::start();
    let port = broker.port().to_string();
    let common = ["-h", "127.0.0.1", "-p", &port, "-t", "t"];

    let sub_bin = support::find_program("mosquitto_sub").unwrap();
    let pub_bin = support::find_program("mosquitto_pub").unwrap();

    let mut sub = Command::new(sub_bin)
        .args(common)
        .args(["-C", "1", "-W", "10"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mosquitto_sub");

    // Retained, so the subscriber gets it whether it subscribes before or after this.
    let mut publish = Command::new(pub_bin);
    publish.args(common).args(["-m", "hello", "-r"]);
    let published = support::run_with_timeout(publish, Duration::from_secs(10));
    assert!(
        published.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&published.stderr)
    );

    let status = support::wait_child(&mut sub, Duration::from_secs(15))
        .expect("mosquitto_sub did not exit within 15 s");
    let output = sub
        .wait_with_output()
        .expect("collect mosquitto_sub output");
    assert!(
        status.success(),
        "mosquitto_sub failed ({status}): {}\n--- mosquitto log ---\n{}",
        String::from_utf8_lossy(&output.stderr),
        broker.log()
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "hello");
}

#[test]
fn paho_mqtt_round_trips_a_message_through_mosquitto_over_mqtt_3_1_1() {
    paho_round_trip("3.1.1");
}

#[test]
fn paho_mqtt_round_trips_a_message_through_mosquitto_over_mqtt_5() {
    paho_round_trip("5");
}

#[test]
fn pymodbus_3_is_importable_from_the_test_venv() {
    if !support::require_peers(&["python", "pymodbus"]) {
        return;
    }
    let out = support::run_python(
        "import pymodbus, pymodbus.client, pymodbus.server; print(pymodbus.__version__)",
        &[],
    );
    assert!(
        out.status.success(),
        "importing pymodbus failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.trim().starts_with("3."),
        "expected pymodbus 3.x, got {version:?}"
    );
}
