//! The core client keeps to what the server said in its CONNACK (MQTT 5.0: Maximum QoS, Retain
//! Available, Maximum Packet Size, Topic Alias Maximum, Receive Maximum), to the Topic Alias
//! Maximum it sent itself, and refuses configurations it could not connect with.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use bytes::{Bytes, BytesMut};
use surgemq_core::client::{
    Client, ClientConfig, ClientError, ClientEvent, ClientInput, ClientOutput, ClientProtocolError,
    ConfigError,
};
use surgemq_core::codec::{
    ConnAck, ConnectReason, MAX_PACKET_SIZE, Packet, Properties, Property, ProtocolVersion, PubAck,
    Publish, QoS, SubscriptionOptions,
};
use surgemq_core::string::MqttString;
use surgemq_core::time::Instant;
use surgemq_core::topic::{TopicFilter, TopicName};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// What one drain of the client produced; `sizes` are the encoded sizes of `packets`.
#[derive(Debug, Default)]
struct Drained {
    packets: Vec<Packet>,
    sizes: Vec<usize>,
    events: Vec<ClientEvent>,
    closed: bool,
    opened: bool,
}

fn drain(client: &mut Client) -> Drained {
    let mut d = Drained::default();
    while let Some(output) = client.poll_output() {
        match output {
            ClientOutput::OpenTransport => d.opened = true,
            ClientOutput::Transmit(bytes) => {
                let mut buf = BytesMut::from(&bytes[..]);
                loop {
                    let before = buf.len();
                    let Some(p) =
                        surgemq_core::codec::decode_buf(&mut buf, V5, MAX_PACKET_SIZE).unwrap()
                    else {
                        break;
                    };
                    d.sizes.push(before - buf.len());
                    d.packets.push(p);
                }
                assert!(buf.is_empty(), "a partial packet was transmitted");
            }
            ClientOutput::CloseTransport => d.closed = true,
            ClientOutput::Event(e) => d.events.push(e),
            ClientOutput::Store { .. } => {}
        }
    }
    d
}

fn receive(client: &mut Client, now: Instant, packet: Packet) {
    let mut buf = BytesMut::new();
    packet.encode(V5, &mut buf).unwrap();
    client.handle_input(now, ClientInput::Received(buf.freeze()));
}

fn config(id: &str) -> ClientConfig {
    let mut c = ClientConfig::new(MqttString::new(id).unwrap());
    c.version = V5;
    c
}

fn topic(s: &str) -> TopicName {
    TopicName::new(MqttString::new(s).unwrap()).unwrap()
}

/// A 5.0 client whose transport is up and whose CONNECT was sent (drained).
fn connecting(config: ClientConfig) -> Client {
    let mut client = Client::new(config, Instant::ZERO).unwrap();
    assert!(drain(&mut client).opened);
    client.handle_input(Instant::ZERO, ClientInput::TransportUp);
    let d = drain(&mut client);
    assert!(matches!(d.packets.as_slice(), [Packet::Connect(_)]));
    client
}

fn connack(client: &mut Client, properties: Properties) -> Drained {
    receive(
        client,
        Instant::ZERO,
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ConnectReason::Success,
            properties,
        }),
    );
    drain(client)
}

fn publish(
    client: &mut Client,
    t: &str,
    size: usize,
    qos: QoS,
    retain: bool,
    properties: Properties,
) -> Result<surgemq_core::client::Token, ClientError> {
    client.publish(
        Instant::ZERO,
        topic(t),
        Bytes::from(vec![b'x'; size]),
        qos,
        retain,
        properties,
    )
}

/// A publish to `t`, not retained, without properties.
fn plain(
    client: &mut Client,
    qos: QoS,
    size: usize,
) -> Result<surgemq_core::client::Token, ClientError> {
    publish(client, "t", size, qos, false, Properties::new())
}

fn publishes(d: &Drained) -> Vec<&Publish> {
    d.packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .collect()
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
            topic(t)
        },
        packet_id: None,
        properties,
        payload: Bytes::from_static(b"m"),
    })
}

fn message_topics(d: &Drained) -> Vec<String> {
    d.events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message(m) => Some(m.publish.topic.as_str().to_owned()),
            _ => None,
        })
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
    let mut client = connecting(config("q"));
    let queued_qos2 = plain(&mut client, QoS::ExactlyOnce, 1);
    let queued_qos1 = plain(&mut client, QoS::AtLeastOnce, 1);
    let d = connack(
        &mut client,
        Properties::from_vec(vec![Property::MaximumQoS(1)]),
    );
    let sent = publishes(&d);
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
        plain(&mut client, QoS::ExactlyOnce, 1),
        Err(ClientError::QosNotSupported(QoS::AtLeastOnce))
    );
    plain(&mut client, QoS::AtMostOnce, 1).unwrap();
    assert!(
        publishes(&drain(&mut client))
            .iter()
            .all(|p| p.qos <= QoS::AtLeastOnce)
    );
}

/// MQTT 5.0 [MQTT-3.2.2-14]: Retain Available 0 — no PUBLISH with RETAIN 1.
#[test]
fn retained_publishes_are_never_sent_to_a_server_without_retain() {
    let mut client = connecting(config("r"));
    publish(
        &mut client,
        "t",
        1,
        QoS::AtMostOnce,
        true,
        Properties::new(),
    )
    .unwrap();
    let d = connack(
        &mut client,
        Properties::from_vec(vec![Property::RetainAvailable(0)]),
    );
    assert!(publishes(&d).is_empty());
    assert_eq!(failed(&d), vec![ClientError::RetainNotSupported]);
    assert_eq!(
        publish(
            &mut client,
            "t",
            1,
            QoS::AtLeastOnce,
            true,
            Properties::new()
        ),
        Err(ClientError::RetainNotSupported)
    );
    plain(&mut client, QoS::AtLeastOnce, 1).unwrap();
    let sent = drain(&mut client);
    assert_eq!(publishes(&sent).len(), 1);
    assert!(publishes(&sent).iter().all(|p| !p.retain));
}

/// MQTT 5.0 [MQTT-3.2.2-15]: no packet larger than the server's Maximum Packet Size.
#[test]
fn packets_larger_than_the_servers_maximum_are_never_sent() {
    let mut client = connecting(config("m"));
    plain(&mut client, QoS::AtLeastOnce, 500).unwrap();
    plain(&mut client, QoS::AtLeastOnce, 10).unwrap();
    let d = connack(
        &mut client,
        Properties::from_vec(vec![Property::MaximumPacketSize(64)]),
    );
    assert!(matches!(
        failed(&d).as_slice(),
        [ClientError::PacketTooLarge { max: 64, size }] if *size > 500
    ));
    assert_eq!(publishes(&d).len(), 1);
    assert!(d.sizes.iter().all(|&s| s <= 64), "sizes {:?}", d.sizes);

    // While connected: refused at once, for every packet kind that can grow.
    assert!(matches!(
        plain(&mut client, QoS::AtMostOnce, 100),
        Err(ClientError::PacketTooLarge { max: 64, .. })
    ));
    let long = TopicFilter::new(MqttString::new(&"f".repeat(80)).unwrap()).unwrap();
    assert!(matches!(
        client.subscribe(
            Instant::ZERO,
            vec![(long.clone(), SubscriptionOptions::qos(QoS::AtMostOnce))],
            Properties::new()
        ),
        Err(ClientError::PacketTooLarge { max: 64, .. })
    ));
    assert!(matches!(
        client.unsubscribe(Instant::ZERO, vec![long], Properties::new()),
        Err(ClientError::PacketTooLarge { max: 64, .. })
    ));
    // The largest publish that fits goes.
    let mut size = 0;
    while plain(&mut client, QoS::AtMostOnce, size + 1).is_ok() {
        size += 1;
    }
    let d = drain(&mut client);
    assert_eq!(d.sizes.iter().max(), Some(&64));
}

/// MQTT 5.0 [MQTT-3.2.2-17] [MQTT-3.2.2-18] [MQTT-3.3.2-9]: a Topic Alias goes out only within
/// the server's Topic Alias Maximum; [MQTT-3.3.2-7]: the topic name always goes with it, so a
/// resend on a new connection does not depend on the old connection's aliases.
#[test]
fn topic_aliases_go_out_only_within_the_servers_maximum() {
    let alias = |n| Properties::from_vec(vec![Property::TopicAlias(n)]);

    // No Topic Alias Maximum from the server: no alias at all.
    let mut client = connecting(config("a"));
    connack(&mut client, Properties::new());
    publish(&mut client, "x/y", 1, QoS::AtMostOnce, false, alias(1)).unwrap();
    let d = drain(&mut client);
    let sent = publishes(&d);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].topic.as_str(), "x/y");
    assert_eq!(sent[0].properties.topic_alias(), None);

    // A maximum of 5: alias 5 goes, alias 6 does not.
    let mut c = config("b");
    c.clean_start = false;
    let mut client = connecting(c);
    connack(
        &mut client,
        Properties::from_vec(vec![Property::TopicAliasMaximum(5)]),
    );
    publish(&mut client, "x/y", 1, QoS::AtLeastOnce, false, alias(5)).unwrap();
    publish(&mut client, "x/z", 1, QoS::AtMostOnce, false, alias(6)).unwrap();
    let d = drain(&mut client);
    let sent = publishes(&d);
    assert_eq!(sent[0].properties.topic_alias(), Some(5));
    assert_eq!(sent[0].topic.as_str(), "x/y");
    assert_eq!(sent[1].properties.topic_alias(), None);
    assert_eq!(sent[1].topic.as_str(), "x/z");

    // Reconnect to a server that takes no aliases: the unacknowledged publish is resent with
    // its topic name and without the alias.
    client.handle_input(Instant::ZERO, ClientInput::TransportDown);
    drain(&mut client);
    let later = Instant::from_millis(60_000);
    client.handle_input(later, ClientInput::Timeout);
    assert!(drain(&mut client).opened);
    client.handle_input(later, ClientInput::TransportUp);
    drain(&mut client);
    receive(
        &mut client,
        later,
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason: ConnectReason::Success,
            properties: Properties::new(),
        }),
    );
    let d = drain(&mut client);
    let resent = publishes(&d);
    assert_eq!(resent.len(), 1);
    assert!(resent[0].dup);
    assert_eq!(resent[0].topic.as_str(), "x/y");
    assert_eq!(resent[0].properties.topic_alias(), None);
}

/// MQTT 5.0 [MQTT-3.3.4-6]: a PUBLISH from the client never carries a Subscription Identifier
/// (say, of a received message being forwarded with its properties).
#[test]
fn subscription_identifiers_are_left_out_of_publishes() {
    let mut client = connecting(config("s"));
    connack(&mut client, Properties::new());
    let properties = Properties::from_vec(vec![
        Property::SubscriptionIdentifier(7),
        Property::UserProperty(MqttString::new("k").unwrap(), MqttString::new("v").unwrap()),
        Property::SubscriptionIdentifier(9),
    ]);
    publish(&mut client, "t", 1, QoS::AtLeastOnce, false, properties).unwrap();
    let d = drain(&mut client);
    let sent = publishes(&d);
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
    let mut client = connecting(c);
    connack(&mut client, Properties::new());
    for alias in 1..=3u16 {
        receive(
            &mut client,
            Instant::ZERO,
            incoming(&format!("t/{alias}"), Some(alias)),
        );
    }
    receive(&mut client, Instant::ZERO, incoming("", Some(2)));
    receive(&mut client, Instant::ZERO, incoming("t/new", Some(2)));
    receive(&mut client, Instant::ZERO, incoming("", Some(2)));
    receive(&mut client, Instant::ZERO, incoming("", Some(1)));
    let d = drain(&mut client);
    assert_eq!(
        message_topics(&d),
        ["t/1", "t/2", "t/3", "t/2", "t/new", "t/new", "t/1"]
    );
    assert!(!d.closed);

    // Above our maximum.
    receive(&mut client, Instant::ZERO, incoming("t/4", Some(4)));
    let d = drain(&mut client);
    assert!(message_topics(&d).is_empty());
    assert!(d.closed);
    assert!(d.events.contains(&ClientEvent::ProtocolError(
        ClientProtocolError::TopicAlias(4)
    )));

    // A new connection starts with no aliases.
    let later = Instant::from_millis(60_000);
    client.handle_input(later, ClientInput::Timeout);
    assert!(drain(&mut client).opened);
    client.handle_input(later, ClientInput::TransportUp);
    drain(&mut client);
    connack(&mut client, Properties::new());
    receive(&mut client, later, incoming("", Some(1)));
    let d = drain(&mut client);
    assert!(message_topics(&d).is_empty());
    assert!(d.closed);
    assert!(d.events.contains(&ClientEvent::ProtocolError(
        ClientProtocolError::TopicAlias(1)
    )));
}

/// Without a Topic Alias Maximum in our CONNECT (0), any alias is a protocol error.
#[test]
fn an_alias_we_never_allowed_closes_the_connection() {
    let mut client = connecting(config("none"));
    connack(&mut client, Properties::new());
    receive(&mut client, Instant::ZERO, incoming("t", Some(1)));
    let d = drain(&mut client);
    assert!(message_topics(&d).is_empty());
    assert!(d.closed);
}

/// MQTT 5.0 [MQTT-3.3.4-8]: having Receive Maximum publishes unacknowledged does not delay a
/// SUBSCRIBE or UNSUBSCRIBE queued behind further publishes.
#[test]
fn a_full_window_does_not_delay_subscribe_or_unsubscribe() {
    let mut client = connecting(config("w"));
    connack(
        &mut client,
        Properties::from_vec(vec![Property::ReceiveMaximum(1)]),
    );
    plain(&mut client, QoS::AtLeastOnce, 1).unwrap();
    plain(&mut client, QoS::AtLeastOnce, 2).unwrap();
    let f = TopicFilter::new(MqttString::new("s/#").unwrap()).unwrap();
    client
        .subscribe(
            Instant::ZERO,
            vec![(f.clone(), SubscriptionOptions::qos(QoS::AtLeastOnce))],
            Properties::new(),
        )
        .unwrap();
    client
        .unsubscribe(Instant::ZERO, vec![f], Properties::new())
        .unwrap();
    let d = drain(&mut client);
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
    let first = publishes(&d)[0].packet_id.unwrap();
    receive(
        &mut client,
        Instant::ZERO,
        Packet::PubAck(PubAck::success(first)),
    );
    let d = drain(&mut client);
    let sent = publishes(&d);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].payload.len(), 2);
}

/// MQTT 5.0 [MQTT-3.1.2-21] [MQTT-3.2.2-21]: the CONNACK's Server Keep Alive replaces the keep
/// alive the client asked for: PINGREQ after that many idle seconds, not ours.
#[test]
fn the_servers_keep_alive_replaces_ours() {
    let mut c = config("k");
    c.keep_alive = 60;
    let mut client = connecting(c);
    connack(
        &mut client,
        Properties::from_vec(vec![Property::ServerKeepAlive(5)]),
    );
    assert_eq!(client.poll_timeout(), Some(Instant::from_millis(5_000)));
    client.handle_input(Instant::from_millis(5_000), ClientInput::Timeout);
    let d = drain(&mut client);
    assert!(matches!(d.packets.as_slice(), [Packet::PingReq]));
}
