//! The smol client's session in a redb store across a restart: unfinished QoS 1/2 publishes
//! resumed by `connect_with_store`, QoS 2 delivered once; a clean session refused; the store
//! let go by a failed first connection. The scenarios live in `store_scenario`, shared with
//! `surgemq-async-std`.

mod store_scenario;

use std::future::Future;

use surgemq_smol::Smol;

/// Runs a scenario, boxed so that `block_on` moves a pointer, not the whole future.
fn run(scenario: impl Future<Output = ()>) {
    smol::block_on(Box::pin(scenario));
}

#[test]
fn unfinished_publishes_survive_a_restart_and_qos2_arrives_once() {
    run(store_scenario::unfinished_publishes_survive_a_restart_and_qos2_arrives_once::<Smol>());
}

#[test]
fn a_clean_session_with_a_store_is_refused_before_connecting() {
    run(store_scenario::a_clean_session_with_a_store_is_refused_before_connecting::<Smol>());
}

#[test]
fn a_failed_first_connection_closes_the_store_before_returning() {
    run(store_scenario::a_failed_first_connection_closes_the_store_before_returning::<Smol>());
}

#[test]
fn a_received_qos2_message_reaches_the_application_once_its_ack_is_committed() {
    run(
        store_scenario::a_received_qos2_message_reaches_the_application_once_its_ack_is_committed::<
            Smol,
        >(),
    );
}
