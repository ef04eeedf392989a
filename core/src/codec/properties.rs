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

impl PropertyContext {
    /// Every context, in declaration order (`context as usize` indexes it).
    pub const ALL: [Self; 14] = [
        Self::Connect,
        Self::Will,
        Self::ConnAck,
        Self::Publish,
        Self::PubAck,
        Self::PubRec,
        Self::PubRel,
        Self::PubComp,
        Self::Subscribe,
        Self::SubAck,
        Self::Unsubscribe,
        Self::UnsubAck,
        Self::Disconnect,
        Self::Auth,
    ];

    /// The properties a list in this context may carry, as a set of [`PropertyId::bit`]s: the
    /// table form of [`PropertyId::allowed_in`], for the per-property check of every list.
    #[inline]
    fn allowed_ids(self) -> u64 {
        const TABLE: [u64; PropertyContext::ALL.len()] = id_sets(false);
        TABLE.get(self as usize).copied().unwrap_or(0)
    }

    /// The properties that may repeat in this context, as a set of [`PropertyId::bit`]s: the
    /// table form of [`PropertyId::may_repeat_in`].
    #[inline]
    fn repeatable_ids(self) -> u64 {
        const TABLE: [u64; PropertyContext::ALL.len()] = id_sets(true);
        TABLE.get(self as usize).copied().unwrap_or(0)
    }
}

/// [`PropertyId::from_u32`] for every byte below 128, built at compile time.
// Evaluated at compile time only: an index out of bounds fails the build, never a run.
#[allow(clippy::indexing_slicing)]
const fn id_table() -> [Option<PropertyId>; 128] {
    let mut table = [None; 128];
    let mut id = 0;
    while id < table.len() {
        table[id] = PropertyId::from_u32(id as u32);
        id += 1;
    }
    table
}

/// For each context, the set of properties [`PropertyId::allowed_in`] it (or, with `repeat`,
/// that [`PropertyId::may_repeat_in`] it): the rules stay stated once, as `match`es, and the
/// hot checks use these tables, built at compile time.
// Evaluated at compile time only: an index out of bounds fails the build, never a run.
#[allow(clippy::indexing_slicing)]
const fn id_sets(repeat: bool) -> [u64; PropertyContext::ALL.len()] {
    let mut table = [0; PropertyContext::ALL.len()];
    let mut c = 0;
    while c < PropertyContext::ALL.len() {
        // The tables are indexed by `context as usize`.
        assert!(PropertyContext::ALL[c] as usize == c, "ALL is out of order");
        let mut i = 0;
        while i < PropertyId::ALL.len() {
            let (id, context) = (PropertyId::ALL[i], PropertyContext::ALL[c]);
            let member = if repeat {
                id.may_repeat_in(context)
            } else {
                id.allowed_in(context)
            };
            if member {
                table[c] |= id.bit();
            }
            i += 1;
        }
        c += 1;
    }
    table
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
    /// The identifier for a byte: [`Self::from_u32`] as a table, for the decoder.
    #[inline]
    fn from_byte(id: u8) -> Option<Self> {
        const TABLE: [Option<PropertyId>; 128] = id_table();
        TABLE.get(usize::from(id)).copied().flatten()
    }

    /// How the value is laid out on the wire (5.0 section 2.2.2.2), for skipping over it.
    const fn layout(self) -> ValueLayout {
        match self {
            Self::PayloadFormatIndicator
            | Self::RequestProblemInformation
            | Self::RequestResponseInformation
            | Self::MaximumQoS
            | Self::RetainAvailable
            | Self::WildcardSubscriptionAvailable
            | Self::SubscriptionIdentifierAvailable
            | Self::SharedSubscriptionAvailable => ValueLayout::Fixed(1),
            Self::ServerKeepAlive
            | Self::ReceiveMaximum
            | Self::TopicAliasMaximum
            | Self::TopicAlias => ValueLayout::Fixed(2),
            Self::MessageExpiryInterval
            | Self::SessionExpiryInterval
            | Self::WillDelayInterval
            | Self::MaximumPacketSize => ValueLayout::Fixed(4),
            Self::SubscriptionIdentifier => ValueLayout::VarInt,
            Self::ContentType
            | Self::ResponseTopic
            | Self::CorrelationData
            | Self::AssignedClientIdentifier
            | Self::AuthenticationMethod
            | Self::AuthenticationData
            | Self::ResponseInformation
            | Self::ServerReference
            | Self::ReasonString => ValueLayout::Prefixed(1),
            Self::UserProperty => ValueLayout::Prefixed(2),
        }
    }

    /// This identifier in a set of identifiers kept as a `u64` (every identifier is below 64).
    pub const fn bit(self) -> u64 {
        1 << (self as u8)
    }

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

/// How a property value is laid out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueLayout {
    /// A fixed number of bytes.
    Fixed(usize),
    /// A Variable Byte Integer.
    VarInt,
    /// This many fields of a two-byte length and that many bytes.
    Prefixed(usize),
}

/// Most properties [`count`] counts: a list is sized once up to this and grows past it as any
/// `Vec` does. Without a cap, a peer could make us reserve room for a huge list of tiny
/// properties that the read then refuses at the first one; 32 is more than real lists carry.
const COUNT_CAP: usize = 32;

/// How many properties the list body `bytes` holds (at most [`COUNT_CAP`]), to size the list
/// once before it is read. Only lengths are looked at; a malformed list is counted as far as
/// it goes, and reading it then fails.
fn count(mut bytes: &[u8]) -> usize {
    let mut count = 0;
    // Every identifier is below 128: one byte.
    while let Some((&id, value)) = bytes.split_first()
        && count < COUNT_CAP
    {
        let Some(id) = PropertyId::from_byte(id) else {
            break;
        };
        let len = match id.layout() {
            ValueLayout::Fixed(len) => len,
            ValueLayout::VarInt => value
                .iter()
                .position(|b| b & 0x80 == 0)
                .map_or(value.len(), |last| last + 1),
            ValueLayout::Prefixed(fields) => {
                let mut len = 0;
                for _ in 0..fields {
                    let field = value.get(len..).and_then(|rest| rest.first_chunk::<2>());
                    len += 2 + field.map_or(0, |&n| usize::from(u16::from_be_bytes(n)));
                }
                len
            }
        };
        count += 1;
        bytes = value.get(len..).unwrap_or_default();
    }
    count
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
        self.checked_value_len().is_some()
    }

    /// The value's length on the wire, or `None` when [`Self::is_valid_value`] is false: both
    /// in one `match`, as the encoder needs both for every property.
    #[inline]
    fn checked_value_len(&self) -> Option<usize> {
        let (valid, len) = match self {
            Self::PayloadFormatIndicator(v)
            | Self::RequestProblemInformation(v)
            | Self::RequestResponseInformation(v)
            | Self::MaximumQoS(v)
            | Self::RetainAvailable(v)
            | Self::WildcardSubscriptionAvailable(v)
            | Self::SubscriptionIdentifierAvailable(v)
            | Self::SharedSubscriptionAvailable(v) => (*v <= 1, 1),
            Self::ReceiveMaximum(v) | Self::TopicAlias(v) => (*v != 0, 2),
            Self::ServerKeepAlive(_) | Self::TopicAliasMaximum(_) => (true, 2),
            Self::MaximumPacketSize(v) => (*v != 0, 4),
            Self::MessageExpiryInterval(_)
            | Self::SessionExpiryInterval(_)
            | Self::WillDelayInterval(_) => (true, 4),
            Self::SubscriptionIdentifier(v) => {
                ((1..=MAX_VAR_INT).contains(v), wire::var_int_len(*v))
            }
            Self::ContentType(s)
            | Self::AssignedClientIdentifier(s)
            | Self::AuthenticationMethod(s)
            | Self::ResponseInformation(s)
            | Self::ServerReference(s)
            | Self::ReasonString(s) => (true, wire::prefixed_len(s.len())),
            Self::ResponseTopic(t) => (!t.is_empty(), wire::prefixed_len(t.as_str().len())),
            Self::CorrelationData(b) | Self::AuthenticationData(b) => (
                b.len() <= usize::from(u16::MAX),
                wire::prefixed_len(b.len()),
            ),
            Self::UserProperty(k, v) => (
                true,
                wire::prefixed_len(k.len()) + wire::prefixed_len(v.len()),
            ),
        };
        valid.then_some(len)
    }

    /// Writes the identifier and the value; a fixed-size value goes with its identifier in
    /// one write, a string or binary value with its length prefix.
    #[inline]
    fn write(&self, out: &mut impl BufMut) {
        let id = self.id() as u8;
        match self {
            Self::PayloadFormatIndicator(v)
            | Self::RequestProblemInformation(v)
            | Self::RequestResponseInformation(v)
            | Self::MaximumQoS(v)
            | Self::RetainAvailable(v)
            | Self::WildcardSubscriptionAvailable(v)
            | Self::SubscriptionIdentifierAvailable(v)
            | Self::SharedSubscriptionAvailable(v) => out.put_slice(&[id, *v]),
            Self::ServerKeepAlive(v)
            | Self::ReceiveMaximum(v)
            | Self::TopicAliasMaximum(v)
            | Self::TopicAlias(v) => {
                let [a, b] = v.to_be_bytes();
                out.put_slice(&[id, a, b]);
            }
            Self::MessageExpiryInterval(v)
            | Self::SessionExpiryInterval(v)
            | Self::WillDelayInterval(v)
            | Self::MaximumPacketSize(v) => {
                let [a, b, c, d] = v.to_be_bytes();
                out.put_slice(&[id, a, b, c, d]);
            }
            Self::SubscriptionIdentifier(v) => {
                out.put_u8(id);
                wire::put_var_int(out, *v);
            }
            Self::ContentType(s)
            | Self::AssignedClientIdentifier(s)
            | Self::AuthenticationMethod(s)
            | Self::ResponseInformation(s)
            | Self::ServerReference(s)
            | Self::ReasonString(s) => wire::put_prefixed(out, id, s.as_bytes()),
            Self::ResponseTopic(t) => wire::put_prefixed(out, id, t.as_str().as_bytes()),
            Self::CorrelationData(b) | Self::AuthenticationData(b) => {
                wire::put_prefixed(out, id, b)
            }
            Self::UserProperty(k, v) => {
                wire::put_prefixed(out, id, k.as_bytes());
                wire::put_binary(out, v.as_bytes());
            }
        }
    }

    /// Reads the value of property `id` and checks it as [`Self::is_valid_value`] does, in the
    /// same `match`: the checks that can fail on the wire are the numeric ones (flags, values
    /// that must not be 0); a string or binary value read from a two-byte length is valid once
    /// read.
    #[inline]
    fn read(id: PropertyId, r: &mut Reader) -> Result<Self, DecodeError> {
        let invalid = DecodeError::InvalidPropertyValue { id };
        let flag = |v: u8| if v <= 1 { Ok(v) } else { Err(invalid) };
        let non_zero_u16 = |v: u16| if v != 0 { Ok(v) } else { Err(invalid) };
        Ok(match id {
            PropertyId::PayloadFormatIndicator => Self::PayloadFormatIndicator(flag(r.u8()?)?),
            PropertyId::MessageExpiryInterval => Self::MessageExpiryInterval(r.u32()?),
            PropertyId::ContentType
            | PropertyId::AssignedClientIdentifier
            | PropertyId::AuthenticationMethod
            | PropertyId::ResponseInformation
            | PropertyId::ServerReference
            | PropertyId::ReasonString => Self::string_value(id, r.string()?),
            PropertyId::ResponseTopic => {
                Self::ResponseTopic(r.topic_name(DecodeError::InvalidResponseTopic)?)
            }
            PropertyId::CorrelationData => Self::CorrelationData(r.binary()?),
            PropertyId::SubscriptionIdentifier => match r.var_int()? {
                0 => return Err(invalid),
                v => Self::SubscriptionIdentifier(v),
            },
            PropertyId::SessionExpiryInterval => Self::SessionExpiryInterval(r.u32()?),
            PropertyId::ServerKeepAlive => Self::ServerKeepAlive(r.u16()?),
            PropertyId::AuthenticationData => Self::AuthenticationData(r.binary()?),
            PropertyId::RequestProblemInformation => {
                Self::RequestProblemInformation(flag(r.u8()?)?)
            }
            PropertyId::WillDelayInterval => Self::WillDelayInterval(r.u32()?),
            PropertyId::RequestResponseInformation => {
                Self::RequestResponseInformation(flag(r.u8()?)?)
            }
            PropertyId::ReceiveMaximum => Self::ReceiveMaximum(non_zero_u16(r.u16()?)?),
            PropertyId::TopicAliasMaximum => Self::TopicAliasMaximum(r.u16()?),
            PropertyId::TopicAlias => Self::TopicAlias(non_zero_u16(r.u16()?)?),
            PropertyId::MaximumQoS => Self::MaximumQoS(flag(r.u8()?)?),
            PropertyId::RetainAvailable => Self::RetainAvailable(flag(r.u8()?)?),
            // 5.0 [MQTT-1.5.7-1]: both halves of the pair follow the string rules.
            PropertyId::UserProperty => Self::UserProperty(r.string()?, r.string()?),
            PropertyId::MaximumPacketSize => match r.u32()? {
                0 => return Err(invalid),
                v => Self::MaximumPacketSize(v),
            },
            PropertyId::WildcardSubscriptionAvailable => {
                Self::WildcardSubscriptionAvailable(flag(r.u8()?)?)
            }
            PropertyId::SubscriptionIdentifierAvailable => {
                Self::SubscriptionIdentifierAvailable(flag(r.u8()?)?)
            }
            PropertyId::SharedSubscriptionAvailable => {
                Self::SharedSubscriptionAvailable(flag(r.u8()?)?)
            }
        })
    }

    /// The property `id` holding the string `s`, for the identifiers whose value is a plain
    /// UTF-8 string (one read path for all of them).
    #[inline]
    fn string_value(id: PropertyId, s: MqttString) -> Self {
        match id {
            PropertyId::ContentType => Self::ContentType(s),
            PropertyId::AssignedClientIdentifier => Self::AssignedClientIdentifier(s),
            PropertyId::AuthenticationMethod => Self::AuthenticationMethod(s),
            PropertyId::ResponseInformation => Self::ResponseInformation(s),
            PropertyId::ServerReference => Self::ServerReference(s),
            _ => Self::ReasonString(s),
        }
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
        /// Maximum QoS (0 or 1; absent means 2).
        maximum_qos -> u8 = MaximumQoS;
        /// Retain Available (0 or 1; absent means 1).
        retain_available -> u8 = RetainAvailable;
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
        let allowed = context.allowed_ids();
        let repeatable = context.repeatable_ids();
        let mut seen: u64 = 0;
        let mut len = 0usize;
        for p in &self.0 {
            let id = p.id();
            let bit = id.bit();
            if allowed & bit == 0 {
                return Err(EncodeError::PropertyNotAllowed { id, context });
            }
            let Some(value_len) = p.checked_value_len() else {
                return Err(EncodeError::InvalidPropertyValue { id });
            };
            if seen & bit & !repeatable != 0 {
                return Err(EncodeError::DuplicateProperty { id });
            }
            seen |= bit;
            // Every identifier is below 128, so it takes one byte as a Variable Byte Integer.
            len += 1 + value_len;
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
        // Read in place, limited to the list: a property running past the list's end is
        // truncated, as if the list were a buffer of its own.
        let outer = r.limit(len)?;
        let allowed = context.allowed_ids();
        let repeatable = context.repeatable_ids();
        let body = &mut *r;
        let mut list = Vec::with_capacity(count(body.peek_rest()));
        let mut seen: u64 = 0;
        while !body.is_empty() {
            // The identifier is a Variable Byte Integer, but every defined one is below 128:
            // one byte. Anything longer is unknown (or malformed), found by the full read.
            let id = match body.u8_below_128() {
                Some(byte) => PropertyId::from_byte(byte).ok_or(DecodeError::UnknownProperty {
                    id: u32::from(byte),
                })?,
                None => {
                    let raw = body.var_int()?;
                    return Err(DecodeError::UnknownProperty { id: raw });
                }
            };
            let bit = id.bit();
            if allowed & bit == 0 {
                return Err(DecodeError::PropertyNotAllowed { id, context });
            }
            if seen & bit & !repeatable != 0 {
                return Err(DecodeError::DuplicateProperty { id });
            }
            seen |= bit;
            // Checked as it is read: `Property::read` refuses the values
            // `Property::is_valid_value` would.
            list.push(Property::read(id, body)?);
        }
        r.unlimit(outer);
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// One property of each kind, with a valid value.
    fn one_of_each() -> Vec<Property> {
        let s = |v: &'static str| MqttString::from_static(v).unwrap();
        alloc::vec![
            Property::PayloadFormatIndicator(1),
            Property::MessageExpiryInterval(60),
            Property::ContentType(s("text/plain")),
            Property::ResponseTopic(TopicName::from_static("a/b").unwrap()),
            Property::CorrelationData(Bytes::from_static(b"id")),
            Property::SubscriptionIdentifier(300),
            Property::SessionExpiryInterval(5),
            Property::AssignedClientIdentifier(s("c1")),
            Property::ServerKeepAlive(30),
            Property::AuthenticationMethod(s("SCRAM")),
            Property::AuthenticationData(Bytes::from_static(b"x")),
            Property::RequestProblemInformation(0),
            Property::WillDelayInterval(1),
            Property::RequestResponseInformation(1),
            Property::ResponseInformation(s("r/")),
            Property::ServerReference(s("other")),
            Property::ReasonString(s("why")),
            Property::ReceiveMaximum(10),
            Property::TopicAliasMaximum(4),
            Property::TopicAlias(2),
            Property::MaximumQoS(1),
            Property::RetainAvailable(0),
            Property::UserProperty(s("k"), s("")),
            Property::MaximumPacketSize(1024),
            Property::WildcardSubscriptionAvailable(1),
            Property::SubscriptionIdentifierAvailable(1),
            Property::SharedSubscriptionAvailable(0),
        ]
    }

    #[test]
    fn id_tables_agree_with_the_rules() {
        for &context in &PropertyContext::ALL {
            for &id in PropertyId::ALL {
                let bit = id.bit();
                assert_eq!(
                    context.allowed_ids() & bit != 0,
                    id.allowed_in(context),
                    "{id:?} in {context:?}"
                );
                assert_eq!(
                    context.repeatable_ids() & bit != 0,
                    id.may_repeat_in(context),
                    "{id:?} in {context:?}"
                );
            }
        }
        for byte in 0..=u8::MAX {
            assert_eq!(
                PropertyId::from_byte(byte),
                PropertyId::from_u32(u32::from(byte))
            );
        }
    }

    #[test]
    fn layouts_and_lengths_match_what_is_written() {
        let all = one_of_each();
        assert_eq!(all.len(), PropertyId::ALL.len());
        for p in &all {
            let mut out = Vec::new();
            p.write(&mut out);
            let value = &out[1..];
            assert_eq!(p.checked_value_len(), Some(value.len()), "{p:?}");
            let layout_len = match p.id().layout() {
                ValueLayout::Fixed(len) => len,
                ValueLayout::VarInt => value.iter().position(|b| b & 0x80 == 0).unwrap() + 1,
                ValueLayout::Prefixed(1) => {
                    2 + usize::from(u16::from_be_bytes([value[0], value[1]]))
                }
                ValueLayout::Prefixed(_) => value.len(),
            };
            assert_eq!(layout_len, value.len(), "{p:?}");
        }
    }

    #[test]
    fn count_sees_every_property_and_never_reads_past_a_malformed_end() {
        let list = Properties::from_vec(one_of_each());
        let mut body = Vec::new();
        for p in list.iter() {
            p.write(&mut body);
        }
        assert_eq!(count(&body), list.len().min(COUNT_CAP));
        // Cut anywhere: counted as far as it goes, without a panic.
        for cut in 0..body.len() {
            assert!(count(&body[..cut]) <= list.len());
        }
        // An unknown identifier ends the count.
        assert_eq!(count(&[0x7f, 1, 2]), 0);
        // So does the cap: a long list of tiny properties reserves no more than it.
        assert_eq!(count(&[0x01, 1].repeat(1000)), COUNT_CAP);
    }
}
