//! `fieldgate pub`'s arguments: the topic, where the message comes from, retain, plus the
//! shared connection options; and its help text.
//!
//! Parsing only: it must not read stdin or the `-f` file (the driver does, after
//! connecting is known to be worth it), and it never publishes anything itself.

use std::path::PathBuf;

use bytes::Bytes;
use fieldgate::mqtt::topic::TopicName;

use super::options::{
    ArgCursor, ConnectBuilder, Role, connection_help, parse_topic_name, unclaimed,
};
use super::{CliError, Command, ConnectOptions};

/// Everything `fieldgate pub` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubOptions {
    pub connect: ConnectOptions,
    /// `-t` (or the topic of `-L`): no wildcards, checked here.
    pub topic: TopicName,
    /// Exactly one of `-m -n -s -l -f`.
    pub message: MessageSource,
    /// `-r`: ask the broker to keep the message for future subscribers.
    pub retain: bool,
}

/// Where the message (or messages) to publish come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageSource {
    /// `-m TEXT`: these bytes.
    Message(Bytes),
    /// `-n`: a zero-length message (with `-r` it clears the topic's retained message).
    Empty,
    /// `-s`: all of stdin up to end of file, as one message, bytes unchanged.
    Stdin,
    /// `-l`: one message per stdin line, without its line terminator; an empty line is an
    /// empty message (mosquitto_pub sends those too).
    StdinLines,
    /// `-f FILE`: the file's contents, bytes unchanged. Unreadable: exit with `EXIT_USAGE`.
    File(PathBuf),
}

/// mosquitto_pub flags we do not implement (beyond the shared ones).
const UNSUPPORTED: &[&str] = &["-M", "--repeat", "--repeat-delay"];

/// `fieldgate pub --help`.
pub const PUB_HELP: &str = concat!(
    "usage: fieldgate pub -t TOPIC {-m TEXT | -f FILE | -s | -l | -n} [options]

Publishes a message to an MQTT broker and exits. Flags that mosquitto_pub also has
mean the same here.

what to publish (exactly one):
  -m, --message TEXT      the message TEXT
  -f, --file FILE         the contents of FILE
  -s, --stdin-file        everything read from stdin, as one message
  -l, --stdin-line        each line read from stdin, as a message of its own
  -n, --null-message      an empty message (with -r: clears the retained message)

where:
  -t, --topic TOPIC       topic to publish to; no + or # wildcards
  -r, --retain            ask the broker to keep the message for later subscribers

",
    connection_help!("pub")
);

/// Parses `fieldgate pub`'s arguments (those after `pub`).
pub fn parse_pub<S: AsRef<str>>(args: &[S]) -> Result<Command<PubOptions>, CliError> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let mut cursor = ArgCursor::new(&args);
    let mut connect = ConnectBuilder::default();
    let mut topic: Option<(&str, String)> = None;
    let mut source: Option<(&str, MessageSource)> = None;
    let mut retain = false;
    while let Some(flag) = cursor.next_arg() {
        let new_source = match flag {
            "--help" => return Ok(Command::Help(PUB_HELP)),
            "-t" | "--topic" => {
                let raw = cursor.value(flag, "a topic")?;
                set_topic(&mut topic, flag, raw)?;
                None
            }
            "-r" | "--retain" => {
                retain = true;
                None
            }
            "-m" | "--message" => {
                let text = cursor.value(flag, "the message text")?;
                Some(MessageSource::Message(Bytes::copy_from_slice(
                    text.as_bytes(),
                )))
            }
            "-f" | "--file" => {
                let path = cursor.value(flag, "a file name")?;
                Some(MessageSource::File(PathBuf::from(path)))
            }
            "-n" | "--null-message" => Some(MessageSource::Empty),
            "-s" | "--stdin-file" => Some(MessageSource::Stdin),
            "-l" | "--stdin-line" => Some(MessageSource::StdinLines),
            _ if connect.accept(flag, &mut cursor)? => None,
            _ => return Err(unclaimed(flag, UNSUPPORTED)),
        };
        if let Some(new) = new_source {
            if let Some((first, _)) = source {
                return Err(CliError::TwoMessageSources {
                    first: first.to_owned(),
                    second: flag.to_owned(),
                });
            }
            source = Some((flag, new));
        }
    }
    if let Some(url_topic) = connect.url_topic.take() {
        set_topic(&mut topic, "-L", &url_topic)?;
    }
    let (topic_flag, topic) = topic.ok_or(CliError::MissingTopic)?;
    let (_, message) = source.ok_or(CliError::MissingMessage)?;
    Ok(Command::Run(PubOptions {
        connect: connect.finish(Role::Pub)?,
        topic: parse_topic_name(topic_flag, &topic)?,
        message,
        retain,
    }))
}

/// Records the topic; a second one is an error (mosquitto_pub silently keeps the last).
fn set_topic<'a>(
    topic: &mut Option<(&'a str, String)>,
    flag: &'a str,
    raw: &str,
) -> Result<(), CliError> {
    if let Some((_, first)) = topic {
        return Err(CliError::TopicGivenTwice {
            first: first.clone(),
            second: raw.to_owned(),
        });
    }
    *topic = Some((flag, raw.to_owned()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldgate::mqtt::packet::QoS;
    use fieldgate::mqtt::topic::TopicError;

    fn parse(args: &[&str]) -> Result<PubOptions, CliError> {
        match parse_pub(args)? {
            Command::Run(opts) => Ok(opts),
            Command::Help(_) => panic!("unexpected help for {args:?}"),
        }
    }

    fn ok(args: &[&str]) -> PubOptions {
        parse(args).unwrap()
    }

    #[test]
    fn a_topic_and_a_message_are_enough() {
        let o = ok(&["-t", "a/b", "-m", "hello"]);
        assert_eq!(o.topic.as_str(), "a/b");
        assert_eq!(
            o.message,
            MessageSource::Message(Bytes::from_static(b"hello"))
        );
        assert!(!o.retain);
        assert_eq!(o.connect.qos, QoS::AtMostOnce);
        assert_eq!(o.connect.port, 1883);
        let pid = std::process::id();
        assert_eq!(o.connect.client_id, format!("fieldgate-pub-{pid}").as_str());
    }

    #[test]
    fn every_message_source_is_parsed() {
        for (args, expected) in [
            (&["-n"][..], MessageSource::Empty),
            (&["--null-message"], MessageSource::Empty),
            (&["-s"], MessageSource::Stdin),
            (&["--stdin-file"], MessageSource::Stdin),
            (&["-l"], MessageSource::StdinLines),
            (&["--stdin-line"], MessageSource::StdinLines),
            (
                &["-f", "/tmp/m.bin"],
                MessageSource::File("/tmp/m.bin".into()),
            ),
            (&["--file", "m"], MessageSource::File("m".into())),
            (
                &["--message", "x"],
                MessageSource::Message(Bytes::from_static(b"x")),
            ),
        ] {
            let mut all = vec!["-t", "t"];
            all.extend_from_slice(args);
            assert_eq!(ok(&all).message, expected, "{args:?}");
        }
    }

    #[test]
    fn an_empty_message_text_is_an_empty_message() {
        assert_eq!(
            ok(&["-t", "t", "-m", ""]).message,
            MessageSource::Message(Bytes::new())
        );
    }

    #[test]
    fn retain_qos_and_connection_flags_are_parsed_in_any_order() {
        let o = ok(&[
            "-r", "-q", "1", "-m", "x", "-h", "gw", "--topic", "t", "-V", "311",
        ]);
        assert!(o.retain);
        assert_eq!(o.connect.qos, QoS::AtLeastOnce);
        assert_eq!(o.connect.host, "gw");
        assert!(ok(&["-t", "t", "-n", "--retain"]).retain);
    }

    #[test]
    fn a_url_gives_the_topic() {
        let o = ok(&["-L", "mqtts://u:p@h:8884/x/y", "-m", "1"]);
        assert_eq!(o.topic.as_str(), "x/y");
        assert_eq!((o.connect.host.as_str(), o.connect.port), ("h", 8884));
        assert!(o.connect.tls.is_some());
    }

    #[test]
    fn a_topic_from_both_t_and_a_url_is_refused() {
        let e = parse(&["-t", "a", "-L", "mqtt://h/b", "-m", "x"]).unwrap_err();
        assert_eq!(
            e,
            CliError::TopicGivenTwice {
                first: "a".into(),
                second: "b".into()
            }
        );
        assert!(matches!(
            parse(&["-t", "a", "-t", "b", "-n"]),
            Err(CliError::TopicGivenTwice { .. })
        ));
    }

    #[test]
    fn help_is_returned_for_help_and_names_every_flag() {
        let Command::Help(text) = parse_pub(&["--help"]).unwrap() else {
            panic!("no help");
        };
        for flag in [
            "-t",
            "-m",
            "-f",
            "-s",
            "-l",
            "-n",
            "-r",
            "-h",
            "-p",
            "-L",
            "-V",
            "-i",
            "-u",
            "-P",
            "-k",
            "-c",
            "-q",
            "-d",
            "--will-topic",
            "--will-payload",
            "--will-qos",
            "--will-retain",
            "--cafile",
            "--cert",
            "--key",
            "--insecure",
            "--help",
        ] {
            assert!(
                text.contains(&format!("{flag} ")) || text.contains(&format!("{flag},")),
                "{flag}"
            );
        }
        assert!(text.contains("fieldgate-pub-<process id>"));
        // Help wins wherever it appears, as long as nothing before it is wrong.
        assert!(matches!(
            parse_pub(&["-t", "a", "--help"]),
            Ok(Command::Help(_))
        ));
        assert!(parse_pub(&["-q", "9", "--help"]).is_err());
    }

    #[test]
    fn dash_h_is_the_host_not_help() {
        assert_eq!(
            ok(&["-h", "broker", "-t", "t", "-n"]).connect.host,
            "broker"
        );
    }

    #[test]
    fn a_missing_topic_is_refused() {
        let e = parse(&["-m", "x"]).unwrap_err();
        assert_eq!(e, CliError::MissingTopic);
        assert_eq!(e.to_string(), "no topic given: add -t TOPIC");
    }

    #[test]
    fn a_missing_message_source_is_refused() {
        let e = parse(&["-t", "a"]).unwrap_err();
        assert_eq!(e, CliError::MissingMessage);
        assert_eq!(
            e.to_string(),
            "no message given: add one of -m TEXT, -f FILE, -s, -l or -n"
        );
    }

    #[test]
    fn two_message_sources_are_refused_naming_both() {
        let e = parse(&["-t", "a", "-m", "x", "-f", "file"]).unwrap_err();
        assert_eq!(
            e,
            CliError::TwoMessageSources {
                first: "-m".into(),
                second: "-f".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "-f: the message was already given by -m; use one of -m, -f, -s, -l, -n"
        );
        for pair in [["-s", "-l"], ["-n", "-s"], ["-l", "-n"]] {
            let mut args = vec!["-t", "a"];
            args.extend(pair);
            assert!(
                matches!(parse(&args), Err(CliError::TwoMessageSources { .. })),
                "{pair:?}"
            );
        }
    }

    #[test]
    fn the_same_message_flag_twice_is_refused() {
        assert!(matches!(
            parse(&["-t", "a", "-m", "x", "-m", "y"]),
            Err(CliError::TwoMessageSources { .. })
        ));
    }

    #[test]
    fn a_topic_with_a_wildcard_is_refused() {
        for topic in ["a/+", "a/#", "#"] {
            let e = parse(&["-t", topic, "-n"]).unwrap_err();
            assert_eq!(
                e,
                CliError::InvalidTopicName {
                    flag: "-t".into(),
                    value: topic.into(),
                    source: TopicError::WildcardInTopicName
                }
            );
        }
        let e = parse(&["-t", "a/+", "-n"]).unwrap_err().to_string();
        assert!(e.starts_with("-t: \"a/+\" cannot be published to: "), "{e}");
    }

    #[test]
    fn an_empty_topic_is_refused() {
        assert!(matches!(
            parse(&["-t", "", "-n"]),
            Err(CliError::InvalidTopicName {
                source: TopicError::Empty,
                ..
            })
        ));
    }

    #[test]
    fn a_flag_missing_its_value_is_named() {
        for flag in ["-t", "-m", "-f"] {
            let e = parse(&["-n", flag]).unwrap_err();
            assert!(
                matches!(e, CliError::MissingValue { flag: ref f, .. } if f == flag),
                "{e}"
            );
        }
    }

    #[test]
    fn an_unknown_flag_is_named() {
        let e = parse(&["-t", "a", "-n", "-v"]).unwrap_err();
        assert_eq!(e, CliError::UnknownOption("-v".into()));
        assert_eq!(
            e.to_string(),
            "unknown option -v (--help lists the options)"
        );
    }

    #[test]
    fn a_mosquitto_pub_flag_we_lack_is_called_unsupported() {
        for flag in ["--repeat", "-M", "--tls-version", "-x"] {
            assert_eq!(
                parse(&["-t", "a", "-n", flag]),
                Err(CliError::UnsupportedOption(flag.into()))
            );
        }
    }

    #[test]
    fn a_stray_word_is_refused() {
        assert_eq!(
            parse(&["-t", "a", "hello"]),
            Err(CliError::UnexpectedArgument("hello".into()))
        );
    }

    #[test]
    fn a_message_that_looks_like_a_flag_is_still_the_message() {
        assert_eq!(
            ok(&["-t", "a", "-m", "-1"]).message,
            MessageSource::Message(Bytes::from_static(b"-1"))
        );
    }

    #[test]
    fn connection_errors_come_through() {
        assert!(matches!(
            parse(&["-t", "a", "-n", "-q", "3"]),
            Err(CliError::InvalidQoS { .. })
        ));
        assert_eq!(
            parse(&["-t", "a", "-n", "--will-retain"]),
            Err(CliError::WillWithoutTopic("--will-retain"))
        );
    }

    #[test]
    fn string_and_vec_arguments_are_both_accepted() {
        let owned: Vec<String> = ["-t", "a", "-n"].iter().map(|s| s.to_string()).collect();
        assert!(matches!(parse_pub(&owned), Ok(Command::Run(_))));
    }
}
