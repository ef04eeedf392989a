//! One test per malformed-packet rule of MQTT 3.1.1 and 5.0, each named after what it checks
//! and citing the normative statement it enforces. Also the codec-level "well-formed" rules
//! whose violation is not an error but must be honoured (BOM kept, QoS 0 has no packet id).
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::{Bytes, BytesMut};
use surgemq_core::codec::*;
use surgemq_core::string::StringError;
use surgemq_core::topic::TopicError;

use ProtocolVersion::{V3_1, V3_1_1, V5};

/// Builds a packet: first byte, then the Remaining Length, then `body`.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len & 0x7f) as u8;
        len >>= 7;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn s(text: &[u8]) -> Vec<u8> {
    let mut out = (text.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(text);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A CONNECT with the given protocol name, level, flags, optional 5.0 properties and payload.
fn connect(name: &[u8], level: u8, flags: u8, props: Option<&[u8]>, payload: &[u8]) -> Vec<u8> {
    let mut body = cat(&[&s(name), &[level, flags, 0, 60]]);
    if let Some(p) = props {
        body.extend(prop_list(p));
    }
    body.extend_from_slice(payload);
    packet(0x10, &body)
}

/// A 5.0 property list: length prefix then the raw properties (length below 128).
fn prop_list(raw: &[u8]) -> Vec<u8> {
    assert!(raw.len() < 128);
    cat(&[&[raw.len() as u8], raw])
}

fn decode_err(version: ProtocolVersion, bytes: &[u8]) -> DecodeError {
    decode(&Bytes::copy_from_slice(bytes), version, MAX_PACKET_SIZE).unwrap_err()
}

fn decode_ok(version: ProtocolVersion, bytes: &[u8]) -> Packet {
    match decode(&Bytes::copy_from_slice(bytes), version, MAX_PACKET_SIZE).unwrap() {
        Decoded::Packet { packet, consumed } => {
            assert_eq!(consumed, bytes.len());
            packet
        }
        Decoded::NeedMore => panic!("incomplete"),
    }
}

// ---- Fixed header -------------------------------------------------------------------------

#[test]
fn packet_type_zero_is_reserved() {
    for v in [V3_1, V3_1_1, V5] {
        assert_eq!(
            decode_err(v, &[0x00, 0x00]),
            DecodeError::ReservedPacketType { packet_type: 0 }
        );
    }
}

#[test]
fn auth_packet_type_is_reserved_before_v5() {
    assert_eq!(
        decode_err(V3_1_1, &[0xf0, 0x00]),
        DecodeError::ReservedPacketType { packet_type: 15 }
    );
    assert!(matches!(decode_ok(V5, &[0xf0, 0x00]), Packet::Auth(_)));
}

#[test]
fn reserved_fixed_header_flags_must_have_their_listed_values() {
    // MQTT 3.1.1 [MQTT-2.2.2-1] [MQTT-2.2.2-2]; MQTT 5.0 [MQTT-2.1.3-1]
    let cases: &[(u8, &[u8])] = &[
        (0x12, &[0x00, 0x01]),       // CONNACK with flags 0b0010
        (0x41, &[0x00, 0x01]),       // PUBACK with flags 1
        (0x58, &[0x00, 0x01]),       // PUBREC with flags 8
        (0x74, &[0x00, 0x01]),       // PUBCOMP with flags 4
        (0x91, &[0x00, 0x01, 0x00]), // SUBACK with flags 1
        (0xb2, &[0x00, 0x01]),       // UNSUBACK with flags 2
        (0xc1, &[]),                 // PINGREQ with flags 1
        (0xd8, &[]),                 // PINGRESP with flags 8
    ];
    for v in [V3_1, V3_1_1, V5] {
        for (first, body) in cases {
            let err = decode_err(v, &packet(*first, body));
            assert!(
                matches!(err, DecodeError::InvalidHeaderFlags { flags, .. } if flags == first & 0x0f),
                "{first:#04x} in {v:?}: {err:?}"
            );
        }
    }
}

#[test]
fn connect_fixed_header_flags_must_be_zero() {
    // MQTT 3.1.1 [MQTT-2.2.2-1]; MQTT 5.0 [MQTT-2.1.3-1]
    let mut bytes = connect(b"MQTT", 4, 0x02, None, &s(b"id"));
    bytes[0] = 0x11;
    assert!(matches!(
        decode_err(V3_1_1, &bytes),
        DecodeError::InvalidHeaderFlags {
            packet_type: PacketType::Connect,
            flags: 1
        }
    ));
}

#[test]
fn pubrel_flags_must_be_0010() {
    // MQTT 3.1.1 [MQTT-3.6.1-1]; MQTT 5.0 [MQTT-3.6.1-1]
    for v in [V3_1_1, V5] {
        assert!(matches!(
            decode_err(v, &[0x60, 0x02, 0x00, 0x01]),
            DecodeError::InvalidHeaderFlags {
                packet_type: PacketType::PubRel,
                flags: 0
            }
        ));
        assert!(matches!(
            decode_ok(v, &[0x62, 0x02, 0x00, 0x01]),
            Packet::PubRel(_)
        ));
    }
}

#[test]
fn subscribe_flags_must_be_0010() {
    // MQTT 3.1.1 [MQTT-3.8.1-1]; MQTT 5.0 [MQTT-3.8.1-1]
    let body = cat(&[&[0x00, 0x01], &s(b"a"), &[0x00]]);
    assert!(matches!(
        decode_err(V3_1_1, &packet(0x80, &body)),
        DecodeError::InvalidHeaderFlags {
            packet_type: PacketType::Subscribe,
            ..
        }
    ));
    let body5 = cat(&[&[0x00, 0x01, 0x00], &s(b"a"), &[0x00]]);
    assert!(matches!(
        decode_err(V5, &packet(0x83, &body5)),
        DecodeError::InvalidHeaderFlags {
            packet_type: PacketType::Subscribe,
            ..
        }
    ));
}

#[test]
fn unsubscribe_flags_must_be_0010() {
    // MQTT 3.1.1 [MQTT-3.10.1-1]; MQTT 5.0 [MQTT-3.10.1-1]
    let body = cat(&[&[0x00, 0x01], &s(b"a")]);
    assert!(matches!(
        decode_err(V3_1_1, &packet(0xa0, &body)),
        DecodeError::InvalidHeaderFlags {
            packet_type: PacketType::Unsubscribe,
            ..
        }
    ));
    let body5 = cat(&[&[0x00, 0x01, 0x00], &s(b"a")]);
    assert!(matches!(
        decode_err(V5, &packet(0xa6, &body5)),
        DecodeError::InvalidHeaderFlags {
            packet_type: PacketType::Unsubscribe,
            ..
        }
    ));
}

#[test]
fn disconnect_reserved_bits_must_be_zero() {
    // MQTT 3.1.1 [MQTT-3.14.1-1]; MQTT 5.0 [MQTT-3.14.1-1] (reason code: Malformed Packet)
    for v in [V3_1_1, V5] {
        let err = decode_err(v, &[0xe1, 0x00]);
        assert!(matches!(
            err,
            DecodeError::InvalidHeaderFlags {
                packet_type: PacketType::Disconnect,
                flags: 1
            }
        ));
        assert_eq!(err.reason_code(), DisconnectReason::MalformedPacket);
    }
}

#[test]
fn auth_flags_must_be_zero() {
    // MQTT 5.0 [MQTT-3.15.1-1]
    assert!(matches!(
        decode_err(V5, &[0xf2, 0x00]),
        DecodeError::InvalidHeaderFlags {
            packet_type: PacketType::Auth,
            flags: 2
        }
    ));
}

#[test]
fn publish_with_qos_3_is_malformed() {
    // MQTT 3.1.1 [MQTT-3.3.1-4]; MQTT 5.0 [MQTT-3.3.1-4]
    for v in [V3_1_1, V5] {
        assert_eq!(
            decode_err(v, &packet(0x36, &cat(&[&s(b"t"), &[0, 1]]))),
            DecodeError::InvalidQoS
        );
    }
}

#[test]
fn qos0_publish_with_dup_is_malformed() {
    // MQTT 3.1.1 [MQTT-3.3.1-2]; MQTT 5.0 [MQTT-3.3.1-2]
    for v in [V3_1_1, V5] {
        assert_eq!(
            decode_err(v, &packet(0x38, &s(b"t"))),
            DecodeError::DupOnQoS0
        );
    }
}

#[test]
fn remaining_length_of_more_than_four_bytes_is_malformed() {
    assert_eq!(
        decode_err(V3_1_1, &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]),
        DecodeError::VarIntTooLong
    );
}

#[test]
fn variable_byte_integer_must_use_fewest_bytes() {
    // MQTT 5.0 [MQTT-1.5.5-1]: PINGREQ whose Remaining Length 0 takes two bytes.
    assert_eq!(
        decode_err(V5, &[0xc0, 0x80, 0x00]),
        DecodeError::VarIntNotMinimal
    );
    // And inside a property: Subscription Identifier 1 encoded as 0x81 0x00.
    let props = prop_list(&[0x0b, 0x81, 0x00]);
    let body = cat(&[&s(b"t"), &props]);
    assert_eq!(
        decode_err(V5, &packet(0x30, &body)),
        DecodeError::VarIntNotMinimal
    );
}

#[test]
fn oversize_packet_is_refused_from_its_fixed_header_before_the_body_arrives() {
    // Only the fixed header of a 1,003-byte PUBLISH has arrived; the limit is 100.
    let mut buf = BytesMut::from(&[0x30, 0xe8, 0x07][..]);
    assert_eq!(
        decode_buf(&mut buf, V3_1_1, 100).unwrap_err(),
        DecodeError::PacketTooLarge {
            size: 1003,
            max: 100
        }
    );
    assert_eq!(
        DecodeError::PacketTooLarge { size: 1, max: 0 }.reason_code(),
        DisconnectReason::PacketTooLarge
    );
    // At exactly the limit it is accepted.
    let ok = packet(0x30, &cat(&[&s(b"t"), &[7; 10]]));
    let mut buf = BytesMut::from(&ok[..]);
    assert!(
        decode_buf(&mut buf, V3_1_1, ok.len() as u32)
            .unwrap()
            .is_some()
    );
}

#[test]
fn bytes_after_the_last_field_are_malformed() {
    assert_eq!(
        decode_err(V3_1_1, &[0xc0, 0x01, 0x00]),
        DecodeError::TrailingBytes { count: 1 }
    );
    assert_eq!(
        decode_err(V3_1_1, &[0x40, 0x03, 0x00, 0x01, 0x00]),
        DecodeError::TrailingBytes { count: 1 }
    );
}

#[test]
fn field_running_past_the_packet_end_is_malformed() {
    // Topic length says 9 bytes, only 1 follows.
    assert_eq!(
        decode_err(V3_1_1, &[0x30, 0x03, 0x00, 0x09, b'a']),
        DecodeError::Truncated
    );
}

// ---- Strings --------------------------------------------------------------------------------

#[test]
fn ill_formed_utf8_in_a_string_is_malformed() {
    // MQTT 3.1.1 [MQTT-1.5.3-1]; MQTT 5.0 [MQTT-1.5.4-1]
    for v in [V3_1_1, V5] {
        let err = decode_err(v, &packet(0x30, &s(&[b'a', 0xc3, 0x28])));
        assert_eq!(err, DecodeError::InvalidString(StringError::InvalidUtf8));
        assert_eq!(err.reason_code(), DisconnectReason::MalformedPacket);
    }
}

#[test]
fn encoded_surrogate_in_client_id_is_malformed() {
    // MQTT 3.1.1 [MQTT-1.5.3-1]; MQTT 5.0 [MQTT-1.5.4-1]: U+D800 as ED A0 80.
    let bytes = connect(b"MQTT", 4, 0x02, None, &s(&[0xed, 0xa0, 0x80]));
    assert_eq!(
        decode_err(V3_1_1, &bytes),
        DecodeError::InvalidString(StringError::InvalidUtf8)
    );
}

#[test]
fn null_character_in_a_string_is_malformed() {
    // MQTT 3.1.1 [MQTT-1.5.3-2] [MQTT-4.7.3-2]; MQTT 5.0 [MQTT-1.5.4-2] [MQTT-4.7.3-2]
    for v in [V3_1_1, V5] {
        assert_eq!(
            decode_err(v, &packet(0x30, &s(b"a\0b"))),
            DecodeError::InvalidString(StringError::NullCharacter)
        );
    }
}

#[test]
fn byte_order_mark_is_kept_not_stripped() {
    // MQTT 3.1.1 [MQTT-1.5.3-3]; MQTT 5.0 [MQTT-1.5.4-3]
    let topic = [0xef, 0xbb, 0xbf, b'a'];
    let Packet::Publish(p) = decode_ok(V3_1_1, &packet(0x30, &s(&topic))) else {
        panic!()
    };
    assert_eq!(p.topic.as_str().as_bytes(), &topic);
}

#[test]
fn user_property_name_and_value_follow_the_string_rules() {
    // MQTT 5.0 [MQTT-1.5.7-1]
    let mut raw = vec![0x26];
    raw.extend(s(b"k"));
    raw.extend(s(&[0xff]));
    let body = cat(&[&s(b"t"), &prop_list(&raw)]);
    assert_eq!(
        decode_err(V5, &packet(0x30, &body)),
        DecodeError::InvalidString(StringError::InvalidUtf8)
    );
}

// ---- Packet identifiers ---------------------------------------------------------------------

#[test]
fn packet_identifier_zero_is_malformed() {
    // MQTT 3.1.1 [MQTT-2.3.1-1]; MQTT 5.0 [MQTT-2.2.1-3]
    for v in [V3_1_1, V5] {
        let props: &[u8] = if v == V5 { &[0] } else { &[] };
        let publish = cat(&[&s(b"t"), &[0, 0], props]);
        assert_eq!(
            decode_err(v, &packet(0x32, &publish)),
            DecodeError::PacketIdZero
        );
        let subscribe = cat(&[&[0, 0], props, &s(b"t"), &[1]]);
        assert_eq!(
            decode_err(v, &packet(0x82, &subscribe)),
            DecodeError::PacketIdZero
        );
        let unsubscribe = cat(&[&[0, 0], props, &s(b"t")]);
        assert_eq!(
            decode_err(v, &packet(0xa2, &unsubscribe)),
            DecodeError::PacketIdZero
        );
        assert_eq!(
            decode_err(v, &[0x40, 0x02, 0, 0]),
            DecodeError::PacketIdZero
        );
    }
}

#[test]
fn qos0_publish_has_no_packet_identifier() {
    // MQTT 3.1.1 [MQTT-2.3.1-5]; MQTT 5.0 [MQTT-2.2.1-2]: the bytes after the topic are payload.
    let Packet::Publish(p) = decode_ok(V3_1_1, &packet(0x30, &cat(&[&s(b"t"), &[0, 1]]))) else {
        panic!()
    };
    assert_eq!(p.packet_id, None);
    assert_eq!(&p.payload[..], &[0, 1]);
    let mut out = Vec::new();
    Packet::Publish(p).encode(V3_1_1, &mut out).unwrap();
    assert_eq!(out, packet(0x30, &cat(&[&s(b"t"), &[0, 1]])));
}

// ---- PUBLISH topic --------------------------------------------------------------------------

#[test]
fn wildcard_in_publish_topic_name_is_refused() {
    // MQTT 3.1.1 [MQTT-3.3.2-2] [MQTT-4.7.1-1]; MQTT 5.0 [MQTT-3.3.2-2] [MQTT-4.7.1-1]
    for v in [V3_1_1, V5] {
        for topic in [&b"a/+"[..], b"a/#", b"+", b"a+b"] {
            let props: &[u8] = if v == V5 { &[0] } else { &[] };
            let err = decode_err(v, &packet(0x30, &cat(&[&s(topic), props])));
            assert!(matches!(err, DecodeError::InvalidTopicName(_)), "{err:?}");
        }
    }
}

#[test]
fn empty_publish_topic_name_is_refused_unless_a_v5_topic_alias_is_present() {
    // MQTT 3.1.1 [MQTT-4.7.3-1]; MQTT 5.0 [MQTT-4.7.3-1] and section 3.3.2.3.4
    assert_eq!(
        decode_err(V3_1_1, &packet(0x30, &s(b""))),
        DecodeError::InvalidTopicName(TopicError::Empty)
    );
    assert_eq!(
        decode_err(V5, &packet(0x30, &cat(&[&s(b""), &[0]]))),
        DecodeError::InvalidTopicName(TopicError::Empty)
    );
    let with_alias = cat(&[&s(b""), &prop_list(&[0x23, 0x00, 0x05])]);
    let Packet::Publish(p) = decode_ok(V5, &packet(0x30, &with_alias)) else {
        panic!()
    };
    assert!(p.topic.is_empty());
    assert_eq!(p.properties.topic_alias(), Some(5));
}

#[test]
fn response_topic_must_not_contain_wildcards() {
    // MQTT 5.0 [MQTT-3.3.2-13] [MQTT-3.3.2-14]
    let mut raw = vec![0x08];
    raw.extend(s(b"reply/#"));
    let body = cat(&[&s(b"t"), &prop_list(&raw)]);
    assert!(matches!(
        decode_err(V5, &packet(0x30, &body)),
        DecodeError::InvalidResponseTopic(_)
    ));
}

// ---- CONNECT --------------------------------------------------------------------------------

#[test]
fn unknown_protocol_name_is_refused() {
    // MQTT 3.1.1 [MQTT-3.1.2-1]; MQTT 5.0 [MQTT-3.1.2-1]
    let err = decode_err(V3_1_1, &connect(b"MQTX", 4, 0x02, None, &s(b"id")));
    assert_eq!(err, DecodeError::InvalidProtocolName);
    assert_eq!(err.statement(), Some("MQTT-3.1.2-1"));
}

#[test]
fn unsupported_protocol_level_is_reported_with_the_level() {
    // MQTT 3.1.1 [MQTT-3.1.2-2]; MQTT 5.0 [MQTT-3.1.2-2]
    assert_eq!(
        decode_err(V3_1_1, &connect(b"MQTT", 6, 0x02, None, &s(b"id"))),
        DecodeError::UnsupportedProtocolVersion { level: 6 }
    );
    assert_eq!(
        decode_err(V3_1_1, &connect(b"MQIsdp", 4, 0x02, None, &s(b"id"))),
        DecodeError::UnsupportedProtocolVersion { level: 4 }
    );
}

#[test]
fn connect_names_its_own_protocol_version() {
    for (name, level, version) in [(&b"MQIsdp"[..], 3, V3_1), (b"MQTT", 4, V3_1_1)] {
        // Decoded under any connection version: CONNECT carries its own.
        let Packet::Connect(c) = decode_ok(V5, &connect(name, level, 0x02, None, &s(b"id"))) else {
            panic!()
        };
        assert_eq!(c.protocol, version);
    }
    let Packet::Connect(c) = decode_ok(V3_1_1, &connect(b"MQTT", 5, 0x02, Some(&[]), &s(b"id")))
    else {
        panic!()
    };
    assert_eq!(c.protocol, V5);
}

#[test]
fn connect_reserved_flag_must_be_zero() {
    // MQTT 3.1.1 [MQTT-3.1.2-3]; MQTT 5.0 [MQTT-3.1.2-3]
    assert_eq!(
        decode_err(V3_1_1, &connect(b"MQTT", 4, 0x03, None, &s(b"id"))),
        DecodeError::ConnectReservedFlag
    );
    assert_eq!(
        decode_err(V5, &connect(b"MQTT", 5, 0x03, Some(&[]), &s(b"id"))),
        DecodeError::ConnectReservedFlag
    );
}

#[test]
fn will_qos_without_will_flag_is_malformed() {
    // MQTT 3.1.1 [MQTT-3.1.2-11] [MQTT-3.1.2-13]; MQTT 5.0 [MQTT-3.1.2-11]
    assert_eq!(
        decode_err(V3_1_1, &connect(b"MQTT", 4, 0x08, None, &s(b"id"))),
        DecodeError::WillQoSWithoutWill
    );
    assert_eq!(
        decode_err(V5, &connect(b"MQTT", 5, 0x10, Some(&[]), &s(b"id"))),
        DecodeError::WillQoSWithoutWill
    );
}

#[test]
fn will_qos_3_is_malformed() {
    // MQTT 3.1.1 [MQTT-3.1.2-14]; MQTT 5.0 [MQTT-3.1.2-12]
    let payload = cat(&[&s(b"id"), &s(b"w"), &s(b"m")]);
    assert_eq!(
        decode_err(V3_1_1, &connect(b"MQTT", 4, 0x1e, None, &payload)),
        DecodeError::InvalidWillQoS
    );
}

#[test]
fn will_retain_without_will_flag_is_malformed() {
    // MQTT 3.1.1 [MQTT-3.1.2-15]; MQTT 5.0 [MQTT-3.1.2-13]
    assert_eq!(
        decode_err(V3_1_1, &connect(b"MQTT", 4, 0x22, None, &s(b"id"))),
        DecodeError::WillRetainWithoutWill
    );
    assert_eq!(
        decode_err(V5, &connect(b"MQTT", 5, 0x22, Some(&[]), &s(b"id"))),
        DecodeError::WillRetainWithoutWill
    );
}

#[test]
fn will_flag_brings_will_topic_and_message_with_qos_and_retain() {
    // MQTT 3.1.1 [MQTT-3.1.2-9] [MQTT-3.1.3-10]; MQTT 5.0 [MQTT-3.1.2-9] [MQTT-3.1.3-11]
    let payload = cat(&[&s(b"id"), &s(b"will/t"), &s(b"bye")]);
    let Packet::Connect(c) = decode_ok(V3_1_1, &connect(b"MQTT", 4, 0x36, None, &payload)) else {
        panic!()
    };
    let will = c.will.unwrap();
    assert_eq!(will.topic.as_str(), "will/t");
    assert_eq!(&will.payload[..], b"bye");
    assert_eq!(will.qos, QoS::ExactlyOnce);
    assert!(will.retain);
}

#[test]
fn will_topic_with_wildcard_is_refused() {
    let payload = cat(&[&s(b"id"), &s(b"will/#"), &s(b"bye")]);
    assert!(matches!(
        decode_err(V3_1_1, &connect(b"MQTT", 4, 0x06, None, &payload)),
        DecodeError::InvalidTopicName(_)
    ));
}

#[test]
fn password_without_user_name_is_malformed_before_v5_only() {
    // MQTT 3.1.1 [MQTT-3.1.2-22]; 5.0 allows a password without a user name.
    let payload = cat(&[&s(b"id"), &s(b"pw")]);
    assert_eq!(
        decode_err(V3_1_1, &connect(b"MQTT", 4, 0x42, None, &payload)),
        DecodeError::PasswordWithoutUsername
    );
    let Packet::Connect(c) = decode_ok(V5, &connect(b"MQTT", 5, 0x42, Some(&[]), &payload)) else {
        panic!()
    };
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
    assert_eq!(c.username, None);
}

#[test]
fn connect_payload_fields_come_in_order_and_only_when_flagged() {
    // MQTT 3.1.1 [MQTT-3.1.3-1] [MQTT-3.1.3-3] [MQTT-3.1.3-4] [MQTT-3.1.3-11]
    // [MQTT-3.1.2-18] [MQTT-3.1.2-19] [MQTT-3.1.2-20] [MQTT-3.1.2-21];
    // MQTT 5.0 [MQTT-3.1.3-1] [MQTT-3.1.3-3] [MQTT-3.1.3-4] [MQTT-3.1.3-12]
    // [MQTT-3.1.2-16] [MQTT-3.1.2-17] [MQTT-3.1.2-18] [MQTT-3.1.2-19]
    let payload = cat(&[&s(b"id"), &s(b"w"), &s(b"m"), &s(b"user"), &s(b"pass")]);
    let bytes = connect(b"MQTT", 4, 0xc6, None, &payload);
    let Packet::Connect(c) = decode_ok(V3_1_1, &bytes) else {
        panic!()
    };
    assert_eq!(c.client_id, "id");
    assert_eq!(c.username.as_ref().unwrap(), "user");
    assert_eq!(c.password.as_deref(), Some(&b"pass"[..]));
    // Re-encoding writes the same flags and fields in the same order.
    let mut out = Vec::new();
    Packet::Connect(c.clone()).encode(V3_1_1, &mut out).unwrap();
    assert_eq!(out, bytes);
    // No user name, no password: flags 0 and no fields.
    let mut bare = (*c).clone();
    bare.username = None;
    bare.password = None;
    bare.will = None;
    let mut out = Vec::new();
    Packet::Connect(Box::new(bare))
        .encode(V3_1_1, &mut out)
        .unwrap();
    assert_eq!(out, connect(b"MQTT", 4, 0x02, None, &s(b"id")));
}

#[test]
fn will_properties_come_before_the_will_topic_in_v5() {
    // MQTT 5.0 [MQTT-3.1.2-9] [MQTT-3.1.3-1]
    let will_props = prop_list(&[0x18, 0, 0, 0, 10]);
    let payload = cat(&[&s(b"id"), &will_props, &s(b"w"), &s(b"m")]);
    let Packet::Connect(c) = decode_ok(V5, &connect(b"MQTT", 5, 0x06, Some(&[]), &payload)) else {
        panic!()
    };
    assert_eq!(c.will.unwrap().properties.will_delay_interval(), Some(10));
}

// ---- CONNACK --------------------------------------------------------------------------------

#[test]
fn connack_reserved_flags_must_be_zero() {
    // MQTT 5.0 [MQTT-3.2.2-1] (3.1.1 section 3.2.2.1 reserves the same bits)
    assert_eq!(
        decode_err(V5, &[0x20, 0x03, 0x02, 0x00, 0x00]),
        DecodeError::ConnAckReservedFlags
    );
    assert_eq!(
        decode_err(V3_1_1, &[0x20, 0x02, 0x80, 0x00]),
        DecodeError::ConnAckReservedFlags
    );
}

#[test]
fn connack_codes_come_only_from_the_defined_list() {
    // MQTT 5.0 [MQTT-3.2.2-8]; 3.1.1 return codes 6-255 are reserved.
    assert!(matches!(
        decode_err(V3_1_1, &[0x20, 0x02, 0x00, 0x06]),
        DecodeError::InvalidReasonCode { code: 6, .. }
    ));
    assert!(matches!(
        decode_err(V5, &[0x20, 0x03, 0x00, 0x01, 0x00]),
        DecodeError::InvalidReasonCode { code: 1, .. }
    ));
}

// ---- Acknowledgement reason codes -----------------------------------------------------------

#[test]
fn acknowledgements_carry_only_their_defined_reason_codes() {
    // MQTT 5.0 [MQTT-3.4.2-1] PUBACK, [MQTT-3.5.2-1] PUBREC, [MQTT-3.6.2-1] PUBREL,
    // [MQTT-3.7.2-1] PUBCOMP, [MQTT-3.11.3-2] UNSUBACK, [MQTT-3.14.2-1] DISCONNECT,
    // [MQTT-3.15.2-1] AUTH
    let cases: &[(&[u8], u8)] = &[
        (&[0x40, 0x03, 0x00, 0x01, 0x92], 0x92),
        (&[0x50, 0x03, 0x00, 0x01, 0x01], 0x01),
        (&[0x62, 0x03, 0x00, 0x01, 0x80], 0x80),
        (&[0x70, 0x03, 0x00, 0x01, 0x10], 0x10),
        (&[0xb0, 0x04, 0x00, 0x01, 0x00, 0x02], 0x02),
        (&[0xe0, 0x01, 0x01], 0x01),
        (&[0xf0, 0x01, 0x01], 0x01),
    ];
    for (bytes, bad) in cases {
        let err = decode_err(V5, bytes);
        assert!(
            matches!(err, DecodeError::InvalidReasonCode { code, .. } if code == *bad),
            "{bytes:02x?}: {err:?}"
        );
    }
}

#[test]
fn suback_uses_only_defined_return_codes() {
    // MQTT 3.1.1 [MQTT-3.9.3-2]; MQTT 5.0 [MQTT-3.9.3-2]
    assert!(matches!(
        decode_err(V3_1_1, &[0x90, 0x03, 0x00, 0x01, 0x03]),
        DecodeError::InvalidReasonCode { code: 3, .. }
    ));
    // 0x87 exists in 5.0 but not in 3.1.1.
    assert!(matches!(
        decode_err(V3_1_1, &[0x90, 0x03, 0x00, 0x01, 0x87]),
        DecodeError::InvalidReasonCode { code: 0x87, .. }
    ));
    assert!(matches!(
        decode_err(V5, &[0x90, 0x04, 0x00, 0x01, 0x00, 0x03]),
        DecodeError::InvalidReasonCode { code: 3, .. }
    ));
    let Packet::SubAck(s) = decode_ok(V3_1_1, &[0x90, 0x05, 0x00, 0x01, 0x00, 0x02, 0x80]) else {
        panic!()
    };
    assert_eq!(
        s.reasons,
        [
            SubAckReason::GrantedQoS0,
            SubAckReason::GrantedQoS2,
            SubAckReason::UnspecifiedError
        ]
    );
}

#[test]
fn v5_acknowledgement_tail_may_be_left_out() {
    // MQTT 5.0 sections 3.4.2.1, 3.14.2.1: Remaining Length 2 (or 0) means Success and no
    // properties; a reason without a property length is also valid.
    let Packet::PubAck(a) = decode_ok(V5, &[0x40, 0x02, 0x00, 0x07]) else {
        panic!()
    };
    assert_eq!(a.reason, PubAckReason::Success);
    let Packet::PubAck(a) = decode_ok(V5, &[0x40, 0x03, 0x00, 0x07, 0x10]) else {
        panic!()
    };
    assert_eq!(a.reason, PubAckReason::NoMatchingSubscribers);
    let Packet::Disconnect(d) = decode_ok(V5, &[0xe0, 0x00]) else {
        panic!()
    };
    assert_eq!(d.reason, DisconnectReason::NormalDisconnection);
}

// ---- SUBSCRIBE / UNSUBSCRIBE ---------------------------------------------------------------

#[test]
fn subscribe_without_topic_filters_is_refused() {
    // MQTT 3.1.1 [MQTT-3.8.3-3]; MQTT 5.0 [MQTT-3.8.3-2]
    assert_eq!(
        decode_err(V3_1_1, &[0x82, 0x02, 0x00, 0x01]),
        DecodeError::EmptySubscribe
    );
    assert_eq!(
        decode_err(V5, &[0x82, 0x03, 0x00, 0x01, 0x00]),
        DecodeError::EmptySubscribe
    );
}

#[test]
fn subscribe_reserved_option_bits_or_qos_3_are_malformed() {
    // MQTT 3.1.1 [MQTT-3.8.3-4]; MQTT 5.0 [MQTT-3.8.3-5]
    for options in [0x03u8, 0x04, 0x80] {
        let body = cat(&[&[0x00, 0x01], &s(b"a"), &[options]]);
        assert_eq!(
            decode_err(V3_1_1, &packet(0x82, &body)),
            DecodeError::InvalidSubscriptionOptions,
            "options {options:#04x}"
        );
    }
    for options in [0x03u8, 0x40, 0x80] {
        let body = cat(&[&[0x00, 0x01, 0x00], &s(b"a"), &[options]]);
        assert_eq!(
            decode_err(V5, &packet(0x82, &body)),
            DecodeError::InvalidSubscriptionOptions,
            "options {options:#04x}"
        );
    }
}

#[test]
fn retain_handling_3_is_a_protocol_error() {
    // MQTT 5.0 section 3.8.3.1
    let body = cat(&[&[0x00, 0x01, 0x00], &s(b"a"), &[0x30]]);
    let err = decode_err(V5, &packet(0x82, &body));
    assert_eq!(err, DecodeError::InvalidRetainHandling);
    assert_eq!(err.reason_code(), DisconnectReason::ProtocolError);
}

#[test]
fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    // MQTT 5.0 [MQTT-3.8.3-4]
    let body = cat(&[&[0x00, 0x01, 0x00], &s(b"$share/g/a"), &[0x04]]);
    assert_eq!(
        decode_err(V5, &packet(0x82, &body)),
        DecodeError::NoLocalOnSharedSubscription
    );
}

#[test]
fn v5_subscription_options_decode_into_their_fields() {
    // MQTT 5.0 section 3.8.3.1: QoS 1, No Local, Retain As Published, Retain Handling 2.
    let body = cat(&[&[0x00, 0x01, 0x00], &s(b"a"), &[0x2d]]);
    let Packet::Subscribe(sub) = decode_ok(V5, &packet(0x82, &body)) else {
        panic!()
    };
    assert_eq!(
        sub.filters[0].1,
        SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        }
    );
}

#[test]
fn unsubscribe_without_topic_filters_is_refused() {
    // MQTT 3.1.1 [MQTT-3.10.3-2]; MQTT 5.0 [MQTT-3.10.3-2]
    assert_eq!(
        decode_err(V3_1_1, &[0xa2, 0x02, 0x00, 0x01]),
        DecodeError::EmptyUnsubscribe
    );
    assert_eq!(
        decode_err(V5, &[0xa2, 0x03, 0x00, 0x01, 0x00]),
        DecodeError::EmptyUnsubscribe
    );
}

#[test]
fn invalid_topic_filters_are_refused_in_subscribe_and_unsubscribe() {
    // MQTT 3.1.1 [MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.3-1];
    // MQTT 5.0 [MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.3-1]
    for filter in [&b"a/#/b"[..], b"a#", b"a+/b", b"+a", b""] {
        let sub = cat(&[&[0x00, 0x01], &s(filter), &[0x00]]);
        let err = decode_err(V3_1_1, &packet(0x82, &sub));
        assert!(matches!(err, DecodeError::InvalidTopicFilter(_)), "{err:?}");
        let unsub = cat(&[&[0x00, 0x01], &s(filter)]);
        let err = decode_err(V3_1_1, &packet(0xa2, &unsub));
        assert!(matches!(err, DecodeError::InvalidTopicFilter(_)), "{err:?}");
    }
}

// ---- Properties -----------------------------------------------------------------------------

fn publish_with_props(raw: &[u8]) -> Vec<u8> {
    packet(0x30, &cat(&[&s(b"t"), &prop_list(raw)]))
}

#[test]
fn a_packet_without_properties_still_has_a_zero_property_length() {
    // MQTT 5.0 [MQTT-2.2.2-1]
    let sub = Packet::Subscribe(Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        properties: Properties::new(),
        filters: vec![(
            surgemq_core::topic::TopicFilter::parse("a").unwrap(),
            SubscriptionOptions::qos(QoS::AtMostOnce),
        )],
    });
    let mut out = Vec::new();
    sub.encode(V5, &mut out).unwrap();
    assert_eq!(
        out,
        vec![0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x00]
    );
    // And a 5.0 SUBSCRIBE that leaves the property length out is malformed.
    assert!(
        decode(
            &Bytes::from(vec![0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00]),
            V5,
            MAX_PACKET_SIZE
        )
        .is_err()
    );
}

#[test]
fn unknown_property_identifier_is_refused() {
    assert_eq!(
        decode_err(V5, &publish_with_props(&[0x07, 0x00])),
        DecodeError::UnknownProperty { id: 7 }
    );
}

#[test]
fn property_on_a_packet_that_may_not_carry_it_is_refused() {
    // Topic Alias belongs to PUBLISH, not CONNECT.
    let err = decode_err(
        V5,
        &connect(b"MQTT", 5, 0x02, Some(&[0x23, 0x00, 0x01]), &s(b"id")),
    );
    assert_eq!(
        err,
        DecodeError::PropertyNotAllowed {
            id: PropertyId::TopicAlias,
            context: PropertyContext::Connect
        }
    );
    assert_eq!(err.reason_code(), DisconnectReason::ProtocolError);
    // Will Delay Interval belongs to the Will Properties, not CONNECT's own.
    assert!(matches!(
        decode_err(
            V5,
            &connect(b"MQTT", 5, 0x02, Some(&[0x18, 0, 0, 0, 1]), &s(b"id"))
        ),
        DecodeError::PropertyNotAllowed { .. }
    ));
}

#[test]
fn repeated_property_is_a_protocol_error_except_user_property_and_publish_subscription_id() {
    let twice_expiry = [0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2];
    let err = decode_err(V5, &publish_with_props(&twice_expiry));
    assert_eq!(
        err,
        DecodeError::DuplicateProperty {
            id: PropertyId::MessageExpiryInterval
        }
    );
    assert_eq!(err.reason_code(), DisconnectReason::ProtocolError);

    let mut users = vec![0x26];
    users.extend(s(b"k"));
    users.extend(s(b"1"));
    users.push(0x26);
    users.extend(s(b"k"));
    users.extend(s(b"2"));
    users.extend([0x0b, 0x01, 0x0b, 0x02]);
    let Packet::Publish(p) = decode_ok(V5, &publish_with_props(&users)) else {
        panic!()
    };
    // MQTT 5.0 [MQTT-3.3.2-18]: User Properties keep their order.
    let values: Vec<&str> = p
        .properties
        .user_properties()
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(values, ["1", "2"]);
    assert_eq!(
        p.properties.subscription_identifiers().collect::<Vec<_>>(),
        [1, 2]
    );

    // But only one Subscription Identifier in SUBSCRIBE.
    let body = cat(&[
        &[0x00, 0x01],
        &prop_list(&[0x0b, 0x01, 0x0b, 0x02]),
        &s(b"a"),
        &[0],
    ]);
    assert_eq!(
        decode_err(V5, &packet(0x82, &body)),
        DecodeError::DuplicateProperty {
            id: PropertyId::SubscriptionIdentifier
        }
    );
}

#[test]
fn forbidden_property_values_are_refused() {
    let cases: &[(&[u8], PropertyId)] = &[
        // MQTT 5.0 [MQTT-3.3.2-8]: Topic Alias 0.
        (&[0x23, 0x00, 0x00], PropertyId::TopicAlias),
        (&[0x01, 0x02], PropertyId::PayloadFormatIndicator),
        (&[0x0b, 0x00], PropertyId::SubscriptionIdentifier),
    ];
    for (raw, id) in cases {
        assert_eq!(
            decode_err(V5, &publish_with_props(raw)),
            DecodeError::InvalidPropertyValue { id: *id }
        );
    }
    for (raw, id) in [
        (&[0x21u8, 0x00, 0x00][..], PropertyId::ReceiveMaximum),
        (&[0x27, 0, 0, 0, 0], PropertyId::MaximumPacketSize),
        (&[0x17, 0x02], PropertyId::RequestProblemInformation),
        (&[0x19, 0x05], PropertyId::RequestResponseInformation),
    ] {
        assert_eq!(
            decode_err(V5, &connect(b"MQTT", 5, 0x02, Some(raw), &s(b"id"))),
            DecodeError::InvalidPropertyValue { id }
        );
    }
}

#[test]
fn property_length_past_the_packet_end_is_malformed() {
    let body = cat(&[&s(b"t"), &[0x05, 0x02, 0x00]]);
    assert_eq!(decode_err(V5, &packet(0x30, &body)), DecodeError::Truncated);
}

// ---- Encoder refusals ------------------------------------------------------------------------

#[test]
fn encoder_refuses_what_the_spec_forbids_a_sender() {
    use surgemq_core::topic::TopicName;
    let publish = |qos, id: Option<u16>, dup| {
        Packet::Publish(Publish {
            dup,
            qos,
            retain: false,
            topic: TopicName::parse("t").unwrap(),
            packet_id: id.and_then(PacketId::new),
            properties: Properties::new(),
            payload: Bytes::new(),
        })
    };
    let mut out = Vec::new();
    // MQTT 3.1.1 [MQTT-2.3.1-1]: QoS 1 needs a packet id; [MQTT-2.3.1-5]: QoS 0 has none.
    assert_eq!(
        publish(QoS::AtLeastOnce, None, false).encode(V3_1_1, &mut out),
        Err(EncodeError::PacketIdMismatch)
    );
    assert_eq!(
        publish(QoS::AtMostOnce, Some(1), false).encode(V3_1_1, &mut out),
        Err(EncodeError::PacketIdMismatch)
    );
    // [MQTT-3.3.1-2]: no DUP at QoS 0.
    assert_eq!(
        publish(QoS::AtMostOnce, None, true).encode(V3_1_1, &mut out),
        Err(EncodeError::DupOnQoS0)
    );
    // AUTH does not exist before 5.0.
    assert!(matches!(
        Packet::Auth(Auth {
            reason: AuthReason::Success,
            properties: Properties::new()
        })
        .encode(V3_1_1, &mut out),
        Err(EncodeError::PacketNotInVersion { .. })
    ));
    // 3.1.1 [MQTT-3.8.3-3]: a SUBSCRIBE carries at least one filter.
    assert_eq!(
        Packet::Subscribe(Subscribe {
            packet_id: PacketId::new(1).unwrap(),
            properties: Properties::new(),
            filters: vec![],
        })
        .encode(V3_1_1, &mut out),
        Err(EncodeError::EmptyList)
    );
    // Duplicate property.
    let dup_props = Properties::new()
        .with(Property::ReasonString("a".try_into().unwrap()))
        .with(Property::ReasonString("b".try_into().unwrap()));
    assert!(matches!(
        Packet::Disconnect(Disconnect {
            reason: DisconnectReason::NormalDisconnection,
            properties: dup_props
        })
        .encode(V5, &mut out),
        Err(EncodeError::DuplicateProperty { .. })
    ));
    assert!(out.is_empty());
}

#[test]
fn v3_suback_failure_codes_collapse_to_0x80() {
    // MQTT 3.1.1 [MQTT-3.9.3-2]: only 0x00, 0x01, 0x02 and 0x80 on the wire.
    let suback = Packet::SubAck(SubAck {
        packet_id: PacketId::new(1).unwrap(),
        properties: Properties::new(),
        reasons: vec![SubAckReason::GrantedQoS1, SubAckReason::NotAuthorized],
    });
    let mut out = Vec::new();
    suback.encode(V3_1_1, &mut out).unwrap();
    assert_eq!(out, vec![0x90, 0x04, 0x00, 0x01, 0x01, 0x80]);
}

#[test]
fn v3_connack_uses_the_3x_return_codes() {
    let connack = |reason| {
        let mut out = Vec::new();
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties: Properties::new(),
        })
        .encode(V3_1_1, &mut out)
        .unwrap();
        out
    };
    // 3.1.1 [MQTT-3.1.2-2]: unacceptable protocol version is return code 0x01.
    assert_eq!(
        connack(ConnectReason::UnsupportedProtocolVersion),
        [0x20, 2, 0, 1]
    );
    // 3.1.1 [MQTT-3.1.3-9]: identifier rejected is 0x02.
    assert_eq!(
        connack(ConnectReason::ClientIdentifierNotValid),
        [0x20, 2, 0, 2]
    );
    assert_eq!(
        connack(ConnectReason::BadUserNameOrPassword),
        [0x20, 2, 0, 4]
    );
    assert_eq!(connack(ConnectReason::Banned), [0x20, 2, 0, 5]);
}

#[test]
fn a_fixed_header_claiming_a_huge_packet_does_not_make_the_decoder_reserve_it() {
    // `30 FF FF FF 7F`: a PUBLISH claiming 268,435,455 bytes, within the default maximum. Only
    // the header has arrived: the buffer must not grow to the claimed size on the peer's word.
    let mut buf = BytesMut::from(&[0x30, 0xff, 0xff, 0xff, 0x7f][..]);
    assert_eq!(decode_buf(&mut buf, V3_1_1, MAX_PACKET_SIZE), Ok(None));
    assert!(
        buf.capacity() <= 128 * 1024,
        "reserved {} bytes",
        buf.capacity()
    );
}
