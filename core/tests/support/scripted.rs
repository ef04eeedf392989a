//! A scripted server for the core client's tests (`client_conformance_v311.rs`,
//! `client_conformance_v5.rs`, `client_v5_limits.rs`): one [`Client`] in virtual time, the
//! server's packets encoded by hand with the codec and fed to it as received bytes, and what it
//! transmits decoded again, in the protocol version of its configuration (3.1.1 or 5.0).
//!
//! Each of those test binaries declares it with `#[path = "support/scripted.rs"] mod scripted;`
//! and uses a different part of it.
#![allow(dead_code)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use surgemq_core::client::{
    Client, ClientConfig, ClientError, ClientEvent, ClientInput, ClientOutput, Token,
};
use surgemq_core::codec::{
    ConnAck, ConnectReason, MAX_PACKET_SIZE, Packet, PacketId, Properties, Property,
    ProtocolVersion, PubAck, PubAckReason, PubRel, Publish, QoS, SubAck, SubAckReason,
    SubscriptionOptions, UnsubAck, UnsubAckReason, decode_buf,
};
use surgemq_core::string::MqttString;
use surgemq_core::time::Instant;
use surgemq_core::topic::{TopicFilter, TopicName};

pub(crate) const Q0: QoS = QoS::AtMostOnce;
pub(crate) const Q1: QoS = QoS::AtLeastOnce;
pub(crate) const Q2: QoS = QoS::ExactlyOnce;

/// A configuration for `version`; `clean_start` false asks for a session that outlives the
/// connection (in 5.0 by a Session Expiry Interval of an hour).
pub(crate) fn config(version: ProtocolVersion, client_id: &str, clean_start: bool) -> ClientConfig {
    let mut config = ClientConfig::new(MqttString::new(client_id).unwrap());
    config.version = version;
    config.clean_start = clean_start;
    if version == ProtocolVersion::V5 && !clean_start {
        config.connect_properties = Properties::new().with(Property::SessionExpiryInterval(3600));
    }
    config
}

/// One output of the client, in the order it came.
#[derive(Debug)]
pub(crate) enum Out {
    Open,
    Sent(Bytes),
    Close,
    Event(ClientEvent),
    /// A store operation, by its sequence number.
    Store(u64),
}

/// What one drain of the client produced, with the transmitted bytes decoded; `sizes` are the
/// encoded sizes of `packets`.
#[derive(Debug, Default)]
pub(crate) struct Drained {
    pub(crate) packets: Vec<Packet>,
    pub(crate) sizes: Vec<usize>,
    pub(crate) events: Vec<ClientEvent>,
    pub(crate) opened: bool,
    pub(crate) closed: bool,
}

impl Drained {
    /// The PUBLISH packets transmitted.
    pub(crate) fn publishes(&self) -> Vec<&Publish> {
        self.packets
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p),
                _ => None,
            })
            .collect()
    }
}

/// One client and the scripted server's side of its connection.
pub(crate) struct Sim {
    pub(crate) client: Client,
    pub(crate) now: Instant,
    /// The protocol version of the client's configuration, used on the wire both ways.
    pub(crate) version: ProtocolVersion,
    /// The CONNACK properties the scripted server answers with.
    pub(crate) connack_properties: Properties,
}

impl Sim {
    /// The one place clients are made (the constructor's signature may change); time starts at
    /// zero.
    pub(crate) fn new(config: ClientConfig) -> Self {
        let now = Instant::ZERO;
        let version = config.version;
        Self {
            client: Client::new(config, now).unwrap(),
            now,
            version,
            connack_properties: Properties::new(),
        }
    }

    /// A client connected with a fresh session, the server having answered with
    /// `connack_properties`.
    pub(crate) fn connected(config: ClientConfig, connack_properties: Properties) -> Self {
        let mut sim = Self::new(config);
        sim.connack_properties = connack_properties;
        sim.connect(false);
        sim
    }

    /// Every output until the client has nothing more to say, as it came.
    pub(crate) fn outputs(&mut self) -> Vec<Out> {
        let mut outs = Vec::new();
        while let Some(output) = self.client.poll_output() {
            outs.push(match output {
                ClientOutput::OpenTransport => Out::Open,
                ClientOutput::Transmit(bytes) => Out::Sent(bytes),
                ClientOutput::CloseTransport => Out::Close,
                ClientOutput::Event(e) => Out::Event(e),
                ClientOutput::Store { seq, .. } => Out::Store(seq),
            });
        }
        outs
    }

    pub(crate) fn drain(&mut self) -> Drained {
        let mut d = Drained::default();
        for out in self.outputs() {
            match out {
                Out::Open => d.opened = true,
                Out::Sent(bytes) => {
                    for (packet, size) in decode_sized(&bytes, self.version) {
                        d.packets.push(packet);
                        d.sizes.push(size);
                    }
                }
                Out::Close => d.closed = true,
                Out::Event(e) => d.events.push(e),
                Out::Store(_) => {}
            }
        }
        d
    }

    /// The bytes transmitted since the last drain, joined.
    pub(crate) fn drain_raw(&mut self) -> Vec<u8> {
        let mut raw = Vec::new();
        for out in self.outputs() {
            if let Out::Sent(bytes) = out {
                raw.extend_from_slice(&bytes);
            }
        }
        raw
    }

    /// The packets in one transmission.
    pub(crate) fn decode(&self, bytes: &[u8]) -> Vec<Packet> {
        decode_sized(bytes, self.version)
            .into_iter()
            .map(|(packet, _)| packet)
            .collect()
    }

    pub(crate) fn receive(&mut self, packet: Packet) {
        self.receive_all(&[packet]);
    }

    /// Several packets in one read.
    pub(crate) fn receive_all(&mut self, packets: &[Packet]) {
        let mut buf = BytesMut::new();
        for packet in packets {
            packet.encode(self.version, &mut buf).unwrap();
        }
        self.client
            .handle_input(self.now, ClientInput::Received(buf.freeze()));
    }

    /// The server sends `packet`; returns what the client did about it.
    pub(crate) fn feed(&mut self, packet: Packet) -> Drained {
        self.receive(packet);
        self.drain()
    }

    /// The server sends `packets` in one read; returns what the client did about them.
    pub(crate) fn feed_all(&mut self, packets: &[Packet]) -> Drained {
        self.receive_all(packets);
        self.drain()
    }

    /// Time moves on to `at`, where the client's timer fires.
    pub(crate) fn advance_to(&mut self, at: Instant) {
        self.now = at;
        self.client.handle_input(self.now, ClientInput::Timeout);
    }

    /// Answers the pending OpenTransport: transport up, CONNECT checked (not answered).
    pub(crate) fn open(&mut self) {
        let d = self.drain();
        assert!(d.opened, "no OpenTransport: {d:?}");
        self.client.handle_input(self.now, ClientInput::TransportUp);
        let d = self.drain();
        assert!(
            matches!(d.packets.as_slice(), [Packet::Connect(_)]),
            "{:?}",
            d.packets
        );
    }

    /// Answers the CONNECT with CONNACK Success, `session_present` and `properties`. Returns
    /// what followed.
    pub(crate) fn connack_with(
        &mut self,
        session_present: bool,
        properties: Properties,
    ) -> Drained {
        self.feed(Packet::ConnAck(ConnAck {
            session_present,
            reason: ConnectReason::Success,
            properties,
        }))
    }

    /// Answers the pending OpenTransport: transport up, CONNECT checked, CONNACK Success with
    /// `session_present` and the server's properties. Returns what followed the CONNACK.
    pub(crate) fn connect(&mut self, session_present: bool) -> Drained {
        self.open();
        let d = self.connack_with(session_present, self.connack_properties.clone());
        assert!(
            d.events
                .iter()
                .any(|e| matches!(e, ClientEvent::Connected { .. })),
            "{d:?}"
        );
        d
    }

    /// The transport is lost; past the backoff the client reconnects. Returns what followed
    /// the new CONNACK.
    pub(crate) fn reconnect(&mut self, session_present: bool) -> Drained {
        self.client
            .handle_input(self.now, ClientInput::TransportDown);
        let d = self.drain();
        assert!(d.packets.is_empty(), "{d:?}");
        self.advance_to(self.client.poll_timeout().unwrap());
        self.connect(session_present)
    }

    pub(crate) fn try_publish(
        &mut self,
        topic_name: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: Properties,
    ) -> Result<Token, ClientError> {
        self.client.publish(
            self.now,
            topic(topic_name),
            payload,
            qos,
            retain,
            properties,
        )
    }

    /// Publishes `payload` to `t`, not retained, without properties.
    pub(crate) fn publish(&mut self, payload: &'static str, qos: QoS) -> Token {
        let payload = Bytes::from_static(payload.as_bytes());
        self.try_publish("t", payload, qos, false, Properties::new())
            .unwrap()
    }

    /// Publishes and returns the token with the identifier of the PUBLISH that went out at once.
    pub(crate) fn publish_now(&mut self, payload: &'static str, qos: QoS) -> (Token, u16) {
        let token = self.publish(payload, qos);
        let d = self.drain();
        let [Packet::Publish(p)] = d.packets.as_slice() else {
            panic!("one PUBLISH expected: {d:?}")
        };
        assert!(!p.dup);
        (token, p.packet_id.unwrap().get())
    }

    /// Publishes `n` QoS 2 messages; returns their identifiers in publish order.
    pub(crate) fn publish_q2s(&mut self, n: usize) -> Vec<u16> {
        (0..n).map(|_| self.publish_now("q2", Q2).1).collect()
    }

    /// The server sends each of `packets` in a read of its own; returns the packets the client
    /// sent in answer.
    pub(crate) fn feed_each(&mut self, packets: impl IntoIterator<Item = Packet>) -> Vec<Packet> {
        let mut sent = Vec::new();
        for packet in packets {
            sent.extend(self.feed(packet).packets);
        }
        sent
    }

    /// Publishes three QoS 2 messages and has their PUBRECs arrive out of publish order, in one
    /// read; then the session resumes. The PUBRELs go out, and are resent, in the order the
    /// PUBRECs arrived ([MQTT-4.6.0-4] of both versions).
    pub(crate) fn assert_resent_pubrels_keep_pubrec_order(&mut self) {
        let ids = self.publish_q2s(3);
        let order = [ids[2], ids[0], ids[1]];
        assert_eq!(
            names(&self.feed_all(&order.map(pubrec)).packets),
            pubrels(&order)
        );
        let resent = self.reconnect(true).packets;
        assert_eq!(
            names(&resent),
            pubrels(&order),
            "published {ids:?}, PUBRECs arrived {order:?}"
        );
    }

    /// Subscribes to each filter with its maximum QoS.
    pub(crate) fn subscribe(&mut self, filters: &[(&str, QoS)]) -> Result<Token, ClientError> {
        let filters = filters
            .iter()
            .map(|&(f, qos)| (filter(f), SubscriptionOptions::qos(qos)))
            .collect();
        self.client.subscribe(self.now, filters, Properties::new())
    }

    pub(crate) fn unsubscribe(&mut self, filters: &[&str]) -> Result<Token, ClientError> {
        let filters = filters.iter().map(|f| filter(f)).collect();
        self.client
            .unsubscribe(self.now, filters, Properties::new())
    }

    /// Asserts that the client has transmitted nothing and opened no transport since the last
    /// drain (`what` says after what).
    pub(crate) fn assert_silent(&mut self, what: &str) {
        for out in self.outputs() {
            assert!(
                !matches!(out, Out::Sent(_) | Out::Open),
                "{what}: {out:?} after DISCONNECT"
            );
        }
    }

    /// After DISCONNECT: feeds everything that could make a client talk again (timeouts across
    /// keep-alive and backoff periods, a transport loss, a spurious TransportUp, the server's
    /// `late` packets, commands) and asserts it transmits nothing and opens no transport.
    pub(crate) fn assert_silent_forever(&mut self, late: &[Packet]) {
        self.client
            .handle_input(self.now, ClientInput::TransportDown);
        self.assert_silent("transport down");
        for _ in 0..50 {
            let at = match self.client.poll_timeout() {
                Some(at) if at > self.now => at,
                _ => self.now + Duration::from_secs(31),
            };
            self.advance_to(at);
            self.assert_silent("timeout");
        }
        self.client.handle_input(self.now, ClientInput::TransportUp);
        self.assert_silent("a spurious TransportUp");
        self.receive_all(late);
        self.assert_silent("packets from the server");
        let publish = self.try_publish(
            "t",
            Bytes::from_static(b"after"),
            Q1,
            false,
            Properties::new(),
        );
        assert_eq!(publish, Err(ClientError::Stopped));
        assert_eq!(self.subscribe(&[("t", Q0)]), Err(ClientError::Stopped));
        assert_eq!(self.unsubscribe(&["t"]), Err(ClientError::Stopped));
        self.client.disconnect(self.now);
        self.assert_silent("commands");
    }
}

/// The packets in one transmission with their encoded sizes; a transmission never ends inside
/// a packet.
fn decode_sized(bytes: &[u8], version: ProtocolVersion) -> Vec<(Packet, usize)> {
    let mut buf = BytesMut::from(bytes);
    let mut packets = Vec::new();
    loop {
        let before = buf.len();
        let Some(p) = decode_buf(&mut buf, version, MAX_PACKET_SIZE).unwrap() else {
            break;
        };
        packets.push((p, before - buf.len()));
    }
    assert!(buf.is_empty(), "a Transmit ends inside a packet");
    packets
}

// ---------------------------------------------------------------------------------------------
// The server's packets
// ---------------------------------------------------------------------------------------------

pub(crate) fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

pub(crate) fn topic(s: &str) -> TopicName {
    TopicName::parse(s).unwrap()
}

pub(crate) fn filter(s: &str) -> TopicFilter {
    TopicFilter::parse(s).unwrap()
}

pub(crate) fn puback(id: u16) -> Packet {
    puback_with(id, PubAckReason::Success)
}

pub(crate) fn puback_with(id: u16, reason: PubAckReason) -> Packet {
    Packet::PubAck(ack(id, reason))
}

pub(crate) fn pubrec(id: u16) -> Packet {
    pubrec_with(id, PubAckReason::Success)
}

pub(crate) fn pubrec_with(id: u16, reason: PubAckReason) -> Packet {
    Packet::PubRec(ack(id, reason))
}

/// The body of a PUBACK or PUBREC, without properties.
fn ack(id: u16, reason: PubAckReason) -> PubAck {
    PubAck {
        packet_id: pid(id),
        reason,
        properties: Properties::new(),
    }
}

pub(crate) fn pubrel(id: u16) -> Packet {
    Packet::PubRel(PubRel::success(pid(id)))
}

pub(crate) fn pubcomp(id: u16) -> Packet {
    Packet::PubComp(PubRel::success(pid(id)))
}

pub(crate) fn suback(id: u16, granted: SubAckReason) -> Packet {
    Packet::SubAck(SubAck {
        packet_id: pid(id),
        properties: Properties::new(),
        reasons: vec![granted],
    })
}

pub(crate) fn unsuback(id: u16, reasons: Vec<UnsubAckReason>) -> Packet {
    Packet::UnsubAck(UnsubAck {
        packet_id: pid(id),
        properties: Properties::new(),
        reasons,
    })
}

/// A PUBLISH from the server on `in`.
pub(crate) fn incoming(qos: QoS, id: Option<u16>, dup: bool, payload: &[u8]) -> Packet {
    incoming_on("in", qos, id, dup, payload)
}

/// A PUBLISH from the server.
pub(crate) fn incoming_on(
    topic_name: &str,
    qos: QoS,
    id: Option<u16>,
    dup: bool,
    payload: &[u8],
) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos,
        retain: false,
        topic: topic(topic_name),
        packet_id: id.map(pid),
        properties: Properties::new(),
        payload: Bytes::copy_from_slice(payload),
    })
}

// ---------------------------------------------------------------------------------------------
// Reading what the client did
// ---------------------------------------------------------------------------------------------

/// A packet in a few words, for readable assertions: "PUBLISH 3 q1 dup", "PUBREL 3",
/// "PUBACK 4" (a reason other than Success, only in 5.0, is added in hex).
pub(crate) fn name(packet: &Packet) -> String {
    let ack = |kind: &str, id: PacketId, code: u8| {
        if code == 0 {
            format!("{kind} {}", id.get())
        } else {
            format!("{kind} {} {code:#04x}", id.get())
        }
    };
    match packet {
        Packet::Connect(_) => "CONNECT".into(),
        Packet::Publish(p) => format!(
            "PUBLISH {} q{}{}",
            p.packet_id
                .map_or_else(|| "-".into(), |i| i.get().to_string()),
            p.qos.as_u8(),
            if p.dup { " dup" } else { "" }
        ),
        Packet::PubAck(a) => ack("PUBACK", a.packet_id, a.reason.code()),
        Packet::PubRec(a) => ack("PUBREC", a.packet_id, a.reason.code()),
        Packet::PubRel(r) => ack("PUBREL", r.packet_id, r.reason.code()),
        Packet::PubComp(r) => ack("PUBCOMP", r.packet_id, r.reason.code()),
        Packet::Subscribe(s) => format!("SUBSCRIBE {}", s.packet_id.get()),
        Packet::Unsubscribe(u) => format!("UNSUBSCRIBE {}", u.packet_id.get()),
        Packet::PingReq => "PINGREQ".into(),
        Packet::Disconnect(_) => "DISCONNECT".into(),
        other => format!("{other:?}"),
    }
}

pub(crate) fn names(packets: &[Packet]) -> Vec<String> {
    packets.iter().map(name).collect()
}

/// The names of PUBRELs for `ids`, in that order.
pub(crate) fn pubrels(ids: &[u16]) -> Vec<String> {
    ids.iter().map(|id| format!("PUBREL {id}")).collect()
}

/// The application messages delivered, in order.
pub(crate) fn messages(events: &[ClientEvent]) -> Vec<&Publish> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message(m) => Some(&m.publish),
            _ => None,
        })
        .collect()
}

/// The payloads of the application messages delivered, in order.
pub(crate) fn delivered(events: &[ClientEvent]) -> Vec<Vec<u8>> {
    messages(events)
        .into_iter()
        .map(|p| p.payload.to_vec())
        .collect()
}

/// The publishes completed, in order, with their reasons.
pub(crate) fn published(events: &[ClientEvent]) -> Vec<(Token, PubAckReason)> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Published { token, reason } => Some((*token, *reason)),
            _ => None,
        })
        .collect()
}
