//! The load generator's stamp: what it writes after the RTP header of every packet so that the
//! receiver can tell which stream and step a packet belongs to, its place in the stream, and
//! when it was sent.
//!
//! ```text
//! offset  0  RTP header (12 bytes, see crate::rtp)
//!        12  magic "RTPL"
//!        16  step    u32 (big endian): 0 = warm-up, else the measured step
//!        20  stream  u32
//!        24  seq     u64: per stream and step, from 0
//!        32  sent_ns u64: CLOCK_MONOTONIC at send time
//!        40  ... rest of the payload (PCMU silence)
//! ```

use rtpedge_common::sink::{
    STAMP_OFFSET, STAMP_SENT_NS as SENT_NS, STAMP_SEQ as SEQ, STAMP_STEP as STEP,
    STAMP_STREAM as STREAM,
};

use crate::rtp::RTP_HEADER_LEN;

/// Marks a stamped packet. The layout is shared with the XDP receive sink, which reads it in
/// the kernel (`rtpedge_common::sink`).
pub const MAGIC: [u8; 4] = rtpedge_common::sink::STAMP_MAGIC;
/// Bytes of the stamp itself.
pub const STAMP_LEN: usize = rtpedge_common::sink::STAMP_LEN;
const _: () = assert!(STAMP_OFFSET == RTP_HEADER_LEN);
/// The smallest packet that carries a stamp.
pub const MIN_PACKET: usize = RTP_HEADER_LEN + STAMP_LEN;
/// The step id of warm-up traffic, which the receiver ignores.
pub const WARMUP_STEP: u32 = 0;

/// What a packet says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Measurement step ([`WARMUP_STEP`] for warm-up traffic).
    pub step: u32,
    /// Stream index.
    pub stream: u32,
    /// Sequence number within the stream and step.
    pub seq: u64,
    /// Monotonic send time in nanoseconds.
    pub sent_ns: u64,
}

impl Stamp {
    /// Writes the stamp after the RTP header of `packet`; false (and nothing written) if the
    /// packet is shorter than [`MIN_PACKET`].
    pub fn write(&self, packet: &mut [u8]) -> bool {
        let Some(dst) = packet.get_mut(RTP_HEADER_LEN..MIN_PACKET) else {
            return false;
        };
        dst[0..4].copy_from_slice(&MAGIC);
        dst[STEP..STEP + 4].copy_from_slice(&self.step.to_be_bytes());
        dst[STREAM..STREAM + 4].copy_from_slice(&self.stream.to_be_bytes());
        dst[SEQ..SEQ + 8].copy_from_slice(&self.seq.to_be_bytes());
        dst[SENT_NS..SENT_NS + 8].copy_from_slice(&self.sent_ns.to_be_bytes());
        true
    }

    /// Reads the stamp of a received packet; `None` if it is too short or not stamped.
    pub fn read(packet: &[u8]) -> Option<Stamp> {
        let s = packet.get(RTP_HEADER_LEN..MIN_PACKET)?;
        if s[0..4] != MAGIC {
            return None;
        }
        let u32_at = |o: usize| u32::from_be_bytes([s[o], s[o + 1], s[o + 2], s[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&s[o..o + 8]);
            u64::from_be_bytes(b)
        };
        Some(Stamp {
            step: u32_at(STEP),
            stream: u32_at(STREAM),
            seq: u64_at(SEQ),
            sent_ns: u64_at(SENT_NS),
        })
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the vDSO makes this a few tens of nanoseconds). Sender and
/// receiver are on the same host, so the difference of two readings is the one-way latency.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::{G711_20MS_PAYLOAD, RtpStream};

    #[test]
    fn round_trip_after_a_real_rtp_header() {
        let mut pkt = [0u8; G711_20MS_PAYLOAD];
        RtpStream::new(7, 160).fill(&mut pkt, 3);
        let st = Stamp {
            step: 5,
            stream: 123_456,
            seq: u64::MAX - 1,
            sent_ns: 0x0102_0304_0506_0708,
        };
        assert!(st.write(&mut pkt));
        assert_eq!(Stamp::read(&pkt), Some(st));
        // The RTP header is untouched.
        assert_eq!(&pkt[..4], &[0x80, 0, 0, 3]);
        // The rest of the payload is still silence.
        assert!(pkt[MIN_PACKET..].iter().all(|b| *b == 0xff));
    }

    #[test]
    fn layout_is_the_documented_one() {
        let mut pkt = [0u8; MIN_PACKET];
        Stamp {
            step: 0x0102_0304,
            stream: 0x0506_0708,
            seq: 0x1112_1314_1516_1718,
            sent_ns: 0x2122_2324_2526_2728,
        }
        .write(&mut pkt);
        let s = &pkt[12..];
        assert_eq!(&s[0..4], b"RTPL");
        assert_eq!(&s[4..8], &[1, 2, 3, 4]);
        assert_eq!(&s[8..12], &[5, 6, 7, 8]);
        assert_eq!(
            &s[12..20],
            &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]
        );
        assert_eq!(
            &s[20..28],
            &[0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28]
        );
    }

    #[test]
    fn rejects_short_and_unstamped_packets() {
        let mut short = [0u8; MIN_PACKET - 1];
        let st = Stamp {
            step: 1,
            stream: 1,
            seq: 1,
            sent_ns: 1,
        };
        assert!(!st.write(&mut short));
        assert_eq!(Stamp::read(&short), None);
        let mut pkt = [0u8; G711_20MS_PAYLOAD];
        RtpStream::new(7, 160).fill(&mut pkt, 0);
        assert_eq!(Stamp::read(&pkt), None, "silence is not a stamp");
        assert!(st.write(&mut pkt));
        pkt[RTP_HEADER_LEN] ^= 1;
        assert_eq!(Stamp::read(&pkt), None, "wrong magic");
    }

    #[test]
    fn clock_advances() {
        let a = now_ns();
        let b = now_ns();
        assert!(a > 0 && b >= a);
    }
}
