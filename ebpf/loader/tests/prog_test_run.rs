//! BPF_PROG_TEST_RUN tests: crafted frames through the real, verifier-checked programs; the
//! verdict, the rewritten bytes and the counters come back from the kernel.
//!
//! Needs root (fails in CI without it; skips loudly elsewhere).

mod support;

use std::{net::SocketAddr, time::Duration};

use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use rtpedge_common::logic::ipv4_header_checksum;
use rtpedge_dataplane::{
    BPF_OBJECT, Counter, Dataplane, DataplaneError, Dscp, GlobalCounters, KernelDataplane,
    PinholeSpec, PinholeState, RateLimit, RemotePolicy,
};
use support::{Frame, l3_offset, require_root};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

struct Harness {
    bpf: Ebpf,
    dp: KernelDataplane,
}

impl Harness {
    fn new() -> Self {
        let mut bpf = EbpfLoader::new().load(BPF_OBJECT).expect("load BPF object");
        let xdp: &mut Xdp = bpf.program_mut("xdp_edge").unwrap().try_into().unwrap();
        xdp.load().expect("verifier accepts xdp_edge");
        let tc: &mut SchedClassifier = bpf.program_mut("tc_egress").unwrap().try_into().unwrap();
        tc.load().expect("verifier accepts tc_egress");
        let mut take = |name: &str| {
            bpf.take_map(name)
                .ok_or_else(|| DataplaneError::Invalid(format!("no map {name}")))
        };
        let mut dp = KernelDataplane::from_maps(&mut take).expect("maps");
        dp.set_port_range(30000, 40000).unwrap();
        Harness { bpf, dp }
    }

    fn xdp(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let xdp: &mut Xdp = self
            .bpf
            .program_mut("xdp_edge")
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let r = xdp
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .expect("test run");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn tc(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let tc: &mut SchedClassifier = self
            .bpf
            .program_mut("tc_egress")
            .unwrap()
            .try_into()
            .unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let r = tc
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .expect("tc test run");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn counters(&self) -> GlobalCounters {
        self.dp.counters().unwrap()
    }

    /// Runs `frame`, asserts the action, that exactly `counter` moved by one, and returns the
    /// output bytes.
    fn expect(&mut self, frame: &[u8], action: u32, counter: Counter, what: &str) -> Vec<u8> {
        let before = self.counters();
        let (rc, out) = self.xdp(frame);
        let after = self.counters();
        assert_eq!(rc, action, "{what}: action");
        for c in Counter::ALL {
            let delta = after.get(c) - before.get(c);
            let want = if c == counter { 1 } else { 0 };
            // DSCP marking and learning are counted beside the verdict.
            if matches!(c, Counter::DscpMarked | Counter::Learned) && c != counter {
                continue;
            }
            assert_eq!(delta, want, "{what}: counter {} moved by {delta}", c.name());
        }
        out
    }

    fn open(&mut self, local: &str, remote: RemotePolicy) {
        self.dp
            .open_pinhole(&PinholeSpec {
                local: local.parse().unwrap(),
                remote,
                dscp: None,
                rate: None,
            })
            .unwrap();
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const LOCAL: &str = "10.0.0.1:30000";
const PEER: &str = "10.0.0.2:4000";

#[test]
fn outside_media_range_passes_untouched() {
    if !require_root("outside_media_range_passes_untouched") {
        return;
    }
    let mut h = Harness::new();
    for dst in [
        "10.0.0.1:5060",
        "10.0.0.1:29999",
        "10.0.0.1:40001",
        "[2001:db8::1]:5060",
    ] {
        let src = if dst.starts_with('[') {
            "[2001:db8::2]:4000"
        } else {
            PEER
        };
        let f = Frame::udp(src, dst).build();
        let out = h.expect(&f, XDP_PASS, Counter::NotMedia, dst);
        assert_eq!(out, f, "untouched");
    }
    // Not UDP at all: TCP to a media port, and a non-IP ethertype (ARP).
    let tcp = Frame::udp(PEER, LOCAL).protocol(6).build();
    h.expect(&tcp, XDP_PASS, Counter::NotMedia, "tcp to media port");
    let mut arp = vec![0xffu8; 12];
    arp.extend([0x08, 0x06]);
    arp.extend([0u8; 28]);
    h.expect(&arp, XDP_PASS, Counter::NotMedia, "arp");
}

#[test]
fn range_edges_and_runtime_range_change() {
    if !require_root("range_edges_and_runtime_range_change") {
        return;
    }
    let mut h = Harness::new();
    for p in [30000, 40000] {
        let f = Frame::udp(PEER, &format!("10.0.0.1:{p}")).build();
        h.expect(&f, XDP_DROP, Counter::NoPinhole, "range edge");
    }
    h.dp.set_port_range(50000, 50010).unwrap();
    let f = Frame::udp(PEER, LOCAL).build();
    h.expect(&f, XDP_PASS, Counter::NotMedia, "30000 after range change");
    let f = Frame::udp(PEER, "10.0.0.1:50005").build();
    h.expect(&f, XDP_DROP, Counter::NoPinhole, "50005 after range change");
}

#[test]
fn no_pinhole_drops_and_closed_drops() {
    if !require_root("no_pinhole_drops_and_closed_drops") {
        return;
    }
    let mut h = Harness::new();
    let f = Frame::udp(PEER, LOCAL).build();
    h.expect(&f, XDP_DROP, Counter::NoPinhole, "no pinhole");
    h.open(LOCAL, RemotePolicy::Exact(sa(PEER)));
    h.expect(&f, XDP_PASS, Counter::Passed, "open");
    h.dp.close_pinhole(sa(LOCAL)).unwrap();
    h.expect(&f, XDP_DROP, Counter::Closed, "closed");
    let info = h.dp.pinhole(sa(LOCAL)).unwrap().unwrap();
    assert_eq!(info.state, PinholeState::Closed);
    assert_eq!(info.counters.packets, 1);
    assert_eq!(info.counters.dropped_closed, 1);
    // Re-opening takes effect on the next packet.
    h.open(LOCAL, RemotePolicy::Exact(sa(PEER)));
    h.expect(&f, XDP_PASS, Counter::Passed, "reopened");
    h.dp.remove_pinhole(sa(LOCAL)).unwrap();
    h.expect(&f, XDP_DROP, Counter::NoPinhole, "removed");
    assert!(h.dp.pinhole(sa(LOCAL)).unwrap().is_none());
}

#[test]
fn exact_policy_checks_address_and_port() {
    if !require_root("exact_policy_checks_address_and_port") {
        return;
    }
    let mut h = Harness::new();
    h.open(LOCAL, RemotePolicy::Exact(sa(PEER)));
    let ok = Frame::udp(PEER, LOCAL).build();
    let out = h.expect(&ok, XDP_PASS, Counter::Passed, "exact match");
    assert_eq!(out, ok, "no DSCP configured: bytes untouched");
    let wrong_port = Frame::udp("10.0.0.2:4001", LOCAL).build();
    h.expect(&wrong_port, XDP_DROP, Counter::WrongSource, "wrong port");
    let wrong_addr = Frame::udp("10.0.0.3:4000", LOCAL).build();
    h.expect(&wrong_addr, XDP_DROP, Counter::WrongSource, "wrong address");
    // Wrong local address is a different pinhole key altogether.
    let other_local = Frame::udp(PEER, "10.0.0.9:30000").build();
    h.expect(
        &other_local,
        XDP_DROP,
        Counter::NoPinhole,
        "other local address",
    );
    let info = h.dp.pinhole(sa(LOCAL)).unwrap().unwrap();
    assert_eq!(info.counters.packets, 1);
    assert_eq!(info.counters.bytes, ok.len() as u64);
    assert_eq!(info.counters.dropped_wrong_source, 2);
    assert!(info.counters.idle.is_some());
}

#[test]
fn address_policy_accepts_any_port_from_the_address() {
    if !require_root("address_policy_accepts_any_port_from_the_address") {
        return;
    }
    let mut h = Harness::new();
    h.open(LOCAL, RemotePolicy::Address("10.0.0.2".parse().unwrap()));
    for port in [1, 4000, 65535] {
        let f = Frame::udp(&format!("10.0.0.2:{port}"), LOCAL).build();
        h.expect(&f, XDP_PASS, Counter::Passed, "address policy");
    }
    let f = Frame::udp("10.0.0.3:4000", LOCAL).build();
    h.expect(&f, XDP_DROP, Counter::WrongSource, "other address");
}

#[test]
fn any_policy_leaves_latching_to_the_bridge() {
    if !require_root("any_policy_leaves_latching_to_the_bridge") {
        return;
    }
    let mut h = Harness::new();
    h.open(LOCAL, RemotePolicy::Any);
    for src in ["10.0.0.2:4000", "203.0.113.9:1", "10.0.0.2:4002"] {
        let f = Frame::udp(src, LOCAL).build();
        h.expect(&f, XDP_PASS, Counter::Passed, src);
    }
    assert_eq!(
        h.dp.learned_source(sa(LOCAL)).unwrap(),
        None,
        "nothing latched in the kernel"
    );
    h.dp.close_pinhole(sa(LOCAL)).unwrap();
    let f = Frame::udp(PEER, LOCAL).build();
    h.expect(&f, XDP_DROP, Counter::Closed, "closed still closes");
}

#[test]
fn learning_latches_the_first_source_then_locks() {
    if !require_root("learning_latches_the_first_source_then_locks") {
        return;
    }
    let mut h = Harness::new();
    h.open(
        LOCAL,
        RemotePolicy::Learning {
            from: None,
            window: Some(Duration::from_secs(30)),
        },
    );
    let first = Frame::udp("198.51.100.7:5004", LOCAL).build();
    let before = h.counters();
    h.expect(&first, XDP_PASS, Counter::Passed, "first source");
    assert_eq!(
        h.counters().get(Counter::Learned) - before.get(Counter::Learned),
        1
    );
    assert_eq!(
        h.dp.learned_source(sa(LOCAL)).unwrap(),
        Some(sa("198.51.100.7:5004"))
    );
    h.expect(&first, XDP_PASS, Counter::Passed, "same source again");
    // RTP Bleed / Inject: another port of the same host, another host, within the window.
    for bad in ["198.51.100.7:5006", "198.51.100.8:5004", "10.0.0.2:4000"] {
        let f = Frame::udp(bad, LOCAL).build();
        h.expect(&f, XDP_DROP, Counter::WrongSource, bad);
    }
    assert_eq!(
        h.dp.learned_source(sa(LOCAL)).unwrap(),
        Some(sa("198.51.100.7:5004"))
    );
    let info = h.dp.pinhole(sa(LOCAL)).unwrap().unwrap();
    assert_eq!(info.remote_display(), "198.51.100.7:5004");

    // Media handover only when signaling says so.
    h.dp.relearn(sa(LOCAL), Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(h.dp.learned_source(sa(LOCAL)).unwrap(), None);
    let moved = Frame::udp("198.51.100.9:6000", LOCAL).build();
    h.expect(&moved, XDP_PASS, Counter::Passed, "after relearn");
    h.expect(
        &first,
        XDP_DROP,
        Counter::WrongSource,
        "old source after relearn",
    );
}

#[test]
fn learning_window_expiry_and_address_restriction() {
    if !require_root("learning_window_expiry_and_address_restriction") {
        return;
    }
    let mut h = Harness::new();
    // A window that has already closed: nothing can be learned.
    h.open(
        LOCAL,
        RemotePolicy::Learning {
            from: None,
            window: Some(Duration::from_nanos(1)),
        },
    );
    std::thread::sleep(Duration::from_millis(2));
    let f = Frame::udp(PEER, LOCAL).build();
    h.expect(&f, XDP_DROP, Counter::WrongSource, "window expired");
    assert_eq!(h.dp.learned_source(sa(LOCAL)).unwrap(), None);

    // Learning restricted to the signalled address: other hosts cannot be latched.
    let local2 = "10.0.0.1:30002";
    h.open(
        local2,
        RemotePolicy::Learning {
            from: Some("10.0.0.2".parse().unwrap()),
            window: Some(Duration::from_secs(30)),
        },
    );
    let intruder = Frame::udp("10.0.0.66:4000", local2).build();
    h.expect(
        &intruder,
        XDP_DROP,
        Counter::WrongSource,
        "intruder before genuine",
    );
    let genuine = Frame::udp("10.0.0.2:4010", local2).build();
    h.expect(&genuine, XDP_PASS, Counter::Passed, "genuine");
    let same_host_other_port = Frame::udp("10.0.0.2:4012", local2).build();
    h.expect(
        &same_host_other_port,
        XDP_DROP,
        Counter::WrongSource,
        "port locked once learned",
    );
}

#[test]
fn policy_update_clears_a_latch_it_does_not_keep() {
    if !require_root("policy_update_clears_a_latch_it_does_not_keep") {
        return;
    }
    let mut h = Harness::new();
    h.open(
        LOCAL,
        RemotePolicy::Learning {
            from: None,
            window: None,
        },
    );
    let a = Frame::udp(PEER, LOCAL).build();
    h.expect(&a, XDP_PASS, Counter::Passed, "learn");
    // re-INVITE with an exact remote: the latch is gone, the exact remote rules.
    h.open(LOCAL, RemotePolicy::Exact(sa("10.0.0.5:7000")));
    assert_eq!(h.dp.learned_source(sa(LOCAL)).unwrap(), None);
    h.expect(
        &a,
        XDP_DROP,
        Counter::WrongSource,
        "old latch no longer admits",
    );
    let b = Frame::udp("10.0.0.5:7000", LOCAL).build();
    h.expect(&b, XDP_PASS, Counter::Passed, "new exact remote");
    // Counters survived the update.
    assert_eq!(
        h.dp.pinhole(sa(LOCAL)).unwrap().unwrap().counters.packets,
        2
    );
}

#[test]
fn rate_limit_admits_the_burst_then_drops() {
    if !require_root("rate_limit_admits_the_burst_then_drops") {
        return;
    }
    let mut h = Harness::new();
    h.dp.open_pinhole(&PinholeSpec {
        local: sa(LOCAL),
        remote: RemotePolicy::Exact(sa(PEER)),
        dscp: None,
        rate: Some(RateLimit::new(1, 5).unwrap()),
    })
    .unwrap();
    let f = Frame::udp(PEER, LOCAL).build();
    // At 1 packet/s, back-to-back runs (well under a second) refill nothing.
    for i in 0..5 {
        h.expect(&f, XDP_PASS, Counter::Passed, &format!("burst packet {i}"));
    }
    for _ in 0..3 {
        h.expect(&f, XDP_DROP, Counter::RateLimited, "over the limit");
    }
    let info = h.dp.pinhole(sa(LOCAL)).unwrap().unwrap();
    assert_eq!(info.counters.dropped_rate_limited, 3);
    assert_eq!(info.rate, Some(RateLimit { pps: 1, burst: 5 }));
    // Lifting the limit takes effect on the next packet.
    h.dp.set_rate_limit(sa(LOCAL), None).unwrap();
    h.expect(&f, XDP_PASS, Counter::Passed, "limit lifted");
}

fn check_ipv4_dscp(out: &[u8], l3: usize, dscp: u8, ecn: u8) {
    let ihl = (out[l3] & 0x0f) as usize * 4;
    let hdr = &out[l3..l3 + ihl];
    assert_eq!(hdr[1] >> 2, dscp, "DSCP");
    assert_eq!(hdr[1] & 3, ecn, "ECN kept");
    assert_eq!(ipv4_header_checksum(hdr), 0, "checksum verifies");
    let mut zeroed = hdr.to_vec();
    zeroed[10] = 0;
    zeroed[11] = 0;
    assert_eq!(
        ipv4_header_checksum(&zeroed).to_be_bytes(),
        [hdr[10], hdr[11]],
        "incremental checksum equals one computed from scratch"
    );
}

#[test]
fn dscp_rewrite_ipv4_with_and_without_options() {
    if !require_root("dscp_rewrite_ipv4_with_and_without_options") {
        return;
    }
    let mut h = Harness::new();
    for (dscp, tos, options) in [
        (46u8, 0u8, 0usize),
        (34, 0x03, 0),
        (0, 0xb8, 1),
        (63, 0x01, 10),
        (46, 0xb9, 3),
    ] {
        h.dp.open_pinhole(&PinholeSpec {
            local: sa(LOCAL),
            remote: RemotePolicy::Exact(sa(PEER)),
            dscp: Some(Dscp::new(dscp).unwrap()),
            rate: None,
        })
        .unwrap();
        let f = Frame::udp(PEER, LOCAL).tos(tos).options(options).build();
        let before = h.counters();
        let out = h.expect(&f, XDP_PASS, Counter::Passed, "dscp");
        assert_eq!(
            h.counters().get(Counter::DscpMarked) - before.get(Counter::DscpMarked),
            1
        );
        assert_eq!(out.len(), f.len());
        check_ipv4_dscp(&out, 14, dscp, tos & 3);
        // Nothing else changed: payload and UDP header intact.
        let ihl = (f[14] & 0x0f) as usize * 4;
        assert_eq!(out[14 + ihl..], f[14 + ihl..], "UDP and payload untouched");
        assert_eq!(out[..14], f[..14]);
    }
}

#[test]
fn dscp_rewrite_ipv6_traffic_class() {
    if !require_root("dscp_rewrite_ipv6_traffic_class") {
        return;
    }
    let mut h = Harness::new();
    let local = "[2001:db8::1]:30010";
    let peer = "[2001:db8::2]:5000";
    h.dp.open_pinhole(&PinholeSpec {
        local: sa(local),
        remote: RemotePolicy::Exact(sa(peer)),
        dscp: Some(Dscp::EF),
        rate: None,
    })
    .unwrap();
    let f = Frame::udp(peer, local).tos(0x02).build();
    let out = h.expect(&f, XDP_PASS, Counter::Passed, "ipv6 dscp");
    let w = u32::from_be_bytes([out[14], out[15], out[16], out[17]]);
    assert_eq!(w >> 28, 6, "version");
    assert_eq!(
        (w >> 20) & 0xff,
        (46 << 2) | 2,
        "traffic class: EF with ECN kept"
    );
    assert_eq!(w & 0xfffff, 0x12345, "flow label kept");
    assert_eq!(out[18..], f[18..]);
}

#[test]
fn vlan_tagged_frames_are_parsed() {
    if !require_root("vlan_tagged_frames_are_parsed") {
        return;
    }
    let mut h = Harness::new();
    h.dp.open_pinhole(&PinholeSpec {
        local: sa(LOCAL),
        remote: RemotePolicy::Exact(sa(PEER)),
        dscp: Some(Dscp::EF),
        rate: None,
    })
    .unwrap();
    let f = Frame::udp(PEER, LOCAL).vlan(100).build();
    let out = h.expect(&f, XDP_PASS, Counter::Passed, "vlan v4");
    check_ipv4_dscp(&out, l3_offset(true), 46, 0);
    let bad = Frame::udp("10.0.0.3:4000", LOCAL).vlan(100).build();
    h.expect(&bad, XDP_DROP, Counter::WrongSource, "vlan v4 wrong source");
    let unknown = Frame::udp(PEER, "10.0.0.1:30100").vlan(7).build();
    h.expect(&unknown, XDP_DROP, Counter::NoPinhole, "vlan v4 no pinhole");
    // IPv6 behind a tag.
    let v6 = Frame::udp("[2001:db8::2]:1", "[2001:db8::1]:30020")
        .vlan(5)
        .build();
    h.expect(&v6, XDP_DROP, Counter::NoPinhole, "vlan v6 no pinhole");
}

#[test]
fn ipv6_extension_headers_fragments_and_unknown_next_headers() {
    if !require_root("ipv6_extension_headers_fragments_and_unknown_next_headers") {
        return;
    }
    let mut h = Harness::new();
    let local = "[2001:db8::1]:30030";
    let peer = "[2001:db8::2]:5000";
    h.open(local, RemotePolicy::Exact(sa(peer)));
    // Hop-by-hop (8 bytes) and destination options (16 bytes) before UDP are followed.
    let f = Frame::udp(peer, local).ext(0, 8).ext(60, 16).build();
    h.expect(&f, XDP_PASS, Counter::Passed, "hbh + dstopts");
    let f = Frame::udp("[2001:db8::3]:5000", local).ext(0, 8).build();
    h.expect(&f, XDP_DROP, Counter::WrongSource, "hbh, wrong source");
    // A first fragment carries the UDP header and is judged like any packet.
    let f = Frame::udp("[2001:db8::3]:5000", local).ext(44, 8).build();
    h.expect(
        &f,
        XDP_DROP,
        Counter::WrongSource,
        "first fragment, wrong source",
    );
    // A non-first fragment has no ports: passed and counted (it cannot reassemble alone).
    let mut f = Frame::udp(peer, local).ext(44, 8).build();
    f[14 + 40 + 2] = 0x00;
    f[14 + 40 + 3] = 0x08; // offset 1 (8 bytes)
    h.expect(&f, XDP_PASS, Counter::Fragment, "non-first fragment");
    // A chain longer than any UDP media packet carries cannot be followed: dropped.
    let f = Frame::udp(peer, local)
        .ext(0, 8)
        .ext(60, 8)
        .ext(60, 8)
        .ext(60, 8)
        .ext(60, 8)
        .build();
    h.expect(&f, XDP_DROP, Counter::Malformed, "5 extension headers");
    // Next headers the firewall does not govern (ESP, ICMPv6, experimental) pass as not media.
    for proto in [50u8, 58, 253] {
        let f = Frame::udp(peer, local).protocol(proto).build();
        h.expect(&f, XDP_PASS, Counter::NotMedia, "non-UDP next header");
    }
}

#[test]
fn ipv4_fragments() {
    if !require_root("ipv4_fragments") {
        return;
    }
    let mut h = Harness::new();
    // First fragment (MF set, offset 0) to a media port without pinhole: dropped, so the
    // later fragments can never reassemble.
    let f = Frame::udp(PEER, LOCAL).frag(0x2000).build();
    h.expect(&f, XDP_DROP, Counter::NoPinhole, "first fragment");
    let f = Frame::udp(PEER, LOCAL).frag(0x0010).build();
    h.expect(&f, XDP_PASS, Counter::Fragment, "non-first fragment");
}

#[test]
fn malformed_media_range_headers_are_dropped() {
    if !require_root("malformed_media_range_headers_are_dropped") {
        return;
    }
    let mut h = Harness::new();
    h.open(LOCAL, RemotePolicy::Exact(sa(PEER)));
    let good = Frame::udp(PEER, LOCAL).build();
    // UDP length below 8.
    let mut f = good.clone();
    f[14 + 20 + 4] = 0;
    f[14 + 20 + 5] = 7;
    h.expect(&f, XDP_DROP, Counter::Malformed, "udp len 7");
    // UDP length beyond the IP datagram.
    let mut f = good.clone();
    f[14 + 20 + 4] = 0x40;
    h.expect(&f, XDP_DROP, Counter::Malformed, "udp len too long");
    // IP total length shorter than its own header plus UDP.
    let mut f = good.clone();
    f[16] = 0;
    f[17] = 20;
    h.expect(&f, XDP_DROP, Counter::Malformed, "tot_len 20");
    // IPv6 payload length beyond the frame.
    let v6 = Frame::udp("[2001:db8::2]:5000", "[2001:db8::1]:30030").build();
    let mut f = v6.clone();
    f[18] = 0xff;
    h.expect(&f, XDP_DROP, Counter::Malformed, "ipv6 payload len");
    // Bad IHL: the UDP header cannot be located, the stack drops it; we pass it as unparsed.
    let mut f = good.clone();
    f[14] = 0x43;
    h.expect(&f, XDP_PASS, Counter::Unparsed, "ihl 3");
    // The good frame still passes.
    h.expect(&good, XDP_PASS, Counter::Passed, "good");
}

/// Every truncation of a media frame, from 0 bytes to the full headers: never an out-of-bounds
/// read (the verifier guarantees it), and the documented verdict for each length.
#[test]
fn truncated_frames_of_every_length() {
    if !require_root("truncated_frames_of_every_length") {
        return;
    }
    let mut h = Harness::new();
    h.open(LOCAL, RemotePolicy::Exact(sa(PEER)));
    h.open(
        "[2001:db8::1]:30030",
        RemotePolicy::Exact(sa("[2001:db8::2]:5000")),
    );
    let cases = [
        ("ipv4", Frame::udp(PEER, LOCAL).build(), 14 + 20),
        (
            "ipv4+options",
            Frame::udp(PEER, LOCAL).options(2).build(),
            14 + 28,
        ),
        (
            "ipv4+vlan",
            Frame::udp(PEER, LOCAL).vlan(9).build(),
            18 + 20,
        ),
        (
            "ipv6",
            Frame::udp("[2001:db8::2]:5000", "[2001:db8::1]:30030").build(),
            14 + 40,
        ),
    ];
    for (name, full, l4) in cases {
        let headers = l4 + 8;
        for len in 0..=headers {
            let f = &full[..len];
            if len < 14 {
                // The kernel never hands an XDP program a frame shorter than an Ethernet
                // header: BPF_PROG_TEST_RUN refuses it, as drivers never deliver one.
                let xdp: &mut Xdp = h.bpf.program_mut("xdp_edge").unwrap().try_into().unwrap();
                let r = xdp.test_run(TestRunOptions {
                    data_in: Some(f),
                    ..TestRunOptions::new()
                });
                assert!(
                    r.is_err(),
                    "{name} len {len}: kernel must refuse a runt frame"
                );
                continue;
            }
            let what = format!("{name} truncated to {len}");
            if len < l4 + 4 {
                // Destination port not readable: cannot be media; the stack will drop it.
                h.expect(f, XDP_PASS, Counter::Unparsed, &what);
            } else {
                // Port readable and in range, headers incomplete or lengths inconsistent.
                h.expect(f, XDP_DROP, Counter::Malformed, &what);
            }
        }
        h.expect(&full, XDP_PASS, Counter::Passed, &format!("{name} full"));
    }
}

#[test]
fn tc_egress_marks_what_the_host_sends_from_a_pinhole() {
    if !require_root("tc_egress_marks_what_the_host_sends_from_a_pinhole") {
        return;
    }
    let mut h = Harness::new();
    h.dp.open_pinhole(&PinholeSpec {
        local: sa(LOCAL),
        remote: RemotePolicy::Exact(sa(PEER)),
        dscp: Some(Dscp::new(34).unwrap()),
        rate: None,
    })
    .unwrap();
    // Sent from the pinhole's local address and port.
    let f = Frame::udp(LOCAL, PEER).tos(0x01).build();
    let before = h.counters();
    let (rc, out) = h.tc(&f);
    assert_eq!(rc, 0, "TC_ACT_OK: egress never drops");
    assert_eq!(
        h.counters().get(Counter::EgressMarked) - before.get(Counter::EgressMarked),
        1
    );
    check_ipv4_dscp(&out, 14, 34, 1);
    assert_eq!(out[34..], f[34..]);
    let info = h.dp.pinhole(sa(LOCAL)).unwrap().unwrap();
    assert_eq!(info.counters.tx_packets, 1);
    assert_eq!(info.counters.tx_bytes, f.len() as u64);
    // From another port: untouched.
    let other = Frame::udp("10.0.0.1:30002", PEER).build();
    let (rc, out) = h.tc(&other);
    assert_eq!(rc, 0);
    assert_eq!(out, other);
    // IPv6.
    h.dp.open_pinhole(&PinholeSpec {
        local: sa("[2001:db8::1]:30040"),
        remote: RemotePolicy::Address("2001:db8::2".parse().unwrap()),
        dscp: Some(Dscp::EF),
        rate: None,
    })
    .unwrap();
    let f6 = Frame::udp("[2001:db8::1]:30040", "[2001:db8::2]:5000").build();
    let (_, out) = h.tc(&f6);
    let w = u32::from_be_bytes([out[14], out[15], out[16], out[17]]);
    assert_eq!((w >> 20) & 0xff, 46 << 2);
    // A closed pinhole no longer marks.
    h.dp.close_pinhole(sa(LOCAL)).unwrap();
    let (_, out) = h.tc(&f);
    assert_eq!(out, f);
}

#[test]
fn full_table_is_an_error_not_an_eviction() {
    if !require_root("full_table_is_an_error_not_an_eviction") {
        return;
    }
    let mut h = Harness::new();
    let n = rtpedge_common::MAX_PINHOLES as usize;
    let mut opened = 0;
    let mut err = None;
    'outer: for a in 1..=255u8 {
        for p in (30000u16..=40000).step_by(2) {
            let local = SocketAddr::new(std::net::IpAddr::from([10, 9, 0, a]), p);
            match h.dp.open_pinhole(&PinholeSpec {
                local,
                remote: RemotePolicy::Exact(sa(PEER)),
                dscp: None,
                rate: None,
            }) {
                Ok(()) => opened += 1,
                Err(e) => {
                    err = Some(e);
                    break 'outer;
                }
            }
        }
    }
    assert_eq!(opened, n);
    assert!(matches!(err, Some(DataplaneError::TableFull(_))), "{err:?}");
    // The first pinhole is still there: nothing was evicted.
    let first = Frame::udp(PEER, "10.9.0.1:30000").build();
    h.expect(
        &first,
        XDP_PASS,
        Counter::Passed,
        "first pinhole survives a full table",
    );
}

const XDP_TX: u32 = 3;

#[test]
fn fast_path_rewrites_and_transmits_once_the_way_back_is_known() {
    if !require_root("fast_path_rewrites_and_transmits_once_the_way_back_is_known") {
        return;
    }
    let mut h = Harness::new();
    let (leg_a, leg_b) = (sa("10.0.0.1:30000"), sa("10.0.0.1:30002"));
    let (caller, callee) = (sa("10.0.0.2:4000"), sa("10.0.0.3:5000"));
    for (local, remote) in [(leg_a, caller), (leg_b, callee)] {
        h.dp.open_pinhole(&PinholeSpec {
            local,
            remote: RemotePolicy::Exact(remote),
            dscp: None,
            rate: None,
        })
        .unwrap();
    }
    use rtpedge_dataplane::ForwardSpec;
    let to_callee = ForwardSpec {
        via: leg_b,
        to: callee,
        dscp: Some(Dscp::new(46).unwrap()),
        clock_rate: 8000,
        check_padding: true,
    };
    let to_caller = ForwardSpec {
        via: leg_a,
        to: caller,
        dscp: None,
        clock_rate: 8000,
        check_padding: true,
    };
    h.dp.set_forward(leg_a, Some(to_callee)).unwrap();
    h.dp.set_forward(leg_b, Some(to_caller)).unwrap();
    assert_eq!(h.dp.forward(leg_a).unwrap(), Some(to_callee));

    // RTP (PT 0, 160 bytes of G.711) of stream `ssrc`.
    let rtp = |ssrc: u32, seq: u16| {
        let mut p = vec![0x80, 0];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xd5; 160]);
        p
    };
    // Caller's frame arrives from router R1 (MAC ..:a1) at our MAC ..:e1.
    let mut caller_frame = Frame::udp(&caller.to_string(), &leg_a.to_string());
    caller_frame.payload = rtp(0xa, 1);
    let mut from_caller = caller_frame.build();
    from_caller[..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xe1, 2, 0, 0, 0, 0, 0xa1]);
    // Callee's frame arrives from router R2 (MAC ..:b2) at our MAC ..:e1.
    let mut callee_frame = Frame::udp(&callee.to_string(), &leg_b.to_string()).tos(0x02);
    callee_frame.payload = rtp(0xb, 7);
    let mut from_callee = callee_frame.build();
    from_callee[..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xe1, 2, 0, 0, 0, 0, 0xb2]);

    let count = |h: &Harness, c: Counter| h.counters().get(c);
    // The callee has not spoken yet: the way to it is unknown, the stack (bridge) takes it.
    let (rc, out) = h.xdp(&from_caller);
    assert_eq!(rc, XDP_PASS);
    assert_eq!(out, from_caller, "fallback leaves the frame untouched");
    assert_eq!(count(&h, Counter::ForwardFallback), 1);
    assert_eq!(count(&h, Counter::Forwarded), 0);

    // The callee's first packet goes straight back to the caller, through R1.
    let (rc, out) = h.xdp(&from_callee);
    assert_eq!(rc, XDP_TX, "forwarded in the kernel");
    assert_eq!(out.len(), from_callee.len());
    assert_eq!(out[..6], [2, 0, 0, 0, 0, 0xa1], "to the caller's next hop");
    assert_eq!(out[6..12], [2, 0, 0, 0, 0, 0xe1], "from our own MAC");
    let ip = &out[14..34];
    assert_eq!(ipv4_header_checksum(ip), 0, "IP checksum valid");
    assert_eq!(ip[1], 0x02, "no DSCP on this direction, ECN kept");
    assert_eq!(ip[8], 64, "fresh TTL");
    assert_eq!(ip[12..16], [10, 0, 0, 1]);
    assert_eq!(ip[16..20], [10, 0, 0, 2]);
    assert_eq!(out[34..36], 30000u16.to_be_bytes(), "from leg A");
    assert_eq!(out[36..38], 4000u16.to_be_bytes(), "to the caller");
    assert_eq!(out[40..], from_callee[40..], "payload untouched");

    // And now the caller's packets go to the callee through R2, marked EF.
    let (rc, out) = h.xdp(&from_caller);
    assert_eq!(rc, XDP_TX);
    assert_eq!(out[..12], [2, 0, 0, 0, 0, 0xb2, 2, 0, 0, 0, 0, 0xe1]);
    let ip = &out[14..34];
    assert_eq!(ipv4_header_checksum(ip), 0);
    assert_eq!(ip[1], 46 << 2);
    assert_eq!(ip[12..16], [10, 0, 0, 1]);
    assert_eq!(ip[16..20], [10, 0, 0, 3]);
    assert_eq!(out[34..36], 30002u16.to_be_bytes());
    assert_eq!(out[36..38], 5000u16.to_be_bytes());
    assert_eq!(out[40..], from_caller[40..]);
    assert_eq!(count(&h, Counter::Forwarded), 2);
    assert_eq!(count(&h, Counter::Passed), 3);
    let a = h.dp.pinhole(leg_a).unwrap().unwrap();
    assert_eq!((a.counters.packets, a.counters.tx_packets), (2, 1));
    assert_eq!(a.counters.forwarded_packets, 1);
    // What is not valid RTP is never forwarded: the bridge judges it (and drops it).
    let mut not_rtp = caller_frame.clone();
    not_rtp.payload[0] = 0x40;
    let not_rtp = not_rtp.build();
    let (rc, out) = h.xdp(&not_rtp);
    assert_eq!(
        (rc, out),
        (XDP_PASS, not_rtp),
        "version 1: up to the bridge, untouched"
    );
    let mut rtcp = caller_frame.clone();
    rtcp.payload[1] = 200;
    assert_eq!(
        h.xdp(&rtcp.build()).0,
        XDP_PASS,
        "RTCP on the RTP port: the bridge's"
    );
    // The kernel kept the stream's statistics: seq 1 of 0xa, then 2, 3, 5 (4 lost).
    for seq in [2u16, 3, 5] {
        let mut f = caller_frame.clone();
        f.payload = rtp(0xa, seq);
        let mut f = f.build();
        f[..12].copy_from_slice(&from_caller[..12]);
        assert_eq!(h.xdp(&f).0, XDP_TX);
    }
    let st =
        h.dp.forwarded_rtp(leg_a)
            .unwrap()
            .expect("created with the entry");
    assert_eq!(st.ssrc(), Some(0xa));
    assert_eq!((st.packets(), st.expected(), st.lost()), (4, 5, 1));
    assert_eq!(st.clock_rate(), 8000);
    assert_eq!(count(&h, Counter::Forwarded), 5);

    // A wrong source is judged by the pinhole before any forwarding.
    let intruder = Frame::udp("10.0.0.3:5001", &leg_a.to_string()).build();
    let (rc, _) = h.xdp(&intruder);
    assert_eq!(rc, XDP_DROP);
    // Tagged frames and closed pinholes never take the fast path.
    let tagged = Frame::udp(&caller.to_string(), &leg_a.to_string())
        .vlan(7)
        .build();
    assert_eq!(h.xdp(&tagged).0, XDP_PASS);
    // The first packet, the non-RTP, the RTCP and the tagged one.
    assert_eq!(count(&h, Counter::ForwardFallback), 4);
    h.dp.close_pinhole(leg_b).unwrap();
    assert_eq!(h.xdp(&from_callee).0, XDP_DROP);

    // Clearing the entry returns the direction to the stack; removing the pinhole clears it.
    h.dp.set_forward(leg_a, None).unwrap();
    assert_eq!(h.xdp(&from_caller).0, XDP_PASS);
    assert_eq!(count(&h, Counter::Forwarded), 5);
    h.dp.remove_pinhole(leg_b).unwrap();
    assert_eq!(h.dp.forward(leg_b).unwrap(), None);

    // What the kernel could never use is refused with a reason.
    assert!(matches!(
        h.dp.set_forward(sa("10.0.0.1:30004"), Some(to_caller)),
        Err(DataplaneError::NoSuchPinhole(_))
    ));
    let mixed = ForwardSpec {
        via: leg_b,
        to: sa("[2001:db8::1]:5000"),
        dscp: None,
        clock_rate: 8000,
        check_padding: true,
    };
    let err = h.dp.set_forward(leg_a, Some(mixed)).unwrap_err();
    assert!(err.to_string().contains("address family"), "{err}");
}
