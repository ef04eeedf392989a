//! [`TopicFilter`] and [`SharedFilter`]: the validated filters a SUBSCRIBE carries.
//!
//! Owns the wildcard placement rules, the `$share/{ShareName}/{filter}` form of MQTT 5.0 shared
//! subscriptions, and the naive reference matcher the subscription trie must agree with.
//! Never: normalise, trim or otherwise change the bytes it was given ([MQTT-4.7.3-4]).

use super::{TopicError, TopicName};
use crate::string::MqttString;
use core::fmt;
use core::str::FromStr;

/// The prefix that marks a shared subscription (MQTT 5.0 section 4.8.2).
pub const SHARE_PREFIX: &str = "$share/";

/// A topic filter, plain or shared (`$share/{group}/{filter}`). Constructed only by validation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TopicFilter(MqttString);

/// The parts of a shared subscription filter `$share/{group}/{filter}`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SharedFilter<'a> {
    /// The ShareName: non-empty, without '/', '+' or '#'.
    pub group: &'a str,
    /// The topic filter the group subscribes to.
    pub filter: &'a str,
}

impl TopicFilter {
    /// Validates `s` as a topic filter, plain or shared.
    pub fn new(s: MqttString) -> Result<Self, TopicError> {
        validate_filter(s.as_str())?;
        Ok(Self(s))
    }

    /// Validates `s` and copies it into a new buffer.
    pub fn parse(s: &str) -> Result<Self, TopicError> {
        validate_filter(s)?;
        Ok(Self(MqttString::new(s)?))
    }

    /// Validates a static string and wraps it without copying.
    pub fn from_static(s: &'static str) -> Result<Self, TopicError> {
        Self::new(MqttString::from_static(s)?)
    }

    /// The whole filter as `&str`, `$share/{group}/` prefix included.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The whole filter as the underlying MQTT string.
    pub fn as_mqtt_string(&self) -> &MqttString {
        &self.0
    }

    /// Gives back the underlying MQTT string.
    pub fn into_inner(self) -> MqttString {
        self.0
    }

    /// The group and inner filter when this is a shared subscription filter.
    pub fn shared(&self) -> Option<SharedFilter<'_>> {
        split_shared(self.as_str())
    }

    /// Whether this is a shared subscription filter.
    pub fn is_shared(&self) -> bool {
        self.shared().is_some()
    }

    /// The filter topics are matched against: the inner filter for a shared one, else the whole.
    pub fn inner_filter(&self) -> &str {
        match self.shared() {
            Some(shared) => shared.filter,
            None => self.as_str(),
        }
    }

    /// Whether the (inner) filter contains '+' or '#'.
    pub fn has_wildcards(&self) -> bool {
        self.inner_filter().contains(['+', '#'])
    }

    /// The levels of the (inner) filter between '/' separators; empty levels are real levels.
    pub fn levels(&self) -> impl Iterator<Item = &str> {
        self.inner_filter().split('/')
    }

    /// Whether `name` matches the (inner) filter: the simple reference matcher.
    ///
    /// A leading '+' or '#' does not match a name starting with '$' ([MQTT-4.7.2-1]); "a/#" also
    /// matches "a"; nothing is normalised ([MQTT-4.7.3-4]); the alias-only empty name matches nothing.
    pub fn matches(&self, name: &TopicName) -> bool {
        matches_str(self.inner_filter(), name.as_str())
    }
}

/// The reference matcher over plain strings: `filter` is a valid unshared filter.
fn matches_str(filter: &str, name: &str) -> bool {
    if name.is_empty() {
        return false;
    }
    if name.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut name_levels = name.split('/');
    loop {
        match (filter_levels.next(), name_levels.next()) {
            // '#' also matches the parent level: "sport/#" matches "sport".
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(n)) if f == n => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn split_shared(s: &str) -> Option<SharedFilter<'_>> {
    let rest = s.strip_prefix(SHARE_PREFIX)?;
    let (group, filter) = rest.split_once('/')?;
    Some(SharedFilter { group, filter })
}

fn validate_filter(s: &str) -> Result<(), TopicError> {
    let Some(rest) = s.strip_prefix(SHARE_PREFIX) else {
        return validate_plain_filter(s);
    };
    let (group, filter) = match rest.split_once('/') {
        Some(parts) => parts,
        // "$share/" has no ShareName; "$share/g" has no filter.
        None if rest.is_empty() => return Err(TopicError::InvalidShareName),
        None => return Err(TopicError::EmptySharedFilter),
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Err(TopicError::InvalidShareName);
    }
    if filter.is_empty() {
        return Err(TopicError::EmptySharedFilter);
    }
    validate_plain_filter(filter)
}

fn validate_plain_filter(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = s.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') {
            if level != "#" || levels.peek().is_some() {
                return Err(TopicError::MisplacedMultiLevelWildcard);
            }
        } else if level.contains('+') && level != "+" {
            return Err(TopicError::PartialLevelSingleWildcard);
        }
    }
    Ok(())
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for TopicFilter {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl FromStr for TopicFilter {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, TopicError> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for TopicFilter {
    type Error = TopicError;
    fn try_from(s: &str) -> Result<Self, TopicError> {
        Self::parse(s)
    }
}

impl TryFrom<MqttString> for TopicFilter {
    type Error = TopicError;
    fn try_from(s: MqttString) -> Result<Self, TopicError> {
        Self::new(s)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::string::StringError;
    use alloc::string::String;

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::parse(s).unwrap()
    }

    fn name(s: &str) -> TopicName {
        TopicName::parse(s).unwrap()
    }

    fn matches(f: &str, n: &str) -> bool {
        filter(f).matches(&name(n))
    }

    #[test]
    fn empty_filter_is_rejected() {
        // MQTT 3.1.1 [MQTT-4.7.3-1], MQTT 5.0 [MQTT-4.7.3-1]
        assert_eq!(TopicFilter::parse(""), Err(TopicError::Empty));
    }

    #[test]
    fn null_character_is_rejected_in_filters() {
        // MQTT 3.1.1 [MQTT-4.7.3-2], MQTT 5.0 [MQTT-4.7.3-2]
        assert_eq!(
            TopicFilter::parse("a/\0/#"),
            Err(TopicError::String(StringError::NullCharacter))
        );
    }

    #[test]
    fn filters_are_limited_to_65535_bytes() {
        // MQTT 3.1.1 [MQTT-4.7.3-3], MQTT 5.0 [MQTT-4.7.3-3]
        let mut max: String = core::iter::repeat_n('a', 65_533).collect();
        max.push_str("/#");
        assert!(TopicFilter::parse(&max).is_ok());
        max.insert(0, 'a');
        assert_eq!(
            TopicFilter::parse(&max),
            Err(TopicError::String(StringError::TooLong { len: 65_536 }))
        );
    }

    #[test]
    fn multi_level_wildcard_must_be_a_whole_last_level() {
        // MQTT 3.1.1 [MQTT-4.7.1-2], MQTT 5.0 [MQTT-4.7.1-1]
        for ok in ["#", "sport/#", "sport/tennis/#", "/#", "+/#", "a//#"] {
            assert!(TopicFilter::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "sport/tennis#",
            "sport/tennis/#/ranking",
            "#/",
            "#/a",
            "a#",
            "a/#b",
            "##",
            "+#",
        ] {
            assert_eq!(
                TopicFilter::parse(bad),
                Err(TopicError::MisplacedMultiLevelWildcard),
                "{bad}"
            );
        }
    }

    #[test]
    fn single_level_wildcard_must_fill_a_whole_level() {
        // MQTT 3.1.1 [MQTT-4.7.1-3], MQTT 5.0 [MQTT-4.7.1-2]
        for ok in [
            "+",
            "+/tennis/#",
            "sport/+/player1",
            "sport/+",
            "+/+",
            "/+",
            "+/",
        ] {
            assert!(TopicFilter::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["sport+", "sport/+tennis", "a/b+/c", "++", "++/"] {
            assert_eq!(
                TopicFilter::parse(bad),
                Err(TopicError::PartialLevelSingleWildcard),
                "{bad}"
            );
        }
    }

    #[test]
    fn multi_level_wildcard_matches_parent_and_all_children() {
        // Spec example (section 4.7.1.2). MQTT 3.1.1 [MQTT-4.7.1-2], MQTT 5.0 [MQTT-4.7.1-1]
        for n in [
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
        ] {
            assert!(matches("sport/tennis/player1/#", n), "{n}");
        }
        assert!(!matches("sport/tennis/player1/#", "sport/tennis/player2"));
        assert!(!matches("sport/tennis/player1/#", "sport/tennis"));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "sport/tennis"));
        // '#' covers empty levels too.
        assert!(matches("sport/#", "sport/"));
        assert!(matches("sport/#", "sport//x"));
        assert!(matches("#", "/"));
    }

    #[test]
    fn single_level_wildcard_matches_exactly_one_level() {
        // Spec examples (section 4.7.1.3). MQTT 3.1.1 [MQTT-4.7.1-3], MQTT 5.0 [MQTT-4.7.1-2]
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("+/tennis/#", "sport/tennis/player1"));
        assert!(matches("sport/+/player1", "sport/tennis/player1"));
        assert!(matches("+", "sport"));
        assert!(matches("+/", "a/"));
        assert!(!matches("+/", "a"));
    }

    #[test]
    fn leading_wildcards_do_not_match_dollar_topics() {
        // Spec examples (section 4.7.2). MQTT 3.1.1 [MQTT-4.7.2-1], MQTT 5.0 [MQTT-4.7.2-1]
        assert!(!matches("#", "$SYS/monitor/Clients"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(!matches("+", "$"));
        assert!(!matches("+/#", "$x/y"));
        assert!(!matches("$share/g/#", "$SYS/a"));
        // Only the first level counts: a '$' further in is an ordinary character.
        assert!(matches("a/+", "a/$x"));
        assert!(matches("a/#", "a/$x/y"));
    }

    #[test]
    fn matching_applies_no_normalisation() {
        // MQTT 3.1.1 [MQTT-4.7.3-4], MQTT 5.0 [MQTT-4.7.3-4]
        assert!(!matches("ACCOUNTS", "Accounts"));
        assert!(!matches("a/b", "a//b"));
        assert!(!matches("a/b", "a/b/"));
        assert!(!matches("a/b", "/a/b"));
        assert!(!matches("a /b", "a/b"));
        assert!(matches("a//b", "a//b"));
        assert!(matches("/", "/"));
        assert!(matches("ä/€", "ä/€"));
    }

    #[test]
    fn alias_only_name_matches_nothing() {
        assert!(!filter("#").matches(&TopicName::alias_only()));
        assert!(!filter("+").matches(&TopicName::alias_only()));
    }

    #[test]
    fn shared_filter_splits_into_group_and_filter() {
        // MQTT 5.0 [MQTT-4.8.2-1] [MQTT-4.8.2-2]
        let f = filter("$share/consumer1/sport/tennis/+");
        assert_eq!(
            f.shared(),
            Some(SharedFilter {
                group: "consumer1",
                filter: "sport/tennis/+"
            })
        );
        assert!(f.is_shared());
        assert!(f.has_wildcards());
        assert_eq!(f.inner_filter(), "sport/tennis/+");
        assert!(f.matches(&name("sport/tennis/player1")));
        assert!(!f.matches(&name("$share/consumer1/sport/tennis/player1")));
        let inner_dollar = filter("$share/g/$SYS/#");
        assert!(inner_dollar.matches(&name("$SYS/broker/load")));
        assert!(!filter("$share/g/a").has_wildcards());
        // "$share" alone or with another case is an ordinary filter.
        assert_eq!(filter("$share").shared(), None);
        assert_eq!(filter("$SHARE/g/a").shared(), None);
        assert_eq!(filter("a/$share/g/a").shared(), None);
    }

    #[test]
    fn share_name_must_be_non_empty() {
        // MQTT 5.0 [MQTT-4.8.2-1]
        assert_eq!(
            TopicFilter::parse("$share/"),
            Err(TopicError::InvalidShareName)
        );
        assert_eq!(
            TopicFilter::parse("$share//x"),
            Err(TopicError::InvalidShareName)
        );
    }

    #[test]
    fn share_name_has_no_wildcards_and_is_followed_by_a_filter() {
        // MQTT 5.0 [MQTT-4.8.2-2]
        for bad in ["$share/+/x", "$share/#/x", "$share/a+/x", "$share/a#b/x"] {
            assert_eq!(
                TopicFilter::parse(bad),
                Err(TopicError::InvalidShareName),
                "{bad}"
            );
        }
        assert_eq!(
            TopicFilter::parse("$share/g"),
            Err(TopicError::EmptySharedFilter)
        );
        assert_eq!(
            TopicFilter::parse("$share/g/"),
            Err(TopicError::EmptySharedFilter)
        );
        assert_eq!(
            TopicFilter::parse("$share/g/a/#/b"),
            Err(TopicError::MisplacedMultiLevelWildcard)
        );
        assert_eq!(
            TopicFilter::parse("$share/g/a+"),
            Err(TopicError::PartialLevelSingleWildcard)
        );
        // The inner filter may itself have empty levels.
        assert_eq!(
            filter("$share/g//").shared(),
            Some(SharedFilter {
                group: "g",
                filter: "/"
            })
        );
    }

    #[test]
    fn from_static_and_conversions_agree() {
        let a = TopicFilter::from_static("sport/+").unwrap();
        let b: TopicFilter = "sport/+".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.clone().into_inner(), *b.as_mqtt_string());
        assert_eq!(alloc::format!("{a}"), "sport/+");
        assert_eq!(
            TopicFilter::from_static("sport+"),
            Err(TopicError::PartialLevelSingleWildcard)
        );
    }
}
