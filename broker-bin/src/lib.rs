//! # surgemq-broker
//!
//! The reference broker, binary `surgemq`: command line ([`cli`]), TOML config ([`config`]),
//! Mosquitto-compatible password files ([`passwd`], [`passwd_cmd`]), TLS from PEM files
//! ([`tls`]), persistence in the data directory ([`store`]), logging and signals, on the async runtime picked by cargo feature ([`runtime`]).
//!
//! Never: protocol decisions here — the core makes them; this crate only configures and
//! starts an adapter.
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
pub mod duration;
pub mod passwd;
pub mod passwd_cmd;
pub mod runtime;
pub mod signals;
pub mod store;
pub mod tls;
