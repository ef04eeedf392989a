//! MQTT 5.0 properties (section 2.2.2): every property with its wire type, the packets that may
//! carry it, and the rule that only User Property and (on PUBLISH) Subscription Identifier may
//! repeat.
//!
//! [`Properties`] keeps the properties in wire order, so a decoded packet re-encodes to the same
//! bytes and User Properties keep their order (5.0 [MQTT-3.3.2-18], [MQTT-3.1.3-10]).
//! Never: accept a property on a packet the spec does not allow it on.

use alloc::vec::Vec;
use bytes::{BufMut, Bytes};

use super::wire::{self, MAX_VAR_INT, Reader};
use super::{DecodeError, EncodeError};
use crate::string::MqttString;
use crate::topic::TopicName;

/// Where a property list sits: a packet type, or the Will Properties inside CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PropertyContext {
    /// CONNECT's own properties.
    Connect,
    /// The Will Properties in the CONNECT payload.
    Will,
    /// CONNACK.
    ConnAck,
    /// PUBLISH.
    Publish,
    /// PUBACK.
    PubAck,
    /// PUBREC.
    PubRec,
    /// PUBREL.
    PubRel,
    /// PUBCOMP.
    PubComp,
    /// SUBSCRIBE.
    Subscribe,
    /// SUBACK.
    SubAck,
    /// UNSUBSCRIBE.
    Unsubscribe,
    /// UNSUBACK.
    UnsubAck,
    /// DISCONNECT.
    Disconnect,
    /// AUTH.
    Auth,
}

macro_rules! property_ids {
    ($( $(#[$meta:meta])* $name:ident = $id:literal : [$($ctx:ident),+], )+) => {
        /// The identifier byte of each MQTT 5.0 property.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum PropertyId {
            $( $(#[$meta])* $name = $id, )+
        }

        impl PropertyId {
            /// Every property identifier.
            pub const ALL: &'static [Self] = &[$(Self::$name),+];

            /// The identifier for a number, if the spec defines one.
            pub const fn from_u32(id: u32) -> Option<Self> {
                match id {
                    $( $id => Some(Self::$name), )+
                    _ => None,
                }
            }

            /// Whether a property list in `context` may carry this property.
            pub const fn allowed_in(self, context: PropertyContext) -> bool {
                match self {
                    $( Self::$name => matches!(context, $(PropertyContext::$ctx)|+), )+
                }
            }
        }
    };
}

property_ids! {
    /// Payload Format Indicator (byte).
    PayloadFormatIndicator = 0x01: [Publish, Will],
    /// Message Expiry Interval (four-byte integer).
    MessageExpiryInterval = 0x02: [Publish, Will],
    /// Content Type (UTF-8 string).
    ContentType = 0x03: [Publish, Will],
    /// Response Topic (UTF-8 string, a topic name).
    ResponseTopic = 0x08: [Publish, Will],
    /// Correlation Data (binary data).
    CorrelationData = 0x09: [Publish, Will],
    /// Subscription Identifier (variable byte integer).
    SubscriptionIdentifier = 0x0B: [Publish, Subscribe],
    /// Session Expiry Interval (four-byte integer).
    SessionExpiryInterval = 0x11: [Connect, ConnAck, Disconnect],
    /// Assigned Client Identifier (UTF-8 string).
    AssignedClientIdentifier = 0x12: [ConnAck],
    /// Server Keep Alive (two-byte integer).
    ServerKeepAlive = 0x13: [ConnAck],
    /// Authentication Method (UTF-8 string).
    AuthenticationMethod = 0x15: [Connect, ConnAck, Auth],
    /// Authentication Data (binary data).
    AuthenticationData = 0x16: [Connect, ConnAck, Auth],
    /// Request Problem Information (byte).
    RequestProblemInformation = 0x17: [Connect],
    /// Will Delay Interval (four-byte integer).
    WillDelayInterval = 0x18: [Will],
    /// Request Response Information (byte).
    RequestResponseInformation = 0x19: [Connect],
    /// Response Information (UTF-8 string).
    ResponseInformation = 0x1A: [ConnAck],
    /// Server Reference (UTF-8 string).
    ServerReference = 0x1C: [ConnAck, Disconnect],
    /// Reason String (UTF-8 string).
    ReasonString = 0x1F: [ConnAck, PubAck, PubRec, PubRel, PubComp, SubAck, UnsubAck, Disconnect, Auth],
    /// Receive Maximum (two-byte integer).
    ReceiveMaximum = 0x21: [Connect, ConnAck],
    /// Topic Alias Maximum (two-byte integer).
    TopicAliasMaximum = 0x22: [Connect, ConnAck],
    /// Topic Alias (two-byte integer).
    TopicAlias = 0x23: [Publish],
    /// Maximum QoS (byte).
    MaximumQoS = 0x24: [ConnAck],
    /// Retain Available (byte).
    RetainAvailable = 0x25: [ConnAck],
    /// User Property (UTF-8 string pair).
    UserProperty = 0x26: [Connect, Will, ConnAck, Publish, PubAck, PubRec, PubRel, PubComp, Subscribe, SubAck, Unsubscribe, UnsubAck, Disconnect, Auth],
    /// Maximum Packet Size (four-byte integer).
    MaximumPacketSize = 0x27: [Connect, ConnAck],
    /// Wildcard Subscription Available (byte).
    WildcardSubscriptionAvailable = 0x28: [ConnAck],
    /// Subscription Identifier Available (byte).
    SubscriptionIdentifierAvailable = 0x29: [ConnAck],
    /// Shared Subscription Available (byte).
    SharedSubscriptionAvailable = 0x2A: [ConnAck],
}

impl PropertyId {
    /// Whether the property may appear more than once in `context`: User Property anywhere,
    /// Subscription Identifier in PUBLISH (5.0 section 2.2.2.2).
    pub const fn may_repeat_in(self, context: PropertyContext) -> bool {
        match self {
            Self::UserProperty => true,
            Self::SubscriptionIdentifier => matches!(context, PropertyContext::Publish),
            _ => false,
        }
    }
}

/// One MQTT 5.0 property with its value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Property {
    /// 0 = unspecified bytes, 1 = UTF-8 payload.
    PayloadFormatIndicator(u8),
    /// Lifetime of the message in seconds.
    MessageExpiryInterval(u32),
    /// MIME-like description of the payload.
    ContentType(MqttString),
    /// Topic for a response (never contains wildcards, 5.0 [MQTT-3.3.2-14]).
    ResponseTopic(TopicName),
    /// Opaque data correlating a response with its request.
    CorrelationData(Bytes),
    /// Identifier of the matching subscription, 1 to 268,435,455.
    SubscriptionIdentifier(u32),
    /// Seconds the session outlives the connection.
    SessionExpiryInterval(u32),
    /// Client identifier the server assigned.
    AssignedClientIdentifier(MqttString),
    /// Keep alive the server imposes, in seconds.
    ServerKeepAlive(u16),
    /// Name of the extended authentication method.
    AuthenticationMethod(MqttString),
    /// Data of the extended authentication method.
    AuthenticationData(Bytes),
    /// 0 or 1: may the server send Reason String and User Properties on failures.
    RequestProblemInformation(u8),
    /// Seconds to wait before publishing the Will.
    WillDelayInterval(u32),
    /// 0 or 1: does the client ask for Response Information.
    RequestResponseInformation(u8),
    /// Basis for creating response topics.
    ResponseInformation(MqttString),
    /// Another server the client may use.
    ServerReference(MqttString),
    /// Human-readable diagnostic.
    ReasonString(MqttString),
    /// In-flight QoS 1/2 limit, never 0.
    ReceiveMaximum(u16),
    /// Highest Topic Alias accepted.
    TopicAliasMaximum(u16),
    /// Topic Alias of this PUBLISH, never 0.
    TopicAlias(u16),
    /// 0 or 1: the highest QoS the server supports.
    MaximumQoS(u8),
    /// 0 or 1: are retained messages supported.
    RetainAvailable(u8),
    /// Name and value.
    UserProperty(MqttString, MqttString),
    /// Largest packet accepted, never 0.
    MaximumPacketSize(u32),
    /// 0 or 1.
    WildcardSubscriptionAvailable(u8),
    /// 0 or 1.
    SubscriptionIdentifierAvailable(u8),
    /// 0 or 1.
    SharedSubscriptionAvailable(u8),
}

impl Property {
    /// The property's identifier.
    pub const fn id(&self) -> PropertyId {
        match self {
            Self::PayloadFormatIndicator(_) => PropertyId::PayloadFormatIndicator,
            Self::MessageExpiryInterval(_) => PropertyId::MessageExpiryInterval,
            Self::ContentType(_) => PropertyId::ContentType,
            Self::ResponseTopic(_) => PropertyId::ResponseTopic,
            Self::CorrelationData(_) => PropertyId::CorrelationData,
            Self::SubscriptionIdentifier(_) => PropertyId::SubscriptionIdentifier,
            Self::SessionExpiryInterval(_) => PropertyId::SessionExpiryInterval,
            Self::AssignedClientIdentifier(_) => PropertyId::AssignedClientIdentifier,
            Self::ServerKeepAlive(_) => PropertyId::ServerKeepAlive,
            Self::AuthenticationMethod(_) => PropertyId::AuthenticationMethod,
            Self::AuthenticationData(_) => PropertyId::AuthenticationData,
            Self::RequestProblemInformation(_) => PropertyId::RequestProblemInformation,
            Self::WillDelayInterval(_) => PropertyId::WillDelayInterval,
            Self::RequestResponseInformation(_) => PropertyId::RequestResponseInformation,
            Self::ResponseInformation(_) => PropertyId::ResponseInformation,
            Self::ServerReference(_) => PropertyId::ServerReference,
            Self::ReasonString(_) => PropertyId::ReasonString,
            Self::ReceiveMaximum(_) => PropertyId::ReceiveMaximum,
            Self::TopicAliasMaximum(_) => PropertyId::TopicAliasMaximum,
            Self::TopicAlias(_) => PropertyId::TopicAlias,
            Self::MaximumQoS(_) => PropertyId::MaximumQoS,
            Self::RetainAvailable(_) => PropertyId::RetainAvailable,
            Self::UserProperty(..) => PropertyId::UserProperty,
            Self::MaximumPacketSize(_) => PropertyId::MaximumPacketSize,
            Self::WildcardSubscriptionAvailable(_) => PropertyId::WildcardSubscriptionAvailable,
            Self::SubscriptionIdentifierAvailable(_) => PropertyId::SubscriptionIdentifierAvailable,
            Self::SharedSubscriptionAvailable(_) => PropertyId::SharedSubscriptionAvailable,
        }
    }

    /// Whether the value is one the spec allows (flags are 0 or 1; identifiers, Receive Maximum,
    /// Maximum Packet Size and Topic Alias are never 0; binary data fits its length prefix).
    pub fn is_valid_value(&self) -> bool {
        match self {
            Self::PayloadFormatIndicator(v)
            | Self::RequestProblemInformation(v)
            | Self::RequestResponseInformation(v)
            | Self::MaximumQoS(v)
            | Self::RetainAvailable(v)
            | Self::WildcardSubscriptionAvailable(v)
            | Self::SubscriptionIdentifierAvailable(v)
            | Self::SharedSubscriptionAvailable(v) => *v <= 1,
            Self::SubscriptionIdentifier(v) => (1..=MAX_VAR_INT).contains(v),
            Self::ReceiveMaximum(v) | Self::TopicAlias(v) => *v != 0,
            Self::MaximumPacketSize(v) => *v != 0,
            Self::CorrelationData(b) | Self::AuthenticationData(b) => {
                b.len() <= usize::from(u16::MAX)
            }
            Self::ResponseTopic(t) => !t.is_empty(),
            _ => true,
        }
    }

    fn encoded_len(&self) -> usize {
        let value = match self {
            Self::PayloadFormatIndicator(_)
            | Self::RequestProblemInformation(_)
            | Self::RequestResponseInformation(_)
            | Self::MaximumQoS(_)
            | Self::RetainAvailable(_)
            | Self::WildcardSubscriptionAvailable(_)
            | Self::SubscriptionIdentifierAvailable(_)
            | Self::SharedSubscriptionAvailable(_) => 1,
            Self::ServerKeepAlive(_)
            | Self::ReceiveMaximum(_)
            | Self::TopicAliasMaximum(_)
            | Self::TopicAlias(_) => 2,
            Self::MessageExpiryInterval(_)
            | Self::SessionExpiryInterval(_)
            | Self::WillDelayInterval(_)
            | Self::MaximumPacketSize(_) => 4,
            Self::SubscriptionIdentifier(v) => wire::var_int_len(*v),
            Self::ContentType(s)
            | Self::AssignedClientIdentifier(s)
            | Self::AuthenticationMethod(s)
            | Self::ResponseInformation(s)
            | Self::ServerReference(s)
            | Self::ReasonString(s) => wire::prefixed_len(s.len()),
            Self::ResponseTopic(t) => wire::prefixed_len(t.as_str().len()),
            Self::CorrelationData(b) | Self::AuthenticationData(b) => wire::prefixed_len(b.len()),
            Self::UserProperty(k, v) => wire::prefixed_len(k.len()) + wire::prefixed_len(v.len()),
        };
        // Every identifier is below 128, so it takes one byte as a Variable Byte Integer.
        1 + value
    }

    fn write(&self, out: &mut impl BufMut) {
        out.put_u8(self.id() as u8);
        match self {
            Self::PayloadFormatIndicator(v)
            | Self::RequestProblemInformation(v)
            | Self::RequestResponseInformation(v)
            | Self::MaximumQoS(v)
            | Self::RetainAvailable(v)
            | Self::WildcardSubscriptionAvailable(v)
            | Self::SubscriptionIdentifierAvailable(v)
            | Self::SharedSubscriptionAvailable(v) => out.put_u8(*v),
            Self::ServerKeepAlive(v)
            | Self::ReceiveMaximum(v)
            | Self::TopicAliasMaximum(v)
            | Self::TopicAlias(v) => out.put_u16(*v),
            Self::MessageExpiryInterval(v)
            | Self::SessionExpiryInterval(v)
            | Self::WillDelayInterval(v)
            | Self::MaximumPacketSize(v) => out.put_u32(*v),
            Self::SubscriptionIdentifier(v) => wire::put_var_int(out, *v),
            Self::ContentType(s)
            | Self::AssignedClientIdentifier(s)
            | Self::AuthenticationMethod(s)
            | Self::ResponseInformation(s)
            | Self::ServerReference(s)
            | Self::ReasonString(s) => wire::put_binary(out, s.as_bytes()),
            Self::ResponseTopic(t) => wire::put_binary(out, t.as_str().as_bytes()),
            Self::CorrelationData(b) | Self::AuthenticationData(b) => wire::put_binary(out, b),
            Self::UserProperty(k, v) => {
                wire::put_binary(out, k.as_bytes());
                wire::put_binary(out, v.as_bytes());
            }
        }
    }

    fn read(id: PropertyId, r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(match id {
            PropertyId::PayloadFormatIndicator => Self::PayloadFormatIndicator(r.u8()?),
            PropertyId::MessageExpiryInterval => Self::MessageExpiryInterval(r.u32()?),
            PropertyId::ContentType => Self::ContentType(r.string()?),
            PropertyId::ResponseTopic => Self::ResponseTopic(
                TopicName::new(r.string()?).map_err(DecodeError::InvalidResponseTopic)?,
            ),
            PropertyId::CorrelationData => Self::CorrelationData(r.binary()?),
            PropertyId::SubscriptionIdentifier => Self::SubscriptionIdentifier(r.var_int()?),
            PropertyId::SessionExpiryInterval => Self::SessionExpiryInterval(r.u32()?),
            PropertyId::AssignedClientIdentifier => Self::AssignedClientIdentifier(r.string()?),
            PropertyId::ServerKeepAlive => Self::ServerKeepAlive(r.u16()?),
            PropertyId::AuthenticationMethod => Self::AuthenticationMethod(r.string()?),
            PropertyId::AuthenticationData => Self::AuthenticationData(r.binary()?),
            PropertyId::RequestProblemInformation => Self::RequestProblemInformation(r.u8()?),
            PropertyId::WillDelayInterval => Self::WillDelayInterval(r.u32()?),
            PropertyId::RequestResponseInformation => Self::RequestResponseInformation(r.u8()?),
            PropertyId::ResponseInformation => Self::ResponseInformation(r.string()?),
            PropertyId::ServerReference => Self::ServerReference(r.string()?),
            PropertyId::ReasonString => Self::ReasonString(r.string()?),
            PropertyId::ReceiveMaximum => Self::ReceiveMaximum(r.u16()?),
            PropertyId::TopicAliasMaximum => Self::TopicAliasMaximum(r.u16()?),
            PropertyId::TopicAlias => Self::TopicAlias(r.u16()?),
            PropertyId::MaximumQoS => Self::MaximumQoS(r.u8()?),
            PropertyId::RetainAvailable => Self::RetainAvailable(r.u8()?),
            // 5.0 [MQTT-1.5.7-1]: both halves of the pair follow the string rules.
            PropertyId::UserProperty => Self::UserProperty(r.string()?, r.string()?),
            PropertyId::MaximumPacketSize => Self::MaximumPacketSize(r.u32()?),
            PropertyId::WildcardSubscriptionAvailable => {
                Self::WildcardSubscriptionAvailable(r.u8()?)
            }
            PropertyId::SubscriptionIdentifierAvailable => {
                Self::SubscriptionIdentifierAvailable(r.u8()?)
            }
            PropertyId::SharedSubscriptionAvailable => Self::SharedSubscriptionAvailable(r.u8()?),
        })
    }
}

/// A property list in wire order. Empty for MQTT 3.x packets.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Properties(Vec<Property>);

macro_rules! single_getter {
    ($( $(#[$meta:meta])* $fn:ident -> $ty:ty = $variant:ident; )+) => {
        $(
            $(#[$meta])*
            pub fn $fn(&self) -> Option<$ty> {
                self.0.iter().find_map(|p| match p {
                    Property::$variant(v) => Some(v.clone()),
                    _ => None,
                })
            }
        )+
    };
}

impl Properties {
    /// No properties.
    pub const fn new() -> Self {
        Self(Vec::new())
    }

    /// Wraps a list as it is; [`Packet::encode`](super::Packet::encode) checks it.
    pub fn from_vec(list: Vec<Property>) -> Self {
        Self(list)
    }

    /// Appends a property.
    pub fn push(&mut self, property: Property) {
        self.0.push(property);
    }

    /// Appends a property, builder style.
    #[must_use]
    pub fn with(mut self, property: Property) -> Self {
        self.0.push(property);
        self
    }

    /// The properties in wire order.
    pub fn iter(&self) -> core::slice::Iter<'_, Property> {
        self.0.iter()
    }

    /// The list itself.
    pub fn as_slice(&self) -> &[Property] {
        &self.0
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Removes every property for which `keep` is false.
    pub fn retain(&mut self, keep: impl FnMut(&Property) -> bool) {
        self.0.retain(keep);
    }

    /// The first property with this identifier.
    pub fn get(&self, id: PropertyId) -> Option<&Property> {
        self.0.iter().find(|p| p.id() == id)
    }

    /// User Properties in order.
    pub fn user_properties(&self) -> impl Iterator<Item = (&MqttString, &MqttString)> {
        self.0.iter().filter_map(|p| match p {
            Property::UserProperty(k, v) => Some((k, v)),
            _ => None,
        })
    }

    /// Subscription Identifiers in order.
    pub fn subscription_identifiers(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().filter_map(|p| match p {
            Property::SubscriptionIdentifier(v) => Some(*v),
            _ => None,
        })
    }

    single_getter! {
        /// Message Expiry Interval, seconds.
        message_expiry_interval -> u32 = MessageExpiryInterval;
        /// Session Expiry Interval, seconds.
        session_expiry_interval -> u32 = SessionExpiryInterval;
        /// Topic Alias.
        topic_alias -> u16 = TopicAlias;
        /// Topic Alias Maximum.
        topic_alias_maximum -> u16 = TopicAliasMaximum;
        /// Receive Maximum.
        receive_maximum -> u16 = ReceiveMaximum;
        /// Maximum Packet Size.
        maximum_packet_size -> u32 = MaximumPacketSize;
        /// Will Delay Interval, seconds.
        will_delay_interval -> u32 = WillDelayInterval;
        /// Server Keep Alive, seconds.
        server_keep_alive -> u16 = ServerKeepAlive;
        /// Reason String.
        reason_string -> MqttString = ReasonString;
        /// Authentication Method.
        authentication_method -> MqttString = AuthenticationMethod;
        /// Assigned Client Identifier.
        assigned_client_identifier -> MqttString = AssignedClientIdentifier;
    }

    /// Checks every property against `context`: allowed there, valid value, not repeated where
    /// repeats are forbidden. Returns the length of the list's body on the wire.
    pub(crate) fn checked_body_len(&self, context: PropertyContext) -> Result<usize, EncodeError> {
        let mut seen: u64 = 0;
        let mut len = 0usize;
        for p in &self.0 {
            let id = p.id();
            if !id.allowed_in(context) {
                return Err(EncodeError::PropertyNotAllowed { id, context });
            }
            if !p.is_valid_value() {
                return Err(EncodeError::InvalidPropertyValue { id });
            }
            let bit = 1u64 << (id as u8);
            if seen & bit != 0 && !id.may_repeat_in(context) {
                return Err(EncodeError::DuplicateProperty { id });
            }
            seen |= bit;
            len += p.encoded_len();
        }
        if len > MAX_VAR_INT as usize {
            return Err(EncodeError::PacketTooLarge {
                size: len,
                max: MAX_VAR_INT as usize,
            });
        }
        Ok(len)
    }

    /// Bytes the list takes, length prefix included, given its checked body length.
    pub(crate) fn wire_len(body_len: usize) -> usize {
        wire::var_int_len(u32::try_from(body_len).unwrap_or(MAX_VAR_INT)) + body_len
    }

    /// Writes the length prefix and the list (after [`Self::checked_body_len`]).
    pub(crate) fn write(&self, body_len: usize, out: &mut impl BufMut) {
        wire::put_var_int(out, u32::try_from(body_len).unwrap_or(MAX_VAR_INT));
        for p in &self.0 {
            p.write(out);
        }
    }

    /// Reads a length-prefixed property list and checks it against `context`.
    pub(crate) fn read(r: &mut Reader, context: PropertyContext) -> Result<Self, DecodeError> {
        let len = r.var_int()? as usize;
        if len == 0 {
            return Ok(Self::new());
        }
        let mut body = Reader::new(r.take(len)?);
        let mut list = Vec::new();
        let mut seen: u64 = 0;
        while !body.is_empty() {
            let raw = body.var_int()?;
            let id = PropertyId::from_u32(raw).ok_or(DecodeError::UnknownProperty { id: raw })?;
            if !id.allowed_in(context) {
                return Err(DecodeError::PropertyNotAllowed { id, context });
            }
            let bit = 1u64 << (id as u8);
            if seen & bit != 0 && !id.may_repeat_in(context) {
                return Err(DecodeError::DuplicateProperty { id });
            }
            seen |= bit;
            let property = Property::read(id, &mut body)?;
            if !property.is_valid_value() {
                return Err(DecodeError::InvalidPropertyValue { id });
            }
            list.push(property);
        }
        Ok(Self(list))
    }
}

impl FromIterator<Property> for Properties {
    fn from_iter<I: IntoIterator<Item = Property>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Properties {
    type Item = &'a Property;
    type IntoIter = core::slice::Iter<'a, Property>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}
