//! The MQTT client state machine (3.1, 3.1.1 and 5.0 on the wire), with no I/O.
//!
//! ```text
//! Client::new(config, now)                     // asks for a transport at once
//! Client::handle_input(now, ClientInput)       // TransportUp | Received | TransportDown | Timeout
//! Client::publish / subscribe / unsubscribe / disconnect / ack   (commands → Token)
//! Client::poll_output() -> Option<ClientOutput> // OpenTransport | Transmit | CloseTransport | Event
//! Client::poll_timeout() -> Option<Instant>
//! ```
//!
//! Commands return a [`Token`]; their completion is an [`ClientEvent`]: a QoS 1 publish on
//! PUBACK, a QoS 2 publish on PUBCOMP (a QoS 0 publish once handed to the transport), a
//! subscribe on SUBACK, an unsubscribe on UNSUBACK. Commands made while disconnected wait in a
//! bounded queue and go out after the next CONNACK; a full queue is an error the caller sees
//! ([`ClientError::QueueFull`]) — never unbounded memory, and never a deadlock: receiving
//! never waits for sending room.
//!
//! On reconnect the session is resumed: unacknowledged PUBLISH packets are resent with DUP
//! and PUBREL packets for QoS 2 exchanges in progress, in their original order
//! (3.1.1 [MQTT-4.4.0-1]); when the server has no session (Session Present 0) the client's
//! subscriptions are made again.
//!
//! Never: read a clock, touch a socket, panic on server input, or grow without bound.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]

pub mod config;
mod ring;

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use bytes::{Bytes, BytesMut};
use core::fmt;
use core::time::Duration;

pub use config::{Backoff, ClientConfig};
use ring::Ring;
pub use ring::{INFLIGHT_CAPACITY, QUEUE_CAPACITY};

use crate::codec::{
    ConnAck, Connect, ConnectReason, DecodeError, Disconnect, EncodeError, Packet, PacketId,
    Properties, ProtocolVersion, PubAck, PubAckReason, PubRel, PubRelReason, Publish, QoS, SubAck,
    SubAckReason, Subscribe, SubscriptionOptions, UnsubAck, UnsubAckReason, Unsubscribe,
    decode_buf,
};
use crate::string::MqttString;
use crate::time::Instant;
use crate::topic::{TopicFilter, TopicName};

/// Identifies a command until its completion event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(u64);

impl Token {
    /// The number behind the token.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// Identifies a received QoS 1/2 message to acknowledge in manual-ack mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckToken {
    id: PacketId,
    qos: QoS,
    /// The session the message arrived in. Acknowledgements stay valid across reconnects
    /// that resume the session (the server resends with the same packet identifier); they
    /// are void once the session is lost, when the identifier may name another message.
    session: u64,
}

/// Something that happened outside the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientInput {
    /// The transport asked for by [`ClientOutput::OpenTransport`] is connected.
    TransportUp,
    /// Bytes arrived from the server.
    Received(Bytes),
    /// The transport is gone (closed, reset, or could not be opened).
    TransportDown,
    /// A time given by [`Client::poll_timeout`] was reached.
    Timeout,
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutput {
    /// Open a transport (TCP, TLS, ...) to the server; answer with `TransportUp` or
    /// `TransportDown`.
    OpenTransport,
    /// Write these bytes to the transport.
    Transmit(Bytes),
    /// Close the transport once what was transmitted is written.
    CloseTransport,
    /// Something happened.
    Event(ClientEvent),
}

/// A received application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingMessage {
    /// The PUBLISH as received (DUP, QoS, RETAIN, topic, 5.0 properties, payload).
    pub publish: Publish,
    /// In manual-ack mode, what to pass to [`Client::ack`] (QoS 1 and 2 only).
    pub ack: Option<AckToken>,
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// CONNACK 0 received.
    Connected {
        /// Whether the server resumed a stored session.
        session_present: bool,
        /// 5.0 CONNACK properties.
        properties: Properties,
    },
    /// The server refused the connection.
    Refused {
        /// The CONNACK reason (3.x return codes mapped).
        reason: ConnectReason,
    },
    /// The transport went down (a reconnect follows if configured).
    Disconnected,
    /// An application message arrived.
    Message(Box<IncomingMessage>),
    /// A publish completed (QoS 0: handed to the transport; 1: PUBACK; 2: PUBCOMP).
    Published {
        /// The publish command.
        token: Token,
        /// 5.0 reason from PUBACK / PUBREC (Success for 3.x).
        reason: PubAckReason,
    },
    /// A subscribe completed.
    Subscribed {
        /// The subscribe command.
        token: Token,
        /// Granted QoS or failure per filter, in order.
        reasons: Vec<SubAckReason>,
    },
    /// An unsubscribe completed.
    Unsubscribed {
        /// The unsubscribe command.
        token: Token,
        /// 5.0 result per filter (empty for 3.x).
        reasons: Vec<UnsubAckReason>,
    },
    /// The server broke the protocol; the connection was closed.
    ProtocolError(ClientProtocolError),
}

/// A server-side protocol error seen by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientProtocolError {
    /// The bytes were not a valid packet.
    Malformed(DecodeError),
    /// A packet a server may not send, or one out of place (e.g. before CONNACK).
    UnexpectedPacket,
    /// Session Present 1 for a client that asked for a clean start (5.0 [MQTT-3.2.2-4]).
    UnexpectedSessionPresent,
    /// No CONNACK within the connect timeout.
    ConnectTimeout,
    /// No PINGRESP within the keep alive.
    PingTimeout,
    /// A DISCONNECT from the server (5.0).
    ServerDisconnect(crate::codec::DisconnectReason),
}

/// Why a command was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// The outgoing queue is full: wait for completions and try again.
    QueueFull,
    /// [`Client::disconnect`] was called; no more commands.
    Stopped,
    /// The packet cannot be encoded (e.g. too large, or an empty filter list).
    Encode(EncodeError),
    /// The acknowledgement is for a message of a session that no longer exists.
    StaleAck,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::QueueFull => f.write_str("outgoing queue full"),
            Self::Stopped => f.write_str("client stopped"),
            Self::Encode(e) => write!(f, "cannot encode: {e}"),
            Self::StaleAck => f.write_str("acknowledgement for a lost session"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ClientError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No transport; `reconnect_at` says when to ask for one.
    Down,
    /// OpenTransport emitted; waiting for TransportUp.
    Opening,
    /// CONNECT sent; waiting for CONNACK.
    Connecting,
    /// CONNACK 0 received.
    Connected,
    /// `disconnect()` called.
    Stopped,
}

/// A command that needs the server's answer.
#[derive(Debug, Clone)]
enum Request {
    Publish(Publish),
    Subscribe(Vec<(TopicFilter, SubscriptionOptions)>, Properties),
    Unsubscribe(Vec<TopicFilter>, Properties),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Sent; waiting for PUBACK / PUBREC / SUBACK / UNSUBACK.
    AwaitingAck,
    /// PUBREL sent; waiting for PUBCOMP.
    AwaitingComp,
}

#[derive(Debug, Clone)]
struct Pending {
    token: Token,
    id: PacketId,
    request: Request,
    stage: Stage,
}

/// The MQTT client state machine. See the [module docs](self).
pub struct Client {
    config: ClientConfig,
    now: Instant,
    phase: Phase,
    /// Increments with every transport; stale reads are ignored by it.
    epoch: u64,
    /// Increments whenever the server's session state is lost; acks carry it.
    session: u64,
    recv: BytesMut,
    out: BytesMut,
    outputs: VecDeque<ClientOutput>,
    next_token: u64,
    next_id: PacketId,
    /// Sent and awaiting the server's answer, in send order.
    inflight: Ring<Pending, INFLIGHT_CAPACITY>,
    /// Waiting for the connection or the window.
    queue: Ring<(Token, Request), QUEUE_CAPACITY>,
    /// Filters subscribed (granted), remade when the server lost the session.
    subscriptions: BTreeMap<TopicFilter, SubscriptionOptions>,
    /// QoS 2 identifiers received whose PUBREL has not arrived, and whether PUBREC was
    /// given (in manual-ack mode, not until the application acknowledges).
    incoming_qos2: BTreeMap<PacketId, bool>,
    /// Subscriptions must be remade but the (fixed-capacity) queue was full.
    resubscribe_pending: bool,
    /// The server's Receive Maximum (5.0), if smaller than ours.
    server_receive_max: Option<u16>,
    keep_alive: Option<Duration>,
    last_sent: Instant,
    ping_deadline: Option<Instant>,
    connect_deadline: Option<Instant>,
    reconnect_at: Option<Instant>,
    attempts: u32,
    rng: u64,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.config.client_id)
            .field("phase", &self.phase)
            .field("inflight", &self.inflight.len())
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client that asks for its first transport at once.
    pub fn new(config: ClientConfig, now: Instant) -> Self {
        let keep_alive =
            (config.keep_alive > 0).then(|| Duration::from_secs(u64::from(config.keep_alive)));
        let mut client = Self {
            rng: config.seed,
            config,
            now,
            phase: Phase::Opening,
            epoch: 0,
            session: 0,
            recv: BytesMut::new(),
            out: BytesMut::new(),
            outputs: VecDeque::new(),
            next_token: 1,
            next_id: PacketId::MIN,
            inflight: Ring::new(),
            queue: Ring::new(),
            subscriptions: BTreeMap::new(),
            incoming_qos2: BTreeMap::new(),
            resubscribe_pending: false,
            server_receive_max: None,
            keep_alive,
            last_sent: now,
            ping_deadline: None,
            connect_deadline: None,
            reconnect_at: None,
            attempts: 0,
        };
        client.outputs.push_back(ClientOutput::OpenTransport);
        client
    }

    // ---- getters ------------------------------------------------------------------------

    /// Whether CONNACK 0 was received on the current transport.
    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// The client identifier (the server's assigned one once known, 5.0).
    pub fn client_id(&self) -> &MqttString {
        &self.config.client_id
    }

    /// Commands sent and awaiting the server's answer.
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Commands waiting for the connection or the window.
    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }

    // ---- commands -----------------------------------------------------------------------

    /// Publishes a message. Completes with [`ClientEvent::Published`].
    pub fn publish(
        &mut self,
        now: Instant,
        topic: TopicName,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: Properties,
    ) -> Result<Token, ClientError> {
        self.advance(now);
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic,
            // A placeholder so that the packet can be checked now; the real identifier is
            // allocated when it is sent.
            packet_id: (qos != QoS::AtMostOnce).then_some(PacketId::MIN),
            properties,
            payload,
        };
        publish
            .encoded_len_check(self.config.version)
            .map_err(ClientError::Encode)?;
        self.command(Request::Publish(publish))
    }

    /// Subscribes to filters. Completes with [`ClientEvent::Subscribed`].
    pub fn subscribe(
        &mut self,
        now: Instant,
        filters: Vec<(TopicFilter, SubscriptionOptions)>,
        properties: Properties,
    ) -> Result<Token, ClientError> {
        self.advance(now);
        if filters.is_empty() {
            return Err(ClientError::Encode(EncodeError::EmptyList));
        }
        self.command(Request::Subscribe(filters, properties))
    }

    /// Unsubscribes from filters. Completes with [`ClientEvent::Unsubscribed`].
    pub fn unsubscribe(
        &mut self,
        now: Instant,
        filters: Vec<TopicFilter>,
        properties: Properties,
    ) -> Result<Token, ClientError> {
        self.advance(now);
        if filters.is_empty() {
            return Err(ClientError::Encode(EncodeError::EmptyList));
        }
        self.command(Request::Unsubscribe(filters, properties))
    }

    /// Acknowledges a received QoS 1/2 message (manual-ack mode).
    ///
    /// Valid as long as the session lasts, across reconnects: while disconnected the ack is
    /// remembered (QoS 2) or made unnecessary by the server's resend (QoS 1, acked again when
    /// it arrives again).
    pub fn ack(&mut self, now: Instant, ack: AckToken) -> Result<(), ClientError> {
        self.advance(now);
        if ack.session != self.session {
            return Err(ClientError::StaleAck);
        }
        let connected = self.phase == Phase::Connected;
        match ack.qos {
            QoS::AtLeastOnce if connected => {
                self.send(&Packet::PubAck(PubAck::success(ack.id)));
            }
            QoS::ExactlyOnce => {
                let Some(acked) = self.incoming_qos2.get_mut(&ack.id) else {
                    // PUBREL came already (the exchange is over) or never will.
                    return Ok(());
                };
                *acked = true;
                if connected {
                    self.send(&Packet::PubRec(PubAck::success(ack.id)));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Sends DISCONNECT and closes; the client makes no more connections.
    pub fn disconnect(&mut self, now: Instant) {
        self.advance(now);
        if self.phase == Phase::Connected {
            self.send(&Packet::Disconnect(Disconnect::normal()));
        }
        if matches!(
            self.phase,
            Phase::Connected | Phase::Connecting | Phase::Opening
        ) {
            self.flush();
            self.outputs.push_back(ClientOutput::CloseTransport);
        }
        self.phase = Phase::Stopped;
        self.reconnect_at = None;
    }

    // ---- inputs -------------------------------------------------------------------------

    /// Feeds one input.
    pub fn handle_input(&mut self, now: Instant, input: ClientInput) {
        self.advance(now);
        match input {
            ClientInput::TransportUp => self.transport_up(),
            ClientInput::Received(data) => self.received(&data),
            ClientInput::TransportDown => self.transport_down(false),
            ClientInput::Timeout => self.timeout(),
        }
    }

    // ---- outputs ------------------------------------------------------------------------

    /// The next thing to do, or `None` when drained.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.flush();
        self.outputs.pop_front()
    }

    /// When to feed [`ClientInput::Timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let ping = match (self.phase, self.keep_alive) {
            (Phase::Connected, Some(k)) => Some(self.last_sent + k),
            _ => None,
        };
        [
            ping,
            self.ping_deadline,
            self.connect_deadline,
            self.reconnect_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---- internals ----------------------------------------------------------------------

    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    fn flush(&mut self) {
        if !self.out.is_empty() {
            let data = self.out.split().freeze();
            self.outputs.push_back(ClientOutput::Transmit(data));
        }
    }

    fn event(&mut self, event: ClientEvent) {
        self.flush();
        self.outputs.push_back(ClientOutput::Event(event));
    }

    fn send(&mut self, packet: &Packet) {
        // Packets are checked when commands are made; our own acks always encode.
        if packet.encode(self.config.version, &mut self.out).is_ok() {
            self.last_sent = self.now;
        }
    }

    fn token(&mut self) -> Token {
        let token = Token(self.next_token);
        self.next_token += 1;
        token
    }

    fn allocate_id(&mut self) -> PacketId {
        // [MQTT-2.3.1-2]: an identifier not in use. The window is far below 65,535.
        loop {
            let id = self.next_id;
            self.next_id = id.next();
            if !self.inflight.iter().any(|p| p.id == id) {
                return id;
            }
        }
    }

    fn window(&self) -> usize {
        let ours = usize::from(self.config.max_inflight.max(1))
            .min(Ring::<Pending, INFLIGHT_CAPACITY>::capacity());
        self.server_receive_max
            .map_or(ours, |theirs| ours.min(usize::from(theirs)))
    }

    fn publishes_in_flight(&self) -> usize {
        self.inflight
            .iter()
            .filter(|p| matches!(p.request, Request::Publish(_)))
            .count()
    }

    fn command(&mut self, request: Request) -> Result<Token, ClientError> {
        if self.phase == Phase::Stopped {
            return Err(ClientError::Stopped);
        }
        if self.queue.len() >= self.config.max_queued {
            return Err(ClientError::QueueFull);
        }
        let token = self.token();
        if self.queue.push_back((token, request)).is_err() {
            return Err(ClientError::QueueFull);
        }
        self.drain_queue();
        Ok(token)
    }

    /// Sends queued commands while connected and within the window, in order.
    fn drain_queue(&mut self) {
        if self.resubscribe_pending
            && self.phase == Phase::Connected
            && self.queue.len() < Ring::<(Token, Request), QUEUE_CAPACITY>::capacity()
        {
            self.resubscribe_pending = false;
            self.resubscribe();
        }
        while self.phase == Phase::Connected {
            let Some((_, front)) = self.queue.front() else {
                return;
            };
            let needs_window = matches!(front, Request::Publish(p) if p.qos != QoS::AtMostOnce);
            if needs_window && self.publishes_in_flight() >= self.window() {
                return;
            }
            // Subscribe and unsubscribe need an in-flight slot too (outside the window).
            let needs_slot = !matches!(front, Request::Publish(p) if p.qos == QoS::AtMostOnce);
            if needs_slot && self.inflight.len() >= Ring::<Pending, INFLIGHT_CAPACITY>::capacity() {
                return;
            }
            let Some((token, request)) = self.queue.pop_front() else {
                return;
            };
            self.start(token, request);
        }
    }

    fn start(&mut self, token: Token, request: Request) {
        match request {
            Request::Publish(mut publish) if publish.qos == QoS::AtMostOnce => {
                publish.packet_id = None;
                self.send(&Packet::Publish(publish));
                self.event(ClientEvent::Published {
                    token,
                    reason: PubAckReason::Success,
                });
            }
            mut request => {
                let id = self.allocate_id();
                match &mut request {
                    Request::Publish(p) => p.packet_id = Some(id),
                    Request::Subscribe(..) | Request::Unsubscribe(..) => {}
                }
                let pending = Pending {
                    token,
                    id,
                    request,
                    stage: Stage::AwaitingAck,
                };
                self.transmit_pending(&pending, false);
                // Room was checked by `drain_queue`.
                let _ = self.inflight.push_back(pending);
            }
        }
    }

    /// Sends (or resends, with DUP) what a pending command is waiting on.
    fn transmit_pending(&mut self, pending: &Pending, resend: bool) {
        let packet = match (&pending.request, pending.stage) {
            (Request::Publish(_), Stage::AwaitingComp) => {
                Packet::PubRel(PubRel::success(pending.id))
            }
            (Request::Publish(p), Stage::AwaitingAck) => {
                let mut p = p.clone();
                // 3.1.1 [MQTT-3.3.1-1]: DUP on a redelivery.
                p.dup = resend;
                Packet::Publish(p)
            }
            (Request::Subscribe(filters, properties), _) => Packet::Subscribe(Subscribe {
                packet_id: pending.id,
                properties: properties.clone(),
                filters: filters.clone(),
            }),
            (Request::Unsubscribe(filters, properties), _) => Packet::Unsubscribe(Unsubscribe {
                packet_id: pending.id,
                properties: properties.clone(),
                filters: filters.clone(),
            }),
        };
        self.send(&packet);
    }

    fn transport_up(&mut self) {
        if self.phase != Phase::Opening {
            return;
        }
        self.epoch += 1;
        self.recv.clear();
        self.out.clear();
        self.phase = Phase::Connecting;
        self.connect_deadline = Some(self.now + self.config.connect_timeout);
        let connect = Connect {
            protocol: self.config.version,
            clean_start: self.config.clean_start,
            keep_alive: self.config.keep_alive,
            properties: self.config.connect_properties.clone(),
            client_id: self.config.client_id.clone(),
            will: self.config.will.clone(),
            username: self.config.username.clone(),
            password: self.config.password.clone(),
        };
        self.send(&Packet::Connect(Box::new(connect)));
    }

    /// Ends the current transport; schedules a reconnect unless stopped.
    fn transport_down(&mut self, close: bool) {
        if matches!(self.phase, Phase::Down | Phase::Stopped) {
            return;
        }
        if close {
            self.flush();
            self.outputs.push_back(ClientOutput::CloseTransport);
        }
        let was_up = matches!(self.phase, Phase::Connected | Phase::Connecting);
        self.phase = Phase::Down;
        self.connect_deadline = None;
        self.ping_deadline = None;
        self.out.clear();
        self.recv.clear();
        if was_up {
            self.event(ClientEvent::Disconnected);
        }
        self.reconnect_at = match self.config.reconnect {
            Some(backoff) => {
                let delay = self.backoff_delay(backoff);
                self.attempts = self.attempts.saturating_add(1);
                Some(self.now + delay)
            }
            None => None,
        };
    }

    fn backoff_delay(&mut self, backoff: Backoff) -> Duration {
        let exp = backoff
            .initial
            .saturating_mul(1u32 << self.attempts.min(16))
            .min(backoff.max);
        // Jitter in [0.5, 1.0] of the delay, from the seeded generator.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        let fraction = 500 + (z ^ (z >> 31)) % 501; // per mille
        let millis = u64::try_from(exp.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(millis / 1000 * fraction + millis % 1000 * fraction / 1000)
    }

    fn protocol_error(&mut self, error: ClientProtocolError) {
        self.event(ClientEvent::ProtocolError(error));
        self.transport_down(true);
    }

    fn timeout(&mut self) {
        let now = self.now;
        if self.reconnect_at.is_some_and(|at| now >= at) && self.phase == Phase::Down {
            self.reconnect_at = None;
            self.phase = Phase::Opening;
            self.outputs.push_back(ClientOutput::OpenTransport);
            return;
        }
        if self.connect_deadline.is_some_and(|at| now >= at) {
            self.protocol_error(ClientProtocolError::ConnectTimeout);
            return;
        }
        if self.ping_deadline.is_some_and(|at| now >= at) {
            self.protocol_error(ClientProtocolError::PingTimeout);
            return;
        }
        if let (Phase::Connected, Some(keep_alive)) = (self.phase, self.keep_alive)
            && now >= self.last_sent + keep_alive
        {
            // 3.1.1 [MQTT-3.1.2-23]: nothing sent for a keep-alive period: PINGREQ.
            self.send(&Packet::PingReq);
            if self.ping_deadline.is_none() {
                self.ping_deadline = Some(now + keep_alive);
            }
        }
    }

    fn received(&mut self, data: &[u8]) {
        if !matches!(self.phase, Phase::Connecting | Phase::Connected) {
            return;
        }
        self.recv.extend_from_slice(data);
        let epoch = self.epoch;
        while self.epoch == epoch && matches!(self.phase, Phase::Connecting | Phase::Connected) {
            match decode_buf(
                &mut self.recv,
                self.config.version,
                self.config.max_packet_size,
            ) {
                Ok(Some(packet)) => self.packet(packet),
                Ok(None) => return,
                Err(error) => {
                    self.protocol_error(ClientProtocolError::Malformed(error));
                    return;
                }
            }
        }
    }

    fn packet(&mut self, packet: Packet) {
        if self.phase == Phase::Connecting {
            match packet {
                Packet::ConnAck(connack) => self.connack(connack),
                _ => self.protocol_error(ClientProtocolError::UnexpectedPacket),
            }
            return;
        }
        match packet {
            Packet::Publish(publish) => self.incoming_publish(publish),
            Packet::PubAck(ack) => self.puback(ack.packet_id, ack.reason),
            Packet::PubRec(rec) => self.pubrec(rec.packet_id, rec.reason),
            Packet::PubRel(rel) => {
                self.incoming_qos2.remove(&rel.packet_id);
                // 3.1.1 [MQTT-4.3.3-2]: PUBCOMP, and the identifier is free again.
                self.send(&Packet::PubComp(PubRel::success(rel.packet_id)));
            }
            Packet::PubComp(comp) => self.pubcomp(comp.packet_id, comp.reason),
            Packet::SubAck(ack) => self.suback(ack),
            Packet::UnsubAck(ack) => self.unsuback(ack),
            Packet::PingResp => self.ping_deadline = None,
            Packet::Disconnect(d) => {
                self.protocol_error(ClientProtocolError::ServerDisconnect(d.reason));
            }
            Packet::Auth(_)
            | Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::PingReq
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_) => {
                self.protocol_error(ClientProtocolError::UnexpectedPacket);
            }
        }
    }

    fn connack(&mut self, connack: ConnAck) {
        self.connect_deadline = None;
        if connack.reason != ConnectReason::Success {
            self.event(ClientEvent::Refused {
                reason: connack.reason,
            });
            self.transport_down(true);
            return;
        }
        if connack.session_present && self.config.clean_start {
            // 5.0 [MQTT-3.2.2-4]
            self.protocol_error(ClientProtocolError::UnexpectedSessionPresent);
            return;
        }
        self.phase = Phase::Connected;
        self.attempts = 0;
        let props = &connack.properties;
        self.server_receive_max = props.receive_maximum();
        if let Some(k) = props.server_keep_alive() {
            // 5.0 [MQTT-3.1.2-21]: the server's keep alive replaces ours.
            self.keep_alive = (k > 0).then(|| Duration::from_secs(u64::from(k)));
        }
        if let Some(id) = props.assigned_client_identifier() {
            self.config.client_id = id;
        }
        // MQTT 3.1 has no Session Present flag (the byte is reserved): a 3.1 server keeps the
        // session of a client that did not ask for a clean one.
        let session_present = connack.session_present
            || (self.config.version == ProtocolVersion::V3_1 && !self.config.clean_start);
        if !session_present {
            // The server has no state for us: QoS 2 exchanges it was receiving are gone,
            // acknowledgements owed to it are void, and our subscriptions must be made again.
            self.incoming_qos2.clear();
            self.session += 1;
            self.resubscribe();
        }
        self.event(ClientEvent::Connected {
            session_present,
            properties: connack.properties,
        });
        if !session_present {
            // A new session (3.1.1 [MQTT-3.1.2-6]): no exchange carries over into it. A QoS 2
            // message whose PUBREC arrived is the server's already: it completes (a PUBREL
            // would name an identifier the new session never saw).
            let released: Vec<PacketId> = self
                .inflight
                .iter()
                .filter(|p| {
                    matches!(p.request, Request::Publish(_)) && p.stage == Stage::AwaitingComp
                })
                .map(|p| p.id)
                .collect();
            for id in released {
                if let Some(p) = self.take_pending(id, |p| p.stage == Stage::AwaitingComp) {
                    self.event(ClientEvent::Published {
                        token: p.token,
                        reason: PubAckReason::Success,
                    });
                }
            }
        }
        // 3.1.1 [MQTT-4.4.0-1] [MQTT-4.6.0-1]: resend in the original order; into a new
        // session as first deliveries (DUP 0, [MQTT-3.3.1-1]).
        let pending: Vec<Pending> = self.inflight.iter().cloned().collect();
        for p in &pending {
            self.transmit_pending(p, session_present);
        }
        self.drain_queue();
    }

    fn resubscribe(&mut self) {
        if self.subscriptions.is_empty() {
            return;
        }
        // Filters already on their way (in flight, resent below, or queued) are not doubled,
        // and filters being unsubscribed are not made again behind their UNSUBSCRIBE.
        let mut already: BTreeSet<&TopicFilter> = BTreeSet::new();
        let requests = self.inflight.iter().map(|p| &p.request);
        for request in requests.chain(self.queue.iter().map(|(_, r)| r)) {
            match request {
                Request::Subscribe(filters, _) => already.extend(filters.iter().map(|(f, _)| f)),
                Request::Unsubscribe(filters, _) => already.extend(filters.iter()),
                Request::Publish(_) => {}
            }
        }
        let filters: Vec<(TopicFilter, SubscriptionOptions)> = self
            .subscriptions
            .iter()
            .filter(|(f, _)| !already.contains(f))
            .map(|(f, o)| (f.clone(), *o))
            .collect();
        if filters.is_empty() {
            return;
        }
        // Remade ahead of anything queued; completion is reported with an internal token.
        let token = self.token();
        let request = Request::Subscribe(filters, Properties::new());
        if self.queue.push_front((token, request)).is_err() {
            // A full fixed-capacity queue: resubscribe as soon as it has room.
            self.resubscribe_pending = true;
        }
    }

    fn incoming_publish(&mut self, publish: Publish) {
        let manual = self.config.manual_acks;
        let ack = match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) | (_, None) => None,
            (qos, Some(id)) => Some(AckToken {
                id,
                qos,
                session: self.session,
            }),
        };
        match ack {
            Some(a) if a.qos == QoS::ExactlyOnce => {
                if let Some(&acked) = self.incoming_qos2.get(&a.id) {
                    // 3.1.1 [MQTT-4.3.3-2]: a duplicate before PUBREL is acknowledged again
                    // (once the application has acknowledged it), not delivered again.
                    if acked {
                        self.send(&Packet::PubRec(PubAck::success(a.id)));
                    }
                    return;
                }
                self.incoming_qos2.insert(a.id, !manual);
                if !manual {
                    self.send(&Packet::PubRec(PubAck::success(a.id)));
                }
            }
            Some(a) if !manual => self.send(&Packet::PubAck(PubAck::success(a.id))),
            _ => {}
        }
        self.event(ClientEvent::Message(Box::new(IncomingMessage {
            publish,
            ack: if manual { ack } else { None },
        })));
    }

    fn take_pending(&mut self, id: PacketId, want: impl Fn(&Pending) -> bool) -> Option<Pending> {
        let at = self.inflight.iter().position(|p| p.id == id && want(p))?;
        self.inflight.remove(at)
    }

    fn puback(&mut self, id: PacketId, reason: PubAckReason) {
        let qos1 =
            |p: &Pending| matches!(&p.request, Request::Publish(x) if x.qos == QoS::AtLeastOnce);
        if let Some(p) = self.take_pending(id, qos1) {
            self.event(ClientEvent::Published {
                token: p.token,
                reason,
            });
            self.drain_queue();
        }
    }

    fn pubrec(&mut self, id: PacketId, reason: PubAckReason) {
        let qos2 = |p: &Pending| {
            matches!(&p.request, Request::Publish(x) if x.qos == QoS::ExactlyOnce)
                && p.stage == Stage::AwaitingAck
        };
        if reason.is_error() {
            // 5.0: a failed PUBREC ends the exchange.
            if let Some(p) = self.take_pending(id, qos2) {
                self.event(ClientEvent::Published {
                    token: p.token,
                    reason,
                });
                self.drain_queue();
            }
            return;
        }
        if let Some(p) = self.inflight.iter_mut().find(|p| p.id == id && qos2(p)) {
            p.stage = Stage::AwaitingComp;
        }
        // 3.1.1 [MQTT-4.3.3-1]: PUBREL answers PUBREC (also for one we no longer track).
        self.send(&Packet::PubRel(PubRel::success(id)));
    }

    fn pubcomp(&mut self, id: PacketId, _reason: PubRelReason) {
        let done = |p: &Pending| p.stage == Stage::AwaitingComp;
        if let Some(p) = self.take_pending(id, done) {
            self.event(ClientEvent::Published {
                token: p.token,
                reason: PubAckReason::Success,
            });
            self.drain_queue();
        }
    }

    fn suback(&mut self, ack: SubAck) {
        let is_sub = |p: &Pending| matches!(p.request, Request::Subscribe(..));
        let Some(p) = self.take_pending(ack.packet_id, is_sub) else {
            return;
        };
        if let Request::Subscribe(filters, _) = &p.request {
            for ((filter, options), reason) in filters.iter().zip(&ack.reasons) {
                if !reason.is_error() {
                    self.subscriptions.insert(filter.clone(), *options);
                }
            }
        }
        self.event(ClientEvent::Subscribed {
            token: p.token,
            reasons: ack.reasons,
        });
        self.drain_queue();
    }

    fn unsuback(&mut self, ack: UnsubAck) {
        let is_unsub = |p: &Pending| matches!(p.request, Request::Unsubscribe(..));
        let Some(p) = self.take_pending(ack.packet_id, is_unsub) else {
            return;
        };
        if let Request::Unsubscribe(filters, _) = &p.request {
            for filter in filters {
                self.subscriptions.remove(filter);
            }
        }
        self.event(ClientEvent::Unsubscribed {
            token: p.token,
            reasons: ack.reasons,
        });
        self.drain_queue();
    }
}

impl Publish {
    /// Checks that this PUBLISH can be encoded in `version` (size, fields, properties).
    fn encoded_len_check(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        self.view().encoded_len(version)
    }
}
