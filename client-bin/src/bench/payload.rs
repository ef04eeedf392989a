//! The bench payload: the first [`HEADER_LEN`] bytes say who sent the message, its number and
//! when it was sent; the rest is padding up to `--payload` bytes.
//!
//! Layout (big-endian): publisher id `u32`, sequence number `u32`, send time `u64` in
//! nanoseconds since the run's [`Clock`](super::clock::Clock) origin.

/// Bytes the header takes: the smallest `--payload`.
pub const HEADER_LEN: usize = 16;

/// What a payload header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The publisher's index.
    pub publisher: u32,
    /// The message's number in that publisher's sequence, from 0.
    pub sequence: u32,
    /// Send time, nanoseconds since the clock origin.
    pub sent_ns: u64,
}

impl Stamp {
    /// Writes the header into the front of `payload` (at least [`HEADER_LEN`] bytes).
    pub fn write(&self, payload: &mut [u8]) {
        if let Some(header) = payload.get_mut(..HEADER_LEN) {
            header[..4].copy_from_slice(&self.publisher.to_be_bytes());
            header[4..8].copy_from_slice(&self.sequence.to_be_bytes());
            header[8..].copy_from_slice(&self.sent_ns.to_be_bytes());
        }
    }

    /// Reads the header of `payload`; `None` if it is too short to be a bench message.
    pub fn read(payload: &[u8]) -> Option<Self> {
        let header: &[u8; HEADER_LEN] = payload.get(..HEADER_LEN)?.try_into().ok()?;
        let (publisher, rest) = header.split_at(4);
        let (sequence, sent) = rest.split_at(4);
        Some(Self {
            publisher: u32::from_be_bytes(publisher.try_into().ok()?),
            sequence: u32::from_be_bytes(sequence.try_into().ok()?),
            sent_ns: u64::from_be_bytes(sent.try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_through_a_payload() {
        let stamp = Stamp {
            publisher: 7,
            sequence: 0xdead_beef,
            sent_ns: 1_234_567_890_123,
        };
        let mut payload = vec![0xAA; 64];
        stamp.write(&mut payload);
        assert_eq!(Stamp::read(&payload), Some(stamp));
        assert!(payload[HEADER_LEN..].iter().all(|&b| b == 0xAA));
    }

    #[test]
    fn short_payload_is_not_a_bench_message() {
        assert_eq!(Stamp::read(&[0; HEADER_LEN - 1]), None);
    }
}
