//! fieldgate's own broker, started in-process on a free loopback port for a test, with a
//! runtime of its own so that blocking test code (peers run as processes) can drive it.
//! Dropping it shuts the broker down.

use std::net::{Ipv4Addr, SocketAddr};

use fieldgate::mqtt::broker::{Broker, BrokerConfig, ListenerConfig, Transport};

pub struct TestBroker {
    broker: Option<Broker>,
    addrs: Vec<SocketAddr>,
    // Dropped last: the broker's tasks run on it.
    runtime: tokio::runtime::Runtime,
}

impl TestBroker {
    /// Anonymous access, default limits, one TCP listener.
    pub fn start() -> TestBroker {
        Self::start_with(BrokerConfig::default())
    }

    /// `config` with a TCP listener on 127.0.0.1:0 added when it has none.
    pub fn start_with(mut config: BrokerConfig) -> TestBroker {
        if config.listeners.is_empty() {
            config.listeners.push(ListenerConfig {
                bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                transport: Transport::Tcp,
            });
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime for the broker");
        let broker = runtime
            .block_on(Broker::start(config))
            .expect("the broker starts on free ports");
        let addrs = broker.local_addrs().to_vec();
        TestBroker {
            broker: Some(broker),
            addrs,
            runtime,
        }
    }

    /// The first listener's port.
    pub fn port(&self) -> u16 {
        self.addrs[0].port()
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn broker(&self) -> &Broker {
        self.broker.as_ref().expect("running until dropped")
    }

    /// Stops the broker the way SIGTERM does (clients hear DISCONNECT 0x8B in 5.0).
    pub fn shutdown(mut self) {
        if let Some(broker) = self.broker.take() {
            self.runtime.block_on(broker.shutdown());
        }
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(broker) = self.broker.take() {
            self.runtime.block_on(broker.shutdown());
        }
    }
}
