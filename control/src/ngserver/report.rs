//! `query`/`delete` replies written straight to bencode: the same bytes as encoding the
//! [`super::report_reply`] dictionary, without building it (a delete reply is some eighty
//! dictionary entries; building and sorting them cost more than the rest of the delete).
//!
//! Keys are written in bencode's sorted order by construction; the tests hold the output to
//! the dictionary path's byte for byte.

use std::io::Write;
use std::net::SocketAddr;

use crate::engine::{CallReport, StreamReport};

/// The reply datagram for `r`: `cookie`, a space, the bencoded dictionary, with `warning`
/// when given.
pub(super) fn report_datagram(
    cookie: &[u8],
    r: &CallReport,
    now_ms: i64,
    warning: Option<&str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(cookie.len() + 1600);
    out.extend_from_slice(cookie);
    out.push(b' ');
    let mut w = Writer(&mut out);
    let (rtp, rtcp) = totals(r);
    w.open_dict();
    w.key("SSRC");
    w.open_dict();
    w.close();
    w.key("created");
    w.int(r.created_ms / 1000);
    w.key("created_us");
    w.int((r.created_ms % 1000) * 1000);
    w.key("last signal");
    w.int(r.last_signal_ms / 1000);
    w.key("result");
    w.str("ok");
    w.key("tags");
    w.open_dict();
    // The tags dictionary is keyed by the tags themselves: in their byte order. A repeated
    // tag (both sides alike) keeps the later entry, as inserting into a dictionary does.
    match r.b_tag.as_deref() {
        Some(b) if b.as_bytes() < r.a_tag.as_bytes() => {
            tag(&mut w, r, b, Some(&r.a_tag), 1, now_ms);
            tag(&mut w, r, &r.a_tag, Some(b), 0, now_ms);
        }
        Some(b) if b == r.a_tag => tag(&mut w, r, b, Some(&r.a_tag), 1, now_ms),
        Some(b) => {
            tag(&mut w, r, &r.a_tag, Some(b), 0, now_ms);
            tag(&mut w, r, b, Some(&r.a_tag), 1, now_ms);
        }
        None => tag(&mut w, r, &r.a_tag, None, 0, now_ms),
    }
    w.close();
    w.key("totals");
    w.open_dict();
    w.key("RTCP");
    stats(&mut w, rtcp[0], rtcp[1], rtcp[2]);
    w.key("RTP");
    stats(&mut w, rtp[0], rtp[1], rtp[2]);
    w.close();
    if let Some(warning) = warning {
        w.key("warning");
        w.str(warning);
    }
    w.close();
    out
}

/// The call's `totals`: RTP and RTCP packets, bytes and errors over both directions.
pub(super) fn totals(r: &CallReport) -> ([u64; 3], [u64; 3]) {
    let (mut rtp, mut rtcp) = ([0u64; 3], [0u64; 3]);
    for m in &r.media {
        for s in [&m.from_a, &m.from_b] {
            rtp[0] += s.packets.saturating_sub(s.rtcp_packets);
            rtp[1] += s.bytes.saturating_sub(s.rtcp_bytes);
            rtp[2] += s.errors;
            rtcp[0] += s.rtcp_packets;
            rtcp[1] += s.rtcp_bytes;
        }
    }
    (rtp, rtcp)
}

fn tag(
    w: &mut Writer<'_>,
    r: &CallReport,
    tag: &str,
    other: Option<&str>,
    side: usize,
    now_ms: i64,
) {
    w.key(tag);
    w.open_dict();
    w.key("created");
    w.int(r.created_ms / 1000);
    if let Some(o) = other {
        w.key("in dialogue with");
        w.str(o);
    }
    w.key("medias");
    w.open_list();
    for m in &r.media {
        let s = if side == 0 { &m.from_a } else { &m.from_b };
        w.open_dict();
        if let Some(c) = &m.codec {
            w.key("codec");
            w.str(c);
        }
        w.key("flags");
        w.open_list();
        w.str("initialized");
        if s.local.is_some() {
            w.str("send");
            w.str("recv");
        }
        w.close();
        w.key("index");
        w.int(i64::try_from(m.index).unwrap_or(i64::MAX).saturating_add(1));
        w.key("protocol");
        w.str(&m.protocol);
        w.key("streams");
        w.open_list();
        streams(w, s, now_ms, r.last_signal_ms);
        w.close();
        w.key("type");
        w.str(&m.kind);
        w.close();
    }
    w.close();
    for key in ["subscribers", "subscriptions"] {
        w.key(key);
        w.open_list();
        if let Some(o) = other {
            w.open_dict();
            w.key("tag");
            w.str(o);
            w.key("type");
            w.str("offer/answer");
            w.close();
        }
        w.close();
    }
    w.key("tag");
    w.str(tag);
    w.close();
}

fn streams(w: &mut Writer<'_>, s: &StreamReport, now_ms: i64, fallback_ms: i64) {
    let last = s
        .idle
        .map_or(fallback_ms, |d| now_ms - d.as_millis() as i64)
        / 1000;
    if let Some(local) = s.local {
        let rtp_packets = s.packets.saturating_sub(s.rtcp_packets);
        let rtp_bytes = s.bytes.saturating_sub(s.rtcp_bytes);
        stream(
            w,
            local,
            s.endpoint,
            s.advertised,
            "RTP",
            last,
            s.ssrc,
            [rtp_packets, rtp_bytes, s.errors],
        );
    }
    if let Some(local) = s.local_rtcp {
        let rtcp_of =
            |a: Option<SocketAddr>| a.map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1)));
        stream(
            w,
            local,
            rtcp_of(s.endpoint),
            rtcp_of(s.advertised),
            "RTCP",
            last,
            None,
            [s.rtcp_packets, s.rtcp_bytes, 0],
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn stream(
    w: &mut Writer<'_>,
    local: SocketAddr,
    endpoint_addr: Option<SocketAddr>,
    advertised: Option<SocketAddr>,
    kind: &str,
    last_packet_s: i64,
    ssrc: Option<u32>,
    [packets, bytes, errors]: [u64; 3],
) {
    w.open_dict();
    if let Some(ssrc) = ssrc {
        w.key("SSRC");
        w.int(i64::from(ssrc));
    }
    w.key("advertised endpoint");
    endpoint(w, advertised);
    w.key("endpoint");
    endpoint(w, endpoint_addr);
    w.key("family");
    w.str(family(local));
    w.key("flags");
    w.open_list();
    w.str(kind);
    if endpoint_addr.is_some() {
        w.str("filled");
    }
    w.close();
    w.key("last packet");
    w.int(last_packet_s);
    w.key("local address");
    w.ip(local);
    w.key("local port");
    w.int(i64::from(local.port()));
    w.key("stats");
    stats(w, packets, bytes, errors);
    w.close();
}

fn endpoint(w: &mut Writer<'_>, addr: Option<SocketAddr>) {
    w.open_dict();
    if let Some(a) = addr {
        w.key("address");
        w.ip(a);
        w.key("family");
        w.str(family(a));
        w.key("port");
        w.int(i64::from(a.port()));
    }
    w.close();
}

fn stats(w: &mut Writer<'_>, packets: u64, bytes: u64, errors: u64) {
    w.open_dict();
    w.key("bytes");
    w.int(bytes as i64);
    w.key("errors");
    w.int(errors as i64);
    w.key("packets");
    w.int(packets as i64);
    w.close();
}

fn family(a: SocketAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Bencode tokens onto a buffer.
struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn open_dict(&mut self) {
        self.0.push(b'd');
    }
    fn open_list(&mut self) {
        self.0.push(b'l');
    }
    fn close(&mut self) {
        self.0.push(b'e');
    }
    fn key(&mut self, k: &str) {
        self.str(k);
    }
    fn str(&mut self, s: &str) {
        self.int_digits(s.len() as i64);
        self.0.push(b':');
        self.0.extend_from_slice(s.as_bytes());
    }
    fn int(&mut self, i: i64) {
        self.0.push(b'i');
        self.int_digits(i);
        self.0.push(b'e');
    }
    fn int_digits(&mut self, i: i64) {
        // Writing into a Vec cannot fail.
        let _ = write!(self.0, "{i}");
    }
    /// An address's IP as text (`to_string`'s form), length-prefixed, without an allocation.
    fn ip(&mut self, a: SocketAddr) {
        let mut buf = [0u8; 64];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        let _ = write!(cursor, "{}", a.ip());
        let n = usize::try_from(cursor.position()).unwrap_or(0).min(64);
        self.int_digits(n as i64);
        self.0.push(b':');
        self.0.extend_from_slice(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::MediaReport;
    use crate::ng::{Value, reply};

    fn stream(seed: u64, full: bool) -> StreamReport {
        let v4 = |p: u16| SocketAddr::from(([203, 0, 113, 7], p));
        let v6 = |p: u16| SocketAddr::new("2001:db8::5".parse().unwrap(), p);
        StreamReport {
            local: full.then(|| {
                if seed.is_multiple_of(2) {
                    v4(30000)
                } else {
                    v6(30000)
                }
            }),
            local_rtcp: (full && !seed.is_multiple_of(3)).then(|| v4(30001)),
            endpoint: (!seed.is_multiple_of(4)).then(|| v4(5004)),
            advertised: (!seed.is_multiple_of(5)).then(|| v6(6000)),
            packets: seed * 7 % 1000,
            bytes: seed * 1337 % 100_000,
            errors: seed % 3,
            rtcp_packets: seed % 11,
            rtcp_bytes: seed % 11 * 80,
            idle: (seed % 2 == 1).then(|| Duration::from_millis(seed * 17 % 5000)),
            ssrc: (seed % 3 != 1).then_some(u32::MAX - seed as u32),
            ..StreamReport::default()
        }
    }

    /// The streamed reply is byte for byte the dictionary path's, for calls of every shape:
    /// one or two sides, equal tags, tags in either order, no or several media sections,
    /// codecs or none, RTCP or mux, IPv4 and IPv6, with and without a warning.
    #[test]
    fn streamed_reports_equal_the_dictionary_path() {
        let tags = [
            ("a", None),
            ("from-tag", Some("to-tag")),
            ("zzz", Some("aaa")),
            ("same", Some("same")),
        ];
        let mut seed = 1u64;
        for (a, b) in tags {
            for media in 0..3usize {
                for warning in [None, Some("flag 'foo' ignored")] {
                    seed += 1;
                    let r = CallReport {
                        call_id: "c".into(),
                        a_tag: a.into(),
                        b_tag: b.map(str::to_string),
                        created_ms: 1_700_000_000_123 + seed as i64,
                        last_signal_ms: 1_700_000_001_456,
                        answered_ms: None,
                        state: "answered",
                        account: None,
                        media: (0..media)
                            .map(|i| MediaReport {
                                index: i,
                                kind: if i == 0 { "audio" } else { "video" }.into(),
                                protocol: "RTP/AVP".into(),
                                codec: (i % 2 == 0).then(|| "PCMU".to_string()),
                                from_a: stream(seed + i as u64, true),
                                from_b: stream(seed * 3 + i as u64, b.is_some()),
                                parties: Vec::new(),
                            })
                            .collect(),
                    };
                    let now_ms = 1_700_000_009_999;
                    let mut value: Value = crate::ngserver::report_reply(&r, now_ms);
                    reply::add_warning(&mut value, warning);
                    let expected = reply::encode_reply(b"ck", &value, false);
                    let got = report_datagram(b"ck", &r, now_ms, warning);
                    assert_eq!(
                        String::from_utf8_lossy(&got),
                        String::from_utf8_lossy(&expected),
                        "tags {a}/{b:?}, {media} media, warning {warning:?}"
                    );
                }
            }
        }
    }
}
