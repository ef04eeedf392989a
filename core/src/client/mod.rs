//! The MQTT client state machine (3.1, 3.1.1 and 5.0 on the wire), with no I/O.
//!
//! ```text
//! Client::new(config, now)?                    // asks for a transport at once
//! Client::handle_input(now, ClientInput)       // TransportUp | Received | TransportDown | Timeout
//! Client::publish / subscribe / unsubscribe / disconnect / ack   (commands → Token)
//! Client::poll_output() -> Option<ClientOutput> // OpenTransport | Transmit | CloseTransport
//!                                              // | Store | Event
//! Client::poll_timeout() -> Option<Instant>
//! Client::restore(snapshot)                    // after a restart, before the first input
//! ```
//!
//! Commands return a [`Token`]; their completion is an [`ClientEvent`]: a QoS 1 publish on
//! PUBACK, a QoS 2 publish on PUBCOMP (a QoS 0 publish once handed to the transport), a
//! subscribe on SUBACK, an unsubscribe on UNSUBACK. Commands made while disconnected wait in a
//! bounded queue and go out after the next CONNACK; a full queue is an error the caller sees
//! ([`ClientError::QueueFull`]) — never unbounded memory, and never a deadlock: receiving
//! never waits for sending room.
//!
//! On reconnect the session is resumed: unacknowledged PUBLISH packets are resent with DUP
//! and PUBREL packets for QoS 2 exchanges in progress, in their original order
//! (3.1.1 [MQTT-4.4.0-1]); when the server has no session (Session Present 0) the client's
//! subscriptions are made again.
//!
//! # Persistence
//!
//! With [`ClientConfig::persistence`] on and a persistent session (`clean_start` false), the
//! client's session state is emitted as [`ClientOutput::Store`] operations, the same records
//! the broker keeps for a session ([`crate::store`]): the session record holds the client's
//! subscriptions, each QoS 1/2 publish not yet complete is a message and a delivery (queued,
//! awaiting PUBACK / PUBREC, or awaiting PUBCOMP, with its packet identifier), and each QoS 2
//! identifier received and acknowledged with PUBREC but not yet released is a release
//! identifier. The adapter applies them in order and answers [`ClientInput::StoreDone`]; after a
//! restart, [`Client::restore`] reads them back and the session resumes where the store left
//! it: publishes complete (with new tokens), in-flight ones are resent with DUP, and a QoS 2
//! message received before the restart is not delivered twice.
//!
//! In [`Persistence::Durable`] mode nothing reaches the wire before what was stored ahead of it
//! is committed: a PUBLISH goes out once its delivery is on disk, a PUBREL once the PUBREC is,
//! a PUBREC once the received identifier is, a PUBCOMP once its release is; message events and
//! completions (`Published`, `Subscribed`, `Unsubscribed`) wait the same way. So a crash at
//! any moment loses no publish whose store operation was committed, never makes a QoS 2
//! message arrive twice, and never reports a command complete that the restored session does
//! not know is. [`Persistence::Periodic`] emits the same operations without waiting.
//! Clean sessions and QoS 0 messages are never stored.
//!
//! With manual acknowledgements a QoS 2 message reaches the application before its identifier
//! is stored: that happens at [`Client::ack`]. A crash between the two makes the server send the
//! message again after the restart (with DUP set), and it is delivered again. (The async clients,
//! which acknowledge for the application, acknowledge first and hand the message over once
//! [`Client::store_mark`] after the acknowledgement is committed.)
//!
//! Never: read a clock, touch a socket, panic on server input, or grow without bound.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]

pub mod config;
mod ring;

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};
use core::fmt;
use core::time::Duration;

pub use config::{Backoff, ClientConfig, ConfigError};
use ring::Ring;
pub use ring::{INFLIGHT_CAPACITY, QUEUE_CAPACITY};

pub use crate::broker::{Persistence, StoreFailure};
use crate::codec::{
    ConnAck, Connect, ConnectReason, DecodeError, Disconnect, EncodeError, Packet, PacketId,
    Properties, Property, ProtocolVersion, PubAck, PubAckReason, PubRel, PubRelReason, Publish,
    QoS, SubAck, SubAckReason, Subscribe, SubscriptionOptions, UnsubAck, UnsubAckReason,
    Unsubscribe, decode_buf,
};
use crate::store::{
    DeliveryState, StoreOp, StoreSnapshot, StoredDelivery, StoredMessage, StoredSession,
};
use crate::string::MqttString;
use crate::time::Instant;
use crate::topic::{TopicFilter, TopicName};

/// Identifies a command until its completion event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(u64);

impl Token {
    /// The number behind the token.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// Identifies a received QoS 1/2 message to acknowledge in manual-ack mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckToken {
    id: PacketId,
    qos: QoS,
    /// The session the message arrived in. Acknowledgements stay valid across reconnects
    /// that resume the session (the server resends with the same packet identifier); they
    /// are void once the session is lost, when the identifier may name another message.
    session: u64,
}

/// Something that happened outside the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientInput {
    /// The transport asked for by [`ClientOutput::OpenTransport`] is connected.
    TransportUp,
    /// Bytes arrived from the server.
    Received(Bytes),
    /// The transport is gone (closed, reset, or could not be opened).
    TransportDown,
    /// A time given by [`Client::poll_timeout`] was reached.
    Timeout,
    /// The store committed every [`ClientOutput::Store`] operation up to `seq` (or failed to).
    /// After a failure the store must commit nothing more until the [`StoreOp::Clear`] the
    /// client emits next, which starts a rewrite of its whole state.
    StoreDone {
        /// The sequence number of the last operation the commit covered.
        seq: u64,
        /// The commit's result.
        result: Result<(), StoreFailure>,
    },
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutput {
    /// Open a transport (TCP, TLS, ...) to the server; answer with `TransportUp` or
    /// `TransportDown`.
    OpenTransport,
    /// Write these bytes to the transport.
    Transmit(Bytes),
    /// Close the transport once what was transmitted is written.
    CloseTransport,
    /// Apply this operation to the store, after every earlier one; report commits with
    /// [`ClientInput::StoreDone`]. Operations drained after one input belong together: commit
    /// them in one transaction (possibly with others), never split.
    Store {
        /// Increases by one with every operation.
        seq: u64,
        /// The change.
        op: StoreOp,
    },
    /// Something happened.
    Event(ClientEvent),
}

/// A received application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    /// The PUBLISH as received (DUP, QoS, RETAIN, topic, 5.0 properties, payload).
    pub publish: Publish,
    /// In manual-ack mode, what to pass to [`Client::ack`] (QoS 1 and 2 only).
    pub ack: Option<AckToken>,
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// CONNACK 0 received.
    Connected {
        /// Whether the server resumed a stored session.
        session_present: bool,
        /// 5.0 CONNACK properties.
        properties: Properties,
    },
    /// The server refused the connection.
    Refused {
        /// The CONNACK reason (3.x return codes mapped).
        reason: ConnectReason,
    },
    /// The transport went down (a reconnect follows if configured).
    Disconnected,
    /// An application message arrived.
    Message(Box<IncomingMessage>),
    /// A publish completed (QoS 0: handed to the transport; 1: PUBACK; 2: PUBCOMP).
    Published {
        /// The publish command.
        token: Token,
        /// 5.0 reason from PUBACK / PUBREC (Success for 3.x).
        reason: PubAckReason,
    },
    /// A subscribe completed.
    Subscribed {
        /// The subscribe command.
        token: Token,
        /// Granted QoS or failure per filter, in order.
        reasons: Vec<SubAckReason>,
    },
    /// A command was dropped unsent: the server it was about to go to cannot take it (5.0
    /// CONNACK limits: Maximum QoS, Retain Available, Maximum Packet Size). Its records are
    /// deleted from the store, and it is not tried again.
    Failed {
        /// The command.
        token: Token,
        /// Why.
        error: ClientError,
    },
    /// An unsubscribe completed.
    Unsubscribed {
        /// The unsubscribe command.
        token: Token,
        /// 5.0 result per filter (empty for 3.x).
        reasons: Vec<UnsubAckReason>,
    },
    /// The server broke the protocol; the connection was closed.
    ProtocolError(ClientProtocolError),
    /// A store commit failed. In durable mode the connection was closed (what waited for the
    /// commit was never sent, and is resent on the next one); the client then rewrites its
    /// whole state to the store ([`StoreOp::Clear`] and puts).
    StoreFailed(StoreFailure),
}

/// A server-side protocol error seen by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientProtocolError {
    /// The bytes were not a valid packet.
    Malformed(DecodeError),
    /// A packet a server may not send, or one out of place (e.g. before CONNACK).
    UnexpectedPacket,
    /// Session Present 1 for a client that asked for a clean start (5.0 [MQTT-3.2.2-4]).
    UnexpectedSessionPresent,
    /// No CONNACK within the connect timeout.
    ConnectTimeout,
    /// No PINGRESP within the keep alive.
    PingTimeout,
    /// A DISCONNECT from the server (5.0).
    ServerDisconnect(crate::codec::DisconnectReason),
    /// A PUBLISH with a Topic Alias above the Topic Alias Maximum we sent in CONNECT (none sent
    /// means 0), or an empty topic with an alias this connection never mapped (5.0).
    TopicAlias(u16),
}

/// Why a command was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// The outgoing queue is full: wait for completions and try again.
    QueueFull,
    /// [`Client::disconnect`] was called; no more commands.
    Stopped,
    /// The packet cannot be encoded (e.g. too large, or an empty filter list).
    Encode(EncodeError),
    /// The acknowledgement is for a message of a session that no longer exists.
    StaleAck,
    /// The connected server's Maximum QoS (5.0 CONNACK) is below the publish's QoS
    /// (5.0 [MQTT-3.2.2-11]).
    QosNotSupported(QoS),
    /// The connected server does not keep retained messages (5.0 CONNACK Retain Available 0,
    /// [MQTT-3.2.2-14]).
    RetainNotSupported,
    /// The packet is larger than the connected server's Maximum Packet Size (5.0
    /// [MQTT-3.2.2-15]).
    PacketTooLarge {
        /// The packet's size in bytes.
        size: usize,
        /// The server's maximum.
        max: u32,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::QueueFull => f.write_str("outgoing queue full"),
            Self::Stopped => f.write_str("client stopped"),
            Self::Encode(e) => write!(f, "cannot encode: {e}"),
            Self::StaleAck => f.write_str("acknowledgement for a lost session"),
            Self::QosNotSupported(max) => {
                write!(f, "the server accepts QoS {} at most", *max as u8)
            }
            Self::RetainNotSupported => f.write_str("the server does not keep retained messages"),
            Self::PacketTooLarge { size, max } => write!(
                f,
                "packet of {size} bytes exceeds the server's maximum of {max} bytes"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ClientError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No transport; `reconnect_at` says when to ask for one.
    Down,
    /// OpenTransport emitted; waiting for TransportUp.
    Opening,
    /// CONNECT sent; waiting for CONNACK.
    Connecting,
    /// CONNACK 0 received.
    Connected,
    /// `disconnect()` called.
    Stopped,
}

/// A command that needs the server's answer.
#[derive(Debug, Clone)]
enum Request {
    Publish(Publish),
    Subscribe(Vec<(TopicFilter, SubscriptionOptions)>, Properties),
    Unsubscribe(Vec<TopicFilter>, Properties),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Sent; waiting for PUBACK / PUBREC / SUBACK / UNSUBACK.
    AwaitingAck,
    /// PUBREL sent; waiting for PUBCOMP.
    AwaitingComp,
}

/// Where a stored publish is in the store: its delivery (whose number orders the resends
/// after a restart) and its message. Both start as the same number; the delivery gets a new,
/// later one when the PUBREC arrives, so that PUBRELs are resent in PUBREC order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    delivery: u64,
    message: u64,
}

#[derive(Debug, Clone)]
struct Pending {
    token: Token,
    id: PacketId,
    request: Request,
    stage: Stage,
    /// The publish's records in the store, when it is stored.
    record: Option<Record>,
    /// Transmitted on the current connection. A resumed session resends a PUBLISH only
    /// within the server's Receive Maximum; the rest wait for room, in order.
    sent: bool,
}

/// What the server accepts, from its CONNACK (5.0; a 3.x server states nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ServerLimits {
    max_qos: QoS,
    retain_available: bool,
    max_packet_size: Option<u32>,
    topic_alias_max: u16,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_qos: QoS::ExactlyOnce,
            retain_available: true,
            max_packet_size: None,
            topic_alias_max: 0,
        }
    }
}

impl ServerLimits {
    fn from_connack(props: &Properties) -> Self {
        Self {
            max_qos: match props.maximum_qos() {
                Some(0) => QoS::AtMostOnce,
                Some(1) => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            },
            retain_available: props.retain_available() != Some(0),
            max_packet_size: props.maximum_packet_size(),
            topic_alias_max: props.topic_alias_maximum().unwrap_or(0),
        }
    }
}

/// A command waiting for the connection or the window.
#[derive(Debug, Clone)]
struct Queued {
    token: Token,
    request: Request,
    /// As [`Pending::record`].
    record: Option<Record>,
}

/// Why [`Client::restore`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestoreError {
    /// The client does not persist (persistence off, or a clean session): it would neither
    /// resume the stored session nor keep it up to date.
    NotPersistent,
    /// The client already received input or commands; restore right after [`Client::new`].
    AlreadyStarted,
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPersistent => {
                f.write_str("the client does not persist (persistence off or a clean session)")
            }
            Self::AlreadyStarted => f.write_str("restore must come before any input or command"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for RestoreError {}

/// What [`Client::restore`] read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientRestore {
    /// The restored publishes, with the tokens their completion will carry: in publish order,
    /// except that one past PUBREC comes where its PUBREC arrived (its PUBREL is resent in
    /// that order, 3.1.1 [MQTT-4.6.0-4]).
    pub publishes: Vec<(Token, TopicName, QoS)>,
    /// Of them, those in flight when the store was last written (resent with DUP).
    pub in_flight: usize,
    /// Subscriptions restored (made again if the server has lost the session).
    pub subscriptions: usize,
    /// QoS 2 identifiers received and not released (a resend of them is not delivered again).
    pub release_ids: usize,
    /// Records of other client identifiers, or deliveries whose message is missing: left
    /// alone.
    pub ignored: usize,
    /// Publishes beyond the fixed capacity of the `heapless` build: left in the store, not
    /// resumed.
    pub over_capacity: usize,
}

impl fmt::Display for ClientRestore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} publishes ({} in flight), {} subscriptions, {} QoS 2 identifiers awaiting release",
            self.publishes.len(),
            self.in_flight,
            self.subscriptions,
            self.release_ids
        )?;
        if self.ignored > 0 {
            write!(f, ", {} records ignored", self.ignored)?;
        }
        if self.over_capacity > 0 {
            write!(
                f,
                ", {} publishes over capacity left in the store",
                self.over_capacity
            )?;
        }
        Ok(())
    }
}

/// The MQTT client state machine. See the [module docs](self).
pub struct Client {
    config: ClientConfig,
    now: Instant,
    phase: Phase,
    /// Increments with every transport; stale reads are ignored by it.
    epoch: u64,
    /// Increments whenever the server's session state is lost; acks carry it.
    session: u64,
    recv: BytesMut,
    out: BytesMut,
    outputs: VecDeque<ClientOutput>,
    next_token: u64,
    next_id: PacketId,
    /// Sent and awaiting the server's answer, in send order.
    inflight: Ring<Pending, INFLIGHT_CAPACITY>,
    /// Waiting for the connection or the window.
    queue: Ring<Queued, QUEUE_CAPACITY>,
    /// Filters subscribed (granted), remade when the server lost the session.
    subscriptions: BTreeMap<TopicFilter, SubscriptionOptions>,
    /// QoS 2 identifiers received whose PUBREL has not arrived, and whether PUBREC was
    /// given (in manual-ack mode, not until the application acknowledges).
    incoming_qos2: BTreeMap<PacketId, bool>,
    /// Subscriptions must be remade but the (fixed-capacity) queue was full.
    resubscribe_pending: bool,
    /// The server's Receive Maximum (5.0), if smaller than ours.
    server_receive_max: Option<u16>,
    /// What the server said it accepts in its last CONNACK (5.0).
    server: ServerLimits,
    /// Topic Aliases the server set on this connection (5.0; never carried over,
    /// [MQTT-3.3.2-7]), at most our Topic Alias Maximum of them.
    aliases: BTreeMap<u16, TopicName>,
    keep_alive: Option<Duration>,
    last_sent: Instant,
    ping_deadline: Option<Instant>,
    connect_deadline: Option<Instant>,
    reconnect_at: Option<Instant>,
    attempts: u32,
    rng: u64,
    /// The session is written to a store (persistence on, persistent session).
    persist: bool,
    /// Durable mode: the wire waits for commits.
    durable: bool,
    /// The store's key for this client (the configured identifier).
    store_key: MqttString,
    /// The last `Store` output's sequence number, and the last reported committed.
    store_seq: u64,
    committed: u64,
    /// The `Clear` of the rewrite under way after a failure (failures before it are old news).
    rewrite_from: u64,
    /// Durable mode: outputs for the wire waiting for the commit of their sequence number, in
    /// order.
    held: VecDeque<(u64, ClientOutput)>,
    /// The next publish record number.
    next_record: u64,
    /// QoS 0 messages dropped because `max_held` outputs were waiting for a commit.
    dropped_qos0: u64,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.config.client_id)
            .field("phase", &self.phase)
            .field("inflight", &self.inflight.len())
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client that asks for its first transport at once; refuses a configuration it could
    /// not connect with ([`ClientConfig::check`]).
    pub fn new(config: ClientConfig, now: Instant) -> Result<Self, ConfigError> {
        config.check()?;
        let keep_alive =
            (config.keep_alive > 0).then(|| Duration::from_secs(u64::from(config.keep_alive)));
        let mut client = Self {
            rng: config.seed,
            config,
            now,
            phase: Phase::Opening,
            epoch: 0,
            session: 0,
            recv: BytesMut::new(),
            out: BytesMut::new(),
            outputs: VecDeque::new(),
            next_token: 1,
            next_id: PacketId::MIN,
            inflight: Ring::new(),
            queue: Ring::new(),
            subscriptions: BTreeMap::new(),
            incoming_qos2: BTreeMap::new(),
            resubscribe_pending: false,
            server_receive_max: None,
            server: ServerLimits::default(),
            aliases: BTreeMap::new(),
            keep_alive,
            last_sent: now,
            ping_deadline: None,
            connect_deadline: None,
            reconnect_at: None,
            attempts: 0,
            persist: false,
            durable: false,
            store_key: MqttString::default(),
            store_seq: 0,
            committed: 0,
            rewrite_from: 0,
            held: VecDeque::new(),
            next_record: 1,
            dropped_qos0: 0,
        };
        client.persist =
            client.config.persistence != Persistence::Off && !client.config.clean_start;
        client.durable = client.persist && client.config.persistence == Persistence::Durable;
        client.store_key = client.config.client_id.clone();
        client.outputs.push_back(ClientOutput::OpenTransport);
        Ok(client)
    }

    // ---- getters ------------------------------------------------------------------------

    /// Whether CONNACK 0 was received on the current transport.
    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// The client identifier (the server's assigned one once known, 5.0).
    pub fn client_id(&self) -> &MqttString {
        &self.config.client_id
    }

    /// Commands sent and awaiting the server's answer.
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Commands waiting for the connection or the window.
    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }

    /// Whether the session is written to a store ([`ClientConfig::persistence`] on and a
    /// persistent session).
    pub fn persists(&self) -> bool {
        self.persist
    }

    /// The sequence number of the last [`ClientOutput::Store`] emitted (0 before the first): once
    /// a [`ClientInput::StoreDone`] reports it committed, so is everything stored before it. An
    /// adapter that hands a message to its application only after [`Client::ack`] uses it to
    /// wait for that acknowledgement's commit.
    pub fn store_mark(&self) -> u64 {
        self.store_seq
    }

    /// QoS 0 messages dropped while [`ClientConfig::max_held`] outputs waited for a store
    /// commit (durable mode; at most once allows it).
    pub fn dropped_qos0(&self) -> u64 {
        self.dropped_qos0
    }

    /// Whether outputs are waiting for a store commit (durable mode).
    pub fn awaiting_commit(&self) -> bool {
        !self.held.is_empty() || (self.durable && self.store_seq > self.committed)
    }

    // ---- restore ------------------------------------------------------------------------

    /// Resumes the session a store held (what an earlier run emitted as
    /// [`ClientOutput::Store`] operations and the store committed). Call it right after
    /// [`Client::new`], before any input or command. Records of other client identifiers are
    /// ignored.
    ///
    /// Restored publishes complete like any other, with the tokens returned here; those that
    /// were in flight are resent with DUP on the first connection (or as first deliveries if the
    /// server has lost the session), QoS 2 ones awaiting PUBCOMP with PUBREL.
    pub fn restore(&mut self, snapshot: StoreSnapshot) -> Result<ClientRestore, RestoreError> {
        if !self.persist {
            return Err(RestoreError::NotPersistent);
        }
        if self.epoch > 0
            || self.next_token > 1
            || self.store_seq > 0
            || !matches!(self.phase, Phase::Opening | Phase::Down)
        {
            return Err(RestoreError::AlreadyStarted);
        }
        let mut report = ClientRestore::default();
        let key = self.store_key.clone();
        for session in snapshot.sessions {
            if session.client_id == key {
                report.subscriptions = session.subscriptions.len();
                self.subscriptions = session.subscriptions.into_iter().collect();
            } else {
                report.ignored += 1;
            }
        }
        for (client_id, packet_id) in snapshot.release_ids {
            if client_id == key {
                self.incoming_qos2.insert(packet_id, true);
                report.release_ids += 1;
            } else {
                report.ignored += 1;
            }
        }
        let mut messages: BTreeMap<u64, StoredMessage> = snapshot.messages.into_iter().collect();
        let mut deliveries: Vec<StoredDelivery> = snapshot.deliveries;
        deliveries.sort_by_key(|d| d.seq);
        for delivery in deliveries {
            let message = if delivery.client_id == key {
                messages.remove(&delivery.message)
            } else {
                None
            };
            let Some(message) = message else {
                report.ignored += 1;
                continue;
            };
            self.next_record = self
                .next_record
                .max(delivery.seq.saturating_add(1))
                .max(delivery.message.saturating_add(1));
            let stage = match delivery.state {
                DeliveryState::Queued => None,
                DeliveryState::AwaitingAck(id) => Some((id, Stage::AwaitingAck)),
                DeliveryState::AwaitingComp(id) => Some((id, Stage::AwaitingComp)),
            };
            let publish = Publish {
                dup: false,
                qos: delivery.qos,
                retain: delivery.retain,
                topic: message.topic,
                packet_id: stage.map(|(id, _)| id),
                properties: message.properties,
                payload: message.payload,
            };
            let (topic, qos) = (publish.topic.clone(), publish.qos);
            let token = Token(self.next_token);
            let request = Request::Publish(publish);
            let record = Some(Record {
                delivery: delivery.seq,
                message: delivery.message,
            });
            let placed = match stage {
                Some((id, stage)) => self
                    .inflight
                    .push_back(Pending {
                        token,
                        id,
                        request,
                        stage,
                        record,
                        sent: false,
                    })
                    .is_ok(),
                None => self
                    .queue
                    .push_back(Queued {
                        token,
                        request,
                        record,
                    })
                    .is_ok(),
            };
            if placed {
                self.next_token += 1;
                report.in_flight += usize::from(stage.is_some());
                report.publishes.push((token, topic, qos));
            } else {
                report.over_capacity += 1;
            }
        }
        // Messages no delivery of ours refers to.
        report.ignored += messages.len();
        Ok(report)
    }

    // ---- commands -----------------------------------------------------------------------

    /// Publishes a message. Completes with [`ClientEvent::Published`].
    ///
    /// 5.0: Subscription Identifiers in `properties` (say, of a message being forwarded) are
    /// left out, as a client may not send them (5.0 [MQTT-3.3.4-6]); a Topic Alias is sent only
    /// within the server's Topic Alias Maximum, and the topic name always goes with it. While
    /// connected, a publish the server cannot take (its CONNACK's Maximum QoS, Retain
    /// Available, Maximum Packet Size) is an error here; one queued until a server that cannot
    /// take it is connected completes with [`ClientEvent::Failed`].
    pub fn publish(
        &mut self,
        now: Instant,
        topic: TopicName,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: Properties,
    ) -> Result<Token, ClientError> {
        self.advance(now);
        let mut properties = properties;
        properties.retain(|p| !matches!(p, Property::SubscriptionIdentifier(_)));
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic,
            // A placeholder so that the packet can be checked now; the real identifier is
            // allocated when it is sent.
            packet_id: (qos != QoS::AtMostOnce).then_some(PacketId::MIN),
            properties,
            payload,
        };
        publish
            .encoded_len_check(self.config.version)
            .map_err(ClientError::Encode)?;
        let request = Request::Publish(publish);
        if self.phase == Phase::Connected {
            self.admissible(&request)?;
        }
        self.command(request)
    }

    /// Subscribes to filters. Completes with [`ClientEvent::Subscribed`].
    pub fn subscribe(
        &mut self,
        now: Instant,
        filters: Vec<(TopicFilter, SubscriptionOptions)>,
        properties: Properties,
    ) -> Result<Token, ClientError> {
        self.advance(now);
        if filters.is_empty() {
            return Err(ClientError::Encode(EncodeError::EmptyList));
        }
        let request = Request::Subscribe(filters, properties);
        if self.phase == Phase::Connected {
            self.admissible(&request)?;
        }
        self.command(request)
    }

    /// Unsubscribes from filters. Completes with [`ClientEvent::Unsubscribed`].
    pub fn unsubscribe(
        &mut self,
        now: Instant,
        filters: Vec<TopicFilter>,
        properties: Properties,
    ) -> Result<Token, ClientError> {
        self.advance(now);
        if filters.is_empty() {
            return Err(ClientError::Encode(EncodeError::EmptyList));
        }
        let request = Request::Unsubscribe(filters, properties);
        if self.phase == Phase::Connected {
            self.admissible(&request)?;
        }
        self.command(request)
    }

    /// Acknowledges a received QoS 1/2 message (manual-ack mode).
    ///
    /// Valid as long as the session lasts, across reconnects: while disconnected the ack is
    /// remembered (QoS 2) or made unnecessary by the server's resend (QoS 1, acked again when
    /// it arrives again).
    pub fn ack(&mut self, now: Instant, ack: AckToken) -> Result<(), ClientError> {
        self.advance(now);
        if ack.session != self.session {
            return Err(ClientError::StaleAck);
        }
        let connected = self.phase == Phase::Connected;
        match ack.qos {
            QoS::AtLeastOnce if connected => {
                self.send(&Packet::PubAck(PubAck::success(ack.id)));
            }
            QoS::ExactlyOnce => {
                let Some(acked) = self.incoming_qos2.get_mut(&ack.id) else {
                    // PUBREL came already (the exchange is over) or never will.
                    return Ok(());
                };
                if *acked {
                    return Ok(());
                }
                *acked = true;
                self.store(StoreOp::PutReleaseId {
                    client_id: self.store_key.clone(),
                    packet_id: ack.id,
                });
                if connected {
                    self.send(&Packet::PubRec(PubAck::success(ack.id)));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Sends DISCONNECT and closes; the client makes no more connections.
    ///
    /// In durable mode, packets still waiting for a commit are not sent: the stored session
    /// sends them on the next connection.
    pub fn disconnect(&mut self, now: Instant) {
        self.advance(now);
        self.drop_held();
        // What was written and may go (nothing waits for a commit) goes first.
        self.flush();
        if self.phase == Phase::Connected {
            // Goes out now, whatever the store is doing.
            let mut bytes = BytesMut::new();
            if Packet::Disconnect(Disconnect::normal())
                .encode(self.config.version, &mut bytes)
                .is_ok()
            {
                self.outputs
                    .push_back(ClientOutput::Transmit(bytes.freeze()));
            }
        }
        if matches!(
            self.phase,
            Phase::Connected | Phase::Connecting | Phase::Opening
        ) {
            self.outputs.push_back(ClientOutput::CloseTransport);
        }
        self.phase = Phase::Stopped;
        self.reconnect_at = None;
    }

    // ---- inputs -------------------------------------------------------------------------

    /// Feeds one input.
    pub fn handle_input(&mut self, now: Instant, input: ClientInput) {
        self.advance(now);
        match input {
            ClientInput::TransportUp => self.transport_up(),
            ClientInput::Received(data) => self.received(&data),
            ClientInput::TransportDown => self.transport_down(false),
            ClientInput::Timeout => self.timeout(),
            ClientInput::StoreDone { seq, result } => self.store_done(seq, result),
        }
    }

    // ---- outputs ------------------------------------------------------------------------

    /// The next thing to do, or `None` when drained.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.flush();
        self.outputs.pop_front()
    }

    /// When to feed [`ClientInput::Timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let ping = match (self.phase, self.keep_alive) {
            (Phase::Connected, Some(k)) => Some(self.last_sent + k),
            _ => None,
        };
        [
            ping,
            self.ping_deadline,
            self.connect_deadline,
            self.reconnect_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---- internals ----------------------------------------------------------------------

    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    fn flush(&mut self) {
        if !self.out.is_empty() {
            let data = self.out.split().freeze();
            self.ordered(ClientOutput::Transmit(data));
        }
    }

    fn event(&mut self, event: ClientEvent) {
        self.flush();
        self.outputs.push_back(ClientOutput::Event(event));
    }

    /// Reports a command's completion. In durable mode not before what it changed in the store
    /// (the publish's records deleted, the subscriptions written) is committed: a crash before
    /// that leaves the command to be completed by the restored session, reported once.
    fn completion(&mut self, event: ClientEvent) {
        self.flush();
        self.ordered(ClientOutput::Event(event));
    }

    /// Emits an output that must not overtake the store: in durable mode, while operations
    /// emitted before it are uncommitted (or something is already held), it waits in `held`.
    fn ordered(&mut self, output: ClientOutput) {
        if self.holding() {
            self.held.push_back((self.store_seq, output));
        } else {
            self.outputs.push_back(output);
        }
    }

    /// Whether an output emitted now would wait in `held`.
    fn holding(&self) -> bool {
        self.durable && (self.store_seq > self.committed || !self.held.is_empty())
    }

    /// Drops what waits for a commit along with the transport it was for (what is lost is
    /// resent from the session state on the next transport).
    fn drop_held(&mut self) {
        if self.durable && self.store_seq > self.committed {
            self.out.clear();
        }
        self.held
            .retain(|(_, o)| matches!(o, ClientOutput::Event(_)));
    }

    // ---- persistence --------------------------------------------------------------------

    /// Emits a store operation (nothing when the client does not persist). What was written
    /// before it goes out at the earlier commit mark; what is written after waits for this one.
    fn store(&mut self, op: StoreOp) {
        if !self.persist {
            return;
        }
        self.flush();
        self.store_seq += 1;
        self.outputs.push_back(ClientOutput::Store {
            seq: self.store_seq,
            op,
        });
    }

    /// Stores where a started publish stands (awaiting PUBACK / PUBREC, or PUBCOMP).
    fn store_pending(&mut self, pending: &Pending) {
        if let Some((_, delivery)) = pending.stored(&self.store_key) {
            self.store(StoreOp::PutDelivery(delivery));
        }
    }

    /// A publish is complete: its records go.
    fn forget_record(&mut self, record: Option<Record>) {
        if let Some(record) = record {
            self.store(StoreOp::DeleteDelivery {
                client_id: self.store_key.clone(),
                seq: record.delivery,
            });
            self.store(StoreOp::DeleteMessage { id: record.message });
        }
    }

    fn session_record(&self) -> StoredSession {
        StoredSession {
            client_id: self.store_key.clone(),
            subscriptions: self
                .subscriptions
                .iter()
                .map(|(f, o)| (f.clone(), *o))
                .collect(),
        }
    }

    fn store_session(&mut self) {
        let session = self.session_record();
        self.store(StoreOp::PutSession(session));
    }

    fn store_done(&mut self, seq: u64, result: Result<(), StoreFailure>) {
        if !self.persist {
            return;
        }
        match result {
            Ok(()) => {
                self.committed = self.committed.max(seq.min(self.store_seq));
                while let Some((need, _)) = self.held.front() {
                    if *need > self.committed {
                        break;
                    }
                    if let Some((_, output)) = self.held.pop_front() {
                        self.outputs.push_back(output);
                    }
                }
            }
            // A failure of something before the rewrite under way changes nothing more.
            Err(_) if seq < self.rewrite_from => {}
            Err(failure) => {
                self.event(ClientEvent::StoreFailed(failure));
                if self.durable && matches!(self.phase, Phase::Connected | Phase::Connecting) {
                    // What waited for the commit must not go out; the session state in
                    // memory is resent on the next transport, once rewritten.
                    self.drop_held();
                    self.transport_down(true);
                }
                self.rewrite();
            }
        }
    }

    /// Writes the whole session state again, after a failed commit.
    fn rewrite(&mut self) {
        let mut ops = Vec::new();
        if !self.subscriptions.is_empty() {
            ops.push(StoreOp::PutSession(self.session_record()));
        }
        let key = &self.store_key;
        let started = self.inflight.iter().filter_map(|p| p.stored(key));
        let waiting = self
            .queue
            .iter()
            .filter_map(|q| match (&q.request, q.record) {
                (Request::Publish(publish), Some(record)) => Some((
                    publish,
                    stored_delivery(key, record, publish, DeliveryState::Queued),
                )),
                _ => None,
            });
        for (publish, delivery) in started.chain(waiting) {
            ops.push(StoreOp::PutMessage {
                id: delivery.message,
                message: stored_message(publish),
            });
            ops.push(StoreOp::PutDelivery(delivery));
        }
        for (id, acked) in &self.incoming_qos2 {
            if *acked {
                ops.push(StoreOp::PutReleaseId {
                    client_id: self.store_key.clone(),
                    packet_id: *id,
                });
            }
        }
        self.store(StoreOp::Clear);
        self.rewrite_from = self.store_seq;
        for op in ops {
            self.store(op);
        }
    }

    fn send(&mut self, packet: &Packet) {
        // Packets are checked when commands are made; our own acks always encode.
        if packet.encode(self.config.version, &mut self.out).is_ok() {
            self.last_sent = self.now;
        }
    }

    fn token(&mut self) -> Token {
        let token = Token(self.next_token);
        self.next_token += 1;
        token
    }

    fn allocate_id(&mut self) -> PacketId {
        // [MQTT-2.3.1-2]: an identifier not in use. The window is far below 65,535.
        loop {
            let id = self.next_id;
            self.next_id = id.next();
            if !self.inflight.iter().any(|p| p.id == id) {
                return id;
            }
        }
    }

    fn window(&self) -> usize {
        let ours = usize::from(self.config.max_inflight.max(1))
            .min(Ring::<Pending, INFLIGHT_CAPACITY>::capacity());
        self.server_receive_max
            .map_or(ours, |theirs| ours.min(usize::from(theirs)))
    }

    /// QoS 1/2 publishes the server holds unacknowledged: sent on this connection, or past
    /// PUBREC (unacknowledged until PUBCOMP) — what its Receive Maximum counts.
    fn publishes_in_flight(&self) -> usize {
        self.inflight
            .iter()
            .filter(|p| {
                matches!(p.request, Request::Publish(_))
                    && (p.sent || p.stage == Stage::AwaitingComp)
            })
            .count()
    }

    /// Resends, in order, publishes of a resumed session that the window held back.
    fn resend_held_back(&mut self) {
        while self.publishes_in_flight() < self.window() {
            let Some(p) = self.inflight.iter_mut().find(|p| !p.sent) else {
                return;
            };
            p.sent = true;
            let p = p.clone();
            self.transmit_pending(&p, true);
        }
    }

    fn command(&mut self, request: Request) -> Result<Token, ClientError> {
        if self.phase == Phase::Stopped {
            return Err(ClientError::Stopped);
        }
        if self.queue.len() >= self.config.max_queued {
            return Err(ClientError::QueueFull);
        }
        let ops = match &request {
            Request::Publish(p) if self.persist && p.qos != QoS::AtMostOnce => {
                let record = Record {
                    delivery: self.next_record,
                    message: self.next_record,
                };
                let delivery = stored_delivery(&self.store_key, record, p, DeliveryState::Queued);
                Some((record, stored_message(p), delivery))
            }
            _ => None,
        };
        let token = self.token();
        let queued = Queued {
            token,
            request,
            record: ops.as_ref().map(|(record, ..)| *record),
        };
        if self.queue.push_back(queued).is_err() {
            return Err(ClientError::QueueFull);
        }
        if let Some((record, message, delivery)) = ops {
            self.next_record += 1;
            self.store(StoreOp::PutMessage {
                id: record.message,
                message,
            });
            self.store(StoreOp::PutDelivery(delivery));
        }
        self.drain_queue();
        Ok(token)
    }

    /// Sends queued commands while connected and within the window, in order.
    fn drain_queue(&mut self) {
        if self.resubscribe_pending
            && self.phase == Phase::Connected
            && self.queue.len() < Ring::<Queued, QUEUE_CAPACITY>::capacity()
        {
            self.resubscribe_pending = false;
            self.resubscribe();
        }
        if self.phase == Phase::Connected {
            self.resend_held_back();
        }
        while self.phase == Phase::Connected {
            let Some(Queued { request: front, .. }) = self.queue.front() else {
                return;
            };
            let needs_window = matches!(front, Request::Publish(p) if p.qos != QoS::AtMostOnce);
            // No publish overtakes a resend the window still holds back.
            let held_back = self.inflight.iter().any(|p| !p.sent);
            let mut at = 0;
            if (held_back && matches!(front, Request::Publish(_)))
                || (needs_window && self.publishes_in_flight() >= self.window())
            {
                // Publishes wait for the window, in order; a SUBSCRIBE or UNSUBSCRIBE behind
                // them does not (5.0 [MQTT-3.3.4-8]).
                let other = self
                    .queue
                    .iter()
                    .position(|q| !matches!(q.request, Request::Publish(_)));
                match other {
                    Some(i) => at = i,
                    None => return,
                }
            }
            // Subscribe and unsubscribe need an in-flight slot too (outside the window).
            let needs_slot =
                at > 0 || !matches!(front, Request::Publish(p) if p.qos == QoS::AtMostOnce);
            if needs_slot && self.inflight.len() >= Ring::<Pending, INFLIGHT_CAPACITY>::capacity() {
                return;
            }
            let next = if at == 0 {
                self.queue.pop_front()
            } else {
                self.queue.remove(at)
            };
            let Some(queued) = next else {
                return;
            };
            self.start(queued);
        }
    }

    /// Whether the connected server can take the command (5.0 CONNACK limits).
    fn admissible(&self, request: &Request) -> Result<(), ClientError> {
        let limits = self.server;
        if let Request::Publish(p) = request {
            if p.qos > limits.max_qos {
                return Err(ClientError::QosNotSupported(limits.max_qos));
            }
            if p.retain && !limits.retain_available {
                return Err(ClientError::RetainNotSupported);
            }
        }
        if let Some(max) = limits.max_packet_size {
            let size = match request {
                // With an identifier (the placeholder's size is that of any other).
                Request::Publish(p) => Packet::Publish(self.outgoing(p.clone(), false))
                    .encoded_len(self.config.version),
                Request::Subscribe(filters, properties) => Packet::Subscribe(Subscribe {
                    packet_id: PacketId::MIN,
                    properties: properties.clone(),
                    filters: filters.clone(),
                })
                .encoded_len(self.config.version),
                Request::Unsubscribe(filters, properties) => Packet::Unsubscribe(Unsubscribe {
                    packet_id: PacketId::MIN,
                    properties: properties.clone(),
                    filters: filters.clone(),
                })
                .encoded_len(self.config.version),
            }
            .map_err(ClientError::Encode)?;
            if size > usize::try_from(max).unwrap_or(usize::MAX) {
                return Err(ClientError::PacketTooLarge { size, max });
            }
        }
        Ok(())
    }

    /// The PUBLISH as it goes on this connection: DUP on a resend (3.1.1 [MQTT-3.3.1-1]), and
    /// a Topic Alias only within the server's Topic Alias Maximum (5.0 [MQTT-3.2.2-17],
    /// [MQTT-3.2.2-18], [MQTT-3.3.2-9]). The topic name always goes too, so no alias needs to
    /// outlive the connection (5.0 [MQTT-3.3.2-7]).
    fn outgoing(&self, mut p: Publish, resend: bool) -> Publish {
        p.dup = resend && p.qos != QoS::AtMostOnce;
        if p.properties
            .topic_alias()
            .is_some_and(|alias| alias > self.server.topic_alias_max)
        {
            p.properties
                .retain(|x| !matches!(x, Property::TopicAlias(_)));
        }
        if p.qos == QoS::AtMostOnce {
            p.packet_id = None;
        }
        p
    }

    /// Drops a command the connected server cannot take, before it is sent.
    fn fail(&mut self, token: Token, record: Option<Record>, error: ClientError) {
        self.forget_record(record);
        self.completion(ClientEvent::Failed { token, error });
    }

    fn start(&mut self, queued: Queued) {
        let Queued {
            token,
            request,
            record,
        } = queued;
        if let Err(error) = self.admissible(&request) {
            self.fail(token, record, error);
            return;
        }
        match request {
            Request::Publish(publish) if publish.qos == QoS::AtMostOnce => {
                let publish = self.outgoing(publish, false);
                self.send(&Packet::Publish(publish));
                self.completion(ClientEvent::Published {
                    token,
                    reason: PubAckReason::Success,
                });
            }
            mut request => {
                let id = self.allocate_id();
                match &mut request {
                    Request::Publish(p) => p.packet_id = Some(id),
                    Request::Subscribe(..) | Request::Unsubscribe(..) => {}
                }
                let pending = Pending {
                    token,
                    id,
                    request,
                    stage: Stage::AwaitingAck,
                    record,
                    sent: true,
                };
                self.store_pending(&pending);
                self.transmit_pending(&pending, false);
                // Room was checked by `drain_queue`.
                let _ = self.inflight.push_back(pending);
            }
        }
    }

    /// Sends (or resends, with DUP) what a pending command is waiting on.
    fn transmit_pending(&mut self, pending: &Pending, resend: bool) {
        let packet = match (&pending.request, pending.stage) {
            (Request::Publish(_), Stage::AwaitingComp) => {
                Packet::PubRel(PubRel::success(pending.id))
            }
            (Request::Publish(p), Stage::AwaitingAck) => {
                Packet::Publish(self.outgoing(p.clone(), resend))
            }
            (Request::Subscribe(filters, properties), _) => Packet::Subscribe(Subscribe {
                packet_id: pending.id,
                properties: properties.clone(),
                filters: filters.clone(),
            }),
            (Request::Unsubscribe(filters, properties), _) => Packet::Unsubscribe(Unsubscribe {
                packet_id: pending.id,
                properties: properties.clone(),
                filters: filters.clone(),
            }),
        };
        self.send(&packet);
    }

    fn transport_up(&mut self) {
        if self.phase != Phase::Opening {
            return;
        }
        self.epoch += 1;
        self.recv.clear();
        self.out.clear();
        self.aliases.clear();
        self.server = ServerLimits::default();
        self.phase = Phase::Connecting;
        self.connect_deadline = Some(self.now + self.config.connect_timeout);
        let connect = Connect {
            protocol: self.config.version,
            clean_start: self.config.clean_start,
            keep_alive: self.config.keep_alive,
            properties: self.config.connect_properties.clone(),
            client_id: self.config.client_id.clone(),
            will: self.config.will.clone(),
            username: self.config.username.clone(),
            password: self.config.password.clone(),
        };
        self.send(&Packet::Connect(Box::new(connect)));
    }

    /// Ends the current transport; schedules a reconnect unless stopped.
    fn transport_down(&mut self, close: bool) {
        if matches!(self.phase, Phase::Down | Phase::Stopped) {
            return;
        }
        self.drop_held();
        if close {
            self.flush();
            self.outputs.push_back(ClientOutput::CloseTransport);
        }
        let was_up = matches!(self.phase, Phase::Connected | Phase::Connecting);
        self.phase = Phase::Down;
        self.connect_deadline = None;
        self.ping_deadline = None;
        self.out.clear();
        self.recv.clear();
        if was_up {
            self.event(ClientEvent::Disconnected);
        }
        self.reconnect_at = match self.config.reconnect {
            Some(backoff) => {
                let delay = self.backoff_delay(backoff);
                self.attempts = self.attempts.saturating_add(1);
                Some(self.now + delay)
            }
            None => None,
        };
    }

    fn backoff_delay(&mut self, backoff: Backoff) -> Duration {
        let exp = backoff
            .initial
            .saturating_mul(1u32 << self.attempts.min(16))
            .min(backoff.max);
        // Jitter in [0.5, 1.0] of the delay, from the seeded generator.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let fraction = 500 + (z ^ (z >> 31)) % 501; // per mille
        let millis = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(millis / 1000 * fraction + millis % 1000 * fraction / 1000)
    }

    fn protocol_error(&mut self, error: ClientProtocolError) {
        self.event(ClientEvent::ProtocolError(error));
        self.transport_down(true);
    }

    fn timeout(&mut self) {
        let now = self.now;
        if self.reconnect_at.is_some_and(|at| now >= at) && self.phase == Phase::Down {
            self.reconnect_at = None;
            self.phase = Phase::Opening;
            self.outputs.push_back(ClientOutput::OpenTransport);
            return;
        }
        if self.connect_deadline.is_some_and(|at| now >= at) {
            self.protocol_error(ClientProtocolError::ConnectTimeout);
            return;
        }
        if self.ping_deadline.is_some_and(|at| now >= at) {
            self.protocol_error(ClientProtocolError::PingTimeout);
            return;
        }
        if let (Phase::Connected, Some(keep_alive)) = (self.phase, self.keep_alive)
            && now >= self.last_sent + keep_alive
        {
            // 3.1.1 [MQTT-3.1.2-23]: nothing sent for a keep-alive period: PINGREQ.
            self.send(&Packet::PingReq);
            if self.ping_deadline.is_none() {
                self.ping_deadline = Some(now + keep_alive);
            }
        }
    }

    fn received(&mut self, data: &[u8]) {
        if !matches!(self.phase, Phase::Connecting | Phase::Connected) {
            return;
        }
        self.recv.extend_from_slice(data);
        let epoch = self.epoch;
        while self.epoch == epoch && matches!(self.phase, Phase::Connecting | Phase::Connected) {
            match decode_buf(
                &mut self.recv,
                self.config.version,
                self.config.max_packet_size,
            ) {
                Ok(Some(packet)) => self.packet(packet),
                Ok(None) => return,
                Err(error) => {
                    self.protocol_error(ClientProtocolError::Malformed(error));
                    return;
                }
            }
        }
    }

    fn packet(&mut self, packet: Packet) {
        if self.phase == Phase::Connecting {
            match packet {
                Packet::ConnAck(connack) => self.connack(connack),
                _ => self.protocol_error(ClientProtocolError::UnexpectedPacket),
            }
            return;
        }
        match packet {
            Packet::Publish(publish) => self.incoming_publish(publish),
            Packet::PubAck(ack) => self.puback(ack.packet_id, ack.reason),
            Packet::PubRec(rec) => self.pubrec(rec.packet_id, rec.reason),
            Packet::PubRel(rel) => {
                if self.incoming_qos2.remove(&rel.packet_id) == Some(true) {
                    self.store(StoreOp::DeleteReleaseId {
                        client_id: self.store_key.clone(),
                        packet_id: rel.packet_id,
                    });
                }
                // 3.1.1 [MQTT-4.3.3-2]: PUBCOMP, and the identifier is free again.
                self.send(&Packet::PubComp(PubRel::success(rel.packet_id)));
            }
            Packet::PubComp(comp) => self.pubcomp(comp.packet_id, comp.reason),
            Packet::SubAck(ack) => self.suback(ack),
            Packet::UnsubAck(ack) => self.unsuback(ack),
            Packet::PingResp => self.ping_deadline = None,
            Packet::Disconnect(d) => {
                self.protocol_error(ClientProtocolError::ServerDisconnect(d.reason));
            }
            Packet::Auth(_)
            | Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::PingReq
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_) => {
                self.protocol_error(ClientProtocolError::UnexpectedPacket);
            }
        }
    }

    fn connack(&mut self, connack: ConnAck) {
        self.connect_deadline = None;
        if connack.reason != ConnectReason::Success {
            self.event(ClientEvent::Refused {
                reason: connack.reason,
            });
            self.transport_down(true);
            return;
        }
        if connack.session_present && self.config.clean_start {
            // 5.0 [MQTT-3.2.2-4]
            self.protocol_error(ClientProtocolError::UnexpectedSessionPresent);
            return;
        }
        self.phase = Phase::Connected;
        self.attempts = 0;
        let props = &connack.properties;
        self.server_receive_max = props.receive_maximum();
        self.server = ServerLimits::from_connack(props);
        if let Some(k) = props.server_keep_alive() {
            // 5.0 [MQTT-3.1.2-21] [MQTT-3.2.2-21]: the server's keep alive replaces ours.
            self.keep_alive = (k > 0).then(|| Duration::from_secs(u64::from(k)));
        }
        if let Some(id) = props.assigned_client_identifier() {
            self.config.client_id = id;
        }
        // MQTT 3.1 has no Session Present flag (the byte is reserved): a 3.1 server keeps the
        // session of a client that did not ask for a clean one.
        let session_present = connack.session_present
            || (self.config.version == ProtocolVersion::V3_1 && !self.config.clean_start);
        if !session_present {
            // The server has no state for us: QoS 2 exchanges it was receiving are gone,
            // acknowledgements owed to it are void, and our subscriptions must be made again.
            let released = core::mem::take(&mut self.incoming_qos2);
            for (packet_id, acked) in released {
                if acked {
                    self.store(StoreOp::DeleteReleaseId {
                        client_id: self.store_key.clone(),
                        packet_id,
                    });
                }
            }
            self.session += 1;
            self.resubscribe();
        }
        self.event(ClientEvent::Connected {
            session_present,
            properties: connack.properties,
        });
        if !session_present {
            // A new session (3.1.1 [MQTT-3.1.2-6]): no exchange carries over into it. A QoS 2
            // message whose PUBREC arrived is the server's already: it completes (a PUBREL
            // would name an identifier the new session never saw).
            let released: Vec<PacketId> = self
                .inflight
                .iter()
                .filter(|p| {
                    matches!(p.request, Request::Publish(_)) && p.stage == Stage::AwaitingComp
                })
                .map(|p| p.id)
                .collect();
            for id in released {
                if let Some(p) = self.take_pending(id, |p| p.stage == Stage::AwaitingComp) {
                    self.forget_record(p.record);
                    self.completion(ClientEvent::Published {
                        token: p.token,
                        reason: PubAckReason::Success,
                    });
                }
            }
        }
        // A publish not yet acknowledged that this server cannot take is dropped unsent.
        let refused: Vec<(PacketId, ClientError)> = self
            .inflight
            .iter()
            .filter(|p| p.stage == Stage::AwaitingAck)
            .filter_map(|p| self.admissible(&p.request).err().map(|e| (p.id, e)))
            .collect();
        for (id, error) in refused {
            if let Some(p) = self.take_pending(id, |p| p.stage == Stage::AwaitingAck) {
                self.fail(p.token, p.record, error);
            }
        }
        // 3.1.1 [MQTT-4.4.0-1] [MQTT-4.6.0-1]: resend in the original order; into a new
        // session as first deliveries (DUP 0, [MQTT-3.3.1-1]). PUBLISH packets only within
        // the server's Receive Maximum (5.0 [MQTT-3.3.4-7]), counting the QoS 2 exchanges
        // past PUBREC; the rest go as acknowledgements make room. PUBREL, SUBSCRIBE and
        // UNSUBSCRIBE go at once ([MQTT-3.3.4-8]).
        for p in self.inflight.iter_mut() {
            p.sent = false;
        }
        let mut quota = self.window().saturating_sub(self.publishes_in_flight());
        let mut pending: Vec<Pending> = Vec::new();
        for p in self.inflight.iter_mut() {
            let publish = matches!(p.request, Request::Publish(_)) && p.stage == Stage::AwaitingAck;
            if publish {
                if quota == 0 {
                    continue;
                }
                quota -= 1;
            }
            p.sent = true;
            pending.push(p.clone());
        }
        for p in &pending {
            self.transmit_pending(p, session_present);
        }
        self.drain_queue();
    }

    fn resubscribe(&mut self) {
        if self.subscriptions.is_empty() {
            return;
        }
        // Filters already on their way (in flight, resent below, or queued) are not doubled,
        // and filters being unsubscribed are not made again behind their UNSUBSCRIBE.
        let mut already: BTreeSet<&TopicFilter> = BTreeSet::new();
        let requests = self.inflight.iter().map(|p| &p.request);
        for request in requests.chain(self.queue.iter().map(|q| &q.request)) {
            match request {
                Request::Subscribe(filters, _) => already.extend(filters.iter().map(|(f, _)| f)),
                Request::Unsubscribe(filters, _) => already.extend(filters.iter()),
                Request::Publish(_) => {}
            }
        }
        let filters: Vec<(TopicFilter, SubscriptionOptions)> = self
            .subscriptions
            .iter()
            .filter(|(f, _)| !already.contains(f))
            .map(|(f, o)| (f.clone(), *o))
            .collect();
        if filters.is_empty() {
            return;
        }
        // Remade ahead of anything queued; completion is reported with an internal token.
        let token = self.token();
        let queued = Queued {
            token,
            request: Request::Subscribe(filters, Properties::new()),
            record: None,
        };
        if self.queue.push_front(queued).is_err() {
            // A full fixed-capacity queue: resubscribe as soon as it has room.
            self.resubscribe_pending = true;
        }
    }

    fn incoming_publish(&mut self, mut publish: Publish) {
        if let Some(alias) = publish.properties.topic_alias() {
            // 5.0 [MQTT-3.3.2-10]: any alias from 1 to the maximum we sent is accepted; above
            // it, or an empty topic with an alias not mapped on this connection, is an error.
            let ours = self.config.connect_properties.topic_alias_maximum();
            if !self.config.version.is_v5() || alias > ours.unwrap_or(0) {
                self.protocol_error(ClientProtocolError::TopicAlias(alias));
                return;
            }
            if publish.topic.as_str().is_empty() {
                match self.aliases.get(&alias) {
                    Some(topic) => publish.topic = topic.clone(),
                    None => {
                        self.protocol_error(ClientProtocolError::TopicAlias(alias));
                        return;
                    }
                }
            } else {
                self.aliases.insert(alias, publish.topic.clone());
            }
        }
        let manual = self.config.manual_acks;
        let ack = match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) | (_, None) => None,
            (qos, Some(id)) => Some(AckToken {
                id,
                qos,
                session: self.session,
            }),
        };
        match ack {
            Some(a) if a.qos == QoS::ExactlyOnce => {
                if let Some(&acked) = self.incoming_qos2.get(&a.id) {
                    // 3.1.1 [MQTT-4.3.3-2]: a duplicate before PUBREL is acknowledged again
                    // (once the application has acknowledged it), not delivered again.
                    if acked {
                        self.send(&Packet::PubRec(PubAck::success(a.id)));
                    }
                    return;
                }
                self.incoming_qos2.insert(a.id, !manual);
                if !manual {
                    self.store(StoreOp::PutReleaseId {
                        client_id: self.store_key.clone(),
                        packet_id: a.id,
                    });
                    self.send(&Packet::PubRec(PubAck::success(a.id)));
                }
            }
            Some(a) if !manual => self.send(&Packet::PubAck(PubAck::success(a.id))),
            _ => {}
        }
        // In durable mode not before what was stored ahead of it (its QoS 2 identifier) is
        // committed: after a crash before that, the server's resend is delivered instead.
        self.flush();
        if publish.qos == QoS::AtMostOnce
            && self.holding()
            && self.held.len() >= self.config.max_held
        {
            // A stalled store must not let a server's QoS 0 stream grow memory without bound.
            self.dropped_qos0 += 1;
            return;
        }
        self.ordered(ClientOutput::Event(ClientEvent::Message(Box::new(
            IncomingMessage {
                publish,
                ack: if manual { ack } else { None },
            },
        ))));
    }

    fn take_pending(&mut self, id: PacketId, want: impl Fn(&Pending) -> bool) -> Option<Pending> {
        let at = self.inflight.iter().position(|p| p.id == id && want(p))?;
        self.inflight.remove(at)
    }

    fn puback(&mut self, id: PacketId, reason: PubAckReason) {
        let qos1 =
            |p: &Pending| matches!(&p.request, Request::Publish(x) if x.qos == QoS::AtLeastOnce);
        if let Some(p) = self.take_pending(id, qos1) {
            self.forget_record(p.record);
            self.completion(ClientEvent::Published {
                token: p.token,
                reason,
            });
            self.drain_queue();
        }
    }

    fn pubrec(&mut self, id: PacketId, reason: PubAckReason) {
        let qos2 = |p: &Pending| {
            matches!(&p.request, Request::Publish(x) if x.qos == QoS::ExactlyOnce)
                && p.stage == Stage::AwaitingAck
        };
        if reason.is_error() {
            // 5.0: a failed PUBREC ends the exchange.
            if let Some(p) = self.take_pending(id, qos2) {
                self.forget_record(p.record);
                self.completion(ClientEvent::Published {
                    token: p.token,
                    reason,
                });
                self.drain_queue();
            }
            return;
        }
        let mut moved = None;
        let at = self.inflight.iter().position(|p| p.id == id && qos2(p));
        if let Some(mut p) = at.and_then(|at| self.inflight.remove(at)) {
            p.stage = Stage::AwaitingComp;
            if let Some(old) = p.record {
                // A later delivery number: after a restart too, PUBRELs go in PUBREC order.
                p.record = Some(Record {
                    delivery: self.next_record,
                    message: old.message,
                });
                self.next_record += 1;
                moved = p
                    .stored(&self.store_key)
                    .map(|(_, delivery)| (old.delivery, delivery));
            }
            // 3.1.1 [MQTT-4.6.0-4]: PUBRELs, resent ones too, go in the order the PUBRECs
            // came; resends follow the in-flight order. (It was just removed: there is room.)
            let _ = self.inflight.push_back(p);
        }
        if let Some((old, delivery)) = moved {
            // The PUBREL below waits for these in durable mode: a restart resends PUBREL, never
            // the PUBLISH (which the server would take for a new message). One input's
            // operations commit together: the delivery is never lost in between.
            self.store(StoreOp::DeleteDelivery {
                client_id: self.store_key.clone(),
                seq: old,
            });
            self.store(StoreOp::PutDelivery(delivery));
        }
        // 3.1.1 [MQTT-4.3.3-1]: PUBREL answers PUBREC (also for one we no longer track).
        self.send(&Packet::PubRel(PubRel::success(id)));
    }

    fn pubcomp(&mut self, id: PacketId, _reason: PubRelReason) {
        let done = |p: &Pending| p.stage == Stage::AwaitingComp;
        if let Some(p) = self.take_pending(id, done) {
            self.forget_record(p.record);
            self.completion(ClientEvent::Published {
                token: p.token,
                reason: PubAckReason::Success,
            });
            self.drain_queue();
        }
    }

    fn suback(&mut self, ack: SubAck) {
        let is_sub = |p: &Pending| matches!(p.request, Request::Subscribe(..));
        let Some(p) = self.take_pending(ack.packet_id, is_sub) else {
            return;
        };
        if let Request::Subscribe(filters, _) = &p.request {
            for ((filter, options), reason) in filters.iter().zip(&ack.reasons) {
                if !reason.is_error() {
                    self.subscriptions.insert(filter.clone(), *options);
                }
            }
            self.store_session();
        }
        self.completion(ClientEvent::Subscribed {
            token: p.token,
            reasons: ack.reasons,
        });
        self.drain_queue();
    }

    fn unsuback(&mut self, ack: UnsubAck) {
        let is_unsub = |p: &Pending| matches!(p.request, Request::Unsubscribe(..));
        let Some(p) = self.take_pending(ack.packet_id, is_unsub) else {
            return;
        };
        if let Request::Unsubscribe(filters, _) = &p.request {
            for filter in filters {
                self.subscriptions.remove(filter);
            }
            self.store_session();
        }
        self.completion(ClientEvent::Unsubscribed {
            token: p.token,
            reasons: ack.reasons,
        });
        self.drain_queue();
    }
}

impl Pending {
    /// A started publish's delivery record (awaiting PUBACK / PUBREC, or PUBCOMP), when it is
    /// stored, with the publish.
    fn stored(&self, client_id: &MqttString) -> Option<(&Publish, StoredDelivery)> {
        let (Some(record), Request::Publish(publish)) = (self.record, &self.request) else {
            return None;
        };
        let state = match self.stage {
            Stage::AwaitingAck => DeliveryState::AwaitingAck(self.id),
            Stage::AwaitingComp => DeliveryState::AwaitingComp(self.id),
        };
        Some((publish, stored_delivery(client_id, record, publish, state)))
    }
}

/// The delivery record of a publish stored as `record`.
fn stored_delivery(
    client_id: &MqttString,
    record: Record,
    publish: &Publish,
    state: DeliveryState,
) -> StoredDelivery {
    StoredDelivery {
        client_id: client_id.clone(),
        seq: record.delivery,
        message: record.message,
        qos: publish.qos,
        retain: publish.retain,
        state,
    }
}

/// A publish as the store keeps it.
fn stored_message(publish: &Publish) -> StoredMessage {
    StoredMessage {
        topic: publish.topic.clone(),
        qos: publish.qos,
        properties: publish.properties.clone(),
        payload: publish.payload.clone(),
    }
}

impl Publish {
    /// Checks that this PUBLISH can be encoded in `version` (size, fields, properties).
    fn encoded_len_check(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        self.view().encoded_len(version)
    }
}
