//! The one integration-test binary. Each module below is a group of tests; `support`
//! holds the real peers (mosquitto, paho-mqtt, pymodbus) and helpers they share.

// Test code may unwrap, helpers included: a panic is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod broker_auth;
mod broker_config;
mod broker_conformance;
mod broker_flow;
mod broker_transport;
mod broker_v311;
mod broker_v5;
mod broker_websocket;
mod cli;
mod cli_modbus;
mod cli_pub_sub;
mod client_faults;
mod client_mosquitto;
mod client_session;
mod codec_fixtures;
mod codec_interop;
mod codec_roundtrip;
mod gateway_modbus;
mod gateway_run;
mod gateway_service;
mod modbus_bus;
mod modbus_values;
mod peers;
mod protocol_core_has_no_io;
mod server_session;
mod spool_faults;
#[path = "../support/mod.rs"]
mod support;
mod support_peers;
