//! Remote latching, in userspace (defence in depth behind the XDP pinholes): which sources a
//! leg accepts and where its media is sent.
//!
//! Invariants that make RTP Bleed / RTP Inject fail in every mode:
//! - a source is only ever latched from a *valid* RTP packet, inside the learning window, and
//!   (for `Exact` / `Address`) from the signalled address;
//! - once latched, the remote never changes, except through the handover probation: N
//!   consecutive packets from one new source carrying the locked SSRC and continuing its
//!   sequence (an attacker would have to guess a 32-bit SSRC and the sequence);
//! - a rejected packet never changes any state used for forwarding, so it can neither be
//!   forwarded nor redirect the reverse direction;
//! - `Asymmetric` never latches anything: it accepts the signalled address (any port) and
//!   always sends to the signalled address and port, so no packet can redirect it.

use std::net::SocketAddr;

use crate::types::{Policy, RemoteSpec};

/// Largest forward jump from the locked stream's last sequence number that a handover
/// candidate's first packet may show.
const HANDOVER_MAX_GAP: u16 = 100;

/// The fate of a packet offered to [`Latch::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatchVerdict {
    /// From the remote: forward it.
    Accept,
    /// First packet from a newly latched remote: forward it (and report the latch).
    Latched(SocketAddr),
    /// Handover completed: the remote moved to this source (report it); forward.
    Moved(SocketAddr),
    /// Not from the remote: drop and count.
    Reject,
}

#[derive(Clone, Copy, Debug)]
struct Candidate {
    src: SocketAddr,
    next_seq: u16,
    count: u16,
}

/// Latching state of one leg's RTP remote.
#[derive(Clone, Debug)]
pub struct Latch {
    spec: RemoteSpec,
    learn_deadline_ns: u64,
    locked: Option<SocketAddr>,
    /// SSRC and last sequence number of the locked stream (for handover).
    locked_stream: Option<(u32, u16)>,
    candidate: Option<Candidate>,
}

impl Latch {
    /// A latch for `spec`, signalled at `now_ns`. `Exact` is locked at once.
    pub fn new(spec: RemoteSpec, now_ns: u64) -> Self {
        let window = spec.learn_window.as_nanos().min(u64::MAX as u128) as u64;
        Self {
            locked: match spec.policy {
                Policy::Exact => spec.rtp,
                _ => None,
            },
            spec,
            learn_deadline_ns: now_ns.saturating_add(window),
            locked_stream: None,
            candidate: None,
        }
    }

    /// The signalled parameters.
    pub fn spec(&self) -> &RemoteSpec {
        &self.spec
    }

    /// The latched (or exact) remote.
    pub fn locked(&self) -> Option<SocketAddr> {
        self.locked
    }

    /// Where this leg's media is sent: the latched remote, or the signalled address until one
    /// is latched.
    pub fn destination(&self) -> Option<SocketAddr> {
        self.locked.or(self.spec.rtp)
    }

    /// Judges a valid RTP packet (`ssrc`, `seq`) from `src` at `now_ns`.
    #[inline]
    pub fn check(&mut self, src: SocketAddr, ssrc: u32, seq: u16, now_ns: u64) -> LatchVerdict {
        if self.spec.policy == Policy::Asymmetric {
            return if self.spec.rtp.is_some_and(|r| r.ip() == src.ip()) {
                LatchVerdict::Accept
            } else {
                LatchVerdict::Reject
            };
        }
        if let Some(locked) = self.locked {
            if src == locked {
                self.locked_stream = Some((ssrc, seq));
                // Genuine media resets any probation in progress.
                self.candidate = None;
                return LatchVerdict::Accept;
            }
            return self.probation(src, ssrc, seq);
        }
        let may_learn = now_ns <= self.learn_deadline_ns
            && match self.spec.policy {
                Policy::Exact => false,
                Policy::Address => self.spec.rtp.is_some_and(|r| r.ip() == src.ip()),
                Policy::Learning => true,
                Policy::Asymmetric => false,
            };
        if !may_learn {
            return LatchVerdict::Reject;
        }
        self.locked = Some(src);
        self.locked_stream = Some((ssrc, seq));
        LatchVerdict::Latched(src)
    }

    fn probation(&mut self, src: SocketAddr, ssrc: u32, seq: u16) -> LatchVerdict {
        let (Some(required), Some((locked_ssrc, last_seq))) =
            (self.spec.handover, self.locked_stream)
        else {
            return LatchVerdict::Reject;
        };
        if ssrc != locked_ssrc
            || self.spec.policy == Policy::Exact
            || (self.spec.policy == Policy::Address
                && self.spec.rtp.is_some_and(|r| r.ip() != src.ip()))
        {
            return LatchVerdict::Reject;
        }
        let continues = match self.candidate {
            Some(c) if c.src == src => seq == c.next_seq,
            _ => {
                let gap = seq.wrapping_sub(last_seq);
                (1..=HANDOVER_MAX_GAP).contains(&gap)
            }
        };
        if !continues {
            self.candidate = None;
            return LatchVerdict::Reject;
        }
        let count = match self.candidate {
            Some(c) if c.src == src => c.count + 1,
            _ => 1,
        };
        if count >= required.max(1) {
            self.locked = Some(src);
            self.locked_stream = Some((ssrc, seq));
            self.candidate = None;
            return LatchVerdict::Moved(src);
        }
        self.candidate = Some(Candidate {
            src,
            next_seq: seq.wrapping_add(1),
            count,
        });
        LatchVerdict::Reject
    }

    /// Whether the RTCP destination may be learned from where RTCP comes from (every policy
    /// but `Asymmetric`, whose remote does not receive where it sends from).
    #[inline]
    pub fn learns_rtcp(&self) -> bool {
        self.spec.policy != Policy::Asymmetric
    }

    /// Whether an RTCP packet from `src` may be accepted: it must come from the RTP remote's
    /// address (latched, or signalled until then).
    #[inline]
    pub fn rtcp_source_ok(&self, src: SocketAddr) -> bool {
        self.destination().is_some_and(|d| d.ip() == src.ip())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    const S: u64 = 1_000_000_000;

    #[test]
    fn exact_accepts_only_the_signalled_source() {
        let mut l = Latch::new(RemoteSpec::exact(sa("192.0.2.1:4000")), 0);
        assert_eq!(l.destination(), Some(sa("192.0.2.1:4000")));
        assert_eq!(l.check(sa("192.0.2.1:4000"), 1, 1, 0), LatchVerdict::Accept);
        assert_eq!(l.check(sa("192.0.2.1:4002"), 1, 2, 0), LatchVerdict::Reject);
        assert_eq!(l.check(sa("192.0.2.9:4000"), 1, 2, 0), LatchVerdict::Reject);
    }

    #[test]
    fn address_learns_the_port_from_the_signalled_host_only() {
        let mut l = Latch::new(
            RemoteSpec::address(sa("192.0.2.1:4000"), Duration::from_secs(3)),
            0,
        );
        assert_eq!(
            l.check(sa("192.0.2.9:4000"), 1, 1, 0),
            LatchVerdict::Reject,
            "other host"
        );
        assert_eq!(
            l.destination(),
            Some(sa("192.0.2.1:4000")),
            "rejection changed nothing"
        );
        assert_eq!(
            l.check(sa("192.0.2.1:5555"), 1, 1, S),
            LatchVerdict::Latched(sa("192.0.2.1:5555"))
        );
        assert_eq!(l.destination(), Some(sa("192.0.2.1:5555")));
        assert_eq!(
            l.check(sa("192.0.2.1:4000"), 1, 2, S),
            LatchVerdict::Reject,
            "locked"
        );
    }

    #[test]
    fn learning_locks_the_first_source_within_the_window() {
        let mut l = Latch::new(RemoteSpec::learning(None, Duration::from_secs(3)), 0);
        assert_eq!(l.destination(), None);
        assert_eq!(
            l.check(sa("198.51.100.1:7000"), 9, 1, S),
            LatchVerdict::Latched(sa("198.51.100.1:7000"))
        );
        // RTP Bleed: another port on the same host, inside the window, after genuine media.
        assert_eq!(
            l.check(sa("198.51.100.1:7002"), 9, 2, 2 * S),
            LatchVerdict::Reject
        );
        assert_eq!(
            l.check(sa("203.0.113.5:7000"), 9, 2, 2 * S),
            LatchVerdict::Reject
        );
        assert_eq!(l.destination(), Some(sa("198.51.100.1:7000")));
        assert_eq!(
            l.check(sa("198.51.100.1:7000"), 9, 2, 2 * S),
            LatchVerdict::Accept
        );
    }

    #[test]
    fn nothing_is_learned_after_the_window() {
        let mut l = Latch::new(
            RemoteSpec::learning(Some(sa("198.51.100.1:7000")), Duration::from_secs(3)),
            0,
        );
        assert_eq!(
            l.check(sa("198.51.100.1:7000"), 9, 1, 4 * S),
            LatchVerdict::Reject
        );
        assert_eq!(l.locked(), None);
    }

    fn handover_latch(n: u16) -> Latch {
        let mut spec = RemoteSpec::learning(None, Duration::from_secs(3));
        spec.handover = Some(n);
        let mut l = Latch::new(spec, 0);
        assert!(matches!(
            l.check(sa("10.0.0.1:4000"), 0xabcd, 100, 0),
            LatchVerdict::Latched(_)
        ));
        l
    }

    #[test]
    fn handover_needs_n_consecutive_packets_continuing_the_locked_stream() {
        let mut l = handover_latch(3);
        let new = sa("10.0.0.1:4100");
        assert_eq!(l.check(new, 0xabcd, 101, S), LatchVerdict::Reject);
        assert_eq!(l.check(new, 0xabcd, 102, S), LatchVerdict::Reject);
        assert_eq!(l.check(new, 0xabcd, 103, S), LatchVerdict::Moved(new));
        assert_eq!(l.destination(), Some(new));
        assert_eq!(
            l.check(sa("10.0.0.1:4000"), 0xabcd, 104, S),
            LatchVerdict::Reject,
            "old source now foreign"
        );
    }

    #[test]
    fn handover_refuses_wrong_ssrc_gaps_and_interrupted_runs() {
        let mut l = handover_latch(2);
        let new = sa("10.0.0.2:4100");
        // Guessing attacker: wrong SSRC, forever.
        for s in 0..10 {
            assert_eq!(l.check(new, 0x1234, 101 + s, S), LatchVerdict::Reject);
        }
        // Right SSRC, far-away sequence.
        assert_eq!(l.check(new, 0xabcd, 5000, S), LatchVerdict::Reject);
        assert_eq!(l.check(new, 0xabcd, 5001, S), LatchVerdict::Reject);
        // A run broken by genuine media starts over.
        assert_eq!(l.check(new, 0xabcd, 101, S), LatchVerdict::Reject);
        assert_eq!(
            l.check(sa("10.0.0.1:4000"), 0xabcd, 101, S),
            LatchVerdict::Accept
        );
        assert_eq!(
            l.check(new, 0xabcd, 103, S),
            LatchVerdict::Reject,
            "run reset: first of a new run"
        );
        assert_eq!(l.check(new, 0xabcd, 104, S), LatchVerdict::Moved(new));
    }

    #[test]
    fn without_handover_the_lock_never_moves() {
        let mut l = Latch::new(RemoteSpec::learning(None, Duration::from_secs(3)), 0);
        l.check(sa("10.0.0.1:4000"), 7, 1, 0);
        for s in 2..50 {
            assert_eq!(l.check(sa("10.0.0.1:4100"), 7, s, 0), LatchVerdict::Reject);
        }
        assert_eq!(l.locked(), Some(sa("10.0.0.1:4000")));
    }

    #[test]
    fn asymmetric_accepts_any_port_of_the_signalled_host_and_never_learns() {
        let signalled = sa("192.0.2.1:4000");
        let mut l = Latch::new(RemoteSpec::asymmetric(signalled), 0);
        assert_eq!(l.destination(), Some(signalled));
        assert_eq!(l.check(sa("192.0.2.1:5555"), 1, 1, 0), LatchVerdict::Accept);
        assert_eq!(
            l.check(sa("192.0.2.1:6666"), 2, 9, 10 * S),
            LatchVerdict::Accept
        );
        assert_eq!(l.check(sa("192.0.2.9:4000"), 1, 2, 0), LatchVerdict::Reject);
        assert_eq!(l.locked(), None, "nothing latched");
        assert_eq!(
            l.destination(),
            Some(signalled),
            "sent to the SDP port only"
        );
        assert!(l.rtcp_source_ok(sa("192.0.2.1:7777")));
        assert!(!l.rtcp_source_ok(sa("192.0.2.9:4001")));
        assert!(!l.learns_rtcp());
        // Even with handover asked for, nothing moves.
        let mut spec = RemoteSpec::asymmetric(signalled);
        spec.handover = Some(1);
        let mut l = Latch::new(spec, 0);
        for s in 0..5 {
            assert_eq!(l.check(sa("192.0.2.9:4000"), 1, s, 0), LatchVerdict::Reject);
        }
        assert_eq!(l.destination(), Some(signalled));
    }

    #[test]
    fn rtcp_must_come_from_the_remote_host() {
        let mut l = Latch::new(RemoteSpec::learning(None, Duration::from_secs(3)), 0);
        assert!(
            !l.rtcp_source_ok(sa("10.0.0.1:4001")),
            "no remote known yet"
        );
        l.check(sa("10.0.0.1:4000"), 7, 1, 0);
        assert!(l.rtcp_source_ok(sa("10.0.0.1:4001")));
        assert!(!l.rtcp_source_ok(sa("10.0.0.2:4001")));
    }
}
