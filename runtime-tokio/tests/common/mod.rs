//! What the tokio client–server tests share (`client_server.rs`, `client_store.rs`,
//! `client_reconnect.rs`): a broker on 127.0.0.1 that the test starts and stops.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use surgemq_core::broker::{AuthMode, BrokerConfig};
use surgemq_tokio::{Listener, Server, ShutdownHandle};
use tokio::task::JoinHandle;

/// Starts a broker on an ephemeral port of 127.0.0.1 that admits loopback clients without
/// credentials and publishes no `$SYS` topics. Returns the address it listens on, the handle
/// that stops it, and its task, which ends with what `run` returned.
pub(crate) async fn loopback_broker()
-> (SocketAddr, ShutdownHandle, JoinHandle<std::io::Result<()>>) {
    let config = BrokerConfig {
        auth: AuthMode::LoopbackOnly,
        sys_interval: None,
        ..BrokerConfig::default()
    };
    let bound = Server::new(config, vec![Listener::tcp("127.0.0.1:0".parse().unwrap())])
        .bind()
        .await
        .unwrap();
    let address = bound.local_addrs()[0];
    let shutdown = bound.shutdown_handle();
    (address, shutdown, tokio::spawn(bound.run()))
}
