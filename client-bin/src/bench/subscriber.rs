//! One bench subscriber: a single task that reads its connection in large chunks, decodes with
//! `decode_buf`, acknowledges QoS 1/2 deliveries (one write per chunk), and records latency and
//! per-publisher sequence numbers ([`SequenceTracker`]) for losses, duplicates and order.
//!
//! Never: keep per-message state beyond one bit per sequence number.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;
use surgemq_core::codec::{Packet, PubAck, PubRel, QoS};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::watch;

use super::clock::Clock;
use super::payload::Stamp;
use super::publisher::{MAX_SEQUENCE, Progress};
use super::wire::Wire;

/// Width of one time slot of the latency timeline.
pub const SLOT_NS: u64 = 100_000_000;

/// Time slots kept at most (one hour of 100 ms slots).
const MAX_SLOTS: usize = 36_000;

/// Largest latency the histogram tells apart: 60 s.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).unwrap_or_else(|_| unreachable!())
}

/// Which sequence numbers of one publisher arrived, and how.
#[derive(Debug, Clone, Default)]
pub struct SequenceTracker {
    seen: Vec<u64>,
    highest: Option<u32>,
    /// Messages received, repeats included.
    pub received: u64,
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// Distinct messages that arrived after a higher sequence number.
    pub out_of_order: u64,
}

impl SequenceTracker {
    /// Records `sequence`; true if it is the first time.
    pub fn record(&mut self, sequence: u32) -> bool {
        self.received += 1;
        let word = (sequence / 64) as usize;
        let bit = 1u64 << (sequence % 64);
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        let slot = &mut self.seen[word];
        if *slot & bit != 0 {
            return false;
        }
        *slot |= bit;
        self.unique += 1;
        match self.highest {
            Some(highest) if sequence < highest => self.out_of_order += 1,
            _ => self.highest = Some(sequence),
        }
        true
    }

    /// Messages received more than once (counting each extra copy).
    pub fn duplicates(&self) -> u64 {
        self.received - self.unique
    }
}

/// Latency of the messages received in one time slot.
#[derive(Debug, Clone, Copy, Default)]
pub struct Slot {
    /// Messages.
    pub count: u64,
    /// Sum of their latencies.
    pub sum_ns: u64,
    /// The largest latency.
    pub max_ns: u64,
}

/// What one subscriber saw.
#[derive(Debug, Clone)]
pub struct SubscriberReport {
    /// Latency of every bench message received.
    pub latency: Histogram<u64>,
    /// Per publisher index: its sequence tracker (`None` for publishers not subscribed to).
    pub sources: Vec<Option<SequenceTracker>>,
    /// Messages that were not from this run's expected publishers (e.g. another client's).
    pub foreign: u64,
    /// When the last message arrived, in clock nanoseconds (0: none did).
    pub last_receive_ns: u64,
    /// Latency per [`SLOT_NS`] slot since the go signal.
    pub timeline: Vec<Slot>,
}

/// What one subscriber does.
#[derive(Debug, Clone)]
pub struct SubscriberSpec {
    /// Number of publishers in the run.
    pub publishers: u32,
    /// The publishers it expects messages from.
    pub sources: Vec<u32>,
}

/// Receives until `stop` turns true, then sends DISCONNECT.
pub async fn run(
    mut wire: Wire,
    spec: SubscriberSpec,
    clock: Clock,
    go_ns: u64,
    mut stop: watch::Receiver<bool>,
    progress: Arc<Progress>,
) -> Result<SubscriberReport, String> {
    let mut sources = vec![None; spec.publishers as usize];
    for &p in &spec.sources {
        if let Some(slot) = sources.get_mut(p as usize) {
            *slot = Some(SequenceTracker::default());
        }
    }
    let mut report = SubscriberReport {
        latency: new_histogram(),
        sources,
        foreign: 0,
        last_receive_ns: 0,
        timeline: Vec::new(),
    };
    let mut acks = Vec::new();
    loop {
        tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
                continue;
            }
            read = wire.read() => { read?; }
        }
        let now = clock.now_ns();
        let mut fresh = 0;
        while let Some(packet) = wire.decode()? {
            match packet {
                Packet::Publish(publish) => {
                    match (publish.qos, publish.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => Packet::PubAck(PubAck::success(id))
                            .encode(wire.version, &mut acks)
                            .map(drop),
                        (QoS::ExactlyOnce, Some(id)) => Packet::PubRec(PubAck::success(id))
                            .encode(wire.version, &mut acks)
                            .map(drop),
                        _ => Ok(()),
                    }
                    .map_err(|e| format!("cannot encode an acknowledgement: {e}"))?;
                    fresh += u64::from(record(&mut report, &publish.payload, now, go_ns));
                }
                Packet::PubRel(release) => {
                    Packet::PubComp(PubRel::success(release.packet_id))
                        .encode(wire.version, &mut acks)
                        .map_err(|e| format!("cannot encode PUBCOMP: {e}"))?;
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
        if !acks.is_empty() {
            wire.stream
                .write_all(&acks)
                .await
                .map_err(|e| format!("write failed: {e}"))?;
            acks.clear();
        }
        if fresh > 0 {
            progress.delivered.fetch_add(fresh, Ordering::Relaxed);
        }
    }
    wire.disconnect().await;
    Ok(report)
}

/// Records one received payload at `now`; true if it is a new bench message.
fn record(report: &mut SubscriberReport, payload: &[u8], now: u64, go_ns: u64) -> bool {
    let Some(stamp) = Stamp::read(payload) else {
        report.foreign += 1;
        return false;
    };
    let tracker = report
        .sources
        .get_mut(stamp.publisher as usize)
        .and_then(Option::as_mut);
    let Some(tracker) = tracker.filter(|_| u64::from(stamp.sequence) < MAX_SEQUENCE) else {
        report.foreign += 1;
        return false;
    };
    let fresh = tracker.record(stamp.sequence);
    let latency = now.saturating_sub(stamp.sent_ns).max(1);
    report.latency.saturating_record(latency);
    report.last_receive_ns = now;
    let slot = (now.saturating_sub(go_ns) / SLOT_NS) as usize;
    if slot < MAX_SLOTS {
        if slot >= report.timeline.len() {
            report.timeline.resize(slot + 1, Slot::default());
        }
        let entry = &mut report.timeline[slot];
        entry.count += 1;
        entry.sum_ns = entry.sum_ns.saturating_add(latency);
        entry.max_ns = entry.max_ns.max(latency);
    }
    fresh
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_counts_repeats_and_late_arrivals_apart() {
        let mut tracker = SequenceTracker::default();
        for sequence in [0, 1, 3, 2, 3, 200, 5] {
            tracker.record(sequence);
        }
        assert_eq!(tracker.received, 7);
        assert_eq!(tracker.unique, 6);
        assert_eq!(tracker.duplicates(), 1);
        // 2 after 3, and 5 after 200.
        assert_eq!(tracker.out_of_order, 2);
    }

    #[test]
    fn foreign_payloads_are_not_counted_as_bench_messages() {
        let mut report = SubscriberReport {
            latency: new_histogram(),
            sources: vec![Some(SequenceTracker::default()), None],
            foreign: 0,
            last_receive_ns: 0,
            timeline: Vec::new(),
        };
        let mut payload = [0u8; 16];
        assert!(!record(&mut report, b"short", 10, 0));
        Stamp {
            publisher: 1,
            sequence: 0,
            sent_ns: 0,
        }
        .write(&mut payload);
        assert!(
            !record(&mut report, &payload, 10, 0),
            "publisher 1 is not a source"
        );
        Stamp {
            publisher: 0,
            sequence: 0,
            sent_ns: 4,
        }
        .write(&mut payload);
        assert!(record(&mut report, &payload, 10, 0));
        assert_eq!(report.foreign, 2);
        assert_eq!(report.latency.len(), 1);
        assert_eq!(report.latency.max(), 6);
    }
}
