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
    BrokerConfig, ConnId, DisconnectCause, Event, OverflowPolicy, Persistence, RestoreReport,
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
    let clean = tb.connect("p", true, V311);
    // 3.1.1 [MQTT-3.1.2-6] [MQTT-3.2.2-1]: the previous session is discarded.
    assert!(!clean.session_present);
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
    let (sub, connack) = tb.try_connect(connect_packet("sub", false, V311));
    let mut packets: Vec<Packet> = connack.map(Packet::ConnAck).into_iter().collect();
    packets.extend(tb.recv(sub));
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
    let (sub, connack) = tb.try_connect(connect_packet("sub", false, V311));
    let mut packets: Vec<Packet> = connack.map(Packet::ConnAck).into_iter().collect();
    packets.extend(tb.recv(sub));
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

#[test]
fn restore_discards_records_that_do_not_fit_together() {
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
        // Of a message that is not there.
        StoreOp::PutDelivery(stored_delivery("s", 2, 99)),
        // For a session that is not there.
        StoreOp::PutDelivery(stored_delivery("ghost", 1, 10)),
        StoreOp::PutReleaseId {
            client_id: cid("ghost"),
            packet_id: pid(4),
        },
    ] {
        store.apply(&op);
    }

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
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
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
    ]
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
        if self.subs[i].conn.is_some() {
            return;
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
        if self.publisher.conn.is_some() {
            return;
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

    fn check(&self) {
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
        // Everything finished: nothing left owed, nothing left on disk.
        assert!(
            self.publisher.inflight.is_empty(),
            "publisher still waiting: {:?}",
            self.publisher.inflight
        );
        assert_no_messages_stored(&self.tb);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn acknowledged_messages_survive_any_crash(actions in proptest::collection::vec(action(), 1..80)) {
        let mut world = World::new();
        for action in &actions {
            world.apply(action);
        }
        world.settle();
        world.check();
    }
}
