//! [`Link`]: one simulated TCP connection between a client and the broker — two ordered byte
//! streams cut into random segments with latency and jitter, a send window that turns a slow
//! reader into delayed `Flushed`, and the ways a connection ends (FIN from either side, reset,
//! a client that silently abandons it).
//!
//! The link only moves and holds bytes; the world decides when to call the broker or a client.
//! Never: reorder bytes within a direction, or lose bytes except on a reset (or a deliberate
//! mutation, which the world applies, not the link).

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use surgemq_core::broker::ConnId;

use super::rng::SimRng;

/// Bytes in flight that arrive at `at` (virtual milliseconds).
#[derive(Debug)]
struct Segment {
    at: u64,
    data: Bytes,
}

/// A reset in progress: each end learns of it at its own time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reset {
    /// When the broker is told (`Input::Closed`), if it still has to be.
    pub(crate) broker_at: Option<u64>,
    /// When the client is told, if it still has to be.
    pub(crate) client_at: Option<u64>,
}

/// Network behaviour of one link, drawn when it opens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkParams {
    /// One-way base latency.
    pub(crate) latency_ms: u64,
    /// Extra random latency per segment (order is kept regardless).
    pub(crate) jitter_ms: u64,
    /// Largest segment; writes are cut at random points below it.
    pub(crate) max_chunk: usize,
    /// Bytes the broker may have in the network plus unread at the client before its writes
    /// stop being flushed.
    pub(crate) window: usize,
}

/// One simulated connection. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Link {
    /// The simulated client that opened it.
    pub(crate) actor: usize,
    /// The broker's id for it, given when the first byte arrives (the "accept").
    pub(crate) conn: Option<ConnId>,
    params: LinkParams,
    to_broker: VecDeque<Segment>,
    to_client: VecDeque<Segment>,
    in_network_to_client: usize,
    last_to_broker: u64,
    last_to_client: u64,
    /// Delivered to the client's end, not yet read by it.
    pub(crate) inbox: BytesMut,
    /// New bytes arrived in `inbox` since the client last read.
    pub(crate) inbox_new: bool,
    /// What the client read from `inbox` but could not decode yet (a partial packet): the
    /// client's own buffer, so it no longer counts against the window.
    pub(crate) read_buf: BytesMut,
    /// Delivered to an end nobody reads any more; they fill the window forever.
    blackholed: usize,
    /// Transmitted by the broker, not yet taken by the network (not yet `Flushed`).
    pub(crate) socket: BytesMut,
    /// Bytes a mutation removed from a transmit, still owed to the broker as flushed.
    pub(crate) phantom_flushed: usize,
    /// The client still uses this link as its connection.
    pub(crate) attached: bool,
    /// The client closed its end: the broker sees EOF once `to_broker` has drained.
    pub(crate) client_fin: bool,
    /// The broker side exists: opened, and neither closed by the broker nor reported closed.
    pub(crate) broker_open: bool,
    /// The broker asked to close: the client sees EOF once everything sent has arrived.
    pub(crate) broker_fin: bool,
    /// A reset whose ends have not all been told yet.
    pub(crate) reset: Option<Reset>,
}

impl Link {
    /// A fresh link, attached to its client, not yet known to the broker.
    pub(crate) fn new(actor: usize, params: LinkParams) -> Self {
        Self {
            actor,
            conn: None,
            params,
            to_broker: VecDeque::new(),
            to_client: VecDeque::new(),
            in_network_to_client: 0,
            last_to_broker: 0,
            last_to_client: 0,
            inbox: BytesMut::new(),
            inbox_new: false,
            read_buf: BytesMut::new(),
            blackholed: 0,
            socket: BytesMut::new(),
            phantom_flushed: 0,
            attached: true,
            client_fin: false,
            broker_open: false,
            broker_fin: false,
            reset: None,
        }
    }

    /// One-way base latency of this link.
    pub(crate) fn latency_ms(&self) -> u64 {
        self.params.latency_ms
    }

    /// Cuts `data` into segments and queues them in one direction, keeping byte order.
    fn queue(
        params: LinkParams,
        queue: &mut VecDeque<Segment>,
        last: &mut u64,
        now: u64,
        mut data: Bytes,
        rng: &mut SimRng,
    ) {
        while !data.is_empty() {
            let cut = if rng.chance(300) {
                data.len()
            } else {
                (rng.range(1, params.max_chunk as u64) as usize).min(data.len())
            };
            let piece = data.split_to(cut);
            let at = (now + params.latency_ms + rng.below(params.jitter_ms + 1)).max(*last);
            *last = at;
            queue.push_back(Segment { at, data: piece });
        }
    }

    /// The client's SYN: an empty segment that makes the broker accept the connection when it
    /// arrives, before any byte of CONNECT.
    pub(crate) fn syn(&mut self, now: u64, rng: &mut SimRng) {
        let at = now + self.params.latency_ms + rng.below(self.params.jitter_ms + 1);
        self.last_to_broker = at;
        self.to_broker.push_back(Segment {
            at,
            data: Bytes::new(),
        });
    }

    /// The client writes `data` (dropped if its end is closed or the link was reset).
    pub(crate) fn client_write(&mut self, now: u64, data: Bytes, rng: &mut SimRng) {
        if self.client_fin || self.reset.is_some() {
            return;
        }
        Self::queue(
            self.params,
            &mut self.to_broker,
            &mut self.last_to_broker,
            now,
            data,
            rng,
        );
    }

    /// When a segment due at `at` really arrives, given the client's network is down until
    /// `down_until` (a partition holds segments back; TCP delivers them once it heals).
    fn effective(at: u64, down_until: u64) -> u64 {
        if at < down_until { down_until } else { at }
    }

    /// The next segment for the broker if it has arrived by `now`.
    pub(crate) fn pop_to_broker(&mut self, now: u64, down_until: u64) -> Option<Bytes> {
        let front = self.to_broker.front()?;
        if Self::effective(front.at, down_until) > now {
            return None;
        }
        self.to_broker.pop_front().map(|s| s.data)
    }

    /// Moves every segment for the client that has arrived by `now` into the client's end.
    pub(crate) fn arrive_at_client(&mut self, now: u64, down_until: u64) {
        while let Some(front) = self.to_client.front() {
            if Self::effective(front.at, down_until) > now {
                return;
            }
            let Some(segment) = self.to_client.pop_front() else {
                return;
            };
            self.in_network_to_client -= segment.data.len();
            if self.attached {
                self.inbox.extend_from_slice(&segment.data);
                self.inbox_new = true;
            } else {
                self.blackholed += segment.data.len();
            }
        }
    }

    /// Takes as much of the broker's socket buffer as the window allows into the network and
    /// returns how many bytes were taken (what the broker is told was flushed). After the
    /// broker's Close everything goes, window or not: the kernel keeps sending after close().
    pub(crate) fn flush_socket(&mut self, now: u64, rng: &mut SimRng) -> usize {
        let unread = self.in_network_to_client + self.inbox.len() + self.blackholed;
        let room = if self.broker_fin {
            usize::MAX
        } else {
            self.params.window.saturating_sub(unread)
        };
        let take = room.min(self.socket.len());
        if take == 0 {
            return 0;
        }
        let data = self.socket.split_to(take).freeze();
        self.in_network_to_client += take;
        Self::queue(
            self.params,
            &mut self.to_client,
            &mut self.last_to_client,
            now,
            data,
            rng,
        );
        take
    }

    /// Whether the socket buffer has bytes the window would take now.
    fn can_flush(&self) -> bool {
        let unread = self.in_network_to_client + self.inbox.len() + self.blackholed;
        !self.socket.is_empty() && (self.broker_fin || unread < self.params.window)
    }

    /// The broker sees EOF now: the client closed and everything it sent has arrived.
    pub(crate) fn eof_due_at_broker(&self) -> bool {
        self.client_fin && self.to_broker.is_empty() && self.broker_open && self.reset.is_none()
    }

    /// The client sees EOF now: the broker closed and the client has read everything.
    pub(crate) fn eof_due_at_client(&self) -> bool {
        self.broker_fin
            && self.attached
            && self.socket.is_empty()
            && self.to_client.is_empty()
            && self.inbox.is_empty()
            && self.reset.is_none()
    }

    /// Breaks the connection: everything in flight is lost; each end is told at its time.
    pub(crate) fn reset(&mut self, broker_at: u64, client_at: u64) {
        self.to_broker.clear();
        self.to_client.clear();
        self.in_network_to_client = 0;
        self.socket.clear();
        self.inbox.clear();
        self.inbox_new = false;
        self.read_buf.clear();
        self.reset = Some(Reset {
            broker_at: self.broker_open.then_some(broker_at),
            client_at: self.attached.then_some(client_at),
        });
    }

    /// The earliest time this link needs the world's attention (`now` when it already does,
    /// except for client reads, which the world schedules itself).
    pub(crate) fn next_due(&self, now: u64, down_until: u64) -> Option<u64> {
        let mut due = None::<u64>;
        let mut at = |t: u64| due = Some(due.map_or(t, |d| d.min(t)));
        if let Some(s) = self.to_broker.front() {
            at(Self::effective(s.at, down_until));
        }
        if let Some(s) = self.to_client.front() {
            at(Self::effective(s.at, down_until));
        }
        if let Some(r) = self.reset {
            r.broker_at.into_iter().chain(r.client_at).for_each(&mut at);
        }
        if self.can_flush()
            || self.eof_due_at_broker()
            || self.eof_due_at_client()
            || self.is_dead()
        {
            at(now);
        }
        due
    }

    /// The link's state, for a diagnosis.
    pub(crate) fn describe(&self) -> String {
        format!(
            "client {} {:?} attached={} broker_open={} client_fin={} broker_fin={} reset={:?} \
             to_broker={} to_client={} in_network={} socket={} inbox={} blackholed={} window={}",
            self.actor,
            self.conn,
            self.attached,
            self.broker_open,
            self.client_fin,
            self.broker_fin,
            self.reset,
            self.to_broker.len(),
            self.to_client.len(),
            self.in_network_to_client,
            self.socket.len(),
            self.inbox.len(),
            self.blackholed,
            self.params.window
        )
    }

    /// Nothing in flight, buffered or pending in either direction.
    pub(crate) fn is_quiet(&self) -> bool {
        self.to_broker.is_empty()
            && self.to_client.is_empty()
            && self.socket.is_empty()
            && self.inbox.is_empty()
            && self.reset.is_none()
            && !self.client_fin
            && !self.broker_fin
    }

    /// Both ends are gone and nothing can arrive any more: the world forgets the link.
    pub(crate) fn is_dead(&self) -> bool {
        !self.attached && !self.broker_open && self.to_broker.is_empty() && self.reset.is_none()
    }
}
