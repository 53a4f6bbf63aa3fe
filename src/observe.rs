//! Where the library says what went wrong at run time (a journal write failing, a device
//! gone): stderr for now, which systemd puts in the journal; the journal logger proper
//! comes with the systemd work. Saying it must never fail the caller: a closed stderr
//! is ignored, where `eprintln!` would panic.

use std::io::Write;

/// Writes one line to stderr, ignoring failure.
pub fn warn(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{message}");
}
