//! Publisher flow control (`BrokerConfig::publisher_flow_control`): a QoS 1/2 publisher's
//! acknowledgement waits while a connected subscriber the message went to is congested (its queue
//! over half of `max_queued_messages`), until that queue drains under a quarter, the subscriber
//! goes offline, or `max_ack_hold` passes. Publishers slow down to their slowest connected
//! subscriber instead of overflowing its queue and losing messages they saw acknowledged.

use std::time::Duration;

use surgemq_core::broker::{BrokerConfig, Event};
use surgemq_core::codec::{Packet, ProtocolVersion, QoS};
use surgemq_tests::harness::{
    ClientConn, TestBroker, disconnect, pid, puback, publish, pubrel, subscribe,
};

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

/// Queue limit 8: congested above 4 queued, drained at 2 or fewer. Window of 1 in flight.
fn config() -> BrokerConfig {
    BrokerConfig {
        max_queued_messages: 8,
        max_inflight: 1,
        sys_interval: None,
        ..BrokerConfig::default()
    }
}

/// A QoS 1 subscriber to `t` that does not acknowledge anything yet, and a publisher.
fn setup(config: BrokerConfig) -> (TestBroker, ClientConn, ClientConn) {
    let mut tb = TestBroker::new(config);
    let sub = tb.connect("slow", true, V311);
    tb.send(sub, &subscribe(1, &[("t", QoS::AtLeastOnce)]));
    tb.recv(sub);
    let publisher = tb.connect("pub", true, V311);
    (tb, sub, publisher)
}

fn acks(tb: &mut TestBroker, conn: ClientConn) -> Vec<u16> {
    tb.recv(conn)
        .into_iter()
        .filter_map(|p| match p {
            Packet::PubAck(a) | Packet::PubRec(a) => Some(a.packet_id.get()),
            _ => None,
        })
        .collect()
}

/// Publishes QoS 1 messages 1..=n on `t`.
fn publish_n(tb: &mut TestBroker, publisher: ClientConn, from: u16, to: u16) {
    for id in from..=to {
        tb.send(
            publisher,
            &publish("t", &id.to_be_bytes(), QoS::AtLeastOnce, Some(id), false),
        );
    }
}

#[test]
fn acks_wait_while_a_connected_subscriber_is_congested_and_resume_when_it_drains() {
    let (mut tb, sub, publisher) = setup(config());
    // 1 in flight, then 4 queued: not congested yet (over half of 8 is 5).
    publish_n(&mut tb, publisher, 1, 5);
    assert_eq!(acks(&mut tb, publisher), [1, 2, 3, 4, 5]);
    // The sixth makes 5 queued: its acknowledgement waits, and so do the next ones that go to
    // the same subscriber.
    publish_n(&mut tb, publisher, 6, 7);
    assert_eq!(acks(&mut tb, publisher), Vec::<u16>::new());
    assert_eq!(tb.broker().queued_messages("slow"), Some(6));
    // The subscriber acknowledges one at a time; the queue drains to 2 after four: the held
    // acknowledgements go out, in order.
    for round in 0..4 {
        let publishes = tb.recv_publishes(sub);
        assert_eq!(publishes.len(), 1, "round {round}");
        let id = publishes[0].packet_id.unwrap().get();
        tb.send(sub, &puback(id));
        if round < 3 {
            assert_eq!(acks(&mut tb, publisher), Vec::<u16>::new(), "round {round}");
        }
    }
    assert_eq!(tb.broker().queued_messages("slow"), Some(2));
    assert_eq!(acks(&mut tb, publisher), [6, 7]);
    // Nothing was lost: the subscriber gets every message, in order.
    let mut seen = Vec::new();
    for _ in 0..10 {
        for p in tb.recv_publishes(sub) {
            seen.push(u16::from_be_bytes([p.payload[0], p.payload[1]]));
            tb.send(sub, &puback(p.packet_id.unwrap().get()));
        }
    }
    assert_eq!(seen, [5, 6, 7]);
    assert!(
        !tb.events()
            .iter()
            .any(|e| matches!(e, Event::MessagesDropped { .. }))
    );
}

#[test]
fn a_saturating_publisher_within_its_window_loses_nothing() {
    // A publisher that never has more than 4 unacknowledged messages (a client's in-flight
    // window) against a subscriber far slower than it: without flow control the queue (8)
    // overflows; with it the publisher waits and every acknowledged message arrives.
    let (mut tb, sub, publisher) = setup(config());
    let mut next = 1u16;
    let mut unacked = std::collections::BTreeSet::new();
    let mut acknowledged = Vec::new();
    let mut received = Vec::new();
    for step in 0..2_000 {
        if acknowledged.len() == 200 && received.len() == 200 {
            break;
        }
        while unacked.len() < 4 && next <= 200 {
            tb.send(
                publisher,
                &publish(
                    "t",
                    &next.to_be_bytes(),
                    QoS::AtLeastOnce,
                    Some(next),
                    false,
                ),
            );
            unacked.insert(next);
            next += 1;
        }
        for id in acks(&mut tb, publisher) {
            unacked.remove(&id);
            acknowledged.push(id);
        }
        // The subscriber acknowledges one message every third step.
        if step % 3 == 0 {
            for p in tb.recv_publishes(sub) {
                received.push(u16::from_be_bytes([p.payload[0], p.payload[1]]));
                tb.send(sub, &puback(p.packet_id.unwrap().get()));
            }
        }
    }
    assert_eq!(acknowledged.len(), 200, "the publisher finished");
    assert_eq!(received, (1..=200).collect::<Vec<_>>(), "nothing lost");
    assert!(
        !tb.events()
            .iter()
            .any(|e| matches!(e, Event::MessagesDropped { .. }))
    );
}

#[test]
fn qos2_pubrec_is_held_the_same_way() {
    let (mut tb, sub, publisher) = setup(config());
    for id in 1..=6u16 {
        tb.send(
            publisher,
            &publish("t", b"x", QoS::ExactlyOnce, Some(id), false),
        );
    }
    assert_eq!(acks(&mut tb, publisher), [1, 2, 3, 4, 5]);
    tb.send(sub, &disconnect());
    // 3.1.1 [MQTT-4.3.3-2]: PUBREC, then PUBCOMP after PUBREL.
    assert_eq!(acks(&mut tb, publisher), [6]);
    tb.send(publisher, &pubrel(6));
    assert!(matches!(tb.recv(publisher)[..], [Packet::PubComp(_)]));
}

#[test]
fn a_subscriber_going_offline_releases_the_held_acks() {
    let (mut tb, sub, publisher) = setup(config());
    publish_n(&mut tb, publisher, 1, 7);
    assert_eq!(acks(&mut tb, publisher), [1, 2, 3, 4, 5]);
    tb.close_socket(sub);
    assert_eq!(acks(&mut tb, publisher), [6, 7]);
}

#[test]
fn an_offline_persistent_session_never_holds_acks() {
    let mut tb = TestBroker::new(config());
    let sub = tb.connect("away", false, V311);
    tb.send(sub, &subscribe(1, &[("t", QoS::AtLeastOnce)]));
    tb.recv(sub);
    tb.send(sub, &disconnect());
    let publisher = tb.connect("pub", true, V311);
    publish_n(&mut tb, publisher, 1, 8);
    assert_eq!(acks(&mut tb, publisher), (1..=8).collect::<Vec<_>>());
    assert_eq!(tb.broker().queued_messages("away"), Some(8));
}

#[test]
fn a_subscriber_that_stops_reading_holds_publishers_at_most_max_ack_hold() {
    let (mut tb, sub, publisher) = setup(config());
    publish_n(&mut tb, publisher, 1, 6);
    assert_eq!(acks(&mut tb, publisher), [1, 2, 3, 4, 5]);
    tb.advance(Duration::from_millis(4_900));
    assert_eq!(acks(&mut tb, publisher), Vec::<u16>::new());
    tb.advance(Duration::from_millis(200));
    assert_eq!(
        acks(&mut tb, publisher),
        [6],
        "released after max_ack_hold (5 s)"
    );
    // From now on that subscriber holds nobody: its queue fills up and the overflow policy
    // applies (counted and reported).
    publish_n(&mut tb, publisher, 7, 10);
    assert_eq!(acks(&mut tb, publisher), [7, 8, 9, 10]);
    assert!(
        tb.events()
            .iter()
            .any(|e| matches!(e, Event::MessagesDropped { .. }))
    );
    // Once it drains under a quarter, holds resume.
    for _ in 0..10 {
        for p in tb.recv_publishes(sub) {
            tb.send(sub, &puback(p.packet_id.unwrap().get()));
        }
    }
    assert_eq!(tb.broker().queued_messages("slow"), Some(0));
    publish_n(&mut tb, publisher, 11, 16);
    assert_eq!(acks(&mut tb, publisher), [11, 12, 13, 14, 15]);
}

#[test]
fn flow_control_off_acknowledges_at_once_and_drops_by_policy() {
    let (mut tb, _sub, publisher) = setup(BrokerConfig {
        publisher_flow_control: false,
        ..config()
    });
    publish_n(&mut tb, publisher, 1, 12);
    assert_eq!(acks(&mut tb, publisher), (1..=12).collect::<Vec<_>>());
    assert_eq!(tb.broker().queued_messages("slow"), Some(8));
}

#[test]
fn only_the_congested_subscribers_messages_wait() {
    let (mut tb, _sub, publisher) = setup(config());
    let other = tb.connect("fast", true, V311);
    tb.send(other, &subscribe(1, &[("u", QoS::AtLeastOnce)]));
    tb.recv(other);
    publish_n(&mut tb, publisher, 1, 6);
    assert_eq!(acks(&mut tb, publisher), [1, 2, 3, 4, 5]);
    // A message on `u` reaches only the fast subscriber: acknowledged at once.
    tb.send(
        publisher,
        &publish("u", b"fast", QoS::AtLeastOnce, Some(pid(40).get()), false),
    );
    assert_eq!(acks(&mut tb, publisher), [40]);
}

#[test]
fn several_publishers_held_back_by_one_slow_subscriber_lose_nothing() {
    // Three publishers with 3 messages in flight each: once the subscriber is congested (5
    // queued) they can still add 9, which its queue takes (up to twice its limit of 8) instead
    // of dropping them.
    let (mut tb, sub, first) = setup(config());
    let others = [
        tb.connect("pub2", true, V311),
        tb.connect("pub3", true, V311),
    ];
    let publishers = [first, others[0], others[1]];
    let mut next = [1u16; 3];
    let mut unacked: [std::collections::BTreeSet<u16>; 3] = Default::default();
    let mut acknowledged = 0;
    let mut received = std::collections::BTreeSet::new();
    for step in 0..5_000 {
        if acknowledged == 300 && received.len() == 300 {
            break;
        }
        for (i, &publisher) in publishers.iter().enumerate() {
            while unacked[i].len() < 3 && next[i] <= 100 {
                let tag = [i as u8, next[i] as u8];
                tb.send(
                    publisher,
                    &publish("t", &tag, QoS::AtLeastOnce, Some(next[i]), false),
                );
                unacked[i].insert(next[i]);
                next[i] += 1;
            }
            for id in acks(&mut tb, publisher) {
                unacked[i].remove(&id);
                acknowledged += 1;
            }
        }
        if step % 4 == 0 {
            for p in tb.recv_publishes(sub) {
                received.insert((p.payload[0], p.payload[1]));
                tb.send(sub, &puback(p.packet_id.unwrap().get()));
            }
        }
    }
    assert_eq!(acknowledged, 300, "the publishers finished");
    assert_eq!(received.len(), 300, "nothing lost");
    assert!(
        !tb.events()
            .iter()
            .any(|e| matches!(e, Event::MessagesDropped { .. }))
    );
}

#[test]
fn a_publisher_ignoring_its_window_cannot_grow_the_held_acks_without_bound() {
    // It never waits for acknowledgements: past the held-ack bound (twice the queue limit of 8,
    // as far as the queue may stretch) its acknowledgements go out at once and its extra
    // messages meet the overflow policy.
    let (mut tb, _sub, publisher) = setup(config());
    publish_n(&mut tb, publisher, 1, 5);
    assert_eq!(acks(&mut tb, publisher), [1, 2, 3, 4, 5]);
    publish_n(&mut tb, publisher, 6, 1_000);
    let released = acks(&mut tb, publisher);
    assert_eq!(released.len(), 995 - 16, "all but 16 acknowledged at once");
    assert_eq!(released.first(), Some(&22));
    // Queue stretched to twice its limit (16) at the most; the rest dropped and reported.
    assert!(tb.broker().queued_messages("slow").unwrap() <= 16);
    assert!(
        tb.events()
            .iter()
            .any(|e| matches!(e, Event::MessagesDropped { .. }))
    );
}
