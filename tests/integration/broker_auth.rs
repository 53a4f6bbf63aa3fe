//! The broker's password file and ACL (`mqtt::broker::auth`) and `fieldgate passwd`:
//! interop both ways with mosquitto_passwd and a real mosquitto broker, ACL parsing and
//! decisions (deny wins, `%u`/`%c`, subscription coverage, against a naive model), and the
//! command line run as a process. It owns no broker: the local broker's own use of these
//! types is tested with the broker.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use fieldgate::mqtt::broker::auth::{Acl, AuthError, PasswordFile};
use fieldgate::mqtt::topic::{TopicFilter, TopicName, matches};
use proptest::prelude::*;
use proptest::test_runner::Config;

use crate::support::{self, Mosquitto, PEER_TIMEOUT, TempDir};

fn name(s: &str) -> TopicName {
    TopicName::try_from(s).unwrap()
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::try_from(s).unwrap()
}

fn parse_acl(text: &str) -> Acl {
    Acl::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

// ---- Password files and mosquitto ------------------------------------------------------

fn mosquitto_passwd(args: &[&str]) {
    let out = support::run_with_timeout(
        {
            let mut c = Command::new("mosquitto_passwd");
            c.args(args);
            c
        },
        PEER_TIMEOUT,
    );
    assert!(out.status.success(), "mosquitto_passwd {args:?}: {out:?}");
}

#[test]
fn a_file_written_by_mosquitto_passwd_verifies_in_ours() {
    if !support::require_peer("mosquitto_passwd") {
        return;
    }
    let dir = TempDir::new("auth-mosq-passwd");
    let path = dir.path().join("passwd");
    let file = path.to_str().unwrap();
    mosquitto_passwd(&["-c", "-b", file, "alice", "alice's secret"]);
    mosquitto_passwd(&["-b", file, "bob", "pässwörd mit Leerzeichen"]);
    let passwords = PasswordFile::load(&path).unwrap();
    assert!(passwords.verify("alice", b"alice's secret"));
    assert!(passwords.verify("bob", "pässwörd mit Leerzeichen".as_bytes()));
    assert!(!passwords.verify("alice", b"alice's secreT"));
    assert!(!passwords.verify("bob", b"alice's secret"));
    assert!(!passwords.verify("carol", b"alice's secret"));
    assert_eq!(passwords.users().collect::<Vec<_>>(), ["alice", "bob"]);
}

/// Connects with mosquitto_pub as `user`/`password`; true when the broker let it publish.
fn mosquitto_pub_accepted(broker: &Mosquitto, user: &str, password: &str) -> bool {
    let mut command = Command::new("mosquitto_pub");
    command.args(["-h", "127.0.0.1", "-p", &broker.port().to_string()]);
    command.args(["-u", user, "-P", password, "-t", "t", "-m", "m"]);
    support::run_with_timeout(command, PEER_TIMEOUT)
        .status
        .success()
}

/// The uid and gid of mosquitto's service user, when there is one.
fn mosquitto_user_ids() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "mosquitto"]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

#[test]
fn a_real_mosquitto_accepts_the_right_passwords_from_our_file_and_refuses_wrong_ones() {
    if !support::require_peers(&["mosquitto", "mosquitto_pub"]) {
        return;
    }
    let dir = TempDir::new("auth-mosq-broker");
    let path = dir.path().join("passwd");
    let file = path.to_str().unwrap();
    let out = fieldgate_passwd(&["-c", "-b", file, "alice", "alice's secret"], None);
    assert!(out.status.success(), "{out:?}");
    // Started as root, mosquitto reads its password file after switching to its own user,
    // so a deployment hands the file to that user. Our later edits must keep that owner.
    let root = fs::metadata(&path).unwrap().uid() == 0;
    let owner = mosquitto_user_ids().filter(|_| root);
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
    }
    let mut passwords = PasswordFile::load(&path).unwrap();
    passwords
        .set("bob", "pässwörd mit Leerzeichen".as_bytes())
        .unwrap();
    passwords.save(&path).unwrap();
    if let Some((uid, gid)) = owner {
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (uid, gid),
            "the owner survives a save"
        );
    }
    assert!(fs::read_to_string(&path).unwrap().contains(":$7$210000$"));

    let broker = Mosquitto::start_with_config(&format!(
        "allow_anonymous false\npassword_file {}\n",
        path.display()
    ));
    assert!(
        mosquitto_pub_accepted(&broker, "alice", "alice's secret"),
        "{}",
        broker.log()
    );
    assert!(mosquitto_pub_accepted(
        &broker,
        "bob",
        "pässwörd mit Leerzeichen"
    ));
    assert!(!mosquitto_pub_accepted(&broker, "alice", "wrong"));
    assert!(!mosquitto_pub_accepted(&broker, "bob", "alice's secret"));
    assert!(!mosquitto_pub_accepted(&broker, "carol", "alice's secret"));
}

// ---- ACL ----------------------------------------------------------------------------------

#[test]
fn acl_errors_name_their_line() {
    let cases = [
        (
            "topic read a\n\n# c\nbogus a/b\n",
            4,
            "unknown keyword \"bogus\"",
        ),
        ("topic read\n", 1, "topic: no topic given"),
        ("topic\n", 1, "topic: no topic given"),
        ("user a\npattern deny\n", 2, "pattern: no topic given"),
        ("user\n", 1, "no user name"),
        ("topic read a/#/b\n", 1, "[MQTT-4.7.1-1]"),
        ("topic read a+\n", 1, "[MQTT-4.7.1-2]"),
        ("pattern read a/%u#\n", 1, "[MQTT-4.7.1-1]"),
        ("topic read $share/g/a\n", 1, "shared subscriptions"),
        (
            "user x\n topic readwrite ok\ntopic read a/b/c/#/\n",
            3,
            "'#'",
        ),
    ];
    for (text, line, fragment) in cases {
        match Acl::parse(text) {
            Err(AuthError::AclLine {
                line: got, problem, ..
            }) => {
                assert_eq!(got, line, "{text:?}");
                assert!(
                    problem.to_string().contains(fragment),
                    "{text:?}: {problem}"
                );
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
    let message = Acl::parse("\nnope\n").unwrap_err().to_string();
    assert!(message.starts_with("line 2: "), "{message}");
    assert!(!message.contains('\n'));
}

#[test]
fn topic_lines_apply_to_anonymous_clients_until_a_user_line_then_to_that_user() {
    let acl = parse_acl(
        "\
# anonymous
topic read public/#
user alice
topic readwrite alice/#
topic write shared/in
user bob
topic read alice/status
user alice
topic read more/alice
",
    );
    let anon = None;
    assert!(acl.can_receive(anon, "c", &name("public/x")));
    assert!(!acl.can_publish(anon, "c", &name("public/x")));
    assert!(!acl.can_receive(anon, "c", &name("alice/x")));

    let alice = Some("alice");
    assert!(
        !acl.can_receive(alice, "c", &name("public/x")),
        "anonymous rules only"
    );
    assert!(acl.can_publish(alice, "c", &name("alice/x")));
    assert!(acl.can_receive(alice, "c", &name("alice/x")));
    assert!(acl.can_publish(alice, "c", &name("shared/in")));
    assert!(!acl.can_receive(alice, "c", &name("shared/in")));
    assert!(
        acl.can_receive(alice, "c", &name("more/alice")),
        "a second block adds"
    );

    let bob = Some("bob");
    assert!(acl.can_receive(bob, "c", &name("alice/status")));
    assert!(!acl.can_publish(bob, "c", &name("alice/status")));
    assert!(!acl.can_receive(bob, "c", &name("alice/other")));

    assert!(!acl.can_receive(Some("carol"), "c", &name("public/x")));
    assert!(!acl.can_publish(Some("carol"), "c", &name("alice/x")));
}

#[test]
fn no_access_word_means_readwrite() {
    let acl = parse_acl("topic a/b\npattern p/%c\n");
    assert!(acl.can_publish(None, "c", &name("a/b")));
    assert!(acl.can_receive(None, "c", &name("a/b")));
    assert!(acl.can_publish(None, "c1", &name("p/c1")));
    assert!(acl.can_receive(None, "c1", &name("p/c1")));
}

#[test]
fn topics_may_contain_spaces() {
    let acl = parse_acl("topic read  living room/lamp \n");
    assert!(acl.can_receive(None, "c", &name("living room/lamp")));
}

#[test]
fn a_matching_deny_wins_over_any_grant_in_any_order() {
    for text in [
        "user a\ntopic deny x/secret/#\ntopic readwrite x/#\n",
        "user a\ntopic readwrite x/#\ntopic deny x/secret/#\n",
        "pattern readwrite x/#\nuser a\ntopic deny x/secret/#\n",
        "user a\ntopic readwrite x/#\npattern deny x/secret/#\n",
        "pattern deny x/secret/#\nuser a\ntopic readwrite #\n",
    ] {
        let acl = parse_acl(text);
        let a = Some("a");
        assert!(!acl.can_publish(a, "c", &name("x/secret/k")), "{text}");
        assert!(!acl.can_receive(a, "c", &name("x/secret")), "{text}");
        assert!(acl.can_publish(a, "c", &name("x/open")), "{text}");
        assert!(acl.can_receive(a, "c", &name("x/open")), "{text}");
    }
    // A deny pattern with %u reaches the user's own name.
    let acl = parse_acl("pattern deny x/%u/#\nuser a\ntopic readwrite #\n");
    assert!(!acl.can_publish(Some("a"), "c", &name("x/a/k")));
    assert!(acl.can_publish(Some("a"), "c", &name("x/b/k")));
}

#[test]
fn patterns_substitute_the_user_name_and_the_client_id() {
    let acl = parse_acl(
        "\
pattern readwrite users/%u/#
pattern write devices/%c/state
pattern read inbox/%u-%c
",
    );
    let alice = Some("alice");
    assert!(acl.can_publish(alice, "pump-1", &name("users/alice/x")));
    assert!(!acl.can_publish(alice, "pump-1", &name("users/bob/x")));
    assert!(acl.can_publish(alice, "pump-1", &name("devices/pump-1/state")));
    assert!(!acl.can_publish(alice, "pump-1", &name("devices/pump-2/state")));
    assert!(!acl.can_receive(alice, "pump-1", &name("devices/pump-1/state")));
    assert!(acl.can_receive(alice, "pump-1", &name("inbox/alice-pump-1")));
    assert!(!acl.can_receive(alice, "pump-2", &name("inbox/alice-pump-1")));
    // %c applies to anonymous clients; %u does not (there is no name to put in).
    assert!(acl.can_publish(None, "pump-1", &name("devices/pump-1/state")));
    assert!(!acl.can_receive(None, "pump-1", &name("users//x")));
    assert!(!acl.can_receive(None, "pump-1", &name("inbox/-pump-1")));
}

#[test]
fn a_user_or_client_id_with_wildcards_or_slashes_gains_nothing_from_a_pattern() {
    let acl = parse_acl("pattern readwrite users/%u/#\npattern readwrite devices/%c\n");
    for user in ["#", "+", "bob/x", "a+b"] {
        for topic in ["users/bob/x", "users/a/b", "users/x"] {
            assert!(
                !acl.can_receive(Some(user), "c", &name(topic)),
                "{user}: {topic}"
            );
            assert!(
                !acl.can_publish(Some(user), "c", &name(topic)),
                "{user}: {topic}"
            );
        }
        assert!(
            !acl.can_subscribe(Some(user), "c", &filter("users/#")),
            "{user}"
        );
    }
    for client in ["#", "+", "a/b"] {
        assert!(
            !acl.can_publish(None, client, &name("devices/x")),
            "{client}"
        );
        assert!(
            !acl.can_publish(None, client, &name("devices/a/b")),
            "{client}"
        );
        assert!(
            !acl.can_subscribe(None, client, &filter("devices/+")),
            "{client}"
        );
    }
    // The same users get what an ordinary rule gives them.
    let plain = parse_acl("pattern readwrite users/%u/#\nuser #\ntopic read public\n");
    assert!(plain.can_receive(Some("#"), "c", &name("public")));
}

#[test]
fn a_deny_pattern_with_an_unusable_substitution_denies_all_it_might_have_meant() {
    let acl =
        parse_acl("pattern deny private/%u/#\ntopic readwrite #\nuser a/b\ntopic readwrite #\n");
    assert!(!acl.can_receive(Some("a/b"), "c", &name("private/a/b/x")));
    assert!(!acl.can_receive(Some("a/b"), "c", &name("private/z")));
    assert!(acl.can_receive(Some("a/b"), "c", &name("public/z")));
}

#[test]
fn a_subscription_needs_a_read_rule_that_covers_all_of_it() {
    let acl = parse_acl(
        "\
topic read sensors/#
topic read plant/+
topic write cmd/#
topic read alarms/+/high
",
    );
    let sub = |f: &str| acl.can_subscribe(None, "c", &filter(f));
    assert!(sub("sensors/#"));
    assert!(sub("sensors/+/temp"));
    assert!(sub("sensors"));
    assert!(sub("plant/+"));
    assert!(sub("plant/pump"));
    assert!(!sub("plant/#"), "plant/+ does not reach plant/a/b");
    assert!(!sub("plant/+/x"));
    assert!(!sub("cmd/#"), "write is not read");
    assert!(sub("alarms/+/high"));
    assert!(!sub("alarms/+/+"));
    assert!(!sub("#"));
    assert!(
        !sub("+/temp"),
        "sensors/# does not cover other first levels"
    );
}

#[test]
fn a_deny_refuses_a_subscription_it_covers_and_filters_one_it_only_overlaps() {
    let acl = parse_acl("topic read sensors/#\ntopic deny sensors/secret/#\n");
    let sub = |f: &str| acl.can_subscribe(None, "c", &filter(f));
    let receive = |t: &str| acl.can_receive(None, "c", &name(t));
    assert!(!sub("sensors/secret/#"));
    assert!(!sub("sensors/secret/door"));
    assert!(
        !sub("sensors/secret"),
        "sensors/secret/# matches its parent too"
    );
    // Overlapping only: allowed, and what it would deliver from the denied part is
    // dropped per message.
    assert!(sub("sensors/#"));
    assert!(sub("sensors/+/door"));
    assert!(receive("sensors/hall/door"));
    assert!(!receive("sensors/secret/door"));
}

#[test]
fn wildcard_rules_do_not_reach_dollar_topics() {
    let acl = parse_acl("topic read #\ntopic read $SYS/broker/#\n");
    assert!(!acl.can_receive(None, "c", &name("$internal/x")));
    assert!(!acl.can_subscribe(None, "c", &filter("$internal/#")));
    assert!(acl.can_subscribe(None, "c", &filter("$SYS/broker/+")));
    assert!(acl.can_receive(None, "c", &name("$SYS/broker/uptime")));
}

#[test]
fn the_documented_example_acl_is_accepted_by_mosquitto_too() {
    if !support::require_peer("mosquitto") {
        return;
    }
    let text = "\
# anonymous clients (lines before any `user` line)
topic read public/#
user alice
topic readwrite alice/#
topic deny alice/secret/#
# every client, authenticated or not: %u is the user name, %c the client id
pattern write devices/%c/state
";
    parse_acl(text);
    let dir = TempDir::new("auth-acl");
    let path = dir.path().join("acl");
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    // start_with_config panics with mosquitto's log if it refuses the file.
    let broker = Mosquitto::start_with_config(&format!("acl_file {}\n", path.display()));
    assert!(!broker.log().contains("Error"), "{}", broker.log());
}

// Coverage against a naive model: a rule covers a subscription when every topic name the
// subscription matches, the rule matches too. Names are drawn from the filters' own
// literals plus one fresh literal ("c") and one level deeper than any filter, which is
// enough for a counterexample to show up whenever one exists.

fn level() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("a"), Just("b"), Just("+")]
}

fn acl_filter() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("a"), Just("+"), Just("$s"), Just("#")],
        proptest::collection::vec(level(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(first, rest, hash)| {
            let mut levels = vec![first];
            if first != "#" {
                levels.extend(rest);
                if hash {
                    levels.push("#");
                }
            }
            levels.join("/")
        })
}

fn all_names() -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut frontier: Vec<String> = ["a", "b", "c", "$s"].map(String::from).to_vec();
    for _ in 0..5 {
        names.extend(frontier.iter().cloned());
        frontier = frontier
            .iter()
            .flat_map(|n| ["a", "b", "c"].map(|l| format!("{n}/{l}")))
            .collect();
    }
    names
}

fn naive_covers(rule: &str, sub: &str, names: &[String]) -> bool {
    names
        .iter()
        .filter(|n| matches(sub, n))
        .all(|n| matches(rule, n))
}

proptest! {
    #![proptest_config(Config { cases: 512, failure_persistence: None, ..Config::default() })]

    #[test]
    fn can_subscribe_agrees_with_the_naive_coverage_model(
        rule in acl_filter(),
        sub in acl_filter(),
    ) {
        let names = all_names();
        let allow = parse_acl(&format!("topic read {rule}\n"));
        let expected = naive_covers(&rule, &sub, &names);
        prop_assert_eq!(allow.can_subscribe(None, "c", &filter(&sub)), expected);
        // The same relation decides a deny: refused exactly when the deny covers it all.
        let deny = parse_acl(&format!("topic read #\ntopic read $s/#\ntopic deny {rule}\n"));
        prop_assert_eq!(deny.can_subscribe(None, "c", &filter(&sub)), !expected);
    }
}

// ---- fieldgate passwd ---------------------------------------------------------------------

/// Runs `fieldgate passwd ARGS` with `stdin` piped in (or none: an empty, closed stdin).
fn fieldgate_passwd(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // A command that fails on its arguments exits without reading its input: a broken
    // pipe here is that, not a test failure (the exit status and stderr are checked).
    match input.write_all(stdin.unwrap_or("").as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.unwrap(),
    }
    drop(input);
    support::wait_child_output(child, PEER_TIMEOUT)
}

/// Asserts a failure with exit code 1 and one line on stderr containing `fragment`.
fn assert_fails(out: &Output, fragment: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("fieldgate passwd: "), "{stderr}");
    assert!(stderr.contains(fragment), "{stderr}");
}

fn load(path: &Path) -> PasswordFile {
    PasswordFile::load(path).unwrap()
}

#[test]
fn passwd_creates_adds_and_deletes_like_mosquitto_passwd() {
    let dir = TempDir::new("auth-cli");
    let path = dir.path().join("passwd");
    let file = path.to_str().unwrap();

    let out = fieldgate_passwd(&["-c", "-b", file, "alice", "one"], None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    assert!(load(&path).verify("alice", b"one"));

    // Comments survive an edit; -b adds a user and keeps the others.
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, format!("# managed by hand\n{text}")).unwrap();
    let out = fieldgate_passwd(&["-b", file, "bob", "-two starts with a dash"], None);
    assert!(out.status.success(), "{out:?}");
    let passwords = load(&path);
    assert!(passwords.verify("alice", b"one"));
    assert!(passwords.verify("bob", b"-two starts with a dash"));
    assert!(
        fs::read_to_string(&path)
            .unwrap()
            .starts_with("# managed by hand\n")
    );

    let out = fieldgate_passwd(&["-D", file, "alice"], None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(load(&path).users().collect::<Vec<_>>(), ["bob"]);
    assert_fails(
        &fieldgate_passwd(&["-D", file, "alice"], None),
        "\"alice\" is not in",
    );

    // -c starts over.
    let out = fieldgate_passwd(&["-c", "-b", file, "carol", "three"], None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(load(&path).users().collect::<Vec<_>>(), ["carol"]);
}

#[test]
fn passwd_reads_one_line_from_stdin_when_it_is_not_a_terminal() {
    let dir = TempDir::new("auth-cli-stdin");
    let path = dir.path().join("passwd");
    let file = path.to_str().unwrap();
    let out = fieldgate_passwd(
        &["-c", file, "alice"],
        Some("s3cret with spaces\nignored\n"),
    );
    assert!(out.status.success(), "{out:?}");
    assert!(load(&path).verify("alice", b"s3cret with spaces"));

    assert_fails(
        &fieldgate_passwd(&[file, "bob"], None),
        "no password on stdin",
    );
    assert_fails(
        &fieldgate_passwd(&[file, "bob"], Some("\n")),
        "password is empty",
    );
    assert_eq!(
        load(&path).users().collect::<Vec<_>>(),
        ["alice"],
        "unchanged"
    );
}

#[test]
fn passwd_errors_are_one_line_and_exit_1() {
    let dir = TempDir::new("auth-cli-errors");
    let missing = dir.path().join("missing");
    let missing = missing.to_str().unwrap();
    assert_fails(
        &fieldgate_passwd(&[missing, "u"], Some("pw\n")),
        "add -c to create it",
    );
    assert!(!Path::new(missing).exists());
    assert_fails(
        &fieldgate_passwd(&["-x", missing, "u"], None),
        "unknown option -x",
    );
    assert_fails(&fieldgate_passwd(&["-D", "-c", missing, "u"], None), "-D");
    assert_fails(
        &fieldgate_passwd(&["-b", missing, "u"], None),
        "FILE USER PASSWORD",
    );
    assert_fails(&fieldgate_passwd(&[], None), "FILE USER");
    let bad_name = dir.path().join("names");
    let bad_name = bad_name.to_str().unwrap();
    assert_fails(
        &fieldgate_passwd(&["-c", "-b", bad_name, "a:b", "pw"], None),
        "':'",
    );

    let broken = dir.path().join("broken");
    fs::write(&broken, "ok:$7$1$c2FsdA==$x\n").unwrap();
    let out = fieldgate_passwd(&["-b", broken.to_str().unwrap(), "u", "pw"], None);
    assert_fails(&out, "line 1: ");

    let help = fieldgate_passwd(&["--help"], None);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("-D"));
}

#[test]
fn passwd_re_hashes_a_mosquitto_1_6_user_so_the_file_can_be_served_again() {
    let dir = TempDir::new("auth-cli-legacy");
    let path = dir.path().join("passwd");
    let file = path.to_str().unwrap();
    fs::write(
        &path,
        "old:$6$c2FsdA==$aGFzaA==\nother:$6$c2FsdA==$aGFzaA==\n",
    )
    .unwrap();
    let refused = PasswordFile::load(&path).unwrap_err().to_string();
    assert!(
        refused.contains("line 1") && refused.contains("fieldgate passwd"),
        "{refused}"
    );

    let out = fieldgate_passwd(&["-b", file, "old", "new"], None);
    assert!(out.status.success(), "{out:?}");
    let out = fieldgate_passwd(&["-D", file, "other"], None);
    assert!(out.status.success(), "{out:?}");
    assert!(load(&path).verify("old", b"new"));
}

#[test]
fn passwd_edits_a_mosquitto_passwd_file_without_disturbing_its_other_users() {
    if !support::require_peer("mosquitto_passwd") {
        return;
    }
    let dir = TempDir::new("auth-cli-mosq");
    let path = dir.path().join("passwd");
    let file = path.to_str().unwrap();
    mosquitto_passwd(&["-c", "-b", file, "theirs", "made by mosquitto"]);
    let out = fieldgate_passwd(&["-b", file, "ours", "made by fieldgate"], None);
    assert!(out.status.success(), "{out:?}");
    // And back: mosquitto_passwd edits the file we wrote.
    mosquitto_passwd(&["-b", file, "again", "mosquitto once more"]);
    let passwords = load(&path);
    assert!(passwords.verify("theirs", b"made by mosquitto"));
    assert!(passwords.verify("ours", b"made by fieldgate"));
    assert!(passwords.verify("again", b"mosquitto once more"));
}
