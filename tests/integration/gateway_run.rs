//! `fieldgate run` as a process, driven with mosquitto's clients: telemetry and
//! availability appear on the local broker, `set` commands change a simulated switch
//! and answer on `.../set/result`, bad commands get error results and change nothing,
//! and `check-config` lists every mistake in a file.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{KillOnDrop, TempDir, require_peer, run_program, wait_child_output};

const CONFIG: &str = "\
gateway:
  id: gw1
broker:
  listeners:
    - bind: 127.0.0.1:0
devices:
  - id: demo
    source: sim
    poll: 100ms
    points:
      - id: temperature
        sim: sine
        period: 10s
        min: 18
        max: 24
        unit: \"°C\"
      - id: level
        sim: constant
        writable: true
        min: 0
        max: 100
      - id: switch
        sim: switch
        writable: true
        qos: 1
        retain: true
";

/// Starts `fieldgate run -c FILE` on [`CONFIG`]; returns it and its broker's port.
fn start(dir: &TempDir) -> (KillOnDrop, String) {
    start_with(dir, CONFIG)
}

/// Starts `fieldgate run -c FILE` on `config`; returns it and its broker's port (from
/// the `broker listening on ADDR` line it prints).
pub(crate) fn start_with(dir: &TempDir, config: &str) -> (KillOnDrop, String) {
    let file = dir.path().join("fieldgate.yaml");
    std::fs::write(&file, config).unwrap();
    // Run in `dir`: the default state directory (`./fieldgate-state`, the upstream
    // spool's home) is then the test's own, not one shared with other tests.
    let child = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args(["run", "-c"])
        .arg(&file)
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fieldgate run starts");
    // Owned by the guard at once: a failed assertion below must not leave it running.
    let mut running = KillOnDrop(child);
    let mut stderr = BufReader::new(running.0.stderr.take().expect("piped")).lines();
    // Devices may report (e.g. a missing GPIO chip) before the listening line.
    let line = stderr
        .by_ref()
        .map(|l| l.expect("stderr"))
        .find(|l| l.contains("broker listening on"))
        .expect("a `broker listening on` line on stderr");
    // Keep reading what it says later, so that it never writes to a closed pipe.
    std::thread::spawn(move || stderr.for_each(drop));
    let port = line
        .rsplit(':')
        .next()
        .expect("ADDR:PORT")
        .trim()
        .to_string();
    assert!(
        port.parse::<u16>().is_ok(),
        "unexpected first line {line:?}"
    );
    (running, port)
}

/// The first `count` messages on `filter` (mosquitto_sub -v), within 10 s.
pub(crate) fn receive(port: &str, filters: &[&str], count: usize) -> Vec<String> {
    let mut args = vec!["-p", port, "-v", "-W", "10"];
    let count = count.to_string();
    args.extend(["-C", &count]);
    for f in filters {
        args.extend(["-t", f]);
    }
    let out = run_program("mosquitto_sub", &args);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// `mosquitto_pub -q 1` of one message; must succeed.
pub(crate) fn publish(port: &str, topic: &str, payload: &str) {
    let out = run_program(
        "mosquitto_pub",
        &["-p", port, "-q", "1", "-t", topic, "-m", payload],
    );
    assert!(out.status.success(), "{out:?}");
}

pub(crate) fn json(line: &str) -> serde_json::Value {
    let payload = line.split_once(' ').expect("topic payload").1;
    serde_json::from_str(payload).unwrap_or_else(|e| panic!("{line}: {e}"))
}

#[test]
fn the_gateway_publishes_telemetry_and_availability_and_executes_set_commands() {
    if !require_peer("mosquitto_sub") {
        return;
    }
    let dir = TempDir::new("gateway-run");
    let (_gateway, port) = start(&dir);
    // Availability is retained; telemetry flows every 100 ms.
    let got = receive(&port, &["fieldgate/gw1/availability"], 1);
    assert_eq!(got, ["fieldgate/gw1/availability online"]);
    let got = receive(&port, &["fieldgate/gw1/demo/temperature"], 2);
    let reading = json(&got[0]);
    let t = reading["value"].as_f64().expect("a number");
    assert!((18.0..=24.0).contains(&t), "{reading}");
    assert_eq!(reading["unit"], "°C");
    assert_eq!(reading["quality"], "good");
    assert!(reading["ts"].as_str().is_some_and(|ts| ts.ends_with('Z')));

    // A command with an id: the result echoes it, and the new state is published.
    let watch = Command::new("mosquitto_sub")
        .args(["-p", &port, "-v", "-W", "10", "-C", "4"])
        .args(["-t", "fieldgate/gw1/demo/+/set/result"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub starts");
    // Results are not retained: publish until the watcher has seen them all (it
    // subscribes asynchronously), without sleeping to guess when it is ready.
    let commands: [(&str, &str); 4] = [
        (
            "fieldgate/gw1/demo/switch/set",
            r#"{"value": "on", "id": "abc"}"#,
        ),
        ("fieldgate/gw1/demo/level/set", "250"),
        ("fieldgate/gw1/demo/temperature/set", "20"),
        ("fieldgate/gw1/demo/switch/set", "banana"),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut watch = Some(watch);
    let mut results = Vec::new();
    while let Some(mut child) = watch.take() {
        for (topic, payload) in commands {
            publish(&port, topic, payload);
        }
        match child.try_wait().expect("poll mosquitto_sub") {
            Some(_) => {
                let out = wait_child_output(child, Duration::from_secs(5));
                results = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(String::from)
                    .collect();
            }
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
                watch = Some(child);
            }
            None => panic!("no results within 10 s"),
        }
    }
    let by_point = |point: &str| -> Vec<serde_json::Value> {
        results
            .iter()
            .filter(|l| l.starts_with(&format!("fieldgate/gw1/demo/{point}/set/result ")))
            .map(|l| json(l))
            .collect()
    };
    let switch = by_point("switch");
    assert!(
        switch.contains(&serde_json::json!({"id": "abc", "ok": true, "value": true})),
        "{results:?}"
    );
    assert!(
        switch
            .iter()
            .any(|r| r["ok"] == false && r["error"].as_str().is_some_and(|e| e.contains("banana"))),
        "{results:?}"
    );
    let level = by_point("level");
    assert!(
        level.iter().any(|r| r["ok"] == false && r["error"].as_str().is_some_and(|e| e.contains("outside"))),
        "out of range refused: {results:?}"
    );
    let temperature = by_point("temperature");
    assert!(
        temperature.iter().any(|r| r["ok"] == false
            && r["error"]
                .as_str()
                .is_some_and(|e| e.contains("not writable"))),
        "{results:?}"
    );
    // The switch's new state is retained: a late subscriber sees `true`.
    let state = receive(&port, &["fieldgate/gw1/demo/switch"], 1);
    assert_eq!(json(&state[0])["value"], true, "{state:?}");
}

/// The service reads `password_credential` where systemd put it; `check-config` run by
/// hand (no `$CREDENTIALS_DIRECTORY`) reads the same name beside the file.
#[test]
fn a_password_credential_is_read_from_the_credentials_directory_or_beside_the_file() {
    let dir = TempDir::new("credential");
    let (etc, run) = (dir.path().join("etc"), dir.path().join("credentials"));
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&run).unwrap();
    let file = etc.join("fieldgate.yaml");
    std::fs::write(
        &file,
        "broker:\n  listeners:\n    - bind: 127.0.0.1:0\nupstream:\n  url: mqtt://127.0.0.1:1\n  password_credential: upstream-password\n",
    )
    .unwrap();
    let check = |credentials: Option<&std::path::Path>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fieldgate"));
        command.arg("check-config").arg(&file);
        command.env_remove("CREDENTIALS_DIRECTORY");
        if let Some(dir) = credentials {
            command.env("CREDENTIALS_DIRECTORY", dir);
        }
        command.output().expect("runs")
    };
    // Nowhere yet: the problem names the file it looked for.
    let out = check(Some(&run));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let beside = etc.join("upstream-password");
    assert!(
        err.contains(&format!(
            "upstream.password_credential: {}",
            beside.display()
        )),
        "{err}"
    );
    // Where systemd puts it (the service's view) ...
    std::fs::write(run.join("upstream-password"), "s3cret\n").unwrap();
    assert!(check(Some(&run)).status.success());
    // ... and, by hand, beside the file (where LoadCredential= takes it from).
    assert_eq!(check(None).status.code(), Some(1));
    std::fs::write(&beside, "s3cret\n").unwrap();
    assert!(check(None).status.success());
}

#[test]
fn check_config_lists_every_mistake_with_its_line_and_accepts_the_examples() {
    let dir = TempDir::new("check-config");
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "broker:\n  listeners:\n    - bind: nowhere\ndevices:\n  - id: a/b\n    source: sim\n    points:\n      - id: x\n        sim: square\n      - id: x\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "broker.listeners[0].bind: \"nowhere\" is not an address",
        "devices[0].id: \"a/b\" must be non-empty",
        "devices[0].points[0].sim: \"square\" is not one of",
        "devices[0].points[1].id: \"x\" is used twice",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(
        err.contains("(line 3)") && err.contains("(line 10)"),
        "{err}"
    );
    // Every shipped example is valid.
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).expect("config/examples") {
        let path = entry.unwrap().path();
        let out = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
            .arg("check-config")
            .arg(&path)
            .output()
            .expect("runs");
        assert!(out.status.success(), "{}: {out:?}", path.display());
        checked += 1;
    }
    assert!(checked > 0, "no examples found");
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, fieldgate::config::DEFAULT).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .arg("check-config")
        .arg(&good)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
}

/// Polls `mosquitto_sub` on `port` for the first message on `filter` while `poke` keeps
/// publishing (the subscriber cannot say when it has subscribed, and these messages are
/// not retained).
fn first_while(port: &str, filter: &str, mut poke: impl FnMut()) -> String {
    let mut child = Command::new("mosquitto_sub")
        .args(["-p", port, "-v", "-C", "1", "-W", "15", "-t", filter])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        poke();
        if child.try_wait().expect("poll").is_some() || std::time::Instant::now() > deadline {
            let out = wait_child_output(child, Duration::from_secs(5));
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn telemetry_and_commands_work_through_an_upstream_mosquitto_and_forward_rules_copy_both_ways() {
    if !require_peer("mosquitto") {
        return;
    }
    let upstream = crate::support::Mosquitto::start();
    let up = upstream.port().to_string();
    let dir = TempDir::new("gateway-upstream");
    let config = CONFIG.replace("id: gw1", "id: gw2").replace(
        "devices:",
        &format!(
            "upstream:\n  url: mqtt://127.0.0.1:{up}\n  protocol: 3.1.1\nforward:\n  - from: local\n    filter: sensors/#\n    prefix: site1/\n  - from: upstream\n    filter: downlink/#\n    strip: downlink/\n    prefix: from-cloud/\ndevices:"
        ),
    );
    let (_gateway, local) = start_with(&dir, &config);

    // Telemetry and availability reach the upstream mosquitto.
    let got = receive(&up, &["fieldgate/gw2/availability"], 1);
    assert_eq!(got, ["fieldgate/gw2/availability online"]);
    let got = receive(&up, &["fieldgate/gw2/demo/temperature"], 1);
    assert!(json(&got[0])["value"].is_number(), "{got:?}");

    // A command from upstream: executed, answered upstream.
    let result = first_while(&up, "fieldgate/gw2/demo/switch/set/result", || {
        publish(&up, "fieldgate/gw2/demo/switch/set", "on");
    });
    assert!(
        result.ends_with(r#"{"id":null,"ok":true,"value":true}"#),
        "{result}"
    );

    // Forwarding: local sensors/# -> upstream site1/sensors/#; upstream downlink/# ->
    // local from-cloud/#.
    let forwarded = first_while(&up, "site1/#", || {
        let out = run_program(
            "mosquitto_pub",
            &["-p", &local, "-t", "sensors/hall", "-m", "17"],
        );
        assert!(out.status.success(), "{out:?}");
    });
    assert_eq!(forwarded, "site1/sensors/hall 17");
    let forwarded = first_while(&local, "from-cloud/#", || {
        let out = run_program(
            "mosquitto_pub",
            &["-p", &up, "-t", "downlink/valve", "-m", "close"],
        );
        assert!(out.status.success(), "{out:?}");
    });
    assert_eq!(forwarded, "from-cloud/valve close");
}

#[test]
fn an_mqtt5_command_is_also_answered_on_its_response_topic_with_its_correlation_data() {
    if !crate::support::require_peer("paho-mqtt") {
        return;
    }
    let dir = TempDir::new("gateway-response");
    let (_gateway, port) = start(&dir);
    let script = r#"
import sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port = int(sys.argv[1])
got, subscribed = threading.Event(), threading.Event()
answer = {}
def on_message(c, u, m):
    answer["payload"] = m.payload.decode()
    answer["correlation"] = getattr(m.properties, "CorrelationData", b"").decode()
    got.set()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="requester", protocol=mqtt.MQTTv5)
c.on_message = on_message
c.on_subscribe = lambda *a: subscribed.set()
c.connect("127.0.0.1", port)
c.loop_start()
c.subscribe("replies/requester", qos=1)
subscribed.wait(10)
props = Properties(PacketTypes.PUBLISH)
props.ResponseTopic = "replies/requester"
props.CorrelationData = b"req-42"
c.publish("fieldgate/gw1/demo/level/set", b"42", qos=1, properties=props)
ok = got.wait(10)
c.disconnect(); c.loop_stop()
print("payload=" + answer.get("payload", ""))
print("correlation=" + answer.get("correlation", ""))
sys.exit(0 if ok else 1)
"#;
    let out = crate::support::run_python(script, &[&port]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains(r#"payload={"id":null,"ok":true,"value":42}"#),
        "{text}"
    );
    assert!(text.contains("correlation=req-42"), "{text}");
}

#[test]
fn home_assistant_discovery_is_retained_and_republished_when_home_assistant_comes_online() {
    if !require_peer("mosquitto_sub") {
        return;
    }
    let dir = TempDir::new("gateway-discovery");
    let config = CONFIG.replace("id: gw1", "id: gw3").replace(
        "devices:",
        "homeassistant:\n  discovery_prefix: ha\ndevices:",
    );
    let (gateway, port) = start_with(&dir, &config);
    let topics = [
        "ha/sensor/gw3_demo_temperature/config",
        "ha/number/gw3_demo_level/config",
        "ha/switch/gw3_demo_switch/config",
    ];
    let got = receive(&port, &["ha/+/+/config"], 3);
    let mut seen: Vec<&str> = got.iter().map(|l| l.split_once(' ').unwrap().0).collect();
    seen.sort();
    let mut expected = topics.to_vec();
    expected.sort();
    assert_eq!(seen, expected);
    let switch = got
        .iter()
        .find(|l| l.starts_with("ha/switch/"))
        .map(|l| json(l))
        .unwrap();
    assert_eq!(switch["command_topic"], "fieldgate/gw3/demo/switch/set");
    // Home Assistant's broker lost them (deleted here); its `online` brings them back.
    for t in topics {
        let out = run_program("mosquitto_pub", &["-p", &port, "-r", "-n", "-t", t]);
        assert!(out.status.success(), "{out:?}");
    }
    let again = first_while(&port, "ha/switch/+/config", || {
        let out = run_program(
            "mosquitto_pub",
            &["-p", &port, "-t", "ha/status", "-m", "online"],
        );
        assert!(out.status.success(), "{out:?}");
    });
    assert!(
        again.starts_with("ha/switch/gw3_demo_switch/config {"),
        "{again}"
    );
    // A device added by a reload is announced too.
    let added = config.replace(
        "devices:\n",
        "devices:\n  - id: extra\n    source: sim\n    poll: 1s\n    points:\n      - id: count\n        sim: counter\n",
    );
    assert_ne!(added, config);
    std::fs::write(dir.path().join("fieldgate.yaml"), added).unwrap();
    let announced = first_while(&port, "ha/sensor/gw3_extra_count/config", || {
        let out = run_program("kill", &["-HUP", &gateway.0.id().to_string()]);
        assert!(out.status.success(), "{out:?}");
    });
    assert!(
        json(&announced)["state_topic"] == "fieldgate/gw3/extra/count",
        "{announced}"
    );
    // Removed again: its retained config is cleared (an empty retained message), which
    // makes Home Assistant forget the entity. A live subscriber (`-R`: not the stale
    // retained copy) sees the empty message; a ping proves it subscribed first.
    let mut sub = KillOnDrop(
        Command::new("mosquitto_sub")
            .args(["-p", &port, "-v", "-R", "-W", "30"])
            .args([
                "-t",
                "ha/sensor/gw3_extra_count/config",
                "-t",
                "fg-test/ping",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub starts"),
    );
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = std::sync::Arc::clone(&lines);
    let stdout = sub.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let has = |prefix: &str| lines.lock().unwrap().iter().any(|l| l.starts_with(prefix));
    crate::support::wait_until(Duration::from_secs(15), "the subscriber", || {
        run_program(
            "mosquitto_pub",
            &["-p", &port, "-t", "fg-test/ping", "-m", "x"],
        );
        has("fg-test/ping")
    });
    std::fs::write(dir.path().join("fieldgate.yaml"), &config).unwrap();
    let out = run_program("kill", &["-HUP", &gateway.0.id().to_string()]);
    assert!(out.status.success(), "{out:?}");
    crate::support::wait_until(Duration::from_secs(15), "the config cleared", || {
        has("ha/sensor/gw3_extra_count/config")
    });
    // mosquitto_sub -v prints an empty payload as `(null)`.
    let cleared = lines.lock().unwrap().clone();
    assert!(
        cleared
            .iter()
            .any(|l| l == "ha/sensor/gw3_extra_count/config (null)"),
        "not an empty message: {cleared:?}"
    );
}

/// A pty pair made by socat: the gateway opens `dev`, the test plays the sensor on
/// `sensor`. Killed on drop.
struct PtyPair {
    child: Child,
    dev: std::path::PathBuf,
    sensor: std::path::PathBuf,
}

impl PtyPair {
    fn start(dir: &TempDir) -> PtyPair {
        let (dev, sensor) = (dir.path().join("dev"), dir.path().join("sensor"));
        let _ = std::fs::remove_file(&dev);
        let _ = std::fs::remove_file(&sensor);
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", dev.display()))
            .arg(format!("pty,raw,echo=0,link={}", sensor.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat starts");
        crate::support::wait_until(Duration::from_secs(10), "socat's ptys", || {
            dev.exists() && sensor.exists()
        });
        PtyPair { child, dev, sensor }
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The retained payload of `topic`, polled until it equals `expected`.
fn wait_retained(port: &str, topic: &str, expected: &str) {
    crate::support::wait_until(
        Duration::from_secs(15),
        &format!("{topic} = {expected}"),
        || {
            let out = run_program(
                "mosquitto_sub",
                &["-p", port, "-t", topic, "-C", "1", "-W", "2"],
            );
            String::from_utf8_lossy(&out.stdout).trim() == expected
        },
    );
}

#[test]
fn a_serial_sensor_on_a_pty_publishes_takes_writes_and_its_availability_follows_the_port() {
    if !require_peer("socat") || !require_peer("mosquitto_sub") {
        return;
    }
    let dir = TempDir::new("gateway-serial");
    let pty = PtyPair::start(&dir);
    let config = format!(
        "gateway:\n  id: gw4\nbroker:\n  listeners:\n    - bind: 127.0.0.1:0\ndevices:\n  - id: meter\n    source: serial\n    port: {}\n    baud: 9600\n    format: key_value\n    points:\n      - id: temperature\n        key: t\n        unit: \"°C\"\n      - id: valve\n        writable: true\n        min: 0\n        max: 100\n",
        pty.dev.display()
    );
    let (_gateway, port) = start_with(&dir, &config);
    wait_retained(&port, "fieldgate/gw4/meter/availability", "online");

    // The sensor speaks: its line becomes telemetry.
    let mut sensor = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pty.sensor)
        .expect("the sensor side of the pty");
    let reading = first_while(&port, "fieldgate/gw4/meter/temperature", || {
        use std::io::Write;
        sensor.write_all(b"BOOT v1.0\nt=21.5 other=3\n").unwrap();
    });
    let value = json(&reading);
    assert_eq!(value["value"], 21.5, "{reading}");
    assert_eq!(value["unit"], "°C");

    // A command becomes a line on the port.
    publish(&port, "fieldgate/gw4/meter/valve/set", "40");
    let mut reader = BufReader::new(sensor.try_clone().unwrap());
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .expect("a line from the gateway");
    assert_eq!(line, "valve=40\n");

    // Unplugged: offline; plugged back: online again.
    drop(reader);
    drop(sensor);
    drop(pty);
    wait_retained(&port, "fieldgate/gw4/meter/availability", "offline");
    let _pty = PtyPair::start(&dir);
    wait_retained(&port, "fieldgate/gw4/meter/availability", "online");
}

#[test]
fn gpio_inputs_are_published_outputs_follow_commands_and_a_missing_chip_only_takes_its_device_offline()
 {
    if !require_peer("mosquitto_sub") {
        return;
    }
    let dir = TempDir::new("gateway-gpio");
    let lines = dir.path().join("lines");
    std::fs::create_dir_all(&lines).unwrap();
    std::fs::write(lines.join("17"), "0\n").unwrap();
    let config = format!(
        "gateway:\n  id: gw5\nbroker:\n  listeners:\n    - bind: 127.0.0.1:0\ndevices:\n  - id: io\n    source: gpio\n    backend: mock\n    mock_dir: {}\n    poll: 100ms\n    points:\n      - id: door\n        line: 17\n        pull: up\n      - id: relay\n        line: 27\n        direction: output\n        writable: true\n        initial: low\n        retain: true\n  - id: absent\n    source: gpio\n    backend: gpiocdev\n    chip: /nonexistent/gpiochip9\n    points:\n      - id: button\n        line: 4\n",
        lines.display()
    );
    let (_gateway, port) = start_with(&dir, &config);
    wait_retained(&port, "fieldgate/gw5/io/availability", "online");
    assert_eq!(
        std::fs::read_to_string(lines.join("27")).unwrap(),
        "0\n",
        "initial: low"
    );

    // The input goes high: published. (Written aside and renamed, as a real line
    // changes at once, never through an empty state.)
    std::fs::write(lines.join(".17"), "1\n").unwrap();
    std::fs::rename(lines.join(".17"), lines.join("17")).unwrap();
    crate::support::wait_until(Duration::from_secs(10), "door published as true", || {
        let got = receive(&port, &["fieldgate/gw5/io/door"], 1);
        json(&got[0])["value"] == true
    });

    // A command drives the output.
    let result = first_while(&port, "fieldgate/gw5/io/relay/set/result", || {
        publish(&port, "fieldgate/gw5/io/relay/set", "on");
    });
    assert!(
        result.ends_with(r#"{"id":null,"ok":true,"value":true}"#),
        "{result}"
    );
    assert_eq!(std::fs::read_to_string(lines.join("27")).unwrap(), "1\n");
    // Inputs cannot be set.
    let refused = first_while(&port, "fieldgate/gw5/io/door/set/result", || {
        publish(&port, "fieldgate/gw5/io/door/set", "on");
    });
    assert!(refused.contains(r#""ok":false"#), "{refused}");

    // The device on a chip this machine does not have is offline; the gateway is not.
    wait_retained(&port, "fieldgate/gw5/absent/availability", "offline");
    wait_retained(&port, "fieldgate/gw5/availability", "online");
}

/// Sets a mock GPIO line as a real one changes: at once, never through an empty file.
fn set_line(lines: &std::path::Path, line: u32, high: bool) {
    let aside = lines.join(format!(".{line}"));
    std::fs::write(&aside, if high { "1\n" } else { "0\n" }).unwrap();
    std::fs::rename(&aside, lines.join(line.to_string())).unwrap();
}

#[test]
fn a_gpio_input_edge_is_published_once_debounced_without_waiting_for_the_poll_and_a_bounce_is_not()
{
    if !require_peer("mosquitto_sub") {
        return;
    }
    let dir = TempDir::new("gateway-gpio-edges");
    let lines = dir.path().join("lines");
    std::fs::create_dir_all(&lines).unwrap();
    set_line(&lines, 17, false);
    set_line(&lines, 18, false);
    // Polled once at start, then not for an hour: whatever comes later is an edge. QoS 1:
    // that one poll may run before the gateway's client is connected, and QoS 0 readings
    // are not kept while it is not; the same QoS for both keeps them in order.
    let config = format!(
        "gateway:\n  id: gw7\nbroker:\n  listeners:\n    - bind: 127.0.0.1:0\ndevices:\n  - id: io\n    source: gpio\n    backend: mock\n    mock_dir: {}\n    poll: 1h\n    points:\n      - id: door\n        line: 17\n        debounce: 1s\n        payload: raw\n        qos: 1\n      - id: window\n        line: 18\n        debounce: 1s\n        payload: raw\n        qos: 1\n        retain: true\n",
        lines.display()
    );
    let (_gateway, port) = start_with(&dir, &config);
    wait_retained(&port, "fieldgate/gw7/io/window", "false");
    // One subscriber sees both points in the order they were published. The window's
    // retained reading comes first, and says the subscription is in place.
    let mut watch = KillOnDrop(
        Command::new("mosquitto_sub")
            .args(["-p", &port, "-v", "-W", "30"])
            .args([
                "-t",
                "fieldgate/gw7/io/door",
                "-t",
                "fieldgate/gw7/io/window",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub starts"),
    );
    let mut seen = BufReader::new(watch.0.stdout.take().expect("piped")).lines();
    let mut next = move || -> String {
        seen.next()
            .expect("a message before mosquitto_sub's 30 s timeout")
            .expect("mosquitto_sub's output")
    };
    assert_eq!(next(), "fieldgate/gw7/io/window false");

    // The door opens: published once it has held for its debounce period, long before
    // the next poll.
    let opened = std::time::Instant::now();
    set_line(&lines, 17, true);
    assert_eq!(next(), "fieldgate/gw7/io/door true");
    let took = opened.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(6),
        "published {took:?} after the edge, for a debounce of 1 s"
    );

    // The door bounces: low and back within its debounce period (a pulse of 100 ms is
    // the stimulus, not a wait). Then the window opens, an edge that settles after the
    // door's would have: its reading must be the next message, with no door in between.
    set_line(&lines, 17, false);
    std::thread::sleep(Duration::from_millis(100));
    set_line(&lines, 17, true);
    set_line(&lines, 18, true);
    assert_eq!(
        next(),
        "fieldgate/gw7/io/window true",
        "the door's bounce was published"
    );
}

#[test]
fn fixed_length_serial_frames_are_read_with_a_regex_and_the_port_settings_are_applied() {
    if !require_peer("socat") || !require_peer("mosquitto_sub") {
        return;
    }
    let dir = TempDir::new("gateway-serial-fixed");
    let pty = PtyPair::start(&dir);
    let config = format!(
        "gateway:\n  id: gw6\nbroker:\n  listeners:\n    - bind: 127.0.0.1:0\ndevices:\n  - id: scale\n    source: serial\n    port: {}\n    baud: 19200\n    parity: even\n    data_bits: 7\n    stop_bits: 2\n    flow_control: software\n    frame_length: 8\n    format: regex\n    pattern: '^W(?P<w>[0-9.]+)kg'\n    points:\n      - id: weight\n        key: w\n        unit: kg\n",
        pty.dev.display()
    );
    let (_gateway, port) = start_with(&dir, &config);
    wait_retained(&port, "fieldgate/gw6/scale/availability", "online");
    let mut sensor = std::fs::OpenOptions::new()
        .write(true)
        .open(&pty.sensor)
        .expect("the sensor side of the pty");
    // Two frames of 8 bytes, no newline, the second split across writes.
    let reading = first_while(&port, "fieldgate/gw6/scale/weight", || {
        use std::io::Write;
        sensor.write_all(b"W12.50kgW07.2").unwrap();
        sensor.write_all(b"5kg").unwrap();
    });
    let value = json(&reading)["value"].as_f64().expect("a number");
    assert!(value == 12.5 || value == 7.25, "{reading}");
}

#[test]
fn the_first_reading_at_start_up_is_not_lost_even_at_qos_0_with_a_long_poll() {
    if !require_peer("mosquitto_sub") {
        return;
    }
    let dir = TempDir::new("gateway-first-reading");
    // One poll at start, the next in an hour: only the first can be seen. QoS 0 is
    // dropped by a client that is not connected yet, so devices must start after it is.
    let config = "gateway:\n  id: gw7\nbroker:\n  listeners:\n    - bind: 127.0.0.1:0\ndevices:\n  - id: tank\n    source: sim\n    poll: 1h\n    points:\n      - id: level\n        sim: constant\n        min: 42\n        retain: true\n";
    let (_gateway, port) = start_with(&dir, config);
    let got = receive(&port, &["fieldgate/gw7/tank/level"], 1);
    assert_eq!(json(&got[0])["value"], 42, "{got:?}");
}
