//! [`Model`]: the reference model of what a correct broker does with the inputs the simulation
//! fed it — written from the MQTT 3.1.1 spec, not from the broker's code. It taps every byte
//! stream into and out of the broker, decodes it with the codec, and keeps:
//!
//! - connections: which are open, their keep-alive and connect deadlines, their Will, so it can
//!   say which connections the broker must close on each input and why (takeover, keep-alive,
//!   connect timeout, DISCONNECT) and which Wills fall due;
//! - session *incarnations* per client identifier (a clean session lives as long as its
//!   connection; a persistent one until a clean CONNECT discards it), their subscriptions and
//!   received-but-unreleased QoS 2 packet identifiers;
//! - every routing of a traced message: which incarnation it was owed to, at which QoS, in which
//!   logical order; the retained message per topic; what each SUBSCRIBE was offered as retained.
//!
//! The checker compares client-side receipts against it; the world compares the broker's closes,
//! events, CONNACKs, SUBACKs, counters and timer against it after every input.
//! Never: read the broker's internals (only its public getters, outputs and the wire).

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Bytes, BytesMut};
use surgemq_core::broker::{ConnId, DisconnectCause, ProtocolViolation};
use surgemq_core::codec::{
    MAX_PACKET_SIZE, Packet, ProtocolVersion, PubAck, PubRel, QoS, SubAckReason, decode_buf,
};

use super::message::{Uid, filter_matches};
use super::violations::Violations;

/// Why the model says a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum EndCause {
    /// The broker processed DISCONNECT (no Will).
    Disconnect,
    /// A CONNECT with the same client identifier was accepted on another connection.
    TakenOver,
    /// Nothing received for 1.5 times the keep alive.
    KeepAlive,
    /// No CONNECT within the connect timeout.
    ConnectTimeout,
    /// The world reported the socket closed (`Input::Closed`).
    Lost,
}

impl EndCause {
    /// Whether the broker must emit `Output::Close` for it (not for a socket already gone).
    pub(crate) fn broker_closes(self) -> bool {
        self != Self::Lost
    }

    /// Whether the broker's reported cause is this one.
    pub(crate) fn agrees_with(self, cause: &DisconnectCause) -> bool {
        matches!(
            (self, cause),
            (Self::Disconnect, DisconnectCause::ClientDisconnect)
                | (Self::TakenOver, DisconnectCause::TakenOver)
                | (Self::Lost, DisconnectCause::ConnectionLost)
                | (
                    Self::KeepAlive,
                    DisconnectCause::Violation(ProtocolViolation::KeepAliveTimeout)
                )
                | (
                    Self::ConnectTimeout,
                    DisconnectCause::Violation(ProtocolViolation::ConnectTimeout)
                )
        )
    }
}

/// One routing of a traced message to one session incarnation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    /// The incarnation it is owed to.
    pub(crate) inc: u32,
    /// QoS it must be delivered with: min(published, granted).
    pub(crate) qos: QoS,
    /// Logical time of the routing (orders routings across the run).
    pub(crate) clock: u64,
}

/// What is known about a traced message.
#[derive(Debug, Clone)]
pub(crate) struct MessageInfo {
    /// Topic it was published to.
    pub(crate) topic: String,
    /// QoS it was published with.
    pub(crate) qos: QoS,
    /// Times the broker routed it (QoS 1 resends route again; QoS 2 resends do not).
    pub(crate) routed: u32,
    /// Logical time of its first routing.
    pub(crate) first_clock: u64,
}

/// A session as the spec defines it, from creation to discard.
#[derive(Debug)]
pub(crate) struct Incarnation {
    /// Its client identifier.
    pub(crate) client_id: String,
    /// Clean session 0.
    pub(crate) persistent: bool,
    /// The connection currently bound to it.
    conn: Option<ConnId>,
    /// Filter to granted QoS.
    pub(crate) subs: BTreeMap<String, QoS>,
    /// QoS 2 identifiers received from the client and not yet released ([MQTT-4.3.3-2]).
    awaiting_release: BTreeSet<u16>,
    /// Identifiers of the broker's own PUBLISH packets not yet completed by the client
    /// (PUBACK, or PUBCOMP for QoS 2): none may be reused meanwhile ([MQTT-2.3.1-2]).
    outbound_ids: BTreeSet<u16>,
    /// Not discarded yet.
    pub(crate) alive: bool,
}

#[derive(Debug, Clone)]
struct WillSpec {
    topic: String,
    payload: Bytes,
    qos: QoS,
    retain: bool,
}

#[derive(Debug)]
struct ConnModel {
    opened_at: u64,
    version: ProtocolVersion,
    inbound: BytesMut,
    outbound: BytesMut,
    open: bool,
    connected: bool,
    inc: Option<u32>,
    keep_alive_ms: Option<u64>,
    last_received: u64,
    will: Option<WillSpec>,
    /// Session Present the CONNACK must carry, until it is seen.
    expect_connack: Option<bool>,
}

/// Counters for the run summary.
#[derive(Debug, Default, Clone)]
pub(crate) struct ModelStats {
    /// Connections the broker accepted a CONNECT on.
    pub(crate) accepted: u64,
    /// Takeovers of a connected client identifier.
    pub(crate) takeovers: u64,
    /// Keep-alive closes.
    pub(crate) keep_alive_closes: u64,
    /// Connections closed for sending no CONNECT in time.
    pub(crate) connect_timeouts: u64,
    /// Wills that fell due.
    pub(crate) wills_due: u64,
    /// PUBLISH packets routed.
    pub(crate) routed: u64,
    /// Sessions resumed (Session Present 1).
    pub(crate) resumed: u64,
}

/// The reference model. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Model {
    connect_timeout_ms: u64,
    max_keep_alive: Option<u16>,
    clock: u64,
    conns: BTreeMap<ConnId, ConnModel>,
    /// Every incarnation ever created, by number.
    pub(crate) incs: BTreeMap<u32, Incarnation>,
    by_client: BTreeMap<String, u32>,
    next_inc: u32,
    /// Topic to retained payload and QoS.
    pub(crate) retained: BTreeMap<String, (Bytes, QoS)>,
    /// Every routing of every traced message.
    pub(crate) routes: BTreeMap<Uid, Vec<Route>>,
    /// (incarnation, topic, payload, QoS) a SUBSCRIBE was entitled to as retained.
    pub(crate) retained_offers: BTreeSet<(u32, String, Bytes, QoS)>,
    /// Every traced message the broker processed.
    pub(crate) messages: BTreeMap<Uid, MessageInfo>,
    expected_subacks: BTreeMap<(ConnId, u16), Vec<QoS>>,
    /// Connections that ended during the current input, with why.
    ends: Vec<(ConnId, EndCause)>,
    open_count: usize,
    alive_count: usize,
    sub_count: usize,
    /// Run counters.
    pub(crate) stats: ModelStats,
    verbose: bool,
}

impl Model {
    /// A model of a broker with these limits.
    pub(crate) fn new(connect_timeout_ms: u64, max_keep_alive: Option<u16>, verbose: bool) -> Self {
        Self {
            connect_timeout_ms,
            max_keep_alive,
            clock: 0,
            conns: BTreeMap::new(),
            incs: BTreeMap::new(),
            by_client: BTreeMap::new(),
            next_inc: 1,
            retained: BTreeMap::new(),
            routes: BTreeMap::new(),
            retained_offers: BTreeSet::new(),
            messages: BTreeMap::new(),
            expected_subacks: BTreeMap::new(),
            ends: Vec::new(),
            open_count: 0,
            alive_count: 0,
            sub_count: 0,
            stats: ModelStats::default(),
            verbose,
        }
    }

    // ---- getters ------------------------------------------------------------------------

    /// Connections the broker must have open.
    pub(crate) fn open_count(&self) -> usize {
        self.open_count
    }

    /// Sessions the broker must hold.
    pub(crate) fn alive_count(&self) -> usize {
        self.alive_count
    }

    /// Subscriptions across the sessions the broker must hold.
    pub(crate) fn sub_count(&self) -> usize {
        self.sub_count
    }

    /// The incarnation a connection was bound to by its CONNECT.
    pub(crate) fn inc_of(&self, conn: ConnId) -> Option<u32> {
        self.conns.get(&conn).and_then(|c| c.inc)
    }

    /// Incarnations alive now.
    pub(crate) fn alive_incs(&self) -> BTreeSet<u32> {
        self.incs
            .iter()
            .filter(|(_, i)| i.alive)
            .map(|(&k, _)| k)
            .collect()
    }

    /// The subscriptions of the live session of `client_id`, if it has one.
    pub(crate) fn session_subs(&self, client_id: &str) -> Option<&BTreeMap<String, QoS>> {
        let inc = self.by_client.get(client_id)?;
        self.incs.get(inc).filter(|i| i.alive).map(|i| &i.subs)
    }

    /// The earliest keep-alive or connect deadline among open connections: the broker must
    /// ask to be woken no later than this.
    pub(crate) fn min_deadline(&self) -> Option<u64> {
        self.conns
            .values()
            .filter(|c| c.open)
            .filter_map(|c| self.deadline(c))
            .min()
    }

    fn deadline(&self, c: &ConnModel) -> Option<u64> {
        if c.connected {
            c.keep_alive_ms.map(|limit| c.last_received + limit)
        } else {
            Some(c.opened_at + self.connect_timeout_ms)
        }
    }

    /// Takes the connections that ended during the current input.
    pub(crate) fn take_ends(&mut self) -> Vec<(ConnId, EndCause)> {
        core::mem::take(&mut self.ends)
    }

    // ---- inputs -------------------------------------------------------------------------

    /// The world accepted a new connection.
    pub(crate) fn on_open(&mut self, conn: ConnId, now: u64) {
        self.open_count += 1;
        self.conns.insert(
            conn,
            ConnModel {
                opened_at: now,
                version: ProtocolVersion::V3_1_1,
                inbound: BytesMut::new(),
                outbound: BytesMut::new(),
                open: true,
                connected: false,
                inc: None,
                keep_alive_ms: None,
                last_received: now,
                will: None,
                expect_connack: None,
            },
        );
    }

    /// Bytes fed to the broker on `conn`: every whole packet is applied in order.
    pub(crate) fn on_received(&mut self, conn: ConnId, data: &[u8], now: u64, v: &mut Violations) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.open {
            return;
        }
        c.inbound.extend_from_slice(data);
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            if !c.open {
                return; // [MQTT-3.1.4-5]: nothing after the connection ends is processed.
            }
            let packet = match decode_buf(&mut c.inbound, c.version, MAX_PACKET_SIZE) {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => {
                    v.push(
                        now,
                        format!("sim client sent bytes the codec rejects on {conn:?}: {e:?}"),
                    );
                    c.inbound.clear();
                    return;
                }
            };
            c.last_received = now;
            if self.verbose {
                eprintln!("{now:>9} c{} -> {}", conn.get(), brief(&packet));
            }
            self.apply_packet(conn, packet, now, v);
        }
    }

    /// `Input::Timeout` at `now`: every connection past its deadline must be closed.
    pub(crate) fn on_timeout(&mut self, now: u64) {
        let mut due: Vec<(u64, ConnId, EndCause)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.open)
            .filter_map(|(&id, c)| {
                let at = self.deadline(c)?;
                let cause = if c.connected {
                    EndCause::KeepAlive
                } else {
                    EndCause::ConnectTimeout
                };
                (at <= now).then_some((at, id, cause))
            })
            .collect();
        due.sort();
        // Connections that expire together (after a clock jump, say) may be closed by the broker
        // in any order; so every Will goes to the sessions as they were before any of these
        // closes, and only then do the clean sessions among them end. A Will routed to a session
        // that ends in the same instant is owed nothing, so either order satisfies the model.
        let mut detach = Vec::new();
        for (_, conn, cause) in due {
            match cause {
                EndCause::KeepAlive => self.stats.keep_alive_closes += 1,
                EndCause::ConnectTimeout => self.stats.connect_timeouts += 1,
                _ => {}
            }
            detach.extend(self.close_conn(conn, cause));
        }
        for (conn, inc) in detach {
            self.detach(conn, inc);
        }
    }

    /// `Input::Closed`: the socket went away.
    pub(crate) fn on_closed_input(&mut self, conn: ConnId) {
        if self.conns.get(&conn).is_some_and(|c| c.open) {
            self.end_conn(conn, EndCause::Lost);
        }
    }

    /// A Transmit from the broker: CONNACK and SUBACK are checked against the model.
    pub(crate) fn on_transmit(&mut self, conn: ConnId, data: &[u8], now: u64, v: &mut Violations) {
        let Some(c) = self.conns.get_mut(&conn) else {
            v.push(
                now,
                format!("broker transmitted on a connection it never opened: {conn:?}"),
            );
            return;
        };
        c.outbound.extend_from_slice(data);
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            let packet = match decode_buf(&mut c.outbound, c.version, MAX_PACKET_SIZE) {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(e) => {
                    v.push(
                        now,
                        format!("broker sent bytes the codec rejects on {conn:?}: {e:?}"),
                    );
                    c.outbound.clear();
                    return;
                }
            };
            if self.verbose {
                eprintln!("{now:>9} c{} <- {}", conn.get(), brief(&packet));
            }
            match (&packet, c.expect_connack.take()) {
                (Packet::ConnAck(ack), Some(present))
                    if ack.session_present != present || ack.reason.is_error() =>
                {
                    v.push(
                        now,
                        format!(
                            "CONNACK on {conn:?}: session present {} reason {:?}, expected \
                             session present {present} and success",
                            ack.session_present, ack.reason
                        ),
                    );
                }
                (Packet::ConnAck(_), Some(_)) => {}
                (_, Some(present)) => {
                    c.expect_connack = Some(present);
                    v.push(
                        now,
                        format!("first packet to {conn:?} after CONNECT is not CONNACK"),
                    );
                }
                (Packet::SubAck(ack), None) => {
                    let expected = self.expected_subacks.remove(&(conn, ack.packet_id.get()));
                    let granted: Vec<QoS> = ack
                        .reasons
                        .iter()
                        .map(|r| match r {
                            SubAckReason::GrantedQoS1 => QoS::AtLeastOnce,
                            SubAckReason::GrantedQoS2 => QoS::ExactlyOnce,
                            _ => QoS::AtMostOnce,
                        })
                        .collect();
                    if expected.as_ref() != Some(&granted) {
                        v.push(
                            now,
                            format!("SUBACK on {conn:?}: {granted:?}, requested {expected:?}"),
                        );
                    }
                }
                (Packet::ConnAck(_), None) => {
                    v.push(now, format!("CONNACK on {conn:?} that sent no CONNECT"));
                }
                (Packet::Publish(p), None) => {
                    let fresh_id = p.packet_id.filter(|_| !p.dup);
                    let inc = c.inc.and_then(|inc| self.incs.get_mut(&inc));
                    if let (Some(id), Some(inc)) = (fresh_id, inc)
                        && !inc.outbound_ids.insert(id.get())
                    {
                        v.push(
                            now,
                            format!(
                                "broker sent a new PUBLISH to {} with packet id {} still in \
                                 flight [MQTT-2.3.1-2]",
                                inc.client_id,
                                id.get()
                            ),
                        );
                    }
                }
                _ => {}
            }
        }
    }

    // ---- internals ----------------------------------------------------------------------

    fn apply_packet(&mut self, conn: ConnId, packet: Packet, now: u64, v: &mut Violations) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if !c.connected {
            match packet {
                Packet::Connect(connect) => self.accept(conn, &connect),
                other => v.push(
                    now,
                    format!("sim client sent {} before CONNECT", brief(&other)),
                ),
            }
            return;
        }
        let Some(inc) = c.inc else {
            return;
        };
        match packet {
            Packet::Publish(p) => {
                let fresh = p.qos != QoS::ExactlyOnce
                    || p.packet_id.is_none_or(|id| {
                        self.incs
                            .get_mut(&inc)
                            .is_some_and(|i| i.awaiting_release.insert(id.get()))
                    });
                if fresh {
                    self.route(p.topic.as_str(), &p.payload, p.qos, p.retain);
                }
            }
            Packet::PubRel(rel) => {
                if let Some(i) = self.incs.get_mut(&inc) {
                    i.awaiting_release.remove(&rel.packet_id.get());
                }
            }
            Packet::PubAck(PubAck { packet_id, .. })
            | Packet::PubComp(PubRel { packet_id, .. }) => {
                if let Some(i) = self.incs.get_mut(&inc) {
                    i.outbound_ids.remove(&packet_id.get());
                }
            }
            Packet::Subscribe(s) => {
                let mut granted = Vec::new();
                for (filter, options) in &s.filters {
                    let f = filter.as_str().to_owned();
                    let qos = options.qos;
                    granted.push(qos);
                    if let Some(i) = self.incs.get_mut(&inc)
                        && i.subs.insert(f.clone(), qos).is_none()
                    {
                        self.sub_count += 1;
                    }
                    for (topic, (payload, msg_qos)) in &self.retained {
                        if filter_matches(&f, topic) {
                            self.retained_offers.insert((
                                inc,
                                topic.clone(),
                                payload.clone(),
                                (*msg_qos).min(qos),
                            ));
                        }
                    }
                }
                self.expected_subacks
                    .insert((conn, s.packet_id.get()), granted);
            }
            Packet::Unsubscribe(u) => {
                for filter in &u.filters {
                    if let Some(i) = self.incs.get_mut(&inc)
                        && i.subs.remove(filter.as_str()).is_some()
                    {
                        self.sub_count -= 1;
                    }
                }
            }
            Packet::Disconnect(_) => {
                // [MQTT-3.14.4-3]: the Will is discarded.
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.will = None;
                }
                self.end_conn(conn, EndCause::Disconnect);
            }
            Packet::Connect(_) => v.push(now, "sim client sent a second CONNECT".into()),
            _ => {}
        }
    }

    /// A CONNECT the broker must accept (every simulated client is valid and authorised).
    fn accept(&mut self, conn: ConnId, connect: &surgemq_core::codec::Connect) {
        self.stats.accepted += 1;
        let client_id = connect.client_id.as_str().to_owned();
        // [MQTT-3.1.4-2]: an existing connection for the identifier is closed (its Will due).
        let old = self
            .by_client
            .get(&client_id)
            .and_then(|i| self.incs.get(i)?.conn);
        if let Some(old) = old
            && old != conn
        {
            self.stats.takeovers += 1;
            self.end_conn(old, EndCause::TakenOver);
        }
        // [MQTT-3.1.2-6]: clean session discards the previous session.
        if connect.clean_start
            && let Some(&inc) = self.by_client.get(&client_id)
        {
            self.discard(inc);
        }
        let (inc, present) = match self.by_client.get(&client_id) {
            Some(&inc) => (inc, true),
            None => {
                let inc = self.next_inc;
                self.next_inc += 1;
                self.incs.insert(
                    inc,
                    Incarnation {
                        client_id: client_id.clone(),
                        persistent: !connect.clean_start,
                        conn: None,
                        subs: BTreeMap::new(),
                        awaiting_release: BTreeSet::new(),
                        outbound_ids: BTreeSet::new(),
                        alive: true,
                    },
                );
                self.alive_count += 1;
                self.by_client.insert(client_id, inc);
                (inc, false)
            }
        };
        if present {
            self.stats.resumed += 1;
        }
        if let Some(i) = self.incs.get_mut(&inc) {
            i.conn = Some(conn);
        }
        let keep_alive = match (connect.keep_alive, self.max_keep_alive) {
            (0, max) => max.filter(|m| *m > 0),
            (k, Some(max)) if max > 0 => Some(k.min(max)),
            (k, _) => Some(k),
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.version = connect.protocol;
        c.connected = true;
        c.inc = Some(inc);
        c.keep_alive_ms = keep_alive.map(|k| u64::from(k) * 1500);
        // MQTT 3.1 has no Session Present flag (the byte is reserved there).
        c.expect_connack = Some(present && connect.protocol != ProtocolVersion::V3_1);
        c.will = connect.will.as_ref().map(|w| WillSpec {
            topic: w.topic.as_str().to_owned(),
            payload: w.payload.clone(),
            qos: w.qos,
            retain: w.retain,
        });
    }

    /// A connection ends: its Will is published unless DISCONNECT said otherwise, and a clean
    /// session ends with it.
    fn end_conn(&mut self, conn: ConnId, cause: EndCause) {
        if let Some((conn, inc)) = self.close_conn(conn, cause) {
            self.detach(conn, inc);
        }
    }

    /// First half of [`Self::end_conn`]: the connection closes and its Will is routed. Returns
    /// the session to detach, if any.
    fn close_conn(&mut self, conn: ConnId, cause: EndCause) -> Option<(ConnId, u32)> {
        let c = self.conns.get_mut(&conn)?;
        if !c.open {
            return None;
        }
        c.open = false;
        self.open_count -= 1;
        self.ends.push((conn, cause));
        let will = c.will.take();
        let inc = c.inc;
        if let Some(will) = will {
            // [MQTT-3.1.2-8]
            self.stats.wills_due += 1;
            self.route(&will.topic, &will.payload, will.qos, will.retain);
        }
        inc.map(|inc| (conn, inc))
    }

    /// Second half of [`Self::end_conn`]: the session loses its connection; a clean one ends.
    fn detach(&mut self, conn: ConnId, inc: u32) {
        let Some(i) = self.incs.get_mut(&inc) else {
            return;
        };
        if i.conn == Some(conn) {
            i.conn = None;
            if !i.persistent {
                self.discard(inc);
            }
        }
    }

    fn discard(&mut self, inc: u32) {
        let Some(i) = self.incs.get_mut(&inc) else {
            return;
        };
        if !i.alive {
            return;
        }
        i.alive = false;
        self.alive_count -= 1;
        self.sub_count -= i.subs.len();
        i.subs.clear();
        i.awaiting_release.clear();
        i.outbound_ids.clear();
        if self.by_client.get(&i.client_id) == Some(&inc) {
            self.by_client.remove(&i.client_id);
        }
    }

    /// Routes one publication: retained store first ([MQTT-3.3.1-5], empty payload clears,
    /// [MQTT-3.3.1-10]), then one routing per matching incarnation at the highest granted QoS
    /// of its matching subscriptions ([MQTT-3.3.5-1]) capped by the published QoS.
    fn route(&mut self, topic: &str, payload: &Bytes, qos: QoS, retain: bool) {
        self.clock += 1;
        self.stats.routed += 1;
        if retain {
            if payload.is_empty() {
                self.retained.remove(topic);
            } else {
                self.retained
                    .insert(topic.to_owned(), (payload.clone(), qos));
            }
        }
        let Some(uid) = Uid::parse(payload) else {
            return;
        };
        let info = self.messages.entry(uid).or_insert_with(|| MessageInfo {
            topic: topic.to_owned(),
            qos,
            routed: 0,
            first_clock: self.clock,
        });
        info.routed += 1;
        for (&inc, i) in &self.incs {
            if !i.alive {
                continue;
            }
            let granted = i
                .subs
                .iter()
                .filter(|(f, _)| filter_matches(f, topic))
                .map(|(_, q)| *q)
                .max();
            if let Some(granted) = granted {
                self.routes.entry(uid).or_default().push(Route {
                    inc,
                    qos: qos.min(granted),
                    clock: self.clock,
                });
            }
        }
    }
}

/// A short description of a packet for traces.
pub(crate) fn brief(packet: &Packet) -> String {
    match packet {
        Packet::Connect(c) => format!(
            "CONNECT {} clean={} ka={} will={}",
            c.client_id.as_str(),
            c.clean_start,
            c.keep_alive,
            c.will.as_ref().map_or("-".into(), |w| format!(
                "{}@{}{}",
                w.topic.as_str(),
                w.qos.as_u8(),
                if w.retain { "r" } else { "" }
            ))
        ),
        Packet::ConnAck(a) => format!("CONNACK sp={} {:?}", a.session_present, a.reason),
        Packet::Publish(p) => format!(
            "PUBLISH {} q{}{}{} id={:?} {}",
            p.topic.as_str(),
            p.qos.as_u8(),
            if p.dup { " dup" } else { "" },
            if p.retain { " ret" } else { "" },
            p.packet_id.map(|i| i.get()),
            Uid::parse(&p.payload)
                .map_or_else(|| format!("<{} bytes>", p.payload.len()), |u| u.to_string())
        ),
        Packet::PubAck(a) => format!("PUBACK {}", a.packet_id.get()),
        Packet::PubRec(a) => format!("PUBREC {}", a.packet_id.get()),
        Packet::PubRel(a) => format!("PUBREL {}", a.packet_id.get()),
        Packet::PubComp(a) => format!("PUBCOMP {}", a.packet_id.get()),
        Packet::Subscribe(s) => format!(
            "SUBSCRIBE {} {:?}",
            s.packet_id.get(),
            s.filters
                .iter()
                .map(|(f, o)| format!("{}@{}", f.as_str(), o.qos.as_u8()))
                .collect::<Vec<_>>()
        ),
        Packet::SubAck(s) => format!("SUBACK {} {:?}", s.packet_id.get(), s.reasons),
        Packet::Unsubscribe(u) => format!(
            "UNSUBSCRIBE {} {:?}",
            u.packet_id.get(),
            u.filters
                .iter()
                .map(|f| f.as_str().to_owned())
                .collect::<Vec<_>>()
        ),
        Packet::UnsubAck(u) => format!("UNSUBACK {}", u.packet_id.get()),
        Packet::PingReq => "PINGREQ".into(),
        Packet::PingResp => "PINGRESP".into(),
        Packet::Disconnect(_) => "DISCONNECT".into(),
        Packet::Auth(_) => "AUTH".into(),
    }
}
