//! [`TopicError`]: why a string is not a valid topic name or topic filter.
//!
//! MQTT 3.1.1 and 5.0 number some of the same rules differently (the "no wildcard in a name" rule
//! is [MQTT-4.7.1-1] in 3.1.1 and [MQTT-4.7.0-1] in 5.0), so each variant names the id per version.

use crate::string::StringError;
use core::fmt;

/// Why a string is not a valid topic name or topic filter; one variant per rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicError {
    /// Zero length: 3.1.1 and 5.0 [MQTT-4.7.3-1].
    Empty,
    /// A topic name contains '+' or '#': 3.1.1 [MQTT-4.7.1-1], 5.0 [MQTT-4.7.0-1], both [MQTT-3.3.2-2].
    WildcardInName,
    /// '#' is not a whole level or not the last level: 3.1.1 [MQTT-4.7.1-2], 5.0 [MQTT-4.7.1-1].
    MisplacedMultiLevelWildcard,
    /// '+' shares a level with other characters: 3.1.1 [MQTT-4.7.1-3], 5.0 [MQTT-4.7.1-2].
    PartialLevelSingleWildcard,
    /// The ShareName after `$share/` is empty or holds '+' or '#': 5.0 [MQTT-4.8.2-1], [MQTT-4.8.2-2].
    InvalidShareName,
    /// `$share/{group}` is not followed by '/' and a non-empty topic filter: 5.0 [MQTT-4.8.2-2].
    EmptySharedFilter,
    /// Not a valid MQTT string (U+0000, ill-formed UTF-8, over 65,535 bytes): [MQTT-4.7.3-2], [MQTT-4.7.3-3].
    String(StringError),
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("topic is empty [MQTT-4.7.3-1]"),
            Self::WildcardInName => {
                f.write_str("topic name contains a wildcard '+' or '#' [MQTT-3.3.2-2]")
            }
            Self::MisplacedMultiLevelWildcard => f.write_str(
                "'#' must be a whole level and the last one (3.1.1 [MQTT-4.7.1-2], 5.0 [MQTT-4.7.1-1])",
            ),
            Self::PartialLevelSingleWildcard => f.write_str(
                "'+' must fill a whole level (3.1.1 [MQTT-4.7.1-3], 5.0 [MQTT-4.7.1-2])",
            ),
            Self::InvalidShareName => f.write_str(
                "shared subscription ShareName is empty or contains '+' or '#' [MQTT-4.8.2-1]",
            ),
            Self::EmptySharedFilter => f.write_str(
                "shared subscription has no topic filter after its ShareName [MQTT-4.8.2-2]",
            ),
            Self::String(e) => write!(f, "invalid topic string: {e}"),
        }
    }
}

impl TopicError {
    /// The statement id this error breaks as MQTT 3.1.1 numbers it; `None` if 3.1.1 has no such rule.
    pub const fn statement_v311(&self) -> Option<&'static str> {
        match self {
            Self::Empty => Some("MQTT-4.7.3-1"),
            Self::WildcardInName => Some("MQTT-4.7.1-1"),
            Self::MisplacedMultiLevelWildcard => Some("MQTT-4.7.1-2"),
            Self::PartialLevelSingleWildcard => Some("MQTT-4.7.1-3"),
            Self::InvalidShareName | Self::EmptySharedFilter => None,
            Self::String(StringError::InvalidUtf8) => Some("MQTT-1.5.3-1"),
            Self::String(StringError::NullCharacter) => Some("MQTT-4.7.3-2"),
            Self::String(StringError::TooLong { .. }) => Some("MQTT-4.7.3-3"),
        }
    }

    /// The statement id this error breaks as MQTT 5.0 numbers it.
    pub const fn statement_v5(&self) -> &'static str {
        match self {
            Self::Empty => "MQTT-4.7.3-1",
            Self::WildcardInName => "MQTT-4.7.0-1",
            Self::MisplacedMultiLevelWildcard => "MQTT-4.7.1-1",
            Self::PartialLevelSingleWildcard => "MQTT-4.7.1-2",
            Self::InvalidShareName => "MQTT-4.8.2-1",
            Self::EmptySharedFilter => "MQTT-4.8.2-2",
            Self::String(StringError::InvalidUtf8) => "MQTT-1.5.4-1",
            Self::String(StringError::NullCharacter) => "MQTT-4.7.3-2",
            Self::String(StringError::TooLong { .. }) => "MQTT-4.7.3-3",
        }
    }
}

impl From<StringError> for TopicError {
    fn from(e: StringError) -> Self {
        Self::String(e)
    }
}

#[cfg(feature = "std")]
impl std::error::Error for TopicError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::String(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_ids_follow_each_version_numbering() {
        // 3.1.1 and 5.0 number the wildcard rules differently; see the conformance lists.
        let e = TopicError::MisplacedMultiLevelWildcard;
        assert_eq!(e.statement_v311(), Some("MQTT-4.7.1-2"));
        assert_eq!(e.statement_v5(), "MQTT-4.7.1-1");
        let e = TopicError::PartialLevelSingleWildcard;
        assert_eq!(e.statement_v311(), Some("MQTT-4.7.1-3"));
        assert_eq!(e.statement_v5(), "MQTT-4.7.1-2");
        assert_eq!(TopicError::WildcardInName.statement_v5(), "MQTT-4.7.0-1");
        assert_eq!(TopicError::InvalidShareName.statement_v311(), None);
        let e = TopicError::String(StringError::NullCharacter);
        assert_eq!(e.statement_v311(), Some("MQTT-4.7.3-2"));
        assert_eq!(e.statement_v5(), "MQTT-4.7.3-2");
    }

    #[test]
    fn display_names_the_rule() {
        let text = alloc::format!("{}", TopicError::Empty);
        assert!(text.contains("MQTT-4.7.3-1"), "{text}");
    }
}
