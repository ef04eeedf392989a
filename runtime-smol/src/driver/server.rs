//! [`Server`]: listeners plus the broker task; [`BoundServer`] once the listeners are bound.
//! Accept loops, TLS handshakes (futures-rustls) and graceful shutdown, for any [`TcpRuntime`].

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_rustls::TlsAcceptor;
use futures_rustls::rustls::ServerConfig as TlsConfig;
use surgemq_core::broker::{Authenticator, BrokerConfig};
use surgemq_core::store::StoreSetup;

use super::{BrokerHandle, ShutdownHandle, TcpRuntime, broker_task, serve_connection};

/// Pause after a failed accept (out of file descriptors and the like) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long [`BoundServer::run`] waits, after the broker task stopped, for connections to write
/// their last bytes and close. A client that does not read is not waited for longer.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Where to accept connections, plain or TLS.
#[derive(Clone)]
pub struct Listener {
    /// Address to bind (IPv4 or IPv6; port 0 picks a free one).
    pub bind: SocketAddr,
    /// TLS configuration; `None` for plain TCP.
    pub tls: Option<Arc<TlsConfig>>,
    /// With TLS client certificates: use the certificate subject's common name as the user
    /// name (Mosquitto's `use_identity_as_username`).
    pub identity_as_username: bool,
}

impl Listener {
    /// A plain TCP listener.
    pub fn tcp(bind: SocketAddr) -> Self {
        Self {
            bind,
            tls: None,
            identity_as_username: false,
        }
    }

    /// A TLS listener.
    pub fn tls(bind: SocketAddr, config: Arc<TlsConfig>) -> Self {
        Self {
            bind,
            tls: Some(config),
            identity_as_username: false,
        }
    }

    /// Uses the client certificate's common name as the user name.
    #[must_use]
    pub fn with_identity_as_username(mut self) -> Self {
        self.identity_as_username = true;
        self
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("bind", &self.bind)
            .field("tls", &self.tls.is_some())
            .field("identity_as_username", &self.identity_as_username)
            .finish()
    }
}

/// A broker server on runtime `R`, not yet bound.
pub struct Server<R> {
    runtime: R,
    config: BrokerConfig,
    listeners: Vec<Listener>,
    authenticator: Option<Arc<dyn Authenticator>>,
    tls_handshake_timeout: Duration,
    store: Option<StoreSetup>,
}

impl<R: TcpRuntime + Default> Server<R> {
    /// A server for `config` accepting on `listeners`.
    pub fn new(config: BrokerConfig, listeners: Vec<Listener>) -> Self {
        Self::with_runtime(R::default(), config, listeners)
    }
}

impl<R: TcpRuntime> Server<R> {
    /// A server on a given runtime value (for runtimes that carry state, like an executor).
    pub fn with_runtime(runtime: R, config: BrokerConfig, listeners: Vec<Listener>) -> Self {
        Self {
            runtime,
            config,
            listeners,
            authenticator: None,
            tls_handshake_timeout: Duration::from_secs(10),
            store: None,
        }
    }

    /// Persistence: restores the broker from the store's content at start, and hands the
    /// store every operation the broker emits (set
    /// [`BrokerConfig::persistence`](surgemq_core::broker::BrokerConfig::persistence) to
    /// `Durable` or `Periodic` to match).
    #[must_use]
    pub fn with_store(mut self, store: StoreSetup) -> Self {
        self.store = Some(store);
        self
    }

    /// Checks credentials when the config's auth mode is `External`.
    #[must_use]
    pub fn with_authenticator(mut self, authenticator: Arc<dyn Authenticator>) -> Self {
        self.authenticator = Some(authenticator);
        self
    }

    /// Time a TLS client has to finish its handshake (default 10 s).
    #[must_use]
    pub fn with_tls_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.tls_handshake_timeout = timeout;
        self
    }

    /// Binds every listener.
    pub async fn bind(self) -> io::Result<BoundServer<R>> {
        let mut bound = Vec::with_capacity(self.listeners.len());
        for listener in self.listeners {
            let socket = self.runtime.bind(listener.bind).await?;
            let tls = listener.tls.map(|config| TlsListener {
                acceptor: TlsAcceptor::from(config),
                identity_as_username: listener.identity_as_username,
            });
            bound.push((socket, tls));
        }
        Ok(BoundServer {
            runtime: self.runtime,
            config: self.config,
            listeners: bound,
            authenticator: self.authenticator,
            tls_handshake_timeout: self.tls_handshake_timeout,
            store: self.store,
            shutdown: ShutdownHandle::new(),
        })
    }

    /// Binds and runs until shut down.
    pub async fn run(self) -> io::Result<()> {
        self.bind().await?.run().await
    }
}

impl<R> std::fmt::Debug for Server<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listeners", &self.listeners)
            .field("authenticator", &self.authenticator.is_some())
            .field("tls_handshake_timeout", &self.tls_handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// A server whose listeners are bound; [`BoundServer::run`] serves them.
pub struct BoundServer<R: TcpRuntime> {
    runtime: R,
    config: BrokerConfig,
    listeners: Vec<(R::TcpListener, Option<TlsListener>)>,
    authenticator: Option<Arc<dyn Authenticator>>,
    tls_handshake_timeout: Duration,
    store: Option<StoreSetup>,
    shutdown: ShutdownHandle,
}

impl<R: TcpRuntime> BoundServer<R> {
    /// The bound addresses, in listener order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| R::local_addr(l).ok())
            .collect()
    }

    /// A handle that stops the server.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Serves until [`ShutdownHandle::shutdown`], then closes every connection (Wills
    /// published, pending bytes written) and returns.
    pub async fn run(self) -> io::Result<()> {
        let (broker, hub) = broker_task(
            self.runtime.clone(),
            self.config,
            self.authenticator,
            self.store,
            &self.shutdown,
        );
        // Every accept loop and connection task holds a clone; `recv` fails once all are gone.
        let (alive, all_gone) = async_channel::bounded::<Infallible>(1);
        for (listener, tls) in self.listeners {
            let accept = AcceptLoop {
                runtime: self.runtime.clone(),
                listener,
                tls,
                handshake_timeout: self.tls_handshake_timeout,
                broker: broker.clone(),
                shutdown: self.shutdown.clone(),
                alive: alive.clone(),
            };
            self.runtime.spawn(accept.run());
        }
        drop((broker, alive));
        hub.await;
        let deadline = Instant::now() + CLOSE_GRACE;
        future::or(
            async {
                let _ = all_gone.recv().await;
            },
            self.runtime.sleep_until(deadline),
        )
        .await;
        Ok(())
    }
}

impl<R: TcpRuntime> std::fmt::Debug for BoundServer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundServer")
            .field("local_addrs", &self.local_addrs())
            .finish_non_exhaustive()
    }
}

/// A bound TLS listener's acceptor and identity policy.
#[derive(Clone)]
struct TlsListener {
    acceptor: TlsAcceptor,
    identity_as_username: bool,
}

/// One listener's accept loop; connection tasks it spawns outlive it.
struct AcceptLoop<R: TcpRuntime> {
    runtime: R,
    listener: R::TcpListener,
    tls: Option<TlsListener>,
    handshake_timeout: Duration,
    broker: BrokerHandle,
    shutdown: ShutdownHandle,
    alive: async_channel::Sender<Infallible>,
}

impl<R: TcpRuntime> AcceptLoop<R> {
    async fn run(self) {
        loop {
            let stop = async {
                self.shutdown.wait().await;
                None
            };
            let accept = async { Some(R::accept(&self.listener).await) };
            match future::or(stop, accept).await {
                None => return,
                Some(Ok((stream, peer))) => self.spawn_connection(stream, peer),
                Some(Err(error)) => {
                    tracing::warn!(%error, "accept failed");
                    self.runtime
                        .sleep_until(Instant::now() + ACCEPT_BACKOFF)
                        .await;
                }
            }
        }
    }

    fn spawn_connection(&self, stream: R::TcpStream, peer: SocketAddr) {
        if let Err(error) = R::set_nodelay(&stream) {
            tracing::debug!(%error, %peer, "TCP_NODELAY not set");
        }
        let broker = self.broker.clone();
        let alive = self.alive.clone();
        let Some(tls) = self.tls.clone() else {
            self.runtime.spawn(async move {
                serve_connection(&broker, stream, peer, None).await;
                drop(alive);
            });
            return;
        };
        let deadline = Instant::now() + self.handshake_timeout;
        let timeout = self.runtime.sleep_until(deadline);
        self.runtime.spawn(async move {
            let handshake = async { Some(tls.acceptor.accept(stream).await) };
            let timed_out = async {
                timeout.await;
                None
            };
            match future::or(handshake, timed_out).await {
                Some(Ok(tls_stream)) => {
                    let identity = if tls.identity_as_username {
                        let certs = tls_stream.get_ref().1.peer_certificates();
                        certs.and_then(|c| c.first()).and_then(|c| common_name(c))
                    } else {
                        None
                    };
                    serve_connection(&broker, tls_stream, peer, identity).await;
                }
                Some(Err(error)) => tracing::info!(%error, %peer, "TLS handshake failed"),
                None => tracing::info!(%peer, "TLS handshake timed out"),
            }
            drop(alive);
        });
    }
}

/// The first common name of a DER certificate's subject.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
