//! Everything the rtpedge eBPF programs and their userspace loader must agree on.
//!
//! This crate owns the map names, the map key and value layouts, the counter indices and the
//! small pieces of pure logic that both sides execute (remote-policy matching, the token bucket,
//! DSCP rewriting with its checksum arithmetic). It is `#![no_std]`, allocation-free and free of
//! any kernel or aya-ebpf dependency, so the same code is compiled into the BPF object and unit
//! tested on the host.
//!
//! Layout rules: every map type is `#[repr(C)]`, has explicit padding fields (the kernel compares
//! whole keys byte for byte, so implicit padding would be a latent bug) and a compile-time size
//! check. Changing any layout here means bumping [`SCHEMA_VERSION`]: the loader refuses to reuse
//! pinned maps of another schema.
#![no_std]
#![deny(missing_docs)]

pub mod forward;
pub mod logic;
pub mod rtp_stats;
pub mod sink;

/// Version of the pinned map layout. Bump on any change to a map's key, value, size or meaning.
pub const SCHEMA_VERSION: u32 = 2;

/// Magic stored in the [`Meta`] entry so a stray map of the same name is never mistaken for ours.
pub const META_MAGIC: u32 = 0x5254_5045; // "RTPE"

/// Default first port of the media range (inclusive).
pub const DEFAULT_PORT_MIN: u16 = 30000;
/// Default last port of the media range (inclusive).
pub const DEFAULT_PORT_MAX: u16 = 40000;

/// Capacity of the pinhole table. Preallocated (never LRU): eviction would silently break
/// default-deny, so a full table is an error the daemon sees, not a packet the kernel admits.
pub const MAX_PINHOLES: u32 = 65_536;

/// Map names, as they appear in the BPF object and as pin file names.
pub mod map_names {
    /// `HASH<PinholeKey, Pinhole>`: pinhole configuration, written by the daemon only.
    pub const PINHOLES: &str = "PINHOLES";
    /// `PERCPU_HASH<PinholeKey, PinholeStats>`: per-pinhole counters and token-bucket state.
    pub const PINHOLE_STATS: &str = "PINHOLE_STATS";
    /// `HASH<PinholeKey, LearnedSource>`: the source latched by a `learning` pinhole. Inserted
    /// by the kernel with `BPF_NOEXIST`, so exactly one source wins even under a race.
    pub const LEARNED: &str = "LEARNED";
    /// `PERCPU_ARRAY<u64>`: global per-verdict counters, indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// `ARRAY<Config>` with one entry: the media port range and switches.
    pub const CONFIG: &str = "CONFIG";
    /// `ARRAY<Meta>` with one entry: schema magic and version, written at first load.
    pub const META: &str = "META";
    /// `HASH<PinholeKey, Forward>`: the in-kernel fast path of spliced legs. A packet that
    /// passes the pinhole of its key is rewritten and sent back out by XDP instead of going up
    /// to the bridge. Written by the daemon only.
    pub const FORWARDS: &str = "FORWARDS";
    /// `HASH<PinholeKey, NextHop>`: for pinholes with a forwarding entry, the Ethernet
    /// addresses and interface of the last packet that passed: the way back to its remote.
    /// Written by the kernel only.
    pub const NEXTHOPS: &str = "NEXTHOPS";
    /// `HASH<PinholeKey, StreamStats>`: RFC 3550 receive statistics of the RTP the fast path
    /// forwarded from a pinhole. Created by the daemon with the forwarding entry (it knows the
    /// clock rate), updated by the kernel.
    pub const RTP_STATS: &str = "RTP_STATS";
    /// Every map that is pinned, in the order they are checked and unpinned.
    pub const ALL: [&str; 9] = [
        PINHOLES,
        PINHOLE_STATS,
        LEARNED,
        COUNTERS,
        CONFIG,
        META,
        FORWARDS,
        NEXTHOPS,
        RTP_STATS,
    ];
}

/// Program names in the BPF object.
pub mod program_names {
    /// XDP ingress: default-deny pinhole firewall on the media port range.
    pub const XDP_EDGE: &str = "xdp_edge";
    /// TC egress: DSCP marking of media the host sends.
    pub const TC_EGRESS: &str = "tc_egress";
}

/// Key of a pinhole: the local address and UDP port that media arrives on.
///
/// Addresses are 16 bytes: IPv6 as is, IPv4 as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`),
/// so one table serves both families without ambiguity. The port is in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PinholeKey {
    /// Local (destination) address, IPv6 or IPv4-mapped.
    pub addr: [u8; 16],
    /// Local (destination) UDP port, host byte order.
    pub port: u16,
    /// Explicit padding; always zero.
    pub _pad: u16,
}

/// Remote policy values for [`Pinhole::policy`]. Plain `u8` constants, not a Rust enum: a map
/// value is written by another process and must never be transmuted into an invalid enum.
pub mod policy {
    /// Source address and port must equal the pinhole's remote.
    pub const EXACT: u8 = 0;
    /// Source address must equal the pinhole's remote; any source port.
    pub const ADDRESS: u8 = 1;
    /// The first source seen before the learning deadline is latched and enforced from then on.
    /// If the pinhole's remote address is set (not unspecified), only sources from that address
    /// can be learned.
    pub const LEARNING: u8 = 2;
    /// Any source passes; the userspace bridge does the latching. Only for legs whose remote
    /// may legitimately move (signalled media handover): the bridge's handover probation must
    /// see packets from the new source. An older program treats this value as unknown: deny.
    pub const ANY: u8 = 3;
}

/// Pinhole state values for [`Pinhole::state`].
pub mod state {
    /// Entry kept (counters, learned source) but nothing passes.
    pub const CLOSED: u8 = 0;
    /// Media that satisfies the remote policy passes.
    pub const OPEN: u8 = 1;
}

/// [`Pinhole::dscp`] value meaning "do not rewrite".
pub const DSCP_NONE: u8 = 0xff;
/// Largest valid DSCP code point (6 bits).
pub const DSCP_MAX: u8 = 63;

/// Pinhole configuration. Written by the daemon only; the kernel reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pinhole {
    /// Allowed remote address (IPv6 or IPv4-mapped); unspecified (all zero, or `::ffff:0.0.0.0`)
    /// only with the learning policy, meaning "any address may be learned".
    pub remote_addr: [u8; 16],
    /// Allowed remote port (host order); used by the exact policy only.
    pub remote_port: u16,
    /// One of [`policy`].
    pub policy: u8,
    /// One of [`state`].
    pub state: u8,
    /// DSCP to write into passing packets (and into packets the host sends from this local
    /// address and port), or [`DSCP_NONE`].
    pub dscp: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 3],
    /// Token-bucket rate in packets per second; 0 means unlimited.
    pub rate_pps: u32,
    /// Token-bucket depth in packets (at least 1 when `rate_pps` is set).
    pub burst: u32,
    /// Learning policy: monotonic time (`CLOCK_MONOTONIC`, ns, as `bpf_ktime_get_ns`) after
    /// which no new source is learned. 0 means no deadline.
    pub learn_deadline_ns: u64,
}

impl Pinhole {
    /// True when a rate limit is configured.
    pub const fn rate_limited(&self) -> bool {
        self.rate_pps != 0
    }
}

/// Per-pinhole, per-CPU statistics and token-bucket state. Per-CPU so that the hot path never
/// needs an atomic; userspace sums the CPUs (and takes the maximum of `last_seen_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinholeStats {
    /// Packets passed.
    pub packets: u64,
    /// Bytes passed (whole frames as seen by XDP, from the Ethernet header on).
    pub bytes: u64,
    /// Monotonic time (ns) of the last passed packet on this CPU.
    pub last_seen_ns: u64,
    /// Packets dropped because the pinhole was closed.
    pub dropped_closed: u64,
    /// Packets dropped because the source did not satisfy the remote policy.
    pub dropped_wrong_source: u64,
    /// Packets dropped by the rate limit.
    pub dropped_rate_limited: u64,
    /// Packets the host sent from this pinhole's address and port (TC egress).
    pub tx_packets: u64,
    /// Bytes the host sent from this pinhole's address and port (TC egress, L3 and up).
    pub tx_bytes: u64,
    /// Token bucket: available tokens, in units of 1/[`logic::TOKEN_SCALE`] packet.
    pub tokens: u64,
    /// Token bucket: monotonic time (ns) of the last refill; 0 = bucket not yet initialised.
    pub tokens_at_ns: u64,
    /// Passed packets the fast path forwarded in the kernel (a subset of `packets`).
    pub fwd_packets: u64,
    /// Their bytes (frames as received).
    pub fwd_bytes: u64,
}

/// The source latched by a learning pinhole.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnedSource {
    /// Source address (IPv6 or IPv4-mapped).
    pub addr: [u8; 16],
    /// Source port, host order.
    pub port: u16,
    /// Explicit padding; always zero.
    pub _pad: [u8; 6],
    /// Monotonic time (ns) at which the source was latched.
    pub learned_at_ns: u64,
}

/// An in-kernel forwarding entry: where a packet that passed the pinhole of its key goes
/// instead of up to the bridge. The packet leaves from the spliced leg's local address and port
/// (`src_*`) to that leg's remote (`dst_*`), as the bridge would have sent it, with its payload
/// untouched. Same address family in and out; the program falls back to the stack (and so to
/// the bridge) whenever it cannot forward a packet itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forward {
    /// Source address of the forwarded packet: the spliced leg's local address (IPv6 or
    /// IPv4-mapped).
    pub src_addr: [u8; 16],
    /// Destination: the spliced leg's remote address (IPv6 or IPv4-mapped).
    pub dst_addr: [u8; 16],
    /// Source port (host order): the spliced leg's local port.
    pub src_port: u16,
    /// Destination port (host order): the spliced leg's remote port.
    pub dst_port: u16,
    /// DSCP of the forwarded packet (the spliced leg's marking), or [`DSCP_NONE`] to keep it.
    pub dscp: u8,
    /// Reserved; zero.
    pub flags: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 2],
}

impl Forward {
    /// The pinhole key of the spliced leg the packet leaves from (its local address and port).
    #[inline(always)]
    pub const fn via_key(&self) -> PinholeKey {
        PinholeKey {
            addr: self.src_addr,
            port: self.src_port,
            _pad: 0,
        }
    }
}

/// The way back to a pinhole's remote, as the last packet that passed it came: symmetric RTP
/// at layer 2. Media from the remote arrives from the next hop towards it (the remote itself,
/// or the router in front of it), so answering through that hop needs neither the forwarding
/// sysctl that the kernel's FIB helper insists on nor a copy of the neighbour table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// Source MAC of that packet: the next hop towards the remote.
    pub remote_mac: [u8; 6],
    /// Destination MAC of that packet: this host's address on the interface.
    pub local_mac: [u8; 6],
    /// Interface it arrived on.
    pub ifindex: u32,
}

/// Data-plane configuration (one entry). Written by the loader; read per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// First UDP destination port of the media range (inclusive).
    pub port_min: u16,
    /// Last UDP destination port of the media range (inclusive).
    pub port_max: u16,
    /// Reserved for switches; zero.
    pub flags: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port_min: DEFAULT_PORT_MIN,
            port_max: DEFAULT_PORT_MAX,
            flags: 0,
        }
    }
}

/// Schema stamp (one entry), so the loader can tell our maps from a stale or foreign layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// [`META_MAGIC`].
    pub magic: u32,
    /// [`SCHEMA_VERSION`] of the loader that created the maps.
    pub schema: u32,
}

/// Indices of the global per-verdict counters in the `COUNTERS` map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Media-range packets that passed a pinhole.
    Passed = 0,
    /// Media-range packets with no pinhole for their destination (dropped).
    NoPinhole = 1,
    /// Media-range packets to a closed pinhole (dropped).
    Closed = 2,
    /// Media-range packets whose source failed the remote policy (dropped).
    WrongSource = 3,
    /// Media-range packets over the pinhole's rate limit (dropped).
    RateLimited = 4,
    /// Media-range packets with truncated or inconsistent headers, and IPv6 packets whose
    /// extension-header chain cannot be followed (dropped).
    Malformed = 5,
    /// Passed packets whose DSCP was rewritten.
    DscpMarked = 6,
    /// Packets that are not UDP over IP, or UDP outside the media range (passed untouched).
    NotMedia = 7,
    /// Packets too short to tell whether they are media (passed untouched; the stack drops them).
    Unparsed = 8,
    /// Non-first fragments, which carry no ports (passed: without their first fragment, which is
    /// subject to the pinholes, they never reassemble).
    Fragment = 9,
    /// Sources latched by learning pinholes.
    Learned = 10,
    /// Packets sent by the host from a pinhole's address and port and marked with its DSCP (TC).
    EgressMarked = 11,
    /// Passed packets forwarded in the kernel (XDP_TX) through a [`Forward`] entry.
    Forwarded = 12,
    /// Passed packets with a [`Forward`] entry that went up the stack instead (the spliced
    /// leg's remote has not sent anything yet, or arrives on another interface; not valid RTP,
    /// or RTCP; a UDP checksum that does not verify, e.g. a local sender's partial one; family
    /// mismatch; VLAN): the bridge judges those.
    ForwardFallback = 13,
}

impl Counter {
    /// Number of counters; the size of the `COUNTERS` map.
    pub const COUNT: u32 = 14;
    /// Every counter, in index order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::Passed,
        Counter::NoPinhole,
        Counter::Closed,
        Counter::WrongSource,
        Counter::RateLimited,
        Counter::Malformed,
        Counter::DscpMarked,
        Counter::NotMedia,
        Counter::Unparsed,
        Counter::Fragment,
        Counter::Learned,
        Counter::EgressMarked,
        Counter::Forwarded,
        Counter::ForwardFallback,
    ];

    /// The counter's name as operators see it (`scripts/ebpf status --json`).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Passed => "passed",
            Counter::NoPinhole => "no_pinhole",
            Counter::Closed => "closed",
            Counter::WrongSource => "wrong_source",
            Counter::RateLimited => "rate_limited",
            Counter::Malformed => "malformed",
            Counter::DscpMarked => "dscp_marked",
            Counter::NotMedia => "not_media",
            Counter::Unparsed => "unparsed",
            Counter::Fragment => "fragment",
            Counter::Learned => "learned",
            Counter::EgressMarked => "egress_marked",
            Counter::Forwarded => "forwarded",
            Counter::ForwardFallback => "forward_fallback",
        }
    }
}

/// Name of the ELF symbol (in section [`LAYOUT_SECTION`]) under which the BPF object carries
/// [`LAYOUT`] as computed by the BPF compilation, so a host test can compare both targets.
pub const LAYOUT_SYMBOL: &str = "RTPEDGE_LAYOUT";
/// ELF section of [`LAYOUT_SYMBOL`]; not a map or program section, so the loader ignores it.
pub const LAYOUT_SECTION: &str = ".rtpedge.layout";

use rtp_stats::StreamStats;

macro_rules! layout_table {
    ($($ty:ident { $($field:ident),* $(,)? })*) => {
        /// Sizes, alignments and field offsets of every shared type, in a fixed order, as
        /// computed by whichever target compiles this crate.
        pub const LAYOUT: [u32; layout_table!(@count $($ty { $($field)* })*)] = [
            $(
                core::mem::size_of::<$ty>() as u32,
                core::mem::align_of::<$ty>() as u32,
                $(core::mem::offset_of!($ty, $field) as u32,)*
            )*
        ];
        /// Human-readable names for the entries of [`LAYOUT`] (`Type.size`, `Type.field`).
        pub const LAYOUT_NAMES: [&str; LAYOUT.len()] = [
            $(
                concat!(stringify!($ty), ".size"),
                concat!(stringify!($ty), ".align"),
                $(concat!(stringify!($ty), ".", stringify!($field)),)*
            )*
        ];
    };
    (@count $($ty:ident { $($field:ident)* })*) => { 0 $(+ 2 $(+ layout_table!(@one $field))*)* };
    (@one $field:ident) => { 1 };
}

layout_table! {
    PinholeKey { addr, port, _pad }
    Pinhole { remote_addr, remote_port, policy, state, dscp, _pad, rate_pps, burst, learn_deadline_ns }
    PinholeStats {
        packets, bytes, last_seen_ns, dropped_closed, dropped_wrong_source, dropped_rate_limited,
        tx_packets, tx_bytes, tokens, tokens_at_ns, fwd_packets, fwd_bytes,
    }
    LearnedSource { addr, port, _pad, learned_at_ns }
    Config { port_min, port_max, flags }
    Meta { magic, schema }
    Forward { src_addr, dst_addr, src_port, dst_port, dscp, flags, _pad }
    NextHop { remote_mac, local_mac, ifindex }
    StreamStats {
        clock_rate, ssrc, bad_seq, ssrc_changes, sequence_restarts, last_transit, max_seq,
        probation, flags, _pad, packets, bytes, last_arrival_ns, ext_max, ext_base, received,
        window, prior_expected, prior_received, reordered, duplicates, jitter_q4,
    }
}

// Compile-time layout checks: a change here must be deliberate (and bump SCHEMA_VERSION).
const _: () = assert!(core::mem::size_of::<PinholeKey>() == 20);
const _: () = assert!(core::mem::size_of::<Pinhole>() == 40);
const _: () = assert!(core::mem::align_of::<Pinhole>() == 8);
const _: () = assert!(core::mem::size_of::<PinholeStats>() == 96);
const _: () = assert!(core::mem::size_of::<LearnedSource>() == 32);
const _: () = assert!(core::mem::size_of::<Config>() == 8);
const _: () = assert!(core::mem::size_of::<Meta>() == 8);
const _: () = assert!(core::mem::size_of::<Forward>() == 40);
const _: () = assert!(core::mem::size_of::<NextHop>() == 16);
const _: () = assert!(core::mem::size_of::<StreamStats>() == 136);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], contain only integers and byte arrays, and have no
    // implicit padding (checked by the size asserts above and the layout tests).
    unsafe impl aya::Pod for super::PinholeKey {}
    unsafe impl aya::Pod for super::Pinhole {}
    unsafe impl aya::Pod for super::PinholeStats {}
    unsafe impl aya::Pod for super::LearnedSource {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Meta {}
    unsafe impl aya::Pod for super::Forward {}
    unsafe impl aya::Pod for super::NextHop {}
    unsafe impl aya::Pod for super::rtp_stats::StreamStats {}
}
