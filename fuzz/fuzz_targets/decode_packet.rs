//! Fuzzes `fieldgate::mqtt::codec::decode` with arbitrary bytes.
//!
//! Input layout: the first byte is a control byte, the rest is what a peer sent.
//! - bit 0: the connection's protocol version (0 = 3.1.1, 1 = 5.0);
//! - bits 1-2: `max_packet_size`, one of [`MAX_PACKET_SIZES`];
//! - bits 3-7: where to split the rest into two reads, as a fraction n/31 of its length.
//!
//! Checks, besides "never panics":
//! - every packet decoded re-encodes (`encode` accepts whatever `decode` produced), with
//!   `encoded_len` equal to the bytes written and no longer than what was received, and the
//!   re-encoding decodes to the same packet;
//! - `Ok(None)` leaves the buffer untouched;
//! - feeding the bytes in two reads gives exactly the packets and the final outcome
//!   (error, or the bytes left waiting) of feeding them at once.

#![no_main]

use bytes::BytesMut;
use fieldgate::mqtt::codec::{DecodeError, decode, encode, encoded_len};
use fieldgate::mqtt::packet::{Packet, ProtocolVersion};
use libfuzzer_sys::fuzz_target;

/// No limit, the largest packet MQTT can describe, a small and a tiny limit.
const MAX_PACKET_SIZES: [u32; 4] = [u32::MAX, 268_435_460, 300, 16];

/// How a run of `decode` calls ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// `Ok(None)` with these bytes still buffered.
    NeedMore(Vec<u8>),
    Failed(DecodeError),
}

/// Decodes from `buf` until it needs more or fails, checking each packet on the way.
fn drain(buf: &mut BytesMut, max: u32, version: ProtocolVersion, packets: &mut Vec<Packet>) -> End {
    loop {
        let before = buf.clone();
        match decode(buf, max, version) {
            Ok(None) => {
                assert_eq!(*buf, before, "Ok(None) must not consume anything");
                return End::NeedMore(buf.to_vec());
            }
            Err(e) => return End::Failed(e),
            Ok(Some(packet)) => {
                let consumed = before.len() - buf.len();
                assert!(
                    consumed as u64 <= u64::from(max),
                    "packet larger than the limit"
                );
                check_reencodes(&packet, version, consumed);
                packets.push(packet);
            }
        }
    }
}

/// `encode` never refuses what `decode` accepted, and the round trip is exact.
fn check_reencodes(packet: &Packet, version: ProtocolVersion, consumed: usize) {
    // CONNECT carries its own version; everything else uses the connection's.
    let version = match packet {
        Packet::Connect(c) => c.protocol,
        _ => version,
    };
    let mut again = BytesMut::new();
    if let Err(e) = encode(packet, version, &mut again) {
        panic!("decoded packet does not encode: {e}\n{packet:?}");
    }
    assert_eq!(
        encoded_len(packet, version),
        Ok(again.len()),
        "encoded_len disagrees"
    );
    assert!(
        again.len() <= consumed,
        "canonical encoding ({} bytes) is longer than the {consumed} bytes received",
        again.len()
    );
    let wire = again.clone();
    match decode(&mut again, u32::MAX, version) {
        Ok(Some(back)) => {
            assert_eq!(
                &back, packet,
                "round trip changed the packet; wire {wire:02x?}"
            );
            assert!(again.is_empty(), "re-encoding has trailing bytes");
        }
        other => {
            panic!("re-encoded packet does not decode: {other:?}\n{packet:?}\nwire {wire:02x?}")
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let version = if control & 1 == 0 {
        ProtocolVersion::V311
    } else {
        ProtocolVersion::V5
    };
    let max = MAX_PACKET_SIZES[usize::from((control >> 1) & 0b11)];
    let split = input.len() * usize::from(control >> 3) / 31;

    // All at once.
    let mut whole = Vec::new();
    let whole_end = drain(&mut BytesMut::from(input), max, version, &mut whole);

    // In two reads.
    let mut streamed = Vec::new();
    let mut buf = BytesMut::from(&input[..split]);
    let mut end = drain(&mut buf, max, version, &mut streamed);
    if let End::NeedMore(_) = end {
        buf.extend_from_slice(&input[split..]);
        end = drain(&mut buf, max, version, &mut streamed);
    }
    assert_eq!(streamed, whole, "two reads gave other packets than one");
    assert_eq!(end, whole_end, "two reads ended differently than one");
});
