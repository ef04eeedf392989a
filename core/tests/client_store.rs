//! The core client's session persistence: what it stores, what waits for a commit in durable
//! mode, restore after a restart, a failed commit, and a property test of crashes against the
//! real broker state machine ("a publish stored or completed is never lost; a QoS 2 message is
//! never delivered twice, whichever side crashes").
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod support;

use support::drain;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use surgemq_core::broker::{AuthMode, Broker, BrokerConfig, ConnId, Input, StoreFailure};
use surgemq_core::client::{
    Client, ClientConfig, ClientEvent, ClientInput, ClientOutput, Persistence, RestoreError, Token,
};
use surgemq_core::codec::{
    ConnAck, ConnectReason, MAX_PACKET_SIZE, Packet, PacketId, Properties, ProtocolVersion, PubAck,
    PubRel, Publish, QoS, SubscriptionOptions, decode_buf,
};
use surgemq_core::store::{DeliveryState, MemoryStore, StoreOp};
use surgemq_core::string::MqttString;
use surgemq_core::time::Instant;
use surgemq_core::topic::{TopicFilter, TopicName};

// ---------------------------------------------------------------------------------------------
// Scripted: the client against packets written by hand
// ---------------------------------------------------------------------------------------------

fn receive(client: &mut Client, now: Instant, packet: Packet) {
    let mut buf = BytesMut::new();
    packet.encode(ProtocolVersion::V3_1_1, &mut buf).unwrap();
    client.handle_input(now, ClientInput::Received(buf.freeze()));
}

fn connack(client: &mut Client, now: Instant, session_present: bool) {
    receive(
        client,
        now,
        Packet::ConnAck(ConnAck {
            session_present,
            reason: ConnectReason::Success,
            properties: Properties::new(),
        }),
    );
}

fn done(client: &mut Client, now: Instant, seq: u64) {
    client.handle_input(
        now,
        ClientInput::StoreDone {
            seq,
            result: Ok(()),
        },
    );
}

fn persistent(id: &str, persistence: Persistence) -> ClientConfig {
    let mut config = ClientConfig::new(MqttString::new(id).unwrap());
    config.clean_start = false;
    config.persistence = persistence;
    config
}

fn topic(s: &str) -> TopicName {
    TopicName::parse(s).unwrap()
}

fn subscription(filter: &str, qos: QoS) -> Vec<(TopicFilter, SubscriptionOptions)> {
    vec![(
        TopicFilter::parse(filter).unwrap(),
        SubscriptionOptions::qos(qos),
    )]
}

/// A PUBLISH from the server with packet identifier `id` (none at QoS 0).
fn incoming_on(topic_name: &str, qos: QoS, id: u16, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic(topic_name),
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
        properties: Properties::new(),
        payload: Bytes::from_static(payload),
    }
}

fn incoming(qos: QoS, id: u16) -> Packet {
    Packet::Publish(incoming_on("in", qos, id, b"x"))
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn publish(client: &mut Client, now: Instant, payload: &'static str, qos: QoS) -> Token {
    client
        .publish(
            now,
            topic("t"),
            Bytes::from_static(payload.as_bytes()),
            qos,
            false,
            Properties::new(),
        )
        .unwrap()
}

/// A durable client, connected (CONNACK answered) with nothing stored yet.
fn connected(persistence: Persistence) -> Client {
    let now = Instant::ZERO;
    let mut client = Client::new(persistent("c", persistence), now).unwrap();
    let d = drain(&mut client, now);
    assert!(matches!(d.packets.as_slice(), [Packet::Connect(_)]));
    connack(&mut client, now, true);
    let d = drain(&mut client, now);
    assert!(d.ops.is_empty(), "{:?}", d.ops);
    client
}

fn publish_ids(packets: &[Packet]) -> Vec<(PacketId, bool)> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((p.packet_id.unwrap(), p.dup)),
            _ => None,
        })
        .collect()
}

#[test]
fn durable_publish_goes_out_once_its_delivery_is_committed() {
    let now = Instant::ZERO;
    let mut client = connected(Persistence::Durable);
    publish(&mut client, now, "one", QoS::AtLeastOnce);
    let d = drain(&mut client, now);
    assert!(
        d.packets.is_empty(),
        "sent before the commit: {:?}",
        d.packets
    );
    let last = d.ops.last().unwrap().0;
    assert!(d.ops.iter().any(
        |(_, op)| matches!(op, StoreOp::PutMessage { message, .. } if message.payload == "one")
    ));
    assert!(d.ops.iter().any(|(_, op)| matches!(
        op,
        StoreOp::PutDelivery(d) if d.state == DeliveryState::AwaitingAck(pid(1))
    )));
    assert!(client.awaiting_commit());
    done(&mut client, now, last - 1);
    assert!(
        drain(&mut client, now).packets.is_empty(),
        "sent before the last op's commit"
    );
    done(&mut client, now, last);
    let d = drain(&mut client, now);
    assert_eq!(publish_ids(&d.packets), vec![(pid(1), false)]);
    assert!(!client.awaiting_commit());

    // PUBACK: the records go, and the completion is reported once that is committed (a crash
    // before it resumes the publish, which then completes: reported once either way).
    receive(&mut client, now, Packet::PubAck(PubAck::success(pid(1))));
    let d = drain(&mut client, now);
    assert!(d.events.is_empty(), "{:?}", d.events);
    assert!(matches!(
        d.ops.as_slice(),
        [
            (_, StoreOp::DeleteDelivery { .. }),
            (_, StoreOp::DeleteMessage { .. })
        ]
    ));
    done(&mut client, now, d.ops[1].0);
    assert!(matches!(
        drain(&mut client, now).events.as_slice(),
        [ClientEvent::Published { .. }]
    ));
}

#[test]
fn durable_pubrel_waits_for_the_pubrec_state() {
    let now = Instant::ZERO;
    let mut client = connected(Persistence::Durable);
    publish(&mut client, now, "two", QoS::ExactlyOnce);
    let d = drain(&mut client, now);
    done(&mut client, now, d.ops.last().unwrap().0);
    assert_eq!(publish_ids(&drain(&mut client, now).packets).len(), 1);

    receive(&mut client, now, Packet::PubRec(PubAck::success(pid(1))));
    let d = drain(&mut client, now);
    // 3.1.1 [MQTT-4.3.3-1]: PUBREL answers PUBREC — once "awaiting PUBCOMP" is on disk, so that
    // a restart resends PUBREL and never the PUBLISH, which the server would take for new.
    assert!(
        d.packets.is_empty(),
        "PUBREL before its state was committed"
    );
    // The delivery moves to a later number (PUBRELs after a restart follow PUBREC order,
    // 3.1.1 [MQTT-4.6.0-4]), in one group: never lost in between.
    assert!(matches!(
        d.ops.as_slice(),
        [
            (_, StoreOp::DeleteDelivery { seq: old, .. }),
            (_, StoreOp::PutDelivery(x)),
        ] if x.state == DeliveryState::AwaitingComp(pid(1)) && x.seq > *old && x.message == *old
    ));
    done(&mut client, now, d.ops[1].0);
    let d = drain(&mut client, now);
    assert!(matches!(d.packets.as_slice(), [Packet::PubRel(r)] if r.packet_id == pid(1)));
}

#[test]
fn durable_pubrec_and_delivery_wait_for_the_release_id() {
    let now = Instant::ZERO;
    let mut client = connected(Persistence::Durable);
    let incoming = incoming_on("in", QoS::ExactlyOnce, 7, b"x");
    receive(&mut client, now, Packet::Publish(incoming.clone()));
    let d = drain(&mut client, now);
    assert!(
        d.packets.is_empty(),
        "PUBREC before the identifier was committed"
    );
    assert!(
        d.events.is_empty(),
        "delivered before the identifier was committed"
    );
    assert!(matches!(
        d.ops.as_slice(),
        [(_, StoreOp::PutReleaseId { packet_id, .. })] if *packet_id == pid(7)
    ));
    // The server resends meanwhile: not delivered twice, still nothing before the commit.
    let mut dup = incoming.clone();
    dup.dup = true;
    receive(&mut client, now, Packet::Publish(dup));
    let d2 = drain(&mut client, now);
    assert!(d2.packets.is_empty() && d2.events.is_empty() && d2.ops.is_empty());

    done(&mut client, now, d.ops[0].0);
    let d = drain(&mut client, now);
    assert_eq!(d.events.len(), 1, "{:?}", d.events);
    assert!(matches!(
        d.packets.as_slice(),
        [Packet::PubRec(_), Packet::PubRec(_)]
    ));

    // PUBREL: the identifier is deleted before PUBCOMP goes.
    receive(&mut client, now, Packet::PubRel(PubRel::success(pid(7))));
    let d = drain(&mut client, now);
    assert!(d.packets.is_empty());
    assert!(matches!(
        d.ops.as_slice(),
        [(_, StoreOp::DeleteReleaseId { .. })]
    ));
    done(&mut client, now, d.ops[0].0);
    assert!(matches!(
        drain(&mut client, now).packets.as_slice(),
        [Packet::PubComp(_)]
    ));
}

#[test]
fn periodic_mode_stores_the_same_and_waits_for_nothing() {
    let now = Instant::ZERO;
    let mut client = connected(Persistence::Periodic);
    publish(&mut client, now, "p", QoS::ExactlyOnce);
    let d = drain(&mut client, now);
    assert!(!d.ops.is_empty());
    assert_eq!(publish_ids(&d.packets), vec![(pid(1), false)]);
    assert!(!client.awaiting_commit());
}

#[test]
fn clean_sessions_and_qos0_are_never_stored() {
    let now = Instant::ZERO;
    let mut config = persistent("clean", Persistence::Durable);
    config.clean_start = true;
    let mut client = Client::new(config, now).unwrap();
    drain(&mut client, now);
    connack(&mut client, now, false);
    publish(&mut client, now, "q1", QoS::AtLeastOnce);
    let d = drain(&mut client, now);
    assert!(d.ops.is_empty());
    assert_eq!(publish_ids(&d.packets).len(), 1);
    assert!(!client.persists());
    assert_eq!(
        Client::new(ClientConfig::new(MqttString::new("x").unwrap()), now)
            .unwrap()
            .restore(MemoryStore::new().snapshot()),
        Err(RestoreError::NotPersistent)
    );

    let mut client = connected(Persistence::Durable);
    publish(&mut client, now, "q0", QoS::AtMostOnce);
    let d = drain(&mut client, now);
    assert!(d.ops.is_empty());
    assert_eq!(d.packets.len(), 1);
}

#[test]
fn restore_is_refused_once_started() {
    let mut client = connected(Persistence::Durable);
    assert_eq!(
        client.restore(MemoryStore::new().snapshot()),
        Err(RestoreError::AlreadyStarted)
    );
}

/// Applies every op to a store.
fn apply(store: &mut MemoryStore, ops: &[(u64, StoreOp)]) {
    for (_, op) in ops {
        store.apply(op);
    }
}

#[test]
fn restart_resumes_the_session_from_the_store() {
    let now = Instant::ZERO;
    let mut disk = MemoryStore::new();
    // A subscription, a QoS 1 and a QoS 2 in flight, a QoS 2 past PUBREC, one queued (window
    // of 3), and a received QoS 2 message not yet released.
    let mut config = persistent("c", Persistence::Durable);
    config.max_inflight = 3;
    let mut client = Client::new(config.clone(), now).unwrap();
    drain(&mut client, now);
    connack(&mut client, now, true);
    client
        .subscribe(
            now,
            subscription("s/#", QoS::AtLeastOnce),
            Properties::new(),
        )
        .unwrap();
    let d = drain(&mut client, now);
    apply(&mut disk, &d.ops);
    receive(
        &mut client,
        now,
        Packet::SubAck(surgemq_core::codec::SubAck {
            packet_id: pid(1),
            properties: Properties::new(),
            reasons: vec![surgemq_core::codec::SubAckReason::GrantedQoS1],
        }),
    );
    for (payload, qos) in [
        ("a", QoS::AtLeastOnce),
        ("b", QoS::ExactlyOnce),
        ("c", QoS::ExactlyOnce),
        ("d", QoS::AtLeastOnce),
    ] {
        publish(&mut client, now, payload, qos);
    }
    receive(&mut client, now, Packet::PubRec(PubAck::success(pid(4))));
    receive(
        &mut client,
        now,
        Packet::Publish(incoming_on("s/1", QoS::ExactlyOnce, 9, b"in")),
    );
    let d = drain(&mut client, now);
    apply(&mut disk, &d.ops);
    let last = d.ops.last().unwrap().0;
    done(&mut client, now, last);
    let sent = drain(&mut client, now);
    let kinds: Vec<&str> = sent
        .events
        .iter()
        .map(|e| match e {
            ClientEvent::Subscribed { .. } => "subscribed",
            ClientEvent::Message(_) => "message",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["subscribed", "message"], "once committed");

    // The process dies. A new one restores from the disk.
    let mut client = Client::new(config, now).unwrap();
    let report = client.restore(disk.snapshot()).unwrap();
    assert_eq!(report.publishes.len(), 4, "{report}");
    assert_eq!(report.in_flight, 3, "{report}");
    assert_eq!(
        (report.subscriptions, report.release_ids),
        (1, 1),
        "{report}"
    );
    let restored: Vec<Token> = report.publishes.iter().map(|(t, ..)| *t).collect();
    let d = drain(&mut client, now);
    assert!(matches!(d.packets.as_slice(), [Packet::Connect(c)] if !c.clean_start));
    connack(&mut client, now, true);
    let d = drain(&mut client, now);
    // 3.1.1 [MQTT-4.4.0-1]: in the original order, PUBLISH with DUP, PUBREL for the one past
    // PUBREC; the queued one waits for the window.
    let kinds: Vec<String> = d
        .packets
        .iter()
        .map(|p| match p {
            Packet::Publish(p) => format!("PUBLISH {} dup={}", p.payload.len(), p.dup),
            Packet::PubRel(r) => format!("PUBREL {}", r.packet_id.get()),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        ["PUBLISH 1 dup=true", "PUBLISH 1 dup=true", "PUBREL 4"],
        "{kinds:?}"
    );
    // The server resends the QoS 2 message received before the restart: not delivered again,
    // acknowledged.
    receive(
        &mut client,
        now,
        Packet::Publish(Publish {
            dup: true,
            ..incoming_on("s/1", QoS::ExactlyOnce, 9, b"in")
        }),
    );
    let d = drain(&mut client, now);
    assert!(d.events.is_empty(), "delivered twice: {:?}", d.events);
    assert!(matches!(d.packets.as_slice(), [Packet::PubRec(r)] if r.packet_id == pid(9)));
    // Completions carry the restored tokens.
    receive(&mut client, now, Packet::PubAck(PubAck::success(pid(2))));
    receive(&mut client, now, Packet::PubComp(PubRel::success(pid(4))));
    let d = drain(&mut client, now);
    assert!(
        d.events.is_empty(),
        "completed before the deletions were committed"
    );
    done(&mut client, now, d.ops.last().unwrap().0);
    let d = drain(&mut client, now);
    let completed: Vec<Token> = d
        .events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Published { token, .. } => Some(*token),
            _ => None,
        })
        .collect();
    // "c", past PUBREC, is restored after "d": where its PUBREC came.
    assert_eq!(completed, vec![restored[0], restored[3]]);
}

/// 3.1.1 [MQTT-4.6.0-4]: after a restart from the store too, PUBRELs are resent in the order
/// the PUBRECs arrived, not in publish order.
#[test]
fn pubrels_restored_from_the_store_keep_pubrec_order() {
    let now = Instant::ZERO;
    let mut disk = MemoryStore::new();
    let config = persistent("c", Persistence::Durable);
    let mut client = Client::new(config.clone(), now).unwrap();
    drain(&mut client, now);
    connack(&mut client, now, true);
    for payload in ["a", "b", "c"] {
        publish(&mut client, now, payload, QoS::ExactlyOnce);
    }
    let d = drain(&mut client, now);
    apply(&mut disk, &d.ops);
    done(&mut client, now, d.ops.last().unwrap().0);
    let ids: Vec<PacketId> = publish_ids(&drain(&mut client, now).packets)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids.len(), 3);
    let order = [ids[2], ids[0], ids[1]];
    for id in order {
        receive(&mut client, now, Packet::PubRec(PubAck::success(id)));
    }
    let d = drain(&mut client, now);
    apply(&mut disk, &d.ops);

    // The process dies. A new one restores from the disk and resends the PUBRELs.
    let mut client = Client::new(config, now).unwrap();
    let report = client.restore(disk.snapshot()).unwrap();
    assert_eq!(report.in_flight, 3, "{report}");
    drain(&mut client, now);
    connack(&mut client, now, true);
    let pubrels: Vec<PacketId> = drain(&mut client, now)
        .packets
        .iter()
        .filter_map(|p| match p {
            Packet::PubRel(r) => Some(r.packet_id),
            _ => None,
        })
        .collect();
    assert_eq!(pubrels, order);
}

#[test]
fn failed_commit_closes_and_rewrites_everything() {
    let now = Instant::ZERO;
    let mut client = connected(Persistence::Durable);
    let mut disk = MemoryStore::new();
    publish(&mut client, now, "kept", QoS::ExactlyOnce);
    let d = drain(&mut client, now);
    let last = d.ops.last().unwrap().0;
    client.handle_input(
        now,
        ClientInput::StoreDone {
            seq: last,
            result: Err(StoreFailure("disk full".into())),
        },
    );
    let d = drain(&mut client, now);
    assert!(
        d.events
            .iter()
            .any(|e| matches!(e, ClientEvent::StoreFailed(f) if f.0 == "disk full"))
    );
    assert!(d.closed, "durable: the connection is closed");
    assert!(d.packets.is_empty(), "the held PUBLISH must not go out");
    assert!(matches!(d.ops.first(), Some((_, StoreOp::Clear))));
    apply(&mut disk, &d.ops);
    // The rewrite holds what memory holds.
    let snapshot = disk.snapshot();
    assert_eq!(snapshot.messages.len(), 1);
    assert!(matches!(
        snapshot.deliveries.as_slice(),
        [x] if x.state == DeliveryState::AwaitingAck(pid(1))
    ));
    // A late failure report from before the rewrite changes nothing more.
    client.handle_input(
        now,
        ClientInput::StoreDone {
            seq: last,
            result: Err(StoreFailure("again".into())),
        },
    );
    assert!(drain(&mut client, now).ops.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Property: crashes of either client against the broker state machine
// ---------------------------------------------------------------------------------------------

/// A client process with its disk: groups of operations submitted and not yet committed, and
/// what the disk holds.
struct Node {
    config: ClientConfig,
    client: Client,
    conn: Option<ConnId>,
    link_up: bool,
    disk: MemoryStore,
    /// Atomic groups (the operations drained in one go), oldest first.
    pending: VecDeque<Vec<(u64, StoreOp)>>,
    /// The store failed and commits nothing until the client's `Clear` arrives.
    failed: bool,
    /// Publishes of this incarnation, by token.
    tokens: BTreeMap<Token, u32>,
}

impl Node {
    fn end(&mut self) -> support::End<'_> {
        support::End {
            client: &mut self.client,
            conn: &mut self.conn,
            link_up: self.link_up,
        }
    }

    fn start(config: ClientConfig, disk: MemoryStore, now: Instant) -> (Self, Vec<u32>) {
        let mut client = Client::new(config.clone(), now).unwrap();
        let snapshot = disk.snapshot();
        let report = client.restore(snapshot.clone()).unwrap();
        // The restored publishes, in the store's order, with their payload numbers.
        let mut deliveries = snapshot.deliveries.clone();
        deliveries.sort_by_key(|d| d.seq);
        let messages: BTreeMap<u64, Bytes> = snapshot
            .messages
            .iter()
            .map(|(id, m)| (*id, m.payload.clone()))
            .collect();
        let mut tokens = BTreeMap::new();
        let mut restored = Vec::new();
        for ((token, ..), delivery) in report.publishes.iter().zip(&deliveries) {
            let n = number(&messages[&delivery.message]);
            tokens.insert(*token, n);
            restored.push(n);
        }
        (
            Self {
                config,
                client,
                conn: None,
                link_up: true,
                disk,
                pending: VecDeque::new(),
                failed: false,
                tokens,
            },
            restored,
        )
    }
}

fn number(payload: &[u8]) -> u32 {
    u32::from_be_bytes(payload[..4].try_into().unwrap())
}

#[derive(Debug, Clone)]
enum Step {
    Publish(QoS),
    Commit(usize, usize),
    Fail(usize),
    Crash(usize),
    Cut(usize),
    Heal(usize),
    Advance(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => prop_oneof![Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)].prop_map(Step::Publish),
        4 => (0..2usize, 1..4usize).prop_map(|(n, k)| Step::Commit(n, k)),
        1 => (0..2usize).prop_map(Step::Fail),
        2 => (0..2usize).prop_map(Step::Crash),
        1 => (0..2usize).prop_map(Step::Cut),
        1 => (0..2usize).prop_map(Step::Heal),
        2 => (1..3_000u64).prop_map(Step::Advance),
    ]
}

/// Node 0 publishes on `w/x`; node 1 holds a persistent QoS 2 subscription to `w/#`. Both
/// persist durably; the broker keeps both sessions (it does not crash here: its own
/// durability is tested in `surgemq-tests`).
struct World {
    now: Instant,
    broker: Broker,
    nodes: [Node; 2],
    next_payload: u32,
    qos_of: BTreeMap<u32, QoS>,
    /// Payloads whose `PutMessage` was committed, or whose publish completed.
    owed: BTreeSet<u32>,
    /// Payloads delivered to node 1's application, with their count.
    delivered: BTreeMap<u32, u32>,
}

impl World {
    fn new() -> Self {
        let config = BrokerConfig {
            auth: AuthMode::AllowAll,
            sys_interval: None,
            ..BrokerConfig::default()
        };
        let now = Instant::ZERO;
        let node = |id: &str| {
            Node::start(
                persistent(id, Persistence::Durable),
                MemoryStore::new(),
                now,
            )
            .0
        };
        let mut world = Self {
            now,
            broker: Broker::new(config, now),
            nodes: [node("pub"), node("sub")],
            next_payload: 0,
            qos_of: BTreeMap::new(),
            owed: BTreeSet::new(),
            delivered: BTreeMap::new(),
        };
        world.drive();
        world.nodes[1]
            .client
            .subscribe(
                now,
                subscription("w/#", QoS::ExactlyOnce),
                Properties::new(),
            )
            .unwrap();
        world.settle();
        world
    }

    fn commit(&mut self, n: usize, groups: usize) {
        let node = &mut self.nodes[n];
        let mut last = None;
        for _ in 0..groups {
            let Some(group) = node.pending.pop_front() else {
                break;
            };
            if node.failed {
                // Nothing is committed after a failure until the rewrite arrives.
                if !matches!(group.first(), Some((_, StoreOp::Clear))) {
                    continue;
                }
                node.failed = false;
            }
            for (seq, op) in &group {
                node.disk.apply(op);
                if let StoreOp::PutMessage { message, .. } = op
                    && n == 0
                {
                    self.owed.insert(number(&message.payload));
                }
                last = Some(*seq);
            }
        }
        if let Some(seq) = last {
            node.client.handle_input(
                self.now,
                ClientInput::StoreDone {
                    seq,
                    result: Ok(()),
                },
            );
        }
        self.drive();
    }

    fn fail(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let Some(group) = node.pending.pop_front() else {
            return;
        };
        if node.failed && !matches!(group.first(), Some((_, StoreOp::Clear))) {
            return;
        }
        node.failed = true;
        let seq = group.last().unwrap().0;
        node.client.handle_input(
            self.now,
            ClientInput::StoreDone {
                seq,
                result: Err(StoreFailure("injected".into())),
            },
        );
        self.drive();
    }

    fn crash(&mut self, n: usize) {
        if let Some(conn) = self.nodes[n].conn.take() {
            self.broker
                .handle_input(self.now, Input::Closed { conn })
                .unwrap();
        }
        let node = &self.nodes[n];
        let (mut fresh, restored) = Node::start(node.config.clone(), node.disk.clone(), self.now);
        fresh.link_up = node.link_up;
        for payload in restored {
            self.owed.insert(payload);
        }
        self.nodes[n] = fresh;
        self.drive();
    }

    fn cut(&mut self, n: usize) {
        self.nodes[n].link_up = false;
        support::cut(&mut self.broker, self.now, self.nodes[n].end());
        self.drive();
    }

    fn publish(&mut self, qos: QoS) {
        let n = self.next_payload;
        let payload = Bytes::copy_from_slice(&n.to_be_bytes());
        if let Ok(token) = self.nodes[0].client.publish(
            self.now,
            TopicName::parse("w/x").unwrap(),
            payload,
            qos,
            false,
            Properties::new(),
        ) {
            self.next_payload += 1;
            self.qos_of.insert(n, qos);
            self.nodes[0].tokens.insert(token, n);
        }
        self.drive();
    }

    fn drive(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..2 {
                let mut group = Vec::new();
                while let Some(out) = self.nodes[i].client.poll_output() {
                    moved = true;
                    self.client_output(i, out, &mut group);
                }
                if !group.is_empty() {
                    self.nodes[i].pending.push_back(group);
                }
            }
            let mut ends: Vec<support::End<'_>> = self.nodes.iter_mut().map(Node::end).collect();
            moved |= support::deliver_broker_outputs(&mut self.broker, self.now, &mut ends);
            if !moved {
                return;
            }
        }
    }

    fn client_output(&mut self, i: usize, out: ClientOutput, group: &mut Vec<(u64, StoreOp)>) {
        let end = self.nodes[i].end();
        let Some(out) = support::client_output(&mut self.broker, self.now, end, out) else {
            return;
        };
        match out {
            ClientOutput::Store { seq, op } => group.push((seq, op)),
            ClientOutput::Event(ClientEvent::Message(m)) if i == 1 => {
                *self
                    .delivered
                    .entry(number(&m.publish.payload))
                    .or_default() += 1;
            }
            ClientOutput::Event(ClientEvent::Published { token, .. }) if i == 0 => {
                if let Some(n) = self.nodes[0].tokens.remove(&token) {
                    self.owed.insert(n);
                }
            }
            _ => {}
        }
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(at) =
            support::next_timer(&self.broker, self.nodes.iter().map(|n| &n.client), end)
        {
            self.now = self.now.max(at);
            let clients = self.nodes.iter_mut().map(|n| &mut n.client);
            support::fire_timers(&mut self.broker, self.now, clients);
            self.drive();
        }
        self.now = end;
        self.drive();
    }

    /// Heals everything and lets every commit and exchange finish.
    fn settle(&mut self) {
        for i in 0..2 {
            self.nodes[i].link_up = true;
        }
        for _ in 0..200 {
            for i in 0..2 {
                let groups = self.nodes[i].pending.len();
                self.commit(i, groups);
            }
            self.advance(Duration::from_millis(500));
            let quiet = self.nodes.iter().all(|n| {
                n.pending.is_empty()
                    && n.client.is_connected()
                    && n.client.inflight_len() == 0
                    && n.client.queued_len() == 0
                    && !n.client.awaiting_commit()
            });
            if quiet {
                return;
            }
        }
        panic!(
            "no quiescence: pub inflight {} queued {}, sub connected {}",
            self.nodes[0].client.inflight_len(),
            self.nodes[0].client.queued_len(),
            self.nodes[1].client.is_connected()
        );
    }
}

fn run(steps: &[Step]) -> Result<(), TestCaseError> {
    let mut world = World::new();
    for step in steps {
        match *step {
            Step::Publish(qos) => world.publish(qos),
            Step::Commit(n, k) => world.commit(n, k),
            Step::Fail(n) => world.fail(n),
            Step::Crash(n) => world.crash(n),
            Step::Cut(n) => world.cut(n),
            Step::Heal(n) => world.nodes[n].link_up = true,
            Step::Advance(ms) => world.advance(Duration::from_millis(ms)),
        }
    }
    world.settle();
    for n in &world.owed {
        prop_assert!(
            world.delivered.contains_key(n),
            "payload {n} ({:?}) was stored or completed and never delivered",
            world.qos_of.get(n)
        );
    }
    for (n, count) in &world.delivered {
        if world.qos_of.get(n) == Some(&QoS::ExactlyOnce) {
            prop_assert_eq!(*count, 1, "QoS 2 payload {} delivered {} times", n, count);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("CLIENT_STORE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300),
        ..ProptestConfig::default()
    })]

    #[test]
    fn crashes_lose_nothing_stored_and_never_duplicate_qos2(
        steps in proptest::collection::vec(step(), 1..60)
    ) {
        run(&steps)?;
    }
}

/// The same world without crashes or failures, as a baseline that must also hold.
#[test]
fn a_plain_run_delivers_everything_once() {
    let mut steps = Vec::new();
    for i in 0..20 {
        steps.push(Step::Publish(if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        }));
        steps.push(Step::Commit(i % 2, 2));
    }
    run(&steps).unwrap();
}

/// Drains keeping the order of what went to the transport: packets, and "close".
fn wire(client: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(output) = client.poll_output() {
        match output {
            ClientOutput::Transmit(bytes) => {
                let mut buf = BytesMut::from(&bytes[..]);
                while let Some(p) =
                    decode_buf(&mut buf, ProtocolVersion::V3_1_1, MAX_PACKET_SIZE).unwrap()
                {
                    out.push(
                        format!("{p:?}")
                            .split(['(', ' '])
                            .next()
                            .unwrap()
                            .to_owned(),
                    );
                }
            }
            ClientOutput::CloseTransport => out.push("close".to_owned()),
            _ => {}
        }
    }
    out
}

/// A manual-ack client receives `packet`, acknowledges it, and disconnects at once, without a
/// drain in between: what goes to the transport from then on.
fn ack_then_disconnect(persistence: Persistence, packet: Packet) -> Vec<String> {
    let now = Instant::ZERO;
    let mut config = persistent("manual", persistence);
    config.manual_acks = true;
    let mut client = Client::new(config, now).unwrap();
    drain(&mut client, now);
    connack(&mut client, now, true);
    receive(&mut client, now, packet);
    let ack = drain(&mut client, now)
        .events
        .iter()
        .find_map(|e| match e {
            ClientEvent::Message(m) => m.ack,
            _ => None,
        })
        .unwrap();
    client.ack(now, ack).unwrap();
    client.disconnect(now);
    wire(&mut client)
}

#[test]
fn disconnect_sends_what_was_written_before_it_and_drops_what_waits_for_a_commit() {
    // No persistence: an acknowledgement made just before disconnect() goes out before it.
    assert_eq!(
        ack_then_disconnect(Persistence::Off, incoming(QoS::AtLeastOnce, 3)),
        ["PubAck", "Disconnect", "close"]
    );
    // Durable: the PUBREC waits for its identifier's commit, so disconnect() drops it (the
    // server resends the message on the next connection) and DISCONNECT goes at once.
    assert_eq!(
        ack_then_disconnect(Persistence::Durable, incoming(QoS::ExactlyOnce, 4)),
        ["Disconnect", "close"]
    );
}

#[test]
fn a_stalled_store_bounds_the_qos0_messages_held_for_it() {
    let now = Instant::ZERO;
    let mut config = persistent("stalled", Persistence::Durable);
    config.max_held = 100;
    let mut client = Client::new(config, now).unwrap();
    drain(&mut client, now);
    connack(&mut client, now, true);
    // A QoS 2 message whose identifier is not committed yet: everything after it waits.
    receive(&mut client, now, incoming(QoS::ExactlyOnce, 1));
    let pending = drain(&mut client, now).ops;
    for _ in 0..1_000 {
        receive(&mut client, now, incoming(QoS::AtMostOnce, 2));
    }
    assert!(drain(&mut client, now).events.is_empty());
    // 100 outputs wait: the PUBREC, the QoS 2 message and 98 QoS 0 ones.
    assert_eq!(client.dropped_qos0(), 902);
    done(&mut client, now, pending.last().unwrap().0);
    let released = drain(&mut client, now);
    assert!(matches!(released.packets.as_slice(), [Packet::PubRec(_)]));
    assert_eq!(released.events.len(), 99);
    assert!(
        matches!(&released.events[0], ClientEvent::Message(m) if m.publish.qos == QoS::ExactlyOnce)
    );
    // Nothing waits any more: QoS 0 messages go through again.
    receive(&mut client, now, incoming(QoS::AtMostOnce, 2));
    assert_eq!(drain(&mut client, now).events.len(), 1);
    assert_eq!(client.dropped_qos0(), 902);
}
