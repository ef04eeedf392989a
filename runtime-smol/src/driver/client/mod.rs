//! The async MQTT client on any [`TcpRuntime`]: a [`Client`] handle (`Clone + Send`) whose
//! commands resolve on completion, and a [`Messages`] stream, both served by one task that owns
//! the core [`surgemq_core::client::Client`] state machine (`task`).
//!
//! That task never waits on I/O itself: a reader and a writer per transport (`transport`) move
//! bytes, so a server that is slow to read can never stop us from reading, and reading never
//! waits for the application (the send/receive deadlock other clients have). Flow control is
//! MQTT's own: an incoming QoS 1/2 message is acknowledged only once the application's
//! [`Messages`] channel has taken it, so a slow consumer makes the broker hold back (its
//! in-flight window bounds what we buffer) while our own publishes keep completing. QoS 0
//! messages beyond the buffer are dropped and counted — at most once allows it.
//!
//! Persistence: [`Client::connect_with_store`] keeps a persistent session (`clean_start` false)
//! in a store ([`StoreSetup`], e.g. `surgemq_core::store::redb::setup`), so that unfinished
//! QoS 1/2 publishes and received QoS 2 state survive a restart of the process, even a crash.
//! The task restores the core client from the store's content, hands the core's
//! [`ClientOutput::Store`](surgemq_core::client::ClientOutput::Store) operations to the store's
//! committer (those drained after one input as one batch) and feeds the commit reports back;
//! in durable mode (the default here) the core holds back what goes on the wire until what was
//! stored before it is committed. The store is closed, with a last commit (on the runtime's
//! blocking pool), when the client ends.
//! In durable mode a received QoS 2 message is acknowledged first and handed to the application
//! once that acknowledgement (its packet identifier) is committed, so a crash never makes it
//! arrive twice: before the commit the server resends it and it is delivered then; after, the
//! resend is recognised. Messages behind it wait, in order.
//!
//! The same API and semantics as `surgemq-tokio`'s client. Never: protocol decisions here.

mod task;
mod transport;

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use futures_rustls::rustls::ClientConfig as TlsClientConfig;
use futures_rustls::rustls::pki_types::ServerName;
use surgemq_core::client::{
    AckToken, ClientConfig, ClientError, ClientRestore, ConfigError, IncomingMessage, RestoreError,
};
use surgemq_core::codec::{
    ConnectReason, Properties, PubAckReason, QoS, SubAckReason, SubscriptionOptions, UnsubAckReason,
};
use surgemq_core::store::StoreSetup;
use surgemq_core::topic::{TopicFilter, TopicName};

use super::TcpRuntime;
use task::Task;

/// Capacity of the channel from [`Client`] handles to the client task.
const COMMAND_CHANNEL: usize = 64;

/// Where and how to connect.
#[derive(Clone)]
pub struct ClientOptions {
    /// `host:port` of the broker.
    pub address: String,
    /// The MQTT client configuration (identity, version, session, limits, reconnect policy).
    /// Its `connect_timeout` also bounds the TCP connect and the TLS handshake.
    pub config: ClientConfig,
    /// TLS: the rustls configuration (roots, client certificate) and the server name to check.
    pub tls: Option<(Arc<TlsClientConfig>, ServerName<'static>)>,
    /// Messages the [`Messages`] channel holds for the application. Beyond it, QoS 1/2
    /// messages wait unacknowledged (so the broker holds back), and QoS 0 ones are dropped once
    /// as many again are waiting. Reading from the socket never pauses.
    pub message_buffer: usize,
}

impl ClientOptions {
    /// Plain TCP to `address` with `config`.
    pub fn new(address: impl Into<String>, config: ClientConfig) -> Self {
        Self {
            address: address.into(),
            config,
            tls: None,
            message_buffer: 1024,
        }
    }

    /// Uses TLS.
    #[must_use]
    pub fn with_tls(
        mut self,
        config: Arc<TlsClientConfig>,
        server_name: ServerName<'static>,
    ) -> Self {
        self.tls = Some((config, server_name));
        self
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("address", &self.address)
            .field("config", &self.config)
            .field("tls", &self.tls.as_ref().map(|(_, name)| name))
            .field("message_buffer", &self.message_buffer)
            .finish()
    }
}

/// Why an async client call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum AsyncClientError {
    /// The state machine refused the command.
    Client(ClientError),
    /// The server refused the connection.
    Refused(ConnectReason),
    /// The client stopped (disconnected, or its task ended) before the command completed.
    Closed,
    /// The first connection could not be made (without a reconnect policy).
    Io(io::Error),
    /// [`Client::connect_with_store`]: the store's session cannot be resumed (e.g. the
    /// configuration asks for a clean session, which is never stored).
    Restore(RestoreError),
    /// The configuration cannot connect (e.g. MQTT 3.1.1 with an empty client identifier and
    /// no clean session); refused before any connection is made.
    Config(ConfigError),
}

impl fmt::Display for AsyncClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Client(e) => write!(f, "{e}"),
            Self::Refused(r) => write!(f, "connection refused: {r:?}"),
            Self::Closed => f.write_str("client closed"),
            Self::Io(e) => write!(f, "connection failed: {e}"),
            Self::Restore(e) => write!(f, "cannot resume the stored session: {e}"),
            Self::Config(e) => write!(f, "invalid configuration: {e}"),
        }
    }
}

impl std::error::Error for AsyncClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Client(e) => Some(e),
            Self::Io(e) => Some(e),
            Self::Restore(e) => Some(e),
            Self::Config(e) => Some(e),
            Self::Refused(_) | Self::Closed => None,
        }
    }
}

/// What a completed command resolves with.
enum Completion {
    Published(PubAckReason),
    Subscribed(Vec<SubAckReason>),
    Unsubscribed(Vec<UnsubAckReason>),
}

/// A one-shot reply channel (capacity 1, one message).
type Reply = async_channel::Sender<Result<Completion, AsyncClientError>>;

/// What [`Client`] handles ask of the client task.
enum Command {
    Publish {
        topic: TopicName,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: Properties,
        reply: Reply,
    },
    Subscribe {
        filters: Vec<(TopicFilter, SubscriptionOptions)>,
        reply: Reply,
    },
    Unsubscribe {
        filters: Vec<TopicFilter>,
        reply: Reply,
    },
    Ack(AckToken),
    Disconnect {
        reply: async_channel::Sender<()>,
    },
}

/// A handle on a running client on runtime `R`: cheap to clone, usable from any task.
///
/// `surgemq-smol` and `surgemq-async-std` name it `Client` for their runtime.
pub struct Client<R> {
    commands: async_channel::Sender<Command>,
    // The handle only talks to the task; `R` names the runtime the task runs on.
    runtime: PhantomData<fn() -> R>,
}

impl<R> Clone for Client<R> {
    fn clone(&self) -> Self {
        Self {
            commands: self.commands.clone(),
            runtime: PhantomData,
        }
    }
}

impl<R> fmt::Debug for Client<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("closed", &self.commands.is_closed())
            .finish_non_exhaustive()
    }
}

/// The stream of messages received on the client's subscriptions.
#[derive(Debug)]
pub struct Messages {
    rx: async_channel::Receiver<IncomingMessage>,
}

impl Messages {
    /// The next message; `None` once the client has stopped and every message was taken.
    pub async fn recv(&mut self) -> Option<IncomingMessage> {
        self.rx.recv().await.ok()
    }
}

impl<R: TcpRuntime + Default> Client<R> {
    /// Connects and waits for the first CONNACK; the client then keeps the session up
    /// (reconnecting as configured) until [`Client::disconnect`], or until every handle is
    /// dropped. With a reconnect policy, a failed attempt is retried rather than returned.
    pub async fn connect(options: ClientOptions) -> Result<(Self, Messages), AsyncClientError> {
        Self::connect_with_runtime(R::default(), options).await
    }

    /// [`Client::connect`] with the session kept in `store` (see the module docs): first
    /// resumes what the store holds (returned as the [`ClientRestore`] report, also logged):
    /// restored publishes complete on their own, before new ones, and their completions are
    /// not reported to any handle. `options.config` must ask for a persistent session
    /// (`clean_start` false), otherwise [`AsyncClientError::Restore`] is returned before
    /// connecting; persistence `Off` there means
    /// [`Persistence::Durable`](surgemq_core::client::Persistence::Durable). The store is
    /// closed (a last commit) when the client ends: once [`Client::disconnect`] returns, or
    /// after every handle is dropped, or before a failed first connection is returned.
    pub async fn connect_with_store(
        options: ClientOptions,
        store: StoreSetup,
    ) -> Result<(Self, Messages, ClientRestore), AsyncClientError> {
        Self::connect_with_store_and_runtime(R::default(), options, store).await
    }
}

impl<R: TcpRuntime> Client<R> {
    /// [`Client::connect`] on a given runtime value (for runtimes that carry state).
    pub async fn connect_with_runtime(
        runtime: R,
        options: ClientOptions,
    ) -> Result<(Self, Messages), AsyncClientError> {
        let (client, messages, _) = Self::start(runtime, options, None).await?;
        Ok((client, messages))
    }

    /// [`Client::connect_with_store`] on a given runtime value.
    pub async fn connect_with_store_and_runtime(
        runtime: R,
        options: ClientOptions,
        store: StoreSetup,
    ) -> Result<(Self, Messages, ClientRestore), AsyncClientError> {
        let (client, messages, report) = Self::start(runtime, options, Some(store)).await?;
        Ok((client, messages, report.unwrap_or_default()))
    }

    async fn start(
        runtime: R,
        options: ClientOptions,
        store: Option<StoreSetup>,
    ) -> Result<(Self, Messages, Option<ClientRestore>), AsyncClientError> {
        let (commands_tx, commands_rx) = async_channel::bounded(COMMAND_CHANNEL);
        let (messages_tx, messages_rx) = async_channel::bounded(options.message_buffer.max(1));
        let (ready_tx, ready_rx) = async_channel::bounded(1);
        let (task, report) = Task::new(
            runtime.clone(),
            options,
            store,
            commands_rx,
            messages_tx,
            ready_tx,
        )?;
        runtime.spawn(task.run());
        match ready_rx.recv().await {
            Ok(Ok(())) => Ok((
                Self {
                    commands: commands_tx,
                    runtime: PhantomData,
                },
                Messages { rx: messages_rx },
                report,
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(AsyncClientError::Closed),
        }
    }
}

impl<R> Client<R> {
    async fn call(
        &self,
        make: impl FnOnce(Reply) -> Command,
    ) -> Result<Completion, AsyncClientError> {
        let (reply, done) = async_channel::bounded(1);
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| AsyncClientError::Closed)?;
        done.recv().await.map_err(|_| AsyncClientError::Closed)?
    }

    /// Publishes; resolves when complete (QoS 0: handed to the socket; 1: PUBACK; 2: PUBCOMP).
    pub async fn publish(
        &self,
        topic: TopicName,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<PubAckReason, AsyncClientError> {
        self.publish_with(topic, payload, qos, retain, Properties::new())
            .await
    }

    /// Publishes with 5.0 properties.
    pub async fn publish_with(
        &self,
        topic: TopicName,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
        properties: Properties,
    ) -> Result<PubAckReason, AsyncClientError> {
        let payload = payload.into();
        match self
            .call(|reply| Command::Publish {
                topic,
                payload,
                qos,
                retain,
                properties,
                reply,
            })
            .await?
        {
            Completion::Published(reason) => Ok(reason),
            _ => Err(AsyncClientError::Closed),
        }
    }

    /// Subscribes; resolves with the granted QoS (or failure) per filter.
    pub async fn subscribe(
        &self,
        filters: Vec<(TopicFilter, SubscriptionOptions)>,
    ) -> Result<Vec<SubAckReason>, AsyncClientError> {
        match self
            .call(|reply| Command::Subscribe { filters, reply })
            .await?
        {
            Completion::Subscribed(reasons) => Ok(reasons),
            _ => Err(AsyncClientError::Closed),
        }
    }

    /// Unsubscribes; resolves on UNSUBACK.
    pub async fn unsubscribe(
        &self,
        filters: Vec<TopicFilter>,
    ) -> Result<Vec<UnsubAckReason>, AsyncClientError> {
        match self
            .call(|reply| Command::Unsubscribe { filters, reply })
            .await?
        {
            Completion::Unsubscribed(reasons) => Ok(reasons),
            _ => Err(AsyncClientError::Closed),
        }
    }

    /// Acknowledges a message received with `config.manual_acks` set.
    pub async fn ack(&self, ack: AckToken) -> Result<(), AsyncClientError> {
        self.commands
            .send(Command::Ack(ack))
            .await
            .map_err(|_| AsyncClientError::Closed)
    }

    /// Sends DISCONNECT and stops the client (its Will is not published); resolves once the
    /// connection is closed (or after a few seconds, if the server does not take the bytes).
    pub async fn disconnect(&self) {
        let (reply, done) = async_channel::bounded(1);
        if self
            .commands
            .send(Command::Disconnect { reply })
            .await
            .is_ok()
        {
            let _ = done.recv().await;
        }
    }
}
