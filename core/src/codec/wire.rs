//! Wire primitives: the checked reader over one packet's body and the writers the encoder uses.
//!
//! Owns MQTT's data representations (section 1.5 of both specs): big-endian integers, the
//! Variable Byte Integer, length-prefixed UTF-8 strings and binary data. The reader only ever
//! slices the packet's shared buffer, so strings and payloads are zero-copy.
//! Never: index without a bounds check, or trust a length field from the peer.

use bytes::{Buf, BufMut, Bytes};

use super::DecodeError;
use crate::string::MqttString;
use crate::topic::{TopicError, TopicName};

/// Largest value a Variable Byte Integer can hold (four bytes).
pub const MAX_VAR_INT: u32 = 268_435_455;

/// A cursor over one packet body. Every read is bounds-checked and fails with
/// [`DecodeError::Truncated`] instead of panicking.
///
/// Reads index the shared buffer at an offset instead of moving the `Bytes` handle forward, and
/// only the fields kept by the packet (strings, binary data, the payload) become `Bytes` of
/// their own: a read is a bounds check and a load.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
    /// Next byte to read.
    pos: usize,
    /// End of what may be read: the buffer's end, or the end of a property list being read.
    /// Invariant: `pos <= end <= buf.len()`.
    end: usize,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Self::at(buf, 0)
    }

    /// A reader over `buf[start..]` (the body of a packet whose fixed header is `buf[..start]`).
    #[inline]
    pub(crate) fn at(buf: Bytes, start: usize) -> Self {
        let end = buf.len();
        Self {
            buf,
            pos: start.min(end),
            end,
        }
    }

    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.end - self.pos
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.pos == self.end
    }

    /// Fails unless every byte was consumed.
    #[inline]
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                count: self.remaining(),
            })
        }
    }

    /// The next `N` bytes.
    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self
            .buf
            .get(self.pos..self.end)
            .and_then(|rest| rest.first_chunk::<N>())
            .ok_or(DecodeError::Truncated)?;
        self.pos += N;
        Ok(*bytes)
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.array::<1>().map(|[b]| b)
    }

    #[inline]
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    #[inline]
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    /// The next byte if it is below 128 (a one-byte Variable Byte Integer); otherwise reads
    /// nothing.
    #[inline]
    pub(crate) fn u8_below_128(&mut self) -> Option<u8> {
        let &byte = self.buf.get(self.pos..self.end)?.first()?;
        if byte < 0x80 {
            self.pos += 1;
            Some(byte)
        } else {
            None
        }
    }

    pub(crate) fn var_int(&mut self) -> Result<u32, DecodeError> {
        let rest = self.buf.get(self.pos..self.end).unwrap_or_default();
        match read_var_int(rest)? {
            VarInt::Complete { value, len } => {
                self.pos += len;
                Ok(value)
            }
            VarInt::Incomplete => Err(DecodeError::Truncated),
        }
    }

    /// Reads the next `len` bytes as a slice of the buffer, without sharing them yet.
    #[inline]
    fn skip(&mut self, len: usize) -> Result<core::ops::Range<usize>, DecodeError> {
        if len > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let start = self.pos;
        self.pos += len;
        Ok(start..self.pos)
    }

    /// Takes the next `len` bytes as a shared slice.
    #[inline]
    pub(crate) fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        let range = self.skip(len)?;
        Ok(self.buf.slice(range))
    }

    /// Takes everything left (the PUBLISH payload), without touching the reference count.
    #[inline(always)]
    pub(crate) fn rest(&mut self) -> Bytes {
        core::mem::replace(self, Self::new(Bytes::new())).into_rest()
    }

    /// Everything left, consuming the reader.
    #[inline(always)]
    pub(crate) fn into_rest(self) -> Bytes {
        let Self { mut buf, pos, end } = self;
        // `pos <= end <= len`: neither call can panic.
        if end < buf.len() {
            buf.truncate(end);
        }
        buf.advance(pos);
        buf
    }

    /// Two-byte length, then that many bytes.
    #[inline]
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// Two-byte length, then that many bytes, as a range of the buffer: for fields that are
    /// checked before they are shared.
    #[inline]
    pub(crate) fn binary_range(&mut self) -> Result<core::ops::Range<usize>, DecodeError> {
        let len = self.u16()?;
        self.skip(usize::from(len))
    }

    /// The bytes left to read.
    #[inline]
    pub(crate) fn peek_rest(&self) -> &[u8] {
        self.buf.get(self.pos..self.end).unwrap_or_default()
    }

    /// The bytes of `range` (from [`Self::binary_range`]).
    #[inline]
    pub(crate) fn peek(&self, range: core::ops::Range<usize>) -> &[u8] {
        self.buf.get(range).unwrap_or_default()
    }

    /// The bytes of `range` (from [`Self::binary_range`]) as a shared slice.
    #[inline]
    pub(crate) fn share(&self, range: core::ops::Range<usize>) -> Bytes {
        if range.end > self.buf.len() || range.start > range.end {
            return Bytes::new();
        }
        self.buf.slice(range)
    }

    /// Two-byte length, then that many bytes of UTF-8 checked against the MQTT string rules.
    #[inline]
    pub(crate) fn string(&mut self) -> Result<MqttString, DecodeError> {
        let range = self.binary_range()?;
        // The length and U+0000 checks run on the borrowed bytes, so a refused string never
        // touches the reference count.
        crate::string::check_length_and_nul(self.peek(range.clone()))
            .map_err(DecodeError::InvalidString)?;
        MqttString::from_prechecked(self.share(range)).map_err(DecodeError::InvalidString)
    }

    /// Two-byte length, then a topic name: the string and topic-name rules (U+0000, wildcards,
    /// not empty) in one scan of the borrowed bytes, then the UTF-8. A broken string rule is
    /// [`DecodeError::InvalidString`], as for every string; a broken topic-name rule goes
    /// through `topic_error`.
    #[inline]
    pub(crate) fn topic_name(
        &mut self,
        topic_error: fn(TopicError) -> DecodeError,
    ) -> Result<TopicName, DecodeError> {
        let range = self.binary_range()?;
        let wrap = |e| match e {
            TopicError::String(e) => DecodeError::InvalidString(e),
            e => topic_error(e),
        };
        TopicName::check_wire(self.peek(range.clone())).map_err(wrap)?;
        TopicName::from_checked_wire(self.share(range)).map_err(wrap)
    }

    /// Limits reading to the next `len` bytes (a property list); returns the previous limit
    /// for [`Self::unlimit`].
    #[inline]
    pub(crate) fn limit(&mut self, len: usize) -> Result<usize, DecodeError> {
        if len > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let outer = self.end;
        self.end = self.pos + len;
        Ok(outer)
    }

    /// Restores the limit [`Self::limit`] returned, once the limited part is read.
    #[inline]
    pub(crate) fn unlimit(&mut self, outer: usize) {
        self.end = outer.clamp(self.pos, self.buf.len());
    }
}

/// Result of reading a Variable Byte Integer from the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarInt {
    /// The value and how many bytes it took.
    Complete { value: u32, len: usize },
    /// The buffer ends inside the integer.
    Incomplete,
}

/// Reads a Variable Byte Integer: at most four bytes [MQTT-2.2.3], in the fewest bytes
/// that can hold the value (5.0 [MQTT-1.5.5-1]).
pub(crate) fn read_var_int(buf: &[u8]) -> Result<VarInt, DecodeError> {
    let mut value: u32 = 0;
    for (i, &byte) in buf.iter().enumerate().take(4) {
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let len = i + 1;
            // A last byte of zero after a continuation byte means a longer form than needed.
            if len > 1 && byte == 0 {
                return Err(DecodeError::VarIntNotMinimal);
            }
            return Ok(VarInt::Complete { value, len });
        }
    }
    if buf.len() >= 4 {
        Err(DecodeError::VarIntTooLong)
    } else {
        Ok(VarInt::Incomplete)
    }
}

/// Bytes a Variable Byte Integer of `value` takes (`value` must be at most [`MAX_VAR_INT`]).
pub(crate) const fn var_int_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// A Variable Byte Integer (`value` at most [`MAX_VAR_INT`]) as its wire bytes packed
/// little-endian into a `u32` (the first byte lowest), and how many bytes it takes.
#[inline(always)]
pub(crate) fn var_int_packed(value: u32) -> (u32, usize) {
    if value < 128 {
        return (value, 1);
    }
    let mut packed = 0;
    let mut rest = value;
    let mut len = 0;
    while rest >= 128 {
        packed |= ((rest & 0x7f) | 0x80) << (8 * len);
        rest >>= 7;
        len += 1;
    }
    (packed | (rest << (8 * len)), len + 1)
}

/// Writes a Variable Byte Integer (`value` at most [`MAX_VAR_INT`]) in one write.
#[inline(always)]
pub(crate) fn put_var_int(out: &mut impl BufMut, value: u32) {
    if value < 128 {
        // No truncation: below 128. The common case, as a write of constant size.
        out.put_u8(value as u8);
    } else {
        let (packed, len) = var_int_packed(value);
        out.put_slice(packed.to_le_bytes().get(..len).unwrap_or_default());
    }
}

/// Writes a fixed header (first byte, Remaining Length) and `rest`, the fixed-size fields that
/// follow it, in one write when the Remaining Length takes one or two bytes (every packet up to
/// 16 KiB): each write into a `BufMut` has a fixed cost, which dominates a field of a byte or
/// two.
#[inline(always)]
pub(crate) fn put_header<const N: usize>(
    out: &mut impl BufMut,
    first: u8,
    remaining: usize,
    rest: [u8; N],
) {
    if remaining < 128 {
        // No truncation: below 128.
        put_joined(out, [first, remaining as u8], rest);
    } else if remaining < 16_384 {
        // No truncation: the low seven bits, then the next seven.
        put_joined(
            out,
            [first, (remaining as u8) | 0x80, (remaining >> 7) as u8],
            rest,
        );
    } else {
        out.put_u8(first);
        put_var_int(out, u32::try_from(remaining).unwrap_or(MAX_VAR_INT));
        out.put_slice(&rest);
    }
}

/// Writes `head` then `rest` in one write of constant size.
#[inline(always)]
fn put_joined<const H: usize, const N: usize>(out: &mut impl BufMut, head: [u8; H], rest: [u8; N]) {
    /// Room for the longest header and `rest` the encoder passes (CONNECT's 12 bytes).
    const ROOM: usize = 16;
    const { assert!(H + N <= ROOM, "`rest` too long for `put_header`") };
    let mut bytes = [0u8; ROOM];
    if let Some((h, r)) = bytes.split_at_mut_checked(H) {
        h.copy_from_slice(&head);
        if let Some(r) = r.get_mut(..N) {
            r.copy_from_slice(&rest);
        }
    }
    out.put_slice(bytes.get(..H + N).unwrap_or_default());
}

/// Writes a two-byte length and the bytes. Callers have checked `bytes.len() <= 65535`.
#[inline(always)]
pub(crate) fn put_binary(out: &mut impl BufMut, bytes: &[u8]) {
    out.put_u16(u16::try_from(bytes.len()).unwrap_or(u16::MAX));
    out.put_slice(bytes);
}

/// Writes a property identifier with the two-byte length of `bytes` (one write), then the
/// bytes. Callers have checked `bytes.len() <= 65535`.
#[inline(always)]
pub(crate) fn put_prefixed(out: &mut impl BufMut, id: u8, bytes: &[u8]) {
    let [hi, lo] = u16::try_from(bytes.len()).unwrap_or(u16::MAX).to_be_bytes();
    out.put_slice(&[id, hi, lo]);
    out.put_slice(bytes);
}

/// Encoded size of a length-prefixed string or binary field.
pub(crate) const fn prefixed_len(len: usize) -> usize {
    2 + len
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn var_int_round_trips_at_every_size_boundary() {
        for value in [
            0,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            MAX_VAR_INT,
        ] {
            let (packed, len) = var_int_packed(value);
            let out = packed.to_le_bytes()[..len].to_vec();
            assert_eq!(out.len(), var_int_len(value));
            assert_eq!(
                read_var_int(&out).unwrap(),
                VarInt::Complete {
                    value,
                    len: out.len()
                }
            );
        }
    }

    #[test]
    fn var_int_of_five_bytes_is_rejected() {
        assert_eq!(
            read_var_int(&[0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(DecodeError::VarIntTooLong)
        );
    }

    #[test]
    fn var_int_not_in_fewest_bytes_is_rejected() {
        // MQTT 5.0 [MQTT-1.5.5-1]: 0x80 0x00 encodes 0 in two bytes.
        assert_eq!(
            read_var_int(&[0x80, 0x00]),
            Err(DecodeError::VarIntNotMinimal)
        );
    }

    #[test]
    fn var_int_split_is_incomplete() {
        assert_eq!(read_var_int(&[0x80, 0x80]), Ok(VarInt::Incomplete));
        assert_eq!(read_var_int(&[]), Ok(VarInt::Incomplete));
    }

    #[test]
    fn put_var_int_writes_the_packed_bytes_in_one_piece() {
        for value in [
            0,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            MAX_VAR_INT,
        ] {
            let mut out = alloc::vec::Vec::new();
            put_var_int(&mut out, value);
            assert_eq!(
                read_var_int(&out).unwrap(),
                VarInt::Complete {
                    value,
                    len: out.len()
                }
            );
        }
    }

    #[test]
    fn put_header_writes_the_fixed_header_then_the_fields_at_every_length_size() {
        // One-, two- (both joined in one write), three- and four-byte Remaining Lengths.
        for remaining in [0, 127, 128, 16_383, 16_384, MAX_VAR_INT as usize] {
            let mut out = alloc::vec::Vec::new();
            put_header(&mut out, 0x62, remaining, [0xAB, 0xCD]);
            let mut expected = alloc::vec![0x62];
            put_var_int(&mut expected, remaining as u32);
            expected.extend_from_slice(&[0xAB, 0xCD]);
            assert_eq!(out, expected, "{remaining}");
        }
        // The longest fields the encoder joins: a CONNECT variable header.
        let mut out = alloc::vec::Vec::new();
        put_header(&mut out, 0x10, 16_000, *b"\0\x04MQTT\x05\x02\0\x3c");
        assert_eq!(out, b"\x10\x80\x7d\0\x04MQTT\x05\x02\0\x3c");
    }

    #[test]
    fn limited_reader_stops_at_the_limit_and_resumes_after_it() {
        let mut r = Reader::at(Bytes::from_static(&[9, 9, 1, 2, 3, 4, 5]), 2);
        let outer = r.limit(3).unwrap();
        assert_eq!(r.peek_rest(), &[1, 2, 3]);
        assert_eq!(r.u16(), Ok(0x0102));
        // A field running past the limit is truncated, as if the limit were the buffer's end.
        assert_eq!(r.u16(), Err(DecodeError::Truncated));
        assert_eq!(r.u8(), Ok(3));
        assert!(r.is_empty());
        r.unlimit(outer);
        assert_eq!(r.remaining(), 2);
        assert_eq!(r.limit(3), Err(DecodeError::Truncated));
        assert_eq!(r.into_rest(), Bytes::from_static(&[4, 5]));
    }

    #[test]
    fn strings_are_checked_before_they_are_shared() {
        let mut r = Reader::new(Bytes::from_static(b"\0\x03a\0b\0\x02ok\0\x05ab"));
        assert_eq!(
            r.string(),
            Err(DecodeError::InvalidString(
                crate::string::StringError::NullCharacter
            ))
        );
        assert_eq!(r.string().unwrap(), "ok");
        assert_eq!(r.string(), Err(DecodeError::Truncated));
    }
}
