//! The sans-IO forwarding core of one worker: its legs, its splices and the per-packet
//! decision. It owns no socket and reads no clock: the worker hands it a received packet, the
//! source address and `now`, and gets back where to send the packet (same bytes, no copy).
//!
//! Per packet: validate RTP/RTCP in place → check the remote (latching) → update statistics →
//! splice and floor → targets. Nothing here allocates on that path (the target list is the
//! caller's, reused), and a packet that fails any step changes no forwarding state.

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use crate::{
    floor::Floor,
    latch::{Latch, LatchVerdict},
    rtp::{self, Packet},
    stats::StreamStats,
    types::{LegId, Policy, RemoteSpec, SpliceId, SpliceMode},
};

/// Which of a leg's sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Socket {
    /// The RTP socket (also RTCP with rtcp-mux).
    Rtp,
    /// The RTCP socket (RTP port + 1).
    Rtcp,
}

/// One destination of a forwarded packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// Slot of the leg whose socket sends it.
    pub slot: usize,
    /// Which socket of that leg.
    pub socket: Socket,
    /// Where to.
    pub dst: SocketAddr,
}

/// Why a packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Not valid RTP/RTCP.
    Invalid,
    /// No remote signalled yet.
    NoRemote,
    /// The source does not satisfy the leg's remote policy.
    WrongSource,
    /// The leg is not spliced.
    NotSpliced,
    /// Half duplex: another leg holds the floor.
    NoFloor,
}

/// The fate of a received packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Forward to the targets the call filled in (possibly none if no peer has a destination).
    Forward,
    /// Dropped and counted.
    Drop(DropReason),
}

/// Something the bridge's owner should know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BridgeEvent {
    /// The first valid, accepted RTP packet on a leg.
    FirstPacket {
        /// The leg.
        leg: LegId,
        /// Its source.
        from: SocketAddr,
    },
    /// A learning/address leg latched its remote.
    Latched {
        /// The leg.
        leg: LegId,
        /// The remote it is locked to.
        remote: SocketAddr,
    },
    /// A leg's remote moved after a successful handover probation.
    RemoteMoved {
        /// The leg.
        leg: LegId,
        /// The new remote.
        remote: SocketAddr,
    },
    /// A spliced leg received no RTP for its media timeout.
    MediaTimeout {
        /// The leg.
        leg: LegId,
        /// How long it has been silent (`None`: never received anything).
        idle: Option<Duration>,
    },
    /// A leg failed in a way its owner must handle (socket error).
    Error {
        /// The leg.
        leg: LegId,
        /// What failed.
        message: String,
    },
}

/// Per-leg counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LegCounters {
    /// Datagrams received on the leg's sockets (before any check).
    pub received: u64,
    /// Bytes received.
    pub received_bytes: u64,
    /// Valid packets accepted from the remote (RTP and RTCP).
    pub packets_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Packets sent out of this leg to its remote.
    pub packets_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// RTCP packets accepted.
    pub rtcp_in: u64,
    /// Their bytes (included in `bytes_in`).
    pub rtcp_bytes_in: u64,
    /// RTCP packets sent.
    pub rtcp_out: u64,
    /// Dropped: invalid RTP/RTCP.
    pub dropped_invalid: u64,
    /// Dropped: no remote signalled.
    pub dropped_no_remote: u64,
    /// Dropped: wrong source.
    pub dropped_wrong_source: u64,
    /// Dropped: not spliced.
    pub dropped_not_spliced: u64,
    /// Dropped: floor held by another leg.
    pub dropped_no_floor: u64,
    /// Packets that could not be sent (socket errors, full send buffer).
    pub send_errors: u64,
    /// Copies of accepted packets queued to the leg's recorder fork (also counted in
    /// `packets_out`/`bytes_out` once sent: they leave through this leg's socket).
    pub forked: u64,
}

/// Where a leg's accepted packets are also sent, unchanged (a recorder), out of the socket
/// they arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fork {
    /// Destination of RTP (and of RTCP when `rtcp` is None).
    pub rtp: SocketAddr,
    /// Destination of RTCP, when the recorder wants it on its own port.
    pub rtcp: Option<SocketAddr>,
}

impl Fork {
    /// Everything to one address (RTP and RTCP muxed).
    pub fn to(addr: SocketAddr) -> Self {
        Self {
            rtp: addr,
            rtcp: None,
        }
    }
}

/// Statistics of one leg, as reported to the owner.
#[derive(Clone, Debug, PartialEq)]
pub struct LegStats {
    /// The leg.
    pub leg: LegId,
    /// Remote policy, once signalled.
    pub policy: Option<Policy>,
    /// The latched (or exact) remote.
    pub remote: Option<SocketAddr>,
    /// The splice it is in.
    pub splice: Option<SpliceId>,
    /// Counters.
    pub counters: LegCounters,
    /// SSRC of the received RTP stream.
    pub ssrc: Option<u32>,
    /// RTP packets accepted from the remote.
    pub rtp_packets: u64,
    /// RTP packets expected from the sequence numbers.
    pub rtp_expected: u64,
    /// RTP packets lost (cumulative; negative with duplicates, RFC 3550 A.3).
    pub rtp_lost: i64,
    /// RTP packets that arrived out of order.
    pub rtp_reordered: u64,
    /// Interarrival jitter (RFC 3550 A.8).
    pub jitter: Duration,
    /// Time since the last accepted RTP packet.
    pub idle: Option<Duration>,
}

struct LegState {
    id: LegId,
    rtcp_mux: bool,
    srtp: bool,
    latch: Option<Latch>,
    /// Last accepted RTCP source (destination for RTCP towards this leg's remote).
    rtcp_remote: Option<SocketAddr>,
    splice: Option<SpliceId>,
    /// Index of the splice in `Core::splice_slab` (packet path: no hash lookup).
    splice_idx: usize,
    stream: StreamStats,
    counters: LegCounters,
    last_rtp_ns: Option<u64>,
    timeout_reported: bool,
    media_timeout_ns: u64,
    /// Start of the current silence measurement (splice time or last packet).
    armed_at_ns: u64,
    /// Recorder fork.
    fork: Option<Fork>,
}

impl LegState {
    /// Where RTCP for this leg's remote goes, and out of which socket.
    fn rtcp_target(&self) -> Option<(Socket, SocketAddr)> {
        let latch = self.latch.as_ref()?;
        if self.rtcp_mux || latch.spec().rtcp_mux {
            return latch.destination().map(|d| (Socket::Rtp, d));
        }
        let dst = self.rtcp_remote.or(latch.spec().rtcp).or_else(|| {
            latch
                .destination()
                .map(|d| SocketAddr::new(d.ip(), d.port().wrapping_add(1)))
        })?;
        Some((Socket::Rtcp, dst))
    }
}

struct SpliceState {
    slots: Vec<usize>,
    floor: Option<Floor>,
}

/// Errors of control operations on the core.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// No such leg here.
    #[error("no such leg: {0}")]
    NoSuchLeg(LegId),
    /// No such splice here.
    #[error("no such splice: {0}")]
    NoSuchSplice(SpliceId),
    /// The leg is already in a splice.
    #[error("{0} is already spliced ({1})")]
    AlreadySpliced(LegId, SpliceId),
    /// A splice needs at least two distinct legs.
    #[error("a splice needs at least two distinct legs")]
    TooFewLegs,
    /// The splice id is taken.
    #[error("{0} exists already")]
    SpliceExists(SpliceId),
    /// The leg is not part of the splice.
    #[error("{0} is not in {1}")]
    NotInSplice(LegId, SpliceId),
    /// A leg named in two groups of one resplice.
    #[error("{0} is in more than one group")]
    LegInTwoGroups(LegId),
    /// The splice is not half duplex.
    #[error("{0} is not half duplex")]
    NotHalfDuplex(SpliceId),
}

/// A leg detached from one worker's core, to be inserted into another's.
pub struct DetachedLeg(Box<LegState>);

/// Per-leg transport options, fixed when the leg is provisioned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegOptions {
    /// RTP and RTCP on one port (RFC 5761).
    pub rtcp_mux: bool,
    /// SRTP/SRTCP (RTP/SAVP, RTP/SAVPF): the payload, the RTP padding count and everything
    /// after the first RTCP header are encrypted, so only what is in clear is validated. The
    /// bridge relays SRTP end to end; it never holds keys.
    pub srtp: bool,
    /// Silence after which a spliced leg is reported (0: never).
    pub media_timeout: Duration,
}

impl Default for LegOptions {
    fn default() -> Self {
        Self {
            rtcp_mux: false,
            srtp: false,
            media_timeout: Duration::from_secs(30),
        }
    }
}

/// Where [`Core::on_packet`] writes its results; owned by the caller and reused, so the
/// packet path does not allocate.
#[derive(Debug, Default)]
pub struct Output {
    /// Destinations of the packet (cleared on every call).
    pub targets: Vec<Target>,
    /// Events to report (appended; the caller drains them).
    pub events: Vec<BridgeEvent>,
}

/// The forwarding state of one worker.
pub struct Core {
    legs: Vec<Option<LegState>>,
    free: Vec<usize>,
    by_id: HashMap<LegId, usize>,
    /// Splices by index; `splices` maps ids to indices for the control path.
    splice_slab: Vec<Option<SpliceState>>,
    splices: HashMap<SpliceId, usize>,
    clock_rate: u32,
}

impl Core {
    /// An empty core; `clock_rate` is the default RTP clock rate for jitter.
    pub fn new(clock_rate: u32) -> Self {
        Self {
            legs: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            splice_slab: Vec::new(),
            splices: HashMap::new(),
            clock_rate,
        }
    }

    /// Slot of a leg.
    pub fn slot(&self, id: LegId) -> Result<usize, CoreError> {
        self.by_id.get(&id).copied().ok_or(CoreError::NoSuchLeg(id))
    }

    /// Id of the leg in `slot`.
    pub fn leg_id(&self, slot: usize) -> Option<LegId> {
        self.legs.get(slot)?.as_ref().map(|l| l.id)
    }

    /// Number of legs.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the core has no legs.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn insert(&mut self, state: LegState) -> usize {
        let id = state.id;
        let slot = match self.free.pop() {
            Some(s) => {
                self.legs[s] = Some(state);
                s
            }
            None => {
                self.legs.push(Some(state));
                self.legs.len() - 1
            }
        };
        self.by_id.insert(id, slot);
        slot
    }

    /// Adds a provisioned leg; returns its slot.
    pub fn add_leg(&mut self, id: LegId, opts: LegOptions, now_ns: u64) -> usize {
        self.insert(LegState {
            id,
            rtcp_mux: opts.rtcp_mux,
            srtp: opts.srtp,
            latch: None,
            rtcp_remote: None,
            splice: None,
            splice_idx: usize::MAX,
            stream: StreamStats::new(self.clock_rate),
            counters: LegCounters::default(),
            last_rtp_ns: None,
            timeout_reported: false,
            media_timeout_ns: opts.media_timeout.as_nanos().min(u64::MAX as u128) as u64,
            armed_at_ns: now_ns,
            fork: None,
        })
    }

    /// Removes a leg, taking it out of its splice first. Returns its slot and the splice that
    /// dissolved because fewer than two legs were left in it.
    pub fn remove_leg(&mut self, id: LegId) -> Result<(usize, Option<SpliceId>), CoreError> {
        let slot = self.slot(id)?;
        let dissolved = self.leave_splice(slot);
        self.legs[slot] = None;
        self.by_id.remove(&id);
        self.free.push(slot);
        Ok((slot, dissolved))
    }

    /// Takes a leg out of this core (it must not be spliced) to move it to another worker.
    pub fn detach(&mut self, id: LegId) -> Result<(usize, DetachedLeg), CoreError> {
        let slot = self.slot(id)?;
        let state = self.legs[slot].take().ok_or(CoreError::NoSuchLeg(id))?;
        if let Some(s) = state.splice {
            self.legs[slot] = Some(state);
            return Err(CoreError::AlreadySpliced(id, s));
        }
        self.by_id.remove(&id);
        self.free.push(slot);
        Ok((slot, DetachedLeg(Box::new(state))))
    }

    /// Inserts a leg detached from another core; returns its slot here.
    pub fn attach(&mut self, leg: DetachedLeg) -> usize {
        self.insert(*leg.0)
    }

    fn leave_splice(&mut self, slot: usize) -> Option<SpliceId> {
        let splice = self.legs[slot].as_ref().and_then(|l| l.splice)?;
        let dissolve = match self.splice_mut(splice) {
            Some(s) => {
                s.slots.retain(|&x| x != slot);
                s.slots.len() < 2
            }
            None => false,
        };
        if let Some(l) = self.legs[slot].as_mut() {
            l.splice = None;
        }
        if dissolve {
            let _ = self.unsplice(splice);
            return Some(splice);
        }
        None
    }

    /// Sets (or replaces, on re-INVITE) a leg's remote. A new spec restarts latching.
    pub fn set_remote(
        &mut self,
        id: LegId,
        spec: RemoteSpec,
        now_ns: u64,
    ) -> Result<(), CoreError> {
        let slot = self.slot(id)?;
        if let Some(l) = self.legs[slot].as_mut() {
            let unchanged = l.latch.as_ref().is_some_and(|x| *x.spec() == spec);
            if !unchanged {
                l.latch = Some(Latch::new(spec, now_ns));
                l.rtcp_remote = None;
            }
        }
        Ok(())
    }

    /// Sets a leg's media timeout.
    pub fn set_media_timeout(&mut self, id: LegId, timeout: Duration) -> Result<(), CoreError> {
        let slot = self.slot(id)?;
        if let Some(l) = self.legs[slot].as_mut() {
            l.media_timeout_ns = timeout.as_nanos().min(u64::MAX as u128) as u64;
        }
        Ok(())
    }

    /// Splices legs; takes effect on the next packet.
    pub fn splice(
        &mut self,
        id: SpliceId,
        legs: &[LegId],
        mode: SpliceMode,
        now_ns: u64,
    ) -> Result<(), CoreError> {
        if self.splices.contains_key(&id) {
            return Err(CoreError::SpliceExists(id));
        }
        let mut slots = Vec::with_capacity(legs.len());
        for &leg in legs {
            let slot = self.slot(leg)?;
            if let Some(s) = self.legs[slot].as_ref().and_then(|l| l.splice) {
                return Err(CoreError::AlreadySpliced(leg, s));
            }
            if !slots.contains(&slot) {
                slots.push(slot);
            }
        }
        if slots.len() < 2 {
            return Err(CoreError::TooFewLegs);
        }
        let idx = match self.splice_slab.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.splice_slab.push(None);
                self.splice_slab.len() - 1
            }
        };
        for &slot in &slots {
            if let Some(l) = self.legs[slot].as_mut() {
                l.splice = Some(id);
                l.splice_idx = idx;
                l.timeout_reported = false;
                l.armed_at_ns = now_ns;
            }
        }
        let floor = match mode {
            SpliceMode::Full => None,
            SpliceMode::HalfDuplex { release_after } => Some(Floor::new(
                release_after.as_nanos().min(u64::MAX as u128) as u64,
            )),
        };
        self.splice_slab[idx] = Some(SpliceState { slots, floor });
        self.splices.insert(id, idx);
        Ok(())
    }

    /// Replaces splices in one step: dissolves `remove` and creates `add` (ids chosen by the
    /// caller), so no packet ever sees a state in between (a call becomes multi-party, or a
    /// multi-party call splits into subgroups, without a gap in the media). Everything is
    /// checked before anything changes: on error the core is as before. A leg of a new group
    /// must be unspliced or in one of the removed splices.
    pub fn resplice(
        &mut self,
        remove: &[SpliceId],
        add: &[(SpliceId, Vec<LegId>, SpliceMode)],
        now_ns: u64,
    ) -> Result<(), CoreError> {
        for id in remove {
            if !self.splices.contains_key(id) {
                return Err(CoreError::NoSuchSplice(*id));
            }
        }
        let mut seen: Vec<LegId> = Vec::new();
        for (i, (id, legs, _)) in add.iter().enumerate() {
            if (self.splices.contains_key(id) && !remove.contains(id))
                || add[..i].iter().any(|(other, _, _)| other == id)
            {
                return Err(CoreError::SpliceExists(*id));
            }
            let mut group: Vec<LegId> = Vec::with_capacity(legs.len());
            for &leg in legs {
                if group.contains(&leg) {
                    continue;
                }
                let slot = self.slot(leg)?;
                if let Some(s) = self.legs[slot].as_ref().and_then(|l| l.splice)
                    && !remove.contains(&s)
                {
                    return Err(CoreError::AlreadySpliced(leg, s));
                }
                if seen.contains(&leg) {
                    return Err(CoreError::LegInTwoGroups(leg));
                }
                group.push(leg);
            }
            if group.len() < 2 {
                return Err(CoreError::TooFewLegs);
            }
            seen.extend(group);
        }
        for id in remove {
            self.unsplice(*id)?;
        }
        for (id, legs, mode) in add {
            self.splice(*id, legs, *mode, now_ns)?;
        }
        Ok(())
    }

    /// Sets or clears a leg's recorder fork; takes effect on the next packet.
    pub fn set_fork(&mut self, id: LegId, fork: Option<Fork>) -> Result<(), CoreError> {
        let slot = self.slot(id)?;
        if let Some(l) = self.legs[slot].as_mut() {
            l.fork = fork;
        }
        Ok(())
    }

    fn splice_mut(&mut self, id: SpliceId) -> Option<&mut SpliceState> {
        let idx = *self.splices.get(&id)?;
        self.splice_slab.get_mut(idx)?.as_mut()
    }

    /// Dissolves a splice; its legs return to provisioned state (sockets kept).
    pub fn unsplice(&mut self, id: SpliceId) -> Result<Vec<LegId>, CoreError> {
        let idx = self
            .splices
            .remove(&id)
            .ok_or(CoreError::NoSuchSplice(id))?;
        let s = self
            .splice_slab
            .get_mut(idx)
            .and_then(Option::take)
            .ok_or(CoreError::NoSuchSplice(id))?;
        let mut out = Vec::with_capacity(s.slots.len());
        for slot in s.slots {
            if let Some(l) = self.legs[slot].as_mut() {
                l.splice = None;
                l.splice_idx = usize::MAX;
                out.push(l.id);
            }
        }
        Ok(out)
    }

    /// Grants (or frees) the floor of a half-duplex splice.
    pub fn grant_floor(
        &mut self,
        id: SpliceId,
        leg: Option<LegId>,
        now_ns: u64,
    ) -> Result<(), CoreError> {
        let slot = leg.map(|l| self.slot(l)).transpose()?;
        let s = self.splice_mut(id).ok_or(CoreError::NoSuchSplice(id))?;
        if let (Some(leg), Some(slot)) = (leg, slot)
            && !s.slots.contains(&slot)
        {
            return Err(CoreError::NotInSplice(leg, id));
        }
        let floor = s.floor.as_mut().ok_or(CoreError::NotHalfDuplex(id))?;
        floor.grant(leg, now_ns);
        Ok(())
    }

    /// The floor holder of a half-duplex splice.
    pub fn floor_holder(&self, id: SpliceId) -> Result<Option<LegId>, CoreError> {
        let s = self
            .splices
            .get(&id)
            .and_then(|&i| self.splice_slab.get(i)?.as_ref())
            .ok_or(CoreError::NoSuchSplice(id))?;
        Ok(s.floor.as_ref().and_then(|f| f.holder()))
    }

    /// Decides a packet received on `slot`'s `socket` from `src`. Fills `out.targets`
    /// (cleared first) and may push `out.events`.
    #[inline]
    pub fn on_packet(
        &mut self,
        slot: usize,
        socket: Socket,
        src: SocketAddr,
        buf: &[u8],
        now_ns: u64,
        out: &mut Output,
    ) -> Outcome {
        let Output { targets, events } = out;
        targets.clear();
        let Some(leg) = self.legs.get_mut(slot).and_then(Option::as_mut) else {
            return Outcome::Drop(DropReason::NotSpliced);
        };
        leg.counters.received += 1;
        leg.counters.received_bytes += buf.len() as u64;
        let parsed = match (socket, leg.srtp) {
            (Socket::Rtp, false) => rtp::parse(buf),
            (Socket::Rtcp, false) => rtp::parse_rtcp(buf).map(Packet::Rtcp),
            (Socket::Rtp, true) => rtp::parse_srtp(buf),
            (Socket::Rtcp, true) => rtp::parse_srtcp(buf).map(Packet::Rtcp),
        };
        let Ok(packet) = parsed else {
            leg.counters.dropped_invalid += 1;
            return Outcome::Drop(DropReason::Invalid);
        };
        let Some(latch) = leg.latch.as_mut() else {
            leg.counters.dropped_no_remote += 1;
            return Outcome::Drop(DropReason::NoRemote);
        };
        let is_rtp = match &packet {
            Packet::Rtp(r) => {
                match latch.check(src, r.ssrc(), r.sequence(), now_ns) {
                    LatchVerdict::Accept => {}
                    LatchVerdict::Latched(remote) => {
                        events.push(BridgeEvent::Latched {
                            leg: leg.id,
                            remote,
                        });
                    }
                    LatchVerdict::Moved(remote) => {
                        leg.rtcp_remote = None;
                        events.push(BridgeEvent::RemoteMoved {
                            leg: leg.id,
                            remote,
                        });
                    }
                    LatchVerdict::Reject => {
                        leg.counters.dropped_wrong_source += 1;
                        return Outcome::Drop(DropReason::WrongSource);
                    }
                }
                if leg.last_rtp_ns.is_none() {
                    events.push(BridgeEvent::FirstPacket {
                        leg: leg.id,
                        from: src,
                    });
                }
                leg.stream
                    .on_packet(r.sequence(), r.timestamp(), r.ssrc(), now_ns, buf.len());
                leg.last_rtp_ns = Some(now_ns);
                leg.armed_at_ns = now_ns;
                leg.timeout_reported = false;
                true
            }
            Packet::Rtcp(_) => {
                // A remote that negotiated rtcp-mux sends RTCP to the RTP port: nothing may
                // come in on the leg's (fallback) RTCP port.
                let muxed = leg.rtcp_mux || latch.spec().rtcp_mux;
                if !latch.rtcp_source_ok(src) || (socket == Socket::Rtcp && muxed) {
                    leg.counters.dropped_wrong_source += 1;
                    return Outcome::Drop(DropReason::WrongSource);
                }
                if (socket == Socket::Rtcp || muxed) && latch.learns_rtcp() {
                    leg.rtcp_remote = Some(src);
                }
                leg.counters.rtcp_in += 1;
                leg.counters.rtcp_bytes_in += buf.len() as u64;
                false
            }
        };
        leg.counters.packets_in += 1;
        leg.counters.bytes_in += buf.len() as u64;
        let id = leg.id;
        let Some(splice) = self
            .splice_slab
            .get_mut(leg.splice_idx)
            .and_then(Option::as_mut)
        else {
            leg.counters.dropped_not_spliced += 1;
            return Outcome::Drop(DropReason::NotSpliced);
        };
        if is_rtp
            && let Some(floor) = splice.floor.as_mut()
            && !floor.admit(id, now_ns)
        {
            if let Some(l) = self.legs[slot].as_mut() {
                l.counters.dropped_no_floor += 1;
            }
            return Outcome::Drop(DropReason::NoFloor);
        }
        for &other in &splice.slots {
            if other == slot {
                continue;
            }
            let Some(peer) = self.legs.get(other).and_then(Option::as_ref) else {
                continue;
            };
            let target = if is_rtp {
                peer.latch
                    .as_ref()
                    .and_then(Latch::destination)
                    .map(|d| (Socket::Rtp, d))
            } else {
                peer.rtcp_target()
            };
            if let Some((socket, dst)) = target {
                targets.push(Target {
                    slot: other,
                    socket,
                    dst,
                });
            }
        }
        // The recorder gets the packet as received, out of the socket it arrived on.
        if let Some(l) = self.legs.get_mut(slot).and_then(Option::as_mut)
            && let Some(fork) = l.fork
        {
            let dst = if is_rtp {
                fork.rtp
            } else {
                fork.rtcp.unwrap_or(fork.rtp)
            };
            l.counters.forked += 1;
            targets.push(Target { slot, socket, dst });
        }
        Outcome::Forward
    }

    /// Counts a datagram the worker could not even hand over (truncated, unknown family).
    pub fn on_unusable(&mut self, slot: usize) {
        if let Some(l) = self.legs.get_mut(slot).and_then(Option::as_mut) {
            l.counters.received += 1;
            l.counters.dropped_invalid += 1;
        }
    }

    /// Records what a worker sent out of `slot` (after `sendmmsg`).
    #[inline]
    pub fn on_sent(&mut self, slot: usize, socket: Socket, rtcp: bool, packets: u64, bytes: u64) {
        if let Some(l) = self.legs.get_mut(slot).and_then(Option::as_mut) {
            l.counters.packets_out += packets;
            l.counters.bytes_out += bytes;
            if rtcp || (socket == Socket::Rtcp) {
                l.counters.rtcp_out += packets;
            }
        }
    }

    /// Records packets that could not be sent out of `slot`.
    pub fn on_send_error(&mut self, slot: usize, packets: u64) {
        if let Some(l) = self.legs.get_mut(slot).and_then(Option::as_mut) {
            l.counters.send_errors += packets;
        }
    }

    /// Media timeouts: a spliced leg silent for its timeout is reported once (re-armed by the
    /// next packet or splice).
    pub fn tick(&mut self, now_ns: u64, events: &mut Vec<BridgeEvent>) {
        for l in self.legs.iter_mut().flatten() {
            if l.splice.is_none() || l.timeout_reported || l.media_timeout_ns == 0 {
                continue;
            }
            if now_ns.saturating_sub(l.armed_at_ns) >= l.media_timeout_ns {
                l.timeout_reported = true;
                events.push(BridgeEvent::MediaTimeout {
                    leg: l.id,
                    idle: l
                        .last_rtp_ns
                        .map(|t| Duration::from_nanos(now_ns.saturating_sub(t))),
                });
            }
        }
    }

    /// A snapshot of a leg's statistics.
    pub fn stats(&self, id: LegId, now_ns: u64) -> Result<LegStats, CoreError> {
        let slot = self.slot(id)?;
        let l = self.legs[slot].as_ref().ok_or(CoreError::NoSuchLeg(id))?;
        Ok(LegStats {
            leg: l.id,
            policy: l.latch.as_ref().map(|x| x.spec().policy),
            remote: l.latch.as_ref().and_then(Latch::locked),
            splice: l.splice,
            counters: l.counters,
            ssrc: l.stream.ssrc(),
            rtp_packets: l.stream.packets(),
            rtp_expected: l.stream.expected(),
            rtp_lost: l.stream.lost(),
            rtp_reordered: l.stream.reordered(),
            jitter: l.stream.jitter(),
            idle: l
                .last_rtp_ns
                .map(|t| Duration::from_nanos(now_ns.saturating_sub(t))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A minimal valid RTP packet (version 2, PT 0) with a 160-byte payload.
    fn rtp(ssrc: u32, seq: u16, ts: u32) -> Vec<u8> {
        let mut p = vec![0x80, 0x00];
        p.extend(seq.to_be_bytes());
        p.extend(ts.to_be_bytes());
        p.extend(ssrc.to_be_bytes());
        p.extend(std::iter::repeat_n(0xd5, 160));
        p
    }

    /// An RTCP receiver report with no report blocks.
    fn rtcp_rr(ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 201, 0, 1];
        p.extend(ssrc.to_be_bytes());
        p
    }

    const MS: u64 = 1_000_000;

    fn opts(rtcp_mux: bool, media_timeout: Duration) -> LegOptions {
        LegOptions {
            rtcp_mux,
            srtp: false,
            media_timeout,
        }
    }

    const A_REMOTE: &str = "192.0.2.1:4000";
    const B_REMOTE: &str = "198.51.100.2:5000";

    struct Fixture {
        core: Core,
        a: (LegId, usize),
        b: (LegId, usize),
        out: Output,
    }

    impl Fixture {
        fn new() -> Self {
            let mut core = Core::new(8000);
            let a = (
                LegId(1),
                core.add_leg(LegId(1), opts(false, Duration::from_secs(5)), 0),
            );
            let b = (
                LegId(2),
                core.add_leg(LegId(2), opts(false, Duration::from_secs(5)), 0),
            );
            Fixture {
                core,
                a,
                b,
                out: Output::default(),
            }
        }

        fn remotes(&mut self) {
            self.core
                .set_remote(self.a.0, RemoteSpec::exact(sa(A_REMOTE)), 0)
                .unwrap();
            self.core
                .set_remote(
                    self.b.0,
                    RemoteSpec::learning(Some(sa(B_REMOTE)), Duration::from_secs(3)),
                    0,
                )
                .unwrap();
        }

        fn send(
            &mut self,
            slot: usize,
            socket: Socket,
            src: &str,
            pkt: &[u8],
            now: u64,
        ) -> Outcome {
            self.core
                .on_packet(slot, socket, sa(src), pkt, now, &mut self.out)
        }
    }

    #[test]
    fn media_before_signaling_or_splice_is_dropped() {
        let mut f = Fixture::new();
        let p = rtp(1, 1, 0);
        assert_eq!(
            f.send(f.a.1, Socket::Rtp, A_REMOTE, &p, 0),
            Outcome::Drop(DropReason::NoRemote)
        );
        f.remotes();
        assert_eq!(
            f.send(f.a.1, Socket::Rtp, A_REMOTE, &p, 0),
            Outcome::Drop(DropReason::NotSpliced)
        );
        assert!(f.out.targets.is_empty());
        let s = f.core.stats(f.a.0, 0).unwrap();
        assert_eq!(s.counters.dropped_no_remote, 1);
        assert_eq!(s.counters.dropped_not_spliced, 1);
    }

    #[test]
    fn full_duplex_forwards_both_ways_to_the_peers_remote() {
        let mut f = Fixture::new();
        f.remotes();
        f.core
            .splice(SpliceId(1), &[f.a.0, f.b.0], SpliceMode::Full, 0)
            .unwrap();
        // B latches on its first packet (NAT: port differs from the signalled one).
        let b_nat = "198.51.100.2:6666";
        assert_eq!(
            f.send(f.b.1, Socket::Rtp, b_nat, &rtp(2, 1, 0), MS),
            Outcome::Forward
        );
        assert_eq!(
            f.out.targets,
            vec![Target {
                slot: f.a.1,
                socket: Socket::Rtp,
                dst: sa(A_REMOTE)
            }]
        );
        assert!(f.out.events.contains(&BridgeEvent::Latched {
            leg: f.b.0,
            remote: sa(b_nat)
        }));
        assert_eq!(
            f.send(f.a.1, Socket::Rtp, A_REMOTE, &rtp(1, 1, 0), MS),
            Outcome::Forward
        );
        assert_eq!(
            f.out.targets,
            vec![Target {
                slot: f.b.1,
                socket: Socket::Rtp,
                dst: sa(b_nat)
            }]
        );
    }

    #[test]
    fn rtp_bleed_and_inject_never_forward_and_never_redirect() {
        let mut f = Fixture::new();
        f.remotes();
        f.core
            .splice(SpliceId(1), &[f.a.0, f.b.0], SpliceMode::Full, 0)
            .unwrap();
        assert_eq!(
            f.send(f.b.1, Socket::Rtp, B_REMOTE, &rtp(2, 1, 0), MS),
            Outcome::Forward
        );
        // Within the learning window, from another port of the same host and from elsewhere.
        for src in ["198.51.100.2:5002", "203.0.113.66:5000"] {
            assert_eq!(
                f.send(f.b.1, Socket::Rtp, src, &rtp(2, 2, 160), 2 * MS),
                Outcome::Drop(DropReason::WrongSource)
            );
            assert!(f.out.targets.is_empty());
            assert_eq!(
                f.send(f.a.1, Socket::Rtp, src, &rtp(1, 1, 0), 2 * MS),
                Outcome::Drop(DropReason::WrongSource),
                "exact leg refuses it too"
            );
        }
        // The reverse direction still goes to the genuine remote.
        assert_eq!(
            f.send(f.a.1, Socket::Rtp, A_REMOTE, &rtp(1, 2, 160), 3 * MS),
            Outcome::Forward
        );
        assert_eq!(f.out.targets[0].dst, sa(B_REMOTE));
        assert_eq!(
            f.core
                .stats(f.b.0, 0)
                .unwrap()
                .counters
                .dropped_wrong_source,
            2
        );
    }

    #[test]
    fn invalid_packets_are_counted_and_dropped() {
        let mut f = Fixture::new();
        f.remotes();
        f.core
            .splice(SpliceId(1), &[f.a.0, f.b.0], SpliceMode::Full, 0)
            .unwrap();
        let mut bad_version = rtp(1, 1, 0);
        bad_version[0] = 0x40;
        let mut csrc_overrun = rtp(1, 1, 0);
        csrc_overrun.truncate(12);
        csrc_overrun[0] = 0x8f;
        let mut bad_padding = rtp(1, 1, 0);
        bad_padding[0] |= 0x20;
        *bad_padding.last_mut().unwrap() = 0;
        for p in [vec![], vec![0x80], bad_version, csrc_overrun, bad_padding] {
            assert_eq!(
                f.send(f.a.1, Socket::Rtp, A_REMOTE, &p, MS),
                Outcome::Drop(DropReason::Invalid)
            );
        }
        assert_eq!(f.core.stats(f.a.0, 0).unwrap().counters.dropped_invalid, 5);
        // RTP on the RTCP socket is not RTCP.
        assert_eq!(
            f.send(f.a.1, Socket::Rtcp, "192.0.2.1:4001", &rtp(1, 2, 0), MS),
            Outcome::Drop(DropReason::Invalid)
        );
    }

    #[test]
    fn rtcp_goes_to_the_peers_rtcp_port_or_rtp_port_with_mux() {
        let mut f = Fixture::new();
        let c = (
            LegId(3),
            f.core.add_leg(LegId(3), opts(true, Duration::ZERO), 0),
        );
        f.remotes();
        f.core
            .set_remote(c.0, RemoteSpec::exact(sa("203.0.113.9:7000")), 0)
            .unwrap();
        f.core
            .splice(SpliceId(1), &[f.a.0, f.b.0, c.0], SpliceMode::Full, 0)
            .unwrap();
        assert_eq!(
            f.send(f.a.1, Socket::Rtcp, "192.0.2.1:4001", &rtcp_rr(1), MS),
            Outcome::Forward
        );
        assert_eq!(
            f.out.targets,
            vec![
                Target {
                    slot: f.b.1,
                    socket: Socket::Rtcp,
                    dst: sa("198.51.100.2:5001")
                },
                Target {
                    slot: c.1,
                    socket: Socket::Rtp,
                    dst: sa("203.0.113.9:7000")
                },
            ]
        );
        // RTCP from the wrong host is refused.
        assert_eq!(
            f.send(f.a.1, Socket::Rtcp, "192.0.2.99:4001", &rtcp_rr(1), MS),
            Outcome::Drop(DropReason::WrongSource)
        );
        // Muxed RTCP on C's RTP socket is recognised and forwarded to A's RTCP port.
        assert_eq!(
            f.send(c.1, Socket::Rtp, "203.0.113.9:7000", &rtcp_rr(3), MS),
            Outcome::Forward
        );
        assert!(f.out.targets.contains(&Target {
            slot: f.a.1,
            socket: Socket::Rtcp,
            dst: sa("192.0.2.1:4001")
        }));
    }

    #[test]
    fn a_two_port_leg_whose_remote_muxes_sends_and_takes_rtcp_on_its_rtp_port() {
        let mut f = Fixture::new();
        f.remotes();
        // A was provisioned with an RTCP port, then negotiated rtcp-mux.
        f.core
            .set_remote(
                f.a.0,
                RemoteSpec::exact(sa(A_REMOTE)).with_rtcp_mux(true),
                0,
            )
            .unwrap();
        f.core
            .splice(SpliceId(1), &[f.a.0, f.b.0], SpliceMode::Full, 0)
            .unwrap();
        // B latches from its RTP port, then its RTCP (from B's RTCP port) goes to A's RTP port
        // out of A's RTP socket.
        assert_eq!(
            f.send(f.b.1, Socket::Rtp, B_REMOTE, &rtp(2, 1, 0), MS),
            Outcome::Forward
        );
        assert_eq!(
            f.send(f.b.1, Socket::Rtcp, "198.51.100.2:5001", &rtcp_rr(2), MS),
            Outcome::Forward
        );
        assert_eq!(
            f.out.targets,
            vec![Target {
                slot: f.a.1,
                socket: Socket::Rtp,
                dst: sa(A_REMOTE)
            }]
        );
        // A's muxed RTCP (on the RTP socket) goes to B's RTCP port.
        assert_eq!(
            f.send(f.a.1, Socket::Rtp, A_REMOTE, &rtcp_rr(1), MS),
            Outcome::Forward
        );
        assert_eq!(
            f.out.targets,
            vec![Target {
                slot: f.b.1,
                socket: Socket::Rtcp,
                dst: sa("198.51.100.2:5001")
            }]
        );
        // Nothing is taken on A's unused RTCP port, not even from A's host.
        assert_eq!(
            f.send(f.a.1, Socket::Rtcp, "192.0.2.1:4001", &rtcp_rr(1), MS),
            Outcome::Drop(DropReason::WrongSource)
        );
        assert!(f.out.targets.is_empty());
    }

    #[test]
    fn an_asymmetric_remote_is_sent_to_at_its_signalled_ports_whatever_it_sends_from() {
        let mut f = Fixture::new();
        f.remotes();
        f.core
            .set_remote(f.a.0, RemoteSpec::asymmetric(sa(A_REMOTE)), 0)
            .unwrap();
        f.core
            .splice(SpliceId(1), &[f.a.0, f.b.0], SpliceMode::Full, 0)
            .unwrap();
        // A sends from another port of its host: accepted, forwarded to B.
        assert_eq!(
            f.send(f.a.1, Socket::Rtp, "192.0.2.1:6000", &rtp(1, 1, 0), MS),
            Outcome::Forward
        );
        assert_eq!(f.out.targets[0].dst, sa(B_REMOTE));
        assert_eq!(
            f.send(f.a.1, Socket::Rtcp, "192.0.2.1:6001", &rtcp_rr(1), MS),
            Outcome::Forward
        );
        // B's media and RTCP go to A's signalled ports, never to where A sent from.
        assert_eq!(
            f.send(f.b.1, Socket::Rtp, B_REMOTE, &rtp(2, 1, 0), MS),
            Outcome::Forward
        );
        assert_eq!(f.out.targets[0].dst, sa(A_REMOTE));
        assert_eq!(
            f.send(f.b.1, Socket::Rtcp, "198.51.100.2:5001", &rtcp_rr(2), MS),
            Outcome::Forward
        );
        assert_eq!(f.out.targets[0].dst, sa("192.0.2.1:4001"));
        // A third address is neither forwarded nor redirects anything.
        for (socket, pkt) in [(Socket::Rtp, rtp(1, 2, 160)), (Socket::Rtcp, rtcp_rr(1))] {
            assert_eq!(
                f.send(f.a.1, socket, "203.0.113.66:4000", &pkt, MS),
                Outcome::Drop(DropReason::WrongSource)
            );
            assert!(f.out.targets.is_empty());
        }
        assert_eq!(
            f.send(f.b.1, Socket::Rtp, B_REMOTE, &rtp(2, 2, 160), MS),
            Outcome::Forward
        );
        assert_eq!(f.out.targets[0].dst, sa(A_REMOTE));
        assert_eq!(f.core.stats(f.a.0, MS).unwrap().remote, None);
    }

    #[test]
    fn srtp_legs_relay_encrypted_rtcp_that_plain_legs_refuse() {
        // SRTCP: a clear RR header, encrypted rest, then the 4-byte E+index and a 10-byte tag,
        // so the RTCP length no longer adds up to the datagram.
        let mut srtcp = rtcp_rr(1);
        srtcp.extend([0x80, 0, 0, 1]);
        srtcp.extend([0xaa; 10]);
        let mut f = Fixture::new();
        f.remotes();
        f.core
            .splice(SpliceId(1), &[f.a.0, f.b.0], SpliceMode::Full, 0)
            .unwrap();
        assert_eq!(
            f.send(f.a.1, Socket::Rtcp, "192.0.2.1:4001", &srtcp, MS),
            Outcome::Drop(DropReason::Invalid)
        );
        let mut core = Core::new(8000);
        let srtp = LegOptions {
            srtp: true,
            ..LegOptions::default()
        };
        let a = core.add_leg(LegId(1), srtp, 0);
        core.add_leg(LegId(2), srtp, 0);
        core.set_remote(LegId(1), RemoteSpec::exact(sa(A_REMOTE)), 0)
            .unwrap();
        core.set_remote(LegId(2), RemoteSpec::exact(sa(B_REMOTE)), 0)
            .unwrap();
        core.splice(SpliceId(1), &[LegId(1), LegId(2)], SpliceMode::Full, 0)
            .unwrap();
        let mut out = Output::default();
        let o = core.on_packet(a, Socket::Rtcp, sa("192.0.2.1:4001"), &srtcp, MS, &mut out);
        assert_eq!(o, Outcome::Forward);
        assert_eq!(out.targets[0].dst, sa("198.51.100.2:5001"));
    }

    #[test]
    fn multi_party_fans_out_to_every_other_leg() {
        let mut f = Fixture::new();
        let c = (
            LegId(3),
            f.core.add_leg(LegId(3), opts(false, Duration::ZERO), 0),
        );
        f.remotes();
        f.core
            .set_remote(c.0, RemoteSpec::exact(sa("203.0.113.9:7000")), 0)
            .unwrap();
        f.core
            .splice(SpliceId(7), &[f.a.0, f.b.0, c.0], SpliceMode::Full, 0)
            .unwrap();
        assert_eq!(
            f.send(f.a.1, Socket::Rtp, A_REMOTE, &rtp(1, 1, 0), MS),
            Outcome::Forward
        );
        let slots: Vec<usize> = f.out.targets.iter().map(|t| t.slot).collect();
        assert_eq!(slots, vec![f.b.1, c.1]);
    }

    #[test]
    fn half_duplex_gives_the_floor_to_one_talker() {
        let mut f = Fixture::new();
        f.remotes();
        let id = SpliceId(1);
        f.core
            .splice(
                id,
                &[f.a.0, f.b.0],
                SpliceMode::HalfDuplex {
                    release_after: Duration::from_millis(300),
                },
                0,
            )
            .unwrap();
        assert_eq!(
            f.send(f.a.1, Socket::Rtp, A_REMOTE, &rtp(1, 1, 0), MS),
            Outcome::Forward
        );
        assert_eq!(f.core.floor_holder(id).unwrap(), Some(f.a.0));
        assert_eq!(
            f.send(f.b.1, Socket::Rtp, B_REMOTE, &rtp(2, 1, 0), 100 * MS),
            Outcome::Drop(DropReason::NoFloor)
        );
        assert_eq!(
            f.send(f.b.1, Socket::Rtp, B_REMOTE, &rtp(2, 2, 0), 302 * MS),
            Outcome::Forward,
            "A silent 301 ms"
        );
        f.core.grant_floor(id, Some(f.a.0), 303 * MS).unwrap();
        assert_eq!(
            f.send(f.b.1, Socket::Rtp, B_REMOTE, &rtp(2, 3, 0), 2000 * MS),
            Outcome::Drop(DropReason::NoFloor)
        );
        assert_eq!(f.core.stats(f.b.0, 0).unwrap().counters.dropped_no_floor, 2);
        assert!(matches!(
            f.core.grant_floor(id, Some(LegId(99)), 0),
            Err(CoreError::NoSuchLeg(_))
        ));
    }

    #[test]
    fn unsplice_stops_and_splice_again_resumes() {
        let mut f = Fixture::new();
        f.remotes();
        f.core
            .splice(SpliceId(1), &[f.a.0, f.b.0], SpliceMode::Full, 0)
            .unwrap();
        assert!(matches!(
            f.core
                .splice(SpliceId(2), &[f.a.0, f.b.0], SpliceMode::Full, 0),
            Err(CoreError::AlreadySpliced(..))
        ));
        assert_eq!(f.core.unsplice(SpliceId(1)).unwrap(), vec![f.a.0, f.b.0]);
        assert_eq!(
            f.send(f.a.1, Socket::Rtp, A_REMOTE, &rtp(1, 1, 0), MS),
            Outcome::Drop(DropReason::NotSpliced)
        );
        assert!(matches!(
            f.core
                .splice(SpliceId(3), &[f.a.0, f.a.0], SpliceMode::Full, 0),
            Err(CoreError::TooFewLegs)
        ));
        f.core
            .splice(SpliceId(2), &[f.a.0, f.b.0], SpliceMode::Full, 0)
            .unwrap();
        assert_eq!(
            f.send(f.a.1, Socket::Rtp, A_REMOTE, &rtp(1, 2, 160), MS),
            Outcome::Forward
        );
    }

    #[test]
    fn removing_a_leg_dissolves_a_two_leg_splice_but_not_a_larger_one() {
        let mut f = Fixture::new();
        f.remotes();
        let c = LegId(3);
        f.core.add_leg(c, opts(false, Duration::ZERO), 0);
        f.core
            .splice(SpliceId(1), &[f.a.0, f.b.0, c], SpliceMode::Full, 0)
            .unwrap();
        assert_eq!(f.core.remove_leg(c).unwrap().1, None);
        assert_eq!(f.core.remove_leg(f.b.0).unwrap().1, Some(SpliceId(1)));
        assert_eq!(f.core.stats(f.a.0, 0).unwrap().splice, None);
    }

    #[test]
    fn media_timeout_is_reported_once_and_rearmed_by_media() {
        let mut f = Fixture::new();
        f.remotes();
        f.core
            .splice(SpliceId(1), &[f.a.0, f.b.0], SpliceMode::Full, 0)
            .unwrap();
        f.core.tick(4_999 * MS, &mut f.out.events);
        assert!(f.out.events.is_empty());
        f.core.tick(5_000 * MS, &mut f.out.events);
        assert_eq!(f.out.events.len(), 2, "both legs silent since the splice");
        f.core.tick(9_000 * MS, &mut f.out.events);
        assert_eq!(f.out.events.len(), 2, "reported once");
        f.out.events.clear();
        f.send(f.a.1, Socket::Rtp, A_REMOTE, &rtp(1, 1, 0), 9_000 * MS);
        f.out.events.clear();
        f.core.tick(14_000 * MS, &mut f.out.events);
        assert_eq!(
            f.out.events,
            vec![BridgeEvent::MediaTimeout {
                leg: f.a.0,
                idle: Some(Duration::from_secs(5))
            }]
        );
    }

    #[test]
    fn stats_count_accepted_media_and_loss() {
        let mut f = Fixture::new();
        f.remotes();
        f.core
            .splice(SpliceId(1), &[f.a.0, f.b.0], SpliceMode::Full, 0)
            .unwrap();
        for (i, seq) in [1u16, 2, 4, 5].iter().enumerate() {
            f.send(
                f.a.1,
                Socket::Rtp,
                A_REMOTE,
                &rtp(0xfeed, *seq, *seq as u32 * 160),
                (i as u64 + 1) * 20 * MS,
            );
        }
        let s = f.core.stats(f.a.0, 200 * MS).unwrap();
        assert_eq!(s.counters.packets_in, 4);
        assert_eq!(s.counters.bytes_in, 4 * 172);
        assert_eq!(s.ssrc, Some(0xfeed));
        assert_eq!(s.rtp_expected, 5);
        assert_eq!(s.rtp_lost, 1);
        assert_eq!(s.remote, Some(sa(A_REMOTE)));
        assert_eq!(s.idle, Some(Duration::from_millis(120)));
    }

    #[test]
    fn a_fork_sends_each_accepted_packet_unchanged_out_of_the_receiving_socket() {
        let mut f = Fixture::new();
        f.remotes();
        f.core
            .splice(SpliceId(1), &[f.a.0, f.b.0], SpliceMode::Full, 0)
            .unwrap();
        let rec = sa("192.0.2.200:9000");
        let rec_rtcp = sa("192.0.2.200:9001");
        f.core
            .set_fork(
                f.a.0,
                Some(Fork {
                    rtp: rec,
                    rtcp: Some(rec_rtcp),
                }),
            )
            .unwrap();
        f.core.set_fork(f.b.0, Some(Fork::to(rec))).unwrap();
        // A's RTP: to B's remote out of B's socket, and to the recorder out of A's own.
        assert_eq!(
            f.send(f.a.1, Socket::Rtp, A_REMOTE, &rtp(1, 1, 0), MS),
            Outcome::Forward
        );
        assert_eq!(
            f.out.targets,
            vec![
                Target {
                    slot: f.b.1,
                    socket: Socket::Rtp,
                    dst: sa(B_REMOTE)
                },
                Target {
                    slot: f.a.1,
                    socket: Socket::Rtp,
                    dst: rec
                },
            ]
        );
        // RTCP goes to the recorder's RTCP address, out of the RTCP socket it came in on.
        assert_eq!(
            f.send(f.a.1, Socket::Rtcp, "192.0.2.1:4001", &rtcp_rr(1), MS),
            Outcome::Forward
        );
        assert_eq!(
            f.out.targets.last(),
            Some(&Target {
                slot: f.a.1,
                socket: Socket::Rtcp,
                dst: rec_rtcp
            })
        );
        // B's fork has no RTCP address: its RTCP goes to the one recorder address.
        assert_eq!(
            f.send(f.b.1, Socket::Rtcp, "198.51.100.2:5001", &rtcp_rr(2), MS),
            Outcome::Forward
        );
        assert_eq!(f.out.targets.last().map(|t| t.dst), Some(rec));
        // Dropped packets are not forked.
        assert_eq!(
            f.send(f.a.1, Socket::Rtp, "203.0.113.66:4000", &rtp(1, 2, 160), MS),
            Outcome::Drop(DropReason::WrongSource)
        );
        assert!(f.out.targets.is_empty());
        assert_eq!(f.core.stats(f.a.0, MS).unwrap().counters.forked, 2);
        // Stopping the fork: the next packet only goes to the peer.
        f.core.set_fork(f.a.0, None).unwrap();
        f.send(f.a.1, Socket::Rtp, A_REMOTE, &rtp(1, 3, 320), MS);
        assert_eq!(f.out.targets.len(), 1);
        assert!(matches!(
            f.core.set_fork(LegId(99), None),
            Err(CoreError::NoSuchLeg(_))
        ));
    }

    #[test]
    fn a_fork_adds_no_allocation_once_the_target_list_has_room() {
        let mut f = Fixture::new();
        f.remotes();
        f.core
            .splice(SpliceId(1), &[f.a.0, f.b.0], SpliceMode::Full, 0)
            .unwrap();
        f.core
            .set_fork(f.a.0, Some(Fork::to(sa("192.0.2.200:9000"))))
            .unwrap();
        f.out.targets = Vec::with_capacity(4);
        let cap = f.out.targets.capacity();
        let ptr = f.out.targets.as_ptr();
        for seq in 1..100u16 {
            f.send(f.a.1, Socket::Rtp, A_REMOTE, &rtp(1, seq, 0), MS);
            assert_eq!(f.out.targets.len(), 2);
        }
        assert_eq!(f.out.targets.capacity(), cap);
        assert_eq!(f.out.targets.as_ptr(), ptr, "the same buffer, reused");
    }

    #[test]
    fn resplice_turns_a_call_multi_party_and_splits_it_in_one_step() {
        let mut f = Fixture::new();
        let c = (
            LegId(3),
            f.core.add_leg(LegId(3), opts(false, Duration::ZERO), 0),
        );
        f.remotes();
        f.core
            .set_remote(c.0, RemoteSpec::exact(sa("203.0.113.9:7000")), 0)
            .unwrap();
        f.core
            .splice(SpliceId(1), &[f.a.0, f.b.0], SpliceMode::Full, 0)
            .unwrap();
        // A third party joins: the two-party splice becomes a three-party one.
        f.core
            .resplice(
                &[SpliceId(1)],
                &[(SpliceId(2), vec![f.a.0, f.b.0, c.0], SpliceMode::Full)],
                MS,
            )
            .unwrap();
        f.send(f.a.1, Socket::Rtp, A_REMOTE, &rtp(1, 1, 0), MS);
        let slots: Vec<usize> = f.out.targets.iter().map(|t| t.slot).collect();
        assert_eq!(slots, vec![f.b.1, c.1]);
        f.send(c.1, Socket::Rtp, "203.0.113.9:7000", &rtp(3, 1, 0), MS);
        let slots: Vec<usize> = f.out.targets.iter().map(|t| t.slot).collect();
        assert_eq!(slots, vec![f.a.1, f.b.1], "the new party is heard by both");
        // Refusals change nothing.
        for (remove, add, err) in [
            (
                vec![SpliceId(9)],
                vec![],
                CoreError::NoSuchSplice(SpliceId(9)),
            ),
            (
                vec![SpliceId(2)],
                vec![
                    (SpliceId(3), vec![f.a.0, c.0], SpliceMode::Full),
                    (SpliceId(4), vec![f.b.0, c.0], SpliceMode::Full),
                ],
                CoreError::LegInTwoGroups(c.0),
            ),
            (
                vec![SpliceId(2)],
                vec![(SpliceId(3), vec![f.a.0, f.a.0], SpliceMode::Full)],
                CoreError::TooFewLegs,
            ),
            (
                vec![],
                vec![(SpliceId(3), vec![f.a.0, f.b.0], SpliceMode::Full)],
                CoreError::AlreadySpliced(f.a.0, SpliceId(2)),
            ),
            (
                vec![SpliceId(2)],
                vec![
                    (SpliceId(3), vec![f.a.0, f.b.0], SpliceMode::Full),
                    (SpliceId(3), vec![c.0, LegId(1)], SpliceMode::Full),
                ],
                CoreError::SpliceExists(SpliceId(3)),
            ),
        ] {
            assert_eq!(f.core.resplice(&remove, &add, MS), Err(err));
            f.send(f.a.1, Socket::Rtp, A_REMOTE, &rtp(1, 2, 0), MS);
            assert_eq!(f.out.targets.len(), 2, "still three-party");
        }
        // Split: A with C, B alone.
        let d = (
            LegId(4),
            f.core.add_leg(LegId(4), opts(false, Duration::ZERO), 0),
        );
        f.core
            .set_remote(d.0, RemoteSpec::exact(sa("203.0.113.10:7000")), 0)
            .unwrap();
        f.core
            .resplice(
                &[SpliceId(2)],
                &[
                    (SpliceId(5), vec![f.a.0, c.0], SpliceMode::Full),
                    (SpliceId(6), vec![f.b.0, d.0], SpliceMode::Full),
                ],
                2 * MS,
            )
            .unwrap();
        f.send(f.a.1, Socket::Rtp, A_REMOTE, &rtp(1, 3, 0), 2 * MS);
        let slots: Vec<usize> = f.out.targets.iter().map(|t| t.slot).collect();
        assert_eq!(slots, vec![c.1]);
        f.send(f.b.1, Socket::Rtp, B_REMOTE, &rtp(2, 1, 0), 2 * MS);
        let slots: Vec<usize> = f.out.targets.iter().map(|t| t.slot).collect();
        assert_eq!(slots, vec![d.1]);
        assert_eq!(
            f.core.stats(c.0, 0).unwrap().splice,
            Some(SpliceId(5)),
            "the old splice is gone"
        );
        assert!(matches!(
            f.core.unsplice(SpliceId(2)),
            Err(CoreError::NoSuchSplice(_))
        ));
    }
}
