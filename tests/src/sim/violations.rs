//! [`Violations`]: the invariant violations a run found, each stamped with virtual time. Keeps
//! the first few in full and counts the rest, so a diverging run stays readable.

/// Violations found so far.
#[derive(Debug, Default, Clone)]
pub(crate) struct Violations {
    /// The first ones, as "t=<ms> <what>".
    pub(crate) list: Vec<String>,
    /// How many in all.
    pub(crate) total: usize,
}

impl Violations {
    const KEPT: usize = 40;

    /// Records one violation found at virtual time `now`.
    pub(crate) fn push(&mut self, now: u64, what: String) {
        self.total += 1;
        if self.list.len() < Self::KEPT {
            self.list.push(format!("t={now}ms {what}"));
        }
    }
}
