//! # surgemq-smol
//!
//! The SurgeMQ broker and client on smol. The broker: listeners (TCP and TLS through
//! futures-rustls), one task per connection moving bytes, and one task owning the sans-IO
//! [`Broker`] state machine.
//!
//! ```no_run
//! use surgemq_core::broker::BrokerConfig;
//! use surgemq_smol::{Listener, Server};
//!
//! # fn main() -> std::io::Result<()> {
//! smol::block_on(async {
//!     let server = Server::new(BrokerConfig::default(), vec![Listener::tcp("127.0.0.1:1883".parse().unwrap())]);
//!     let bound = server.bind().await?;
//!     let shutdown = bound.shutdown_handle();
//!     // Call `shutdown.shutdown()` from anywhere (a signal handler, another task) to stop.
//!     # shutdown.shutdown();
//!     bound.run().await
//! })
//! # }
//! ```
//!
//! The client ([`Client::connect`]) gives a `Clone + Send` handle whose `publish`, `subscribe`
//! and `unsubscribe` resolve on completion, and a [`Messages`] stream; see
//! `examples/client.rs`. Same API and semantics as `surgemq-tokio`'s client.
//! [`Client::connect_with_store`](driver::Client::connect_with_store) keeps its persistent
//! session in a store (e.g. the redb file store of `surgemq_core::store::redb`, feature `redb`)
//! across restarts of the process.
//!
//! ```no_run
//! use surgemq_core::codec::QoS;
//! use surgemq_core::string::MqttString;
//! use surgemq_core::topic::TopicName;
//! use surgemq_smol::{Client, ClientConfig, ClientOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! smol::block_on(async {
//!     let config = ClientConfig::new(MqttString::new("sensor-1")?);
//!     let (client, _messages) = Client::connect(ClientOptions::new("127.0.0.1:1883", config)).await?;
//!     client.publish(TopicName::parse("t")?, "hi", QoS::AtLeastOnce, false).await?;
//!     client.disconnect().await;
//!     Ok(())
//! })
//! # }
//! ```
//!
//! Everything but the [`Smol`] runtime binding lives in [`driver`], generic over futures-io
//! runtimes: `surgemq-async-std` is that driver with async-std's tasks, sockets and timers,
//! and another runtime needs only a [`driver::Runtime`] / [`driver::TcpRuntime`] impl.
//!
//! Shape (see the project's DESIGN.md, "Adapter loop"): connection tasks read sockets and send
//! what they read to the broker task over a bounded channel; the broker task feeds it to the
//! core, drains the core's outputs, and hands each connection its batch of bytes (one vectored
//! write for everything ready). `TCP_NODELAY` is on. Never: protocol decisions here — the core
//! makes them all.
//!
//! [`Broker`]: surgemq_core::broker::Broker
#![forbid(unsafe_code)]

pub mod driver;
mod runtime;

pub use driver::{AsyncClientError, ClientOptions, Listener, Messages, ShutdownHandle};
/// The rustls crate this adapter's TLS listeners use.
pub use futures_rustls::rustls;
pub use runtime::Smol;
pub use surgemq_core::broker::{AuthRequest, AuthVerdict, Authenticator, BrokerConfig};
pub use surgemq_core::client::{
    AckToken, ClientConfig, ClientRestore, ConfigError, IncomingMessage, Persistence, RestoreError,
};
pub use surgemq_core::store::StoreSetup;

/// A broker server on smol, not yet bound: [`driver::Server`] on [`Smol`].
pub type Server = driver::Server<Smol>;

/// A bound broker server on smol: [`driver::BoundServer`] on [`Smol`].
pub type BoundServer = driver::BoundServer<Smol>;

/// An MQTT client on smol: [`driver::Client`] on [`Smol`].
pub type Client = driver::Client<Smol>;
