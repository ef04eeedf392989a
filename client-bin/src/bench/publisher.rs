//! One bench publisher: a single task that owns its connection, writes pre-encoded PUBLISH
//! packets in large batches and, at QoS 1/2, reads acknowledgements between batches within a
//! bounded in-flight window.
//!
//! The PUBLISH is encoded once (`Template`); each message is a copy of it with its packet
//! identifier and payload header (publisher, sequence, send time) patched in place. Nothing
//! goes through a channel per message.
//!
//! Never: more than the window unacknowledged, or wait for acknowledgements past `drain`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use surgemq_core::codec::{Packet, PacketId, Properties, ProtocolVersion, PubRel, Publish, QoS};
use surgemq_core::topic::TopicName;
use tokio::io::AsyncWriteExt as _;

use super::clock::Clock;
use super::payload::Stamp;
use super::wire::Wire;

/// Bytes written per batch at most (one `write` call).
const BATCH_BYTES: usize = 64 * 1024;

/// Messages per publisher at most: the subscribers' sequence bitmaps stay small (32 MiB).
pub const MAX_SEQUENCE: u64 = 1 << 28;

/// What one publisher does.
#[derive(Debug, Clone)]
pub struct PublisherSpec {
    /// Its index: the publisher id in every payload.
    pub index: u32,
    /// Where it publishes.
    pub topic: TopicName,
    /// At which QoS.
    pub qos: QoS,
    /// Payload size in bytes (at least the stamp's).
    pub payload_len: usize,
    /// Messages to send; `None` sends until `duration`.
    pub count: Option<u64>,
    /// How long to send, from the go signal.
    pub duration: Option<Duration>,
    /// Messages per second; 0 is as fast as the connection takes them.
    pub rate: u64,
    /// Unacknowledged QoS 1/2 messages at most.
    pub window: u16,
    /// How long to wait for the last acknowledgements.
    pub drain: Duration,
}

/// What one publisher did.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublisherReport {
    /// Messages written.
    pub sent: u64,
    /// QoS 1/2 messages acknowledged (PUBACK, or PUBCOMP).
    pub acked: u64,
    /// Acknowledgements carrying an error reason code (5.0).
    pub refused: u64,
    /// Messages still unacknowledged when the drain time ran out.
    pub unacked: u64,
    /// When the last message was written, in clock nanoseconds.
    pub last_send_ns: u64,
}

/// Counters the progress line reads while the run goes.
#[derive(Debug, Default)]
pub struct Progress {
    /// Messages written by every publisher.
    pub sent: AtomicU64,
    /// Distinct messages received by every subscriber.
    pub delivered: AtomicU64,
    /// Publishers that have finished.
    pub publishers_done: AtomicU64,
}

/// A PUBLISH encoded once, and where to patch each copy.
struct Template {
    bytes: Vec<u8>,
    /// Offset of the packet identifier (QoS 1/2).
    packet_id_at: usize,
    /// Offset of the payload.
    payload_at: usize,
}

impl Template {
    fn new(spec: &PublisherSpec, version: ProtocolVersion) -> Result<Self, String> {
        let publish = Publish {
            dup: false,
            qos: spec.qos,
            retain: false,
            topic: spec.topic.clone(),
            packet_id: (spec.qos != QoS::AtMostOnce).then_some(PacketId::MIN),
            properties: Properties::new(),
            payload: Bytes::from(vec![0u8; spec.payload_len]),
        };
        let mut bytes = Vec::new();
        Packet::Publish(publish)
            .encode(version, &mut bytes)
            .map_err(|e| format!("cannot encode the bench PUBLISH: {e}"))?;
        let payload_at = bytes.len() - spec.payload_len;
        // Before the payload: [packet id (2)] [5.0: property length 0 (1)].
        let packet_id_at = payload_at.saturating_sub(2 + usize::from(version.is_v5()));
        Ok(Self {
            bytes,
            packet_id_at,
            payload_at,
        })
    }
}

/// Packet identifiers in use, handed out round-robin so a just-freed one is reused last.
struct PacketIds {
    in_use: Vec<bool>,
    last: u16,
    len: usize,
}

impl PacketIds {
    fn new() -> Self {
        Self {
            in_use: vec![false; usize::from(u16::MAX) + 1],
            last: 0,
            len: 0,
        }
    }

    /// A free identifier (the window is far below 65,535, so one is always found).
    fn take(&mut self) -> u16 {
        loop {
            self.last = self.last.checked_add(1).unwrap_or(1);
            let slot = &mut self.in_use[usize::from(self.last)];
            if !*slot {
                *slot = true;
                self.len += 1;
                return self.last;
            }
        }
    }

    /// Frees `id`; false if it was not in use (a stray or repeated acknowledgement).
    fn release(&mut self, id: PacketId) -> bool {
        let slot = &mut self.in_use[usize::from(id.get())];
        let was = *slot;
        *slot = false;
        if was {
            self.len -= 1;
        }
        was
    }
}

/// Sends as `spec` says from the go signal at `go_ns`, then sends DISCONNECT.
pub async fn run(
    mut wire: Wire,
    spec: PublisherSpec,
    clock: Clock,
    go_ns: u64,
    progress: Arc<Progress>,
) -> Result<PublisherReport, String> {
    let result = publish_all(&mut wire, &spec, clock, go_ns, &progress).await;
    progress.publishers_done.fetch_add(1, Ordering::Relaxed);
    if result.is_ok() {
        wire.disconnect().await;
    }
    result
}

async fn publish_all(
    wire: &mut Wire,
    spec: &PublisherSpec,
    clock: Clock,
    go_ns: u64,
    progress: &Progress,
) -> Result<PublisherReport, String> {
    let template = Template::new(spec, wire.version)?;
    let acknowledged = spec.qos != QoS::AtMostOnce;
    let window = if acknowledged {
        u64::from(spec.window.min(wire.receive_maximum).max(1))
    } else {
        u64::MAX
    };
    let per_batch = (BATCH_BYTES / template.bytes.len()).max(1) as u64;
    let limit = spec.count.unwrap_or(MAX_SEQUENCE).min(MAX_SEQUENCE);
    let end_ns = spec
        .duration
        .map(|d| go_ns.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)));
    let drain_ns = u64::try_from(spec.drain.as_nanos()).unwrap_or(u64::MAX);

    let mut out = Vec::with_capacity(BATCH_BYTES + template.bytes.len());
    let mut releases = Vec::new();
    let mut ids = PacketIds::new();
    let mut report = PublisherReport::default();
    let mut drain_until: Option<u64> = None;
    loop {
        let now = clock.now_ns();
        if drain_until.is_none() && (report.sent >= limit || end_ns.is_some_and(|end| now >= end)) {
            drain_until = Some(now.saturating_add(drain_ns));
        }
        let sending = drain_until.is_none();
        let mut allowance = if sending { limit - report.sent } else { 0 };
        if sending && spec.rate > 0 {
            // Message k is due k / rate seconds after the go signal.
            let elapsed = u128::from(now.saturating_sub(go_ns));
            let due = elapsed * u128::from(spec.rate) / 1_000_000_000 + 1;
            let due = u64::try_from(due).unwrap_or(u64::MAX);
            allowance = allowance.min(due.saturating_sub(report.sent));
        }
        let inflight = ids.len as u64;
        allowance = allowance
            .min(window.saturating_sub(inflight))
            .min(per_batch);

        if allowance > 0 || !releases.is_empty() {
            out.clear();
            out.append(&mut releases);
            let sent_ns = clock.now_ns();
            for _ in 0..allowance {
                let start = out.len();
                out.extend_from_slice(&template.bytes);
                let packet = &mut out[start..];
                if acknowledged {
                    let id = ids.take().to_be_bytes();
                    packet[template.packet_id_at..template.packet_id_at + 2].copy_from_slice(&id);
                }
                let stamp = Stamp {
                    publisher: spec.index,
                    // Below MAX_SEQUENCE, so it fits.
                    sequence: u32::try_from(report.sent).unwrap_or(u32::MAX),
                    sent_ns,
                };
                stamp.write(&mut packet[template.payload_at..]);
                report.sent += 1;
            }
            wire.stream
                .write_all(&out)
                .await
                .map_err(|e| format!("publisher {}: write failed: {e}", spec.index))?;
            if allowance > 0 {
                report.last_send_ns = clock.now_ns();
                progress.sent.fetch_add(allowance, Ordering::Relaxed);
            }
        }
        let mut handled = 0;
        if acknowledged {
            read_available(wire, spec.index)?;
            handled = handle_acks(wire, &mut ids, &mut releases, &mut report)?;
        }
        if !sending && ids.len == 0 && releases.is_empty() {
            break;
        }
        // Something moved: look again before waiting.
        if allowance > 0 || handled > 0 || !releases.is_empty() {
            continue;
        }
        // Nothing to send now: wait for an acknowledgement, the next rate tick, the end of
        // the sending time or of the drain time.
        let wake_ns = match drain_until {
            Some(until) => {
                if clock.now_ns() >= until {
                    report.unacked = ids.len as u64;
                    break;
                }
                Some(until)
            }
            None if spec.rate > 0 => {
                let next = u128::from(report.sent) * 1_000_000_000 / u128::from(spec.rate);
                let next = go_ns.saturating_add(u64::try_from(next).unwrap_or(u64::MAX));
                Some(end_ns.map_or(next, |end| next.min(end)))
            }
            None => end_ns,
        };
        tokio::select! {
            ready = wire.stream.readable(), if acknowledged => {
                ready.map_err(|e| format!("publisher {}: {e}", spec.index))?;
            }
            () = tokio::time::sleep_until(clock.at(wake_ns.unwrap_or(0)).into()), if wake_ns.is_some() => {}
            else => return Err(format!("publisher {}: nothing to wait for", spec.index)),
        }
    }
    Ok(report)
}

/// Moves whatever the socket holds into the inbox without waiting.
fn read_available(wire: &mut Wire, index: u32) -> Result<(), String> {
    loop {
        wire.inbox.reserve(16 * 1024);
        match wire.stream.try_read_buf(&mut wire.inbox) {
            Ok(0) => {
                return Err(format!(
                    "publisher {index}: the broker closed the connection"
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(format!("publisher {index}: read failed: {e}")),
        }
    }
}

/// Handles the acknowledgements buffered: frees identifiers, queues PUBRELs (QoS 2). Returns
/// how many packets it handled.
fn handle_acks(
    wire: &mut Wire,
    ids: &mut PacketIds,
    releases: &mut Vec<u8>,
    report: &mut PublisherReport,
) -> Result<usize, String> {
    let mut handled = 0;
    while let Some(packet) = wire.decode()? {
        handled += 1;
        match packet {
            Packet::PubAck(ack) => {
                if ids.release(ack.packet_id) {
                    report.acked += 1;
                    report.refused += u64::from(ack.reason.is_error());
                }
            }
            Packet::PubRec(rec) if rec.reason.is_error() => {
                // An error in PUBREC ends the exchange: no PUBREL.
                if ids.release(rec.packet_id) {
                    report.acked += 1;
                    report.refused += 1;
                }
            }
            Packet::PubRec(rec) => {
                Packet::PubRel(PubRel::success(rec.packet_id))
                    .encode(wire.version, releases)
                    .map_err(|e| format!("cannot encode PUBREL: {e}"))?;
            }
            Packet::PubComp(comp) => {
                if ids.release(comp.packet_id) {
                    report.acked += 1;
                }
            }
            Packet::PingResp => {}
            Packet::Disconnect(disconnect) => {
                return Err(format!("the broker disconnected: {:?}", disconnect.reason));
            }
            other => {
                return Err(format!(
                    "unexpected {:?} from the broker",
                    other.packet_type()
                ));
            }
        }
    }
    Ok(handled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use surgemq_core::codec::decode_buf;

    fn spec(qos: QoS) -> PublisherSpec {
        PublisherSpec {
            index: 3,
            topic: TopicName::parse("bench/3").unwrap(),
            qos,
            payload_len: 32,
            count: Some(1),
            duration: None,
            rate: 0,
            window: 8,
            drain: Duration::from_secs(1),
        }
    }

    #[test]
    fn patched_template_decodes_with_its_packet_id_and_stamp() {
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let template = Template::new(&spec(qos), version).unwrap();
                let mut bytes = template.bytes.clone();
                if qos != QoS::AtMostOnce {
                    bytes[template.packet_id_at..template.packet_id_at + 2]
                        .copy_from_slice(&0x1234u16.to_be_bytes());
                }
                let stamp = Stamp {
                    publisher: 3,
                    sequence: 99,
                    sent_ns: 5,
                };
                stamp.write(&mut bytes[template.payload_at..]);
                let mut buf = bytes::BytesMut::from(&bytes[..]);
                let Some(Packet::Publish(publish)) =
                    decode_buf(&mut buf, version, 1 << 20).unwrap()
                else {
                    panic!("not a PUBLISH");
                };
                assert_eq!(publish.payload.len(), 32);
                assert_eq!(Stamp::read(&publish.payload), Some(stamp));
                let expected_id = (qos != QoS::AtMostOnce).then(|| PacketId::new(0x1234).unwrap());
                assert_eq!(publish.packet_id, expected_id, "{version:?} {qos:?}");
            }
        }
    }

    #[test]
    fn packet_ids_skip_those_in_use_and_never_hand_out_zero() {
        let mut ids = PacketIds::new();
        ids.last = u16::MAX - 1;
        assert_eq!(ids.take(), u16::MAX);
        assert_eq!(ids.take(), 1);
        ids.last = u16::MAX - 1;
        assert_eq!(ids.take(), 2, "65535 and 1 are in use");
        assert!(ids.release(PacketId::new(1).unwrap()));
        assert!(!ids.release(PacketId::new(1).unwrap()));
        assert_eq!(ids.len, 2);
    }
}
