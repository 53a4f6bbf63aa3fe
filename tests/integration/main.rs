//! The one integration-test binary. Each module below is a group of tests; `support`
//! holds the real peers (mosquitto, paho-mqtt, pymodbus) and helpers they share.

mod cli;
mod codec_fixtures;
mod codec_interop;
mod peers;
mod protocol_core_has_no_io;
#[path = "../support/mod.rs"]
mod support;
