//! [`SimStore`]: the simulated disk under a broker that runs with persistence — what a real
//! store (redb's group-commit worker) does with the broker's `Output::Store` operations, with
//! its delays and failures, and what survives a crash.
//!
//! The operations drained after one broker input form an atomic *group* (the broker's
//! contract). Closed groups wait in `pending`; when no commit is running, a commit starts with
//! everything pending (group commit: several groups, never part of one) and ends after a random
//! delay: it either succeeds (its operations are applied to the disk, a [`MemoryStore`], and the
//! broker is told `StoreDone { seq: last, Ok }`) or, now and then, fails (nothing is applied,
//! `StoreDone { seq: last, Err }`).
//!
//! After a failure the store follows the `Input::StoreDone` contract: it commits nothing more
//! until the broker's rewrite (`StoreOp::Clear` and puts of everything it keeps) is pending, and
//! then commits it together with whatever came between. So the disk is always a state the
//! broker had: a crash restores it consistently (restoring must discard nothing), and a broker
//! that never rewrote would stall the store and the run would not settle.
//!
//! A crash loses every pending group; a commit running at that moment may or may not have
//! reached the disk (drawn), and the broker never hears of it either way.
//!
//! For each persistent session record the store also keeps the model's session incarnation
//! that wrote it (the *owner*), so that a restored session can be matched to the incarnation it
//! belongs to.
//! Never: apply part of a group, or reorder operations.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use surgemq_core::broker::Persistence;
use surgemq_core::store::{MemoryStore, StoreOp, StoreSnapshot};

use super::message::Uid;
use super::rng::SimRng;

/// One operation as the world saw it: its sequence number, the operation, and for a
/// `PutSession` the model's incarnation of that client identifier when it was emitted.
#[derive(Debug, Clone)]
pub(crate) struct Logged {
    seq: u64,
    op: StoreOp,
    owner: Option<u32>,
}

/// The operations drained after one broker input.
#[derive(Debug, Clone, Default)]
struct Group {
    ops: Vec<Logged>,
}

#[derive(Debug)]
struct Commit {
    done_at: u64,
    groups: Vec<Group>,
    last_seq: u64,
    fail: bool,
    /// Mutation: report success but apply nothing.
    lose: bool,
}

/// A disk and who wrote its session records.
#[derive(Debug, Clone, Default)]
struct Disk {
    store: MemoryStore,
    owners: BTreeMap<String, u32>,
}

impl Disk {
    fn apply(&mut self, logged: &Logged) {
        match &logged.op {
            StoreOp::Clear => self.owners.clear(),
            StoreOp::PutSession(s) => {
                let id = s.client_id.as_str().to_owned();
                match logged.owner {
                    Some(owner) => {
                        self.owners.insert(id, owner);
                    }
                    None => {
                        self.owners.remove(&id);
                    }
                }
            }
            StoreOp::DeleteSession { client_id } => {
                self.owners.remove(client_id.as_str());
            }
            _ => {}
        }
        self.store.apply(&logged.op);
    }
}

/// What a crash leaves for the restart.
#[derive(Debug)]
pub(crate) struct Restart {
    /// What the new broker restores.
    pub(crate) snapshot: StoreSnapshot,
    /// Session record owner (model incarnation) by client identifier.
    pub(crate) owners: BTreeMap<String, u32>,
    /// The restored state is one the broker had (no mutation lost a commit): restoring it must
    /// discard nothing.
    pub(crate) consistent: bool,
}

/// Counters for the run summary.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct StoreStats {
    /// Operations emitted.
    pub(crate) ops: u64,
    /// Commits that succeeded.
    pub(crate) commits: u64,
    /// Commits that failed.
    pub(crate) failures: u64,
    /// Operations lost in crashes (pending, or in a commit that did not make it).
    pub(crate) lost_ops: u64,
    /// Commits held back after a failure until the broker's rewrite came.
    pub(crate) held_back: u64,
    /// Crashes while the store waited for a rewrite.
    pub(crate) crashed_unrewritten: u64,
}

/// The simulated store. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct SimStore {
    /// The broker's persistence mode.
    pub(crate) mode: Persistence,
    disk: Disk,
    current: Group,
    pending: VecDeque<Group>,
    commit: Option<Commit>,
    latency: (u64, u64),
    fail_per_mille: u64,
    /// Sequence number the next operation must carry.
    next_seq: u64,
    /// A commit failed and the broker's rewrite (`StoreOp::Clear` and what follows it) has not
    /// been taken into a commit yet: nothing may be committed before it.
    awaiting_rewrite: bool,
    /// The mutation lost a commit: the disk lacks what the broker was told it holds.
    lost: bool,
    /// Mutation: the first commit holding a QoS 1/2 delivery to this client identifier reports
    /// success and applies nothing.
    lose_for: Option<String>,
    /// The messages of the commit the mutation lost, once it happened.
    pub(crate) lost_targets: Option<BTreeSet<Uid>>,
    /// Message number to identity, for every traced message the broker stored.
    uids: BTreeMap<u64, Uid>,
    /// Counters.
    pub(crate) stats: StoreStats,
}

impl SimStore {
    /// A store for `mode`, with commit delays drawn from `latency` (ms) and this failure rate.
    pub(crate) fn new(mode: Persistence, latency: (u64, u64), fail_per_mille: u64) -> Self {
        Self {
            mode,
            disk: Disk::default(),
            current: Group::default(),
            pending: VecDeque::new(),
            commit: None,
            latency,
            fail_per_mille,
            next_seq: 1,
            awaiting_rewrite: false,
            lost: false,
            lose_for: None,
            lost_targets: None,
            uids: BTreeMap::new(),
            stats: StoreStats::default(),
        }
    }

    /// Arms the mutation: the next commit holding a QoS 1/2 delivery to `client_id` is lost.
    pub(crate) fn lose_next_commit_for(&mut self, client_id: &str) {
        self.lose_for = Some(client_id.to_owned());
    }

    /// An `Output::Store`; `Err` if its sequence number is not the next one.
    pub(crate) fn on_output(
        &mut self,
        seq: u64,
        op: StoreOp,
        owner: Option<u32>,
    ) -> Result<(), String> {
        self.stats.ops += 1;
        let expected = self.next_seq;
        self.next_seq = seq + 1;
        if let StoreOp::PutMessage { id, message } = &op
            && let Some(uid) = Uid::parse(&message.payload)
        {
            self.uids.insert(*id, uid);
        }
        self.current.ops.push(Logged { seq, op, owner });
        if seq == expected {
            Ok(())
        } else {
            Err(format!(
                "store operation {seq} emitted, expected {expected}"
            ))
        }
    }

    /// The last sequence number emitted by the current broker (0 before any).
    pub(crate) fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The end of one input's outputs: the group is closed.
    pub(crate) fn end_group(&mut self) {
        if !self.current.ops.is_empty() {
            self.pending.push_back(core::mem::take(&mut self.current));
        }
    }

    /// When the store next needs the world: a commit to finish, or one to start.
    pub(crate) fn next_due(&self, now: u64) -> Option<u64> {
        match &self.commit {
            Some(c) => Some(c.done_at),
            None if !self.pending.is_empty() => Some(now),
            None => None,
        }
    }

    /// Nothing pending and no commit running.
    pub(crate) fn is_idle(&self) -> bool {
        self.commit.is_none() && self.pending.is_empty() && self.current.ops.is_empty()
    }

    /// Finishes the running commit if it is due: the `StoreDone` to feed the broker.
    pub(crate) fn finish_due(&mut self, now: u64) -> Option<(u64, bool)> {
        if self.commit.as_ref().is_none_or(|c| c.done_at > now) {
            return None;
        }
        let commit = self.commit.take()?;
        if commit.fail {
            self.stats.failures += 1;
            self.awaiting_rewrite = true;
        } else {
            self.stats.commits += 1;
            if !commit.lose {
                for logged in commit.groups.iter().flat_map(|g| &g.ops) {
                    self.disk.apply(logged);
                }
            }
        }
        Some((commit.last_seq, !commit.fail))
    }

    /// Starts a commit of everything pending if none is running. `faults` allows a failure.
    pub(crate) fn start_if_idle(&mut self, now: u64, rng: &mut SimRng, faults: bool) {
        if self.commit.is_some() || self.pending.is_empty() {
            return;
        }
        if self.awaiting_rewrite {
            let rewrite = self
                .pending
                .iter()
                .flat_map(|g| &g.ops)
                .any(|l| matches!(l.op, StoreOp::Clear));
            if !rewrite {
                self.stats.held_back += 1;
                return;
            }
            self.awaiting_rewrite = false;
        }
        let groups: Vec<Group> = self.pending.drain(..).collect();
        let last_seq = groups
            .last()
            .and_then(|g| g.ops.last())
            .map_or(0, |l| l.seq);
        let fail = faults && self.fail_per_mille > 0 && rng.chance(self.fail_per_mille);
        let mut lose = false;
        if let Some(target) = self.lose_for.clone() {
            let mut targets = BTreeSet::new();
            for logged in groups.iter().flat_map(|g| &g.ops) {
                if let StoreOp::PutDelivery(d) = &logged.op
                    && d.client_id.as_str() == target
                    && d.qos != surgemq_core::codec::QoS::AtMostOnce
                    && let Some(uid) = self.uids.get(&d.message)
                    && !uid.will
                {
                    targets.insert(*uid);
                }
            }
            if !targets.is_empty() {
                lose = true;
                self.lost = true;
                self.lose_for = None;
                self.lost_targets = Some(targets);
            }
        }
        let delay = rng.range(self.latency.0, self.latency.1);
        self.commit = Some(Commit {
            done_at: now + delay,
            groups,
            last_seq,
            fail: fail && !lose,
            lose,
        });
    }

    /// The broker crashed: pending operations are lost, a running commit reached the disk or
    /// not (drawn). Returns what the restarted broker reads back. The next broker numbers its
    /// operations from 1 again.
    pub(crate) fn crash(&mut self, rng: &mut SimRng) -> Restart {
        let landed = rng.chance(500);
        if let Some(commit) = self.commit.take() {
            if landed && !commit.fail && !commit.lose {
                for logged in commit.groups.iter().flat_map(|g| &g.ops) {
                    self.disk.apply(logged);
                }
            } else {
                self.stats.lost_ops += commit
                    .groups
                    .iter()
                    .map(|g| g.ops.len() as u64)
                    .sum::<u64>();
            }
        }
        for group in self
            .pending
            .drain(..)
            .chain(core::iter::once(core::mem::take(&mut self.current)))
        {
            self.stats.lost_ops += group.ops.len() as u64;
        }
        self.next_seq = 1;
        if self.awaiting_rewrite {
            // The disk is as before the failed commit: a state the broker had.
            self.stats.crashed_unrewritten += 1;
            self.awaiting_rewrite = false;
        }
        Restart {
            snapshot: self.disk.store.snapshot(),
            owners: self.disk.owners.clone(),
            consistent: !self.lost,
        }
    }

    /// What the disk holds now.
    pub(crate) fn disk(&self) -> &MemoryStore {
        &self.disk.store
    }
}
