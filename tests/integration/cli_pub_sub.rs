//! `fieldgate pub` and `fieldgate sub` run as a user runs them, against a real mosquitto
//! and mosquitto's own clients on the other side.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{self, Mosquitto};

const DEADLINE: Duration = Duration::from_secs(15);

fn fieldgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fieldgate"))
}

fn port(broker: &Mosquitto) -> String {
    broker.port().to_string()
}

/// Starts `fieldgate sub` and waits until mosquitto has granted its subscription.
fn start_sub(broker: &Mosquitto, id: &str, args: &[&str]) -> Child {
    let child = fieldgate()
        .args(["sub", "-h", "127.0.0.1", "-p", &port(broker), "-i", id])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    broker.wait_for_suback(id);
    child
}

fn mosquitto_pub(broker: &Mosquitto, version: &str, qos: &str, topic: &str, message: &str) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port(broker), "-V", version])
        .args(["-q", qos, "-t", topic, "-m", message])
        .status()
        .unwrap();
    assert!(status.success());
}

fn sub_prints_what_mosquitto_pub_sends(version: &str, mosquitto_version: &str) {
    if !support::require_peers(&["mosquitto", "mosquitto_pub"]) {
        return;
    }
    let broker = Mosquitto::start();
    let id = format!("fg-cli-sub-{version}");
    let sub = start_sub(
        &broker,
        &id,
        &["-t", "a/#", "-v", "-C", "3", "-q", "2", "-V", version],
    );
    for qos in ["0", "1", "2"] {
        mosquitto_pub(
            &broker,
            mosquitto_version,
            qos,
            "a/b",
            &format!("payload{qos}"),
        );
    }
    let out = support::wait_child_output(sub, DEADLINE);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "a/b payload0\na/b payload1\na/b payload2\n"
    );
}

#[test]
fn sub_prints_topic_and_payload_lines_from_mosquitto_pub_over_3_1_1() {
    sub_prints_what_mosquitto_pub_sends("311", "mqttv311");
}

#[test]
fn sub_prints_topic_and_payload_lines_from_mosquitto_pub_over_5_0() {
    sub_prints_what_mosquitto_pub_sends("5", "mqttv5");
}

fn pub_reaches_mosquitto_sub(version: &str, mosquitto_version: &str) {
    if !support::require_peers(&["mosquitto", "mosquitto_sub"]) {
        return;
    }
    let broker = Mosquitto::start();
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port(&broker),
            "-V",
            mosquitto_version,
        ])
        .args([
            "-t", "b/#", "-v", "-C", "3", "-q", "2", "-i", "mosq-sub", "-W", "15",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    broker.wait_for_suback("mosq-sub");
    for qos in ["0", "1", "2"] {
        let out = fieldgate()
            .args(["pub", "-p", &port(&broker), "-V", version, "-q", qos])
            .args([
                "-t",
                &format!("b/q{qos}"),
                "-m",
                &format!("from fieldgate {qos}"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = support::wait_child_output(sub, DEADLINE);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "b/q0 from fieldgate 0\nb/q1 from fieldgate 1\nb/q2 from fieldgate 2\n"
    );
}

#[test]
fn pub_messages_reach_mosquitto_sub_over_3_1_1() {
    pub_reaches_mosquitto_sub("311", "mqttv311");
}

#[test]
fn pub_messages_reach_mosquitto_sub_over_5_0() {
    pub_reaches_mosquitto_sub("5", "mqttv5");
}

#[test]
fn pub_sends_one_message_per_stdin_line_with_l() {
    if !support::require_peers(&["mosquitto", "mosquitto_sub"]) {
        return;
    }
    let broker = Mosquitto::start();
    let sub = start_sub(&broker, "fg-lines", &["-t", "lines", "-C", "3", "-q", "1"]);
    let mut publisher = fieldgate()
        .args(["pub", "-p", &port(&broker), "-q", "1", "-t", "lines", "-l"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    publisher
        .stdin
        .take()
        .unwrap()
        .write_all(b"one\ntwo\nthree\n")
        .unwrap();
    let status = support::wait_child(&mut publisher, DEADLINE).expect("pub exits");
    assert!(status.success());
    let out = support::wait_child_output(sub, DEADLINE);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\nthree\n");
}

#[test]
fn sub_exits_with_27_when_w_expires() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let broker = Mosquitto::start();
    let out = fieldgate()
        .args(["sub", "-p", &port(&broker), "-t", "quiet", "-W", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(27));
}

#[test]
fn a_refused_connection_exits_with_the_brokers_code_and_says_why() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let dir = support::TempDir::new("fg-cli-passwd");
    let passwd = dir.path().join("passwd");
    std::fs::write(&passwd, "").unwrap();
    let broker = Mosquitto::start_with_config(&format!(
        "allow_anonymous false\npassword_file {}\n",
        passwd.display()
    ));
    for (version, codes) in [("311", &[4, 5][..]), ("5", &[0x86, 0x87][..])] {
        let out = fieldgate()
            .args([
                "pub",
                "-p",
                &port(&broker),
                "-V",
                version,
                "-u",
                "nobody",
                "-P",
                "x",
            ])
            .args(["-t", "t", "-m", "m"])
            .output()
            .unwrap();
        let code = out.status.code().unwrap();
        assert!(codes.contains(&code), "-V {version}: exit {code}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("connection refused"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn an_unreachable_broker_exits_69_with_one_line() {
    let port = support::free_port().to_string();
    let out = fieldgate()
        .args(["pub", "-p", &port, "-t", "t", "-m", "m"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn bad_arguments_exit_1_with_one_line_naming_the_flag() {
    let out = fieldgate()
        .args(["pub", "-t", "t", "-m", "m", "-q", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("-q"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
