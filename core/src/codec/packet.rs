//! The packet model: one set of types for MQTT 3.1, 3.1.1 and 5.0.
//!
//! Fields that exist only in 5.0 (properties, most reason codes) are empty or defaulted for the
//! older versions; the encoder leaves them out there. Packet identifiers are [`PacketId`], never
//! a 0-as-none `u16`. Payloads and strings are shared slices of the receive buffer.

use alloc::vec::Vec;
use bytes::Bytes;
use core::num::NonZeroU16;

use super::properties::Properties;
use super::reason::{
    AuthReason, ConnectReason, DisconnectReason, PubAckReason, PubRelReason, SubAckReason,
    UnsubAckReason,
};
use crate::string::MqttString;
use crate::topic::{TopicFilter, TopicName};

/// The protocol version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V3_1_1,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub const fn level(self) -> u8 {
        match self {
            Self::V3_1 => 3,
            Self::V3_1_1 => 4,
            Self::V5 => 5,
        }
    }

    /// The protocol name of CONNECT.
    pub const fn protocol_name(self) -> &'static str {
        match self {
            Self::V3_1 => "MQIsdp",
            Self::V3_1_1 | Self::V5 => "MQTT",
        }
    }

    /// Whether this is MQTT 5.0 (properties and reason codes on the wire).
    pub const fn is_v5(self) -> bool {
        matches!(self, Self::V5)
    }
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum QoS {
    /// At most once.
    #[default]
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for 0, 1 or 2.
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }

    /// 0, 1 or 2.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }
}

/// A packet identifier: never zero (3.1.1 [MQTT-2.3.1-1], 5.0 [MQTT-2.2.1-3]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    /// Identifier 1, the first one a sender hands out.
    pub const MIN: Self = Self(NonZeroU16::MIN);

    /// The identifier for a non-zero value.
    pub const fn new(value: u16) -> Option<Self> {
        match NonZeroU16::new(value) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// The value on the wire.
    pub const fn get(self) -> u16 {
        self.0.get()
    }

    /// The next identifier, wrapping from 65535 to 1.
    #[must_use]
    pub const fn next(self) -> Self {
        match NonZeroU16::new(self.0.get().wrapping_add(1)) {
            Some(v) => Self(v),
            None => Self(NonZeroU16::MIN),
        }
    }
}

impl From<NonZeroU16> for PacketId {
    fn from(value: NonZeroU16) -> Self {
        Self(value)
    }
}

/// The control packet types (the high nibble of the first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// Client request to connect.
    Connect = 1,
    /// Connect acknowledgement.
    ConnAck = 2,
    /// Publish message.
    Publish = 3,
    /// QoS 1 publish acknowledgement.
    PubAck = 4,
    /// QoS 2 publish received.
    PubRec = 5,
    /// QoS 2 publish release.
    PubRel = 6,
    /// QoS 2 publish complete.
    PubComp = 7,
    /// Subscribe request.
    Subscribe = 8,
    /// Subscribe acknowledgement.
    SubAck = 9,
    /// Unsubscribe request.
    Unsubscribe = 10,
    /// Unsubscribe acknowledgement.
    UnsubAck = 11,
    /// Ping request.
    PingReq = 12,
    /// Ping response.
    PingResp = 13,
    /// Disconnect notification.
    Disconnect = 14,
    /// Authentication exchange (5.0 only).
    Auth = 15,
}

impl PacketType {
    /// The type for a nibble; 0 is reserved.
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Connect,
            2 => Self::ConnAck,
            3 => Self::Publish,
            4 => Self::PubAck,
            5 => Self::PubRec,
            6 => Self::PubRel,
            7 => Self::PubComp,
            8 => Self::Subscribe,
            9 => Self::SubAck,
            10 => Self::Unsubscribe,
            11 => Self::UnsubAck,
            12 => Self::PingReq,
            13 => Self::PingResp,
            14 => Self::Disconnect,
            15 => Self::Auth,
            _ => return None,
        })
    }

    /// The fixed-header flags every packet of this type must carry (PUBLISH's vary).
    pub const fn required_flags(self) -> Option<u8> {
        match self {
            Self::Publish => None,
            Self::PubRel | Self::Subscribe | Self::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }
}

/// A control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (boxed: it is rare and much larger than the rest).
    Connect(alloc::boxed::Box<Connect>),
    /// CONNACK.
    ConnAck(ConnAck),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK.
    PubAck(PubAck),
    /// PUBREC.
    PubRec(PubRec),
    /// PUBREL.
    PubRel(PubRel),
    /// PUBCOMP.
    PubComp(PubComp),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// SUBACK.
    SubAck(SubAck),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK.
    UnsubAck(UnsubAck),
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect),
    /// AUTH (5.0 only).
    Auth(Auth),
}

impl Packet {
    /// The packet's type.
    pub const fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect(_) => PacketType::Connect,
            Self::ConnAck(_) => PacketType::ConnAck,
            Self::Publish(_) => PacketType::Publish,
            Self::PubAck(_) => PacketType::PubAck,
            Self::PubRec(_) => PacketType::PubRec,
            Self::PubRel(_) => PacketType::PubRel,
            Self::PubComp(_) => PacketType::PubComp,
            Self::Subscribe(_) => PacketType::Subscribe,
            Self::SubAck(_) => PacketType::SubAck,
            Self::Unsubscribe(_) => PacketType::Unsubscribe,
            Self::UnsubAck(_) => PacketType::UnsubAck,
            Self::PingReq => PacketType::PingReq,
            Self::PingResp => PacketType::PingResp,
            Self::Disconnect(_) => PacketType::Disconnect,
            Self::Auth(_) => PacketType::Auth,
        }
    }
}

/// CONNECT: the client's first packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol name and level.
    pub protocol: ProtocolVersion,
    /// Clean Session (3.x) / Clean Start (5.0).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 turns it off.
    pub keep_alive: u16,
    /// 5.0 CONNECT properties.
    pub properties: Properties,
    /// Client identifier; may be empty.
    pub client_id: MqttString,
    /// The Will, when the Will Flag is set.
    pub will: Option<Will>,
    /// User name.
    pub username: Option<MqttString>,
    /// Password (binary data).
    pub password: Option<Bytes>,
}

/// The Will Message of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic to publish on.
    pub topic: TopicName,
    /// Message payload.
    pub payload: Bytes,
    /// QoS to publish at.
    pub qos: QoS,
    /// Publish as retained.
    pub retain: bool,
    /// 5.0 Will Properties.
    pub properties: Properties,
}

/// CONNACK: the server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Whether the server resumed a stored session.
    pub session_present: bool,
    /// Outcome (mapped to a 3.x return code for older clients).
    pub reason: ConnectReason,
    /// 5.0 CONNACK properties.
    pub properties: Properties,
}

/// PUBLISH: an application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Redelivery flag; always false at QoS 0.
    pub dup: bool,
    /// Delivery guarantee.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Topic; empty only for a 5.0 PUBLISH that uses a Topic Alias.
    pub topic: TopicName,
    /// Present exactly when QoS is 1 or 2.
    pub packet_id: Option<PacketId>,
    /// 5.0 PUBLISH properties.
    pub properties: Properties,
    /// Application payload, shared by every subscriber it is routed to.
    pub payload: Bytes,
}

/// PUBACK (and, as [`PubRec`], PUBREC): the two carry the same fields and reason codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubAck {
    /// Identifier of the PUBLISH acknowledged.
    pub packet_id: PacketId,
    /// 5.0 reason (Success for 3.x).
    pub reason: PubAckReason,
    /// 5.0 properties.
    pub properties: Properties,
}

/// PUBREC: same shape as PUBACK.
pub type PubRec = PubAck;

/// PUBREL (and, as [`PubComp`], PUBCOMP): the two carry the same fields and reason codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubRel {
    /// Identifier of the QoS 2 exchange.
    pub packet_id: PacketId,
    /// 5.0 reason (Success for 3.x).
    pub reason: PubRelReason,
    /// 5.0 properties.
    pub properties: Properties,
}

/// PUBCOMP: same shape as PUBREL.
pub type PubComp = PubRel;

impl PubAck {
    /// A plain successful acknowledgement.
    pub const fn success(packet_id: PacketId) -> Self {
        Self {
            packet_id,
            reason: PubAckReason::Success,
            properties: Properties::new(),
        }
    }
}

impl PubRel {
    /// A plain successful PUBREL / PUBCOMP.
    pub const fn success(packet_id: PacketId) -> Self {
        Self {
            packet_id,
            reason: PubRelReason::Success,
            properties: Properties::new(),
        }
    }
}

/// Retain Handling subscription option (5.0 section 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum RetainHandling {
    /// Send retained messages at subscribe time.
    #[default]
    SendAtSubscribe = 0,
    /// Send retained messages only if the subscription is new.
    SendIfNew = 1,
    /// Do not send retained messages at subscribe time.
    DoNotSend = 2,
}

/// Options of one subscription (just the QoS before 5.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS requested.
    pub qos: QoS,
    /// 5.0: do not send the client's own publications back to it.
    pub no_local: bool,
    /// 5.0: keep the RETAIN flag as published when forwarding.
    pub retain_as_published: bool,
    /// 5.0: when to send retained messages.
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options with just a QoS.
    pub const fn qos(qos: QoS) -> Self {
        Self {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }
    }
}

/// SUBSCRIBE: one or more topic filters with their options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Identifier echoed by SUBACK.
    pub packet_id: PacketId,
    /// 5.0 properties (Subscription Identifier, User Properties).
    pub properties: Properties,
    /// At least one filter with its options.
    pub filters: Vec<(TopicFilter, SubscriptionOptions)>,
}

/// SUBACK: one reason code per requested filter, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Identifier of the SUBSCRIBE.
    pub packet_id: PacketId,
    /// 5.0 properties.
    pub properties: Properties,
    /// Granted QoS or failure per filter.
    pub reasons: Vec<SubAckReason>,
}

/// UNSUBSCRIBE: one or more topic filters to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Identifier echoed by UNSUBACK.
    pub packet_id: PacketId,
    /// 5.0 properties.
    pub properties: Properties,
    /// At least one filter.
    pub filters: Vec<TopicFilter>,
}

/// UNSUBACK: 5.0 carries a reason code per filter; 3.x carries none (the list is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// Identifier of the UNSUBSCRIBE.
    pub packet_id: PacketId,
    /// 5.0 properties.
    pub properties: Properties,
    /// 5.0 result per filter.
    pub reasons: Vec<UnsubAckReason>,
}

/// DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// 5.0 reason (normal disconnection for 3.x).
    pub reason: DisconnectReason,
    /// 5.0 properties.
    pub properties: Properties,
}

impl Disconnect {
    /// A normal disconnection without properties.
    pub const fn normal() -> Self {
        Self {
            reason: DisconnectReason::NormalDisconnection,
            properties: Properties::new(),
        }
    }
}

/// AUTH (5.0 enhanced authentication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// Step of the exchange.
    pub reason: AuthReason,
    /// Authentication Method / Data and more.
    pub properties: Properties,
}
