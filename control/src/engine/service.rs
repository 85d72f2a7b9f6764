//! Services inserted into a running call, as the engine applies them: a QoS upgrade (DSCP and
//! rate limit on legs and pinholes), an added party (a third leg spliced in), a split of a
//! multi-party call into subgroups, and a recorder fork. Who may ask and who pays (tickets,
//! usage tokens) is decided before this is called (`crate::services`); here only what a
//! service changes on the bridge and the data plane, always without unsplicing media that
//! keeps flowing: splices are replaced in one step ([`MediaPlane::resplice`]).
//!
//! Parties of a media section are named: `a` (the leg facing side A, the original offerer),
//! `b` (facing side B), and added parties `p1`, `p2`, ... (or the name the request gives).

use std::net::SocketAddr;

use rtpedge_bridge::{Fork, LegId, LegRequest, SpliceMode};
use rtpedge_dataplane::{Dataplane, Dscp, RateLimit};

use super::{
    Direction, Engine, EngineError, Flags, MediaDesc, MediaPlane, Pair, Side, State, Timestamp,
    pinhole_specs, policy::enforcement,
};

/// A change to a running call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceChange {
    /// Mark all media of the call with `dscp` (bridge sockets and pinholes) and, when given,
    /// rate-limit its pinholes.
    Qos {
        /// DSCP class (0..=63).
        dscp: u8,
        /// Pinhole token bucket.
        rate: Option<RateLimit>,
    },
    /// A third leg in media section `media`, sending to `remote`, spliced with the others.
    AddParty {
        /// Media section (SDP index).
        media: usize,
        /// Where the new party receives RTP.
        remote: SocketAddr,
        /// Where it receives RTCP (default: RTP port + 1, or the RTP port with rtcp-mux).
        remote_rtcp: Option<SocketAddr>,
        /// The party uses rtcp-mux.
        rtcp_mux: bool,
        /// Its name (default `pN`).
        name: Option<String>,
        /// Trust `remote` exactly (like the ng flag `trust address`); otherwise the default
        /// remote policy applies.
        trust_address: bool,
    },
    /// Dissolve media section `media`'s splice into `groups` of party names; a party in no
    /// group (or alone in one) is isolated.
    Split {
        /// Media section.
        media: usize,
        /// Groups of party names.
        groups: Vec<Vec<String>>,
    },
    /// Copy every packet of the call's legs (media section `media`, or all) to a recorder.
    Fork {
        /// Recorder RTP address.
        recorder: SocketAddr,
        /// Recorder RTCP address (default: RTCP goes to `recorder` too).
        recorder_rtcp: Option<SocketAddr>,
        /// Only this media section.
        media: Option<usize>,
    },
}

impl ServiceChange {
    /// The service's name as CDRs and tickets spell it.
    pub fn name(&self) -> &'static str {
        match self {
            ServiceChange::Qos { .. } => "qos-upgrade",
            ServiceChange::AddParty { .. } => "add-party",
            ServiceChange::Split { .. } => "split",
            ServiceChange::Fork { .. } => "fork",
        }
    }
}

/// What a service did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceApplied {
    /// QoS changed on `legs` legs.
    Qos {
        /// DSCP now.
        dscp: u8,
        /// Rate limit now.
        rate: Option<RateLimit>,
        /// Legs changed.
        legs: usize,
    },
    /// A party was added: tell it to send to `local`.
    PartyAdded {
        /// Its name.
        name: String,
        /// Media section.
        media: usize,
        /// Where the party must send RTP.
        local: SocketAddr,
        /// Where it must send RTCP (None with rtcp-mux).
        local_rtcp: Option<SocketAddr>,
        /// Media type of the section.
        kind: String,
        /// Transport protocol.
        protocol: String,
        /// Codec of the section, when known (`PCMU/8000`).
        codec: Option<String>,
        /// Parties of the section now spliced together.
        parties: Vec<String>,
    },
    /// The section is split.
    Split {
        /// Media section.
        media: usize,
        /// Groups now spliced (two parties or more).
        groups: Vec<Vec<String>>,
        /// Parties now isolated.
        isolated: Vec<String>,
    },
    /// The legs fork to the recorder.
    Forked {
        /// Recorder.
        recorder: SocketAddr,
        /// Recorder RTCP.
        recorder_rtcp: Option<SocketAddr>,
        /// Legs forking.
        legs: usize,
    },
}

/// Party names of a pair, in order: `a`, `b`, then the added ones.
fn party_names(pair: &Pair) -> Vec<String> {
    ["a".to_string(), "b".to_string()]
        .into_iter()
        .chain(pair.parties.iter().map(|(n, _)| n.clone()))
        .collect()
}

fn party_leg(pair: &Pair, name: &str) -> Option<LegId> {
    match name {
        "a" => Some(pair.sides[0].leg.id),
        "b" => Some(pair.sides[1].leg.id),
        _ => pair
            .parties
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.leg.id),
    }
}

fn valid_party_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::Invalid(msg.into())
}

/// What the service layer needs of the engine, as a trait object (so front ends that are not
/// generic over the engine's planes, like the ng server's admission hook, can reach it).
pub trait ServiceTarget {
    /// See [`Engine::service_account`].
    fn service_account(&self, call_id: &str) -> Result<Option<String>, EngineError>;
    /// See [`Engine::check_service`].
    fn check_service(&self, call_id: &str, change: &ServiceChange) -> Result<(), EngineError>;
    /// See [`Engine::handle_service`].
    fn handle_service(
        &mut self,
        now: Timestamp,
        call_id: &str,
        change: ServiceChange,
    ) -> Result<ServiceApplied, EngineError>;
}

impl<M: MediaPlane, D: Dataplane> ServiceTarget for Engine<M, D> {
    fn service_account(&self, call_id: &str) -> Result<Option<String>, EngineError> {
        Engine::service_account(self, call_id)
    }
    fn check_service(&self, call_id: &str, change: &ServiceChange) -> Result<(), EngineError> {
        Engine::check_service(self, call_id, change)
    }
    fn handle_service(
        &mut self,
        now: Timestamp,
        call_id: &str,
        change: ServiceChange,
    ) -> Result<ServiceApplied, EngineError> {
        Engine::handle_service(self, now, call_id, change)
    }
}

impl<M: MediaPlane, D: Dataplane> Engine<M, D> {
    /// The account of a call that can take a service now: it must exist (else
    /// [`EngineError::UnknownCall`]), be answered ([`EngineError::NotAnswered`]) and not have
    /// ended ([`EngineError::CallEnded`]).
    pub fn service_account(&self, call_id: &str) -> Result<Option<String>, EngineError> {
        let call = self.calls.get(call_id).ok_or(EngineError::UnknownCall)?;
        match call.state {
            State::Offered => Err(EngineError::NotAnswered),
            State::Ended => Err(EngineError::CallEnded),
            State::Answered => Ok(call.account.clone()),
        }
    }

    /// Checks that `change` can be applied to the call now, changing nothing.
    pub fn check_service(&self, call_id: &str, change: &ServiceChange) -> Result<(), EngineError> {
        self.service_account(call_id)?;
        let call = self.calls.get(call_id).ok_or(EngineError::UnknownCall)?;
        let live_pair = |media: usize| -> Result<&Pair, EngineError> {
            let pair = call
                .pairs
                .get(media)
                .ok_or_else(|| invalid(format!("the call has no media section {media}")))?;
            if pair.disabled || pair.splices.is_empty() {
                return Err(invalid(format!("media section {media} carries no media")));
            }
            Ok(pair)
        };
        match change {
            ServiceChange::Qos { dscp, .. } => {
                Dscp::new(*dscp)?;
            }
            ServiceChange::AddParty {
                media,
                remote,
                name,
                ..
            } => {
                let pair = live_pair(*media)?;
                if remote.port() == 0 || remote.ip().is_unspecified() {
                    return Err(invalid(format!("remote {remote} is not a media address")));
                }
                if let Some(n) = name {
                    if !valid_party_name(n) {
                        return Err(invalid(format!(
                            "party name {n:?}: 1 to 64 of A-Z a-z 0-9 - _ ."
                        )));
                    }
                    if party_names(pair).contains(n) {
                        return Err(invalid(format!("media section {media} has a party {n:?}")));
                    }
                }
            }
            ServiceChange::Split { media, groups } => {
                let pair = live_pair(*media)?;
                let names = party_names(pair);
                let mut seen: Vec<&String> = Vec::new();
                for n in groups.iter().flatten() {
                    if !names.contains(n) {
                        return Err(invalid(format!(
                            "media section {media} has no party {n:?} (parties: {})",
                            names.join(", ")
                        )));
                    }
                    if seen.contains(&n) {
                        return Err(invalid(format!("party {n:?} is in more than one group")));
                    }
                    seen.push(n);
                }
                if !groups.iter().any(|g| g.len() >= 2) {
                    return Err(invalid("a split needs a group of two parties or more"));
                }
            }
            ServiceChange::Fork {
                recorder, media, ..
            } => {
                if recorder.port() == 0 || recorder.ip().is_unspecified() {
                    return Err(invalid(format!(
                        "recorder {recorder} is not a media address"
                    )));
                }
                if let Some(m) = media {
                    live_pair(*m)?;
                }
                if self.fork_legs(call_id, *media, *recorder).is_empty() {
                    return Err(invalid(format!(
                        "no leg of the call can send to {recorder} (address family, or no live media)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Legs that fork to `recorder`: those of the live media sections (or `media`) whose
    /// address family matches.
    fn fork_legs(&self, call_id: &str, media: Option<usize>, recorder: SocketAddr) -> Vec<LegId> {
        let Some(call) = self.calls.get(call_id) else {
            return Vec::new();
        };
        call.pairs
            .iter()
            .enumerate()
            .filter(|(i, p)| media.is_none_or(|m| m == *i) && !p.disabled && !p.splices.is_empty())
            .flat_map(|(_, p)| p.all_sides())
            .filter(|s| s.leg.rtp.is_ipv6() == recorder.is_ipv6())
            .map(|s| s.leg.id)
            .collect()
    }

    /// Applies a service to a running call (checked first, like [`Engine::check_service`])
    /// and records it for the CDR. Media keeps flowing throughout.
    pub fn handle_service(
        &mut self,
        now: Timestamp,
        call_id: &str,
        change: ServiceChange,
    ) -> Result<ServiceApplied, EngineError> {
        self.check_service(call_id, &change)?;
        let name = change.name();
        // Services change splices, forks and markings: the bridge carries the media while they
        // apply; the fast path takes what is still a plain two-party pair back afterwards.
        let pairs = self.calls.get(call_id).map_or(0, |c| c.pairs.len());
        for i in 0..pairs {
            self.clear_fast_path(call_id, i);
        }
        let applied = match change {
            ServiceChange::Qos { dscp, rate } => self.apply_qos(call_id, dscp, rate)?,
            ServiceChange::AddParty {
                media,
                remote,
                remote_rtcp,
                rtcp_mux,
                name,
                trust_address,
            } => self.apply_add_party(
                call_id,
                media,
                MediaDesc {
                    kind: String::new(),
                    protocol: String::new(),
                    rtp: remote,
                    rtcp: remote_rtcp,
                    rtcp_mux,
                    direction: Direction::SendRecv,
                    codec: None,
                },
                name,
                trust_address,
            )?,
            ServiceChange::Split { media, groups } => self.apply_split(call_id, media, groups)?,
            ServiceChange::Fork {
                recorder,
                recorder_rtcp,
                media,
            } => {
                let fork = Fork {
                    rtp: recorder,
                    rtcp: recorder_rtcp,
                };
                let legs = self.fork_legs(call_id, media, recorder);
                for leg in &legs {
                    self.media.set_fork(*leg, Some(fork))?;
                }
                if let Some(call) = self.calls.get_mut(call_id) {
                    for (i, pair) in call.pairs.iter_mut().enumerate() {
                        if media.is_none_or(|m| m == i) {
                            pair.forked = true;
                        }
                    }
                }
                ServiceApplied::Forked {
                    recorder,
                    recorder_rtcp,
                    legs: legs.len(),
                }
            }
        };
        if let Some(call) = self.calls.get_mut(call_id) {
            call.services.push(name.to_string());
            call.last_signal = now;
        }
        for i in 0..pairs {
            self.offload_pair(now, call_id, i);
        }
        tracing::info!(call = call_id, service = name, "service inserted");
        Ok(applied)
    }

    fn apply_qos(
        &mut self,
        call_id: &str,
        dscp: u8,
        rate: Option<RateLimit>,
    ) -> Result<ServiceApplied, EngineError> {
        let d = Dscp::new(dscp)?;
        let call = self
            .calls
            .get_mut(call_id)
            .ok_or(EngineError::UnknownCall)?;
        let mut legs = Vec::new();
        let mut locals = Vec::new();
        for pair in call.pairs.iter_mut() {
            pair.dscp = Some(dscp);
            if rate.is_some() {
                pair.rate = rate;
            }
            for s in pair.all_sides() {
                legs.push(s.leg.id);
                if s.pinholes {
                    locals.extend(std::iter::once(s.leg.rtp).chain(s.leg.rtcp));
                }
            }
        }
        for leg in &legs {
            self.media.set_dscp(*leg, Some(dscp))?;
        }
        for local in locals {
            self.dp.set_dscp(local, Some(d))?;
            if rate.is_some() {
                self.dp.set_rate_limit(local, rate)?;
            }
        }
        Ok(ServiceApplied::Qos {
            dscp,
            rate,
            legs: legs.len(),
        })
    }

    fn apply_add_party(
        &mut self,
        call_id: &str,
        media: usize,
        mut desc: MediaDesc,
        name: Option<String>,
        trust_address: bool,
    ) -> Result<ServiceApplied, EngineError> {
        let call = self
            .calls
            .get_mut(call_id)
            .ok_or(EngineError::UnknownCall)?;
        let name = match name {
            Some(n) => n,
            None => {
                // The first pN free in this section.
                let mut n = call.parties_added;
                loop {
                    n += 1;
                    let candidate = format!("p{n}");
                    if !call
                        .pairs
                        .get(media)
                        .is_some_and(|p| party_names(p).contains(&candidate))
                    {
                        break candidate;
                    }
                }
            }
        };
        let pair = call
            .pairs
            .get(media)
            .ok_or_else(|| invalid(format!("the call has no media section {media}")))?;
        desc.kind = pair.kind.clone();
        desc.protocol = pair.protocol.clone();
        desc.codec = pair.codec.clone();
        let near = pair.sides[0].leg.id;
        let dscp = pair.dscp;
        let rate = pair.rate;
        let old_splices = pair.splices.clone();
        let mut group: Vec<LegId> = pair.all_sides().map(|s| s.leg.id).collect();
        let mut parties = party_names(pair);
        let leg = self.media.provision(LegRequest {
            ipv6: desc.rtp.is_ipv6(),
            rtcp_mux: desc.rtcp_mux,
            srtp: desc.is_srtp(),
            near: Some(near),
            ..Default::default()
        })?;
        let flags = Flags {
            trust_address,
            ..Flags::default()
        };
        let enf = enforcement(&desc, &flags, self.cfg.learn_window);
        group.push(leg.id);
        let specs = pinhole_specs(&leg, &enf, dscp.map(Dscp::new).transpose()?, rate);
        let wired = (|| -> Result<Vec<rtpedge_bridge::SpliceId>, EngineError> {
            self.media.set_remote(leg.id, enf.bridge)?;
            self.media.set_dscp(leg.id, dscp)?;
            self.media
                .set_media_timeout(leg.id, self.cfg.media_timeout)?;
            for spec in &specs {
                self.dp.open_pinhole(spec)?;
            }
            Ok(self
                .media
                .resplice(&old_splices, &[(group.clone(), SpliceMode::Full)])?)
        })();
        let splices = match wired {
            Ok(s) => s,
            Err(e) => {
                // Nothing of the new party stays behind; the call is as it was.
                for spec in &specs {
                    let _ = self.dp.remove_pinhole(spec.local);
                }
                let _ = self.media.release(leg.id);
                return Err(e);
            }
        };
        self.legs.insert(leg.id, call_id.to_string());
        let call = self
            .calls
            .get_mut(call_id)
            .ok_or(EngineError::UnknownCall)?;
        call.parties_added += 1;
        let pair = call
            .pairs
            .get_mut(media)
            .ok_or_else(|| invalid(format!("the call has no media section {media}")))?;
        pair.splices = splices;
        pair.parties.push((
            name.clone(),
            Side {
                leg,
                remote: Some(desc.clone()),
                rtcp_mux: desc.rtcp_mux,
                pinholes: true,
                fast: Default::default(),
            },
        ));
        parties.push(name.clone());
        Ok(ServiceApplied::PartyAdded {
            name,
            media,
            local: leg.rtp,
            local_rtcp: leg.rtcp,
            kind: desc.kind,
            protocol: desc.protocol,
            codec: desc.codec,
            parties,
        })
    }

    fn apply_split(
        &mut self,
        call_id: &str,
        media: usize,
        groups: Vec<Vec<String>>,
    ) -> Result<ServiceApplied, EngineError> {
        let call = self.calls.get(call_id).ok_or(EngineError::UnknownCall)?;
        let pair = call
            .pairs
            .get(media)
            .ok_or_else(|| invalid(format!("the call has no media section {media}")))?;
        let spliced: Vec<Vec<String>> = groups.iter().filter(|g| g.len() >= 2).cloned().collect();
        let mut add = Vec::with_capacity(spliced.len());
        for g in &spliced {
            let legs = g
                .iter()
                .map(|n| party_leg(pair, n).ok_or_else(|| invalid(format!("no party {n:?}"))))
                .collect::<Result<Vec<_>, _>>()?;
            add.push((legs, SpliceMode::Full));
        }
        let isolated: Vec<String> = party_names(pair)
            .into_iter()
            .filter(|n| !spliced.iter().flatten().any(|x| x == n))
            .collect();
        let old = pair.splices.clone();
        let new = self.media.resplice(&old, &add)?;
        if let Some(pair) = self
            .calls
            .get_mut(call_id)
            .and_then(|c| c.pairs.get_mut(media))
        {
            pair.splices = new;
        }
        Ok(ServiceApplied::Split {
            media,
            groups: spliced,
            isolated,
        })
    }
}
