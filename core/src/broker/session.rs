//! [`Session`]: the state MQTT keeps per client identifier, across connections when persistent
//! (3.1.1 section 4.1): subscriptions, the outgoing in-flight window, the queue behind it, and
//! the QoS 2 packet identifiers received but not yet released.
//!
//! Never: grow without bound (the queue obeys the configured limits), or know about sockets.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;
use bytes::Bytes;

use super::ConnId;
use crate::codec::{PacketId, Properties, QoS, SubscriptionOptions};
use crate::string::MqttString;
use crate::time::Instant;
use crate::topic::{TopicFilter, TopicName};

/// An application message as the broker holds it: one allocation per received PUBLISH, shared
/// by every queue and in-flight entry it is routed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    /// Number for the store (unique for the broker's and its store's lifetime).
    pub(crate) id: u64,
    pub(crate) topic: TopicName,
    pub(crate) payload: Bytes,
    pub(crate) qos: QoS,
    pub(crate) properties: Properties,
}

impl Message {
    pub(crate) fn from_stored(id: u64, m: crate::store::StoredMessage) -> Self {
        Self {
            id,
            topic: m.topic,
            payload: m.payload,
            qos: m.qos,
            properties: m.properties,
        }
    }

    pub(crate) fn to_stored(&self) -> crate::store::StoredMessage {
        crate::store::StoredMessage {
            topic: self.topic.clone(),
            qos: self.qos,
            properties: self.properties.clone(),
            payload: self.payload.clone(),
        }
    }
}

/// A message on its way to one session, at the QoS it will be delivered with.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) message: Arc<Message>,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    /// Position in the session's stored outgoing order; 0 when not stored (clean session,
    /// QoS 0, or persistence off).
    pub(crate) seq: u64,
}

/// Where an outgoing QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InflightState {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    AwaitingAck,
    /// PUBREL sent; waiting for PUBCOMP.
    AwaitingComp,
}

#[derive(Debug, Clone)]
pub(crate) struct Inflight {
    pub(crate) id: PacketId,
    pub(crate) delivery: Delivery,
    pub(crate) state: InflightState,
    pub(crate) sent_at: Instant,
}

/// Identifies a session in the routing index (stable while the session lives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct SessionKey(pub(crate) u64);

#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) client_id: MqttString,
    /// Kept after the connection ends (clean session 0).
    pub(crate) persistent: bool,
    pub(crate) conn: Option<ConnId>,
    pub(crate) subscriptions: BTreeMap<TopicFilter, SubscriptionOptions>,
    /// Outgoing QoS 1/2 messages in the order they were first sent.
    pub(crate) inflight: VecDeque<Inflight>,
    /// Messages waiting for room in the in-flight window or the socket.
    pub(crate) queue: VecDeque<Delivery>,
    pub(crate) queued_bytes: usize,
    /// QoS 0 deliveries in `queue`.
    queued_qos0: usize,
    /// QoS 2 packet identifiers received (PUBREC sent) whose PUBREL has not arrived.
    pub(crate) awaiting_release: BTreeSet<PacketId>,
    next_id: PacketId,
    /// Next [`Delivery::seq`] (starts at 1).
    pub(crate) next_seq: u64,
    pub(crate) dropped: u64,
    /// Drops already reported in an event; see `Broker::enqueue`.
    pub(crate) dropped_reported: u64,
    /// Publisher flow control: acknowledgements held until this session's queue drains.
    pub(crate) held_acks: Vec<(ConnId, crate::codec::Packet)>,
    /// When the first of `held_acks` was held.
    pub(crate) hold_since: Option<Instant>,
    /// Held acknowledgements longer than allowed: holds none until the queue drains.
    pub(crate) hold_expired: bool,
    /// When a persistent session went offline (for `BrokerConfig::session_expiry`).
    pub(crate) offline_since: Option<Instant>,
}

/// Outcome of offering a message to a full queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    Yes,
    /// Queued after dropping an older QoS 0 message.
    DisplacedOldest,
    /// Not queued.
    Dropped,
}

impl Session {
    pub(crate) fn new(client_id: MqttString, persistent: bool) -> Self {
        Self {
            client_id,
            persistent,
            conn: None,
            subscriptions: BTreeMap::new(),
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            queued_qos0: 0,
            awaiting_release: BTreeSet::new(),
            next_id: PacketId::MIN,
            next_seq: 1,
            dropped: 0,
            dropped_reported: 0,
            held_acks: Vec::new(),
            hold_since: None,
            hold_expired: false,
            offline_since: None,
        }
    }

    /// A packet identifier not used by any in-flight message ([MQTT-2.3.1-2], [MQTT-2.3.1-4]).
    /// The caller ensures the window is smaller than 65,535 so one exists.
    pub(crate) fn allocate_id(&mut self) -> PacketId {
        loop {
            let id = self.next_id;
            self.next_id = id.next();
            if !self.inflight.iter().any(|f| f.id == id) {
                return id;
            }
        }
    }

    /// Appends to the queue, applying the limits and overflow policy.
    pub(crate) fn enqueue(
        &mut self,
        delivery: Delivery,
        max_messages: usize,
        max_bytes: usize,
        drop_oldest_qos0: bool,
    ) -> Enqueued {
        let size = delivery.message.payload.len();
        let fits = |s: &Self| s.queue.len() < max_messages && s.queued_bytes + size <= max_bytes;
        let mut outcome = Enqueued::Yes;
        if !fits(self) {
            if !drop_oldest_qos0 || size > max_bytes {
                self.dropped += 1;
                return Enqueued::Dropped;
            }
            while !fits(self) {
                // O(1) in the common cases: no QoS 0 queued at all, or one at the front.
                let oldest_qos0 = if self.queued_qos0 == 0 {
                    None
                } else if self.queue.front().is_some_and(|d| d.qos == QoS::AtMostOnce) {
                    Some(0)
                } else {
                    self.queue.iter().position(|d| d.qos == QoS::AtMostOnce)
                };
                let Some(at) = oldest_qos0 else {
                    self.dropped += 1;
                    return Enqueued::Dropped;
                };
                if let Some(old) = self.queue.remove(at) {
                    self.queued_qos0 -= 1;
                    self.queued_bytes -= old.message.payload.len();
                    self.dropped += 1;
                    outcome = Enqueued::DisplacedOldest;
                }
            }
        }
        self.queued_bytes += size;
        if delivery.qos == QoS::AtMostOnce {
            self.queued_qos0 += 1;
        }
        self.queue.push_back(delivery);
        outcome
    }

    pub(crate) fn pop_queue(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        self.queued_bytes -= d.message.payload.len();
        if d.qos == QoS::AtMostOnce {
            self.queued_qos0 -= 1;
        }
        Some(d)
    }

    pub(crate) fn inflight_position(&self, id: PacketId) -> Option<usize> {
        self.inflight.iter().position(|f| f.id == id)
    }
}
