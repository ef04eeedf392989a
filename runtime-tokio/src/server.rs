//! [`Server`]: listeners plus the broker task; [`BoundServer`] once the listeners are bound;
//! [`ShutdownHandle`] to stop it gracefully.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use surgemq_core::broker::{Authenticator, Broker, BrokerConfig};
use surgemq_core::store::StoreSetup;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig as TlsConfig;

use crate::conn;
use crate::hub::{Clock, Hub, ToHub};

/// Capacity of the channel from connection tasks to the broker task.
const HUB_CHANNEL: usize = 4096;

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

/// A broker server, not yet bound.
pub struct Server {
    config: BrokerConfig,
    listeners: Vec<Listener>,
    authenticator: Option<Arc<dyn Authenticator>>,
    tls_handshake_timeout: Duration,
    store: Option<StoreSetup>,
}

impl Server {
    /// A server for `config` accepting on `listeners`.
    pub fn new(config: BrokerConfig, listeners: Vec<Listener>) -> Self {
        Self {
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
    pub async fn bind(self) -> io::Result<BoundServer> {
        let mut bound = Vec::with_capacity(self.listeners.len());
        for listener in self.listeners {
            let socket = TcpListener::bind(listener.bind).await?;
            let tls = listener.tls.map(|config| TlsListener {
                acceptor: TlsAcceptor::from(config),
                identity_as_username: listener.identity_as_username,
            });
            bound.push((socket, tls));
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        Ok(BoundServer {
            config: self.config,
            listeners: bound,
            authenticator: self.authenticator,
            tls_handshake_timeout: self.tls_handshake_timeout,
            store: self.store,
            shutdown_tx: Arc::new(shutdown_tx),
            shutdown_rx,
        })
    }

    /// Binds and runs until shut down.
    pub async fn run(self) -> io::Result<()> {
        self.bind().await?.run().await
    }
}

/// A server whose listeners are bound; [`BoundServer::run`] serves them.
pub struct BoundServer {
    config: BrokerConfig,
    listeners: Vec<(TcpListener, Option<TlsListener>)>,
    authenticator: Option<Arc<dyn Authenticator>>,
    tls_handshake_timeout: Duration,
    store: Option<StoreSetup>,
    shutdown_tx: Arc<watch::Sender<bool>>,
    shutdown_rx: watch::Receiver<bool>,
}

/// Stops a running server gracefully: no new connections; every client is closed as the spec
/// says for a server going away (Wills published), pending bytes flushed.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Starts the shutdown; [`BoundServer::run`] returns once it is done.
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }
}

impl BoundServer {
    /// The bound addresses, in listener order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// A handle that stops the server.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(Arc::clone(&self.shutdown_tx))
    }

    /// Serves until [`ShutdownHandle::shutdown`].
    pub async fn run(self) -> io::Result<()> {
        let clock = Clock::start();
        let (tx, rx) = mpsc::channel(HUB_CHANNEL);
        let mut broker = Broker::new(self.config, clock.now());
        let (store_done_tx, store_done) = mpsc::unbounded_channel();
        let store = self.store.map(|setup| {
            let report = broker.restore(setup.snapshot);
            tracing::info!("restored from the store: {report}");
            let done_tx = store_done_tx.clone();
            (setup.start)(Box::new(move |seq, result| {
                let _ = done_tx.send((seq, result));
            }))
        });
        let hub = Hub {
            broker,
            clock,
            rx,
            tx: tx.clone(),
            shutdown: self.shutdown_rx.clone(),
            authenticator: self.authenticator,
            writers: HashMap::new(),
            store,
            store_batch: Vec::new(),
            store_done,
            _store_done_tx: store_done_tx,
        };
        let hub_task = tokio::spawn(hub.run());
        let mut accept_tasks = Vec::new();
        for (listener, tls) in self.listeners {
            let tx = tx.clone();
            let mut shutdown = self.shutdown_rx.clone();
            let timeout = self.tls_handshake_timeout;
            accept_tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, peer)) => spawn_connection(stream, peer, tls.clone(), timeout, tx.clone()),
                            Err(error) => {
                                // Out of file descriptors and the like: back off, keep serving.
                                tracing::warn!(%error, "accept failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        },
                    }
                }
            }));
        }
        drop(tx);
        for task in accept_tasks {
            let _ = task.await;
        }
        hub_task.await.map_err(io::Error::other)
    }
}

/// A bound TLS listener's acceptor and identity policy.
#[derive(Clone)]
struct TlsListener {
    acceptor: TlsAcceptor,
    identity_as_username: bool,
}

fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsListener>,
    handshake_timeout: Duration,
    hub: mpsc::Sender<ToHub>,
) {
    // Small packets go out at once: MQTT is request/response heavy.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, %peer, "TCP_NODELAY not set");
    }
    tokio::spawn(async move {
        match tls {
            None => conn::serve(stream, peer, None, hub).await,
            Some(tls) => {
                match tokio::time::timeout(handshake_timeout, tls.acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        let identity = if tls.identity_as_username {
                            let certs = tls_stream.get_ref().1.peer_certificates();
                            certs.and_then(|c| c.first()).and_then(|c| common_name(c))
                        } else {
                            None
                        };
                        conn::serve(tls_stream, peer, identity, hub).await
                    }
                    Ok(Err(error)) => tracing::info!(%error, %peer, "TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            }
        }
    });
}

/// The first common name of a DER certificate's subject.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
