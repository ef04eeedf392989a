//! Encoding: every check and the whole size are computed first ([`Packet::encoded_len`]), then
//! the bytes are written in one pass that cannot fail, so a refused packet leaves nothing behind.
//!
//! For versions before 5.0 the 5.0-only fields (properties, reason codes other than the 3.x
//! return codes) are left out. Never: write part of a packet.

use bytes::BufMut;

use super::EncodeError;
use super::packet::{Connect, Packet, PacketId, PacketType, ProtocolVersion, Publish, QoS};
use super::properties::{Properties, PropertyContext};
use super::reason::{PubAckReason, PubRelReason, SubAckReason};
use super::wire::{self, MAX_VAR_INT};
use crate::topic::TopicName;

/// Sizes worked out by the checking pass and used by the writing pass.
#[derive(Debug, Clone, Copy, Default)]
struct Plan {
    remaining: usize,
    properties: usize,
    will_properties: usize,
}

impl Packet {
    /// The whole packet size in bytes for `version`, after every check the encoder makes.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let plan = plan(self, version)?;
        Ok(total_len(plan.remaining))
    }

    /// Appends the packet to `out` and returns the bytes written. On error nothing is written.
    /// A CONNECT is encoded in its own `protocol` version; other packets in `version`.
    #[inline(always)]
    pub fn encode(
        &self,
        version: ProtocolVersion,
        out: &mut impl BufMut,
    ) -> Result<usize, EncodeError> {
        if let Packet::Publish(publish) = self {
            // The hot path of a broker: no general plan, no dispatch.
            return publish.view().encode(version, out);
        }
        self.encode_other(version, out)
    }

    /// [`Self::encode`] for every packet but PUBLISH.
    #[inline(never)]
    fn encode_other(
        &self,
        version: ProtocolVersion,
        out: &mut impl BufMut,
    ) -> Result<usize, EncodeError> {
        let plan = plan(self, version)?;
        let total = total_len(plan.remaining);
        if out.remaining_mut() < total {
            return Err(EncodeError::PacketTooLarge {
                size: total,
                max: out.remaining_mut(),
            });
        }
        write(self, version, plan, out);
        Ok(total)
    }
}

impl Publish {
    /// Encodes this PUBLISH (what [`Packet::encode`] does for it). On error nothing is written.
    #[inline]
    pub fn encode(
        &self,
        version: ProtocolVersion,
        out: &mut impl BufMut,
    ) -> Result<usize, EncodeError> {
        self.view().encode(version, out)
    }

    /// Zero-copy encoding: see [`PublishView::encode_head`].
    #[inline]
    pub fn encode_head(
        &self,
        version: ProtocolVersion,
        out: &mut impl BufMut,
    ) -> Result<usize, EncodeError> {
        self.view().encode_head(version, out)
    }

    /// This PUBLISH as a borrowed view.
    #[inline]
    pub fn view(&self) -> PublishView<'_> {
        PublishView {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: &self.topic,
            packet_id: self.packet_id,
            properties: &self.properties,
            payload: &self.payload,
        }
    }
}

/// A PUBLISH assembled from borrowed parts, so that a broker can encode one message for many
/// subscribers (each with its own packet identifier, DUP and RETAIN) without building a
/// [`Publish`] — and without touching the reference counts of the topic and payload — for each.
#[derive(Debug, Clone, Copy)]
pub struct PublishView<'a> {
    /// Redelivery flag; always false at QoS 0.
    pub dup: bool,
    /// Delivery guarantee.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Topic.
    pub topic: &'a TopicName,
    /// Present exactly when QoS is 1 or 2.
    pub packet_id: Option<PacketId>,
    /// 5.0 properties (left out before 5.0).
    pub properties: &'a Properties,
    /// Application payload.
    pub payload: &'a [u8],
}

impl PublishView<'_> {
    /// Encodes the whole PUBLISH. On error nothing is written.
    #[inline(always)]
    pub fn encode(
        &self,
        version: ProtocolVersion,
        out: &mut impl BufMut,
    ) -> Result<usize, EncodeError> {
        let (props_body, remaining) = self.plan(version.is_v5())?;
        let total = total_len(remaining);
        if out.remaining_mut() < total {
            return Err(EncodeError::PacketTooLarge {
                size: total,
                max: out.remaining_mut(),
            });
        }
        self.write_head(version.is_v5(), props_body, remaining, out);
        out.put_slice(self.payload);
        Ok(total)
    }

    /// Zero-copy encoding: writes everything but the payload (fixed header, topic, packet
    /// identifier, properties) and returns the whole packet's size. The packet on the wire is
    /// these bytes followed by the payload, which the caller sends as it is (e.g. in a
    /// vectored write), so one payload serves every subscriber of a fan-out without a copy.
    /// Worth it for large payloads; below a few hundred bytes a copy is cheaper than sharing.
    /// On error nothing is written.
    #[inline]
    pub fn encode_head(
        &self,
        version: ProtocolVersion,
        out: &mut impl BufMut,
    ) -> Result<usize, EncodeError> {
        let (props_body, remaining) = self.plan(version.is_v5())?;
        let total = total_len(remaining);
        let head = total - self.payload.len();
        if out.remaining_mut() < head {
            return Err(EncodeError::PacketTooLarge {
                size: head,
                max: out.remaining_mut(),
            });
        }
        self.write_head(version.is_v5(), props_body, remaining, out);
        Ok(total)
    }

    /// The whole packet's size, after every check the encoder makes.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        self.plan(version.is_v5())
            .map(|(_, remaining)| total_len(remaining))
    }

    /// Checks the fields; returns the property list's body length and the Remaining Length.
    #[inline(always)]
    fn plan(&self, v5: bool) -> Result<(usize, usize), EncodeError> {
        if (self.qos == QoS::AtMostOnce) != self.packet_id.is_none() {
            return Err(EncodeError::PacketIdMismatch);
        }
        if self.qos == QoS::AtMostOnce && self.dup {
            return Err(EncodeError::DupOnQoS0);
        }
        if self.topic.is_empty() && !(v5 && self.properties.topic_alias().is_some()) {
            return Err(EncodeError::EmptyTopicName);
        }
        let (body, wire_len) = if v5 {
            props_len(self.properties, v5, PropertyContext::Publish)?
        } else {
            (0, 0)
        };
        let id_len = if self.packet_id.is_some() { 2 } else { 0 };
        let len = wire::prefixed_len(self.topic.as_mqtt_string().len())
            + id_len
            + wire_len
            + self.payload.len();
        if len > MAX_VAR_INT as usize {
            return Err(EncodeError::PacketTooLarge {
                size: total_len(len),
                max: total_len(MAX_VAR_INT as usize),
            });
        }
        Ok((body, len))
    }

    /// Writes the fixed header, topic, packet identifier and properties, in as few writes as
    /// the fields allow (each write into a `BufMut` has a fixed cost).
    #[inline(always)]
    fn write_head(&self, v5: bool, props_body: usize, remaining: usize, out: &mut impl BufMut) {
        let first =
            0x30 | (u8::from(self.dup) << 3) | (self.qos.as_u8() << 1) | u8::from(self.retain);
        let topic = self.topic.as_mqtt_string().as_bytes();
        // The fixed header and the topic's length in one write. No truncation: a topic is an
        // `MqttString`, at most 65,535 bytes.
        let [len_hi, len_lo] = (topic.len() as u16).to_be_bytes();
        if remaining < 128 {
            // No truncation: below 128.
            out.put_slice(&[first, remaining as u8, len_hi, len_lo]);
        } else {
            wire::put_header(out, first, remaining, [len_hi, len_lo]);
        }
        out.put_slice(topic);
        if let Some(id) = self.packet_id {
            out.put_u16(id.get());
        }
        if v5 {
            self.properties.write(props_body, out);
        }
    }
}

fn total_len(remaining: usize) -> usize {
    1 + wire::var_int_len(u32::try_from(remaining).unwrap_or(MAX_VAR_INT)) + remaining
}

/// Property bytes for `props` in `context` (0 before 5.0, where they are left out).
fn props_len(
    props: &Properties,
    v5: bool,
    context: PropertyContext,
) -> Result<(usize, usize), EncodeError> {
    if !v5 {
        return Ok((0, 0));
    }
    let body = props.checked_body_len(context)?;
    Ok((body, Properties::wire_len(body)))
}

fn binary_len(len: usize) -> Result<usize, EncodeError> {
    if len > usize::from(u16::MAX) {
        return Err(EncodeError::BinaryTooLong);
    }
    Ok(wire::prefixed_len(len))
}

/// Length of the optional "reason code, properties" tail of 5.0 acknowledgements, DISCONNECT
/// and AUTH: left out entirely when the reason is 0 and there are no properties.
fn ack_tail_len(
    reason_is_zero: bool,
    props: &Properties,
    v5: bool,
    context: PropertyContext,
) -> Result<(usize, usize), EncodeError> {
    if !v5 {
        return Ok((0, 0));
    }
    let (body, wire_len) = props_len(props, v5, context)?;
    Ok(match (reason_is_zero, props.is_empty()) {
        (true, true) => (0, 0),
        (_, true) => (body, 1),
        (_, false) => (body, 1 + wire_len),
    })
}

fn plan(packet: &Packet, version: ProtocolVersion) -> Result<Plan, EncodeError> {
    let v5 = version.is_v5();
    let mut plan = Plan::default();
    let remaining = match packet {
        Packet::Connect(c) => return plan_connect(c),
        Packet::ConnAck(c) => {
            let (body, wire_len) = props_len(&c.properties, v5, PropertyContext::ConnAck)?;
            plan.properties = body;
            2 + wire_len
        }
        Packet::Publish(p) => {
            let (body, wire_len) = p.view().plan(v5)?;
            plan.properties = body;
            wire_len
        }
        Packet::PubAck(a) | Packet::PubRec(a) => {
            let context = if matches!(packet, Packet::PubAck(_)) {
                PropertyContext::PubAck
            } else {
                PropertyContext::PubRec
            };
            let zero = a.reason == PubAckReason::Success;
            let (body, tail) = ack_tail_len(zero, &a.properties, v5, context)?;
            plan.properties = body;
            2 + tail
        }
        Packet::PubRel(a) | Packet::PubComp(a) => {
            let context = if matches!(packet, Packet::PubRel(_)) {
                PropertyContext::PubRel
            } else {
                PropertyContext::PubComp
            };
            let zero = a.reason == PubRelReason::Success;
            let (body, tail) = ack_tail_len(zero, &a.properties, v5, context)?;
            plan.properties = body;
            2 + tail
        }
        Packet::Subscribe(s) => {
            if s.filters.is_empty() {
                return Err(EncodeError::EmptyList);
            }
            let (body, wire_len) = props_len(&s.properties, v5, PropertyContext::Subscribe)?;
            plan.properties = body;
            let mut len = 2 + wire_len;
            for (filter, options) in &s.filters {
                if v5 && options.no_local && filter.shared().is_some() {
                    return Err(EncodeError::NoLocalOnSharedSubscription);
                }
                len += wire::prefixed_len(filter.as_mqtt_string().len()) + 1;
            }
            len
        }
        Packet::SubAck(s) => {
            if s.reasons.is_empty() {
                return Err(EncodeError::EmptyList);
            }
            let (body, wire_len) = props_len(&s.properties, v5, PropertyContext::SubAck)?;
            plan.properties = body;
            2 + wire_len + s.reasons.len()
        }
        Packet::Unsubscribe(u) => {
            if u.filters.is_empty() {
                return Err(EncodeError::EmptyList);
            }
            let (body, wire_len) = props_len(&u.properties, v5, PropertyContext::Unsubscribe)?;
            plan.properties = body;
            2 + wire_len
                + u.filters
                    .iter()
                    .map(|f| wire::prefixed_len(f.as_mqtt_string().len()))
                    .sum::<usize>()
        }
        Packet::UnsubAck(u) => {
            let (body, wire_len) = props_len(&u.properties, v5, PropertyContext::UnsubAck)?;
            plan.properties = body;
            if v5 {
                2 + wire_len + u.reasons.len()
            } else {
                2
            }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => {
            let zero = d.reason.code() == 0;
            let (body, tail) = ack_tail_len(zero, &d.properties, v5, PropertyContext::Disconnect)?;
            plan.properties = body;
            tail
        }
        Packet::Auth(a) => {
            if !v5 {
                return Err(EncodeError::PacketNotInVersion {
                    packet_type: PacketType::Auth,
                });
            }
            let zero = a.reason.code() == 0;
            let (body, tail) = ack_tail_len(zero, &a.properties, v5, PropertyContext::Auth)?;
            plan.properties = body;
            tail
        }
    };
    plan.remaining = remaining;
    check_remaining(plan)
}

fn check_remaining(plan: Plan) -> Result<Plan, EncodeError> {
    if plan.remaining > MAX_VAR_INT as usize {
        return Err(EncodeError::PacketTooLarge {
            size: total_len(plan.remaining),
            max: total_len(MAX_VAR_INT as usize),
        });
    }
    Ok(plan)
}

fn plan_connect(c: &Connect) -> Result<Plan, EncodeError> {
    let v5 = c.protocol.is_v5();
    let mut plan = Plan::default();
    let (body, wire_len) = props_len(&c.properties, v5, PropertyContext::Connect)?;
    plan.properties = body;
    let mut len = wire::prefixed_len(c.protocol.protocol_name().len()) + 1 + 1 + 2 + wire_len;
    len += wire::prefixed_len(c.client_id.len());
    if let Some(will) = &c.will {
        if will.topic.is_empty() {
            return Err(EncodeError::EmptyTopicName);
        }
        let (body, wire_len) = props_len(&will.properties, v5, PropertyContext::Will)?;
        plan.will_properties = body;
        len += wire_len + wire::prefixed_len(will.topic.as_mqtt_string().len());
        len += binary_len(will.payload.len())?;
    }
    if let Some(username) = &c.username {
        len += wire::prefixed_len(username.len());
    }
    if let Some(password) = &c.password {
        if !v5 && c.username.is_none() {
            // 3.1.1 [MQTT-3.1.2-22]
            return Err(EncodeError::PasswordWithoutUsername);
        }
        len += binary_len(password.len())?;
    }
    plan.remaining = len;
    check_remaining(plan)
}

fn first_byte(packet: &Packet) -> u8 {
    let packet_type = packet.packet_type();
    let flags = match packet {
        Packet::Publish(p) => (u8::from(p.dup) << 3) | (p.qos.as_u8() << 1) | u8::from(p.retain),
        _ => packet_type.required_flags().unwrap_or(0),
    };
    ((packet_type as u8) << 4) | flags
}

fn write_props(props: &Properties, body_len: usize, v5: bool, out: &mut impl BufMut) {
    if v5 {
        props.write(body_len, out);
    }
}

/// Writes the "reason code, properties" tail sized by [`ack_tail_len`].
fn write_ack_tail(code: u8, props: &Properties, body_len: usize, v5: bool, out: &mut impl BufMut) {
    if !v5 || (code == 0 && props.is_empty()) {
        return;
    }
    out.put_u8(code);
    if !props.is_empty() {
        props.write(body_len, out);
    }
}

/// Writes the packet `plan` was made for. The fixed header goes out in one write with the
/// fixed-size fields that follow it.
fn write(packet: &Packet, version: ProtocolVersion, plan: Plan, out: &mut impl BufMut) {
    let v5 = version.is_v5();
    let first = first_byte(packet);
    let remaining = plan.remaining;
    match packet {
        Packet::Connect(c) => write_connect(c, first, plan, out),
        Packet::ConnAck(c) => {
            let code = if v5 {
                c.reason.code()
            } else {
                c.reason.to_v3_return_code()
            };
            wire::put_header(out, first, remaining, [u8::from(c.session_present), code]);
            write_props(&c.properties, plan.properties, v5, out);
        }
        // Encoded by `Publish::encode`; kept here so that `write` stays total.
        Packet::Publish(p) => {
            wire::put_header(out, first, remaining, []);
            wire::put_binary(out, p.topic.as_mqtt_string().as_bytes());
            if let Some(id) = p.packet_id {
                out.put_u16(id.get());
            }
            write_props(&p.properties, plan.properties, v5, out);
            out.put_slice(&p.payload);
        }
        Packet::PubAck(a) | Packet::PubRec(a) => {
            wire::put_header(out, first, remaining, a.packet_id.get().to_be_bytes());
            write_ack_tail(a.reason.code(), &a.properties, plan.properties, v5, out);
        }
        Packet::PubRel(a) | Packet::PubComp(a) => {
            wire::put_header(out, first, remaining, a.packet_id.get().to_be_bytes());
            write_ack_tail(a.reason.code(), &a.properties, plan.properties, v5, out);
        }
        Packet::Subscribe(s) => {
            wire::put_header(out, first, remaining, s.packet_id.get().to_be_bytes());
            write_props(&s.properties, plan.properties, v5, out);
            for (filter, o) in &s.filters {
                wire::put_binary(out, filter.as_mqtt_string().as_bytes());
                let mut byte = o.qos.as_u8();
                if v5 {
                    byte |= (u8::from(o.no_local) << 2)
                        | (u8::from(o.retain_as_published) << 3)
                        | ((o.retain_handling as u8) << 4);
                }
                out.put_u8(byte);
            }
        }
        Packet::SubAck(s) => {
            wire::put_header(out, first, remaining, s.packet_id.get().to_be_bytes());
            write_props(&s.properties, plan.properties, v5, out);
            for reason in &s.reasons {
                out.put_u8(match reason {
                    _ if v5 => reason.code(),
                    SubAckReason::GrantedQoS0
                    | SubAckReason::GrantedQoS1
                    | SubAckReason::GrantedQoS2 => reason.code(),
                    // 3.x has one failure code.
                    _ => SubAckReason::UnspecifiedError.code(),
                });
            }
        }
        Packet::Unsubscribe(u) => {
            wire::put_header(out, first, remaining, u.packet_id.get().to_be_bytes());
            write_props(&u.properties, plan.properties, v5, out);
            for filter in &u.filters {
                wire::put_binary(out, filter.as_mqtt_string().as_bytes());
            }
        }
        Packet::UnsubAck(u) => {
            wire::put_header(out, first, remaining, u.packet_id.get().to_be_bytes());
            if v5 {
                u.properties.write(plan.properties, out);
                for reason in &u.reasons {
                    out.put_u8(reason.code());
                }
            }
        }
        Packet::PingReq | Packet::PingResp => wire::put_header(out, first, remaining, []),
        Packet::Disconnect(d) => {
            wire::put_header(out, first, remaining, []);
            write_ack_tail(d.reason.code(), &d.properties, plan.properties, v5, out);
        }
        Packet::Auth(a) => {
            wire::put_header(out, first, remaining, []);
            write_ack_tail(a.reason.code(), &a.properties, plan.properties, v5, out);
        }
    }
}

/// CONNECT: the fixed header and the whole fixed-size variable header (protocol name and
/// level, flags, keep alive) in one write.
fn write_connect(c: &Connect, first: u8, plan: Plan, out: &mut impl BufMut) {
    let v5 = c.protocol.is_v5();
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(will) = &c.will {
        flags |= 0b100 | (will.qos.as_u8() << 3) | (u8::from(will.retain) << 5);
    }
    flags |= u8::from(c.password.is_some()) << 6;
    flags |= u8::from(c.username.is_some()) << 7;
    let [ka_hi, ka_lo] = c.keep_alive.to_be_bytes();
    let level = c.protocol.level();
    match c.protocol.protocol_name().as_bytes() {
        &[a, b, c, d] => {
            let rest = [0, 4, a, b, c, d, level, flags, ka_hi, ka_lo];
            wire::put_header(out, first, plan.remaining, rest);
        }
        name => {
            wire::put_header(out, first, plan.remaining, []);
            wire::put_binary(out, name);
            out.put_slice(&[level, flags, ka_hi, ka_lo]);
        }
    }
    write_props(&c.properties, plan.properties, v5, out);
    wire::put_binary(out, c.client_id.as_bytes());
    if let Some(will) = &c.will {
        write_props(&will.properties, plan.will_properties, v5, out);
        wire::put_binary(out, will.topic.as_mqtt_string().as_bytes());
        wire::put_binary(out, &will.payload);
    }
    if let Some(username) = &c.username {
        wire::put_binary(out, username.as_bytes());
    }
    if let Some(password) = &c.password {
        wire::put_binary(out, password);
    }
}
