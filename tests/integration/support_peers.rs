//! The TLS and fault-injection helpers work against real peers: mosquitto's TLS listener
//! built from `support::tls::TestPki` serves mosquitto's own clients (and refuses the
//! wrong CA or a missing client certificate), and `support::proxy::Proxy` forwards, cuts,
//! stalls and refuses MQTT connections to a real mosquitto.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::proxy::Proxy;
use crate::support::tls::TestPki;
use crate::support::{self, Mosquitto};

/// Limit for one mosquitto_pub / mosquitto_sub run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Limit for an expected packet or close to arrive.
const ARRIVAL: Duration = Duration::from_secs(5);
/// MQTT 3.1.1 PINGREQ and PINGRESP.
const PINGREQ: [u8; 2] = [0xC0, 0x00];
const PINGRESP: [u8; 2] = [0xD0, 0x00];
/// CONNACK, session not present, accepted.
const CONNACK_ACCEPTED: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

/// Runs a mosquitto client program (`mosquitto_pub`/`mosquitto_sub`) to completion.
fn run_client(program: &str, args: &[&str]) -> Output {
    let bin = support::find_program(program).unwrap_or_else(|| panic!("{program} not found"));
    let mut command = Command::new(bin);
    command.args(args);
    support::run_with_timeout(command, CLIENT_TIMEOUT)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

fn describe(out: &Output, broker: &Mosquitto) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- mosquitto log ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        broker.log()
    )
}

/// Publishes a retained `payload` on `topic` with QoS 1, so a later subscriber gets it.
fn publish_retained(host: &str, port: u16, topic: &str, payload: &str, extra: &[&str]) -> Output {
    let port = port.to_string();
    let mut args = vec!["-h", host, "-p", &port, "-t", topic, "-m", payload];
    args.extend(["-r", "-q", "1"]);
    args.extend(extra);
    run_client("mosquitto_pub", &args)
}

/// Subscribes to `topic` and returns after the first message (or after 10 s without one).
fn receive_one(host: &str, port: u16, topic: &str, extra: &[&str]) -> Output {
    let port = port.to_string();
    let mut args = vec!["-h", host, "-p", &port, "-t", topic, "-C", "1", "-W", "10"];
    args.extend(extra);
    run_client("mosquitto_sub", &args)
}

/// A minimal MQTT 3.1.1 CONNECT: clean session, keep-alive 60 s, a one-byte client id.
fn connect_packet(client_id: u8) -> [u8; 15] {
    [
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x01,
        client_id,
    ]
}

/// Reads exactly `n` bytes, failing if they do not all arrive within `within`.
fn read_exactly(stream: &mut TcpStream, n: usize, within: Duration) -> std::io::Result<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut buf = vec![0; n];
    let mut filled = 0;
    while filled < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(k) => filled += k,
            // A read timeout is WouldBlock on Linux; the deadline check above decides.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(buf)
}

/// True when the peer closes `stream` (end of stream or a reset) within `within`; bytes
/// that arrive first are returned in `Err` so the caller can report them.
fn closed_within(stream: &mut TcpStream, within: Duration) -> Result<bool, Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut buf = [0_u8; 64];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => return Err(buf[..n].to_vec()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Ok(true),
        }
    }
}

/// Opens a TCP connection to `addr`, sends CONNECT and checks the broker accepts it.
fn mqtt_connect(addr: SocketAddr, client_id: u8) -> TcpStream {
    let mut stream = TcpStream::connect_timeout(&addr, ARRIVAL).expect("connect to the proxy");
    stream.set_nodelay(true).unwrap();
    stream.write_all(&connect_packet(client_id)).unwrap();
    let connack = read_exactly(&mut stream, 4, ARRIVAL).expect("CONNACK through the proxy");
    assert_eq!(connack, CONNACK_ACCEPTED, "unexpected CONNACK");
    stream
}

#[test]
fn mosquitto_clients_publish_and_subscribe_over_tls_when_they_trust_the_test_ca() {
    if !support::require_peers(&["mosquitto", "mosquitto_pub", "mosquitto_sub"]) {
        return;
    }
    let pki = TestPki::generate();
    let broker = Mosquitto::start_tls(&pki, false);
    let tls_port = broker.tls_port().expect("a TLS listener");
    let ca = ["--cafile", path(&pki.ca_cert)];

    // The publisher names the IP SAN, the subscriber the DNS SAN: both must verify.
    let published = publish_retained("127.0.0.1", tls_port, "tls/ok", "over tls", &ca);
    assert!(
        published.status.success(),
        "{}",
        describe(&published, &broker)
    );
    let received = receive_one("localhost", tls_port, "tls/ok", &ca);
    assert!(
        received.status.success(),
        "{}",
        describe(&received, &broker)
    );
    assert_eq!(String::from_utf8_lossy(&received.stdout).trim(), "over tls");
}

#[test]
fn mosquitto_pub_is_refused_over_tls_when_it_trusts_only_an_unrelated_ca() {
    if !support::require_peers(&["mosquitto", "mosquitto_pub", "mosquitto_sub"]) {
        return;
    }
    let pki = TestPki::generate();
    let broker = Mosquitto::start_tls(&pki, false);
    let tls_port = broker.tls_port().expect("a TLS listener");

    let wrong = ["--cafile", path(&pki.other_ca_cert)];
    let refused = publish_retained("127.0.0.1", tls_port, "tls/wrong", "leaked", &wrong);
    assert!(!refused.status.success(), "{}", describe(&refused, &broker));
    // The refusal is the certificate check, not some other failure (OpenSSL's wording).
    support::wait_until(
        ARRIVAL,
        "mosquitto to log the client's unknown-CA alert",
        || broker.log().contains("unknown ca"),
    );

    // Nothing got through. One SUBSCRIBE with both filters gets the retained messages in
    // filter order, so a leaked "tls/wrong" would arrive before the control message.
    let control = publish_retained("127.0.0.1", broker.port(), "tls/control", "control", &[]);
    assert!(control.status.success(), "{}", describe(&control, &broker));
    let port = broker.port().to_string();
    let args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        "tls/wrong",
        "-t",
        "tls/control",
    ];
    let args = [&args[..], &["-C", "1", "-W", "10"]].concat();
    let seen = run_client("mosquitto_sub", &args);
    assert!(seen.status.success(), "{}", describe(&seen, &broker));
    assert_eq!(String::from_utf8_lossy(&seen.stdout).trim(), "control");
}

#[test]
fn a_tls_listener_that_requires_client_certificates_accepts_the_test_client_and_refuses_others() {
    if !support::require_peers(&["mosquitto", "mosquitto_pub", "mosquitto_sub"]) {
        return;
    }
    let pki = TestPki::generate();
    let broker = Mosquitto::start_tls(&pki, true);
    let tls_port = broker.tls_port().expect("a TLS listener");
    let ca = ["--cafile", path(&pki.ca_cert)];
    let with_cert = [
        ca[0],
        ca[1],
        "--cert",
        path(&pki.client_cert),
        "--key",
        path(&pki.client_key),
    ];

    let anonymous = publish_retained("localhost", tls_port, "mtls/t", "no cert", &ca);
    assert!(
        !anonymous.status.success(),
        "{}",
        describe(&anonymous, &broker)
    );
    support::wait_until(
        ARRIVAL,
        "mosquitto to log the missing client certificate",
        || broker.log().contains("peer did not return a certificate"),
    );

    let published = publish_retained("localhost", tls_port, "mtls/t", "with cert", &with_cert);
    assert!(
        published.status.success(),
        "{}",
        describe(&published, &broker)
    );
    let received = receive_one("127.0.0.1", tls_port, "mtls/t", &with_cert);
    assert!(
        received.status.success(),
        "{}",
        describe(&received, &broker)
    );
    assert_eq!(
        String::from_utf8_lossy(&received.stdout).trim(),
        "with cert"
    );
}

#[test]
fn mosquitto_sub_receives_a_retained_message_through_the_proxy() {
    if !support::require_peers(&["mosquitto", "mosquitto_pub", "mosquitto_sub"]) {
        return;
    }
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.addr());

    let published = publish_retained("127.0.0.1", proxy.port(), "proxy/t", "proxied", &[]);
    assert!(
        published.status.success(),
        "{}",
        describe(&published, &broker)
    );
    let received = receive_one("127.0.0.1", proxy.port(), "proxy/t", &[]);
    assert!(
        received.status.success(),
        "{}",
        describe(&received, &broker)
    );
    assert_eq!(String::from_utf8_lossy(&received.stdout).trim(), "proxied");
    assert_eq!(proxy.connections_accepted(), 2);
}

#[test]
fn cutting_the_proxy_closes_an_open_mqtt_connection_and_new_ones_still_get_through() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.addr());
    let mut stream = mqtt_connect(proxy.addr(), b'a');

    proxy.cut();
    assert_eq!(
        closed_within(&mut stream, ARRIVAL),
        Ok(true),
        "the cut connection stayed open"
    );

    let mut again = mqtt_connect(proxy.addr(), b'b');
    again.write_all(&PINGREQ).unwrap();
    assert_eq!(read_exactly(&mut again, 2, ARRIVAL).unwrap(), PINGRESP);
    assert_eq!(proxy.connections_accepted(), 2);
}

#[test]
fn a_stalled_proxy_delivers_no_pingresp_within_half_a_second_and_delivers_it_after_restore() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.addr());
    let mut stream = mqtt_connect(proxy.addr(), b's');

    proxy.stall();
    stream.write_all(&PINGREQ).unwrap();
    // The assertion is that nothing arrives, so this wait is the test's bounded window.
    let during = read_exactly(&mut stream, 2, Duration::from_millis(500));
    assert!(
        during
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::TimedOut),
        "expected silence while stalled, got {during:?}"
    );

    proxy.restore();
    assert_eq!(read_exactly(&mut stream, 2, ARRIVAL).unwrap(), PINGRESP);
    // The link is healthy again: another ping round-trips too.
    stream.write_all(&PINGREQ).unwrap();
    assert_eq!(read_exactly(&mut stream, 2, ARRIVAL).unwrap(), PINGRESP);
}

#[test]
fn a_refusing_proxy_closes_new_connections_at_once_until_restored() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.addr());
    let mut existing = mqtt_connect(proxy.addr(), b'e');

    proxy.refuse();
    let mut refused = TcpStream::connect_timeout(&proxy.addr(), ARRIVAL).unwrap();
    // The CONNECT may already hit a closed socket; either way no CONNACK may come back.
    let _ = refused.write_all(&connect_packet(b'r'));
    assert_eq!(
        closed_within(&mut refused, ARRIVAL),
        Ok(true),
        "a refused connection was not closed"
    );
    // Connections from before refuse() keep working.
    existing.write_all(&PINGREQ).unwrap();
    assert_eq!(read_exactly(&mut existing, 2, ARRIVAL).unwrap(), PINGRESP);

    proxy.restore();
    let mut after = mqtt_connect(proxy.addr(), b'n');
    after.write_all(&PINGREQ).unwrap();
    assert_eq!(read_exactly(&mut after, 2, ARRIVAL).unwrap(), PINGRESP);
    assert_eq!(proxy.connections_accepted(), 3);
}
