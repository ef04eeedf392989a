//! # surgemq-core
//!
//! The sans-IO heart of SurgeMQ: everything that decides, nothing that does I/O.
//! The state machines never open a socket, read a clock, spawn, sleep, lock or touch a file;
//! callers hand them bytes and time, and carry out what they return. The one exception is
//! outside them, behind the `redb` feature: `store::redb`, the crash-safe file store and its
//! group-commit thread, which the runtime adapters share (DESIGN.md places it here).
//!
//! - [`codec`]: one packet model for MQTT 3.1, 3.1.1 and 5.0; incremental decoding and encoding.
//! - [`topic`]: validated topic names and filters, shared subscriptions and the subscription trie.
//! - [`string`]: the UTF-8 string type every MQTT string field uses.
//! - [`broker`]: the broker state machine (inputs in, outputs out, time passed in).
//! - [`client`]: the client state machine (commands in, completion events out).
//! - [`store`]: the records that survive a restart, and the operations the broker emits on them.
//! - [`time`]: the core's [`time::Instant`], driven by the caller.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod broker;
pub mod client;
pub mod codec;
pub mod store;
pub mod string;
pub mod time;
pub mod topic;
