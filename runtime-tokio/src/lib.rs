//! # surgemq-tokio
//!
//! The SurgeMQ broker and client on tokio. The broker: listeners (TCP and TLS through tokio-rustls), one task per
//! connection moving bytes, and one task owning the sans-IO [`Broker`](surgemq_core::broker::Broker) state machine.
//!
//! ```no_run
//! use surgemq_core::broker::BrokerConfig;
//! use surgemq_tokio::{Listener, Server};
//!
//! # async fn run() -> std::io::Result<()> {
//! let server = Server::new(BrokerConfig::default(), vec![Listener::tcp("127.0.0.1:1883".parse().unwrap())]);
//! let bound = server.bind().await?;
//! let shutdown = bound.shutdown_handle();
//! tokio::spawn(async move {
//!     tokio::signal::ctrl_c().await.ok();
//!     shutdown.shutdown();
//! });
//! bound.run().await
//! # }
//! ```
//!
//! The client ([`Client::connect`]) gives a `Clone + Send` handle whose `publish`, `subscribe`
//! and `unsubscribe` resolve on completion, and a [`Messages`] stream; see `examples/client.rs`.
//! [`Client::connect_with_store`] keeps its persistent session in a store (e.g. the redb file
//! store of `surgemq_core::store::redb`, feature `redb`) across restarts of the process.
//!
//! Shape (see the project's DESIGN.md, "Adapter loop"): connection tasks read sockets and
//! send what they read to the broker task over a bounded channel; the broker task feeds it to
//! the core, drains the core's outputs, and hands each connection its batch of bytes (one write
//! for everything ready). `TCP_NODELAY` is on. Never: protocol decisions here — the core makes
//! them all.
#![forbid(unsafe_code)]

mod client;
mod conn;
mod hub;
mod server;

pub use client::{AsyncClientError, Client, ClientOptions, Messages};
pub use server::{BoundServer, Listener, Server, ShutdownHandle};
pub use surgemq_core::broker::{AuthRequest, AuthVerdict, Authenticator, BrokerConfig};
pub use surgemq_core::client::{
    AckToken, ClientConfig, ClientRestore, ConfigError, IncomingMessage, Persistence, RestoreError,
};
pub use surgemq_core::store::StoreSetup;
/// The rustls crate this adapter's TLS listeners use.
pub use tokio_rustls::rustls;
