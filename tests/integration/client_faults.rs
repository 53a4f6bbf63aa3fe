//! Our client driver (`mqtt::client`) against real peers where state or faults matter:
//! retained messages, wills, mutual TLS, refused credentials, session resumption,
//! resends after a cut link, keep-alive on a stalled link, unreachable brokers, and
//! paho-mqtt on the other side. Faults come from `support::proxy::Proxy` between our
//! client and mosquitto.

use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use fieldgate::mqtt::client::{
    self, Backoff, ClientEvent, ClientOptions, Delivery, Events, Handle, TlsOptions,
};
use fieldgate::mqtt::packet::{
    ProtocolVersion, Publish, QoS, ReasonCode, Subscription, SubscriptionOptions, UserProperty,
    Will, WillProperties,
};
use fieldgate::mqtt::session::client::DisconnectCause;
use fieldgate::mqtt::string::MqttString;
use fieldgate::mqtt::topic::{TopicFilter, TopicName};
use tokio::time::Instant;

use crate::client_mosquitto::{message, next, options};
use crate::support::proxy::Proxy;
use crate::support::tls::TestPki;
use crate::support::{self, Mosquitto, TempDir};

/// Upper bound for anything that should happen promptly.
const DEADLINE: Duration = Duration::from_secs(10);

/// How long "nothing arrives" is watched for where that is the assertion.
const QUIET: Duration = Duration::from_millis(300);

/// Fast reconnects, so that the fault tests stay short.
const FAST_BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(50),
    max: Duration::from_millis(200),
};

/// Two `#[tokio::test]`s running `$body(protocol)`, one per protocol version.
macro_rules! in_both_versions {
    ($body:ident => $v311:ident, $v5:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $v311() {
            $body(ProtocolVersion::V311).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $v5() {
            $body(ProtocolVersion::V5).await;
        }
    };
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn version_flag(protocol: ProtocolVersion) -> &'static str {
    match protocol {
        ProtocolVersion::V311 => "mqttv311",
        ProtocolVersion::V5 => "mqttv5",
    }
}

/// Options for a client whose session the broker keeps across connections: clean start
/// off, and (5.0) a session expiry of 300 s.
fn persistent(port: u16, protocol: ProtocolVersion, id: &str) -> ClientOptions {
    let mut options = options(port, protocol, id);
    options.session.clean_start = false;
    options.session.session_expiry_interval = 300;
    options
}

fn subscription(filter: &str, qos: QoS) -> Vec<Subscription> {
    vec![Subscription {
        filter: TopicFilter::try_from(filter).unwrap(),
        options: SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        },
    }]
}

/// Spawns a client and returns once it reports `Connected`, with its `session_present`.
async fn spawn_connected(options: ClientOptions) -> (Handle, Events, bool) {
    let (handle, mut events) = client::spawn(options).unwrap();
    match next(&mut events).await {
        ClientEvent::Connected { session_present } => (handle, events, session_present),
        other => panic!("expected Connected, got {other:?}"),
    }
}

/// A client of ours connected straight to the broker and subscribed to `filter` at QoS 2.
/// Keep the handle alive: dropping the last one stops the client.
async fn watcher(broker: &Mosquitto, protocol: ProtocolVersion, id: &str, filter: &str) -> Watcher {
    let (handle, events, _) = spawn_connected(options(broker.port(), protocol, id)).await;
    let granted = handle
        .subscribe(subscription(filter, QoS::ExactlyOnce))
        .await
        .unwrap();
    assert_eq!(granted, vec![ReasonCode::GRANTED_QOS_2]);
    Watcher {
        _handle: handle,
        events,
    }
}

struct Watcher {
    _handle: Handle,
    events: Events,
}

/// The next event, which must be a message.
async fn next_message(events: &mut Events) -> Publish {
    match next(events).await {
        ClientEvent::Message(publish) => publish,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Asserts that no event at all arrives within `within` (the assertion of the caller).
async fn assert_no_event_within(events: &mut Events, within: Duration, what: &str) {
    if let Ok(event) = tokio::time::timeout(within, events.recv()).await {
        panic!("{what}: expected nothing within {within:?}, got {event:?}");
    }
}

/// Every event until the client stops (its event stream ends), failing after `DEADLINE`.
async fn events_until_stopped(events: &mut Events) -> Vec<ClientEvent> {
    let mut seen = Vec::new();
    let end = Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(end, events.recv()).await {
            Ok(Some(event)) => seen.push(event),
            Ok(None) => return seen,
            Err(_) => panic!("the client did not stop within {DEADLINE:?}; events: {seen:?}"),
        }
    }
}

/// Skips failed attempts (`Unreachable`, `Disconnected`, `Refused`) until `Connected`.
async fn until_connected(events: &mut Events) -> (bool, Vec<ClientEvent>) {
    let mut failures = Vec::new();
    loop {
        match next(events).await {
            ClientEvent::Connected { session_present } => return (session_present, failures),
            failure @ (ClientEvent::Unreachable(_)
            | ClientEvent::Disconnected(_)
            | ClientEvent::Refused(_)) => failures.push(failure),
            other => panic!("expected a connection attempt's outcome, got {other:?}"),
        }
    }
}

async fn delivered(delivery: Delivery) {
    tokio::time::timeout(DEADLINE, delivery.delivered())
        .await
        .expect("the delivery resolves within the deadline")
        .expect("the broker acknowledged the message");
}

/// Publishes a QoS 1/2 message and waits for the broker's acknowledgement.
async fn publish_acknowledged(handle: &Handle, message: Publish) {
    let delivery = handle.publish(message).await.unwrap();
    delivered(delivery).await;
}

/// Runs a command off the runtime's worker threads and returns its output.
async fn run(command: Command) -> Output {
    tokio::task::spawn_blocking(move || support::run_with_timeout(command, support::PEER_TIMEOUT))
        .await
        .unwrap()
}

/// `mosquitto_pub` one message to `topic` at `qos`, with `extra` flags; asserts success.
async fn mosquitto_pub(
    broker: &Mosquitto,
    protocol: ProtocolVersion,
    topic: &str,
    payload: &str,
    qos: u8,
    extra: &[&str],
) {
    let mut command = Command::new("mosquitto_pub");
    command
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(["-V", version_flag(protocol), "-t", topic, "-m", payload])
        .args(["-q", &qos.to_string()])
        .args(extra);
    let out = run(command).await;
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}\n--- mosquitto log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        broker.log()
    );
}

/// Waits until mosquitto's log contains `line`; fails after `DEADLINE`.
async fn wait_for_log(broker: &Mosquitto, line: &str) {
    let what = format!("`{line}` in mosquitto's log");
    support::wait_until_async(DEADLINE, &what, || async { broker.log().contains(line) }).await;
}

fn will(topic: &str, payload: &'static [u8]) -> Will {
    Will {
        topic: TopicName::try_from(topic).unwrap(),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    }
}

// ---------------------------------------------------------------------------------------
// 1. Retained messages
// ---------------------------------------------------------------------------------------

async fn our_retained_publish_reaches_a_later_mosquitto_sub_flagged_retained(
    protocol: ProtocolVersion,
) {
    if !support::require_peers(&["mosquitto", "mosquitto_sub"]) {
        return;
    }
    let broker = Mosquitto::start();
    let (handle, _events, _) =
        spawn_connected(options(broker.port(), protocol, "fg-retain-out")).await;
    let mut kept = message("fg/retain/out", QoS::AtLeastOnce, b"kept");
    kept.retain = true;
    publish_acknowledged(&handle, kept).await;
    handle.disconnect().await;

    // Subscribes only now: it can get the message only from the broker's retained store.
    let mut sub = Command::new("mosquitto_sub");
    sub.args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args([
            "-V",
            version_flag(protocol),
            "-t",
            "fg/retain/out",
            "-q",
            "1",
        ])
        .args(["-C", "1", "-W", "5", "-F", "%r %q %t %p"]);
    let out = run(sub).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1 1 fg/retain/out kept",
        "retain flag, QoS, topic, payload as mosquitto_sub saw them; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

in_both_versions!(our_retained_publish_reaches_a_later_mosquitto_sub_flagged_retained =>
    our_3_1_1_retained_publish_reaches_a_later_mosquitto_sub_flagged_retained,
    our_5_0_retained_publish_reaches_a_later_mosquitto_sub_flagged_retained);

async fn a_message_retained_by_mosquitto_pub_reaches_our_later_subscription_flagged_retained(
    protocol: ProtocolVersion,
) {
    if !support::require_peers(&["mosquitto", "mosquitto_pub"]) {
        return;
    }
    let broker = Mosquitto::start();
    mosquitto_pub(&broker, protocol, "fg/retain/in", "stored", 1, &["-r"]).await;
    let (handle, mut events, _) =
        spawn_connected(options(broker.port(), protocol, "fg-retain-in")).await;
    let granted = handle
        .subscribe(subscription("fg/retain/#", QoS::AtLeastOnce))
        .await
        .unwrap();
    assert_eq!(granted, vec![ReasonCode::GRANTED_QOS_1]);
    let stored = next_message(&mut events).await;
    assert_eq!(stored.topic.as_str(), "fg/retain/in");
    assert_eq!(&stored.payload[..], b"stored");
    assert!(
        stored.retain,
        "a retained message must arrive flagged: {stored:?}"
    );

    // A message published while we are subscribed is live, not retained: the flag means
    // something.
    mosquitto_pub(&broker, protocol, "fg/retain/live", "live", 1, &[]).await;
    let live = next_message(&mut events).await;
    assert_eq!(live.topic.as_str(), "fg/retain/live");
    assert!(!live.retain, "a live message must not be flagged: {live:?}");
    handle.disconnect().await;
}

in_both_versions!(a_message_retained_by_mosquitto_pub_reaches_our_later_subscription_flagged_retained =>
    a_message_retained_by_mosquitto_pub_reaches_our_later_3_1_1_subscription_flagged_retained,
    a_message_retained_by_mosquitto_pub_reaches_our_later_5_0_subscription_flagged_retained);

// ---------------------------------------------------------------------------------------
// 2. Will
// ---------------------------------------------------------------------------------------

/// Our client with a will on `fg/will/<id>`, connected through `proxy`.
async fn will_client(proxy: &Proxy, protocol: ProtocolVersion, id: &str) -> (Handle, Events) {
    let mut options = options(proxy.port(), protocol, id);
    options.session.will = Some(will(&format!("fg/will/{id}"), b"gateway lost"));
    let (handle, events, _) = spawn_connected(options).await;
    (handle, events)
}

async fn cutting_our_link_makes_mosquitto_publish_our_will(protocol: ProtocolVersion) {
    if !support::require_peer("mosquitto") {
        return;
    }
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.addr());
    let mut watch = watcher(&broker, protocol, "fg-will-watch", "fg/will/#").await;
    let (_handle, mut events) = will_client(&proxy, protocol, "fg-will-cut").await;

    proxy.cut();
    let will = next_message(&mut watch.events).await;
    assert_eq!(will.topic.as_str(), "fg/will/fg-will-cut");
    assert_eq!(&will.payload[..], b"gateway lost");
    assert_eq!(will.qos, QoS::AtLeastOnce);
    // Our side saw the link go, and without reconnecting it stops.
    assert_eq!(
        events_until_stopped(&mut events).await,
        vec![ClientEvent::Disconnected(DisconnectCause::ConnectionLost)]
    );
}

in_both_versions!(cutting_our_link_makes_mosquitto_publish_our_will =>
    cutting_our_3_1_1_link_makes_mosquitto_publish_our_will,
    cutting_our_5_0_link_makes_mosquitto_publish_our_will);

async fn a_graceful_disconnect_does_not_make_mosquitto_publish_our_will(protocol: ProtocolVersion) {
    if !support::require_peers(&["mosquitto", "mosquitto_pub"]) {
        return;
    }
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.addr());
    let mut watch = watcher(&broker, protocol, "fg-will-watch", "fg/will/#").await;
    let (handle, mut events) = will_client(&proxy, protocol, "fg-will-bye").await;

    handle.disconnect().await;
    assert_eq!(
        events_until_stopped(&mut events).await,
        vec![ClientEvent::Disconnected(DisconnectCause::Requested)]
    );
    wait_for_log(&broker, "Received DISCONNECT from fg-will-bye").await;
    // mosquitto drops or publishes a will while it handles the end of the connection,
    // which it has done now; watch a little longer anyway.
    assert_no_event_within(
        &mut watch.events,
        QUIET,
        "the watcher after a graceful disconnect",
    )
    .await;
    // The watcher still works: the first thing it gets is a message sent after the
    // disconnect, so no will was queued before it.
    mosquitto_pub(&broker, protocol, "fg/will/marker", "after", 1, &[]).await;
    let first = next_message(&mut watch.events).await;
    assert_eq!(first.topic.as_str(), "fg/will/marker", "got {first:?}");
}

in_both_versions!(a_graceful_disconnect_does_not_make_mosquitto_publish_our_will =>
    a_graceful_3_1_1_disconnect_does_not_make_mosquitto_publish_our_will,
    a_graceful_5_0_disconnect_does_not_make_mosquitto_publish_our_will);

// ---------------------------------------------------------------------------------------
// 3. Mutual TLS
// ---------------------------------------------------------------------------------------

fn tls_options(
    broker: &Mosquitto,
    host: &str,
    protocol: ProtocolVersion,
    id: &str,
    tls: TlsOptions,
) -> ClientOptions {
    let mut options = options(broker.tls_port().expect("a TLS listener"), protocol, id);
    options.host = host.to_owned();
    options.tls = Some(tls);
    options
}

fn trusting(ca: &std::path::Path) -> TlsOptions {
    TlsOptions {
        ca_file: Some(ca.to_path_buf()),
        ..TlsOptions::default()
    }
}

fn with_client_cert(pki: &TestPki) -> TlsOptions {
    TlsOptions {
        client_cert: Some((pki.client_cert.clone(), pki.client_key.clone())),
        ..trusting(&pki.ca_cert)
    }
}

/// Asserts that the client never connects: at least one failed attempt, then it stops.
async fn assert_never_connects(options: ClientOptions, broker: &Mosquitto) -> Vec<ClientEvent> {
    let (_handle, mut events) = client::spawn(options).unwrap();
    let seen = events_until_stopped(&mut events).await;
    assert!(
        !seen.is_empty()
            && seen.iter().all(|e| matches!(
                e,
                ClientEvent::Unreachable(_) | ClientEvent::Disconnected(_)
            )),
        "expected only failed attempts, got {seen:?}\n--- mosquitto log ---\n{}",
        broker.log()
    );
    seen
}

/// Relays every connection to 127.0.0.2:<port> on to `upstream`: a way to reach the
/// broker at an address its certificate does not list (it lists 127.0.0.1 and
/// `localhost`, and mosquitto listens on 127.0.0.1 only). Stops with the test's runtime.
async fn relay_from_127_0_0_2(upstream: SocketAddr) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_our_client_certificate_connects_by_name_and_round_trips_a_qos_1_message() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let pki = TestPki::generate();
    let broker = Mosquitto::start_tls(&pki, true);
    let options = tls_options(
        &broker,
        "localhost",
        ProtocolVersion::V5,
        "fg-mtls",
        with_client_cert(&pki),
    );
    let (handle, mut events, _) = spawn_connected(options).await;
    let granted = handle
        .subscribe(subscription("fg/tls/#", QoS::AtLeastOnce))
        .await
        .unwrap();
    assert_eq!(granted, vec![ReasonCode::GRANTED_QOS_1]);
    publish_acknowledged(&handle, message("fg/tls/echo", QoS::AtLeastOnce, b"sealed")).await;
    let echo = next_message(&mut events).await;
    assert_eq!(echo.topic.as_str(), "fg/tls/echo");
    assert_eq!(&echo.payload[..], b"sealed");
    assert_eq!(echo.qos, QoS::AtLeastOnce);
    handle.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_without_our_client_certificate_never_connects() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let pki = TestPki::generate();
    let broker = Mosquitto::start_tls(&pki, true);
    // TLS 1.3: the client finishes its handshake before the broker checks for a
    // certificate, so the refusal may come as a closed connection rather than a failed
    // handshake. Either way: no CONNACK.
    let options = tls_options(
        &broker,
        "localhost",
        ProtocolVersion::V311,
        "fg-no-cert",
        trusting(&pki.ca_cert),
    );
    assert_never_connects(options, &broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_a_ca_we_do_not_trust_is_refused_during_the_handshake() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let pki = TestPki::generate();
    let broker = Mosquitto::start_tls(&pki, true);
    let tls = TlsOptions {
        ca_file: Some(pki.other_ca_cert.clone()),
        ..with_client_cert(&pki)
    };
    let options = tls_options(
        &broker,
        "localhost",
        ProtocolVersion::V5,
        "fg-wrong-ca",
        tls,
    );
    let seen = assert_never_connects(options, &broker).await;
    assert!(
        matches!(&seen[..], [ClientEvent::Unreachable(reason)] if reason.contains("TLS")),
        "expected one TLS failure, got {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_reached_at_an_address_its_certificate_does_not_list_fails_the_hostname_check() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let pki = TestPki::generate();
    let broker = Mosquitto::start_tls(&pki, true);
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], broker.tls_port().unwrap()));
    let relay = relay_from_127_0_0_2(tls_addr).await;
    let mut options = tls_options(
        &broker,
        "127.0.0.2",
        ProtocolVersion::V5,
        "fg-wrong-name",
        with_client_cert(&pki),
    );
    options.port = relay;
    let seen = assert_never_connects(options, &broker).await;
    assert!(
        matches!(&seen[..], [ClientEvent::Unreachable(reason)] if reason.contains("not valid for name")),
        "expected one hostname failure, got {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_hostname_check_connects_at_an_address_the_certificate_does_not_list() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let pki = TestPki::generate();
    let broker = Mosquitto::start_tls(&pki, true);
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], broker.tls_port().unwrap()));
    let relay = relay_from_127_0_0_2(tls_addr).await;
    let tls = TlsOptions {
        skip_hostname_check: true,
        ..with_client_cert(&pki)
    };
    let mut options = tls_options(
        &broker,
        "127.0.0.2",
        ProtocolVersion::V311,
        "fg-any-name",
        tls,
    );
    options.port = relay;
    let (handle, _events, _) = spawn_connected(options).await;
    publish_acknowledged(&handle, message("fg/tls/any", QoS::AtLeastOnce, b"ok")).await;
    handle.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_hostname_check_still_refuses_a_certificate_from_a_ca_we_do_not_trust() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let pki = TestPki::generate();
    let broker = Mosquitto::start_tls(&pki, true);
    let tls = TlsOptions {
        ca_file: Some(pki.other_ca_cert.clone()),
        skip_hostname_check: true,
        ..with_client_cert(&pki)
    };
    let options = tls_options(
        &broker,
        "localhost",
        ProtocolVersion::V5,
        "fg-skip-bad-ca",
        tls,
    );
    let seen = assert_never_connects(options, &broker).await;
    assert!(
        matches!(&seen[..], [ClientEvent::Unreachable(reason)] if reason.contains("TLS")),
        "expected one TLS failure, got {seen:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 4. Credentials
// ---------------------------------------------------------------------------------------

/// A broker that admits only `fg-user` / `secret`, and the directory of its password file.
async fn password_broker() -> (Mosquitto, TempDir) {
    let dir = TempDir::new("passwd");
    let file = dir.path().join("passwd");
    let mut passwd = Command::new("mosquitto_passwd");
    passwd
        .args(["-b", "-c"])
        .arg(&file)
        .args(["fg-user", "secret"]);
    let out = run(passwd).await;
    assert!(
        out.status.success(),
        "mosquitto_passwd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let broker = Mosquitto::start_with_config(&format!(
        "allow_anonymous false\npassword_file {}",
        file.display()
    ));
    (broker, dir)
}

fn with_credentials(
    broker: &Mosquitto,
    protocol: ProtocolVersion,
    id: &str,
    password: &'static [u8],
) -> ClientOptions {
    let mut options = options(broker.port(), protocol, id);
    options.session.username = Some(MqttString::try_from("fg-user").unwrap());
    options.session.password = Some(Bytes::from_static(password));
    options
}

async fn the_right_password_is_accepted_and_a_wrong_one_refused_for_good(
    protocol: ProtocolVersion,
) {
    if !support::require_peers(&["mosquitto", "mosquitto_passwd"]) {
        return;
    }
    let (broker, _dir) = password_broker().await;
    let (handle, _events, _) =
        spawn_connected(with_credentials(&broker, protocol, "fg-right", b"secret")).await;
    handle.disconnect().await;

    let refused = [
        ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        ReasonCode::NOT_AUTHORIZED,
    ];
    let wrong = with_credentials(&broker, protocol, "fg-wrong", b"guess");
    let mut anonymous = options(broker.port(), protocol, "fg-anonymous");
    anonymous.session.username = None;
    for options in [wrong, anonymous] {
        let (_handle, mut events) = client::spawn(options).unwrap();
        // Without reconnecting, the refusal is the last word: the event stream ends.
        let seen = events_until_stopped(&mut events).await;
        assert!(
            matches!(&seen[..], [ClientEvent::Refused(code)] if refused.contains(code)),
            "expected Refused(0x86 or 0x87) and the end, got {seen:?}\n--- log ---\n{}",
            broker.log()
        );
    }
}

in_both_versions!(the_right_password_is_accepted_and_a_wrong_one_refused_for_good =>
    the_right_password_is_accepted_and_a_wrong_one_refused_for_good_over_3_1_1,
    the_right_password_is_accepted_and_a_wrong_one_refused_for_good_over_5_0);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lasting_refusal_is_retried_only_after_the_longest_backoff() {
    if !support::require_peers(&["mosquitto", "mosquitto_passwd"]) {
        return;
    }
    let (broker, _dir) = password_broker().await;
    let mut wrong = with_credentials(&broker, ProtocolVersion::V5, "fg-wrong-again", b"guess");
    let longest = Duration::from_millis(400);
    wrong.reconnect = Some(Backoff {
        initial: Duration::from_millis(5),
        max: longest,
    });
    let (handle, mut events) = client::spawn(wrong).unwrap();
    let mut refusals = Vec::new();
    while refusals.len() < 2 {
        if let ClientEvent::Refused(_) = next(&mut events).await {
            refusals.push(tokio::time::Instant::now());
        }
    }
    // A bad password will not fix itself in 5 ms: the next try waits the longest delay.
    assert!(
        refusals[1] - refusals[0] >= longest,
        "retried after {:?}",
        refusals[1] - refusals[0]
    );
    handle.disconnect().await;
}

// ---------------------------------------------------------------------------------------
// 5. Session resumption
// ---------------------------------------------------------------------------------------

async fn messages_queued_while_we_are_away_arrive_in_order_when_the_session_resumes(
    protocol: ProtocolVersion,
) {
    if !support::require_peers(&["mosquitto", "mosquitto_pub"]) {
        return;
    }
    let broker = Mosquitto::start();
    let (handle, _events, session_present) =
        spawn_connected(persistent(broker.port(), protocol, "fg-resume")).await;
    assert!(!session_present, "a fresh broker has no session for us");
    let granted = handle
        .subscribe(subscription("fg/resume/#", QoS::AtLeastOnce))
        .await
        .unwrap();
    assert_eq!(granted, vec![ReasonCode::GRANTED_QOS_1]);
    handle.disconnect().await;

    for payload in ["m1", "m2", "m3"] {
        mosquitto_pub(&broker, protocol, "fg/resume/t", payload, 1, &[]).await;
    }

    // A new client (a restarted gateway) with the same id and settings.
    let (handle, mut events, session_present) =
        spawn_connected(persistent(broker.port(), protocol, "fg-resume")).await;
    assert!(session_present, "the broker kept our session");
    for expected in ["m1", "m2", "m3"] {
        let queued = next_message(&mut events).await;
        assert_eq!(queued.topic.as_str(), "fg/resume/t");
        assert_eq!(
            std::str::from_utf8(&queued.payload).unwrap(),
            expected,
            "in the order published"
        );
        assert_eq!(queued.qos, QoS::AtLeastOnce);
    }
    handle.disconnect().await;
}

in_both_versions!(messages_queued_while_we_are_away_arrive_in_order_when_the_session_resumes =>
    messages_queued_while_we_are_away_arrive_in_order_when_the_3_1_1_session_resumes,
    messages_queued_while_we_are_away_arrive_in_order_when_the_5_0_session_resumes);

// ---------------------------------------------------------------------------------------
// 6. Resend after a cut link
// ---------------------------------------------------------------------------------------

async fn publishes_lost_with_a_cut_link_are_resent_after_the_reconnect(protocol: ProtocolVersion) {
    if !support::require_peer("mosquitto") {
        return;
    }
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.addr());
    let mut watch = watcher(&broker, protocol, "fg-resend-watch", "fg/resend/#").await;
    let mut options = persistent(proxy.port(), protocol, "fg-resend");
    options.reconnect = Some(FAST_BACKOFF);
    let (handle, mut events, _) = spawn_connected(options).await;

    proxy.stall();
    let sent = [
        ("fg/resend/q1-a", QoS::AtLeastOnce),
        ("fg/resend/q1-b", QoS::AtLeastOnce),
        ("fg/resend/q1-c", QoS::AtLeastOnce),
        ("fg/resend/q2-a", QoS::ExactlyOnce),
        ("fg/resend/q2-b", QoS::ExactlyOnce),
    ];
    let mut deliveries = Vec::new();
    for (topic, qos) in sent {
        let delivery = handle.publish(message(topic, qos, b"x")).await.unwrap();
        deliveries.push(delivery);
    }
    // The proxy holds our PUBLISH packets: nothing reaches the broker.
    assert_no_event_within(
        &mut watch.events,
        QUIET,
        "the watcher while the link is stalled",
    )
    .await;

    proxy.cut();
    proxy.restore();
    assert_eq!(
        next(&mut events).await,
        ClientEvent::Disconnected(DisconnectCause::ConnectionLost)
    );
    let (session_present, failures) = until_connected(&mut events).await;
    assert!(
        session_present,
        "the broker kept our session (failures: {failures:?})"
    );
    for delivery in deliveries {
        delivered(delivery).await;
    }

    // A last message from the same client bounds what the watcher can still get.
    publish_acknowledged(&handle, message("fg/resend/end", QoS::AtLeastOnce, b"end")).await;
    let mut received = Vec::new();
    loop {
        let publish = next_message(&mut watch.events).await;
        if publish.topic.as_str() == "fg/resend/end" {
            break;
        }
        received.push(publish.topic.as_str().to_owned());
    }
    for (topic, qos) in sent {
        let times = received.iter().filter(|t| *t == topic).count();
        match qos {
            QoS::ExactlyOnce => assert_eq!(times, 1, "{topic} exactly once: {received:?}"),
            _ => assert!(times >= 1, "{topic} at least once: {received:?}"),
        }
    }
    handle.disconnect().await;
}

in_both_versions!(publishes_lost_with_a_cut_link_are_resent_after_the_reconnect =>
    publishes_lost_with_a_cut_3_1_1_link_are_resent_after_the_reconnect,
    publishes_lost_with_a_cut_5_0_link_are_resent_after_the_reconnect);

// ---------------------------------------------------------------------------------------
// 7. Keep-alive on a stalled link
// ---------------------------------------------------------------------------------------

/// Keep-alive 1 s, response timeout 1 s, through `proxy`, no reconnect.
fn quick_keep_alive(proxy: &Proxy, protocol: ProtocolVersion, id: &str) -> ClientOptions {
    let mut options = options(proxy.port(), protocol, id);
    options.session.keep_alive = 1;
    options.session.response_timeout = Duration::from_secs(1);
    options
}

async fn keep_alive_detects_a_stalled_link(protocol: ProtocolVersion) {
    if !support::require_peer("mosquitto") {
        return;
    }
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.addr());
    let (_handle, mut events, _) =
        spawn_connected(quick_keep_alive(&proxy, protocol, "fg-stalled")).await;
    proxy.stall();
    let stalled_at = Instant::now();
    // A PINGREQ is due 1 s after our last packet and its PINGRESP 1 s later.
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("the stall is detected within 5 s");
    assert_eq!(
        event,
        Some(ClientEvent::Disconnected(DisconnectCause::KeepAliveTimeout)),
        "after {:?}",
        stalled_at.elapsed()
    );
    assert_eq!(events_until_stopped(&mut events).await, vec![]);
}

in_both_versions!(keep_alive_detects_a_stalled_link =>
    keep_alive_detects_a_stalled_3_1_1_link,
    keep_alive_detects_a_stalled_5_0_link);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_keeps_a_quiet_healthy_link_up() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.addr());
    let (handle, mut events, _) =
        spawn_connected(quick_keep_alive(&proxy, ProtocolVersion::V5, "fg-quiet")).await;
    // Over two keep-alive periods nothing but PINGREQ/PINGRESP crosses the link.
    assert_no_event_within(
        &mut events,
        Duration::from_millis(2500),
        "a quiet healthy link",
    )
    .await;
    publish_acknowledged(
        &handle,
        message("fg/quiet", QoS::AtLeastOnce, b"still here"),
    )
    .await;
    handle.disconnect().await;
}

async fn disconnecting_over_a_stalled_link_returns_without_waiting_for_the_broker(
    protocol: ProtocolVersion,
) {
    if !support::require_peer("mosquitto") {
        return;
    }
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.addr());
    let (handle, mut events, _) =
        spawn_connected(options(proxy.port(), protocol, "fg-stalled-bye")).await;
    proxy.stall();
    // The broker never sees our DISCONNECT, so it never closes the connection: the
    // client must close it itself once DISCONNECT is written.
    tokio::time::timeout(Duration::from_secs(2), handle.disconnect())
        .await
        .expect("disconnect returns within 2 s on a stalled link");
    assert_eq!(
        events_until_stopped(&mut events).await,
        vec![ClientEvent::Disconnected(DisconnectCause::Requested)]
    );
}

in_both_versions!(disconnecting_over_a_stalled_link_returns_without_waiting_for_the_broker =>
    disconnecting_over_a_stalled_3_1_1_link_returns_without_waiting_for_the_broker,
    disconnecting_over_a_stalled_5_0_link_returns_without_waiting_for_the_broker);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_detects_a_stalled_link_while_a_large_write_is_blocked_on_it() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.addr());
    let (handle, mut events, _) = spawn_connected(quick_keep_alive(
        &proxy,
        ProtocolVersion::V311,
        "fg-blocked",
    ))
    .await;
    proxy.stall();
    // More than the socket buffers on both sides of the proxy can hold (32 MiB): writing
    // them blocks until the link moves again. Published from another task, as each
    // `publish` waits for the client task, which is busy writing.
    let publisher = tokio::spawn(async move {
        let payload = Bytes::from(vec![b'x'; 1 << 20]);
        for _ in 0..32 {
            let mut big = message("fg/blocked", QoS::AtLeastOnce, b"");
            big.payload = payload.clone();
            if handle.publish(big).await.is_err() {
                break;
            }
        }
    });
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("the stall is detected within 5 s");
    assert_eq!(
        event,
        Some(ClientEvent::Disconnected(DisconnectCause::KeepAliveTimeout))
    );
    publisher.abort();
}

// ---------------------------------------------------------------------------------------
// 8. Unreachable brokers
// ---------------------------------------------------------------------------------------

/// A loopback port that refuses connections for as long as the returned socket lives: it
/// is bound, not listening, and without SO_REUSEADDR, so no parallel test (nor the
/// kernel, choosing a source port) can take it meanwhile. A port that was merely free a
/// moment ago (`support::free_port`) can be.
fn closed_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_reported_unreachable_and_the_client_stops() {
    let (_closed, port) = closed_port();
    let (_handle, mut events) =
        client::spawn(options(port, ProtocolVersion::V5, "fg-closed")).unwrap();
    let seen = events_until_stopped(&mut events).await;
    assert!(
        matches!(&seen[..], [ClientEvent::Unreachable(reason)] if reason.contains(&port.to_string())),
        "expected one Unreachable naming the port, got {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_before_connack_is_a_failed_attempt_and_the_client_stops() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.addr());
    proxy.refuse();
    // TCP connects (the proxy accepts) and is closed at once, so this is not
    // `Unreachable` (TCP or TLS failed) but a connection lost before CONNACK.
    let (_handle, mut events) =
        client::spawn(options(proxy.port(), ProtocolVersion::V311, "fg-refused")).unwrap();
    assert_eq!(
        events_until_stopped(&mut events).await,
        vec![ClientEvent::Disconnected(DisconnectCause::ConnectionLost)]
    );
    assert_eq!(proxy.connections_accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_connects_once_the_proxy_stops_refusing() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let broker = Mosquitto::start();
    let proxy = Proxy::start(broker.addr());
    proxy.refuse();
    let mut options = options(proxy.port(), ProtocolVersion::V5, "fg-retry");
    options.reconnect = Some(FAST_BACKOFF);
    let (handle, mut events) = client::spawn(options).unwrap();
    // Two refused attempts prove it retries.
    for _ in 0..2 {
        assert_eq!(
            next(&mut events).await,
            ClientEvent::Disconnected(DisconnectCause::ConnectionLost)
        );
    }
    proxy.restore();
    let (session_present, _) = until_connected(&mut events).await;
    assert!(!session_present);
    publish_acknowledged(&handle, message("fg/retry", QoS::AtLeastOnce, b"in")).await;
    handle.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_connects_once_a_broker_listens_on_its_port() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let (closed, port) = closed_port();
    let mut options = options(port, ProtocolVersion::V311, "fg-wait-broker");
    options.reconnect = Some(FAST_BACKOFF);
    let (handle, mut events) = client::spawn(options).unwrap();
    assert!(
        matches!(next(&mut events).await, ClientEvent::Unreachable(_)),
        "nothing listens yet"
    );
    drop(closed);
    let broker = Mosquitto::start_with_config(&format!("listener {port} 127.0.0.1"));
    let (_, failures) = until_connected(&mut events).await;
    assert!(
        failures
            .iter()
            .all(|e| matches!(e, ClientEvent::Unreachable(_))),
        "{failures:?}"
    );
    publish_acknowledged(&handle, message("fg/late", QoS::AtLeastOnce, b"in")).await;
    handle.disconnect().await;
    drop(broker);
}

// ---------------------------------------------------------------------------------------
// 9. paho-mqtt on the other side
// ---------------------------------------------------------------------------------------

/// A paho-mqtt script running in the background; its stdout lines come through `line`.
struct Paho {
    child: Child,
    lines: tokio::sync::mpsc::Receiver<String>,
}

impl Paho {
    fn spawn(script: &str, args: &[&str]) -> Paho {
        let python = support::python().expect("the test venv's Python");
        let mut child = Command::new(python)
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::channel(16);
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        Paho { child, lines }
    }

    async fn line(&mut self) -> String {
        tokio::time::timeout(DEADLINE, self.lines.recv())
            .await
            .expect("a line from the paho script within the deadline")
            .expect("the paho script is still running")
    }
}

impl Drop for Paho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Subscribes at QoS 2 with MQTT 5.0, prints "ready" once subscribed, then one JSON line
/// per message and exits after the first one.
const PAHO_SUBSCRIBER: &str = r#"
import json, sys
import paho.mqtt.client as mqtt
port, topic = int(sys.argv[1]), sys.argv[2]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-sub", protocol=mqtt.MQTTv5)
def on_connect(c, u, flags, rc, p): c.subscribe(topic, qos=2)
def on_subscribe(c, u, mid, rcs, p): print("ready", flush=True)
def on_message(c, u, m):
    props = getattr(m.properties, "UserProperty", [])
    print(json.dumps({"topic": m.topic, "qos": m.qos, "payload": m.payload.decode(),
                      "user_properties": props}), flush=True)
    c.disconnect()
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("127.0.0.1", port)
c.loop_forever()
"#;

/// Publishes one QoS 1 message with the given protocol ("3.1.1" or "5") and exits once
/// the broker has acknowledged it.
const PAHO_PUBLISHER: &str = r#"
import sys
import paho.mqtt.client as mqtt
port, version, topic, payload = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-pub", protocol=protocol)
c.connect("127.0.0.1", port)
c.loop_start()
info = c.publish(topic, payload, qos=1)
info.wait_for_publish(timeout=10)
assert info.is_published(), "no PUBACK"
c.disconnect()
c.loop_stop()
print("published", flush=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paho_5_0_subscriber_receives_our_qos_2_publish_with_its_user_properties() {
    if !support::require_peers(&["mosquitto", "python", "paho-mqtt"]) {
        return;
    }
    let broker = Mosquitto::start();
    let mut paho = Paho::spawn(PAHO_SUBSCRIBER, &[&broker.port().to_string(), "fg/paho/#"]);
    assert_eq!(paho.line().await, "ready");
    let (handle, _events, _) =
        spawn_connected(options(broker.port(), ProtocolVersion::V5, "fg-to-paho")).await;
    let mut reading = message("fg/paho/reading", QoS::ExactlyOnce, b"21.5");
    // Repeated names are allowed and their order is part of the message.
    reading.properties.user_properties = [("site", "north"), ("unit", "7"), ("unit", "8")]
        .into_iter()
        .map(|(name, value)| UserProperty {
            name: MqttString::try_from(name).unwrap(),
            value: MqttString::try_from(value).unwrap(),
        })
        .collect();
    publish_acknowledged(&handle, reading).await;
    assert_eq!(
        paho.line().await,
        r#"{"topic": "fg/paho/reading", "qos": 2, "payload": "21.5", "user_properties": [["site", "north"], ["unit", "7"], ["unit", "8"]]}"#
    );
    handle.disconnect().await;
}

async fn our_subscription_receives_a_paho_qos_1_publish(protocol: ProtocolVersion) {
    if !support::require_peers(&["mosquitto", "python", "paho-mqtt"]) {
        return;
    }
    let broker = Mosquitto::start();
    let (handle, mut events, _) =
        spawn_connected(options(broker.port(), protocol, "fg-from-paho")).await;
    let granted = handle
        .subscribe(subscription("fg/paho/#", QoS::ExactlyOnce))
        .await
        .unwrap();
    assert_eq!(granted, vec![ReasonCode::GRANTED_QOS_2]);
    let version = match protocol {
        ProtocolVersion::V311 => "3.1.1",
        ProtocolVersion::V5 => "5",
    };
    let mut paho = Paho::spawn(
        PAHO_PUBLISHER,
        &[
            &broker.port().to_string(),
            version,
            "fg/paho/in",
            "from paho",
        ],
    );
    assert_eq!(paho.line().await, "published");
    let received = next_message(&mut events).await;
    assert_eq!(received.topic.as_str(), "fg/paho/in");
    assert_eq!(&received.payload[..], b"from paho");
    assert_eq!(received.qos, QoS::AtLeastOnce);
    handle.disconnect().await;
}

in_both_versions!(our_subscription_receives_a_paho_qos_1_publish =>
    our_3_1_1_subscription_receives_a_paho_qos_1_publish,
    our_5_0_subscription_receives_a_paho_qos_1_publish);
