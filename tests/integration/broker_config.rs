//! `fieldgate broker -c FILE` end to end: a YAML configuration with a password file
//! (made by `fieldgate passwd`), an ACL and a WebSocket listener, exercised by
//! mosquitto's clients and paho-mqtt over WebSocket.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{KillOnDrop, TempDir, require_peers, run_program, run_python};

const TIMEOUT: Duration = Duration::from_secs(20);

/// The broker as a process; returns it and its bound ports in listener order (from the
/// `-v` lines on stderr).
fn start(config: &std::path::Path, listeners: usize) -> (KillOnDrop, Vec<String>) {
    let child = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args(["broker", "-v", "-c"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fieldgate broker starts");
    // Owned by the guard at once: a failed read below must not leave it running.
    let mut child = KillOnDrop(child);
    let mut lines = BufReader::new(child.0.stderr.take().expect("piped")).lines();
    let ports = (0..listeners)
        .map(|_| {
            let line = lines.next().expect("a listening line").expect("stderr");
            line.rsplit(':')
                .next()
                .expect("ADDR:PORT")
                .trim()
                .to_string()
        })
        .collect();
    (child, ports)
}

#[test]
fn a_configured_broker_checks_passwords_and_the_acl_and_serves_websocket_clients() {
    if !require_peers(&["mosquitto_pub", "paho-mqtt"]) {
        return;
    }
    let dir = TempDir::new("broker-config");
    let passwd = dir.path().join("passwd");
    // `-c` creates the file for the first user; `-b` takes the password as an argument.
    for (flags, user, password) in [
        (&["-c", "-b"][..], "sensor", "s3cret"),
        (&["-b"][..], "dash", "d4sh"),
    ] {
        let made = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
            .arg("passwd")
            .args(flags)
            .arg(&passwd)
            .args([user, password])
            .output()
            .expect("fieldgate passwd runs");
        assert!(made.status.success(), "{made:?}");
    }
    std::fs::write(
        dir.path().join("acl"),
        // dash may read other/#: only the sensor's missing write right can stop other/x.
        "user sensor\ntopic write plant/#\n\nuser dash\ntopic read plant/#\ntopic read other/#\n",
    )
    .unwrap();
    let config = dir.path().join("fieldgate.yaml");
    std::fs::write(
        &config,
        "broker:\n  listeners:\n    - bind: 127.0.0.1:0\n    - bind: 127.0.0.1:0\n      websocket: true\n  allow_anonymous: false\n  password_file: passwd\n  acl_file: acl\n",
    )
    .unwrap();
    let (_broker, ports) = start(&config, 2);
    let (tcp, ws) = (&ports[0], &ports[1]);

    // Wrong password and no credentials: refused with a clear return code.
    let wrong = run_program(
        "mosquitto_pub",
        &[
            "-p", tcp, "-u", "sensor", "-P", "nope", "-t", "plant/a", "-m", "x",
        ],
    );
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("not authorised")
            || String::from_utf8_lossy(&wrong.stderr).contains("bad user name or password"),
        "{wrong:?}"
    );
    let anonymous = run_program("mosquitto_pub", &["-p", tcp, "-t", "plant/a", "-m", "x"]);
    assert!(!anonymous.status.success(), "{anonymous:?}");

    // The dashboard subscribes over WebSocket (paho), the sensor publishes over TCP.
    let script = r#"
import sys, threading, time
import paho.mqtt.client as mqtt
port = int(sys.argv[1])
got, subscribed = [], threading.Event()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dash-ws", transport="websockets", protocol=mqtt.MQTTv5)
c.username_pw_set("dash", "d4sh")
c.on_subscribe = lambda *a: subscribed.set()
c.on_message = lambda cl, u, m: got.append((m.topic, m.payload.decode()))
c.connect("127.0.0.1", port)
c.loop_start()
c.subscribe([("plant/#", 1), ("other/#", 1)])
if not subscribed.wait(10):
    print("no SUBACK"); sys.exit(1)
print("subscribed", flush=True)
deadline = time.time() + 15
# Both: subscribed between a round's two publishes, the end mark can come first.
seen = lambda topic: any(t == topic for t, _ in got)
while time.time() < deadline and not (seen("plant/temp") and seen("plant/end")):
    time.sleep(0.01)
c.disconnect(); c.loop_stop()
for t, p in got:
    print(f"got {t} {p}")
"#;
    let ws_port = ws.clone();
    let dash = std::thread::spawn(move || run_python(script, &[&ws_port]));
    // Publish until the dashboard has surely subscribed: its first line says so, but it
    // is captured; so the sensor repeats a probe the ACL allows, then sends the end mark.
    let sensor = |topic: &str, message: &str| {
        run_program(
            "mosquitto_pub",
            &[
                "-p", tcp, "-u", "sensor", "-P", "s3cret", "-q", "1", "-t", topic, "-m", message,
            ],
        )
    };
    // The ACL forbids the sensor this topic: 3.1.1 hears success, the message is dropped.
    let denied = sensor("other/x", "should not arrive");
    assert!(denied.status.success(), "{denied:?}");
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !dash.is_finished() && std::time::Instant::now() < deadline {
        assert!(sensor("plant/temp", "21.5").status.success());
        assert!(sensor("plant/end", "done").status.success());
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = dash.join().expect("paho thread");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("got plant/temp 21.5"), "{text}");
    assert!(
        !text.contains("other/x"),
        "the ACL let a denied publish through: {text}"
    );
}
