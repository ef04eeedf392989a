//! Fuzzes the core client state machine: a script of transport events, timer ticks, store
//! commits (and failures), commands, raw server bytes and well-formed server packets with
//! arbitrary identifiers, reasons and properties. The client must never panic, must only ever
//! transmit packets that decode, must never have more unacknowledged QoS 1/2 PUBLISH packets on
//! the wire than its window, and must keep its queues within their limits.
#![no_main]
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use surgemq_core::client::{
    AckToken, Client, ClientConfig, ClientEvent, ClientInput, ClientOutput, Persistence,
    StoreFailure,
};
use surgemq_core::codec::{
    ConnAck, ConnectReason, Disconnect, MAX_PACKET_SIZE, Packet, PacketId, Properties, Property,
    ProtocolVersion, PubAck, PubAckReason, PubRel, Publish, QoS, SubAck, SubAckReason,
    SubscriptionOptions, UnsubAck, decode_buf,
};
use surgemq_core::string::MqttString;
use surgemq_core::time::Instant;
use surgemq_core::topic::{TopicFilter, TopicName};

/// Reads the script.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.byte()?, self.byte()?]))
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        taken
    }
}

fn qos(b: u8) -> QoS {
    match b % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn id(n: u16) -> PacketId {
    PacketId::new(n % 8 + 1).unwrap_or(PacketId::MIN)
}

/// A few CONNACK / PUBLISH properties the client acts on.
fn properties(s: &mut Script) -> Properties {
    let mut props = Properties::new();
    let Some(mask) = s.byte() else {
        return props;
    };
    let value = s.u16().unwrap_or(1);
    if mask & 1 != 0 {
        props.push(Property::ReceiveMaximum(value % 5 + 1));
    }
    if mask & 2 != 0 {
        props.push(Property::MaximumQoS(u8::from(value & 1 == 1)));
    }
    if mask & 4 != 0 {
        props.push(Property::RetainAvailable(u8::from(value & 2 == 2)));
    }
    if mask & 8 != 0 {
        props.push(Property::MaximumPacketSize(u32::from(value % 200) + 2));
    }
    if mask & 16 != 0 {
        props.push(Property::TopicAliasMaximum(value % 4));
    }
    if mask & 32 != 0 {
        props.push(Property::TopicAlias(value % 5 + 1));
    }
    if mask & 64 != 0 {
        props.push(Property::ServerKeepAlive(value % 4));
    }
    if mask & 128 != 0 {
        props.push(Property::SubscriptionIdentifier(u32::from(value) + 1));
    }
    props
}

/// [`properties`] on 5.0; none on 3.1.1.
fn properties_for(version: ProtocolVersion, s: &mut Script) -> Properties {
    if version == ProtocolVersion::V5 {
        properties(s)
    } else {
        Properties::new()
    }
}

fn topic(b: u8) -> TopicName {
    const TOPICS: [&str; 4] = ["a", "a/b", "c/d/e", "$x"];
    TopicName::from_static(TOPICS[usize::from(b) % TOPICS.len()]).unwrap()
}

fn filter(b: u8) -> TopicFilter {
    const FILTERS: [&str; 4] = ["a/#", "+/b", "c/d/e", "#"];
    TopicFilter::from_static(FILTERS[usize::from(b) % FILTERS.len()]).unwrap()
}

struct Harness {
    client: Client,
    version: ProtocolVersion,
    now: Instant,
    /// The client asked for a transport (OpenTransport) and has not been answered.
    opening: bool,
    up: bool,
    store_seq: u64,
    acks: Vec<AckToken>,
    /// QoS 1/2 PUBLISH packet ids transmitted on this transport and not yet acknowledged.
    on_wire: Vec<PacketId>,
    /// Ids the script acknowledged before their PUBLISH was transmitted (a durable client holds
    /// a PUBLISH until its store commit, and takes an acknowledgement meanwhile): their
    /// PUBLISH is not counted when it goes out.
    early: Vec<PacketId>,
    window: usize,
    /// The Receive Maximum of the last CONNACK on this transport.
    server_max: Option<u16>,
}

impl Harness {
    fn drain(&mut self) {
        while let Some(output) = self.client.poll_output() {
            match output {
                ClientOutput::OpenTransport => self.opening = true,
                ClientOutput::Transmit(bytes) => self.transmitted(&bytes),
                ClientOutput::CloseTransport => {
                    self.up = false;
                    self.on_wire.clear();
                    self.early.clear();
                }
                ClientOutput::Store { seq, .. } => {
                    assert!(seq > self.store_seq, "store sequence numbers increase");
                    self.store_seq = seq;
                }
                ClientOutput::Event(ClientEvent::Message(m)) => {
                    if let Some(ack) = m.ack {
                        self.acks.push(ack);
                    }
                }
                ClientOutput::Event(_) => {}
            }
        }
    }

    fn transmitted(&mut self, bytes: &Bytes) {
        let mut buf = BytesMut::from(&bytes[..]);
        loop {
            match decode_buf(&mut buf, self.version, MAX_PACKET_SIZE) {
                Ok(Some(Packet::Publish(p))) => {
                    if let Some(id) = p.packet_id {
                        if let Some(i) = self.early.iter().position(|e| *e == id) {
                            self.early.swap_remove(i);
                        } else if !self.on_wire.contains(&id) {
                            self.on_wire.push(id);
                        }
                    }
                    let theirs = self.server_max.map_or(usize::MAX, usize::from);
                    assert!(
                        self.on_wire.len() <= self.window.min(theirs),
                        "window exceeded: {:?} (ours {}, theirs {theirs})",
                        self.on_wire,
                        self.window
                    );
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => panic!("the client transmitted a malformed packet: {e:?}"),
            }
        }
        assert!(buf.is_empty(), "a partial packet was transmitted");
    }

    fn receive(&mut self, packet: &Packet) {
        let mut buf = BytesMut::new();
        if packet.encode(self.version, &mut buf).is_ok() {
            if let Packet::ConnAck(c) = packet {
                self.server_max = c.properties.receive_maximum();
            }
            let acked = match packet {
                Packet::PubAck(a) => Some(a.packet_id),
                Packet::PubComp(c) => Some(c.packet_id),
                Packet::PubRec(r) if r.reason.is_error() => Some(r.packet_id),
                _ => None,
            };
            if let Some(acked) = acked {
                if let Some(i) = self.on_wire.iter().position(|id| *id == acked) {
                    self.on_wire.swap_remove(i);
                } else if !self.early.contains(&acked) {
                    self.early.push(acked);
                }
            }
            self.input(ClientInput::Received(buf.freeze()));
        }
    }

    fn input(&mut self, input: ClientInput) {
        self.client.handle_input(self.now, input);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut s = Script(data);
    let Some(setup) = s.byte() else {
        return;
    };
    let version = if setup & 1 == 0 {
        ProtocolVersion::V3_1_1
    } else {
        ProtocolVersion::V5
    };
    let mut config = ClientConfig::new(MqttString::new("fuzz").unwrap());
    config.version = version;
    config.clean_start = setup & 2 == 0;
    config.manual_acks = setup & 4 != 0;
    config.persistence = match (setup >> 3) % 3 {
        0 => Persistence::Off,
        1 => Persistence::Durable,
        _ => Persistence::Periodic,
    };
    config.max_inflight = u16::from((setup >> 5) % 4 + 1);
    config.max_queued = 16;
    config.max_held = 16;
    if version == ProtocolVersion::V5 && setup & 128 != 0 {
        config.connect_properties = Properties::new().with(Property::TopicAliasMaximum(3));
    }
    let window = usize::from(config.max_inflight);
    let Ok(client) = Client::new(config, Instant::ZERO) else {
        return;
    };
    let mut h = Harness {
        client,
        version,
        now: Instant::ZERO,
        opening: false,
        up: false,
        store_seq: 0,
        acks: Vec::new(),
        on_wire: Vec::new(),
        early: Vec::new(),
        window,
        server_max: None,
    };
    h.drain();
    let mut ops = 0;
    while let Some(op) = s.byte() {
        ops += 1;
        if ops > 400 {
            break;
        }
        match op % 20 {
            // Transport events only where the client waits for them.
            0 if h.opening => {
                h.opening = false;
                h.up = true;
                h.on_wire.clear();
                h.early.clear();
                h.server_max = None;
                h.input(ClientInput::TransportUp);
            }
            1 if h.opening || h.up => {
                h.opening = false;
                h.up = false;
                h.on_wire.clear();
                h.early.clear();
                h.input(ClientInput::TransportDown);
            }
            0 | 1 => {}
            2 => {
                let step = u64::from(s.byte().unwrap_or(0)) * 250;
                h.now = Instant::from_millis(h.now.as_millis() + step);
                h.input(ClientInput::Timeout);
            }
            3 => {
                let n = usize::from(s.byte().unwrap_or(0) % 32);
                let raw = Bytes::copy_from_slice(s.bytes(n));
                h.input(ClientInput::Received(raw));
            }
            4 | 5 => {
                let b = s.byte().unwrap_or(0);
                let props = properties_for(version, &mut s);
                h.receive(&Packet::ConnAck(ConnAck {
                    session_present: b & 1 == 1,
                    reason: if b & 6 == 6 {
                        ConnectReason::NotAuthorized
                    } else {
                        ConnectReason::Success
                    },
                    properties: props,
                }));
            }
            6 | 7 => {
                let b = s.byte().unwrap_or(0);
                let props = properties_for(version, &mut s);
                let size = usize::from(s.byte().unwrap_or(0));
                let _ = h.client.publish(
                    h.now,
                    topic(b >> 2),
                    Bytes::from(vec![b'x'; size]),
                    qos(b),
                    b & 64 != 0,
                    props,
                );
            }
            8 => {
                let b = s.byte().unwrap_or(0);
                let _ = h.client.subscribe(
                    h.now,
                    vec![(filter(b), SubscriptionOptions::qos(qos(b >> 2)))],
                    Properties::new(),
                );
            }
            9 => {
                let b = s.byte().unwrap_or(0);
                let _ = h
                    .client
                    .unsubscribe(h.now, vec![filter(b)], Properties::new());
            }
            10 => {
                if let Some(ack) = h.acks.pop() {
                    let _ = h.client.ack(h.now, ack);
                }
            }
            11 => {
                let b = s.byte().unwrap_or(0);
                let seq = if b & 1 == 0 {
                    h.store_seq
                } else {
                    h.store_seq.saturating_sub(u64::from(b >> 1))
                };
                let result = if b & 0x80 != 0 {
                    Err(StoreFailure("disk".into()))
                } else {
                    Ok(())
                };
                h.input(ClientInput::StoreDone { seq, result });
            }
            12 | 13 => {
                let n = s.u16().unwrap_or(1);
                let reason = if version == ProtocolVersion::V5 && n & 0x100 != 0 {
                    PubAckReason::QuotaExceeded
                } else {
                    PubAckReason::Success
                };
                let ack = PubAck {
                    packet_id: id(n),
                    reason,
                    properties: Properties::new(),
                };
                let packet = match n >> 12 {
                    0..=5 => Packet::PubAck(ack),
                    6..=11 => Packet::PubRec(ack),
                    _ => Packet::PubComp(PubRel::success(id(n))),
                };
                h.receive(&packet);
            }
            14 => {
                let n = s.u16().unwrap_or(1);
                h.receive(&Packet::PubRel(PubRel::success(id(n))));
            }
            15 | 16 => {
                let b = s.byte().unwrap_or(0);
                let n = s.u16().unwrap_or(1);
                let mut props = properties_for(version, &mut s);
                let q = qos(b);
                // An empty topic only with an alias (what the codec accepts).
                let topic = if b & 32 != 0 && props.topic_alias().is_some() {
                    TopicName::alias_only()
                } else {
                    topic(b >> 3)
                };
                props.retain(|p| !matches!(p, Property::ReceiveMaximum(_)));
                h.receive(&Packet::Publish(Publish {
                    dup: b & 128 != 0 && q != QoS::AtMostOnce,
                    qos: q,
                    retain: false,
                    topic,
                    packet_id: (q != QoS::AtMostOnce).then(|| id(n)),
                    properties: props,
                    payload: Bytes::from_static(b"m"),
                }));
            }
            17 => {
                let n = s.u16().unwrap_or(1);
                h.receive(&Packet::SubAck(SubAck {
                    packet_id: id(n),
                    properties: Properties::new(),
                    reasons: vec![SubAckReason::GrantedQoS1],
                }));
            }
            18 => {
                let n = s.u16().unwrap_or(1);
                h.receive(&Packet::UnsubAck(UnsubAck {
                    packet_id: id(n),
                    properties: Properties::new(),
                    reasons: Vec::new(),
                }));
                if version == ProtocolVersion::V5 && n & 1 == 1 {
                    h.receive(&Packet::Disconnect(Disconnect::normal()));
                }
            }
            _ => h.client.disconnect(h.now),
        }
        h.drain();
        assert!(h.acks.len() <= 4096, "unbounded manual acks");
    }
});
