//! [`TopicName`]: the validated topic a PUBLISH is sent to.
//!
//! Owns the topic-name rules: at least one character, no wildcard characters. Never: normalise,
//! trim or otherwise change the bytes it was given ([MQTT-4.7.3-4]).

use super::TopicError;
use crate::string::{MqttString, StringError, any_byte};
use core::fmt;
use core::str::FromStr;

/// A topic name: a non-empty MQTT string without '+' or '#'. Constructed only by validation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TopicName(MqttString);

impl TopicName {
    /// Validates `s` as a topic name: non-empty ([MQTT-4.7.3-1]) and without wildcards ([MQTT-3.3.2-2]).
    pub fn new(s: MqttString) -> Result<Self, TopicError> {
        validate_name(s.as_str())?;
        Ok(Self(s))
    }

    /// Validates wire bytes as a topic name in one pass (length, U+0000, wildcards), then the
    /// UTF-8: the decoder's path for every PUBLISH.
    pub fn from_bytes(bytes: bytes::Bytes) -> Result<Self, TopicError> {
        Self::check_wire(&bytes)?;
        Self::from_checked_wire(bytes)
    }

    /// Every topic-name rule but the UTF-8 one, on borrowed bytes: length, non-empty, no
    /// U+0000, no wildcard. The decoder runs it before it shares the bytes.
    #[inline(always)]
    pub(crate) fn check_wire(bytes: &[u8]) -> Result<(), TopicError> {
        if bytes.len() > crate::string::MAX_STRING_LEN {
            return Err(TopicError::String(StringError::TooLong {
                len: bytes.len(),
            }));
        }
        if bytes.is_empty() {
            return Err(TopicError::Empty);
        }
        // '#' (0x23) and '+' (0x2B) differ only in bit 3, so one comparison finds both.
        if any_byte(bytes, |b| b == 0 || b | 0x08 == b'+') {
            // Rare: say which rule was broken.
            return Err(if bytes.contains(&0) {
                TopicError::String(StringError::NullCharacter)
            } else {
                TopicError::WildcardInName
            });
        }
        Ok(())
    }

    /// Wraps bytes that passed [`Self::check_wire`], checking their UTF-8.
    #[inline(always)]
    pub(crate) fn from_checked_wire(bytes: bytes::Bytes) -> Result<Self, TopicError> {
        Ok(Self(MqttString::from_prechecked(bytes)?))
    }

    /// Validates `s` and copies it into a new buffer.
    pub fn parse(s: &str) -> Result<Self, TopicError> {
        validate_name(s)?;
        Ok(Self(MqttString::new(s)?))
    }

    /// Validates a static string and wraps it without copying.
    pub fn from_static(s: &'static str) -> Result<Self, TopicError> {
        Self::new(MqttString::from_static(s)?)
    }

    /// The empty name a v5 PUBLISH carries when it relies on a Topic Alias; it matches no filter.
    pub const fn alias_only() -> Self {
        Self(MqttString::empty())
    }

    /// The name as `&str`.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The name as the underlying MQTT string.
    pub fn as_mqtt_string(&self) -> &MqttString {
        &self.0
    }

    /// Gives back the underlying MQTT string.
    pub fn into_inner(self) -> MqttString {
        self.0
    }

    /// Whether this is the [`alias_only`](Self::alias_only) placeholder.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the name starts with '$' (such names are not matched by a leading wildcard, [MQTT-4.7.2-1]).
    pub fn is_system(&self) -> bool {
        self.as_str().starts_with('$')
    }

    /// The levels between '/' separators; empty levels are real levels ("a//b" has three).
    pub fn levels(&self) -> impl Iterator<Item = &str> {
        self.as_str().split('/')
    }
}

fn validate_name(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    // '#' (0x23) and '+' (0x2B) differ only in bit 3, so one comparison finds both.
    if any_byte(s.as_bytes(), |b| b | 0x08 == b'+') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AsRef<str> for TopicName {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl FromStr for TopicName {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, TopicError> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for TopicName {
    type Error = TopicError;
    fn try_from(s: &str) -> Result<Self, TopicError> {
        Self::parse(s)
    }
}

impl TryFrom<MqttString> for TopicName {
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
    use alloc::vec::Vec;

    #[test]
    fn empty_name_is_rejected() {
        // MQTT 3.1.1 [MQTT-4.7.3-1], MQTT 5.0 [MQTT-4.7.3-1]
        assert_eq!(TopicName::parse(""), Err(TopicError::Empty));
        assert_eq!(TopicName::new(MqttString::empty()), Err(TopicError::Empty));
    }

    #[test]
    fn wildcards_are_rejected_in_names() {
        // MQTT 3.1.1 [MQTT-4.7.1-1] [MQTT-3.3.2-2], MQTT 5.0 [MQTT-4.7.0-1] [MQTT-3.3.2-2]
        for bad in [
            "+",
            "#",
            "a/+",
            "a/#",
            "sport/tennis/#",
            "a+b",
            "a#b",
            "+/monitor/Clients",
        ] {
            assert_eq!(
                TopicName::parse(bad),
                Err(TopicError::WildcardInName),
                "{bad}"
            );
        }
    }

    #[test]
    fn null_character_is_rejected() {
        // MQTT 3.1.1 [MQTT-4.7.3-2], MQTT 5.0 [MQTT-4.7.3-2]
        assert_eq!(
            TopicName::parse("a/\0"),
            Err(TopicError::String(StringError::NullCharacter))
        );
    }

    #[test]
    fn names_are_limited_to_65535_bytes() {
        // MQTT 3.1.1 [MQTT-4.7.3-3], MQTT 5.0 [MQTT-4.7.3-3]
        let max: String = core::iter::repeat_n('a', 65_535).collect();
        assert!(TopicName::parse(&max).is_ok());
        let over: String = core::iter::repeat_n('a', 65_536).collect();
        assert_eq!(
            TopicName::parse(&over),
            Err(TopicError::String(StringError::TooLong { len: 65_536 }))
        );
    }

    #[test]
    fn name_keeps_its_bytes_unchanged() {
        // Spaces, case, empty levels and multi-byte characters are kept as given.
        // MQTT 3.1.1 [MQTT-4.7.3-4], MQTT 5.0 [MQTT-4.7.3-4]
        for s in [
            " a / b ",
            "ACCOUNTS",
            "Accounts",
            "a//b",
            "/",
            "/finance",
            "ä/€/𝄞",
        ] {
            assert_eq!(TopicName::parse(s).unwrap().as_str(), s);
        }
    }

    #[test]
    fn empty_levels_are_real_levels() {
        let levels = |s: &str| -> Vec<String> {
            TopicName::parse(s)
                .unwrap()
                .levels()
                .map(String::from)
                .collect()
        };
        assert_eq!(levels("a//b"), ["a", "", "b"]);
        assert_eq!(levels("/finance"), ["", "finance"]);
        assert_eq!(levels("a/"), ["a", ""]);
        assert_eq!(levels("/"), ["", ""]);
        assert_eq!(levels("sport"), ["sport"]);
    }

    #[test]
    fn dollar_names_are_system_names() {
        assert!(
            TopicName::parse("$SYS/monitor/Clients")
                .unwrap()
                .is_system()
        );
        assert!(TopicName::parse("$").unwrap().is_system());
        assert!(!TopicName::parse("a/$SYS").unwrap().is_system());
    }

    #[test]
    fn alias_only_name_is_the_empty_placeholder() {
        let n = TopicName::alias_only();
        assert!(n.is_empty());
        assert_eq!(n.as_str(), "");
    }

    #[test]
    fn from_static_and_conversions_agree() {
        let a = TopicName::from_static("sport/tennis/player1").unwrap();
        let b: TopicName = "sport/tennis/player1".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.clone().into_inner(), *b.as_mqtt_string());
        assert_eq!(alloc::format!("{a}"), "sport/tennis/player1");
        assert_eq!(
            TopicName::from_static("a/#"),
            Err(TopicError::WildcardInName)
        );
    }
}
