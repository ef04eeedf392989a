//! kill -9 durability: nothing a durable `surgemq` acknowledged is lost when it is killed
//! with SIGKILL at random moments, and no QoS 2 message reaches an application twice.
//!
//! The `surgemq` binary (tokio build, `--persistence durable`, the default, with its own data
//! directory) serves our tokio [`Client`]s, all in this process, all with clean session 0,
//! fixed client identifiers and a fast reconnect: two QoS 1 publishers (`kill/q1/<n>`), two
//! QoS 2 publishers (`kill/q2/<n>`) and two persistent subscribers on `kill/#` at QoS 2,
//! subscribed (SUBACK received) before anything is published. Each publisher keeps up to
//! [`OUTSTANDING`] publishes in flight and records every sequence number whose `publish()`
//! resolved `Ok` (PUBACK / PUBCOMP: acknowledged, so on the broker's disk). Meanwhile the
//! test kills the broker with SIGKILL at seeded random moments (100–700 ms apart) and starts
//! it again at once on the same port and data directory, `SURGEMQ_KILL_CYCLES` times
//! (default 20). Then the publishers stop, their last publishes complete, and every
//! acknowledged message must reach each subscriber's application (3.1.1 [MQTT-3.1.2-4]
//! [MQTT-3.1.2-5] [MQTT-4.4.0-1]): lost == 0; QoS 2 messages at most once per subscriber
//! ([MQTT-4.3.3-2]): qos2_duplicates == 0. QoS 1 duplicates are allowed and counted.
//! `delivered` counts distinct (subscriber, message) arrivals, so it is twice `acknowledged`
//! when nothing is lost. The publishers hold back while a subscriber lags [`MAX_LAG`]
//! messages behind, so that the broker's queue limit never drops a message (a loss MQTT
//! allows, and not the one looked for here).
//!
//! One summary line goes to stderr (`kill9: cycles=… acknowledged=… lost=0 …`). The 20-cycle
//! run is part of `cargo test --workspace`; the long run is
//!
//! ```text
//! SURGEMQ_KILL_CYCLES=100 cargo test --release -p surgemq-tests --test kill9 -- --nocapture
//! ```
//!
//! (`--release` builds this test; the harness builds the broker into `target/e2e` in debug.)
//! `SURGEMQ_KILL_SEED=<n>` replays another kill schedule. `SURGEMQ_KILL_PERSISTENCE=periodic`
//! runs the broker in periodic mode, which acknowledges before the commit: the test must then
//! fail with lost messages (a check that it can see a loss). Every wait is bounded; the broker
//! is killed when the test ends, pass or fail; everything is on 127.0.0.1.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use surgemq_core::client::Backoff;
use surgemq_core::codec::{QoS, SubAckReason, SubscriptionOptions};
use surgemq_core::string::MqttString;
use surgemq_core::topic::{TopicFilter, TopicName};
use surgemq_tests::e2e::{Broker, Runtime};
use surgemq_tokio::{Client, ClientConfig, ClientOptions, Messages};
use tokio::task::JoinSet;

/// Kill cycles when `SURGEMQ_KILL_CYCLES` is not set.
const DEFAULT_CYCLES: usize = 20;
/// The kill schedule when `SURGEMQ_KILL_SEED` is not set.
const DEFAULT_SEED: u64 = 0x6b69_6c6c_2d39;
/// Publishes each publisher keeps in flight at most.
const OUTSTANDING: usize = 10;
/// Publishers hold back while a subscriber is this many acknowledged messages behind: the
/// broker's per-session queue limit (`max_queued_messages`, 1000 by default; beyond it a
/// message is dropped, as MQTT allows) must never be what loses a message here. The lag plus
/// the publishes in flight stays well below it.
const MAX_LAG: usize = 400;
/// Time between two kills: uniformly in this range, in milliseconds.
const KILL_EVERY_MS: (u64, u64) = (100, 700);
/// How long the publishers' last publishes may take to complete after the last restart.
const DRAIN_BOUND: Duration = Duration::from_secs(30);
/// How long every acknowledged message may take to reach every subscriber.
const DELIVERY_BOUND: Duration = Duration::from_secs(60);
/// How long a client may take to connect (and a subscriber to subscribe).
const CONNECT_BOUND: Duration = Duration::from_secs(10);

/// The publishers: client-id suffix, QoS, topic.
const PUBLISHERS: [(&str, QoS, &str); 4] = [
    ("q1-0", QoS::AtLeastOnce, "kill/q1/0"),
    ("q1-1", QoS::AtLeastOnce, "kill/q1/1"),
    ("q2-0", QoS::ExactlyOnce, "kill/q2/0"),
    ("q2-1", QoS::ExactlyOnce, "kill/q2/1"),
];
/// The persistent subscribers.
const SUBSCRIBERS: usize = 2;

/// A message: (publisher index, sequence number).
type MessageId = (usize, u64);

/// splitmix64: a seeded, reproducible kill schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// What the publishers and subscribers saw, shared with the test thread.
#[derive(Default)]
struct Observed {
    /// Per publisher: acknowledged sequence numbers, with the kill cycle they were
    /// acknowledged in (0: before the first kill).
    acknowledged: [BTreeMap<u64, usize>; PUBLISHERS.len()],
    /// Per publisher: sequence numbers whose publish was started.
    issued: [u64; PUBLISHERS.len()],
    /// Per subscriber: how many times each message reached the application, and the QoS
    /// and DUP flag of its first arrival.
    delivered: [BTreeMap<MessageId, Delivery>; SUBSCRIBERS],
    /// Anything the clients did that they should not have.
    problems: Vec<String>,
    /// Acknowledged messages, all publishers together.
    acknowledged_total: usize,
    /// Per subscriber: distinct messages received.
    delivered_distinct: [usize; SUBSCRIBERS],
}

impl Observed {
    /// How far the slowest subscriber is behind the publishers.
    fn lag(&self) -> usize {
        let slowest = self.delivered_distinct.iter().min().copied().unwrap_or(0);
        self.acknowledged_total.saturating_sub(slowest)
    }
}

#[derive(Debug, Clone, Copy)]
struct Delivery {
    count: u32,
    /// The kill cycle of the first arrival.
    cycle: usize,
    qos: QoS,
    dup: bool,
}

type Shared = Arc<Mutex<Observed>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Observed> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes a line past the test harness's capture: the summary must show.
fn note(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

fn config(id: &str, seed: u64) -> ClientConfig {
    let mut config = ClientConfig::new(MqttString::new(id).expect("a valid client id"));
    config.clean_start = false;
    config.keep_alive = 10;
    config.max_inflight = 20;
    config.connect_timeout = Duration::from_secs(5);
    config.reconnect = Some(Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    });
    config.seed = seed;
    config
}

async fn connect(address: &str, id: &str, seed: u64) -> (Client, Messages) {
    let options = ClientOptions::new(address, config(id, seed));
    match tokio::time::timeout(CONNECT_BOUND, Client::connect(options)).await {
        Ok(Ok(connected)) => connected,
        Ok(Err(e)) => panic!("{id} cannot connect to {address}: {e}"),
        Err(_) => panic!("{id}: no CONNACK from {address} within {CONNECT_BOUND:?}"),
    }
}

/// Receives until the client stops, counting each message per subscriber.
async fn collect(
    subscriber: usize,
    mut messages: Messages,
    shared: Shared,
    cycle: Arc<AtomicUsize>,
) {
    while let Some(message) = messages.recv().await {
        let publish = &message.publish;
        let text = String::from_utf8_lossy(&publish.payload).into_owned();
        let parsed = text.split_once(' ').and_then(|(name, seq)| {
            let publisher = PUBLISHERS.iter().position(|(n, _, _)| *n == name)?;
            Some((publisher, seq.parse::<u64>().ok()?))
        });
        let mut observed = lock(&shared);
        let Some(id) = parsed else {
            observed.problems.push(format!(
                "subscriber {subscriber}: unexpected payload {text:?}"
            ));
            continue;
        };
        let (_, published_qos, topic) = PUBLISHERS[id.0];
        if publish.topic.as_str() != topic || publish.qos != published_qos {
            observed.problems.push(format!(
                "subscriber {subscriber}: {text:?} arrived on {} at {:?}, expected {topic} at \
                 {published_qos:?}",
                publish.topic.as_str(),
                publish.qos
            ));
        }
        let now = cycle.load(Ordering::SeqCst);
        let mut first = false;
        observed.delivered[subscriber]
            .entry(id)
            .and_modify(|d| d.count += 1)
            .or_insert_with(|| {
                first = true;
                Delivery {
                    count: 1,
                    cycle: now,
                    qos: publish.qos,
                    dup: publish.dup,
                }
            });
        if first {
            observed.delivered_distinct[subscriber] += 1;
        }
    }
}

/// Publishes `0, 1, 2, ...` with up to [`OUTSTANDING`] in flight (holding back while the
/// subscribers lag [`MAX_LAG`] behind) until `stop`, then waits for the ones in flight;
/// records each acknowledged sequence number.
async fn publish_continuously(
    publisher: usize,
    client: Client,
    stop: Arc<AtomicBool>,
    shared: Shared,
    cycle: Arc<AtomicUsize>,
) {
    let (name, qos, topic) = PUBLISHERS[publisher];
    let topic = TopicName::parse(topic).expect("a valid topic");
    let mut in_flight = JoinSet::new();
    let mut next = 0u64;
    loop {
        while !stop.load(Ordering::SeqCst) && in_flight.len() < OUTSTANDING {
            if lock(&shared).lag() >= MAX_LAG {
                if in_flight.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                break;
            }
            let seq = next;
            next += 1;
            lock(&shared).issued[publisher] = next;
            let client = client.clone();
            let topic = topic.clone();
            let payload = format!("{name} {seq}");
            in_flight.spawn(async move { (seq, client.publish(topic, payload, qos, false).await) });
        }
        let Some(done) = in_flight.join_next().await else {
            break;
        };
        let (seq, result) = done.expect("a publish task panicked");
        let mut observed = lock(&shared);
        match result {
            Ok(reason) if !reason.is_error() => {
                let now = cycle.load(Ordering::SeqCst);
                observed.acknowledged[publisher].insert(seq, now);
                observed.acknowledged_total += 1;
            }
            other => observed.problems.push(format!(
                "publisher {name}: publish {seq} ended with {other:?}"
            )),
        }
    }
    client.disconnect().await;
}

#[test]
fn kill9_loses_nothing_acknowledged() {
    let cycles = usize::try_from(env_number("SURGEMQ_KILL_CYCLES", DEFAULT_CYCLES as u64))
        .expect("a cycle count");
    let seed = env_number("SURGEMQ_KILL_SEED", DEFAULT_SEED);
    let started = Instant::now();
    let mode = std::env::var("SURGEMQ_KILL_PERSISTENCE").unwrap_or_else(|_| "durable".into());
    let mut broker = Broker::plain_with(Runtime::Tokio, &["--persistence", &mode]);
    let address = format!("127.0.0.1:{}", broker.port());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let shared: Shared = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let cycle = Arc::new(AtomicUsize::new(0));

    // Subscribers first, subscribed (SUBACK) before anything is published.
    let mut subscribers = Vec::new();
    let mut collectors = Vec::new();
    for n in 0..SUBSCRIBERS {
        let (client, messages) = runtime.block_on(async {
            let (client, messages) =
                connect(&address, &format!("kill9-sub-{n}"), seed ^ (n as u64 + 1)).await;
            let filter = TopicFilter::parse("kill/#").expect("a valid filter");
            let subscribe =
                client.subscribe(vec![(filter, SubscriptionOptions::qos(QoS::ExactlyOnce))]);
            let granted = tokio::time::timeout(CONNECT_BOUND, subscribe)
                .await
                .unwrap_or_else(|_| panic!("kill9-sub-{n}: no SUBACK within {CONNECT_BOUND:?}"))
                .unwrap_or_else(|e| panic!("kill9-sub-{n}: subscribe failed: {e}"));
            assert_eq!(granted, [SubAckReason::GrantedQoS2], "kill9-sub-{n}");
            (client, messages)
        });
        collectors.push(runtime.spawn(collect(
            n,
            messages,
            Arc::clone(&shared),
            Arc::clone(&cycle),
        )));
        subscribers.push(client);
    }
    let mut publishers = Vec::new();
    for (n, (name, _, _)) in PUBLISHERS.iter().enumerate() {
        let (client, _messages) = runtime.block_on(connect(
            &address,
            &format!("kill9-pub-{name}"),
            seed ^ (n as u64 + 11),
        ));
        publishers.push(runtime.spawn(publish_continuously(
            n,
            client,
            Arc::clone(&stop),
            Arc::clone(&shared),
            Arc::clone(&cycle),
        )));
    }

    // The kills.
    let mut rng = Rng(seed);
    let kills_started = Instant::now();
    // Time from SIGKILL until the process was reaped (longer while it is in an fsync), and
    // from then until the new one listens.
    let mut kill_wait = Duration::ZERO;
    let mut downtime = Duration::ZERO;
    for n in 1..=cycles {
        thread::sleep(Duration::from_millis(
            rng.between(KILL_EVERY_MS.0, KILL_EVERY_MS.1),
        ));
        if publishers.iter().any(|p| p.is_finished()) {
            broker.fail("a publisher ended early");
        }
        let kill = Instant::now();
        broker.kill9();
        cycle.store(n, Ordering::SeqCst);
        let killed = Instant::now();
        kill_wait += killed - kill;
        broker.restart();
        downtime += killed.elapsed();
    }
    let kill_phase = kills_started.elapsed();

    // The publishers stop; what they have in flight completes.
    stop.store(true, Ordering::SeqCst);
    let drained = runtime.block_on(async {
        tokio::time::timeout(DRAIN_BOUND, async {
            for publisher in publishers {
                publisher.await.expect("a publisher panicked");
            }
        })
        .await
    });
    if drained.is_err() {
        let observed = lock(&shared);
        let pending: Vec<String> = PUBLISHERS
            .iter()
            .enumerate()
            .map(|(n, (name, _, _))| {
                format!(
                    "{name}: issued {} acknowledged {}",
                    observed.issued[n],
                    observed.acknowledged[n].len()
                )
            })
            .collect();
        drop(observed);
        broker.fail(&format!(
            "publishes still unacknowledged {DRAIN_BOUND:?} after the last restart: {pending:?}"
        ));
    }

    // Every acknowledged message reaches every subscriber.
    let deadline = Instant::now() + DELIVERY_BOUND;
    let missing = |observed: &Observed| -> Vec<(usize, MessageId, usize)> {
        let mut missing = Vec::new();
        for (subscriber, delivered) in observed.delivered.iter().enumerate() {
            for (publisher, acknowledged) in observed.acknowledged.iter().enumerate() {
                for (&seq, &cycle) in acknowledged {
                    if !delivered.contains_key(&(publisher, seq)) {
                        missing.push((subscriber, (publisher, seq), cycle));
                    }
                }
            }
        }
        missing
    };
    loop {
        if missing(&lock(&shared)).is_empty() || Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    // Duplicates sent before the last of the messages came are in; a moment for stragglers.
    thread::sleep(Duration::from_millis(200));
    broker.assert_alive();

    let observed = lock(&shared);
    let lost = missing(&observed);
    let mut acknowledged = [0usize; 2];
    for (publisher, acked) in observed.acknowledged.iter().enumerate() {
        acknowledged[usize::from(PUBLISHERS[publisher].1 == QoS::ExactlyOnce)] += acked.len();
    }
    let issued: u64 = observed.issued.iter().sum();
    let mut delivered = 0usize;
    let mut qos1_duplicates = 0u64;
    let mut qos2_duplicates = Vec::new();
    let mut unacknowledged_delivered = 0usize;
    for (subscriber, deliveries) in observed.delivered.iter().enumerate() {
        for (&(publisher, seq), d) in deliveries {
            delivered += 1;
            if !observed.acknowledged[publisher].contains_key(&seq) {
                unacknowledged_delivered += 1;
            }
            if d.count > 1 {
                if PUBLISHERS[publisher].1 == QoS::ExactlyOnce {
                    qos2_duplicates.push((subscriber, (publisher, seq), *d));
                } else {
                    qos1_duplicates += u64::from(d.count - 1);
                }
            }
        }
    }
    let total = acknowledged[0] + acknowledged[1];
    let (qos1, qos2) = (acknowledged[0], acknowledged[1]);
    let (restarts, retries) = (broker.restarts(), broker.rebind_retries());
    note(&format!(
        "kill9: cycles={cycles} acknowledged={total} (qos1={qos1}, qos2={qos2}) \
         delivered={delivered} lost={} qos2_duplicates={} qos1_duplicates={qos1_duplicates} \
         restarts={restarts}",
        lost.len(),
        qos2_duplicates.len(),
    ));
    note(&format!(
        "kill9: persistence={mode} seed={seed} issued={issued} \
         delivered_unacknowledged={unacknowledged_delivered} rebind_retries={retries} \
         kill_wait={kill_wait:?} restart_time={downtime:?} kill_phase={kill_phase:?} \
         total={:?} (with the broker's build check)",
        started.elapsed(),
    ));

    let mut failures = Vec::new();
    if !observed.problems.is_empty() {
        failures.push(format!("client problems: {:#?}", observed.problems));
    }
    if !lost.is_empty() {
        let shown: Vec<String> = lost
            .iter()
            .take(50)
            .map(|(subscriber, (publisher, seq), cycle)| {
                format!(
                    "subscriber {subscriber} never got {} {seq} (acknowledged in cycle {cycle})",
                    PUBLISHERS[*publisher].0
                )
            })
            .collect();
        failures.push(format!("{} lost: {shown:#?}", lost.len()));
    }
    if !qos2_duplicates.is_empty() {
        let shown: Vec<String> = qos2_duplicates
            .iter()
            .take(50)
            .map(|(subscriber, (publisher, seq), d)| {
                format!(
                    "subscriber {subscriber} got {} {seq} {} times (first in cycle {}, {:?}, \
                     dup {})",
                    PUBLISHERS[*publisher].0, d.count, d.cycle, d.qos, d.dup
                )
            })
            .collect();
        failures.push(format!(
            "{} QoS 2 duplicates: {shown:#?}",
            qos2_duplicates.len()
        ));
    }
    drop(observed);
    let log = broker.log();
    let queue_full = log
        .lines()
        .filter(|line| line.contains("queue full, messages dropped"))
        .count();
    if queue_full > 0 {
        failures.push(format!(
            "the broker logged {queue_full} \"queue full, messages dropped\" warnings: a \
             session queue reached max_queued_messages (the test overloaded a subscriber)"
        ));
    }
    if !failures.is_empty() {
        let log_file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kill9-broker.log");
        let _ = std::fs::write(&log_file, &log);
        panic!(
            "kill9 (seed {seed}, {cycles} cycles): {}\nbroker log (every run): {}",
            failures.join("\n"),
            log_file.display()
        );
    }
    runtime.block_on(async {
        for subscriber in &subscribers {
            let _ = tokio::time::timeout(Duration::from_secs(5), subscriber.disconnect()).await;
        }
    });
    for collector in collectors {
        collector.abort();
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
}
