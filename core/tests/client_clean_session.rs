//! The core client across a reconnect into a new session (clean session 1, or a server that
//! lost the session): no exchange of the old session carries over (3.1.1 [MQTT-3.1.2-6]). An
//! unacknowledged PUBLISH is sent again as a first delivery (DUP 0, [MQTT-3.3.1-1]); a QoS 2
//! message whose PUBREC arrived completes, without a PUBREL the new session never asked for.

mod support;

use bytes::{Bytes, BytesMut};
use surgemq_core::client::{Client, ClientConfig, ClientEvent, ClientInput};
use surgemq_core::codec::{
    ConnAck, ConnectReason, Packet, PacketId, Properties, ProtocolVersion, PubAck, QoS,
};
use surgemq_core::string::MqttString;
use surgemq_core::time::Instant;
use surgemq_core::topic::TopicName;

/// Drives the client's outputs: opens transports at once, returns the packets it sent and
/// the events it reported.
fn drain(client: &mut Client, now: Instant) -> (Vec<Packet>, Vec<ClientEvent>) {
    let d = support::drain(client, now);
    (d.packets, d.events)
}

fn connack(client: &mut Client, now: Instant, session_present: bool) {
    let mut buf = BytesMut::new();
    Packet::ConnAck(ConnAck {
        session_present,
        reason: ConnectReason::Success,
        properties: Properties::new(),
    })
    .encode(ProtocolVersion::V3_1_1, &mut buf)
    .unwrap();
    client.handle_input(now, ClientInput::Received(buf.freeze()));
}

fn receive(client: &mut Client, now: Instant, packet: Packet) {
    let mut buf = BytesMut::new();
    packet.encode(ProtocolVersion::V3_1_1, &mut buf).unwrap();
    client.handle_input(now, ClientInput::Received(buf.freeze()));
}

/// Reconnects after a transport loss, answering CONNECT with `session_present`.
fn reconnect(
    client: &mut Client,
    now: &mut Instant,
    session_present: bool,
) -> (Vec<Packet>, Vec<ClientEvent>) {
    client.handle_input(*now, ClientInput::TransportDown);
    drain(client, *now);
    // Past the reconnect backoff.
    *now = client.poll_timeout().unwrap();
    client.handle_input(*now, ClientInput::Timeout);
    let (packets, _) = drain(client, *now);
    assert!(matches!(packets[..], [Packet::Connect(_)]), "{packets:?}");
    connack(client, *now, session_present);
    drain(client, *now)
}

/// A connected client with a QoS 1 PUBLISH unacknowledged and a QoS 2 one whose PUBREC arrived.
fn client_with_two_exchanges(clean: bool) -> (Client, Instant, [PacketId; 2]) {
    let mut now = Instant::ZERO;
    let mut config = ClientConfig::new(MqttString::new("c").unwrap());
    config.clean_start = clean;
    let mut client = Client::new(config, now).unwrap();
    drain(&mut client, now);
    connack(&mut client, now, false);
    drain(&mut client, now);
    for (payload, qos) in [
        (&b"one"[..], QoS::AtLeastOnce),
        (&b"two"[..], QoS::ExactlyOnce),
    ] {
        client
            .publish(
                now,
                TopicName::new(MqttString::new("t").unwrap()).unwrap(),
                Bytes::copy_from_slice(payload),
                qos,
                false,
                Properties::new(),
            )
            .unwrap();
    }
    let (sent, _) = drain(&mut client, now);
    let ids: Vec<PacketId> = sent
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => p.packet_id,
            _ => None,
        })
        .collect();
    let [one, two] = ids[..] else {
        panic!("{sent:?}")
    };
    receive(&mut client, now, Packet::PubRec(PubAck::success(two)));
    let (sent, _) = drain(&mut client, now);
    assert!(matches!(sent[..], [Packet::PubRel(_)]), "{sent:?}");
    now = now + std::time::Duration::from_millis(10);
    (client, now, [one, two])
}

#[test]
fn into_a_new_session_publish_is_sent_as_new_and_a_released_qos2_completes() {
    let (mut client, mut now, [one, _]) = client_with_two_exchanges(true);
    let (sent, events) = reconnect(&mut client, &mut now, false);
    let completed = events
        .iter()
        .filter(|e| matches!(e, ClientEvent::Published { .. }))
        .count();
    assert_eq!(
        completed, 1,
        "the released QoS 2 message completes: {events:?}"
    );
    // Only the QoS 1 PUBLISH, as a first delivery; no PUBREL.
    let publishes: Vec<_> = sent
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((p.packet_id, p.dup)),
            _ => None,
        })
        .collect();
    assert_eq!(publishes, [(Some(one), false)], "{sent:?}");
    assert!(
        !sent.iter().any(|p| matches!(p, Packet::PubRel(_))),
        "{sent:?}"
    );
    assert_eq!(client.inflight_len(), 1);
}

#[test]
fn into_a_resumed_session_both_exchanges_continue() {
    let (mut client, mut now, [one, two]) = client_with_two_exchanges(false);
    let (sent, _) = reconnect(&mut client, &mut now, true);
    // 3.1.1 [MQTT-4.4.0-1]: PUBLISH with DUP 1, and PUBREL, in the original order.
    let resent: Vec<String> = sent
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(format!("publish {} dup={}", p.packet_id?.get(), p.dup)),
            Packet::PubRel(r) => Some(format!("pubrel {}", r.packet_id.get())),
            _ => None,
        })
        .collect();
    assert_eq!(
        resent,
        [
            format!("publish {} dup=true", one.get()),
            format!("pubrel {}", two.get())
        ]
    );
    assert_eq!(client.inflight_len(), 2);
}
