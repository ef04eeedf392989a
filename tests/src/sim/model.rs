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
//! With persistence it also keeps what durability needs: per routing, the QoS it is owed with
//! *durably* (through subscriptions whose SUBACK was sent, to a persistent session) and whether a
//! crash lost it; per message, every routing's time; per topic, the history of retained changes.
//! A failed commit's closes are taken from the broker when plausible ([`Model::on_store_failed`]);
//! a crash rebuilds the model from what was committed ([`Model::crash`]).
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
use surgemq_core::store::{DeliveryState, StoreSnapshot, StoredSession};

use super::message::{Uid, filter_matches};
use super::store::Restart;
use super::violations::Violations;

/// KNOWN BROKER BUG, excused while true (false: the checks see it). In durable mode a clean
/// CONNECT that discards a stored persistent session emits `DeleteSession`; until that is
/// committed, a crash brings the session back. The broker holds the CONNACK of that clean
/// CONNECT until the deletion is committed (it did not at first: seed 1774 then), but not the
/// CONNACK with Session Present 0 of a *later* CONNECT with the same identifier: an intruder's
/// clean CONNECT discards a core client's session, the client takes the identifier back before
/// the commit and is told Session Present 0, forgets the QoS 2 identifiers it received and not
/// released, and after the crash resumes the revived session (Session Present 1), whose DUP
/// resend of such a message reaches its application a second time (seed 312). A revived
/// identifier awaiting release could likewise take the client's next QoS 2 message with that
/// identifier for a resend: acknowledged, never routed. While true, a session a crash revived
/// after a clean CONNECT discarded it may get each QoS 2 message routed to it before the
/// revival one more time per such revival, and a message swallowed by a revived identifier is
/// not counted as acknowledged-but-not-routed. Counted in the summary as `excused_revived`.
///
/// FIXED: the broker now holds every CONNACK with Session Present 0 while a deletion of that
/// identifier's stored session is uncommitted. False, so that a return of the bug fails the
/// run (seed 312 and 3,000 release seeds pass with it false).
pub(crate) const EXCUSE_CLEAN_CONNACK_BEFORE_DISCARD_COMMITTED: bool = false;

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
    /// A commit failed that an acknowledgement owed on it (or a held QoS 2 PUBLISH to it)
    /// waited for (`Input::StoreDone` with an error, durable mode).
    StoreFailed,
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
                | (Self::StoreFailed, DisconnectCause::StoreFailed)
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
    /// QoS the route is owed with by the durability rule: min(published, granted by the
    /// matching subscriptions the session had been acknowledged (SUBACK sent) for), to a
    /// persistent session; QoS 0 otherwise (owes nothing durable).
    pub(crate) durable_qos: QoS,
    /// Lost in a broker crash: not on disk and not yet delivered when the broker crashed
    /// (owes nothing any more; whether losing it was allowed is the durability check's
    /// question).
    pub(crate) lost: bool,
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
    /// Every routing: logical and virtual time.
    pub(crate) routings: Vec<(u64, u64)>,
    /// Published from a persistent session (`None` for a Will).
    pub(crate) publisher_persistent: Option<bool>,
}

/// A filter of a SUBSCRIBE awaiting its SUBACK: the filter, its QoS, and the packet's number
/// (see `Incarnation::filter_changes`).
type SubscribedFilter = (String, QoS, u64);

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
    /// Filter to the QoS a SUBACK confirmed (the lower of old and new while a replacing
    /// SUBSCRIBE awaits its SUBACK): what durable mode must have committed.
    durable_subs: BTreeMap<String, QoS>,
    /// Per filter, the number of the last SUBSCRIBE or UNSUBSCRIBE that named it: a SUBACK
    /// confirms a filter only if no later packet changed it (an UNSUBSCRIBE processed after the
    /// SUBSCRIBE, and a new SUBSCRIBE not yet acknowledged, leave nothing confirmed).
    filter_changes: BTreeMap<String, u64>,
    /// Some message was routed to it at QoS 2 (its connection may have a PUBLISH held until a
    /// commit).
    qos2_routed: bool,
    /// QoS 2 identifiers received from the client and not yet released ([MQTT-4.3.3-2]).
    pub(crate) awaiting_release: BTreeSet<u16>,
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
    /// Packets received that the broker owes an acknowledgement for, minus acknowledgements
    /// transmitted.
    owed_acks: u32,
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
    /// Broker crashes.
    pub(crate) crashes: u64,
    /// Persistent sessions a crash brought back after the model saw them discarded (the
    /// discard was not committed).
    pub(crate) revived: u64,
    /// Persistent sessions a crash ended (their record was not committed).
    pub(crate) vanished: u64,
    /// Routings lost in crashes (QoS 1/2, to sessions that survived).
    pub(crate) lost_routes: u64,
    /// Deliveries restored from the disk after crashes.
    pub(crate) restored: u64,
    /// Connections closed because a commit failed.
    pub(crate) store_failed_closes: u64,
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
    /// The filters of each SUBSCRIBE awaiting its SUBACK.
    subscribe_filters: BTreeMap<(ConnId, u16), Vec<SubscribedFilter>>,
    /// Numbers the SUBSCRIBE and UNSUBSCRIBE packets (see `Incarnation::filter_changes`).
    next_change: u64,
    /// (incarnation, message) to the number of its deliveries a crash restored from the disk:
    /// each may be sent again, without DUP if it was queued (see the checker).
    pub(crate) restored: BTreeMap<(u32, Uid), u32>,
    /// Persistent incarnations a clean CONNECT of their client identifier discarded.
    discarded_by_clean: BTreeSet<u32>,
    /// Connections whose CONNECT discarded a stored session: durable mode holds everything
    /// sent to them (CONNACK first) until the deletion is committed. With the last store
    /// sequence number of that input once the world knows it ([`Model::bound_holds`]); gone once
    /// a commit covers it ([`Model::committed`]).
    connack_holds: BTreeMap<ConnId, Option<u64>>,
    /// Client identifiers whose stored session a clean CONNECT discarded, until the deletion
    /// is committed (bounded like `connack_holds`): any CONNACK with Session Present 0 for
    /// them is held too, also on a later connection.
    pending_deletions: BTreeMap<String, Option<u64>>,
    /// Incarnations a crash revived after a clean CONNECT had discarded them, with the logical
    /// time of each revival ([`EXCUSE_CLEAN_CONNACK_BEFORE_DISCARD_COMMITTED`]).
    pub(crate) revived_after_clean: BTreeMap<u32, Vec<u64>>,
    /// QoS 2 identifiers awaiting release that such a revival brought back.
    revived_ids: BTreeSet<(u32, u16)>,
    /// Messages acknowledged and never routed because a revived identifier swallowed them
    /// ([`EXCUSE_CLEAN_CONNACK_BEFORE_DISCARD_COMMITTED`]).
    pub(crate) swallowed: BTreeSet<Uid>,
    /// (incarnation, packet identifier) of outgoing exchanges a periodic-mode crash forgot: the
    /// client may still hold the identifier unreleased, and take the next message the broker
    /// sends with it for a duplicate.
    forgotten_qos2: BTreeSet<(u32, u16)>,
    /// Every retained change per topic, in order (an empty payload is a clear).
    retained_history: BTreeMap<String, Vec<Bytes>>,
    /// Virtual time of the input being applied (the world sets it).
    pub(crate) now: u64,
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
            subscribe_filters: BTreeMap::new(),
            next_change: 0,
            restored: BTreeMap::new(),
            retained_history: BTreeMap::new(),
            discarded_by_clean: BTreeSet::new(),
            connack_holds: BTreeMap::new(),
            pending_deletions: BTreeMap::new(),
            revived_after_clean: BTreeMap::new(),
            revived_ids: BTreeSet::new(),
            swallowed: BTreeSet::new(),
            forgotten_qos2: BTreeSet::new(),
            now: 0,
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

    /// The live session incarnation of `client_id`, if it has one.
    pub(crate) fn live_inc(&self, client_id: &str) -> Option<u32> {
        let inc = *self.by_client.get(client_id)?;
        self.incs.get(&inc).filter(|i| i.alive).map(|_| inc)
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
                owed_acks: 0,
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
            if matches!(
                packet,
                Packet::PubAck(_)
                    | Packet::PubRec(_)
                    | Packet::PubComp(_)
                    | Packet::SubAck(_)
                    | Packet::UnsubAck(_)
            ) {
                c.owed_acks = c.owed_acks.saturating_sub(1);
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
                    let key = (conn, ack.packet_id.get());
                    let inc = c.inc.and_then(|inc| self.incs.get_mut(&inc));
                    if let (Some(filters), Some(inc)) = (self.subscribe_filters.remove(&key), inc) {
                        // Durable mode sends SUBACK only once the subscriptions are committed.
                        for (filter, qos, change) in filters {
                            if inc.subs.get(&filter) == Some(&qos)
                                && inc.filter_changes.get(&filter) == Some(&change)
                            {
                                inc.durable_subs.insert(filter, qos);
                            }
                        }
                    }
                    let expected = self.expected_subacks.remove(&key);
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

    /// A failed commit (`Input::StoreDone` with an error) made the broker close `ends`' store
    /// failures. Which acknowledgements waited for that commit depends on the broker's store
    /// sequence numbers, which the model does not keep; so the broker's choice is taken, if
    /// plausible: only in durable mode, and only a connection that owes an acknowledgement or
    /// whose session may have a QoS 2 PUBLISH held for a commit. (A connection whose
    /// acknowledgement was withheld and that is left open never gets it: the run does not
    /// settle.) A connection whose CONNECT discarded a stored session may be held too. The
    /// closes are then applied in the broker's order, Wills and all.
    pub(crate) fn on_store_failed(
        &mut self,
        ends: &[(ConnId, DisconnectCause)],
        durable: bool,
        v: &mut Violations,
    ) {
        let now = self.now;
        for (conn, _) in ends
            .iter()
            .filter(|(_, cause)| *cause == DisconnectCause::StoreFailed)
        {
            if !durable {
                v.push(
                    now,
                    format!(
                        "broker closed {conn:?} for a failed commit, but in periodic mode nothing \
                         waits for the store"
                    ),
                );
            }
            let Some(c) = self.conns.get(conn).filter(|c| c.open && c.connected) else {
                v.push(
                    now,
                    format!("broker closed {conn:?} for a failed commit but it was not connected"),
                );
                continue;
            };
            let held = c
                .inc
                .and_then(|inc| self.incs.get(&inc))
                .is_some_and(|i| i.persistent && i.qos2_routed)
                || self.connack_holds.contains_key(conn);
            if c.owed_acks == 0 && !held {
                v.push(
                    now,
                    format!(
                        "broker closed {conn:?} for a failed commit, but it owed it no \
                         acknowledgement and had no QoS 2 message to hold"
                    ),
                );
            }
            self.stats.store_failed_closes += 1;
            self.end_conn(*conn, EndCause::StoreFailed);
        }
    }

    /// The broker crashed at `now` and a new one restored `restart`: the model becomes what
    /// was committed. Connections are gone without their Wills (a crash publishes nothing) and
    /// clean sessions with them. A persistent session survives exactly when its record is on
    /// the disk — as the incarnation that wrote that record, which may be one the model saw
    /// discarded (the discard was not committed) — with the subscriptions, QoS 2 identifiers
    /// awaiting release and in-flight identifiers on disk. Its routings not on disk and not
    /// yet delivered are lost; the deliveries on disk are counted as restored. The retained
    /// messages are the disk's. In durable mode, first: no retained publish its publisher saw
    /// acknowledged was lost, and no subscription a SUBACK confirmed. Returns, per client
    /// identifier whose session survived, the filters the crash changed (added, removed or
    /// regranted) against the session the model had.
    pub(crate) fn crash(
        &mut self,
        restart: &Restart,
        delivered: &BTreeSet<(u32, Uid)>,
        acked: &BTreeMap<Uid, u64>,
        durable: bool,
        v: &mut Violations,
    ) -> BTreeMap<String, BTreeSet<String>> {
        self.stats.crashes += 1;
        let snapshot = &restart.snapshot;
        if durable {
            self.check_retained_durable(snapshot, acked, v);
        }
        let before: BTreeMap<String, BTreeMap<String, QoS>> = self
            .incs
            .values()
            .filter(|i| i.alive)
            .map(|i| (i.client_id.clone(), i.subs.clone()))
            .collect();
        let mut changed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        self.conns.clear();
        self.connack_holds.clear();
        self.pending_deletions.clear();
        self.open_count = 0;
        self.expected_subacks.clear();
        self.subscribe_filters.clear();
        self.ends.clear();

        let mut survivors: BTreeMap<u32, &StoredSession> = BTreeMap::new();
        for session in &snapshot.sessions {
            let id = session.client_id.as_str();
            match restart.owners.get(id) {
                Some(&inc)
                    if self
                        .incs
                        .get(&inc)
                        .is_some_and(|i| i.persistent && i.client_id == id) =>
                {
                    survivors.insert(inc, session);
                }
                _ => v.push(
                    self.now,
                    format!("the disk holds a session of {id} that no persistent session wrote"),
                ),
            }
        }
        let alive: Vec<u32> = self.alive_incs().into_iter().collect();
        for inc in alive {
            if survivors.contains_key(&inc) {
                continue;
            }
            if self.incs.get(&inc).is_some_and(|i| i.persistent) {
                self.stats.vanished += 1;
            }
            self.discard(inc);
        }
        for (&inc, stored) in &survivors {
            let Some(i) = self.incs.get_mut(&inc) else {
                continue;
            };
            let revived_after_clean = !i.alive && self.discarded_by_clean.contains(&inc);
            if !i.alive {
                i.alive = true;
                self.alive_count += 1;
                self.stats.revived += 1;
            }
            i.conn = None;
            let old_outbound = core::mem::take(&mut i.outbound_ids);
            self.sub_count -= i.subs.len();
            let subs: BTreeMap<String, QoS> = stored
                .subscriptions
                .iter()
                .map(|(f, o)| (f.as_str().to_owned(), o.qos))
                .collect();
            if durable {
                // Durable mode: every subscription a SUBACK confirmed was committed.
                for (f, q) in &i.durable_subs {
                    if subs.get(f).is_none_or(|got| got < q) {
                        v.push(
                            self.now,
                            format!(
                                "durability: {}'s subscription {f} at QoS {} was acknowledged \
                                 but the crash lost it",
                                i.client_id,
                                q.as_u8()
                            ),
                        );
                    }
                }
            }
            let old = before.get(&i.client_id).cloned().unwrap_or_default();
            let differ: BTreeSet<String> = old
                .iter()
                .chain(&subs)
                .filter(|(f, _)| old.get(*f) != subs.get(*f))
                .map(|(f, _)| f.clone())
                .collect();
            if !differ.is_empty() {
                changed.insert(i.client_id.clone(), differ);
            }
            i.subs = subs;
            self.sub_count += i.subs.len();
            // What is on disk is as durable as what a SUBACK confirmed.
            i.durable_subs = i.subs.clone();
            i.awaiting_release = snapshot
                .release_ids
                .iter()
                .filter(|(c, _)| c.as_str() == i.client_id)
                .map(|(_, id)| id.get())
                .collect();
            i.outbound_ids = snapshot
                .deliveries
                .iter()
                .filter(|d| d.client_id.as_str() == i.client_id)
                .filter_map(|d| match d.state {
                    DeliveryState::Queued => None,
                    DeliveryState::AwaitingAck(id) | DeliveryState::AwaitingComp(id) => {
                        Some(id.get())
                    }
                })
                .collect();
            if !durable {
                // Exchanges the broker forgot: the client may hold their identifiers unreleased.
                for &id in old_outbound.difference(&i.outbound_ids) {
                    self.forgotten_qos2.insert((inc, id));
                }
            }
            if revived_after_clean && EXCUSE_CLEAN_CONNACK_BEFORE_DISCARD_COMMITTED {
                let clock = self.clock;
                self.revived_after_clean.entry(inc).or_default().push(clock);
                for &id in &i.awaiting_release {
                    self.revived_ids.insert((inc, id));
                }
            }
            self.by_client.insert(i.client_id.clone(), inc);
        }

        let uids: BTreeMap<u64, Uid> = snapshot
            .messages
            .iter()
            .filter_map(|(id, m)| Some((*id, Uid::parse(&m.payload)?)))
            .collect();
        let mut on_disk: BTreeMap<(u32, Uid), u32> = BTreeMap::new();
        for d in &snapshot.deliveries {
            let inc = self.live_inc(d.client_id.as_str());
            if let (Some(inc), Some(uid)) = (inc, uids.get(&d.message)) {
                *on_disk.entry((inc, *uid)).or_default() += 1;
            }
        }
        for (uid, routes) in &mut self.routes {
            for r in routes.iter_mut() {
                if r.lost || r.qos == QoS::AtMostOnce || !survivors.contains_key(&r.inc) {
                    continue;
                }
                let key = (r.inc, *uid);
                if !on_disk.contains_key(&key) && !delivered.contains(&key) {
                    r.lost = true;
                    self.stats.lost_routes += 1;
                }
            }
        }
        for (key, n) in on_disk {
            self.stats.restored += u64::from(n);
            *self.restored.entry(key).or_default() += n;
        }
        self.retained = snapshot
            .retained
            .iter()
            .map(|m| (m.topic.as_str().to_owned(), (m.payload.clone(), m.qos)))
            .collect();
        changed
    }

    /// Durable mode, at a crash: the disk's retained message of each topic is no older than
    /// the last retained publish on it that its publisher saw acknowledged.
    fn check_retained_durable(
        &self,
        snapshot: &StoreSnapshot,
        acked: &BTreeMap<Uid, u64>,
        v: &mut Violations,
    ) {
        let disk: BTreeMap<&str, &Bytes> = snapshot
            .retained
            .iter()
            .map(|m| (m.topic.as_str(), &m.payload))
            .collect();
        for (topic, history) in &self.retained_history {
            let acked_at = |p: &Bytes| {
                Uid::parse(p).is_some_and(|u| acked.get(&u).is_some_and(|&t| t <= self.now))
            };
            let Some(need) = history.iter().rposition(acked_at) else {
                continue;
            };
            let have = match disk.get(topic.as_str()) {
                Some(p) => history.iter().rposition(|h| h == *p),
                None => history.iter().rposition(Bytes::is_empty),
            };
            if have.is_none_or(|h| h < need) {
                v.push(
                    self.now,
                    format!(
                        "durability: after the crash the retained message of {topic} is {:?}, \
                         older than {:?}, whose retained publish was acknowledged: the broker \
                         lost an acknowledged message",
                        disk.get(topic.as_str()).map(|p| Uid::parse(p)),
                        history.get(need).and_then(|p| Uid::parse(p))
                    ),
                );
            }
        }
    }

    /// The input just applied emitted store operations up to `last_seq`: a CONNACK it held
    /// waits for no later one.
    pub(crate) fn bound_holds(&mut self, last_seq: u64) {
        for bound in self.connack_holds.values_mut().filter(|b| b.is_none()) {
            *bound = Some(last_seq);
        }
        for bound in self.pending_deletions.values_mut().filter(|b| b.is_none()) {
            *bound = Some(last_seq);
        }
    }

    /// A commit covered every store operation up to `seq`: what was held for them is released.
    pub(crate) fn committed(&mut self, seq: u64) {
        self.connack_holds
            .retain(|_, bound| bound.is_none_or(|b| b > seq));
        self.pending_deletions
            .retain(|_, bound| bound.is_none_or(|b| b > seq));
    }

    /// A fresh QoS 2 PUBLISH with packet identifier `id` reached incarnation `inc`: whether a
    /// periodic-mode crash forgot the exchange that last used `id` (so the client may take it
    /// for a duplicate). Asked once per such identifier.
    pub(crate) fn take_forgotten(&mut self, inc: u32, id: u16) -> bool {
        self.forgotten_qos2.remove(&(inc, id))
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
        let owes = match &packet {
            Packet::Publish(p) => p.qos != QoS::AtMostOnce,
            Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => true,
            _ => false,
        };
        if owes && let Some(c) = self.conns.get_mut(&conn) {
            c.owed_acks += 1;
        }
        match packet {
            Packet::Publish(p) => {
                let fresh = p.qos != QoS::ExactlyOnce
                    || p.packet_id.is_none_or(|id| {
                        self.incs
                            .get_mut(&inc)
                            .is_some_and(|i| i.awaiting_release.insert(id.get()))
                    });
                if fresh {
                    self.route(p.topic.as_str(), &p.payload, p.qos, p.retain, Some(inc));
                } else if let Some(id) = p.packet_id
                    && self.revived_ids.remove(&(inc, id.get()))
                    && !p.dup
                    && let Some(uid) = Uid::parse(&p.payload)
                {
                    // A new message taken for a resend by an identifier a crash revived.
                    self.swallowed.insert(uid);
                }
            }
            Packet::PubRel(rel) => {
                self.revived_ids.remove(&(inc, rel.packet_id.get()));
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
                let mut filters = Vec::new();
                let change = self.next_change;
                self.next_change += 1;
                for (filter, options) in &s.filters {
                    let f = filter.as_str().to_owned();
                    let qos = options.qos;
                    granted.push(qos);
                    filters.push((f.clone(), qos, change));
                    if let Some(i) = self.incs.get_mut(&inc) {
                        i.filter_changes.insert(f.clone(), change);
                        // Until its SUBACK, a replacement may or may not be what is committed.
                        if let Some(old) = i.durable_subs.get_mut(&f) {
                            *old = (*old).min(qos);
                        }
                        if i.subs.insert(f.clone(), qos).is_none() {
                            self.sub_count += 1;
                        }
                    }
                    for (topic, (payload, msg_qos)) in &self.retained {
                        if filter_matches(&f, topic) {
                            let offered = (*msg_qos).min(qos);
                            if offered == QoS::ExactlyOnce
                                && let Some(i) = self.incs.get_mut(&inc)
                            {
                                i.qos2_routed = true;
                            }
                            self.retained_offers.insert((
                                inc,
                                topic.clone(),
                                payload.clone(),
                                offered,
                            ));
                        }
                    }
                }
                self.expected_subacks
                    .insert((conn, s.packet_id.get()), granted);
                self.subscribe_filters
                    .insert((conn, s.packet_id.get()), filters);
            }
            Packet::Unsubscribe(u) => {
                let change = self.next_change;
                self.next_change += 1;
                for filter in &u.filters {
                    if let Some(i) = self.incs.get_mut(&inc) {
                        i.filter_changes.insert(filter.as_str().to_owned(), change);
                        i.durable_subs.remove(filter.as_str());
                        if i.subs.remove(filter.as_str()).is_some() {
                            self.sub_count -= 1;
                        }
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
            if self.incs.get(&inc).is_some_and(|i| i.persistent && i.alive) {
                self.discarded_by_clean.insert(inc);
                self.connack_holds.insert(conn, None);
                self.pending_deletions.insert(client_id.clone(), None);
            }
            self.discard(inc);
        }
        let deletion_pending = self.pending_deletions.contains_key(&client_id);
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
                        durable_subs: BTreeMap::new(),
                        filter_changes: BTreeMap::new(),
                        qos2_routed: false,
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
        } else if deletion_pending {
            self.connack_holds.insert(conn, None);
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
        self.connack_holds.remove(&conn);
        let will = c.will.take();
        let inc = c.inc;
        if let Some(will) = will {
            // [MQTT-3.1.2-8]
            self.stats.wills_due += 1;
            self.route(&will.topic, &will.payload, will.qos, will.retain, None);
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
        i.durable_subs.clear();
        i.awaiting_release.clear();
        i.outbound_ids.clear();
        if self.by_client.get(&i.client_id) == Some(&inc) {
            self.by_client.remove(&i.client_id);
        }
    }

    /// Routes one publication: retained store first ([MQTT-3.3.1-5], empty payload clears,
    /// [MQTT-3.3.1-10]), then one routing per matching incarnation at the highest granted QoS
    /// of its matching subscriptions ([MQTT-3.3.5-1]) capped by the published QoS.
    fn route(
        &mut self,
        topic: &str,
        payload: &Bytes,
        qos: QoS,
        retain: bool,
        publisher: Option<u32>,
    ) {
        self.clock += 1;
        self.stats.routed += 1;
        if retain {
            self.retained_history
                .entry(topic.to_owned())
                .or_default()
                .push(payload.clone());
            if payload.is_empty() {
                self.retained.remove(topic);
            } else {
                self.retained
                    .insert(topic.to_owned(), (payload.clone(), qos));
            }
        }
        let Some(uid) = Uid::parse(payload) else {
            // Untraced (a retained clear): only which sessions got a QoS 2 copy matters.
            if qos == QoS::ExactlyOnce {
                for i in self.incs.values_mut().filter(|i| i.alive) {
                    let granted = i
                        .subs
                        .iter()
                        .filter(|(f, _)| filter_matches(f, topic))
                        .map(|(_, q)| *q)
                        .max();
                    i.qos2_routed |= granted == Some(QoS::ExactlyOnce);
                }
            }
            return;
        };
        let publisher_persistent =
            publisher.map(|p| self.incs.get(&p).is_some_and(|i| i.persistent));
        let info = self.messages.entry(uid).or_insert_with(|| MessageInfo {
            topic: topic.to_owned(),
            qos,
            routed: 0,
            first_clock: self.clock,
            routings: Vec::new(),
            publisher_persistent,
        });
        info.routed += 1;
        info.routings.push((self.clock, self.now));
        for (&inc, i) in &mut self.incs {
            if !i.alive {
                continue;
            }
            let matching = |subs: &BTreeMap<String, QoS>| {
                subs.iter()
                    .filter(|(f, _)| filter_matches(f, topic))
                    .map(|(_, q)| *q)
                    .max()
            };
            if let Some(granted) = matching(&i.subs) {
                let durable = matching(&i.durable_subs)
                    .filter(|_| i.persistent)
                    .map_or(QoS::AtMostOnce, |d| qos.min(d));
                let qos = qos.min(granted);
                i.qos2_routed |= qos == QoS::ExactlyOnce;
                self.routes.entry(uid).or_default().push(Route {
                    inc,
                    qos,
                    clock: self.clock,
                    durable_qos: durable,
                    lost: false,
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
