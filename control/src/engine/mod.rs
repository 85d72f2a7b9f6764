//! The session engine: calls, their sides (tags), media sections, legs and pinholes, as a plain
//! state machine. Signaling (`offer`, `answer`, `delete`, `query`), media events from the bridge
//! and timer expiries come in with the current time; replies come back from the calls, CDRs
//! come out through [`Engine::poll_event`], and the next timer through
//! [`Engine::poll_timeout`]. It owns no socket, thread or clock; it drives the bridge and the
//! XDP data plane through the [`MediaPlane`] and [`Dataplane`] traits, so tests run it against
//! in-memory fakes in virtual time.
//!
//! A call has two sides: A, the original offerer (its from-tag), and B, the answerer (its
//! to-tag). Every media section is a *pair* of legs: the leg facing A receives A's media and
//! sends B's to A; the leg facing B the reverse. An offer advertises the leg facing the other
//! side; an answer the leg facing the offerer. Media flows (pinholes open, legs spliced) from the
//! answer until the call ends; at the end pinholes close and legs are unspliced at once, and
//! legs are released after the delete delay (so retransmitted requests and late queries still
//! find the call, and late packets hit a closed pinhole rather than a reused port).

mod fast_path;
pub mod media;
pub mod policy;
pub mod service;
pub mod types;

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    net::SocketAddr,
    time::{Duration, Instant},
};

use rtpedge_bridge::{BridgeError, BridgeEvent, LegId, LegInfo, LegRequest, SpliceId, SpliceMode};
use rtpedge_dataplane::{Dataplane, DataplaneError, Dscp, PinholeSpec, RateLimit};

pub use self::media::{FakeMedia, MediaPlane};
use self::policy::{dscp_for, enforcement};
pub use self::types::*;

/// Engine configuration.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// A call offered and never answered ends after this (`offer-timeout`).
    pub offer_timeout: Duration,
    /// A call with no media in either direction for this long ends (`media-timeout`).
    pub media_timeout: Duration,
    /// The same for calls on hold (`silent-timeout`).
    pub silent_timeout: Duration,
    /// Maximum call duration from answer (`final-timeout`); None: unlimited.
    pub final_timeout: Option<Duration>,
    /// How long an ended call's legs and pinholes are kept before release.
    pub delete_delay: Duration,
    /// How long after signaling a NAT'ed remote may be learned.
    pub learn_window: Duration,
    /// DSCP of audio (EF by default).
    pub dscp_audio: Option<u8>,
    /// DSCP of video (AF41 by default).
    pub dscp_video: Option<u8>,
    /// New calls are refused (`load limit`) beyond this many.
    pub max_calls: usize,
    /// Forward answered calls' RTP in the kernel once media flows both ways (the data plane's
    /// fast path; see `fast_path.rs`). Only meaningful with the kernel data plane attached.
    pub fast_path: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            offer_timeout: Duration::from_secs(120),
            media_timeout: Duration::from_secs(60),
            silent_timeout: Duration::from_secs(3600),
            final_timeout: None,
            delete_delay: Duration::from_secs(30),
            learn_window: Duration::from_secs(3),
            dscp_audio: Some(46),
            dscp_video: Some(34),
            max_calls: 100_000,
            fast_path: false,
        }
    }
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No such call.
    #[error("Unknown call-id")]
    UnknownCall,
    /// The tag belongs to neither side of the call.
    #[error("Unknown tag {0:?}")]
    UnknownTag(String),
    /// The call has ended (it is kept for the delete delay).
    #[error("call has ended")]
    CallEnded,
    /// The call has not been answered yet (no media to change).
    #[error("call has not been answered yet")]
    NotAnswered,
    /// Configured limits reached.
    #[error("load limit reached")]
    LoadLimit,
    /// The request is inconsistent with the call.
    #[error("{0}")]
    Invalid(String),
    /// The bridge refused.
    #[error("media: {0}")]
    Media(#[from] BridgeError),
    /// The data plane refused.
    #[error("data plane: {0}")]
    Dataplane(#[from] DataplaneError),
}

/// Something the engine's owner must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineEvent {
    /// A call was answered: write its CDR row now (completed at the end).
    CdrOpened(Cdr),
    /// A call ended: complete its CDR row.
    CdrClosed(Cdr),
    /// An ended call's legs and pinholes were released (after the delete delay).
    Released {
        /// SIP Call-ID.
        call_id: String,
        /// Packets dropped at its closed pinholes since it ended (media after BYE).
        packets_after_end: u64,
    },
}

/// One side's leg of a media pair.
#[derive(Clone, Debug)]
struct Side {
    leg: LegInfo,
    /// What this side signalled (its SDP).
    remote: Option<MediaDesc>,
    /// RTCP is multiplexed on this leg's RTP port (as negotiated: the leg may have an RTCP
    /// port it does not use).
    rtcp_mux: bool,
    /// Pinholes exist (open or closed) for this leg.
    pinholes: bool,
    /// Whether this side's media is forwarded in the kernel.
    fast: fast_path::FastPathState,
}

#[derive(Clone, Debug)]
struct Pair {
    kind: String,
    protocol: String,
    codec: Option<String>,
    /// `sides[0]` faces A, `sides[1]` faces B.
    sides: [Side; 2],
    /// Parties added during the call (service `add-party`), by name.
    parties: Vec<(String, Side)>,
    /// The splices of the pair's legs: one normally; several after a split.
    splices: Vec<SpliceId>,
    disabled: bool,
    dscp: Option<u8>,
    /// Rate limit of the pair's pinholes (service `qos-upgrade`).
    rate: Option<RateLimit>,
    /// Its legs fork to a recorder (service `fork`): the bridge must see every packet.
    forked: bool,
    /// Set by the last offer: the offerer's rtcp-mux in the answer regardless of what the
    /// answerer says (see [`policy::offer_mux`]); `None`: the answerer decides.
    mux_fixed: Option<bool>,
}

impl Pair {
    /// The sides facing A and B, then the added parties.
    fn all_sides(&self) -> impl Iterator<Item = &Side> {
        self.sides.iter().chain(self.parties.iter().map(|(_, s)| s))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Offered,
    Answered,
    Ended,
}

#[derive(Clone, Debug)]
struct Call {
    id: String,
    tags: [Option<String>; 2],
    created: Timestamp,
    last_signal: Timestamp,
    answered: Option<Timestamp>,
    ended: Option<(Timestamp, EndReason)>,
    release_at: Option<Instant>,
    state: State,
    pairs: Vec<Pair>,
    flags: [Flags; 2],
    account: Option<String>,
    tos: Option<u8>,
    /// Report frozen at the end (what `delete` and later `query` return).
    final_report: Option<CallReport>,
    /// Packets dropped at the call's closed pinholes when it ended.
    closed_drops_at_end: u64,
    /// Services inserted, in order (the CDR's `services`).
    services: Vec<String>,
    /// Parties added so far (names `p1`, `p2`, ... unless given).
    parties_added: u32,
}

impl Call {
    fn side_of(&self, tag: &str) -> Option<usize> {
        self.tags.iter().position(|t| t.as_deref() == Some(tag))
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            State::Offered => "offered",
            State::Answered => "answered",
            State::Ended => "ended",
        }
    }
}

/// The session engine.
pub struct Engine<M: MediaPlane, D: Dataplane> {
    cfg: EngineConfig,
    media: M,
    dp: D,
    calls: HashMap<String, Call>,
    legs: HashMap<LegId, String>,
    timers: BinaryHeap<Reverse<(Instant, String)>>,
    events: VecDeque<EngineEvent>,
    stats: EngineStats,
}

/// Counters of the engine since start (for `/metrics`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Calls created by an offer.
    pub calls_created: u64,
    /// Calls answered.
    pub calls_answered: u64,
    /// Offers refused because of the call limit.
    pub load_limited: u64,
    /// Calls ended, by reason.
    pub ended: Vec<(EndReason, u64)>,
}

impl<M: MediaPlane, D: Dataplane> Engine<M, D> {
    /// An engine with no calls.
    pub fn new(cfg: EngineConfig, media: M, dp: D) -> Self {
        Self {
            cfg,
            media,
            dp,
            calls: HashMap::new(),
            legs: HashMap::new(),
            timers: BinaryHeap::new(),
            events: VecDeque::new(),
            stats: EngineStats::default(),
        }
    }

    /// Counters since start.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The media plane (tests inspect the fake).
    pub fn media(&self) -> &M {
        &self.media
    }

    /// The media plane, mutably (tests set counters on the fake).
    pub fn media_mut(&mut self) -> &mut M {
        &mut self.media
    }

    /// The data plane.
    pub fn dataplane(&self) -> &D {
        &self.dp
    }

    /// The data plane, mutably.
    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    /// Configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Calls currently known (including ended ones within their delete delay).
    pub fn call_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.calls.keys().cloned().collect();
        v.sort();
        v
    }

    /// Reports of the calls that have not ended, by call-id.
    pub fn live_reports(&self) -> Vec<CallReport> {
        let mut v: Vec<CallReport> = self
            .calls
            .iter()
            .filter(|(_, c)| c.state != State::Ended)
            .filter_map(|(id, _)| self.report_of(id))
            .collect();
        v.sort_by(|a, b| a.call_id.cmp(&b.call_id));
        v
    }

    /// Whether the engine knows the call (including ended ones within their delete delay).
    pub fn has_call(&self, call_id: &str) -> bool {
        self.calls.contains_key(call_id)
    }

    /// Packets dropped at a call's pinholes because they were closed.
    fn closed_drops(&self, call_id: &str) -> u64 {
        let Some(call) = self.calls.get(call_id) else {
            return 0;
        };
        call.pairs
            .iter()
            .flat_map(Pair::all_sides)
            .filter(|s| s.pinholes)
            .flat_map(|s| std::iter::once(s.leg.rtp).chain(s.leg.rtcp))
            .filter_map(|local| self.dp.pinhole(local).ok().flatten())
            .map(|p| p.counters.dropped_closed)
            .sum()
    }

    /// Calls that have not ended.
    pub fn active_calls(&self) -> usize {
        self.calls
            .values()
            .filter(|c| c.state != State::Ended)
            .count()
    }

    /// The next CDR or other event to act on.
    pub fn poll_event(&mut self) -> Option<EngineEvent> {
        self.events.pop_front()
    }

    /// When [`Engine::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    fn schedule(&mut self, at: Instant, call: &str) {
        self.timers.push(Reverse((at, call.to_string())));
    }

    /// Handles an offer; returns what the rewritten SDP must advertise, per media section.
    pub fn offer(
        &mut self,
        now: Timestamp,
        req: OfferRequest,
    ) -> Result<Vec<Advertised>, EngineError> {
        let new_call = !self.calls.contains_key(&req.call_id);
        if new_call {
            if self.active_calls() >= self.cfg.max_calls {
                self.stats.load_limited += 1;
                return Err(EngineError::LoadLimit);
            }
            self.calls.insert(
                req.call_id.clone(),
                Call {
                    id: req.call_id.clone(),
                    tags: [Some(req.from_tag.clone()), req.to_tag.clone()],
                    created: now,
                    last_signal: now,
                    answered: None,
                    ended: None,
                    release_at: None,
                    state: State::Offered,
                    pairs: Vec::new(),
                    flags: [req.flags.clone(), Flags::default()],
                    account: req.flags.account.clone(),
                    tos: req.flags.tos,
                    final_report: None,
                    closed_drops_at_end: 0,
                    services: Vec::new(),
                    parties_added: 0,
                },
            );
            self.schedule(now.mono + self.cfg.offer_timeout, &req.call_id);
        }
        let result = self.offer_inner(now, &req);
        if result.is_err() && new_call {
            // Nothing of a refused new call may stay behind.
            self.discard(&req.call_id);
        } else if new_call {
            self.stats.calls_created += 1;
        }
        result
    }

    fn offer_inner(
        &mut self,
        now: Timestamp,
        req: &OfferRequest,
    ) -> Result<Vec<Advertised>, EngineError> {
        let call = self
            .calls
            .get_mut(&req.call_id)
            .ok_or(EngineError::UnknownCall)?;
        if call.state == State::Ended {
            return Err(EngineError::CallEnded);
        }
        let side = match call.side_of(&req.from_tag) {
            Some(s) => s,
            None => return Err(EngineError::UnknownTag(req.from_tag.clone())),
        };
        let other = 1 - side;
        if let Some(t) = &req.to_tag {
            match &call.tags[other] {
                None => call.tags[other] = Some(t.clone()),
                Some(known) if known != t => return Err(EngineError::UnknownTag(t.clone())),
                Some(_) => {}
            }
        }
        call.last_signal = now;
        call.flags[side] = req.flags.clone();
        if req.flags.tos.is_some() {
            call.tos = req.flags.tos;
        }
        if req.flags.account.is_some() {
            call.account = req.flags.account.clone();
        }
        let call_id = req.call_id.clone();
        let mut adverts = Vec::with_capacity(req.media.len());
        for (i, desc) in req.media.iter().enumerate() {
            let exists = self.calls.get(&call_id).is_some_and(|c| i < c.pairs.len());
            if !exists {
                if desc.is_disabled() {
                    // A new stream offered disabled: nothing to provision.
                    adverts.push(Advertised {
                        rtp: SocketAddr::new(desc.rtp.ip(), 0),
                        rtcp: None,
                        rtcp_mux: MuxAdvert::No,
                        offered_protocol: None,
                    });
                    self.push_disabled_pair(&call_id, desc)?;
                    continue;
                }
                self.provision_pair(&call_id, side, desc, req.flags.other_side_ipv6)?;
            }
            let other_muxed = self
                .calls
                .get(&call_id)
                .and_then(|c| c.pairs.get(i))
                .is_some_and(|p| p.sides[1 - side].rtcp_mux);
            let mux = policy::offer_mux(desc.rtcp_mux, other_muxed, &req.flags.rtcp_mux);
            let mut advert = self.apply_remote(&call_id, i, side, desc, mux.offerer)?;
            if let Some(pair) = self
                .calls
                .get_mut(&call_id)
                .and_then(|c| c.pairs.get_mut(i))
                .filter(|p| !p.disabled)
            {
                pair.mux_fixed = mux.fixed;
                // `require`: the other side is taken to have accepted already.
                if mux.require {
                    pair.sides[1 - side].rtcp_mux = true;
                }
                advert.rtcp_mux = match (mux.to_other, mux.require) {
                    (true, true) => MuxAdvert::Use,
                    (true, false) => MuxAdvert::Offer,
                    (false, _) => MuxAdvert::No,
                };
                if mux.require {
                    advert.rtcp = None;
                }
            }
            adverts.push(advert);
        }
        // Streams the re-offer no longer has are disabled.
        let n = self.calls.get(&call_id).map_or(0, |c| c.pairs.len());
        for i in req.media.len()..n {
            self.disable_pair(&call_id, i);
        }
        Ok(adverts)
    }

    fn push_disabled_pair(&mut self, call_id: &str, desc: &MediaDesc) -> Result<(), EngineError> {
        // Keep SDP indices aligned: a placeholder pair with unbound legs is not possible, so a
        // stream that starts disabled gets real legs only if it is enabled later (re-offer).
        let a = self.media.provision(LegRequest {
            ipv6: desc.rtp.is_ipv6(),
            ..Default::default()
        })?;
        let b = match self.media.provision(LegRequest {
            ipv6: desc.rtp.is_ipv6(),
            near: Some(a.id),
            ..Default::default()
        }) {
            Ok(b) => b,
            Err(e) => {
                let _ = self.media.release(a.id);
                return Err(e.into());
            }
        };
        let call = self
            .calls
            .get_mut(call_id)
            .ok_or(EngineError::UnknownCall)?;
        self.legs.insert(a.id, call_id.to_string());
        self.legs.insert(b.id, call_id.to_string());
        call.pairs.push(Pair {
            kind: desc.kind.clone(),
            protocol: desc.protocol.clone(),
            codec: desc.codec.clone(),
            sides: [
                Side {
                    leg: a,
                    remote: None,
                    rtcp_mux: false,
                    pinholes: false,
                    fast: Default::default(),
                },
                Side {
                    leg: b,
                    remote: None,
                    rtcp_mux: false,
                    pinholes: false,
                    fast: Default::default(),
                },
            ],
            parties: Vec::new(),
            splices: Vec::new(),
            disabled: true,
            dscp: None,
            rate: None,
            forked: false,
            mux_fixed: None,
        });
        Ok(())
    }

    fn provision_pair(
        &mut self,
        call_id: &str,
        offerer: usize,
        desc: &MediaDesc,
        other_side_ipv6: Option<bool>,
    ) -> Result<(), EngineError> {
        let ipv6 = desc.rtp.is_ipv6();
        // Both legs bind RTP and RTCP ports, as rtpengine does: whether a leg ends up muxed
        // is only known from the answer (the answerer may decline mux, and then the offerer
        // falls back to RTCP on its own port too). A muxed leg leaves its RTCP port unused,
        // with no pinhole.
        let first = self.media.provision(LegRequest {
            ipv6,
            rtcp_mux: false,
            srtp: desc.is_srtp(),
            ..Default::default()
        })?;
        let second = match self.media.provision(LegRequest {
            ipv6: other_side_ipv6.unwrap_or(ipv6),
            rtcp_mux: false,
            srtp: desc.is_srtp(),
            near: Some(first.id),
            ..Default::default()
        }) {
            Ok(l) => l,
            Err(e) => {
                let _ = self.media.release(first.id);
                return Err(e.into());
            }
        };
        let (a, b) = if offerer == 0 {
            (first, second)
        } else {
            (second, first)
        };
        let call = self
            .calls
            .get_mut(call_id)
            .ok_or(EngineError::UnknownCall)?;
        let dscp = dscp_for(
            &desc.kind,
            call.tos,
            self.cfg.dscp_audio,
            self.cfg.dscp_video,
        );
        call.pairs.push(Pair {
            kind: desc.kind.clone(),
            protocol: desc.protocol.clone(),
            codec: desc.codec.clone(),
            sides: [
                Side {
                    leg: a,
                    remote: None,
                    rtcp_mux: false,
                    pinholes: false,
                    fast: Default::default(),
                },
                Side {
                    leg: b,
                    remote: None,
                    rtcp_mux: false,
                    pinholes: false,
                    fast: Default::default(),
                },
            ],
            parties: Vec::new(),
            splices: Vec::new(),
            disabled: false,
            dscp,
            rate: None,
            forked: false,
            mux_fixed: None,
        });
        self.legs.insert(a.id, call_id.to_string());
        self.legs.insert(b.id, call_id.to_string());
        for leg in [a.id, b.id] {
            self.media.set_dscp(leg, dscp)?;
        }
        Ok(())
    }

    /// Records what `side` signalled for media `i` and enforces it on the leg facing it, with
    /// RTCP multiplexed on its RTP port if `rtcp_mux` (as negotiated, which may differ from
    /// what the side signalled). Returns what the SDP sent to the other side must advertise:
    /// the leg facing it (rtcp-mux left to the caller).
    fn apply_remote(
        &mut self,
        call_id: &str,
        i: usize,
        side: usize,
        desc: &MediaDesc,
        rtcp_mux: bool,
    ) -> Result<Advertised, EngineError> {
        // A re-offer may move the remote: the bridge carries the media until the fast path
        // takes it over again.
        let offloaded = self.calls.get(call_id).is_some_and(|c| {
            c.state == State::Answered
                && c.pairs
                    .get(i)
                    .is_some_and(|p| p.sides.iter().any(|s| s.fast.offloaded))
        });
        if offloaded {
            self.clear_fast_path(call_id, i);
        }
        let call = self
            .calls
            .get_mut(call_id)
            .ok_or(EngineError::UnknownCall)?;
        let flags = call.flags[side].clone();
        let answered = call.state == State::Answered;
        let Some(pair) = call.pairs.get_mut(i) else {
            return Err(EngineError::Invalid(format!(
                "media section {i} was never offered"
            )));
        };
        let other_leg = pair.sides[1 - side].leg;
        if desc.is_disabled() {
            self.disable_pair(call_id, i);
            return Ok(Advertised {
                rtp: SocketAddr::new(other_leg.rtp.ip(), 0),
                rtcp: None,
                rtcp_mux: MuxAdvert::No,
                offered_protocol: None,
            });
        }
        if pair.disabled {
            pair.disabled = false;
            pair.kind = desc.kind.clone();
            pair.protocol = desc.protocol.clone();
        }
        if desc.codec.is_some() {
            pair.codec = desc.codec.clone();
        }
        let negotiated = MediaDesc {
            rtcp_mux,
            ..desc.clone()
        };
        let enf = enforcement(&negotiated, &flags, self.cfg.learn_window);
        let leg = pair.sides[side].leg;
        pair.sides[side].remote = Some(desc.clone());
        pair.sides[side].rtcp_mux = rtcp_mux;
        pair.sides[side].pinholes = true;
        let hold = pair
            .sides
            .iter()
            .any(|s| s.remote.as_ref().is_some_and(|r| r.direction.is_hold()));
        let dscp = pair.dscp.map(Dscp::new).transpose()?;
        let rate = pair.rate;
        self.media.set_remote(leg.id, enf.bridge)?;
        let timeout = if hold {
            self.cfg.silent_timeout
        } else {
            self.cfg.media_timeout
        };
        self.media.set_media_timeout(leg.id, timeout)?;
        // Pinholes are created closed at the offer and opened by the answer; a re-offer of an
        // answered call updates them in place, open.
        for spec in pinhole_specs(&leg, &enf, dscp, rate) {
            self.dp.open_pinhole(&spec)?;
            if !answered {
                self.dp.close_pinhole(spec.local)?;
            }
        }
        // A muxed leg's RTCP port takes nothing: no pinhole (one may be left from an earlier
        // offer or answer without mux).
        if rtcp_mux
            && let Some(rtcp) = leg.rtcp
            && self.dp.pinhole(rtcp)?.is_some()
        {
            self.dp.remove_pinhole(rtcp)?;
        }
        Ok(Advertised {
            rtp: other_leg.rtp,
            rtcp: other_leg.rtcp,
            rtcp_mux: MuxAdvert::No,
            offered_protocol: None,
        })
    }

    /// Handles an answer; returns what the rewritten SDP (to the offerer) must advertise.
    pub fn answer(
        &mut self,
        now: Timestamp,
        req: AnswerRequest,
    ) -> Result<Vec<Advertised>, EngineError> {
        let call = self
            .calls
            .get_mut(&req.call_id)
            .ok_or(EngineError::UnknownCall)?;
        if call.state == State::Ended {
            return Err(EngineError::CallEnded);
        }
        let answerer = match call.side_of(&req.to_tag) {
            Some(s) => s,
            None if call.tags[1].is_none() => {
                call.tags[1] = Some(req.to_tag.clone());
                1
            }
            None => return Err(EngineError::UnknownTag(req.to_tag.clone())),
        };
        if call.side_of(&req.from_tag) != Some(1 - answerer) {
            return Err(EngineError::UnknownTag(req.from_tag.clone()));
        }
        if req.media.len() > call.pairs.len() {
            return Err(EngineError::Invalid(format!(
                "answer has {} media sections, the offer had {}",
                req.media.len(),
                call.pairs.len()
            )));
        }
        call.last_signal = now;
        call.flags[answerer] = req.flags.clone();
        if req.flags.tos.is_some() {
            call.tos = req.flags.tos;
        }
        let first_answer = call.state == State::Offered;
        if first_answer {
            call.state = State::Answered;
            call.answered = Some(now);
            self.stats.calls_answered += 1;
        }
        let call_id = req.call_id.clone();
        let offerer = 1 - answerer;
        let mut adverts = Vec::with_capacity(req.media.len());
        for (i, desc) in req.media.iter().enumerate() {
            // The answerer's leg is muxed iff its answer says so; the offerer's as the offer
            // fixed it, else as the answerer chose (rtpengine).
            self.apply_remote(&call_id, i, answerer, desc, desc.rtcp_mux)?;
            let offerer_side = {
                let call = self.calls.get(&call_id).ok_or(EngineError::UnknownCall)?;
                let pair = &call.pairs[i];
                let s = &pair.sides[offerer];
                let muxed = pair.mux_fixed.unwrap_or(desc.rtcp_mux);
                (!pair.disabled && muxed != s.rtcp_mux)
                    .then(|| s.remote.clone())
                    .flatten()
                    .map(|r| (r, muxed))
            };
            if let Some((remote, muxed)) = offerer_side {
                self.apply_remote(&call_id, i, offerer, &remote, muxed)?;
            }
            let advert_for_offerer = {
                let call = self.calls.get(&call_id).ok_or(EngineError::UnknownCall)?;
                let pair = &call.pairs[i];
                let side = &pair.sides[offerer];
                let leg = side.leg;
                if pair.disabled {
                    Advertised {
                        rtp: SocketAddr::new(leg.rtp.ip(), 0),
                        rtcp: None,
                        rtcp_mux: MuxAdvert::No,
                        offered_protocol: None,
                    }
                } else if side.rtcp_mux {
                    Advertised {
                        rtp: leg.rtp,
                        rtcp: None,
                        rtcp_mux: MuxAdvert::Use,
                        offered_protocol: side.remote.as_ref().map(|r| r.protocol.clone()),
                    }
                } else {
                    Advertised {
                        rtp: leg.rtp,
                        rtcp: leg.rtcp,
                        rtcp_mux: MuxAdvert::No,
                        offered_protocol: side.remote.as_ref().map(|r| r.protocol.clone()),
                    }
                }
            };
            adverts.push(advert_for_offerer);
            self.activate_pair(&call_id, i)?;
            // A re-answer of a call whose media already flowed: back to the kernel at once
            // (a remote that changed is learned again before its packets are forwarded).
            if self.cfg.fast_path && !first_answer {
                self.offload_pair(now, &call_id, i);
            }
        }
        if first_answer {
            if let Some(ft) = self.cfg.final_timeout {
                self.schedule(now.mono + ft, &call_id);
            }
            let cdr = self.cdr_of(&call_id, None);
            if let Some(cdr) = cdr {
                self.events.push_back(EngineEvent::CdrOpened(cdr));
            }
        }
        Ok(adverts)
    }

    /// Splices a pair and opens its pinholes (answered calls, enabled pairs with both remotes).
    fn activate_pair(&mut self, call_id: &str, i: usize) -> Result<(), EngineError> {
        let call = self
            .calls
            .get_mut(call_id)
            .ok_or(EngineError::UnknownCall)?;
        let Some(pair) = call.pairs.get_mut(i) else {
            return Ok(());
        };
        if pair.disabled || pair.sides.iter().any(|s| s.remote.is_none()) {
            return Ok(());
        }
        if pair.splices.is_empty() {
            let legs: Vec<LegId> = pair.all_sides().map(|s| s.leg.id).collect();
            pair.splices = vec![self.media.splice(&legs, SpliceMode::Full)?];
        }
        let locals: Vec<SocketAddr> = pair
            .all_sides()
            .filter(|s| s.pinholes)
            .flat_map(|s| std::iter::once(s.leg.rtp).chain(s.leg.rtcp))
            .collect();
        for local in locals {
            self.reopen_pinhole(local)?;
        }
        Ok(())
    }

    fn reopen_pinhole(&mut self, local: SocketAddr) -> Result<(), EngineError> {
        let Some(info) = self.dp.pinhole(local)? else {
            return Ok(());
        };
        self.dp.open_pinhole(&PinholeSpec {
            local,
            remote: info.policy,
            dscp: info.dscp,
            rate: info.rate,
        })?;
        Ok(())
    }

    /// Unsplices a pair and closes its pinholes; its legs stay provisioned (re-offer may
    /// enable it again).
    fn disable_pair(&mut self, call_id: &str, i: usize) {
        let already = self
            .calls
            .get(call_id)
            .and_then(|c| c.pairs.get(i))
            .is_none_or(|p| p.disabled && p.splices.is_empty());
        if already {
            // Disabled before (a re-offer, or `stop_media`): nothing left to stop.
            return;
        }
        self.clear_fast_path(call_id, i);
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let Some(pair) = call.pairs.get_mut(i) else {
            return;
        };
        pair.disabled = true;
        let splices = std::mem::take(&mut pair.splices);
        let locals: Vec<SocketAddr> = pair
            .all_sides()
            .filter(|s| s.pinholes)
            .flat_map(|s| std::iter::once(s.leg.rtp).chain(s.leg.rtcp))
            .collect();
        for s in splices {
            if let Err(e) = self.media.unsplice(s) {
                tracing::warn!(call = call_id, error = %e, "unsplice failed");
            }
        }
        for local in locals {
            if let Err(e) = self.dp.close_pinhole(local) {
                tracing::warn!(call = call_id, %local, error = %e, "closing pinhole failed");
            }
        }
    }

    /// Stops a live call's media (unsplices its legs, closes its pinholes) without waiting for
    /// the media plane, for a front end about to end several calls: it stops them all, then
    /// [`Engine::flush_media`] once, then ends each, whose own flush then has nothing to wait
    /// for. A call that ends anyway; unknown or ended calls are left alone.
    pub fn stop_media(&mut self, call_id: &str) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        if call.state == State::Ended {
            return;
        }
        for i in 0..call.pairs.len() {
            self.disable_pair(call_id, i);
        }
    }

    /// Puts in effect what was posted to the media plane (see [`Engine::stop_media`]).
    pub fn flush_media(&mut self) {
        if let Err(e) = self.media.flush() {
            tracing::error!(error = %e, "media plane flush failed");
        }
    }

    /// Ends a call (idempotent): pinholes close and legs unsplice at once, the CDR is emitted,
    /// and the legs are released after the delete delay. Returns the final report.
    pub fn end_call(
        &mut self,
        now: Timestamp,
        call_id: &str,
        reason: EndReason,
    ) -> Result<CallReport, EngineError> {
        let call = self.calls.get(call_id).ok_or(EngineError::UnknownCall)?;
        if call.state == State::Ended {
            return call.final_report.clone().ok_or(EngineError::CallEnded);
        }
        let n = call.pairs.len();
        // Stop media first: nothing is forwarded once this returns.
        for i in 0..n {
            self.disable_pair(call_id, i);
        }
        if let Err(e) = self.media.flush() {
            tracing::error!(call = call_id, error = %e, "media plane flush failed");
        }
        let release_at = now.mono + self.cfg.delete_delay;
        let closed_drops = self.closed_drops(call_id);
        if let Some(call) = self.calls.get_mut(call_id) {
            call.closed_drops_at_end = closed_drops;
            call.state = State::Ended;
            call.ended = Some((now, reason));
            call.release_at = Some(release_at);
        }
        // Counters are still readable: pinholes are closed, not removed, until the release.
        let report = self.report_of(call_id).ok_or(EngineError::UnknownCall)?;
        if let Some(call) = self.calls.get_mut(call_id) {
            call.final_report = Some(report.clone());
        }
        if let Some(cdr) = self.cdr_of(call_id, Some(&report)) {
            self.events.push_back(EngineEvent::CdrClosed(cdr));
        }
        self.schedule(release_at, call_id);
        match self.stats.ended.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.stats.ended.push((reason, 1)),
        }
        tracing::info!(call = call_id, %reason, "call ended");
        Ok(report)
    }

    /// `delete`: ends the call with reason `delete` and returns its final statistics.
    pub fn delete(&mut self, now: Timestamp, call_id: &str) -> Result<CallReport, EngineError> {
        self.end_call(now, call_id, EndReason::Delete)
    }

    /// `query`: the call's current statistics.
    pub fn query(&self, call_id: &str) -> Result<CallReport, EngineError> {
        let call = self.calls.get(call_id).ok_or(EngineError::UnknownCall)?;
        if let Some(r) = &call.final_report {
            return Ok(r.clone());
        }
        self.report_of(call_id).ok_or(EngineError::UnknownCall)
    }

    /// A media event from the bridge. A media timeout ends the call when no leg of it has
    /// received anything for its timeout; first packets may let the fast path take over.
    pub fn handle_media_event(&mut self, now: Timestamp, event: BridgeEvent) {
        let leg = match event {
            BridgeEvent::FirstPacket { leg, .. } | BridgeEvent::Latched { leg, .. } => {
                self.fast_path_on_media(now, leg);
                return;
            }
            BridgeEvent::MediaTimeout { leg, .. } => leg,
            _ => return,
        };
        let Some(call_id) = self.legs.get(&leg).cloned() else {
            return;
        };
        self.end_if_silent(now, &call_id);
    }

    /// Ends an answered call whose every leg has been silent for its timeout. Otherwise returns
    /// how long until it could be (for the engine's own watch over offloaded media).
    fn end_if_silent(&mut self, now: Timestamp, call_id: &str) -> Option<Duration> {
        let call = self.calls.get(call_id)?;
        if call.state != State::Answered {
            return None;
        }
        let mut hold = false;
        let mut all_silent = true;
        let mut next_check: Option<Duration> = None;
        for pair in call.pairs.iter().filter(|p| !p.disabled) {
            let pair_hold = pair
                .sides
                .iter()
                .any(|s| s.remote.as_ref().is_some_and(|r| r.direction.is_hold()));
            hold |= pair_hold;
            let limit = if pair_hold {
                self.cfg.silent_timeout
            } else {
                self.cfg.media_timeout
            };
            for s in pair.all_sides() {
                // Never received: silent since the splice, which the bridge measured.
                if let Some(idle) = self.side_idle(s).filter(|d| *d < limit) {
                    all_silent = false;
                    let left = limit - idle;
                    next_check = Some(next_check.map_or(left, |n| n.min(left)));
                }
            }
        }
        if all_silent {
            let reason = if hold {
                EndReason::SilentTimeout
            } else {
                EndReason::MediaTimeout
            };
            let _ = self.end_call(now, call_id, reason);
            return None;
        }
        next_check
    }

    /// Timer expiries: offer and final timeouts, releases after the delete delay.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now.mono {
                break;
            }
            let Some(Reverse((_, call_id))) = self.timers.pop() else {
                break;
            };
            let Some(call) = self.calls.get(&call_id) else {
                continue;
            };
            match call.state {
                State::Offered if call.created.mono + self.cfg.offer_timeout <= now.mono => {
                    let _ = self.end_call(now, &call_id, EndReason::OfferTimeout);
                }
                State::Answered => {
                    let due = match (call.answered, self.cfg.final_timeout) {
                        (Some(a), Some(ft)) => a.mono + ft <= now.mono,
                        _ => false,
                    };
                    if due {
                        let _ = self.end_call(now, &call_id, EndReason::FinalTimeout);
                    } else if self.has_fast_path(&call_id)
                        && let Some(left) = self.end_if_silent(now, &call_id)
                    {
                        // At least 10 ms later, so a clock rounding never spins.
                        let at = now.mono + left.max(Duration::from_millis(10));
                        self.schedule(at, &call_id);
                    }
                }
                State::Ended if call.release_at.is_some_and(|r| r <= now.mono) => {
                    self.discard(&call_id);
                }
                _ => {}
            }
        }
    }

    /// Ends every call (SIGTERM) and releases everything at once.
    pub fn shutdown(&mut self, now: Timestamp) {
        for id in self.call_ids() {
            let _ = self.end_call(now, &id, EndReason::Shutdown);
            self.discard(&id);
        }
    }

    /// Releases a call's legs and pinholes and forgets it.
    fn discard(&mut self, call_id: &str) {
        let after_end = self.closed_drops(call_id);
        let Some(call) = self.calls.remove(call_id) else {
            return;
        };
        if call.state == State::Ended {
            self.events.push_back(EngineEvent::Released {
                call_id: call_id.to_string(),
                packets_after_end: after_end.saturating_sub(call.closed_drops_at_end),
            });
        }
        for pair in &call.pairs {
            for s in &pair.splices {
                let _ = self.media.unsplice(*s);
            }
            for s in pair.all_sides() {
                for local in std::iter::once(s.leg.rtp).chain(s.leg.rtcp) {
                    if s.pinholes
                        && let Err(e) = self.dp.remove_pinhole(local)
                    {
                        tracing::debug!(call = call_id, %local, error = %e, "removing pinhole");
                    }
                }
                self.legs.remove(&s.leg.id);
                if let Err(e) = self.media.release(s.leg.id) {
                    tracing::warn!(call = call_id, leg = %s.leg.id, error = %e, "release failed");
                }
            }
        }
    }

    fn stream_report(&self, side: &Side) -> StreamReport {
        let mut r = StreamReport {
            local: Some(side.leg.rtp),
            local_rtcp: side.leg.rtcp,
            advertised: side.remote.as_ref().map(|d| d.rtp),
            ..StreamReport::default()
        };
        if let Ok(st) = self.media.stats(side.leg.id) {
            r.endpoint = st.remote.or(r.advertised);
            r.packets = st.counters.packets_in;
            r.bytes = st.counters.bytes_in;
            r.rtcp_packets = st.counters.rtcp_in;
            r.rtcp_bytes = st.counters.rtcp_bytes_in;
            r.idle = st.idle;
            r.ssrc = st.ssrc;
            r.errors = st.counters.dropped_invalid
                + st.counters.dropped_wrong_source
                + st.counters.dropped_not_spliced
                + st.counters.dropped_no_remote;
            r.lost = st.rtp_lost;
            r.jitter = st.jitter;
        }
        // The RTP pinhole once: its drops, and what the fast path forwarded past the bridge.
        if let Ok(Some(p)) = self.dp.pinhole(side.leg.rtp) {
            r.dropped_xdp += p.counters.dropped();
            let (fast_packets, fast_bytes) = self.fast_path_forwarded(side, &p);
            r.packets += fast_packets;
            r.bytes += fast_bytes;
            if side.fast.offloaded {
                r.idle = fast_path::shorter_idle(r.idle, p.counters.idle);
            }
        }
        if let Some(rtcp) = side.leg.rtcp
            && let Ok(Some(p)) = self.dp.pinhole(rtcp)
        {
            r.dropped_xdp += p.counters.dropped();
        }
        if let Some((lost, jitter)) = self.fast_path_rtp(side) {
            r.lost += lost;
            if side.fast.offloaded {
                r.jitter = jitter;
            }
        }
        r.errors += r.dropped_xdp;
        r
    }

    fn report_of(&self, call_id: &str) -> Option<CallReport> {
        let call = self.calls.get(call_id)?;
        Some(CallReport {
            call_id: call.id.clone(),
            a_tag: call.tags[0].clone().unwrap_or_default(),
            b_tag: call.tags[1].clone(),
            created_ms: call.created.unix_ms,
            last_signal_ms: call.last_signal.unix_ms,
            answered_ms: call.answered.map(|t| t.unix_ms),
            state: call.state_name(),
            account: call.account.clone(),
            media: call
                .pairs
                .iter()
                .enumerate()
                .map(|(index, p)| MediaReport {
                    index,
                    kind: p.kind.clone(),
                    protocol: p.protocol.clone(),
                    codec: p.codec.clone(),
                    from_a: self.stream_report(&p.sides[0]),
                    from_b: self.stream_report(&p.sides[1]),
                    parties: p
                        .parties
                        .iter()
                        .map(|(n, s)| (n.clone(), self.stream_report(s)))
                        .collect(),
                })
                .collect(),
        })
    }

    fn cdr_of(&self, call_id: &str, report: Option<&CallReport>) -> Option<Cdr> {
        let call = self.calls.get(call_id)?;
        let mut cdr = Cdr {
            call_id: call.id.clone(),
            from_tag: call.tags[0].clone().unwrap_or_default(),
            to_tag: call.tags[1].clone(),
            account: call.account.clone(),
            offer_at: call.created.unix_ms,
            answer_at: call.answered.map(|t| t.unix_ms),
            end_at: call.ended.map(|(t, _)| t.unix_ms),
            end_reason: call.ended.map(|(_, r)| r),
            duration_ms: 0,
            packets_ab: 0,
            bytes_ab: 0,
            packets_ba: 0,
            bytes_ba: 0,
            lost_ab: 0,
            lost_ba: 0,
            jitter_ab_us: 0,
            jitter_ba_us: 0,
            dscp: call.pairs.iter().find_map(|p| p.dscp),
            dropped_xdp: 0,
            charge: None,
            flags: Vec::new(),
            services: call.services.clone(),
        };
        if let (Some(a), Some((e, _))) = (call.answered, call.ended) {
            cdr.duration_ms = (e.unix_ms - a.unix_ms).max(0);
        }
        if let Some(r) = report {
            for m in &r.media {
                cdr.packets_ab += m.from_a.packets;
                cdr.bytes_ab += m.from_a.bytes;
                cdr.lost_ab += m.from_a.lost;
                cdr.jitter_ab_us = cdr.jitter_ab_us.max(m.from_a.jitter.as_micros() as u64);
                cdr.packets_ba += m.from_b.packets;
                cdr.bytes_ba += m.from_b.bytes;
                cdr.lost_ba += m.from_b.lost;
                cdr.jitter_ba_us = cdr.jitter_ba_us.max(m.from_b.jitter.as_micros() as u64);
                cdr.dropped_xdp += m.from_a.dropped_xdp + m.from_b.dropped_xdp;
            }
        }
        Some(cdr)
    }
}

/// The XDP pinholes of a leg: its RTP port and, unless its remote muxes RTCP, its RTCP port.
fn pinhole_specs(
    leg: &LegInfo,
    enf: &policy::RemoteEnforcement,
    dscp: Option<Dscp>,
    rate: Option<RateLimit>,
) -> Vec<PinholeSpec> {
    let mut v = vec![PinholeSpec {
        local: leg.rtp,
        remote: enf.rtp_pinhole,
        dscp,
        rate,
    }];
    if let Some(rtcp) = leg.rtcp.filter(|_| !enf.bridge.rtcp_mux) {
        v.push(PinholeSpec {
            local: rtcp,
            remote: enf.rtcp_pinhole,
            dscp,
            rate,
        });
    }
    v
}

#[cfg(test)]
mod tests;
