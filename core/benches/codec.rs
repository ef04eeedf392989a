//! Codec benchmarks: decode and encode throughput of our codec, side by side with the
//! `mqttbytes` 0.6 baseline on the very same bytes, in the same run.
//!
//! - `publish_decode/{64B,1KiB,64KiB}/{surgemq,mqttbytes}` and `publish_encode/...`: a 3.1.1
//!   QoS 1 PUBLISH on `sensors/building-1/floor-2/temperature`.
//! - `publish_encode_zero_copy/...`: the broker's path, `Publish::encode_head` (everything but the
//!   payload) plus one shared reference to the payload, sent after it by a vectored write — the
//!   same bytes on the wire — against mqttbytes' contiguous encode.
//! - `connect_decode/v5_full/...` and `connect_encode/v5_full/...`: a 5.0 CONNECT with CONNECT
//!   properties, a Will with Will properties, user properties, user name and password.
//!
//! Fairness: both decoders start from a `BytesMut` holding exactly one packet (prepared outside
//! the timed region by `iter_batched`) and the decoded packet is dropped inside it; both encoders
//! write into one reused, cleared `BytesMut`. Throughput is in bytes (criterion's
//! `Throughput::Bytes`); the summary printed at the end adds packets per second and the ratio
//! mqttbytes time / surgemq time (above 1 means we are faster), read from the estimates criterion
//! saved in this run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use surgemq_core::codec::{
    Connect, MAX_PACKET_SIZE, Packet, PacketId, Properties, Property, ProtocolVersion, Publish,
    QoS, Will, decode, decode_buf,
};
use surgemq_core::string::MqttString;
use surgemq_core::topic::TopicName;

const TOPIC: &str = "sensors/building-1/floor-2/temperature";
const MQTTBYTES_MAX: usize = MAX_PACKET_SIZE as usize;

/// Payload sizes of the PUBLISH benchmarks, with their labels.
const PAYLOADS: &[(&str, usize)] = &[("64B", 64), ("1KiB", 1024), ("64KiB", 64 * 1024)];

/// Packets per receive buffer in the `publish_decode_stream` benchmarks, which decode a buffer
/// of back-to-back packets the way a broker drains one socket read.
const STREAM_PACKETS: usize = 32;

/// Payload sizes of the stream benchmarks.
const STREAM_PAYLOADS: &[(&str, usize)] = &[("64B", 64), ("1KiB", 1024)];

/// How many prepared input buffers `iter_batched` times in one go: enough to hide the timer's
/// own cost on a ~50 ns decode, few enough that the 64 KiB inputs stay small in memory.
fn batch_for(packet_len: usize) -> BatchSize {
    BatchSize::NumIterations(if packet_len > 16 * 1024 { 16 } else { 256 })
}

/// The 3.1.1 PUBLISH under test, encoded by our codec.
fn publish_bytes(payload_len: usize) -> Bytes {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicName::from_static(TOPIC).unwrap(),
        packet_id: PacketId::new(42),
        properties: Properties::new(),
        payload: Bytes::from(payload),
    });
    let mut out = BytesMut::new();
    packet.encode(ProtocolVersion::V3_1_1, &mut out).unwrap();
    out.freeze()
}

fn s(value: &'static str) -> MqttString {
    MqttString::from_static(value).unwrap()
}

/// A 5.0 CONNECT using most of what CONNECT can carry.
fn connect_v5_bytes() -> Bytes {
    let will_properties = Properties::from_vec(vec![
        Property::WillDelayInterval(10),
        Property::PayloadFormatIndicator(1),
        Property::MessageExpiryInterval(3600),
        Property::ContentType(s("application/json")),
        Property::ResponseTopic(TopicName::from_static("replies/bench-client-0001").unwrap()),
        Property::CorrelationData(Bytes::from_static(b"correlation-0001")),
        Property::UserProperty(s("reason"), s("connection-lost")),
    ]);
    let packet = Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 30,
        properties: Properties::from_vec(vec![
            Property::SessionExpiryInterval(3600),
            Property::ReceiveMaximum(100),
            Property::MaximumPacketSize(1 << 20),
            Property::TopicAliasMaximum(16),
            Property::RequestResponseInformation(1),
            Property::RequestProblemInformation(1),
            Property::UserProperty(s("region"), s("eu-west-1")),
            Property::UserProperty(s("firmware"), s("4.2.1")),
        ]),
        client_id: s("bench-client-0001"),
        will: Some(Will {
            topic: TopicName::from_static("clients/bench-client-0001/status").unwrap(),
            payload: Bytes::from_static(br#"{"online":false}"#),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: will_properties,
        }),
        username: Some(s("bench-user")),
        password: Some(Bytes::from_static(b"bench-password")),
    }));
    let mut out = BytesMut::new();
    packet.encode(ProtocolVersion::V5, &mut out).unwrap();
    out.freeze()
}

/// One prepared receive buffer holding exactly `wire`.
fn buffer_with(wire: &[u8]) -> BytesMut {
    let mut buf = BytesMut::with_capacity(wire.len());
    buf.extend_from_slice(wire);
    buf
}

fn ours_decoded(wire: &Bytes, version: ProtocolVersion) -> Packet {
    match decode(wire, version, MAX_PACKET_SIZE).unwrap() {
        surgemq_core::codec::Decoded::Packet { packet, consumed } => {
            assert_eq!(consumed, wire.len());
            packet
        }
        surgemq_core::codec::Decoded::NeedMore => panic!("bench packet is incomplete"),
    }
}

fn group<'a>(c: &'a mut Criterion, name: &str, wire_len: usize) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(wire_len as u64));
    group
}

fn bench_publish(c: &mut Criterion) {
    let version = ProtocolVersion::V3_1_1;
    for &(label, payload_len) in PAYLOADS {
        let wire = publish_bytes(payload_len);
        let batch = batch_for(wire.len());

        // Both decoders must read the bench bytes as the same message.
        let ours = ours_decoded(&wire, version);
        let Packet::Publish(ours_publish) = &ours else {
            panic!("not a PUBLISH")
        };
        let theirs = match mqttbytes::v4::read(&mut buffer_with(&wire), MQTTBYTES_MAX).unwrap() {
            mqttbytes::v4::Packet::Publish(p) => p,
            other => panic!("mqttbytes read {other:?}"),
        };
        assert_eq!(theirs.topic, ours_publish.topic.as_str());
        assert_eq!(theirs.pkid, 42);
        assert_eq!(theirs.payload, ours_publish.payload);

        let mut g = group(c, &format!("publish_decode/{label}"), wire.len());
        g.bench_function("surgemq", |b| {
            b.iter_batched(
                || buffer_with(&wire),
                |mut buf| {
                    black_box(decode_buf(&mut buf, version, MAX_PACKET_SIZE).unwrap());
                    buf
                },
                batch,
            );
        });
        g.bench_function("mqttbytes", |b| {
            b.iter_batched(
                || buffer_with(&wire),
                |mut buf| {
                    black_box(mqttbytes::v4::read(&mut buf, MQTTBYTES_MAX).unwrap());
                    buf
                },
                batch,
            );
        });
        g.finish();

        // Both encoders must write exactly the bench bytes.
        let mut out = BytesMut::with_capacity(wire.len());
        ours.encode(version, &mut out).unwrap();
        assert_eq!(out, wire);
        out.clear();
        theirs.write(&mut out).unwrap();
        assert_eq!(out, wire);

        let mut g = group(c, &format!("publish_encode/{label}"), wire.len());
        g.bench_function("surgemq", |b| {
            let mut out = BytesMut::with_capacity(wire.len());
            b.iter(|| {
                out.clear();
                black_box(&ours).encode(version, &mut out).unwrap();
                black_box(&out);
            });
        });
        g.bench_function("mqttbytes", |b| {
            let mut out = BytesMut::with_capacity(wire.len());
            b.iter(|| {
                out.clear();
                black_box(&theirs).write(&mut out).unwrap();
                black_box(&out);
            });
        });
        g.finish();

        // The broker's path: everything but the payload is written; the payload is shared
        // (one reference count) and sent after it by a vectored write. Same bytes on the wire.
        let mut head = BytesMut::new();
        ours_publish.encode_head(version, &mut head).unwrap();
        assert_eq!([&head[..], &ours_publish.payload[..]].concat(), wire);
        let mut g = group(c, &format!("publish_encode_zero_copy/{label}"), wire.len());
        g.bench_function("surgemq", |b| {
            let mut out = BytesMut::with_capacity(wire.len());
            b.iter(|| {
                out.clear();
                black_box(ours_publish)
                    .encode_head(version, &mut out)
                    .unwrap();
                black_box((&out, ours_publish.payload.clone()));
            });
        });
        g.bench_function("mqttbytes", |b| {
            let mut out = BytesMut::with_capacity(wire.len());
            b.iter(|| {
                out.clear();
                black_box(&theirs).write(&mut out).unwrap();
                black_box(&out);
            });
        });
        g.finish();
    }
}

/// Decoding many packets from one buffer: the per-buffer costs (allocating it, making it
/// shared on the first split) are paid once per 32 packets, as in a broker's receive loop.
fn bench_publish_stream(c: &mut Criterion) {
    let version = ProtocolVersion::V3_1_1;
    for &(label, payload_len) in STREAM_PAYLOADS {
        let packet = publish_bytes(payload_len);
        let wire: Vec<u8> = packet
            .iter()
            .copied()
            .cycle()
            .take(packet.len() * STREAM_PACKETS)
            .collect();
        let batch = batch_for(wire.len());
        let name = format!("publish_decode_stream/{label}x{STREAM_PACKETS}");
        let mut g = group(c, &name, wire.len());
        g.bench_function("surgemq", |b| {
            b.iter_batched(
                || buffer_with(&wire),
                |mut buf| {
                    for _ in 0..STREAM_PACKETS {
                        black_box(
                            decode_buf(&mut buf, version, MAX_PACKET_SIZE)
                                .unwrap()
                                .unwrap(),
                        );
                    }
                    buf
                },
                batch,
            );
        });
        g.bench_function("mqttbytes", |b| {
            b.iter_batched(
                || buffer_with(&wire),
                |mut buf| {
                    for _ in 0..STREAM_PACKETS {
                        black_box(mqttbytes::v4::read(&mut buf, MQTTBYTES_MAX).unwrap());
                    }
                    buf
                },
                batch,
            );
        });
        g.finish();
    }
}

fn bench_connect(c: &mut Criterion) {
    let version = ProtocolVersion::V5;
    let wire = connect_v5_bytes();
    let batch = batch_for(wire.len());
    let ours = ours_decoded(&wire, version);
    // mqttbytes 0.6 reads the same 5.0 CONNECT (it keeps properties in fixed fields, so it
    // writes them back in its own order: same length, not necessarily the same bytes).
    let theirs = match mqttbytes::v5::read(&mut buffer_with(&wire), MQTTBYTES_MAX).unwrap() {
        mqttbytes::v5::Packet::Connect(c) => c,
        other => panic!("mqttbytes read {other:?}"),
    };
    assert_eq!(theirs.client_id, "bench-client-0001");
    assert_eq!(theirs.properties.as_ref().unwrap().user_properties.len(), 2);
    let mut out = BytesMut::new();
    theirs.write(&mut out).unwrap();
    assert_eq!(
        out.len(),
        wire.len(),
        "mqttbytes re-encodes to a different size"
    );

    let mut g = group(c, "connect_decode/v5_full", wire.len());
    g.bench_function("surgemq", |b| {
        b.iter_batched(
            || buffer_with(&wire),
            |mut buf| {
                black_box(decode_buf(&mut buf, version, MAX_PACKET_SIZE).unwrap());
                buf
            },
            batch,
        );
    });
    g.bench_function("mqttbytes", |b| {
        b.iter_batched(
            || buffer_with(&wire),
            |mut buf| {
                black_box(mqttbytes::v5::read(&mut buf, MQTTBYTES_MAX).unwrap());
                buf
            },
            batch,
        );
    });
    g.finish();

    let mut g = group(c, "connect_encode/v5_full", wire.len());
    g.bench_function("surgemq", |b| {
        let mut out = BytesMut::with_capacity(wire.len());
        b.iter(|| {
            out.clear();
            black_box(&ours).encode(version, &mut out).unwrap();
            black_box(&out);
        });
    });
    g.bench_function("mqttbytes", |b| {
        let mut out = BytesMut::with_capacity(wire.len());
        b.iter(|| {
            out.clear();
            black_box(&theirs).write(&mut out).unwrap();
            black_box(&out);
        });
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Summary: ratios against the baseline, read back from the estimates criterion just saved.
// ---------------------------------------------------------------------------------------------

/// Criterion's output directory, found the way criterion finds it: `$CRITERION_HOME`, else
/// `$CARGO_TARGET_DIR/criterion`; under cargo, the `criterion` folder of the target directory
/// this executable lives in (`target/release/deps/codec-*`); run by hand, `target/criterion`.
fn criterion_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("CRITERION_HOME") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(dir).join("criterion"));
    }
    if std::env::var_os("CARGO").is_none() {
        return Some(PathBuf::from("target/criterion"));
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .map(|dir| dir.join("criterion"))
        .find(|dir| dir.is_dir())
}

/// The typical time in ns (slope when criterion fitted one, else mean) of one benchmark, if it
/// was measured by this run.
fn estimate_ns(root: &Path, group: &str, function: &str, since: SystemTime) -> Option<f64> {
    let file = root
        .join(group.replace('/', "_"))
        .join(function)
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

fn human_time(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

fn print_summary(since: SystemTime) {
    let Some(root) = criterion_dir() else { return };
    // (group, packet length, packets per iteration)
    let mut groups: Vec<(String, usize, usize)> = Vec::new();
    for &(label, payload_len) in PAYLOADS {
        let len = publish_bytes(payload_len).len();
        groups.push((format!("publish_decode/{label}"), len, 1));
        groups.push((format!("publish_encode/{label}"), len, 1));
        groups.push((format!("publish_encode_zero_copy/{label}"), len, 1));
    }
    for &(label, payload_len) in STREAM_PAYLOADS {
        let len = publish_bytes(payload_len).len();
        let name = format!("publish_decode_stream/{label}x{STREAM_PACKETS}");
        groups.push((name, len, STREAM_PACKETS));
    }
    let connect_len = connect_v5_bytes().len();
    groups.push(("connect_decode/v5_full".into(), connect_len, 1));
    groups.push(("connect_encode/v5_full".into(), connect_len, 1));

    let mut lines = Vec::new();
    for (group, len, packets) in &groups {
        // Per packet, so the stream rows read like the others.
        let per_packet = |ns: f64| ns / *packets as f64;
        let ours = estimate_ns(&root, group, "surgemq", since).map(per_packet);
        let theirs = estimate_ns(&root, group, "mqttbytes", since).map(per_packet);
        let Some(ours) = ours else { continue };
        let mib_s = *len as f64 / ours * 1e9 / (1024.0 * 1024.0);
        let (theirs_text, ratio) = match theirs {
            Some(t) => (human_time(t), format!("{:.2}x", t / ours)),
            None => ("-".into(), "-".into()),
        };
        lines.push(format!(
            "{group:<31} {len:>7} B  {:>10} {:>12.2} Mpkt/s {:>10.0} MiB/s   {:>10} {:>8}",
            human_time(ours),
            1e3 / ours,
            mib_s,
            theirs_text,
            ratio,
        ));
    }
    if lines.is_empty() {
        return;
    }
    println!();
    println!("Codec summary (surgemq vs mqttbytes 0.6, same bytes, same run)");
    println!(
        "{:<31} {:>9}  {:>10} {:>19} {:>16}   {:>10} {:>8}",
        "benchmark", "packet", "surgemq", "surgemq", "surgemq", "mqttbytes", "speedup"
    );
    for line in lines {
        println!("{line}");
    }
    println!("Times are per packet. speedup = mqttbytes time / surgemq time (target >= 1.50x).");
}

fn main() {
    let started = SystemTime::now();
    let mut criterion = Criterion::default().configure_from_args();
    bench_publish(&mut criterion);
    bench_publish_stream(&mut criterion);
    bench_connect(&mut criterion);
    criterion.final_summary();
    print_summary(started);
}
