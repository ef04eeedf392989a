//! The broker state machine: MQTT 3.1 and 3.1.1 for any number of connections, with no I/O.
//!
//! ```text
//! Broker::new(config, now)
//! Broker::open_connection(now, peer) -> ConnId
//! Broker::handle_input(now, Input)   // Received | Flushed | Closed | Timeout | AuthDone
//! Broker::poll_output() -> Option<Output>   // Transmit | Close | Authenticate | Event
//! Broker::poll_timeout() -> Option<Instant> // next wake-up
//! ```
//!
//! Methods come in four kinds: getters, `handle_*` inputs, `open_connection` (a command), and
//! `poll_*` outputs. Drain `poll_output` until `None` before waiting for more input; feeding
//! several inputs first is allowed and batches writes better. Every `Transmit` must be followed,
//! eventually, by `Flushed` for the bytes the socket took: that is how the broker knows a
//! subscriber is slow and stops writing to it (see [`BrokerConfig::max_unflushed_bytes`]).
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

pub use config::{AuthMode, BrokerConfig, OverflowPolicy};
pub use io::{
    AuthRequest, AuthVerdict, Authenticator, ConnId, DisconnectCause, Event, Input, Output,
    ProtocolViolation,
};

use crate::codec::{
    ConnAck, Connect, ConnectReason, DecodeError, Packet, PacketId, Properties, ProtocolVersion,
    PubAck, PubRel, Publish, PublishView, QoS, SubAck, SubAckReason, Subscribe, UnsubAck,
    Unsubscribe, decode_buf,
};
use crate::string::MqttString;
use crate::time::Instant;
use connection::{Connection, Phase};
use router::Router;
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

    // ---- commands -----------------------------------------------------------------------

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

    /// Takes a connection's pending batch, counting it as unflushed.
    fn take_batch(&mut self, conn: ConnId) -> Option<Bytes> {
        let c = self.conns.get_mut(conn.0)?;
        c.dirty = false;
        if c.out.is_empty() {
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
            let message = Arc::new(Message {
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
        if !session.persistent {
            self.discard_session(key);
        }
    }

    fn discard_session(&mut self, key: SessionKey) {
        let Some(session) = self.sessions.remove(key.0) else {
            return;
        };
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
                // 3.1.1 [MQTT-3.2.2-1] [MQTT-3.2.2-3]
                (key, false)
            }
        };
        if let Some(session) = self.sessions.get_mut(key.0) {
            session.conn = Some(conn);
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
        let message = || {
            Arc::new(Message {
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
                self.send(conn, &Packet::PubAck(PubAck::success(id)));
            }
            (QoS::ExactlyOnce, Some(id)) => {
                let Some(session) = self.sessions.get_mut(key.0) else {
                    return;
                };
                // 3.1.1 [MQTT-4.3.3-2]: a repeated PUBLISH before PUBREL is acknowledged
                // again but not delivered again.
                if session.awaiting_release.insert(id) && !forbidden {
                    self.route(&message(), retain);
                }
                self.send(conn, &Packet::PubRec(PubAck::success(id)));
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
        }
        // 3.1.1 [MQTT-4.3.3-2]: PUBCOMP with the same identifier.
        self.send(conn, &Packet::PubComp(PubRel::success(id)));
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
            if is_qos1 {
                session.inflight.remove(at);
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
        if let Some(f) = session.inflight.iter_mut().find(|f| f.id == id)
            && f.delivery.qos == QoS::ExactlyOnce
        {
            // The message is now the receiver's; only the identifier stays in flight.
            f.state = InflightState::AwaitingComp;
            f.sent_at = self.now;
        }
        // 3.1.1 [MQTT-4.3.3-1]: answer PUBREC with PUBREL.
        self.send(conn, &Packet::PubRel(PubRel::success(id)));
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
            if done {
                session.inflight.remove(at);
                self.drain_queue(key);
            }
        }
    }

    /// Delivers a message to every matching session; stores it first if retained.
    fn route(&mut self, message: &Arc<Message>, retain: bool) {
        if retain {
            self.router
                .retain(message, self.config.max_retained_messages);
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
                },
            );
        }
        self.route_buf = targets;
    }

    /// Sends a message to a session now if its connection and window allow, else queues it
    /// (offline QoS 0 only if configured).
    fn deliver(&mut self, key: SessionKey, delivery: Delivery) {
        let Some(session) = self.sessions.get_mut(key.0) else {
            return;
        };
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
        let outcome = session.enqueue(
            delivery,
            self.config.max_queued_messages,
            self.config.max_queued_bytes,
            self.config.overflow_policy == OverflowPolicy::DropOldestQoS0First,
        );
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
            Some(id)
        };
        self.send_publish(conn, &delivery, packet_id, false);
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

    /// Moves queued messages to the connection while the window and the socket have room.
    fn drain_queue(&mut self, key: SessionKey) {
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
        for (id, state, delivery) in resend {
            match state {
                InflightState::AwaitingAck => self.send_publish(conn, &delivery, Some(id), true),
                InflightState::AwaitingComp => {
                    self.send(conn, &Packet::PubRel(PubRel::success(id)));
                }
            }
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
                    });
                }
            }
            reasons.push(match granted {
                QoS::AtMostOnce => SubAckReason::GrantedQoS0,
                QoS::AtLeastOnce => SubAckReason::GrantedQoS1,
                QoS::ExactlyOnce => SubAckReason::GrantedQoS2,
            });
        }
        // 3.1.1 [MQTT-3.8.4-1] [MQTT-3.8.4-2] [MQTT-3.9.3-1]: one SUBACK, codes in order.
        self.send(
            conn,
            &Packet::SubAck(SubAck {
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
        // 3.1.1 [MQTT-3.10.4-4] [MQTT-3.10.4-5]: always answered, same identifier.
        self.send(
            conn,
            &Packet::UnsubAck(UnsubAck {
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
            let message = Arc::new(Message {
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
