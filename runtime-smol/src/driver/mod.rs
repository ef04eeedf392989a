//! The futures-io driver: the whole broker server and the async client, generic over the
//! runtime that runs them, so any runtime with futures-io sockets (smol, async-std, an
//! embedder's own executor) reuses them.
//!
//! - [`Runtime`] (spawn, spawn a blocking job, sleep until) and [`TcpRuntime`] (TCP sockets):
//!   all a runtime must provide.
//! - [`broker_task`] and [`BrokerHandle`]: the one task that owns the sans-IO
//!   [`Broker`](surgemq_core::broker::Broker).
//! - [`serve_connection`]: one connection's reader and writer over any futures-io stream
//!   (plain TCP, TLS, or a transport of your own), talking to the broker task.
//! - [`Server`], [`BoundServer`], [`Listener`], [`ShutdownHandle`]: listeners, TLS handshakes
//!   and graceful shutdown on top of those.
//! - [`Client`], [`Messages`], [`ClientOptions`]: the async MQTT client (TLS by futures-rustls)
//!   around the sans-IO [`surgemq_core::client::Client`].
//!
//! Never: protocol decisions (the core makes them all), or anything runtime-specific — that
//! belongs in the `Runtime` implementations of `surgemq-smol` and `surgemq-async-std`.

mod client;
mod conn;
mod hub;
mod server;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWrite};

pub use client::{AsyncClientError, Client, ClientOptions, Messages};
pub use conn::serve_connection;
pub use hub::{BrokerHandle, broker_task};
pub use server::{BoundServer, Listener, Server};

/// What the driver needs from an async runtime: tasks, a blocking pool and a timer.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// Runs `future` in the background, detached.
    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static;

    /// Runs `job` where blocking is allowed (the authenticator hashes passwords there).
    fn spawn_blocking<F>(&self, job: F)
    where
        F: FnOnce() + Send + 'static;

    /// Completes at `deadline` (at once if it has passed).
    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static;
}

/// A [`Runtime`] with TCP sockets implementing futures-io.
pub trait TcpRuntime: Runtime {
    /// A bound TCP listener.
    type TcpListener: Send + Sync + 'static;
    /// A TCP connection, accepted or opened.
    type TcpStream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Opens a connection to `address` (`host:port`; a host name is resolved), for the client.
    fn connect(&self, address: &str) -> impl Future<Output = io::Result<Self::TcpStream>> + Send;

    /// Binds a listener to `addr`.
    fn bind(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::TcpListener>> + Send;

    /// Accepts the next connection and its peer address.
    fn accept(
        listener: &Self::TcpListener,
    ) -> impl Future<Output = io::Result<(Self::TcpStream, SocketAddr)>> + Send;

    /// The address `listener` is bound to.
    fn local_addr(listener: &Self::TcpListener) -> io::Result<SocketAddr>;

    /// Turns on `TCP_NODELAY` (small MQTT packets go out at once).
    fn set_nodelay(stream: &Self::TcpStream) -> io::Result<()>;
}

/// Stops a running server gracefully: no new connections; every client is closed as the spec
/// says for a server going away (Wills published), pending bytes flushed.
///
/// Every clone stops the same server; dropping handles stops nothing.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    // Closing the channel is the signal: every waiter wakes, now or later. Nothing is ever sent.
    tx: async_channel::Sender<Infallible>,
    // Held so the channel closes only by `shutdown`, never because receivers went away.
    _rx: async_channel::Receiver<Infallible>,
}

impl ShutdownHandle {
    /// A handle not yet triggered (for [`broker_task`]; a [`BoundServer`] makes its own).
    pub fn new() -> Self {
        let (tx, rx) = async_channel::bounded(1);
        Self { tx, _rx: rx }
    }

    /// Starts the shutdown; [`BoundServer::run`] returns once it is done.
    pub fn shutdown(&self) {
        self.tx.close();
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shutdown(&self) -> bool {
        self.tx.is_closed()
    }

    /// Completes once [`shutdown`](Self::shutdown) is called.
    pub async fn wait(&self) {
        self.tx.closed().await;
    }
}

impl Default for ShutdownHandle {
    fn default() -> Self {
        Self::new()
    }
}
