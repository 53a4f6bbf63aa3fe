//! Session state machines: what each side of an MQTT connection must remember and do,
//! with no IO. Time comes in as `now`; the drivers (`mqtt::client`, later the broker) own
//! the sockets and the clock and feed these.

pub mod client;
pub mod packet_id;
pub mod server;
