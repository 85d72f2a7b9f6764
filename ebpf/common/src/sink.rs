//! Bench only: what the load generator's in-kernel receive sink (`xdp_sink`, in
//! `ebpf/programs/src/sink.rs`) and `rtpedge-load --sink xdp` must agree on. Nothing in the
//! data plane uses this module, and none of its maps is pinned or part of [`crate::SCHEMA_VERSION`].
//!
//! This module owns: the stamp the generator writes after the RTP header (magic and offsets,
//! read by the kernel as well as by the socket receiver), the sink's map names, its map key and
//! value layouts, the per-stream receive accounting the kernel runs on a map value
//! ([`SinkStream::on_packet`]: the same loss, reordering and duplicate semantics as the socket
//! receiver's `StreamRx`), and the latency histogram's bucket function.
//!
//! The latency histogram is log-linear, like HdrHistogram with 5 bits of sub-bucket precision:
//! values below 32 ns have a bucket each; above, every power-of-two range `[2^e, 2^(e+1))` is
//! split into 32 equal sub-buckets, so a bucket is at most 1/32 (3.1 %) of its lower bound
//! wide. 1,024 buckets cover up to 2^36 ns (68.7 s); longer latencies land in the last one.

/// Marks a stamped packet ("RTPL").
pub const STAMP_MAGIC: [u8; 4] = *b"RTPL";
/// Offset of the stamp in the UDP payload: right after the fixed 12-byte RTP header that the
/// generator writes (no CSRCs, no extension), which relays forward unchanged.
pub const STAMP_OFFSET: usize = 12;
/// Bytes of the stamp: magic, step (u32), stream (u32), sequence (u64), send time (u64), all
/// big endian. The send time is `CLOCK_MONOTONIC` in nanoseconds, the clock
/// `bpf_ktime_get_ns()` reads, so the kernel can subtract it from its own arrival time.
pub const STAMP_LEN: usize = 28;
/// Offset of the step id within the stamp.
pub const STAMP_STEP: usize = 4;
/// Offset of the stream id within the stamp.
pub const STAMP_STREAM: usize = 8;
/// Offset of the sequence number within the stamp.
pub const STAMP_SEQ: usize = 12;
/// Offset of the send time within the stamp.
pub const STAMP_SENT_NS: usize = 20;

/// Streams the sink can account for (the generator has one socket, so one port, per stream).
pub const SINK_MAX_STREAMS: u32 = 65_536;
/// Entries of the port map: one per UDP port.
pub const SINK_PORTS: u32 = 65_536;
/// Sub-bucket bits of the latency histogram: 32 sub-buckets per power of two.
pub const LATENCY_SUB_BITS: u32 = 5;
/// Sub-buckets per power of two.
pub const LATENCY_SUB_BUCKETS: u64 = 1 << LATENCY_SUB_BITS;
/// Buckets of the latency histogram (values up to 2^36 ns; larger ones go to the last).
pub const LATENCY_BUCKETS: u32 = 1024;
/// The duplicate-detection window of [`SinkStream`], in sequence numbers: the socket
/// receiver's `account::WINDOW`.
pub const SINK_WINDOW: u64 = 128;

/// The sink's map names in the BPF object.
pub mod map_names {
    /// `ARRAY<SinkConfig>`, one entry: the step being measured. Written by userspace.
    pub const SINK_CONFIG: &str = "SINK_CONFIG";
    /// `ARRAY<u32>`, indexed by destination UDP port: 1 + the stream that must arrive on that
    /// port, 0 for ports that are not the generator's. Written by userspace.
    pub const SINK_PORTS: &str = "SINK_PORTS";
    /// `ARRAY<SinkStream>`, indexed by stream id: the receive accounting of the current step.
    /// Zeroed by userspace before a step, updated by the kernel.
    pub const SINK_STREAMS: &str = "SINK_STREAMS";
    /// `PERCPU_ARRAY<u64>`, [`super::LATENCY_BUCKETS`] entries: one-way latency histogram of
    /// the current step (see [`super::latency_bucket`]).
    pub const SINK_LATENCY: &str = "SINK_LATENCY";
    /// `PERCPU_ARRAY<SinkTotals>`, one entry: what is not per stream.
    pub const SINK_TOTALS: &str = "SINK_TOTALS";
}

/// Program name of the sink in its BPF object.
pub const SINK_PROGRAM: &str = "xdp_sink";

/// The sink's configuration (one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkConfig {
    /// The step being measured: packets stamped with another step (the warm-up is step 0) are
    /// counted as stale and dropped, as the socket receiver does.
    pub step: u32,
    /// Streams of the current call set: a stamp naming a stream at or beyond it is foreign, as
    /// for the socket receiver.
    pub streams: u32,
}

/// [`SinkStream::flags`]: a packet arrived, `highest` is valid.
pub const SINK_HAS_HIGHEST: u32 = 1;

/// One stream's receive accounting in the current step. Same rules as the socket receiver's
/// `StreamRx`: a packet is *received* once (duplicates within the last [`SINK_WINDOW`] sequence
/// numbers are counted apart), *reordered* when it arrives after a higher sequence number, and
/// a packet older than the window counts as received and reordered. Loss is what the sender
/// sent minus `received`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkStream {
    /// Highest sequence number seen (valid with [`SINK_HAS_HIGHEST`]).
    pub highest: u64,
    /// Bit `d` (`d < 128`, low word first): `highest - d` arrived.
    pub window: [u64; 2],
    /// Distinct packets received.
    pub received: u64,
    /// Packets received again within the window.
    pub duplicates: u64,
    /// Packets that arrived after a higher sequence number.
    pub reordered: u64,
    /// Every packet of this stream and step the sink took, duplicates included.
    pub packets: u64,
    /// Their bytes (frames as XDP sees them, from the Ethernet header on).
    pub bytes: u64,
    /// [`SINK_HAS_HIGHEST`].
    pub flags: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
}

#[inline(always)]
fn window_bit(w: &[u64; 2], k: u64) -> bool {
    if k >= 64 {
        (w[1] >> (k - 64)) & 1 != 0
    } else {
        (w[0] >> k) & 1 != 0
    }
}

#[inline(always)]
fn window_set(w: &mut [u64; 2], k: u64) {
    if k >= 64 {
        w[1] |= 1 << (k - 64);
    } else {
        w[0] |= 1 << k;
    }
}

impl SinkStream {
    /// Accounts for one packet with sequence number `seq` and `bytes` bytes. O(1), no loops,
    /// no division: the kernel runs it on the map value.
    #[inline(always)]
    pub fn on_packet(&mut self, seq: u64, bytes: u64) {
        self.packets += 1;
        self.bytes += bytes;
        if self.flags & SINK_HAS_HIGHEST == 0 {
            self.flags |= SINK_HAS_HIGHEST;
            self.highest = seq;
            self.window = [1, 0];
            self.received += 1;
            return;
        }
        let highest = self.highest;
        if seq > highest {
            let shift = seq - highest;
            self.window = if shift >= SINK_WINDOW {
                [0, 0]
            } else if shift >= 64 {
                [0, self.window[0] << (shift - 64)]
            } else {
                // 1 <= shift < 64 here.
                [
                    self.window[0] << shift,
                    (self.window[1] << shift) | (self.window[0] >> (64 - shift)),
                ]
            };
            self.window[0] |= 1;
            self.highest = seq;
            self.received += 1;
            return;
        }
        let age = highest - seq;
        if age >= SINK_WINDOW {
            self.received += 1;
            self.reordered += 1;
        } else if window_bit(&self.window, age) {
            self.duplicates += 1;
        } else {
            window_set(&mut self.window, age);
            self.received += 1;
            self.reordered += 1;
        }
    }
}

/// Per-CPU totals of the sink (one entry); userspace sums the CPUs (and takes the largest
/// `latency_max_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkTotals {
    /// Packets of the current step accounted to their stream.
    pub counted: u64,
    /// Stamped packets of another step (late, or the warm-up), dropped.
    pub stale: u64,
    /// Stamped packets of the current step that arrived on another stream's port (a relay
    /// crossing calls), dropped.
    pub misrouted: u64,
    /// Packets to a generator port without a valid stamp, or of the current step with a stream
    /// id beyond the call set, dropped: the socket receiver would have read and discarded them.
    pub foreign: u64,
    /// Sum of the recorded latencies, ns (exact mean).
    pub latency_sum_ns: u64,
    /// Largest recorded latency, ns (exact maximum).
    pub latency_max_ns: u64,
}

/// Floor of log2 of `v` (`v > 0`) by binary search: six compares and shifts, no loop and no
/// count-leading-zeros instruction, which BPF does not have.
#[inline(always)]
pub fn log2_floor(mut v: u64) -> u32 {
    let mut r = 0;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// The histogram bucket of a latency of `ns` nanoseconds: `ns` itself below 32; else, with
/// `e = floor(log2(ns))`, `32 * (e - 4) + the 5 bits after the leading one`. Always below
/// [`LATENCY_BUCKETS`] (values from 2^36 ns on share the last bucket).
#[inline(always)]
pub fn latency_bucket(ns: u64) -> u32 {
    if ns < LATENCY_SUB_BUCKETS {
        return ns as u32;
    }
    let e = log2_floor(ns);
    let last_e = 4 + LATENCY_BUCKETS / LATENCY_SUB_BUCKETS as u32 - 1;
    if e > last_e {
        return LATENCY_BUCKETS - 1;
    }
    let sub = ((ns >> (e - LATENCY_SUB_BITS)) as u32) & (LATENCY_SUB_BUCKETS as u32 - 1);
    (e - 4) * LATENCY_SUB_BUCKETS as u32 + sub
}

/// The smallest latency (ns) in bucket `b` (`b < LATENCY_BUCKETS`).
pub const fn latency_bucket_low(b: u32) -> u64 {
    let sub = LATENCY_SUB_BUCKETS as u32;
    if b < sub {
        return b as u64;
    }
    let e = b / sub + 4;
    let s = (b % sub) as u64;
    (LATENCY_SUB_BUCKETS + s) << (e - LATENCY_SUB_BITS)
}

/// Width of bucket `b` in nanoseconds.
pub const fn latency_bucket_width(b: u32) -> u64 {
    let sub = LATENCY_SUB_BUCKETS as u32;
    if b < sub {
        return 1;
    }
    1 << (b / sub + 4 - LATENCY_SUB_BITS)
}

/// The value a bucket stands for when percentiles are read back: its midpoint (at most half a
/// bucket, 1.6 %, from any latency in it).
pub const fn latency_bucket_mid(b: u32) -> u64 {
    latency_bucket_low(b) + latency_bucket_width(b) / 2
}

const _: () = assert!(core::mem::size_of::<SinkConfig>() == 8);
const _: () = assert!(core::mem::size_of::<SinkStream>() == 72);
const _: () = assert!(core::mem::align_of::<SinkStream>() == 8);
const _: () = assert!(core::mem::size_of::<SinkTotals>() == 48);

macro_rules! sink_layout {
    ($($ty:ident { $($field:ident),* $(,)? })*) => {
        /// Sizes, alignments and field offsets of the sink's shared types, as computed by
        /// whichever target compiles this crate (compared between the BPF object and the host
        /// by the sink's layout test).
        pub const SINK_LAYOUT: [u32; 0 $(+ 2 $(+ sink_layout!(@one $field))*)*] = [
            $(
                core::mem::size_of::<$ty>() as u32,
                core::mem::align_of::<$ty>() as u32,
                $(core::mem::offset_of!($ty, $field) as u32,)*
            )*
        ];
        /// Names of the entries of [`SINK_LAYOUT`].
        pub const SINK_LAYOUT_NAMES: [&str; SINK_LAYOUT.len()] = [
            $(
                concat!(stringify!($ty), ".size"),
                concat!(stringify!($ty), ".align"),
                $(concat!(stringify!($ty), ".", stringify!($field)),)*
            )*
        ];
    };
    (@one $field:ident) => { 1 };
}

sink_layout! {
    SinkConfig { step, streams }
    SinkStream { highest, window, received, duplicates, reordered, packets, bytes, flags, _pad }
    SinkTotals { counted, stale, misrouted, foreign, latency_sum_ns, latency_max_ns }
}

/// ELF symbol under which the sink's BPF object carries [`SINK_LAYOUT`].
pub const SINK_LAYOUT_SYMBOL: &str = "RTPEDGE_SINK_LAYOUT";

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)], integers only, no implicit padding (size asserts above).
    unsafe impl aya::Pod for super::SinkConfig {}
    unsafe impl aya::Pod for super::SinkStream {}
    unsafe impl aya::Pod for super::SinkTotals {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From scratch, with nothing shared with the code under test: the bucket is the number of
    /// bucket lower bounds at or below `ns`, minus one, where the bounds are 0..32 and, for
    /// every power of two `p >= 32`, `p + k * p / 32` for k in 0..32.
    fn bucket_by_scan(ns: u64) -> u32 {
        let mut bounds: [u64; LATENCY_BUCKETS as usize] = [0; LATENCY_BUCKETS as usize];
        let mut i = 0;
        for v in 0..32u64 {
            bounds[i] = v;
            i += 1;
        }
        let mut p: u64 = 32;
        while i < bounds.len() {
            for k in 0..32 {
                bounds[i] = p + k * (p / 32);
                i += 1;
            }
            p *= 2;
        }
        bounds.iter().filter(|b| **b <= ns).count() as u32 - 1
    }

    #[test]
    fn log2_matches_leading_zeros() {
        for v in (1..5000u64)
            .chain((0..64).map(|s| 1u64 << s))
            .chain([u64::MAX, 3 << 40])
        {
            assert_eq!(log2_floor(v), 63 - v.leading_zeros(), "{v}");
        }
    }

    #[test]
    fn buckets_match_a_from_scratch_computation() {
        let check = |ns: u64| {
            assert_eq!(latency_bucket(ns), bucket_by_scan(ns), "{ns} ns");
        };
        for ns in 0..20_000 {
            check(ns);
        }
        for e in 5..40u32 {
            let p = 1u64 << e;
            for d in [0, 1, p / 64, p / 32 - 1, p / 32, p / 2, p - 1] {
                check(p + d);
                check(p - 1 - d.min(p - 1));
            }
        }
        check(u64::MAX);
        // A pseudo-random sample across the whole range.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            check(x >> (x % 40));
        }
    }

    #[test]
    fn buckets_are_narrow_and_bounds_round_trip() {
        for b in 0..LATENCY_BUCKETS {
            let low = latency_bucket_low(b);
            let w = latency_bucket_width(b);
            assert_eq!(latency_bucket(low), b, "low of {b}");
            assert_eq!(latency_bucket(low + w - 1), b, "high of {b}");
            if b + 1 < LATENCY_BUCKETS {
                assert_eq!(
                    latency_bucket_low(b + 1),
                    low + w,
                    "buckets of {b} are contiguous"
                );
            }
            // Precision: a bucket is at most 1/32 of its lower bound wide.
            if low >= 32 {
                assert!(w * 32 <= low, "bucket {b}: {w} wide at {low}");
            }
            let mid = latency_bucket_mid(b);
            assert!(mid >= low && mid < low + w);
        }
        assert_eq!(latency_bucket(1 << 36), LATENCY_BUCKETS - 1);
        assert_eq!(
            latency_bucket_low(LATENCY_BUCKETS - 1),
            (1 << 36) - (1 << 30)
        );
    }

    fn feed(seqs: &[u64]) -> SinkStream {
        let mut s = SinkStream::default();
        for &q in seqs {
            s.on_packet(q, 100);
        }
        s
    }

    #[test]
    fn stream_accounting_follows_the_socket_receivers_rules() {
        let s = feed(&[0, 1, 2, 4, 5, 6, 8, 9, 7]);
        assert_eq!((s.received, s.reordered, s.duplicates), (9, 1, 0));
        let s = feed(&[0, 1, 2, 2, 1, 3]);
        assert_eq!((s.received, s.duplicates, s.reordered), (4, 2, 0));
        assert_eq!((s.packets, s.bytes), (6, 600));
        let s = feed(&[0, 1, 500, 2, 499]);
        assert_eq!((s.received, s.reordered, s.duplicates), (5, 2, 0));
        let s = feed(&[0, 127, 0]);
        assert_eq!(s.duplicates, 1);
        let s = feed(&[0, 128, 0]);
        assert_eq!((s.duplicates, s.received, s.reordered), (0, 3, 1));
        let s = feed(&[0, 64, 0, 63, 1]);
        assert_eq!((s.duplicates, s.received, s.reordered), (1, 4, 2));
        let s = feed(&[5, 6, 4]);
        assert_eq!((s.received, s.reordered), (3, 1));
    }
}
