//! Fuzzes the bridge's packet validation and stream statistics: no input may panic (out-of-bounds
//! reads, arithmetic overflow: cargo-fuzz builds with debug assertions), and every accepted packet
//! must satisfy the views' invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtpedge_bridge::rtp::{self, Packet, RtcpView, RtpView};
use rtpedge_bridge::stats::StreamStats;

fuzz_target!(|data: &[u8]| {
    let mut stats = StreamStats::new(8000);

    match rtp::parse(data) {
        Ok(Packet::Rtp(v)) => {
            check_rtp(data, &v, true);
            stats.on_packet(v.sequence(), v.timestamp(), v.ssrc(), 0, data.len());
        }
        Ok(Packet::Rtcp(v)) => check_rtcp(data, &v),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match rtp::parse_rtcp(data) {
        Ok(v) => {
            check_rtcp(data, &v);
            assert_eq!(rtp::parse(data), Ok(Packet::Rtcp(v)));
        }
        Err(e) => assert!(!matches!(rtp::parse(data), Ok(Packet::Rtcp(_))), "{e}"),
    }
    match rtp::parse_srtp(data) {
        Ok(Packet::Rtp(v)) => check_rtp(data, &v, false),
        Ok(Packet::Rtcp(v)) => {
            assert!(rtp::RTCP_MUX_RANGE.contains(&v.packet_type()));
            assert_eq!(v.compound_len(), data.len());
        }
        Err(_) => {}
    }
    if let Ok(v) = rtp::parse_srtcp(data) {
        let _ = (v.kind(), v.count(), v.ssrc());
    }

    // The same bytes as a stream of 16-byte records: seq, timestamp, SSRC selector, arrival
    // delta, size. Few SSRCs so that changes happen but sequences also run long.
    let mut now: u64 = u64::from_le_bytes(
        data.get(..8)
            .and_then(|b| b.try_into().ok())
            .unwrap_or_default(),
    );
    for rec in data.chunks_exact(16) {
        let seq = u16::from_be_bytes([rec[0], rec[1]]);
        let ts = u32::from_be_bytes([rec[2], rec[3], rec[4], rec[5]]);
        let ssrc = u32::from(rec[6] % 3);
        now = now.wrapping_add(u64::from(u32::from_le_bytes([
            rec[7], rec[8], rec[9], rec[10],
        ])));
        let bytes = usize::from(u16::from_le_bytes([rec[11], rec[12]]));
        stats.on_packet(seq, ts, ssrc, now, bytes);
        assert_eq!(
            stats.lost(),
            stats.expected() as i64 - stats.received() as i64
        );
        assert!(stats.received() <= stats.packets());
    }
    let _ = (
        stats.packets(),
        stats.bytes(),
        stats.ssrc(),
        stats.reordered(),
        stats.duplicates(),
        stats.jitter_rtp_units(),
        stats.jitter(),
        stats.ssrc_changes(),
        stats.sequence_restarts(),
        stats.extended_highest_seq(),
        stats.last_arrival_ns(),
    );
});

fn check_rtp(data: &[u8], v: &RtpView<'_>, strict: bool) {
    let cc = usize::from(v.csrc_count());
    assert_eq!(
        v.header_len() + v.payload().len() + v.padding_len(),
        data.len()
    );
    assert!(v.header_len() >= 12 + 4 * cc);
    assert!(v.payload_type() < 128);
    assert!(!rtp::RTCP_MUX_RANGE.contains(&data[1]));
    for i in 0..16 {
        assert_eq!(v.csrc(i).is_some(), i < cc);
    }
    match v.extension() {
        Some((_, ext)) => assert_eq!(12 + 4 * cc + 4 + ext.len(), v.header_len()),
        None => assert_eq!(12 + 4 * cc, v.header_len()),
    }
    if strict && v.has_padding() {
        assert!(v.padding_len() >= 1);
        assert_eq!(Some(&(v.padding_len() as u8)), data.last());
    } else {
        assert_eq!(v.padding_len(), 0);
    }
    let _ = (
        v.marker(),
        v.sequence(),
        v.timestamp(),
        v.ssrc(),
        v.as_bytes(),
    );
}

fn check_rtcp(data: &[u8], v: &RtcpView<'_>) {
    assert!(rtp::RTCP_MUX_RANGE.contains(&v.packet_type()));
    assert_eq!(v.compound_len(), data.len());
    assert_eq!(v.as_bytes(), data);
    assert_eq!(data.len() % 4, 0);
    let _ = (v.kind(), v.count(), v.ssrc());
}
