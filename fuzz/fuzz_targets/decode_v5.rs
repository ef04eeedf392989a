//! Fuzzes the MQTT 5.x decoder with arbitrary byte streams: never panic, and every packet that
//! decodes re-encodes to bytes that decode to the same packet.
#![no_main]
use libfuzzer_sys::fuzz_target;
use surgemq_core::codec::ProtocolVersion;

#[path = "decode_common.rs"]
mod decode_common;

fuzz_target!(|data: &[u8]| {
    decode_common::run(data, ProtocolVersion::V5);

});
