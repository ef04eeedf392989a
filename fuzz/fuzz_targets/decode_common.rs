// Shared body of the decoder targets: decode a stream of packets, and re-encode every packet
// that decodes; the re-encoding must decode to the same packet.
use bytes::{Bytes, BytesMut};
use surgemq_core::codec::{Decoded, MAX_PACKET_SIZE, ProtocolVersion, decode, decode_buf};

pub fn run(data: &[u8], version: ProtocolVersion) {
    // First byte picks a small maximum packet size sometimes, to exercise the early size check.
    let max = match data.first() {
        Some(b) if b & 1 == 1 => u32::from(*b) * 4,
        _ => MAX_PACKET_SIZE,
    };
    let mut buf = BytesMut::from(data);
    while let Ok(Some(packet)) = decode_buf(&mut buf, version, max) {
        let mut out = Vec::new();
        if packet.encode(version, &mut out).is_ok() {
            let again = decode(&Bytes::from(out), version, MAX_PACKET_SIZE);
            match again {
                Ok(Decoded::Packet { packet: p, .. }) => assert_eq!(p, packet),
                other => panic!("re-encoded packet did not decode: {other:?}"),
            }
        }
    }
}
