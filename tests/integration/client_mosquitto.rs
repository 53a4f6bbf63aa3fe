//! Our client driver (`mqtt::client`) against a real mosquitto, with mosquitto's own
//! command-line clients on the other side.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use fieldgate::mqtt::client::{self, ClientEvent, ClientOptions, Events, Handle};
use fieldgate::mqtt::packet::{
    ProtocolVersion, Publish, PublishProperties, QoS, ReasonCode, Subscription, SubscriptionOptions,
};
use fieldgate::mqtt::session::client::ClientConfig;
use fieldgate::mqtt::string::MqttString;
use fieldgate::mqtt::topic::{TopicFilter, TopicName};

use crate::support::{self, Mosquitto};

const DEADLINE: Duration = Duration::from_secs(10);

pub fn options(port: u16, protocol: ProtocolVersion, client_id: &str) -> ClientOptions {
    let session = ClientConfig::new(protocol, MqttString::try_from(client_id).unwrap());
    let mut options = ClientOptions::new("127.0.0.1", port, session);
    options.reconnect = None;
    options
}

pub fn message(topic: &str, qos: QoS, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: TopicName::try_from(topic).unwrap(),
        packet_id: None,
        payload: Bytes::from_static(payload),
        properties: PublishProperties::default(),
    }
}

/// The next event, failing the test after [`DEADLINE`].
pub async fn next(events: &mut Events) -> ClientEvent {
    tokio::time::timeout(DEADLINE, events.recv())
        .await
        .expect("an event within the deadline")
        .expect("the client is running")
}

pub async fn connected(port: u16, protocol: ProtocolVersion, id: &str) -> (Handle, Events) {
    let (handle, mut events) = client::spawn(options(port, protocol, id)).unwrap();
    match next(&mut events).await {
        ClientEvent::Connected { .. } => (handle, events),
        other => panic!("expected Connected, got {other:?}"),
    }
}

fn version_flag(protocol: ProtocolVersion) -> &'static str {
    match protocol {
        ProtocolVersion::V311 => "mqttv311",
        ProtocolVersion::V5 => "mqttv5",
    }
}

/// `mosquitto_sub` printing `topic payload` lines, `count` of them, then exiting.
fn mosquitto_sub(port: u16, topic: &str, count: usize, protocol: ProtocolVersion) -> Child {
    Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-v",
            "-q",
            "2",
        ])
        .args([
            "-C",
            &count.to_string(),
            "-W",
            "10",
            "-V",
            version_flag(protocol),
        ])
        .args(["-i", "fg-test-sub"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub starts")
}

async fn our_publishes_reach_mosquitto_sub(protocol: ProtocolVersion) {
    if !support::require_peers(&["mosquitto", "mosquitto_sub"]) {
        return;
    }
    let broker = Mosquitto::start();
    let sub = mosquitto_sub(broker.port(), "fg/out/#", 3, protocol);
    broker.wait_for_suback("fg-test-sub");
    let (handle, _events) = connected(broker.port(), protocol, "fg-out").await;
    for (qos, topic) in [
        (QoS::AtMostOnce, "fg/out/q0"),
        (QoS::AtLeastOnce, "fg/out/q1"),
        (QoS::ExactlyOnce, "fg/out/q2"),
    ] {
        let delivery = handle.publish(message(topic, qos, b"hello")).await.unwrap();
        delivery.delivered().await.unwrap();
    }
    let out = support::wait_child_output(sub, DEADLINE);
    let text = String::from_utf8_lossy(&out.stdout);
    for topic in ["fg/out/q0", "fg/out/q1", "fg/out/q2"] {
        assert!(
            text.contains(&format!("{topic} hello")),
            "{topic} missing: {text}"
        );
    }
    handle.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_3_1_1_publishes_at_every_qos_reach_mosquitto_sub() {
    our_publishes_reach_mosquitto_sub(ProtocolVersion::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_5_0_publishes_at_every_qos_reach_mosquitto_sub() {
    our_publishes_reach_mosquitto_sub(ProtocolVersion::V5).await;
}

async fn mosquitto_pub_messages_reach_our_subscription(protocol: ProtocolVersion) {
    if !support::require_peers(&["mosquitto", "mosquitto_pub"]) {
        return;
    }
    let broker = Mosquitto::start();
    let (handle, mut events) = connected(broker.port(), protocol, "fg-in").await;
    let granted = handle
        .subscribe(vec![Subscription {
            filter: TopicFilter::try_from("fg/in/#").unwrap(),
            options: SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                ..SubscriptionOptions::default()
            },
        }])
        .await
        .unwrap();
    assert_eq!(granted, vec![ReasonCode::GRANTED_QOS_2]);
    for qos in ["0", "1", "2"] {
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
            .args([
                "-t",
                &format!("fg/in/q{qos}"),
                "-m",
                &format!("m{qos}"),
                "-q",
                qos,
            ])
            .args(["-V", version_flag(protocol)])
            .status()
            .unwrap();
        assert!(status.success());
        match next(&mut events).await {
            ClientEvent::Message(p) => {
                assert_eq!(p.topic.as_str(), format!("fg/in/q{qos}"));
                assert_eq!(&p.payload[..], format!("m{qos}").as_bytes());
                assert_eq!(p.qos.as_u8().to_string(), qos);
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
    handle.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_messages_at_every_qos_reach_our_3_1_1_subscription() {
    mosquitto_pub_messages_reach_our_subscription(ProtocolVersion::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_messages_at_every_qos_reach_our_5_0_subscription() {
    mosquitto_pub_messages_reach_our_subscription(ProtocolVersion::V5).await;
}
