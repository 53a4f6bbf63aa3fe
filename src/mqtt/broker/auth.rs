//! Broker authentication and authorisation (work in progress).
