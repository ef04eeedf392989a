//! The async MQTT client on tokio: a [`Client`] handle (`Clone + Send`) whose commands resolve
//! on completion, and a [`Messages`] stream, both served by one driver task that owns the core
//! [`surgemq_core::client::Client`] state machine.
//!
//! The driver never waits on I/O itself: a reader task and a writer task move bytes, so a
//! server that is slow to read can never stop us from reading, and reading never waits for the
//! application (the send/receive deadlock other clients have). Flow control is MQTT's own: an
//! incoming QoS 1/2 message is acknowledged only once the application's [`Messages`] channel
//! has taken it, so a slow consumer makes the broker hold back (its in-flight window bounds
//! what we buffer) while our own publishes keep completing. QoS 0 messages beyond the buffer
//! are dropped and counted — at most once allows it.
//!
//! Persistence: [`Client::connect_with_store`] keeps a persistent session (`clean_start` false)
//! in a store ([`StoreSetup`], e.g. `surgemq_core::store::redb::setup`), so that unfinished
//! QoS 1/2 publishes and received QoS 2 state survive a restart of the process, even a crash.
//! The driver restores the core client from the store's content, hands the core's
//! [`ClientOutput::Store`] operations to the store's committer (those drained after one input
//! as one batch) and feeds the commit reports back; in durable mode (the default here) the core
//! holds back what goes on the wire until what was stored before it is committed. The store is
//! closed, with a last commit, when the client ends.
//! In durable mode a received QoS 2 message is acknowledged first and handed to the application
//! once that acknowledgement (its packet identifier) is committed, so a crash never makes it
//! arrive twice: before the commit the server resends it and it is delivered then; after, the
//! resend is recognised. Messages behind it wait, in order.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use surgemq_core::client::{
    AckToken, Client as CoreClient, ClientConfig, ClientError, ClientEvent, ClientInput,
    ClientOutput, ClientRestore, ConfigError, IncomingMessage, Persistence, RestoreError,
    StoreFailure, Token,
};
use surgemq_core::codec::{
    ConnectReason, Properties, PubAckReason, QoS, SubAckReason, SubscriptionOptions, UnsubAckReason,
};
use surgemq_core::store::{StoreOp, StoreSetup, StoreSink};
use surgemq_core::time::Instant;
use surgemq_core::topic::{TopicFilter, TopicName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig as TlsClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

/// Where and how to connect.
#[derive(Clone)]
pub struct ClientOptions {
    /// `host:port` of the broker.
    pub address: String,
    /// The MQTT client configuration (identity, version, session, limits, reconnect policy).
    pub config: ClientConfig,
    /// TLS: the rustls configuration (roots, client certificate) and the server name to check.
    pub tls: Option<(Arc<TlsClientConfig>, ServerName<'static>)>,
    /// Messages buffered for the application. Beyond it, incoming QoS 1/2 messages stay
    /// unacknowledged (so the broker holds back) and QoS 0 messages are dropped and counted;
    /// reading from the socket never pauses.
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

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("address", &self.address)
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
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
    /// The client stopped (disconnected, or its driver ended) before the command completed.
    Closed,
    /// The first connection could not be made.
    Io(io::Error),
    /// [`Client::connect_with_store`]: the store's session cannot be resumed (e.g. the
    /// configuration asks for a clean session, which is never stored).
    Restore(RestoreError),
    /// The configuration cannot connect (e.g. MQTT 3.1.1 with an empty client identifier and
    /// no clean session); refused before any connection is made.
    Config(ConfigError),
}

impl std::fmt::Display for AsyncClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

impl std::error::Error for AsyncClientError {}

enum Completion {
    Published(PubAckReason),
    Subscribed(Vec<SubAckReason>),
    Unsubscribed(Vec<UnsubAckReason>),
}

type Reply = oneshot::Sender<Result<Completion, AsyncClientError>>;

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
        reply: oneshot::Sender<()>,
    },
}

/// A handle on a running client: cheap to clone, usable from any task.
#[derive(Clone, Debug)]
pub struct Client {
    commands: mpsc::Sender<Command>,
}

/// The stream of messages received on the client's subscriptions.
#[derive(Debug)]
pub struct Messages {
    rx: mpsc::Receiver<IncomingMessage>,
}

impl Messages {
    /// The next message; `None` once the client has stopped.
    pub async fn recv(&mut self) -> Option<IncomingMessage> {
        self.rx.recv().await
    }
}

impl Client {
    /// Connects and waits for the first CONNACK; the returned handle then keeps the session
    /// up (reconnecting as configured) until [`Client::disconnect`]. If that first attempt
    /// fails (no TCP connection, TLS refused, closed or refused before CONNACK), `connect`
    /// returns the error instead of retrying.
    pub async fn connect(options: ClientOptions) -> Result<(Client, Messages), AsyncClientError> {
        let (client, messages, _) = Self::start(options, None).await?;
        Ok((client, messages))
    }

    /// [`Client::connect`] with the session kept in `store` (see the module docs): first
    /// resumes what the store holds (returned as the [`ClientRestore`] report, also logged):
    /// restored publishes complete on their own, before new ones, and their completions are
    /// not reported to any handle. `options.config` must ask for a persistent session
    /// (`clean_start` false), otherwise [`AsyncClientError::Restore`] is returned before
    /// connecting; persistence `Off` there means [`Persistence::Durable`]. The store is
    /// closed (a last commit) when the client ends: once [`Client::disconnect`] returns, or
    /// after every handle is dropped, or before a failed first connection is returned.
    pub async fn connect_with_store(
        options: ClientOptions,
        store: StoreSetup,
    ) -> Result<(Client, Messages, ClientRestore), AsyncClientError> {
        let (client, messages, report) = Self::start(options, Some(store)).await?;
        Ok((client, messages, report.unwrap_or_default()))
    }

    async fn start(
        options: ClientOptions,
        store: Option<StoreSetup>,
    ) -> Result<(Client, Messages, Option<ClientRestore>), AsyncClientError> {
        let (commands_tx, commands_rx) = mpsc::channel(64);
        let (messages_tx, messages_rx) = mpsc::channel(options.message_buffer.max(1));
        let (ready_tx, ready_rx) = oneshot::channel();
        let (driver, report) = Driver::new(options, store, commands_rx, messages_tx, ready_tx)?;
        tokio::spawn(driver.run());
        match ready_rx.await {
            Ok(Ok(())) => Ok((
                Client {
                    commands: commands_tx,
                },
                Messages { rx: messages_rx },
                report,
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(AsyncClientError::Closed),
        }
    }

    async fn call(
        &self,
        make: impl FnOnce(Reply) -> Command,
    ) -> Result<Completion, AsyncClientError> {
        let (reply, done) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| AsyncClientError::Closed)?;
        done.await.map_err(|_| AsyncClientError::Closed)?
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

    /// Sends DISCONNECT and stops the client (its Will is not published).
    pub async fn disconnect(&self) {
        let (reply, done) = oneshot::channel();
        if self
            .commands
            .send(Command::Disconnect { reply })
            .await
            .is_ok()
        {
            let _ = done.await;
        }
    }
}

/// Events from the I/O tasks of the current transport, tagged with its number.
enum Io {
    Connected(u64, io::Result<mpsc::UnboundedSender<Bytes>>),
    Read(u64, Bytes),
    Down(u64),
}

/// A commit report from the store's thread: every operation up to `.0` committed, or not.
type StoreDone = (u64, Result<(), StoreFailure>);

/// `connect`'s answer channel.
type Ready = oneshot::Sender<Result<(), AsyncClientError>>;

struct Driver {
    options: ClientOptions,
    core: CoreClient,
    start: tokio::time::Instant,
    commands: mpsc::Receiver<Command>,
    messages: mpsc::Sender<IncomingMessage>,
    /// Messages received but not yet taken by the application, with the acknowledgement owed
    /// once they are (QoS 1/2 ones are bounded by the broker's in-flight window, since they
    /// stay unacknowledged here; QoS 0 ones by `message_buffer`).
    backlog: VecDeque<(IncomingMessage, Option<AckToken>)>,
    /// The application acknowledges itself (`config.manual_acks`).
    user_acks: bool,
    /// QoS 0 messages dropped because the application was not keeping up.
    dropped_qos0: u64,
    ready: Option<Ready>,
    /// With a store, the first attempt's failure waits here until the store is closed (so
    /// that the caller may open it again at once).
    failed: Option<(Ready, AsyncClientError)>,
    replies: HashMap<Token, Reply>,
    io_tx: mpsc::Sender<Io>,
    io_rx: mpsc::Receiver<Io>,
    transport: u64,
    writer: Option<mpsc::UnboundedSender<Bytes>>,
    /// The current transport's I/O task, awaited at the end so that the last bytes (a
    /// DISCONNECT) are written before `disconnect()` returns.
    transport_task: Option<tokio::task::JoinHandle<()>>,
    stopped: Option<oneshot::Sender<()>>,
    /// The store's committer, with [`Client::connect_with_store`].
    store: Option<Box<dyn StoreSink>>,
    /// Durable store: QoS 2 messages reach the application only once their acknowledgement
    /// is committed.
    commit_first: bool,
    /// The last store sequence number reported committed.
    committed: u64,
    /// A QoS 2 message acknowledged and waiting for the commit of this store mark; while it
    /// waits, later messages wait in `backlog`.
    awaiting: Option<(u64, IncomingMessage)>,
    /// Store operations drained in this round (one atomic group or more).
    store_batch: Vec<(u64, StoreOp)>,
    /// Commit reports. Unbounded so that the store's thread never blocks on the driver (which
    /// waits for that thread when it closes the store); one report per commit.
    store_done: mpsc::UnboundedReceiver<StoreDone>,
    /// Keeps `store_done` open when there is no store.
    _store_done_tx: mpsc::UnboundedSender<StoreDone>,
}

impl Driver {
    /// The driver, with its core restored from `store` (and the store's committer started)
    /// when there is one.
    fn new(
        options: ClientOptions,
        store: Option<StoreSetup>,
        commands: mpsc::Receiver<Command>,
        messages: mpsc::Sender<IncomingMessage>,
        ready: Ready,
    ) -> Result<(Self, Option<ClientRestore>), AsyncClientError> {
        let (io_tx, io_rx) = mpsc::channel(16);
        // The driver acknowledges itself, when the application has taken the message.
        let mut config = options.config.clone();
        let user_acks = config.manual_acks;
        config.manual_acks = true;
        if store.is_some() && config.persistence == Persistence::Off {
            config.persistence = Persistence::Durable;
        }
        let commit_first =
            store.is_some() && config.persistence == Persistence::Durable && !config.clean_start;
        let mut core = CoreClient::new(config, Instant::ZERO).map_err(AsyncClientError::Config)?;
        let (store_done_tx, store_done) = mpsc::unbounded_channel();
        let (store, report) = match store {
            Some(setup) => {
                let report = core
                    .restore(setup.snapshot)
                    .map_err(AsyncClientError::Restore)?;
                tracing::info!("restored from the store: {report}");
                let done_tx = store_done_tx.clone();
                let sink = (setup.start)(Box::new(move |seq, result| {
                    let _ = done_tx.send((seq, result));
                }));
                (Some(sink), Some(report))
            }
            None => (None, None),
        };
        let driver = Self {
            options,
            core,
            start: tokio::time::Instant::now(),
            commands,
            messages,
            backlog: VecDeque::new(),
            user_acks,
            dropped_qos0: 0,
            ready: Some(ready),
            failed: None,
            replies: HashMap::new(),
            io_tx,
            io_rx,
            transport: 0,
            writer: None,
            transport_task: None,
            stopped: None,
            store,
            commit_first,
            committed: 0,
            awaiting: None,
            store_batch: Vec::new(),
            store_done,
            _store_done_tx: store_done_tx,
        };
        Ok((driver, report))
    }

    fn now(&self) -> Instant {
        Instant::from_millis(u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    async fn run(mut self) {
        loop {
            if self.drain() {
                break;
            }
            let timeout = self.core.poll_timeout();
            let start = self.start;
            let sleep = async move {
                match timeout {
                    Some(at) => {
                        tokio::time::sleep_until(start + Duration::from_millis(at.as_millis()))
                            .await;
                    }
                    None => std::future::pending().await,
                }
            };
            let messages = self.messages.clone();
            tokio::select! {
                permit = messages.reserve_owned(),
                    if !self.backlog.is_empty() && self.awaiting.is_none() =>
                {
                    match permit {
                        Ok(permit) => {
                            if let Some((m, ack)) = self.backlog.pop_front() {
                                if self.needs_commit(&m, ack.as_ref()) {
                                    drop(permit);
                                    self.acknowledge_then_hold(m, ack);
                                } else {
                                    permit.send(m);
                                    self.acknowledge(ack);
                                }
                            }
                        }
                        // Nobody listens: acknowledge and drop what is buffered.
                        Err(_) => {
                            for (_, ack) in std::mem::take(&mut self.backlog) {
                                self.acknowledge(ack);
                            }
                        }
                    }
                }
                command = self.commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => {
                        // Every handle is gone: disconnect cleanly and end.
                        let now = self.now();
                        self.core.disconnect(now);
                        let (stopped, _) = oneshot::channel();
                        self.stopped = Some(stopped);
                    }
                },
                io = self.io_rx.recv() => {
                    if let Some(io) = io {
                        self.io(io);
                    }
                }
                Some((seq, result)) = self.store_done.recv() => {
                    if result.is_ok() {
                        self.committed = self.committed.max(seq);
                    }
                    let now = self.now();
                    self.core.handle_input(now, ClientInput::StoreDone { seq, result });
                    self.release_committed();
                }
                () = sleep => {
                    let now = self.now();
                    self.core.handle_input(now, ClientInput::Timeout);
                }
            }
        }
        if let Some(store) = self.store.take() {
            // The last commit: everything emitted is on disk before `disconnect()` returns.
            // Closing joins the store's thread: off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
        // Its acknowledgement is on disk now: the application may have it.
        if let Some((_, message)) = self.awaiting.take() {
            let _ = self.messages.try_send(message);
        }
        if let Some((ready, error)) = self.failed.take() {
            let _ = ready.send(Err(error));
        }
        if let Some(task) = self.transport_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.send(());
        }
    }

    /// Ends the client when its very first connection attempt fails.
    fn fail_first_attempt(&mut self, error: AsyncClientError) {
        if let Some(ready) = self.ready.take() {
            if self.store.is_some() {
                self.failed = Some((ready, error));
            } else {
                let _ = ready.send(Err(error));
            }
            let now = self.now();
            self.core.disconnect(now);
            let (stopped, _) = oneshot::channel();
            self.stopped = Some(stopped);
        }
    }

    fn command(&mut self, command: Command) {
        let now = self.now();
        let (result, reply) = match command {
            Command::Publish {
                topic,
                payload,
                qos,
                retain,
                properties,
                reply,
            } => (
                self.core
                    .publish(now, topic, payload, qos, retain, properties),
                reply,
            ),
            Command::Subscribe { filters, reply } => {
                (self.core.subscribe(now, filters, Properties::new()), reply)
            }
            Command::Unsubscribe { filters, reply } => (
                self.core.unsubscribe(now, filters, Properties::new()),
                reply,
            ),
            Command::Ack(ack) => {
                if let Err(e) = self.core.ack(now, ack) {
                    tracing::debug!(error = %e, "acknowledgement not sent");
                }
                return;
            }
            Command::Disconnect { reply } => {
                self.core.disconnect(now);
                self.stopped = Some(reply);
                return;
            }
        };
        match result {
            Ok(token) => {
                self.replies.insert(token, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(AsyncClientError::Client(e)));
            }
        }
    }

    fn io(&mut self, io: Io) {
        let now = self.now();
        match io {
            Io::Connected(n, result) if n == self.transport => match result {
                Ok(writer) => {
                    self.writer = Some(writer);
                    self.core.handle_input(now, ClientInput::TransportUp);
                }
                Err(e) => {
                    self.core.handle_input(now, ClientInput::TransportDown);
                    self.fail_first_attempt(AsyncClientError::Io(e));
                }
            },
            Io::Read(n, data) if n == self.transport => {
                self.core.handle_input(now, ClientInput::Received(data));
            }
            Io::Down(n) if n == self.transport => {
                self.writer = None;
                self.core.handle_input(now, ClientInput::TransportDown);
            }
            // From an earlier transport.
            _ => {}
        }
    }

    /// Carries out the core's outputs; returns true once the client is finished.
    fn drain(&mut self) -> bool {
        while let Some(output) = self.core.poll_output() {
            match output {
                ClientOutput::OpenTransport => self.open_transport(),
                ClientOutput::Transmit(data) => {
                    if let Some(writer) = &self.writer {
                        let _ = writer.send(data);
                    }
                }
                ClientOutput::CloseTransport => {
                    // Dropping the writer flushes, then shuts the socket down.
                    self.writer = None;
                    self.transport += 1;
                }
                ClientOutput::Event(event) => self.event(event),
                ClientOutput::Store { seq, op } => self.store_batch.push((seq, op)),
            }
        }
        if !self.store_batch.is_empty() {
            let batch = std::mem::take(&mut self.store_batch);
            match self.store.as_mut() {
                Some(store) => store.submit(batch),
                None => tracing::error!("the client emitted store operations but has no store"),
            }
        }
        if self.stopped.is_some() {
            for (_, reply) in self.replies.drain() {
                let _ = reply.send(Err(AsyncClientError::Closed));
            }
            return true;
        }
        false
    }

    fn event(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::Connected { .. } => {
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Ok(()));
                }
            }
            ClientEvent::Refused { reason } => {
                tracing::warn!(?reason, "connection refused");
                self.fail_first_attempt(AsyncClientError::Refused(reason));
            }
            ClientEvent::Message(mut message) => {
                // Without user acks, the ack is ours to send once the application has it.
                let ack = if self.user_acks {
                    None
                } else {
                    message.ack.take()
                };
                if !self.backlog.is_empty() || self.awaiting.is_some() {
                    self.queue_message(*message, ack);
                    return;
                }
                if self.needs_commit(&message, ack.as_ref()) {
                    if self.messages.capacity() > 0 {
                        self.acknowledge_then_hold(*message, ack);
                    } else {
                        self.queue_message(*message, ack);
                    }
                    return;
                }
                match self.messages.try_send(*message) {
                    Ok(()) => self.acknowledge(ack),
                    Err(mpsc::error::TrySendError::Full(m)) => self.queue_message(m, ack),
                    // Nobody listens any more.
                    Err(mpsc::error::TrySendError::Closed(_)) => self.acknowledge(ack),
                }
            }
            ClientEvent::Published { token, reason } => {
                self.complete(token, Completion::Published(reason));
            }
            ClientEvent::Subscribed { token, reasons } => {
                self.complete(token, Completion::Subscribed(reasons));
            }
            ClientEvent::Unsubscribed { token, reasons } => {
                self.complete(token, Completion::Unsubscribed(reasons));
            }
            ClientEvent::Failed { token, error } => {
                if let Some(reply) = self.replies.remove(&token) {
                    let _ = reply.send(Err(AsyncClientError::Client(error)));
                }
            }
            ClientEvent::Disconnected => {
                tracing::info!("disconnected from broker");
                self.fail_first_attempt(AsyncClientError::Closed);
            }
            ClientEvent::StoreFailed(failure) => tracing::error!(
                %failure,
                "store commit failed: the client writes its whole session to the store again"
            ),
            other => tracing::warn!(?other, "client event"),
        }
    }

    fn queue_message(&mut self, message: IncomingMessage, ack: Option<AckToken>) {
        if message.publish.qos == QoS::AtMostOnce
            && self.backlog.len() >= self.options.message_buffer.max(1)
        {
            self.dropped_qos0 += 1;
            tracing::warn!(
                total = self.dropped_qos0,
                "application slow: QoS 0 message dropped"
            );
            return;
        }
        self.backlog.push_back((message, ack));
    }

    /// Whether `message` may reach the application only once its acknowledgement is committed
    /// (durable store, QoS 2, acknowledged by us).
    fn needs_commit(&self, message: &IncomingMessage, ack: Option<&AckToken>) -> bool {
        self.commit_first && ack.is_some() && message.publish.qos == QoS::ExactlyOnce
    }

    /// Acknowledges a QoS 2 message the application has room for, and hands it over once the
    /// acknowledgement is committed.
    fn acknowledge_then_hold(&mut self, message: IncomingMessage, ack: Option<AckToken>) {
        self.acknowledge(ack);
        let mark = self.core.store_mark();
        self.awaiting = Some((mark, message));
        self.release_committed();
    }

    /// Hands the waiting QoS 2 message over once its acknowledgement is committed (room was
    /// checked before it was acknowledged, and nothing overtakes it).
    fn release_committed(&mut self) {
        if self
            .awaiting
            .as_ref()
            .is_some_and(|(mark, _)| *mark <= self.committed)
            && let Some((_, message)) = self.awaiting.take()
            && let Err(mpsc::error::TrySendError::Full(m)) = self.messages.try_send(message)
        {
            self.backlog.push_front((m, None));
        }
    }

    fn acknowledge(&mut self, ack: Option<AckToken>) {
        if let Some(ack) = ack {
            let now = self.now();
            // A stale token (the connection changed since) is refused: the broker resends.
            let _ = self.core.ack(now, ack);
        }
    }

    fn complete(&mut self, token: Token, completion: Completion) {
        if let Some(reply) = self.replies.remove(&token) {
            let _ = reply.send(Ok(completion));
        }
    }

    fn open_transport(&mut self) {
        self.transport += 1;
        let n = self.transport;
        let io = self.io_tx.clone();
        let address = self.options.address.clone();
        let tls = self.options.tls.clone();
        let timeout = self.options.config.connect_timeout;
        self.transport_task = Some(tokio::spawn(async move {
            let connect = async {
                let tcp = TcpStream::connect(&address).await?;
                tcp.set_nodelay(true)?;
                Ok::<_, io::Error>(tcp)
            };
            let tcp = match tokio::time::timeout(timeout, connect).await {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => {
                    let _ = io.send(Io::Connected(n, Err(e))).await;
                    return;
                }
                Err(_) => {
                    let e = io::Error::from(io::ErrorKind::TimedOut);
                    let _ = io.send(Io::Connected(n, Err(e))).await;
                    return;
                }
            };
            match tls {
                None => run_transport(n, tcp, io).await,
                Some((config, name)) => match TlsConnector::from(config).connect(name, tcp).await {
                    Ok(stream) => run_transport(n, stream, io).await,
                    Err(e) => {
                        let _ = io.send(Io::Connected(n, Err(e))).await;
                    }
                },
            }
        }));
    }
}

/// Moves bytes for one transport until it ends: reads go to the driver; writes come from it.
async fn run_transport<S>(n: u64, stream: S, io: mpsc::Sender<Io>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    if io.send(Io::Connected(n, Ok(tx))).await.is_err() {
        return;
    }
    let write = async {
        while let Some(data) = rx.recv().await {
            if writer.write_all(&data).await.is_err() {
                return;
            }
        }
        // The driver dropped the writer: close after flushing.
        let _ = writer.shutdown().await;
    };
    let read = async {
        let mut buf = BytesMut::new();
        loop {
            buf.reserve(16 * 1024);
            match reader.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if io.send(Io::Read(n, buf.split().freeze())).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        () = write => {}
        () = read => {}
    }
    let _ = io.send(Io::Down(n)).await;
}
