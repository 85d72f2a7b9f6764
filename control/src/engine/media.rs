//! The media plane as the engine sees it: provisioning legs, setting remotes and DSCP,
//! splicing, statistics. The real implementation is the bridge; tests use [`FakeMedia`], which
//! keeps the same state in memory and records every operation.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use rtpedge_bridge::{
    Bridge, BridgeError, Fork, LegCounters, LegId, LegInfo, LegRequest, LegStats, RemoteSpec,
    SpliceId, SpliceMode, core::CoreError,
};

/// Operations the engine needs from the bridge.
///
/// Changes (`set_remote`, `set_media_timeout`, `splice`, `unsplice`, `release`) may be applied
/// asynchronously, in order: they are checked when called (an error comes back at once), and
/// are in effect when [`MediaPlane::flush`] returns. The engine flushes where it promises an
/// effect (a call ended: nothing forwarded any more); the front ends flush before they
/// acknowledge a request. `provision` is synchronous (its ports go into the SDP), and `stats`
/// sees every change made before it.
pub trait MediaPlane {
    /// Binds a new leg.
    fn provision(&mut self, req: LegRequest) -> Result<LegInfo, BridgeError>;
    /// Sets or replaces a leg's remote.
    fn set_remote(&mut self, leg: LegId, spec: RemoteSpec) -> Result<(), BridgeError>;
    /// Marks a leg's outgoing media.
    fn set_dscp(&mut self, leg: LegId, dscp: Option<u8>) -> Result<(), BridgeError>;
    /// Sets a leg's media timeout.
    fn set_media_timeout(&mut self, leg: LegId, timeout: Duration) -> Result<(), BridgeError>;
    /// Splices legs.
    fn splice(&mut self, legs: &[LegId], mode: SpliceMode) -> Result<SpliceId, BridgeError>;
    /// Dissolves a splice.
    fn unsplice(&mut self, splice: SpliceId) -> Result<(), BridgeError>;
    /// Dissolves `remove` and splices each group of `add` in one step (no packet sees a state
    /// in between); returns the new splices in the order of `add`. On error nothing changed.
    fn resplice(
        &mut self,
        remove: &[SpliceId],
        add: &[(Vec<LegId>, SpliceMode)],
    ) -> Result<Vec<SpliceId>, BridgeError>;
    /// Sends a copy of what the leg accepts to a recorder, or stops.
    fn set_fork(&mut self, leg: LegId, fork: Option<Fork>) -> Result<(), BridgeError>;
    /// Releases a leg (ports go to quarantine).
    fn release(&mut self, leg: LegId) -> Result<(), BridgeError>;
    /// A leg's statistics. For a leg unspliced since it was last spliced, the statistics as
    /// of the unsplice may be returned (nothing is forwarded after it).
    fn stats(&self, leg: LegId) -> Result<LegStats, BridgeError>;
    /// Puts every change made so far in effect.
    fn flush(&mut self) -> Result<(), BridgeError> {
        Ok(())
    }
}

impl MediaPlane for Arc<Bridge> {
    fn provision(&mut self, req: LegRequest) -> Result<LegInfo, BridgeError> {
        Bridge::provision(self, req)
    }
    fn set_remote(&mut self, leg: LegId, spec: RemoteSpec) -> Result<(), BridgeError> {
        Bridge::set_remote(self, leg, spec)
    }
    fn set_dscp(&mut self, leg: LegId, dscp: Option<u8>) -> Result<(), BridgeError> {
        Bridge::set_dscp(self, leg, dscp)
    }
    fn set_media_timeout(&mut self, leg: LegId, timeout: Duration) -> Result<(), BridgeError> {
        Bridge::set_media_timeout(self, leg, timeout)
    }
    fn splice(&mut self, legs: &[LegId], mode: SpliceMode) -> Result<SpliceId, BridgeError> {
        Bridge::splice(self, legs, mode)
    }
    fn unsplice(&mut self, splice: SpliceId) -> Result<(), BridgeError> {
        Bridge::unsplice(self, splice).map(|_| ())
    }
    fn resplice(
        &mut self,
        remove: &[SpliceId],
        add: &[(Vec<LegId>, SpliceMode)],
    ) -> Result<Vec<SpliceId>, BridgeError> {
        Bridge::resplice(self, remove, add)
    }
    fn set_fork(&mut self, leg: LegId, fork: Option<Fork>) -> Result<(), BridgeError> {
        Bridge::set_fork(self, leg, fork)
    }
    fn release(&mut self, leg: LegId) -> Result<(), BridgeError> {
        Bridge::release(self, leg)
    }
    fn stats(&self, leg: LegId) -> Result<LegStats, BridgeError> {
        Bridge::settled_stats(self, leg)
    }
    fn flush(&mut self) -> Result<(), BridgeError> {
        Bridge::flush(self)
    }
}

/// State of a leg in [`FakeMedia`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeLeg {
    /// Addresses.
    pub info: LegInfo,
    /// Remote, once set.
    pub remote: Option<RemoteSpec>,
    /// DSCP.
    pub dscp: Option<u8>,
    /// Media timeout.
    pub media_timeout: Option<Duration>,
    /// Splice.
    pub splice: Option<SpliceId>,
    /// Recorder fork.
    pub fork: Option<Fork>,
    /// Counters the test wants the engine to see.
    pub counters: LegCounters,
    /// Time since the last packet, as the test wants the engine to see it.
    pub idle: Option<Duration>,
}

/// An in-memory media plane.
#[derive(Debug)]
pub struct FakeMedia {
    /// Address legs are "bound" on.
    pub address: IpAddr,
    /// Address of the other family, for dual-stack tests.
    pub other_address: Option<IpAddr>,
    next_port: u16,
    next_id: u64,
    next_splice: u64,
    /// Legs by id.
    pub legs: BTreeMap<LegId, FakeLeg>,
    /// Splices with their legs.
    pub splices: BTreeMap<SpliceId, Vec<LegId>>,
    /// Released legs, in order.
    pub released: Vec<LegId>,
    /// Make the next `provision` fail (to test error paths).
    pub fail_provision: bool,
    /// Changes (remotes, media timeouts, splices, unsplices, releases) made since the last
    /// `flush`: those a real media plane may not have applied yet.
    pub unflushed: u64,
    /// Flushes that had changes to apply: where a real media plane waits for its workers.
    pub waits: u64,
}

impl FakeMedia {
    /// A fake binding legs on `address` from port 30000 up.
    pub fn new(address: IpAddr) -> Self {
        Self {
            address,
            other_address: None,
            next_port: 30000,
            next_id: 1,
            next_splice: 1,
            legs: BTreeMap::new(),
            splices: BTreeMap::new(),
            released: Vec::new(),
            fail_provision: false,
            unflushed: 0,
            waits: 0,
        }
    }

    /// Adds an address of the other family (dual stack).
    pub fn with_other_address(mut self, address: IpAddr) -> Self {
        self.other_address = Some(address);
        self
    }

    fn leg_mut(&mut self, leg: LegId) -> Result<&mut FakeLeg, BridgeError> {
        self.legs.get_mut(&leg).ok_or(BridgeError::NoSuchLeg(leg))
    }

    /// The leg bound on `local` (RTP address).
    pub fn leg_at(&self, local: SocketAddr) -> Option<&FakeLeg> {
        self.legs.values().find(|l| l.info.rtp == local)
    }
}

impl MediaPlane for FakeMedia {
    fn provision(&mut self, req: LegRequest) -> Result<LegInfo, BridgeError> {
        if std::mem::take(&mut self.fail_provision) {
            return Err(BridgeError::Pool(
                rtpedge_bridge::pool::PoolError::NoFreePorts {
                    in_use: self.legs.len(),
                    quarantined: 0,
                },
            ));
        }
        let port = self.next_port;
        self.next_port += 2;
        let id = LegId(self.next_id);
        self.next_id += 1;
        // Like the bridge: the address of the requested family, or a precise error.
        let ip = match req.address {
            Some(a) => a,
            None => [Some(self.address), self.other_address]
                .into_iter()
                .flatten()
                .find(|a| a.is_ipv6() == req.ipv6)
                .ok_or(BridgeError::NoAddressOfFamily(if req.ipv6 {
                    "IPv6"
                } else {
                    "IPv4"
                }))?,
        };
        let info = LegInfo {
            id,
            rtp: SocketAddr::new(ip, port),
            rtcp: (!req.rtcp_mux).then(|| SocketAddr::new(ip, port + 1)),
        };
        self.legs.insert(
            id,
            FakeLeg {
                info,
                remote: None,
                dscp: None,
                media_timeout: None,
                splice: None,
                fork: None,
                counters: LegCounters::default(),
                idle: None,
            },
        );
        Ok(info)
    }
    fn set_remote(&mut self, leg: LegId, spec: RemoteSpec) -> Result<(), BridgeError> {
        self.leg_mut(leg)?.remote = Some(spec);
        self.unflushed += 1;
        Ok(())
    }
    fn set_dscp(&mut self, leg: LegId, dscp: Option<u8>) -> Result<(), BridgeError> {
        self.leg_mut(leg)?.dscp = dscp;
        Ok(())
    }
    fn set_media_timeout(&mut self, leg: LegId, timeout: Duration) -> Result<(), BridgeError> {
        self.leg_mut(leg)?.media_timeout = Some(timeout);
        self.unflushed += 1;
        Ok(())
    }
    fn splice(&mut self, legs: &[LegId], _mode: SpliceMode) -> Result<SpliceId, BridgeError> {
        let id = SpliceId(self.next_splice);
        self.next_splice += 1;
        for &l in legs {
            self.leg_mut(l)?.splice = Some(id);
        }
        self.splices.insert(id, legs.to_vec());
        self.unflushed += 1;
        Ok(id)
    }
    fn unsplice(&mut self, splice: SpliceId) -> Result<(), BridgeError> {
        let legs = self
            .splices
            .remove(&splice)
            .ok_or(BridgeError::NoSuchSplice(splice))?;
        for l in legs {
            if let Some(leg) = self.legs.get_mut(&l) {
                leg.splice = None;
            }
        }
        self.unflushed += 1;
        Ok(())
    }
    fn resplice(
        &mut self,
        remove: &[SpliceId],
        add: &[(Vec<LegId>, SpliceMode)],
    ) -> Result<Vec<SpliceId>, BridgeError> {
        // The same checks as the bridge's core, before anything changes.
        for id in remove {
            if !self.splices.contains_key(id) {
                return Err(BridgeError::NoSuchSplice(*id));
            }
        }
        let mut seen: Vec<LegId> = Vec::new();
        for (legs, _) in add {
            let mut group: Vec<LegId> = Vec::new();
            for &l in legs {
                if group.contains(&l) {
                    continue;
                }
                let leg = self.legs.get(&l).ok_or(BridgeError::NoSuchLeg(l))?;
                if let Some(s) = leg.splice
                    && !remove.contains(&s)
                {
                    return Err(CoreError::AlreadySpliced(l, s).into());
                }
                if seen.contains(&l) {
                    return Err(CoreError::LegInTwoGroups(l).into());
                }
                group.push(l);
            }
            if group.len() < 2 {
                return Err(CoreError::TooFewLegs.into());
            }
            seen.extend(group);
        }
        for id in remove {
            self.unsplice(*id)?;
        }
        add.iter()
            .map(|(legs, mode)| self.splice(legs, *mode))
            .collect()
    }
    fn set_fork(&mut self, leg: LegId, fork: Option<Fork>) -> Result<(), BridgeError> {
        self.leg_mut(leg)?.fork = fork;
        Ok(())
    }
    fn release(&mut self, leg: LegId) -> Result<(), BridgeError> {
        let l = self.legs.remove(&leg).ok_or(BridgeError::NoSuchLeg(leg))?;
        if let Some(s) = l.splice {
            self.splices.remove(&s);
        }
        self.released.push(leg);
        self.unflushed += 1;
        Ok(())
    }
    fn stats(&self, leg: LegId) -> Result<LegStats, BridgeError> {
        let l = self.legs.get(&leg).ok_or(BridgeError::NoSuchLeg(leg))?;
        Ok(LegStats {
            leg,
            policy: l.remote.map(|r| r.policy),
            remote: l.remote.and_then(|r| r.rtp),
            splice: l.splice,
            counters: l.counters,
            ssrc: None,
            rtp_packets: l.counters.packets_in,
            rtp_expected: l.counters.packets_in,
            rtp_lost: 0,
            rtp_reordered: 0,
            jitter: Duration::ZERO,
            idle: l.idle,
        })
    }
    fn flush(&mut self) -> Result<(), BridgeError> {
        if self.unflushed > 0 {
            self.waits += 1;
        }
        self.unflushed = 0;
        Ok(())
    }
}
