//! Receive statistics of one RTP stream (RFC 3550), shared by the bridge (per leg) and the XDP
//! fast path (per forwarded pinhole), so both report loss and jitter by the same rules.
//!
//! This module owns: packets and bytes, sequence validation with probation (A.1), extended
//! highest sequence number, expected, received and lost packets (A.3), reordering and
//! duplicates, and the interarrival jitter estimate (A.8). It is sans-IO: the caller passes each
//! packet's arrival time from a monotonic nanosecond clock. Every update is O(1),
//! allocation-free, integer-only, without division by a variable and without 128-bit
//! arithmetic, so the BPF program runs the same code on a map value: the type is `#[repr(C)]`
//! with explicit padding, like every shared map type.
//!
//! Deliberate differences from the RFC's sample code, all documented on [`StreamStats`]:
//! the packets that end probation (or prove a restart) are counted in the sequence space instead
//! of being left out, and expected/received/lost stay cumulative across sequence restarts and SSRC
//! changes (the RFC keeps one source's numbers; rtpedge accounts for a leg).

use core::time::Duration;

/// RFC 3550 A.1: a jump forward of less than this many is accepted as loss.
const MAX_DROPOUT: u16 = 3000;
/// RFC 3550 A.1: a packet at most this many behind the highest is late, not a restart.
const MAX_MISORDER: u16 = 100;
/// RFC 3550 A.1: sequential packets needed before a new source is believed.
const MIN_SEQUENTIAL: u8 = 2;
const SEQ_MOD: u64 = 1 << 16;
/// Larger than any `u16`, so no sequence number matches it (the RFC's `RTP_SEQ_MOD + 1`).
const NO_BAD_SEQ: u32 = (1 << 16) + 1;
/// The duplicate-detection window: bit `k` is set if `max_seq - k` arrived. Wider than
/// `MAX_MISORDER`, so every late packet the RFC accepts can be checked.
const WINDOW_BITS: u16 = 128;

const HAS_SSRC: u8 = 1;
const HAS_ARRIVAL: u8 = 2;
const HAS_TRANSIT: u8 = 4;

/// Receive statistics of one RTP stream (one SSRC) as in RFC 3550 A.1 (sequence validation with
/// probation, extended highest sequence, cycles, expected/received/lost), A.3 (loss), A.8
/// (interarrival jitter).
///
/// Semantics, where the RFC leaves room:
/// - [`packets`](Self::packets) and [`bytes`](Self::bytes) count every packet passed in;
///   [`received`](Self::received) counts the packets the sequence validation accepted (so packets
///   in probation, or after a jump that is not confirmed, are in `packets` but not in
///   `received`), duplicates included, as in A.1; `lost = expected - received`, negative when
///   duplicates outnumber losses (A.3).
/// - A new source must send `MIN_SEQUENTIAL` (2) sequential packets (A.1 probation). The RFC
///   starts counting at the last of them; here the sequence space starts at the first, so that a
///   loss-free stream of `n` packets reports `expected == n`, not `n - 1`. Likewise a restart
///   confirmed by two sequential packets after a large jump counts both.
/// - Expected and received are cumulative: a sequence restart or an SSRC change folds the
///   numbers so far into running totals and starts a new sequence space (`ssrc_changes` and
///   `sequence_restarts` count those).
/// - Jitter (A.8) is per source: an SSRC change resets it, and a sequence restart (the source
///   restarted, its timestamps likely jumped) drops the transit reference so that the jump is not
///   taken as jitter. Packets rejected by the sequence validation do not update it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStats {
    pub(crate) clock_rate: u32,
    pub(crate) ssrc: u32,
    pub(crate) bad_seq: u32,
    pub(crate) ssrc_changes: u32,
    pub(crate) sequence_restarts: u32,
    /// Transit time of the previous packet, in timestamp units (mod 2^32), if `HAS_TRANSIT`.
    pub(crate) last_transit: u32,
    pub(crate) max_seq: u16,
    /// Sequential packets still needed (0 once the source is validated).
    pub(crate) probation: u8,
    /// `HAS_SSRC`, `HAS_ARRIVAL`, `HAS_TRANSIT`.
    pub(crate) flags: u8,
    pub(crate) _pad: u32,
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
    pub(crate) last_arrival_ns: u64,
    /// `max_seq` extended with the cycle count, offset by 2^16 so that a base one below a first
    /// sequence number of 0 stays representable.
    pub(crate) ext_max: u64,
    pub(crate) ext_base: u64,
    pub(crate) received: u64,
    /// Bit `k`: `max_seq - k` arrived (`k < WINDOW_BITS`); low word first.
    pub(crate) window: [u64; 2],
    // Totals of the sequence spaces that ended.
    pub(crate) prior_expected: u64,
    pub(crate) prior_received: u64,
    pub(crate) reordered: u64,
    pub(crate) duplicates: u64,
    /// The A.8 estimate in timestamp units with 4 fractional bits (the RFC's integer code).
    pub(crate) jitter_q4: u64,
}

/// What the sequence validation made of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeqVerdict {
    /// Counted in the current sequence space.
    Counted,
    /// In probation: not counted yet.
    Probation,
    /// Confirmed a restart and counted in a new sequence space.
    Restarted,
    /// A large jump not (yet) confirmed: not counted.
    Jump,
}

/// `w << n` for a 128-bit window held as two words, `1 <= n < 128`.
#[inline(always)]
fn window_shl(w: [u64; 2], n: u16) -> [u64; 2] {
    if n >= 64 {
        [0, w[0] << (n - 64)]
    } else {
        [w[0] << n, (w[1] << n) | (w[0] >> (64 - n))]
    }
}

/// Bit `k` (`k < 128`) of the window.
#[inline(always)]
fn window_bit(w: [u64; 2], k: u16) -> bool {
    if k >= 64 {
        (w[1] >> (k - 64)) & 1 != 0
    } else {
        (w[0] >> k) & 1 != 0
    }
}

#[inline(always)]
fn window_set(w: &mut [u64; 2], k: u16) {
    if k >= 64 {
        w[1] |= 1 << (k - 64);
    } else {
        w[0] |= 1 << k;
    }
}

impl StreamStats {
    /// Statistics for a stream with RTP clock rate `clock_rate` (8000 for G.711, 48000 for Opus),
    /// which only the jitter needs; 0 disables the jitter estimate.
    pub const fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate,
            ssrc: 0,
            bad_seq: NO_BAD_SEQ,
            ssrc_changes: 0,
            sequence_restarts: 0,
            last_transit: 0,
            max_seq: 0,
            probation: MIN_SEQUENTIAL,
            flags: 0,
            _pad: 0,
            packets: 0,
            bytes: 0,
            last_arrival_ns: 0,
            ext_max: 0,
            ext_base: 0,
            received: 0,
            window: [0; 2],
            prior_expected: 0,
            prior_received: 0,
            reordered: 0,
            duplicates: 0,
            jitter_q4: 0,
        }
    }

    /// One valid RTP packet arrived at `arrival_ns` (a monotonic nanosecond clock supplied by the
    /// caller: the module never reads a clock). `bytes` is whatever the caller accounts (the
    /// bridge passes the datagram length).
    #[inline(always)]
    pub fn on_packet(&mut self, seq: u16, rtp_ts: u32, ssrc: u32, arrival_ns: u64, bytes: usize) {
        self.packets += 1;
        self.bytes = self.bytes.saturating_add(bytes as u64);
        self.last_arrival_ns = arrival_ns;
        self.flags |= HAS_ARRIVAL;
        if self.flags & HAS_SSRC == 0 {
            self.new_source(ssrc, seq);
        } else if self.ssrc != ssrc {
            self.ssrc_changes = self.ssrc_changes.saturating_add(1);
            self.new_source(ssrc, seq);
        }
        match self.update_seq(seq) {
            SeqVerdict::Jump => return,
            SeqVerdict::Restarted => self.flags &= !HAS_TRANSIT,
            SeqVerdict::Counted | SeqVerdict::Probation => {}
        }
        self.update_jitter(rtp_ts, arrival_ns);
    }

    /// Packets passed to [`on_packet`](Self::on_packet), whatever the sequence validation made
    /// of them.
    #[inline]
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Bytes passed to [`on_packet`](Self::on_packet).
    #[inline]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The current SSRC (of the last packet).
    #[inline]
    pub fn ssrc(&self) -> Option<u32> {
        (self.flags & HAS_SSRC != 0).then_some(self.ssrc)
    }

    /// Arrival time of the last packet, as passed in (for media timeouts).
    #[inline]
    pub fn last_arrival_ns(&self) -> Option<u64> {
        (self.flags & HAS_ARRIVAL != 0).then_some(self.last_arrival_ns)
    }

    /// Packets expected from the sequence numbers (A.3: extended highest - base + 1), summed over
    /// all sequence spaces.
    #[inline]
    pub fn expected(&self) -> u64 {
        self.prior_expected + self.current_expected()
    }

    /// Packets the sequence validation accepted, duplicates included (A.1), summed over all
    /// sequence spaces.
    #[inline]
    pub fn received(&self) -> u64 {
        self.prior_received + self.received
    }

    /// Cumulative packets lost, `expected - received`; negative with duplicates, as in A.3.
    #[inline]
    pub fn lost(&self) -> i64 {
        (self.expected() as i64).wrapping_sub(self.received() as i64)
    }

    /// Packets that arrived with a sequence number below the highest seen (up to `MAX_MISORDER`
    /// = 100 behind; older ones are treated as a jump), duplicates excluded.
    #[inline]
    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    /// Packets whose sequence number had already arrived, within the last 128 sequence numbers
    /// (older ones are beyond `MAX_MISORDER` and not accepted anyway).
    #[inline]
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// The RFC 3550 A.8 interarrival jitter estimate, in timestamp units.
    #[inline]
    pub fn jitter_rtp_units(&self) -> u32 {
        u32::try_from(self.jitter_q4 >> 4).unwrap_or(u32::MAX)
    }

    /// The same estimate in time, keeping its 4 fractional bits (zero if the clock rate is 0).
    /// Userspace only (128-bit arithmetic).
    pub fn jitter(&self) -> Duration {
        if self.clock_rate == 0 {
            return Duration::ZERO;
        }
        let ns = u128::from(self.jitter_q4) * 1_000_000_000 / (16 * u128::from(self.clock_rate));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Times a new SSRC replaced the previous one (the first SSRC is not a change).
    #[inline]
    pub fn ssrc_changes(&self) -> u32 {
        self.ssrc_changes
    }

    /// Times the sequence numbers restarted within one SSRC (a large jump confirmed by the next
    /// sequential packet, A.1).
    #[inline]
    pub fn sequence_restarts(&self) -> u32 {
        self.sequence_restarts
    }

    /// The extended highest sequence number received, as in an RTCP reception report (cycles in
    /// the upper 16 bits), once the source is validated.
    #[inline]
    pub fn extended_highest_seq(&self) -> Option<u32> {
        if self.probation == 0 {
            Some((self.ext_max - SEQ_MOD) as u32)
        } else {
            None
        }
    }

    /// The RTP clock rate passed to [`new`](Self::new).
    #[inline]
    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    #[inline(always)]
    fn current_expected(&self) -> u64 {
        if self.probation == 0 {
            self.ext_max - self.ext_base + 1
        } else {
            0
        }
    }

    /// Folds the current sequence space into the totals.
    #[inline(always)]
    fn close_sequence_space(&mut self) {
        self.prior_expected += self.current_expected();
        self.prior_received += self.received;
        self.received = 0;
    }

    /// A.1 for a new source: probation, and the jitter starts over.
    #[inline(always)]
    fn new_source(&mut self, ssrc: u32, seq: u16) {
        self.close_sequence_space();
        self.ssrc = ssrc;
        self.flags = (self.flags | HAS_SSRC) & !HAS_TRANSIT;
        self.probation = MIN_SEQUENTIAL;
        self.max_seq = seq.wrapping_sub(1);
        self.bad_seq = NO_BAD_SEQ;
        self.window = [0; 2];
        self.jitter_q4 = 0;
    }

    /// A.1 `init_seq`, with the `n` (1 or 2) sequential packets ending at `seq` counted. The
    /// caller has closed the previous sequence space.
    #[inline(always)]
    fn start_sequence_space(&mut self, seq: u16, n: u8) {
        self.max_seq = seq;
        self.ext_max = SEQ_MOD + u64::from(seq);
        self.ext_base = self.ext_max - u64::from(n - 1);
        self.bad_seq = NO_BAD_SEQ;
        self.received = u64::from(n);
        self.window = [(1u64 << n) - 1, 0];
    }

    /// A.1 `update_seq`, plus reordering and duplicate counts.
    #[inline(always)]
    fn update_seq(&mut self, seq: u16) -> SeqVerdict {
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.start_sequence_space(seq, MIN_SEQUENTIAL);
                    return SeqVerdict::Counted;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return SeqVerdict::Probation;
        }
        let udelta = seq.wrapping_sub(self.max_seq);
        if udelta == 0 {
            // The highest again: A.1's in-order branch counts it (received++), it is a duplicate.
            self.duplicates += 1;
        } else if udelta < MAX_DROPOUT {
            // In order, with a permissible gap; the extended counter carries the wrap.
            self.ext_max += u64::from(udelta);
            self.max_seq = seq;
            self.window = if udelta >= WINDOW_BITS {
                [1, 0]
            } else {
                let mut w = window_shl(self.window, udelta);
                w[0] |= 1;
                w
            };
        } else if udelta <= u16::MAX - MAX_MISORDER + 1 {
            // A very large jump (A.1: udelta <= RTP_SEQ_MOD - MAX_MISORDER): believe it only
            // when the next packet follows it.
            if u32::from(seq) == self.bad_seq {
                self.sequence_restarts = self.sequence_restarts.saturating_add(1);
                self.close_sequence_space();
                self.start_sequence_space(seq, 2);
                return SeqVerdict::Restarted;
            }
            self.bad_seq = u32::from(seq.wrapping_add(1));
            return SeqVerdict::Jump;
        } else {
            // Late by 1..MAX_MISORDER: reordered, or a duplicate if its bit is already set.
            let k = self.max_seq.wrapping_sub(seq);
            if window_bit(self.window, k) {
                self.duplicates += 1;
            } else {
                window_set(&mut self.window, k);
                self.reordered += 1;
            }
        }
        self.received += 1;
        SeqVerdict::Counted
    }

    /// A.8: `J += (|D| - J) / 16`, in the RFC's integer form with `J` scaled by 16.
    #[inline(always)]
    fn update_jitter(&mut self, rtp_ts: u32, arrival_ns: u64) {
        if self.clock_rate == 0 {
            return;
        }
        let transit = self.arrival_rtp_units(arrival_ns).wrapping_sub(rtp_ts);
        let had = self.flags & HAS_TRANSIT != 0;
        let last = self.last_transit;
        self.last_transit = transit;
        self.flags |= HAS_TRANSIT;
        if had {
            // Transit differences are taken mod 2^32 and read as signed, like the RFC's `int`.
            let d = u64::from((transit.wrapping_sub(last) as i32).unsigned_abs());
            self.jitter_q4 = self.jitter_q4 - ((self.jitter_q4 + 8) >> 4) + d;
        }
    }

    /// `arrival_ns` in timestamp units, mod 2^32 (only differences matter): whole seconds times
    /// the rate plus the fraction, so that nothing overflows and no division by a variable runs.
    #[inline(always)]
    fn arrival_rtp_units(&self, arrival_ns: u64) -> u32 {
        let rate = u64::from(self.clock_rate);
        let secs = arrival_ns / 1_000_000_000;
        let frac = arrival_ns % 1_000_000_000;
        // frac < 2^30 and rate < 2^32: the product fits.
        (secs.wrapping_mul(rate) as u32).wrapping_add((frac * rate / 1_000_000_000) as u32)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    const MS: u64 = 1_000_000;
    const SSRC: u32 = 0x1234_5678;

    /// G.711 stream: seq `s` sent at (s - first) × 20 ms with timestamp (s - first) × 160, each
    /// arriving after the same transit (10 ms).
    fn feed(st: &mut StreamStats, seqs: &[u16]) {
        let first = seqs[0];
        for &s in seqs {
            let i = u64::from(s.wrapping_sub(first));
            st.on_packet(s, 1000 + 160 * i as u32, SSRC, 10 * MS + 20 * MS * i, 172);
        }
    }

    #[test]
    fn first_packet() {
        let mut st = StreamStats::new(8000);
        assert_eq!(st.ssrc(), None);
        assert_eq!((st.packets(), st.expected(), st.lost()), (0, 0, 0));
        st.on_packet(100, 0, SSRC, 5 * MS, 172);
        // In probation: counted as a packet, not yet in the sequence space.
        assert_eq!(st.ssrc(), Some(SSRC));
        assert_eq!((st.packets(), st.bytes()), (1, 172));
        assert_eq!((st.expected(), st.received(), st.lost()), (0, 0, 0));
        assert_eq!(st.extended_highest_seq(), None);
        assert_eq!(st.last_arrival_ns(), Some(5 * MS));
        assert_eq!(st.ssrc_changes(), 0);
    }

    #[test]
    fn no_loss() {
        // 10..=14: probation ends at 11 with base 10; highest 14 → expected 14 - 10 + 1 = 5.
        let mut st = StreamStats::new(8000);
        feed(&mut st, &[10, 11, 12, 13, 14]);
        assert_eq!(st.packets(), 5);
        assert_eq!(st.bytes(), 5 * 172);
        assert_eq!((st.expected(), st.received(), st.lost()), (5, 5, 0));
        assert_eq!((st.reordered(), st.duplicates()), (0, 0));
        assert_eq!(st.extended_highest_seq(), Some(14));
    }

    #[test]
    fn one_lost() {
        // 1, 2, 3, 5, 6: expected 6 - 1 + 1 = 6, received 5 → 1 lost.
        let mut st = StreamStats::new(8000);
        feed(&mut st, &[1, 2, 3, 5, 6]);
        assert_eq!((st.expected(), st.received(), st.lost()), (6, 5, 1));
        assert_eq!(st.reordered(), 0);
    }

    #[test]
    fn reordering() {
        // 1, 2, 4, 3, 5: 3 arrives one behind the highest (4) → reordered; expected 5, lost 0.
        let mut st = StreamStats::new(8000);
        feed(&mut st, &[1, 2, 4, 3, 5]);
        assert_eq!((st.expected(), st.received(), st.lost()), (5, 5, 0));
        assert_eq!((st.reordered(), st.duplicates()), (1, 0));
        assert_eq!(st.extended_highest_seq(), Some(5));
    }

    #[test]
    fn wrap_around() {
        // 65534, 65535, 0, 1: base 65534, highest 1 in cycle 1 → extended 65537;
        // expected 65537 - 65534 + 1 = 4.
        let mut st = StreamStats::new(8000);
        feed(&mut st, &[65534, 65535, 0, 1]);
        assert_eq!((st.expected(), st.received(), st.lost()), (4, 4, 0));
        assert_eq!(st.extended_highest_seq(), Some(65537));
        // A loss across the wrap: 65535 → 1 skips 0.
        let mut st = StreamStats::new(8000);
        feed(&mut st, &[65533, 65534, 65535, 1]);
        assert_eq!((st.expected(), st.lost()), (5, 1));
        // Reordered across the wrap: 65535, 0, 2, 1 → 1 is late.
        let mut st = StreamStats::new(8000);
        feed(&mut st, &[65535, 0, 2, 1]);
        assert_eq!((st.expected(), st.lost(), st.reordered()), (4, 0, 1));
        // Probation that starts at 0 (base one below is 65535 of cycle -1 in the RFC's terms).
        let mut st = StreamStats::new(8000);
        feed(&mut st, &[65535, 0]);
        assert_eq!((st.expected(), st.lost()), (2, 0));
        assert_eq!(st.extended_highest_seq(), Some(0));
    }

    #[test]
    fn many_cycles() {
        // 3 × 65536 + 10 packets in order: 3 wraps.
        let mut st = StreamStats::new(8000);
        for i in 0..(3 * 65536 + 10u32) {
            st.on_packet(i as u16, i * 160, SSRC, u64::from(i) * 20 * MS, 10);
        }
        assert_eq!(st.expected(), 3 * 65536 + 10);
        assert_eq!(st.lost(), 0);
        assert_eq!(st.extended_highest_seq(), Some(3 * 65536 + 9));
        assert_eq!(st.jitter_rtp_units(), 0);
    }

    #[test]
    fn duplicates() {
        // 1, 2, 3, 3, 4, 2: the second 3 is the highest again, the second 2 is in the window.
        // A.1 counts both as received: expected 4, received 6 → lost -2 (A.3).
        let mut st = StreamStats::new(8000);
        for s in [1u16, 2, 3, 3, 4, 2] {
            st.on_packet(s, u32::from(s) * 160, SSRC, u64::from(s) * 20 * MS, 100);
        }
        assert_eq!(st.packets(), 6);
        assert_eq!((st.expected(), st.received(), st.lost()), (4, 6, -2));
        assert_eq!((st.duplicates(), st.reordered()), (2, 0));
        // A late packet arriving twice: reordered once, then a duplicate.
        let mut st = StreamStats::new(8000);
        feed(&mut st, &[1, 2, 4]);
        feed(&mut st, &[3, 3]);
        assert_eq!((st.reordered(), st.duplicates(), st.lost()), (1, 1, -1));
    }

    #[test]
    fn dropout_boundary() {
        // A gap of 2999 (udelta 2999 < MAX_DROPOUT) is loss: 1, 2, 3001 → expected 3001, lost 2998.
        let mut st = StreamStats::new(8000);
        feed(&mut st, &[1, 2]);
        st.on_packet(3001, 0, SSRC, 0, 1);
        assert_eq!((st.expected(), st.lost()), (3001, 2998));
        // A jump of 3000 is not believed: not counted, nothing changes.
        let mut st = StreamStats::new(8000);
        feed(&mut st, &[1, 2]);
        st.on_packet(3002, 0, SSRC, 0, 1);
        assert_eq!((st.packets(), st.expected(), st.lost()), (3, 2, 0));
        // 100 behind (udelta = 65436 = RTP_SEQ_MOD - MAX_MISORDER) is a jump, 99 behind is late.
        let mut st = StreamStats::new(8000);
        let seqs: Vec<u16> = (1000..=1200).collect();
        feed(&mut st, &seqs);
        st.on_packet(1100, 0, SSRC, 0, 1);
        assert_eq!(
            (st.reordered(), st.duplicates(), st.received()),
            (0, 0, 201)
        );
        st.on_packet(1101, 0, SSRC, 0, 1);
        assert_eq!((st.duplicates(), st.received()), (1, 202));
    }

    #[test]
    fn large_jump_outlier_is_ignored() {
        // 1..=10, 30000 (not believed), 11, 12: expected 12, lost 0, 13 packets.
        let mut st = StreamStats::new(8000);
        feed(&mut st, &(1..=10).collect::<Vec<_>>());
        st.on_packet(30000, 0, SSRC, 0, 1);
        st.on_packet(11, 0, SSRC, 0, 1);
        st.on_packet(12, 0, SSRC, 0, 1);
        assert_eq!(st.packets(), 13);
        assert_eq!((st.expected(), st.received(), st.lost()), (12, 12, 0));
        assert_eq!(st.sequence_restarts(), 0);
    }

    #[test]
    fn restart_after_two_sequential() {
        // 1..=10, then 20000, 20001, 20002: 20001 confirms the jump (A.1 bad_seq), a new
        // sequence space starts with base 20000. Totals: 10 + 3 expected, 13 received.
        let mut st = StreamStats::new(8000);
        feed(&mut st, &(1..=10).collect::<Vec<_>>());
        st.on_packet(20000, 0, SSRC, 0, 1);
        assert_eq!(st.expected(), 10);
        st.on_packet(20001, 0, SSRC, 0, 1);
        st.on_packet(20002, 0, SSRC, 0, 1);
        assert_eq!(st.sequence_restarts(), 1);
        assert_eq!((st.expected(), st.received(), st.lost()), (13, 13, 0));
        assert_eq!(st.extended_highest_seq(), Some(20002));
        // The old sequence numbers are now a jump themselves.
        st.on_packet(11, 0, SSRC, 0, 1);
        assert_eq!(st.expected(), 13);
    }

    #[test]
    fn probation_restarts_on_gap() {
        // 1 (probation), 5 (not 2: probation again from 5), 6 → validated with base 5.
        let mut st = StreamStats::new(8000);
        feed(&mut st, &[1, 5, 6]);
        assert_eq!(st.packets(), 3);
        assert_eq!((st.expected(), st.received(), st.lost()), (2, 2, 0));
    }

    #[test]
    fn ssrc_change() {
        // A: 1..=5 (expected 5). B: 1000, 1001, 1003 → new probation, base 1000, expected 4,
        // received 3. Totals: expected 9, lost 1.
        let mut st = StreamStats::new(8000);
        feed(&mut st, &[1, 2, 3, 4, 5]);
        for (i, s) in [1000u16, 1001, 1003].into_iter().enumerate() {
            st.on_packet(
                s,
                7 + 160 * i as u32,
                0xB,
                200 * MS + 20 * MS * i as u64,
                100,
            );
        }
        assert_eq!(st.ssrc(), Some(0xB));
        assert_eq!(st.ssrc_changes(), 1);
        assert_eq!(st.packets(), 8);
        assert_eq!((st.expected(), st.received(), st.lost()), (9, 8, 1));
        assert_eq!(st.extended_highest_seq(), Some(1003));
        // Back to A: another change, probation again.
        st.on_packet(6, 0, SSRC, 300 * MS, 1);
        assert_eq!(
            (st.ssrc_changes(), st.ssrc(), st.expected()),
            (2, Some(SSRC), 9)
        );
    }

    #[test]
    fn jitter_constant_transit_is_zero() {
        // Every packet takes 10 ms: D = 0 for each pair, J stays 0.
        let mut st = StreamStats::new(8000);
        feed(&mut st, &(0..500).collect::<Vec<_>>());
        assert_eq!(st.jitter_rtp_units(), 0);
        assert_eq!(st.jitter(), Duration::ZERO);
        // Opus at 48 kHz, 20 ms = 960 units, starting at an arbitrary clock and timestamp.
        let mut st = StreamStats::new(48000);
        for i in 0..500u64 {
            st.on_packet(
                i as u16,
                0xFFFF_0000u32.wrapping_add(960 * i as u32),
                7,
                123_456_789_000 + 20 * MS * i,
                80,
            );
        }
        assert_eq!(st.jitter_rtp_units(), 0);
    }

    #[test]
    fn jitter_alternating_delay() {
        // G.711, 20 ms / 160 units apart; odd packets arrive 10 ms (80 units) late. Each
        // consecutive pair has |D| = 80. RFC 3550 A.8 integer form, J scaled by 16:
        //   J += |D| - ((J + 8) >> 4)
        //   packet 1: J = 0   - ((0   + 8) >> 4) + 80 = 0   - 0  + 80 = 80   → 80 >> 4  = 5
        //   packet 2: J = 80  - ((80  + 8) >> 4) + 80 = 80  - 5  + 80 = 155  → 155 >> 4 = 9
        //   packet 3: J = 155 - ((155 + 8) >> 4) + 80 = 155 - 10 + 80 = 225  → 225 >> 4 = 14
        //   packet 4: J = 225 - ((225 + 8) >> 4) + 80 = 225 - 14 + 80 = 291  → 291 >> 4 = 18
        // (the floating-point form gives 5, 9.69, 14.08, 18.2). In time: 291 / 16 units at
        // 8000 Hz = 291e9 / 128000 ns = 2_273_437.5 ns → 2_273_437 ns.
        let mut st = StreamStats::new(8000);
        let mut got = Vec::new();
        for i in 0..5u64 {
            let late = if i.is_multiple_of(2) { 0 } else { 10 * MS };
            st.on_packet(
                i as u16,
                5000 + 160 * i as u32,
                SSRC,
                1_000 * MS + 20 * MS * i + late,
                172,
            );
            got.push((st.jitter_q4, st.jitter_rtp_units()));
        }
        assert_eq!(got, [(0, 0), (80, 5), (155, 9), (225, 14), (291, 18)]);
        assert_eq!(st.jitter(), Duration::from_nanos(2_273_437));
        // It converges to |D| = 80 units: the fixed point of J - ((J + 8) >> 4) + 80 = J is
        // (J + 8) >> 4 = 80, reached from below at J = 1272 (→ 79 units).
        for i in 5..400u64 {
            let late = if i.is_multiple_of(2) { 0 } else { 10 * MS };
            st.on_packet(
                i as u16,
                5000 + 160 * i as u32,
                SSRC,
                1_000 * MS + 20 * MS * i + late,
                172,
            );
        }
        assert_eq!((st.jitter_q4, st.jitter_rtp_units()), (1272, 79));
    }

    #[test]
    fn jitter_ignores_unconfirmed_jumps_and_restarts() {
        // A jump packet with a wild timestamp does not update J; the restart that follows drops
        // the transit reference, so the new timestamp base is not taken as jitter either.
        let mut st = StreamStats::new(8000);
        feed(&mut st, &(0..50).collect::<Vec<_>>());
        st.on_packet(40000, 0xDEAD_0000, SSRC, 1_010 * MS, 1);
        assert_eq!(st.jitter_rtp_units(), 0);
        st.on_packet(40001, 0xDEAD_00A0, SSRC, 1_030 * MS, 1);
        st.on_packet(40002, 0xDEAD_0140, SSRC, 1_050 * MS, 1);
        assert_eq!(st.sequence_restarts(), 1);
        assert_eq!(st.jitter_rtp_units(), 0);
    }

    #[test]
    fn jitter_resets_on_ssrc_change() {
        let mut st = StreamStats::new(8000);
        for i in 0..5u64 {
            let late = if i.is_multiple_of(2) { 0 } else { 10 * MS };
            st.on_packet(i as u16, 160 * i as u32, SSRC, 20 * MS * i + late, 1);
        }
        assert_eq!(st.jitter_rtp_units(), 18);
        st.on_packet(500, 99, 0xB, 500 * MS, 1);
        assert_eq!(st.jitter_rtp_units(), 0);
    }

    #[test]
    fn zero_clock_rate_disables_jitter() {
        let mut st = StreamStats::new(0);
        for i in 0..5u64 {
            st.on_packet(i as u16, 12345 * i as u32, SSRC, 7 * MS * i, 1);
        }
        assert_eq!((st.jitter_rtp_units(), st.jitter()), (0, Duration::ZERO));
        assert_eq!(st.expected(), 5);
    }

    #[test]
    fn arrival_conversion() {
        let st = StreamStats::new(8000);
        assert_eq!(st.arrival_rtp_units(0), 0);
        assert_eq!(st.arrival_rtp_units(20 * MS), 160);
        assert_eq!(st.arrival_rtp_units(1_000_000_000 + 125_000), 8001);
        assert_eq!(st.arrival_rtp_units(124_999), 0);
        // Near u64::MAX: no overflow, mod 2^32 arithmetic.
        let st = StreamStats::new(u32::MAX);
        let _ = st.arrival_rtp_units(u64::MAX);
    }

    /// xorshift64: deterministic, no dependencies.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    #[test]
    fn random_streams_keep_invariants() {
        // Debug builds trap on overflow: any arithmetic slip would panic here.
        let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
        for round in 0..200 {
            let mut st = StreamStats::new([0, 8000, 48000, 90000, u32::MAX][round % 5]);
            let mut seq = rng.next() as u16;
            let mut ts = rng.next() as u32;
            let mut now = rng.next() >> (round % 64);
            for _ in 0..2000 {
                let r = rng.next();
                // Mostly in order, sometimes loss, reordering, duplicates, jumps, SSRC flips.
                seq = match r % 16 {
                    0 => seq.wrapping_add((r >> 8) as u16),
                    1 => seq.wrapping_sub((r >> 8) as u16 % 120),
                    2 => seq,
                    3 => seq.wrapping_add(2 + (r >> 8) as u16 % 5),
                    _ => seq.wrapping_add(1),
                };
                ts = ts.wrapping_add(if r.is_multiple_of(7) {
                    (r >> 16) as u32
                } else {
                    160
                });
                now = now.wrapping_add((r >> 40) % (100 * MS));
                let ssrc = if r.is_multiple_of(97) {
                    (r >> 32) as u32 % 3
                } else {
                    1
                };
                st.on_packet(seq, ts, ssrc, now, (r >> 50) as usize);
                assert_eq!(st.lost(), st.expected() as i64 - st.received() as i64);
                assert!(st.received() <= st.packets());
                let _ = (
                    st.jitter(),
                    st.jitter_rtp_units(),
                    st.extended_highest_seq(),
                );
            }
        }
    }
}
