//! `fieldgate run` as systemd runs it (`Type=notify`): `READY=1` with a status line once
//! it serves, `WATCHDOG=1` at half of `WATCHDOG_USEC` while healthy, and on SIGTERM
//! `STOPPING=1`, `offline` availability on the upstream broker, and a clean exit within
//! the shutdown bound. The notify socket is the test's own datagram socket.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::gateway_run::receive;
use crate::support::{KillOnDrop, Mosquitto, TempDir, require_peer};

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
