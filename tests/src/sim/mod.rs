//! Deterministic simulation of the broker (DESIGN.md, "Testing layers", item 2).
//!
//! One seed draws a whole world: the [`Broker`](surgemq_core::broker::Broker) with a random
//! configuration, a handful of MQTT 3.1 / 3.1.1 clients written directly on the codec, one or
//! two clients driven by the core [`Client`](surgemq_core::client::Client) state machine (its
//! transport, timer and application played by the world), and a simulated network between
//! them. Time is virtual and the event loop jumps from one due event to the next, so a run of
//! several virtual minutes takes milliseconds and replays exactly.
//!
//! Faults: random segmenting, latency and jitter, resets, partitions, slow readers that hold
//! back `Flushed`, half-open connections, duplicate client identifiers, clock jumps past the
//! keep alive — and, with persistence, the store and the broker itself. About half the worlds
//! run with [`Persistence::Durable`](surgemq_core::broker::Persistence), some with `Periodic`,
//! the rest with persistence off (drawn from a generator of their own, so those worlds are
//! exactly the ones they were before persistence). With persistence the world keeps a
//! simulated disk (`store`): the `Output::Store` operations of each input form an atomic group;
//! a commit takes every group pending at its start, ends after a random delay (some worlds have
//! a slow disk) and answers `StoreDone`; in some worlds a commit now and then fails (nothing of
//! it applied, `StoreDone` with an error; then, as the contract says, nothing is committed until
//! the broker's rewrite comes, and it is committed with what came between). And the broker
//! crashes (most persistence worlds, one to three times): it is dropped with everything
//! uncommitted, every connection breaks as a reset, and a new broker with the same
//! configuration is restored from the disk at the same virtual time; the clients reconnect as
//! after any reset.
//!
//! The broker is checked against a reference model (`model`) after every input (closes and their
//! causes, CONNACK Session Present, SUBACK, counters, timer) and the deliveries against the
//! model at the end (`checker`): QoS 1 at least once, QoS 2 exactly once, per-publisher order,
//! nothing after UNSUBSCRIBE, Wills exactly when due, retained equals the last retained publish,
//! nothing dropped, memory back to the persistent sessions only. A run also yields a trace hash
//! of every output byte, store operation, commit, crash and their times: the same seed must
//! give the same hash.
//!
//! With persistence: store operations are numbered 1, 2, 3… per broker; a failed commit closes
//! only connections that owed an acknowledgement or may have a QoS 2 PUBLISH held (durable
//! mode; none in periodic mode); a crash turns the model into what was committed (connections
//! gone without Wills, clean sessions gone, persistent sessions exactly as on disk — possibly
//! one the model saw discarded, when the discard was not committed — routings neither on disk
//! nor delivered lost, the retained messages the disk's), and a consistent disk restores without
//! discarding anything; after everyone has left, the disk holds exactly the persistent sessions,
//! their subscriptions and the retained messages. In durable worlds, the *durability
//! invariant* (`checker::check_durability`): every QoS 1/2 message its publisher saw
//! acknowledged reaches every persistent session whose matching subscription had been
//! acknowledged before it was routed and that is alive at the end — at least once, and for QoS 2
//! from a persistent publisher session exactly once — and at every crash no acknowledged
//! subscription and no acknowledged retained publish is lost. Crashes relax exactly what they
//! legitimately change: a delivery restored as queued may come again without DUP (QoS 1; QoS 2
//! in periodic mode, where exactly once does not survive a crash), a periodic crash may undo
//! acknowledged subscription changes of a core client and leave a client holding a QoS 2
//! identifier whose exchange the broker forgot. Known broker bugs are excused only in their
//! precise case, behind the `EXCUSE_` constants in `model`.
//!
//! The core-driven clients' traffic goes through the same model and checker; on top of that
//! (`core_client`, `checker::check_core_client`): every command completes exactly once and with
//! its own kind; a QoS 1/2 publish completes only once the broker routed it; the application
//! gets each QoS 1 message at least once and each QoS 2 routing at most once (judged by what
//! reached the application, not by the bytes); its publications are routed in command order;
//! after settling it is connected with nothing in flight or queued, and its application's
//! subscriptions equal the broker's session. Known core-client bugs are excused only in their
//! precise case, behind the `EXCUSE_` constants in `core_client`.
//!
//! In about two fifths of the durable worlds, a persistent core client keeps its session on a disk
//! of its own (`client_disk`: delayed group commits, injected failures), and in most of those its
//! process crashes one to three times and is restored from that disk (about 14% of all worlds):
//! a publish whose `PutMessage` was committed, or that completed, is owed to every persistent
//! subscriber like an acknowledged one (and must reach the broker); no QoS 2 message reaches that
//! client's application twice across its crashes; only commands never stored may stay
//! incomplete.
//!
//! `SIM_SEED=<n>` replays one seed, `SIM_SEEDS=<n>` runs seeds `0..n`, `SIM_VERBOSE=1` prints
//! every packet. Modules: `world` (the event loop), `link`, `store` (the simulated disk),
//! `client` (hand-written), `core_client` (driven by the core client), `client_disk` (its disk), `actor` (either kind),
//! `model`, `checker`, `message` (payload identities, topics), `rng`, `trace`, `violations`.
//! Never: touch a real socket, a real clock or unseeded randomness.

mod actor;
mod checker;
mod client;
mod client_disk;
mod core_client;
mod link;
mod message;
mod model;
mod rng;
mod store;
mod trace;
mod violations;
mod world;

use std::panic::{AssertUnwindSafe, catch_unwind};

/// A deliberate fault the checker must notice: proof that a broken invariant fails the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// The real simulation.
    None,
    /// The network silently loses one QoS 1/2 PUBLISH from the broker to the watcher (a
    /// subscriber) in the last phase, without resetting the connection.
    DropPublishToSubscriber,
    /// The network silently loses one PUBACK from the watcher to the broker in the last phase.
    DropPubAckToBroker,
    /// The network silently loses one PUBACK from the broker to a core-driven client in the last
    /// phase: that publish must not complete on that connection, and never completes without a
    /// reconnect.
    DropPubAckToCoreClient,
    /// In a durable world, the simulated store reports one commit done but does not apply it
    /// (the first, from a third of the work phase on, that holds a QoS 1/2 delivery to the
    /// partitioned watcher); the broker crashes once a publisher of a lost message has its
    /// acknowledgement. The durability check must notice the acknowledged message it never got.
    StoreLosesCommit,
}

/// How to run a seed.
#[derive(Debug, Clone, Copy)]
pub struct SimOptions {
    /// Deliberate fault, if any.
    pub mutation: Mutation,
    /// Print every packet in and out of the broker to stderr.
    pub verbose: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            mutation: Mutation::None,
            verbose: std::env::var_os("SIM_VERBOSE").is_some_and(|v| v != "0"),
        }
    }
}

/// What one run found.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Hash of every broker output (bytes, connection, virtual time), in order.
    pub trace_hash: u64,
    /// The first violations found, each `t=<ms> <what>`.
    pub violations: Vec<String>,
    /// How many violations in all.
    pub violation_count: usize,
    /// Whether the requested mutation happened.
    pub mutation_fired: bool,
    /// Whether the system recovered from the mutation the way it must (a core client whose
    /// PUBACK was lost completed that publish only after reconnecting and resending it).
    pub mutation_repaired: bool,
    /// One line of numbers about the run.
    pub summary: String,
}

impl SimReport {
    /// No invariant was violated.
    pub fn passed(&self) -> bool {
        self.violation_count == 0
    }
}

/// Runs one seed.
pub fn run(seed: u64, options: &SimOptions) -> SimReport {
    world::World::new(seed, options).run()
}

/// Runs one seed, turning a panic (in the broker or the simulation) into a failed report.
pub fn run_catching(seed: u64, options: &SimOptions) -> SimReport {
    catch_unwind(AssertUnwindSafe(|| run(seed, options))).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "non-string panic".into());
        SimReport {
            seed,
            trace_hash: 0,
            violations: vec![format!("panic: {what}")],
            violation_count: 1,
            mutation_fired: false,
            mutation_repaired: false,
            summary: String::new(),
        }
    })
}

/// The seeds to run: `SIM_SEED=<n>` alone, else `0..SIM_SEEDS` (default `default_count`).
pub fn seeds_from_env(default_count: u64) -> Vec<u64> {
    let number = |name: &str| {
        std::env::var(name).ok().map(|v| {
            v.trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
        })
    };
    match number("SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..number("SIM_SEEDS").unwrap_or(default_count)).collect(),
    }
}

/// Runs `seeds` on every available core (results in seed order).
pub fn run_many(seeds: &[u64], options: &SimOptions) -> Vec<SimReport> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(seeds.len().max(1));
    let chunks: Vec<Vec<u64>> = (0..threads)
        .map(|t| seeds.iter().copied().skip(t).step_by(threads).collect())
        .collect();
    let mut reports: Vec<SimReport> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&s| run_catching(s, options))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    reports.sort_by_key(|r| r.seed);
    reports
}
