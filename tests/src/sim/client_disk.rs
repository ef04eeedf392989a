//! [`ClientDisk`]: the simulated disk under a durable core client (modelled on the `Node` of
//! `core/tests/client_store.rs`). The `Store` operations the client emits in one drain form an
//! atomic group; a commit takes every group pending when it starts, ends after a random delay and
//! answers `StoreDone`; now and then it fails (nothing applied, `StoreDone` with an error), and
//! then, as the contract says, nothing is committed until the group that starts with the client's
//! `Clear`. A process crash loses every group not committed (the running commit too).
//! Never: apply part of a group, or apply anything after a failure before the `Clear`.

use std::collections::VecDeque;

use surgemq_core::store::{MemoryStore, StoreOp, StoreSnapshot};

use super::rng::SimRng;

/// A commit under way.
#[derive(Debug, Clone, Copy)]
struct Commit {
    done_at: u64,
    /// How many of the pending groups it covers (the oldest).
    groups: usize,
    fail: bool,
}

/// What a finished commit did.
#[derive(Debug, Default)]
pub(crate) struct Finished {
    /// The `StoreDone` to feed: the last sequence number covered, and whether it failed.
    pub(crate) done: Option<(u64, bool)>,
    /// Message records (`PutMessage` ids) that reached the disk.
    pub(crate) stored: Vec<u64>,
}

/// Counters for the run summary.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DiskStats {
    /// Commits that reached the disk.
    pub(crate) commits: u64,
    /// Commits that failed.
    pub(crate) failures: u64,
    /// Groups discarded after a failure (before the rewrite).
    pub(crate) discarded: u64,
    /// Groups a crash lost.
    pub(crate) lost: u64,
}

/// A durable core client's disk. See the [module docs](self).
pub(crate) struct ClientDisk {
    disk: MemoryStore,
    pending: VecDeque<Vec<(u64, StoreOp)>>,
    commit: Option<Commit>,
    /// A commit failed: nothing is applied until the group that starts with `Clear`.
    failed: bool,
    latency: (u64, u64),
    fail_per_mille: u64,
    rng: SimRng,
    /// Counters.
    pub(crate) stats: DiskStats,
}

impl ClientDisk {
    /// An empty disk with commit delays drawn from `latency` (ms) and this failure rate.
    pub(crate) fn new(latency: (u64, u64), fail_per_mille: u64, rng: SimRng) -> Self {
        Self {
            disk: MemoryStore::new(),
            pending: VecDeque::new(),
            commit: None,
            failed: false,
            latency,
            fail_per_mille,
            rng,
            stats: DiskStats::default(),
        }
    }

    /// One drain's operations: an atomic group.
    pub(crate) fn push(&mut self, group: Vec<(u64, StoreOp)>) {
        if !group.is_empty() {
            self.pending.push_back(group);
        }
    }

    /// When the running commit ends.
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.commit.map(|c| c.done_at)
    }

    /// Nothing pending and no commit running.
    pub(crate) fn is_idle(&self) -> bool {
        self.commit.is_none() && self.pending.is_empty()
    }

    /// Starts a commit of every pending group if none is running.
    pub(crate) fn start_if_idle(&mut self, now: u64) {
        if self.commit.is_some() || self.pending.is_empty() {
            return;
        }
        let fail = self.fail_per_mille > 0 && self.rng.chance(self.fail_per_mille);
        let delay = self.rng.range(self.latency.0, self.latency.1);
        self.commit = Some(Commit {
            done_at: now + delay,
            groups: self.pending.len(),
            fail,
        });
    }

    /// Finishes the running commit if it is due.
    pub(crate) fn finish_due(&mut self, now: u64) -> Option<Finished> {
        let commit = self.commit.filter(|c| c.done_at <= now)?;
        self.commit = None;
        let groups: Vec<Vec<(u64, StoreOp)>> = self.pending.drain(..commit.groups).collect();
        let mut finished = Finished::default();
        if commit.fail {
            self.stats.failures += 1;
            self.failed = true;
            let last = groups.last().and_then(|g| g.last()).map(|(seq, _)| *seq);
            finished.done = last.map(|seq| (seq, false));
            return Some(finished);
        }
        self.stats.commits += 1;
        let mut last = None;
        for group in groups {
            if self.failed {
                if !matches!(group.first(), Some((_, StoreOp::Clear))) {
                    self.stats.discarded += 1;
                    continue;
                }
                self.failed = false;
            }
            for (seq, op) in &group {
                self.disk.apply(op);
                if let StoreOp::PutMessage { id, .. } = op {
                    finished.stored.push(*id);
                }
                last = Some(*seq);
            }
        }
        finished.done = last.map(|seq| (seq, true));
        Some(finished)
    }

    /// The process crashed: everything not committed is gone. The next process numbers its
    /// operations from 1 again and owes no rewrite.
    pub(crate) fn crash(&mut self) {
        self.stats.lost += self.pending.len() as u64;
        self.pending.clear();
        self.commit = None;
        self.failed = false;
    }

    /// What a restarted process reads back.
    pub(crate) fn snapshot(&self) -> StoreSnapshot {
        self.disk.snapshot()
    }
}
