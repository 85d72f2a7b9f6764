//! rtpedge's eBPF programs.
//!
//! * `xdp_edge` (XDP, ingress): default-deny on the UDP media port range. A packet to a media
//!   port passes only through an open pinhole for its destination address and port whose remote
//!   policy its source satisfies, within the pinhole's optional rate limit; its DSCP is then
//!   rewritten if the pinhole says so. Everything outside the media range passes untouched.
//!   Every verdict is counted.
//!   When the pinhole has a forwarding entry (a spliced leg whose remote is known), the packet
//!   is rewritten to leave from the spliced leg's address and port to its remote and sent
//!   back out of the receiving interface (`XDP_TX`) without reaching the stack: the in-kernel
//!   fast path. Whatever the program cannot forward itself (no route or neighbour out of the
//!   same interface, MTU, VLAN, family change) goes up the stack to the bridge as before.
//! * `tc_egress` (TC, egress): marks what the host sends from a pinhole's local address and port
//!   with that pinhole's DSCP, and counts it. Never drops.
//!
//! Parsing never reads past `data_end`: every access goes through a bounds-checked helper. The
//! decision logic that does not touch packets or maps lives in `rtpedge_common::logic` and is
//! unit tested on the host.
#![no_std]
#![no_main]

mod packet;

use packet::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, IPV6_HLEN, UDP_HLEN, ptr_at, read};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_OK, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::{TcContext, XdpContext},
};
use rtpedge_common::{
    Config, Counter, DSCP_NONE, Forward, LearnedSource, MAX_PINHOLES, Meta, NextHop, Pinhole,
    PinholeKey, PinholeStats,
    forward::{
        FORWARD_CHECK_PADDING, MAX_FAST_PATH_UDP_LEN, RtpFields, family_matches, ipv4_forward,
        ipv6_forward, rtp_for_fast_path, udp_checksum_verifies,
    },
    logic::{
        SourceVerdict, addr_eq, check_source, ipv4_mapped, ipv4_rewrite_dscp, ipv6_rewrite_dscp,
        may_learn, token_bucket_admit, tos_with_dscp,
    },
    rtp_stats::StreamStats,
    state,
};

#[map(name = "PINHOLES")]
static PINHOLES: HashMap<PinholeKey, Pinhole> = HashMap::with_max_entries(MAX_PINHOLES, 0);

#[map(name = "PINHOLE_STATS")]
static PINHOLE_STATS: PerCpuHashMap<PinholeKey, PinholeStats> =
    PerCpuHashMap::with_max_entries(MAX_PINHOLES, 0);

#[map(name = "LEARNED")]
static LEARNED: HashMap<PinholeKey, LearnedSource> = HashMap::with_max_entries(MAX_PINHOLES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "FORWARDS")]
static FORWARDS: HashMap<PinholeKey, Forward> = HashMap::with_max_entries(MAX_PINHOLES, 0);

#[map(name = "RTP_STATS")]
static RTP_STATS: HashMap<PinholeKey, StreamStats> = HashMap::with_max_entries(MAX_PINHOLES, 0);

#[map(name = "NEXTHOPS")]
static NEXTHOPS: HashMap<PinholeKey, NextHop> = HashMap::with_max_entries(MAX_PINHOLES, 0);

/// Stamped and checked by userspace only (schema guard for pinned maps).
#[map(name = "META")]
static META: Array<Meta> = Array::with_max_entries(1, 0);

const VLAN_HLEN: usize = 4;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// Extension headers followed before a chain is declared malformed. Real media carries none.
const MAX_IPV6_EXT_HEADERS: usize = 4;

#[inline(always)]
fn count(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *p += 1 };
    }
}

/// The media port range, read per packet so the loader can change it without reloading.
#[inline(always)]
fn port_range() -> (u16, u16) {
    match CONFIG.get(0) {
        Some(c) => (c.port_min, c.port_max),
        None => (
            rtpedge_common::DEFAULT_PORT_MIN,
            rtpedge_common::DEFAULT_PORT_MAX,
        ),
    }
}

/// A UDP packet to the media range, with what the verdict needs.
struct Media {
    l3_off: usize,
    l4_off: usize,
    v4: bool,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
}

enum Parsed {
    Media(Media),
    Pass(Counter),
    Drop(Counter),
}

#[xdp]
pub fn xdp_edge(ctx: XdpContext) -> u32 {
    match parse(&ctx) {
        Parsed::Media(m) => handle_media(&ctx, &m),
        Parsed::Pass(c) => {
            count(c);
            xdp_action::XDP_PASS
        }
        Parsed::Drop(c) => {
            count(c);
            xdp_action::XDP_DROP
        }
    }
}

#[inline(always)]
fn parse(ctx: &XdpContext) -> Parsed {
    let Some(eth_type) = read::<[u8; 2]>(ctx, 12) else {
        return Parsed::Pass(Counter::Unparsed);
    };
    let mut l3_off = ETH_HLEN;
    let mut eth_type = u16::from_be_bytes(eth_type);
    if eth_type == ETH_P_8021Q || eth_type == ETH_P_8021AD {
        let Some(inner) = read::<[u8; 2]>(ctx, ETH_HLEN + 2) else {
            return Parsed::Pass(Counter::Unparsed);
        };
        eth_type = u16::from_be_bytes(inner);
        l3_off += VLAN_HLEN;
    }
    match eth_type {
        ETH_P_IP => parse_ipv4(ctx, l3_off),
        ETH_P_IPV6 => parse_ipv6(ctx, l3_off),
        _ => Parsed::Pass(Counter::NotMedia),
    }
}

#[inline(always)]
fn in_range(port: u16) -> bool {
    let (lo, hi) = port_range();
    port >= lo && port <= hi
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, off: usize) -> Parsed {
    let Some(h) = read::<[u8; 20]>(ctx, off) else {
        return Parsed::Pass(Counter::Unparsed);
    };
    if h[0] >> 4 != 4 || (h[0] & 0x0f) < 5 {
        // Not a valid IPv4 header: the UDP header cannot be located; the stack drops it.
        return Parsed::Pass(Counter::Unparsed);
    }
    if h[9] != IPPROTO_UDP {
        return Parsed::Pass(Counter::NotMedia);
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    if frag & 0x1fff != 0 {
        return Parsed::Pass(Counter::Fragment);
    }
    let more_fragments = frag & 0x2000 != 0;
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let l4 = off + ihl;
    let Some(ports) = read::<[u8; 4]>(ctx, l4) else {
        return Parsed::Pass(Counter::Unparsed);
    };
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    if !in_range(dport) {
        return Parsed::Pass(Counter::NotMedia);
    }
    // From here on the packet is media-range traffic: anything inconsistent is dropped.
    let Some(udp) = read::<[u8; UDP_HLEN]>(ctx, l4) else {
        return Parsed::Drop(Counter::Malformed);
    };
    let tot_len = u16::from_be_bytes([h[2], h[3]]) as usize;
    let pkt_len = ctx.data_end() - ctx.data();
    if tot_len < ihl + UDP_HLEN || off + tot_len > pkt_len {
        return Parsed::Drop(Counter::Malformed);
    }
    let udp_len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    // A first fragment carries only part of the datagram its UDP length describes.
    if udp_len < UDP_HLEN || (!more_fragments && udp_len > tot_len - ihl) {
        return Parsed::Drop(Counter::Malformed);
    }
    Parsed::Media(Media {
        l3_off: off,
        l4_off: l4,
        v4: true,
        src: ipv4_mapped([h[12], h[13], h[14], h[15]]),
        dst: ipv4_mapped([h[16], h[17], h[18], h[19]]),
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport,
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize) -> Parsed {
    let Some(h) = read::<[u8; IPV6_HLEN]>(ctx, off) else {
        return Parsed::Pass(Counter::Unparsed);
    };
    if h[0] >> 4 != 6 {
        return Parsed::Pass(Counter::Unparsed);
    }
    let mut next = h[6];
    let mut l4 = off + IPV6_HLEN;
    let mut found_udp = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS + 1 {
        match next {
            IPPROTO_UDP => {
                found_udp = true;
                break;
            }
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let Some(e) = read::<[u8; 2]>(ctx, l4) else {
                    return Parsed::Pass(Counter::Unparsed);
                };
                next = e[0];
                l4 += (e[1] as usize + 1) * 8;
            }
            // Fragment header: 8 bytes; only the first fragment carries the UDP header.
            44 => {
                let Some(e) = read::<[u8; 4]>(ctx, l4) else {
                    return Parsed::Pass(Counter::Unparsed);
                };
                if u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0 {
                    return Parsed::Pass(Counter::Fragment);
                }
                next = e[0];
                l4 += 8;
            }
            // TCP, ICMPv6, ESP, ...: not governed by the media firewall.
            _ => return Parsed::Pass(Counter::NotMedia),
        }
    }
    if !found_udp {
        // A chain longer than any real UDP packet carries: we cannot tell where it goes.
        return Parsed::Drop(Counter::Malformed);
    }
    let Some(ports) = read::<[u8; 4]>(ctx, l4) else {
        return Parsed::Pass(Counter::Unparsed);
    };
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    if !in_range(dport) {
        return Parsed::Pass(Counter::NotMedia);
    }
    let Some(udp) = read::<[u8; UDP_HLEN]>(ctx, l4) else {
        return Parsed::Drop(Counter::Malformed);
    };
    let payload_len = u16::from_be_bytes([h[4], h[5]]) as usize;
    let pkt_len = ctx.data_end() - ctx.data();
    let l3_end = off + IPV6_HLEN + payload_len;
    let udp_len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    if l3_end > pkt_len || l4 + UDP_HLEN > l3_end || udp_len < UDP_HLEN || l4 + udp_len > l3_end {
        return Parsed::Drop(Counter::Malformed);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    dst.copy_from_slice(&h[24..40]);
    Parsed::Media(Media {
        l3_off: off,
        l4_off: l4,
        v4: false,
        src,
        dst,
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport,
    })
}

#[inline(always)]
fn handle_media(ctx: &XdpContext, m: &Media) -> u32 {
    let key = PinholeKey {
        addr: m.dst,
        port: m.dport,
        _pad: 0,
    };
    // SAFETY: the value is only read; the daemon replaces entries atomically.
    let Some(ph) = (unsafe { PINHOLES.get(key) }) else {
        count(Counter::NoPinhole);
        return xdp_action::XDP_DROP;
    };
    let stats = PINHOLE_STATS.get_ptr_mut(key);
    if ph.state != state::OPEN {
        if let Some(s) = stats {
            // SAFETY: per-CPU value.
            unsafe { (*s).dropped_closed += 1 };
        }
        count(Counter::Closed);
        return xdp_action::XDP_DROP;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let allowed = match check_source(ph, &m.src, m.sport) {
        SourceVerdict::Allowed => true,
        SourceVerdict::Denied => false,
        SourceVerdict::Learn => learn(&key, ph, m, now),
    };
    if !allowed {
        if let Some(s) = stats {
            unsafe { (*s).dropped_wrong_source += 1 };
        }
        count(Counter::WrongSource);
        return xdp_action::XDP_DROP;
    }
    if ph.rate_limited()
        && let Some(s) = stats
    {
        // SAFETY: per-CPU value, so the bucket state is only touched by this CPU.
        let admitted = unsafe {
            token_bucket_admit(
                &mut (*s).tokens,
                &mut (*s).tokens_at_ns,
                ph.rate_pps,
                ph.burst,
                now,
            )
        };
        if !admitted {
            unsafe { (*s).dropped_rate_limited += 1 };
            count(Counter::RateLimited);
            return xdp_action::XDP_DROP;
        }
    }
    let len = (ctx.data_end() - ctx.data()) as u64;
    // SAFETY: read-only access to a map value.
    let fwd = unsafe { FORWARDS.get(key) };
    let rtp = match fwd {
        Some(f) => {
            remember_next_hop(ctx, &key);
            forward(ctx, m, f)
        }
        None => None,
    };
    let forwarded = rtp.is_some();
    if !forwarded {
        if fwd.is_some() {
            count(Counter::ForwardFallback);
        }
        if ph.dscp != DSCP_NONE {
            rewrite_dscp(ctx, m, ph.dscp);
            count(Counter::DscpMarked);
        }
    }
    if let Some(s) = stats {
        unsafe {
            (*s).packets += 1;
            (*s).bytes += len;
            (*s).last_seen_ns = now;
            if forwarded {
                (*s).fwd_packets += 1;
                (*s).fwd_bytes += len;
            }
        }
    }
    count(Counter::Passed);
    if let (Some((r, payload_len)), Some(f)) = (rtp, fwd) {
        // The bridge's statistics of this stream, continued in the kernel (created by the
        // daemon with the entry, which knows the clock rate).
        if let Some(st) = RTP_STATS.get_ptr_mut(key) {
            // SAFETY: the value outlives this program run; a stream is received on one CPU at
            // a time (one receive queue per flow), so the updates do not race in practice and
            // a rare race only skews statistics.
            unsafe { (*st).on_packet(r.seq, r.timestamp, r.ssrc, now, payload_len) };
        }
        // What the host would have sent from the spliced leg: counted on its pinhole, as
        // tc_egress counts the bridge's packets.
        if let Some(s) = PINHOLE_STATS.get_ptr_mut(f.via_key()) {
            // SAFETY: per-CPU value.
            unsafe {
                (*s).tx_packets += 1;
                (*s).tx_bytes += len;
            }
        }
        count(Counter::Forwarded);
        return xdp_action::XDP_TX;
    }
    xdp_action::XDP_PASS
}

/// Records how this packet (which passed the pinhole) reached us, so the other direction of
/// the splice can answer through the same next hop. Written only when it changed: the entry
/// stays read-mostly across CPUs.
#[inline(always)]
fn remember_next_hop(ctx: &XdpContext, key: &PinholeKey) {
    let Some(eth) = read::<[u8; 12]>(ctx, 0) else {
        return;
    };
    let mut hop = NextHop {
        remote_mac: [0; 6],
        local_mac: [0; 6],
        ifindex: ctx.ingress_ifindex() as u32,
    };
    hop.remote_mac.copy_from_slice(&eth[6..12]);
    hop.local_mac.copy_from_slice(&eth[0..6]);
    // SAFETY: read-only access to a map value.
    if let Some(known) = unsafe { NEXTHOPS.get(key) }
        && *known == hop
    {
        return;
    }
    // A full table only costs the fast path (the stack still forwards): ignore the error.
    let _ = NEXTHOPS.insert(key, hop, 0);
}

/// The fast path: sends the packet out of the interface it came in on, from the spliced leg's
/// address and port to its remote, through the next hop that remote's own media came from.
/// Only valid RTP is forwarded, by the bridge's rules (anything else, RTCP included, goes to
/// the bridge, which counts and drops what is invalid). Returns the RTP fields and the UDP
/// payload length, or `None`, with the packet untouched, whenever the stack (and so the
/// bridge) must handle it instead.
#[inline(always)]
fn forward(ctx: &XdpContext, m: &Media, fwd: &Forward) -> Option<(RtpFields, usize)> {
    // Tagged frames would need the VLAN device's path; the stack handles them.
    if m.l3_off != ETH_HLEN || !family_matches(fwd, m.v4) {
        return None;
    }
    let udp_hdr = read::<[u8; UDP_HLEN]>(ctx, m.l4_off)?;
    let udp_len = u16::from_be_bytes([udp_hdr[4], udp_hdr[5]]) as usize;
    // The whole datagram must be here (not a first fragment), and media-sized: the bound also
    // keeps the packet offsets below the verifier's limit. Two plain comparisons, not
    // `RangeInclusive::contains`: LLVM turns that into one unsigned subtract-and-compare from
    // which the verifier cannot learn the upper bound.
    #[allow(clippy::manual_range_contains)]
    if udp_len < UDP_HLEN + 12 || udp_len > MAX_FAST_PATH_UDP_LEN {
        return None;
    }
    let payload = m.l4_off + UDP_HLEN;
    let len = udp_len - UDP_HLEN;
    if payload + len > ctx.data_end() - ctx.data() {
        return None;
    }
    let fixed = read::<[u8; 12]>(ctx, payload)?;
    let rtp = rtp_for_fast_path(&fixed, len, fwd.flags & FORWARD_CHECK_PADDING != 0, |off| {
        read::<[u8; 4]>(ctx, payload + (off & 0x7ff))
    })?;
    // The rewrite updates the checksum incrementally: only a complete one stays right. A
    // partial one (a local sender's checksum offload) goes to the stack, which completes it.
    if !udp_checksum_verifies(&m.src, &m.dst, m.v4, &udp_hdr, udp_len, |off| {
        read::<[u8; 4]>(ctx, m.l4_off + (off & 0x7ff))
    }) {
        return None;
    }
    let out = fwd.via_key();
    // SAFETY: read-only access to a map value.
    // The other side has not sent anything yet if there is no entry.
    let hop = unsafe { NEXTHOPS.get(out) }?;
    if hop.ifindex != ctx.ingress_ifindex() as u32 {
        return None;
    }
    let eth = ptr_at::<[u8; 12]>(ctx, 0)?;
    let udp = ptr_at::<[u8; UDP_HLEN]>(ctx, m.l4_off)?;
    if m.v4 {
        let ip = ptr_at::<[u8; 20]>(ctx, m.l3_off)?;
        // SAFETY: all pointers were bounds checked by ptr_at.
        unsafe { ipv4_forward(&mut *ip, &mut *udp, fwd) };
    } else {
        let ip = ptr_at::<[u8; IPV6_HLEN]>(ctx, m.l3_off)?;
        unsafe { ipv6_forward(&mut *ip, &mut *udp, fwd) };
    }
    let mut macs = [0u8; 12];
    macs[0..6].copy_from_slice(&hop.remote_mac);
    macs[6..12].copy_from_slice(&hop.local_mac);
    // SAFETY: bounds checked above.
    unsafe { *eth = macs };
    Some((rtp, len))
}

/// The learning latch: the first admissible source wins (`BPF_NOEXIST` makes the insert
/// atomic across CPUs), and every later packet must come from exactly that source.
#[inline(always)]
fn learn(key: &PinholeKey, ph: &Pinhole, m: &Media, now: u64) -> bool {
    // SAFETY: read-only access to a map value.
    if let Some(l) = unsafe { LEARNED.get(key) } {
        return l.port == m.sport && addr_eq(&l.addr, &m.src);
    }
    if !may_learn(ph, &m.src, now) {
        return false;
    }
    let latched = LearnedSource {
        addr: m.src,
        port: m.sport,
        _pad: [0; 6],
        learned_at_ns: now,
    };
    if LEARNED.insert(key, latched, BPF_NOEXIST as u64).is_ok() {
        count(Counter::Learned);
        return true;
    }
    // Another CPU latched first: obey its choice.
    match unsafe { LEARNED.get(key) } {
        Some(l) => l.port == m.sport && addr_eq(&l.addr, &m.src),
        None => false,
    }
}

#[inline(always)]
fn rewrite_dscp(ctx: &XdpContext, m: &Media, dscp: u8) {
    if m.v4 {
        let Some(h) = ptr_at::<[u8; 12]>(ctx, m.l3_off) else {
            return;
        };
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            if let Some((w, c)) = ipv4_rewrite_dscp([(*h)[0], (*h)[1]], [(*h)[10], (*h)[11]], dscp)
            {
                (*h)[1] = w[1];
                (*h)[10] = c[0];
                (*h)[11] = c[1];
            }
        }
    } else {
        let Some(h) = ptr_at::<[u8; 4]>(ctx, m.l3_off) else {
            return;
        };
        unsafe {
            if let Some(w) = ipv6_rewrite_dscp(*h, dscp) {
                *h = w;
            }
        }
    }
}

#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    // Marking is best effort: a packet the program cannot parse leaves unchanged.
    let _ = try_tc_egress(&ctx);
    TC_ACT_OK
}

#[inline(always)]
fn try_tc_egress(ctx: &TcContext) -> Result<(), i64> {
    let mut off = ETH_HLEN;
    let mut eth_type = u16::from_be_bytes(ctx.load::<[u8; 2]>(12)?);
    if eth_type == ETH_P_8021Q || eth_type == ETH_P_8021AD {
        eth_type = u16::from_be_bytes(ctx.load::<[u8; 2]>(ETH_HLEN + 2)?);
        off += VLAN_HLEN;
    }
    let (key, v4) = match eth_type {
        ETH_P_IP => {
            let h = ctx.load::<[u8; 20]>(off)?;
            let frag = u16::from_be_bytes([h[6], h[7]]);
            if h[9] != IPPROTO_UDP || frag & 0x1fff != 0 || (h[0] & 0x0f) < 5 {
                return Ok(());
            }
            let l4 = off + ((h[0] & 0x0f) as usize) * 4;
            let sport = u16::from_be_bytes(ctx.load::<[u8; 2]>(l4)?);
            let key = PinholeKey {
                addr: ipv4_mapped([h[12], h[13], h[14], h[15]]),
                port: sport,
                _pad: 0,
            };
            (key, true)
        }
        ETH_P_IPV6 => {
            let h = ctx.load::<[u8; IPV6_HLEN]>(off)?;
            if h[6] != IPPROTO_UDP {
                return Ok(());
            }
            let sport = u16::from_be_bytes(ctx.load::<[u8; 2]>(off + IPV6_HLEN)?);
            let mut addr = [0u8; 16];
            addr.copy_from_slice(&h[8..24]);
            (
                PinholeKey {
                    addr,
                    port: sport,
                    _pad: 0,
                },
                false,
            )
        }
        _ => return Ok(()),
    };
    if !in_range(key.port) {
        return Ok(());
    }
    // SAFETY: read-only access to a map value.
    let Some(ph) = (unsafe { PINHOLES.get(key) }) else {
        return Ok(());
    };
    if ph.state != state::OPEN {
        return Ok(());
    }
    if let Some(s) = PINHOLE_STATS.get_ptr_mut(key) {
        // SAFETY: per-CPU value.
        unsafe {
            (*s).tx_packets += 1;
            (*s).tx_bytes += ctx.len() as u64;
        }
    }
    if ph.dscp == DSCP_NONE {
        return Ok(());
    }
    if v4 {
        let word: [u8; 2] = ctx.load(off)?;
        let new_tos = tos_with_dscp(word[1], ph.dscp);
        if new_tos != word[1] {
            let old = u16::from_ne_bytes(word) as u64;
            let new = u16::from_ne_bytes([word[0], new_tos]) as u64;
            ctx.l3_csum_replace(off + 10, old, new, 2)?;
            ctx.store(off + 1, &new_tos, 0)?;
        }
    } else {
        let word: [u8; 4] = ctx.load(off)?;
        if let Some(w) = ipv6_rewrite_dscp(word, ph.dscp) {
            ctx.store(off, &w, 0)?;
        }
    }
    count(Counter::EgressMarked);
    Ok(())
}

/// The shared types' layout as this (BPF) compilation sees it; compared with the host's by the
/// loader's layout test. Lives in a section the loader ignores.
#[unsafe(no_mangle)]
#[used]
#[unsafe(link_section = ".rtpedge.layout")]
static RTPEDGE_LAYOUT: [u32; rtpedge_common::LAYOUT.len()] = rtpedge_common::LAYOUT;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
