//! The records that must survive a broker restart, and the operations on them.
//!
//! The [`Broker`](crate::broker::Broker) emits [`StoreOp`]s as
//! [`Output::Store`](crate::broker::Output::Store) when it runs with
//! [`Persistence::Durable`](crate::broker::Persistence::Durable) or
//! [`Persistence::Periodic`](crate::broker::Persistence::Periodic); an adapter applies them, in
//! order, to a store and answers [`Input::StoreDone`](crate::broker::Input::StoreDone) with the
//! sequence number of the last one committed. After a restart, the store's content is read back
//! as a [`StoreSnapshot`] and handed to
//! [`Broker::restore`](crate::broker::Broker::restore).
//!
//! What is kept: persistent sessions (client identifier and subscriptions), the QoS 1/2
//! messages queued or in flight to them (each message once, referenced by every delivery), the
//! QoS 2 packet identifiers received from them and not yet released, and retained messages.
//! What is not: clean sessions, QoS 0 messages queued for sessions (retained messages are kept
//! whatever their QoS), Wills of connected clients, `$SYS` topics.
//!
//! - [`MemoryStore`]: applies operations to in-memory maps (simulation, tests, embedding).
//! - `redb` (feature `redb`): the crash-safe file store and its group-commit worker.
//!
//! Never: decide anything. The broker decides what to keep; a store only keeps it.

#[cfg(feature = "redb")]
pub mod redb;

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use bytes::Bytes;

use crate::broker::StoreFailure;

use crate::codec::{PacketId, Properties, QoS, SubscriptionOptions};
use crate::string::MqttString;
use crate::topic::{TopicFilter, TopicName};

/// An application message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its topic.
    pub topic: TopicName,
    /// The QoS it was published with.
    pub qos: QoS,
    /// MQTT 5.0 properties (empty for 3.x).
    pub properties: Properties,
    /// The payload.
    pub payload: Bytes,
}

/// A persistent session's own record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// The client identifier (the key).
    pub client_id: MqttString,
    /// Its subscriptions.
    pub subscriptions: Vec<(TopicFilter, SubscriptionOptions)>,
}

/// Where a stored delivery to a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting in the session's queue; never sent.
    Queued,
    /// PUBLISH sent with this packet identifier; no PUBACK / PUBREC yet.
    AwaitingAck(PacketId),
    /// QoS 2: PUBREC received and PUBREL sent with this identifier; no PUBCOMP yet.
    AwaitingComp(PacketId),
}

/// One message on its way to one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDelivery {
    /// The session.
    pub client_id: MqttString,
    /// Position in the session's outgoing order (increasing; the key together with the
    /// client identifier).
    pub seq: u64,
    /// The message (see [`StoreOp::PutMessage`]).
    pub message: u64,
    /// The QoS it is delivered with (the lower of published and granted).
    pub qos: QoS,
    /// RETAIN flag to send it with.
    pub retain: bool,
    /// Queued or in flight.
    pub state: DeliveryState,
}

/// One change to the stored state. Applied in the order emitted; each is idempotent (a put
/// replaces, a delete of something absent does nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Deletes every record. The broker emits it after a failed commit, followed in the same
    /// atomic group by puts of everything it keeps: memory is the reference again.
    Clear,
    /// Creates or replaces a persistent session's record.
    PutSession(StoredSession),
    /// Deletes a session with everything that belongs to it: its deliveries and its QoS 2
    /// release identifiers. Messages are deleted by their own operations.
    DeleteSession {
        /// The session.
        client_id: MqttString,
    },
    /// Stores a message referenced by deliveries.
    PutMessage {
        /// Its number, unique for the store's lifetime.
        id: u64,
        /// The message.
        message: StoredMessage,
    },
    /// Deletes a message no delivery references any more.
    DeleteMessage {
        /// Its number.
        id: u64,
    },
    /// Creates or replaces a delivery (keyed by client identifier and `seq`).
    PutDelivery(StoredDelivery),
    /// Deletes a delivery (acknowledged, or dropped).
    DeleteDelivery {
        /// The session.
        client_id: MqttString,
        /// The delivery's position.
        seq: u64,
    },
    /// A QoS 2 PUBLISH with this identifier was received from the session (PUBREC sent) and its
    /// PUBREL has not arrived: a resend must not be delivered again.
    PutReleaseId {
        /// The session.
        client_id: MqttString,
        /// The packet identifier.
        packet_id: PacketId,
    },
    /// PUBREL arrived for this identifier.
    DeleteReleaseId {
        /// The session.
        client_id: MqttString,
        /// The packet identifier.
        packet_id: PacketId,
    },
    /// Sets the retained message of its topic.
    PutRetained(StoredMessage),
    /// Clears the retained message of a topic.
    DeleteRetained {
        /// The topic.
        topic: TopicName,
    },
}

/// Everything a store holds, as read back at start-up for
/// [`Broker::restore`](crate::broker::Broker::restore).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreSnapshot {
    /// Persistent sessions.
    pub sessions: Vec<StoredSession>,
    /// Messages by number.
    pub messages: Vec<(u64, StoredMessage)>,
    /// Deliveries, in any order (restore sorts them by session and `seq`).
    pub deliveries: Vec<StoredDelivery>,
    /// QoS 2 identifiers awaiting PUBREL, by session.
    pub release_ids: Vec<(MqttString, PacketId)>,
    /// Retained messages.
    pub retained: Vec<StoredMessage>,
}

impl StoreSnapshot {
    /// Records of every kind, in total.
    pub fn len(&self) -> usize {
        self.sessions.len()
            + self.messages.len()
            + self.deliveries.len()
            + self.release_ids.len()
            + self.retained.len()
    }

    /// Nothing stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reports a commit to the broker's task: every operation up to `seq` is committed, or failed.
/// Called from the store's own thread; it must only hand the report over (send it down a
/// channel), never block on the broker.
pub type DoneFn = Box<dyn Fn(u64, Result<(), StoreFailure>) + Send + Sync>;

/// Where an adapter hands the [`StoreOp`]s it drains from the broker (implemented by the redb
/// group-commit worker; a test may implement it with anything).
pub trait StoreSink: Send {
    /// Takes the operations drained after one or more inputs, in order. They form atomic
    /// groups: commit them in one transaction, or together with others, never split. Must not
    /// block for long; the answer comes through the [`DoneFn`].
    fn submit(&mut self, ops: Vec<(u64, StoreOp)>);

    /// Commits what is pending and stops (graceful shutdown). Errors are reported by the
    /// implementation (logged); the data stays as last committed.
    fn close(self: Box<Self>);
}

/// What an adapter needs to run a broker with a store: what the store held at start-up (for
/// [`Broker::restore`](crate::broker::Broker::restore)) and how to start its committer once
/// the adapter knows where commit reports go.
pub struct StoreSetup {
    /// The store's content.
    pub snapshot: StoreSnapshot,
    /// Starts the committer with the adapter's [`DoneFn`].
    pub start: Box<dyn FnOnce(DoneFn) -> Box<dyn StoreSink> + Send>,
}

impl core::fmt::Debug for StoreSetup {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StoreSetup")
            .field("records", &self.snapshot.len())
            .finish_non_exhaustive()
    }
}

/// A store in memory: applies [`StoreOp`]s to ordered maps, and gives back a
/// [`StoreSnapshot`]. What a simulation uses to model the disk (apply only what it decides was
/// committed), and a reference for any other store's behaviour.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStore {
    sessions: BTreeMap<MqttString, StoredSession>,
    messages: BTreeMap<u64, StoredMessage>,
    deliveries: BTreeMap<(MqttString, u64), StoredDelivery>,
    release_ids: BTreeSet<(MqttString, PacketId)>,
    retained: BTreeMap<TopicName, StoredMessage>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one operation.
    pub fn apply(&mut self, op: &StoreOp) {
        match op {
            StoreOp::Clear => *self = Self::default(),
            StoreOp::PutSession(session) => {
                self.sessions
                    .insert(session.client_id.clone(), session.clone());
            }
            StoreOp::DeleteSession { client_id } => {
                self.sessions.remove(client_id);
                self.deliveries.retain(|(c, _), _| c != client_id);
                self.release_ids.retain(|(c, _)| c != client_id);
            }
            StoreOp::PutMessage { id, message } => {
                self.messages.insert(*id, message.clone());
            }
            StoreOp::DeleteMessage { id } => {
                self.messages.remove(id);
            }
            StoreOp::PutDelivery(delivery) => {
                self.deliveries
                    .insert((delivery.client_id.clone(), delivery.seq), delivery.clone());
            }
            StoreOp::DeleteDelivery { client_id, seq } => {
                self.deliveries.remove(&(client_id.clone(), *seq));
            }
            StoreOp::PutReleaseId {
                client_id,
                packet_id,
            } => {
                self.release_ids.insert((client_id.clone(), *packet_id));
            }
            StoreOp::DeleteReleaseId {
                client_id,
                packet_id,
            } => {
                self.release_ids.remove(&(client_id.clone(), *packet_id));
            }
            StoreOp::PutRetained(message) => {
                self.retained.insert(message.topic.clone(), message.clone());
            }
            StoreOp::DeleteRetained { topic } => {
                self.retained.remove(topic);
            }
        }
    }

    /// Everything held, for [`Broker::restore`](crate::broker::Broker::restore).
    pub fn snapshot(&self) -> StoreSnapshot {
        StoreSnapshot {
            sessions: self.sessions.values().cloned().collect(),
            messages: self
                .messages
                .iter()
                .map(|(id, m)| (*id, m.clone()))
                .collect(),
            deliveries: self.deliveries.values().cloned().collect(),
            release_ids: self.release_ids.iter().cloned().collect(),
            retained: self.retained.values().cloned().collect(),
        }
    }

    /// Records held, of every kind.
    pub fn len(&self) -> usize {
        self.sessions.len()
            + self.messages.len()
            + self.deliveries.len()
            + self.release_ids.len()
            + self.retained.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
