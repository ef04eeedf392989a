//! The broker task: owns the [`Broker`], feeds it what connection tasks send, and routes its
//! outputs back to them. The only place the core's clock is read from the runtime's clock.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::future;
use surgemq_core::broker::{
    AuthVerdict, Authenticator, Broker, BrokerConfig, ConnId, DisconnectCause, Event, Input,
    Output, StoreFailure,
};
use surgemq_core::store::{StoreOp, StoreSetup, StoreSink};
use surgemq_core::string::MqttString;
use surgemq_core::time::Instant;

use super::{Runtime, ShutdownHandle};

/// Capacity of the channel from connection tasks to the broker task.
const HUB_CHANNEL: usize = 4096;
/// How many queued messages one wake-up feeds before draining outputs: enough to batch, few
/// enough that outputs flow while input keeps arriving.
const FEED_BATCH: usize = 256;

/// Messages from connection tasks (and authenticator jobs) to the broker task.
pub(crate) enum ToHub {
    Open {
        peer: SocketAddr,
        identity: Option<String>,
        writer: ConnWriter,
        reply: async_channel::Sender<ConnId>,
    },
    Received {
        conn: ConnId,
        data: Bytes,
    },
    Flushed {
        conn: ConnId,
        bytes: usize,
    },
    Closed {
        conn: ConnId,
    },
    AuthDone {
        conn: ConnId,
        verdict: AuthVerdict,
    },
}

/// Messages from the broker task to one connection task.
pub(crate) enum ToConn {
    Write(Bytes),
    Close,
}

/// The broker task's handle on a connection's writer: the channel, and the count of bytes
/// sent down it and not yet written (the connection stops reading while it is large).
#[derive(Clone)]
pub(crate) struct ConnWriter {
    pub(crate) tx: async_channel::Sender<ToConn>,
    pub(crate) pending: Arc<AtomicUsize>,
}

/// How connections reach the broker task made by [`broker_task`]; cheap to clone.
#[derive(Clone, Debug)]
pub struct BrokerHandle {
    pub(crate) tx: async_channel::Sender<ToHub>,
}

/// Maps the runtime's clock onto the core's [`Instant`] (the broker task's and the client's).
#[derive(Clone, Copy)]
pub(super) struct Clock(std::time::Instant);

impl Clock {
    /// A clock whose [`Instant::ZERO`] is now.
    pub(super) fn start() -> Self {
        Self(std::time::Instant::now())
    }

    pub(super) fn now(self) -> Instant {
        Instant::from_millis(u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn to_runtime(self, at: Instant) -> std::time::Instant {
        let far = Duration::from_secs(86_400 * 365);
        self.0
            .checked_add(Duration::from_millis(at.as_millis()))
            .unwrap_or_else(|| std::time::Instant::now() + far)
    }
}

/// The task that owns the [`Broker`]: returns the handle connections reach it by (see
/// [`serve_connection`](super::serve_connection)) and the future to run, spawned or awaited.
///
/// The future ends once `shutdown` fires, after [`Broker::shutdown`] and after handing every
/// connection its last bytes and a close. `authenticator` answers
/// [`Output::Authenticate`] on the runtime's blocking pool; without one every client is
/// accepted by it. With a `store`, the broker is restored from its content first and every
/// [`Output::Store`] goes to its committer (closed, with a last commit, when the task ends).
pub fn broker_task<R: Runtime>(
    runtime: R,
    config: BrokerConfig,
    authenticator: Option<Arc<dyn Authenticator>>,
    store: Option<StoreSetup>,
    shutdown: &ShutdownHandle,
) -> (BrokerHandle, impl Future<Output = ()> + Send + 'static) {
    let (tx, rx) = async_channel::bounded(HUB_CHANNEL);
    // Unbounded so that the store's thread never blocks on the broker task (which waits for
    // that thread when it closes the store); one report per commit.
    let (store_done_tx, store_done) = async_channel::unbounded();
    let clock = Clock::start();
    let mut broker = Broker::new(config, clock.now());
    let store = store.map(|setup| {
        let report = broker.restore(setup.snapshot);
        tracing::info!("restored from the store: {report}");
        let done_tx = store_done_tx.clone();
        (setup.start)(Box::new(move |seq, result| {
            let _ = done_tx.try_send((seq, result));
        }))
    });
    let hub = Hub {
        broker,
        clock,
        runtime,
        rx,
        tx: tx.clone(),
        authenticator,
        writers: HashMap::new(),
        store,
        store_batch: Vec::new(),
        store_done,
        _store_done_tx: store_done_tx,
    };
    (BrokerHandle { tx }, hub.run(shutdown.clone()))
}

struct Hub<R> {
    broker: Broker,
    clock: Clock,
    runtime: R,
    rx: async_channel::Receiver<ToHub>,
    /// For authenticator jobs' answers.
    tx: async_channel::Sender<ToHub>,
    authenticator: Option<Arc<dyn Authenticator>>,
    writers: HashMap<ConnId, ConnWriter>,
    /// The store's committer, when persistence is on.
    store: Option<Box<dyn StoreSink>>,
    /// Store operations drained in this dispatch round (one atomic group or more).
    store_batch: Vec<(u64, StoreOp)>,
    /// Commit reports from the store's thread.
    store_done: async_channel::Receiver<StoreDone>,
    /// Keeps `store_done` open when there is no store.
    _store_done_tx: async_channel::Sender<StoreDone>,
}

/// A commit report: every operation up to `.0` committed, or not.
type StoreDone = (u64, Result<(), StoreFailure>);

/// What woke the broker task.
enum Wake {
    Shutdown,
    Message(ToHub),
    StoreDone(StoreDone),
    Timer,
}

impl<R: Runtime> Hub<R> {
    async fn run(mut self, shutdown: ShutdownHandle) {
        loop {
            self.dispatch();
            let timer = self
                .broker
                .poll_timeout()
                .map(|at| self.clock.to_runtime(at));
            let sleep = async {
                match timer {
                    Some(at) => self.runtime.sleep_until(at).await,
                    None => future::pending().await,
                }
                Wake::Timer
            };
            let message = async {
                match self.rx.recv().await {
                    Ok(msg) => Wake::Message(msg),
                    // Unreachable while we hold `tx`; treated as a shutdown.
                    Err(_) => Wake::Shutdown,
                }
            };
            let stop = async {
                shutdown.wait().await;
                Wake::Shutdown
            };
            let store_done = async {
                match self.store_done.recv().await {
                    Ok(done) => Wake::StoreDone(done),
                    Err(_) => future::pending().await,
                }
            };
            // Biased in this order: shutdown first, then commits, then input, then timers.
            let wake = future::or(stop, future::or(store_done, future::or(message, sleep))).await;
            match wake {
                Wake::Shutdown => break,
                Wake::Message(msg) => {
                    self.feed(msg);
                    for _ in 1..FEED_BATCH {
                        match self.rx.try_recv() {
                            Ok(msg) => self.feed(msg),
                            Err(_) => break,
                        }
                    }
                }
                Wake::StoreDone((seq, result)) => {
                    let now = self.clock.now();
                    let _ = self
                        .broker
                        .handle_input(now, Input::StoreDone { seq, result });
                }
                Wake::Timer => {
                    let now = self.clock.now();
                    let _ = self.broker.handle_input(now, Input::Timeout);
                }
            }
        }
        self.broker.shutdown(self.clock.now());
        self.dispatch();
        if let Some(store) = self.store.take() {
            // The last commit: everything emitted is on disk before the task ends.
            store.close();
        }
        // Remaining writers get Close after their last bytes.
        for (_, writer) in self.writers.drain() {
            let _ = writer.tx.try_send(ToConn::Close);
        }
        // Queued messages would otherwise live as long as any sender: dropping them now ends
        // connections still waiting to be registered.
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
    }

    fn feed(&mut self, msg: ToHub) {
        let now = self.clock.now();
        let input = match msg {
            ToHub::Open {
                peer,
                identity,
                writer,
                reply,
            } => {
                let identity = identity.and_then(|i| MqttString::new(&i).ok());
                let conn = self
                    .broker
                    .open_connection_with_identity(now, Some(peer), identity);
                self.writers.insert(conn, writer);
                if reply.try_send(conn).is_err() {
                    // The connection task is gone already.
                    self.writers.remove(&conn);
                    Input::Closed { conn }
                } else {
                    return;
                }
            }
            ToHub::Received { conn, data } => Input::Received { conn, data },
            ToHub::Flushed { conn, bytes } => Input::Flushed { conn, bytes },
            ToHub::Closed { conn } => {
                self.writers.remove(&conn);
                Input::Closed { conn }
            }
            ToHub::AuthDone { conn, verdict } => Input::AuthDone { conn, verdict },
        };
        if let Err(error) = self.broker.handle_input(now, input) {
            tracing::error!(%error, "broker input refused");
        }
    }

    fn dispatch(&mut self) {
        while let Some(output) = self.broker.poll_output() {
            match output {
                Output::Transmit { conn, data } => {
                    if let Some(writer) = self.writers.get(&conn) {
                        writer.pending.fetch_add(data.len(), Ordering::Relaxed);
                        // Unbounded: never full.
                        let _ = writer.tx.try_send(ToConn::Write(data));
                    }
                }
                Output::Close { conn } => {
                    if let Some(writer) = self.writers.remove(&conn) {
                        let _ = writer.tx.try_send(ToConn::Close);
                    }
                }
                Output::Authenticate(request) => {
                    let conn = request.conn;
                    match self.authenticator.clone() {
                        Some(authenticator) => {
                            let tx = self.tx.clone();
                            // Password hashing is slow on purpose: keep it off the broker task.
                            self.runtime.spawn_blocking(move || {
                                let verdict = authenticator.authenticate(&request);
                                let _ = tx.send_blocking(ToHub::AuthDone { conn, verdict });
                            });
                        }
                        None => {
                            let now = self.clock.now();
                            let input = Input::AuthDone {
                                conn,
                                verdict: AuthVerdict::Accept,
                            };
                            let _ = self.broker.handle_input(now, input);
                        }
                    }
                }
                Output::Store { seq, op } => self.store_batch.push((seq, op)),
                Output::Event(event) => log_event(&event),
            }
        }
        if !self.store_batch.is_empty() {
            let batch = std::mem::take(&mut self.store_batch);
            match self.store.as_mut() {
                Some(store) => store.submit(batch),
                None => tracing::error!("the broker emitted store operations but has no store"),
            }
        }
    }
}

fn log_event(event: &Event) {
    match event {
        Event::Connected {
            conn,
            client_id,
            version,
            session_present,
        } => {
            tracing::info!(conn = conn.get(), %client_id, ?version, session_present, "client connected")
        }
        Event::Refused { conn, reason } => {
            tracing::info!(conn = conn.get(), ?reason, "connection refused")
        }
        Event::Disconnected {
            conn,
            client_id,
            cause,
        } => match cause {
            DisconnectCause::Violation(violation) => tracing::warn!(
                conn = conn.get(),
                client_id = client_id.as_ref().map(|c| c.as_str()),
                ?violation,
                statement = violation.statement(),
                "protocol violation, connection closed"
            ),
            _ => tracing::info!(
                conn = conn.get(),
                client_id = client_id.as_ref().map(|c| c.as_str()),
                ?cause,
                "client disconnected"
            ),
        },
        Event::MessagesDropped { client_id, total } => {
            tracing::warn!(%client_id, total, "queue full, messages dropped")
        }
        Event::SessionExpired { client_id } => {
            tracing::info!(%client_id, "persistent session expired and removed")
        }
        Event::StoreFailed {
            seq,
            error,
            withheld,
        } => tracing::error!(
            seq,
            %error,
            withheld,
            "store commit failed: acknowledgements withheld, their clients disconnected to retry"
        ),
        other => tracing::debug!(?other, "broker event"),
    }
}
