//! # surgemq-client
//!
//! The `surgemq-client` binary as a library, so tests can reach it:
//!
//! - [`cli`]: the command line — `pub` and `sub` with mosquitto_pub / mosquitto_sub flags, and
//!   `bench`.
//! - [`options`]: the flags turned into an MQTT client configuration and a TLS setup.
//! - [`runtime`]: the async runtime `pub` and `sub` run on, chosen by cargo feature (tokio, smol
//!   or async-std; the same client API on each).
//! - [`bench`](mod@bench): the load generator. Always tokio; its connections speak MQTT with the core
//!   codec directly over TCP so that it measures the broker, not itself.
//! - [`app`]: `main`, exit codes.
#![forbid(unsafe_code)]

pub mod app;
pub mod bench;
pub mod cli;
pub mod options;
pub mod pubsub;
pub mod runtime;
