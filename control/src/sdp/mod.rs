//! SDP (RFC 8866) parsing and the byte-exact rewriting that a media relay's offer/answer needs.
//!
//! # What this module owns
//!
//! - [`parse`]: SDP text → a typed, read-only [`SessionDescription`] that keeps the byte range
//!   of every line of the original body.
//! - [`SessionDescription::remote_media`]: what the session engine reads from an offer or answer
//!   (where the peer wants RTP and RTCP, rtcp-mux, protocol, direction, rejected or not, ICE,
//!   SDES, DTLS).
//! - [`rewrite`]: a [`SessionDescription`] plus a [`Rewrite`] (filled by the engine) → new SDP
//!   text in which every line the rewrite does not change is copied byte for byte.
//!
//! # What it must not do
//!
//! It knows nothing of calls, legs, port allocation, sockets, interfaces, ng flags or the
//! offer/answer state: the engine decides *what* the SDP must say (which port, which address,
//! whether to strip ICE) and this module only says it. It does no I/O, reads no clock, keeps no
//! state between calls, and never panics on input. It does not normalise, reorder or
//! "fix" anything it was not asked to change: codecs, `fmtp`, `crypto`, `fingerprint`, `b=`,
//! unknown attributes and blank lines pass through untouched. It does not negotiate codecs,
//! transcode transports or generate ICE candidates or keys.
//!
//! # Parsing
//!
//! Lines end in CRLF or a bare LF (both are kept, per line). Structure lines must be well formed:
//! `v=0` first, one `o=` with six fields, `c=IN IP4|IP6 <address>` (an IP address, not a host
//! name), `m=<media> <port>[/<count>] <proto> <fmt>...`, `a=<name>[:<value>]`, and `a=rtcp` (it
//! says where RTCP goes). Everything else is kept as bytes: `s=` and `i=` are not required to be
//! UTF-8 (their charset is `a=charset`'s), unknown line letters and blank lines are allowed.
//! Input that would be ambiguous is rejected rather than guessed at: NUL or a CR outside CRLF, a
//! second `c=` at one level, a second `a=rtcp` in a section, contradicting direction attributes,
//! a second `v=`/`o=`/`s=`, or `o=`/`s=`/`t=` inside a media section. [`Limits`] bound the size
//! (64 KiB, 4096 lines, 64 media sections by default). Errors carry the 1-based line number.
//!
//! # Rewriting
//!
//! `Rewrite::default()` is the identity: the output equals the input byte for byte. Lines the
//! rewriter writes or inserts use the body's line ending; a body without a final line ending
//! keeps lacking one. A line the rewrite addresses is only rewritten if its value changes (so a
//! rewrite that repeats what the body already says leaves it byte-exact too).
//!
//! ## Connection addresses (`c=`)
//!
//! [`MediaRewrite::address`] says where the peer must send a section's media; the rewriter
//! decides on which line that is written, as rtpengine does, and adds lines only when needed:
//!
//! - A section with its own `c=` gets that line rewritten (the session `c=` is then left alone
//!   unless other sections rely on it or [`Rewrite::session_connection`] is given).
//! - Sections without their own `c=` rely on the session `c=`. If there is one, it is set to
//!   [`Rewrite::session_connection`] when given, else to the address most of those sections
//!   need (ties: the first section's), and each of those sections that needs another address
//!   gets a media-level `c=` inserted after its `m=` (and `i=`) line. A section without a
//!   requested address keeps the address it had (a `c=` with the original address is inserted
//!   if the session `c=` changes under it), except a rejected one (port 0 after the rewrite),
//!   whose address means nothing.
//! - Without a session `c=`, a section without its own `c=` that is given an address gets a
//!   media-level `c=` inserted.
//!
//! So when all media share one address (the usual case) only the session `c=` changes, and an
//! SDP that had per-media `c=` lines keeps that shape. A rewritten `c=` is `c=IN IP4|IP6 <addr>`
//! (a multicast `/ttl` is dropped: the relay's address is unicast).
//!
//! ## RTCP (`a=rtcp`, `a=rtcp-mux`)
//!
//! - [`RtcpRewrite::Set`] writes `a=rtcp:PORT` in place of the section's `a=rtcp`, or at the
//!   end of the section. With [`RtcpAttributeStyle::Auto`] the `IN IP4|IP6 ADDR` part is added
//!   only when the given RTCP address differs from the section's connection address after the
//!   rewrite; with [`RtcpAttributeStyle::Full`] always (the given address, else the section's).
//! - [`RtcpAttributeStyle::Omit`] removes every `a=rtcp` and writes none.
//! - [`RtcpMuxRewrite::Use`] (RTCP is multiplexed: an answer accepting it, or an offer requiring
//!   it) makes sure `a=rtcp-mux` is present and removes `a=rtcp`. [`RtcpMuxRewrite::Offer`] adds
//!   `a=rtcp-mux` but still writes `a=rtcp` for a peer that declines; `Remove` removes it.
//!   (rtpengine's answer style, `a=rtcp:<RTP port>` next to `a=rtcp-mux`, is `Offer` with
//!   `RtcpRewrite::Set { port: <RTP port>, .. }`.)
//! - [`RtcpRewrite::Keep`] leaves a section's `a=rtcp` alone: after a port change it would
//!   still name the peer's old port, so an engine that relays RTCP sets it.
//!
//! ## Other changes
//!
//! - `o=`: [`Rewrite::origin_address`] replaces the address and address type fields;
//!   [`Rewrite::origin_version`] keeps, increments or sets the version; the other fields and
//!   the spacing are kept.
//! - `s=`: [`Rewrite::session_name`] replaces it (or inserts one after `o=`).
//! - `m=`: [`MediaRewrite::port`] replaces the port only; `/<count>`, proto and formats are
//!   kept. [`MediaRewrite::proto`] replaces the proto token only (the engine decides which
//!   protocol changes are possible; this module only writes them), and
//!   [`MediaRewrite::strip_rtcp_fb`] removes the section's `a=rtcp-fb` lines.
//! - Direction: [`MediaRewrite::direction`] replaces the section's direction attribute in place,
//!   or adds one at the end of the section; session-level ones are left alone (the media-level
//!   one takes precedence).
//! - ICE: [`Rewrite::strip_ice`] removes every ICE attribute at every level.
//!
//! Attributes added to a section go after its last non-blank line, in the order direction,
//! `a=rtcp`, `a=rtcp-mux`.
//!
//! # Example
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use rtpedge::sdp::{self, MediaRewrite, Rewrite, RtcpRewrite};
//!
//! let offer = b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
//!               m=audio 5004 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";
//! let sd = sdp::parse(offer)?;
//! let remote = sd.remote_media(0).expect("one m= line");
//! assert_eq!(remote.rtp, Some("192.0.2.10:5004".parse()?));
//! assert_eq!(remote.rtcp, Some("192.0.2.10:5005".parse()?));
//!
//! let local = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
//! let out = sd.rewrite(&Rewrite {
//!     origin_address: Some(local),
//!     media: vec![MediaRewrite {
//!         port: Some(30000),
//!         address: Some(local),
//!         rtcp: RtcpRewrite::Set { port: 30001, address: None },
//!         ..MediaRewrite::default()
//!     }],
//!     ..Rewrite::default()
//! });
//! assert_eq!(
//!     out,
//!     b"v=0\r\no=- 1 1 IN IP4 203.0.113.1\r\ns=-\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\n\
//!       m=audio 30000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=rtcp:30001\r\n"
//! );
//! assert_eq!(sd.rewrite(&Rewrite::default()), offer);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod model;
mod parse;
mod rewrite;
#[cfg(test)]
mod tests;

pub use error::SdpError;
pub use model::{
    Attribute, AttributeKind, Connection, Crypto, Direction, Fingerprint, IceAttribute, LineEnding,
    MediaDescription, Origin, RemoteMedia, RtcpAttribute, Rtpmap, SessionDescription, Setup,
    Transport,
};
pub use parse::{Limits, parse, parse_with_limits};
pub use rewrite::{
    MediaRewrite, Rewrite, RtcpAttributeStyle, RtcpMuxRewrite, RtcpRewrite, VersionChange, rewrite,
};
