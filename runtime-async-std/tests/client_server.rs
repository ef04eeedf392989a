//! The async-std client against the async-std server on 127.0.0.1: the same scenarios as
//! `surgemq-smol`'s client tests (round trips at every QoS, plain and TLS with a client
//! certificate; no deadlock on an unread own subscription; a failed first connection).

#[path = "../../runtime-smol/tests/support/mod.rs"]
mod support;

use std::future::Future;

use support::client;
use surgemq_async_std::AsyncStd;

/// Runs a scenario, boxed: moved by value through async-std's `block_on` layers, a debug
/// build's copies of the TLS ones overflow a test thread's 2 MiB stack.
fn run(scenario: impl Future<Output = ()>) {
    async_std::task::block_on(Box::pin(scenario));
}

#[test]
fn round_trip_at_every_qos() {
    run(client::round_trip_at_every_qos::<AsyncStd>());
}

#[test]
fn publishing_to_an_unread_own_subscription_never_deadlocks() {
    run(client::publishing_to_an_unread_own_subscription_never_deadlocks::<AsyncStd>());
}

#[test]
fn tls_round_trip_with_client_certificate() {
    run(client::tls_round_trip_with_client_certificate::<AsyncStd>());
}

#[test]
fn first_connection_failure_is_returned_without_reconnect() {
    run(client::first_connection_failure_is_returned_without_reconnect::<AsyncStd>());
}

#[test]
fn a_configuration_that_cannot_connect_is_refused_first() {
    run(client::a_configuration_that_cannot_connect_is_refused_first::<AsyncStd>());
}
