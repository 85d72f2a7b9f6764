//! The port pool: hands out RTP ports (even) with their RTCP ports (odd, RTP + 1) from a range,
//! never the same port twice, and reuses a released port only after a quarantine so that late
//! packets of an old call never reach a new one. Sans-IO: time comes in as an argument.

use std::{collections::VecDeque, time::Duration};

/// Why no port could be handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Every port is in use or in quarantine.
    #[error("no free ports ({in_use} in use, {quarantined} in quarantine)")]
    NoFreePorts {
        /// Pairs in use.
        in_use: usize,
        /// Pairs waiting out their quarantine.
        quarantined: usize,
    },
    /// The range holds no even port with room for its RTCP port.
    #[error("port range {0}-{1} holds no RTP/RTCP pair")]
    EmptyRange(u16, u16),
}

/// A pool of RTP/RTCP port pairs. Each pair is identified by its (even) RTP port.
#[derive(Debug)]
pub struct PortPool {
    fresh: VecDeque<u16>,
    /// Released pairs in release order, with the time (ns) they become reusable.
    quarantined: VecDeque<(u16, u64)>,
    in_use: std::collections::HashSet<u16>,
    quarantine_ns: u64,
}

impl PortPool {
    /// Pairs `(p, p + 1)` for every even `p` in `lo..=hi` with `p + 1 <= hi`.
    pub fn new(lo: u16, hi: u16, quarantine: Duration) -> Result<Self, PoolError> {
        let first = if lo.is_multiple_of(2) {
            lo
        } else {
            lo.saturating_add(1)
        };
        let fresh: VecDeque<u16> = (first..hi).step_by(2).collect();
        if fresh.is_empty() || lo == 0 {
            return Err(PoolError::EmptyRange(lo, hi));
        }
        Ok(Self {
            fresh,
            quarantined: VecDeque::new(),
            in_use: Default::default(),
            quarantine_ns: quarantine.as_nanos().min(u64::MAX as u128) as u64,
        })
    }

    /// Takes a pair: never-used ports first, then the longest-released one whose quarantine
    /// has passed.
    pub fn allocate(&mut self, now_ns: u64) -> Result<u16, PoolError> {
        let port = match self.fresh.pop_front() {
            Some(p) => p,
            None => match self.quarantined.front() {
                Some(&(p, ready_at)) if ready_at <= now_ns => {
                    self.quarantined.pop_front();
                    p
                }
                _ => {
                    return Err(PoolError::NoFreePorts {
                        in_use: self.in_use.len(),
                        quarantined: self.quarantined.len(),
                    });
                }
            },
        };
        self.in_use.insert(port);
        Ok(port)
    }

    /// Returns a pair; it can be handed out again after the quarantine. Releasing a port that
    /// is not in use is ignored (and reported as `false`).
    pub fn release(&mut self, rtp_port: u16, now_ns: u64) -> bool {
        if !self.in_use.remove(&rtp_port) {
            return false;
        }
        self.quarantined
            .push_back((rtp_port, now_ns.saturating_add(self.quarantine_ns)));
        true
    }

    /// Pairs currently handed out.
    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }

    /// Pairs that could be handed out at `now_ns`.
    pub fn available(&self, now_ns: u64) -> usize {
        self.fresh.len()
            + self
                .quarantined
                .iter()
                .take_while(|(_, t)| *t <= now_ns)
                .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn pairs_are_even_and_never_handed_out_twice() {
        let mut p = PortPool::new(30001, 30010, Duration::from_secs(1)).unwrap();
        let mut got = Vec::new();
        while let Ok(port) = p.allocate(0) {
            got.push(port);
        }
        assert_eq!(got, vec![30002, 30004, 30006, 30008]);
        assert!(matches!(
            p.allocate(0),
            Err(PoolError::NoFreePorts {
                in_use: 4,
                quarantined: 0
            })
        ));
    }

    #[test]
    fn released_ports_wait_out_the_quarantine() {
        let mut p = PortPool::new(30000, 30003, Duration::from_secs(2)).unwrap();
        let a = p.allocate(0).unwrap();
        let b = p.allocate(0).unwrap();
        assert_eq!((a, b), (30000, 30002));
        assert!(p.release(a, S));
        assert!(!p.release(a, S), "double release is ignored");
        assert!(p.allocate(2 * S).is_err(), "still in quarantine");
        assert_eq!(p.available(3 * S), 1);
        assert_eq!(p.allocate(3 * S).unwrap(), a);
        assert_eq!(p.in_use(), 2);
    }

    #[test]
    fn fresh_ports_are_preferred_over_recycled_ones() {
        let mut p = PortPool::new(30000, 30005, Duration::ZERO).unwrap();
        let a = p.allocate(0).unwrap();
        p.release(a, 0);
        assert_eq!(p.allocate(0).unwrap(), 30002);
        assert_eq!(p.allocate(0).unwrap(), 30004);
        assert_eq!(p.allocate(0).unwrap(), a);
    }

    #[test]
    fn empty_ranges_are_refused() {
        assert!(PortPool::new(30001, 30001, Duration::ZERO).is_err());
        assert!(PortPool::new(0, 10, Duration::ZERO).is_err());
        assert!(PortPool::new(65534, 65535, Duration::ZERO).is_ok());
    }
}
