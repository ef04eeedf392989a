//! Test support shared by SurgeMQ's cross-crate tests (golden vectors, conformance, simulation,
//! end to end).
//! The tests themselves live in `tests/tests/`.
#![forbid(unsafe_code)]

pub mod sim;

pub mod harness;

pub mod e2e;

/// Parses a hex dump ("10 0c 00 04 ...", whitespace and newlines ignored) into bytes.
/// Panics on a malformed dump: it is only fed literals written in tests.
pub fn hex(dump: &str) -> Vec<u8> {
    let digits: Vec<u8> = dump
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|b| match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => panic!("not a hex digit: {:?}", b as char),
        })
        .collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits.chunks(2).map(|p| (p[0] << 4) | p[1]).collect()
}
