//! [`World`]: one seeded run — the broker, the simulated clients and their links, the fault
//! injector and the virtual clock — and the event loop that steps from one due event to the next
//! (a segment arriving, a client timer, the broker's `poll_timeout`, a fault, a phase deadline).
//!
//! After every broker input the world drains `poll_output`, routes transmits into the links,
//! and checks the broker against the [`Model`]: the set of connections closed and why, the
//! counters of connections, sessions and subscriptions, and that the broker's next wake-up is no
//! later than the earliest keep-alive or connect deadline (so keep-alive closes happen on time).
//!
//! For a client driven by the core state machine the world is also its transport: an
//! `OpenTransport` opens a link (or, while the client is partitioned, fails after a while), the
//! client learns the connection is up when the broker has accepted it plus one latency, link
//! bytes become `Received`, and resets, EOF and failed opens become `TransportDown`.
//!
//! With persistence the world is also the broker's store ([`SimStore`]): it takes the `Store`
//! outputs of each input as one atomic group, commits them after a delay (group commit) and
//! feeds `StoreDone` back, now and then with a failure; and it crashes the broker
//! ([`World::crash`]): every link is reset, the uncommitted operations are lost, and a new broker
//! restores the disk. The settle phase also waits for the store to be idle.
//!
//! A run has phases: *work* (random workload and faults), *settle* (faults off, every client
//! reconnects and everything drains; then a final round of publications and another drain; then
//! the delivery checks), *probe* (a fresh `#` subscriber reads the retained messages) and
//! *shutdown* (everyone disconnects; the broker must be back to its persistent sessions only,
//! and so must the disk).
//! Never: use wall-clock time, unseeded randomness, or hash-map iteration order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use surgemq_core::broker::{
    AuthMode, Broker, BrokerConfig, ConnId, DisconnectCause, Event, Input, Output, OverflowPolicy,
    Persistence, StoreFailure,
};
use surgemq_core::codec::{Decoded, MAX_PACKET_SIZE, Packet, ProtocolVersion, QoS, decode};
use surgemq_core::store::StoreOp;
use surgemq_core::time::Instant;

use super::actor::Actor;
use super::checker::{self, DeliveryStats, Receipt};
use super::client::{Action, Ctx, Mode, Note, Role, SimClient};
use super::client_disk::ClientDisk;
use super::core_client::{CoreSimClient, CoreStats};
use super::link::{Link, LinkParams};
use super::message::Uid;
use super::model::Model;
use super::rng::SimRng;
use super::store::SimStore;
use super::trace::TraceHash;
use super::violations::Violations;
use super::{Mutation, SimOptions, SimReport};

/// Virtual time allowed for draining after the workload stops, and for each later phase.
const PHASE_LIMIT_MS: u64 = 30 * 60 * 1000;
/// A run that takes more steps than this is stuck in a loop of the world itself.
const STEP_LIMIT: u64 = 20_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Work { until: u64 },
    Settle { final_sent: bool, deadline: u64 },
    Probe { deadline: u64 },
    Shutdown { deadline: u64 },
}

/// How hostile the network is in this run.
#[derive(Debug, Clone, Copy)]
struct Profile {
    fault_gap: (u64, u64),
    /// Relative weights of reset, partition, slow reader, clock jump.
    weights: [u64; 4],
    latency: (u64, u64),
    window: (u64, u64),
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    resets: u64,
    partitions: u64,
    pauses: u64,
    jumps: u64,
    published: u64,
    connections: u64,
    /// Times a flush left bytes in the socket because the window was full (a slow reader).
    stalls: u64,
    /// Broker crashes.
    crashes: u64,
}

/// Seeds the generator of the core clients' disks and process crashes (its own, so that worlds
/// without them are exactly the worlds they were before).
const CLIENT_DISK_SEED: u64 = 0x636c_6965_6e74_6473;

/// One run. See the [module docs](self).
pub(crate) struct World {
    seed: u64,
    now: u64,
    steps: u64,
    rng: SimRng,
    broker: Broker,
    config: BrokerConfig,
    model: Model,
    v: Violations,
    trace: TraceHash,
    links: BTreeMap<usize, Link>,
    next_link: usize,
    conn_links: BTreeMap<ConnId, usize>,
    clients: Vec<Actor>,
    client_link: Vec<Option<usize>>,
    down_until: Vec<u64>,
    receipts: Vec<Receipt>,
    /// Messages whose publisher saw them acknowledged, with when it first did.
    acked: BTreeMap<Uid, u64>,
    /// Messages a durable core client's disk committed, with when it first did.
    stored: BTreeMap<Uid, u64>,
    /// When a core client's process crashes (work phase): time and client, earliest first.
    client_crashes: Vec<(u64, usize)>,
    /// The disk under the broker (persistence on), and its commits.
    store: SimStore,
    /// When the broker crashes (work phase), earliest first.
    crashes: Vec<u64>,
    /// Mutation `StoreLosesCommit`: when the store starts losing, and the latest the crash
    /// after the lost commit happens.
    lose_at: Option<u64>,
    lose_crash_by: Option<u64>,
    lose_done: bool,
    /// No more random faults (the mutation keeps its own schedule).
    faults_off: bool,
    /// Durable deliveries checked by the durability invariant.
    durable_owed: usize,
    /// QoS 2 messages a client took for duplicates because a periodic crash forgot the
    /// identifier's previous exchange.
    forgotten_ids: u64,
    phase: Phase,
    profile: Profile,
    next_fault: u64,
    jump_to: Option<u64>,
    mutation: Mutation,
    mutation_armed: bool,
    mutation_fired: bool,
    watcher: usize,
    probe: Option<usize>,
    counters: Counters,
    delivery: DeliveryStats,
    verbose: bool,
}

impl World {
    /// Draws a world for `seed`.
    pub(crate) fn new(seed: u64, options: &SimOptions) -> Self {
        let mut rng = SimRng::new(seed);
        let mutated = options.mutation != Mutation::None;
        let config = BrokerConfig {
            connect_timeout: Duration::from_secs(rng.range(3, 15)),
            max_keep_alive: rng.chance(200).then(|| rng.range(10, 60) as u16),
            max_inflight: rng.range(1, 20) as u16,
            // High enough that nothing is ever dropped: a drop event is a violation.
            max_queued_messages: 1_000_000,
            max_queued_bytes: usize::MAX / 4,
            overflow_policy: OverflowPolicy::DropNew,
            queue_qos0_offline: rng.chance(500),
            max_unflushed_bytes: rng.range(256, 16 * 1024) as usize,
            // A mutant run must not be repaired by the broker's in-session resend.
            retry_interval: (!mutated && rng.chance(500))
                .then(|| Duration::from_secs(rng.range(2, 30))),
            sys_interval: Some(Duration::from_secs(10)),
            auth: AuthMode::AllowAll,
            seed,
            ..BrokerConfig::default()
        };
        // Persistence is drawn from a generator of its own, so a world with persistence off is
        // the very world it was before persistence existed.
        let mut prng = SimRng::new(seed ^ 0x7065_7273_6973_7400);
        let losing = options.mutation == Mutation::StoreLosesCommit;
        let persistence = match prng.below(100) {
            _ if losing => Persistence::Durable,
            0..50 => Persistence::Durable,
            50..65 => Persistence::Periodic,
            _ => Persistence::Off,
        };
        let store_latency = if prng.chance(200) {
            (50, prng.range(300, 3_000)) // a slow disk: acknowledgements wait
        } else {
            (1, prng.range(5, 80))
        };
        let fail_per_mille = if !losing && prng.chance(300) {
            prng.range(5, 80)
        } else {
            0
        };
        let crash_count = if persistence != Persistence::Off && !losing && prng.chance(800) {
            prng.range(1, 3)
        } else {
            0
        };
        let config = BrokerConfig {
            persistence,
            ..config
        };
        let calm = rng.chance(150);
        let profile = Profile {
            fault_gap: if calm {
                (20_000, 60_000)
            } else {
                let lo = rng.range(100, 3_000);
                (lo, lo + rng.range(1_000, 12_000))
            },
            weights: [
                rng.range(1, 10),
                rng.range(0, 6),
                rng.range(0, 6),
                if rng.chance(300) { rng.range(1, 2) } else { 0 },
            ],
            latency: if rng.chance(500) { (1, 20) } else { (5, 250) },
            window: if rng.chance(300) {
                (256, 2_048)
            } else {
                (2_048, 65_536)
            },
        };
        let action_gap = if rng.chance(200) {
            (rng.range(1, 20), rng.range(50, 400)) // bursty
        } else {
            (rng.range(20, 300), rng.range(500, 3_000))
        };
        let mut clients = Vec::new();
        let keep_alives: &[u16] = &[0, 5, 10, 10, 20, 30, 60];
        clients.push(Actor::Hand(Box::new(SimClient::new(
            0,
            "watch".into(),
            Role::Watcher,
            ProtocolVersion::V3_1_1,
            *rng.pick(&keep_alives[1..]),
            true,
            action_gap,
            0,
            rng.fork(),
        ))));
        let mains = rng.range(2, 7) as usize;
        for i in 1..=mains {
            let version = if rng.chance(250) {
                ProtocolVersion::V3_1
            } else {
                ProtocolVersion::V3_1_1
            };
            let keep_alive = *rng.pick(keep_alives);
            let persistent = rng.chance(700);
            let start = rng.below(2_000);
            let fork = rng.fork();
            clients.push(Actor::Hand(Box::new(SimClient::new(
                i,
                format!("c{i}"),
                Role::Main,
                version,
                keep_alive,
                persistent,
                action_gap,
                start,
                fork,
            ))));
        }
        // Clients driven by the core client state machine, in the same world.
        // A lighter workload than the hand-written mains' (they run the same fault schedule).
        let core_gap = (action_gap.0 * 2, action_gap.1 * 2);
        let mut drng = SimRng::new(seed ^ CLIENT_DISK_SEED);
        for k in 1..=rng.range(1, 2) {
            let index = clients.len();
            let version = if rng.chance(150) {
                ProtocolVersion::V3_1
            } else {
                ProtocolVersion::V3_1_1
            };
            let keep_alive = *rng.pick(keep_alives);
            let persistent = rng.chance(600);
            let start = rng.below(2_000);
            let fork = rng.fork();
            // About half the persistent core clients of durable worlds keep their session on a
            // disk of their own.
            let disk = (persistent && persistence == Persistence::Durable && drng.chance(500))
                .then(|| {
                    let latency = if drng.chance(200) {
                        (20, drng.range(200, 2_000))
                    } else {
                        (1, drng.range(5, 60))
                    };
                    let fail = if drng.chance(300) {
                        drng.range(10, 80)
                    } else {
                        0
                    };
                    ClientDisk::new(latency, fail, drng.fork())
                });
            clients.push(Actor::Core(Box::new(CoreSimClient::new(
                index,
                format!("k{k}"),
                version,
                keep_alive,
                persistent,
                core_gap,
                start,
                fork,
                disk,
            ))));
        }
        let victims: Vec<String> = clients[1..]
            .iter()
            .map(|c| c.client_id().to_owned())
            .collect();
        for _ in 0..rng.range(0, 3) {
            let index = clients.len();
            let victim = rng.pick(&victims).clone();
            let keep_alive = *rng.pick(&keep_alives[1..]);
            let start = rng.range(5_000, 30_000);
            let fork = rng.fork();
            clients.push(Actor::Hand(Box::new(SimClient::new(
                index,
                victim,
                Role::Intruder,
                ProtocolVersion::V3_1_1,
                keep_alive,
                false,
                (1_000, 5_000),
                start,
                fork,
            ))));
        }
        if options.mutation == Mutation::DropPubAckToCoreClient {
            clients
                .iter_mut()
                .filter_map(Actor::core_mut)
                .for_each(CoreSimClient::track_packet_ids);
        }
        let mut work = rng.range(30_000, 150_000);
        let next_fault = rng.range(profile.fault_gap.0, profile.fault_gap.1);
        let n = clients.len();
        let mut crashes: Vec<u64> = (0..crash_count)
            .map(|_| prng.range(3_000, work - 1_000))
            .collect();
        crashes.sort_unstable();
        let lose_at = losing.then(|| {
            work = work.max(90_000);
            work / 3
        });
        // Most durable core clients' processes crash, one to three times (never in a mutant run,
        // which must fail for its own reason).
        let mut client_crashes = Vec::new();
        for (i, client) in clients.iter().enumerate() {
            if client.core().is_some_and(CoreSimClient::is_durable) && !mutated && drng.chance(700)
            {
                for _ in 0..drng.range(1, 3) {
                    client_crashes.push((drng.range(2_500, work - 1_000), i));
                }
            }
        }
        client_crashes.sort_unstable();
        Self {
            seed,
            now: 0,
            steps: 0,
            broker: Broker::new(config.clone(), Instant::ZERO),
            model: Model::new(
                u64::try_from(config.connect_timeout.as_millis()).unwrap_or(u64::MAX),
                config.max_keep_alive,
                options.verbose,
            ),
            config,
            rng,
            v: Violations::default(),
            trace: TraceHash::new(),
            links: BTreeMap::new(),
            next_link: 1,
            conn_links: BTreeMap::new(),
            clients,
            client_link: vec![None; n],
            down_until: vec![0; n],
            receipts: Vec::new(),
            acked: BTreeMap::new(),
            stored: BTreeMap::new(),
            client_crashes,
            store: SimStore::new(persistence, store_latency, fail_per_mille),
            crashes,
            lose_at,
            lose_crash_by: None,
            lose_done: false,
            faults_off: false,
            durable_owed: 0,
            forgotten_ids: 0,
            phase: Phase::Work { until: work },
            profile,
            next_fault,
            jump_to: None,
            mutation: options.mutation,
            mutation_armed: false,
            mutation_fired: false,
            watcher: 0,
            probe: None,
            counters: Counters::default(),
            delivery: DeliveryStats::default(),
            verbose: options.verbose,
        }
    }

    /// Runs to the end and reports.
    pub(crate) fn run(mut self) -> SimReport {
        if self.verbose {
            eprintln!("seed {}: {:?}", self.seed, self.config);
            for c in &self.clients {
                eprintln!("  {}", c.describe());
            }
        }
        loop {
            let mut t = self.next_time().max(self.now);
            if let Some(jump) = self.jump_to.take() {
                t = t.max(jump);
            }
            self.now = t;
            self.steps += 1;
            if self.steps > STEP_LIMIT {
                self.v.push(
                    self.now,
                    "the simulation itself did not make progress".into(),
                );
                break;
            }
            self.step();
            if self.advance_phase() {
                break;
            }
        }
        self.report()
    }

    fn report(&self) -> SimReport {
        let s = &self.model.stats;
        let c = &self.counters;
        let k = self.clients.iter().filter_map(Actor::core).fold(
            CoreStats::default(),
            |mut k, client| {
                let x = client.stats;
                k.commands += x.commands;
                k.completions += x.completions;
                k.queue_full += x.queue_full;
                k.connects += x.connects;
                k.resumed += x.resumed;
                k.timeouts += x.timeouts;
                k.failed_opens += x.failed_opens;
                k.messages += x.messages;
                k.resubscribes += x.resubscribes;
                k.excused += x.excused;
                k.ambiguous += x.ambiguous;
                k.lost_ack_resent += x.lost_ack_resent;
                k.crash_tainted += x.crash_tainted;
                k.durable += x.durable;
                k.crashes += x.crashes;
                k.restored += x.restored;
                k.dropped += x.dropped;
                k.disk_commits += x.disk_commits;
                k.disk_failures += x.disk_failures;
                k
            },
        );
        let summary = format!(
            "t={}s steps={} clients={} conns={} published={} routed={} acked={} receipts={} \
             owed={} ordered={} dups={} takeovers={} resumed={} keepalive_closes={} \
             connect_timeouts={} wills={} resets={} partitions={} slow={} jumps={} \
             window_stalls={} inflight_max={} unflushed_max={} retry={:?} | core: clients={} \
             commands={} completions={} queue_full={} connacks={} resumed={} timeouts={} failed_opens={} \
             messages={} resubscribes={} excused_bugs={} ambiguous={} crash_tainted={} \
             durable={} client_crashes={} restored={} dropped={} stored={} \
             disk_commits={} disk_failures={} | store: {:?} ops={} commits={} failures={} failed_closes={} lost_ops={} crashes={} \
             revived={} vanished={} lost_routes={} restored={} held_back={} \
             crashed_unrewritten={} forgotten_ids={} \
             excused_revived={} durable_owed={}",
            self.now / 1000,
            self.steps,
            self.clients.len(),
            c.connections,
            c.published,
            s.routed,
            self.acked.len(),
            self.delivery.receipts,
            self.delivery.owed,
            self.delivery.ordered,
            self.delivery.redeliveries,
            s.takeovers,
            s.resumed,
            s.keep_alive_closes,
            s.connect_timeouts,
            s.wills_due,
            c.resets,
            c.partitions,
            c.pauses,
            c.jumps,
            c.stalls,
            self.config.max_inflight,
            self.config.max_unflushed_bytes,
            self.config.retry_interval.map(|d| d.as_secs()),
            self.clients.iter().filter_map(Actor::core).count(),
            k.commands,
            k.completions,
            k.queue_full,
            k.connects,
            k.resumed,
            k.timeouts,
            k.failed_opens,
            k.messages,
            k.resubscribes,
            k.excused,
            k.ambiguous,
            k.crash_tainted,
            k.durable,
            k.crashes,
            k.restored,
            k.dropped,
            self.stored.len(),
            k.disk_commits,
            k.disk_failures,
            self.store.mode,
            self.store.stats.ops,
            self.store.stats.commits,
            self.store.stats.failures,
            s.store_failed_closes,
            self.store.stats.lost_ops,
            c.crashes,
            s.revived,
            s.vanished,
            s.lost_routes,
            s.restored,
            self.store.stats.held_back,
            self.store.stats.crashed_unrewritten,
            self.forgotten_ids,
            self.delivery.excused,
            self.durable_owed,
        );
        // The core clients' side of the run joins the trace: what they completed and received.
        let mut trace = self.trace.clone();
        for n in [
            k.commands,
            k.completions,
            k.queue_full,
            k.connects,
            k.messages,
            self.store.stats.commits,
            self.store.stats.failures,
            c.crashes,
            k.crashes,
            k.restored,
            k.disk_commits,
        ] {
            trace.u64(n);
        }
        SimReport {
            seed: self.seed,
            trace_hash: trace.finish(),
            violations: self.v.list.clone(),
            violation_count: self.v.total,
            mutation_fired: self.mutation_fired,
            mutation_repaired: k.lost_ack_resent > 0,
            summary,
        }
    }

    // ---- the event loop -------------------------------------------------------------------

    fn next_time(&self) -> u64 {
        let now = self.now;
        let mut t = u64::MAX;
        if let Some(at) = self.broker.poll_timeout() {
            t = t.min(at.as_millis());
        }
        for link in self.links.values() {
            if let Some(at) = link.next_due(now, self.down_until[link.actor]) {
                t = t.min(at);
            }
        }
        for (i, client) in self.clients.iter().enumerate() {
            if let Some(at) = client.next_wake() {
                t = t.min(at);
            }
            let unread = self.client_link[i]
                .and_then(|l| self.links.get(&l))
                .is_some_and(|l| l.inbox_new);
            if unread {
                t = t.min(client.paused_until().max(now));
            }
        }
        if let Some(at) = self.store.next_due(now) {
            t = t.min(at);
        }
        if let (Some(&at), Phase::Work { .. }) = (self.crashes.first(), self.phase) {
            t = t.min(at.max(now));
        }
        if let (Some(&(at, _)), Phase::Work { .. }) = (self.client_crashes.first(), self.phase) {
            t = t.min(at.max(now));
        }
        if let Some(at) = self.lose_at.into_iter().chain(self.lose_crash_by).min() {
            t = t.min(at.max(now));
        }
        match self.phase {
            Phase::Work { until } => t = t.min(until).min(self.next_fault),
            Phase::Settle { deadline, .. }
            | Phase::Probe { deadline }
            | Phase::Shutdown { deadline } => {
                t = t.min(deadline);
            }
        }
        if t == u64::MAX { now + 1_000 } else { t }
    }

    fn step(&mut self) {
        let now = self.now;
        // The in-flight window is a hard bound ([`BrokerConfig::max_inflight`]).
        for c in &self.clients {
            let inflight = self.broker.inflight_messages(c.client_id()).unwrap_or(0);
            if inflight > usize::from(self.config.max_inflight) {
                self.v.push(
                    now,
                    format!(
                        "{} has {inflight} messages in flight, above the window",
                        c.client_id()
                    ),
                );
            }
        }
        if self
            .broker
            .poll_timeout()
            .is_some_and(|at| at.as_millis() <= now)
        {
            self.feed(Input::Timeout);
        }
        let ids: Vec<usize> = self.links.keys().copied().collect();
        for id in ids {
            self.process_link(id);
        }
        for i in 0..self.clients.len() {
            self.process_client(i);
        }
        let working = matches!(self.phase, Phase::Work { .. });
        if let Some((seq, ok)) = self.store.finish_due(now) {
            self.trace.u64(now);
            self.trace.u64(6);
            self.trace.u64(seq);
            self.trace.u64(u64::from(ok));
            if self.verbose {
                eprintln!(
                    "{now:>9} store: commit up to {seq} {}",
                    if ok { "done" } else { "FAILED" }
                );
            }
            let result = if ok {
                Ok(())
            } else {
                Err(StoreFailure("simulated disk failure".into()))
            };
            self.feed(Input::StoreDone { seq, result });
        }
        self.store.start_if_idle(now, &mut self.rng, working);
        if working && self.crashes.first().is_some_and(|&at| now >= at) {
            self.crashes.remove(0);
            self.crash();
        }
        while working
            && self
                .client_crashes
                .first()
                .is_some_and(|&(at, _)| now >= at)
        {
            let (_, i) = self.client_crashes.remove(0);
            self.crash_client(i);
        }
        self.step_store_mutation();
        if working && !self.faults_off && now >= self.next_fault {
            self.fault();
            self.next_fault = now
                + self
                    .rng
                    .range(self.profile.fault_gap.0, self.profile.fault_gap.1);
        }
    }

    // ---- the broker, tapped ---------------------------------------------------------------

    /// Feeds one input to the broker, drains its outputs and checks them against the model.
    fn feed(&mut self, input: Input) {
        let now = self.now;
        self.model.now = now;
        let store_failed = matches!(&input, Input::StoreDone { result: Err(_), .. });
        let committed = match &input {
            Input::StoreDone {
                seq,
                result: Ok(()),
            } => Some(*seq),
            _ => None,
        };
        match &input {
            Input::Received { conn, data } => self.model.on_received(*conn, data, now, &mut self.v),
            Input::Timeout => self.model.on_timeout(now),
            Input::Closed { conn } => self.model.on_closed_input(*conn),
            _ => {}
        }
        let mut expected = self.model.take_ends();
        if let Err(e) = self.broker.handle_input(Instant::from_millis(now), input) {
            self.v
                .push(now, format!("broker refused an input as misuse: {e}"));
        }
        let (closes, ends) = self.drain();
        self.model.bound_holds(self.store.last_seq());
        if let Some(seq) = committed {
            self.model.committed(seq);
        }
        if store_failed {
            let durable = self.store.mode == Persistence::Durable;
            self.model.on_store_failed(&ends, durable, &mut self.v);
            expected.extend(self.model.take_ends());
        }
        let want: BTreeSet<ConnId> = expected
            .iter()
            .filter(|(_, cause)| cause.broker_closes())
            .map(|(c, _)| *c)
            .collect();
        let got: BTreeSet<ConnId> = closes.iter().copied().collect();
        if want != got {
            self.v.push(
                now,
                format!("broker closed {got:?}, the model expected {want:?} (ends {expected:?})"),
            );
        }
        for (conn, cause) in &expected {
            match ends.iter().find(|(c, _)| c == conn) {
                Some((_, reported)) if cause.agrees_with(reported) => {}
                Some((_, reported)) => self.v.push(
                    now,
                    format!("broker ended {conn:?} for {reported:?}, the model says {cause:?}"),
                ),
                None => self
                    .v
                    .push(now, format!("broker did not end {conn:?} ({cause:?})")),
            }
        }
        for (conn, reported) in &ends {
            if !expected.iter().any(|(c, _)| c == conn) {
                self.v.push(
                    now,
                    format!("broker ended {conn:?} ({reported:?}) unexpectedly"),
                );
            }
        }
        self.post_checks();
    }

    /// The broker's counters and timer against the model, after every input.
    fn post_checks(&mut self) {
        let now = self.now;
        let (conns, sessions, subs) = (
            self.broker.connection_count(),
            self.broker.session_count(),
            self.broker.subscription_count(),
        );
        let want = (
            self.model.open_count(),
            self.model.alive_count(),
            self.model.sub_count(),
        );
        if (conns, sessions, subs) != want {
            self.v.push(
                now,
                format!(
                    "broker holds {conns} connections, {sessions} sessions, {subs} subscriptions; \
                     the model {} / {} / {}",
                    want.0, want.1, want.2
                ),
            );
        }
        if let Some(deadline) = self.model.min_deadline() {
            let wake = self.broker.poll_timeout().map(Instant::as_millis);
            if wake.is_none_or(|w| w > deadline) {
                self.v.push(
                    now,
                    format!(
                        "a keep-alive or connect deadline is due at {deadline} but the broker \
                         asks to be woken at {wake:?}"
                    ),
                );
            }
        }
    }

    fn drain(&mut self) -> (Vec<ConnId>, Vec<(ConnId, DisconnectCause)>) {
        let now = self.now;
        let mut closes = Vec::new();
        let mut ends = Vec::new();
        while let Some(output) = self.broker.poll_output() {
            self.trace.u64(now);
            match output {
                Output::Transmit { conn, data } => {
                    self.trace.u64(1);
                    self.trace.u64(conn.get());
                    self.trace.bytes(&data);
                    self.model.on_transmit(conn, &data, now, &mut self.v);
                    self.transmit_into_socket(conn, data);
                }
                Output::Close { conn } => {
                    if self.verbose {
                        eprintln!("{now:>9} c{} <- CLOSE", conn.get());
                    }
                    self.trace.u64(2);
                    self.trace.u64(conn.get());
                    closes.push(conn);
                    if let Some(link) = self
                        .conn_links
                        .get(&conn)
                        .and_then(|l| self.links.get_mut(l))
                    {
                        link.broker_fin = true;
                        link.broker_open = false;
                    }
                }
                Output::Event(event) => {
                    if self.verbose {
                        eprintln!("{now:>9} event {event:?}");
                    }
                    self.trace.u64(3);
                    self.trace.bytes(format!("{event:?}").as_bytes());
                    match event {
                        Event::Disconnected { conn, cause, .. } => ends.push((conn, cause)),
                        Event::MessagesDropped { client_id, total } => self.v.push(
                            now,
                            format!("broker dropped messages for {} ({total} so far) below its queue limits", client_id.as_str()),
                        ),
                        _ => {}
                    }
                }
                Output::Authenticate(request) => {
                    self.v.push(
                        now,
                        format!("broker asked to authenticate under AllowAll: {request:?}"),
                    );
                }
                Output::Store { seq, op } => {
                    self.trace.u64(4);
                    self.trace.u64(seq);
                    trace_op(&mut self.trace, &op);
                    if self.store.mode == Persistence::Off {
                        self.v.push(
                            now,
                            format!("broker emitted store operation {seq} with persistence off"),
                        );
                        continue;
                    }
                    let owner = match &op {
                        StoreOp::PutSession(s) => self.model.live_inc(s.client_id.as_str()),
                        _ => None,
                    };
                    if let Err(e) = self.store.on_output(seq, op, owner) {
                        self.v.push(now, format!("broker: {e}"));
                    }
                }
            }
        }
        // What one input emitted is one atomic group.
        self.store.end_group();
        (closes, ends)
    }

    // ---- persistence: crash and restore ----------------------------------------------------

    /// The broker crashes: it is dropped with everything not committed, every connection
    /// breaks (each client hears a reset), and a new broker with the same configuration
    /// restores what the disk holds, at the same virtual time. The model becomes what was
    /// committed ([`Model::crash`]).
    fn crash(&mut self) {
        let now = self.now;
        self.counters.crashes += 1;
        if self.verbose {
            eprintln!("{now:>9} fault: BROKER CRASH");
        }
        self.trace.u64(now);
        self.trace.u64(5);
        let ids: Vec<usize> = self.links.keys().copied().collect();
        for id in ids {
            let told = now + self.rng.range(0, 300);
            if let Some(link) = self.links.get_mut(&id) {
                // The broker side is simply gone: no Close, no Closed.
                link.broker_open = false;
                link.conn = None;
                link.phantom_flushed = 0;
                link.reset(now, told);
            }
        }
        self.conn_links.clear();
        let restart = self.store.crash(&mut self.rng);
        // Reached the client (its bytes, whatever its application made of them): not lost.
        let delivered: BTreeSet<(u32, Uid)> = self
            .receipts
            .iter()
            .filter(|r| !r.retain)
            .filter_map(|r| Some((r.inc, r.uid?)))
            .chain(
                self.clients
                    .iter()
                    .filter_map(Actor::core)
                    .flat_map(CoreSimClient::undecided),
            )
            .collect();
        self.model.now = now;
        let durable = self.store.mode == Persistence::Durable;
        let changed = self
            .model
            .crash(&restart, &delivered, &self.acked, durable, &mut self.v);
        if self.store.mode == Persistence::Periodic {
            for core in self.clients.iter_mut().filter_map(Actor::core_mut) {
                if let Some(filters) = changed.get(&core.client_id) {
                    core.session_changed_by_crash(filters);
                }
            }
        }
        self.broker = Broker::new(self.config.clone(), Instant::from_millis(now));
        let report = self.broker.restore(restart.snapshot);
        if self.verbose {
            eprintln!("{now:>9} restored: {report:?}");
        }
        for n in [
            report.sessions,
            report.subscriptions,
            report.deliveries,
            report.retained,
            report.discarded,
        ] {
            self.trace.u64(n as u64);
        }
        if restart.consistent && report.discarded > 0 {
            self.v.push(
                now,
                format!(
                    "restoring a consistent disk discarded {} records: {report:?}",
                    report.discarded
                ),
            );
        }
        let (closes, ends) = self.drain();
        if !closes.is_empty() || !ends.is_empty() {
            self.v.push(
                now,
                format!("a restored broker closed {closes:?} / ended {ends:?} with no connection"),
            );
        }
        self.post_checks();
    }

    /// A durable core client's process crashes: its connection goes as the kernel closes the
    /// socket of a dead process (FIN after what it wrote, or a reset), and it restarts from its
    /// disk at once ([`CoreSimClient::crash`]).
    fn crash_client(&mut self, i: usize) {
        let now = self.now;
        if !self.clients[i]
            .core()
            .is_some_and(CoreSimClient::is_durable)
        {
            return;
        }
        if self.verbose {
            eprintln!("{now:>9} fault: CLIENT {i} PROCESS CRASH");
        }
        self.trace.u64(now);
        self.trace.u64(7);
        self.trace.u64(i as u64);
        if let Some(link) = self.client_link[i]
            .take()
            .and_then(|l| self.links.get_mut(&l))
        {
            link.attached = false;
            if self.rng.chance(500) {
                link.client_fin = true;
            } else if link.reset.is_none() {
                let told = now + self.rng.range(0, 300);
                link.reset(told, now);
            }
        }
        let mut ctx = Ctx::new(now);
        if let Some(core) = self.clients[i].core_mut() {
            core.crash(&mut ctx);
        }
        self.apply(i, ctx, None);
    }

    /// Mutation `StoreLosesCommit`: at `lose_at` the store starts looking for a commit with a
    /// QoS 1/2 delivery to the watcher, which is partitioned from then on (so it cannot receive
    /// that delivery before the crash), and every other fault stops; that commit is reported
    /// done but never applied. The broker crashes once the publisher of a lost message has its
    /// acknowledgement (or 30 s after the loss): the durability check must miss the message.
    fn step_store_mutation(&mut self) {
        let now = self.now;
        if self.lose_at.is_some_and(|at| now >= at) {
            self.lose_at = None;
            self.faults_off = true;
            self.next_fault = u64::MAX;
            for (i, down) in self.down_until.iter_mut().enumerate() {
                *down = if i == self.watcher { u64::MAX / 2 } else { 0 };
            }
            for c in &mut self.clients {
                c.pause_until(now);
            }
            let watcher = self.clients[self.watcher].client_id().to_owned();
            self.store.lose_next_commit_for(&watcher);
            if self.verbose {
                eprintln!("{now:>9} MUTATION: the store will lose a commit for {watcher}");
            }
        }
        let Some(targets) = &self.store.lost_targets else {
            return;
        };
        if !self.mutation_fired {
            self.mutation_fired = true;
            self.lose_crash_by = Some(now + 30_000);
            if self.verbose {
                eprintln!("{now:>9} MUTATION: lost a commit with {targets:?}");
            }
        }
        let acked = targets.iter().any(|u| self.acked.contains_key(u));
        if self.lose_crash_by.is_some_and(|by| acked || now >= by) {
            self.lose_crash_by = None;
            self.lose_done = true;
            self.down_until[self.watcher] = 0;
            self.crash();
        }
    }

    /// A Transmit goes into the connection's socket buffer (what the kernel would hold).
    fn transmit_into_socket(&mut self, conn: ConnId, data: Bytes) {
        let now = self.now;
        let Some(link) = self
            .conn_links
            .get(&conn)
            .and_then(|l| self.links.get_mut(l))
        else {
            self.v.push(
                now,
                format!("broker transmitted on {conn:?} after it was closed"),
            );
            return;
        };
        if !link.broker_open {
            self.v.push(
                now,
                format!("broker transmitted on {conn:?} after it was closed"),
            );
            return;
        }
        if link.reset.is_some() {
            return; // The socket is broken; the broker will hear of it.
        }
        let mut data = data;
        let actor = link.actor;
        let version = self.clients[actor].version();
        let mutation = self.mutation;
        let target = match mutation {
            Mutation::DropPublishToSubscriber => actor == self.watcher,
            Mutation::DropPubAckToCoreClient => self.clients[actor].core().is_some(),
            Mutation::None | Mutation::DropPubAckToBroker | Mutation::StoreLosesCommit => false,
        };
        if self.mutation_armed && target {
            let doomed = |packet: &Packet| match packet {
                Packet::Publish(p) => {
                    mutation == Mutation::DropPublishToSubscriber
                        && p.qos != QoS::AtMostOnce
                        && !p.dup
                }
                Packet::PubAck(_) => mutation == Mutation::DropPubAckToCoreClient,
                _ => false,
            };
            if let Some((kept, dropped, packet)) = without_first(&data, version, doomed) {
                if self.verbose {
                    eprintln!(
                        "{now:>9} MUTATION: dropped {} to client {actor} on {conn:?}",
                        super::model::brief(&packet)
                    );
                }
                if let (Packet::PubAck(ack), Some(core)) = (&packet, self.clients[actor].core_mut())
                {
                    core.ack_lost(ack.packet_id.get());
                }
                data = kept;
                link.phantom_flushed += dropped;
                self.mutation_armed = false;
                self.mutation_fired = true;
            }
        }
        link.socket.extend_from_slice(&data);
    }

    fn open_at_broker(&mut self, id: usize) -> Option<ConnId> {
        let now = self.now;
        let conn = self.broker.open_connection(Instant::from_millis(now), None);
        self.model.on_open(conn, now);
        self.conn_links.insert(conn, id);
        self.counters.connections += 1;
        let link = self.links.get_mut(&id)?;
        link.conn = Some(conn);
        link.broker_open = true;
        // A core client learns that its connect() succeeded when the SYN-ACK arrives.
        let (actor, established) = (link.actor, now + link.latency_ms());
        if self.client_link[actor] == Some(id)
            && let Some(core) = self.clients[actor].core_mut()
        {
            core.transport_accepted(established);
        }
        self.post_checks();
        Some(conn)
    }

    // ---- links and clients ----------------------------------------------------------------

    fn process_link(&mut self, id: usize) {
        let now = self.now;
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let actor = link.actor;
        if let Some(mut reset) = link.reset {
            let mut tell_broker = None;
            let mut tell_client = false;
            if reset.broker_at.is_some_and(|t| t <= now) {
                reset.broker_at = None;
                tell_broker = link.conn.filter(|_| link.broker_open);
            }
            if reset.client_at.is_some_and(|t| t <= now) {
                reset.client_at = None;
                tell_client = link.attached;
            }
            link.reset = (reset.broker_at.is_some() || reset.client_at.is_some()).then_some(reset);
            if let Some(conn) = tell_broker {
                link.broker_open = false;
                self.feed(Input::Closed { conn });
            }
            if tell_client {
                self.client_lost(actor, id);
            }
        }
        loop {
            let down = self.down_until[actor];
            let Some(link) = self.links.get_mut(&id) else {
                return;
            };
            let Some(data) = link.pop_to_broker(now, down) else {
                break;
            };
            let conn = match link.conn {
                Some(conn) => Some(conn),
                None => self.open_at_broker(id),
            };
            let open = self.links.get(&id).is_some_and(|l| l.broker_open);
            if let (Some(conn), true, false) = (conn, open, data.is_empty()) {
                self.feed(Input::Received { conn, data });
            }
        }
        let down = self.down_until[actor];
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        if link.eof_due_at_broker() {
            link.broker_open = false;
            if let Some(conn) = link.conn {
                self.feed(Input::Closed { conn });
            }
        }
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        link.arrive_at_client(now, down);
        let took = link.flush_socket(now, &mut self.rng);
        if !link.socket.is_empty() {
            self.counters.stalls += 1;
        }
        let flushed = took + core::mem::take(&mut link.phantom_flushed);
        if flushed > 0
            && link.broker_open
            && let Some(conn) = link.conn
        {
            self.feed(Input::Flushed {
                conn,
                bytes: flushed,
            });
        }
        if self.links.get(&id).is_some_and(Link::eof_due_at_client) {
            self.client_lost(actor, id);
        }
        if self.links.get(&id).is_some_and(Link::is_dead)
            && let Some(conn) = self.links.remove(&id).and_then(|l| l.conn)
        {
            self.conn_links.remove(&conn);
        }
    }

    /// The client's connection ended under it (EOF or reset).
    fn client_lost(&mut self, actor: usize, id: usize) {
        if let Some(link) = self.links.get_mut(&id) {
            link.attached = false;
        }
        if self.client_link[actor] == Some(id) {
            self.client_link[actor] = None;
            let mut ctx = Ctx::new(self.now);
            self.clients[actor].on_closed(&mut ctx);
            self.apply(actor, ctx, None);
        }
    }

    fn process_client(&mut self, i: usize) {
        let now = self.now;
        if let Some(id) = self.client_link[i] {
            let reads = self.clients[i].paused_until() <= now;
            if let Some(link) = self.links.get_mut(&id).filter(|l| l.inbox_new && reads) {
                link.inbox_new = false;
                let mut ctx = Ctx::new(now);
                match &mut self.clients[i] {
                    Actor::Hand(client) => {
                        let mut buf = core::mem::take(&mut link.read_buf);
                        buf.extend_from_slice(&link.inbox);
                        link.inbox.clear();
                        client.on_data(&mut ctx, &mut buf);
                        if let Some(link) = self.links.get_mut(&id) {
                            link.read_buf = buf;
                        }
                    }
                    // The core client keeps partial packets itself: it reads everything.
                    Actor::Core(client) => {
                        let inc = link.conn.and_then(|c| self.model.inc_of(c));
                        client.on_data(&mut ctx, link.inbox.split().freeze(), link.conn, inc);
                    }
                }
                self.apply(i, ctx, Some(id));
            }
        }
        if self.clients[i].next_wake().is_some_and(|t| t <= now) {
            let mut ctx = Ctx::new(now);
            self.clients[i].on_timer(&mut ctx);
            self.apply(i, ctx, None);
        }
    }

    /// Carries out what a client asked for and records what it noted.
    fn apply(&mut self, i: usize, ctx: Ctx, from: Option<usize>) {
        let now = self.now;
        for note in ctx.notes {
            match note {
                Note::Receipt {
                    publish,
                    app_new,
                    mut app_level,
                    via,
                } => {
                    let via = via.or_else(|| {
                        let conn = from.and_then(|l| self.links.get(&l))?.conn?;
                        Some((conn, self.model.inc_of(conn)?))
                    });
                    let Some((conn, inc)) = via else {
                        self.v.push(
                            now,
                            format!(
                                "{} got a PUBLISH on a connection without a session",
                                self.clients[i].client_id()
                            ),
                        );
                        continue;
                    };
                    if let (QoS::ExactlyOnce, false, Some(id)) =
                        (publish.qos, publish.dup, publish.packet_id)
                        && self.model.take_forgotten(inc, id.get())
                        && !app_new
                    {
                        // A periodic-mode crash forgot the exchange that last used this
                        // identifier, so the client still holds it and took the new message
                        // for a duplicate: judged by its bytes.
                        app_level = false;
                        self.forgotten_ids += 1;
                    }
                    self.receipts.push(Receipt {
                        inc,
                        conn,
                        client_id: self.clients[i].client_id().to_owned(),
                        at: now,
                        uid: Uid::parse(&publish.payload),
                        topic: publish.topic.as_str().to_owned(),
                        payload: publish.payload,
                        qos: publish.qos,
                        dup: publish.dup,
                        retain: publish.retain,
                        app_new,
                        app_level,
                    });
                }
                Note::Acked(uid) => {
                    self.acked.entry(uid).or_insert(now);
                }
                Note::Stored(uid) => {
                    self.stored.entry(uid).or_insert(now);
                }
                Note::Published => self.counters.published += 1,
                Note::Problem(what) => {
                    self.v
                        .push(now, format!("{}: {what}", self.clients[i].client_id()));
                }
            }
        }
        for action in ctx.actions {
            if self.verbose && !matches!(action, Action::Write(_)) {
                eprintln!(
                    "{now:>9} client {} ({}): {action:?}",
                    i,
                    self.clients[i].client_id()
                );
            }
            match action {
                Action::Open => {
                    if let Some(link) = self.client_link[i]
                        .take()
                        .and_then(|l| self.links.get_mut(&l))
                    {
                        link.attached = false;
                    }
                    if self.clients[i].core().is_some() && self.down_until[i] > now {
                        // connect() under a partition fails after a while.
                        let at = now + self.rng.range(500, 5_000);
                        if let Some(core) = self.clients[i].core_mut() {
                            core.transport_failed(at);
                        }
                        continue;
                    }
                    let params = self.link_params();
                    let id = self.next_link;
                    self.next_link += 1;
                    let mut link = Link::new(i, params);
                    link.syn(now, &mut self.rng);
                    self.links.insert(id, link);
                    self.client_link[i] = Some(id);
                }
                Action::Write(data) => {
                    let Some(link) = self.client_link[i].and_then(|l| self.links.get_mut(&l))
                    else {
                        continue;
                    };
                    let is_puback = data.first().is_some_and(|b| b >> 4 == 4);
                    if self.mutation_armed
                        && self.mutation == Mutation::DropPubAckToBroker
                        && i == self.watcher
                        && is_puback
                    {
                        if self.verbose {
                            eprintln!("{now:>9} MUTATION: dropped a PUBACK from the watcher");
                        }
                        self.mutation_armed = false;
                        self.mutation_fired = true;
                        // A PINGREQ in its place: the watcher believes it just spoke, and without
                        // it the broker's keep-alive could close the connection and the resend
                        // on resume would repair the loss before the checker sees it.
                        link.client_write(now, Bytes::from_static(&[0xc0, 0x00]), &mut self.rng);
                        continue;
                    }
                    link.client_write(now, data, &mut self.rng);
                }
                Action::Fin => {
                    if let Some(link) = self.client_link[i]
                        .take()
                        .and_then(|l| self.links.get_mut(&l))
                    {
                        link.client_fin = true;
                        link.attached = false;
                    }
                }
                Action::Abandon => {
                    if let Some(link) = self.client_link[i]
                        .take()
                        .and_then(|l| self.links.get_mut(&l))
                    {
                        link.attached = false;
                    }
                }
            }
        }
    }

    fn link_params(&mut self) -> LinkParams {
        let latency_ms = self
            .rng
            .range(self.profile.latency.0, self.profile.latency.1);
        LinkParams {
            latency_ms,
            jitter_ms: self.rng.below(latency_ms / 2 + 1),
            max_chunk: if self.rng.chance(200) {
                self.rng.range(1, 8) as usize
            } else {
                self.rng.range(16, 1_500) as usize
            },
            window: self.rng.range(self.profile.window.0, self.profile.window.1) as usize,
        }
    }

    // ---- faults and phases ----------------------------------------------------------------

    fn fault(&mut self) {
        let now = self.now;
        let w = self.profile.weights;
        let total: u64 = w.iter().sum();
        if total == 0 {
            return;
        }
        let mut r = self.rng.below(total);
        let kind = w.iter().position(|&x| {
            if r < x {
                true
            } else {
                r -= x;
                false
            }
        });
        let candidates = self.clients.len() as u64;
        match kind {
            Some(0) => {
                let live: Vec<usize> = self
                    .links
                    .iter()
                    .filter(|(_, l)| (l.attached || l.broker_open) && l.reset.is_none())
                    .map(|(&id, _)| id)
                    .collect();
                if live.is_empty() {
                    return;
                }
                let id = *self.rng.pick(&live);
                let (b, c) = (self.rng.range(0, 300), self.rng.range(0, 300));
                if let Some(link) = self.links.get_mut(&id) {
                    if self.verbose {
                        eprintln!(
                            "{now:>9} fault: reset link of {:?} (client {})",
                            link.conn, link.actor
                        );
                    }
                    link.reset(now + b, now + c);
                    self.counters.resets += 1;
                }
            }
            Some(1) => {
                let actor = self.rng.below(candidates) as usize;
                let until = now + self.rng.range(500, 40_000);
                self.down_until[actor] = self.down_until[actor].max(until);
                if self.verbose {
                    eprintln!("{now:>9} fault: client {actor} partitioned until {until}");
                }
                self.counters.partitions += 1;
            }
            Some(2) => {
                let actor = self.rng.below(candidates) as usize;
                let until = now + self.rng.range(200, 15_000);
                self.clients[actor].pause_until(until);
                if self.verbose {
                    eprintln!(
                        "{now:>9} fault: client {actor} stops reading until {}",
                        self.clients[actor].paused_until()
                    );
                }
                self.counters.pauses += 1;
            }
            Some(3) => {
                self.jump_to = Some(now + self.rng.range(5_000, 120_000));
                if self.verbose {
                    eprintln!("{now:>9} fault: clock jumps to {:?}", self.jump_to);
                }
                self.counters.jumps += 1;
            }
            _ => {}
        }
    }

    fn set_mode_all(&mut self, mode: Mode) {
        for i in 0..self.clients.len() {
            let mut ctx = Ctx::new(self.now);
            self.clients[i].set_mode(&mut ctx, mode);
            self.apply(i, ctx, None);
        }
    }

    /// Moves to the next phase when this one is done; true when the run is over.
    fn advance_phase(&mut self) -> bool {
        let now = self.now;
        match self.phase {
            Phase::Work { until } if now >= until => {
                // A crash a clock jump skipped over does not happen.
                self.crashes.clear();
                self.client_crashes.clear();
                let watcher_down = self.down_until[self.watcher];
                self.down_until.iter_mut().for_each(|d| *d = 0);
                if self.mutation == Mutation::StoreLosesCommit && !self.lose_done {
                    // The watcher stays away until the crash the mutation waits for.
                    self.down_until[self.watcher] = watcher_down;
                }
                self.set_mode_all(Mode::Settle);
                self.phase = Phase::Settle {
                    final_sent: false,
                    deadline: now + PHASE_LIMIT_MS,
                };
            }
            Phase::Work { .. } => {}
            Phase::Settle {
                final_sent,
                deadline,
            } => {
                let settled = self.settled();
                if settled && !final_sent {
                    for i in 0..self.clients.len() {
                        let mut ctx = Ctx::new(now);
                        self.clients[i].final_round(&mut ctx);
                        self.apply(i, ctx, None);
                    }
                    self.mutation_armed = self.mutation != Mutation::None;
                    self.phase = Phase::Settle {
                        final_sent: true,
                        deadline: now + PHASE_LIMIT_MS,
                    };
                } else if settled || now >= deadline {
                    if !settled {
                        let why = self.unsettled();
                        self.v.push(
                            now,
                            format!(
                                "not drained {PHASE_LIMIT_MS} ms after the workload stopped: {why}"
                            ),
                        );
                    }
                    self.check_deliveries();
                    self.start_probe();
                }
            }
            Phase::Probe { deadline } => {
                let settled = self.settled();
                if settled || now >= deadline {
                    if !settled {
                        let why = self.unsettled();
                        self.v
                            .push(now, format!("retained probe did not settle: {why}"));
                    }
                    self.check_retained();
                    self.set_mode_all(Mode::Off);
                    self.phase = Phase::Shutdown {
                        deadline: now + PHASE_LIMIT_MS,
                    };
                }
            }
            Phase::Shutdown { deadline } => {
                let done = self.links.is_empty()
                    && self.clients.iter().all(Actor::is_off)
                    && self.store.is_idle();
                if done || now >= deadline {
                    if !done {
                        self.v.push(
                            now,
                            format!(
                                "connections still open at shutdown: {} links",
                                self.links.len()
                            ),
                        );
                    }
                    self.final_checks();
                    return true;
                }
            }
        }
        false
    }

    /// Every client that should be connected is, with nothing in flight anywhere: the broker's
    /// queues and in-flight windows are empty and no link carries anything.
    fn settled(&self) -> bool {
        self.store.is_idle()
            && self.broker.pending_acks() == 0
            && self.clients.iter().all(Actor::is_settled)
            && self.links.values().all(|l| l.attached && l.is_quiet())
            && self.clients.iter().all(|c| {
                self.broker.queued_messages(c.client_id()).unwrap_or(0) == 0
                    && self.broker.inflight_messages(c.client_id()).unwrap_or(0) == 0
            })
    }

    fn unsettled(&self) -> String {
        let mut out = Vec::new();
        if !self.store.is_idle() || self.broker.pending_acks() > 0 {
            out.push(format!(
                "[store busy, {} acknowledgements waiting]",
                self.broker.pending_acks()
            ));
        }
        for c in &self.clients {
            let queued = self.broker.queued_messages(c.client_id());
            let inflight = self.broker.inflight_messages(c.client_id());
            if !c.is_settled() || queued.unwrap_or(0) > 0 || inflight.unwrap_or(0) > 0 {
                out.push(format!(
                    "[{} broker queued={queued:?} inflight={inflight:?}]",
                    c.describe()
                ));
            }
        }
        for link in self
            .links
            .values()
            .filter(|l| !(l.attached && l.is_quiet()))
        {
            out.push(format!("[busy link: {}]", link.describe()));
        }
        out.join(" ")
    }

    fn check_deliveries(&mut self) {
        let alive = self.model.alive_incs();
        let durable = self.store.mode == Persistence::Durable;
        self.delivery = checker::check_deliveries(
            &self.model,
            &self.receipts,
            &self.acked,
            &alive,
            durable,
            self.now,
            &mut self.v,
        );
        // A message a core client's disk committed is owed like an acknowledged one: it must
        // reach the broker (the client resends it after any crash), and its subscribers.
        let mut owed = self.acked.clone();
        for (uid, &at) in &self.stored {
            if !self.model.messages.contains_key(uid) && !self.model.swallowed.contains(uid) {
                self.v.push(
                    self.now,
                    format!(
                        "{uid} was stored by its publisher's disk at {at} ms but never reached \
                         the broker"
                    ),
                );
            }
            owed.entry(*uid).or_insert(self.now);
        }
        if durable {
            self.durable_owed = checker::check_durability(
                &self.model,
                &self.receipts,
                &owed,
                &alive,
                self.now,
                &mut self.v,
            );
        }
        for client in self.clients.iter().filter_map(Actor::core) {
            checker::check_core_client(&self.model, client, self.now, &mut self.v);
        }
    }

    fn start_probe(&mut self) {
        let index = self.clients.len();
        let fork = self.rng.fork();
        let mut probe = SimClient::new(
            index,
            "probe".into(),
            Role::Probe,
            ProtocolVersion::V3_1_1,
            30,
            false,
            (1_000, 2_000),
            self.now,
            fork,
        );
        let mut ctx = Ctx::new(self.now);
        probe.set_mode(&mut ctx, Mode::Settle);
        self.clients.push(Actor::Hand(Box::new(probe)));
        self.client_link.push(None);
        self.down_until.push(0);
        self.apply(index, ctx, None);
        self.probe = Some(index);
        self.phase = Phase::Probe {
            deadline: self.now + PHASE_LIMIT_MS,
        };
    }

    fn check_retained(&mut self) {
        let Some(probe) = self.probe else {
            return;
        };
        let probe_id = self.clients[probe].client_id();
        let mine: Vec<&Receipt> = self
            .receipts
            .iter()
            .filter(|r| r.client_id == probe_id)
            .collect();
        checker::check_retained(&self.model, &mine, self.now, &mut self.v);
    }

    /// Bounded memory: once everyone has disconnected, the broker holds exactly the persistent
    /// sessions with their subscriptions, and nothing queued or in flight.
    fn final_checks(&mut self) {
        let now = self.now;
        if self.broker.connection_count() != 0 {
            self.v.push(
                now,
                format!(
                    "{} connections left after everyone disconnected",
                    self.broker.connection_count()
                ),
            );
        }
        self.post_checks();
        let persistent: Vec<String> = self
            .model
            .incs
            .values()
            .filter(|i| i.alive)
            .map(|i| i.client_id.clone())
            .collect();
        for client_id in persistent {
            let queued = self.broker.queued_messages(&client_id);
            let inflight = self.broker.inflight_messages(&client_id);
            if queued != Some(0) || inflight != Some(0) {
                self.v.push(
                    now,
                    format!(
                        "session {client_id} ends with queued={queued:?} inflight={inflight:?}"
                    ),
                );
            }
        }
        for inc in self
            .model
            .incs
            .values()
            .filter(|i| i.alive && !i.persistent)
        {
            self.v.push(
                now,
                format!("clean session {} outlived its connection", inc.client_id),
            );
        }
        if self.store.mode != Persistence::Off {
            self.check_disk();
        }
    }

    /// Once everything is committed and everyone has left, the disk holds exactly the
    /// persistent sessions with their subscriptions and QoS 2 identifiers awaiting release, the
    /// retained messages, and nothing queued or in flight.
    fn check_disk(&mut self) {
        let now = self.now;
        let disk = self.store.disk().snapshot();
        let want: BTreeMap<String, BTreeMap<String, QoS>> = self
            .model
            .incs
            .values()
            .filter(|i| i.alive && i.persistent)
            .map(|i| (i.client_id.clone(), i.subs.clone()))
            .collect();
        let got: BTreeMap<String, BTreeMap<String, QoS>> = disk
            .sessions
            .iter()
            .map(|s| {
                let subs = s
                    .subscriptions
                    .iter()
                    .map(|(f, o)| (f.as_str().to_owned(), o.qos))
                    .collect();
                (s.client_id.as_str().to_owned(), subs)
            })
            .collect();
        if want != got {
            self.v.push(
                now,
                format!("the disk's sessions {got:?} are not the persistent sessions {want:?}"),
            );
        }
        if !disk.deliveries.is_empty() || !disk.messages.is_empty() {
            self.v.push(
                now,
                format!(
                    "the disk still holds {} deliveries and {} messages after everything was \
                     delivered",
                    disk.deliveries.len(),
                    disk.messages.len(),
                ),
            );
        }
        // QoS 2 identifiers awaiting release: normally none by now, but a periodic crash can
        // bring back one whose PUBREL was answered (the model restored it too).
        let want: BTreeSet<(String, u16)> = self
            .model
            .incs
            .values()
            .filter(|i| i.alive && i.persistent)
            .flat_map(|i| {
                i.awaiting_release
                    .iter()
                    .map(|&id| (i.client_id.clone(), id))
            })
            .collect();
        let got: BTreeSet<(String, u16)> = disk
            .release_ids
            .iter()
            .map(|(c, id)| (c.as_str().to_owned(), id.get()))
            .collect();
        if want != got {
            self.v.push(
                now,
                format!("the disk holds QoS 2 identifiers {got:?}, the sessions {want:?}"),
            );
        }
        let retained: BTreeMap<String, (bytes::Bytes, QoS)> = disk
            .retained
            .iter()
            .map(|m| (m.topic.as_str().to_owned(), (m.payload.clone(), m.qos)))
            .collect();
        if retained != self.model.retained {
            self.v.push(
                now,
                format!(
                    "the disk's retained messages ({} topics) are not the last retained publishes \
                     ({} topics)",
                    retained.len(),
                    self.model.retained.len()
                ),
            );
        }
    }
}

/// Mixes a store operation's kind and key into the trace.
fn trace_op(trace: &mut TraceHash, op: &StoreOp) {
    let (kind, client, n) = match op {
        StoreOp::Clear => (0, None, 0),
        StoreOp::PutSession(s) => (1, Some(&s.client_id), s.subscriptions.len() as u64),
        StoreOp::DeleteSession { client_id } => (2, Some(client_id), 0),
        StoreOp::PutMessage { id, .. } => (3, None, *id),
        StoreOp::DeleteMessage { id } => (4, None, *id),
        StoreOp::PutDelivery(d) => (5, Some(&d.client_id), d.seq),
        StoreOp::DeleteDelivery { client_id, seq } => (6, Some(client_id), *seq),
        StoreOp::PutReleaseId {
            client_id,
            packet_id,
        } => (7, Some(client_id), u64::from(packet_id.get())),
        StoreOp::DeleteReleaseId {
            client_id,
            packet_id,
        } => (8, Some(client_id), u64::from(packet_id.get())),
        StoreOp::PutRetained(m) => (9, None, m.payload.len() as u64),
        StoreOp::DeleteRetained { .. } => (10, None, 0),
    };
    trace.u64(kind);
    trace.u64(n);
    if let Some(client) = client {
        trace.bytes(client.as_str().as_bytes());
    }
}

/// `data` (whole packets) without its first packet that is `doomed`, the bytes removed, and that
/// packet.
fn without_first(
    data: &Bytes,
    version: ProtocolVersion,
    doomed: impl Fn(&Packet) -> bool,
) -> Option<(Bytes, usize, Packet)> {
    let mut at = 0;
    while at < data.len() {
        let rest = data.slice(at..);
        let Ok(Decoded::Packet { packet, consumed }) = decode(&rest, version, MAX_PACKET_SIZE)
        else {
            return None;
        };
        if doomed(&packet) {
            let mut kept = BytesMut::with_capacity(data.len() - consumed);
            kept.extend_from_slice(&data[..at]);
            kept.extend_from_slice(&data[at + consumed..]);
            return Some((kept.freeze(), consumed, packet));
        }
        at += consumed;
    }
    None
}
