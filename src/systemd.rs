//! Telling systemd how the service is doing, with the `sd_notify` protocol: one datagram
//! of `KEY=value` lines to the socket named by `$NOTIFY_SOCKET` (`READY=1` once serving,
//! `STOPPING=1`, `RELOADING=1`, `STATUS=` a one-line summary, `WATCHDOG=1` while
//! healthy), and the watchdog interval systemd asks for (`$WATCHDOG_USEC`). Outside
//! systemd every call is a no-op. It owns no policy: the caller decides when it is
//! healthy or ready.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where notifications go: systemd's socket, or nowhere.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
}

#[derive(Debug)]
enum Target {
    Path(PathBuf),
    /// `@name`: a socket in Linux's abstract namespace.
    Abstract(Vec<u8>),
}

impl Notifier {
    /// The notifier systemd set up for this process (`$NOTIFY_SOCKET`), or a silent one.
    pub fn from_env() -> Notifier {
        Notifier::to(std::env::var_os("NOTIFY_SOCKET").map(PathBuf::from))
    }

    /// A notifier sending to `socket` (`None`: silent).
    pub fn to(socket: Option<PathBuf>) -> Notifier {
        let target = socket.and_then(|path| {
            let bytes = path.as_os_str().as_encoded_bytes();
            match bytes.split_first() {
                None => None,
                Some((b'@', name)) => Some(Target::Abstract(name.to_vec())),
                Some(_) => Some(Target::Path(path)),
            }
        });
        Notifier { target }
    }

    /// Whether systemd listens (a `Type=notify` service).
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (newline-separated `KEY=value` lines). `Ok(false)` outside systemd.
    pub fn notify(&self, state: &str) -> io::Result<bool> {
        let Some(target) = &self.target else {
            return Ok(false);
        };
        let socket = UnixDatagram::unbound()?;
        match target {
            Target::Path(path) => socket.send_to(state.as_bytes(), path)?,
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)?
            }
        };
        Ok(true)
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) -> io::Result<bool> {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) -> io::Result<bool> {
        self.notify("STOPPING=1\nSTATUS=stopping")
    }

    /// `STATUS=`: what `systemctl status` shows.
    pub fn status(&self, status: &str) -> io::Result<bool> {
        self.notify(&format!("STATUS={}", one_line(status)))
    }

    /// `WATCHDOG=1`: alive and well.
    pub fn watchdog(&self) -> io::Result<bool> {
        self.notify("WATCHDOG=1")
    }
}

/// A status is one line: anything after a line break would be read as another key.
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

/// How often to pet the watchdog: half of `$WATCHDOG_USEC` (as sd_watchdog_enabled
/// advises), if it is set for this process (`$WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok()?;
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(&usec, pid.as_deref(), std::process::id())
}

fn watchdog_interval_from(usec: &str, pid: Option<&str>, own: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own)
    {
        return None;
    }
    let usec: u64 = usec.trim().parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_arrive_as_one_datagram_each_and_a_status_stays_one_line() {
        let dir = std::env::temp_dir().join(format!("fieldgate-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let systemd = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::to(Some(path.clone()));
        assert!(notifier.is_active());
        assert!(notifier.ready("2 devices\nup").unwrap());
        assert!(notifier.watchdog().unwrap());
        assert!(notifier.stopping().unwrap());
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        for _ in 0..3 {
            let n = systemd.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(
            got,
            [
                "READY=1\nSTATUS=2 devices up",
                "WATCHDOG=1",
                "STOPPING=1\nSTATUS=stopping"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_abstract_socket_is_reached_by_its_name() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("fieldgate-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd = UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier::to(Some(PathBuf::from(format!("@{name}"))));
        assert!(notifier.status("polling").unwrap());
        let mut buf = [0u8; 64];
        let n = systemd.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=polling");
    }

    #[test]
    fn outside_systemd_nothing_is_sent_and_nothing_fails() {
        let notifier = Notifier::to(None);
        assert!(!notifier.is_active());
        assert!(!notifier.ready("x").unwrap());
    }

    #[test]
    fn the_watchdog_is_petted_at_half_its_interval_and_only_for_its_process() {
        assert_eq!(
            watchdog_interval_from("10000000", None, 7),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            watchdog_interval_from("10000000", Some("7"), 7),
            Some(Duration::from_secs(5))
        );
        assert_eq!(watchdog_interval_from("10000000", Some("8"), 7), None);
        assert_eq!(watchdog_interval_from("0", None, 7), None);
        assert_eq!(watchdog_interval_from("soon", None, 7), None);
    }
}
