//! How `fieldgate sub` prints a message: the payload alone, `-v`'s "topic payload", or a
//! `-F` format, each followed by a newline unless `-N`. Payload bytes are written unchanged
//! (never converted lossily to text), so binary payloads survive a pipe.
//!
//! It only builds bytes: writing them to stdout is the driver's job. A `-F` format is
//! checked once while parsing, so formatting a message cannot fail.

use fieldgate::mqtt::packet::QoS;

use super::{CliError, SubOptions};

/// A checked `-F` format string, ready to apply to each message.
///
/// Every format we accept prints what mosquitto_sub would print for it: placeholders and
/// escapes we do not implement (field widths, `%j`, `@Y` time sequences, ...) are refused
/// rather than printed literally, so nobody gets silently different output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFormat {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Text copied as is (escapes already resolved); adjacent text is merged.
    Literal(Vec<u8>),
    /// `%t`
    Topic,
    /// `%p`
    Payload,
    /// `%q`: 0, 1 or 2.
    Qos,
    /// `%r`: 1 if the retain flag is set, else 0.
    Retain,
    /// `%l`: payload length in bytes, in decimal.
    Length,
    /// `%x`
    HexLower,
    /// `%X`
    HexUpper,
}

/// mosquitto placeholders we do not implement, to say "not supported" rather than "unknown".
const MOSQUITTO_ONLY: &str = "ACDEFIjJmPRSU";

impl OutputFormat {
    /// Checks and compiles a `-F` format string.
    pub fn parse(format: &str) -> Result<Self, CliError> {
        let mut pieces = Vec::new();
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            let piece = match c {
                '%' => match chars.next() {
                    Some('%') => Piece::Literal(b"%".to_vec()),
                    Some('t') => Piece::Topic,
                    Some('p') => Piece::Payload,
                    Some('q') => Piece::Qos,
                    Some('r') => Piece::Retain,
                    Some('l') => Piece::Length,
                    Some('x') => Piece::HexLower,
                    Some('X') => Piece::HexUpper,
                    Some(c) if c.is_ascii_digit() || matches!(c, '-' | '.') => {
                        return Err(invalid(
                            "field widths and flags after % are not supported; \
                             write the bare placeholder, e.g. %t",
                        ));
                    }
                    Some(c) if MOSQUITTO_ONLY.contains(c) => {
                        return Err(invalid(format!("%{c} is not supported; {PLACEHOLDERS}")));
                    }
                    Some(c) => return Err(invalid(format!("%{c} is unknown; {PLACEHOLDERS}"))),
                    None => return Err(invalid("a lone % ends the format; write %% for a %")),
                },
                '\\' => {
                    let byte = match chars.next() {
                        Some('\\') => b'\\',
                        Some('0') => 0,
                        Some('a') => 0x07,
                        Some('e') => 0x1b,
                        Some('n') => b'\n',
                        Some('r') => b'\r',
                        Some('t') => b'\t',
                        Some('v') => 0x0b,
                        Some(c) => {
                            return Err(invalid(format!("\\{c} is unknown; {ESCAPES}")));
                        }
                        None => {
                            return Err(invalid("a lone \\ ends the format; write \\\\ for a \\"));
                        }
                    };
                    Piece::Literal(vec![byte])
                }
                // mosquitto hands '@X' to strftime; we have no clock formatting, and printing
                // "@Y" literally would differ silently, so only '@@' is accepted.
                '@' => match chars.next() {
                    Some('@') => Piece::Literal(b"@".to_vec()),
                    _ => {
                        return Err(invalid(
                            "@ time sequences (@Y, @N, ...) are not supported; write @@ for an @",
                        ));
                    }
                },
                c => Piece::Literal(c.encode_utf8(&mut [0; 4]).as_bytes().to_vec()),
            };
            push(&mut pieces, piece);
        }
        Ok(OutputFormat { pieces })
    }

    fn write(&self, out: &mut Vec<u8>, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
        for piece in &self.pieces {
            match piece {
                Piece::Literal(bytes) => out.extend_from_slice(bytes),
                Piece::Topic => out.extend_from_slice(topic.as_bytes()),
                Piece::Payload => out.extend_from_slice(payload),
                Piece::Qos => out.push(b'0' + qos.as_u8()),
                Piece::Retain => out.push(if retain { b'1' } else { b'0' }),
                Piece::Length => out.extend_from_slice(payload.len().to_string().as_bytes()),
                Piece::HexLower => write_hex(out, payload, b"0123456789abcdef"),
                Piece::HexUpper => write_hex(out, payload, b"0123456789ABCDEF"),
            }
        }
    }
}

const PLACEHOLDERS: &str = "fieldgate sub knows %t %p %q %r %l %x %X and %%";
const ESCAPES: &str = "fieldgate sub knows \\n \\t \\r \\0 \\a \\e \\v and \\\\";

fn invalid(why: impl Into<String>) -> CliError {
    CliError::InvalidFormat(why.into())
}

/// Appends `piece`, merging text into the previous text so printing does fewer copies.
fn push(pieces: &mut Vec<Piece>, piece: Piece) {
    if let (Some(Piece::Literal(last)), Piece::Literal(more)) = (pieces.last_mut(), &piece) {
        last.extend_from_slice(more);
        return;
    }
    pieces.push(piece);
}

fn write_hex(out: &mut Vec<u8>, bytes: &[u8], digits: &[u8; 16]) {
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(digits[usize::from(b >> 4)]);
        out.push(digits[usize::from(b & 0x0f)]);
    }
}

/// The bytes to print for one received message.
///
/// Without `-F`: the payload (`-v`: the topic, a space, the payload). With `-F`: the format
/// (`-v` is ignored). Either way a newline follows unless `-N`: mosquitto_sub documents and
/// does exactly that, `-F` included. Unlike mosquitto_sub, an empty payload still prints its
/// line (mosquitto prints nothing, or "topic (null)" with `-v`), so one message is always
/// one line.
pub fn format_message(
    opts: &SubOptions,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(topic.len() + payload.len() + 2);
    match &opts.format {
        Some(format) => format.write(&mut out, topic, payload, qos, retain),
        None => {
            if opts.verbose {
                out.extend_from_slice(topic.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(payload);
        }
    }
    if !opts.no_newline {
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, parse_sub};

    fn opts(args: &[&str]) -> SubOptions {
        let mut all = vec!["-t", "#"];
        all.extend_from_slice(args);
        match parse_sub(&all).unwrap() {
            Command::Run(o) => o,
            Command::Help(_) => panic!("help"),
        }
    }

    /// Formats the message on "a/b", payload "hi", QoS 1, retained.
    fn show(args: &[&str]) -> Vec<u8> {
        format_message(&opts(args), "a/b", b"hi", QoS::AtLeastOnce, true)
    }

    fn format_err(format: &str) -> String {
        match OutputFormat::parse(format) {
            Err(CliError::InvalidFormat(why)) => why,
            other => panic!("{format:?}: {other:?}"),
        }
    }

    #[test]
    fn by_default_the_payload_is_printed_with_a_newline() {
        assert_eq!(show(&[]), b"hi\n");
    }

    #[test]
    fn verbose_prints_the_topic_a_space_and_the_payload() {
        assert_eq!(show(&["-v"]), b"a/b hi\n");
    }

    #[test]
    fn no_newline_leaves_the_newline_out() {
        assert_eq!(show(&["-N"]), b"hi");
        assert_eq!(show(&["-v", "-N"]), b"a/b hi");
    }

    #[test]
    fn an_empty_payload_still_prints_its_line() {
        let o = opts(&[]);
        assert_eq!(format_message(&o, "a", b"", QoS::AtMostOnce, false), b"\n");
        let o = opts(&["-v"]);
        assert_eq!(
            format_message(&o, "a", b"", QoS::AtMostOnce, false),
            b"a \n"
        );
    }

    #[test]
    fn binary_payloads_are_written_unchanged() {
        let payload = [0x00, 0xff, 0xfe, b'\n', 0x80, 0xc3];
        let o = opts(&["-N"]);
        assert_eq!(
            format_message(&o, "t", &payload, QoS::AtMostOnce, false),
            payload
        );
        let o = opts(&["-F", "%p", "-N"]);
        assert_eq!(
            format_message(&o, "t", &payload, QoS::AtMostOnce, false),
            payload
        );
    }

    #[test]
    fn a_format_replaces_verbose_and_is_followed_by_a_newline_like_mosquitto() {
        assert_eq!(show(&["-F", "%t:%p"]), b"a/b:hi\n");
        assert_eq!(show(&["-v", "-F", "%p"]), b"hi\n");
        assert_eq!(show(&["-F", "%t:%p", "-N"]), b"a/b:hi");
    }

    #[test]
    fn each_placeholder_is_replaced() {
        for (format, expected) in [
            ("%t", &b"a/b"[..]),
            ("%p", b"hi"),
            ("%q", b"1"),
            ("%r", b"1"),
            ("%l", b"2"),
            ("%x", b"6869"),
            ("%X", b"6869"),
            ("%%", b"%"),
            ("@@", b"@"),
            ("100%% %t", b"100% a/b"),
        ] {
            assert_eq!(show(&["-F", format, "-N"]), expected, "{format}");
        }
    }

    #[test]
    fn the_qos_and_retain_placeholders_follow_the_message() {
        let o = opts(&["-F", "%q %r", "-N"]);
        assert_eq!(format_message(&o, "t", b"", QoS::AtMostOnce, false), b"0 0");
        assert_eq!(format_message(&o, "t", b"", QoS::ExactlyOnce, true), b"2 1");
    }

    #[test]
    fn hex_is_two_digits_per_byte_in_the_asked_case() {
        let o = opts(&["-F", "%x|%X", "-N"]);
        let payload = [0x00, 0x0a, 0xab, 0xff];
        assert_eq!(
            format_message(&o, "t", &payload, QoS::AtMostOnce, false),
            b"000aabff|000AABFF"
        );
        assert_eq!(format_message(&o, "t", b"", QoS::AtMostOnce, false), b"|");
    }

    #[test]
    fn the_length_counts_bytes_not_characters() {
        let o = opts(&["-F", "%l", "-N"]);
        assert_eq!(
            format_message(&o, "t", "é".as_bytes(), QoS::AtMostOnce, false),
            b"2"
        );
        let big = vec![0u8; 12345];
        assert_eq!(
            format_message(&o, "t", &big, QoS::AtMostOnce, false),
            b"12345"
        );
    }

    #[test]
    fn each_escape_becomes_its_character() {
        for (format, expected) in [
            ("\\n", &b"\n"[..]),
            ("\\t", b"\t"),
            ("\\r", b"\r"),
            ("\\0", b"\0"),
            ("\\a", b"\x07"),
            ("\\e", b"\x1b"),
            ("\\v", b"\x0b"),
            ("\\\\", b"\\"),
            ("%t\\t%p\\n", b"a/b\thi\n"),
        ] {
            assert_eq!(show(&["-F", format, "-N"]), expected, "{format}");
        }
    }

    #[test]
    fn plain_text_and_non_ascii_text_are_copied() {
        assert_eq!(
            show(&["-F", "topic=%t · payload=%p", "-N"]),
            "topic=a/b · payload=hi".as_bytes()
        );
    }

    #[test]
    fn adjacent_text_is_kept_as_one_piece() {
        let f = OutputFormat::parse("ab\\n%%c%t").unwrap();
        assert_eq!(f.pieces, [Piece::Literal(b"ab\n%c".to_vec()), Piece::Topic]);
    }

    #[test]
    fn an_unknown_placeholder_is_refused_naming_the_known_ones() {
        let why = format_err("%z");
        assert_eq!(
            why,
            "%z is unknown; fieldgate sub knows %t %p %q %r %l %x %X and %%"
        );
        let e = OutputFormat::parse("%z").unwrap_err().to_string();
        assert!(e.starts_with("-F: %z is unknown"), "{e}");
    }

    #[test]
    fn a_mosquitto_placeholder_we_lack_is_called_unsupported() {
        for p in ["%m", "%I", "%j", "%J", "%U", "%P"] {
            assert!(format_err(p).contains("is not supported"), "{p}");
        }
    }

    #[test]
    fn field_widths_are_refused() {
        for f in ["%10t", "%-5p", "%.3t", "%05l"] {
            assert!(format_err(f).contains("field widths"), "{f}");
        }
    }

    #[test]
    fn a_trailing_percent_or_backslash_is_refused() {
        assert!(format_err("abc%").contains("lone %"));
        assert!(format_err("abc\\").contains("lone \\"));
    }

    #[test]
    fn an_unknown_escape_is_refused() {
        assert!(format_err("\\q").starts_with("\\q is unknown"));
    }

    #[test]
    fn time_sequences_are_refused_but_a_doubled_at_sign_is_an_at_sign() {
        assert!(format_err("@Y-@m").contains("time sequences"));
        assert!(format_err("a@").contains("time sequences"));
        assert!(OutputFormat::parse("me@@host").is_ok());
    }

    #[test]
    fn an_empty_format_prints_only_the_newline() {
        assert_eq!(show(&["-F", ""]), b"\n");
    }
}
