//! The async-std client's session in a redb store across a restart: the same scenarios as
//! `surgemq-smol`'s `tests/client_store.rs` (unfinished QoS 1/2 publishes resumed, QoS 2
//! delivered once; a clean session refused; the store let go by a failed first connection).

#[path = "../../runtime-smol/tests/store_scenario/mod.rs"]
mod store_scenario;

use std::future::Future;

use surgemq_async_std::AsyncStd;

/// Runs a scenario, boxed (see `tests/client_server.rs`).
fn run(scenario: impl Future<Output = ()>) {
    async_std::task::block_on(Box::pin(scenario));
}

#[test]
fn unfinished_publishes_survive_a_restart_and_qos2_arrives_once() {
    run(store_scenario::unfinished_publishes_survive_a_restart_and_qos2_arrives_once::<AsyncStd>());
}

#[test]
fn a_clean_session_with_a_store_is_refused_before_connecting() {
    run(store_scenario::a_clean_session_with_a_store_is_refused_before_connecting::<AsyncStd>());
}

#[test]
fn a_failed_first_connection_closes_the_store_before_returning() {
    run(store_scenario::a_failed_first_connection_closes_the_store_before_returning::<AsyncStd>());
}

#[test]
fn a_received_qos2_message_reaches_the_application_once_its_ack_is_committed() {
    run(
        store_scenario::a_received_qos2_message_reaches_the_application_once_its_ack_is_committed::<
            AsyncStd,
        >(),
    );
}
