//! The delivery invariants, checked once the run has settled: every client-side receipt is set
//! against the [`Model`]'s routings.
//!
//! - **Justified**: every delivery was routed to that session incarnation at that QoS (so nothing
//!   arrives for a filter after its UNSUBSCRIBE was processed unless another subscription
//!   matches, nothing leaks across sessions, nothing is invented); every retained delivery was
//!   the retained message of its topic when a matching SUBSCRIBE was processed.
//! - **At least once**: every routing at QoS 1 or 2 to an incarnation still alive at the end was
//!   received on it (alive incarnations are all connected and drained at that point, so a
//!   missing message can no longer be "still queued"). Routings to an incarnation that ended
//!   (clean session closed, session discarded) owe nothing — that is MQTT's own rule.
//! - **Exactly once**: a QoS 2 delivery reaches the application of an incarnation at most once
//!   per routing the model allows (which is once, unless the publisher's session itself was
//!   replaced between its PUBLISH and its resend).
//! - **Order** ([MQTT-4.6.0-6]): per subscriber incarnation and per (publisher, topic), the first
//!   receipts of messages whose first routing to it was at QoS 1/2 come in routing order.
//!   (Redeliveries and QoS 0 copies may come later; a message routed once more by a publisher's
//!   resend may legitimately arrive after newer ones, so the first routing is the reference.)
//! - **Acknowledged means processed**: every PUBACK / PUBREC a publisher got is for a message
//!   the broker routed.
//! - **Core client** (`check_core_client`): a client driven by the core state machine
//!   completed every command, published in command order, and believes in exactly the
//!   subscriptions the broker holds for it.
//! - **Retained**: a fresh subscriber to `#` at the end receives exactly the model's retained
//!   message per topic.
//! - **Durability** (`check_durability`, durable mode): every QoS 1/2 message its publisher saw
//!   acknowledged reached every persistent session owed it durably — at least once, and exactly
//!   once for QoS 2 from a persistent publisher session.
//!
//! After a broker crash: routings the crash lost (neither on disk nor delivered) owe nothing
//! and are no order reference; a delivery restored from the disk as queued may arrive again
//! without DUP (QoS 1 always; QoS 2 only in periodic mode, where it may also reach the
//! application again: exactly once does not survive a periodic crash).
//!
//! Never: excuse a receipt because of what the broker's internals say.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use surgemq_core::broker::ConnId;
use surgemq_core::codec::QoS;

use super::core_client::CoreSimClient;
use super::message::Uid;
#[cfg(doc)]
use super::model::EXCUSE_CLEAN_CONNACK_BEFORE_DISCARD_COMMITTED;
use super::model::Model;
use super::violations::Violations;

/// One PUBLISH as a simulated client received it.
#[derive(Debug, Clone)]
pub(crate) struct Receipt {
    /// Session incarnation of the connection it came on.
    pub(crate) inc: u32,
    /// Connection it came on.
    pub(crate) conn: ConnId,
    /// Client identifier (for messages).
    pub(crate) client_id: String,
    /// Virtual time.
    pub(crate) at: u64,
    /// Identity read from the payload.
    pub(crate) uid: Option<Uid>,
    /// Topic.
    pub(crate) topic: String,
    /// Payload.
    pub(crate) payload: Bytes,
    /// QoS of the packet.
    pub(crate) qos: QoS,
    /// DUP flag.
    pub(crate) dup: bool,
    /// RETAIN flag.
    pub(crate) retain: bool,
    /// Handed to the application (not a filtered QoS 2 duplicate).
    pub(crate) app_new: bool,
    /// Received by a client with a real application layer (the core client): only copies
    /// handed to the application count as delivered, so a message the client swallows is
    /// missed even though its bytes arrived.
    pub(crate) app_level: bool,
}

/// Numbers from the delivery check, for the run summary.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DeliveryStats {
    /// QoS 1/2 routings owed to incarnations alive at the end.
    pub(crate) owed: usize,
    /// Receipts examined.
    pub(crate) receipts: usize,
    /// Order pairs checked.
    pub(crate) ordered: usize,
    /// Receipts with DUP set.
    pub(crate) redeliveries: usize,
    /// QoS 2 copies or swallowed messages excused by
    /// [`EXCUSE_CLEAN_CONNACK_BEFORE_DISCARD_COMMITTED`].
    pub(crate) excused: usize,
}

/// Checks every delivery invariant over the run's receipts. `alive` are the incarnations alive
/// (and, by then, connected and drained) at `now`.
pub(crate) fn check_deliveries(
    model: &Model,
    receipts: &[Receipt],
    acked: &BTreeMap<Uid, u64>,
    alive: &BTreeSet<u32>,
    durable: bool,
    now: u64,
    v: &mut Violations,
) -> DeliveryStats {
    let mut stats = DeliveryStats {
        receipts: receipts.len(),
        ..DeliveryStats::default()
    };
    let mut delivered: BTreeSet<(u32, Uid)> = BTreeSet::new();
    let mut qos2_count: BTreeMap<(u32, Uid), u32> = BTreeMap::new();
    let mut first_copies: BTreeMap<(u32, Uid, QoS), usize> = BTreeMap::new();
    // Order: (incarnation, will, publisher, topic) -> highest first-routing clock seen.
    let mut order: BTreeMap<(u32, bool, u32, String), (u64, Uid)> = BTreeMap::new();

    for r in receipts {
        if r.payload.is_empty() {
            continue; // A retained-message clear: carries no identity to trace.
        }
        let Some(uid) = r.uid else {
            v.push(
                r.at,
                format!(
                    "{} got a message nobody published: {:?} on {}",
                    r.client_id, r.payload, r.topic
                ),
            );
            continue;
        };
        if r.qos == QoS::AtMostOnce && r.dup {
            v.push(
                r.at,
                format!(
                    "{} got {uid} at QoS 0 with DUP set [MQTT-3.3.1-2]",
                    r.client_id
                ),
            );
        }
        if let Some(info) = model.messages.get(&uid)
            && info.topic != r.topic
        {
            v.push(
                r.at,
                format!(
                    "{} got {uid} on {}, published on {}",
                    r.client_id, r.topic, info.topic
                ),
            );
        }
        if r.retain {
            let offered =
                model
                    .retained_offers
                    .contains(&(r.inc, r.topic.clone(), r.payload.clone(), r.qos));
            if !offered {
                v.push(
                    r.at,
                    format!(
                        "{} (session #{}) got {uid} as retained on {} at QoS {} but no SUBSCRIBE it \
                         made was entitled to it",
                        r.client_id,
                        r.inc,
                        r.topic,
                        r.qos.as_u8()
                    ),
                );
            }
            continue;
        }
        let routes = model
            .routes
            .get(&uid)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // The first routing to this session that a crash did not lose: the order reference
        // (a lost routing was never delivered; the publisher's resend routed it again).
        let first = routes
            .iter()
            .find(|route| route.inc == r.inc && !route.lost)
            .or_else(|| routes.iter().find(|route| route.inc == r.inc));
        let Some(first) = first else {
            v.push(
                r.at,
                format!(
                    "{} (session #{}, {:?}) got {uid} on {} but no subscription of that session \
                     matched when it was routed (after UNSUBSCRIBE, or never subscribed)",
                    r.client_id, r.inc, r.conn, r.topic
                ),
            );
            continue;
        };
        if !routes
            .iter()
            .any(|route| route.inc == r.inc && route.qos == r.qos)
        {
            v.push(
                r.at,
                format!(
                    "{} got {uid} at QoS {}, routed to it at QoS {}",
                    r.client_id,
                    r.qos.as_u8(),
                    first.qos.as_u8()
                ),
            );
        }
        // Each routing is transmitted once with DUP 0; every other copy is a redelivery, which
        // must carry DUP 1 ([MQTT-3.3.1-1]). A crash is the exception: a delivery restored from
        // the disk as queued may have been sent before the crash, which the restarted broker
        // cannot know — for QoS 1 (written before its in-flight state is committed) and, in
        // periodic mode, QoS 2. Durable mode writes a QoS 2 PUBLISH only once its in-flight
        // state is committed, so a restored QoS 2 delivery is resent with DUP.
        // Counted per QoS: each copy comes from a routing at its own QoS.
        if r.qos != QoS::AtMostOnce && !r.dup {
            let firsts = first_copies.entry((r.inc, uid, r.qos)).or_default();
            *firsts += 1;
            let restored = if r.qos == QoS::AtLeastOnce || !durable {
                restored_count(model, r.inc, uid)
            } else {
                0
            };
            let routings = routes
                .iter()
                .filter(|route| route.inc == r.inc && route.qos == r.qos && !route.lost)
                .count()
                + restored;
            if *firsts > routings {
                v.push(
                    r.at,
                    format!(
                        "{} got {uid} {firsts} times without DUP, routed to it {routings} times \
                         [MQTT-3.3.1-1]",
                        r.client_id
                    ),
                );
            }
        }
        if r.dup {
            stats.redeliveries += 1;
        }
        if r.qos == QoS::ExactlyOnce && r.app_new {
            let n = qos2_count.entry((r.inc, uid)).or_default();
            *n += 1;
            // Each QoS 2 routing reaches the application once. Normally a message is routed
            // once; it is routed again only when the publisher resent it into a *different*
            // session incarnation (its own was discarded and a stale CONNECT created a new one,
            // which the client cannot tell apart: Session Present is one bit), and then a second
            // copy is no broker fault.
            // A routing lost in a crash was never delivered. In periodic mode, a QoS 2
            // delivery restored as queued may have reached the application before the crash
            // under another packet identifier: exactly once does not survive a crash there.
            let restored = if durable {
                0
            } else {
                restored_count(model, r.inc, uid)
            };
            let routings = routes
                .iter()
                .filter(|route| route.inc == r.inc && route.qos == QoS::ExactlyOnce && !route.lost)
                .count()
                + restored;
            let revived = revived_count(model, r.inc, first.clock);
            if *n as usize > routings && *n as usize <= routings + revived {
                stats.excused += 1;
            } else if *n as usize > routings {
                v.push(
                    r.at,
                    format!(
                        "{} (session #{}) got QoS 2 message {uid} {n} times, routed to it {routings} \
                         time(s)",
                        r.client_id, r.inc
                    ),
                );
            }
        }
        let counts = r.app_new || !r.app_level;
        if counts && delivered.insert((r.inc, uid)) && first.qos != QoS::AtMostOnce {
            stats.ordered += 1;
            let key = (r.inc, uid.will, uid.actor, r.topic.clone());
            match order.get(&key) {
                Some(&(clock, before)) if clock > first.clock => v.push(
                    r.at,
                    format!(
                        "{} (session #{}) got {uid} after {before}, but {uid} was routed first \
                         (same publisher and topic {}) [MQTT-4.6.0-6]",
                        r.client_id, r.inc, r.topic
                    ),
                ),
                _ => {
                    order.insert(key, (first.clock, uid));
                }
            }
        }
    }

    for (uid, routes) in &model.routes {
        for route in routes {
            if route.qos == QoS::AtMostOnce || !alive.contains(&route.inc) || route.lost {
                continue;
            }
            stats.owed += 1;
            if !delivered.contains(&(route.inc, *uid)) {
                let client = model
                    .incs
                    .get(&route.inc)
                    .map_or("?", |i| i.client_id.as_str());
                let (topic, published) = model
                    .messages
                    .get(uid)
                    .map_or(("?", 0), |m| (m.topic.as_str(), m.qos.as_u8()));
                v.push(
                    now,
                    format!(
                        "{client} (session #{}) never got {uid} (published at QoS {published} on \
                         {topic}, owed at QoS {}, routed at logical time {})",
                        route.inc,
                        route.qos.as_u8(),
                        route.clock
                    ),
                );
            }
        }
    }

    for uid in acked.keys() {
        if model.swallowed.contains(uid) {
            stats.excused += 1;
            continue;
        }
        if !model.messages.contains_key(uid) {
            v.push(
                now,
                format!(
                    "the publisher of {uid} got its acknowledgement but the broker never routed it"
                ),
            );
        }
    }
    stats
}

/// Extra QoS 2 copies of a message first routed to incarnation `inc` at logical time
/// `routed` allowed by [`EXCUSE_CLEAN_CONNACK_BEFORE_DISCARD_COMMITTED`]: one per revival
/// after it.
fn revived_count(model: &Model, inc: u32, routed: u64) -> usize {
    model
        .revived_after_clean
        .get(&inc)
        .map_or(0, |clocks| clocks.iter().filter(|&&c| c >= routed).count())
}

/// Deliveries of `uid` to incarnation `inc` that crashes restored from the disk.
fn restored_count(model: &Model, inc: u32, uid: Uid) -> usize {
    model.restored.get(&(inc, uid)).map_or(0, |&n| n as usize)
}

/// The durability invariant of durable mode, once the run has settled: every QoS 1/2 message
/// its publisher saw acknowledged (PUBACK, PUBREC; a core client's completion) reached every
/// persistent session that was owed it durably — the routing the acknowledgement answered (the
/// last one the broker processed before it) matched a subscription of that session whose SUBACK
/// had been sent, and the session is alive at the end (not discarded since). At least once for
/// QoS 1; for QoS 2 from a persistent publisher session, exactly once to the application (a DUP
/// resend of an unreleased packet identifier is not a second delivery), unless the model routed
/// it to that session more than once (the publisher's own session was replaced between its
/// PUBLISH and its resend). Crashes change nothing here: what was acknowledged was committed.
/// Returns the number of owed deliveries checked.
pub(crate) fn check_durability(
    model: &Model,
    receipts: &[Receipt],
    acked: &BTreeMap<Uid, u64>,
    alive: &BTreeSet<u32>,
    now: u64,
    v: &mut Violations,
) -> usize {
    let mut delivered: BTreeMap<(u32, Uid), u32> = BTreeMap::new();
    let mut qos2: BTreeMap<(u32, Uid), u32> = BTreeMap::new();
    for r in receipts.iter().filter(|r| !r.retain) {
        let Some(uid) = r.uid else {
            continue;
        };
        if r.app_new || !r.app_level {
            *delivered.entry((r.inc, uid)).or_default() += 1;
        }
        if r.qos == QoS::ExactlyOnce && r.app_new {
            *qos2.entry((r.inc, uid)).or_default() += 1;
        }
    }
    let mut owed = 0;
    for (uid, &acked_at) in acked {
        let Some(info) = model.messages.get(uid) else {
            continue; // "acknowledged but never routed", reported by `check_deliveries`.
        };
        let Some(&(clock, routed_at)) = info.routings.iter().rfind(|(_, at)| *at <= acked_at)
        else {
            continue;
        };
        let routes = model.routes.get(uid).map(Vec::as_slice).unwrap_or_default();
        for route in routes.iter().filter(|r| {
            r.clock == clock && r.durable_qos != QoS::AtMostOnce && alive.contains(&r.inc)
        }) {
            owed += 1;
            let client = model
                .incs
                .get(&route.inc)
                .map_or("?", |i| i.client_id.as_str());
            let key = (route.inc, *uid);
            if delivered.get(&key).copied().unwrap_or(0) == 0 {
                v.push(
                    now,
                    format!(
                        "durability: {client} (session #{}) never got {uid} (QoS {} on {}, routed \
                         at {routed_at} ms, acknowledged to its publisher at {acked_at} ms, owed \
                         durably at QoS {}): the broker lost an acknowledged message",
                        route.inc,
                        info.qos.as_u8(),
                        info.topic,
                        route.durable_qos.as_u8()
                    ),
                );
                continue;
            }
            if route.durable_qos == QoS::ExactlyOnce && info.publisher_persistent == Some(true) {
                let n = qos2.get(&key).copied().unwrap_or(0);
                let routings = routes
                    .iter()
                    .filter(|r| r.inc == route.inc && r.qos == QoS::ExactlyOnce && !r.lost)
                    .count()
                    .max(1);
                let first = routes
                    .iter()
                    .filter(|r| r.inc == route.inc)
                    .map(|r| r.clock)
                    .min()
                    .unwrap_or(route.clock);
                let routings = routings + revived_count(model, route.inc, first);
                if n as usize > routings {
                    v.push(
                        now,
                        format!(
                            "durability: {client} (session #{}) got QoS 2 message {uid} {n} \
                             times, routed to it {routings} time(s): not exactly once",
                            route.inc
                        ),
                    );
                }
            }
        }
    }
    owed
}

/// Checks a core-driven client's own bookkeeping once the run has settled, against the model:
/// every command it accepted completed (nothing lost across resets, takeovers and lost
/// sessions); its publications were first routed in the order it was asked to make them
/// ([MQTT-4.6.0-1], the in-flight resend keeps the original order); and its application's
/// subscriptions — subscribes completed, minus unsubscribes completed — are exactly the
/// broker's session (the client remade them correctly when the session was lost).
pub(crate) fn check_core_client(
    model: &Model,
    client: &CoreSimClient,
    now: u64,
    v: &mut Violations,
) {
    let id = &client.client_id;
    for what in client.unfinished() {
        v.push(now, format!("{id}: a command never completed: {what}"));
    }
    let mut latest: Option<(u64, Uid)> = None;
    for uid in client.publications() {
        let Some(info) = model.messages.get(&uid) else {
            continue; // QoS 0, lost with its connection.
        };
        match latest {
            Some((clock, before)) if clock > info.first_clock => v.push(
                now,
                format!(
                    "{id}: {uid} was first routed before {before}, which was published earlier"
                ),
            ),
            _ => latest = Some((info.first_clock, uid)),
        }
    }
    let mut app = client.subscriptions().clone();
    let mut session = model.session_subs(id).cloned().unwrap_or_default();
    // A known core-client bug or the Session Present ambiguity (see `core_client`).
    for filter in client.excused_filters() {
        app.remove(filter);
        session.remove(filter);
    }
    if app != session {
        v.push(
            now,
            format!(
                "{id}: the application's subscriptions {app:?} differ from the broker's session \
                 {session:?}"
            ),
        );
    }
}

/// Checks what a fresh `#` subscriber received as retained against the model's retained store.
pub(crate) fn check_retained(model: &Model, receipts: &[&Receipt], now: u64, v: &mut Violations) {
    let mut got: BTreeMap<&str, &Bytes> = BTreeMap::new();
    for r in receipts {
        if !r.retain {
            v.push(
                r.at,
                format!("the retained probe got a live message on {}", r.topic),
            );
            continue;
        }
        if got.insert(&r.topic, &r.payload).is_some() {
            v.push(
                r.at,
                format!(
                    "the retained probe got two retained messages on {}",
                    r.topic
                ),
            );
        }
    }
    for (topic, (payload, _)) in &model.retained {
        match got.remove(topic.as_str()) {
            Some(p) if p == payload => {}
            Some(p) => v.push(
                now,
                format!(
                    "retained on {topic} is {:?}, but the last retained publish was {:?}",
                    Uid::parse(p),
                    Uid::parse(payload)
                ),
            ),
            None => v.push(
                now,
                format!(
                    "retained message on {topic} ({:?}) is missing",
                    Uid::parse(payload)
                ),
            ),
        }
    }
    for (topic, payload) in got {
        v.push(
            now,
            format!(
                "retained message on {topic} ({:?}) should have been replaced or cleared",
                Uid::parse(payload)
            ),
        );
    }
}
