//! One connection: registers with the broker task, then reads the stream (sending what
//! arrives) and writes the batches it is handed, reporting how much the stream took.
//!
//! Reading pauses while too many bytes wait to be written, so a client that sends without
//! reading cannot grow our buffers without bound. An idle connection holds no read buffer: the
//! buffer is released whenever a read finds nothing, and taken again when bytes arrive.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt, future, io::split};

use super::hub::{BrokerHandle, ConnWriter, ToConn, ToHub};

/// Bytes read per read call at most.
const READ_CHUNK: usize = 16 * 1024;
/// Below this much room left in the read buffer, a fresh one is taken.
const MIN_READ_ROOM: usize = 512;
/// Above this many bytes waiting to be written, the connection stops reading.
const MAX_PENDING_WRITE: usize = 4 * 1024 * 1024;
/// Slices per vectored write.
const MAX_IOVECS: usize = 64;

/// Serves one connection until it ends: the peer closes it, it fails, or the broker closes it
/// (after writing everything the broker handed it, then closing the write side, which sends a
/// TLS `close_notify` on a TLS stream).
///
/// `stream` is any futures-io byte stream, already through its TLS handshake if it has one;
/// `identity` is the TLS client certificate's name when it is to be the user name (see
/// [`Listener::with_identity_as_username`](super::Listener::with_identity_as_username)).
pub async fn serve_connection<S>(
    broker: &BrokerHandle,
    stream: S,
    peer: SocketAddr,
    identity: Option<String>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let hub = &broker.tx;
    let (tx, rx) = async_channel::unbounded();
    let pending = Arc::new(AtomicUsize::new(0));
    let writer = ConnWriter {
        tx,
        pending: Arc::clone(&pending),
    };
    let (reply, registered) = async_channel::bounded(1);
    let open = ToHub::Open {
        peer,
        identity,
        writer,
        reply,
    };
    if hub.send(open).await.is_err() {
        return;
    }
    let Ok(conn) = registered.recv().await else {
        return;
    };
    let (mut reader, mut writer) = split(stream);
    // A one-slot channel used as a notification: "some pending bytes were written".
    let (drained_tx, drained_rx) = async_channel::bounded::<()>(1);

    let write_side = async {
        let mut batch: Vec<Bytes> = Vec::new();
        loop {
            let Ok(first) = rx.recv().await else {
                return true;
            };
            let mut close = false;
            for msg in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                match msg {
                    ToConn::Write(data) => batch.push(data),
                    ToConn::Close => {
                        close = true;
                        break;
                    }
                }
            }
            let written = match write_batch(&mut writer, &mut batch).await {
                Ok(n) => n,
                Err(_) => return false,
            };
            pending.fetch_sub(written, Ordering::Relaxed);
            let _ = drained_tx.try_send(());
            if written > 0 {
                // Fails only once the broker task has stopped; the close still follows.
                let _ = hub
                    .send(ToHub::Flushed {
                        conn,
                        bytes: written,
                    })
                    .await;
            }
            if close {
                let _ = writer.close().await;
                return true;
            }
        }
    };

    let read_side = async {
        let mut buf = BytesMut::new();
        loop {
            while pending.load(Ordering::Relaxed) > MAX_PENDING_WRITE {
                buf = BytesMut::new();
                let _ = drained_rx.recv().await;
            }
            match future::poll_fn(|cx| poll_read_chunk(&mut reader, &mut buf, cx)).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {
                    let data = buf.split().freeze();
                    if hub.send(ToHub::Received { conn, data }).await.is_err() {
                        return false;
                    }
                }
            }
        }
    };

    let closed_by_broker = future::or(write_side, read_side).await;
    if !closed_by_broker {
        let _ = hub.send(ToHub::Closed { conn }).await;
    }
}

/// Reads once into `buf` (empty on entry), taking a buffer only when the read is attempted and
/// giving it back when nothing is there to read.
pub(super) fn poll_read_chunk<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() < MIN_READ_ROOM {
        *buf = BytesMut::with_capacity(READ_CHUNK);
    }
    let room = buf.capacity().min(READ_CHUNK);
    buf.resize(room, 0);
    let polled = Pin::new(reader).poll_read(cx, buf);
    match &polled {
        Poll::Ready(Ok(n)) => buf.truncate(*n),
        Poll::Ready(Err(_)) => buf.clear(),
        // Idle: keep no read buffer until bytes arrive.
        Poll::Pending => *buf = BytesMut::new(),
    }
    polled
}

/// Writes every buffer of `batch` with as few (vectored) writes as the stream allows.
pub(super) async fn write_batch<W: AsyncWrite + Unpin>(
    writer: &mut W,
    batch: &mut Vec<Bytes>,
) -> io::Result<usize> {
    let total: usize = batch.iter().map(Bytes::len).sum();
    let mut queue: VecDeque<Bytes> = batch.drain(..).collect();
    while !queue.is_empty() {
        let slices: Vec<IoSlice<'_>> = queue
            .iter()
            .take(MAX_IOVECS)
            .map(|b| IoSlice::new(b))
            .collect();
        let mut n = writer.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let Some(front) = queue.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                queue.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
    writer.flush().await?;
    Ok(total)
}
