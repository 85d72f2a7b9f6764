//! The parsed session description: typed views over the original bytes.
//!
//! Every typed value points back at its line (and, where the rewriter edits inside a line, at
//! the byte range of the field), so [`rewrite`](super::rewrite) can copy everything it does not
//! change verbatim.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

/// How the lines of a body end. Output lines that the rewriter inserts use the body's style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnding {
    /// `\r\n`, as RFC 8866 requires.
    CrLf,
    /// A bare `\n`, as some phones send.
    Lf,
}

impl LineEnding {
    /// The terminator bytes.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            LineEnding::CrLf => b"\r\n",
            LineEnding::Lf => b"\n",
        }
    }
}

/// One line of the original body: `raw[start..end]` is the content, `raw[end..next]` its
/// terminator (empty for a last line without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Line {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) next: usize,
    /// The type letter, or 0 for a blank (empty or whitespace-only) line.
    pub(super) kind: u8,
}

/// A parsed SDP body. Owns a copy of the original bytes; [`rewrite`](super::rewrite) reproduces
/// every line it does not change byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    pub(super) raw: Vec<u8>,
    pub(super) lines: Vec<Line>,
    pub(super) line_ending: LineEnding,
    pub(super) origin: Origin,
    /// Line index of `s=`.
    pub(super) session_name: Option<usize>,
    pub(super) connection: Option<Connection>,
    pub(super) attributes: Vec<Attribute>,
    pub(super) media: Vec<MediaDescription>,
}

impl SessionDescription {
    /// The original body, exactly as parsed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The line ending style (that of the first line; CRLF for a one-line body without one).
    pub fn line_ending(&self) -> LineEnding {
        self.line_ending
    }

    /// Number of lines, blank ones included.
    pub fn line_count(&self) -> usize {
        self.lines.len()
    }

    /// The `o=` line.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The `s=` value as bytes (its charset is whatever `a=charset` says, so it is not forced to
    /// be UTF-8), or `None` without an `s=` line.
    pub fn session_name(&self) -> Option<&[u8]> {
        let line = self.lines.get(self.session_name?)?;
        let value = self.raw.get(line.start + 2..line.end)?;
        Some(value)
    }

    /// The session-level `c=` line.
    pub fn connection(&self) -> Option<&Connection> {
        self.connection.as_ref()
    }

    /// Session-level attributes, in order.
    pub fn attributes(&self) -> &[Attribute] {
        &self.attributes
    }

    /// The first session-level attribute with this name.
    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name == name)
    }

    /// The media sections, in order.
    pub fn media(&self) -> &[MediaDescription] {
        &self.media
    }

    /// The session-level direction attribute, if any.
    pub fn direction(&self) -> Option<Direction> {
        direction_of(&self.attributes)
    }

    /// Whether the session carries `a=ice-lite`.
    pub fn ice_lite(&self) -> bool {
        self.attributes
            .iter()
            .any(|a| a.kind == AttributeKind::Ice(IceAttribute::Lite))
    }

    /// What the engine needs to know about media section `index` of an offer or answer, with
    /// session-level defaults applied. `None` if there is no such section.
    pub fn remote_media(&self, index: usize) -> Option<RemoteMedia<'_>> {
        let m = self.media.get(index)?;
        let address = m
            .connection
            .as_ref()
            .or(self.connection.as_ref())
            .map(|c| c.address);
        let disabled = m.port == 0;
        let rtcp_attr = m.attributes.iter().find_map(|a| match &a.kind {
            AttributeKind::Rtcp(r) => Some(r),
            _ => None,
        });
        let rtp = address.map(|ip| SocketAddr::new(ip, m.port));
        let rtcp = if disabled {
            None
        } else {
            match rtcp_attr {
                Some(r) => r.address.or(address).map(|ip| SocketAddr::new(ip, r.port)),
                None => match (address, m.port.checked_add(1)) {
                    (Some(ip), Some(port)) => Some(SocketAddr::new(ip, port)),
                    _ => None,
                },
            }
        };
        let has = |pred: &dyn Fn(&AttributeKind) -> bool| {
            m.attributes.iter().any(|a| pred(&a.kind))
                || self.attributes.iter().any(|a| pred(&a.kind))
        };
        Some(RemoteMedia {
            index,
            media_type: &m.media_type,
            proto: &m.proto,
            transport: m.transport,
            port: m.port,
            port_count: m.port_count.unwrap_or(1),
            disabled,
            rtp,
            rtcp,
            rtcp_mux: m
                .attributes
                .iter()
                .any(|a| a.kind == AttributeKind::RtcpMux),
            direction: m
                .direction()
                .or_else(|| self.direction())
                .unwrap_or(Direction::SendRecv),
            ice: has(&|k| {
                matches!(
                    k,
                    AttributeKind::Ice(
                        IceAttribute::Ufrag | IceAttribute::Pwd | IceAttribute::Candidate
                    )
                )
            }),
            ice_lite: self.ice_lite(),
            sdes: m
                .attributes
                .iter()
                .any(|a| matches!(a.kind, AttributeKind::Crypto(_))),
            dtls: has(&|k| matches!(k, AttributeKind::Fingerprint(_))),
            mid: m.attributes.iter().find_map(|a| match a.kind {
                AttributeKind::Mid => a.value.as_deref(),
                _ => None,
            }),
        })
    }

    /// [`remote_media`](Self::remote_media) for every section, in order.
    pub fn remote_media_all(&self) -> impl Iterator<Item = RemoteMedia<'_>> + '_ {
        (0..self.media.len()).filter_map(|i| self.remote_media(i))
    }
}

/// The `o=` line: `o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>`.
///
/// Kept as text: the address may legally be a host name, and some implementations send
/// session ids and versions that do not fit 64 bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub(super) username: String,
    pub(super) session_id: String,
    pub(super) session_version: String,
    pub(super) net_type: String,
    pub(super) addr_type: String,
    pub(super) address: String,
    pub(super) line: usize,
    /// Byte ranges within the line's content, for in-place edits.
    pub(super) version_range: Range<usize>,
    pub(super) addr_type_range: Range<usize>,
    pub(super) address_range: Range<usize>,
}

impl Origin {
    pub fn username(&self) -> &str {
        &self.username
    }
    pub fn session_id(&self) -> &str {
        &self.session_id
    }
    /// The version as sent.
    pub fn session_version(&self) -> &str {
        &self.session_version
    }
    /// The version as a number, if it is one that fits.
    pub fn session_version_number(&self) -> Option<u64> {
        parse_decimal(&self.session_version)
    }
    pub fn net_type(&self) -> &str {
        &self.net_type
    }
    pub fn addr_type(&self) -> &str {
        &self.addr_type
    }
    /// The address as sent (an IP address or a host name).
    pub fn address(&self) -> &str {
        &self.address
    }
    /// The address, if it is an IP address.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.parse().ok()
    }
    /// 1-based line number.
    pub fn line(&self) -> usize {
        self.line + 1
    }
}

/// A `c=IN IP4|IP6 <address>[/<ttl>][/<count>]` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub(super) address: IpAddr,
    pub(super) line: usize,
}

impl Connection {
    /// The (first) address. `0.0.0.0` is the RFC 2543 way of putting a call on hold.
    pub fn address(&self) -> IpAddr {
        self.address
    }
    /// 1-based line number.
    pub fn line(&self) -> usize {
        self.line + 1
    }
}

/// The transport protocol of an `m=` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// `RTP/AVP`
    RtpAvp,
    /// `RTP/AVPF`
    RtpAvpf,
    /// `RTP/SAVP` (SDES-SRTP)
    RtpSavp,
    /// `RTP/SAVPF`
    RtpSavpf,
    /// `UDP/TLS/RTP/SAVP` (DTLS-SRTP)
    UdpTlsRtpSavp,
    /// `UDP/TLS/RTP/SAVPF` (DTLS-SRTP, WebRTC)
    UdpTlsRtpSavpf,
    /// `udp` (non-RTP UDP, e.g. T.38 `udptl` is [`Other`](Self::Other))
    Udp,
    /// Anything else (the text is in [`MediaDescription::proto`]).
    Other,
}

impl Transport {
    /// Classify a proto token (ASCII case-insensitive, as deployed peers vary).
    pub fn from_proto(proto: &str) -> Transport {
        const TABLE: [(&str, Transport); 7] = [
            ("RTP/AVP", Transport::RtpAvp),
            ("RTP/AVPF", Transport::RtpAvpf),
            ("RTP/SAVP", Transport::RtpSavp),
            ("RTP/SAVPF", Transport::RtpSavpf),
            ("UDP/TLS/RTP/SAVP", Transport::UdpTlsRtpSavp),
            ("UDP/TLS/RTP/SAVPF", Transport::UdpTlsRtpSavpf),
            ("udp", Transport::Udp),
        ];
        TABLE
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(proto))
            .map_or(Transport::Other, |(_, t)| *t)
    }
    /// Carries RTP (and so RTCP).
    pub fn is_rtp(self) -> bool {
        !matches!(self, Transport::Udp | Transport::Other)
    }
    /// Carries SRTP (SDES or DTLS keyed).
    pub fn is_srtp(self) -> bool {
        matches!(
            self,
            Transport::RtpSavp
                | Transport::RtpSavpf
                | Transport::UdpTlsRtpSavp
                | Transport::UdpTlsRtpSavpf
        )
    }
    /// Keyed by DTLS.
    pub fn is_dtls(self) -> bool {
        matches!(self, Transport::UdpTlsRtpSavp | Transport::UdpTlsRtpSavpf)
    }
    /// Uses the AVPF feedback profile.
    pub fn is_avpf(self) -> bool {
        matches!(
            self,
            Transport::RtpAvpf | Transport::RtpSavpf | Transport::UdpTlsRtpSavpf
        )
    }
}

/// One `m=` section: the `m=` line and every line up to the next `m=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    pub(super) media_type: String,
    pub(super) port: u16,
    pub(super) port_count: Option<u16>,
    pub(super) proto: String,
    pub(super) transport: Transport,
    pub(super) formats: Vec<String>,
    pub(super) connection: Option<Connection>,
    pub(super) attributes: Vec<Attribute>,
    /// Line index of the `m=` line.
    pub(super) line: usize,
    /// Line index one past the section's last line.
    pub(super) end: usize,
    /// Byte range of the port number within the `m=` line's content.
    pub(super) port_range: Range<usize>,
    /// Byte range of the proto token within the `m=` line's content.
    pub(super) proto_range: Range<usize>,
}

impl MediaDescription {
    /// `audio`, `video`, `application`, `image`, ...
    pub fn media_type(&self) -> &str {
        &self.media_type
    }
    /// The port; 0 means the stream is rejected or disabled.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// The `/<count>` after the port, if present.
    pub fn port_count(&self) -> Option<u16> {
        self.port_count
    }
    /// Port 0: a rejected or disabled stream.
    pub fn is_disabled(&self) -> bool {
        self.port == 0
    }
    /// The proto token as sent, e.g. `RTP/AVP`.
    pub fn proto(&self) -> &str {
        &self.proto
    }
    pub fn transport(&self) -> Transport {
        self.transport
    }
    /// The format list (payload type numbers for RTP).
    pub fn formats(&self) -> &[String] {
        &self.formats
    }
    /// The media-level `c=` line, if the section has its own.
    pub fn connection(&self) -> Option<&Connection> {
        self.connection.as_ref()
    }
    /// Media-level attributes, in order.
    pub fn attributes(&self) -> &[Attribute] {
        &self.attributes
    }
    /// The first media-level attribute with this name.
    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name == name)
    }
    /// The media-level direction attribute, if any (see [`RemoteMedia::direction`] for the
    /// effective one).
    pub fn direction(&self) -> Option<Direction> {
        direction_of(&self.attributes)
    }
    /// The `a=rtcp` attribute, if any.
    pub fn rtcp(&self) -> Option<&RtcpAttribute> {
        self.attributes.iter().find_map(|a| match &a.kind {
            AttributeKind::Rtcp(r) => Some(r),
            _ => None,
        })
    }
    /// Whether `a=rtcp-mux` is present.
    pub fn rtcp_mux(&self) -> bool {
        self.attributes
            .iter()
            .any(|a| a.kind == AttributeKind::RtcpMux)
    }
    /// 1-based line number of the `m=` line.
    pub fn line(&self) -> usize {
        self.line + 1
    }
}

/// An `a=<name>[:<value>]` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub(super) name: String,
    pub(super) value: Option<String>,
    pub(super) kind: AttributeKind,
    pub(super) line: usize,
}

impl Attribute {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The text after `:` (trailing whitespace removed), `None` for a flag attribute.
    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }
    /// The typed meaning, for the attributes this module knows.
    pub fn kind(&self) -> &AttributeKind {
        &self.kind
    }
    /// 1-based line number.
    pub fn line(&self) -> usize {
        self.line + 1
    }
}

/// What a known attribute means. Attributes the rewriter only passes through carry an `Option`:
/// `None` means the value did not parse, which is not an error because the line is kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttributeKind {
    /// `a=rtcp:<port> [IN IP4|IP6 <address>]` (RFC 3605). Must parse: it says where RTCP goes.
    Rtcp(RtcpAttribute),
    /// `a=rtcp-mux` (RFC 5761).
    RtcpMux,
    /// `a=sendrecv`, `a=sendonly`, `a=recvonly`, `a=inactive`.
    Direction(Direction),
    /// ICE attributes (RFC 8839).
    Ice(IceAttribute),
    /// `a=crypto` (RFC 4568).
    Crypto(Option<Crypto>),
    /// `a=fingerprint` (RFC 8122).
    Fingerprint(Option<Fingerprint>),
    /// `a=setup` (RFC 4145).
    Setup(Option<Setup>),
    /// `a=rtpmap`.
    Rtpmap(Option<Rtpmap>),
    /// `a=fmtp:<format> <parameters>`; the format.
    Fmtp(Option<String>),
    /// `a=ptime` in milliseconds.
    Ptime(Option<u32>),
    /// `a=mid` (the value is [`Attribute::value`]).
    Mid,
    /// `a=group` (e.g. `BUNDLE 0 1`).
    Group,
    /// Any other attribute.
    Other,
}

/// `a=rtcp:<port> [IN IP4|IP6 <address>]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpAttribute {
    pub port: u16,
    pub address: Option<IpAddr>,
}

/// Media direction (RFC 3264).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }
    /// From an attribute name.
    pub fn from_name(name: &str) -> Option<Direction> {
        match name {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
    /// The direction an answerer sees from its side (`sendonly` ↔ `recvonly`).
    pub fn reversed(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }
}

/// The ICE attributes that [`Rewrite::strip_ice`](super::Rewrite::strip_ice) removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IceAttribute {
    Ufrag,
    Pwd,
    Options,
    Lite,
    Candidate,
    EndOfCandidates,
    RemoteCandidates,
    Mismatch,
    Pacing,
}

impl IceAttribute {
    pub fn from_name(name: &str) -> Option<IceAttribute> {
        match name {
            "ice-ufrag" => Some(IceAttribute::Ufrag),
            "ice-pwd" => Some(IceAttribute::Pwd),
            "ice-options" => Some(IceAttribute::Options),
            "ice-lite" => Some(IceAttribute::Lite),
            "candidate" => Some(IceAttribute::Candidate),
            "end-of-candidates" => Some(IceAttribute::EndOfCandidates),
            "remote-candidates" => Some(IceAttribute::RemoteCandidates),
            "ice-mismatch" => Some(IceAttribute::Mismatch),
            "ice-pacing" => Some(IceAttribute::Pacing),
            _ => None,
        }
    }
}

/// `a=crypto:<tag> <crypto-suite> <key-params> [<session-params>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crypto {
    pub tag: u32,
    pub suite: String,
    pub key_params: String,
    pub session_params: Vec<String>,
}

/// `a=fingerprint:<hash-function> <fingerprint>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub hash: String,
    pub value: String,
}

/// `a=setup` roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Setup {
    Active,
    Passive,
    ActPass,
    HoldConn,
}

/// `a=rtpmap:<payload type> <encoding name>/<clock rate>[/<channels>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rtpmap {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u16>,
}

/// What the engine reads from one media section of an offer or answer (see
/// [`SessionDescription::remote_media`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteMedia<'a> {
    /// Position of the section (0-based).
    pub index: usize,
    pub media_type: &'a str,
    pub proto: &'a str,
    pub transport: Transport,
    pub port: u16,
    /// The `/<count>` of the `m=` line, 1 without one.
    pub port_count: u16,
    /// Port 0: rejected or disabled.
    pub disabled: bool,
    /// Where the peer receives RTP: the media `c=` address, else the session `c=` address, with
    /// the `m=` port. `None` when neither `c=` exists. A `0.0.0.0` address is returned as is
    /// (RFC 2543 hold, see [`is_on_hold`](Self::is_on_hold)).
    pub rtp: Option<SocketAddr>,
    /// Where the peer receives RTCP: `a=rtcp` (its address, else the RTP address), else the RTP
    /// port + 1. Also filled when `rtcp_mux` is offered, because an offer with `a=rtcp-mux` must
    /// still work if the answer does not accept it. `None` for a disabled stream.
    pub rtcp: Option<SocketAddr>,
    /// `a=rtcp-mux` is present.
    pub rtcp_mux: bool,
    /// Media-level direction, else session-level, else `sendrecv`.
    pub direction: Direction,
    /// ICE credentials or candidates are present (media or session level).
    pub ice: bool,
    /// The session has `a=ice-lite`.
    pub ice_lite: bool,
    /// The section has `a=crypto` (SDES).
    pub sdes: bool,
    /// A DTLS fingerprint is present (media or session level).
    pub dtls: bool,
    /// `a=mid`.
    pub mid: Option<&'a str>,
}

impl RemoteMedia<'_> {
    /// The peer does not want to receive: `sendonly`, `inactive`, or a `0.0.0.0` address.
    pub fn is_on_hold(&self) -> bool {
        matches!(self.direction, Direction::SendOnly | Direction::Inactive)
            || self.rtp.is_some_and(|a| a.ip().is_unspecified())
    }
}

pub(super) fn direction_of(attributes: &[Attribute]) -> Option<Direction> {
    attributes.iter().find_map(|a| match a.kind {
        AttributeKind::Direction(d) => Some(d),
        _ => None,
    })
}

/// A decimal number made of ASCII digits only (`u64::from_str` would also take a `+`).
pub(super) fn parse_decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}
