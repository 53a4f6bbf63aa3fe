//! fieldgate: an edge gateway that polls field hardware (Modbus, serial, GPIO) and
//! publishes telemetry over MQTT through its own client, with a local broker for LAN
//! devices. See ARCHITECTURE.md for the map; this crate root only names the modules.

pub mod app;
pub mod bridge;
pub mod config;
pub mod devices;
pub mod metrics;
pub mod modbus;
pub mod mqtt;
pub mod observe;
pub mod spool;
pub mod storage;
pub mod systemd;
