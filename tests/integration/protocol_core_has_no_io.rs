//! Keeps the MQTT protocol core sans-IO: packet types, codec, topics, strings and session
//! state must not reach for tokio, sockets, files, clocks, threads or processes, so that
//! they stay deterministic and testable without a runtime. The IO drivers live elsewhere.
//!
//! The check is textual: comments are stripped first (a doc comment may explain why tokio
//! is not used), string literals are kept so that "//" inside one does not hide code.

use std::fmt;
use std::path::{Path, PathBuf};

/// The core files: they must exist, or the check would pass by checking nothing.
const REQUIRED: &[&str] = &[
    "src/mqtt/packet.rs",
    "src/mqtt/codec.rs",
    "src/mqtt/topic.rs",
];
/// Core files that are checked when present.
const OPTIONAL: &[&str] = &["src/mqtt/string.rs"];
/// Every `.rs` file below this directory is checked when the directory exists.
const SESSION_DIR: &str = "src/mqtt/session";

/// What the core must not mention, and why. A pattern that starts with an identifier
/// character only matches at the start of a word, so `MyTokio` is not `tokio`; the end is
/// left open on purpose, so `tokio_util` and `SystemTimeError` are caught too.
const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio", "an async runtime belongs in the IO drivers"),
    (
        "async",
        "async code needs an executor; the core is called synchronously",
    ),
    (".await", "awaiting means the core waits on IO"),
    ("std::net", "sockets belong in the IO drivers"),
    ("TcpStream", "sockets belong in the IO drivers"),
    ("TcpListener", "sockets belong in the IO drivers"),
    ("UdpSocket", "sockets belong in the IO drivers"),
    ("std::fs", "files belong in the IO drivers"),
    ("File::", "files belong in the IO drivers"),
    (
        "SystemTime",
        "the caller passes time in; the core reads no clock",
    ),
    (
        "Instant::now",
        "the caller passes time in; the core reads no clock",
    ),
    ("thread::sleep", "the core never blocks"),
    ("std::process", "the core starts no processes"),
];

/// One forbidden mention in one file.
struct Finding {
    line: usize,
    pattern: &'static str,
    why: &'static str,
    text: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: `{}` ({}): {}",
            self.line,
            self.pattern,
            self.why,
            self.text.trim()
        )
    }
}

/// Replaces every comment in Rust `source` with spaces, keeping newlines so that line
/// numbers still point at the original. Understands nested block comments, string and
/// raw string literals (whose contents stay, so they are still checked) and tells char
/// literals from lifetimes, because a `"` or `/` in any of those could otherwise start a
/// phantom string or comment and hide the rest of the file.
fn strip_comments(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            // Rust block comments nest.
            let mut depth = 0usize;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == '"' {
            // An ordinary (or b"", c"") string: copy it, skipping escaped characters.
            out.push(c);
            i += 1;
            while i < chars.len() {
                out.push(chars[i]);
                if chars[i] == '\\' && i + 1 < chars.len() {
                    out.push(chars[i + 1]);
                    i += 2;
                    continue;
                }
                i += 1;
                if chars[i - 1] == '"' {
                    break;
                }
            }
        } else if let Some(end) = raw_string_end(&chars, i, is_ident) {
            out.extend(&chars[i..end]);
            i = end;
        } else if c == '\'' {
            // 'x', '\n', '\u{..}' are char literals; 'a (no closing quote right after one
            // character) is a lifetime or a label and is left as it is.
            if next == Some('\\') {
                // Skip the backslash and the escaped character, which may itself be a quote.
                let mut j = i + 3;
                while j < chars.len() && chars[j] != '\'' && chars[j] != '\n' {
                    j += 1;
                }
                let end = (j + 1).min(chars.len());
                out.extend(&chars[i..end]);
                i = end;
            } else if chars.get(i + 2) == Some(&'\'') {
                out.extend(&chars[i..i + 3]);
                i += 3;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// If a raw string literal (`r"…"`, `r#"…"#`, `br"…"`, `cr"…"`) starts at `i`, the index
/// just past it. `r#ident` (a raw identifier) is not a string.
fn raw_string_end(chars: &[char], i: usize, is_ident: impl Fn(char) -> bool) -> Option<usize> {
    let starts_word = |k: usize| k == 0 || !is_ident(chars[k - 1]);
    let r = match chars[i] {
        'r' if starts_word(i) => i,
        'b' | 'c' if starts_word(i) && chars.get(i + 1) == Some(&'r') => i + 1,
        _ => return None,
    };
    let mut j = r + 1;
    while chars.get(j) == Some(&'#') {
        j += 1;
    }
    if chars.get(j) != Some(&'"') {
        return None;
    }
    let hashes = j - r - 1;
    j += 1;
    while j < chars.len() {
        if chars[j] == '"' && (1..=hashes).all(|h| chars.get(j + h) == Some(&'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(chars.len())
}

/// Every forbidden mention in the code (not the comments) of `source`.
/// Keywords among the patterns: they match only as whole words, so a field named
/// `awaiting` or `asynchronous` is not taken for `.await` or `async`.
const KEYWORDS: &[&str] = &["async", ".await"];

fn forbidden_mentions(source: &str) -> Vec<Finding> {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let code = strip_comments(source);
    let mut findings = Vec::new();
    for (index, line) in code.lines().enumerate() {
        for &(pattern, why) in FORBIDDEN {
            let needs_word_start = pattern.starts_with(is_ident);
            let needs_word_end = KEYWORDS.contains(&pattern);
            let hit = line.match_indices(pattern).any(|(at, _)| {
                let starts =
                    !needs_word_start || !line[..at].chars().next_back().is_some_and(is_ident);
                let after = &line[at + pattern.len()..];
                let ends = !needs_word_end || !after.chars().next().is_some_and(is_ident);
                starts && ends
            });
            if hit {
                findings.push(Finding {
                    line: index + 1,
                    pattern,
                    why,
                    // Show the original line, comments and all, as the author wrote it.
                    text: source.lines().nth(index).unwrap_or_default().to_owned(),
                });
            }
        }
    }
    findings
}

/// All `.rs` files below `dir`, in a stable order.
fn rust_files_under(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files_under(&path, found)?;
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
    Ok(())
}

#[test]
fn the_protocol_core_mentions_no_tokio_sockets_files_clocks_or_processes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut problems = Vec::new();
    let mut files = Vec::new();
    for rel in REQUIRED {
        let path = root.join(rel);
        if path.is_file() {
            files.push(path);
        } else {
            problems.push(format!("{rel}: missing; it is part of the protocol core"));
        }
    }
    files.extend(
        OPTIONAL
            .iter()
            .map(|rel| root.join(rel))
            .filter(|p| p.is_file()),
    );
    let session = root.join(SESSION_DIR);
    if session.is_dir() {
        rust_files_under(&session, &mut files).unwrap();
    }

    for path in &files {
        let shown = path.strip_prefix(root).unwrap_or(path).display();
        let source = std::fs::read_to_string(path).unwrap();
        problems.extend(
            forbidden_mentions(&source)
                .iter()
                .map(|f| format!("{shown}:{f}")),
        );
    }
    assert!(
        problems.is_empty(),
        "the sans-IO protocol core must not do IO:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_flags_tokio_used_in_code() {
    let findings = forbidden_mentions("fn f() {\n    tokio::spawn(async move {});\n}\n");
    let patterns: Vec<_> = findings.iter().map(|f| (f.line, f.pattern)).collect();
    assert_eq!(patterns, [(2, "tokio"), (2, "async")]);
}

#[test]
fn the_checker_flags_each_kind_of_io() {
    for snippet in [
        "use std::net::TcpStream;",
        "let f = std::fs::read(p);",
        "let f = File::open(p);",
        "let t = SystemTime::now();",
        "let t = std::time::Instant::now();",
        "std::thread::sleep(d);",
        "std::process::exit(1);",
        "let x = fut.await;",
        "async fn f() {}",
        "use tokio_util::codec::Decoder;",
    ] {
        assert!(!forbidden_mentions(snippet).is_empty(), "{snippet:?}");
    }
}

#[test]
fn the_checker_ignores_words_that_appear_only_in_comments() {
    let source = r#"//! Never uses tokio or std::fs.
/// Unlike a tokio codec, this one is sans-IO.
fn f() -> u8 { 1 } // not SystemTime either
/* a block about std::net
   /* nested: Instant::now */ still a comment: thread::sleep */
fn g() {}
/** tokio */
"#;
    let findings: Vec<String> = forbidden_mentions(source)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(findings.is_empty(), "{findings:?}");
}

#[test]
fn the_checker_ignores_identifiers_that_merely_end_with_a_forbidden_word() {
    assert!(forbidden_mentions("let not_tokio = MySystemTime::default();").is_empty());
}

#[test]
fn the_checker_takes_keywords_only_as_whole_words() {
    assert!(forbidden_mentions("self.awaiting.insert(id, r); let asynchronous = 1;").is_empty());
    assert_eq!(forbidden_mentions("let v = f.await?;").len(), 1);
}

#[test]
fn the_checker_does_not_take_slashes_in_a_string_for_a_comment() {
    let findings = forbidden_mentions(
        "let f = \"a//b\"; tokio::spawn(x);\nlet g = \"/*\";\nlet h = std::fs::read(p);\nlet k = \"*/\";",
    );
    let lines: Vec<_> = findings.iter().map(|f| f.line).collect();
    assert_eq!(lines, [1, 3]);
}

#[test]
fn the_checker_tells_char_literals_and_raw_strings_from_comments() {
    let source = concat!(
        "let q = '\"'; tokio::spawn(x);\n",
        "fn f<'a>(s: &'a str) -> bool { s.split('/').count() > 0 } // SystemTime\n",
        "let r = r#\"/* \"# ; std::fs::read(p);\n",
        "let e = '\\''; let n = std::net::Ipv4Addr::LOCALHOST;\n",
    );
    let found: Vec<_> = forbidden_mentions(source)
        .iter()
        .map(|f| (f.line, f.pattern))
        .collect();
    assert_eq!(found, [(1, "tokio"), (3, "std::fs"), (4, "std::net")]);
}

#[test]
fn the_checker_reports_the_original_line() {
    let findings = forbidden_mentions("\n\nlet t = Instant::now(); // when\n");
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].line, 3);
    assert_eq!(
        findings[0].to_string(),
        "3: `Instant::now` (the caller passes time in; the core reads no clock): \
         let t = Instant::now(); // when"
    );
}
