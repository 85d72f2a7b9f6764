//! The bridge's per-packet path, piece by piece, with a baseline in the same run:
//! - header validation: our borrowing validator vs. the `rtp` crate's owned unmarshal (the
//!   usual Rust RTP parser), on the same 172-byte G.711 packet;
//! - RFC 3550 statistics update;
//! - the whole forwarding decision of a spliced two-party call (validate, latch, statistics,
//!   splice lookup, target), which is what a worker does per packet besides the batched
//!   syscalls.
//!
//! Compare within one run: `cargo bench -p rtpedge-bridge --bench packet_path`.

use std::{hint::black_box, net::SocketAddr, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use rtpedge_bridge::{
    LegId, LegOptions, RemoteSpec, SpliceId, SpliceMode,
    core::{Core, Output, Socket},
    rtp,
    stats::StreamStats,
};
use webrtc_util::marshal::Unmarshal;

fn packet(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend(seq.to_be_bytes());
    p.extend((seq as u32 * 160).to_be_bytes());
    p.extend(0x1234_5678u32.to_be_bytes());
    p.extend(std::iter::repeat_n(0xd5u8, 160));
    p
}

fn header_validation(c: &mut Criterion) {
    let pkt = packet(7);
    let mut g = c.benchmark_group("rtp_header");
    g.bench_function("baseline_rtp_crate_unmarshal", |b| {
        b.iter(|| {
            let mut buf = bytes::Bytes::copy_from_slice(black_box(&pkt));
            let p = ::rtp::packet::Packet::unmarshal(&mut buf).ok();
            black_box(p.map(|p| p.header.sequence_number))
        })
    });
    g.bench_function("rtpedge_parse", |b| {
        b.iter(|| match rtp::parse(black_box(&pkt)) {
            Ok(rtpedge_bridge::rtp::Packet::Rtp(v)) => black_box(v.sequence()),
            _ => 0,
        })
    });
    g.finish();
}

fn statistics(c: &mut Criterion) {
    let mut s = StreamStats::new(8000);
    let mut seq = 0u16;
    let mut t = 0u64;
    c.bench_function("stream_stats_on_packet", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            t += 20_000_000;
            s.on_packet(seq, seq as u32 * 160, 0x1234_5678, t, 172);
            black_box(s.packets())
        })
    });
}

fn forwarding_decision(c: &mut Criterion) {
    let a_remote: SocketAddr = "192.0.2.1:4000".parse().unwrap_or_else(|_| unreachable!());
    let b_remote: SocketAddr = "198.51.100.2:5000"
        .parse()
        .unwrap_or_else(|_| unreachable!());
    let mut core = Core::new(8000);
    let a = core.add_leg(LegId(1), LegOptions::default(), 0);
    core.add_leg(LegId(2), LegOptions::default(), 0);
    let _ = core.set_remote(LegId(1), RemoteSpec::exact(a_remote), 0);
    let _ = core.set_remote(
        LegId(2),
        RemoteSpec::learning(Some(b_remote), Duration::from_secs(3)),
        0,
    );
    let _ = core.splice(SpliceId(1), &[LegId(1), LegId(2)], SpliceMode::Full, 0);
    let mut out = Output::default();
    let pkts: Vec<Vec<u8>> = (0..64u16).map(packet).collect();
    let mut i = 0usize;
    let mut now = 1u64;
    c.bench_function("core_on_packet_two_party", |b| {
        b.iter(|| {
            i = (i + 1) & 63;
            now += 20_000_000;
            let o = core.on_packet(a, Socket::Rtp, a_remote, black_box(&pkts[i]), now, &mut out);
            out.events.clear();
            black_box((o, out.targets.len()))
        })
    });
}

criterion_group!(benches, header_validation, statistics, forwarding_decision);
criterion_main!(benches);
