//! The client task: owns the core [`CoreClient`], feeds it commands, transport events and
//! timeouts, carries out its outputs, and hands received messages to the application.
//!
//! It never awaits anything but its wake-up: writes go down an unbounded channel to the
//! transport's writer (the core bounds what it sends), and a message the application has no
//! room for waits here, its acknowledgement withheld, while a single boxed send waits for room.
//! With a store, it hands the core's store operations to the store's committer and feeds the
//! commit reports back; it closes the store (on the runtime's blocking pool) when it ends.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant as StdInstant};

use bytes::Bytes;
use futures_lite::future;
use surgemq_core::client::{
    AckToken, Client as CoreClient, ClientEvent, ClientInput, ClientOutput, ClientRestore,
    IncomingMessage, Persistence, StoreFailure, Token,
};
use surgemq_core::codec::{Properties, QoS};
use surgemq_core::store::{StoreOp, StoreSetup, StoreSink};

use super::transport::{self, Io, Target};
use super::{AsyncClientError, ClientOptions, Command, Completion, Reply};
use crate::driver::TcpRuntime;
use crate::driver::hub::Clock;

/// Capacity of the channel from transports to the task.
const IO_CHANNEL: usize = 16;
/// Transport events fed per wake-up before the outputs are carried out.
const IO_BATCH: usize = 32;
/// How long a stopping client waits for its connection to write its last bytes and close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// A message waiting for room in the application's channel, and the acknowledgement owed
/// once it has been taken.
struct Delivery {
    send: Pin<Box<dyn Future<Output = ()> + Send>>,
    ack: Option<AckToken>,
}

/// A commit report from the store's thread: every operation up to `.0` committed, or not.
type StoreDone = (u64, Result<(), StoreFailure>);

/// `connect`'s answer channel.
type Ready = async_channel::Sender<Result<(), AsyncClientError>>;

/// What woke the task.
enum Wake {
    Timer,
    Io(Io),
    Command(Option<Command>),
    Delivered,
    StoreDone(StoreDone),
}

pub(super) struct Task<R> {
    runtime: R,
    target: Target,
    /// `options.message_buffer`, at least 1.
    message_buffer: usize,
    core: CoreClient,
    clock: Clock,
    commands: async_channel::Receiver<Command>,
    messages: async_channel::Sender<IncomingMessage>,
    /// The message being handed to the application, if its channel was full.
    delivering: Option<Delivery>,
    /// Messages received after `delivering`, in order, with their acknowledgements (QoS 1/2
    /// ones are bounded by the broker's in-flight window, since they stay unacknowledged here;
    /// QoS 0 ones by `message_buffer`). Empty whenever `delivering` is.
    backlog: VecDeque<(IncomingMessage, Option<AckToken>)>,
    /// The application acknowledges itself (`config.manual_acks`).
    user_acks: bool,
    /// The configuration has a reconnect policy.
    reconnects: bool,
    /// QoS 0 messages dropped because the application was not keeping up.
    dropped_qos0: u64,
    ready: Option<Ready>,
    /// With a store, the first attempt's failure waits here until the store is closed (so
    /// that the caller may open it again at once).
    failed: Option<(Ready, AsyncClientError)>,
    replies: HashMap<Token, Reply>,
    io_tx: async_channel::Sender<Io>,
    io_rx: async_channel::Receiver<Io>,
    /// The current transport's number; events from others are stale.
    transport: u64,
    writer: Option<async_channel::Sender<Bytes>>,
    /// The current transport's "closed" signal.
    transport_done: Option<async_channel::Receiver<Infallible>>,
    /// The signal of the transport last closed by us: a stopping client waits for it.
    closing: Option<async_channel::Receiver<Infallible>>,
    /// Set once the client is stopping.
    stopped: bool,
    /// Who asked for the stop, to be told once it is done.
    disconnect_reply: Option<async_channel::Sender<()>>,
    /// The store's committer, with `connect_with_store`.
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
    /// Commit reports. Unbounded so that the store's thread never blocks on the task (which
    /// waits for that thread when it closes the store); one report per commit.
    store_done: async_channel::Receiver<StoreDone>,
    /// Keeps `store_done` open when there is no store.
    _store_done_tx: async_channel::Sender<StoreDone>,
}

impl<R: TcpRuntime> Task<R> {
    /// The task, with its core restored from `store` (and the store's committer started) when
    /// there is one.
    pub(super) fn new(
        runtime: R,
        options: ClientOptions,
        store: Option<StoreSetup>,
        commands: async_channel::Receiver<Command>,
        messages: async_channel::Sender<IncomingMessage>,
        ready: Ready,
    ) -> Result<(Self, Option<ClientRestore>), AsyncClientError> {
        let (io_tx, io_rx) = async_channel::bounded(IO_CHANNEL);
        // The task acknowledges itself, once the application has taken the message.
        let mut config = options.config;
        let user_acks = config.manual_acks;
        config.manual_acks = true;
        if store.is_some() && config.persistence == Persistence::Off {
            config.persistence = Persistence::Durable;
        }
        let reconnects = config.reconnect.is_some();
        let target = Target {
            address: options.address,
            tls: options.tls,
            timeout: config.connect_timeout,
        };
        let clock = Clock::start();
        let commit_first =
            store.is_some() && config.persistence == Persistence::Durable && !config.clean_start;
        let mut core = CoreClient::new(config, clock.now()).map_err(AsyncClientError::Config)?;
        let (store_done_tx, store_done) = async_channel::unbounded();
        let (store, report) = match store {
            Some(setup) => {
                let report = core
                    .restore(setup.snapshot)
                    .map_err(AsyncClientError::Restore)?;
                tracing::info!("restored from the store: {report}");
                let done_tx = store_done_tx.clone();
                let sink = (setup.start)(Box::new(move |seq, result| {
                    let _ = done_tx.try_send((seq, result));
                }));
                (Some(sink), Some(report))
            }
            None => (None, None),
        };
        let task = Self {
            runtime,
            target,
            message_buffer: options.message_buffer.max(1),
            core,
            clock,
            commands,
            messages,
            delivering: None,
            backlog: VecDeque::new(),
            user_acks,
            reconnects,
            dropped_qos0: 0,
            ready: Some(ready),
            failed: None,
            replies: HashMap::new(),
            io_tx,
            io_rx,
            transport: 0,
            writer: None,
            transport_done: None,
            closing: None,
            stopped: false,
            disconnect_reply: None,
            store,
            commit_first,
            committed: 0,
            awaiting: None,
            store_batch: Vec::new(),
            store_done,
            _store_done_tx: store_done_tx,
        };
        Ok((task, report))
    }

    pub(super) async fn run(mut self) {
        while !self.drain() {
            match self.wake().await {
                Wake::Timer => {
                    let now = self.clock.now();
                    self.core.handle_input(now, ClientInput::Timeout);
                }
                Wake::Io(io) => {
                    self.io(io);
                    for _ in 1..IO_BATCH {
                        match self.io_rx.try_recv() {
                            Ok(io) => self.io(io),
                            Err(_) => break,
                        }
                    }
                }
                Wake::StoreDone((seq, result)) => {
                    if result.is_ok() {
                        self.committed = self.committed.max(seq);
                    }
                    let now = self.clock.now();
                    self.core
                        .handle_input(now, ClientInput::StoreDone { seq, result });
                    self.release_committed();
                }
                Wake::Command(Some(command)) => self.command(command),
                Wake::Command(None) => {
                    // Every handle is gone: disconnect cleanly and end.
                    self.core.disconnect(self.clock.now());
                    self.stopped = true;
                }
                Wake::Delivered => {
                    if let Some(delivery) = self.delivering.take() {
                        self.acknowledge(delivery.ack);
                    }
                    self.pump();
                }
            }
        }
        self.finish().await;
    }

    /// Waits for the next thing to do. Timers first (keep-alive must not starve); transport
    /// events, commands, deliveries and commit reports in random order, so that none starves
    /// the others.
    async fn wake(&mut self) -> Wake {
        let timer = self.core.poll_timeout().map(|at| self.clock.to_runtime(at));
        let runtime = &self.runtime;
        let sleep = async {
            match timer {
                Some(at) => runtime.sleep_until(at).await,
                None => future::pending().await,
            }
            Wake::Timer
        };
        let io_rx = &self.io_rx;
        let io = async {
            match io_rx.recv().await {
                Ok(io) => Wake::Io(io),
                // Unreachable while we hold `io_tx`.
                Err(_) => future::pending().await,
            }
        };
        let commands = &self.commands;
        let command = async { Wake::Command(commands.recv().await.ok()) };
        let delivering = &mut self.delivering;
        let delivered = async {
            match delivering {
                Some(delivery) => {
                    delivery.send.as_mut().await;
                    Wake::Delivered
                }
                None => future::pending().await,
            }
        };
        let store_done = &self.store_done;
        let committed = async {
            match store_done.recv().await {
                Ok(done) => Wake::StoreDone(done),
                // Unreachable while we hold `_store_done_tx`.
                Err(_) => future::pending().await,
            }
        };
        future::or(
            sleep,
            future::race(
                future::race(io, command),
                future::race(delivered, committed),
            ),
        )
        .await
    }

    /// After the loop: fails what is pending, closes the store (a last commit), waits (a
    /// little) for the connection to write its last bytes and close, then tells whoever asked
    /// for the stop.
    async fn finish(mut self) {
        for (_, reply) in self.replies.drain() {
            let _ = reply.try_send(Err(AsyncClientError::Closed));
        }
        self.writer = None;
        if let Some(store) = self.store.take() {
            // Closing joins the store's thread: on the blocking pool, and waited for, so that
            // everything emitted is on disk before `disconnect()` returns.
            let (closed_tx, closed) = async_channel::bounded::<()>(1);
            self.runtime.spawn_blocking(move || {
                store.close();
                drop(closed_tx);
            });
            let _ = closed.recv().await;
        }
        // Its acknowledgement is on disk now: the application may have it.
        if let Some((_, message)) = self.awaiting.take() {
            let _ = self.messages.try_send(message);
        }
        if let Some((ready, error)) = self.failed.take() {
            let _ = ready.try_send(Err(error));
        }
        if let Some(done) = self.closing.take().or(self.transport_done.take()) {
            let closed = async {
                let _ = done.recv().await;
            };
            let deadline = StdInstant::now() + CLOSE_GRACE;
            future::or(closed, self.runtime.sleep_until(deadline)).await;
        }
        if let Some(reply) = self.disconnect_reply.take() {
            let _ = reply.try_send(());
        }
    }

    fn command(&mut self, command: Command) {
        let now = self.clock.now();
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
                if let Err(error) = self.core.ack(now, ack) {
                    tracing::debug!(%error, "acknowledgement not sent");
                }
                return;
            }
            Command::Disconnect { reply } => {
                self.core.disconnect(now);
                self.stopped = true;
                self.disconnect_reply = Some(reply);
                return;
            }
        };
        match result {
            Ok(token) => {
                self.replies.insert(token, reply);
            }
            Err(e) => {
                let _ = reply.try_send(Err(AsyncClientError::Client(e)));
            }
        }
    }

    fn io(&mut self, io: Io) {
        let now = self.clock.now();
        match io {
            Io::Connected(n, result) if n == self.transport => match result {
                Ok(transport) => {
                    self.writer = Some(transport.writer);
                    self.transport_done = Some(transport.done);
                    self.core.handle_input(now, ClientInput::TransportUp);
                }
                Err(error) => {
                    tracing::warn!(%error, address = %self.target.address, "connection failed");
                    self.core.handle_input(now, ClientInput::TransportDown);
                    // Without a reconnect policy the first failure is final.
                    if !self.reconnects
                        && let Some(ready) = self.ready.take()
                    {
                        self.fail_first(ready, AsyncClientError::Io(error));
                    }
                }
            },
            Io::Read(n, data) if n == self.transport => {
                self.core.handle_input(now, ClientInput::Received(data));
            }
            Io::Down(n) if n == self.transport => {
                self.writer = None;
                self.transport_done = None;
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
                ClientOutput::OpenTransport => {
                    self.transport += 1;
                    let io = self.io_tx.clone();
                    transport::open(&self.runtime, self.transport, self.target.clone(), io);
                }
                ClientOutput::Transmit(data) => {
                    if let Some(writer) = &self.writer {
                        // Unbounded: never full.
                        let _ = writer.try_send(data);
                    }
                }
                ClientOutput::CloseTransport => {
                    // Dropping the writer closes the transport once everything is written.
                    self.writer = None;
                    self.closing = self.transport_done.take();
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
        self.stopped
    }

    /// Reports the first connection's failure to `connect`. With a store the task stops
    /// first, and the failure is reported once the store is closed.
    fn fail_first(&mut self, ready: Ready, error: AsyncClientError) {
        if self.store.is_some() {
            self.failed = Some((ready, error));
            self.core.disconnect(self.clock.now());
            self.stopped = true;
        } else {
            let _ = ready.try_send(Err(error));
        }
    }

    fn event(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::Connected { .. } => {
                if let Some(ready) = self.ready.take() {
                    let _ = ready.try_send(Ok(()));
                }
            }
            ClientEvent::Refused { reason } => {
                tracing::warn!(?reason, "connection refused");
                if let Some(ready) = self.ready.take() {
                    self.fail_first(ready, AsyncClientError::Refused(reason));
                    self.core.disconnect(self.clock.now());
                }
            }
            ClientEvent::Message(mut message) => {
                // Without user acks, the ack is ours to send once the application has it.
                let ack = if self.user_acks {
                    None
                } else {
                    message.ack.take()
                };
                self.deliver(*message, ack);
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
                    let _ = reply.try_send(Err(AsyncClientError::Client(error)));
                }
            }
            ClientEvent::Disconnected => tracing::info!("disconnected from broker"),
            ClientEvent::StoreFailed(failure) => tracing::error!(
                %failure,
                "store commit failed: the client writes its whole session to the store again"
            ),
            other => tracing::warn!(?other, "client event"),
        }
    }

    /// Hands `message` to the application now if its channel has room, else waits in line;
    /// `ack` is sent once the application has it.
    fn deliver(&mut self, message: IncomingMessage, ack: Option<AckToken>) {
        if self.delivering.is_some() || self.awaiting.is_some() {
            self.queue(message, ack);
            return;
        }
        if self.commit_first && ack.is_some() && message.publish.qos == QoS::ExactlyOnce {
            // Acknowledged first (the one message acknowledged before the application has
            // room: everything behind it waits), handed over once that is committed.
            self.acknowledge(ack);
            self.awaiting = Some((self.core.store_mark(), message));
            self.release_committed();
            return;
        }
        match self.messages.try_send(message) {
            Ok(()) => self.acknowledge(ack),
            Err(async_channel::TrySendError::Full(message)) => {
                let messages = self.messages.clone();
                let send = Box::pin(async move {
                    // Fails only when nobody listens any more: acknowledged all the same.
                    let _ = messages.send(message).await;
                });
                self.delivering = Some(Delivery { send, ack });
            }
            // Nobody listens any more.
            Err(async_channel::TrySendError::Closed(_)) => self.acknowledge(ack),
        }
    }

    /// Delivers what waits in `backlog`, in order, while nothing is in the way.
    fn pump(&mut self) {
        while self.delivering.is_none() && self.awaiting.is_none() {
            let Some((message, ack)) = self.backlog.pop_front() else {
                break;
            };
            self.deliver(message, ack);
        }
    }

    /// Hands the waiting QoS 2 message over once its acknowledgement is committed, then what
    /// queued behind it.
    fn release_committed(&mut self) {
        if self
            .awaiting
            .as_ref()
            .is_some_and(|(mark, _)| *mark <= self.committed)
            && let Some((_, message)) = self.awaiting.take()
        {
            self.deliver(message, None);
            self.pump();
        }
    }

    fn queue(&mut self, message: IncomingMessage, ack: Option<AckToken>) {
        if message.publish.qos == QoS::AtMostOnce && self.backlog.len() >= self.message_buffer {
            self.dropped_qos0 += 1;
            tracing::warn!(
                total = self.dropped_qos0,
                "application slow: QoS 0 message dropped"
            );
            return;
        }
        self.backlog.push_back((message, ack));
    }

    fn acknowledge(&mut self, ack: Option<AckToken>) {
        if let Some(ack) = ack {
            // A stale token (the connection changed since) is refused: the broker resends.
            let _ = self.core.ack(self.clock.now(), ack);
        }
    }

    fn complete(&mut self, token: Token, completion: Completion) {
        if let Some(reply) = self.replies.remove(&token) {
            let _ = reply.try_send(Ok(completion));
        }
    }
}
