//! [`Connection`]: per-connection protocol state — the CONNECT handshake, the protocol version,
//! keep-alive, the receive buffer and the batch of bytes waiting to be transmitted.
//!
//! Kept apart from [`Session`](super::session::Session) (which outlives connections) and from the
//! routing state. Never: hold more than one packet's worth of unparsed input (the decoder
//! refuses oversize packets from their fixed header).

use alloc::boxed::Box;
use bytes::BytesMut;
use core::net::SocketAddr;
use core::time::Duration;

use super::session::SessionKey;
use crate::codec::{Connect, ProtocolVersion, Will};
use crate::string::MqttString;
use crate::time::Instant;

#[derive(Debug)]
pub(crate) enum Phase {
    /// Waiting for CONNECT.
    AwaitingConnect,
    /// CONNECT received; waiting for the authenticator.
    Authenticating(Box<Connect>),
    /// CONNACK 0 sent.
    Connected,
}

#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) peer: Option<SocketAddr>,
    /// User name taken from the TLS client certificate, if the listener uses it.
    pub(crate) identity: Option<MqttString>,
    pub(crate) opened_at: Instant,
    pub(crate) phase: Phase,
    pub(crate) version: ProtocolVersion,
    /// Bytes received but not yet decoded.
    pub(crate) recv: BytesMut,
    /// Encoded packets not yet handed out as a Transmit.
    pub(crate) out: BytesMut,
    /// Bytes handed out as Transmit and not yet reported Flushed.
    pub(crate) unflushed: usize,
    /// Listed in the broker's set of connections with bytes to transmit.
    pub(crate) dirty: bool,
    /// Enforced keep-alive (1.5 times the client's), `None` when off.
    pub(crate) keep_alive_limit: Option<Duration>,
    pub(crate) last_received: Instant,
    pub(crate) session: Option<SessionKey>,
    pub(crate) will: Option<Will>,
    /// Durable persistence: the batch is not handed out until the store has committed this
    /// sequence number (0: not held). Set after writing a stored QoS 2 PUBLISH.
    pub(crate) hold_until: u64,
    /// Durable persistence: acknowledgements to this client waiting for the store.
    pub(crate) pending_acks: u32,
    /// Earliest instant this connection has an entry for in the timer heap.
    pub(crate) timer_at: Option<Instant>,
}

impl Connection {
    pub(crate) fn new(peer: Option<SocketAddr>, now: Instant) -> Self {
        Self {
            peer,
            identity: None,
            opened_at: now,
            phase: Phase::AwaitingConnect,
            version: ProtocolVersion::V3_1_1,
            recv: BytesMut::new(),
            out: BytesMut::new(),
            unflushed: 0,
            dirty: false,
            keep_alive_limit: None,
            last_received: now,
            session: None,
            will: None,
            hold_until: 0,
            pending_acks: 0,
            timer_at: None,
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        matches!(self.phase, Phase::Connected)
    }

    /// Bytes produced for the socket that it has not taken yet.
    pub(crate) fn backlog(&self) -> usize {
        self.unflushed + self.out.len()
    }
}
