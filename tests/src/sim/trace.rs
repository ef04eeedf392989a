//! [`TraceHash`]: a running FNV-1a hash of everything the broker outputs and when, so that two
//! runs of one seed can be compared with a single number. Never: depend on addresses, hash-map
//! order or wall-clock time.

/// FNV-1a, 64 bits: order-sensitive, dependency-free, stable across platforms.
#[derive(Debug, Clone)]
pub(crate) struct TraceHash(u64);

impl TraceHash {
    /// An empty trace.
    pub(crate) fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    /// Mixes in raw bytes.
    pub(crate) fn bytes(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Mixes in a number.
    pub(crate) fn u64(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }

    /// The hash so far.
    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}
