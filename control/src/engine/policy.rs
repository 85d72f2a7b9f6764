//! From signaling to enforcement: which remote policy a leg gets, in the bridge (latching) and
//! in the XDP pinholes alike, and which DSCP its media carries.
//!
//! The rule is the strictest that signaling allows: an exact remote when the SDP address can be
//! trusted (`trust address`, or it equals the SIP source address), the SIP source address when
//! asked (`SIP source address`), learning otherwise (NAT); the remote moves only with `media
//! handover`, and then only after the bridge's probation. With default flags, media from a
//! third address is never forwarded and never redirects a leg. An `asymmetric` remote is held
//! to its signalled address (any source port) and is always sent to its signalled port.
//!
//! Also here: rtpengine's rtcp-mux decisions for an offer ([`offer_mux`]).

use std::{net::SocketAddr, time::Duration};

use rtpedge_bridge::RemoteSpec;
use rtpedge_dataplane::RemotePolicy;

use super::types::{Flags, MediaDesc, RtcpMuxFlags};

/// Consecutive packets a new source must send, continuing the locked stream, before a leg with
/// media handover moves to it.
pub const HANDOVER_PACKETS: u16 = 5;

/// Enforcement for one leg's remote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteEnforcement {
    /// The bridge's latching.
    pub bridge: RemoteSpec,
    /// The XDP pinhole on the leg's RTP port.
    pub rtp_pinhole: RemotePolicy,
    /// The XDP pinhole on the leg's RTCP port (non-mux legs).
    pub rtcp_pinhole: RemotePolicy,
}

/// Where the remote receives RTCP: `a=rtcp`, its RTP port with rtcp-mux, or RTP port + 1.
pub fn rtcp_address(desc: &MediaDesc) -> SocketAddr {
    if desc.rtcp_mux {
        return desc.rtp;
    }
    desc.rtcp
        .unwrap_or_else(|| SocketAddr::new(desc.rtp.ip(), desc.rtp.port().wrapping_add(1)))
}

/// The enforcement for a remote described by `desc`, under `flags`.
pub fn enforcement(desc: &MediaDesc, flags: &Flags, learn_window: Duration) -> RemoteEnforcement {
    let rtcp = rtcp_address(desc);
    let unspecified = desc.rtp.ip().is_unspecified();
    let mut bridge = RemoteSpec {
        policy: rtpedge_bridge::Policy::Learning,
        rtp: (!unspecified).then_some(desc.rtp),
        rtcp: (!unspecified).then_some(rtcp),
        learn_window,
        handover: None,
        rtcp_mux: desc.rtcp_mux,
    };
    if flags.asymmetric {
        // Nothing is learned: the source port says nothing about where the remote receives.
        // The address is the SDP's, or the SIP source's when asked; never a packet's.
        let ip = match (flags.sip_source_address, flags.received_from) {
            (true, Some(ip)) => ip,
            _ => desc.rtp.ip(),
        };
        let rtcp_ip = if desc.rtcp.is_some_and(|r| r.ip() != desc.rtp.ip()) {
            rtcp.ip()
        } else {
            ip
        };
        bridge.policy = rtpedge_bridge::Policy::Asymmetric;
        bridge.learn_window = Duration::ZERO;
        bridge.rtp = (!unspecified).then(|| SocketAddr::new(ip, desc.rtp.port()));
        bridge.rtcp = (!unspecified).then(|| SocketAddr::new(rtcp_ip, rtcp.port()));
        return RemoteEnforcement {
            bridge,
            rtp_pinhole: RemotePolicy::Address(ip),
            rtcp_pinhole: RemotePolicy::Address(rtcp_ip),
        };
    }
    let learning = RemotePolicy::Learning {
        from: None,
        window: Some(learn_window),
    };
    if flags.media_handover {
        bridge.handover = Some(HANDOVER_PACKETS);
        return RemoteEnforcement {
            bridge,
            rtp_pinhole: RemotePolicy::Any,
            rtcp_pinhole: RemotePolicy::Any,
        };
    }
    let trusted =
        !unspecified && (flags.trust_address || flags.received_from == Some(desc.rtp.ip()));
    if trusted {
        bridge.policy = rtpedge_bridge::Policy::Exact;
        return RemoteEnforcement {
            bridge,
            rtp_pinhole: RemotePolicy::Exact(desc.rtp),
            rtcp_pinhole: RemotePolicy::Exact(rtcp),
        };
    }
    if flags.sip_source_address
        && let Some(ip) = flags.received_from
    {
        bridge.policy = rtpedge_bridge::Policy::Address;
        bridge.rtp = Some(SocketAddr::new(ip, desc.rtp.port()));
        bridge.rtcp = Some(SocketAddr::new(ip, rtcp.port()));
        return RemoteEnforcement {
            bridge,
            rtp_pinhole: RemotePolicy::Address(ip),
            rtcp_pinhole: RemotePolicy::Address(ip),
        };
    }
    RemoteEnforcement {
        bridge,
        rtp_pinhole: learning,
        rtcp_pinhole: learning,
    }
}

/// rtcp-mux as an offer settles it for one media section (rtpengine's `__rtcp_mux_logic`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfferMux {
    /// The offerer's leg is muxed as far as the offer goes (it offered rtcp-mux and it is not
    /// rejected); the answer may still change it unless [`OfferMux::fixed`].
    pub offerer: bool,
    /// rtcp-mux is offered to the other side.
    pub to_other: bool,
    /// ... and required: no RTCP port is advertised to it.
    pub require: bool,
    /// The offerer's mux in the answer, whatever the answerer says (rtpengine's
    /// `RTCP_MUX_OVERRIDE`); `None`: the answerer's choice decides.
    pub fixed: Option<bool>,
}

/// Decides rtcp-mux for an offer: `offered` is the offerer's `a=rtcp-mux`, `other_muxed`
/// whether the leg facing the other side already negotiated rtcp-mux (a re-offer keeps it,
/// without a fallback port, as rtpengine does).
pub fn offer_mux(offered: bool, other_muxed: bool, f: &RtcpMuxFlags) -> OfferMux {
    let mut require = f.require;
    // Default: pass the offerer's choice on, unless the other side is already muxed.
    let mut to_other = offered;
    if other_muxed {
        to_other = true;
        require = true;
    }
    if f.offer || f.require {
        to_other = true;
    } else if f.demux {
        to_other = false;
    }
    let (offerer, fixed) = match (offered, to_other) {
        // Not offered to us: never accepted back, whatever is offered onwards.
        (false, _) => (false, Some(false)),
        // Offered to us, not passed on: accepted back (demux) unless rejected.
        (true, false) => (!f.reject, Some(!f.reject)),
        (true, true) if f.accept => (true, Some(true)),
        (true, true) if f.reject => (false, Some(false)),
        // Offered and passed on: the answerer decides.
        (true, true) => (true, None),
    };
    OfferMux {
        offerer,
        to_other,
        require: require && to_other,
        fixed,
    }
}

/// DSCP for a media section: the call's TOS if signalled, else the configured class of its
/// media type.
pub fn dscp_for(kind: &str, tos: Option<u8>, audio: Option<u8>, video: Option<u8>) -> Option<u8> {
    if let Some(tos) = tos {
        return Some(tos >> 2);
    }
    match kind {
        "audio" => audio,
        "video" => video,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support;

    /// An audio stream that names no codec.
    fn desc(rtp: &str) -> MediaDesc {
        MediaDesc {
            codec: None,
            ..test_support::audio(rtp)
        }
    }
    const W: Duration = Duration::from_secs(3);

    #[test]
    fn nat_by_default_learning_everywhere() {
        let e = enforcement(&desc("192.0.2.1:4000"), &Flags::default(), W);
        assert_eq!(e.bridge.policy, rtpedge_bridge::Policy::Learning);
        assert_eq!(e.bridge.rtp, Some("192.0.2.1:4000".parse().unwrap()));
        assert_eq!(e.bridge.rtcp, Some("192.0.2.1:4001".parse().unwrap()));
        assert!(matches!(
            e.rtp_pinhole,
            RemotePolicy::Learning { from: None, .. }
        ));
    }

    #[test]
    fn sdp_equal_to_sip_source_is_trusted_exactly() {
        let flags = Flags {
            received_from: Some("192.0.2.1".parse().unwrap()),
            ..Flags::default()
        };
        let e = enforcement(&desc("192.0.2.1:4000"), &flags, W);
        assert_eq!(e.bridge.policy, rtpedge_bridge::Policy::Exact);
        assert_eq!(
            e.rtp_pinhole,
            RemotePolicy::Exact("192.0.2.1:4000".parse().unwrap())
        );
        assert_eq!(
            e.rtcp_pinhole,
            RemotePolicy::Exact("192.0.2.1:4001".parse().unwrap())
        );
        // A different SIP source (a proxy, or NAT) means learning.
        let flags = Flags {
            received_from: Some("203.0.113.1".parse().unwrap()),
            ..Flags::default()
        };
        assert_eq!(
            enforcement(&desc("192.0.2.1:4000"), &flags, W)
                .bridge
                .policy,
            rtpedge_bridge::Policy::Learning
        );
    }

    #[test]
    fn trust_address_sip_source_and_handover() {
        let t = Flags {
            trust_address: true,
            ..Flags::default()
        };
        assert_eq!(
            enforcement(&desc("10.1.1.1:5000"), &t, W).bridge.policy,
            rtpedge_bridge::Policy::Exact
        );
        let s = Flags {
            sip_source_address: true,
            received_from: Some("203.0.113.1".parse().unwrap()),
            ..Flags::default()
        };
        let e = enforcement(&desc("10.1.1.1:5000"), &s, W);
        assert_eq!(e.bridge.policy, rtpedge_bridge::Policy::Address);
        assert_eq!(e.bridge.rtp, Some("203.0.113.1:5000".parse().unwrap()));
        assert_eq!(
            e.rtp_pinhole,
            RemotePolicy::Address("203.0.113.1".parse().unwrap())
        );
        let h = Flags {
            media_handover: true,
            trust_address: true,
            ..Flags::default()
        };
        let e = enforcement(&desc("10.1.1.1:5000"), &h, W);
        assert_eq!(e.bridge.handover, Some(HANDOVER_PACKETS));
        assert_eq!(e.rtp_pinhole, RemotePolicy::Any);
    }

    #[test]
    fn asymmetric_holds_the_address_and_sends_to_the_sdp_port() {
        let flags = Flags {
            asymmetric: true,
            // Asymmetric wins over exact (the peer does not send from its SDP port) and over
            // handover (nothing is learned).
            trust_address: true,
            media_handover: true,
            ..Flags::default()
        };
        let e = enforcement(&desc("192.0.2.1:4000"), &flags, W);
        assert_eq!(e.bridge.policy, rtpedge_bridge::Policy::Asymmetric);
        assert_eq!(e.bridge.rtp, Some("192.0.2.1:4000".parse().unwrap()));
        assert_eq!(e.bridge.rtcp, Some("192.0.2.1:4001".parse().unwrap()));
        assert_eq!(e.bridge.handover, None);
        let host = RemotePolicy::Address("192.0.2.1".parse().unwrap());
        assert_eq!((e.rtp_pinhole, e.rtcp_pinhole), (host, host));
        // With `SIP source address`, the SIP source's host and the SDP's ports.
        let flags = Flags {
            asymmetric: true,
            sip_source_address: true,
            received_from: Some("203.0.113.1".parse().unwrap()),
            ..Flags::default()
        };
        let e = enforcement(&desc("10.1.1.1:5000"), &flags, W);
        assert_eq!(e.bridge.rtp, Some("203.0.113.1:5000".parse().unwrap()));
        assert_eq!(
            e.rtp_pinhole,
            RemotePolicy::Address("203.0.113.1".parse().unwrap())
        );
    }

    #[test]
    fn rtcp_mux_offer_decisions_follow_rtpengine() {
        let f = |s: &str| {
            let mut m = RtcpMuxFlags::default();
            for w in s.split_whitespace() {
                match w {
                    "offer" => m.offer = true,
                    "require" => m.require = true,
                    "demux" => m.demux = true,
                    "accept" => m.accept = true,
                    "reject" => m.reject = true,
                    _ => unreachable!(),
                }
            }
            m
        };
        let d = |offerer, to_other, require, fixed| OfferMux {
            offerer,
            to_other,
            require,
            fixed,
        };
        // (offered, other side already muxed, flags) → decision
        let cases = [
            (true, false, "", d(true, true, false, None)),
            (false, false, "", d(false, false, false, Some(false))),
            (true, false, "demux", d(true, false, false, Some(true))),
            (
                true,
                false,
                "demux reject",
                d(false, false, false, Some(false)),
            ),
            (false, false, "offer", d(false, true, false, Some(false))),
            (true, false, "offer", d(true, true, false, None)),
            (false, false, "require", d(false, true, true, Some(false))),
            (true, false, "require", d(true, true, true, None)),
            (true, false, "accept", d(true, true, false, Some(true))),
            (true, false, "reject", d(false, true, false, Some(false))),
            (
                true,
                false,
                "offer reject",
                d(false, true, false, Some(false)),
            ),
            (false, false, "reject", d(false, false, false, Some(false))),
            // A re-offer toward a side that negotiated mux keeps it, without fallback port.
            (false, true, "", d(false, true, true, Some(false))),
            (true, true, "", d(true, true, true, None)),
            (true, true, "demux", d(true, false, false, Some(true))),
        ];
        for (offered, other, flags, want) in cases {
            assert_eq!(
                offer_mux(offered, other, &f(flags)),
                want,
                "offered {offered}, other muxed {other}, flags {flags:?}"
            );
        }
    }

    #[test]
    fn rtcp_addresses() {
        let mut d = desc("192.0.2.1:4000");
        assert_eq!(rtcp_address(&d), "192.0.2.1:4001".parse().unwrap());
        d.rtcp = Some("192.0.2.1:4100".parse().unwrap());
        assert_eq!(rtcp_address(&d), "192.0.2.1:4100".parse().unwrap());
        d.rtcp_mux = true;
        assert_eq!(rtcp_address(&d), "192.0.2.1:4000".parse().unwrap());
    }

    #[test]
    fn hold_address_gives_no_destination() {
        let e = enforcement(&desc("0.0.0.0:4000"), &Flags::default(), W);
        assert_eq!(e.bridge.rtp, None);
    }

    #[test]
    fn dscp_defaults_and_tos() {
        assert_eq!(dscp_for("audio", None, Some(46), Some(34)), Some(46));
        assert_eq!(dscp_for("video", None, Some(46), Some(34)), Some(34));
        assert_eq!(dscp_for("application", None, Some(46), Some(34)), None);
        assert_eq!(dscp_for("audio", Some(0xb8), Some(0), None), Some(46));
    }
}
