//! [`Wire`]: one bench connection speaking MQTT with the core codec directly over a tokio
//! `TcpStream` — the CONNECT / SUBSCRIBE handshakes, then raw access for the hot loops, which
//! batch their writes and decode with `decode_buf` from one receive buffer.
//!
//! Never: keep protocol state beyond the handshake (the publisher and subscriber loops own
//! their windows), or wait without a deadline.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use surgemq_core::codec::{
    Connect, Disconnect, Packet, PacketId, Properties, ProtocolVersion, Subscribe,
    SubscriptionOptions, decode_buf,
};
use surgemq_core::string::MqttString;
use surgemq_core::topic::TopicFilter;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Largest packet accepted from the broker.
pub const MAX_PACKET_SIZE: u32 = 16 * 1024 * 1024 + 1024;

/// How long a handshake step may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who connects, and how.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `host:port`.
    pub address: String,
    /// Protocol version.
    pub version: ProtocolVersion,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Clean session 0: the broker keeps (and, if it persists, stores) the sessions.
    pub persistent: bool,
}

/// An MQTT connection after CONNACK.
#[derive(Debug)]
pub struct Wire {
    /// The socket (`TCP_NODELAY` on).
    pub stream: TcpStream,
    /// Bytes received and not yet decoded.
    pub inbox: BytesMut,
    /// The protocol version spoken.
    pub version: ProtocolVersion,
    /// 5.0: the broker's Receive Maximum (65,535 when it sends none, and before 5.0).
    pub receive_maximum: u16,
}

impl Wire {
    /// Connects, sends CONNECT (clean start unless the identity is persistent, keep alive off)
    /// and waits for a successful CONNACK.
    pub async fn connect(identity: &Identity, client_id: &str) -> Result<Self, String> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, Self::connect_now(identity, client_id))
            .await
            .map_err(|_| format!("{client_id}: no CONNACK within {HANDSHAKE_TIMEOUT:?}"))?
    }

    async fn connect_now(identity: &Identity, client_id: &str) -> Result<Self, String> {
        let stream = TcpStream::connect(&identity.address)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", identity.address))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY: {e}"))?;
        let string = |s: &str| MqttString::new(s).map_err(|e| format!("`{s}`: {e}"));
        let connect = Connect {
            protocol: identity.version,
            clean_start: !identity.persistent,
            // The loops never ping: data flows all the time, and an idle subscriber must
            // not be cut off while waiting for the publishers to start.
            keep_alive: 0,
            properties: Properties::new(),
            client_id: string(client_id)?,
            will: None,
            username: identity.username.as_deref().map(string).transpose()?,
            password: identity
                .password
                .as_ref()
                .map(|p| Bytes::from(p.clone().into_bytes())),
        };
        let mut wire = Self {
            stream,
            inbox: BytesMut::with_capacity(64 * 1024),
            version: identity.version,
            receive_maximum: u16::MAX,
        };
        wire.send(&Packet::Connect(Box::new(connect))).await?;
        match wire.next_packet().await? {
            Packet::ConnAck(connack) if !connack.reason.is_error() => {
                if let Some(max) = connack.properties.receive_maximum() {
                    wire.receive_maximum = max;
                }
                Ok(wire)
            }
            Packet::ConnAck(connack) => Err(format!(
                "{client_id}: connection refused: {:?}",
                connack.reason
            )),
            other => Err(format!(
                "{client_id}: expected CONNACK, got {:?}",
                other.packet_type()
            )),
        }
    }

    /// Subscribes to `filters` and waits for a SUBACK that grants every one of them.
    pub async fn subscribe(
        &mut self,
        filters: Vec<(TopicFilter, SubscriptionOptions)>,
    ) -> Result<(), String> {
        let subscribe = Subscribe {
            packet_id: PacketId::MIN,
            properties: Properties::new(),
            filters,
        };
        self.send(&Packet::Subscribe(subscribe)).await?;
        let suback = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.next_packet())
            .await
            .map_err(|_| format!("no SUBACK within {HANDSHAKE_TIMEOUT:?}"))??;
        match suback {
            Packet::SubAck(suback) => match suback.reasons.iter().find(|r| r.is_error()) {
                Some(reason) => Err(format!("subscription refused: {reason:?}")),
                None => Ok(()),
            },
            other => Err(format!("expected SUBACK, got {:?}", other.packet_type())),
        }
    }

    /// Encodes and writes one packet.
    pub async fn send(&mut self, packet: &Packet) -> Result<(), String> {
        let mut out = Vec::new();
        packet
            .encode(self.version, &mut out)
            .map_err(|e| format!("cannot encode {:?}: {e}", packet.packet_type()))?;
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| format!("write failed: {e}"))
    }

    /// Reads until a whole packet is buffered and returns it.
    pub async fn next_packet(&mut self) -> Result<Packet, String> {
        loop {
            if let Some(packet) = self.decode()? {
                return Ok(packet);
            }
            self.read().await?;
        }
    }

    /// The next packet already buffered, if any.
    pub fn decode(&mut self) -> Result<Option<Packet>, String> {
        decode_buf(&mut self.inbox, self.version, MAX_PACKET_SIZE)
            .map_err(|e| format!("malformed packet from the broker: {e}"))
    }

    /// Reads what the socket has into the inbox; an end of stream is an error.
    pub async fn read(&mut self) -> Result<usize, String> {
        self.inbox.reserve(64 * 1024);
        match self.stream.read_buf(&mut self.inbox).await {
            Ok(0) => Err("the broker closed the connection".into()),
            Ok(n) => Ok(n),
            Err(e) => Err(format!("read failed: {e}")),
        }
    }

    /// Sends DISCONNECT and closes our side; errors are ignored (the run is over).
    pub async fn disconnect(mut self) {
        let _ = self.send(&Packet::Disconnect(Disconnect::normal())).await;
        let _ = self.stream.shutdown().await;
    }
}
