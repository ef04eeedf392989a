//! Conformance of the core client ([`Client`]) speaking MQTT 5.0 (OASIS Standard, 7 March 2019)
//! to the normative statements whose subject is the client as sender or receiver of
//! application messages: packet identifiers of acknowledgements, the QoS 1 and QoS 2 flows,
//! failed acknowledgements, flow control by the server's Receive Maximum, what follows
//! DISCONNECT, acknowledgement of every received PUBLISH and the order of PUBRELs. Each test
//! cites its statements as `MQTT 5.0 [MQTT-x.y.z-n]` (the list is
//! `../shared/conformance/mqtt-v5.0-statements.tsv`).
//!
//! The server is scripted: its packets are encoded by hand with the codec, and what the client
//! transmits is decoded. Time is virtual.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

#[path = "support/scripted.rs"]
mod scripted;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use scripted::{
    Drained, Out, Q0, Q1, Q2, Sim, delivered, incoming, incoming_on, names, pid, puback,
    puback_with, pubcomp, published, pubrec, pubrec_with, pubrel, pubrels, suback, topic, unsuback,
};
use surgemq_core::client::{ClientConfig, ClientEvent, Token};
use surgemq_core::codec::{
    DisconnectReason, Packet, Properties, Property, ProtocolVersion, PubAckReason, PubRelReason,
    Publish, QoS, SubAckReason, UnsubAckReason,
};
use surgemq_core::string::MqttString;

const V5: ProtocolVersion = ProtocolVersion::V5;

/// A 5.0 configuration; `clean_start` false asks for a session that outlives the connection.
fn config(client_id: &str, clean_start: bool) -> ClientConfig {
    scripted::config(V5, client_id, clean_start)
}

/// A connected client with a fresh session.
fn connected(clean_start: bool) -> Sim {
    Sim::connected(config("c", clean_start), Properties::new())
}

/// A connected client whose server sent Receive Maximum `receive_max` in CONNACK; the client's
/// own window is larger.
fn connected_with_receive_max(receive_max: u16, clean_start: bool) -> Sim {
    let mut config = config("c", clean_start);
    config.max_inflight = 100;
    Sim::connected(config, receive_maximum(receive_max))
}

/// CONNACK properties with Receive Maximum `receive_max`.
fn receive_maximum(receive_max: u16) -> Properties {
    Properties::new().with(Property::ReceiveMaximum(receive_max))
}

/// A packet identifier other than `id`.
fn other_than(id: u16) -> u16 {
    if id == 1 { 2 } else { 1 }
}

// ---------------------------------------------------------------------------------------------
// 2.2.1 Packet identifiers of acknowledgements
// ---------------------------------------------------------------------------------------------

#[test]
fn acknowledgements_carry_the_packet_identifier_of_the_publish() {
    // MQTT 5.0 [MQTT-2.2.1-5]: as sender, the client's PUBREL names its PUBLISH's identifier;
    // as receiver, its PUBACK, PUBREC and PUBCOMP name the server's, whatever their value.
    let mut sim = connected(true);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(sim.publish_now("q2", Q2).1);
    }
    assert_eq!(
        names(&sim.feed(pubrec(ids[1])).packets),
        [format!("PUBREL {}", ids[1])]
    );

    sim.receive_all(&[
        incoming(Q1, Some(0x1234), false, b"a"),
        incoming(Q2, Some(u16::MAX), false, b"b"),
        incoming(Q1, Some(1), false, b"c"),
        pubrel(u16::MAX),
        incoming(Q2, Some(0x0100), false, b"d"),
        pubrel(0x0100),
    ]);
    assert_eq!(
        names(&sim.drain().packets),
        [
            "PUBACK 4660",
            "PUBREC 65535",
            "PUBACK 1",
            "PUBCOMP 65535",
            "PUBREC 256",
            "PUBCOMP 256"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// 4.3.2 QoS 1
// ---------------------------------------------------------------------------------------------

#[test]
fn a_qos_1_publish_stays_unacknowledged_until_its_puback() {
    // MQTT 5.0 [MQTT-4.3.2-3]: neither other packets with its identifier nor a PUBACK for
    // another identifier acknowledge it; while unacknowledged it is resent on every session
    // resume; once its PUBACK arrives it completes and is never sent again.
    let mut sim = connected(false);
    let (token, id) = sim.publish_now("q1", Q1);
    let other = other_than(id);
    let d = sim.feed_all(&[pubcomp(id), puback(other)]);
    assert!(published(&d.events).is_empty(), "{d:?}");
    assert!(d.packets.is_empty(), "{d:?}");
    assert_eq!(sim.client.inflight_len(), 1);

    for _ in 0..2 {
        let d = sim.reconnect(true);
        assert_eq!(names(&d.packets), [format!("PUBLISH {id} q1 dup")]);
        assert!(published(&d.events).is_empty(), "{d:?}");
    }
    let d = sim.feed(puback(id));
    assert_eq!(published(&d.events), [(token, PubAckReason::Success)]);
    assert_eq!(sim.client.inflight_len(), 0);
    let d = sim.reconnect(true);
    assert!(d.packets.is_empty(), "acknowledged, not resent: {d:?}");
}

#[test]
fn a_received_qos_1_publish_is_answered_with_puback_of_its_identifier() {
    // MQTT 5.0 [MQTT-4.3.2-4]
    let mut sim = connected(true);
    for id in [1, 77, 0x8000, u16::MAX] {
        let d = sim.feed(incoming(Q1, Some(id), false, b"m"));
        assert_eq!(names(&d.packets), [format!("PUBACK {id}")]);
        assert_eq!(delivered(&d.events), [b"m"]);
    }
}

#[test]
fn after_its_puback_a_publish_reusing_the_identifier_is_a_new_message() {
    // MQTT 5.0 [MQTT-4.3.2-5]: whatever its DUP flag says.
    let mut sim = connected(true);
    let d = sim.feed(incoming(Q1, Some(7), false, b"first"));
    assert_eq!(names(&d.packets), ["PUBACK 7"]);
    assert_eq!(delivered(&d.events), [b"first"]);
    for (dup, payload) in [(true, &b"second"[..]), (false, &b"third"[..])] {
        let d = sim.feed(incoming(Q1, Some(7), dup, payload));
        assert_eq!(names(&d.packets), ["PUBACK 7"], "dup {dup}");
        assert_eq!(
            delivered(&d.events),
            [payload],
            "delivered as new, dup {dup}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4.3.3 QoS 2 as sender
// ---------------------------------------------------------------------------------------------

#[test]
fn a_qos_2_publish_stays_unacknowledged_until_its_pubrec() {
    // MQTT 5.0 [MQTT-4.3.3-3]: a PUBACK or PUBCOMP with its identifier, or a PUBREC for another,
    // neither advance nor complete it; it is resent on session resume until its PUBREC comes.
    let mut sim = connected(false);
    let (_, id) = sim.publish_now("q2", Q2);
    let other = other_than(id);
    let d = sim.feed_all(&[puback(id), pubcomp(id)]);
    assert!(d.packets.is_empty(), "no PUBREL without PUBREC: {d:?}");
    assert!(published(&d.events).is_empty(), "{d:?}");
    let d = sim.feed(pubrec(other));
    assert!(
        !names(&d.packets).contains(&format!("PUBREL {id}")),
        "{d:?}"
    );

    let d = sim.reconnect(true);
    assert_eq!(names(&d.packets), [format!("PUBLISH {id} q2 dup")]);
    assert_eq!(
        names(&sim.feed(pubrec(id)).packets),
        [format!("PUBREL {id}")]
    );
    let d = sim.reconnect(true);
    assert_eq!(
        names(&d.packets),
        [format!("PUBREL {id}")],
        "acknowledged by PUBREC: the PUBLISH is not resent"
    );
}

#[test]
fn a_pubrec_below_0x80_is_answered_with_pubrel_of_the_same_identifier() {
    // MQTT 5.0 [MQTT-4.3.3-4]: Success (0x00) and No matching subscribers (0x10).
    let mut sim = connected(true);
    for reason in [PubAckReason::Success, PubAckReason::NoMatchingSubscribers] {
        let (token, id) = sim.publish_now("q2", Q2);
        let d = sim.feed(pubrec_with(id, reason));
        assert_eq!(names(&d.packets), [format!("PUBREL {id}")], "{reason:?}");
        assert!(published(&d.events).is_empty(), "not before PUBCOMP: {d:?}");
        let d = sim.feed(pubcomp(id));
        assert_eq!(published(&d.events).len(), 1, "{d:?}");
        assert_eq!(published(&d.events)[0].0, token);
    }
}

#[test]
fn a_pubrel_stays_unacknowledged_until_its_pubcomp() {
    // MQTT 5.0 [MQTT-4.3.3-5]: the exchange completes only on PUBCOMP; until then the PUBREL is
    // resent on every session resume.
    let mut sim = connected(false);
    let (token, id) = sim.publish_now("q2", Q2);
    let other = other_than(id);
    assert_eq!(
        names(&sim.feed(pubrec(id)).packets),
        [format!("PUBREL {id}")]
    );
    let d = sim.feed_all(&[puback(id), pubcomp(other)]);
    assert!(published(&d.events).is_empty(), "{d:?}");
    assert_eq!(sim.client.inflight_len(), 1);
    for _ in 0..2 {
        let d = sim.reconnect(true);
        assert_eq!(names(&d.packets), [format!("PUBREL {id}")]);
    }
    let d = sim.feed(pubcomp(id));
    assert_eq!(published(&d.events), [(token, PubAckReason::Success)]);
    assert!(d.packets.is_empty(), "{d:?}");
    let d = sim.reconnect(true);
    assert!(d.packets.is_empty(), "complete, nothing resent: {d:?}");
}

#[test]
fn the_publish_is_never_resent_once_its_pubrel_was_sent() {
    // MQTT 5.0 [MQTT-4.3.3-6]: not on session resume, not on a repeated PUBREC, not into a new
    // session.
    let mut sim = connected(false);
    let (token, id) = sim.publish_now("q2", Q2);
    assert_eq!(
        names(&sim.feed(pubrec(id)).packets),
        [format!("PUBREL {id}")]
    );
    let no_publish = |d: &Drained| {
        assert!(
            !d.packets.iter().any(|p| matches!(p, Packet::Publish(_))),
            "PUBLISH resent after PUBREL: {d:?}"
        );
    };
    let d = sim.reconnect(true);
    no_publish(&d);
    assert_eq!(names(&d.packets), [format!("PUBREL {id}")]);
    let d = sim.feed(pubrec(id));
    no_publish(&d);
    let d = sim.reconnect(false);
    no_publish(&d);
    assert_eq!(
        published(&d.events),
        [(token, PubAckReason::Success)],
        "the server owns it since PUBREC: it completes with the lost session"
    );
}

// ---------------------------------------------------------------------------------------------
// 4.3.3 QoS 2 as receiver
// ---------------------------------------------------------------------------------------------

#[test]
fn a_received_qos_2_publish_is_answered_with_pubrec_of_its_identifier() {
    // MQTT 5.0 [MQTT-4.3.3-8]
    let mut sim = connected(true);
    for id in [1, 99, 0x8001, u16::MAX] {
        let d = sim.feed(incoming(Q2, Some(id), false, b"m"));
        assert_eq!(names(&d.packets), [format!("PUBREC {id}")]);
        assert_eq!(delivered(&d.events), [b"m"]);
    }
}

#[test]
fn until_pubrel_a_repeated_qos_2_publish_gets_pubrec_and_is_not_delivered_again() {
    // MQTT 5.0 [MQTT-4.3.3-10]: with DUP or without, on the same connection and after a session
    // resume.
    let mut sim = connected(false);
    let d = sim.feed(incoming(Q2, Some(9), false, b"once"));
    assert_eq!(names(&d.packets), ["PUBREC 9"]);
    assert_eq!(delivered(&d.events), [b"once"]);
    for dup in [true, false, true] {
        let d = sim.feed(incoming(Q2, Some(9), dup, b"once"));
        assert_eq!(names(&d.packets), ["PUBREC 9"], "dup {dup}");
        assert!(delivered(&d.events).is_empty(), "delivered twice: {d:?}");
    }
    sim.reconnect(true);
    let d = sim.feed(incoming(Q2, Some(9), true, b"once"));
    assert_eq!(names(&d.packets), ["PUBREC 9"]);
    assert!(delivered(&d.events).is_empty(), "delivered twice: {d:?}");
    assert_eq!(names(&sim.feed(pubrel(9)).packets), ["PUBCOMP 9"]);
}

#[test]
fn a_pubrel_is_answered_with_pubcomp_of_the_same_identifier() {
    // MQTT 5.0 [MQTT-4.3.3-11]: also for an identifier the client holds no state for (a PUBREL
    // repeated after the PUBCOMP was lost).
    let mut sim = connected(true);
    sim.receive_all(&[incoming(Q2, Some(3), false, b"m"), pubrel(3)]);
    assert_eq!(names(&sim.drain().packets), ["PUBREC 3", "PUBCOMP 3"]);
    let d = sim.feed(pubrel(3));
    assert_eq!(d.packets.len(), 1, "{d:?}");
    let Packet::PubComp(comp) = &d.packets[0] else {
        panic!("{d:?}")
    };
    assert_eq!(comp.packet_id, pid(3));
    // The identifier is named back whatever the reason code says.
    assert!(
        matches!(
            comp.reason,
            PubRelReason::Success | PubRelReason::PacketIdentifierNotFound
        ),
        "{comp:?}"
    );
    let d = sim.feed(pubrel(40_000));
    assert!(
        matches!(d.packets.as_slice(), [Packet::PubComp(c)] if c.packet_id == pid(40_000)),
        "{d:?}"
    );
}

#[test]
fn after_its_pubcomp_a_publish_reusing_the_identifier_is_a_new_message() {
    // MQTT 5.0 [MQTT-4.3.3-12]
    let mut sim = connected(true);
    let d = sim.feed_all(&[incoming(Q2, Some(5), false, b"first"), pubrel(5)]);
    assert_eq!(names(&d.packets), ["PUBREC 5", "PUBCOMP 5"]);
    assert_eq!(delivered(&d.events), [b"first"]);
    for (dup, payload) in [(true, &b"second"[..]), (false, &b"third"[..])] {
        let d = sim.feed(incoming(Q2, Some(5), dup, payload));
        assert_eq!(names(&d.packets), ["PUBREC 5"], "dup {dup}");
        assert_eq!(delivered(&d.events), [payload], "a new message, dup {dup}");
        assert_eq!(names(&sim.feed(pubrel(5)).packets), ["PUBCOMP 5"]);
    }
}

// ---------------------------------------------------------------------------------------------
// 4.4 Failed acknowledgements
// ---------------------------------------------------------------------------------------------

#[test]
fn a_puback_or_pubrec_of_0x80_or_more_completes_the_publish_and_it_is_never_resent() {
    // MQTT 5.0 [MQTT-4.4.0-2]: the failure is reported as the completion; no PUBREL follows a
    // failed PUBREC; session resumes resend only what is still unacknowledged.
    let mut sim = connected(false);
    let (t1, id1) = sim.publish_now("q1 refused", Q1);
    let (t2, id2) = sim.publish_now("q2 refused", Q2);
    let (_, pending) = sim.publish_now("q1 still pending", Q1);
    let d = sim.feed_all(&[
        puback_with(id1, PubAckReason::UnspecifiedError),
        pubrec_with(id2, PubAckReason::NotAuthorized),
    ]);
    assert!(
        d.packets.is_empty(),
        "no PUBREL after a failed PUBREC: {d:?}"
    );
    assert_eq!(
        published(&d.events),
        [
            (t1, PubAckReason::UnspecifiedError),
            (t2, PubAckReason::NotAuthorized)
        ]
    );
    for _ in 0..2 {
        let d = sim.reconnect(true);
        assert_eq!(names(&d.packets), [format!("PUBLISH {pending} q1 dup")]);
    }
    for reason in [
        PubAckReason::QuotaExceeded,
        PubAckReason::PayloadFormatInvalid,
    ] {
        let (t, id) = sim.publish_now("q2 refused", Q2);
        let d = sim.feed(pubrec_with(id, reason));
        assert!(d.packets.is_empty(), "{d:?}");
        assert_eq!(published(&d.events), [(t, reason)]);
    }
    let d = sim.reconnect(true);
    assert_eq!(names(&d.packets), [format!("PUBLISH {pending} q1 dup")]);
}

// ---------------------------------------------------------------------------------------------
// 3.3.4 / 4.9 Flow control
// ---------------------------------------------------------------------------------------------

/// Identifiers of the QoS 1/2 PUBLISH packets among `packets`.
fn publish_ids(packets: &[Packet]) -> Vec<u16> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) if p.qos != Q0 => Some(p.packet_id.unwrap().get()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_initial_send_quota_is_non_zero_and_at_most_the_servers_receive_maximum() {
    // MQTT 5.0 [MQTT-4.9.0-1] [MQTT-3.3.4-7]: with more publishes ready than the quota, at once
    // at least one and at most Receive Maximum go out, on every connection.
    for receive_max in [1, 2, 5] {
        let mut sim = connected_with_receive_max(receive_max, true);
        for _ in 0..8 {
            sim.publish("q1", Q1);
        }
        let sent = publish_ids(&sim.drain().packets);
        assert!(
            (1..=usize::from(receive_max)).contains(&sent.len()),
            "Receive Maximum {receive_max}: {sent:?}"
        );
    }
    // With no Receive Maximum from the server and a window of 0 configured: still non-zero.
    let mut config = config("c", true);
    config.max_inflight = 0;
    let mut sim = Sim::connected(config, Properties::new());
    for _ in 0..3 {
        sim.publish("q2", Q2);
    }
    assert_eq!(publish_ids(&sim.drain().packets).len(), 1);
}

/// The server's view of the client's send quota: the QoS 1/2 PUBLISH packets it sent and the
/// server has not answered with PUBACK, PUBCOMP or a PUBREC of 0x80 or more.
#[derive(Default)]
struct Outstanding {
    /// Identifier to (QoS, whether the client sent PUBREL).
    open: BTreeMap<u16, (QoS, bool)>,
    most: usize,
}

impl Outstanding {
    fn client_sent(&mut self, packets: &[Packet], receive_max: u16) {
        for p in packets {
            match p {
                Packet::Publish(p) if p.qos != Q0 => {
                    let id = p.packet_id.unwrap().get();
                    assert!(
                        self.open.insert(id, (p.qos, false)).is_none(),
                        "identifier {id} in use"
                    );
                    assert!(
                        self.open.len() <= usize::from(receive_max),
                        "{} QoS 1/2 PUBLISH unanswered, Receive Maximum {receive_max}",
                        self.open.len()
                    );
                    self.most = self.most.max(self.open.len());
                }
                Packet::PubRel(r) => {
                    let entry = self.open.get_mut(&r.packet_id.get()).unwrap();
                    entry.1 = true;
                }
                _ => {}
            }
        }
    }
}

#[test]
fn each_qos_1_2_publish_uses_send_quota_and_at_zero_no_more_go_out() {
    // MQTT 5.0 [MQTT-4.9.0-2] [MQTT-3.3.4-7]: the quota comes back with PUBACK (any reason),
    // PUBCOMP, or a PUBREC of 0x80 or more, not with a successful PUBREC. The server answers in
    // a scrambled order; at no point are more than Receive Maximum QoS 1/2 PUBLISH unanswered.
    const RECEIVE_MAX: u16 = 3;
    const MESSAGES: usize = 40;
    let mut sim = connected_with_receive_max(RECEIVE_MAX, true);
    let mut model = Outstanding::default();
    let mut completed = 0;
    for i in 0..MESSAGES {
        let qos = [Q1, Q2, Q0, Q2, Q1][i % 5];
        sim.publish("m", qos);
    }
    let d = sim.drain();
    model.client_sent(&d.packets, RECEIVE_MAX);
    completed += published(&d.events).len();

    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut steps = 0;
    while completed < MESSAGES {
        steps += 1;
        assert!(steps < 10_000, "stalled: {} open", model.open.len());
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let at = usize::try_from(rng % model.open.len() as u64).unwrap();
        let (&id, &(qos, released)) = model.open.iter().nth(at).unwrap();
        let fail = (rng >> 32).is_multiple_of(5);
        let answer = match (qos, released) {
            (Q1, _) if fail => puback_with(id, PubAckReason::ImplementationSpecificError),
            (Q1, _) => puback(id),
            (_, false) if fail => pubrec_with(id, PubAckReason::UnspecifiedError),
            (_, false) => pubrec(id),
            (_, true) => pubcomp(id),
        };
        let returns_quota = !matches!(answer, Packet::PubRec(ref r) if !r.reason.is_error());
        if returns_quota {
            model.open.remove(&id);
        }
        let d = sim.feed(answer);
        if !returns_quota {
            assert!(
                publish_ids(&d.packets).is_empty(),
                "a successful PUBREC returned quota: {d:?}"
            );
        }
        model.client_sent(&d.packets, RECEIVE_MAX);
        completed += published(&d.events).len();
    }
    assert_eq!(
        model.most,
        usize::from(RECEIVE_MAX),
        "the quota was used up at some point"
    );
    assert!(model.open.is_empty());
}

#[test]
fn at_zero_send_quota_other_packets_are_still_processed_and_answered() {
    // MQTT 5.0 [MQTT-4.9.0-3]: incoming PUBLISH at every QoS, PUBREL, SUBACK, UNSUBACK and
    // PINGRESP are handled, and keep-alive PINGREQs still go out, while a QoS 1 publish waits.
    let mut config = config("c", true);
    config.keep_alive = 10;
    let mut sim = Sim::connected(config, receive_maximum(1));
    let (first, id) = sim.publish_now("uses the quota", Q1);
    let sub = sim.subscribe(&[("s/#", Q2)]).unwrap();
    let unsub = sim.unsubscribe(&["old"]).unwrap();
    let sent = names(&sim.drain().packets);
    let [subscribe, unsubscribe] = &sent[..] else {
        panic!("{sent:?}")
    };
    assert!(subscribe.starts_with("SUBSCRIBE ") && unsubscribe.starts_with("UNSUBSCRIBE "));
    let waiting = sim.publish("waits for quota", Q1);
    assert!(sim.drain().packets.is_empty(), "quota is zero");

    let d = sim.feed_all(&[
        incoming_on("s/a", Q0, None, false, b"zero"),
        incoming_on("s/a", Q1, Some(21), false, b"one"),
        incoming_on("s/a", Q2, Some(22), false, b"two"),
        pubrel(22),
    ]);
    assert_eq!(names(&d.packets), ["PUBACK 21", "PUBREC 22", "PUBCOMP 22"]);
    assert_eq!(delivered(&d.events), [&b"zero"[..], b"one", b"two"]);

    let sub_id: u16 = subscribe["SUBSCRIBE ".len()..].parse().unwrap();
    let unsub_id: u16 = unsubscribe["UNSUBSCRIBE ".len()..].parse().unwrap();
    let d = sim.feed_all(&[
        suback(sub_id, SubAckReason::GrantedQoS2),
        unsuback(unsub_id, vec![UnsubAckReason::Success]),
    ]);
    let tokens: Vec<Token> = d
        .events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Subscribed { token, .. } | ClientEvent::Unsubscribed { token, .. } => {
                Some(*token)
            }
            _ => None,
        })
        .collect();
    assert_eq!(tokens, [sub, unsub]);

    // Keep alive: nothing sent for 10 s, so PINGREQ; its PINGRESP keeps the connection.
    sim.advance_to(sim.client.poll_timeout().unwrap());
    assert_eq!(names(&sim.drain().packets), ["PINGREQ"]);
    sim.receive(Packet::PingResp);
    // Past the PINGRESP deadline: the PINGRESP was taken, so no ping timeout (another PINGREQ).
    sim.advance_to(sim.now + Duration::from_secs(11));
    let d = sim.drain();
    assert!(
        !d.events
            .iter()
            .any(|e| matches!(e, ClientEvent::ProtocolError(_) | ClientEvent::Disconnected)),
        "{d:?}"
    );

    // The quota comes back: the waiting publish goes out.
    let d = sim.feed(puback(id));
    assert_eq!(published(&d.events), [(first, PubAckReason::Success)]);
    assert_eq!(publish_ids(&d.packets).len(), 1, "{d:?}");
    assert_eq!(
        published(&sim.feed(puback(publish_ids(&d.packets)[0])).events),
        [(waiting, PubAckReason::Success)]
    );
}

#[test]
fn a_resumed_session_resends_no_more_publishes_than_the_new_receive_maximum() {
    // MQTT 5.0 [MQTT-3.3.4-7] [MQTT-4.9.0-1] [MQTT-4.9.0-2]: the send quota starts again at the
    // Receive Maximum of the new CONNACK; resent QoS 1/2 PUBLISH packets (5.0 [MQTT-4.4.0-1])
    // use it like any other, so the rest wait for acknowledgements.
    let mut sim = connected_with_receive_max(4, false);
    for _ in 0..4 {
        sim.publish("q1", Q1);
    }
    assert_eq!(publish_ids(&sim.drain().packets).len(), 4);
    sim.connack_properties = receive_maximum(2);
    let d = sim.reconnect(true);
    let resent = publish_ids(&d.packets);
    assert!(
        resent.len() <= 2,
        "{} PUBLISH resent at once with Receive Maximum 2: {:?}",
        resent.len(),
        names(&d.packets)
    );
    // The rest follow as the quota comes back, in their original order.
    let mut all = resent.clone();
    for id in resent {
        sim.receive(puback(id));
        all.extend(publish_ids(&sim.drain().packets));
    }
    assert_eq!(all, [1, 2, 3, 4]);
}

// ---------------------------------------------------------------------------------------------
// 3.14.4 DISCONNECT
// ---------------------------------------------------------------------------------------------

#[test]
fn after_disconnect_the_client_sends_nothing_more_and_closes_the_connection() {
    // MQTT 5.0 [MQTT-3.14.4-1]: no MQTT control packet after DISCONNECT, whatever happens next.
    // MQTT 5.0 [MQTT-3.14.4-2]: after DISCONNECT the network connection is closed.
    let mut config = config("c", false);
    config.keep_alive = 5;
    let mut sim = Sim::connected(config, Properties::new());
    sim.publish_now("in flight", Q1);
    sim.publish("written just before", Q2);
    sim.client.disconnect(sim.now);
    let outs = sim.outputs();
    let sent: Vec<(usize, Packet)> = outs
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Out::Sent(b) => Some(sim.decode(b).into_iter().map(move |p| (i, p))),
            _ => None,
        })
        .flatten()
        .collect();
    let Some((at, Packet::Disconnect(disconnect))) = sent.last() else {
        panic!("DISCONNECT is not the last packet sent: {outs:?}")
    };
    assert_eq!(disconnect.reason, DisconnectReason::NormalDisconnection);
    assert_eq!(
        sent.iter()
            .filter(|(_, p)| matches!(p, Packet::Disconnect(_)))
            .count(),
        1
    );
    let close = outs
        .iter()
        .position(|o| matches!(o, Out::Close))
        .unwrap_or_else(|| panic!("no CloseTransport: {outs:?}"));
    assert!(close > *at, "closed before DISCONNECT: {outs:?}");
    assert!(
        !outs[*at + 1..]
            .iter()
            .any(|o| matches!(o, Out::Sent(_) | Out::Open)),
        "{outs:?}"
    );

    // Nothing brings it back: timeouts over keep-alive and backoff periods, the transport's end,
    // a spurious TransportUp, server packets that would need answers, new commands.
    sim.assert_silent_forever(&[
        incoming(Q1, Some(9), false, b"late"),
        incoming(Q2, Some(10), false, b"late"),
        pubrel(11),
        pubrec(2),
        Packet::PingResp,
    ]);
}

// ---------------------------------------------------------------------------------------------
// 4.5 Message receipt, 4.6 ordering
// ---------------------------------------------------------------------------------------------

#[test]
fn every_received_publish_is_acknowledged_according_to_its_qos() {
    // MQTT 5.0 [MQTT-4.5.0-2]: on topics never subscribed to, for duplicates not delivered
    // again, with properties the client does not act on, several in one read.
    let mut sim = connected(true);
    let with_properties = Packet::Publish(Publish {
        dup: false,
        qos: Q1,
        retain: true,
        topic: topic("never/subscribed"),
        packet_id: Some(pid(30)),
        properties: Properties::new()
            .with(Property::MessageExpiryInterval(1))
            .with(Property::UserProperty(
                MqttString::new("k").unwrap(),
                MqttString::new("v").unwrap(),
            )),
        payload: Bytes::from_static(b"p"),
    });
    let d = sim.feed_all(&[
        incoming_on("never/subscribed", Q0, None, false, b"a"),
        incoming_on("never/subscribed", Q1, Some(10), false, b"b"),
        incoming_on("other", Q2, Some(11), false, b"c"),
        incoming_on("other", Q2, Some(11), true, b"c"),
        incoming_on("other", Q1, Some(12), true, b"d"),
        with_properties,
    ]);
    assert_eq!(
        names(&d.packets),
        [
            "PUBACK 10",
            "PUBREC 11",
            "PUBREC 11",
            "PUBACK 12",
            "PUBACK 30"
        ]
    );
    assert_eq!(
        delivered(&d.events),
        [&b"a"[..], b"b", b"c", b"d", b"p"],
        "the duplicate QoS 2 message once"
    );
}

#[test]
fn pubrels_go_out_in_the_order_the_pubrecs_arrived() {
    // MQTT 5.0 [MQTT-4.6.0-4]: PUBRECs out of publish order, one per read and several in one
    // read, with a failed PUBREC among them (no PUBREL for it).
    let mut sim = connected(true);
    let ids = sim.publish_q2s(4);
    let order = [ids[3], ids[0], ids[2], ids[1]];
    let sent = sim.feed_each(order.map(pubrec));
    assert_eq!(names(&sent), pubrels(&order));

    let ids = sim.publish_q2s(4);
    sim.receive_all(&[
        pubrec(ids[2]),
        pubrec_with(ids[0], PubAckReason::QuotaExceeded),
        pubrec(ids[3]),
        pubrec_with(ids[1], PubAckReason::NoMatchingSubscribers),
    ]);
    assert_eq!(
        names(&sim.drain().packets),
        pubrels(&[ids[2], ids[3], ids[1]])
    );
}

#[test]
fn resent_pubrels_keep_the_order_the_pubrecs_arrived() {
    // MQTT 5.0 [MQTT-4.6.0-4]: the rule has no exception for the PUBRELs resent on session
    // resume (5.0 [MQTT-4.4.0-1]).
    connected(false).assert_resent_pubrels_keep_pubrec_order();
}
