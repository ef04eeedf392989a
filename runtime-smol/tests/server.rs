//! The smol server on loopback against a raw client built on `surgemq_core::codec`: plain TCP,
//! TLS (self-signed, rcgen), certificate identity as user name, handshake timeout, shutdown.
//! The scenarios live in `support`, shared with `surgemq-async-std`.

mod support;

use std::future::Future;
use std::net::SocketAddr;

use smol::net::TcpStream;
use surgemq_smol::Smol;

/// Runs a scenario, boxed so that `block_on` moves a pointer, not the whole future.
fn run(scenario: impl Future<Output = ()>) {
    smol::block_on(Box::pin(scenario));
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

#[test]
fn qos1_publish_reaches_subscriber_over_tcp() {
    run(support::tcp_round_trip::<Smol, _, _, _>(connect));
}

#[test]
fn qos1_publish_reaches_subscriber_over_tls() {
    run(support::tls_round_trip::<Smol, _, _, _>(connect));
}

#[test]
fn client_certificate_common_name_replaces_the_user_name() {
    run(support::tls_identity_is_the_user_name::<Smol, _, _, _>(
        connect,
    ));
}

#[test]
fn tls_client_that_never_handshakes_is_dropped() {
    run(support::tls_handshake_times_out::<Smol, _, _, _>(connect));
}

#[test]
fn graceful_shutdown_closes_clients_and_run_returns() {
    run(support::graceful_shutdown::<Smol, _, _, _>(
        TcpStream::connect,
    ));
}
