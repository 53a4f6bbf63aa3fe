//! A TCP fault-injection proxy for tests: forwards connections from a loopback port to an
//! upstream address, and on request cuts them, stalls them, or refuses new ones.
//!
//! Built on std threads and blocking sockets (one acceptor thread, two pump threads per
//! connection), so it works the same from sync and tokio tests. Nothing polls: pumps block
//! in `read`, stalled pumps wait on a condvar, `cut` and `Drop` unblock reads with
//! `shutdown(Both)`, and `Drop` wakes the acceptor with a connection of its own.
//!
//! Stall semantics: bytes that arrive while stalled are held, not dropped. Each direction
//! holds at most the one chunk (up to 16 KiB) it had read when it noticed the stall; the
//! rest waits in the kernel's socket buffers, so TCP flow control pushes back on the
//! sender. `restore()` delivers the held bytes in order. An end of stream seen during a
//! stall is held too. `cut()` during a stall discards whatever was held.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long the proxy waits for the upstream to accept a forwarded connection.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A forwarding proxy on `127.0.0.1:<free port>`. Stops its threads and closes every
/// connection on drop.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    accepted: AtomicUsize,
}

#[derive(Debug, Default)]
struct State {
    stalled: bool,
    refusing: bool,
    stopped: bool,
    next_id: u64,
    /// Live connections: both sockets of each, to shut down on `cut`/drop.
    conns: HashMap<u64, Conn>,
    pumps: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    /// Pumps of this connection still running; the last one out removes the entry.
    running: usize,
}

impl Conn {
    fn shut(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards every accepted connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind proxy listener");
        let addr = listener.local_addr().expect("proxy listener address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            accepted: AtomicUsize::new(0),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("proxy-accept-{}", addr.port()))
                .spawn(move || accept_loop(&listener, upstream, &shared))
                .expect("spawn proxy acceptor")
        };
        Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The proxy's listening address (127.0.0.1:port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Drops every current connection at once: both sockets of each are shut down in both
    /// directions, so each peer reads end-of-stream (or a reset). Keeps listening.
    pub fn cut(&self) {
        let mut state = self.shared.lock();
        for (_, conn) in state.conns.drain() {
            conn.shut();
        }
        // Stalled pumps of the cut connections wake up, see them gone and exit.
        self.shared.changed.notify_all();
    }

    /// Stops forwarding in both directions but keeps connections open (see the module
    /// doc for what happens to bytes in flight). New connections are accepted and stall.
    pub fn stall(&self) {
        self.shared.lock().stalled = true;
    }

    /// Undoes `stall()` and `refuse()`: forwards again, delivering held bytes first.
    pub fn restore(&self) {
        let mut state = self.shared.lock();
        state.stalled = false;
        state.refusing = false;
        self.shared.changed.notify_all();
    }

    /// Closes every new connection right after accepting it until `restore()`; existing
    /// connections are left alone.
    pub fn refuse(&self) {
        self.shared.lock().refusing = true;
    }

    /// How many connections the proxy has accepted, refused ones included.
    pub fn connections_accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let pumps = {
            let mut state = self.shared.lock();
            state.stopped = true;
            for (_, conn) in state.conns.drain() {
                conn.shut();
            }
            self.shared.changed.notify_all();
            std::mem::take(&mut state.pumps)
        };
        // Wake the acceptor from its blocking accept(); it sees `stopped` and returns. If
        // even that connect fails, leave the thread rather than hang the test in join.
        if TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok()
            && let Some(acceptor) = self.acceptor.take()
        {
            let _ = acceptor.join();
        }
        for pump in pumps {
            let _ = pump.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.lock().stopped {
            return;
        }
        let Ok(client) = client else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.lock().refusing {
            drop(client);
            continue;
        }
        let Ok(upstream) = TcpStream::connect_timeout(&upstream, UPSTREAM_CONNECT_TIMEOUT) else {
            continue; // Dropping the client closes it, as an unreachable upstream would.
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let (Ok(client2), Ok(upstream2), Ok(client3), Ok(upstream3)) = (
            client.try_clone(),
            upstream.try_clone(),
            client.try_clone(),
            upstream.try_clone(),
        ) else {
            continue;
        };
        let mut state = shared.lock();
        if state.stopped {
            return;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.conns.insert(
            id,
            Conn {
                client,
                upstream,
                running: 2,
            },
        );
        state.pumps.retain(|pump| !pump.is_finished());
        for (from, to) in [(client2, upstream3), (upstream2, client3)] {
            let shared = Arc::clone(shared);
            let spawned = thread::Builder::new()
                .name(format!("proxy-pump-{id}"))
                .spawn(move || pump(id, from, to, &shared));
            match spawned {
                Ok(handle) => state.pumps.push(handle),
                Err(_) => {
                    if let Some(conn) = state.conns.remove(&id) {
                        conn.shut();
                    }
                }
            }
        }
    }
}

/// Copies `from` to `to` until end of stream or an error, holding each chunk while the
/// proxy is stalled, and exits as soon as the connection is cut or the proxy stops.
fn pump(id: u64, mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = vec![0_u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => other,
        };
        {
            let state = shared
                .changed
                .wait_while(shared.lock(), |s| {
                    s.stalled && !s.stopped && s.conns.contains_key(&id)
                })
                .unwrap_or_else(|e| e.into_inner());
            if state.stopped || !state.conns.contains_key(&id) {
                return; // Cut or stopped: the sockets are already shut down.
            }
        }
        match read {
            Ok(0) => {
                // Half-close: pass the end of stream on; the other direction goes on.
                let _ = to.shutdown(Shutdown::Write);
                break;
            }
            Ok(n) if to.write_all(&buf[..n]).is_ok() => {}
            _ => {
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                break;
            }
        }
    }
    let mut state = shared.lock();
    if let Some(conn) = state.conns.get_mut(&id) {
        conn.running -= 1;
        if conn.running == 0 {
            state.conns.remove(&id);
        }
    }
}
