//! MQTT over WebSocket (work in progress).
