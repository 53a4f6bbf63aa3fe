//! Where the program says what happens at run time: the `log` facade, sent to the
//! systemd journal (with structured fields such as `FIELDGATE_DEVICE=`) when stderr is
//! the journal (`JOURNAL_STREAM`), to stderr otherwise, filtered by a `RUST_LOG`-style
//! spec (`info,fieldgate::modbus=debug`) from the configuration's `gateway.log_level`
//! and the `RUST_LOG` environment variable. Saying something must never fail or panic
//! the caller: a closed stderr or a journal that went away is ignored.

use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

use log::{LevelFilter, Log, Metadata, Record};

/// Set once a logger is installed: until then (library use, tests) warnings go straight
/// to stderr instead of to the facade's no-op logger.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The installed logger's filter, replaceable while it runs (a reload's new
/// `gateway.log_level`): the logger itself can be installed only once per process.
static FILTER: OnceLock<Arc<ArcSwap<LogFilter>>> = OnceLock::new();

/// Which levels are logged, by module: a default and per-module-path overrides, the
/// longest matching prefix winning (`warn,fieldgate::modbus=debug`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter {
    default: LevelFilter,
    modules: Vec<(String, LevelFilter)>,
}

impl Default for LogFilter {
    fn default() -> Self {
        LogFilter {
            default: LevelFilter::Info,
            modules: Vec::new(),
        }
    }
}

/// A log spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a log level spec: a level (error, warn, info, debug, trace, off), \
     optionally followed by module=level pairs, comma-separated"
)]
pub struct LogFilterError(pub String);

impl FromStr for LogFilter {
    type Err = LogFilterError;

    fn from_str(spec: &str) -> Result<LogFilter, LogFilterError> {
        let mut filter = LogFilter::default();
        filter.apply(spec)?;
        Ok(filter)
    }
}

impl LogFilter {
    /// Adds `spec`'s directives over this filter's (`RUST_LOG` over the configuration).
    pub fn apply(&mut self, spec: &str) -> Result<(), LogFilterError> {
        let invalid = || LogFilterError(spec.to_owned());
        for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            match directive.split_once('=') {
                None => match directive.parse::<LevelFilter>() {
                    Ok(level) => self.default = level,
                    // `RUST_LOG=fieldgate::modbus` means "everything from there".
                    Err(_) if is_module_path(directive) => {
                        self.set_module(directive, LevelFilter::Trace);
                    }
                    Err(_) => return Err(invalid()),
                },
                Some((module, level)) => {
                    let module = module.trim();
                    let level = level.trim().parse().map_err(|_| invalid())?;
                    if !is_module_path(module) {
                        return Err(invalid());
                    }
                    self.set_module(module, level);
                }
            }
        }
        Ok(())
    }

    fn set_module(&mut self, module: &str, level: LevelFilter) {
        self.modules.retain(|(m, _)| m != module);
        self.modules.push((module.to_owned(), level));
    }

    /// The level in force for `target` (a module path).
    pub fn level_for(&self, target: &str) -> LevelFilter {
        self.modules
            .iter()
            .filter(|(module, _)| {
                target == module
                    || target
                        .strip_prefix(module.as_str())
                        .is_some_and(|rest| rest.starts_with("::"))
            })
            .max_by_key(|(module, _)| module.len())
            .map_or(self.default, |(_, level)| *level)
    }

    /// The most verbose level any module gets (the facade's global switch).
    fn max(&self) -> LevelFilter {
        self.modules
            .iter()
            .map(|(_, level)| *level)
            .fold(self.default, std::cmp::max)
    }
}

fn is_module_path(text: &str) -> bool {
    !text.is_empty()
        && text
            .split("::")
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_alphanumeric() || c == '_'))
}

/// Where log records went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Journal,
    Stderr,
}

/// Installs the logger for the process (once; later calls keep the first): the journal
/// when systemd connected stderr to it, stderr otherwise.
pub fn init(filter: LogFilter) -> Destination {
    let max = filter.max();
    let filter = Arc::clone(FILTER.get_or_init(|| Arc::new(ArcSwap::from_pointee(filter))));
    let (logger, destination): (Box<dyn Log>, Destination) =
        match systemd_journal_logger::connected_to_journal()
            .then(systemd_journal_logger::JournalLog::new)
        {
            Some(Ok(journal)) => (
                Box::new(Filtered {
                    filter,
                    inner: journal.with_syslog_identifier("fieldgate".to_owned()),
                }),
                Destination::Journal,
            ),
            // Not under systemd, or its journal socket is not there: stderr, which
            // systemd (if any) still collects.
            _ => (
                Box::new(Filtered {
                    filter,
                    inner: Stderr,
                }),
                Destination::Stderr,
            ),
        };
    if log::set_boxed_logger(logger).is_ok() {
        log::set_max_level(max);
        INSTALLED.store(true, Ordering::Release);
    }
    destination
}

/// Replaces the installed logger's filter (nothing happens before [`init`]).
pub fn set_filter(filter: LogFilter) {
    if let Some(current) = FILTER.get() {
        log::set_max_level(filter.max());
        current.store(Arc::new(filter));
    }
}

/// Logs a warning (to stderr while no logger is installed).
pub fn warn(message: std::fmt::Arguments<'_>) {
    if INSTALLED.load(Ordering::Acquire) {
        log::warn!("{message}");
    } else {
        let _ = writeln!(std::io::stderr(), "{message}");
    }
}

/// Logs a notice: something a person watching the service wants to know, not a problem
/// (to stderr while no logger is installed).
pub fn info(message: std::fmt::Arguments<'_>) {
    if INSTALLED.load(Ordering::Acquire) {
        log::info!("{message}");
    } else {
        let _ = writeln!(std::io::stderr(), "{message}");
    }
}

/// Logs a warning about one device, with its id as the journal field
/// `FIELDGATE_DEVICE` (`journalctl FIELDGATE_DEVICE=meter`).
pub fn device_warn(device: &str, message: std::fmt::Arguments<'_>) {
    if INSTALLED.load(Ordering::Acquire) {
        log::warn!(fieldgate_device = device; "{message}");
    } else {
        let _ = writeln!(std::io::stderr(), "{message}");
    }
}

/// A logger behind the module filter.
struct Filtered<L> {
    filter: Arc<ArcSwap<LogFilter>>,
    inner: L,
}

impl<L: Log> Log for Filtered<L> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.filter.load().level_for(metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// One line per record on stderr: the message alone for warnings, errors and notices
/// (what a person reads), with the level and module for debug and trace.
struct Stderr;

impl Log for Stderr {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        let mut err = std::io::stderr().lock();
        let _ = match record.level() {
            log::Level::Error | log::Level::Warn | log::Level::Info => {
                writeln!(err, "{}", record.args())
            }
            level => writeln!(err, "{level} {}: {}", record.target(), record.args()),
        };
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_sets_a_default_and_per_module_levels_the_longest_prefix_winning() {
        let filter: LogFilter = "warn,fieldgate::modbus=debug,fieldgate::modbus::bus=trace"
            .parse()
            .unwrap();
        assert_eq!(filter.level_for("fieldgate::app"), LevelFilter::Warn);
        assert_eq!(filter.level_for("fieldgate::modbus"), LevelFilter::Debug);
        assert_eq!(
            filter.level_for("fieldgate::modbus::value"),
            LevelFilter::Debug
        );
        assert_eq!(
            filter.level_for("fieldgate::modbus::bus"),
            LevelFilter::Trace
        );
        // A prefix of a name is not its parent module.
        assert_eq!(filter.level_for("fieldgate::modbusx"), LevelFilter::Warn);
        assert_eq!(filter.max(), LevelFilter::Trace);
    }

    #[test]
    fn the_environment_overrides_the_configuration_directive_by_directive() {
        let mut filter: LogFilter = "info,fieldgate::mqtt=warn".parse().unwrap();
        filter
            .apply("fieldgate::mqtt=error,fieldgate::app")
            .unwrap();
        assert_eq!(
            filter.level_for("fieldgate::mqtt::broker"),
            LevelFilter::Error
        );
        assert_eq!(filter.level_for("fieldgate::app"), LevelFilter::Trace);
        assert_eq!(filter.level_for("fieldgate::config"), LevelFilter::Info);
    }

    #[test]
    fn nonsense_is_refused_with_the_spec_quoted() {
        for bad in [
            "very-loud",
            "fieldgate=loud",
            "=debug",
            "a b=info",
            "fieldgate::=info",
        ] {
            let e = bad.parse::<LogFilter>().unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
        assert_eq!("".parse::<LogFilter>().unwrap(), LogFilter::default());
    }
}
