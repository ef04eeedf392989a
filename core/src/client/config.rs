//! [`ClientConfig`]: who the client is, how it connects, and every limit it keeps.

use bytes::Bytes;
use core::time::Duration;

use core::fmt;

use crate::broker::Persistence;
use crate::codec::{Properties, ProtocolVersion, Will};
use crate::string::MqttString;

/// Exponential reconnect backoff with seeded jitter: the n-th retry waits
/// `min(max, initial * 2^n)`, scaled by a random factor in [0.5, 1.0].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

/// Configuration of a [`Client`](super::Client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Client identifier; empty asks the server to assign one (3.1.1: needs `clean_start`;
    /// 3.1: 1 to 23 bytes, never empty). See [`ClientConfig::check`].
    pub client_id: MqttString,
    /// Protocol version spoken.
    pub version: ProtocolVersion,
    /// Clean Session (3.x) / Clean Start (5.0). With `false` the session is resumed on every
    /// reconnect.
    pub clean_start: bool,
    /// Keep alive in seconds; 0 turns it off.
    pub keep_alive: u16,
    /// User name.
    pub username: Option<MqttString>,
    /// Password.
    pub password: Option<Bytes>,
    /// Will message.
    pub will: Option<Will>,
    /// 5.0 CONNECT properties (Session Expiry Interval, Receive Maximum, ...).
    pub connect_properties: Properties,
    /// Unacknowledged outgoing QoS 1/2 PUBLISH at most (5.0: also capped by the server's
    /// Receive Maximum).
    pub max_inflight: u16,
    /// Commands waiting for the window or the connection at most; beyond it a command fails
    /// with [`ClientError::QueueFull`](super::ClientError::QueueFull).
    pub max_queued: usize,
    /// Largest packet accepted from the server.
    pub max_packet_size: u32,
    /// Time from transport up to CONNACK before giving up on the attempt.
    pub connect_timeout: Duration,
    /// Reconnect policy; `None` never reconnects on its own.
    pub reconnect: Option<Backoff>,
    /// Acknowledge incoming QoS 1/2 messages only when [`Client::ack`](super::Client::ack) is
    /// called, instead of as soon as they arrive.
    pub manual_acks: bool,
    /// Seed for the reconnect jitter: a simulation with the same seed replays exactly.
    pub seed: u64,
    /// Whether a persistent session (`clean_start` false) is written to a store through
    /// [`ClientOutput::Store`](super::ClientOutput::Store) operations, and whether the wire
    /// waits for their commits (see the [client docs](super#persistence)). Clean sessions are
    /// never stored.
    pub persistence: Persistence,
    /// Durable mode: outputs (packets, messages, completions) waiting for a store commit at
    /// most, before QoS 0 messages that arrive are dropped (counted by
    /// [`Client::dropped_qos0`](super::Client::dropped_qos0)). QoS 1/2 traffic is bounded by the
    /// in-flight windows and always waits.
    pub max_held: usize,
}

impl ClientConfig {
    /// A configuration with the usual defaults for `client_id`: MQTT 3.1.1, clean session,
    /// keep alive 60 s, in-flight window 20, 1,000 queued commands, reconnecting, no
    /// persistence.
    pub fn new(client_id: MqttString) -> Self {
        Self {
            client_id,
            version: ProtocolVersion::V3_1_1,
            clean_start: true,
            keep_alive: 60,
            username: None,
            password: None,
            will: None,
            connect_properties: Properties::new(),
            max_inflight: 20,
            max_queued: 1000,
            max_packet_size: 1024 * 1024 * 256,
            connect_timeout: Duration::from_secs(10),
            reconnect: Some(Backoff::default()),
            manual_acks: false,
            seed: 0x5375_7267_6543_6c74,
            persistence: Persistence::Off,
            max_held: 10_000,
        }
    }
}

/// A configuration the client cannot connect with: [`Client::new`](super::Client::new) refuses
/// it, before anything is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// MQTT 3.1.1: an empty client identifier asks for a session nobody can resume, so it must
    /// come with a clean session (3.1.1 [MQTT-3.1.3-7]).
    EmptyClientIdNeedsCleanSession,
    /// MQTT 3.1: the client identifier must be 1 to 23 bytes long.
    ClientIdLengthV31(usize),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyClientIdNeedsCleanSession => {
                f.write_str("an empty client identifier needs a clean session (MQTT 3.1.1)")
            }
            Self::ClientIdLengthV31(n) => write!(
                f,
                "an MQTT 3.1 client identifier is 1 to 23 bytes long, not {n}"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ConfigError {}

impl ClientConfig {
    /// Whether a client can connect with this configuration (what [`Client::new`] checks).
    ///
    /// [`Client::new`]: super::Client::new
    pub fn check(&self) -> Result<(), ConfigError> {
        let id_len = self.client_id.as_str().len();
        match self.version {
            ProtocolVersion::V3_1 if !(1..=23).contains(&id_len) => {
                Err(ConfigError::ClientIdLengthV31(id_len))
            }
            ProtocolVersion::V3_1_1 if id_len == 0 && !self.clean_start => {
                Err(ConfigError::EmptyClientIdNeedsCleanSession)
            }
            _ => Ok(()),
        }
    }
}
