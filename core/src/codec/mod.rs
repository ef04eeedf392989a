//! The codec: one packet model for MQTT 3.1 (`MQIsdp`, level 3), 3.1.1 (`MQTT`, 4) and
//! 5.0 (`MQTT`, 5), with incremental decoding and size-first encoding.
//!
//! - [`packet`]: the packet types ([`Packet`] and one struct per control packet).
//! - [`properties`]: MQTT 5.0 properties and which packets may carry them.
//! - [`reason`]: reason codes, one enum per packet family, and the 3.x return-code mapping.
//! - [`decode()`] / [`decode_buf`]: bytes to packets. "Need more bytes" is the normal
//!   [`Decoded::NeedMore`] result; the maximum packet size is enforced from the fixed header
//!   before a body is buffered; every malformed-packet rule is a [`DecodeError`] variant.
//! - [`Packet::encode`]: packets to bytes; the size is computed and checked first, so a failed
//!   encode writes nothing.
//!
//! Owns the wire format only. Never: protocol state (which packet may come when), I/O, or
//! allocation per packet beyond the packet's own lists (strings and payloads are shared slices
//! of the receive buffer).
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]

mod decode;
mod encode;
mod error;
pub mod packet;
pub mod properties;
pub mod reason;
mod wire;

pub use decode::{Decoded, FixedHeader, decode, decode_body, decode_buf, parse_fixed_header};
pub use encode::PublishView;
pub use error::{DecodeError, EncodeError};
pub use packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PacketId, PacketType, ProtocolVersion, PubAck,
    PubComp, PubRec, PubRel, Publish, QoS, RetainHandling, SubAck, Subscribe, SubscriptionOptions,
    UnsubAck, Unsubscribe, Will,
};
pub use properties::{Properties, Property, PropertyContext, PropertyId};
pub use reason::{
    AuthReason, ConnectReason, DisconnectReason, PubAckReason, PubRelReason, SubAckReason,
    UnsubAckReason,
};
pub use wire::MAX_VAR_INT;

/// The largest packet MQTT can express: a five-byte fixed header plus the largest Remaining
/// Length. The default maximum when nothing smaller is configured.
pub const MAX_PACKET_SIZE: u32 = 1 + 4 + MAX_VAR_INT;
