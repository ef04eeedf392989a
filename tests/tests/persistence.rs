//! Persistence of the broker state machine ([`Persistence`]): which `Store` operations each
//! flow emits, when acknowledgements may go out (durable mode waits for the store), what a
//! restart rebuilds from the committed store, and what a failed or missing commit costs.
//!
//! MQTT has no word on disks, but every guarantee here is one of its session rules stretched
//! over a crash: an acknowledged message is owned by the server (3.1.1 [MQTT-4.3.2-2],
//! [MQTT-4.3.3-2]) and kept in the sessions of its subscribers ([MQTT-4.5.0-1],
//! [MQTT-3.1.2-5]) for as long as they live ([MQTT-4.1.0-1]), whatever happens to the process.
//!
//! Everything runs on [`surgemq_tests::harness::TestBroker`], whose [`MemoryStore`] is the disk:
//! operations are committed after each input (auto-commit) or when the test says so, and
//! `crash_and_restore` starts a new broker from what was committed.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use surgemq_core::broker::{
    BrokerConfig, ConnId, DisconnectCause, Event, OverflowPolicy, Persistence, ProtocolViolation,
    RestoreReport,
};
use surgemq_core::codec::{
    Packet, Properties, ProtocolVersion, Publish, QoS, SubAck, SubAckReason, SubscriptionOptions,
    UnsubAck, Will,
};
use surgemq_core::store::{
    DeliveryState, MemoryStore, StoreOp, StoreSnapshot, StoredDelivery, StoredMessage,
    StoredSession,
};
use surgemq_core::string::MqttString;
use surgemq_tests::harness::{
    ClientConn, TestBroker, connect_packet, disconnect, filter, pid, puback, pubcomp, publish,
    pubrec, pubrel, subscribe, topic, unsubscribe,
};

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The default configuration without `$SYS` (quiet outputs), with `persistence`.
fn config(persistence: Persistence) -> BrokerConfig {
    BrokerConfig {
        sys_interval: None,
        persistence,
        ..BrokerConfig::default()
    }
}

fn durable() -> TestBroker {
    TestBroker::new(config(Persistence::Durable))
}

fn cid(s: &str) -> MqttString {
    MqttString::new(s).unwrap()
}

/// The operations emitted and not yet committed.
fn pending(tb: &TestBroker) -> Vec<StoreOp> {
    tb.uncommitted().iter().map(|(_, op)| op.clone()).collect()
}

fn count(ops: &[StoreOp], which: impl Fn(&StoreOp) -> bool) -> usize {
    ops.iter().filter(|op| which(op)).count()
}

fn put_messages(ops: &[StoreOp]) -> usize {
    count(ops, |op| matches!(op, StoreOp::PutMessage { .. }))
}

fn delete_messages(ops: &[StoreOp]) -> usize {
    count(ops, |op| matches!(op, StoreOp::DeleteMessage { .. }))
}

fn put_deliveries(ops: &[StoreOp], state: DeliveryState) -> usize {
    count(
        ops,
        |op| matches!(op, StoreOp::PutDelivery(d) if d.state == state),
    )
}

fn snapshot(tb: &TestBroker) -> StoreSnapshot {
    tb.store().snapshot()
}

/// No message, delivery or QoS 2 release identifier left in the store.
fn assert_no_messages_stored(tb: &TestBroker) {
    let s = snapshot(tb);
    assert!(s.messages.is_empty(), "messages left: {:?}", s.messages);
    assert!(
        s.deliveries.is_empty(),
        "deliveries left: {:?}",
        s.deliveries
    );
    assert!(
        s.release_ids.is_empty(),
        "release ids left: {:?}",
        s.release_ids
    );
}

fn suback(id: u16, reasons: &[SubAckReason]) -> Packet {
    Packet::SubAck(SubAck {
        packet_id: pid(id),
        properties: Properties::new(),
        reasons: reasons.to_vec(),
    })
}

fn unsuback(id: u16) -> Packet {
    Packet::UnsubAck(UnsubAck {
        packet_id: pid(id),
        properties: Properties::new(),
        reasons: Vec::new(),
    })
}

/// The same PUBLISH with DUP set: a resend.
fn dup(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(p) => Packet::Publish(Publish { dup: true, ..p }),
        other => panic!("not a PUBLISH: {other:?}"),
    }
}

/// A persistent (clean session 0) 3.1.1 client subscribed to `filters` with SUBSCRIBE id 1,
/// its SUBACK read. Needs auto-commit (durable mode holds the SUBACK until the commit).
fn persistent_sub(tb: &mut TestBroker, client_id: &str, filters: &[(&str, QoS)]) -> ClientConn {
    let c = tb.connect(client_id, false, V311);
    tb.send(c, &subscribe(1, filters));
    let packets = tb.recv(c);
    assert!(
        matches!(packets.as_slice(), [Packet::SubAck(ack)] if ack.packet_id == pid(1)),
        "expected a SUBACK, got {packets:?}"
    );
    c
}

fn text(p: &Publish) -> &str {
    std::str::from_utf8(&p.payload).unwrap()
}

fn texts(ps: &[Publish]) -> Vec<&str> {
    ps.iter().map(text).collect()
}

fn packet_id(p: &Publish) -> u16 {
    p.packet_id.unwrap().get()
}

// ---------------------------------------------------------------------------------------------
// Durable mode: acknowledgements wait for the commit
// ---------------------------------------------------------------------------------------------

#[test]
fn durable_puback_waits_for_the_commit_of_the_message() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q1)]);
    let publisher = tb.connect("pub", true, V311);
    tb.set_auto_commit(false);

    tb.send(publisher, &publish("t", b"m", Q1, Some(7), false));
    // 3.1.1 [MQTT-4.3.2-2]: PUBACK means the server owns the message; in durable mode that is
    // once the message and its delivery are on disk.
    assert!(tb.recv(publisher).is_empty(), "PUBACK before the commit");
    assert_eq!(tb.broker().pending_acks(), 1);
    let ops = pending(&tb);
    assert_eq!(put_messages(&ops), 1, "{ops:?}");
    assert_eq!(put_deliveries(&ops, DeliveryState::AwaitingAck(pid(1))), 1);
    // A QoS 1 delivery is not held: a copy forgotten in a crash is only sent again.
    assert_eq!(texts(&tb.recv_publishes(sub)), ["m"]);

    tb.commit_store();
    assert_eq!(tb.recv(publisher), vec![puback(7)]);
    assert_eq!(tb.broker().pending_acks(), 0);
    tb.commit_store();
    assert!(tb.recv(publisher).is_empty(), "a second PUBACK");
}

#[test]
fn durable_pubrec_and_pubcomp_wait_for_the_commit() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q2)]);
    tb.send(sub, &disconnect());
    let publisher = tb.connect("pub", false, V311);
    tb.set_auto_commit(false);

    tb.send(publisher, &publish("t", b"m", Q2, Some(3), false));
    assert!(tb.recv(publisher).is_empty(), "PUBREC before the commit");
    let ops = pending(&tb);
    assert_eq!(put_messages(&ops), 1, "{ops:?}");
    assert_eq!(put_deliveries(&ops, DeliveryState::Queued), 1, "{ops:?}");
    // 3.1.1 [MQTT-4.3.3-2]: the identifier is remembered until PUBREL, also across a crash.
    assert!(ops.contains(&StoreOp::PutReleaseId {
        client_id: cid("pub"),
        packet_id: pid(3),
    }));
    tb.commit_store();
    assert_eq!(tb.recv(publisher), vec![pubrec(3)]);

    tb.send(publisher, &pubrel(3));
    assert!(tb.recv(publisher).is_empty(), "PUBCOMP before the commit");
    assert_eq!(
        pending(&tb),
        vec![StoreOp::DeleteReleaseId {
            client_id: cid("pub"),
            packet_id: pid(3),
        }]
    );
    tb.commit_store();
    assert_eq!(tb.recv(publisher), vec![pubcomp(3)]);
    assert!(snapshot(&tb).release_ids.is_empty());
}

#[test]
fn durable_suback_and_unsuback_wait_for_the_commit_of_the_session() {
    let mut tb = durable();
    let c = tb.connect("client", false, V311);
    tb.set_auto_commit(false);
    tb.commit_store(); // The PutSession of the connect.

    tb.send(c, &subscribe(1, &[("a", Q1)]));
    assert!(tb.recv(c).is_empty(), "SUBACK before the commit");
    assert_eq!(
        pending(&tb),
        vec![StoreOp::PutSession(StoredSession {
            client_id: cid("client"),
            subscriptions: vec![(filter("a"), SubscriptionOptions::qos(Q1))],
        })]
    );
    tb.commit_store();
    // 3.1.1 [MQTT-3.8.4-1] [MQTT-3.8.4-2]
    assert_eq!(tb.recv(c), vec![suback(1, &[SubAckReason::GrantedQoS1])]);

    tb.send(c, &unsubscribe(2, &["a"]));
    assert!(tb.recv(c).is_empty(), "UNSUBACK before the commit");
    assert_eq!(
        pending(&tb),
        vec![StoreOp::PutSession(StoredSession {
            client_id: cid("client"),
            subscriptions: Vec::new(),
        })]
    );
    tb.commit_store();
    // 3.1.1 [MQTT-3.10.4-4]
    assert_eq!(tb.recv(c), vec![unsuback(2)]);
    tb.commit_store();
    assert!(tb.recv(c).is_empty());
}

#[test]
fn durable_acks_on_one_connection_stay_in_order() {
    let mut tb = durable();
    let keeper = persistent_sub(&mut tb, "keeper", &[("stored", Q2)]);
    tb.send(keeper, &disconnect());
    let c = tb.connect("client", false, V311);
    tb.set_auto_commit(false);
    tb.commit_store();

    tb.send(c, &subscribe(1, &[("x", Q1)]));
    tb.send(c, &publish("stored", b"a", Q1, Some(2), false));
    // Nothing to store for this one, but its PUBACK must not overtake the ones before it.
    tb.send(c, &publish("nobody", b"b", Q1, Some(3), false));
    tb.send(c, &publish("stored", b"c", Q2, Some(4), false));
    tb.send(c, &unsubscribe(5, &["x"]));
    assert!(tb.recv(c).is_empty());
    assert_eq!(tb.broker().pending_acks(), 5);

    tb.commit_store();
    // Acknowledgements in the order the packets arrived (the ordering 3.1.1 section 4.6 asks of
    // a receiver, [MQTT-4.6.0-2] [MQTT-4.6.0-3]).
    assert_eq!(
        tb.recv(c),
        vec![
            suback(1, &[SubAckReason::GrantedQoS1]),
            puback(2),
            puback(3),
            pubrec(4),
            unsuback(5),
        ]
    );
}

#[test]
fn durable_ack_with_nothing_pending_is_immediate() {
    let mut tb = durable();
    let sub = tb.connect("sub", true, V311);
    tb.send(sub, &subscribe(1, &[("t", Q2)]));
    let publisher = tb.connect("pub", true, V311);
    tb.recv(sub);
    tb.set_auto_commit(false);

    tb.send(publisher, &publish("t", b"m", Q1, Some(1), false));
    assert_eq!(tb.recv(publisher), vec![puback(1)]);
    tb.send(publisher, &publish("t", b"n", Q2, Some(2), false));
    assert_eq!(tb.recv(publisher), vec![pubrec(2)]);
    // A clean subscriber's QoS 2 delivery is not held.
    assert_eq!(texts(&tb.recv_publishes(sub)), ["m", "n"]);
    assert!(tb.uncommitted().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Periodic and Off
// ---------------------------------------------------------------------------------------------

#[test]
fn periodic_acks_are_immediate_and_operations_still_emitted() {
    let mut tb = TestBroker::new(config(Persistence::Periodic));
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q2)]);
    let publisher = tb.connect("pub", false, V311);
    tb.set_auto_commit(false);

    tb.send(publisher, &publish("t", b"one", Q1, Some(1), false));
    assert_eq!(tb.recv(publisher), vec![puback(1)]);
    tb.send(publisher, &publish("t", b"two", Q2, Some(2), false));
    assert_eq!(tb.recv(publisher), vec![pubrec(2)]);
    // Not held either: the QoS 2 PUBLISH goes out before any commit.
    let got = tb.recv_publishes(sub);
    assert_eq!(texts(&got), ["one", "two"]);
    tb.send(publisher, &pubrel(2));
    assert_eq!(tb.recv(publisher), vec![pubcomp(2)]);
    tb.send(sub, &pubrec(packet_id(&got[1])));
    assert_eq!(tb.recv(sub), vec![pubrel(packet_id(&got[1]))]);
    tb.send(sub, &subscribe(2, &[("u", Q1)]));
    assert_eq!(tb.recv(sub), vec![suback(2, &[SubAckReason::GrantedQoS1])]);
    tb.send(sub, &unsubscribe(3, &["u"]));
    assert_eq!(tb.recv(sub), vec![unsuback(3)]);
    assert_eq!(tb.broker().pending_acks(), 0);

    let ops = pending(&tb);
    assert_eq!(put_messages(&ops), 2, "{ops:?}");
    assert_eq!(put_deliveries(&ops, DeliveryState::AwaitingAck(pid(1))), 1);
    assert_eq!(put_deliveries(&ops, DeliveryState::AwaitingAck(pid(2))), 1);
    assert_eq!(put_deliveries(&ops, DeliveryState::AwaitingComp(pid(2))), 1);
    assert_eq!(
        count(&ops, |op| matches!(op, StoreOp::PutReleaseId { .. })),
        1
    );
    assert_eq!(
        count(&ops, |op| matches!(op, StoreOp::DeleteReleaseId { .. })),
        1
    );
    assert_eq!(count(&ops, |op| matches!(op, StoreOp::PutSession(_))), 2);
    tb.commit_store();
    assert_eq!(snapshot(&tb).deliveries.len(), 2);
}

#[test]
fn off_emits_no_store_operation_for_any_flow() {
    // The default configuration: persistence off, $SYS on.
    let mut tb = TestBroker::new(BrokerConfig::default());
    tb.set_auto_commit(false);
    let check = |tb: &TestBroker| {
        assert!(tb.uncommitted().is_empty(), "{:?}", tb.uncommitted());
        assert!(tb.store().is_empty());
        assert_eq!(tb.broker().pending_acks(), 0);
    };

    let sub = tb.connect("sub", false, V311);
    tb.send(sub, &subscribe(1, &[("t/#", Q2), ("$SYS/#", Q1)]));
    assert_eq!(tb.recv(sub).len(), 1);
    check(&tb);
    let publisher = tb.connect("pub", false, V311);
    tb.send(publisher, &publish("t/r", b"kept", Q1, Some(1), true));
    assert_eq!(tb.recv(publisher), vec![puback(1)]);
    tb.send(publisher, &publish("t/2", b"two", Q2, Some(2), false));
    assert_eq!(tb.recv(publisher), vec![pubrec(2)]);
    tb.send(publisher, &pubrel(2));
    assert_eq!(tb.recv(publisher), vec![pubcomp(2)]);
    check(&tb);
    let got = tb.recv_publishes(sub);
    assert_eq!(texts(&got), ["kept", "two"]);
    tb.send(sub, &puback(packet_id(&got[0])));
    tb.send(sub, &pubrec(packet_id(&got[1])));
    tb.send(sub, &pubcomp(packet_id(&got[1])));
    check(&tb);

    // Offline queue, resumed session.
    tb.send(sub, &disconnect());
    tb.send(publisher, &publish("t/q", b"queued", Q1, Some(3), false));
    check(&tb);
    let sub = tb.connect("sub", false, V311);
    assert!(sub.session_present);
    let got = tb.recv_publishes(sub);
    assert_eq!(texts(&got), ["queued"]);
    tb.send(sub, &puback(packet_id(&got[0])));
    tb.send(sub, &unsubscribe(2, &["t/#"]));
    check(&tb);

    // $SYS, Wills, a clean session over the persistent one.
    tb.advance(Duration::from_secs(30));
    let mut with_will = connect_packet("dying", false, V311);
    with_will.will = Some(Will {
        topic: topic("t/will"),
        payload: Bytes::from_static(b"bye"),
        qos: Q1,
        retain: true,
        properties: Properties::new(),
    });
    let dying = tb.connect_with(with_will);
    tb.close_socket(dying);
    let clean = tb.connect("sub", true, V311);
    assert!(!clean.session_present);
    check(&tb);

    // Nothing survives a restart.
    assert_eq!(tb.crash_and_restore(), RestoreReport::default());
    check(&tb);
    let again = tb.connect("pub", false, V311);
    assert!(!again.session_present);
    assert_eq!(tb.broker().retained_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// What is written
// ---------------------------------------------------------------------------------------------

#[test]
fn clean_sessions_are_never_written() {
    let mut tb = durable();
    tb.set_auto_commit(false);
    let sub = tb.connect("sub", true, V311);
    tb.send(sub, &subscribe(1, &[("t", Q2)]));
    assert_eq!(tb.recv(sub), vec![suback(1, &[SubAckReason::GrantedQoS2])]);
    let publisher = tb.connect("pub", true, V311);
    tb.send(publisher, &publish("t", b"a", Q1, Some(1), false));
    tb.send(publisher, &publish("t", b"b", Q2, Some(2), false));
    tb.send(publisher, &pubrel(2));
    assert_eq!(tb.recv(publisher), vec![puback(1), pubrec(2), pubcomp(2)]);
    let got = tb.recv_publishes(sub);
    assert_eq!(texts(&got), ["a", "b"]);
    tb.send(sub, &puback(packet_id(&got[0])));
    tb.send(sub, &pubrec(packet_id(&got[1])));
    tb.send(sub, &pubcomp(packet_id(&got[1])));
    tb.send(sub, &unsubscribe(2, &["t"]));
    assert_eq!(tb.recv(sub), vec![pubrel(packet_id(&got[1])), unsuback(2)]);
    tb.send(sub, &disconnect());
    tb.close_socket(publisher);
    // 3.1.1 [MQTT-3.1.2-6]: a clean session lasts as long as its connection; nothing of it is
    // kept.
    assert!(tb.uncommitted().is_empty(), "{:?}", tb.uncommitted());
    assert!(tb.store().is_empty());
}

#[test]
fn persistent_session_is_written_with_its_subscriptions() {
    let mut tb = durable();
    tb.set_auto_commit(false);
    let c = tb.connect("p", false, V311);
    // 3.1.1 [MQTT-3.1.2-4] [MQTT-3.1.3-2]: the session is kept by client identifier.
    assert_eq!(
        pending(&tb),
        vec![StoreOp::PutSession(StoredSession {
            client_id: cid("p"),
            subscriptions: Vec::new(),
        })]
    );
    tb.commit_store();
    tb.send(c, &subscribe(1, &[("a/+", Q1), ("b", Q2)]));
    let ops = pending(&tb);
    let [StoreOp::PutSession(session)] = ops.as_slice() else {
        panic!("expected one PutSession, got {ops:?}");
    };
    assert_eq!(session.client_id, cid("p"));
    let subs: BTreeMap<String, QoS> = session
        .subscriptions
        .iter()
        .map(|(f, o)| (f.as_str().to_owned(), o.qos))
        .collect();
    assert_eq!(
        subs,
        BTreeMap::from([("a/+".to_owned(), Q1), ("b".to_owned(), Q2)])
    );
    tb.commit_store();
    assert_eq!(snapshot(&tb).sessions, vec![session.clone()]);
}

#[test]
fn clean_connect_over_a_stored_session_deletes_it() {
    let mut tb = durable();
    let p = persistent_sub(&mut tb, "p", &[("shared", Q1), ("own", Q1)]);
    tb.send(p, &disconnect());
    let other = persistent_sub(&mut tb, "other", &[("shared", Q1)]);
    tb.send(other, &disconnect());
    let publisher = tb.connect("pub", true, V311);
    tb.send(publisher, &publish("shared", b"s", Q1, Some(1), false));
    tb.send(publisher, &publish("own", b"o", Q1, Some(2), false));
    assert_eq!(tb.recv(publisher), vec![puback(1), puback(2)]);
    assert_eq!(snapshot(&tb).messages.len(), 2);
    assert_eq!(snapshot(&tb).deliveries.len(), 3);

    tb.set_auto_commit(false);
    // 3.1.1 [MQTT-3.1.2-6] [MQTT-3.2.2-1]: the previous session is discarded, and the CONNACK
    // saying so waits for the deletion to be committed.
    let (clean, connack) = tb.try_connect(connect_packet("p", true, V311));
    assert!(
        connack.is_none(),
        "CONNACK before the deletion was committed"
    );
    let ops = pending(&tb);
    assert_eq!(
        count(&ops, |op| *op
            == StoreOp::DeleteSession {
                client_id: cid("p")
            }),
        1,
        "{ops:?}"
    );
    // "own" went to "p" only; "shared" is still owed to "other".
    assert_eq!(delete_messages(&ops), 1, "{ops:?}");
    assert_eq!(
        count(&ops, |op| matches!(op, StoreOp::PutSession(_))),
        0,
        "the clean session must not be stored: {ops:?}"
    );
    tb.set_auto_commit(true);
    assert!(
        matches!(&tb.recv(clean)[..], [Packet::ConnAck(c)] if !c.session_present),
        "CONNACK, Session Present 0, once committed"
    );
    let s = snapshot(&tb);
    assert_eq!(
        s.sessions
            .iter()
            .map(|s| s.client_id.as_str())
            .collect::<Vec<_>>(),
        ["other"]
    );
    assert_eq!(s.messages.len(), 1);
    assert_eq!(s.deliveries.len(), 1);

    tb.close_socket(clean);
    let other = tb.connect("other", false, V311);
    let got = tb.recv_publishes(other);
    assert_eq!(texts(&got), ["s"]);
    tb.send(other, &puback(packet_id(&got[0])));
    assert_no_messages_stored(&tb);

    tb.crash_and_restore();
    let p = tb.connect("p", false, V311);
    assert!(!p.session_present);
}

#[test]
fn sys_topics_and_wills_are_not_stored() {
    let mut tb = TestBroker::new(BrokerConfig {
        sys_interval: Some(Duration::from_secs(1)),
        ..config(Persistence::Durable)
    });
    let sub = persistent_sub(&mut tb, "sub", &[("$SYS/#", Q1)]);
    let mut with_will = connect_packet("dying", true, V311);
    with_will.will = Some(Will {
        topic: topic("w"),
        payload: Bytes::from_static(b"bye"),
        qos: Q1,
        retain: true,
        properties: Properties::new(),
    });
    tb.set_auto_commit(false);
    tb.advance(Duration::from_secs(5));
    assert!(!tb.recv_publishes(sub).is_empty(), "no $SYS published");
    let dying = tb.connect_with(with_will);
    assert!(tb.uncommitted().is_empty(), "{:?}", tb.uncommitted());
    // Published (and retained) when the connection is lost: a message like any other, but a
    // Will itself is never part of a stored session.
    tb.close_socket(dying);
    let ops = pending(&tb);
    assert!(
        ops.iter().all(|op| match op {
            StoreOp::PutRetained(m) => m.topic.as_str() == "w",
            _ => false,
        }),
        "{ops:?}"
    );
    tb.commit_store();
    assert_eq!(
        snapshot(&tb)
            .retained
            .iter()
            .map(|m| m.topic.as_str())
            .collect::<Vec<_>>(),
        ["w"]
    );
}

// ---------------------------------------------------------------------------------------------
// Restart
// ---------------------------------------------------------------------------------------------

#[test]
fn offline_messages_survive_a_restart_in_order() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t/#", Q2)]);
    tb.send(sub, &disconnect());
    let publisher = tb.connect("pub", true, V311);
    tb.send(publisher, &publish("t/1", b"m1", Q1, Some(1), false));
    tb.send(publisher, &publish("t/2", b"m2", Q2, Some(2), false));
    tb.send(publisher, &pubrel(2));
    tb.send(publisher, &publish("t/1", b"m3", Q1, Some(3), false));
    tb.send(publisher, &publish("t/1", b"m4", Q2, Some(4), false));
    assert_eq!(
        tb.recv(publisher),
        vec![puback(1), pubrec(2), pubcomp(2), puback(3), pubrec(4)]
    );

    let report = tb.crash_and_restore();
    assert_eq!(
        report,
        RestoreReport {
            sessions: 1,
            subscriptions: 1,
            deliveries: 4,
            retained: 0,
            discarded: 0,
        }
    );
    assert!(tb.is_closed(sub) && tb.is_closed(publisher));
    let sub = tb.connect("sub", false, V311);
    // 3.1.1 [MQTT-3.1.2-4] [MQTT-3.2.2-2]: the stored session is resumed.
    assert!(sub.session_present);
    // 3.1.1 [MQTT-3.1.2-5] [MQTT-4.6.0-6]: what was queued for it, in order.
    let got = tb.recv_publishes(sub);
    assert_eq!(texts(&got), ["m1", "m2", "m3", "m4"]);
    assert_eq!(
        got.iter().map(|p| p.qos).collect::<Vec<_>>(),
        [Q1, Q2, Q1, Q2]
    );
    assert!(got.iter().all(|p| !p.dup && !p.retain));
    let ids: BTreeSet<u16> = got.iter().map(packet_id).collect();
    assert_eq!(ids.len(), 4, "packet identifiers in use twice: {got:?}");

    tb.send(sub, &puback(packet_id(&got[0])));
    tb.send(sub, &pubrec(packet_id(&got[1])));
    tb.send(sub, &pubcomp(packet_id(&got[1])));
    tb.send(sub, &puback(packet_id(&got[2])));
    tb.send(sub, &pubrec(packet_id(&got[3])));
    tb.send(sub, &pubcomp(packet_id(&got[3])));
    assert_no_messages_stored(&tb);
}

#[test]
fn subscriptions_survive_a_restart() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("a/+", Q1), ("b", Q2)]);
    let other = persistent_sub(&mut tb, "other", &[("b", Q1)]);
    tb.send(other, &unsubscribe(2, &["b"]));
    assert_eq!(tb.recv(other), vec![unsuback(2)]);

    let report = tb.crash_and_restore();
    assert_eq!((report.sessions, report.subscriptions), (2, 2));
    assert_eq!(tb.broker().subscription_count(), 2);
    assert!(tb.is_closed(sub));
    let sub = tb.connect("sub", false, V311);
    assert!(sub.session_present);
    let other = tb.connect("other", false, V311);
    assert!(other.session_present);
    let publisher = tb.connect("pub", true, V311);
    tb.send(publisher, &publish("a/x", b"one", Q1, Some(1), false));
    tb.send(publisher, &publish("b", b"two", Q2, Some(2), false));
    let got = tb.recv_publishes(sub);
    assert_eq!(texts(&got), ["one", "two"]);
    assert_eq!(got[1].qos, Q2);
    // The unsubscription survived too.
    assert!(tb.recv_publishes(other).is_empty());
}

#[test]
fn retained_messages_survive_a_restart() {
    let mut tb = durable();
    let publisher = tb.connect("pub", true, V311);
    tb.send(publisher, &publish("r/1", b"one", Q1, Some(1), true));
    tb.send(publisher, &publish("r/2", b"two", Q0, None, true));
    tb.send(publisher, &publish("r/3", b"gone", Q2, Some(3), true));
    tb.send(publisher, &pubrel(3));
    // 3.1.1 [MQTT-3.3.1-10] [MQTT-3.3.1-11]: an empty retained message clears the topic.
    tb.send(publisher, &publish("r/3", b"", Q0, None, true));
    // 3.1.1 [MQTT-3.3.1-12]: RETAIN 0 leaves the retained message alone.
    tb.send(publisher, &publish("r/1", b"not kept", Q0, None, false));
    assert_eq!(snapshot(&tb).retained.len(), 2);

    let report = tb.crash_and_restore();
    assert_eq!(report.retained, 2);
    assert_eq!(report.sessions, 0);
    // 3.1.1 [MQTT-3.1.2-7] [MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-8]: retained messages are
    // not session state, and a new subscriber gets them with RETAIN 1.
    let sub = tb.connect("new", true, V311);
    tb.send(sub, &subscribe(1, &[("r/#", Q2)]));
    let mut got = tb.recv_publishes(sub);
    got.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
    assert_eq!(texts(&got), ["one", "two"]);
    assert_eq!(got.iter().map(|p| p.qos).collect::<Vec<_>>(), [Q1, Q0]);
    assert!(got.iter().all(|p| p.retain));
}

#[test]
fn qos2_received_before_a_crash_is_not_delivered_again() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q2)]);
    let publisher = tb.connect("pub", false, V311);
    tb.send(publisher, &publish("t", b"once", Q2, Some(5), false));
    assert_eq!(tb.recv(publisher), vec![pubrec(5)]);
    let got = tb.recv_publishes(sub);
    assert_eq!(texts(&got), ["once"]);
    tb.send(sub, &pubrec(packet_id(&got[0])));
    tb.send(sub, &pubcomp(packet_id(&got[0])));
    assert_eq!(snapshot(&tb).release_ids, vec![(cid("pub"), pid(5))]);

    tb.crash_and_restore();
    let sub = tb.connect("sub", false, V311);
    assert!(tb.recv(sub).is_empty());
    let publisher = tb.connect("pub", false, V311);
    assert!(publisher.session_present);
    // A publisher whose PUBREC was lost in the crash resends the PUBLISH ([MQTT-4.4.0-1]).
    // 3.1.1 [MQTT-4.3.3-2]: acknowledged again, not delivered again.
    tb.send(publisher, &dup(publish("t", b"once", Q2, Some(5), false)));
    assert_eq!(tb.recv(publisher), vec![pubrec(5)]);
    assert!(tb.recv(sub).is_empty(), "delivered twice");
    tb.send(publisher, &pubrel(5));
    assert_eq!(tb.recv(publisher), vec![pubcomp(5)]);
    assert!(snapshot(&tb).release_ids.is_empty());
    // After PUBCOMP the identifier is new again.
    tb.send(publisher, &publish("t", b"again", Q2, Some(5), false));
    assert_eq!(tb.recv(publisher), vec![pubrec(5)]);
    assert_eq!(texts(&tb.recv_publishes(sub)), ["again"]);
}

#[test]
fn pubrel_after_a_restart_gets_pubcomp() {
    let mut tb = durable();
    let publisher = tb.connect("pub", false, V311);
    tb.send(publisher, &publish("t", b"m", Q2, Some(9), false));
    assert_eq!(tb.recv(publisher), vec![pubrec(9)]);
    tb.crash_and_restore();
    let publisher = tb.connect("pub", false, V311);
    assert!(publisher.session_present);
    // 3.1.1 [MQTT-4.4.0-1] [MQTT-4.3.3-2]: the PUBREL resent after reconnecting is answered.
    tb.send(publisher, &pubrel(9));
    assert_eq!(tb.recv(publisher), vec![pubcomp(9)]);
    assert!(snapshot(&tb).release_ids.is_empty());
}

// ---------------------------------------------------------------------------------------------
// In flight across a restart
// ---------------------------------------------------------------------------------------------

#[test]
fn unacknowledged_deliveries_are_resent_with_dup_after_a_restart() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q2)]);
    let publisher = tb.connect("pub", true, V311);
    tb.send(publisher, &publish("t", b"a", Q1, Some(1), false));
    tb.send(publisher, &publish("t", b"b", Q2, Some(2), false));
    tb.send(publisher, &pubrel(2));
    assert_eq!(tb.recv(publisher), vec![puback(1), pubrec(2), pubcomp(2)]);
    let first = tb.recv_publishes(sub);
    assert_eq!(texts(&first), ["a", "b"]);
    assert!(first.iter().all(|p| !p.dup));

    let report = tb.crash_and_restore();
    assert_eq!(report.deliveries, 2);
    let sub = tb.connect("sub", false, V311);
    assert!(sub.session_present);
    // 3.1.1 [MQTT-4.4.0-1] [MQTT-2.3.1-4]: resent with DUP 1 and the original identifiers,
    // in the original order ([MQTT-4.6.0-6]); [MQTT-3.3.1-1] DUP on a resend.
    let again = tb.recv_publishes(sub);
    assert_eq!(texts(&again), ["a", "b"]);
    assert!(again.iter().all(|p| p.dup));
    assert_eq!(
        again.iter().map(packet_id).collect::<Vec<_>>(),
        first.iter().map(packet_id).collect::<Vec<_>>()
    );
    assert_eq!(again.iter().map(|p| p.qos).collect::<Vec<_>>(), [Q1, Q2]);

    tb.send(sub, &puback(packet_id(&again[0])));
    tb.send(sub, &pubrec(packet_id(&again[1])));
    assert_eq!(tb.recv(sub), vec![pubrel(packet_id(&again[1]))]);
    tb.send(sub, &pubcomp(packet_id(&again[1])));
    assert_no_messages_stored(&tb);
}

#[test]
fn qos2_delivery_with_pubrec_is_resumed_with_pubrel_after_a_restart() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q2)]);
    let publisher = tb.connect("pub", true, V311);
    tb.send(publisher, &publish("t", b"b", Q2, Some(2), false));
    let got = tb.recv_publishes(sub);
    let id = packet_id(&got[0]);
    tb.send(sub, &pubrec(id));
    assert_eq!(tb.recv(sub), vec![pubrel(id)]);
    assert!(
        snapshot(&tb)
            .deliveries
            .iter()
            .all(|d| d.state == DeliveryState::AwaitingComp(pid(id)))
    );

    tb.crash_and_restore();
    let sub = tb.connect("sub", false, V311);
    // 3.1.1 [MQTT-4.3.3-1] [MQTT-4.4.0-1]: PUBREL again, never the PUBLISH once PUBREL was sent.
    assert_eq!(tb.recv(sub), vec![pubrel(id)]);
    tb.send(sub, &pubcomp(id));
    assert_no_messages_stored(&tb);
}

#[test]
fn pubrel_waits_for_the_commit_of_pubrec() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q2)]);
    let publisher = tb.connect("pub", true, V311);
    tb.send(publisher, &publish("t", b"m", Q2, Some(1), false));
    let id = packet_id(&tb.recv_publishes(sub)[0]);
    tb.set_auto_commit(false);

    tb.send(sub, &pubrec(id));
    assert_eq!(
        put_deliveries(&pending(&tb), DeliveryState::AwaitingComp(pid(id))),
        1
    );
    // 3.1.1 [MQTT-4.3.3-1]: once PUBREL is sent the PUBLISH is never sent again, so the
    // broker must not forget, in a crash, that it sent it.
    assert!(
        tb.recv(sub).is_empty(),
        "PUBREL before its state is on disk"
    );
    tb.commit_store();
    assert_eq!(tb.recv(sub), vec![pubrel(id)]);
}

#[test]
fn pubrel_not_committed_before_a_crash_means_publish_again() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q2)]);
    let publisher = tb.connect("pub", true, V311);
    tb.send(publisher, &publish("t", b"m", Q2, Some(1), false));
    let id = packet_id(&tb.recv_publishes(sub)[0]);
    tb.set_auto_commit(false);
    tb.send(sub, &pubrec(id));
    tb.crash_and_restore();
    tb.set_auto_commit(true);

    // The subscriber never saw PUBREL: the PUBLISH is resent, same identifier, so the client
    // recognises it ([MQTT-4.3.3-2] on its side).
    let sub = tb.connect("sub", false, V311);
    let again = tb.recv_publishes(sub);
    assert_eq!(texts(&again), ["m"]);
    assert!(again[0].dup);
    assert_eq!(packet_id(&again[0]), id);
}

/// Reconnects `client_id` (clean session 0) with commits held: the connection, and its CONNACK
/// (if sent yet) followed by everything else it received.
fn reconnect_before_commit(tb: &mut TestBroker, client_id: &str) -> (ConnId, Vec<Packet>) {
    let (conn, connack) = tb.try_connect(connect_packet(client_id, false, V311));
    let mut packets: Vec<Packet> = connack.map(Packet::ConnAck).into_iter().collect();
    packets.extend(tb.recv(conn));
    (conn, packets)
}

#[test]
fn pubrel_resent_on_reconnect_waits_for_the_commit_of_pubrec() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q2)]);
    let publisher = tb.connect("pub", true, V311);
    tb.send(publisher, &publish("t", b"m", Q2, Some(1), false));
    let id = packet_id(&tb.recv_publishes(sub)[0]);
    tb.set_auto_commit(false);
    tb.send(sub, &pubrec(id));
    tb.close_socket(sub);

    // Reconnected before the commit: the PUBREL resent from memory must wait for the disk too.
    let (sub, mut packets) = reconnect_before_commit(&mut tb, "sub");
    assert!(
        !packets.iter().any(|p| matches!(p, Packet::PubRel(_))),
        "PUBREL before its state is on disk: {packets:?}"
    );
    tb.commit_store();
    packets.extend(tb.recv(sub));
    assert!(matches!(&packets[0], Packet::ConnAck(ack) if ack.session_present));
    assert_eq!(packets[1..], [pubrel(id)]);
}

#[test]
fn resent_qos2_publish_waits_for_the_commit_of_its_identifier() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q2)]);
    let publisher = tb.connect("pub", true, V311);
    tb.set_auto_commit(false);
    tb.send(publisher, &publish("t", b"m", Q2, Some(1), false));
    // Held: its packet identifier is not on disk yet.
    assert!(tb.recv(sub).is_empty());
    tb.close_socket(sub);

    // Reconnected before the commit: the in-flight PUBLISH resent from memory waits as well.
    let (sub, mut packets) = reconnect_before_commit(&mut tb, "sub");
    assert!(
        !packets.iter().any(|p| matches!(p, Packet::Publish(_))),
        "PUBLISH before its identifier is on disk: {packets:?}"
    );
    tb.commit_store();
    packets.extend(tb.recv(sub));
    assert!(matches!(&packets[0], Packet::ConnAck(ack) if ack.session_present));
    assert!(
        matches!(&packets[1..], [Packet::Publish(p)] if text(p) == "m"),
        "{packets:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Durable QoS 2 hold, lost commits, failed commits
// ---------------------------------------------------------------------------------------------

#[test]
fn durable_qos2_to_an_online_persistent_subscriber_is_held_until_the_commit() {
    let mut tb = durable();
    let persistent = persistent_sub(&mut tb, "persistent", &[("t", Q2)]);
    let clean = tb.connect("clean", true, V311);
    tb.send(clean, &subscribe(1, &[("t", Q2)]));
    tb.recv(clean);
    let publisher = tb.connect("pub", true, V311);
    tb.set_auto_commit(false);

    tb.send(publisher, &publish("t", b"m", Q2, Some(1), false));
    assert!(tb.recv(persistent).is_empty(), "sent before the commit");
    // Only stored deliveries are held.
    assert_eq!(texts(&tb.recv_publishes(clean)), ["m"]);
    tb.commit_store();
    let got = tb.recv_publishes(persistent);
    assert_eq!(texts(&got), ["m"]);
    assert_eq!(got[0].qos, Q2);
    assert_eq!(tb.recv(publisher), vec![pubrec(1)]);
}

#[test]
fn uncommitted_publish_is_lost_but_never_acknowledged() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q1)]);
    tb.send(sub, &disconnect());
    let publisher = tb.connect("pub", true, V311);
    tb.set_auto_commit(false);
    tb.send(publisher, &publish("t", b"m", Q1, Some(1), false));
    assert_eq!(tb.broker().queued_messages("sub"), Some(1));
    assert!(!tb.uncommitted().is_empty());

    tb.crash_and_restore();
    // Never acknowledged: the publisher still owns the message and will resend it.
    assert!(tb.recv(publisher).is_empty());
    assert_no_messages_stored(&tb);
    tb.set_auto_commit(true);
    let sub = tb.connect("sub", false, V311);
    assert!(sub.session_present);
    assert!(tb.recv(sub).is_empty());
}

#[test]
fn failed_commit_withholds_the_ack_and_closes_the_connection() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q1)]);
    tb.send(sub, &disconnect());
    let publisher = tb.connect("pub", true, V311);
    tb.take_events();
    tb.set_auto_commit(false);

    tb.send(publisher, &publish("t", b"m", Q1, Some(1), false));
    tb.fail_store("disk full");
    let events = tb.take_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::StoreFailed { error, withheld: 1, .. } if error.0 == "disk full"
        )),
        "{events:?}"
    );
    // 3.1.1 [MQTT-4.8.0-2]: a transient error closes the connection; the client resends.
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Disconnected { conn, cause: DisconnectCause::StoreFailed, .. } if *conn == publisher.id
    )));
    assert!(tb.is_closed(publisher));
    assert!(tb.recv(publisher).is_empty(), "PUBACK for a failed commit");
    assert_eq!(tb.broker().pending_acks(), 0);

    let publisher = tb.connect("pub", true, V311);
    tb.send(publisher, &dup(publish("t", b"m", Q1, Some(1), false)));
    assert!(tb.recv(publisher).is_empty());
    tb.commit_store();
    assert_eq!(tb.recv(publisher), vec![puback(1)]);
    assert!(!tb.is_closed(publisher));
}

#[test]
fn failed_commit_closes_a_held_qos2_delivery_which_is_resent_later() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q2)]);
    let publisher = tb.connect("pub", true, V311);
    tb.set_auto_commit(false);
    tb.send(publisher, &publish("t", b"m", Q2, Some(1), false));
    tb.fail_store("io error");
    assert!(tb.is_closed(sub), "the held subscriber stays open");
    assert!(tb.is_closed(publisher));
    assert!(tb.recv(sub).is_empty());
    assert!(tb.recv(publisher).is_empty());

    tb.set_auto_commit(true);
    let sub = tb.connect("sub", false, V311);
    assert!(sub.session_present);
    // Never on disk, but still owed by the broker that is running: resent.
    let got = tb.recv_publishes(sub);
    assert_eq!(texts(&got), ["m"]);
    assert!(got[0].dup);
}

#[test]
fn ack_with_nothing_to_store_is_not_stuck_after_a_failed_commit() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q1)]);
    tb.send(sub, &disconnect());
    let publisher = tb.connect("pub", true, V311);
    tb.set_auto_commit(false);
    tb.send(publisher, &publish("t", b"m", Q1, Some(1), false));
    tb.fail_store("disk full");
    tb.set_auto_commit(true);

    // This PUBACK depends on nothing the failed commit held: it must not wait for a commit
    // that no new operation will ever cause.
    let other = tb.connect("other", true, V311);
    tb.send(other, &publish("nobody", b"x", Q1, Some(1), false));
    assert_eq!(tb.recv(other), vec![puback(1)]);
    tb.send(other, &subscribe(2, &[("y", Q0)]));
    assert_eq!(
        tb.recv(other),
        vec![suback(2, &[SubAckReason::GrantedQoS0])]
    );
}

#[test]
fn pubrel_resent_after_a_failed_commit_clears_the_identifier_on_disk() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q2)]);
    tb.send(sub, &disconnect());
    let publisher = tb.connect("pub", false, V311);
    tb.send(publisher, &publish("t", b"first", Q2, Some(4), false));
    assert_eq!(tb.recv(publisher), vec![pubrec(4)]);
    tb.set_auto_commit(false);
    tb.send(publisher, &pubrel(4));
    tb.fail_store("disk full");
    assert!(tb.is_closed(publisher));
    assert!(tb.recv(publisher).is_empty(), "PUBCOMP for a failed commit");
    tb.set_auto_commit(true);

    // The client resends PUBREL ([MQTT-4.4.0-1]); memory no longer awaits the identifier, but
    // the disk still holds it.
    let publisher = tb.connect("pub", false, V311);
    assert!(publisher.session_present);
    tb.send(publisher, &pubrel(4));
    assert_eq!(tb.recv(publisher), vec![pubcomp(4)]);
    assert!(
        snapshot(&tb).release_ids.is_empty(),
        "stale identifier on disk"
    );

    // Otherwise, after a restart, the identifier's reuse would be taken for a resend and
    // swallowed ([MQTT-4.3.3-2]: after PUBCOMP the identifier is new again).
    tb.crash_and_restore();
    let publisher = tb.connect("pub", false, V311);
    tb.send(publisher, &publish("t", b"second", Q2, Some(4), false));
    assert_eq!(tb.recv(publisher), vec![pubrec(4)]);
    let sub = tb.connect("sub", false, V311);
    assert_eq!(texts(&tb.recv_publishes(sub)), ["first", "second"]);
}

// ---------------------------------------------------------------------------------------------
// One message, many deliveries
// ---------------------------------------------------------------------------------------------

#[test]
fn fan_out_stores_a_message_once_and_deletes_it_after_the_last_ack() {
    let mut tb = durable();
    let subs: Vec<ClientConn> = ["s1", "s2", "s3"]
        .iter()
        .map(|id| persistent_sub(&mut tb, id, &[("t", Q1)]))
        .collect();
    let publisher = tb.connect("pub", true, V311);
    tb.set_auto_commit(false);

    tb.send(publisher, &publish("t", b"m", Q1, Some(1), false));
    let ops = pending(&tb);
    assert_eq!(put_messages(&ops), 1, "{ops:?}");
    assert_eq!(count(&ops, |op| matches!(op, StoreOp::PutDelivery(_))), 3);
    tb.commit_store();
    assert_eq!(tb.recv(publisher), vec![puback(1)]);
    let s = snapshot(&tb);
    assert_eq!((s.messages.len(), s.deliveries.len()), (1, 3));
    assert!(s.deliveries.iter().all(|d| d.message == s.messages[0].0));

    for (i, &sub) in subs.iter().enumerate() {
        let got = tb.recv_publishes(sub);
        assert_eq!(texts(&got), ["m"]);
        tb.send(sub, &puback(packet_id(&got[0])));
        let ops = pending(&tb);
        assert_eq!(
            count(&ops, |op| matches!(op, StoreOp::DeleteDelivery { .. })),
            1
        );
        let last = i == subs.len() - 1;
        assert_eq!(delete_messages(&ops), usize::from(last), "{ops:?}");
        tb.commit_store();
    }
    assert_no_messages_stored(&tb);
}

#[test]
fn queue_overflow_drop_leaves_nothing_in_the_store() {
    let mut tb = TestBroker::new(BrokerConfig {
        max_queued_messages: 1,
        max_inflight: 1,
        overflow_policy: OverflowPolicy::DropNew,
        ..config(Persistence::Durable)
    });
    let full = persistent_sub(&mut tb, "full", &[("t", Q1)]);
    tb.send(full, &disconnect());
    let online = persistent_sub(&mut tb, "online", &[("shared", Q1)]);
    let publisher = tb.connect("pub", true, V311);

    tb.send(publisher, &publish("t", b"kept", Q1, Some(1), false));
    tb.set_auto_commit(false);
    tb.send(publisher, &publish("t", b"dropped", Q1, Some(2), false));
    let ops = pending(&tb);
    assert_eq!(count(&ops, |op| matches!(op, StoreOp::PutDelivery(_))), 0);
    assert_eq!((put_messages(&ops), delete_messages(&ops)), (1, 1));
    tb.commit_store();
    assert_eq!(tb.recv(publisher), vec![puback(1), puback(2)]);
    let s = snapshot(&tb);
    assert_eq!((s.messages.len(), s.deliveries.len()), (1, 1));
    assert!(
        tb.take_events()
            .iter()
            .any(|e| matches!(e, Event::MessagesDropped { total: 1, .. }))
    );

    // Dropped for one session, delivered to another: the message stays for the other only.
    tb.set_auto_commit(true);
    let both = tb.connect("both", false, V311);
    tb.send(both, &subscribe(1, &[("t", Q1)]));
    tb.recv(both);
    tb.send(both, &disconnect());
    tb.send(online, &subscribe(2, &[("t", Q1)]));
    tb.recv(online);
    tb.send(publisher, &publish("t", b"partly", Q1, Some(3), false));
    assert_eq!(tb.recv(publisher), vec![puback(3)]);
    let s = snapshot(&tb);
    // "kept" for "full"; "partly" for "both" and "online" ("full" dropped it).
    assert_eq!(s.messages.len(), 2);
    assert_eq!(
        s.deliveries
            .iter()
            .filter(|d| d.client_id.as_str() == "full")
            .count(),
        1
    );
    let got = tb.recv_publishes(online);
    assert_eq!(texts(&got), ["partly"]);
    tb.send(online, &puback(packet_id(&got[0])));
    let both = tb.connect("both", false, V311);
    let got = tb.recv_publishes(both);
    assert_eq!(texts(&got), ["partly"]);
    tb.send(both, &puback(packet_id(&got[0])));
    let s = snapshot(&tb);
    assert_eq!(s.messages.len(), 1, "{:?}", s.messages);
    assert_eq!(s.messages[0].1.payload, Bytes::from_static(b"kept"));

    tb.crash_and_restore();
    let full = tb.connect("full", false, V311);
    assert_eq!(texts(&tb.recv_publishes(full)), ["kept"]);
}

// ---------------------------------------------------------------------------------------------
// Restore hygiene
// ---------------------------------------------------------------------------------------------

fn stored_message(topic_name: &str, payload: &'static [u8]) -> StoredMessage {
    StoredMessage {
        topic: topic(topic_name),
        qos: Q1,
        properties: Properties::new(),
        payload: Bytes::from_static(payload),
    }
}

fn stored_delivery(client_id: &str, seq: u64, message: u64) -> StoredDelivery {
    StoredDelivery {
        client_id: cid(client_id),
        seq,
        message,
        qos: Q1,
        retain: false,
        state: DeliveryState::Queued,
    }
}

/// A store with one good session, message and delivery, and four records that do not fit:
/// an unreferenced message, a delivery of a missing message, a delivery and a release id of a
/// missing session.
fn store_with_four_misfits() -> MemoryStore {
    let mut store = MemoryStore::new();
    for op in [
        StoreOp::PutSession(StoredSession {
            client_id: cid("s"),
            subscriptions: vec![(filter("t"), SubscriptionOptions::qos(Q1))],
        }),
        StoreOp::PutMessage {
            id: 10,
            message: stored_message("t", b"good"),
        },
        StoreOp::PutMessage {
            id: 11,
            message: stored_message("t", b"orphan"),
        },
        StoreOp::PutDelivery(stored_delivery("s", 1, 10)),
        StoreOp::PutDelivery(stored_delivery("s", 2, 99)),
        StoreOp::PutDelivery(stored_delivery("ghost", 1, 10)),
        StoreOp::PutReleaseId {
            client_id: cid("ghost"),
            packet_id: pid(4),
        },
    ] {
        store.apply(&op);
    }
    store
}

#[test]
fn restore_discards_records_that_do_not_fit_together() {
    let store = store_with_four_misfits();

    let (mut tb, report) = TestBroker::from_store(config(Persistence::Durable), store);
    assert_eq!(
        report,
        RestoreReport {
            sessions: 1,
            subscriptions: 1,
            deliveries: 1,
            retained: 0,
            discarded: 4,
        }
    );
    let ops: BTreeSet<String> = pending(&tb).iter().map(|op| format!("{op:?}")).collect();
    let expected: BTreeSet<String> = [
        StoreOp::DeleteDelivery {
            client_id: cid("s"),
            seq: 2,
        },
        StoreOp::DeleteDelivery {
            client_id: cid("ghost"),
            seq: 1,
        },
        StoreOp::DeleteMessage { id: 11 },
        StoreOp::DeleteReleaseId {
            client_id: cid("ghost"),
            packet_id: pid(4),
        },
    ]
    .iter()
    .map(|op| format!("{op:?}"))
    .collect();
    assert_eq!(ops, expected);
    tb.commit_store();
    let s = snapshot(&tb);
    assert_eq!(s.messages.len(), 1);
    assert_eq!(s.messages[0].0, 10);
    assert_eq!(s.deliveries, vec![stored_delivery("s", 1, 10)]);
    assert!(s.release_ids.is_empty());

    // What was restored works, and new messages do not reuse a stored number.
    let sub = tb.connect("s", false, V311);
    assert!(sub.session_present);
    assert_eq!(texts(&tb.recv_publishes(sub)), ["good"]);
    tb.set_auto_commit(false);
    let publisher = tb.connect("pub", true, V311);
    tb.send(publisher, &publish("t", b"new", Q1, Some(1), false));
    let ops = pending(&tb);
    let new_ids: Vec<u64> = ops
        .iter()
        .filter_map(|op| match op {
            StoreOp::PutMessage { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(new_ids.len(), 1);
    assert!(new_ids[0] > 11, "message number {} reused", new_ids[0]);
    // A new delivery does not reuse a stored position either.
    assert!(
        ops.iter()
            .all(|op| !matches!(op, StoreOp::PutDelivery(d) if d.seq <= 1 && d.message != 10)),
        "{ops:?}"
    );
}

#[test]
fn restore_of_a_consistent_store_discards_nothing() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q2)]);
    let publisher = tb.connect("pub", false, V311);
    tb.send(publisher, &publish("t", b"a", Q1, Some(1), true));
    tb.send(publisher, &publish("t", b"b", Q2, Some(2), false));
    let got = tb.recv_publishes(sub);
    tb.send(sub, &pubrec(packet_id(&got[1])));
    tb.send(sub, &disconnect());
    tb.send(publisher, &publish("t", b"c", Q1, Some(3), false));

    let report = tb.crash_and_restore();
    assert_eq!(
        report,
        RestoreReport {
            sessions: 2,
            subscriptions: 1,
            deliveries: 3,
            retained: 1,
            discarded: 0,
        }
    );
    assert!(tb.uncommitted().is_empty());
    // A second crash right away restores the same thing.
    assert_eq!(tb.crash_and_restore(), report);
}

// ---------------------------------------------------------------------------------------------
// After a failed commit: the store is rewritten from memory
// ---------------------------------------------------------------------------------------------

/// `StoreOp::Clear` then only puts: the shape of the rewrite that follows a failed commit.
fn assert_is_rewrite(ops: &[StoreOp]) {
    assert_eq!(ops.first(), Some(&StoreOp::Clear), "{ops:?}");
    assert!(
        ops[1..].iter().all(|op| matches!(
            op,
            StoreOp::PutSession(_)
                | StoreOp::PutMessage { .. }
                | StoreOp::PutDelivery(_)
                | StoreOp::PutReleaseId { .. }
                | StoreOp::PutRetained(_)
        )),
        "a rewrite is made of puts only: {ops:?}"
    );
}

/// The `StoreFailed` events reported since the last `take_events`, as (seq, withheld).
fn store_failures(tb: &mut TestBroker) -> Vec<(u64, usize)> {
    tb.take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::StoreFailed { seq, withheld, .. } => Some((seq, withheld)),
            _ => None,
        })
        .collect()
}

/// The client identifiers of the stored sessions.
fn stored_sessions(tb: &TestBroker) -> Vec<String> {
    snapshot(tb)
        .sessions
        .iter()
        .map(|s| s.client_id.as_str().to_owned())
        .collect()
}

const PROBE: &str = "~probe";

/// Checks that the disk holds exactly what the broker keeps in memory, by having the broker
/// write all of it: a new persistent client connects (its session record is the only
/// operation), that commit fails, and the rewrite that follows is committed; minus the probe's
/// session, it must be what was on disk. Needs everything committed and nothing held; leaves the
/// probe connected and auto-commit on.
fn assert_disk_is_memory(tb: &mut TestBroker) {
    assert!(tb.uncommitted().is_empty(), "{:?}", tb.uncommitted());
    let disk = snapshot(tb);
    tb.set_auto_commit(false);
    tb.connect(PROBE, false, V311);
    assert_eq!(
        pending(tb),
        [StoreOp::PutSession(StoredSession {
            client_id: cid(PROBE),
            subscriptions: Vec::new(),
        })]
    );
    tb.fail_store("probe");
    assert_is_rewrite(&pending(tb));
    tb.set_auto_commit(true);
    let mut memory = tb.store().clone();
    memory.apply(&StoreOp::DeleteSession {
        client_id: cid(PROBE),
    });
    assert_eq!(
        memory.snapshot(),
        disk,
        "the disk is not what the broker holds"
    );
}

/// Restores a broker from `tb`'s disk and checks that it holds exactly that: nothing discarded,
/// and its own rewrite is the same store. Returns the report.
fn assert_restore_is_lossless(tb: &TestBroker) -> RestoreReport {
    let (mut restored, report) =
        TestBroker::from_store(tb.broker().config().clone(), tb.store().clone());
    assert_eq!(report.discarded, 0, "{report:?}");
    assert!(restored.uncommitted().is_empty());
    assert_disk_is_memory(&mut restored);
    report
}

/// Connections of [`rich_state`].
struct Rich {
    s1: ClientConn,
    publisher: ClientConn,
    s3: ClientConn,
    clean: ClientConn,
}

/// Builds a state with something of every kind, committed, then changes it with every kind of
/// operation without committing; the last commit fails if `fail` (and the rewrite is then
/// committed) or succeeds. The same inputs either way.
fn rich_state(tb: &mut TestBroker, fail: bool) -> Rich {
    let s1 = persistent_sub(tb, "s1", &[("a/#", Q2), ("b", Q1)]);
    let s2 = persistent_sub(tb, "s2", &[("a/+", Q1)]);
    tb.send(s2, &disconnect());
    let clean = tb.connect("clean", true, V311);
    tb.send(clean, &subscribe(1, &[("a/#", Q2)]));
    tb.recv(clean);
    let publisher = tb.connect("pub", false, V311);
    tb.send(publisher, &publish("a/1", b"one", Q1, Some(1), false));
    tb.send(publisher, &publish("a/2", b"two", Q2, Some(2), true));
    tb.send(publisher, &pubrel(2));
    tb.send(publisher, &publish("b", b"bee", Q1, Some(3), false));
    tb.send(publisher, &publish("z", b"zed", Q1, Some(4), true));
    assert_eq!(
        tb.recv(publisher),
        [puback(1), pubrec(2), pubcomp(2), puback(3), puback(4)]
    );
    let got = tb.recv_publishes(s1);
    assert_eq!(texts(&got), ["one", "two", "bee"]);
    tb.send(s1, &pubrec(packet_id(&got[1])));
    assert_eq!(tb.recv(s1), [pubrel(packet_id(&got[1]))]);

    tb.set_auto_commit(false);
    // A QoS 2 message: a release identifier, a held delivery to s1, a queued one (QoS 1) to s2.
    tb.send(publisher, &publish("a/3", b"three", Q2, Some(5), false));
    // A delivery done, a subscription gone.
    tb.send(s1, &puback(packet_id(&got[0])));
    tb.send(s1, &unsubscribe(2, &["b"]));
    // A retained message set, another cleared ([MQTT-3.3.1-10] [MQTT-3.3.1-11]).
    tb.send(publisher, &publish("r/x", b"ex", Q1, Some(6), true));
    tb.send(publisher, &publish("z", b"", Q0, None, true));
    // A new persistent session, sent the retained message ([MQTT-3.3.1-6]).
    let s3 = tb.connect("s3", false, V311);
    tb.send(s3, &subscribe(1, &[("r/#", Q1)]));
    assert!(tb.recv(publisher).is_empty() && tb.recv(s1).is_empty());
    if fail {
        tb.take_events();
        tb.fail_store("disk full");
        // PUBREC 5, UNSUBACK 2, PUBACK 6, SUBACK 1.
        let failures = store_failures(tb);
        assert!(matches!(failures[..], [(_, 4)]), "{failures:?}");
        assert!(tb.is_closed(publisher) && tb.is_closed(s1) && tb.is_closed(s3));
        assert!(!tb.is_closed(clean), "nothing of the clean session waited");
        let rewrite = pending(tb);
        assert_is_rewrite(&rewrite);
        // 4 sessions, 1 release identifier, 7 deliveries, 5 messages, 2 retained messages.
        assert_eq!(rewrite.len(), 1 + 4 + 1 + 7 + 5 + 2, "{rewrite:?}");
    }
    tb.set_auto_commit(true);
    Rich {
        s1,
        publisher,
        s3,
        clean,
    }
}

#[test]
fn rewrite_after_a_failed_commit_stores_exactly_what_the_broker_holds() {
    let mut failed = durable();
    rich_state(&mut failed, true);
    let mut reference = durable();
    let conns = rich_state(&mut reference, false);
    assert!(!reference.is_closed(conns.s1) && !reference.is_closed(conns.s3));
    assert!(!reference.is_closed(conns.publisher) && !reference.is_closed(conns.clean));

    // The rewrite is what the operations would have written had they been committed:
    // 3.1.1 [MQTT-4.1.0-1] the session state is kept whatever the disk did.
    assert_eq!(snapshot(&failed), snapshot(&reference));
    assert_eq!(
        failed.broker().subscription_count(),
        reference.broker().subscription_count()
    );
    // And that is what the brokers hold, and what a broker restored from it holds.
    assert_disk_is_memory(&mut reference);
    let expected = RestoreReport {
        sessions: 4,
        subscriptions: 3,
        deliveries: 7,
        retained: 2,
        discarded: 0,
    };
    assert_eq!(assert_restore_is_lossless(&failed), expected);

    let report = failed.crash_and_restore();
    assert_eq!(report, expected);
    let tb = &mut failed;
    // 3.1.1 [MQTT-3.1.2-4] [MQTT-3.1.2-5] [MQTT-4.4.0-1]: every session resumed, with all it
    // was owed, in order ([MQTT-4.6.0-6]).
    let s1 = tb.connect("s1", false, V311);
    assert!(s1.session_present);
    let packets = tb.recv(s1);
    let [
        Packet::PubRel(rel),
        Packet::Publish(bee),
        Packet::Publish(three),
    ] = packets.as_slice()
    else {
        panic!("s1 got {packets:?}");
    };
    assert_eq!(
        (text(bee), bee.qos, text(three), three.qos),
        ("bee", Q1, "three", Q2)
    );
    assert!(bee.dup && three.dup);
    tb.send(s1, &pubcomp(rel.packet_id.get()));
    tb.send(s1, &puback(packet_id(bee)));
    tb.send(s1, &pubrec(packet_id(three)));
    assert_eq!(tb.recv(s1), [pubrel(packet_id(three))]);
    tb.send(s1, &pubcomp(packet_id(three)));
    let s2 = tb.connect("s2", false, V311);
    let got = tb.recv_publishes(s2);
    assert_eq!(texts(&got), ["one", "two", "three"]);
    assert!(got.iter().all(|p| p.qos == Q1 && !p.dup));
    for p in &got {
        tb.send(s2, &puback(packet_id(p)));
    }
    let s3 = tb.connect("s3", false, V311);
    let got = tb.recv_publishes(s3);
    assert_eq!(texts(&got), ["ex"]);
    assert!(got[0].retain);
    tb.send(s3, &puback(packet_id(&got[0])));
    let publisher = tb.connect("pub", false, V311);
    assert!(publisher.session_present);
    // The PUBREC withheld by the failure: the publisher resends, and the message is not
    // delivered again ([MQTT-4.3.3-2]).
    tb.send(
        publisher,
        &dup(publish("a/3", b"three", Q2, Some(5), false)),
    );
    assert_eq!(tb.recv(publisher), [pubrec(5)]);
    tb.send(publisher, &pubrel(5));
    assert_eq!(tb.recv(publisher), [pubcomp(5)]);
    assert!(tb.recv(s1).is_empty() && tb.recv(s2).is_empty());
    assert_no_messages_stored(tb);
    // The retained messages, "z" cleared.
    let new = tb.connect("new", true, V311);
    tb.send(new, &subscribe(1, &[("#", Q0)]));
    let mut got = tb.recv_publishes(new);
    got.sort_by(|a, b| a.topic.as_str().cmp(b.topic.as_str()));
    assert_eq!(texts(&got), ["two", "ex"]);
    assert_disk_is_memory(tb);
}

#[test]
fn rewrite_leaves_out_sys_topics_clean_sessions_and_qos0() {
    for persistence in [Persistence::Durable, Persistence::Periodic] {
        let mut tb = TestBroker::new(BrokerConfig {
            sys_interval: Some(Duration::from_secs(1)),
            queue_qos0_offline: true,
            ..config(persistence)
        });
        let p = persistent_sub(&mut tb, "p", &[("t", Q1), ("$SYS/#", Q1)]);
        tb.send(p, &disconnect());
        let clean = tb.connect("clean", true, V311);
        tb.send(clean, &subscribe(1, &[("t", Q2)]));
        tb.recv(clean);
        let publisher = tb.connect("pub", true, V311);
        tb.send(publisher, &publish("t", b"zero", Q0, None, false));
        tb.send(publisher, &publish("r", b"kept", Q0, None, true));
        tb.advance(Duration::from_secs(3));
        assert!(tb.broker().retained_count() > 1, "no $SYS retained");
        assert!(tb.broker().queued_messages("p").unwrap() > 1);
        tb.set_auto_commit(false);
        tb.take_events();

        tb.send(publisher, &publish("t", b"one", Q1, Some(1), false));
        tb.fail_store("disk full");
        let withheld = usize::from(persistence == Persistence::Durable);
        let failures = store_failures(&mut tb);
        assert!(
            matches!(failures[..], [(_, w)] if w == withheld),
            "{failures:?}"
        );
        assert_eq!(tb.is_closed(publisher), withheld == 1, "{persistence:?}");
        let rewrite = pending(&tb);
        assert_is_rewrite(&rewrite);
        // The persistent session, its one stored delivery and message, the retained message:
        // not the clean session, not the QoS 0 and $SYS messages queued for "p", not $SYS
        // retained messages.
        let StoreOp::PutDelivery(delivery) = &rewrite[2] else {
            panic!("{rewrite:?}");
        };
        assert_eq!(
            rewrite,
            [
                StoreOp::Clear,
                StoreOp::PutSession(StoredSession {
                    client_id: cid("p"),
                    subscriptions: vec![
                        (filter("$SYS/#"), SubscriptionOptions::qos(Q1)),
                        (filter("t"), SubscriptionOptions::qos(Q1)),
                    ],
                }),
                StoreOp::PutDelivery(StoredDelivery {
                    client_id: cid("p"),
                    qos: Q1,
                    retain: false,
                    state: DeliveryState::Queued,
                    ..delivery.clone()
                }),
                StoreOp::PutMessage {
                    id: delivery.message,
                    message: StoredMessage {
                        payload: Bytes::from_static(b"one"),
                        ..stored_message("t", b"")
                    },
                },
                StoreOp::PutRetained(StoredMessage {
                    qos: Q0,
                    ..stored_message("r", b"kept")
                }),
            ],
            "{persistence:?}"
        );
        tb.commit_store();
        assert_eq!(
            tb.crash_and_restore(),
            RestoreReport {
                sessions: 1,
                subscriptions: 2,
                deliveries: 1,
                retained: 1,
                discarded: 0,
            }
        );
    }
}

#[test]
fn failed_session_record_of_a_publisher_is_rewritten_before_its_pubrecs() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q2)]);
    tb.send(sub, &disconnect());
    tb.set_auto_commit(false);
    tb.take_events();

    let publisher = tb.connect("pub", false, V311);
    assert!(!publisher.session_present);
    assert_eq!(
        pending(&tb),
        [StoreOp::PutSession(StoredSession {
            client_id: cid("pub"),
            subscriptions: Vec::new(),
        })]
    );
    // The CONNACK waited for nothing: nothing is withheld, nobody is closed.
    let failed = tb.uncommitted()[0].0;
    tb.fail_store("disk full");
    assert_eq!(store_failures(&mut tb)[..], [(failed, 0)]);
    assert!(!tb.is_closed(publisher));
    let rewrite = pending(&tb);
    assert_is_rewrite(&rewrite);
    assert!(rewrite.contains(&StoreOp::PutSession(StoredSession {
        client_id: cid("pub"),
        subscriptions: Vec::new(),
    })));

    tb.send(publisher, &publish("t", b"one", Q2, Some(1), false));
    tb.send(publisher, &publish("t", b"two", Q2, Some(2), false));
    assert!(tb.recv(publisher).is_empty(), "PUBREC before the commit");
    tb.commit_store();
    assert_eq!(tb.recv(publisher), [pubrec(1), pubrec(2)]);
    // The identifiers are on disk with the session they belong to.
    assert_eq!(stored_sessions(&tb), ["pub", "sub"]);
    assert_eq!(
        snapshot(&tb).release_ids,
        [(cid("pub"), pid(1)), (cid("pub"), pid(2))]
    );

    let report = tb.crash_and_restore();
    assert_eq!(
        report,
        RestoreReport {
            sessions: 2,
            subscriptions: 1,
            deliveries: 2,
            retained: 0,
            discarded: 0,
        }
    );
    tb.set_auto_commit(true);
    let publisher = tb.connect("pub", false, V311);
    // 3.1.1 [MQTT-3.1.2-4] [MQTT-3.2.2-2]
    assert!(publisher.session_present);
    // The second PUBREC was lost in the crash: the PUBLISH comes again ([MQTT-4.4.0-1]) and is
    // acknowledged, not delivered again ([MQTT-4.3.3-2]).
    tb.send(publisher, &dup(publish("t", b"two", Q2, Some(2), false)));
    assert_eq!(tb.recv(publisher), [pubrec(2)]);
    tb.send(publisher, &pubrel(1));
    tb.send(publisher, &pubrel(2));
    assert_eq!(tb.recv(publisher), [pubcomp(1), pubcomp(2)]);
    let sub = tb.connect("sub", false, V311);
    let got = tb.recv_publishes(sub);
    assert_eq!(texts(&got), ["one", "two"]);
    for p in &got {
        tb.send(sub, &pubrec(packet_id(p)));
        tb.send(sub, &pubcomp(packet_id(p)));
    }
    assert!(tb.recv_publishes(sub).is_empty());
    assert_no_messages_stored(&tb);
    assert_disk_is_memory(&mut tb);
}

#[test]
fn qos2_message_whose_first_commit_failed_is_acknowledged_after_the_rewrite_and_delivered_once() {
    let mut tb = durable();
    let online = persistent_sub(&mut tb, "online", &[("t", Q2)]);
    let offline = persistent_sub(&mut tb, "offline", &[("t", Q2)]);
    tb.send(offline, &disconnect());
    let publisher = tb.connect("pub", false, V311);
    tb.set_auto_commit(false);

    tb.send(publisher, &publish("t", b"m", Q2, Some(1), false));
    tb.fail_store("disk full");
    // The PUBREC is withheld and the held PUBLISH dropped: both connections closed
    // ([MQTT-4.8.0-2]).
    assert!(tb.is_closed(publisher) && tb.is_closed(online));
    assert!(tb.recv(publisher).is_empty() && tb.recv(online).is_empty());
    // Memory still has the message, both deliveries and the identifier: the rewrite too.
    let rewrite = pending(&tb);
    assert_is_rewrite(&rewrite);
    assert!(rewrite.contains(&StoreOp::PutReleaseId {
        client_id: cid("pub"),
        packet_id: pid(1),
    }));
    assert_eq!(put_messages(&rewrite), 1);
    assert_eq!(put_deliveries(&rewrite, DeliveryState::Queued), 1);
    assert_eq!(
        put_deliveries(&rewrite, DeliveryState::AwaitingAck(pid(1))),
        1
    );

    // The publisher resends ([MQTT-4.4.0-1]). Memory awaits PUBREL for 1: acknowledged, not
    // routed again ([MQTT-4.3.3-2]); but only once the rewrite holds it.
    let publisher = tb.connect("pub", false, V311);
    assert!(publisher.session_present);
    let before = tb.uncommitted().len();
    tb.send(publisher, &dup(publish("t", b"m", Q2, Some(1), false)));
    assert_eq!(tb.uncommitted().len(), before, "routed again");
    assert!(
        tb.recv(publisher).is_empty(),
        "PUBREC before the rewrite is committed"
    );
    // The subscriber reconnects: the PUBLISH resent from memory waits for the rewrite too.
    let (online, connack) = tb.try_connect(connect_packet("online", false, V311));
    assert!(connack.is_none(), "CONNACK and PUBLISH before the rewrite");
    tb.commit_store();
    assert_eq!(tb.recv(publisher), [pubrec(1)]);
    let packets = tb.recv(online);
    let [Packet::ConnAck(ack), Packet::Publish(p)] = packets.as_slice() else {
        panic!("{packets:?}");
    };
    assert!(ack.session_present);
    assert_eq!((text(p), p.qos), ("m", Q2));
    tb.set_auto_commit(true);
    tb.send(online, &pubrec(packet_id(p)));
    assert_eq!(tb.recv(online), [pubrel(packet_id(p))]);
    tb.send(online, &pubcomp(packet_id(p)));

    // A crash before the publisher's PUBREL.
    let report = tb.crash_and_restore();
    assert_eq!(
        report,
        RestoreReport {
            sessions: 3,
            subscriptions: 2,
            deliveries: 1,
            retained: 0,
            discarded: 0,
        }
    );
    let publisher = tb.connect("pub", false, V311);
    tb.send(publisher, &dup(publish("t", b"m", Q2, Some(1), false)));
    assert_eq!(tb.recv(publisher), [pubrec(1)]);
    tb.send(publisher, &pubrel(1));
    assert_eq!(tb.recv(publisher), [pubcomp(1)]);
    // Exactly once to each ([MQTT-4.3.3-2] [MQTT-4.5.0-1]).
    let online = tb.connect("online", false, V311);
    assert!(tb.recv(online).is_empty(), "delivered twice");
    let offline = tb.connect("offline", false, V311);
    let got = tb.recv_publishes(offline);
    assert_eq!(texts(&got), ["m"]);
    tb.send(offline, &pubrec(packet_id(&got[0])));
    assert_eq!(tb.recv(offline), [pubrel(packet_id(&got[0]))]);
    tb.send(offline, &pubcomp(packet_id(&got[0])));
    assert_no_messages_stored(&tb);
}

#[test]
fn qos2_message_whose_commits_all_failed_is_published_again_after_a_crash_and_delivered_once() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q2)]);
    tb.send(sub, &disconnect());
    let publisher = tb.connect("pub", false, V311);
    tb.set_auto_commit(false);
    tb.send(publisher, &publish("t", b"m", Q2, Some(1), false));
    tb.fail_store("disk full");
    let publisher = tb.connect("pub", false, V311);
    tb.send(publisher, &dup(publish("t", b"m", Q2, Some(1), false)));
    // The rewrite is lost in a crash: the PUBREC was never sent, the message is the
    // publisher's, which sends it again.
    tb.crash_and_restore();
    assert!(tb.recv(publisher).is_empty());
    tb.set_auto_commit(true);
    let publisher = tb.connect("pub", false, V311);
    tb.send(publisher, &dup(publish("t", b"m", Q2, Some(1), false)));
    assert_eq!(tb.recv(publisher), [pubrec(1)]);
    tb.send(publisher, &pubrel(1));
    assert_eq!(tb.recv(publisher), [pubcomp(1)]);
    let sub = tb.connect("sub", false, V311);
    assert_eq!(texts(&tb.recv_publishes(sub)), ["m"]);
}

#[test]
fn failed_deletes_leave_nothing_behind_after_the_rewrite() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q2)]);
    let gone = persistent_sub(&mut tb, "gone", &[("t", Q1)]);
    tb.send(gone, &disconnect());
    let publisher = tb.connect("pub", false, V311);
    tb.send(publisher, &publish("t", b"one", Q1, Some(1), false));
    tb.send(publisher, &publish("t", b"two", Q2, Some(2), false));
    tb.send(publisher, &publish("r", b"kept", Q1, Some(3), true));
    assert_eq!(tb.recv(publisher), [puback(1), pubrec(2), puback(3)]);
    let got = tb.recv_publishes(sub);
    assert_eq!(texts(&got), ["one", "two"]);
    let (one, two) = (packet_id(&got[0]), packet_id(&got[1]));
    tb.send(sub, &pubrec(two));
    assert_eq!(tb.recv(sub), [pubrel(two)]);
    let s = snapshot(&tb);
    assert_eq!(
        (
            s.messages.len(),
            s.deliveries.len(),
            s.release_ids.len(),
            s.retained.len()
        ),
        (2, 4, 1, 1)
    );

    tb.set_auto_commit(false);
    tb.take_events();
    // Every kind of delete: deliveries done, a release identifier released, a retained
    // message cleared, a session discarded with its messages ([MQTT-3.1.2-6]).
    tb.send(sub, &puback(one));
    tb.send(sub, &pubcomp(two));
    tb.send(publisher, &pubrel(2));
    tb.send(publisher, &publish("r", b"", Q0, None, true));
    // The CONNACK waits for the deletion of the stored session.
    let (clean, connack) = tb.try_connect(connect_packet("gone", true, V311));
    assert!(connack.is_none());
    let ops = pending(&tb);
    assert!(
        ops.iter().all(|op| matches!(
            op,
            StoreOp::DeleteDelivery { .. }
                | StoreOp::DeleteMessage { .. }
                | StoreOp::DeleteReleaseId { .. }
                | StoreOp::DeleteRetained { .. }
                | StoreOp::DeleteSession { .. }
        )),
        "{ops:?}"
    );
    assert_eq!(ops.len(), 7, "{ops:?}");
    tb.fail_store("disk full");
    // Only the PUBCOMP waited on them.
    let failures = store_failures(&mut tb);
    assert!(matches!(failures[..], [(_, 1)]), "{failures:?}");
    assert!(tb.is_closed(publisher));
    assert!(!tb.is_closed(sub));
    // Its CONNACK depended on the failed deletion: closed, to connect again.
    assert!(tb.is_closed(clean));
    // What is left in memory: two sessions, and nothing else.
    let rewrite = pending(&tb);
    assert_is_rewrite(&rewrite);
    assert_eq!(
        rewrite[1..],
        [
            StoreOp::PutSession(StoredSession {
                client_id: cid("sub"),
                subscriptions: vec![(filter("t"), SubscriptionOptions::qos(Q2))],
            }),
            StoreOp::PutSession(StoredSession {
                client_id: cid("pub"),
                subscriptions: Vec::new(),
            }),
        ]
    );
    tb.commit_store();
    assert_eq!(stored_sessions(&tb), ["pub", "sub"]);
    assert_no_messages_stored(&tb);
    assert!(snapshot(&tb).retained.is_empty());

    // The publisher resends PUBREL ([MQTT-4.4.0-1]) and gets its PUBCOMP ([MQTT-4.3.3-2]).
    tb.set_auto_commit(true);
    let publisher = tb.connect("pub", false, V311);
    tb.send(publisher, &pubrel(2));
    assert_eq!(tb.recv(publisher), [pubcomp(2)]);
    assert_disk_is_memory(&mut tb);

    let report = tb.crash_and_restore();
    assert_eq!(
        report,
        RestoreReport {
            sessions: 3, // "pub", "sub" and the probe
            subscriptions: 1,
            deliveries: 0,
            retained: 0,
            discarded: 0,
        }
    );
    // Nothing delivered again, not even the QoS 2 message whose PUBCOMP's delete failed.
    let sub = tb.connect("sub", false, V311);
    assert!(sub.session_present);
    assert!(tb.recv(sub).is_empty());
    // The discarded session stays discarded; the cleared message stays cleared.
    let gone = tb.connect("gone", false, V311);
    assert!(!gone.session_present);
    tb.send(gone, &subscribe(1, &[("r", Q1)]));
    assert_eq!(tb.recv(gone), [suback(1, &[SubAckReason::GrantedQoS1])]);
}

#[test]
fn ack_depending_on_operations_after_the_failed_ones_waits_for_the_rewrite() {
    let mut tb = durable();
    let publisher = tb.connect("pub", true, V311);
    tb.set_auto_commit(false);
    tb.take_events();
    // First batch (it will fail): a new persistent session and its subscription.
    let sub = tb.connect("sub", false, V311);
    tb.send(sub, &subscribe(1, &[("t", Q1)]));
    let failed = *tb.uncommitted_groups().last().unwrap();
    // Second batch (it will be committed): a message for that session.
    tb.send(publisher, &publish("t", b"m", Q1, Some(1), false));
    let later = *tb.uncommitted_groups().last().unwrap();
    assert!(later > failed);
    assert_eq!(texts(&tb.recv_publishes(sub)), ["m"]);
    assert_eq!(tb.broker().pending_acks(), 2);

    tb.fail_store_through(failed, "disk full");
    // The SUBACK depended on the failed batch: withheld, connection closed. The PUBACK
    // depends on the later one: it still waits.
    assert_eq!(store_failures(&mut tb)[..], [(failed, 1)]);
    assert!(tb.is_closed(sub));
    assert!(!tb.is_closed(publisher));
    assert_eq!(tb.broker().pending_acks(), 1);
    let groups = tb.uncommitted_groups().to_vec();
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert_eq!(groups[0], later);
    let rewrite: Vec<StoreOp> = tb
        .uncommitted()
        .iter()
        .filter(|(seq, _)| *seq > later)
        .map(|(_, op)| op.clone())
        .collect();
    assert_is_rewrite(&rewrite);

    // The later batch commits: the message and its delivery are on disk, but not the session
    // they belong to.
    tb.commit_store_through(later);
    assert!(
        tb.recv(publisher).is_empty(),
        "PUBACK before the rewrite is committed"
    );
    // A crash now would lose the message, which is why the PUBACK must wait
    // ([MQTT-4.3.2-2]: PUBACK means the server owns the message).
    let (_, lost) = TestBroker::from_store(config(Persistence::Durable), tb.store().clone());
    assert_eq!((lost.sessions, lost.deliveries, lost.discarded), (0, 0, 2));

    tb.commit_store();
    assert_eq!(tb.recv(publisher), [puback(1)]);
    let report = tb.crash_and_restore();
    assert_eq!(
        report,
        RestoreReport {
            sessions: 1,
            subscriptions: 1,
            deliveries: 1,
            retained: 0,
            discarded: 0,
        }
    );
    tb.set_auto_commit(true);
    let sub = tb.connect("sub", false, V311);
    assert!(sub.session_present);
    let got = tb.recv_publishes(sub);
    assert_eq!(texts(&got), ["m"]);
    assert!(got[0].dup);
}

#[test]
fn held_delivery_after_the_failed_operations_waits_for_the_rewrite() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q2)]);
    let publisher = tb.connect("pub", true, V311);
    tb.set_auto_commit(false);
    tb.take_events();
    // First batch (it will fail): a retained message nothing waits for.
    tb.send(publisher, &publish("r", b"kept", Q0, None, true));
    let failed = *tb.uncommitted_groups().last().unwrap();
    // Second batch: a QoS 2 message to the persistent subscriber, held until committed.
    tb.send(publisher, &publish("t", b"m", Q2, Some(1), false));
    let later = *tb.uncommitted_groups().last().unwrap();

    tb.fail_store_through(failed, "disk full");
    assert_eq!(store_failures(&mut tb)[..], [(failed, 0)]);
    assert!(!tb.is_closed(sub) && !tb.is_closed(publisher));
    tb.commit_store_through(later);
    assert!(
        tb.recv(sub).is_empty(),
        "held PUBLISH written before the rewrite is committed"
    );
    assert!(
        tb.recv(publisher).is_empty(),
        "PUBREC before the rewrite is committed"
    );
    tb.commit_store();
    assert_eq!(texts(&tb.recv_publishes(sub)), ["m"]);
    assert_eq!(tb.recv(publisher), [pubrec(1)]);
    // The retained message the failed batch lost is back on disk.
    assert_eq!(snapshot(&tb).retained.len(), 1);
}

#[test]
fn ack_made_after_a_failure_waits_for_the_rewrite() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q1)]);
    tb.send(sub, &disconnect());
    let publisher = tb.connect("pub", true, V311);
    let other = tb.connect("other", true, V311);
    tb.set_auto_commit(false);
    tb.send(publisher, &publish("t", b"m", Q1, Some(1), false));
    tb.fail_store("disk full");
    assert!(!tb.uncommitted().is_empty(), "no rewrite");

    // Acknowledgements that need no new operation, made while the rewrite is pending: in
    // order behind it, like any other ([MQTT-4.6.0-2] [MQTT-4.6.0-3]).
    tb.send(other, &publish("nobody", b"x", Q1, Some(1), false));
    tb.send(other, &subscribe(2, &[("y", Q0)]));
    assert!(tb.recv(other).is_empty(), "ack before the rewrite");
    tb.commit_store();
    assert_eq!(
        tb.recv(other),
        [puback(1), suback(2, &[SubAckReason::GrantedQoS0])]
    );
    assert_eq!(tb.broker().pending_acks(), 0);
}

#[test]
fn failed_rewrite_is_followed_by_another_rewrite() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q1)]);
    tb.send(sub, &disconnect());
    let first = tb.connect("first", true, V311);
    tb.set_auto_commit(false);
    tb.take_events();

    tb.send(first, &publish("t", b"a", Q1, Some(1), false));
    tb.fail_store("disk full");
    assert!(tb.is_closed(first));
    let rewrite = pending(&tb);
    assert_is_rewrite(&rewrite);
    let second = tb.connect("second", true, V311);
    tb.send(second, &publish("t", b"b", Q1, Some(1), false));
    // The rewrite fails, and the operations after it: the PUBACK is withheld, and the store
    // rewritten again, with both messages.
    tb.fail_store("disk full");
    assert_eq!(
        store_failures(&mut tb)
            .iter()
            .map(|f| f.1)
            .collect::<Vec<_>>(),
        [1, 1]
    );
    assert!(tb.is_closed(second));
    let again = pending(&tb);
    assert_is_rewrite(&again);
    assert_eq!(put_messages(&again), 2, "{again:?}");
    // Only the rewrite fails: still nothing waits, and still a rewrite follows.
    tb.fail_store("disk full");
    assert_eq!(store_failures(&mut tb)[..].len(), 1);
    assert_eq!(pending(&tb), again);
    tb.commit_store();
    assert_disk_is_memory(&mut tb);

    tb.crash_and_restore();
    let sub = tb.connect("sub", false, V311);
    assert_eq!(texts(&tb.recv_publishes(sub)), ["a", "b"]);
}

#[test]
fn will_published_when_a_failure_closes_its_connection_is_in_the_rewrite() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("w", Q1)]);
    let mut connect = connect_packet("dying", true, V311);
    connect.will = Some(Will {
        topic: topic("w"),
        payload: Bytes::from_static(b"bye"),
        qos: Q1,
        retain: true,
        properties: Properties::new(),
    });
    let dying = tb.connect_with(connect);
    tb.set_auto_commit(false);
    tb.send(dying, &publish("t", b"x", Q1, Some(1), true));

    tb.fail_store("disk full");
    // Closed without DISCONNECT: its Will is published ([MQTT-3.1.2-8]), retained
    // ([MQTT-3.1.2-17]); what that writes comes before the rewrite, in the same group, and the
    // rewrite has it too.
    assert!(tb.is_closed(dying));
    let ops = pending(&tb);
    let clear = ops.iter().position(|op| *op == StoreOp::Clear).unwrap();
    assert!(clear > 0, "{ops:?}");
    assert_is_rewrite(&ops[clear..]);
    assert_eq!(tb.uncommitted_groups().len(), 1);
    tb.commit_store();
    assert_eq!(texts(&tb.recv_publishes(sub)), ["bye"]);
    assert_disk_is_memory(&mut tb);
    let report = tb.crash_and_restore();
    assert_eq!(
        (report.deliveries, report.retained, report.discarded),
        (1, 2, 0)
    );
}

#[test]
fn failed_deletes_of_a_restore_are_covered_by_the_rewrite() {
    let store = store_with_four_misfits();
    let (mut tb, report) = TestBroker::from_store(config(Persistence::Durable), store);
    assert_eq!(report.discarded, 4);
    tb.set_auto_commit(false);
    // The deletes of what did not fit together fail.
    tb.fail_store("disk full");
    assert_is_rewrite(&pending(&tb));
    tb.commit_store();
    let s = snapshot(&tb);
    assert_eq!(stored_sessions(&tb), ["s"]);
    assert_eq!(s.deliveries, [stored_delivery("s", 1, 10)]);
    assert_eq!(s.messages, [(10, stored_message("t", b"good"))]);
    assert!(s.release_ids.is_empty());
    assert_eq!(assert_restore_is_lossless(&tb).deliveries, 1);
}

#[test]
fn ack_held_by_publisher_flow_control_waits_for_the_rewrite() {
    let mut tb = TestBroker::new(BrokerConfig {
        max_queued_messages: 4,
        max_inflight: 1,
        ..config(Persistence::Durable)
    });
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q1)]);
    let publisher = tb.connect("pub", true, V311);
    for i in 1..=4 {
        let payload = format!("m{i}");
        tb.send(
            publisher,
            &publish("t", payload.as_bytes(), Q1, Some(i), false),
        );
    }
    // The subscriber does not read: its queue is over half full, and the PUBACK of the last
    // message is held until it drains (publisher flow control).
    assert_eq!(tb.recv(publisher), [puback(1), puback(2), puback(3)]);
    tb.set_auto_commit(false);
    tb.send(publisher, &publish("t", b"m5", Q1, Some(5), false));
    tb.take_events();

    tb.fail_store("disk full");
    // Not waiting for the store, this PUBACK is not withheld: it waits for the subscriber, and
    // then for the rewrite, which has the message.
    assert_eq!(store_failures(&mut tb).len(), 1);
    assert!(!tb.is_closed(publisher));
    for _ in 0..5 {
        for p in tb.recv_publishes(sub) {
            tb.send(sub, &puback(packet_id(&p)));
        }
    }
    assert_eq!(tb.broker().queued_messages("sub"), Some(0));
    assert!(
        tb.recv(publisher).is_empty(),
        "PUBACK before the rewrite is committed"
    );
    tb.commit_store();
    assert_eq!(tb.recv(publisher), [puback(4), puback(5)]);
}

#[test]
fn qos2_whose_publishers_session_record_failed_is_delivered_once_after_a_crash() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q2)]);
    tb.send(sub, &disconnect());
    tb.set_auto_commit(false);
    // Batch 1: the publisher's new session. Batch 2: its QoS 2 message (the message, the
    // delivery to "sub", the release identifier).
    let publisher = tb.connect("pub", false, V311);
    let session = *tb.uncommitted_groups().last().unwrap();
    tb.send(publisher, &publish("t", b"m", Q2, Some(1), false));
    // The store fails batch 1. By the `StoreDone` contract it then commits nothing until the
    // broker's rewrite arrives (the redb worker holds batch 2 back): committed alone, batch 2
    // would restore a release identifier without its session and a delivery the publisher
    // resends. The broker crashes before the rewrite is committed.
    tb.fail_store_through(session, "disk full");
    assert!(tb.recv(publisher).is_empty(), "no PUBREC");
    let report = tb.crash_and_restore();
    assert_eq!(
        report,
        RestoreReport {
            sessions: 1,
            subscriptions: 1,
            deliveries: 0,
            retained: 0,
            discarded: 0,
        }
    );
    tb.set_auto_commit(true);
    // The publisher never had its PUBREC: it resends ([MQTT-4.4.0-1]).
    let publisher = tb.connect("pub", false, V311);
    tb.send(publisher, &dup(publish("t", b"m", Q2, Some(1), false)));
    assert_eq!(tb.recv(publisher), [pubrec(1)]);
    tb.send(publisher, &pubrel(1));
    assert_eq!(tb.recv(publisher), [pubcomp(1)]);
    // 3.1.1 [MQTT-4.3.3-2] [MQTT-4.5.0-1]: exactly once.
    let sub = tb.connect("sub", false, V311);
    let got = tb.recv_publishes(sub);
    assert_eq!(texts(&got), ["m"], "{got:?}");
}

#[test]
fn discarded_session_does_not_come_back_after_a_crash() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q2)]);
    tb.send(sub, &disconnect());
    let publisher = tb.connect("pub", false, V311);
    tb.send(publisher, &publish("t", b"old", Q2, Some(7), false));
    assert_eq!(tb.recv(publisher), [pubrec(7)]);
    tb.close_socket(publisher);
    tb.set_auto_commit(false);
    // 3.1.1 [MQTT-3.1.2-6] [MQTT-3.2.2-1]: the client starts over, and is told the previous
    // session (with identifier 7 awaiting PUBREL) is gone, but only once its deletion is
    // committed: the CONNACK waits for it.
    let (clean, connack) = tb.try_connect(connect_packet("pub", true, V311));
    assert!(
        connack.is_none(),
        "CONNACK before the deletion was committed"
    );
    tb.commit_store();
    let connacks: Vec<_> = tb
        .recv(clean)
        .into_iter()
        .filter_map(|p| match p {
            Packet::ConnAck(c) => Some(c.session_present),
            _ => None,
        })
        .collect();
    assert_eq!(connacks, [false]);
    tb.send(clean, &disconnect());
    let publisher = tb.connect("pub", false, V311);
    assert!(!publisher.session_present);
    // The broker crashes before anything more is committed.
    tb.crash_and_restore();
    tb.set_auto_commit(true);
    let publisher = tb.connect("pub", false, V311);
    assert!(
        !publisher.session_present,
        "a session discarded by a clean CONNECT came back"
    );
    // Identifier 7 is free on the client's side: a new message.
    tb.send(publisher, &publish("t", b"new", Q2, Some(7), false));
    assert_eq!(tb.recv(publisher), [pubrec(7)]);
    tb.send(publisher, &pubrel(7));
    assert_eq!(tb.recv(publisher), [pubcomp(7)]);
    // Both delivered: identifier 7 is not taken for a resend of "old".
    let sub = tb.connect("sub", false, V311);
    assert_eq!(texts(&tb.recv_publishes(sub)), ["old", "new"]);
}

// ---------------------------------------------------------------------------------------------
// Random sequences: nothing acknowledged is lost, QoS 2 is never doubled
// ---------------------------------------------------------------------------------------------

const TOPICS: [&str; 2] = ["a", "b"];
/// Subscriber `i` subscribes (QoS 2) to `FILTERS[i]`.
const FILTERS: [&str; 2] = ["a", "+"];
const SUB_IDS: [&str; 2] = ["sub0", "sub1"];

#[derive(Debug, Clone)]
enum Action {
    SubConnect(usize),
    SubSubscribe(usize),
    /// The subscriber reads what arrived and answers it.
    SubProcess(usize),
    SubDisconnect(usize),
    PubConnect,
    PubProcess,
    PubDisconnect,
    Publish {
        topic: usize,
        qos2: bool,
    },
    Commit,
    Crash,
    /// The store commits the oldest groups of pending operations, up to the group chosen by
    /// the index (modulo their number), and keeps the rest pending. After a failure, what the
    /// broker emitted before its rewrite is committed only with the rewrite (the `StoreDone`
    /// contract, which the redb worker follows).
    CommitSome(usize),
    /// The store fails everything pending.
    Fail,
    /// The store fails the oldest groups of pending operations, up to the group chosen by the
    /// index, and keeps the rest pending (to be committed or failed later).
    FailSome(usize),
}

/// Actions of the clients and the store; with `failures`, the store also commits part of what
/// is pending and fails commits.
fn action(failures: bool) -> BoxedStrategy<Action> {
    // Weights add up to 22.
    let base = prop_oneof![
        2 => (0..2usize).prop_map(Action::SubConnect),
        1 => (0..2usize).prop_map(Action::SubSubscribe),
        3 => (0..2usize).prop_map(Action::SubProcess),
        1 => (0..2usize).prop_map(Action::SubDisconnect),
        2 => Just(Action::PubConnect),
        3 => Just(Action::PubProcess),
        1 => Just(Action::PubDisconnect),
        5 => (0..2usize, any::<bool>()).prop_map(|(topic, qos2)| Action::Publish { topic, qos2 }),
        3 => Just(Action::Commit),
        1 => Just(Action::Crash),
    ];
    if !failures {
        return base.boxed();
    }
    prop_oneof![
        22 => base,
        2 => any::<usize>().prop_map(Action::CommitSome),
        1 => Just(Action::Fail),
        1 => any::<usize>().prop_map(Action::FailSome),
    ]
    .boxed()
}

/// A persistent subscriber as a well-behaved MQTT 3.1.1 client: acknowledges everything, and
/// keeps its half of the session (QoS 2 identifiers received and not released) across
/// reconnections, as a client with clean session 0 does.
#[derive(Debug, Default)]
struct SubModel {
    conn: Option<ConnId>,
    /// SUBACK received: the subscription is the session's for good (never unsubscribed).
    subscribed: bool,
    /// SUBSCRIBE sent on the current connection, SUBACK not yet received.
    subscribing: bool,
    /// QoS 2 identifiers received whose PUBREL has not arrived (method B of 3.1.1 4.3.3).
    awaiting_release: BTreeSet<u16>,
    /// Times each payload reached the application.
    received: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutState {
    AwaitingAck,
    AwaitingComp,
}

#[derive(Debug, Clone)]
struct Outgoing {
    id: u16,
    topic: usize,
    qos: QoS,
    payload: String,
    state: OutState,
}

/// A message the broker acknowledged, and who must get it.
#[derive(Debug)]
struct Acked {
    payload: String,
    qos: QoS,
    subscribers: Vec<usize>,
}

#[derive(Debug, Default)]
struct PubModel {
    conn: Option<ConnId>,
    next_id: u16,
    next_payload: usize,
    /// In the order first sent.
    inflight: Vec<Outgoing>,
    /// Subscribers with a SUBACK at the time each payload was sent.
    owed_to: BTreeMap<String, Vec<usize>>,
    acked: Vec<Acked>,
    qos2_payloads: Vec<String>,
}

struct World {
    tb: TestBroker,
    subs: [SubModel; 2],
    publisher: PubModel,
}

fn matches_filter(sub: usize, topic_index: usize) -> bool {
    FILTERS[sub] == "+" || FILTERS[sub] == TOPICS[topic_index]
}

impl World {
    fn new() -> Self {
        let mut tb = TestBroker::new(BrokerConfig {
            max_inflight: 2,
            max_queued_messages: 1_000_000,
            max_queued_bytes: usize::MAX / 2,
            ..config(Persistence::Durable)
        });
        tb.set_auto_commit(false);
        Self {
            tb,
            subs: Default::default(),
            publisher: PubModel {
                next_id: 1,
                ..PubModel::default()
            },
        }
    }

    fn apply(&mut self, action: &Action) {
        match *action {
            Action::SubConnect(i) => self.sub_connect(i),
            Action::SubSubscribe(i) => {
                let sub = &mut self.subs[i];
                if let Some(conn) = sub.conn
                    && !sub.subscribed
                    && !sub.subscribing
                    && !self.tb.is_closed(conn)
                {
                    sub.subscribing = true;
                    self.tb.send(conn, &subscribe(1, &[(FILTERS[i], Q2)]));
                }
            }
            Action::SubProcess(i) => self.sub_process(i, true),
            Action::SubDisconnect(i) => {
                if let Some(conn) = self.subs[i].conn {
                    self.sub_process(i, false);
                    if !self.tb.is_closed(conn) {
                        self.tb.send(conn, &disconnect());
                    }
                    self.subs[i].conn = None;
                }
            }
            Action::PubConnect => self.pub_connect(),
            Action::PubProcess => self.pub_process(true),
            Action::PubDisconnect => {
                if let Some(conn) = self.publisher.conn {
                    self.pub_process(false);
                    if !self.tb.is_closed(conn) {
                        self.tb.send(conn, &disconnect());
                    }
                    self.publisher.conn = None;
                }
            }
            Action::Publish { topic, qos2 } => self.publish(topic, qos2),
            Action::Commit => self.tb.commit_store(),
            Action::CommitSome(k) => {
                let groups = self.tb.uncommitted_groups();
                if groups.is_empty() {
                    return;
                }
                let mut seq = groups[k % groups.len()];
                let clear = self
                    .tb
                    .uncommitted()
                    .iter()
                    .find(|(_, op)| *op == StoreOp::Clear)
                    .map(|&(clear, _)| clear);
                if let Some(clear) = clear
                    && seq < clear
                {
                    // Up to the end of the rewrite's group.
                    seq = groups.iter().copied().find(|&end| end >= clear).unwrap();
                }
                self.tb.commit_store_through(seq);
            }
            Action::Fail => self.tb.fail_store("disk full"),
            Action::FailSome(k) => {
                let groups = self.tb.uncommitted_groups();
                if !groups.is_empty() {
                    let seq = groups[k % groups.len()];
                    self.tb.fail_store_through(seq, "disk full");
                }
            }
            Action::Crash => {
                // What reached the clients' sockets before the crash is theirs to read (not to
                // answer); it must be read before the new broker hands out connection numbers
                // that the harness would confuse with the old ones.
                for i in 0..2 {
                    if self.subs[i].conn.is_some() {
                        self.sub_process(i, false);
                    }
                }
                if self.publisher.conn.is_some() {
                    self.pub_process(false);
                }
                self.tb.crash_and_restore();
                for sub in &mut self.subs {
                    sub.conn = None;
                }
                self.publisher.conn = None;
            }
        }
    }

    fn sub_connect(&mut self, i: usize) {
        if let Some(conn) = self.subs[i].conn {
            if !self.tb.is_closed(conn) {
                return;
            }
            // Closed by the broker (a failed commit): what arrived before is read, and the
            // client connects again, as a client does after a transient error.
            self.sub_process(i, false);
            self.subs[i].conn = None;
        }
        let conn = self.tb.open();
        self.tb.send(
            conn,
            &Packet::Connect(Box::new(connect_packet(SUB_IDS[i], false, V311))),
        );
        let sub = &mut self.subs[i];
        sub.conn = Some(conn);
        sub.subscribing = false;
        // The CONNACK may be held with a QoS 2 delivery behind it; it is read in sub_process.
        self.sub_process(i, true);
    }

    /// Reads what the broker sent; answers it if `reply` (else the connection is going away).
    fn sub_process(&mut self, i: usize, reply: bool) {
        let Some(conn) = self.subs[i].conn else {
            return;
        };
        loop {
            let packets = self.tb.recv(conn);
            if packets.is_empty() {
                return;
            }
            let reply = reply && !self.tb.is_closed(conn);
            let mut answers = Vec::new();
            let sub = &mut self.subs[i];
            for packet in packets {
                match packet {
                    Packet::ConnAck(ack) => {
                        if !ack.session_present {
                            // Durable: the session was on disk before anything that needed it
                            // was acknowledged or sent ([MQTT-3.2.2-2]).
                            assert!(!sub.subscribed, "{} lost its subscription", SUB_IDS[i]);
                            assert!(
                                sub.awaiting_release.is_empty(),
                                "{} lost a QoS 2 delivery in flight",
                                SUB_IDS[i]
                            );
                        }
                    }
                    Packet::SubAck(_) => {
                        sub.subscribed = true;
                        sub.subscribing = false;
                    }
                    Packet::Publish(p) => {
                        let payload = text(&p).to_owned();
                        match p.qos {
                            QoS::AtMostOnce => panic!("unexpected QoS 0: {p:?}"),
                            QoS::AtLeastOnce => {
                                *sub.received.entry(payload).or_insert(0) += 1;
                                answers.push(puback(packet_id(&p)));
                            }
                            QoS::ExactlyOnce => {
                                if sub.awaiting_release.insert(packet_id(&p)) {
                                    *sub.received.entry(payload).or_insert(0) += 1;
                                }
                                answers.push(pubrec(packet_id(&p)));
                            }
                        }
                    }
                    Packet::PubRel(rel) => {
                        sub.awaiting_release.remove(&rel.packet_id.get());
                        answers.push(pubcomp(rel.packet_id.get()));
                    }
                    other => panic!("subscriber got {other:?}"),
                }
            }
            if !reply {
                return;
            }
            for answer in answers {
                self.tb.send(conn, &answer);
            }
        }
    }

    fn pub_connect(&mut self) {
        if let Some(conn) = self.publisher.conn {
            if !self.tb.is_closed(conn) {
                return;
            }
            // Closed by the broker (a failed commit): as for a subscriber.
            self.pub_process(false);
            self.publisher.conn = None;
        }
        let conn = self.tb.open();
        self.tb.send(
            conn,
            &Packet::Connect(Box::new(connect_packet("pub", false, V311))),
        );
        self.publisher.conn = Some(conn);
        // 3.1.1 [MQTT-4.4.0-1]: resend what is unacknowledged, with the original identifiers.
        for out in self.publisher.inflight.clone() {
            let packet = match out.state {
                OutState::AwaitingAck => dup(publish(
                    TOPICS[out.topic],
                    out.payload.as_bytes(),
                    out.qos,
                    Some(out.id),
                    false,
                )),
                OutState::AwaitingComp => pubrel(out.id),
            };
            self.tb.send(conn, &packet);
        }
        self.pub_process(true);
    }

    fn publish(&mut self, topic_index: usize, qos2: bool) {
        let Some(conn) = self.publisher.conn else {
            return;
        };
        if self.tb.is_closed(conn) {
            return;
        }
        let p = &mut self.publisher;
        let id = loop {
            let id = p.next_id;
            p.next_id = p.next_id.checked_add(1).unwrap_or(1);
            if !p.inflight.iter().any(|o| o.id == id) {
                break id;
            }
        };
        let payload = format!("m{}", p.next_payload);
        p.next_payload += 1;
        let qos = if qos2 { Q2 } else { Q1 };
        let owed: Vec<usize> = (0..2)
            .filter(|&s| self.subs[s].subscribed && matches_filter(s, topic_index))
            .collect();
        p.owed_to.insert(payload.clone(), owed);
        if qos2 {
            p.qos2_payloads.push(payload.clone());
        }
        p.inflight.push(Outgoing {
            id,
            topic: topic_index,
            qos,
            payload: payload.clone(),
            state: OutState::AwaitingAck,
        });
        self.tb.send(
            conn,
            &publish(
                TOPICS[topic_index],
                payload.as_bytes(),
                qos,
                Some(id),
                false,
            ),
        );
    }

    fn pub_process(&mut self, reply: bool) {
        let Some(conn) = self.publisher.conn else {
            return;
        };
        loop {
            let packets = self.tb.recv(conn);
            if packets.is_empty() {
                return;
            }
            let reply = reply && !self.tb.is_closed(conn);
            let p = &mut self.publisher;
            let mut answers = Vec::new();
            for packet in packets {
                match packet {
                    Packet::ConnAck(ack) => {
                        if !ack.session_present {
                            assert!(
                                p.inflight.iter().all(|o| o.state == OutState::AwaitingAck),
                                "the publisher's session was lost after a PUBREC"
                            );
                        }
                    }
                    Packet::PubAck(ack) => {
                        let id = ack.packet_id.get();
                        if let Some(at) = p.inflight.iter().position(|o| o.id == id && o.qos == Q1)
                        {
                            let out = p.inflight.remove(at);
                            p.acked.push(Acked {
                                subscribers: p.owed_to[&out.payload].clone(),
                                payload: out.payload,
                                qos: Q1,
                            });
                        }
                    }
                    Packet::PubRec(rec) => {
                        let id = rec.packet_id.get();
                        if let Some(out) = p.inflight.iter_mut().find(|o| o.id == id && o.qos == Q2)
                        {
                            if out.state == OutState::AwaitingAck {
                                out.state = OutState::AwaitingComp;
                                p.acked.push(Acked {
                                    subscribers: p.owed_to[&out.payload].clone(),
                                    payload: out.payload.clone(),
                                    qos: Q2,
                                });
                            }
                            answers.push(pubrel(id));
                        }
                    }
                    Packet::PubComp(comp) => {
                        let id = comp.packet_id.get();
                        p.inflight
                            .retain(|o| !(o.id == id && o.state == OutState::AwaitingComp));
                    }
                    other => panic!("publisher got {other:?}"),
                }
            }
            if !reply {
                return;
            }
            for answer in answers {
                self.tb.send(conn, &answer);
            }
        }
    }

    /// Commits everything, reconnects everyone and lets every exchange finish.
    fn settle(&mut self) {
        self.tb.set_auto_commit(true);
        for round in 0..2 {
            for i in 0..2 {
                if round == 1 {
                    self.apply(&Action::SubDisconnect(i));
                }
                self.sub_connect(i);
            }
            if round == 1 {
                self.apply(&Action::PubDisconnect);
            }
            self.pub_connect();
            for _ in 0..50 {
                for i in 0..2 {
                    self.sub_process(i, true);
                }
                self.pub_process(true);
            }
        }
    }

    fn check(&mut self) {
        for m in &self.publisher.acked {
            for &s in &m.subscribers {
                let times = self.subs[s].received.get(&m.payload).copied().unwrap_or(0);
                match m.qos {
                    // 3.1.1 [MQTT-4.3.2-2] [MQTT-4.5.0-1]: at least once.
                    QoS::AtLeastOnce => assert!(
                        times >= 1,
                        "acknowledged QoS 1 {} never reached {}",
                        m.payload,
                        SUB_IDS[s]
                    ),
                    // 3.1.1 [MQTT-4.3.3-2] [MQTT-4.5.0-1]: exactly once.
                    _ => assert_eq!(
                        times, 1,
                        "acknowledged QoS 2 {} reached {} {times} times",
                        m.payload, SUB_IDS[s]
                    ),
                }
            }
        }
        // Never more than once at QoS 2, acknowledged or not.
        for payload in &self.publisher.qos2_payloads {
            for (s, sub) in self.subs.iter().enumerate() {
                let times = sub.received.get(payload).copied().unwrap_or(0);
                assert!(
                    times <= 1,
                    "QoS 2 {payload} reached {} {times} times",
                    SUB_IDS[s]
                );
            }
        }
        // Everything finished: nothing left owed, nothing left in flight or queued, nothing
        // left on disk but the sessions, and the disk exactly what the broker holds.
        assert!(
            self.publisher.inflight.is_empty(),
            "publisher still waiting: {:?}",
            self.publisher.inflight
        );
        for id in SUB_IDS {
            let broker = self.tb.broker();
            assert_eq!(broker.inflight_messages(id).unwrap_or(0), 0, "{id}");
            assert_eq!(broker.queued_messages(id).unwrap_or(0), 0, "{id}");
        }
        assert_eq!(self.tb.broker().pending_acks(), 0);
        assert_no_messages_stored(&self.tb);
        assert_disk_is_memory(&mut self.tb);
    }
}

/// `cases` cases, unless `PROPTEST_CASES` says otherwise (`with_cases` alone would ignore it).
fn cases(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig::with_cases(cases)
}

fn run(actions: &[Action]) {
    let mut world = World::new();
    for action in actions {
        world.apply(action);
    }
    world.settle();
    world.check();
}

/// Both subscribers subscribed and the publisher connected, so that most messages are owed to
/// someone; then `actions`.
fn warmed_up(actions: Vec<Action>) -> Vec<Action> {
    let mut all = vec![
        Action::SubConnect(0),
        Action::SubSubscribe(0),
        Action::SubConnect(1),
        Action::SubSubscribe(1),
        Action::Commit,
        Action::SubProcess(0),
        Action::SubProcess(1),
        Action::PubConnect,
    ];
    all.extend(actions);
    all
}

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    fn acknowledged_messages_survive_any_crash(
        actions in proptest::collection::vec(action(false), 1..80)
    ) {
        run(&actions);
    }

    /// The same with a store that commits in parts and fails: every failure is followed by a
    /// rewrite of memory, and whatever was acknowledged waits for it.
    #[test]
    fn acknowledged_messages_survive_any_crash_or_failed_commit(
        actions in proptest::collection::vec(action(true), 1..120)
    ) {
        run(&warmed_up(actions));
    }
}

// ---- session expiry ------------------------------------------------------------------------

fn snapshot_sessions(tb: &TestBroker) -> Vec<String> {
    tb.store()
        .snapshot()
        .sessions
        .iter()
        .map(|s| s.client_id.as_str().to_owned())
        .collect()
}

#[test]
fn an_offline_session_past_session_expiry_is_removed_from_memory_and_disk() {
    let mut tb = TestBroker::new(BrokerConfig {
        session_expiry: Some(Duration::from_secs(60)),
        ..config(Persistence::Durable)
    });
    let away = persistent_sub(&mut tb, "away", &[("t", Q1)]);
    tb.send(away, &disconnect());
    let back = persistent_sub(&mut tb, "back", &[("t", Q1)]);
    tb.send(back, &disconnect());
    let publisher = tb.connect("pub", true, V311);
    tb.send(publisher, &publish("t", b"m", Q1, Some(1), false));
    assert_eq!(tb.recv(publisher), [puback(1)]);
    assert_eq!(tb.store().snapshot().messages.len(), 1);
    tb.advance(Duration::from_secs(30));
    // "back" returns in time: its clock stops while it is connected.
    let back = tb.connect("back", false, V311);
    assert!(back.session_present);
    tb.advance(Duration::from_secs(31));
    assert!(
        tb.events().iter().any(
            |e| matches!(e, Event::SessionExpired { client_id } if client_id.as_str() == "away")
        )
    );
    assert_eq!(tb.broker().queued_messages("away"), None);
    assert_eq!(snapshot_sessions(&tb), ["back"]);
    // The message "back" received is acknowledged: nothing is left on disk for "away" either.
    for p in tb.recv_publishes(back) {
        tb.send(back, &puback(p.packet_id.unwrap().get()));
    }
    assert!(tb.store().snapshot().messages.is_empty());
    // "back" goes offline for longer than the expiry: gone too.
    tb.send(back, &disconnect());
    tb.advance(Duration::from_secs(61));
    assert!(snapshot_sessions(&tb).is_empty());
    let again = tb.connect("back", false, V311);
    assert!(!again.session_present);
}

#[test]
fn after_a_restart_session_expiry_counts_from_the_restore() {
    let mut tb = TestBroker::new(BrokerConfig {
        session_expiry: Some(Duration::from_secs(60)),
        ..config(Persistence::Durable)
    });
    let away = persistent_sub(&mut tb, "away", &[("t", Q1)]);
    tb.send(away, &disconnect());
    tb.advance(Duration::from_secs(50));
    tb.crash_and_restore();
    tb.advance(Duration::from_secs(50));
    assert_eq!(snapshot_sessions(&tb), ["away"]);
    tb.advance(Duration::from_secs(11));
    assert!(snapshot_sessions(&tb).is_empty());
}

/// A client that reuses packet identifiers still awaiting their acknowledgement (here: one
/// identifier, 70,000 times, while nothing is committed) makes a durable broker hold at most
/// 65,535 acknowledgements for it, then is closed as breaking 3.1.1 [MQTT-2.3.1-2]; another
/// client's session and stored messages are untouched.
#[test]
fn reused_unacknowledged_ids_cannot_grow_the_held_acks_without_bound() {
    let mut tb = durable();
    let sub = persistent_sub(&mut tb, "sub", &[("t", Q1)]);
    let flood = tb.connect("flood", true, V311);
    tb.set_auto_commit(false);
    let mut bytes = bytes::BytesMut::new();
    publish("t", b"x", Q1, Some(1), false)
        .encode(V311, &mut bytes)
        .unwrap();
    let one = bytes.freeze();
    let stream: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * 70_000)
        .collect();
    tb.send_raw(flood, &stream);
    assert!(tb.is_closed(flood));
    assert!(
        tb.broker().pending_acks() <= usize::from(u16::MAX),
        "{} acknowledgements held",
        tb.broker().pending_acks()
    );
    assert!(tb.events().iter().any(|e| matches!(
        e,
        Event::Disconnected {
            cause: DisconnectCause::Violation(ProtocolViolation::TooManyUnacknowledged),
            ..
        }
    )));
    // The subscriber keeps its session and what its queue limits let it keep (stored), and
    // its in-flight window goes out once that is committed.
    tb.commit_store();
    assert!(!tb.is_closed(sub));
    assert!(snapshot(&tb).deliveries.len() > 20);
    assert_eq!(tb.recv_publishes(sub).len(), 20);
}
