//! From signaling to enforcement: which remote policy a leg gets, in the bridge (latching) and
//! in the XDP pinholes alike, and which DSCP its media carries.
//!
//! The rule is the strictest that signaling allows: an exact remote when the SDP address can be
//! trusted (`trust address`, or it equals the SIP source address), the SIP source address when
//! asked (`SIP source address`), learning otherwise (NAT); the remote moves only with `media
//! handover`, and then only after the bridge's probation. With default flags, media from a
//! third address is never forwarded and never redirects a leg.

use std::{net::SocketAddr, time::Duration};

use rtpedge_bridge::RemoteSpec;
use rtpedge_dataplane::RemotePolicy;

use super::types::{Flags, MediaDesc};

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
    };
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
