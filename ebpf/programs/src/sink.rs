//! `xdp_sink`: bench only. The load generator's in-kernel receive sink, never loaded by the
//! daemon.
//!
//! `rtpedge-load --sink xdp` attaches it to the generator's own interface. For every UDP packet
//! to one of the generator's ports (the `SINK_PORTS` map) that carries the generator's stamp
//! after its RTP header, it accounts for the packet on its stream exactly as the socket
//! receiver would (received once, duplicates, reordering; `rtpedge_common::sink`), records the
//! one-way latency (`bpf_ktime_get_ns()` now minus the stamp's `CLOCK_MONOTONIC` send time)
//! into a log-linear histogram, and drops it: relayed media never costs the generator's core a
//! trip through the stack and a socket. Everything else (ARP, the relay's ng replies, ICMP, any
//! other port) passes.
//!
//! Why a second binary of this crate, not a program in `main.rs` and not a crate of its own:
//! a separate object keeps its maps (4.5 MiB of stream and port tables) out of the object the
//! daemon loads and pins, and the same crate shares the eBPF build (one nightly cargo run from
//! the loader's `build.rs` builds every binary), its toolchain and its clippy run.
//!
//! Per packet: fixed-offset reads, three array lookups, O(1) accounting without loops.
#![no_std]
#![no_main]

mod packet;

use packet::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, IPV6_HLEN, UDP_HLEN, read};

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use rtpedge_common::sink::{
    LATENCY_BUCKETS, SINK_MAX_STREAMS, SINK_PORTS as PORT_ENTRIES, STAMP_LEN, STAMP_MAGIC,
    STAMP_OFFSET, STAMP_SENT_NS, STAMP_SEQ, STAMP_STEP, STAMP_STREAM, SinkConfig, SinkStream,
    SinkTotals, latency_bucket,
};

#[map(name = "SINK_CONFIG")]
static SINK_CONFIG: Array<SinkConfig> = Array::with_max_entries(1, 0);

#[map(name = "SINK_PORTS")]
static SINK_PORTS: Array<u32> = Array::with_max_entries(PORT_ENTRIES, 0);

#[map(name = "SINK_STREAMS")]
static SINK_STREAMS: Array<SinkStream> = Array::with_max_entries(SINK_MAX_STREAMS, 0);

#[map(name = "SINK_LATENCY")]
static SINK_LATENCY: PerCpuArray<u64> = PerCpuArray::with_max_entries(LATENCY_BUCKETS, 0);

#[map(name = "SINK_TOTALS")]
static SINK_TOTALS: PerCpuArray<SinkTotals> = PerCpuArray::with_max_entries(1, 0);

/// The RTP header and the stamp: what the sink reads of the payload.
const HEAD_LEN: usize = STAMP_OFFSET + STAMP_LEN;

#[inline(always)]
fn be32(b: &[u8; HEAD_LEN], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

#[inline(always)]
fn be64(b: &[u8; HEAD_LEN], o: usize) -> u64 {
    (be32(b, o) as u64) << 32 | be32(b, o + 4) as u64
}

#[inline(always)]
fn totals() -> Option<*mut SinkTotals> {
    SINK_TOTALS.get_ptr_mut(0)
}

#[xdp]
pub fn xdp_sink(ctx: XdpContext) -> u32 {
    try_sink(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

/// The UDP header's offset and destination port, for untagged IPv4 (any header length) and
/// IPv6 without extension headers (what the generator sends and receives); `None` for
/// anything else.
#[inline(always)]
fn udp_of(ctx: &XdpContext) -> Option<(usize, u16)> {
    let eth_type = u16::from_be_bytes(read::<[u8; 2]>(ctx, 12)?);
    let l4 = match eth_type {
        ETH_P_IP => {
            let h = read::<[u8; 20]>(ctx, ETH_HLEN)?;
            let frag = u16::from_be_bytes([h[6], h[7]]);
            if h[0] >> 4 != 4 || (h[0] & 0x0f) < 5 || h[9] != IPPROTO_UDP || frag & 0x1fff != 0 {
                return None;
            }
            ETH_HLEN + ((h[0] & 0x0f) as usize) * 4
        }
        ETH_P_IPV6 => {
            let h = read::<[u8; 8]>(ctx, ETH_HLEN)?;
            if h[0] >> 4 != 6 || h[6] != IPPROTO_UDP {
                return None;
            }
            ETH_HLEN + IPV6_HLEN
        }
        _ => return None,
    };
    let udp = read::<[u8; 4]>(ctx, l4)?;
    Some((l4, u16::from_be_bytes([udp[2], udp[3]])))
}

/// `None` means: not the generator's traffic, pass it.
#[inline(always)]
fn try_sink(ctx: &XdpContext) -> Option<u32> {
    let (l4, dport) = udp_of(ctx)?;
    // 1 + the stream expected on this port; 0: not one of the generator's ports.
    let expected = *SINK_PORTS.get(dport as u32)?;
    if expected == 0 {
        return None;
    }
    let t = totals()?;
    let Some(head) = read::<[u8; HEAD_LEN]>(ctx, l4 + UDP_HLEN) else {
        // SAFETY: per-CPU value, only this CPU touches it during this run.
        unsafe { (*t).foreign += 1 };
        return Some(xdp_action::XDP_DROP);
    };
    let s = STAMP_OFFSET;
    if [head[s], head[s + 1], head[s + 2], head[s + 3]] != STAMP_MAGIC {
        unsafe { (*t).foreign += 1 };
        return Some(xdp_action::XDP_DROP);
    }
    let step = be32(&head, s + STAMP_STEP);
    let stream = be32(&head, s + STAMP_STREAM);
    let seq = be64(&head, s + STAMP_SEQ);
    let sent_ns = be64(&head, s + STAMP_SENT_NS);
    // Written by userspace between steps.
    let (current, streams) = SINK_CONFIG.get(0).map_or((0, 0), |c| (c.step, c.streams));
    if step != current {
        unsafe { (*t).stale += 1 };
        return Some(xdp_action::XDP_DROP);
    }
    // The same order of judgements as the socket receiver: stale, foreign, misrouted.
    if stream >= streams || stream >= SINK_MAX_STREAMS {
        unsafe { (*t).foreign += 1 };
        return Some(xdp_action::XDP_DROP);
    }
    if stream + 1 != expected {
        unsafe { (*t).misrouted += 1 };
        return Some(xdp_action::XDP_DROP);
    }
    let now = unsafe { bpf_ktime_get_ns() };
    // The socket receiver records at least 1 ns too.
    let latency = if now > sent_ns { now - sent_ns } else { 1 };
    let Some(st) = SINK_STREAMS.get_ptr_mut(stream) else {
        unsafe { (*t).foreign += 1 };
        return Some(xdp_action::XDP_DROP);
    };
    let len = (ctx.data_end() - ctx.data()) as u64;
    // SAFETY: the value outlives this run. A stream arrives through one receive queue, so on
    // one CPU at a time; a rare race would only skew its counts.
    unsafe { (*st).on_packet(seq, len) };
    if let Some(b) = SINK_LATENCY.get_ptr_mut(latency_bucket(latency)) {
        // SAFETY: per-CPU slot.
        unsafe { *b += 1 };
    }
    unsafe {
        (*t).counted += 1;
        (*t).latency_sum_ns += latency;
        if latency > (*t).latency_max_ns {
            (*t).latency_max_ns = latency;
        }
    }
    Some(xdp_action::XDP_DROP)
}

/// The sink types' layout as this (BPF) compilation sees it; compared with the host's by the
/// sink's layout test.
#[unsafe(no_mangle)]
#[used]
#[unsafe(link_section = ".rtpedge.layout")]
static RTPEDGE_SINK_LAYOUT: [u32; rtpedge_common::sink::SINK_LAYOUT.len()] =
    rtpedge_common::sink::SINK_LAYOUT;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
