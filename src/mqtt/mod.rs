//! MQTT 3.1.1 and 5.0: one set of packet types, one codec, topic names and filters.
//!
//! Everything below this module except the IO drivers (`client`, `broker`, added later)
//! is sans-IO: no tokio, sockets, files or clocks.
//! `tests/integration/protocol_core_has_no_io.rs` enforces that.

pub mod broker;
pub mod client;
pub mod codec;
pub mod packet;
pub mod session;
pub mod string;
pub mod topic;
