//! Conformance of the core client ([`Client`]) to the client-side normative statements of MQTT
//! 3.1.1 (OASIS Standard, 29 October 2014): packet identifiers across resends, the UTF-8 string
//! layout of topic names and filters on the wire, what follows DISCONNECT, acknowledgement of
//! every received PUBLISH, and the order of PUBRELs. Each test cites its statements as
//! `MQTT 3.1.1 [MQTT-x.y.z-n]` (the list is `../shared/conformance/mqtt-v3.1.1-statements.tsv`).
//!
//! The server is scripted: its packets are encoded by hand with the codec, and what the client
//! transmits is decoded (or read byte by byte). Time is virtual.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

#[path = "support/scripted.rs"]
mod scripted;

use bytes::Bytes;
use scripted::{
    Out, Q0, Q1, Q2, Sim, delivered, incoming_on, names, puback, pubcomp, pubrec, pubrel, pubrels,
    suback, unsuback,
};
use surgemq_core::client::{ClientConfig, ClientInput, Persistence};
use surgemq_core::codec::{Packet, Properties, ProtocolVersion, SubAckReason};

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

fn config(client_id: &str, clean_start: bool) -> ClientConfig {
    scripted::config(V311, client_id, clean_start)
}

/// A connected client with a fresh session.
fn connected(clean_start: bool) -> Sim {
    Sim::connected(config("c", clean_start), Properties::new())
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

/// Reads a non-zero packet identifier off the front of `bytes`.
fn skip_packet_id(bytes: &[u8]) -> &[u8] {
    assert_ne!(
        u16::from_be_bytes([bytes[0], bytes[1]]),
        0,
        "packet identifier"
    );
    &bytes[2..]
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
        let payload = Bytes::from_static(b"\x00payload");
        sim.try_publish(WIDE_TOPIC, payload, qos, false, Properties::new())
            .unwrap();
        let raw = sim.drain_raw();
        let (first, body) = split_fixed_header(&raw);
        assert_eq!(first, first_byte, "{qos:?}");
        let rest = read_utf8_string(body, WIDE_TOPIC);
        let payload = if qos == Q0 {
            rest
        } else {
            skip_packet_id(rest)
        };
        assert_eq!(payload, b"\x00payload", "{qos:?}");
    }
}

#[test]
fn subscribe_carries_each_topic_filter_as_a_utf8_string_followed_by_its_qos() {
    // MQTT 3.1.1 [MQTT-3.8.3-1]
    let filters = [("a/+/ü", Q0), ("#", Q1), ("日本/+/😀/#", Q2)];
    let mut sim = connected(true);
    sim.subscribe(&filters).unwrap();
    let raw = sim.drain_raw();
    let (first, body) = split_fixed_header(&raw);
    assert_eq!(first, 0x82, "SUBSCRIBE with its reserved flags 0010");
    let mut rest = skip_packet_id(body);
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
    sim.unsubscribe(&filters).unwrap();
    let raw = sim.drain_raw();
    let (first, body) = split_fixed_header(&raw);
    assert_eq!(first, 0xa2, "UNSUBSCRIBE with its reserved flags 0010");
    let mut rest = skip_packet_id(body);
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
    sim.subscribe(&[("s", Q1)]).unwrap();
    sim.unsubscribe(&["u"]).unwrap();
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
    assert_eq!(
        names(&sim.feed(pubrec(three)).packets),
        [format!("PUBREL {three}")]
    );

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

/// Publishes at QoS 1 and acknowledges it, for every identifier in `ids`, checking that each
/// PUBLISH got the next one.
fn cycle_through(sim: &mut Sim, ids: std::ops::RangeInclusive<u16>) {
    for expected in ids {
        let (_, id) = sim.publish_now("x", Q1);
        assert_eq!(id, expected);
        sim.feed(puback(id));
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
    sim.subscribe(&[("s", Q1)]).unwrap();
    // Free again by the wrap: 4 after PUBCOMP, 5 after SUBACK, 6 after UNSUBACK.
    sim.publish("q2, completed", Q2);
    sim.subscribe(&[("s2", Q0)]).unwrap();
    sim.unsubscribe(&["s2"]).unwrap();
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
    assert_eq!(
        names(&sim.feed_all(&[pubrec(2), pubrec(4)]).packets),
        ["PUBREL 2", "PUBREL 4"]
    );
    let d = sim.feed_all(&[
        pubcomp(4),
        suback(5, SubAckReason::GrantedQoS0),
        unsuback(6, Vec::new()),
    ]);
    assert_eq!(d.events.len(), 3, "three completions: {d:?}");

    // 7 to 65,535 by QoS 1, each acknowledged before the next.
    cycle_through(&mut sim, 7..=u16::MAX);
    // After the wrap: 1, 2 and 3 are skipped (in use); 4, 5, 6 and 7 are reused.
    let reused: Vec<u16> = (0..4).map(|_| sim.publish_now("x", Q1).1).collect();
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

/// The application disconnects: the outputs end with the DISCONNECT transmission and then
/// CloseTransport. Returns them, and the packets transmitted among them.
fn disconnect(sim: &mut Sim) -> (Vec<Out>, Vec<Packet>) {
    sim.client.disconnect(sim.now);
    let outs = sim.outputs();
    assert_disconnect_then_close(&outs, &[0xe0, 0x00]);
    let sent = outs
        .iter()
        .filter_map(|o| match o {
            Out::Sent(b) => Some(sim.decode(b)),
            _ => None,
        })
        .flatten()
        .collect();
    (outs, sent)
}

/// The packets from the server that would need answers, arriving after DISCONNECT.
fn late_packets() -> [Packet; 4] {
    [
        incoming_on("t", Q1, Some(9), false, b"late"),
        incoming_on("t", Q2, Some(10), false, b"late"),
        pubrel(11),
        Packet::PingResp,
    ]
}

#[test]
fn after_disconnect_the_client_closes_the_connection_and_sends_nothing_more() {
    // MQTT 3.1.1 [MQTT-3.14.4-1]: DISCONNECT, then the network connection is closed.
    // MQTT 3.1.1 [MQTT-3.14.4-2]: no control packet after DISCONNECT, whatever happens next.
    let mut config = config("c", false);
    config.keep_alive = 5;
    let mut sim = Sim::connected(config, Properties::new());
    sim.publish("in flight", Q1);
    assert_eq!(names(&sim.drain().packets), ["PUBLISH 1 q1"]);
    // One more on its way (not drained yet) when the application disconnects.
    sim.publish("written just before", Q2);
    let (outs, sent) = disconnect(&mut sim);
    assert_eq!(names(&sent), ["PUBLISH 2 q2", "DISCONNECT"]);
    assert!(
        matches!(outs.last(), Some(Out::Close)),
        "nothing after CloseTransport: {outs:?}"
    );
    sim.assert_silent_forever(&late_packets());
}

#[test]
fn after_disconnect_a_durable_client_sends_nothing_that_waited_for_a_commit() {
    // MQTT 3.1.1 [MQTT-3.14.4-1] [MQTT-3.14.4-2]: a PUBLISH and a PUBREC held for a store commit
    // when DISCONNECT goes out stay unsent when the commit arrives afterwards.
    let mut config = config("c", false);
    config.persistence = Persistence::Durable;
    let mut sim = Sim::connected(config, Properties::new());
    sim.publish("held", Q1);
    sim.receive(incoming_on("t", Q2, Some(7), false, b"in"));
    let mut last_seq = 0;
    for out in sim.outputs() {
        match out {
            Out::Store(seq) => last_seq = seq,
            Out::Sent(b) => panic!("sent before its commit: {b:?}"),
            _ => {}
        }
    }
    assert!(
        last_seq > 0,
        "the publish and the QoS 2 identifier are stored"
    );
    let (_, sent) = disconnect(&mut sim);
    assert_eq!(names(&sent), ["DISCONNECT"]);
    sim.client.handle_input(
        sim.now,
        ClientInput::StoreDone {
            seq: last_seq,
            result: Ok(()),
        },
    );
    sim.assert_silent("the commit");
    sim.assert_silent_forever(&late_packets());
}

// ---------------------------------------------------------------------------------------------
// 4.5 Message receipt, 4.6 ordering
// ---------------------------------------------------------------------------------------------

#[test]
fn every_received_publish_is_acknowledged_according_to_its_qos() {
    // MQTT 3.1.1 [MQTT-4.5.0-2]: also on topics the client never subscribed to, for duplicates
    // it does not deliver again, and for several PUBLISH packets in one read.
    let mut sim = connected(true);
    sim.receive(incoming_on("never/subscribed", Q0, None, false, b"a"));
    sim.receive(incoming_on("never/subscribed", Q1, Some(10), false, b"b"));
    let d = sim.feed(incoming_on("other", Q2, Some(11), false, b"c"));
    assert_eq!(names(&d.packets), ["PUBACK 10", "PUBREC 11"]);
    assert_eq!(delivered(&d.events), [b"a", b"b", b"c"]);

    // Resent with DUP before PUBREL: acknowledged again, not delivered again.
    sim.receive(incoming_on("other", Q2, Some(11), true, b"c"));
    let d = sim.feed(incoming_on("never/subscribed", Q1, Some(12), true, b"d"));
    assert_eq!(names(&d.packets), ["PUBREC 11", "PUBACK 12"]);
    assert_eq!(delivered(&d.events), [b"d"]);

    // Pipelined in one read, mixed with a PUBREL: each answered, in order.
    let d = sim.feed_all(&[
        incoming_on("x", Q1, Some(20), false, b"e"),
        incoming_on("x", Q0, None, false, b"f"),
        pubrel(11),
        incoming_on("x", Q2, Some(21), false, b"g"),
        incoming_on("x", Q1, Some(22), false, b"h"),
    ]);
    assert_eq!(
        names(&d.packets),
        ["PUBACK 20", "PUBCOMP 11", "PUBREC 21", "PUBACK 22"]
    );
    assert_eq!(delivered(&d.events), [b"e", b"f", b"g", b"h"]);
}

#[test]
fn pubrels_go_out_in_the_order_the_pubrecs_arrived() {
    // MQTT 3.1.1 [MQTT-4.6.0-4]: PUBRECs answered out of publish order, one per read and
    // several in one read.
    let mut sim = connected(true);
    let ids = sim.publish_q2s(4);
    let order = [ids[2], ids[0], ids[3], ids[1]];
    let sent = sim.feed_each(order.map(pubrec));
    assert_eq!(names(&sent), pubrels(&order), "published {ids:?}");

    let ids = sim.publish_q2s(4);
    let order = [ids[3], ids[1], ids[0], ids[2]];
    let sent = sim.feed_all(&order.map(pubrec)).packets;
    assert_eq!(names(&sent), pubrels(&order), "published {ids:?}");
}

#[test]
fn resent_pubrels_keep_the_order_the_pubrecs_arrived() {
    // MQTT 3.1.1 [MQTT-4.6.0-4]: the rule has no exception for the PUBRELs resent on
    // reconnect (3.1.1 [MQTT-4.4.0-1]).
    connected(false).assert_resent_pubrels_keep_pubrec_order();
}
