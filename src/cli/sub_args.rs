//! `fieldgate sub`'s arguments: the filters to subscribe to and to suppress, when to stop,
//! how to print, plus the shared connection options; and its help text.
//!
//! Parsing and the per-message "print this one?" decision only: it must not subscribe,
//! wait or print (the driver does, using [`SubOptions::shows`] and `format_message`).

use std::time::Duration;

use fieldgate::mqtt::topic::{self, TopicFilter};

use super::format::OutputFormat;
use super::options::{ArgCursor, ConnectBuilder, Role, connection_help, parse_number, unclaimed};
use super::{CliError, Command, ConnectOptions};

/// Everything `fieldgate sub` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubOptions {
    pub connect: ConnectOptions,
    /// `-t` (and the topic of `-L`), in the order given; never empty. All are subscribed
    /// with `connect.qos`.
    pub filters: Vec<TopicFilter>,
    /// `-T`: messages whose topic matches one of these are not printed.
    pub filter_out: Vec<TopicFilter>,
    /// `-C`: disconnect and exit with `EXIT_OK` after printing this many messages (at least
    /// 1). As in mosquitto, messages hidden by `-T` or `-R` do not count.
    pub count: Option<u32>,
    /// `-W`: disconnect and exit with `EXIT_TIMEOUT` this long after connecting, unless
    /// `-C` was reached first.
    pub timeout: Option<Duration>,
    /// `-v`: print "topic payload" instead of the payload alone (ignored with `-F`).
    pub verbose: bool,
    /// `-N`: do not end each message with a newline.
    pub no_newline: bool,
    /// `-R`: do not print messages that arrive with the retain flag (stale ones).
    pub skip_retained: bool,
    /// `-F`: the output format, already checked (so printing cannot fail on it).
    pub format: Option<OutputFormat>,
}

impl SubOptions {
    /// Should a received message be printed (and counted towards `-C`)? False when `-R`
    /// is given and it is retained, or when its topic matches a `-T` filter.
    pub fn shows(&self, topic: &str, retain: bool) -> bool {
        if self.skip_retained && retain {
            return false;
        }
        !self
            .filter_out
            .iter()
            .any(|f| topic::matches(f.filter(), topic))
    }
}

/// mosquitto_sub flags we do not implement (beyond the shared ones).
const UNSUPPORTED: &[&str] = &[
    "-E",
    "-U",
    "--unsubscribe",
    "--pretty",
    "--random-filter",
    "--remove-retained",
    "--retained-only",
    "--retain-as-published",
];

/// `fieldgate sub --help`.
pub const SUB_HELP: &str = concat!(
    "usage: fieldgate sub -t FILTER [-t FILTER ...] [options]

Subscribes to topics on an MQTT broker and prints the messages that arrive. Flags that
mosquitto_sub also has mean the same here.

what to subscribe to:
  -t, --topic FILTER      topic filter to subscribe to (+ and # allowed); repeatable
  -T, --filter-out FILTER do not print messages on topics matching FILTER; repeatable
  -R                      do not print retained (stale) messages

when to stop (default: never):
  -C COUNT                exit after printing COUNT messages
  -W SECONDS              exit after SECONDS, with status 27 (timed out)

how to print (default: the payload bytes unchanged, then a newline):
  -v, --verbose           print the topic, a space, then the payload
  -N                      no newline after each message
  -F FORMAT               print FORMAT for each message (replaces -v; a newline still
                          follows unless -N), where
                            %t topic      %p payload      %l payload length in bytes
                            %q QoS        %r retained (1 or 0)
                            %x payload in lower-case hex  %X in upper-case hex
                            %% a %        @@ an @
                            \\n newline  \\t tab  \\r carriage return  \\0 NUL  \\\\ a \\
                            \\a bell  \\e escape  \\v vertical tab

",
    connection_help!("sub")
);

/// Parses `fieldgate sub`'s arguments (those after `sub`).
pub fn parse_sub<S: AsRef<str>>(args: &[S]) -> Result<Command<SubOptions>, CliError> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let mut cursor = ArgCursor::new(&args);
    let mut connect = ConnectBuilder::default();
    let mut filters = Vec::new();
    let mut filter_out = Vec::new();
    let mut count = None;
    let mut timeout = None;
    let mut verbose = false;
    let mut no_newline = false;
    let mut skip_retained = false;
    let mut format = None;
    while let Some(flag) = cursor.next_arg() {
        match flag {
            "--help" => return Ok(Command::Help(SUB_HELP)),
            "-t" | "--topic" => {
                filters.push(parse_filter(flag, cursor.value(flag, "a topic filter")?)?);
            }
            "-T" | "--filter-out" => {
                filter_out.push(parse_filter(flag, cursor.value(flag, "a topic filter")?)?);
            }
            "-C" => {
                let raw = cursor.value(flag, "a number of messages")?;
                count = Some(parse_number(flag, "message count", raw, 1, u32::MAX)?);
            }
            "-W" => {
                let raw = cursor.value(flag, "a number of seconds")?;
                let secs = parse_number(flag, "timeout (seconds)", raw, 1, u32::MAX)?;
                timeout = Some(Duration::from_secs(secs.into()));
            }
            "-v" | "--verbose" => verbose = true,
            "-N" => no_newline = true,
            "-R" => skip_retained = true,
            "-F" => format = Some(OutputFormat::parse(cursor.value(flag, "a format")?)?),
            _ if connect.accept(flag, &mut cursor)? => {}
            _ => return Err(unclaimed(flag, UNSUPPORTED)),
        }
    }
    if let Some(url_topic) = connect.url_topic.take() {
        filters.push(parse_filter("-L", &url_topic)?);
    }
    if filters.is_empty() {
        return Err(CliError::MissingFilter);
    }
    Ok(Command::Run(SubOptions {
        connect: connect.finish(Role::Sub)?,
        filters,
        filter_out,
        count,
        timeout,
        verbose,
        no_newline,
        skip_retained,
        format,
    }))
}

fn parse_filter(flag: &str, raw: &str) -> Result<TopicFilter, CliError> {
    TopicFilter::try_from(raw).map_err(|source| CliError::InvalidTopicFilter {
        flag: flag.to_owned(),
        value: raw.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldgate::mqtt::packet::{ProtocolVersion, QoS};
    use fieldgate::mqtt::topic::TopicError;

    fn parse(args: &[&str]) -> Result<SubOptions, CliError> {
        match parse_sub(args)? {
            Command::Run(opts) => Ok(opts),
            Command::Help(_) => panic!("unexpected help for {args:?}"),
        }
    }

    fn ok(args: &[&str]) -> SubOptions {
        parse(args).unwrap()
    }

    fn filters(f: &[TopicFilter]) -> Vec<&str> {
        f.iter().map(TopicFilter::as_str).collect()
    }

    #[test]
    fn one_filter_is_enough_and_the_rest_defaults_off() {
        let o = ok(&["-t", "sensors/#"]);
        assert_eq!(filters(&o.filters), ["sensors/#"]);
        assert!(o.filter_out.is_empty());
        assert_eq!((o.count, o.timeout), (None, None));
        assert!(!o.verbose && !o.no_newline && !o.skip_retained);
        assert_eq!(o.format, None);
        assert_eq!(o.connect.protocol, ProtocolVersion::V5);
        let pid = std::process::id();
        assert_eq!(o.connect.client_id, format!("fieldgate-sub-{pid}").as_str());
    }

    #[test]
    fn every_sub_flag_is_parsed() {
        let o = ok(&[
            "-t",
            "a/+",
            "--topic",
            "b/#",
            "-T",
            "a/x",
            "--filter-out",
            "b/y",
            "-C",
            "5",
            "-W",
            "10",
            "-v",
            "-N",
            "-R",
            "-F",
            "%t",
            "-q",
            "1",
        ]);
        assert_eq!(filters(&o.filters), ["a/+", "b/#"]);
        assert_eq!(filters(&o.filter_out), ["a/x", "b/y"]);
        assert_eq!(o.count, Some(5));
        assert_eq!(o.timeout, Some(Duration::from_secs(10)));
        assert!(o.verbose && o.no_newline && o.skip_retained);
        assert_eq!(o.format, Some(OutputFormat::parse("%t").unwrap()));
        assert_eq!(o.connect.qos, QoS::AtLeastOnce);
        assert!(ok(&["-t", "a", "--verbose"]).verbose);
    }

    #[test]
    fn a_shared_subscription_is_a_valid_filter() {
        assert_eq!(
            filters(&ok(&["-t", "$share/g/a/#"]).filters),
            ["$share/g/a/#"]
        );
    }

    #[test]
    fn a_url_adds_its_topic_to_the_filters() {
        let o = ok(&["-t", "a", "-L", "mqtt://h:1/b/#"]);
        assert_eq!(filters(&o.filters), ["a", "b/#"]);
        assert_eq!((o.connect.host.as_str(), o.connect.port), ("h", 1));
        assert_eq!(filters(&ok(&["-L", "mqtt://h/#"]).filters), ["#"]);
    }

    #[test]
    fn a_missing_filter_is_refused() {
        let e = parse(&["-v"]).unwrap_err();
        assert_eq!(e, CliError::MissingFilter);
        assert_eq!(
            e.to_string(),
            "no topic filter given: add -t FILTER (as many as you like)"
        );
        assert_eq!(parse(&["-T", "a"]), Err(CliError::MissingFilter));
    }

    #[test]
    fn an_invalid_filter_is_refused_with_the_rule_it_breaks() {
        let e = parse(&["-t", "a/#/b"]).unwrap_err();
        assert_eq!(
            e,
            CliError::InvalidTopicFilter {
                flag: "-t".into(),
                value: "a/#/b".into(),
                source: TopicError::MisplacedMultiLevelWildcard
            }
        );
        assert!(
            e.to_string()
                .starts_with("-t: \"a/#/b\" is not a valid topic filter: [MQTT-4.7.1-1]"),
            "{e}"
        );
        assert!(matches!(
            parse(&["-t", "a", "-T", "a+"]),
            Err(CliError::InvalidTopicFilter { ref flag, .. }) if flag == "-T"
        ));
        assert!(matches!(
            parse(&["-t", ""]),
            Err(CliError::InvalidTopicFilter {
                source: TopicError::Empty,
                ..
            })
        ));
    }

    #[test]
    fn a_count_or_timeout_of_zero_or_not_a_number_is_refused() {
        for (flag, raw) in [
            ("-C", "0"),
            ("-C", "x"),
            ("-W", "0"),
            ("-W", "1.5"),
            ("-W", "-3"),
        ] {
            let e = parse(&["-t", "a", flag, raw]).unwrap_err();
            assert!(
                matches!(e, CliError::OutOfRange { flag: ref f, min: 1, .. } if f == flag),
                "{flag} {raw}: {e}"
            );
        }
        assert_eq!(
            parse(&["-t", "a", "-C", "0"]).unwrap_err().to_string(),
            "-C: message count must be a whole number from 1 to 4294967295, got 0"
        );
    }

    #[test]
    fn a_bad_format_is_refused_while_parsing() {
        assert!(matches!(
            parse(&["-t", "a", "-F", "%z"]),
            Err(CliError::InvalidFormat(_))
        ));
    }

    #[test]
    fn a_flag_missing_its_value_is_named() {
        for flag in ["-t", "-T", "-C", "-W", "-F"] {
            let e = parse(&["-t", "a", flag]).unwrap_err();
            assert!(
                matches!(e, CliError::MissingValue { flag: ref f, .. } if f == flag),
                "{e}"
            );
        }
    }

    #[test]
    fn an_unknown_or_unsupported_flag_is_named() {
        assert_eq!(
            parse(&["-t", "a", "-m", "x"]),
            Err(CliError::UnknownOption("-m".into()))
        );
        assert_eq!(
            parse(&["-t", "a", "--retained-only"]),
            Err(CliError::UnsupportedOption("--retained-only".into()))
        );
    }

    #[test]
    fn help_is_returned_for_help_and_names_every_flag() {
        let Command::Help(text) = parse_sub(&["--help"]).unwrap() else {
            panic!("no help");
        };
        for flag in [
            "-t",
            "-T",
            "-R",
            "-C",
            "-W",
            "-v",
            "-N",
            "-F",
            "-h",
            "-p",
            "-L",
            "-V",
            "-i",
            "-c",
            "--will-topic",
            "--cafile",
            "--insecure",
            "%t",
            "%p",
            "%q",
            "%r",
            "%l",
            "%x",
            "%X",
            "%%",
            "\\n",
            "\\t",
        ] {
            assert!(text.contains(flag), "{flag}");
        }
        assert!(text.contains("fieldgate-sub-<process id>"));
        assert!(matches!(
            parse_sub(&["--help", "-q", "9"]),
            Ok(Command::Help(_))
        ));
    }

    #[test]
    fn dash_h_is_the_host_and_dash_v_is_not_the_version() {
        let o = ok(&["-h", "gw", "-t", "a", "-v", "-V", "311"]);
        assert_eq!(o.connect.host, "gw");
        assert!(o.verbose);
        assert_eq!(o.connect.protocol, ProtocolVersion::V311);
    }

    #[test]
    fn every_message_is_shown_by_default() {
        let o = ok(&["-t", "#"]);
        assert!(o.shows("a/b", false));
        assert!(o.shows("a/b", true));
    }

    #[test]
    fn a_filtered_out_topic_is_not_shown() {
        let o = ok(&["-t", "plant/#", "-T", "plant/debug", "-T", "plant/raw/+"]);
        assert!(!o.shows("plant/debug", false));
        assert!(!o.shows("plant/raw/pump1", false));
        assert!(o.shows("plant/debugging", false));
        assert!(o.shows("plant/raw", false));
    }

    #[test]
    fn a_retained_message_is_not_shown_with_dash_r() {
        let o = ok(&["-t", "a", "-R"]);
        assert!(!o.shows("a", true));
        assert!(o.shows("a", false));
    }
}
