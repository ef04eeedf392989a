//! Conformance of the broker state machine to MQTT 3.1.1 (OASIS Standard, 29 October 2014),
//! sections 3 and 4, and to MQTT 3.1 where it differs: one test per normative statement whose
//! subject is the server, named after the behaviour and citing the statement id
//! (`// MQTT 3.1.1 [MQTT-x.y.z-n]`; the list is `../shared/conformance/mqtt-v3.1.1-statements.tsv`).
//!
//! Also the broker's own limits and policies that a conforming server may choose (in-flight
//! window, queue overflow, back-pressure, authentication, `$SYS`), and isolation between clients.
//!
//! Everything runs on [`surgemq_tests::harness::TestBroker`]: virtual time, no sockets.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use surgemq_core::broker::{
    AuthMode, AuthVerdict, BrokerConfig, DisconnectCause, Event, OverflowPolicy, ProtocolViolation,
};
use surgemq_core::codec::{
    ConnectReason, Packet, Properties, ProtocolVersion, Publish, QoS, SubAckReason, Will,
};
use surgemq_core::string::MqttString;
use surgemq_tests::harness::{
    ClientConn, TestBroker, connect_packet, disconnect, pid, puback, pubcomp, publish, pubrec,
    pubrel, subscribe, topic, unsubscribe,
};

const V31: ProtocolVersion = ProtocolVersion::V3_1;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The default configuration without `$SYS` (quiet outputs); tests change what they check.
fn config() -> BrokerConfig {
    BrokerConfig {
        sys_interval: None,
        ..BrokerConfig::default()
    }
}

fn tb() -> TestBroker {
    TestBroker::new(config())
}

/// Subscribes with packet id 1, checks the SUBACK, returns what followed it (retained messages).
fn subscribe_ok(tb: &mut TestBroker, c: ClientConn, filters: &[(&str, QoS)]) -> Vec<Publish> {
    tb.send(c, &subscribe(1, filters));
    let mut packets = tb.recv(c).into_iter();
    match packets.next() {
        Some(Packet::SubAck(ack)) => assert_eq!(ack.packet_id, pid(1)),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    packets
        .map(|p| match p {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        })
        .collect()
}

/// A clean 3.1.1 client subscribed to `filters`.
fn subscriber(tb: &mut TestBroker, client_id: &str, filters: &[(&str, QoS)]) -> ClientConn {
    let c = tb.connect(client_id, true, V311);
    let retained = subscribe_ok(tb, c, filters);
    assert!(
        retained.is_empty(),
        "unexpected retained messages: {retained:?}"
    );
    c
}

/// Publishes at QoS 0 (no acknowledgement to read).
fn pub0(tb: &mut TestBroker, c: ClientConn, topic_name: &str, payload: &str, retain: bool) {
    tb.send(
        c,
        &publish(topic_name, payload.as_bytes(), Q0, None, retain),
    );
}

/// Publishes at QoS 1 and checks the PUBACK.
fn pub1(
    tb: &mut TestBroker,
    c: ClientConn,
    topic_name: &str,
    payload: &str,
    retain: bool,
    id: u16,
) {
    tb.send(
        c,
        &publish(topic_name, payload.as_bytes(), Q1, Some(id), retain),
    );
    assert_eq!(tb.recv(c), vec![puback(id)]);
}

/// Publishes at QoS 2 and completes the exchange.
fn pub2(
    tb: &mut TestBroker,
    c: ClientConn,
    topic_name: &str,
    payload: &str,
    retain: bool,
    id: u16,
) {
    tb.send(
        c,
        &publish(topic_name, payload.as_bytes(), Q2, Some(id), retain),
    );
    assert_eq!(tb.recv(c), vec![pubrec(id)]);
    tb.send(c, &pubrel(id));
    assert_eq!(tb.recv(c), vec![pubcomp(id)]);
}

fn text(p: &Publish) -> &str {
    std::str::from_utf8(&p.payload).unwrap()
}

fn texts(ps: &[Publish]) -> Vec<&str> {
    ps.iter().map(text).collect()
}

fn will(topic_name: &str, payload: &str, qos: QoS, retain: bool) -> Will {
    Will {
        topic: topic(topic_name),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain,
        properties: Properties::new(),
    }
}

/// A clean 3.1.1 client with a Will and a keep alive.
fn with_will(tb: &mut TestBroker, client_id: &str, w: Will, keep_alive: u16) -> ClientConn {
    let mut connect = connect_packet(client_id, true, V311);
    connect.will = Some(w);
    connect.keep_alive = keep_alive;
    tb.connect_with(connect)
}

/// A CONNECT written byte by byte (for what the codec refuses to encode).
fn raw_connect(name: &str, level: u8, flags: u8, client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend((name.len() as u16).to_be_bytes());
    body.extend(name.as_bytes());
    body.push(level);
    body.push(flags);
    body.extend(0u16.to_be_bytes());
    body.extend((client_id.len() as u16).to_be_bytes());
    body.extend(client_id.as_bytes());
    let mut out = vec![0x10, u8::try_from(body.len()).unwrap()];
    out.extend(body);
    out
}

/// Raw bytes of a packet encoded by the codec in 3.1.1.
fn bytes_of(packet: &Packet) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    packet.encode(V311, &mut out).unwrap();
    out.to_vec()
}

/// Why the broker ended a connection, from its events.
fn disconnect_cause(
    tb: &mut TestBroker,
    conn: impl Into<surgemq_core::broker::ConnId>,
) -> Option<DisconnectCause> {
    let conn = conn.into();
    tb.events().iter().find_map(|e| match e {
        Event::Disconnected { conn: c, cause, .. } if *c == conn => Some(cause.clone()),
        _ => None,
    })
}

/// Sends raw bytes on a fresh connected client and checks the broker closes it without
/// answering.
fn assert_closes_connected_client(bytes: &[u8]) {
    let mut tb = tb();
    let c = tb.connect("c", true, V311);
    tb.send_raw(c, bytes);
    assert_eq!(tb.recv(c), vec![], "no answer to a malformed packet");
    assert!(tb.is_closed(c));
    assert!(
        matches!(
            disconnect_cause(&mut tb, c),
            Some(DisconnectCause::Violation(_))
        ),
        "closed as a protocol violation"
    );
}

const CONNACK_ACCEPTED: [u8; 4] = [0x20, 0x02, 0x00, 0x00];

// ---------------------------------------------------------------------------------------------
// 3.1 CONNECT
// ---------------------------------------------------------------------------------------------

#[test]
fn a_first_packet_other_than_connect_closes_the_connection() {
    // MQTT 3.1.1 [MQTT-3.1.0-1]
    let mut tb = tb();
    let watcher = subscriber(&mut tb, "watcher", &[("#", Q0)]);
    let conn = tb.open();
    tb.send(conn, &publish("a", b"sneaky", Q0, None, false));
    assert_eq!(tb.recv(conn), vec![]);
    assert!(tb.is_closed(conn));
    assert_eq!(
        tb.recv(watcher),
        vec![],
        "nothing from before CONNECT is processed"
    );

    let conn = tb.open();
    tb.send(conn, &Packet::PingReq);
    assert_eq!(tb.recv(conn), vec![]);
    assert!(tb.is_closed(conn));
}

#[test]
fn a_second_connect_is_a_protocol_violation_and_closes() {
    // MQTT 3.1.1 [MQTT-3.1.0-2]
    let mut tb = tb();
    let c = tb.connect("c", true, V311);
    tb.send(
        c,
        &Packet::Connect(Box::new(connect_packet("c", true, V311))),
    );
    assert_eq!(tb.recv(c), vec![]);
    assert!(tb.is_closed(c));
    assert_eq!(
        disconnect_cause(&mut tb, c),
        Some(DisconnectCause::Violation(ProtocolViolation::SecondConnect))
    );
}

#[test]
fn an_unknown_protocol_name_closes_without_connack() {
    // MQTT 3.1.1 [MQTT-3.1.2-1]: the server may disconnect; it must not continue as 3.1.1.
    let mut tb = tb();
    let conn = tb.open();
    tb.send_raw(conn, &raw_connect("MQTX", 4, 0x02, "c"));
    assert_eq!(tb.recv_raw(conn), Vec::<u8>::new());
    assert!(tb.is_closed(conn));
}

#[test]
fn an_unsupported_protocol_level_gets_connack_0x01_then_close() {
    // MQTT 3.1.1 [MQTT-3.1.2-2]
    for (name, level) in [("MQTT", 6), ("MQTT", 2), ("MQTT", 3), ("MQIsdp", 4)] {
        let mut tb = tb();
        let conn = tb.open();
        tb.send_raw(conn, &raw_connect(name, level, 0x02, "c"));
        assert_eq!(
            tb.recv_raw(conn),
            vec![0x20, 0x02, 0x00, 0x01],
            "{name} level {level}"
        );
        assert!(tb.is_closed(conn));
    }
}

#[test]
fn a_connect_with_the_reserved_flag_set_closes_without_connack() {
    // MQTT 3.1.1 [MQTT-3.1.2-3]
    let mut tb = tb();
    let conn = tb.open();
    tb.send_raw(conn, &raw_connect("MQTT", 4, 0x03, "c"));
    assert_eq!(tb.recv_raw(conn), Vec::<u8>::new());
    assert!(tb.is_closed(conn));
}

#[test]
fn an_invalid_connect_closes_without_connack() {
    // MQTT 3.1.1 [MQTT-3.1.4-1]: Will QoS without the Will Flag; Will Retain without it.
    for flags in [0x0a, 0x22] {
        let mut tb = tb();
        let conn = tb.open();
        tb.send_raw(conn, &raw_connect("MQTT", 4, flags, "c"));
        assert_eq!(tb.recv_raw(conn), Vec::<u8>::new(), "flags {flags:#04x}");
        assert!(tb.is_closed(conn));
    }
}

#[test]
fn clean_session_0_resumes_the_stored_session_with_session_present() {
    // MQTT 3.1.1 [MQTT-3.1.2-4] [MQTT-3.2.2-2] [MQTT-3.1.3-2] [MQTT-4.1.0-1]
    let mut tb = tb();
    let c = tb.connect("dev", false, V311);
    subscribe_ok(&mut tb, c, &[("t", Q1)]);
    tb.send(c, &disconnect());
    assert!(tb.is_closed(c));
    assert_eq!(tb.broker().session_count(), 1, "kept after DISCONNECT");

    let c = tb.connect("dev", false, V311);
    assert!(c.session_present);
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "t", "still subscribed", false, 1);
    assert_eq!(texts(&tb.recv_publishes(c)), ["still subscribed"]);
}

#[test]
fn a_new_persistent_session_has_session_present_0() {
    // MQTT 3.1.1 [MQTT-3.2.2-3] [MQTT-3.1.4-4]
    let mut tb = tb();
    let conn = tb.open();
    tb.send(
        conn,
        &Packet::Connect(Box::new(connect_packet("fresh", false, V311))),
    );
    assert_eq!(tb.recv_raw(conn), CONNACK_ACCEPTED);
}

#[test]
fn offline_persistent_session_queues_qos1_and_qos2_messages() {
    // MQTT 3.1.1 [MQTT-3.1.2-5] [MQTT-4.5.0-1]; QoS 0 may be queued too, and by default is not.
    let mut tb = tb();
    let c = tb.connect("dev", false, V311);
    subscribe_ok(&mut tb, c, &[("t", Q2)]);
    tb.send(c, &disconnect());
    let p = tb.connect("p", true, V311);
    pub0(&mut tb, p, "t", "zero", false);
    pub1(&mut tb, p, "t", "one", false, 1);
    pub2(&mut tb, p, "t", "two", false, 2);
    assert_eq!(tb.broker().queued_messages("dev"), Some(2));

    let c = tb.connect("dev", false, V311);
    assert!(c.session_present);
    let got = tb.recv_publishes(c);
    assert_eq!(texts(&got), ["one", "two"]);
    assert_eq!(got[0].qos, Q1);
    assert_eq!(got[1].qos, Q2);
    // First deliveries, not re-deliveries: DUP 0 ([MQTT-3.3.1-1]).
    assert!(got.iter().all(|p| !p.dup), "{got:?}");
}

#[test]
fn clean_session_1_discards_the_previous_session_and_is_not_kept() {
    // MQTT 3.1.1 [MQTT-3.1.2-6] [MQTT-3.2.2-1] [MQTT-3.1.4-3]
    let mut tb = tb();
    let c = tb.connect("dev", false, V311);
    subscribe_ok(&mut tb, c, &[("t", Q1)]);
    tb.send(c, &disconnect());

    let c = tb.connect("dev", true, V311);
    assert!(
        !c.session_present,
        "a stored session existed, but clean session discards it"
    );
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "t", "nobody", false, 1);
    assert_eq!(tb.recv(c), vec![], "the old subscription is gone");
    tb.send(c, &disconnect());
    assert_eq!(tb.broker().session_count(), 1, "only the publisher's");

    let c = tb.connect("dev", false, V311);
    assert!(!c.session_present, "the clean session was not kept");
}

#[test]
fn retained_messages_are_not_session_state() {
    // MQTT 3.1.1 [MQTT-3.1.2-7]
    let mut tb = tb();
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "r", "kept", true, 1);
    tb.send(p, &disconnect());
    assert_eq!(tb.broker().session_count(), 0);

    let s = tb.connect("s", true, V311);
    let retained = subscribe_ok(&mut tb, s, &[("r", Q1)]);
    assert_eq!(texts(&retained), ["kept"]);
}

#[test]
fn will_is_published_when_the_connection_is_lost() {
    // MQTT 3.1.1 [MQTT-3.1.2-8]
    let mut tb = tb();
    let watcher = subscriber(&mut tb, "watcher", &[("will/#", Q2)]);
    let c = with_will(&mut tb, "c", will("will/c", "gone", Q1, false), 0);
    tb.close_socket(c);
    let got = tb.recv_publishes(watcher);
    assert_eq!(texts(&got), ["gone"]);
    assert_eq!(got[0].topic.as_str(), "will/c");
}

#[test]
fn will_is_published_on_keep_alive_timeout() {
    // MQTT 3.1.1 [MQTT-3.1.2-8] [MQTT-3.1.2-24]
    let mut tb = tb();
    let watcher = subscriber(&mut tb, "watcher", &[("will/#", Q0)]);
    let c = with_will(&mut tb, "c", will("will/c", "silent", Q0, false), 2);
    tb.advance(Duration::from_secs(3));
    assert!(tb.is_closed(c));
    assert_eq!(
        disconnect_cause(&mut tb, c),
        Some(DisconnectCause::Violation(
            ProtocolViolation::KeepAliveTimeout
        ))
    );
    assert_eq!(texts(&tb.recv_publishes(watcher)), ["silent"]);
}

#[test]
fn will_is_published_on_a_protocol_error() {
    // MQTT 3.1.1 [MQTT-3.1.2-8] [MQTT-4.8.0-1]
    let mut tb = tb();
    let watcher = subscriber(&mut tb, "watcher", &[("will/#", Q0)]);
    let c = with_will(&mut tb, "c", will("will/c", "broke", Q0, false), 0);
    tb.send_raw(c, &[0x00, 0x00]); // reserved packet type 0
    assert!(tb.is_closed(c));
    assert_eq!(texts(&tb.recv_publishes(watcher)), ["broke"]);
}

#[test]
fn will_is_published_at_its_qos_capped_by_the_subscription() {
    // MQTT 3.1.1 [MQTT-3.1.2-9] (the server applies the Will QoS) [MQTT-3.8.4-6]
    let mut tb = tb();
    let w2 = subscriber(&mut tb, "w2", &[("will/#", Q2)]);
    let w1 = subscriber(&mut tb, "w1", &[("will/#", Q1)]);
    let c = with_will(&mut tb, "c", will("will/c", "gone", Q2, false), 0);
    tb.close_socket(c);
    let got2 = tb.recv_publishes(w2);
    let got1 = tb.recv_publishes(w1);
    assert_eq!((got2.len(), got1.len()), (1, 1));
    assert_eq!(got2[0].qos, Q2);
    assert_eq!(got1[0].qos, Q1);
}

#[test]
fn will_is_deleted_after_it_is_published() {
    // MQTT 3.1.1 [MQTT-3.1.2-10]
    let mut tb = tb();
    let watcher = subscriber(&mut tb, "watcher", &[("will/#", Q0)]);
    let c = with_will(&mut tb, "c", will("will/c", "once", Q0, false), 0);
    tb.close_socket(c);
    tb.close_socket(c); // a second report of the same loss
    assert_eq!(texts(&tb.recv_publishes(watcher)), ["once"]);

    let c = tb.connect("c", true, V311); // same client, no Will this time
    tb.close_socket(c);
    assert_eq!(tb.recv(watcher), vec![]);
}

#[test]
fn no_will_flag_means_nothing_is_published_on_close() {
    // MQTT 3.1.1 [MQTT-3.1.2-12]
    let mut tb = tb();
    let watcher = subscriber(&mut tb, "watcher", &[("#", Q0)]);
    let mut connect = connect_packet("c", true, V311);
    connect.keep_alive = 1;
    let c = tb.connect_with(connect);
    tb.advance(Duration::from_secs(2)); // keep-alive timeout
    assert!(tb.is_closed(c));
    let d = tb.connect("d", true, V311);
    tb.close_socket(d);
    assert_eq!(tb.recv(watcher), vec![]);
}

#[test]
fn will_with_retain_0_is_published_not_retained() {
    // MQTT 3.1.1 [MQTT-3.1.2-16]
    let mut tb = tb();
    let watcher = subscriber(&mut tb, "watcher", &[("will/#", Q0)]);
    let c = with_will(&mut tb, "c", will("will/c", "gone", Q0, false), 0);
    tb.close_socket(c);
    let got = tb.recv_publishes(watcher);
    assert_eq!(texts(&got), ["gone"]);
    assert!(!got[0].retain);
    assert_eq!(tb.broker().retained_count(), 0);
    let late = tb.connect("late", true, V311);
    assert!(subscribe_ok(&mut tb, late, &[("will/#", Q0)]).is_empty());
}

#[test]
fn will_with_retain_1_is_published_retained() {
    // MQTT 3.1.1 [MQTT-3.1.2-17] (and [MQTT-3.3.1-9] for the established subscriber)
    let mut tb = tb();
    let watcher = subscriber(&mut tb, "watcher", &[("will/#", Q1)]);
    let c = with_will(&mut tb, "c", will("will/c", "gone", Q1, true), 0);
    tb.close_socket(c);
    let got = tb.recv_publishes(watcher);
    assert_eq!(texts(&got), ["gone"]);
    assert!(!got[0].retain);
    let late = tb.connect("late", true, V311);
    let retained = subscribe_ok(&mut tb, late, &[("will/#", Q1)]);
    assert_eq!(texts(&retained), ["gone"]);
    assert!(retained[0].retain);
    assert_eq!(retained[0].qos, Q1);
}

#[test]
fn will_is_discarded_on_disconnect() {
    // MQTT 3.1.1 [MQTT-3.14.4-3] [MQTT-3.1.2-10]
    let mut tb = tb();
    let watcher = subscriber(&mut tb, "watcher", &[("will/#", Q0)]);
    let c = with_will(&mut tb, "c", will("will/c", "never", Q0, true), 0);
    tb.send(c, &disconnect());
    assert!(tb.is_closed(c));
    assert_eq!(
        disconnect_cause(&mut tb, c),
        Some(DisconnectCause::ClientDisconnect)
    );
    assert_eq!(tb.recv(watcher), vec![]);
    assert_eq!(tb.broker().retained_count(), 0);
}

#[test]
fn keep_alive_is_enforced_at_one_and_a_half_periods() {
    // MQTT 3.1.1 [MQTT-3.1.2-24]
    let mut tb = tb();
    let mut connect = connect_packet("c", true, V311);
    connect.keep_alive = 10;
    let c = tb.connect_with(connect);
    tb.advance(Duration::from_millis(14_999));
    assert!(!tb.is_closed(c), "still within 1.5 x keep alive");
    tb.advance(Duration::from_millis(1));
    assert!(tb.is_closed(c), "closed at 1.5 x keep alive");
}

#[test]
fn any_packet_restarts_the_keep_alive_period() {
    // MQTT 3.1.1 [MQTT-3.1.2-24]: counted from the last packet received.
    let mut tb = tb();
    let mut connect = connect_packet("c", true, V311);
    connect.keep_alive = 10;
    let c = tb.connect_with(connect);
    tb.advance(Duration::from_secs(10));
    tb.send(c, &Packet::PingReq);
    assert_eq!(tb.recv(c), vec![Packet::PingResp]);
    tb.advance(Duration::from_secs(10));
    pub0(&mut tb, c, "t", "activity", false);
    tb.advance(Duration::from_millis(14_999));
    assert!(!tb.is_closed(c));
    tb.advance(Duration::from_millis(1));
    assert!(tb.is_closed(c));
}

#[test]
fn keep_alive_0_turns_the_timeout_off() {
    // MQTT 3.1.1 section 3.1.2.10: a Keep Alive of zero turns the mechanism off.
    let mut tb = tb();
    let c = tb.connect("c", true, V311);
    tb.advance(Duration::from_secs(24 * 3600));
    assert!(!tb.is_closed(c));
}

#[test]
fn an_empty_client_id_with_clean_session_is_assigned_a_unique_one() {
    // MQTT 3.1.1 [MQTT-3.1.3-6]
    let mut tb = tb();
    let a = tb.connect("", true, V311);
    let b = tb.connect("", true, V311);
    let ids: Vec<MqttString> = tb
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::Connected { client_id, .. } => Some(client_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(!ids[0].is_empty() && !ids[1].is_empty());
    assert_ne!(ids[0], ids[1]);
    assert!(
        !tb.is_closed(a),
        "two assigned ids do not take each other over"
    );
    // Handled as if the client had sent it: the session works.
    subscribe_ok(&mut tb, a, &[("t", Q0)]);
    pub0(&mut tb, b, "t", "hello", false);
    assert_eq!(texts(&tb.recv_publishes(a)), ["hello"]);
}

#[test]
fn an_empty_client_id_without_clean_session_is_rejected_with_0x02() {
    // MQTT 3.1.1 [MQTT-3.1.3-8] [MQTT-3.2.2-4] [MQTT-3.2.2-5]
    let mut tb = tb();
    let conn = tb.open();
    tb.send(
        conn,
        &Packet::Connect(Box::new(connect_packet("", false, V311))),
    );
    assert_eq!(tb.recv_raw(conn), vec![0x20, 0x02, 0x00, 0x02]);
    assert!(tb.is_closed(conn));
}

#[test]
fn client_ids_of_1_to_23_letters_and_digits_are_accepted() {
    // MQTT 3.1.1 [MQTT-3.1.3-5]
    let mut tb = tb();
    let ids = [
        "a",
        "Z",
        "0",
        "abcdefghijklmnopqrstuvw",
        "xyzABCDEFGHIJKLMNOPQRST",
        "UVWXYZ01234567890123456",
    ];
    for id in ids {
        for (clean, version) in [(true, V311), (false, V311), (true, V31)] {
            let c = tb.connect(id, clean, version);
            tb.send(c, &disconnect());
        }
    }
}

#[test]
fn a_client_id_the_server_rejects_gets_0x02_then_close() {
    // MQTT 3.1.1 [MQTT-3.1.3-9] [MQTT-3.2.2-5]
    let mut tb = TestBroker::new(BrokerConfig {
        max_client_id_len: 8,
        ..config()
    });
    let conn = tb.open();
    tb.send(
        conn,
        &Packet::Connect(Box::new(connect_packet("123456789", true, V311))),
    );
    assert_eq!(tb.recv_raw(conn), vec![0x20, 0x02, 0x00, 0x02]);
    assert!(tb.is_closed(conn));
    tb.connect("12345678", true, V311);
}

#[test]
fn a_second_connection_with_the_same_client_id_takes_over() {
    // MQTT 3.1.1 [MQTT-3.1.4-2]
    let mut tb = tb();
    let old = tb.connect("x", false, V311);
    subscribe_ok(&mut tb, old, &[("t", Q1)]);
    let new = tb.connect("x", false, V311);
    assert!(tb.is_closed(old));
    assert_eq!(
        disconnect_cause(&mut tb, old),
        Some(DisconnectCause::TakenOver)
    );
    assert!(!tb.is_closed(new));
    assert!(new.session_present);
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "t", "to the new one", false, 1);
    assert_eq!(texts(&tb.recv_publishes(new)), ["to the new one"]);
    tb.send(new, &Packet::PingReq);
    assert_eq!(tb.recv(new), vec![Packet::PingResp]);
}

#[test]
fn nothing_is_processed_after_a_rejected_connect() {
    // MQTT 3.1.1 [MQTT-3.1.4-5]
    let mut tb = tb();
    let watcher = subscriber(&mut tb, "watcher", &[("#", Q0)]);
    let conn = tb.open();
    let mut chunk = bytes_of(&Packet::Connect(Box::new(connect_packet("", false, V311))));
    chunk.extend(bytes_of(&publish("r", b"retained?", Q0, None, true)));
    chunk.extend(bytes_of(&subscribe(1, &[("#", Q0)])));
    chunk.extend(bytes_of(&Packet::PingReq));
    tb.send_raw(conn, &chunk);
    assert_eq!(
        tb.recv_raw(conn),
        vec![0x20, 0x02, 0x00, 0x02],
        "CONNACK 2 and nothing else"
    );
    assert!(tb.is_closed(conn));
    tb.send(conn, &publish("r", b"late", Q0, None, true));
    assert_eq!(tb.recv(watcher), vec![]);
    assert_eq!(tb.broker().retained_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// 3.2 CONNACK
// ---------------------------------------------------------------------------------------------

#[test]
fn connack_is_the_first_packet_sent() {
    // MQTT 3.1.1 [MQTT-3.2.0-1]: also with pipelined packets and messages waiting.
    let mut tb = tb();
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "r", "retained", true, 1);
    let conn = tb.open();
    let mut chunk = bytes_of(&Packet::Connect(Box::new(connect_packet("c", true, V311))));
    chunk.extend(bytes_of(&subscribe(1, &[("r", Q1)])));
    chunk.extend(bytes_of(&Packet::PingReq));
    tb.send_raw(conn, &chunk);
    let got = tb.recv(conn);
    assert!(matches!(got[0], Packet::ConnAck(_)), "{got:?}");
    assert!(matches!(got[1], Packet::SubAck(_)), "{got:?}");
    assert!(matches!(got[2], Packet::Publish(_)), "{got:?}");
    assert_eq!(got[3], Packet::PingResp);

    // A resumed session with queued messages: CONNACK still first.
    let d = tb.connect("d", false, V311);
    subscribe_ok(&mut tb, d, &[("q", Q1)]);
    tb.close_socket(d);
    pub1(&mut tb, p, "q", "queued", false, 2);
    let conn = tb.open();
    tb.send(
        conn,
        &Packet::Connect(Box::new(connect_packet("d", false, V311))),
    );
    let got = tb.recv(conn);
    assert!(
        matches!(&got[0], Packet::ConnAck(a) if a.session_present),
        "{got:?}"
    );
    assert!(
        matches!(&got[1], Packet::Publish(p) if text(p) == "queued"),
        "{got:?}"
    );
}

#[test]
fn a_refusing_connack_has_session_present_0_even_with_a_stored_session() {
    // MQTT 3.1.1 [MQTT-3.2.2-4] [MQTT-3.2.2-5]
    let mut tb = TestBroker::new(BrokerConfig {
        auth: AuthMode::LoopbackOnly,
        ..config()
    });
    let c = tb.connect("dev", false, V311);
    tb.send(c, &disconnect());
    let conn = tb.open_from("192.0.2.7:50000".parse().unwrap());
    tb.send(
        conn,
        &Packet::Connect(Box::new(connect_packet("dev", false, V311))),
    );
    assert_eq!(tb.recv_raw(conn), vec![0x20, 0x02, 0x00, 0x05]);
    assert!(tb.is_closed(conn));
}

/// A CONNECT body (variable header and payload) without its fixed header: protocol "MQTT"
/// level 4, `flags`, keep alive 0, then `payload` as given.
fn connect_body(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, flags, 0x00, 0x00];
    body.extend_from_slice(payload);
    body
}

/// A packet of type and flags `first` around `body` (one-byte Remaining Length).
fn with_fixed_header(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first, u8::try_from(body.len()).unwrap()];
    out.extend_from_slice(body);
    out
}

#[test]
fn a_connect_no_return_code_fits_is_closed_without_any_connack() {
    // MQTT 3.1.1 [MQTT-3.2.2-6]: CONNECT packets malformed in their framing or Will fields, for
    // which none of the return codes 1 to 5 is meant (malformed user names and passwords are
    // left out: return code 4 covers them). The server closes the connection without sending a
    // single byte (so no CONNACK), creates no session and processes nothing that followed.
    let client_id = [0x00, 0x01, b'c'];
    let mut trailing = connect_body(0x02, &client_id);
    trailing.extend_from_slice(&[0xde, 0xad]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "reserved fixed-header flags set",
            with_fixed_header(0x11, &connect_body(0x02, &client_id)),
        ),
        (
            "protocol name longer than the packet",
            vec![0x10, 0x04, 0x00, 0x10, b'M', b'Q'],
        ),
        (
            "packet ends after the protocol level",
            vec![0x10, 0x07, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04],
        ),
        (
            "no client identifier field",
            with_fixed_header(0x10, &connect_body(0x02, &[])),
        ),
        (
            "client identifier longer than the packet",
            with_fixed_header(0x10, &connect_body(0x02, &[0x00, 0x05, b'c'])),
        ),
        (
            "Will Flag without Will Topic and Will Message",
            with_fixed_header(0x10, &connect_body(0x06, &client_id)),
        ),
        (
            "Will QoS 3",
            with_fixed_header(
                0x10,
                &connect_body(
                    0x1e,
                    &[0x00, 0x01, b'c', 0x00, 0x01, b'w', 0x00, 0x01, b'm'],
                ),
            ),
        ),
        (
            "bytes after the last payload field",
            with_fixed_header(0x10, &trailing),
        ),
        (
            "Remaining Length over four bytes",
            vec![0x10, 0xff, 0xff, 0xff, 0xff, 0x01],
        ),
    ];
    for (what, bytes) in cases {
        let mut tb = tb();
        let watcher = subscriber(&mut tb, "watcher", &[("#", Q0)]);
        let sessions = tb.broker().session_count();
        let conn = tb.open();
        let mut chunk = bytes;
        chunk.extend(bytes_of(&publish("after", b"x", Q0, None, false)));
        chunk.extend(bytes_of(&Packet::PingReq));
        tb.send_raw(conn, &chunk);
        assert_eq!(tb.recv_raw(conn), Vec::<u8>::new(), "{what}: nothing sent");
        assert!(tb.is_closed(conn), "{what}: closed");
        assert_eq!(tb.broker().session_count(), sessions, "{what}: no session");
        assert_eq!(tb.recv(watcher), vec![], "{what}: nothing processed");
    }
}

// ---------------------------------------------------------------------------------------------
// 3.3 PUBLISH
// ---------------------------------------------------------------------------------------------

#[test]
fn an_unacknowledged_publish_is_resent_with_dup_on_reconnect() {
    // MQTT 3.1.1 [MQTT-3.3.1-1] [MQTT-4.4.0-1]
    let mut tb = tb();
    let s = tb.connect("s", false, V311);
    subscribe_ok(&mut tb, s, &[("t", Q1)]);
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "t", "m", false, 1);
    let first = tb.recv_publishes(s);
    assert!(!first[0].dup);
    tb.close_socket(s);
    let s = tb.connect("s", false, V311);
    let again = tb.recv_publishes(s);
    assert_eq!(again.len(), 1);
    assert!(again[0].dup);
    assert_eq!(again[0].packet_id, first[0].packet_id);
    assert_eq!(text(&again[0]), "m");
}

#[test]
fn an_unacknowledged_publish_is_resent_with_dup_after_the_retry_interval() {
    // MQTT 3.1.1 [MQTT-3.3.1-1]
    let mut tb = TestBroker::new(BrokerConfig {
        retry_interval: Some(Duration::from_secs(5)),
        ..config()
    });
    let s = subscriber(&mut tb, "s", &[("t", Q1)]);
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "t", "m", false, 1);
    let first = tb.recv_publishes(s);
    assert!(!first[0].dup);
    tb.advance(Duration::from_millis(4_999));
    assert_eq!(tb.recv(s), vec![]);
    tb.advance(Duration::from_millis(1));
    let again = tb.recv_publishes(s);
    assert_eq!(again.len(), 1);
    assert!(again[0].dup);
    assert_eq!(again[0].packet_id, first[0].packet_id);
    tb.send(
        s,
        &Packet::PubAck(surgemq_core::codec::PubAck::success(
            again[0].packet_id.unwrap(),
        )),
    );
    tb.advance(Duration::from_secs(60));
    assert_eq!(tb.recv(s), vec![], "acknowledged: no more resends");
}

#[test]
fn qos_0_deliveries_have_dup_0() {
    // MQTT 3.1.1 [MQTT-3.3.1-2] [MQTT-4.3.1-1]: also when the incoming QoS 1 PUBLISH had DUP.
    let mut tb = tb();
    let s = subscriber(&mut tb, "s", &[("t", Q0)]);
    let p = tb.connect("p", true, V311);
    let mut packet = publish("t", b"dup in", Q1, Some(1), false);
    if let Packet::Publish(ref mut inner) = packet {
        inner.dup = true;
    }
    tb.send(p, &packet);
    let got = tb.recv_publishes(s);
    assert_eq!(texts(&got), ["dup in"]);
    assert!(!got[0].dup);
    assert_eq!(got[0].qos, Q0);
    assert_eq!(got[0].packet_id, None);
}

#[test]
fn the_incoming_dup_flag_is_not_propagated() {
    // MQTT 3.1.1 [MQTT-3.3.1-3]
    let mut tb = tb();
    let s = subscriber(&mut tb, "s", &[("t", Q2)]);
    let p = tb.connect("p", true, V311);
    for (qos, id) in [(Q1, 1), (Q2, 2)] {
        let mut packet = publish("t", b"x", qos, Some(id), false);
        if let Packet::Publish(ref mut inner) = packet {
            inner.dup = true;
        }
        tb.send(p, &packet);
    }
    let got = tb.recv_publishes(s);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|p| !p.dup), "{got:?}");
}

#[test]
fn a_publish_with_qos_3_closes_the_connection() {
    // MQTT 3.1.1 [MQTT-3.3.1-4]
    assert_closes_connected_client(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01]);
}

#[test]
fn a_retained_publish_is_stored_with_its_qos() {
    // MQTT 3.1.1 [MQTT-3.3.1-5]
    let mut tb = tb();
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "r/1", "one", true, 1);
    pub2(&mut tb, p, "r/2", "two", true, 2);
    let hi = tb.connect("hi", true, V311);
    let mut got = subscribe_ok(&mut tb, hi, &[("r/+", Q2)]);
    got.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
    assert_eq!(texts(&got), ["one", "two"]);
    assert_eq!((got[0].qos, got[1].qos), (Q1, Q2));
    let lo = tb.connect("lo", true, V311);
    let got = subscribe_ok(&mut tb, lo, &[("r/+", Q0)]);
    assert!(got.iter().all(|p| p.qos == Q0));
}

#[test]
fn a_new_subscription_gets_the_latest_retained_message_of_every_matching_topic() {
    // MQTT 3.1.1 [MQTT-3.3.1-6]
    let mut tb = tb();
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "r/1", "old", true, 1);
    pub1(&mut tb, p, "r/1", "new", true, 2);
    pub1(&mut tb, p, "r/2", "two", true, 3);
    pub1(&mut tb, p, "other", "no", true, 4);
    let s = tb.connect("s", true, V311);
    let mut got = subscribe_ok(&mut tb, s, &[("r/+", Q1)]);
    got.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
    assert_eq!(texts(&got), ["new", "two"]);
}

#[test]
fn a_retained_qos_0_publish_replaces_the_retained_message() {
    // MQTT 3.1.1 [MQTT-3.3.1-7]
    let mut tb = tb();
    let p = tb.connect("p", true, V311);
    pub2(&mut tb, p, "r", "qos2", true, 1);
    pub0(&mut tb, p, "r", "qos0", true);
    let s = tb.connect("s", true, V311);
    let got = subscribe_ok(&mut tb, s, &[("r", Q2)]);
    assert_eq!(texts(&got), ["qos0"]);
    assert_eq!(got[0].qos, Q0);
}

#[test]
fn messages_sent_for_a_new_subscription_carry_retain_1() {
    // MQTT 3.1.1 [MQTT-3.3.1-8]
    let mut tb = tb();
    let p = tb.connect("p", true, V311);
    pub0(&mut tb, p, "r", "v", true);
    let s = tb.connect("s", true, V311);
    let got = subscribe_ok(&mut tb, s, &[("r", Q0)]);
    assert_eq!(texts(&got), ["v"]);
    assert!(got[0].retain);
}

#[test]
fn messages_forwarded_to_an_established_subscription_carry_retain_0() {
    // MQTT 3.1.1 [MQTT-3.3.1-9]
    let mut tb = tb();
    let s = subscriber(&mut tb, "s", &[("r", Q1)]);
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "r", "v", true, 1);
    let got = tb.recv_publishes(s);
    assert_eq!(texts(&got), ["v"]);
    assert!(!got[0].retain);
}

#[test]
fn an_empty_retained_publish_is_forwarded_and_clears_the_topic() {
    // MQTT 3.1.1 [MQTT-3.3.1-10] [MQTT-3.3.1-11]
    let mut tb = tb();
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "r", "v", true, 1);
    let s = tb.connect("s", true, V311);
    assert_eq!(subscribe_ok(&mut tb, s, &[("r", Q1)]).len(), 1);
    pub1(&mut tb, p, "r", "", true, 2);
    let got = tb.recv_publishes(s);
    assert_eq!(got.len(), 1, "forwarded as usual");
    assert!(got[0].payload.is_empty());
    assert_eq!(tb.broker().retained_count(), 0);
    let late = tb.connect("late", true, V311);
    assert!(subscribe_ok(&mut tb, late, &[("r", Q1)]).is_empty());
}

#[test]
fn a_zero_byte_retained_payload_is_never_stored() {
    // MQTT 3.1.1 [MQTT-3.3.1-11]
    let mut tb = tb();
    let p = tb.connect("p", true, V311);
    pub0(&mut tb, p, "empty", "", true);
    pub2(&mut tb, p, "empty2", "", true, 1);
    assert_eq!(tb.broker().retained_count(), 0);
    let s = tb.connect("s", true, V311);
    assert!(subscribe_ok(&mut tb, s, &[("#", Q2)]).is_empty());
}

#[test]
fn a_publish_with_retain_0_is_not_stored_and_keeps_the_retained_message() {
    // MQTT 3.1.1 [MQTT-3.3.1-12]
    let mut tb = tb();
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "r", "retained", true, 1);
    pub1(&mut tb, p, "r", "live", false, 2);
    pub1(&mut tb, p, "n", "not retained", false, 3);
    assert_eq!(tb.broker().retained_count(), 1);
    let s = tb.connect("s", true, V311);
    let got = subscribe_ok(&mut tb, s, &[("#", Q1)]);
    assert_eq!(texts(&got), ["retained"]);
}

#[test]
fn a_publish_topic_with_a_wildcard_closes_the_connection() {
    // MQTT 3.1.1 [MQTT-3.3.2-2] [MQTT-4.7.1-1]
    assert_closes_connected_client(&[0x30, 0x06, 0x00, 0x03, b'a', b'/', b'+', b'x']);
    assert_closes_connected_client(&[0x30, 0x04, 0x00, 0x01, b'#', b'x']);
}

#[test]
fn delivered_topics_match_the_subscription_filter() {
    // MQTT 3.1.1 [MQTT-3.3.2-3] (matching rules of section 4.7)
    let mut tb = tb();
    let cases: [(&str, &[&str]); 6] = [
        (
            "sport/tennis/+",
            &["sport/tennis/player1", "sport/tennis/player2"],
        ),
        (
            "sport/#",
            &[
                "sport",
                "sport/tennis/player1",
                "sport/tennis/player2",
                "sport/tennis/player1/ranking",
                "sport/",
            ],
        ),
        ("+/+", &["/finance", "finance/", "sport/"]),
        ("/+", &["/finance"]),
        ("+", &["sport"]),
        (
            "sport/tennis/player1/#",
            &["sport/tennis/player1", "sport/tennis/player1/ranking"],
        ),
    ];
    let subs: Vec<ClientConn> = cases
        .iter()
        .enumerate()
        .map(|(i, (f, _))| subscriber(&mut tb, &format!("s{i}"), &[(f, Q0)]))
        .collect();
    let p = tb.connect("p", true, V311);
    let topics = [
        "sport",
        "sport/",
        "sport/tennis/player1",
        "sport/tennis/player2",
        "sport/tennis/player1/ranking",
        "/finance",
        "finance/",
        "sports/tennis/player1",
    ];
    for t in topics {
        pub0(&mut tb, p, t, t, false);
    }
    for ((f, expected), s) in cases.iter().zip(subs) {
        let mut got: Vec<String> = tb
            .recv_publishes(s)
            .iter()
            .map(|p| p.topic.as_str().to_owned())
            .collect();
        got.sort();
        let mut want: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        assert_eq!(got, want, "filter {f}");
    }
}

#[test]
fn each_publish_qos_gets_the_expected_response() {
    // MQTT 3.1.1 [MQTT-3.3.4-1] [MQTT-2.3.1-6]
    let mut tb = tb();
    let p = tb.connect("p", true, V311);
    tb.send(p, &publish("t", b"0", Q0, None, false));
    assert_eq!(tb.recv(p), vec![]);
    tb.send(p, &publish("t", b"1", Q1, Some(7), false));
    assert_eq!(tb.recv(p), vec![puback(7)]);
    tb.send(p, &publish("t", b"2", Q2, Some(8), false));
    assert_eq!(tb.recv(p), vec![pubrec(8)]);
}

#[test]
fn overlapping_subscriptions_get_one_copy_at_the_highest_qos() {
    // MQTT 3.1.1 [MQTT-3.3.5-1]
    let mut tb = tb();
    let s = tb.connect("s", true, V311);
    subscribe_ok(
        &mut tb,
        s,
        &[("a/#", Q0), ("a/+", Q2), ("a/b", Q1), ("#", Q0)],
    );
    let p = tb.connect("p", true, V311);
    pub2(&mut tb, p, "a/b", "two", false, 1);
    pub1(&mut tb, p, "a/b", "one", false, 2);
    let got = tb.recv_publishes(s);
    assert_eq!(texts(&got), ["two", "one"]);
    assert_eq!((got[0].qos, got[1].qos), (Q2, Q1));
}

#[test]
fn a_client_publish_to_sys_is_acknowledged_and_dropped() {
    // MQTT 3.1.1 [MQTT-3.3.5-2]: refusing to authorize, the server acknowledges normally.
    let mut tb = tb();
    let s = subscriber(&mut tb, "s", &[("$SYS/#", Q2)]);
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "$SYS/broker/version", "fake", true, 1);
    pub2(&mut tb, p, "$SYS/x", "fake", false, 2);
    pub0(&mut tb, p, "$SYS", "fake", true);
    assert_eq!(tb.recv(s), vec![]);
    assert_eq!(tb.broker().retained_count(), 0);
    assert!(!tb.is_closed(p));
}

// ---------------------------------------------------------------------------------------------
// 3.6, 3.8 - 3.10 SUBSCRIBE / UNSUBSCRIBE, invalid flags
// ---------------------------------------------------------------------------------------------

#[test]
fn pubrel_with_wrong_flags_closes_the_connection() {
    // MQTT 3.1.1 [MQTT-3.6.1-1] [MQTT-2.2.2-2]
    assert_closes_connected_client(&[0x60, 0x02, 0x00, 0x01]);
}

#[test]
fn subscribe_with_wrong_flags_closes_the_connection() {
    // MQTT 3.1.1 [MQTT-3.8.1-1] [MQTT-2.2.2-2]
    assert_closes_connected_client(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b't', 0x00]);
}

#[test]
fn subscribe_with_qos_3_or_reserved_bits_closes_the_connection() {
    // MQTT 3.1.1 [MQTT-3.8.3-4]
    assert_closes_connected_client(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b't', 0x03]);
    assert_closes_connected_client(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b't', 0x04]);
}

#[test]
fn packet_identifier_0_closes_the_connection() {
    // MQTT 3.1.1 [MQTT-2.3.1-1]
    assert_closes_connected_client(&[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b't', 0x00]);
    assert_closes_connected_client(&[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00]);
}

#[test]
fn every_subscribe_gets_a_suback_with_its_packet_identifier() {
    // MQTT 3.1.1 [MQTT-3.8.4-1] [MQTT-3.8.4-2] [MQTT-2.3.1-7]
    let mut tb = tb();
    let c = tb.connect("c", true, V311);
    for id in [7, 300, 65_535, 7] {
        tb.send(c, &subscribe(id, &[("t", Q1)]));
        match tb.recv(c).as_slice() {
            [Packet::SubAck(ack)] => {
                assert_eq!(ack.packet_id, pid(id));
                assert_eq!(ack.reasons, [SubAckReason::GrantedQoS1]);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn an_identical_filter_replaces_the_subscription_and_resends_retained() {
    // MQTT 3.1.1 [MQTT-3.8.4-3]
    let mut tb = tb();
    let p = tb.connect("p", true, V311);
    pub2(&mut tb, p, "t", "retained", true, 1);
    let s = tb.connect("s", true, V311);
    let first = subscribe_ok(&mut tb, s, &[("t", Q0)]);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].qos, Q0);
    let again = subscribe_ok(&mut tb, s, &[("t", Q2)]);
    assert_eq!(texts(&again), ["retained"]);
    assert_eq!(again[0].qos, Q2);
    assert_eq!(tb.broker().subscription_count(), 1);
    pub2(&mut tb, p, "t", "live", false, 2);
    let got = tb.recv_publishes(s);
    assert_eq!(texts(&got), ["live"], "one copy");
    assert_eq!(got[0].qos, Q2, "at the new QoS");
}

#[test]
fn a_multi_filter_subscribe_gets_one_suback_with_codes_in_order() {
    // MQTT 3.1.1 [MQTT-3.8.4-4] [MQTT-3.8.4-5] [MQTT-3.9.3-1] [MQTT-3.9.3-2]
    let mut tb = tb();
    let c = tb.connect("c", true, V311);
    tb.send(c, &subscribe(9, &[("a", Q2), ("b/#", Q0), ("c/+", Q1)]));
    let got = tb.recv(c);
    assert_eq!(got.len(), 1);
    let Packet::SubAck(ack) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(ack.packet_id, pid(9));
    assert_eq!(
        ack.reasons,
        [
            SubAckReason::GrantedQoS2,
            SubAckReason::GrantedQoS0,
            SubAckReason::GrantedQoS1
        ]
    );
    // Each filter is a subscription of its own.
    let p = tb.connect("p", true, V311);
    pub0(&mut tb, p, "a", "1", false);
    pub0(&mut tb, p, "b/x", "2", false);
    pub0(&mut tb, p, "c/y", "3", false);
    assert_eq!(texts(&tb.recv_publishes(c)), ["1", "2", "3"]);
}

#[test]
fn delivery_qos_is_the_lower_of_published_and_granted() {
    // MQTT 3.1.1 [MQTT-3.8.4-6]
    let mut tb = tb();
    let s1 = subscriber(&mut tb, "s1", &[("t", Q1)]);
    let s2 = subscriber(&mut tb, "s2", &[("t", Q2)]);
    let p = tb.connect("p", true, V311);
    pub2(&mut tb, p, "t", "two", false, 1);
    pub0(&mut tb, p, "t", "zero", false);
    let q: Vec<QoS> = tb.recv_publishes(s1).iter().map(|p| p.qos).collect();
    assert_eq!(q, [Q1, Q0]);
    let q: Vec<QoS> = tb.recv_publishes(s2).iter().map(|p| p.qos).collect();
    assert_eq!(q, [Q2, Q0]);
}

#[test]
fn unsubscribe_with_wrong_flags_closes_the_connection() {
    // MQTT 3.1.1 [MQTT-3.10.1-1] [MQTT-2.2.2-2]
    assert_closes_connected_client(&[0xa0, 0x05, 0x00, 0x01, 0x00, 0x01, b't']);
}

#[test]
fn unsubscribe_removes_only_a_character_for_character_match() {
    // MQTT 3.1.1 [MQTT-3.10.4-1]
    let mut tb = tb();
    let s = subscriber(&mut tb, "s", &[("a/+", Q0)]);
    let p = tb.connect("p", true, V311);
    tb.send(s, &unsubscribe(2, &["a/b", "a/#", "A/+"]));
    assert_eq!(tb.recv(s).len(), 1);
    pub0(&mut tb, p, "a/b", "still", false);
    assert_eq!(texts(&tb.recv_publishes(s)), ["still"]);
    tb.send(s, &unsubscribe(3, &["a/+"]));
    assert_eq!(tb.recv(s).len(), 1);
    pub0(&mut tb, p, "a/b", "gone", false);
    assert_eq!(tb.recv(s), vec![]);
}

#[test]
fn no_new_messages_after_unsubscribe() {
    // MQTT 3.1.1 [MQTT-3.10.4-2]: also none queued for the offline session.
    let mut tb = tb();
    let s = tb.connect("s", false, V311);
    subscribe_ok(&mut tb, s, &[("t", Q1)]);
    tb.send(s, &unsubscribe(2, &["t"]));
    assert_eq!(tb.recv(s).len(), 1);
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "t", "after", false, 1);
    assert_eq!(tb.recv(s), vec![]);
    tb.send(s, &disconnect());
    pub1(&mut tb, p, "t", "offline", false, 2);
    assert_eq!(tb.broker().queued_messages("s"), Some(0));
}

#[test]
fn deliveries_under_way_are_completed_after_unsubscribe() {
    // MQTT 3.1.1 [MQTT-3.10.4-3]
    let mut tb = tb();
    let s = subscriber(&mut tb, "s", &[("one", Q1), ("two", Q2)]);
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "one", "1", false, 1);
    pub2(&mut tb, p, "two", "2", false, 2);
    let got = tb.recv_publishes(s);
    assert_eq!(got.len(), 2);
    let (id1, id2) = (got[0].packet_id.unwrap(), got[1].packet_id.unwrap());
    tb.send(s, &unsubscribe(5, &["one", "two"]));
    assert_eq!(tb.recv(s).len(), 1);
    assert_eq!(tb.broker().inflight_messages("s"), Some(2));
    tb.send(s, &puback(id1.get()));
    tb.send(s, &pubrec(id2.get()));
    assert_eq!(tb.recv(s), vec![pubrel(id2.get())]);
    tb.send(s, &pubcomp(id2.get()));
    assert_eq!(tb.broker().inflight_messages("s"), Some(0));
}

#[test]
fn unsubscribe_is_always_answered_with_its_packet_identifier() {
    // MQTT 3.1.1 [MQTT-3.10.4-4] [MQTT-3.10.4-5] [MQTT-2.3.1-7]
    let mut tb = tb();
    let c = tb.connect("c", true, V311);
    for id in [1, 4_242, 65_535] {
        tb.send(c, &unsubscribe(id, &["never/subscribed"]));
        match tb.recv(c).as_slice() {
            [Packet::UnsubAck(ack)] => assert_eq!(ack.packet_id, pid(id)),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_multi_filter_unsubscribe_gets_one_unsuback() {
    // MQTT 3.1.1 [MQTT-3.10.4-6]
    let mut tb = tb();
    let s = subscriber(&mut tb, "s", &[("a", Q0), ("b", Q0), ("c", Q0)]);
    tb.send(s, &unsubscribe(3, &["a", "b", "zzz"]));
    let got = tb.recv(s);
    assert!(
        matches!(got.as_slice(), [Packet::UnsubAck(a)] if a.packet_id == pid(3)),
        "{got:?}"
    );
    let p = tb.connect("p", true, V311);
    for t in ["a", "b", "c"] {
        pub0(&mut tb, p, t, t, false);
    }
    assert_eq!(texts(&tb.recv_publishes(s)), ["c"]);
}

// ---------------------------------------------------------------------------------------------
// 3.12 PINGREQ, 3.14 DISCONNECT
// ---------------------------------------------------------------------------------------------

#[test]
fn every_pingreq_gets_a_pingresp() {
    // MQTT 3.1.1 [MQTT-3.12.4-1]
    let mut tb = tb();
    let c = tb.connect("c", true, V311);
    tb.send(c, &Packet::PingReq);
    tb.send(c, &Packet::PingReq);
    tb.send_raw(c, &[0xc0, 0x00]);
    assert_eq!(tb.recv(c), vec![Packet::PingResp; 3]);
}

#[test]
fn disconnect_with_reserved_bits_set_closes_and_publishes_the_will() {
    // MQTT 3.1.1 [MQTT-3.14.1-1]: an invalid DISCONNECT is a protocol error, so [MQTT-3.1.2-8].
    let mut tb = tb();
    let watcher = subscriber(&mut tb, "watcher", &[("will/#", Q0)]);
    let c = with_will(&mut tb, "c", will("will/c", "bad disconnect", Q0, false), 0);
    tb.send_raw(c, &[0xe1, 0x00]);
    assert!(tb.is_closed(c));
    assert!(matches!(
        disconnect_cause(&mut tb, c),
        Some(DisconnectCause::Violation(_))
    ));
    assert_eq!(texts(&tb.recv_publishes(watcher)), ["bad disconnect"]);
}

// ---------------------------------------------------------------------------------------------
// 4.1 Session state
// ---------------------------------------------------------------------------------------------

#[test]
fn a_session_is_not_discarded_while_its_connection_is_open() {
    // MQTT 3.1.1 [MQTT-4.1.0-2]: with sessions that expire after a minute offline, sessions of
    // open connections keep their subscriptions and their unacknowledged and queued messages
    // through an hour, other clients coming and going, and the expiry of an offline session;
    // also one that was offline for a while before it reconnected.
    let mut tb = TestBroker::new(BrokerConfig {
        session_expiry: Some(Duration::from_secs(60)),
        max_inflight: 1,
        ..config()
    });
    let persistent = tb.connect("persistent", false, V311);
    subscribe_ok(&mut tb, persistent, &[("t", Q1)]);
    let clean = subscriber(&mut tb, "clean", &[("t", Q1)]);
    let returning = tb.connect("returning", false, V311);
    subscribe_ok(&mut tb, returning, &[("t", Q1)]);
    tb.close_socket(returning);
    let leaving = tb.connect("leaving", false, V311);
    subscribe_ok(&mut tb, leaving, &[("t", Q1)]);
    tb.close_socket(leaving);
    tb.advance(Duration::from_secs(30));
    let returning = tb.connect("returning", false, V311);
    assert!(returning.session_present);
    assert_eq!(tb.broker().session_count(), 4);

    // Two messages: one in flight (not acknowledged) and one queued behind it, per session.
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "t", "one", false, 1);
    pub1(&mut tb, p, "t", "two", false, 2);
    tb.send(p, &disconnect());
    let live = [
        ("persistent", persistent),
        ("clean", clean),
        ("returning", returning),
    ];
    let mut first_ids = Vec::new();
    for (id, c) in live {
        let got = tb.recv_publishes(c);
        assert_eq!(texts(&got), ["one"], "{id}");
        first_ids.push(got[0].packet_id.unwrap());
        assert_eq!(tb.broker().inflight_messages(id), Some(1), "{id}");
        assert_eq!(tb.broker().queued_messages(id), Some(1), "{id}");
    }

    // An hour of others connecting with new identifiers, and of the offline session expiring.
    for minute in 0..60 {
        let other = tb.connect(&format!("other-{minute}"), minute % 2 == 0, V311);
        subscribe_ok(&mut tb, other, &[("t", Q0)]);
        tb.send(other, &disconnect());
        tb.advance(Duration::from_secs(60));
    }
    assert!(
        tb.events().iter().any(|e| matches!(
            e,
            Event::SessionExpired { client_id } if client_id.as_str() == "leaving"
        )),
        "the offline session expired"
    );
    let expired_live = tb.events().iter().any(|e| {
        matches!(
            e,
            Event::SessionExpired { client_id }
                if ["persistent", "clean", "returning"].contains(&client_id.as_str())
        )
    });
    assert!(!expired_live, "a live session expired");

    // Each live session still has its in-flight and queued messages and its subscription.
    for ((id, c), first) in live.into_iter().zip(first_ids) {
        assert!(!tb.is_closed(c), "{id}");
        assert_eq!(tb.broker().inflight_messages(id), Some(1), "{id}");
        assert_eq!(tb.broker().queued_messages(id), Some(1), "{id}");
        tb.send(
            c,
            &Packet::PubAck(surgemq_core::codec::PubAck::success(first)),
        );
        let got = tb.recv_publishes(c);
        assert_eq!(texts(&got), ["two"], "{id}");
        let second = got[0].packet_id.unwrap();
        tb.send(
            c,
            &Packet::PubAck(surgemq_core::codec::PubAck::success(second)),
        );
        assert_eq!(tb.broker().inflight_messages(id), Some(0), "{id}");
    }
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "t", "three", false, 3);
    for (id, c) in live {
        assert_eq!(
            texts(&tb.recv_publishes(c)),
            ["three"],
            "{id} is still subscribed"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4.3 QoS flows, 4.4 resend, 4.5 receipt, 4.6 ordering
// ---------------------------------------------------------------------------------------------

#[test]
fn qos_0_is_delivered_as_qos_0_dup_0_without_identifier() {
    // MQTT 3.1.1 [MQTT-4.3.1-1] [MQTT-2.3.1-5]
    let mut tb = tb();
    let s = subscriber(&mut tb, "s", &[("t", Q2)]);
    let p = tb.connect("p", true, V311);
    pub0(&mut tb, p, "t", "m", false);
    let got = tb.recv_publishes(s);
    assert_eq!(
        (got[0].qos, got[0].dup, got[0].packet_id),
        (Q0, false, None)
    );
    assert_eq!(tb.broker().inflight_messages("s"), Some(0));
}

#[test]
fn qos_1_delivery_uses_fresh_identifiers_and_stays_unacknowledged_until_puback() {
    // MQTT 3.1.1 [MQTT-4.3.2-1] [MQTT-2.3.1-4]
    let mut tb = tb();
    let s = subscriber(&mut tb, "s", &[("t", Q1)]);
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "t", "a", false, 1);
    pub1(&mut tb, p, "t", "b", false, 2);
    let got = tb.recv_publishes(s);
    assert_eq!(got.len(), 2);
    assert!(
        got.iter()
            .all(|p| p.qos == Q1 && !p.dup && p.packet_id.is_some())
    );
    assert_ne!(got[0].packet_id, got[1].packet_id);
    assert_eq!(tb.broker().inflight_messages("s"), Some(2));
    tb.send(s, &puback(got[0].packet_id.unwrap().get()));
    assert_eq!(tb.broker().inflight_messages("s"), Some(1));
    // The freed identifier may be reused, never one still unacknowledged.
    pub1(&mut tb, p, "t", "c", false, 3);
    let next = tb.recv_publishes(s);
    assert_ne!(next[0].packet_id, got[1].packet_id);
    tb.send(s, &puback(got[1].packet_id.unwrap().get()));
    tb.send(s, &puback(next[0].packet_id.unwrap().get()));
    assert_eq!(tb.broker().inflight_messages("s"), Some(0));
}

#[test]
fn qos_1_receipt_is_acknowledged_and_a_reused_identifier_is_a_new_message() {
    // MQTT 3.1.1 [MQTT-4.3.2-2]
    let mut tb = tb();
    let s = subscriber(&mut tb, "s", &[("t", Q1)]);
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "t", "first", false, 5);
    pub1(&mut tb, p, "t", "second", false, 5);
    assert_eq!(texts(&tb.recv_publishes(s)), ["first", "second"]);
}

#[test]
fn qos_2_delivery_releases_on_pubrec_and_never_resends_the_publish_after_pubrel() {
    // MQTT 3.1.1 [MQTT-4.3.3-1]
    let mut tb = tb();
    let s = tb.connect("s", false, V311);
    subscribe_ok(&mut tb, s, &[("t", Q2)]);
    let p = tb.connect("p", true, V311);
    pub2(&mut tb, p, "t", "m", false, 1);
    let got = tb.recv_publishes(s);
    assert_eq!((got[0].qos, got[0].dup), (Q2, false));
    let id = got[0].packet_id.unwrap().get();
    tb.send(s, &pubrec(id));
    assert_eq!(tb.recv(s), vec![pubrel(id)]);
    assert_eq!(tb.broker().inflight_messages("s"), Some(1));
    tb.close_socket(s);
    let s = tb.connect("s", false, V311);
    assert_eq!(
        tb.recv(s),
        vec![pubrel(id)],
        "PUBREL again, never the PUBLISH"
    );
    tb.send(s, &pubcomp(id));
    assert_eq!(tb.broker().inflight_messages("s"), Some(0));
    tb.close_socket(s);
    let s = tb.connect("s", false, V311);
    assert_eq!(tb.recv(s), vec![]);
}

#[test]
fn qos_2_receipt_is_delivered_once_despite_a_repeated_publish() {
    // MQTT 3.1.1 [MQTT-4.3.3-2]
    let mut tb = tb();
    let s = subscriber(&mut tb, "s", &[("t", Q2)]);
    let p = tb.connect("p", true, V311);
    tb.send(p, &publish("t", b"once", Q2, Some(9), false));
    assert_eq!(tb.recv(p), vec![pubrec(9)]);
    let mut again = publish("t", b"once", Q2, Some(9), false);
    if let Packet::Publish(ref mut inner) = again {
        inner.dup = true;
    }
    tb.send(p, &again);
    assert_eq!(tb.recv(p), vec![pubrec(9)], "acknowledged again");
    assert_eq!(
        texts(&tb.recv_publishes(s)),
        ["once"],
        "but not forwarded again"
    );
    tb.send(p, &pubrel(9));
    assert_eq!(tb.recv(p), vec![pubcomp(9)]);
    tb.send(p, &publish("t", b"new", Q2, Some(9), false));
    assert_eq!(tb.recv(p), vec![pubrec(9)]);
    assert_eq!(
        texts(&tb.recv_publishes(s)),
        ["new"],
        "after PUBREL the identifier is new"
    );
}

#[test]
fn qos_2_receipt_is_exactly_once_across_a_reconnect() {
    // MQTT 3.1.1 [MQTT-4.4.0-1] [MQTT-4.3.3-2]: the publisher resends after reconnecting.
    let mut tb = tb();
    let s = subscriber(&mut tb, "s", &[("t", Q2)]);
    let p = tb.connect("p", false, V311);
    tb.send(p, &publish("t", b"once", Q2, Some(3), false));
    assert_eq!(tb.recv(p), vec![pubrec(3)]);
    tb.close_socket(p);
    let p = tb.connect("p", false, V311);
    let mut again = publish("t", b"once", Q2, Some(3), false);
    if let Packet::Publish(ref mut inner) = again {
        inner.dup = true;
    }
    tb.send(p, &again);
    assert_eq!(tb.recv(p), vec![pubrec(3)]);
    tb.send(p, &pubrel(3));
    assert_eq!(tb.recv(p), vec![pubcomp(3)]);
    assert_eq!(texts(&tb.recv_publishes(s)), ["once"]);
}

#[test]
fn session_resume_resends_unacknowledged_publishes_and_pubrels_in_order() {
    // MQTT 3.1.1 [MQTT-4.4.0-1] [MQTT-3.3.1-1]
    let mut tb = tb();
    let s = tb.connect("s", false, V311);
    subscribe_ok(&mut tb, s, &[("t", Q2)]);
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "t", "m1", false, 1);
    pub2(&mut tb, p, "t", "m2", false, 2);
    pub2(&mut tb, p, "t", "m3", false, 3);
    let got = tb.recv_publishes(s);
    assert_eq!(texts(&got), ["m1", "m2", "m3"]);
    let ids: Vec<u16> = got.iter().map(|p| p.packet_id.unwrap().get()).collect();
    tb.send(s, &pubrec(ids[1]));
    assert_eq!(tb.recv(s), vec![pubrel(ids[1])]);
    tb.close_socket(s);

    let s = tb.connect("s", false, V311);
    assert!(s.session_present);
    let got = tb.recv(s);
    assert_eq!(got.len(), 3, "{got:?}");
    let Packet::Publish(m1) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(
        (text(m1), m1.dup, m1.qos, m1.packet_id),
        ("m1", true, Q1, Some(pid(ids[0])))
    );
    assert_eq!(got[1], pubrel(ids[1]));
    let Packet::Publish(m3) = &got[2] else {
        panic!("{got:?}")
    };
    assert_eq!(
        (text(m3), m3.dup, m3.qos, m3.packet_id),
        ("m3", true, Q2, Some(pid(ids[2])))
    );
}

#[test]
fn session_resume_resends_in_flight_first_then_the_queue_without_dup() {
    // MQTT 3.1.1 [MQTT-4.4.0-1] [MQTT-3.3.1-1] [MQTT-4.6.0-6]
    let mut tb = TestBroker::new(BrokerConfig {
        max_inflight: 1,
        ..config()
    });
    let s = tb.connect("s", false, V311);
    subscribe_ok(&mut tb, s, &[("t", Q1)]);
    let p = tb.connect("p", true, V311);
    for (i, m) in ["m1", "m2", "m3"].into_iter().enumerate() {
        pub1(&mut tb, p, "t", m, false, i as u16 + 1);
    }
    assert_eq!(texts(&tb.recv_publishes(s)), ["m1"]);
    tb.close_socket(s);
    let s = tb.connect("s", false, V311);
    let mut order = Vec::new();
    for _ in 0..3 {
        let got = tb.recv_publishes(s);
        assert_eq!(got.len(), 1, "window of one: {got:?}");
        order.push((text(&got[0]).to_owned(), got[0].dup));
        tb.send(s, &puback(got[0].packet_id.unwrap().get()));
    }
    let want = [("m1", true), ("m2", false), ("m3", false)].map(|(m, d)| (m.to_owned(), d));
    assert_eq!(order, want);
}

#[test]
fn a_message_goes_into_every_matching_session_online_or_offline() {
    // MQTT 3.1.1 [MQTT-4.5.0-1]
    let mut tb = tb();
    let online = subscriber(&mut tb, "online", &[("t/#", Q1)]);
    let offline = tb.connect("offline", false, V311);
    subscribe_ok(&mut tb, offline, &[("t/+", Q1)]);
    tb.send(offline, &disconnect());
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "t/x", "m", false, 1);
    assert_eq!(texts(&tb.recv_publishes(online)), ["m"]);
    assert_eq!(tb.broker().queued_messages("offline"), Some(1));
}

#[test]
fn every_topic_is_ordered_by_default() {
    // MQTT 3.1.1 [MQTT-4.6.0-5]: interleaved topics, each in order (here: all in order).
    let mut tb = tb();
    let s = subscriber(&mut tb, "s", &[("a", Q1), ("b", Q1)]);
    let p = tb.connect("p", true, V311);
    let mut sent = Vec::new();
    for i in 0..20u16 {
        let t = if i % 3 == 0 { "a" } else { "b" };
        let payload = format!("{t}{i}");
        pub1(&mut tb, p, t, &payload, false, i + 1);
        sent.push(payload);
    }
    let got = tb.recv_publishes(s);
    assert_eq!(texts(&got), sent);
}

#[test]
fn messages_of_one_publisher_are_forwarded_in_order_through_a_small_window() {
    // MQTT 3.1.1 [MQTT-4.6.0-6]: same topic and QoS, through queueing and a full window.
    let mut tb = TestBroker::new(BrokerConfig {
        max_inflight: 2,
        ..config()
    });
    for qos in [Q1, Q2] {
        let s = subscriber(&mut tb, "s", &[("t", qos)]);
        let p = tb.connect("p", true, V311);
        let mut sent = Vec::new();
        for i in 1..=30u16 {
            let payload = format!("m{i}");
            tb.send(p, &publish("t", payload.as_bytes(), qos, Some(i), false));
            sent.push(payload);
            if i % 7 == 0 {
                tb.send(p, &pubrel(i)); // harmless for QoS 1 ids never received at QoS 2
            }
        }
        let mut got = Vec::new();
        for _ in 0..100 {
            let batch = tb.recv_publishes(s);
            if batch.is_empty() {
                break;
            }
            for m in &batch {
                let id = m.packet_id.unwrap().get();
                if qos == Q1 {
                    tb.send(s, &puback(id));
                } else {
                    tb.send(s, &pubrec(id));
                    tb.send(s, &pubcomp(id));
                }
            }
            got.extend(batch);
        }
        assert_eq!(texts(&got), sent, "QoS {qos:?}");
        tb.send(s, &disconnect());
        tb.send(p, &disconnect());
    }
}

// ---------------------------------------------------------------------------------------------
// 4.7 topics, 4.8 errors, 1.5 strings
// ---------------------------------------------------------------------------------------------

#[test]
fn leading_wildcards_do_not_match_dollar_topics() {
    // MQTT 3.1.1 [MQTT-4.7.2-1]
    let mut tb = tb();
    let hash = subscriber(&mut tb, "hash", &[("#", Q0)]);
    let plus = subscriber(&mut tb, "plus", &[("+/bar", Q0), ("+", Q0), ("+/+", Q0)]);
    let dollar = subscriber(&mut tb, "dollar", &[("$foo/#", Q0), ("$foo", Q0)]);
    let p = tb.connect("p", true, V311);
    pub0(&mut tb, p, "$foo/bar", "1", false);
    pub0(&mut tb, p, "$foo", "2", false);
    assert_eq!(tb.recv(hash), vec![]);
    assert_eq!(tb.recv(plus), vec![]);
    assert_eq!(texts(&tb.recv_publishes(dollar)), ["1", "2"]);
}

#[test]
fn sys_topics_are_published_every_sys_interval_and_only_match_sys_filters() {
    // The broker's $SYS statistics ([MQTT-4.7.2-1] keeps them from "#" subscribers).
    let mut tb = TestBroker::new(BrokerConfig {
        sys_interval: Some(Duration::from_secs(10)),
        ..config()
    });
    let hash = subscriber(&mut tb, "hash", &[("#", Q0)]);
    let sys = subscriber(
        &mut tb,
        "sys",
        &[("$SYS/broker/uptime", Q0), ("$SYS/broker/version", Q0)],
    );
    tb.advance(Duration::from_millis(9_999));
    assert_eq!(tb.recv(sys), vec![]);
    tb.advance(Duration::from_millis(1));
    let got = tb.recv_publishes(sys);
    let mut topics: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    topics.sort_unstable();
    assert_eq!(topics, ["$SYS/broker/uptime", "$SYS/broker/version"]);
    assert!(got.iter().any(|p| text(p) == "10 seconds"), "{got:?}");
    tb.advance(Duration::from_secs(10));
    let got = tb.recv_publishes(sys);
    assert!(got.iter().any(|p| text(p) == "20 seconds"), "{got:?}");
    assert_eq!(tb.recv(hash), vec![]);
    // Retained, so a late subscriber sees the current values at once.
    let late = tb.connect("late", true, V311);
    assert_eq!(
        subscribe_ok(&mut tb, late, &[("$SYS/broker/uptime", Q0)]).len(),
        1
    );
}

#[test]
fn topic_matching_applies_no_normalization() {
    // MQTT 3.1.1 [MQTT-4.7.3-4]
    let mut tb = tb();
    let s = subscriber(&mut tb, "s", &[("a/b", Q0)]);
    let p = tb.connect("p", true, V311);
    for t in ["a//b", "A/b", "a/b/", "/a/b", "a/ b", "a/b"] {
        pub0(&mut tb, p, t, t, false);
    }
    assert_eq!(texts(&tb.recv_publishes(s)), ["a/b"]);
}

#[test]
fn a_protocol_violation_closes_the_connection() {
    // MQTT 3.1.1 [MQTT-4.8.0-1]: server-only packets, a reserved type, a bad length.
    for bytes in [
        &[0x20, 0x02, 0x00, 0x00][..],             // CONNACK
        &[0x90, 0x03, 0x00, 0x01, 0x00][..],       // SUBACK
        &[0xb0, 0x02, 0x00, 0x01][..],             // UNSUBACK
        &[0xd0, 0x00][..],                         // PINGRESP
        &[0xf0, 0x00][..],                         // AUTH (reserved in 3.1.1)
        &[0xc0, 0xff, 0xff, 0xff, 0xff, 0x01][..], // Remaining Length over 4 bytes
        &[0xc0, 0x01, 0x00][..],                   // PINGREQ with a body
    ] {
        assert_closes_connected_client(bytes);
    }
}

#[test]
fn ill_formed_utf8_or_a_null_character_closes_the_connection() {
    // MQTT 3.1.1 [MQTT-1.5.3-1] [MQTT-1.5.3-2] [MQTT-4.7.3-2]
    assert_closes_connected_client(&[0x30, 0x05, 0x00, 0x02, 0xc3, 0x28, b'x']);
    assert_closes_connected_client(&[0x30, 0x06, 0x00, 0x03, 0xed, 0xa0, 0x80, b'x']);
    assert_closes_connected_client(&[0x30, 0x05, 0x00, 0x02, b'a', 0x00, b'x']);
}

#[test]
fn a_byte_order_mark_in_a_topic_is_kept() {
    // MQTT 3.1.1 [MQTT-1.5.3-3]
    let mut tb = tb();
    let s = subscriber(&mut tb, "s", &[("\u{feff}t", Q0)]);
    let p = tb.connect("p", true, V311);
    pub0(&mut tb, p, "t", "plain", false);
    pub0(&mut tb, p, "\u{feff}t", "bom", false);
    let got = tb.recv_publishes(s);
    assert_eq!(texts(&got), ["bom"]);
    assert_eq!(got[0].topic.as_str(), "\u{feff}t");
}

// ---------------------------------------------------------------------------------------------
// Limits and policies (not normative in 3.1.1; bounded memory and isolation)
// ---------------------------------------------------------------------------------------------

#[test]
fn the_inflight_window_is_respected() {
    let mut tb = TestBroker::new(BrokerConfig {
        max_inflight: 2,
        ..config()
    });
    let s = subscriber(&mut tb, "s", &[("t", Q1)]);
    let p = tb.connect("p", true, V311);
    for i in 1..=5 {
        pub1(&mut tb, p, "t", &format!("m{i}"), false, i);
    }
    let got = tb.recv_publishes(s);
    assert_eq!(texts(&got), ["m1", "m2"]);
    assert_eq!(tb.broker().inflight_messages("s"), Some(2));
    assert_eq!(tb.broker().queued_messages("s"), Some(3));
    pub0(&mut tb, p, "t", "q0 waits its turn", false);
    assert_eq!(
        tb.recv(s),
        vec![],
        "order: QoS 0 queues behind the waiting QoS 1"
    );
    tb.send(s, &puback(got[0].packet_id.unwrap().get()));
    assert_eq!(texts(&tb.recv_publishes(s)), ["m3"]);
}

#[test]
fn queue_overflow_drops_the_oldest_qos_0_first_and_reports_it() {
    let mut tb = TestBroker::new(BrokerConfig {
        max_queued_messages: 3,
        queue_qos0_offline: true,
        overflow_policy: OverflowPolicy::DropOldestQoS0First,
        ..config()
    });
    let s = tb.connect("s", false, V311);
    subscribe_ok(&mut tb, s, &[("t", Q1)]);
    tb.send(s, &disconnect());
    let p = tb.connect("p", true, V311);
    pub0(&mut tb, p, "t", "a0", false);
    pub1(&mut tb, p, "t", "b1", false, 1);
    pub0(&mut tb, p, "t", "c0", false);
    pub1(&mut tb, p, "t", "d1", false, 2); // drops a0
    pub1(&mut tb, p, "t", "e1", false, 3); // drops c0
    pub1(&mut tb, p, "t", "f1", false, 4); // no QoS 0 left: dropped itself
    let drops: Vec<u64> = tb
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::MessagesDropped { client_id, total } if client_id == "s" => Some(*total),
            _ => None,
        })
        .collect();
    // Reported at the first drop and whenever the total doubles (1, 2, 4, ...): three drops
    // give two events, the second saying 2; a flood of drops gives few events.
    assert_eq!(drops, [1, 2]);
    let s = tb.connect("s", false, V311);
    assert_eq!(texts(&tb.recv_publishes(s)), ["b1", "d1", "e1"]);
}

#[test]
fn queue_overflow_with_drop_new_keeps_the_queue() {
    let mut tb = TestBroker::new(BrokerConfig {
        max_queued_messages: 2,
        queue_qos0_offline: true,
        overflow_policy: OverflowPolicy::DropNew,
        ..config()
    });
    let s = tb.connect("s", false, V311);
    subscribe_ok(&mut tb, s, &[("t", Q1)]);
    tb.send(s, &disconnect());
    let p = tb.connect("p", true, V311);
    pub0(&mut tb, p, "t", "a0", false);
    pub1(&mut tb, p, "t", "b1", false, 1);
    pub1(&mut tb, p, "t", "c1", false, 2);
    assert!(
        tb.events()
            .iter()
            .any(|e| matches!(e, Event::MessagesDropped { total: 1, .. }))
    );
    let s = tb.connect("s", false, V311);
    assert_eq!(texts(&tb.recv_publishes(s)), ["a0", "b1"]);
}

#[test]
fn a_slow_reader_is_held_back_without_slowing_the_others() {
    let mut tb = TestBroker::new(BrokerConfig {
        max_unflushed_bytes: 1_000,
        max_queued_messages: 10,
        ..config()
    });
    let slow = subscriber(&mut tb, "slow", &[("t", Q0)]);
    let fast = subscriber(&mut tb, "fast", &[("t", Q0)]);
    tb.set_auto_flush(slow, false);
    let p = tb.connect("p", true, V311);
    let payload = "x".repeat(200);
    for _ in 0..50 {
        pub0(&mut tb, p, "t", &payload, false);
    }
    assert_eq!(
        tb.recv_publishes(fast).len(),
        50,
        "the fast reader gets everything"
    );
    let held = tb.recv_publishes(slow).len();
    assert!((1..=5).contains(&held), "the slow reader got {held}");
    assert!(
        tb.unflushed(slow) <= 1_000 + 210,
        "bounded: {}",
        tb.unflushed(slow)
    );
    assert_eq!(
        tb.broker().queued_messages("slow"),
        Some(10),
        "the queue limit holds"
    );
    assert!(
        tb.events()
            .iter()
            .any(|e| matches!(e, Event::MessagesDropped { client_id, .. } if client_id == "slow"))
    );
    // Once it reads again, the queue drains.
    tb.set_auto_flush(slow, true);
    assert_eq!(tb.recv_publishes(slow).len(), 10);
    assert_eq!(tb.broker().queued_messages("slow"), Some(0));
}

#[test]
fn bad_input_from_one_client_never_affects_another() {
    let mut tb = tb();
    let s = subscriber(&mut tb, "s", &[("t/#", Q1)]);
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "t/1", "before", false, 1);
    // A half-sent packet, then garbage, from clients sharing nothing with s or p.
    let bad = tb.connect("bad", true, V311);
    tb.send_raw(
        bad,
        &bytes_of(&publish("t/evil", b"partial", Q0, None, false))[..5],
    );
    let worse = tb.connect("worse", true, V311);
    tb.send_raw(worse, &[0x30, 0xff, 0xff, 0xff, 0xff, 0xff]);
    assert!(tb.is_closed(worse));
    let rogue = tb.open();
    tb.send_raw(rogue, &[0xde, 0xad, 0xbe, 0xef]);
    assert!(tb.is_closed(rogue));
    pub1(&mut tb, p, "t/2", "after", false, 2);
    tb.close_socket(bad);
    pub1(&mut tb, p, "t/3", "later", false, 3);
    assert_eq!(texts(&tb.recv_publishes(s)), ["before", "after", "later"]);
    assert!(!tb.is_closed(s) && !tb.is_closed(p));
}

#[test]
fn a_connection_that_never_sends_connect_is_closed_after_the_connect_timeout() {
    let mut tb = TestBroker::new(BrokerConfig {
        connect_timeout: Duration::from_secs(10),
        ..config()
    });
    let conn = tb.open();
    tb.advance(Duration::from_millis(9_999));
    assert!(!tb.is_closed(conn));
    tb.advance(Duration::from_millis(1));
    assert!(tb.is_closed(conn));
}

#[test]
fn takeover_publishes_the_will_of_the_old_connection() {
    // MQTT 3.1.1 [MQTT-3.1.2-8] [MQTT-3.1.4-2]: closed by the server without DISCONNECT.
    let mut tb = tb();
    let watcher = subscriber(&mut tb, "watcher", &[("will/#", Q0)]);
    let old = with_will(&mut tb, "x", will("will/x", "taken over", Q0, false), 0);
    let new = tb.connect("x", true, V311);
    assert!(tb.is_closed(old));
    assert!(!tb.is_closed(new));
    assert_eq!(texts(&tb.recv_publishes(watcher)), ["taken over"]);
}

#[test]
fn qos_2_retry_after_pubrec_resends_pubrel_not_publish() {
    // MQTT 3.1.1 [MQTT-4.3.3-1]
    let mut tb = TestBroker::new(BrokerConfig {
        retry_interval: Some(Duration::from_secs(5)),
        ..config()
    });
    let s = subscriber(&mut tb, "s", &[("t", Q2)]);
    let p = tb.connect("p", true, V311);
    pub2(&mut tb, p, "t", "m", false, 1);
    let id = tb.recv_publishes(s)[0].packet_id.unwrap().get();
    tb.send(s, &pubrec(id));
    assert_eq!(tb.recv(s), vec![pubrel(id)]);
    tb.advance(Duration::from_secs(5));
    assert_eq!(tb.recv(s), vec![pubrel(id)]);
    tb.send(s, &pubcomp(id));
    tb.advance(Duration::from_secs(30));
    assert_eq!(tb.recv(s), vec![]);
}

#[test]
fn a_packet_over_the_maximum_size_closes_the_connection() {
    let mut tb = TestBroker::new(BrokerConfig {
        max_packet_size: 128,
        ..config()
    });
    let s = subscriber(&mut tb, "s", &[("t", Q0)]);
    let p = tb.connect("p", true, V311);
    pub0(&mut tb, p, "t", &"x".repeat(100), false);
    assert_eq!(tb.recv_publishes(s).len(), 1);
    pub0(&mut tb, p, "t", &"x".repeat(200), false);
    assert!(tb.is_closed(p));
    // Refused from the fixed header alone, before the body arrives.
    let q = tb.connect("q", true, V311);
    tb.send_raw(q, &[0x30, 0x80, 0x80, 0x40]); // Remaining Length 1 MiB
    assert!(tb.is_closed(q));
    assert_eq!(tb.recv(s), vec![]);
}

#[test]
fn retained_messages_are_capped_but_existing_topics_still_update() {
    let mut tb = TestBroker::new(BrokerConfig {
        max_retained_messages: 2,
        ..config()
    });
    let p = tb.connect("p", true, V311);
    pub0(&mut tb, p, "r/1", "a", true);
    pub0(&mut tb, p, "r/2", "b", true);
    pub0(&mut tb, p, "r/3", "c", true);
    pub0(&mut tb, p, "r/1", "a2", true);
    assert_eq!(tb.broker().retained_count(), 2);
    let s = tb.connect("s", true, V311);
    let mut got = subscribe_ok(&mut tb, s, &[("r/#", Q0)]);
    got.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
    assert_eq!(texts(&got), ["a2", "b"]);
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

fn external() -> TestBroker {
    TestBroker::new(BrokerConfig {
        auth: AuthMode::External,
        ..config()
    })
}

/// Sends CONNECT with credentials on a fresh connection; returns it with the auth request.
fn connect_for_auth(tb: &mut TestBroker, client_id: &str) -> surgemq_core::broker::ConnId {
    let conn = tb.open();
    let mut connect = connect_packet(client_id, true, V311);
    connect.username = Some(MqttString::new("user").unwrap());
    connect.password = Some(Bytes::from_static(b"secret"));
    tb.send(conn, &Packet::Connect(Box::new(connect)));
    conn
}

#[test]
fn external_auth_accept_answers_connack_0_then_processes_what_came_before() {
    let mut tb = external();
    let s = connect_for_auth(&mut tb, "s");
    let mut pipelined = bytes_of(&subscribe(1, &[("t", Q0)]));
    pipelined.extend(bytes_of(&Packet::PingReq));
    tb.send_raw(s, &pipelined);
    assert_eq!(tb.recv(s), vec![], "nothing before the verdict");
    let requests = tb.take_auth_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].conn, s);
    assert_eq!(requests[0].client_id, "s");
    assert_eq!(
        requests[0].username.as_ref().map(MqttString::as_str),
        Some("user")
    );
    assert_eq!(requests[0].password.as_deref(), Some(&b"secret"[..]));
    tb.auth_done(s, AuthVerdict::Accept);
    let got = tb.recv(s);
    assert!(
        matches!(&got[0], Packet::ConnAck(a) if a.reason == ConnectReason::Success),
        "{got:?}"
    );
    assert!(
        matches!(&got[1], Packet::SubAck(a) if a.packet_id == pid(1)),
        "{got:?}"
    );
    assert_eq!(got[2], Packet::PingResp);
    assert_eq!(got.len(), 3);

    let p = connect_for_auth(&mut tb, "p");
    tb.auth_done(p, AuthVerdict::Accept);
    assert_eq!(tb.recv_raw(p), CONNACK_ACCEPTED);
    tb.send(p, &publish("t", b"authorized", Q0, None, false));
    assert_eq!(texts(&tb.recv_publishes(s)), ["authorized"]);
}

#[test]
fn external_auth_refusal_answers_the_3x_code_and_closes() {
    for (reason, code) in [
        (ConnectReason::NotAuthorized, 0x05),
        (ConnectReason::BadUserNameOrPassword, 0x04),
    ] {
        let mut tb = external();
        let watcher = {
            let w = connect_for_auth(&mut tb, "w");
            tb.auth_done(w, AuthVerdict::Accept);
            tb.recv(w);
            tb.send(w, &subscribe(1, &[("#", Q0)]));
            tb.recv(w);
            w
        };
        let conn = connect_for_auth(&mut tb, "c");
        tb.send(conn, &publish("t", b"unauthorized", Q0, None, false));
        tb.auth_done(conn, AuthVerdict::Refuse(reason));
        assert_eq!(
            tb.recv_raw(conn),
            vec![0x20, 0x02, 0x00, code],
            "{reason:?}"
        );
        assert!(tb.is_closed(conn));
        assert_eq!(
            tb.recv(watcher),
            vec![],
            "nothing processed after the refusal"
        );
    }
}

#[test]
fn a_connection_lost_while_authenticating_publishes_no_will() {
    // MQTT 3.1.1 [MQTT-3.1.2-8] concerns accepted connections only.
    let mut tb = external();
    let w = connect_for_auth(&mut tb, "w");
    tb.auth_done(w, AuthVerdict::Accept);
    tb.recv(w);
    tb.send(w, &subscribe(1, &[("#", Q0)]));
    tb.recv(w);
    let conn = tb.open();
    let mut connect = connect_packet("c", true, V311);
    connect.will = Some(will("will/c", "never accepted", Q0, true));
    tb.send(conn, &Packet::Connect(Box::new(connect)));
    tb.close_socket(conn);
    tb.auth_done(conn, AuthVerdict::Accept); // the verdict arrives late
    assert_eq!(tb.recv(w), vec![]);
    assert_eq!(tb.recv(conn), vec![]);
    assert_eq!(tb.broker().retained_count(), 0);
}

#[test]
fn loopback_only_refuses_a_non_loopback_peer() {
    let mut tb = TestBroker::new(BrokerConfig {
        auth: AuthMode::LoopbackOnly,
        ..config()
    });
    let remote: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    let conn = tb.open_from(remote);
    tb.send(
        conn,
        &Packet::Connect(Box::new(connect_packet("r", true, V311))),
    );
    assert_eq!(tb.recv_raw(conn), vec![0x20, 0x02, 0x00, 0x05]);
    assert!(tb.is_closed(conn));
    for local in ["127.0.0.1:40000", "127.8.9.10:1", "[::1]:40000"] {
        let conn = tb.open_from(local.parse().unwrap());
        tb.send(
            conn,
            &Packet::Connect(Box::new(connect_packet("l", true, V311))),
        );
        assert_eq!(tb.recv_raw(conn), CONNACK_ACCEPTED, "{local}");
    }
}

// ---------------------------------------------------------------------------------------------
// Other protocol versions
// ---------------------------------------------------------------------------------------------

#[test]
fn an_mqtt5_connect_gets_a_v5_connack_0x84_then_close() {
    let mut tb = tb();
    let conn = tb.open();
    tb.send(
        conn,
        &Packet::Connect(Box::new(connect_packet("five", true, ProtocolVersion::V5))),
    );
    // Fixed header, flags 0, reason 0x84, empty property length.
    assert_eq!(tb.recv_raw(conn), vec![0x20, 0x03, 0x00, 0x84, 0x00]);
    assert!(tb.is_closed(conn));
}

#[test]
fn mqtt31_clients_work_end_to_end() {
    let mut tb = tb();
    let conn = tb.open();
    tb.send(
        conn,
        &Packet::Connect(Box::new(connect_packet("sub31", false, V31))),
    );
    assert_eq!(tb.recv_raw(conn), CONNACK_ACCEPTED);
    let sub31 = ClientConn {
        id: conn,
        session_present: false,
    };
    subscribe_ok(&mut tb, sub31, &[("t/#", Q2)]);
    let sub311 = subscriber(&mut tb, "sub311", &[("t/#", Q2)]);
    let pub31 = tb.connect("pub31", true, V31);
    pub0(&mut tb, pub31, "t/0", "zero", false);
    pub1(&mut tb, pub31, "t/1", "one", false, 1);
    pub2(&mut tb, pub31, "t/2", "two", true, 2);
    for s in [sub31, sub311] {
        let got = tb.recv_publishes(s);
        assert_eq!(texts(&got), ["zero", "one", "two"]);
        for m in &got[1..] {
            let id = m.packet_id.unwrap().get();
            if m.qos == Q1 {
                tb.send(s, &puback(id));
            } else {
                tb.send(s, &pubrec(id));
                assert_eq!(tb.recv(s), vec![pubrel(id)]);
                tb.send(s, &pubcomp(id));
            }
        }
    }
    assert_eq!(tb.broker().inflight_messages("sub31"), Some(0));
    // 3.1.1 publisher to the 3.1 subscriber, keep alive and PING, then resume.
    let p = tb.connect("p", true, V311);
    pub1(&mut tb, p, "t/x", "from 3.1.1", false, 3);
    assert_eq!(texts(&tb.recv_publishes(sub31)), ["from 3.1.1"]);
    tb.send(sub31, &Packet::PingReq);
    assert_eq!(tb.recv(sub31), vec![Packet::PingResp]);
    tb.close_socket(sub31);
    let late = tb.connect("late31", true, V31);
    let retained = subscribe_ok(&mut tb, late, &[("t/2", Q2)]);
    assert_eq!(texts(&retained), ["two"]);
    assert!(retained[0].retain);
}

#[test]
fn mqtt31_connack_never_sets_session_present() {
    // MQTT 3.1 section 3.2: the first CONNACK byte is reserved ("not used"); Session Present
    // is new in 3.1.1.
    let mut tb = tb();
    let c = tb.connect("dev31", false, V31);
    tb.send(c, &disconnect());
    let conn = tb.open();
    tb.send(
        conn,
        &Packet::Connect(Box::new(connect_packet("dev31", false, V31))),
    );
    assert_eq!(tb.recv_raw(conn), CONNACK_ACCEPTED);
}

#[test]
fn mqtt31_rejects_an_empty_client_id_with_0x02() {
    // MQTT 3.1 section 3.1 (Client Identifier): 1 to 23 characters; 3.1 has no assignment.
    let mut tb = tb();
    let conn = tb.open();
    tb.send(
        conn,
        &Packet::Connect(Box::new(connect_packet("", true, V31))),
    );
    assert_eq!(tb.recv_raw(conn), vec![0x20, 0x02, 0x00, 0x02]);
    assert!(tb.is_closed(conn));
}

#[test]
fn mqtt31_rejects_a_client_id_over_23_characters_with_0x02() {
    // MQTT 3.1 section 3.1: more than 23 characters gets return code 2 (Identifier Rejected).
    let mut tb = tb();
    let conn = tb.open();
    tb.send(
        conn,
        &Packet::Connect(Box::new(connect_packet(
            "abcdefghijklmnopqrstuvwx",
            true,
            V31,
        ))),
    );
    assert_eq!(tb.recv_raw(conn), vec![0x20, 0x02, 0x00, 0x02]);
    assert!(tb.is_closed(conn));
    tb.connect("abcdefghijklmnopqrstuvw", true, V31);
}

#[test]
fn subscriptions_beyond_the_per_client_limit_fail_without_affecting_the_others() {
    let mut tb = TestBroker::new(BrokerConfig {
        max_subscriptions_per_client: 2,
        ..config()
    });
    let c = tb.connect("limited", true, V311);
    tb.send(
        c,
        &subscribe(1, &[("a", QoS::AtLeastOnce), ("b", QoS::AtMostOnce)]),
    );
    tb.recv(c);
    // A third filter fails (0x80 on the 3.1.1 wire); replacing an existing one still works.
    tb.send(
        c,
        &subscribe(2, &[("c", QoS::AtMostOnce), ("a", QoS::ExactlyOnce)]),
    );
    let Some(Packet::SubAck(ack)) = tb.recv(c).into_iter().next() else {
        panic!("expected SUBACK");
    };
    assert_eq!(bytes_of(&Packet::SubAck(ack))[4..], [0x80, 0x02]);
    assert_eq!(tb.broker().subscription_count(), 2);
    let p = tb.connect("publisher", true, V311);
    pub0(&mut tb, p, "c", "not delivered", false);
    pub0(&mut tb, p, "a", "delivered", false);
    assert_eq!(texts(&tb.recv_publishes(c)), ["delivered"]);
}
