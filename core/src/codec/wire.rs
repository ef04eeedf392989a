//! Wire primitives: the checked reader over one packet's body and the writers the encoder uses.
//!
//! Owns MQTT's data representations (section 1.5 of both specs): big-endian integers, the
//! Variable Byte Integer, length-prefixed UTF-8 strings and binary data. The reader only ever
//! slices the packet's shared buffer, so strings and payloads are zero-copy.
//! Never: index without a bounds check, or trust a length field from the peer.

use bytes::{Buf, BufMut, Bytes};

use super::DecodeError;
use crate::string::MqttString;

/// Largest value a Variable Byte Integer can hold (four bytes).
pub const MAX_VAR_INT: u32 = 268_435_455;

/// A cursor over one packet body. Every read is bounds-checked and fails with
/// [`DecodeError::Truncated`] instead of panicking.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                count: self.buf.len(),
            })
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.buf.try_get_u8().map_err(|_| DecodeError::Truncated)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.buf.try_get_u16().map_err(|_| DecodeError::Truncated)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.buf.try_get_u32().map_err(|_| DecodeError::Truncated)
    }

    pub(crate) fn var_int(&mut self) -> Result<u32, DecodeError> {
        match read_var_int(&self.buf)? {
            VarInt::Complete { value, len } => {
                self.buf.advance(len);
                Ok(value)
            }
            VarInt::Incomplete => Err(DecodeError::Truncated),
        }
    }

    /// Takes the next `len` bytes as a shared slice.
    pub(crate) fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if len > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(self.buf.split_to(len))
    }

    /// Takes everything left (the PUBLISH payload).
    pub(crate) fn rest(&mut self) -> Bytes {
        core::mem::take(&mut self.buf)
    }

    /// Two-byte length, then that many bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// Two-byte length, then that many bytes of UTF-8 checked against the MQTT string rules.
    pub(crate) fn string(&mut self) -> Result<MqttString, DecodeError> {
        let bytes = self.binary()?;
        MqttString::from_bytes(bytes).map_err(DecodeError::InvalidString)
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

pub(crate) fn put_var_int(out: &mut impl BufMut, mut value: u32) {
    loop {
        // Truncation intended: the low seven bits.
        let mut byte = (value & 0x7f) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// Writes a two-byte length and the bytes. Callers have checked `bytes.len() <= 65535`.
pub(crate) fn put_binary(out: &mut impl BufMut, bytes: &[u8]) {
    out.put_u16(u16::try_from(bytes.len()).unwrap_or(u16::MAX));
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
    use alloc::vec::Vec;

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
            let mut out = Vec::new();
            put_var_int(&mut out, value);
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
}
