//! [`BrokerConfig`]: every limit and policy of the broker state machine, with defaults an
//! experienced MQTT user expects (Mosquitto 2's, where it has one).
//!
//! Every limit here is enforced by the core. Never: a limit that is not configurable.

use core::time::Duration;

/// Who may connect without credentials checked by an external authenticator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Accept every client, with or without credentials (no authenticator).
    AllowAll,
    /// Accept clients on a loopback peer address (127.0.0.0/8, ::1) without asking anyone;
    /// refuse others with "not authorized". Mosquitto 2's default with no listener configured.
    LoopbackOnly,
    /// Ask the adapter for every CONNECT ([`Output::Authenticate`](super::Output::Authenticate),
    /// answered by [`Input::AuthDone`](super::Input::AuthDone)).
    External,
}

/// What to do with a message for a session whose queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// Drop the oldest queued QoS 0 message to make room; if none is queued, drop the new
    /// message. Every drop is counted and reported as an event.
    DropOldestQoS0First,
    /// Drop the new message; counted and reported.
    DropNew,
}

/// Whether the broker emits [`Output::Store`](super::Output::Store) operations, and whether
/// acknowledgements wait for them to be committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing is stored: no `Store` outputs at all.
    Off,
    /// Persistent sessions, their QoS 1/2 messages and retained messages are emitted as
    /// `Store` operations, and every acknowledgement (PUBACK, PUBREC, PUBCOMP, SUBACK,
    /// UNSUBACK) waits for the [`Input::StoreDone`](super::Input::StoreDone) covering what was
    /// emitted before it. A QoS 2 PUBLISH to a persistent session is written to its socket only
    /// once its in-flight state is committed. Nothing acknowledged is lost in a crash.
    Durable,
    /// The same operations are emitted, but nothing waits for them: the adapter commits them
    /// on its own schedule, and a crash loses what was acknowledged since the last commit.
    Periodic,
}

/// Configuration of a [`Broker`](super::Broker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Largest packet accepted from a client, in bytes (fixed header included).
    pub max_packet_size: u32,
    /// Largest client identifier accepted, in bytes (3.1 clients are limited to 23 anyway).
    pub max_client_id_len: usize,
    /// Time a new connection has to send CONNECT before it is closed.
    pub connect_timeout: Duration,
    /// Keep alive is enforced at 1.5 times the client's value; 0 (no keep alive) is replaced by
    /// this if set, and larger values are capped at it.
    pub max_keep_alive: Option<u16>,
    /// Unacknowledged outgoing QoS 1/2 messages per client.
    pub max_inflight: u16,
    /// Messages queued per session beyond the in-flight window (online or offline).
    pub max_queued_messages: usize,
    /// Payload bytes queued per session.
    pub max_queued_bytes: usize,
    /// What happens when a queue is full.
    pub overflow_policy: OverflowPolicy,
    /// Publisher flow control: while a connected session that a QoS 1/2 message went to has
    /// more than half of `max_queued_messages` queued, the acknowledgement (PUBACK / PUBREC)
    /// to its publisher is held until that queue is back under a quarter. Publishers then slow
    /// down to their slowest connected subscriber (within their own in-flight window) instead
    /// of overflowing its queue; what they still had in flight may take that queue up to twice
    /// its limits. At most twice `max_queued_messages` acknowledgements are held per session
    /// (a publisher ignoring its window gets the rest at once, and the overflow policy for its
    /// messages). Offline sessions never hold acknowledgements.
    pub publisher_flow_control: bool,
    /// The longest one subscriber may hold acknowledgements; after it the acknowledgements go
    /// out and that subscriber's queue falls back to `overflow_policy` until it drains under a
    /// quarter. Bounds what a subscriber that stopped reading can do to publishers.
    pub max_ack_hold: Duration,
    /// Persistent sessions offline this long are discarded with their queued messages, in
    /// memory and in the store (Mosquitto's `persistent_client_expiration`; MQTT 3.x sessions
    /// have no expiry of their own). `None` keeps them until a clean session replaces them.
    /// After a restart the time counts from the restore.
    pub session_expiry: Option<Duration>,
    /// Queue QoS 0 messages for offline persistent sessions (Mosquitto's `queue_qos0_messages`).
    pub queue_qos0_offline: bool,
    /// Bytes handed to a connection but not yet reported flushed, above which the broker stops
    /// writing PUBLISH packets to it and queues them by the session rules instead.
    pub max_unflushed_bytes: usize,
    /// Resend unacknowledged QoS 1/2 messages after this long while the client stays connected
    /// (MQTT 3.x only; `None` resends only on reconnect, as the specs recommend).
    pub retry_interval: Option<Duration>,
    /// Publish `$SYS` statistics this often; `None` turns them off.
    pub sys_interval: Option<Duration>,
    /// Authentication policy.
    pub auth: AuthMode,
    /// Subscriptions one session may hold; a SUBSCRIBE beyond it fails for the extra filters
    /// (SUBACK 0x80 for 3.x clients).
    pub max_subscriptions_per_client: usize,
    /// Retained messages kept at most (new topics beyond it are not retained; replacing and
    /// clearing still work).
    pub max_retained_messages: usize,
    /// What is stored, and whether acknowledgements wait for it.
    pub persistence: Persistence,
    /// Seed for everything random (assigned client identifiers, hashing): a simulation with the
    /// same seed replays exactly.
    pub seed: u64,
    /// Version string published on `$SYS/broker/version`.
    pub version: &'static str,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            max_packet_size: 1024 * 1024 * 256,
            max_client_id_len: 65_535,
            connect_timeout: Duration::from_secs(10),
            max_keep_alive: None,
            max_inflight: 20,
            max_queued_messages: 1000,
            max_queued_bytes: 64 * 1024 * 1024,
            overflow_policy: OverflowPolicy::DropOldestQoS0First,
            publisher_flow_control: true,
            max_ack_hold: Duration::from_secs(5),
            session_expiry: None,
            queue_qos0_offline: false,
            max_unflushed_bytes: 1024 * 1024,
            retry_interval: None,
            sys_interval: Some(Duration::from_secs(10)),
            auth: AuthMode::LoopbackOnly,
            max_subscriptions_per_client: 10_000,
            max_retained_messages: 1_000_000,
            persistence: Persistence::Off,
            seed: 0x5375_7267_654d_5121,
            version: concat!("surgemq version ", env!("CARGO_PKG_VERSION")),
        }
    }
}
