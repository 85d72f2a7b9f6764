//! Arbitrary bytes into the SDP parser; whatever parses is rewritten.
//!
//! Invariants checked beyond "no panic":
//! - the identity rewrite reproduces the input byte for byte;
//! - an all-fields rewrite, and one whose parameters come from the input, produce SDP that
//!   parses again, has the same sections, says what was asked (ports, addresses, origin), and
//!   is a fixed point: rewriting it again with the same rewrite changes nothing.
//!
//! The sdp module is compiled straight from ../src/sdp, like the ng module in src/lib.rs: it
//! needs only std and thiserror, and this keeps the `rtpedge` crate's build out of the fuzzer.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;

#[path = "../../src/sdp/mod.rs"]
#[allow(dead_code, unused_imports)]
mod sdp;

use sdp::{
    Direction, Limits, MediaRewrite, Rewrite, RtcpAttributeStyle, RtcpMuxRewrite, RtcpRewrite,
    SessionDescription, VersionChange,
};

const LOCAL4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
const LOCAL6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));

/// Every field set.
fn all_fields(sd: &SessionDescription) -> Rewrite {
    Rewrite {
        origin_address: Some(LOCAL4),
        origin_version: VersionChange::Set(42),
        session_name: Some("rtpedge".into()),
        session_connection: None,
        strip_ice: true,
        rtcp_attribute: RtcpAttributeStyle::Full,
        media: (0..sd.media().len())
            .map(|i| MediaRewrite {
                port: Some(30000 + 2 * i as u16),
                address: Some(LOCAL4),
                rtcp: RtcpRewrite::Set {
                    port: 30001 + 2 * i as u16,
                    address: Some(LOCAL6),
                },
                rtcp_mux: RtcpMuxRewrite::Offer,
                direction: Some(Direction::SendRecv),
            })
            .collect(),
    }
}

/// Parameters picked by a hash of the input, so the fuzzer explores the rewrite space too.
fn from_input(sd: &SessionDescription, data: &[u8]) -> Rewrite {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let mut bits = move || {
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    };
    let mut pick = move |n: u64| bits() % n;
    let addr = |k: u64| match k {
        0 => None,
        1 => Some(LOCAL4),
        2 => Some(LOCAL6),
        _ => Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7))),
    };
    let mut rw = Rewrite {
        origin_address: addr(pick(4)),
        origin_version: match pick(3) {
            0 => VersionChange::Keep,
            1 => VersionChange::Increment,
            _ => VersionChange::Set(7),
        },
        session_name: (pick(2) == 0).then(|| "x\r\ny".into()),
        session_connection: addr(pick(8)),
        strip_ice: pick(2) == 0,
        rtcp_attribute: match pick(3) {
            0 => RtcpAttributeStyle::Auto,
            1 => RtcpAttributeStyle::Full,
            _ => RtcpAttributeStyle::Omit,
        },
        media: Vec::new(),
    };
    for _ in 0..sd.media().len() {
        rw.media.push(MediaRewrite {
            port: match pick(4) {
                0 => None,
                1 => Some(0),
                _ => Some(pick(65536) as u16),
            },
            address: addr(pick(4)),
            rtcp: match pick(3) {
                0 => RtcpRewrite::Keep,
                1 => RtcpRewrite::Remove,
                _ => RtcpRewrite::Set {
                    port: pick(65536) as u16,
                    address: addr(pick(4)),
                },
            },
            rtcp_mux: match pick(4) {
                0 => RtcpMuxRewrite::Keep,
                1 => RtcpMuxRewrite::Offer,
                2 => RtcpMuxRewrite::Use,
                _ => RtcpMuxRewrite::Remove,
            },
            direction: match pick(5) {
                0 => Some(Direction::SendRecv),
                1 => Some(Direction::SendOnly),
                2 => Some(Direction::RecvOnly),
                3 => Some(Direction::Inactive),
                _ => None,
            },
        });
    }
    rw
}

fn check(sd: &SessionDescription, rw: &Rewrite) {
    let out = sdp::rewrite(sd, rw);
    let relaxed = Limits {
        max_bytes: usize::MAX,
        max_lines: usize::MAX,
        max_media: usize::MAX,
    };
    let re = sdp::parse_with_limits(&out, &relaxed).expect("rewrite output parses");
    assert_eq!(re.media().len(), sd.media().len());
    if let Some(a) = rw.origin_address {
        assert_eq!(re.origin().ip(), Some(a));
    }
    for (i, (before, after)) in sd.media().iter().zip(re.media()).enumerate() {
        let mr = &rw.media[i];
        let port = mr.port.unwrap_or(before.port());
        assert_eq!(after.port(), port);
        assert_eq!(after.formats(), before.formats());
        let new = re.remote_media(i).expect("section exists");
        match mr.address {
            Some(a) => assert_eq!(new.rtp.map(|s| s.ip()), Some(a)),
            None if port != 0 => {
                let old = sd.remote_media(i).expect("section exists");
                assert_eq!(new.rtp.map(|s| s.ip()), old.rtp.map(|s| s.ip()));
            }
            None => {}
        }
        if let Some(d) = mr.direction {
            assert_eq!(after.direction(), Some(d));
        }
    }
    if rw.origin_version != VersionChange::Increment {
        assert_eq!(sdp::rewrite(&re, rw), out, "rewrite is not a fixed point");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(sd) = sdp::parse(data) else {
        return;
    };
    assert_eq!(sdp::rewrite(&sd, &Rewrite::default()), data);
    let _ = sd.remote_media_all().count();
    check(&sd, &all_fields(&sd));
    check(&sd, &from_input(&sd, data));
});
