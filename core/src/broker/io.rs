//! What goes in and out of the [`Broker`](super::Broker): [`Input`], [`Output`], [`Event`] and
//! the typed [`ProtocolViolation`]s a connection can commit.

use bytes::Bytes;
use core::net::SocketAddr;

use crate::codec::{ConnectReason, DecodeError, ProtocolVersion};
use crate::store::StoreOp;
use crate::string::MqttString;

/// A connection's identifier, assigned by [`Broker::open_connection`](super::Broker::open_connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub(crate) u64);

impl ConnId {
    /// The number behind the identifier (unique for the broker's lifetime).
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// Something that happened outside the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Bytes arrived on a connection.
    Received {
        /// The connection.
        conn: ConnId,
        /// The bytes, in order.
        data: Bytes,
    },
    /// The socket took `bytes` of what [`Output::Transmit`] handed out.
    Flushed {
        /// The connection.
        conn: ConnId,
        /// Bytes written to the socket.
        bytes: usize,
    },
    /// The connection is gone (peer closed, reset, or I/O error). Not needed after
    /// [`Output::Close`].
    Closed {
        /// The connection.
        conn: ConnId,
    },
    /// A time given by [`Broker::poll_timeout`](super::Broker::poll_timeout) was reached.
    Timeout,
    /// The store applied every [`Output::Store`] up to and including sequence number `seq`
    /// (one report may cover many operations: that is group commit), or failed to.
    StoreDone {
        /// The last operation covered.
        seq: u64,
        /// Committed, or why not. On failure the broker withholds every acknowledgement that
        /// depended on those operations, closes those connections so their clients retry, and
        /// emits a rewrite of everything it keeps ([`StoreOp::Clear`] and puts). A store that
        /// reported a failure must commit nothing more until that rewrite arrives, and then
        /// commit it together with whatever came between (the Clear supersedes it): committed
        /// alone, operations that followed failed ones leave a state the broker never had.
        result: Result<(), StoreFailure>,
    },
    /// The answer to an [`Output::Authenticate`].
    AuthDone {
        /// The connection.
        conn: ConnId,
        /// Accept, or refuse with a reason.
        verdict: AuthVerdict,
    },
}

/// Why a store could not commit (the adapter's error, as text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFailure(pub alloc::string::String);

impl core::fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Answers [`Output::Authenticate`]. Adapters call it off the broker's task: checking a
/// password hash is slow on purpose.
pub trait Authenticator: Send + Sync {
    /// The verdict for one CONNECT.
    fn authenticate(&self, request: &AuthRequest) -> AuthVerdict;
}

/// An authenticator's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVerdict {
    /// Let the client in.
    Accept,
    /// Refuse it; the reason goes into CONNACK (mapped to a 3.x return code for old clients).
    Refuse(ConnectReason),
}

/// What the caller must do, drained with [`Broker::poll_output`](super::Broker::poll_output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes to the connection, after everything transmitted to it before.
    Transmit {
        /// The connection.
        conn: ConnId,
        /// One batch: every packet ready for the connection, back to back.
        data: Bytes,
    },
    /// Close the connection once what was transmitted before is written. No
    /// [`Input::Closed`] is needed for it.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Apply this operation to the store, after every one with a lower `seq`, and report
    /// [`Input::StoreDone`] once committed (only with [`Persistence`](super::Persistence)
    /// other than `Off`). Sequence numbers start at 1 and increase by one.
    Store {
        /// Its sequence number.
        seq: u64,
        /// What to change.
        op: StoreOp,
    },
    /// Check a client's credentials and answer with [`Input::AuthDone`] (only in
    /// [`AuthMode::External`](super::AuthMode::External)).
    Authenticate(AuthRequest),
    /// Something worth logging or counting.
    Event(Event),
}

/// A CONNECT awaiting the authenticator's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// The connection.
    pub conn: ConnId,
    /// Its peer address, if the adapter gave one.
    pub peer: Option<SocketAddr>,
    /// The client identifier (after assignment for an empty one).
    pub client_id: MqttString,
    /// User name, if sent — or the TLS client certificate's name (see `from_certificate`).
    pub username: Option<MqttString>,
    /// The user name comes from a client certificate the TLS handshake verified, so it needs
    /// no password (Mosquitto's `use_identity_as_username`).
    pub from_certificate: bool,
    /// Password, if sent.
    pub password: Option<Bytes>,
}

/// Something the broker reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A client completed CONNECT.
    Connected {
        /// The connection.
        conn: ConnId,
        /// Its client identifier.
        client_id: MqttString,
        /// Protocol version in use.
        version: ProtocolVersion,
        /// Whether a stored session was resumed.
        session_present: bool,
    },
    /// A CONNECT was refused with a CONNACK.
    Refused {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: ConnectReason,
    },
    /// A connection ended.
    Disconnected {
        /// The connection.
        conn: ConnId,
        /// Its client identifier, if it got as far as CONNECT.
        client_id: Option<MqttString>,
        /// Why.
        cause: DisconnectCause,
    },
    /// The store failed to commit operations up to `seq`: `withheld` acknowledgements were not
    /// sent, and their connections closed.
    StoreFailed {
        /// The last operation of the failed batch.
        seq: u64,
        /// The store's error.
        error: StoreFailure,
        /// Acknowledgements withheld.
        withheld: usize,
    },
    /// A persistent session stayed offline longer than
    /// [`BrokerConfig::session_expiry`](super::BrokerConfig::session_expiry) and was
    /// discarded.
    SessionExpired {
        /// Its client identifier.
        client_id: MqttString,
    },
    /// Messages for a session were dropped because its queue was full. Reported at the first
    /// drop and then each time the session's total doubles (the `$SYS` counter
    /// `messages/dropped` counts every one).
    MessagesDropped {
        /// The session's client identifier.
        client_id: MqttString,
        /// How many, in total so far for this session.
        total: u64,
    },
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectCause {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// The socket closed without DISCONNECT.
    ConnectionLost,
    /// The client broke the protocol.
    Violation(ProtocolViolation),
    /// Another connection took over the client identifier ([MQTT-3.1.4-2]).
    TakenOver,
    /// The CONNECT was refused.
    Refused(ConnectReason),
    /// The broker is shutting down ([`Broker::shutdown`](super::Broker::shutdown)).
    ServerShutdown,
    /// The store could not commit what an acknowledgement owed to this client depended on.
    StoreFailed,
}

/// A rule of the protocol a client broke. The connection is closed ([MQTT-4.8.0-1]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolViolation {
    /// The bytes are not a valid packet.
    Malformed(DecodeError),
    /// The first packet was not CONNECT: 3.1.1 [MQTT-3.1.0-1].
    FirstPacketNotConnect,
    /// A second CONNECT on the connection: 3.1.1 [MQTT-3.1.0-2].
    SecondConnect,
    /// No CONNECT within the connect timeout.
    ConnectTimeout,
    /// Nothing received for 1.5 times the keep alive: 3.1.1 [MQTT-3.1.2-24].
    KeepAliveTimeout,
    /// A packet only a server sends (CONNACK, SUBACK, UNSUBACK, PINGRESP).
    ServerOnlyPacket,
    /// More than 65,535 packets awaiting our acknowledgement (durable mode, waiting for the
    /// store): more than there are packet identifiers, so the client reuses identifiers still
    /// in use, 3.1.1 [MQTT-2.3.1-2]. Bounds what one client can make the broker hold.
    TooManyUnacknowledged,
}

impl ProtocolViolation {
    /// The normative statement broken, where there is one.
    pub const fn statement(&self) -> Option<&'static str> {
        match self {
            Self::Malformed(e) => e.statement(),
            Self::FirstPacketNotConnect => Some("MQTT-3.1.0-1"),
            Self::SecondConnect => Some("MQTT-3.1.0-2"),
            Self::KeepAliveTimeout => Some("MQTT-3.1.2-24"),
            Self::TooManyUnacknowledged => Some("MQTT-2.3.1-2"),
            _ => None,
        }
    }
}
