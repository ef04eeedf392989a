//! Conformance of the core client ([`Client`]) to the client-side normative statements of MQTT
//! 3.1.1 (OASIS Standard, 29 October 2014): packet identifiers across resends, the UTF-8 string
//! layout of topic names and filters on the wire, what follows DISCONNECT, acknowledgement of
//! every received PUBLISH, and the order of PUBRELs. Each test cites its statements as
//! `MQTT 3.1.1 [MQTT-x.y.z-n]` (the list is `../shared/conformance/mqtt-v3.1.1-statements.tsv`).
//!
//! The server is scripted: its packets are encoded by hand with the codec, and what the client
//! transmits is decoded (or read byte by byte). Time is virtual.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use surgemq_core::client::{
    Client, ClientConfig, ClientError, ClientEvent, ClientInput, ClientOutput, Persistence, Token,
};
use surgemq_core::codec::{
    ConnAck, ConnectReason, MAX_PACKET_SIZE, Packet, PacketId, Properties, ProtocolVersion, PubAck,
    PubRel, Publish, QoS, SubAck, SubAckReason, SubscriptionOptions, decode_buf,
};
use surgemq_core::string::MqttString;
use surgemq_core::time::Instant;
use surgemq_core::topic::{TopicFilter, TopicName};

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;

// ---------------------------------------------------------------------------------------------
// Harness: one client, a scripted server, virtual time
// ---------------------------------------------------------------------------------------------

/// The one place clients are made (the constructor's signature may change).
fn new_client(config: ClientConfig, now: Instant) -> Client {
    Client::new(config, now).unwrap()
}

fn config(client_id: &str, clean_start: bool) -> ClientConfig {
    let mut config = ClientConfig::new(MqttString::new(client_id).unwrap());
    config.version = V311;
    config.clean_start = clean_start;
    config
}

/// One output of the client, in the order it came.
#[derive(Debug)]
enum Out {
    Open,
    Sent(Bytes),
    Close,
    Event(ClientEvent),
    Store,
}

/// What one drain of the client produced, with the transmitted bytes decoded.
#[derive(Debug, Default)]
struct Drained {
    packets: Vec<Packet>,
    events: Vec<ClientEvent>,
    opened: bool,
    closed: bool,
}

struct Sim {
    client: Client,
    now: Instant,
}

impl Sim {
    fn new(config: ClientConfig) -> Self {
        let now = Instant::ZERO;
        Self {
            client: new_client(config, now),
            now,
        }
    }

    /// Every output until the client has nothing more to say, as it came.
    fn outputs(&mut self) -> Vec<Out> {
        let mut outs = Vec::new();
        while let Some(output) = self.client.poll_output() {
            outs.push(match output {
                ClientOutput::OpenTransport => Out::Open,
                ClientOutput::Transmit(bytes) => Out::Sent(bytes),
                ClientOutput::CloseTransport => Out::Close,
                ClientOutput::Event(e) => Out::Event(e),
                ClientOutput::Store { .. } => Out::Store,
            });
        }
        outs
    }

    fn drain(&mut self) -> Drained {
        let mut d = Drained::default();
        for out in self.outputs() {
            match out {
                Out::Open => d.opened = true,
                Out::Sent(bytes) => d.packets.extend(decode_all(&bytes)),
                Out::Close => d.closed = true,
                Out::Event(e) => d.events.push(e),
                Out::Store => {}
            }
        }
        d
    }

    /// The bytes transmitted since the last drain, joined.
    fn drain_raw(&mut self) -> Vec<u8> {
        let mut raw = Vec::new();
        for out in self.outputs() {
            if let Out::Sent(bytes) = out {
                raw.extend_from_slice(&bytes);
            }
        }
        raw
    }

    fn receive(&mut self, packet: Packet) {
        let mut buf = BytesMut::new();
        packet.encode(V311, &mut buf).unwrap();
        self.client
            .handle_input(self.now, ClientInput::Received(buf.freeze()));
    }

    /// Several packets in one read.
    fn receive_all(&mut self, packets: &[Packet]) {
        let mut buf = BytesMut::new();
        for packet in packets {
            packet.encode(V311, &mut buf).unwrap();
        }
        self.client
            .handle_input(self.now, ClientInput::Received(buf.freeze()));
    }

    /// Answers the pending OpenTransport: transport up, CONNECT checked, CONNACK 0 with
    /// `session_present`. Returns what followed the CONNACK.
    fn connect(&mut self, session_present: bool) -> Drained {
        let d = self.drain();
        assert!(d.opened, "no OpenTransport: {d:?}");
        self.client.handle_input(self.now, ClientInput::TransportUp);
        let d = self.drain();
        assert!(
            matches!(d.packets.as_slice(), [Packet::Connect(_)]),
            "{:?}",
            d.packets
        );
        self.receive(Packet::ConnAck(ConnAck {
            session_present,
            reason: ConnectReason::Success,
            properties: Properties::new(),
        }));
        let d = self.drain();
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
    fn reconnect(&mut self, session_present: bool) -> Drained {
        self.client
            .handle_input(self.now, ClientInput::TransportDown);
        let d = self.drain();
        assert!(d.packets.is_empty(), "{d:?}");
        self.now = self.client.poll_timeout().unwrap();
        self.client.handle_input(self.now, ClientInput::Timeout);
        self.connect(session_present)
    }

    fn publish(&mut self, payload: &'static str, qos: QoS) -> Token {
        self.client
            .publish(
                self.now,
                topic("t"),
                Bytes::from_static(payload.as_bytes()),
                qos,
                false,
                Properties::new(),
            )
            .unwrap()
    }
}

fn decode_all(bytes: &Bytes) -> Vec<Packet> {
    let mut buf = BytesMut::from(&bytes[..]);
    let mut packets = Vec::new();
    while let Some(p) = decode_buf(&mut buf, V311, MAX_PACKET_SIZE).unwrap() {
        packets.push(p);
    }
    assert!(buf.is_empty(), "a Transmit ends inside a packet");
    packets
}

/// A connected client with a fresh session.
fn connected(clean_start: bool) -> Sim {
    let mut sim = Sim::new(config("c", clean_start));
    sim.connect(false);
    sim
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn topic(s: &str) -> TopicName {
    TopicName::parse(s).unwrap()
}

fn filter(s: &str) -> TopicFilter {
    TopicFilter::parse(s).unwrap()
}

fn puback(id: u16) -> Packet {
    Packet::PubAck(PubAck::success(pid(id)))
}

fn pubrec(id: u16) -> Packet {
    Packet::PubRec(PubAck::success(pid(id)))
}

fn pubrel(id: u16) -> Packet {
    Packet::PubRel(PubRel::success(pid(id)))
}

fn pubcomp(id: u16) -> Packet {
    Packet::PubComp(PubRel::success(pid(id)))
}

fn suback(id: u16, granted: SubAckReason) -> Packet {
    Packet::SubAck(SubAck {
        packet_id: pid(id),
        properties: Properties::new(),
        reasons: vec![granted],
    })
}

/// A PUBLISH from the server.
fn incoming(topic_name: &str, qos: QoS, id: Option<u16>, dup: bool, payload: &[u8]) -> Packet {
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

/// A packet in a few words, for readable assertions: "PUBLISH 3 q1 dup", "PUBREL 3".
fn name(packet: &Packet) -> String {
    let id = |id: PacketId| id.get();
    match packet {
        Packet::Connect(_) => "CONNECT".into(),
        Packet::Publish(p) => format!(
            "PUBLISH {} q{}{}",
            p.packet_id
                .map_or_else(|| "-".into(), |i| i.get().to_string()),
            p.qos.as_u8(),
            if p.dup { " dup" } else { "" }
        ),
        Packet::PubAck(a) => format!("PUBACK {}", id(a.packet_id)),
        Packet::PubRec(a) => format!("PUBREC {}", id(a.packet_id)),
        Packet::PubRel(r) => format!("PUBREL {}", id(r.packet_id)),
        Packet::PubComp(r) => format!("PUBCOMP {}", id(r.packet_id)),
        Packet::Subscribe(s) => format!("SUBSCRIBE {}", id(s.packet_id)),
        Packet::Unsubscribe(u) => format!("UNSUBSCRIBE {}", id(u.packet_id)),
        Packet::PingReq => "PINGREQ".into(),
        Packet::Disconnect(_) => "DISCONNECT".into(),
        other => format!("{other:?}"),
    }
}

fn names(packets: &[Packet]) -> Vec<String> {
    packets.iter().map(name).collect()
}

/// The payloads of the application messages delivered, in order.
fn delivered(events: &[ClientEvent]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message(m) => Some(m.publish.payload.to_vec()),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Raw wire layout
// ---------------------------------------------------------------------------------------------

/// One packet read byte by byte: the first byte, and the bytes after the Remaining Length
/// (checked to be exactly Remaining Length long).
fn split_fixed_header(raw: &[u8]) -> (u8, &[u8]) {
    let first = raw[0];
    let mut remaining = 0usize;
    let mut shift = 0;
    let mut at = 1;
    loop {
        let byte = raw[at];
        remaining |= usize::from(byte & 0x7f) << shift;
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let body = &raw[at..];
    assert_eq!(
        body.len(),
        remaining,
        "Remaining Length {remaining} but {} bytes follow",
        body.len()
    );
    (first, body)
}

/// Reads a UTF-8 encoded string (1.5.3: two-byte big-endian length, then that many bytes of
/// well-formed UTF-8) off the front of `bytes`, checking it against `expected`.
fn read_utf8_string<'a>(bytes: &'a [u8], expected: &str) -> &'a [u8] {
    let len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
    assert_eq!(
        len,
        expected.len(),
        "the length prefix counts bytes, not characters ({expected:?})"
    );
    let text = &bytes[2..2 + len];
    assert_eq!(
        std::str::from_utf8(text).unwrap(),
        expected,
        "the string is the UTF-8 encoding of {expected:?}"
    );
    &bytes[2 + len..]
}

/// Multi-byte characters of every UTF-8 length: the length prefix must count bytes.
const WIDE_TOPIC: &str = "sensors/température/日本/😀";

#[test]
fn publish_starts_its_variable_header_with_the_topic_name_as_a_utf8_string() {
    // MQTT 3.1.1 [MQTT-3.3.2-1]: at every QoS, the first thing after the fixed header is the
    // Topic Name as a UTF-8 encoded string (then the packet identifier at QoS 1 and 2).
    assert_eq!(WIDE_TOPIC.len(), 32, "bytes, while it has 24 characters");
    let mut sim = connected(true);
    for (qos, first_byte) in [(Q0, 0x30), (Q1, 0x32), (Q2, 0x34)] {
        sim.client
            .publish(
                sim.now,
                topic(WIDE_TOPIC),
                Bytes::from_static(b"\x00payload"),
                qos,
                false,
                Properties::new(),
            )
            .unwrap();
        let raw = sim.drain_raw();
        let (first, body) = split_fixed_header(&raw);
        assert_eq!(first, first_byte, "{qos:?}");
        let rest = read_utf8_string(body, WIDE_TOPIC);
        let payload = if qos == Q0 {
            rest
        } else {
            assert_ne!(
                u16::from_be_bytes([rest[0], rest[1]]),
                0,
                "packet identifier"
            );
            &rest[2..]
        };
        assert_eq!(payload, b"\x00payload", "{qos:?}");
    }
}

#[test]
fn subscribe_carries_each_topic_filter_as_a_utf8_string_followed_by_its_qos() {
    // MQTT 3.1.1 [MQTT-3.8.3-1]
    let filters = [("a/+/ü", Q0), ("#", Q1), ("日本/+/😀/#", Q2)];
    let mut sim = connected(true);
    sim.client
        .subscribe(
            sim.now,
            filters
                .iter()
                .map(|(f, q)| (filter(f), SubscriptionOptions::qos(*q)))
                .collect(),
            Properties::new(),
        )
        .unwrap();
    let raw = sim.drain_raw();
    let (first, body) = split_fixed_header(&raw);
    assert_eq!(first, 0x82, "SUBSCRIBE with its reserved flags 0010");
    assert_ne!(
        u16::from_be_bytes([body[0], body[1]]),
        0,
        "packet identifier"
    );
    let mut rest = &body[2..];
    for (f, qos) in filters {
        rest = read_utf8_string(rest, f);
        assert_eq!(rest[0], qos.as_u8(), "Requested QoS byte after {f:?}");
        rest = &rest[1..];
    }
    assert!(rest.is_empty(), "nothing after the last filter: {rest:?}");
}

#[test]
fn unsubscribe_carries_its_topic_filters_as_contiguous_utf8_strings() {
    // MQTT 3.1.1 [MQTT-3.10.3-1]: the strings follow one another with nothing in between.
    let filters = ["a/+/ü", "#", "日本/+/😀/#"];
    let mut sim = connected(true);
    sim.client
        .unsubscribe(
            sim.now,
            filters.iter().map(|f| filter(f)).collect(),
            Properties::new(),
        )
        .unwrap();
    let raw = sim.drain_raw();
    let (first, body) = split_fixed_header(&raw);
    assert_eq!(first, 0xa2, "UNSUBSCRIBE with its reserved flags 0010");
    assert_ne!(
        u16::from_be_bytes([body[0], body[1]]),
        0,
        "packet identifier"
    );
    let mut rest = &body[2..];
    for f in filters {
        rest = read_utf8_string(rest, f);
    }
    assert!(rest.is_empty(), "nothing after the last filter: {rest:?}");
}

// ---------------------------------------------------------------------------------------------
// 2.3.1 Packet identifiers
// ---------------------------------------------------------------------------------------------

/// Every packet with a packet identifier in `packets`, as (name, identifier, dup).
fn id_use(packets: &[Packet]) -> Vec<(&'static str, u16, bool)> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(("PUBLISH", p.packet_id?.get(), p.dup)),
            Packet::PubRel(r) => Some(("PUBREL", r.packet_id.get(), false)),
            Packet::Subscribe(s) => Some(("SUBSCRIBE", s.packet_id.get(), false)),
            Packet::Unsubscribe(u) => Some(("UNSUBSCRIBE", u.packet_id.get(), false)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_resent_packet_keeps_its_packet_identifier() {
    // MQTT 3.1.1 [MQTT-2.3.1-3]: PUBLISH (QoS 1 and 2), PUBREL, SUBSCRIBE and UNSUBSCRIBE
    // resent into the resumed session carry the identifier of their first sending, on every
    // resend.
    let mut sim = connected(false);
    sim.publish("one", Q1);
    sim.publish("two", Q2);
    sim.client
        .subscribe(
            sim.now,
            vec![(filter("s"), SubscriptionOptions::qos(Q1))],
            Properties::new(),
        )
        .unwrap();
    sim.client
        .unsubscribe(sim.now, vec![filter("u")], Properties::new())
        .unwrap();
    sim.publish("three", Q2);
    let first = id_use(&sim.drain().packets);
    let [
        ("PUBLISH", one, false),
        ("PUBLISH", two, false),
        ("SUBSCRIBE", sub, false),
        ("UNSUBSCRIBE", unsub, false),
        ("PUBLISH", three, false),
    ] = first[..]
    else {
        panic!("{first:?}")
    };
    sim.receive(pubrec(three));
    assert_eq!(names(&sim.drain().packets), [format!("PUBREL {three}")]);

    for round in 0..3 {
        let mut resent = id_use(&sim.reconnect(true).packets);
        resent.sort_unstable();
        let mut expected = vec![
            ("PUBLISH", one, true),
            ("PUBLISH", two, true),
            ("PUBREL", three, false),
            ("SUBSCRIBE", sub, false),
            ("UNSUBSCRIBE", unsub, false),
        ];
        expected.sort_unstable();
        assert_eq!(resent, expected, "resend {round}");
    }
}

/// Publishes at QoS 1 and returns the identifier the PUBLISH went out with (checking nothing
/// else went out). The fast path of the wrap-around test.
fn publish_q1_id(sim: &mut Sim) -> u16 {
    sim.publish("x", Q1);
    let mut id = None;
    while let Some(output) = sim.client.poll_output() {
        if let ClientOutput::Transmit(bytes) = output {
            for p in decode_all(&bytes) {
                match p {
                    Packet::Publish(p) if id.is_none() => id = Some(p.packet_id.unwrap().get()),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }
    id.expect("a PUBLISH went out")
}

/// Publishes at QoS 1 and acknowledges it, for every identifier in `ids`, checking that each
/// PUBLISH got the next one.
fn cycle_through(sim: &mut Sim, ids: std::ops::RangeInclusive<u16>) {
    for expected in ids {
        let id = publish_q1_id(sim);
        assert_eq!(id, expected);
        sim.receive(puback(id));
        while sim.client.poll_output().is_some() {}
    }
}

#[test]
fn a_packet_identifier_is_reused_only_once_its_acknowledgement_is_processed() {
    // MQTT 3.1.1 [MQTT-2.3.1-3]: an identifier becomes available again when the client has
    // processed the PUBACK (QoS 1), the PUBCOMP (QoS 2; PUBREC is not enough), the SUBACK or
    // the UNSUBACK. Identifiers wrap at 65,535: the second time round, those still in use are
    // skipped and those whose acknowledgement was processed are reused.
    let mut sim = connected(true);
    // Still in use at the wrap: 1 awaits PUBACK, 2 PUBCOMP (its PUBREC came), 3 SUBACK.
    sim.publish("q1, no PUBACK", Q1);
    sim.publish("q2, PUBREC but no PUBCOMP", Q2);
    sim.client
        .subscribe(
            sim.now,
            vec![(filter("s"), SubscriptionOptions::qos(Q1))],
            Properties::new(),
        )
        .unwrap();
    // Free again by the wrap: 4 after PUBCOMP, 5 after SUBACK, 6 after UNSUBACK.
    sim.publish("q2, completed", Q2);
    sim.client
        .subscribe(
            sim.now,
            vec![(filter("s2"), SubscriptionOptions::qos(Q0))],
            Properties::new(),
        )
        .unwrap();
    sim.client
        .unsubscribe(sim.now, vec![filter("s2")], Properties::new())
        .unwrap();
    assert_eq!(
        names(&sim.drain().packets),
        [
            "PUBLISH 1 q1",
            "PUBLISH 2 q2",
            "SUBSCRIBE 3",
            "PUBLISH 4 q2",
            "SUBSCRIBE 5",
            "UNSUBSCRIBE 6"
        ]
    );
    sim.receive_all(&[pubrec(2), pubrec(4)]);
    assert_eq!(names(&sim.drain().packets), ["PUBREL 2", "PUBREL 4"]);
    sim.receive_all(&[
        pubcomp(4),
        suback(5, SubAckReason::GrantedQoS0),
        Packet::UnsubAck(surgemq_core::codec::UnsubAck {
            packet_id: pid(6),
            properties: Properties::new(),
            reasons: Vec::new(),
        }),
    ]);
    let d = sim.drain();
    assert_eq!(d.events.len(), 3, "three completions: {d:?}");

    // 7 to 65,535 by QoS 1, each acknowledged before the next.
    cycle_through(&mut sim, 7..=u16::MAX);
    // After the wrap: 1, 2 and 3 are skipped (in use); 4, 5, 6 and 7 are reused.
    let reused: Vec<u16> = (0..4).map(|_| publish_q1_id(&mut sim)).collect();
    assert_eq!(reused, [4, 5, 6, 7]);
}

// ---------------------------------------------------------------------------------------------
// 3.14.4 DISCONNECT
// ---------------------------------------------------------------------------------------------

/// Asserts that `outs` ends with the DISCONNECT transmission and then CloseTransport, with
/// nothing transmitted or opened after the DISCONNECT.
fn assert_disconnect_then_close(outs: &[Out], disconnect: &[u8]) {
    let last_sent = outs
        .iter()
        .rposition(|o| matches!(o, Out::Sent(_)))
        .unwrap_or_else(|| panic!("nothing transmitted: {outs:?}"));
    let Out::Sent(bytes) = &outs[last_sent] else {
        unreachable!()
    };
    assert!(
        bytes.ends_with(disconnect),
        "DISCONNECT is the last packet transmitted: {outs:?}"
    );
    let close = outs
        .iter()
        .position(|o| matches!(o, Out::Close))
        .unwrap_or_else(|| panic!("no CloseTransport after DISCONNECT: {outs:?}"));
    assert!(close > last_sent, "closed before DISCONNECT: {outs:?}");
    assert!(
        !outs.iter().any(|o| matches!(o, Out::Open)),
        "no new transport: {outs:?}"
    );
}

/// Feeds everything that could make a client talk again (timeouts across keep-alive and
/// backoff periods, a transport loss, a spurious TransportUp, server packets, commands) and
/// asserts it transmits nothing and opens no transport.
fn assert_silent_forever(sim: &mut Sim, version: ProtocolVersion) {
    let check = |sim: &mut Sim, what: &str| {
        for out in sim.outputs() {
            assert!(
                !matches!(out, Out::Sent(_) | Out::Open),
                "{what}: {out:?} after DISCONNECT"
            );
        }
    };
    sim.client.handle_input(sim.now, ClientInput::TransportDown);
    check(sim, "transport down");
    for _ in 0..50 {
        sim.now = match sim.client.poll_timeout() {
            Some(at) if at > sim.now => at,
            _ => sim.now + Duration::from_secs(31),
        };
        sim.client.handle_input(sim.now, ClientInput::Timeout);
        check(sim, "timeout");
    }
    sim.client.handle_input(sim.now, ClientInput::TransportUp);
    check(sim, "a spurious TransportUp");
    let mut buf = BytesMut::new();
    for p in [
        incoming("t", Q1, Some(9), false, b"late"),
        incoming("t", Q2, Some(10), false, b"late"),
        pubrel(11),
        Packet::PingResp,
    ] {
        p.encode(version, &mut buf).unwrap();
    }
    sim.client
        .handle_input(sim.now, ClientInput::Received(buf.freeze()));
    check(sim, "packets from the server");
    let publish = sim.client.publish(
        sim.now,
        topic("t"),
        Bytes::from_static(b"after"),
        Q1,
        false,
        Properties::new(),
    );
    assert_eq!(publish, Err(ClientError::Stopped));
    let subscribe = sim.client.subscribe(
        sim.now,
        vec![(filter("t"), SubscriptionOptions::qos(Q0))],
        Properties::new(),
    );
    assert_eq!(subscribe, Err(ClientError::Stopped));
    let unsubscribe = sim
        .client
        .unsubscribe(sim.now, vec![filter("t")], Properties::new());
    assert_eq!(unsubscribe, Err(ClientError::Stopped));
    sim.client.disconnect(sim.now);
    check(sim, "commands");
}

#[test]
fn after_disconnect_the_client_closes_the_connection_and_sends_nothing_more() {
    // MQTT 3.1.1 [MQTT-3.14.4-1]: DISCONNECT, then the network connection is closed.
    // MQTT 3.1.1 [MQTT-3.14.4-2]: no control packet after DISCONNECT, whatever happens next.
    let mut config = config("c", false);
    config.keep_alive = 5;
    let mut sim = Sim::new(config);
    sim.connect(false);
    sim.publish("in flight", Q1);
    assert_eq!(names(&sim.drain().packets), ["PUBLISH 1 q1"]);
    // One more on its way (not drained yet) when the application disconnects.
    sim.publish("written just before", Q2);
    sim.client.disconnect(sim.now);
    let outs = sim.outputs();
    assert_disconnect_then_close(&outs, &[0xe0, 0x00]);
    let sent: Vec<Packet> = outs
        .iter()
        .filter_map(|o| match o {
            Out::Sent(b) => Some(decode_all(b)),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(names(&sent), ["PUBLISH 2 q2", "DISCONNECT"]);
    assert!(
        matches!(outs.last(), Some(Out::Close)),
        "nothing after CloseTransport: {outs:?}"
    );
    assert_silent_forever(&mut sim, V311);
}

#[test]
fn after_disconnect_a_durable_client_sends_nothing_that_waited_for_a_commit() {
    // MQTT 3.1.1 [MQTT-3.14.4-1] [MQTT-3.14.4-2]: a PUBLISH and a PUBREC held for a store commit
    // when DISCONNECT goes out stay unsent when the commit arrives afterwards.
    let mut config = config("c", false);
    config.persistence = Persistence::Durable;
    let mut sim = Sim::new(config);
    sim.connect(false);
    sim.publish("held", Q1);
    sim.receive(incoming("t", Q2, Some(7), false, b"in"));
    let mut last_seq = 0;
    while let Some(output) = sim.client.poll_output() {
        match output {
            ClientOutput::Store { seq, .. } => last_seq = seq,
            ClientOutput::Transmit(b) => panic!("sent before its commit: {b:?}"),
            _ => {}
        }
    }
    assert!(
        last_seq > 0,
        "the publish and the QoS 2 identifier are stored"
    );
    sim.client.disconnect(sim.now);
    let outs = sim.outputs();
    assert_disconnect_then_close(&outs, &[0xe0, 0x00]);
    let sent: Vec<Packet> = outs
        .iter()
        .filter_map(|o| match o {
            Out::Sent(b) => Some(decode_all(b)),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(names(&sent), ["DISCONNECT"]);
    sim.client.handle_input(
        sim.now,
        ClientInput::StoreDone {
            seq: last_seq,
            result: Ok(()),
        },
    );
    for out in sim.outputs() {
        assert!(
            !matches!(out, Out::Sent(_) | Out::Open),
            "{out:?} after DISCONNECT"
        );
    }
    assert_silent_forever(&mut sim, V311);
}

// ---------------------------------------------------------------------------------------------
// 4.5 Message receipt, 4.6 ordering
// ---------------------------------------------------------------------------------------------

#[test]
fn every_received_publish_is_acknowledged_according_to_its_qos() {
    // MQTT 3.1.1 [MQTT-4.5.0-2]: also on topics the client never subscribed to, for duplicates
    // it does not deliver again, and for several PUBLISH packets in one read.
    let mut sim = connected(true);
    sim.receive(incoming("never/subscribed", Q0, None, false, b"a"));
    sim.receive(incoming("never/subscribed", Q1, Some(10), false, b"b"));
    sim.receive(incoming("other", Q2, Some(11), false, b"c"));
    let d = sim.drain();
    assert_eq!(names(&d.packets), ["PUBACK 10", "PUBREC 11"]);
    assert_eq!(delivered(&d.events), [b"a", b"b", b"c"]);

    // Resent with DUP before PUBREL: acknowledged again, not delivered again.
    sim.receive(incoming("other", Q2, Some(11), true, b"c"));
    sim.receive(incoming("never/subscribed", Q1, Some(12), true, b"d"));
    let d = sim.drain();
    assert_eq!(names(&d.packets), ["PUBREC 11", "PUBACK 12"]);
    assert_eq!(delivered(&d.events), [b"d"]);

    // Pipelined in one read, mixed with a PUBREL: each answered, in order.
    sim.receive_all(&[
        incoming("x", Q1, Some(20), false, b"e"),
        incoming("x", Q0, None, false, b"f"),
        pubrel(11),
        incoming("x", Q2, Some(21), false, b"g"),
        incoming("x", Q1, Some(22), false, b"h"),
    ]);
    let d = sim.drain();
    assert_eq!(
        names(&d.packets),
        ["PUBACK 20", "PUBCOMP 11", "PUBREC 21", "PUBACK 22"]
    );
    assert_eq!(delivered(&d.events), [b"e", b"f", b"g", b"h"]);
}

/// Publishes `n` QoS 2 messages; returns their identifiers in publish order.
fn publish_q2s(sim: &mut Sim, n: usize) -> Vec<u16> {
    for _ in 0..n {
        sim.publish("q2", Q2);
    }
    let ids: Vec<u16> = id_use(&sim.drain().packets)
        .into_iter()
        .map(|(kind, id, _)| {
            assert_eq!(kind, "PUBLISH");
            id
        })
        .collect();
    assert_eq!(ids.len(), n);
    ids
}

#[test]
fn pubrels_go_out_in_the_order_the_pubrecs_arrived() {
    // MQTT 3.1.1 [MQTT-4.6.0-4]: PUBRECs answered out of publish order, one per read and
    // several in one read.
    let mut sim = connected(true);
    let ids = publish_q2s(&mut sim, 4);
    let order = [ids[2], ids[0], ids[3], ids[1]];
    let mut sent = Vec::new();
    for id in order {
        sim.receive(pubrec(id));
        sent.extend(sim.drain().packets);
    }
    assert_eq!(
        names(&sent),
        order.map(|id| format!("PUBREL {id}")),
        "published {ids:?}"
    );

    let ids = publish_q2s(&mut sim, 4);
    let order = [ids[3], ids[1], ids[0], ids[2]];
    sim.receive_all(&order.map(pubrec));
    assert_eq!(
        names(&sim.drain().packets),
        order.map(|id| format!("PUBREL {id}")),
        "published {ids:?}"
    );
}

#[test]
fn resent_pubrels_keep_the_order_the_pubrecs_arrived() {
    // MQTT 3.1.1 [MQTT-4.6.0-4]: the rule has no exception for the PUBRELs resent on
    // reconnect (3.1.1 [MQTT-4.4.0-1]).
    let mut sim = connected(false);
    let ids = publish_q2s(&mut sim, 3);
    let order = [ids[2], ids[0], ids[1]];
    sim.receive_all(&order.map(pubrec));
    assert_eq!(
        names(&sim.drain().packets),
        order.map(|id| format!("PUBREL {id}"))
    );
    let resent = sim.reconnect(true).packets;
    assert_eq!(
        names(&resent),
        order.map(|id| format!("PUBREL {id}")),
        "published {ids:?}, PUBRECs arrived {order:?}"
    );
}
