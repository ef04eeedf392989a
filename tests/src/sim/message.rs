//! [`Uid`]: the unique identity every simulated application message carries at the front of its
//! payload (`m:<actor>:<seq>|` for publishes, `w:<actor>:<connection>|` for Wills), so the
//! checker can trace each delivery back to its publication. Also the topic vocabulary the
//! workload draws from. Never: two publications with one identity.

use bytes::Bytes;
use core::fmt;

/// Identity of one application message: who published it and its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Uid {
    /// A Will (published by the broker on the client's behalf) rather than a PUBLISH.
    pub(crate) will: bool,
    /// Index of the simulated client that published it (or whose Will it is).
    pub(crate) actor: u32,
    /// Publication number for that client (connection number for a Will).
    pub(crate) seq: u32,
}

impl Uid {
    /// The payload: the identity, then `pad` filler bytes so payload sizes vary.
    pub(crate) fn payload(self, pad: usize) -> Bytes {
        let mut text = format!(
            "{}:{}:{}|",
            if self.will { 'w' } else { 'm' },
            self.actor,
            self.seq
        );
        text.extend(core::iter::repeat_n('.', pad));
        Bytes::from(text)
    }

    /// Reads the identity back from a payload; `None` if it carries none.
    pub(crate) fn parse(payload: &[u8]) -> Option<Self> {
        let end = payload.iter().position(|&b| b == b'|')?;
        let text = core::str::from_utf8(payload.get(..end)?).ok()?;
        let mut parts = text.split(':');
        let will = match parts.next()? {
            "m" => false,
            "w" => true,
            _ => return None,
        };
        let actor = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self { will, actor, seq })
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}.{}",
            if self.will { 'w' } else { 'm' },
            self.actor,
            self.seq
        )
    }
}

/// Topics the workload publishes to (never `$`-topics, never under `will/`).
pub(crate) const TOPICS: &[&str] = &["a", "a/b", "a/c", "a/b/c", "b", "b/x", "b/y/z", "c/x"];

/// Filters the workload subscribes to: exact, `+`, `#`, overlapping on purpose.
pub(crate) const FILTERS: &[&str] = &[
    "a", "a/b", "a/+", "a/#", "+/x", "b/#", "b/+/z", "#", "+", "c/+", "+/+/c", "will/#", "will/+",
];

/// The Will topic of a client identifier.
pub(crate) fn will_topic(client_id: &str) -> String {
    format!("will/{client_id}")
}

/// Reference topic matcher, written from the spec (section 4.7) and independent of the
/// broker's: `+` one level, `#` the rest including the parent, wildcards at the first level
/// never match a `$` topic ([MQTT-4.7.2-1]).
pub(crate) fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Uid, filter_matches};

    #[test]
    fn uid_round_trips_through_payload() {
        let uid = Uid {
            will: true,
            actor: 12,
            seq: 345,
        };
        assert_eq!(Uid::parse(&uid.payload(17)), Some(uid));
        assert_eq!(Uid::parse(b""), None);
        assert_eq!(Uid::parse(b"42"), None);
    }

    #[test]
    fn matcher_follows_the_spec_examples() {
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("a/+", "a/b"));
        assert!(!filter_matches("a/+", "a/b/c"));
        assert!(filter_matches("+/+/c", "a/b/c"));
        assert!(!filter_matches("#", "$SYS/x"));
        assert!(filter_matches("+", "b"));
    }
}
