//! The async-std server on loopback: the same scenarios as `surgemq-smol`'s tests (raw client
//! on `surgemq_core::codec`, TCP, TLS, certificate identity, handshake timeout, shutdown).

#[path = "../../runtime-smol/tests/support/mod.rs"]
mod support;

use std::future::Future;
use std::net::SocketAddr;

use async_std::net::TcpStream;
use surgemq_async_std::AsyncStd;

/// Runs a scenario, boxed: moved by value through async-std's `block_on` layers, a debug
/// build's copies of the TLS ones overflow a test thread's 2 MiB stack.
fn run(scenario: impl Future<Output = ()>) {
    async_std::task::block_on(Box::pin(scenario));
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

#[test]
fn qos1_publish_reaches_subscriber_over_tcp() {
    run(support::tcp_round_trip::<AsyncStd, _, _, _>(connect));
}

#[test]
fn qos1_publish_reaches_subscriber_over_tls() {
    run(support::tls_round_trip::<AsyncStd, _, _, _>(connect));
}

#[test]
fn client_certificate_common_name_replaces_the_user_name() {
    run(support::tls_identity_is_the_user_name::<AsyncStd, _, _, _>(
        connect,
    ));
}

#[test]
fn tls_client_that_never_handshakes_is_dropped() {
    run(support::tls_handshake_times_out::<AsyncStd, _, _, _>(
        connect,
    ));
}

#[test]
fn graceful_shutdown_closes_clients_and_run_returns() {
    run(support::graceful_shutdown::<AsyncStd, _, _, _>(
        TcpStream::connect,
    ));
}
