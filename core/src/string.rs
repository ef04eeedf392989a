//! [`MqttString`]: the one string type behind every MQTT UTF-8 string field.
//!
//! Owns the rules every MQTT string obeys in both specs: well-formed UTF-8 without surrogates
//! (MQTT 3.1.1 [MQTT-1.5.3-1], 5.0 [MQTT-1.5.4-1]), no U+0000 (3.1.1 [MQTT-1.5.3-2],
//! 5.0 [MQTT-1.5.4-2]), at most 65,535 bytes, and a BOM kept as it is (3.1.1 [MQTT-1.5.3-3],
//! 5.0 [MQTT-1.5.4-3]). It is a cheap-to-clone slice of a shared buffer: a string decoded from a
//! packet points into the receive buffer and is never copied.
//!
//! Never: hold bytes that break those rules (construction is the only way in).
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]

use bytes::Bytes;
use bytestring::ByteString;
use core::fmt;

/// Largest number of bytes an MQTT string may encode to (its length prefix is a `u16`).
pub const MAX_STRING_LEN: usize = u16::MAX as usize;

/// Why bytes are not a valid MQTT string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StringError {
    /// Not well-formed UTF-8, or encodes a surrogate: 3.1.1 [MQTT-1.5.3-1], 5.0 [MQTT-1.5.4-1].
    InvalidUtf8,
    /// Contains U+0000: 3.1.1 [MQTT-1.5.3-2], 5.0 [MQTT-1.5.4-2].
    NullCharacter,
    /// Longer than 65,535 bytes.
    TooLong {
        /// The length in bytes.
        len: usize,
    },
}

impl fmt::Display for StringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUtf8 => f.write_str("string is not well-formed UTF-8 [MQTT-1.5.3-1]"),
            Self::NullCharacter => f.write_str("string contains U+0000 [MQTT-1.5.3-2]"),
            Self::TooLong { len } => write!(f, "string of {len} bytes exceeds 65535"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for StringError {}

/// A validated MQTT UTF-8 string, backed by shared [`Bytes`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MqttString(ByteString);

impl MqttString {
    /// Validates `bytes` and wraps them without copying.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, StringError> {
        check_length_and_nul(&bytes)?;
        ByteString::try_from(bytes)
            .map(Self)
            .map_err(|_| StringError::InvalidUtf8)
    }

    /// Validates and wraps a static string without copying.
    pub fn from_static(s: &'static str) -> Result<Self, StringError> {
        check_length_and_nul(s.as_bytes())?;
        Ok(Self(ByteString::from_static(s)))
    }

    /// Validates `s` and copies it into a new buffer.
    pub fn new(s: &str) -> Result<Self, StringError> {
        check_length_and_nul(s.as_bytes())?;
        Ok(Self(ByteString::from(s)))
    }

    /// The empty string.
    pub const fn empty() -> Self {
        Self(ByteString::new())
    }

    /// The string as `&str` (free: the UTF-8 was checked on construction).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The UTF-8 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The shared buffer behind the string.
    pub fn as_shared(&self) -> &Bytes {
        self.0.as_bytes()
    }

    /// Gives back the shared buffer.
    pub fn into_bytes(self) -> Bytes {
        self.0.into_bytes()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string has no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The checks `ByteString` does not make: length, and no U+0000. (Its UTF-8 check, by
/// `str::from_utf8`, rejects overlong forms and encoded surrogates U+D800..U+DFFF.)
#[inline]
pub(crate) fn check_length_and_nul(bytes: &[u8]) -> Result<(), StringError> {
    if bytes.len() > MAX_STRING_LEN {
        return Err(StringError::TooLong { len: bytes.len() });
    }
    // A zero byte only ever encodes U+0000 in UTF-8.
    if any_byte(bytes, |b| b == 0) {
        return Err(StringError::NullCharacter);
    }
    Ok(())
}

/// Whether `matches` holds for any byte of `bytes`: the hot scan of every string and topic a
/// packet carries. Blocks of 16 bytes are folded without an early exit, so that the compiler
/// checks each block with a few vector instructions; the end is covered by one more block
/// overlapping the last (checking a byte twice is harmless). `matches` must be a cheap,
/// branch-free test of one byte. A test for ASCII bytes is exact on UTF-8: the bytes of a
/// multi-byte character are all 0x80 and above.
#[inline(always)]
pub(crate) fn any_byte(bytes: &[u8], matches: impl Fn(u8) -> bool + Copy) -> bool {
    /// Marks in `found` the bytes of `block` that match, lane by lane: no branch and no
    /// reduction per block, so a block is a few vector instructions.
    #[inline(always)]
    fn mark<const N: usize>(found: &mut [bool; N], block: &[u8; N], matches: impl Fn(u8) -> bool) {
        for (found, &b) in found.iter_mut().zip(block) {
            *found |= matches(b);
        }
    }
    #[inline(always)]
    fn any<const N: usize>(found: &[bool; N]) -> bool {
        found.iter().fold(false, |any, &f| any | f)
    }
    let (blocks, tail) = bytes.as_chunks::<16>();
    let mut found = [false; 16];
    for block in blocks {
        mark(&mut found, block, matches);
    }
    if tail.is_empty() {
        return any(&found);
    }
    if let Some(last) = bytes.last_chunk::<16>() {
        mark(&mut found, last, matches);
        return any(&found);
    }
    /// Whether any byte of a short block matches.
    #[inline(always)]
    fn fold<const N: usize>(block: &[u8; N], matches: impl Fn(u8) -> bool) -> bool {
        block.iter().fold(false, |found, &b| found | matches(b))
    }
    if let (Some(first), Some(last)) = (bytes.first_chunk::<8>(), bytes.last_chunk::<8>()) {
        // 8 to 15 bytes: two overlapping words.
        return fold(first, matches) | fold(last, matches);
    }
    if let (Some(first), Some(last)) = (bytes.first_chunk::<4>(), bytes.last_chunk::<4>()) {
        // 4 to 7 bytes: two overlapping half words.
        return fold(first, matches) | fold(last, matches);
    }
    tail.iter().fold(false, |found, &b| found | matches(b))
}

impl MqttString {
    /// Wraps bytes already checked for length and U+0000 by the caller; checks the UTF-8.
    #[inline]
    pub(crate) fn from_prechecked(bytes: Bytes) -> Result<Self, StringError> {
        ByteString::try_from(bytes)
            .map(Self)
            .map_err(|_| StringError::InvalidUtf8)
    }
}

impl fmt::Debug for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl core::ops::Deref for MqttString {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

// Sound: equality, ordering and hashing of `MqttString` are those of its UTF-8 bytes, which are
// those of the `str` it holds.
impl core::borrow::Borrow<str> for MqttString {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for MqttString {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl TryFrom<&str> for MqttString {
    type Error = StringError;
    fn try_from(s: &str) -> Result<Self, StringError> {
        Self::new(s)
    }
}

impl PartialEq<str> for MqttString {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for MqttString {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn rejects_ill_formed_utf8() {
        // MQTT 3.1.1 [MQTT-1.5.3-1], 5.0 [MQTT-1.5.4-1]
        let e = MqttString::from_bytes(Bytes::from_static(&[0x61, 0xff])).unwrap_err();
        assert_eq!(e, StringError::InvalidUtf8);
    }

    #[test]
    fn rejects_encoded_surrogate() {
        // U+D800 encoded as ED A0 80. MQTT 3.1.1 [MQTT-1.5.3-1], 5.0 [MQTT-1.5.4-1]
        let e = MqttString::from_bytes(Bytes::from_static(&[0xed, 0xa0, 0x80])).unwrap_err();
        assert_eq!(e, StringError::InvalidUtf8);
    }

    #[test]
    fn rejects_null_character() {
        // MQTT 3.1.1 [MQTT-1.5.3-2], 5.0 [MQTT-1.5.4-2]
        let e = MqttString::new("a\0b").unwrap_err();
        assert_eq!(e, StringError::NullCharacter);
    }

    #[test]
    fn keeps_byte_order_mark() {
        // MQTT 3.1.1 [MQTT-1.5.3-3], 5.0 [MQTT-1.5.4-3]: EF BB BF is kept, not stripped.
        let s = MqttString::from_bytes(Bytes::from_static(&[0xef, 0xbb, 0xbf, b'a'])).unwrap();
        assert_eq!(s.as_bytes(), &[0xef, 0xbb, 0xbf, b'a']);
        assert_eq!(s.as_str(), "\u{feff}a");
    }

    #[test]
    fn any_byte_finds_every_position_and_nothing_else() {
        // Every length through the block, word and half-word paths, a match at every position.
        let targets = |b: u8| b == 0 || b | 0x08 == b'+';
        for len in 0..70 {
            let clean = alloc::vec![b'a'; len];
            assert!(!any_byte(&clean, targets), "{len}");
            for at in 0..len {
                for t in [0u8, b'+', b'#'] {
                    let mut v = clean.clone();
                    v[at] = t;
                    assert!(any_byte(&v, targets), "{len} {at} {t}");
                    assert!(!any_byte(&v, |b| b == b'$'));
                }
            }
        }
        // Bytes of multi-byte characters are never mistaken for ASCII targets, nor are the
        // neighbours of '+' and '#' that differ from them in one bit.
        let or_slash = |b: u8| targets(b) || b == b'/';
        assert!(!any_byte("é€😀é€😀é€😀".as_bytes(), or_slash));
        assert!(!any_byte(b"\x03\x0b*,\"'()ab/cd", targets));
    }

    #[test]
    fn rejects_over_65535_bytes() {
        let long = alloc::string::String::from_utf8(alloc::vec![b'a'; 65_536]).unwrap();
        assert_eq!(
            MqttString::new(&long).unwrap_err(),
            StringError::TooLong { len: 65_536 }
        );
        assert!(MqttString::new(&long[..65_535]).is_ok());
    }
}
