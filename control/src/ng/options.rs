//! Typed request options: the keys and flags of offer/answer/delete/query, normalised.
//!
//! rtpengine spells most keys and flags several ways (`strict source`, `strict-source`,
//! `trust-address`, `SIP-source-address`, `call-id`/`call ID`, `TOS`/`tos`, ...). Here every key,
//! flag and enumerated value is normalised once by [`normalise`] (ASCII lower case; space and
//! underscore become hyphens) and matched against one canonical spelling. That accepts every
//! spelling rtpengine accepts and a few more (any case, underscores everywhere), which is
//! harmless because no two rtpengine names differ only in case or separator.
//!
//! Unknown keys, flags and values are not errors (rtpengine ignores them too): they become
//! [`Warning`]s that the server can return in the reply's `warning` key. Keys that rtpengine
//! knows but rtpedge does not implement are reported the same way, as "not supported".
//! A key of the wrong type (a list where a string belongs), an oversized value, or an address
//! that does not parse is an error: the engine must not act on a half-understood request.

use std::fmt;
use std::net::IpAddr;

use super::bencode::Value;
use super::message::RequestErrorKind;
use super::rtpp_flags::{self, Token};

/// Longest call-id, tag, via-branch, label, account or interface name accepted.
pub const MAX_ID_LEN: usize = 1024;
/// Longest single flag (or other list item) accepted.
pub const MAX_FLAG_LEN: usize = 256;
/// Most items accepted in one list-valued key.
pub const MAX_LIST_ITEMS: usize = 128;
/// Longest `rtpp-flags` string accepted.
pub const MAX_RTPP_FLAGS_LEN: usize = 8192;
/// Most warnings kept per request; further ones are only counted.
pub const MAX_WARNINGS: usize = 32;
/// Longest key/flag/value quoted in a warning or an error message.
const MAX_QUOTE: usize = 64;

/// Normalises a key, flag or value name: ASCII lower case, `' '` and `'_'` → `'-'`
/// (non-UTF-8 bytes become U+FFFD, which matches no known name).
pub fn normalise(name: &[u8]) -> String {
    String::from_utf8_lossy(name)
        .chars()
        .map(|c| match c {
            ' ' | '_' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// A name as it appeared on the wire, shortened for messages.
pub(super) fn quote(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    if s.chars().count() <= MAX_QUOTE {
        return s.into_owned();
    }
    let mut out: String = s.chars().take(MAX_QUOTE).collect();
    out.push('…');
    out
}

/// Boolean flags (the `flags` list, bare words in `rtpp-flags`, and their key forms).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    /// `strict source`: after learning, drop packets from any other source.
    pub strict_source: bool,
    /// `symmetric` (rtpproxy `w`; rtpengine's default unless `asymmetric`).
    pub symmetric: bool,
    /// `asymmetric`: do not learn endpoints from received media.
    pub asymmetric: bool,
    /// `Some(true)`: `trust address` (use SDP addresses); `Some(false)`: `SIP source address`
    /// (use `received-from`). The last of the two in the request wins; `None`: neither given.
    pub trust_address: Option<bool>,
    /// `port latching`.
    pub port_latching: bool,
    /// `no port latching`.
    pub no_port_latching: bool,
    /// `media handover`: accept a new source address after signalling (re-learn).
    pub media_handover: bool,
    /// `no rtcp attribute`: omit `a=rtcp`.
    pub no_rtcp_attribute: bool,
    /// `full rtcp attribute`: `a=rtcp` with address.
    pub full_rtcp_attribute: bool,
    /// `loop protect`: recognise SDP rtpedge already rewrote.
    pub loop_protect: bool,
    /// `record call` (flag, or the `record call` key set to yes/on). rtpedge does not record:
    /// it is ignored, with a warning.
    pub record_call: bool,
    /// `all` (delete: all branches/tags of the call).
    pub all: bool,
    /// `fatal` (delete: unknown call-id is an error instead of a warning).
    pub fatal: bool,
    /// `fast` (delete: no statistics in the reply).
    pub fast: bool,
    /// `to-tag` as a flag (delete: honour the to-tag).
    pub to_tag: bool,
    /// `reject ICE`.
    pub reject_ice: bool,
    /// `trickle ICE` (also `ICE` list item `trickle`).
    pub trickle_ice: bool,
    /// `directional` (Kamailio adds it for directional block/silence operations).
    pub directional: bool,
}

/// The `replace` list (or `replace-*` flags): which SDP session parts to rewrite.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replace {
    /// `origin`: the address in `o=`.
    pub origin: bool,
    /// `origin-full`: the whole `o=` line.
    pub origin_full: bool,
    /// `session-connection`: the session-level `c=` line (older rtpengine; Kamailio scripts
    /// still send it).
    pub session_connection: bool,
    /// `session-name`: `s=`.
    pub session_name: bool,
    /// `SDP-version`: manage the `o=` version.
    pub sdp_version: bool,
    /// `username`: the `o=` username.
    pub username: bool,
    /// `zero-address`: replace `0.0.0.0` connection addresses.
    pub zero_address: bool,
    /// `force-increment-sdp-ver`.
    pub force_increment_sdp_version: bool,
}

/// The `rtcp-mux` list (or `rtcp-mux-*` flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RtcpMux {
    /// `offer` (also implied by `require`, as in rtpengine).
    pub offer: bool,
    /// `demux`.
    pub demux: bool,
    /// `accept`.
    pub accept: bool,
    /// `reject`.
    pub reject: bool,
    /// `require`.
    pub require: bool,
}

/// The `ICE` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ice {
    /// `remove`: strip ICE attributes.
    Remove,
    /// `force`: strip, then offer rtpedge as the only candidate.
    Force,
    /// `default`.
    Default,
    /// `optional`.
    Optional,
    /// `force-relay`.
    ForceRelay,
}

/// `transport-protocol` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportProtocol {
    RtpAvp,
    RtpSavp,
    RtpAvpf,
    RtpSavpf,
    UdpTlsRtpSavp,
    UdpTlsRtpSavpf,
}

impl TransportProtocol {
    /// The SDP spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportProtocol::RtpAvp => "RTP/AVP",
            TransportProtocol::RtpSavp => "RTP/SAVP",
            TransportProtocol::RtpAvpf => "RTP/AVPF",
            TransportProtocol::RtpSavpf => "RTP/SAVPF",
            TransportProtocol::UdpTlsRtpSavp => "UDP/TLS/RTP/SAVP",
            TransportProtocol::UdpTlsRtpSavpf => "UDP/TLS/RTP/SAVPF",
        }
    }

    /// Parses the SDP spelling, ignoring ASCII case.
    pub fn parse(s: &[u8]) -> Option<TransportProtocol> {
        [
            TransportProtocol::RtpAvp,
            TransportProtocol::RtpSavp,
            TransportProtocol::RtpAvpf,
            TransportProtocol::RtpSavpf,
            TransportProtocol::UdpTlsRtpSavp,
            TransportProtocol::UdpTlsRtpSavpf,
        ]
        .into_iter()
        .find(|p| p.as_str().as_bytes().eq_ignore_ascii_case(s))
    }

    /// rtpengine's/Kamailio's transport bit set (0x100 = set; bit 0 SRTP, bit 1 AVPF,
    /// bit 2 DTLS) to a protocol; combinations without a name give `None`.
    fn from_bits(bits: u32) -> Option<TransportProtocol> {
        match bits & 0x7 {
            0 => Some(TransportProtocol::RtpAvp),
            1 => Some(TransportProtocol::RtpSavp),
            2 => Some(TransportProtocol::RtpAvpf),
            3 => Some(TransportProtocol::RtpSavpf),
            4 => Some(TransportProtocol::UdpTlsRtpSavp),
            6 => Some(TransportProtocol::UdpTlsRtpSavpf),
            _ => None,
        }
    }
}

/// `address family` / the family in `received-from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressFamily {
    /// `IP4`
    Ip4,
    /// `IP6`
    Ip6,
}

impl AddressFamily {
    /// `IP4`/`IP6`, ignoring case.
    pub fn parse(s: &[u8]) -> Option<AddressFamily> {
        if s.eq_ignore_ascii_case(b"IP4") {
            Some(AddressFamily::Ip4)
        } else if s.eq_ignore_ascii_case(b"IP6") {
            Some(AddressFamily::Ip6)
        } else {
            None
        }
    }

    /// The family of an address.
    pub fn of(addr: IpAddr) -> AddressFamily {
        match addr {
            IpAddr::V4(_) => AddressFamily::Ip4,
            IpAddr::V6(_) => AddressFamily::Ip6,
        }
    }

    /// `IP4`/`IP6`.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressFamily::Ip4 => "IP4",
            AddressFamily::Ip6 => "IP6",
        }
    }
}

/// `received-from`: the SIP message's source address, as the proxy saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedFrom {
    /// The family element, when one was given and recognised (rtpengine also accepts a bare
    /// address string, without family).
    pub family: Option<AddressFamily>,
    /// The address.
    pub address: IpAddr,
}

/// `TOS`, with rtpengine's semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tos {
    /// 0..=255: set this TOS byte for the whole call.
    Value(u8),
    /// Negative: leave the call's TOS unchanged.
    Keep,
    /// 256 or more: revert to the configured default.
    Reset,
}

impl Tos {
    fn from_int(i: i64) -> Tos {
        match u8::try_from(i) {
            Ok(v) => Tos::Value(v),
            Err(_) if i < 0 => Tos::Keep,
            Err(_) => Tos::Reset,
        }
    }
}

/// `SIP message type` (Kamailio sends `sip_request` or `sip_reply` with every command).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SipMessageType {
    Request,
    Reply,
}

/// `direction` (or `from-interface`/`to-interface`, or `internal`/`external`/`direction=`
/// in `rtpp-flags`): the logical interfaces for the sending and the receiving side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Direction {
    /// Interface towards the sender of this message (first element).
    pub from: Option<String>,
    /// Interface towards the receiver (second element).
    pub to: Option<String>,
}

impl Direction {
    /// Fills the next free slot; gives the name back if both are taken.
    fn push(&mut self, name: String) -> std::result::Result<(), String> {
        if self.from.is_none() {
            self.from = Some(name);
        } else if self.to.is_none() {
            self.to = Some(name);
        } else {
            return Err(name);
        }
        Ok(())
    }
}

/// Everything optional in offer/answer/delete/query, typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub flags: Flags,
    pub replace: Replace,
    pub rtcp_mux: RtcpMux,
    pub direction: Direction,
    /// `ICE` (the last recognised value).
    pub ice: Option<Ice>,
    /// `transport-protocol` (a value other than `accept`).
    pub transport_protocol: Option<TransportProtocol>,
    /// `transport-protocol=accept` (answer: accept the offered protocol).
    pub transport_accept: bool,
    /// `TOS`.
    pub tos: Option<Tos>,
    /// `address family`.
    pub address_family: Option<AddressFamily>,
    /// `media address`: overrides SDP and `received-from` addresses.
    pub media_address: Option<IpAddr>,
    /// `received-from`.
    pub received_from: Option<ReceivedFrom>,
    /// `supports` contains `load limit`: overload may be answered with `result: load limit`.
    pub supports_load_limit: bool,
    /// `account` (rtpedge extension): the billing account this call is attributed to.
    pub account: Option<String>,
    /// `auth-token` (rtpedge's): a signed authorization token for call setup.
    pub auth_token: Option<String>,
    /// `from-uri` (rtpedge's; Kamailio: `rtpengine_offer("from-uri=$fu")`): the SIP From URI,
    /// for the account mapping.
    pub from_uri: Option<String>,
    /// `from-user` (rtpedge's; Kamailio: `"from-user=$fU"`): the From URI's user part.
    pub from_user: Option<String>,
    /// `label` / `from-label`.
    pub label: Option<String>,
    /// `to-label`.
    pub to_label: Option<String>,
    /// `delete delay` in seconds (0: immediately); `None`: absent or negative (the default).
    pub delete_delay: Option<u32>,
    /// `SIP message type`.
    pub sip_message_type: Option<SipMessageType>,
    /// `SIP code` (the response code, when the message was triggered by a reply).
    pub sip_code: Option<u16>,
}

/// Something in a request that was ignored. Rendered (`Display`) for the reply's `warning`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// A key neither rtpengine nor rtpedge knows.
    UnknownKey(String),
    /// A key rtpengine knows that rtpedge does not implement.
    UnsupportedKey(String),
    /// A flag neither rtpengine nor rtpedge knows.
    UnknownFlag(String),
    /// A flag rtpengine knows that rtpedge does not implement (or deliberately ignores).
    UnsupportedFlag(String),
    /// A value of a known key that is not recognised.
    UnknownValue { key: &'static str, value: String },
    /// A value of a known key that rtpedge does not implement.
    UnsupportedValue { key: &'static str, value: String },
    /// More than two interfaces given for `direction`.
    ExtraDirection(String),
    /// Two flags that contradict each other: `kept` applies, `ignored` does not.
    Contradiction {
        kept: &'static str,
        ignored: &'static str,
    },
    /// A `transport-protocol` conversion rtpedge cannot make for one media section (1-based);
    /// its SDP was left unchanged.
    TransportNotConverted {
        section: usize,
        from: String,
        to: String,
        reason: &'static str,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::UnknownKey(k) => write!(f, "unknown key \"{k}\" ignored"),
            Warning::UnsupportedKey(k) => write!(f, "key \"{k}\" not supported, ignored"),
            Warning::UnknownFlag(k) => write!(f, "unknown flag \"{k}\" ignored"),
            Warning::UnsupportedFlag(k) => write!(f, "flag \"{k}\" not supported, ignored"),
            Warning::UnknownValue { key, value } => {
                write!(f, "unknown value \"{value}\" for \"{key}\" ignored")
            }
            Warning::UnsupportedValue { key, value } => {
                write!(f, "value \"{value}\" for \"{key}\" not supported, ignored")
            }
            Warning::Contradiction { kept, ignored } => {
                write!(f, "flag \"{ignored}\" contradicts \"{kept}\", ignored")
            }
            Warning::TransportNotConverted {
                section,
                from,
                to,
                reason,
            } => write!(
                f,
                "transport protocol of media section {section} not converted from {from} to \
                 {to}: {reason}; SDP left unchanged"
            ),
            Warning::ExtraDirection(v) => {
                write!(
                    f,
                    "more than two interfaces in \"direction\": \"{v}\" ignored"
                )
            }
        }
    }
}

/// The warnings of one request, bounded ([`MAX_WARNINGS`] kept, the rest counted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Warnings {
    items: Vec<Warning>,
    dropped: usize,
}

impl Warnings {
    /// Adds a warning (or counts it once the list is full).
    pub fn push(&mut self, warning: Warning) {
        if self.items.len() < MAX_WARNINGS {
            self.items.push(warning);
        } else {
            self.dropped = self.dropped.saturating_add(1);
        }
    }

    /// The kept warnings, in request order.
    pub fn as_slice(&self) -> &[Warning] {
        &self.items
    }

    /// How many warnings were counted but not kept.
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// No warnings at all.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.dropped == 0
    }

    /// The text for the reply's `warning` key: warnings joined by `"; "`, `None` if empty.
    pub fn to_text(&self) -> Option<String> {
        if self.is_empty() {
            return None;
        }
        let mut text = self
            .items
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        if self.dropped > 0 {
            text.push_str(&format!("; and {} more", self.dropped));
        }
        Some(text)
    }
}

/// What the request parser collects before it knows which command needs what.
#[derive(Debug, Default)]
pub(super) struct Fields {
    pub call_id: Option<String>,
    pub from_tag: Option<String>,
    pub to_tag: Option<String>,
    pub via_branch: Option<String>,
    pub sdp: Option<Vec<u8>>,
    pub limit: Option<i64>,
    pub options: Options,
    pub warnings: Warnings,
}

type Result<T> = std::result::Result<T, RequestErrorKind>;

/// Keys rtpengine defines that rtpedge does not implement (normalised spellings).
const UNSUPPORTED_KEYS: &[&str] = &[
    "address",
    "alias-key",
    "audio-player",
    "player",
    "blob",
    "blob64",
    "bundle",
    "calls",
    "code",
    "digit",
    "codec",
    "codecs",
    "db-id",
    "drop-traffic",
    "dtls",
    "dtls-reverse",
    "dtls-fingerprint",
    "duration",
    "delay-buffer",
    "endpoint-learning",
    "extmap",
    "file",
    "frequency",
    "frequencies",
    "from-tags",
    "generate-rtcp",
    "ice-lite",
    "inbound-peer",
    "outbound-peer",
    "interface",
    "peer",
    "instance",
    "media",
    "medias",
    "media-echo",
    "metadata",
    "moh",
    "osrtp",
    "passthrough",
    "passthru",
    "pause",
    "ptime",
    "ptime-reverse",
    "reverse-ptime",
    "repacketize",
    "repeat-times",
    "repeat-duration",
    "sdes",
    "sdp-attr",
    "sdp-media-remove",
    "set-label",
    "source-tag",
    "source-call-id",
    "start-pos",
    "t38",
    "t.38",
    "tags",
    "template",
    "to-call-id",
    "trigger",
    "volume",
    "xmlrpc-callback",
    // Codec manipulation in rtpp-flags' key=value form.
    "transcode",
    "codec-transcode",
    "codec-strip",
    "codec-offer",
    "codec-mask",
    "codec-set",
    "codec-accept",
    "codec-except",
    "codec-consume",
];

/// Prefixes of further rtpengine keys rtpedge does not implement.
const UNSUPPORTED_KEY_PREFIXES: &[&str] = &[
    "dtmf-",
    "output-",
    "recording-",
    "trigger-",
    "end-trigger",
    "t38-",
    "t.38-",
    "vsc-",
];

/// Flags rtpengine defines that rtpedge does not implement (normalised spellings).
const UNSUPPORTED_FLAGS: &[&str] = &[
    "allow-asymmetric-codecs",
    "allow-asymmetric-codec",
    "allow-no-codec-media",
    "allow-no-codec-medias",
    "allow-empty-codec-media",
    "allow-empty-codec-medias",
    "allow-transcoding",
    "force-transcoding",
    "always-transcode",
    "asymmetric-codecs",
    "symmetric-codecs",
    "audio-player",
    "player",
    "no-player",
    "no-audio-player",
    "bidirectional",
    "block-dtmf",
    "block-egress",
    "block-short",
    "block-shorts",
    "block-short-packets",
    "debug",
    "debugging",
    "detect-dtmf",
    "discard-recording",
    "early-media",
    "egress",
    "exclude-recording",
    "fragment",
    "generate-mid",
    "generate-rtcp",
    "inactive",
    "inject-dtmf",
    "mirror-rtcp",
    "rtcp-mirror",
    "mix",
    "mixed",
    "nat-wait",
    "new-branch",
    "no-codec-renegotiation",
    "reuse-codecs",
    "no-passthrough",
    "passthrough",
    "no-redis-update",
    "no-tls-id",
    "no-jitter-buffer",
    "original-sendrecv",
    "pad-crypto",
    "pierce-nat",
    "provisional",
    "recording-vsc",
    "recording-announcement",
    "recrypt",
    "reorder-codecs",
    "reset",
    "single-codec",
    "siprec",
    "skip-recording-db",
    "skip-recording-database",
    "static-codec",
    "static-codecs",
    "strip-extmap",
    "unidirectional",
    "unsubscribe",
    "webrtc",
    "force-answer",
];

/// Prefixes of further rtpengine flags rtpedge does not implement (`codec-strip-PCMA`, ...).
const UNSUPPORTED_FLAG_PREFIXES: &[&str] = &[
    "endpoint-learning-",
    "from-tags-",
    "osrtp-",
    "bundle-",
    "codec-",
    "transcode-",
    "sdes-",
    "sdp-attr-",
    "t38-",
    "t.38-",
];

/// Kamailio's `via-branch=` selectors: instructions to the module, not branch values.
const VIA_BRANCH_SELECTORS: &[&str] = &[
    "1",
    "2",
    "auto",
    "extra",
    "next",
    "auto-next",
    "next-auto",
    "auto-extra",
    "extra-auto",
];

fn wrong_type(key: &[u8], expected: &'static str, found: &Value) -> RequestErrorKind {
    RequestErrorKind::WrongType {
        key: quote(key),
        expected,
        found: found.type_name(),
    }
}

fn invalid(key: &[u8], reason: impl Into<String>) -> RequestErrorKind {
    RequestErrorKind::InvalidValue {
        key: quote(key),
        reason: reason.into(),
    }
}

/// A byte string, or a type error.
fn bytes_of<'v>(key: &[u8], value: &'v Value) -> Result<&'v [u8]> {
    value
        .as_bytes()
        .ok_or_else(|| wrong_type(key, "string", value))
}

/// A bounded UTF-8 string (ids, tags, labels, interface names).
fn text_of(key: &[u8], value: &Value) -> Result<String> {
    text_of_bytes(key, bytes_of(key, value)?)
}

fn text_of_bytes(key: &[u8], bytes: &[u8]) -> Result<String> {
    if bytes.len() > MAX_ID_LEN {
        return Err(RequestErrorKind::ValueTooLong {
            key: quote(key),
            len: bytes.len(),
            max: MAX_ID_LEN,
        });
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| invalid(key, "not valid UTF-8"))
}

/// An integer, or a string holding one (`rtpp-flags` and Kamailio's generic `key=value`
/// produce strings; rtpengine accepts both).
fn int_of(key: &[u8], value: &Value) -> Result<i64> {
    match value {
        Value::Int(i) => Ok(*i),
        Value::Bytes(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .ok_or_else(|| wrong_type(key, "integer", value)),
        _ => Err(wrong_type(key, "integer", value)),
    }
}

/// A list of strings, or one string holding comma-separated items (rtpengine splits a
/// string given for a list-valued key on commas). Bounded in count and item length.
fn list_of<'v>(key: &[u8], value: &'v Value) -> Result<Vec<&'v [u8]>> {
    let items: Vec<&[u8]> = match value {
        Value::List(items) => {
            if items.len() > MAX_LIST_ITEMS {
                return Err(RequestErrorKind::TooManyItems {
                    key: quote(key),
                    max: MAX_LIST_ITEMS,
                });
            }
            items
                .iter()
                .map(|item| {
                    item.as_bytes()
                        .ok_or_else(|| wrong_type(key, "list of strings", item))
                })
                .collect::<Result<_>>()?
        }
        Value::Bytes(b) => {
            let items: Vec<&[u8]> = b
                .split(|&c| c == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|s| !s.is_empty())
                .collect();
            if items.len() > MAX_LIST_ITEMS {
                return Err(RequestErrorKind::TooManyItems {
                    key: quote(key),
                    max: MAX_LIST_ITEMS,
                });
            }
            items
        }
        _ => return Err(wrong_type(key, "list of strings", value)),
    };
    if let Some(long) = items.iter().find(|i| i.len() > MAX_FLAG_LEN) {
        return Err(RequestErrorKind::ValueTooLong {
            key: quote(key),
            len: long.len(),
            max: MAX_FLAG_LEN,
        });
    }
    Ok(items)
}

/// Parses an IP address as proxies write it (also accepting `[v6]`).
fn ip_of(key: &[u8], bytes: &[u8]) -> Result<IpAddr> {
    let text = std::str::from_utf8(bytes).map_err(|_| invalid(key, "not valid UTF-8"))?;
    let text = text.trim();
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse::<IpAddr>()
        .map_err(|_| invalid(key, format!("\"{}\" is not an IP address", quote(bytes))))
}

/// Where a key/flag came from: the dictionary itself, or the `rtpp-flags` string (which has
/// a few forms of its own).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Dict,
    RtppFlags,
}

impl Fields {
    /// Applies one top-level dictionary entry (anything but `command`).
    pub(super) fn apply_entry(&mut self, raw_key: &[u8], value: &Value) -> Result<()> {
        self.apply_key(raw_key, value, Origin::Dict)
    }

    fn apply_key(&mut self, raw_key: &[u8], value: &Value, origin: Origin) -> Result<()> {
        let key = normalise(raw_key);
        let opts = &mut self.options;
        match key.as_str() {
            "command" => {}
            "call-id" => self.call_id = Some(text_of(raw_key, value)?),
            "from-tag" => self.from_tag = Some(text_of(raw_key, value)?),
            "to-tag" => self.to_tag = Some(text_of(raw_key, value)?),
            "via-branch" => {
                let branch = text_of(raw_key, value)?;
                // In rtpp-flags, `via-branch=auto` etc. tell Kamailio which branch to send;
                // they are not branch values.
                if origin == Origin::Dict || !VIA_BRANCH_SELECTORS.contains(&branch.as_str()) {
                    self.via_branch = Some(branch);
                }
            }
            "sdp" => self.sdp = Some(bytes_of(raw_key, value)?.to_vec()),
            "flags" => {
                for flag in list_of(raw_key, value)? {
                    self.apply_flag(flag);
                }
            }
            "replace" => {
                for item in list_of(raw_key, value)? {
                    self.apply_replace(item);
                }
            }
            "rtcp-mux" => {
                for item in list_of(raw_key, value)? {
                    self.apply_rtcp_mux(item);
                }
            }
            "ice" => {
                for item in list_of(raw_key, value)? {
                    self.apply_ice(item);
                }
            }
            "supports" => {
                for item in list_of(raw_key, value)? {
                    if normalise(item) == "load-limit" {
                        self.options.supports_load_limit = true;
                    } else {
                        self.warnings.push(Warning::UnknownValue {
                            key: "supports",
                            value: quote(item),
                        });
                    }
                }
            }
            "direction" => {
                for name in list_of(raw_key, value)? {
                    let name = text_of_bytes(raw_key, name)?;
                    if let Err(extra) = self.options.direction.push(name) {
                        self.warnings
                            .push(Warning::ExtraDirection(quote(extra.as_bytes())));
                    }
                }
            }
            "from-interface" => opts.direction.from = Some(text_of(raw_key, value)?),
            "to-interface" => opts.direction.to = Some(text_of(raw_key, value)?),
            "transport-protocol" => {
                let proto = bytes_of(raw_key, value)?;
                if proto.eq_ignore_ascii_case(b"accept") {
                    opts.transport_accept = true;
                } else if let Some(p) = TransportProtocol::parse(proto) {
                    opts.transport_protocol = Some(p);
                } else {
                    self.warnings.push(Warning::UnknownValue {
                        key: "transport-protocol",
                        value: quote(proto),
                    });
                }
            }
            "tos" => opts.tos = Some(Tos::from_int(int_of(raw_key, value)?)),
            "address-family" => {
                let family = bytes_of(raw_key, value)?;
                match AddressFamily::parse(family) {
                    Some(f) => opts.address_family = Some(f),
                    None => self.warnings.push(Warning::UnknownValue {
                        key: "address family",
                        value: quote(family),
                    }),
                }
            }
            "media-address" => {
                opts.media_address = Some(ip_of(raw_key, bytes_of(raw_key, value)?)?);
            }
            "received-from" => self.apply_received_from(raw_key, value)?,
            "account" => opts.account = Some(text_of(raw_key, value)?),
            "auth-token" => opts.auth_token = Some(text_of(raw_key, value)?),
            "from-uri" => opts.from_uri = Some(text_of(raw_key, value)?),
            "from-user" => opts.from_user = Some(text_of(raw_key, value)?),
            "label" | "from-label" => opts.label = Some(text_of(raw_key, value)?),
            "to-label" => opts.to_label = Some(text_of(raw_key, value)?),
            "delete-delay" => {
                let delay = int_of(raw_key, value)?;
                opts.delete_delay = if delay < 0 {
                    None
                } else {
                    Some(
                        u32::try_from(delay)
                            .map_err(|_| invalid(raw_key, format!("{delay} is out of range")))?,
                    )
                };
            }
            "sip-message-type" => {
                let kind = bytes_of(raw_key, value)?;
                match normalise(kind).as_str() {
                    "request" | "sip-request" => {
                        opts.sip_message_type = Some(SipMessageType::Request);
                    }
                    "reply" | "response" | "sip-reply" | "sip-response" => {
                        opts.sip_message_type = Some(SipMessageType::Reply);
                    }
                    _ => self.warnings.push(Warning::UnknownValue {
                        key: "SIP message type",
                        value: quote(kind),
                    }),
                }
            }
            "sip-code" | "sip-response-code" => {
                let code = int_of(raw_key, value)?;
                opts.sip_code = Some(
                    u16::try_from(code)
                        .map_err(|_| invalid(raw_key, format!("{code} is out of range")))?,
                );
            }
            "record-call" => {
                let setting = bytes_of(raw_key, value)?;
                match normalise(setting).as_str() {
                    "yes" | "on" => {
                        opts.flags.record_call = true;
                        self.warnings
                            .push(Warning::UnsupportedKey("record call".to_owned()));
                    }
                    "no" | "off" => opts.flags.record_call = false,
                    _ => self.warnings.push(Warning::UnknownValue {
                        key: "record call",
                        value: quote(setting),
                    }),
                }
            }
            "all" => {
                let setting = bytes_of(raw_key, value)?;
                match normalise(setting).as_str() {
                    "all" => opts.flags.all = true,
                    "none" => opts.flags.all = false,
                    "offer-answer"
                    | "except-offer-answer"
                    | "not-offer-answer"
                    | "non-offer-answer"
                    | "flows" => {
                        self.warnings.push(Warning::UnsupportedValue {
                            key: "all",
                            value: quote(setting),
                        });
                    }
                    _ => self.warnings.push(Warning::UnknownValue {
                        key: "all",
                        value: quote(setting),
                    }),
                }
            }
            "limit" => self.limit = Some(int_of(raw_key, value)?),
            // Not inside rtpp-flags itself: no recursion on hostile input.
            "rtpp-flags" if origin == Origin::RtppFlags => {
                self.warnings.push(Warning::UnsupportedKey(quote(raw_key)));
            }
            "rtpp-flags" => {
                let text = bytes_of(raw_key, value)?;
                if text.len() > MAX_RTPP_FLAGS_LEN {
                    return Err(RequestErrorKind::ValueTooLong {
                        key: quote(raw_key),
                        len: text.len(),
                        max: MAX_RTPP_FLAGS_LEN,
                    });
                }
                let tokens =
                    rtpp_flags::tokenise(text).map_err(|e| invalid(raw_key, e.to_string()))?;
                self.apply_rtpp_flags(&tokens)?;
            }
            k if UNSUPPORTED_KEYS.contains(&k)
                || UNSUPPORTED_KEY_PREFIXES.iter().any(|p| k.starts_with(p)) =>
            {
                self.warnings.push(Warning::UnsupportedKey(quote(raw_key)));
            }
            _ => self.warnings.push(Warning::UnknownKey(quote(raw_key))),
        }
        Ok(())
    }

    fn apply_received_from(&mut self, raw_key: &[u8], value: &Value) -> Result<()> {
        let (family, address) = match value {
            Value::Bytes(addr) => (None, addr.as_slice()),
            Value::List(items) => match items.as_slice() {
                [family, address] => (
                    Some(bytes_of(raw_key, family)?),
                    bytes_of(raw_key, address)?,
                ),
                _ => {
                    return Err(invalid(
                        raw_key,
                        format!("expected [family, address], got {} items", items.len()),
                    ));
                }
            },
            _ => return Err(wrong_type(raw_key, "list", value)),
        };
        let address = ip_of(raw_key, address)?;
        let family = match family {
            None => None,
            Some(f) => match AddressFamily::parse(f) {
                Some(f) if f != AddressFamily::of(address) => {
                    return Err(invalid(
                        raw_key,
                        format!("family {} does not match address {address}", f.as_str()),
                    ));
                }
                Some(f) => Some(f),
                None => {
                    self.warnings.push(Warning::UnknownValue {
                        key: "received-from",
                        value: quote(f),
                    });
                    None
                }
            },
        };
        self.options.received_from = Some(ReceivedFrom { family, address });
        Ok(())
    }

    /// One flag from the `flags` list or a bare `rtpp-flags` word.
    fn apply_flag(&mut self, raw: &[u8]) {
        let flag = normalise(raw);
        let f = &mut self.options.flags;
        match flag.as_str() {
            "strict-source" => f.strict_source = true,
            "symmetric" => f.symmetric = true,
            "asymmetric" => f.asymmetric = true,
            "trust-address" => f.trust_address = Some(true),
            "sip-source-address" => f.trust_address = Some(false),
            "port-latching" => f.port_latching = true,
            "no-port-latching" => f.no_port_latching = true,
            "media-handover" => f.media_handover = true,
            "no-rtcp-attribute" => f.no_rtcp_attribute = true,
            "full-rtcp-attribute" => f.full_rtcp_attribute = true,
            "loop-protect" => f.loop_protect = true,
            "record-call" => {
                f.record_call = true;
                self.warnings.push(Warning::UnsupportedFlag(quote(raw)));
            }
            "all" => f.all = true,
            "fatal" => f.fatal = true,
            "fast" => f.fast = true,
            "to-tag" => f.to_tag = true,
            "reject-ice" | "ice-reject" => f.reject_ice = true,
            "trickle-ice" => f.trickle_ice = true,
            "directional" => f.directional = true,
            other => {
                // Prefixed aliases of list keys (`replace-origin`, `rtcp-mux-demux`); the
                // remainder keeps its original spelling for the value lookup.
                if let Some(rest) = strip_prefix_normalised(raw, other, "replace-") {
                    self.apply_replace(rest);
                } else if let Some(rest) = strip_prefix_normalised(raw, other, "rtcp-mux-") {
                    self.apply_rtcp_mux(rest);
                } else if UNSUPPORTED_FLAGS.contains(&other)
                    || UNSUPPORTED_FLAG_PREFIXES
                        .iter()
                        .any(|p| other.starts_with(p))
                {
                    self.warnings.push(Warning::UnsupportedFlag(quote(raw)));
                } else {
                    self.warnings.push(Warning::UnknownFlag(quote(raw)));
                }
            }
        }
    }

    fn apply_replace(&mut self, raw: &[u8]) {
        let r = &mut self.options.replace;
        match normalise(raw).as_str() {
            "origin" => r.origin = true,
            "origin-full" => r.origin_full = true,
            "session-connection" => r.session_connection = true,
            "session-name" => r.session_name = true,
            "sdp-version" => r.sdp_version = true,
            "username" => r.username = true,
            "zero-address" => r.zero_address = true,
            "force-increment-sdp-ver" => r.force_increment_sdp_version = true,
            _ => self.warnings.push(Warning::UnknownValue {
                key: "replace",
                value: quote(raw),
            }),
        }
    }

    fn apply_rtcp_mux(&mut self, raw: &[u8]) {
        let m = &mut self.options.rtcp_mux;
        match normalise(raw).as_str() {
            "offer" => m.offer = true,
            "demux" => m.demux = true,
            "accept" => m.accept = true,
            "reject" => m.reject = true,
            "require" => {
                m.offer = true;
                m.require = true;
            }
            _ => self.warnings.push(Warning::UnknownValue {
                key: "rtcp-mux",
                value: quote(raw),
            }),
        }
    }

    fn apply_ice(&mut self, raw: &[u8]) {
        let ice = match normalise(raw).as_str() {
            "remove" => Ice::Remove,
            "force" => Ice::Force,
            "default" => Ice::Default,
            "optional" => Ice::Optional,
            "force-relay" => Ice::ForceRelay,
            "trickle" => {
                self.options.flags.trickle_ice = true;
                return;
            }
            v if v == "ice2" || v.starts_with("lite") || v == "no-lite" => {
                self.warnings.push(Warning::UnsupportedValue {
                    key: "ICE",
                    value: quote(raw),
                });
                return;
            }
            _ => {
                self.warnings.push(Warning::UnknownValue {
                    key: "ICE",
                    value: quote(raw),
                });
                return;
            }
        };
        self.options.ice = Some(ice);
    }

    /// Applies an `rtpp-flags` string, already tokenised, the way rtpengine's daemon-side
    /// parser does: transport words build `transport-protocol`, `internal`/`external` and
    /// `direction=x` fill the direction slots, `to-tag=x` also sets the `to-tag` flag,
    /// `from-tag=x` also sets `directional`, other bare words are flags, `key=` with an empty
    /// value is a flag too, and every other `key=value` is applied like a dictionary key.
    fn apply_rtpp_flags(&mut self, tokens: &[Token]) -> Result<()> {
        let mut transport: u32 = 0;
        for token in tokens {
            match token {
                Token::Word(word) => match word.as_slice() {
                    // Transport words are case-sensitive in rtpengine and Kamailio.
                    b"RTP" => transport = (transport | 0x100) & !0x1,
                    b"AVP" => transport = (transport | 0x100) & !0x2,
                    b"SRTP" => transport |= 0x101,
                    b"AVPF" => transport |= 0x102,
                    b"DTLS" => transport |= 0x104,
                    b"RTP/AVP" => transport = 0x100,
                    b"RTP/AVPF" => transport = 0x102,
                    b"RTP/SAVP" => transport = 0x101,
                    b"RTP/SAVPF" => transport = 0x103,
                    b"UDP/TLS/RTP/SAVP" => transport = 0x104,
                    b"UDP/TLS/RTP/SAVPF" => transport = 0x106,
                    b"internal" | b"external" => {
                        let name = String::from_utf8_lossy(word).into_owned();
                        if self.options.direction.push(name).is_err() {
                            self.warnings.push(Warning::ExtraDirection(quote(word)));
                        }
                    }
                    _ => {
                        if word.len() > MAX_FLAG_LEN {
                            return Err(RequestErrorKind::ValueTooLong {
                                key: "rtpp-flags".to_owned(),
                                len: word.len(),
                                max: MAX_FLAG_LEN,
                            });
                        }
                        self.apply_flag(word);
                    }
                },
                Token::KeyValue(key, value) => {
                    if value.as_bytes().is_some_and(<[u8]>::is_empty) {
                        self.apply_flag(key);
                        continue;
                    }
                    match normalise(key).as_str() {
                        "to-tag" => {
                            self.to_tag = Some(text_of(key, value)?);
                            self.options.flags.to_tag = true;
                        }
                        "from-tag" => {
                            self.from_tag = Some(text_of(key, value)?);
                            self.options.flags.directional = true;
                        }
                        "direction" if value.as_bytes().is_some() => {
                            let name = text_of(key, value)?;
                            if let Err(extra) = self.options.direction.push(name) {
                                self.warnings
                                    .push(Warning::ExtraDirection(quote(extra.as_bytes())));
                            }
                        }
                        _ => self.apply_key(key, value, Origin::RtppFlags)?,
                    }
                }
            }
        }
        if transport != 0 {
            self.options.transport_protocol = TransportProtocol::from_bits(transport);
        }
        Ok(())
    }
}

/// If `normalised` (the normalised form of `raw`) starts with `prefix`, the rest of `raw`
/// (original spelling; normalisation maps bytes one-to-one for ASCII, so the offset holds).
fn strip_prefix_normalised<'r>(raw: &'r [u8], normalised: &str, prefix: &str) -> Option<&'r [u8]> {
    if normalised.starts_with(prefix) && raw.is_ascii() {
        raw.get(prefix.len()..).filter(|rest| !rest.is_empty())
    } else {
        None
    }
}
