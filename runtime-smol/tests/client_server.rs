//! The smol client against the smol server on 127.0.0.1: round trips at every QoS (plain and
//! TLS with a client certificate), no deadlock when an application publishes to its own
//! subscription without reading messages, and a failed first connection reported. The
//! scenarios live in `support::client`, shared with `surgemq-async-std`.

mod support;

use std::future::Future;

use support::client;
use surgemq_smol::Smol;

/// Runs a scenario, boxed so that `block_on` moves a pointer, not the whole future.
fn run(scenario: impl Future<Output = ()>) {
    smol::block_on(Box::pin(scenario));
}

#[test]
fn round_trip_at_every_qos() {
    run(client::round_trip_at_every_qos::<Smol>());
}

#[test]
fn publishing_to_an_unread_own_subscription_never_deadlocks() {
    run(client::publishing_to_an_unread_own_subscription_never_deadlocks::<Smol>());
}

#[test]
fn tls_round_trip_with_client_certificate() {
    run(client::tls_round_trip_with_client_certificate::<Smol>());
}

#[test]
fn first_connection_failure_is_returned_without_reconnect() {
    run(client::first_connection_failure_is_returned_without_reconnect::<Smol>());
}

#[test]
fn a_configuration_that_cannot_connect_is_refused_first() {
    run(client::a_configuration_that_cannot_connect_is_refused_first::<Smol>());
}
