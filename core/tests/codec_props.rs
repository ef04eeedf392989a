//! Property tests of the codec: every packet type in every protocol version round-trips through
//! encode and decode; arbitrary bytes never panic the decoder; a stream split at arbitrary byte
//! boundaries decodes to the same packets.
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use surgemq_core::codec::*;
use surgemq_core::string::MqttString;
use surgemq_core::topic::{TopicFilter, TopicName};

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

fn arb_version() -> impl Strategy<Value = ProtocolVersion> {
    select(VERSIONS.to_vec())
}

fn arb_string() -> impl Strategy<Value = MqttString> {
    "[^\u{0}]{0,12}".prop_map(|s| MqttString::new(&s).unwrap())
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn arb_level() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("a".to_string()),
        Just("$SYS".to_string()),
        Just("sport".to_string()),
        "[a-zA-Zé€ ]{1,6}",
    ]
}

fn arb_topic_name() -> impl Strategy<Value = TopicName> {
    vec(arb_level(), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter_map("non-empty", |s| TopicName::parse(&s).ok())
}

fn arb_topic_filter() -> impl Strategy<Value = TopicFilter> {
    let level = prop_oneof![3 => arb_level(), 1 => Just("+".to_string())];
    (vec(level, 1..5), any::<bool>(), option::of("[a-z]{1,5}"))
        .prop_map(|(mut levels, hash, share)| {
            if hash {
                levels.push("#".to_string());
            }
            let filter = levels.join("/");
            match share {
                Some(group) => format!("$share/{group}/{filter}"),
                None => filter,
            }
        })
        .prop_filter_map("valid filter", |s| TopicFilter::parse(&s).ok())
}

fn arb_qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn arb_packet_id() -> impl Strategy<Value = PacketId> {
    (1..=u16::MAX).prop_map(|v| PacketId::new(v).unwrap())
}

/// One property of each kind, with a valid value.
fn arb_property(id: PropertyId) -> BoxedStrategy<Property> {
    use Property as P;
    let flag = 0u8..=1;
    match id {
        PropertyId::PayloadFormatIndicator => flag.prop_map(P::PayloadFormatIndicator).boxed(),
        PropertyId::MessageExpiryInterval => {
            any::<u32>().prop_map(P::MessageExpiryInterval).boxed()
        }
        PropertyId::ContentType => arb_string().prop_map(P::ContentType).boxed(),
        PropertyId::ResponseTopic => arb_topic_name().prop_map(P::ResponseTopic).boxed(),
        PropertyId::CorrelationData => arb_bytes(8).prop_map(P::CorrelationData).boxed(),
        PropertyId::SubscriptionIdentifier => (1..=MAX_VAR_INT)
            .prop_map(P::SubscriptionIdentifier)
            .boxed(),
        PropertyId::SessionExpiryInterval => {
            any::<u32>().prop_map(P::SessionExpiryInterval).boxed()
        }
        PropertyId::AssignedClientIdentifier => {
            arb_string().prop_map(P::AssignedClientIdentifier).boxed()
        }
        PropertyId::ServerKeepAlive => any::<u16>().prop_map(P::ServerKeepAlive).boxed(),
        PropertyId::AuthenticationMethod => arb_string().prop_map(P::AuthenticationMethod).boxed(),
        PropertyId::AuthenticationData => arb_bytes(8).prop_map(P::AuthenticationData).boxed(),
        PropertyId::RequestProblemInformation => {
            flag.prop_map(P::RequestProblemInformation).boxed()
        }
        PropertyId::WillDelayInterval => any::<u32>().prop_map(P::WillDelayInterval).boxed(),
        PropertyId::RequestResponseInformation => {
            flag.prop_map(P::RequestResponseInformation).boxed()
        }
        PropertyId::ResponseInformation => arb_string().prop_map(P::ResponseInformation).boxed(),
        PropertyId::ServerReference => arb_string().prop_map(P::ServerReference).boxed(),
        PropertyId::ReasonString => arb_string().prop_map(P::ReasonString).boxed(),
        PropertyId::ReceiveMaximum => (1..=u16::MAX).prop_map(P::ReceiveMaximum).boxed(),
        PropertyId::TopicAliasMaximum => any::<u16>().prop_map(P::TopicAliasMaximum).boxed(),
        PropertyId::TopicAlias => (1..=u16::MAX).prop_map(P::TopicAlias).boxed(),
        PropertyId::MaximumQoS => flag.prop_map(P::MaximumQoS).boxed(),
        PropertyId::RetainAvailable => flag.prop_map(P::RetainAvailable).boxed(),
        PropertyId::UserProperty => (arb_string(), arb_string())
            .prop_map(|(k, v)| P::UserProperty(k, v))
            .boxed(),
        PropertyId::MaximumPacketSize => (1..=u32::MAX).prop_map(P::MaximumPacketSize).boxed(),
        PropertyId::WildcardSubscriptionAvailable => {
            flag.prop_map(P::WildcardSubscriptionAvailable).boxed()
        }
        PropertyId::SubscriptionIdentifierAvailable => {
            flag.prop_map(P::SubscriptionIdentifierAvailable).boxed()
        }
        PropertyId::SharedSubscriptionAvailable => {
            flag.prop_map(P::SharedSubscriptionAvailable).boxed()
        }
    }
}

/// A valid property list for `context`: a random subset of the allowed properties, each once,
/// plus extra repeats of those that may repeat, in random order. Empty before 5.0.
fn arb_properties(v5: bool, context: PropertyContext) -> BoxedStrategy<Properties> {
    if !v5 {
        return Just(Properties::new()).boxed();
    }
    let allowed: Vec<PropertyId> = PropertyId::ALL
        .iter()
        .copied()
        .filter(|id| id.allowed_in(context))
        .collect();
    let repeatable: Vec<PropertyId> = allowed
        .iter()
        .copied()
        .filter(|id| id.may_repeat_in(context))
        .collect();
    let singles = proptest::sample::subsequence(allowed.clone(), 0..=allowed.len().min(6));
    let repeats = if repeatable.is_empty() {
        Just(Vec::new()).boxed()
    } else {
        vec(select(repeatable), 0..3).boxed()
    };
    (singles, repeats)
        .prop_flat_map(|(singles, repeats)| {
            let ids: Vec<PropertyId> = singles.into_iter().chain(repeats).collect();
            let strategies: Vec<BoxedStrategy<Property>> =
                ids.into_iter().map(arb_property).collect();
            strategies.prop_shuffle()
        })
        .prop_map(Properties::from_iter)
        .boxed()
}

fn arb_connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let v5 = version.is_v5();
    let will = option::of((
        arb_topic_name(),
        arb_bytes(16),
        arb_qos(),
        any::<bool>(),
        arb_properties(v5, PropertyContext::Will),
    ));
    (
        any::<bool>(),
        any::<u16>(),
        arb_properties(v5, PropertyContext::Connect),
        arb_string(),
        will,
        option::of(arb_string()),
        option::of(arb_bytes(8)),
    )
        .prop_map(
            move |(clean_start, keep_alive, properties, client_id, will, username, password)| {
                // Before 5.0 a password needs a user name (3.1.1 [MQTT-3.1.2-22]).
                let password = if v5 || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Box::new(Connect {
                    protocol: version,
                    clean_start,
                    keep_alive,
                    properties,
                    client_id,
                    will: will.map(|(topic, payload, qos, retain, properties)| Will {
                        topic,
                        payload,
                        qos,
                        retain,
                        properties,
                    }),
                    username,
                    password,
                }))
            },
        )
}

fn arb_connack(v5: bool) -> impl Strategy<Value = Packet> {
    let reason = if v5 {
        select(ConnectReason::ALL.to_vec()).boxed()
    } else {
        (0u8..=5)
            .prop_map(|c| ConnectReason::from_v3_return_code(c).unwrap())
            .boxed()
    };
    (
        any::<bool>(),
        reason,
        arb_properties(v5, PropertyContext::ConnAck),
    )
        .prop_map(|(session_present, reason, properties)| {
            Packet::ConnAck(ConnAck {
                session_present,
                reason,
                properties,
            })
        })
}

fn arb_publish(v5: bool) -> impl Strategy<Value = Packet> {
    (
        arb_qos(),
        any::<bool>(),
        any::<bool>(),
        arb_topic_name(),
        arb_packet_id(),
        arb_properties(v5, PropertyContext::Publish),
        arb_bytes(64),
        any::<bool>(),
    )
        .prop_map(
            move |(qos, dup, retain, topic, id, properties, payload, alias_only)| {
                // 5.0: a PUBLISH carrying a Topic Alias may leave the topic name empty.
                let topic = if v5 && alias_only && properties.topic_alias().is_some() {
                    TopicName::alias_only()
                } else {
                    topic
                };
                Packet::Publish(Publish {
                    dup: dup && qos != QoS::AtMostOnce,
                    qos,
                    retain,
                    topic,
                    packet_id: (qos != QoS::AtMostOnce).then_some(id),
                    properties,
                    payload,
                })
            },
        )
}

fn arb_pub_ack(v5: bool, context: PropertyContext) -> impl Strategy<Value = PubAck> {
    let reason = if v5 {
        select(PubAckReason::ALL.to_vec()).boxed()
    } else {
        Just(PubAckReason::Success).boxed()
    };
    (arb_packet_id(), reason, arb_properties(v5, context)).prop_map(
        |(packet_id, reason, properties)| PubAck {
            packet_id,
            reason,
            properties,
        },
    )
}

fn arb_pub_rel(v5: bool, context: PropertyContext) -> impl Strategy<Value = PubRel> {
    let reason = if v5 {
        select(PubRelReason::ALL.to_vec()).boxed()
    } else {
        Just(PubRelReason::Success).boxed()
    };
    (arb_packet_id(), reason, arb_properties(v5, context)).prop_map(
        |(packet_id, reason, properties)| PubRel {
            packet_id,
            reason,
            properties,
        },
    )
}

fn arb_options(v5: bool) -> impl Strategy<Value = SubscriptionOptions> {
    (
        arb_qos(),
        any::<bool>(),
        any::<bool>(),
        select(vec![
            RetainHandling::SendAtSubscribe,
            RetainHandling::SendIfNew,
            RetainHandling::DoNotSend,
        ]),
    )
        .prop_map(move |(qos, no_local, rap, rh)| {
            if v5 {
                SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published: rap,
                    retain_handling: rh,
                }
            } else {
                SubscriptionOptions::qos(qos)
            }
        })
}

fn arb_subscribe(v5: bool) -> impl Strategy<Value = Packet> {
    (
        arb_packet_id(),
        arb_properties(v5, PropertyContext::Subscribe),
        vec((arb_topic_filter(), arb_options(v5)), 1..4),
    )
        .prop_map(|(packet_id, properties, mut filters)| {
            // 5.0 [MQTT-3.8.3-4]: No Local is not allowed on a shared subscription.
            for (filter, options) in &mut filters {
                if filter.shared().is_some() {
                    options.no_local = false;
                }
            }
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters,
            })
        })
}

fn arb_suback(v5: bool) -> impl Strategy<Value = Packet> {
    let reasons = if v5 {
        select(SubAckReason::ALL.to_vec()).boxed()
    } else {
        select(vec![
            SubAckReason::GrantedQoS0,
            SubAckReason::GrantedQoS1,
            SubAckReason::GrantedQoS2,
            SubAckReason::UnspecifiedError,
        ])
        .boxed()
    };
    (
        arb_packet_id(),
        arb_properties(v5, PropertyContext::SubAck),
        vec(reasons, 1..5),
    )
        .prop_map(|(packet_id, properties, reasons)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reasons,
            })
        })
}

fn arb_unsubscribe(v5: bool) -> impl Strategy<Value = Packet> {
    (
        arb_packet_id(),
        arb_properties(v5, PropertyContext::Unsubscribe),
        vec(arb_topic_filter(), 1..4),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        })
}

fn arb_unsuback(v5: bool) -> impl Strategy<Value = Packet> {
    let reasons = if v5 {
        vec(select(UnsubAckReason::ALL.to_vec()), 1..5).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (
        arb_packet_id(),
        arb_properties(v5, PropertyContext::UnsubAck),
        reasons,
    )
        .prop_map(|(packet_id, properties, reasons)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reasons,
            })
        })
}

fn arb_disconnect(v5: bool) -> impl Strategy<Value = Packet> {
    let reason = if v5 {
        select(DisconnectReason::ALL.to_vec()).boxed()
    } else {
        Just(DisconnectReason::NormalDisconnection).boxed()
    };
    (reason, arb_properties(v5, PropertyContext::Disconnect))
        .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }))
}

fn arb_auth() -> impl Strategy<Value = Packet> {
    (
        select(AuthReason::ALL.to_vec()),
        arb_properties(true, PropertyContext::Auth),
    )
        .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
}

/// Any packet valid in `version`.
fn arb_packet_in(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = version.is_v5();
    let common = prop_oneof![
        arb_connect(version),
        arb_connack(v5),
        arb_publish(v5),
        arb_pub_ack(v5, PropertyContext::PubAck).prop_map(Packet::PubAck),
        arb_pub_ack(v5, PropertyContext::PubRec).prop_map(Packet::PubRec),
        arb_pub_rel(v5, PropertyContext::PubRel).prop_map(Packet::PubRel),
        arb_pub_rel(v5, PropertyContext::PubComp).prop_map(Packet::PubComp),
        arb_subscribe(v5),
        arb_suback(v5),
        arb_unsubscribe(v5),
        arb_unsuback(v5),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        arb_disconnect(v5),
    ];
    if v5 {
        prop_oneof![14 => common, 1 => arb_auth()].boxed()
    } else {
        common.boxed()
    }
}

fn arb_versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    arb_version().prop_flat_map(|v| arb_packet_in(v).prop_map(move |p| (v, p)))
}

fn encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = Vec::new();
    let written = packet.encode(version, &mut out).unwrap();
    assert_eq!(written, out.len());
    assert_eq!(packet.encoded_len(version).unwrap(), out.len());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_packet_round_trips_in_every_version((version, packet) in arb_versioned_packet()) {
        let bytes = Bytes::from(encode(&packet, version));
        match decode(&bytes, version, MAX_PACKET_SIZE).unwrap() {
            Decoded::Packet { packet: decoded, consumed } => {
                prop_assert_eq!(consumed, bytes.len());
                prop_assert_eq!(&decoded, &packet);
                // And the decoded packet encodes to the very same bytes.
                prop_assert_eq!(encode(&decoded, version), bytes.to_vec());
            }
            Decoded::NeedMore => prop_assert!(false, "complete packet reported as incomplete"),
        }
    }

    #[test]
    fn every_strict_prefix_of_a_packet_needs_more((version, packet) in arb_versioned_packet()) {
        let bytes = Bytes::from(encode(&packet, version));
        for cut in 0..bytes.len() {
            prop_assert_eq!(
                decode(&bytes.slice(..cut), version, MAX_PACKET_SIZE).unwrap(),
                Decoded::NeedMore
            );
        }
    }

    #[test]
    fn stream_split_at_arbitrary_boundaries_yields_the_same_packets(
        version in arb_version(),
        seed in vec(any::<prop::sample::Index>(), 1..12),
        chunks in vec(1usize..40, 1..200),
    ) {
        let packets: Vec<Packet> = {
            // Derive packets deterministically from the sampled indices.
            let mut runner = proptest::test_runner::TestRunner::deterministic();
            seed.iter()
                .map(|_| arb_packet_in(version).new_tree(&mut runner).unwrap().current())
                .collect()
        };
        let mut stream = Vec::new();
        for p in &packets {
            stream.extend(encode(p, version));
        }
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut rest = &stream[..];
        let mut sizes = chunks.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap()).min(rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(p) = decode_buf(&mut buf, version, MAX_PACKET_SIZE).unwrap() {
                decoded.push(p);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, packets);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(
        version in arb_version(),
        bytes in vec(any::<u8>(), 0..512),
        max in prop_oneof![Just(MAX_PACKET_SIZE), 0u32..600],
    ) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decode_buf(&mut buf, version, max) {}
        let _ = decode(&Bytes::from(bytes), version, max);
    }

    #[test]
    fn decoding_mutated_valid_packets_never_panics(
        (version, packet) in arb_versioned_packet(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = encode(&packet, version);
        for (at, xor) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= xor;
        }
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decode_buf(&mut buf, version, MAX_PACKET_SIZE) {}
    }
}

#[test]
fn failed_encode_writes_nothing() {
    // A QoS 0 PUBLISH with a packet identifier cannot be encoded ([MQTT-2.3.1-5]).
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: TopicName::parse("a/b").unwrap(),
        packet_id: PacketId::new(7),
        properties: Properties::new(),
        payload: Bytes::from_static(b"x"),
    });
    let mut out = vec![0xaa];
    assert_eq!(
        packet.encode(ProtocolVersion::V3_1_1, &mut out),
        Err(EncodeError::PacketIdMismatch)
    );
    assert_eq!(out, vec![0xaa]);

    // A property not allowed on the packet is refused before anything is written.
    let packet = Packet::PubAck(PubAck {
        packet_id: PacketId::new(1).unwrap(),
        reason: PubAckReason::Success,
        properties: Properties::new().with(Property::TopicAlias(3)),
    });
    assert!(matches!(
        packet.encode(ProtocolVersion::V5, &mut out),
        Err(EncodeError::PropertyNotAllowed { .. })
    ));
    assert_eq!(out, vec![0xaa]);
}

#[test]
fn encode_into_a_full_fixed_buffer_is_an_error_not_a_panic() {
    let mut storage = [0u8; 3];
    let mut out: &mut [u8] = &mut storage;
    let packet = Packet::Disconnect(Disconnect::normal());
    assert_eq!(packet.encode(ProtocolVersion::V3_1_1, &mut out), Ok(2));
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: TopicName::parse("t").unwrap(),
        packet_id: None,
        properties: Properties::new(),
        payload: Bytes::from_static(b"payload"),
    });
    assert!(matches!(
        publish.encode(ProtocolVersion::V3_1_1, &mut out),
        Err(EncodeError::PacketTooLarge { .. })
    ));
}

#[test]
fn v5_only_fields_are_left_out_for_older_versions() {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: TopicName::parse("t").unwrap(),
        packet_id: None,
        properties: Properties::new().with(Property::MessageExpiryInterval(5)),
        payload: Bytes::from_static(b"p"),
    });
    assert_eq!(
        encode(&packet, ProtocolVersion::V3_1_1),
        vec![0x30, 0x04, 0x00, 0x01, b't', b'p']
    );
    assert_eq!(
        encode(&packet, ProtocolVersion::V5),
        vec![0x30, 0x0a, 0x00, 0x01, b't', 0x05, 0x02, 0, 0, 0, 5, b'p']
    );
}
