//! Zero-copy validation of received RTP and RTCP datagrams.
//!
//! This module owns the bridge's packet-level view of media: it decides whether a datagram is RTP
//! or RTCP (RFC 5761 §4 on a multiplexed port), checks the header structure of RFC 3550 (§5.1,
//! §6.4.1, A.1, A.2) and hands back a view that borrows the receive buffer. It never copies,
//! allocates or panics, whatever the bytes. Forwarding never rewrites payloads, so the views have
//! read accessors only.
//!
//! [`parse`] and [`parse_rtcp`] validate plain RTP/RTCP strictly. Their padding and
//! compound-length rules cannot hold for SRTP/SRTCP (RFC 3711), whose padding count is encrypted
//! and whose datagrams carry a trailer (SRTCP index, MKI, authentication tag) after the RTP
//! payload or RTCP compound: legs that carry SRTP use [`parse_srtp`] and [`parse_srtcp`], which
//! check only the cleartext headers.
//!
//! What the checks do not cover: STUN and DTLS on a shared port (RFC 7983) fail the version check
//! and must be demultiplexed before calling these functions.

use thiserror::Error;

/// Fixed RTP header length (RFC 3550 §5.1).
pub const RTP_HEADER_LEN: usize = 12;
/// Smallest RTCP datagram: common header plus the sender's SSRC.
pub const RTCP_MIN_LEN: usize = 8;
/// Second-byte range that marks RTCP on a multiplexed port (RFC 5761 §4: packet types 192..=223,
/// which RTP payload types 64..=95 with the marker bit would collide with).
pub const RTCP_MUX_RANGE: std::ops::RangeInclusive<u8> = 192..=223;

/// SRTCP appends at least the 4-byte E flag and SRTCP index word (RFC 3711 §3.4).
const SRTCP_INDEX_LEN: usize = 4;

const VERSION: u8 = 2;
const P_BIT: u8 = 0x20;
const X_BIT: u8 = 0x10;

/// Why a datagram is not valid RTP or RTCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum InvalidPacket {
    /// Shorter than the fixed header: 12 bytes for RTP, 8 for RTCP.
    #[error("datagram too short: RTP needs a 12-byte header, RTCP at least 8 bytes")]
    TooShort,
    /// The two version bits (of any RTCP sub-packet, too) are not 2.
    #[error("RTP/RTCP version is not 2")]
    BadVersion,
    /// The CSRC list (4 × CC bytes after the fixed header) runs past the datagram.
    #[error("RTP CSRC list (4 x CC bytes) runs past the end of the datagram")]
    CsrcOverrun,
    /// The X bit is set but the extension (4-byte header + 4 × length) runs past the datagram.
    #[error("RTP header extension (4 + 4 x length bytes) runs past the end of the datagram")]
    ExtensionOverrun,
    /// The P bit is set but the last byte (the padding count) is 0 or more than the bytes after
    /// the header (RTP) or after the 4-byte common header (RTCP sub-packet).
    #[error("padding count is zero or larger than the bytes after the header")]
    BadPadding,
    /// RTCP sub-packets ((length + 1) × 4 bytes each) do not add up exactly to the datagram, or
    /// the first is shorter than 8 bytes (so it has no sender SSRC).
    #[error(
        "RTCP length fields do not add up to the datagram (or the first packet is under 8 bytes)"
    )]
    BadRtcpLength,
    /// An RTCP-only socket received a datagram whose packet type is outside 192..=223.
    #[error("not RTCP: packet type outside 192..=223 on an RTCP socket")]
    NotRtcp,
}

/// What a datagram is, once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// An RTP packet.
    Rtp(RtpView<'a>),
    /// An RTCP (compound) packet.
    Rtcp(RtcpView<'a>),
}

/// A validated RTP packet, borrowing the datagram.
///
/// Invariant (established by the parser, the only constructor):
/// `header_len + payload.len() + padding_len() == as_bytes().len()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpView<'a> {
    /// The whole datagram.
    buf: &'a [u8],
    /// The fixed header, as an array so that field reads need no bounds checks.
    fixed: &'a [u8; RTP_HEADER_LEN],
    header_len: usize,
    payload: &'a [u8],
}

impl<'a> RtpView<'a> {
    /// Payload type (7 bits).
    #[inline]
    pub fn payload_type(&self) -> u8 {
        self.fixed[1] & 0x7f
    }

    /// Marker bit.
    #[inline]
    pub fn marker(&self) -> bool {
        self.fixed[1] & 0x80 != 0
    }

    /// Sequence number.
    #[inline]
    pub fn sequence(&self) -> u16 {
        u16::from_be_bytes([self.fixed[2], self.fixed[3]])
    }

    /// RTP timestamp.
    #[inline]
    pub fn timestamp(&self) -> u32 {
        u32::from_be_bytes([self.fixed[4], self.fixed[5], self.fixed[6], self.fixed[7]])
    }

    /// Synchronization source.
    #[inline]
    pub fn ssrc(&self) -> u32 {
        u32::from_be_bytes([self.fixed[8], self.fixed[9], self.fixed[10], self.fixed[11]])
    }

    /// Number of CSRCs (CC, 0..=15).
    #[inline]
    pub fn csrc_count(&self) -> u8 {
        self.fixed[0] & 0x0f
    }

    /// The `index`-th contributing source, if `index < csrc_count()`.
    #[inline]
    pub fn csrc(&self, index: usize) -> Option<u32> {
        if index >= usize::from(self.csrc_count()) {
            return None;
        }
        let at = RTP_HEADER_LEN + 4 * index;
        let b = self.buf.get(at..at + 4)?.first_chunk::<4>()?;
        Some(u32::from_be_bytes(*b))
    }

    /// Whether the P bit is set.
    #[inline]
    pub fn has_padding(&self) -> bool {
        self.fixed[0] & P_BIT != 0
    }

    /// Header length: 12 + 4 × CC, plus the extension (4 + 4 × length) if X is set.
    #[inline]
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// The payload, without padding. For a view from [`parse_srtp`] this is everything after
    /// the header: encrypted payload, padding and trailer.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Padding bytes at the end, including the count byte itself (0 without the P bit, and
    /// always 0 for a view from [`parse_srtp`]).
    #[inline]
    pub fn padding_len(&self) -> usize {
        self.buf.len() - self.header_len - self.payload.len()
    }

    /// The header extension, if the X bit is set: the 16-bit profile-defined field (0xBEDE for
    /// RFC 8285 one-byte headers, 0x100x for two-byte headers) and the extension data.
    #[inline]
    pub fn extension(&self) -> Option<(u16, &'a [u8])> {
        if self.fixed[0] & X_BIT == 0 {
            return None;
        }
        let at = RTP_HEADER_LEN + 4 * usize::from(self.csrc_count());
        let ext = self.buf.get(at..self.header_len)?;
        let (head, data) = ext.split_first_chunk::<4>()?;
        Some((u16::from_be_bytes([head[0], head[1]]), data))
    }

    /// The whole datagram.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
}

/// RTCP packet types (RFC 3550 §12.1, RFC 4585, RFC 3611).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpKind {
    /// 200 SR.
    SenderReport,
    /// 201 RR.
    ReceiverReport,
    /// 202 SDES.
    SourceDescription,
    /// 203 BYE.
    Goodbye,
    /// 204 APP.
    App,
    /// 205 RTPFB: transport-layer feedback (NACK, TWCC, ...).
    TransportFeedback,
    /// 206 PSFB: payload-specific feedback (PLI, FIR, REMB, ...).
    PayloadFeedback,
    /// 207 XR.
    ExtendedReport,
    /// Any other type in 192..=223.
    Other(u8),
}

impl RtcpKind {
    /// The kind of packet type `pt`.
    #[inline]
    pub fn from_packet_type(pt: u8) -> Self {
        match pt {
            200 => Self::SenderReport,
            201 => Self::ReceiverReport,
            202 => Self::SourceDescription,
            203 => Self::Goodbye,
            204 => Self::App,
            205 => Self::TransportFeedback,
            206 => Self::PayloadFeedback,
            207 => Self::ExtendedReport,
            other => Self::Other(other),
        }
    }
}

/// A validated RTCP compound packet, borrowing the datagram; the accessors describe the first
/// packet of the compound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpView<'a> {
    /// The whole datagram.
    buf: &'a [u8],
    /// The first packet's common header and SSRC.
    first: &'a [u8; RTCP_MIN_LEN],
}

impl<'a> RtcpView<'a> {
    /// The first packet's type (200 SR, 201 RR, 202 SDES, 203 BYE, 204 APP, 205/206 feedback,
    /// 207 XR, ...).
    #[inline]
    pub fn packet_type(&self) -> u8 {
        self.first[1]
    }

    /// [`Self::packet_type`] as an enum.
    #[inline]
    pub fn kind(&self) -> RtcpKind {
        RtcpKind::from_packet_type(self.first[1])
    }

    /// The first packet's 5-bit count field: reception report count (SR/RR), source count
    /// (SDES/BYE), subtype (APP) or feedback message type (RTPFB/PSFB).
    #[inline]
    pub fn count(&self) -> u8 {
        self.first[0] & 0x1f
    }

    /// SSRC of the sender of the first packet (bytes 4..8).
    #[inline]
    pub fn ssrc(&self) -> u32 {
        u32::from_be_bytes([self.first[4], self.first[5], self.first[6], self.first[7]])
    }

    /// Length of the compound packet, which is the whole datagram (for a view from
    /// [`parse_srtcp`], including the SRTCP trailer).
    #[inline]
    pub fn compound_len(&self) -> usize {
        self.buf.len()
    }

    /// The whole datagram.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
}

/// Classifies (RFC 5761 §4: second byte 192..=223 means RTCP when multiplexed) and validates.
///
/// # Errors
/// The first rule of the module's checks that the datagram breaks, as an [`InvalidPacket`].
#[inline]
pub fn parse(buf: &[u8]) -> Result<Packet<'_>, InvalidPacket> {
    if classify(buf)? {
        rtcp_compound(buf).map(Packet::Rtcp)
    } else {
        rtp(buf, true).map(Packet::Rtp)
    }
}

/// Same, for a socket that carries only RTCP (non-mux RTCP port): must be RTCP.
///
/// # Errors
/// As [`parse`], and [`InvalidPacket::NotRtcp`] for a second byte outside 192..=223.
#[inline]
pub fn parse_rtcp(buf: &[u8]) -> Result<RtcpView<'_>, InvalidPacket> {
    if classify(buf)? {
        rtcp_compound(buf)
    } else {
        Err(InvalidPacket::NotRtcp)
    }
}

/// [`parse`] for an SRTP leg: the same classification and RTP header checks (version, CSRCs,
/// extension), but the padding is not checked (its count byte is encrypted, RFC 3711 §3.1) and
/// the payload is everything after the header; SRTCP as in [`parse_srtcp`].
///
/// # Errors
/// As [`parse`], minus the padding and compound-length checks it cannot make.
#[inline]
pub fn parse_srtp(buf: &[u8]) -> Result<Packet<'_>, InvalidPacket> {
    if classify(buf)? {
        srtcp(buf).map(Packet::Rtcp)
    } else {
        rtp(buf, false).map(Packet::Rtp)
    }
}

/// [`parse_rtcp`] for an SRTP leg: only the first packet's header is in clear (RFC 3711 §3.4),
/// so this checks its version, type and that its length plus the 4-byte SRTCP index fits.
///
/// # Errors
/// [`InvalidPacket::TooShort`], [`BadVersion`](InvalidPacket::BadVersion),
/// [`NotRtcp`](InvalidPacket::NotRtcp) or [`BadRtcpLength`](InvalidPacket::BadRtcpLength).
#[inline]
pub fn parse_srtcp(buf: &[u8]) -> Result<RtcpView<'_>, InvalidPacket> {
    if classify(buf)? {
        srtcp(buf)
    } else {
        Err(InvalidPacket::NotRtcp)
    }
}

/// Common prefix checks; `Ok(true)` for RTCP, `Ok(false)` for RTP.
#[inline(always)]
fn classify(buf: &[u8]) -> Result<bool, InvalidPacket> {
    // Nothing valid is shorter than an RTCP header, so reject those before reading anything.
    let Some(head) = buf.first_chunk::<RTCP_MIN_LEN>() else {
        return Err(InvalidPacket::TooShort);
    };
    if head[0] >> 6 != VERSION {
        return Err(InvalidPacket::BadVersion);
    }
    Ok(RTCP_MUX_RANGE.contains(&head[1]))
}

/// RTP structure after classification; `check_padding` is false for SRTP.
#[inline(always)]
fn rtp(buf: &[u8], check_padding: bool) -> Result<RtpView<'_>, InvalidPacket> {
    let Some(fixed) = buf.first_chunk::<RTP_HEADER_LEN>() else {
        return Err(InvalidPacket::TooShort);
    };
    let b0 = fixed[0];
    let mut header_len = RTP_HEADER_LEN + 4 * usize::from(b0 & 0x0f);
    if header_len > buf.len() {
        return Err(InvalidPacket::CsrcOverrun);
    }
    if b0 & X_BIT != 0 {
        let Some(ext) = buf.get(header_len..header_len + 4) else {
            return Err(InvalidPacket::ExtensionOverrun);
        };
        let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        header_len += 4 + 4 * words;
    }
    let Some((_, rest)) = buf.split_at_checked(header_len) else {
        return Err(InvalidPacket::ExtensionOverrun);
    };
    let payload = if check_padding && b0 & P_BIT != 0 {
        // The count byte is itself padding, so 1..=rest.len() is valid; no byte after the header
        // means the count would be read from inside the header.
        let pad = rest.last().map_or(0, |&n| usize::from(n));
        match rest.len().checked_sub(pad) {
            Some(end) if pad != 0 => rest.get(..end).ok_or(InvalidPacket::BadPadding)?,
            _ => return Err(InvalidPacket::BadPadding),
        }
    } else {
        rest
    };
    Ok(RtpView {
        buf,
        fixed,
        header_len,
        payload,
    })
}

/// Walks the compound packet: version 2 and a fitting length in every sub-packet, exact total.
/// Not inlined into [`parse`]: RTCP is a few percent of the packets, keep RTP's path small.
#[inline(never)]
fn rtcp_compound(buf: &[u8]) -> Result<RtcpView<'_>, InvalidPacket> {
    let first = first_rtcp(buf)?;
    let mut rest = buf;
    while !rest.is_empty() {
        let Some(head) = rest.first_chunk::<4>() else {
            return Err(InvalidPacket::BadRtcpLength);
        };
        if head[0] >> 6 != VERSION {
            return Err(InvalidPacket::BadVersion);
        }
        let len = rtcp_len(head);
        let Some((pkt, tail)) = rest.split_at_checked(len) else {
            return Err(InvalidPacket::BadRtcpLength);
        };
        if head[0] & P_BIT != 0 {
            // Padding is counted in the length; the 4-byte common header is never padding.
            let pad = pkt.last().map_or(0, |&n| usize::from(n));
            if pad == 0 || pad > len - 4 {
                return Err(InvalidPacket::BadPadding);
            }
        }
        rest = tail;
    }
    Ok(RtcpView { buf, first })
}

/// SRTCP: only the first header is readable; its packet plus the SRTCP index must fit.
#[inline(never)]
fn srtcp(buf: &[u8]) -> Result<RtcpView<'_>, InvalidPacket> {
    let first = first_rtcp(buf)?;
    let head = first.first_chunk::<4>().ok_or(InvalidPacket::TooShort)?;
    if rtcp_len(head) + SRTCP_INDEX_LEN > buf.len() {
        return Err(InvalidPacket::BadRtcpLength);
    }
    Ok(RtcpView { buf, first })
}

/// The first packet's header and SSRC; the first packet must be at least 8 bytes long.
#[inline(always)]
fn first_rtcp(buf: &[u8]) -> Result<&[u8; RTCP_MIN_LEN], InvalidPacket> {
    let first = buf
        .first_chunk::<RTCP_MIN_LEN>()
        .ok_or(InvalidPacket::TooShort)?;
    if first[0] >> 6 != VERSION {
        return Err(InvalidPacket::BadVersion);
    }
    if rtcp_len(first.first_chunk::<4>().ok_or(InvalidPacket::TooShort)?) < RTCP_MIN_LEN {
        return Err(InvalidPacket::BadRtcpLength);
    }
    Ok(first)
}

/// Byte length of an RTCP packet from its common header: (length + 1) × 4.
#[inline(always)]
fn rtcp_len(head: &[u8; 4]) -> usize {
    (usize::from(u16::from_be_bytes([head[2], head[3]])) + 1) * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RTP packet: `b0` carries V/P/X/CC, `b1` M/PT; `rest` is CSRCs, extension, payload and
    /// padding as the test wants them.
    fn rtp_pkt(b0: u8, b1: u8, seq: u16, ts: u32, ssrc: u32, rest: &[u8]) -> Vec<u8> {
        let mut v = vec![b0, b1];
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(&ts.to_be_bytes());
        v.extend_from_slice(&ssrc.to_be_bytes());
        v.extend_from_slice(rest);
        v
    }

    fn rtp_ok(buf: &[u8]) -> RtpView<'_> {
        match parse(buf) {
            Ok(Packet::Rtp(v)) => v,
            other => panic!("expected RTP, got {other:?}"),
        }
    }

    fn rtcp_ok(buf: &[u8]) -> RtcpView<'_> {
        match parse(buf) {
            Ok(Packet::Rtcp(v)) => v,
            other => panic!("expected RTCP, got {other:?}"),
        }
    }

    /// SR (no report blocks, 28 bytes) + SDES (one chunk with CNAME "abcd", 16 bytes).
    fn sr_sdes() -> Vec<u8> {
        let mut v = vec![0x80, 200, 0, 6];
        v.extend_from_slice(&0x1122_3344u32.to_be_bytes()); // sender SSRC
        v.extend_from_slice(&[0; 20]); // NTP (8), RTP ts (4), packet count (4), octet count (4)
        v.extend_from_slice(&[0x81, 202, 0, 3]); // SDES, SC = 1, 16 bytes
        v.extend_from_slice(&0x1122_3344u32.to_be_bytes());
        // CNAME (1), length 4, "abcd", END (0), one byte to the 32-bit boundary.
        v.extend_from_slice(&[1, 4, b'a', b'b', b'c', b'd', 0, 0]);
        assert_eq!(v.len(), 44);
        v
    }

    /// Valid packets of every shape, for the truncation and consistency checks.
    fn valid_samples() -> Vec<Vec<u8>> {
        let ext = [0xBE, 0xDE, 0, 1, 0x10, 0xAA, 0, 0];
        let mut csrc_ext_pad = Vec::new();
        csrc_ext_pad.extend_from_slice(&0xCAFE_F00Du32.to_be_bytes());
        csrc_ext_pad.extend_from_slice(&ext);
        csrc_ext_pad.extend_from_slice(&[9, 9, 9, 0, 0, 3]);
        vec![
            rtp_pkt(0x80, 0, 1, 2, 3, &[]),
            rtp_pkt(0x80, 0x80 | 111, 1, 2, 3, &[1, 2, 3, 4, 5]),
            rtp_pkt(0x82, 8, 1, 2, 3, &[0, 0, 0, 1, 0, 0, 0, 2, 7]),
            rtp_pkt(0x90, 0, 1, 2, 3, &[&ext[..], &[42]].concat()),
            rtp_pkt(0xA0, 0, 1, 2, 3, &[1, 2, 0, 0, 0, 4]),
            rtp_pkt(0xB1, 0x80 | 96, 65535, u32::MAX, 1, &csrc_ext_pad),
            sr_sdes(),
            vec![0x80, 201, 0, 1, 0, 0, 0, 9],
        ]
    }

    #[test]
    fn minimal_rtp() {
        let b = rtp_pkt(0x80, 0, 0x1234, 0xDEAD_BEEF, 0x0102_0304, &[]);
        let v = rtp_ok(&b);
        assert_eq!(v.payload_type(), 0);
        assert!(!v.marker());
        assert_eq!(v.sequence(), 0x1234);
        assert_eq!(v.timestamp(), 0xDEAD_BEEF);
        assert_eq!(v.ssrc(), 0x0102_0304);
        assert_eq!(v.csrc_count(), 0);
        assert_eq!(v.header_len(), 12);
        assert_eq!(v.payload(), &[] as &[u8]);
        assert_eq!(v.padding_len(), 0);
        assert_eq!(v.extension(), None);
        assert_eq!(v.csrc(0), None);
        assert_eq!(v.as_bytes(), &b[..]);
    }

    #[test]
    fn marker_and_payload() {
        let b = rtp_pkt(0x80, 0x80 | 111, 7, 960, 42, &[1, 2, 3]);
        let v = rtp_ok(&b);
        assert!(v.marker());
        assert_eq!(v.payload_type(), 111);
        assert_eq!(v.payload(), &[1, 2, 3]);
        assert!(!v.has_padding());
    }

    #[test]
    fn csrcs() {
        let b = rtp_pkt(0x82, 8, 1, 2, 3, &[0, 0, 0, 1, 0xFF, 0, 0, 2, 7, 8]);
        let v = rtp_ok(&b);
        assert_eq!(v.csrc_count(), 2);
        assert_eq!(v.csrc(0), Some(1));
        assert_eq!(v.csrc(1), Some(0xFF00_0002));
        assert_eq!(v.csrc(2), None);
        assert_eq!(v.header_len(), 20);
        assert_eq!(v.payload(), &[7, 8]);
    }

    #[test]
    fn extension() {
        // One-byte header extension (RFC 8285): id 1, len 1 (two data bytes), then padding.
        let b = rtp_pkt(
            0x90,
            0,
            1,
            2,
            3,
            &[0xBE, 0xDE, 0, 1, 0x11, 0xAA, 0xBB, 0, 42],
        );
        let v = rtp_ok(&b);
        assert_eq!(v.header_len(), 20);
        assert_eq!(v.extension(), Some((0xBEDE, &[0x11, 0xAA, 0xBB, 0][..])));
        assert_eq!(v.payload(), &[42]);
        // Zero-length extension: only its 4-byte header.
        let b = rtp_pkt(0x90, 0, 1, 2, 3, &[0x10, 0x00, 0, 0]);
        let v = rtp_ok(&b);
        assert_eq!(v.header_len(), 16);
        assert_eq!(v.extension(), Some((0x1000, &[][..])));
        assert_eq!(v.payload(), &[] as &[u8]);
    }

    #[test]
    fn padding() {
        let b = rtp_pkt(0xA0, 0, 1, 2, 3, &[5, 6, 0, 0, 0, 4]);
        let v = rtp_ok(&b);
        assert!(v.has_padding());
        assert_eq!(v.padding_len(), 4);
        assert_eq!(v.payload(), &[5, 6]);
        // Padding may take every byte after the header (count byte included).
        let b = rtp_pkt(0xA0, 0, 1, 2, 3, &[0, 2]);
        let v = rtp_ok(&b);
        assert_eq!(v.padding_len(), 2);
        assert_eq!(v.payload(), &[] as &[u8]);
    }

    #[test]
    fn csrc_extension_padding_together() {
        let mut rest = 0xCAFE_F00Du32.to_be_bytes().to_vec(); // 1 CSRC
        rest.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0xAA, 0, 0]); // extension, 1 word
        rest.extend_from_slice(&[9, 9, 9, 0, 0, 3]); // payload 9 9 9, padding 3
        let b = rtp_pkt(0xB1, 0x80 | 96, 65535, u32::MAX, 1, &rest);
        let v = rtp_ok(&b);
        assert_eq!(v.csrc(0), Some(0xCAFE_F00D));
        assert_eq!(v.header_len(), 12 + 4 + 8);
        assert_eq!(v.extension(), Some((0xBEDE, &[0x10, 0xAA, 0, 0][..])));
        assert_eq!(v.payload(), &[9, 9, 9]);
        assert_eq!(v.padding_len(), 3);
        assert_eq!(v.sequence(), 65535);
        assert_eq!(v.timestamp(), u32::MAX);
        assert!(v.marker());
        assert_eq!(v.payload_type(), 96);
    }

    #[test]
    fn mux_classification() {
        // Second byte 192..=223 is RTCP; anything else is RTP (M bit + PT).
        for b1 in 0..=255u8 {
            let mut b = rtp_pkt(0x80, b1, 0, 0, 0, &[]);
            // Make it also a valid RTCP packet of 12 bytes: length field 2.
            b[2] = 0;
            b[3] = 2;
            let p = parse(&b).expect("valid either way");
            assert_eq!(
                matches!(p, Packet::Rtcp(_)),
                (192..=223).contains(&b1),
                "b1 = {b1}"
            );
        }
        // M=1, PT=63 and M=1, PT=96 are RTP.
        assert!(matches!(
            parse(&rtp_pkt(0x80, 191, 0, 0, 0, &[])),
            Ok(Packet::Rtp(_))
        ));
        assert!(matches!(
            parse(&rtp_pkt(0x80, 224, 0, 0, 0, &[])),
            Ok(Packet::Rtp(_))
        ));
    }

    #[test]
    fn rtcp_compound_sr_sdes() {
        let b = sr_sdes();
        let v = rtcp_ok(&b);
        assert_eq!(v.packet_type(), 200);
        assert_eq!(v.kind(), RtcpKind::SenderReport);
        assert_eq!(v.count(), 0);
        assert_eq!(v.ssrc(), 0x1122_3344);
        assert_eq!(v.compound_len(), 44);
        assert_eq!(parse_rtcp(&b), Ok(v));
    }

    #[test]
    fn rtcp_single_packets() {
        // RR without report blocks: 8 bytes.
        let rr = [0x80, 201, 0, 1, 0xAA, 0xBB, 0xCC, 0xDD];
        let v = parse_rtcp(&rr).unwrap();
        assert_eq!(v.kind(), RtcpKind::ReceiverReport);
        assert_eq!(v.ssrc(), 0xAABB_CCDD);
        // BYE with one SSRC, PLI (PSFB FMT 1: sender + media SSRC), padded RR.
        let bye = [0x81, 203, 0, 1, 0, 0, 0, 5];
        assert_eq!(parse_rtcp(&bye).unwrap().kind(), RtcpKind::Goodbye);
        let pli = [0x81, 206, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        let v = parse_rtcp(&pli).unwrap();
        assert_eq!((v.kind(), v.count()), (RtcpKind::PayloadFeedback, 1));
        let padded = [0xA0, 201, 0, 2, 0, 0, 0, 1, 0, 0, 0, 4];
        assert_eq!(parse_rtcp(&padded).unwrap().compound_len(), 12);
        for (pt, kind) in [
            (202, RtcpKind::SourceDescription),
            (204, RtcpKind::App),
            (205, RtcpKind::TransportFeedback),
            (207, RtcpKind::ExtendedReport),
            (195, RtcpKind::Other(195)),
        ] {
            let b = [0x80, pt, 0, 1, 0, 0, 0, 1];
            assert_eq!(parse_rtcp(&b).unwrap().kind(), kind);
        }
        // A 4-byte sub-packet (length 0) is fine after the first: RR + empty BYE.
        let b = [0x80, 201, 0, 1, 0, 0, 0, 1, 0x80, 203, 0, 0];
        assert_eq!(parse_rtcp(&b).unwrap().compound_len(), 12);
    }

    #[test]
    fn too_short() {
        for len in 0..8 {
            let b = [0x80u8, 200, 0, 1, 0, 0, 0, 0];
            assert_eq!(parse(&b[..len]), Err(InvalidPacket::TooShort), "len {len}");
            assert_eq!(parse_rtcp(&b[..len]).unwrap_err(), InvalidPacket::TooShort);
        }
        // 8..=11 bytes classified as RTP.
        let b = rtp_pkt(0x80, 0, 0, 0, 0, &[]);
        for len in 8..12 {
            assert_eq!(parse(&b[..len]), Err(InvalidPacket::TooShort), "len {len}");
        }
    }

    #[test]
    fn bad_version() {
        for b0 in [0x00, 0x40, 0xC0, 0x3F] {
            let mut b = rtp_pkt(0x80, 0, 0, 0, 0, &[1]);
            b[0] = b0;
            assert_eq!(parse(&b), Err(InvalidPacket::BadVersion), "b0 {b0:#x}");
            b[1] = 200;
            assert_eq!(parse_rtcp(&b), Err(InvalidPacket::BadVersion));
        }
        // Version 1 in the second packet of a compound.
        let mut b = sr_sdes();
        b[28] = 0x41;
        assert_eq!(parse(&b), Err(InvalidPacket::BadVersion));
    }

    #[test]
    fn csrc_overrun() {
        // CC = 15 needs 72 bytes; CC = 1 with 3 bytes after the fixed header.
        let b = rtp_pkt(0x8F, 0, 0, 0, 0, &[0; 59]);
        assert_eq!(parse(&b), Err(InvalidPacket::CsrcOverrun));
        let b = rtp_pkt(0x81, 0, 0, 0, 0, &[0; 3]);
        assert_eq!(parse(&b), Err(InvalidPacket::CsrcOverrun));
        // Exactly 4 bytes is fine.
        assert_eq!(rtp_ok(&rtp_pkt(0x81, 0, 0, 0, 0, &[0; 4])).header_len(), 16);
    }

    #[test]
    fn extension_overrun() {
        // No room for the extension header.
        let b = rtp_pkt(0x90, 0, 0, 0, 0, &[0xBE, 0xDE, 0]);
        assert_eq!(parse(&b), Err(InvalidPacket::ExtensionOverrun));
        // Header fits, length 2 (8 bytes) but only 7 follow.
        let b = rtp_pkt(0x90, 0, 0, 0, 0, &[0xBE, 0xDE, 0, 2, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(parse(&b), Err(InvalidPacket::ExtensionOverrun));
        // Maximum length 0xFFFF words.
        let b = rtp_pkt(0x90, 0, 0, 0, 0, &[0xBE, 0xDE, 0xFF, 0xFF]);
        assert_eq!(parse(&b), Err(InvalidPacket::ExtensionOverrun));
        // After CSRCs.
        let b = rtp_pkt(0x91, 0, 0, 0, 0, &[0, 0, 0, 1, 0xBE]);
        assert_eq!(parse(&b), Err(InvalidPacket::ExtensionOverrun));
    }

    #[test]
    fn bad_padding() {
        // Count 0.
        let b = rtp_pkt(0xA0, 0, 0, 0, 0, &[1, 2, 0]);
        assert_eq!(parse(&b), Err(InvalidPacket::BadPadding));
        // Count larger than the bytes after the header.
        let b = rtp_pkt(0xA0, 0, 0, 0, 0, &[1, 2, 4]);
        assert_eq!(parse(&b), Err(InvalidPacket::BadPadding));
        // Nothing after the header: the count would be read from the SSRC.
        let b = rtp_pkt(0xA0, 0, 0, 0, 1, &[]);
        assert_eq!(parse(&b), Err(InvalidPacket::BadPadding));
        // Padding reaching into the extension.
        let b = rtp_pkt(0xB0, 0, 0, 0, 0, &[0xBE, 0xDE, 0, 1, 1, 2, 3, 4, 5, 3]);
        assert_eq!(parse(&b), Err(InvalidPacket::BadPadding));
        // RTCP: count 0, and count into the common header (RR of 8 bytes, count 5 > 4).
        let b = [0xA0, 201, 0, 1, 0, 0, 0, 0];
        assert_eq!(parse(&b), Err(InvalidPacket::BadPadding));
        let b = [0xA0, 201, 0, 1, 0, 0, 0, 5];
        assert_eq!(parse(&b), Err(InvalidPacket::BadPadding));
        let b = [0xA0, 201, 0, 1, 0, 0, 0, 4];
        assert!(parse(&b).is_ok());
    }

    #[test]
    fn bad_rtcp_length() {
        let mut b = sr_sdes();
        // SDES length one word too long, one word too short (4 trailing bytes do not form a
        // packet of the right length: the next "header" has version 0).
        b[31] = 4;
        assert_eq!(parse(&b), Err(InvalidPacket::BadRtcpLength));
        b[31] = 2;
        assert_eq!(parse(&b), Err(InvalidPacket::BadVersion));
        // First packet longer than the datagram.
        let b = [0x80, 201, 0, 2, 0, 0, 0, 0];
        assert_eq!(parse(&b), Err(InvalidPacket::BadRtcpLength));
        // Trailing bytes that are not a whole header.
        let mut b = sr_sdes();
        b.extend_from_slice(&[0x80, 203]);
        assert_eq!(parse(&b), Err(InvalidPacket::BadRtcpLength));
        // Trailing header whose length runs past the end.
        let mut b = sr_sdes();
        b.extend_from_slice(&[0x80, 203, 0, 1]);
        assert_eq!(parse(&b), Err(InvalidPacket::BadRtcpLength));
        // First packet of 4 bytes (length 0): no sender SSRC.
        let b = [0x80, 203, 0, 0, 0x80, 203, 0, 0];
        assert_eq!(parse(&b), Err(InvalidPacket::BadRtcpLength));
    }

    #[test]
    fn not_rtcp_on_rtcp_socket() {
        let b = rtp_pkt(0x80, 0, 0, 0, 0, &[]);
        assert_eq!(parse_rtcp(&b), Err(InvalidPacket::NotRtcp));
        let b = rtp_pkt(0x80, 191, 0, 0, 0, &[]);
        assert_eq!(parse_rtcp(&b), Err(InvalidPacket::NotRtcp));
    }

    #[test]
    fn srtp_and_srtcp() {
        // SRTP: P bit set, last byte (auth tag) 0 would be BadPadding in plain RTP.
        let b = rtp_pkt(0xA0, 0, 1, 2, 3, &[0xEE; 10 + 1]);
        let mut b = b;
        *b.last_mut().unwrap() = 0;
        assert_eq!(parse(&b), Err(InvalidPacket::BadPadding));
        match parse_srtp(&b) {
            Ok(Packet::Rtp(v)) => {
                assert_eq!(v.payload().len(), 11);
                assert_eq!(v.padding_len(), 0);
            }
            other => panic!("{other:?}"),
        }
        // The header checks still apply.
        assert_eq!(
            parse_srtp(&rtp_pkt(0x81, 0, 0, 0, 0, &[])),
            Err(InvalidPacket::CsrcOverrun)
        );
        // SRTCP: SR (28 bytes) + encrypted rest + E|index (4) + tag (10).
        let mut b = sr_sdes();
        b.extend_from_slice(&[0x80, 0, 0, 1]);
        b.extend_from_slice(&[0x55; 10]);
        // The plain parser reads the trailer as sub-packets: "E|index" as a 8-byte header, then
        // a tag byte with version 1.
        assert_eq!(parse(&b), Err(InvalidPacket::BadVersion));
        let v = parse_srtcp(&b).unwrap();
        assert_eq!(
            (v.kind(), v.ssrc(), v.compound_len()),
            (RtcpKind::SenderReport, 0x1122_3344, 58)
        );
        assert!(matches!(parse_srtp(&b), Ok(Packet::Rtcp(_))));
        // Without room for the SRTCP index after the first packet.
        let b = [0x80, 201, 0, 1, 0, 0, 0, 1, 0x80, 0, 0];
        assert_eq!(parse_srtcp(&b), Err(InvalidPacket::BadRtcpLength));
        assert_eq!(
            parse_srtcp(&rtp_pkt(0x80, 0, 0, 0, 0, &[])),
            Err(InvalidPacket::NotRtcp)
        );
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            InvalidPacket::CsrcOverrun.to_string(),
            "RTP CSRC list (4 x CC bytes) runs past the end of the datagram"
        );
        assert_eq!(
            InvalidPacket::BadVersion.to_string(),
            "RTP/RTCP version is not 2"
        );
    }

    /// Invariants every successful parse must satisfy; touches every accessor.
    fn check(buf: &[u8], p: Result<Packet<'_>, InvalidPacket>) {
        match p {
            Ok(Packet::Rtp(v)) => {
                assert_eq!(
                    v.header_len() + v.payload().len() + v.padding_len(),
                    buf.len()
                );
                assert!(v.header_len() >= 12 + 4 * usize::from(v.csrc_count()));
                for i in 0..16 {
                    assert_eq!(v.csrc(i).is_some(), i < usize::from(v.csrc_count()));
                }
                if let Some((_, data)) = v.extension() {
                    assert_eq!(data.len() % 4, 0);
                }
                let _ = (
                    v.payload_type(),
                    v.marker(),
                    v.sequence(),
                    v.timestamp(),
                    v.ssrc(),
                );
            }
            Ok(Packet::Rtcp(v)) => {
                assert_eq!(v.compound_len(), buf.len());
                assert!(RTCP_MUX_RANGE.contains(&v.packet_type()));
                let _ = (v.kind(), v.count(), v.ssrc(), v.as_bytes());
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }

    fn check_all(buf: &[u8]) {
        check(buf, parse(buf));
        check(buf, parse_rtcp(buf).map(Packet::Rtcp));
        check_srtp(parse_srtp(buf));
        check_srtp(parse_srtcp(buf).map(Packet::Rtcp));
    }

    fn check_srtp(p: Result<Packet<'_>, InvalidPacket>) {
        if let Ok(Packet::Rtp(v)) = p {
            assert_eq!(v.padding_len(), 0);
            let _ = v.extension();
        }
    }

    #[test]
    fn every_truncation() {
        for sample in valid_samples() {
            check_all(&sample);
            assert!(parse(&sample).is_ok());
            for len in 0..sample.len() {
                let cut = &sample[..len];
                let r = parse(cut);
                check(cut, r);
                check_all(cut);
                // A truncated RTCP compound adds up only where a sub-packet ends (the SR of
                // SR + SDES, at 28 bytes).
                if RTCP_MUX_RANGE.contains(&sample[1]) {
                    assert!(r.is_err() || len == 28, "truncated RTCP accepted: {cut:?}");
                }
                // A truncated padded RTP packet reads a payload byte as the count: it may pass,
                // but never with a payload beyond the cut.
                if let Ok(Packet::Rtp(v)) = r {
                    assert!(v.payload().len() <= len);
                }
            }
        }
    }

    /// xorshift64: deterministic, no dependencies.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut buf = [0u8; 96];
        let mut accepted = 0usize;
        for i in 0..300_000 {
            let len = (rng.next() % 97) as usize;
            for b in buf.iter_mut() {
                *b = rng.next() as u8;
            }
            // Bias towards version 2 and small CC/length fields so the deep checks run too.
            if i % 2 == 0 {
                buf[0] = 0x80 | (buf[0] & 0x3f);
                if i % 4 == 0 {
                    buf[0] &= 0xF3;
                    buf[2] = 0;
                    buf[3] &= 0x0f;
                    buf[14] = 0;
                    buf[15] &= 0x07;
                }
            }
            let b = &buf[..len];
            check_all(b);
            accepted += usize::from(parse(b).is_ok());
        }
        assert!(
            accepted > 1000,
            "random loop reached too few valid packets: {accepted}"
        );
    }

    #[test]
    fn the_xdp_fast_path_forwards_exactly_what_the_bridge_accepts_as_rtp() {
        // The fast path (rtpedge_common::forward) re-implements these checks for the kernel;
        // on random datagrams both must agree: forwardable iff the bridge parses RTP, with the
        // same fields; everything else (RTCP included) goes to the bridge.
        use rtpedge_common::forward::rtp_for_fast_path_in;
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let mut buf = [0u8; 96];
        let (mut rtp, mut other) = (0usize, 0usize);
        for i in 0..300_000 {
            let len = (rng.next() % 97) as usize;
            for b in buf.iter_mut() {
                *b = rng.next() as u8;
            }
            if i % 2 == 0 {
                buf[0] = 0x80 | (buf[0] & 0x3f);
                buf[1] &= 0x7f;
                if i % 4 == 0 {
                    buf[0] &= 0xF3;
                    buf[14] = 0;
                    buf[15] &= 0x07;
                }
            }
            let b = &buf[..len];
            for srtp in [false, true] {
                let bridge = if srtp { parse_srtp(b) } else { parse(b) };
                let fast = rtp_for_fast_path_in(b, !srtp);
                match (bridge, fast) {
                    (Ok(Packet::Rtp(v)), Some(f)) => {
                        assert_eq!(
                            (f.seq, f.timestamp, f.ssrc),
                            (v.sequence(), v.timestamp(), v.ssrc())
                        );
                        rtp += 1;
                    }
                    (Ok(Packet::Rtp(_)), None) => panic!("the fast path refuses RTP {b:02x?}"),
                    (_, Some(_)) => panic!("the fast path forwards what the bridge drops {b:02x?}"),
                    (_, None) => other += 1,
                }
            }
        }
        assert!(rtp > 1000 && other > 1000, "{rtp} RTP, {other} others");
    }
}
