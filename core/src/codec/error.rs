//! The codec's two error types: [`DecodeError`] (the peer sent bytes we must refuse) and
//! [`EncodeError`] (we were asked to send a packet the spec forbids).
//!
//! Each decode variant names the normative statement it enforces and maps to the MQTT 5.0
//! reason code a server sends in DISCONNECT (or CONNACK) before closing. "Need more bytes" is
//! not an error: see [`Decoded::NeedMore`](super::Decoded::NeedMore).

use core::fmt;

use super::PacketType;
use super::properties::{PropertyContext, PropertyId};
use super::reason::DisconnectReason;
use crate::string::StringError;
use crate::topic::TopicError;

/// Why bytes from the peer are not a valid MQTT packet. The connection must be closed
/// (3.1.1 [MQTT-4.8.0-1], 5.0 section 4.13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// A Variable Byte Integer (e.g. the Remaining Length) runs over four bytes.
    VarIntTooLong,
    /// A Variable Byte Integer uses more bytes than its value needs: 5.0 [MQTT-1.5.5-1].
    VarIntNotMinimal,
    /// The packet is larger than the maximum packet size; found from the fixed header alone,
    /// before the body is buffered.
    PacketTooLarge {
        /// Whole packet size in bytes.
        size: usize,
        /// The configured maximum.
        max: u32,
    },
    /// Packet type 0, or 15 (AUTH) before MQTT 5.0: reserved.
    ReservedPacketType {
        /// The type nibble.
        packet_type: u8,
    },
    /// Fixed-header flag bits differ from the values the spec lists: 3.1.1 [MQTT-2.2.2-1]
    /// [MQTT-2.2.2-2], 5.0 [MQTT-2.1.3-1]; PUBREL, SUBSCRIBE and UNSUBSCRIBE must have 0b0010
    /// ([MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1]); DISCONNECT 0 (3.1.1 [MQTT-3.14.1-1]);
    /// AUTH 0 (5.0 [MQTT-3.15.1-1]).
    InvalidHeaderFlags {
        /// The packet type.
        packet_type: PacketType,
        /// The flag nibble received.
        flags: u8,
    },
    /// PUBLISH with both QoS bits set: [MQTT-3.3.1-4].
    InvalidQoS,
    /// QoS 0 PUBLISH with DUP set: [MQTT-3.3.1-2].
    DupOnQoS0,
    /// A field runs past the end of the packet.
    Truncated,
    /// Bytes remain after the packet's last field.
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// A string breaks the UTF-8 rules: 3.1.1 [MQTT-1.5.3-1] [MQTT-1.5.3-2],
    /// 5.0 [MQTT-1.5.4-1] [MQTT-1.5.4-2] [MQTT-1.5.7-1].
    InvalidString(StringError),
    /// Packet identifier 0 where one is required: 3.1.1 [MQTT-2.3.1-1], 5.0 [MQTT-2.2.1-3].
    PacketIdZero,
    /// PUBLISH topic name invalid: wildcards ([MQTT-3.3.2-2]) or empty (3.1.1 [MQTT-4.7.3-1];
    /// 5.0 allows empty only with a Topic Alias).
    InvalidTopicName(TopicError),
    /// A SUBSCRIBE or UNSUBSCRIBE topic filter is invalid: [MQTT-4.7.1-2], [MQTT-4.7.1-3],
    /// [MQTT-4.7.3-1].
    InvalidTopicFilter(TopicError),
    /// Response Topic is not a valid topic name: 5.0 [MQTT-3.3.2-14].
    InvalidResponseTopic(TopicError),
    /// CONNECT protocol name is neither "MQTT" nor "MQIsdp": 3.1.1 [MQTT-3.1.2-1],
    /// 5.0 [MQTT-3.1.2-1].
    InvalidProtocolName,
    /// CONNECT protocol level not supported; the server answers CONNACK 0x01 (3.x) or 0x84 (5.0)
    /// and closes: 3.1.1 [MQTT-3.1.2-2], 5.0 [MQTT-3.1.2-2].
    UnsupportedProtocolVersion {
        /// The level byte received.
        level: u8,
    },
    /// CONNECT reserved flag bit set: [MQTT-3.1.2-3].
    ConnectReservedFlag,
    /// Will QoS not 0 with Will Flag 0: 3.1.1 [MQTT-3.1.2-13], 5.0 [MQTT-3.1.2-11].
    WillQoSWithoutWill,
    /// Will QoS 3: 3.1.1 [MQTT-3.1.2-14], 5.0 [MQTT-3.1.2-12].
    InvalidWillQoS,
    /// Will Retain set with Will Flag 0: 3.1.1 [MQTT-3.1.2-15], 5.0 [MQTT-3.1.2-13].
    WillRetainWithoutWill,
    /// Password Flag set with User Name Flag 0 (3.1 and 3.1.1 only): 3.1.1 [MQTT-3.1.2-22].
    PasswordWithoutUsername,
    /// CONNACK acknowledge flags with reserved bits set: 5.0 [MQTT-3.2.2-1].
    ConnAckReservedFlags,
    /// A reason or return code not defined for this packet: 3.1.1 [MQTT-3.9.3-2],
    /// 5.0 [MQTT-3.2.2-8] [MQTT-3.4.2-1] [MQTT-3.5.2-1] [MQTT-3.6.2-1] [MQTT-3.7.2-1]
    /// [MQTT-3.9.3-2] [MQTT-3.11.3-2] [MQTT-3.14.2-1] [MQTT-3.15.2-1].
    InvalidReasonCode {
        /// The packet type.
        packet_type: PacketType,
        /// The code received.
        code: u8,
    },
    /// SUBSCRIBE without any topic filter: 3.1.1 [MQTT-3.8.3-3], 5.0 [MQTT-3.8.3-2].
    EmptySubscribe,
    /// UNSUBSCRIBE without any topic filter: [MQTT-3.10.3-2].
    EmptyUnsubscribe,
    /// SUBACK without any return code.
    EmptySubAck,
    /// Subscription options with reserved bits set or requested QoS 3: 3.1.1 [MQTT-3.8.3-4],
    /// 5.0 [MQTT-3.8.3-5].
    InvalidSubscriptionOptions,
    /// Retain Handling 3 (5.0 section 3.8.3.1: a Protocol Error).
    InvalidRetainHandling,
    /// No Local on a shared subscription: 5.0 [MQTT-3.8.3-4].
    NoLocalOnSharedSubscription,
    /// A property identifier the spec does not define.
    UnknownProperty {
        /// The identifier received.
        id: u32,
    },
    /// A property on a packet that may not carry it (5.0 section 2.2.2.2).
    PropertyNotAllowed {
        /// The property.
        id: PropertyId,
        /// Where it appeared.
        context: PropertyContext,
    },
    /// A property repeated where only one is allowed (5.0 section 2.2.2.2: a Protocol Error).
    DuplicateProperty {
        /// The property.
        id: PropertyId,
    },
    /// A property value the spec forbids (a flag not 0 or 1; Topic Alias, Receive Maximum,
    /// Maximum Packet Size or Subscription Identifier of 0).
    InvalidPropertyValue {
        /// The property.
        id: PropertyId,
    },
}

impl DecodeError {
    /// The MQTT 5.0 reason code to send before closing (DISCONNECT, or CONNACK during connect).
    pub const fn reason_code(&self) -> DisconnectReason {
        match self {
            Self::PacketTooLarge { .. } => DisconnectReason::PacketTooLarge,
            Self::UnknownProperty { .. }
            | Self::PropertyNotAllowed { .. }
            | Self::DuplicateProperty { .. }
            | Self::InvalidPropertyValue { .. }
            | Self::EmptySubscribe
            | Self::EmptyUnsubscribe
            | Self::InvalidRetainHandling
            | Self::NoLocalOnSharedSubscription
            | Self::InvalidProtocolName
            | Self::UnsupportedProtocolVersion { .. } => DisconnectReason::ProtocolError,
            Self::InvalidTopicName(_) => DisconnectReason::TopicNameInvalid,
            Self::InvalidTopicFilter(_) => DisconnectReason::TopicFilterInvalid,
            _ => DisconnectReason::MalformedPacket,
        }
    }

    /// The normative statement this error enforces, where the spec numbers one
    /// (3.1.1 numbering where the two specs differ).
    pub const fn statement(&self) -> Option<&'static str> {
        Some(match self {
            Self::InvalidTopicName(TopicError::WildcardInName) => "MQTT-3.3.2-2",
            Self::InvalidTopicName(e) | Self::InvalidTopicFilter(e) => return e.statement_v311(),
            Self::VarIntNotMinimal => "MQTT-1.5.5-1",
            Self::InvalidHeaderFlags { .. } => "MQTT-2.2.2-1",
            Self::InvalidQoS => "MQTT-3.3.1-4",
            Self::DupOnQoS0 => "MQTT-3.3.1-2",
            Self::InvalidString(StringError::NullCharacter) => "MQTT-1.5.3-2",
            Self::InvalidString(_) => "MQTT-1.5.3-1",
            Self::PacketIdZero => "MQTT-2.3.1-1",
            Self::InvalidResponseTopic(_) => "MQTT-3.3.2-14",
            Self::InvalidProtocolName => "MQTT-3.1.2-1",
            Self::UnsupportedProtocolVersion { .. } => "MQTT-3.1.2-2",
            Self::ConnectReservedFlag => "MQTT-3.1.2-3",
            Self::WillQoSWithoutWill => "MQTT-3.1.2-13",
            Self::InvalidWillQoS => "MQTT-3.1.2-14",
            Self::WillRetainWithoutWill => "MQTT-3.1.2-15",
            Self::PasswordWithoutUsername => "MQTT-3.1.2-22",
            Self::ConnAckReservedFlags => "MQTT-3.2.2-1",
            Self::InvalidReasonCode { .. } => "MQTT-3.9.3-2",
            Self::EmptySubscribe => "MQTT-3.8.3-3",
            Self::EmptyUnsubscribe => "MQTT-3.10.3-2",
            Self::InvalidSubscriptionOptions => "MQTT-3.8.3-4",
            Self::NoLocalOnSharedSubscription => "MQTT-3.8.3-4",
            _ => return None,
        })
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::VarIntTooLong => f.write_str("variable byte integer longer than four bytes"),
            Self::VarIntNotMinimal => f.write_str("variable byte integer not in fewest bytes"),
            Self::PacketTooLarge { size, max } => {
                write!(
                    f,
                    "packet of {size} bytes exceeds maximum packet size {max}"
                )
            }
            Self::ReservedPacketType { packet_type } => {
                write!(f, "reserved packet type {packet_type}")
            }
            Self::InvalidHeaderFlags { packet_type, flags } => {
                write!(
                    f,
                    "invalid fixed header flags {flags:#06b} for {packet_type:?}"
                )
            }
            Self::InvalidQoS => f.write_str("PUBLISH with QoS 3"),
            Self::DupOnQoS0 => f.write_str("QoS 0 PUBLISH with DUP set"),
            Self::Truncated => f.write_str("field runs past the end of the packet"),
            Self::TrailingBytes { count } => write!(f, "{count} bytes after the last field"),
            Self::InvalidString(e) => write!(f, "{e}"),
            Self::PacketIdZero => f.write_str("packet identifier 0"),
            Self::InvalidTopicName(e) => write!(f, "invalid topic name: {e}"),
            Self::InvalidTopicFilter(e) => write!(f, "invalid topic filter: {e}"),
            Self::InvalidResponseTopic(e) => write!(f, "invalid response topic: {e}"),
            Self::InvalidProtocolName => f.write_str("unknown protocol name"),
            Self::UnsupportedProtocolVersion { level } => {
                write!(f, "unsupported protocol level {level}")
            }
            Self::ConnectReservedFlag => f.write_str("CONNECT reserved flag set"),
            Self::WillQoSWithoutWill => f.write_str("will QoS set without will flag"),
            Self::InvalidWillQoS => f.write_str("will QoS 3"),
            Self::WillRetainWithoutWill => f.write_str("will retain set without will flag"),
            Self::PasswordWithoutUsername => f.write_str("password flag without user name flag"),
            Self::ConnAckReservedFlags => f.write_str("CONNACK reserved flags set"),
            Self::InvalidReasonCode { packet_type, code } => {
                write!(f, "reason code {code:#04x} not allowed in {packet_type:?}")
            }
            Self::EmptySubscribe => f.write_str("SUBSCRIBE without topic filters"),
            Self::EmptyUnsubscribe => f.write_str("UNSUBSCRIBE without topic filters"),
            Self::EmptySubAck => f.write_str("SUBACK without return codes"),
            Self::InvalidSubscriptionOptions => f.write_str("invalid subscription options"),
            Self::InvalidRetainHandling => f.write_str("retain handling 3"),
            Self::NoLocalOnSharedSubscription => f.write_str("no local on shared subscription"),
            Self::UnknownProperty { id } => write!(f, "unknown property {id:#04x}"),
            Self::PropertyNotAllowed { id, context } => {
                write!(f, "property {id:?} not allowed in {context:?}")
            }
            Self::DuplicateProperty { id } => write!(f, "property {id:?} repeated"),
            Self::InvalidPropertyValue { id } => write!(f, "invalid value for property {id:?}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DecodeError {}

/// Why a packet cannot be encoded. Nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The packet exceeds the largest Remaining Length, or the receiver's maximum packet size
    /// (5.0 [MQTT-3.1.2-24], [MQTT-3.2.2-15]).
    PacketTooLarge {
        /// Whole packet size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The packet type does not exist in this protocol version (AUTH before 5.0).
    PacketNotInVersion {
        /// The packet type.
        packet_type: PacketType,
    },
    /// A QoS 0 PUBLISH with a packet identifier, or a QoS 1/2 PUBLISH without one
    /// ([MQTT-2.3.1-5] / 5.0 [MQTT-2.2.1-2], [MQTT-2.3.1-1]).
    PacketIdMismatch,
    /// DUP set on a QoS 0 PUBLISH: [MQTT-3.3.1-2].
    DupOnQoS0,
    /// An empty topic name where none is allowed (before 5.0, or without a Topic Alias).
    EmptyTopicName,
    /// Binary data longer than 65,535 bytes.
    BinaryTooLong,
    /// A password without a user name before 5.0: 3.1.1 [MQTT-3.1.2-22].
    PasswordWithoutUsername,
    /// SUBSCRIBE, UNSUBSCRIBE or SUBACK with an empty list.
    EmptyList,
    /// No Local on a shared subscription: 5.0 [MQTT-3.8.3-4].
    NoLocalOnSharedSubscription,
    /// A property on a packet that may not carry it.
    PropertyNotAllowed {
        /// The property.
        id: PropertyId,
        /// Where it was put.
        context: PropertyContext,
    },
    /// A property repeated where only one is allowed.
    DuplicateProperty {
        /// The property.
        id: PropertyId,
    },
    /// A property value the spec forbids.
    InvalidPropertyValue {
        /// The property.
        id: PropertyId,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PacketTooLarge { size, max } => {
                write!(f, "packet of {size} bytes exceeds the limit of {max}")
            }
            Self::PacketNotInVersion { packet_type } => {
                write!(f, "{packet_type:?} does not exist in this protocol version")
            }
            Self::PacketIdMismatch => f.write_str("packet identifier does not fit the QoS"),
            Self::DupOnQoS0 => f.write_str("DUP on a QoS 0 PUBLISH"),
            Self::EmptyTopicName => f.write_str("empty topic name without topic alias"),
            Self::BinaryTooLong => f.write_str("binary data longer than 65535 bytes"),
            Self::PasswordWithoutUsername => f.write_str("password without user name before 5.0"),
            Self::EmptyList => f.write_str("empty topic filter or reason code list"),
            Self::NoLocalOnSharedSubscription => f.write_str("no local on shared subscription"),
            Self::PropertyNotAllowed { id, context } => {
                write!(f, "property {id:?} not allowed in {context:?}")
            }
            Self::DuplicateProperty { id } => write!(f, "property {id:?} repeated"),
            Self::InvalidPropertyValue { id } => write!(f, "invalid value for property {id:?}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for EncodeError {}
