//! [`SimClient`]: a simulated MQTT 3.1 / 3.1.1 client built directly on the codec (no client
//! library), itself sans-IO: it takes bytes and time and returns [`Action`]s for the world and
//! [`Note`]s for the checker.
//!
//! It behaves as a correct client must: CONNECT first; PUBACK for QoS 1; PUBREC / PUBREL /
//! PUBCOMP for QoS 2 with the receiver keeping received identifiers until PUBREL, so that it hands
//! each QoS 2 message to its application once ([MQTT-4.3.3-2], method B); resending unacknowledged
//! PUBLISH (DUP set) and PUBREL in order after resuming a persistent session ([MQTT-4.4.0-1]);
//! discarding its session state when the server has none; PINGREQ when idle and giving up on the
//! connection when PINGRESP does not come. Every payload carries a unique [`Uid`].
//!
//! Its roles: the *main* clients run a random workload (publish QoS 0/1/2, retained, clears,
//! subscribe, unsubscribe, DISCONNECT, abrupt close, going silent, reconnecting over a half-open
//! connection); the *watcher* keeps a persistent `#` subscription at QoS 2 and does nothing else;
//! *intruders* connect now and then with a main client's identifier and a clean session; the
//! *probe* subscribes to `#` at the end to read the retained messages.
//! Never: break the protocol on purpose (mutations live in the world, not here).

use std::collections::{BTreeSet, VecDeque};

use bytes::{Bytes, BytesMut};
use surgemq_core::broker::ConnId;
use surgemq_core::codec::{
    Connect, Disconnect, MAX_PACKET_SIZE, Packet, PacketId, Properties, ProtocolVersion, PubAck,
    PubRel, Publish, QoS, Subscribe, SubscriptionOptions, Unsubscribe, Will, decode_buf,
};
use surgemq_core::string::MqttString;
use surgemq_core::topic::{TopicFilter, TopicName};

use super::message::{FILTERS, TOPICS, Uid, will_topic};
use super::rng::SimRng;

/// How long a client waits for CONNACK before giving up on the connection.
const CONNACK_TIMEOUT_MS: u64 = 10_000;
/// Unacknowledged outgoing QoS 1/2 messages a client allows itself.
const MAX_OUTGOING: usize = 8;

/// What a simulated client is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Runs the random workload.
    Main,
    /// Persistent `#` subscriber at QoS 2: every QoS 1/2 message is owed to it.
    Watcher,
    /// Connects with a main client's identifier and a clean session now and then.
    Intruder,
    /// Reads the retained messages at the end.
    Probe,
}

/// Which part of the run the client is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Random workload and faults.
    Work,
    /// No workload: reconnect and let everything drain.
    Settle,
    /// Disconnect and stay away.
    Off,
}

/// What the client asks the world to do with its connection.
#[derive(Debug)]
pub(crate) enum Action {
    /// Open a new connection; it becomes the client's connection.
    Open,
    /// Write these bytes (one whole packet) to the connection.
    Write(Bytes),
    /// Close the connection (FIN after what was written).
    Fin,
    /// Stop using the connection without closing it (the peer never learns: half-open).
    Abandon,
}

/// What the client tells the checker.
#[derive(Debug)]
pub(crate) enum Note {
    /// A PUBLISH arrived; `app_new` is false for a QoS 2 duplicate the client filtered out.
    Receipt {
        /// The packet.
        publish: Publish,
        /// Handed to the application (not a QoS 2 duplicate).
        app_new: bool,
        /// Judge delivery by what reached the application (`app_new`), not by the bytes
        /// (see [`Receipt::app_level`](super::checker::Receipt)).
        app_level: bool,
        /// The connection it came on and its session incarnation, when the receipt is noted
        /// later than it arrived (a durable core client hands it over after a commit); `None`:
        /// the connection the data was read from.
        via: Option<(ConnId, u32)>,
    },
    /// The broker took ownership of a message (PUBACK, or PUBREC for QoS 2).
    Acked(Uid),
    /// A durable core client's disk committed the message (its `PutMessage`): from then on it
    /// is owed like an acknowledged one.
    Stored(Uid),
    /// The client published a traced message.
    Published,
    /// The broker did something a client can see is wrong.
    Problem(String),
}

/// Inputs and outputs of one call into the client.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// Virtual time of the call.
    pub(crate) now: u64,
    /// Connection actions, in order.
    pub(crate) actions: Vec<Action>,
    /// Notes for the checker, in order.
    pub(crate) notes: Vec<Note>,
}

impl Ctx {
    /// An empty context at `now`.
    pub(crate) fn new(now: u64) -> Self {
        Self {
            now,
            actions: Vec::new(),
            notes: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct OutMsg {
    id: PacketId,
    uid: Option<Uid>,
    topic: TopicName,
    qos: QoS,
    retain: bool,
    payload: Bytes,
    /// QoS 2: PUBREC received, PUBREL sent.
    awaiting_comp: bool,
}

#[derive(Debug)]
struct Conn {
    awaiting_connack: bool,
    since: u64,
    last_sent: u64,
    ping_sent: Option<u64>,
    clean: bool,
    /// SUBSCRIBE / UNSUBSCRIBE identifiers awaiting their acknowledgement.
    pending: BTreeSet<u16>,
    /// A CONNECT held back until then: the TCP connection is open but the client is slow to
    /// speak (the broker's connect timeout must deal with it).
    delayed_connect: Option<(u64, Packet)>,
}

/// A simulated client. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct SimClient {
    /// Its index in the world (the actor number in every [`Uid`] it publishes).
    pub(crate) index: usize,
    /// Client identifier it connects with.
    pub(crate) client_id: String,
    /// What it is for.
    pub(crate) role: Role,
    /// Protocol version it speaks.
    pub(crate) version: ProtocolVersion,
    keep_alive: u16,
    /// Prefers clean session 0.
    persistent: bool,
    rng: SimRng,
    mode: Mode,
    conn: Option<Conn>,
    next_id: u16,
    outgoing: VecDeque<OutMsg>,
    incoming_qos2: BTreeSet<u16>,
    subscribed: BTreeSet<String>,
    seq: u32,
    connects: u32,
    reconnect_at: Option<u64>,
    next_action: u64,
    action_gap: (u64, u64),
    silent_until: u64,
    /// The client does not read its socket before this (a slow reader).
    pub(crate) paused_until: u64,
}

impl SimClient {
    /// A client that first connects at `start`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        index: usize,
        client_id: String,
        role: Role,
        version: ProtocolVersion,
        keep_alive: u16,
        persistent: bool,
        action_gap: (u64, u64),
        start: u64,
        rng: SimRng,
    ) -> Self {
        Self {
            index,
            client_id,
            role,
            version,
            keep_alive,
            persistent,
            rng,
            mode: Mode::Work,
            conn: None,
            next_id: 1,
            outgoing: VecDeque::new(),
            incoming_qos2: BTreeSet::new(),
            subscribed: BTreeSet::new(),
            seq: 0,
            connects: 0,
            reconnect_at: Some(start),
            next_action: start,
            action_gap,
            silent_until: 0,
            paused_until: 0,
        }
    }

    // ---- getters ------------------------------------------------------------------------

    fn connected(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.awaiting_connack)
    }

    /// Connected, with nothing of its own unacknowledged.
    pub(crate) fn is_settled(&self) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| !c.awaiting_connack && c.pending.is_empty())
            && self.outgoing.is_empty()
    }

    /// Disconnected for good.
    pub(crate) fn is_off(&self) -> bool {
        self.conn.is_none() && self.reconnect_at.is_none()
    }

    /// Why the client is not settled, for a diagnosis.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{}#{} {:?} conn={} awaiting_connack={} pending={} outgoing={} reconnect_at={:?}",
            self.client_id,
            self.index,
            self.role,
            self.conn.is_some(),
            self.conn.as_ref().is_some_and(|c| c.awaiting_connack),
            self.conn.as_ref().map_or(0, |c| c.pending.len()),
            self.outgoing.len(),
            self.reconnect_at
        )
    }

    /// When the client next needs to run its timers.
    pub(crate) fn next_wake(&self) -> Option<u64> {
        let mut due = self.reconnect_at;
        let mut at = |t: u64| due = Some(due.map_or(t, |d| d.min(t)));
        if let Some(c) = &self.conn {
            if let Some((when, _)) = &c.delayed_connect {
                at(*when);
            }
            if c.awaiting_connack {
                at(c.since + CONNACK_TIMEOUT_MS);
            } else if self.keep_alive > 0 {
                let ka = u64::from(self.keep_alive) * 1000;
                if let Some(p) = c.ping_sent {
                    at(p + ka);
                }
                at((c.last_sent + ka).max(self.silent_until));
            }
        }
        if self.mode == Mode::Work {
            at(self.next_action);
        }
        due
    }

    // ---- inputs -------------------------------------------------------------------------

    /// Runs whatever timers are due.
    pub(crate) fn on_timer(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        if self.reconnect_at.is_some_and(|t| t <= now) {
            self.reconnect_at = None;
            if self.conn.is_none() && self.mode != Mode::Off {
                self.open(ctx);
            }
        }
        let due = self
            .conn
            .as_mut()
            .filter(|c| {
                c.delayed_connect
                    .as_ref()
                    .is_some_and(|(when, _)| *when <= now)
            })
            .and_then(|c| c.delayed_connect.take());
        if let Some((_, connect)) = due {
            self.send(ctx, &connect);
        }
        let ka = u64::from(self.keep_alive) * 1000;
        if let Some(c) = &self.conn {
            if c.awaiting_connack {
                if now >= c.since + CONNACK_TIMEOUT_MS {
                    self.drop_conn(ctx, Action::Abandon);
                }
            } else if ka > 0 {
                if c.ping_sent.is_some_and(|p| now >= p + ka) {
                    // No PINGRESP within the keep alive: the connection is dead to us.
                    self.drop_conn(ctx, Action::Abandon);
                } else if now >= self.silent_until && now >= c.last_sent + ka {
                    self.send(ctx, &Packet::PingReq);
                    if let Some(c) = &mut self.conn {
                        c.ping_sent.get_or_insert(now);
                    }
                }
            }
        }
        if now >= self.next_action {
            self.next_action = now + self.rng.range(self.action_gap.0, self.action_gap.1);
            if self.mode == Mode::Work && self.connected() && now >= self.silent_until {
                match self.role {
                    Role::Main => self.act(ctx),
                    Role::Intruder => self.intrude(ctx),
                    Role::Watcher | Role::Probe => {}
                }
            }
        }
    }

    /// Reads every whole packet in `inbox`.
    pub(crate) fn on_data(&mut self, ctx: &mut Ctx, inbox: &mut BytesMut) {
        while self.conn.is_some() {
            match decode_buf(inbox, self.version, MAX_PACKET_SIZE) {
                Ok(Some(packet)) => self.on_packet(ctx, packet),
                Ok(None) => return,
                Err(e) => {
                    ctx.notes.push(Note::Problem(format!(
                        "undecodable bytes from the broker: {e:?}"
                    )));
                    inbox.clear();
                    self.drop_conn(ctx, Action::Fin);
                    return;
                }
            }
        }
    }

    /// The connection ended under the client (EOF from the broker, or a reset).
    pub(crate) fn on_closed(&mut self, ctx: &mut Ctx) {
        self.conn = None;
        self.schedule_reconnect(ctx.now);
    }

    /// Enters a new part of the run.
    pub(crate) fn set_mode(&mut self, ctx: &mut Ctx, mode: Mode) {
        self.mode = mode;
        self.silent_until = 0;
        self.paused_until = 0;
        let leave = mode == Mode::Off || (mode == Mode::Settle && self.role == Role::Intruder);
        if leave {
            self.reconnect_at = None;
            if self.conn.is_some() {
                if self.connected() {
                    self.send(ctx, &Packet::Disconnect(Disconnect::normal()));
                }
                self.drop_conn(ctx, Action::Fin);
                self.reconnect_at = None;
            }
        } else if self.conn.is_none() {
            self.reconnect_at = Some(ctx.now);
        }
    }

    /// The last publications of the run, sent once everything has settled: one QoS 1 and one
    /// QoS 2 message from each main client, so every run ends with owed deliveries.
    pub(crate) fn final_round(&mut self, ctx: &mut Ctx) {
        if self.role == Role::Main && self.connected() {
            let topic = *self.rng.pick(TOPICS);
            self.publish(ctx, topic, QoS::AtLeastOnce, false, false);
            let topic = *self.rng.pick(TOPICS);
            self.publish(ctx, topic, QoS::ExactlyOnce, false, false);
        }
    }

    // ---- internals ----------------------------------------------------------------------

    fn schedule_reconnect(&mut self, now: u64) {
        self.reconnect_at = match (self.role, self.mode) {
            (_, Mode::Off) | (Role::Probe, _) | (Role::Intruder, Mode::Settle) => None,
            (Role::Intruder, Mode::Work) => Some(now + self.rng.range(5_000, 40_000)),
            (_, Mode::Work) => Some(now + self.rng.range(100, 3_000)),
            (_, Mode::Settle) => Some(now + self.rng.range(50, 500)),
        };
    }

    fn drop_conn(&mut self, ctx: &mut Ctx, how: Action) {
        ctx.actions.push(how);
        self.conn = None;
        self.schedule_reconnect(ctx.now);
    }

    fn send(&mut self, ctx: &mut Ctx, packet: &Packet) {
        let mut out = BytesMut::new();
        if let Err(e) = packet.encode(self.version, &mut out) {
            ctx.notes.push(Note::Problem(format!(
                "sim client cannot encode its packet: {e:?}"
            )));
            return;
        }
        ctx.actions.push(Action::Write(out.freeze()));
        if let Some(c) = &mut self.conn {
            c.last_sent = ctx.now;
        }
    }

    fn open(&mut self, ctx: &mut Ctx) {
        self.connects += 1;
        let clean = match self.role {
            Role::Watcher => false,
            Role::Intruder | Role::Probe => true,
            // Now and then a client switches between clean and persistent sessions.
            Role::Main if self.mode == Mode::Work && self.rng.chance(80) => self.persistent,
            Role::Main => !self.persistent,
        };
        let will =
            (matches!(self.role, Role::Main | Role::Intruder) && self.rng.chance(600)).then(|| {
                let uid = Uid {
                    will: true,
                    actor: self.index as u32,
                    seq: self.connects,
                };
                Will {
                    topic: TopicName::parse(&will_topic(&self.client_id))
                        .expect("valid will topic"),
                    payload: uid.payload(self.rng.below(20) as usize),
                    qos: QoS::from_u8(self.rng.below(3) as u8).unwrap_or_default(),
                    retain: self.rng.chance(250),
                    properties: Properties::new(),
                }
            });
        ctx.actions.push(Action::Open);
        self.conn = Some(Conn {
            awaiting_connack: true,
            since: ctx.now,
            last_sent: ctx.now,
            ping_sent: None,
            clean,
            pending: BTreeSet::new(),
            delayed_connect: None,
        });
        let connect = Connect {
            protocol: self.version,
            clean_start: clean,
            keep_alive: self.keep_alive,
            properties: Properties::new(),
            client_id: MqttString::new(&self.client_id).expect("valid client id"),
            will,
            username: None,
            password: None,
        };
        let connect = Packet::Connect(Box::new(connect));
        if self.role == Role::Main && self.mode == Mode::Work && self.rng.chance(30) {
            let when = ctx.now + self.rng.range(1_000, 20_000);
            if let Some(c) = &mut self.conn {
                c.delayed_connect = Some((when, connect));
            }
        } else {
            self.send(ctx, &connect);
        }
    }

    fn on_packet(&mut self, ctx: &mut Ctx, packet: Packet) {
        match packet {
            Packet::ConnAck(ack) => {
                let Some(c) = &mut self.conn else {
                    return;
                };
                if !c.awaiting_connack {
                    ctx.notes.push(Note::Problem("a second CONNACK".into()));
                    return;
                }
                if ack.reason.is_error() {
                    ctx.notes
                        .push(Note::Problem(format!("CONNECT refused: {:?}", ack.reason)));
                    self.drop_conn(ctx, Action::Fin);
                    return;
                }
                c.awaiting_connack = false;
                let clean = c.clean;
                if clean && ack.session_present {
                    // 3.1.1 [MQTT-3.2.2-1]
                    ctx.notes
                        .push(Note::Problem("session present on a clean session".into()));
                }
                // MQTT 3.1 has no Session Present flag: a 3.1 client that asked to keep its
                // session has to assume the server kept it.
                let present = if self.version == ProtocolVersion::V3_1 {
                    !clean
                } else {
                    ack.session_present
                };
                if clean || !present {
                    // The server has no session: ours is void too.
                    self.outgoing.clear();
                    self.incoming_qos2.clear();
                    self.subscribed.clear();
                } else {
                    self.resend(ctx);
                }
                match self.role {
                    Role::Watcher if !present => {
                        self.subscribe(ctx, &[("#", QoS::ExactlyOnce)]);
                    }
                    Role::Probe => self.subscribe(ctx, &[("#", QoS::AtMostOnce)]),
                    _ => {}
                }
            }
            Packet::Publish(publish) => {
                let app_new = match (publish.qos, publish.packet_id) {
                    (QoS::ExactlyOnce, Some(id)) => self.incoming_qos2.insert(id.get()),
                    _ => true,
                };
                match (publish.qos, publish.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => {
                        self.send(ctx, &Packet::PubAck(PubAck::success(id)));
                    }
                    (QoS::ExactlyOnce, Some(id)) => {
                        self.send(ctx, &Packet::PubRec(PubAck::success(id)));
                    }
                    _ => {}
                }
                ctx.notes.push(Note::Receipt {
                    publish,
                    app_new,
                    app_level: false,
                    via: None,
                });
            }
            Packet::PubAck(ack) => {
                let at = self
                    .outgoing
                    .iter()
                    .position(|m| m.id == ack.packet_id && m.qos == QoS::AtLeastOnce);
                if let Some(uid) = at
                    .and_then(|at| self.outgoing.remove(at))
                    .and_then(|m| m.uid)
                {
                    ctx.notes.push(Note::Acked(uid));
                }
            }
            Packet::PubRec(rec) => {
                let id = rec.packet_id;
                let found = self
                    .outgoing
                    .iter_mut()
                    .find(|m| m.id == id && m.qos == QoS::ExactlyOnce);
                if let Some(m) = found {
                    if !m.awaiting_comp {
                        m.awaiting_comp = true;
                        if let Some(uid) = m.uid {
                            ctx.notes.push(Note::Acked(uid));
                        }
                    }
                    self.send(ctx, &Packet::PubRel(PubRel::success(id)));
                }
            }
            Packet::PubComp(comp) => {
                let at = self
                    .outgoing
                    .iter()
                    .position(|m| m.id == comp.packet_id && m.awaiting_comp);
                if let Some(at) = at {
                    self.outgoing.remove(at);
                }
            }
            Packet::PubRel(rel) => {
                self.incoming_qos2.remove(&rel.packet_id.get());
                self.send(ctx, &Packet::PubComp(PubRel::success(rel.packet_id)));
            }
            Packet::SubAck(ack) => {
                if let Some(c) = &mut self.conn {
                    c.pending.remove(&ack.packet_id.get());
                }
            }
            Packet::UnsubAck(ack) => {
                if let Some(c) = &mut self.conn {
                    c.pending.remove(&ack.packet_id.get());
                }
            }
            Packet::PingResp => {
                if let Some(c) = &mut self.conn {
                    c.ping_sent = None;
                }
            }
            other => ctx.notes.push(Note::Problem(format!(
                "the broker sent a {:?}",
                other.packet_type()
            ))),
        }
    }

    /// After resuming a session: unacknowledged PUBLISH again with DUP, PUBREL again, in the
    /// original order ([MQTT-4.4.0-1]).
    fn resend(&mut self, ctx: &mut Ctx) {
        let packets: Vec<Packet> = self
            .outgoing
            .iter()
            .map(|m| {
                if m.awaiting_comp {
                    Packet::PubRel(PubRel::success(m.id))
                } else {
                    Packet::Publish(Publish {
                        dup: true,
                        qos: m.qos,
                        retain: m.retain,
                        topic: m.topic.clone(),
                        packet_id: Some(m.id),
                        properties: Properties::new(),
                        payload: m.payload.clone(),
                    })
                }
            })
            .collect();
        for packet in &packets {
            self.send(ctx, packet);
        }
    }

    fn allocate_id(&mut self) -> PacketId {
        loop {
            let id = self.next_id;
            self.next_id = if id == u16::MAX { 1 } else { id + 1 };
            let in_use = self.outgoing.iter().any(|m| m.id.get() == id)
                || self.conn.as_ref().is_some_and(|c| c.pending.contains(&id));
            if let (false, Some(id)) = (in_use, PacketId::new(id)) {
                return id;
            }
        }
    }

    fn publish(&mut self, ctx: &mut Ctx, topic: &str, qos: QoS, retain: bool, clear: bool) {
        if qos != QoS::AtMostOnce && self.outgoing.len() >= MAX_OUTGOING {
            return;
        }
        self.seq += 1;
        let uid = Uid {
            will: false,
            actor: self.index as u32,
            seq: self.seq,
        };
        let payload = if clear {
            Bytes::new()
        } else {
            let pad = if self.rng.chance(100) {
                self.rng.range(300, 3_000)
            } else {
                self.rng.below(64)
            };
            ctx.notes.push(Note::Published);
            uid.payload(pad as usize)
        };
        let topic = TopicName::parse(topic).expect("valid topic");
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.allocate_id());
        self.send(
            ctx,
            &Packet::Publish(Publish {
                dup: false,
                qos,
                retain,
                topic: topic.clone(),
                packet_id,
                properties: Properties::new(),
                payload: payload.clone(),
            }),
        );
        if let Some(id) = packet_id {
            self.outgoing.push_back(OutMsg {
                id,
                uid: (!clear).then_some(uid),
                topic,
                qos,
                retain,
                payload,
                awaiting_comp: false,
            });
        }
    }

    fn subscribe(&mut self, ctx: &mut Ctx, filters: &[(&str, QoS)]) {
        let id = self.allocate_id();
        if let Some(c) = &mut self.conn {
            c.pending.insert(id.get());
        }
        for (f, _) in filters {
            self.subscribed.insert((*f).to_owned());
        }
        let filters = filters
            .iter()
            .map(|(f, q)| {
                (
                    TopicFilter::parse(f).expect("valid filter"),
                    SubscriptionOptions::qos(*q),
                )
            })
            .collect();
        self.send(
            ctx,
            &Packet::Subscribe(Subscribe {
                packet_id: id,
                properties: Properties::new(),
                filters,
            }),
        );
    }

    fn unsubscribe(&mut self, ctx: &mut Ctx, filter: &str) {
        let id = self.allocate_id();
        if let Some(c) = &mut self.conn {
            c.pending.insert(id.get());
        }
        self.subscribed.remove(filter);
        self.send(
            ctx,
            &Packet::Unsubscribe(Unsubscribe {
                packet_id: id,
                properties: Properties::new(),
                filters: vec![TopicFilter::parse(filter).expect("valid filter")],
            }),
        );
    }

    fn random_qos(&mut self) -> QoS {
        match self.rng.below(10) {
            0..=2 => QoS::AtMostOnce,
            3..=6 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }

    /// One step of a main client's workload.
    fn act(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        match self.rng.below(1000) {
            0..450 => {
                let topic = *self.rng.pick(TOPICS);
                let qos = self.random_qos();
                let retain = self.rng.chance(150);
                let clear = retain && self.rng.chance(200);
                self.publish(ctx, topic, qos, retain, clear);
            }
            450..600 => {
                let n = self.rng.range(1, 2);
                let mut filters = Vec::new();
                for _ in 0..n {
                    let f = *self.rng.pick(FILTERS);
                    if !filters.iter().any(|(g, _)| *g == f) {
                        let q = self.random_qos();
                        filters.push((f, q));
                    }
                }
                self.subscribe(ctx, &filters);
            }
            600..700 => {
                let filter = if !self.subscribed.is_empty() && self.rng.chance(800) {
                    let list: Vec<&String> = self.subscribed.iter().collect();
                    (*self.rng.pick(&list)).clone()
                } else {
                    (*self.rng.pick(FILTERS)).to_owned()
                };
                self.unsubscribe(ctx, &filter);
            }
            700..715 => {
                self.send(ctx, &Packet::Disconnect(Disconnect::normal()));
                self.drop_conn(ctx, Action::Fin);
            }
            715..730 => self.drop_conn(ctx, Action::Fin),
            730..742 if self.keep_alive > 0 => {
                // Stop talking (no PINGREQ): the broker must close us after 1.5 keep alives.
                let ka = u64::from(self.keep_alive) * 1000;
                self.silent_until = now + self.rng.range(ka, 3 * ka);
            }
            742..752 => {
                // Give up on a connection the broker still thinks is fine, and connect again:
                // the broker must take the session over from the half-open connection.
                self.drop_conn(ctx, Action::Abandon);
                self.reconnect_at = None;
                self.open(ctx);
            }
            _ => {}
        }
    }

    /// One step of an intruder: a little traffic, then leave (politely or not).
    fn intrude(&mut self, ctx: &mut Ctx) {
        match self.rng.below(10) {
            0..=3 => {
                let topic = *self.rng.pick(TOPICS);
                let qos = self.random_qos();
                self.publish(ctx, topic, qos, false, false);
            }
            4..=5 => {
                let f = *self.rng.pick(FILTERS);
                let q = self.random_qos();
                self.subscribe(ctx, &[(f, q)]);
            }
            6..=7 => {
                self.send(ctx, &Packet::Disconnect(Disconnect::normal()));
                self.drop_conn(ctx, Action::Fin);
            }
            _ => self.drop_conn(ctx, Action::Fin),
        }
    }
}
