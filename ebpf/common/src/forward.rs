//! The header rewrite of the in-kernel fast path: a packet that passed a pinhole with a
//! [`Forward`] entry leaves from the spliced leg's local address and port towards that leg's
//! remote, exactly as the bridge would have sent it, with the payload untouched.
//!
//! Pure functions over fixed-size header arrays, so the BPF program and the host tests run the
//! same code. Checksums are updated incrementally (RFC 1624): the payload is never summed.
//! Finding the next hop (MAC addresses, interface) is the program's job, not this module's.

use crate::{DSCP_NONE, Forward, logic::tos_with_dscp};

/// [`Forward::flags`]: check the RTP padding count (plain RTP; SRTP encrypts it).
pub const FORWARD_CHECK_PADDING: u8 = 1;

/// What the fast path needs of an RTP packet it forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpFields {
    /// Sequence number.
    pub seq: u16,
    /// Timestamp.
    pub timestamp: u32,
    /// SSRC.
    pub ssrc: u32,
}

/// Whether a UDP payload of `len` bytes starting with `fixed` is RTP that the fast path may
/// forward, by the bridge's rules (`rtpedge_bridge::rtp::parse`): version 2, CSRC list and
/// header extension inside the datagram, padding count (with [`FORWARD_CHECK_PADDING`]) between
/// 1 and the payload's length. RTCP multiplexed on the RTP port (second byte 192..=223, RFC
/// 5761) is `None` too: the bridge handles it. `read4(off)` reads 4 bytes of the datagram at
/// `off` (the program: bounds-checked packet reads; tests: a slice); single bytes are read as
/// the last of 4, which keeps the BPF verifier's packet-range tracking simple.
#[inline(always)]
pub fn rtp_for_fast_path(
    fixed: &[u8; 12],
    len: usize,
    check_padding: bool,
    mut read4: impl FnMut(usize) -> Option<[u8; 4]>,
) -> Option<RtpFields> {
    if len < 12 || fixed[0] >> 6 != 2 || (192..=223).contains(&fixed[1]) {
        return None;
    }
    let mut header_len = 12 + 4 * usize::from(fixed[0] & 0x0f);
    if header_len > len {
        return None;
    }
    if fixed[0] & 0x10 != 0 {
        if header_len + 4 > len {
            return None;
        }
        let ext = read4(header_len)?;
        header_len += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        if header_len > len {
            return None;
        }
    }
    if check_padding && fixed[0] & 0x20 != 0 {
        if header_len >= len {
            return None;
        }
        // len >= 12: the 4 bytes ending with the last one are inside the datagram.
        let pad = usize::from(read4(len - 4)?[3]);
        if pad == 0 || pad > len - header_len {
            return None;
        }
    }
    Some(RtpFields {
        seq: u16::from_be_bytes([fixed[2], fixed[3]]),
        timestamp: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
        ssrc: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
    })
}

/// Largest UDP datagram (header included) the fast path forwards: media-sized; also the bound of
/// the checksum loop the verifier walks.
pub const MAX_FAST_PATH_UDP_LEN: usize = 1500 + 8;

/// Whether a UDP datagram's checksum verifies: the ones' complement sum of the pseudo-header
/// and the whole datagram (`udp_len` bytes, checksum field included) is 0xffff. An IPv4
/// datagram without a checksum (zero) passes. The fast path forwards nothing else: its rewrite
/// updates the checksum incrementally, which is only right if it was complete, and a packet
/// that a local sender handed over with a partial (offloaded) one is exactly what must reach
/// the stack instead. `header` is the UDP header; `read4(off)` reads 4 bytes of the datagram at
/// `off` (>= 8).
#[inline(always)]
pub fn udp_checksum_verifies(
    src: &[u8; 16],
    dst: &[u8; 16],
    v4: bool,
    header: &[u8; 8],
    udp_len: usize,
    mut read4: impl FnMut(usize) -> Option<[u8; 4]>,
) -> bool {
    if !(8..=MAX_FAST_PATH_UDP_LEN).contains(&udp_len) {
        return false;
    }
    if v4 && header[6] == 0 && header[7] == 0 {
        return true;
    }
    let mut sum: u64 = 17 + udp_len as u64;
    let addr_from = if v4 { 12 } else { 0 };
    let mut i = addr_from;
    while i < 16 {
        sum += u64::from(u16::from_be_bytes([src[i], src[i + 1]]))
            + u64::from(u16::from_be_bytes([dst[i], dst[i + 1]]));
        i += 2;
    }
    let mut h = 0;
    while h < 8 {
        sum += u64::from(u16::from_be_bytes([header[h], header[h + 1]]));
        h += 2;
    }
    let words = udp_len / 4;
    let mut w = 2;
    while w < MAX_FAST_PATH_UDP_LEN / 4 {
        if w >= words {
            break;
        }
        let Some(b) = read4(4 * w) else {
            return false;
        };
        sum += u64::from(u16::from_be_bytes([b[0], b[1]]))
            + u64::from(u16::from_be_bytes([b[2], b[3]]));
        w += 1;
    }
    // The last 1..=3 bytes: the 4 bytes ending with the datagram (udp_len >= 8) hold them.
    let tail_len = udp_len - 4 * words;
    if tail_len > 0 {
        let Some(last4) = read4(udp_len - 4) else {
            return false;
        };
        // The tail starts 4-aligned (an even offset): its first byte is a word's high half.
        // Shifts, not indexing: a variable index into a stack array is beyond the verifier.
        let v = u64::from(u32::from_be_bytes(last4));
        sum += match tail_len {
            1 => (v & 0xff) << 8,
            2 => v & 0xffff,
            _ => ((v >> 8) & 0xffff) + ((v & 0xff) << 8),
        };
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

/// [`udp_checksum_verifies`] over a datagram in memory (host tests and tools).
pub fn udp_checksum_verifies_in(src: &[u8; 16], dst: &[u8; 16], v4: bool, datagram: &[u8]) -> bool {
    let Some(header) = datagram.first_chunk::<8>() else {
        return false;
    };
    udp_checksum_verifies(src, dst, v4, header, datagram.len(), |off| {
        datagram.get(off..off + 4)?.try_into().ok()
    })
}

/// [`rtp_for_fast_path`] over a whole datagram in memory (host tests and tools).
pub fn rtp_for_fast_path_in(datagram: &[u8], check_padding: bool) -> Option<RtpFields> {
    let fixed: &[u8; 12] = datagram.first_chunk()?;
    rtp_for_fast_path(fixed, datagram.len(), check_padding, |off| {
        datagram.get(off..off + 4)?.try_into().ok()
    })
}

/// Hop limit / TTL of forwarded packets: they leave as packets the host sends, not as routed
/// ones, so the hop count towards the caller says nothing about the callee.
pub const FORWARD_TTL: u8 = 64;

/// Running RFC 1624 update: `!HC + Σ !m + Σ m'`, folded once at the end.
#[derive(Clone, Copy)]
struct CsumDelta(u32);

impl CsumDelta {
    #[inline(always)]
    fn new() -> Self {
        Self(0)
    }

    #[inline(always)]
    fn word(&mut self, old: [u8; 2], new: [u8; 2]) {
        self.0 += (!u16::from_be_bytes(old)) as u32 + u16::from_be_bytes(new) as u32;
    }

    /// Adds every 16-bit word of `old` → `new` (N even).
    #[inline(always)]
    fn words<const N: usize>(&mut self, old: &[u8; N], new: &[u8; N]) {
        let mut i = 0;
        while i + 1 < N {
            self.word([old[i], old[i + 1]], [new[i], new[i + 1]]);
            i += 2;
        }
    }

    /// The updated checksum (as on the wire, big-endian).
    #[inline(always)]
    fn apply(self, check: [u8; 2]) -> [u8; 2] {
        let mut sum = (!u16::from_be_bytes(check)) as u32 + self.0;
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        (!(sum as u16)).to_be_bytes()
    }
}

#[inline(always)]
fn v4_of(mapped: &[u8; 16]) -> [u8; 4] {
    [mapped[12], mapped[13], mapped[14], mapped[15]]
}

/// True when `addr` is an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
#[inline(always)]
pub fn is_ipv4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10].iter().all(|&b| b == 0) && addr[10] == 0xff && addr[11] == 0xff
}

/// Whether `fwd` can carry a packet of this family (no 4↔6 translation in the fast path).
#[inline(always)]
pub fn family_matches(fwd: &Forward, v4: bool) -> bool {
    is_ipv4_mapped(&fwd.src_addr) == v4 && is_ipv4_mapped(&fwd.dst_addr) == v4
}

/// Rewrites the fixed IPv4 header (`ip`, the first 20 bytes; options are left alone) and the
/// UDP header for forwarding through `fwd`: addresses, ports, TTL, DSCP, both checksums. A
/// zero UDP checksum (IPv4: "none") stays zero; a computed zero is sent as 0xffff.
#[inline(always)]
pub fn ipv4_forward(ip: &mut [u8; 20], udp: &mut [u8; 8], fwd: &Forward) {
    let src = v4_of(&fwd.src_addr);
    let dst = v4_of(&fwd.dst_addr);
    let old_src = [ip[12], ip[13], ip[14], ip[15]];
    let old_dst = [ip[16], ip[17], ip[18], ip[19]];
    let sport = fwd.src_port.to_be_bytes();
    let dport = fwd.dst_port.to_be_bytes();

    let mut ip_delta = CsumDelta::new();
    ip_delta.words(&old_src, &src);
    ip_delta.words(&old_dst, &dst);
    let ttl_proto = [FORWARD_TTL, ip[9]];
    ip_delta.word([ip[8], ip[9]], ttl_proto);
    if fwd.dscp != DSCP_NONE {
        let word0 = [ip[0], tos_with_dscp(ip[1], fwd.dscp)];
        ip_delta.word([ip[0], ip[1]], word0);
        ip[1] = word0[1];
    }
    let check = ip_delta.apply([ip[10], ip[11]]);
    ip[10] = check[0];
    ip[11] = check[1];
    ip[8] = FORWARD_TTL;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);

    if udp[6] != 0 || udp[7] != 0 {
        let mut udp_delta = CsumDelta::new();
        udp_delta.words(&old_src, &src);
        udp_delta.words(&old_dst, &dst);
        udp_delta.word([udp[0], udp[1]], sport);
        udp_delta.word([udp[2], udp[3]], dport);
        let mut check = udp_delta.apply([udp[6], udp[7]]);
        if check == [0, 0] {
            check = [0xff, 0xff];
        }
        udp[6] = check[0];
        udp[7] = check[1];
    }
    udp[0..2].copy_from_slice(&sport);
    udp[2..4].copy_from_slice(&dport);
}

/// Rewrites the IPv6 header and the UDP header for forwarding through `fwd`: addresses, ports,
/// hop limit, DSCP (traffic class; ECN and flow label kept) and the UDP checksum (mandatory in
/// IPv6; a zero one is left zero, the receiver will drop it as it would have anyway).
#[inline(always)]
pub fn ipv6_forward(ip: &mut [u8; 40], udp: &mut [u8; 8], fwd: &Forward) {
    let mut old_src = [0u8; 16];
    let mut old_dst = [0u8; 16];
    old_src.copy_from_slice(&ip[8..24]);
    old_dst.copy_from_slice(&ip[24..40]);
    let sport = fwd.src_port.to_be_bytes();
    let dport = fwd.dst_port.to_be_bytes();

    if udp[6] != 0 || udp[7] != 0 {
        let mut delta = CsumDelta::new();
        delta.words(&old_src, &fwd.src_addr);
        delta.words(&old_dst, &fwd.dst_addr);
        delta.word([udp[0], udp[1]], sport);
        delta.word([udp[2], udp[3]], dport);
        let mut check = delta.apply([udp[6], udp[7]]);
        if check == [0, 0] {
            check = [0xff, 0xff];
        }
        udp[6] = check[0];
        udp[7] = check[1];
    }
    udp[0..2].copy_from_slice(&sport);
    udp[2..4].copy_from_slice(&dport);

    if fwd.dscp != DSCP_NONE
        && let Some(w) = crate::logic::ipv6_rewrite_dscp([ip[0], ip[1], ip[2], ip[3]], fwd.dscp)
    {
        ip[0..4].copy_from_slice(&w);
    }
    ip[7] = FORWARD_TTL;
    ip[8..24].copy_from_slice(&fwd.src_addr);
    ip[24..40].copy_from_slice(&fwd.dst_addr);
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::logic::{ipv4_header_checksum, ipv4_mapped};

    /// Ones'-complement sum over `data` (odd length padded), not inverted.
    fn sum16(data: &[u8]) -> u32 {
        let mut sum = 0u32;
        let mut chunks = data.chunks_exact(2);
        for c in &mut chunks {
            sum += u16::from_be_bytes([c[0], c[1]]) as u32;
        }
        if let [last] = chunks.remainder() {
            sum += (*last as u32) << 8;
        }
        sum
    }

    fn fold(mut sum: u32) -> u16 {
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// UDP checksum from scratch over the pseudo-header, the UDP header (checksum zeroed) and
    /// the payload; 0 is sent as 0xffff.
    fn udp_checksum(src: &[u8], dst: &[u8], udp: &[u8; 8], payload: &[u8]) -> u16 {
        let len = (8 + payload.len()) as u32;
        let mut hdr = *udp;
        hdr[6] = 0;
        hdr[7] = 0;
        let mut sum = sum16(src) + sum16(dst) + 17 + (len & 0xffff) + (len >> 16);
        sum += sum16(&hdr) + sum16(payload);
        match fold(sum) {
            0 => 0xffff,
            c => c,
        }
    }

    fn v4_packet(payload: &[u8], tos: u8) -> ([u8; 20], [u8; 8]) {
        let total = (20 + 8 + payload.len()) as u16;
        let mut ip = [
            0x45, tos, 0, 0, 0x12, 0x34, 0x40, 0, 57, 17, 0, 0, 198, 51, 100, 7, 203, 0, 113, 1,
        ];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        let c = ipv4_header_checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut udp = [0u8; 8];
        udp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&30000u16.to_be_bytes());
        udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        let c = udp_checksum(&ip[12..16], &ip[16..20], &udp, payload);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        (ip, udp)
    }

    fn fwd_v4(dscp: u8) -> Forward {
        Forward {
            src_addr: ipv4_mapped([203, 0, 113, 1]),
            dst_addr: ipv4_mapped([192, 0, 2, 99]),
            src_port: 30002,
            dst_port: 5004,
            dscp,
            flags: 0,
            _pad: [0; 2],
        }
    }

    fn payloads() -> Vec<Vec<u8>> {
        std::vec![
            Vec::new(),
            std::vec![0x80],
            std::vec![0x80, 0x7f],
            std::vec![0xff, 0x01, 0xfe],
            (0..172u32).map(|i| (i * 7 + 3) as u8).collect(),
            std::vec![0xff; 161],
            std::vec![0; 160],
        ]
    }

    #[test]
    fn ipv4_rewrite_matches_checksums_computed_from_scratch() {
        for payload in payloads() {
            for (tos, dscp) in [(0, DSCP_NONE), (0, 46), (0xb9, 10), (0x02, 0), (0xb8, 46)] {
                let (mut ip, mut udp) = v4_packet(&payload, tos);
                let fwd = fwd_v4(dscp);
                ipv4_forward(&mut ip, &mut udp, &fwd);
                assert_eq!(&ip[12..16], &[203, 0, 113, 1]);
                assert_eq!(&ip[16..20], &[192, 0, 2, 99]);
                assert_eq!(ip[8], FORWARD_TTL);
                assert_eq!(ip[9], 17);
                let want_tos = if dscp == DSCP_NONE {
                    tos
                } else {
                    tos_with_dscp(tos, dscp)
                };
                assert_eq!(ip[1], want_tos, "ECN kept, DSCP set");
                assert_eq!(ipv4_header_checksum(&ip), 0, "IP header checksum verifies");
                assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 30002);
                assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 5004);
                let want = udp_checksum(&ip[12..16], &ip[16..20], &udp, &payload);
                assert_eq!(u16::from_be_bytes([udp[6], udp[7]]), want, "{payload:?}");
            }
        }
    }

    #[test]
    fn ipv4_without_udp_checksum_stays_without() {
        let payload = [1u8, 2, 3, 4];
        let (mut ip, mut udp) = v4_packet(&payload, 0);
        udp[6] = 0;
        udp[7] = 0;
        ipv4_forward(&mut ip, &mut udp, &fwd_v4(46));
        assert_eq!([udp[6], udp[7]], [0, 0]);
        assert_eq!(ipv4_header_checksum(&ip), 0);
    }

    #[test]
    fn ipv6_rewrite_matches_checksum_computed_from_scratch() {
        let src_old: [u8; 16] = [
            0x20, 0x01, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xab, 0xcd,
        ];
        let dst_old: [u8; 16] = [0x20, 0x01, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let fwd = Forward {
            src_addr: dst_old,
            dst_addr: [
                0x20, 0x01, 0xd, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe,
            ],
            src_port: 30010,
            dst_port: 6000,
            dscp: 46,
            flags: 0,
            _pad: [0; 2],
        };
        for payload in payloads() {
            let mut ip = [0u8; 40];
            // Version 6, traffic class 0x01 (ECN bits set), flow label 0xabcde.
            ip[0..4].copy_from_slice(&[0x60, 0x1a, 0xbc, 0xde]);
            ip[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            ip[6] = 17;
            ip[7] = 3;
            ip[8..24].copy_from_slice(&src_old);
            ip[24..40].copy_from_slice(&dst_old);
            let mut udp = [0u8; 8];
            udp[0..2].copy_from_slice(&7078u16.to_be_bytes());
            udp[2..4].copy_from_slice(&30008u16.to_be_bytes());
            udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            let c = udp_checksum(&src_old, &dst_old, &udp, &payload);
            udp[6..8].copy_from_slice(&c.to_be_bytes());

            ipv6_forward(&mut ip, &mut udp, &fwd);
            assert_eq!(&ip[8..24], &fwd.src_addr);
            assert_eq!(&ip[24..40], &fwd.dst_addr);
            assert_eq!(ip[7], FORWARD_TTL);
            let w = u32::from_be_bytes([ip[0], ip[1], ip[2], ip[3]]);
            assert_eq!(w >> 28, 6);
            assert_eq!((w >> 20) & 0xff, (46 << 2) | 0x01, "DSCP set, ECN kept");
            assert_eq!(w & 0xf_ffff, 0xabcde, "flow label kept");
            assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 6000);
            let want = udp_checksum(&ip[8..24], &ip[24..40], &udp, &payload);
            assert_eq!(u16::from_be_bytes([udp[6], udp[7]]), want);
        }
    }

    #[test]
    fn rtp_checks_follow_the_bridge_rules() {
        let mut p = std::vec![
            0x80, 0, 0x12, 0x34, 0, 0, 0x01, 0x00, 0xde, 0xad, 0xbe, 0xef
        ];
        p.extend_from_slice(&[0xd5; 160]);
        let f = rtp_for_fast_path_in(&p, true).expect("plain RTP");
        assert_eq!((f.seq, f.timestamp, f.ssrc), (0x1234, 256, 0xdead_beef));
        // Wrong version, RTCP on the RTP port, too short.
        let mut q = p.clone();
        q[0] = 0x40;
        assert_eq!(rtp_for_fast_path_in(&q, true), None);
        let mut q = p.clone();
        q[1] = 200;
        assert_eq!(rtp_for_fast_path_in(&q, true), None);
        assert_eq!(rtp_for_fast_path_in(&p[..11], true), None);
        // CSRCs past the end; extension header and its words past the end.
        let mut q = p[..20].to_vec();
        q[0] = 0x80 | 3;
        assert_eq!(rtp_for_fast_path_in(&q, true), None);
        let mut q = p[..16].to_vec();
        q[0] = 0x90;
        q[12..16].copy_from_slice(&[0xbe, 0xde, 0, 1]);
        assert_eq!(
            rtp_for_fast_path_in(&q, true),
            None,
            "1 word announced, none there"
        );
        q.extend_from_slice(&[1, 2, 3, 4]);
        assert!(rtp_for_fast_path_in(&q, true).is_some());
        // Padding: count 0, or larger than the payload, is invalid; SRTP skips the check.
        let mut q = p.clone();
        q[0] = 0xa0;
        *q.last_mut().unwrap() = 0;
        assert_eq!(rtp_for_fast_path_in(&q, true), None);
        assert!(rtp_for_fast_path_in(&q, false).is_some());
        *q.last_mut().unwrap() = 161;
        assert_eq!(rtp_for_fast_path_in(&q, true), None);
        *q.last_mut().unwrap() = 160;
        assert!(rtp_for_fast_path_in(&q, true).is_some());
    }

    #[test]
    fn checksums_verify_only_when_complete() {
        let src = crate::logic::ipv4_mapped([198, 51, 100, 7]);
        let dst = crate::logic::ipv4_mapped([203, 0, 113, 1]);
        for payload in payloads() {
            let (ip, udp) = v4_packet(&payload, 0);
            let mut dgram = udp.to_vec();
            dgram.extend_from_slice(&payload);
            assert_eq!((&ip[12..16], &ip[16..20]), (&src[12..], &dst[12..]));
            assert!(
                udp_checksum_verifies_in(&src, &dst, true, &dgram),
                "{payload:?}"
            );
            // A partial (offloaded) checksum: the pseudo-header sum only, not inverted.
            let mut partial = dgram.clone();
            let c = u16::from_be_bytes([dgram[6], dgram[7]]);
            partial[6..8].copy_from_slice(&(!c).wrapping_add(1).to_be_bytes());
            assert!(!udp_checksum_verifies_in(&src, &dst, true, &partial));
            // One flipped payload bit.
            if !payload.is_empty() {
                let mut bad = dgram.clone();
                *bad.last_mut().unwrap() ^= 0x10;
                assert!(!udp_checksum_verifies_in(&src, &dst, true, &bad));
            }
            // No checksum at all (IPv4): fine.
            let mut none = dgram.clone();
            none[6..8].copy_from_slice(&[0, 0]);
            assert!(udp_checksum_verifies_in(&src, &dst, true, &none));
            assert!(
                !udp_checksum_verifies_in(&src, &dst, false, &none),
                "IPv6 needs one"
            );
            // And after the fast path's rewrite, the checksum still verifies.
            let (mut ip2, mut udp2) = v4_packet(&payload, 0);
            let fwd = fwd_v4(46);
            ipv4_forward(&mut ip2, &mut udp2, &fwd);
            let mut out = udp2.to_vec();
            out.extend_from_slice(&payload);
            assert!(udp_checksum_verifies_in(
                &fwd.src_addr,
                &fwd.dst_addr,
                true,
                &out
            ));
        }
        // IPv6.
        let s6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        let d6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let payload = [0x80u8, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        let mut udp = [0u8; 8];
        udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        let c = udp_checksum(&s6, &d6, &udp, &payload);
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        let mut dgram = udp.to_vec();
        dgram.extend_from_slice(&payload);
        assert!(udp_checksum_verifies_in(&s6, &d6, false, &dgram));
        assert!(!udp_checksum_verifies_in(
            &d6,
            &s6.map(|b| b ^ 1),
            false,
            &dgram
        ));
        // Out of range lengths never verify.
        assert!(!udp_checksum_verifies_in(&s6, &d6, false, &dgram[..7]));
    }

    #[test]
    fn families_are_never_translated() {
        let v4 = fwd_v4(DSCP_NONE);
        assert!(family_matches(&v4, true));
        assert!(!family_matches(&v4, false));
        let mixed = Forward {
            dst_addr: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            ..v4
        };
        assert!(!family_matches(&mixed, true));
        assert!(!family_matches(&mixed, false));
    }
}
