//! The broker state machine: MQTT 3.1 and 3.1.1 for any number of connections, with no I/O.
//!
//! ```text
//! Broker::new(config, now)
//! Broker::restore(snapshot)          // after a restart, before any connection
//! Broker::open_connection(now, peer) -> ConnId
//! Broker::handle_input(now, Input)   // Received | Flushed | Closed | Timeout | StoreDone | AuthDone
//! Broker::poll_output() -> Option<Output>   // Transmit | Close | Store | Authenticate | Event
//! Broker::poll_timeout() -> Option<Instant> // next wake-up
//! ```
//!
//! Methods come in four kinds: getters, `handle_*` inputs, `open_connection` (a command), and
//! `poll_*` outputs. Drain `poll_output` until `None` before waiting for more input; feeding
//! several inputs first is allowed and batches writes better. Every `Transmit` must be followed,
//! eventually, by `Flushed` for the bytes the socket took: that is how the broker knows a
//! subscriber is slow and stops writing to it (see [`BrokerConfig::max_unflushed_bytes`]).
//!
//! Persistence ([`BrokerConfig::persistence`]): the broker emits [`Output::Store`] operations
//! (see [`crate::store`]) for what must survive a restart. The operations drained after one
//! input form an atomic group: commit them in one transaction (or in one with those of other
//! inputs), never split. In [`Persistence::Durable`] mode every acknowledgement waits for the
//! [`Input::StoreDone`] that covers the operations emitted before it.
//!
//! Modules: [`config`] (limits and policies), `connection` (per-connection protocol state),
//! `session` (per-client state that may outlive connections), `router` (subscriptions and
//! retained messages), `sys` (`$SYS` statistics).
//!
//! Never: read a clock, touch a socket or a file, panic on peer input, or let one client's
//! behaviour grow memory without bound or affect another client's data.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]

pub mod config;
mod connection;
mod io;
mod router;
mod session;
mod slab;
mod sys;

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BinaryHeap, VecDeque};
use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cmp::Reverse;
use core::fmt;
use core::net::SocketAddr;
use core::time::Duration;

use bytes::Bytes;

pub use config::{AuthMode, BrokerConfig, OverflowPolicy, Persistence};
pub use io::{
    AuthRequest, AuthVerdict, Authenticator, ConnId, DisconnectCause, Event, Input, Output,
    ProtocolViolation, StoreFailure,
};

use crate::codec::{
    ConnAck, Connect, ConnectReason, DecodeError, Packet, PacketId, Properties, ProtocolVersion,
    PubAck, PubRel, Publish, PublishView, QoS, SubAck, SubAckReason, Subscribe, UnsubAck,
    Unsubscribe, decode_buf,
};
use crate::store::{DeliveryState, StoreOp, StoreSnapshot, StoredDelivery, StoredSession};
use crate::string::MqttString;
use crate::time::Instant;
use connection::{Connection, Phase};
use router::{RetainChange, Router};
use session::{Delivery, Enqueued, Inflight, InflightState, Message, Session, SessionKey};
use slab::Slab;
use sys::Stats;

/// Misuse of the broker's API by its caller (never caused by a peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UsageError {
    /// The connection identifier was never handed out by this broker.
    UnknownConnection(ConnId),
    /// `Flushed` reported more bytes than were transmitted.
    FlushedTooMuch(ConnId),
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownConnection(c) => write!(f, "connection {} was never opened", c.get()),
            Self::FlushedTooMuch(c) => {
                write!(
                    f,
                    "connection {} reported more bytes flushed than sent",
                    c.get()
                )
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for UsageError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Sys,
    Conn(ConnId),
    /// A session's held acknowledgements reach `max_ack_hold`.
    AckHold(SessionKey),
    /// An offline persistent session may reach `session_expiry`.
    SessionExpiry(SessionKey),
}

/// The MQTT broker state machine. See the [module docs](self).
pub struct Broker {
    config: BrokerConfig,
    now: Instant,
    started_at: Instant,
    conns: Slab<Connection>,
    sessions: Slab<Session>,
    by_client_id: BTreeMap<MqttString, SessionKey>,
    router: Router,
    outputs: VecDeque<Output>,
    /// Connections with bytes in their `out` batch, in the order they got them.
    dirty: Vec<ConnId>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    stats: Stats,
    rng: u64,
    /// Reused list of routing targets.
    route_buf: Vec<(SessionKey, QoS)>,
    /// Set by `route`: a connected session the message went to is congested (publisher flow
    /// control), so the publisher's acknowledgement waits for it.
    congested: Option<SessionKey>,
    /// Last [`Output::Store`] sequence number handed out.
    store_seq: u64,
    /// Last sequence number the store reported committed.
    store_done: u64,
    /// Acknowledgements waiting for the store (durable mode), in the order they were made.
    pending_acks: VecDeque<PendingAck>,
    /// Connections whose batch is held until the store commits (durable mode, QoS 2).
    held: Vec<ConnId>,
    /// Client identifiers whose stored session was deleted by the operation with this
    /// sequence number, not yet committed: a CONNACK saying "no session" waits for it.
    deleted_sessions: BTreeMap<MqttString, u64>,
    /// How many stored deliveries reference each stored message.
    message_refs: BTreeMap<u64, u32>,
    next_message_id: u64,
}

/// An acknowledgement that may be sent once the store has committed `seq`.
#[derive(Debug)]
struct PendingAck {
    seq: u64,
    conn: ConnId,
    packet: Packet,
}

/// What [`Broker::restore`] rebuilt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Persistent sessions restored (all offline).
    pub sessions: usize,
    /// Subscriptions restored.
    pub subscriptions: usize,
    /// Messages queued or in flight to those sessions.
    pub deliveries: usize,
    /// Retained messages.
    pub retained: usize,
    /// Records that referred to something absent (a delivery of a missing message or for a
    /// missing session) or that nothing referred to; deleted by `Store` operations.
    pub discarded: usize,
}

impl fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sessions, {} subscriptions, {} queued or in-flight messages, {} retained \
             messages restored; {} records discarded",
            self.sessions, self.subscriptions, self.deliveries, self.retained, self.discarded
        )
    }
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("now", &self.now)
            .field("connections", &self.conns.len())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker with no connections or sessions, started at `now`.
    pub fn new(config: BrokerConfig, now: Instant) -> Self {
        let mut broker = Self {
            router: Router::new(config.seed),
            rng: config.seed,
            config,
            now,
            started_at: now,
            conns: Slab::new(),
            sessions: Slab::new(),
            by_client_id: BTreeMap::new(),
            outputs: VecDeque::new(),
            dirty: Vec::new(),
            timers: BinaryHeap::new(),
            stats: Stats::default(),
            route_buf: Vec::new(),
            congested: None,
            store_seq: 0,
            store_done: 0,
            pending_acks: VecDeque::new(),
            held: Vec::new(),
            deleted_sessions: BTreeMap::new(),
            message_refs: BTreeMap::new(),
            next_message_id: 1,
        };
        if let Some(interval) = broker.config.sys_interval {
            broker.timers.push(Reverse((now + interval, Timer::Sys)));
        }
        broker
    }

    // ---- getters ------------------------------------------------------------------------

    /// The configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Open connections (handshake done or not).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Sessions, online and offline.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Subscriptions across all sessions.
    pub fn subscription_count(&self) -> usize {
        self.router.trie.len()
    }

    /// Retained messages stored.
    pub fn retained_count(&self) -> usize {
        self.router.retained.len()
    }

    /// Messages queued (not in flight) for a client's session.
    pub fn queued_messages(&self, client_id: &str) -> Option<usize> {
        let key = self.by_client_id.get(client_id)?;
        self.sessions.get(key.0).map(|s| s.queue.len())
    }

    /// Outgoing QoS 1/2 messages awaiting acknowledgement for a client's session.
    pub fn inflight_messages(&self, client_id: &str) -> Option<usize> {
        let key = self.by_client_id.get(client_id)?;
        self.sessions.get(key.0).map(|s| s.inflight.len())
    }

    /// Acknowledgements waiting for the store to commit (durable mode).
    pub fn pending_acks(&self) -> usize {
        self.pending_acks.len()
    }

    // ---- commands -----------------------------------------------------------------------

    /// Rebuilds persistent sessions (offline), their subscriptions, queued and in-flight
    /// messages, QoS 2 receive state, and retained messages from a store's content. Call it
    /// once, on a new broker, before opening any connection. Records that do not fit together
    /// are reported and deleted with `Store` operations, never half-restored.
    pub fn restore(&mut self, snapshot: StoreSnapshot) -> RestoreReport {
        let mut report = RestoreReport::default();
        let StoreSnapshot {
            sessions,
            messages,
            mut deliveries,
            release_ids,
            retained,
        } = snapshot;
        let mut by_id: BTreeMap<u64, Arc<Message>> = BTreeMap::new();
        for (id, m) in messages {
            self.next_message_id = self.next_message_id.max(id.saturating_add(1));
            by_id.insert(id, Arc::new(Message::from_stored(id, m)));
        }
        for stored in sessions {
            if self.by_client_id.contains_key(&stored.client_id) {
                continue;
            }
            let key = SessionKey(
                self.sessions
                    .insert(Session::new(stored.client_id.clone(), true)),
            );
            self.by_client_id.insert(stored.client_id, key);
            if let Some(session) = self.sessions.get_mut(key.0) {
                session.offline_since = Some(self.now);
            }
            self.schedule_session_expiry(key);
            report.sessions += 1;
            for (filter, options) in stored.subscriptions {
                self.router.subscribe(key, &filter, options);
                if let Some(session) = self.sessions.get_mut(key.0) {
                    session.subscriptions.insert(filter, options);
                }
                report.subscriptions += 1;
            }
        }
        for (client_id, packet_id) in release_ids {
            let session = self
                .by_client_id
                .get(&client_id)
                .and_then(|k| self.sessions.get_mut(k.0));
            match session {
                Some(session) => {
                    session.awaiting_release.insert(packet_id);
                }
                None => {
                    report.discarded += 1;
                    self.store(StoreOp::DeleteReleaseId {
                        client_id,
                        packet_id,
                    });
                }
            }
        }
        deliveries.sort_by(|a, b| (&a.client_id, a.seq).cmp(&(&b.client_id, b.seq)));
        for d in deliveries {
            let key = self.by_client_id.get(&d.client_id).copied();
            let message = by_id.get(&d.message).cloned();
            let (Some(key), Some(message)) = (key, message) else {
                report.discarded += 1;
                self.store(StoreOp::DeleteDelivery {
                    client_id: d.client_id,
                    seq: d.seq,
                });
                continue;
            };
            let Some(session) = self.sessions.get_mut(key.0) else {
                continue;
            };
            *self.message_refs.entry(d.message).or_insert(0) += 1;
            session.next_seq = session.next_seq.max(d.seq.saturating_add(1));
            let delivery = Delivery {
                message,
                qos: d.qos,
                retain: d.retain,
                seq: d.seq,
            };
            let (id, state) = match d.state {
                DeliveryState::Queued => {
                    session.enqueue(delivery, usize::MAX, usize::MAX, false);
                    report.deliveries += 1;
                    continue;
                }
                DeliveryState::AwaitingAck(id) => (id, InflightState::AwaitingAck),
                DeliveryState::AwaitingComp(id) => (id, InflightState::AwaitingComp),
            };
            session.inflight.push_back(Inflight {
                id,
                delivery,
                state,
                sent_at: self.now,
            });
            report.deliveries += 1;
        }
        for (id, _) in by_id {
            if !self.message_refs.contains_key(&id) {
                report.discarded += 1;
                self.store(StoreOp::DeleteMessage { id });
            }
        }
        for m in retained {
            let id = self.new_message_id();
            let message = Arc::new(Message::from_stored(id, m));
            if self
                .router
                .retain(&message, self.config.max_retained_messages)
                == RetainChange::Stored
            {
                report.retained += 1;
            }
        }
        report
    }

    /// Registers a new network connection. `peer` is its remote address when known (used by
    /// [`AuthMode::LoopbackOnly`]; `None` counts as local, for in-process embedding).
    pub fn open_connection(&mut self, now: Instant, peer: Option<SocketAddr>) -> ConnId {
        self.open_connection_with_identity(now, peer, None)
    }

    /// Like [`open_connection`](Self::open_connection), for a TLS connection whose client
    /// certificate names the user: `identity` replaces any user name the CONNECT carries (and is
    /// what the authenticator sees), as Mosquitto's `use_identity_as_username` does.
    pub fn open_connection_with_identity(
        &mut self,
        now: Instant,
        peer: Option<SocketAddr>,
        identity: Option<MqttString>,
    ) -> ConnId {
        self.advance(now);
        let mut connection = Connection::new(peer, self.now);
        connection.identity = identity;
        let id = ConnId(self.conns.insert(connection));
        self.schedule(id);
        id
    }

    /// Graceful shutdown: closes every connection as the server going away (Wills of connected
    /// clients are published, since none of them sent DISCONNECT), after flushing what is
    /// pending. Persistent sessions stay, offline. New connections may still be opened after.
    pub fn shutdown(&mut self, now: Instant) {
        self.advance(now);
        let conns: Vec<ConnId> = self.conns.keys().map(ConnId).collect();
        for conn in conns {
            self.end_connection(conn, DisconnectCause::ServerShutdown, true);
        }
    }

    // ---- inputs -------------------------------------------------------------------------

    /// Feeds one input. Errors only on caller misuse; peer misbehaviour becomes outputs.
    pub fn handle_input(&mut self, now: Instant, input: Input) -> Result<(), UsageError> {
        self.advance(now);
        match input {
            Input::Received { conn, data } => self.handle_received(conn, &data),
            Input::Flushed { conn, bytes } => self.handle_flushed(conn, bytes),
            Input::Closed { conn } => {
                self.check_known(conn)?;
                if self.conns.contains(conn.0) {
                    self.end_connection(conn, DisconnectCause::ConnectionLost, false);
                }
                Ok(())
            }
            Input::Timeout => {
                self.handle_timeout();
                Ok(())
            }
            Input::StoreDone { seq, result } => {
                self.handle_store_done(seq, result);
                Ok(())
            }
            Input::AuthDone { conn, verdict } => {
                self.check_known(conn)?;
                self.handle_auth_done(conn, verdict);
                Ok(())
            }
        }
    }

    // ---- outputs ------------------------------------------------------------------------

    /// The next thing to do, or `None` when everything is drained.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        if let Some(output) = self.outputs.pop_front() {
            return Some(output);
        }
        while let Some(conn) = self.dirty.pop() {
            if let Some(data) = self.take_batch(conn) {
                return Some(Output::Transmit { conn, data });
            }
        }
        None
    }

    /// When to feed [`Input::Timeout`] next, if anything is scheduled.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    // ---- internals: plumbing ------------------------------------------------------------

    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    fn check_known(&self, conn: ConnId) -> Result<(), UsageError> {
        if !self.conns.was_issued(conn.0) {
            Err(UsageError::UnknownConnection(conn))
        } else {
            Ok(())
        }
    }

    /// Takes a connection's pending batch, counting it as unflushed. A held batch stays
    /// (the store's commit releases it).
    fn take_batch(&mut self, conn: ConnId) -> Option<Bytes> {
        let c = self.conns.get_mut(conn.0)?;
        c.dirty = false;
        if c.out.is_empty() || c.hold_until > self.store_done {
            return None;
        }
        let data = c.out.split().freeze();
        c.unflushed += data.len();
        self.stats.bytes_sent += data.len() as u64;
        Some(data)
    }

    /// Encodes `packet` into the connection's batch.
    fn send(&mut self, conn: ConnId, packet: &Packet) {
        let Some(c) = self.conns.get_mut(conn.0) else {
            return;
        };
        // Our own packets always fit the 3.x / 5.0 limits; an encode error would be a bug, and
        // it writes nothing, so the packet is skipped rather than corrupting the stream.
        if packet.encode(c.version, &mut c.out).is_ok() && !c.dirty {
            c.dirty = true;
            self.dirty.push(conn);
        }
    }

    /// Moves a connection's pending batch into the ordered output queue (before a Close).
    fn flush_to_outputs(&mut self, conn: ConnId) {
        if let Some(data) = self.take_batch(conn) {
            self.outputs.push_back(Output::Transmit { conn, data });
        }
    }

    // ---- internals: the store ------------------------------------------------------------

    fn persisting(&self) -> bool {
        self.config.persistence != Persistence::Off
    }

    fn durable(&self) -> bool {
        self.config.persistence == Persistence::Durable
    }

    fn store(&mut self, op: StoreOp) {
        self.store_seq += 1;
        self.outputs.push_back(Output::Store {
            seq: self.store_seq,
            op,
        });
    }

    fn new_message_id(&mut self) -> u64 {
        let id = self.next_message_id;
        self.next_message_id += 1;
        id
    }

    /// Counts a stored delivery of `message`, storing the message with the first one.
    fn ref_message(&mut self, message: &Message) {
        let refs = self.message_refs.entry(message.id).or_insert(0);
        *refs += 1;
        if *refs == 1 {
            self.store(StoreOp::PutMessage {
                id: message.id,
                message: message.to_stored(),
            });
        }
    }

    /// Forgets a stored delivery of message `id`, deleting the message with the last one.
    fn unref_message(&mut self, id: u64) {
        if let Some(refs) = self.message_refs.get_mut(&id) {
            *refs = refs.saturating_sub(1);
            if *refs == 0 {
                self.message_refs.remove(&id);
                self.store(StoreOp::DeleteMessage { id });
            }
        }
    }

    fn store_delivery(&mut self, key: SessionKey, delivery: &Delivery, state: DeliveryState) {
        if delivery.seq == 0 {
            return;
        }
        let Some(session) = self.sessions.get(key.0) else {
            return;
        };
        let op = StoreOp::PutDelivery(StoredDelivery {
            client_id: session.client_id.clone(),
            seq: delivery.seq,
            message: delivery.message.id,
            qos: delivery.qos,
            retain: delivery.retain,
            state,
        });
        self.store(op);
    }

    /// A stored delivery is done (acknowledged) or dropped.
    fn forget_delivery(&mut self, key: SessionKey, delivery: &Delivery) {
        if delivery.seq == 0 {
            return;
        }
        let Some(session) = self.sessions.get(key.0) else {
            return;
        };
        let client_id = session.client_id.clone();
        self.store(StoreOp::DeleteDelivery {
            client_id,
            seq: delivery.seq,
        });
        self.unref_message(delivery.message.id);
    }

    /// Stores a persistent session's record (identifier and subscriptions).
    fn store_session(&mut self, key: SessionKey) {
        if !self.persisting() {
            return;
        }
        let Some(session) = self.sessions.get(key.0) else {
            return;
        };
        if !session.persistent {
            return;
        }
        let op = StoreOp::PutSession(StoredSession {
            client_id: session.client_id.clone(),
            subscriptions: session
                .subscriptions
                .iter()
                .map(|(f, o)| (f.clone(), *o))
                .collect(),
        });
        self.store(op);
    }

    /// Sends an acknowledgement now, or (durable mode, something not yet committed) once the
    /// store has committed everything emitted so far.
    fn send_ack(&mut self, conn: ConnId, packet: Packet) {
        if self.durable() && self.store_seq > self.store_done {
            let Some(c) = self.conns.get_mut(conn.0) else {
                return;
            };
            c.pending_acks += 1;
            if c.pending_acks > u32::from(u16::MAX) {
                self.violation(conn, ProtocolViolation::TooManyUnacknowledged);
                return;
            }
            self.pending_acks.push_back(PendingAck {
                seq: self.store_seq,
                conn,
                packet,
            });
        } else {
            self.send(conn, &packet);
        }
    }

    /// Holds the connection's batch until the store has committed what was emitted so far.
    fn hold(&mut self, conn: ConnId) {
        let seq = self.store_seq;
        if seq <= self.store_done {
            return;
        }
        if let Some(c) = self.conns.get_mut(conn.0) {
            if c.hold_until == 0 {
                self.held.push(conn);
            }
            c.hold_until = c.hold_until.max(seq);
        }
    }

    fn handle_store_done(&mut self, seq: u64, result: Result<(), StoreFailure>) {
        let seq = seq.min(self.store_seq);
        match result {
            Ok(()) => {
                self.store_done = self.store_done.max(seq);
                let done = self.store_done;
                self.deleted_sessions.retain(|_, at| *at > done);
                while let Some(ack) = self.pending_acks.front() {
                    if ack.seq > self.store_done {
                        break;
                    }
                    if let Some(ack) = self.pending_acks.pop_front() {
                        if let Some(c) = self.conns.get_mut(ack.conn.0) {
                            c.pending_acks = c.pending_acks.saturating_sub(1);
                        }
                        self.send(ack.conn, &ack.packet);
                    }
                }
                let done = self.store_done;
                let mut held = core::mem::take(&mut self.held);
                held.retain(|&conn| {
                    let Some(c) = self.conns.get_mut(conn.0) else {
                        return false;
                    };
                    if c.hold_until > done {
                        return true;
                    }
                    c.hold_until = 0;
                    if !c.out.is_empty() && !c.dirty {
                        c.dirty = true;
                        self.dirty.push(conn);
                    }
                    false
                });
                self.held = held;
            }
            Err(error) => {
                // What those acknowledgements promised is not on disk: withhold them, and
                // close their connections so the clients resend (they will be acknowledged
                // once a later commit succeeds). Held QoS 2 deliveries likewise.
                let mut close = Vec::new();
                while let Some(ack) = self.pending_acks.front() {
                    if ack.seq > seq {
                        break;
                    }
                    if let Some(ack) = self.pending_acks.pop_front() {
                        if let Some(c) = self.conns.get_mut(ack.conn.0) {
                            c.pending_acks = c.pending_acks.saturating_sub(1);
                        }
                        close.push(ack.conn);
                    }
                }
                let withheld = close.len();
                for &conn in &self.held {
                    if self.conns.get(conn.0).is_some_and(|c| c.hold_until <= seq) {
                        close.push(conn);
                    }
                }
                close.sort_unstable();
                close.dedup();
                self.event(Event::StoreFailed {
                    seq,
                    error,
                    withheld,
                });
                for conn in close {
                    if self.conns.contains(conn.0) {
                        self.end_connection(conn, DisconnectCause::StoreFailed, true);
                    }
                }
                // Settled all the same, once the held batches are dropped with their
                // connections: nothing waits for the failed operations any more, or an
                // acknowledgement needing no new operation (or a connection held for nothing
                // new) would wait for a commit that may never come.
                self.store_done = self.store_done.max(seq);
                // The store now lacks what the failed operations said, and later operations
                // (already on their way) build on them. Memory is the reference: rewrite all
                // of it, and let everything still waiting wait for that rewrite too.
                self.resync_store();
                let resynced = self.store_seq;
                for ack in &mut self.pending_acks {
                    ack.seq = ack.seq.max(resynced);
                }
                for &conn in &self.held {
                    if let Some(c) = self.conns.get_mut(conn.0) {
                        c.hold_until = c.hold_until.max(resynced);
                    }
                }
            }
        }
    }

    /// Emits [`StoreOp::Clear`] and then everything the broker keeps, in one atomic group.
    fn resync_store(&mut self) {
        self.store(StoreOp::Clear);
        let keys: Vec<u64> = self.sessions.keys().collect();
        let mut stored_messages = BTreeMap::new();
        for key in keys {
            let key = SessionKey(key);
            let Some(session) = self.sessions.get(key.0) else {
                continue;
            };
            if !session.persistent {
                continue;
            }
            let client_id = session.client_id.clone();
            let mut ops = Vec::new();
            for &packet_id in &session.awaiting_release {
                ops.push(StoreOp::PutReleaseId {
                    client_id: client_id.clone(),
                    packet_id,
                });
            }
            let inflight = session.inflight.iter().map(|f| {
                let state = match f.state {
                    InflightState::AwaitingAck => DeliveryState::AwaitingAck(f.id),
                    InflightState::AwaitingComp => DeliveryState::AwaitingComp(f.id),
                };
                (&f.delivery, state)
            });
            let queued = session.queue.iter().map(|d| (d, DeliveryState::Queued));
            for (d, state) in inflight.chain(queued).filter(|(d, _)| d.seq != 0) {
                stored_messages
                    .entry(d.message.id)
                    .or_insert_with(|| Arc::clone(&d.message));
                ops.push(StoreOp::PutDelivery(StoredDelivery {
                    client_id: client_id.clone(),
                    seq: d.seq,
                    message: d.message.id,
                    qos: d.qos,
                    retain: d.retain,
                    state,
                }));
            }
            self.store_session(key);
            for op in ops {
                self.store(op);
            }
        }
        for (id, message) in stored_messages {
            self.store(StoreOp::PutMessage {
                id,
                message: message.to_stored(),
            });
        }
        let retained: Vec<Arc<Message>> = self
            .router
            .retained
            .values()
            .filter(|m| !m.topic.as_str().starts_with("$SYS"))
            .cloned()
            .collect();
        for message in retained {
            self.store(StoreOp::PutRetained(message.to_stored()));
        }
    }

    fn event(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    fn random(&mut self) -> u64 {
        // SplitMix64: tiny, seeded, good enough for identifiers.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    // ---- internals: timers --------------------------------------------------------------

    /// The next instant something is due on a connection.
    fn conn_deadline(&self, c: &Connection) -> Option<Instant> {
        match c.phase {
            Phase::AwaitingConnect | Phase::Authenticating(_) => {
                Some(c.opened_at + self.config.connect_timeout)
            }
            Phase::Connected => {
                let keep_alive = c.keep_alive_limit.map(|limit| c.last_received + limit);
                let retry = self.config.retry_interval.and_then(|interval| {
                    let session = self.sessions.get(c.session?.0)?;
                    session.inflight.front().map(|f| f.sent_at + interval)
                });
                match (keep_alive, retry) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }

    fn schedule(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(conn.0) else {
            return;
        };
        let Some(deadline) = self.conn_deadline(c) else {
            return;
        };
        if c.timer_at.is_none_or(|at| deadline < at) {
            if let Some(c) = self.conns.get_mut(conn.0) {
                c.timer_at = Some(deadline);
            }
            self.timers.push(Reverse((deadline, Timer::Conn(conn))));
        }
    }

    fn handle_timeout(&mut self) {
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > self.now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Sys => {
                    self.publish_sys();
                    if let Some(interval) = self.config.sys_interval {
                        self.timers.push(Reverse((self.now + interval, Timer::Sys)));
                    }
                }
                Timer::Conn(conn) => self.connection_timer(conn, at),
                Timer::AckHold(key) => self.ack_hold_expired(key),
                Timer::SessionExpiry(key) => self.session_expiry_due(key),
            }
        }
    }

    fn connection_timer(&mut self, conn: ConnId, at: Instant) {
        let Some(c) = self.conns.get_mut(conn.0) else {
            return;
        };
        if c.timer_at != Some(at) {
            return; // A stale entry; a later one is in the heap.
        }
        c.timer_at = None;
        let now = self.now;
        match c.phase {
            Phase::AwaitingConnect | Phase::Authenticating(_) => {
                if now >= c.opened_at + self.config.connect_timeout {
                    self.violation(conn, ProtocolViolation::ConnectTimeout);
                    return;
                }
            }
            Phase::Connected => {
                if c.keep_alive_limit
                    .is_some_and(|limit| now >= c.last_received + limit)
                {
                    // 3.1.1 [MQTT-3.1.2-24]
                    self.violation(conn, ProtocolViolation::KeepAliveTimeout);
                    return;
                }
                if let Some(interval) = self.config.retry_interval {
                    self.retry_inflight(conn, interval);
                }
            }
        }
        self.schedule(conn);
    }

    // ---- internals: connection lifecycle -------------------------------------------------

    fn handle_received(&mut self, conn: ConnId, data: &[u8]) -> Result<(), UsageError> {
        self.check_known(conn)?;
        self.stats.bytes_received += data.len() as u64;
        let Some(c) = self.conns.get_mut(conn.0) else {
            return Ok(()); // Closed already: [MQTT-3.1.4-5] nothing more is processed.
        };
        c.recv.extend_from_slice(data);
        self.process_buffer(conn);
        Ok(())
    }

    /// Decodes and handles every complete packet buffered on the connection.
    fn process_buffer(&mut self, conn: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(conn.0) else {
                return;
            };
            if matches!(c.phase, Phase::Authenticating(_)) {
                return; // Resumed once the authenticator answers.
            }
            match decode_buf(&mut c.recv, c.version, self.config.max_packet_size) {
                Ok(Some(packet)) => {
                    c.last_received = self.now;
                    self.handle_packet(conn, packet);
                }
                Ok(None) => return,
                Err(error) => {
                    self.decode_failed(conn, error);
                    return;
                }
            }
        }
    }

    fn decode_failed(&mut self, conn: ConnId, error: DecodeError) {
        let awaiting_connect = self
            .conns
            .get(conn.0)
            .is_some_and(|c| matches!(c.phase, Phase::AwaitingConnect));
        if awaiting_connect && let DecodeError::UnsupportedProtocolVersion { .. } = error {
            // 3.1.1 [MQTT-3.1.2-2]: CONNACK 0x01, then close. Answered in 3.1.1 form.
            self.refuse(conn, ConnectReason::UnsupportedProtocolVersion);
            return;
        }
        self.violation(conn, ProtocolViolation::Malformed(error));
    }

    /// Closes a connection for breaking the protocol; the Will is published if connected.
    fn violation(&mut self, conn: ConnId, violation: ProtocolViolation) {
        self.end_connection(conn, DisconnectCause::Violation(violation), true);
    }

    /// Answers CONNECT with a refusal and closes ([MQTT-3.2.2-4], [MQTT-3.2.2-5]).
    fn refuse(&mut self, conn: ConnId, reason: ConnectReason) {
        self.send(
            conn,
            &Packet::ConnAck(ConnAck {
                session_present: false,
                reason,
                properties: Properties::new(),
            }),
        );
        self.event(Event::Refused { conn, reason });
        self.end_connection(conn, DisconnectCause::Refused(reason), true);
    }

    /// Ends a connection: flushes what is pending, closes it (if `emit_close`), publishes the
    /// Will unless the client said DISCONNECT, and detaches or discards its session.
    fn end_connection(&mut self, conn: ConnId, cause: DisconnectCause, emit_close: bool) {
        if emit_close {
            self.flush_to_outputs(conn);
            self.outputs.push_back(Output::Close { conn });
        }
        let Some(mut c) = self.conns.remove(conn.0) else {
            return;
        };
        let client_id = c
            .session
            .and_then(|k| self.sessions.get(k.0))
            .map(|s| s.client_id.clone());
        if let Some(will) = c.will.take() {
            // 3.1.1 [MQTT-3.1.2-8]: published when the connection ends without DISCONNECT.
            let id = self.new_message_id();
            let message = Arc::new(Message {
                id,
                topic: will.topic,
                payload: will.payload,
                qos: will.qos,
                properties: Properties::new(),
            });
            // 3.1.1 [MQTT-3.1.2-16] [MQTT-3.1.2-17]: retained exactly when Will Retain is set.
            self.route(&message, will.retain);
        }
        if let Some(key) = c.session {
            self.detach_session(key, conn);
        }
        if c.is_connected() {
            self.stats.connected = self.stats.connected.saturating_sub(1);
        }
        self.event(Event::Disconnected {
            conn,
            client_id,
            cause,
        });
    }

    /// A connection left its session: a persistent session stays (offline); a clean one ends.
    fn detach_session(&mut self, key: SessionKey, conn: ConnId) {
        let Some(session) = self.sessions.get_mut(key.0) else {
            return;
        };
        if session.conn != Some(conn) {
            return;
        }
        session.conn = None;
        session.offline_since = Some(self.now);
        // Offline sessions hold no publisher back.
        self.check_ack_hold(key);
        self.schedule_session_expiry(key);
        if !session_persistent(&self.sessions, key) {
            self.discard_session(key);
        }
    }

    fn schedule_session_expiry(&mut self, key: SessionKey) {
        let Some(expiry) = self.config.session_expiry else {
            return;
        };
        let Some(since) = self.sessions.get(key.0).and_then(|s| s.offline_since) else {
            return;
        };
        self.timers
            .push(Reverse((since + expiry, Timer::SessionExpiry(key))));
    }

    fn session_expiry_due(&mut self, key: SessionKey) {
        let Some(expiry) = self.config.session_expiry else {
            return;
        };
        let now = self.now;
        let Some(session) = self.sessions.get(key.0) else {
            return;
        };
        let due = session.conn.is_none()
            && session.persistent
            && session
                .offline_since
                .is_some_and(|since| since + expiry <= now);
        if due {
            let client_id = session.client_id.clone();
            self.discard_session(key);
            self.event(Event::SessionExpired { client_id });
        }
    }

    fn discard_session(&mut self, key: SessionKey) {
        self.release_held_acks(key);
        let Some(session) = self.sessions.remove(key.0) else {
            return;
        };
        if session.persistent && self.persisting() {
            self.store(StoreOp::DeleteSession {
                client_id: session.client_id.clone(),
            });
            if self.durable() {
                self.deleted_sessions
                    .insert(session.client_id.clone(), self.store_seq);
            }
            let stored = session.inflight.iter().map(|f| &f.delivery);
            for d in stored.chain(session.queue.iter()) {
                if d.seq != 0 {
                    self.unref_message(d.message.id);
                }
            }
        }
        for filter in session.subscriptions.keys() {
            self.router.unsubscribe(key, filter);
        }
        if self.by_client_id.get(&session.client_id) == Some(&key) {
            self.by_client_id.remove(&session.client_id);
        }
    }

    fn handle_flushed(&mut self, conn: ConnId, bytes: usize) -> Result<(), UsageError> {
        self.check_known(conn)?;
        let Some(c) = self.conns.get_mut(conn.0) else {
            return Ok(());
        };
        if bytes > c.unflushed {
            return Err(UsageError::FlushedTooMuch(conn));
        }
        c.unflushed -= bytes;
        if let Some(key) = c.session {
            self.drain_queue(key);
        }
        Ok(())
    }

    // ---- internals: packets -------------------------------------------------------------

    fn handle_packet(&mut self, conn: ConnId, packet: Packet) {
        let connected = self.conns.get(conn.0).is_some_and(Connection::is_connected);
        if !connected {
            match packet {
                Packet::Connect(connect) => self.handle_connect(conn, connect),
                // 3.1.1 [MQTT-3.1.0-1]
                _ => self.violation(conn, ProtocolViolation::FirstPacketNotConnect),
            }
            return;
        }
        match packet {
            // 3.1.1 [MQTT-3.1.0-2]
            Packet::Connect(_) => self.violation(conn, ProtocolViolation::SecondConnect),
            Packet::Publish(publish) => self.handle_publish(conn, publish),
            Packet::PubAck(ack) => self.handle_puback(conn, ack.packet_id),
            Packet::PubRec(rec) => self.handle_pubrec(conn, rec.packet_id),
            Packet::PubRel(rel) => self.handle_pubrel(conn, rel.packet_id),
            Packet::PubComp(comp) => self.handle_pubcomp(conn, comp.packet_id),
            Packet::Subscribe(subscribe) => self.handle_subscribe(conn, subscribe),
            Packet::Unsubscribe(unsubscribe) => self.handle_unsubscribe(conn, unsubscribe),
            // 3.1.1 [MQTT-3.12.4-1]
            Packet::PingReq => self.send(conn, &Packet::PingResp),
            Packet::Disconnect(_) => {
                // 3.1.1 [MQTT-3.14.4-3]: the Will is discarded, not published.
                if let Some(c) = self.conns.get_mut(conn.0) {
                    c.will = None;
                }
                self.end_connection(conn, DisconnectCause::ClientDisconnect, true);
            }
            Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp
            | Packet::Auth(_) => self.violation(conn, ProtocolViolation::ServerOnlyPacket),
        }
    }

    fn handle_connect(&mut self, conn: ConnId, mut connect: Box<Connect>) {
        let Some(c) = self.conns.get_mut(conn.0) else {
            return;
        };
        c.version = connect.protocol;
        let peer = c.peer;
        let from_certificate = c.identity.is_some();
        if let Some(identity) = &c.identity {
            connect.username = Some(identity.clone());
        }
        if connect.protocol == ProtocolVersion::V5 {
            // MQTT 5.0 is not served yet: refuse in 5.0 form (0x84) rather than misbehave.
            self.refuse(conn, ConnectReason::UnsupportedProtocolVersion);
            return;
        }
        if connect.client_id.is_empty() {
            // MQTT 3.1 requires 1 to 23 characters and has no identifier assignment;
            // 3.1.1 [MQTT-3.1.3-8] refuses an empty one without clean session.
            if !connect.clean_start || connect.protocol == ProtocolVersion::V3_1 {
                // 3.1.1 [MQTT-3.1.3-8]
                self.refuse(conn, ConnectReason::ClientIdentifierNotValid);
                return;
            }
            // 3.1.1 [MQTT-3.1.3-6]: assign a unique identifier.
            loop {
                let candidate = format!("auto-{:016x}", self.random());
                let Ok(id) = MqttString::new(&candidate) else {
                    continue;
                };
                if !self.by_client_id.contains_key(&id) {
                    connect.client_id = id;
                    break;
                }
            }
        }
        let id_len = connect.client_id.len();
        let too_long = id_len > self.config.max_client_id_len
            || (connect.protocol == ProtocolVersion::V3_1 && id_len > 23);
        if too_long {
            // 3.1.1 [MQTT-3.1.3-9]
            self.refuse(conn, ConnectReason::ClientIdentifierNotValid);
            return;
        }
        let local = peer.is_none_or(|p| p.ip().is_loopback());
        match self.config.auth {
            AuthMode::AllowAll => self.accept(conn, connect),
            AuthMode::LoopbackOnly if local => self.accept(conn, connect),
            AuthMode::LoopbackOnly => self.refuse(conn, ConnectReason::NotAuthorized),
            AuthMode::External => {
                let request = AuthRequest {
                    conn,
                    peer,
                    client_id: connect.client_id.clone(),
                    username: connect.username.clone(),
                    password: connect.password.clone(),
                    from_certificate,
                };
                if let Some(c) = self.conns.get_mut(conn.0) {
                    c.phase = Phase::Authenticating(connect);
                }
                self.outputs.push_back(Output::Authenticate(request));
            }
        }
    }

    fn handle_auth_done(&mut self, conn: ConnId, verdict: AuthVerdict) {
        let Some(c) = self.conns.get_mut(conn.0) else {
            return;
        };
        let Phase::Authenticating(_) = c.phase else {
            return;
        };
        let Phase::Authenticating(connect) =
            core::mem::replace(&mut c.phase, Phase::AwaitingConnect)
        else {
            return;
        };
        match verdict {
            AuthVerdict::Accept => {
                self.accept(conn, connect);
                self.process_buffer(conn);
            }
            AuthVerdict::Refuse(reason) => self.refuse(conn, reason),
        }
    }

    /// Completes a CONNECT: takes over or creates the session, answers CONNACK 0, then resends
    /// what was in flight and drains the queue.
    fn accept(&mut self, conn: ConnId, connect: Box<Connect>) {
        let Connect {
            client_id,
            clean_start,
            keep_alive,
            will,
            ..
        } = *connect;
        // 3.1.1 [MQTT-3.1.4-2]: an existing connection with this identifier is closed.
        if let Some(&key) = self.by_client_id.get(&client_id)
            && let Some(old) = self.sessions.get(key.0).and_then(|s| s.conn)
            && old != conn
        {
            self.end_connection(old, DisconnectCause::TakenOver, true);
        }
        // 3.1.1 [MQTT-3.1.2-6]: clean session discards any previous session.
        if clean_start && let Some(&key) = self.by_client_id.get(&client_id) {
            self.discard_session(key);
        }
        let (key, session_present) = match self.by_client_id.get(&client_id) {
            // 3.1.1 [MQTT-3.1.2-4] [MQTT-3.2.2-2]: resume the stored session.
            Some(&key) => (key, true),
            None => {
                let key = SessionKey(
                    self.sessions
                        .insert(Session::new(client_id.clone(), !clean_start)),
                );
                self.by_client_id.insert(client_id.clone(), key);
                self.store_session(key);
                // 3.1.1 [MQTT-3.2.2-1] [MQTT-3.2.2-3]
                (key, false)
            }
        };
        if let Some(session) = self.sessions.get_mut(key.0) {
            session.conn = Some(conn);
            session.offline_since = None;
        }
        let keep_alive = match (keep_alive, self.config.max_keep_alive) {
            (0, max) => max.filter(|m| *m > 0),
            (k, Some(max)) if max > 0 => Some(k.min(max)),
            (k, _) => Some(k),
        };
        let Some(c) = self.conns.get_mut(conn.0) else {
            return;
        };
        c.phase = Phase::Connected;
        c.session = Some(key);
        c.will = will; // 3.1.1 [MQTT-3.1.2-8]
        c.keep_alive_limit = keep_alive.map(|k| Duration::from_millis(u64::from(k) * 1500));
        c.timer_at = None;
        let version = c.version;
        self.stats.connected += 1;
        // 3.1.1 [MQTT-3.2.0-1] [MQTT-3.1.4-4]: CONNACK is the first packet sent. MQTT 3.1 has
        // no Session Present flag: that byte is reserved there.
        self.send(
            conn,
            &Packet::ConnAck(ConnAck {
                session_present: session_present && version != ProtocolVersion::V3_1,
                reason: ConnectReason::Success,
                properties: Properties::new(),
            }),
        );
        let deletion_pending = self
            .deleted_sessions
            .get(&client_id)
            .is_some_and(|&at| at > self.store_done);
        if !session_present && deletion_pending {
            // "No session" (this CONNECT discarded a stored one, or another connection did
            // just before): the CONNACK, and all after it, waits for the deletion to be
            // committed. After a crash the session must not come back ([MQTT-3.1.2-6]) with
            // QoS 2 identifiers the client forgot, whose resends would be delivered again or
            // would swallow its new messages.
            self.hold(conn);
        }
        self.event(Event::Connected {
            conn,
            client_id,
            version,
            session_present,
        });
        // 3.1.1 [MQTT-4.4.0-1]: resend unacknowledged PUBLISH (DUP) and PUBREL, in order.
        self.resend_inflight(key, conn, |_| true);
        self.drain_queue(key);
        self.schedule(conn);
    }

    // ---- internals: publish flows -------------------------------------------------------

    fn session_of(&self, conn: ConnId) -> Option<SessionKey> {
        self.conns.get(conn.0).and_then(|c| c.session)
    }

    fn handle_publish(&mut self, conn: ConnId, publish: Publish) {
        let Some(key) = self.session_of(conn) else {
            return;
        };
        self.stats.messages_received += 1;
        self.congested = None;
        let Publish {
            qos,
            retain,
            topic,
            packet_id,
            payload,
            ..
        } = publish;
        // Only the broker publishes statistics under $SYS; a client's attempt is acknowledged
        // and dropped (3.1.1 [MQTT-3.3.5-2] allows either).
        let forbidden = topic.as_str() == "$SYS" || topic.as_str().starts_with("$SYS/");
        let id = self.new_message_id();
        let message = || {
            Arc::new(Message {
                id,
                topic,
                payload,
                qos,
                properties: Properties::new(),
            })
        };
        match (qos, packet_id) {
            (QoS::AtMostOnce, _) => {
                if !forbidden {
                    self.route(&message(), retain);
                }
            }
            (QoS::AtLeastOnce, Some(id)) => {
                if !forbidden {
                    self.route(&message(), retain);
                }
                // 3.1.1 [MQTT-4.3.2-2] [MQTT-2.3.1-6]
                self.ack_publish(conn, Packet::PubAck(PubAck::success(id)));
            }
            (QoS::ExactlyOnce, Some(id)) => {
                let Some(session) = self.sessions.get_mut(key.0) else {
                    return;
                };
                // 3.1.1 [MQTT-4.3.3-2]: a repeated PUBLISH before PUBREL is acknowledged
                // again but not delivered again.
                if session.awaiting_release.insert(id) {
                    let stored = session.persistent.then(|| session.client_id.clone());
                    if !forbidden {
                        self.route(&message(), retain);
                    }
                    // Stored after the deliveries, in the same atomic group as them.
                    if let Some(client_id) = stored.filter(|_| self.persisting()) {
                        self.store(StoreOp::PutReleaseId {
                            client_id,
                            packet_id: id,
                        });
                    }
                }
                self.ack_publish(conn, Packet::PubRec(PubAck::success(id)));
            }
            // The decoder guarantees a packet id at QoS 1 and 2.
            (_, None) => {}
        }
    }

    fn handle_pubrel(&mut self, conn: ConnId, id: PacketId) {
        if let Some(key) = self.session_of(conn)
            && let Some(session) = self.sessions.get_mut(key.0)
        {
            session.awaiting_release.remove(&id);
            // Deleted from the store even when memory no longer awaits it: a PUBREL resent
            // after a failed commit (PUBCOMP withheld, connection closed) must not leave the
            // identifier on disk.
            if session.persistent && self.config.persistence != Persistence::Off {
                let client_id = session.client_id.clone();
                self.store(StoreOp::DeleteReleaseId {
                    client_id,
                    packet_id: id,
                });
            }
        }
        // 3.1.1 [MQTT-4.3.3-2]: PUBCOMP with the same identifier. After the release is
        // committed: a stale identifier restored after a crash would swallow its reuse.
        self.send_ack(conn, Packet::PubComp(PubRel::success(id)));
    }

    fn handle_puback(&mut self, conn: ConnId, id: PacketId) {
        let Some(key) = self.session_of(conn) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(key.0) else {
            return;
        };
        if let Some(at) = session.inflight_position(id) {
            let is_qos1 = session
                .inflight
                .get(at)
                .is_some_and(|f| f.delivery.qos == QoS::AtLeastOnce);
            if is_qos1 && let Some(done) = session.inflight.remove(at) {
                self.forget_delivery(key, &done.delivery);
                self.drain_queue(key);
            }
        }
    }

    fn handle_pubrec(&mut self, conn: ConnId, id: PacketId) {
        let Some(key) = self.session_of(conn) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(key.0) else {
            return;
        };
        let mut stored = false;
        if let Some(f) = session.inflight.iter_mut().find(|f| f.id == id)
            && f.delivery.qos == QoS::ExactlyOnce
        {
            // The message is now the receiver's; only the identifier stays in flight.
            let changed = f.state != InflightState::AwaitingComp;
            f.state = InflightState::AwaitingComp;
            f.sent_at = self.now;
            stored = f.delivery.seq != 0;
            if changed {
                let delivery = f.delivery.clone();
                self.store_delivery(key, &delivery, DeliveryState::AwaitingComp(id));
            }
        }
        // 3.1.1 [MQTT-4.3.3-1]: answer PUBREC with PUBREL.
        self.send(conn, &Packet::PubRel(PubRel::success(id)));
        if stored && self.durable() {
            // Written only once the new state is on disk: after PUBREL the PUBLISH must never
            // be sent again, which a crash that forgot the PUBREC would do.
            self.hold(conn);
        }
    }

    fn handle_pubcomp(&mut self, conn: ConnId, id: PacketId) {
        let Some(key) = self.session_of(conn) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(key.0) else {
            return;
        };
        if let Some(at) = session.inflight_position(id) {
            let done = session
                .inflight
                .get(at)
                .is_some_and(|f| f.state == InflightState::AwaitingComp);
            if done && let Some(done) = session.inflight.remove(at) {
                self.forget_delivery(key, &done.delivery);
                self.drain_queue(key);
            }
        }
    }

    /// Delivers a message to every matching session; stores it first if retained.
    fn route(&mut self, message: &Arc<Message>, retain: bool) {
        self.congested = None;
        if retain {
            let change = self
                .router
                .retain(message, self.config.max_retained_messages);
            let sys = message.topic.as_str().starts_with("$SYS");
            if self.persisting() && !sys {
                match change {
                    RetainChange::Stored => self.store(StoreOp::PutRetained(message.to_stored())),
                    RetainChange::Cleared => self.store(StoreOp::DeleteRetained {
                        topic: message.topic.clone(),
                    }),
                    RetainChange::Unchanged => {}
                }
            }
        }
        // The matches are copied into a reused vector so that delivering (which needs
        // `&mut self`) can walk them; nothing is allocated once it is warm.
        let mut targets = core::mem::take(&mut self.route_buf);
        targets.clear();
        targets.extend_from_slice(self.router.subscribers(&message.topic));
        for &(key, granted) in &targets {
            // 3.1.1 [MQTT-3.8.4-6]: the lower of the published and the granted QoS.
            let qos = message.qos.min(granted);
            // 3.1.1 [MQTT-3.3.1-9]: RETAIN 0 on messages to established subscriptions.
            self.deliver(
                key,
                Delivery {
                    message: Arc::clone(message),
                    qos,
                    retain: false,
                    seq: 0,
                },
            );
            if qos != QoS::AtMostOnce && self.congested.is_none() && self.is_congested(key) {
                self.congested = Some(key);
            }
        }
        self.route_buf = targets;
    }

    /// Sends a message to a session now if its connection and window allow, else queues it
    /// (offline QoS 0 only if configured).
    fn deliver(&mut self, key: SessionKey, mut delivery: Delivery) {
        let persisting = self.persisting();
        let Some(mut session) = self.sessions.get_mut(key.0) else {
            return;
        };
        if persisting && session.persistent && delivery.qos != QoS::AtMostOnce {
            delivery.seq = session.next_seq;
            session.next_seq += 1;
            self.ref_message(&delivery.message);
            let Some(again) = self.sessions.get_mut(key.0) else {
                return;
            };
            session = again;
        }
        let online = session
            .conn
            .filter(|c| self.conns.get(c.0).is_some_and(Connection::is_connected));
        if let Some(conn) = online {
            let window_open = delivery.qos == QoS::AtMostOnce
                || session.inflight.len() < usize::from(self.config.max_inflight);
            let socket_ready = self
                .conns
                .get(conn.0)
                .is_some_and(|c| c.backlog() < self.config.max_unflushed_bytes);
            // Anything already queued goes first: per-publisher order ([MQTT-4.6.0-6]).
            if window_open && socket_ready && session.queue.is_empty() {
                self.transmit_delivery(key, conn, delivery);
                return;
            }
        } else if delivery.qos == QoS::AtMostOnce && !self.config.queue_qos0_offline {
            return;
        }
        self.enqueue(key, delivery);
    }

    fn enqueue(&mut self, key: SessionKey, delivery: Delivery) {
        let Some(session) = self.sessions.get_mut(key.0) else {
            return;
        };
        let stored = (delivery.seq != 0).then(|| delivery.clone());
        // Publisher flow control: while a connected session holds publishers' acknowledgements,
        // the QoS 1/2 messages those publishers still had in flight may take its queue up to
        // twice its limits instead of being dropped (a publisher stops at its window).
        let holding = self.config.publisher_flow_control
            && delivery.qos != QoS::AtMostOnce
            && session.conn.is_some()
            && !session.hold_expired;
        let stretch = if holding { 2 } else { 1 };
        let outcome = session.enqueue(
            delivery,
            self.config.max_queued_messages.saturating_mul(stretch),
            self.config.max_queued_bytes.saturating_mul(stretch),
            self.config.overflow_policy == OverflowPolicy::DropOldestQoS0First,
        );
        if let Some(d) = stored {
            // Only QoS 0 messages are ever displaced, and those are not stored.
            if outcome == Enqueued::Dropped {
                self.unref_message(d.message.id);
            } else {
                self.store_delivery(key, &d, DeliveryState::Queued);
            }
        }
        let Some(session) = self.sessions.get_mut(key.0) else {
            return;
        };
        if outcome != Enqueued::Yes {
            self.stats.dropped += 1;
            // One event per doubling of the total: a flood of drops must not become a flood
            // of events (and log lines) that costs more than the messages themselves.
            if session.dropped >= session.dropped_reported.saturating_mul(2).max(1) {
                session.dropped_reported = session.dropped;
                let event = Event::MessagesDropped {
                    client_id: session.client_id.clone(),
                    total: session.dropped,
                };
                self.event(event);
            }
        }
    }

    /// Writes one PUBLISH to the connection, entering it in the in-flight window at QoS 1/2.
    fn transmit_delivery(&mut self, key: SessionKey, conn: ConnId, delivery: Delivery) {
        let packet_id = if delivery.qos == QoS::AtMostOnce {
            None
        } else {
            let Some(session) = self.sessions.get_mut(key.0) else {
                return;
            };
            let id = session.allocate_id();
            session.inflight.push_back(Inflight {
                id,
                delivery: delivery.clone(),
                state: InflightState::AwaitingAck,
                sent_at: self.now,
            });
            self.store_delivery(key, &delivery, DeliveryState::AwaitingAck(id));
            Some(id)
        };
        self.send_publish(conn, &delivery, packet_id, false);
        if delivery.seq != 0 && delivery.qos == QoS::ExactlyOnce && self.durable() {
            // Written only once its packet identifier is on disk: a copy sent, then forgotten
            // in a crash, would be delivered again under a new identifier.
            self.hold(conn);
        }
        if packet_id.is_some() && self.config.retry_interval.is_some() {
            self.schedule(conn);
        }
    }

    fn send_publish(
        &mut self,
        conn: ConnId,
        delivery: &Delivery,
        packet_id: Option<PacketId>,
        dup: bool,
    ) {
        self.stats.messages_sent += 1;
        let Some(c) = self.conns.get_mut(conn.0) else {
            return;
        };
        let message = &delivery.message;
        let view = PublishView {
            // 3.1.1 [MQTT-3.3.1-1] [MQTT-3.3.1-2] [MQTT-3.3.1-3]: DUP only on a resend.
            dup,
            qos: delivery.qos,
            retain: delivery.retain,
            topic: &message.topic,
            packet_id,
            properties: &message.properties,
            payload: &message.payload,
        };
        // Encoded straight from the shared message: no per-subscriber clone of topic or payload.
        if view.encode(c.version, &mut c.out).is_ok() && !c.dirty {
            c.dirty = true;
            self.dirty.push(conn);
        }
    }

    // ---- internals: publisher flow control ----------------------------------------------

    /// A connected session whose queue is over the high-water mark (half the limit), and
    /// that has not already held acknowledgements for too long.
    fn is_congested(&self, key: SessionKey) -> bool {
        if !self.config.publisher_flow_control {
            return false;
        }
        self.sessions.get(key.0).is_some_and(|s| {
            s.conn.is_some()
                && !s.hold_expired
                && s.queue.len() > self.config.max_queued_messages / 2
        })
    }

    /// Acknowledges a QoS 1/2 PUBLISH: now (or after the store's commit), or, when the message
    /// went to a congested session, once that session's queue drains.
    fn ack_publish(&mut self, conn: ConnId, packet: Packet) {
        let Some(key) = self.congested.take() else {
            self.send_ack(conn, packet);
            return;
        };
        let now = self.now;
        let deadline = now + self.config.max_ack_hold;
        // The messages they stand for fit in the queue stretched to twice its limit.
        let limit = self.config.max_queued_messages.saturating_mul(2);
        let Some(session) = self
            .sessions
            .get_mut(key.0)
            .filter(|s| s.held_acks.len() < limit)
        else {
            // Bounded like the queue: a publisher ignoring its window cannot grow the list of
            // held acknowledgements (its extra messages meet the overflow policy anyway).
            self.send_ack(conn, packet);
            return;
        };
        session.held_acks.push((conn, packet));
        if session.hold_since.is_none() {
            session.hold_since = Some(now);
            self.timers.push(Reverse((deadline, Timer::AckHold(key))));
        }
    }

    /// Sends the acknowledgements a session held.
    fn release_held_acks(&mut self, key: SessionKey) {
        let Some(session) = self.sessions.get_mut(key.0) else {
            return;
        };
        session.hold_since = None;
        let held = core::mem::take(&mut session.held_acks);
        for (conn, packet) in held {
            self.send_ack(conn, packet);
        }
    }

    /// `max_ack_hold` passed: the acknowledgements go out, and the session's queue falls back
    /// to the overflow policy until it drains.
    fn ack_hold_expired(&mut self, key: SessionKey) {
        let now = self.now;
        let max = self.config.max_ack_hold;
        let Some(session) = self.sessions.get_mut(key.0) else {
            return;
        };
        if session.hold_since.is_some_and(|since| since + max <= now) {
            session.hold_expired = true;
            self.release_held_acks(key);
        }
    }

    /// After a session's queue shrank (or the session went offline): ends its hold once the
    /// queue is under the low-water mark (a quarter of the limit).
    fn check_ack_hold(&mut self, key: SessionKey) {
        let low = self.config.max_queued_messages / 4;
        let Some(session) = self.sessions.get_mut(key.0) else {
            return;
        };
        let drained = session.queue.len() <= low || session.conn.is_none();
        if !drained {
            return;
        }
        session.hold_expired = false;
        if !session.held_acks.is_empty() {
            self.release_held_acks(key);
        }
    }

    /// Moves queued messages to the connection while the window and the socket have room.
    fn drain_queue(&mut self, key: SessionKey) {
        self.drain_queue_inner(key);
        if self
            .sessions
            .get(key.0)
            .is_some_and(|s| !s.held_acks.is_empty() || s.hold_expired)
        {
            self.check_ack_hold(key);
        }
    }

    fn drain_queue_inner(&mut self, key: SessionKey) {
        loop {
            let Some(session) = self.sessions.get(key.0) else {
                return;
            };
            let Some(conn) = session.conn else {
                return;
            };
            let Some(front) = session.queue.front() else {
                return;
            };
            if front.qos != QoS::AtMostOnce
                && session.inflight.len() >= usize::from(self.config.max_inflight)
            {
                return;
            }
            let ready = self
                .conns
                .get(conn.0)
                .is_some_and(|c| c.is_connected() && c.backlog() < self.config.max_unflushed_bytes);
            if !ready {
                return;
            }
            let Some(delivery) = self.sessions.get_mut(key.0).and_then(Session::pop_queue) else {
                return;
            };
            self.transmit_delivery(key, conn, delivery);
        }
    }

    /// Resends in-flight messages selected by `which`, in their original order: PUBLISH with
    /// DUP set while unacknowledged, PUBREL once PUBREC arrived ([MQTT-4.4.0-1]).
    fn resend_inflight(
        &mut self,
        key: SessionKey,
        conn: ConnId,
        which: impl Fn(&Inflight) -> bool,
    ) {
        let Some(session) = self.sessions.get_mut(key.0) else {
            return;
        };
        let now = self.now;
        let mut resend = Vec::new();
        for f in session.inflight.iter_mut().filter(|f| which(f)) {
            f.sent_at = now;
            resend.push((f.id, f.state, f.delivery.clone()));
        }
        // As when first sent (`transmit_delivery`, `handle_pubrec`): a stored QoS 2 PUBLISH or
        // PUBREL goes out only once the state it reflects is on disk, which it may not be yet.
        let hold = self.durable()
            && resend
                .iter()
                .any(|(_, _, d)| d.seq != 0 && d.qos == QoS::ExactlyOnce);
        for (id, state, delivery) in resend {
            match state {
                InflightState::AwaitingAck => self.send_publish(conn, &delivery, Some(id), true),
                InflightState::AwaitingComp => {
                    self.send(conn, &Packet::PubRel(PubRel::success(id)));
                }
            }
        }
        if hold {
            self.hold(conn);
        }
    }

    /// Ack timeout: resends what has waited longer than `interval` (3.x clients only).
    fn retry_inflight(&mut self, conn: ConnId, interval: Duration) {
        let Some(key) = self.session_of(conn) else {
            return;
        };
        let now = self.now;
        self.resend_inflight(key, conn, |f| f.sent_at + interval <= now);
    }

    // ---- internals: subscriptions -------------------------------------------------------

    fn handle_subscribe(&mut self, conn: ConnId, subscribe: Subscribe) {
        let Some(key) = self.session_of(conn) else {
            return;
        };
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        // 3.1.1 [MQTT-3.8.4-4]: each filter is handled as if in its own SUBSCRIBE.
        for (filter, options) in subscribe.filters {
            let Some(session) = self.sessions.get_mut(key.0) else {
                return;
            };
            let replaces = session.subscriptions.contains_key(&filter);
            if !replaces && session.subscriptions.len() >= self.config.max_subscriptions_per_client
            {
                // Over the limit: this filter fails, the others are still handled.
                reasons.push(SubAckReason::QuotaExceeded);
                continue;
            }
            // 3.1.1 [MQTT-3.8.4-3]: an identical filter replaces the subscription.
            session.subscriptions.insert(filter.clone(), options);
            // The broker supports every QoS: granted = requested ([MQTT-3.8.4-5]).
            let granted = options.qos;
            self.router.subscribe(key, &filter, options);
            // 3.1.1 [MQTT-3.3.1-6] [MQTT-3.8.4-3]: matching retained messages are sent, also
            // when the subscription replaced an existing one. Not for shared subscriptions.
            if !filter.is_shared() {
                for message in self.router.retained_matching(&filter) {
                    retained.push(Delivery {
                        message: Arc::clone(message),
                        qos: message.qos.min(granted),
                        // 3.1.1 [MQTT-3.3.1-8]
                        retain: true,
                        seq: 0,
                    });
                }
            }
            reasons.push(match granted {
                QoS::AtMostOnce => SubAckReason::GrantedQoS0,
                QoS::AtLeastOnce => SubAckReason::GrantedQoS1,
                QoS::ExactlyOnce => SubAckReason::GrantedQoS2,
            });
        }
        self.store_session(key);
        // 3.1.1 [MQTT-3.8.4-1] [MQTT-3.8.4-2] [MQTT-3.9.3-1]: one SUBACK, codes in order
        // (once the subscriptions are committed, in durable mode).
        self.send_ack(
            conn,
            Packet::SubAck(SubAck {
                packet_id: subscribe.packet_id,
                properties: Properties::new(),
                reasons,
            }),
        );
        for delivery in retained {
            self.deliver(key, delivery);
        }
    }

    fn handle_unsubscribe(&mut self, conn: ConnId, unsubscribe: Unsubscribe) {
        let Some(key) = self.session_of(conn) else {
            return;
        };
        // 3.1.1 [MQTT-3.10.4-1] [MQTT-3.10.4-6]: exact, character-by-character matches only;
        // messages already queued or in flight are still delivered ([MQTT-3.10.4-3]).
        for filter in &unsubscribe.filters {
            self.router.unsubscribe(key, filter);
            if let Some(session) = self.sessions.get_mut(key.0) {
                session.subscriptions.remove(filter);
            }
        }
        self.store_session(key);
        // 3.1.1 [MQTT-3.10.4-4] [MQTT-3.10.4-5]: always answered, same identifier.
        self.send_ack(
            conn,
            Packet::UnsubAck(UnsubAck {
                packet_id: unsubscribe.packet_id,
                properties: Properties::new(),
                reasons: Vec::new(),
            }),
        );
    }

    // ---- internals: $SYS ----------------------------------------------------------------

    fn publish_sys(&mut self) {
        let uptime = self.now.saturating_since(self.started_at);
        self.stats.tick(uptime);
        let topics = self.stats.topics(
            self.config.version,
            uptime,
            self.router.trie.len(),
            self.router.retained.len(),
        );
        for (topic, value) in topics {
            let id = self.new_message_id();
            let message = Arc::new(Message {
                id,
                topic,
                payload: Bytes::from(value.into_bytes()),
                qos: QoS::AtMostOnce,
                properties: Properties::new(),
            });
            // Mosquitto publishes $SYS retained, so a new subscriber sees the latest values.
            self.route(&message, true);
        }
    }
}

fn session_persistent(sessions: &Slab<Session>, key: SessionKey) -> bool {
    sessions.get(key.0).is_some_and(|s| s.persistent)
}
