//! Per-stream receive accounting: packets received (once each), duplicates, and reordering,
//! from the sequence numbers in the stamps. Loss is what was sent minus what was received.
//!
//! A packet counts as *reordered* when it arrives after a packet with a higher sequence number
//! of the same stream. Duplicates are recognised within the last [`WINDOW`] sequence numbers;
//! an even older packet is counted as received and reordered (it cannot be told from a
//! duplicate without unbounded state, and a relay that duplicates packets that late is broken
//! in more obvious ways).

/// How many recent sequence numbers the duplicate detector remembers.
pub const WINDOW: u64 = 128;

/// One stream's receive state. Fixed size: no allocation per packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamRx {
    /// Distinct packets received.
    pub received: u64,
    /// Packets received again (within the window).
    pub duplicates: u64,
    /// Packets that arrived after a higher sequence number.
    pub reordered: u64,
    /// Highest sequence number seen.
    highest: Option<u64>,
    /// Bit `d` set: `highest - d` was received.
    window: u128,
}

impl StreamRx {
    /// A stream's final counts as another receiver (the XDP sink) accounted them by the same
    /// rules.
    pub fn from_counts(received: u64, duplicates: u64, reordered: u64) -> StreamRx {
        StreamRx {
            received,
            duplicates,
            reordered,
            ..StreamRx::default()
        }
    }

    /// Accounts for one packet with sequence number `seq`.
    pub fn on_packet(&mut self, seq: u64) {
        let Some(highest) = self.highest else {
            self.highest = Some(seq);
            self.window = 1;
            self.received = 1;
            return;
        };
        if seq > highest {
            let shift = seq - highest;
            self.window = if shift >= WINDOW {
                0
            } else {
                self.window << shift
            };
            self.window |= 1;
            self.highest = Some(seq);
            self.received += 1;
            return;
        }
        let age = highest - seq;
        if age >= WINDOW {
            self.received += 1;
            self.reordered += 1;
        } else if self.window & (1u128 << age) != 0 {
            self.duplicates += 1;
        } else {
            self.window |= 1u128 << age;
            self.received += 1;
            self.reordered += 1;
        }
    }

    /// Packets of `sent` that never arrived.
    pub fn lost(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.received)
    }
}

/// Totals over all streams of a step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Packets sent.
    pub sent: u64,
    /// Distinct packets received.
    pub received: u64,
    /// Packets sent and never received.
    pub lost: u64,
    /// Packets received out of order.
    pub reordered: u64,
    /// Packets received twice.
    pub duplicates: u64,
    /// Streams that lost at least one packet.
    pub streams_with_loss: u64,
    /// Streams that received nothing at all although something was sent.
    pub dead_streams: u64,
}

impl Totals {
    /// Adds up the streams; `sent[i]` is what stream `i` sent.
    pub fn of(sent: &[u64], rx: &[StreamRx]) -> Totals {
        let mut t = Totals::default();
        for (i, &s) in sent.iter().enumerate() {
            let r = rx.get(i).copied().unwrap_or_default();
            let lost = r.lost(s);
            t.sent += s;
            t.received += r.received.min(s);
            t.lost += lost;
            t.reordered += r.reordered;
            t.duplicates += r.duplicates;
            t.streams_with_loss += u64::from(lost > 0);
            t.dead_streams += u64::from(s > 0 && r.received == 0);
        }
        t
    }

    /// Lost packets in percent of those sent (0 when nothing was sent).
    pub fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.lost as f64 * 100.0 / self.sent as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(seqs: impl IntoIterator<Item = u64>) -> StreamRx {
        let mut s = StreamRx::default();
        for q in seqs {
            s.on_packet(q);
        }
        s
    }

    #[test]
    fn in_order_without_loss() {
        let s = feed(0..1000);
        assert_eq!((s.received, s.reordered, s.duplicates), (1000, 0, 0));
        assert_eq!(s.lost(1000), 0);
    }

    #[test]
    fn gaps_are_loss_and_late_arrivals_are_reordering() {
        // 0..10 without 3 and 7; 7 arrives late, 3 never.
        let s = feed([0, 1, 2, 4, 5, 6, 8, 9, 7]);
        assert_eq!(s.received, 9);
        assert_eq!(s.reordered, 1);
        assert_eq!(s.lost(10), 1);
    }

    #[test]
    fn duplicates_in_window_are_not_counted_twice() {
        let s = feed([0, 1, 2, 2, 1, 3]);
        assert_eq!((s.received, s.duplicates, s.reordered), (4, 2, 0));
        assert_eq!(s.lost(4), 0);
    }

    #[test]
    fn jumps_beyond_the_window() {
        // A big jump clears the window; a very old packet is received and reordered.
        let s = feed([0, 1, 500, 2, 499]);
        assert_eq!(s.received, 5);
        assert_eq!(s.reordered, 2);
        assert_eq!(s.duplicates, 0);
        // Exactly at the window edge: age 127 is remembered, 128 is not.
        let s = feed([0, 127, 0]);
        assert_eq!(s.duplicates, 1);
        let s = feed([0, 128, 0]);
        assert_eq!((s.duplicates, s.received, s.reordered), (0, 3, 1));
    }

    #[test]
    fn first_packet_need_not_be_zero() {
        let s = feed([5, 6, 4]);
        assert_eq!((s.received, s.reordered), (3, 1));
    }

    /// The XDP sink runs `rtpedge_common::sink::SinkStream` in the kernel: it must count
    /// exactly as this receiver does, on any arrival order (losses, duplicates, late packets,
    /// jumps past the window).
    #[test]
    fn the_sinks_accounting_matches_this_one() {
        use rtpedge_common::sink::SinkStream;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for round in 0..300 {
            let mut a = StreamRx::default();
            let mut b = SinkStream::default();
            let mut next = rnd(1000);
            for _ in 0..2000 {
                let seq = match rnd(10) {
                    0 => next.saturating_sub(rnd(200)), // late, maybe past the window
                    1 => next.saturating_sub(1),        // duplicate or late
                    2 => {
                        next += rnd(if round % 2 == 0 { 5 } else { 300 }); // loss, or a jump
                        next
                    }
                    _ => {
                        next += 1;
                        next
                    }
                };
                a.on_packet(seq);
                b.on_packet(seq, 1);
                assert_eq!(
                    (a.received, a.duplicates, a.reordered),
                    (b.received, b.duplicates, b.reordered),
                    "round {round}, seq {seq}"
                );
            }
        }
    }

    #[test]
    fn totals() {
        let sent = [10, 10, 10];
        let rx = [feed(0..10), feed([0, 2, 1]), StreamRx::default()];
        let t = Totals::of(&sent, &rx);
        assert_eq!(t.sent, 30);
        assert_eq!(t.received, 13);
        assert_eq!(t.lost, 17);
        assert_eq!(t.reordered, 1);
        assert_eq!(t.streams_with_loss, 2);
        assert_eq!(t.dead_streams, 1);
        assert!((t.loss_pct() - 56.666).abs() < 0.01);
        assert_eq!(Totals::default().loss_pct(), 0.0);
    }
}
