//! The in-kernel fast path as the engine drives it (`fast_path` in [`super::EngineConfig`]).
//!
//! Once both legs of an answered, spliced pair have received media through the bridge, the
//! bridge knows where each remote is (latched or signalled) and the data plane has seen the way
//! back to each of them. The engine then installs a forwarding entry on each leg's RTP pinhole:
//! what passes it leaves from the other leg's address to the other leg's remote, in XDP,
//! without reaching the bridge. RTCP stays with the bridge (low rate; its reports stay
//! visible), and so does anything the kernel cannot forward itself.
//!
//! What changes while a pair is offloaded: packet and byte counts are the bridge's plus what
//! the kernel forwarded (the pinholes count it); media timeouts are judged on the
//! pinholes' idle time too, by an engine timer, since the bridge no longer sees the media; RTP
//! loss adds what the kernel counted (by the bridge's rules, `rtpedge_common::rtp_stats`) to
//! the bridge's, and jitter is the kernel's while it forwards. Legs whose remote may move
//! (signalled media handover) are never offloaded: the bridge must watch their probation; nor
//! are pairs with added parties, split into groups, or forked to a recorder (mid-call
//! services): the bridge does those.
//! A re-offer (re-INVITE) takes the pair back to the bridge; its answer hands it to the kernel
//! again once the bridge knows both remotes (a learning leg relatches first). Disabling the
//! pair and ending the call take it back too; their pinholes close first in any case.
//!
//! Owns: when to offload and un-offload, the counter bookkeeping across it. Must not touch:
//! the pinholes' policy and state (the rest of the engine), the kernel program (the data plane).

use std::time::Duration;

use rtpedge_bridge::LegId;
use rtpedge_dataplane::{Dataplane, Dscp, ForwardSpec, PinholeInfo, RemotePolicy};

use super::{Engine, MediaPlane, State, Timestamp};

/// Whether a side's media is forwarded in the kernel now.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct FastPathState {
    /// A forwarding entry is installed on the side's RTP pinhole.
    pub offloaded: bool,
}

/// The RTP clock rate of a media section: from its codec (`PCMU/8000`), else the usual one of
/// its kind (90 kHz video, 8 kHz audio).
fn clock_rate(kind: &str, codec: Option<&str>) -> u32 {
    codec
        .and_then(|c| c.split('/').nth(1))
        .and_then(|r| r.trim().parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(if kind.eq_ignore_ascii_case("video") {
            90_000
        } else {
            8_000
        })
}

/// The more recent of two silences (either side may not have seen anything yet).
pub(super) fn shorter_idle(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Ethernet + IP + UDP header bytes of a frame, subtracted to report UDP payload bytes as the
/// bridge does.
fn frame_overhead(ipv6: bool) -> u64 {
    14 + if ipv6 { 40 } else { 20 } + 8
}

impl<M: MediaPlane, D: Dataplane> Engine<M, D> {
    /// Media news from the bridge about `leg` (first packet, latched): offload its pair if it
    /// is ready.
    pub(super) fn fast_path_on_media(&mut self, now: Timestamp, leg: LegId) {
        if !self.cfg.fast_path {
            return;
        }
        let Some(call_id) = self.legs.get(&leg).cloned() else {
            return;
        };
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        if call.state != State::Answered {
            return;
        }
        let Some(i) = call
            .pairs
            .iter()
            .position(|p| p.sides.iter().any(|s| s.leg.id == leg))
        else {
            return;
        };
        self.offload_pair(now, &call_id, i);
    }

    pub(super) fn offload_pair(&mut self, now: Timestamp, call_id: &str, i: usize) {
        let Some(pair) = self.calls.get(call_id).and_then(|c| c.pairs.get(i)) else {
            return;
        };
        if !self.cfg.fast_path
            || pair.disabled
            || pair.splices.len() != 1
            || !pair.parties.is_empty()
            || pair.forked
            || pair.sides.iter().any(|s| s.fast.offloaded)
        {
            return;
        }
        let mut remotes = [None; 2];
        for (k, side) in pair.sides.iter().enumerate() {
            let Ok(st) = self.media.stats(side.leg.id) else {
                return;
            };
            // Media from this side taught the kernel the way back to it.
            if st.counters.packets_in == 0 {
                return;
            }
            let Ok(Some(ph)) = self.dp.pinhole(side.leg.rtp) else {
                return;
            };
            if matches!(ph.policy, RemotePolicy::Any) {
                return;
            }
            remotes[k] = st.remote;
        }
        let dscp = pair.dscp.and_then(|d| Dscp::new(d).ok());
        let clock_rate = clock_rate(&pair.kind, pair.codec.as_deref());
        // SRTP encrypts the padding count: only its header can be checked.
        let check_padding = !pair.protocol.to_ascii_uppercase().contains("SAVP");
        let legs = [pair.sides[0].leg, pair.sides[1].leg];
        let specs = [0, 1].map(|k| {
            remotes[1 - k].map(|to| ForwardSpec {
                via: legs[1 - k].rtp,
                to,
                dscp,
                clock_rate,
                check_padding,
            })
        });
        let [Some(a), Some(b)] = specs else {
            return;
        };
        for (leg, spec) in [(legs[0], a), (legs[1], b)] {
            if let Err(e) = self.dp.set_forward(leg.rtp, Some(spec)) {
                tracing::debug!(call = call_id, local = %leg.rtp, error = %e, "no fast path");
                self.clear_fast_path(call_id, i);
                return;
            }
        }
        let limit = self.cfg.media_timeout;
        if let Some(pair) = self.calls.get_mut(call_id).and_then(|c| c.pairs.get_mut(i)) {
            for side in pair.sides.iter_mut() {
                side.fast.offloaded = true;
            }
        }
        tracing::debug!(call = call_id, pair = i, "media forwarded in the kernel");
        // The bridge no longer sees this media: the engine watches for silence itself.
        self.schedule(now.mono + limit, call_id);
    }

    /// Takes pair `i` back to the bridge (re-offer, disable, end): removes the forwarding
    /// entries. What the kernel forwarded stays in the pinholes' counters.
    pub(super) fn clear_fast_path(&mut self, call_id: &str, i: usize) {
        if !self.cfg.fast_path {
            return;
        }
        let Some(pair) = self.calls.get_mut(call_id).and_then(|c| c.pairs.get_mut(i)) else {
            return;
        };
        let locals = [0, 1].map(|k| pair.sides[k].leg.rtp);
        for side in pair.sides.iter_mut() {
            side.fast.offloaded = false;
        }
        for local in locals {
            // Also after a half-installed offload: no entry may stay behind.
            if let Err(e) = self.dp.set_forward(local, None) {
                tracing::debug!(call = call_id, %local, error = %e, "removing fast path");
            }
        }
    }

    /// Packets and UDP payload bytes the kernel forwarded from `side`'s remote (over the
    /// whole call: the pinhole's counters outlive re-offers), from its RTP pinhole's counters.
    pub(super) fn fast_path_forwarded(&self, side: &super::Side, rtp: &PinholeInfo) -> (u64, u64) {
        if !self.cfg.fast_path {
            return (0, 0);
        }
        let packets = rtp.counters.forwarded_packets;
        let overhead = packets * frame_overhead(side.leg.rtp.is_ipv6());
        (
            packets,
            rtp.counters.forwarded_bytes.saturating_sub(overhead),
        )
    }

    /// Loss and jitter of `side`'s media as the kernel counted what it forwarded, if it ever
    /// did: `(lost, jitter)`.
    pub(super) fn fast_path_rtp(&self, side: &super::Side) -> Option<(i64, Duration)> {
        if !self.cfg.fast_path {
            return None;
        }
        let st = self.dp.forwarded_rtp(side.leg.rtp).ok().flatten()?;
        (st.packets() > 0).then(|| (st.lost(), st.jitter()))
    }

    /// How long `side` has been silent, as the bridge and, once offloaded, the kernel see it.
    pub(super) fn side_idle(&self, side: &super::Side) -> Option<Duration> {
        let bridge = self.media.stats(side.leg.id).ok().and_then(|st| st.idle);
        if !side.fast.offloaded {
            return bridge;
        }
        let kernel = self.dp.pinhole(side.leg.rtp).ok().flatten();
        shorter_idle(bridge, kernel.and_then(|p| p.counters.idle))
    }

    /// Whether any pair of the call is offloaded (its silence is the engine's to watch).
    pub(super) fn has_fast_path(&self, call_id: &str) -> bool {
        self.calls.get(call_id).is_some_and(|c| {
            c.pairs
                .iter()
                .any(|p| p.sides.iter().any(|s| s.fast.offloaded))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::clock_rate;

    #[test]
    fn clock_rates_from_codecs_and_kinds() {
        assert_eq!(clock_rate("audio", Some("PCMU/8000")), 8000);
        assert_eq!(clock_rate("audio", Some("opus/48000/2")), 48000);
        assert_eq!(clock_rate("video", Some("H264/90000")), 90000);
        assert_eq!(clock_rate("video", None), 90000);
        assert_eq!(clock_rate("audio", Some("weird")), 8000);
        assert_eq!(clock_rate("audio", Some("x/0")), 8000);
    }
}
