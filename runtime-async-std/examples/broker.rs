//! A minimal broker on async-std: `cargo run -p surgemq-async-std --example broker-async-std -- 127.0.0.1:1883`.
//! Ctrl-C (or SIGTERM) shuts it down gracefully.
use std::net::SocketAddr;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use surgemq_async_std::{BrokerConfig, Listener, Server};

fn main() -> std::io::Result<()> {
    let bind: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:1883".into())
        .parse()
        .map_err(std::io::Error::other)?;
    async_std::task::block_on(async {
        let bound = Server::new(BrokerConfig::default(), vec![Listener::tcp(bind)])
            .bind()
            .await?;
        println!("listening on {:?}", bound.local_addrs());
        let shutdown = bound.shutdown_handle();
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                shutdown.shutdown();
            }
        });
        bound.run().await
    })
}
