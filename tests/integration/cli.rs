//! The `fieldgate` binary's command line, run as a user would run it.

use std::process::{Command, Output};

fn fieldgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args(args)
        .output()
        .expect("the fieldgate binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn decode_prints_every_packet_of_a_hex_dump() {
    // A 5.0 PUBLISH QoS 0 to "a/b" with payload "hi", then a PINGREQ.
    let out = fieldgate(&["decode", "30 08 0003 612f62 00 6869", "c000"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("Publish"), "{text}");
    assert!(text.contains("\"a/b\""), "{text}");
    assert!(text.contains("PingReq"), "{text}");
}

#[test]
fn decode_speaks_3_1_1_when_asked() {
    // 3.1.1 CONNACK refused with return code 5, seen as its 5.0 equivalent 0x87.
    let out = fieldgate(&["decode", "-V", "311", "20020005"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(stdout(&out).contains("0x87"), "{}", stdout(&out));
}

#[test]
fn decode_names_the_broken_rule_and_fails() {
    // PUBREL with flags 0000 instead of 0010.
    let out = fieldgate(&["decode", "60020001"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("[MQTT-2.1.3-1]"), "{}", stderr(&out));
}

#[test]
fn decode_refuses_an_incomplete_packet_and_bad_hex() {
    let out = fieldgate(&["decode", "3008"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a whole packet"),
        "{}",
        stderr(&out)
    );
    let out = fieldgate(&["decode", "zz"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a hex byte"), "{}", stderr(&out));
}

#[test]
fn run_refuses_a_missing_or_broken_configuration_with_exit_1_and_explains_its_flags() {
    let out = fieldgate(&["run", "-c", "/nonexistent/fieldgate.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/fieldgate.yaml"),
        "{}",
        stderr(&out)
    );
    let out = fieldgate(&["run", "--bogus"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--bogus"), "{}", stderr(&out));
    let out = fieldgate(&["run", "--help"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("fieldgate sub -t 'fieldgate/#' -v"));
    let out = fieldgate(&["print-default-config"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), fieldgate::config::DEFAULT);
}

#[test]
fn version_and_help_succeed() {
    let out = fieldgate(&["--version"]);
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("fieldgate "));
    let out = fieldgate(&["--help"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("decode"));
}
