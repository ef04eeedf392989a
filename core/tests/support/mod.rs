//! What the in-memory client–broker tests share (`client_pair.rs`, `client_store.rs`,
//! `client_clean_session.rs`): carrying outputs between clients and a broker, timers, link cuts,
//! and draining a client on its own.
#![allow(clippy::unwrap_used)]
// Each test binary uses a different part.
#![allow(dead_code)]

use bytes::BytesMut;
use surgemq_core::broker::{Broker, ConnId, Input, Output};
use surgemq_core::client::{Client, ClientEvent, ClientInput, ClientOutput};
use surgemq_core::codec::{MAX_PACKET_SIZE, Packet, ProtocolVersion, decode_buf};
use surgemq_core::store::StoreOp;
use surgemq_core::time::Instant;

/// A client's end of an in-memory link: its state machine, the broker connection it has, and
/// whether the link carries bytes (false: a partition drops them).
pub(crate) struct End<'a> {
    pub(crate) client: &'a mut Client,
    pub(crate) conn: &'a mut Option<ConnId>,
    pub(crate) link_up: bool,
}

/// Drains the broker: each transmission is reported flushed and handed to the client whose
/// connection it is for (if its link is up), each close ends that client's transport. Returns
/// whether there was anything.
pub(crate) fn deliver_broker_outputs(
    broker: &mut Broker,
    now: Instant,
    ends: &mut [End<'_>],
) -> bool {
    let mut moved = false;
    while let Some(out) = broker.poll_output() {
        moved = true;
        match out {
            Output::Transmit { conn, data } => {
                let len = data.len();
                broker
                    .handle_input(now, Input::Flushed { conn, bytes: len })
                    .unwrap();
                if let Some(end) = ends.iter_mut().find(|e| *e.conn == Some(conn) && e.link_up) {
                    end.client.handle_input(now, ClientInput::Received(data));
                }
            }
            Output::Close { conn } => {
                if let Some(end) = ends.iter_mut().find(|e| *e.conn == Some(conn)) {
                    *end.conn = None;
                    end.client.handle_input(now, ClientInput::TransportDown);
                }
            }
            _ => {}
        }
    }
    moved
}

/// Carries one client output to the broker: a transport is opened (or the attempt fails while
/// the link is down), bytes are delivered (dropped on a down link), a close closes. Events and
/// store operations are the test's own: handed back.
pub(crate) fn client_output(
    broker: &mut Broker,
    now: Instant,
    end: End<'_>,
    out: ClientOutput,
) -> Option<ClientOutput> {
    match out {
        ClientOutput::OpenTransport => {
            if end.link_up {
                *end.conn = Some(broker.open_connection(now, None));
                end.client.handle_input(now, ClientInput::TransportUp);
            } else {
                end.client.handle_input(now, ClientInput::TransportDown);
            }
        }
        ClientOutput::Transmit(data) => {
            if let (Some(conn), true) = (*end.conn, end.link_up) {
                broker
                    .handle_input(now, Input::Received { conn, data })
                    .unwrap();
            }
        }
        ClientOutput::CloseTransport => {
            if let Some(conn) = end.conn.take() {
                broker.handle_input(now, Input::Closed { conn }).unwrap();
            }
        }
        other => return Some(other),
    }
    None
}

/// Cuts a link: the broker sees the connection close, the client its transport go down.
pub(crate) fn cut(broker: &mut Broker, now: Instant, end: End<'_>) {
    if let Some(conn) = end.conn.take() {
        broker.handle_input(now, Input::Closed { conn }).unwrap();
        end.client.handle_input(now, ClientInput::TransportDown);
    }
}

/// The earliest timer of the broker or a client due no later than `end`.
pub(crate) fn next_timer<'a>(
    broker: &Broker,
    clients: impl Iterator<Item = &'a Client>,
    end: Instant,
) -> Option<Instant> {
    clients
        .filter_map(Client::poll_timeout)
        .chain(broker.poll_timeout())
        .filter(|t| *t <= end)
        .min()
}

/// Fires every timer of the broker and the clients due at `now`.
pub(crate) fn fire_timers<'a>(
    broker: &mut Broker,
    now: Instant,
    clients: impl Iterator<Item = &'a mut Client>,
) {
    for client in clients {
        if client.poll_timeout().is_some_and(|t| t <= now) {
            client.handle_input(now, ClientInput::Timeout);
        }
    }
    if broker.poll_timeout().is_some_and(|t| t <= now) {
        broker.handle_input(now, Input::Timeout).unwrap();
    }
}

/// What one drain of a client on its own produced (MQTT 3.1.1).
#[derive(Debug, Default)]
pub(crate) struct Drained {
    pub(crate) packets: Vec<Packet>,
    pub(crate) events: Vec<ClientEvent>,
    pub(crate) ops: Vec<(u64, StoreOp)>,
    pub(crate) closed: bool,
}

/// Drains a client with no broker behind it: transports open at once, transmitted bytes are
/// decoded (3.1.1).
pub(crate) fn drain(client: &mut Client, now: Instant) -> Drained {
    let mut d = Drained::default();
    while let Some(output) = client.poll_output() {
        match output {
            ClientOutput::OpenTransport => client.handle_input(now, ClientInput::TransportUp),
            ClientOutput::Transmit(bytes) => {
                let mut buf = BytesMut::from(&bytes[..]);
                while let Some(p) =
                    decode_buf(&mut buf, ProtocolVersion::V3_1_1, MAX_PACKET_SIZE).unwrap()
                {
                    d.packets.push(p);
                }
            }
            ClientOutput::CloseTransport => d.closed = true,
            ClientOutput::Event(e) => d.events.push(e),
            ClientOutput::Store { seq, op } => d.ops.push((seq, op)),
        }
    }
    d
}
