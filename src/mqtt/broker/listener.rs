//! Accept loops: one task per listening socket, handing each accepted connection (within
//! the connection limit) to its own task. Nothing here reads MQTT.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::{Core, connection};

/// What a listener does with an accepted socket before MQTT starts.
#[derive(Clone)]
pub(super) enum Accepting {
    Tcp,
    Tls(tokio_rustls::TlsAcceptor),
    WebSocket,
}

pub(super) async fn accept_loop(socket: TcpListener, accepting: Accepting, core: Arc<Core>) {
    let mut shutdown = core.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (stream, _peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning;
                // the listener itself is still fine.
                crate::observe::warn(format_args!("fieldgate broker: accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&core.connections).try_acquire_owned() else {
            // Over the connection limit: closing at once is the clearest answer a client
            // can get before CONNECT (there is no CONNACK to send yet).
            core.stats
                .connections_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(stream);
            continue;
        };
        // Small packets (acknowledgements) must not wait for Nagle's timer.
        let _ = stream.set_nodelay(true);
        let core = Arc::clone(&core);
        // One task per connection, spawned per kind: a plain TCP connection's future is
        // the task itself (no separate box), and it does not pay for the size of a TLS
        // session's future.
        match accepting.clone() {
            Accepting::Tcp => {
                tokio::spawn(async move {
                    connection::serve(stream, core).await;
                    drop(permit);
                });
            }
            Accepting::Tls(acceptor) => {
                tokio::spawn(async move {
                    connection::serve_tls(stream, acceptor, core).await;
                    drop(permit);
                });
            }
            Accepting::WebSocket => {
                tokio::spawn(async move {
                    connection::serve_websocket(stream, core).await;
                    drop(permit);
                });
            }
        }
    }
}
