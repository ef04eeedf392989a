//! Decoding: fixed header first (checked against the maximum packet size before the body is
//! buffered), then the body of each packet type for the connection's protocol version.
//!
//! Never: panic on any input, copy a payload, or accept a packet either spec calls malformed.

use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};

use super::DecodeError;
use super::packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PacketId, PacketType, ProtocolVersion, PubAck,
    PubRel, Publish, QoS, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck,
    Unsubscribe, Will,
};
use super::properties::{Properties, PropertyContext};
use super::reason::{
    AuthReason, ConnectReason, DisconnectReason, PubAckReason, PubRelReason, SubAckReason,
    UnsubAckReason,
};
use super::wire::{self, Reader, VarInt};
use crate::topic::{TopicError, TopicFilter, TopicName};

/// The fixed header of a packet: type, flags and Remaining Length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// Packet type.
    pub packet_type: PacketType,
    /// The low nibble of the first byte.
    pub flags: u8,
    /// Bytes after the fixed header.
    pub remaining_length: u32,
    /// Bytes the fixed header itself takes (2 to 5).
    pub header_len: usize,
}

impl FixedHeader {
    /// Whole packet size: fixed header plus Remaining Length.
    pub const fn packet_len(&self) -> usize {
        self.header_len + self.remaining_length as usize
    }
}

/// What [`decode`] found at the start of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The input holds no complete packet yet; read more and call again. This is normal.
    NeedMore,
    /// A packet, and how many input bytes it took.
    Packet {
        /// The decoded packet.
        packet: Packet,
        /// Bytes consumed from the front of the input.
        consumed: usize,
    },
}

/// Parses the fixed header at the start of `buf`. `Ok(None)` means more bytes are needed.
///
/// The flags are checked here, and so is `max_packet_size`: an oversize packet is refused as
/// soon as its Remaining Length is known, before its body is buffered.
#[inline]
pub fn parse_fixed_header(
    buf: &[u8],
    max_packet_size: u32,
) -> Result<Option<FixedHeader>, DecodeError> {
    let Some((&first, rest)) = buf.split_first() else {
        return Ok(None);
    };
    let type_nibble = first >> 4;
    let flags = first & 0x0f;
    let packet_type = if type_nibble == PacketType::Publish as u8 {
        // PUBLISH first, the common case: DUP, QoS, RETAIN.
        let qos = (flags >> 1) & 0b11;
        if qos == 3 {
            return Err(DecodeError::InvalidQoS);
        }
        if qos == 0 && flags & 0b1000 != 0 {
            return Err(DecodeError::DupOnQoS0);
        }
        PacketType::Publish
    } else {
        let packet_type =
            PacketType::from_u8(type_nibble).ok_or(DecodeError::ReservedPacketType {
                packet_type: type_nibble,
            })?;
        // Every other type has fixed flags.
        if let Some(required) = packet_type.required_flags()
            && flags != required
        {
            return Err(DecodeError::InvalidHeaderFlags { packet_type, flags });
        }
        packet_type
    };
    let (remaining_length, len) = match rest.first() {
        // One byte, the common case: below 128 it is complete and minimal.
        Some(&byte) if byte < 0x80 => (u32::from(byte), 1),
        _ => match wire::read_var_int(rest)? {
            VarInt::Complete { value, len } => (value, len),
            VarInt::Incomplete => return Ok(None),
        },
    };
    let header = FixedHeader {
        packet_type,
        flags,
        remaining_length,
        header_len: 1 + len,
    };
    if header.packet_len() > max_packet_size as usize {
        return Err(DecodeError::PacketTooLarge {
            size: header.packet_len(),
            max: max_packet_size,
        });
    }
    Ok(Some(header))
}

/// Decodes one packet from the front of `input` without copying: strings and payloads are
/// slices of `input`. `version` is the connection's protocol version; a CONNECT carries its own.
pub fn decode(
    input: &Bytes,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Decoded, DecodeError> {
    let Some(header) = parse_fixed_header(input, max_packet_size)? else {
        return Ok(Decoded::NeedMore);
    };
    let consumed = header.packet_len();
    if input.len() < consumed {
        return Ok(Decoded::NeedMore);
    }
    let body = input.slice(header.header_len..consumed);
    let packet = decode_body(&header, body, version)?;
    Ok(Decoded::Packet { packet, consumed })
}

/// Most bytes [`decode_buf`] reserves ahead of data that has not arrived yet.
const MAX_RESERVE_AHEAD: usize = 64 * 1024;

/// Decodes one packet from the front of a receive buffer and removes its bytes; `Ok(None)` when
/// the buffer holds no complete packet yet. The packet's payload shares the buffer's memory.
pub fn decode_buf(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: u32,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = parse_fixed_header(buf, max_packet_size)? else {
        return Ok(None);
    };
    if buf.len() < header.packet_len() {
        // Grow towards the whole packet in bounded steps: the length is only the peer's claim,
        // and reserving all of it at once would let a fixed header alone cost us up to the
        // maximum packet size per connection.
        let missing = header.packet_len() - buf.len();
        buf.reserve(missing.min(MAX_RESERVE_AHEAD));
        return Ok(None);
    }
    let packet = buf.split_to(header.packet_len()).freeze();
    let r = Reader::at(packet, header.header_len);
    if header.packet_type == PacketType::Publish {
        // The hot path of a broker: the packet is built where it is returned.
        return publish(r, header.flags, version.is_v5(), |p| {
            Some(Packet::Publish(p))
        });
    }
    decode_other(&header, r, version).map(Some)
}

/// Decodes a packet body whose fixed header has been parsed.
pub fn decode_body(
    header: &FixedHeader,
    body: Bytes,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    decode_from(header, Reader::new(body), version)
}

/// Decodes the body `r` is positioned at.
#[inline(always)]
fn decode_from(
    header: &FixedHeader,
    r: Reader,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    if header.packet_type == PacketType::Publish {
        // The hot path of a broker: inlined, apart from the general dispatch.
        return publish(r, header.flags, version.is_v5(), Packet::Publish);
    }
    decode_other(header, r, version)
}

/// Decodes every packet but PUBLISH.
#[inline(never)]
fn decode_other(
    header: &FixedHeader,
    mut r: Reader,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let r = &mut r;
    let v5 = version.is_v5();
    let packet = match header.packet_type {
        PacketType::Connect => Packet::Connect(alloc::boxed::Box::new(connect(r)?)),
        PacketType::ConnAck => Packet::ConnAck(connack(r, v5)?),
        PacketType::Publish => publish(Reader::new(r.rest()), header.flags, v5, Packet::Publish)?,
        PacketType::PubAck => Packet::PubAck(pub_ack(r, v5, PacketType::PubAck)?),
        PacketType::PubRec => Packet::PubRec(pub_ack(r, v5, PacketType::PubRec)?),
        PacketType::PubRel => Packet::PubRel(pub_rel(r, v5, PacketType::PubRel)?),
        PacketType::PubComp => Packet::PubComp(pub_rel(r, v5, PacketType::PubComp)?),
        PacketType::Subscribe => Packet::Subscribe(subscribe(r, v5)?),
        PacketType::SubAck => Packet::SubAck(suback(r, v5)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(unsubscribe(r, v5)?),
        PacketType::UnsubAck => Packet::UnsubAck(unsuback(r, v5)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => Packet::Disconnect(disconnect(r, v5)?),
        PacketType::Auth if v5 => Packet::Auth(auth(r)?),
        PacketType::Auth => return Err(DecodeError::ReservedPacketType { packet_type: 15 }),
    };
    r.finish()?;
    Ok(packet)
}

fn packet_id(r: &mut Reader) -> Result<PacketId, DecodeError> {
    PacketId::new(r.u16()?).ok_or(DecodeError::PacketIdZero)
}

fn properties(
    r: &mut Reader,
    v5: bool,
    context: PropertyContext,
) -> Result<Properties, DecodeError> {
    if v5 {
        Properties::read(r, context)
    } else {
        Ok(Properties::new())
    }
}

fn connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (name.as_ref(), level) {
        (b"MQIsdp", 3) => ProtocolVersion::V3_1,
        (b"MQTT", 4) => ProtocolVersion::V3_1_1,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp" | b"MQTT", _) => return Err(DecodeError::UnsupportedProtocolVersion { level }),
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    let v5 = protocol.is_v5();
    let flags = r.u8()?;
    if flags & 0b0000_0001 != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let clean_start = flags & 0b0000_0010 != 0;
    let will_flag = flags & 0b0000_0100 != 0;
    let will_qos_bits = (flags >> 3) & 0b11;
    let will_retain = flags & 0b0010_0000 != 0;
    let password_flag = flags & 0b0100_0000 != 0;
    let username_flag = flags & 0b1000_0000 != 0;
    let will_qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::InvalidWillQoS)?;
    if !will_flag && will_qos_bits != 0 {
        return Err(DecodeError::WillQoSWithoutWill);
    }
    if !will_flag && will_retain {
        return Err(DecodeError::WillRetainWithoutWill);
    }
    if !v5 && password_flag && !username_flag {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16()?;
    let properties = properties(r, v5, PropertyContext::Connect)?;
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = properties_for_will(r, v5)?;
        let topic = r.topic_name(DecodeError::InvalidTopicName)?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        properties,
        client_id,
        will,
        username,
        password,
    })
}

fn properties_for_will(r: &mut Reader, v5: bool) -> Result<Properties, DecodeError> {
    properties(r, v5, PropertyContext::Will)
}

fn connack(r: &mut Reader, v5: bool) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    if flags & 0b1111_1110 != 0 {
        return Err(DecodeError::ConnAckReservedFlags);
    }
    let code = r.u8()?;
    let reason = if v5 {
        ConnectReason::from_u8(code)
    } else {
        ConnectReason::from_v3_return_code(code)
    }
    .ok_or(DecodeError::InvalidReasonCode {
        packet_type: PacketType::ConnAck,
        code,
    })?;
    let properties = properties(r, v5, PropertyContext::ConnAck)?;
    Ok(ConnAck {
        session_present: flags & 1 != 0,
        reason,
        properties,
    })
}

/// Reads a PUBLISH body; the payload is the rest of the packet, so nothing can trail it.
/// `wrap` makes the caller's result of the PUBLISH, so that it is built in place, not moved.
#[inline(always)]
fn publish<T>(
    mut reader: Reader,
    flags: u8,
    v5: bool,
    wrap: impl FnOnce(Publish) -> T,
) -> Result<T, DecodeError> {
    let r = &mut reader;
    let dup = flags & 0b1000 != 0;
    let retain = flags & 0b0001 != 0;
    // The fixed header parser already refused QoS 3.
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let raw_topic = r.binary_range()?;
    // An empty name is valid only with a 5.0 Topic Alias, known after the properties.
    let topic = if raw_topic.is_empty() {
        None
    } else {
        // Checked while borrowed, shared only once it passed.
        TopicName::check_wire(r.peek(raw_topic.clone())).map_err(topic_error)?;
        Some(TopicName::from_checked_wire(r.share(raw_topic)).map_err(topic_error)?)
    };
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce | QoS::ExactlyOnce => Some(packet_id(r)?),
    };
    let properties = properties(r, v5, PropertyContext::Publish)?;
    let topic = match topic {
        Some(topic) => topic,
        None if v5 && properties.topic_alias().is_some() => TopicName::alias_only(),
        None => return Err(DecodeError::InvalidTopicName(TopicError::Empty)),
    };
    Ok(wrap(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload: reader.into_rest(),
    }))
}

/// The error for a PUBLISH topic: string rules keep their own error, as for every other
/// string field.
fn topic_error(e: TopicError) -> DecodeError {
    match e {
        TopicError::String(e) => DecodeError::InvalidString(e),
        e => DecodeError::InvalidTopicName(e),
    }
}

/// Reads the optional reason code and property list that end 5.0 acknowledgements: both may be
/// left out when the reason is Success and there are no properties.
fn optional_reason_and_properties(
    r: &mut Reader,
    v5: bool,
    context: PropertyContext,
) -> Result<(u8, Properties), DecodeError> {
    if !v5 || r.is_empty() {
        return Ok((0, Properties::new()));
    }
    let code = r.u8()?;
    if r.is_empty() {
        return Ok((code, Properties::new()));
    }
    Ok((code, Properties::read(r, context)?))
}

fn pub_ack(r: &mut Reader, v5: bool, packet_type: PacketType) -> Result<PubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let context = if packet_type == PacketType::PubAck {
        PropertyContext::PubAck
    } else {
        PropertyContext::PubRec
    };
    let (code, properties) = optional_reason_and_properties(r, v5, context)?;
    let reason =
        PubAckReason::from_u8(code).ok_or(DecodeError::InvalidReasonCode { packet_type, code })?;
    Ok(PubAck {
        packet_id,
        reason,
        properties,
    })
}

fn pub_rel(r: &mut Reader, v5: bool, packet_type: PacketType) -> Result<PubRel, DecodeError> {
    let packet_id = packet_id(r)?;
    let context = if packet_type == PacketType::PubRel {
        PropertyContext::PubRel
    } else {
        PropertyContext::PubComp
    };
    let (code, properties) = optional_reason_and_properties(r, v5, context)?;
    let reason =
        PubRelReason::from_u8(code).ok_or(DecodeError::InvalidReasonCode { packet_type, code })?;
    Ok(PubRel {
        packet_id,
        reason,
        properties,
    })
}

fn subscription_options(byte: u8, v5: bool) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = if v5 { 0b1100_0000 } else { 0b1111_1100 };
    if byte & reserved != 0 {
        return Err(DecodeError::InvalidSubscriptionOptions);
    }
    let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::InvalidSubscriptionOptions)?;
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(DecodeError::InvalidRetainHandling),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0b0100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

fn topic_filter(r: &mut Reader) -> Result<TopicFilter, DecodeError> {
    TopicFilter::new(r.string()?).map_err(DecodeError::InvalidTopicFilter)
}

fn subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = properties(r, v5, PropertyContext::Subscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = topic_filter(r)?;
        let options = subscription_options(r.u8()?, v5)?;
        if options.no_local && filter.shared().is_some() {
            return Err(DecodeError::NoLocalOnSharedSubscription);
        }
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptySubscribe);
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

fn suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = properties(r, v5, PropertyContext::SubAck)?;
    let mut reasons = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        let code = r.u8()?;
        let reason = SubAckReason::from_u8(code)
            .filter(|reason| v5 || matches!(code, 0x00..=0x02 | 0x80) && reason.code() == code)
            .ok_or(DecodeError::InvalidReasonCode {
                packet_type: PacketType::SubAck,
                code,
            })?;
        reasons.push(reason);
    }
    if reasons.is_empty() {
        return Err(DecodeError::EmptySubAck);
    }
    Ok(SubAck {
        packet_id,
        properties,
        reasons,
    })
}

fn unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = properties(r, v5, PropertyContext::Unsubscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(topic_filter(r)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptyUnsubscribe);
    }
    Ok(Unsubscribe {
        packet_id,
        properties,
        filters,
    })
}

fn unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = properties(r, v5, PropertyContext::UnsubAck)?;
    let mut reasons = Vec::new();
    if v5 {
        while !r.is_empty() {
            let code = r.u8()?;
            reasons.push(
                UnsubAckReason::from_u8(code).ok_or(DecodeError::InvalidReasonCode {
                    packet_type: PacketType::UnsubAck,
                    code,
                })?,
            );
        }
    }
    Ok(UnsubAck {
        packet_id,
        properties,
        reasons,
    })
}

fn disconnect(r: &mut Reader, v5: bool) -> Result<Disconnect, DecodeError> {
    let (code, properties) = optional_reason_and_properties(r, v5, PropertyContext::Disconnect)?;
    let reason = DisconnectReason::from_u8(code).ok_or(DecodeError::InvalidReasonCode {
        packet_type: PacketType::Disconnect,
        code,
    })?;
    Ok(Disconnect { reason, properties })
}

fn auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    let (code, properties) = optional_reason_and_properties(r, true, PropertyContext::Auth)?;
    let reason = AuthReason::from_u8(code).ok_or(DecodeError::InvalidReasonCode {
        packet_type: PacketType::Auth,
        code,
    })?;
    Ok(Auth { reason, properties })
}
