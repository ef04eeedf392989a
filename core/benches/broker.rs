//! Broker core benchmarks: the cost of routing one QoS 0 PUBLISH (64-byte payload, 3.1.1)
//! through [`Broker`] alone — decode, match, encode into each subscriber's batch, hand out the
//! `Transmit`s — to 1 and to 1,000 subscribers. No sockets, no clock, no adapter.
//!
//! - `broker_route_qos0_64B/route/{1,1000}`: one `Input::Received` of the PUBLISH, then
//!   `poll_output` until drained, then an `Input::Flushed` for every `Transmit` (so back-pressure
//!   never kicks in, as with a subscriber that reads as fast as we write). Throughput is in
//!   deliveries (criterion's `Throughput::Elements`); the summary adds messages per second.
//! - `broker_route_qos0_64B/encode_baseline/1000`: the named baseline, measured in the same run:
//!   encoding the same PUBLISH into 1,000 per-connection buffers (reused, as the broker's batches
//!   are), the least work a fan-out to 1,000 connections can do. The summary prints route time /
//!   baseline time.
//!
//! Allocations. A counting `#[global_allocator]` measures allocations and allocated bytes per
//! delivery, and checks that the payload is not copied per subscriber beyond the one copy made by
//! encoding into the connection's batch: with a 64 KiB payload, the bytes allocated per delivery
//! must stay under 1.5 times the encoded PUBLISH. (Measured: one allocation per received PUBLISH,
//! the shared message, and none per delivery once warm, because each connection's batch buffer
//! is reclaimed after its `Transmit` is dropped; an adapter that holds `Transmit`s longer pays
//! one buffer allocation per batch instead.) The counter is a global allocator
//! wrapping `System` (the one `unsafe impl` of the workspace, allowed in this bench only).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unexpected_cfgs
)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput};
use surgemq_core::broker::{AuthMode, Broker, BrokerConfig, ConnId, Input, Output};
use surgemq_core::codec::{
    Connect, Decoded, MAX_PACKET_SIZE, Packet, PacketId, Properties, ProtocolVersion, Publish, QoS,
    Subscribe, SubscriptionOptions, decode,
};
use surgemq_core::string::MqttString;
use surgemq_core::time::Instant;
use surgemq_core::topic::{TopicFilter, TopicName};

const TOPIC: &str = "sensors/building-1/floor-2/temperature";
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const GROUP: &str = "broker_route_qos0_64B";
const FANOUTS: [usize; 2] = [1, 1000];

// ---------------------------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------------------------

fn encode(packet: &Packet) -> Bytes {
    let mut out = BytesMut::new();
    packet.encode(V311, &mut out).unwrap();
    out.freeze()
}

fn publish_packet(payload_len: usize) -> Packet {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: TopicName::from_static(TOPIC).unwrap(),
        packet_id: None,
        properties: Properties::new(),
        payload: Bytes::from(payload),
    })
}

fn connect_bytes(client_id: &str) -> Bytes {
    encode(&Packet::Connect(Box::new(Connect {
        protocol: V311,
        clean_start: true,
        keep_alive: 0,
        properties: Properties::new(),
        client_id: MqttString::new(client_id).unwrap(),
        will: None,
        username: None,
        password: None,
    })))
}

/// One broker with one publisher and `subscribers` subscribers to [`TOPIC`] at QoS 0.
struct Fanout {
    broker: Broker,
    now: Instant,
    publisher: ConnId,
    /// The PUBLISH as the publisher sends it (cloning it is a reference count increment).
    publish: Bytes,
    /// `Flushed` reports to feed after draining (reused).
    pending: Vec<(ConnId, usize)>,
    subscribers: usize,
}

impl Fanout {
    fn new(subscribers: usize, payload_len: usize) -> Self {
        let config = BrokerConfig {
            auth: AuthMode::AllowAll,
            sys_interval: None,
            ..BrokerConfig::default()
        };
        let now = Instant::ZERO;
        let mut broker = Broker::new(config, now);
        let mut pending = Vec::new();
        let subscribe = encode(&Packet::Subscribe(Subscribe {
            packet_id: PacketId::MIN,
            properties: Properties::new(),
            filters: vec![(
                TopicFilter::from_static(TOPIC).unwrap(),
                SubscriptionOptions::qos(QoS::AtMostOnce),
            )],
        }));
        for i in 0..subscribers {
            let conn = broker.open_connection(now, None);
            let mut data = BytesMut::from(&connect_bytes(&format!("sub-{i}"))[..]);
            data.extend_from_slice(&subscribe);
            let data = data.freeze();
            broker
                .handle_input(now, Input::Received { conn, data })
                .unwrap();
            drain(&mut broker, now, &mut pending);
        }
        let publisher = broker.open_connection(now, None);
        let data = connect_bytes("publisher");
        broker
            .handle_input(
                now,
                Input::Received {
                    conn: publisher,
                    data,
                },
            )
            .unwrap();
        drain(&mut broker, now, &mut pending);
        assert_eq!(broker.subscription_count(), subscribers);
        let packet = publish_packet(payload_len);
        let mut fanout = Self {
            broker,
            now,
            publisher,
            publish: encode(&packet),
            pending,
            subscribers,
        };
        fanout.check_delivery(&packet);
        fanout
    }

    /// Routes one PUBLISH and checks that every subscriber got exactly it.
    fn check_delivery(&mut self, packet: &Packet) {
        let input = Input::Received {
            conn: self.publisher,
            data: self.publish.clone(),
        };
        self.broker.handle_input(self.now, input).unwrap();
        let mut transmits = 0;
        while let Some(output) = self.broker.poll_output() {
            if let Output::Transmit { conn, data } = output {
                match decode(&data, V311, MAX_PACKET_SIZE).unwrap() {
                    Decoded::Packet {
                        packet: got,
                        consumed,
                    } => {
                        assert_eq!(&got, packet);
                        assert_eq!(consumed, data.len(), "one packet per batch");
                    }
                    Decoded::NeedMore => panic!("partial packet"),
                }
                self.pending.push((conn, data.len()));
                transmits += 1;
            }
        }
        assert_eq!(transmits, self.subscribers);
        drain(&mut self.broker, self.now, &mut self.pending);
    }

    /// The measured operation: one PUBLISH in, every delivery out and flushed. Returns the
    /// number of deliveries.
    fn route_one(&mut self) -> usize {
        let input = Input::Received {
            conn: self.publisher,
            data: self.publish.clone(),
        };
        self.broker.handle_input(self.now, input).unwrap();
        drain(&mut self.broker, self.now, &mut self.pending)
    }
}

/// Drains the outputs, reporting every `Transmit` as flushed; returns how many there were.
fn drain(broker: &mut Broker, now: Instant, pending: &mut Vec<(ConnId, usize)>) -> usize {
    let mut transmits = 0;
    loop {
        while let Some(output) = broker.poll_output() {
            if let Output::Transmit { conn, data } = output {
                pending.push((conn, data.len()));
                transmits += 1;
            }
        }
        if pending.is_empty() {
            return transmits;
        }
        for (conn, bytes) in pending.drain(..) {
            broker
                .handle_input(now, Input::Flushed { conn, bytes })
                .unwrap();
        }
    }
}

/// The baseline: encode the PUBLISH once into each of the per-connection buffers (cleared, so
/// their memory is reused as the broker's batches are).
fn encode_baseline(packet: &Packet, buffers: &mut [BytesMut]) {
    for out in buffers {
        out.clear();
        packet.encode(V311, out).unwrap();
        black_box(&*out);
    }
}

fn bench_route(c: &mut Criterion) {
    let mut g = c.benchmark_group(GROUP);
    for n in FANOUTS {
        let mut fanout = Fanout::new(n, 64);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("route/{n}"), |b| {
            b.iter(|| black_box(fanout.route_one()));
        });
    }
    let packet = publish_packet(64);
    let mut buffers = vec![BytesMut::with_capacity(256); 1000];
    g.throughput(Throughput::Elements(1000));
    g.bench_function("encode_baseline/1000", |b| {
        b.iter(|| encode_baseline(black_box(&packet), &mut buffers));
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Allocations per delivery
// ---------------------------------------------------------------------------------------------

#[allow(unsafe_code)]
mod counting {
    //! A global allocator that counts allocations (reallocations included) and bytes requested.

    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

    static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
    static BYTES: AtomicU64 = AtomicU64::new(0);

    /// [`System`], counting.
    pub(crate) struct Counting;

    // SAFETY: every method forwards to `System` with the caller's arguments unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.fetch_add(1, Relaxed);
            BYTES.fetch_add(layout.size() as u64, Relaxed);
            // SAFETY: forwarded as received.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.fetch_add(1, Relaxed);
            BYTES.fetch_add(layout.size() as u64, Relaxed);
            // SAFETY: forwarded as received.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            ALLOCATIONS.fetch_add(1, Relaxed);
            BYTES.fetch_add(new_size.saturating_sub(layout.size()) as u64, Relaxed);
            // SAFETY: forwarded as received.
            unsafe { System.realloc(ptr, layout, new_size) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded as received.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// (allocations, bytes) so far.
    pub(crate) fn snapshot() -> (u64, u64) {
        (ALLOCATIONS.load(Relaxed), BYTES.load(Relaxed))
    }
}

/// Measures allocations per delivery for each fan-out and payload, prints them, and panics if
/// the payload is copied per subscriber beyond encoding.
fn report_allocations() {
    println!();
    println!("Allocations per delivery (warm broker; reallocations count as allocations)");
    println!(
        "{:<28} {:>10} {:>14} {:>16} {:>14}",
        "case", "packet B", "allocs/deliv", "alloc B/deliv", "B / packet B"
    );
    for (n, payload_len, rounds) in [(1, 64, 2_000), (1000, 64, 20), (100, 64 * 1024, 20)] {
        let mut fanout = Fanout::new(n, payload_len);
        let packet_len = fanout.publish.len();
        for _ in 0..rounds {
            fanout.route_one(); // warm up: buffers and maps reach their steady size
        }
        let (a0, b0) = counting::snapshot();
        let mut deliveries = 0;
        for _ in 0..rounds {
            deliveries += fanout.route_one();
        }
        let (a1, b1) = counting::snapshot();
        let allocs = (a1 - a0) as f64 / deliveries as f64;
        let bytes = (b1 - b0) as f64 / deliveries as f64;
        let ratio = bytes / packet_len as f64;
        println!(
            "{:<28} {packet_len:>10} {allocs:>14.2} {bytes:>16.1} {ratio:>14.2}",
            format!("{n} subscribers, {payload_len} B"),
        );
        if payload_len >= 16 * 1024 {
            assert!(
                ratio < 1.5,
                "the payload is copied per subscriber beyond encoding: {bytes:.0} B allocated \
                 per delivery of a {packet_len} B PUBLISH"
            );
        }
    }
    println!(
        "One fan-out allocates the shared message once; B / packet B far below 1.0 means no \
         payload copy per subscriber beyond encoding into its (reused) batch buffer."
    );
}

// ---------------------------------------------------------------------------------------------
// Summary: messages and deliveries per second, ratio to the baseline, from criterion's estimates
// ---------------------------------------------------------------------------------------------

/// Criterion's output directory: `$CARGO_TARGET_DIR/criterion`, else the `criterion` folder of
/// the nearest target directory above this executable.
fn criterion_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(dir).join("criterion"));
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .map(|dir| dir.join("criterion"))
        .find(|dir| dir.is_dir())
}

/// The typical time in ns (slope when criterion fitted one, else mean) of one benchmark, if it
/// was measured by this run.
fn estimate_ns(root: &Path, function: &str, since: SystemTime) -> Option<f64> {
    let file = root
        .join(GROUP)
        .join(function.replace('/', "_"))
        .join("new")
        .join("estimates.json");
    if std::fs::metadata(&file).ok()?.modified().ok()? < since {
        return None; // Left over from an earlier run (filtered out of this one).
    }
    let json = std::fs::read_to_string(file).ok()?;
    let key = match json.find("\"slope\":{") {
        Some(at) => at,
        None => json.find("\"mean\":{")?,
    };
    let rest = &json[key..];
    let value = &rest[rest.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = value.find([',', '}'])?;
    value[..end].trim().parse().ok()
}

fn print_summary(since: SystemTime) {
    let Some(root) = criterion_dir() else { return };
    let baseline = estimate_ns(&root, "encode_baseline/1000", since);
    println!();
    println!("Broker routing summary (QoS 0, 64 B payload, 3.1.1, every Transmit flushed)");
    println!(
        "{:<14} {:>12} {:>14} {:>16} {:>22}",
        "fan-out", "per PUBLISH", "messages/s", "deliveries/s", "vs encode baseline"
    );
    for n in FANOUTS {
        let Some(ns) = estimate_ns(&root, &format!("route/{n}"), since) else {
            continue;
        };
        let ratio = match (n, baseline) {
            (1000, Some(b)) => format!("{:.2}x the time", ns / b),
            _ => "-".into(),
        };
        println!(
            "{:<14} {:>9.2} µs {:>14.0} {:>16.0} {:>22}",
            format!("{n} subscribers"),
            ns / 1e3,
            1e9 / ns,
            n as f64 * 1e9 / ns,
            ratio
        );
    }
    if let Some(b) = baseline {
        println!(
            "encode baseline: 1000 encodes into reused buffers in {:.2} µs ({:.0} encodes/s)",
            b / 1e3,
            1000.0 * 1e9 / b
        );
    }
}

fn main() {
    let started = SystemTime::now();
    let mut criterion = Criterion::default().configure_from_args();
    bench_route(&mut criterion);
    criterion.final_summary();
    print_summary(started);
    report_allocations();
}
