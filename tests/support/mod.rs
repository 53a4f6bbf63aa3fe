//! Test peers and helpers shared by the integration tests.
//!
//! Owns: gating on real peers (`require_peer`), a throwaway mosquitto broker on a free
//! loopback port (`Mosquitto`), running inline Python from the test venv (`run_python`),
//! deadline-bounded polling (`wait_until`) and scratch directories (`TempDir`).
//! `tests/run.sh` installs the peers and sets the `FIELDGATE_*` variables read here.

// Not every helper is used by every test module, and all of them compile into one binary.
#![allow(dead_code)]
// A panic in a test helper is a test failure with a message, which is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, File};
use std::future::Future;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod broker;
pub mod modbus;
pub mod proxy;
pub mod tls;

/// How often the polling helpers re-check their condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Default limit for a peer to start or an inline Python script to finish.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// True when `FIELDGATE_REQUIRE_PEERS=1`: a missing peer then fails the test.
pub fn peers_required() -> bool {
    std::env::var("FIELDGATE_REQUIRE_PEERS").is_ok_and(|v| v == "1")
}

/// Gate for a test that needs the real peer `name`: `"mosquitto"`, `"python"` (the test
/// venv), `"paho-mqtt"`, `"pymodbus"`, or any program looked up on PATH. Returns true
/// when it is present. When it is missing: panics under `FIELDGATE_REQUIRE_PEERS=1`,
/// otherwise prints a note to stderr and returns false so the caller returns early.
pub fn require_peer(name: &str) -> bool {
    if peer_present(name) {
        return true;
    }
    if peers_required() {
        panic!(
            "test peer `{name}` is missing but FIELDGATE_REQUIRE_PEERS=1; \
             run `bash tests/run.sh`, which installs the peers and sets the environment"
        );
    }
    eprintln!("skipping: test peer `{name}` is missing (run `bash tests/run.sh` to install it)");
    false
}

/// `require_peer` for each name; true only when all are present.
pub fn require_peers(names: &[&str]) -> bool {
    names.iter().all(|name| require_peer(name))
}

fn peer_present(name: &str) -> bool {
    match name {
        "mosquitto" => mosquitto_bin().is_some(),
        "python" => python().is_some(),
        "paho-mqtt" => python_imports("paho.mqtt.client"),
        "pymodbus" => python_imports("pymodbus"),
        program => find_program(program).is_some(),
    }
}

fn python_imports(module: &str) -> bool {
    let Some(python) = python() else {
        return false;
    };
    Command::new(python)
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Finds an executable by name on PATH, then in /usr/sbin and /usr/bin (daemons such as
/// mosquitto live in sbin, which is not on a non-root PATH).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The mosquitto binary: `FIELDGATE_MOSQUITTO`, else `mosquitto` on PATH or in /usr/sbin.
pub fn mosquitto_bin() -> Option<PathBuf> {
    match std::env::var_os("FIELDGATE_MOSQUITTO") {
        Some(p) => Some(PathBuf::from(p)).filter(|p| is_executable(p)),
        None => find_program("mosquitto"),
    }
}

/// The test venv's Python: `FIELDGATE_TEST_PYTHON`, else `target/test-venv/bin/python`
/// when an earlier `tests/run.sh` left it there.
pub fn python() -> Option<PathBuf> {
    match std::env::var_os("FIELDGATE_TEST_PYTHON") {
        Some(p) => Some(PathBuf::from(p)).filter(|p| is_executable(p)),
        None => Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python"))
            .filter(|p| is_executable(p)),
    }
}

/// Runs an inline Python script (`python -c script args...`) with the test venv's Python
/// and returns its output once it exits; panics with its stderr if it runs past
/// `PEER_TIMEOUT`. Callers gate on `require_peer("python")` first.
pub fn run_python(script: &str, args: &[&str]) -> Output {
    run_python_with_timeout(script, args, PEER_TIMEOUT)
}

/// `run_python` with an explicit time limit.
pub fn run_python_with_timeout(script: &str, args: &[&str], timeout: Duration) -> Output {
    let python = python().expect("no test Python: run `bash tests/run.sh`");
    let mut command = Command::new(python);
    command.arg("-c").arg(script).args(args);
    run_with_timeout(command, timeout)
}

/// Spawns `command` with piped stdout and stderr, polls it until it exits or `timeout`
/// passes, and returns its output. On expiry the child is killed and the helper panics
/// with what the child printed. Output is drained by threads so a chatty child never
/// blocks on a full pipe.
/// A child process that is killed (SIGKILL) and reaped when dropped, so that a failing
/// test leaves nothing running behind it.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `program` with `args` to its end (at most [`PEER_TIMEOUT`]), output captured.
pub fn run_program(program: &str, args: &[&str]) -> Output {
    let mut command = Command::new(program);
    command.args(args);
    run_with_timeout(command, PEER_TIMEOUT)
}

pub fn run_with_timeout(mut command: Command, timeout: Duration) -> Output {
    let description = format!("{command:?}");
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {description}: {e}"));
    wait_child_output(child, timeout)
}

/// Collects a running child's piped stdout/stderr while polling for its exit; kills it and
/// panics with what it printed if it has not exited within `timeout`.
pub fn wait_child_output(mut child: Child, timeout: Duration) -> Output {
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_child(&mut child, timeout);
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "child did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr),
        ),
    }
}

/// Reads a child's pipe to the end on a thread.
fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// Polls `child` until it exits (returns its status) or `timeout` passes (kills and reaps
/// it, returns None).
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on a test child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Polls `cond` every `POLL_INTERVAL` until it returns true; panics naming `what` if it
/// is still false after `deadline`.
pub fn wait_until(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Async `wait_until` for tokio tests: awaits `cond()` every `POLL_INTERVAL` without
/// blocking the runtime.
pub async fn wait_until_async<F, Fut>(deadline: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A fresh directory under `std::env::temp_dir()`, removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a directory whose name is unique to this process, call and instant.
    pub fn new(prefix: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("fieldgate-{prefix}-{}-{n}-{nanos}", std::process::id());
        let path = std::env::temp_dir().join(name);
        fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Returns a loopback port that was free a moment ago (bind port 0, read it, release it).
/// Another process may take it before the caller binds it, so callers retry on conflict.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A real mosquitto broker on 127.0.0.1 with a free port, anonymous access and no
/// persistence (unless `start_persistent`); optionally also a TLS listener on a second free port (`start_tls`).
/// Killed, reaped and its temp dir removed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    port: u16,
    tls_port: Option<u16>,
    log: PathBuf,
    // Removed by its own Drop after `Mosquitto::drop` has killed the child.
    dir: TempDir,
}

impl Mosquitto {
    /// How many fresh ports to try when mosquitto exits at start (e.g. the port was taken).
    const ATTEMPTS: usize = 5;
    /// How long one start may take before it counts as a failure.
    const START_TIMEOUT: Duration = Duration::from_secs(10);

    /// Starts a broker and returns once it accepts TCP connections. Panics (with
    /// mosquitto's log) when it cannot be started. Gate on `require_peer("mosquitto")`.
    pub fn start() -> Mosquitto {
        Self::start_with_config("")
    }

    /// Like `start`, with extra lines appended to the generated mosquitto.conf.
    pub fn start_with_config(extra: &str) -> Mosquitto {
        Self::start_inner(extra, None, false)
    }

    /// Like `start_with_config`, with persistence on (`mosquitto.db` in its temp dir), so
    /// that [`stop`](Self::stop) (SIGTERM, which saves) and [`start_again`](Self::start_again)
    /// keep sessions, queued messages and retained messages.
    pub fn start_persistent(extra: &str) -> Mosquitto {
        Self::start_inner(extra, None, true)
    }

    /// Stops the broker with SIGTERM (mosquitto saves its database on the way out) and
    /// waits for it to exit; the port stays the broker's for [`start_again`](Self::start_again).
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .is_ok_and(|s| s.success());
        if !sent || wait_child(&mut self.child, Self::START_TIMEOUT).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Starts the broker again on the same port with the same configuration (after
    /// [`stop`](Self::stop)) and returns once it accepts connections.
    pub fn start_again(&mut self) {
        let bin = mosquitto_bin().expect("no mosquitto binary: run `bash tests/run.sh`");
        let conf = self.dir.path().join("mosquitto.conf");
        let log = fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .expect("mosquitto's log");
        let log2 = log.try_clone().expect("clone log handle");
        self.child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("mosquitto starts again");
        let addr = self.addr();
        wait_until(Self::START_TIMEOUT, "mosquitto accepting again", || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
    }

    /// Starts a broker with its plain listener (`port`) and a TLS listener (`tls_port`)
    /// that presents `pki.server_cert`, trusts `pki.ca_cert` for client certificates and,
    /// when `require_client_cert`, refuses clients without one. Anonymous access on both.
    pub fn start_tls(pki: &tls::TestPki, require_client_cert: bool) -> Mosquitto {
        Self::start_inner("", Some((pki, require_client_cert)), false)
    }

    fn start_inner(extra: &str, tls: Option<(&tls::TestPki, bool)>, persistent: bool) -> Mosquitto {
        let bin = mosquitto_bin().expect("no mosquitto binary: run `bash tests/run.sh`");
        let mut failures = Vec::new();
        for _ in 0..Self::ATTEMPTS {
            match Self::try_start(&bin, extra, tls, persistent) {
                Ok(broker) => return broker,
                Err(failure) => failures.push(failure),
            }
        }
        panic!(
            "mosquitto ({}) did not start in {} attempts:\n{}",
            bin.display(),
            Self::ATTEMPTS,
            failures.join("\n")
        );
    }

    fn try_start(
        bin: &Path,
        extra: &str,
        tls: Option<(&tls::TestPki, bool)>,
        persistent: bool,
    ) -> Result<Mosquitto, String> {
        let dir = TempDir::new("mosquitto");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let log = dir.path().join("mosquitto.log");
        let persistence = if persistent {
            // Started as root, mosquitto runs as the `mosquitto` user: it must be able
            // to write its database here (it says "Permission denied" on exit, and a
            // restart finds no sessions).
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777))
                .map_err(|e| format!("chmod {}: {e}", dir.path().display()))?;
            format!(
                "persistence true\npersistence_location {}/",
                dir.path().display()
            )
        } else {
            "persistence false".to_string()
        };
        let mut config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}\n\
             log_dest stderr\nlog_type all\n{extra}\n"
        );
        // TLS options are per listener: they apply to the `listener` line before them, so
        // this block comes last. `allow_anonymous` above is global (no
        // `per_listener_settings`), so it covers this listener too.
        let tls_port = tls.map(|(pki, require_client_cert)| {
            let tls_port = std::iter::repeat_with(free_port)
                .find(|&p| p != port)
                .expect("a second free port");
            config.push_str(&format!(
                "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
                 require_certificate {require_client_cert}\n",
                pki.ca_cert.display(),
                pki.server_cert.display(),
                pki.server_key.display(),
            ));
            tls_port
        });
        fs::write(&conf, config).map_err(|e| format!("write {}: {e}", conf.display()))?;
        let log_file = File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let log_file2 = log_file
            .try_clone()
            .map_err(|e| format!("clone log handle: {e}"))?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_file2)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        // From here on, `broker`'s Drop kills the child on every failure path.
        let mut broker = Mosquitto {
            child,
            port,
            tls_port,
            log,
            dir,
        };
        let ports: Vec<u16> = std::iter::once(port).chain(tls_port).collect();
        let deadline = Instant::now() + Self::START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = broker.child.try_wait() {
                return Err(format!(
                    "ports {ports:?}: mosquitto exited with {status}:\n{}",
                    broker.log()
                ));
            }
            let accepting = |p: u16| {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, p));
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            };
            if ports.iter().all(|&p| accepting(p)) {
                // Make sure the listener is ours, not a process that took the port.
                if matches!(broker.child.try_wait(), Ok(None)) {
                    return Ok(broker);
                }
                continue;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "ports {ports:?}: not all accepting connections after {:?}:\n{}",
                    Self::START_TIMEOUT,
                    broker.log()
                ));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The broker's TCP port on 127.0.0.1.
    /// The broker's process id (for benchmarks that read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's address, 127.0.0.1:port.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The TLS listener's port on 127.0.0.1, when started with `start_tls`.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// What mosquitto has logged so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("<no log: {e}>"))
    }

    /// Waits (polling the log, 10 s at most) until mosquitto has acknowledged a SUBSCRIBE
    /// of client `client_id`: from then on, what is published reaches that subscriber.
    pub fn wait_for_suback(&self, client_id: &str) {
        let what = format!("mosquitto's SUBACK to {client_id}");
        wait_until(Duration::from_secs(10), &what, || {
            self.log()
                .lines()
                .any(|l| l.contains("Sending SUBACK to") && l.contains(client_id))
        });
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user and system) of every live thread of process `pid`, summed from
/// `/proc/PID/task/*/schedstat` (nanoseconds, unlike the clock ticks of `/proc/PID/stat`).
/// Threads that have exited drop out; benchmarks measure processes whose threads live for
/// the whole run.
pub fn cpu_time(pid: u32) -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}
