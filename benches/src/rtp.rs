//! RTP-shaped payloads for load generation: a 12-byte RTP header (version 2, payload type 0,
//! PCMU) whose sequence number and timestamp advance per packet, followed by PCMU silence.
//! A 172-byte payload is one 20 ms G.711 packet, the most common media packet there is.

/// Length of the fixed RTP header (no CSRCs, no extension).
pub const RTP_HEADER_LEN: usize = 12;
/// UDP payload of one 20 ms G.711 packet: RTP header plus 160 samples.
pub const G711_20MS_PAYLOAD: usize = RTP_HEADER_LEN + 160;
/// PCMU encoding of silence.
const PCMU_SILENCE: u8 = 0xff;
/// RTP payload type 0 (PCMU).
const PT_PCMU: u8 = 0;

/// One RTP stream's header state.
#[derive(Clone, Debug)]
pub struct RtpStream {
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    samples_per_packet: u32,
}

impl RtpStream {
    /// A stream with the given SSRC, starting at sequence 0 and timestamp 0, advancing the
    /// timestamp by `samples_per_packet` per packet.
    pub fn new(ssrc: u32, samples_per_packet: u32) -> Self {
        Self {
            ssrc,
            seq: 0,
            timestamp: 0,
            samples_per_packet,
        }
    }

    /// Fills `buf` as the stream's packet `ahead` positions after the next one (0 = next):
    /// header plus silence. Does not advance the stream (see [`RtpStream::advance`]), so a
    /// batch can be prepared before knowing how much of it is sent. `buf` shorter than the
    /// header is left untouched.
    pub fn fill(&self, buf: &mut [u8], ahead: u16) {
        let Some((hdr, payload)) = buf.split_first_chunk_mut::<RTP_HEADER_LEN>() else {
            return;
        };
        let seq = self.seq.wrapping_add(ahead);
        let ts = self
            .timestamp
            .wrapping_add(u32::from(ahead).wrapping_mul(self.samples_per_packet));
        hdr[0] = 0x80; // V=2, no padding, no extension, no CSRC
        hdr[1] = PT_PCMU;
        hdr[2..4].copy_from_slice(&seq.to_be_bytes());
        hdr[4..8].copy_from_slice(&ts.to_be_bytes());
        hdr[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        payload.fill(PCMU_SILENCE);
    }

    /// Moves the stream on by `packets` packets.
    pub fn advance(&mut self, packets: u16) {
        self.seq = self.seq.wrapping_add(packets);
        self.timestamp = self
            .timestamp
            .wrapping_add(u32::from(packets).wrapping_mul(self.samples_per_packet));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_and_advance() {
        let mut s = RtpStream::new(0x1122_3344, 160);
        let mut buf = [0u8; G711_20MS_PAYLOAD];
        s.fill(&mut buf, 2);
        assert_eq!(&buf[..4], &[0x80, 0, 0, 2]);
        assert_eq!(&buf[4..8], &320u32.to_be_bytes());
        assert_eq!(&buf[8..12], &[0x11, 0x22, 0x33, 0x44]);
        assert!(buf[12..].iter().all(|b| *b == PCMU_SILENCE));
        s.advance(u16::MAX);
        s.fill(&mut buf, 1);
        assert_eq!(&buf[2..4], &[0, 0], "sequence wraps");
    }

    #[test]
    fn short_buffer_is_left_alone() {
        let s = RtpStream::new(1, 160);
        let mut buf = [7u8; 5];
        s.fill(&mut buf, 0);
        assert_eq!(buf, [7u8; 5]);
    }
}
