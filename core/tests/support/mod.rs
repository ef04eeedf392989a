//! What the in-memory client–broker tests share (`client_pair.rs`, `client_store.rs`).
#![allow(clippy::unwrap_used)]

use surgemq_core::broker::{Broker, ConnId, Input, Output};
use surgemq_core::client::{Client, ClientInput};
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
