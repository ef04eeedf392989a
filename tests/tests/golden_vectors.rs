//! Golden vectors: packet bytes captured from real Mosquitto 2.0.11 clients and broker on
//! loopback, decoded with our codec, checked field by field, and re-encoded byte for byte.
//!
//! # How the bytes were captured
//!
//! A Mosquitto 2.0.11 broker listened on 127.0.0.1:48831 (`listener 48831 127.0.0.1`,
//! `allow_anonymous true`). A throwaway Python TCP proxy on 127.0.0.1:48832 forwarded every
//! connection to it and logged each MQTT packet of each direction as hex (framed by its Remaining
//! Length). The clients were `mosquitto_pub` / `mosquitto_sub` 2.0.11 pointed at the proxy
//! (`-p 48832`); the command line is given above each vector. "C>S" is client to server,
//! "S>C" server to client.
//!
//! Not captured: the v5 subscription options No Local, Retain As Published and Retain Handling,
//! because `mosquitto_sub` 2.0.11 has no flags for them (it always sends options byte `qos`).
//! Those are covered by the codec's own round-trip tests.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use bytes::{Bytes, BytesMut};
use surgemq_core::codec::{
    ConnectReason, Decoded, DisconnectReason, MAX_PACKET_SIZE, Packet, PacketId, PacketType,
    Property, ProtocolVersion, PubAckReason, PubRelReason, QoS, RetainHandling, SubAckReason,
    SubscriptionOptions, UnsubAckReason, decode, decode_buf,
};
use surgemq_core::string::MqttString;
use surgemq_core::topic::{TopicFilter, TopicName};
use surgemq_tests::hex;

const V31: ProtocolVersion = ProtocolVersion::V3_1;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Decodes a captured packet, which must be exactly one whole packet.
fn decode_capture(dump: &str, version: ProtocolVersion) -> (Packet, Vec<u8>) {
    let wire = hex(dump);
    let input = Bytes::from(wire.clone());
    match decode(&input, version, MAX_PACKET_SIZE) {
        Ok(Decoded::Packet { packet, consumed }) => {
            assert_eq!(consumed, wire.len(), "capture holds more than one packet");
            (packet, wire)
        }
        Ok(Decoded::NeedMore) => panic!("capture is not a whole packet: {dump}"),
        Err(e) => panic!("capture failed to decode as {version:?}: {e:?}\n{dump}"),
    }
}

/// Shows bytes the way the captures are written, so a mismatch is easy to read.
fn to_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Re-encodes `packet` and requires the captured bytes back, byte for byte.
fn assert_reencodes_identically(packet: &Packet, version: ProtocolVersion, wire: &[u8]) {
    assert_eq!(
        packet.encoded_len(version).unwrap(),
        wire.len(),
        "encoded_len differs from the capture"
    );
    let mut out = BytesMut::new();
    let written = packet.encode(version, &mut out).unwrap();
    assert_eq!(written, out.len());
    assert_eq!(
        to_hex(&out),
        to_hex(wire),
        "re-encoding differs from the capture (left: ours, right: mosquitto)"
    );
}

/// Decodes one capture, re-encodes it identically, and returns the packet for field checks.
fn golden(dump: &str, version: ProtocolVersion) -> Packet {
    let (packet, wire) = decode_capture(dump, version);
    assert_reencodes_identically(&packet, version, &wire);
    packet
}

/// Feeds a whole captured direction of one connection to `decode_buf` in one chunk, decodes it
/// packet by packet, re-encodes them all and requires the same stream back.
fn golden_stream(dumps: &[&str], version: ProtocolVersion) -> Vec<Packet> {
    let stream: Vec<u8> = dumps.iter().flat_map(|d| hex(d)).collect();
    let mut buf = BytesMut::from(&stream[..]);
    let mut packets = Vec::new();
    while let Some(packet) = decode_buf(&mut buf, version, MAX_PACKET_SIZE).unwrap() {
        packets.push(packet);
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    assert_eq!(packets.len(), dumps.len());
    let mut out = BytesMut::new();
    for packet in &packets {
        packet.encode(version, &mut out).unwrap();
    }
    assert_eq!(to_hex(&out), to_hex(&stream));
    packets
}

fn types(packets: &[Packet]) -> Vec<PacketType> {
    packets.iter().map(Packet::packet_type).collect()
}

fn s(value: &'static str) -> MqttString {
    MqttString::from_static(value).unwrap()
}

fn topic(value: &'static str) -> TopicName {
    TopicName::from_static(value).unwrap()
}

fn filter(value: &'static str) -> TopicFilter {
    TopicFilter::from_static(value).unwrap()
}

fn id(value: u16) -> PacketId {
    PacketId::new(value).unwrap()
}

// ---------------------------------------------------------------------------------------------
// MQTT 3.1 (`-V mqttv31`, protocol name MQIsdp, level 3)
// ---------------------------------------------------------------------------------------------

// mosquitto_sub -V mqttv31 -p 48832 -i sub-mqttv31 -k 5 -q 2
//     -t h/mqttv31/a -t 'h/mqttv31/+/b' -t 'h/mqttv31/#' -C 3
// then, 6.5 s later (after one keep-alive ping), the three mosquitto_pub commands below.
const V31_SUB_CONNECT: &str =
    "10 19 00 06 4d 51 49 73 64 70 03 02 00 05 00 0b 73 75 62 2d 6d 71 74 74 76 33 31";
const V31_CONNACK: &str = "20 02 00 00";
const V31_SUBSCRIBE: &str = "82 2e 00 01 00 0b 68 2f 6d 71 74 74 76 33 31 2f 61 02 00 0d 68 2f
    6d 71 74 74 76 33 31 2f 2b 2f 62 02 00 0b 68 2f 6d 71 74 74 76 33 31 2f 23 02";
const V31_SUBACK: &str = "90 05 00 01 02 02 02";
// Broker to the subscriber: the QoS 2 retained publish below, forwarded with packet id 3 and
// the RETAIN flag cleared (live delivery).
const V31_FORWARDED_PUBLISH_QOS2: &str =
    "34 19 00 0b 68 2f 6d 71 74 74 76 33 31 2f 7a 00 03 68 65 6c 6c 6f 2d 71 6f 73 32";

// mosquitto_pub -V mqttv31 -p 48832 -i pub0-mqttv31 -t h/mqttv31/a -m hello-qos0
const V31_PUB0_CONNECT: &str =
    "10 1a 00 06 4d 51 49 73 64 70 03 02 00 3c 00 0c 70 75 62 30 2d 6d 71 74 74 76 33 31";
const V31_PUBLISH_QOS0: &str =
    "30 17 00 0b 68 2f 6d 71 74 74 76 33 31 2f 61 68 65 6c 6c 6f 2d 71 6f 73 30";

// mosquitto_pub -V mqttv31 -p 48832 -i pub1-mqttv31 -t h/mqttv31/x/b -m hello-qos1 -q 1 -r
const V31_PUBLISH_QOS1_RETAIN: &str =
    "33 1b 00 0d 68 2f 6d 71 74 74 76 33 31 2f 78 2f 62 00 01 68 65 6c 6c 6f 2d 71 6f 73 31";

// mosquitto_pub -V mqttv31 -p 48832 -i pub2-mqttv31 -t h/mqttv31/z -m hello-qos2 -q 2 -r
const V31_PUBLISH_QOS2_RETAIN: &str =
    "35 19 00 0b 68 2f 6d 71 74 74 76 33 31 2f 7a 00 01 68 65 6c 6c 6f 2d 71 6f 73 32";

// mosquitto_pub -V mqttv31 -p 48832 -i will-mqttv31 -u alice -P secret
//     --will-topic h/mqttv31/will --will-payload gone --will-qos 1 --will-retain -t h/mqttv31/w -m x
const V31_CONNECT_WILL_USER_PASSWORD: &str = "10 3f 00 06 4d 51 49 73 64 70 03 ee 00 3c 00 0c
    77 69 6c 6c 2d 6d 71 74 74 76 33 31 00 0e 68 2f 6d 71 74 74 76 33 31 2f 77 69 6c 6c 00 04
    67 6f 6e 65 00 05 61 6c 69 63 65 00 06 73 65 63 72 65 74";

// mosquitto_sub -V mqttv31 -p 48832 -i unsub-mqttv31 -t h/mqttv31/a -U h/mqttv31/a
//     -U 'h/mqttv31/+/b' -E      (mosquitto_sub sends one UNSUBSCRIBE per -U)
const V31_UNSUBSCRIBE_1: &str = "a2 0f 00 02 00 0b 68 2f 6d 71 74 74 76 33 31 2f 61";
const V31_UNSUBSCRIBE_2: &str = "a2 11 00 03 00 0d 68 2f 6d 71 74 74 76 33 31 2f 2b 2f 62";
const V31_UNSUBACK_2: &str = "b0 02 00 02";

#[test]
fn mosquitto_v31_connect_clean_session_decodes_and_reencodes_identically() {
    let Packet::Connect(c) = golden(V31_SUB_CONNECT, V31) else {
        panic!()
    };
    assert_eq!(c.protocol, V31);
    assert!(c.clean_start);
    assert_eq!(c.keep_alive, 5);
    assert_eq!(c.client_id.as_str(), "sub-mqttv31");
    assert!(c.will.is_none() && c.username.is_none() && c.password.is_none());
    assert!(c.properties.is_empty());

    let Packet::Connect(c) = golden(V31_PUB0_CONNECT, V31) else {
        panic!()
    };
    assert_eq!(c.keep_alive, 60);
    assert_eq!(c.client_id.as_str(), "pub0-mqttv31");
}

#[test]
fn mosquitto_v31_connect_with_will_username_and_password_decodes_and_reencodes_identically() {
    // Flags 0xee: username, password, will retain, will QoS 1, will, clean session.
    let Packet::Connect(c) = golden(V31_CONNECT_WILL_USER_PASSWORD, V31) else {
        panic!()
    };
    assert_eq!(c.protocol, V31);
    assert!(c.clean_start);
    assert_eq!(c.client_id.as_str(), "will-mqttv31");
    let will = c.will.as_ref().unwrap();
    assert_eq!(will.topic, topic("h/mqttv31/will"));
    assert_eq!(&will.payload[..], b"gone");
    assert_eq!(will.qos, QoS::AtLeastOnce);
    assert!(will.retain);
    assert_eq!(c.username.as_ref().unwrap().as_str(), "alice");
    assert_eq!(&c.password.as_ref().unwrap()[..], b"secret");
}

#[test]
fn mosquitto_v31_connack_accepted_decodes_and_reencodes_identically() {
    let Packet::ConnAck(a) = golden(V31_CONNACK, V31) else {
        panic!()
    };
    assert!(!a.session_present);
    assert_eq!(a.reason, ConnectReason::Success);
}

#[test]
fn mosquitto_v31_subscribe_three_filters_and_suback_decode_and_reencode_identically() {
    let Packet::Subscribe(sub) = golden(V31_SUBSCRIBE, V31) else {
        panic!()
    };
    assert_eq!(sub.packet_id, id(1));
    let qos2 = SubscriptionOptions::qos(QoS::ExactlyOnce);
    assert_eq!(
        sub.filters,
        vec![
            (filter("h/mqttv31/a"), qos2),
            (filter("h/mqttv31/+/b"), qos2),
            (filter("h/mqttv31/#"), qos2),
        ]
    );

    let Packet::SubAck(ack) = golden(V31_SUBACK, V31) else {
        panic!()
    };
    assert_eq!(ack.packet_id, id(1));
    assert_eq!(ack.reasons, vec![SubAckReason::GrantedQoS2; 3]);
}

#[test]
fn mosquitto_v31_publish_qos0_decodes_and_reencodes_identically() {
    let Packet::Publish(p) = golden(V31_PUBLISH_QOS0, V31) else {
        panic!()
    };
    assert_eq!((p.qos, p.retain, p.dup), (QoS::AtMostOnce, false, false));
    assert_eq!(p.topic, topic("h/mqttv31/a"));
    assert_eq!(p.packet_id, None);
    assert_eq!(&p.payload[..], b"hello-qos0");
}

#[test]
fn mosquitto_v31_publish_qos1_retained_and_puback_decode_and_reencode_identically() {
    let Packet::Publish(p) = golden(V31_PUBLISH_QOS1_RETAIN, V31) else {
        panic!()
    };
    assert_eq!((p.qos, p.retain, p.dup), (QoS::AtLeastOnce, true, false));
    assert_eq!(p.topic, topic("h/mqttv31/x/b"));
    assert_eq!(p.packet_id, Some(id(1)));
    assert_eq!(&p.payload[..], b"hello-qos1");

    // S>C, same connection.
    let Packet::PubAck(a) = golden("40 02 00 01", V31) else {
        panic!()
    };
    assert_eq!(a.packet_id, id(1));
    assert_eq!(a.reason, PubAckReason::Success);
}

#[test]
fn mosquitto_v31_qos2_exchange_decodes_and_reencodes_identically() {
    let Packet::Publish(p) = golden(V31_PUBLISH_QOS2_RETAIN, V31) else {
        panic!()
    };
    assert_eq!((p.qos, p.retain, p.dup), (QoS::ExactlyOnce, true, false));
    assert_eq!(p.topic, topic("h/mqttv31/z"));
    assert_eq!(p.packet_id, Some(id(1)));
    assert_eq!(&p.payload[..], b"hello-qos2");

    // S>C PUBREC, C>S PUBREL, S>C PUBCOMP on the same connection.
    let Packet::PubRec(rec) = golden("50 02 00 01", V31) else {
        panic!()
    };
    assert_eq!((rec.packet_id, rec.reason), (id(1), PubAckReason::Success));
    let Packet::PubRel(rel) = golden("62 02 00 01", V31) else {
        panic!()
    };
    assert_eq!((rel.packet_id, rel.reason), (id(1), PubRelReason::Success));
    let Packet::PubComp(comp) = golden("70 02 00 01", V31) else {
        panic!()
    };
    assert_eq!(
        (comp.packet_id, comp.reason),
        (id(1), PubRelReason::Success)
    );
}

#[test]
fn mosquitto_v31_broker_forwarded_qos2_publish_decodes_and_reencodes_identically() {
    let Packet::Publish(p) = golden(V31_FORWARDED_PUBLISH_QOS2, V31) else {
        panic!()
    };
    assert_eq!((p.qos, p.retain, p.dup), (QoS::ExactlyOnce, false, false));
    assert_eq!(p.packet_id, Some(id(3)));
    assert_eq!(&p.payload[..], b"hello-qos2");
}

#[test]
fn mosquitto_v31_unsubscribe_and_unsuback_decode_and_reencode_identically() {
    let Packet::Unsubscribe(u) = golden(V31_UNSUBSCRIBE_1, V31) else {
        panic!()
    };
    assert_eq!(u.packet_id, id(2));
    assert_eq!(u.filters, vec![filter("h/mqttv31/a")]);
    let Packet::Unsubscribe(u) = golden(V31_UNSUBSCRIBE_2, V31) else {
        panic!()
    };
    assert_eq!(u.packet_id, id(3));
    assert_eq!(u.filters, vec![filter("h/mqttv31/+/b")]);

    let Packet::UnsubAck(ack) = golden(V31_UNSUBACK_2, V31) else {
        panic!()
    };
    assert_eq!(ack.packet_id, id(2));
    assert!(ack.reasons.is_empty() && ack.properties.is_empty());
}

#[test]
fn mosquitto_v31_pingreq_pingresp_disconnect_decode_and_reencode_identically() {
    assert_eq!(golden("c0 00", V31), Packet::PingReq);
    assert_eq!(golden("d0 00", V31), Packet::PingResp);
    let Packet::Disconnect(d) = golden("e0 00", V31) else {
        panic!()
    };
    assert_eq!(d.reason, DisconnectReason::NormalDisconnection);
}

#[test]
fn mosquitto_v31_subscriber_session_streams_decode_and_reencode_identically() {
    // Both directions of the `sub-mqttv31` connection above, in capture order.
    let client = golden_stream(
        &[
            V31_SUB_CONNECT,
            V31_SUBSCRIBE,
            "c0 00",
            "40 02 00 01",
            "50 02 00 03",
            "70 02 00 03",
            "e0 00",
        ],
        V31,
    );
    use PacketType as T;
    assert_eq!(
        types(&client),
        [
            T::Connect,
            T::Subscribe,
            T::PingReq,
            T::PubAck,
            T::PubRec,
            T::PubComp,
            T::Disconnect
        ]
    );
    let server = golden_stream(
        &[
            V31_CONNACK,
            V31_SUBACK,
            "d0 00",
            V31_PUBLISH_QOS0,
            "32 1b 00 0d 68 2f 6d 71 74 74 76 33 31 2f 78 2f 62 00 01 68 65 6c 6c 6f 2d 71 6f 73 31",
            V31_FORWARDED_PUBLISH_QOS2,
            "62 02 00 03",
        ],
        V31,
    );
    assert_eq!(
        types(&server),
        [
            T::ConnAck,
            T::SubAck,
            T::PingResp,
            T::Publish,
            T::Publish,
            T::Publish,
            T::PubRel
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// MQTT 3.1.1 (`-V mqttv311`, protocol name MQTT, level 4)
// ---------------------------------------------------------------------------------------------

// mosquitto_sub -V mqttv311 -p 48832 -i sub-mqttv311 -k 5 -q 2
//     -t h/mqttv311/a -t 'h/mqttv311/+/b' -t 'h/mqttv311/#' -C 3
// then, 6.5 s later (after one keep-alive ping), the three mosquitto_pub commands below.
const V311_SUB_CONNECT: &str =
    "10 18 00 04 4d 51 54 54 04 02 00 05 00 0c 73 75 62 2d 6d 71 74 74 76 33 31 31";
const V311_CONNACK: &str = "20 02 00 00";
const V311_SUBSCRIBE: &str = "82 31 00 01 00 0c 68 2f 6d 71 74 74 76 33 31 31 2f 61 02 00 0e 68
    2f 6d 71 74 74 76 33 31 31 2f 2b 2f 62 02 00 0c 68 2f 6d 71 74 74 76 33 31 31 2f 23 02";
const V311_SUBACK: &str = "90 05 00 01 02 02 02";
// Broker to the subscriber: the QoS 1 retained publish below, forwarded live (RETAIN cleared).
const V311_FORWARDED_PUBLISH_QOS1: &str =
    "32 1c 00 0e 68 2f 6d 71 74 74 76 33 31 31 2f 78 2f 62 00 01 68 65 6c 6c 6f 2d 71 6f 73 31";
const V311_FORWARDED_PUBLISH_QOS2: &str =
    "34 1a 00 0c 68 2f 6d 71 74 74 76 33 31 31 2f 7a 00 03 68 65 6c 6c 6f 2d 71 6f 73 32";

// mosquitto_pub -V mqttv311 -p 48832 -i pub0-mqttv311 -t h/mqttv311/a -m hello-qos0
const V311_PUB0_CONNECT: &str =
    "10 19 00 04 4d 51 54 54 04 02 00 3c 00 0d 70 75 62 30 2d 6d 71 74 74 76 33 31 31";
const V311_PUBLISH_QOS0: &str =
    "30 18 00 0c 68 2f 6d 71 74 74 76 33 31 31 2f 61 68 65 6c 6c 6f 2d 71 6f 73 30";

// mosquitto_pub -V mqttv311 -p 48832 -i pub1-mqttv311 -t h/mqttv311/x/b -m hello-qos1 -q 1 -r
const V311_PUBLISH_QOS1_RETAIN: &str =
    "33 1c 00 0e 68 2f 6d 71 74 74 76 33 31 31 2f 78 2f 62 00 01 68 65 6c 6c 6f 2d 71 6f 73 31";

// mosquitto_pub -V mqttv311 -p 48832 -i pub2-mqttv311 -t h/mqttv311/z -m hello-qos2 -q 2 -r
const V311_PUBLISH_QOS2_RETAIN: &str =
    "35 1a 00 0c 68 2f 6d 71 74 74 76 33 31 31 2f 7a 00 01 68 65 6c 6c 6f 2d 71 6f 73 32";

// mosquitto_sub -V mqttv311 -p 48832 -i ret-mqttv311 -q 2 -t 'h/mqttv311/#' -C 2
// (after the publishes above): the broker sends the stored retained message with RETAIN set.
const V311_RETAINED_DELIVERY_QOS2: &str =
    "35 1a 00 0c 68 2f 6d 71 74 74 76 33 31 31 2f 7a 00 02 68 65 6c 6c 6f 2d 71 6f 73 32";

// mosquitto_pub -V mqttv311 -p 48832 -i will-mqttv311 -u alice -P secret
//     --will-topic h/mqttv311/will --will-payload gone --will-qos 1 --will-retain -t h/mqttv311/w -m x
const V311_CONNECT_WILL_USER_PASSWORD: &str = "10 3f 00 04 4d 51 54 54 04 ee 00 3c 00 0d 77 69
    6c 6c 2d 6d 71 74 74 76 33 31 31 00 0f 68 2f 6d 71 74 74 76 33 31 31 2f 77 69 6c 6c 00 04
    67 6f 6e 65 00 05 61 6c 69 63 65 00 06 73 65 63 72 65 74";

// mosquitto_sub -V mqttv311 -p 48832 -i unsub-mqttv311 -t h/mqttv311/a -U h/mqttv311/a
//     -U 'h/mqttv311/+/b' -E
const V311_UNSUBSCRIBE_1: &str = "a2 10 00 02 00 0c 68 2f 6d 71 74 74 76 33 31 31 2f 61";
const V311_UNSUBSCRIBE_2: &str = "a2 12 00 03 00 0e 68 2f 6d 71 74 74 76 33 31 31 2f 2b 2f 62";
const V311_UNSUBACK_3: &str = "b0 02 00 03";

#[test]
fn mosquitto_v311_connect_clean_session_decodes_and_reencodes_identically() {
    let Packet::Connect(c) = golden(V311_SUB_CONNECT, V311) else {
        panic!()
    };
    assert_eq!(c.protocol, V311);
    assert!(c.clean_start);
    assert_eq!(c.keep_alive, 5);
    assert_eq!(c.client_id.as_str(), "sub-mqttv311");
    assert!(c.will.is_none() && c.username.is_none() && c.password.is_none());

    let Packet::Connect(c) = golden(V311_PUB0_CONNECT, V311) else {
        panic!()
    };
    assert_eq!(c.keep_alive, 60);
    assert_eq!(c.client_id.as_str(), "pub0-mqttv311");
}

#[test]
fn mosquitto_v311_connect_with_will_username_and_password_decodes_and_reencodes_identically() {
    let Packet::Connect(c) = golden(V311_CONNECT_WILL_USER_PASSWORD, V311) else {
        panic!()
    };
    assert_eq!(c.protocol, V311);
    assert_eq!(c.client_id.as_str(), "will-mqttv311");
    let will = c.will.as_ref().unwrap();
    assert_eq!(will.topic, topic("h/mqttv311/will"));
    assert_eq!(&will.payload[..], b"gone");
    assert_eq!(will.qos, QoS::AtLeastOnce);
    assert!(will.retain);
    assert!(will.properties.is_empty());
    assert_eq!(c.username.as_ref().unwrap().as_str(), "alice");
    assert_eq!(&c.password.as_ref().unwrap()[..], b"secret");
}

#[test]
fn mosquitto_v311_connack_accepted_decodes_and_reencodes_identically() {
    let Packet::ConnAck(a) = golden(V311_CONNACK, V311) else {
        panic!()
    };
    assert!(!a.session_present);
    assert_eq!(a.reason, ConnectReason::Success);
    assert!(a.properties.is_empty());
}

#[test]
fn mosquitto_v311_subscribe_three_filters_and_suback_decode_and_reencode_identically() {
    let Packet::Subscribe(sub) = golden(V311_SUBSCRIBE, V311) else {
        panic!()
    };
    assert_eq!(sub.packet_id, id(1));
    let qos2 = SubscriptionOptions::qos(QoS::ExactlyOnce);
    assert_eq!(
        sub.filters,
        vec![
            (filter("h/mqttv311/a"), qos2),
            (filter("h/mqttv311/+/b"), qos2),
            (filter("h/mqttv311/#"), qos2),
        ]
    );

    let Packet::SubAck(ack) = golden(V311_SUBACK, V311) else {
        panic!()
    };
    assert_eq!(ack.packet_id, id(1));
    assert_eq!(ack.reasons, vec![SubAckReason::GrantedQoS2; 3]);

    // mosquitto_sub -V mqttv311 -p 48832 -i ret-mqttv311 -q 2 -t 'h/mqttv311/#' -C 2
    let Packet::Subscribe(sub) = golden(
        "82 11 00 01 00 0c 68 2f 6d 71 74 74 76 33 31 31 2f 23 02",
        V311,
    ) else {
        panic!()
    };
    assert_eq!(sub.filters, vec![(filter("h/mqttv311/#"), qos2)]);
    let Packet::SubAck(ack) = golden("90 03 00 01 02", V311) else {
        panic!()
    };
    assert_eq!(ack.reasons, vec![SubAckReason::GrantedQoS2]);
}

#[test]
fn mosquitto_v311_publish_qos0_decodes_and_reencodes_identically() {
    let Packet::Publish(p) = golden(V311_PUBLISH_QOS0, V311) else {
        panic!()
    };
    assert_eq!((p.qos, p.retain, p.dup), (QoS::AtMostOnce, false, false));
    assert_eq!(p.topic, topic("h/mqttv311/a"));
    assert_eq!(p.packet_id, None);
    assert_eq!(&p.payload[..], b"hello-qos0");
}

#[test]
fn mosquitto_v311_publish_qos1_retained_and_puback_decode_and_reencode_identically() {
    let Packet::Publish(p) = golden(V311_PUBLISH_QOS1_RETAIN, V311) else {
        panic!()
    };
    assert_eq!((p.qos, p.retain, p.dup), (QoS::AtLeastOnce, true, false));
    assert_eq!(p.topic, topic("h/mqttv311/x/b"));
    assert_eq!(p.packet_id, Some(id(1)));
    assert_eq!(&p.payload[..], b"hello-qos1");

    let Packet::PubAck(a) = golden("40 02 00 01", V311) else {
        panic!()
    };
    assert_eq!((a.packet_id, a.reason), (id(1), PubAckReason::Success));
}

#[test]
fn mosquitto_v311_qos2_exchange_decodes_and_reencodes_identically() {
    let Packet::Publish(p) = golden(V311_PUBLISH_QOS2_RETAIN, V311) else {
        panic!()
    };
    assert_eq!((p.qos, p.retain, p.dup), (QoS::ExactlyOnce, true, false));
    assert_eq!(p.topic, topic("h/mqttv311/z"));
    assert_eq!(p.packet_id, Some(id(1)));
    assert_eq!(&p.payload[..], b"hello-qos2");

    let Packet::PubRec(rec) = golden("50 02 00 01", V311) else {
        panic!()
    };
    assert_eq!((rec.packet_id, rec.reason), (id(1), PubAckReason::Success));
    let Packet::PubRel(rel) = golden("62 02 00 01", V311) else {
        panic!()
    };
    assert_eq!((rel.packet_id, rel.reason), (id(1), PubRelReason::Success));
    let Packet::PubComp(comp) = golden("70 02 00 01", V311) else {
        panic!()
    };
    assert_eq!(
        (comp.packet_id, comp.reason),
        (id(1), PubRelReason::Success)
    );
}

#[test]
fn mosquitto_v311_broker_forwarded_publishes_decode_and_reencode_identically() {
    let Packet::Publish(p) = golden(V311_FORWARDED_PUBLISH_QOS1, V311) else {
        panic!()
    };
    assert_eq!((p.qos, p.retain, p.dup), (QoS::AtLeastOnce, false, false));
    assert_eq!(p.packet_id, Some(id(1)));
    let Packet::Publish(p) = golden(V311_FORWARDED_PUBLISH_QOS2, V311) else {
        panic!()
    };
    assert_eq!((p.qos, p.retain, p.dup), (QoS::ExactlyOnce, false, false));
    assert_eq!(p.packet_id, Some(id(3)));
}

#[test]
fn mosquitto_v311_retained_message_sent_at_subscribe_keeps_retain_flag() {
    let Packet::Publish(p) = golden(V311_RETAINED_DELIVERY_QOS2, V311) else {
        panic!()
    };
    assert_eq!((p.qos, p.retain, p.dup), (QoS::ExactlyOnce, true, false));
    assert_eq!(p.topic, topic("h/mqttv311/z"));
    assert_eq!(p.packet_id, Some(id(2)));
    assert_eq!(&p.payload[..], b"hello-qos2");
}

#[test]
fn mosquitto_v311_unsubscribe_and_unsuback_decode_and_reencode_identically() {
    let Packet::Unsubscribe(u) = golden(V311_UNSUBSCRIBE_1, V311) else {
        panic!()
    };
    assert_eq!(u.packet_id, id(2));
    assert_eq!(u.filters, vec![filter("h/mqttv311/a")]);
    let Packet::Unsubscribe(u) = golden(V311_UNSUBSCRIBE_2, V311) else {
        panic!()
    };
    assert_eq!(u.packet_id, id(3));
    assert_eq!(u.filters, vec![filter("h/mqttv311/+/b")]);

    let Packet::UnsubAck(ack) = golden(V311_UNSUBACK_3, V311) else {
        panic!()
    };
    assert_eq!(ack.packet_id, id(3));
    assert!(ack.reasons.is_empty());
}

#[test]
fn mosquitto_v311_pingreq_pingresp_disconnect_decode_and_reencode_identically() {
    assert_eq!(golden("c0 00", V311), Packet::PingReq);
    assert_eq!(golden("d0 00", V311), Packet::PingResp);
    let Packet::Disconnect(d) = golden("e0 00", V311) else {
        panic!()
    };
    assert_eq!(d.reason, DisconnectReason::NormalDisconnection);
}

#[test]
fn mosquitto_v311_subscriber_session_streams_decode_and_reencode_identically() {
    let client = golden_stream(
        &[
            V311_SUB_CONNECT,
            V311_SUBSCRIBE,
            "c0 00",
            "40 02 00 01",
            "50 02 00 03",
            "70 02 00 03",
            "e0 00",
        ],
        V311,
    );
    use PacketType as T;
    assert_eq!(
        types(&client),
        [
            T::Connect,
            T::Subscribe,
            T::PingReq,
            T::PubAck,
            T::PubRec,
            T::PubComp,
            T::Disconnect
        ]
    );
    let server = golden_stream(
        &[
            V311_CONNACK,
            V311_SUBACK,
            "d0 00",
            V311_PUBLISH_QOS0,
            V311_FORWARDED_PUBLISH_QOS1,
            V311_FORWARDED_PUBLISH_QOS2,
            "62 02 00 03",
        ],
        V311,
    );
    assert_eq!(
        types(&server),
        [
            T::ConnAck,
            T::SubAck,
            T::PingResp,
            T::Publish,
            T::Publish,
            T::Publish,
            T::PubRel
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// MQTT 5.0 (`-V mqttv5`, protocol name MQTT, level 5)
// ---------------------------------------------------------------------------------------------

// mosquitto_sub -V mqttv5 -p 48832 -i sub-mqttv5 -k 5 -q 2
//     -t h/mqttv5/a -t 'h/mqttv5/+/b' -t 'h/mqttv5/#' -C 3
//     -D subscribe subscription-identifier 7 -D subscribe user-property s u
//     -D connect session-expiry-interval 60
// then, 6.5 s later (after one keep-alive ping), the three mosquitto_pub commands below.
const V5_SUB_CONNECT: &str = "10 1f 00 04 4d 51 54 54 05 02 00 05 08 11 00 00 00 3c 21 00 03 00
    0a 73 75 62 2d 6d 71 74 74 76 35";
// Every v5 CONNACK Mosquitto sent: Topic Alias Maximum 10, Receive Maximum 20.
const V5_CONNACK: &str = "20 09 00 00 06 22 00 0a 21 00 14";
const V5_SUBSCRIBE_WITH_PROPERTIES: &str = "82 35 00 01 09 0b 07 26 00 01 73 00 01 75 00 0a 68
    2f 6d 71 74 74 76 35 2f 61 02 00 0c 68 2f 6d 71 74 74 76 35 2f 2b 2f 62 02 00 0a 68 2f 6d 71
    74 74 76 35 2f 23 02";
const V5_SUBACK: &str = "90 06 00 01 00 02 02 02";
// Broker to the subscriber: the QoS 0 publish below (sent twice: it matches two of the
// filters), carrying the Subscription Identifier 7.
const V5_FORWARDED_PUBLISH_QOS0: &str =
    "30 19 00 0a 68 2f 6d 71 74 74 76 35 2f 61 02 0b 07 68 65 6c 6c 6f 2d 71 6f 73 30";
const V5_FORWARDED_PUBLISH_QOS1_ID1: &str = "32 1d 00 0c 68 2f 6d 71 74 74 76 35 2f 78 2f 62 00
    01 02 0b 07 68 65 6c 6c 6f 2d 71 6f 73 31";
const V5_FORWARDED_PUBLISH_QOS1_ID2: &str = "32 1d 00 0c 68 2f 6d 71 74 74 76 35 2f 78 2f 62 00
    02 02 0b 07 68 65 6c 6c 6f 2d 71 6f 73 31";

// mosquitto_pub -V mqttv5 -p 48832 -i pub0-mqttv5 -t h/mqttv5/a -m hello-qos0
const V5_PUB0_CONNECT: &str = "10 1b 00 04 4d 51 54 54 05 02 00 3c 03 21 00 14 00 0b 70 75 62 30
    2d 6d 71 74 74 76 35";
const V5_PUBLISH_QOS0: &str =
    "30 17 00 0a 68 2f 6d 71 74 74 76 35 2f 61 00 68 65 6c 6c 6f 2d 71 6f 73 30";

// mosquitto_pub -V mqttv5 -p 48832 -i pub1-mqttv5 -t h/mqttv5/x/b -m hello-qos1 -q 1 -r
const V5_PUBLISH_QOS1_RETAIN: &str = "33 1b 00 0c 68 2f 6d 71 74 74 76 35 2f 78 2f 62 00 01 00 68
    65 6c 6c 6f 2d 71 6f 73 31";

// mosquitto_pub -V mqttv5 -p 48832 -i pub2-mqttv5 -t h/mqttv5/z -m hello-qos2 -q 2 -r
const V5_PUBLISH_QOS2_RETAIN: &str =
    "35 19 00 0a 68 2f 6d 71 74 74 76 35 2f 7a 00 01 00 68 65 6c 6c 6f 2d 71 6f 73 32";

// mosquitto_pub -V mqttv5 -p 48832 -i will-mqttv5 -u alice -P secret
//     --will-topic h/mqttv5/will --will-payload gone --will-qos 1 --will-retain -t h/mqttv5/w -m x
const V5_CONNECT_WILL_USER_PASSWORD: &str = "10 40 00 04 4d 51 54 54 05 ee 00 3c 03 21 00 14 00 0b
    77 69 6c 6c 2d 6d 71 74 74 76 35 00 00 0d 68 2f 6d 71 74 74 76 35 2f 77 69 6c 6c 00 04 67 6f
    6e 65 00 05 61 6c 69 63 65 00 06 73 65 63 72 65 74";

// mosquitto_pub -V mqttv5 -p 48832 -i willprops-v5 -u alice -P secret
//     --will-topic h/mqttv5/will --will-payload gone --will-qos 2
//     -D will will-delay-interval 5 -D will user-property wk wv -D will content-type text/plain
//     -t h/mqttv5/w -m x
const V5_CONNECT_WILL_WITH_PROPERTIES: &str = "10 5c 00 04 4d 51 54 54 05 d6 00 3c 03 21 00 14 00
    0c 77 69 6c 6c 70 72 6f 70 73 2d 76 35 1b 18 00 00 00 05 26 00 02 77 6b 00 02 77 76 03 00 0a
    74 65 78 74 2f 70 6c 61 69 6e 00 0d 68 2f 6d 71 74 74 76 35 2f 77 69 6c 6c 00 04 67 6f 6e 65
    00 05 61 6c 69 63 65 00 06 73 65 63 72 65 74";

// mosquitto_pub -V mqttv5 -p 48832 -i pw-v5 -t h/mqttv5/w -m x -P secret
// (5.0 allows a password without a user name.)
const V5_CONNECT_PASSWORD_ONLY: &str = "10 1d 00 04 4d 51 54 54 05 42 00 3c 03 21 00 14 00 05 70 77
    2d 76 35 00 06 73 65 63 72 65 74";

// mosquitto_sub -V mqttv5 -p 48832 -i psub-v5 -q 1 -t h/mqttv5/p -C 1
//     -D subscribe subscription-identifier 7
// then:
// mosquitto_pub -V mqttv5 -p 48832 -i props-v5 -t h/mqttv5/p -m payload -q 1
//     -D connect session-expiry-interval 60 -D connect user-property k v
//     -D publish user-property a b -D publish message-expiry-interval 30
//     -D publish content-type text/plain -D publish correlation-data corr-1
//     -D publish response-topic r/t
const V5_SUBSCRIBE_SUBSCRIPTION_ID_QOS1: &str =
    "82 12 00 01 02 0b 07 00 0a 68 2f 6d 71 74 74 76 35 2f 70 01";
const V5_SUBACK_QOS1: &str = "90 04 00 01 00 01";
const V5_CONNECT_WITH_PROPERTIES: &str = "10 24 00 04 4d 51 54 54 05 02 00 3c 0f 11 00 00 00 3c 26
    00 01 6b 00 01 76 21 00 14 00 08 70 72 6f 70 73 2d 76 35";
const V5_PUBLISH_WITH_PROPERTIES: &str = "32 3e 00 0a 68 2f 6d 71 74 74 76 35 2f 70 00 01 28 26 00
    01 61 00 01 62 02 00 00 00 1e 03 00 0a 74 65 78 74 2f 70 6c 61 69 6e 09 00 06 63 6f 72 72 2d
    31 08 00 03 72 2f 74 70 61 79 6c 6f 61 64";
// The same message as Mosquitto forwarded it to `psub-v5`: Subscription Identifier first and
// Message Expiry Interval (recomputed) last.
const V5_FORWARDED_PUBLISH_WITH_PROPERTIES: &str = "32 40 00 0a 68 2f 6d 71 74 74 76 35 2f 70 00
    01 2a 0b 07 26 00 01 61 00 01 62 03 00 0a 74 65 78 74 2f 70 6c 61 69 6e 09 00 06 63 6f 72 72
    2d 31 08 00 03 72 2f 74 02 00 00 00 1e 70 61 79 6c 6f 61 64";

// mosquitto_pub -V mqttv5 -p 48832 -i pub1-mqttv5 -t g/mqttv5/x/b -m hello-qos1 -q 1 -r
// with no subscriber connected: the broker's PUBACK says "no matching subscribers".
const V5_PUBACK_NO_MATCHING_SUBSCRIBERS: &str = "40 03 00 01 10";

// mosquitto_sub -V mqttv5 -p 48832 -i unsub-mqttv5 -t h/mqttv5/a -U h/mqttv5/a
//     -U 'h/mqttv5/+/b' -E
const V5_UNSUBSCRIBE_1: &str = "a2 0f 00 02 00 00 0a 68 2f 6d 71 74 74 76 35 2f 61";
const V5_UNSUBSCRIBE_2: &str = "a2 11 00 03 00 00 0c 68 2f 6d 71 74 74 76 35 2f 2b 2f 62";
const V5_UNSUBACK_SUCCESS: &str = "b0 04 00 02 00 00";
const V5_UNSUBACK_NO_SUBSCRIPTION_EXISTED: &str = "b0 04 00 03 00 11";

// mosquitto_sub -V mqttv5 -p 48832 -i unsubp-v5 -t h/mqttv5/a -U h/mqttv5/a -E
//     -D unsubscribe user-property uk uv
const V5_UNSUBSCRIBE_WITH_USER_PROPERTY: &str = "a2 18 00 02 09 26 00 02 75 6b 00 02 75 76 00 0a
    68 2f 6d 71 74 74 76 35 2f 61";

// mosquitto_pub -V mqttv5 -p 48832 -i dis-v5 -t h/mqttv5/w -m x
//     -D disconnect user-property bye now -D disconnect session-expiry-interval 0
const V5_DISCONNECT_WITH_PROPERTIES: &str =
    "e0 12 00 10 26 00 03 62 79 65 00 03 6e 6f 77 11 00 00 00 00";

#[test]
fn mosquitto_v5_connect_with_session_expiry_and_receive_maximum_decodes_and_reencodes_identically()
{
    let Packet::Connect(c) = golden(V5_SUB_CONNECT, V5) else {
        panic!()
    };
    assert_eq!(c.protocol, V5);
    assert!(c.clean_start);
    assert_eq!(c.keep_alive, 5);
    assert_eq!(c.client_id.as_str(), "sub-mqttv5");
    assert_eq!(
        c.properties.as_slice(),
        [
            Property::SessionExpiryInterval(60),
            Property::ReceiveMaximum(3)
        ]
    );

    let Packet::Connect(c) = golden(V5_PUB0_CONNECT, V5) else {
        panic!()
    };
    assert_eq!(c.client_id.as_str(), "pub0-mqttv5");
    assert_eq!(c.properties.as_slice(), [Property::ReceiveMaximum(20)]);
}

#[test]
fn mosquitto_v5_connect_with_user_property_decodes_and_reencodes_identically() {
    let Packet::Connect(c) = golden(V5_CONNECT_WITH_PROPERTIES, V5) else {
        panic!()
    };
    assert_eq!(c.client_id.as_str(), "props-v5");
    assert_eq!(
        c.properties.as_slice(),
        [
            Property::SessionExpiryInterval(60),
            Property::UserProperty(s("k"), s("v")),
            Property::ReceiveMaximum(20),
        ]
    );
}

#[test]
fn mosquitto_v5_connect_with_will_username_and_password_decodes_and_reencodes_identically() {
    let Packet::Connect(c) = golden(V5_CONNECT_WILL_USER_PASSWORD, V5) else {
        panic!()
    };
    assert_eq!(c.client_id.as_str(), "will-mqttv5");
    let will = c.will.as_ref().unwrap();
    assert_eq!(will.topic, topic("h/mqttv5/will"));
    assert_eq!(&will.payload[..], b"gone");
    assert_eq!((will.qos, will.retain), (QoS::AtLeastOnce, true));
    assert!(will.properties.is_empty());
    assert_eq!(c.username.as_ref().unwrap().as_str(), "alice");
    assert_eq!(&c.password.as_ref().unwrap()[..], b"secret");
}

#[test]
fn mosquitto_v5_connect_with_will_properties_decodes_and_reencodes_identically() {
    // Flags 0xd6: username, password, will QoS 2, will, clean start.
    let Packet::Connect(c) = golden(V5_CONNECT_WILL_WITH_PROPERTIES, V5) else {
        panic!()
    };
    assert_eq!(c.client_id.as_str(), "willprops-v5");
    let will = c.will.as_ref().unwrap();
    assert_eq!((will.qos, will.retain), (QoS::ExactlyOnce, false));
    assert_eq!(will.topic, topic("h/mqttv5/will"));
    assert_eq!(
        will.properties.as_slice(),
        [
            Property::WillDelayInterval(5),
            Property::UserProperty(s("wk"), s("wv")),
            Property::ContentType(s("text/plain")),
        ]
    );
    assert_eq!(c.username.as_ref().unwrap().as_str(), "alice");
}

#[test]
fn mosquitto_v5_connect_with_password_but_no_username_decodes_and_reencodes_identically() {
    let Packet::Connect(c) = golden(V5_CONNECT_PASSWORD_ONLY, V5) else {
        panic!()
    };
    assert_eq!(c.client_id.as_str(), "pw-v5");
    assert!(c.username.is_none());
    assert_eq!(&c.password.as_ref().unwrap()[..], b"secret");
}

#[test]
fn mosquitto_v5_connack_with_properties_decodes_and_reencodes_identically() {
    let Packet::ConnAck(a) = golden(V5_CONNACK, V5) else {
        panic!()
    };
    assert!(!a.session_present);
    assert_eq!(a.reason, ConnectReason::Success);
    assert_eq!(
        a.properties.as_slice(),
        [
            Property::TopicAliasMaximum(10),
            Property::ReceiveMaximum(20)
        ]
    );
}

#[test]
fn mosquitto_v5_subscribe_with_subscription_identifier_and_user_property_decodes_and_reencodes_identically()
 {
    let Packet::Subscribe(sub) = golden(V5_SUBSCRIBE_WITH_PROPERTIES, V5) else {
        panic!()
    };
    assert_eq!(sub.packet_id, id(1));
    assert_eq!(
        sub.properties.as_slice(),
        [
            Property::SubscriptionIdentifier(7),
            Property::UserProperty(s("s"), s("u")),
        ]
    );
    let qos2 = SubscriptionOptions::qos(QoS::ExactlyOnce);
    assert_eq!(
        sub.filters,
        vec![
            (filter("h/mqttv5/a"), qos2),
            (filter("h/mqttv5/+/b"), qos2),
            (filter("h/mqttv5/#"), qos2),
        ]
    );
    let (_, options) = sub.filters[0];
    assert!(!options.no_local && !options.retain_as_published);
    assert_eq!(options.retain_handling, RetainHandling::SendAtSubscribe);

    let Packet::Subscribe(sub) = golden(V5_SUBSCRIBE_SUBSCRIPTION_ID_QOS1, V5) else {
        panic!()
    };
    assert_eq!(
        sub.properties.as_slice(),
        [Property::SubscriptionIdentifier(7)]
    );
    assert_eq!(
        sub.filters,
        vec![(
            filter("h/mqttv5/p"),
            SubscriptionOptions::qos(QoS::AtLeastOnce)
        )]
    );
}

#[test]
fn mosquitto_v5_suback_decodes_and_reencodes_identically() {
    let Packet::SubAck(ack) = golden(V5_SUBACK, V5) else {
        panic!()
    };
    assert_eq!(ack.packet_id, id(1));
    assert!(ack.properties.is_empty());
    assert_eq!(ack.reasons, vec![SubAckReason::GrantedQoS2; 3]);

    let Packet::SubAck(ack) = golden(V5_SUBACK_QOS1, V5) else {
        panic!()
    };
    assert_eq!(ack.reasons, vec![SubAckReason::GrantedQoS1]);
}

#[test]
fn mosquitto_v5_publish_qos0_with_empty_properties_decodes_and_reencodes_identically() {
    let Packet::Publish(p) = golden(V5_PUBLISH_QOS0, V5) else {
        panic!()
    };
    assert_eq!((p.qos, p.retain, p.dup), (QoS::AtMostOnce, false, false));
    assert_eq!(p.topic, topic("h/mqttv5/a"));
    assert_eq!(p.packet_id, None);
    assert!(p.properties.is_empty());
    assert_eq!(&p.payload[..], b"hello-qos0");
}

#[test]
fn mosquitto_v5_publish_qos1_retained_and_pubacks_decode_and_reencode_identically() {
    let Packet::Publish(p) = golden(V5_PUBLISH_QOS1_RETAIN, V5) else {
        panic!()
    };
    assert_eq!((p.qos, p.retain, p.dup), (QoS::AtLeastOnce, true, false));
    assert_eq!(p.topic, topic("h/mqttv5/x/b"));
    assert_eq!(p.packet_id, Some(id(1)));
    assert!(p.properties.is_empty());
    assert_eq!(&p.payload[..], b"hello-qos1");

    // Success in the short form (reason and properties left out).
    let Packet::PubAck(a) = golden("40 02 00 01", V5) else {
        panic!()
    };
    assert_eq!((a.packet_id, a.reason), (id(1), PubAckReason::Success));
    // A reason code and no property length.
    let Packet::PubAck(a) = golden(V5_PUBACK_NO_MATCHING_SUBSCRIBERS, V5) else {
        panic!()
    };
    assert_eq!(
        (a.packet_id, a.reason),
        (id(1), PubAckReason::NoMatchingSubscribers)
    );
    assert!(a.properties.is_empty());
}

#[test]
fn mosquitto_v5_qos2_exchange_decodes_and_reencodes_identically() {
    let Packet::Publish(p) = golden(V5_PUBLISH_QOS2_RETAIN, V5) else {
        panic!()
    };
    assert_eq!((p.qos, p.retain, p.dup), (QoS::ExactlyOnce, true, false));
    assert_eq!(p.topic, topic("h/mqttv5/z"));
    assert_eq!(p.packet_id, Some(id(1)));
    assert_eq!(&p.payload[..], b"hello-qos2");

    let Packet::PubRec(rec) = golden("50 02 00 01", V5) else {
        panic!()
    };
    assert_eq!((rec.packet_id, rec.reason), (id(1), PubAckReason::Success));
    let Packet::PubRel(rel) = golden("62 02 00 01", V5) else {
        panic!()
    };
    assert_eq!((rel.packet_id, rel.reason), (id(1), PubRelReason::Success));
    let Packet::PubComp(comp) = golden("70 02 00 01", V5) else {
        panic!()
    };
    assert_eq!(
        (comp.packet_id, comp.reason),
        (id(1), PubRelReason::Success)
    );
}

#[test]
fn mosquitto_v5_publish_qos1_with_properties_decodes_and_reencodes_identically() {
    let Packet::Publish(p) = golden(V5_PUBLISH_WITH_PROPERTIES, V5) else {
        panic!()
    };
    assert_eq!((p.qos, p.retain, p.dup), (QoS::AtLeastOnce, false, false));
    assert_eq!(p.topic, topic("h/mqttv5/p"));
    assert_eq!(p.packet_id, Some(id(1)));
    assert_eq!(
        p.properties.as_slice(),
        [
            Property::UserProperty(s("a"), s("b")),
            Property::MessageExpiryInterval(30),
            Property::ContentType(s("text/plain")),
            Property::CorrelationData(Bytes::from_static(b"corr-1")),
            Property::ResponseTopic(topic("r/t")),
        ]
    );
    assert_eq!(&p.payload[..], b"payload");
}

#[test]
fn mosquitto_v5_broker_forwarded_publishes_with_subscription_identifier_decode_and_reencode_identically()
 {
    let Packet::Publish(p) = golden(V5_FORWARDED_PUBLISH_QOS0, V5) else {
        panic!()
    };
    assert_eq!((p.qos, p.retain), (QoS::AtMostOnce, false));
    assert_eq!(
        p.properties.subscription_identifiers().collect::<Vec<_>>(),
        [7]
    );

    let Packet::Publish(p) = golden(V5_FORWARDED_PUBLISH_QOS1_ID2, V5) else {
        panic!()
    };
    assert_eq!((p.qos, p.retain), (QoS::AtLeastOnce, false));
    assert_eq!(p.packet_id, Some(id(2)));
    assert_eq!(
        p.properties.as_slice(),
        [Property::SubscriptionIdentifier(7)]
    );

    let Packet::Publish(p) = golden(V5_FORWARDED_PUBLISH_WITH_PROPERTIES, V5) else {
        panic!()
    };
    assert_eq!(p.packet_id, Some(id(1)));
    assert_eq!(
        p.properties.as_slice(),
        [
            Property::SubscriptionIdentifier(7),
            Property::UserProperty(s("a"), s("b")),
            Property::ContentType(s("text/plain")),
            Property::CorrelationData(Bytes::from_static(b"corr-1")),
            Property::ResponseTopic(topic("r/t")),
            Property::MessageExpiryInterval(30),
        ]
    );
    assert_eq!(&p.payload[..], b"payload");
}

#[test]
fn mosquitto_v5_unsubscribe_and_unsuback_reason_codes_decode_and_reencode_identically() {
    let Packet::Unsubscribe(u) = golden(V5_UNSUBSCRIBE_1, V5) else {
        panic!()
    };
    assert_eq!(u.packet_id, id(2));
    assert!(u.properties.is_empty());
    assert_eq!(u.filters, vec![filter("h/mqttv5/a")]);
    let Packet::Unsubscribe(u) = golden(V5_UNSUBSCRIBE_2, V5) else {
        panic!()
    };
    assert_eq!(u.packet_id, id(3));
    assert_eq!(u.filters, vec![filter("h/mqttv5/+/b")]);

    let Packet::UnsubAck(ack) = golden(V5_UNSUBACK_SUCCESS, V5) else {
        panic!()
    };
    assert_eq!(ack.packet_id, id(2));
    assert_eq!(ack.reasons, vec![UnsubAckReason::Success]);
    // The client never subscribed to h/mqttv5/+/b.
    let Packet::UnsubAck(ack) = golden(V5_UNSUBACK_NO_SUBSCRIPTION_EXISTED, V5) else {
        panic!()
    };
    assert_eq!(ack.packet_id, id(3));
    assert_eq!(ack.reasons, vec![UnsubAckReason::NoSubscriptionExisted]);
}

#[test]
fn mosquitto_v5_unsubscribe_with_user_property_decodes_and_reencodes_identically() {
    let Packet::Unsubscribe(u) = golden(V5_UNSUBSCRIBE_WITH_USER_PROPERTY, V5) else {
        panic!()
    };
    assert_eq!(u.packet_id, id(2));
    assert_eq!(
        u.properties.as_slice(),
        [Property::UserProperty(s("uk"), s("uv"))]
    );
    assert_eq!(u.filters, vec![filter("h/mqttv5/a")]);
}

#[test]
fn mosquitto_v5_disconnect_with_properties_decodes_and_reencodes_identically() {
    let Packet::Disconnect(d) = golden(V5_DISCONNECT_WITH_PROPERTIES, V5) else {
        panic!()
    };
    assert_eq!(d.reason, DisconnectReason::NormalDisconnection);
    assert_eq!(
        d.properties.as_slice(),
        [
            Property::UserProperty(s("bye"), s("now")),
            Property::SessionExpiryInterval(0),
        ]
    );
}

#[test]
fn mosquitto_v5_pingreq_pingresp_short_disconnect_decode_and_reencode_identically() {
    assert_eq!(golden("c0 00", V5), Packet::PingReq);
    assert_eq!(golden("d0 00", V5), Packet::PingResp);
    let Packet::Disconnect(d) = golden("e0 00", V5) else {
        panic!()
    };
    assert_eq!(d.reason, DisconnectReason::NormalDisconnection);
    assert!(d.properties.is_empty());
}

#[test]
fn mosquitto_v5_subscriber_session_streams_decode_and_reencode_identically() {
    let client = golden_stream(
        &[
            V5_SUB_CONNECT,
            V5_SUBSCRIBE_WITH_PROPERTIES,
            "c0 00",
            "40 02 00 01",
            "e0 00",
        ],
        V5,
    );
    use PacketType as T;
    assert_eq!(
        types(&client),
        [
            T::Connect,
            T::Subscribe,
            T::PingReq,
            T::PubAck,
            T::Disconnect
        ]
    );
    let server = golden_stream(
        &[
            V5_CONNACK,
            V5_SUBACK,
            "d0 00",
            V5_FORWARDED_PUBLISH_QOS0,
            V5_FORWARDED_PUBLISH_QOS0,
            V5_FORWARDED_PUBLISH_QOS1_ID1,
            V5_FORWARDED_PUBLISH_QOS1_ID2,
        ],
        V5,
    );
    assert_eq!(
        types(&server),
        [
            T::ConnAck,
            T::SubAck,
            T::PingResp,
            T::Publish,
            T::Publish,
            T::Publish,
            T::Publish
        ]
    );
}

#[test]
fn mosquitto_v5_captures_are_refused_or_read_differently_as_v311() {
    // The version matters: the v5 property length byte is not part of a 3.1.1 packet, so the
    // same SUBSCRIBE does not decode as 3.1.1 (the property bytes are read as a filter).
    let input = Bytes::from(hex(V5_SUBSCRIBE_WITH_PROPERTIES));
    assert!(decode(&input, V311, MAX_PACKET_SIZE).is_err());
    // ...and a v5 PUBLISH read as 3.1.1 keeps the property length byte in its payload.
    let (packet, _) = decode_capture(V5_PUBLISH_QOS0, V311);
    let Packet::Publish(p) = packet else { panic!() };
    assert_eq!(&p.payload[..], b"\0hello-qos0");
}
