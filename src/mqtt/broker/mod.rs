//! The local MQTT broker (3.1.1 and 5.0) for LAN devices: listeners, one task per
//! connection, the router (subscriptions, retained messages, sessions), authentication
//! and ACLs. Protocol decisions live in the sans-IO `mqtt::session::server`; this module
//! only drives sockets and shares state between connections.

pub mod auth;
pub mod subscriptions;
pub mod websocket;
