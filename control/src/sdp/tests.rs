//! Unit tests: every parse error, the rewrite semantics, and a property test (random and mutated
//! bodies never panic; the identity rewrite is byte-exact; random rewrites re-parse and say
//! what was asked).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::rewrite::increment_decimal;
use super::*;

const BASE: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n";

fn body(media: &str) -> String {
    format!("{BASE}{media}")
}

fn err(text: &str) -> SdpError {
    match parse(text.as_bytes()) {
        Ok(_) => panic!("expected an error for {text:?}"),
        Err(e) => e,
    }
}

fn ok(text: &str) -> SessionDescription {
    match parse(text.as_bytes()) {
        Ok(sd) => sd,
        Err(e) => panic!("{e} in {text:?}"),
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn out_str(sd: &SessionDescription, rw: &Rewrite) -> String {
    String::from_utf8(rewrite(sd, rw)).unwrap()
}

// ---- errors -------------------------------------------------------------------------------

#[test]
fn error_too_large() {
    let text = "v=0\r\n".repeat(20);
    let limits = Limits {
        max_bytes: 50,
        ..Limits::DEFAULT
    };
    assert_eq!(
        parse_with_limits(text.as_bytes(), &limits),
        Err(SdpError::TooLarge { len: 100, max: 50 })
    );
    let huge = vec![b'a'; 64 * 1024 + 1];
    assert!(matches!(parse(&huge), Err(SdpError::TooLarge { .. })));
}

#[test]
fn error_too_many_lines() {
    let text = body(&"a=x\r\n".repeat(10));
    let limits = Limits {
        max_lines: 8,
        ..Limits::DEFAULT
    };
    assert_eq!(
        parse_with_limits(text.as_bytes(), &limits),
        Err(SdpError::TooManyLines { max: 8 })
    );
    assert!(matches!(
        parse("a=x\n".repeat(5000).as_bytes()),
        Err(SdpError::TooManyLines { max: 4096 })
    ));
}

#[test]
fn error_too_many_media() {
    let text = body(&"m=audio 1 RTP/AVP 0\r\n".repeat(65));
    assert_eq!(err(&text), SdpError::TooManyMedia { line: 70, max: 64 });
    assert!(parse(body(&"m=audio 1 RTP/AVP 0\r\n".repeat(64)).as_bytes()).is_ok());
}

#[test]
fn error_empty() {
    assert_eq!(err(""), SdpError::Empty);
    assert_eq!(err("\r\n \r\n\t\n"), SdpError::Empty);
}

#[test]
fn error_missing_version() {
    assert_eq!(
        err("o=- 1 1 IN IP4 192.0.2.1\r\nv=0\r\n"),
        SdpError::MissingVersion { line: 1 }
    );
    assert_eq!(err("\r\ns=x\r\n"), SdpError::MissingVersion { line: 2 });
}

#[test]
fn error_unsupported_version() {
    assert_eq!(
        err("v=1\r\n"),
        SdpError::UnsupportedVersion {
            line: 1,
            value: "1".into()
        }
    );
}

#[test]
fn error_missing_origin() {
    assert_eq!(err("v=0\r\ns=-\r\nt=0 0\r\n"), SdpError::MissingOrigin);
}

#[test]
fn error_missing_equals() {
    assert_eq!(
        err(&body("m=audio 5004 RTP/AVP 0\r\nsendrecv\r\n")),
        SdpError::MissingEquals { line: 7 }
    );
}

#[test]
fn error_invalid_type() {
    assert_eq!(err(&body("ab=c\r\n")), SdpError::InvalidType { line: 6 });
    assert_eq!(err(&body(" a=c\r\n")), SdpError::InvalidType { line: 6 });
    assert_eq!(err(&body("1=c\r\n")), SdpError::InvalidType { line: 6 });
    assert_eq!(err(&body("=c\r\n")), SdpError::InvalidType { line: 6 });
}

#[test]
fn error_invalid_character() {
    assert_eq!(
        err(&body("a=x\0y\r\n")),
        SdpError::InvalidCharacter { line: 6 }
    );
    assert_eq!(
        err(&body("a=x\ra=y\r\n")),
        SdpError::InvalidCharacter { line: 6 }
    );
    // A body ending in a bare CR.
    assert_eq!(err(&body("a=x\r")), SdpError::InvalidCharacter { line: 6 });
}

#[test]
fn error_non_utf8() {
    let mut text = body("m=audio 5004 RTP/AVP 0\r\n").into_bytes();
    text.extend_from_slice(b"a=label:\xff\xfe\r\n");
    assert_eq!(
        parse(&text),
        Err(SdpError::NonUtf8 {
            line: 7,
            field: "a="
        })
    );
    let mut text = BASE.as_bytes().to_vec();
    text.extend_from_slice(b"m=audio \xc3 RTP/AVP 0\r\n");
    assert_eq!(
        parse(&text),
        Err(SdpError::NonUtf8 {
            line: 6,
            field: "m="
        })
    );
    let text = b"v=0\r\no=- 1 1 IN IP4 \xff\r\n";
    assert_eq!(
        parse(text),
        Err(SdpError::NonUtf8 {
            line: 2,
            field: "o="
        })
    );
    // s= and i= may carry another charset (a=charset): kept as bytes.
    let mut text = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=T\xe9l\xe9\r\ni=\xff\r\n".to_vec();
    text.extend_from_slice(b"c=IN IP4 192.0.2.1\r\nt=0 0\r\n");
    let sd = parse(&text).unwrap();
    assert_eq!(sd.session_name(), Some(&b"T\xe9l\xe9"[..]));
    assert_eq!(rewrite(&sd, &Rewrite::default()), text);
}

#[test]
fn error_unexpected_line() {
    assert_eq!(
        err(&body("v=0\r\n")),
        SdpError::UnexpectedLine { line: 6, kind: 'v' }
    );
    assert_eq!(
        err(&body(
            "m=audio 5004 RTP/AVP 0\r\no=- 1 1 IN IP4 192.0.2.1\r\n"
        )),
        SdpError::UnexpectedLine { line: 7, kind: 'o' }
    );
    assert_eq!(
        err(&body("m=audio 5004 RTP/AVP 0\r\nt=0 0\r\n")),
        SdpError::UnexpectedLine { line: 7, kind: 't' }
    );
}

#[test]
fn error_duplicate_line() {
    assert_eq!(
        err(&body("o=- 2 2 IN IP4 192.0.2.1\r\n")),
        SdpError::DuplicateLine { line: 6, kind: 'o' }
    );
    assert_eq!(
        err(&body("s=again\r\n")),
        SdpError::DuplicateLine { line: 6, kind: 's' }
    );
    assert_eq!(
        err(&body("c=IN IP4 192.0.2.2\r\n")),
        SdpError::DuplicateLine { line: 6, kind: 'c' }
    );
    assert_eq!(
        err(&body(
            "m=audio 5004 RTP/AVP 0\r\nc=IN IP4 192.0.2.2\r\nc=IN IP4 192.0.2.3\r\n"
        )),
        SdpError::DuplicateLine { line: 8, kind: 'c' }
    );
}

#[test]
fn error_invalid_origin() {
    assert_eq!(
        err("v=0\r\no=- 1 1 IN IP4\r\n"),
        SdpError::InvalidOrigin { line: 2, found: 5 }
    );
    assert_eq!(
        err("v=0\r\no=- 1 1 IN IP4 1.2.3.4 extra\r\n"),
        SdpError::InvalidOrigin { line: 2, found: 7 }
    );
}

#[test]
fn error_invalid_connection() {
    assert_eq!(
        err(&body("m=audio 5004 RTP/AVP 0\r\nc=IN IP4\r\n")),
        SdpError::InvalidConnection {
            line: 7,
            reason: "expected `IN <addrtype> <address>`"
        }
    );
    assert!(matches!(
        err(&body("m=audio 5004 RTP/AVP 0\r\nc=IN IP4 1.2.3.4 5\r\n")),
        SdpError::InvalidConnection { line: 7, .. }
    ));
}

#[test]
fn error_unknown_network_type() {
    assert_eq!(
        err(&body("m=audio 5004 RTP/AVP 0\r\nc=TN RFC2543 555\r\n")),
        SdpError::UnknownNetworkType {
            line: 7,
            value: "TN".into()
        }
    );
}

#[test]
fn error_unknown_address_type() {
    assert_eq!(
        err(&body("m=audio 5004 RTP/AVP 0\r\nc=IN IPX 192.0.2.1\r\n")),
        SdpError::UnknownAddressType {
            line: 7,
            value: "IPX".into()
        }
    );
}

#[test]
fn error_invalid_address() {
    for (addr_type, addr) in [
        ("IP4", "192.0.2"),
        ("IP4", "2001:db8::1"),
        ("IP6", "192.0.2.1"),
        ("IP4", "host.example.com"),
        ("IP4", "192.0.2.256"),
    ] {
        let text = body(&format!(
            "m=audio 5004 RTP/AVP 0\r\nc=IN {addr_type} {addr}\r\n"
        ));
        assert_eq!(
            err(&text),
            SdpError::InvalidAddress {
                line: 7,
                addr_type: if addr_type == "IP4" { "IP4" } else { "IP6" },
                value: addr.into()
            },
            "{addr_type} {addr}"
        );
    }
    // Multicast TTL and count are accepted in c=.
    let sd = ok(&body(
        "m=audio 5004 RTP/AVP 0\r\nc=IN IP4 233.252.0.1/127/2\r\n",
    ));
    assert_eq!(
        sd.media()[0].connection().unwrap().address(),
        v4(233, 252, 0, 1)
    );
}

#[test]
fn error_invalid_media() {
    assert_eq!(
        err(&body("m=audio 5004\r\n")),
        SdpError::InvalidMedia { line: 6 }
    );
    assert_eq!(err(&body("m=\r\n")), SdpError::InvalidMedia { line: 6 });
}

#[test]
fn error_invalid_port() {
    for port in [
        "abc", "65536", "+5", "-1", "5004/0", "5004/x", "5004/", "/2", "0x10",
    ] {
        assert_eq!(
            err(&body(&format!("m=audio {port} RTP/AVP 0\r\n"))),
            SdpError::InvalidPort {
                line: 6,
                value: port.into()
            },
            "{port}"
        );
    }
}

#[test]
fn error_no_formats() {
    assert_eq!(
        err(&body("m=audio 5004 RTP/AVP\r\n")),
        SdpError::NoFormats { line: 6 }
    );
    assert_eq!(
        err(&body("m=audio 5004 RTP/AVP   \r\n")),
        SdpError::NoFormats { line: 6 }
    );
}

#[test]
fn error_invalid_attribute() {
    let cases = [
        ("a=\r\n", "", "empty name or whitespace in the name"),
        ("a=:x\r\n", "", "empty name or whitespace in the name"),
        (
            "a=send recv\r\n",
            "send recv",
            "empty name or whitespace in the name",
        ),
        (
            "a=rtcp\r\n",
            "rtcp",
            "expected `<port> [IN IP4|IP6 <address>]`",
        ),
        ("a=rtcp:x\r\n", "rtcp", "invalid port"),
        ("a=rtcp:70000\r\n", "rtcp", "invalid port"),
        (
            "a=rtcp:5005 IN IP4\r\n",
            "rtcp",
            "expected `<port> [IN IP4|IP6 <address>]`",
        ),
        (
            "a=rtcp:5005\r\na=rtcp:5007\r\n",
            "rtcp",
            "more than one `a=rtcp` in one section",
        ),
        (
            "a=sendonly\r\na=recvonly\r\n",
            "recvonly",
            "contradicts an earlier direction attribute",
        ),
    ];
    for (attrs, name, reason) in cases {
        let text = body(&format!("m=audio 5004 RTP/AVP 0\r\n{attrs}"));
        let e = err(&text);
        match &e {
            SdpError::InvalidAttribute {
                name: n, reason: r, ..
            } => {
                assert_eq!((n.as_str(), *r), (name, reason), "{attrs:?}");
            }
            other => panic!("{attrs:?}: {other:?}"),
        }
        assert!(e.line().is_some_and(|l| l >= 7));
    }
    // An address in a=rtcp that does not parse is an address error.
    assert_eq!(
        err(&body(
            "m=audio 5004 RTP/AVP 0\r\na=rtcp:5005 IN IP4 nope\r\n"
        )),
        SdpError::InvalidAddress {
            line: 7,
            addr_type: "IP4",
            value: "nope".into()
        }
    );
    // Repeating the same direction is harmless.
    ok(&body(
        "m=audio 5004 RTP/AVP 0\r\na=sendonly\r\na=sendonly\r\n",
    ));
}

#[test]
fn error_messages_are_readable_and_bounded() {
    let e = err(&body(&format!("m=audio {} RTP/AVP 0\r\n", "9".repeat(500))));
    let msg = e.to_string();
    assert!(msg.starts_with("line 6: invalid port `999"), "{msg}");
    assert!(msg.len() < 120, "{msg}");
    assert_eq!(
        SdpError::NoFormats { line: 3 }.to_string(),
        "line 3: `m=` has no formats"
    );
    assert_eq!(SdpError::Empty.line(), None);
}

// ---- parsing ------------------------------------------------------------------------------

#[test]
fn parses_structure() {
    let text = "v=0\r\n\
        o=alice 2890844526 2890844527 IN IP4 host.example.com\r\n\
        s=Call\r\n\
        c=IN IP4 192.0.2.10\r\n\
        t=0 0\r\n\
        a=group:BUNDLE 0\r\n\
        a=ice-lite\r\n\
        m=audio 49170/2 RTP/SAVP 0 8 101\r\n\
        a=rtpmap:101 telephone-event/8000/1\r\n\
        a=fmtp:101 0-16\r\n\
        a=ptime:20\r\n\
        a=mid:0\r\n\
        a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32\r\n\
        a=setup:actpass\r\n\
        a=fingerprint:sha-256 AB:CD\r\n\
        a=x-unknown\r\n\
        m=video 0 RTP/AVP 31\r\n";
    let sd = ok(text);
    let o = sd.origin();
    assert_eq!(
        (
            o.username(),
            o.session_id(),
            o.session_version(),
            o.net_type(),
            o.addr_type(),
            o.address()
        ),
        (
            "alice",
            "2890844526",
            "2890844527",
            "IN",
            "IP4",
            "host.example.com"
        )
    );
    assert_eq!(o.ip(), None);
    assert_eq!(o.session_version_number(), Some(2890844527));
    assert_eq!(o.line(), 2);
    assert_eq!(sd.session_name(), Some(&b"Call"[..]));
    assert_eq!(sd.connection().unwrap().address(), v4(192, 0, 2, 10));
    assert!(sd.ice_lite());
    assert_eq!(sd.attribute("group").unwrap().value(), Some("BUNDLE 0"));
    assert_eq!(sd.media().len(), 2);
    let m = &sd.media()[0];
    assert_eq!(
        (m.media_type(), m.port(), m.port_count(), m.proto()),
        ("audio", 49170, Some(2), "RTP/SAVP")
    );
    assert_eq!(m.transport(), Transport::RtpSavp);
    assert_eq!(m.formats(), ["0", "8", "101"]);
    assert_eq!(m.line(), 8);
    let kinds: Vec<&AttributeKind> = m.attributes().iter().map(Attribute::kind).collect();
    assert_eq!(
        kinds[0],
        &AttributeKind::Rtpmap(Some(Rtpmap {
            payload_type: 101,
            encoding: "telephone-event".into(),
            clock_rate: 8000,
            channels: Some(1)
        }))
    );
    assert_eq!(kinds[1], &AttributeKind::Fmtp(Some("101".into())));
    assert_eq!(kinds[2], &AttributeKind::Ptime(Some(20)));
    assert_eq!(kinds[3], &AttributeKind::Mid);
    let AttributeKind::Crypto(Some(c)) = kinds[4] else {
        panic!("{:?}", kinds[4]);
    };
    assert_eq!((c.tag, c.suite.as_str()), (1, "AES_CM_128_HMAC_SHA1_80"));
    assert_eq!(kinds[5], &AttributeKind::Setup(Some(Setup::ActPass)));
    assert_eq!(
        kinds[6],
        &AttributeKind::Fingerprint(Some(Fingerprint {
            hash: "sha-256".into(),
            value: "AB:CD".into()
        }))
    );
    assert_eq!(kinds[7], &AttributeKind::Other);
    assert_eq!(m.attributes()[7].value(), None);
    assert_eq!(m.attribute("x-unknown").unwrap().line(), 16);
    assert!(sd.media()[1].is_disabled());

    let r = sd.remote_media(0).unwrap();
    assert_eq!(r.rtp, Some(sa("192.0.2.10:49170")));
    assert_eq!(r.rtcp, Some(sa("192.0.2.10:49171")));
    assert_eq!(r.port_count, 2);
    assert!(r.sdes && r.dtls && r.ice_lite && !r.ice && !r.rtcp_mux);
    assert_eq!(r.mid, Some("0"));
    assert_eq!(r.direction, Direction::SendRecv);
    let r1 = sd.remote_media(1).unwrap();
    assert!(r1.disabled);
    assert_eq!(r1.rtcp, None);
    assert!(sd.remote_media(2).is_none());
    assert_eq!(sd.remote_media_all().count(), 2);
}

#[test]
fn malformed_passthrough_attributes_are_not_errors() {
    let sd = ok(&body(
        "m=audio 5004 RTP/AVP 0\r\na=rtpmap:x PCMU\r\na=ptime:20.5\r\na=setup:sideways\r\n\
         a=crypto:x\r\na=fingerprint:sha-1\r\na=fmtp:\r\n",
    ));
    let kinds: Vec<&AttributeKind> = sd.media()[0]
        .attributes()
        .iter()
        .map(Attribute::kind)
        .collect();
    assert_eq!(
        kinds,
        [
            &AttributeKind::Rtpmap(None),
            &AttributeKind::Ptime(None),
            &AttributeKind::Setup(None),
            &AttributeKind::Crypto(None),
            &AttributeKind::Fingerprint(None),
            &AttributeKind::Fmtp(None),
        ]
    );
}

#[test]
fn remote_media_rtcp_and_direction() {
    let sd = ok(&body(
        "a=sendonly\r\n\
         m=audio 5004 RTP/AVP 0\r\na=rtcp:6000\r\n\
         m=audio 5006 RTP/AVP 0\r\na=rtcp:6002 IN IP6 2001:db8::7\r\na=rtcp-mux\r\na=recvonly\r\n\
         m=audio 65535 RTP/AVP 0\r\nc=IN IP6 2001:db8::1\r\na=candidate:1 1 UDP 1 192.0.2.1 1 typ host\r\n",
    ));
    let r: Vec<RemoteMedia<'_>> = sd.remote_media_all().collect();
    assert_eq!(r[0].rtcp, Some(sa("192.0.2.10:6000")));
    assert_eq!(r[0].direction, Direction::SendOnly);
    assert!(r[0].is_on_hold());
    assert_eq!(r[1].rtcp, Some(sa("[2001:db8::7]:6002")));
    assert!(r[1].rtcp_mux);
    assert_eq!(r[1].direction, Direction::RecvOnly);
    assert!(!r[1].is_on_hold());
    assert_eq!(r[2].rtp, Some(sa("[2001:db8::1]:65535")));
    assert_eq!(r[2].rtcp, None, "65535 + 1 does not exist");
    assert!(r[2].ice);

    let hold =
        ok("v=0\no=- 1 1 IN IP4 0.0.0.0\ns=-\nc=IN IP4 0.0.0.0\nt=0 0\nm=audio 5004 RTP/AVP 0\n");
    assert!(hold.remote_media(0).unwrap().is_on_hold());
    assert_eq!(hold.line_ending(), LineEnding::Lf);

    // No c= anywhere: the address is unknown.
    let none = ok("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio 5004 RTP/AVP 0\r\n");
    assert_eq!(none.remote_media(0).unwrap().rtp, None);
    assert_eq!(none.remote_media(0).unwrap().rtcp, None);
}

#[test]
fn transports() {
    for (proto, t, rtp, srtp, dtls) in [
        ("RTP/AVP", Transport::RtpAvp, true, false, false),
        ("RTP/AVPF", Transport::RtpAvpf, true, false, false),
        ("RTP/SAVP", Transport::RtpSavp, true, true, false),
        ("RTP/SAVPF", Transport::RtpSavpf, true, true, false),
        (
            "UDP/TLS/RTP/SAVP",
            Transport::UdpTlsRtpSavp,
            true,
            true,
            true,
        ),
        (
            "udp/tls/rtp/savpf",
            Transport::UdpTlsRtpSavpf,
            true,
            true,
            true,
        ),
        ("udptl", Transport::Other, false, false, false),
        ("udp", Transport::Udp, false, false, false),
    ] {
        assert_eq!(Transport::from_proto(proto), t);
        assert_eq!((t.is_rtp(), t.is_srtp(), t.is_dtls()), (rtp, srtp, dtls));
    }
    assert!(Transport::UdpTlsRtpSavpf.is_avpf() && !Transport::RtpSavp.is_avpf());
}

#[test]
fn line_endings_and_blank_lines_are_kept() {
    let texts = [
        "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\nm=audio 1 RTP/AVP 0\n",
        "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\nm=audio 1 RTP/AVP 0",
        "v=0\r\no=- 1 1 IN IP4 192.0.2.1\ns=-\r\n\r\n  \r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\n\r\n",
        "\r\nv=0\r\no=- 1 1 IN IP4 192.0.2.1   \r\ns=\r\nm=audio 1 RTP/AVP 0 \r\na=sendrecv \r\n",
    ];
    for text in texts {
        let sd = ok(text);
        assert_eq!(rewrite(&sd, &Rewrite::default()), text.as_bytes());
        assert_eq!(sd.as_bytes(), text.as_bytes());
    }
    assert_eq!(ok(texts[2]).line_ending(), LineEnding::CrLf);
    assert_eq!(ok(texts[2]).line_count(), 8);
}

// ---- rewriting ----------------------------------------------------------------------------

#[test]
fn increment_version() {
    assert_eq!(increment_decimal("0").as_deref(), Some("1"));
    assert_eq!(increment_decimal("41").as_deref(), Some("42"));
    assert_eq!(increment_decimal("1999").as_deref(), Some("2000"));
    assert_eq!(
        increment_decimal("18446744073709551615").as_deref(),
        Some("18446744073709551616")
    );
    assert_eq!(increment_decimal(""), None);
    assert_eq!(increment_decimal("1a"), None);
}

#[test]
fn origin_and_session_name() {
    let sd = ok("v=0\r\no=user  99 7 IN IP4 phone.local\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\n");
    let rw = Rewrite {
        origin_address: Some("2001:db8::5".parse().unwrap()),
        origin_version: VersionChange::Increment,
        session_name: Some("rtp\r\nedge".into()),
        ..Rewrite::default()
    };
    assert_eq!(
        out_str(&sd, &rw),
        "v=0\r\no=user  99 8 IN IP6 2001:db8::5\r\ns=rtpedge\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\n"
    );
    let rw = Rewrite {
        origin_version: VersionChange::Set(1234),
        session_name: Some(String::new()),
        ..Rewrite::default()
    };
    assert_eq!(
        out_str(&sd, &rw),
        "v=0\r\no=user  99 1234 IN IP4 phone.local\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\n"
    );
    let odd = ok("v=0\r\no=- 1 v2 IN IP4 192.0.2.1\r\ns=old\r\n");
    let rw = Rewrite {
        origin_version: VersionChange::Increment,
        session_name: Some("new".into()),
        ..Rewrite::default()
    };
    assert_eq!(
        out_str(&odd, &rw),
        "v=0\r\no=- 1 v2 IN IP4 192.0.2.1\r\ns=new\r\n"
    );
}

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
const LOCAL2: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2));
const LOCAL6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99));

fn media_at(address: IpAddr, port: u16) -> MediaRewrite {
    MediaRewrite {
        port: Some(port),
        address: Some(address),
        ..MediaRewrite::default()
    }
}

#[test]
fn shared_address_rewrites_session_connection_only() {
    let sd = ok(&body(
        "m=audio 5004 RTP/AVP 0\r\nm=video 5006 RTP/AVP 96\r\n",
    ));
    let rw = Rewrite {
        media: vec![media_at(LOCAL, 30000), media_at(LOCAL, 30002)],
        ..Rewrite::default()
    };
    assert_eq!(
        out_str(&sd, &rw),
        "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\n\
         m=audio 30000 RTP/AVP 0\r\nm=video 30002 RTP/AVP 96\r\n"
    );
}

#[test]
fn differing_addresses_insert_media_connection() {
    let sd = ok(&body(
        "m=audio 5004 RTP/AVP 0\r\ni=voice\r\nb=AS:64\r\nm=video 5006 RTP/AVP 96\r\nm=audio 5008 RTP/AVP 0\r\n",
    ));
    let rw = Rewrite {
        media: vec![
            media_at(LOCAL2, 30000),
            media_at(LOCAL, 30002),
            media_at(LOCAL, 30004),
        ],
        ..Rewrite::default()
    };
    // LOCAL is wanted by two sections, so it goes to the session c=.
    assert_eq!(
        out_str(&sd, &rw),
        "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\n\
         m=audio 30000 RTP/AVP 0\r\ni=voice\r\nc=IN IP4 203.0.113.2\r\nb=AS:64\r\n\
         m=video 30002 RTP/AVP 96\r\nm=audio 30004 RTP/AVP 0\r\n"
    );
    // Only the first section changes: the others keep the original address on their own line.
    let rw = Rewrite {
        media: vec![media_at(LOCAL, 30000)],
        ..Rewrite::default()
    };
    assert_eq!(
        out_str(&sd, &rw),
        "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
         m=audio 30000 RTP/AVP 0\r\ni=voice\r\nc=IN IP4 203.0.113.1\r\nb=AS:64\r\n\
         m=video 5006 RTP/AVP 96\r\nm=audio 5008 RTP/AVP 0\r\n"
    );
    // A forced session address: every section that differs gets its own line.
    let rw = Rewrite {
        session_connection: Some(LOCAL2),
        media: vec![media_at(LOCAL, 30000)],
        ..Rewrite::default()
    };
    assert_eq!(
        out_str(&sd, &rw),
        "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 203.0.113.2\r\nt=0 0\r\n\
         m=audio 30000 RTP/AVP 0\r\ni=voice\r\nc=IN IP4 203.0.113.1\r\nb=AS:64\r\n\
         m=video 5006 RTP/AVP 96\r\nc=IN IP4 192.0.2.10\r\nm=audio 5008 RTP/AVP 0\r\nc=IN IP4 192.0.2.10\r\n"
    );
}

#[test]
fn media_level_connections_are_rewritten_in_place() {
    let sd = ok("v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nt=0 0\r\n\
         m=audio 5004 RTP/AVP 0\r\nc=IN IP4 192.0.2.10\r\n\
         m=video 5006 RTP/AVP 96\r\nc=IN IP4 192.0.2.11/127\r\n");
    let rw = Rewrite {
        media: vec![media_at(LOCAL6, 30000), media_at(LOCAL, 30002)],
        ..Rewrite::default()
    };
    assert_eq!(
        out_str(&sd, &rw),
        "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nt=0 0\r\n\
         m=audio 30000 RTP/AVP 0\r\nc=IN IP6 2001:db8::99\r\n\
         m=video 30002 RTP/AVP 96\r\nc=IN IP4 203.0.113.1\r\n"
    );
    // With neither level: a media-level line is inserted.
    let bare = ok("v=0\no=- 1 1 IN IP4 192.0.2.10\nm=audio 5004 RTP/AVP 0");
    let rw = Rewrite {
        media: vec![media_at(LOCAL, 30000)],
        ..Rewrite::default()
    };
    assert_eq!(
        out_str(&bare, &rw),
        "v=0\no=- 1 1 IN IP4 192.0.2.10\nm=audio 30000 RTP/AVP 0\nc=IN IP4 203.0.113.1"
    );
}

#[test]
fn rejected_streams_do_not_vote() {
    let sd = ok(&body(
        "m=audio 5004 RTP/AVP 0\r\nm=video 5006 RTP/AVP 96\r\n",
    ));
    let rw = Rewrite {
        media: vec![media_at(LOCAL, 30000), MediaRewrite::reject()],
        ..Rewrite::default()
    };
    assert_eq!(
        out_str(&sd, &rw),
        "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\n\
         m=audio 30000 RTP/AVP 0\r\nm=video 0 RTP/AVP 96\r\n"
    );
}

#[test]
fn rtcp_attribute_modes() {
    let sd = ok(&body(
        "m=audio 5004 RTP/AVP 0\r\na=rtcp:5005\r\na=sendrecv\r\nm=audio 5006 RTP/AVP 0\r\na=ptime:20\r\n",
    ));
    let set = |port, address| RtcpRewrite::Set { port, address };
    let mk = |style, r0, r1| Rewrite {
        rtcp_attribute: style,
        media: vec![
            MediaRewrite {
                rtcp: r0,
                ..media_at(LOCAL, 30000)
            },
            MediaRewrite {
                rtcp: r1,
                ..media_at(LOCAL, 30002)
            },
        ],
        ..Rewrite::default()
    };
    let head = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\n";
    // Auto: the address only when it differs.
    assert_eq!(
        out_str(
            &sd,
            &mk(
                RtcpAttributeStyle::Auto,
                set(30001, Some(LOCAL)),
                set(30003, Some(LOCAL2))
            )
        ),
        format!(
            "{head}m=audio 30000 RTP/AVP 0\r\na=rtcp:30001\r\na=sendrecv\r\n\
             m=audio 30002 RTP/AVP 0\r\na=ptime:20\r\na=rtcp:30003 IN IP4 203.0.113.2\r\n"
        )
    );
    // Full: always.
    assert_eq!(
        out_str(
            &sd,
            &mk(RtcpAttributeStyle::Full, set(30001, None), set(30003, None))
        ),
        format!(
            "{head}m=audio 30000 RTP/AVP 0\r\na=rtcp:30001 IN IP4 203.0.113.1\r\na=sendrecv\r\n\
             m=audio 30002 RTP/AVP 0\r\na=ptime:20\r\na=rtcp:30003 IN IP4 203.0.113.1\r\n"
        )
    );
    // Omit: none at all, even where the rewrite keeps them.
    assert_eq!(
        out_str(
            &sd,
            &mk(
                RtcpAttributeStyle::Omit,
                RtcpRewrite::Keep,
                set(30003, None)
            )
        ),
        format!(
            "{head}m=audio 30000 RTP/AVP 0\r\na=sendrecv\r\nm=audio 30002 RTP/AVP 0\r\na=ptime:20\r\n"
        )
    );
    // Remove and Keep.
    assert_eq!(
        out_str(
            &sd,
            &mk(
                RtcpAttributeStyle::Auto,
                RtcpRewrite::Remove,
                RtcpRewrite::Keep
            )
        ),
        format!(
            "{head}m=audio 30000 RTP/AVP 0\r\na=sendrecv\r\nm=audio 30002 RTP/AVP 0\r\na=ptime:20\r\n"
        )
    );
}

#[test]
fn rtcp_mux_modes() {
    let sd = ok(&body(
        "m=audio 5004 RTP/AVP 0\r\na=rtcp:5005\r\na=rtcp-mux\r\nm=audio 5006 RTP/AVP 0\r\n",
    ));
    let head = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n";
    let mk = |m0: RtcpMuxRewrite, m1: RtcpMuxRewrite| Rewrite {
        media: vec![
            MediaRewrite {
                rtcp: RtcpRewrite::Set {
                    port: 30001,
                    address: None,
                },
                rtcp_mux: m0,
                ..MediaRewrite::default()
            },
            MediaRewrite {
                rtcp: RtcpRewrite::Set {
                    port: 30003,
                    address: None,
                },
                rtcp_mux: m1,
                ..MediaRewrite::default()
            },
        ],
        ..Rewrite::default()
    };
    assert_eq!(
        out_str(&sd, &mk(RtcpMuxRewrite::Use, RtcpMuxRewrite::Use)),
        format!(
            "{head}m=audio 5004 RTP/AVP 0\r\na=rtcp-mux\r\nm=audio 5006 RTP/AVP 0\r\na=rtcp-mux\r\n"
        )
    );
    assert_eq!(
        out_str(&sd, &mk(RtcpMuxRewrite::Remove, RtcpMuxRewrite::Offer)),
        format!(
            "{head}m=audio 5004 RTP/AVP 0\r\na=rtcp:30001\r\n\
             m=audio 5006 RTP/AVP 0\r\na=rtcp:30003\r\na=rtcp-mux\r\n"
        )
    );
    assert_eq!(
        out_str(&sd, &mk(RtcpMuxRewrite::Keep, RtcpMuxRewrite::Keep)),
        format!(
            "{head}m=audio 5004 RTP/AVP 0\r\na=rtcp:30001\r\na=rtcp-mux\r\n\
             m=audio 5006 RTP/AVP 0\r\na=rtcp:30003\r\n"
        )
    );
}

#[test]
fn direction_and_ice() {
    let sd = ok(&body(
        "a=ice-lite\r\na=ice-options:trickle\r\na=tool:x\r\n\
         m=audio 5004 RTP/AVP 0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\n\
         a=candidate:1 1 UDP 2130706431 192.0.2.10 5004 typ host\r\na=end-of-candidates\r\n\
         a=remote-candidates:1 192.0.2.1 5004\r\na=sendrecv\r\na=sendrecv\r\n\
         m=audio 5006 RTP/AVP 0\r\na=ptime:20\r\n\r\n",
    ));
    let rw = Rewrite {
        strip_ice: true,
        media: vec![
            MediaRewrite {
                direction: Some(Direction::SendOnly),
                ..MediaRewrite::default()
            },
            MediaRewrite {
                direction: Some(Direction::Inactive),
                ..MediaRewrite::default()
            },
        ],
        ..Rewrite::default()
    };
    assert_eq!(
        out_str(&sd, &rw),
        format!(
            "{BASE}a=tool:x\r\nm=audio 5004 RTP/AVP 0\r\na=sendonly\r\n\
             m=audio 5006 RTP/AVP 0\r\na=ptime:20\r\na=inactive\r\n\r\n"
        )
    );
    // Keeping the direction it already has leaves the line alone.
    let rw = Rewrite {
        media: vec![MediaRewrite {
            direction: Some(Direction::SendRecv),
            ..MediaRewrite::default()
        }],
        ..Rewrite::default()
    };
    assert_eq!(
        out_str(&sd, &rw).matches("a=sendrecv\r\n").count(),
        1,
        "the repeat goes"
    );
}

#[test]
fn insertions_keep_the_missing_final_line_ending() {
    let sd = ok(
        "v=0\no=- 1 1 IN IP4 192.0.2.1\nc=IN IP4 192.0.2.1\nm=audio 5004 RTP/AVP 0\na=candidate:x",
    );
    let rw = Rewrite {
        strip_ice: true,
        media: vec![MediaRewrite {
            direction: Some(Direction::RecvOnly),
            rtcp_mux: RtcpMuxRewrite::Offer,
            ..MediaRewrite::default()
        }],
        ..Rewrite::default()
    };
    assert_eq!(
        out_str(&sd, &rw),
        "v=0\no=- 1 1 IN IP4 192.0.2.1\nc=IN IP4 192.0.2.1\nm=audio 5004 RTP/AVP 0\na=recvonly\na=rtcp-mux"
    );
}

#[test]
fn extra_media_rewrites_are_ignored() {
    let text = body("m=audio 5004 RTP/AVP 0\r\n");
    let sd = ok(&text);
    let rw = Rewrite {
        media: vec![MediaRewrite::default(), media_at(LOCAL, 1)],
        ..Rewrite::default()
    };
    assert_eq!(rewrite(&sd, &rw), text.as_bytes());
}

// ---- property test ------------------------------------------------------------------------

/// xorshift64*: tiny, deterministic, good enough to shake a parser.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn ip(&mut self) -> IpAddr {
        if self.chance(70) {
            IpAddr::V4(Ipv4Addr::from(self.next() as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(
                (u128::from(self.next()) << 64) | u128::from(self.next()),
            ))
        }
    }
}

fn addr_line(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("IN IP4 {a}"),
        IpAddr::V6(a) => format!("IN IP6 {a}"),
    }
}

/// A random, valid-looking SDP body.
fn random_sdp(rng: &mut Rng) -> Vec<u8> {
    let mut lines: Vec<String> = Vec::new();
    lines.push("v=0".into());
    let origin_addr = if rng.chance(10) {
        "IN IP4 host.example".to_owned()
    } else {
        addr_line(rng.ip())
    };
    lines.push(format!(
        "o={} {} {} {origin_addr}",
        rng.pick(&["-", "root", "Yealink", "user  x"]),
        rng.next() % 100_000,
        rng.pick(&["0", "1", "99", "18446744073709551615", "v"])
    ));
    if rng.chance(90) {
        lines.push(format!(
            "s={}",
            rng.pick(&["-", "", " ", "Asterisk PBX", "SIP Call"])
        ));
    }
    if rng.chance(10) {
        lines.push("i=info".into());
    }
    let session_c = rng.chance(70);
    if session_c {
        let ip = if rng.chance(10) {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            rng.ip()
        };
        lines.push(format!("c={}", addr_line(ip)));
    }
    if rng.chance(20) {
        lines.push("b=AS:84".into());
    }
    lines.push("t=0 0".into());
    let session_attrs = [
        "a=group:BUNDLE 0 1",
        "a=ice-lite",
        "a=ice-options:trickle",
        "a=sendonly",
        "a=msid-semantic: WMS *",
        "a=fingerprint:sha-256 AA:BB",
        "a=tool:x",
        "x=unknown line",
    ];
    for _ in 0..rng.below(4) {
        lines.push((*rng.pick(&session_attrs)).into());
    }
    for k in 0..rng.below(5) {
        let port = *rng.pick(&[0u16, 5004, 49170, 65535, 1]);
        let count = if rng.chance(10) { "/2" } else { "" };
        let proto = rng.pick(&[
            "RTP/AVP",
            "RTP/SAVP",
            "RTP/SAVPF",
            "UDP/TLS/RTP/SAVPF",
            "udptl",
        ]);
        let media = rng.pick(&["audio", "video", "image", "application"]);
        lines.push(format!("m={media} {port}{count} {proto} 0 8 101"));
        if rng.chance(10) {
            lines.push("i=stream".into());
        }
        if !session_c || rng.chance(30) {
            lines.push(format!("c={}", addr_line(rng.ip())));
        }
        if rng.chance(20) {
            lines.push("b=TIAS:64000".into());
        }
        let mut direction_done = false;
        let mut rtcp_done = false;
        for _ in 0..rng.below(10) {
            let a = match rng.below(16) {
                0 => "a=rtpmap:0 PCMU/8000".to_owned(),
                1 => "a=fmtp:101 0-15".to_owned(),
                2 => "a=ptime:20".to_owned(),
                3 if !rtcp_done => {
                    rtcp_done = true;
                    if rng.chance(50) {
                        format!("a=rtcp:{}", rng.below(65536))
                    } else {
                        format!("a=rtcp:{} {}", rng.below(65536), addr_line(rng.ip()))
                    }
                }
                4 => "a=rtcp-mux".to_owned(),
                5 if !direction_done => {
                    direction_done = true;
                    format!(
                        "a={}",
                        rng.pick(&["sendrecv", "sendonly", "recvonly", "inactive"])
                    )
                }
                6 => "a=ice-ufrag:F7gI".to_owned(),
                7 => "a=ice-pwd:x9cml/YzichV2+XlhiMu8g".to_owned(),
                8 => "a=candidate:1 1 udp 2122260223 192.0.2.3 54400 typ host".to_owned(),
                9 => "a=end-of-candidates".to_owned(),
                10 => "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
                    .to_owned(),
                11 => "a=setup:actpass".to_owned(),
                12 => format!("a=mid:{k}"),
                13 => "a=x-unknown:value with spaces ".to_owned(),
                14 => String::new(),
                _ => "a=ssrc:1 cname:x".to_owned(),
            };
            lines.push(a);
        }
    }
    let eol = if rng.chance(30) { "\n" } else { "\r\n" };
    let mut text = lines.join(eol);
    if rng.chance(85) {
        text.push_str(eol);
    }
    text.into_bytes()
}

fn mutate(rng: &mut Rng, text: &mut Vec<u8>) {
    const BYTES: &[u8] = b"\r\n= /:0a9cmv.\0\xff\xc3 \t-";
    for _ in 0..=rng.below(3) {
        let len = text.len();
        match rng.below(7) {
            0 if len > 0 => {
                let at = rng.below(len);
                text[at] = *rng.pick(BYTES);
            }
            1 => {
                let at = rng.below(len + 1);
                text.insert(at, *rng.pick(BYTES));
            }
            2 if len > 0 => {
                let at = rng.below(len);
                let n = rng.below(len - at + 1).min(20);
                text.drain(at..at + n);
            }
            3 => text.truncate(rng.below(len + 1)),
            4 if len > 0 => {
                // Duplicate a random stretch (often a whole line).
                let at = rng.below(len);
                let n = rng.below(len - at + 1).min(60);
                let piece: Vec<u8> = text[at..at + n].to_vec();
                let to = rng.below(text.len() + 1);
                text.splice(to..to, piece);
            }
            5 if len > 0 => {
                let at = rng.below(len);
                text[at] = rng.next() as u8;
            }
            _ => text.extend_from_slice(b"a=rtcp:9"),
        }
    }
}

fn random_rewrite(rng: &mut Rng, media: usize) -> Rewrite {
    let mut rw = Rewrite {
        origin_address: rng.chance(50).then(|| rng.ip()),
        origin_version: *rng.pick(&[
            VersionChange::Keep,
            VersionChange::Increment,
            VersionChange::Set(7),
        ]),
        session_name: rng
            .chance(30)
            .then(|| (*rng.pick(&["rtpedge", "", "a\r\nb"])).to_owned()),
        session_connection: rng.chance(10).then(|| rng.ip()),
        strip_ice: rng.chance(50),
        rtcp_attribute: *rng.pick(&[
            RtcpAttributeStyle::Auto,
            RtcpAttributeStyle::Full,
            RtcpAttributeStyle::Omit,
        ]),
        media: Vec::new(),
    };
    let shared = rng.ip();
    for _ in 0..media + rng.below(2) {
        let address = match rng.below(4) {
            0 => None,
            1 => Some(rng.ip()),
            _ => Some(shared),
        };
        rw.media.push(MediaRewrite {
            port: rng.chance(80).then(|| *rng.pick(&[0u16, 1, 30000, 65535])),
            address,
            rtcp: match rng.below(4) {
                0 => RtcpRewrite::Keep,
                1 => RtcpRewrite::Remove,
                2 => RtcpRewrite::Set {
                    port: 30001,
                    address: None,
                },
                _ => RtcpRewrite::Set {
                    port: 30003,
                    address: Some(rng.ip()),
                },
            },
            rtcp_mux: *rng.pick(&[
                RtcpMuxRewrite::Keep,
                RtcpMuxRewrite::Offer,
                RtcpMuxRewrite::Use,
                RtcpMuxRewrite::Remove,
            ]),
            direction: rng.chance(50).then(|| {
                *rng.pick(&[
                    Direction::SendRecv,
                    Direction::SendOnly,
                    Direction::RecvOnly,
                    Direction::Inactive,
                ])
            }),
            proto: rng
                .chance(30)
                .then(|| rng.pick(&["RTP/AVP", "RTP/AVPF", "RTP/SAVPF"]).to_string()),
            strip_rtcp_fb: rng.chance(30),
        });
    }
    rw
}

/// Lines a rewrite may touch (by kind), so that everything else can be compared as a sequence.
fn untouchable_lines(sd: &SessionDescription) -> Vec<&[u8]> {
    sd.lines
        .iter()
        .filter(|l| {
            let content = sd.raw.get(l.start..l.end).unwrap_or_default();
            match l.kind {
                b'o' | b's' | b'c' | b'm' => false,
                b'a' => {
                    let text = String::from_utf8_lossy(content.get(2..).unwrap_or_default());
                    let text = text.trim_end();
                    let name = text.split(':').next().unwrap_or_default();
                    !(name == "rtcp"
                        || name == "rtcp-mux"
                        || Direction::from_name(name).is_some()
                        || IceAttribute::from_name(name).is_some())
                }
                _ => true,
            }
        })
        .map(|l| sd.raw.get(l.start..l.end).unwrap_or_default())
        .collect()
}

/// Check that `out = rewrite(sd, rw)` says what `rw` asked and kept the rest.
fn check_rewrite(sd: &SessionDescription, rw: &Rewrite, out: &[u8]) {
    let relaxed = Limits {
        max_bytes: usize::MAX,
        max_lines: usize::MAX,
        max_media: usize::MAX,
    };
    let re = match parse_with_limits(out, &relaxed) {
        Ok(re) => re,
        Err(e) => panic!(
            "rewrite output does not parse: {e}\ninput:\n{}\nrewrite: {rw:?}\noutput:\n{}",
            String::from_utf8_lossy(&sd.raw),
            String::from_utf8_lossy(out)
        ),
    };
    let ctx = || {
        format!(
            "\ninput:\n{}\nrewrite: {rw:?}\noutput:\n{}",
            String::from_utf8_lossy(&sd.raw),
            String::from_utf8_lossy(out)
        )
    };
    assert_eq!(re.media().len(), sd.media().len(), "{}", ctx());
    // Applying the same rewrite again changes nothing (unless it increments the version).
    if rw.origin_version != VersionChange::Increment {
        assert_eq!(rewrite(&re, rw), out, "not idempotent{}", ctx());
    }
    assert_eq!(untouchable_lines(sd), untouchable_lines(&re), "{}", ctx());
    if sd.raw.ends_with(b"\n") {
        assert!(out.ends_with(b"\n"), "{}", ctx());
    } else {
        // Unterminated stays unterminated, except for an empty last line (see `rewrite`).
        let body = out
            .strip_suffix(b"\n")
            .map(|b| b.strip_suffix(b"\r").unwrap_or(b));
        assert!(body.is_none_or(|b| b.ends_with(b"\n")), "{}", ctx());
    }
    if let Some(a) = rw.origin_address {
        assert_eq!(re.origin().ip(), Some(a), "{}", ctx());
    }
    if let VersionChange::Set(v) = rw.origin_version {
        assert_eq!(re.origin().session_version(), v.to_string(), "{}", ctx());
    }
    if let Some(name) = &rw.session_name {
        let clean: String = name.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
        let want = if clean.is_empty() { "-".into() } else { clean };
        assert_eq!(re.session_name(), Some(want.as_bytes()), "{}", ctx());
    }
    if rw.strip_ice {
        let all = re
            .attributes()
            .iter()
            .chain(re.media().iter().flat_map(|m| m.attributes()));
        for a in all {
            assert!(!matches!(a.kind(), AttributeKind::Ice(_)), "{}", ctx());
        }
    }
    let default = MediaRewrite::default();
    for (i, (before, after)) in sd.media().iter().zip(re.media()).enumerate() {
        let mr = rw.media.get(i).unwrap_or(&default);
        let port = mr.port.unwrap_or(before.port());
        assert_eq!(after.port(), port, "media {i}{}", ctx());
        assert_eq!(after.port_count(), before.port_count(), "{}", ctx());
        assert_eq!(after.formats(), before.formats(), "{}", ctx());
        let old = sd.remote_media(i).unwrap();
        let new = re.remote_media(i).unwrap();
        match mr.address {
            Some(a) => assert_eq!(new.rtp.map(|s| s.ip()), Some(a), "media {i}{}", ctx()),
            None if port != 0 => {
                assert_eq!(
                    new.rtp.map(|s| s.ip()),
                    old.rtp.map(|s| s.ip()),
                    "media {i}{}",
                    ctx()
                );
            }
            None => {}
        }
        if let Some(d) = mr.direction {
            assert_eq!(after.direction(), Some(d), "{}", ctx());
        }
        match mr.rtcp_mux {
            RtcpMuxRewrite::Keep => assert_eq!(after.rtcp_mux(), before.rtcp_mux(), "{}", ctx()),
            RtcpMuxRewrite::Offer | RtcpMuxRewrite::Use => assert!(after.rtcp_mux(), "{}", ctx()),
            RtcpMuxRewrite::Remove => assert!(!after.rtcp_mux(), "{}", ctx()),
        }
        let omit =
            rw.rtcp_attribute == RtcpAttributeStyle::Omit || mr.rtcp_mux == RtcpMuxRewrite::Use;
        match mr.rtcp {
            _ if omit => assert_eq!(after.rtcp(), None, "{}", ctx()),
            RtcpRewrite::Keep => {
                assert_eq!(after.rtcp().map(|r| r.port), before.rtcp().map(|r| r.port))
            }
            RtcpRewrite::Remove => assert_eq!(after.rtcp(), None, "{}", ctx()),
            RtcpRewrite::Set { port, address } => {
                assert_eq!(after.rtcp().map(|r| r.port), Some(port), "{}", ctx());
                if !new.disabled && new.rtp.is_some() {
                    let ip = address.or(new.rtp.map(|s| s.ip()));
                    assert_eq!(new.rtcp.map(|s| s.ip()), ip, "{}", ctx());
                }
                if rw.rtcp_attribute == RtcpAttributeStyle::Full && new.rtp.is_some() {
                    assert!(
                        after.rtcp().is_some_and(|r| r.address.is_some()),
                        "{}",
                        ctx()
                    );
                }
            }
        }
    }
}

/// A rewrite that asks for what the body already says: ports, addresses, the direction.
fn restating_rewrite(sd: &SessionDescription) -> Rewrite {
    Rewrite {
        media: sd
            .media()
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let directions = m
                    .attributes()
                    .iter()
                    .filter(|a| matches!(a.kind(), AttributeKind::Direction(_)))
                    .count();
                MediaRewrite {
                    port: Some(m.port()),
                    address: sd.remote_media(i).and_then(|r| r.rtp).map(|s| s.ip()),
                    direction: m.direction().filter(|_| directions == 1),
                    ..MediaRewrite::default()
                }
            })
            .collect(),
        origin_version: match sd.origin().session_version_number() {
            Some(v) if sd.origin().session_version() == v.to_string() => VersionChange::Set(v),
            _ => VersionChange::Keep,
        },
        ..Rewrite::default()
    }
}

#[test]
fn property_random_and_mutated_sdp() {
    // SDP_PROPTEST_SEED / SDP_PROPTEST_ROUNDS run it longer or differently.
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let mut rng = Rng(env("SDP_PROPTEST_SEED", 0x9e37_79b9_7f4a_7c15) | 1);
    let rounds = env("SDP_PROPTEST_ROUNDS", 4000);
    let (mut parsed, mut rejected) = (0u64, 0u64);
    for round in 0..rounds {
        let mut text = random_sdp(&mut rng);
        if round % 4 != 0 {
            mutate(&mut rng, &mut text);
        }
        // Occasionally pure noise.
        if round % 97 == 0 {
            text = (0..rng.below(300)).map(|_| rng.next() as u8).collect();
        }
        match parse(&text) {
            Ok(sd) => {
                parsed += 1;
                assert_eq!(
                    rewrite(&sd, &Rewrite::default()),
                    text,
                    "identity rewrite differs for {:?}",
                    String::from_utf8_lossy(&text)
                );
                let _ = sd.remote_media_all().count();
                let restated = restating_rewrite(&sd);
                assert_eq!(
                    rewrite(&sd, &restated),
                    text,
                    "a rewrite that restates the body changed it: {restated:?}"
                );
                for _ in 0..3 {
                    let rw = random_rewrite(&mut rng, sd.media().len());
                    let out = rewrite(&sd, &rw);
                    check_rewrite(&sd, &rw, &out);
                }
            }
            Err(e) => {
                rejected += 1;
                let _ = e.to_string();
            }
        }
    }
    // Both branches must be exercised for the test to mean anything.
    assert!(
        parsed > rounds / 4 && rejected > rounds / 8,
        "parsed {parsed}, rejected {rejected}"
    );
    println!("{rounds} rounds: {parsed} parsed, {rejected} rejected");
}
