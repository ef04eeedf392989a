//! A deterministic test harness over the sans-IO [`Broker`]: virtual time, in-memory
//! connections, and client-side decoding of whatever the broker transmits.
//!
//! ```
//! use std::time::Duration;
//! use surgemq_core::broker::BrokerConfig;
//! use surgemq_core::codec::{ProtocolVersion, QoS};
//! use surgemq_tests::harness::{TestBroker, publish, subscribe};
//!
//! let mut tb = TestBroker::new(BrokerConfig::default());
//! let sub = tb.connect("sub", true, ProtocolVersion::V3_1_1);
//! tb.send(sub, &subscribe(1, &[("a/#", QoS::AtMostOnce)]));
//! let publisher = tb.connect("pub", true, ProtocolVersion::V3_1_1);
//! tb.send(publisher, &publish("a/b", b"hi", QoS::AtMostOnce, None, false));
//! tb.advance(Duration::from_secs(1));
//! assert_eq!(tb.recv(sub).len(), 2); // SUBACK, PUBLISH
//! ```
//!
//! What it does for the test:
//! - drains [`Broker::poll_output`] after every input, so outputs never pile up;
//! - answers every `Transmit` with `Flushed` for all of its bytes (an infinitely fast socket),
//!   unless a connection is made a slow reader with [`TestBroker::set_auto_flush`];
//! - keeps each connection's received bytes and decodes them, in the connection's protocol
//!   version, only when the test calls [`TestBroker::recv`];
//! - remembers `Close`s, events and authentication requests;
//! - applies `Store` operations to a [`MemoryStore`] (the "disk") and answers `StoreDone` at
//!   once, unless told to hold commits ([`TestBroker::set_auto_commit`]); a crash
//!   ([`TestBroker::crash_and_restore`]) starts a new broker from what was committed;
//! - moves time only when told ([`TestBroker::advance`]), feeding `Timeout` at every instant
//!   [`Broker::poll_timeout`] asks for on the way.
//!
//! Misuse of the broker's API (a [`UsageError`](surgemq_core::broker::UsageError)) and bytes from
//! the broker that do not decode are bugs, so the harness panics on them. It never reads a clock.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use surgemq_core::broker::{
    AuthRequest, AuthVerdict, Broker, BrokerConfig, ConnId, Event, Input, Output, RestoreReport,
    StoreFailure,
};
use surgemq_core::codec::{
    ConnAck, Connect, ConnectReason, Decoded, Disconnect, MAX_PACKET_SIZE, Packet, PacketId,
    Properties, ProtocolVersion, PubAck, PubRel, Publish, QoS, Subscribe, SubscriptionOptions,
    Unsubscribe, decode, decode_buf,
};
use surgemq_core::store::{MemoryStore, StoreOp};
use surgemq_core::string::MqttString;
use surgemq_core::time::Instant;
use surgemq_core::topic::{TopicFilter, TopicName};

/// A connection that completed CONNECT (CONNACK with return code 0 received).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConn {
    /// The broker's identifier for the connection.
    pub id: ConnId,
    /// The Session Present flag of its CONNACK.
    pub session_present: bool,
}

impl From<ClientConn> for ConnId {
    fn from(client: ClientConn) -> Self {
        client.id
    }
}

impl From<&ClientConn> for ConnId {
    fn from(client: &ClientConn) -> Self {
        client.id
    }
}

/// The client end of one connection, as the harness sees it.
#[derive(Debug)]
struct Peer {
    /// Version used to decode what the broker sends (from the CONNECT the client sent).
    version: ProtocolVersion,
    /// Bytes transmitted by the broker and not yet decoded by `recv`.
    inbox: BytesMut,
    /// The broker closed the connection, or the test closed the socket.
    closed: bool,
    /// Report every Transmit as flushed right away.
    auto_flush: bool,
    /// Bytes transmitted and not yet reported flushed (only with `auto_flush` off).
    unflushed: usize,
}

/// One [`Broker`] in virtual time, with in-memory connections. See the [module docs](self).
#[derive(Debug)]
pub struct TestBroker {
    broker: Broker,
    now: Instant,
    peers: BTreeMap<ConnId, Peer>,
    events: Vec<Event>,
    auth_requests: Vec<AuthRequest>,
    /// What the store committed (the "disk").
    store: MemoryStore,
    /// Store operations emitted and not yet committed.
    uncommitted: Vec<(u64, StoreOp)>,
    /// The last sequence number of each atomic group in `uncommitted`, oldest first.
    group_ends: Vec<u64>,
    auto_commit: bool,
}

impl TestBroker {
    /// A broker with `config`, started at virtual time zero.
    pub fn new(config: BrokerConfig) -> Self {
        let now = Instant::ZERO;
        Self {
            broker: Broker::new(config, now),
            now,
            peers: BTreeMap::new(),
            events: Vec::new(),
            auth_requests: Vec::new(),
            store: MemoryStore::new(),
            uncommitted: Vec::new(),
            group_ends: Vec::new(),
            auto_commit: true,
        }
    }

    // ---- the store ------------------------------------------------------------------------

    /// With `false`, `Store` operations wait for [`commit_store`](Self::commit_store) or
    /// [`fail_store`](Self::fail_store) (a slow or failing disk); with `true` (the default)
    /// each input's operations are committed right after it.
    pub fn set_auto_commit(&mut self, on: bool) {
        self.auto_commit = on;
        if on {
            self.commit_store();
        }
    }

    /// Commits every operation emitted so far, as one transaction, and reports it.
    pub fn commit_store(&mut self) {
        if let Some(&(last, _)) = self.uncommitted.last() {
            self.commit_store_through(last);
        }
    }

    /// The store fails the operations emitted so far (they are not applied).
    pub fn fail_store(&mut self, error: &str) {
        if let Some(&(last, _)) = self.uncommitted.last() {
            self.fail_store_through(last, error);
        }
    }

    /// The last sequence number of each atomic group of uncommitted operations (what the
    /// broker emitted in answer to one input, or to several), oldest first: where a commit or
    /// a failure may end, since a group is never split.
    pub fn uncommitted_groups(&self) -> &[u64] {
        &self.group_ends
    }

    /// Commits the uncommitted operations up to `seq`, the end of a group (see
    /// [`uncommitted_groups`](Self::uncommitted_groups)), as one transaction, and reports it;
    /// the later ones stay uncommitted (a store committing one batch while the next waits).
    pub fn commit_store_through(&mut self, seq: u64) {
        let ops = self.take_uncommitted_through(seq);
        for (_, op) in &ops {
            self.store.apply(op);
        }
        self.input(Input::StoreDone {
            seq,
            result: Ok(()),
        });
    }

    /// The store fails the uncommitted operations up to `seq`, the end of a group (they are not
    /// applied); the later ones stay uncommitted, and may still be committed or failed (a store
    /// that fails one batch and goes on with the next).
    pub fn fail_store_through(&mut self, seq: u64, error: &str) {
        self.take_uncommitted_through(seq);
        self.input(Input::StoreDone {
            seq,
            result: Err(StoreFailure(error.to_owned())),
        });
    }

    fn take_uncommitted_through(&mut self, seq: u64) -> Vec<(u64, StoreOp)> {
        assert!(
            self.group_ends.contains(&seq),
            "{seq} does not end a group of uncommitted operations ({:?})",
            self.group_ends
        );
        self.group_ends.retain(|&end| end > seq);
        let keep = self.uncommitted.split_off(
            self.uncommitted
                .iter()
                .position(|&(s, _)| s > seq)
                .unwrap_or(self.uncommitted.len()),
        );
        std::mem::replace(&mut self.uncommitted, keep)
    }

    /// What the store holds (committed operations only).
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// Store operations emitted and not committed.
    pub fn uncommitted(&self) -> &[(u64, StoreOp)] {
        &self.uncommitted
    }

    /// The broker process dies (uncommitted operations are lost, every connection drops) and
    /// a new one starts from the store, with the same configuration, at the same virtual time.
    pub fn crash_and_restore(&mut self) -> RestoreReport {
        let config = self.broker.config().clone();
        self.uncommitted.clear();
        self.group_ends.clear();
        for peer in self.peers.values_mut() {
            peer.closed = true;
        }
        self.broker = Broker::new(config, self.now);
        let report = self.broker.restore(self.store.snapshot());
        self.pump();
        if self.auto_commit {
            self.commit_store();
        }
        report
    }

    /// A broker with `config` started from `store` (as after a restart), at virtual time zero.
    /// The operations [`Broker::restore`] emits stay in [`uncommitted`](Self::uncommitted),
    /// for the test to look at, until [`commit_store`](Self::commit_store) or the next input.
    pub fn from_store(config: BrokerConfig, store: MemoryStore) -> (Self, RestoreReport) {
        let mut tb = Self::new(config);
        tb.store = store;
        let report = tb.broker.restore(tb.store.snapshot());
        tb.pump();
        (tb, report)
    }

    /// The broker, for its getters (`queued_messages`, `retained_count`, ...).
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    // ---- connections ----------------------------------------------------------------------

    /// Opens a connection with no peer address (counts as local); sends nothing.
    pub fn open(&mut self) -> ConnId {
        self.open_with_peer(None)
    }

    /// Opens a connection from `peer`; sends nothing.
    pub fn open_from(&mut self, peer: SocketAddr) -> ConnId {
        self.open_with_peer(Some(peer))
    }

    fn open_with_peer(&mut self, peer: Option<SocketAddr>) -> ConnId {
        let conn = self.broker.open_connection(self.now, peer);
        self.peers.insert(
            conn,
            Peer {
                version: ProtocolVersion::V3_1_1,
                inbox: BytesMut::new(),
                closed: false,
                auto_flush: true,
                unflushed: 0,
            },
        );
        self.pump();
        conn
    }

    /// Opens a connection, sends a CONNECT (keep alive off, no Will, no credentials) and returns
    /// once CONNACK 0 arrived. Panics if the broker answers anything else.
    pub fn connect(
        &mut self,
        client_id: &str,
        clean: bool,
        version: ProtocolVersion,
    ) -> ClientConn {
        self.connect_with(connect_packet(client_id, clean, version))
    }

    /// Like [`connect`](Self::connect) with a CONNECT of the test's making (Will, keep alive...).
    pub fn connect_with(&mut self, connect: Connect) -> ClientConn {
        let (id, connack) = self.try_connect(connect);
        match connack {
            Some(ack) if ack.reason == ConnectReason::Success => ClientConn {
                id,
                session_present: ack.session_present,
            },
            other => panic!("CONNECT not accepted: {other:?}"),
        }
    }

    /// Opens a connection, sends `connect` and returns the connection with the first packet
    /// received if it is a CONNACK (`None` if nothing or something else came back). Packets
    /// after the CONNACK stay for [`recv`](Self::recv).
    pub fn try_connect(&mut self, connect: Connect) -> (ConnId, Option<ConnAck>) {
        let conn = self.open();
        self.send(conn, &Packet::Connect(Box::new(connect)));
        let connack = match self.recv_one(conn) {
            Some(Packet::ConnAck(ack)) => Some(ack),
            _ => None,
        };
        (conn, connack)
    }

    // ---- client to broker -----------------------------------------------------------------

    /// Encodes `packet` in the connection's version (a CONNECT in its own, which then becomes
    /// the connection's) and delivers it to the broker in one piece.
    pub fn send(&mut self, conn: impl Into<ConnId>, packet: &Packet) {
        let conn = conn.into();
        let version = self.peer(conn).version;
        if let Packet::Connect(connect) = packet {
            self.peer_mut(conn).version = connect.protocol;
        }
        let mut out = BytesMut::new();
        packet
            .encode(version, &mut out)
            .unwrap_or_else(|e| panic!("test packet does not encode: {e:?}"));
        self.feed(conn, out.freeze());
    }

    /// Delivers raw bytes to the broker as they are. If they start with a CONNECT the codec
    /// understands, its version becomes the connection's, as with [`send`](Self::send).
    pub fn send_raw(&mut self, conn: impl Into<ConnId>, bytes: &[u8]) {
        let conn = conn.into();
        let data = Bytes::copy_from_slice(bytes);
        if let Ok(Decoded::Packet {
            packet: Packet::Connect(connect),
            ..
        }) = decode(&data, ProtocolVersion::V3_1_1, MAX_PACKET_SIZE)
        {
            self.peer_mut(conn).version = connect.protocol;
        }
        self.feed(conn, data);
    }

    /// The socket closed under the connection (peer gone, reset): [`Input::Closed`].
    pub fn close_socket(&mut self, conn: impl Into<ConnId>) {
        let conn = conn.into();
        self.peer_mut(conn).closed = true;
        self.input(Input::Closed { conn });
    }

    /// Answers an [`Output::Authenticate`] ([`Input::AuthDone`]).
    pub fn auth_done(&mut self, conn: impl Into<ConnId>, verdict: AuthVerdict) {
        let conn = conn.into();
        self.input(Input::AuthDone { conn, verdict });
    }

    fn feed(&mut self, conn: ConnId, data: Bytes) {
        self.input(Input::Received { conn, data });
    }

    // ---- broker to client -----------------------------------------------------------------

    /// Every complete packet the broker sent to the connection since the last call, in order.
    pub fn recv(&mut self, conn: impl Into<ConnId>) -> Vec<Packet> {
        let conn = conn.into();
        self.pump();
        let peer = self.peer_mut(conn);
        let mut packets = Vec::new();
        loop {
            match decode_buf(&mut peer.inbox, peer.version, MAX_PACKET_SIZE) {
                Ok(Some(packet)) => packets.push(packet),
                Ok(None) => return packets,
                Err(e) => panic!("the broker sent bytes that do not decode: {e:?}"),
            }
        }
    }

    /// The PUBLISH packets among what [`recv`](Self::recv) returns (the rest is dropped).
    pub fn recv_publishes(&mut self, conn: impl Into<ConnId>) -> Vec<Publish> {
        self.recv(conn)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(publish) => Some(publish),
                _ => None,
            })
            .collect()
    }

    /// The bytes the broker sent to the connection and `recv` has not decoded yet, undecoded
    /// (for tests of exact wire bytes). Consumes them.
    pub fn recv_raw(&mut self, conn: impl Into<ConnId>) -> Vec<u8> {
        let conn = conn.into();
        self.pump();
        self.peer_mut(conn).inbox.split().to_vec()
    }

    fn recv_one(&mut self, conn: ConnId) -> Option<Packet> {
        self.pump();
        let peer = self.peer_mut(conn);
        decode_buf(&mut peer.inbox, peer.version, MAX_PACKET_SIZE)
            .unwrap_or_else(|e| panic!("the broker sent bytes that do not decode: {e:?}"))
    }

    /// Whether the broker closed the connection (or the test closed its socket).
    pub fn is_closed(&mut self, conn: impl Into<ConnId>) -> bool {
        let conn = conn.into();
        self.pump();
        self.peer(conn).closed
    }

    /// Every event the broker reported so far, oldest first.
    pub fn events(&mut self) -> &[Event] {
        self.pump();
        &self.events
    }

    /// Takes the events reported so far, leaving none.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.pump();
        std::mem::take(&mut self.events)
    }

    /// Takes the authentication requests ([`Output::Authenticate`]) not yet taken.
    pub fn take_auth_requests(&mut self) -> Vec<AuthRequest> {
        self.pump();
        std::mem::take(&mut self.auth_requests)
    }

    // ---- flow control ---------------------------------------------------------------------

    /// Turns automatic `Flushed` reports on or off for one connection. Off models a client that
    /// stops reading: transmitted bytes stay unflushed until [`flush`](Self::flush).
    pub fn set_auto_flush(&mut self, conn: impl Into<ConnId>, on: bool) {
        let conn = conn.into();
        self.peer_mut(conn).auto_flush = on;
        if on {
            self.flush(conn);
        }
    }

    /// Reports every byte transmitted to the connection and not yet flushed as flushed.
    pub fn flush(&mut self, conn: impl Into<ConnId>) {
        let conn = conn.into();
        let peer = self.peer_mut(conn);
        let bytes = std::mem::take(&mut peer.unflushed);
        if bytes > 0 && !peer.closed {
            self.input(Input::Flushed { conn, bytes });
        }
    }

    /// Bytes transmitted to the connection and not yet reported flushed.
    pub fn unflushed(&self, conn: impl Into<ConnId>) -> usize {
        self.peer(conn.into()).unflushed
    }

    // ---- time -----------------------------------------------------------------------------

    /// Moves virtual time forward by `by`, feeding [`Input::Timeout`] at every instant the
    /// broker asked for on the way (in order), then stops at exactly `now + by`.
    pub fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        for _ in 0..1_000_000 {
            self.pump();
            match self.broker.poll_timeout() {
                Some(at) if at <= target => {
                    self.now = self.now.max(at);
                    self.input(Input::Timeout);
                }
                _ => {
                    self.now = target;
                    return;
                }
            }
        }
        panic!("the broker keeps asking for a timeout without making progress");
    }

    // ---- plumbing -------------------------------------------------------------------------

    /// Feeds one input and drains the outputs it caused.
    fn input(&mut self, input: Input) {
        if let Err(e) = self.broker.handle_input(self.now, input) {
            panic!("broker API misuse by the harness: {e:?}");
        }
        self.pump();
        if self.auto_commit && !self.uncommitted.is_empty() {
            self.commit_store();
        }
    }

    /// Drains `poll_output`, reporting `Flushed` for auto-flushed connections, until the broker
    /// has nothing more to say.
    fn pump(&mut self) {
        loop {
            let mut flushed = Vec::new();
            while let Some(output) = self.broker.poll_output() {
                match output {
                    Output::Transmit { conn, data } => {
                        let peer = self.peer_mut(conn);
                        assert!(!peer.closed, "Transmit after Close on {conn:?}");
                        peer.inbox.extend_from_slice(&data);
                        if peer.auto_flush {
                            flushed.push((conn, data.len()));
                        } else {
                            peer.unflushed += data.len();
                        }
                    }
                    Output::Close { conn } => self.peer_mut(conn).closed = true,
                    Output::Authenticate(request) => self.auth_requests.push(request),
                    Output::Event(event) => self.events.push(event),
                    Output::Store { seq, op } => {
                        if let Some(&(last, _)) = self.uncommitted.last() {
                            assert_eq!(seq, last + 1, "store sequence numbers must increase by 1");
                        }
                        self.uncommitted.push((seq, op));
                    }
                }
            }
            if flushed.is_empty() {
                break;
            }
            for (conn, bytes) in flushed {
                if let Err(e) = self
                    .broker
                    .handle_input(self.now, Input::Flushed { conn, bytes })
                {
                    panic!("broker API misuse by the harness: {e:?}");
                }
            }
        }
        // Everything one input caused has been drained: a group ends here.
        if let Some(&(last, _)) = self.uncommitted.last()
            && self.group_ends.last() != Some(&last)
        {
            self.group_ends.push(last);
        }
    }

    fn peer(&self, conn: ConnId) -> &Peer {
        self.peers
            .get(&conn)
            .unwrap_or_else(|| panic!("{conn:?} was not opened by this harness"))
    }

    fn peer_mut(&mut self, conn: ConnId) -> &mut Peer {
        self.peers
            .get_mut(&conn)
            .unwrap_or_else(|| panic!("{conn:?} was not opened by this harness"))
    }
}

// ---- packet builders ----------------------------------------------------------------------

/// A packet identifier from a non-zero literal.
pub fn pid(id: u16) -> PacketId {
    PacketId::new(id).unwrap_or_else(|| panic!("packet identifier 0"))
}

/// A CONNECT: keep alive off, no Will, no credentials.
pub fn connect_packet(client_id: &str, clean: bool, version: ProtocolVersion) -> Connect {
    Connect {
        protocol: version,
        clean_start: clean,
        keep_alive: 0,
        properties: Properties::new(),
        client_id: MqttString::new(client_id).unwrap_or_else(|e| panic!("client id: {e:?}")),
        will: None,
        username: None,
        password: None,
    }
}

/// A topic name from a literal.
pub fn topic(name: &str) -> TopicName {
    TopicName::parse(name).unwrap_or_else(|e| panic!("topic {name:?}: {e:?}"))
}

/// A topic filter from a literal.
pub fn filter(f: &str) -> TopicFilter {
    TopicFilter::parse(f).unwrap_or_else(|e| panic!("filter {f:?}: {e:?}"))
}

/// A PUBLISH (DUP 0). `packet_id` must be given exactly when `qos` is 1 or 2.
pub fn publish(
    topic_name: &str,
    payload: &[u8],
    qos: QoS,
    packet_id: Option<u16>,
    retain: bool,
) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic(topic_name),
        packet_id: packet_id.map(pid),
        properties: Properties::new(),
        payload: Bytes::copy_from_slice(payload),
    })
}

/// A SUBSCRIBE with one (filter, maximum QoS) per entry.
pub fn subscribe(packet_id: u16, filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid(packet_id),
        properties: Properties::new(),
        filters: filters
            .iter()
            .map(|&(f, qos)| (filter(f), SubscriptionOptions::qos(qos)))
            .collect(),
    })
}

/// An UNSUBSCRIBE of the given filters.
pub fn unsubscribe(packet_id: u16, filters: &[&str]) -> Packet {
    Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(packet_id),
        properties: Properties::new(),
        filters: filters.iter().map(|f| filter(f)).collect(),
    })
}

/// PUBACK for `packet_id`.
pub fn puback(packet_id: u16) -> Packet {
    Packet::PubAck(PubAck::success(pid(packet_id)))
}

/// PUBREC for `packet_id`.
pub fn pubrec(packet_id: u16) -> Packet {
    Packet::PubRec(PubAck::success(pid(packet_id)))
}

/// PUBREL for `packet_id`.
pub fn pubrel(packet_id: u16) -> Packet {
    Packet::PubRel(PubRel::success(pid(packet_id)))
}

/// PUBCOMP for `packet_id`.
pub fn pubcomp(packet_id: u16) -> Packet {
    Packet::PubComp(PubRel::success(pid(packet_id)))
}

/// A normal DISCONNECT.
pub fn disconnect() -> Packet {
    Packet::Disconnect(Disconnect::normal())
}
