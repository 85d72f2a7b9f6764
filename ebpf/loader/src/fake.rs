//! An in-memory [`Dataplane`] for tests that need no kernel: it keeps pinholes like the maps do
//! and, through [`FakeDataplane::deliver`], decides packets with the same shared logic as the
//! XDP program, on a virtual clock.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use rtpedge_common::{
    Counter, LearnedSource, MAX_PINHOLES, Pinhole, PinholeKey, PinholeStats,
    logic::{self, SourceVerdict},
    policy, state,
};

use crate::{
    Dataplane, DataplaneError, Dscp, ForwardSpec, GlobalCounters, PinholeCounters, PinholeInfo,
    PinholeSpec, RateLimit,
    types::{addr_to_map, info_of, key_of, pinhole_value},
};

/// The fate of a packet offered to [`FakeDataplane::deliver`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Passed (with the DSCP it now carries, if the pinhole marks).
    Pass(Option<Dscp>),
    /// Dropped, counted under this counter.
    Drop(Counter),
}

#[derive(Clone, Debug)]
struct Entry {
    ph: Pinhole,
    stats: PinholeStats,
    learned: Option<LearnedSource>,
    /// Kept and validated like the kernel keeps it; whether a packet would take the fast path
    /// depends on the host's routes, so [`FakeDataplane::deliver`] still answers `Pass`.
    forward: Option<ForwardSpec>,
    /// Created with the first forwarding entry, as the kernel's (the fake has no RTP to count).
    rtp: Option<rtpedge_common::rtp_stats::StreamStats>,
}

/// In-memory data plane with a virtual monotonic clock.
#[derive(Clone, Debug)]
pub struct FakeDataplane {
    entries: BTreeMap<SocketAddr, (PinholeKey, Entry)>,
    counters: [u64; Counter::COUNT as usize],
    port_range: (u16, u16),
    capacity: u32,
    now_ns: u64,
}

impl Default for FakeDataplane {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeDataplane {
    /// An empty data plane with the default port range and table size, at virtual time 1 s.
    pub fn new() -> Self {
        Self {
            entries: BTreeMap::new(),
            counters: [0; Counter::COUNT as usize],
            port_range: (
                rtpedge_common::DEFAULT_PORT_MIN,
                rtpedge_common::DEFAULT_PORT_MAX,
            ),
            capacity: MAX_PINHOLES,
            now_ns: 1_000_000_000,
        }
    }

    /// Limits the table size (to test "table full").
    pub fn with_capacity(mut self, capacity: u32) -> Self {
        self.capacity = capacity;
        self
    }

    /// Sets the media port range.
    pub fn with_port_range(mut self, lo: u16, hi: u16) -> Self {
        self.port_range = (lo, hi);
        self
    }

    /// Advances the virtual clock.
    pub fn advance(&mut self, d: Duration) {
        self.now_ns = self.now_ns.saturating_add(d.as_nanos() as u64);
    }

    /// Current virtual time.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// Offers a UDP packet of `frame_len` bytes from `src` to `dst` and returns the verdict the
    /// XDP program would give, updating counters as it would.
    pub fn deliver(&mut self, src: SocketAddr, dst: SocketAddr, frame_len: u64) -> Verdict {
        let (v, c) = self.decide(src, dst, frame_len);
        self.counters[c as usize] += 1;
        if let Verdict::Pass(Some(_)) = v {
            self.counters[Counter::DscpMarked as usize] += 1;
        }
        v
    }

    /// The verdict and the one global counter it is counted under.
    fn decide(&mut self, src: SocketAddr, dst: SocketAddr, frame_len: u64) -> (Verdict, Counter) {
        let (lo, hi) = self.port_range;
        if dst.port() < lo || dst.port() > hi {
            return (Verdict::Pass(None), Counter::NotMedia);
        }
        let drop = |c| (Verdict::Drop(c), c);
        let now = self.now_ns;
        let Some((_, e)) = self.entries.get_mut(&dst) else {
            return drop(Counter::NoPinhole);
        };
        if e.ph.state != state::OPEN {
            e.stats.dropped_closed += 1;
            return drop(Counter::Closed);
        }
        let src_addr = addr_to_map(src.ip());
        let allowed = match logic::check_source(&e.ph, &src_addr, src.port()) {
            SourceVerdict::Allowed => true,
            SourceVerdict::Denied => false,
            SourceVerdict::Learn => match e.learned {
                Some(l) => l.port == src.port() && logic::addr_eq(&l.addr, &src_addr),
                None if logic::may_learn(&e.ph, &src_addr, now) => {
                    e.learned = Some(LearnedSource {
                        addr: src_addr,
                        port: src.port(),
                        _pad: [0; 6],
                        learned_at_ns: now,
                    });
                    self.counters[Counter::Learned as usize] += 1;
                    true
                }
                None => false,
            },
        };
        if !allowed {
            e.stats.dropped_wrong_source += 1;
            return drop(Counter::WrongSource);
        }
        if e.ph.rate_limited()
            && !logic::token_bucket_admit(
                &mut e.stats.tokens,
                &mut e.stats.tokens_at_ns,
                e.ph.rate_pps,
                e.ph.burst,
                now,
            )
        {
            e.stats.dropped_rate_limited += 1;
            return drop(Counter::RateLimited);
        }
        e.stats.packets += 1;
        e.stats.bytes += frame_len;
        e.stats.last_seen_ns = now;
        let dscp = (e.ph.dscp != rtpedge_common::DSCP_NONE).then(|| Dscp::new(e.ph.dscp).ok());
        let forward = e.forward;
        if let Some(f) = forward {
            // As the kernel: forwarded once the other leg's remote has been heard (the way
            // back is learned from its media), else up the stack.
            let way_back = self
                .entries
                .get(&f.via)
                .is_some_and(|(_, other)| other.stats.packets > 0);
            if way_back {
                if let Some((_, e)) = self.entries.get_mut(&dst) {
                    e.stats.fwd_packets += 1;
                    e.stats.fwd_bytes += frame_len;
                }
                self.counters[Counter::Forwarded as usize] += 1;
            } else {
                self.counters[Counter::ForwardFallback as usize] += 1;
            }
        }
        (Verdict::Pass(dscp.flatten()), Counter::Passed)
    }

    fn entry_mut(&mut self, local: SocketAddr) -> Result<&mut Entry, DataplaneError> {
        key_of(local)?;
        self.entries
            .get_mut(&local)
            .map(|(_, e)| e)
            .ok_or(DataplaneError::NoSuchPinhole(local))
    }

    fn info(&self, local: &SocketAddr) -> Option<PinholeInfo> {
        let (key, e) = self.entries.get(local)?;
        let learned = e
            .learned
            .map(|l| SocketAddr::new(crate::types::addr_from_map(l.addr), l.port));
        let counters = PinholeCounters {
            packets: e.stats.packets,
            bytes: e.stats.bytes,
            dropped_closed: e.stats.dropped_closed,
            dropped_wrong_source: e.stats.dropped_wrong_source,
            dropped_rate_limited: e.stats.dropped_rate_limited,
            tx_packets: e.stats.tx_packets,
            tx_bytes: e.stats.tx_bytes,
            forwarded_packets: e.stats.fwd_packets,
            forwarded_bytes: e.stats.fwd_bytes,
            idle: (e.stats.last_seen_ns != 0)
                .then(|| Duration::from_nanos(self.now_ns.saturating_sub(e.stats.last_seen_ns))),
        };
        Some(info_of(key, &e.ph, learned, counters, self.now_ns))
    }
}

/// Whether a learned source survives a policy update (same rule for kernel and fake).
pub(crate) fn keeps_learned(old: &Pinhole, new: &Pinhole) -> bool {
    old.policy == policy::LEARNING
        && new.policy == policy::LEARNING
        && logic::addr_eq(&old.remote_addr, &new.remote_addr)
}

impl Dataplane for FakeDataplane {
    fn open_pinhole(&mut self, spec: &PinholeSpec) -> Result<(), DataplaneError> {
        let key = key_of(spec.local)?;
        let ph = pinhole_value(spec, true, self.now_ns)?;
        if let Some((_, e)) = self.entries.get_mut(&spec.local) {
            if !keeps_learned(&e.ph, &ph) {
                e.learned = None;
            }
            e.ph = ph;
            return Ok(());
        }
        if self.entries.len() as u32 >= self.capacity {
            return Err(DataplaneError::TableFull(self.capacity));
        }
        self.entries.insert(
            spec.local,
            (
                key,
                Entry {
                    ph,
                    stats: PinholeStats::default(),
                    learned: None,
                    forward: None,
                    rtp: None,
                },
            ),
        );
        Ok(())
    }

    fn close_pinhole(&mut self, local: SocketAddr) -> Result<(), DataplaneError> {
        self.entry_mut(local)?.ph.state = state::CLOSED;
        Ok(())
    }

    fn remove_pinhole(&mut self, local: SocketAddr) -> Result<(), DataplaneError> {
        key_of(local)?;
        self.entries
            .remove(&local)
            .map(|_| ())
            .ok_or(DataplaneError::NoSuchPinhole(local))
    }

    fn set_dscp(&mut self, local: SocketAddr, dscp: Option<Dscp>) -> Result<(), DataplaneError> {
        self.entry_mut(local)?.ph.dscp = dscp.map_or(rtpedge_common::DSCP_NONE, Dscp::value);
        Ok(())
    }

    fn set_rate_limit(
        &mut self,
        local: SocketAddr,
        rate: Option<RateLimit>,
    ) -> Result<(), DataplaneError> {
        let e = self.entry_mut(local)?;
        e.ph.rate_pps = rate.map_or(0, |r| r.pps);
        e.ph.burst = rate.map_or(0, |r| r.burst);
        Ok(())
    }

    fn relearn(
        &mut self,
        local: SocketAddr,
        window: Option<Duration>,
    ) -> Result<(), DataplaneError> {
        let now = self.now_ns;
        let e = self.entry_mut(local)?;
        if e.ph.policy != policy::LEARNING {
            return Err(DataplaneError::Invalid(format!(
                "pinhole {local} does not use the learning policy"
            )));
        }
        e.learned = None;
        e.ph.learn_deadline_ns = window.map_or(0, |w| now.saturating_add(w.as_nanos() as u64));
        Ok(())
    }

    fn pinhole(&self, local: SocketAddr) -> Result<Option<PinholeInfo>, DataplaneError> {
        Ok(self.info(&local))
    }

    fn pinholes(&self) -> Result<Vec<PinholeInfo>, DataplaneError> {
        Ok(self.entries.keys().filter_map(|l| self.info(l)).collect())
    }

    fn counters(&self) -> Result<GlobalCounters, DataplaneError> {
        Ok(GlobalCounters(self.counters))
    }

    fn learned_source(&self, local: SocketAddr) -> Result<Option<SocketAddr>, DataplaneError> {
        Ok(self.info(&local).and_then(|i| i.learned))
    }

    fn set_forward(
        &mut self,
        local: SocketAddr,
        forward: Option<ForwardSpec>,
    ) -> Result<(), DataplaneError> {
        if let Some(f) = &forward {
            f.to_map()?;
        }
        let e = self.entry_mut(local)?;
        if let Some(f) = &forward {
            e.rtp
                .get_or_insert(rtpedge_common::rtp_stats::StreamStats::new(f.clock_rate));
        }
        e.forward = forward;
        Ok(())
    }

    fn forward(&self, local: SocketAddr) -> Result<Option<ForwardSpec>, DataplaneError> {
        key_of(local)?;
        Ok(self.entries.get(&local).and_then(|(_, e)| e.forward))
    }

    fn forwarded_rtp(
        &self,
        local: SocketAddr,
    ) -> Result<Option<rtpedge_common::rtp_stats::StreamStats>, DataplaneError> {
        key_of(local)?;
        Ok(self.entries.get(&local).and_then(|(_, e)| e.rtp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RemotePolicy;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_deny_then_pinhole_lifecycle() {
        let mut dp = FakeDataplane::new();
        let local = sa("10.0.0.1:30000");
        let peer = sa("10.0.0.2:4000");
        assert_eq!(
            dp.deliver(peer, local, 100),
            Verdict::Drop(Counter::NoPinhole)
        );
        dp.open_pinhole(&PinholeSpec {
            local,
            remote: RemotePolicy::Exact(peer),
            dscp: Some(Dscp::EF),
            rate: None,
        })
        .unwrap();
        assert_eq!(dp.deliver(peer, local, 100), Verdict::Pass(Some(Dscp::EF)));
        assert_eq!(
            dp.deliver(sa("10.0.0.2:4001"), local, 100),
            Verdict::Drop(Counter::WrongSource)
        );
        dp.close_pinhole(local).unwrap();
        assert_eq!(dp.deliver(peer, local, 100), Verdict::Drop(Counter::Closed));
        let info = dp.pinhole(local).unwrap().unwrap();
        assert_eq!(info.counters.packets, 1);
        assert_eq!(info.counters.bytes, 100);
        assert_eq!(info.counters.dropped(), 2);
        dp.remove_pinhole(local).unwrap();
        assert!(matches!(
            dp.remove_pinhole(local),
            Err(DataplaneError::NoSuchPinhole(_))
        ));
        // outside the media range: untouched
        assert_eq!(
            dp.deliver(peer, sa("10.0.0.1:5060"), 100),
            Verdict::Pass(None)
        );
        let c = dp.counters().unwrap();
        assert_eq!(c.get(Counter::Passed), 1);
        assert_eq!(c.get(Counter::NoPinhole), 1);
        assert_eq!(c.get(Counter::DscpMarked), 1);
        assert_eq!(c.get(Counter::NotMedia), 1);
    }

    #[test]
    fn learning_latches_first_source_and_relearn_needs_signaling() {
        let mut dp = FakeDataplane::new();
        let local = sa("10.0.0.1:30002");
        dp.open_pinhole(&PinholeSpec {
            local,
            remote: RemotePolicy::Learning {
                from: None,
                window: Some(Duration::from_secs(3)),
            },
            dscp: None,
            rate: None,
        })
        .unwrap();
        let a = sa("198.51.100.1:5000");
        let b = sa("198.51.100.9:5000");
        assert_eq!(dp.deliver(a, local, 60), Verdict::Pass(None));
        assert_eq!(
            dp.deliver(b, local, 60),
            Verdict::Drop(Counter::WrongSource)
        );
        assert_eq!(dp.learned_source(local).unwrap(), Some(a));
        // A re-INVITE with the same learning policy keeps the latch.
        dp.open_pinhole(&PinholeSpec {
            local,
            remote: RemotePolicy::Learning {
                from: None,
                window: Some(Duration::from_secs(3)),
            },
            dscp: None,
            rate: None,
        })
        .unwrap();
        assert_eq!(dp.learned_source(local).unwrap(), Some(a));
        dp.relearn(local, Some(Duration::from_secs(1))).unwrap();
        assert_eq!(dp.deliver(b, local, 60), Verdict::Pass(None));
        assert_eq!(
            dp.deliver(a, local, 60),
            Verdict::Drop(Counter::WrongSource)
        );
        // after the window nothing new is learned
        dp.relearn(local, Some(Duration::from_secs(1))).unwrap();
        dp.advance(Duration::from_secs(2));
        assert_eq!(
            dp.deliver(a, local, 60),
            Verdict::Drop(Counter::WrongSource)
        );
    }

    #[test]
    fn rate_limit_and_table_full() {
        let mut dp = FakeDataplane::new().with_capacity(1);
        let local = sa("10.0.0.1:30004");
        let peer = sa("10.0.0.2:4000");
        dp.open_pinhole(&PinholeSpec {
            local,
            remote: RemotePolicy::Address(peer.ip()),
            dscp: None,
            rate: Some(RateLimit::new(50, 2).unwrap()),
        })
        .unwrap();
        assert_eq!(dp.deliver(peer, local, 60), Verdict::Pass(None));
        assert_eq!(dp.deliver(peer, local, 60), Verdict::Pass(None));
        assert_eq!(
            dp.deliver(peer, local, 60),
            Verdict::Drop(Counter::RateLimited)
        );
        dp.advance(Duration::from_millis(20));
        assert_eq!(dp.deliver(peer, local, 60), Verdict::Pass(None));
        let e = dp.open_pinhole(&PinholeSpec {
            local: sa("10.0.0.1:30006"),
            remote: RemotePolicy::Address(peer.ip()),
            dscp: None,
            rate: None,
        });
        assert!(matches!(e, Err(DataplaneError::TableFull(1))));
    }
}
