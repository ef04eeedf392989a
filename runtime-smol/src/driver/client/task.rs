//! The client task: owns the core [`CoreClient`], feeds it commands, transport events and
//! timeouts, carries out its outputs, and hands received messages to the application.
//!
//! It never awaits anything but its wake-up: writes go down an unbounded channel to the
//! transport's writer (the core bounds what it sends), and a message the application has no
//! room for waits here, its acknowledgement withheld, while a single boxed send waits for room.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant as StdInstant};

use bytes::Bytes;
use futures_lite::future;
use surgemq_core::client::{
    AckToken, Client as CoreClient, ClientEvent, ClientInput, ClientOutput, IncomingMessage, Token,
};
use surgemq_core::codec::{Properties, QoS};

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

/// What woke the task.
enum Wake {
    Timer,
    Io(Io),
    Command(Option<Command>),
    Delivered,
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
    ready: Option<async_channel::Sender<Result<(), AsyncClientError>>>,
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
}

impl<R: TcpRuntime> Task<R> {
    pub(super) fn new(
        runtime: R,
        options: ClientOptions,
        commands: async_channel::Receiver<Command>,
        messages: async_channel::Sender<IncomingMessage>,
        ready: async_channel::Sender<Result<(), AsyncClientError>>,
    ) -> Self {
        let (io_tx, io_rx) = async_channel::bounded(IO_CHANNEL);
        // The task acknowledges itself, once the application has taken the message.
        let mut config = options.config;
        let user_acks = config.manual_acks;
        config.manual_acks = true;
        let reconnects = config.reconnect.is_some();
        let target = Target {
            address: options.address,
            tls: options.tls,
            timeout: config.connect_timeout,
        };
        let clock = Clock::start();
        Self {
            runtime,
            target,
            message_buffer: options.message_buffer.max(1),
            core: CoreClient::new(config, clock.now()),
            clock,
            commands,
            messages,
            delivering: None,
            backlog: VecDeque::new(),
            user_acks,
            reconnects,
            dropped_qos0: 0,
            ready: Some(ready),
            replies: HashMap::new(),
            io_tx,
            io_rx,
            transport: 0,
            writer: None,
            transport_done: None,
            closing: None,
            stopped: false,
            disconnect_reply: None,
        }
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
                    while self.delivering.is_none() {
                        let Some((message, ack)) = self.backlog.pop_front() else {
                            break;
                        };
                        self.deliver(message, ack);
                    }
                }
            }
        }
        self.finish().await;
    }

    /// Waits for the next thing to do. Timers first (keep-alive must not starve); transport
    /// events, commands and deliveries in random order, so that none starves the others.
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
        future::or(sleep, future::race(future::race(io, command), delivered)).await
    }

    /// After the loop: fails what is pending, waits (a little) for the connection to write
    /// its last bytes and close, then tells whoever asked for the stop.
    async fn finish(mut self) {
        for (_, reply) in self.replies.drain() {
            let _ = reply.try_send(Err(AsyncClientError::Closed));
        }
        self.writer = None;
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
                    // Without a reconnect policy the first failure is final.
                    if !self.reconnects
                        && let Some(ready) = self.ready.take()
                    {
                        let _ = ready.try_send(Err(AsyncClientError::Io(error)));
                    }
                    self.core.handle_input(now, ClientInput::TransportDown);
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
                // Persistence arrives with Client::connect_with_store.
                ClientOutput::Store { .. } => {}
            }
        }
        self.stopped
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
                    let _ = ready.try_send(Err(AsyncClientError::Refused(reason)));
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
            ClientEvent::Disconnected => tracing::info!("disconnected from broker"),
            other => tracing::warn!(?other, "client event"),
        }
    }

    /// Hands `message` to the application now if its channel has room, else waits in line;
    /// `ack` is sent once the application has it.
    fn deliver(&mut self, message: IncomingMessage, ack: Option<AckToken>) {
        if self.delivering.is_some() {
            self.queue(message, ack);
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
