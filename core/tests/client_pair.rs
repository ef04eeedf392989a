//! The client state machine against the broker state machine, wired in memory with virtual
//! time (a quinn-style pair): completions, QoS flows, keep-alive, reconnect and session resume,
//! back-pressure, manual acks, and a property test of the packet-id / in-flight bookkeeping.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use surgemq_core::broker::{AuthMode, Broker, BrokerConfig, ConnId};
use surgemq_core::client::{Client, ClientConfig, ClientError, ClientEvent, ClientOutput, Token};
use surgemq_core::codec::{
    Properties, ProtocolVersion, PubAckReason, QoS, SubAckReason, SubscriptionOptions,
};
use surgemq_core::string::MqttString;
use surgemq_core::time::Instant;
use surgemq_core::topic::{TopicFilter, TopicName};

/// One broker, several clients, in-memory links, virtual time.
struct Pair {
    now: Instant,
    broker: Broker,
    clients: Vec<Node>,
}

struct Node {
    client: Client,
    conn: Option<ConnId>,
    /// When false, the link drops everything (a partition) until `heal`.
    link_up: bool,
    events: Vec<ClientEvent>,
}

impl Node {
    fn end(&mut self) -> support::End<'_> {
        support::End {
            client: &mut self.client,
            conn: &mut self.conn,
            link_up: self.link_up,
        }
    }
}

impl Pair {
    fn new() -> Self {
        Self::with_broker(BrokerConfig {
            auth: AuthMode::AllowAll,
            sys_interval: None,
            ..BrokerConfig::default()
        })
    }

    fn with_broker(config: BrokerConfig) -> Self {
        Self {
            now: Instant::ZERO,
            broker: Broker::new(config, Instant::ZERO),
            clients: Vec::new(),
        }
    }

    fn add(&mut self, config: ClientConfig) -> usize {
        self.clients.push(Node {
            client: Client::new(config, self.now).unwrap(),
            conn: None,
            link_up: true,
            events: Vec::new(),
        });
        self.drive();
        self.clients.len() - 1
    }

    fn client(&mut self, i: usize) -> &mut Client {
        &mut self.clients[i].client
    }

    fn events(&mut self, i: usize) -> Vec<ClientEvent> {
        std::mem::take(&mut self.clients[i].events)
    }

    /// Moves bytes both ways until nothing moves.
    fn drive(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.clients.len() {
                while let Some(out) = self.clients[i].client.poll_output() {
                    moved = true;
                    let end = self.clients[i].end();
                    // Persistence is off in these tests: no store operations.
                    if let Some(ClientOutput::Event(e)) =
                        support::client_output(&mut self.broker, self.now, end, out)
                    {
                        self.clients[i].events.push(e);
                    }
                }
            }
            let mut ends: Vec<support::End<'_>> = self.clients.iter_mut().map(Node::end).collect();
            moved |= support::deliver_broker_outputs(&mut self.broker, self.now, &mut ends);
            if !moved {
                return;
            }
        }
    }

    /// Advances virtual time by `d`, firing every timer due on the way.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(at) =
            support::next_timer(&self.broker, self.clients.iter().map(|n| &n.client), end)
        {
            self.now = self.now.max(at);
            let clients = self.clients.iter_mut().map(|n| &mut n.client);
            support::fire_timers(&mut self.broker, self.now, clients);
            self.drive();
        }
        self.now = end;
        self.drive();
    }

    /// Cuts the link: both ends see the transport go down.
    fn cut(&mut self, i: usize) {
        self.clients[i].link_up = false;
        support::cut(&mut self.broker, self.now, self.clients[i].end());
        self.drive();
    }

    fn heal(&mut self, i: usize) {
        self.clients[i].link_up = true;
    }
}

fn config(id: &str) -> ClientConfig {
    ClientConfig::new(MqttString::new(id).unwrap())
}

fn topic(s: &str) -> TopicName {
    TopicName::parse(s).unwrap()
}

fn filter(s: &str, qos: QoS) -> Vec<(TopicFilter, SubscriptionOptions)> {
    vec![(
        TopicFilter::parse(s).unwrap(),
        SubscriptionOptions::qos(qos),
    )]
}

fn payloads(events: &[ClientEvent]) -> Vec<Bytes> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message(m) => Some(m.publish.payload.clone()),
            _ => None,
        })
        .collect()
}

fn completed(events: &[ClientEvent]) -> Vec<Token> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Published { token, .. } => Some(*token),
            _ => None,
        })
        .collect()
}

fn connected_subscriber(pair: &mut Pair, id: &str, f: &str, qos: QoS, clean: bool) -> usize {
    let mut c = config(id);
    c.clean_start = clean;
    let s = pair.add(c);
    let now = pair.now;
    let token = pair
        .client(s)
        .subscribe(now, filter(f, qos), Properties::new())
        .unwrap();
    pair.drive();
    let events = pair.events(s);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ClientEvent::Subscribed { token: t, .. } if *t == token))
    );
    s
}

#[test]
fn connect_subscribe_and_publish_at_every_qos_complete_with_events() {
    for version in [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1] {
        let mut pair = Pair::new();
        let mut sub_config = config("sub");
        sub_config.version = version;
        let s = pair.add(sub_config);
        assert!(pair.client(s).is_connected());
        assert!(matches!(
            pair.events(s)[0],
            ClientEvent::Connected {
                session_present: false,
                ..
            }
        ));
        let now = pair.now;
        let token = pair
            .client(s)
            .subscribe(now, filter("t/#", QoS::ExactlyOnce), Properties::new())
            .unwrap();
        pair.drive();
        let events = pair.events(s);
        assert!(events.contains(&ClientEvent::Subscribed {
            token,
            reasons: vec![SubAckReason::GrantedQoS2]
        }));

        let p = pair.add(config("pub"));
        pair.events(p);
        let mut tokens = Vec::new();
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            let now = pair.now;
            tokens.push(
                pair.client(p)
                    .publish(
                        now,
                        topic("t/x"),
                        Bytes::from(vec![i as u8]),
                        qos,
                        false,
                        Properties::new(),
                    )
                    .unwrap(),
            );
        }
        pair.drive();
        // Every publish completes (QoS 0 on hand-off, 1 on PUBACK, 2 on PUBCOMP).
        assert_eq!(completed(&pair.events(p)), tokens);
        assert_eq!(pair.client(p).inflight_len(), 0);
        assert_eq!(payloads(&pair.events(s)), [vec![0u8], vec![1], vec![2]]);
    }
}

#[test]
fn keep_alive_sends_pingreq_and_survives_idle_periods() {
    let mut pair = Pair::new();
    let mut c = config("idle");
    c.keep_alive = 5;
    let i = pair.add(c);
    pair.events(i);
    // Ten keep-alive periods of silence: the client pings, the broker keeps it.
    pair.advance(Duration::from_secs(50));
    assert!(pair.client(i).is_connected());
    assert!(pair.events(i).is_empty());
    assert_eq!(pair.broker.connection_count(), 1);
}

#[test]
fn lost_ping_response_reconnects_with_backoff() {
    let mut pair = Pair::new();
    let mut c = config("flaky");
    c.keep_alive = 2;
    let i = pair.add(c);
    pair.events(i);
    pair.cut(i);
    assert!(!pair.client(i).is_connected());
    assert!(pair.events(i).contains(&ClientEvent::Disconnected));
    // While the link is down every attempt fails; once healed the client is back.
    pair.advance(Duration::from_secs(5));
    assert!(!pair.client(i).is_connected());
    pair.heal(i);
    pair.advance(Duration::from_secs(60));
    assert!(pair.client(i).is_connected());
}

#[test]
fn persistent_session_resumes_and_redelivers_what_was_missed() {
    let mut pair = Pair::new();
    let s = connected_subscriber(&mut pair, "durable", "d/#", QoS::ExactlyOnce, false);
    let p = pair.add(config("pub"));
    pair.cut(s);
    for i in 0..5u8 {
        let now = pair.now;
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        pair.client(p)
            .publish(
                now,
                topic("d/x"),
                Bytes::from(vec![i]),
                qos,
                false,
                Properties::new(),
            )
            .unwrap();
    }
    pair.drive();
    assert_eq!(completed(&pair.events(p)).len(), 5);
    pair.heal(s);
    pair.advance(Duration::from_secs(60));
    let events = pair.events(s);
    assert!(events.iter().any(|e| matches!(
        e,
        ClientEvent::Connected {
            session_present: true,
            ..
        }
    )));
    assert_eq!(
        payloads(&events),
        (0..5u8).map(|i| vec![i]).collect::<Vec<_>>()
    );
}

#[test]
fn unacknowledged_publishes_are_resent_with_dup_after_reconnect_and_complete_once() {
    let mut pair = Pair::new();
    let s = connected_subscriber(&mut pair, "sub", "r/#", QoS::ExactlyOnce, false);
    let mut pc = config("pub");
    pc.clean_start = false;
    let p = pair.add(pc);
    pair.events(p);
    // The publisher's link drops everything: its PUBLISH never arrives.
    pair.clients[p].link_up = false;
    let now = pair.now;
    let t1 = pair
        .client(p)
        .publish(
            now,
            topic("r/1"),
            Bytes::from_static(b"one"),
            QoS::AtLeastOnce,
            false,
            Properties::new(),
        )
        .unwrap();
    let t2 = pair
        .client(p)
        .publish(
            now,
            topic("r/2"),
            Bytes::from_static(b"two"),
            QoS::ExactlyOnce,
            false,
            Properties::new(),
        )
        .unwrap();
    pair.drive();
    assert_eq!(pair.client(p).inflight_len(), 2);
    pair.cut(p);
    pair.heal(p);
    pair.advance(Duration::from_secs(60));
    assert_eq!(completed(&pair.events(p)), [t1, t2]);
    assert_eq!(
        payloads(&pair.events(s)),
        [b"one".to_vec(), b"two".to_vec()]
    );
}

#[test]
fn subscriptions_are_remade_when_the_server_has_no_session() {
    let mut pair = Pair::new();
    // Clean session: the broker forgets everything at disconnect; the client resubscribes.
    let s = connected_subscriber(&mut pair, "forgetful", "f/#", QoS::AtLeastOnce, true);
    pair.cut(s);
    assert_eq!(pair.broker.subscription_count(), 0);
    pair.heal(s);
    pair.advance(Duration::from_secs(60));
    assert!(pair.client(s).is_connected());
    assert_eq!(pair.broker.subscription_count(), 1);
    pair.events(s);
    let p = pair.add(config("pub"));
    let now = pair.now;
    pair.client(p)
        .publish(
            now,
            topic("f/x"),
            Bytes::from_static(b"again"),
            QoS::AtLeastOnce,
            false,
            Properties::new(),
        )
        .unwrap();
    pair.drive();
    assert_eq!(payloads(&pair.events(s)), [b"again".to_vec()]);
}

#[test]
fn a_full_queue_is_an_error_not_unbounded_memory() {
    let mut pair = Pair::new();
    let mut c = config("bounded");
    c.max_queued = 3;
    c.max_inflight = 1;
    let i = pair.add(c);
    pair.cut(i);
    let now = pair.now;
    for _ in 0..3 {
        pair.client(i)
            .publish(
                now,
                topic("q"),
                Bytes::new(),
                QoS::AtLeastOnce,
                false,
                Properties::new(),
            )
            .unwrap();
    }
    assert_eq!(
        pair.client(i).publish(
            now,
            topic("q"),
            Bytes::new(),
            QoS::AtLeastOnce,
            false,
            Properties::new()
        ),
        Err(ClientError::QueueFull)
    );
    assert_eq!(pair.client(i).queued_len(), 3);
    // Reconnected, the window of 1 lets them through one at a time; all complete.
    pair.heal(i);
    pair.advance(Duration::from_secs(60));
    assert_eq!(completed(&pair.events(i)).len(), 3);
    assert_eq!(pair.client(i).queued_len(), 0);
}

#[test]
fn the_in_flight_window_is_never_exceeded() {
    let mut pair = Pair::new();
    let mut c = config("windowed");
    c.max_inflight = 2;
    let i = pair.add(c);
    pair.clients[i].link_up = false; // acks never come back
    let now = pair.now;
    for _ in 0..6 {
        pair.client(i)
            .publish(
                now,
                topic("w"),
                Bytes::new(),
                QoS::AtLeastOnce,
                false,
                Properties::new(),
            )
            .unwrap();
    }
    pair.drive();
    assert_eq!(pair.client(i).inflight_len(), 2);
    assert_eq!(pair.client(i).queued_len(), 4);
}

#[test]
fn manual_acks_hold_back_the_acknowledgement_until_asked() {
    let mut pair = Pair::new();
    let mut c = config("manual");
    c.manual_acks = true;
    c.clean_start = false;
    let s = pair.add(c);
    let now = pair.now;
    pair.client(s)
        .subscribe(now, filter("m", QoS::AtLeastOnce), Properties::new())
        .unwrap();
    pair.drive();
    pair.events(s);
    let p = pair.add(config("pub"));
    let now = pair.now;
    pair.client(p)
        .publish(
            now,
            topic("m"),
            Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
            false,
            Properties::new(),
        )
        .unwrap();
    pair.drive();
    let events = pair.events(s);
    let ack = match &events[..] {
        [ClientEvent::Message(m)] => m.ack.unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(pair.broker.inflight_messages("manual"), Some(1));
    let now = pair.now;
    pair.client(s).ack(now, ack).unwrap();
    pair.drive();
    assert_eq!(pair.broker.inflight_messages("manual"), Some(0));
    // The session resumes after a reconnect: an ack given then is still valid.
    pair.cut(s);
    pair.heal(s);
    pair.advance(Duration::from_secs(60));
    let now = pair.now;
    assert_eq!(pair.client(s).ack(now, ack), Ok(()));
}

/// A manual-ack subscriber on `t` that has just received one message from a publisher;
/// returns its index and that message's ack token.
fn manual_subscriber_with_one_message(
    pair: &mut Pair,
    id: &str,
    t: &str,
    qos: QoS,
    clean: bool,
) -> (usize, surgemq_core::client::AckToken) {
    let mut c = config(id);
    c.manual_acks = true;
    c.clean_start = clean;
    let s = pair.add(c);
    let now = pair.now;
    pair.client(s)
        .subscribe(now, filter(t, qos), Properties::new())
        .unwrap();
    pair.drive();
    pair.events(s);
    let p = pair.add(config(&format!("{id}-pub")));
    let now = pair.now;
    pair.client(p)
        .publish(
            now,
            topic(t),
            Bytes::from_static(b"x"),
            qos,
            false,
            Properties::new(),
        )
        .unwrap();
    pair.drive();
    let ack = match &pair.events(s)[..] {
        [ClientEvent::Message(m)] => m.ack.unwrap(),
        other => panic!("{other:?}"),
    };
    (s, ack)
}

#[test]
fn manual_qos2_redelivered_after_reconnect_is_acknowledged_once_the_application_acks() {
    let mut pair = Pair::new();
    let (s, ack) =
        manual_subscriber_with_one_message(&mut pair, "manual2", "m2", QoS::ExactlyOnce, false);
    // The link drops before the application acks; the broker resends the PUBLISH (DUP) on
    // reconnect. The client does not deliver it twice, and once the application acks, the
    // exchange completes.
    pair.cut(s);
    pair.heal(s);
    pair.advance(Duration::from_secs(60));
    assert!(
        payloads(&pair.events(s)).is_empty(),
        "QoS 2 delivered twice"
    );
    assert_eq!(pair.broker.inflight_messages("manual2"), Some(1));
    let now = pair.now;
    pair.client(s).ack(now, ack).unwrap();
    pair.drive();
    assert_eq!(pair.broker.inflight_messages("manual2"), Some(0));
}

#[test]
fn acks_of_a_lost_session_are_refused() {
    let mut pair = Pair::new();
    // Clean start: every reconnect begins a new session.
    let (s, ack) =
        manual_subscriber_with_one_message(&mut pair, "manual3", "m3", QoS::AtLeastOnce, true);
    pair.cut(s);
    pair.heal(s);
    pair.advance(Duration::from_secs(60));
    let now = pair.now;
    assert_eq!(pair.client(s).ack(now, ack), Err(ClientError::StaleAck));
}

#[test]
fn reconnect_jitter_replays_with_the_same_seed() {
    let timeline = |seed: u64| {
        let mut pair = Pair::new();
        let mut c = config("j");
        c.seed = seed;
        let i = pair.add(c);
        pair.cut(i);
        let mut wakeups = Vec::new();
        for _ in 0..6 {
            let at = pair.client(i).poll_timeout().unwrap();
            wakeups.push(at.as_millis());
            pair.advance(at - pair.now);
        }
        wakeups
    };
    assert_eq!(timeline(7), timeline(7));
    assert_ne!(timeline(7), timeline(8));
    // Backoff grows: each wait is at least half the doubled base.
    let t = timeline(7);
    assert!(t.windows(2).all(|w| w[1] > w[0]));
}

#[test]
fn refused_connection_is_reported_with_its_reason() {
    let mut pair = Pair::with_broker(BrokerConfig {
        auth: AuthMode::AllowAll,
        sys_interval: None,
        max_client_id_len: 8,
        ..BrokerConfig::default()
    });
    // An identifier longer than the broker allows: identifier rejected.
    let mut c = config("a-client-id-too-long");
    c.reconnect = None;
    let i = pair.add(c);
    let events = pair.events(i);
    assert!(events.iter().any(|e| matches!(
        e,
        ClientEvent::Refused {
            reason: surgemq_core::codec::ConnectReason::ClientIdentifierNotValid
        }
    )));
    assert!(!pair.client(i).is_connected());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random publishes at QoS 1/2 with random link cuts: packet ids in flight are always
    /// distinct, the window holds, and in the end every publish completes exactly once.
    #[test]
    fn packet_ids_stay_unique_and_every_publish_completes_once(
        ops in proptest::collection::vec((0u8..3, any::<bool>()), 1..60),
        window in 1u16..5,
    ) {
        let mut pair = Pair::new();
        let mut c = config("prop");
        c.max_inflight = window;
        c.clean_start = false;
        let i = pair.add(c);
        let mut issued = Vec::new();
        for (op, cut) in ops {
            let now = pair.now;
            let qos = if op == 0 { QoS::AtLeastOnce } else { QoS::ExactlyOnce };
            if let Ok(t) = pair.client(i).publish(now, topic("p"), Bytes::new(), qos, false, Properties::new()) {
                issued.push(t);
            }
            if cut {
                pair.clients[i].link_up = false;
                pair.drive();
                pair.cut(i);
                pair.heal(i);
            }
            pair.advance(Duration::from_millis(300));
            prop_assert!(pair.client(i).inflight_len() <= usize::from(window));
        }
        pair.advance(Duration::from_secs(120));
        let mut done: BTreeMap<Token, usize> = BTreeMap::new();
        for t in completed(&pair.events(i)) {
            *done.entry(t).or_default() += 1;
        }
        prop_assert_eq!(done.len(), issued.len());
        prop_assert!(done.values().all(|n| *n == 1));
        prop_assert_eq!(pair.client(i).inflight_len(), 0);
        let _ = PubAckReason::Success;
    }
}
