//! Runs `fieldgate pub` and `fieldgate sub` with parsed options: connects through the
//! library's MQTT client, publishes or prints, and turns every outcome into an exit code.
//! Parsing and formatting live next door; this owns only the sequence of a run.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use fieldgate::mqtt::client::{self, ClientEvent, ClientOptions, Delivery, Events, Handle};
use fieldgate::mqtt::packet::{Publish, PublishProperties, Subscription, SubscriptionOptions};
use fieldgate::mqtt::session::client::ClientConfig;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use super::{
    ConnectOptions, EXIT_ERROR, EXIT_OK, EXIT_TIMEOUT, EXIT_UNREACHABLE, EXIT_USAGE, MessageSource,
    PubOptions, SubOptions, connect_refused_exit_code, format_message,
};

/// How a run ended: the exit code, and the one-line message for stderr, if any.
pub struct Outcome {
    pub code: u8,
    pub message: Option<String>,
}

impl Outcome {
    fn ok() -> Self {
        Outcome {
            code: EXIT_OK,
            message: None,
        }
    }

    fn fail(code: u8, message: impl Into<String>) -> Self {
        Outcome {
            code,
            message: Some(message.into()),
        }
    }
}

fn client_options(opts: &ConnectOptions) -> ClientOptions {
    let mut session = ClientConfig::new(opts.protocol, opts.client_id.clone());
    session.clean_start = opts.clean_start;
    session.keep_alive = opts.keep_alive;
    session.username = opts.username.clone();
    session.password = opts.password.clone();
    session.will = opts.will.clone();
    session.session_expiry_interval = opts.session_expiry_interval().unwrap_or(0);
    let mut options = ClientOptions::new(opts.host.clone(), opts.port, session);
    // A command-line run reports a failure instead of retrying for ever.
    options.reconnect = None;
    options.tls = opts.tls.as_ref().map(|tls| client::TlsOptions {
        ca_file: tls.ca_file.clone(),
        system_roots: tls.ca_file.is_none(),
        client_cert: tls
            .client_cert
            .as_ref()
            .map(|c| (c.cert.clone(), c.key.clone())),
        skip_hostname_check: !tls.verify_hostname,
    });
    options
}

/// Connects and waits for CONNACK; any other first outcome ends the run.
async fn connect(opts: &ConnectOptions) -> Result<(Handle, Events), Outcome> {
    let (handle, mut events) = client::spawn(client_options(opts))
        .map_err(|e| Outcome::fail(EXIT_USAGE, e.to_string()))?;
    loop {
        let event = events.recv().await;
        debug(opts, &event);
        match event {
            Some(ClientEvent::Connected { .. }) => return Ok((handle, events)),
            Some(ClientEvent::Refused(code)) => {
                let name = code.name_for(fieldgate::mqtt::packet::PacketType::ConnAck);
                return Err(Outcome::fail(
                    connect_refused_exit_code(code, opts.protocol),
                    format!("connection refused: {name}"),
                ));
            }
            Some(ClientEvent::Unreachable(why)) => {
                return Err(Outcome::fail(
                    EXIT_UNREACHABLE,
                    format!("cannot connect: {why}"),
                ));
            }
            Some(ClientEvent::Disconnected(cause)) => {
                return Err(Outcome::fail(
                    EXIT_ERROR,
                    format!("disconnected: {cause:?}"),
                ));
            }
            Some(_) => {}
            None => return Err(Outcome::fail(EXIT_ERROR, "the client stopped")),
        }
    }
}

fn debug(opts: &ConnectOptions, event: &Option<ClientEvent>) {
    if opts.debug
        && let Some(event) = event
    {
        eprintln!("fieldgate: {event:?}");
    }
}

/// `fieldgate pub`.
pub async fn publish(opts: PubOptions) -> Outcome {
    // Read a file before connecting: a missing file is a usage error, not a network one.
    let file = match &opts.message {
        MessageSource::File(path) => match std::fs::read(path) {
            Ok(bytes) => Some(Bytes::from(bytes)),
            Err(e) => return Outcome::fail(EXIT_USAGE, format!("{}: {e}", path.display())),
        },
        _ => None,
    };
    let (handle, _events) = match connect(&opts.connect).await {
        Ok(connected) => connected,
        Err(outcome) => return outcome,
    };
    let mut deliveries = Deliveries::default();
    let sent = match &opts.message {
        MessageSource::Message(payload) => {
            send(&handle, &opts, payload.clone(), &mut deliveries).await
        }
        MessageSource::Empty => send(&handle, &opts, Bytes::new(), &mut deliveries).await,
        MessageSource::File(_) => {
            send(&handle, &opts, file.unwrap_or_default(), &mut deliveries).await
        }
        MessageSource::Stdin => {
            let mut all = Vec::new();
            match tokio::io::stdin().read_to_end(&mut all).await {
                Ok(_) => send(&handle, &opts, Bytes::from(all), &mut deliveries).await,
                Err(e) => Err(Outcome::fail(EXIT_ERROR, format!("stdin: {e}"))),
            }
        }
        MessageSource::StdinLines => {
            // Large reads: tokio reads stdin on a helper thread, one hand-over per read.
            let mut lines =
                tokio::io::BufReader::with_capacity(1 << 16, tokio::io::stdin()).lines();
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        if let Err(outcome) =
                            send(&handle, &opts, Bytes::from(line), &mut deliveries).await
                        {
                            break Err(outcome);
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(Outcome::fail(EXIT_ERROR, format!("stdin: {e}"))),
                }
            }
        }
    };
    let outcome = match (sent, deliveries.finish().await) {
        (Err(outcome), _) | (Ok(()), Err(outcome)) => outcome,
        (Ok(()), Ok(())) => Outcome::ok(),
    };
    handle.disconnect().await;
    outcome
}

/// Outcomes of messages queued and not yet confirmed. Bounded: past [`IN_FLIGHT`] the
/// oldest is awaited before another message is queued, so `-l` on a long stream keeps
/// memory flat while the client still gets a full pipe to batch from.
#[derive(Default)]
struct Deliveries {
    waiting: std::collections::VecDeque<Delivery>,
    first_failure: Option<Outcome>,
}

const IN_FLIGHT: usize = 1024;

impl Deliveries {
    async fn push(&mut self, delivery: Delivery) {
        self.waiting.push_back(delivery);
        if self.waiting.len() > IN_FLIGHT
            && let Some(oldest) = self.waiting.pop_front()
        {
            self.settle(oldest).await;
        }
    }

    async fn settle(&mut self, delivery: Delivery) {
        if let Err(e) = delivery.delivered().await
            && self.first_failure.is_none()
        {
            self.first_failure = Some(Outcome::fail(EXIT_ERROR, e.to_string()));
        }
    }

    /// Waits for every outcome; the first failure, if any, decides the exit.
    async fn finish(mut self) -> Result<(), Outcome> {
        while let Some(delivery) = self.waiting.pop_front() {
            self.settle(delivery).await;
        }
        self.first_failure.map_or(Ok(()), Err)
    }
}

/// Queues one message without waiting for it, so a stream of `-l` lines keeps the
/// session's window full and the client writes them in batches.
async fn send(
    handle: &Handle,
    opts: &PubOptions,
    payload: Bytes,
    deliveries: &mut Deliveries,
) -> Result<(), Outcome> {
    let message = Publish {
        dup: false,
        qos: opts.connect.qos,
        retain: opts.retain,
        topic: opts.topic.clone(),
        packet_id: None,
        payload,
        properties: PublishProperties::default(),
    };
    match handle.enqueue(message).await {
        Ok(delivery) => {
            deliveries.push(delivery).await;
            Ok(())
        }
        Err(e) => Err(Outcome::fail(EXIT_ERROR, e.to_string())),
    }
}

/// `fieldgate sub`.
pub async fn subscribe(opts: SubOptions) -> Outcome {
    let deadline = opts.timeout.map(|t| tokio::time::Instant::now() + t);
    let run = subscribe_until_done(&opts);
    match deadline {
        Some(deadline) => match tokio::time::timeout_at(deadline, run).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome {
                code: EXIT_TIMEOUT,
                message: None,
            },
        },
        None => run.await,
    }
}

async fn subscribe_until_done(opts: &SubOptions) -> Outcome {
    let (handle, mut events) = match connect(&opts.connect).await {
        Ok(connected) => connected,
        Err(outcome) => return outcome,
    };
    let subscriptions = opts
        .filters
        .iter()
        .map(|filter| Subscription {
            filter: filter.clone(),
            options: SubscriptionOptions {
                qos: opts.connect.qos,
                ..SubscriptionOptions::default()
            },
        })
        .collect();
    match handle.subscribe(subscriptions).await {
        Ok(codes) => {
            if let Some((filter, code)) = opts
                .filters
                .iter()
                .zip(&codes)
                .find(|(_, code)| !code.is_success())
            {
                return Outcome::fail(
                    EXIT_ERROR,
                    format!(
                        "subscription to {filter} refused: {}",
                        code.name_for(fieldgate::mqtt::packet::PacketType::SubAck)
                    ),
                );
            }
        }
        Err(e) => return Outcome::fail(EXIT_ERROR, e.to_string()),
    }
    let mut shown: u32 = 0;
    let mut stdout = std::io::stdout();
    loop {
        let event = events.recv().await;
        debug(&opts.connect, &event);
        match event {
            Some(ClientEvent::Message(p)) => {
                if !opts.shows(p.topic.as_str(), p.retain) {
                    continue;
                }
                let line = format_message(opts, p.topic.as_str(), &p.payload, p.qos, p.retain);
                if stdout
                    .write_all(&line)
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    // The reader went away (e.g. `| head`): a normal way to stop.
                    break;
                }
                shown += 1;
                if opts.count.is_some_and(|c| shown >= c) {
                    break;
                }
            }
            Some(ClientEvent::Disconnected(cause)) => {
                return Outcome::fail(EXIT_ERROR, format!("disconnected: {cause:?}"));
            }
            Some(_) => {}
            None => return Outcome::fail(EXIT_ERROR, "the client stopped"),
        }
    }
    // Acknowledgements went out as the messages arrived; a bounded goodbye.
    let _ = tokio::time::timeout(Duration::from_secs(5), handle.disconnect()).await;
    Outcome::ok()
}
