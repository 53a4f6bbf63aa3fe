//! Codec throughput and allocation benchmark.
//!
//! Measures decode and encode of a 100-byte QoS 1 PUBLISH (3.1.1) and of a 100-byte
//! MQTT 5.0 PUBLISH with three properties, on one core. Machines here are shared and noisy,
//! so each figure is also given as a ratio to a reference measured in the same run: the
//! bare framing cost (read the fixed header, split the frame off the buffer), which any
//! zero-copy decoder must pay. Heap allocations are counted with an instrumented global
//! allocator, outside the timed loops.
//!
//! `cargo bench --bench codec` runs the full measurement. Without `--bench` (as
//! `cargo test --all-targets` runs it) it does a short pass that still checks the
//! no-allocation promise, so the suite notices when a change breaks it.

// A benchmark whose own constants are invalid has nothing to measure: stopping is right.
#![allow(clippy::expect_used)]

use std::alloc::System;
use std::hint::black_box;
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fieldgate::mqtt::codec::{decode, encode};
use fieldgate::mqtt::packet::{
    Packet, PacketId, PayloadFormat, ProtocolVersion, Publish, PublishProperties, QoS,
};
use fieldgate::mqtt::string::MqttString;
use fieldgate::mqtt::topic::TopicName;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Packets per round: 500 KB of input, which stays in cache the way a socket's read buffer
/// does, so the figure is the codec's cost and not the memory bus's.
const FULL_PACKETS: usize = 5_000;
const FULL_ROUNDS: usize = 400;
const QUICK_PACKETS: usize = 2_000;
const QUICK_ROUNDS: usize = 2;

const TOPIC: &str = "fieldgate/gw-01/pump-3/temperature";

/// Pads the payload so the whole encoded packet is exactly `total` bytes.
fn publish_of_size(
    total: usize,
    protocol: ProtocolVersion,
    properties: PublishProperties,
) -> Publish {
    let mut publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicName::try_from(TOPIC).expect("constant topic is valid"),
        packet_id: PacketId::new(42),
        payload: Bytes::new(),
        properties,
    };
    let mut buf = BytesMut::new();
    encode(&Packet::Publish(publish.clone()), protocol, &mut buf).expect("encodable");
    let payload_len = total - buf.len();
    publish.payload = Bytes::from(vec![b'7'; payload_len]);
    publish
}

fn v5_properties() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(PayloadFormat::Utf8),
        message_expiry_interval: Some(3600),
        content_type: Some(MqttString::try_from("application/json").expect("valid")),
        topic_alias: None::<NonZeroU16>,
        ..PublishProperties::default()
    }
}

struct Case {
    name: &'static str,
    protocol: ProtocolVersion,
    packet: Packet,
    encoded: Bytes,
}

fn case(name: &'static str, protocol: ProtocolVersion, props: PublishProperties) -> Case {
    let packet = Packet::Publish(publish_of_size(100, protocol, props));
    let mut buf = BytesMut::new();
    encode(&packet, protocol, &mut buf).expect("encodable");
    assert_eq!(buf.len(), 100);
    Case {
        name,
        protocol,
        packet,
        encoded: buf.freeze(),
    }
}

fn input(case: &Case, n: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(case.encoded.len() * n);
    for _ in 0..n {
        buf.extend_from_slice(&case.encoded);
    }
    buf
}

/// The reference: what framing alone costs (first byte, Remaining Length, split_to).
fn frame_only(buf: &mut BytesMut) -> usize {
    let mut frames = 0;
    while buf.len() >= 2 {
        let mut remaining = 0usize;
        let mut shift = 0;
        let mut i = 1;
        loop {
            let b = buf[i];
            remaining |= usize::from(b & 0x7F) << shift;
            shift += 7;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        let frame = buf.split_to(i + remaining).freeze();
        black_box(&frame);
        frames += 1;
    }
    frames
}

/// Decodes every packet and drops each at once: decoding plus releasing the packet's share
/// of the buffer (two reference counts), which every packet costs sooner or later.
fn decode_and_drop_all(buf: &mut BytesMut, protocol: ProtocolVersion) -> usize {
    let mut n = 0;
    while let Some(packet) = decode(buf, u32::MAX, protocol).expect("valid input") {
        black_box(&packet);
        n += 1;
    }
    n
}

/// Decodes every packet into `out` (reserved beforehand), so the timed part is decoding
/// alone; the caller drops the packets after the clock stops.
fn decode_all_into(buf: &mut BytesMut, protocol: ProtocolVersion, out: &mut Vec<Packet>) {
    while let Some(packet) = decode(buf, u32::MAX, protocol).expect("valid input") {
        out.push(packet);
    }
}

/// Operations per second over `rounds` timed runs: the best round and the median one.
/// The best is the codec's cost with the least interference from other tenants; the median
/// shows how much that interference moved things.
#[derive(Clone, Copy)]
struct Rate {
    best: f64,
    median: f64,
}

fn rate(rounds: usize, packets: usize, mut run: impl FnMut() -> Duration) -> Rate {
    let mut times: Vec<Duration> = (0..rounds).map(|_| run()).collect();
    times.sort();
    let per_second = |d: Duration| packets as f64 / d.as_secs_f64();
    Rate {
        best: per_second(times[0]),
        median: per_second(times[times.len() / 2]),
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>6.2} M/s best, {:>6.2} M/s median",
            self.best / 1e6,
            self.median / 1e6
        )
    }
}

struct DecodeRates {
    decode: Rate,
    decode_and_drop: Rate,
    frame: Rate,
}

fn bench_decode(case: &Case, packets: usize, rounds: usize) -> DecodeRates {
    let decode = rate(rounds, packets, || {
        let mut buf = input(case, packets);
        let mut out = Vec::with_capacity(packets);
        let start = Instant::now();
        decode_all_into(&mut buf, case.protocol, &mut out);
        let elapsed = start.elapsed();
        assert_eq!(out.len(), packets);
        elapsed
    });
    let decode_and_drop = rate(rounds, packets, || {
        let mut buf = input(case, packets);
        let start = Instant::now();
        let n = decode_and_drop_all(&mut buf, case.protocol);
        let elapsed = start.elapsed();
        assert_eq!(n, packets);
        elapsed
    });
    let frame_rate = rate(rounds, packets, || {
        let mut buf = input(case, packets);
        let start = Instant::now();
        let n = frame_only(&mut buf);
        let elapsed = start.elapsed();
        assert_eq!(n, packets);
        elapsed
    });
    DecodeRates {
        decode,
        decode_and_drop,
        frame: frame_rate,
    }
}

fn bench_encode(case: &Case, packets: usize, rounds: usize) -> Rate {
    rate(rounds, packets, || {
        let mut buf = BytesMut::with_capacity(case.encoded.len() * packets);
        let start = Instant::now();
        for _ in 0..packets {
            encode(black_box(&case.packet), case.protocol, &mut buf).expect("encodable");
        }
        let elapsed = start.elapsed();
        assert_eq!(buf.len(), case.encoded.len() * packets);
        elapsed
    })
}

/// Heap allocations per decoded packet, and per encoded packet into a reserved buffer.
fn allocations(case: &Case, packets: usize) -> (f64, f64) {
    let mut buf = input(case, packets);
    let input_range = buf.as_ptr_range();
    let region = Region::new(GLOBAL);
    let mut decoded = Vec::with_capacity(packets);
    let before = region.change().allocations;
    while let Some(packet) = decode(&mut buf, u32::MAX, case.protocol).expect("valid input") {
        decoded.push(packet);
    }
    let decode_allocs = region.change().allocations - before;
    assert_eq!(decoded.len(), packets);
    // Zero-copy: topic and payload must point into the input buffer, not into copies.
    for packet in &decoded {
        let Packet::Publish(p) = packet else {
            panic!("decoded {packet:?}, expected PUBLISH");
        };
        assert!(input_range.contains(&p.payload.as_ptr()));
        assert!(input_range.contains(&p.topic.as_str().as_ptr()));
    }
    drop(decoded);

    let mut out = BytesMut::with_capacity(case.encoded.len() * packets);
    let before = region.change().allocations;
    for _ in 0..packets {
        encode(&case.packet, case.protocol, &mut out).expect("encodable");
    }
    let encode_allocs = region.change().allocations - before;
    (
        decode_allocs as f64 / packets as f64,
        encode_allocs as f64 / packets as f64,
    )
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (packets, rounds) = if full {
        (FULL_PACKETS, FULL_ROUNDS)
    } else {
        (QUICK_PACKETS, QUICK_ROUNDS)
    };
    let cases = [
        case(
            "3.1.1 PUBLISH QoS 1, 100 bytes",
            ProtocolVersion::V311,
            PublishProperties::default(),
        ),
        case(
            "5.0 PUBLISH QoS 1, 100 bytes, 3 properties",
            ProtocolVersion::V5,
            v5_properties(),
        ),
    ];
    println!("codec benchmark: {packets} packets a round, {rounds} rounds, one core");
    let mut failed = false;
    for case in &cases {
        let (decode_allocs, encode_allocs) = allocations(case, packets);
        if decode_allocs > 0.001 || encode_allocs > 0.001 {
            failed = true;
        }
        let DecodeRates {
            decode,
            decode_and_drop,
            frame: frame_rate,
        } = bench_decode(case, packets, rounds);
        let encode_rate = bench_encode(case, packets, rounds);
        println!("{}", case.name);
        println!("  framing reference: {frame_rate}  (split each frame off, drop it)");
        println!(
            "  decode:            {decode}  (best is {:.2}x the reference's time)",
            frame_rate.best / decode.best
        );
        println!(
            "  decode, then drop: {decode_and_drop}  (best is {:.2}x the reference's time)",
            frame_rate.best / decode_and_drop.best
        );
        println!(
            "  encode:            {encode_rate}  (best is {:.2}x the reference's time)",
            frame_rate.best / encode_rate.best
        );
        println!(
            "  heap allocations: {decode_allocs:.4} per decode, {encode_allocs:.4} per encode"
        );
    }
    if failed {
        eprintln!("FAILED: decoding or encoding a PUBLISH allocated on the heap");
        std::process::exit(1);
    }
}
