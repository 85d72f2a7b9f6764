//! ng `transport-protocol`: which `m=` protocol changes rtpedge can make, with rtpengine's
//! meaning, and which it cannot.
//!
//! rtpedge relays media end to end and never holds keys, so it can only change the *feedback*
//! part of a profile, where the packets on the wire stay the same: `RTP/AVP` ↔ `RTP/AVPF`, and
//! likewise `RTP/SAVP` ↔ `RTP/SAVPF` and `UDP/TLS/RTP/SAVP` ↔ `UDP/TLS/RTP/SAVPF`, whose keying
//! (`a=crypto`, or DTLS with `a=fingerprint`) passes through untouched. Going from a feedback
//! profile to one without (`…AVPF` → `…AVP`) drops the `a=rtcp-fb` lines, as rtpengine does;
//! the other way only the protocol changes. A change between plain RTP, SDES-SRTP and
//! DTLS-SRTP would need the relay to encrypt, decrypt or run the key exchange: not supported,
//! the section is left unchanged and the reply says why. Sections that do not carry RTP (T.38
//! `udptl`, MSRP, ...) are left alone, as rtpengine applies the option to RTP media only.

use crate::ng::TransportProtocol;

/// What happens to one media section's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Conversion {
    /// Nothing to change (already that protocol, or not RTP).
    Unchanged,
    /// Write `proto` on the `m=` line; drop `a=rtcp-fb` lines if `strip_rtcp_fb`.
    Rewrite {
        proto: &'static str,
        strip_rtcp_fb: bool,
    },
}

/// Why a conversion is not made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Unsupported(pub &'static str);

/// How a profile is keyed: plain, SDES (`a=crypto`), DTLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keying {
    Plain,
    Sdes,
    Dtls,
}

fn keying(p: TransportProtocol) -> Keying {
    match p {
        TransportProtocol::RtpAvp | TransportProtocol::RtpAvpf => Keying::Plain,
        TransportProtocol::RtpSavp | TransportProtocol::RtpSavpf => Keying::Sdes,
        TransportProtocol::UdpTlsRtpSavp | TransportProtocol::UdpTlsRtpSavpf => Keying::Dtls,
    }
}

fn is_avpf(p: TransportProtocol) -> bool {
    matches!(
        p,
        TransportProtocol::RtpAvpf
            | TransportProtocol::RtpSavpf
            | TransportProtocol::UdpTlsRtpSavpf
    )
}

/// The change from the section's protocol `from` (as written on its `m=` line) to `to`.
pub(super) fn convert(from: &str, to: TransportProtocol) -> Result<Conversion, Unsupported> {
    let Some(from) = TransportProtocol::parse(from.as_bytes()) else {
        return Ok(Conversion::Unchanged);
    };
    if from == to {
        return Ok(Conversion::Unchanged);
    }
    match (keying(from), keying(to)) {
        (a, b) if a == b => Ok(Conversion::Rewrite {
            proto: to.as_str(),
            strip_rtcp_fb: is_avpf(from) && !is_avpf(to),
        }),
        (Keying::Plain, Keying::Sdes) => Err(Unsupported(
            "SRTP with SDES keys would have to be generated and the media encrypted by the \
             relay, which rtpedge does not do",
        )),
        (Keying::Plain, Keying::Dtls) => Err(Unsupported(
            "DTLS-SRTP would have to be terminated and the media encrypted by the relay, which \
             rtpedge does not do",
        )),
        (Keying::Sdes | Keying::Dtls, Keying::Plain) => Err(Unsupported(
            "the media would have to be decrypted by the relay, which holds no SRTP keys",
        )),
        _ => Err(Unsupported(
            "SDES and DTLS-SRTP keying would have to be translated by the relay, which holds \
             no SRTP keys",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TransportProtocol::*;

    #[test]
    fn feedback_profile_changes_are_made_and_avpf_to_avp_drops_rtcp_fb() {
        let rw = |proto, strip_rtcp_fb| {
            Ok(Conversion::Rewrite {
                proto,
                strip_rtcp_fb,
            })
        };
        assert_eq!(convert("RTP/AVP", RtpAvpf), rw("RTP/AVPF", false));
        assert_eq!(convert("RTP/AVPF", RtpAvp), rw("RTP/AVP", true));
        assert_eq!(convert("rtp/avpf", RtpAvp), rw("RTP/AVP", true));
        assert_eq!(convert("RTP/SAVPF", RtpSavp), rw("RTP/SAVP", true));
        assert_eq!(convert("RTP/SAVP", RtpSavpf), rw("RTP/SAVPF", false));
        assert_eq!(
            convert("UDP/TLS/RTP/SAVPF", UdpTlsRtpSavp),
            rw("UDP/TLS/RTP/SAVP", true)
        );
    }

    #[test]
    fn the_same_protocol_and_non_rtp_sections_are_left_alone() {
        assert_eq!(convert("RTP/AVP", RtpAvp), Ok(Conversion::Unchanged));
        assert_eq!(convert("rtp/avp", RtpAvp), Ok(Conversion::Unchanged));
        assert_eq!(convert("udptl", RtpAvpf), Ok(Conversion::Unchanged));
        assert_eq!(convert("TCP/MSRP", RtpSavp), Ok(Conversion::Unchanged));
    }

    #[test]
    fn conversions_that_need_keys_are_refused_with_the_reason() {
        for (from, to) in [
            ("RTP/AVP", RtpSavp),
            ("RTP/AVPF", RtpSavpf),
            ("RTP/AVP", UdpTlsRtpSavpf),
            ("RTP/SAVP", RtpAvp),
            ("UDP/TLS/RTP/SAVPF", RtpAvpf),
            ("RTP/SAVPF", UdpTlsRtpSavpf),
            ("UDP/TLS/RTP/SAVP", RtpSavp),
        ] {
            let Err(Unsupported(reason)) = convert(from, to) else {
                panic!("{from} → {to:?} must be refused");
            };
            assert!(
                reason.contains("rtpedge") || reason.contains("relay"),
                "{reason}"
            );
        }
    }
}
