//! Our broker's TLS listeners and its persistence, with mosquitto's clients on the other
//! side: server-authenticated and mutual TLS, and retained messages and persistent
//! sessions surviving a graceful restart and a `kill -9`.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use fieldgate::mqtt::broker::persist::{Fsync, PersistConfig};
use fieldgate::mqtt::broker::tls::TlsListenerConfig;
use fieldgate::mqtt::broker::{Broker, BrokerConfig, BrokerError, ListenerConfig, Transport};

use crate::support::broker::TestBroker;
use crate::support::tls::TestPki;
use crate::support::{
    KillOnDrop, TempDir, require_peer, run_program, wait_child_output, wait_until,
};

const TIMEOUT: Duration = Duration::from_secs(20);

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn tls_broker(pki: &TestPki, require_client_cert: bool) -> TestBroker {
    let tls = TlsListenerConfig {
        cert_file: pki.server_cert.clone(),
        key_file: pki.server_key.clone(),
        client_ca_file: Some(pki.ca_cert.clone()),
        require_client_cert,
    };
    TestBroker::start_with(BrokerConfig {
        listeners: vec![ListenerConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            transport: Transport::Tls(tls),
        }],
        ..BrokerConfig::default()
    })
}

/// A running `mosquitto_sub`.
struct Subscriber(Child);

/// Starts `mosquitto_sub` and returns once our broker holds one more subscription, so
/// that messages published afterwards are sure to reach it. (Its `-d` log cannot tell:
/// piped stdout is block-buffered until it exits.)
fn subscriber(broker: &TestBroker, args: &[&str]) -> Subscriber {
    let before = subscriptions(broker);
    let child = Command::new("mosquitto_sub")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub starts");
    wait_until(TIMEOUT, "mosquitto_sub's subscription", || {
        subscriptions(broker) > before
    });
    Subscriber(child)
}

fn subscriptions(broker: &TestBroker) -> usize {
    broker
        .broker()
        .stats()
        .subscriptions
        .load(std::sync::atomic::Ordering::Relaxed)
}

impl Subscriber {
    /// Waits for it to end (its `-C` count reached) and returns its output lines.
    fn messages(self) -> Vec<String> {
        let out = wait_child_output(self.0, TIMEOUT);
        assert!(out.status.success(), "mosquitto_sub failed: {out:?}");
        stdout(&out).lines().map(String::from).collect()
    }
}

#[test]
fn mosquitto_clients_talk_to_our_broker_over_tls() {
    if !require_peer("mosquitto_sub") {
        return;
    }
    let pki = TestPki::generate();
    let broker = tls_broker(&pki, false);
    let port = broker.port().to_string();
    let ca = pki.ca_cert.display().to_string();
    let sub = subscriber(
        &broker,
        &[
            "-h",
            "localhost",
            "-p",
            &port,
            "--cafile",
            &ca,
            "-t",
            "tls/#",
            "-v",
            "-C",
            "1",
        ],
    );
    let publish = run_program(
        "mosquitto_pub",
        &[
            "-h",
            "localhost",
            "-p",
            &port,
            "--cafile",
            &ca,
            "-t",
            "tls/a",
            "-m",
            "secret",
            "-q",
            "1",
        ],
    );
    assert!(publish.status.success(), "{publish:?}");
    assert_eq!(sub.messages(), vec!["tls/a secret".to_string()]);
}

#[test]
fn a_listener_that_requires_client_certificates_refuses_clients_without_one() {
    if !require_peer("mosquitto_pub") {
        return;
    }
    let pki = TestPki::generate();
    let broker = tls_broker(&pki, true);
    let port = broker.port().to_string();
    let ca = pki.ca_cert.display().to_string();
    let base = [
        "-h",
        "localhost",
        "-p",
        &port,
        "--cafile",
        &ca,
        "-t",
        "m/a",
        "-m",
        "x",
    ];
    let without = run_program("mosquitto_pub", &base);
    assert!(!without.status.success(), "accepted without a certificate");
    let cert = pki.client_cert.display().to_string();
    let key = pki.client_key.display().to_string();
    let mut with = base.to_vec();
    with.extend(["--cert", &cert, "--key", &key]);
    let with = run_program("mosquitto_pub", &with);
    assert!(
        with.status.success(),
        "refused with a certificate: {}",
        String::from_utf8_lossy(&with.stderr)
    );
}

#[test]
fn a_tls_listener_with_a_missing_key_file_fails_to_start_naming_the_file() {
    let pki = TestPki::generate();
    let missing = pki.dir.path().join("nope.key");
    let config = BrokerConfig {
        listeners: vec![ListenerConfig {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            transport: Transport::Tls(TlsListenerConfig {
                cert_file: pki.server_cert.clone(),
                key_file: missing.clone(),
                client_ca_file: None,
                require_client_cert: false,
            }),
        }],
        ..BrokerConfig::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let error = runtime.block_on(Broker::start(config)).unwrap_err();
    assert!(matches!(error, BrokerError::Tls { .. }), "{error:?}");
    assert!(error.to_string().contains("nope.key"), "{error}");
}

fn persistent_broker(dir: &TempDir) -> TestBroker {
    TestBroker::start_with(BrokerConfig {
        persistence: Some(PersistConfig {
            fsync: Fsync::Always,
            ..PersistConfig::new(dir.path())
        }),
        ..BrokerConfig::default()
    })
}

/// A persistent broker in a fresh state directory where `keeper` has a persistent
/// subscription and two QoS 1 messages and a retained one were published while it was
/// away.
fn broker_with_queued_messages(name: &str) -> (TempDir, TestBroker, String) {
    let dir = TempDir::new(name);
    let broker = persistent_broker(&dir);
    let port = broker.port().to_string();
    leave_persistent_subscription(&port);
    publish_while_away(&port);
    (dir, broker, port)
}

/// Subscribes `keeper` with a persistent session and leaves (`-E`: exit after SUBACK).
fn leave_persistent_subscription(port: &str) {
    let sub = run_program(
        "mosquitto_sub",
        &[
            "-p", port, "-c", "-i", "keeper", "-q", "1", "-t", "p/#", "-E",
        ],
    );
    assert!(sub.status.success(), "{sub:?}");
}

fn publish_while_away(port: &str) {
    for (topic, message) in [("p/1", "one"), ("p/2", "two")] {
        let out = run_program(
            "mosquitto_pub",
            &["-p", port, "-q", "1", "-t", topic, "-m", message],
        );
        assert!(out.status.success(), "{out:?}");
    }
    let out = run_program(
        "mosquitto_pub",
        &[
            "-p",
            port,
            "-r",
            "-q",
            "1",
            "-t",
            "r/kept",
            "-m",
            "still here",
        ],
    );
    assert!(out.status.success(), "{out:?}");
}

fn collect_after_restart(port: &str) {
    let queued = run_program(
        "mosquitto_sub",
        &[
            "-p", port, "-c", "-i", "keeper", "-q", "1", "-t", "p/#", "-v", "-C", "2", "-W", "10",
        ],
    );
    assert_eq!(stdout(&queued), "p/1 one\np/2 two\n", "{queued:?}");
    let retained = run_program(
        "mosquitto_sub",
        &["-p", port, "-t", "r/#", "-v", "-C", "1", "-W", "10"],
    );
    assert_eq!(stdout(&retained), "r/kept still here\n", "{retained:?}");
}

#[test]
fn retained_messages_and_queued_messages_survive_a_broker_restart() {
    if !require_peer("mosquitto_sub") {
        return;
    }
    let (dir, broker, _port) = broker_with_queued_messages("broker-state");
    broker.shutdown();
    let broker = persistent_broker(&dir);
    collect_after_restart(&broker.port().to_string());
}

/// `fieldgate broker -p 0 -v --state-dir DIR`: returns the process and its port.
fn broker_process(dir: &TempDir) -> (KillOnDrop, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args([
            "broker",
            "-p",
            "0",
            "-v",
            "--fsync",
            "interval",
            "--state-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fieldgate broker starts");
    // Owned by the guard at once: a failed read below must not leave it running.
    let mut child = KillOnDrop(child);
    let stderr = child.0.stderr.take().expect("piped");
    let mut lines = BufReader::new(stderr).lines();
    let line = lines
        .next()
        .expect("a line on stderr")
        .expect("readable stderr");
    let port = line
        .rsplit(':')
        .next()
        .expect("listening on ADDR:PORT")
        .trim()
        .to_string();
    assert!(
        port.parse::<u16>().is_ok(),
        "unexpected first line {line:?}"
    );
    (child, port)
}

#[test]
fn what_was_acknowledged_before_a_kill_9_reaches_the_persistent_subscriber() {
    if !require_peer("mosquitto_sub") {
        return;
    }
    let dir = TempDir::new("broker-kill");
    let (mut broker, port) = broker_process(&dir);
    leave_persistent_subscription(&port);
    publish_while_away(&port);
    // SIGKILL: no shutdown code runs. The default fsync policy (interval) still has every
    // acknowledged message written to the journal before PUBACK.
    broker.0.kill().expect("kill -9");
    broker.0.wait().expect("reaped");
    let (_broker, port) = broker_process(&dir);
    collect_after_restart(&port);
}

#[test]
fn a_clean_start_discards_the_persisted_session() {
    if !require_peer("mosquitto_sub") {
        return;
    }
    let (dir, broker, port) = broker_with_queued_messages("broker-clean");
    // A clean session ends the stored one: nothing queued, and no subscription left.
    let clean = run_program(
        "mosquitto_sub",
        &[
            "-p", &port, "-i", "keeper", "-q", "1", "-t", "other", "-v", "-W", "1",
        ],
    );
    assert_eq!(stdout(&clean), "", "{clean:?}");
    broker.shutdown();
    let broker = persistent_broker(&dir);
    let port = broker.port().to_string();
    let resumed = run_program(
        "mosquitto_sub",
        &[
            "-p", &port, "-c", "-i", "keeper", "-q", "1", "-t", "nothing", "-v", "-W", "1",
        ],
    );
    assert_eq!(
        stdout(&resumed),
        "",
        "queued messages came back: {resumed:?}"
    );
}
