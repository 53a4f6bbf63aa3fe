//! Between devices and MQTT: the topics and payloads users script against (telemetry,
//! commands and their results, availability). Formats and parses only; `app` moves the
//! messages.

pub mod commands;
pub mod discovery;
pub mod telemetry;
