//! [`Smol`]: the [`Runtime`] and [`TcpRuntime`] on smol — tasks on smol's global executor,
//! blocking jobs on its thread pool, async-io timers and async-net sockets.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use crate::driver::{Runtime, TcpRuntime};

/// The smol runtime, for [`driver::Server`](crate::driver::Server),
/// [`driver::Client`](crate::driver::Client) and the driver's other generic parts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Smol;

impl Runtime for Smol {
    fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        smol::spawn(future).detach();
    }

    fn spawn_blocking<F>(&self, job: F)
    where
        F: FnOnce() + Send + 'static,
    {
        smol::unblock(job).detach();
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
        let timer = smol::Timer::at(deadline);
        async move {
            timer.await;
        }
    }
}

impl TcpRuntime for Smol {
    type TcpListener = smol::net::TcpListener;
    type TcpStream = smol::net::TcpStream;

    fn connect(&self, address: &str) -> impl Future<Output = io::Result<Self::TcpStream>> + Send {
        smol::net::TcpStream::connect(address)
    }

    fn bind(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::TcpListener>> + Send {
        smol::net::TcpListener::bind(addr)
    }

    fn accept(
        listener: &Self::TcpListener,
    ) -> impl Future<Output = io::Result<(Self::TcpStream, SocketAddr)>> + Send {
        listener.accept()
    }

    fn local_addr(listener: &Self::TcpListener) -> io::Result<SocketAddr> {
        listener.local_addr()
    }

    fn set_nodelay(stream: &Self::TcpStream) -> io::Result<()> {
        stream.set_nodelay(true)
    }
}
