//! Pure per-packet logic shared by the eBPF programs and the host: remote-policy checks, the
//! token bucket, DSCP rewriting and its checksum arithmetic.
//!
//! Everything here is `#[inline(always)]`, branch-light, loop-free (except the test-only
//! checksum helper) and free of 128-bit or overflow-checked arithmetic, because the BPF backend
//! cannot lower those. The host unit tests below pin the semantics the kernel then runs.

use crate::{Pinhole, policy};

/// One packet in token-bucket units: tokens are kept in millionths of a packet.
pub const TOKEN_SCALE: u64 = 1_000_000;

/// Refill is computed in whole microseconds; elapsed time is clamped so that
/// `elapsed_us * rate_pps` cannot overflow a u64 (4e9 µs × u32::MAX < 2^64).
const MAX_REFILL_US: u64 = 4_000_000_000;

/// True when `addr` (IPv6 or IPv4-mapped) is the unspecified address of its family.
#[inline(always)]
pub fn addr_is_unspecified(addr: &[u8; 16]) -> bool {
    let head = u64::from_ne_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let mid = u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]);
    let tail = u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]);
    // `::` or `::ffff:0.0.0.0`
    head == 0 && tail == 0 && (mid == 0 || mid == u32::from_ne_bytes([0, 0, 0xff, 0xff]))
}

/// The IPv4-mapped IPv6 form of an IPv4 address, as stored in map keys and values.
#[inline(always)]
pub const fn ipv4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Compares two 16-byte addresses as four words (cheaper in BPF than a byte loop).
#[inline(always)]
pub fn addr_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let w = |x: &[u8; 16], i: usize| u32::from_ne_bytes([x[i], x[i + 1], x[i + 2], x[i + 3]]);
    w(a, 0) == w(b, 0) && w(a, 4) == w(b, 4) && w(a, 8) == w(b, 8) && w(a, 12) == w(b, 12)
}

/// What the fixed part of the remote policy says about a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceVerdict {
    /// The source satisfies the policy.
    Allowed,
    /// The source does not satisfy the policy.
    Denied,
    /// The policy is `learning`: the caller must consult (or fill) the learned-source latch.
    Learn,
}

/// Checks a source against a pinhole's exact/address policy. Unknown policy values deny.
#[inline(always)]
pub fn check_source(ph: &Pinhole, src_addr: &[u8; 16], src_port: u16) -> SourceVerdict {
    match ph.policy {
        policy::EXACT => {
            if src_port == ph.remote_port && addr_eq(src_addr, &ph.remote_addr) {
                SourceVerdict::Allowed
            } else {
                SourceVerdict::Denied
            }
        }
        policy::ADDRESS => {
            if addr_eq(src_addr, &ph.remote_addr) {
                SourceVerdict::Allowed
            } else {
                SourceVerdict::Denied
            }
        }
        policy::LEARNING => SourceVerdict::Learn,
        policy::ANY => SourceVerdict::Allowed,
        _ => SourceVerdict::Denied,
    }
}

/// Whether a learning pinhole may latch `src_addr` at `now_ns`: the learning window is still
/// open and, if the pinhole names a remote address, the source comes from it.
#[inline(always)]
pub fn may_learn(ph: &Pinhole, src_addr: &[u8; 16], now_ns: u64) -> bool {
    let in_window = ph.learn_deadline_ns == 0 || now_ns <= ph.learn_deadline_ns;
    in_window && (addr_is_unspecified(&ph.remote_addr) || addr_eq(src_addr, &ph.remote_addr))
}

/// Token bucket: refills at `rate_pps`, holds at most `burst` packets, and admits a packet if
/// a whole token is available. `tokens_at_ns == 0` means "never used": the bucket starts full.
/// Returns whether the packet is admitted.
#[inline(always)]
pub fn token_bucket_admit(
    tokens: &mut u64,
    tokens_at_ns: &mut u64,
    rate_pps: u32,
    burst: u32,
    now_ns: u64,
) -> bool {
    let burst = if burst == 0 { 1 } else { burst };
    let cap = burst as u64 * TOKEN_SCALE;
    if *tokens_at_ns == 0 || now_ns < *tokens_at_ns {
        // First packet, or a clock that went backwards (never on CLOCK_MONOTONIC, but a
        // freshly written stats entry may carry a foreign timestamp): start full.
        *tokens = cap;
        *tokens_at_ns = now_ns;
    } else {
        let mut elapsed_us = (now_ns - *tokens_at_ns) / 1000;
        if elapsed_us > MAX_REFILL_US {
            elapsed_us = MAX_REFILL_US;
        }
        // Advance the refill clock by whole microseconds only, so sub-µs remainders are kept.
        *tokens_at_ns += elapsed_us * 1000;
        let refill = elapsed_us * rate_pps as u64;
        let t = *tokens + refill;
        *tokens = if t > cap { cap } else { t };
    }
    if *tokens >= TOKEN_SCALE {
        *tokens -= TOKEN_SCALE;
        true
    } else {
        false
    }
}

/// RFC 1624 incremental update of a ones'-complement checksum when one 16-bit word of the
/// covered data changes from `old` to `new`. All three values must be read in the same byte
/// order (the arithmetic is byte-order independent).
#[inline(always)]
pub fn csum_replace16(check: u16, old: u16, new: u16) -> u16 {
    // HC' = ~(~HC + ~m + m')
    let mut sum = (!check as u32) + (!old as u32 & 0xffff) + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The IPv4 TOS byte with its DSCP (upper six bits) replaced and ECN (lower two) kept.
#[inline(always)]
pub const fn tos_with_dscp(tos: u8, dscp: u8) -> u8 {
    ((dscp & 0x3f) << 2) | (tos & 0x03)
}

/// Rewrites the DSCP in an IPv4 header's first 16-bit word (version/IHL, TOS) and checksum.
/// `word0` and `check` are as they appear on the wire (big-endian). Returns the new
/// `(word0, check)`, or `None` when the DSCP is already the wanted one.
#[inline(always)]
pub fn ipv4_rewrite_dscp(word0: [u8; 2], check: [u8; 2], dscp: u8) -> Option<([u8; 2], [u8; 2])> {
    let new_tos = tos_with_dscp(word0[1], dscp);
    if new_tos == word0[1] {
        return None;
    }
    let new_word0 = [word0[0], new_tos];
    let new_check = csum_replace16(
        u16::from_be_bytes(check),
        u16::from_be_bytes(word0),
        u16::from_be_bytes(new_word0),
    );
    Some((new_word0, new_check.to_be_bytes()))
}

/// Rewrites the DSCP in an IPv6 header's first 32-bit word (version, traffic class, flow
/// label), keeping ECN and the flow label. `word0` is as on the wire. `None` if unchanged.
#[inline(always)]
pub fn ipv6_rewrite_dscp(word0: [u8; 4], dscp: u8) -> Option<[u8; 4]> {
    let w = u32::from_be_bytes(word0);
    let tc = ((w >> 20) & 0xff) as u8;
    let new_tc = tos_with_dscp(tc, dscp);
    if new_tc == tc {
        return None;
    }
    let w = (w & !(0xff << 20)) | ((new_tc as u32) << 20);
    Some(w.to_be_bytes())
}

/// The IPv4 header checksum computed from scratch over `header` (checksum field included as
/// is; pass it zeroed to compute, or intact to verify: a valid header then yields 0).
/// Used by tests to check the incremental update, never on the packet path.
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = header.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DSCP_NONE, state};

    fn pinhole(policy: u8, remote: [u8; 16], port: u16) -> Pinhole {
        Pinhole {
            remote_addr: remote,
            remote_port: port,
            policy,
            state: state::OPEN,
            dscp: DSCP_NONE,
            _pad: [0; 3],
            rate_pps: 0,
            burst: 0,
            learn_deadline_ns: 0,
        }
    }

    const A: [u8; 16] = ipv4_mapped([192, 0, 2, 1]);
    const B: [u8; 16] = ipv4_mapped([192, 0, 2, 2]);

    #[test]
    fn exact_policy_needs_address_and_port() {
        let ph = pinhole(policy::EXACT, A, 4000);
        assert_eq!(check_source(&ph, &A, 4000), SourceVerdict::Allowed);
        assert_eq!(check_source(&ph, &A, 4001), SourceVerdict::Denied);
        assert_eq!(check_source(&ph, &B, 4000), SourceVerdict::Denied);
    }

    #[test]
    fn address_policy_ignores_port() {
        let ph = pinhole(policy::ADDRESS, A, 4000);
        assert_eq!(check_source(&ph, &A, 1), SourceVerdict::Allowed);
        assert_eq!(check_source(&ph, &B, 4000), SourceVerdict::Denied);
    }

    #[test]
    fn unknown_policy_denies() {
        let ph = pinhole(7, A, 4000);
        assert_eq!(check_source(&ph, &A, 4000), SourceVerdict::Denied);
    }

    #[test]
    fn any_policy_admits_every_source() {
        let ph = pinhole(policy::ANY, [0; 16], 0);
        assert_eq!(check_source(&ph, &A, 1), SourceVerdict::Allowed);
        assert_eq!(check_source(&ph, &B, 65535), SourceVerdict::Allowed);
    }

    #[test]
    fn learning_window_and_address_restriction() {
        let mut ph = pinhole(policy::LEARNING, [0; 16], 0);
        assert_eq!(check_source(&ph, &A, 1), SourceVerdict::Learn);
        assert!(may_learn(&ph, &A, 5));
        ph.learn_deadline_ns = 100;
        assert!(may_learn(&ph, &B, 100));
        assert!(!may_learn(&ph, &B, 101));
        ph.remote_addr = A;
        assert!(may_learn(&ph, &A, 50));
        assert!(!may_learn(&ph, &B, 50));
        // IPv4-mapped unspecified also means "any".
        ph.remote_addr = ipv4_mapped([0, 0, 0, 0]);
        assert!(may_learn(&ph, &B, 50));
    }

    #[test]
    fn unspecified_detection() {
        assert!(addr_is_unspecified(&[0; 16]));
        assert!(addr_is_unspecified(&ipv4_mapped([0; 4])));
        assert!(!addr_is_unspecified(&A));
        let mut v6 = [0u8; 16];
        v6[15] = 1; // ::1
        assert!(!addr_is_unspecified(&v6));
    }

    #[test]
    fn token_bucket_burst_then_rate() {
        let (mut tok, mut at) = (0u64, 0u64);
        let t0 = 1_000_000_000u64;
        // burst of 3 admitted at once, the 4th refused
        for _ in 0..3 {
            assert!(token_bucket_admit(&mut tok, &mut at, 10, 3, t0));
        }
        assert!(!token_bucket_admit(&mut tok, &mut at, 10, 3, t0));
        // 10 pps: one token per 100 ms
        assert!(!token_bucket_admit(
            &mut tok,
            &mut at,
            10,
            3,
            t0 + 99_999_000
        ));
        assert!(token_bucket_admit(
            &mut tok,
            &mut at,
            10,
            3,
            t0 + 100_000_000
        ));
        assert!(!token_bucket_admit(
            &mut tok,
            &mut at,
            10,
            3,
            t0 + 100_000_000
        ));
        // a long idle period refills only up to the burst
        let later = t0 + 3_600_000_000_000;
        for _ in 0..3 {
            assert!(token_bucket_admit(&mut tok, &mut at, 10, 3, later));
        }
        assert!(!token_bucket_admit(&mut tok, &mut at, 10, 3, later));
    }

    #[test]
    fn token_bucket_keeps_sub_microsecond_remainders() {
        // 1,000,000 pps = one packet per µs; 500 ns steps must still average out.
        let (mut tok, mut at) = (0u64, 0u64);
        let t0 = 10_000u64;
        assert!(token_bucket_admit(&mut tok, &mut at, 1_000_000, 1, t0));
        let mut admitted = 0;
        for i in 1..=2000u64 {
            if token_bucket_admit(&mut tok, &mut at, 1_000_000, 1, t0 + i * 500) {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 1000);
    }

    #[test]
    fn token_bucket_extreme_values_do_not_overflow() {
        let (mut tok, mut at) = (0u64, 0u64);
        assert!(token_bucket_admit(&mut tok, &mut at, u32::MAX, u32::MAX, 1));
        assert!(token_bucket_admit(
            &mut tok,
            &mut at,
            u32::MAX,
            u32::MAX,
            u64::MAX
        ));
    }

    /// A real IPv4 header (20 bytes, UDP, TOS 0) with a valid checksum.
    fn sample_ipv4() -> [u8; 20] {
        let mut h = [
            0x45, 0x00, 0x00, 0xc8, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x11, 0, 0, 10, 0, 0, 1, 10, 0,
            0, 2,
        ];
        let c = ipv4_header_checksum(&h).to_be_bytes();
        h[10] = c[0];
        h[11] = c[1];
        h
    }

    #[test]
    fn ipv4_dscp_rewrite_matches_full_checksum_for_every_dscp_and_ecn() {
        for ecn in 0..4u8 {
            for start in [0u8, 46 << 2, 0xfc] {
                let mut h = sample_ipv4();
                h[1] = start | ecn;
                h[10] = 0;
                h[11] = 0;
                let c = ipv4_header_checksum(&h).to_be_bytes();
                h[10] = c[0];
                h[11] = c[1];
                for dscp in 0..=63u8 {
                    let mut m = h;
                    if let Some((w, c)) = ipv4_rewrite_dscp([m[0], m[1]], [m[10], m[11]], dscp) {
                        m[0] = w[0];
                        m[1] = w[1];
                        m[10] = c[0];
                        m[11] = c[1];
                    }
                    assert_eq!(m[1] >> 2, dscp);
                    assert_eq!(m[1] & 3, ecn, "ECN preserved");
                    assert_eq!(ipv4_header_checksum(&m), 0, "valid checksum after rewrite");
                    let mut z = m;
                    z[10] = 0;
                    z[11] = 0;
                    assert_eq!(ipv4_header_checksum(&z).to_be_bytes(), [m[10], m[11]]);
                }
            }
        }
    }

    #[test]
    fn ipv4_rewrite_is_none_when_unchanged() {
        let h = sample_ipv4();
        assert_eq!(ipv4_rewrite_dscp([h[0], h[1]], [h[10], h[11]], 0), None);
    }

    #[test]
    fn ipv6_traffic_class_rewrite_keeps_version_ecn_and_flow_label() {
        // version 6, TC 0x01 (ECN 01), flow label 0xabcde
        let word = [0x60, 0x1a, 0xbc, 0xde];
        let out = ipv6_rewrite_dscp(word, 46).expect("changed");
        let w = u32::from_be_bytes(out);
        assert_eq!(w >> 28, 6);
        assert_eq!((w >> 20) & 0xff, (46 << 2) | 1);
        assert_eq!(w & 0xfffff, 0xabcde);
        assert_eq!(ipv6_rewrite_dscp(out, 46), None);
    }
}
