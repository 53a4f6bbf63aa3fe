//! Modbus peers for tests: a pymodbus slave (`modbus_peer.py`, next to this file) as a
//! Modbus TCP server, an RTU slave on a pty, or an RTU-over-TCP server, whose stdout is
//! collected line by line so a test can wait for what the peer did (`wait_for_line`);
//! and a socat pty pair (`PtyPair`) to put an RTU bus between the gateway and the peer.
//! Everything started here is killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::{KillOnDrop, PEER_TIMEOUT, TempDir, python, wait_until};

/// A running `modbus_peer.py`.
pub struct ModbusPeer {
    // Field order: the process is killed before its output collector is dropped.
    child: KillOnDrop,
    spec: serde_json::Value,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    port: Option<u16>,
}

impl ModbusPeer {
    /// Starts the peer with `spec` (see `modbus_peer.py`) and waits until it serves.
    /// Gate on `require_peer("pymodbus")`.
    pub fn start(spec: serde_json::Value) -> ModbusPeer {
        ModbusPeer::try_start(spec).unwrap_or_else(|why| panic!("{why}"))
    }

    /// Starts the peer, or says why it exited before serving.
    fn try_start(spec: serde_json::Value) -> Result<ModbusPeer, String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/modbus_peer.py");
        let python = python().expect("no test Python: run `bash tests/run.sh`");
        let mut child = Command::new(python)
            .arg(&script)
            .arg(spec.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start modbus_peer.py");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let child = KillOnDrop(child);
        let lines = collect(stdout);
        let stderr = collect(stderr);
        let mut peer = ModbusPeer {
            child,
            spec,
            lines,
            stderr,
            port: None,
        };
        let deadline = std::time::Instant::now() + PEER_TIMEOUT;
        while peer.count(|l| l.starts_with("LISTENING")) == 0 {
            let exited = peer.child.0.try_wait().ok().flatten();
            if exited.is_some() || std::time::Instant::now() >= deadline {
                // Let the collectors catch the last lines.
                thread::sleep(Duration::from_millis(100));
                return Err(format!(
                    "the Modbus peer did not start ({exited:?})\n{}",
                    peer.output()
                ));
            }
            thread::sleep(super::POLL_INTERVAL);
        }
        peer.port = peer
            .lines()
            .iter()
            .find_map(|l| l.strip_prefix("LISTENING ")?.parse().ok());
        Ok(peer)
    }

    fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.lines().join("\n"),
            self.stderr.lock().unwrap().join("\n")
        )
    }

    /// The TCP port the peer listens on (tcp and rtu-over-tcp modes).
    pub fn port(&self) -> u16 {
        self.port.expect("the peer listens on TCP")
    }

    /// Kills the peer and returns its spec with its port filled in, for `start_again`.
    pub fn stop(self) -> serde_json::Value {
        let mut spec = self.spec.clone();
        if let Some(port) = self.port {
            spec["port"] = port.into();
        }
        spec
    }

    /// Starts a peer with `spec` from `stop`, on the port the stopped one had. The port
    /// was just released and asyncio listens with SO_REUSEADDR, but a slow kernel gets a
    /// few tries.
    pub fn start_again(spec: serde_json::Value) -> ModbusPeer {
        let mut failures = Vec::new();
        for _ in 0..5 {
            match ModbusPeer::try_start(spec.clone()) {
                Ok(peer) => return peer,
                Err(why) => failures.push(why),
            }
        }
        panic!("the Modbus peer did not restart:\n{}", failures.join("\n"));
    }

    /// Everything the peer has printed on stdout so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// How many stdout lines satisfy `matches`.
    pub fn count(&self, matches: impl Fn(&str) -> bool) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| matches(l))
            .count()
    }

    /// Waits (at most `PEER_TIMEOUT`) for a stdout line satisfying `matches`; panics
    /// with the peer's output otherwise.
    pub fn wait_for_line(&self, what: &str, matches: impl Fn(&str) -> bool) {
        self.wait_for_count(what, 1, matches);
    }

    /// Waits (at most `PEER_TIMEOUT`) until `n` stdout lines satisfy `matches`.
    pub fn wait_for_count(&self, what: &str, n: usize, matches: impl Fn(&str) -> bool) {
        let deadline = std::time::Instant::now() + PEER_TIMEOUT;
        while self.count(&matches) < n {
            if std::time::Instant::now() >= deadline {
                panic!("timed out waiting for {what}\n{}", self.output());
            }
            thread::sleep(super::POLL_INTERVAL);
        }
    }
}

/// Collects a pipe's lines on a thread.
fn collect(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// Two connected ptys made by socat: `master` for the bus, `slave` for the peer.
pub struct PtyPair {
    child: KillOnDrop,
    pub master: PathBuf,
    pub slave: PathBuf,
}

impl PtyPair {
    /// Starts socat with its two ptys linked as `<dir>/master` and `<dir>/slave`.
    /// Gate on `require_peer("socat")`.
    pub fn start(dir: &TempDir) -> PtyPair {
        let (master, slave) = (dir.path().join("master"), dir.path().join("slave"));
        Self::start_at(master, slave)
    }

    /// Like `start`, with the links at the given paths (replacing what is there).
    pub fn start_at(master: PathBuf, slave: PathBuf) -> PtyPair {
        let _ = std::fs::remove_file(&master);
        let _ = std::fs::remove_file(&slave);
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", master.display()))
            .arg(format!("pty,raw,echo=0,link={}", slave.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat starts");
        let child = KillOnDrop(child);
        wait_until(Duration::from_secs(10), "socat's ptys", || {
            master.exists() && slave.exists()
        });
        PtyPair {
            child,
            master,
            slave,
        }
    }
}
