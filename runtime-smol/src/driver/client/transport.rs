//! One transport of the client: opens it (TCP, then TLS if configured, both within the
//! connect timeout), then moves bytes until it ends — what it reads goes to the client task,
//! what the task hands it is written. Reading never waits for writing, nor the reverse.
//!
//! Never: look at the bytes. Every event is tagged with the transport's number, so the task
//! ignores what comes from a transport it has already given up on.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt, future, io::split};
use futures_rustls::TlsConnector;
use futures_rustls::rustls::ClientConfig as TlsClientConfig;
use futures_rustls::rustls::pki_types::ServerName;

use crate::driver::conn::{poll_read_chunk, write_batch};
use crate::driver::{Runtime, TcpRuntime};

/// What a transport tells the client task; the `u64` is the transport's number.
pub(super) enum Io {
    /// Opened (TCP connected, TLS handshake done), or failed to.
    Connected(u64, io::Result<Transport>),
    /// Bytes arrived.
    Read(u64, Bytes),
    /// The transport ended (closed by the server, failed, or closed by us).
    Down(u64),
}

/// The client task's hold on an open transport.
pub(super) struct Transport {
    /// Bytes to write. Dropping it closes the transport once everything sent is written.
    pub(super) writer: async_channel::Sender<Bytes>,
    /// Fails to receive once the transport is closed and gone.
    pub(super) done: async_channel::Receiver<Infallible>,
}

/// Where to connect: from the client's options.
#[derive(Clone)]
pub(super) struct Target {
    pub(super) address: String,
    pub(super) tls: Option<(Arc<TlsClientConfig>, ServerName<'static>)>,
    pub(super) timeout: Duration,
}

/// Opens transport number `n` to `target` in a task of its own, reporting to `io`.
pub(super) fn open<R: TcpRuntime>(
    runtime: &R,
    n: u64,
    target: Target,
    io: async_channel::Sender<Io>,
) {
    runtime.spawn(connect_and_run(runtime.clone(), n, target, io));
}

async fn connect_and_run<R: TcpRuntime>(
    runtime: R,
    n: u64,
    target: Target,
    io: async_channel::Sender<Io>,
) {
    let deadline = Instant::now() + target.timeout;
    let connect = async {
        let tcp = runtime.connect(&target.address).await?;
        if let Err(error) = R::set_nodelay(&tcp) {
            tracing::debug!(%error, "TCP_NODELAY not set");
        }
        Ok(tcp)
    };
    let tcp = match before(&runtime, deadline, connect).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let _ = io.send(Io::Connected(n, Err(e))).await;
            return;
        }
    };
    match target.tls {
        None => run(n, tcp, io).await,
        Some((config, name)) => {
            let handshake = TlsConnector::from(config).connect(name, tcp);
            match before(&runtime, deadline, handshake).await {
                Ok(stream) => run(n, stream, io).await,
                Err(e) => {
                    let _ = io.send(Io::Connected(n, Err(e))).await;
                }
            }
        }
    }
}

/// `work`'s result, or a `TimedOut` error at `deadline`.
async fn before<R: Runtime, T>(
    runtime: &R,
    deadline: Instant,
    work: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    let expired = async {
        runtime.sleep_until(deadline).await;
        Err(io::ErrorKind::TimedOut.into())
    };
    future::or(work, expired).await
}

/// Moves bytes for transport `n` until it ends.
async fn run<S>(n: u64, stream: S, io: async_channel::Sender<Io>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = async_channel::unbounded::<Bytes>();
    let (alive, done) = async_channel::bounded::<Infallible>(1);
    let transport = Transport { writer: tx, done };
    if io.send(Io::Connected(n, Ok(transport))).await.is_err() {
        return;
    }
    let (mut reader, mut writer) = split(stream);
    let write = async {
        let mut batch: Vec<Bytes> = Vec::new();
        while let Ok(first) = rx.recv().await {
            batch.push(first);
            batch.extend(std::iter::from_fn(|| rx.try_recv().ok()));
            if write_batch(&mut writer, &mut batch).await.is_err() {
                return;
            }
        }
        // The task dropped its sender: everything is written; close (TLS: `close_notify`).
        let _ = writer.close().await;
    };
    let read = async {
        let mut buf = BytesMut::new();
        loop {
            match future::poll_fn(|cx| poll_read_chunk(&mut reader, &mut buf, cx)).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if io.send(Io::Read(n, buf.split().freeze())).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    future::or(write, read).await;
    // Closed before `Down` is reported: the task may be waiting on `done`, not reading `io`.
    drop((reader, writer, alive));
    let _ = io.send(Io::Down(n)).await;
}
