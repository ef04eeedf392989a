//! The deterministic simulation (DESIGN.md, "Testing layers", item 2): many seeded worlds of one
//! broker, several MQTT 3.1 / 3.1.1 clients (hand-written on the codec, and driven by the core
//! `Client` state machine), a hostile simulated network and, in most worlds, persistence with a
//! simulated disk (delays, failed commits) and broker crashes, each checked against the
//! reference model. See `surgemq_tests::sim` for the world and the invariants.
//!
//! `SIM_SEED=<n>` replays one seed; `SIM_SEEDS=<n>` runs seeds `0..n` (default 50 in debug
//! builds, 300 in release); `SIM_VERBOSE=1` prints every packet of the run.

use surgemq_tests::sim::{self, Mutation, SimOptions, SimReport};

fn default_seed_count() -> u64 {
    if cfg!(debug_assertions) { 50 } else { 300 }
}

fn describe(report: &SimReport) -> String {
    let mut out = format!(
        "seed {} FAILED ({} violations; replay with SIM_SEED={} SIM_VERBOSE=1)\n  {}\n",
        report.seed, report.violation_count, report.seed, report.summary
    );
    for v in &report.violations {
        out.push_str("  - ");
        out.push_str(v);
        out.push('\n');
    }
    out
}

#[test]
fn sim_seeds_hold_every_invariant() {
    let seeds = sim::seeds_from_env(default_seed_count());
    let reports = sim::run_many(&seeds, &SimOptions::default());
    let mut failures = String::new();
    for report in &reports {
        println!(
            "sim seed={} hash={:016x} {}",
            report.seed, report.trace_hash, report.summary
        );
        if !report.passed() {
            failures.push_str(&describe(report));
        }
    }
    assert!(
        failures.is_empty(),
        "simulation found violations:\n{failures}"
    );
}

#[test]
fn sim_same_seed_gives_the_same_trace_hash() {
    let options = SimOptions {
        verbose: false,
        ..SimOptions::default()
    };
    // 3 and 17: durable with crashes; 20: durable with failed commits and crashes; 48:
    // periodic with failed commits and crashes.
    for seed in [3, 17, 20, 48] {
        let first = sim::run(seed, &options);
        let second = sim::run(seed, &options);
        assert_eq!(
            first.trace_hash, second.trace_hash,
            "seed {seed} did not replay"
        );
        assert_eq!(first.summary, second.summary, "seed {seed} did not replay");
    }
    assert_ne!(
        sim::run(3, &options).trace_hash,
        sim::run(4, &options).trace_hash
    );
}

/// A simulation that cannot fail proves nothing: with the network silently losing one message,
/// every seed must report a violation.
fn mutant_is_caught(mutation: Mutation, expect: &str) {
    let options = SimOptions {
        mutation,
        verbose: false,
    };
    for seed in 0..6 {
        let report = sim::run_catching(seed, &options);
        assert!(
            report.mutation_fired,
            "seed {seed}: the mutation never applied"
        );
        assert!(
            !report.passed(),
            "seed {seed}: {mutation:?} went unnoticed\n  {}",
            report.summary
        );
        assert!(
            report.violations.iter().any(|v| v.contains(expect)),
            "seed {seed}: {mutation:?} not reported as {expect:?}: {:#?}",
            report.violations
        );
    }
}

#[test]
fn sim_checker_catches_a_publish_lost_on_the_way_to_a_subscriber() {
    mutant_is_caught(Mutation::DropPublishToSubscriber, "never got");
}

#[test]
fn sim_checker_catches_a_puback_lost_on_the_way_to_the_broker() {
    mutant_is_caught(Mutation::DropPubAckToBroker, "not drained");
}

#[test]
fn sim_checker_catches_an_acknowledged_message_a_crash_lost() {
    // The store reports a commit done without applying it, then the broker crashes: a message
    // its publisher saw acknowledged never reaches the (persistent) watcher.
    mutant_is_caught(Mutation::StoreLosesCommit, "lost an acknowledged message");
}

#[test]
fn sim_core_client_completes_a_publish_whose_puback_was_lost_only_after_a_resend() {
    // The core client does not resend within a connection. Either something (a keep-alive
    // close, say) makes it reconnect and resend, and the publish completes on the new
    // connection — the run passes and says so — or the publish stays in flight and the checker
    // must name the command that never completed.
    let options = SimOptions {
        mutation: Mutation::DropPubAckToCoreClient,
        verbose: false,
    };
    let mut flagged = 0;
    for seed in 0..8 {
        let report = sim::run_catching(seed, &options);
        assert!(
            report.mutation_fired,
            "seed {seed}: the mutation never applied"
        );
        if report.mutation_repaired {
            assert!(report.passed(), "seed {seed}: {:#?}", report.violations);
            continue;
        }
        assert!(
            report
                .violations
                .iter()
                .any(|v| v.contains("never completed")),
            "seed {seed}: a lost PUBACK to a core client went unnoticed: {:#?}\n  {}",
            report.violations,
            report.summary
        );
        flagged += 1;
    }
    assert!(flagged > 0, "no seed left the publish in flight");
}
