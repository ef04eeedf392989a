//! A minimal broker on tokio: `cargo run -p surgemq-tokio --example broker -- 127.0.0.1:1883`.
use std::net::SocketAddr;

use surgemq_core::broker::BrokerConfig;
use surgemq_tokio::{Listener, Server};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let bind: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:1883".into())
        .parse()
        .map_err(std::io::Error::other)?;
    let bound = Server::new(BrokerConfig::default(), vec![Listener::tcp(bind)])
        .bind()
        .await?;
    println!("listening on {:?}", bound.local_addrs());
    let shutdown = bound.shutdown_handle();
    tokio::spawn(async move {
        tokio::signal::ctrl_c().await.ok();
        shutdown.shutdown();
    });
    bound.run().await
}
