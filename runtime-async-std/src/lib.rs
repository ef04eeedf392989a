//! # surgemq-async-std
//!
//! The SurgeMQ broker and client on async-std: [`surgemq_smol::driver`] (listeners, TLS
//! through futures-rustls, connection tasks, the task owning the sans-IO broker; the async
//! client) run with async-std's tasks, sockets and timers. This crate is only that binding; async-std is discontinued
//! upstream, so prefer `surgemq-smol` for new code.
//!
//! ```no_run
//! use surgemq_async_std::{BrokerConfig, Listener, Server};
//!
//! # fn main() -> std::io::Result<()> {
//! async_std::task::block_on(async {
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
//! The client is `surgemq-tokio`'s API on async-std: [`Client::connect`] gives a `Clone + Send`
//! handle whose `publish`, `subscribe` and `unsubscribe` resolve on completion, and a
//! [`Messages`] stream; see `examples/client.rs`.
//! [`Client::connect_with_store`](driver::Client::connect_with_store) keeps its persistent
//! session in a store ([`StoreSetup`]) across restarts of the process.
#![forbid(unsafe_code)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use async_std::net::{TcpListener, TcpStream};
use surgemq_smol::driver::{self, Runtime, TcpRuntime};

pub use surgemq_smol::{
    AckToken, AsyncClientError, AuthRequest, AuthVerdict, Authenticator, BrokerConfig,
    ClientConfig, ClientOptions, ClientRestore, ConfigError, IncomingMessage, Listener, Messages,
    Persistence, RestoreError, ShutdownHandle, StoreSetup, rustls,
};

/// A broker server on async-std, not yet bound: [`driver::Server`] on [`AsyncStd`].
pub type Server = driver::Server<AsyncStd>;

/// A bound broker server on async-std: [`driver::BoundServer`] on [`AsyncStd`].
pub type BoundServer = driver::BoundServer<AsyncStd>;

/// An MQTT client on async-std: [`driver::Client`] on [`AsyncStd`].
pub type Client = driver::Client<AsyncStd>;

/// The async-std runtime: its global executor, blocking pool, timers and sockets.
#[derive(Clone, Copy, Debug, Default)]
pub struct AsyncStd;

impl Runtime for AsyncStd {
    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // Dropping the handle detaches the task.
        drop(async_std::task::spawn(future));
    }

    fn spawn_blocking<F>(&self, job: F)
    where
        F: FnOnce() + Send + 'static,
    {
        drop(async_std::task::spawn_blocking(job));
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        async_std::task::sleep(deadline.saturating_duration_since(Instant::now()))
    }
}

impl TcpRuntime for AsyncStd {
    type TcpListener = TcpListener;
    type TcpStream = TcpStream;

    fn connect(&self, address: &str) -> impl Future<Output = io::Result<TcpStream>> + Send {
        TcpStream::connect(address)
    }

    fn bind(&self, addr: SocketAddr) -> impl Future<Output = io::Result<TcpListener>> + Send {
        TcpListener::bind(addr)
    }

    fn accept(
        listener: &TcpListener,
    ) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        listener.accept()
    }

    fn local_addr(listener: &TcpListener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    fn set_nodelay(stream: &TcpStream) -> io::Result<()> {
        stream.set_nodelay(true)
    }
}
