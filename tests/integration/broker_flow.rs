//! Back-pressure through our broker: a connected subscriber slower than its publishers
//! makes them wait instead of losing messages, with real clients on both sides.

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use fieldgate::mqtt::broker::BrokerConfig;
use fieldgate::mqtt::broker::mailbox::MailboxLimits;

use crate::support::broker::TestBroker;
use crate::support::{require_peer, wait_child_output, wait_until};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A mailbox of 5 messages, 3 publishers of 400 messages each at QoS 0 and QoS 1, one
/// subscriber: everything arrives, in each publisher's order, and nothing is dropped.
#[test]
fn publishers_wait_for_a_full_subscriber_instead_of_losing_messages() {
    if !require_peer("mosquitto_pub") {
        return;
    }
    for qos in ["0", "1"] {
        let broker = TestBroker::start_with(BrokerConfig {
            mailbox: MailboxLimits {
                max_messages: 5,
                ..MailboxLimits::default()
            },
            sys_interval: None,
            ..BrokerConfig::default()
        });
        let port = broker.port().to_string();
        let stats = broker.broker().stats();
        let total = 3 * 400;
        let subscriber = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
            .args(["sub", "-p", &port, "-q", qos, "-t", "flow/#", "-v"])
            .args(["-C", &total.to_string(), "-W", "50"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fieldgate sub starts");
        wait_until(TIMEOUT, "the subscription", || {
            stats.subscriptions.load(Ordering::Relaxed) == 1
        });
        let publishers: Vec<_> = (0..3)
            .map(|p| {
                let lines: String = (0..400).map(|i| format!("{p}:{i:04}\n")).collect();
                let mut child = Command::new("mosquitto_pub")
                    .args(["-p", &port, "-q", qos, "-t", &format!("flow/{p}"), "-l"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("mosquitto_pub starts");
                let mut stdin = child.stdin.take().expect("piped");
                std::thread::spawn(move || {
                    use std::io::Write;
                    let _ = stdin.write_all(lines.as_bytes());
                });
                child
            })
            .collect();
        let out = wait_child_output(subscriber, TIMEOUT);
        for publisher in publishers {
            let done = wait_child_output(publisher, TIMEOUT);
            assert!(done.status.success(), "{done:?}");
        }
        assert!(out.status.success(), "QoS {qos}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), total, "QoS {qos}: every message arrives");
        for p in 0..3 {
            let mine: Vec<&str> = lines
                .iter()
                .filter_map(|l| l.strip_prefix(&format!("flow/{p} {p}:")))
                .collect();
            let expected: Vec<String> = (0..400).map(|i| format!("{i:04}")).collect();
            assert_eq!(mine, expected, "QoS {qos}: publisher {p}'s order is kept");
        }
        assert_eq!(
            stats.publish_dropped.load(Ordering::Relaxed),
            0,
            "QoS {qos}: nothing dropped"
        );
    }
}
