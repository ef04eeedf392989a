//! The broker task: owns the [`Broker`], feeds it what connection tasks send, and routes its
//! outputs back to them. The only place the core's clock is read from the runtime's clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use surgemq_core::broker::{
    AuthVerdict, Authenticator, Broker, ConnId, DisconnectCause, Event, Input, Output, StoreFailure,
};
use surgemq_core::store::{StoreOp, StoreSink};
use surgemq_core::string::MqttString;
use surgemq_core::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};

/// Messages from connection tasks (and authenticator jobs) to the broker task.
pub(crate) enum ToHub {
    Open {
        peer: std::net::SocketAddr,
        identity: Option<String>,
        writer: ConnWriter,
        reply: oneshot::Sender<ConnId>,
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

/// A commit report from the store's thread: every operation up to `.0` committed, or not.
pub(crate) type StoreDone = (u64, Result<(), StoreFailure>);

/// Messages from the broker task to one connection task.
pub(crate) enum ToConn {
    Write(Bytes),
    Close,
}

/// The broker task's handle on a connection's writer: the channel, and the count of bytes
/// sent down it and not yet written (the connection stops reading while it is large).
#[derive(Clone)]
pub(crate) struct ConnWriter {
    pub(crate) tx: mpsc::UnboundedSender<ToConn>,
    pub(crate) pending: Arc<AtomicUsize>,
}

/// Maps the runtime's clock onto the core's [`Instant`].
#[derive(Clone, Copy)]
pub(crate) struct Clock(tokio::time::Instant);

impl Clock {
    pub(crate) fn start() -> Self {
        Self(tokio::time::Instant::now())
    }

    pub(crate) fn now(self) -> Instant {
        Instant::from_millis(u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn to_runtime(self, at: Instant) -> tokio::time::Instant {
        self.0 + std::time::Duration::from_millis(at.as_millis())
    }
}

pub(crate) struct Hub {
    pub(crate) broker: Broker,
    pub(crate) clock: Clock,
    pub(crate) rx: mpsc::Receiver<ToHub>,
    pub(crate) tx: mpsc::Sender<ToHub>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) authenticator: Option<Arc<dyn Authenticator>>,
    pub(crate) writers: HashMap<ConnId, ConnWriter>,
    /// The store's committer, when persistence is on.
    pub(crate) store: Option<Box<dyn StoreSink>>,
    /// Store operations drained in this dispatch round (one atomic group or more).
    pub(crate) store_batch: Vec<(u64, StoreOp)>,
    /// Commit reports. Unbounded so that the store's thread never blocks on the broker task
    /// (which waits for that thread when it closes the store); one report per commit.
    pub(crate) store_done: mpsc::UnboundedReceiver<StoreDone>,
    /// Keeps `store_done` open when there is no store.
    pub(crate) _store_done_tx: mpsc::UnboundedSender<StoreDone>,
}

/// How many queued messages one wake-up feeds before draining outputs: enough to batch, few
/// enough that outputs flow while input keeps arriving.
const FEED_BATCH: usize = 256;

impl Hub {
    pub(crate) async fn run(mut self) {
        loop {
            self.dispatch();
            let timeout = self.broker.poll_timeout();
            let sleep = async {
                match timeout {
                    Some(at) => tokio::time::sleep_until(self.clock.to_runtime(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                msg = self.rx.recv() => {
                    let Some(msg) = msg else { break };
                    self.feed(msg);
                    for _ in 1..FEED_BATCH {
                        match self.rx.try_recv() {
                            Ok(msg) => self.feed(msg),
                            Err(_) => break,
                        }
                    }
                }
                Some((seq, result)) = self.store_done.recv() => {
                    let now = self.clock.now();
                    let _ = self.broker.handle_input(now, Input::StoreDone { seq, result });
                }
                () = sleep => {
                    let now = self.clock.now();
                    let _ = self.broker.handle_input(now, Input::Timeout);
                }
            }
        }
        self.broker.shutdown(self.clock.now());
        self.dispatch();
        if let Some(store) = self.store.take() {
            // The last commit: everything emitted is on disk before the server returns.
            store.close();
        }
        // Remaining writers get Close after their last bytes; dropping them ends the rest.
        for (_, writer) in self.writers.drain() {
            let _ = writer.tx.send(ToConn::Close);
        }
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
                if reply.send(conn).is_err() {
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
                        let _ = writer.tx.send(ToConn::Write(data));
                    }
                }
                Output::Close { conn } => {
                    if let Some(writer) = self.writers.remove(&conn) {
                        let _ = writer.tx.send(ToConn::Close);
                    }
                }
                Output::Authenticate(request) => {
                    let conn = request.conn;
                    match self.authenticator.clone() {
                        Some(authenticator) => {
                            let tx = self.tx.clone();
                            // Password hashing is slow on purpose: keep it off the broker task.
                            tokio::task::spawn_blocking(move || {
                                let verdict = authenticator.authenticate(&request);
                                let _ = tx.blocking_send(ToHub::AuthDone { conn, verdict });
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
