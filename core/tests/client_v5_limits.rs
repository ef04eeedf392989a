//! The core client keeps to what the server said in its CONNACK (MQTT 5.0: Maximum QoS, Retain
//! Available, Maximum Packet Size, Topic Alias Maximum, Receive Maximum), to the Topic Alias
//! Maximum it sent itself, and refuses configurations it could not connect with.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

#[path = "support/scripted.rs"]
mod scripted;

use bytes::Bytes;
use scripted::{Drained, Sim, messages, puback};
use surgemq_core::client::{
    Client, ClientConfig, ClientError, ClientEvent, ClientInput, ClientProtocolError, ConfigError,
    Token,
};
use surgemq_core::codec::{Packet, Properties, Property, ProtocolVersion, Publish, QoS};
use surgemq_core::string::MqttString;
use surgemq_core::time::Instant;
use surgemq_core::topic::TopicName;

const V5: ProtocolVersion = ProtocolVersion::V5;

fn config(id: &str) -> ClientConfig {
    scripted::config(V5, id, true)
}

/// A 5.0 client whose transport is up and whose CONNECT was sent (drained).
fn connecting(config: ClientConfig) -> Sim {
    let mut sim = Sim::new(config);
    sim.open();
    sim
}

/// The server answers the CONNECT with CONNACK Success and `properties`, no session present.
fn connack(sim: &mut Sim, properties: Properties) -> Drained {
    sim.connack_with(false, properties)
}

fn publish(
    sim: &mut Sim,
    t: &str,
    size: usize,
    qos: QoS,
    retain: bool,
    properties: Properties,
) -> Result<Token, ClientError> {
    sim.try_publish(t, Bytes::from(vec![b'x'; size]), qos, retain, properties)
}

/// A publish to `t`, not retained, without properties.
fn plain(sim: &mut Sim, qos: QoS, size: usize) -> Result<Token, ClientError> {
    publish(sim, "t", size, qos, false, Properties::new())
}

fn incoming(t: &str, alias: Option<u16>) -> Packet {
    let mut properties = Properties::new();
    if let Some(alias) = alias {
        properties.push(Property::TopicAlias(alias));
    }
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: if t.is_empty() {
            TopicName::alias_only()
        } else {
            scripted::topic(t)
        },
        packet_id: None,
        properties,
        payload: Bytes::from_static(b"m"),
    })
}

fn message_topics(d: &Drained) -> Vec<String> {
    messages(&d.events)
        .iter()
        .map(|p| p.topic.as_str().to_owned())
        .collect()
}

fn failed(d: &Drained) -> Vec<ClientError> {
    d.events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Failed { error, .. } => Some(*error),
            _ => None,
        })
        .collect()
}

/// The client reconnects after its backoff, at a minute: timer, transport up, CONNECT sent.
fn reopen_a_minute_later(sim: &mut Sim) {
    sim.advance_to(Instant::from_millis(60_000));
    sim.open();
}

/// MQTT 3.1.1 [MQTT-3.1.3-7]: an empty client identifier only with a clean session; MQTT 3.1:
/// 1 to 23 bytes. MQTT 5.0 lets the server assign one for any session.
#[test]
fn configurations_that_cannot_connect_are_refused_before_anything_is_sent() {
    let mut c = ClientConfig::new(MqttString::new("").unwrap());
    c.clean_start = false;
    assert_eq!(
        Client::new(c.clone(), Instant::ZERO).err(),
        Some(ConfigError::EmptyClientIdNeedsCleanSession)
    );
    c.clean_start = true;
    assert!(Client::new(c.clone(), Instant::ZERO).is_ok());
    c.clean_start = false;
    c.version = V5;
    assert!(Client::new(c.clone(), Instant::ZERO).is_ok());

    c.version = ProtocolVersion::V3_1;
    c.clean_start = true;
    assert_eq!(c.check(), Err(ConfigError::ClientIdLengthV31(0)));
    c.client_id = MqttString::new(&"i".repeat(24)).unwrap();
    assert_eq!(c.check(), Err(ConfigError::ClientIdLengthV31(24)));
    c.client_id = MqttString::new(&"i".repeat(23)).unwrap();
    assert_eq!(c.check(), Ok(()));
}

/// MQTT 5.0 [MQTT-3.2.2-11]: never above the server's Maximum QoS — refused while connected,
/// dropped unsent (Failed) when it was queued before the CONNACK said so.
#[test]
fn publishes_above_the_servers_maximum_qos_are_never_sent() {
    let mut sim = connecting(config("q"));
    let queued_qos2 = plain(&mut sim, QoS::ExactlyOnce, 1);
    let queued_qos1 = plain(&mut sim, QoS::AtLeastOnce, 1);
    let d = connack(
        &mut sim,
        Properties::from_vec(vec![Property::MaximumQoS(1)]),
    );
    let sent = d.publishes();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].qos, QoS::AtLeastOnce);
    assert_eq!(
        failed(&d),
        vec![ClientError::QosNotSupported(QoS::AtLeastOnce)]
    );
    assert!(d.events.iter().any(|e| matches!(
        e,
        ClientEvent::Failed { token, .. } if Ok(*token) == queued_qos2
    )));
    assert!(queued_qos1.is_ok());

    assert_eq!(
        plain(&mut sim, QoS::ExactlyOnce, 1),
        Err(ClientError::QosNotSupported(QoS::AtLeastOnce))
    );
    plain(&mut sim, QoS::AtMostOnce, 1).unwrap();
    assert!(
        sim.drain()
            .publishes()
            .iter()
            .all(|p| p.qos <= QoS::AtLeastOnce)
    );
}

/// MQTT 5.0 [MQTT-3.2.2-14]: Retain Available 0 — no PUBLISH with RETAIN 1.
#[test]
fn retained_publishes_are_never_sent_to_a_server_without_retain() {
    let mut sim = connecting(config("r"));
    publish(&mut sim, "t", 1, QoS::AtMostOnce, true, Properties::new()).unwrap();
    let d = connack(
        &mut sim,
        Properties::from_vec(vec![Property::RetainAvailable(0)]),
    );
    assert!(d.publishes().is_empty());
    assert_eq!(failed(&d), vec![ClientError::RetainNotSupported]);
    assert_eq!(
        publish(&mut sim, "t", 1, QoS::AtLeastOnce, true, Properties::new()),
        Err(ClientError::RetainNotSupported)
    );
    plain(&mut sim, QoS::AtLeastOnce, 1).unwrap();
    let sent = sim.drain();
    assert_eq!(sent.publishes().len(), 1);
    assert!(sent.publishes().iter().all(|p| !p.retain));
}

/// MQTT 5.0 [MQTT-3.2.2-15]: no packet larger than the server's Maximum Packet Size.
#[test]
fn packets_larger_than_the_servers_maximum_are_never_sent() {
    let mut sim = connecting(config("m"));
    plain(&mut sim, QoS::AtLeastOnce, 500).unwrap();
    plain(&mut sim, QoS::AtLeastOnce, 10).unwrap();
    let d = connack(
        &mut sim,
        Properties::from_vec(vec![Property::MaximumPacketSize(64)]),
    );
    assert!(matches!(
        failed(&d).as_slice(),
        [ClientError::PacketTooLarge { max: 64, size }] if *size > 500
    ));
    assert_eq!(d.publishes().len(), 1);
    assert!(d.sizes.iter().all(|&s| s <= 64), "sizes {:?}", d.sizes);

    // While connected: refused at once, for every packet kind that can grow.
    assert!(matches!(
        plain(&mut sim, QoS::AtMostOnce, 100),
        Err(ClientError::PacketTooLarge { max: 64, .. })
    ));
    let long = "f".repeat(80);
    assert!(matches!(
        sim.subscribe(&[(&long, QoS::AtMostOnce)]),
        Err(ClientError::PacketTooLarge { max: 64, .. })
    ));
    assert!(matches!(
        sim.unsubscribe(&[&long]),
        Err(ClientError::PacketTooLarge { max: 64, .. })
    ));
    // The largest publish that fits goes.
    let mut size = 0;
    while plain(&mut sim, QoS::AtMostOnce, size + 1).is_ok() {
        size += 1;
    }
    let d = sim.drain();
    assert_eq!(d.sizes.iter().max(), Some(&64));
}

/// MQTT 5.0 [MQTT-3.2.2-17] [MQTT-3.2.2-18] [MQTT-3.3.2-9]: a Topic Alias goes out only within
/// the server's Topic Alias Maximum; [MQTT-3.3.2-7]: the topic name always goes with it, so a
/// resend on a new connection does not depend on the old connection's aliases.
#[test]
fn topic_aliases_go_out_only_within_the_servers_maximum() {
    let alias = |n| Properties::from_vec(vec![Property::TopicAlias(n)]);

    // No Topic Alias Maximum from the server: no alias at all.
    let mut sim = connecting(config("a"));
    connack(&mut sim, Properties::new());
    publish(&mut sim, "x/y", 1, QoS::AtMostOnce, false, alias(1)).unwrap();
    let d = sim.drain();
    let sent = d.publishes();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].topic.as_str(), "x/y");
    assert_eq!(sent[0].properties.topic_alias(), None);

    // A maximum of 5: alias 5 goes, alias 6 does not.
    let mut c = config("b");
    c.clean_start = false;
    let mut sim = connecting(c);
    connack(
        &mut sim,
        Properties::from_vec(vec![Property::TopicAliasMaximum(5)]),
    );
    publish(&mut sim, "x/y", 1, QoS::AtLeastOnce, false, alias(5)).unwrap();
    publish(&mut sim, "x/z", 1, QoS::AtMostOnce, false, alias(6)).unwrap();
    let d = sim.drain();
    let sent = d.publishes();
    assert_eq!(sent[0].properties.topic_alias(), Some(5));
    assert_eq!(sent[0].topic.as_str(), "x/y");
    assert_eq!(sent[1].properties.topic_alias(), None);
    assert_eq!(sent[1].topic.as_str(), "x/z");

    // Reconnect to a server that takes no aliases: the unacknowledged publish is resent with
    // its topic name and without the alias.
    sim.client.handle_input(sim.now, ClientInput::TransportDown);
    sim.drain();
    reopen_a_minute_later(&mut sim);
    let d = sim.connack_with(true, Properties::new());
    let resent = d.publishes();
    assert_eq!(resent.len(), 1);
    assert!(resent[0].dup);
    assert_eq!(resent[0].topic.as_str(), "x/y");
    assert_eq!(resent[0].properties.topic_alias(), None);
}

/// MQTT 5.0 [MQTT-3.3.4-6]: a PUBLISH from the client never carries a Subscription Identifier
/// (say, of a received message being forwarded with its properties).
#[test]
fn subscription_identifiers_are_left_out_of_publishes() {
    let mut sim = connecting(config("s"));
    connack(&mut sim, Properties::new());
    let properties = Properties::from_vec(vec![
        Property::SubscriptionIdentifier(7),
        Property::UserProperty(MqttString::new("k").unwrap(), MqttString::new("v").unwrap()),
        Property::SubscriptionIdentifier(9),
    ]);
    publish(&mut sim, "t", 1, QoS::AtLeastOnce, false, properties).unwrap();
    let d = sim.drain();
    let sent = d.publishes();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].properties.subscription_identifiers().count(), 0);
    assert_eq!(sent[0].properties.user_properties().count(), 1);
}

/// MQTT 5.0 [MQTT-3.3.2-10]: every Topic Alias from 1 to the maximum we sent is accepted, and
/// resolves to the topic it was set with; [MQTT-3.3.2-7]: not on the next connection. An alias
/// above our maximum, or an unknown one, is a protocol error that closes the connection.
#[test]
fn incoming_topic_aliases_resolve_within_our_maximum_and_die_with_the_connection() {
    let mut c = config("in");
    c.connect_properties = Properties::from_vec(vec![Property::TopicAliasMaximum(3)]);
    let mut sim = connecting(c);
    connack(&mut sim, Properties::new());
    for alias in 1..=3u16 {
        sim.receive(incoming(&format!("t/{alias}"), Some(alias)));
    }
    sim.receive(incoming("", Some(2)));
    sim.receive(incoming("t/new", Some(2)));
    sim.receive(incoming("", Some(2)));
    let d = sim.feed(incoming("", Some(1)));
    assert_eq!(
        message_topics(&d),
        ["t/1", "t/2", "t/3", "t/2", "t/new", "t/new", "t/1"]
    );
    assert!(!d.closed);

    // Above our maximum.
    let d = sim.feed(incoming("t/4", Some(4)));
    assert!(message_topics(&d).is_empty());
    assert!(d.closed);
    assert!(d.events.contains(&ClientEvent::ProtocolError(
        ClientProtocolError::TopicAlias(4)
    )));

    // A new connection starts with no aliases.
    reopen_a_minute_later(&mut sim);
    connack(&mut sim, Properties::new());
    let d = sim.feed(incoming("", Some(1)));
    assert!(message_topics(&d).is_empty());
    assert!(d.closed);
    assert!(d.events.contains(&ClientEvent::ProtocolError(
        ClientProtocolError::TopicAlias(1)
    )));
}

/// Without a Topic Alias Maximum in our CONNECT (0), any alias is a protocol error.
#[test]
fn an_alias_we_never_allowed_closes_the_connection() {
    let mut sim = connecting(config("none"));
    connack(&mut sim, Properties::new());
    let d = sim.feed(incoming("t", Some(1)));
    assert!(message_topics(&d).is_empty());
    assert!(d.closed);
}

/// MQTT 5.0 [MQTT-3.3.4-8]: having Receive Maximum publishes unacknowledged does not delay a
/// SUBSCRIBE or UNSUBSCRIBE queued behind further publishes.
#[test]
fn a_full_window_does_not_delay_subscribe_or_unsubscribe() {
    let mut sim = connecting(config("w"));
    connack(
        &mut sim,
        Properties::from_vec(vec![Property::ReceiveMaximum(1)]),
    );
    plain(&mut sim, QoS::AtLeastOnce, 1).unwrap();
    plain(&mut sim, QoS::AtLeastOnce, 2).unwrap();
    sim.subscribe(&[("s/#", QoS::AtLeastOnce)]).unwrap();
    sim.unsubscribe(&["s/#"]).unwrap();
    let d = sim.drain();
    let kinds: Vec<&str> = d
        .packets
        .iter()
        .map(|p| match p {
            Packet::Publish(_) => "PUBLISH",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["PUBLISH", "SUBSCRIBE", "UNSUBSCRIBE"]);

    // The second publish goes once the first is acknowledged.
    let first = d.publishes()[0].packet_id.unwrap();
    let d = sim.feed(puback(first.get()));
    let sent = d.publishes();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].payload.len(), 2);
}

/// MQTT 5.0 [MQTT-3.1.2-21] [MQTT-3.2.2-21]: the CONNACK's Server Keep Alive replaces the keep
/// alive the client asked for: PINGREQ after that many idle seconds, not ours.
#[test]
fn the_servers_keep_alive_replaces_ours() {
    let mut c = config("k");
    c.keep_alive = 60;
    let mut sim = connecting(c);
    connack(
        &mut sim,
        Properties::from_vec(vec![Property::ServerKeepAlive(5)]),
    );
    assert_eq!(sim.client.poll_timeout(), Some(Instant::from_millis(5_000)));
    sim.advance_to(Instant::from_millis(5_000));
    let d = sim.drain();
    assert!(matches!(d.packets.as_slice(), [Packet::PingReq]));
}

/// MQTT 5.0 [MQTT-3.1.2-30]: with an Authentication Method in CONNECT, nothing but AUTH or
/// DISCONNECT before the CONNACK — commands made meanwhile wait for it, and the keep alive sends
/// no PINGREQ.
#[test]
fn with_an_authentication_method_nothing_is_sent_before_the_connack() {
    let mut c = config("auth");
    c.keep_alive = 1;
    c.connect_properties = Properties::from_vec(vec![Property::AuthenticationMethod(
        MqttString::new("SCRAM-SHA-1").unwrap(),
    )]);
    let mut sim = connecting(c);
    plain(&mut sim, QoS::AtLeastOnce, 1).unwrap();
    plain(&mut sim, QoS::AtMostOnce, 1).unwrap();
    sim.subscribe(&[("a/#", QoS::AtLeastOnce)]).unwrap();
    sim.unsubscribe(&["b"]).unwrap();
    sim.advance_to(Instant::from_millis(5_000));
    let before = sim.drain();
    assert!(before.packets.is_empty(), "{:?}", before.packets);

    let after = connack(&mut sim, Properties::new());
    assert_eq!(after.publishes().len(), 2);
    assert!(
        after
            .packets
            .iter()
            .any(|p| matches!(p, Packet::Subscribe(_)))
    );
    assert!(
        after
            .packets
            .iter()
            .any(|p| matches!(p, Packet::Unsubscribe(_)))
    );
}
