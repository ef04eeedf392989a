//! Test support shared by the futures-io runtimes' tests (`surgemq-async-std` includes this file
//! too): a raw MQTT 3.1.1 client over any futures-io stream, built on `surgemq_core::codec`,
//! the scenarios every runtime must pass (generic over `driver::TcpRuntime`), and self-signed
//! TLS configurations made by rcgen. A runtime's test file only picks the runtime and says how
//! to open a client TCP connection. The async client's scenarios are in `client`.
#![allow(dead_code)]

pub(crate) mod client;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, future};
use futures_rustls::TlsConnector;
use futures_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use futures_rustls::rustls::server::WebPkiClientVerifier;
use futures_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use surgemq_core::broker::{AuthMode, BrokerConfig};
use surgemq_core::codec::{
    ConnAck, Connect, ConnectReason, Packet, PacketId, Properties, ProtocolVersion, PubAck,
    PubAckReason, Publish, QoS, SubAck, SubAckReason, Subscribe, SubscriptionOptions, decode_buf,
};
use surgemq_core::string::MqttString;
use surgemq_core::topic::{TopicFilter, TopicName};
use surgemq_smol::driver::{Listener, Server, ShutdownHandle, TcpRuntime};

const VERSION: ProtocolVersion = ProtocolVersion::V3_1_1;

/// Fails the test unless `work` completes before `timer`.
pub(crate) async fn within<T>(
    timer: impl Future<Output = ()>,
    what: &str,
    work: impl Future<Output = T>,
) -> T {
    let timed_out = async {
        timer.await;
        None
    };
    match future::or(async { Some(work.await) }, timed_out).await {
        Some(value) => value,
        None => panic!("timed out: {what}"),
    }
}

/// A raw MQTT 3.1.1 client: writes packets, reads packets, nothing more.
pub(crate) struct RawClient<S> {
    stream: S,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawClient<S> {
    /// Sends CONNECT (clean session) and returns the CONNACK.
    pub(crate) async fn connect(
        stream: S,
        client_id: &str,
        username: Option<&str>,
    ) -> (Self, ConnAck) {
        let mut client = Self {
            stream,
            buf: BytesMut::new(),
        };
        let connect = Connect {
            protocol: VERSION,
            clean_start: true,
            keep_alive: 30,
            properties: Properties::new(),
            client_id: MqttString::new(client_id).unwrap(),
            will: None,
            username: username.map(|u| MqttString::new(u).unwrap()),
            password: None,
        };
        client.send(Packet::Connect(Box::new(connect))).await;
        match client.recv().await {
            Some(Packet::ConnAck(ack)) => (client, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub(crate) async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        out.reserve(packet.encoded_len(VERSION).unwrap());
        packet.encode(VERSION, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// The next packet, or `None` once the server closed the connection.
    pub(crate) async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(packet) = decode_buf(&mut self.buf, VERSION, u32::MAX).unwrap() {
                return Some(packet);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub(crate) async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
        let subscribe = Subscribe {
            packet_id: PacketId::MIN,
            properties: Properties::new(),
            filters: vec![(
                TopicFilter::parse(filter).unwrap(),
                SubscriptionOptions::qos(qos),
            )],
        };
        self.send(Packet::Subscribe(subscribe)).await;
        match self.recv().await {
            Some(Packet::SubAck(ack)) => ack,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub(crate) async fn publish_qos1(
        &mut self,
        topic: &str,
        payload: &'static [u8],
        id: u16,
    ) -> PubAck {
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: TopicName::parse(topic).unwrap(),
            packet_id: PacketId::new(id),
            properties: Properties::new(),
            payload: Bytes::from_static(payload),
        };
        self.send(Packet::Publish(publish)).await;
        match self.recv().await {
            Some(Packet::PubAck(ack)) => ack,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

/// CONNECT → SUBSCRIBE `a/#` → a second client publishes QoS 1 on `a/b` → the first receives
/// it (and acknowledges it).
pub(crate) async fn qos1_round_trip<S, F, Fut>(connect: F)
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let (mut subscriber, ack) = RawClient::connect(connect().await, "sub", None).await;
    assert_eq!(ack.reason, ConnectReason::Success);
    let suback = subscriber.subscribe("a/#", QoS::AtLeastOnce).await;
    assert_eq!(suback.reasons, vec![SubAckReason::GrantedQoS1]);

    let (mut publisher, ack) = RawClient::connect(connect().await, "pub", None).await;
    assert_eq!(ack.reason, ConnectReason::Success);
    let puback = publisher.publish_qos1("a/b", b"hi", 7).await;
    assert_eq!(puback.packet_id.get(), 7);
    assert_eq!(puback.reason, PubAckReason::Success);

    match subscriber.recv().await {
        Some(Packet::Publish(publish)) => {
            assert_eq!(publish.topic.as_str(), "a/b");
            assert_eq!(&publish.payload[..], b"hi");
            assert_eq!(publish.qos, QoS::AtLeastOnce);
            let id = publish.packet_id.expect("QoS 1 carries a packet id");
            subscriber.send(Packet::PubAck(PubAck::success(id))).await;
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate for `name` (also its common name) and its key.
pub(crate) fn self_signed(name: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let key = PrivatePkcs8KeyDer::from(key.serialize_der()).into();
    (cert.der().clone(), key)
}

/// A server configuration; with `client_root`, client certificates signed by it are required.
pub(crate) fn server_tls(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    client_root: Option<CertificateDer<'static>>,
) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_root {
        None => builder.with_no_client_auth(),
        Some(root) => {
            let mut roots = RootCertStore::empty();
            roots.add(root).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), ring())
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    Arc::new(builder.with_single_cert(vec![cert], key).unwrap())
}

/// A client configuration trusting `server_root`, presenting `identity` if given.
pub(crate) fn client_tls(
    server_root: CertificateDer<'static>,
    identity: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(server_root).unwrap();
    let builder = ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
    })
}

/// Accepts everyone and remembers the user name each CONNECT was checked with.
#[derive(Default)]
pub(crate) struct RecordingAuth(pub(crate) std::sync::Mutex<Vec<Option<String>>>);

impl surgemq_core::broker::Authenticator for RecordingAuth {
    fn authenticate(
        &self,
        request: &surgemq_core::broker::AuthRequest,
    ) -> surgemq_core::broker::AuthVerdict {
        let username = request.username.as_ref().map(|u| u.as_str().to_owned());
        self.0.lock().unwrap().push(username);
        surgemq_core::broker::AuthVerdict::Accept
    }
}

// ---- scenarios, generic over the runtime --------------------------------------------------

/// Upper bound for each scenario's whole run.
const SCENARIO_LIMIT: Duration = Duration::from_secs(20);

/// A running server: its address, its shutdown handle, and where `run`'s result arrives.
struct Running {
    addr: SocketAddr,
    shutdown: ShutdownHandle,
    done: async_channel::Receiver<io::Result<()>>,
}

impl Running {
    async fn start<R: TcpRuntime>(server: Server<R>, runtime: &R) -> Self {
        let bound = server.bind().await.unwrap();
        let addr = bound.local_addrs()[0];
        let shutdown = bound.shutdown_handle();
        let (tx, done) = async_channel::bounded(1);
        runtime.spawn(async move {
            let _ = tx.send(bound.run().await).await;
        });
        Self {
            addr,
            shutdown,
            done,
        }
    }

    /// Shuts the server down and checks that `run` returns cleanly.
    async fn stop(self) {
        self.shutdown.shutdown();
        self.done.recv().await.unwrap().unwrap();
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn tls_connect<S>(connector: &TlsConnector, tcp: S) -> futures_rustls::client::TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// Runs `scenario` on `R`, failing it after [`SCENARIO_LIMIT`].
async fn bounded<R: TcpRuntime + Default>(what: &str, scenario: impl Future<Output = ()>) {
    let limit = R::default().sleep_until(Instant::now() + SCENARIO_LIMIT);
    within(limit, what, scenario).await;
}

/// CONNECT, SUBSCRIBE, PUBLISH QoS 1 from a second client, delivery: over plain TCP.
pub(crate) async fn tcp_round_trip<R, C, F, S>(connect: C)
where
    R: TcpRuntime + Default,
    C: Fn(SocketAddr) -> F,
    F: Future<Output = S>,
    S: AsyncRead + AsyncWrite + Unpin,
{
    bounded::<R>("TCP round trip", async {
        let runtime = R::default();
        let server = Server::with_runtime(
            runtime.clone(),
            BrokerConfig::default(),
            vec![Listener::tcp(any_port())],
        );
        let running = Running::start(server, &runtime).await;
        let addr = running.addr;
        qos1_round_trip(|| connect(addr)).await;
        running.stop().await;
    })
    .await;
}

/// The same over TLS with a self-signed certificate.
pub(crate) async fn tls_round_trip<R, C, F, S>(connect: C)
where
    R: TcpRuntime + Default,
    C: Fn(SocketAddr) -> F,
    F: Future<Output = S>,
    S: AsyncRead + AsyncWrite + Unpin,
{
    bounded::<R>("TLS round trip", async {
        let runtime = R::default();
        let (cert, key) = self_signed("localhost");
        let listener = Listener::tls(any_port(), server_tls(cert.clone(), key, None));
        let server = Server::with_runtime(runtime.clone(), BrokerConfig::default(), vec![listener]);
        let running = Running::start(server, &runtime).await;
        let connector = TlsConnector::from(client_tls(cert, None));
        let addr = running.addr;
        qos1_round_trip(|| {
            let tcp = connect(addr);
            let connector = connector.clone();
            async move { tls_connect(&connector, tcp.await).await }
        })
        .await;
        running.stop().await;
    })
    .await;
}

/// With `identity_as_username`, the authenticator sees the client certificate's common name,
/// not the user name the CONNECT carries.
pub(crate) async fn tls_identity_is_the_user_name<R, C, F, S>(connect: C)
where
    R: TcpRuntime + Default,
    C: Fn(SocketAddr) -> F,
    F: Future<Output = S>,
    S: AsyncRead + AsyncWrite + Unpin,
{
    bounded::<R>("TLS identity", async {
        let runtime = R::default();
        let (server_cert, server_key) = self_signed("localhost");
        let (client_cert, client_key) = self_signed("alice");
        let tls = server_tls(server_cert.clone(), server_key, Some(client_cert.clone()));
        let listener = Listener::tls(any_port(), tls).with_identity_as_username();
        let config = BrokerConfig {
            auth: AuthMode::External,
            ..BrokerConfig::default()
        };
        let auth = Arc::new(RecordingAuth::default());
        let server = Server::with_runtime(runtime.clone(), config, vec![listener])
            .with_authenticator(auth.clone());
        let running = Running::start(server, &runtime).await;

        let connector =
            TlsConnector::from(client_tls(server_cert, Some((client_cert, client_key))));
        let stream = tls_connect(&connector, connect(running.addr).await).await;
        let (_client, ack) = RawClient::connect(stream, "c1", Some("mallory")).await;
        assert_eq!(ack.reason, ConnectReason::Success);
        assert_eq!(*auth.0.lock().unwrap(), vec![Some("alice".to_owned())]);
        running.stop().await;
    })
    .await;
}

/// A TCP client on a TLS listener that never starts its handshake is dropped after the
/// handshake timeout.
pub(crate) async fn tls_handshake_times_out<R, C, F, S>(connect: C)
where
    R: TcpRuntime + Default,
    C: Fn(SocketAddr) -> F,
    F: Future<Output = S>,
    S: AsyncRead + AsyncWrite + Unpin,
{
    bounded::<R>("handshake timeout", async {
        let runtime = R::default();
        let (cert, key) = self_signed("localhost");
        let listener = Listener::tls(any_port(), server_tls(cert, key, None));
        let server = Server::with_runtime(runtime.clone(), BrokerConfig::default(), vec![listener])
            .with_tls_handshake_timeout(Duration::from_millis(200));
        let running = Running::start(server, &runtime).await;
        let mut tcp = connect(running.addr).await;
        let mut byte = [0u8; 1];
        // EOF (or a reset) once the server gives up on the handshake.
        assert!(matches!(tcp.read(&mut byte).await, Ok(0) | Err(_)));
        running.stop().await;
    })
    .await;
}

/// Shutdown closes connected clients, `run` returns, and the listener is gone.
pub(crate) async fn graceful_shutdown<R, C, F, S>(connect: C)
where
    R: TcpRuntime + Default,
    C: Fn(SocketAddr) -> F,
    F: Future<Output = io::Result<S>>,
    S: AsyncRead + AsyncWrite + Unpin,
{
    bounded::<R>("graceful shutdown", async {
        let runtime = R::default();
        let server = Server::with_runtime(
            runtime.clone(),
            BrokerConfig::default(),
            vec![Listener::tcp(any_port())],
        );
        let running = Running::start(server, &runtime).await;
        let addr = running.addr;
        let tcp = connect(addr).await.unwrap();
        let (mut client, ack) = RawClient::connect(tcp, "c1", None).await;
        assert_eq!(ack.reason, ConnectReason::Success);

        running.stop().await;
        assert_eq!(
            client.recv().await,
            None,
            "the server closed the connection"
        );
        assert!(connect(addr).await.is_err(), "the listener is closed");
    })
    .await;
}
