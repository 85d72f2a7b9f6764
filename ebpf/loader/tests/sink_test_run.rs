//! BPF_PROG_TEST_RUN tests of the load generator's XDP receive sink (`xdp_sink`, bench only):
//! crafted frames through the real, verifier-checked program; the verdict and the maps come
//! back from the kernel.
//!
//! Needs root (fails in CI without it; skips loudly elsewhere).

mod support;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use rtpedge_common::sink::{
    LATENCY_BUCKETS, SINK_PROGRAM, SinkConfig, SinkStream, SinkTotals, latency_bucket, map_names,
};
use rtpedge_dataplane::{SINK_BPF_OBJECT, monotonic_ns};
use support::{Frame, require_root};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const GEN_A: &str = "10.0.0.1:40000";
const GEN_B: &str = "10.0.0.1:40002";
const RELAY: &str = "10.0.0.2:30000";

struct Sink {
    bpf: Ebpf,
    config: Array<MapData, SinkConfig>,
    ports: Array<MapData, u32>,
    streams: Array<MapData, SinkStream>,
    latency: PerCpuArray<MapData, u64>,
    totals: PerCpuArray<MapData, SinkTotals>,
}

impl Sink {
    /// The sink with step 1 measured, stream 0 expected on GEN_A's port, stream 1 on GEN_B's.
    fn new() -> Self {
        let mut bpf = EbpfLoader::new()
            .load(SINK_BPF_OBJECT)
            .expect("load the sink object");
        let xdp: &mut Xdp = bpf.program_mut(SINK_PROGRAM).unwrap().try_into().unwrap();
        xdp.load().expect("verifier accepts xdp_sink");
        let mut take = |n: &str| bpf.take_map(n).unwrap_or_else(|| panic!("map {n}"));
        let mut s = Sink {
            config: Array::try_from(take(map_names::SINK_CONFIG)).unwrap(),
            ports: Array::try_from(take(map_names::SINK_PORTS)).unwrap(),
            streams: Array::try_from(take(map_names::SINK_STREAMS)).unwrap(),
            latency: PerCpuArray::try_from(take(map_names::SINK_LATENCY)).unwrap(),
            totals: PerCpuArray::try_from(take(map_names::SINK_TOTALS)).unwrap(),
            bpf,
        };
        s.step(1);
        s.ports.set(40000, 1, 0).unwrap();
        s.ports.set(40002, 2, 0).unwrap();
        s
    }

    /// Step `step` of a call set of two streams.
    fn step(&mut self, step: u32) {
        let cfg = SinkConfig { step, streams: 2 };
        self.config.set(0, cfg, 0).unwrap();
    }

    fn run(&mut self, frame: &[u8]) -> u32 {
        let xdp: &mut Xdp = self
            .bpf
            .program_mut(SINK_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        xdp.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .expect("test run")
        .return_value
    }

    fn stream(&self, i: u32) -> SinkStream {
        self.streams.get(&i, 0).unwrap()
    }

    fn totals(&self) -> SinkTotals {
        let mut t = SinkTotals::default();
        for c in self.totals.get(&0, 0).unwrap().iter() {
            t.counted += c.counted;
            t.stale += c.stale;
            t.misrouted += c.misrouted;
            t.foreign += c.foreign;
            t.latency_sum_ns += c.latency_sum_ns;
            t.latency_max_ns = t.latency_max_ns.max(c.latency_max_ns);
        }
        t
    }

    /// (bucket, count) of every non-empty latency bucket.
    fn latency(&self) -> Vec<(u32, u64)> {
        (0..LATENCY_BUCKETS)
            .filter_map(|b| {
                let n: u64 = self.latency.get(&b, 0).unwrap().iter().sum();
                (n > 0).then_some((b, n))
            })
            .collect()
    }
}

/// The generator's payload: an RTP header, the stamp, G.711 silence (172 bytes).
fn stamped(step: u32, stream: u32, seq: u64, sent_ns: u64) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend((seq as u16).to_be_bytes());
    p.extend(((seq as u32) * 160).to_be_bytes());
    p.extend(0x5254_0000u32.to_be_bytes());
    p.extend(b"RTPL");
    p.extend(step.to_be_bytes());
    p.extend(stream.to_be_bytes());
    p.extend(seq.to_be_bytes());
    p.extend(sent_ns.to_be_bytes());
    p.resize(172, 0xff);
    p
}

fn frame(dst: &str, payload: Vec<u8>) -> Vec<u8> {
    let mut f = Frame::udp(RELAY, dst);
    f.payload = payload;
    f.build()
}

#[test]
fn sink_counts_and_drops_the_generators_packets() {
    if !require_root("sink_counts_and_drops_the_generators_packets") {
        return;
    }
    let mut s = Sink::new();
    let now = monotonic_ns();
    let mut len = 0;
    for seq in 0..10 {
        let f = frame(GEN_A, stamped(1, 0, seq, now));
        len = f.len() as u64;
        assert_eq!(s.run(&f), XDP_DROP, "seq {seq}");
    }
    assert_eq!(s.run(&frame(GEN_B, stamped(1, 1, 0, now))), XDP_DROP);
    // IPv6 too (the generator may run on an IPv6 address).
    let mut f6 = Frame::udp("[2001:db8::2]:30000", "[2001:db8::1]:40002");
    f6.payload = stamped(1, 1, 1, now);
    assert_eq!(s.run(&f6.build()), XDP_DROP, "IPv6");
    let a = s.stream(0);
    assert_eq!(
        (a.received, a.duplicates, a.reordered, a.packets, a.bytes),
        (10, 0, 0, 10, 10 * len)
    );
    assert_eq!(a.highest, 9);
    assert_eq!(s.stream(1).received, 2);
    let t = s.totals();
    assert_eq!(
        (t.counted, t.stale, t.misrouted, t.foreign),
        (12, 0, 0, 0),
        "{t:?}"
    );
    let samples: u64 = s.latency().iter().map(|b| b.1).sum();
    assert_eq!(samples, 12, "one latency sample per counted packet");
}

#[test]
fn sink_records_latency_in_its_bucket() {
    if !require_root("sink_records_latency_in_its_bucket") {
        return;
    }
    let mut s = Sink::new();
    // Sent 3 ms "ago": the kernel's bpf_ktime_get_ns() and the generator's CLOCK_MONOTONIC
    // are one clock, so the latency is 3 ms plus the time until the program runs.
    let sent = monotonic_ns() - 3_000_000;
    let before = monotonic_ns();
    assert_eq!(s.run(&frame(GEN_A, stamped(1, 0, 0, sent))), XDP_DROP);
    let after = monotonic_ns();
    let (lo, hi) = (before - sent, after - sent);
    let buckets = s.latency();
    assert_eq!(buckets.len(), 1, "{buckets:?}");
    let (b, n) = buckets[0];
    assert_eq!(n, 1);
    assert!(
        latency_bucket(lo) <= b && b <= latency_bucket(hi),
        "bucket {b}, latency between {lo} and {hi} ns"
    );
    let t = s.totals();
    assert!(
        (lo..=hi).contains(&t.latency_max_ns),
        "max {}",
        t.latency_max_ns
    );
    assert_eq!(t.latency_sum_ns, t.latency_max_ns);
    // A send time in the future (another clock) is recorded as 1 ns, as the socket receiver does.
    let mut s = Sink::new();
    assert_eq!(
        s.run(&frame(
            GEN_A,
            stamped(1, 0, 0, monotonic_ns() + 10_000_000_000)
        )),
        XDP_DROP
    );
    assert_eq!(s.latency(), vec![(1, 1)]);
}

#[test]
fn sink_counts_reordering_and_duplicates_like_the_socket_receiver() {
    if !require_root("sink_counts_reordering_and_duplicates_like_the_socket_receiver") {
        return;
    }
    let mut s = Sink::new();
    let now = monotonic_ns();
    // 4 is lost, 2 arrives late, 3 twice, 1 far too late to be told from a duplicate.
    for seq in [0, 1, 3, 2, 3, 5, 300, 1] {
        assert_eq!(s.run(&frame(GEN_A, stamped(1, 0, seq, now))), XDP_DROP);
    }
    let a = s.stream(0);
    assert_eq!(
        (a.received, a.duplicates, a.reordered, a.packets),
        (7, 1, 2, 8),
        "{a:?}"
    );
    assert_eq!(a.highest, 300);
}

#[test]
fn sink_drops_stale_misrouted_and_foreign_packets_to_its_ports() {
    if !require_root("sink_drops_stale_misrouted_and_foreign_packets_to_its_ports") {
        return;
    }
    let mut s = Sink::new();
    let now = monotonic_ns();
    // Warm-up (step 0) and an earlier step: stale.
    assert_eq!(s.run(&frame(GEN_A, stamped(0, 0, 0, now))), XDP_DROP);
    s.step(2);
    assert_eq!(s.run(&frame(GEN_A, stamped(1, 0, 1, now))), XDP_DROP);
    // Stream 1's packet on stream 0's port: a relay crossing calls.
    assert_eq!(s.run(&frame(GEN_A, stamped(2, 1, 0, now))), XDP_DROP);
    // No stamp; a stream id beyond the call set, and beyond the table; too short for a stamp.
    assert_eq!(s.run(&frame(GEN_A, vec![0x80; 172])), XDP_DROP);
    assert_eq!(s.run(&frame(GEN_A, stamped(2, 2, 0, now))), XDP_DROP);
    assert_eq!(s.run(&frame(GEN_A, stamped(2, 70_000, 0, now))), XDP_DROP);
    assert_eq!(s.run(&frame(GEN_A, vec![0x80; 20])), XDP_DROP);
    let t = s.totals();
    assert_eq!(
        (t.counted, t.stale, t.misrouted, t.foreign),
        (0, 2, 1, 4),
        "{t:?}"
    );
    assert_eq!(s.stream(0), SinkStream::default());
    assert_eq!(s.stream(1), SinkStream::default());
    assert!(s.latency().is_empty());
}

#[test]
fn sink_passes_everything_else() {
    if !require_root("sink_passes_everything_else") {
        return;
    }
    let mut s = Sink::new();
    let now = monotonic_ns();
    // ARP.
    let mut arp = vec![0xff; 6];
    arp.extend([0x02, 0, 0, 0, 0, 2, 0x08, 0x06]);
    arp.extend([0, 1, 8, 0, 6, 4, 0, 1]);
    arp.resize(14 + 28, 0);
    // A stamped packet to a port that is not the generator's (e.g. the ng client's socket).
    let other_port = frame("10.0.0.1:22222", stamped(1, 0, 0, now));
    // TCP and an ICMP-sized non-UDP packet to a generator port.
    let tcp = Frame::udp(RELAY, GEN_A).protocol(6).build();
    let icmp = Frame::udp(RELAY, GEN_A).protocol(1).build();
    // A non-first fragment (no UDP header) and an IPv6 packet with an extension header.
    let frag = Frame::udp(RELAY, GEN_A).frag(0x0010).build();
    let mut v6ext = Frame::udp("[2001:db8::2]:30000", "[2001:db8::1]:40000").ext(60, 8);
    v6ext.payload = stamped(1, 0, 0, now);
    let mut vlan = Frame::udp(RELAY, GEN_A).vlan(7);
    vlan.payload = stamped(1, 0, 0, now);
    // IPv4 cut off in its header (the kernel's test run needs at least an Ethernet header).
    let mut runt = Frame::udp(RELAY, GEN_A).build();
    runt.truncate(14 + 12);
    for (what, f) in [
        ("ARP", arp),
        ("other port", other_port),
        ("TCP", tcp),
        ("ICMP", icmp),
        ("fragment", frag),
        ("IPv6 extension header", v6ext.build()),
        ("VLAN", vlan.build()),
        ("runt", runt),
    ] {
        assert_eq!(s.run(&f), XDP_PASS, "{what}");
    }
    assert_eq!(s.totals(), SinkTotals::default());
    assert_eq!(s.stream(0), SinkStream::default());
}
