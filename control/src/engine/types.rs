//! The engine's inputs and outputs, independent of any wire format: the ng front end (and the
//! built-in SIP proxy later) translate their messages into these.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

/// A point in time as the engine needs it: monotonic for timers, wall-clock for records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp {
    /// Monotonic time, for timers.
    pub mono: Instant,
    /// Unix time in milliseconds, for CDRs and reports.
    pub unix_ms: i64,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Self {
            mono: Instant::now(),
            unix_ms,
        }
    }

    /// This time plus `d` (both clocks).
    pub fn plus(self, d: Duration) -> Self {
        Self {
            mono: self.mono + d,
            unix_ms: self.unix_ms + d.as_millis() as i64,
        }
    }
}

/// Why a call ended. The string forms are what CDRs and reports carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// Deleted by signaling (BYE, CANCEL, `delete`).
    Delete,
    /// Offered but never answered in time.
    OfferTimeout,
    /// No media in either direction for the media timeout.
    MediaTimeout,
    /// On hold (inactive / send-only) and silent for the silent timeout.
    SilentTimeout,
    /// Reached the maximum call duration.
    FinalTimeout,
    /// The prepaid credit ran out.
    CreditExhausted,
    /// Ended by the operator.
    Operator,
    /// Suspected fraud.
    Fraud,
    /// The daemon stopped (SIGTERM).
    Shutdown,
    /// Found active after a restart.
    Restart,
    /// A media-plane failure made the call unusable.
    Error,
}

impl EndReason {
    /// The reason as written into CDRs (`end_reason`).
    pub const fn as_str(self) -> &'static str {
        match self {
            EndReason::Delete => "delete",
            EndReason::OfferTimeout => "offer-timeout",
            EndReason::MediaTimeout => "media-timeout",
            EndReason::SilentTimeout => "silent-timeout",
            EndReason::FinalTimeout => "final-timeout",
            EndReason::CreditExhausted => "credit-exhausted",
            EndReason::Operator => "operator",
            EndReason::Fraud => "fraud",
            EndReason::Shutdown => "shutdown",
            EndReason::Restart => "restart",
            EndReason::Error => "error",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Direction attribute of a media section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Direction {
    /// Both ways.
    #[default]
    SendRecv,
    /// The describing side only sends.
    SendOnly,
    /// The describing side only receives.
    RecvOnly,
    /// No media (hold).
    Inactive,
}

impl Direction {
    /// On hold: the silent timeout applies instead of the media timeout.
    pub fn is_hold(self) -> bool {
        matches!(self, Direction::SendOnly | Direction::Inactive)
    }
}

/// One media section of an offer or answer, as the engine needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaDesc {
    /// `audio`, `video`, `application`, ...
    pub kind: String,
    /// Transport protocol (`RTP/AVP`, `RTP/SAVP`, ...).
    pub protocol: String,
    /// Where the describing side receives RTP (port 0: the stream is disabled).
    pub rtp: SocketAddr,
    /// Where it receives RTCP, if signalled (`a=rtcp`).
    pub rtcp: Option<SocketAddr>,
    /// It uses rtcp-mux.
    pub rtcp_mux: bool,
    /// Direction.
    pub direction: Direction,
    /// The first (preferred) codec, `ENCODING/CLOCK` (e.g. `PCMU/8000`), when known.
    pub codec: Option<String>,
}

impl MediaDesc {
    /// Disabled (port 0) or unreachable (unspecified address, as in old-style hold).
    pub fn is_disabled(&self) -> bool {
        self.rtp.port() == 0
    }

    /// SRTP: the relay validates leniently and never touches keys.
    pub fn is_srtp(&self) -> bool {
        self.protocol.contains("SAVP")
    }
}

/// Per-request options from signaling flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// The SDP address can be trusted (`trust address`): exact remote.
    pub trust_address: bool,
    /// Use the SIP source address as the media address (`SIP source address`).
    pub sip_source_address: bool,
    /// The remote may move after a probation (`media handover`).
    pub media_handover: bool,
    /// Address the SIP message came from (`received-from`).
    pub received_from: Option<IpAddr>,
    /// A full TOS byte for all media of the call (`TOS`).
    pub tos: Option<u8>,
    /// Billing account (later issue).
    pub account: Option<String>,
    /// Family of the legs facing the other side, when it differs from the offerer's (ng
    /// `address family`: an IPv4 caller to an IPv6 callee). `None`: the offerer's family.
    pub other_side_ipv6: Option<bool>,
    /// The describing side sends from other ports than it receives on (ng `asymmetric`):
    /// media goes to its SDP address and port, is accepted from its address (any port), and
    /// nothing is learned.
    pub asymmetric: bool,
    /// ng `rtcp-mux` (acts in offers, as in rtpengine).
    pub rtcp_mux: RtcpMuxFlags,
}

/// ng `rtcp-mux` options, with rtpengine's meanings (the default follows the offerer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RtcpMuxFlags {
    /// `offer`: offer rtcp-mux to the other side even if the offerer did not.
    pub offer: bool,
    /// `require`: like `offer`, and advertise no RTCP port at all (the other side is taken to
    /// have accepted rtcp-mux already).
    pub require: bool,
    /// `demux`: do not offer rtcp-mux to the other side, but accept it from the offerer.
    pub demux: bool,
    /// `accept`: accept the offerer's rtcp-mux whatever the other side answers.
    pub accept: bool,
    /// `reject`: reject the offerer's rtcp-mux.
    pub reject: bool,
}

/// How an advertised leg presents rtcp-mux in SDP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MuxAdvert {
    /// No rtcp-mux: `a=rtcp` names the leg's RTCP port, no `a=rtcp-mux`.
    #[default]
    No,
    /// Offered: `a=rtcp-mux`, with `a=rtcp` naming the RTCP port for a peer that declines.
    Offer,
    /// In use (an answer accepting it, or an offer requiring it): `a=rtcp-mux`, no RTCP port.
    Use,
}

/// An offer (or re-offer) from the side identified by `from_tag`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferRequest {
    /// SIP Call-ID.
    pub call_id: String,
    /// Tag of the offering side.
    pub from_tag: String,
    /// Tag of the other side, when known (re-INVITE).
    pub to_tag: Option<String>,
    /// Media sections, in SDP order.
    pub media: Vec<MediaDesc>,
    /// Options.
    pub flags: Flags,
}

/// An answer: `to_tag` identifies the answering side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerRequest {
    /// SIP Call-ID.
    pub call_id: String,
    /// Tag of the offering side.
    pub from_tag: String,
    /// Tag of the answering side.
    pub to_tag: String,
    /// Media sections, in the order of the offer.
    pub media: Vec<MediaDesc>,
    /// Options.
    pub flags: Flags,
}

/// What the rewritten SDP must advertise for one media section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advertised {
    /// Local RTP address (port 0 for a disabled stream).
    pub rtp: SocketAddr,
    /// Local RTCP address (None when the leg has none).
    pub rtcp: Option<SocketAddr>,
    /// How the leg presents rtcp-mux.
    pub rtcp_mux: MuxAdvert,
    /// In an answer: the transport protocol the offerer offered (rtpengine answers with it
    /// unless `transport-protocol` says otherwise).
    pub offered_protocol: Option<String>,
}

/// Statistics of one stream (one leg's inbound direction) for reports and CDRs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// Local address of the leg.
    pub local: Option<SocketAddr>,
    /// Local RTCP address of the leg (None with rtcp-mux).
    pub local_rtcp: Option<SocketAddr>,
    /// Remote endpoint (latched or signalled).
    pub endpoint: Option<SocketAddr>,
    /// Remote endpoint as signalled in SDP.
    pub advertised: Option<SocketAddr>,
    /// RTP+RTCP packets received from the remote and accepted.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Packets dropped (invalid, wrong source, not spliced; and by XDP).
    pub errors: u64,
    /// RTCP packets received (included in `packets`).
    pub rtcp_packets: u64,
    /// Their bytes (included in `bytes`).
    pub rtcp_bytes: u64,
    /// Time since the last accepted RTP packet.
    pub idle: Option<Duration>,
    /// SSRC of the received RTP stream.
    pub ssrc: Option<u32>,
    /// RTP packets lost (RFC 3550).
    pub lost: i64,
    /// Interarrival jitter.
    pub jitter: Duration,
    /// Packets dropped by the XDP pinhole of this leg.
    pub dropped_xdp: u64,
}

/// One media section of a call in a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaReport {
    /// Index of the media section (0-based, SDP order).
    pub index: usize,
    /// `audio`, `video`, ...
    pub kind: String,
    /// Transport protocol.
    pub protocol: String,
    /// Preferred codec as last signalled.
    pub codec: Option<String>,
    /// What side A (the original offerer) sent; received on the A-facing leg.
    pub from_a: StreamReport,
    /// What side B sent; received on the B-facing leg.
    pub from_b: StreamReport,
    /// What each party added during the call (service `add-party`) sent, by name.
    pub parties: Vec<(String, StreamReport)>,
}

/// A call in a report (`query`, `delete` replies, the operator API).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallReport {
    /// SIP Call-ID.
    pub call_id: String,
    /// Tag of side A (the original offerer).
    pub a_tag: String,
    /// Tag of side B, once answered.
    pub b_tag: Option<String>,
    /// When the call was created (unix ms).
    pub created_ms: i64,
    /// When it was last signalled (unix ms).
    pub last_signal_ms: i64,
    /// When it was answered (unix ms).
    pub answered_ms: Option<i64>,
    /// `offered`, `answered` or `ended`.
    pub state: &'static str,
    /// Billing account, when named.
    pub account: Option<String>,
    /// Media sections.
    pub media: Vec<MediaReport>,
}

/// A call detail record: exactly one per call, written when the call ends (and opened at
/// answer, so a crash never loses a call that was answered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cdr {
    /// SIP Call-ID.
    pub call_id: String,
    /// Tag of side A.
    pub from_tag: String,
    /// Tag of side B.
    pub to_tag: Option<String>,
    /// Billing account.
    pub account: Option<String>,
    /// Offer time (unix ms).
    pub offer_at: i64,
    /// Answer time (unix ms).
    pub answer_at: Option<i64>,
    /// End time (unix ms); None while the call is still up (write-ahead row).
    pub end_at: Option<i64>,
    /// Why it ended.
    pub end_reason: Option<EndReason>,
    /// Answer to end, in ms (0 if never answered).
    pub duration_ms: i64,
    /// Packets from A to B (accepted from A).
    pub packets_ab: u64,
    /// Bytes from A to B.
    pub bytes_ab: u64,
    /// Packets from B to A.
    pub packets_ba: u64,
    /// Bytes from B to A.
    pub bytes_ba: u64,
    /// RTP packets lost from A to B.
    pub lost_ab: i64,
    /// RTP packets lost from B to A.
    pub lost_ba: i64,
    /// Jitter A to B (µs, worst media section).
    pub jitter_ab_us: u64,
    /// Jitter B to A (µs).
    pub jitter_ba_us: u64,
    /// DSCP the call's media was marked with.
    pub dscp: Option<u8>,
    /// Packets the XDP pinholes of the call dropped.
    pub dropped_xdp: u64,
    /// What the call cost (minor currency units), when billed.
    pub charge: Option<i64>,
    /// Marks such as fraud-guard findings (`call-rate`, `media-after-bye`).
    pub flags: Vec<String>,
    /// Services inserted during the call (`qos-upgrade`, `add-party`, ...).
    pub services: Vec<String>,
}
