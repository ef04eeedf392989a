//! One connection's task: registers with the broker task, then reads the socket (sending what
//! arrives) and writes the batches it is handed, reporting how much the socket took.
//!
//! Reading pauses while too many bytes wait to be written, so a client that sends without
//! reading cannot grow our buffers without bound.

use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::hub::{ConnWriter, ToConn, ToHub};

/// Bytes read per read call at most.
const READ_CHUNK: usize = 16 * 1024;
/// Above this many bytes waiting to be written, the connection stops reading.
const MAX_PENDING_WRITE: usize = 4 * 1024 * 1024;
/// Slices per vectored write.
const MAX_IOVECS: usize = 64;

pub(crate) async fn serve<S>(
    stream: S,
    peer: std::net::SocketAddr,
    identity: Option<String>,
    hub: mpsc::Sender<ToHub>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pending = Arc::new(AtomicUsize::new(0));
    let writer = ConnWriter {
        tx,
        pending: Arc::clone(&pending),
    };
    let (reply, registered) = oneshot::channel();
    if hub
        .send(ToHub::Open {
            peer,
            identity,
            writer,
            reply,
        })
        .await
        .is_err()
    {
        return;
    }
    let Ok(conn) = registered.await else {
        return;
    };
    let (mut reader, mut writer) = tokio::io::split(stream);
    let drained = Notify::new();

    let write_side = async {
        let mut batch: Vec<Bytes> = Vec::new();
        loop {
            let Some(first) = rx.recv().await else {
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
            drained.notify_one();
            if written > 0
                && hub
                    .send(ToHub::Flushed {
                        conn,
                        bytes: written,
                    })
                    .await
                    .is_err()
            {
                return true;
            }
            if close {
                let _ = writer.shutdown().await;
                return true;
            }
        }
    };

    let read_side = async {
        let mut buf = BytesMut::new();
        loop {
            while pending.load(Ordering::Relaxed) > MAX_PENDING_WRITE {
                drained.notified().await;
            }
            buf.reserve(READ_CHUNK);
            match reader.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let data = buf.split().freeze();
                    if hub.send(ToHub::Received { conn, data }).await.is_err() {
                        return;
                    }
                    // Idle connections keep no read buffer.
                    if buf.capacity() < 512 {
                        buf = BytesMut::new();
                    }
                }
            }
        }
    };

    let closed_by_broker = tokio::select! {
        ended_cleanly = write_side => ended_cleanly,
        () = read_side => false,
    };
    if !closed_by_broker {
        let _ = hub.send(ToHub::Closed { conn }).await;
    }
}

/// Writes every buffer of `batch` with as few (vectored) writes as the socket allows.
async fn write_batch<W: AsyncWrite + Unpin>(
    writer: &mut W,
    batch: &mut Vec<Bytes>,
) -> std::io::Result<usize> {
    let total: usize = batch.iter().map(Bytes::len).sum();
    let mut queue: std::collections::VecDeque<Bytes> = batch.drain(..).collect();
    while !queue.is_empty() {
        let slices: Vec<IoSlice<'_>> = queue
            .iter()
            .take(MAX_IOVECS)
            .map(|b| IoSlice::new(b))
            .collect();
        let mut n = writer.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
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
