//! `fieldgate run` as systemd runs it (`Type=notify`): `READY=1` with a status line once
//! it serves, `WATCHDOG=1` at half of `WATCHDOG_USEC` while healthy, and on SIGTERM
//! `STOPPING=1`, `offline` availability on the upstream broker, and a clean exit within
//! the shutdown bound. The notify socket is the test's own datagram socket.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::gateway_run::receive;
use crate::support::{KillOnDrop, Mosquitto, TempDir, require_peer, require_peers};

/// The next notification, within `within`.
fn next(socket: &UnixDatagram, within: Duration) -> String {
    socket.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn under_systemd_it_says_ready_pets_the_watchdog_and_stops_cleanly_on_sigterm() {
    if !require_peer("mosquitto") {
        return;
    }
    let upstream = Mosquitto::start();
    let dir = TempDir::new("gateway-service");
    let socket_path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    let config = format!(
        "gateway:\n  id: gw9\n  state_dir: {}\nbroker:\n  listeners:\n    - bind: 127.0.0.1:0\nupstream:\n  url: mqtt://127.0.0.1:{}\ndevices:\n  - id: demo\n    source: sim\n    poll: 100ms\n    points:\n      - id: level\n        sim: counter\n",
        dir.path().join("state").display(),
        upstream.port()
    );
    let file = dir.path().join("fieldgate.yaml");
    std::fs::write(&file, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args(["run", "-c"])
        .arg(&file)
        .env("NOTIFY_SOCKET", &socket_path)
        // Petted every 100 ms.
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("fieldgate run starts");
    let mut running = KillOnDrop(child);

    let ready = next(&systemd, Duration::from_secs(15));
    assert!(
        ready.starts_with("READY=1\nSTATUS=broker on 127.0.0.1:"),
        "{ready:?}"
    );
    for _ in 0..3 {
        let pet = next(&systemd, Duration::from_secs(5));
        assert!(pet.starts_with("WATCHDOG=1\nSTATUS="), "{pet:?}");
    }
    let up = upstream.port().to_string();
    let online = receive(&up, &["fieldgate/gw9/availability"], 1);
    assert_eq!(online, ["fieldgate/gw9/availability online"]);

    let status = Command::new("kill")
        .args(["-TERM", &running.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Pets already in flight may come first.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let said = next(&systemd, Duration::from_secs(10));
        if said.starts_with("STOPPING=1") {
            break;
        }
        assert!(said.starts_with("WATCHDOG=1"), "{said:?}");
        assert!(Instant::now() < deadline, "no STOPPING=1");
    }
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = running.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
    let offline = receive(&up, &["fieldgate/gw9/availability"], 1);
    assert_eq!(offline, ["fieldgate/gw9/availability offline"]);
}

/// `fieldgate run -c file`, its stderr lines collected as they come.
fn run_collecting_stderr(
    file: &std::path::Path,
) -> (KillOnDrop, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let child = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args(["run", "-c"])
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fieldgate run starts");
    // Owned by the guard at once: a failed assertion must not leave it running.
    let mut running = KillOnDrop(child);
    let stderr = collect_stderr(&mut running.0);
    (running, stderr)
}

/// Lines a child writes to stderr, collected on a thread.
fn collect_stderr(
    child: &mut std::process::Child,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::BufRead;
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&lines);
    let stderr = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// Waits for the `broker listening on ADDR` line; its port.
fn broker_port(stderr: &std::sync::Mutex<Vec<String>>) -> String {
    let port = || {
        stderr.lock().unwrap().iter().find_map(|l| {
            let addr = l.split("broker listening on ").nth(1)?;
            Some(addr.rsplit(':').next()?.trim().to_string())
        })
    };
    crate::support::wait_until(Duration::from_secs(15), "the broker's port", || {
        port().is_some()
    });
    port().expect("seen above")
}

/// Sends SIGHUP (a reload) to `fieldgate run`.
fn hangup(running: &KillOnDrop) {
    let status = Command::new("kill")
        .args(["-HUP", &running.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn device(id: &str) -> String {
    format!(
        "  - id: {id}\n    source: sim\n    poll: 100ms\n    points:\n      - id: count\n        sim: counter\n"
    )
}

#[test]
fn sighup_applies_a_valid_file_to_the_devices_that_changed_and_keeps_running_on_an_invalid_one() {
    if !require_peer("mosquitto_sub") {
        return;
    }
    let dir = TempDir::new("gateway-reload");
    let file = dir.path().join("fieldgate.yaml");
    let head = "gateway:\n  id: gw10\nbroker:\n  listeners:\n    - bind: 127.0.0.1:0\ndevices:\n";
    std::fs::write(&file, format!("{head}{}", device("a"))).unwrap();
    let (running, stderr) = run_collecting_stderr(&file);
    let said = |what: &str| stderr.lock().unwrap().iter().any(|l| l.contains(what));
    let port = broker_port(&stderr);
    let count = |device: &str| -> i64 {
        let got = receive(&port, &[&format!("fieldgate/gw10/{device}/count")], 1);
        crate::gateway_run::json(&got[0])["value"].as_i64().unwrap()
    };
    let before = count("a");

    // Valid: `b` added, `a` unchanged (its counter goes on instead of starting again).
    std::fs::write(&file, format!("{head}{}{}", device("a"), device("b"))).unwrap();
    hangup(&running);
    crate::support::wait_until(Duration::from_secs(15), "the reload report", || {
        said("reloaded: devices started: b; restarted: none; stopped: none")
    });
    assert!(count("b") >= 1);
    let after = count("a");
    assert!(
        after > before,
        "device a was restarted: {before} then {after}"
    );

    // Invalid: refused with its problems, everything keeps running.
    std::fs::write(
        &file,
        format!("{head}{}  - id: c\n    source: nowhere\n", device("a")),
    )
    .unwrap();
    hangup(&running);
    crate::support::wait_until(Duration::from_secs(15), "the refusal", || {
        said("reload refused") && said("devices[1].source")
    });
    assert!(count("b") > 1, "device b stopped after a refused reload");

    // Valid again: `a` removed, so its availability goes offline; the log level is
    // applied in place, and a broker change is named as waiting for a restart.
    let changed = head
        .replace("id: gw10\n", "id: gw10\n  log_level: warn\n")
        .replace("listeners:\n", "sys_interval: 5s\n  listeners:\n");
    std::fs::write(&file, format!("{changed}{}", device("b"))).unwrap();
    hangup(&running);
    crate::support::wait_until(Duration::from_secs(15), "a stopped", || said("stopped: a"));
    assert!(
        said("applied: gateway.log_level"),
        "{:?}",
        stderr.lock().unwrap()
    );
    assert!(
        said("changed but applied only at the next start: broker"),
        "{:?}",
        stderr.lock().unwrap()
    );
    let got = receive(&port, &["fieldgate/gw10/a/availability"], 1);
    assert_eq!(got, ["fieldgate/gw10/a/availability offline"]);
}

/// The spool's directory held by another process (its lock taken with flock(1), as a
/// second gateway on the same state directory would): a reload that adds an upstream
/// cannot open the spool, says so, and the previous settings keep publishing.
#[test]
fn a_reload_whose_upstream_cannot_start_keeps_the_previous_settings_running() {
    if !require_peers(&["mosquitto_sub", "flock"]) {
        return;
    }
    let dir = TempDir::new("gateway-reload-fallback");
    let file = dir.path().join("fieldgate.yaml");
    let state = dir.path().join("state");
    let head = format!(
        "gateway:\n  id: gw12\n  state_dir: {}\nbroker:\n  listeners:\n    - bind: 127.0.0.1:0\n",
        state.display()
    );
    std::fs::write(&file, format!("{head}devices:\n{}", device("a"))).unwrap();
    let (running, stderr) = run_collecting_stderr(&file);
    let said = |what: &str| stderr.lock().unwrap().iter().any(|l| l.contains(what));
    let port = broker_port(&stderr);
    std::fs::create_dir_all(state.join("spool")).unwrap();
    let mut holder = KillOnDrop(
        Command::new("flock")
            .arg("-n")
            .arg(state.join("spool/lock"))
            .args(["-c", "echo locked; exec sleep 600"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("flock starts"),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    std::fs::write(
        &file,
        format!(
            "{head}upstream:\n  url: mqtt://127.0.0.1:1\ndevices:\n{}",
            device("a")
        ),
    )
    .unwrap();
    hangup(&running);
    crate::support::wait_until(Duration::from_secs(15), "the reload report", || {
        said("NOT applied: upstream:") && said("in use by another process")
    });
    // Still publishing on the previous settings, on the same broker.
    let count = || -> i64 {
        let got = receive(&port, &["fieldgate/gw12/a/count"], 1);
        crate::gateway_run::json(&got[0])["value"].as_i64().unwrap()
    };
    let first = count();
    crate::support::wait_until(Duration::from_secs(15), "device a counting on", || {
        count() > first
    });
    let mut running = running;
    assert!(
        running.0.try_wait().unwrap().is_none(),
        "fieldgate run exited"
    );
}

/// `fieldgate passwd -b FILE USER PASSWORD` (creating the file with `-c`).
fn passwd(file: &std::path::Path, user: &str, password: &str, create: bool) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fieldgate"));
    command.arg("passwd");
    if create {
        command.arg("-c");
    }
    let out = command
        .arg("-b")
        .arg(file)
        .args([user, password])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// One message on `topic` as `user`, or the refusal's exit status.
fn receive_as(port: &str, user: &str, password: &str, topic: &str) -> Result<String, i32> {
    let out = crate::support::run_with_timeout(
        {
            let mut c = Command::new("mosquitto_sub");
            c.args(["-p", port, "-u", user, "-P", password, "-t", topic])
                .args(["-v", "-C", "1", "-W", "10"]);
            c
        },
        Duration::from_secs(15),
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(out.status.code().unwrap_or(-1))
    }
}

/// With a password file the broker refuses anonymous clients, yet the gateway's own
/// client gets in (internal credentials); a reload re-reads the password file, so a user
/// added to it may connect without a restart.
#[test]
fn with_a_password_file_the_gateway_still_publishes_and_a_reload_lets_new_users_in() {
    if !require_peer("mosquitto_sub") {
        return;
    }
    let dir = TempDir::new("gateway-passwd");
    let (file, users) = (dir.path().join("fieldgate.yaml"), dir.path().join("passwd"));
    passwd(&users, "alice", "alice-secret", true);
    std::fs::write(
        &file,
        format!(
            "gateway:\n  id: gw13\nbroker:\n  listeners:\n    - bind: 127.0.0.1:0\n  password_file: passwd\ndevices:\n{}",
            device("a")
        ),
    )
    .unwrap();
    let (running, stderr) = run_collecting_stderr(&file);
    let said = |what: &str| stderr.lock().unwrap().iter().any(|l| l.contains(what));
    let port = broker_port(&stderr);
    let topic = "fieldgate/gw13/a/count";
    let got = receive_as(&port, "alice", "alice-secret", topic).expect("alice gets telemetry");
    assert!(got.starts_with(topic), "{got}");
    assert!(
        receive_as(&port, "bob", "bob-secret", topic).is_err(),
        "bob is not a user yet"
    );
    passwd(&users, "bob", "bob-secret", false);
    hangup(&running);
    crate::support::wait_until(Duration::from_secs(15), "the reload report", || {
        said("applied: broker access")
    });
    let got = receive_as(&port, "bob", "bob-secret", topic).expect("bob gets in after the reload");
    assert!(got.starts_with(topic), "{got}");
}

/// One HTTP GET with a plain socket; the whole reply.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: fieldgate\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

#[test]
fn metrics_health_and_the_status_topic_report_devices_and_the_broker() {
    if !require_peer("mosquitto_sub") {
        return;
    }
    let dir = TempDir::new("gateway-metrics");
    let file = dir.path().join("fieldgate.yaml");
    std::fs::write(
        &file,
        format!(
            "gateway:\n  id: gw11\nbroker:\n  listeners:\n    - bind: 127.0.0.1:0\nmetrics:\n  bind: 127.0.0.1:0\ndevices:\n{}",
            device("tank")
        ),
    )
    .unwrap();
    let (_running, stderr) = run_collecting_stderr(&file);
    let find = |prefix: &str| -> Option<String> {
        stderr
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| l.split(prefix).nth(1).map(str::to_string))
    };
    crate::support::wait_until(Duration::from_secs(15), "the metrics address", || {
        find("metrics on http://").is_some()
    });
    let metrics = find("metrics on http://").unwrap().replace("/metrics", "");
    let port = find("broker listening on ")
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();

    // The device has been polled, and the status is retained on the broker.
    let status = receive(&port, &["fieldgate/gw11/status"], 1);
    let status = crate::gateway_run::json(&status[0]);
    assert_eq!(status["healthy"], true, "{status}");
    assert!(
        status["summary"].as_str().unwrap().contains("1 devices"),
        "{status}"
    );
    crate::support::wait_until(Duration::from_secs(10), "tank's polls in /metrics", || {
        let reply = http_get(&metrics, "/metrics");
        reply
            .lines()
            .find_map(|l| l.strip_prefix("fieldgate_device_polls_total{device=\"tank\"} "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .is_some_and(|n| n >= 2)
    });
    let reply = http_get(&metrics, "/metrics");
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    assert!(
        reply.contains("# TYPE fieldgate_broker_connections gauge"),
        "{reply}"
    );
    assert!(
        reply.contains("fieldgate_device_last_success_timestamp_seconds{device=\"tank\"}"),
        "{reply}"
    );
    assert!(http_get(&metrics, "/healthz").starts_with("HTTP/1.1 200 OK"));
    assert!(http_get(&metrics, "/other").starts_with("HTTP/1.1 404"));
}
