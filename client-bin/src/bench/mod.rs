//! `bench`: N publishers and M subscribers against a broker, on a multi-threaded tokio runtime.
//!
//! A run: connect every subscriber and wait for its SUBACK; connect every publisher; sample the
//! broker's CPU time; give the go signal; publishers send (pre-encoded batches, bounded
//! in-flight window at QoS 1/2, optional rate); a monitor prints progress and watches for
//! stalls; once every publisher is done, wait at most `--drain` for the expected deliveries;
//! sample CPU again; stop the subscribers; merge their histograms and sequence trackers into a
//! [`Summary`].
//!
//! Every wait is bounded: handshakes (10 s each), the drain time, and a stall watchdog that
//! ends the run when nothing moves for [`STALL_TIMEOUT`].
//!
//! Never: route messages through a per-message channel, or publish before every subscription
//! is acknowledged.

pub mod clock;
pub mod cpu;
pub mod payload;
pub mod plan;
pub mod plot;
pub mod publisher;
pub mod report;
pub mod subscriber;
pub mod wire;

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use surgemq_core::codec::{ProtocolVersion, QoS, SubscriptionOptions};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use self::clock::Clock;
use self::plan::Plan;
use self::publisher::{Progress, PublisherReport, PublisherSpec};
use self::report::{Latency, Summary};
use self::subscriber::{Slot, SubscriberReport, SubscriberSpec};
use self::wire::{Identity, Wire};
use crate::app::Failure;
use crate::cli::{BenchArgs, Version};
use crate::options;

/// A run ends with an error when neither sends nor deliveries move for this long.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Messages per publisher when neither `--count` nor `--duration` is given.
pub const DEFAULT_COUNT: u64 = 100_000;

/// Connections being set up at once at most.
const CONNECT_CONCURRENCY: usize = 128;

/// How often the monitor looks at the counters.
const TICK: Duration = Duration::from_millis(100);

/// Runs `bench` and prints its report.
pub fn run(args: BenchArgs) -> Result<(), Failure> {
    if args.duration.is_some_and(|d| !(d > 0.0 && d < 86_400.0)) {
        return Err(Failure::failed(
            "--duration must be between 0 and 86400 seconds",
        ));
    }
    if !(args.drain >= 0.0 && args.drain <= 3_600.0) {
        return Err(Failure::failed(
            "--drain must be between 0 and 3600 seconds",
        ));
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, std::num::NonZero::get));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| Failure::failed(format!("cannot start the tokio runtime: {e}")))?;
    let outcome = runtime.block_on(execute(&args))?;
    let summary = &outcome.summary;
    let text = summary.text();
    if args.json || args.csv {
        eprint!("{text}");
        let mut stdout = std::io::stdout().lock();
        let machine = if args.json {
            format!("{}\n", summary.json())
        } else {
            summary.csv()
        };
        let _ = stdout.write_all(machine.as_bytes());
        let _ = stdout.flush();
    } else {
        print!("{text}");
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "{}{} -> {} QoS {} {} B: latency over time",
            if summary.label.is_empty() {
                String::new()
            } else {
                format!("{}: ", summary.label)
            },
            summary.publishers,
            summary.subscribers,
            summary.qos,
            summary.payload_bytes
        );
        plot::write_svg(path, &outcome.timeline, &title).map_err(Failure::failed)?;
        eprintln!("latency plot written to {}", path.display());
    }
    if summary.qos > 0 && (summary.lost > 0 || summary.unacked > 0) {
        return Err(Failure::failed(format!(
            "QoS {}: {} message(s) lost and {} unacknowledged",
            summary.qos, summary.lost, summary.unacked
        )));
    }
    Ok(())
}

/// A finished run: its summary, and the merged latency timeline for the plot.
struct Outcome {
    summary: Summary,
    timeline: Vec<Slot>,
}

/// The progress line on stderr: rewritten in place on a terminal, one line per second otherwise.
struct ProgressLine {
    enabled: bool,
    terminal: bool,
    last_print: Instant,
    last_sent: u64,
    last_delivered: u64,
    written: bool,
}

impl ProgressLine {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            terminal: std::io::stderr().is_terminal(),
            last_print: Instant::now(),
            last_sent: 0,
            last_delivered: 0,
            written: false,
        }
    }

    fn update(&mut self, elapsed: Duration, sent: u64, delivered: u64, phase: &str) {
        let since = self.last_print.elapsed();
        if !self.enabled || since < Duration::from_secs(1) {
            return;
        }
        let seconds = since.as_secs_f64();
        let line = format!(
            "[{:>7.1}s] {phase:<9} sent {sent:>11} ({:>9.0}/s)  delivered {delivered:>11} ({:>9.0}/s)",
            elapsed.as_secs_f64(),
            (sent - self.last_sent) as f64 / seconds,
            delivered.saturating_sub(self.last_delivered) as f64 / seconds,
        );
        let mut stderr = std::io::stderr().lock();
        let _ = if self.terminal {
            write!(stderr, "\r{line}")
        } else {
            writeln!(stderr, "{line}")
        };
        let _ = stderr.flush();
        self.written = true;
        self.last_print = Instant::now();
        self.last_sent = sent;
        self.last_delivered = delivered;
    }

    fn finish(&mut self) {
        if self.enabled && self.terminal && self.written {
            eprintln!();
        }
    }
}

/// Connects `count` connections, at most [`CONNECT_CONCURRENCY`] at a time, each set up by
/// `setup(index)`; returns them in index order.
async fn connect_all<F, Fut>(count: u32, setup: F) -> Result<Vec<Wire>, Failure>
where
    F: Fn(u32) -> Fut,
    Fut: Future<Output = Result<Wire, String>> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut handles = Vec::with_capacity(count as usize);
    for index in 0..count {
        let limit = Arc::clone(&limit);
        let work = setup(index);
        handles.push(tokio::spawn(async move {
            let _permit = limit.acquire_owned().await;
            work.await
        }));
    }
    let mut wires = Vec::with_capacity(count as usize);
    for handle in handles {
        let wire = handle
            .await
            .map_err(|e| Failure::failed(format!("connection task failed: {e}")))?
            .map_err(Failure::failed)?;
        wires.push(wire);
    }
    Ok(wires)
}

fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::V31 => "mqttv31",
        Version::V311 => "mqttv311",
        Version::V5 => "mqttv5",
    }
}

async fn execute(args: &BenchArgs) -> Result<Outcome, Failure> {
    let plan = Plan::new(
        args.layout,
        &args.topic_prefix,
        args.publishers,
        args.subscribers,
    )
    .map_err(Failure::failed)?;
    let identity = Arc::new(Identity {
        address: options::address(&args.host, args.port),
        version: ProtocolVersion::from(args.version),
        username: args.username.clone(),
        password: args.password.clone(),
        persistent: args.persistent,
    });
    let clock = Clock::start();
    let run_id = format!("surgemq-bench-{}", std::process::id());
    let qos = args.qos;

    let subscribers = connect_all(args.subscribers, |j| {
        let identity = Arc::clone(&identity);
        let filters = plan.filters[j as usize]
            .iter()
            .map(|filter| (filter.clone(), SubscriptionOptions::qos(qos)))
            .collect::<Vec<_>>();
        let id = format!("{run_id}-s{j}");
        async move {
            let mut wire = Wire::connect(&identity, &id).await?;
            wire.subscribe(filters)
                .await
                .map_err(|e| format!("{id}: {e}"))?;
            Ok(wire)
        }
    })
    .await?;
    let publishers = connect_all(args.publishers, |i| {
        let identity = Arc::clone(&identity);
        let id = format!("{run_id}-p{i}");
        async move { Wire::connect(&identity, &id).await }
    })
    .await?;

    let progress = Arc::new(Progress::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let cpu_before = cpu_sample(args.broker_pid)?;
    let started = Instant::now();
    let go_ns = clock.now_ns();

    let subscriber_tasks: Vec<JoinHandle<Result<SubscriberReport, String>>> = subscribers
        .into_iter()
        .zip(&plan.sources)
        .map(|(wire, sources)| {
            let spec = SubscriberSpec {
                publishers: args.publishers,
                sources: sources.clone(),
            };
            tokio::spawn(subscriber::run(
                wire,
                spec,
                clock,
                go_ns,
                stop_rx.clone(),
                Arc::clone(&progress),
            ))
        })
        .collect();
    let count = match (args.count, args.duration) {
        (Some(count), _) => Some(count),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_COUNT),
    };
    let drain = Duration::from_secs_f64(args.drain);
    let publisher_tasks: Vec<JoinHandle<Result<PublisherReport, String>>> = publishers
        .into_iter()
        .zip(&plan.topics)
        .enumerate()
        .map(|(i, (wire, topic))| {
            let spec = PublisherSpec {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                topic: topic.clone(),
                qos,
                payload_len: args.payload as usize,
                count,
                duration: args.duration.map(Duration::from_secs_f64),
                rate: args.rate,
                window: args.inflight,
                drain,
            };
            tokio::spawn(publisher::run(
                wire,
                spec,
                clock,
                go_ns,
                Arc::clone(&progress),
            ))
        })
        .collect();

    // Monitor: progress line, stall watchdog, subscribers that die early.
    let mut line = ProgressLine::new(!args.quiet);
    let mut ticker = tokio::time::interval(TICK);
    let mut last_moved = Instant::now();
    let mut last_totals = (0, 0);
    let watch_stall =
        |totals: (u64, u64), last_totals: &mut (u64, u64), last_moved: &mut Instant| {
            if totals != *last_totals {
                *last_totals = totals;
                *last_moved = Instant::now();
            }
            last_moved.elapsed() >= STALL_TIMEOUT
        };
    loop {
        ticker.tick().await;
        let sent = progress.sent.load(Ordering::Relaxed);
        let delivered = progress.delivered.load(Ordering::Relaxed);
        line.update(started.elapsed(), sent, delivered, "publish");
        if progress.publishers_done.load(Ordering::Relaxed) == u64::from(args.publishers) {
            break;
        }
        if subscriber_tasks.iter().any(JoinHandle::is_finished) {
            break;
        }
        if watch_stall((sent, delivered), &mut last_totals, &mut last_moved) {
            line.finish();
            abort_all(&publisher_tasks, &subscriber_tasks);
            return Err(Failure::failed(format!(
                "stalled: nothing sent or delivered for {STALL_TIMEOUT:?}"
            )));
        }
    }
    let mut publisher_reports = Vec::with_capacity(publisher_tasks.len());
    for task in publisher_tasks {
        let report = task
            .await
            .map_err(|e| Failure::failed(format!("publisher task failed: {e}")))
            .and_then(|r| r.map_err(Failure::failed));
        match report {
            Ok(report) => publisher_reports.push(report),
            Err(failure) => {
                line.finish();
                let _ = stop_tx.send(true);
                return Err(failure);
            }
        }
    }
    let sent: Vec<u64> = publisher_reports.iter().map(|r| r.sent).collect();
    let expected = plan.expected(&sent);

    // Drain: wait at most `drain` for what is still on its way.
    let drain_until = Instant::now() + drain;
    loop {
        let delivered = progress.delivered.load(Ordering::Relaxed);
        line.update(
            started.elapsed(),
            progress.sent.load(Ordering::Relaxed),
            delivered,
            "drain",
        );
        if delivered >= expected
            || Instant::now() >= drain_until
            || subscriber_tasks.iter().any(JoinHandle::is_finished)
        {
            break;
        }
        ticker.tick().await;
    }
    let cpu_after = cpu_sample(args.broker_pid)?;
    line.finish();
    let _ = stop_tx.send(true);
    let mut subscriber_reports = Vec::with_capacity(subscriber_tasks.len());
    for task in subscriber_tasks {
        let report = tokio::time::timeout(wire::HANDSHAKE_TIMEOUT, task)
            .await
            .map_err(|_| Failure::failed("a subscriber did not stop"))?
            .map_err(|e| Failure::failed(format!("subscriber task failed: {e}")))?
            .map_err(Failure::failed)?;
        subscriber_reports.push(report);
    }
    if args.persistent {
        // Leave nothing behind: a clean-session CONNECT discards each stored session.
        let clean = Identity {
            persistent: false,
            ..(*identity).clone()
        };
        let ids = (0..args.subscribers)
            .map(|j| format!("{run_id}-s{j}"))
            .chain((0..args.publishers).map(|i| format!("{run_id}-p{i}")));
        for id in ids {
            if let Ok(wire) = Wire::connect(&clean, &id).await {
                wire.disconnect().await;
            }
        }
    }
    Ok(summarize(
        args,
        go_ns,
        expected,
        &publisher_reports,
        subscriber_reports,
        (cpu_before, cpu_after),
    ))
}

fn abort_all<A, B>(publishers: &[JoinHandle<A>], subscribers: &[JoinHandle<B>]) {
    for task in publishers {
        task.abort();
    }
    for task in subscribers {
        task.abort();
    }
}

/// CPU time of the broker (when a pid is given) and of this process.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    broker: Option<Duration>,
    bench: Option<Duration>,
}

fn cpu_sample(broker_pid: Option<u32>) -> Result<CpuSample, Failure> {
    let broker = broker_pid
        .map(|pid| cpu::cpu_time(Some(pid)))
        .transpose()
        .map_err(|e| Failure::failed(format!("--broker-pid: {e}")))?;
    Ok(CpuSample {
        broker,
        bench: cpu::cpu_time(None).ok(),
    })
}

fn summarize(
    args: &BenchArgs,
    go_ns: u64,
    expected: u64,
    publishers: &[PublisherReport],
    subscribers: Vec<SubscriberReport>,
    (before, after): (CpuSample, CpuSample),
) -> Outcome {
    let sent_per_publisher: Vec<u64> = publishers.iter().map(|r| r.sent).collect();
    let sent: u64 = sent_per_publisher.iter().sum();
    let last_send_ns = publishers.iter().map(|r| r.last_send_ns).max().unwrap_or(0);
    let mut latency = subscriber::new_histogram();
    let mut timeline: Vec<Slot> = Vec::new();
    let (mut delivered, mut duplicates, mut out_of_order, mut lost, mut foreign) = (0, 0, 0, 0, 0);
    let mut last_receive_ns = 0;
    for report in subscribers {
        let _ = latency.add(&report.latency);
        foreign += report.foreign;
        last_receive_ns = last_receive_ns.max(report.last_receive_ns);
        for (p, tracker) in report.sources.iter().enumerate() {
            if let Some(tracker) = tracker {
                delivered += tracker.unique;
                duplicates += tracker.duplicates();
                out_of_order += tracker.out_of_order;
                let sent_by_p = sent_per_publisher.get(p).copied().unwrap_or(0);
                lost += sent_by_p.saturating_sub(tracker.unique);
            }
        }
        if timeline.len() < report.timeline.len() {
            timeline.resize(report.timeline.len(), Slot::default());
        }
        for (merged, slot) in timeline.iter_mut().zip(&report.timeline) {
            merged.count += slot.count;
            merged.sum_ns = merged.sum_ns.saturating_add(slot.sum_ns);
            merged.max_ns = merged.max_ns.max(slot.max_ns);
        }
    }
    let seconds = |ns: u64| ns.saturating_sub(go_ns) as f64 / 1e9;
    let per_second = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let publish_seconds = seconds(last_send_ns);
    let deliver_seconds = seconds(last_receive_ns);
    let us = |ns: u64| ns as f64 / 1e3;
    let latency_us = if latency.is_empty() {
        Latency::default()
    } else {
        Latency {
            p50: us(latency.value_at_quantile(0.50)),
            p90: us(latency.value_at_quantile(0.90)),
            p99: us(latency.value_at_quantile(0.99)),
            p999: us(latency.value_at_quantile(0.999)),
            max: us(latency.max()),
            mean: latency.mean() / 1e3,
        }
    };
    let cpu_delta = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let per_message = |cpu: Option<Duration>| {
        cpu.filter(|_| delivered > 0)
            .map(|cpu| cpu.as_secs_f64() * 1e6 / delivered as f64)
    };
    let broker_cpu = cpu_delta(before.broker, after.broker);
    let bench_cpu = cpu_delta(before.bench, after.bench);
    let summary = Summary {
        label: args.label.clone(),
        address: options::address(&args.host, args.port),
        protocol: protocol_name(args.version).to_owned(),
        qos: args.qos.as_u8(),
        layout: args.layout,
        publishers: args.publishers,
        subscribers: args.subscribers,
        payload_bytes: args.payload,
        rate_per_publisher: args.rate,
        inflight: args.inflight,
        publish_seconds,
        deliver_seconds,
        sent,
        sent_per_second: per_second(sent, publish_seconds),
        expected,
        delivered,
        delivered_per_second: per_second(delivered, deliver_seconds),
        lost,
        duplicates,
        out_of_order,
        foreign,
        publish_refused: publishers.iter().map(|r| r.refused).sum(),
        unacked: if args.qos == QoS::AtMostOnce {
            0
        } else {
            publishers.iter().map(|r| r.unacked).sum()
        },
        latency_us,
        broker_pid: args.broker_pid,
        broker_cpu_seconds: broker_cpu.map(|d| d.as_secs_f64()),
        broker_cpu_us_per_message: per_message(broker_cpu),
        bench_cpu_us_per_message: per_message(bench_cpu),
    };
    if let Some(cpu) = broker_cpu
        && cpu < cpu::RESOLUTION * 50
    {
        eprintln!(
            "note: the broker used {:.2} s of CPU; /proc counts in {:?} steps, so the per-message \
             figure is coarse: run longer",
            cpu.as_secs_f64(),
            cpu::RESOLUTION
        );
    }
    Outcome { summary, timeline }
}
